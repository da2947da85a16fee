"""Events API (operator only); semantics in :mod:`photobot.events`.

- ``POST /events {"name", "slug"?, "visibility"?, "settings"?}`` → 201 with the event and
  ``Location: /events/<slug>``; a taken slug (given or derived from the name) → 409
  ``duplicate_slug``.
- ``GET /events`` → ``{"events": [event, …]}``, newest first.
- ``GET /events/<idOrSlug>`` → the event; unknown → 404 ``event_not_found``.
- ``PATCH /events/<idOrSlug> {"name"?, "slug"?, "visibility"?, "settings"?}`` → the event.
- ``PUT /events/<idOrSlug>/frame`` (a PNG) → the event, its ``frameKey`` naming the upload.

An event is ``{"id", "slug", "name", "visibility", "settings": {"defaultStyle",
"fallbackChain", "frameKey", "branding"}, "createdAt", "updatedAt"}``.
"""

from __future__ import annotations

import hashlib

import trio
from quart import Blueprint, Response, jsonify, request

from photobot.errors import InvalidInput, PayloadTooLarge
from photobot.events import create_event, list_events, resolve_event, update_event
from photobot.imaging import probe_image
from web.auth import json_object, require_operator
from web.deps import services

bp = Blueprint("events", __name__)


@bp.post("/events")
@require_operator
async def post_event() -> Response:
    event = await create_event(services().db, await json_object())
    response = jsonify(event.to_api())
    response.status_code = 201
    response.headers["Location"] = f"/events/{event.slug}"
    return response


@bp.get("/events")
@require_operator
async def get_events() -> Response:
    events = await list_events(services().db)
    return jsonify({"events": [e.to_api() for e in events]})


@bp.get("/events/<id_or_slug>")
@require_operator
async def get_event(id_or_slug: str) -> Response:
    return jsonify((await resolve_event(services().db, id_or_slug)).to_api())


@bp.patch("/events/<id_or_slug>")
@require_operator
async def patch_event(id_or_slug: str) -> Response:
    body = await json_object()
    return jsonify((await update_event(services().db, id_or_slug, body)).to_api())


#: A frame overlay is a PNG with transparency, at most the size of a print.
MAX_FRAME_BYTES = 15 * 1024 * 1024


@bp.put("/events/<id_or_slug>/frame")
@require_operator
async def put_frame(id_or_slug: str) -> Response:
    """Upload the event's frame overlay: the raw PNG as the body (``Content-Type: image/png``)
    or a multipart field ``frame``. Stored, then named in the event's ``frameKey``."""
    s = services()
    event = await resolve_event(s.db, id_or_slug)
    files = await request.files
    if "frame" in files:
        data = files["frame"].read(MAX_FRAME_BYTES + 1)
    else:
        data = await request.get_data(cache=False)
    if len(data) > MAX_FRAME_BYTES:
        raise PayloadTooLarge(f"a frame must be at most {MAX_FRAME_BYTES // 2**20} MB")
    info = await trio.to_thread.run_sync(lambda: probe_image(data, max_pixels=40_000_000))
    if info.content_type != "image/png":
        raise InvalidInput("a frame must be a PNG (with transparency)", code="invalid_frame")
    key = f"events/{event.id}/frame-{hashlib.sha256(data).hexdigest()[:16]}.png"
    await s.storage.put(key, data, "image/png")
    updated = await update_event(s.db, str(event.id), {"settings": {"frameKey": key}})
    return jsonify(updated.to_api())
