"""The booth's active session (seed 000) on real services: Redis value and TTL, the
``booth_sessions`` record (stopped / replaced / expired), the sweep, errors, recent jobs."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
import trio

from actors import registry as registry_actor
from actors.registry import SessionRegistry
from photobot import jobs
from photobot.cache import Cache
from photobot.errors import CacheError
from photobot.events import Event, create_event
from photobot.supervisor import ChildContext
from tests.test_auth import JSON, Booth, booth_env_fixture, booth_fixture, error_of

__all__ = ["booth_env_fixture", "booth_fixture"]  # fixtures used by name

SEED_KEYS = {
    "sessionId", "eventId", "code", "name", "whatsapp", "operatorId", "startedAt",
    "mode", "styleId", "boothSessionId",
}  # fmt: skip
RESPONSE_KEYS = {
    "boothId", "sessionId", "eventId", "name", "whatsapp", "ttlSeconds", "mode", "styleId",
    "startedAt",
}  # fmt: skip


@pytest.fixture
def raw(redis_url) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A plain redis-py client and the test's key prefix: what ``redis-cli`` would see."""
    client = redis.Redis.from_url(redis_url.url)
    client.prefix = redis_url.prefix  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.close()


def _key(raw: Any, booth_id: str) -> str:
    return f"{raw.prefix}activeSession:{booth_id}"


async def _event(b: Booth, slug: str = "wedding") -> Event:
    return await create_event(b.services.db, {"name": slug.title(), "slug": slug})


async def _guest(b: Booth, event: str = "wedding", name: str = "Ana") -> Any:
    return (await b.services.registry.register(event, name, "08123456789")).session


async def _start(b: Booth, booth_id: str = "booth-1", **body: Any) -> Any:
    return await b.client.post(
        f"/booth/{booth_id}/active-session", json=body, headers={**b.auth(), **JSON}
    )


async def _rows(b: Booth, booth_id: str | None = None) -> list[Any]:
    return await b.services.db.fetch(
        "select * from booth_sessions where $1::text is null or booth_id = $1"
        " order by started_at, id",
        booth_id,
    )


def _dead_cache(prefix: str) -> Cache:
    with socket.socket() as s:  # a port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Cache.from_url(f"redis://127.0.0.1:{port}/0", prefix=prefix, timeout=0.5)


def _registry(b: Booth, cache: Cache | None = None, **settings: Any) -> SessionRegistry:
    s = b.services
    return SessionRegistry(s.db, cache or s.cache, s.settings.model_copy(update=settings))


async def _run_actor(
    registry: SessionRegistry, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    ctx = ChildContext("session_registry", 0, lambda _: None)
    task_status.started(ctx)
    await registry_actor.run(ctx, registry)


# -- start, get, refresh, clear ----------------------------------------------------------------


async def test_start_stores_the_seed_value_with_its_ttl(booth: Booth, raw: Any) -> None:
    b = booth
    event = await _event(b)
    guest = await _guest(b)
    response = await _start(b, sessionId=str(guest.id), eventId="wedding", code=guest.code.lower())
    assert response.status_code == 200, await response.get_json()
    body = await response.get_json()
    ttl = b.services.settings.active_session_ttl_seconds
    assert set(body) == RESPONSE_KEYS
    assert body["boothId"] == "booth-1" and body["sessionId"] == str(guest.id)
    assert body["eventId"] == str(event.id) and body["name"] == "Ana"
    assert body["whatsapp"] == "+628123456789" and body["ttlSeconds"] == ttl == 1800
    assert body["mode"] == "session" and body["styleId"] is None

    stored = json.loads(raw.get(_key(raw, "booth-1")))
    assert set(stored) == SEED_KEYS
    (row,) = await _rows(b)
    assert stored == {
        "sessionId": str(guest.id),
        "eventId": str(event.id),
        "code": guest.code,
        "name": "Ana",
        "whatsapp": "+628123456789",
        "operatorId": "env:operator",
        "startedAt": body["startedAt"],
        "mode": "session",
        "styleId": None,
        "boothSessionId": str(row["id"]),
    }
    assert ttl - 2 <= raw.ttl(_key(raw, "booth-1")) <= ttl
    assert not raw.exists("activeSession:booth-1")  # everything is under the test's prefix

    assert datetime.fromisoformat(body["startedAt"]) == row["started_at"]
    assert row["last_refreshed_at"] == row["started_at"] and row["ended_at"] is None
    assert (row["booth_id"], row["event_id"], row["session_id"]) == ("booth-1", event.id, guest.id)
    assert (row["mode"], row["operator_id"], row["end_reason"]) == ("session", "env:operator", None)
    booth_row = await b.services.db.fetchrow("select * from booths where id = 'booth-1'")
    assert booth_row["event_id"] == event.id

    active = await b.services.registry.active_session("booth-1")
    assert active is not None and active.booth_session_id == str(row["id"])
    assert (active.session_id, active.code, active.style_id) == (str(guest.id), guest.code, None)

    # The guest's code alone (no sessionId) finds the same guest, with a style this time.
    again = await _start(b, eventId=str(event.id), code=guest.code, styleId="vintage")
    assert again.status_code == 200, await again.get_json()
    assert (await again.get_json())["sessionId"] == str(guest.id)
    assert json.loads(raw.get(_key(raw, "booth-1")))["styleId"] == "vintage"


async def test_get_counts_down_and_refresh_resets(booth: Booth, raw: Any) -> None:
    b = booth
    await _event(b)
    guest = await _guest(b)
    assert (await _start(b, sessionId=str(guest.id), eventId="wedding")).status_code == 200
    key = _key(raw, "booth-1")
    raw.expire(key, 100)

    first = await b.client.get("/booth/booth-1/active-session", headers=b.auth())
    assert first.status_code == 200
    body = await first.get_json()
    assert set(body) == RESPONSE_KEYS | {"ttlSecondsRemaining"}
    assert body["sessionId"] == str(guest.id) and body["ttlSeconds"] == 1800
    assert body["ttlSecondsRemaining"] in (99, 100)
    await trio.sleep(1.1)
    later = await (await b.client.get("/booth/booth-1/active-session", headers=b.auth())).get_json()
    assert later["ttlSecondsRemaining"] < body["ttlSecondsRemaining"]

    (before,) = await _rows(b)
    refreshed = await b.client.post("/booth/booth-1/active-session/refresh", headers=b.auth())
    assert refreshed.status_code == 200
    expected = {"boothId": "booth-1", "refreshed": True, "ttlSeconds": 1800}
    assert await refreshed.get_json() == expected
    assert 1798 <= raw.ttl(key) <= 1800
    now = await (await b.client.get("/booth/booth-1/active-session", headers=b.auth())).get_json()
    assert 1798 <= now["ttlSecondsRemaining"] <= 1800
    (after,) = await _rows(b)
    assert after["last_refreshed_at"] > before["last_refreshed_at"] == before["started_at"]
    assert after["ended_at"] is None

    # The registry's refresh (what the hot folder calls) does the same.
    raw.expire(key, 50)
    assert await b.services.registry.refresh_active("booth-1") == 1800
    assert raw.ttl(key) > 1000

    # Another booth has none: 404 for GET and refresh, and no key appears.
    for response in (
        await b.client.get("/booth/booth-2/active-session", headers=b.auth()),
        await b.client.post("/booth/booth-2/active-session/refresh", headers=b.auth()),
    ):
        assert response.status_code == 404
        assert (await error_of(response))["code"] == "no_active_session"
    assert await b.services.registry.refresh_active("booth-2") is None
    assert not raw.exists(_key(raw, "booth-2"))


async def test_delete_clears_and_ends_the_run_stopped(booth: Booth, raw: Any) -> None:
    b = booth
    await _event(b)
    guest = await _guest(b)
    assert (await _start(b, sessionId=str(guest.id), eventId="wedding")).status_code == 200
    cleared = await b.client.delete("/booth/booth-1/active-session", headers=b.auth())
    assert cleared.status_code == 200
    assert await cleared.get_json() == {"boothId": "booth-1", "cleared": True}
    assert raw.get(_key(raw, "booth-1")) is None
    (row,) = await _rows(b)
    assert row["end_reason"] == "stopped"
    assert row["ended_at"] is not None and row["ended_at"] >= row["last_refreshed_at"]

    missing = await b.client.get("/booth/booth-1/active-session", headers=b.auth())
    assert missing.status_code == 404
    again = await b.client.delete("/booth/booth-1/active-session", headers=b.auth())
    assert await again.get_json() == {"boothId": "booth-1", "cleared": False}
    never = await b.client.delete("/booth/never-used/active-session", headers=b.auth())
    assert await never.get_json() == {"boothId": "never-used", "cleared": False}
    assert (await _rows(b))[0]["ended_at"] == row["ended_at"]  # the ended run is left alone


async def test_a_new_start_replaces_the_open_run(booth: Booth, raw: Any) -> None:
    b = booth
    await _event(b)
    ana, budi, citra = [await _guest(b, name=n) for n in ("Ana", "Budi", "Citra")]
    for guest in (ana, budi):
        response = await _start(b, sessionId=str(guest.id), eventId="wedding")
        assert response.status_code == 200, await response.get_json()
    first, second = await _rows(b)
    assert (first["session_id"], first["end_reason"]) == (ana.id, "replaced")
    assert first["ended_at"] == second["started_at"]  # no gap, no overlap
    assert (second["session_id"], second["ended_at"]) == (budi.id, None)
    assert json.loads(raw.get(_key(raw, "booth-1")))["sessionId"] == str(budi.id)

    # Budi's key expired before the sweep noticed: the next start records it as expired.
    raw.delete(_key(raw, "booth-1"))
    assert (await _start(b, sessionId=str(citra.id), eventId="wedding")).status_code == 200
    _, second, third = await _rows(b)
    assert (second["end_reason"], second["ended_at"]) == ("expired", second["last_refreshed_at"])
    assert third["ended_at"] is None and third["session_id"] == citra.id


async def test_a_start_whose_record_fails_puts_the_previous_key_back(
    booth: Booth, raw: Any
) -> None:
    b = booth
    await _event(b)
    ana, budi = await _guest(b), await _guest(b, name="Budi")
    assert (await _start(b, sessionId=str(ana.id), eventId="wedding")).status_code == 200
    key = _key(raw, "booth-1")
    before = raw.get(key)
    raw.expire(key, 500)
    # The database refuses the new run only after the Redis write has happened.
    await b.services.db.execute(
        """create function refuse() returns trigger language plpgsql as
           $$ begin raise exception 'refused'; end $$;
           create trigger refuse before insert on booth_sessions
           for each row execute function refuse()"""
    )
    failed = await _start(b, sessionId=str(budi.id), eventId="wedding")
    assert failed.status_code == 503, await failed.get_json()
    assert raw.get(key) == before and 495 <= raw.ttl(key) <= 500
    (row,) = await _rows(b)
    assert row["session_id"] == ana.id and row["ended_at"] is None

    # Without a previous key, the failed start leaves none behind.
    raw.delete(key)
    assert (await _start(b, sessionId=str(budi.id), eventId="wedding")).status_code == 503
    assert not raw.exists(key)


async def test_concurrent_starts_leave_one_open_run_matching_the_key(
    booth: Booth, raw: Any
) -> None:
    b = booth
    await _event(b)
    guests = [await _guest(b, name=f"Guest {i}") for i in range(5)]
    async with trio.open_nursery() as nursery:
        for guest in guests:
            nursery.start_soon(
                lambda g=guest: b.services.registry.start_active(
                    "booth-1", event_id_or_slug="wedding", session_id=str(g.id)
                )
            )
    rows = await _rows(b)
    assert len(rows) == 5
    open_rows = [r for r in rows if r["ended_at"] is None]
    assert len(open_rows) == 1
    assert sorted(r["end_reason"] for r in rows if r["ended_at"]) == ["replaced"] * 4
    assert json.loads(raw.get(_key(raw, "booth-1")))["boothSessionId"] == str(open_rows[0]["id"])


async def test_gallery_mode_has_no_guest(booth: Booth, raw: Any) -> None:
    b = booth
    event = await _event(b)
    response = await _start(b, "roaming.cam_2", eventId="wedding", mode="gallery", styleId="bw")
    assert response.status_code == 200, await response.get_json()
    body = await response.get_json()
    assert body["mode"] == "gallery" and body["styleId"] == "bw"
    assert body["sessionId"] is None and body["name"] is None and body["whatsapp"] is None
    stored = json.loads(raw.get(_key(raw, "roaming.cam_2")))
    assert stored["mode"] == "gallery" and stored["eventId"] == str(event.id)
    assert stored["sessionId"] is None and stored["code"] is None
    (row,) = await _rows(b)
    assert (row["mode"], row["session_id"], row["style_id"]) == ("gallery", None, "bw")
    active = await b.services.registry.active_session("roaming.cam_2")
    assert active is not None and active.mode == "gallery" and active.session_id is None

    guest = await _guest(b)
    mixed = await _start(b, eventId="wedding", mode="gallery", sessionId=str(guest.id))
    assert mixed.status_code == 422


# -- refusals ----------------------------------------------------------------------------------


async def test_unknown_expired_and_foreign_sessions_are_refused(booth: Booth, raw: Any) -> None:
    b = booth
    await _event(b)
    await _event(b, "party")
    guest = await _guest(b)
    expired = await _guest(b, name="Late")
    await b.services.db.execute(
        "update guest_sessions set expires_at = now() - interval '1 second' where id = $1",
        expired.id,
    )
    cases = [
        ({"sessionId": str(uuid.uuid4()), "eventId": "wedding"}, 404, "session_not_found"),
        ({"sessionId": "not-a-uuid", "eventId": "wedding"}, 404, "session_not_found"),
        ({"eventId": "wedding", "code": "ZZZZZZ"}, 404, "session_not_found"),
        ({"sessionId": str(guest.id), "eventId": "nope"}, 404, "event_not_found"),
        ({"sessionId": str(expired.id), "eventId": "wedding"}, 409, "session_expired"),
        ({"sessionId": str(guest.id), "eventId": "party"}, 409, "session_event_mismatch"),
        ({"sessionId": str(guest.id), "eventId": "wedding", "code": "ABCDEF"}, 409,
         "session_code_mismatch"),
        ({"eventId": "wedding"}, 422, "missing_field"),
        ({"sessionId": str(guest.id)}, 422, "missing_field"),
        ({"sessionId": str(guest.id), "eventId": "wedding", "mode": "solo"}, 422, "invalid_mode"),
        ({"sessionId": str(guest.id), "eventId": "wedding", "styleId": "x"}, 422, "invalid_style"),
        ({"sessionId": str(guest.id), "eventId": "wedding", "extra": 1}, 422, "invalid_input"),
        ({"sessionId": 5, "eventId": "wedding"}, 422, "invalid_field"),
    ]  # fmt: skip
    for body, status, code in cases:
        response = await _start(b, **body)
        assert response.status_code == status, (body, await response.get_json())
        assert (await error_of(response))["code"] == code, body
    assert raw.get(_key(raw, "booth-1")) is None
    assert await _rows(b) == []


async def test_bad_booth_ids_and_missing_auth(booth: Booth) -> None:
    b = booth
    await _event(b)
    guest = await _guest(b)
    body = {"sessionId": str(guest.id), "eventId": "wedding"}
    for bad in ("a" * 65, "bad%20id", "x!y", "caf%C3%A9"):
        for method, path in (
            ("POST", f"/booth/{bad}/active-session"),
            ("GET", f"/booth/{bad}/active-session"),
            ("DELETE", f"/booth/{bad}/active-session"),
            ("POST", f"/booth/{bad}/active-session/refresh"),
            ("GET", f"/booth/{bad}/recent-jobs"),
        ):
            response = await b.client.open(path, method=method, json=body, headers=b.auth())
            assert response.status_code == 422, (method, path)
            assert (await error_of(response))["code"] == "invalid_booth_id"
    assert (await _start(b, "a" * 64, **body)).status_code == 200  # 64 is still fine

    for method, path in (
        ("POST", "/booth/booth-1/active-session"),
        ("GET", "/booth/booth-1/active-session"),
        ("DELETE", "/booth/booth-1/active-session"),
        ("POST", "/booth/booth-1/active-session/refresh"),
        ("GET", "/booth/booth-1/recent-jobs"),
    ):
        response = await b.client.open(path, method=method, json=body)
        assert response.status_code == 401, (method, path)
        assert (await error_of(response))["code"] == "unauthorized"
    assert len(await _rows(b)) == 1


# -- Redis down, expiry and the sweep ---------------------------------------------------------


async def test_redis_down_is_503_and_the_sweep_ends_nothing(booth: Booth, raw: Any) -> None:
    b = booth
    await _event(b)
    guest = await _guest(b)
    body = {"sessionId": str(guest.id), "eventId": "wedding"}
    assert (await _start(b, **body)).status_code == 200
    live = b.services.registry
    raw.delete(_key(raw, "booth-1"))  # the key is gone, but a booth without Redis cannot know
    dead_cache = _dead_cache(raw.prefix)
    dead = _registry(b, dead_cache)
    dead.sweep_interval = 0.02
    b.services.registry = dead

    for method, path in (
        ("POST", "/booth/booth-1/active-session"),
        ("GET", "/booth/booth-1/active-session"),
        ("DELETE", "/booth/booth-1/active-session"),
        ("POST", "/booth/booth-1/active-session/refresh"),
        ("GET", "/booth/booth-1/recent-jobs"),
    ):
        response = await b.client.open(path, method=method, json=body, headers=b.auth())
        assert response.status_code == 503, (method, path)
        assert (await error_of(response))["code"] == "redis_unavailable"
    with pytest.raises(CacheError):
        await dead.active_session("booth-1")
    with pytest.raises(CacheError):
        await dead.sweep_expired()

    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(_run_actor, dead)
        await trio.sleep(0.3)  # many rounds, each skipped
        assert ctx.is_started
        ctx.stopping.set()
    (row,) = await _rows(b)
    assert row["ended_at"] is None and row["end_reason"] is None
    assert await b.services.db.fetchval("select count(*) from booths") == 1

    await dead_cache.aclose()
    b.services.registry = live  # Redis is back: the next sweep sees the key gone
    assert await live.sweep_expired() == [row["id"]]
    (row,) = await _rows(b)
    assert (row["end_reason"], row["ended_at"]) == ("expired", row["last_refreshed_at"])


async def test_ttl_expiry_is_swept_as_expired_at_the_last_refresh(booth: Booth, raw: Any) -> None:
    b = booth
    await _event(b)
    ana, budi = await _guest(b), await _guest(b, name="Budi")
    # booth-2 keeps the normal TTL; booth-1 runs on a 1-second one.
    other = await _start(b, "booth-2", sessionId=str(budi.id), eventId="wedding")
    assert other.status_code == 200
    short = _registry(b, active_session_ttl_seconds=1)
    short.sweep_interval = 0.05
    b.services.registry = short
    response = await _start(b, "booth-1", sessionId=str(ana.id), eventId="wedding")
    assert (await response.get_json())["ttlSeconds"] == 1
    await trio.sleep(0.2)
    refreshed = await b.client.post("/booth/booth-1/active-session/refresh", headers=b.auth())
    assert (await refreshed.get_json())["ttlSeconds"] == 1
    (opened,) = await _rows(b, "booth-1")
    assert opened["last_refreshed_at"] > opened["started_at"]
    assert opened["ended_at"] is None  # alive: the sweep leaves it

    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(_run_actor, short)
        for _ in range(100):  # up to 5 s; the key lives 1 s, the sweep runs every 0.05 s
            if (await _rows(b, "booth-1"))[0]["ended_at"] is not None:
                break
            await trio.sleep(0.05)
        ctx.stopping.set()
    (row,) = await _rows(b, "booth-1")
    assert row["end_reason"] == "expired"
    assert row["ended_at"] == opened["last_refreshed_at"]  # the last sign of activity
    assert raw.get(_key(raw, "booth-1")) is None
    (other,) = await _rows(b, "booth-2")
    assert other["ended_at"] is None and raw.exists(_key(raw, "booth-2"))
    missing = await b.client.get("/booth/booth-1/active-session", headers=b.auth())
    assert missing.status_code == 404


# -- recent jobs -------------------------------------------------------------------------------


async def test_recent_jobs_lists_this_booths_jobs_newest_first(booth: Booth) -> None:
    b = booth
    event = await _event(b)
    guest = await _guest(b)

    async def job(booth_id: str | None, n: int) -> str:
        made, _ = await jobs.create(
            b.services.db,
            jobs.NewJob(
                event_id=str(event.id),
                session_id=str(guest.id),
                booth_id=booth_id,
                source="hotfolder",
                input_key=f"raw/{n}.jpg",
                input_sha256=f"{n:064x}",
                input_type="image/jpeg",
                input_bytes=100 + n,
            ),
        )
        return made.id

    mine = [await job("booth-1", 1), await job("booth-1", 2), await job("booth-1", 3)]
    await job("booth-2", 4)
    await job(None, 5)
    response = await b.client.get("/booth/booth-1/recent-jobs", headers=b.auth())
    assert response.status_code == 200
    body = await response.get_json()
    assert body["boothId"] == "booth-1" and body["active"] is None
    assert [item["id"] for item in body["items"]] == mine[::-1]
    assert {item["boothId"] for item in body["items"]} == {"booth-1"}
    assert body["items"][0]["source"] == "hotfolder" and body["items"][0]["status"] == "queued"

    limited = await b.client.get("/booth/booth-1/recent-jobs?limit=2", headers=b.auth())
    assert [item["id"] for item in (await limited.get_json())["items"]] == mine[:0:-1]
    for bad in ("0", "201", "x"):
        refused = await b.client.get(f"/booth/booth-1/recent-jobs?limit={bad}", headers=b.auth())
        assert refused.status_code == 422

    assert (await _start(b, sessionId=str(guest.id), eventId="wedding")).status_code == 200
    body = await (await b.client.get("/booth/booth-1/recent-jobs", headers=b.auth())).get_json()
    assert body["active"]["sessionId"] == str(guest.id)
    assert 1798 <= body["active"]["ttlSecondsRemaining"] <= 1800
    empty = await (await b.client.get("/booth/booth-3/recent-jobs", headers=b.auth())).get_json()
    assert empty == {"boothId": "booth-3", "active": None, "items": []}
