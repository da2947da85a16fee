"""Hikvision ISAPI client: find the recorded files of a camera track and download them.

Protocol (shared/notes/protocols.md §1):

- Auth is HTTP Digest (MD5, ``qop="auth"``). The first request of a client is answered ``401``
  with a challenge and sent again with credentials (httpx's ``DigestAuth``); later requests reuse
  the challenge. A 401 *after* that exchange means the username or password is wrong.
- ``POST /ISAPI/ContentMgmt/search`` takes a ``CMSearchDescription`` (the element really is
  ``searchResultPostion``, misspelled: the correct spelling is silently ignored by devices) and
  answers a ``CMSearchResult`` of at most 40 ``searchMatchItem`` per page with
  ``responseStatusStrg`` ``MORE`` / ``OK`` / ``NO MATCHES``. Results are whole recorded files
  that overlap the window, not clipped to it. The default XML namespace varies by firmware.
- ``GET /ISAPI/ContentMgmt/download`` with a ``<downloadRequest><playbackURI>`` XML *body*
  answers the raw file (Hikvision's ``IMKH`` header + MPEG program stream, not an MP4: remux it
  with :mod:`photobot.cctv.video`). Some devices refuse GET and want POST.
- Errors come as an HTTP status and a ``<ResponseStatus>`` body (``statusCode``,
  ``statusString``, ``subStatusCode``); some firmware sends that body with HTTP 200.

Semantics:

- Time. Every datetime this module takes or returns is timezone-aware UTC. In ``time_mode=
  "utc"`` the device's ``...Z`` times are UTC. In ``"local"`` (the default, because many NVRs
  work this way) the device reads and writes ``...Z`` times as its own *wall clock*: the window
  is sent as UTC + offset with a ``Z`` appended and results are converted back. The offset is
  given, or read once from ``GET /ISAPI/System/time``. Times with an explicit non-zero offset
  (``+07:00``) are always taken at their word.
- :meth:`IsapiClient.search` pages with one searchID, advancing the position by the number of
  items received, and stops on anything but ``MORE``. A device that does not advance (``MORE``
  with no items, or a page with nothing new) or goes on for ``max_pages`` pages ends the search
  with what was found and a warning, never a loop. Segments are de-duplicated, filtered to those
  overlapping ``[start, end)`` and sorted by start. If the device rejects the manual's search
  body with 400, the web UI's form (``trackList``, ``version="1.0"``, braced searchID) is tried
  once and kept for the client's lifetime.
- :meth:`IsapiClient.download` streams into ``dest`` chunk by chunk (never the whole file in
  memory), tries GET and falls back to POST once when the device says the method is not allowed
  (remembered afterwards), and checks the byte count against ``size=`` in the playback URI and
  the Content-Length. On any failure or cancellation the partial file is removed.
- Classification: a final 401 → :class:`NvrAuthError` (fatal: retrying only locks the account);
  other 4xx, and a ResponseStatus saying the request is wrong → :class:`NvrRequestError` (fatal
  for this request); connection errors, timeouts, 5xx, "device busy", malformed answers →
  :class:`NvrUnavailable` (transient); a download cut short → :class:`ShortDownload`
  (transient). The client never retries on its own; callers back off and retry transients.
- XML from the device is parsed with :mod:`xml.etree.ElementTree`, namespaces stripped, and a
  document that declares a DOCTYPE or ENTITY is refused (no entity expansion).
- The password never appears in a message or a log line. Environment proxies are ignored: an
  NVR is on the local network, and a booth's ``HTTP_PROXY`` must not route camera traffic.
"""

from __future__ import annotations

import logging
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

import httpx
import trio

from photobot.errors import PhotobotError, Unavailable

log = logging.getLogger(__name__)

TIME_PATH = "/ISAPI/System/time"
SEARCH_PATH = "/ISAPI/ContentMgmt/search"
DOWNLOAD_PATH = "/ISAPI/ContentMgmt/download"

#: Devices cap a page at 40 whatever ``maxResults`` says (WebSDK guide §5.2.7).
PAGE_SIZE = 40
#: 100 pages = 4000 files; a window that holds more is a caller bug or a device loop.
MAX_PAGES = 100
#: Bytes of an error body worth reading; a ResponseStatus is a few hundred.
MAX_ERROR_BODY = 64 * 1024
#: The device's clock may differ from ours by this much before we warn (clips shift by it).
SKEW_WARNING = timedelta(minutes=2)

XML_HEADERS = {"Content-Type": 'application/xml; charset="UTF-8"'}

TimeMode = Literal["utc", "local"]


# -- errors ------------------------------------------------------------------------------------


class IsapiError(PhotobotError):
    """The NVR failed or refused; ``status`` is the HTTP status (None without a response) and
    ``sub_status`` the ResponseStatus ``subStatusCode`` (e.g. ``badXmlContent``) when sent."""

    code = "nvr_error"

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        sub_status: str | None = None,
        status_string: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.sub_status = sub_status
        self.status_string = status_string


class NvrAuthError(IsapiError):
    """The NVR refused the username or password. Fatal: retrying only risks a lockout."""

    code = "nvr_auth_failed"


class NvrRequestError(IsapiError):
    """The NVR refused this request (400/403/404, a ResponseStatus error). Fatal for it."""

    code = "nvr_request_failed"


class NvrUnavailable(IsapiError, Unavailable):
    """The NVR cannot be reached or failed on its side (timeout, 5xx, busy). Transient."""

    code = "nvr_unavailable"


class ShortDownload(NvrUnavailable):
    """A download ended with fewer bytes than the NVR announced. Transient."""

    code = "nvr_short_download"


# -- values ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One recorded file on the NVR, as a search reports it (unclipped)."""

    track_id: int
    start: datetime  # aware UTC, after the time-mode conversion
    end: datetime  # aware UTC
    playback_uri: str  # unescaped, as the download request needs it (before XML-escaping)
    size: int | None  # bytes, from size= in the URI
    name: str | None  # from name= in the URI

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class DeviceTime:
    """``GET /ISAPI/System/time``.

    ``utc_offset`` is the standard-time offset from the POSIX ``time_zone`` (sign inverted:
    ``CST-7:00:00`` is UTC+7; a DST tail is ignored). ``local_offset`` is the offset written on
    ``localTime`` itself when there is one (it includes DST when in effect)."""

    local_time: datetime  # the device's wall clock, naive
    time_zone: str
    utc_offset: timedelta
    local_offset: timedelta | None = None

    @property
    def has_dst(self) -> bool:
        return _DST_TAIL.search(self.time_zone) is not None

    @property
    def wall_clock_offset(self) -> timedelta:
        """The offset the device's wall clock runs at now: ``localTime``'s own offset when the
        zone has DST and the two differ by a plausible DST shift (up to 2 h ahead), else the
        standard offset. Recordings from the other side of a DST change are off by the shift."""
        if (
            self.local_offset is not None
            and self.has_dst
            and timedelta(0) < self.local_offset - self.utc_offset <= timedelta(hours=2)
        ):
            return self.local_offset
        return self.utc_offset


# -- the client --------------------------------------------------------------------------------


class IsapiClient:
    """A Hikvision NVR reached over ISAPI; see the module docstring.

    Use as ``async with IsapiClient(...) as nvr:``; it owns one ``httpx.AsyncClient``. With
    ``time_mode="local"`` and ``utc_offset=None`` the offset is read from the device once, on
    the first search, and kept."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        time_mode: TimeMode = "local",
        utc_offset: timedelta | None = None,
        timeout: float = 10.0,
        max_pages: int = MAX_PAGES,
    ) -> None:
        if time_mode not in ("utc", "local"):
            raise ValueError(f"time_mode must be 'utc' or 'local', not {time_mode!r}")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the NVR URL must be http(s)://host[:port], not {base_url!r}")
        if parts.username or parts.password:
            # Credentials in the URL would end up in messages; they go in username/password.
            raise ValueError("put the NVR's username and password in the settings, not the URL")
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.time_mode: TimeMode = time_mode
        self.timeout = timeout
        self.max_pages = max(1, max_pages)
        self._password = password
        self._utc_offset = utc_offset
        self._offset_lock = trio.Lock()
        self._client: httpx.AsyncClient | None = None
        # Learned from the device and kept: which search body and download method it takes.
        self._legacy_search = False
        self._download_method = "GET"

    async def __aenter__(self) -> IsapiClient:
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=httpx.DigestAuth(self.username, self._password),
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"Accept": "application/xml, */*"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- API -----------------------------------------------------------------------------------

    async def device_time(self) -> DeviceTime:
        """The device's clock and time zone (``GET /ISAPI/System/time``)."""
        what = "reading the NVR's clock"
        response = await self._request("GET", TIME_PATH, what=what)
        root = self._xml(response.content, what)
        self._raise_for_response_status(root, what)
        local_text = _child_text(root, "localTime")
        zone = _child_text(root, "timeZone") or ""
        parsed = _parse_local_time(local_text) if local_text else None
        if parsed is None:
            raise NvrUnavailable(f"{what}: no usable <localTime> in the answer ({local_text!r})")
        local_time, local_offset = parsed
        offset = parse_posix_offset(zone)
        if offset is None:
            if local_offset is None:
                raise NvrRequestError(
                    f"{what}: cannot tell the NVR's time zone from <timeZone>{zone!r}; set its "
                    "UTC offset in the camera settings"
                )
            offset = local_offset
        device = DeviceTime(local_time, zone, offset, local_offset)
        skew = (local_time - device.wall_clock_offset) - datetime.now(UTC).replace(tzinfo=None)
        if abs(skew) > SKEW_WARNING:
            log.warning(
                "the NVR's clock is %+.0f s off ours: clips will be shifted or short until it "
                "is fixed (NTP on the NVR)",
                skew.total_seconds(),
            )
        return device

    async def search(self, track_id: int, start: datetime, end: datetime) -> list[Segment]:
        """The recorded files of ``track_id`` overlapping ``[start, end)`` (aware datetimes),
        unclipped, de-duplicated and sorted by start."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        if end <= start:
            return []
        offset = await self._wall_offset()
        start_text = _device_time_text(start, offset, round_up=False)
        end_text = _device_time_text(end, offset, round_up=True)
        search_id = str(uuid.uuid4()).upper()
        found: dict[tuple[object, ...], Segment] = {}
        position = 0
        for _page in range(self.max_pages):
            root = await self._search_page(search_id, track_id, start_text, end_text, position)
            status = (_child_text(root, "responseStatusStrg") or "").strip().upper()
            items = root.findall(".//searchMatchItem")
            new = 0
            for item in items:
                segment = _segment_from_item(item, track_id, offset)
                if segment is None:
                    continue
                key = _dedupe_key(segment)
                if key not in found:
                    found[key] = segment
                    new += 1
            if status != "MORE":
                break
            if not items or new == 0:
                log.warning(
                    "NVR search of track %s says MORE but the page at position %d brought "
                    "%s; stopping with %d file(s)",
                    track_id,
                    position,
                    "nothing new" if items else "no items",
                    len(found),
                )
                break
            position += len(items)
        else:
            log.warning(
                "NVR search of track %s still said MORE after %d pages; stopping with %d file(s)",
                track_id,
                self.max_pages,
                len(found),
            )
        overlapping = [s for s in found.values() if s.end > start and s.start < end]
        return sorted(overlapping, key=lambda s: (s.start, s.end, s.track_id, s.name or ""))

    async def download(
        self,
        segment: Segment,
        dest: Path,
        *,
        chunk_size: int = 1 << 20,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Download ``segment`` into ``dest`` (created or replaced); returns bytes written.

        ``on_progress(bytes_so_far)`` is called after each chunk is written. On any error or
        cancellation once writing began, ``dest`` is removed; a ``dest`` the attempt never
        opened (the NVR refused before sending a byte) is left as it was."""
        dest = Path(dest)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><downloadRequest>'
            f"<playbackURI>{escape(segment.playback_uri)}</playbackURI></downloadRequest>"
        ).encode()
        method = self._download_method
        try:
            return await self._download_once(method, body, segment, dest, chunk_size, on_progress)
        except NvrRequestError as exc:
            if method != "GET" or not _is_method_problem(exc):
                raise
            log.info(
                "the NVR refused a GET download (%s %s); trying POST",
                exc.status,
                exc.sub_status or "",
            )
        written = await self._download_once("POST", body, segment, dest, chunk_size, on_progress)
        self._download_method = "POST"
        return written

    # -- internals -----------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("use IsapiClient as `async with IsapiClient(...) as nvr`")
        return self._client

    async def _wall_offset(self) -> timedelta | None:
        """None in UTC mode, else the device's wall-clock offset (read once)."""
        if self.time_mode == "utc":
            return None
        if self._utc_offset is None:
            async with self._offset_lock:
                if self._utc_offset is None:
                    device = await self.device_time()
                    self._utc_offset = device.wall_clock_offset
                    log.info(
                        "NVR %s time zone %r: its wall clock is UTC%+.2g h",
                        self.base_url,
                        device.time_zone,
                        self._utc_offset.total_seconds() / 3600,
                    )
        return self._utc_offset

    async def _search_page(
        self, search_id: str, track_id: int, start_text: str, end_text: str, position: int
    ) -> ET.Element:
        what = f"searching track {track_id}"
        legacy = self._legacy_search
        while True:
            body = _search_body(search_id, track_id, start_text, end_text, position, legacy)
            try:
                response = await self._request("POST", SEARCH_PATH, what=what, content=body)
            except NvrRequestError as exc:
                if legacy or exc.status != 400:
                    raise
                # Some firmware (a DS-7616NXI on V4.84) wants the web UI's form of the body.
                log.info("the NVR refused the search body (%s); trying the web UI's form", exc)
                legacy = True
                continue
            root = self._xml(response.content, what)
            self._raise_for_response_status(root, what)
            if legacy and not self._legacy_search:
                self._legacy_search = True
            return root

    async def _request(
        self, method: str, path: str, *, what: str, content: bytes | None = None
    ) -> httpx.Response:
        try:
            response = await self._http().request(
                method, path, content=content, headers=XML_HEADERS if content else None
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None
        if not response.is_success:
            raise self._http_error(response.status_code, response.content, what)
        return response

    def _unreachable(self, exc: httpx.HTTPError, what: str) -> NvrUnavailable:
        """A transport failure (no answer in time, refused, reset) as the transient error."""
        if isinstance(exc, httpx.TimeoutException):
            return NvrUnavailable(
                f"{what}: the NVR at {self.base_url} did not answer within {self.timeout:g} s "
                f"({type(exc).__name__})"
            )
        return NvrUnavailable(
            f"{what}: the NVR at {self.base_url} is unreachable ({type(exc).__name__})"
        )

    async def _download_once(
        self,
        method: str,
        body: bytes,
        segment: Segment,
        dest: Path,
        chunk_size: int,
        on_progress: Callable[[int], None] | None,
    ) -> int:
        what = f"downloading {segment.name or 'a recording'} (track {segment.track_id})"
        try:
            async with self._http().stream(
                method, DOWNLOAD_PATH, content=body, headers=XML_HEADERS
            ) as response:
                if not response.is_success:
                    error_body = await _read_capped(response)
                    raise self._http_error(response.status_code, error_body, what)
                if "xml" in response.headers.get("content-type", "").lower():
                    # A ResponseStatus sent with HTTP 200 instead of the file.
                    error_body = await _read_capped(response)
                    root = self._xml(error_body, what)
                    self._raise_for_response_status(root, what)
                    raise NvrUnavailable(f"{what}: the NVR answered XML instead of the file")
                declared = _int_or_none(response.headers.get("content-length"))
                written = 0
                try:
                    async with await trio.open_file(dest, "wb") as file:
                        try:
                            async for chunk in response.aiter_bytes(chunk_size):
                                await file.write(chunk)
                                written += len(chunk)
                                if on_progress is not None:
                                    on_progress(written)
                        except httpx.HTTPError as exc:
                            expected = declared or segment.size
                            raise ShortDownload(
                                f"{what}: the transfer broke off after {written} of "
                                f"{expected if expected is not None else '?'} bytes "
                                f"({type(exc).__name__})"
                            ) from None
                    _check_length(what, written, declared, segment.size)
                except BaseException:
                    # Includes trio.Cancelled: a partial recording must never look like a whole
                    # one. Only a file this attempt opened is removed, never one it did not touch.
                    _remove_partial(dest)
                    raise
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, what) from None
        return written

    def _xml(self, body: bytes, what: str) -> ET.Element:
        try:
            return parse_xml(body)
        except _HostileXml:
            raise NvrRequestError(
                f"{what}: the NVR's answer declares a DOCTYPE or ENTITY; refused"
            ) from None
        except ET.ParseError as exc:
            raise NvrUnavailable(f"{what}: the NVR answered malformed XML ({exc})") from None

    def _raise_for_response_status(self, root: ET.Element, what: str) -> None:
        """Some firmware answers an error as HTTP 200 with a ResponseStatus body."""
        if root.tag != "ResponseStatus":
            return
        status = _parse_response_status(root)
        if status.code in (None, 1):  # 1 = OK
            raise NvrUnavailable(f"{what}: the NVR answered a bare ResponseStatus (no result)")
        detail = self._scrub(status.describe(200))
        kwargs = {"status": 200, "sub_status": status.sub, "status_string": status.string}
        if status.code in (2, 3, 7):  # Device Busy, Device Error, Reboot Required
            raise NvrUnavailable(f"{what}: {detail}", **kwargs)
        raise NvrRequestError(f"{what}: {detail}", **kwargs)

    def _http_error(self, http_status: int, body: bytes, what: str) -> IsapiError:
        status = _ResponseStatus()
        try:
            root = parse_xml(body) if body.lstrip()[:1] == b"<" else None
        except (_HostileXml, ET.ParseError):
            root = None
        if root is not None and root.tag == "ResponseStatus":
            status = _parse_response_status(root)
        detail = self._scrub(status.describe(http_status))
        kwargs = {"status": http_status, "sub_status": status.sub, "status_string": status.string}
        if http_status == 401:
            return NvrAuthError(
                f"{what}: the NVR refused the username or password (user {self.username!r}; "
                f"{detail})",
                **kwargs,
            )
        if http_status >= 500 or http_status in (408, 429):
            return NvrUnavailable(f"{what}: {detail}", **kwargs)
        return NvrRequestError(f"{what}: {detail}", **kwargs)

    def _scrub(self, text: str) -> str:
        if self._password:
            text = text.replace(self._password, "***")
        return text


# -- XML ---------------------------------------------------------------------------------------


class _HostileXml(ValueError):
    """A DOCTYPE or ENTITY declaration: refused before parsing (no entity expansion)."""


_DECLARATION = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xml(body: bytes) -> ET.Element:
    """Parse ``body`` with namespaces stripped from every tag (the default namespace varies by
    firmware). Raises ``ET.ParseError``, or ``ValueError`` for a DOCTYPE/ENTITY declaration."""
    if _DECLARATION.search(body):
        raise _HostileXml("DOCTYPE/ENTITY declarations are not accepted")
    root = ET.fromstring(body)
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.rsplit("}", 1)[1]
    return root


def _child_text(root: ET.Element, path: str) -> str | None:
    element = root.find(path)
    if element is None or element.text is None:
        return None
    return element.text.strip()


@dataclass(frozen=True)
class _ResponseStatus:
    code: int | None = None
    string: str | None = None
    sub: str | None = None

    def describe(self, http_status: int) -> str:
        text = f"NVR said {http_status}"
        if self.string:
            text += f" {self.string}"
        if self.sub:
            text += f" ({self.sub})"
        return text


def _parse_response_status(root: ET.Element) -> _ResponseStatus:
    return _ResponseStatus(
        code=_int_or_none(_child_text(root, "statusCode")),
        string=_child_text(root, "statusString") or None,
        sub=_child_text(root, "subStatusCode") or None,
    )


def _search_body(
    search_id: str, track_id: int, start: str, end: str, position: int, legacy: bool
) -> bytes:
    """The manual's ``CMSearchDescription``, or (``legacy``) the device web UI's form."""
    if legacy:
        head = '<CMSearchDescription version="1.0">'
        sid = "{" + search_id.lower() + "}"
        tracks = f"<trackList><trackID>{track_id}</trackID></trackList>"
    else:
        head = "<CMSearchDescription>"
        sid = search_id
        tracks = f"<trackIDList><trackID>{track_id}</trackID></trackIDList>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"{head}<searchID>{sid}</searchID>{tracks}"
        f"<timeSpanList><timeSpan><startTime>{start}</startTime><endTime>{end}</endTime>"
        "</timeSpan></timeSpanList>"
        f"<maxResults>{PAGE_SIZE}</maxResults>"
        # Misspelled on purpose: it is the element's real name.
        f"<searchResultPostion>{position}</searchResultPostion>"
        "<metadataList><metadataDescriptor>//recordType.meta.std-cgi.com</metadataDescriptor>"
        "</metadataList></CMSearchDescription>"
    ).encode()


def _segment_from_item(
    item: ET.Element, default_track: int, offset: timedelta | None
) -> Segment | None:
    uri = _child_text(item, ".//playbackURI") or ""
    params = _uri_params(uri)
    # The timeSpan is authoritative; the URI's times are the fallback.
    start_text = _child_text(item, "timeSpan/startTime") or params.get("starttime")
    end_text = _child_text(item, "timeSpan/endTime") or params.get("endtime")
    start = parse_device_time(start_text, offset) if start_text else None
    end = parse_device_time(end_text, offset) if end_text else None
    if start is None or end is None or end < start or not uri:
        log.warning(
            "NVR search returned an unusable item (start %r, end %r, uri %r); skipped",
            start_text,
            end_text,
            bool(uri),
        )
        return None
    track = _int_or_none(_child_text(item, "trackID"))
    return Segment(
        track_id=track if track is not None else default_track,
        start=start,
        end=end,
        playback_uri=uri,
        size=_int_or_none(params.get("size")),
        name=params.get("name") or None,
    )


def _dedupe_key(segment: Segment) -> tuple[object, ...]:
    # A name is the file on disk; with its times it is one segment however the URI is spelled.
    if segment.name:
        return (segment.track_id, segment.name, segment.start, segment.end)
    return (segment.playback_uri,)


def _uri_params(uri: str) -> dict[str, str]:
    query = urlsplit(uri).query
    return {k.lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}


def _is_method_problem(exc: IsapiError) -> bool:
    """Whether a refused GET download is worth one POST (qb60#5: 403 methodNotAllowed)."""
    sub = (exc.sub_status or "").lower()
    if exc.status == 405:
        return True
    if exc.status == 403:
        return sub in ("", "methodnotallowed", "notsupport", "invalidoperation")
    if exc.status == 400:
        # A 400 for our XML (badXmlContent) must not be retried; a bare 400 from something
        # that dislikes GET bodies, or one naming the method, may be.
        return sub in ("", "methodnotallowed") or "method" in (exc.status_string or "").lower()
    return False


async def _read_capped(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass  # the status alone still says what happened
    return b"".join(chunks)[:MAX_ERROR_BODY]


def _check_length(what: str, written: int, declared: int | None, size: int | None) -> None:
    for expected, source in ((declared, "Content-Length"), (size, "size= in the playback URI")):
        if expected is not None and written < expected:
            raise ShortDownload(f"{what}: got {written} of {expected} bytes ({source})")


def _remove_partial(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove the partial download %s: %s", path, exc)


# -- time --------------------------------------------------------------------------------------

_COMPACT_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(Z?)$")
_POSIX_STD = re.compile(
    r"^\s*(?:<[^>]*>|[A-Za-z]{3,})([+-]?)(\d{1,2})(?::(\d{1,2}))?(?::(\d{1,2}))?"
)
_DST_TAIL = re.compile(r"^\s*(?:<[^>]*>|[A-Za-z]{3,})[+-]?\d[\d:]*\s*(?:<[^>]*>|[A-Za-z]{3,})")


def parse_posix_offset(zone: str) -> timedelta | None:
    """The standard-time UTC offset of a POSIX TZ string, sign inverted as POSIX has it:
    ``CST-7:00:00`` → +7 h, ``EST5EDT,...`` → -5 h. The DST part is ignored. None if unreadable.
    """
    match = _POSIX_STD.match(zone or "")
    if match is None:
        return None
    sign, hours, minutes, seconds = match.groups()
    h, m, s = int(hours), int(minutes or 0), int(seconds or 0)
    if h > 24 or m > 59 or s > 59:
        return None
    west = timedelta(hours=h, minutes=m, seconds=s)
    return west if sign == "-" else -west


def _parse_local_time(text: str) -> tuple[datetime, timedelta | None] | None:
    """``localTime`` as (naive wall clock, its written offset or None)."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        compact = _COMPACT_TIME.match(text.strip())
        if compact is None:
            return None
        return datetime(*(int(g) for g in compact.groups()[:6])), None
    return parsed.replace(tzinfo=None), parsed.utcoffset()


def parse_device_time(text: str, offset: timedelta | None) -> datetime | None:
    """A device timestamp (``2021-08-18T15:18:15Z``, ``20210818T151815Z``, with an explicit
    offset, or bare) as aware UTC. ``offset`` None means ``Z``/bare times are UTC; otherwise
    they are the device's wall clock at that offset. An explicit non-zero offset always wins."""
    text = text.strip()
    compact = _COMPACT_TIME.match(text)
    if compact is not None:
        naive = datetime(*(int(g) for g in compact.groups()[:6]))
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        explicit = parsed.utcoffset()
        if explicit:  # "+07:00" says what it means; "Z" / "+00:00" / bare follow the mode
            return parsed.astimezone(UTC)
        naive = parsed.replace(tzinfo=None)
    if offset is None:
        return naive.replace(tzinfo=UTC)
    return (naive - offset).replace(tzinfo=UTC)


def _device_time_text(when: datetime, offset: timedelta | None, *, round_up: bool) -> str:
    """``when`` as the device reads it: UTC, or wall clock (UTC + offset), with a ``Z``."""
    utc = when.astimezone(UTC)
    whole = utc.replace(microsecond=0)
    if round_up and whole != utc:
        whole += timedelta(seconds=1)  # never cut the window short
    wall = whole if offset is None else whole + offset
    return wall.strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_aware(when: datetime, name: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, not {when!r}")


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None
