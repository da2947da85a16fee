"""Run a real ``photobot run`` subprocess for tests and benchmarks (no trio in here: plain
processes, so the caller can be a sync test or a benchmark script)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from photobot.embedded._process import pid_alive, proc_ppid

_SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "S3_", "PHOTOBOT_", "PORT", "HOST")


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any setting that would point the booth elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_VARS)}
    env.update(extra)
    return env


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (e.g. a data dir): our child servers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children, their children, …)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ppid = proc_ppid(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


#: Running (a zombie waiting for a reaper counts as gone).
alive = pid_alive


@dataclass
class Booth:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=clean_env)
    proc: subprocess.Popen[bytes] | None = None
    url: str | None = None
    output: list[str] = field(default_factory=list)
    #: Where the booth's log (stderr) goes; None keeps it in a pipe, read when the booth exits.
    #: A booth that runs for long must have one: nobody drains the pipe, and a full pipe blocks.
    log_path: Path | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for the ready line; return seconds from spawn to ready."""
        started = time.monotonic()
        log = self.log_path.open("ab") if self.log_path is not None else subprocess.PIPE
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "photobot", "run", "--host", "127.0.0.1", "--port", "0",
             "--data-dir", str(self.data_dir), *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            env=self.env,
            cwd=self.data_dir.parent,
        )  # fmt: skip
        if self.log_path is not None:
            log.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        deadline = started + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline().decode()
                self.output.append(line)
                if line.startswith("Photobot is ready: "):
                    self.url = line.split(": ", 1)[1].strip()
                    return time.monotonic() - started
            if self.proc.poll() is not None:
                raise RuntimeError(f"photobot exited {self.proc.returncode}: {self.stderr()}")
        raise TimeoutError(f"photobot not ready in {timeout} s: {self.stderr()}")

    def get_json(self, path: str, timeout: float = 10) -> tuple[int, dict]:  # type: ignore[type-arg]
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_healthy(self, timeout: float = 20) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get_json("/health")
            if status == 200 and body["status"] == "ok":
                return body
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy: {body}")
            time.sleep(0.05)

    def children(self) -> list[int]:
        assert self.proc is not None
        return descendants(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace")[-4000:]
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
