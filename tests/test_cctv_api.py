"""Cameras, clip requests and the trigger through the HTTP API, and the store's guarantees
(automatic requests from booth sessions, safe claiming). The poller's work against an NVR is in
tests/test_cctv.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from photobot.cctv.store import CameraKey, ClipStore
from photobot.local_secrets import load_or_create
from tests.live_booth import Live, open_live

PASSWORD = "nvr-secret-Pa55"


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(
        database_url, redis_url, tmp_path / "data",
        batch_interval_seconds=3600, clip_flush_delay_seconds=0, clip_padding_seconds=0.5,
        auto_batch_enabled=False, temp_video_dir=tmp_path / "cctv",
    ) as booth:  # fmt: skip
        yield booth


async def add_camera(live: Live, **fields: Any) -> dict[str, Any]:
    body = {"baseUrl": "http://127.0.0.1:9/", "username": "admin", "password": PASSWORD, **fields}
    r = await live.http.post("/cameras", json=body, headers=live.auth)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_cameras_api_never_shows_the_password(live: Live, tmp_path: Path) -> None:
    camera = await add_camera(live, name="Booth cam", trackId=201, timeMode="utc")
    assert camera["boothId"] == live.services.settings.booth_id
    assert (camera["name"], camera["trackId"], camera["timeMode"]) == ("Booth cam", 201, "utc")
    assert camera["baseUrl"] == "http://127.0.0.1:9"
    assert PASSWORD not in str(camera) and "password" not in str(camera).lower()

    stored = await live.services.db.fetchval(
        "select password_encrypted from cameras where id = $1", uuid.UUID(camera["id"])
    )
    assert PASSWORD not in stored
    # Encrypted with the box's own key when CAMERA_ENCRYPTION_KEY is unset (kept in secrets.json).
    key = CameraKey(load_or_create(tmp_path / "data").camera_key)
    assert key.decrypt(stored) == PASSWORD

    listed = (await live.http.get("/cameras", headers=live.auth)).json()["cameras"]
    assert [c["id"] for c in listed] == [camera["id"]] and PASSWORD not in str(listed)

    for bad in [
        {"baseUrl": "ftp://nvr", "username": "a", "password": "b"},
        {"baseUrl": "http://nvr", "username": "a", "password": "b", "trackId": "101"},
        {"baseUrl": "http://nvr", "username": "a", "password": "b", "timeMode": "gmt"},
        {"baseUrl": "http://nvr", "username": "a"},
        {"baseUrl": "http://nvr", "username": "a", "password": "b", "secret": 1},
        {"baseUrl": "http://admin:pw@nvr", "username": "a", "password": "b"},
        {"baseUrl": "http://:80", "username": "a", "password": "b"},
        {"baseUrl": "http://nvr:port", "username": "a", "password": "b"},
    ]:
        r = await live.http.post("/cameras", json=bad, headers=live.auth)
        assert r.status_code == 422, bad
        assert set(r.json()["error"]) == {"code", "message"}
    assert (await live.http.get("/cameras")).status_code == 401

    r = await live.http.delete(f"/cameras/{camera['id']}", headers=live.auth)
    assert r.status_code == 204
    assert (await live.http.get("/cameras", headers=live.auth)).json()["cameras"] == []
    r = await live.http.delete(f"/cameras/{camera['id']}", headers=live.auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "camera_not_found"


async def test_clip_requests_and_the_trigger_speak_their_contracts(live: Live) -> None:
    camera = await add_camera(live)
    now = datetime.now(UTC)

    async def create(start: datetime, end: datetime, **extra: Any) -> Any:
        return await live.http.post(
            "/clip-requests",
            json={"cameraId": camera["id"], "start": start.isoformat(),
                  "end": end.isoformat(), **extra},
            headers=live.auth,
        )  # fmt: skip

    past = await create(now - timedelta(minutes=5), now - timedelta(minutes=4))
    assert past.status_code == 201, past.text
    assert past.json()["status"] == "READY_FOR_BATCH"  # flush delay 0 here
    future = await create(now, now + timedelta(minutes=10))
    assert future.json()["status"] == "PENDING"
    for start, end, extra in [
        (now, now - timedelta(seconds=1), {}),
        (now, now + timedelta(hours=3), {}),
        (now, now + timedelta(minutes=1), {"sessionId": str(uuid.uuid4())}),
    ]:
        r = await create(start, end, **extra)
        assert r.status_code in (404, 422), r.text
    r = await live.http.post(
        "/clip-requests", json={"cameraId": camera["id"], "start": "2026-11-22T10:00:00",
                                "end": "2026-11-22T10:01:00"}, headers=live.auth,
    )  # fmt: skip
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_time"

    listed = (await live.http.get("/clip-requests", headers=live.auth)).json()
    assert [i["id"] for i in listed["items"]] == [future.json()["id"], past.json()["id"]]
    one = (await live.http.get(f"/clip-requests/{past.json()['id']}", headers=live.auth)).json()
    assert one["clip"] is None and one["cameraId"] == camera["id"]
    r = await live.http.get("/clip-requests?status=DONE", headers=live.auth)
    assert r.status_code == 422

    # Seed 003's trigger: its own answer shapes.
    async def trigger(body: Any) -> Any:
        return await live.http.post("/trigger", json=body, headers=live.auth)

    r = await trigger({"clip_request_id": 999_999})
    assert (r.status_code, r.json()) == (404, {"status": "error",
                                               "message": "Clip request not found"})  # fmt: skip
    for bad in [{"packing_item_id": past.json()["id"]}, {"clip_request_id": 2**70}, [1]]:
        r = await trigger(bad)
        assert r.status_code == 400 and r.json()["status"] == "error", bad
    r = await live.http.post("/trigger", content=b"{not json", headers={
        **live.auth, "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["status"] == "error"
    r = await live.http.get(f"/clip-requests/{2**70}", headers=live.auth)
    assert r.status_code == 422
    r = await trigger({"clip_request_id": future.json()["id"]})
    assert r.status_code == 400 and "not ready" in r.json()["message"]
    live.services.cctv.config = _fast(live.services.cctv.config)
    r = await trigger({"clip_request_id": past.json()["id"]})
    assert (r.status_code, r.json()) == (202, {
        "status": "accepted", "clip_request_id": past.json()["id"],
        "message": "Job queued for processing",
    })  # fmt: skip
    # The poller took it (the camera points at a closed port: NVR unavailable, tried again,
    # then failed with the reason).
    with trio.fail_after(20):
        while True:
            got = (await live.http.get(f"/clip-requests/{past.json()['id']}",
                                       headers=live.auth)).json()  # fmt: skip
            if got["status"] == "FAILED":
                break
            await trio.sleep(0.05)
    assert got["failureReason"].startswith("nvr_unavailable")
    # A failed request can be triggered again; our own route answers with our error shape.
    r = await live.http.post(f"/clip-requests/{future.json()['id']}/trigger", headers=live.auth)
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_ready"
    r = await live.http.post(f"/clip-requests/{past.json()['id']}/trigger", headers=live.auth)
    assert r.status_code == 202 and r.json()["status"] == "READY_FOR_BATCH"
    assert (await live.http.post("/trigger", json={"clip_request_id": 1})).status_code == 401


def _fast(config: Any) -> Any:
    from dataclasses import replace

    return replace(config, backoff_base=0.01, backoff_max=0.05, nvr_timeout=2)


async def test_every_ended_booth_session_gets_a_clip_request(live: Live) -> None:
    s = live.services
    booth = s.settings.booth_id
    event = await live.event()
    guest = await live.guest(event["id"])
    start = {"eventId": event["id"], "sessionId": guest["sessionId"]}

    # A session that ended before the booth had a camera gets no clip.
    r = await live.http.post(f"/booth/{booth}/active-session", json=start, headers=live.auth)
    assert r.status_code == 200, r.text
    await live.http.delete(f"/booth/{booth}/active-session", headers=live.auth)
    await add_camera(live)
    await s.clips.reconcile()
    assert await s.clips.requests() == []

    # Stop Capture, and a run replaced by the next one: both get a request, padded 0.5 s.
    await live.http.post(f"/booth/{booth}/active-session", json=start, headers=live.auth)
    await live.http.post(f"/booth/{booth}/active-session", json=start, headers=live.auth)
    await live.http.delete(f"/booth/{booth}/active-session", headers=live.auth)
    # Gallery mode (no guest): no clip.
    gallery_mode = {"eventId": event["id"], "mode": "gallery"}
    await live.http.post(f"/booth/{booth}/active-session", json=gallery_mode, headers=live.auth)
    await live.http.delete(f"/booth/{booth}/active-session", headers=live.auth)

    # Padded beyond its end, a request waits until that end has passed (flush delay 0 here).
    assert await s.clips.reconcile() == 0
    assert {r.status for r in await s.clips.requests()} == {"PENDING"}
    await trio.sleep(0.6)
    ready = await s.clips.reconcile()
    assert await s.clips.reconcile() == 0  # idempotent
    runs = await s.db.fetch(
        "select id, started_at, ended_at, end_reason from booth_sessions"
        " where session_id is not null and ended_at > (select created_at from cameras limit 1)"
        " order by started_at"
    )
    assert [r["end_reason"] for r in runs] == ["replaced", "stopped"]
    requests = sorted(await s.clips.requests(), key=lambda r: r.start_time)
    assert ready == len(requests) == 2
    for run, request in zip(runs, requests, strict=True):
        assert request.booth_session_id == str(run["id"])
        assert request.session_id == guest["sessionId"]
        assert request.start_time == run["started_at"] - timedelta(seconds=0.5)
        assert request.end_time == run["ended_at"] + timedelta(seconds=0.5)
        assert request.status == "READY_FOR_BATCH"


async def test_two_boxes_never_claim_the_same_request(live: Live) -> None:
    s = live.services
    camera = await add_camera(live)
    now = datetime.now(UTC)
    for n in range(30):
        await s.clips.create_request(
            camera["id"], now - timedelta(minutes=60 - n), now - timedelta(minutes=59 - n)
        )
    other = ClipStore(s.db, s.clips.key, padding=0, flush_delay=0)
    taken: dict[str, list[int]] = {"a": [], "b": []}

    async def claim(store: ClipStore, worker: str) -> None:
        while batch := await store.claim_batch(worker, 3):
            taken[worker].extend(r.id for r in batch)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(claim, s.clips, "a")
        nursery.start_soon(claim, other, "b")
    assert not set(taken["a"]) & set(taken["b"])
    assert len(taken["a"]) + len(taken["b"]) == 30
    assert taken["a"] and taken["b"]
    # A restart of box "a" puts back only its own.
    assert await s.clips.recover("a") == len(taken["a"])
    rows = await s.db.fetch("select status, claimed_by from clip_requests")
    assert sorted({(r["status"], r["claimed_by"]) for r in rows}) == [
        ("PROCESSING", "b"), ("READY_FOR_BATCH", None),
    ]  # fmt: skip


def test_camera_key_errors_are_config_errors() -> None:
    from cryptography.fernet import Fernet

    from photobot.errors import ConfigError

    with pytest.raises(ConfigError, match="CAMERA_ENCRYPTION_KEY"):
        CameraKey("not-a-fernet-key")
    mine, other = CameraKey(Fernet.generate_key()), CameraKey(Fernet.generate_key())
    token = mine.encrypt(PASSWORD)
    assert mine.decrypt(token) == PASSWORD and PASSWORD not in token
    with pytest.raises(ConfigError, match="CAMERA_ENCRYPTION_KEY changed"):
        other.decrypt(token)
