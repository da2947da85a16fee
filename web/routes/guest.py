"""A guest's own page data, addressed by the unguessable token of their ``guestUrl``.

- ``GET /api/guest/<token>/results`` →
  ``{"session": {"name", "code", "expiresAt"}, "event": {"slug", "name", "visibility"},
  "photos": [photo…], "jobs": [job…], "clips": [clip…], "guestUrl", "whatsappShareUrl"}``.
  A clip (the booth's CCTV video of the guest's session): ``{"id", "url", "posterUrl",
  "durationSeconds", "sizeBytes", "createdAt"}``, URLs signed.
  Photos have the gallery's shape (``web/routes/gallery.py``) plus ``jobId`` and
  ``whatsappShareUrl`` (WhatsApp to the guest's own number with the photo's download link);
  their ``downloadUrl`` is the guest route below with ``variant=original`` (the styled JPEG for
  the booth's own results), so it works for private events too. Jobs, newest
  first: ``{"id", "jobId", "status", "styleId", "progress": {"percent", "stage"}, "error":
  {"code"} | null, "createdAt", "updatedAt", "finishedAt"}`` (no operator details, no provider
  error text). At most the newest 200 photos and 100 jobs. ``whatsappShareUrl`` opens WhatsApp
  on the guest's own number with a message carrying their page link (to keep it).
- ``GET /api/guest/<token>/photos/<id>/download?variant=optimized|original`` → 302, as the
  gallery's download, for the guest's own photos only.

The token only ever comes from the registration response (never the short code). The page keeps
working for :data:`photobot.gallery.GUEST_PAGE_GRACE` (7 days) after the 6 h session TTL, so a
guest can still fetch their photos the next day. A wrong, malformed or too old token is a 404
``not_found`` that says nothing more. Answers are ``private, no-store`` with
``Referrer-Policy: no-referrer`` (the token is in the URL and in ``guestUrl``).
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from actors.registry import GuestSession, whatsapp_share_link
from photobot import gallery, jobs
from photobot.errors import NotFound
from photobot.events import resolve_event
from web.deps import services
from web.routes.cctv import clip_json
from web.routes.gallery import device_id, download_redirect, iso, photos_json
from web.routes.sessions import base_url

bp = Blueprint("guest", __name__)


async def _session(token: str) -> GuestSession:
    """The token's session while its page is open; otherwise the one anonymous 404."""
    try:
        session = await services().registry.lookup_token(token, include_expired=True)
    except NotFound:
        session = None
    if session is None or not gallery.guest_page_open(
        session.expires_at, session.ended_at, gallery.now_utc()
    ):
        raise NotFound("not found", code="not_found")
    return session


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def job_json(job: jobs.Job) -> dict[str, Any]:
    """What a guest may see of a job: its state and progress, never operator details."""
    return {
        "id": job.id,
        "jobId": job.id,
        "status": job.status,
        "styleId": job.style_id,
        "progress": {"percent": job.progress_percent, "stage": job.progress_stage},
        "error": (
            {"code": job.error_code}
            if job.status in ("failed", "canceled") and job.error_code
            else None
        ),
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "finishedAt": iso(job.finished_at),
    }


@bp.get("/api/guest/<token>/results")
async def results(token: str) -> Response:
    s = services()
    device = device_id(required=False)
    session = await _session(token)
    event = await resolve_event(s.db, session.event_id)
    found = await gallery.guest_results(s.db, session.id, device_id=device)
    guest_url = f"{base_url()}/g/{token}"
    photos = await photos_json(
        s,
        found.photos,
        # ``original``: a guest's own styled photo downloads as the booth's JPEG (what phones
        # and WhatsApp handle best); a camera photo still gives only its optimized copy.
        lambda p: f"/api/guest/{token}/photos/{p.id}/download?variant=original",
        with_job=True,
    )
    for photo in photos:
        # Absolute: the link leaves the box in a WhatsApp message.
        photo["whatsappShareUrl"] = whatsapp_share_link(
            session.whatsapp, f"My photo from {event.name}: {base_url()}{photo['downloadUrl']}"
        )
    body = {
        "session": {
            "name": session.name,
            "code": session.code,
            "expiresAt": iso(session.expires_at),
        },
        "event": {"slug": event.slug, "name": event.name, "visibility": event.visibility},
        "photos": photos,
        "jobs": [job_json(j) for j in found.jobs],
        "clips": [
            await clip_json(s, clip) for clip in await s.clips.clips_of_session(str(session.id))
        ],
        "guestUrl": guest_url,
        "whatsappShareUrl": whatsapp_share_link(
            session.whatsapp, f"Your photos from {event.name}: {guest_url}"
        ),
    }
    return _private(jsonify(body))


@bp.get("/api/guest/<token>/photos/<photo_id>/download")
async def download(token: str, photo_id: str) -> Response:
    s = services()
    session = await _session(token)
    event = await resolve_event(s.db, session.event_id)
    photo = await gallery.get_session_photo(s.db, session.id, photo_id)
    return _private(await download_redirect(s, photo, event.slug))
