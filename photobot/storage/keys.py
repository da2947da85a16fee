"""Object key layout, from the seed documents. Every key the app stores is built here.

- Booth/AI jobs (seed 001): ``events/{eventId}/{yyyy-mm-dd}/{jobId}/input.{ext}`` and
  ``events/{eventId}/{yyyy-mm-dd}/{jobId}/output_{n}.{ext}``.
- Image jobs (seed 002): ``raw/{unixms}-{hex}.{ext}`` uploaded by the backend, and
  ``optimized/{unixms}-{hex}-optimized.webp`` written by the optimizer for that raw key.

The builders are pure (the raw key's time and random part can be passed in for tests) and validate
each part, so an id containing ``/`` or ``..`` cannot smuggle in another path.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import date
from uuid import UUID

from .base import InvalidKey, validate_key

# One path segment of an id: letters, digits, '-', '_', '.', not starting with '.'.
_ID_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_EXT_RE = re.compile(r"[a-z0-9]{1,10}")
_RAW_NAME_RE = re.compile(r"raw/(?P<stem>[^/]+?)(?:\.[A-Za-z0-9]{1,10})?")

Id = str | int | UUID


def _segment(value: Id, what: str) -> str:
    if isinstance(value, bool):
        raise InvalidKey(f"{what} must be a string, int or UUID")
    text = str(value)
    if not _ID_RE.fullmatch(text):
        raise InvalidKey(f"{what} must be 1-128 of [A-Za-z0-9_.-] and not start with '.'")
    return text


def normalize_ext(ext: str) -> str:
    """``".JPG"`` -> ``"jpg"``; only short alphanumeric extensions are allowed."""
    clean = ext.lower().removeprefix(".") if isinstance(ext, str) else ""
    if not _EXT_RE.fullmatch(clean):
        raise InvalidKey("file extension must be 1-10 letters or digits")
    return clean


def _day(day: date) -> str:
    # datetime is a date subclass; formatting keeps only the calendar day the caller chose
    # (the caller decides the time zone: the event's local day).
    if not isinstance(day, date):
        raise InvalidKey("day must be a datetime.date")
    return f"{day:%Y-%m-%d}"


def job_prefix(event_id: Id, job_id: Id, day: date) -> str:
    """``events/{eventId}/{yyyy-mm-dd}/{jobId}/`` — everything stored for one job."""
    return f"events/{_segment(event_id, 'event_id')}/{_day(day)}/{_segment(job_id, 'job_id')}/"


def job_input_key(event_id: Id, job_id: Id, ext: str, day: date) -> str:
    """``events/{eventId}/{yyyy-mm-dd}/{jobId}/input.{ext}``."""
    return validate_key(f"{job_prefix(event_id, job_id, day)}input.{normalize_ext(ext)}")


def job_output_key(event_id: Id, job_id: Id, n: int, ext: str, day: date) -> str:
    """``events/{eventId}/{yyyy-mm-dd}/{jobId}/output_{n}.{ext}`` (``n`` >= 0)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidKey("output index n must be a non-negative integer")
    return validate_key(f"{job_prefix(event_id, job_id, day)}output_{n}.{normalize_ext(ext)}")


def raw_key(ext: str, *, unix_ms: int | None = None, token: str | None = None) -> str:
    """``raw/{unixms}-{hex}.{ext}``: a fresh, unguessable key for an uploaded original.

    ``token`` defaults to 12 random hex digits (48 bits: collisions within one millisecond are
    negligible, and the name cannot be guessed from the time alone).
    """
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise InvalidKey("unix_ms must be a non-negative integer")
    hex_part = secrets.token_hex(6) if token is None else token
    if not re.fullmatch(r"[0-9a-f]{1,64}", hex_part):
        raise InvalidKey("token must be lowercase hex")
    return validate_key(f"raw/{ms}-{hex_part}.{normalize_ext(ext)}")


def optimized_key(raw: str) -> str:
    """``raw/{name}.{ext}`` -> ``optimized/{name}-optimized.webp`` (the seed-002 worker's rule)."""
    validate_key(raw)
    match = _RAW_NAME_RE.fullmatch(raw)
    if match is None:
        raise InvalidKey("not a raw/ key")
    return validate_key(f"optimized/{match['stem']}-optimized.webp")


def photo_key(event_id: Id, name: str, ext: str, day: date) -> str:
    """``events/{eventId}/{yyyy-mm-dd}/photos/{name}.{ext}``: a gallery photo uploaded as is
    (operator upload, roaming photographer). ``name`` is content-derived (a SHA-256 prefix) so
    a redone upload lands on the same key."""
    if not re.fullmatch(r"[0-9a-f]{16,64}", name):
        raise InvalidKey("photo name must be lowercase hex")
    return validate_key(
        f"events/{_segment(event_id, 'event_id')}/{_day(day)}/photos/{name[:32]}"
        f".{normalize_ext(ext)}"
    )
