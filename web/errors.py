"""Every error leaves as ``{"error": {"code", "message"}}`` with a 4xx/5xx status.

Domain errors map by class; Werkzeug's HTTP errors (unknown route, wrong method, body too large,
malformed request) keep their status with our shape; anything else is a 500 whose details go to
the log, not to the client.
"""

from __future__ import annotations

import logging

from quart import Quart, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from photobot import errors
from photobot.cctv.isapi import IsapiError
from photobot.storage import SignatureError

log = logging.getLogger("photobot.web")

_STATUS: list[tuple[type[errors.PhotobotError], int]] = [
    (SignatureError, 403),
    (IsapiError, 502),  # the NVR refused or failed: a bad gateway, not our fault nor the client's
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.RateLimited, 429),
    (errors.PayloadTooLarge, 413),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.InvalidInput, 422),
    (errors.Unavailable, 503),
    (errors.ConfigError, 500),
]


class ApiError(errors.PhotobotError):
    """An error raised by a route with an explicit HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


def status_for(exc: errors.PhotobotError) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _close_if_body_may_be_unread(response: Response) -> Response:
    """An error answered before the request body was read (401 on an upload, 413) leaves the
    rest of that body on the connection; with Hypercorn the next request on it can then hang.
    Closing costs the client one reconnect, and only on errors."""
    if request.method in ("POST", "PUT", "PATCH") and response.status_code >= 400:
        response.headers["Connection"] = "close"
    return response


def install(app: Quart) -> None:
    @app.errorhandler(errors.PhotobotError)
    async def domain_error(exc: errors.PhotobotError) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.warning("request failed", extra={"code": exc.code, "error": exc.message})
        response = error_response(status, exc.code, exc.message)
        if isinstance(exc, errors.RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, errors.Unauthorized):
            response.headers["WWW-Authenticate"] = "Bearer"
        return _close_if_body_may_be_unread(response)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == 413:
            response = error_response(
                413, "payload_too_large", "the request body is larger than this booth accepts"
            )
            return _close_if_body_may_be_unread(response)
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name or "error")
        return _close_if_body_may_be_unread(response)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal", "internal error; see the booth log")
