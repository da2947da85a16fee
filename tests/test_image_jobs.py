"""Seed 002 compatibility: the image-job record and API, the worker callback with its token and
transitions, and external workers fed through the Redis list ``task_queue`` (live booth)."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import trio
from PIL import Image

from actors import GalleryMessage
from actors.optimizer import OptimizerConfig
from photobot import photos
from photobot.image_jobs import envelope
from photobot.optimizer import encode_webp
from tests.live_booth import Live, open_live
from tests.standins.cable import open_cable
from tests.test_optimizer import assert_no_metadata, capture, exif_jpeg, upload, wait_status

TOKEN = "worker-callback-token-0123456789"
SEED_FIELDS = {
    "_id", "entityType", "entityId", "sourceImageURL", "sourceImageKey", "outputImageURL",
    "outputImageKey", "status", "errorMsg", "originalFilename", "mimetype", "fileSize",
    "createdAt", "updatedAt", "processedAt",
}  # fmt: skip
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FAST = OptimizerConfig(sweep_interval=0.1, backoff_base=0.05, backoff_max=0.2)


@pytest.fixture
async def builtin(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(
        database_url, redis_url, tmp_path / "data", worker_callback_token=TOKEN
    ) as booth:
        booth.services.optimizer.reconfigure(FAST)
        yield booth


@pytest.fixture
async def external(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(
        database_url, redis_url, tmp_path / "data",
        image_workers="external", worker_callback_token=TOKEN,
    ) as booth:  # fmt: skip
        booth.services.optimizer.reconfigure(FAST)
        yield booth


WORKER = {"Authorization": f"Bearer {TOKEN}"}


async def patch(live: Live, job_id: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await live.http.patch(
        f"/api/image-jobs/{job_id}/status", json=body, headers=headers or WORKER
    )


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while True:
            if await check():
                return
            await trio.sleep(0.05)


async def job_id_of(live: Live, photo_id: str) -> str:
    [job] = await live.services.image_jobs.list_jobs(entity_type="photo", entity_id=photo_id)
    return job.id


# -- the record and the operator API -----------------------------------------------------------


async def test_the_record_has_the_seeds_fields_and_urls_that_work(builtin: Live) -> None:
    live = builtin
    event = await live.event()
    source = exif_jpeg(1600, 1200)
    [photo_id] = await upload(live, event, source)
    job = await wait_status(live, photo_id, "COMPLETED", "FAILED")

    r = await live.http.get(f"/api/image-jobs/{job.id}", headers=live.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == SEED_FIELDS
    assert data["_id"] == job.id and data["entityType"] == "photo"
    assert data["entityId"] == photo_id and data["status"] == "COMPLETED"
    assert data["errorMsg"] == "" and data["mimetype"] == "image/jpeg"
    assert data["fileSize"] == len(source) and data["originalFilename"].endswith(".jpg")
    assert data["outputImageKey"] == f"optimized/{job.id}-optimized.webp"
    photo = await photos.get(live.services.db, photo_id)
    assert data["sourceImageKey"] == photo.original_key
    for name in ("createdAt", "updatedAt", "processedAt"):
        assert ISO_MS.fullmatch(data[name]), data[name]
    # Absolute, signed, and they serve the original and the (metadata-free) WebP.
    for url_field, key_field in (("sourceImageURL", "sourceImageKey"),
                                 ("outputImageURL", "outputImageKey")):  # fmt: skip
        assert data[url_field].startswith("http://127.0.0.1:"), data[url_field]
        got = await live.http.get(data[url_field])
        assert got.status_code == 200
        assert got.content == await live.services.storage.get(data[key_field])
    assert_no_metadata((await live.http.get(data["outputImageURL"])).content)

    r = await live.http.get(
        "/api/image-jobs", params={"entityType": "photo", "entityId": photo_id}, headers=live.auth
    )
    assert r.status_code == 200 and [j["_id"] for j in r.json()["data"]] == [job.id]
    r = await live.http.get("/api/image-jobs", params={"status": "completed"}, headers=live.auth)
    assert [j["_id"] for j in r.json()["data"]] == [job.id]
    r = await live.http.get(
        "/api/image-jobs", params={"entityType": "event", "entityId": photo_id}, headers=live.auth
    )
    assert r.json() == {"success": True, "data": []}
    error_of(
        await live.http.get("/api/image-jobs", params={"entityType": "x"}, headers=live.auth), 422
    )

    # Who may read: an operator, or the worker (the seed's worker GETs the job); nobody else.
    error_of(await live.http.get(f"/api/image-jobs/{job.id}"), 401, "unauthorized")
    error_of(await live.http.get("/api/image-jobs", headers=WORKER), 401)
    r = await live.http.get(f"/api/image-jobs/{job.id}", headers={"X-Worker-Token": TOKEN})
    assert r.status_code == 200 and r.json()["data"]["_id"] == job.id
    assert (await live.http.get(f"/api/image-jobs/{job.id}", headers=WORKER)).status_code == 200
    missing = "00000000-0000-0000-0000-000000000000"
    error_of(await live.http.get(f"/api/image-jobs/{missing}", headers=live.auth), 404)
    error_of(await live.http.get("/api/image-jobs/not-a-uuid", headers=live.auth), 404)


async def test_retry_and_delete(builtin: Live) -> None:
    live = builtin
    event = await live.event()
    [photo_id] = await upload(live, event, exif_jpeg(1600, 1200)[:-5000])  # truncated
    failed = await wait_status(live, photo_id, "COMPLETED", "FAILED")
    assert failed.status == "FAILED" and failed.error_msg.startswith("image_truncated")

    # Retry: back to PENDING with the error cleared, and run again (and it fails again).
    error_of(await live.http.post(f"/api/image-jobs/{failed.id}/retry"), 401)
    r = await live.http.post(f"/api/image-jobs/{failed.id}/retry", headers=live.auth)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] == "PENDING" and r.json()["data"]["errorMsg"] == ""
    again = await wait_status(live, photo_id, "FAILED")
    assert again.attempts == 2

    # The operator replaces nothing; a good photo completes and cannot be retried.
    [good_id] = await upload(live, event, exif_jpeg(1200, 900))
    good = await wait_status(live, good_id, "COMPLETED")
    r = await live.http.post(f"/api/image-jobs/{good.id}/retry", headers=live.auth)
    error_of(r, 409, "invalid_transition")

    # Delete: the derivatives go, the photo's original stays (it is the photo), the record
    # goes, and the photo falls back to its original.
    photo = await photos.get(live.services.db, good_id)
    derivatives = [photo.optimized_key, photo.thumb_large_key, photo.thumb_medium_key,
                   photo.thumb_small_key]  # fmt: skip
    storage = live.services.storage
    assert all([await storage.exists(k) for k in derivatives if k])
    error_of(await live.http.delete(f"/api/image-jobs/{good.id}"), 401)
    r = await live.http.delete(f"/api/image-jobs/{good.id}", headers=live.auth)
    assert r.status_code == 200 and r.json()["success"] is True
    assert not any([await storage.exists(k) for k in derivatives if k])
    assert await storage.exists(photo.original_key)
    after = await photos.get(live.services.db, good_id)
    assert after.optimized_key is None and after.thumb_small_key is None
    error_of(await live.http.get(f"/api/image-jobs/{good.id}", headers=live.auth), 404)
    error_of(await live.http.delete(f"/api/image-jobs/{good.id}", headers=live.auth), 404)


async def test_deleting_a_seed_job_deletes_its_raw_source_too(builtin: Live) -> None:
    live = builtin
    storage = live.services.storage
    raw = "raw/1700000000000-abcdef012345.jpg"
    await storage.put(raw, exif_jpeg(900, 600), "image/jpeg")
    job, _ = await live.services.image_jobs.create(
        entity_type="event", entity_id="655501d2f12a3d0f3c5a1001", source_image_key=raw,
        original_filename="photo.jpg", mimetype="image/jpeg", file_size=1234,
    )  # fmt: skip
    await live.services.image_jobs.notify(job.id)

    async def completed() -> bool:
        return (await live.services.image_jobs.get(job.id)).status == "COMPLETED"

    await until(completed)
    r = await live.http.get(f"/api/image-jobs/{job.id}", headers=live.auth)
    data = r.json()["data"]
    assert data["outputImageKey"] == "optimized/1700000000000-abcdef012345-optimized.webp"
    assert data["originalFilename"] == "photo.jpg" and data["fileSize"] == 1234
    keys = [raw, data["outputImageKey"], "optimized/1700000000000-abcdef012345-small.webp"]
    assert all([await storage.exists(k) for k in keys])
    r = await live.http.delete(f"/api/image-jobs/{job.id}", headers=live.auth)
    assert r.status_code == 200
    assert not any([await storage.exists(k) for k in keys])


# -- the worker callback -----------------------------------------------------------------------


async def test_callbacks_are_refused_without_a_configured_token(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    async with open_live(database_url, redis_url, tmp_path / "data") as live:
        event = await live.event()
        [photo_id] = await upload(live, event, exif_jpeg(640, 480))
        job_id = await job_id_of(live, photo_id)
        for headers in ({}, WORKER, {"X-Worker-Token": TOKEN}, live.auth):
            r = await live.http.patch(
                f"/api/image-jobs/{job_id}/status", json={"status": "PROCESSING"},
                headers=headers,
            )  # fmt: skip
            err = error_of(r, 401, "worker_token_not_configured")
            assert "WORKER_CALLBACK_TOKEN" in err["message"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
        # Without a worker token only operators read jobs.
        r = await live.http.get(f"/api/image-jobs/{job_id}", headers=WORKER)
        error_of(r, 401)


async def test_status_transitions_and_the_worker_token(external: Live) -> None:
    live = external
    event = await live.event()
    [photo_id] = await upload(live, event, exif_jpeg(640, 480))
    job_id = await job_id_of(live, photo_id)

    error_of(await patch(live, job_id, {"status": "PROCESSING"}, Authorization="Bearer nope"), 401)
    error_of(await patch(live, job_id, {"status": "PROCESSING"}, **live.auth), 401)
    error_of(await patch(live, job_id, {"status": "DONE"}), 422, "invalid_status")
    error_of(await patch(live, job_id, {"state": "PROCESSING"}), 422, "invalid_status")
    error_of(await patch(live, job_id, {"status": "PENDING"}), 409, "invalid_transition")
    error_of(
        await patch(live, job_id, {"status": "COMPLETED", "outputImageKey": "optimized/x.webp"}),
        409, "invalid_transition",
    )  # fmt: skip
    r = await live.http.patch(f"/api/image-jobs/{job_id}/status", content=b"{oops", headers=WORKER)
    error_of(r, 415)

    r = await patch(live, job_id, {"status": "processing"})  # the seed's Go sample: lowercase
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] == "PROCESSING"
    r = await patch(live, job_id, {"status": "PROCESSING"}, **{"X-Worker-Token": TOKEN})
    assert r.status_code == 200  # a worker repeating itself
    error_of(await patch(live, job_id, {"status": "COMPLETED"}), 422, "missing_field")
    r = await patch(live, job_id, {"status": "COMPLETED", "outputImageKey": "../etc/passwd"})
    error_of(r, 422, "invalid_key")
    r = await patch(live, job_id, {"status": "COMPLETED", "outputImageKey": "optimized/nope.webp"})
    error_of(r, 422, "output_missing")
    source = (await live.http.get(f"/api/image-jobs/{job_id}", headers=WORKER)).json()["data"]
    r = await patch(
        live, job_id, {"status": "COMPLETED", "outputImageKey": source["sourceImageKey"]}
    )
    error_of(r, 422, "invalid_output_key")  # the source must never become what guests get

    r = await patch(live, job_id, {"status": "FAILED", "errorMsg": "Failed to process\nimage"})
    assert r.status_code == 200
    data = r.json()["data"]
    assert data["status"] == "FAILED" and data["errorMsg"] == "Failed to process image"
    assert data["processedAt"] is not None
    for status in ("PROCESSING", "FAILED"):
        error_of(await patch(live, job_id, {"status": status}), 409, "invalid_transition")
    r = await patch(live, job_id, {"status": "COMPLETED", "outputImageKey": "optimized/x.webp"})
    error_of(r, 409, "invalid_transition")


# -- external workers --------------------------------------------------------------------------


async def fake_worker(live: Live, redis_target: Any, stop: trio.Event, done: list[str]) -> None:
    """The seed's Go worker, step by step: BRPOP task_queue, GET the job, PATCH PROCESSING,
    download the source, make a WebP, upload it under optimized/, PATCH COMPLETED."""
    client = redis.Redis.from_url(redis_target.url)
    queue = f"{redis_target.prefix}task_queue"  # REDIS_PREFIX is empty in production
    try:
        while not stop.is_set():
            popped = await trio.to_thread.run_sync(lambda: client.brpop([queue], timeout=1))
            if popped is None:
                continue
            raw = popped[1]
            task = json.loads(raw)
            assert task["task_type"] == "process_image"
            job_id = task["payload"]["imageJobID"]
            assert raw.decode() == envelope(job_id)  # byte for byte the seed's format
            job = (await live.http.get(f"/api/image-jobs/{job_id}", headers=WORKER)).json()
            assert job["data"]["status"] == "PENDING"
            assert (await patch(live, job_id, {"status": "PROCESSING"})).status_code == 200
            source = await live.http.get(job["data"]["sourceImageURL"])
            assert source.status_code == 200
            with Image.open(io.BytesIO(source.content)) as img:
                img.thumbnail((1024, 1024))
                webp = encode_webp(img.convert("RGB"))
            stem = job["data"]["sourceImageKey"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            key = f"optimized/{stem}-optimized.webp"
            await live.services.storage.put(key, webp, "image/webp")  # the shared bucket
            r = await patch(
                live, job_id,
                {"status": "COMPLETED", "outputImageURL": f"https://pub.example/{key}",
                 "outputImageKey": key},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            done.append(job_id)
    finally:
        client.close()


async def test_a_fake_external_worker_completes_image_jobs(external: Live, redis_url: Any) -> None:
    live = external
    seen = capture(live)
    event = await live.event()
    photo_ids = await upload(live, event, *(exif_jpeg(800 + 8 * n, 600) for n in range(3)))
    stop = trio.Event()
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake_worker, live, redis_url, stop, done)
        with trio.fail_after(30):
            for photo_id in photo_ids:
                await wait_status(live, photo_id, "COMPLETED", "FAILED")
        stop.set()
    assert sorted(done) == sorted([await job_id_of(live, p) for p in photo_ids])
    for photo_id in photo_ids:
        job = await wait_status(live, photo_id, "COMPLETED")
        assert job.claimed_by is None and job.outputs == {}
        photo = await photos.get(live.services.db, photo_id)
        # The worker's one output is the photo's optimized image; no thumbnails (the gallery
        # falls back), and the built-in optimizer made nothing.
        assert photo.optimized_key == job.output_image_key
        assert photo.optimized_key is not None and photo.optimized_key.startswith("optimized/")
        assert photo.thumb_small_key is photo.thumb_medium_key is photo.thumb_large_key is None
        assert not await live.services.storage.exists(f"optimized/{job.id}-small.webp")
    updated = sorted(m.data["photo_id"] for m in seen if m.type == "photo:updated")
    assert updated == sorted(photo_ids)
    assert all(isinstance(m, GalleryMessage) for m in seen)

    # Retry pushes the envelope again.
    client = redis.Redis.from_url(redis_url.url)
    queue = f"{redis_url.prefix}task_queue"
    try:
        job_id = await job_id_of(live, photo_ids[0])
        await live.services.db.execute(
            "update image_jobs set status = 'FAILED' where id = $1", job_id
        )
        r = await live.http.post(f"/api/image-jobs/{job_id}/retry", headers=live.auth)
        assert r.status_code == 200
        assert client.lrange(queue, 0, -1) == [envelope(job_id).encode()]
    finally:
        client.delete(queue)
        client.close()


async def test_an_envelope_that_missed_redis_is_pushed_again(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    # The booth reaches Redis through a cable the test pulls out while a photo is uploaded.
    async with (
        open_cable(redis_url.url) as cable,
        open_live(
            database_url, replace(redis_url, url=cable.via(redis_url.url)),
            tmp_path / "data", image_workers="external", worker_callback_token=TOKEN,
        ) as live,
    ):  # fmt: skip
        live.services.optimizer.reconfigure(FAST)
        event = await live.event()
        cable.cut()
        [photo_id] = await upload(live, event, exif_jpeg(640, 480))  # published all the same
        job_id = await job_id_of(live, photo_id)
        job = await live.services.image_jobs.get(job_id)
        assert job.status == "PENDING" and job.enqueued_at is None
        cable.mend()
        client = redis.Redis.from_url(redis_url.url)
        try:
            popped = await trio.to_thread.run_sync(
                lambda: client.brpop([f"{redis_url.prefix}task_queue"], timeout=10)
            )
            assert popped is not None and popped[1] == envelope(job_id).encode()
        finally:
            client.close()

        async def noted() -> bool:
            return (await live.services.image_jobs.get(job_id)).enqueued_at is not None

        await until(noted, timeout=5)


async def test_concurrent_pushes_of_one_job_queue_it_once(external: Live, redis_url: Any) -> None:
    """The upload's push, the optimizer's sweep and another box's sweep can all see one job
    unpushed at once; a worker must still pop it exactly once."""
    live = external
    event = await live.event()
    [photo_id] = await upload(live, event, exif_jpeg(640, 480))
    job_id = await job_id_of(live, photo_id)
    client = redis.Redis.from_url(redis_url.url)
    queue = f"{redis_url.prefix}task_queue"
    try:
        assert client.lrange(queue, 0, -1) == [envelope(job_id).encode()]
        client.delete(queue)
        for _ in range(3):  # the window between a push's LPUSH and its bookkeeping, reopened
            await live.services.db.execute(
                "update image_jobs set enqueued_at = null where id = $1", uuid.UUID(job_id)
            )
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(live.services.image_jobs.push, job_id)
            assert client.lrange(queue, 0, -1) == [envelope(job_id).encode()]
            client.delete(queue)
        assert (await live.services.image_jobs.get(job_id)).enqueued_at is not None
    finally:
        client.delete(queue)
        client.close()
