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

import hashlib
from datetime import date
from typing import Any

import trio
from quart import Blueprint, Response, g, jsonify, request

from photobot import photos
from photobot.errors import InvalidInput, NotFound
from photobot.events import resolve_event
from photobot.imaging import ImageInfo, probe_image
from photobot.storage.keys import photo_key
from web.auth import require_operator
from web.deps import services

bp = Blueprint("photos", __name__)

MAX_PHOTO_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 60_000_000
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_limiter = trio.CapacityLimiter(2)  # "upload-probe": header checks and hashing


def _inspect(data: bytes) -> tuple[ImageInfo, str]:
    return probe_image(data, max_pixels=MAX_PIXELS), hashlib.sha256(data).hexdigest()


@bp.post("/events/<id_or_slug>/photos")
@require_operator
async def upload(id_or_slug: str) -> tuple[Response, int]:
    s = services()
    event = await resolve_event(s.db, id_or_slug)
    files = await request.files
    uploads = [f for _, f in files.items(multi=True)]
    if not uploads:
        raise InvalidInput("attach one or more photos as multipart files", code="missing_field")
    done: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for upload in uploads:
        name = (upload.filename or "photo")[:200]
        try:
            data = upload.read(MAX_PHOTO_BYTES + 1)
            if len(data) > MAX_PHOTO_BYTES:
                raise InvalidInput(
                    f"larger than {MAX_PHOTO_BYTES // 2**20} MB", code="payload_too_large"
                )
            info, digest = await trio.to_thread.run_sync(_inspect, data, limiter=_limiter)
            key = photo_key(str(event.id), digest, _EXTENSIONS[info.content_type], date.today())
            await s.storage.put(key, data, info.content_type)
            photo, created = await s.publisher.publish(
                photos.NewPhoto(
                    event_id=str(event.id),
                    source="upload",
                    original_key=key,
                    content_type=info.content_type,
                    size_bytes=len(data),
                    sha256=digest,
                    width=info.width,
                    height=info.height,
                    uploaded_by=g.operator.id,
                )
            )
        except InvalidInput as exc:
            errors.append({"filename": name, "error": {"code": exc.code, "message": exc.message}})
            continue
        done.append({"filename": name, "photoId": photo.id, "created": created})
    status = 201 if done else 422
    return jsonify({"eventId": str(event.id), "photos": done, "errors": errors}), status


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
