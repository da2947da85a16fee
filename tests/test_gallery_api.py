"""The live gallery API and the guest's own page, on a live booth (real HTTP server, PostgreSQL,
Redis and storage): keyset pages while photos are being published, catching up with ``since``,
likes, comments, downloads, private events, and the guest results page."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
import trio

from photobot import gallery, photos
from photobot.errors import InvalidInput
from photobot.storage import InvalidKey, LocalStorage, S3Storage
from photobot.storage.keys import photo_key
from tests.live_booth import Live, jpeg, open_live
from tests.s3server import S3Server, start_weed

DEVICE_A = "device-aaaaaaaa"
DEVICE_B = "device-bbbbbbbb"


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(database_url, redis_url, tmp_path / "data") as booth:
        yield booth


# -- helpers -------------------------------------------------------------------------------------


def _key(event_id: str, ext: str = "jpg") -> str:
    return photo_key(event_id, secrets.token_hex(16), ext, date(2025, 1, 31))


async def add_photo(
    live: Live,
    event_id: str,
    *,
    source: str = "upload",
    session_id: str | None = None,
    original: bytes | None = None,
) -> photos.Photo:
    """Publish a photo the way the booth does (``photos.insert``); its original is stored when
    ``original`` is given."""
    key = _key(event_id)
    if original is not None:
        await live.services.storage.put(key, original, "image/jpeg")
    photo, created = await photos.insert(
        live.services.db,
        photos.NewPhoto(
            event_id=event_id,
            source=source,
            original_key=key,
            content_type="image/jpeg",
            size_bytes=len(original or b"x"),
            sha256=secrets.token_hex(32),
            session_id=session_id,
            width=640,
            height=480,
        ),
    )
    assert created
    return photo


async def db_order(live: Live, event_id: str) -> list[str]:
    rows = await live.services.db.fetch(
        "select id from photos where event_id = $1 and deleted_at is null"
        " order by created_at desc, id desc",
        uuid.UUID(event_id),
    )
    return [str(r["id"]) for r in rows]


async def get_page(live: Live, slug: str, **params: Any) -> dict[str, Any]:
    r = await live.http.get(f"/api/gallery/{slug}/photos", params=params)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def catch_up(live: Live, slug: str, since: str | None, limit: int) -> tuple[list[str], str]:
    """Everything newer than ``since``, as a client does it: chunks until ``hasMoreSince`` is
    false, each prepended. Returns (ids newest first, the new newest cursor)."""
    shown: list[str] = []
    while True:
        body = await get_page(live, slug, since=since, limit=limit)
        ids = [p["photo_id"] for p in body["photos"]]
        assert ids == [p["id"] for p in body["photos"]]
        shown = ids + shown
        since = body["newestCursor"]
        if not body["hasMoreSince"]:
            assert since is not None
            return shown, since


def token_of(session: dict[str, Any]) -> str:
    return str(session["guestUrl"]).rsplit("/", 1)[-1]


async def error_code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


# -- pages and cursors ---------------------------------------------------------------------------


async def test_every_photo_exactly_once_while_photos_are_being_added(live: Live) -> None:
    event = await live.event()
    for _ in range(60):
        await add_photo(live, event["id"])
    writers_done = trio.Event()

    async def writer(n: int) -> None:
        for _ in range(n):
            await add_photo(live, event["id"])
            await trio.sleep(random.uniform(0, 0.004))

    async def writers() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(4):  # four concurrent publishers (e.g. booths and a photographer)
                nursery.start_soon(writer, 45)
        writers_done.set()

    first = await get_page(live, event["slug"], limit=20)
    display = [p["photo_id"] for p in first["photos"]]
    newest, before = first["newestCursor"], first["nextBefore"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writers)
        while not writers_done.is_set() or before:
            if before:  # the guest scrolls down...
                older = await get_page(live, event["slug"], before=before, limit=20)
                display += [p["photo_id"] for p in older["photos"]]
                before = older["nextBefore"]
            # ... while polling for new ones at the top
            fresh, newest = await catch_up(live, event["slug"], newest, limit=7)
            display = fresh + display
            await trio.sleep(0.003)
    fresh, newest = await catch_up(live, event["slug"], newest, limit=7)
    display = fresh + display

    assert len(display) == len(set(display)) == 60 + 4 * 45
    assert display == await db_order(live, event["id"])


async def test_reconnecting_client_gets_exactly_what_it_missed(live: Live) -> None:
    event = await live.event()
    other = await live.event()
    for _ in range(30):
        await add_photo(live, event["id"])
    first = await get_page(live, event["slug"])
    assert len(first["photos"]) == 30 and first["nextBefore"] is None
    assert first["hasMoreSince"] is False
    cursor = first["newestCursor"]
    assert cursor == first["photos"][0]["cursor"]

    # The phone slept; 500 photos were published meanwhile (and some in another event).
    missed = [(await add_photo(live, event["id"])).id for _ in range(500)]
    for _ in range(5):
        await add_photo(live, other["id"])

    chunks = []
    since = cursor
    while True:
        body = await get_page(live, event["slug"], since=since, limit=200)
        chunks.append([p["photo_id"] for p in body["photos"]])
        since = body["newestCursor"]
        if not body["hasMoreSince"]:
            break
    # Oldest missing first, each chunk newest first, so prepending rebuilds the order.
    assert [len(c) for c in chunks] == [200, 200, 100]
    assert chunks[0] == list(reversed(missed[:200]))
    rebuilt = [pid for chunk in reversed(chunks) for pid in chunk]
    assert rebuilt == list(reversed(missed))
    # Nothing new: an empty answer that keeps the cursor.
    again = await get_page(live, event["slug"], since=since)
    assert again["photos"] == [] and again["newestCursor"] == since
    assert again["hasMoreSince"] is False and again["nextBefore"] is None
    # Infinite scroll from the top reaches the first 30 in pages, each photo once.
    seen, before = [], None
    while True:
        params = {"limit": 150, **({"before": before} if before else {})}
        body = await get_page(live, event["slug"], **params)
        seen += [p["photo_id"] for p in body["photos"]]
        assert (body["newestCursor"] is None) == (before is not None)
        before = body["nextBefore"]
        if before is None:
            break
    assert seen == await db_order(live, event["id"]) and len(seen) == 530


async def test_an_uncommitted_photo_is_never_skipped(live: Live) -> None:
    """Two publishers commit out of created_at order: the reader must wait for the first."""
    event = await live.event()
    await add_photo(live, event["id"])
    cursor = (await get_page(live, event["slug"]))["newestCursor"]
    db = live.services.db
    async with db.transaction() as tx:
        early = await tx.fetchrow(
            "insert into photos (event_id, source, original_key, content_type, size_bytes)"
            " values ($1, 'upload', $2, 'image/jpeg', 1) returning id, created_at",
            uuid.UUID(event["id"]),
            _key(event["id"]),
        )
        assert early is not None
        late = await add_photo(live, event["id"])  # committed, created after `early`
        assert late.created_at > early["created_at"]
        held = await get_page(live, event["slug"], since=cursor)
        assert held["photos"] == [] and held["newestCursor"] == cursor
        top = await get_page(live, event["slug"])
        assert late.id not in [p["photo_id"] for p in top["photos"]]
    body = await get_page(live, event["slug"], since=cursor)
    assert [p["photo_id"] for p in body["photos"]] == [late.id, str(early["id"])]


async def test_query_parameters_are_checked(live: Live) -> None:
    event = await live.event()
    photo = await add_photo(live, event["id"])
    url = f"/api/gallery/{event['slug']}/photos"
    cursor = gallery.Cursor(photo.created_at, uuid.UUID(photo.id)).encode()
    naive = base64.urlsafe_b64encode(f"2025-01-01T00:00:00|{photo.id}".encode()).decode()
    for params, code in [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "201"}, "invalid_limit"),
        ({"limit": "ten"}, "invalid_limit"),
        ({"sort": "oldest"}, "invalid_sort"),
        ({"since": "%%%"}, "invalid_cursor"),
        ({"since": "bm90LWEtY3Vyc29y"}, "invalid_cursor"),
        ({"before": naive}, "invalid_cursor"),
        ({"before": "A" * 300}, "invalid_cursor"),
        ({"since": cursor, "before": cursor}, "invalid_input"),
        ({"since": "2026-12-07T10:00:00"}, "invalid_cursor"),  # a time without its zone
        ({"since": "2026-13-45T10:00:00Z"}, "invalid_cursor"),
        ({"page": "2"}, "unsupported_parameter"),  # never page 1 again in disguise
        ({"page": "0"}, "invalid_page"),
        ({"page": "one"}, "invalid_page"),
        ({"offset": "30"}, "unsupported_parameter"),  # would be the newest page again
        ({"order": "asc"}, "unsupported_parameter"),
        ({"since": "9999-12-31T23:59:59-01:00"}, "invalid_cursor"),  # past datetime's range
        ({"since": "0001-01-01T00:00:00+01:00"}, "invalid_cursor"),
        ({"since": "999999999999999"}, "invalid_cursor"),  # epoch millis past year 9999
    ]:
        assert await error_code(await live.http.get(url, params=params), 422) == code, params
    bad_device = {"X-Device-Id": "short"}
    r = await live.http.get(url, headers=bad_device)
    assert await error_code(r, 422) == "invalid_device_id"
    r = await live.http.get("/api/gallery/no-such-event/photos")
    assert await error_code(r, 404) == "event_not_found"
    r = await live.http.get(f"/api/gallery/{event['slug']}/photos/not-a-uuid")
    assert await error_code(r, 404) == "photo_not_found"
    other = await live.event()
    r = await live.http.get(f"/api/gallery/{other['slug']}/photos/{photo.id}")
    assert await error_code(r, 404) == "photo_not_found"
    assert (await get_page(live, event["id"]))["photos"][0]["id"] == photo.id  # uuid works too


async def test_seed_004_since_timestamp_and_page_1(live: Live) -> None:
    """Seed 004's clients keep the ``createdAt`` of their newest photo and ask ``since=`` it,
    and fetch the newest batch as ``page=1&sort=newest``."""
    event = await live.event()
    url = f"/api/gallery/{event['slug']}/photos"
    first = [await add_photo(live, event["id"]) for _ in range(3)]
    r = await live.http.get(url, params={"page": "1", "sort": "newest", "limit": "50"})
    assert r.status_code == 200, r.text
    assert [p["id"] for p in r.json()["photos"]] == [p.id for p in reversed(first)]
    top = r.json()["photos"][0]["createdAt"]
    later = [await add_photo(live, event["id"]) for _ in range(2)]
    new_ids = [p.id for p in reversed(later)]
    as_local = datetime.fromisoformat(top).astimezone(timezone(timedelta(hours=7))).isoformat()
    millis = str(int(datetime.fromisoformat(top).timestamp() * 1000))
    for since in (top, top.replace("+00:00", "Z"), as_local, as_local.replace("+", " ")):
        r = await live.http.get(url, params={"since": since})
        assert r.status_code == 200, (since, r.text)
        assert [p["id"] for p in r.json()["photos"]] == new_ids, since  # strictly after it
    # Milliseconds lose the microseconds: photos of the top one's millisecond (the top photo
    # itself, and any made less than a millisecond before it) come back too, nothing older.
    r = await live.http.get(url, params={"since": millis})
    got = [p["id"] for p in r.json()["photos"]]
    instant = datetime.fromtimestamp(int(millis) / 1000, UTC)
    same_ms = [p.id for p in reversed(first) if p.created_at > instant]
    assert first[-1].id in same_ms and got == new_ids + same_ms
    # Our own cursor still works beside it, and what it answers chains with the timestamp's.
    r = await live.http.get(url, params={"since": r.json()["newestCursor"]})
    assert r.status_code == 200 and r.json()["photos"] == []


async def test_since_a_timestamp_shared_by_two_photos(live: Live) -> None:
    """Two photos made at the same instant (two boxes, one microsecond): ``since=<createdAt>``
    means strictly after that instant, so it answers neither of them, while our cursor of the
    first still answers the second (its id breaks the tie in the keyset order)."""
    event = await live.event()
    url = f"/api/gallery/{event['slug']}/photos"
    a, b = sorted([await add_photo(live, event["id"]) for _ in range(2)], key=lambda p: p.id)
    # The tie cannot be made to order through photos.insert, so the test writes it.
    await live.services.db.execute(
        "update photos set created_at = $1 where id = $2", a.created_at, uuid.UUID(b.id)
    )
    later = await add_photo(live, event["id"])
    body = await get_page(live, event["slug"])
    assert [p["id"] for p in body["photos"]] == [later.id, b.id, a.id]
    instant = body["photos"][2]["createdAt"]
    assert body["photos"][1]["createdAt"] == instant
    for since in (instant, instant.replace("+00:00", "z").replace("T", "t")):
        r = await live.http.get(url, params={"since": since})
        assert [p["id"] for p in r.json()["photos"]] == [later.id], since
    r = await live.http.get(url, params={"since": body["photos"][2]["cursor"]})
    assert [p["id"] for p in r.json()["photos"]] == [later.id, b.id]
    # Just before the instant: both photos made at it, and the later one.
    just_before = (datetime.fromisoformat(instant) - timedelta(microseconds=1)).isoformat()
    r = await live.http.get(url, params={"since": just_before})
    assert [p["id"] for p in r.json()["photos"]] == [later.id, b.id, a.id]


def test_cursor_round_trip_and_rules() -> None:
    cur = gallery.Cursor(gallery.now_utc(), uuid.uuid4())
    assert gallery.Cursor.decode(cur.encode()) == cur
    assert "=" not in cur.encode()
    early = base64.urlsafe_b64encode(f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}".encode())
    for bad in ["", "x", "%%%", "A" * 201, early.decode()]:
        with pytest.raises(InvalidInput):
            gallery.Cursor.decode(bad)


async def test_pages_use_the_keyset_index(live: Live) -> None:
    db = live.services.db
    events = [uuid.UUID((await live.event())["id"]) for _ in range(2)]
    for ev in events:
        await db.execute(
            "insert into photos (event_id, source, original_key, content_type, size_bytes,"
            " created_at) select $1, 'upload', 'k/' || g, 'image/jpeg', 1,"
            " now() - g * interval '1 second' from generate_series(1, 5000) g",
            ev,
        )
    await db.execute("analyze photos")
    row = await db.fetchrow(
        "select created_at, id from photos where event_id = $1 order by created_at desc"
        " offset 2500 limit 1",
        events[0],
    )
    assert row is not None
    plans = {
        "newest": (gallery.NEWEST_SQL, events[0], None, 51, gallery.now_utc()),
        "before": (gallery.BEFORE_SQL, events[0], None, 51, row["created_at"], row["id"]),
        "since": (
            gallery.SINCE_SQL, events[0], None, 51, row["created_at"], row["id"],
            gallery.now_utc(),
        ),
    }  # fmt: skip
    for name, (sql, *args) in plans.items():
        plan = "\n".join(r[0] for r in await db.fetch("explain " + sql, *args))
        assert "using photos_event_keyset on photos" in plan, (name, plan)
        lines = plan.splitlines()
        at = next(i for i, line in enumerate(lines) if "photos_event_keyset" in line)
        index_cond = next(line for line in lines[at:] if "Index Cond" in line)
        assert "event_id = " in index_cond, (name, plan)
        if name != "newest":
            assert "ROW(created_at, id)" in index_cond, (name, plan)
        assert "Seq Scan on photos" not in plan, (name, plan)
        assert "Bitmap Heap Scan on photos" not in plan, (name, plan)


# -- the photo's shape, URLs and fallbacks ------------------------------------------------------


async def test_photo_urls_fall_back_and_never_leak_a_camera_original(live: Live) -> None:
    event = await live.event()
    s = live.services
    camera = await add_photo(live, event["id"], original=jpeg())
    ours = await add_photo(live, event["id"], source="job", original=jpeg())
    body = await get_page(live, event["slug"])
    by_id = {p["photo_id"]: p for p in body["photos"]}
    cam = by_id[camera.id]
    assert set(cam) == {
        "id", "photo_id", "createdAt", "width", "height", "ready", "urls", "likes", "comments",
        "likedByMe", "downloadUrl", "cursor",
    }  # fmt: skip
    assert cam["id"] == cam["photo_id"] == camera.id
    assert cam["createdAt"] == camera.created_at.isoformat()
    assert (cam["width"], cam["height"], cam["likes"], cam["comments"]) == (640, 480, 0, 0)
    assert cam["likedByMe"] is False and cam["ready"] is False
    # A camera original (may carry GPS) is not shown to guests before its derivatives exist.
    assert cam["urls"] == dict.fromkeys(gallery.VARIANTS)
    assert cam["downloadUrl"] == f"/api/gallery/{event['slug']}/photos/{camera.id}/download"
    r = await live.http.get(cam["downloadUrl"])
    assert await error_code(r, 409) == "not_ready"
    # Our own AI result has no metadata: every size falls back to it.
    mine = by_id[ours.id]
    paths = {v: urlsplit(u).path for v, u in mine["urls"].items()}
    assert set(paths.values()) == {f"/files/{ours.original_key}"}
    image = await live.http.get(mine["urls"]["small"])
    assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")

    # Some derivatives arrive (medium and optimized only): the others fall back to them.
    medium, optimized = _key(event["id"], "webp"), _key(event["id"], "webp")
    await s.storage.put(optimized, b"RIFF-optimized", "image/webp")
    await photos.set_derivatives(
        s.db, camera.id, optimized_key=optimized, small_key=None, medium_key=medium,
        large_key=None,
    )  # fmt: skip
    r = await live.http.get(f"/api/gallery/{event['slug']}/photos/{camera.id}")
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    cam = r.json()
    got = {v: (urlsplit(u).path if u else None) for v, u in cam["urls"].items()}
    assert got == {
        "small": f"/files/{medium}", "medium": f"/files/{medium}",
        "large": f"/files/{optimized}", "optimized": f"/files/{optimized}", "original": None,
    }  # fmt: skip
    assert cam["ready"] is True

    # Downloads: `original` of a camera photo is the optimized copy; of ours, the original.
    for variant in ("optimized", "original"):
        r = await live.http.get(cam["downloadUrl"], params={"variant": variant})
        assert r.status_code == 302 and r.headers["Cache-Control"] == "no-store"
        assert urlsplit(r.headers["Location"]).path == f"/files/{optimized}"
        got_file = await live.http.get(r.headers["Location"])
        assert got_file.content == b"RIFF-optimized"
        disposition = got_file.headers["Content-Disposition"]
        assert f'filename="{event["slug"]}-{camera.id[:8]}.webp"' in disposition
    r = await live.http.get(mine["downloadUrl"], params={"variant": "original"})
    assert r.status_code == 302 and urlsplit(r.headers["Location"]).path.endswith(".jpg")
    r = await live.http.get(mine["downloadUrl"], params={"variant": "raw"})
    assert await error_code(r, 422) == "invalid_variant"

    # A hidden photo is gone everywhere.
    await s.db.execute("update photos set deleted_at = now() where id = $1", uuid.UUID(ours.id))
    body = await get_page(live, event["slug"])
    assert [p["photo_id"] for p in body["photos"]] == [camera.id]
    assert (await live.http.get(mine["downloadUrl"])).status_code == 404


# -- likes -------------------------------------------------------------------------------------


async def test_likes_one_per_device(live: Live) -> None:
    event = await live.event()
    photo = await add_photo(live, event["id"])
    url = f"/api/gallery/{event['slug']}/photos/{photo.id}/like"

    async def like(method: str, device: str) -> dict[str, Any]:
        r = await live.http.request(method, url, headers={"X-Device-Id": device})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    first = await like("POST", DEVICE_A)
    assert first == {"id": photo.id, "photo_id": photo.id, "likes": 1, "likedByMe": True}
    assert (await like("POST", DEVICE_A))["likes"] == 1  # the same phone again
    assert (await like("POST", DEVICE_B))["likes"] == 2
    for device, mine in [(DEVICE_A, True), ("device-cccccccc", False)]:
        [p] = (await live.http.get(
            f"/api/gallery/{event['slug']}/photos", headers={"X-Device-Id": device}
        )).json()["photos"]  # fmt: skip
        assert (p["likes"], p["likedByMe"]) == (2, mine)
    [p] = (await get_page(live, event["slug"]))["photos"]
    assert (p["likes"], p["likedByMe"]) == (2, False)  # no device: never "mine"
    assert await like("DELETE", DEVICE_A) == {
        "id": photo.id, "photo_id": photo.id, "likes": 1, "likedByMe": False,
    }  # fmt: skip
    assert (await like("DELETE", DEVICE_A))["likes"] == 1  # idempotent

    assert await error_code(await live.http.post(url), 422) == "invalid_device_id"
    bad = {"X-Device-Id": "bad id with spaces"}
    assert await error_code(await live.http.post(url, headers=bad), 422) == "invalid_device_id"
    headers = {"X-Device-Id": DEVICE_A}
    missing = f"/api/gallery/{event['slug']}/photos/{uuid.uuid4()}/like"
    assert await error_code(await live.http.post(missing, headers=headers), 404) == (
        "photo_not_found"
    )
    other = await live.event()
    elsewhere = f"/api/gallery/{other['slug']}/photos/{photo.id}/like"
    assert await error_code(await live.http.post(elsewhere, headers=headers), 404) == (
        "photo_not_found"
    )


async def test_likes_are_rate_limited_per_device(live: Live) -> None:
    event = await live.event()
    photo = await add_photo(live, event["id"])
    url = f"/api/gallery/{event['slug']}/photos/{photo.id}/like"
    headers = {"X-Device-Id": DEVICE_A}
    statuses = []
    for i in range(62):
        r = await live.http.request("POST" if i % 2 else "DELETE", url, headers=headers)
        statuses.append(r.status_code)
    assert statuses[:60] == [200] * 60 and statuses[60:] == [429, 429]
    assert int(r.headers["Retry-After"]) >= 1
    # Another phone at the same address is not affected.
    r = await live.http.post(url, headers={"X-Device-Id": DEVICE_B})
    assert r.status_code == 200


# -- comments ------------------------------------------------------------------------------------


async def test_comments_are_plain_text_length_limited_and_paged(live: Live) -> None:
    event = await live.event()
    photo = await add_photo(live, event["id"])
    url = f"/api/gallery/{event['slug']}/photos/{photo.id}/comments"

    async def post(body: Any, device: str = DEVICE_A) -> httpx.Response:
        return await live.http.post(url, json=body, headers={"X-Device-Id": device})

    html = "<script>alert('x')</script> &amp; <b>bold</b>"
    r = await post({"body": f"  {html}\r\nline two  ", "authorName": "  Budi  "})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["body"] == f"{html}\nline two" and first["authorName"] == "Budi"
    assert first["photo_id"] == photo.id and first["mine"] is True
    assert set(first) == {"id", "photo_id", "authorName", "body", "createdAt", "mine"}
    assert (await post({"body": "x" * 500, "authorName": ""}, DEVICE_B)).json()[
        "authorName"
    ] is None
    r = await post({"body": "third 😀"}, DEVICE_B)
    assert r.status_code == 201

    listed = await live.http.get(url, params={"limit": 2}, headers={"X-Device-Id": DEVICE_B})
    assert listed.status_code == 200
    page1 = listed.json()
    assert [c["body"] for c in page1["comments"]] == ["third 😀", "x" * 500]
    assert [c["mine"] for c in page1["comments"]] == [True, True]
    page2 = (await live.http.get(url, params={"before": page1["nextBefore"]})).json()
    assert [c["id"] for c in page2["comments"]] == [first["id"]] and page2["nextBefore"] is None
    assert page2["comments"][0]["mine"] is False  # no device given
    # Raw bytes on the wire: JSON-escaped text, served as JSON, never as HTML.
    assert listed.headers["Content-Type"].startswith("application/json")
    [p] = (await get_page(live, event["slug"]))["photos"]
    assert p["comments"] == 3

    for n, body in enumerate(
        [
            {"body": "x" * 501},
            {"body": "   "},
            {"body": ""},
            {"body": 42},
            {"body": "bell \x07"},
            {"body": "rtl \u202e override"},
            {"body": "ok", "authorName": "n" * 61},
            {"body": "ok", "authorName": "two\nlines"},
            {},
        ]
    ):
        assert await error_code(await post(body, f"device-invalid-{n}"), 422) == "invalid_comment"
    assert await error_code(await post({"body": "hi", "html": True}, "device-v2"), 422) == (
        "invalid_input"
    )
    r = await live.http.post(
        url, content=b"{not json", headers={"X-Device-Id": "device-v3", "Content-Type":
        "application/json"},
    )  # fmt: skip
    assert await error_code(r, 400) == "invalid_json"
    r = await live.http.post(url, json={"body": "hi"})
    assert await error_code(r, 422) == "invalid_device_id"
    missing = f"/api/gallery/{event['slug']}/photos/{uuid.uuid4()}/comments"
    assert await error_code(await live.http.get(missing), 404) == "photo_not_found"
    r = await live.http.post(missing, json={"body": "hi"}, headers={"X-Device-Id": "device-v4"})
    assert await error_code(r, 404) == "photo_not_found"


async def test_comments_are_rate_limited(live: Live) -> None:
    event = await live.event()
    photo = await add_photo(live, event["id"])
    url = f"/api/gallery/{event['slug']}/photos/{photo.id}/comments"
    headers = {"X-Device-Id": DEVICE_A}
    statuses = [
        (await live.http.post(url, json={"body": f"nice {i}"}, headers=headers)).status_code
        for i in range(7)
    ]
    assert statuses == [201] * 6 + [429]


def test_validate_comment() -> None:
    assert gallery.validate_comment(" hi ", " Ayu ") == ("hi", "Ayu")
    assert gallery.validate_comment("a\r\nb", None) == ("a\nb", None)
    assert gallery.validate_comment("é" * 500, "   ") == ("é" * 500, None)
    for body, author in [("\ud800", None), ("ok", 5), ("ok", "tab\there"), ("\x00", None)]:
        with pytest.raises(InvalidInput):
            gallery.validate_comment(body, author)


# -- private events and the guest page ---------------------------------------------------------


async def private_event(live: Live) -> dict[str, Any]:
    r = await live.http.post(
        "/events",
        json={"name": f"Private {random.randrange(10**6)}", "visibility": "private"},
        headers=live.auth,
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_a_private_event_shows_each_guest_only_their_own(live: Live) -> None:
    event = await private_event(live)
    ayu = await live.guest(event["id"], "Ayu")
    budi = await live.guest(event["id"], "Budi")
    ayu_photo = await add_photo(live, event["id"], source="job", session_id=ayu["sessionId"],
                                original=jpeg())  # fmt: skip
    budi_photo = await add_photo(live, event["id"], source="job", session_id=budi["sessionId"])
    await add_photo(live, event["id"])  # a photographer's, in no session
    slug = event["slug"]
    for r in [
        await live.http.get(f"/api/gallery/{slug}/photos"),
        await live.http.get(f"/api/gallery/{slug}/photos/{ayu_photo.id}"),
        await live.http.get(f"/api/gallery/{slug}/photos/{ayu_photo.id}/download"),
        await live.http.get(f"/api/gallery/{slug}/photos/{ayu_photo.id}/comments"),
        await live.http.post(
            f"/api/gallery/{slug}/photos/{ayu_photo.id}/like", headers={"X-Device-Id": DEVICE_A}
        ),
    ]:
        assert await error_code(r, 404) == "gallery_private"

    token = token_of(ayu)
    r = await live.http.get(f"/api/guest/{token}/results")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["photo_id"] for p in body["photos"]] == [ayu_photo.id]
    assert body["event"] == {"slug": slug, "name": event["name"], "visibility": "private"}
    download = body["photos"][0]["downloadUrl"]
    assert download == f"/api/guest/{token}/photos/{ayu_photo.id}/download?variant=original"
    r = await live.http.get(download)
    assert r.status_code == 302 and r.headers["Referrer-Policy"] == "no-referrer"
    assert (await live.http.get(r.headers["Location"])).content.startswith(b"\xff\xd8")
    r = await live.http.get(f"/api/guest/{token}/photos/{budi_photo.id}/download")
    assert await error_code(r, 404) == "photo_not_found"


async def test_guest_results(live: Live) -> None:
    event = await live.event()
    session = await live.guest(event["id"])
    token = token_of(session)
    s = live.services
    done = await live.wait_final((await live.submit(session, styleId="bw")).json()["id"])
    assert done["status"] == "succeeded"
    # A job another box is running right now, half way.
    running = await s.db.fetchval(
        "insert into jobs (event_id, session_id, source, status, input_key, input_sha256,"
        " input_type, input_bytes, progress_percent, progress_stage, started_at, claimed_by)"
        " values ($1, $2, 'operator', 'running', 'k/in.jpg', $3, 'image/jpeg', 1, 40,"
        " 'ai_processing', now(), 'other-box') returning id",
        uuid.UUID(event["id"]),
        uuid.UUID(session["sessionId"]),
        hashlib.sha256(b"x").hexdigest(),
    )
    other = await live.guest(event["id"], "Someone Else")
    await add_photo(live, event["id"], source="job", session_id=other["sessionId"])

    r = await live.http.get(f"/api/guest/{token}/results", headers={"X-Device-Id": DEVICE_A})
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "private, no-store"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    body = r.json()
    assert set(body) == {
        "session", "event", "photos", "jobs", "clips", "guestUrl", "whatsappShareUrl"
    }  # fmt: skip
    assert body["session"] == {
        "name": "Ayu Lestari", "code": session["code"], "expiresAt": session["expiresAt"],
    }  # fmt: skip
    assert body["clips"] == [] and body["guestUrl"] == session["guestUrl"]
    assert [j["id"] for j in body["jobs"]] == [str(running), done["id"]]
    assert body["jobs"][0]["status"] == "running"
    assert body["jobs"][0]["progress"] == {"percent": 40, "stage": "ai_processing"}
    assert body["jobs"][1]["progress"] == {"percent": 100, "stage": "done"}
    assert body["jobs"][1]["error"] is None and "guest" not in body["jobs"][1]
    [photo] = body["photos"]
    assert photo["jobId"] == done["id"] and photo["urls"]["original"] is not None
    assert photo["likedByMe"] is False
    share = urlsplit(body["whatsappShareUrl"])
    assert (share.netloc, share.path) == ("wa.me", "/628123456789")
    text = unquote(share.query.removeprefix("text="))
    assert text == f"Your photos from {event['name']}: {session['guestUrl']}"
    # Each photo has its own link: WhatsApp to the guest, carrying the photo's download URL.
    photo_share = urlsplit(photo["whatsappShareUrl"])
    assert (photo_share.netloc, photo_share.path) == ("wa.me", "/628123456789")
    base = session["guestUrl"].split("/g/")[0]
    assert unquote(photo_share.query.removeprefix("text=")) == (
        f"My photo from {event['name']}: {base}{photo['downloadUrl']}"
    )

    # After the 6 h TTL the page still works for a grace period; then it is gone.
    sid = uuid.UUID(session["sessionId"])
    await s.db.execute(
        "update guest_sessions set expires_at = now() - interval '2 hours' where id = $1", sid
    )
    assert (await live.http.get(f"/api/guest/{token}/results")).status_code == 200
    await s.db.execute(
        "update guest_sessions set expires_at = now() - interval '8 days' where id = $1", sid
    )
    gone = await live.http.get(f"/api/guest/{token}/results")
    for r in [
        gone,
        await live.http.get(f"/api/guest/{secrets.token_urlsafe(32)}/results"),
        await live.http.get(f"/api/guest/{session['code']}/results"),
        await live.http.get(f"/api/guest/{'x' * 300}/results"),
        await live.http.get(f"/api/guest/{token}/photos/{photo['id']}/download"),
    ]:
        assert r.status_code == 404
        assert r.json() == {"error": {"code": "not_found", "message": "not found"}}


def test_guest_page_grace() -> None:
    now = gallery.now_utc()
    day = gallery.GUEST_PAGE_GRACE / 7
    assert gallery.guest_page_open(now - day, None, now)
    assert not gallery.guest_page_open(now - 8 * day, None, now)
    assert not gallery.guest_page_open(now + day, now - 8 * day, now)  # ended long ago


# -- signing a page of URLs on S3 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = start_weed()
    try:
        yield server
    finally:
        server.stop()


async def test_s3_urls_are_signed_in_one_batch(s3_server: S3Server) -> None:
    storage = S3Storage(
        "photobot-gallery-test",
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
        force_path_style=True,
        create_bucket=True,
    )
    try:
        keys = [f"g/{uuid.uuid4().hex}/{n}.jpg" for n in range(3)]
        for n, key in enumerate(keys):
            await storage.put(key, json.dumps(n).encode(), "image/jpeg")
        hops = 0
        real = trio.to_thread.run_sync

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal hops
            hops += 1
            return await real(*args, **kwargs)

        trio.to_thread.run_sync = counting  # type: ignore[assignment]
        try:
            urls = await gallery.sign_keys(storage, [*keys, keys[0]], 60)
        finally:
            trio.to_thread.run_sync = real
        assert hops == 1 and list(urls) == keys
        async with httpx.AsyncClient() as http:
            for n, key in enumerate(keys):
                r = await http.get(urls[key])
                assert r.status_code == 200 and r.content == json.dumps(n).encode()
                tampered = urls[key].replace(f"/{n}.jpg", f"/{(n + 1) % 3}.jpg")
                assert (await http.get(tampered)).status_code == 403
    finally:
        await storage.aclose()


# -- signing a page of URLs locally, and reusing them ------------------------------------------


async def test_local_urls_signed_in_a_batch_are_the_storage_s_own(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store", b"k" * 32)
    keys = ["events/a b/ü.jpg", "thumbs/s/x.webp", "thumbs/s/x.webp"]
    for _ in range(5):  # the same second on both sides
        second = int(time.time())
        batch = await gallery.sign_keys(storage, keys, 60)
        single = {k: await storage.signed_url(k, 60) for k in keys}
        if int(time.time()) == second:
            break
    assert batch == single and len(batch) == 2
    for bad in [".tmp/x.jpg", "../x.jpg", "/abs.jpg"]:
        with pytest.raises(InvalidKey):
            await gallery.sign_keys(storage, [bad], 60)


async def test_signed_urls_are_reused_while_valid_long_enough(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store", b"k" * 32)
    clock = [1000.0]
    cache = gallery.SignedUrlCache(storage, 600, reuse=300, max_entries=3, clock=lambda: clock[0])
    first = await cache.sign(["a.jpg", "b.jpg", "a.jpg"])
    assert set(first) == {"a.jpg", "b.jpg"} and (cache.hits, cache.misses) == (0, 2)
    exp = int(dict(parse_qsl(urlsplit(first["a.jpg"]).query))["exp"])
    assert exp >= time.time() + 600 + 300 - 2  # valid >= ttl after the last reuse
    clock[0] += 299
    assert await cache.sign(["a.jpg"]) == {"a.jpg": first["a.jpg"]}  # stable URL
    assert (cache.hits, cache.misses) == (1, 2)
    clock[0] += 2
    await cache.sign(["a.jpg"])  # its reuse window is over: signed again
    assert (cache.hits, cache.misses) == (1, 3)
    await cache.sign(["c.jpg", "d.jpg"])
    assert len(cache) == 3  # least recently used (b) dropped
    assert (await cache.sign(["b.jpg"]))["b.jpg"]
    assert gallery.SignedUrlCache(storage, 7 * 24 * 3600).reuse == 0  # cannot outlive the max
