"""photobot.concurrency: glibc's arena limit."""

from __future__ import annotations

import os
import subprocess
import sys

#: Eight threads malloc at once, then glibc's own report counts the arenas (``<heap nr=``).
COUNT_ARENAS = r"""
import ctypes, re, sys, tempfile, threading
from photobot.concurrency import limit_malloc_arenas
if sys.argv[1] == "limit":
    print(limit_malloc_arenas(2))
start = threading.Barrier(8)
def churn():
    start.wait()
    for _ in range(500):
        [bytearray(1000) for _ in range(50)]
threads = [threading.Thread(target=churn) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile("r") as report:
    f = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(len(re.findall("<heap nr=", report.read())))
"""


def arenas(mode: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", COUNT_ARENAS, mode],
        env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.split()


def test_malloc_arenas_are_limited_where_threads_would_each_take_one() -> None:
    # The same churn makes an arena per busy thread without the limit (what kept freed photo
    # buffers resident), and stays in two with it.
    [unlimited] = arenas("free")
    assert int(unlimited) > 2
    assert arenas("limit") == ["True", "2"]


def test_an_operators_malloc_arena_max_is_left_alone() -> None:
    assert arenas("limit", MALLOC_ARENA_MAX="3") == ["False", "3"]
