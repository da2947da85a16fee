"""Events API (operator only); semantics in :mod:`photobot.events`.

- ``POST /events {"name", "slug"?, "visibility"?, "settings"?}`` → 201 with the event and
  ``Location: /events/<slug>``; a taken slug (given or derived from the name) → 409
  ``duplicate_slug``.
- ``GET /events`` → ``{"events": [event, …]}``, newest first.
- ``GET /events/<idOrSlug>`` → the event; unknown → 404 ``event_not_found``.
- ``PATCH /events/<idOrSlug> {"name"?, "slug"?, "visibility"?, "settings"?}`` → the event.

An event is ``{"id", "slug", "name", "visibility", "settings": {"defaultStyle",
"fallbackChain", "frameKey", "branding"}, "createdAt", "updatedAt"}``.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from photobot.events import create_event, list_events, resolve_event, update_event
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
