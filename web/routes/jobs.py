"""The jobs API (operators only): submit a photo, follow it, download, retry, cancel, list.

``POST /jobs`` accepts a photo only once it is stored and its job row committed; from then on
the job reaches exactly one final state. A double click is harmless: with the same
``Idempotency-Key`` the second request gets the first request's job (200 instead of 201). The
same holds for ``POST /jobs/:id/retry``: one key, one child job. A key that already names a
different job (another photo, another parent) is a 409 ``idempotency_reused``.

``POST /jobs`` is rate limited per operator login (``JOBS_RATE_LIMIT_PER_MINUTE``; 429 with
``Retry-After``). A request whose key already names a job is not counted: it cannot make a job,
and a console resending its outbox after a lost answer must not be locked out by its own resends.
"""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime
from functools import partial
from typing import Any

import trio
from quart import Blueprint, Response, current_app, g, jsonify, redirect, request

from photobot import jobs, ratelimit
from photobot.errors import CacheError, Conflict, InvalidInput, NotFound
from photobot.events import resolve_event
from photobot.imaging import probe_image_file
from photobot.providers.local import MODES, STYLES
from photobot.root import Services
from photobot.storage.keys import job_input_key
from web.auth import require_operator
from web.deps import services
from web.uploads import SpooledFile, receive_upload

bp = Blueprint("jobs", __name__)

#: Largest photo accepted (a 24 MP JPEG is ~8-15 MB); the whole request is capped in web/app.py.
MAX_IMAGE_BYTES = 40 * 1024 * 1024
#: Larger than any camera of ours; a decompression bomb claims more and is refused up front.
MAX_IMAGE_PIXELS = 60_000_000
#: Redis key lifetime of an Idempotency-Key (seed 001 §3.5: 10-30 minutes).
IDEMPOTENCY_TTL = 1800
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_probe_limiter = trio.CapacityLimiter(2)  # "upload-probe": header checks (hashed on arrival)


def job_json(job: jobs.Job, *, urls: dict[str, str] | None = None) -> dict[str, Any]:
    urls = urls or {}
    return {
        "id": job.id,
        "jobId": job.id,
        "eventId": job.event_id,
        "sessionId": job.session_id,
        "parentJobId": job.parent_job_id,
        "boothId": job.booth_id,
        "source": job.source,
        "status": job.status,
        "mode": job.mode,
        "styleId": job.style_id,
        "provider": job.provider,
        "providerUsed": job.provider_used,
        "guest": {"name": job.guest_name, "whatsapp": job.guest_whatsapp},
        "progress": {"percent": job.progress_percent, "stage": job.progress_stage},
        "error": (
            {"code": job.error_code, "message": job.error_message}
            if job.status in ("failed", "canceled") and job.error_code
            else None
        ),
        "attempts": job.attempts,
        "cancelRequested": job.cancel_requested,
        "outputs": [{"url": urls[k]} for k in job.output_keys if k in urls],
        "bestOutputUrl": urls.get(job.best_output_key or ""),
        "downloadUrl": f"/jobs/{job.id}/download" if job.status == "succeeded" else None,
        "createdAt": _iso(job.created_at),
        "updatedAt": _iso(job.updated_at),
        "startedAt": _iso(job.started_at),
        "finishedAt": _iso(job.finished_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def _signed(s: Services, job: jobs.Job) -> dict[str, str]:
    if job.status != "succeeded":
        return {}
    ttl = s.settings.signed_url_ttl_seconds
    return {key: await s.storage.signed_url(key, ttl) for key in job.output_keys}


def _field(form: Any, name: str, *, required: bool = False, max_len: int = 100) -> str | None:
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{name} is required", code="missing_field")
        return None
    if len(value) > max_len or any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{name} is not valid", code="invalid_field")
    return str(value)


@bp.post("/jobs")
@require_operator
async def create_job() -> tuple[Response, int]:
    """The photo streams to a spool file (hashed as it arrives) and from there to storage; it
    is never held whole in memory (see :mod:`web.uploads`)."""
    s = services()
    idem_key = _idempotency_key()
    await _count_submit(s, idem_key)
    async with receive_upload(
        request, s.upload_spool, max_file_bytes=MAX_IMAGE_BYTES,
        timeout=current_app.config["BODY_TIMEOUT"],
    ) as upload:  # fmt: skip
        photo = upload.file
        if photo is None or photo.field != "image":
            raise InvalidInput("image is required (a multipart file field)", code="missing_field")
        return await _create_from(s, upload.fields, photo, idem_key)


async def _create_from(
    s: Services, form: dict[str, str], photo: SpooledFile, idem_key: str | None
) -> tuple[Response, int]:
    session_id = _field(form, "sessionId", required=True)
    event_ref = _field(form, "eventId")
    mode = _field(form, "mode") or "default"
    style = _field(form, "styleId")
    provider = _field(form, "provider")
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}", code="invalid_mode")
    if style is not None and style not in STYLES:
        raise InvalidInput(f"styleId must be one of {', '.join(STYLES)}", code="invalid_style")
    if provider is not None and provider not in s.pool.providers:
        raise InvalidInput(
            f"provider must be one of {', '.join(s.pool.providers)}", code="invalid_provider"
        )

    session = await s.registry.get(session_id)
    event = await resolve_event(s.db, event_ref or session.event_id)
    if str(event.id) != str(session.event_id):
        raise InvalidInput("this guest registered for another event", code="session_event_mismatch")
    if session.expired:
        raise Conflict("this guest's session has expired; register again", code="session_expired")

    info = await trio.to_thread.run_sync(
        partial(probe_image_file, photo.path, max_pixels=MAX_IMAGE_PIXELS), limiter=_probe_limiter
    )
    sha = photo.sha256

    if idem_key is not None:
        replay = await _replay(s, idem_key, sha, parent_id=None)
        if replay is not None:
            return replay, 200

    job_id = jobs.new_job_id()
    key = job_input_key(str(event.id), job_id, _EXTENSIONS[info.content_type], date.today())
    await s.storage.put_file(key, photo.path, info.content_type)
    try:
        job, created = await s.dispatcher.submit(
            jobs.NewJob(
                id=job_id,
                event_id=str(event.id),
                session_id=str(session.id),
                operator_id=g.operator.id,
                source="operator",
                mode=mode,
                style_id=style,
                provider=provider,
                guest_name=session.name,
                guest_whatsapp=session.whatsapp,
                input_key=key,
                input_sha256=sha,
                input_type=info.content_type,
                input_bytes=photo.size,
                idempotency_key=idem_key,
            )
        )
    except Conflict:
        await s.storage.delete(key)  # nothing refers to this upload
        raise
    if not created:
        await s.storage.delete(key)  # the other request's upload is the one kept
    elif idem_key is not None:
        await _remember(s, idem_key, job.id)
    return jsonify(job_json(job)), 201 if created else 200


def _idempotency_key() -> str | None:
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None and not (0 < len(idem_key) <= 200 and idem_key.isprintable()):
        raise InvalidInput("Idempotency-Key must be 1-200 printable characters")
    return idem_key


async def _known(s: Services, idem_key: str) -> str | None:
    """The job id ``idem_key`` names in Redis; ``None`` when unknown or Redis is away."""
    try:
        known = await s.cache.get(f"idemp:{idem_key}")
    except CacheError:
        return None
    return None if known is None else known.decode()


async def _count_submit(s: Services, idem_key: str | None) -> None:
    """One hit on the operator's ``POST /jobs`` limit, unless the key already names a job (the
    request is a replay or a 409, never a new job). Checked before the body is read."""
    if idem_key is not None and await _known(s, idem_key) is not None:
        return
    limit = ratelimit.Limit("jobs", s.settings.jobs_rate_limit_per_minute, 60)
    await ratelimit.hit(s.cache, (limit, g.operator.id))


async def _remember(s: Services, idem_key: str, job_id: str) -> None:
    try:
        await s.cache.set(f"idemp:{idem_key}", job_id, ex=IDEMPOTENCY_TTL, nx=True)
    except CacheError:
        pass  # PostgreSQL's unique index is the guarantee; Redis is the fast path


async def _replay(
    s: Services, idem_key: str, sha: str, *, parent_id: str | None
) -> Response | None:
    """The answer for a key Redis already knows (see :func:`jobs.check_replay`); ``None`` when
    it does not, and PostgreSQL's unique index decides."""
    known = await _known(s, idem_key)
    if known is None:
        return None
    job = await jobs.get(s.db, known)
    jobs.check_replay(job, sha, parent_id)
    return jsonify(job_json(job, urls=await _signed(s, job)))


@bp.get("/jobs/<job_id>")
@require_operator
async def get_job(job_id: str) -> Response:
    s = services()
    job = await jobs.get(s.db, job_id)
    body = job_json(job, urls=await _signed(s, job))
    body["attemptsDetail"] = [
        {
            "attempt": a.attempt,
            "provider": a.provider,
            "startedAt": _iso(a.started_at),
            "finishedAt": _iso(a.finished_at),
            "outcome": a.outcome,
            "error": {"code": a.error_code, "message": a.error_message} if a.error_code else None,
            "providerRequestId": a.provider_request_id,
        }
        for a in await jobs.attempts(s.db, job_id)
    ]
    return jsonify(body)


@bp.get("/jobs/<job_id>/download")
@require_operator
async def download(job_id: str) -> Response:
    s = services()
    job = await jobs.get(s.db, job_id)
    if job.status != "succeeded" or not job.best_output_key:
        raise Conflict(
            f"the job is {job.status}; there is nothing to download yet", code="not_ready"
        )
    ext = job.best_output_key.rsplit(".", 1)[-1]
    url = await s.storage.signed_url(
        job.best_output_key, s.settings.signed_url_ttl_seconds,
        download_name=f"photobot-{job.id[:8]}.{ext}",
    )  # fmt: skip
    return redirect(url, 302)


@bp.post("/jobs/<job_id>/retry")
@require_operator
async def retry(job_id: str) -> tuple[Response, int]:
    """A child job of a final job; with an ``Idempotency-Key``, at most one child per key."""
    s = services()
    idem_key = _idempotency_key()
    parent = await jobs.get(s.db, job_id)
    if idem_key is not None:
        replay = await _replay(s, idem_key, parent.input_sha256, parent_id=parent.id)
        if replay is not None:
            return replay, 200
    if not parent.final:
        raise Conflict(f"the job is still {parent.status}", code="not_final")
    child, created = await s.dispatcher.submit(
        jobs.retry_of(parent, operator_id=g.operator.id, idempotency_key=idem_key)
    )
    if created and idem_key is not None:
        await _remember(s, idem_key, child.id)
    return jsonify(job_json(child, urls=await _signed(s, child))), 201 if created else 200


@bp.post("/jobs/<job_id>/cancel")
@require_operator
async def cancel(job_id: str) -> Response:
    s = services()
    job = await jobs.request_cancel(s.db, job_id)
    if job.final and job.status != "canceled":
        raise Conflict(f"the job already {job.status}", code="already_final")
    return jsonify(job_json(job))


@bp.get("/jobs")
@require_operator
async def list_jobs() -> Response:
    s = services()
    args = request.args
    status = args.get("status") or None
    if status is not None and status not in jobs.STATUSES:
        raise InvalidInput(
            f"status must be one of {', '.join(jobs.STATUSES)}", code="invalid_status"
        )
    try:
        limit = int(args.get("limit", "50"))
    except ValueError:
        raise InvalidInput("limit must be a number", code="invalid_limit") from None
    if not 1 <= limit <= 200:
        raise InvalidInput("limit must be between 1 and 200", code="invalid_limit")
    event_id = str((await resolve_event(s.db, args["eventId"])).id) if args.get("eventId") else None
    page = await jobs.list_page(
        s.db,
        event_id=event_id,
        status=status,
        query=(args.get("q") or "").strip()[:100] or None,
        booth_id=args.get("boothId") or None,
        limit=limit,
        before=_decode_cursor(args.get("cursor")),
    )
    items = [job_json(j, urls=await _signed(s, j)) for j in page]
    next_cursor = _encode_cursor(page[-1]) if len(page) == limit else None
    return jsonify({"items": items, "nextCursor": next_cursor})


def _encode_cursor(job: jobs.Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        jobs.parse_id(job_id)
        return datetime.fromisoformat(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError, LookupError, NotFound):
        raise InvalidInput("cursor is not valid", code="invalid_cursor") from None
