"""The hot folder, each line of seed 000's checklist as a test, on a live booth (real watcher,
real Redis, PostgreSQL and storage; files written the way a tethered camera writes them)."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio
from PIL import Image

from actors.hotfolder import ends_whole, free_name, is_candidate_name
from photobot.embedded import find_redis_server
from photobot.embedded._process import free_port
from tests.live_booth import Live, open_live
from tests.standins.cable import open_cable

BOOTH = "booth-1"


def photo(width: int = 320, height: int = 240, seed: int | None = None) -> bytes:
    """A small JPEG; different seeds give different bytes (a 16x16 block survives JPEG
    quantization, where a single pixel sometimes did not)."""
    rnd = random.Random(seed)
    img = Image.new("RGB", (width, height), (rnd.randrange(256), rnd.randrange(256), 90))
    x, y = rnd.randrange(width - 16), rnd.randrange(height - 16)
    img.paste((rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)), (x, y, x + 16, y + 16))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def big_photo(min_bytes: int = 10 * 1024 * 1024) -> bytes:
    """A real JPEG over ``min_bytes`` (noise does not compress)."""
    side = 2000
    while True:
        img = Image.frombytes("RGB", (side, side), random.randbytes(side * side * 3))
        out = io.BytesIO()
        img.save(out, "JPEG", quality=95)
        if out.tell() >= min_bytes:
            return out.getvalue()
        side += 600


@pytest.fixture
async def hot(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(
        database_url,
        redis_url,
        tmp_path / "data",
        hotfolder_path=tmp_path / "hot",
        file_stability_delay_ms=400,
        booth_id=BOOTH,
    ) as booth:
        yield booth


def folder(live: Live) -> Path:
    return live.services.hotfolder.paths.root


async def start_capture(live: Live, **extra: Any) -> dict[str, Any]:
    event = await live.event()
    session = await live.guest(event["id"])
    body = {"sessionId": session["sessionId"], "eventId": event["id"], **extra}
    r = await live.http.post(f"/booth/{BOOTH}/active-session", json=body, headers=live.auth)
    assert r.status_code == 200, r.text
    return session


async def hot_jobs(live: Live) -> list[dict[str, Any]]:
    rows = await live.services.db.fetch(
        "select id, session_id, input_sha256, status from jobs where source = 'hotfolder'"
        " order by created_at"
    )
    return [dict(r) for r in rows]


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    # Polling on purpose: the filesystem and the database have no event to wait on. The
    # deadline only fires when the behaviour is wrong, never because the machine is busy.
    with trio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file())


async def wait_files(path: Path, count: int, timeout: float = 60.0) -> list[str]:
    async def enough() -> bool:
        return len(names(path)) >= count

    await wait_for(enough, timeout)
    return names(path)


async def wait_all_handled(watcher: Any, count: int) -> None:
    """Until each of ``count`` files was handled once: moved out of the hot folder, or left
    there waiting on a dependency (the watcher's ``waiting``)."""

    async def handled() -> bool:
        moved = [watcher.paths.processed, watcher.paths.orphan, watcher.paths.invalid]
        return sum(len(names(p)) for p in moved) + len(watcher.waiting) >= count

    await wait_for(handled)


# -- unit: the pure helpers ------------------------------------------------------------------


def test_whole_image_detection() -> None:
    data = photo()
    assert ends_whole(data[:12], data[-4096:], len(data))
    assert ends_whole(data[:12], (data + b"\0" * 100)[-4096:], len(data) + 100)  # padding
    cut = data[: len(data) - 50]
    assert not ends_whole(cut[:12], cut[-4096:], len(cut))
    png = io.BytesIO()
    Image.new("RGB", (10, 10)).save(png, "PNG")
    raw = png.getvalue()
    assert ends_whole(raw[:12], raw[-4096:], len(raw))
    assert not ends_whole(b"hello world, not an image", b"", 25)


def test_names(tmp_path: Path) -> None:
    assert is_candidate_name("IMG_0001.JPG")
    for temp in (".IMG_0001.JPG", "IMG_0001.JPG.tmp", "IMG_0001.JPG~", "x.part"):
        assert not is_candidate_name(temp)
    (tmp_path / "IMG_0001.JPG").write_bytes(b"x")
    (tmp_path / "IMG_0001-1.JPG").write_bytes(b"x")
    assert free_name(tmp_path, "IMG_0001.JPG").name == "IMG_0001-2.JPG"
    assert free_name(tmp_path, "NEW.JPG").name == "NEW.JPG"


# -- the seed's checklist --------------------------------------------------------------------


async def test_normal_flow(hot: Live) -> None:
    session = await start_capture(hot)
    ttl_before = await hot.services.cache.ttl(f"activeSession:{BOOTH}")
    await trio.sleep(1.1)
    (folder(hot) / "IMG_0001.JPG").write_bytes(photo())
    assert await wait_files(hot.services.hotfolder.paths.processed, 1) == ["IMG_0001.JPG"]
    assert names(folder(hot)) == []
    jobs = await hot_jobs(hot)
    assert len(jobs) == 1 and str(jobs[0]["session_id"]) == session["sessionId"]
    # the active session's TTL was refreshed by the file
    assert await hot.services.cache.ttl(f"activeSession:{BOOTH}") >= ttl_before
    recent = (await hot.http.get(f"/booth/{BOOTH}/recent-jobs", headers=hot.auth)).json()
    assert [j["id"] for j in recent["items"]] == [str(jobs[0]["id"])]
    assert recent["items"][0]["guest"]["name"] == "Ayu Lestari"
    done = await hot.wait_final(str(jobs[0]["id"]))
    assert done["status"] == "succeeded" and done["source"] == "hotfolder"
    r = await hot.http.delete(f"/booth/{BOOTH}/active-session", headers=hot.auth)
    assert r.json() == {"boothId": BOOTH, "cleared": True}
    assert await hot.services.cache.get(f"activeSession:{BOOTH}") is None


async def test_non_image_goes_to_invalid_with_a_reason(hot: Live) -> None:
    await start_capture(hot)
    (folder(hot) / "notes.jpg").write_text("this is not a photo")
    invalid = hot.services.hotfolder.paths.invalid
    assert await wait_files(invalid, 2) == ["notes.jpg", "notes.jpg.reason.txt"]
    assert "unsupported_image" in (invalid / "notes.jpg.reason.txt").read_text()
    assert await hot_jobs(hot) == []


async def test_no_active_session_goes_to_orphan(hot: Live) -> None:
    (folder(hot) / "IMG_0002.JPG").write_bytes(photo())
    assert await wait_files(hot.services.hotfolder.paths.orphan, 1) == ["IMG_0002.JPG"]
    assert await hot_jobs(hot) == []


async def test_expired_session_goes_to_orphan(hot: Live) -> None:
    await start_capture(hot)
    await hot.services.cache.expire(f"activeSession:{BOOTH}", 1)

    async def expired() -> bool:
        return await hot.services.cache.get(f"activeSession:{BOOTH}") is None

    await wait_for(expired)
    (folder(hot) / "late.jpg").write_bytes(photo())
    assert await wait_files(hot.services.hotfolder.paths.orphan, 1) == ["late.jpg"]
    assert await hot_jobs(hot) == []


async def test_same_file_twice_makes_one_job_and_keeps_both_files(hot: Live) -> None:
    await start_capture(hot)
    data = photo(seed=7)
    (folder(hot) / "IMG_0003.JPG").write_bytes(data)
    processed = hot.services.hotfolder.paths.processed
    await wait_files(processed, 1)
    (folder(hot) / "IMG_0003.JPG").write_bytes(data)
    assert await wait_files(processed, 2) == ["IMG_0003-1.JPG", "IMG_0003.JPG"]
    assert len(await hot_jobs(hot)) == 1


async def test_same_name_different_photos_are_both_kept(hot: Live) -> None:
    await start_capture(hot)
    processed = hot.services.hotfolder.paths.processed
    (folder(hot) / "IMG_0001.JPG").write_bytes(photo(seed=1))
    await wait_files(processed, 1)
    (folder(hot) / "IMG_0001.JPG").write_bytes(photo(seed=2))
    assert await wait_files(processed, 2) == ["IMG_0001-1.JPG", "IMG_0001.JPG"]
    jobs = await hot_jobs(hot)
    assert len(jobs) == 2 and jobs[0]["input_sha256"] != jobs[1]["input_sha256"]


async def test_large_file(hot: Live) -> None:
    await start_capture(hot)
    data = await trio.to_thread.run_sync(big_photo)
    assert len(data) > 10 * 1024 * 1024
    (folder(hot) / "BIG.JPG").write_bytes(data)
    assert await wait_files(hot.services.hotfolder.paths.processed, 1, timeout=20) == ["BIG.JPG"]
    jobs = await hot_jobs(hot)
    assert len(jobs) == 1


async def test_slow_write_makes_one_job_after_it_completes(hot: Live) -> None:
    # A stability delay far longer than any busy machine's lag: a job well before it ends can
    # only come from the whole-JPEG check, never from the delay (no wall-clock race).
    hot.services.hotfolder.stability_delay = 60.0
    await start_capture(hot)
    data = photo(1600, 1200, seed=3)
    chunks = [data[i : i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]
    path = folder(hot) / "SLOW.JPG"
    with path.open("wb") as f:
        for n, chunk in enumerate(chunks):
            if n:
                await trio.sleep(3 / (len(chunks) - 1))
            assert await hot_jobs(hot) == []  # nothing before the last byte
            f.write(chunk)
            f.flush()
    done_writing = trio.current_time()
    await wait_files(hot.services.hotfolder.paths.processed, 1, timeout=30)
    jobs = await hot_jobs(hot)
    assert len(jobs) == 1
    latency = trio.current_time() - done_writing
    assert latency < 30  # a whole JPEG does not wait for the (60 s) stability delay


async def test_temp_files_wait_until_renamed(hot: Live) -> None:
    await start_capture(hot)
    tmp = folder(hot) / "IMG_0009.JPG.tmp"
    tmp.write_bytes(photo(seed=9))
    # A whole photo written after it: once that one is processed, the watcher has seen (and
    # would have taken first) the temp file too. An event to wait for, not a fixed sleep.
    (folder(hot) / "IMG_0008.JPG").write_bytes(photo(seed=8))
    processed = hot.services.hotfolder.paths.processed
    assert await wait_files(processed, 1) == ["IMG_0008.JPG"]
    assert tmp.exists() and len(await hot_jobs(hot)) == 1
    os.rename(tmp, folder(hot) / "IMG_0009.JPG")
    assert await wait_files(processed, 2) == ["IMG_0008.JPG", "IMG_0009.JPG"]


async def test_files_present_at_start_are_handled_once(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    hot_dir = tmp_path / "hot"
    hot_dir.mkdir()
    for i in range(3):
        (hot_dir / f"EARLY_{i}.JPG").write_bytes(photo(seed=100 + i))
    settings = {"hotfolder_path": hot_dir, "file_stability_delay_ms": 400, "booth_id": BOOTH}
    async with open_live(database_url, redis_url, tmp_path / "data", **settings) as live:
        # No session yet: files that were there before we started are orphans (nothing lost).
        assert await wait_files(live.services.hotfolder.paths.orphan, 3) == [
            "EARLY_0.JPG", "EARLY_1.JPG", "EARLY_2.JPG",
        ]  # fmt: skip


async def test_gallery_mode_publishes_photos_without_a_guest(hot: Live) -> None:
    event = await hot.event()
    r = await hot.http.post(
        f"/booth/{BOOTH}/active-session",
        json={"eventId": event["id"], "mode": "gallery"},
        headers=hot.auth,
    )
    assert r.status_code == 200, r.text
    data = photo(seed=77)
    (folder(hot) / "ROAM.JPG").write_bytes(data)
    await wait_files(hot.services.hotfolder.paths.processed, 1)
    (folder(hot) / "ROAM.JPG").write_bytes(data)  # the same shot again: still one photo
    await wait_files(hot.services.hotfolder.paths.processed, 2)
    assert await hot_jobs(hot) == []  # a roaming photographer's shots are not styled
    rows = await hot.services.db.fetch(
        "select source, session_id, sha256 from photos where event_id = $1", event["id"]
    )
    assert [(r["source"], r["session_id"]) for r in rows] == [("hotfolder", None)]
    assert rows[0]["sha256"] == hashlib.sha256(data).hexdigest()


async def test_burst_of_100_files_at_10_per_second(hot: Live) -> None:
    await start_capture(hot)
    for i in range(100):
        (folder(hot) / f"BURST_{i:03}.JPG").write_bytes(photo(seed=1000 + i))
        await trio.sleep(0.1)
    processed = await wait_files(hot.services.hotfolder.paths.processed, 100, timeout=120)
    assert len(processed) == 100
    jobs = await hot_jobs(hot)
    assert len(jobs) == 100 and len({j["input_sha256"] for j in jobs}) == 100


async def test_a_run_that_died_after_making_the_job_makes_no_second(hot: Live) -> None:
    """The previous run stored the photo and made the job, then died before moving the file."""
    session = await start_capture(hot)
    data = photo(seed=55)
    hot.services.hotfolder.paths.root.mkdir(exist_ok=True)
    # Play the first run's steps by hand, up to the crash: the same calls the watcher makes.
    watcher = hot.services.hotfolder
    active = await hot.services.registry.active_session(BOOTH)
    assert active is not None and active.session_id == session["sessionId"]
    digest = hashlib.sha256(data).hexdigest()
    job_id = "7c0c1b7e-6d59-4f7e-9d3f-3d1f3c1d0a55"
    new = watcher._new_job(active, job_id, "events/x/input.jpg", digest, "image/jpeg", len(data))
    await hot.services.dispatcher.submit(new)
    # Redis forgot the idempotency key (flushed, expired): PostgreSQL still refuses a second job.
    (folder(hot) / "IMG_0042.JPG").write_bytes(data)
    await wait_files(watcher.paths.processed, 1)
    jobs = await hot_jobs(hot)
    assert [str(j["id"]) for j in jobs] == [job_id]


async def test_storage_failing_then_recovering_loses_nothing(hot: Live) -> None:
    await start_capture(hot)
    storage_root = hot.services.storage.root  # type: ignore[attr-defined]
    moved = storage_root.with_name("storage-away")
    shutil.move(storage_root, moved)
    storage_root.write_text("not a folder: every write fails")
    for i in range(5):
        (folder(hot) / f"DURING_{i}.JPG").write_bytes(photo(seed=300 + i))
    await wait_all_handled(hot.services.hotfolder, 5)
    assert len(names(folder(hot))) == 5  # waiting, not misfiled
    assert names(hot.services.hotfolder.paths.orphan) == []
    assert names(hot.services.hotfolder.paths.invalid) == []
    storage_root.unlink()
    shutil.move(moved, storage_root)
    assert len(await wait_files(hot.services.hotfolder.paths.processed, 5, timeout=60)) == 5
    assert len(await hot_jobs(hot)) == 5


class _RedisProcess:
    """A Redis server on a fixed port that a test can stop and start again (data kept)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(find_redis_server()), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)


async def test_redis_stopped_and_restarted_during_a_burst(
    database_url: str, tmp_path: Path, server_tmp_path: Path
) -> None:
    server = _RedisProcess(server_tmp_path)
    server.start()
    target = type("Target", (), {"url": f"redis://127.0.0.1:{server.port}/0", "prefix": ""})()
    settings = {
        "hotfolder_path": tmp_path / "hot", "file_stability_delay_ms": 400, "booth_id": BOOTH,
    }  # fmt: skip
    try:
        async with open_live(database_url, target, tmp_path / "data", **settings) as live:
            await start_capture(live)
            for i in range(10):
                (folder(live) / f"A_{i}.JPG").write_bytes(photo(seed=500 + i))
                await trio.sleep(0.05)
            await trio.to_thread.run_sync(server.stop)
            for i in range(10):
                (folder(live) / f"B_{i}.JPG").write_bytes(photo(seed=600 + i))
                await trio.sleep(0.05)
            watcher = live.services.hotfolder
            await wait_all_handled(watcher, 20)
            health = (await live.http.get("/health")).json()
            assert health["status"] == "degraded" and health["checks"]["redis"]["status"] == "down"
            assert names(watcher.paths.orphan) == [] and names(watcher.paths.invalid) == []
            assert watcher.waiting  # files wait for Redis in the hot folder
            await trio.to_thread.run_sync(server.start)
            processed = await wait_files(watcher.paths.processed, 20, timeout=120)
            assert len(processed) == 20
            assert names(folder(live)) == [] and names(watcher.paths.orphan) == []
            jobs = await hot_jobs(live)
            assert len(jobs) == 20 and len({j["input_sha256"] for j in jobs}) == 20
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


async def test_database_cable_pulled_during_a_burst(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    settings = {
        "hotfolder_path": tmp_path / "hot", "file_stability_delay_ms": 400, "booth_id": BOOTH,
    }  # fmt: skip
    async with (
        open_cable(database_url) as cable,
        open_live(cable.via(database_url), redis_url, tmp_path / "data", **settings) as live,
    ):
        await start_capture(live)
        for i in range(10):
            (folder(live) / f"A_{i}.JPG").write_bytes(photo(seed=700 + i))
            await trio.sleep(0.05)
        cable.cut()
        for i in range(10):
            (folder(live) / f"B_{i}.JPG").write_bytes(photo(seed=800 + i))
            await trio.sleep(0.05)
        watcher = live.services.hotfolder
        await wait_all_handled(watcher, 20)
        assert names(watcher.paths.orphan) == [] and names(watcher.paths.invalid) == []
        assert names(folder(live)), "files wait in the hot folder while the database is away"
        cable.mend()
        processed = await wait_files(watcher.paths.processed, 20, timeout=120)
        assert len(processed) == 20
        assert names(folder(live)) == [] and names(watcher.paths.orphan) == []
        jobs = await hot_jobs(live)
        assert len(jobs) == 20 and len({j["input_sha256"] for j in jobs}) == 20
        for job in jobs:
            done = await live.wait_final(str(job["id"]), timeout=120)
            assert done["status"] == "succeeded", done
