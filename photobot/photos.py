"""Photos: what an event's gallery shows. Published the moment the original is stored.

A photo comes from a finished job (its best output), an operator's upload straight into an
event, or a hot folder bound to the gallery (roaming photographer). Its derivatives (optimized
WebP, small/medium/large thumbnails) follow later through an image job; until then the gallery
falls back to the sizes that exist. ``deleted_at`` hides a photo.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from photobot.db import Database, Record, from_record
from photobot.errors import NotFound

_COLUMNS = (
    "id, event_id, session_id, job_id, source, original_key, content_type, size_bytes, sha256,"
    " width, height, optimized_key, thumb_small_key, thumb_medium_key, thumb_large_key,"
    " derivatives_ready_at, uploaded_by, created_at, deleted_at"
)


@dataclass(frozen=True)
class Photo:
    id: str
    event_id: str
    session_id: str | None
    job_id: str | None
    source: str
    original_key: str
    content_type: str
    size_bytes: int
    sha256: str | None
    width: int | None
    height: int | None
    optimized_key: str | None
    thumb_small_key: str | None
    thumb_medium_key: str | None
    thumb_large_key: str | None
    derivatives_ready_at: datetime | None
    uploaded_by: str | None
    created_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_record(cls, r: Record) -> Photo:
        return from_record(cls, r)


@dataclass(frozen=True)
class NewPhoto:
    event_id: str
    source: str  # job | upload | hotfolder
    original_key: str
    content_type: str
    size_bytes: int
    sha256: str | None = None
    session_id: str | None = None
    job_id: str | None = None
    width: int | None = None
    height: int | None = None
    uploaded_by: str | None = None


def parse_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound("no such photo", code="photo_not_found") from None


async def insert(db: Database, new: NewPhoto) -> tuple[Photo, bool]:
    """Insert, or return the photo already made from the same job / hot folder file."""
    row = await db.fetchrow(
        f"""insert into photos (event_id, session_id, job_id, source, original_key, content_type,
                                size_bytes, sha256, width, height, uploaded_by)
            values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            on conflict do nothing
            returning {_COLUMNS}""",
        uuid.UUID(new.event_id),
        None if new.session_id is None else uuid.UUID(new.session_id),
        None if new.job_id is None else uuid.UUID(new.job_id),
        new.source,
        new.original_key,
        new.content_type,
        new.size_bytes,
        new.sha256,
        new.width,
        new.height,
        new.uploaded_by,
    )
    if row is not None:
        return Photo.from_record(row), True
    if new.job_id is not None:
        existing = await db.fetchrow(
            f"select {_COLUMNS} from photos where job_id = $1", uuid.UUID(new.job_id)
        )
    else:
        existing = await db.fetchrow(
            f"select {_COLUMNS} from photos where event_id = $1 and sha256 = $2"
            " and source = $3 order by created_at limit 1",
            uuid.UUID(new.event_id),
            new.sha256,
            new.source,
        )
    if existing is None:  # a conflict we do not know how to resolve: surface it
        raise NotFound("the photo could not be stored", code="photo_conflict")
    return Photo.from_record(existing), False


async def get(db: Database, photo_id: str, *, include_deleted: bool = False) -> Photo:
    row = await db.fetchrow(f"select {_COLUMNS} from photos where id = $1", parse_id(photo_id))
    if row is None or (row["deleted_at"] is not None and not include_deleted):
        raise NotFound("no such photo", code="photo_not_found")
    return Photo.from_record(row)


async def set_derivatives(
    db: Database,
    photo_id: str,
    *,
    optimized_key: str | None,
    small_key: str | None,
    medium_key: str | None,
    large_key: str | None,
    width: int | None = None,
    height: int | None = None,
) -> Photo:
    row = await db.fetchrow(
        f"""update photos set optimized_key = $2, thumb_small_key = $3, thumb_medium_key = $4,
                   thumb_large_key = $5, width = coalesce($6, width),
                   height = coalesce($7, height), derivatives_ready_at = now()
            where id = $1 returning {_COLUMNS}""",
        parse_id(photo_id),
        optimized_key,
        small_key,
        medium_key,
        large_key,
        width,
        height,
    )
    if row is None:
        raise NotFound("no such photo", code="photo_not_found")
    return Photo.from_record(row)
