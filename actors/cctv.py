"""CCTV poller: cuts each guest's booth video from a Hikvision NVR (seed 003).

Owns: the temp dir ``TEMP_VIDEO_DIR`` (one sub-directory per request being processed, removed
afterwards whatever happened), an ffmpeg ``CapacityLimiter`` ("cctv-ffmpeg", 1), and the one
request it processes at a time (an NVR serves downloads one by one best, and one clip's temp
files must fit on the disk).

Every ``batch_interval`` seconds: derive the clip requests of ended booth sessions and mark the
requests whose flush delay has passed ready (:meth:`ClipStore.reconcile`); then, when
``auto_batch`` is on, claim up to ``batch_size`` ``READY_FOR_BATCH`` requests and process them.
Ids arriving on ``Wiring.clip_trigger`` (``POST /trigger``) are claimed and processed as they
come, auto batch or not.

One request: search the NVR for the recordings overlapping its range, check the free space
in the temp dir *before* downloading (their sizes are in the search answer), download them
(streamed to disk, sizes checked), remux, concatenate and cut with ffmpeg (stream copy, or a
re-encode with ``EXACT_CUT``), make a poster frame, upload both (files, not bytes: nothing
holds a whole video in memory), record the clip → ``CLIP_GENERATED``.

Errors: a wrong password, a refused request, no recording, not enough disk, or ffmpeg failing
end the request ``FAILED`` with the reason at once (trying again would fail the same way). The
NVR or the storage unreachable (transient) is tried ``attempts`` times with exponential back-off
and full jitter, then ``FAILED``. ``POST /trigger`` can send a failed request round again.

Shutdown and cancellation: the request in hand goes back to ``READY_FOR_BATCH`` (shielded, so
it happens even while being cancelled) and its temp files are removed; a request left
``PROCESSING`` by a crash is put back by :meth:`ClipStore.recover` when the poller starts.
"""

from __future__ import annotations

import logging
import random
import secrets
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import trio

from photobot.cctv.isapi import IsapiClient, IsapiError, NvrUnavailable
from photobot.cctv.store import Camera, ClipRequest, ClipStore
from photobot.cctv.video import ClipResult, Part, VideoError, make_clip
from photobot.concurrency import open_nursery, save_patiently
from photobot.errors import ConfigError, Conflict, NotFound, PhotobotError, Unavailable
from photobot.metrics import Metrics
from photobot.storage import Storage
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.cctv")


class ClipFailed(PhotobotError):
    """This request cannot succeed as it is (no recording, no disk space): fail it now."""

    code = "clip_failed"


@dataclass(frozen=True)
class CctvConfig:
    worker_id: str
    temp_dir: Path
    batch_interval: float = 60.0
    batch_size: int = 10
    auto_batch: bool = True
    exact_cut: bool = False
    #: Kept free in the temp dir on top of what a clip needs (raw + remux + clip about 3 times raw).
    min_free_bytes: int = 200 * 2**20
    attempts: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    nvr_timeout: float = 15.0
    #: How long a finished clip waits for the database to record it (giving up redoes the cut).
    result_patience: float = 120.0


class CctvPoller:
    def __init__(
        self, store: ClipStore, storage: Storage, config: CctvConfig, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.storage = storage
        self.config = config
        self.metrics = metrics
        self.ffmpeg = trio.CapacityLimiter(1)  # "cctv-ffmpeg": a cut is CPU-heavy
        self._one_at_a_time = trio.Lock()
        self._in_hand: set[int] = set()  # claimed by this poller and not finished yet
        #: Claims and the requeue of stranded requests, one at a time: the requeue must see
        #: every claim of this process in ``_in_hand``.
        self._claiming = trio.Lock()
        self.processed = 0  # requests brought to a final state by this process (for /health)

    def stats(self, triggers: trio.MemoryReceiveChannel[int]) -> dict[str, object]:
        """For ``/health`` (seed 003's worker health: auto batch, queue size)."""
        return {
            "autoBatch": self.config.auto_batch,
            "queueSize": triggers.statistics().current_buffer_used,
            "busy": self._one_at_a_time.locked(),
            "processed": self.processed,
        }

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, ctx: ChildContext, *, triggers: trio.MemoryReceiveChannel[int]) -> None:
        recovered = await self.store.recover(self.config.worker_id)
        if recovered:
            log.info("clip requests put back after a restart", extra={"count": recovered})
        await trio.to_thread.run_sync(self._sweep_temp)
        ctx.started()
        async with open_nursery() as nursery:
            nursery.start_soon(self._batch_loop)
            nursery.start_soon(self._trigger_loop, triggers)
            await ctx.stopping.wait()
            nursery.cancel_scope.cancel()

    async def _batch_loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Unavailable as exc:  # database down: next round
                log.warning("clip batch skipped", extra={"error": exc.message})
            await trio.sleep(self.config.batch_interval)

    async def _trigger_loop(self, triggers: trio.MemoryReceiveChannel[int]) -> None:
        async for request_id in triggers:
            try:
                await self.run_request(request_id)
            except Unavailable as exc:
                log.warning(
                    "triggered clip request not taken",
                    extra={"clip_request_id": request_id, "error": exc.message},
                )

    async def run_request(self, request_id: int) -> bool:
        """Claim one ready request and process it (a trigger); False when it was not ready or
        another box had it. Database unreachable → :class:`Unavailable`."""
        try:
            # In hand as it is claimed: a batch round's requeue must not take it back meanwhile.
            async with self._claiming:
                self._in_hand.add(request_id)
                request = await self.store.claim(self.config.worker_id, request_id)
            if request is None:
                return False
            await self.process(request)
            return True
        finally:
            self._in_hand.discard(request_id)

    async def tick(self) -> int:
        """One batch round; returns how many requests it processed."""
        worker = self.config.worker_id
        await self.store.reconcile()
        async with self._claiming:
            # A request of ours left PROCESSING without being in hand (its FAILED could not be
            # written while the database was away) goes back in the queue.
            await self.store.requeue_mine(worker, holding=sorted(self._in_hand))
            if not self.config.auto_batch:
                return 0
            batch = await self.store.claim_batch(worker, self.config.batch_size)
            self._in_hand.update(r.id for r in batch)
        done = 0
        try:
            for request in batch:
                await self.process(request)
                done += 1
        finally:
            rest = [r.id for r in batch[done:]]
            if rest:  # cancelled mid-batch: the ones not started go back now, not at restart
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    for request_id in rest:
                        await self.store.release(request_id, worker)
            self._in_hand.difference_update(r.id for r in batch)
        return done

    # -- one request -------------------------------------------------------------------------

    async def process(self, request: ClipRequest) -> None:
        """Bring a claimed request to ``CLIP_GENERATED`` or ``FAILED`` (or, when cancelled,
        back to ``READY_FOR_BATCH``). Never raises for the request's own failures."""
        worker = self.config.worker_id
        workdir = self.config.temp_dir / f"clip-{request.id}-{secrets.token_hex(4)}"
        extra = {"clip_request_id": request.id}
        self._in_hand.add(request.id)
        started = trio.current_time()
        try:
            async with self._one_at_a_time:  # inside the try: a cancel while waiting releases too
                started = trio.current_time()
                await trio.to_thread.run_sync(lambda: workdir.mkdir(parents=True))
                await self._with_retries(request, workdir)
        except trio.Cancelled:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.store.release(request.id, worker)
            raise
        except Exception as exc:
            # Whatever went wrong, the request ends FAILED with a reason: one bad request must
            # not crash the actor (a crash loop would take the whole booth down).
            if isinstance(exc, PhotobotError) and isinstance(exc, _EXPECTED):
                reason = _reason(exc)
                log.warning("clip request failed", extra={**extra, "reason": reason})
            else:
                reason = f"internal: {type(exc).__name__}"
                log.exception("clip request failed unexpectedly", extra=extra)
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.store.fail(request.id, worker, reason)
            self._count("failed", started)
        else:
            self._count("generated", started)
            log.info(
                "clip generated",
                extra={**extra, "seconds": round(trio.current_time() - started, 2)},
            )
        finally:
            self._in_hand.discard(request.id)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, workdir, True)

    def _count(self, outcome: str, started: float) -> None:
        self.processed += 1
        if self.metrics is not None:
            self.metrics.clips.labels(outcome).inc()
            self.metrics.clip_duration.observe(trio.current_time() - started)

    async def _with_retries(self, request: ClipRequest, workdir: Path) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._make(request, workdir)
                return
            except (NvrUnavailable, Unavailable) as exc:
                if attempt >= self.config.attempts:
                    raise
                delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(delay / 2, delay)  # jitter: boxes retrying do not align
                log.info(
                    "clip attempt failed, retrying",
                    extra={"clip_request_id": request.id, "attempt": attempt,
                           "delay": round(delay, 2), "error": _reason(exc)},
                )  # fmt: skip
                await trio.to_thread.run_sync(_empty_dir, workdir)
                await trio.sleep(delay)

    async def _make(self, request: ClipRequest, workdir: Path) -> None:
        camera = await self.store.camera(request.camera_id)
        parts = await self._download(camera, request, workdir)
        result = await make_clip(
            parts, request.start_time, request.end_time, workdir,
            exact=self.config.exact_cut, limiter=self.ffmpeg,
        )  # fmt: skip
        day = request.start_time.strftime("%Y-%m-%d")
        stem = f"clips/{camera.booth_id}/{day}/{request.id}-{secrets.token_hex(4)}"
        uploaded: list[str] = []
        try:
            for key, path, content_type in (
                (f"{stem}.mp4", result.path, "video/mp4"),
                (f"{stem}.jpg", result.poster_path, "image/jpeg"),
            ):
                await self.storage.put_file(key, path, content_type)
                uploaded.append(key)
            await self._record(request.id, stem, result)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._discard(request.id, uploaded)
            raise

    async def _record(self, request_id: int, stem: str, result: ClipResult) -> None:
        """Record the uploaded clip, waiting out a database hiccup."""
        try:
            await save_patiently(
                lambda: self.store.complete(
                    request_id, self.config.worker_id, storage_key=f"{stem}.mp4",
                    poster_key=f"{stem}.jpg", duration=result.duration_seconds,
                    size=result.size_bytes,
                ),
                patience=self.config.result_patience, log=log,
                extra={"clip_request_id": request_id},
            )  # fmt: skip
        except Conflict:
            # An earlier try may have committed without our hearing: then the clip is ours.
            clip = await self.store.clip_of(request_id)
            if clip is None or clip.storage_key != f"{stem}.mp4":
                raise

    async def _discard(self, request_id: int, keys: list[str]) -> None:
        """Remove the objects of a clip that did not get recorded (a retry uploads anew).

        When the database cannot say whether the clip was recorded (its commit's answer was
        lost), they are kept: an orphan object costs disk, a missing one costs a guest a video.
        """
        if not keys:
            return
        try:
            clip = await self.store.clip_of(request_id)
        except PhotobotError as exc:
            log.warning(
                "clip upload kept: cannot tell if it was recorded",
                extra={"clip_request_id": request_id, "keys": keys, "error": exc.message},
            )
            return
        if clip is not None and clip.storage_key in keys:
            return
        for key in keys:
            try:
                await self.storage.delete(key)
            except PhotobotError as exc:
                log.warning(
                    "orphan clip object not removed",
                    extra={"clip_request_id": request_id, "key": key, "error": exc.message},
                )

    async def _download(self, camera: Camera, request: ClipRequest, workdir: Path) -> list[Part]:
        offset = (
            None if camera.utc_offset_minutes is None
            else timedelta(minutes=camera.utc_offset_minutes)
        )  # fmt: skip
        client = IsapiClient(
            camera.base_url, camera.username, self.store.password(camera),
            time_mode=camera.time_mode, utc_offset=offset, timeout=self.config.nvr_timeout,
        )  # fmt: skip
        async with client as nvr:
            segments = await nvr.search(camera.track_id, request.start_time, request.end_time)
            if not segments:
                raise ClipFailed(
                    f"the NVR has no recording on track {camera.track_id} between "
                    f"{request.start_time.isoformat()} and {request.end_time.isoformat()}",
                    code="no_recording",
                )
            await trio.to_thread.run_sync(self._check_disk, sum(s.size or 0 for s in segments))
            parts = []
            for n, segment in enumerate(segments):
                path = workdir / f"part-{n:03d}.raw"
                await nvr.download(segment, path)
                parts.append(Part(path=path, start=segment.start, end=segment.end))
            return parts

    def _check_disk(self, raw_bytes: int) -> None:
        need = 3 * raw_bytes + self.config.min_free_bytes
        free = shutil.disk_usage(self.config.temp_dir).free
        if free < need:
            raise ClipFailed(
                f"not enough disk space in the temp dir: {free // 2**20} MB free, "
                f"{need // 2**20} MB needed",
                code="disk_full",
            )

    def _sweep_temp(self) -> None:
        """Remove what a crashed run left in the temp dir (only our own ``clip-*`` dirs)."""
        self.config.temp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.config.temp_dir.glob("clip-*"):
            shutil.rmtree(leftover, ignore_errors=True)


#: Failures a request can meet (the NVR, ffmpeg, the disk, the store): FAILED with their reason.
_EXPECTED = (IsapiError, VideoError, ClipFailed, NotFound, Conflict, ConfigError, Unavailable)


def _empty_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _reason(exc: PhotobotError) -> str:
    return f"{exc.code}: {exc.message}"
