"""Small Trio helpers shared by the adapters and actors."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
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


class BackgroundThreads:
    """Worker threads at a lower CPU priority, for work no person is waiting on.

    On a 2-core box the gallery's WebP derivatives of one photo would otherwise take a core from
    the styling of the next capture, which the operator and the guest are watching. Linux
    schedules threads by their own nice value, so these threads lower theirs once, when they
    start (``nice`` steps; where that is refused they simply run at normal priority). Threads
    from ``trio.to_thread`` are never reniced: they return to trio's cache and would carry the
    lower priority into unrelated work, and raising it back needs privileges.

    :meth:`run_sync` waits in a trio worker thread (idle, blocked on the result) behind
    ``limiter``; like ``trio.to_thread.run_sync`` it is not cancellable once started.
    """

    def __init__(self, name: str, count: int, *, nice: int = 10) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, count),
            thread_name_prefix=name,
            initializer=_lower_priority,
            initargs=(nice,),
        )

    async def run_sync(
        self, fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter | None = None
    ) -> T:
        future = self._executor.submit(fn, *args)
        return await trio.to_thread.run_sync(future.result, limiter=limiter)

    def close(self) -> None:
        """No new work; threads end once their queued work is done."""
        self._executor.shutdown(wait=False)


def _lower_priority(nice: int) -> None:
    with suppress(OSError, AttributeError):  # AttributeError: not on Linux
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
