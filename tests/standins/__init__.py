"""Local stand-ins for external services, for tests.

Each stand-in also runs as its own process (``python -m tests.standins.<name> --port 0 …``),
printing ``listening on URL`` once it accepts connections: :func:`standin_process` starts one
that way, as the README's manual flows and the benchmarks do.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
PREFIX = "listening on "


@asynccontextmanager
async def standin_process(name: str, *args: str) -> AsyncIterator[str]:
    """Run stand-in ``name`` in a process of its own; yields its URL, and ends it on exit
    (SIGTERM, then SIGKILL after 5 s)."""
    cmd = [sys.executable, "-m", f"tests.standins.{name}", "--port", "0", *args]
    proc = await trio.lowlevel.open_process(cmd, cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                assert chunk, f"the {name} stand-in exited before listening"
                line += chunk
        text = line.decode().strip()
        assert text.startswith(PREFIX + "http://127.0.0.1:"), text
        yield text.removeprefix(PREFIX)
    finally:
        proc.terminate()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
