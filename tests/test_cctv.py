"""The CCTV poller against the stand-in Hikvision NVR (tests/standins/nvr.py): clips cut from
real recordings, the failures an NVR produces, cancellation and restart, and a booth session's
clip arriving on the guest's page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.cctv import CctvPoller
from photobot.cctv.store import ClipRequest
from photobot.supervisor import ChildContext
from tests.live_booth import Live, open_live
from tests.standins.cable import open_cable
from tests.standins.nvr import NvrStandin, open_nvr_standin

NVR_USER, NVR_PASSWORD = "admin", "Nvr-Pa55word"
SEGMENT = 25.0  # seconds per recording
#: Recordings start here (true UTC); the stand-in keeps its clock 7 h ahead ("Z means local").
DAY = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@dataclass
class Rig:
    live: Live
    nvr: NvrStandin
    temp: Path

    @property
    def poller(self) -> CctvPoller:
        return self.live.services.cctv

    async def camera(self, *, password: str = NVR_PASSWORD, **fields: Any) -> dict[str, Any]:
        body = {"baseUrl": self.nvr.url, "username": NVR_USER, "password": password, **fields}
        r = await self.live.http.post("/cameras", json=body, headers=self.live.auth)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def request(self, camera: dict[str, Any], start: datetime, seconds: float) -> ClipRequest:
        return await self.live.services.clips.create_request(
            camera["id"], start, start + timedelta(seconds=seconds)
        )

    async def run_one(self, request: ClipRequest) -> dict[str, Any]:
        """Claim and process ``request`` as a trigger does; its API view afterwards."""
        assert await self.poller.run_request(request.id)
        r = await self.live.http.get(f"/clip-requests/{request.id}", headers=self.live.auth)
        return r.json()  # type: ignore[no-any-return]

    def leftovers(self) -> list[Path]:
        return sorted(self.temp.rglob("*"))


@pytest.fixture
async def rig(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Rig]:
    temp = tmp_path / "cctv"
    async with (
        open_nvr_standin(NVR_USER, NVR_PASSWORD, cache_dir=tmp_path / "recordings") as nvr,
        open_live(
            database_url, redis_url, tmp_path / "data",
            batch_interval_seconds=3600, auto_batch_enabled=False, temp_video_dir=temp,
            clip_flush_delay_seconds=0, clip_padding_seconds=0.5,
        ) as live,
    ):  # fmt: skip
        # Test-speed back-off; everything else is the booth's own configuration.
        live.services.cctv.config = replace(
            live.services.cctv.config, backoff_base=0.05, backoff_max=0.2, nvr_timeout=5
        )
        yield Rig(live, nvr, temp)


@pytest.mark.parametrize("exact", [False, True], ids=["stream-copy", "exact-cut"])
async def test_clip_over_three_segments_has_the_right_duration(rig: Rig, exact: bool) -> None:
    rig.poller.config = replace(rig.poller.config, exact_cut=exact)
    recs = rig.nvr.add_recordings(101, DAY, 45, SEGMENT, label="day")
    camera = await rig.camera()
    # 60 s from 5 s into recording 39: recordings 39, 40 and 41.
    start = recs[39].start + timedelta(seconds=5)
    request = await rig.request(camera, start, 60)
    got = await rig.run_one(request)
    assert got["status"] == "CLIP_GENERATED", got["failureReason"]
    clip = got["clip"]
    assert abs(clip["durationSeconds"] - 60) <= (0.1 if exact else 1.0), clip
    assert rig.nvr.calls["download GET"] == 3
    video = await rig.live.http.get(clip["url"])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert len(video.content) == clip["sizeBytes"]
    poster = await rig.live.http.get(clip["posterUrl"])
    assert poster.content.startswith(b"\xff\xd8")
    # The camera's clock was read ("Z means local", UTC+7) and the search asked in it.
    wall = (start + timedelta(hours=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert wall in rig.nvr.search_bodies[0]
    assert rig.leftovers() == []
    metrics = (await rig.live.http.get("/metrics")).text
    assert 'photobot_clip_requests_total{outcome="generated"} 1.0' in metrics


async def test_clip_across_a_search_page_boundary(rig: Rig) -> None:
    # Short recordings (an NVR recording on motion): 44 of them in a 66 s window, more than the
    # 40 a search page holds.
    recs = rig.nvr.add_recordings(101, DAY, 50, 1.5, label="short")
    camera = await rig.camera()
    got = await rig.run_one(await rig.request(camera, recs[2].start, 66))
    assert got["status"] == "CLIP_GENERATED", got["failureReason"]
    assert abs(got["clip"]["durationSeconds"] - 66) <= 1.5
    assert rig.nvr.calls["search POST"] >= 2  # paged: MORE, then OK
    assert rig.nvr.calls["download GET"] == 44


async def test_wrong_password_fails_at_once_with_a_clear_reason(rig: Rig) -> None:
    rig.nvr.add_recordings(101, DAY, 3, SEGMENT, label="day")
    camera = await rig.camera(password="not-the-password")
    got = await rig.run_one(await rig.request(camera, DAY, 30))
    assert got["status"] == "FAILED"
    assert "password" in got["failureReason"].lower()
    assert "not-the-password" not in got["failureReason"]
    assert rig.nvr.auth_failures <= 2  # not retried over and over
    assert rig.nvr.calls["download GET"] == 0 and rig.leftovers() == []


async def test_nvr_down_is_retried_with_backoff_then_fails(rig: Rig) -> None:
    rig.nvr.add_recordings(101, DAY, 3, SEGMENT, label="day")
    camera = await rig.camera()
    rig.nvr.set_down("drop")
    before = rig.nvr.connections
    started = trio.current_time()
    got = await rig.run_one(await rig.request(camera, DAY, 30))
    assert got["status"] == "FAILED" and got["failureReason"].startswith("nvr_unavailable")
    assert rig.nvr.connections - before >= rig.poller.config.attempts  # one per attempt at least
    assert trio.current_time() - started >= 0.05  # waited between attempts
    assert rig.leftovers() == []

    # It comes back while the poller is retrying: the clip is made.
    rig.nvr.set_down("drop")

    async def recover_soon() -> None:
        while True:  # the first attempt of this request has been dropped: come back
            if rig.nvr.connections - before > rig.poller.config.attempts:
                rig.nvr.set_up()
                return
            await trio.sleep(0.01)

    retried = await rig.request(camera, DAY + timedelta(seconds=10), 30)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recover_soon)
        got = await rig.run_one(retried)
    assert got["status"] == "CLIP_GENERATED", got["failureReason"]


async def test_disk_too_full_fails_before_downloading(rig: Rig) -> None:
    rig.nvr.add_recordings(101, DAY, 3, SEGMENT, label="day")
    camera = await rig.camera()
    rig.poller.config = replace(rig.poller.config, min_free_bytes=2**60)
    got = await rig.run_one(await rig.request(camera, DAY, 30))
    assert got["status"] == "FAILED" and got["failureReason"].startswith("disk_full")
    assert rig.nvr.calls["search POST"] >= 1 and rig.nvr.calls["download GET"] == 0
    assert rig.leftovers() == []


async def test_cancel_mid_download_then_restart_picks_it_up(rig: Rig) -> None:
    recs = rig.nvr.add_recordings(101, DAY, 3, SEGMENT, label="day")
    camera = await rig.camera()
    request = await rig.request(camera, recs[0].start + timedelta(seconds=3), 40)
    s = rig.live.services
    worker = rig.poller.config.worker_id
    rig.nvr.stall_downloads_after(65536)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.poller.run_request, request.id)
        await rig.nvr.download_stalled.wait()
        with trio.fail_after(10):  # the stand-in stalls as it sends; the client opens its file
            while True:
                if any(p.name.startswith("part-") for p in rig.leftovers()):  # mid-download
                    break
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    back = await s.clips.request(request.id)
    assert (back.status, back.claimed_by) == ("READY_FOR_BATCH", None)
    assert rig.leftovers() == []
    rig.nvr.stall_after = None
    rig.nvr.release_stall()

    # A crash (no chance to clean up): PROCESSING under this box's name, files left behind.
    # The poller, starting again, puts the request back and clears the temp dir.
    claimed = await s.clips.claim(worker, request.id)
    assert claimed is not None
    junk = rig.temp / f"clip-{request.id}-dead" / "part-000.raw"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"IMKH" + bytes(1000))
    restarted = CctvPoller(s.clips, s.storage, replace(rig.poller.config, auto_batch=True))
    send, receive = trio.open_memory_channel[int](1)
    ctx = ChildContext("cctv_poller", 1, lambda _ctx: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: restarted.run(ctx, triggers=receive))
        with trio.fail_after(30):
            while True:
                if (await s.clips.request(request.id)).status == "CLIP_GENERATED":
                    break
                await trio.sleep(0.05)
        ctx.stopping.set()
    assert not junk.exists()
    assert rig.leftovers() == []
    assert send.statistics().open_receive_channels == 1


async def test_a_booth_session_clip_reaches_the_guest_page(rig: Rig) -> None:
    live = rig.live
    booth = live.services.settings.booth_id
    now = datetime.now(UTC).replace(microsecond=0)
    rig.nvr.add_recordings(101, now - timedelta(seconds=60), 6, SEGMENT, label="live")
    await rig.camera()
    event = await live.event()
    guest = await live.guest(event["id"])
    start = {"eventId": event["id"], "sessionId": guest["sessionId"]}
    r = await live.http.post(f"/booth/{booth}/active-session", json=start, headers=live.auth)
    assert r.status_code == 200, r.text
    await trio.sleep(2)  # the guest's session at the booth
    await live.http.delete(f"/booth/{booth}/active-session", headers=live.auth)
    await trio.sleep(0.6)  # past the end + padding
    live.services.cctv.config = replace(live.services.cctv.config, auto_batch=True)
    assert await live.services.cctv.tick() == 1

    token = guest["guestUrl"].rsplit("/", 1)[1]
    results = (await live.http.get(f"/api/guest/{token}/results")).json()
    [clip] = results["clips"]
    assert 2.5 <= clip["durationSeconds"] <= 4.5  # 2 s session + 2 x 0.5 s padding (± a GOP)
    video = await live.http.get(clip["url"])
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    assert (await live.http.get(clip["posterUrl"])).content.startswith(b"\xff\xd8")


async def test_both_time_interpretations_per_camera(rig: Rig) -> None:
    rig.nvr.time_mode = "utc"  # this NVR's Z really is UTC
    rig.nvr.add_recordings(101, DAY, 3, SEGMENT, label="day")
    utc_camera = await rig.camera(timeMode="utc")
    got = await rig.run_one(await rig.request(utc_camera, DAY + timedelta(seconds=5), 30))
    assert got["status"] == "CLIP_GENERATED", got["failureReason"]
    # The same device taken as "Z means local" looks 7 h away: nothing recorded there.
    local_camera = await rig.camera(timeMode="local")
    got = await rig.run_one(await rig.request(local_camera, DAY + timedelta(seconds=5), 30))
    assert got["status"] == "FAILED" and got["failureReason"].startswith("no_recording")


async def test_an_unexpected_error_fails_the_request_not_the_poller(rig: Rig) -> None:
    # A camera row the API would refuse (credentials in the URL: the client will not use it),
    # as an older version or a hand edit might have left it.
    camera = await rig.camera()
    await rig.live.services.db.execute(
        "update cameras set base_url = 'http://admin:pw@127.0.0.1:1' where id = $1::uuid",
        camera["id"],
    )
    got = await rig.run_one(await rig.request(camera, DAY, 30))
    assert got["status"] == "FAILED" and got["failureReason"] == "internal: ValueError"
    assert "pw" not in got["failureReason"]
    health = (await rig.live.http.get("/health")).json()
    [poller] = [a for a in health["actors"] if a["name"] == "cctv_poller"]
    assert poller["restarts"] == 0 and rig.leftovers() == []


async def test_a_request_taken_back_mid_run_keeps_no_clip_and_no_upload(rig: Rig) -> None:
    # While this box downloads, the request is taken back (another box's recovery, say); the
    # finished clip must not be recorded over it, and what was uploaded is removed again.
    recs = rig.nvr.add_recordings(101, DAY, 2, SEGMENT, label="lost")
    camera = await rig.camera()
    request = await rig.request(camera, recs[0].start + timedelta(seconds=2), 30)
    rig.nvr.stall_downloads_after(65536)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.poller.run_request, request.id)
        with trio.fail_after(20):
            await rig.nvr.download_stalled.wait()
        await rig.live.services.db.execute(
            "update clip_requests set status = 'READY_FOR_BATCH', claimed_by = null where id = $1",
            request.id,
        )
        rig.nvr.release_stall()
    back = await rig.live.services.clips.request(request.id)
    assert (back.status, back.claimed_by) == ("READY_FOR_BATCH", None)
    assert await rig.live.services.clips.clip_of(request.id) is None
    root = rig.live.services.storage.root  # type: ignore[attr-defined]
    assert sorted(p.name for p in root.rglob("*") if p.suffix in (".mp4", ".jpg")) == []
    assert rig.leftovers() == []

    # Taken again, by the book, it makes its clip.
    got = await rig.run_one(request)
    assert got["status"] == "CLIP_GENERATED", got
    assert len([p for p in root.rglob("*.mp4")]) == 1


async def test_a_database_outage_mid_clip_ends_in_one_clip(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    # The booth reaches PostgreSQL through a cable pulled while a clip is being downloaded and
    # plugged back seconds later: the request still ends with one clip, and one set of files.
    async with (
        open_cable(database_url) as cable,
        open_nvr_standin(NVR_USER, NVR_PASSWORD, cache_dir=tmp_path / "recordings") as nvr,
        open_live(
            cable.via(database_url), redis_url, tmp_path / "data",
            batch_interval_seconds=1, auto_batch_enabled=True, temp_video_dir=tmp_path / "cctv",
            clip_flush_delay_seconds=0, clip_padding_seconds=0.5,
        ) as live,
    ):  # fmt: skip
        live.services.cctv.config = replace(
            live.services.cctv.config, backoff_base=0.05, backoff_max=0.2, nvr_timeout=5
        )
        rig = Rig(live, nvr, tmp_path / "cctv")
        recs = nvr.add_recordings(101, DAY, 2, SEGMENT, label="outage")
        camera = await rig.camera()
        nvr.stall_downloads_after(65536)
        request = await rig.request(camera, recs[0].start + timedelta(seconds=2), 30)
        with trio.fail_after(20):
            await nvr.download_stalled.wait()
        cable.cut()
        nvr.release_stall()
        await trio.sleep(4)
        cable.mend()
        with trio.fail_after(60):
            while True:
                if (await live.services.clips.request(request.id)).status == "CLIP_GENERATED":
                    break
                await trio.sleep(0.2)
        clip = await live.services.clips.clip_of(request.id)
        assert clip is not None and abs(clip.duration_seconds - 30) <= 1
        root = live.services.storage.root  # type: ignore[attr-defined]
        assert [p.name for p in root.rglob("*.mp4")] == [clip.storage_key.rsplit("/", 1)[-1]]
        assert rig.leftovers() == []
