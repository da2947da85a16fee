"""Operator authentication for routes, plus the request plumbing the API routes share.

``@require_operator`` (put it under the route decorator) reads ``Authorization: Bearer <jwt>``;
a missing, malformed, expired or forged token, or one signed with another algorithm, is a 401
``{"error": {"code": "unauthorized", …}}`` with ``WWW-Authenticate: Bearer``. On success the
view runs with ``g.operator`` set to a frozen :class:`~photobot.auth.Operator`
``(id, username, role)``.

:func:`install` builds the app's :class:`~photobot.auth.Authenticator` when the app is created,
so a bad ``OPERATORS_JSON`` or a short ``JWT_SECRET`` stops start-up instead of the first login.

Shared helpers (here because every API module already imports this one):
:func:`json_object` reads a JSON object body (400 ``invalid_json``, 413, 415 otherwise) and
:func:`client_ip` is the peer address rate limits are keyed on. The booth serves the LAN
directly, so the peer address is the client's; ``X-Forwarded-For`` is not trusted (anyone could
send it to dodge a limit).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from quart import Quart, current_app, g, request

from photobot.auth import Authenticator, Operator
from photobot.errors import PayloadTooLarge, Unauthorized
from web.deps import services
from web.errors import ApiError

P = ParamSpec("P")
R = TypeVar("R")

_EXTENSION = "photobot.auth"
#: Largest JSON body the API reads (events, sessions, login are all tiny).
MAX_JSON_BYTES = 64 * 1024


def install(app: Quart) -> None:
    svc = app.extensions["photobot"]
    app.extensions[_EXTENSION] = Authenticator(svc.settings, svc.db, svc.secrets)


def authenticator() -> Authenticator:
    auth = current_app.extensions.get(_EXTENSION)
    if auth is None:  # an app built without install(): build it on first use
        s = services()
        auth = current_app.extensions[_EXTENSION] = Authenticator(s.settings, s.db, s.secrets)
    return auth  # type: ignore[no-any-return]


def bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing bearer token")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("expected 'Authorization: Bearer <token>'")
    return token.strip()


def require_operator(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Let the view run only for a valid operator token; sets ``g.operator``."""

    @functools.wraps(view)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        g.operator = authenticator().verify(bearer_token())
        return await view(*args, **kwargs)

    return guarded


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx with the error shape (never a 500)."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"the JSON body must be at most {MAX_JSON_BYTES} bytes")
    data = await request.get_data(as_text=False)
    if len(data) > MAX_JSON_BYTES:  # chunked bodies have no Content-Length to check first
        raise PayloadTooLarge(f"the JSON body must be at most {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return value


__all__ = [
    "MAX_JSON_BYTES",
    "Operator",
    "authenticator",
    "bearer_token",
    "client_ip",
    "install",
    "json_object",
    "require_operator",
]
