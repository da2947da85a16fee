"""Benchmark: the booth's headline, capture to the guest's gallery, and upload memory.

    .venv/bin/python -m tests.bench.bench_capture        # 10 x 12 MP captures, 20 x 24 MP uploads
    .venv/bin/python -m tests.bench.bench_capture --captures 3 --memory-uploads 0   # smoke run

A whole booth runs in this process (``tests.bench.common.open_bench_booth``: embedded
PostgreSQL and Redis, local storage with fsync, the real actors, Hypercorn and the gallery's
websocket listener). A guest watches the event's gallery over the websocket, as the page does.

**Latency.** An operator captures ``--captures`` photos in a row (12 MP JPEGs, ``POST /jobs``,
local provider, ``--style``), each after the previous one reached the guest. Per capture it
records, on one clock (trio's): the moment the upload's first byte is sent, the ``201``, the
start of each pool stage (``preprocessing``, ``ai_processing``, ``uploading_output``) and the
job's final event from ``services.bus`` (stamped when published), and the moment the guest's
websocket delivers ``photo:upload:complete`` for that job's photo. One warm-up capture is
excluded; with ``--busy`` the spinners start a second before it, and it is followed by the same
pause as every other capture. The stage table says where the time goes; "publish → guest" is
the gallery's part (the photo row, its announcement, the fan-out and the client's receive).

**Memory.** ``--memory-uploads`` uploads of ``--memory-megapixels`` photos are sent at once while
the local provider's limiter is held by this benchmark, so only the uploads themselves are in
flight; the peak RSS of the process (VmHWM, reset first) from the first byte to the last 201 is
the figure, next to the RSS before. The limiter is then released and every job must succeed.

The last line is the headline: p50 and p95 of first byte → guest notified.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.bench.bench_jobs import (
    PASSWORD,
    Client,
    JobTimes,
    Recorder,
    prepare_photos,
    reset_peak_rss,
)
from tests.bench.common import (
    BenchBooth,
    bench_dirs,
    open_bench_booth,
    percentile,
    proc_status_kib,
)

STAGES = ("preprocessing", "ai_processing", "uploading_output")
PHASES = ("upload (first byte → 201)", "queued wait", *STAGES, "publish → guest")


@dataclass
class Capture:
    times: JobTimes
    notified: float = math.nan

    def phases(self) -> list[float]:
        t = self.times
        points = [t.submitted, t.created, *(t.stages[s] for s in STAGES), t.finished]
        spans = [b - a for a, b in itertools.pairwise(points)]
        return [*spans, self.notified - t.finished]

    @property
    def total(self) -> float:
        return self.notified - self.times.submitted


@dataclass
class Guest:
    """The gallery as a guest's page sees it: every ``photo:upload:complete`` with its time."""

    ws: WebSocketConnection
    seen: dict[str, float] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        while True:
            try:
                message = json.loads(await self.ws.get_message())
            except ConnectionClosed:
                return
            if message.get("type") == "photo:upload:complete":
                self.seen.setdefault(str(message["photo_id"]), trio.current_time())
                self.changed.set()
                self.changed = trio.Event()

    async def wait_for(self, photo_ids: set[str]) -> float:
        while True:
            hits = [self.seen[p] for p in photo_ids if p in self.seen]
            if hits:
                return min(hits)
            await self.changed.wait()


async def photo_ids_of(booth: BenchBooth, job_id: str) -> set[str]:
    """The gallery photo a job published (its id is what the websocket announces)."""
    rows = await booth.services.db.fetch(
        "select id::text from photos where job_id = $1::uuid", job_id
    )
    return {r[0] for r in rows}


async def capture(
    client: Client, booth: BenchBooth, recorder: Recorder, guest: Guest, photo: Path
) -> Capture:
    times = JobTimes(submitted=math.nan)
    await client.submit(photo, times)
    await recorder.wait_final({times.job_id})
    recorder.fill(times)
    if times.final is None or times.final.status != "succeeded":
        raise SystemExit(f"bench_capture: job {times.job_id} ended {times.final}")
    with trio.fail_after(30):
        # The photo row is written right after the job's final event; poll briefly for it.
        while not (ids := await photo_ids_of(booth, times.job_id)):  # noqa: ASYNC110
            await trio.sleep(0.01)
        notified = await guest.wait_for(ids)
    return Capture(times, notified)


async def memory_phase(
    client: Client, booth: BenchBooth, recorder: Recorder, photos: list[Path]
) -> tuple[int, int, float]:
    """(RSS before, peak RSS during the uploads, seconds to the last 201), in KiB."""
    limiter = booth.services.pool.limiters["local"]
    holder = object()
    held = 0
    for _ in range(int(limiter.total_tokens)):
        await limiter.acquire_on_behalf_of((holder, held))
        held += 1
    times = [JobTimes(submitted=math.nan) for _ in photos]
    try:
        rss_before = proc_status_kib("VmRSS")
        reset_peak_rss()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for photo, t in zip(photos, times, strict=True):
                nursery.start_soon(client.submit, photo, t)
        spent = trio.current_time() - t0
        peak = proc_status_kib("VmHWM")
    finally:
        for n in range(held):
            limiter.release_on_behalf_of((holder, n))
    with trio.fail_after(60 + 10 * len(photos)):
        await recorder.wait_final({t.job_id for t in times})
    for t in times:
        recorder.fill(t)
        if t.final is None or t.final.status != "succeeded":
            raise SystemExit(f"bench_capture: memory-phase job {t.job_id} ended {t.final}")
    return rss_before, peak, spent


@contextmanager
def busy_cpus(n: int) -> Iterator[None]:
    """``n`` processes spinning on the CPU for the timed part: a busy box, reproducibly."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


@dataclass
class Result:
    captures: list[Capture]
    warmup: float
    load_before: float
    memory: tuple[int, int, float] | None


async def bench(
    args: argparse.Namespace, photos: list[Path], big: list[Path], work: Path, servers: Path
) -> Result:
    async with open_bench_booth(work, servers, PASSWORD) as booth, trio.open_nursery() as inner:
        recorder = Recorder()
        await inner.start(recorder.run, booth.services)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(base_url=booth.base_url, timeout=300, limits=limits) as http:
            client = Client(http, style=args.style)
            await client.setup()
            event: Any = (
                await http.get(f"/events/{client.session['eventId']}", headers=client.auth)
            ).json()
            async with open_websocket_url(f"{booth.ws_base}/ws/events/{event['slug']}") as ws:
                guest = Guest(ws)
                inner.start_soon(guest.run)
                load_before = os.getloadavg()[0]
                captures = []
                with busy_cpus(args.busy):
                    # The spinners' own start-up (an interpreter each) is not the busy box
                    # being measured; nor is a capture with no pause after the one before.
                    await trio.sleep(1.0)
                    t0 = trio.current_time()
                    await capture(client, booth, recorder, guest, photos[-1])
                    warmup = trio.current_time() - t0
                    await trio.sleep(args.pause)
                    for photo in photos[:-1]:
                        captures.append(await capture(client, booth, recorder, guest, photo))
                        # The operator's next shot comes a moment later, not in the same instant.
                        await trio.sleep(args.pause)
            memory = await memory_phase(client, booth, recorder, big) if big else None
        inner.cancel_scope.cancel()
    return Result(captures, warmup, load_before, memory)


def report(args: argparse.Namespace, res: Result, photos: list[Path]) -> None:
    n = len(res.captures)
    mean_mb = sum(p.stat().st_size for p in photos) / len(photos) / 1e6
    print(
        f"{n} captures in a row × {args.megapixels:g} MP JPEG (mean {mean_mb:.1f} MB), "  # noqa: RUF001
        f"style {args.style}, local provider, {os.cpu_count()} cores, "
        f"{args.pause:g} s between captures, {args.busy} other processes spinning"
    )
    print(f"warm-up capture (excluded): {res.warmup:.2f} s")
    print(f"1-min load average before: {res.load_before:.2f}")
    print("per stage (mean, p95) of first byte → guest notified:")
    cols = list(zip(*(c.phases() for c in res.captures), strict=True))
    for name, col in zip(PHASES, cols, strict=True):
        print(
            f"  {name:<28} mean {1000 * sum(col) / n:6.0f} ms   "
            f"p95 {1000 * percentile(col, 95):6.0f} ms"
        )
    totals = [c.total for c in res.captures]
    print("each capture (s): " + " ".join(f"{t:.2f}" for t in totals))
    if res.memory is not None:
        before, peak, spent = res.memory
        print(
            f"memory: {args.memory_uploads} uploads × {args.memory_megapixels:g} MP at once: "  # noqa: RUF001
            f"peak RSS {peak / 1024:.0f} MiB (RSS before {before / 1024:.0f} MiB, "
            f"+{(peak - before) / 1024:.0f} MiB), last 201 after {spent:.1f} s"
        )
    print(
        f"capture → guest notified: p50 {percentile(totals, 50):.2f} s, "
        f"p95 {percentile(totals, 95):.2f} s, max {max(totals):.2f} s "
        f"({n} × {args.megapixels:g} MP, style {args.style}, busy {args.busy})"  # noqa: RUF001
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--captures", type=int, default=10, help="captures in a row (default 10)")
    ap.add_argument("--megapixels", type=float, default=12, help="capture size (default 12)")
    ap.add_argument("--style", default="vintage", help="styleId of each capture")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between captures")
    ap.add_argument(
        "--busy", type=int, default=0, help="processes spinning on the CPU meanwhile (default 0)"
    )
    ap.add_argument("--memory-uploads", type=int, default=20, help="0 skips the memory phase")
    ap.add_argument("--memory-megapixels", type=float, default=24)
    args = ap.parse_args()
    if args.captures < 1 or args.megapixels <= 0 or args.memory_uploads < 0:
        ap.error("--captures and --megapixels must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    wall0 = time.monotonic()
    with bench_dirs() as (servers, work):
        (work / "captures").mkdir()
        (work / "big").mkdir()
        photos = prepare_photos(args.megapixels, args.captures + 1, work / "captures")
        big = (
            prepare_photos(args.memory_megapixels, args.memory_uploads, work / "big")
            if args.memory_uploads
            else []
        )
        res = trio.run(bench, args, photos, big, work, servers)
        print(f"total wall time of the benchmark: {time.monotonic() - wall0:.1f} s")
        report(args, res, photos)


if __name__ == "__main__":
    main()
