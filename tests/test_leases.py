"""Job leases: several boxes (``BOOTH_ID`` s) on one PostgreSQL, and a box that dies for good.

A box renews the lease of each job it runs; once a lease has run out, any other box takes the
job over and runs it, and the box that lost it (partitioned, not dead) cannot complete it when
it comes back. Real PostgreSQL and Redis, real booths (``tests.live_booth``), each with its own
kie.ai stand-in; the boxes share one database and one storage directory, as boxes sharing a
PostgreSQL share an S3 bucket. Leases are short (1-3 s) and every wait is for a condition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from photobot import jobs
from photobot.db import Database
from photobot.db.migrate import migrate
from photobot.events import create_event
from photobot.providers.kie import KieProvider
from tests.live_booth import KIE_KEY, Live, open_live
from tests.standins.cable import open_cable

LEASE = 2.0


def outcomes(job: dict[str, Any]) -> list[str | None]:
    return [a["outcome"] for a in job["attemptsDetail"]]


async def wait_until(what: str, probe: Any, timeout: float = 60, every: float = 0.1) -> Any:
    """Call ``probe()`` (awaiting it if it is async) until it returns something truthy; fail
    after ``timeout`` s."""
    last = None
    with trio.move_on_after(timeout):
        while True:
            last = probe()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
            await trio.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


async def running_at_kie(live: Live, job_id: str) -> bool:
    row = await live.services.db.fetchrow(
        "select status, claimed_by from jobs where id = $1", uuid.UUID(job_id)
    )
    return (
        row is not None
        and row["status"] == "running"
        and row["claimed_by"] == live.services.settings.booth_id
        and len(live.kie.tasks) == 1
    )


@asynccontextmanager
async def box(
    database_url: str, redis_url: Any, data_dir: Path, booth_id: str, lease: float = LEASE
) -> AsyncIterator[Live]:
    """A booth box; its kie styling stays ``generating`` until the test sets ``kie.gate``."""
    async with open_live(
        database_url, redis_url, data_dir, booth_id=booth_id, job_lease_seconds=lease,
        shutdown_grace_seconds=0.5,
    ) as live:  # fmt: skip
        # As open_live's, but with room for styling that lasts as long as the test needs.
        kie = KieProvider(
            KIE_KEY, base_url=live.kie.url, poll_interval=0.05, max_poll_interval=0.1, timeout=300
        )
        live.services.pool.providers["kie"] = kie
        live.kie.gate = trio.Event()
        try:
            yield live
        finally:
            with trio.CancelScope(shield=True):
                await kie.aclose()


async def test_a_job_left_running_by_a_box_gone_for_good_is_taken_over_and_succeeds_once(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with box(database_url, redis_url, data, "booth-a") as a:
        session = await a.guest((await a.event())["id"])
        job_id = (await a.submit(session, provider="kie")).json()["id"]
        await wait_until("the job to run at booth-a's kie", lambda: running_at_kie(a, job_id))
        a_kie = a.kie  # its styling never ends: the box goes first
    # Booth A is gone (stopped with the job cut off, and it never starts again): the job is
    # still `running` under its name, with the lease it last renewed.
    async with box(database_url, redis_url, data, "booth-b") as b:
        left = await b.services.db.fetchrow(
            "select status, claimed_by, lease_expires_at from jobs where id = $1",
            uuid.UUID(job_id),
        )
        assert (left["status"], left["claimed_by"]) == ("running", "booth-a")
        b.kie.gate.set()
        done = await b.wait_final(job_id, timeout=60)
        interrupted_at = await b.services.db.fetchval(
            "select finished_at from job_attempts where job_id = $1 and attempt = 1",
            uuid.UUID(job_id),
        )
        b_kie_calls = b.kie.calls["createTask"]
    assert done["status"] == "succeeded", done
    assert done["providerUsed"] == "kie" and done["attempts"] == 2
    assert outcomes(done) == ["interrupted", "succeeded"], done
    assert done["attemptsDetail"][0]["error"]["code"] == "interrupted"
    assert interrupted_at >= left["lease_expires_at"]  # taken only once the lease ran out
    assert a_kie.calls["createTask"] == 1 and b_kie_calls == 1


async def test_a_job_whose_lease_is_being_renewed_is_never_taken_over(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    lease = 3.0
    async with box(database_url, redis_url, tmp_path / "data", "booth-a", lease) as a:
        db = a.services.db
        session = await a.guest((await a.event())["id"])
        job_id = (await a.submit(session, provider="kie")).json()["id"]
        await wait_until("the job to run at booth-a's kie", lambda: running_at_kie(a, job_id))
        jid = uuid.UUID(job_id)

        async def four_leases_later() -> bool:
            # What every other box's sweep does, as often as we can, for four whole leases.
            taken = await jobs.take_over_expired(db)
            assert taken == [], taken
            return bool(
                await db.fetchval(
                    "select now() > claimed_at + make_interval(secs => $2) from jobs where id = $1",
                    jid,
                    4 * lease,
                )
            )

        await wait_until("four leases to pass", four_leases_later, timeout=120, every=0.05)
        row = await db.fetchrow(
            "select status, claimed_by, attempts, lease_expires_at > now() as leased from jobs"
            " where id = $1",
            jid,
        )
        assert dict(row) == {
            "status": "running", "claimed_by": "booth-a", "attempts": 1, "leased": True,
        }  # fmt: skip


async def test_a_late_completion_by_a_box_that_lost_the_job_is_refused(
    database_url: str,
) -> None:
    """The fencing itself: the completion names its claim (box and attempt). Two boxes, and
    then a ghost of a box whose BOOTH_ID restarted while the ghost still ran."""
    async with Database.open(database_url, min_size=1, max_size=2) as db:
        await migrate(db)
        event = await create_event(db, {"name": "Fencing party"})
        new = jobs.NewJob(
            event_id=str(event.id), source="operator", input_key="k/in.jpg",
            input_sha256=hashlib.sha256(b"fencing").hexdigest(), input_type="image/jpeg",
            input_bytes=1,
        )  # fmt: skip
        job, _ = await jobs.create(db, new)
        a = await jobs.claim(db, job.id, "booth-a", "kie", lease=1.0)
        assert a is not None and a.attempts == 1
        assert await jobs.renew_leases(db, "booth-a", {job.id: 1}, 1.0) == {job.id}

        async def taken_over() -> list[tuple[str, str | None]]:
            return await jobs.take_over_expired(db)

        assert await wait_until("booth-a's lease to run out", taken_over) == [(job.id, "booth-a")]
        b = await jobs.claim(db, job.id, "booth-b", "local", lease=60.0)
        assert b is not None and b.attempts == 2

        # Booth A comes back: its lease is not renewed, its progress, failure and result refused.
        assert await jobs.renew_leases(db, "booth-a", {job.id: 1}, 60.0) == set()
        await jobs.progress(db, job.id, "uploading_output", 90, worker="booth-a", attempt=1)
        assert await jobs.fail(db, job.id, "x", "late", claim=("booth-a", 1)) is None
        assert await jobs.succeed(db, job.id, "booth-a", 1, ["a/out.jpg"], "a/out.jpg") is None
        current = await jobs.get(db, job.id)
        assert (current.status, current.claimed_by, current.progress_stage) == (
            "running", "booth-b", "preprocessing",
        )  # fmt: skip

        done = await jobs.succeed(db, job.id, "booth-b", 2, ["b/out.jpg"], "b/out.jpg")
        assert done is not None and done.status == "succeeded"
        # Repeating the save (its reply was lost) is harmless; a late try by A still refused.
        assert await jobs.succeed(db, job.id, "booth-b", 2, ["b/out.jpg"], "b/out.jpg") == done
        assert await jobs.succeed(db, job.id, "booth-a", 1, ["a/out.jpg"], "a/out.jpg") is None
        assert [(x.outcome, x.error_code) for x in await jobs.attempts(db, job.id)] == [
            ("interrupted", "interrupted"), ("succeeded", None),
        ]  # fmt: skip
        assert (await jobs.get(db, job.id)).best_output_key == "b/out.jpg"

        # One BOOTH_ID, two processes: the new one requeued and reclaimed the job (attempt 2)
        # while the old one, cut off, still ran attempt 1. The old one's result is refused.
        job2, _ = await jobs.create(db, dataclasses.replace(new, input_sha256="0" * 64))
        assert (await jobs.claim(db, job2.id, "booth-a", "kie", lease=60.0)) is not None
        assert await jobs.requeue_mine(db, "booth-a") == [job2.id]
        again = await jobs.claim(db, job2.id, "booth-a", "kie", lease=60.0)
        assert again is not None and again.attempts == 2
        assert await jobs.renew_leases(db, "booth-a", {job2.id: 1}, 60.0) == set()
        assert await jobs.succeed(db, job2.id, "booth-a", 1, ["old.jpg"], "old.jpg") is None
        assert await jobs.succeed(db, job2.id, "booth-a", 2, ["new.jpg"], "new.jpg") is not None
        assert [x.outcome for x in await jobs.attempts(db, job2.id)] == [
            "interrupted", "succeeded",
        ]  # fmt: skip


async def test_a_partitioned_box_that_comes_back_drops_its_result_and_the_job_succeeds_once(
    database_url: str, redis_url: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Booth A loses the database (not kie) while it styles a photo; booth B takes the job over
    once A's lease has run out. While B is still styling it, A's styling finishes and A's cable
    is plugged back: A must drop its result, and the job ends with exactly one success, B's."""
    caplog.set_level(logging.WARNING, logger="photobot.pool")
    data = tmp_path / "data"
    async with (
        open_cable(database_url) as cable,
        box(cable.via(database_url), redis_url, data, "booth-a") as a,
    ):
        session = await a.guest((await a.event())["id"])
        job_id = (await a.submit(session, provider="kie")).json()["id"]
        await wait_until("the job to run at booth-a's kie", lambda: running_at_kie(a, job_id))
        async with box(database_url, redis_url, data, "booth-b") as b:
            cable.cut()
            await wait_until("booth-b to take the job over", lambda: running_at_kie(b, job_id))
            a.kie.gate.set()  # A's styling finishes…
            [a_task] = a.kie.tasks.values()
            await wait_until("booth-a's kie task to finish", lambda: a_task.state == "success")
            cable.mend()  # …and A reaches the database again, with a result for a lost job
            await wait_until(
                "booth-a to let go of the job", lambda: job_id not in a.services.pool.in_flight
            )
            meanwhile = (await b.http.get(f"/jobs/{job_id}", headers=b.auth)).json()
            b.kie.gate.set()
            done = await b.wait_final(job_id, timeout=60)
            b_kie_calls = b.kie.calls["createTask"]
            b_request_ids = set(b.kie.tasks)
    # A completed nothing, nor wrote its progress over B's: B still had the job, at attempt 2.
    assert meanwhile["status"] == "running" and meanwhile["attempts"] == 2, meanwhile
    assert meanwhile["progress"]["stage"] == "ai_processing", meanwhile
    assert outcomes(meanwhile) == ["interrupted", None], meanwhile
    assert done["status"] == "succeeded", done
    assert outcomes(done) == ["interrupted", "succeeded"], done
    assert done["attemptsDetail"][1]["providerRequestId"] in b_request_ids
    assert a.kie.calls["createTask"] == 1 and b_kie_calls == 1
    dropped = [
        r for r in caplog.records
        if r.getMessage() == "job lease lost to another box: result dropped"
    ]  # fmt: skip
    assert [getattr(r, "jobId", None) for r in dropped] == [job_id]
