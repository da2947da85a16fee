"""The gallery websocket server: a thin Trio adapter around :mod:`photobot.fanout.protocol`.

It listens on a stdlib socket of its own (``GALLERY_WS_PORT``), so it owns every accepted
``socket.socket``: Trio's wrapper (``trio.socket.from_stdlib_socket``) is the awaitable side, and
the stdlib object's non-blocking ``send()`` is the broadcast's fast path.

Broadcast (:meth:`FanoutServer.broadcast`, synchronous, never awaits a guest): the message is
framed once per subprotocol present in the room; then for each guest with nothing queued, ONE
non-blocking ``send`` of those same bytes, straight from the caller's task. A guest whose kernel
buffer is full (the send sent part or nothing) gets the rest, and later frames, in its own
bounded queue (a deque of bytes, bounded by count and by bytes), drained by a writer task
spawned for it and gone once the queue is empty. A full queue drops the guest: it is taken out
of its room at once, gets a best-effort close frame (1013, "try again later": the page polls
``since`` and reconnects), and its socket is closed after ``close_timeout`` at the latest. Order
per guest holds: a guest with anything queued gets new frames queued behind it, never sent
directly.

Per guest, only one task lives: its reader (handshake, then pings/pongs/closes; any byte counts
as a sign of life). The server pings every guest every ``ping_interval`` with one shared frame;
a guest silent for two intervals is dropped (4000). Rooms are ``slug → (json guests, msgpack
guests)``. :meth:`FanoutServer.aclose` stops accepting and closes every guest with 1001 "going
away", waiting up to ``close_timeout`` for their closing handshakes.

Why this instead of Hypercorn's websocket path: per delivery Hypercorn costs ~240 µs of CPU
(wsproto framing per guest, quart-trio tasks and channels); this path costs a few µs (one
syscall and a dict lookup), which is what keeps 5,000 guests under the Node servers' latency
(numbers in ``tests/bench/bench_fanout.py`` and the lead's report).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import trio

from photobot.fanout.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NO_PONG,
    CLOSE_TOO_SLOW,
    OP_PING,
    OP_PONG,
    CloseReceived,
    FrameReader,
    HandshakeParser,
    HandshakeRequest,
    PingReceived,
    Rejection,
    accept_response,
    encode_close,
    encode_frame,
    encode_message,
)

log = logging.getLogger("photobot.gallery")

__all__ = ["FanoutServer", "Guest"]

_OPEN, _CLOSING, _CLOSED = 0, 1, 2
_ACCEPT_BATCH = 256
_RECV_SIZE = 4096
_ROOM_CACHE_MAX = 10_000
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_GONE = (OSError, trio.ClosedResourceError, trio.BrokenResourceError)


class Guest:
    """One guest's websocket. Plain slots: a few hundred bytes, plus its reader task."""

    __slots__ = (
        "close_deadline",
        "ip",
        "last_seen",
        "proto",
        "qbytes",
        "queue",
        "reader",
        "slug",
        "sock",
        "state",
        "tsock",
    )

    def __init__(
        self,
        sock: socket.socket,
        tsock: trio.socket.SocketType,
        slug: str,
        proto: int,
        ip: str,
        reader: FrameReader,
        now: float,
    ) -> None:
        self.sock = sock
        self.tsock = tsock
        self.slug = slug
        self.proto = proto
        self.ip = ip
        self.reader = reader
        #: Frames waiting behind a full kernel buffer; None while nothing is (no writer task).
        self.queue: deque[bytes] | None = None
        self.qbytes = 0
        self.last_seen = now
        self.state = _OPEN
        self.close_deadline = 0.0


RoomExists = Callable[[str], Awaitable[bool]]


class FanoutServer:
    """Rooms of guests' websockets; :meth:`serve` runs the listener, :meth:`broadcast` sends."""

    def __init__(
        self,
        room_exists: RoomExists,
        *,
        ping_interval: float = 20.0,
        max_connections: int = 10_000,
        max_per_ip: int = 0,
        queue_messages: int = 64,
        queue_bytes: int = 256 * 1024,
        allowed_origins: Iterable[str] = (),
        handshake_timeout: float = 10.0,
        close_timeout: float = 2.0,
        room_cache_seconds: float = 30.0,
        backlog: int = 4096,
    ) -> None:
        self._room_exists = room_exists
        self.ping_interval = ping_interval
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.queue_messages = queue_messages
        self.queue_bytes = queue_bytes
        self.allowed_origins = frozenset(o.strip() for o in allowed_origins if o.strip())
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.room_cache_seconds = room_cache_seconds
        self.backlog = backlog
        #: The bound port once :meth:`serve` has started.
        self.port: int | None = None

        self._rooms: dict[str, tuple[set[Guest], set[Guest]]] = {}
        self._guests: set[Guest] = set()
        self._closing: set[Guest] = set()
        #: Connections holding a slot (handshaking, open or closing), in all and per address;
        #: what the caps count (see :meth:`_take_slot`).
        self._slots = 0
        self._per_ip: dict[str, int] = {}
        self._handshaking = 0
        self._known: dict[str, float] = {}  # slug → until when "exists" (or "unknown") holds
        self._unknown: dict[str, float] = {}
        self._lookups: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._listener: socket.socket | None = None
        self._accepting = False
        self._stopped = trio.Event()
        self._drained: trio.Event | None = None  # set when the last closing guest is gone
        self._ping_frame = encode_frame(OP_PING, b"")
        # counters for stats()
        self.dropped_slow = 0
        self.dropped_dead = 0
        self.rejected = 0
        self.accepted = 0
        self.queued = 0

    # -- public -----------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._guests)

    @property
    def accepting(self) -> bool:
        """Listening and taking new guests (False before :meth:`serve` and after :meth:`aclose`)."""
        return self._accepting

    def stats(self) -> dict[str, Any]:
        """For /health and tests: open connections, rooms, drops (cheap: no iteration)."""
        return {
            "port": self.port,
            "connections": len(self._guests),
            "slots": self._slots,
            "rooms": len(self._rooms),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "dropped": {"slow": self.dropped_slow, "noPong": self.dropped_dead},
            "queuedDeliveries": self.queued,
        }

    def room_size(self, slug: str) -> int:
        room = self._rooms.get(slug)
        return 0 if room is None else len(room[0]) + len(room[1])

    def room_slugs(self) -> list[str]:
        """The events that have guests connected now."""
        return [slug for slug, (a, b) in self._rooms.items() if a or b]

    def broadcast(self, slug: str, type_: str, data: Mapping[str, Any]) -> int:
        """Send one message to every guest of room ``event:{slug}``; the number of guests it was
        sent or queued to. Synchronous: costs one encode per subprotocol and one ``send`` per
        guest; never waits for a guest."""
        room = self._rooms.get(slug)
        if room is None:
            return 0
        n = 0
        for proto, guests in enumerate(room):
            if guests:
                n += self._deliver(guests, encode_message(type_, data, proto))
        return n

    async def serve(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: a free port) until :meth:`aclose`; reports the port."""
        family, type_, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        lsock = socket.socket(family, type_, proto)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(addr)
            lsock.listen(self.backlog)
            lsock.setblocking(False)
            self.port = lsock.getsockname()[1]
            self._listener = lsock
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._accepting = not self._stopped.is_set()
                nursery.start_soon(self._accept_loop, lsock)
                nursery.start_soon(self._housekeeping)
                task_status.started(self.port)
                await self._stopped.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._accepting = False
            self._close_listener()
            for guest in [*self._guests, *self._closing]:
                self._finish(guest)
            self._nursery = None

    async def aclose(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "going away", timeout: float | None = None
    ) -> None:
        """Stop accepting, close every guest with ``code``; wait up to ``timeout`` (default
        ``close_timeout``) for their closing handshakes, then close what is left. Idempotent."""
        if self._stopped.is_set():
            return
        self._accepting = False
        self._close_listener()
        for guest in list(self._guests):
            self._drop(guest, code, reason)
        try:
            if self._closing:
                self._drained = trio.Event()
                with trio.move_on_after(self.close_timeout if timeout is None else timeout):
                    await self._drained.wait()
        finally:  # also when cancelled: nobody is left half-closed, serve() returns
            for guest in list(self._closing):
                self._finish(guest)
            self._stopped.set()

    # -- the broadcast path ------------------------------------------------------------------

    def _deliver(self, guests: set[Guest], frame: bytes) -> int:
        size = len(frame)
        late: list[tuple[Guest, int]] | None = None
        for g in guests:
            if g.queue is None:
                try:
                    sent = g.sock.send(frame)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = -1
                if sent == size:
                    continue
            else:
                sent = 0
            if late is None:
                late = []
            late.append((g, sent))
        n = len(guests)
        if late is None:
            return n
        for g, sent in late:  # after the loop: these may leave `guests`
            if sent < 0:
                self._finish(g)
                n -= 1
            elif not self._enqueue(g, frame if sent == 0 else frame[sent:]):
                n -= 1
        return n

    def _send_one(self, g: Guest, frame: bytes) -> None:
        """A control frame (pong, close) for one guest, through the same path."""
        if g.queue is None:
            try:
                sent = g.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._finish(g)
                return
            if sent == len(frame):
                return
            frame = frame[sent:]
        self._enqueue(g, frame)

    def _enqueue(self, g: Guest, data: bytes) -> bool:
        """Queue ``data`` behind what the guest has pending; False if that dropped the guest."""
        q = g.queue
        if q is None:
            q = g.queue = deque()
            q.append(data)
            g.qbytes = len(data)
            self.queued += 1
            if self._nursery is None:  # not serving any more
                self._finish(g)
                return False
            self._nursery.start_soon(self._write_loop, g)
            return True
        if g.state == _OPEN and (
            len(q) >= self.queue_messages or g.qbytes + len(data) > self.queue_bytes
        ):
            self.dropped_slow += 1
            log.info("gallery guest too slow, dropped", extra={"event": g.slug})
            self._drop(g, CLOSE_TOO_SLOW, "too slow: poll since")
            return False
        q.append(data)
        g.qbytes += len(data)
        self.queued += 1
        return True

    async def _write_loop(self, g: Guest) -> None:
        q = g.queue
        tsock = g.tsock
        try:
            while q:
                item = q.popleft()
                g.qbytes -= len(item)
                view = memoryview(item)
                while view:
                    sent = await tsock.send(view)
                    view = view[sent:]
        except _GONE:
            self._finish(g)
            return
        if g.queue is q:
            g.queue = None
            if g.state == _CLOSING:
                self._half_close(g)

    # -- closing -----------------------------------------------------------------------------

    def _drop(self, g: Guest, code: int, reason: str) -> None:
        """Leave the room now; close frame best effort; socket closed by close_timeout."""
        if g.state != _OPEN:
            return
        self._unregister(g)
        g.state = _CLOSING
        g.close_deadline = trio.current_time() + self.close_timeout
        self._closing.add(g)
        frame = encode_close(code, reason)
        q = g.queue
        if q is None:
            self._send_one(g, frame)
            if g.queue is None and g.state == _CLOSING:
                self._half_close(g)
        else:  # the writer is busy: skip what it has not started, then the close frame
            q.clear()
            q.append(frame)
            g.qbytes = len(frame)

    def _half_close(self, g: Guest) -> None:
        try:
            g.sock.shutdown(socket.SHUT_WR)  # FIN after the close frame; reader awaits theirs
        except OSError:
            self._finish(g)

    def _finish(self, g: Guest) -> None:
        """Gone for good: out of every set, socket closed (its tasks wake and end)."""
        if g.state == _CLOSED:
            return
        if g.state == _OPEN:
            self._unregister(g)
        g.state = _CLOSED
        self._closing.discard(g)
        if not self._closing and self._drained is not None:
            self._drained.set()
        if g.queue is not None:
            g.queue.clear()
            g.queue = None
        g.tsock.close()

    def _register(self, g: Guest) -> None:
        room = self._rooms.get(g.slug)
        if room is None:
            room = self._rooms[g.slug] = (set(), set())
        room[g.proto].add(g)
        self._guests.add(g)

    def _unregister(self, g: Guest) -> None:
        room = self._rooms.get(g.slug)
        if room is not None:
            room[g.proto].discard(g)
            if not room[0] and not room[1]:
                del self._rooms[g.slug]
        self._guests.discard(g)

    def _take_slot(self, ip: str) -> Rejection | None:
        """Count a connection against the caps the moment it is accepted, not once its
        handshake is done: a burst of parallel upgrades must not all pass a check that none of
        them has yet counted for. ``None``: the slot is taken (release it with
        :meth:`_release_slot`); otherwise the answer to give instead."""
        if self._slots >= self.max_connections:
            return Rejection(503, "the gallery is full", (("Retry-After", "30"),))
        if self.max_per_ip:
            held = self._per_ip.get(ip, 0)
            if held >= self.max_per_ip:
                return Rejection(429, "too many connections from your address")
            self._per_ip[ip] = held + 1
        self._slots += 1
        return None

    def _release_slot(self, ip: str) -> None:
        self._slots -= 1
        if self.max_per_ip:
            left = self._per_ip.get(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left
            else:
                self._per_ip.pop(ip, None)

    def _close_listener(self) -> None:
        lsock, self._listener = self._listener, None
        if lsock is not None and lsock.fileno() != -1:
            trio.lowlevel.notify_closing(lsock)
            lsock.close()

    # -- tasks -------------------------------------------------------------------------------

    async def _accept_loop(self, lsock: socket.socket) -> None:
        nursery = self._nursery
        assert nursery is not None
        while True:
            try:
                await trio.lowlevel.wait_readable(lsock)
            except (trio.ClosedResourceError, OSError):
                return  # aclose() closed the listener
            for _ in range(_ACCEPT_BATCH):
                try:
                    sock, addr = lsock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _RESOURCE_ERRNOS:
                        log.warning("gallery cannot accept", extra={"error": exc.strerror})
                        await trio.sleep(0.1)
                        break
                    if lsock.fileno() == -1:
                        return
                    continue  # ECONNABORTED and friends: that one guest is gone
                if self._handshaking >= self.max_connections:  # a flood of idle sockets
                    sock.close()
                    continue
                ip = str(addr[0])
                nursery.start_soon(self._handle, sock, ip, self._take_slot(ip))

    async def _housekeeping(self) -> None:
        interval = self.ping_interval
        tick = min(1.0, interval / 4, self.close_timeout / 2)
        next_ping = trio.current_time() + interval
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            if self._closing:
                for g in [g for g in self._closing if g.close_deadline <= now]:
                    self._finish(g)
            if now >= next_ping:
                next_ping = now + interval
                silent_since = now - 2 * interval
                for g in [g for g in self._guests if g.last_seen < silent_since]:
                    self.dropped_dead += 1
                    self._drop(g, CLOSE_NO_PONG, "no pong")
                if self._guests:
                    self._deliver(self._guests, self._ping_frame)

    async def _handle(self, sock: socket.socket, ip: str, refusal: Rejection | None) -> None:
        """One connection; ``refusal`` is None when it holds a slot (released here, on every
        way out), else the answer its handshake gets."""
        tsock = trio.socket.from_stdlib_socket(sock)  # makes `sock` non-blocking too
        g: Guest | None = None
        try:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            request: HandshakeRequest | None = None
            self._handshaking += 1
            try:
                with trio.move_on_after(self.handshake_timeout):
                    request = await self._handshake(tsock, ip, refusal)
            finally:
                self._handshaking -= 1
            if request is None or not self._accepting:
                return
            reader = FrameReader(request.trailing)
            g = Guest(sock, tsock, request.slug, request.proto, ip, reader, trio.current_time())
            del request, reader
            self._register(g)
            self.accepted += 1
            await self._read_loop(g)
        except _GONE:
            pass
        finally:
            if g is None:
                tsock.close()
            else:
                self._finish(g)
            if refusal is None:
                self._release_slot(ip)

    async def _handshake(
        self, tsock: trio.socket.SocketType, ip: str, refusal: Rejection | None
    ) -> HandshakeRequest | None:
        """Read the upgrade request; answer 101 (returns the request) or an HTTP error (None)."""
        parser = HandshakeParser(allowed_origins=self.allowed_origins)
        result: HandshakeRequest | Rejection | None = None
        while result is None:
            data = await tsock.recv(_RECV_SIZE)
            if not data:
                return None
            result = parser.feed(data)
        if isinstance(result, HandshakeRequest):
            refusal = refusal or await self._admit(result)
            if refusal is None:
                await _send_all(tsock, accept_response(result))
                return result
            result = refusal
        self.rejected += 1
        await _send_all(tsock, result.response())
        return None

    async def _admit(self, request: HandshakeRequest) -> Rejection | None:
        if not self._accepting:
            return Rejection(503, "the gallery is shutting down", (("Retry-After", "5"),))
        try:
            exists = await self._room_known(request.slug)
        except Exception as exc:  # the lookup's backend is down: not the guest's fault
            log.warning("gallery room lookup failed", extra={"error": repr(exc)})
            return Rejection(503, "try again shortly", (("Retry-After", "5"),))
        if not exists:
            return Rejection(404, "no such gallery")
        if not self._accepting:
            return Rejection(503, "the gallery is shutting down", (("Retry-After", "5"),))
        return None

    async def _room_known(self, slug: str) -> bool:
        """``room_exists`` with a short cache and one lookup in flight per slug (a burst of
        thousands of guests joining one event costs one query)."""
        while True:
            now = trio.current_time()
            if self._known.get(slug, 0.0) > now:
                return True
            if self._unknown.get(slug, 0.0) > now:
                return False
            pending = self._lookups.get(slug)
            if pending is None:
                break
            await pending.wait()
        done = self._lookups[slug] = trio.Event()
        try:
            exists = await self._room_exists(slug)
        finally:
            del self._lookups[slug]
            done.set()
        cache = self._known if exists else self._unknown
        if len(cache) >= _ROOM_CACHE_MAX:
            cache.clear()
        ttl = self.room_cache_seconds if exists else min(5.0, self.room_cache_seconds)
        cache[slug] = trio.current_time() + ttl
        (self._unknown if exists else self._known).pop(slug, None)
        return exists

    async def _read_loop(self, g: Guest) -> None:
        tsock = g.tsock
        reader = g.reader
        data = b""  # first, frames that came in with the handshake (wsproto holds them)
        while True:
            for event in reader.feed(data):
                if type(event) is PingReceived:
                    if g.state == _OPEN:
                        self._send_one(g, encode_frame(OP_PONG, event.payload))
                elif type(event) is CloseReceived:
                    if g.state != _OPEN:
                        return  # the answer to our close: done
                    self._drop(g, event.code, "")  # echo their close, then wait for EOF
            data = await tsock.recv(_RECV_SIZE)
            if not data:
                return
            g.last_seen = trio.current_time()


async def _send_all(tsock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await tsock.send(view)
        view = view[sent:]
