"""The seed-002 image-jobs API, for outside tools and external image workers.

Every success is the seed's envelope ``{"success": true, "data": …}``; ``data`` is the seed's
record (:func:`image_job_json`): ``_id``, ``entityType``, ``entityId``, ``sourceImageURL``,
``sourceImageKey``, ``outputImageURL``, ``outputImageKey``, ``status`` (UPPERCASE),
``errorMsg``, ``originalFilename``, ``mimetype``, ``fileSize``, ``createdAt``, ``updatedAt``,
``processedAt``. ``_id`` is a UUID string (the seed's was a MongoDB ObjectID); times are ISO 8601
in UTC with milliseconds (``2024-01-01T00:00:00.000Z``); URLs are signed and expire after
``SIGNED_URL_TTL_SECONDS`` (absolute: ``PUBLIC_BASE_URL`` or the address the request came to).
Errors keep the app's shape plus the seed's flag: ``{"success": false, "error": {code, message}}``.

- ``GET /api/image-jobs/:id`` — operator, or the worker token (the seed's worker reads the job
  here to find ``sourceImageURL``).
- ``GET /api/image-jobs?entityType=&entityId=&status=&limit=`` — operator; newest first.
- ``POST /api/image-jobs/:id/retry`` — operator; FAILED → PENDING, queued again (409 otherwise).
- ``DELETE /api/image-jobs/:id`` — operator; deletes the job's objects and the record (a photo's
  original is kept: it belongs to the photo).
- ``PATCH /api/image-jobs/:id/status`` — the worker callback: ``{"status": "PROCESSING"}``,
  ``{"status": "COMPLETED", "outputImageURL", "outputImageKey"}`` or ``{"status": "FAILED",
  "errorMsg"}``. Requires ``Authorization: Bearer <WORKER_CALLBACK_TOKEN>`` or ``X-Worker-Token``;
  with no token configured every callback is refused (401, and the message says so). Invalid
  transitions are 409 ``invalid_transition``; a COMPLETED whose ``outputImageKey`` is not in
  storage is 422 ``output_missing``. ``outputImageURL`` is accepted and ignored: the URL is
  always signed afresh from the key.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

from quart import Blueprint, Response, jsonify, request

from photobot import errors
from photobot.errors import InvalidInput, Unauthorized
from photobot.image_jobs import ENTITY_TYPES, STATUSES, ImageJob
from photobot.root import Services
from web.auth import authenticator, bearer_token, json_object, require_operator
from web.deps import services
from web.errors import status_for

bp = Blueprint("image_jobs", __name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


# -- errors in this API carry the seed's "success": false as well -----------------------------


@bp.errorhandler(errors.PhotobotError)
async def _error(exc: errors.PhotobotError) -> Response:
    status = status_for(exc)
    response = jsonify({"success": False, "error": {"code": exc.code, "message": exc.message}})
    response.status_code = status
    if isinstance(exc, errors.Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    if request.method in ("POST", "PUT", "PATCH") and status >= 400:
        response.headers["Connection"] = "close"  # as web.errors: the body may be unread
    return response


# -- worker authentication ---------------------------------------------------------------------


def _presented_worker_token() -> str | None:
    token = request.headers.get("X-Worker-Token")
    if token:
        return token.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _is_worker(s: Services) -> bool:
    expected = s.settings.worker_callback_token
    presented = _presented_worker_token()
    if expected is None or not expected.get_secret_value() or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.get_secret_value().encode())


def _require_worker(s: Services) -> None:
    expected = s.settings.worker_callback_token
    if expected is None or not expected.get_secret_value():
        raise Unauthorized(
            "worker callbacks are disabled on this booth: set WORKER_CALLBACK_TOKEN and send it"
            " as 'Authorization: Bearer <token>' or 'X-Worker-Token'",
            code="worker_token_not_configured",
        )
    if _presented_worker_token() is None:
        raise Unauthorized(
            "send the worker token as 'Authorization: Bearer <token>' or 'X-Worker-Token'"
        )
    if not _is_worker(s):
        raise Unauthorized("invalid worker token")


# -- the record --------------------------------------------------------------------------------


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


async def _url(s: Services, key: str | None) -> str | None:
    if not key:
        return None
    url = await s.storage.signed_url(key, s.settings.signed_url_ttl_seconds)
    if url.startswith("/"):  # the local storage's /files/… URL: make it absolute
        base = s.settings.public_base_url or request.host_url
        url = urljoin(base.rstrip("/") + "/", url.lstrip("/"))
    return url


async def image_job_json(s: Services, job: ImageJob) -> dict[str, Any]:
    """The seed's image job record (field names and UPPERCASE status as in seed 002)."""
    return {
        "_id": job.id,
        "entityType": job.entity_type,
        "entityId": job.entity_id,
        "sourceImageURL": await _url(s, job.source_image_key),
        "sourceImageKey": job.source_image_key,
        "outputImageURL": await _url(s, job.output_image_key),
        "outputImageKey": job.output_image_key,
        "status": job.status,
        "errorMsg": job.error_msg,
        "originalFilename": job.original_filename,
        "mimetype": job.mimetype,
        "fileSize": job.file_size,
        "createdAt": _time(job.created_at),
        "updatedAt": _time(job.updated_at),
        "processedAt": _time(job.processed_at),
    }


async def _ok(s: Services, job: ImageJob, status: int = 200) -> tuple[Response, int]:
    return jsonify({"success": True, "data": await image_job_json(s, job)}), status


# -- routes ------------------------------------------------------------------------------------


@bp.get("/api/image-jobs/<image_job_id>")
async def get_image_job(image_job_id: str) -> tuple[Response, int]:
    s = services()
    if not _is_worker(s):
        authenticator().verify(bearer_token())  # otherwise an operator
    return await _ok(s, await s.image_jobs.get(image_job_id))


@bp.get("/api/image-jobs")
@require_operator
async def list_image_jobs() -> tuple[Response, int]:
    s = services()
    args = request.args
    entity_type = args.get("entityType") or None
    entity_id = args.get("entityId") or None
    status = (args.get("status") or "").upper() or None
    if entity_type is not None and entity_type not in ENTITY_TYPES:
        raise InvalidInput(f"entityType must be one of {', '.join(ENTITY_TYPES)}")
    if entity_id is not None and len(entity_id) > 200:
        raise InvalidInput("entityId is too long")
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", code="invalid_status")
    raw_limit = args.get("limit") or str(DEFAULT_LIMIT)
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    found = await s.image_jobs.list_jobs(
        entity_type=entity_type, entity_id=entity_id, status=status, limit=int(raw_limit)
    )
    data = [await image_job_json(s, job) for job in found]
    return jsonify({"success": True, "data": data}), 200


@bp.post("/api/image-jobs/<image_job_id>/retry")
@require_operator
async def retry_image_job(image_job_id: str) -> tuple[Response, int]:
    s = services()
    return await _ok(s, await s.image_jobs.retry(image_job_id))


@bp.delete("/api/image-jobs/<image_job_id>")
@require_operator
async def delete_image_job(image_job_id: str) -> tuple[Response, int]:
    s = services()
    job = await s.image_jobs.delete(image_job_id)
    body = {"success": True, "message": "image job deleted", "data": {"_id": job.id}}
    return jsonify(body), 200


@bp.patch("/api/image-jobs/<image_job_id>/status")
async def update_image_job_status(image_job_id: str) -> tuple[Response, int]:
    s = services()
    _require_worker(s)
    body = await json_object()
    status = body.get("status")
    if not isinstance(status, str):
        raise InvalidInput("status must be PROCESSING, COMPLETED or FAILED", code="invalid_status")
    output_key = body.get("outputImageKey")
    error_msg = body.get("errorMsg")
    if output_key is not None and not isinstance(output_key, str):
        raise InvalidInput("outputImageKey must be a string")
    if error_msg is not None and not isinstance(error_msg, str):
        raise InvalidInput("errorMsg must be a string")
    job = await s.image_jobs.transition(
        image_job_id, status, output_image_key=output_key, error_msg=error_msg
    )
    return await _ok(s, job)
