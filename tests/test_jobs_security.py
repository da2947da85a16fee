"""Seed 001 §10 for the jobs API on a live booth (real HTTP server, PostgreSQL, Redis, storage):
``POST /jobs`` is rate limited per operator login, every non-page answer carries the security
headers, and ``POST /jobs/:id/retry`` honours an ``Idempotency-Key``."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from photobot.auth import hash_password
from tests.live_booth import Live, jpeg, open_live
from web import pages
from web.app import API_CSP, FinalSendShield, create_app

SECOND_PASSWORD = "second-operator-password"
JOBS_PER_MINUTE = 3


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    second = [{"username": "budi", "passwordHash": hash_password(SECOND_PASSWORD)}]
    async with open_live(
        database_url, redis_url, tmp_path / "data",
        jobs_rate_limit_per_minute=JOBS_PER_MINUTE, operators_json=json.dumps(second),
    ) as booth:  # fmt: skip
        yield booth


def assert_api_headers(r: httpx.Response) -> None:
    assert r.headers.get("Content-Security-Policy") == API_CSP, (r.status_code, r.headers)
    assert "frame-ancestors 'none'" in API_CSP
    assert r.headers.get("X-Content-Type-Options") == "nosniff", r.headers
    assert r.headers.get("Referrer-Policy") == "no-referrer", r.headers


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"code", "message"}
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]


async def job_count(live: Live) -> int:
    return int(await live.services.db.fetchval("select count(*) from jobs"))


async def test_post_jobs_is_rate_limited_per_operator_and_replays_are_free(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    photos = [jpeg() for _ in range(JOBS_PER_MINUTE)]
    for i, photo in enumerate(photos):
        r = await live.submit(session, photo, key=f"shot-{i}")
        assert r.status_code == 201, r.text

    over = await live.submit(session, jpeg(), key="shot-over")
    assert_error(over, 429, "rate_limited")
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert_api_headers(over)
    assert await job_count(live) == JOBS_PER_MINUTE  # the refused photo made no job
    # Resending a capture whose answer was lost still gets its job, however often.
    for _ in range(2):
        again = await live.submit(session, photos[0], key="shot-0")
        assert again.status_code == 200, again.text
    # ... while a new capture without a key, or with a new one, still waits.
    assert_error(await live.submit(session, jpeg()), 429, "rate_limited")
    # A reused key makes no job either way: the answer is the 409, not the limit.
    reused = await live.submit(session, jpeg(), key="shot-1")
    assert_error(reused, 409, "idempotency_reused")

    # The limit is the operator's, not the box's: another login submits freely.
    login = await live.http.post(
        "/auth/login", json={"username": "budi", "password": SECOND_PASSWORD}
    )
    budi = {"Authorization": f"Bearer {login.json()['token']}"}
    r = await live.http.post(
        "/jobs",
        data={"sessionId": session["sessionId"], "eventId": session["eventId"]},
        files={"image": ("shot.jpg", jpeg(), "image/jpeg")},
        headers=budi,
    )
    assert r.status_code == 201, r.text
    assert await job_count(live) == JOBS_PER_MINUTE + 1


async def test_every_api_answer_carries_the_security_headers(live: Live) -> None:
    event = await live.event()
    assert_api_headers(await live.http.get("/jobs", headers=live.auth))
    assert_api_headers(await live.http.get(f"/events/{event['id']}", headers=live.auth))
    assert_api_headers(await live.http.get("/health"))
    errors = [
        (await live.http.get("/jobs"), 401),
        (await live.http.get("/no/such/route"), 404),
        (await live.http.delete("/jobs", headers=live.auth), 405),
        (
            await live.http.post(
                "/events", content=b'{"name": "' + b"x" * 70_000 + b'"}',
                headers={**live.auth, "Content-Type": "application/json"},
            ),
            413,
        ),
        (await live.http.get("/jobs?status=lost", headers=live.auth), 422),
    ]  # fmt: skip
    for r, status in errors:
        assert_error(r, status)
        assert_api_headers(r)
    # A stricter policy a route sets itself is kept (the guest's QR: no-referrer, no-store).
    session = await live.guest(event["id"])
    qr = await live.http.get(session["qrSvgUrl"])
    assert qr.status_code == 200 and qr.headers["Cache-Control"] == "private, no-store"
    assert_api_headers(qr)
    # Pages keep their own policy (scripts and styles from the box).
    page = await live.http.get("/console")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"] == pages.CSP
    assert page.headers["Referrer-Policy"] == "same-origin"


async def test_an_unhandled_error_carries_the_security_headers_too(live: Live) -> None:
    # The booth's own app around the same services, plus one route that fails unexpectedly.
    app = create_app(live.services)

    async def boom() -> str:
        raise RuntimeError("unexpected")

    app.add_url_rule("/test-boom", "test_boom", boom)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(serve, FinalSendShield(app), config, shutdown_trigger=stop.wait)
        )
        async with httpx.AsyncClient(base_url=binds[0], timeout=30) as http:
            r = await http.get("/test-boom")
        stop.set()
    assert_error(r, 500, "internal")
    assert_api_headers(r)


async def _final_job(live: Live) -> dict[str, Any]:
    event = await live.event()
    session = await live.guest(event["id"])
    r = await live.submit(session)
    assert r.status_code == 201, r.text
    done = await live.wait_final(r.json()["id"])
    assert done["status"] == "succeeded", done
    return done


async def children(live: Live, parent_id: str) -> int:
    return int(
        await live.services.db.fetchval(
            "select count(*) from jobs where parent_job_id = $1::uuid", parent_id
        )
    )


async def test_a_double_retry_with_one_idempotency_key_makes_one_child(live: Live) -> None:
    parent = await _final_job(live)
    url = f"/jobs/{parent['id']}/retry"
    headers = {**live.auth, "Idempotency-Key": "retry-click-1"}
    results: list[httpx.Response] = []

    async def send() -> None:
        results.append(await live.http.post(url, headers=headers))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
    assert sorted(r.status_code for r in results) == [200, 201], [r.text for r in results]
    child = results[0].json()
    assert results[1].json()["id"] == child["id"] and child["parentJobId"] == parent["id"]
    assert await children(live, parent["id"]) == 1

    # Later clicks, through Redis and (key gone from Redis) through PostgreSQL, answer the same.
    again = await live.http.post(url, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == child["id"]
    await live.services.cache.delete("idemp:retry-click-1")
    again = await live.http.post(url, headers=headers)
    assert again.status_code == 200 and again.json()["id"] == child["id"]
    assert await children(live, parent["id"]) == 1
    assert (await live.wait_final(child["id"]))["status"] == "succeeded"

    # Without a key every retry is a new child, as before.
    for _ in range(2):
        assert (await live.http.post(url, headers=live.auth)).status_code == 201
    assert await children(live, parent["id"]) == 3


async def test_a_retry_key_reused_for_another_job_is_a_clear_conflict(live: Live) -> None:
    first, second = await _final_job(live), await _final_job(live)
    key = {"Idempotency-Key": "retry-key"}
    r = await live.http.post(f"/jobs/{first['id']}/retry", headers={**live.auth, **key})
    assert r.status_code == 201, r.text

    other_parent = await live.http.post(f"/jobs/{second['id']}/retry", headers={**live.auth, **key})
    assert "different job" in assert_error(other_parent, 409, "idempotency_reused")["message"]
    # The same refusal when Redis does not know the key: PostgreSQL's unique index decides.
    await live.services.cache.delete("idemp:retry-key")
    other_parent = await live.http.post(f"/jobs/{second['id']}/retry", headers={**live.auth, **key})
    assert_error(other_parent, 409, "idempotency_reused")
    assert await children(live, second["id"]) == 0

    # A capture's key is not a retry's, and the other way round, even for the very same photo.
    event = await live.event()
    session = await live.guest(event["id"])
    photo = jpeg()
    captured = await live.submit(session, photo, key="capture-key")
    assert captured.status_code == 201
    assert (await live.wait_final(captured.json()["id"]))["status"] == "succeeded"
    as_retry = await live.http.post(
        f"/jobs/{captured.json()['id']}/retry",
        headers={**live.auth, "Idempotency-Key": "capture-key"},
    )
    assert_error(as_retry, 409, "idempotency_reused")
    child_key = {"Idempotency-Key": "child-key"}
    child = await live.http.post(
        f"/jobs/{captured.json()['id']}/retry", headers={**live.auth, **child_key}
    )
    assert child.status_code == 201
    as_capture = await live.submit(session, photo, key="child-key")
    assert_error(as_capture, 409, "idempotency_reused")
    assert await children(live, captured.json()["id"]) == 1

    bad = await live.http.post(
        f"/jobs/{first['id']}/retry", headers={**live.auth, "Idempotency-Key": "x" * 201}
    )
    assert_error(bad, 422)
