"""The booth's actors: one module each, supervised one-for-one by :mod:`photobot.supervisor`.

Contract shared by every actor:

- An actor is ``async def run(ctx: ChildContext, ...)``; its dependencies (database, cache,
  storage, channels) are bound by the composition root (:mod:`photobot.root`), never imported
  as globals.
- It calls ``ctx.started()`` once it is ready to take work; the supervisor starts the next actor
  only then.
- It owns its state. Other actors reach it only through the bounded trio memory channels that the
  root creates (so a channel survives the restart of either end); each channel's capacity and
  what a sender does when it is full are stated where the channel is declared (:class:`Wiring`).
- When ``ctx.stopping`` is set it stops taking new work, brings work in hand to a checkpoint and
  returns within the child's ``shutdown_grace``; after that it is cancelled.
- Whatever must survive a crash is in PostgreSQL before the actor acknowledges it; a restarted
  actor recovers from there, never from memory.

Start order (stop is the reverse): session registry, gallery broadcaster, AI worker pool, job
dispatcher, hotfolder watcher, CCTV poller — consumers before the producers that feed them, so
on shutdown the producers stop first and the consumers drain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass(frozen=True)
class GalleryMessage:
    """One message for every guest watching an event's gallery (room ``event:{slug}``).

    ``type`` is ``photo:upload:complete`` or ``photo:updated``; ``data`` holds the rest of the
    seed's payload (``photo_id``, never ``photoId``). Encoded once by the broadcaster, however
    many guests receive it.
    """

    event_slug: str
    type: str
    data: dict[str, object]


def _channel(capacity: int) -> tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]:
    return trio.open_memory_channel(capacity)


@dataclass
class Wiring:
    """The channels between actors, created once by the root and kept across restarts.

    - ``dispatch``: new job ids → job dispatcher. Capacity 256; a full channel makes the sender
      wait (back-pressure to the HTTP request or the hot folder, whose job row is already
      committed, so nothing is lost if the sender is cancelled meanwhile).
    - ``work``: runnable jobs → AI worker pool. Capacity 64; the dispatcher waits when full.
    - ``publish``: gallery events → gallery broadcaster. Capacity 1024; the sender waits when
      full (the broadcaster never blocks on a guest, so it drains fast).
    - ``optimize``: image job ids → the built-in image optimizer. Capacity 256; the sender
      does not wait when full (the image job row is PENDING in PostgreSQL and the optimizer's
      sweep picks it up).
    - ``clip_trigger``: clip request ids from ``POST /trigger`` → CCTV poller. Capacity 64; the
      HTTP handler answers 503 when full instead of waiting.
    """

    dispatch: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] = field(
        default_factory=lambda: _channel(256)
    )
    work: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] = field(
        default_factory=lambda: _channel(64)
    )
    publish: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] = field(
        default_factory=lambda: _channel(1024)
    )
    optimize: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] = field(
        default_factory=lambda: _channel(256)
    )
    clip_trigger: tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel] = field(
        default_factory=lambda: _channel(64)
    )

    def depths(self) -> dict[str, int]:
        """Items waiting in each inbox (for /metrics' queue depth)."""
        return {
            name: getattr(self, name)[1].statistics().current_buffer_used
            for name in ("dispatch", "work", "publish", "optimize", "clip_trigger")
        }
