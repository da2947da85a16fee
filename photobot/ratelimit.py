"""Rate limits shared by every booth box at an event, kept in Redis.

Semantics: a fixed window per (bucket, identifier). The first hit in a window creates the key
``rl:{bucket}:{id}`` with a TTL of the window length; every hit increments it; a hit that takes
the count past ``limit`` raises :class:`~photobot.errors.RateLimited` whose ``retry_after`` is
the key's remaining TTL, i.e. when the window resets. Rejected hits count too but never move
the window, so a client that keeps hammering waits exactly as long. The window starts at the
first hit (not on a wall-clock boundary), so boxes with skewed clocks agree: Redis' clock is the
only one used.

One :func:`hit` call checks any number of limits in ONE pipeline (MULTI/EXEC, one thread hop, one
round trip): per limit ``SET key 0 EX window NX`` (creates the window only if absent — works on
every Redis version, unlike ``EXPIRE … NX``), ``INCR key`` (keeps the TTL) and ``TTL key``.

Failing open: if Redis is unreachable the hit is allowed and a warning is logged. A dead Redis
must not lock operators out of a booth; the limits are abuse protection, not accounting.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

from photobot.cache import Cache
from photobot.errors import CacheError, RateLimited

log = logging.getLogger("photobot.ratelimit")

# Identifiers end up in key names; anything outside this set (or too long) is hashed so a
# username with ':' or '*' or a 10 kB string cannot shape the key space.
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:@|\-\[\]]{1,100}")


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` hits per ``window_seconds`` for each identifier in ``bucket``."""

    bucket: str
    limit: int
    window_seconds: int

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_-]{1,32}", self.bucket):
            raise ValueError(f"bad rate limit bucket name {self.bucket!r}")
        if self.limit < 1 or self.window_seconds < 1:
            raise ValueError("limit and window_seconds must be >= 1")


def key_for(limit: Limit, ident: str) -> str:
    """``rl:{bucket}:{id}`` (unprefixed; :class:`Cache` adds the configured prefix)."""
    if not _SAFE_ID.fullmatch(ident):
        ident = "h-" + hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"rl:{limit.bucket}:{ident}"


async def hit(cache: Cache, *checks: tuple[Limit, str]) -> None:
    """Count one hit against each ``(limit, identifier)``; raise ``RateLimited`` if any is over.

    When several are over, ``retry_after`` is the longest wait (the request could not pass
    sooner). Redis errors are logged and the hit is allowed (fail open).
    """
    if not checks:
        return
    keys = [cache.key(key_for(limit, ident)) for limit, ident in checks]

    def build(pipe) -> None:  # type: ignore[no-untyped-def]
        for key, (limit, _) in zip(keys, checks, strict=True):
            pipe.set(key, 0, ex=limit.window_seconds, nx=True)
            pipe.incr(key)
            pipe.ttl(key)

    try:
        replies = await cache.pipeline(build)
    except CacheError as exc:
        log.warning(
            "rate limit not enforced: redis unavailable",
            extra={"buckets": ",".join(limit.bucket for limit, _ in checks), "error": exc.message},
        )
        return

    retry_after = 0
    for i, (limit, _) in enumerate(checks):
        count = int(replies[3 * i + 1])
        ttl = int(replies[3 * i + 2])
        if count > limit.limit:
            # ttl is -1 only if something removed the expiry behind our back; the window length
            # is then the honest upper bound (and the key will be recreated next window).
            wait = ttl if ttl > 0 else limit.window_seconds
            retry_after = max(retry_after, wait)
    if retry_after:
        raise RateLimited(
            f"too many requests; try again in {retry_after} s", retry_after=retry_after
        )


__all__ = ["Limit", "hit", "key_for"]
