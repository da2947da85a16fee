"""The live gallery's websockets, end to end on real services (PostgreSQL, Redis).

Each booth here is ``open_services`` plus the real gallery broadcaster actor under a supervisor and
its websocket listener on a free loopback port; guests are real websocket clients
(trio-websocket, or raw sockets speaking wsproto where a test needs a misbehaving guest).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

from actors import GalleryMessage
from actors.gallery import GalleryBroadcaster
from photobot.cache import Cache
from photobot.config import load_settings
from photobot.events import create_event
from photobot.fanout import FanoutServer
from photobot.fanout.protocol import OP_TEXT, PROTO_JSON, encode_frame, encode_message
from photobot.root import Services, actor_specs, build_supervisor, open_services
from photobot.supervisor import ChildContext, Supervisor
from tests.standins.cable import open_cable
from web.app import create_app

UPLOAD = "photo:upload:complete"


async def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


@dataclass
class Booth:
    services: Services
    supervisor: Supervisor
    port: int

    @property
    def gallery(self) -> GalleryBroadcaster:
        return self.services.gallery

    @property
    def server(self) -> FanoutServer:
        return self.services.gallery.server

    def metric(self, name: str) -> float | None:
        return self.services.metrics.registry.get_sample_value(name)

    def url(self, slug: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/events/{slug}"

    async def publish(self, slug: str, type_: str = UPLOAD, **data: Any) -> None:
        await self.services.wiring.publish[0].send(GalleryMessage(slug, type_, data))

    async def wait_guests(self, slug: str, n: int) -> None:
        await wait_for(lambda: self.server.room_size(slug) == n)


@asynccontextmanager
async def open_booth(
    database_url: str, redis_url: Any, data_dir: Path, **overrides: Any
) -> AsyncIterator[Booth]:
    settings = load_settings(
        database_url=database_url,
        redis_url=redis_url.url,
        redis_prefix=redis_url.prefix,
        **overrides,
    )
    async with open_services(settings, data_dir) as services, trio.open_nursery() as nursery:
        specs = [s for s in actor_specs(services) if s.name == "gallery_broadcaster"]
        supervisor = build_supervisor(services, specs)
        await nursery.start(supervisor.run)
        port = await nursery.start(services.gallery.server.serve, "127.0.0.1", 0)
        with trio.fail_after(10):
            await services.gallery.subscribed.wait()
        yield Booth(services, supervisor, port)
        await supervisor.stop()
        await services.gallery.server.aclose(timeout=0.2)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def booth(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Booth]:
    async with open_booth(database_url, redis_url, tmp_path / "a") as b:
        for slug in ("party", "other"):
            await create_event(b.services.db, {"name": slug.title(), "slug": slug})
        yield b


async def get_json(ws: WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        message = await ws.get_message()
    assert isinstance(message, str), message
    return json.loads(message)  # type: ignore[no-any-return]


async def nothing_more(ws: WebSocketConnection, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        message = await ws.get_message()
        raise AssertionError(f"unexpected message {message!r}")


class RawGuest:
    """A guest on a bare socket: it reads only when told to and never answers pings."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []

    @classmethod
    async def connect(cls, port: int, path: str, *, rcvbuf: int | None = None) -> RawGuest:
        sock = trio.socket.socket()
        if rcvbuf is not None:  # before connect, so the advertised window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        guest = cls(sock)
        await sock.send(guest.ws.send(Request(host="127.0.0.1", target=path)))
        with trio.fail_after(5):
            while not any(isinstance(e, AcceptConnection) for e in guest.events):
                await guest.read_some()
        return guest

    async def read_some(self) -> bool:
        data = await self.sock.recv(65536)
        if data:
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return bool(data)

    async def read_until_closed(self, timeout: float = 5) -> None:
        with trio.fail_after(timeout):
            try:
                while await self.read_some():
                    pass
            except ConnectionResetError:
                pass

    def close(self) -> None:
        self.sock.close()


# ----------------------------------------------------------------------------------------------


async def test_publish_reaches_every_guest_of_the_room_and_no_other(booth: Booth) -> None:
    async with trio.open_nursery() as nursery:
        guests: list[WebSocketConnection] = []
        outsider: list[WebSocketConnection] = []

        async def join(slug: str, into: list[WebSocketConnection], done: trio.Event) -> None:
            async with open_websocket_url(booth.url(slug)) as ws:
                into.append(ws)
                await done.wait()

        done = trio.Event()
        for _ in range(50):
            nursery.start_soon(join, "party", guests, done)
        nursery.start_soon(join, "other", outsider, done)
        await booth.wait_guests("party", 50)
        await booth.wait_guests("other", 1)
        assert booth.metric("photobot_gallery_connections") == 51

        await booth.publish("party", photo_id="p-1", event_slug="party")
        await booth.publish("party", "photo:updated", photoId="p-1", thumbnails=["small"])
        for ws in guests:
            assert await get_json(ws) == {
                "type": UPLOAD, "photo_id": "p-1", "event_slug": "party"
            }  # fmt: skip
            assert await get_json(ws) == {
                "type": "photo:updated", "photo_id": "p-1", "thumbnails": ["small"]
            }  # fmt: skip
        await nothing_more(outsider[0])
        stats = booth.gallery.stats()
        assert stats["delivered"] == 100
        assert stats["connections"] == 51 and stats["rooms"] == 2
        assert booth.metric("photobot_gallery_messages_sent_total") == 100
        done.set()


async def test_msgpack_subprotocol_for_native_clients(booth: Booth) -> None:
    async with (
        open_websocket_url(booth.url("party"), subprotocols=["msgpack"]) as native,
        open_websocket_url(booth.url("party"), subprotocols=["json"]) as browser,
    ):
        assert native.subprotocol == "msgpack" and browser.subprotocol == "json"
        await booth.wait_guests("party", 2)
        await booth.publish("party", photo_id="p-2", width=4000)
        with trio.fail_after(5):
            raw = await native.get_message()
        assert isinstance(raw, bytes)
        assert msgpack.unpackb(raw) == {"type": UPLOAD, "photo_id": "p-2", "width": 4000}
        assert await get_json(browser) == {"type": UPLOAD, "photo_id": "p-2", "width": 4000}


async def test_a_guest_that_stops_reading_is_dropped_and_nobody_waits(booth: Booth) -> None:
    """Default queue bounds; the stalled guest's kernel buffers (MBs on loopback) fill first."""
    server = booth.server
    server.close_timeout = 0.5
    stalled = await RawGuest.connect(booth.port, "/ws/events/party", rcvbuf=4096)
    pad = "x" * 32_000
    sent = 0
    async with trio.open_nursery() as nursery:
        received: dict[int, list[int]] = {}
        finished: dict[int, float] = {}

        async def reader(i: int) -> None:
            async with open_websocket_url(booth.url("party"), message_queue_size=0) as ws:
                received[i] = []
                while True:
                    message = await get_json(ws)
                    if message["type"] == "end":
                        finished[i] = trio.current_time()
                        return
                    received[i].append(message["seq"])

        for i in range(3):
            nursery.start_soon(reader, i)
        await booth.wait_guests("party", 4)
        while server.dropped_slow == 0 and sent < 600:  # at most ~19 MB
            for _ in range(10):
                await booth.publish("party", photo_id=f"p-{sent}", seq=sent, pad=pad)
                sent += 1
            await trio.sleep(0.01)  # 10 photos every 10 ms: a photographer's burst, and more
        last_publish = trio.current_time()
        await booth.publish("party", "end")
    assert server.dropped_slow == 1, f"not dropped after {sent} messages"
    assert all(seqs == list(range(sent)) for seqs in received.values()), "order or loss"
    assert len(finished) == 3 and max(finished.values()) - last_publish < 2.0
    assert server.stats()["dropped"] == {"slow": 1, "noPong": 0}
    assert server.room_size("party") == 0  # the readers left; the stalled one was dropped
    await stalled.read_until_closed()  # what was in its buffers, then closed by close_timeout
    stalled.close()


async def test_pings_keep_a_quiet_guest_and_drop_a_dead_one(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    async with open_booth(
        database_url, redis_url, tmp_path / "a", gallery_ws_ping_interval=0.2
    ) as b:
        await create_event(b.services.db, {"name": "Party", "slug": "party"})
        dead = await RawGuest.connect(b.port, "/ws/events/party")
        async with open_websocket_url(b.url("party")) as quiet:
            await b.wait_guests("party", 2)
            await trio.sleep(1.2)  # six pings: trio-websocket answers them, `dead` never does
            await dead.read_until_closed(timeout=2)
            assert any(isinstance(e, Ping) for e in dead.events)
            assert [e.code for e in dead.events if isinstance(e, CloseConnection)] == [4000]
            assert b.server.stats()["dropped"] == {"slow": 0, "noPong": 1}
            await b.publish("party", photo_id="p-3")
            assert (await get_json(quiet))["photo_id"] == "p-3"
        dead.close()


async def test_bad_path_or_unknown_event_is_refused_with_404(booth: Booth) -> None:
    for path in ("/ws/events/nope", "/ws/nope", "/ws/events/Party", "/ws/events/a/b"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"ws://127.0.0.1:{booth.port}{path}"):
                pass
        assert rejected.value.status_code == 404, path
    # a plain HTTP request for a real room: 426 Upgrade Required
    stream = await trio.open_tcp_stream("127.0.0.1", booth.port)
    await stream.send_all(b"GET /ws/events/party HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 426 "), answer
    await stream.aclose()
    assert booth.server.stats()["rejected"] == 5 and booth.server.connections == 0


async def relayed_both_ways(
    a: Booth, b: Booth, on_a: WebSocketConnection, on_b: WebSocketConnection
) -> None:
    """Each booth publishes a photo to "party"; each booth's guest gets both, and only once."""
    await a.publish("party", photo_id="from-a")
    await b.publish("party", photo_id="from-b")
    for ws in (on_a, on_b):
        got = sorted([(await get_json(ws))["photo_id"], (await get_json(ws))["photo_id"]])
        assert got == ["from-a", "from-b"]
    for ws in (on_a, on_b):
        await nothing_more(ws, 0.5)


async def test_two_booths_one_gallery_each_message_once(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    async with (
        open_booth(database_url, redis_url, tmp_path / "a") as a,
        open_booth(database_url, redis_url, tmp_path / "b") as b,
    ):
        assert a.gallery.box_id != b.gallery.box_id
        # b's database: each Database bridges through the asyncio loop current where it was
        # opened, and this task's current loop is now b's.
        await create_event(b.services.db, {"name": "Party", "slug": "party"})
        async with (
            open_websocket_url(a.url("party")) as on_a,
            open_websocket_url(b.url("party")) as on_b,
        ):
            await a.wait_guests("party", 1)
            await b.wait_guests("party", 1)
            await relayed_both_ways(a, b, on_a, on_b)
        assert a.gallery.stats()["relay"]["received"] == 1
        assert b.gallery.stats()["relay"]["received"] == 1


async def test_the_relay_between_booths_survives_a_pulled_redis_cable(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    """Booth b reaches Redis through a cable that is pulled, then plugged back: its own guests
    keep getting its photos meanwhile; once it is back, every guest is told to catch up on the
    gap (``gallery:resync``) and both ways work again by themselves."""
    async with (
        open_cable(redis_url.url) as cable,
        open_booth(database_url, redis_url, tmp_path / "a") as a,
        open_booth(database_url, replace(redis_url, url=cable.via(redis_url.url)), tmp_path / "b")
        as b,
    ):  # fmt: skip
        await create_event(b.services.db, {"name": "Party", "slug": "party"})
        async with (
            open_websocket_url(a.url("party")) as on_a,
            open_websocket_url(b.url("party")) as on_b,
        ):
            await a.wait_guests("party", 1)
            await b.wait_guests("party", 1)
            errors = b.gallery.relay_errors
            cable.cut()
            await wait_for(lambda: not b.gallery.subscribed.is_set())
            await b.publish("party", photo_id="b-offline")
            assert (await get_json(on_b))["photo_id"] == "b-offline"  # local delivery goes on
            await wait_for(lambda: b.gallery.relay_errors >= errors + 2)  # lost, publish failed

            cable.mend()
            await wait_for(lambda: b.gallery.subscribed.is_set(), timeout=20)
            # The gap is announced to b's guests, and through the relay to a's: "ask since".
            assert await get_json(on_b) == {"type": "gallery:resync"}
            assert await get_json(on_a) == {"type": "gallery:resync"}
            await relayed_both_ways(a, b, on_a, on_b)  # and b-offline never reached a
        assert cable.connections >= 2  # b really reconnected through the mended cable


async def test_graceful_stop_closes_guests_with_1001(booth: Booth) -> None:
    async with open_websocket_url(booth.url("party")) as ws:
        await booth.wait_guests("party", 1)
        await booth.supervisor.stop()
        with pytest.raises(ConnectionClosed) as closed:
            await get_json(ws)
        assert closed.value.reason.code == 1001
    assert not booth.server.accepting
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", booth.port)


async def test_the_page_learns_where_the_socket_is(booth: Booth) -> None:
    client = create_app(booth.services).test_client()
    response = await client.get("/api/gallery/party/socket", headers={"Host": "10.0.0.7:8000"})
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["url"] == f"ws://10.0.0.7:{booth.port}/ws/events/party"
    assert body["room"] == "event:party" and "msgpack" in body["subprotocols"]
    response = await client.get("/api/gallery/nope/socket")
    assert response.status_code == 404


async def test_local_delivery_goes_on_without_redis() -> None:
    async def exists(slug: str) -> bool:
        return True

    server = FanoutServer(exists)
    send, receive = trio.open_memory_channel[GalleryMessage](8)
    dead_redis = Cache.from_url("redis://127.0.0.1:1/0", timeout=0.2)
    gallery = GalleryBroadcaster(server, receive, cache=dead_redis)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        ctx = ChildContext("gallery_broadcaster", 0, lambda _ctx: None)
        nursery.start_soon(gallery.run, ctx)
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws/events/x") as ws:
            await wait_for(lambda: server.room_size("x") == 1)
            for i in range(3):
                await send.send(GalleryMessage("x", UPLOAD, {"photo_id": f"p{i}"}))
                assert (await get_json(ws))["photo_id"] == f"p{i}"
            await wait_for(lambda: gallery.relay_errors >= 2)  # publish, subscribe failed
            assert not gallery.subscribed.is_set()
        ctx.stopping.set()
    await dead_redis.aclose()


def test_frames_are_encoded_once_and_parse_as_rfc_6455() -> None:
    """Server frames at every length boundary parse with wsproto's client side."""
    client = Connection(ConnectionType.CLIENT)  # the client side after its handshake
    for size in (0, 125, 126, 65535, 65536, 100_000):
        payload = "é" * (size // 2) + "a" * (size % 2)
        frame = encode_frame(OP_TEXT, payload.encode())
        client.receive_data(frame)
        (event,) = list(client.events())
        assert isinstance(event, TextMessage) and event.data == payload
        assert event.message_finished
    body = encode_message("photo:updated", {"photoId": "p", "type": "x", "n": 1}, PROTO_JSON)
    client.receive_data(body)
    (event,) = list(client.events())
    assert json.loads(event.data) == {"type": "photo:updated", "photo_id": "p", "n": 1}


async def test_frames_sent_with_the_handshake_are_read(booth: Booth) -> None:
    """A client may send frames right behind its upgrade request, before our answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", booth.port)
    ws = WSConnection(ConnectionType.CLIENT)
    request = ws.send(Request(host="127.0.0.1", target="/ws/events/party"))
    client = Connection(ConnectionType.CLIENT)
    await stream.send_all(request + client.send(Ping(b"early")))
    got: list[Any] = []
    with trio.fail_after(5):
        while not any(isinstance(e, Pong) for e in got):
            data = await stream.receive_some(4096)
            assert data
            ws.receive_data(data)
            got.extend(ws.events())
    assert [e.payload for e in got if isinstance(e, Pong)] == [b"early"]
    await stream.aclose()


# -- caps: counted from accept ---------------------------------------------------------------


async def upgrade_status(stream: trio.SocketStream, slug: str = "party") -> int:
    """Send a websocket upgrade on ``stream``; the HTTP status of the answer, 0 when the server
    closed it unanswered (the flood guard of a full house)."""
    request = WSConnection(ConnectionType.CLIENT).send(
        Request(host="127.0.0.1", target=f"/ws/events/{slug}")
    )
    await stream.send_all(request)
    answer = b""
    with trio.fail_after(20):
        while b"\r\n\r\n" not in answer:
            try:
                data = await stream.receive_some(4096)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                assert not answer, answer
                return 0
            answer += data
    return int(answer.split(b" ", 2)[1])


@asynccontextmanager
async def open_fanout(gate: trio.Event | None = None, **caps: Any) -> AsyncIterator[FanoutServer]:
    """A bare gallery listener whose room lookup waits for ``gate``: every handshake of a burst
    is then in flight at once, past any check made before the lookup."""

    async def exists(slug: str) -> bool:
        if gate is not None:
            await gate.wait()
        return True

    server = FanoutServer(exists, room_cache_seconds=0.0, **caps)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, "127.0.0.1", 0)
        yield server
        await server.aclose(timeout=1)


@pytest.mark.parametrize(
    ("caps", "refused"), [({"max_per_ip": 3}, {429}), ({"max_connections": 3}, {0, 503})]
)
async def test_a_burst_of_parallel_upgrades_never_passes_the_caps(
    caps: dict[str, int], refused: set[int]
) -> None:
    gate = trio.Event()
    async with open_fanout(gate, **caps) as server:
        assert server.port is not None
        streams = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(8)]
        statuses: list[int] = []

        async def one(stream: trio.SocketStream) -> None:
            statuses.append(await upgrade_status(stream))

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(one, stream)
            # All eight are accepted and handshaking before any lookup answers.
            await wait_for(lambda: server._handshaking == 8 or len(statuses) == 5)
            gate.set()
        assert statuses.count(101) == 3, statuses
        assert set(statuses) - {101} <= refused and len(statuses) == 8, statuses
        assert server.connections == 3 and server.stats()["slots"] == 3
        for stream in streams:
            await stream.aclose()
        await wait_for(lambda: server.stats()["slots"] == 0 and server.connections == 0)
        # The slots came back: the next guest is let in.
        again = await trio.open_tcp_stream("127.0.0.1", server.port)
        assert await upgrade_status(again) == 101
        await again.aclose()


async def test_half_open_handshakes_hold_their_slots_until_they_go() -> None:
    async with open_fanout(max_per_ip=2, handshake_timeout=60) as server:
        assert server.port is not None
        idle = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(2)]
        await wait_for(lambda: server.stats()["slots"] == 2)
        late = await trio.open_tcp_stream("127.0.0.1", server.port)
        assert await upgrade_status(late) == 429  # two sockets that never finished hold the cap
        await late.aclose()
        for stream in idle:
            await stream.aclose()
        await wait_for(lambda: server.stats()["slots"] == 0)
        guest = await trio.open_tcp_stream("127.0.0.1", server.port)
        assert await upgrade_status(guest) == 101
        await guest.aclose()
