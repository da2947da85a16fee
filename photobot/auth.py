"""Operators: who may log in, password checks, and the JWTs that carry a login.

Where operators come from, checked in this order; the first source that knows a username decides
(a password is never tried against a second source, so one user never has two valid passwords):

1. ``OPERATOR_PASSWORD``: the single operator ``operator`` (role ``admin``: the sole owner of the
   box), compared as SHA-256 digests with ``hmac.compare_digest``;
2. ``OPERATORS_JSON``: ``[{"username", "passwordHash"[, "role"]}]`` with argon2 (``$argon2…``)
   or bcrypt (``$2a$/$2b$/$2y$``) hashes; role ``operator`` (default) or ``admin``;
3. the ``operators`` table (``photobot operator add``; argon2id), rows with ``disabled_at`` unset.

Operator ids: the row's uuid for table operators, ``env:<username>`` for the other two.

A wrong password and an unknown username fail the same way (:class:`Unauthorized`, same
message), and an unknown username is checked against a dummy argon2 hash so both take about the
same time. argon2 and bcrypt are deliberately slow: they run in worker threads behind a small
named ``CapacityLimiter`` so a burst of logins cannot starve the event loop or every core.

Tokens: JWT HS256 with ``sub`` (operator id), ``name`` (username), ``role``, ``iat``, ``exp``
(``JWT_TTL_SECONDS`` later), signed with ``JWT_SECRET`` (at least 32 characters) or, unset, the
key generated into ``<data dir>/secrets.json``. Verification accepts HS256 only (no ``none``,
no algorithm confusion) and requires all those claims. Tokens are stateless: removing or
disabling an operator takes effect for new logins; tokens already issued live until ``exp``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import argon2
import bcrypt
import jwt
import trio

from photobot.config import Settings
from photobot.db import Database
from photobot.errors import ConfigError, Unauthorized
from photobot.local_secrets import LocalSecrets

log = logging.getLogger("photobot.auth")

Role = Literal["operator", "admin"]
ROLES: frozenset[str] = frozenset({"operator", "admin"})
SINGLE_OPERATOR = "operator"
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
#: Longer passwords are refused before hashing (bounded work per request).
MAX_PASSWORD_CHARS = 1024
_MAX_TOKEN_CHARS = 4096
_LOGIN_FAILED = "wrong username or password"

_hasher = argon2.PasswordHasher()


@dataclass(frozen=True)
class Operator:
    """A logged-in operator, as ``g.operator`` holds it."""

    id: str
    username: str
    role: Role

    def to_api(self) -> dict[str, str]:
        return {"id": self.id, "username": self.username, "role": self.role}


def hash_password(password: str) -> str:
    """argon2id with the library's defaults (blocking; ~50 ms)."""
    return _hasher.hash(password)


def _is_bcrypt(stored: str) -> bool:
    return stored.startswith(("$2a$", "$2b$", "$2y$"))


def _is_argon2(stored: str) -> bool:
    return stored.startswith("$argon2")


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches an argon2 or bcrypt hash (blocking). Malformed → False."""
    try:
        if _is_argon2(stored):
            return _hasher.verify(stored, password)
        if _is_bcrypt(stored):
            # bcrypt >= 5 raises on passwords over 72 bytes instead of truncating.
            return bcrypt.checkpw(password.encode("utf-8"), stored.encode("ascii"))
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
    except (ValueError, UnicodeEncodeError):
        return False
    log.warning("operator password hash has an unknown format")
    return False


@dataclass(frozen=True)
class _Credential:
    operator: Operator
    password_hash: str


def _parse_operators_json(raw: str) -> dict[str, _Credential]:
    """OPERATORS_JSON → username → credential, or ConfigError naming the variable (no values)."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid setting OPERATORS_JSON: {why}")

    try:
        entries = json.loads(raw)
    except ValueError:
        raise bad("not valid JSON") from None
    if not isinstance(entries, list):
        raise bad('must be a JSON array of {"username", "passwordHash"[, "role"]}')
    found: dict[str, _Credential] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - {"username", "passwordHash", "role"}:
            raise bad(f"entry {i} must be an object with username, passwordHash and maybe role")
        username, pw_hash = entry.get("username"), entry.get("passwordHash")
        role = entry.get("role", "operator")
        if not isinstance(username, str) or not 1 <= len(username) <= 64:
            raise bad(f"entry {i}: username must be 1-64 characters")
        if not isinstance(pw_hash, str) or not (_is_argon2(pw_hash) or _is_bcrypt(pw_hash)):
            raise bad(f"entry {i}: passwordHash must be an argon2 or bcrypt hash")
        if role not in ROLES:
            raise bad(f"entry {i}: role must be 'operator' or 'admin'")
        if username in found:
            raise bad(f"entry {i}: username {username!r} appears twice")
        op = Operator(f"env:{username}", username, cast(Role, role))
        found[username] = _Credential(op, pw_hash)
    return found


class Authenticator:
    """Checks passwords and issues/verifies tokens. Built once per app from the settings."""

    def __init__(self, settings: Settings, db: Database, secrets: LocalSecrets) -> None:
        self._db = db
        self._ttl = settings.jwt_ttl_seconds
        if settings.jwt_secret is not None:
            key = settings.jwt_secret.get_secret_value().encode("utf-8")
            if len(key) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"invalid setting JWT_SECRET: must be at least {MIN_SECRET_BYTES} bytes"
                )
            self._key = key
        else:
            self._key = secrets.jwt_secret
        self._single: bytes | None = None
        if settings.operator_password is not None:
            pw = settings.operator_password.get_secret_value()
            if not pw:
                raise ConfigError("invalid setting OPERATOR_PASSWORD: must not be empty")
            self._single = hashlib.sha256(pw.encode("utf-8")).digest()
        self._listed: dict[str, _Credential] = {}
        if settings.operators_json is not None and settings.operators_json.get_secret_value():
            self._listed = _parse_operators_json(settings.operators_json.get_secret_value())
        # Two threads: a login takes ~50 ms of CPU, so this still admits ~40 logins/s while
        # leaving the other cores to the event loop and the image work.
        self.limiter = trio.CapacityLimiter(2)
        self.limiter_name = "password-hash"
        self._dummy_hash: str | None = None

    # -- passwords ---------------------------------------------------------------------------

    async def _verify(self, stored: str, password: str) -> bool:
        return await trio.to_thread.run_sync(
            verify_password, stored, password, limiter=self.limiter
        )

    async def _burn(self, password: str) -> None:
        """Spend the time of a real check, for a username nobody has."""
        if self._dummy_hash is None:
            self._dummy_hash = await trio.to_thread.run_sync(
                hash_password, "not-a-password", limiter=self.limiter
            )
        await self._verify(self._dummy_hash, password)

    async def login(self, username: str | None, password: str) -> Operator:
        """The operator these credentials belong to, or :class:`Unauthorized`."""
        username = SINGLE_OPERATOR if username is None else username
        if self._single is not None and username == SINGLE_OPERATOR:
            given = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
            if hmac.compare_digest(given, self._single):
                return Operator(f"env:{SINGLE_OPERATOR}", SINGLE_OPERATOR, "admin")
            raise Unauthorized(_LOGIN_FAILED)
        listed = self._listed.get(username)
        if listed is not None:
            if await self._verify(listed.password_hash, password):
                return listed.operator
            raise Unauthorized(_LOGIN_FAILED)
        row = None
        if 1 <= len(username) <= 64:
            row = await self._db.fetchrow(
                "select id, username, password_hash, role from operators"
                " where username = $1 and disabled_at is null",
                username,
            )
        if row is None:
            await self._burn(password)
            raise Unauthorized(_LOGIN_FAILED)
        if await self._verify(row["password_hash"], password):
            return Operator(str(row["id"]), row["username"], row["role"])
        raise Unauthorized(_LOGIN_FAILED)

    # -- tokens ------------------------------------------------------------------------------

    def issue(self, operator: Operator, *, now: float | None = None) -> tuple[str, datetime]:
        """A signed token for ``operator`` and when it expires."""
        iat = int(time.time() if now is None else now)
        exp = iat + self._ttl
        claims: dict[str, Any] = {
            "sub": operator.id,
            "name": operator.username,
            "role": operator.role,
            "iat": iat,
            "exp": exp,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return token, datetime.fromtimestamp(exp, UTC)

    def verify(self, token: str) -> Operator:
        """The operator a token was issued to, or :class:`Unauthorized` (expired, forged, …)."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("invalid token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "name", "role", "iat", "exp"]},
                # Several boxes issue and check each other's tokens; allow for clock skew.
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("invalid token") from None
        sub, name, role = claims.get("sub"), claims.get("name"), claims.get("role")
        if not isinstance(sub, str) or not isinstance(name, str) or role not in ROLES:
            raise Unauthorized("invalid token")
        return Operator(sub, name, cast(Role, role))


__all__ = [
    "MAX_PASSWORD_CHARS",
    "ROLES",
    "Authenticator",
    "Operator",
    "hash_password",
    "verify_password",
]
