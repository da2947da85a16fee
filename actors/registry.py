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

The methods are called directly by request handlers; all state is in PostgreSQL, so the actor
(:func:`run`) holds nothing in memory and a restart loses nothing. The booth's active session
(``activeSession:{boothId}`` in Redis) joins this module with issue 4.
"""

from __future__ import annotations

import hashlib
import ipaddress
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

from photobot.cache import Cache
from photobot.config import Settings
from photobot.db import Database, Record
from photobot.errors import Conflict, InvalidInput, NotFound
from photobot.events import Event, resolve_event
from photobot.supervisor import ChildContext

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
    ) -> None:
        self._db = db
        self._cache = cache  # the booth active session (issue 4) lives in Redis
        self._ttl = settings.session_ttl_seconds
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


async def run(ctx: ChildContext, registry: SessionRegistry) -> None:
    """Ready at once. Every session lives in PostgreSQL, so a stop has nothing to checkpoint.

    No sweep: expired sessions are filtered out by every lookup and are kept on purpose (their
    jobs and photos still point at them for the guest's page). ``registry`` is bound by the
    root already so that issue 4's Redis work (the booth active session) has it at hand.
    """
    ctx.started()
    await ctx.stopping.wait()


__all__ = [
    "CODE_ALPHABET",
    "CODE_LENGTH",
    "GuestSession",
    "Registration",
    "SessionRegistry",
    "new_code",
    "new_token",
    "normalize_whatsapp",
    "run",
    "token_hash",
    "validate_guest_name",
    "whatsapp_share_link",
]
