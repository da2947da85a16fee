"""Cameras, clip requests and the manual trigger (operators only); semantics in
:mod:`photobot.cctv.store` and :mod:`actors.cctv`.

- ``POST /cameras {"boothId"?, "name"?, "baseUrl", "trackId"?, "username", "password",
  "timeMode"?}`` → 201 the camera. ``boothId`` defaults to this box's ``BOOTH_ID``, ``trackId``
  to 101 (channel 1, main stream), ``timeMode`` to ``local`` (the NVR's ``Z`` times are its
  wall clock; ``utc`` when they really are UTC). The password is stored encrypted and is never
  returned.
- ``GET /cameras?boothId=`` → ``{"cameras": [...]}``; ``DELETE /cameras/<id>`` → 204.
- ``POST /cameras/<id>/test`` → ``{"ok": true, "localTime", "timeZone", "utcOffsetMinutes"}``
  from the NVR's ``/ISAPI/System/time`` (the offset is remembered for ``local`` mode); an NVR
  that refuses the password → 502 ``nvr_auth_failed``, unreachable → 502 ``nvr_unavailable``.
- ``POST /clip-requests {"cameraId", "start", "end", "sessionId"?}`` (ISO 8601 with a zone)
  → 201 the request (``READY_FOR_BATCH`` at once when its end is older than the flush delay).
- ``GET /clip-requests?status=&cameraId=&sessionId=&limit=&before=`` → ``{"items", "nextBefore"}``
  newest first; ``GET /clip-requests/<id>`` → the request with its ``clip`` (signed ``url`` and
  ``posterUrl``, ``durationSeconds``, ``sizeBytes``) or null.
- ``POST /clip-requests/<id>/trigger`` → 202 the request, our usual error shape otherwise.
- ``POST /trigger {"clip_request_id": N}`` → 202 ``{"status": "accepted", "clip_request_id",
  "message"}``; 400 / 404 ``{"status": "error", "message"}`` — seed 003's worker API, kept
  byte-compatible for its callers (but behind the operator login: the box is on a shared LAN).

A trigger makes the request ``READY_FOR_BATCH`` in PostgreSQL first, then tells the poller; so
a full inbox (503) or a restart loses nothing: the next batch takes it (with auto batch on).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import trio
from quart import Blueprint, Response, jsonify, request

from actors.registry import validate_booth_id
from photobot.cctv.isapi import IsapiClient
from photobot.cctv.store import STATUSES, Clip, ClipRequest
from photobot.errors import InvalidInput, NotFound, PhotobotError, Unavailable
from photobot.root import Services
from web.auth import json_object, require_operator
from web.deps import services

bp = Blueprint("cctv", __name__)

_CAMERA_FIELDS = {"boothId", "name", "baseUrl", "trackId", "username", "password", "timeMode"}


def _text(body: dict[str, Any], name: str, *, required: bool = True, max_len: int = 200) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidInput(
            f"{name} must be a string of 1-{max_len} characters", code="invalid_field"
        )
    return value.strip()


def _time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be an ISO 8601 time", code="invalid_time")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 time", code="invalid_time") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{name} needs a time zone (…Z or …+07:00)", code="invalid_time")
    return parsed


def _base_url(text: str) -> str:
    """``http(s)://host[:port][/path]``, no credentials in it (they would show in listings and
    logs: the username and password have their own fields)."""
    try:
        parts = urlsplit(text.rstrip("/"))
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            "baseUrl must be the NVR's address, like http://192.168.1.64", code="invalid_field"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidInput(
            "baseUrl must not carry a username or password: use those fields", code="invalid_field"
        )
    if parts.query or parts.fragment:
        raise InvalidInput("baseUrl must not have a query or fragment", code="invalid_field")
    del port  # parsed only to refuse a malformed port
    return text.rstrip("/")


def _request_id(value: Any) -> int:
    """A clip request id as the database can hold it (bigint)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value < 2**63:
        raise InvalidInput("clip_request_id must be a positive integer", code="invalid_field")
    return value


@bp.post("/cameras")
@require_operator
async def add_camera() -> tuple[Response, int]:
    s = services()
    body = await json_object()
    unknown = sorted(set(body) - _CAMERA_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    base_url = _base_url(_text(body, "baseUrl"))
    track = body.get("trackId", 101)
    if not isinstance(track, int) or isinstance(track, bool) or not 1 <= track <= 99_999:
        raise InvalidInput("trackId must be a number like 101 (channel * 100 + stream)",
                           code="invalid_field")  # fmt: skip
    time_mode = body.get("timeMode", "local")
    if time_mode not in ("local", "utc"):
        raise InvalidInput("timeMode must be 'local' or 'utc'", code="invalid_field")
    camera = await s.clips.add_camera(
        booth_id=validate_booth_id(body.get("boothId") or s.settings.booth_id),
        name=_text(body, "name", required=False, max_len=100) or "camera",
        base_url=base_url,
        track_id=track,
        username=_text(body, "username", max_len=100),
        password=_text(body, "password", max_len=200),
        time_mode=time_mode,
    )
    return jsonify(camera.to_api()), 201


@bp.get("/cameras")
@require_operator
async def list_cameras() -> Response:
    cameras = await services().clips.cameras(request.args.get("boothId") or None)
    return jsonify({"cameras": [c.to_api() for c in cameras]})


@bp.delete("/cameras/<camera_id>")
@require_operator
async def remove_camera(camera_id: str) -> Response:
    await services().clips.remove_camera(camera_id)
    return Response("", status=204)


@bp.post("/cameras/<camera_id>/test")
@require_operator
async def test_camera(camera_id: str) -> Response:
    s = services()
    camera = await s.clips.camera(camera_id)
    client = IsapiClient(
        camera.base_url, camera.username, s.clips.password(camera),
        time_mode=camera.time_mode, timeout=min(10.0, s.settings.nvr_timeout_seconds),
    )  # fmt: skip
    async with client as nvr:
        device = await nvr.device_time()
    minutes = int(device.wall_clock_offset.total_seconds() // 60)
    await s.clips.remember_offset(camera.id, minutes)
    return jsonify(
        {
            "ok": True,
            "localTime": device.local_time.isoformat(),
            "timeZone": device.time_zone,
            "utcOffsetMinutes": minutes,
        }
    )


async def clip_json(s: Services, clip: Clip | None) -> dict[str, Any] | None:
    """A clip as the API gives it (operators and the guest's own page): signed URLs."""
    if clip is None:
        return None
    keys = [clip.storage_key, *([clip.poster_key] if clip.poster_key else [])]
    urls = await s.storage.signed_urls(keys, s.settings.signed_url_ttl_seconds)
    return {
        "id": clip.id,
        "url": urls[clip.storage_key],
        "posterUrl": urls.get(clip.poster_key or ""),
        "durationSeconds": round(clip.duration_seconds, 2),
        "sizeBytes": clip.size_bytes,
        "createdAt": clip.created_at.isoformat(),
    }


async def _request_json(s: Services, item: ClipRequest, *, with_clip: bool) -> dict[str, Any]:
    body = item.to_api()
    if with_clip:
        body["clip"] = await clip_json(s, await s.clips.clip_of(item.id))
    return body


@bp.post("/clip-requests")
@require_operator
async def create_request() -> tuple[Response, int]:
    s = services()
    body = await json_object()
    unknown = sorted(set(body) - {"cameraId", "start", "end", "sessionId"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    session = body.get("sessionId")
    if session is not None and not isinstance(session, str):
        raise InvalidInput("sessionId must be a string", code="invalid_field")
    item = await s.clips.create_request(
        _text(body, "cameraId", max_len=64),
        _time(body.get("start"), "start"),
        _time(body.get("end"), "end"),
        session,
    )
    return jsonify(await _request_json(s, item, with_clip=False)), 201


@bp.get("/clip-requests")
@require_operator
async def list_requests() -> Response:
    s = services()
    args = request.args
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", code="invalid_status")
    try:
        limit = int(args.get("limit", "50")[:6])
        before = _request_id(int(args["before"][:20])) if args.get("before") else None
    except ValueError:
        raise InvalidInput("limit and before must be numbers", code="invalid_field") from None
    if not 1 <= limit <= 200:
        raise InvalidInput("limit must be between 1 and 200", code="invalid_limit")
    items = await s.clips.requests(
        status=status,
        camera_id=args.get("cameraId") or None,
        session_id=args.get("sessionId") or None,
        limit=limit,
        before_id=before,
    )
    out = [
        await _request_json(s, item, with_clip=item.status == "CLIP_GENERATED") for item in items
    ]
    for entry in out:
        entry.setdefault("clip", None)
    next_before = items[-1].id if len(items) == limit else None
    return jsonify({"items": out, "nextBefore": next_before})


@bp.get("/clip-requests/<int:request_id>")
@require_operator
async def get_request(request_id: int) -> Response:
    s = services()
    item = await s.clips.request(_request_id(request_id))
    return jsonify(await _request_json(s, item, with_clip=True))


async def _trigger(request_id: int) -> ClipRequest:
    s = services()
    item = await s.clips.trigger(_request_id(request_id), datetime.now().astimezone())
    try:
        s.wiring.clip_trigger[0].send_nowait(item.id)
    except trio.WouldBlock:
        # Ready in PostgreSQL already: the next batch takes it.
        if not s.settings.auto_batch_enabled:
            raise Unavailable("the CCTV poller is busy; try again shortly", code="busy") from None
    return item


@bp.post("/clip-requests/<int:request_id>/trigger")
@require_operator
async def trigger_request(request_id: int) -> tuple[Response, int]:
    item = await _trigger(request_id)
    return jsonify(await _request_json(services(), item, with_clip=False)), 202


@bp.post("/trigger")
@require_operator
async def trigger() -> tuple[Response, int]:
    """Seed 003's ``POST /trigger``, answers in its shape."""
    try:
        body = await json_object()
        request_id = _request_id(body.get("clip_request_id"))
        await _trigger(request_id)
    except NotFound:
        return jsonify({"status": "error", "message": "Clip request not found"}), 404
    except Unavailable as exc:
        return jsonify({"status": "error", "message": exc.message}), 503
    except PhotobotError as exc:  # bad JSON, a bad id, not ready: all the seed's 400
        return jsonify({"status": "error", "message": exc.message}), 400
    return (
        jsonify(
            {
                "status": "accepted",
                "clip_request_id": request_id,
                "message": "Job queued for processing",
            }
        ),
        202,
    )
