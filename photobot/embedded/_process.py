"""Process plumbing shared by the embedded PostgreSQL and Redis servers.

Ownership model: the Python process that calls ``start()`` owns the server process. It is a
direct child (never daemonized), started in its own session so a Ctrl-C in the terminal reaches
Photobot only and Photobot decides when its servers stop. Three things stop a server:

* ``stop()`` of its owner (signal + wait, escalating to SIGKILL after a timeout);
* the kernel, when the owner dies for any reason, including SIGKILL: every server is spawned with
  ``PR_SET_PDEATHSIG`` so it receives its own graceful-shutdown signal;
* the next ``start()`` on the same data dir, if a server from a previous run is still alive and
  orphaned (its owner is gone): it is shut down cleanly before a new one is started. We never
  adopt such a process: a server we did not spawn has no death signal tied to us and cannot be
  waited for, so the next kill of Photobot would orphan it again.

When we run as root the servers run as an unprivileged account (PostgreSQL refuses root; Redis
does not need it), ``nobody`` unless ``PHOTOBOT_EMBEDDED_USER`` names another one.

Everything here is blocking and thread-safe; the trio wrappers call it via ``trio.to_thread``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import logging
import os
import pwd
import queue
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Self, TypeVar

import trio

from photobot.concurrency import open_nursery
from photobot.errors import ConfigError, Unavailable

log = logging.getLogger("photobot.embedded")

#: Env var naming the account the servers run as when Photobot runs as root.
USER_ENV = "PHOTOBOT_EMBEDDED_USER"
DEFAULT_USER = "nobody"

# How long a live server whose owner is alive may take to go away before start() refuses.
IN_USE_GRACE = 3.0

# A log file larger than this is moved aside (one generation kept) when a server starts.
_LOG_ROTATE_BYTES = 8 * 1024 * 1024


class EmbeddedServerError(Unavailable):
    """An embedded server could not be started or stopped; the message carries its log tail."""

    code = "embedded_server_unavailable"


# --------------------------------------------------------------------------------------------
# ports


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the kernel picks it: bind to port 0).

    There is a window between closing our socket and the server binding the port; callers retry
    with a fresh port when the server reports "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_listening(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# unprivileged account


@dataclass(frozen=True)
class Account:
    """The unprivileged account a server runs as when we are root."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        # extra_groups=[] drops root's supplementary groups (otherwise the child keeps them).
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def server_account() -> Account | None:
    """The account servers must run as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(USER_ENV, DEFAULT_USER)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"{USER_ENV}={name!r}: no such user; embedded servers cannot run as root"
        ) from None
    if pw.pw_uid == 0:
        raise ConfigError(f"{USER_ENV}={name!r} is root; embedded servers need another user")
    return Account(name, pw.pw_uid, pw.pw_gid)


def _can_search(st: os.stat_result, account: Account) -> bool:
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:  # extra_groups=[]: the primary group is the only group
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def ensure_traversable(path: Path, account: Account | None) -> None:
    """Make every ancestor directory of ``path`` searchable by ``account``.

    The server opens its data dir and binaries by absolute path, so it needs search (x) permission
    on every ancestor. Only directories that lack it get ``o+x``: that lets the account pass
    through by exact name but not list the directory (no ``o+r``), so nothing else is exposed.
    Typical case: pytest's ``/tmp/pytest-of-root`` is 0700.
    """
    if account is None:
        return
    for parent in reversed(Path(path).resolve().parents):
        st = parent.stat()
        if not _can_search(st, account):
            os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            log.debug("chmod o+x %s so %s can reach %s", parent, account.name, path)


def ensure_executable(binary: Path, account: Account | None) -> None:
    """Check ``binary`` exists and ``account`` can run it (fixing parent traversal if needed)."""
    if not binary.is_file():
        raise ConfigError(f"embedded server binary not found: {binary}")
    ensure_traversable(binary, account)
    st = binary.stat()
    if account is None:
        if not os.access(binary, os.X_OK):
            raise ConfigError(f"embedded server binary is not executable: {binary}")
        return
    if st.st_uid == account.uid:
        ok = st.st_mode & stat.S_IXUSR
    elif st.st_gid == account.gid:
        ok = st.st_mode & stat.S_IXGRP
    else:
        ok = st.st_mode & stat.S_IXOTH
    if not ok:
        raise ConfigError(f"{binary} is not executable by {account.name} (needs o+rx)")


def prepare_owned_dir(path: Path, account: Account | None) -> Path:
    """Create ``path`` (mode 0700) owned by ``account`` and reachable by it; return it resolved."""
    path = Path(path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if account is not None:
        ensure_traversable(path, account)
        st = path.stat()
        if st.st_uid != account.uid:
            os.chown(path, account.uid, account.gid)
    os.chmod(path, 0o700)
    return path


def chown_tree(path: Path, account: Account | None) -> None:
    """Give ``path`` and everything under it to ``account`` (if its top is not already theirs)."""
    if account is None or not path.exists() or path.stat().st_uid == account.uid:
        return
    os.chown(path, account.uid, account.gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# spawning with a parent-death signal

_PR_SET_PDEATHSIG = 1

try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _death_signal_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    """preexec_fn that asks the kernel to send ``sig`` to the child when its parent dies.

    CPython's subprocess runs setgroups/setregid/setreuid *before* preexec_fn. That order is
    required: the kernel clears PDEATHSIG whenever the effective uid/gid changes, so the setting
    has to come after the switch to the unprivileged account. It survives the execve (the server
    binaries are not set-uid). The ppid re-check closes the race where we died before prctl ran.
    """
    if _prctl is None:
        return None
    prctl = _prctl
    parent = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)

    return preexec


class _Spawner:
    """Runs every ``Popen`` of a server on one long-lived daemon thread.

    Why: Linux sends PDEATHSIG when the *thread* that forked the child exits, not when the
    process does. ``trio.to_thread`` workers exit after ~10 s idle, so a server forked there would
    be told to shut down seconds after a successful start. This thread only ends with the process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[
            tuple[concurrent.futures.Future[subprocess.Popen[bytes]], Callable[[], Any]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            fut, fn = self._queue.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:
                    fut.set_exception(exc)

    def popen(self, fn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        with self._lock:
            # After os.fork() the thread object exists but is not alive: start a new one.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="photobot-embedded-spawner", daemon=True
                )
                self._thread.start()
        fut: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._queue.put((fut, fn))
        return fut.result()


_spawner = _Spawner()


def spawn_server(
    argv: Sequence[str | os.PathLike[str]],
    *,
    account: Account | None,
    log_file: IO[bytes],
    death_signal: signal.Signals,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server as our direct child with a parent-death signal."""
    kwargs: dict[str, Any] = account.popen_kwargs() if account else {}

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [os.fspath(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            # Own session: terminal signals (Ctrl-C) go to Photobot, which then stops us in order.
            start_new_session=True,
            preexec_fn=_death_signal_preexec(death_signal),
            **kwargs,
        )

    return _spawner.popen(popen)


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    account: Account | None,
    log_file: IO[bytes],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> int:
    """Run a short-lived helper (initdb) to completion, output appended to the server log.

    No death signal: if Photobot dies meanwhile, initdb may as well finish into its temp dir.
    """
    kwargs: dict[str, Any] = account.popen_kwargs() if account else {}
    return subprocess.run(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        timeout=timeout,
        check=False,
        **kwargs,
    ).returncode


def stop_child(
    proc: subprocess.Popen[bytes],
    sig: signal.Signals,
    *,
    timeout: float,
    escalate: Sequence[signal.Signals] = (),
) -> int:
    """Send ``sig`` and wait; then each ``escalate`` signal and finally SIGKILL. Returns rc."""
    for s in (sig, *escalate, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(s)
        try:
            proc.wait(timeout if s is sig else 5.0)
            break
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not exit after %s; escalating", proc.pid, s.name)
    return proc.wait()


# --------------------------------------------------------------------------------------------
# processes left over by a previous run


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie has exited; only its entry remains)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    # Format: "pid (comm) S ..."; comm may contain spaces or ')', so split at the last ')'.
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] not in (b"Z", b"X")


def proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def proc_ppid(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2 :].split()[1])


def proc_uid(pid: int) -> int | None:
    """Real uid of ``pid`` (from /proc/<pid>/status), or None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def pids_with_cwd(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (servers chdir to their data)."""
    directory = directory.resolve()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and proc_cwd(int(entry)) == directory and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def reclaim_stale(
    pid_file: Path,
    workdir: Path,
    *,
    stop_signal: signal.Signals,
    what: str,
    sweep_children: bool = False,
) -> None:
    """Make sure no server from a previous run still uses ``workdir`` before we start one.

    ``pid_file`` is the server's own pid file; its process is identified as ours by its working
    directory (both servers chdir into their data), which also guards against pid reuse.

    * dead, or the pid now belongs to an unrelated process: remove the stale file;
    * alive and orphaned (reparented to init: Photobot was SIGKILLed and the death signal was
      missed or is still being handled): stop it cleanly with ``stop_signal``, then SIGKILL;
    * alive with a live parent: another process owns it. Give it 3 s to go away (it may be
      shutting down after its owner died under a subreaper), else refuse to start: two owners
      of one data dir is a misconfiguration, and stopping a live owner's server would break it.

    ``sweep_children`` also waits for (then kills) other processes still in ``workdir``:
    PostgreSQL backends outlive a SIGKILLed postmaster briefly, and the new postmaster refuses to
    start while they still hold the old shared memory.
    """
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    workdir = workdir.resolve()
    if pid_alive(pid) and proc_cwd(pid) == workdir:
        ppid = proc_ppid(pid)
        if ppid == 1:
            log.warning("stopping orphaned %s (pid %d) left by a previous run", what, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stop_signal)
            if not wait_pid_gone(pid, 15.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_pid_gone(pid, 5.0)
        elif not wait_pid_gone(pid, IN_USE_GRACE):
            raise EmbeddedServerError(
                f"{what} data dir {workdir} is in use by pid {pid} (parent pid {ppid}); "
                "stop that process first"
            )
    if sweep_children:
        deadline = time.monotonic() + 5.0
        while leftovers := pids_with_cwd(workdir):
            if time.monotonic() >= deadline:
                log.warning("killing leftover %s processes %s", what, leftovers)
                for p in leftovers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
                for p in leftovers:
                    wait_pid_gone(p, 5.0)
                break
            time.sleep(0.02)
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# logs


def open_log(path: Path, account: Account | None) -> tuple[IO[bytes], int]:
    """Open the server log for appending; return it and the offset where this run starts."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    f = open(path, "ab")  # handed to the child; the caller closes it
    if account is not None:
        os.fchown(f.fileno(), account.uid, account.gid)
    return f, f.tell()


def log_tail(path: Path, offset: int = 0, lines: int = 25) -> str:
    """The last ``lines`` lines written to ``path`` after ``offset``, for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChildServer:
    """Bookkeeping every embedded server shares: the child process, its port, stopping it.

    A subclass implements ``start()`` (which sets ``_proc`` and ``_port``) and names its
    ``stop_signal`` (graceful) and the ``escalate`` signals tried before SIGKILL.
    """

    name: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    escalate: ClassVar[tuple[signal.Signals, ...]] = ()

    def __init__(
        self, data_dir: Path, *, durable: bool, start_timeout: float, stop_timeout: float
    ) -> None:
        self.data_dir = Path(data_dir)
        self.durable = durable
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        #: Set by :meth:`revive`: the port clients already have in their URLs.
        self._keep_port: int | None = None

    def start(self) -> None:
        raise NotImplementedError

    def _candidate_port(self) -> int:
        """The port for the next start attempt: the old one on a revive, else any free one."""
        return self._keep_port if self._keep_port is not None else free_port()

    def revive(self) -> bool:
        """Start again, on the same port, a server that died on its own (crash, OOM killer);
        ``False`` if it is running. Clients keep their URLs and reconnect by themselves."""
        if self.running or self._port is None:  # running, or stopped on purpose
            return False
        rc = self._proc.poll() if self._proc is not None else None  # None: an earlier revive failed
        port = self._port
        log.error("embedded %s on port %s is not running (rc %s); starting it again",
                  self.name, port, rc)  # fmt: skip
        self._proc = None
        self._keep_port = port
        try:
            self.start()
        finally:
            self._keep_port = None
        return True

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EmbeddedServerError(f"embedded {self.name} is not running")
        return self._proc.pid

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise EmbeddedServerError(f"embedded {self.name} is not running")
        return self._port

    def stop(self) -> None:
        """Graceful shutdown and wait. Idempotent; also reaps a server that died on its own."""
        proc, port = self._proc, self._port
        if proc is None:
            self._port = None  # e.g. a revive that failed: nothing to stop, nothing to revive
            return
        t0 = time.monotonic()
        rc = stop_child(
            proc, self.stop_signal, timeout=self.stop_timeout, escalate=list(self.escalate)
        )
        self._proc = self._port = None
        log.info(
            "%s on port %s stopped (rc %d, %.2f s)", self.name, port, rc, time.monotonic() - t0
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


ServerT = TypeVar("ServerT", bound=ChildServer)


@asynccontextmanager
async def running_in_thread(
    server: ServerT, *, keep_alive: float | None = None
) -> AsyncIterator[ServerT]:
    r"""Trio context manager: start in a worker thread, yield, stop (shielded) on exit.

    With ``keep_alive`` (seconds), a watcher checks that often that the server still runs and
    :meth:`ChildServer.revive`\ s it if not (failed revives are retried with back-off); it is
    cancelled before the server is stopped, so it never revives a server being shut down.

    Starting from a short-lived worker thread is safe: servers are forked on a long-lived
    spawner thread, so the death signal is tied to the process, not to the worker.
    """
    await trio.to_thread.run_sync(server.start)
    try:
        if keep_alive is None:
            yield server
        else:
            async with open_nursery() as nursery:  # the body's errors leave unwrapped
                nursery.start_soon(_keep_alive, server, keep_alive)
                try:
                    yield server
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)


async def _keep_alive(server: ChildServer, every: float) -> None:
    delay = every
    while True:
        await trio.sleep(delay)
        try:
            if await trio.to_thread.run_sync(server.revive):
                log.warning("embedded %s is back on port %s", server.name, server.port)
            delay = every
        except (EmbeddedServerError, OSError) as exc:
            # e.g. the dead postmaster's backends still hold its shared memory: try again soon.
            log.error("embedded %s could not be started again: %s", server.name, exc)
            delay = min(max(delay * 2, 1.0), 30.0)
