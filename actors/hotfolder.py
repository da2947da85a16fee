"""Hotfolder watcher: turns each complete image a tethered camera writes into exactly one job.

Owns ``HOTFOLDER_PATH`` for ``BOOTH_ID`` and its subfolders ``processed/``, ``orphan/`` and
``invalid/`` (created if missing, never watched). Only files directly in the folder are
candidates; temporary names cameras write first (dotfiles, ``*.tmp``, ``*~``, ``*.part``) are
ignored until renamed.

Finding files. watchfiles reports a file while it is still being written and never reports its
close, and may send no event after the last write; so events only *nominate* candidates, and a
timer of our own (every ``tick``) decides when each one is complete. A full listing every
``rescan_interval`` catches anything the watcher missed, and the first listing at start-up
picks up files left from before.

Complete means: the bytes end the way a whole JPEG/PNG/WebP ends (EOI marker, IEND chunk, RIFF
length) and size and mtime are unchanged ``whole_quiet`` later — the common case, tens of
milliseconds after the last byte (a watch event triggers a look at once); or, for anything
else, size and mtime unchanged for ``FILE_STABILITY_DELAY_MS``. An image still truncated after
``truncated_grace`` goes to ``invalid/``.

In gallery mode (roaming photographer) a file becomes a photo of the event's gallery directly,
stored under a key derived from its content and deduplicated by its SHA-256, instead of a job.

Handling one file (every step is safe to repeat: a crash between any two of them makes the next
run redo the file and reach the same end):

1. type by content (never by extension), header check (bombs, garbage) → ``invalid/`` with a
   ``<name>.reason.txt`` beside it;
2. the booth's active session (Redis; unreachable → the file waits and is retried with back-off);
   none → ``orphan/`` — unless a hot-folder job of this booth already has these exact bytes
   (the previous run died after making it), then ``processed/``;
3. SHA-256; the seed's Redis key ``idemp:hotfolder:{sessionId}:{hash16}`` (SET NX, 1 h) names the
   job id, and the job's ``idempotency_key`` makes PostgreSQL refuse a second job for the same
   photo even when Redis forgot the key;
4. store the original (storage errors: the file stays and is retried with back-off);
5. create the job through the dispatcher (source ``hotfolder``) and refresh the active session;
6. move the file to ``processed/`` without ever overwriting (cameras reuse names).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import trio
import watchfiles

from actors.dispatcher import Dispatcher
from actors.registry import ActiveSession, SessionRegistry
from photobot import jobs
from photobot.cache import Cache
from photobot.db import Database
from photobot.errors import CacheError, InvalidInput, PhotobotError, StorageError
from photobot.imaging import ImageInfo, probe_image
from photobot.metrics import Metrics
from photobot.photos import NewPhoto
from photobot.publishing import Publisher
from photobot.storage import Storage
from photobot.storage.keys import job_input_key, photo_key
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.hotfolder")

SUBFOLDERS = ("processed", "orphan", "invalid")
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", "~")
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: Idempotency key lifetime in Redis (seed 000): 1 hour.
IDEMPOTENCY_TTL = 3600
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_PIXELS = 60_000_000


@dataclass(frozen=True)
class HotfolderPaths:
    root: Path
    processed: Path
    orphan: Path
    invalid: Path

    @classmethod
    def under(
        cls,
        root: Path,
        *,
        processed: Path | None = None,
        orphan: Path | None = None,
        invalid: Path | None = None,
    ) -> HotfolderPaths:
        return cls(
            root,
            processed or root / "processed",
            orphan or root / "orphan",
            invalid or root / "invalid",
        )


def is_candidate_name(name: str) -> bool:
    return not (name.startswith(".") or name.lower().endswith(_TEMP_SUFFIXES))


def ends_whole(head: bytes, tail: bytes, size: int) -> bool:
    """Do a file's first and last bytes close an image (JPEG EOI, PNG IEND, WebP RIFF length)?

    Cheap; says nothing about the middle of the file: the content checks that follow decide
    whether it is really a usable image.
    """
    if size < 16:
        return False
    if head.startswith(b"\xff\xd8\xff"):
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")  # some cameras pad after EOI
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail.endswith(_PNG_END)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 == size
    return False


def _looks_whole(path: Path, size: int) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
        f.seek(max(0, size - 4096))
        return ends_whole(head, f.read(), size)


def _is_image_start(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(12)
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name-1``, ``name-2``… if taken: a move must never overwrite."""
    target = folder / name
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    n = 0
    while target.exists() or target.with_name(target.name + ".reason.txt").exists():
        n += 1
        target = folder / (f"{stem}-{n}.{suffix}" if dot else f"{stem}-{n}")
    return target


@dataclass
class _Candidate:
    path: Path
    size: int = -1
    mtime_ns: int = -1
    changed_at: float = 0.0  # trio clock: when size/mtime last changed
    whole_since: float | None = None
    retry_at: float = 0.0
    failures: int = 0


@dataclass
class HotfolderWatcher:
    paths: HotfolderPaths
    booth_id: str
    registry: SessionRegistry
    dispatcher: Dispatcher
    storage: Storage
    cache: Cache
    db: Database
    metrics: Metrics
    publisher: Publisher
    stability_delay: float = 2.0
    tick: float = 0.05
    #: How long a file that already ends like a whole image must stay unchanged.
    whole_quiet: float = 0.02
    rescan_interval: float = 1.0
    truncated_grace: float = 10.0
    retry_base: float = 0.5
    retry_max: float = 10.0
    workers: int = 4
    _candidates: dict[Path, _Candidate] = field(default_factory=dict)
    _poke: trio.Event = field(default_factory=trio.Event)
    _failures: dict[Path, int] = field(default_factory=dict)
    _busy: set[Path] = field(default_factory=set)
    #: Files waiting on a dependency (Redis, storage): visible in /health through the actor.
    waiting: dict[str, str] = field(default_factory=dict)

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, ctx: ChildContext) -> None:
        await trio.to_thread.run_sync(self._make_folders)
        ready_send, ready_receive = trio.open_memory_channel[Path](1000)
        stop_watch = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, stop_watch)
            nursery.start_soon(self._rescan_forever)
            nursery.start_soon(self._decide_forever, ready_send)
            for _ in range(self.workers):
                nursery.start_soon(self._work, ready_receive.clone())
            ctx.started()
            log.info(
                "watching hot folder", extra={"path": str(self.paths.root), "booth": self.booth_id}
            )
            await ctx.stopping.wait()
            # Files in hand finish their current step quickly; the rest wait for the next run.
            stop_watch.set()
            nursery.cancel_scope.cancel()

    def _make_folders(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.paths.processed, self.paths.orphan, self.paths.invalid):
            folder.mkdir(parents=True, exist_ok=True)

    async def _watch(self, stop: trio.Event) -> None:
        def wanted(change: watchfiles.Change, path: str) -> bool:
            p = Path(path)
            return (
                change != watchfiles.Change.deleted
                and p.parent == self.paths.root
                and is_candidate_name(p.name)
            )

        async for changes in watchfiles.awatch(
            self.paths.root, watch_filter=wanted, recursive=False, stop_event=stop,
            rust_timeout=500, step=20, debounce=200,
        ):  # fmt: skip
            now = trio.current_time()
            for _, path in changes:
                self._nominate(Path(path), now, from_event=True)

    async def _rescan_forever(self) -> None:
        while True:
            names = await trio.to_thread.run_sync(self._list)
            now = trio.current_time()
            for path in names:
                self._nominate(path, now)
            await trio.sleep(self.rescan_interval)

    def _list(self) -> list[Path]:
        try:
            with os.scandir(self.paths.root) as it:
                return [
                    Path(e.path)
                    for e in it
                    if is_candidate_name(e.name) and e.is_file(follow_symlinks=False)
                ]
        except FileNotFoundError:
            self._make_folders()
            return []

    def _nominate(self, path: Path, now: float, *, from_event: bool = False) -> None:
        if path not in self._candidates and path not in self._busy:
            self._candidates[path] = _Candidate(path, changed_at=now)
        if from_event:
            self._poke.set()  # look now: the event may be the file's last write

    async def _decide_forever(self, ready: trio.MemorySendChannel[Path]) -> None:
        while True:
            # A file that looks whole is checked again after `whole_quiet`; otherwise the next
            # tick, or at once when a watch event comes in.
            waiting_whole = any(c.whole_since is not None for c in self._candidates.values())
            with trio.move_on_after(self.whole_quiet if waiting_whole else self.tick):
                await self._poke.wait()
            self._poke = trio.Event()
            if self._candidates:
                now = trio.current_time()
                for path in await trio.to_thread.run_sync(self._complete, now):
                    self._candidates.pop(path, None)
                    self._busy.add(path)
                    await ready.send(path)

    def _complete(self, now: float) -> list[Path]:
        """Stat every candidate once (in a thread); return the ones that are complete."""
        done = []
        for path, c in list(self._candidates.items()):
            if now < c.retry_at:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                self._candidates.pop(path, None)  # renamed or removed before it was complete
                continue
            if (st.st_size, st.st_mtime_ns) != (c.size, c.mtime_ns):
                c.size, c.mtime_ns, c.changed_at = st.st_size, st.st_mtime_ns, now
                c.whole_since = None
                if _looks_whole(path, st.st_size):
                    c.whole_since = now
                continue
            quiet = now - c.changed_at
            if c.retry_at or (c.whole_since is not None and quiet >= self.whole_quiet):
                done.append(path)  # whole, and unchanged a moment later (or a retry)
            elif quiet >= self.stability_delay and c.size > 0:
                # Not a whole image yet. An image being written slowly may pause: give it
                # longer. Anything else: stable is all there is to wait for.
                if not _is_image_start(path) or quiet >= self.truncated_grace:
                    done.append(path)
        return done

    async def _work(self, ready: trio.MemoryReceiveChannel[Path]) -> None:
        async for path in ready:
            try:
                outcome = await self.handle(path)
            except (CacheError, StorageError) as exc:
                self._defer(path, exc)
                continue
            except PhotobotError as exc:
                # The database is down or refused: same treatment, the file waits.
                self._defer(path, exc)
                continue
            finally:
                self._busy.discard(path)
            self.waiting.pop(path.name, None)
            self._failures.pop(path, None)
            if outcome is not None:
                self.metrics.hotfolder_files.labels(outcome).inc()

    def _defer(self, path: Path, exc: PhotobotError) -> None:
        previous = self._candidates.get(path) or _Candidate(path)
        # The candidate was handed over (and dropped) before handling: the count lives apart.
        failures = self._failures[path] = self._failures.get(path, 0) + 1
        delay = min(self.retry_max, self.retry_base * 2 ** (failures - 1))
        now = trio.current_time()
        self._candidates[path] = _Candidate(
            path, previous.size, previous.mtime_ns, now, None, now + delay, failures
        )
        self.waiting[path.name] = exc.message
        self.metrics.hotfolder_files.labels("deferred").inc()
        log.warning(
            "hot folder file waits",
            extra={"file": path.name, "error": exc.message, "retryInSeconds": round(delay, 2)},
        )

    # -- one file ----------------------------------------------------------------------------

    async def handle(self, path: Path) -> str | None:
        """Take one complete file to its end state; returns the outcome, None if it vanished."""
        try:
            data = await trio.to_thread.run_sync(_read_bounded, path)
        except FileNotFoundError:
            return None
        except _TooLarge:
            await self._invalid(path, f"file is larger than {MAX_FILE_BYTES // 2**20} MB")
            return "invalid"
        try:
            info, digest = await trio.to_thread.run_sync(_inspect, data)
        except InvalidInput as exc:
            await self._invalid(path, f"{exc.code}: {exc.message}")
            return "invalid"
        if not ends_whole(data[:12], data[-4096:], len(data)):
            await self._invalid(path, "image_truncated: the file ends before the image does")
            return "invalid"

        active = await self.registry.active_session(self.booth_id)
        if active is None:
            if await self._already_made(digest):
                await self._move(path, self.paths.processed)
                return "duplicate"
            await self._move(path, self.paths.orphan)
            log.info("no active session: file moved to orphan", extra={"file": path.name})
            return "orphan"

        if active.mode == "gallery":
            return await self._publish(path, active, data, digest, info.content_type)

        owner = active.session_id or f"gallery:{active.event_id}"
        redis_key = f"idemp:hotfolder:{owner}:{digest[:16]}"
        job_id = jobs.new_job_id()
        if not await self.cache.set(redis_key, job_id, ex=IDEMPOTENCY_TTL, nx=True):
            known = await self.cache.get(redis_key)
            job_id = known.decode() if known else job_id  # same id again: a retry stays one job

        ext = _EXTENSIONS[info.content_type]
        key = job_input_key(active.event_id, job_id, ext, date.today())
        await self.storage.put(key, data, info.content_type)
        new = self._new_job(active, job_id, key, digest, info.content_type, len(data))
        job, created = await self.dispatcher.submit(new)
        await self.registry.refresh_active(self.booth_id)
        await self._move(path, self.paths.processed)
        if created:
            log.info("Job enqueued from hotfolder", extra={"jobId": job.id, "file": path.name})
            return "processed"
        log.info("same photo again: no second job", extra={"jobId": job.id, "file": path.name})
        return "duplicate"

    async def _publish(
        self, path: Path, active: ActiveSession, data: bytes, digest: str, content_type: str
    ) -> str:
        """Roaming photographer: the file goes straight to the event's gallery, no AI job."""
        key = photo_key(active.event_id, digest, _EXTENSIONS[content_type], date.today())
        await self.storage.put(key, data, content_type)  # content-addressed: a redo rewrites it
        photo, created = await self.publisher.publish(
            NewPhoto(
                event_id=active.event_id,
                source="hotfolder",
                original_key=key,
                content_type=content_type,
                size_bytes=len(data),
                sha256=digest,
                uploaded_by=active.operator_id,
            )
        )
        await self.registry.refresh_active(self.booth_id)
        await self._move(path, self.paths.processed)
        log.info("photo published from hotfolder", extra={"photoId": photo.id, "file": path.name})
        return "published" if created else "duplicate"

    def _new_job(
        self,
        active: ActiveSession,
        job_id: str,
        key: str,
        digest: str,
        content_type: str,
        size: int,
    ) -> jobs.NewJob:
        owner = active.session_id or f"gallery:{active.event_id}"
        return jobs.NewJob(
            id=job_id,
            event_id=active.event_id,
            session_id=active.session_id,
            booth_id=self.booth_id,
            operator_id=active.operator_id,
            source="hotfolder",
            style_id=active.style_id,
            guest_name=active.name,
            guest_whatsapp=active.whatsapp,
            input_key=key,
            input_sha256=digest,
            input_type=content_type,
            input_bytes=size,
            # PostgreSQL's guarantee, independent of Redis: one job per photo per session.
            idempotency_key=f"hotfolder:{owner}:{digest}",
        )

    async def _already_made(self, digest: str) -> bool:
        """Did a previous run already turn these bytes into a job (this booth) or a photo?"""
        return bool(
            await self.db.fetchval(
                "select exists (select 1 from jobs where source = 'hotfolder' and booth_id = $1"
                " and input_sha256 = $2)"
                " or exists (select 1 from photos where source = 'hotfolder' and sha256 = $2)",
                self.booth_id,
                digest,
            )
        )

    async def _move(self, path: Path, folder: Path) -> Path:
        def move() -> Path:
            target = free_name(folder, path.name)
            os.rename(path, target)
            return target

        return await trio.to_thread.run_sync(move)

    async def _invalid(self, path: Path, reason: str) -> None:
        def move() -> None:
            target = free_name(self.paths.invalid, path.name)
            # The reason first: if we die between the two, the file is still in the hot
            # folder and the next run writes it again beside the file's final name.
            target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
            os.rename(path, target)

        await trio.to_thread.run_sync(move)
        log.warning("invalid file", extra={"file": path.name, "reason": reason})


def _inspect(data: bytes) -> tuple[ImageInfo, str]:
    """Header check and hash together: one thread hop, nothing heavy on the event loop."""
    return probe_image(data, max_pixels=MAX_PIXELS), hashlib.sha256(data).hexdigest()


class _TooLarge(Exception):
    pass


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise _TooLarge
    return data


__all__ = [
    "HotfolderPaths",
    "HotfolderWatcher",
    "ends_whole",
    "free_name",
    "is_candidate_name",
]
