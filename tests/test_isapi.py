"""IsapiClient against the Hikvision NVR stand-in (tests/standins/nvr.py); nothing is patched.

The stand-in speaks real Digest auth and real HTTP, so faults are real: a refused connection, a
connection closed mid-body, a 403 ResponseStatus. Recordings are made once per session (ffmpeg)
in a shared directory; batches that only need sizes share one video (``label=``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from photobot.cctv.isapi import (
    DeviceTime,
    IsapiClient,
    NvrAuthError,
    NvrRequestError,
    NvrUnavailable,
    Segment,
    ShortDownload,
    _segment_from_item,
    parse_posix_offset,
    parse_xml,
)
from tests.standins import standin_process
from tests.standins.nvr import NvrStandin, Recording, open_nvr_standin
from tests.standins.recordings import make_recording

USER = "admin"
PASSWORD = "s3cret-Pa55"
TRACK = 101
BASE = datetime(2024, 5, 1, 3, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def recordings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nvr-recordings")


@pytest.fixture
async def nvr(recordings_dir: Path) -> AsyncIterator[NvrStandin]:
    async with open_nvr_standin(USER, PASSWORD, cache_dir=recordings_dir) as standin:
        yield standin


def client(nvr: NvrStandin, **options: Any) -> IsapiClient:
    options.setdefault("timeout", 5.0)
    password = options.pop("password", PASSWORD)
    return IsapiClient(nvr.url, USER, password, **options)


def utc_client(nvr: NvrStandin, **options: Any) -> IsapiClient:
    """A client and device that both read ``Z`` as UTC."""
    nvr.time_mode = "utc"
    return client(nvr, time_mode="utc", **options)


def expected(nvr: NvrStandin, recordings: list[Recording]) -> list[tuple[Any, ...]]:
    return [(r.track_id, r.start, r.end, r.name, r.size, nvr.playback_uri(r)) for r in recordings]


def got(segments: list[Segment]) -> list[tuple[Any, ...]]:
    return [(s.track_id, s.start, s.end, s.name, s.size, s.playback_uri) for s in segments]


def at(recording: Recording, seconds: float) -> datetime:
    return recording.start + timedelta(seconds=seconds)


# -- auth ----------------------------------------------------------------------------------------


async def test_digest_challenge_first_then_reused(nvr: NvrStandin) -> None:
    async with client(nvr) as isapi:
        device = await isapi.device_time()
        assert nvr.auth_challenges == 1 and nvr.requests == 2  # 401 first, then with Digest
        await isapi.device_time()
        assert nvr.auth_challenges == 1 and nvr.requests == 3  # the challenge is reused
    assert nvr.auth_failures == 0
    assert device.time_zone == "CST-7:00:00"
    assert device.utc_offset == timedelta(hours=7)
    assert device.wall_clock_offset == timedelta(hours=7)
    now_there = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=7)
    assert abs(device.local_time - now_there) < timedelta(minutes=1)


async def test_wrong_password_is_fatal_and_not_retried(nvr: NvrStandin) -> None:
    wrong = "wrong-" + PASSWORD
    async with utc_client(nvr, password=wrong) as isapi:
        with pytest.raises(NvrAuthError) as info:
            await isapi.search(TRACK, BASE, BASE + timedelta(hours=1))
    assert info.value.status == 401
    assert "refused the username or password" in info.value.message
    assert wrong not in f"{info.value} {info.value!r}" and PASSWORD not in str(info.value)
    assert nvr.requests == 2 and nvr.auth_failures == 1  # challenge + one try, no loop
    assert nvr.calls["search POST"] == 0


# -- search --------------------------------------------------------------------------------------


async def test_search_pages_dedupes_and_sorts(nvr: NvrStandin) -> None:
    recordings = nvr.add_recordings(TRACK, BASE, 45, 20, label="shared", recording_seconds=1)
    nvr.add_recordings(102, BASE, 3, 20, label="shared", recording_seconds=1)  # another track
    nvr.search_quirk = "repeat_boundary"  # each later page repeats the previous page's last
    async with utc_client(nvr) as isapi:
        segments = await isapi.search(TRACK, BASE, recordings[-1].end)
    assert got(segments) == expected(nvr, recordings)
    assert nvr.calls["search POST"] == 2
    assert "<searchResultPostion>40</searchResultPostion>" in nvr.search_bodies[1]
    assert segments[0].size is not None and segments[0].size > 40


async def test_search_window_returns_only_overlapping_unclipped(nvr: NvrStandin) -> None:
    recordings = nvr.add_recordings(TRACK, BASE, 45, 20, label="shared", recording_seconds=1)
    async with utc_client(nvr) as isapi:
        # Starts exactly where 38 ends (the device reports 38 too: it touches) and ends in 41.
        segments = await isapi.search(TRACK, recordings[39].start, at(recordings[41], 5))
        assert got(segments) == expected(nvr, recordings[39:42])
        # From inside 39 to exactly the start of 42: whole files, not clipped to the window.
        segments = await isapi.search(TRACK, at(recordings[39], 7), recordings[42].start)
        assert got(segments) == expected(nvr, recordings[39:42])
        assert segments[0].start == recordings[39].start
        # Nothing recorded there: NO MATCHES, without a matchList.
        assert await isapi.search(TRACK, BASE - timedelta(hours=2), BASE - timedelta(hours=1)) == []


async def test_device_that_wants_track_list(nvr: NvrStandin) -> None:
    nvr.track_list_only = True
    recordings = nvr.add_recordings(TRACK, BASE, 3, 20, label="shared", recording_seconds=1)
    async with utc_client(nvr) as isapi:
        assert got(await isapi.search(TRACK, BASE, recordings[-1].end)) == expected(nvr, recordings)
        await isapi.search(TRACK, BASE, recordings[-1].end)
    first, second, third = nvr.search_bodies
    assert "<trackIDList>" in first  # the manual's body, refused with 400
    assert "<trackList>" in second and 'version="1.0"' in second and "<searchID>{" in second
    assert "<trackList>" in third  # remembered


async def test_local_mode_reads_offset_from_device(nvr: NvrStandin) -> None:
    recordings = nvr.add_recordings(TRACK, BASE, 5, 20, label="shared", recording_seconds=1)
    async with client(nvr, time_mode="local") as isapi:
        segments = await isapi.search(TRACK, at(recordings[1], 1), at(recordings[3], 1))
        assert got(segments) == expected(nvr, recordings[1:4])
        await isapi.search(TRACK, BASE, recordings[-1].end)
    assert nvr.calls["time GET"] == 1  # read once, kept
    # The window went out as wall clock (UTC+7) with a Z, as such devices want.
    assert "<startTime>2024-05-01T10:00:21Z</startTime>" in nvr.search_bodies[0]
    assert "20240501T100020Z" in segments[0].playback_uri


async def test_local_mode_with_given_offset_and_negative_zone(nvr: NvrStandin) -> None:
    nvr.utc_offset = timedelta(hours=-5, minutes=-30)
    recordings = nvr.add_recordings(TRACK, BASE, 3, 20, label="shared", recording_seconds=1)
    async with client(nvr, utc_offset=timedelta(hours=-5, minutes=-30)) as isapi:
        segments = await isapi.search(TRACK, BASE, recordings[-1].end)
    assert got(segments) == expected(nvr, recordings)
    assert nvr.calls["time GET"] == 0
    async with client(nvr) as isapi:
        device = await isapi.device_time()
    assert device.time_zone == "CST+5:30:00" and device.utc_offset == -timedelta(hours=5.5)


async def test_utc_mode(nvr: NvrStandin) -> None:
    recordings = nvr.add_recordings(TRACK, BASE, 5, 20, label="shared", recording_seconds=1)
    async with utc_client(nvr) as isapi:
        segments = await isapi.search(TRACK, at(recordings[1], 1), at(recordings[3], 1))
    assert got(segments) == expected(nvr, recordings[1:4])
    assert nvr.calls["time GET"] == 0
    assert "<startTime>2024-05-01T03:00:21Z</startTime>" in nvr.search_bodies[0]


async def test_dst_time_zone_is_read_safely(nvr: NvrStandin) -> None:
    nvr.utc_offset = timedelta(hours=1)
    nvr.time_zone = "CST-1:00:00DST01:00:00,M3.5.0/02:00:00,M10.5.0/03:00:00"
    recordings = nvr.add_recordings(TRACK, BASE, 2, 20, label="shared", recording_seconds=1)
    async with client(nvr) as isapi:
        device = await isapi.device_time()
        segments = await isapi.search(TRACK, BASE, recordings[-1].end)
    assert device.time_zone == nvr.time_zone
    assert device.utc_offset == timedelta(hours=1) and device.has_dst
    assert got(segments) == expected(nvr, recordings)


@pytest.mark.parametrize(
    ("zone", "hours"),
    [
        ("CST-7:00:00", 7),
        ("CST+5:00:00", -5),
        ("EST5EDT,M3.2.0,M11.1.0", -5),
        ("CST-5:30:00", 5.5),
        ("<+07>-7", 7),
        ("CST-1:00:00DST01:00:00,M3.5.0/02:00:00,M10.5.0/03:00:00", 1),
        ("UTC0", 0),
        ("garbage", None),
        ("", None),
    ],
)
def test_posix_offsets(zone: str, hours: float | None) -> None:
    offset = parse_posix_offset(zone)
    assert offset == (None if hours is None else timedelta(hours=hours))


def test_wall_clock_offset_follows_dst_only_when_plausible() -> None:
    local = datetime(2024, 7, 1, 12, 0)
    dst_zone = "CST-1:00:00DST01:00:00,M3.5.0/02:00:00,M10.5.0/03:00:00"
    summer = DeviceTime(local, dst_zone, timedelta(hours=1), timedelta(hours=2))
    assert summer.wall_clock_offset == timedelta(hours=2)
    no_dst = DeviceTime(local, "CST-1:00:00", timedelta(hours=1), timedelta(hours=2))
    assert no_dst.wall_clock_offset == timedelta(hours=1)


def test_parses_other_namespaces_and_uri_times() -> None:
    body = b"""<?xml version="1.0" encoding="UTF-8"?>
<CMSearchResult version="1.0" xmlns="http://www.hikvision.com/ver20/XMLSchema">
<matchList>
<searchMatchItem><trackID>101</trackID><mediaSegmentDescriptor><playbackURI>rtsp://h/Streaming/tracks/101/?starttime=2022-12-06T08:51:13Z&amp;endtime=2022-12-06T08:52:13Z&amp;name=a1&amp;size=99</playbackURI></mediaSegmentDescriptor></searchMatchItem>
<searchMatchItem><mediaSegmentDescriptor><playbackURI>rtsp://h/Streaming/tracks/101/?starttime=20221206T085213Z&amp;endtime=20221206T085313Z&amp;name=a2</playbackURI></mediaSegmentDescriptor></searchMatchItem>
<searchMatchItem><timeSpan><startTime>2022-12-06T09:53:13+08:00</startTime><endTime>2022-12-06T09:54:13+08:00</endTime></timeSpan><mediaSegmentDescriptor><playbackURI>rtsp://h/x?starttime=20221206T000000Z&amp;name=a3</playbackURI></mediaSegmentDescriptor></searchMatchItem>
</matchList></CMSearchResult>"""
    items = parse_xml(body).findall(".//searchMatchItem")
    first, second, third = (_segment_from_item(i, 999, timedelta(hours=7)) for i in items)
    assert first is not None and second is not None and third is not None
    t0 = datetime(2022, 12, 6, 1, 51, 13, tzinfo=UTC)  # 08:51:13 wall clock at UTC+7
    assert (first.track_id, first.start, first.end) == (101, t0, t0 + timedelta(minutes=1))
    assert first.playback_uri.count("&") == 3 and (first.name, first.size) == ("a1", 99)
    assert (second.track_id, second.start, second.size) == (999, t0 + timedelta(minutes=1), None)
    assert third.start == t0 + timedelta(minutes=2)  # an explicit offset wins over the mode


def test_refuses_entity_declarations() -> None:
    with pytest.raises(ValueError):
        parse_xml(b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')


async def test_device_that_never_advances_terminates(nvr: NvrStandin) -> None:
    recordings = nvr.add_recordings(TRACK, BASE, 45, 20, label="shared", recording_seconds=1)
    async with utc_client(nvr) as isapi:
        nvr.search_quirk = "more_empty"  # MORE with zero items after the last page
        assert got(await isapi.search(TRACK, BASE, recordings[-1].end)) == expected(nvr, recordings)
        assert nvr.calls["search POST"] == 3
        nvr.search_quirk = "stuck"  # ignores the position: the same first page, MORE forever
        segments = await isapi.search(TRACK, BASE, recordings[-1].end)
        assert got(segments) == expected(nvr, recordings[:40])
        assert nvr.calls["search POST"] == 5


async def test_page_cap(nvr: NvrStandin) -> None:
    recordings = nvr.add_recordings(TRACK, BASE, 100, 20, label="shared", recording_seconds=1)
    async with utc_client(nvr, max_pages=2) as isapi:
        segments = await isapi.search(TRACK, BASE, recordings[-1].end)
    assert got(segments) == expected(nvr, recordings[:80])
    assert nvr.calls["search POST"] == 2


# -- errors --------------------------------------------------------------------------------------


async def test_response_status_is_in_the_error(nvr: NvrStandin) -> None:
    async with utc_client(nvr) as isapi:
        nvr.add_fault(400, times=2, endpoint="search")  # twice: the web UI's form is tried too
        with pytest.raises(NvrRequestError) as info:
            await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5))
        assert "NVR said 400 Invalid XML Content (badXmlContent)" in info.value.message
        assert (info.value.status, info.value.sub_status) == (400, "badXmlContent")
        nvr.add_fault(403, endpoint="search", sub_status="notSupport")
        with pytest.raises(NvrRequestError) as info:
            await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5))
        assert "NVR said 403 Invalid Operation (notSupport)" in info.value.message


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_transient(nvr: NvrStandin, status: int) -> None:
    nvr.add_fault(status)
    async with utc_client(nvr) as isapi:
        with pytest.raises(NvrUnavailable) as info:
            await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5))
        assert info.value.status == status and f"NVR said {status}" in info.value.message
        assert await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5)) == []  # recovered


async def test_one_stray_401_is_ridden_out(nvr: NvrStandin) -> None:
    async with utc_client(nvr) as isapi:
        await isapi.device_time()
        nvr.add_fault(401)  # like an expired nonce: httpx answers the new challenge
        assert await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5)) == []


@pytest.mark.parametrize("mode", ["refuse", "drop"])
async def test_nvr_down_is_transient(nvr: NvrStandin, mode: Any) -> None:
    async with utc_client(nvr) as isapi:
        await isapi.device_time()  # a pooled connection exists
        nvr.set_down(mode)
        with pytest.raises(NvrUnavailable) as info:
            await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5))
        assert nvr.url in info.value.message
        await nvr.bring_up()
        assert await isapi.search(TRACK, BASE, BASE + timedelta(minutes=5)) == []


async def test_timeout_is_transient(nvr: NvrStandin) -> None:
    nvr.response_delay = 2.0
    async with utc_client(nvr, timeout=0.3) as isapi:
        with pytest.raises(NvrUnavailable) as info:
            await isapi.device_time()
    assert "did not answer within 0.3 s" in info.value.message


# -- download ------------------------------------------------------------------------------------


async def find_one(isapi: IsapiClient, recording: Recording) -> Segment:
    [segment] = await isapi.search(recording.track_id, at(recording, 1), at(recording, 2))
    return segment


async def test_download_writes_the_exact_bytes(nvr: NvrStandin, tmp_path: Path) -> None:
    recording = nvr.add_recording(TRACK, BASE, 20, recording_seconds=2)
    async with client(nvr) as isapi:
        segment = await find_one(isapi, recording)
        written = await isapi.download(segment, tmp_path / "a.raw", chunk_size=4096)
    source = make_recording(nvr.cache_dir, 2, label=recording.name)
    data = (tmp_path / "a.raw").read_bytes()
    assert data == source.read_bytes() and data.startswith(b"IMKH")
    assert written == len(data) == segment.size
    assert nvr.calls["download GET"] == 1 and nvr.calls["download POST"] == 0


async def test_download_body_must_be_escaped_xml(nvr: NvrStandin) -> None:
    recording = nvr.add_recording(TRACK, BASE, 20, label="shared", recording_seconds=1)
    async with client(nvr) as isapi:
        segment = await find_one(isapi, recording)
    assert "&name=" in segment.playback_uri  # unescaped in the Segment
    raw = f"<downloadRequest><playbackURI>{segment.playback_uri}</playbackURI></downloadRequest>"
    async with httpx.AsyncClient(auth=httpx.DigestAuth(USER, PASSWORD)) as http:
        r = await http.request("GET", f"{nvr.url}/ISAPI/ContentMgmt/download", content=raw.encode())
    assert r.status_code == 400 and b"badXmlContent" in r.content


async def test_download_get_forbidden_falls_back_to_post(nvr: NvrStandin, tmp_path: Path) -> None:
    nvr.download_get_forbidden = True
    first, second = nvr.add_recordings(TRACK, BASE, 2, 20, recording_seconds=1)
    async with client(nvr) as isapi:
        a = await isapi.download(await find_one(isapi, first), tmp_path / "a.raw")
        b = await isapi.download(await find_one(isapi, second), tmp_path / "b.raw")
    assert first.path is not None
    assert (tmp_path / "a.raw").read_bytes() == first.path.read_bytes()
    assert (a, b) == (first.size, second.size)
    assert nvr.calls["download GET"] == 1  # learnt: the second went straight to POST
    assert nvr.calls["download POST"] == 2


async def test_download_unknown_file_is_a_request_error(nvr: NvrStandin, tmp_path: Path) -> None:
    recording = nvr.add_recording(TRACK, BASE, 20, label="shared", recording_seconds=1)
    async with client(nvr) as isapi:
        segment = await find_one(isapi, recording)
        gone = Segment(
            segment.track_id,
            segment.start,
            segment.end,
            segment.playback_uri.replace(recording.name, "00000000000000000"),
            segment.size,
            "00000000000000000",
        )
        with pytest.raises(NvrRequestError) as info:
            await isapi.download(gone, tmp_path / "x.raw")
    assert info.value.status == 404 and "NVR said 404" in info.value.message
    assert not (tmp_path / "x.raw").exists()


@pytest.mark.parametrize("declare", ["full", "short"])
async def test_short_download_leaves_no_file(nvr: NvrStandin, tmp_path: Path, declare: Any) -> None:
    recording = nvr.add_recording(TRACK, BASE, 20, label="shared", recording_seconds=1)
    dest = tmp_path / "short.raw"
    async with client(nvr) as isapi:
        segment = await find_one(isapi, recording)
        nvr.add_short_download(fraction=0.5, declare=declare)
        with pytest.raises(ShortDownload) as info:
            await isapi.download(segment, dest, chunk_size=1024)
        assert not dest.exists()
        assert isinstance(info.value, NvrUnavailable)  # transient: callers retry
        assert await isapi.download(segment, dest) == segment.size  # the retry works


async def test_cancelled_download_leaves_no_file(nvr: NvrStandin, tmp_path: Path) -> None:
    recording = nvr.add_recording(TRACK, BASE, 20, label="shared", recording_seconds=1)
    dest = tmp_path / "cancelled.raw"
    progressed = trio.Event()
    async with client(nvr) as isapi:
        segment = await find_one(isapi, recording)
        nvr.stall_downloads_after(8192)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    isapi.download,
                    segment,
                    dest,
                    chunk_size=1024,
                    on_progress=lambda n: progressed.set(),
                )
            )
            await progressed.wait()
            await nvr.download_stalled.wait()
            assert dest.exists()  # a partial file is being written
            nursery.cancel_scope.cancel()
    assert not dest.exists()


# -- the stand-in as a separate process ----------------------------------------------------------


async def test_standin_runs_as_a_process_with_json_faults(recordings_dir: Path) -> None:
    args = [
        "--username", USER, "--password", PASSWORD, "--time-mode", "local", "--utc-offset", "420",
        "--recordings", "3", "--segment-seconds", "10", "--recording-seconds", "1",
        "--cache-dir", str(recordings_dir),
    ]  # fmt: skip
    async with standin_process("nvr", *args) as url:
        now = datetime.now(UTC)
        async with IsapiClient(url, USER, PASSWORD, timeout=10) as isapi:
            segments = await isapi.search(TRACK, now - timedelta(minutes=5), now)
            assert len(segments) == 3
            async with httpx.AsyncClient() as http:
                r = await http.post(f"{url}/__standin__/fault", json={"status": 503})
                assert r.json() == {"ok": True}
                with pytest.raises(NvrUnavailable):
                    await isapi.search(TRACK, now - timedelta(minutes=5), now)
                state = (await http.get(f"{url}/__standin__/state")).json()
        assert state["searches"] == {"GET": 0, "POST": 2}
        assert state["time"] == 1 and state["auth_failures"] == 0
