"""``POST /jobs`` streams the photo to a spool file as it arrives (web/uploads.py).

The photo is never held whole in memory: it is on disk, hashed, while the request is still
arriving, and the spool is empty again after every answer, good or bad, and after a client that
went away mid-upload.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.live_booth import Live, jpeg, open_live

BOUNDARY = "photobot-test-boundary"


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(database_url, redis_url, tmp_path / "data") as booth:
        yield booth


def form(
    fields: dict[str, str], photo: bytes | None, *, name: str = "image"
) -> tuple[bytes, bytes]:
    """A multipart body split around the photo's bytes: (everything before them, the end)."""
    head = b""
    for key, value in fields.items():
        head += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        ).encode()
    if photo is None:
        return head, f"--{BOUNDARY}--\r\n".encode()
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def headers(live: Live) -> dict[str, str]:
    return {**live.auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def spooled(live: Live) -> list[Path]:
    spool = live.services.upload_spool
    return sorted(spool.iterdir()) if spool.exists() else []


async def test_the_photo_is_on_disk_while_it_arrives_and_the_spool_empties_after(
    live: Live,
) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    photo = jpeg(1600, 1200)
    head, tail = form({"sessionId": session["sessionId"], "eventId": event["id"]}, photo)
    half = len(photo) // 2
    first_half_sent = trio.Event()
    resume = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield head + photo[:half]
        first_half_sent.set()
        await resume.wait()
        yield photo[half:] + tail

    async with trio.open_nursery() as nursery:
        answer: list[httpx.Response] = []

        async def send() -> None:
            answer.append(await live.http.post("/jobs", content=body(), headers=headers(live)))

        nursery.start_soon(send)
        await first_half_sent.wait()
        with trio.fail_after(20):  # the first half reaches the spool file before the rest exists
            while not (files := spooled(live)) or files[0].stat().st_size < half - 64 * 1024:  # noqa: ASYNC110
                await trio.sleep(0.02)
        resume.set()
    [r] = answer
    assert r.status_code == 201, r.text
    assert spooled(live) == []
    job = await live.wait_final(r.json()["id"])
    assert job["status"] == "succeeded"
    sha = await live.services.db.fetchval(
        "select input_sha256 from jobs where id = $1", uuid.UUID(job["id"])
    )
    assert sha == hashlib.sha256(photo).hexdigest()
    row = await live.services.db.fetchrow(
        "select input_bytes, input_key from jobs where id = $1", uuid.UUID(job["id"])
    )
    assert row["input_bytes"] == len(photo)
    assert await live.services.storage.get(row["input_key"]) == photo


async def test_refused_uploads_leave_nothing_in_the_spool(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    fields = {"sessionId": session["sessionId"]}

    async def refused(content: bytes, status: int, code: str) -> None:
        r = await live.http.post("/jobs", content=content, headers=headers(live))
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code, r.text
        assert spooled(live) == []

    head, tail = form(fields, b"")
    await refused(head + b"not a photo at all" + tail, 422, "unsupported_image")
    two = head + jpeg() + b"\r\n" + form({}, b"")[0] + jpeg() + tail
    await refused(two, 422, "too_many_files")
    await refused(head + jpeg(), 422, "bad_multipart")  # the body ends inside the photo
    await refused(form({"sessionId": "x" * 5000}, None)[0], 422, "invalid_field")
    many = b"".join(form({f"f{i}": "v"}, None)[0] for i in range(40)) + form({}, None)[1]
    await refused(many, 422, "bad_multipart")
    await refused(b"".join(form(fields, None)), 422, "missing_field")
    other_name = b"".join(form(fields, b"", name="picture"))
    await refused(other_name, 422, "missing_field")


async def test_an_oversized_photo_is_refused_as_it_crosses_the_limit(live: Live) -> None:
    from web.routes.jobs import MAX_IMAGE_BYTES

    event = await live.event()
    session = await live.guest(event["id"])
    head, tail = form({"sessionId": session["sessionId"]}, b"")
    chunk = b"\xff\xd8\xff" + b"0" * (1024 * 1024 - 3)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head
        # 45 MB in 1 MB pieces, under the whole-request cap (50 MB): the photo limit itself
        # (MAX_IMAGE_BYTES) refuses it, on the streamed bytes.
        for _ in range(45):
            sent += len(chunk)
            yield chunk
        yield tail

    length = len(head) + 45 * len(chunk) + len(tail)
    r = await live.http.post(
        "/jobs", content=body(), headers={**headers(live), "Content-Length": str(length)}
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] in ("payload_too_large",)
    assert r.headers["Connection"] == "close"
    assert sent > MAX_IMAGE_BYTES // 2  # it did stream, not refuse on the header alone
    assert spooled(live) == []


async def test_a_client_that_goes_away_mid_upload_leaves_no_spool_file(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    photo = jpeg(1600, 1200)
    head, _ = form({"sessionId": session["sessionId"]}, photo)
    host, port = live.http.base_url.host, live.http.base_url.port
    assert port is not None
    stream = await trio.open_tcp_stream(host, port)
    request = (
        f"POST /jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: {live.auth['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(head) + len(photo) + 100}\r\n\r\n"
    ).encode()
    await stream.send_all(request + head + photo[: len(photo) // 2])
    with trio.fail_after(20):
        while not spooled(live):  # noqa: ASYNC110 — the spool folder has no event to wait on
            await trio.sleep(0.02)
    await stream.aclose()
    with trio.fail_after(20):
        while spooled(live):  # noqa: ASYNC110
            await trio.sleep(0.05)
    # And the booth still takes the next photo.
    r = await live.submit(session)
    assert r.status_code == 201, r.text


async def test_a_photographer_upload_streams_every_file_and_one_bad_file_sinks_no_other(
    live: Live,
) -> None:
    from web.routes.photos import MAX_PHOTO_BYTES

    event = await live.event()
    good = jpeg(1200, 800)
    huge = b"\xff\xd8\xff" + b"0" * MAX_PHOTO_BYTES  # one byte over the limit
    files = [
        ("photos", ("a.jpg", good, "image/jpeg")),
        ("photos", ("huge.jpg", huge, "image/jpeg")),
        ("photos", ("notes.jpg", b"not a photo", "image/jpeg")),
    ]
    r = await live.http.post(f"/events/{event['slug']}/photos", files=files, headers=live.auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [p["filename"] for p in body["photos"]] == ["a.jpg"]
    assert {e["filename"]: e["error"]["code"] for e in body["errors"]} == {
        "huge.jpg": "payload_too_large",
        "notes.jpg": "unsupported_image",
    }
    assert spooled(live) == []
    row = await live.services.db.fetchrow(
        "select sha256, size_bytes, original_key from photos where id = $1",
        uuid.UUID(body["photos"][0]["photoId"]),
    )
    assert row["sha256"] == hashlib.sha256(good).hexdigest() and row["size_bytes"] == len(good)
    assert await live.services.storage.get(row["original_key"]) == good
