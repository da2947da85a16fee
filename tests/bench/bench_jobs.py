"""Benchmark: job throughput and latency of the ``local`` provider with 24 MP photos.

    .venv/bin/python -m tests.bench.bench_jobs                          # 50 jobs x 24 MP
    .venv/bin/python -m tests.bench.bench_jobs --jobs 5 --megapixels 2  # smoke run, seconds

A real booth runs in this process under trio, as the ``live`` fixture of ``tests/test_jobs.py``
does: embedded PostgreSQL and Redis (``durable=False``, data on tmpfs when there is one), local
storage with fsync in a temp dir on disk, default settings otherwise (``WORKER_CONCURRENCY_LOCAL``
2), the real supervisor and actors, and Hypercorn on 127.0.0.1. Everything goes over HTTP with
httpx, as an operator would: log in, create an event and one guest session, run one warm-up job
(excluded), then ``--jobs`` tasks each ``POST /jobs`` one photo at the same moment.

Photos: 3:2 JPEGs of ``--megapixels`` (24 → 6000x4000), a colour gradient plus Gaussian noise at
quality 90 (~8 MB at 24 MP). A few base images are made once and cached in
``$TMPDIR/photobot-bench-images``; each job then gets its own copy with one pixel changed
(re-encoded in a subprocess before the timed part), so every upload has distinct bytes. Uploads
stream from those files, so the photos do not sit in this process's memory.

Per job it records the submit time, the 201 time, and from ``services.bus`` the moment each
stage started (``preprocessing``, ``ai_processing``, ``uploading_output``) and the final event.
Bus events are stamped when they are *published* (in the subscription's ``accepts`` filter,
which the bus calls synchronously), so a busy event loop does not delay the stamps.

It prints: wall time; jobs per minute (jobs / (last succeeded - first POST) x 60); p50/p95/max of
POST→succeeded and of POST→201 (the HTTP upload); each stage's share of the summed job time
(upload, queued wait, preprocessing, ai_processing, uploading_output); CPU time per job of this
process (split into the event-loop thread and the worker threads) and of the embedded servers;
event-loop lag; peak RSS during the run. Any job that does not succeed aborts the run. The
last line is the headline figure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import logging
import math
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import trio
from PIL import Image, ImageChops

from photobot.bus import JobEvent
from photobot.root import Services
from tests.bench.common import (
    bench_dirs,
    open_bench_booth,
    percentile,
    proc_status_kib,
)

PASSWORD = "bench-jobs-password"
#: Distinct base photos generated once and cached; jobs cycle through them.
BASE_IMAGES = 4
JPEG_QUALITY = 90
#: Standard deviation of the per-pixel noise: ~8 MB at 24 MP and quality 90, like a camera JPEG.
NOISE_SIGMA = 11
CACHE_DIR = Path(tempfile.gettempdir()) / "photobot-bench-images"
STAGES = ("preprocessing", "ai_processing", "uploading_output")
#: Rows of the time-share table: the interval that ends at each stage's start, then the stages.
PHASES = ("upload (POST→201)", "queued wait", *STAGES)


# -- photos (run before trio starts, partly in worker processes) ----------------------------


def photo_size(megapixels: float) -> tuple[int, int]:
    """A 3:2 landscape size of about ``megapixels`` (24 → 6000x4000)."""
    width = round(math.sqrt(megapixels * 1e6 * 1.5))
    return width, max(1, round(width / 1.5))


def make_base(path: Path, size: tuple[int, int], seed: int) -> None:
    """Gradient + Gaussian noise, quality 90, written atomically to ``path``."""
    w, h = size
    grad = Image.linear_gradient("L")
    radial = Image.radial_gradient("L")
    # Each base gets its own arrangement of gradients, so the photos differ as a whole.
    rotations = [(seed * 90 + k * 90) % 360 for k in range(3)]
    channels = [
        (radial if (seed + k) % 3 == 0 else grad)
        .rotate(rotations[k])
        .resize((w, h), Image.Resampling.BILINEAR)
        for k in range(3)
    ]
    base = Image.merge("RGB", channels)
    noise = Image.effect_noise((w, h), NOISE_SIGMA)
    flips = (Image.Transpose.ROTATE_180, Image.Transpose.FLIP_LEFT_RIGHT)
    noisy = Image.merge("RGB", (noise, *(noise.transpose(f) for f in flips)))
    img = ImageChops.add(base, noisy, scale=1.0, offset=-128)  # effect_noise is centred on 128
    tmp = path.with_suffix(f".{os.getpid()}.part")
    img.save(tmp, "JPEG", quality=JPEG_QUALITY)
    os.replace(tmp, path)


def make_variant(base: Path, out: Path, n: int) -> str:
    """Copy of ``base`` with pixel ``n`` (row-major) moved half the range; returns its sha256."""
    with Image.open(base) as src:
        img = src.convert("RGB")
    w, h = img.size
    xy = (n % w, (n // w) % h)
    img.putpixel(xy, tuple((c + 128) % 256 for c in img.getpixel(xy)))  # type: ignore[union-attr]
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    out.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def prepare_photos(megapixels: float, count: int, dest: Path) -> list[Path]:
    """``count`` distinct photos in ``dest`` (bases cached in :data:`CACHE_DIR`)."""
    size = photo_size(megapixels)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    bases = [
        CACHE_DIR / f"base-{size[0]}x{size[1]}-q{JPEG_QUALITY}-{i}.jpg" for i in range(BASE_IMAGES)
    ]
    outs = [dest / f"photo-{n:04d}.jpg" for n in range(count)]
    workers = max(1, min(os.cpu_count() or 1, 4))
    # Forked before trio or any thread starts; the decoded 24 MP images never enter our RSS.
    with ProcessPoolExecutor(max_workers=workers) as ex:
        missing = [(p, i) for i, p in enumerate(bases) if not p.exists()]
        list(
            ex.map(
                make_base, [p for p, _ in missing], [size] * len(missing), [i for _, i in missing]
            )
        )
        hashes = list(
            ex.map(make_variant, [bases[n % len(bases)] for n in range(count)], outs, range(count))
        )
    if len(set(hashes)) != count:
        raise SystemExit("bench_jobs: the per-job photos are not all distinct")
    return outs


# -- measuring ------------------------------------------------------------------------------


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def servers_cpu() -> float:
    """CPU time of every descendant process (the embedded PostgreSQL and Redis trees)."""
    stats = {pid: s for pid in os.listdir("/proc") if pid.isdigit() and (s := _proc_stat(pid))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(int(pid))
    total, todo = 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += stats[str(pid)][1]
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False if the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class CpuMark:
    """Clocks at one moment; differences between two marks give a phase's figures."""

    at: float  # trio clock
    process: float  # this process, all threads (getrusage)
    loop: float  # the event-loop thread (the one trio runs on)
    servers: float  # the embedded servers' process trees

    @classmethod
    def now(cls) -> CpuMark:
        return cls(trio.current_time(), process_cpu_seconds(), time.thread_time(), servers_cpu())

    def __sub__(self, other: CpuMark) -> CpuMark:
        return CpuMark(
            self.at - other.at,
            self.process - other.process,
            self.loop - other.loop,
            self.servers - other.servers,
        )


@dataclass
class JobTimes:
    """Timestamps (trio clock, seconds) of one job."""

    submitted: float
    created: float = math.nan
    job_id: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    finished: float = math.nan
    final: JobEvent | None = None

    def phases(self) -> list[float]:
        """Durations of :data:`PHASES`; they add up to POST→final."""
        points = [self.submitted, self.created, *(self.stages[s] for s in STAGES), self.finished]
        return [b - a for a, b in itertools.pairwise(points)]


class Recorder:
    """Publish-time stamps of every :class:`JobEvent` on the bus (see the module docstring)."""

    def __init__(self) -> None:
        self.published: list[tuple[float, JobEvent]] = []
        self.finals: dict[str, tuple[float, JobEvent]] = {}
        self.changed = trio.Event()
        self.lost = False

    def stamp(self, event: object) -> bool:
        if not isinstance(event, JobEvent):
            return False
        now = trio.current_time()
        self.published.append((now, event))
        if event.final:
            self.finals.setdefault(event.job_id, (now, event))
        return True

    async def run(self, services: Services, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with services.bus.subscribe(self.stamp, capacity=1_000_000) as events:
            task_status.started()
            async for _ in events:
                self.changed.set()
                self.changed = trio.Event()
        self.lost = True  # the bus dropped us: stamps after this are missing
        self.changed.set()

    async def wait_final(self, job_ids: set[str]) -> None:
        while not job_ids <= self.finals.keys():
            if self.lost:
                raise SystemExit("bench_jobs: the bus dropped the recorder's subscription")
            await self.changed.wait()

    def fill(self, times: JobTimes) -> None:
        for at, event in self.published:
            if event.job_id == times.job_id and not event.final:
                times.stages.setdefault(event.stage, at)
        times.finished, times.final = self.finals[times.job_id]


class LoopLag:
    """How late a 10 ms sleep wakes up: time the event loop was busy with something else."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            t = trio.current_time()
            await trio.sleep(0.01)
            self.samples.append(trio.current_time() - t - 0.01)


# -- the booth ------------------------------------------------------------------------------


def _open_photo(path: Path) -> IO[bytes]:
    return path.open("rb")


@dataclass
class Client:
    http: httpx.AsyncClient
    token: str = ""
    session: dict[str, Any] = field(default_factory=dict)
    style: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def setup(self) -> None:
        r = await self.http.post("/auth/login", json={"password": PASSWORD})
        _expect(r, 200)
        self.token = r.json()["token"]
        r = await self.http.post("/events", json={"name": "Bench party"}, headers=self.auth)
        _expect(r, 201)
        event_id = r.json()["id"]
        r = await self.http.post(
            "/sessions",
            json={"eventId": event_id, "name": "Bench Guest", "whatsapp": "08123456789"},
        )
        _expect(r, 201)
        self.session = r.json()

    async def submit(self, photo: Path, times: JobTimes) -> None:
        data = {"sessionId": self.session["sessionId"], "eventId": self.session["eventId"]}
        if self.style:
            data["styleId"] = self.style
        f = await trio.to_thread.run_sync(_open_photo, photo)
        try:
            times.submitted = trio.current_time()
            r = await self.http.post(
                "/jobs",
                data=data,
                files={"image": (photo.name, f, "image/jpeg")},
                headers=self.auth,
            )
            times.created = trio.current_time()
        finally:
            f.close()
        _expect(r, 201)
        times.job_id = r.json()["id"]


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise SystemExit(
            f"bench_jobs: {r.request.method} {r.request.url.path} answered {r.status_code}, "
            f"expected {status}: {r.text[:500]}"
        )


@dataclass
class Result:
    times: list[JobTimes]
    warmup: float
    booth_start: float
    start: CpuMark  # just before the first POST
    uploaded: CpuMark  # when the last 201 came back
    end: CpuMark  # when the last job succeeded
    lag: list[float]
    peak_rss_kib: int
    rss_before_kib: int
    peak_reset: bool
    pool_size: int
    concurrency: int
    load_before: float


async def run_jobs(
    client: Client, recorder: Recorder, photos: Sequence[Path], timeout: float
) -> tuple[list[JobTimes], CpuMark]:
    """Submit every photo at once, wait for all to succeed; also the mark after the last 201."""
    times = [JobTimes(submitted=math.nan) for _ in photos]
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            for photo, t in zip(photos, times, strict=True):
                nursery.start_soon(client.submit, photo, t)
        uploaded = CpuMark.now()
        await recorder.wait_final({t.job_id for t in times})
    for t in times:
        recorder.fill(t)
    bad = [t for t in times if t.final is None or t.final.status != "succeeded"]
    if bad:
        lines = [f"  {t.job_id}: {t.final.status if t.final else '?'} {t.final}" for t in bad]
        raise SystemExit(f"bench_jobs: {len(bad)} job(s) did not succeed:\n" + "\n".join(lines))
    missing = [t.job_id for t in times if set(STAGES) - t.stages.keys()]
    if missing:
        raise SystemExit(f"bench_jobs: no stage events for job(s) {missing[:5]}")
    return times, uploaded


async def bench(args: argparse.Namespace, photos: list[Path], work: Path, servers: Path) -> Result:
    t_start = trio.current_time()
    async with open_bench_booth(work, servers, PASSWORD) as booth, trio.open_nursery() as inner:
        settings = booth.settings
        recorder = Recorder()
        await inner.start(recorder.run, booth.services)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(
            base_url=booth.base_url, timeout=args.timeout, limits=limits
        ) as http:
            client = Client(http, style=args.style)
            await client.setup()
            booth_start = trio.current_time() - t_start

            t0 = trio.current_time()
            await run_jobs(client, recorder, photos[-1:], args.timeout)
            warmup = trio.current_time() - t0

            lag = LoopLag()
            load_before = os.getloadavg()[0]
            rss_before = proc_status_kib("VmRSS")
            peak_reset = reset_peak_rss()
            inner.start_soon(lag.run)
            start = CpuMark.now()
            times, uploaded = await run_jobs(client, recorder, photos[:-1], args.timeout)
            end = CpuMark.now()
            peak = proc_status_kib("VmHWM")
        inner.cancel_scope.cancel()
    return Result(
        times=times,
        warmup=warmup,
        booth_start=booth_start,
        start=start,
        uploaded=uploaded,
        end=end,
        lag=lag.samples,
        peak_rss_kib=peak,
        rss_before_kib=rss_before,
        peak_reset=peak_reset,
        pool_size=settings.database_pool_size,
        concurrency=settings.worker_concurrency_local,
        load_before=load_before,
    )


# -- report ---------------------------------------------------------------------------------


def report(args: argparse.Namespace, res: Result, photos: list[Path], prep: float) -> None:
    n = len(res.times)
    cores = os.cpu_count() or 1
    w, h = photo_size(args.megapixels)
    mean_mb = sum(p.stat().st_size for p in photos) / len(photos) / 1e6
    first = min(t.submitted for t in res.times)
    last = max(t.finished for t in res.times)
    span = last - first
    e2e = [t.finished - t.submitted for t in res.times]
    upload = [t.created - t.submitted for t in res.times]
    phases = [t.phases() for t in res.times]
    totals = [sum(col) for col in zip(*phases, strict=True)]
    summed = sum(totals)
    service = [sum(p[2:]) for p in phases]
    per_min = n / span * 60

    print(
        f"{n} jobs x {args.megapixels:g} MP ({w}x{h} JPEG q{JPEG_QUALITY}, mean {mean_mb:.1f} MB), "
        f"local provider, style {args.style or 'event default (original)'}, {cores} cores"
    )
    print(
        f"settings: WORKER_CONCURRENCY_LOCAL={res.concurrency}, DATABASE_POOL_SIZE={res.pool_size}"
    )
    print(
        f"setup: photos {prep:.1f} s, booth start {res.booth_start:.1f} s, "
        f"warm-up job {res.warmup:.2f} s (excluded)"
    )
    print(
        f"1-min load average before the timed run: {res.load_before:.2f} "
        "(other processes share the cores: figures are noisy when it is high)"
    )
    print(f"wall time, first POST → last succeeded: {span:.1f} s")
    print(f"throughput: {per_min:.1f} jobs/min")
    print(
        f"POST → succeeded: p50 {percentile(e2e, 50):.2f} s, p95 {percentile(e2e, 95):.2f} s, "
        f"max {max(e2e):.2f} s"
    )
    print(
        f"POST → 201 (HTTP upload): min {min(upload):.2f} s, p50 {percentile(upload, 50):.2f} s, "
        f"p95 {percentile(upload, 95):.2f} s, max {max(upload):.2f} s"
    )
    first_pre = min(t.stages["preprocessing"] for t in res.times)
    print(
        f"first job started preprocessing {first_pre - first:.2f} s after the first POST "
        "(the workers are idle until then)"
    )
    print("share of summed job time (mean per job):")
    for name, total in zip(PHASES, totals, strict=True):
        print(f"  {name:<20} {100 * total / summed:5.1f} %   {total / n:7.2f} s")
    mean_service = sum(service) / n
    print(
        f"service time (preprocessing → succeeded) per job: mean {mean_service:.2f} s, "
        f"p95 {percentile(service, 95):.2f} s → at most "
        f"{res.concurrency * 60 / mean_service:.1f} jobs/min with {res.concurrency} workers"
    )
    cpu = res.end - res.start
    print(
        f"CPU per job: this process {cpu.process / n:.2f} s "
        f"(event-loop thread {cpu.loop / n:.2f} s, other threads "
        f"{(cpu.process - cpu.loop) / n:.2f} s), embedded servers {cpu.servers / n:.2f} s"
    )
    print("CPU by phase (event loop = one core at most; the httpx client shares it):")
    phases_cpu = [
        ("uploads (first POST → last 201)", res.uploaded - res.start),
        ("after (last 201 → last succeeded)", res.end - res.uploaded),
    ]
    for name, ph in phases_cpu:
        print(
            f"  {name:<34} {ph.at:5.1f} s wall, event loop {100 * ph.loop / ph.at:3.0f} % "
            f"of a core, all CPUs {100 * (ph.process + ph.servers) / (ph.at * cores):3.0f} % busy"
        )
    if res.lag:
        print(
            f"event-loop lag (late wake-ups of a 10 ms sleep): "
            f"p50 {1000 * percentile(res.lag, 50):.1f} ms, "
            f"p99 {1000 * percentile(res.lag, 99):.1f} ms, max {1000 * max(res.lag):.1f} ms"
        )
    peak_note = "" if res.peak_reset else " (could not reset VmHWM: peak since start-up)"
    print(
        f"peak RSS during the run: {res.peak_rss_kib / 1024:.0f} MiB "
        f"(RSS before: {res.rss_before_kib / 1024:.0f} MiB){peak_note}"
    )
    print(
        f"jobs: {per_min:.1f} jobs/min, p50 {percentile(e2e, 50):.1f} s, "
        f"p95 {percentile(e2e, 95):.1f} s ({n} × {args.megapixels:g} MP, local provider, "  # noqa: RUF001
        f"{cores} cores)"
    )


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--jobs", type=int, default=50, help="jobs submitted at once (default 50)")
    ap.add_argument("--megapixels", type=float, default=24, help="photo size (default 24)")
    ap.add_argument("--style", default=None, help="styleId per job (default: the event's)")
    ap.add_argument("--timeout", type=float, default=1800, help="give up after this many s")
    args = ap.parse_args()
    if args.jobs < 1 or args.megapixels <= 0:
        ap.error("--jobs and --megapixels must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    wall0 = time.monotonic()
    with bench_dirs() as (servers, work):
        t = time.monotonic()
        photos = prepare_photos(args.megapixels, args.jobs + 1, work)  # + 1: the warm-up job
        prep = time.monotonic() - t
        res = trio.run(bench, args, photos, work, servers)
        print(f"total wall time of the benchmark: {time.monotonic() - wall0:.1f} s")
        report(args, res, photos, prep)


if __name__ == "__main__":
    main()
