"""Jobs: the durable record of every accepted photo, and every transition of its state.

PostgreSQL is the source of truth. Every transition is one conditional UPDATE, so two processes
(or a restarted one and a ghost of its former self) can never both move the same job:

    queued ──claim──▶ running ──succeed──▶ succeeded
      │                  │ ├────fail─────▶ failed
      │                  │ └──requeue (its process restarted, or its lease ran out)──▶ queued
      └──cancel──────────┴──(cancel_requested, honoured at the next stage)──▶ canceled

``claimed_by`` names the booth process running a job (its ``BOOTH_ID``); at start-up a process
requeues only its own running jobs. A claim also takes a lease (``lease_expires_at``, always on
PostgreSQL's clock), which the claiming box renews while the job runs (:func:`renew_leases`):
once it has run out, any box sharing the database takes the job over
(:func:`take_over_expired`), so a box that never comes back strands nothing. The transitions a
running job's owner makes (progress, succeed, fail) name the claim they belong to, ``claimed_by``
and ``attempts``: a box that lost its lease (partitioned, not dead) and comes back late is
refused, and never completes a job another box took over.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from photobot.db import Database, Record, from_record
from photobot.errors import Conflict, NotFound

FINAL = ("succeeded", "failed", "canceled")
STATUSES = ("queued", "running", *FINAL)


@dataclass(frozen=True)
class Job:
    id: str
    event_id: str
    session_id: str | None
    parent_job_id: str | None
    booth_id: str | None
    operator_id: str | None
    source: str
    status: str
    mode: str
    style_id: str | None
    provider: str | None
    provider_used: str | None
    guest_name: str | None
    guest_whatsapp: str | None
    input_key: str
    input_sha256: str
    input_type: str
    input_bytes: int
    output_keys: list[str]
    best_output_key: str | None
    progress_percent: int
    progress_stage: str
    error_code: str | None
    error_message: str | None
    attempts: int
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    claimed_by: str | None

    @classmethod
    def from_record(cls, r: Record) -> Job:
        return from_record(cls, r)

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(frozen=True)
class NewJob:
    event_id: str
    source: str
    input_key: str
    input_sha256: str
    input_type: str
    input_bytes: int
    id: str = ""
    session_id: str | None = None
    parent_job_id: str | None = None
    booth_id: str | None = None
    operator_id: str | None = None
    mode: str = "default"
    style_id: str | None = None
    provider: str | None = None
    guest_name: str | None = None
    guest_whatsapp: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Attempt:
    attempt: int
    provider: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error_code: str | None
    error_message: str | None
    provider_request_id: str | None


def new_job_id() -> str:
    return str(uuid.uuid4())


def parse_id(value: str) -> uuid.UUID:
    """A job id from a URL; anything that is not a UUID is simply not found."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound("no such job") from None


async def create(db: Database, job: NewJob) -> tuple[Job, bool]:
    """Insert ``job``; with an idempotency key already used, return the existing job instead.

    Returns ``(job, created)``. The same key with a different photo, or for a different job
    (a retry of another parent, a retry's key reused for a new photo), is a :class:`Conflict`.
    """

    async def on_asyncio(conn: asyncpg.Connection) -> tuple[Record, bool]:
        row = await conn.fetchrow(
            """insert into jobs (id, event_id, session_id, parent_job_id, booth_id, operator_id,
                   source, mode, style_id, provider, guest_name, guest_whatsapp, input_key,
                   input_sha256, input_type, input_bytes, idempotency_key)
               values ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)
               on conflict (idempotency_key) where idempotency_key is not null do nothing
               returning *""",
            uuid.UUID(job.id or new_job_id()),
            uuid.UUID(job.event_id),
            None if job.session_id is None else uuid.UUID(job.session_id),
            None if job.parent_job_id is None else uuid.UUID(job.parent_job_id),
            job.booth_id,
            job.operator_id,
            job.source,
            job.mode,
            job.style_id,
            job.provider,
            job.guest_name,
            job.guest_whatsapp,
            job.input_key,
            job.input_sha256,
            job.input_type,
            job.input_bytes,
            job.idempotency_key,
        )
        if row is not None:
            return row, True
        existing = await conn.fetchrow(
            "select * from jobs where idempotency_key = $1", job.idempotency_key
        )
        assert existing is not None
        return existing, False

    row, created = await db.run(on_asyncio)
    found = Job.from_record(row)
    if not created:
        check_replay(found, job.input_sha256, job.parent_job_id)
    return found, created


def check_replay(found: Job, input_sha256: str, parent_job_id: str | None) -> None:
    """``found`` is the job an Idempotency-Key already names; a :class:`Conflict` unless it is
    the job this request would make: the same photo, and the same parent (``None`` for a new
    capture, the retried job's id for a retry)."""
    if found.parent_job_id != parent_job_id:
        raise Conflict(
            "this Idempotency-Key was already used for a different job", code="idempotency_reused"
        )
    if found.input_sha256 != input_sha256:
        raise Conflict(
            "this Idempotency-Key was already used for a different photo", code="idempotency_reused"
        )


async def get(db: Database, job_id: str) -> Job:
    row = await db.fetchrow("select * from jobs where id = $1", parse_id(job_id))
    if row is None:
        raise NotFound("no such job")
    return Job.from_record(row)


async def attempts(db: Database, job_id: str) -> list[Attempt]:
    rows = await db.fetch(
        """select attempt, provider, started_at, finished_at, outcome, error_code, error_message,
                  provider_request_id
           from job_attempts where job_id = $1 order by attempt""",
        parse_id(job_id),
    )
    return [from_record(Attempt, r) for r in rows]


async def list_page(
    db: Database,
    *,
    event_id: str | None = None,
    status: str | None = None,
    query: str | None = None,
    booth_id: str | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> list[Job]:
    """Newest first, keyset-paged on (created_at, id): pass the last row's pair as ``before``."""
    clauses, args = [], []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if event_id is not None:
        clauses.append(f"event_id = {arg(uuid.UUID(event_id))}")
    if status is not None:
        clauses.append(f"status = {arg(status)}")
    if booth_id is not None:
        clauses.append(f"booth_id = {arg(booth_id)}")
    if query:
        pattern = arg(
            "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        clauses.append(f"(guest_name ilike {pattern} or guest_whatsapp like {pattern})")
    if before is not None:
        clauses.append(f"(created_at, id) < ({arg(before[0])}, {arg(uuid.UUID(before[1]))})")
    where = ("where " + " and ".join(clauses)) if clauses else ""
    rows = await db.fetch(
        f"select * from jobs {where} order by created_at desc, id desc limit {arg(limit)}", *args
    )
    return [Job.from_record(r) for r in rows]


async def claim(
    db: Database, job_id: str, worker: str, provider: str, *, lease: float
) -> Job | None:
    """Start the next attempt: queued (or our own running job) → running, attempt row opened,
    leased to ``worker`` for ``lease`` seconds. The claim is ``(worker, job.attempts)``.

    ``None`` when the job is no longer ours to run (canceled, finished, claimed elsewhere).
    """

    async def on_asyncio(conn: asyncpg.Connection) -> Record | None:
        row = await conn.fetchrow(
            """update jobs set status = 'running', claimed_by = $2, claimed_at = now(),
                      started_at = coalesce(started_at, now()), attempts = attempts + 1,
                      provider_used = $3, progress_stage = 'preprocessing', progress_percent = 1,
                      error_code = null, error_message = null, updated_at = now(),
                      lease_expires_at = now() + make_interval(secs => $4)
               where id = $1 and not cancel_requested
                 and (status = 'queued' or (status = 'running' and claimed_by = $2))
               returning *""",
            uuid.UUID(job_id),
            worker,
            provider,
            lease,
        )
        if row is not None:
            await conn.execute(
                "insert into job_attempts (job_id, attempt, provider) values ($1, $2, $3)",
                row["id"],
                row["attempts"],
                provider,
            )
        return row

    row = await db.run(on_asyncio)
    return None if row is None else Job.from_record(row)


async def progress(
    db: Database, job_id: str, stage: str, percent: int, *, worker: str, attempt: int
) -> None:
    """Record the stage of the claim ``(worker, attempt)``; a lost claim's progress is ignored."""
    await db.execute(
        """update jobs set progress_stage = $2, progress_percent = $3, updated_at = now()
           where id = $1 and status = 'running' and claimed_by = $4 and attempts = $5""",
        uuid.UUID(job_id),
        stage,
        percent,
        worker,
        attempt,
    )


async def end_attempt(
    db: Database,
    job_id: str,
    attempt: int,
    outcome: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    provider_request_id: str | None = None,
) -> None:
    await db.execute(
        """update job_attempts set finished_at = now(), outcome = $3, error_code = $4,
                  error_message = $5, provider_request_id = $6
           where job_id = $1 and attempt = $2 and finished_at is null""",
        uuid.UUID(job_id),
        attempt,
        outcome,
        error_code,
        error_message,
        provider_request_id,
    )


async def succeed(
    db: Database,
    job_id: str,
    worker: str,
    attempt: int,
    output_keys: list[str],
    best_output_key: str,
    *,
    provider_request_id: str | None = None,
) -> Job | None:
    """Running → succeeded, and its attempt row closed, in one transaction: only for the claim
    ``(worker, attempt)``. ``None``: the claim was lost (the job was taken over after its
    lease ran out, canceled, …), so the result must be dropped.

    Safe to repeat: a first try that committed without our hearing returns the job again."""
    jid = uuid.UUID(job_id)

    async def on_asyncio(conn: asyncpg.Connection) -> Record | None:
        row = await conn.fetchrow(
            """update jobs set status = 'succeeded', output_keys = $4, best_output_key = $5,
                      progress_stage = 'done', progress_percent = 100, finished_at = now(),
                      updated_at = now(), lease_expires_at = null
               where id = $1 and status = 'running' and claimed_by = $2 and attempts = $3
               returning *""",
            jid,
            worker,
            attempt,
            output_keys,
            best_output_key,
        )
        if row is None:
            return await conn.fetchrow(
                """select * from jobs where id = $1 and status = 'succeeded'
                     and claimed_by = $2 and attempts = $3""",
                jid,
                worker,
                attempt,
            )
        await conn.execute(
            """update job_attempts set finished_at = now(), outcome = 'succeeded',
                      provider_request_id = $3
               where job_id = $1 and attempt = $2 and finished_at is null""",
            jid,
            attempt,
            provider_request_id,
        )
        return row

    row = await db.run(on_asyncio)
    return None if row is None else Job.from_record(row)


async def fail(
    db: Database, job_id: str, code: str, message: str, *, claim: tuple[str, int] | None = None
) -> Job | None:
    """Fail the job: with ``claim`` = ``(worker, attempt)`` only while that claim holds it,
    without one only while it is queued (a box that never claimed it must not fail the job
    another box is running)."""
    owner, attempt = claim if claim is not None else (None, None)
    row = await db.fetchrow(
        """update jobs set status = 'failed', error_code = $2, error_message = $3,
                  finished_at = now(), updated_at = now(), lease_expires_at = null
           where id = $1 and case when $4::text is null then status = 'queued'
                 else status = 'running' and claimed_by = $4 and attempts = $5 end
           returning *""",
        uuid.UUID(job_id),
        code,
        message[:500],
        owner,
        attempt,
    )
    return None if row is None else Job.from_record(row)


async def mark_canceled(db: Database, job_id: str) -> Job | None:
    """The pool honours a cancel request at a stage boundary."""
    row = await db.fetchrow(
        """update jobs set status = 'canceled', finished_at = now(), updated_at = now(),
                  error_code = 'canceled', error_message = 'canceled by an operator'
           where id = $1 and status in ('queued', 'running')
           returning *""",
        uuid.UUID(job_id),
    )
    return None if row is None else Job.from_record(row)


async def request_cancel(db: Database, job_id: str) -> Job:
    """Queued → canceled at once; running → flagged, interrupted at its next stage."""
    jid = parse_id(job_id)

    async def on_asyncio(conn: asyncpg.Connection) -> Record | None:
        row = await conn.fetchrow(
            """update jobs set status = 'canceled', cancel_requested = true, finished_at = now(),
                      updated_at = now(), error_code = 'canceled',
                      error_message = 'canceled by an operator'
               where id = $1 and status = 'queued' returning *""",
            jid,
        )
        if row is None:
            row = await conn.fetchrow(
                """update jobs set cancel_requested = true, updated_at = now()
                   where id = $1 and status = 'running' returning *""",
                jid,
            )
        if row is None:
            row = await conn.fetchrow("select * from jobs where id = $1", jid)
        return row

    row = await db.run(on_asyncio)
    if row is None:
        raise NotFound("no such job")
    return Job.from_record(row)


async def is_cancel_requested(db: Database, job_id: str) -> bool:
    return bool(
        await db.fetchval("select cancel_requested from jobs where id = $1", uuid.UUID(job_id))
    )


async def requeue_mine(
    db: Database, worker: str, keep: Iterable[str] = (), *, min_idle: float = 0.0
) -> list[str]:
    """Our running jobs that nothing runs any more (after a restart, or ``keep`` = the ids
    still in hand) go back to the queue, their open attempts ended; one whose cancel was
    requested is canceled instead, since it will never be claimed again.

    ``min_idle``: only jobs not updated for that many seconds. A periodic sweep needs it: its
    ``keep`` is a snapshot, and a job claimed while the sweep's query is on its way (claimed
    just now, so updated just now) must not be taken for a stranded one."""
    kept = [uuid.UUID(k) for k in keep]

    async def on_asyncio(conn: asyncpg.Connection) -> list[Record]:
        rows = await conn.fetch(
            f"""update jobs set {_REQUEUE}
               where status = 'running' and claimed_by = $1 and not (id = any($2::uuid[]))
                 and updated_at <= now() - make_interval(secs => $3)
               returning id""",
            worker,
            kept,
            min_idle,
        )
        await _interrupt_attempts(
            conn, [r["id"] for r in rows], "the booth process stopped during this attempt"
        )
        return rows

    return [str(r["id"]) for r in await db.run(on_asyncio)]


#: A running job back to the queue (or canceled, if that was asked: it would never be claimed).
_REQUEUE = """status = case when cancel_requested then 'canceled' else 'queued' end,
              finished_at = case when cancel_requested then now() end,
              error_code = case when cancel_requested then 'canceled' else error_code end,
              error_message = case when cancel_requested
                              then 'canceled by an operator' else error_message end,
              claimed_by = null, lease_expires_at = null, progress_stage = 'queued',
              progress_percent = 0, updated_at = now()"""


async def _interrupt_attempts(conn: asyncpg.Connection, ids: list[Any], message: str) -> None:
    """End the open attempts of requeued jobs ``ids`` as interrupted."""
    if ids:
        await conn.execute(
            """update job_attempts set finished_at = now(), outcome = 'interrupted',
                      error_code = 'interrupted', error_message = $2
               where job_id = any($1::uuid[]) and finished_at is null""",
            ids,
            message,
        )


async def take_over_expired(db: Database, limit: int = 200) -> list[tuple[str, str | None]]:
    """Running jobs whose lease has run out, whichever box claimed them (it died, or has not
    reached the database for a whole lease), go back to the queue for any box to run, their
    open attempts ended as interrupted; one whose cancel was requested is canceled instead.
    Returns ``(job id, the box that had it)`` pairs.

    ``skip locked``: boxes sweeping at once share the jobs out instead of waiting on each
    other, and a job its owner is completing or renewing right now is left to that owner."""

    async def on_asyncio(conn: asyncpg.Connection) -> list[Record]:
        rows = await conn.fetch(
            f"""with expired as (
                    select id, claimed_by from jobs
                    where status = 'running' and lease_expires_at < now()
                    order by lease_expires_at limit $1
                    for update skip locked)
                update jobs set {_REQUEUE}
                from expired where jobs.id = expired.id
                returning jobs.id, expired.claimed_by""",
            limit,
        )
        await _interrupt_attempts(
            conn,
            [r["id"] for r in rows],
            "the booth running this attempt stopped renewing its lease; another box took over",
        )
        return rows

    return [(str(r["id"]), r["claimed_by"]) for r in await db.run(on_asyncio)]


async def renew_leases(
    db: Database, worker: str, held: Mapping[str, int], lease: float
) -> set[str]:
    """Extend to ``lease`` seconds from now, in one statement, the lease of every job in
    ``held`` (job id → attempt) that ``worker`` still holds at that attempt; return the ids
    renewed. A job left out is lost to that claim: taken over after its lease ran out, claimed
    again by a newer process under the same ``BOOTH_ID``, or no longer running."""
    if not held:
        return set()
    rows = await db.fetch(
        """update jobs set lease_expires_at = now() + make_interval(secs => $4)
           from unnest($2::uuid[], $3::int[]) as held(id, attempt)
           where jobs.id = held.id and jobs.attempts = held.attempt and jobs.claimed_by = $1
             and jobs.status = 'running'
           returning jobs.id""",
        worker,
        [uuid.UUID(job_id) for job_id in held],
        list(held.values()),
        lease,
    )
    return {str(r["id"]) for r in rows}


async def queued_ids(db: Database, limit: int = 10_000) -> list[str]:
    rows = await db.fetch(
        "select id from jobs where status = 'queued' order by created_at, id limit $1", limit
    )
    return [str(r["id"]) for r in rows]


def retry_of(parent: Job, *, operator_id: str | None, idempotency_key: str | None = None) -> NewJob:
    """A child job with the same input; the parent keeps its history."""
    return NewJob(
        id=new_job_id(),
        event_id=parent.event_id,
        session_id=parent.session_id,
        parent_job_id=parent.id,
        booth_id=parent.booth_id,
        operator_id=operator_id,
        source="retry",
        mode=parent.mode,
        style_id=parent.style_id,
        provider=parent.provider,
        guest_name=parent.guest_name,
        guest_whatsapp=parent.guest_whatsapp,
        input_key=parent.input_key,
        input_sha256=parent.input_sha256,
        input_type=parent.input_type,
        input_bytes=parent.input_bytes,
        idempotency_key=idempotency_key,
    )
