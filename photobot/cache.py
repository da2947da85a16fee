"""Redis through redis-py: the one adapter.

Choice: redis-py's *synchronous* client, each call in a worker thread behind one named
``CapacityLimiter``. Measured on this machine (shared/notes/spike.md §4), 20k SET+GET took
7.7-9.7 s this way against 11.5-15.4 s for ``redis.asyncio`` through trio-asyncio, and it keeps
the asyncio bridge confined to the database adapter. Several commands that belong together go
in one :meth:`Cache.pipeline` call: one thread hop, one round trip.

Keys: every key the app names goes through :meth:`Cache.key`, which adds the configured prefix
(empty by default, so ``redis-cli GET activeSession:booth-1`` works as the seed says; tests and
shared servers use a unique prefix).

Errors: connection failures and timeouts become :class:`~photobot.errors.CacheError`; callers
decide whether that means "wait and retry" (hot folder) or "degraded" (/health).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import trio

from photobot.errors import CacheError

T = TypeVar("T")


class Cache:
    """A redis-py connection pool used from Trio; :meth:`from_url` opens, :meth:`aclose` closes."""

    def __init__(self, client: redis.Redis, *, prefix: str = "", max_threads: int = 16) -> None:
        self._client = client
        self.prefix = prefix
        # Named so a thread dump or a metric can tell Redis threads from boto3 or Pillow ones.
        self.limiter = trio.CapacityLimiter(max_threads)
        self.limiter_name = "redis"

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "", timeout: float = 3.0, max_threads: int = 16
    ) -> Cache:
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=15,
            max_connections=max_threads + 4,
            decode_responses=False,
        )
        return cls(client, prefix=prefix, max_threads=max_threads)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def call(self, fn: Callable[[redis.Redis], T], *, abandon_on_cancel: bool = False) -> T:
        """Run ``fn(client)`` in a thread; translate driver errors.

        ``abandon_on_cancel`` lets a blocking command (BRPOP) be walked away from on cancel; its
        thread finishes by the command's own timeout.
        """

        def in_thread() -> T:
            try:
                return fn(self._client)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                raise CacheError(f"redis unavailable: {exc.__class__.__name__}") from exc
            except redis.RedisError as exc:
                raise CacheError(f"redis error: {exc}", code="redis_error") from exc

        return await trio.to_thread.run_sync(
            in_thread, limiter=self.limiter, abandon_on_cancel=abandon_on_cancel
        )

    # -- the commands the app uses, names already prefixed ------------------------------------

    async def get(self, name: str) -> bytes | None:
        k = self.key(name)
        return await self.call(lambda r: r.get(k))

    async def set(
        self, name: str, value: bytes | str, *, ex: int | None = None, nx: bool = False
    ) -> bool:
        """SET; with ``nx`` returns False when the key already existed."""
        k = self.key(name)
        return bool(await self.call(lambda r: r.set(k, value, ex=ex, nx=nx)))

    async def delete(self, *names: str) -> int:
        keys = [self.key(n) for n in names]
        return int(await self.call(lambda r: r.delete(*keys)))

    async def ttl(self, name: str) -> int:
        """Seconds left; -2 when the key does not exist, -1 when it has no expiry."""
        k = self.key(name)
        return int(await self.call(lambda r: r.ttl(k)))

    async def expire(self, name: str, seconds: int) -> bool:
        k = self.key(name)
        return bool(await self.call(lambda r: r.expire(k, seconds)))

    async def lpush(self, name: str, *values: bytes | str) -> int:
        k = self.key(name)
        return int(await self.call(lambda r: r.lpush(k, *values)))

    async def brpop(self, name: str, timeout: int = 1) -> bytes | None:
        k = self.key(name)
        got = await self.call(lambda r: r.brpop([k], timeout=timeout), abandon_on_cancel=True)
        return None if got is None else got[1]

    async def publish(self, channel: str, message: bytes) -> int:
        k = self.key(channel)
        return int(await self.call(lambda r: r.publish(k, message)))

    async def pipeline(self, build: Callable[[redis.client.Pipeline], Any]) -> Sequence[Any]:
        """Queue commands with ``build(pipe)`` (use :meth:`key`), run them in one round trip."""

        def run(r: redis.Redis) -> Sequence[Any]:
            with r.pipeline(transaction=True) as pipe:
                build(pipe)
                return pipe.execute()

        return await self.call(run)

    async def ping(self) -> None:
        await self.call(lambda r: r.ping())

    async def check(self, timeout: float = 2.0) -> None:
        """Health: PING within ``timeout`` or :class:`CacheError`."""
        with trio.move_on_after(timeout) as cs:
            await self.call(lambda r: r.ping(), abandon_on_cancel=True)
        if cs.cancelled_caught:
            raise CacheError(f"redis did not answer within {timeout:.0f} s")

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._client.close)
