"""The gallery websocket protocol, free of I/O (hypercorn-style: bytes in, bytes and events out).

Opening handshake (RFC 6455 §4.2), parsed with h11: ``GET /ws/events/<slug>`` with the usual
upgrade headers. A path that is not a gallery room is a 404, a missing upgrade a 426, an Origin
not in the allowed list (when one is set) a 403; a request without Origin (a native app) passes.
Subprotocols: ``msgpack`` (binary frames, for native clients) or ``json`` / none (text frames,
what browsers use).

Server→guest frames are never masked, so a message's frame is the same bytes for every guest of a
room: :func:`encode_message` runs once per message and subprotocol, whatever the room's size.

Guest→server frames are parsed by wsproto (:class:`FrameReader`): a ping is answered with a pong,
a close with a close; anything else a guest sends is read and ignored.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import h11
import msgpack
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping
from wsproto.utilities import generate_accept_token

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_NO_PONG",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_SLOW",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "PATH_PREFIX",
    "PROTO_JSON",
    "PROTO_MSGPACK",
    "SUBPROTOCOL_MSGPACK",
    "CloseReceived",
    "FrameReader",
    "HandshakeParser",
    "HandshakeRequest",
    "PingReceived",
    "Rejection",
    "accept_response",
    "encode_close",
    "encode_frame",
    "encode_message",
    "message_body",
    "negotiate",
    "parse_path",
]

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

#: Close codes the server sends.
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # the booth is shutting down
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TOO_SLOW: Final = 1013  # "try again later": the guest fell behind; poll `since`, reconnect
CLOSE_NO_PONG: Final = 4000  # no answer to two pings: the connection is presumed dead

#: Rooms are addressed as ``/ws/events/<slug>``; the room's name is ``event:<slug>``.
PATH_PREFIX: Final = "/ws/events/"
_SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")

SUBPROTOCOL_MSGPACK: Final = "msgpack"
SUBPROTOCOL_JSON: Final = "json"
#: Index of a guest's encoding; rooms keep one guest set per index.
PROTO_JSON: Final = 0
PROTO_MSGPACK: Final = 1
_SUBPROTOCOLS: Final = {SUBPROTOCOL_JSON: PROTO_JSON, SUBPROTOCOL_MSGPACK: PROTO_MSGPACK}

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


# -- frames ---------------------------------------------------------------------------------


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (what a server sends)."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        header = bytes((first, n))
    elif n < 0x10000:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame; 1005/1006 ("no status") are sent as an empty close."""
    if code in (1005, 1006):
        return encode_frame(OP_CLOSE, b"")
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    return encode_frame(OP_CLOSE, payload)


def message_body(type_: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"type": …, **data}``; a caller's ``photoId`` leaves as ``photo_id`` (seed 004)."""
    body: dict[str, Any] = {"type": type_}
    for key, value in data.items():
        if key == "type":
            continue
        if key == "photoId":
            if "photo_id" in data:
                continue
            key = "photo_id"
        body[key] = value
    return body


def encode_message(type_: str, data: Mapping[str, Any], proto: int) -> bytes:
    """The complete frame of one gallery message for guests speaking ``proto``."""
    body = message_body(type_, data)
    if proto == PROTO_MSGPACK:
        return encode_frame(OP_BINARY, msgpack.packb(body, default=str, use_bin_type=True))
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
    return encode_frame(OP_TEXT, text.encode("utf-8"))


# -- opening handshake ----------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeRequest:
    """A valid websocket upgrade request for a gallery room."""

    slug: str
    key: bytes
    proto: int
    subprotocol: str | None
    """What the response names in ``Sec-WebSocket-Protocol`` (None: no header, JSON)."""
    origin: str | None
    trailing: bytes
    """Bytes the guest sent after the request (frames sent before our answer)."""


@dataclass(frozen=True)
class Rejection:
    """The handshake is refused with an HTTP status; the connection closes after it."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()

    def response(self) -> bytes:
        body = (self.message + "\n").encode("utf-8")
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_path(target: str) -> str | None:
    """The room's slug from ``/ws/events/<slug>[/][?query]``, or None."""
    path = target.split("?", 1)[0]
    if not path.startswith(PATH_PREFIX):
        return None
    slug = path[len(PATH_PREFIX) :]
    if slug.endswith("/"):
        slug = slug[:-1]
    return slug if _SLUG_RE.fullmatch(slug) else None


def negotiate(offered: Iterable[str]) -> tuple[int, str | None]:
    """The guest's first offered subprotocol we speak; JSON without a header if none."""
    for name in offered:
        proto = _SUBPROTOCOLS.get(name)
        if proto is not None:
            return proto, name
    return PROTO_JSON, None


def _tokens(value: bytes) -> list[str]:
    return [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]


def validate(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    allowed_origins: frozenset[str] = frozenset(),
    trailing: bytes = b"",
) -> HandshakeRequest | Rejection:
    """Check one parsed HTTP request; header names are lowercase (as h11 gives them)."""
    slug = parse_path(target.decode("latin-1"))
    if slug is None:
        return Rejection(404, "no such gallery")
    if method != b"GET":
        return Rejection(405, "use GET", (("Allow", "GET"),))
    connection: list[str] = []
    offered: list[str] = []
    upgrade = version = key = origin = None
    for name, value in headers:
        if name == b"connection":
            connection += _tokens(value)
        elif name == b"upgrade":
            upgrade = value
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"sec-websocket-key":
            key = value.strip()
        elif name == b"sec-websocket-protocol":
            offered += _tokens(value)
        elif name == b"origin":
            origin = value.decode("latin-1")
    if (
        upgrade is None
        or upgrade.lower() != b"websocket"
        or not any(t.lower() == "upgrade" for t in connection)
    ):
        return Rejection(426, "websocket upgrade required", (("Upgrade", "websocket"),))
    if version != b"13":
        return Rejection(426, "websocket version 13 required", (("Sec-WebSocket-Version", "13"),))
    if key is None or len(key) != 24:
        return Rejection(400, "bad Sec-WebSocket-Key")
    if allowed_origins and origin is not None and origin not in allowed_origins:
        return Rejection(403, "origin not allowed")
    proto, subprotocol = negotiate(offered)
    return HandshakeRequest(slug, key, proto, subprotocol, origin, trailing)


class HandshakeParser:
    """Feed the guest's first bytes until :meth:`feed` returns a request or a rejection."""

    def __init__(
        self, *, allowed_origins: frozenset[str] = frozenset(), max_size: int = 8192
    ) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_size)
        self._origins = allowed_origins

    def feed(self, data: bytes) -> HandshakeRequest | Rejection | None:
        """None: need more bytes. ``b""`` means the guest closed (a 400, never sent)."""
        conn = self._h11
        conn.receive_data(data)
        try:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return None
            if not isinstance(event, h11.Request):
                return Rejection(400, "bad request")
            nxt = conn.next_event()
            if not isinstance(nxt, h11.EndOfMessage):
                return Rejection(400, "a websocket upgrade has no body")
            conn.next_event()  # PAUSED (a possible protocol switch): the rest is trailing data
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
            return Rejection(status, "bad request")
        return validate(
            event.method,
            event.target,
            event.headers,
            allowed_origins=self._origins,
            trailing=conn.trailing_data[0],
        )


def accept_response(request: HandshakeRequest) -> bytes:
    """The ``101 Switching Protocols`` answer."""
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Accept: " + generate_accept_token(request.key).decode("ascii"),
    ]
    if request.subprotocol is not None:
        lines.append("Sec-WebSocket-Protocol: " + request.subprotocol)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- what guests send -----------------------------------------------------------------------


@dataclass(frozen=True)
class PingReceived:
    payload: bytes


@dataclass(frozen=True)
class CloseReceived:
    """The guest closed (or broke the protocol: wsproto's code, e.g. 1002, and reason)."""

    code: int
    reason: str


Incoming = PingReceived | CloseReceived


class FrameReader:
    """Parses a guest's frames (masked, as RFC 6455 requires of clients) with wsproto."""

    __slots__ = ("_conn",)

    def __init__(self, trailing: bytes = b"") -> None:
        self._conn = Connection(ConnectionType.SERVER, trailing_data=trailing)

    def feed(self, data: bytes) -> list[Incoming]:
        """Events in ``data`` (and any bytes given before); nothing after a close."""
        conn = self._conn
        if data:
            conn.receive_data(data)
        out: list[Incoming] = []
        for event in conn.events():
            if isinstance(event, Ping):
                out.append(PingReceived(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                out.append(CloseReceived(int(event.code), event.reason or ""))
                break
            # Pongs, text and binary messages: read and ignored (wsproto streams message data
            # as it arrives, so a large message is not buffered).
        return out
