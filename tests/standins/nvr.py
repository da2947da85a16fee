"""A local stand-in for a Hikvision NVR speaking ISAPI over HTTP (shared/notes/protocols.md §1).

It is a plain HTTP/1.1 server (h11 on trio, not an ASGI app) so that it can misbehave the way a
device does: cut a download short after promising a Content-Length, stall mid-body, drop
connections, or stop listening altogether.

What it does, like a device:

- HTTP Digest auth (MD5, ``qop="auth"``): a request without credentials gets ``401`` with
  ``WWW-Authenticate: Digest qop="auth", realm="IP Camera(C2183)", nonce="...", stale="FALSE"``;
  it checks the nonce is one it issued (and not expired: then ``stale="TRUE"``), the ``uri``, the
  response hash, and refuses a replayed ``nc``. Wrong credentials get ``401`` + ResponseStatus.
- ``GET /ISAPI/System/time``: ``<Time>`` with ``timeMode`` NTP, ``localTime`` (its wall clock,
  with its offset: ``...+07:00``) and a POSIX ``timeZone`` (``CST-7:00:00`` for UTC+7, or the
  ``time_zone`` given, e.g. one with a DST tail).
- ``GET`` or ``POST /ISAPI/ContentMgmt/search`` (GET answers ``403 methodNotAllowed`` with
  ``search_get_forbidden``): namespace-agnostic ``CMSearchDescription``; ``trackIDList`` or
  ``trackList`` (only ``trackList`` with ``track_list_only``: a ``trackIDList`` body then gets
  ``400 badXmlContent``, an assumption: no source says how such a device fails); honours only
  the misspelled ``searchResultPostion``; caps a page at 40 whatever ``maxResults`` says;
  ``MORE`` / ``OK`` / ``NO MATCHES`` with a per-page ``numOfMatches`` (``NO MATCHES`` has no
  ``matchList`` at all); echoes the searchID lower-cased in braces; answers in the
  ``http://www.isapi.org/ver20/XMLSchema`` namespace; returns whole recordings overlapping or
  touching the window (unclipped). Malformed XML → ``400 badXmlContent``.
- Time: ``time_mode="local"`` (default) reads and writes ``...Z`` times as its wall clock at
  ``utc_offset`` (the "Z means local" devices); ``"utc"`` means what it says. ``skew`` seconds
  puts its clock off true time: recordings are stamped, and queries read, by that clock.
- ``GET`` (with an XML body) or ``POST /ISAPI/ContentMgmt/download`` (GET answers ``403
  methodNotAllowed`` with ``download_get_forbidden``): the body must be valid XML (an unescaped
  ``&`` in the URI → ``400 badXmlContent``); ``name=`` must be a known recording, else ``404`` +
  ResponseStatus; serves the recording's bytes (``make_recording(cache_dir, seconds,
  label=...)``: ``IMKH`` header + MPEG-PS) with Content-Length, which equals ``size=`` in the
  playback URI.

Catalogue: ``add_recordings(track_id=101, start=aware_datetime, count=N, seconds=20)`` lays out
contiguous recordings (``gap`` seconds apart); ``add_recording`` adds one. Each recording's video
is made lazily (the first search page or download that needs its size) with ffmpeg, about 0.2 s
each; ``label="x"`` shares one video between a batch, ``recording_seconds`` makes the video
shorter than the span it claims. Both keep tests fast.

Scripted faults, from a test (Python API) or another process (``POST /__standin__/fault``):

- ``add_fault(status, times=N, endpoint="search"|"download"|"time"|"*", sub_status=...)``: the
  next N authenticated ISAPI requests answer ``status`` (400, 401 with a fresh challenge, 403,
  404, 500, 503) with a ResponseStatus. JSON ``{"status": 500, "times": 2, "endpoint": "*"}``.
- ``add_short_download(times=1, fraction=0.5, declare="full"|"short")``: send only part of the
  file, then close the connection (``full``: Content-Length promised the whole file) or end
  cleanly with a short Content-Length (``short``: only ``size=`` tells). JSON
  ``{"short_download": 1, "fraction": 0.5, "declare": "full"}``.
- ``set_down("refuse")``: stop listening (connections refused) and close open connections;
  ``set_down("drop")``: accept, read the request, close without an answer; ``set_up()`` (or
  ``await bring_up()``, which returns once the port listens again). JSON
  ``{"down": "drop"}``, ``{"down": "refuse", "seconds": 2}`` (up again after 2 s: a refusing
  server cannot be told to come back), ``{"down": null}``.
- ``search_quirk``: ``"stuck"`` ignores the position (every page is the first, ``MORE`` forever),
  ``"more_empty"`` answers ``MORE`` with zero items after the last page, ``"repeat_boundary"``
  starts each later page with the previous page's last item. JSON ``{"search_quirk": "stuck"}``.
- ``response_delay`` (seconds before every ISAPI answer), ``bandwidth`` (bytes/s of download
  bodies), ``stall_after`` (a download sends that many bytes, sets ``download_stalled`` and waits
  for ``release_stall()`` or the client hanging up). JSON ``{"delay": 0.5, "bandwidth": 1e5,
  "stall_after": 65536}``; booleans ``search_get_forbidden``, ``download_get_forbidden``,
  ``track_list_only`` too.
- ``POST /__standin__/recordings`` ``{"track_id": 101, "start": "2024-05-01T03:00:00Z", "count":
  5, "seconds": 20}`` adds recordings; ``POST /__standin__/reset`` clears faults and quirks;
  ``GET /__standin__/state`` shows counts (``searches``/``downloads`` per method, auth
  challenges and failures). Control routes need no auth.

Not modelled: Basic auth, ``/ISAPI/ContentMgmt/download/capabilities``, search by time of picture
tracks, RTSP, DST rules (the wall clock is always ``utc_offset``).

Use in-process: ``async with open_nvr_standin(cache_dir=...) as nvr: nvr.url``; or as a process:
``python -m tests.standins.nvr --port 8190 --username admin --password secret [--time-mode local
--utc-offset 420] [--recordings 30 --segment-seconds 60]`` prints ``listening on
http://127.0.0.1:8190`` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import re
import secrets
import signal
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import h11
import trio

from tests.standins.recordings import make_recording

NAMESPACE = "http://www.isapi.org/ver20/XMLSchema"
REALM = "IP Camera(C2183)"
#: Devices cap a page at 40 whatever maxResults says (WebSDK guide §5.2.7).
PAGE_CAP = 40
MAX_REQUEST_BODY = 1 << 20
SERVER_HEADER = "App-webs/"  # what Hikvision devices send

TimeMode = Literal["local", "utc"]
Endpoint = Literal["search", "download", "time", "*"]
DownMode = Literal["refuse", "drop"]
SearchQuirk = Literal["stuck", "more_empty", "repeat_boundary"]

#: HTTP status → (ResponseStatus statusCode, statusString, default subStatusCode). The 401 and
#: 404 sub-statuses are guesses; 400/403/500 follow reports in protocols.md §1 "Errors".
_STATUS_XML: dict[int, tuple[int, str, str]] = {
    400: (6, "Invalid XML Content", "badXmlContent"),
    401: (4, "Invalid Operation", "notAuthorized"),
    403: (4, "Invalid Operation", "notSupport"),
    404: (4, "Invalid Operation", "notFound"),
    500: (3, "Device Error", "deviceError"),
    503: (2, "Device Busy", "deviceBusy"),
}
_REASONS = {
    200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 413: b"Payload Too Large", 500: b"Internal Server Error",
    503: b"Service Unavailable",
}  # fmt: skip


@dataclass
class Recording:
    """One recorded file. ``start`` is true UTC; the device stamps it by its own clock."""

    track_id: int
    start: datetime
    seconds: float
    name: str
    label: str
    recording_seconds: float
    path: Path | None = None
    size: int | None = None

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)


@dataclass
class Fault:
    """Answer ``status`` to the next ``times`` authenticated requests of ``endpoint``."""

    status: int
    times: int = 1
    endpoint: Endpoint = "*"
    sub_status: str | None = None


@dataclass
class ShortFault:
    times: int = 1
    fraction: float = 0.5
    declare: Literal["full", "short"] = "full"


@dataclass
class _Request:
    method: str
    target: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = 'application/xml; charset="UTF-8"'
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Bytes of ``body`` to send before hanging up (a short download); None = all of it.
    send_bytes: int | None = None
    content_length: int | None = None  # None = len(body)
    throttled: bool = False  # bandwidth / stall apply (download bodies)
    after: Callable[[], None] | None = None  # run once the reply is out


class _Hangup(Exception):
    """Close the connection now, without (the rest of) an answer."""


class NvrStandin:
    """State and scripting for one running stand-in; see the module docstring."""

    def __init__(
        self,
        username: str = "admin",
        password: str = "secret",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_dir: Path | None = None,
        time_mode: TimeMode = "local",
        utc_offset: timedelta = timedelta(hours=7),
        skew: float = 0.0,
        time_zone: str | None = None,
        realm: str = REALM,
        search_get_forbidden: bool = False,
        download_get_forbidden: bool = False,
        track_list_only: bool = False,
        uri_time_format: Literal["compact", "iso"] = "compact",
        search_quirk: SearchQuirk | None = None,
        nonce_ttl: float = 300.0,
        response_delay: float = 0.0,
        bandwidth: float | None = None,
        stall_after: int | None = None,
        video_size: str = "160x120",
        video_fps: int = 10,
    ) -> None:
        if time_mode not in ("local", "utc"):
            raise ValueError(f"time_mode must be 'local' or 'utc', not {time_mode!r}")
        self.username = username
        self.password = password
        self.host = host
        self.port = port
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "photobot-nvr-standin"
        self.time_mode: TimeMode = time_mode
        self.utc_offset = utc_offset
        self.skew = skew
        self.time_zone = time_zone
        self.realm = realm
        self.search_get_forbidden = search_get_forbidden
        self.download_get_forbidden = download_get_forbidden
        self.track_list_only = track_list_only
        self.uri_time_format = uri_time_format
        self.search_quirk: SearchQuirk | None = search_quirk
        self.nonce_ttl = nonce_ttl
        self.response_delay = response_delay
        self.bandwidth = bandwidth
        self.stall_after = stall_after
        #: The recordings' picture: tiny by default (fast tests); a benchmark asks for 720p.
        self.video_size = video_size
        self.video_fps = video_fps
        self.url = ""  # set once listening

        self.recordings: list[Recording] = []
        self.faults: list[Fault] = []
        self.short_faults: list[ShortFault] = []
        self.down: DownMode | None = None
        #: Counts: "search POST", "download GET", "time GET", ...; plus the auth counters.
        self.calls: Counter[str] = Counter()
        self.requests = 0  # every HTTP request read, control routes excluded
        self.auth_challenges = 0  # 401s to requests without (valid, fresh) credentials
        self.auth_failures = 0  # 401s to wrong credentials
        self.connections = 0
        #: Search bodies as received (decoded), newest last: lets a test see what was sent.
        self.search_bodies: list[str] = []
        self.download_stalled = trio.Event()

        self._names = itertools.count(4667000100)
        self._by_name: dict[str, Recording] = {}
        self._nonces: dict[str, float] = {}
        self._seen_nc: set[tuple[str, str, str]] = set()
        self._release = trio.Event()
        self._make_lock = trio.Lock()
        self._changed = trio.Event()
        self._listening = trio.Event()
        self._listen_scope: trio.CancelScope | None = None
        self._conn_scopes: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None

    # -- catalogue -----------------------------------------------------------------------------

    def add_recording(
        self,
        track_id: int,
        start: datetime,
        seconds: float,
        *,
        name: str | None = None,
        label: str | None = None,
        recording_seconds: float | None = None,
    ) -> Recording:
        """One recording of ``seconds`` from ``start`` (aware; true UTC). Its video is made with
        ``label`` (default: its name, so every recording differs) and ``recording_seconds``
        (default: ``seconds``)."""
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        name = name or f"{next(self._names):017d}"
        if name in self._by_name:
            raise ValueError(f"a recording named {name!r} exists")
        recording = Recording(
            track_id=track_id,
            start=start.astimezone(UTC),
            seconds=seconds,
            name=name,
            label=label if label is not None else name,
            recording_seconds=recording_seconds if recording_seconds is not None else seconds,
        )
        self.recordings.append(recording)
        self.recordings.sort(key=lambda r: (r.track_id, r.start, r.name))
        self._by_name[name] = recording
        return recording

    def add_recordings(
        self,
        track_id: int,
        start: datetime,
        count: int,
        seconds: float,
        *,
        gap: float = 0.0,
        label: str | None = None,
        recording_seconds: float | None = None,
    ) -> list[Recording]:
        """``count`` recordings of ``seconds`` each from ``start``, ``gap`` seconds apart."""
        step = timedelta(seconds=seconds + gap)
        return [
            self.add_recording(
                track_id,
                start + i * step,
                seconds,
                label=label,
                recording_seconds=recording_seconds,
            )
            for i in range(count)
        ]

    async def recording_file(self, recording: Recording) -> Path:
        """The video file served for ``recording`` (made on first use; sets its size)."""
        if recording.path is None:
            # One ffmpeg at a time: two makers of the same cached file would race on its name.
            async with self._make_lock:
                if recording.path is None:
                    path = await trio.to_thread.run_sync(
                        lambda: make_recording(
                            self.cache_dir,
                            recording.recording_seconds,
                            label=recording.label,
                            size=self.video_size,
                            fps=self.video_fps,
                        )
                    )
                    recording.size = path.stat().st_size
                    recording.path = path
        return recording.path

    # -- scripting -----------------------------------------------------------------------------

    def add_fault(
        self,
        status: int,
        *,
        times: int = 1,
        endpoint: Endpoint = "*",
        sub_status: str | None = None,
    ) -> None:
        self.faults.append(Fault(status, times, endpoint, sub_status))

    def add_short_download(
        self,
        times: int = 1,
        *,
        fraction: float = 0.5,
        declare: Literal["full", "short"] = "full",
    ) -> None:
        if not 0.0 <= fraction < 1.0:
            raise ValueError("fraction must be in [0, 1)")
        self.short_faults.append(ShortFault(times, fraction, declare))

    def set_down(self, mode: DownMode = "refuse") -> None:
        """``refuse``: stop listening; ``drop``: answer nothing. Open connections are closed."""
        if mode not in ("refuse", "drop"):
            raise ValueError(f"down mode must be 'refuse' or 'drop', not {mode!r}")
        self.down = mode
        if mode == "refuse":
            self._listening = trio.Event()
            if self._listen_scope is not None:
                self._listen_scope.cancel()
        for scope in list(self._conn_scopes):
            scope.cancel()
        self._changed.set()

    def set_up(self) -> None:
        """Answer again; after ``refuse``, listening resumes shortly (see :meth:`bring_up`)."""
        self.down = None
        self._changed.set()

    async def bring_up(self) -> None:
        """:meth:`set_up` and wait until the port is listening again."""
        self.set_up()
        await self._listening.wait()

    def stall_downloads_after(self, nbytes: int) -> None:
        """Downloads send ``nbytes``, set ``download_stalled`` and wait for ``release_stall()``
        (or the client hanging up)."""
        self.stall_after = nbytes
        self.download_stalled = trio.Event()
        self._release = trio.Event()

    def release_stall(self) -> None:
        """Let stalled downloads finish, and stop stalling new ones."""
        self.stall_after = None
        self._release.set()

    def reset(self) -> None:
        self.faults.clear()
        self.short_faults.clear()
        self.search_quirk = None
        self.response_delay = 0.0
        self.bandwidth = None
        self.release_stall()
        self.set_up()

    def state(self) -> dict[str, Any]:
        def per_method(kind: str) -> dict[str, int]:
            return {m: self.calls[f"{kind} {m}"] for m in ("GET", "POST")}

        return {
            "searches": per_method("search"),
            "downloads": per_method("download"),
            "time": self.calls["time GET"],
            "requests": self.requests,
            "auth_challenges": self.auth_challenges,
            "auth_failures": self.auth_failures,
            "connections": self.connections,
            "faults": sum(f.times for f in self.faults),
            "short_downloads": sum(f.times for f in self.short_faults),
            "down": self.down,
            "search_quirk": self.search_quirk,
            "recordings": len(self.recordings),
        }

    # -- device time ---------------------------------------------------------------------------

    def _wall_offset(self) -> timedelta:
        return self.utc_offset if self.time_mode == "local" else timedelta(0)

    def device_clock(self, true_utc: datetime) -> datetime:
        """What the device writes for ``true_utc`` in its ``...Z`` times (naive)."""
        device = true_utc.astimezone(UTC) + timedelta(seconds=self.skew) + self._wall_offset()
        return device.replace(tzinfo=None, microsecond=0)

    def _true_time(self, text: str) -> datetime | None:
        """A query time as true UTC, read the way this device reads it."""
        text = text.strip()
        compact = re.fullmatch(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z?", text)
        try:
            parsed = (
                datetime(*(int(g) for g in compact.groups()))
                if compact
                else datetime.fromisoformat(text)
            )
        except ValueError:
            return None
        skew = timedelta(seconds=self.skew)
        if parsed.utcoffset():  # an explicit offset is an absolute time, on the device clock
            return parsed.astimezone(UTC) - skew
        naive = parsed.replace(tzinfo=None)
        return (naive - self._wall_offset() - skew).replace(tzinfo=UTC)

    def posix_time_zone(self) -> str:
        if self.time_zone is not None:
            return self.time_zone
        total = int(self.utc_offset.total_seconds())
        sign = "-" if total >= 0 else "+"  # POSIX counts west of Greenwich as positive
        hours, rest = divmod(abs(total), 3600)
        return f"CST{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"

    # -- HTTP plumbing -------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``started`` gets the base URL."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self.url)
            while True:
                self._listening.set()
                with trio.CancelScope() as scope:
                    self._listen_scope = scope
                    if self.down != "refuse":
                        try:
                            async with trio.open_nursery() as accepting:
                                for listener in listeners:
                                    accepting.start_soon(self._accept, listener, nursery)
                        finally:
                            for listener in listeners:
                                listener.socket.close()  # refused from now on
                while self.down == "refuse":
                    self._changed = trio.Event()
                    await self._changed.wait()
                # Same port again: trio's listeners set SO_REUSEADDR.
                listeners = await trio.open_tcp_listeners(self.port, host=self.host)

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            self.connections += 1
            nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        with trio.CancelScope() as scope:
            self._conn_scopes.add(scope)
            try:
                while True:
                    request = await self._read_request(conn, stream)
                    if request is None:
                        return
                    control = request.path.startswith("/__standin__/")
                    if self.down == "drop" and not control:
                        return
                    reply = await self._dispatch(request)
                    await self._send(conn, stream, reply)
                    if reply.after is not None:
                        reply.after()
                    if h11.MUST_CLOSE in (conn.our_state, conn.their_state):
                        return
                    conn.start_next_cycle()
            except (
                _Hangup,
                h11.ProtocolError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ):
                return
            finally:
                self._conn_scopes.discard(scope)
                await trio.aclose_forcefully(stream)

    async def _next_event(self, conn: h11.Connection, stream: trio.SocketStream) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            return event

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> _Request | None:
        event = await self._next_event(conn, stream)
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise _Hangup
        target = event.target.decode("latin-1")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        body = bytearray()
        while True:
            part = await self._next_event(conn, stream)
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > MAX_REQUEST_BODY:
                    raise _Hangup
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise _Hangup
        return _Request(
            method=event.method.decode("ascii"),
            target=target,
            path=urlsplit(target).path,
            headers=headers,
            body=bytes(body),
        )

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, reply: _Reply) -> None:
        length = reply.content_length if reply.content_length is not None else len(reply.body)
        headers = [
            ("Server", SERVER_HEADER),
            ("Content-Type", reply.content_type),
            ("Content-Length", str(length)),
            *reply.headers,
        ]
        await stream.send_all(
            conn.send(
                h11.Response(
                    status_code=reply.status,
                    headers=headers,
                    reason=_REASONS.get(reply.status, b"Error"),
                )
            )
        )
        limit = len(reply.body) if reply.send_bytes is None else reply.send_bytes
        sent = 0
        chunk = 16384 if reply.throttled else 1 << 20
        while sent < limit:
            stall_at = self.stall_after if reply.throttled else None
            if stall_at is not None and sent >= stall_at:
                self.download_stalled.set()
                await self._wait_release_or_hangup(stream)
                continue
            end = min(limit, sent + chunk)
            if stall_at is not None:
                end = min(end, max(stall_at, sent + 1))
            piece = reply.body[sent:end]
            await stream.send_all(conn.send(h11.Data(data=piece)))
            sent = end
            if reply.throttled and self.bandwidth:
                await trio.sleep(len(piece) / self.bandwidth)
        if sent < length:
            raise _Hangup  # promised more than was sent: hang up mid-body, as devices do
        await stream.send_all(conn.send(h11.EndOfMessage()))

    async def _wait_release_or_hangup(self, stream: trio.SocketStream) -> None:
        """Wait for ``release_stall()``; a client that hangs up meanwhile ends the connection."""
        hung_up = False
        async with trio.open_nursery() as nursery:

            async def watch_peer() -> None:
                nonlocal hung_up
                try:
                    await stream.receive_some(1)  # b"" once the client has gone
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # a reset: gone too (raised here it would reach us in a group)
                hung_up = True
                nursery.cancel_scope.cancel()

            async def watch_release() -> None:
                await self._release.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_peer)
            nursery.start_soon(watch_release)
        if hung_up:
            raise _Hangup

    # -- routes --------------------------------------------------------------------------------

    async def _dispatch(self, request: _Request) -> _Reply:
        if request.path.startswith("/__standin__/"):
            return self._control(request)
        self.requests += 1
        auth = self._check_digest(request)
        if auth != "ok":
            if auth == "bad":
                self.auth_failures += 1
            else:
                self.auth_challenges += 1
            return self._challenge(request, stale=auth == "stale")
        endpoint = {
            "/ISAPI/System/time": "time",
            "/ISAPI/ContentMgmt/search": "search",
            "/ISAPI/ContentMgmt/download": "download",
        }.get(request.path.rstrip("/"))
        if endpoint is not None:
            self.calls[f"{endpoint} {request.method}"] += 1
        if self.response_delay:
            await trio.sleep(self.response_delay)
        if (fault := self._take_fault(endpoint or "*")) is not None:
            if fault.status == 401:
                return self._challenge(request, stale=False)
            return self._status_reply(request, fault.status, sub_status=fault.sub_status)
        if endpoint == "time" and request.method == "GET":
            return self._time()
        if endpoint == "search" and request.method in ("GET", "POST"):
            if request.method == "GET" and self.search_get_forbidden:
                return self._status_reply(request, 403, sub_status="methodNotAllowed")
            return await self._search(request)
        if endpoint == "download" and request.method in ("GET", "POST"):
            if request.method == "GET" and self.download_get_forbidden:
                return self._status_reply(request, 403, sub_status="methodNotAllowed")
            return await self._download(request)
        if endpoint is not None:
            return self._status_reply(request, 403, sub_status="methodNotAllowed")
        return self._status_reply(request, 404, sub_status="notSupport")

    def _take_fault(self, endpoint: str) -> Fault | None:
        for fault in self.faults:
            if fault.endpoint in ("*", endpoint) and fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _status_reply(
        self, request: _Request, status: int, *, sub_status: str | None = None
    ) -> _Reply:
        code, text, default_sub = _STATUS_XML.get(status, (4, "Invalid Operation", "notSupport"))
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<ResponseStatus version="2.0" xmlns="{NAMESPACE}">\n'
            f"<requestURL>{escape(request.path)}</requestURL>\n"
            f"<statusCode>{code}</statusCode>\n"
            f"<statusString>{text}</statusString>\n"
            f"<subStatusCode>{escape(sub_status or default_sub)}</subStatusCode>\n"
            "</ResponseStatus>\n"
        )
        return _Reply(status, body.encode())

    def _challenge(self, request: _Request, *, stale: bool) -> _Reply:
        now = time.monotonic()
        for nonce, issued in list(self._nonces.items()):
            if now - issued > self.nonce_ttl:
                del self._nonces[nonce]
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = now
        reply = self._status_reply(request, 401)
        reply.headers.append(
            (
                "WWW-Authenticate",
                f'Digest qop="auth", realm="{self.realm}", nonce="{nonce}", '
                f'stale="{"TRUE" if stale else "FALSE"}"',
            )
        )
        return reply

    def _check_digest(self, request: _Request) -> Literal["ok", "missing", "stale", "bad"]:
        header = request.headers.get("authorization", "")
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "digest":
            return "missing"
        fields = {
            m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))', rest)
        }
        nonce = fields.get("nonce", "")
        issued = self._nonces.get(nonce)
        if issued is None or time.monotonic() - issued > self.nonce_ttl:
            return "stale"
        nc, cnonce = fields.get("nc", ""), fields.get("cnonce", "")
        if (
            fields.get("username") != self.username
            or fields.get("realm") != self.realm
            or fields.get("uri") != request.target
            or fields.get("qop") != "auth"
            or fields.get("algorithm", "MD5").upper() != "MD5"
            or not nc
            or not cnonce
        ):
            return "bad"
        if (nonce, nc, cnonce) in self._seen_nc:
            return "bad"  # a replayed request

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1 = md5(f"{self.username}:{self.realm}:{self.password}")
        ha2 = md5(f"{request.method}:{request.target}")
        expected = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        if not hmac.compare_digest(expected, fields.get("response", "")):
            return "bad"
        self._seen_nc.add((nonce, nc, cnonce))
        return "ok"

    def _time(self) -> _Reply:
        offset = self.utc_offset
        local = datetime.now(UTC) + timedelta(seconds=self.skew) + offset
        total = int(offset.total_seconds())
        hours, rest = divmod(abs(total), 3600)
        suffix = f"{'+' if total >= 0 else '-'}{hours:02d}:{rest // 60:02d}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Time version="2.0" xmlns="{NAMESPACE}">\n'
            "<timeMode>NTP</timeMode>\n"
            f"<localTime>{local.strftime('%Y-%m-%dT%H:%M:%S')}{suffix}</localTime>\n"
            f"<timeZone>{escape(self.posix_time_zone())}</timeZone>\n"
            "</Time>\n"
        )
        return _Reply(200, body.encode())

    async def _search(self, request: _Request) -> _Reply:
        self.search_bodies.append(request.body.decode("utf-8", "replace"))
        root = _parse(request.body)
        if root is None or root.tag != "CMSearchDescription":
            return self._status_reply(request, 400)
        track_paths = ["trackList/trackID"]
        if not self.track_list_only:
            track_paths.append("trackIDList/trackID")
        tracks: set[int] = set()
        for path in track_paths:
            for element in root.findall(path):
                try:
                    tracks.add(int((element.text or "").strip()))
                except ValueError:
                    return self._status_reply(request, 400, sub_status="badParameters")
        spans: list[tuple[datetime, datetime]] = []
        for span in root.findall("timeSpanList/timeSpan"):
            start = self._true_time(span.findtext("startTime") or "")
            end = self._true_time(span.findtext("endTime") or "")
            if start is None or end is None:
                return self._status_reply(request, 400, sub_status="badParameters")
            spans.append((start, end))
        if not tracks or not spans:
            return self._status_reply(request, 400)
        page = _int(root.findtext("maxResults"), PAGE_CAP)
        page = PAGE_CAP if page <= 0 else min(page, PAGE_CAP)
        # Only the misspelled element counts; "searchResultPosition" is ignored, like devices.
        position = max(0, _int(root.findtext("searchResultPostion"), 0))
        search_id = (root.findtext("searchID") or "").strip().strip("{}").lower()
        matches = [
            r
            for r in self.recordings
            # A recording that only touches the window counts (an assumption: devices compare
            # inclusively); the client trims to [start, end).
            if r.track_id in tracks and any(r.start <= e and r.end >= s for s, e in spans)
        ]
        total = len(matches)
        if self.search_quirk == "stuck":
            items = matches[:page]
            status = "MORE" if total > page else "OK"
        else:
            # repeat_boundary: pages overlap by one, as when a client's paging re-asks from the
            # last item's start (HikLoad); a client must de-duplicate.
            repeat = self.search_quirk == "repeat_boundary" and position > 0
            first = position - 1 if repeat else position
            items = matches[first : first + page]
            more = first + len(items) < total
            if self.search_quirk == "more_empty" and total:
                more = True
            status = "MORE" if more else "OK"
        if not items and status != "MORE":
            status = "NO MATCHES"
        for recording in items:
            await self.recording_file(recording)
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n',
            f'<CMSearchResult version="2.0" xmlns="{NAMESPACE}">\n',
            f"<searchID>{{{escape(search_id or str(secrets.token_hex(16)))}}}</searchID>\n",
            f"<responseStatus>{'false' if status == 'NO MATCHES' else 'true'}</responseStatus>\n",
            f"<responseStatusStrg>{status}</responseStatusStrg>\n",
            f"<numOfMatches>{len(items)}</numOfMatches>\n",
        ]
        if status != "NO MATCHES":
            parts.append("<matchList>\n")
            parts.extend(self._match_item(r) for r in items)
            parts.append("</matchList>\n")
        parts.append("</CMSearchResult>\n")
        return _Reply(200, "".join(parts).encode())

    def playback_uri(self, recording: Recording) -> str:
        """The (unescaped) playback URI a search gives for ``recording``."""
        start, end = self.device_clock(recording.start), self.device_clock(recording.end)
        fmt = "%Y%m%dT%H%M%SZ" if self.uri_time_format == "compact" else "%Y-%m-%dT%H:%M:%SZ"
        return (
            f"rtsp://{self.host}/Streaming/tracks/{recording.track_id}/"
            f"?starttime={start.strftime(fmt)}&endtime={end.strftime(fmt)}"
            f"&name={recording.name}&size={recording.size}"
        )

    def _match_item(self, recording: Recording) -> str:
        start, end = self.device_clock(recording.start), self.device_clock(recording.end)
        return (
            "<searchMatchItem>\n"
            "<sourceID>{00000000-0000-0000-0000-000000000000}</sourceID>\n"
            f"<trackID>{recording.track_id}</trackID>\n"
            f"<timeSpan><startTime>{start.strftime('%Y-%m-%dT%H:%M:%SZ')}</startTime>"
            f"<endTime>{end.strftime('%Y-%m-%dT%H:%M:%SZ')}</endTime></timeSpan>\n"
            "<mediaSegmentDescriptor><contentType>video</contentType>"
            "<codecType>H.264-BP</codecType>"
            f"<playbackURI>{escape(self.playback_uri(recording))}</playbackURI>"
            "</mediaSegmentDescriptor>\n"
            "<metadataMatches><metadataDescriptor>recordType.meta.isapi.com/timing"
            "</metadataDescriptor></metadataMatches>\n"
            "</searchMatchItem>\n"
        )

    async def _download(self, request: _Request) -> _Reply:
        root = _parse(request.body)
        if root is None:
            return self._status_reply(request, 400)
        uri = root.findtext(".//playbackURI")
        if not uri:
            return self._status_reply(request, 400)
        params = dict(parse_qsl(urlsplit(uri.strip()).query, keep_blank_values=True))
        recording = self._by_name.get(params.get("name", ""))
        if recording is None:
            return self._status_reply(request, 404)
        data = await trio.Path(await self.recording_file(recording)).read_bytes()
        reply = _Reply(200, data, content_type="application/octet-stream", throttled=True)
        if self.short_faults:
            short = self.short_faults[0]
            short.times -= 1
            if short.times <= 0:
                self.short_faults.pop(0)
            reply.send_bytes = int(len(data) * short.fraction)
            if short.declare == "short":
                reply.body = data[: reply.send_bytes]
                reply.send_bytes = None
        return reply

    def _control(self, request: _Request) -> _Reply:
        if request.path == "/__standin__/state" and request.method == "GET":
            return _json(200, self.state())
        if request.method != "POST":
            return _json(405, {"ok": False, "error": "method not allowed"})
        try:
            body = json.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise ValueError("JSON object expected")
            if request.path == "/__standin__/reset":
                self.reset()
                return _json(200, {"ok": True})
            if request.path == "/__standin__/recordings":
                start = datetime.fromisoformat(str(body["start"]))
                made = self.add_recordings(
                    int(body.get("track_id", 101)),
                    start,
                    int(body.get("count", 1)),
                    float(body.get("seconds", 60)),
                    gap=float(body.get("gap", 0)),
                    label=body.get("label"),
                    recording_seconds=body.get("recording_seconds"),
                )
                return _json(200, {"ok": True, "names": [r.name for r in made]})
            if request.path == "/__standin__/fault":
                return self._json_fault(body)
        except (KeyError, TypeError, ValueError) as exc:
            return _json(400, {"ok": False, "error": str(exc)})
        return _json(404, {"ok": False, "error": "unknown control route"})

    def _json_fault(self, body: dict[str, Any]) -> _Reply:
        if "status" in body:
            endpoint = body.get("endpoint", "*")
            if endpoint not in ("search", "download", "time", "*"):
                raise ValueError(f"unknown endpoint {endpoint!r}")
            self.add_fault(
                int(body["status"]),
                times=int(body.get("times", 1)),
                endpoint=endpoint,
                sub_status=body.get("sub_status"),
            )
        if "short_download" in body:
            declare = body.get("declare", "full")
            if declare not in ("full", "short"):
                raise ValueError(f"declare must be 'full' or 'short', not {declare!r}")
            self.add_short_download(
                int(body["short_download"]),
                fraction=float(body.get("fraction", 0.5)),
                declare=declare,
            )
        if "search_quirk" in body:
            quirk = body["search_quirk"]
            if quirk not in (None, "stuck", "more_empty", "repeat_boundary"):
                raise ValueError(f"unknown search_quirk {quirk!r}")
            self.search_quirk = quirk
        if "delay" in body:
            self.response_delay = float(body["delay"] or 0)
        if "bandwidth" in body:
            self.bandwidth = None if body["bandwidth"] is None else float(body["bandwidth"])
        if "stall_after" in body:
            if body["stall_after"] is None:
                self.release_stall()
            else:
                self.stall_downloads_after(int(body["stall_after"]))
        for flag in ("search_get_forbidden", "download_get_forbidden", "track_list_only"):
            if flag in body:
                setattr(self, flag, bool(body[flag]))
        after: Callable[[], None] | None = None
        if "down" in body:
            mode = body["down"]
            if mode not in (None, "refuse", "drop"):
                raise ValueError(f"down must be 'refuse', 'drop' or null, not {mode!r}")
            if mode is None:
                self.set_up()
            else:
                seconds = body.get("seconds")
                if mode == "refuse" and seconds is None:
                    raise ValueError("down 'refuse' needs 'seconds': nothing could undo it")
                # After the answer is out: going down closes this connection too.
                after = lambda: self._go_down_for(mode, seconds)  # noqa: E731
        reply = _json(200, {"ok": True})
        reply.after = after
        return reply

    def _go_down_for(self, mode: DownMode, seconds: float | None) -> None:
        self.set_down(mode)
        if seconds is not None and self._nursery is not None:

            async def come_back() -> None:
                await trio.sleep(float(seconds))
                self.set_up()

            self._nursery.start_soon(come_back)


def _parse(body: bytes) -> ET.Element | None:
    """Namespace-agnostic XML, or None if malformed (or declaring entities)."""
    if re.search(rb"<!\s*(?:DOCTYPE|ENTITY)", body, re.IGNORECASE):
        return None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.rsplit("}", 1)[1]
    return root


def _int(text: str | None, default: int) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


def _json(status: int, payload: Any) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), content_type="application/json")


@asynccontextmanager
async def open_nvr_standin(
    username: str = "admin", password: str = "secret", **options: Any
) -> AsyncIterator[NvrStandin]:
    """Run an :class:`NvrStandin` (``port=0``: any free port) for the block."""
    standin = NvrStandin(username, password, **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: standin.serve(task_status=task_status))
        try:
            yield standin
        finally:
            nursery.cancel_scope.cancel()


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.standins.nvr",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password", required=True)
    parser.add_argument("--time-mode", choices=("local", "utc"), default="local")
    parser.add_argument("--utc-offset", type=int, default=420, help="minutes east of UTC")
    parser.add_argument("--skew", type=float, default=0.0, help="device clock error, seconds")
    parser.add_argument("--time-zone", help="POSIX timeZone to report (default from offset)")
    parser.add_argument("--cache-dir", type=Path, help="where recordings are made and kept")
    parser.add_argument("--track", type=int, default=101)
    parser.add_argument("--recordings", type=int, default=0, help="recordings ending now")
    parser.add_argument("--segment-seconds", type=float, default=60.0)
    parser.add_argument("--recording-seconds", type=float, help="video length served")
    parser.add_argument("--search-get-forbidden", action="store_true")
    parser.add_argument("--download-get-forbidden", action="store_true")
    parser.add_argument("--track-list-only", action="store_true")
    parser.add_argument("--video-size", default="160x120", help="recordings' WxH")
    parser.add_argument("--video-fps", type=int, default=10)
    args = parser.parse_args(argv)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_nvr_standin(
            args.username,
            args.password,
            host=args.host,
            port=args.port,
            cache_dir=args.cache_dir,
            time_mode=args.time_mode,
            utc_offset=timedelta(minutes=args.utc_offset),
            skew=args.skew,
            time_zone=args.time_zone,
            search_get_forbidden=args.search_get_forbidden,
            download_get_forbidden=args.download_get_forbidden,
            track_list_only=args.track_list_only,
            video_size=args.video_size,
            video_fps=args.video_fps,
        ) as standin:
            if args.recordings > 0:
                now = datetime.now(UTC).replace(microsecond=0)
                span = timedelta(seconds=args.segment_seconds)
                standin.add_recordings(
                    args.track,
                    now - args.recordings * span,
                    args.recordings,
                    args.segment_seconds,
                    recording_seconds=args.recording_seconds,
                )
            print(f"listening on {standin.url}", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    trio.run(_main, sys.argv[1:])
