"""Benchmark: a photo's four WebP derivatives with Pillow, against pyvips in the same run.

    .venv/bin/python -m tests.bench.bench_derivatives                    # 24 MP, pyvips beside
    .venv/bin/python -m tests.bench.bench_derivatives --megapixels 2 --rounds 1 --no-methods
    .venv/bin/python -m tests.bench.bench_derivatives --vips-python none  # Pillow only

The photo: the 3:2 JPEG of ``tests/bench/bench_jobs.py`` (``--megapixels`` 24 → 6000x4000,
gradient + Gaussian noise at quality 90, ~8 MB; cached in ``$TMPDIR/photobot-bench-images``)
with an EXIF block spliced in (orientation ``--orientation``, camera, GPS position), so both
engines do the orientation and metadata work a phone photo needs.

The work, identical on both sides: decode **once**, at the JPEG's DCT scale for the largest
rendition (Pillow ``draft`` via :func:`photobot.optimizer.make_derivatives`; libvips
``jpegload shrink``), EXIF orientation applied, then a cascade of cubic resizes (Catmull-Rom on
both) to the long edges 2560 (optimized), 2048, 1200 and 400, each encoded as WebP quality 80
with the same libwebp effort (Pillow ``method`` = libvips ``effort``, :data:`WEBP_METHOD` unless
``--method``), no metadata. Pillow runs in this process exactly as the optimizer actor runs it;
pyvips runs in another interpreter (``--vips-python``, default ``/tmp/vips-venv/bin/python``
with ``pyvips pyvips-binary``, kept out of the project's venv) as a small server driven over a
pipe, with its operation cache off. The two engines alternate, round by round (``--rounds``),
because the machine may be busy with other work: every figure is a median over all rounds.

Measured:

- single-threaded time per photo (pyvips with ``concurrency_set(1)``);
- photos per second with ``--workers`` (2) workers: Pillow as the actor does it
  (``trio.to_thread.run_sync`` behind a ``CapacityLimiter``; the Trio loop's worst lag is
  shown), pyvips with as many Python threads (one vips thread each);
- where Pillow's time goes (decode, each resize, each encode; the 2560 px encode's share);
- unless ``--no-methods``: libwebp method/effort 0-4 on both sides (time and bytes).

The last line is the headline figure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from PIL import Image

from photobot.imaging import open_image, to_rgb
from photobot.optimizer import (
    NAMES,
    RESAMPLE,
    SIZES,
    WEBP_METHOD,
    WEBP_QUALITY,
    encode_webp,
    make_derivatives,
    plan_sizes,
)
from tests.bench.bench_jobs import CACHE_DIR, JPEG_QUALITY, make_base, photo_size

DEFAULT_VIPS_PYTHON = "/tmp/vips-venv/bin/python"
#: Pillow's resampling filter for this run (``--resample``; the product's is RESAMPLE).
resample = RESAMPLE

#: The pyvips side: a line-oriented JSON server (one command per line on stdin, one answer per
#: line on stdout) so that it can alternate with Pillow without paying interpreter start-up.
VIPS_SERVER = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import pyvips

pyvips.cache_set_max(0)  # no operation cache: every run decodes and encodes for real
data = open(sys.argv[1], "rb").read()
caps = json.loads(sys.argv[2])
quality = int(sys.argv[3])

def fit(size, cap):
    w, h = size
    scale = min(cap / w, cap / h, 1.0)
    return max(1, round(w * scale)), max(1, round(h * scale))

def derive(effort):
    head = pyvips.Image.new_from_buffer(data, "")  # header only (lazy)
    w, h = head.width, head.height
    orientation = head.get("orientation") if head.get_typeof("orientation") else 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    targets = [fit((w, h), cap) for cap in caps]
    tw, th = targets[0]
    shrink = 1
    for s in (8, 4, 2):
        if -(-w // s) >= tw and -(-h // s) >= th:
            shrink = s
            break
    cur = pyvips.Image.jpegload_buffer(data, shrink=shrink, autorotate=True).copy_memory()
    out = []
    for tw, th in targets:
        if out and out[-1][:2] == (tw, th):
            out.append(out[-1])  # same size as the previous rendition: encoded once (as Pillow)
            continue
        if (cur.width, cur.height) != (tw, th):
            cur = cur.resize(tw / cur.width, vscale=th / cur.height, kernel="cubic")
            cur = cur.copy_memory()
        webp = cur.webpsave_buffer(Q=quality, effort=effort, keep="none")
        out.append((cur.width, cur.height, len(webp)))
    return out

libvips = ".".join(str(pyvips.version(i)) for i in range(3))
print(json.dumps({"ready": pyvips.__version__, "libvips": libvips}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "single":
        pyvips.concurrency_set(1)
        times, sizes = [], None
        for _ in range(cmd["runs"]):
            t = time.perf_counter()
            sizes = derive(cmd["effort"])
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times, "sizes": sizes}), flush=True)
    elif cmd["cmd"] == "parallel":
        pyvips.concurrency_set(1)
        with ThreadPoolExecutor(cmd["workers"]) as pool:
            t = time.perf_counter()
            list(pool.map(lambda _: derive(cmd["effort"]), range(cmd["photos"])))
            wall = time.perf_counter() - t
        print(json.dumps({"wall": wall}), flush=True)
"""


# -- the photo ---------------------------------------------------------------------------------


def exif_segment(orientation: int) -> bytes:
    """An APP1 EXIF segment as a camera writes one: orientation, make, model, time, GPS."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R6"
    exif[0x0132] = "2025:01:31 19:45:00"
    exif[0x8825] = {1: "S", 2: (6.0, 10.0, 30.5), 3: "E", 4: (106.0, 49.0, 10.25)}
    payload = b"Exif\x00\x00" + exif.tobytes()
    return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def prepare_photo(megapixels: float, orientation: int, dest: Path) -> Path:
    size = photo_size(megapixels)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    base = CACHE_DIR / f"base-{size[0]}x{size[1]}-q{JPEG_QUALITY}-0.jpg"
    if not base.exists():
        make_base(base, size, 0)
    data = base.read_bytes()
    assert data[:2] == b"\xff\xd8"
    photo = dest / f"photo-{size[0]}x{size[1]}-o{orientation}.jpg"
    photo.write_bytes(data[:2] + exif_segment(orientation) + data[2:])
    return photo


# -- Pillow ------------------------------------------------------------------------------------


def pillow_single(data: bytes, runs: int, method: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        make_derivatives(data, method=method, resample=resample)
        times.append(time.perf_counter() - t)
    return times


async def pillow_parallel(
    data: bytes, photos: int, workers: int, method: int
) -> tuple[float, float]:
    """Wall time for ``photos`` photos through ``workers`` threads, and the loop's worst lag."""
    limiter = trio.CapacityLimiter(workers)
    worst_lag = 0.0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal worst_lag
        while not done.is_set():
            t = trio.current_time()
            await trio.sleep(0.005)
            worst_lag = max(worst_lag, trio.current_time() - t - 0.005)

    async def one() -> None:
        await trio.to_thread.run_sync(
            lambda: make_derivatives(data, method=method, resample=resample), limiter=limiter
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        t = time.perf_counter()
        async with trio.open_nursery() as jobs:
            for _ in range(photos):
                jobs.start_soon(one)
        wall = time.perf_counter() - t
        done.set()
    return wall, worst_lag


def pillow_breakdown(data: bytes, method: int) -> dict[str, float]:
    """The steps of :func:`make_derivatives`, timed one by one (same functions, same order)."""
    from photobot.imaging import probe_image

    steps: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        value = fn()
        steps[name] = time.perf_counter() - t
        return value

    info = probe_image(data, max_pixels=60_000_000)
    targets = plan_sizes(info.size)
    img = timed(
        "decode (draft)",
        lambda: open_image(data, max_pixels=60_000_000, min_size=targets[NAMES[0]]),
    )
    steps["decoded at"] = img.width  # not a time: shown separately
    current = to_rgb(img)
    done: set[tuple[int, int]] = set()
    for name in NAMES:
        size = targets[name]
        if size in done:
            continue
        if current.size != size:
            current = timed(f"resize {max(size)}", lambda s=size, c=current: c.resize(s, resample))
        timed(f"encode {max(size)}", lambda c=current: encode_webp(c, method=method))
        done.add(size)
    return steps


# -- pyvips ------------------------------------------------------------------------------------


class Vips:
    def __init__(self, python: str, photo: Path) -> None:
        env = {**os.environ, "VIPS_WARNING": "0"}
        self.proc = subprocess.Popen(
            [python, "-c", VIPS_SERVER, str(photo), json.dumps(list(SIZES.values())),
             str(WEBP_QUALITY)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        hello = self._read()
        self.version = f"pyvips {hello['ready']}, libvips {hello['libvips']}"

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("bench_derivatives: the pyvips side exited (is pyvips installed?)")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- the run -----------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=24)
    parser.add_argument("--orientation", type=int, default=1, choices=range(1, 9))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=4, help="single-threaded runs per round")
    parser.add_argument("--photos", type=int, default=12, help="photos per round, parallel")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--method", type=int, default=WEBP_METHOD, choices=range(7))
    parser.add_argument("--vips-python", default=DEFAULT_VIPS_PYTHON, help="or 'none'")
    parser.add_argument("--no-methods", action="store_true", help="skip the method 0-4 table")
    parser.add_argument(
        "--resample", default=RESAMPLE.name, choices=[r.name for r in Image.Resampling],
        help="Pillow's filter (pyvips stays cubic: other values trade quality for speed)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    global resample
    resample = Image.Resampling[args.resample]

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "photobot-bench-derivatives"
    tmp.mkdir(parents=True, exist_ok=True)
    photo = prepare_photo(args.megapixels, args.orientation, tmp)
    data = photo.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        dims = img.size
    print(f"photo: {dims[0]}x{dims[1]} JPEG q{JPEG_QUALITY}, {len(data) / 1e6:.1f} MB, EXIF "
          f"orientation {args.orientation} + GPS; renditions {dict(SIZES)} px long edge, "
          f"WebP q{WEBP_QUALITY} method {args.method}; resize: Pillow {resample.name}, "
          "pyvips cubic")  # fmt: skip
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")

    vips = None
    if args.vips_python != "none":
        if not Path(args.vips_python).exists():
            raise SystemExit(
                f"bench_derivatives: {args.vips_python} not found; make it with\n"
                "  python3 -m venv /tmp/vips-venv && /tmp/vips-venv/bin/pip install pyvips "
                "pyvips-binary\nor pass --vips-python none"
            )
        vips = Vips(args.vips_python, photo)
        print(f"pyvips side: {vips.version} ({args.vips_python})")

    made = make_derivatives(data, method=args.method)  # warm-up (and sizes)
    print("Pillow sizes:", [(r.width, r.height, len(r.data)) for r in made.renditions()])
    if vips is not None:
        first = vips.ask(cmd="single", runs=1, effort=args.method)
        print("pyvips sizes:", [tuple(s) for s in first["sizes"]])

    p_single: list[float] = []
    v_single: list[float] = []
    p_rate: list[float] = []
    v_rate: list[float] = []
    lags: list[float] = []
    for _ in range(args.rounds):
        p_single += pillow_single(data, args.runs, args.method)
        if vips is not None:
            v_single += vips.ask(cmd="single", runs=args.runs, effort=args.method)["times"]
        wall, lag = trio.run(pillow_parallel, data, args.photos, args.workers, args.method)
        p_rate.append(args.photos / wall)
        lags.append(lag)
        if vips is not None:
            answer = vips.ask(
                cmd="parallel", photos=args.photos, workers=args.workers, effort=args.method
            )
            v_rate.append(args.photos / answer["wall"])

    print()
    print(f"{'':34s}{'Pillow':>10s}{'pyvips':>10s}")
    vs = f"{median(v_single):10.3f}" if v_single else f"{'-':>10s}"
    print(f"{'single-threaded, s/photo (median)':34s}{median(p_single):10.3f}{vs}")
    vs = f"{min(v_single):10.3f}" if v_single else f"{'-':>10s}"
    print(f"{'single-threaded, s/photo (best)':34s}{min(p_single):10.3f}{vs}")
    vr = f"{median(v_rate):10.2f}" if v_rate else f"{'-':>10s}"
    print(f"{f'{args.workers} workers, photos/s (median)':34s}{median(p_rate):10.2f}{vr}")
    print(f"Trio loop's worst lag during the Pillow {args.workers}-worker runs: "
          f"{max(lags) * 1000:.1f} ms")  # fmt: skip

    steps = [pillow_breakdown(data, args.method) for _ in range(3)]
    decoded = int(steps[0].pop("decoded at"))
    for s in steps[1:]:
        s.pop("decoded at")
    total = {k: median([s[k] for s in steps]) for k in steps[0]}
    whole = sum(total.values())
    print(f"\nwhere Pillow's time goes (median of 3, decoded at {decoded} px wide):")
    for k, v in total.items():
        print(f"  {k:16s}{v * 1000:7.0f} ms {v / whole:6.0%}")
    print(f"  {'sum':16s}{whole * 1000:7.0f} ms")

    if not args.no_methods:
        print("\nlibwebp method/effort (single-threaded median of 3; total bytes of the four):")
        for m in range(5):
            times = pillow_single(data, 3, m)
            made = make_derivatives(data, method=m, resample=resample)
            size = sum(len(r.data) for r in made.renditions())
            line = f"  {m}: Pillow {median(times):6.3f} s {size / 1e3:8.0f} kB"
            if vips is not None:
                answer = vips.ask(cmd="single", runs=3, effort=m)
                vsize = sum(s[2] for s in answer["sizes"])
                line += f"   pyvips {median(answer['times']):6.3f} s {vsize / 1e3:8.0f} kB"
            print(line)

    if vips is not None:
        vips.close()
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    headline = (
        f"derivatives of a {args.megapixels:g} MP JPEG: Pillow {median(p_single):.3f} s/photo "
        f"single-threaded, {median(p_rate):.2f} photos/s with {args.workers} workers"
    )
    if vips is not None:
        headline += (
            f"; pyvips same run {median(v_single):.3f} s/photo, {median(v_rate):.2f} photos/s"
        )
    print(headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
