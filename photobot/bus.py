"""In-process publish/subscribe for things that happened (job progress, finished jobs).

The job dispatcher and the worker pool publish; the web layer (operator UI, guest pages) and the
gallery broadcaster subscribe. ``publish`` never waits: each subscriber has its own bounded
channel, and a subscriber that falls ``capacity`` events behind is closed (its receive loop ends
with ``EndOfChannel``) rather than slowing the publisher or the other subscribers — it recovers
by reading the current state from the database, which is the source of truth. This is the
close-on-overflow rule of a per-client queue, applied inside the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio


@dataclass(frozen=True)
class JobEvent:
    """A job changed: new status, stage or percent. ``final`` when it reached a final state."""

    job_id: str
    event_id: str
    session_id: str | None
    status: str
    stage: str
    percent: int
    error_code: str | None = None
    best_output_key: str | None = None

    @property
    def final(self) -> bool:
        return self.status in ("succeeded", "failed", "canceled")


class Bus:
    def __init__(self) -> None:
        self._subscribers: dict[int, tuple[Callable[[Any], bool], trio.MemorySendChannel[Any]]] = {}
        self._next = 0

    def publish(self, event: object) -> None:
        for sid, (accepts, send) in list(self._subscribers.items()):
            if not accepts(event):
                continue
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                send.close()  # fell behind: the subscriber re-reads state from the database
                self._subscribers.pop(sid, None)
            except trio.ClosedResourceError:
                self._subscribers.pop(sid, None)

    @asynccontextmanager
    async def subscribe(
        self, accepts: Callable[[Any], bool] = lambda _: True, capacity: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Any]]:
        send, receive = trio.open_memory_channel[Any](capacity)
        sid = self._next
        self._next += 1
        self._subscribers[sid] = (accepts, send)
        try:
            yield receive
        finally:
            self._subscribers.pop(sid, None)
            send.close()
            receive.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
