"""Publishing photos to an event's gallery: from finished jobs, from an operator's upload, and
after a crash between the two (live booth, real services)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from PIL import Image

from photobot import jobs
from tests.live_booth import Live, jpeg, open_live


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(database_url, redis_url, tmp_path / "data") as booth:
        yield booth


async def photos_of(live: Live, event_id: str) -> list[dict[str, Any]]:
    rows = await live.services.db.fetch(
        "select id, source, job_id, session_id, original_key, deleted_at from photos"
        " where event_id = $1 order by created_at",
        event_id,
    )
    return [dict(r) for r in rows]


async def test_a_finished_job_is_published_once(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    done = await live.wait_final((await live.submit(session)).json()["id"])
    assert done["status"] == "succeeded"
    [photo] = await photos_of(live, event["id"])
    assert photo["source"] == "job" and str(photo["job_id"]) == done["id"]
    assert str(photo["session_id"]) == session["sessionId"]
    job = await jobs.get(live.services.db, done["id"])
    assert photo["original_key"] == job.best_output_key
    # A second publication of the same job is the same photo.
    again = await live.services.publisher.publish_job(job, 1, "image/jpeg")
    assert again.id == str(photo["id"])
    assert len(await photos_of(live, event["id"])) == 1


async def test_a_job_that_succeeded_without_its_photo_is_recovered(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    done = await live.wait_final((await live.submit(session)).json()["id"])
    # Let the photo's derivatives finish first: deleting it under the optimizer's transaction
    # can deadlock with it (the optimizer is not part of this scenario).
    with trio.fail_after(30):
        while True:
            pending = await live.services.db.fetchval(
                "select count(*) from image_jobs i join photos p on p.id = i.photo_id"
                " where p.job_id = $1 and i.status in ('PENDING', 'PROCESSING')",
                done["id"],
            )
            if pending == 0:
                break
            await trio.sleep(0.05)
    # The process died between the job's success and its publication:
    await live.services.db.execute("delete from photos where job_id = $1", done["id"])
    assert await live.services.publisher.recover(live.services.storage.size) == 1
    [photo] = await photos_of(live, event["id"])
    assert str(photo["job_id"]) == done["id"]
    assert await live.services.publisher.recover(live.services.storage.size) == 0


async def test_operator_uploads_many_photos(live: Live) -> None:
    event = await live.event()
    png = io.BytesIO()
    Image.new("RGB", (64, 48), "green").save(png, "PNG")
    files = [
        # Distinct colours: two random-pixel JPEGs can compress to the same bytes (one photo).
        ("photos", ("a.jpg", jpeg(color=(200, 30, 30)), "image/jpeg")),
        ("photos", ("b.jpg", jpeg(color=(30, 30, 200)), "image/jpeg")),
        ("photos", ("c.png", png.getvalue(), "image/png")),
        ("photos", ("notes.jpg", b"not a photo at all", "image/jpeg")),
    ]
    r = await live.http.post(f"/events/{event['slug']}/photos", files=files, headers=live.auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [p["filename"] for p in body["photos"]] == ["a.jpg", "b.jpg", "c.png"]
    assert all(p["created"] for p in body["photos"])
    assert body["errors"] == [
        {
            "filename": "notes.jpg",
            "error": {
                "code": "unsupported_image",
                "message": body["errors"][0]["error"]["message"],
            },
        }
    ]
    stored = await photos_of(live, event["id"])
    assert [p["source"] for p in stored] == ["upload"] * 3
    # A retried upload of the same file is the same photo.
    retry = await live.http.post(
        f"/events/{event['id']}/photos", files=[files[0]], headers=live.auth
    )
    assert retry.status_code == 201 and retry.json()["photos"][0]["created"] is False
    assert retry.json()["photos"][0]["photoId"] == body["photos"][0]["photoId"]
    # Nothing usable at all: 422. No auth: 401.
    bad = await live.http.post(f"/events/{event['id']}/photos", files=[files[3]], headers=live.auth)
    assert bad.status_code == 422
    assert (
        await live.http.post(f"/events/{event['id']}/photos", files=[files[0]])
    ).status_code == 401


async def test_hiding_a_photo(live: Live) -> None:
    event = await live.event()
    r = await live.http.post(
        f"/events/{event['id']}/photos",
        files=[("p", ("a.jpg", jpeg(), "image/jpeg"))],
        headers=live.auth,
    )
    photo_id = r.json()["photos"][0]["photoId"]
    gone = await live.http.delete(f"/events/{event['id']}/photos/{photo_id}", headers=live.auth)
    assert gone.status_code == 200
    [row] = await photos_of(live, event["id"])
    assert row["deleted_at"] is not None
    other = await live.event()
    wrong = await live.http.delete(f"/events/{other['id']}/photos/{photo_id}", headers=live.auth)
    assert wrong.status_code == 404
