"""Operator login, tokens, ``@require_operator``, rate limits and CORS, on real services.

Also home of the ``booth_env`` / ``booth`` fixtures that ``test_events`` and ``test_sessions``
import: real :class:`Services` (PostgreSQL, Redis, storage) plus the app's test client, with
every auth-related setting pinned so the caller's environment cannot leak in.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
import trio
from quart.typing import TestClientProtocol as Client

from photobot import ratelimit
from photobot.auth import Authenticator, Operator, hash_password, verify_password
from photobot.cache import Cache
from photobot.config import load_settings
from photobot.errors import ConfigError, RateLimited
from photobot.root import Services, open_services
from web.app import create_app
from web.routes import auth as auth_routes

OPERATOR_PASSWORD = "booth-operator-pw"
JSON = {"Content-Type": "application/json"}


@dataclass
class Booth:
    services: Services
    client: Client
    token: str = ""

    async def login(
        self, password: str = OPERATOR_PASSWORD, username: str | None = None, ip: str = "10.0.0.1"
    ) -> Any:
        body: dict[str, Any] = {"password": password}
        if username is not None:
            body["username"] = username
        return await self.client.post("/auth/login", json=body, scope_base={"client": (ip, 40000)})

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


@dataclass(frozen=True)
class BoothEnv:
    """Where a test's booth lives; ``async with env.open(**setting_overrides) as booth``."""

    database_url: str
    redis: Any  # conftest's RedisTarget
    data_dir: Path

    @asynccontextmanager
    async def open(self, **overrides: Any) -> AsyncIterator[Booth]:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis.url,
            "redis_prefix": self.redis.prefix,
            "operator_password": OPERATOR_PASSWORD,
            "operators_json": None,
            "jwt_secret": None,
            "cors_origins": "",
            "public_base_url": None,
        }
        values.update(overrides)
        # Opened and closed in the same task: the services hold nurseries (the asyncio bridge).
        async with open_services(load_settings(**values), self.data_dir) as services:
            yield Booth(services, create_app(services).test_client())


# Named apart from their fixture names so that modules importing them can take a parameter
# called ``booth`` without shadowing the import.
@pytest.fixture(name="booth_env")
def booth_env_fixture(database_url: str, redis_url, tmp_path: Path) -> BoothEnv:  # type: ignore[no-untyped-def]
    return BoothEnv(database_url, redis_url, tmp_path / "data")


@pytest.fixture(name="booth")
async def booth_fixture(booth_env: BoothEnv) -> AsyncIterator[Booth]:
    """A booth with default settings and an operator token in ``booth.token``."""
    async with booth_env.open() as b:
        response = await b.login()
        assert response.status_code == 200, await response.get_json()
        b.token = (await response.get_json())["token"]
        yield b


async def error_of(response: Any) -> dict[str, str]:
    body = await response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]  # type: ignore[no-any-return]


# -- login -----------------------------------------------------------------------------------


async def test_login_with_operator_password(booth: Booth) -> None:
    b = booth
    before = int(time.time())
    response = await b.login()
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.get_json()
    assert body["operator"] == {"id": "env:operator", "username": "operator", "role": "admin"}
    claims = jwt.decode(body["token"], b.services.secrets.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == "env:operator" and claims["role"] == "admin"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 3600
    assert body["expiresAt"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(claims["exp"]))
    )
    me = await b.client.get("/auth/me", headers=b.auth(body["token"]))
    assert me.status_code == 200
    assert (await me.get_json())["operator"]["username"] == "operator"
    # The explicit username works too.
    assert (await b.login(username="operator")).status_code == 200


async def test_jwt_secret_setting_signs_tokens(booth_env: BoothEnv) -> None:
    secret = "s" * 40
    async with booth_env.open(jwt_secret=secret, jwt_ttl_seconds=120) as b:
        token = (await (await b.login()).get_json())["token"]
        claims = jwt.decode(token, secret.encode(), algorithms=["HS256"])
        assert claims["exp"] - claims["iat"] == 120
        with pytest.raises(jwt.InvalidSignatureError):
            jwt.decode(token, b.services.secrets.jwt_secret, algorithms=["HS256"])


async def test_wrong_password_and_unknown_user_are_the_same_401(booth: Booth) -> None:
    b = booth
    wrong = await b.login("nope")
    unknown = await b.login("nope", username="nobody")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await error_of(wrong) == await error_of(unknown)
    assert (await error_of(wrong))["code"] == "unauthorized"


async def test_operators_json_with_argon2_and_bcrypt(booth_env: BoothEnv) -> None:
    listed = [
        {"username": "ana", "passwordHash": hash_password("ana-password")},
        {
            "username": "budi",
            "passwordHash": bcrypt.hashpw(b"budi-password", bcrypt.gensalt(4)).decode(),
            "role": "admin",
        },
    ]
    async with booth_env.open(operators_json=json.dumps(listed)) as b:
        ana = await b.login("ana-password", username="ana")
        assert ana.status_code == 200
        assert (await ana.get_json())["operator"] == {
            "id": "env:ana", "username": "ana", "role": "operator",
        }  # fmt: skip
        budi = await b.login("budi-password", username="budi")
        assert (await budi.get_json())["operator"]["role"] == "admin"
        assert (await b.login("budi-password", username="ana")).status_code == 401
        assert (await b.login("ana-password", username="budi")).status_code == 401
        assert (await b.login()).status_code == 200  # OPERATOR_PASSWORD still works beside them


async def _photobot(env: dict[str, str], *args: str, stdin: bytes) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "photobot", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def test_operator_added_with_the_cli_can_log_in(
    booth: Booth,
    database_url: str,
    redis_url,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    b = booth
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url.url,
        "REDIS_PREFIX": redis_url.prefix,
        "PHOTOBOT_DATA_DIR": str(tmp_path / "cli-data"),
    }
    added = await _photobot(env, "operator", "add", "citra", stdin=b"citra-password\n")
    assert added.returncode == 0, added.stderr.decode()
    assert b"citra-password" not in added.stdout + added.stderr
    stored = await b.services.db.fetchrow("select * from operators where username = 'citra'")
    assert stored is not None and stored["password_hash"].startswith("$argon2id$")
    again = await _photobot(env, "operator", "add", "citra", stdin=b"other-password\n")
    assert again.returncode == 1 and b"already exists" in again.stderr
    short = await _photobot(env, "operator", "add", "dewi", stdin=b"short\n")
    assert short.returncode == 2 and b"at least 8" in short.stderr

    response = await b.login("citra-password", username="citra")
    assert response.status_code == 200
    operator = (await response.get_json())["operator"]
    assert operator == {"id": str(stored["id"]), "username": "citra", "role": "operator"}
    assert (await b.login("other-password", username="citra")).status_code == 401

    await b.services.db.execute("update operators set disabled_at = now()")
    assert (await b.login("citra-password", username="citra")).status_code == 401


# -- tokens ----------------------------------------------------------------------------------


def _hs512(claims: dict[str, Any], key: bytes) -> str:
    with warnings.catch_warnings():  # the right key, the wrong algorithm: PyJWT warns on length
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm="HS512")


async def test_require_operator_rejects_bad_tokens(booth: Booth) -> None:
    services = booth.services
    now = int(time.time())
    claims = {"sub": "env:operator", "name": "operator", "role": "admin", "iat": now,
              "exp": now + 600}  # fmt: skip
    key = services.secrets.jwt_secret
    auth = Authenticator(services.settings, services.db, services.secrets)
    expired, _ = auth.issue(Operator("env:operator", "operator", "admin"), now=now - 7200)
    bad = {
        "expired": expired,
        "forged": jwt.encode(claims, b"another-secret-that-is-long-enough!!", algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),
        "alg HS512": _hs512(claims, key),
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, key, "HS256"),
        "bad role": jwt.encode(claims | {"role": "root"}, key, algorithm="HS256"),
        "garbage": "not.a.token",
        "tampered": jwt.encode(claims, key, "HS256")[:-2] + "AA",
    }
    for what, token in bad.items():
        response = await booth.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, what
        assert (await error_of(response))["code"] == "unauthorized", what
    expired_response = await booth.client.get("/auth/me", headers=booth.auth(expired))
    assert "expired" in (await error_of(expired_response))["message"]
    for headers in ({}, {"Authorization": "Basic b3A6cHc="}, {"Authorization": "Bearer "}):
        response = await booth.client.get("/events", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    good = await booth.client.get("/auth/me", headers=booth.auth(jwt.encode(claims, key, "HS256")))
    assert good.status_code == 200


def test_settings_errors_stop_start_up() -> None:
    from photobot.local_secrets import LocalSecrets

    secrets = LocalSecrets(jwt_secret=b"k" * 32, url_signing_key=b"u" * 32, camera_key=b"c" * 44)
    cases = {
        "JWT_SECRET": {"jwt_secret": "short"},
        "OPERATORS_JSON": {"operators_json": "[{not json"},
    }
    for name, overrides in cases.items():
        settings = load_settings(**({"operators_json": None, "jwt_secret": None} | overrides))
        with pytest.raises(ConfigError, match=name):
            Authenticator(settings, None, secrets)  # type: ignore[arg-type]
    for entries in (
        {"username": "a"},
        [{"username": "a", "passwordHash": "plain"}],
        [{"username": "a", "passwordHash": hash_password("x"), "role": "root"}],
        [{"username": "", "passwordHash": hash_password("x")}],
        [{"username": "a", "passwordHash": hash_password("x"), "extra": 1}],
    ):
        settings = load_settings(operators_json=json.dumps(entries), jwt_secret=None)
        with pytest.raises(ConfigError, match="OPERATORS_JSON"):
            Authenticator(settings, None, secrets)  # type: ignore[arg-type]


def test_verify_password_formats() -> None:
    argon = hash_password("pw-1")
    bc = bcrypt.hashpw(b"pw-2", bcrypt.gensalt(4)).decode()
    assert verify_password(argon, "pw-1") and not verify_password(argon, "pw-2")
    assert verify_password(bc, "pw-2") and not verify_password(bc, "pw-1")
    assert not verify_password(bc, "x" * 100)  # bcrypt >= 5 raises past 72 bytes: just False
    assert not verify_password("$argon2id$garbage", "pw-1")
    assert not verify_password("plaintext", "plaintext")


# -- bad bodies ------------------------------------------------------------------------------


async def test_login_bad_bodies_get_4xx_with_the_error_shape(booth: Booth) -> None:
    b = booth
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": b"{not json", "headers": JSON}, 400, "invalid_json"),
        ({"data": b"\xff\xfe", "headers": JSON}, 400, "invalid_json"),
        ({"data": b"NaN", "headers": JSON}, 400, "invalid_json"),
        ({"data": b"", "headers": JSON}, 400, "invalid_json"),
        ({"json": ["password"]}, 400, "invalid_json"),
        ({"data": b"password=x", "headers": {"Content-Type": "text/plain"}}, 415, ""),
        ({"json": {}}, 422, "invalid_password"),
        ({"json": {"password": 123}}, 422, "invalid_password"),
        ({"json": {"password": "x" * 2000}}, 422, "invalid_password"),
        ({"json": {"password": "x", "username": 5}}, 422, "invalid_username"),
        ({"json": {"password": "x", "admin": True}}, 422, "invalid_input"),
        ({"data": b"[" * 100000, "headers": JSON}, 413, "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        response = await b.client.post("/auth/login", **kwargs)
        assert response.status_code == status, (kwargs, await response.get_data())
        error = await error_of(response)
        if code:
            assert error["code"] == code, kwargs
    deep = await b.client.post("/auth/login", data=b"[" * 5000 + b"]" * 5000, headers=JSON)
    assert deep.status_code == 400


# -- rate limits -----------------------------------------------------------------------------


async def test_login_rate_limit(booth: Booth, monkeypatch: pytest.MonkeyPatch) -> None:
    b = booth  # its fixture logged in from 10.0.0.1; this test's client is 10.0.0.7
    for _ in range(10):
        assert (await b.login("wrong", ip="10.0.0.7")).status_code == 401
    limited = await b.login(ip="10.0.0.7")  # even the right password waits now
    assert limited.status_code == 429
    assert (await error_of(limited))["code"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 300
    # Per IP and username: another username, or the same one from another address, still passes.
    assert (await b.login("wrong", username="someone", ip="10.0.0.7")).status_code == 401
    assert (await b.login(ip="10.0.0.2")).status_code == 200
    # The per-IP ceiling holds across usernames (lowered here: each unknown name costs a hash).
    monkeypatch.setattr(auth_routes, "LOGIN_IP_LIMIT", ratelimit.Limit("login-ip", 5, 300))
    statuses = [
        (await b.login("wrong", username=f"user{i}", ip="10.0.0.8")).status_code for i in range(6)
    ]
    assert statuses == [401] * 5 + [429]


async def test_rate_limit_window_in_redis(redis_url) -> None:  # type: ignore[no-untyped-def]
    cache = Cache.from_url(redis_url.url, prefix=redis_url.prefix)
    try:
        small = ratelimit.Limit("t", 3, 30)
        other = ratelimit.Limit("t2", 100, 60)
        for _ in range(3):
            await ratelimit.hit(cache, (small, "a"), (other, "a"))
        with pytest.raises(RateLimited) as caught:
            await ratelimit.hit(cache, (small, "a"), (other, "a"))
        assert 28 <= caught.value.retry_after <= 30
        await ratelimit.hit(cache, (small, "b"))  # identifiers are independent
        assert await cache.get("rl:t:a") == b"4"
        assert await cache.get("rl:t2:a") == b"4"
        assert 0 < await cache.ttl("rl:t:a") <= 30
        # Odd identifiers are hashed into the key, not pasted into it.
        await ratelimit.hit(cache, (small, "x y*z"))
        assert ratelimit.key_for(small, "x y*z").startswith("rl:t:h-")
    finally:
        await cache.aclose()


async def test_rate_limit_fails_open_when_redis_is_down(booth: Booth) -> None:
    b = booth
    b.services.cache = Cache.from_url("redis://127.0.0.1:1/0", timeout=0.3)
    for _ in range(12):  # past the limit: nothing counts while Redis is gone
        assert (await b.login()).status_code == 200


# -- CORS ------------------------------------------------------------------------------------


async def test_cors_allowlist(booth_env: BoothEnv) -> None:
    async with booth_env.open(
        cors_origins="https://ops.example.com, http://192.168.1.20:5173/"
    ) as b:
        allowed = "http://192.168.1.20:5173"
        pre = await b.client.options(
            "/events",
            headers={"Origin": allowed, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"},
        )  # fmt: skip
        assert pre.status_code == 204
        assert pre.headers["Access-Control-Allow-Origin"] == allowed
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        assert pre.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert "Access-Control-Allow-Credentials" not in pre.headers
        denied = await b.client.options(
            "/events",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert denied.status_code == 403
        assert "Access-Control-Allow-Origin" not in denied.headers

        # Actual requests: errors carry the header too (the browser must see the 401).
        r = await b.client.get("/events", headers={"Origin": "https://ops.example.com"})
        assert r.status_code == 401
        assert r.headers["Access-Control-Allow-Origin"] == "https://ops.example.com"
        assert "Origin" in r.headers["Vary"]
        r = await b.client.get("/events", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_cors_off_by_default_and_bad_setting_refused(booth: Booth) -> None:
    b = booth
    r = await b.client.get("/auth/me", headers={"Origin": "https://ops.example.com"})
    assert "Access-Control-Allow-Origin" not in r.headers
    b.services.settings.cors_origins = "ops.example.com/path"
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        create_app(b.services)
