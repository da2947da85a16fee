"""Image optimizer (built in): turns PENDING image jobs into WebP derivatives.

Owns: ``concurrency`` worker tasks (``OPTIMIZER_CONCURRENCY``, default 2 = the box's cores), a
``CapacityLimiter`` named ``optimizer`` for the Pillow threads, and the set of image job ids in
hand in this process. Reads image job ids from ``Wiring.optimize``; ids it already holds are
ignored (the sweep and the channel may both bring one).

One image job: claim it (PENDING → PROCESSING, a conditional update under this booth's name),
download the original, :func:`photobot.optimizer.make_derivatives` in a thread behind the
limiter (Pillow releases the GIL, so two threads use both cores and the Trio loop stays
responsive), upload the four WebPs, then
:meth:`ImageJobs.complete` (which sets the photo's derivatives and announces ``photo:updated``).
Failures:

- a bad image (not an image, decompression bomb, truncated, unreadable) or a missing original →
  FAILED with a short reason (``"image_truncated: image data is truncated"``); no retry, the
  gallery keeps showing the original;
- a storage error → back to PENDING with exponential back-off (``next_attempt_at``), FAILED
  after ``max_attempts`` claims;
- anything else raised by the image code → FAILED (``internal_error``), so one poisonous file
  can never crash-loop the actor;
- a database error → the job stays PROCESSING under our name and the sweep takes it back.

Sweep: at start and every ``sweep_interval`` (10 s) it looks for PENDING jobs that are due and
PROCESSING jobs this booth claimed but does not hold (left by a restart, a crash or a database
blip), so a lost channel message or a restart loses nothing.

External mode (``IMAGE_WORKERS=external``): it takes no image work. Its only duty is to push
again the seed envelopes that never reached Redis (PENDING jobs with no ``enqueued_at``).

Shutdown: ``ctx.stopping`` stops intake and the sweep; workers finish the job in hand within the
grace period. A job cut off by the hard cancel stays PROCESSING under this booth's name and is
taken back by the next start's sweep.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from photobot.errors import InvalidInput, PhotobotError, StorageError
from photobot.image_jobs import ImageJob, ImageJobs, Mode, derivative_keys
from photobot.imaging import InvalidImage
from photobot.optimizer import MAX_PIXELS, Derivatives, Rendition, make_derivatives
from photobot.storage import ObjectNotFound, ObjectTooLarge, Storage
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.optimizer")


@dataclass(frozen=True)
class OptimizerConfig:
    concurrency: int = 2
    sweep_interval: float = 10.0
    sweep_batch: int = 200
    #: Claims before a job that keeps hitting storage errors is FAILED.
    max_attempts: int = 6
    backoff_base: float = 5.0
    backoff_max: float = 300.0
    jitter: float = 0.2
    #: Largest original downloaded (a 24 MP JPEG is 8-15 MB; the upload API caps at 40 MB).
    max_source_bytes: int = 64 * 1024 * 1024
    max_pixels: int = MAX_PIXELS


class ImageOptimizer:
    """The built-in optimizer actor; see the module docstring."""

    def __init__(
        self,
        *,
        image_jobs: ImageJobs,
        storage: Storage,
        worker_id: str,
        mode: Mode = "builtin",
        config: OptimizerConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.image_jobs = image_jobs
        self.storage = storage
        self.worker_id = worker_id
        self.mode = mode
        self.rng = rng or random.Random()
        self.in_hand: set[str] = set()
        self._wake = trio.Event()
        self.reconfigure(config or OptimizerConfig())

    def reconfigure(self, config: OptimizerConfig) -> None:
        """Set timings and concurrency (a fresh limiter; the number of worker tasks changes at
        the next start) and sweep at once; for start-up and tests."""
        self.config = config
        self.limiter = trio.CapacityLimiter(config.concurrency)
        self.limiter_name = "optimizer"
        self.sweep_now()

    def sweep_now(self) -> None:
        """Run the next sweep now instead of at the end of the current interval."""
        self._wake.set()

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, ctx: ChildContext, inbox: trio.MemoryReceiveChannel[str]) -> None:
        if self.mode == "external":
            await self._run_external(ctx)
            return
        # Rendezvous channel: an id waits in the inbox (or the database), never in a buffer here.
        work_send, work_recv = trio.open_memory_channel[str](0)
        async with trio.open_nursery() as workers:
            async with work_recv:
                for _ in range(self.config.concurrency):
                    workers.start_soon(self._worker, work_recv.clone())
            async with work_send, trio.open_nursery() as feeders:
                feeders.start_soon(self._intake, inbox, work_send.clone())
                feeders.start_soon(self._sweep, work_send.clone())
                ctx.started()
                await ctx.stopping.wait()
                feeders.cancel_scope.cancel()
            # Intake stopped: workers finish the job in hand, then see the channel closed.

    async def _intake(
        self, inbox: trio.MemoryReceiveChannel[str], work: trio.MemorySendChannel[str]
    ) -> None:
        async with work:
            # Not `async with inbox`: the channel outlives this actor's restarts.
            async for image_job_id in inbox:
                await self._offer(image_job_id, work)

    async def _sweep(self, work: trio.MemorySendChannel[str]) -> None:
        async with work:
            while True:
                try:
                    ids = await self.image_jobs.runnable_ids(
                        self.worker_id, self.config.sweep_batch
                    )
                except PhotobotError as exc:
                    log.warning("image job sweep failed", extra={"error": exc.message})
                    ids = []
                for image_job_id in ids:
                    await self._offer(image_job_id, work)
                await self._pause()

    async def _pause(self) -> None:
        self._wake = trio.Event()
        with trio.move_on_after(self.config.sweep_interval):
            await self._wake.wait()

    async def _offer(self, image_job_id: str, work: trio.MemorySendChannel[str]) -> None:
        if image_job_id in self.in_hand:
            return
        self.in_hand.add(image_job_id)
        try:
            await work.send(image_job_id)
        except BaseException:
            self.in_hand.discard(image_job_id)
            raise

    async def _worker(self, work: trio.MemoryReceiveChannel[str]) -> None:
        async with work:
            async for image_job_id in work:
                try:
                    await self.process(image_job_id)
                except PhotobotError as exc:
                    # The database failed around the job: it stays PROCESSING under our name
                    # (or PENDING) and the sweep brings it back.
                    log.warning(
                        "image job deferred",
                        extra={"imageJobId": image_job_id, "error": exc.message},
                    )
                finally:
                    self.in_hand.discard(image_job_id)

    async def _run_external(self, ctx: ChildContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._repush)
            ctx.started()
            await ctx.stopping.wait()
            nursery.cancel_scope.cancel()

    async def _repush(self) -> None:
        while True:
            try:
                for image_job_id in await self.image_jobs.unpushed_ids(self.config.sweep_batch):
                    if not await self.image_jobs.push(image_job_id):
                        break  # Redis is still down; next round
            except PhotobotError as exc:
                log.warning("image job re-push failed", extra={"error": exc.message})
            await self._pause()

    # -- one image job -----------------------------------------------------------------------

    async def process(self, image_job_id: str) -> ImageJob | None:
        """Run one image job to COMPLETED, FAILED or back to PENDING (storage trouble).

        Returns the job as it ended here (``None`` if it was not ours to run or vanished).
        """
        job = await self.image_jobs.claim(image_job_id, self.worker_id)
        if job is None:
            return None
        log.info("image job started", extra={"imageJobId": job.id, "attempt": job.attempts})
        try:
            data = await self.storage.get(
                job.source_image_key, max_bytes=self.config.max_source_bytes
            )
        except ObjectNotFound:
            return await self._fail(job, f"source image not found: {job.source_image_key}")
        except ObjectTooLarge:
            return await self._fail(
                job, f"source image is larger than {self.config.max_source_bytes} bytes"
            )
        except StorageError as exc:
            return await self._defer(job, exc)
        except InvalidInput as exc:  # e.g. a source key this storage refuses
            return await self._fail(job, f"{exc.code}: {exc.message}")

        try:
            made = await trio.to_thread.run_sync(self._render, data, limiter=self.limiter)
        except InvalidImage as exc:
            return await self._fail(job, f"{exc.code}: {exc.message}")
        except Exception as exc:  # a bug or a hostile file the decoders did not expect
            log.error("image job crashed in the image code", exc_info=exc)
            return await self._fail(job, f"internal_error: {type(exc).__name__}")
        del data

        keys = derivative_keys(job.source_image_key, job.id)
        failures: list[StorageError] = []

        async def upload(rendition: Rendition) -> None:
            try:
                await self.storage.put(keys[rendition.name], rendition.data, rendition.content_type)
            except StorageError as exc:
                failures.append(exc)

        async with trio.open_nursery() as uploads:  # the four puts at once
            for rendition in made.renditions():
                uploads.start_soon(upload, rendition)
        if failures:
            return await self._defer(job, failures[0])

        with trio.CancelScope(shield=True):  # uploaded: record it even if we are being stopped
            done = await self.image_jobs.complete(
                job.id,
                optimized_key=keys["optimized"],
                large_key=keys["large"],
                medium_key=keys["medium"],
                small_key=keys["small"],
                width=made.source_width,
                height=made.source_height,
                worker=self.worker_id,
            )
            if done is None:
                # Deleted (or taken over) while we worked: what we uploaded is nobody's.
                await self._remove(keys.values(), job.id)
        return done

    def _render(self, data: bytes) -> Derivatives:
        return make_derivatives(data, max_pixels=self.config.max_pixels)

    async def _fail(self, job: ImageJob, reason: str) -> ImageJob | None:
        with trio.CancelScope(shield=True):
            return await self.image_jobs.fail(job.id, reason, worker=self.worker_id)

    async def _defer(self, job: ImageJob, exc: StorageError) -> ImageJob | None:
        reason = f"{exc.code}: {exc.message}"
        if job.attempts >= self.config.max_attempts:
            return await self._fail(job, f"{reason} (gave up after {job.attempts} attempts)")
        delay = self._backoff(job.attempts)
        log.warning(
            "image job will retry",
            extra={"imageJobId": job.id, "error": reason, "delay": round(delay, 1)},
        )
        with trio.CancelScope(shield=True):
            return await self.image_jobs.defer(job.id, self.worker_id, reason, delay)

    def _backoff(self, attempt_no: int) -> float:
        c = self.config
        delay = min(c.backoff_max, c.backoff_base * 2 ** max(attempt_no - 1, 0))
        return delay * self.rng.uniform(1 - c.jitter, 1 + c.jitter)

    async def _remove(self, keys: Iterable[str], image_job_id: str) -> None:
        for key in keys:
            try:
                await self.storage.delete(key)
            except StorageError as exc:
                log.warning(
                    "orphan derivative left in storage",
                    extra={"imageJobId": image_job_id, "key": key, "error": exc.message},
                )


async def run(
    ctx: ChildContext, optimizer: ImageOptimizer, inbox: trio.MemoryReceiveChannel[str]
) -> None:
    await optimizer.run(ctx, inbox)


__all__ = ["ImageOptimizer", "OptimizerConfig", "run"]
