"""Small Trio helpers shared by the adapters and actors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


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
