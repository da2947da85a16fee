"""Benchmark: hot folder ingest latency, from a file's last byte (closed) to its job row.

    .venv/bin/python -m tests.bench.bench_hotfolder                        # 100 + 300 x 24 MP
    .venv/bin/python -m tests.bench.bench_hotfolder --files 5 --burst 10 --megapixels 2  # smoke
    WORKER_CONCURRENCY_LOCAL=1 .venv/bin/python -m tests.bench.bench_hotfolder  # a lighter pool

A real booth runs in this process under trio (as in ``tests/bench/bench_jobs.py``): embedded
PostgreSQL and Redis started *durable* on disk, as a booth runs them (not tmpfs, fsync on), local
storage with fsync, the real supervisor and every actor — the AI worker pool included, so the
watcher shares the CPU with the pool as it does on a booth — and Hypercorn on 127.0.0.1. Settings
are the defaults (``FILE_STABILITY_DELAY_MS`` 2000, ``WORKER_CONCURRENCY_LOCAL`` 2; the
environment and ``.env`` are read as by ``photobot run``, and the output says which values were
used) plus ``HOTFOLDER_PATH``, a folder in a temp dir on disk. Over HTTP: log in, create an event
and a guest, ``POST /booth/booth-1/active-session``. One warm-up file is excluded.

Files are written as a tethering tool writes them: open, write ``--chunk-kib`` chunks (1 MiB),
close, in a thread of this process with a limiter of its own; the "last byte" time is taken right
after ``close()``. Photos: the 3:2 JPEGs of ``bench_jobs`` (``--megapixels`` 24 → 6000x4000 q90,
~8 MB; bases cached in ``$TMPDIR/photobot-bench-images``), each file a base with a JPEG comment
segment of its own inserted after the JFIF header, so every file has a distinct SHA-256.

Latency: the job row's ``created_at`` (PostgreSQL's ``now()``, i.e. when the INSERT's statement
began; same machine, same clock) minus the wall-clock time of ``close()``. Also shown: the time the
watcher saw the INSERT committed. Nothing polls the database during the run.

Where the time goes: the bench wraps (in this process only, product code untouched) the
watcher's ``_nominate`` (watch event or rescan), ``_complete`` (the completeness timer's
decision), ``handle``, and the calls ``handle`` makes (file read, header probe, SHA-256, Redis,
storage, dispatcher), stamping each with ``time.perf_counter``. Per file the interval close →
created_at is cut into: waiting for a watch event (0 when the file was a candidate before its
close), the completeness timer, waiting for a free worker, read, probe, SHA-256, Redis, storage
put, the database until ``created_at``, and the rest (event-loop scheduling between steps).

Scenario A: ``--files`` files one at a time, each once the previous file's job exists.
Scenario B: ``--burst`` files at ``--rate`` files/s, a writer task pacing on trio's clock.
Both check: exactly one job per file (by SHA-256), every file in ``processed/`` under its own name,
nothing in ``orphan/`` or ``invalid/`` or left in the hot folder, no retry. The last line is the
headline figure; a failed check prints the figures, then exits 1.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import hashlib
import logging
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

import actors.hotfolder as hotfolder_module
import web.app
from photobot.config import Settings, load_settings
from photobot.db import ensure_database
from photobot.embedded import open_embedded_postgres, open_embedded_redis
from photobot.root import Services, build_supervisor, open_services
from tests.bench.bench_jobs import (
    BASE_IMAGES,
    CACHE_DIR,
    JPEG_QUALITY,
    CpuMark,
    LoopLag,
    make_base,
    photo_size,
)
from tests.bench.common import percentile, remove_stale

PASSWORD = "bench-hotfolder-password"
BOOTH = "booth-1"
#: Steps inside ``handle`` before the job row, in order (see the module docstring).
STEPS = ("read file", "probe header", "sha256", "redis", "storage put")
PHASES = (
    "watch event after close",
    "completeness timer",
    "wait for a worker",
    *STEPS,
    "database until created_at",
    "other (loop scheduling)",
)
#: Settings the output names when they are not the defaults.
NOTED_SETTINGS = (
    "file_stability_delay_ms",
    "worker_concurrency_local",
    "ai_provider_default",
    "database_pool_size",
)

log = logging.getLogger("bench_hotfolder")


# -- photos ---------------------------------------------------------------------------------


def load_bases(megapixels: float) -> list[bytes]:
    """The cached base JPEGs of ``bench_jobs`` (made once, in worker processes, if missing)."""
    size = photo_size(megapixels)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    paths = [
        CACHE_DIR / f"base-{size[0]}x{size[1]}-q{JPEG_QUALITY}-{i}.jpg" for i in range(BASE_IMAGES)
    ]
    missing = [(p, i) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        workers = max(1, min(os.cpu_count() or 1, 4))
        with ProcessPoolExecutor(max_workers=workers) as ex:
            list(ex.map(make_base, [p for p, _ in missing], [size] * len(missing),
                        [i for _, i in missing]))  # fmt: skip
    return [p.read_bytes() for p in paths]


def variant(base: bytes, tag: str) -> bytes:
    """``base`` with a comment segment (``FF FE``) holding ``tag`` after the JFIF header."""
    assert base[:2] == b"\xff\xd8", "not a JPEG"
    at = 2
    if base[2:4] == b"\xff\xe0":  # APP0 (JFIF) stays first, as the JFIF spec wants
        at = 4 + int.from_bytes(base[4:6], "big")
    payload = tag.encode()
    segment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return base[:at] + segment + base[at:]


# -- per-file trace -------------------------------------------------------------------------

_current: contextvars.ContextVar[FileTrace | None] = contextvars.ContextVar(
    "bench_hotfolder_file", default=None
)


@dataclass
class FileTrace:
    """One file's timestamps: ``time.perf_counter()`` seconds unless the name says wall."""

    name: str
    scenario: str
    sha256: str = ""
    size: int = 0
    opened: float = math.nan
    closed: float = math.nan
    closed_wall: float = math.nan
    first_watch: float = math.nan
    first_rescan: float = math.nan
    nominated: float = math.nan
    nominated_by: str = ""
    decided: float = math.nan
    handle_start: float = math.nan
    handle_end: float = math.nan
    steps: dict[str, float] = field(default_factory=dict)
    db_start: float = math.nan
    visible: float = math.nan
    created_wall: float = math.nan
    outcome: str | None = None
    deferrals: int = 0
    ticks: int = 0  # completeness-timer passes that looked at this file
    job_seen: trio.Event = field(default_factory=trio.Event)
    handled: trio.Event = field(default_factory=trio.Event)

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = self.steps.get(step, 0.0) + seconds

    @property
    def created(self) -> float:
        """``created_at`` on the perf_counter clock (offset taken at close)."""
        return self.created_wall - (self.closed_wall - self.closed)

    @property
    def latency(self) -> float:
        return self.created_wall - self.closed_wall

    def phases(self) -> list[float]:
        """Durations of :data:`PHASES`; they add up to :attr:`latency`."""
        watch = max(0.0, self.nominated - self.closed)
        timer = max(0.0, self.decided - max(self.closed, self.nominated))
        queue = self.handle_start - self.decided
        steps = [self.steps.get(s, 0.0) for s in STEPS]
        db = self.created - self.db_start
        known = [watch, timer, queue, *steps, db]
        return [*known, self.latency - sum(known)]


class Tracer:
    """Wraps the watcher's methods and the calls ``handle`` makes; restores them on exit."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.files: dict[str, FileTrace] = {}
        self.ticks = 0
        self.tick_seconds = 0.0
        self._undo: list[Callable[[], None]] = []

    def trace(self, name: str, scenario: str) -> FileTrace:
        tr = self.files[name] = FileTrace(name, scenario)
        return tr

    def _set(self, obj: Any, attr: str, value: Any) -> None:
        if isinstance(obj, type(hotfolder_module)):
            old = getattr(obj, attr)
            self._undo.append(lambda: setattr(obj, attr, old))
        else:  # an instance attribute shadows the class's method; removing it restores it
            self._undo.append(lambda: obj.__dict__.pop(attr, None))
        setattr(obj, attr, value)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    def install(self) -> None:
        watcher = self.services.hotfolder
        files = self.files

        nominate = watcher._nominate

        def traced_nominate(path: Path, now: float, *, from_event: bool = False) -> None:
            tr = files.get(path.name)
            if tr is None:
                return nominate(path, now, from_event=from_event)
            t = time.perf_counter()
            by = "watch" if from_event else "rescan"
            if by == "watch" and math.isnan(tr.first_watch):
                tr.first_watch = t
            if by == "rescan" and math.isnan(tr.first_rescan):
                tr.first_rescan = t
            was = path in watcher._candidates or path in watcher._busy
            nominate(path, now, from_event=from_event)
            if not was and path in watcher._candidates and math.isnan(tr.nominated):
                tr.nominated, tr.nominated_by = t, by

        complete = watcher._complete

        def traced_complete(now: float) -> list[Path]:
            for path in list(watcher._candidates):
                tr = files.get(path.name)
                if tr is not None:
                    tr.ticks += 1
            t0 = time.perf_counter()
            done = complete(now)
            t = time.perf_counter()
            self.ticks += 1
            self.tick_seconds += t - t0
            for path in done:
                tr = files.get(path.name)
                if tr is not None and math.isnan(tr.decided):
                    tr.decided = t
            return done

        handle = watcher.handle

        async def traced_handle(path: Path) -> str | None:
            tr = files.get(path.name)
            if tr is None:
                return await handle(path)
            token = _current.set(tr)
            if math.isnan(tr.handle_start):
                tr.handle_start = time.perf_counter()
            try:
                outcome = await handle(path)
            except BaseException:
                tr.deferrals += 1
                raise
            finally:
                _current.reset(token)
            tr.handle_end = time.perf_counter()
            tr.outcome = outcome
            tr.handled.set()
            return outcome

        def timed_sync(step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                tr = _current.get()  # trio.to_thread copies the task's context to the thread
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if tr is not None:
                        tr.add(step, time.perf_counter() - t0)

            return wrapper

        def timed_async(step: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                tr = _current.get()  # None for the pool's and the web's calls
                t0 = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    if tr is not None:
                        tr.add(step, time.perf_counter() - t0)

            return wrapper

        submit = watcher.dispatcher.submit

        async def traced_submit(new: Any) -> Any:
            tr = _current.get()
            if tr is None:
                return await submit(new)
            tr.db_start = time.perf_counter()
            result = await submit(new)
            tr.visible = time.perf_counter()
            tr.job_seen.set()
            return result

        self._set(watcher, "_nominate", traced_nominate)
        self._set(watcher, "_complete", traced_complete)
        self._set(watcher, "handle", traced_handle)
        self._set(watcher.dispatcher, "submit", traced_submit)
        # registry.active_session is cache.get underneath: timing both would count it twice.
        self._set(watcher.cache, "set", timed_async("redis", watcher.cache.set))
        self._set(watcher.cache, "get", timed_async("redis", watcher.cache.get))
        self._set(watcher.storage, "put", timed_async("storage put", watcher.storage.put))
        self._set(watcher.registry, "refresh_active",
                  timed_async("after: refresh", watcher.registry.refresh_active))  # fmt: skip
        self._set(watcher, "_move", timed_async("after: move", watcher._move))
        m = hotfolder_module
        self._set(m, "_read_bounded", timed_sync("read file", m._read_bounded))
        self._set(m, "probe_image", timed_sync("probe header", m.probe_image))
        sha = timed_sync("sha256", hashlib.sha256)
        self._set(m, "hashlib", SimpleNamespace(sha256=sha))


# -- writing files --------------------------------------------------------------------------


class Writer:
    """Writes one file the way a tethering tool does, in a thread of its own limiter."""

    def __init__(self, folder: Path, bases: Sequence[bytes], chunk: int) -> None:
        self.folder = folder
        self.bases = bases
        self.chunk = chunk
        self.limiter = trio.CapacityLimiter(8)
        self.nonce = secrets.token_hex(6)
        self.count = 0

    async def write(self, tr: FileTrace) -> None:
        base = self.bases[self.count % len(self.bases)]
        self.count += 1
        await trio.to_thread.run_sync(self._write, tr, base, limiter=self.limiter)

    def _write(self, tr: FileTrace, base: bytes) -> None:
        data = variant(base, f"photobot bench_hotfolder {self.nonce} {tr.name}")
        tr.sha256, tr.size = hashlib.sha256(data).hexdigest(), len(data)
        view = memoryview(data)
        path = self.folder / tr.name
        tr.opened = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            for i in range(0, len(view), self.chunk):
                chunk = view[i : i + self.chunk]
                while chunk:
                    chunk = chunk[f.write(chunk) :]
        tr.closed = time.perf_counter()
        tr.closed_wall = time.time()


# -- the scenarios --------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    label: str
    traces: list[FileTrace]
    start: CpuMark | None = None
    end: CpuMark | None = None
    lag: list[float] = field(default_factory=list)
    pool_before: dict[str, int] = field(default_factory=dict)
    pool_after: dict[str, int] = field(default_factory=dict)
    max_in_flight: int = 0
    problems: list[str] = field(default_factory=list)


async def job_counts(services: Services) -> dict[str, int]:
    rows = await services.db.fetch("select status, count(*) as n from jobs group by status")
    return {r["status"]: r["n"] for r in rows}


async def run_sequential(writer: Writer, sc: Scenario, timeout: float) -> None:
    for tr in sc.traces:
        await writer.write(tr)
        try:
            with trio.fail_after(timeout):
                await tr.job_seen.wait()
        except trio.TooSlowError:
            sc.problems.append(f"{tr.name}: no job {timeout:g} s after its close")
            return
    with trio.move_on_after(timeout):
        for tr in sc.traces:
            await tr.handled.wait()


async def run_burst(
    writer: Writer, sc: Scenario, rate: float, timeout: float, services: Services
) -> None:
    async def watch_backlog() -> None:
        watcher = services.hotfolder
        while True:
            sc.max_in_flight = max(sc.max_in_flight, len(watcher._candidates) + len(watcher._busy))
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_backlog)
        async with trio.open_nursery() as writers:
            t0 = trio.current_time()
            for i, tr in enumerate(sc.traces):
                await trio.sleep_until(t0 + i / rate)
                writers.start_soon(writer.write, tr)
        with trio.move_on_after(timeout):
            for tr in sc.traces:
                await tr.handled.wait()
        nursery.cancel_scope.cancel()


async def check(services: Services, tracer: Tracer, sc: Scenario) -> None:
    """One job per file, every file in processed/ under its name, nothing anywhere else."""
    rows = await services.db.fetch(
        "select input_sha256, created_at from jobs where source = 'hotfolder'"
    )
    by_sha: dict[str, list[Any]] = {}
    for r in rows:
        by_sha.setdefault(r["input_sha256"], []).append(r["created_at"])
    paths = services.hotfolder.paths
    processed = {p.name for p in paths.processed.iterdir()}
    for tr in sc.traces:
        created = by_sha.get(tr.sha256, [])
        if len(created) != 1:
            sc.problems.append(f"{tr.name}: {len(created)} jobs")
        else:
            tr.created_wall = created[0].timestamp()
        if tr.name not in processed:
            sc.problems.append(f"{tr.name}: not in processed/")
        if tr.outcome != "processed":
            sc.problems.append(f"{tr.name}: outcome {tr.outcome!r}")
        if tr.deferrals:
            sc.problems.append(f"{tr.name}: waited (deferred) {tr.deferrals} time(s)")
    known = {tr.sha256 for tr in tracer.files.values()}
    strangers = set(by_sha) - known
    if strangers:
        sc.problems.append(f"{len(strangers)} hot-folder job(s) for no file of this bench")
    for folder in (paths.orphan, paths.invalid):
        if any(folder.iterdir()):
            sc.problems.append(f"{folder.name}/ is not empty: {sorted(os.listdir(folder))[:5]}")
    left = [p.name for p in paths.root.iterdir() if p.is_file()]
    if left:
        sc.problems.append(f"{len(left)} file(s) left in the hot folder: {left[:5]}")


@dataclass
class Result:
    settings: Settings
    scenarios: list[Scenario]
    booth_start: float
    warmup: float
    load_before: float
    tracer: Tracer
    workers: int


async def setup_capture(http: httpx.AsyncClient) -> None:
    r = await http.post("/auth/login", json={"password": PASSWORD})
    _expect(r, 200)
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await http.post("/events", json={"name": "Bench hot folder"}, headers=auth)
    _expect(r, 201)
    event_id = r.json()["id"]
    r = await http.post(
        "/sessions", json={"eventId": event_id, "name": "Bench Guest", "whatsapp": "08123456789"}
    )
    _expect(r, 201)
    session = r.json()
    r = await http.post(
        f"/booth/{BOOTH}/active-session",
        json={"sessionId": session["sessionId"], "eventId": event_id},
        headers=auth,
    )
    _expect(r, 200)


def _asgi(services: Services) -> Any:
    """The app as ``photobot run`` serves it (``create_asgi`` where the web layer has it)."""
    return getattr(web.app, "create_asgi", web.app.create_app)(services)


def _expect(r: httpx.Response, status: int) -> None:
    if r.status_code != status:
        raise SystemExit(
            f"bench_hotfolder: {r.request.method} {r.request.url.path} answered "
            f"{r.status_code}, expected {status}: {r.text[:500]}"
        )


async def bench(args: argparse.Namespace, bases: list[bytes], work: Path) -> Result:
    t_start = trio.current_time()
    servers = work / "servers"
    async with (
        open_embedded_postgres(servers / "postgres") as pg,
        open_embedded_redis(servers / "redis") as rd,
    ):
        dsn = await ensure_database(pg.url, "photobot")
        settings = load_settings(
            database_url=dsn,
            redis_url=rd.url,
            operator_password=PASSWORD,
            hotfolder_path=work / "hot",
            booth_id=BOOTH,
        )
        async with open_services(settings, work / "data") as services, trio.open_nursery() as inner:
            tracer = Tracer(services)
            tracer.install()
            supervisor = build_supervisor(services)
            stop = trio.Event()
            try:
                await inner.start(supervisor.run)
                config = HypercornConfig()
                config.bind = ["127.0.0.1:0"]
                config.accesslog = None
                config.errorlog = logging.getLogger("hypercorn.error")  # type: ignore[assignment]
                binds = await inner.start(
                    functools.partial(serve, _asgi(services), config, shutdown_trigger=stop.wait)
                )
                async with httpx.AsyncClient(base_url=binds[0], timeout=30) as http:
                    await setup_capture(http)
                booth_start = trio.current_time() - t_start
                hot = services.hotfolder.paths.root
                writer = Writer(hot, bases, args.chunk_kib * 1024)

                t0 = trio.current_time()
                warm = Scenario("warm-up", "warm-up", [tracer.trace("WARMUP.JPG", "warm-up")])
                await run_sequential(writer, warm, args.timeout)
                warmup = trio.current_time() - t0
                if warm.problems:
                    raise SystemExit(f"bench_hotfolder: warm-up failed: {warm.problems}")

                seq = Scenario(
                    "A",
                    f"{args.files} files one at a time (each once the previous job exists)",
                    [tracer.trace(f"A_{i:04d}.JPG", "A") for i in range(args.files)],
                )
                burst = Scenario(
                    "B",
                    f"{args.burst} files at {args.rate:g} files/s",
                    [tracer.trace(f"B_{i:04d}.JPG", "B") for i in range(args.burst)],
                )
                load_before = os.getloadavg()[0]
                lag = LoopLag()
                inner.start_soon(lag.run)
                for sc in (seq, burst):
                    sc.pool_before = await job_counts(services)
                    first_lag = len(lag.samples)
                    sc.start = CpuMark.now()
                    if sc is seq:
                        await run_sequential(writer, sc, args.timeout)
                    else:
                        await run_burst(writer, sc, args.rate, args.timeout, services)
                    sc.end = CpuMark.now()
                    sc.lag = lag.samples[first_lag:]
                    sc.pool_after = await job_counts(services)
                    await check(services, tracer, sc)
            finally:
                tracer.restore()
                await supervisor.stop()
                stop.set()
                inner.cancel_scope.cancel()
    workers = services.hotfolder.workers
    return Result(settings, [seq, burst], booth_start, warmup, load_before, tracer, workers)


# -- report ---------------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {1000 * percentile(values, 50):6.0f} ms, p95 {1000 * percentile(values, 95):6.0f} ms,"
        f" max {1000 * max(values):6.0f} ms"
    )


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def report_scenario(sc: Scenario, cores: int, workers: int) -> list[float]:
    done = [t for t in sc.traces if math.isfinite(t.latency) and math.isfinite(t.db_start)]
    lat = [t.latency for t in done]
    print(f"scenario {sc.name}: {sc.label}")
    if not done:
        print("  no file reached a job")
        return []
    print(f"  close → job created_at      {_ms(lat)}")
    print(f"  close → INSERT committed    {_ms(_finite([t.visible - t.closed for t in done]))}"
          "  (seen by the watcher)")  # fmt: skip
    print(f"  close → file in processed/  {_ms(_finite([t.handle_end - t.closed for t in done]))}")
    print(f"  writing (open → close)      {_ms([t.closed - t.opened for t in done])}")
    busy = _finite([t.handle_end - t.handle_start for t in done])
    if busy:
        mean_busy = sum(busy) / len(busy)
        print(
            f"  a worker's time per file (handle: read → moved) {_ms(busy)}; mean "
            f"{1000 * mean_busy:.0f} ms x {workers} workers → at most "
            f"{workers / mean_busy:.1f} files/s"
        )
    if sc.name == "B":
        first_open = min(t.opened for t in sc.traces)
        last_close = max(t.closed for t in sc.traces)
        last_created = max(t.created for t in done)
        last_moved = max(_finite([t.handle_end for t in done]), default=math.nan)
        print(
            f"  total: first open → last job created {last_created - first_open:.1f} s, "
            f"→ last file in processed/ {last_moved - first_open:.1f} s "
            f"(writes span {last_close - first_open:.1f} s); "
            f"most files in the watcher at once: {sc.max_in_flight}"
        )
    phases = [t.phases() for t in done]
    columns = list(zip(*phases, strict=True))
    mean_total = sum(lat) / len(lat)
    print("  where close → created_at goes (per file: mean, p95, share of the mean):")
    for name, col in zip(PHASES, columns, strict=True):
        mean = sum(col) / len(col)
        print(
            f"    {name:<27} {1000 * mean:7.1f} ms  p95 {1000 * percentile(col, 95):7.1f} ms"
            f"  {100 * mean / mean_total:5.1f} %"
        )
    after = [t.steps.get("after: refresh", 0) + t.steps.get("after: move", 0) for t in done]
    print(f"    (after the row: session refresh + move, mean {1000 * sum(after) / len(after):.1f}"
          " ms, not in the latency)")  # fmt: skip
    by = Counter(t.nominated_by for t in done)
    after_open = _finite([t.first_watch - t.opened for t in done])
    after_close = _finite([t.first_watch - t.closed for t in done])
    early = sum(1 for t in done if t.nominated < t.closed)
    print(f"  first watch event: {_ms(after_open)} after open; {_ms(after_close)} after close")
    ticks = Counter(t.ticks for t in done)
    print(
        f"  nominated by: watch event {by['watch']}, rescan {by['rescan']}; "
        f"a candidate before its close: {early}/{len(done)}; timer passes per file: "
        + ", ".join(f"{n} → {k} file(s)" for n, k in sorted(ticks.items()))
    )
    assert sc.start is not None and sc.end is not None
    cpu = sc.end - sc.start
    print(
        f"  CPU over {cpu.at:.1f} s: event-loop thread {100 * cpu.loop / cpu.at:3.0f} % of a core,"
        f" all CPUs {100 * (cpu.process + cpu.servers) / (cpu.at * cores):3.0f} % busy"
    )
    if sc.lag:
        print(
            f"  event-loop lag (late wake-ups of a 10 ms sleep): "
            f"p50 {1000 * percentile(sc.lag, 50):.1f} ms, p99 {1000 * percentile(sc.lag, 99):.1f}"
            f" ms, max {1000 * max(sc.lag):.1f} ms"
        )
    finished = sum(sc.pool_after.get(s, 0) - sc.pool_before.get(s, 0)
                   for s in ("succeeded", "failed", "canceled"))  # fmt: skip
    print(
        f"  AI pool meanwhile: {finished} job(s) finished; at the end "
        f"{sc.pool_after.get('queued', 0)} queued, {sc.pool_after.get('running', 0)} running"
    )
    return lat


def settings_note(settings: Settings) -> str:
    changed = [
        f"{info.validation_alias}={getattr(settings, name)}"
        for name in NOTED_SETTINGS
        if getattr(settings, name) != (info := Settings.model_fields[name]).default
    ]
    return "default settings" if not changed else "default settings but " + ", ".join(changed)


def report(args: argparse.Namespace, res: Result) -> int:
    cores = os.cpu_count() or 1
    w, h = photo_size(args.megapixels)
    s = res.settings
    files = [t for sc in res.scenarios for t in sc.traces if t.size]
    mean_mb = sum(t.size for t in files) / max(1, len(files)) / 1e6
    print(
        f"hot folder ingest: {args.megapixels:g} MP ({w}x{h} JPEG q{JPEG_QUALITY}, mean "
        f"{mean_mb:.1f} MB), written in {args.chunk_kib} KiB chunks, {cores} cores"
    )
    print(
        f"settings: {settings_note(s)} — FILE_STABILITY_DELAY_MS={s.file_stability_delay_ms}, "
        f"WORKER_CONCURRENCY_LOCAL={s.worker_concurrency_local} (the AI pool runs, as on a "
        f"booth), AI_PROVIDER_DEFAULT={s.ai_provider_default}; embedded PostgreSQL/Redis durable "
        "on disk, local storage with fsync"
    )
    print(
        "latency = job row created_at (PostgreSQL now(), same machine clock) minus close() of the "
        "file's last byte; no polling"
    )
    print(
        f"setup: booth start {res.booth_start:.1f} s, warm-up file {res.warmup:.2f} s (excluded);"
        f" 1-min load average before: {res.load_before:.2f} (other processes share the cores)"
    )
    t = res.tracer
    lats = [report_scenario(sc, cores, res.workers) for sc in res.scenarios]
    if t.ticks:
        print(
            f"completeness timer: {t.ticks} ticks, stat pass in its thread mean "
            f"{1000 * t.tick_seconds / t.ticks:.2f} ms"
        )
    problems = [f"scenario {sc.name}: {p}" for sc in res.scenarios for p in sc.problems]
    total = sum(len(sc.traces) for sc in res.scenarios)
    if problems:
        print(f"CHECK FAILED ({len(problems)} problem(s)):")
        for p in problems[:30]:
            print(f"  {p}")
    else:
        print(
            f"checks: {total} files → {total} jobs, one per file (by SHA-256), all in processed/ "
            "under their own names; orphan/ and invalid/ empty; no retries"
        )
    a, b = (f"{1000 * percentile(x, 95):.0f}" if x else "n/a" for x in lats)
    print(
        f"hotfolder ingest: p95 {a} ms sequential, p95 {b} ms burst {args.burst} @ "
        f"{args.rate:g}/s ({args.megapixels:g} MP, {settings_note(s)})"
    )
    return 1 if problems else 0


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--files", type=int, default=100, help="sequential files (default 100)")
    ap.add_argument("--burst", type=int, default=300, help="burst files (default 300)")
    ap.add_argument("--rate", type=float, default=10, help="burst files per second (default 10)")
    ap.add_argument("--megapixels", type=float, default=24, help="photo size (default 24)")
    ap.add_argument("--chunk-kib", type=int, default=1024, help="write size (default 1024)")
    ap.add_argument("--timeout", type=float, default=120, help="per-wait limit in s")
    args = ap.parse_args()
    if min(args.files, args.burst, args.chunk_kib) < 1 or min(args.rate, args.megapixels) <= 0:
        ap.error("--files, --burst, --rate, --megapixels and --chunk-kib must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    wall0 = time.monotonic()
    remove_stale(tempfile.gettempdir())
    # On disk, not tmpfs: the hot folder, storage and the durable servers, as on a booth.
    work = Path(tempfile.mkdtemp(prefix=f"photobot-bench-{os.getpid()}-"))
    try:
        bases = load_bases(args.megapixels)
        res = trio.run(bench, args, bases, work)
        print(f"total wall time of the benchmark: {time.monotonic() - wall0:.1f} s")
        code = report(args, res)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
