"""The live gallery API: public, guests are anonymous. Queries and semantics: photobot/gallery.py.

``<slug>`` is the event's slug (its uuid works too). A ``private`` event has no public gallery:
every route here answers 404 ``gallery_private`` for it (the page then tells the guest to open
their own page from their QR code, ``/api/guest/<token>/results``).

- ``GET /api/gallery/<slug>/photos?sort=newest&limit=&since=&before=`` →
  ``{"photos": [photo…], "nextBefore", "newestCursor", "hasMoreSince"}``, photos newest first.
  ``limit`` 1-200 (default 50); ``sort`` only ``newest``; ``since`` and ``before`` exclusive.
  No cursor: the newest page. ``before=<cursor>``: the next older page (``nextBefore`` is null
  on the last one; ``newestCursor`` null). ``since=<cursor>``: the photos newer than it, the
  OLDEST ``limit`` of them first (returned newest first, ready to prepend); ``hasMoreSince``
  true means ask again with ``since=newestCursor`` — a client that missed 500 photos gets
  exactly those 500 in order. ``newestCursor`` is what to pass as ``since`` next (unchanged when
  nothing is new). ``since`` also takes seed 004's form, a photo's ``createdAt`` (ISO 8601 with
  an offset, or epoch milliseconds): the photos made strictly after it. ``page=1`` (the seed's
  clients) is the newest page; any other ``page`` is a 422 pointing at ``before``, and so are
  ``offset``, ``skip``, ``order`` and ``orderBy`` (422 ``unsupported_parameter``).
- ``GET /api/gallery/<slug>/photos/<id>`` → one photo (e.g. on ``photo:updated``).
- ``POST`` / ``DELETE /api/gallery/<slug>/photos/<id>/like`` (``X-Device-Id``) →
  ``{"id", "photo_id", "likes", "likedByMe"}``; one like per device, both idempotent.
- ``GET /api/gallery/<slug>/photos/<id>/comments?limit=&before=`` → ``{"comments": […],
  "nextBefore"}`` newest first (limit 1-100, default 20).
- ``POST /api/gallery/<slug>/photos/<id>/comments`` (``X-Device-Id``)
  ``{"body", "authorName"?}`` → 201 the comment. Text is returned exactly as stored; render it
  as text (``textContent``), never as HTML.
- ``GET /api/gallery/<slug>/photos/<id>/download?variant=optimized|original`` → 302 to a signed
  URL that downloads as ``<slug>-<id8>.<ext>``. Guests never receive a photographer's camera
  original (it may carry GPS): ``original`` gives it only for the booth's own AI results and
  the optimized copy otherwise. 409 ``not_ready`` while nothing downloadable exists yet.

A photo: ``{"id", "photo_id" (same value; the websocket contract's name), "createdAt",
"width", "height", "ready", "urls": {"small", "medium", "large", "optimized", "original"},
"likes", "comments", "likedByMe", "downloadUrl", "cursor"}``. A missing derivative falls back
(:data:`photobot.gallery.FALLBACK`); ``ready`` is true once the derivatives exist. Until then a
camera photo (upload, hot folder) has null URLs — its original is never shown — and the page
shows a placeholder until ``photo:updated``; an AI result falls back to its original. Image
URLs stay valid at least ``SIGNED_URL_TTL_SECONDS`` and the same URL is handed out for up to
5 minutes (:class:`photobot.gallery.SignedUrlCache`), so phones cache thumbnails across polls;
an image that fails later (a page left open for long) is refreshed with ``GET …/photos/<id>``.

``X-Device-Id`` (8-128 of ``[A-Za-z0-9_-]``, kept by the page in localStorage) identifies a
phone for likes and ``likedByMe``/``mine``; a malformed one is 422 ``invalid_device_id``. Likes
and comments are rate limited per client IP + device and per IP (429 with ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from quart import Blueprint, Response, current_app, jsonify, redirect, request

from photobot import gallery, ratelimit
from photobot.errors import Conflict, InvalidInput
from photobot.events import Event
from photobot.root import Services
from web.auth import client_ip, json_object
from web.deps import services

bp = Blueprint("gallery", __name__)

#: Per client IP + device, and per IP (a venue's guests may share one address behind NAT).
LIKE_LIMIT = ratelimit.Limit("gallery-like", 60, 60)
LIKE_IP_LIMIT = ratelimit.Limit("gallery-like-ip", 1200, 60)
COMMENT_LIMIT = ratelimit.Limit("gallery-comment", 6, 60)
COMMENT_IP_LIMIT = ratelimit.Limit("gallery-comment-ip", 120, 60)
DEVICE_HEADER = "X-Device-Id"
DOWNLOAD_VARIANTS = ("optimized", "original")
_URL_CACHE = "photobot.gallery.urls"


# -- shared with web/routes/guest.py -------------------------------------------------------------


def device_id(*, required: bool) -> str | None:
    """The request's ``X-Device-Id``: None when absent and not required; 422 when malformed."""
    value = request.headers.get(DEVICE_HEADER)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"the {DEVICE_HEADER} header is required", code="invalid_device_id")
        return None
    return gallery.validate_device_id(value)


def url_cache(s: Services) -> gallery.SignedUrlCache:
    """The app's cache of signed image URLs (made on first use)."""
    cache = current_app.extensions.get(_URL_CACHE)
    if cache is None:
        cache = gallery.SignedUrlCache(s.storage, s.settings.signed_url_ttl_seconds)
        current_app.extensions[_URL_CACHE] = cache
    return cache  # type: ignore[no-any-return]


def iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


async def photos_json(
    s: Services,
    photos: Sequence[gallery.GalleryPhoto],
    download_url: Callable[[gallery.GalleryPhoto], str],
    *,
    with_job: bool = False,
) -> list[dict[str, Any]]:
    """The API shape of ``photos``, every URL signed (one batch for the whole page)."""
    keys = [p.url_keys() for p in photos]
    signed = await url_cache(s).sign(k for per_photo in keys for k in per_photo.values() if k)
    out = []
    for photo, per_photo in zip(photos, keys, strict=True):
        item: dict[str, Any] = {
            "id": photo.id,
            "photo_id": photo.id,
            "createdAt": iso(photo.created_at),
            "width": photo.width,
            "height": photo.height,
            "ready": photo.derivatives_ready,
            "urls": {v: (signed[k] if k else None) for v, k in per_photo.items()},
            "likes": photo.likes,
            "comments": photo.comments,
            "likedByMe": photo.liked_by_me,
            "downloadUrl": download_url(photo),
            "cursor": photo.cursor.encode(),
        }
        if with_job:
            item["jobId"] = photo.job_id
        out.append(item)
    return out


async def download_redirect(s: Services, photo: gallery.GalleryPhoto, prefix: str) -> Response:
    """302 to a signed URL of the variant asked for in ``?variant=`` (see the module docstring)."""
    variant = request.args.get("variant") or "optimized"
    if variant not in DOWNLOAD_VARIANTS:
        raise InvalidInput("variant must be 'optimized' or 'original'", code="invalid_variant")
    choice = photo.download(cast(gallery.DownloadVariant, variant))
    if choice is None:
        raise Conflict("the photo is still being prepared; try again shortly", code="not_ready")
    key, _served = choice
    ext = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else "jpg"
    url = await s.storage.signed_url(
        key, s.settings.signed_url_ttl_seconds, download_name=f"{prefix}-{photo.id[:8]}.{ext}"
    )
    response = redirect(url, 302)
    response.headers["Cache-Control"] = "no-store"
    return response


def _check_page(value: str | None) -> None:
    """Seed 004's clients ask ``page=1&sort=newest`` for the newest photos: that page is ours
    without a cursor. Deeper pages are keyset cursors here (fast at 100 000 photos), never a
    page number: anything but 1 is a clear 422, never page 1 again in disguise."""
    if value is None or value == "1":
        return
    if value.isdigit() and int(value) > 1:
        raise InvalidInput(
            "page numbers are not supported past page=1: ask for older photos with "
            "before=<nextBefore> from the previous answer",
            code="unsupported_parameter",
        )
    raise InvalidInput(
        "page must be 1 (use before=<nextBefore> for older photos)", code="invalid_page"
    )


#: Parameters other APIs page or order with: ignoring one would answer the newest page as if it
#: had been honoured, so each is a 422 naming what to use instead.
_UNSUPPORTED = {
    "offset": "offsets are not supported: ask for older photos with before=<nextBefore>",
    "skip": "skip is not supported: ask for older photos with before=<nextBefore>",
    "order": "order is not supported: photos are always newest first (sort=newest)",
    "orderBy": "orderBy is not supported: photos are always newest first (sort=newest)",
}


def _check_unsupported() -> None:
    for name, message in _UNSUPPORTED.items():
        if name in request.args:
            raise InvalidInput(message, code="unsupported_parameter")


def _cursor(name: str) -> gallery.Cursor | None:
    value = request.args.get(name)
    return None if not value else gallery.Cursor.decode(value)


async def _public_event(slug: str) -> Event:
    return await gallery.public_event(services().db, slug)


def _download_url(event: Event) -> Callable[[gallery.GalleryPhoto], str]:
    return lambda p: f"/api/gallery/{event.slug}/photos/{p.id}/download"


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


# -- photos ------------------------------------------------------------------------------------


@bp.get("/api/gallery/<slug>/photos")
async def list_photos(slug: str) -> Response:
    s = services()
    args = request.args
    if args.get("sort", "newest") != "newest":
        raise InvalidInput("sort must be 'newest'", code="invalid_sort")
    limit = gallery.validate_limit(args.get("limit"))
    _check_page(args.get("page"))
    _check_unsupported()
    raw_since = args.get("since")
    since = (raw_since and gallery.Cursor.after_instant(raw_since)) or _cursor("since")
    before = _cursor("before")
    device = device_id(required=False)
    result = await gallery.page(
        s.db, slug, limit=limit, since=since, before=before, device_id=device
    )
    event = result.event
    body = {
        "photos": await photos_json(s, result.photos, _download_url(event)),
        "nextBefore": result.next_before.encode() if result.next_before else None,
        "newestCursor": result.newest.encode() if result.newest else None,
        "hasMoreSince": result.has_more_since,
    }
    return _no_store(jsonify(body))


@bp.get("/api/gallery/<slug>/photos/<photo_id>")
async def get_photo(slug: str, photo_id: str) -> Response:
    s = services()
    device = device_id(required=False)
    event, photo = await gallery.get_photo(s.db, slug, photo_id, device_id=device)
    [item] = await photos_json(s, [photo], _download_url(event))
    return _no_store(jsonify(item))


@bp.get("/api/gallery/<slug>/photos/<photo_id>/download")
async def download(slug: str, photo_id: str) -> Response:
    s = services()
    event, photo = await gallery.get_photo(s.db, slug, photo_id)
    return await download_redirect(s, photo, event.slug)


# -- likes -------------------------------------------------------------------------------------


async def _like(slug: str, photo_id: str, *, liked: bool) -> Response:
    s = services()
    device = device_id(required=True)
    assert device is not None
    ip = client_ip()
    await ratelimit.hit(s.cache, (LIKE_LIMIT, f"{ip}|{device}"), (LIKE_IP_LIMIT, ip))
    event = await _public_event(slug)
    state = await gallery.set_like(s.db, event.id, photo_id, device, liked=liked)
    return _no_store(
        jsonify(
            {
                "id": state.photo_id,
                "photo_id": state.photo_id,
                "likes": state.likes,
                "likedByMe": state.liked,
            }
        )
    )


@bp.post("/api/gallery/<slug>/photos/<photo_id>/like")
async def like(slug: str, photo_id: str) -> Response:
    return await _like(slug, photo_id, liked=True)


@bp.delete("/api/gallery/<slug>/photos/<photo_id>/like")
async def unlike(slug: str, photo_id: str) -> Response:
    return await _like(slug, photo_id, liked=False)


# -- comments ----------------------------------------------------------------------------------


def comment_json(comment: gallery.Comment, device: str | None) -> dict[str, Any]:
    return {
        "id": comment.id,
        "photo_id": comment.photo_id,
        "authorName": comment.author_name,
        "body": comment.body,
        "createdAt": iso(comment.created_at),
        "mine": device is not None and comment.device_id == device,
    }


@bp.get("/api/gallery/<slug>/photos/<photo_id>/comments")
async def list_comments(slug: str, photo_id: str) -> Response:
    s = services()
    limit = gallery.validate_limit(
        request.args.get("limit"),
        default=gallery.DEFAULT_COMMENT_LIMIT,
        maximum=gallery.MAX_COMMENT_LIMIT,
    )
    before = _cursor("before")
    device = device_id(required=False)
    event = await _public_event(slug)
    comments, next_before = await gallery.list_comments(
        s.db, event.id, photo_id, limit=limit, before=before
    )
    body = {
        "comments": [comment_json(c, device) for c in comments],
        "nextBefore": next_before.encode() if next_before else None,
    }
    return _no_store(jsonify(body))


@bp.post("/api/gallery/<slug>/photos/<photo_id>/comments")
async def post_comment(slug: str, photo_id: str) -> tuple[Response, int]:
    s = services()
    device = device_id(required=True)
    assert device is not None
    ip = client_ip()
    # Counted before validation, so a script probing inputs is limited like one posting.
    await ratelimit.hit(s.cache, (COMMENT_LIMIT, f"{ip}|{device}"), (COMMENT_IP_LIMIT, ip))
    payload = await json_object()
    unknown = sorted(set(payload) - {"body", "authorName"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    if "body" not in payload:
        raise InvalidInput("body is required", code="invalid_comment")
    text, author = gallery.validate_comment(payload["body"], payload.get("authorName"))
    event = await _public_event(slug)
    comment = await gallery.add_comment(s.db, event.id, photo_id, device, text, author)
    return _no_store(jsonify(comment_json(comment, device))), 201
