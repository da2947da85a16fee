"""Gallery broadcaster: one room per event (``event:{slug}``), fan-out of published photos to the
guests' websockets, and the relay that makes several boxes one gallery.

- Reads ``Wiring.publish`` (:class:`~actors.GalleryMessage`: ``photo:upload:complete`` when a
  photo is stored, ``photo:updated`` when its derivatives are ready) and delivers each message to
  this box's guests at once, through :class:`~photobot.fanout.FanoutServer` (frame encoded once
  per subprotocol; one non-blocking send per guest; a guest that falls behind is dropped and
  recovers by polling ``since``).
- Relays it to the other boxes of the event: PUBLISH msgpack ``{origin, slug, type, data}`` on
  the Redis channel ``gallery`` (through ``cache.key()``). A subscriber (redis-py pubsub in a
  dedicated thread, handing messages to Trio) delivers what other boxes published; its own
  messages (same ``origin``) are skipped, so nothing reaches a guest twice. Redis down never
  stops local delivery: publishing is behind a bounded outbox (dropped when full), and the
  subscriber is restarted with back-off.
- Gaps: what was relayed while this box's Redis was away is lost, both ways. When its
  subscription comes back after a loss, it tells its own guests ``gallery:resync`` and relays
  the same to every other box's guests (slug ``*``); a page answers by asking ``since`` once,
  so missed photos are announced like any other (and, being deduplicated, never twice).

The websocket listener itself (``GALLERY_WS_PORT``) belongs to the composition root, like
Hypercorn: guests stay connected across a restart of this actor. On ``ctx.stopping`` the actor
delivers what is already in its inbox, then stops the listener and closes every guest with 1001
"going away".
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
from typing import Any

import msgpack
import redis
import trio

from actors import GalleryMessage
from photobot.cache import Cache
from photobot.errors import CacheError
from photobot.fanout import FanoutServer
from photobot.metrics import Metrics
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.gallery")

#: Redis channel (before ``cache.key()``) the boxes of one deployment relay through.
RELAY_CHANNEL = "gallery"
#: Told to guests after a relay gap: "ask ``since``, you may have missed photos".
RESYNC = "gallery:resync"
#: The relay's slug for "every room".
ALL_ROOMS = "*"
#: Messages waiting to be published to Redis; more are dropped (guests poll ``since``).
OUTBOX_CAPACITY = 1024
#: Messages from Redis waiting for delivery here.
RELAY_INBOX_CAPACITY = 1024
RELAY_BACKOFF_MIN = 0.5
RELAY_BACKOFF_MAX = 15.0
#: On stop, how long guests get to answer the 1001 close before their sockets are closed.
CLOSE_WAIT_SECONDS = 1.0
#: How long the subscriber thread blocks in one ``get_message`` (its stop latency).
_POLL_SECONDS = 1.0


class GalleryBroadcaster:
    """The actor; built once by the composition root, ``run`` is its supervised body."""

    def __init__(
        self,
        server: FanoutServer,
        inbox: trio.MemoryReceiveChannel[GalleryMessage],
        *,
        cache: Cache | None = None,
        metrics: Metrics | None = None,
        box_id: str | None = None,
    ) -> None:
        self.server = server
        self.cache = cache
        self.metrics = metrics
        #: Unique per process, so two boxes never mistake each other's messages for their own.
        self.box_id = box_id or secrets.token_hex(8)
        self._inbox = inbox
        self._outbox_tx, self._outbox_rx = trio.open_memory_channel[GalleryMessage](OUTBOX_CAPACITY)
        self._thread_limiter = trio.CapacityLimiter(1)
        #: Set while the Redis subscription is live (tests wait on it).
        self.subscribed = trio.Event()
        self._lost_subscription = False  # a gap to announce at the next subscription
        self.delivered = 0
        self.published = 0
        self.received = 0
        self.relay_dropped = 0
        self.relay_errors = 0
        if metrics is not None:
            metrics.gallery_connections.set_function(lambda: server.connections)

    # -- what /health and tests read ----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Connections, rooms, drops (from the server) and the relay's state; no iteration."""
        return {
            **self.server.stats(),
            "delivered": self.delivered,
            "relay": {
                "box": self.box_id,
                "subscribed": self.subscribed.is_set(),
                "published": self.published,
                "received": self.received,
                "dropped": self.relay_dropped,
                "errors": self.relay_errors,
            },
        }

    # -- delivery -----------------------------------------------------------------------------

    def deliver(self, slug: str, type_: str, data: dict[str, Any]) -> int:
        """To this box's guests of ``event:{slug}`` (of every room for ``*``); returns how many
        (counted in bulk)."""
        if slug == ALL_ROOMS:
            n = sum(self.server.broadcast(room, type_, data) for room in self.server.room_slugs())
        else:
            n = self.server.broadcast(slug, type_, data)
        if n:
            self.delivered += n
            if self.metrics is not None:
                self.metrics.gallery_messages.inc(n)
        return n

    def _take(self, message: GalleryMessage) -> None:
        self.deliver(message.event_slug, message.type, message.data)
        if self.cache is not None:
            try:
                self._outbox_tx.send_nowait(message)
            except trio.WouldBlock:
                self.relay_dropped += 1

    async def run(self, ctx: ChildContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._consume)
            if self.cache is not None:
                nursery.start_soon(self._relay_out, self.cache)
                nursery.start_soon(self._relay_in, self.cache)
            ctx.started()
            await ctx.stopping.wait()
            while True:  # what producers handed over before the stop still goes out
                try:
                    self._take(self._inbox.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            # Within the actor's grace: guests that do not answer the close are cut after 1 s.
            await self.server.aclose(timeout=CLOSE_WAIT_SECONDS)
            nursery.cancel_scope.cancel()

    async def _consume(self) -> None:
        while True:
            try:
                message = await self._inbox.receive()
            except trio.EndOfChannel:
                return
            self._take(message)

    # -- relay through Redis ------------------------------------------------------------------

    def _encode_relay(self, message: GalleryMessage) -> bytes:
        body = {
            "origin": self.box_id,
            "slug": message.event_slug,
            "type": message.type,
            "data": message.data,
        }
        return msgpack.packb(body, default=str, use_bin_type=True)  # type: ignore[no-any-return]

    async def _relay_out(self, cache: Cache) -> None:
        failing = False
        while True:
            message = await self._outbox_rx.receive()
            try:
                await cache.publish(RELAY_CHANNEL, self._encode_relay(message))
            except CacheError as exc:
                self.relay_errors += 1
                if not failing:
                    log.warning("gallery relay cannot publish", extra={"error": exc.message})
                failing = True
                continue
            self.published += 1
            if failing:
                log.info("gallery relay publishing again")
                failing = False

    async def _relay_in(self, cache: Cache) -> None:
        backoff = RELAY_BACKOFF_MIN
        while True:
            began = trio.current_time()
            try:
                await self._subscribe(cache)
            except CacheError as exc:
                self.relay_errors += 1
                log.warning("gallery relay subscription lost", extra={"error": exc.message})
            finally:
                if self.subscribed.is_set():
                    self.subscribed = trio.Event()
                    self._lost_subscription = True
            if trio.current_time() - began > 60:
                backoff = RELAY_BACKOFF_MIN
            await trio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, RELAY_BACKOFF_MAX)

    def _resync(self) -> None:
        """After a relay gap: this box's guests, and through the relay every other box's, are
        told to ask ``since``."""
        self.deliver(ALL_ROOMS, RESYNC, {})
        try:
            self._outbox_tx.send_nowait(GalleryMessage(ALL_ROOMS, RESYNC, {}))
        except trio.WouldBlock:
            self.relay_dropped += 1

    async def _subscribe(self, cache: Cache) -> None:
        """One subscription: a thread blocks on redis-py's pubsub and hands messages to Trio."""
        channel = cache.key(RELAY_CHANNEL)
        pubsub = await cache.call(lambda r: r.pubsub())
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        send, receive = trio.open_memory_channel[bytes](RELAY_INBOX_CAPACITY)

        def hand_over(data: bytes) -> None:  # in Trio, via run_sync_soon: must not raise
            try:
                send.send_nowait(data)
            except trio.WouldBlock:
                self.relay_dropped += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

        def subscribed() -> None:
            log.info("gallery relay subscribed", extra={"channel": channel})
            self.subscribed.set()
            if self._lost_subscription:
                self._lost_subscription = False
                self._resync()

        def listen() -> None:  # the subscriber thread
            try:
                pubsub.subscribe(channel)
                while not stop.is_set():
                    m = pubsub.get_message(timeout=_POLL_SECONDS)
                    if m is None:
                        continue
                    if m["type"] == "message":
                        token.run_sync_soon(hand_over, m["data"])
                    elif m["type"] == "subscribe":
                        token.run_sync_soon(subscribed)
            except (redis.RedisError, OSError) as exc:
                raise CacheError(f"redis unavailable: {exc.__class__.__name__}") from exc
            except trio.RunFinishedError:
                return  # the process is exiting; this thread was abandoned
            finally:
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

        lost: CacheError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver_remote, receive)
            try:
                await trio.to_thread.run_sync(
                    listen, abandon_on_cancel=True, limiter=self._thread_limiter
                )
            except CacheError as exc:
                lost = exc  # raised below, not wrapped in the nursery's ExceptionGroup
            finally:
                stop.set()
                send.close()  # _deliver_remote delivers what is left, then ends
        if lost is not None:
            raise lost

    async def _deliver_remote(self, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async with receive:
            async for raw in receive:
                try:
                    m = msgpack.unpackb(raw, raw=False)
                    origin, slug, type_, data = m["origin"], m["slug"], m["type"], m["data"]
                except Exception:  # not ours, or garbled: nothing a guest should see
                    self.relay_errors += 1
                    continue
                if origin == self.box_id:
                    continue  # delivered locally already, when it was published
                if isinstance(slug, str) and isinstance(type_, str) and isinstance(data, dict):
                    self.received += 1
                    self.deliver(slug, type_, data)
