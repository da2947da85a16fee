"""ffmpeg for CCTV clips: find the binary, remux, concatenate, cut, poster frame.

Every ffmpeg run goes through ``trio.run_process``: the event loop never blocks, and a
cancelled run kills its process (no orphan ffmpeg keeps writing into a temp dir).

What ``make_clip`` does with the raw NVR downloads (``shared/notes/protocols.md`` §1 "Download":
a 40-byte ``IMKH`` header, then an MPEG program stream):

1. **Remux** each part that overlaps the window into a clean MP4 (stream copy, first video stream
   only). The ``IMKH`` header is skipped with ffmpeg's ``-skip_initial_bytes`` rather than left to
   ffmpeg's resync, so the demuxer is probed on real stream bytes, and the file is never copied.
2. **Concatenate** the remuxed parts in start order (concat demuxer, stream copy) and **cut** to
   the window in the same run. Stream copy cuts on keyframes (the clip is within one GOP, about
   1 s on an NVR, of the request); ``exact=True`` re-encodes with libx264 for a frame-exact cut.
3. **Poster**: one JPEG frame from about 1 s in (the middle of a clip shorter than 2 s).

Audio and the NVR's private data streams are dropped: NVR audio is usually G.711, which neither
MP4 nor a browser ``<video>`` plays, and CCTV clips are watched for the picture.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import IO

import trio

from photobot.errors import ConfigError, PhotobotError

FFMPEG_ENV = "PHOTOBOT_FFMPEG"

#: The Hikvision private media header in front of a raw download.
IMKH_MAGIC = b"IMKH"
IMKH_HEADER_BYTES = 40

#: Names of the outputs in ``workdir``.
CLIP_NAME = "clip.mp4"
POSTER_NAME = "poster.jpg"

#: How much of ffmpeg's stderr is kept: enough for the input dump of a probe and the
#: tail of an error, bounded so a corrupt input that makes ffmpeg log a line per packet cannot
#: grow our memory.
_KEEP_BYTES = 64 * 1024
#: Lines of ffmpeg's stderr quoted in a VideoError.
_TAIL_LINES = 5
#: A poster is taken this far into the clip, or from the middle of a shorter clip.
_POSTER_AT_SECONDS = 1.0

_BASE_ARGS = ("-nostdin", "-hide_banner", "-loglevel", "error")


class VideoError(PhotobotError):
    """ffmpeg could not make the clip (bad input, nothing in the window, ffmpeg failed)."""

    code = "video_failed"


@dataclass(frozen=True)
class Part:
    """One downloaded segment: the raw NVR download (``IMKH`` + MPEG-PS) as it came off the wire.

    ``start``/``end`` are the NVR's times for the recording (aware; compared, so any zone works,
    UTC by convention). The caller owns the file; ``make_clip`` only reads it."""

    path: Path
    start: datetime
    end: datetime


@dataclass(frozen=True)
class ClipResult:
    """A finished clip in the caller's ``workdir``; the caller owns (and removes) both files."""

    path: Path  # MP4, H.264, moov at the front (+faststart): plays in a browser <video>
    poster_path: Path  # JPEG, the clip's resolution
    duration_seconds: float  # measured from the clip file (probe_duration)
    size_bytes: int


@cache
def find_ffmpeg() -> str:
    """The ffmpeg to run: ``$PHOTOBOT_FFMPEG``, the system's ``ffmpeg``, else the binary of the
    ``imageio-ffmpeg`` wheel (a dependency, so a fresh machine has one)."""
    configured = os.environ.get(FFMPEG_ENV)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise ConfigError(f"{FFMPEG_ENV}={configured}: not an executable file")
        return configured
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise ConfigError("no ffmpeg: install ffmpeg or the imageio-ffmpeg package") from None
    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def make_clip(
    parts: Sequence[Part],
    start: datetime,
    end: datetime,
    workdir: Path,
    *,
    exact: bool = False,
    limiter: trio.CapacityLimiter | None = None,
) -> ClipResult:
    """Cut the window [``start``, ``end``) out of ``parts`` into ``workdir/clip.mp4`` and
    ``workdir/poster.jpg``.

    Only parts overlapping the window are used; they are joined in start order and the cut starts
    at ``start - first_part.start`` (0 if the window starts before the recording) and lasts
    ``end - start``, clamped to the footage there is. Gaps between parts are not filled: the
    footage is joined as is, so after a gap the clip runs on past ``end`` by the gap's length
    (the clip is always the requested duration of *recorded* footage, never padded).

    Stream copy by default (cut on the keyframe at or before ``start``: the duration is within one
    GOP of the request); ``exact=True`` re-encodes (libx264 veryfast, source resolution) for a
    cut within a frame. A source that is not H.264 (e.g. H.265) is re-encoded either way, since
    the clip must play in any browser.

    Ownership: the caller owns ``workdir`` (created if missing) and removes it afterwards; the
    outputs replace any ``clip.mp4``/``poster.jpg`` there, so use one workdir per clip.
    Intermediates live in a private subdirectory that is removed on success, failure and
    cancellation alike; the outputs are renamed into place only when both are complete, so a
    failed or cancelled call leaves neither behind.

    Cancellation (the caller's cancel scope; there is no built-in timeout) kills the running
    ffmpeg, waits for it to exit, removes the intermediates and propagates ``trio.Cancelled``.
    ``limiter`` bounds the number of ffmpeg processes running at once (held per process, not for
    the whole clip; don't call this while holding the same limiter).

    Raises ``VideoError`` for no parts, an empty window, a window with no footage in it, naive
    datetimes, and any ffmpeg failure (with the tail of ffmpeg's stderr).
    """
    for name, value in (("start", start), ("end", end)):
        _require_aware(value, name)
    for part in parts:
        _require_aware(part.start, "Part.start")
        _require_aware(part.end, "Part.end")
    if not parts:
        raise VideoError("no recordings to cut a clip from")
    if end <= start:
        raise VideoError(f"empty clip window: {start.isoformat()} .. {end.isoformat()}")
    used = sorted((p for p in parts if p.start < end and p.end > start), key=lambda p: p.start)
    if not used:
        raise VideoError(
            f"no recording overlaps the window {start.isoformat()} .. {end.isoformat()}"
        )

    workdir = Path(workdir)
    await trio.Path(workdir).mkdir(parents=True, exist_ok=True)
    tmp = workdir / f".clip-{secrets.token_hex(4)}"
    await trio.Path(tmp).mkdir()
    clip_out, poster_out = workdir / CLIP_NAME, workdir / POSTER_NAME
    done = poster_published = False
    run = partial(_run_ffmpeg, cwd=tmp, limiter=limiter, scrub=[p.path for p in used])
    try:
        # 1. Remux: a clean MP4 per part, so the concat demuxer gets exact durations and
        # timestamps (an MPEG-PS states neither reliably).
        names = []
        available = 0.0
        codecs = set()
        for i, part in enumerate(used):
            name = f"part{i:03d}.mp4"
            skip = IMKH_HEADER_BYTES if await _has_imkh_header(part.path) else 0
            # Absolute (ffmpeg runs in tmp), and "file:" so no name is taken for a protocol.
            source = "file:" + str(await trio.Path(part.path).absolute())
            await run(
                "remux",
                [
                    "-skip_initial_bytes", str(skip), "-fflags", "+genpts",
                    "-i", source,
                    "-map", "0:v:0", "-c", "copy", "-f", "mp4", name,
                ],
            )  # fmt: skip
            info = await _probe(tmp / name, limiter=limiter, logdir=tmp)
            names.append(name)
            available += info.duration
            codecs.add(info.codec)

        # 2. Concatenate and cut in one run. The offset is on the joined footage (see docstring
        # on gaps); the length is clamped to the footage left after the offset.
        offset = max(0.0, (start - used[0].start).total_seconds())
        length = min((end - start).total_seconds(), available - offset)
        if length <= 0:
            raise VideoError(
                f"no footage in the window: it starts {offset:.1f}s into {available:.1f}s of"
                " recording"
            )
        # Relative names in the list (ffmpeg runs in tmp): no quoting, no path in messages.
        await trio.Path(tmp / "parts.txt").write_text(
            "ffconcat version 1.0\n" + "".join(f"file {n}\n" for n in names)
        )
        if exact or codecs != {"h264"}:
            encode = [
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                # Source timestamps as they are: no frames duplicated or dropped to force a rate.
                "-fps_mode", "passthrough",
            ]  # fmt: skip
        else:
            encode = ["-c", "copy"]
        await run(
            "cut the clip",
            [
                # -ss before -i: seek in the input (fast; with a re-encode, still frame-exact).
                "-f", "concat", "-ss", f"{offset:.6f}", "-i", "parts.txt",
                "-t", f"{length:.6f}", "-map", "0:v:0", *encode,
                "-movflags", "+faststart", "-f", "mp4", CLIP_NAME,
            ],
        )  # fmt: skip
        duration = (await _probe(tmp / CLIP_NAME, limiter=limiter, logdir=tmp)).duration
        if duration <= 0:
            raise VideoError("the clip came out empty")

        # 3. Poster.
        at = _POSTER_AT_SECONDS if duration >= 2 * _POSTER_AT_SECONDS else duration / 2
        await run(
            "make the poster",
            [
                "-ss", f"{at:.3f}", "-i", CLIP_NAME, "-map", "0:v:0", "-frames:v", "1",
                "-c:v", "mjpeg", "-q:v", "3", "-update", "1", "-f", "image2", POSTER_NAME,
            ],
        )  # fmt: skip
        if not (await trio.Path(tmp / POSTER_NAME).exists()):
            raise VideoError("ffmpeg made no poster frame")

        size = (await trio.Path(tmp / CLIP_NAME).stat()).st_size
        # Publish: renames within one filesystem; the clip last, as the sign that both are done.
        await trio.Path(tmp / POSTER_NAME).replace(poster_out)
        poster_published = True
        await trio.Path(tmp / CLIP_NAME).replace(clip_out)
        done = True
        return ClipResult(
            path=clip_out, poster_path=poster_out, duration_seconds=duration, size_bytes=size
        )
    finally:
        # Shielded: the cleanup must also run when we are here because of a cancellation.
        with trio.CancelScope(shield=True):
            if poster_published and not done:
                with contextlib.suppress(OSError):
                    await trio.Path(poster_out).unlink(missing_ok=True)
            await trio.to_thread.run_sync(partial(shutil.rmtree, tmp, ignore_errors=True))


async def probe_duration(path: Path, *, limiter: trio.CapacityLimiter | None = None) -> float:
    """The duration of a video file's first video stream, in seconds, as a player shows it.

    For a container whose header states the duration (MP4/MOV, Matroska/WebM: what make_clip
    writes) that is read without decoding anything (``ffmpeg -i``; exact to 10 ms, edit lists
    applied). Any other file (an MPEG-PS/TS, a raw stream) is decoded to the end instead: ffmpeg
    estimates those from the first and last timestamps, which misses the last frame's duration
    (24.9 s for 250 frames at 10 fps), or from the bitrate. ``VideoError`` if ffmpeg cannot
    read the file or it has no video."""
    return (await _probe(Path(path), limiter=limiter)).duration


# --- internals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Info:
    duration: float
    codec: str  # of the first video stream, e.g. "h264"; "" if none


#: Demuxers (as ``ffmpeg -i`` names them) whose stated duration is exact.
_STATED_DURATION_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})
_INPUT_RE = re.compile(r"^Input #0, (.+), from ", re.MULTILINE)
_DURATION_RE = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_VIDEO_RE = re.compile(r"^\s*Stream #0:\d+\S*: Video: (\w+)", re.MULTILINE)
_OUT_TIME_RE = re.compile(r"^out_time_us=(\d+)$", re.MULTILINE)


async def _probe(
    path: Path, *, limiter: trio.CapacityLimiter | None, logdir: Path | None = None
) -> _Info:
    scrub = [path]
    source = f"file:{path}"
    # The input dump is printed at "info" (not "error", unlike every other run). Without an
    # output ffmpeg exits 1 after the dump; success is judged by the dump itself.
    rc, err = await _exec(
        ["-nostdin", "-hide_banner", "-loglevel", "info", "-i", source],
        limiter=limiter,
        logdir=logdir,
    )
    container = _INPUT_RE.search(err)
    if container is None:
        raise VideoError(f"ffmpeg cannot read {path.name} (exit {rc}): {_tail(err, scrub)}")
    video = _VIDEO_RE.search(err)
    if video is None:
        raise VideoError(f"{path.name} has no video stream")
    stated = _DURATION_RE.search(err)
    if stated is not None and container.group(1) in _STATED_DURATION_FORMATS:
        hours, minutes, seconds = stated.groups()
        return _Info(int(hours) * 3600 + int(minutes) * 60 + float(seconds), video.group(1))
    # No exact stated duration: decode, and take the end of the last frame.
    # Progress goes to stderr too, so one bounded capture serves both.
    rc, err = await _exec(
        [*_BASE_ARGS, "-nostats", "-i", source, "-map", "0:v:0",
         "-f", "null", "-progress", "pipe:2", "-"],
        limiter=limiter,
        logdir=logdir,
    )  # fmt: skip
    times = _OUT_TIME_RE.findall(err)
    if rc != 0 or not times:
        raise VideoError(f"ffmpeg cannot decode {path.name} (exit {rc}): {_tail(err, scrub)}")
    return _Info(int(times[-1]) / 1_000_000, video.group(1))


async def _run_ffmpeg(
    what: str,
    args: list[str],
    *,
    cwd: Path,
    limiter: trio.CapacityLimiter | None,
    scrub: Sequence[Path],
) -> None:
    """One ffmpeg step of make_clip (run in ``cwd``, overwriting outputs); VideoError if it
    fails, naming the step and quoting ffmpeg."""
    rc, err = await _exec([*_BASE_ARGS, "-y", *args], cwd=cwd, limiter=limiter)
    if rc != 0:
        raise VideoError(f"ffmpeg failed to {what} (exit {rc}): {_tail(err, [*scrub, cwd])}")


async def _exec(
    args: list[str],
    *,
    cwd: Path | None = None,
    logdir: Path | None = None,
    limiter: trio.CapacityLimiter | None,
) -> tuple[int, str]:
    """Run ffmpeg with ``args``; return its exit status and the tail of its stderr.

    stderr goes to an anonymous temp file (in ``logdir``, else ``cwd``, else the system's temp
    dir; make_clip keeps everything in its workdir) and only its last ``_KEEP_BYTES`` are read
    back: a corrupt input that makes ffmpeg log a line per packet cannot grow our memory.

    On cancellation the process is killed outright (SIGKILL, not trio's default SIGTERM, on
    which ffmpeg would first finish writing an output that is about to be deleted), waited for,
    and a plain ``trio.Cancelled`` propagates. The limiter is held while the process runs."""
    command = [find_ffmpeg(), *args]
    log = await trio.to_thread.run_sync(partial(tempfile.TemporaryFile, dir=logdir or cwd))
    try:
        async with limiter if limiter is not None else contextlib.nullcontext():
            try:
                done = await trio.run_process(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    check=False,
                    cwd=cwd,
                    deliver_cancel=_kill,
                )
            except OSError as exc:  # the binary cannot be started at all
                raise VideoError(f"cannot run ffmpeg: {exc.strerror or exc}") from exc
            except BaseExceptionGroup as group:
                # run_process waits in a nursery of its own, so a cancellation comes out as a
                # group of Cancelled (python-trio/trio#2923); our callers get a plain one.
                cancelled, rest = group.split(trio.Cancelled)
                if cancelled is None or rest is not None:
                    raise
                raise _first_leaf(cancelled) from None
        tail = await trio.to_thread.run_sync(_read_tail, log)
    finally:
        log.close()
    return done.returncode, tail.decode("utf-8", "replace")


async def _kill(process: trio.Process) -> None:
    process.kill()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _read_tail(file: IO[bytes]) -> bytes:
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - _KEEP_BYTES))
    return file.read()


def _tail(stderr: str, scrub: Sequence[Path]) -> str:
    """The last lines of ffmpeg's stderr, for a message: local paths cut to their file names."""
    for path in sorted({str(Path(p).absolute()) for p in scrub}, key=len, reverse=True):
        stderr = stderr.replace(path + os.sep, "").replace(path, Path(path).name)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:]) or "no message"


async def _has_imkh_header(path: Path) -> bool:
    try:
        async with await trio.open_file(path, "rb") as f:
            return await f.read(len(IMKH_MAGIC)) == IMKH_MAGIC
    except OSError as exc:
        raise VideoError(f"cannot read recording {Path(path).name}: {exc.strerror}") from exc


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise VideoError(f"{name} must be timezone-aware, got {value.isoformat()}")
