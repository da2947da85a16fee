"""The Redis adapter against real servers (embedded, and the machine's own when TEST_REDIS_URL
is set)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from photobot.cache import Cache
from photobot.errors import CacheError


@pytest.fixture
async def cache(redis_url) -> AsyncIterator[Cache]:  # type: ignore[no-untyped-def]
    c = Cache.from_url(redis_url.url, prefix=redis_url.prefix)
    yield c
    await c.aclose()


async def test_set_nx_ttl_and_prefix(cache: Cache, redis_url) -> None:  # type: ignore[no-untyped-def]
    assert await cache.set("idemp:abc", "job-1", ex=60, nx=True)
    assert not await cache.set("idemp:abc", "job-2", ex=60, nx=True)
    assert await cache.get("idemp:abc") == b"job-1"
    assert 0 < await cache.ttl("idemp:abc") <= 60
    assert await cache.ttl("missing") == -2
    # The prefix is real: the raw key lives under it.
    raw = await cache.call(lambda r: r.get(redis_url.prefix + "idemp:abc"))
    assert raw == b"job-1"


async def test_pipeline_is_one_round_trip_of_several_commands(cache: Cache) -> None:
    results = await cache.pipeline(
        lambda p: (p.set(cache.key("a"), 1), p.incr(cache.key("a")), p.get(cache.key("a")))
    )
    assert list(results) == [True, 2, b"2"]


async def test_list_queue_round_trip(cache: Cache) -> None:
    await cache.lpush("task_queue", b"one", b"two")
    assert await cache.brpop("task_queue", timeout=1) == b"one"
    assert await cache.brpop("task_queue", timeout=1) == b"two"
    with trio.fail_after(3):
        assert await cache.brpop("task_queue", timeout=1) is None


async def test_blocking_pop_can_be_cancelled(cache: Cache) -> None:
    with trio.move_on_after(0.2) as cs:
        await cache.brpop("never", timeout=5)
    assert cs.cancelled_caught


async def test_unreachable_redis_is_a_cache_error() -> None:
    c = Cache.from_url("redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(CacheError):
        await c.get("x")
    with pytest.raises(CacheError):
        await c.check(timeout=1)
