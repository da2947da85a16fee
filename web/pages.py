"""The pages the box serves to guests' phones and the operator's laptop (no CDN, no build step).

Every page is a small server-rendered shell (``web/templates``) plus plain ES modules and one
stylesheet (``web/static``); the data comes from the same JSON API every other client uses, so
there is one implementation of each rule. What a page needs to start (the event, the booth id,
the styles) is rendered into a ``<script type="application/json" id="page-data">`` block.

- ``/``                    one public event → its join page; several → a list; none → a note.
- ``/e/<slug>/join``       guest registration: name + WhatsApp → code, QR and page link.
- ``/e/<slug>``            the live gallery (a private event says so instead).
- ``/g/<token>``           the guest's own page; the token stays in the URL and is checked by the
                           API the page calls (one rule for what a valid token is).
- ``/console``             the operator console (login happens on the page).

Static files are served under ``/static/`` with ``?v=<content hash>`` in every URL the
templates write, so they can be cached for a year and still change with a new release. Pages
carry a Content-Security-Policy that allows only the box's own scripts and styles; images and
videos may come from the storage's signed URLs (S3/R2 on another host).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from markupsafe import Markup
from quart import Blueprint, Response, redirect, render_template, request, url_for

from photobot.errors import NotFound
from photobot.events import Event, list_events, resolve_event
from photobot.providers.local import MODES, STYLES
from web.deps import services

bp = Blueprint(
    "pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

STATIC_DIR = Path(__file__).parent / "static"

#: ``connect-src`` names ws:/wss: because the gallery's websocket is served on its own port.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob: http: https:",
        "media-src 'self' blob: http: https:",
        "connect-src 'self' ws: wss:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@cache
def _static_version(filename: str) -> str:
    """A short hash of a static file's bytes (computed once per process)."""
    path = (STATIC_DIR / filename).resolve()
    if STATIC_DIR.resolve() not in path.parents or not path.is_file():
        raise FileNotFoundError(filename)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def static_url(filename: str) -> str:
    return url_for("pages.static", filename=filename, v=_static_version(filename))


def page_data(data: dict[str, Any]) -> Markup:
    """JSON for the page's data block. ``<``, ``>`` and ``&`` become JSON escapes (as Django's
    ``json_script`` does), so no value can end the script element or start a comment in it."""
    text = json.dumps(data, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return Markup(text)


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"static": static_url, "page_data": page_data}


@bp.after_request
async def _headers(response: Response) -> Response:
    if request.blueprint != "pages":
        return response
    if request.path.startswith("/static/"):
        if request.args.get("v"):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Cache-Control", "no-cache")
    return response


async def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(await render_template(template, **context), status=status)
    response.content_type = "text/html; charset=utf-8"
    return response


async def _message(title: str, text: str, status: int) -> Response:
    return await _page("message.html", status, title=title, text=text)


async def _event_or_none(slug: str) -> Event | None:
    try:
        return await resolve_event(services().db, slug)
    except NotFound:
        return None


def _event_data(event: Event) -> dict[str, Any]:
    return {"slug": event.slug, "name": event.name, "visibility": event.visibility}


@bp.get("/")
async def home() -> Response:
    events = [e for e in await list_events(services().db) if e.visibility == "public"]
    if len(events) == 1:
        return redirect(url_for("pages.join", slug=events[0].slug))  # type: ignore[return-value]
    if not events:
        return await _message(
            "No event yet",
            "There is no event open for guests yet. Operators: create one in the console.",
            200,
        )
    return await _page("home.html", events=events)


@bp.get("/e/<slug>/join")
async def join(slug: str) -> Response:
    event = await _event_or_none(slug)
    if event is None:
        return await _message("Event not found", "Check the link or ask the booth staff.", 404)
    return await _page("join.html", event=event, data=_event_data(event))


@bp.get("/e/<slug>")
async def gallery(slug: str) -> Response:
    event = await _event_or_none(slug)
    if event is None:
        return await _message("Event not found", "Check the link or ask the booth staff.", 404)
    if event.visibility != "public":
        return await _message(
            event.name,
            "This event's gallery is private. Your own photos are on your page: scan the QR "
            "code you got when you registered.",
            200,
        )
    return await _page("gallery.html", event=event, data=_event_data(event))


@bp.get("/g/<token>")
async def guest(token: str) -> Response:
    response = await _page("guest.html", data={"styles": STYLES})
    # The token is in this page's URL: keep it out of Referer headers and shared caches.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/console")
async def console() -> Response:
    settings = services().settings
    data = {
        "boothId": settings.booth_id,
        "styles": [{"id": k, "label": v} for k, v in STYLES.items()],
        "modes": [{"id": k, "label": v} for k, v in MODES.items()],
        "activeSessionTtl": settings.active_session_ttl_seconds,
    }
    return await _page("console.html", data=data)
