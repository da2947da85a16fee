"""Guest sessions API; semantics in :mod:`actors.registry`.

- ``POST /sessions {"eventId", "name", "whatsapp"}`` (public; ``REGISTER_RATE_LIMIT_PER_MINUTE``,
  default 10, per client IP) →
  201 ``{"sessionId", "code", "guestUrl", "expiresAt", "qrSvgUrl"}``. ``eventId`` is the event's
  uuid or slug. Bad input → 422 naming the field (``invalid_name``, ``invalid_whatsapp``,
  ``invalid_input``); unknown event → 404 ``event_not_found``.
- ``GET /sessions/<code>?eventId=`` (operator) → ``{"sessionId", "eventId", "code", "name",
  "whatsapp", "expiresAt"}``; unknown or expired → 404 ``session_not_found``.
- ``POST /sessions/scan {"qr", "eventId"?}`` (operator) → the same session JSON: ``qr`` is
  whatever the console's scanner read from a guest's QR — their page's URL (``…/g/<token>``,
  what the join page shows), a bare token, or a typed-style code. Unknown, expired or garbage →
  404 ``session_not_found``; a guest of another event than ``eventId`` → 422
  ``session_event_mismatch``; the token is never echoed back.
- ``GET /g/<token>/qr.svg`` (whoever holds the token) → the QR code of the guest's page as SVG,
  made on the box with segno (no internet needed); unknown or expired token → 404.

``guestUrl`` is ``{PUBLIC_BASE_URL or the request's scheme://host}/g/{token}``. The token is in
no log line and in no response other than the registration's; responses that carry it are
``no-store`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import io
import re

import segno
from quart import Blueprint, Response, jsonify, request

from photobot import ratelimit
from photobot.errors import InvalidInput
from photobot.events import resolve_event
from web.auth import client_ip, json_object, require_operator
from web.deps import services

bp = Blueprint("sessions", __name__)

#: QR rendering: error correction M survives a scratched phone screen; 8 px per module and the
#: standard 4-module quiet zone scan well from a printed or on-screen code.
QR_ERROR = "m"
QR_SCALE = 8
QR_BORDER = 4


def base_url() -> str:
    configured = services().settings.public_base_url
    return (configured or request.host_url).rstrip("/")


def qr_svg(data: str) -> bytes:
    qr = segno.make(data, error=QR_ERROR, micro=False)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=QR_SCALE, border=QR_BORDER, title="Your photo page")
    return buf.getvalue()


@bp.post("/sessions")
async def post_session() -> Response:
    s = services()
    ip = client_ip()
    # Counted before validation, so a script probing inputs is limited like one registering.
    limit = ratelimit.Limit("sessions", s.settings.register_rate_limit_per_minute, 60)
    await ratelimit.hit(s.cache, (limit, ip))
    body = await json_object()
    unknown = sorted(set(body) - {"eventId", "name", "whatsapp"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    event_id = body.get("eventId")
    if not isinstance(event_id, str) or not event_id:
        raise InvalidInput("eventId is required (the event's id or slug)")
    if "name" not in body:
        raise InvalidInput("name is required", code="invalid_name")
    if "whatsapp" not in body:
        raise InvalidInput("whatsapp is required", code="invalid_whatsapp")
    reg = await s.registry.register(event_id, body["name"], body["whatsapp"], ip)
    guest_url = f"{base_url()}/g/{reg.token}"
    response = jsonify(
        {
            "sessionId": str(reg.session.id),
            "eventId": str(reg.session.event_id),
            "code": reg.session.code,
            "guestUrl": guest_url,
            "expiresAt": reg.session.expires_at.isoformat(),
            "qrSvgUrl": f"{guest_url}/qr.svg",
        }
    )
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/sessions/<code>")
@require_operator
async def get_session(code: str) -> Response:
    event_id = request.args.get("eventId") or None
    session = await services().registry.lookup_code(event_id, code)
    return jsonify(session.to_api())


#: A guest page URL as the join page's QR holds it, or the token alone (token_urlsafe(32)).
_GUEST_URL = re.compile(r"(?:^|/g/)([A-Za-z0-9_-]{32,128})/?(?:[?#].*)?$")
_QR_MAX = 512


@bp.post("/sessions/scan")
@require_operator
async def scan_session() -> Response:
    """The guest a scanned QR names: their page's token if it holds one, else their code."""
    body = await json_object()
    qr, event_id = body.get("qr"), body.get("eventId") or None
    if not isinstance(qr, str) or not 0 < len(qr.strip()) <= _QR_MAX:
        raise InvalidInput(f"qr must be the scanned text (1-{_QR_MAX} characters)")
    if event_id is not None and not isinstance(event_id, str):
        raise InvalidInput("eventId must be the event's id or slug")
    registry = services().registry
    token = _GUEST_URL.search(qr.strip())
    if token is not None:
        session = await registry.lookup_token(token.group(1))
        if event_id is not None and (await resolve_event(services().db, event_id)).id != (
            session.event_id
        ):
            raise InvalidInput(
                "this guest registered for another event", code="session_event_mismatch"
            )
    else:
        session = await registry.lookup_code(event_id, qr.strip())
    return jsonify(session.to_api())


@bp.get("/g/<token>/qr.svg")
async def get_guest_qr(token: str) -> Response:
    await services().registry.lookup_token(token)
    svg = qr_svg(f"{base_url()}/g/{token}")
    response = Response(svg, status=200, content_type="image/svg+xml; charset=utf-8")
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
