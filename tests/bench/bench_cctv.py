"""Benchmark: a 60 s CCTV clip over 3 recordings, from ready to ``CLIP_GENERATED``.

    .venv/bin/python -m tests.bench.bench_cctv                    # 720p25, 3 runs per mode
    .venv/bin/python -m tests.bench.bench_cctv --size 320x240 --runs 1   # smoke run

The stand-in NVR (``tests/standins/nvr.py``) runs as its own process on loopback, with Digest
auth, "Z means local" time at UTC+7, and recordings of 25 s made by ffmpeg at ``--size`` and
``--fps`` (H.264, a keyframe every second, IMKH header + MPEG-PS, as an NVR serves them). The
booth runs in this process: embedded PostgreSQL and Redis (``durable=False``), local storage,
the real :class:`~actors.cctv.CctvPoller` with the booth's default settings (stream copy, or
``EXACT_CUT`` re-encode).

One run: a clip request for a 60 s window starting 5 s into a recording (so it spans three) is
created ready (flush delay 0), claimed and processed as a batch would: search, disk check,
three downloads streamed to disk, remux + concat + cut with ffmpeg, poster frame, upload to
storage, the ``clips`` row. Timed from the request being ready to ``CLIP_GENERATED``.

Memory: this process's resident set is sampled every 5 ms during each run (``/proc/self``);
the figure is the peak minus the resident set just before the run, next to the bytes the run
downloaded: a streaming pipeline stays far below them. ffmpeg runs as a child process; its own
peak (``VmHWM`` of each ffmpeg child, sampled) is printed separately.

The last line is the headline: median seconds per clip, stream copy and exact cut.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import trio

from photobot.cctv.isapi import IsapiClient
from photobot.cctv.store import ClipRequest
from photobot.config import load_settings
from photobot.db import ensure_database
from photobot.embedded import open_embedded_postgres, open_embedded_redis
from photobot.root import Services, open_services
from tests.bench.common import proc_status_kib, remove_stale, server_tmp_base

NVR_USER, NVR_PASSWORD = "admin", "bench-Pa55"
SEGMENT = 25.0


def ffmpeg_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and b"ffmpeg" in cmd:
            found.append(int(entry.name))
    return found


def start_nvr(args: argparse.Namespace, cache: Path, log: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.standins.nvr", "--port", "0", "--username", NVR_USER,
         "--password", NVR_PASSWORD, "--cache-dir", str(cache), "--video-size", args.size,
         "--video-fps", str(args.fps)],
        stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the stand-in NVR did not start: {line!r} {log.read_text()[-2000:]}")
    return proc, line.split(" ", 2)[2].strip()


async def one_run(services: Services, camera_id: str, start: datetime,
                  ) -> tuple[float, int, int, int]:  # fmt: skip
    """Seconds ready→CLIP_GENERATED, peak RSS growth (KiB), ffmpeg peak (KiB), clip bytes."""
    clips = services.clips
    poller = services.cctv
    request = await clips.create_request(camera_id, start, start + timedelta(seconds=60))
    assert request.status == "READY_FOR_BATCH", request.status
    base = proc_status_kib("VmRSS")
    peak = base
    ffmpeg_peak = 0
    done = trio.Event()

    async def sample() -> None:
        nonlocal peak, ffmpeg_peak
        while not done.is_set():
            peak = max(peak, proc_status_kib("VmRSS"))
            for pid in ffmpeg_children():
                ffmpeg_peak = max(ffmpeg_peak, proc_status_kib("VmHWM", pid))
            await trio.sleep(0.005)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        t0 = trio.current_time()
        claimed: ClipRequest | None = await clips.claim(poller.config.worker_id, request.id)
        assert claimed is not None
        await poller.process(claimed)
        elapsed = trio.current_time() - t0
        done.set()
    final = await clips.request(request.id)
    if final.status != "CLIP_GENERATED":
        raise RuntimeError(f"clip request ended {final.status}: {final.failure_reason}")
    clip = await clips.clip_of(request.id)
    assert clip is not None
    return elapsed, peak - base, ffmpeg_peak, clip.size_bytes


async def bench(args: argparse.Namespace, work: Path, servers: Path, nvr_url: str) -> None:
    async with (
        open_embedded_postgres(servers / "postgres", durable=False) as pg,
        open_embedded_redis(servers / "redis", durable=False) as rd,
    ):
        dsn = await ensure_database(pg.url, "photobot")
        settings = load_settings(
            database_url=dsn, redis_url=rd.url, auto_batch_enabled=False,
            batch_interval_seconds=3600, clip_flush_delay_seconds=0,
            temp_video_dir=work / "cctv",
        )  # fmt: skip
        async with open_services(settings, work / "data") as services:
            now = datetime.now(UTC).replace(microsecond=0)
            first = now - timedelta(hours=2)
            count = 3 + 4 * args.runs  # every run uses three fresh recordings
            async with httpx.AsyncClient(base_url=nvr_url) as nvr:
                r = await nvr.post("/__standin__/recordings", json={
                    "track_id": 101, "start": first.isoformat(), "count": count,
                    "seconds": SEGMENT,
                })  # fmt: skip
                r.raise_for_status()
            camera = await services.clips.add_camera(
                booth_id=settings.booth_id, name="bench", base_url=nvr_url, track_id=101,
                username=NVR_USER, password=NVR_PASSWORD, time_mode="local",
            )  # fmt: skip
            # Warm-up (excluded): the stand-in makes each video on first use (a search needs
            # their sizes), so one search over them all makes them before anything is timed.
            print(f"making {count} recordings ({args.size} @ {args.fps} fps) and a warm-up clip…")
            async with IsapiClient(nvr_url, NVR_USER, NVR_PASSWORD, time_mode="local",
                                   timeout=600) as client:  # fmt: skip
                found = await client.search(101, first, first + count * timedelta(seconds=SEGMENT))
                assert len(found) == count, len(found)
            await one_run(services, camera.id, first + timedelta(seconds=5))
            results: dict[str, list[tuple[float, int, int, int]]] = {}
            for mode in ("stream copy", "exact cut"):
                services.cctv.config = replace(services.cctv.config, exact_cut=mode == "exact cut")
                runs = []
                for n in range(args.runs):
                    index = 3 + (n * 2 + (mode == "exact cut")) * 2
                    start = first + timedelta(seconds=SEGMENT * index + 5)
                    runs.append(await one_run(services, camera.id, start))
                results[mode] = runs
            raw = sum(p.stat().st_size for p in (work / "nvr-cache").glob("rec-*.raw")) / max(
                1, len(list((work / "nvr-cache").glob("rec-*.raw")))
            )
            print(
                f"recording: {args.size} @ {args.fps} fps, {SEGMENT:.0f} s = {raw / 2**20:.1f} MiB"
                f" each; 3 downloaded per clip = {3 * raw / 2**20:.1f} MiB"
            )
            for mode, runs in results.items():
                secs = [r[0] for r in runs]
                print(
                    f"{mode:12s}: ready→CLIP_GENERATED median {statistics.median(secs):.2f} s "
                    f"(runs {', '.join(f'{s:.2f}' for s in secs)}); clip "
                    f"{statistics.median(r[3] for r in runs) / 2**20:.1f} MiB; peak RSS growth "
                    f"{max(r[1] for r in runs) / 1024:.1f} MiB; ffmpeg peak "
                    f"{max(r[2] for r in runs) / 1024:.1f} MiB"
                )
            copy = statistics.median(r[0] for r in results["stream copy"])
            exact = statistics.median(r[0] for r in results["exact cut"])
            print(f"60 s clip over 3 segments, ready→CLIP_GENERATED: stream copy {copy:.2f} s, "
                  f"exact cut {exact:.2f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1280x720", help="recordings' WxH")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3, help="clips per mode")
    args = parser.parse_args()
    base = server_tmp_base()
    remove_stale(base)
    servers = Path(tempfile.mkdtemp(prefix=f"photobot-bench-{os.getpid()}-", dir=base))
    work = Path(tempfile.mkdtemp(prefix="photobot-bench-cctv-"))
    proc, url = start_nvr(args, work / "nvr-cache", work / "nvr.log")
    try:
        trio.run(bench, args, work, servers, url)
    finally:
        proc.terminate()
        proc.wait(10)
        subprocess.run(["rm", "-rf", str(servers), str(work)], check=False)


if __name__ == "__main__":
    main()
