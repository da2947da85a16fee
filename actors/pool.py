"""AI worker pool: runs each queued job through a provider, stage by stage, until a final state.

Owns: the providers, a ``CapacityLimiter`` per provider (``WORKER_CONCURRENCY_<NAME>``), a
:class:`~photobot.breaker.CircuitBreaker` per provider, and the set of jobs in flight in this
process. Reads job ids from ``Wiring.work``; duplicates (the dispatcher's sweep re-sends queued
jobs) are ignored while the job is in flight here.

One job: the provider chain is the job's own provider if one was asked for, else the event's
fallback chain, else ``AI_PROVIDER_DEFAULT``. Each provider gets up to ``max_attempts``
attempts; a transient error waits an exponential back-off with jitter and tries again, an open
breaker or exhausted attempts move on to the next provider; a fatal error fails the job at once.
Each attempt is claimed in PostgreSQL first (a conditional update) and recorded in
``job_attempts``; so is every stage.

Cancel: a cancel request (flag in the database, polled with the progress flush every
``flush_interval``) interrupts the running stage and ends the job ``canceled``.

Shutdown: ``ctx.stopping`` stops intake; jobs in flight get the grace period to finish. A job
cut off by the hard cancel stays ``running`` under this booth's name and is requeued by
:func:`photobot.jobs.requeue_mine` when the pool starts again, here or after a restart; if this
booth never comes back, another box takes it over once its lease has run out.

Leases: every claim is leased for ``lease`` seconds (``JOB_LEASE_SECONDS``); every third of
that, one query renews the leases of all the jobs in hand. A job whose lease was lost (this box
could not reach the database for a whole lease, and another box took the job over) has its
attempt stopped before the upload stage, and its result dropped at the latest when it is
saved: the completion names the claim, and a lost claim's completion is refused.
"""

from __future__ import annotations

import logging
import mimetypes
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TypeVar

import trio

from photobot import jobs
from photobot.breaker import CircuitBreaker
from photobot.bus import Bus, JobEvent
from photobot.concurrency import open_nursery, save_patiently
from photobot.db import Database
from photobot.errors import PhotobotError, Unavailable
from photobot.events import Event, resolve_event
from photobot.metrics import Metrics
from photobot.providers import (
    FatalProviderError,
    Provider,
    ProviderInput,
    ProviderOutput,
    TransientProviderError,
)
from photobot.publishing import Publisher
from photobot.storage import Storage
from photobot.storage.keys import job_output_key
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.pool")

T = TypeVar("T")

#: A running job of ours that no task holds is reclaimed once it has been this long without
#: an update (a job in hand is updated at every stage and progress flush).
RECLAIM_MIN_IDLE = 10.0

#: Percent at the start of each stage; the AI stage fills the range up to the next one.
STAGES = {"preprocessing": 5, "ai_processing": 30, "uploading_output": 85, "done": 100}


class _Canceled(Exception):
    """The job's cancel flag was seen at a stage boundary."""


class _LeaseLost(Exception):
    """This attempt's claim is no longer ours: another box took the job over."""


@dataclass(frozen=True)
class PoolConfig:
    max_attempts: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    jitter: float = 0.2
    attempt_timeout: float = 900.0
    breaker_threshold: int = 5
    breaker_cool_down: float = 30.0
    max_pending: int = 256
    flush_interval: float = 0.5
    signed_input_ttl: int = 3600
    #: How long a styled result waits for the database to record it (giving up reruns the
    #: styling, and a paid provider is paid again).
    result_patience: float = 120.0


@dataclass
class _Running:
    """Live state of one attempt, shared by the attempt and its flush/cancel watcher."""

    job: jobs.Job
    stage: str = "preprocessing"
    percent: int = STAGES["preprocessing"]
    flushed: tuple[str, int] = ("", -1)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_seen: bool = False
    lease_lost: bool = False


class WorkerPool:
    def __init__(
        self,
        *,
        db: Database,
        storage: Storage,
        bus: Bus,
        metrics: Metrics,
        providers: dict[str, Provider],
        concurrency: dict[str, int],
        default_chain: Sequence[str],
        worker_id: str,
        public_base_url: str | None = None,
        publisher: Publisher | None = None,
        config: PoolConfig | None = None,
        rng: random.Random | None = None,
        lease: float = 60.0,
    ) -> None:
        self.db = db
        self.storage = storage
        self.bus = bus
        self.metrics = metrics
        self.providers = providers
        self.default_chain = list(default_chain)
        self.worker_id = worker_id
        self.public_base_url = public_base_url
        self.publisher = publisher
        self.rng = rng or random.Random()
        self.limiters = {name: trio.CapacityLimiter(concurrency.get(name, 1)) for name in providers}
        self.in_flight: set[str] = set()
        self.lease = lease
        #: The claims this process holds (job id → attempt), renewed together.
        self.leases: dict[str, int] = {}
        self._runs: dict[str, _Running] = {}
        self.reconfigure(config or PoolConfig())

    def reconfigure(self, config: PoolConfig) -> None:
        """Set retry and breaker settings (fresh breakers); for start-up and tests."""
        self.config = config
        self.breakers = {
            name: CircuitBreaker(name, config.breaker_threshold, config.breaker_cool_down)
            for name in self.providers
        }

    # -- the actor ---------------------------------------------------------------------------

    async def run(self, ctx: ChildContext, work: trio.MemoryReceiveChannel[str]) -> None:
        requeued = await jobs.requeue_mine(self.db, self.worker_id)
        if requeued:
            log.info("requeued interrupted jobs", extra={"count": len(requeued)})
        pending = trio.Semaphore(self.config.max_pending)
        async with trio.open_nursery() as renewing:
            # Outside the jobs' nursery: jobs finishing in the shutdown grace keep their leases,
            # and the renewing ends with the last of them.
            renewing.start_soon(self._renew_leases)
            async with trio.open_nursery() as nursery:
                ctx.started()
                nursery.start_soon(self._reclaim_until, ctx.stopping)
                with trio.CancelScope() as intake:
                    nursery.start_soon(self._stop_intake_on, ctx.stopping, intake)
                    # Not `async with work`: the channel outlives this actor's restarts.
                    async for job_id in work:
                        if job_id in self.in_flight:
                            continue
                        await pending.acquire()
                        self.in_flight.add(job_id)
                        nursery.start_soon(self._job_task, job_id, pending)
                # Intake stopped: in-flight jobs finish, or the supervisor cancels after the grace.
            renewing.cancel_scope.cancel()

    async def _renew_leases(self) -> None:
        """Renew the leases of all the jobs in hand, one query every third of a lease; stop the
        attempts whose lease was lost. A failed round is simply tried again: the lease is three
        rounds long."""
        while True:
            await trio.sleep(self.lease / 3)
            held = dict(self.leases)
            try:
                renewed = await jobs.renew_leases(self.db, self.worker_id, held, self.lease)
            except PhotobotError as exc:
                log.warning("job leases not renewed", extra={"error": exc.message})
                continue
            for job_id, attempt in held.items():
                run = self._runs.get(job_id)
                if job_id in renewed or run is None or run.job.attempts != attempt:
                    continue  # renewed, or between attempts (the next claim tells)
                run.lease_lost = True
                # Past the styling the result is as good as saved: the save itself is fenced,
                # and interrupting it would leave a successful save unannounced.
                if run.stage != "uploading_output":
                    run.scope.cancel()

    async def _reclaim_until(self, stopping: trio.Event, every: float = 30.0) -> None:
        """Requeue our `running` jobs that no task here is running (a task lost its job to a
        database outage), and publish succeeded jobs that have no photo yet. The dispatcher's
        sweep then brings them back."""
        while not stopping.is_set():
            try:
                if self.publisher is not None:
                    await self.publisher.recover(self.storage.size)
                back = await jobs.requeue_mine(
                    self.db, self.worker_id, keep=self.in_flight, min_idle=RECLAIM_MIN_IDLE
                )
                if back:
                    log.warning("requeued stranded jobs", extra={"count": len(back)})
            except PhotobotError as exc:
                log.warning("reclaim round failed", extra={"error": exc.message})
            with trio.move_on_after(every):
                await stopping.wait()

    async def _stop_intake_on(self, stopping: trio.Event, intake: trio.CancelScope) -> None:
        await stopping.wait()
        intake.cancel()

    async def _job_task(self, job_id: str, pending: trio.Semaphore) -> None:
        try:
            await self.process(job_id)
        except PhotobotError as exc:
            # The database or storage failed around the job; it stays queued/running under our
            # name and the dispatcher's sweep (or our next start) brings it back.
            log.warning("job deferred", extra={"jobId": job_id, "error": exc.message})
        finally:
            self.in_flight.discard(job_id)
            self.leases.pop(job_id, None)
            pending.release()

    # -- one job -----------------------------------------------------------------------------

    async def chain_for(self, job: jobs.Job, event: Event) -> list[str]:
        if job.provider:
            return [job.provider]
        chain = list(event.settings.fallback_chain) or self.default_chain
        return [name for name in chain if name in self.providers] or self.default_chain

    async def process(self, job_id: str) -> None:
        job = await jobs.get(self.db, job_id)
        if job.final:
            return
        event = await resolve_event(self.db, job.event_id)
        chain = await self.chain_for(job, event)
        last: tuple[str, str] = ("no_provider", "no provider is configured for this job")
        for name in chain:
            if name not in self.providers:
                last = ("unknown_provider", f"provider {name!r} is not configured on this booth")
                continue
            for attempt_no in range(1, self.config.max_attempts + 1):
                if not self.breakers[name].allow():
                    last = ("circuit_open", f"{name} is unavailable right now")
                    break
                outcome, error = await self._attempt(job_id, name, event)
                if outcome != "transient":
                    return
                last = error
                if attempt_no < self.config.max_attempts:
                    await trio.sleep(self._backoff(attempt_no))
        held = self.leases.get(job_id)
        claim = None if held is None else (self.worker_id, held)
        failed = await jobs.fail(self.db, job_id, *last, claim=claim)
        if failed is not None:
            self._finished(failed)

    def _backoff(self, attempt_no: int) -> float:
        c = self.config
        delay = min(c.backoff_max, c.backoff_base * 2 ** (attempt_no - 1))
        return delay * self.rng.uniform(1 - c.jitter, 1 + c.jitter)

    async def _attempt(self, job_id: str, name: str, event: Event) -> tuple[str, tuple[str, str]]:
        """One claimed attempt. Returns ("done" | "transient", (code, message))."""
        breaker = self.breakers[name]
        try:
            async with self.limiters[name]:
                return await self._claimed_attempt(job_id, name, event, breaker)
        finally:
            # A half-open breaker's one trial must end even when no verdict was recorded
            # (canceled, fatal input error, database error); after a verdict this is a no-op.
            breaker.release()

    async def _claimed_attempt(
        self, job_id: str, name: str, event: Event, breaker: CircuitBreaker
    ) -> tuple[str, tuple[str, str]]:
        job = await jobs.claim(self.db, job_id, self.worker_id, name, lease=self.lease)
        if job is None:
            current = await jobs.get(self.db, job_id)
            if current.cancel_requested and not current.final:
                await self._cancel(current)
            return "done", ("", "")
        run = _Running(job)
        self.leases[job_id] = job.attempts
        self._runs[job_id] = run
        log.info(
            "attempt started",
            extra={"jobId": job_id, "provider": name, "attempt": job.attempts},
        )
        output: ProviderOutput | None = None
        try:
            async with open_nursery() as watchers:
                watchers.start_soon(self._watch, run)
                try:
                    with run.scope:
                        output = await self._stages(run, name, event)
                finally:
                    watchers.cancel_scope.cancel()
                    self._runs.pop(job_id, None)
            if run.lease_lost and output is None:
                raise _LeaseLost
            if run.cancel_seen or output is None:
                raise _Canceled
        except _LeaseLost:
            # Nothing to clean up in storage: the output keys are the job's, not the attempt's,
            # and the box that took the job over writes (or wrote) its result under them.
            log.warning(
                "job lease lost to another box: result dropped",
                extra={"jobId": job_id, "provider": name, "attempt": job.attempts},
            )
            with trio.CancelScope(shield=True):
                await jobs.end_attempt(
                    self.db, job_id, job.attempts, "interrupted", error_code="lease_lost",
                    error_message="this box lost its lease on the job; its result was dropped",
                )  # fmt: skip
            return "done", ("", "")
        except _Canceled:
            with trio.CancelScope(shield=True):
                await jobs.end_attempt(self.db, job_id, job.attempts, "canceled")
                await self._cancel(job)
            return "done", ("", "")
        except trio.TooSlowError:
            return await self._transient(job, name, "provider_timeout", f"{name} took too long")
        except TransientProviderError as exc:
            return await self._transient(job, name, exc.code, exc.message)
        except FatalProviderError as exc:
            await self._fatal(job, exc.code, exc.message)
            return "done", ("", "")
        except Unavailable as exc:
            # Our own storage or database, not the provider: retry without blaming it.
            await jobs.end_attempt(
                self.db, job_id, job.attempts, "transient_error",
                error_code=exc.code, error_message=exc.message,
            )  # fmt: skip
            return "transient", (exc.code, exc.message)
        except PhotobotError as exc:
            await self._fatal(job, exc.code, exc.message)
            return "done", ("", "")
        breaker.record_success()
        return "done", ("", "")

    async def _stages(self, run: _Running, name: str, event: Event) -> ProviderOutput | None:
        job = run.job
        self._stage(run, "preprocessing")
        image = await self.storage.get(job.input_key)
        settings = event.settings
        frame = await self.storage.get(settings.frame_key) if settings.frame_key else None
        input_url = await self._input_url(job) if name == "kie" else None
        self._check_cancel(run)

        self._stage(run, "ai_processing")
        start, end = STAGES["ai_processing"], STAGES["uploading_output"]

        def on_progress(fraction: float) -> None:
            percent = start + int((end - start - 1) * min(max(fraction, 0.0), 1.0))
            if percent > run.percent:
                run.percent = percent
                self._publish(run)

        request = ProviderInput(
            job_id=job.id,
            image=image,
            content_type=job.input_type,
            mode=job.mode,
            style=job.style_id or settings.default_style,
            seed=None,
            input_url=input_url,
            frame_png=frame,
            branding=settings.branding,
        )
        provider = self.providers[name]
        with trio.fail_after(self.config.attempt_timeout):
            output = await provider.process(request, on_progress)
        if not output.images:
            raise FatalProviderError(f"{name} returned no image", code="no_output")
        self._check_cancel(run)

        # Still ours, and a whole lease ahead for the upload: a box that lost the job writes
        # nothing over the result of the box that took it over.
        held = {job.id: job.attempts}
        renewed = await self._save_result(
            job.id, lambda: jobs.renew_leases(self.db, self.worker_id, held, self.lease)
        )
        if job.id not in renewed:
            raise _LeaseLost
        self._stage(run, "uploading_output")
        day = job.created_at.date() if job.created_at else date.today()
        keys = []
        for n, image_out in enumerate(output.images, start=1):
            ext = (mimetypes.guess_extension(image_out.content_type) or ".bin").lstrip(".")
            key = job_output_key(job.event_id, job.id, n, "jpg" if ext == "jpe" else ext, day)
            await self.storage.put(key, image_out.data, image_out.content_type)
            keys.append(key)
        self._check_cancel(run)

        best = keys[min(max(output.best, 0), len(keys) - 1)]
        done = await self._save_result(
            job.id,
            lambda: jobs.succeed(
                self.db, job.id, self.worker_id, job.attempts, keys, best,
                provider_request_id=output.provider_request_id,
            ),
        )  # fmt: skip
        if done is None:
            raise _LeaseLost
        self._finished(done)
        log.info("job succeeded", extra={"jobId": job.id, "provider": name})
        if self.publisher is not None:
            best_image = output.images[min(max(output.best, 0), len(keys) - 1)]
            with trio.CancelScope(shield=True):
                await self.publisher.publish_job(
                    done, len(best_image.data), best_image.content_type
                )
        return output

    async def _save_result(self, job_id: str, write: Callable[[], Awaitable[T]]) -> T:
        return await save_patiently(
            write, patience=self.config.result_patience, log=log, extra={"jobId": job_id}
        )

    def _check_cancel(self, run: _Running) -> None:
        if run.cancel_seen:
            raise _Canceled

    def _stage(self, run: _Running, stage: str) -> None:
        run.stage, run.percent = stage, STAGES[stage]
        self._publish(run)

    async def _watch(self, run: _Running) -> None:
        """Flush progress to the database and poll the cancel flag.

        A database hiccup must not fail the job being styled: the flush is tried again next
        round, and the cancel check waits for the database to answer.
        """
        while True:
            await trio.sleep(self.config.flush_interval)
            try:
                if (run.stage, run.percent) != run.flushed:
                    await jobs.progress(
                        self.db, run.job.id, run.stage, run.percent,
                        worker=self.worker_id, attempt=run.job.attempts,
                    )  # fmt: skip
                    run.flushed = (run.stage, run.percent)
                cancel = await jobs.is_cancel_requested(self.db, run.job.id)
            except PhotobotError as exc:
                log.warning("progress not saved", extra={"jobId": run.job.id, "error": exc.message})
                continue
            if cancel:
                run.cancel_seen = True
                run.scope.cancel()
                return

    async def _input_url(self, job: jobs.Job) -> str | None:
        url = await self.storage.signed_url(job.input_key, self.config.signed_input_ttl)
        if url.startswith("/"):
            if not self.public_base_url:
                return None  # the provider says clearly that it needs a reachable URL
            url = self.public_base_url.rstrip("/") + url
        return url

    async def _transient(
        self, job: jobs.Job, name: str, code: str, message: str
    ) -> tuple[str, tuple[str, str]]:
        self.breakers[name].record_failure()
        await jobs.end_attempt(
            self.db, job.id, job.attempts, "transient_error", error_code=code, error_message=message
        )
        log.warning(
            "attempt failed, will retry",
            extra={"jobId": job.id, "provider": name, "code": code, "error": message},
        )
        return "transient", (code, message)

    async def _fatal(self, job: jobs.Job, code: str, message: str) -> None:
        await jobs.end_attempt(
            self.db, job.id, job.attempts, "fatal_error", error_code=code, error_message=message
        )
        failed = await jobs.fail(
            self.db, job.id, code, message, claim=(self.worker_id, job.attempts)
        )
        if failed is not None:
            self._finished(failed)
        log.warning("job failed", extra={"jobId": job.id, "code": code, "error": message})

    async def _cancel(self, job: jobs.Job) -> None:
        canceled = await jobs.mark_canceled(self.db, job.id)
        if canceled is not None:
            self._finished(canceled)
            log.info("job canceled", extra={"jobId": job.id})

    def _publish(self, run: _Running) -> None:
        job = run.job
        self.bus.publish(
            JobEvent(job.id, job.event_id, job.session_id, "running", run.stage, run.percent)
        )

    def _finished(self, job: jobs.Job) -> None:
        provider = job.provider_used or "none"
        self.metrics.jobs.labels(job.status, provider).inc()
        if job.finished_at is not None:
            self.metrics.job_duration.labels(provider).observe(
                (job.finished_at - job.created_at).total_seconds()
            )
        self.bus.publish(
            JobEvent(
                job.id, job.event_id, job.session_id, job.status, job.progress_stage,
                job.progress_percent, job.error_code, job.best_output_key,
            )
        )  # fmt: skip


async def run(ctx: ChildContext, pool: WorkerPool, work: trio.MemoryReceiveChannel[str]) -> None:
    await pool.run(ctx, work)


__all__ = ["PoolConfig", "WorkerPool", "run"]
