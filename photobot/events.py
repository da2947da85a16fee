"""Events: the unit a booth works for (a wedding, a launch), addressed by uuid or slug.

An event has an ``id`` (uuid), a ``slug`` (lowercase letters, digits and inner hyphens, at most 64
characters, never shaped like a uuid so the two can't be confused), a ``name``, a
``visibility`` (``public``/``private``: whether its gallery is listed) and
:class:`EventSettings`.

Everywhere an API takes ``eventId``, :func:`resolve_event` accepts either form: text that parses
as a uuid is looked up by id, anything else by slug; unknown → :class:`NotFound`.

Input validation is strict and names the field in the message (``InvalidInput``, HTTP 422):
unknown keys in ``settings``, wrong types and unknown provider names are refused rather than
stored and discovered at job time. The API speaks camelCase (``defaultStyle``,
``fallbackChain``, ``frameKey``, ``branding``); the ``events.settings`` jsonb column holds the
snake_case names the migration documents (``default_style``, ``fallback_chain``,
``frame_key``, ``branding``) and only keys that are set.

Updates (:func:`update_event`) are partial: absent fields are left alone; inside ``settings``
each given key replaces the stored one and ``null`` removes it (back to the default). The merge
happens in one UPDATE statement, so two operators editing different settings at once don't
overwrite each other.
"""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from photobot.db import Database, Record
from photobot.errors import Conflict, InvalidInput, NotFound
from photobot.storage import validate_key

#: Provider names a fallback chain may contain (the worker pool's engines).
PROVIDERS: frozenset[str] = frozenset({"local", "comfyui", "kie"})
VISIBILITIES: frozenset[str] = frozenset({"public", "private"})

Visibility = Literal["public", "private"]

_SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
_STYLE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_NAME_MAX = 200
_BRANDING_MAX = 200
_CHAIN_MAX = len(PROVIDERS)

# API name → stored name, in the order responses list them.
_SETTING_KEYS: dict[str, str] = {
    "defaultStyle": "default_style",
    "fallbackChain": "fallback_chain",
    "frameKey": "frame_key",
    "branding": "branding",
}


def _looks_like_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _text(value: Any, fieldname: str, *, max_len: int, code: str = "invalid_input") -> str:
    """A trimmed, non-empty string of at most ``max_len`` characters, no control characters."""
    if not isinstance(value, str):
        raise InvalidInput(f"{fieldname} must be a string", code=code)
    text = value.strip()
    if not text:
        raise InvalidInput(f"{fieldname} must not be empty", code=code)
    if len(text) > max_len:
        raise InvalidInput(f"{fieldname} must be at most {max_len} characters", code=code)
    if _has_control(text):
        raise InvalidInput(f"{fieldname} must not contain control characters", code=code)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" JSON escape
        raise InvalidInput(f"{fieldname} is not valid Unicode", code=code) from None
    return text


def validate_name(value: Any) -> str:
    return _text(value, "name", max_len=_NAME_MAX, code="invalid_name")


def validate_slug(value: Any) -> str:
    if not isinstance(value, str) or not _SLUG_RE.fullmatch(value):
        raise InvalidInput(
            "slug must be 1-64 lowercase letters, digits or inner hyphens", code="invalid_slug"
        )
    if _looks_like_uuid(value):
        raise InvalidInput("slug must not look like a uuid", code="invalid_slug")
    return value


def validate_visibility(value: Any) -> Visibility:
    if value not in VISIBILITIES:
        raise InvalidInput("visibility must be 'public' or 'private'", code="invalid_visibility")
    return cast(Visibility, value)


def slug_from_name(name: str) -> str:
    """``"Budi & Sari's Wedding"`` → ``"budi-sari-s-wedding"``; random when nothing is left."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:64].rstrip("-")
    if not slug or _looks_like_uuid(slug):
        # A name of emoji or non-Latin script leaves nothing; the slug is editable later.
        slug = f"event-{secrets.token_hex(3)}"
    return slug


@dataclass(frozen=True)
class EventSettings:
    """What an event changes about processing. Unset fields mean "the booth's default"."""

    default_style: str | None = None
    #: Providers to try in order; empty: the booth's ``AI_PROVIDER_DEFAULT`` alone.
    fallback_chain: tuple[str, ...] = ()
    #: Storage key of the frame overlay (a PNG with alpha).
    frame_key: str | None = None
    branding: str | None = None

    def to_db(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "default_style": self.default_style,
            "fallback_chain": list(self.fallback_chain) or None,
            "frame_key": self.frame_key,
            "branding": self.branding,
        }
        return {k: v for k, v in stored.items() if v is not None}

    def to_api(self) -> dict[str, Any]:
        return {
            "defaultStyle": self.default_style,
            "fallbackChain": list(self.fallback_chain),
            "frameKey": self.frame_key,
            "branding": self.branding,
        }

    @classmethod
    def from_db(cls, stored: Mapping[str, Any]) -> EventSettings:
        # Written only by this module, so trusted; unknown keys (a newer version's) are ignored.
        return cls(
            default_style=stored.get("default_style"),
            fallback_chain=tuple(stored.get("fallback_chain") or ()),
            frame_key=stored.get("frame_key"),
            branding=stored.get("branding"),
        )


def parse_settings_patch(value: Any) -> dict[str, Any]:
    """Validate an API ``settings`` object; return stored-name → value (``None``: remove).

    Every key is validated on its own, so merging a valid patch into valid stored settings
    always gives valid settings.
    """
    if not isinstance(value, dict):
        raise InvalidInput("settings must be an object", code="invalid_settings")
    unknown = sorted(set(value) - set(_SETTING_KEYS))
    if unknown:
        raise InvalidInput(
            f"settings: unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
            + ", ".join(_SETTING_KEYS),
            code="invalid_settings",
        )
    out: dict[str, Any] = {}
    for api_name, raw in value.items():
        stored_name = _SETTING_KEYS[api_name]
        where = f"settings.{api_name}"
        if raw is None:
            out[stored_name] = None
        elif api_name == "defaultStyle":
            if not isinstance(raw, str) or not _STYLE_RE.fullmatch(raw):
                raise InvalidInput(
                    f"{where} must be 1-64 of lowercase letters, digits, '_' or '-'",
                    code="invalid_settings",
                )
            out[stored_name] = raw
        elif api_name == "fallbackChain":
            out[stored_name] = _parse_chain(raw, where) or None
        elif api_name == "frameKey":
            try:
                out[stored_name] = validate_key(raw)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {exc.message}", code="invalid_settings") from None
        else:  # branding
            out[stored_name] = _text(raw, where, max_len=_BRANDING_MAX, code="invalid_settings")
    return out


def _parse_chain(raw: Any, where: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise InvalidInput(f"{where} must be a list of provider names", code="invalid_settings")
    unknown = [p for p in raw if p not in PROVIDERS]
    if unknown:
        raise InvalidInput(
            f"{where}: unknown provider(s) {', '.join(map(repr, unknown))}; known: "
            + ", ".join(sorted(PROVIDERS)),
            code="invalid_settings",
        )
    if len(set(raw)) != len(raw):
        raise InvalidInput(f"{where} must not name a provider twice", code="invalid_settings")
    if len(raw) > _CHAIN_MAX:
        raise InvalidInput(f"{where} has more than {_CHAIN_MAX} entries", code="invalid_settings")
    return list(raw)


@dataclass(frozen=True)
class Event:
    id: uuid.UUID
    slug: str
    name: str
    visibility: Visibility
    settings: EventSettings = field(default_factory=EventSettings)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_record(cls, row: Record) -> Event:
        raw = row["settings"]
        stored = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        return cls(
            id=row["id"],
            slug=row["slug"],
            name=row["name"],
            visibility=row["visibility"],
            settings=EventSettings.from_db(stored),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "visibility": self.visibility,
            "settings": self.settings.to_api(),
            "createdAt": self.created_at.isoformat() if self.created_at else None,
            "updatedAt": self.updated_at.isoformat() if self.updated_at else None,
        }


_COLUMNS = "id, slug, name, visibility, settings, created_at, updated_at"


def _known(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    return body


async def create_event(db: Database, body: Mapping[str, Any]) -> Event:
    """Create from an API body ``{name, slug?, visibility?, settings?}``; 409 if the slug exists."""
    body = _known(body, {"name", "slug", "visibility", "settings"})
    if "name" not in body:
        raise InvalidInput("name is required", code="invalid_name")
    name = validate_name(body["name"])
    slug = validate_slug(body["slug"]) if body.get("slug") is not None else slug_from_name(name)
    visibility = validate_visibility(body.get("visibility", "public"))
    patch = parse_settings_patch(body["settings"]) if body.get("settings") is not None else {}
    stored = {k: v for k, v in patch.items() if v is not None}
    try:
        row = await db.fetchrow(
            f"insert into events (slug, name, visibility, settings)"
            f" values ($1, $2, $3, $4::jsonb) returning {_COLUMNS}",
            slug,
            name,
            visibility,
            json.dumps(stored),
        )
    except Conflict:
        raise Conflict(
            f"an event with slug {slug!r} already exists", code="duplicate_slug"
        ) from None
    assert row is not None
    return Event.from_record(row)


async def list_events(db: Database) -> list[Event]:
    rows = await db.fetch(f"select {_COLUMNS} from events order by created_at desc, id")
    return [Event.from_record(r) for r in rows]


def _where(id_or_slug: Any) -> tuple[str, Any]:
    """The column and value to find an event by; NotFound for anything that can't be one."""
    if isinstance(id_or_slug, uuid.UUID):
        return "id", id_or_slug
    if not isinstance(id_or_slug, str) or not id_or_slug or len(id_or_slug) > 64:
        raise NotFound("no such event", code="event_not_found")
    if _looks_like_uuid(id_or_slug):
        return "id", uuid.UUID(id_or_slug)
    return "slug", id_or_slug


async def resolve_event(db: Database, id_or_slug: str | uuid.UUID) -> Event:
    """The event with this uuid or slug, or :class:`NotFound` (code ``event_not_found``)."""
    column, value = _where(id_or_slug)
    row = await db.fetchrow(f"select {_COLUMNS} from events where {column} = $1", value)
    if row is None:
        raise NotFound("no such event", code="event_not_found")
    return Event.from_record(row)


async def update_event(db: Database, id_or_slug: str | uuid.UUID, body: Mapping[str, Any]) -> Event:
    """Apply an API patch ``{name?, slug?, visibility?, settings?}``; see the module docstring."""
    body = _known(body, {"name", "slug", "visibility", "settings"})
    column, value = _where(id_or_slug)
    name = validate_name(body["name"]) if "name" in body else None
    slug = validate_slug(body["slug"]) if "slug" in body else None
    visibility = validate_visibility(body["visibility"]) if "visibility" in body else None
    patch = parse_settings_patch(body["settings"]) if "settings" in body else {}
    merge = {k: v for k, v in patch.items() if v is not None}
    remove = [k for k, v in patch.items() if v is None]
    try:
        row = await db.fetchrow(
            f"update events set"
            f" name = coalesce($2, name), slug = coalesce($3, slug),"
            f" visibility = coalesce($4, visibility),"
            f" settings = (settings || $5::jsonb) - $6::text[],"
            f" updated_at = now()"
            f" where {column} = $1 returning {_COLUMNS}",
            value,
            name,
            slug,
            visibility,
            json.dumps(merge),
            remove,
        )
    except Conflict:
        raise Conflict(
            f"an event with slug {slug!r} already exists", code="duplicate_slug"
        ) from None
    if row is None:
        raise NotFound("no such event", code="event_not_found")
    return Event.from_record(row)


__all__ = [
    "PROVIDERS",
    "Event",
    "EventSettings",
    "create_event",
    "list_events",
    "parse_settings_patch",
    "resolve_event",
    "slug_from_name",
    "update_event",
    "validate_name",
    "validate_slug",
    "validate_visibility",
]
