"""The live gallery's queries: an event's photos newest first, likes, comments, a guest's results.

Pages and cursors
-----------------
Photos are ordered newest first by ``(created_at, id)`` (``id`` breaks ties) and paged with a
keyset :class:`Cursor` — never page numbers, so a page costs the same at photo 50 and at photo
100 000 (index ``photos_event_keyset``). :func:`page` answers three questions:

- **first page** (no cursor): the newest ``limit`` photos.
- **before** a cursor (infinite scroll): the ``limit`` photos just older than it, newest first.
  ``Page.next_before`` is the cursor for the following page, or None when there is none.
- **since** a cursor (catching up): photos NEWER than it, in chunks from the oldest missing one
  up. The chunk holds the ``limit`` photos immediately newer than the cursor (newest first, so
  the page can prepend it as is); ``Page.has_more_since`` says more are newer still, and
  ``Page.newest`` is the cursor to ask with next. A client that missed 500 photos therefore gets
  exactly those 500, in order, in ``ceil(500 / limit)`` calls, each prepended on top of the
  previous; an empty answer leaves ``newest`` at the cursor it was given.

Photos being published while a client reads
-------------------------------------------
``created_at`` is taken when the INSERT runs (``clock_timestamp()``), but rows become visible when
their transaction commits, and two writers can commit in the other order. A reader that saw the
later photo first would move its cursor past the earlier one and never receive it. So the first
page and every ``since`` chunk only show photos older than a *visibility horizon*: the start of
the oldest transaction still holding a write lock on ``photos`` (read from ``pg_locks`` before
the page's own snapshot is taken), capped at :data:`HORIZON_CAP` seconds back. With no writer in
flight the horizon is the query's own start time, so nothing is delayed; a photo whose
transaction is still open simply comes in the next poll. This keeps "every photo exactly once"
true under concurrent publishing, provided ``created_at`` is always the database default (an
INSERT that supplies an older ``created_at`` would defeat any cursor).

Privacy of originals
--------------------
A photo's original is guest-safe only when it is our pipeline's output (``source = 'job'``: the
local provider encodes without any metadata; ComfyUI and kie.ai return newly generated images,
not the camera file). An operator's upload or a hot-folder file
is the photographer's camera file and may carry GPS, so guests never get it: URL fallbacks stop
at the derivatives (which the optimizer strips), ``urls.original`` is None, and a download of
``original`` serves the optimized copy. Until its derivatives exist such a photo has no image URL
at all (``ready`` False); the page shows a placeholder until ``photo:updated``.

Every function crosses the database bridge once (:meth:`Database.run`).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import trio

from photobot import jobs
from photobot.db import Database, Record
from photobot.errors import InvalidInput, NotFound
from photobot.events import Event
from photobot.storage import Storage
from photobot.storage.base import MAX_URL_TTL, validate_ttl

#: Photos per page when the client does not say, and the most it may ask for.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: The furthest back (seconds) an open write transaction on ``photos`` may hold the horizon.
HORIZON_CAP = 10.0
#: A guest's page keeps working this long after the session's TTL (or its end).
GUEST_PAGE_GRACE = timedelta(days=7)
#: The guest page lists at most this many photos and jobs (newest first).
GUEST_PHOTO_LIMIT = 200
GUEST_JOB_LIMIT = 100
#: Comment rules: body 1-500 characters after trimming, author name at most 60.
COMMENT_MAX = 500
AUTHOR_MAX = 60
DEFAULT_COMMENT_LIMIT = 20
MAX_COMMENT_LIMIT = 100

#: The ``X-Device-Id`` a guest's page keeps in localStorage: 8-128 of ``[A-Za-z0-9_-]``.
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{8,128}")

Variant = Literal["small", "medium", "large", "optimized", "original"]
VARIANTS: tuple[Variant, ...] = ("small", "medium", "large", "optimized", "original")
#: What each URL falls back to while a derivative is missing: the same size, then the next
#: larger (sharper), then smaller ones; the original last and only when guest-safe.
FALLBACK: dict[Variant, tuple[Variant, ...]] = {
    "small": ("small", "medium", "large", "optimized", "original"),
    "medium": ("medium", "large", "optimized", "small", "original"),
    "large": ("large", "optimized", "medium", "small", "original"),
    "optimized": ("optimized", "large", "medium", "small", "original"),
    "original": ("original",),
}
DownloadVariant = Literal["optimized", "original"]

_CURSOR_MAX = 200
# Bidi overrides/isolates would let text read as something else (as for guest names).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# -- cursors -------------------------------------------------------------------------------------


#: Larger than every photo id: a cursor at an instant with this id is past all its photos.
_LAST_ID = uuid.UUID(int=(1 << 128) - 1)


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in an event's newest-first order: ``(created_at, id)``.

    Encoded opaquely as base64url (no padding) of ``"<created_at ISO 8601>|<uuid>"``; clients
    must not build or parse it.
    """

    created_at: datetime
    id: uuid.UUID

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def after_instant(cls, text: str) -> Cursor | None:
        """Seed 004's ``since``: the ``createdAt`` of the newest photo a client has, as ISO 8601
        with an offset (``2026-12-07T20:01:02.123456+07:00``, ``…Z``) or as milliseconds since
        the epoch. The cursor just past every photo made at that instant (the largest id), so
        ``since`` gives the photos made strictly later. ``None`` when ``text`` is not a time
        at all (it may be one of our cursors); a time without an offset is 422."""
        if text.isdigit() and len(text) <= 15:
            try:
                at = datetime.fromtimestamp(int(text) / 1000, UTC)
            except (ValueError, OverflowError, OSError):
                raise InvalidInput("since is not a valid time", code="invalid_cursor") from None
            return cls(at, _LAST_ID)
        if ":" not in text:  # base64url never holds one; every ISO time does
            return None
        try:
            # A '+' offset that was not percent-encoded arrives as a space; RFC 3339 allows
            # a lower-case 't' and 'z'.
            at = datetime.fromisoformat(text.upper().replace(" ", "+").replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise InvalidInput(
                    "since needs a time zone (…Z or …+07:00), as createdAt has",
                    code="invalid_cursor",
                )
            # Year 1 or 9999 with an offset falls outside what a datetime holds once in UTC.
            at = at.astimezone(UTC)
        except (ValueError, OverflowError):
            raise InvalidInput(
                "since is not a valid time or cursor", code="invalid_cursor"
            ) from None
        return cls(at, _LAST_ID)

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor ``text`` encodes; anything else is 422 ``invalid_cursor``."""
        try:
            if not isinstance(text, str) or not 0 < len(text) <= _CURSOR_MAX:
                raise ValueError("length")
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            created, photo_id = raw.split("|", 1)
            at = datetime.fromisoformat(created)
            if at.tzinfo is None:
                raise ValueError("naive time")
            return cls(at.astimezone(UTC), uuid.UUID(photo_id))
        except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
            raise InvalidInput("the cursor is not valid", code="invalid_cursor") from None


# -- photos ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryPhoto:
    """A photo as the gallery shows it, with its like and comment counts."""

    id: str
    event_id: str
    session_id: str | None
    job_id: str | None
    source: str
    original_key: str
    optimized_key: str | None
    small_key: str | None
    medium_key: str | None
    large_key: str | None
    width: int | None
    height: int | None
    created_at: datetime
    derivatives_ready: bool
    likes: int
    comments: int
    liked_by_me: bool

    @classmethod
    def from_record(cls, r: Record) -> GalleryPhoto:
        return cls(
            id=str(r["id"]),
            event_id=str(r["event_id"]),
            session_id=None if r["session_id"] is None else str(r["session_id"]),
            job_id=None if r["job_id"] is None else str(r["job_id"]),
            source=r["source"],
            original_key=r["original_key"],
            optimized_key=r["optimized_key"],
            small_key=r["thumb_small_key"],
            medium_key=r["thumb_medium_key"],
            large_key=r["thumb_large_key"],
            width=r["width"],
            height=r["height"],
            created_at=r["created_at"],
            derivatives_ready=r["derivatives_ready_at"] is not None,
            likes=r["likes"],
            comments=r["comments"],
            liked_by_me=r["liked_by_me"],
        )

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, uuid.UUID(self.id))

    @property
    def original_is_guest_safe(self) -> bool:
        """Our pipeline's output (no metadata), not a photographer's camera file."""
        return self.source == "job"

    def stored_key(self, variant: Variant) -> str | None:
        """The key stored for exactly this variant (no fallback); None if guests may not have it."""
        if variant == "original":
            return self.original_key if self.original_is_guest_safe else None
        return {
            "small": self.small_key,
            "medium": self.medium_key,
            "large": self.large_key,
            "optimized": self.optimized_key,
        }[variant]

    def key_for(self, variant: Variant) -> str | None:
        """The key a guest sees for ``variant``: the first of :data:`FALLBACK` that exists."""
        for candidate in FALLBACK[variant]:
            key = self.stored_key(candidate)
            if key:
                return key
        return None

    def url_keys(self) -> dict[Variant, str | None]:
        return {v: self.key_for(v) for v in VARIANTS}

    def download(self, variant: DownloadVariant) -> tuple[str, Variant] | None:
        """``(key, variant served)`` for a guest's download, or None while nothing is ready.

        ``optimized``: the optimized copy, or the guest-safe original while it is not made yet.
        ``original``: the original when guest-safe, else the optimized copy (camera files may
        carry GPS; see the module docstring).
        """
        order: tuple[Variant, ...] = (
            ("original", "optimized") if variant == "original" else ("optimized", "original")
        )
        for candidate in order:
            key = self.stored_key(candidate)
            if key:
                return key, candidate
        return None


@dataclass(frozen=True)
class Page:
    """One answer of :func:`page`; ``photos`` newest first (see the module docstring)."""

    event: Event
    photos: list[GalleryPhoto]
    #: Cursor for the next older page (``before``), None when there is none (or for ``since``).
    next_before: Cursor | None
    #: Cursor to pass as ``since`` next time (the newest photo shown, or the ``since`` given
    #: when nothing is new); None for ``before`` pages and for an empty first page.
    newest: Cursor | None
    #: ``since`` only: photos newer than this chunk exist; ask again with ``newest``.
    has_more_since: bool


_PHOTO_COLUMNS = (
    "id, event_id, session_id, job_id, source, original_key, optimized_key, thumb_small_key,"
    " thumb_medium_key, thumb_large_key, width, height, created_at, derivatives_ready_at"
)


def _with_counts(inner: str, device_param: str) -> str:
    """Wrap a photo row source with like/comment counts, computed per returned row only."""
    return f"""
select p.*,
       (select count(*) from photo_likes l where l.photo_id = p.id) as likes,
       (select count(*) from photo_comments c
         where c.photo_id = p.id and c.deleted_at is null) as comments,
       exists (select 1 from photo_likes l
                where l.photo_id = p.id and l.device_id = {device_param}) as liked_by_me
  from ({inner}) p
 order by p.created_at desc, p.id desc"""


_EVENT_PHOTOS = f"select {_PHOTO_COLUMNS} from photos where event_id = $1 and deleted_at is null"

#: $1 event, $2 device, $3 limit, $4 horizon.
NEWEST_SQL = _with_counts(
    f"{_EVENT_PHOTOS} and created_at < $4 order by created_at desc, id desc limit $3", "$2"
)
#: $1 event, $2 device, $3 limit, $4/$5 cursor.
BEFORE_SQL = _with_counts(
    f"{_EVENT_PHOTOS} and (created_at, id) < ($4, $5) order by created_at desc, id desc limit $3",
    "$2",
)
#: $1 event, $2 device, $3 limit, $4/$5 cursor, $6 horizon. Oldest missing first.
SINCE_SQL = _with_counts(
    f"{_EVENT_PHOTOS} and (created_at, id) > ($4, $5) and created_at < $6"
    " order by created_at asc, id asc limit $3",
    "$2",
)
#: $1 photo, $2 device, $3 event.
ONE_SQL = _with_counts(
    f"select {_PHOTO_COLUMNS} from photos where id = $1 and event_id = $3 and deleted_at is null",
    "$2",
)
#: $1 session, $2 device, $3 limit.
SESSION_SQL = _with_counts(
    f"select {_PHOTO_COLUMNS} from photos where session_id = $1 and deleted_at is null"
    " order by created_at desc, id desc limit $3",
    "$2",
)


def _horizon(cap_param: str) -> str:
    """The visibility horizon (see the module docstring) as a scalar subquery; ``cap_param``
    holds :data:`HORIZON_CAP`. It must run in a statement BEFORE the page query, so that the
    page's snapshot is taken after the lock table was read."""
    cap = f"make_interval(secs => {cap_param})"
    return f"""(select least(now_, greatest(now_ - {cap}, oldest))
  from (select statement_timestamp() as now_) t,
       lateral (
         select coalesce(min(coalesce(a.xact_start, t.now_ - {cap})), t.now_) as oldest
           from pg_locks l
           left join pg_stat_activity a on a.pid = l.pid
          where l.locktype = 'relation' and l.relation = 'photos'::regclass
            and l.mode = 'RowExclusiveLock' and l.pid <> pg_backend_pid()
            and l.database = (select oid from pg_database where datname = current_database())
       ) w)"""


#: The horizon alone. $1: HORIZON_CAP.
HORIZON_SQL = f"select {_horizon('$1')}"


def validate_limit(value: Any, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    """A page size from a query string: ``default`` when absent, else 1..``maximum`` or 422."""
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise InvalidInput("limit must be a whole number", code="invalid_limit") from None
    if not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}", code="invalid_limit")
    return limit


def validate_device_id(value: Any) -> str:
    """An ``X-Device-Id``: 8-128 of ``[A-Za-z0-9_-]``, else 422 ``invalid_device_id``."""
    if not isinstance(value, str) or not DEVICE_ID_RE.fullmatch(value):
        raise InvalidInput(
            "X-Device-Id must be 8-128 letters, digits, '_' or '-'", code="invalid_device_id"
        )
    return value


def parse_photo_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound("no such photo", code="photo_not_found") from None


def _event_lookup(ref: str | uuid.UUID) -> tuple[str, str | uuid.UUID]:
    """``(column, value)`` finding an event by uuid or slug, as :func:`resolve_event` does."""
    if isinstance(ref, uuid.UUID):
        return "id", ref
    if not isinstance(ref, str) or not ref or len(ref) > 64:
        raise NotFound("no such event", code="event_not_found")
    try:
        return "id", uuid.UUID(ref)
    except ValueError:
        return "slug", ref


_EVENT_COLUMNS = "id, slug, name, visibility, settings, created_at, updated_at"
#: By column: the event alone ($1), or with the horizon (cap $2) in the same statement, so a
#: first or since page costs one round trip before the page query.
_EVENT_SQL = {c: f"select {_EVENT_COLUMNS} from events where {c} = $1" for c in ("id", "slug")}
_EVENT_HORIZON_SQL = {
    c: f"select {_EVENT_COLUMNS}, {_horizon('$2')} as horizon from events where {c} = $1"
    for c in ("id", "slug")
}


def _public(row: Record | None) -> Event:
    if row is None:
        raise NotFound("no such event", code="event_not_found")
    event = Event.from_record(row)
    if event.visibility != "public":
        raise NotFound("this event's gallery is private", code="gallery_private")
    return event


async def public_event(db: Database, ref: str | uuid.UUID) -> Event:
    """The event (uuid or slug) if its gallery is public; 404 ``event_not_found`` or
    ``gallery_private`` otherwise."""
    column, value = _event_lookup(ref)
    return _public(await db.fetchrow(_EVENT_SQL[column], value))


async def page(
    db: Database,
    event_ref: str | uuid.UUID,
    *,
    limit: int = DEFAULT_LIMIT,
    since: Cursor | None = None,
    before: Cursor | None = None,
    device_id: str | None = None,
) -> Page:
    """One page of a public event's gallery (first, ``before`` or ``since``; see the module
    docstring), the event looked up in the same crossing (:func:`public_event`'s 404s)."""
    if since is not None and before is not None:
        raise InvalidInput("pass either since or before, not both", code="invalid_input")
    column, event_value = _event_lookup(event_ref)

    async def on_asyncio(conn: asyncpg.Connection) -> tuple[Record | None, list[Record]]:
        if before is not None:
            event_row = await conn.fetchrow(_EVENT_SQL[column], event_value)
        else:
            event_row = await conn.fetchrow(_EVENT_HORIZON_SQL[column], event_value, HORIZON_CAP)
        if event_row is None or event_row["visibility"] != "public":
            return event_row, []
        event_id = event_row["id"]
        if before is not None:
            rows = await conn.fetch(
                BEFORE_SQL, event_id, device_id, limit + 1, before.created_at, before.id
            )
            return event_row, rows
        horizon = event_row["horizon"]
        if since is None:
            rows = await conn.fetch(NEWEST_SQL, event_id, device_id, limit + 1, horizon)
        else:
            rows = await conn.fetch(
                SINCE_SQL, event_id, device_id, limit + 1, since.created_at, since.id, horizon
            )
        return event_row, rows

    event_row, rows = await db.run(on_asyncio, transaction=False)
    event = _public(event_row)
    photos = [GalleryPhoto.from_record(r) for r in rows]
    if since is not None:
        more = len(photos) > limit
        if more:
            photos = photos[1:]  # the extra row is the newest of the chunk + 1
        newest = photos[0].cursor if photos else since
        return Page(event, photos, next_before=None, newest=newest, has_more_since=more)
    more = len(photos) > limit
    photos = photos[:limit]
    return Page(
        event,
        photos,
        next_before=photos[-1].cursor if more else None,
        newest=(photos[0].cursor if photos else None) if before is None else None,
        has_more_since=False,
    )


async def get_photo(
    db: Database, event_ref: str | uuid.UUID, photo_id: str, *, device_id: str | None = None
) -> tuple[Event, GalleryPhoto]:
    """A public event and one of its photos (not deleted), in one crossing; 404
    ``photo_not_found`` or :func:`public_event`'s."""
    pid = parse_photo_id(photo_id)
    column, event_value = _event_lookup(event_ref)

    async def on_asyncio(conn: asyncpg.Connection) -> tuple[Record | None, Record | None]:
        event_row = await conn.fetchrow(_EVENT_SQL[column], event_value)
        if event_row is None or event_row["visibility"] != "public":
            return event_row, None
        return event_row, await conn.fetchrow(ONE_SQL, pid, device_id, event_row["id"])

    event_row, row = await db.run(on_asyncio, transaction=False)
    event = _public(event_row)
    if row is None:
        raise NotFound("no such photo", code="photo_not_found")
    return event, GalleryPhoto.from_record(row)


# -- a guest's own page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestResults:
    """A guest's photos and jobs, newest first."""

    photos: list[GalleryPhoto]
    jobs: list[jobs.Job]


def guest_page_open(expires_at: datetime, ended_at: datetime | None, now: datetime) -> bool:
    """Whether a session's page still answers: until :data:`GUEST_PAGE_GRACE` after it expired
    (or ended, if that came first)."""
    closed = expires_at if ended_at is None else min(expires_at, ended_at)
    return now < closed + GUEST_PAGE_GRACE


async def guest_results(
    db: Database, session_id: uuid.UUID, *, device_id: str | None = None
) -> GuestResults:
    """The session's newest :data:`GUEST_PHOTO_LIMIT` photos and :data:`GUEST_JOB_LIMIT` jobs."""

    async def on_asyncio(conn: asyncpg.Connection) -> tuple[list[Record], list[Record]]:
        photo_rows = await conn.fetch(SESSION_SQL, session_id, device_id, GUEST_PHOTO_LIMIT)
        job_rows = await conn.fetch(
            "select * from jobs where session_id = $1 order by created_at desc, id desc limit $2",
            session_id,
            GUEST_JOB_LIMIT,
        )
        return photo_rows, job_rows

    photo_rows, job_rows = await db.run(on_asyncio, transaction=False)
    return GuestResults(
        photos=[GalleryPhoto.from_record(r) for r in photo_rows],
        jobs=[jobs.Job.from_record(r) for r in job_rows],
    )


async def get_session_photo(db: Database, session_id: uuid.UUID, photo_id: str) -> GalleryPhoto:
    """One of the session's photos (not deleted), or 404 ``photo_not_found``."""
    row = await db.fetchrow(
        _with_counts(
            f"select {_PHOTO_COLUMNS} from photos"
            " where id = $1 and session_id = $3 and deleted_at is null",
            "$2",
        ),
        parse_photo_id(photo_id),
        None,
        session_id,
    )
    if row is None:
        raise NotFound("no such photo", code="photo_not_found")
    return GalleryPhoto.from_record(row)


# -- likes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LikeState:
    photo_id: str
    likes: int
    liked: bool


_LIKE_SQL = """
with target as (select id from photos where id = $1 and event_id = $2 and deleted_at is null),
     ins as (insert into photo_likes (photo_id, device_id) select id, $3 from target
             on conflict do nothing returning 1)
select (select count(*) from target) as found,
       (select count(*) from photo_likes where photo_id = $1) + (select count(*) from ins) as likes
"""
_UNLIKE_SQL = """
with target as (select id from photos where id = $1 and event_id = $2 and deleted_at is null),
     del as (delete from photo_likes where photo_id = (select id from target) and device_id = $3
             returning 1)
select (select count(*) from target) as found,
       (select count(*) from photo_likes where photo_id = $1) - (select count(*) from del) as likes
"""


async def set_like(
    db: Database, event_id: uuid.UUID, photo_id: str, device_id: str, *, liked: bool
) -> LikeState:
    """Like (``liked=True``) or unlike a photo as one device; idempotent both ways.

    One like per device and photo (the primary key). Returns the count after the change.
    Unknown, deleted or another event's photo → 404 ``photo_not_found``.
    """
    pid = parse_photo_id(photo_id)
    row = await db.fetchrow(_LIKE_SQL if liked else _UNLIKE_SQL, pid, event_id, device_id)
    if row is None or not row["found"]:
        raise NotFound("no such photo", code="photo_not_found")
    return LikeState(str(pid), int(row["likes"]), liked)


# -- comments --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comment:
    """A guest's comment: plain text, stored and returned as typed (never HTML)."""

    id: str
    photo_id: str
    device_id: str
    author_name: str | None
    body: str
    created_at: datetime

    @classmethod
    def from_record(cls, r: Record) -> Comment:
        return cls(
            id=str(r["id"]),
            photo_id=str(r["photo_id"]),
            device_id=r["device_id"],
            author_name=r["author_name"],
            body=r["body"],
            created_at=r["created_at"],
        )

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.created_at, uuid.UUID(self.id))


def _clean_text(value: str, field: str, *, allow_newlines: bool) -> str:
    text = value.replace("\r\n", "\n").strip() if allow_newlines else value.strip()
    for ch in text:
        if ch == "\n" and allow_newlines:
            continue
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS:
            raise InvalidInput(
                f"{field} must not contain control characters", code="invalid_comment"
            )
    return text


def validate_comment(body: Any, author_name: Any = None) -> tuple[str, str | None]:
    """``(body, author_name)`` trimmed and checked, else 422 ``invalid_comment``.

    Body: a string of 1-:data:`COMMENT_MAX` characters after trimming; line breaks are kept
    (``\\r\\n`` becomes ``\\n``), every other control character, lone surrogate and bidi
    override is refused. Author name: optional (absent, null or blank → None), one line, at
    most :data:`AUTHOR_MAX` characters. The text is never interpreted: ``<b>`` stays ``<b>``.
    """
    if not isinstance(body, str):
        raise InvalidInput("body must be a string", code="invalid_comment")
    text = _clean_text(body, "body", allow_newlines=True)
    if not text:
        raise InvalidInput("body must not be empty", code="invalid_comment")
    if len(text) > COMMENT_MAX:
        raise InvalidInput(f"body must be at most {COMMENT_MAX} characters", code="invalid_comment")
    if author_name is None:
        return text, None
    if not isinstance(author_name, str):
        raise InvalidInput("authorName must be a string", code="invalid_comment")
    author = _clean_text(author_name, "authorName", allow_newlines=False)
    if len(author) > AUTHOR_MAX:
        raise InvalidInput(
            f"authorName must be at most {AUTHOR_MAX} characters", code="invalid_comment"
        )
    return text, author or None


_COMMENT_COLUMNS = "id, photo_id, device_id, author_name, body, created_at"


async def add_comment(
    db: Database,
    event_id: uuid.UUID,
    photo_id: str,
    device_id: str,
    body: str,
    author_name: str | None,
) -> Comment:
    """Store a comment (already validated by :func:`validate_comment`) on the event's photo."""
    row = await db.fetchrow(
        f"""insert into photo_comments (photo_id, device_id, author_name, body)
            select id, $3, $4, $5 from photos
             where id = $1 and event_id = $2 and deleted_at is null
            returning {_COMMENT_COLUMNS}""",
        parse_photo_id(photo_id),
        event_id,
        device_id,
        author_name,
        body,
    )
    if row is None:
        raise NotFound("no such photo", code="photo_not_found")
    return Comment.from_record(row)


async def list_comments(
    db: Database,
    event_id: uuid.UUID,
    photo_id: str,
    *,
    limit: int = DEFAULT_COMMENT_LIMIT,
    before: Cursor | None = None,
) -> tuple[list[Comment], Cursor | None]:
    """The photo's comments newest first, keyset-paged like photos: ``(comments, next)``."""
    pid = parse_photo_id(photo_id)

    async def on_asyncio(conn: asyncpg.Connection) -> list[Record] | None:
        found = await conn.fetchval(
            "select 1 from photos where id = $1 and event_id = $2 and deleted_at is null",
            pid,
            event_id,
        )
        if not found:
            return None
        if before is None:
            return await conn.fetch(  # type: ignore[no-any-return]
                f"select {_COMMENT_COLUMNS} from photo_comments"
                " where photo_id = $1 and deleted_at is null"
                " order by created_at desc, id desc limit $2",
                pid,
                limit + 1,
            )
        return await conn.fetch(  # type: ignore[no-any-return]
            f"select {_COMMENT_COLUMNS} from photo_comments"
            " where photo_id = $1 and deleted_at is null and (created_at, id) < ($3, $4)"
            " order by created_at desc, id desc limit $2",
            pid,
            limit + 1,
            before.created_at,
            before.id,
        )

    rows = await db.run(on_asyncio, transaction=False)
    if rows is None:
        raise NotFound("no such photo", code="photo_not_found")
    comments = [Comment.from_record(r) for r in rows[:limit]]
    return comments, (comments[-1].cursor if len(rows) > limit else None)


# -- signed URLs -----------------------------------------------------------------------------------


async def sign_keys(storage: Storage, keys: Iterable[str], ttl: int) -> dict[str, str]:
    """A signed URL (no download name) for each distinct key, for a whole page at once."""
    unique = list(dict.fromkeys(keys))
    return await storage.signed_urls(unique, ttl) if unique else {}


class SignedUrlCache:
    """Signed URLs for gallery images, each reused for a while instead of signed per request.

    A URL is signed for ``ttl + reuse`` seconds and handed out for ``reuse`` seconds, so every
    URL a guest receives stays valid at least ``ttl`` seconds (``SIGNED_URL_TTL_SECONDS``). Two
    gains: the same photo keeps the same URL across polls, reloads and guests, so phones' HTTP
    caches keep thumbnails (the venue's Wi-Fi is the scarce resource); and the photos everybody
    is looking at — the newest — are signed once per ``reuse`` window, not once per request
    (signing costs ~20-50 µs per URL locally, far more on S3). At most ``max_entries`` URLs are
    kept (least recently used dropped). Not shared between processes; needs no locking (Trio).
    """

    def __init__(
        self,
        storage: Storage,
        ttl: int,
        *,
        reuse: int = 300,
        max_entries: int = 20_000,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        validate_ttl(ttl)
        self.storage = storage
        self.ttl = ttl
        self.sign_ttl = min(ttl + max(reuse, 0), MAX_URL_TTL)
        self.reuse = self.sign_ttl - ttl
        self.max_entries = max_entries
        self._clock = clock
        self._urls: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def sign(self, keys: Iterable[str]) -> dict[str, str]:
        """A URL for each distinct key (cached ones reused, the rest signed in one batch)."""
        now = self._clock()
        out: dict[str, str] = {}
        missing: list[str] = []
        for key in keys:
            if key in out:
                continue
            entry = self._urls.get(key)
            if entry is not None and entry[1] > now:
                self._urls.move_to_end(key)
                out[key] = entry[0]
            else:
                out[key] = ""
                missing.append(key)
        self.hits += len(out) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = await sign_keys(self.storage, missing, self.sign_ttl)
            until = now + self.reuse
            for key in missing:
                out[key] = fresh[key]
                if self.reuse > 0:
                    self._urls[key] = (fresh[key], until)
                    self._urls.move_to_end(key)
            while len(self._urls) > self.max_entries:
                self._urls.popitem(last=False)
        return out

    def __len__(self) -> int:
        return len(self._urls)


def now_utc() -> datetime:
    return datetime.now(UTC)


__all__ = [
    "DEFAULT_LIMIT",
    "DEVICE_ID_RE",
    "FALLBACK",
    "GUEST_PAGE_GRACE",
    "HORIZON_CAP",
    "MAX_LIMIT",
    "VARIANTS",
    "Comment",
    "Cursor",
    "DownloadVariant",
    "GalleryPhoto",
    "GuestResults",
    "LikeState",
    "Page",
    "SignedUrlCache",
    "add_comment",
    "get_photo",
    "get_session_photo",
    "guest_page_open",
    "guest_results",
    "list_comments",
    "page",
    "parse_photo_id",
    "public_event",
    "set_like",
    "sign_keys",
    "validate_comment",
    "validate_device_id",
    "validate_limit",
]
