"""Operator login: ``POST /auth/login`` and ``GET /auth/me``.

``POST /auth/login {"username"?: str, "password": str}`` (username defaults to ``operator``, the
``OPERATOR_PASSWORD`` login) → 200 ``{"token", "expiresAt", "operator": {"id", "username",
"role"}}``; wrong username or password → 401 with one message for both. Attempts are limited per
client IP and username (10 per 5 minutes) and per IP overall (60 per 5 minutes), counted before
the password is checked so the limit also caps the hashing work → 429 with ``Retry-After``.

``GET /auth/me`` (operator) → ``{"operator": {…}}``: lets a UI check a stored token.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, g, jsonify

from photobot import ratelimit
from photobot.auth import MAX_PASSWORD_CHARS
from photobot.errors import InvalidInput
from web.auth import authenticator, client_ip, json_object, require_operator
from web.deps import services

bp = Blueprint("auth", __name__)

LOGIN_LIMIT = ratelimit.Limit("login", 10, 300)
LOGIN_IP_LIMIT = ratelimit.Limit("login-ip", 60, 300)


def _credentials(body: dict[str, Any]) -> tuple[str | None, str]:
    unknown = sorted(set(body) - {"username", "password"})
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(map(repr, unknown))}")
    username = body.get("username")
    if username is not None and (not isinstance(username, str) or not 1 <= len(username) <= 64):
        raise InvalidInput("username must be a string of 1-64 characters", code="invalid_username")
    password = body.get("password")
    if not isinstance(password, str) or not password:
        raise InvalidInput("password is required (a string)", code="invalid_password")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput(
            f"password must be at most {MAX_PASSWORD_CHARS} characters", code="invalid_password"
        )
    return username, password


@bp.post("/auth/login")
async def login() -> Response:
    username, password = _credentials(await json_object())
    ip = client_ip()
    who = (username or "operator").lower()
    await ratelimit.hit(services().cache, (LOGIN_LIMIT, f"{ip}|{who}"), (LOGIN_IP_LIMIT, ip))
    auth = authenticator()
    operator = await auth.login(username, password)
    token, expires_at = auth.issue(operator)
    response = jsonify(
        {"token": token, "expiresAt": expires_at.isoformat(), "operator": operator.to_api()}
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/auth/me")
@require_operator
async def me() -> Response:
    return jsonify({"operator": g.operator.to_api()})
