"""Photographer upload (operators): many photos straight into an event's gallery.

``POST /events/<idOrSlug>/photos`` — multipart, every file field (``photos``, ``photo``,
``file``…) is one photo. Each file is checked by content, stored, and published at once; a bad
file does not stop the others. The answer lists what became of each file, in order:
``{"photos": [{"filename", "photoId", "created"}], "errors": [{"filename", "error"}]}``; 201
when at least one photo was published, 422 when none was. The same file uploaded again into
the same event is the same photo (``created: false``).

``DELETE /events/<idOrSlug>/photos/<photoId>`` hides a photo from the gallery.
"""

from __future__ import annotations

from datetime import date
from functools import partial
from typing import Any

import trio
from quart import Blueprint, Response, current_app, g, jsonify, request

from photobot import photos
from photobot.errors import InvalidInput, NotFound
from photobot.events import resolve_event
from photobot.imaging import probe_image_file
from photobot.root import Services
from photobot.storage.keys import photo_key
from web.auth import require_operator
from web.deps import services
from web.uploads import SpooledFile, receive_upload

bp = Blueprint("photos", __name__)

MAX_PHOTO_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 60_000_000
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_limiter = trio.CapacityLimiter(2)  # "upload-probe": header checks


#: Files in one request; the console sends one per request, a script may send a folder.
MAX_FILES = 200


@bp.post("/events/<id_or_slug>/photos")
@require_operator
async def upload(id_or_slug: str) -> tuple[Response, int]:
    """Every file streams to the spool as it arrives (:mod:`web.uploads`), then to storage."""
    s = services()
    event = await resolve_event(s.db, id_or_slug)
    async with receive_upload(
        request, s.upload_spool, max_file_bytes=MAX_PHOTO_BYTES, max_files=MAX_FILES,
        oversized="mark", timeout=current_app.config["BODY_TIMEOUT"],
    ) as received:  # fmt: skip
        if not received.files:
            raise InvalidInput("attach one or more photos as multipart files", code="missing_field")
        done: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for spooled in received.files:
            name = (spooled.filename or "photo")[:200]
            try:
                photo, created = await _publish(s, str(event.id), spooled)
            except InvalidInput as exc:
                errors.append(
                    {"filename": name, "error": {"code": exc.code, "message": exc.message}}
                )
                continue
            done.append({"filename": name, "photoId": photo.id, "created": created})
    status = 201 if done else 422
    return jsonify({"eventId": str(event.id), "photos": done, "errors": errors}), status


async def _publish(s: Services, event_id: str, spooled: SpooledFile) -> tuple[photos.Photo, bool]:
    if spooled.oversized:
        raise InvalidInput(f"larger than {MAX_PHOTO_BYTES // 2**20} MB", code="payload_too_large")
    info = await trio.to_thread.run_sync(
        partial(probe_image_file, spooled.path, max_pixels=MAX_PIXELS), limiter=_limiter
    )
    key = photo_key(event_id, spooled.sha256, _EXTENSIONS[info.content_type], date.today())
    await s.storage.put_file(key, spooled.path, info.content_type)
    return await s.publisher.publish(
        photos.NewPhoto(
            event_id=event_id,
            source="upload",
            original_key=key,
            content_type=info.content_type,
            size_bytes=spooled.size,
            sha256=spooled.sha256,
            width=info.width,
            height=info.height,
            uploaded_by=g.operator.id,
        )
    )


@bp.delete("/events/<id_or_slug>/photos/<photo_id>")
@require_operator
async def hide(id_or_slug: str, photo_id: str) -> Response:
    s = services()
    event = await resolve_event(s.db, id_or_slug)
    hidden = await s.db.fetchval(
        "update photos set deleted_at = coalesce(deleted_at, now())"
        " where id = $1 and event_id = $2 returning id",
        photos.parse_id(photo_id),
        event.id,
    )
    if hidden is None:
        raise NotFound("no such photo in this event", code="photo_not_found")
    return jsonify({"photoId": photo_id, "deleted": True})
