"""Where a gallery page finds its live websocket (public).

``GET /api/gallery/<slug>/socket`` → ``{"url", "path", "port", "room", "subprotocols",
"pingIntervalSeconds"}``. The websocket is served by the gallery broadcaster's own server
(:mod:`photobot.fanout`) on ``GALLERY_WS_PORT`` (default ``PORT + 1``), not by this app; the
URL uses the host the page was loaded from. Unknown event → 404 ``event_not_found``; the socket
server not listening (yet, or any more) → 503.

Messages are ``{"type": "photo:upload:complete" | "photo:updated", "photo_id", …}`` (JSON text
frames; binary msgpack with the ``msgpack`` subprotocol). A close with 1013 means the page fell
behind, 1001 that the booth is restarting: either way it polls ``photos?since=`` and reconnects
with back-off.
"""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from photobot.errors import Unavailable
from photobot.fanout.protocol import PATH_PREFIX, SUBPROTOCOL_MSGPACK
from photobot.gallery import public_event
from web.deps import services

bp = Blueprint("gallery_socket", __name__)


def _hostname(host: str) -> str:
    """``example.org:8000`` → ``example.org``; ``[::1]:8000`` → ``[::1]``."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@bp.get("/api/gallery/<slug>/socket")
async def get_socket(slug: str) -> Response:
    s = services()
    event = await public_event(s.db, slug)  # a private event has no live room
    port = s.gallery.server.port
    if port is None or not s.gallery.server.accepting:
        raise Unavailable("the live gallery is not available right now", code="gallery_offline")
    scheme = "wss" if request.scheme == "https" else "ws"
    path = f"{PATH_PREFIX}{event.slug}"
    response = jsonify(
        {
            "url": f"{scheme}://{_hostname(request.host)}:{port}{path}",
            "path": path,
            "port": port,
            "room": f"event:{event.slug}",
            "subprotocols": ["json", SUBPROTOCOL_MSGPACK],
            "pingIntervalSeconds": s.gallery.server.ping_interval,
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response
