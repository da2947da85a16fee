"""Small Trio helpers shared by the adapters and actors."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from photobot.errors import Unavailable

T = TypeVar("T")


def sole(group: BaseExceptionGroup) -> BaseException:
    """The single exception inside (nested) groups, or the group itself when there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose lone exception leaves as itself, not wrapped in an ExceptionGroup.

    For helper tasks that serve one main body (a progress watcher beside a job, a loop beside a
    bridge): callers can then ``except SomeDomainError`` as if there were no nursery. Several
    concurrent failures still come out as a group.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise sole(group) from None


async def save_patiently(
    write: Callable[[], Awaitable[T]],
    *,
    patience: float,
    log: logging.Logger,
    extra: dict[str, Any],
    first_delay: float = 0.1,
    max_delay: float = 5.0,
) -> T:
    """Run ``write`` (recording work already done: a styled photo, a cut clip) until it
    stops raising :class:`Unavailable`, for up to ``patience`` seconds, then let the last
    error out. Giving up at the first database hiccup would redo that work.

    Each try is shielded, so a cancel never leaves a write half done; the waits between tries
    are not, so a shutdown is not held up by an outage (the work is picked up again on restart).
    ``write`` must be safe to repeat: its first try may have committed without our hearing.
    """
    delay = first_delay
    deadline = trio.current_time() + patience
    while True:
        try:
            with trio.CancelScope(shield=True):
                return await write()
        except Unavailable as exc:
            if trio.current_time() + delay > deadline:
                raise
            log.warning("result not saved yet, retrying", extra={**extra, "error": exc.message})
        await trio.sleep(delay)
        delay = min(delay * 2, max_delay)


#: glibc's ``mallopt`` parameter for the most arenas it may create.
_M_ARENA_MAX = -8


def limit_malloc_arenas(count: int = 2) -> bool:
    """Let glibc's allocator keep at most ``count`` arenas in this process; True if it did.

    glibc gives a thread that finds the arenas busy an arena of its own, up to 8 per core, and
    a freed photo buffer stays resident in its arena for the next malloc of that thread. With
    the upload, styling and derivative threads each touching tens of megabytes, a booth held
    ~280 MiB more than it used after ten 12 MP captures (bench_capture: 488 MiB resident
    before the uploads, 187-209 MiB with two arenas, latency unchanged). Call it once, early
    in the process (arenas already made stay). A ``MALLOC_ARENA_MAX`` set by the operator
    wins; elsewhere than glibc this does nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator, its policy
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, max(1, count)))
