"""The booth's active session ("Pro Capture", seed 000) and its recent jobs; operators only.

Semantics in :mod:`actors.registry` (``SessionRegistry.start_active`` and friends).

- ``POST /booth/<boothId>/active-session {"sessionId"?, "eventId", "code"?, "mode"?, "styleId"?}``
  → 200 ``{"boothId", "sessionId", "eventId", "name", "whatsapp", "ttlSeconds", "mode",
  "styleId", "startedAt"}``. ``mode`` is ``session`` (default: a guest's session, by
  ``sessionId``, or by ``code`` alone) or ``gallery`` (no guest). Unknown event or session → 404;
  expired session → 409 ``session_expired``; another event's → 409 ``session_event_mismatch``;
  wrong code → 409 ``session_code_mismatch``.
- ``GET …/active-session`` → the same plus ``ttlSecondsRemaining``; none → 404
  ``no_active_session``.
- ``DELETE …/active-session`` → ``{"boothId", "cleared": true}`` (``false`` when there was none).
- ``POST …/active-session/refresh`` → ``{"boothId", "refreshed": true, "ttlSeconds"}``; none → 404.
- ``GET /booth/<boothId>/recent-jobs?limit=`` (1-200, default 20) → ``{"boothId", "active":
  <the GET shape or null>, "items": [jobs of this booth, newest first]}``.

A ``boothId`` that is not 1-64 characters of ``[A-Za-z0-9_.-]`` is a 422 ``invalid_booth_id``;
Redis unreachable is a 503 ``redis_unavailable``.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, jsonify, request

from actors.registry import ActiveSession, validate_booth_id
from photobot import jobs
from photobot.errors import InvalidInput, NotFound
from web.auth import json_object, require_operator
from web.deps import services
from web.routes.jobs import _signed, job_json

bp = Blueprint("booth", __name__)

_START_FIELDS = {"sessionId", "eventId", "code", "mode", "styleId"}
RECENT_DEFAULT = 20
RECENT_MAX = 200


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 100:
        raise InvalidInput(f"{name} must be a non-empty string", code="invalid_field")
    return value


def _active_json(active: ActiveSession, ttl_seconds: int) -> dict[str, Any]:
    return {**active.to_api(), "ttlSeconds": ttl_seconds}


async def _current(booth_id: str) -> dict[str, Any] | None:
    registry = services().registry
    found = await registry.active_with_ttl(booth_id)
    if found is None:
        return None
    active, remaining = found
    return {**_active_json(active, registry.active_ttl), "ttlSecondsRemaining": remaining}


@bp.post("/booth/<booth_id>/active-session")
@require_operator
async def start_active(booth_id: str) -> Response:
    booth = validate_booth_id(booth_id)
    body = await json_object()
    unknown = sorted(set(body) - _START_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    event_ref = _optional_str(body, "eventId")
    if event_ref is None:
        raise InvalidInput("eventId is required (the event's id or slug)", code="missing_field")
    active, ttl = await services().registry.start_active(
        booth,
        event_id_or_slug=event_ref,
        session_id=_optional_str(body, "sessionId"),
        code=_optional_str(body, "code"),
        mode=_optional_str(body, "mode") or "session",
        style_id=_optional_str(body, "styleId"),
        operator_id=g.operator.id,
    )
    return jsonify(_active_json(active, ttl))


@bp.get("/booth/<booth_id>/active-session")
@require_operator
async def get_active(booth_id: str) -> Response:
    current = await _current(validate_booth_id(booth_id))
    if current is None:
        raise NotFound("this booth has no active session", code="no_active_session")
    return jsonify(current)


@bp.delete("/booth/<booth_id>/active-session")
@require_operator
async def clear_active(booth_id: str) -> Response:
    booth = validate_booth_id(booth_id)
    cleared = await services().registry.clear_active(booth, reason="stopped")
    return jsonify({"boothId": booth, "cleared": cleared})


@bp.post("/booth/<booth_id>/active-session/refresh")
@require_operator
async def refresh_active(booth_id: str) -> Response:
    booth = validate_booth_id(booth_id)
    ttl = await services().registry.refresh_active(booth)
    if ttl is None:
        raise NotFound("this booth has no active session", code="no_active_session")
    return jsonify({"boothId": booth, "refreshed": True, "ttlSeconds": ttl})


@bp.get("/booth/<booth_id>/recent-jobs")
@require_operator
async def recent_jobs(booth_id: str) -> Response:
    booth = validate_booth_id(booth_id)
    try:
        limit = int(request.args.get("limit", str(RECENT_DEFAULT)))
    except ValueError:
        raise InvalidInput("limit must be a number", code="invalid_limit") from None
    if not 1 <= limit <= RECENT_MAX:
        raise InvalidInput(f"limit must be between 1 and {RECENT_MAX}", code="invalid_limit")
    s = services()
    active = await _current(booth)
    page = await jobs.list_page(s.db, booth_id=booth, limit=limit)
    items = [job_json(j, urls=await _signed(s, j)) for j in page]
    return jsonify({"boothId": booth, "active": active, "items": items})
