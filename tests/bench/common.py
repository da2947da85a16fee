"""Helpers every benchmark here shares."""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from photobot.concurrency import limit_malloc_arenas
from photobot.config import Settings, load_settings
from photobot.db import ensure_database
from photobot.embedded import open_embedded_postgres, open_embedded_redis
from photobot.embedded._process import pid_alive
from photobot.root import Services, build_supervisor, open_services
from web.app import create_app


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of a non-empty sequence."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def proc_status_kib(field: str, pid: int | str = "self") -> int:
    """A memory figure (``VmRSS``, ``VmHWM``…) of a process from /proc, in KiB; 0 if gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def server_tmp_base() -> str:
    # As in tests/conftest.py: tmpfs when available; as root the servers run as `nobody`, and
    # the embedded code gives the parent folders o+x so that account can reach its data dir.
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def remove_stale(base: str) -> None:
    for stale in Path(base).glob("photobot-bench-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


@dataclass
class BenchBooth:
    """A whole booth running in the benchmark's own process (see :func:`open_bench_booth`)."""

    services: Services
    base_url: str
    #: ``ws://127.0.0.1:<port>`` of the gallery's websocket listener.
    ws_base: str
    settings: Settings


@asynccontextmanager
async def open_bench_booth(
    work: Path, servers: Path, password: str, **settings: Any
) -> AsyncIterator[BenchBooth]:
    """Embedded PostgreSQL and Redis (``durable=False``, data in ``servers``), local storage in
    ``work/data``, the real supervisor and actors, Hypercorn and the gallery's websocket
    listener on free loopback ports — what ``photobot run`` serves, minus the signal handling.
    ``settings`` override the defaults (``load_settings`` keywords)."""
    limit_malloc_arenas()  # as ``photobot run`` does: its memory is what is measured
    async with (
        open_embedded_postgres(servers / "postgres", durable=False) as pg,
        open_embedded_redis(servers / "redis", durable=False) as rd,
    ):
        dsn = await ensure_database(pg.url, "photobot")
        # One operator sends every photo of a benchmark: POST /jobs' per-operator limit is
        # abuse protection, not part of what is measured.
        settings.setdefault("jobs_rate_limit_per_minute", 100_000)
        config = load_settings(
            database_url=dsn, redis_url=rd.url, operator_password=password, **settings
        )
        async with open_services(config, work / "data") as services, trio.open_nursery() as inner:
            supervisor = build_supervisor(services)
            await inner.start(supervisor.run)
            hyper = HypercornConfig()
            hyper.bind = ["127.0.0.1:0"]
            hyper.accesslog = None
            hyper.errorlog = logging.getLogger("hypercorn.error")  # type: ignore[assignment]
            stop = trio.Event()
            binds = await inner.start(
                functools.partial(serve, create_app(services), hyper, shutdown_trigger=stop.wait)
            )
            ws_port = await inner.start(services.gallery.server.serve, "127.0.0.1", 0)
            try:
                yield BenchBooth(services, binds[0], f"ws://127.0.0.1:{ws_port}", config)
            finally:
                await supervisor.stop()
                stop.set()
                await services.gallery.server.aclose(timeout=0.5)
                inner.cancel_scope.cancel()


@contextmanager
def bench_dirs() -> Iterator[tuple[Path, Path]]:
    """``(servers, work)``: fresh folders for the embedded servers' data (tmpfs when there is
    one) and for everything else, removed afterwards; stale ones of dead runs go first."""
    server_base = server_tmp_base()
    remove_stale(server_base)
    remove_stale(tempfile.gettempdir())
    prefix = f"photobot-bench-{os.getpid()}-"
    servers = Path(tempfile.mkdtemp(prefix=prefix, dir=server_base))
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield servers, work
    finally:
        shutil.rmtree(servers, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
