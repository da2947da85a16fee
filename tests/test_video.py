"""CCTV clips with the real ffmpeg: raw NVR recordings (IMKH + MPEG-PS) in, MP4 and JPEG out.

Recordings come from ``tests.standins.recordings`` (made once per module): three contiguous
25 s segments at 160x120, 10 fps, a keyframe every second, each with a different picture.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from PIL import Image

from photobot.cctv.video import (
    ClipResult,
    Part,
    VideoError,
    find_ffmpeg,
    make_clip,
    probe_duration,
)
from tests.standins.recordings import IMKH_HEADER, make_recording

T0 = datetime(2025, 6, 1, 18, 0, tzinfo=UTC)
SEGMENT = 25  # seconds
WIDTH, HEIGHT, FPS = 160, 120, 10


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    cache = tmp_path_factory.mktemp("recordings")
    # These labels give hues far apart (79 degrees or more), so the segments tell apart.
    return [make_recording(cache, SEGMENT, label=f"clip-{i}") for i in range(3)]


@pytest.fixture
def parts(recordings: list[Path]) -> list[Part]:
    # Handed over out of order: make_clip sorts by start.
    made = [Part(path, at(i * SEGMENT), at((i + 1) * SEGMENT)) for i, path in enumerate(recordings)]
    return [made[2], made[0], made[1]]


def outputs_only(workdir: Path, result: ClipResult) -> None:
    """Nothing but the clip and its poster is left in the workdir."""
    assert sorted(os.listdir(workdir)) == sorted([result.path.name, result.poster_path.name])
    assert result.path.parent == workdir and result.poster_path.parent == workdir


async def ffmpeg_out(*args: str) -> bytes:
    done = await trio.run_process(
        [find_ffmpeg(), "-nostdin", "-hide_banner", "-loglevel", "error", *args],
        capture_stdout=True,
        capture_stderr=True,
    )
    return done.stdout


async def frame(path: Path, seconds: float = 0.0) -> bytes:
    """The frame shown at ``seconds`` into ``path``, as RGB pixels (the segments differ in hue,
    not in brightness, so gray would not tell them apart). Picked by its number, not by ``-ss``:
    seeking in a raw MPEG-PS lands on a keyframe."""
    number = round(seconds * FPS)
    return await ffmpeg_out(
        "-i", str(path), "-vf", f"select=eq(n\\,{number})", "-frames:v", "1",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    )  # fmt: skip


def difference(a: bytes, b: bytes) -> float:
    """Mean absolute difference per channel, 0..255."""
    assert len(a) == len(b) == WIDTH * HEIGHT * 3
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def check_mp4(result: ClipResult) -> None:
    head = result.path.read_bytes()
    assert result.size_bytes == len(head) > 0
    assert head[4:8] == b"ftyp"
    assert b"avc1" in head[:4096]  # H.264 sample entry, in the moov at the front
    assert head.find(b"moov") < head.find(b"mdat")  # +faststart


def check_poster(result: ClipResult) -> None:
    with Image.open(result.poster_path) as poster:
        assert poster.format == "JPEG"
        assert poster.size == (WIDTH, HEIGHT)
        poster.load()


# --- the cut --------------------------------------------------------------------------------


async def test_stream_copy_clip_spans_three_parts(parts: list[Part], tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    result = await make_clip(parts, at(5), at(65), workdir)
    assert abs(result.duration_seconds - 60) <= 1.0
    assert await probe_duration(result.path) == pytest.approx(result.duration_seconds, abs=0.01)
    check_mp4(result)
    check_poster(result)
    outputs_only(workdir, result)


async def test_exact_clip_is_frame_accurate(parts: list[Part], tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    # 5.3 s is not on a keyframe: only a re-encode can start there.
    result = await make_clip(parts, at(5.3), at(65.3), workdir, exact=True)
    assert abs(result.duration_seconds - 60) <= 0.1
    assert await probe_duration(result.path) == pytest.approx(result.duration_seconds, abs=0.01)
    check_mp4(result)
    check_poster(result)
    outputs_only(workdir, result)


async def test_window_inside_second_part_cuts_from_there(
    parts: list[Part], recordings: list[Path], tmp_path: Path
) -> None:
    # 30 s is 5 s into the second part, on a keyframe: the copy's first frame is that frame.
    copy = await make_clip(parts, at(30), at(40), tmp_path / "copy")
    assert abs(copy.duration_seconds - 10) <= 1.0
    first = await frame(copy.path)
    assert difference(first, await frame(recordings[1], 5.0)) < 1.0
    for recording, seconds in ((recordings[0], 5.0), (recordings[1], 6.0), (recordings[2], 5.0)):
        assert difference(first, await frame(recording, seconds)) > 5.0

    # Off the keyframe, re-encoded: the second part's frame at 5.5 s, not the one before or after.
    exact = await make_clip(parts, at(30.5), at(38.5), tmp_path / "exact", exact=True)
    assert abs(exact.duration_seconds - 8) <= 0.1
    first = await frame(exact.path)
    want = difference(first, await frame(recordings[1], 5.5))
    assert want < 3.0  # only the re-encode's loss
    for recording, seconds in ((recordings[1], 5.4), (recordings[1], 5.6), (recordings[2], 5.5)):
        assert difference(first, await frame(recording, seconds)) > 3 * want


async def test_window_beyond_the_recordings_is_clamped(parts: list[Part], tmp_path: Path) -> None:
    # Starts 10 s before the first part and ends long after the last: all 75 s, no padding.
    result = await make_clip(parts, at(-10), at(300), tmp_path / "work")
    assert abs(result.duration_seconds - 3 * SEGMENT) <= 1.0
    # Ends 5 s into the last part's successor: clamped to the 5 s left of the last part.
    result = await make_clip(parts, at(70), at(90), tmp_path / "tail", exact=True)
    assert abs(result.duration_seconds - 5) <= 0.1


async def test_only_overlapping_parts_are_used(parts: list[Part], tmp_path: Path) -> None:
    # Only the third part overlaps; a broken first part would fail the clip if it were read.
    broken = Part(tmp_path / "missing.raw", at(0), at(SEGMENT))
    result = await make_clip([broken, parts[0]], at(55), at(60), tmp_path / "work")
    assert abs(result.duration_seconds - 5) <= 1.0


async def test_recording_without_imkh_header(recordings: list[Path], tmp_path: Path) -> None:
    raw = recordings[0].read_bytes()
    assert raw.startswith(IMKH_HEADER)
    bare = tmp_path / "bare.ps"
    bare.write_bytes(raw[len(IMKH_HEADER) :])
    result = await make_clip([Part(bare, at(0), at(SEGMENT))], at(0), at(10), tmp_path / "w")
    assert abs(result.duration_seconds - 10) <= 1.0


async def test_probe_duration(recordings: list[Path], tmp_path: Path) -> None:
    # A raw MPEG-PS states no exact duration (ffmpeg -i says 24.9): it is decoded instead.
    assert await probe_duration(recordings[0]) == pytest.approx(SEGMENT, abs=0.01)
    with pytest.raises(VideoError) as caught:
        await probe_duration(tmp_path / "missing.mp4")
    assert caught.value.code == "video_failed"
    assert str(tmp_path) not in caught.value.message


# --- bad input --------------------------------------------------------------------------------


async def test_corrupt_recording(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.raw"
    corrupt.write_bytes(IMKH_HEADER + os.urandom(300_000))
    workdir = tmp_path / "work"
    with pytest.raises(VideoError) as caught:
        await make_clip([Part(corrupt, at(0), at(SEGMENT))], at(0), at(10), workdir)
    message = caught.value.message
    assert caught.value.code == "video_failed"
    assert message.startswith("ffmpeg failed to remux (exit ")
    assert len(message) > len("ffmpeg failed to remux (exit 1): ")  # ffmpeg's own words
    assert str(tmp_path) not in message
    assert os.listdir(workdir) == []


@pytest.mark.parametrize(
    ("window", "needle"),
    [
        ((at(10), at(10)), "empty clip window"),
        ((at(20), at(10)), "empty clip window"),
        ((at(100), at(110)), "no recording overlaps"),
        ((datetime(2025, 6, 1, 18), at(10)), "timezone-aware"),
    ],
)
async def test_bad_window(
    parts: list[Part], tmp_path: Path, window: tuple[datetime, datetime], needle: str
) -> None:
    with pytest.raises(VideoError, match=needle):
        await make_clip(parts, *window, tmp_path)
    assert os.listdir(tmp_path) == []


async def test_no_parts(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no recordings"):
        await make_clip([], at(0), at(10), tmp_path)


async def test_window_past_a_short_download(recordings: list[Path], tmp_path: Path) -> None:
    # The NVR says the part runs to 60 s, but the download holds 25 s: nothing at 40 s.
    short = Part(recordings[0], at(0), at(60))
    with pytest.raises(VideoError, match="no footage in the window"):
        await make_clip([short], at(40), at(50), tmp_path / "work")
    assert os.listdir(tmp_path / "work") == []


# --- processes --------------------------------------------------------------------------------


def ffmpeg_children() -> list[str]:
    """Command lines of this process's ffmpeg children (zombies included, by name)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # gone meanwhile
            continue
        comm, _, rest = stat.partition(" (")[2].rpartition(") ")
        if int(rest.split()[1]) == os.getpid() and comm.startswith("ffmpeg"):
            found.append(cmdline or f"<{rest.split()[0]}> {comm}")
    return found


async def test_cancel_kills_ffmpeg(tmp_path: Path) -> None:
    big = make_recording(tmp_path / "big", 75, label="big", size="640x480")  # ~8 s to encode
    workdir = tmp_path / "work"
    outcome: list[object] = []

    async def clip() -> None:
        try:
            outcome.append(await make_clip([Part(big, at(0), at(75))], at(0), at(75), workdir,
                                           exact=True))  # fmt: skip
        except BaseException as exc:
            outcome.append(exc)
            raise

    started = trio.current_time()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clip)
            # Cancel once the encoder is running, not at a guessed moment.
            with trio.fail_after(20):
                while not any("libx264" in c for c in ffmpeg_children()):  # noqa: ASYNC110
                    await trio.sleep(0.02)  # polling /proc: there is no event to wait for
            await trio.sleep(0.3)
            scope.cancel()
    assert scope.cancelled_caught
    assert len(outcome) == 1 and isinstance(outcome[0], trio.Cancelled)  # a plain Cancelled
    assert trio.current_time() - started < 5  # did not wait for the encode to finish
    assert ffmpeg_children() == []
    assert os.listdir(workdir) == []


async def test_limiter_bounds_ffmpeg_processes(parts: list[Part], tmp_path: Path) -> None:
    limiter = trio.CapacityLimiter(1)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(ffmpeg_children()))
            await trio.sleep(0.005)

    results: list[ClipResult] = []

    async def clip(name: str) -> None:
        workdir = tmp_path / name
        results.append(await make_clip(parts, at(20), at(32), workdir, exact=True,
                                       limiter=limiter))  # fmt: skip

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as clips:
            clips.start_soon(clip, "a")
            clips.start_soon(clip, "b")
        nursery.cancel_scope.cancel()
    assert most == 1
    assert limiter.borrowed_tokens == 0
    assert [abs(r.duration_seconds - 12) <= 0.1 for r in results] == [True, True]
