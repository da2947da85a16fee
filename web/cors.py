"""CORS for an operator UI served from another origin (``CORS_ORIGINS``).

``CORS_ORIGINS`` is a comma-separated allowlist of origins (``https://ops.example.com,
http://192.168.1.20:5173``); ``*`` allows any origin. Empty (the default) means same-origin only:
no CORS header is ever sent, and the booth's own pages need none.

- A request whose ``Origin`` is allowed gets ``Access-Control-Allow-Origin: <that origin>`` and
  ``Access-Control-Expose-Headers`` (``Retry-After``, ``Location``, ``Content-Disposition``)
  on every response, errors included. Credentials are not allowed: the API authenticates with
  bearer tokens, never cookies, so a foreign page can never ride on a logged-in browser.
- A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is
  answered 204 with the allowed methods and the requested headers, cached for 10 minutes; from
  any other origin it is a 403 with the usual error shape (the browser then blocks the call).
- ``Vary: Origin`` is added whenever CORS is on and the request has an ``Origin``, so a cache
  never serves one origin's answer to another.
"""

from __future__ import annotations

import re

from quart import Quart, Response, request

from photobot.errors import ConfigError
from web.errors import error_response

_ORIGIN_RE = re.compile(r"https?://[a-z0-9.\-\[\]:]+")
_HEADER_LIST_RE = re.compile(r"[A-Za-z0-9\-, ]{0,500}")
_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
_EXPOSE = "Retry-After, Location, Content-Disposition"
_MAX_AGE = "600"


def parse_origins(raw: str) -> frozenset[str]:
    """The normalized allowlist; ``{"*"}`` for any origin; ConfigError naming the variable."""
    origins: set[str] = set()
    for part in raw.split(","):
        origin = part.strip().lower().rstrip("/")
        if not origin:
            continue
        if origin != "*" and not _ORIGIN_RE.fullmatch(origin):
            raise ConfigError(
                f"invalid setting CORS_ORIGINS={part.strip()!r}: each entry must be an origin"
                " such as https://ops.example.com (scheme and host, no path), or *"
            )
        origins.add(origin)
    return frozenset(origins)


def install(app: Quart, raw_origins: str) -> None:
    origins = parse_origins(raw_origins)
    if not origins:
        return  # same-origin only: nothing to add to any response
    allow_any = "*" in origins

    def allowed(origin: str | None) -> bool:
        return origin is not None and (allow_any or origin.lower().rstrip("/") in origins)

    @app.before_request
    async def preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin")
        if not allowed(origin):
            return error_response(403, "cors_forbidden", "this origin is not in CORS_ORIGINS")
        response = Response("", status=204)
        response.headers["Access-Control-Allow-Methods"] = _METHODS
        requested = request.headers.get("Access-Control-Request-Headers", "")
        if requested and _HEADER_LIST_RE.fullmatch(requested):
            response.headers["Access-Control-Allow-Headers"] = requested
        response.headers["Access-Control-Max-Age"] = _MAX_AGE
        return response

    @app.after_request
    async def add_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin is None:
            return response
        response.vary.add("Origin")
        if allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _EXPOSE
        return response


__all__ = ["install", "parse_origins"]
