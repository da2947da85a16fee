"""Job dispatcher: persists every job first, then hands it to the worker pool.

``submit`` (called by the web layer and the hot folder watcher, in their own tasks) writes the
job row — the moment a photo is accepted — and only then notifies the actor through
``Wiring.dispatch``. The actor forwards job ids to the pool (``Wiring.work``), and every
``sweep_interval`` it also forwards jobs that are ``queued`` in PostgreSQL: those whose
notification was lost (the sender was cancelled, this actor restarted, the pool restarted),
those requeued after a restart, and those another booth box queued. The pool ignores ids it
already has in flight, so forwarding twice is harmless; claiming is a conditional update, so
running twice is impossible.

Each sweep first takes over the running jobs whose lease has run out, whichever box had them
(:func:`photobot.jobs.take_over_expired`): a box that died for good, or lost the database for a
whole lease, would otherwise keep them ``running`` forever. They are requeued and forwarded in
the same round, and the box that lost them can no longer complete them.
"""

from __future__ import annotations

import logging

import trio

from photobot import jobs
from photobot.db import Database
from photobot.errors import Unavailable
from photobot.supervisor import ChildContext

log = logging.getLogger("photobot.dispatcher")


class Dispatcher:
    def __init__(
        self,
        db: Database,
        inbox: trio.MemorySendChannel[str],
        *,
        sweep_interval: float = 5.0,
        sweep_batch: int = 200,
    ) -> None:
        self.db = db
        self._inbox = inbox
        self.sweep_interval = sweep_interval
        self.sweep_batch = sweep_batch

    async def submit(self, new: jobs.NewJob) -> tuple[jobs.Job, bool]:
        """Persist ``new`` (idempotently) and queue it; ``(job, created)``."""
        job, created = await jobs.create(self.db, new)
        if created:
            log.info("job queued", extra={"jobId": job.id, "source": job.source})
            try:
                self._inbox.send_nowait(job.id)
            except trio.WouldBlock:
                pass  # a busy evening: the row is queued and the next sweep forwards it
        return job, created

    async def run(
        self,
        ctx: ChildContext,
        inbox: trio.MemoryReceiveChannel[str],
        work: trio.MemorySendChannel[str],
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep, work)
            ctx.started()

            async def forward() -> None:
                async for job_id in inbox:
                    await work.send(job_id)

            nursery.start_soon(forward)
            await ctx.stopping.wait()
            nursery.cancel_scope.cancel()

    async def _sweep(self, work: trio.MemorySendChannel[str]) -> None:
        # A database outage is waited out here, not raised: a crash per failed round would
        # use up the supervisor's restart intensity within a minute and stop the booth.
        failing = False
        while True:
            try:
                for job_id, owner in await jobs.take_over_expired(self.db, self.sweep_batch):
                    log.warning(
                        "job taken over: its lease ran out",
                        extra={"jobId": job_id, "previousOwner": owner},
                    )
                queued = await jobs.queued_ids(self.db, self.sweep_batch)
            except Unavailable as exc:
                if not failing:
                    log.warning(
                        "job sweep paused: database unavailable", extra={"error": exc.message}
                    )
                failing = True
            else:
                if failing:
                    log.info("job sweep resumed")
                failing = False
                for job_id in queued:
                    try:
                        work.send_nowait(job_id)
                    except trio.WouldBlock:
                        break  # the pool is saturated; it will ask again next round
            await trio.sleep(self.sweep_interval)


async def run(
    ctx: ChildContext,
    dispatcher: Dispatcher,
    inbox: trio.MemoryReceiveChannel[str],
    work: trio.MemorySendChannel[str],
) -> None:
    await dispatcher.run(ctx, inbox, work)
