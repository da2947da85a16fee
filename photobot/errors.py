"""Domain errors.

Every failure that crosses a component boundary is one of these. Driver errors (asyncpg,
redis-py, botocore, OS errors) are translated at the edge of the adapter that owns the driver, so
callers never import a driver to catch its exceptions. The web layer maps each class to one HTTP
status and a stable machine-readable ``code``.
"""

from __future__ import annotations


class PhotobotError(Exception):
    """Base class. ``code`` is stable and machine-readable; the message is for people."""

    code = "internal"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(PhotobotError):
    """A setting is missing or invalid; start-up stops with one line naming it."""

    code = "config"


class NotFound(PhotobotError):
    """The thing asked for does not exist (or is not visible to the caller)."""

    code = "not_found"


class Conflict(PhotobotError):
    """The request collides with the current state (duplicate, wrong state transition)."""

    code = "conflict"


class InvalidInput(PhotobotError):
    """The input is well-formed but wrong; the message says which field and why."""

    code = "invalid_input"


class Unavailable(PhotobotError):
    """A backing service (database, Redis, storage, provider) cannot be reached right now."""

    code = "unavailable"


class DatabaseError(Unavailable):
    """The database failed in a way that is not the caller's fault."""

    code = "database_unavailable"


class CacheError(Unavailable):
    """Redis is unreachable or answered with an error."""

    code = "redis_unavailable"


class StorageError(Unavailable):
    """Object storage failed (timeout, network, server error)."""

    code = "storage_unavailable"


class Unauthorized(PhotobotError):
    """No valid credentials: missing, expired or forged token, wrong password."""

    code = "unauthorized"


class Forbidden(PhotobotError):
    """Valid credentials, but not for this."""

    code = "forbidden"


class RateLimited(PhotobotError):
    """Too many requests from one client; ``retry_after`` seconds until the next may pass."""

    code = "rate_limited"

    def __init__(self, message: str = "", *, retry_after: int = 1, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PayloadTooLarge(InvalidInput):
    """The request body or upload is larger than allowed."""

    code = "payload_too_large"
