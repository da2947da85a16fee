"""Session registry: owns guest sessions (a guest's registration at an event).

A guest registers with a name and a WhatsApp number and gets:

- a **code**: 6 characters from ``23456789ABCDEFGHJKLMNPQRSTUVWXYZ`` (no 0/O/1/I to misread),
  unique among the event's sessions (the database's unique index ``(event_id, code)`` decides;
  a collision is retried with a fresh code). The code is only for an *operator* to look the guest
  up; it is short enough to guess, so it never opens the guest's own page.
- a **token**: ``secrets.token_urlsafe(32)`` (256 bits, 43 characters) addressing the guest's page
  ``/g/<token>``. Only its SHA-256 is stored (``guest_sessions.token_hash``), so a database leak
  does not hand out guest pages; the token itself exists only in the registration response.

A session expires ``SESSION_TTL_SECONDS`` after registration (computed on the database's clock,
so boxes with skewed clocks agree). Lookups by code or token find only unexpired, unended
sessions (unless told otherwise); :meth:`SessionRegistry.get` by id returns the session in any
state so a caller can say "expired" rather than "unknown" (check ``session.expired``). Anything
missing is :class:`NotFound`.

WhatsApp numbers are normalized to E.164 (:func:`normalize_whatsapp`): Indonesian mobile numbers
in any of the usual local forms, or any international mobile number written with ``+``.

The methods are called directly by request handlers; all state is in PostgreSQL (and, for the
booth's active session, Redis), so the actor (:func:`run`) holds nothing in memory and a restart
loses nothing.

Booth active session (issue 4, seed 000)
----------------------------------------
"Start Pro Capture" binds a booth to a guest's session (``mode="session"``) or to an event's
gallery (``mode="gallery"``, a roaming photographer; no guest). The live copy is the Redis key
``activeSession:{boothId}`` (through :meth:`Cache.key`), a JSON object with the seed's camelCase
keys ``sessionId, eventId, code, name, whatsapp, operatorId, startedAt`` plus ``mode``,
``styleId`` and ``boothSessionId`` (nulls where they do not apply, e.g. the guest's fields in
gallery mode), kept for ``ACTIVE_SESSION_TTL_SECONDS`` and re-armed by every file the hot folder
takes (:meth:`SessionRegistry.refresh_active`).

Each run is also a ``booth_sessions`` row in PostgreSQL (the record a CCTV clip is cut from):
``started_at``, ``last_refreshed_at`` (start and every refresh), and on its end ``ended_at`` +
``end_reason``:

- ``stopped``: :meth:`~SessionRegistry.clear_active` (``DELETE …/active-session``), at that moment;
- ``replaced``: a new start while the key was still alive, at that moment (= the new start);
- ``expired``: the key's TTL ran out, at ``last_refreshed_at`` (the last sign of activity). The
  actor's periodic sweep finds open rows whose key is gone; a start or clear that finds the key
  gone ends the open row the same way. With Redis unreachable nothing is ended (nobody can tell).

Start and clear hold the booth's ``booths`` row and its open ``booth_sessions`` row locked
(``FOR UPDATE``) around their Redis write, so two starts on one booth (even from two boxes)
take turns, and the sweep cannot end a row that a start or clear is about to end with a better
reason. A partial unique index keeps at most one open row per booth.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import secrets
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import phonenumbers
import trio

from photobot.cache import Cache
from photobot.config import Settings
from photobot.db import Database, Record
from photobot.errors import CacheError, Conflict, InvalidInput, NotFound, Unavailable
from photobot.events import Event, resolve_event
from photobot.providers.local import STYLES
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.registry")

CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CODE_LENGTH = 6
NAME_MAX = 100
# 32**6 ≈ 1e9 codes: even an event with 100k sessions collides on fewer than 1 in 10k tries, so
# running out of attempts means something else is wrong (and is reported, not looped on).
_MAX_ATTEMPTS = 16
_CODE_RE = re.compile(r"[A-Z2-9]{4,10}")
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")
_PHONE_CHARS_RE = re.compile(r"[0-9+\-(). ]+")
_MOBILE_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)
_TOKEN_MAX = 128
# Bidi overrides/isolates would let a name shown on the operator's screen read as another one.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# -- pure helpers --------------------------------------------------------------------------------


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def validate_guest_name(value: Any) -> str:
    """Trimmed, 1-100 characters, no control or bidi-override characters; else 422."""
    if not isinstance(value, str):
        raise InvalidInput("name must be a string", code="invalid_name")
    name = value.strip()
    if not name:
        raise InvalidInput("name must not be empty", code="invalid_name")
    if len(name) > NAME_MAX:
        raise InvalidInput(f"name must be at most {NAME_MAX} characters", code="invalid_name")
    if any(unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS for ch in name):
        raise InvalidInput("name must not contain control characters", code="invalid_name")
    return name


def normalize_whatsapp(value: Any) -> str:
    """A WhatsApp number as E.164 (``+628123456789``), or 422 ``invalid_whatsapp``.

    Accepted: Indonesian mobiles as ``08…``, ``+62 8…``, ``628…`` or bare ``8…`` (spaces, dashes,
    dots and brackets ignored), and any other country's mobile number written with ``+`` (or
    ``00``).
    Refused: landlines, invalid or too short numbers, anything with letters.
    """

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"whatsapp {why}", code="invalid_whatsapp")

    if not isinstance(value, str):
        raise bad("must be a string")
    text = value.strip()
    if not text or len(text) > 32 or not _PHONE_CHARS_RE.fullmatch(text):
        raise bad("must be a phone number such as 0812-3456-7890 or +62 812 3456 7890")
    digits = re.sub(r"[^0-9]", "", text)
    if text.startswith("+"):
        candidate, region = "+" + digits, None
    elif digits.startswith("00"):
        candidate, region = "+" + digits[2:], None  # "00" international prefix, as phones accept
    elif digits.startswith("62"):
        # phonenumbers would read "628…" with region ID as a national number and prepend the
        # country code again (+62628…), still calling it valid: treat it as international.
        candidate, region = "+" + digits, None
    elif digits.startswith("8"):
        candidate, region = "0" + digits, "ID"  # "812…": the local form without its trunk 0
    else:
        candidate, region = digits, "ID"
    if candidate.startswith("+620"):
        candidate = "+62" + candidate[4:]  # "+62 (0)812…": the trunk 0 has no place after +62
    try:
        number = phonenumbers.parse(candidate, region)
    except phonenumbers.NumberParseException:
        raise bad("is not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise bad("is not a valid phone number")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise bad("must be a mobile number (WhatsApp is not on landlines)")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not _E164_RE.fullmatch(e164):
        raise bad("is not a valid phone number")
    return e164


def whatsapp_share_link(e164: str, text: str = "") -> str:
    """``https://wa.me/<digits>?text=<percent-encoded>`` (no ``+``; spaces as ``%20``)."""
    if not _E164_RE.fullmatch(e164):
        raise InvalidInput("whatsapp must be an E.164 number", code="invalid_whatsapp")
    link = f"https://wa.me/{e164[1:]}"
    return f"{link}?text={quote(text, safe='')}" if text else link


def _client_ip(value: str | None) -> str | None:
    # Only a real address goes into the inet column; a test client's "<local>" does not.
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


# -- booth active session: names and pure helpers -----------------------------------------------

ACTIVE_MODES = ("session", "gallery")
END_REASONS = ("stopped", "expired", "replaced")
#: How often the actor looks for booth sessions whose Redis key has expired.
SWEEP_INTERVAL = 5.0
_BOOTH_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Undo a start whose database half failed: only if the key still holds what that start wrote,
# put back what was there before (with its remaining lifetime), or delete it.
_UNDO_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] ~= '' and tonumber(ARGV[3]) > 0 then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return 0
"""


def validate_booth_id(value: Any) -> str:
    """1-64 characters of ``[A-Za-z0-9_.-]``, else 422 ``invalid_booth_id``."""
    if not isinstance(value, str) or not _BOOTH_ID_RE.fullmatch(value):
        raise InvalidInput(
            "boothId must be 1-64 characters of letters, digits, '_', '.' or '-'",
            code="invalid_booth_id",
        )
    return value


def active_session_key(booth_id: str) -> str:
    """The seed's key name, before the cache prefix: ``activeSession:{boothId}``."""
    return f"activeSession:{booth_id}"


def _normalize_code(code: Any) -> str:
    if not isinstance(code, str):
        raise InvalidInput("code must be a string", code="invalid_code")
    return re.sub(r"[\s-]", "", code).upper()


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestSession:
    id: uuid.UUID
    event_id: uuid.UUID
    code: str
    name: str
    whatsapp: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None

    @property
    def expired(self) -> bool:
        """Past its TTL or ended (on this box's clock; the lookups filter on the database's)."""
        return self.ended_at is not None or self.expires_at <= datetime.now(UTC)

    @classmethod
    def from_record(cls, row: Record) -> GuestSession:
        return cls(
            id=row["id"],
            event_id=row["event_id"],
            code=row["code"],
            name=row["name"],
            whatsapp=row["whatsapp"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            ended_at=row["ended_at"],
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "sessionId": str(self.id),
            "eventId": str(self.event_id),
            "code": self.code,
            "name": self.name,
            "whatsapp": self.whatsapp,
            "expiresAt": self.expires_at.isoformat(),
        }


@dataclass(frozen=True)
class Registration:
    """A new session and its token: the only moment the token is known to the booth."""

    session: GuestSession
    token: str
    event: Event


@dataclass(frozen=True)
class ActiveSession:
    """A booth's active session, as stored under ``activeSession:{boothId}``."""

    booth_id: str
    booth_session_id: str  # booth_sessions.id in PostgreSQL
    event_id: str
    mode: str  # "session" (a guest's Pro Capture) or "gallery" (roaming photographer)
    session_id: str | None  # None in gallery mode
    code: str | None
    name: str | None
    whatsapp: str | None
    operator_id: str | None
    started_at: str  # ISO 8601
    style_id: str | None

    def to_redis(self) -> str:
        """The stored JSON: the seed's camelCase keys plus mode, styleId and boothSessionId."""
        return json.dumps(
            {
                "sessionId": self.session_id,
                "eventId": self.event_id,
                "code": self.code,
                "name": self.name,
                "whatsapp": self.whatsapp,
                "operatorId": self.operator_id,
                "startedAt": self.started_at,
                "mode": self.mode,
                "styleId": self.style_id,
                "boothSessionId": self.booth_session_id,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_redis(cls, booth_id: str, raw: bytes | str | None) -> ActiveSession | None:
        """Parse a stored value; ``None`` for no value or one that is not ours (logged)."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("eventId"), str):
                raise ValueError("not an active-session object")
            mode = data.get("mode") or ("session" if data.get("sessionId") else "gallery")
            if mode not in ACTIVE_MODES:
                raise ValueError(f"unknown mode {mode!r}")
            return cls(
                booth_id=booth_id,
                booth_session_id=str(data.get("boothSessionId") or ""),
                event_id=data["eventId"],
                mode=mode,
                session_id=_opt_str(data.get("sessionId")),
                code=_opt_str(data.get("code")),
                name=_opt_str(data.get("name")),
                whatsapp=_opt_str(data.get("whatsapp")),
                operator_id=_opt_str(data.get("operatorId")),
                started_at=str(data.get("startedAt") or ""),
                style_id=_opt_str(data.get("styleId")),
            )
        except (ValueError, TypeError) as exc:
            log.warning(
                "ignoring an unreadable active session",
                extra={"booth_id": booth_id, "error": str(exc)},
            )
            return None

    def to_api(self) -> dict[str, Any]:
        return {
            "boothId": self.booth_id,
            "sessionId": self.session_id,
            "eventId": self.event_id,
            "name": self.name,
            "whatsapp": self.whatsapp,
            "mode": self.mode,
            "styleId": self.style_id,
            "startedAt": self.started_at,
        }


_COLUMNS = "id, event_id, code, name, whatsapp, created_at, expires_at, ended_at"
_ACTIVE = "expires_at > now() and ended_at is null"


class SessionRegistry:
    """Guest sessions in PostgreSQL. ``code_factory`` is replaceable for tests of collisions."""

    def __init__(
        self,
        db: Database,
        cache: Cache,
        settings: Settings,
        *,
        code_factory: Callable[[], str] = new_code,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self._db = db
        self._cache = cache  # the booth active session lives in Redis
        self._ttl = settings.session_ttl_seconds
        self.active_ttl = settings.active_session_ttl_seconds
        #: Seconds between the actor's sweeps for expired booth sessions (tests shorten it).
        self.sweep_interval = sweep_interval
        self._new_code = code_factory

    async def register(
        self, event_id_or_slug: str, name: Any, whatsapp: Any, client_ip: str | None = None
    ) -> Registration:
        """Validate, then store a new session; 422 for bad input, 404 for an unknown event."""
        clean_name = validate_guest_name(name)
        number = normalize_whatsapp(whatsapp)
        event = await resolve_event(self._db, event_id_or_slug)
        ip = _client_ip(client_ip)
        for _ in range(_MAX_ATTEMPTS):
            token = new_token()
            try:
                row = await self._db.fetchrow(
                    "insert into guest_sessions"
                    " (event_id, code, token_hash, name, whatsapp, expires_at, client_ip)"
                    " values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7::inet)"
                    f" returning {_COLUMNS}",
                    event.id,
                    self._new_code(),
                    token_hash(token),
                    clean_name,
                    number,
                    float(self._ttl),
                    ip,
                )
            except Conflict:
                continue  # the code (or, never in practice, the token) is taken: draw again
            assert row is not None
            return Registration(GuestSession.from_record(row), token, event)
        raise Conflict("could not allocate a unique session code; try again", code="code_space")

    async def lookup_code(self, event_id_or_slug: str | None, code: str) -> GuestSession:
        """The active session with this code (at this event, if given), or NotFound.

        Without an event, a code active at two events at once is a 409 ``ambiguous_code``.
        """
        normalized = re.sub(r"[\s-]", "", code).upper() if isinstance(code, str) else ""
        if not _CODE_RE.fullmatch(normalized):
            raise NotFound("no such session", code="session_not_found")
        if event_id_or_slug is not None:
            event = await resolve_event(self._db, event_id_or_slug)
            rows = await self._db.fetch(
                f"select {_COLUMNS} from guest_sessions"
                f" where event_id = $1 and code = $2 and {_ACTIVE}",
                event.id,
                normalized,
            )
        else:
            rows = await self._db.fetch(
                f"select {_COLUMNS} from guest_sessions where code = $1 and {_ACTIVE} limit 2",
                normalized,
            )
        if not rows:
            raise NotFound("no such session", code="session_not_found")
        if len(rows) > 1:
            raise Conflict(
                "this code is active at more than one event; pass eventId", code="ambiguous_code"
            )
        return GuestSession.from_record(rows[0])

    async def lookup_token(self, token: str, *, include_expired: bool = False) -> GuestSession:
        """The session a guest-page token belongs to, or NotFound."""
        if not isinstance(token, str) or not 1 <= len(token) <= _TOKEN_MAX:
            raise NotFound("no such session", code="session_not_found")
        where = "token_hash = $1" + ("" if include_expired else f" and {_ACTIVE}")
        row = await self._db.fetchrow(
            f"select {_COLUMNS} from guest_sessions where {where}", token_hash(token)
        )
        if row is None:
            raise NotFound("no such session", code="session_not_found")
        return GuestSession.from_record(row)

    async def get(
        self, session_id: str | uuid.UUID, *, include_expired: bool = True
    ) -> GuestSession:
        """The session with this id, expired or not (see ``.expired``), or NotFound.

        A malformed id is NotFound too. ``include_expired=False`` treats expired as missing.
        """
        try:
            sid = session_id if isinstance(session_id, uuid.UUID) else uuid.UUID(session_id)
        except (ValueError, TypeError, AttributeError):
            raise NotFound("no such session", code="session_not_found") from None
        where = "id = $1" + ("" if include_expired else f" and {_ACTIVE}")
        row = await self._db.fetchrow(f"select {_COLUMNS} from guest_sessions where {where}", sid)
        if row is None:
            raise NotFound("no such session", code="session_not_found")
        return GuestSession.from_record(row)

    # -- booth active session ------------------------------------------------------------------

    async def start_active(
        self,
        booth_id: str,
        *,
        event_id_or_slug: str,
        session_id: str | None = None,
        code: str | None = None,
        mode: str = "session",
        style_id: str | None = None,
        operator_id: str | None = None,
    ) -> tuple[ActiveSession, int]:
        """Make this the booth's active session; returns it and its TTL in seconds.

        Session mode needs a live guest session of the event: ``session_id`` (with ``code``, if
        given, matching it) or, without an id, the event's active session with ``code``. Unknown
        → 404 ``session_not_found``, another event's → 409 ``session_event_mismatch``, expired →
        409 ``session_expired``, wrong code → 409 ``session_code_mismatch``. Gallery mode takes
        neither. An open booth session of this booth is ended (``replaced``, or ``expired`` if
        its key had already gone). Redis down → :class:`CacheError`, nothing changed.
        """
        booth = validate_booth_id(booth_id)
        if mode not in ACTIVE_MODES:
            raise InvalidInput("mode must be 'session' or 'gallery'", code="invalid_mode")
        if style_id is not None and style_id not in STYLES:
            raise InvalidInput(f"styleId must be one of {', '.join(STYLES)}", code="invalid_style")
        event = await resolve_event(self._db, event_id_or_slug)
        guest: GuestSession | None = None
        if mode == "gallery":
            if session_id is not None or code is not None:
                raise InvalidInput("gallery mode takes no sessionId or code", code="invalid_input")
        elif session_id is not None:
            guest = await self.get(session_id)
            if code is not None and _normalize_code(code) != guest.code:
                raise Conflict("the code does not match this session", code="session_code_mismatch")
        elif code is not None:
            guest = await self.lookup_code(str(event.id), code)
        else:
            raise InvalidInput("sessionId (or code) is required", code="missing_field")
        if guest is not None:
            if guest.event_id != event.id:
                raise Conflict(
                    "this guest registered for another event", code="session_event_mismatch"
                )
            if guest.expired:
                raise Conflict(
                    "this guest's session has expired; register again", code="session_expired"
                )

        key = self._cache.key(active_session_key(booth))
        ttl = self.active_ttl
        booth_session_id = uuid.uuid4()
        written: str | None = None
        before: tuple[bytes | None, int] = (None, -2)
        try:
            async with self._db.transaction() as tx:
                # Lock the booth (one start or clear at a time) and its open run (the sweep must
                # not end it meanwhile); now() is this transaction's, so startedAt = started_at.
                started = await tx.fetchval(
                    "insert into booths (id, event_id) values ($1, $2) on conflict (id)"
                    " do update set event_id = excluded.event_id returning now()",
                    booth,
                    event.id,
                )
                await tx.fetch(
                    "select id from booth_sessions where booth_id = $1 and ended_at is null"
                    " for update",
                    booth,
                )
                active = ActiveSession(
                    booth_id=booth,
                    booth_session_id=str(booth_session_id),
                    event_id=str(event.id),
                    mode=mode,
                    session_id=None if guest is None else str(guest.id),
                    code=None if guest is None else guest.code,
                    name=None if guest is None else guest.name,
                    whatsapp=None if guest is None else guest.whatsapp,
                    operator_id=operator_id,
                    started_at=started.isoformat(),
                    style_id=style_id,
                )
                value = active.to_redis()
                old, old_pttl, _ = await self._cache.pipeline(
                    lambda p: (p.get(key), p.pttl(key), p.set(key, value, ex=ttl))
                )
                written, before = value, (old, old_pttl)
                previous = ActiveSession.from_redis(booth, old)
                await tx.execute(
                    _END_OPEN,
                    booth,
                    _uuid_or_none(previous.booth_session_id if previous else None),
                    "replaced",
                )
                await tx.execute(
                    "insert into booth_sessions (id, booth_id, event_id, session_id, mode,"
                    " style_id, operator_id, started_at, last_refreshed_at)"
                    " values ($1, $2, $3, $4, $5, $6, $7, now(), now())",
                    booth_session_id,
                    booth,
                    event.id,
                    None if guest is None else guest.id,
                    mode,
                    style_id,
                    operator_id,
                )
        except BaseException:
            if written is not None:
                await self._undo_start(key, written, *before)
            raise
        log.info(
            "active session started",
            extra={"booth_id": booth, "booth_session_id": str(booth_session_id), "mode": mode},
        )
        return active, ttl

    async def _undo_start(self, key: str, written: str, old: bytes | None, old_pttl: int) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await self._cache.call(
                    lambda r: r.eval(_UNDO_SET, 1, key, written, old or b"", max(old_pttl, 0))
                )
            except CacheError as exc:
                log.warning(
                    "could not undo an active session whose record failed",
                    extra={"key": key, "error": exc.message},
                )

    async def active_session(self, booth_id: str) -> ActiveSession | None:
        """The booth's active session, or None. Redis down → :class:`CacheError`."""
        booth = validate_booth_id(booth_id)
        raw = await self._cache.get(active_session_key(booth))
        return ActiveSession.from_redis(booth, raw)

    async def active_with_ttl(self, booth_id: str) -> tuple[ActiveSession, int] | None:
        """The active session and its seconds left (one round trip), or None."""
        booth = validate_booth_id(booth_id)
        key = self._cache.key(active_session_key(booth))
        raw, ttl = await self._cache.pipeline(lambda p: (p.get(key), p.ttl(key)))
        active = ActiveSession.from_redis(booth, raw)
        return None if active is None else (active, max(int(ttl), 0))

    async def refresh_active(self, booth_id: str) -> int | None:
        """Re-arm the TTL (the hot folder calls it for every file): the new TTL, or None when
        the booth has no active session. One Redis round trip and one UPDATE.
        Redis down → :class:`CacheError`; database down → ``DatabaseError`` (both
        :class:`~photobot.errors.Unavailable`), the key's TTL re-armed already in that case.
        """
        booth = validate_booth_id(booth_id)
        key = self._cache.key(active_session_key(booth))
        ttl = self.active_ttl
        armed, raw = await self._cache.pipeline(lambda p: (p.expire(key, ttl), p.get(key)))
        if not armed:
            return None
        active = ActiveSession.from_redis(booth, raw)
        row_id = _uuid_or_none(active.booth_session_id if active else None)
        if row_id is not None:
            await self._db.execute(
                "update booth_sessions set last_refreshed_at = now()"
                " where id = $1 and ended_at is null",
                row_id,
            )
        return ttl

    async def clear_active(self, booth_id: str, *, reason: str = "stopped") -> bool:
        """End the booth's active session ("Stop Capture"): True if there was one.

        Its booth session ends now with ``reason``; an open one whose key had already gone ends
        ``expired`` at its last refresh. Redis down → :class:`CacheError`, nothing changed.
        """
        booth = validate_booth_id(booth_id)
        if reason not in END_REASONS:
            raise ValueError(f"reason must be one of {END_REASONS}")
        key = self._cache.key(active_session_key(booth))
        async with self._db.transaction() as tx:
            await tx.fetch("select 1 from booths where id = $1 for update", booth)
            await tx.fetch(
                "select id from booth_sessions where booth_id = $1 and ended_at is null for update",
                booth,
            )
            old, deleted = await self._cache.pipeline(lambda p: (p.get(key), p.delete(key)))
            previous = ActiveSession.from_redis(booth, old)
            await tx.execute(
                _END_OPEN,
                booth,
                _uuid_or_none(previous.booth_session_id if previous else None),
                reason,
            )
        if deleted:
            log.info("active session cleared", extra={"booth_id": booth, "reason": reason})
        return bool(deleted)

    async def sweep_expired(self) -> list[uuid.UUID]:
        """End (``expired``, at ``last_refreshed_at``) every open booth session whose key is
        gone; returns their ids. Redis down → :class:`CacheError` and nothing is ended."""
        rows = await self._db.fetch(
            "select id, booth_id from booth_sessions where ended_at is null"
        )
        if not rows:
            return []
        booths = sorted({r["booth_id"] for r in rows})
        keys = [self._cache.key(active_session_key(b)) for b in booths]
        alive = await self._cache.pipeline(lambda p: [p.exists(k) for k in keys])
        gone = {b for b, n in zip(booths, alive, strict=True) if not n}
        ids = [r["id"] for r in rows if r["booth_id"] in gone]
        if not ids:
            return []
        ended = await self._db.fetch(
            "update booth_sessions set ended_at = last_refreshed_at, end_reason = 'expired'"
            " where id = any($1::uuid[]) and ended_at is null returning id, booth_id",
            ids,
        )
        for r in ended:
            log.info(
                "active session expired",
                extra={"booth_id": r["booth_id"], "booth_session_id": str(r["id"])},
            )
        return [r["id"] for r in ended]


# End a booth's open booth session(s): the one named by $2 (the run whose key was still there)
# now with reason $3; any other (its key already gone) as expired at its last refresh.
_END_OPEN = """
update booth_sessions
   set ended_at = case when id = $2::uuid then now() else last_refreshed_at end,
       end_reason = case when id = $2::uuid then $3 else 'expired' end
 where booth_id = $1 and ended_at is null
"""


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return None if not value else uuid.UUID(value)
    except ValueError:
        return None


async def run(ctx: ChildContext, registry: SessionRegistry) -> None:
    """Ready at once; every ``registry.sweep_interval`` seconds, end the booth sessions whose
    active-session key has expired (:meth:`SessionRegistry.sweep_expired`).

    A round with Redis or the database unreachable is skipped (Redis down must not look like
    "every key expired"). State is in PostgreSQL and Redis, so a stop has nothing to checkpoint.
    Expired *guest* sessions are not swept: lookups filter them out, and they are kept on purpose
    (their jobs and photos still point at them for the guest's page).
    """
    ctx.started()
    while not ctx.stopping.is_set():
        try:
            await registry.sweep_expired()
        except Unavailable as exc:
            log.warning("active-session sweep skipped", extra={"error": exc.message})
        with trio.move_on_after(registry.sweep_interval):
            await ctx.stopping.wait()


__all__ = [
    "ACTIVE_MODES",
    "CODE_ALPHABET",
    "CODE_LENGTH",
    "END_REASONS",
    "SWEEP_INTERVAL",
    "ActiveSession",
    "GuestSession",
    "Registration",
    "SessionRegistry",
    "active_session_key",
    "new_code",
    "new_token",
    "normalize_whatsapp",
    "run",
    "token_hash",
    "validate_booth_id",
    "validate_guest_name",
    "whatsapp_share_link",
]
