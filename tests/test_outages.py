"""The whole booth with its database or Redis cable pulled for a while (tests/standins/cable.py):
no actor crashes or restarts, /health says what is down, and it is all "ok" again once the
cable is back. A crash per failed query would use up the supervisor's restart intensity within
a minute's outage and stop the booth for the rest of the evening."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.live_booth import Live, open_live
from tests.standins.cable import Cable, open_cable

#: Long enough for every actor's loop to meet the outage several times.
OUTAGE = 8.0


@asynccontextmanager
async def booth_behind_cables(
    database_url: str, redis_url: Any, tmp_path: Path, **settings: Any
) -> AsyncIterator[tuple[Live, Cable, Cable]]:
    async with (
        open_cable(database_url) as db_cable,
        open_cable(redis_url.url) as redis_cable,
        open_live(
            db_cable.via(database_url), replace(redis_url, url=redis_cable.via(redis_url.url)),
            tmp_path / "data", hotfolder_path=tmp_path / "hot", booth_id="booth-1",
            batch_interval_seconds=1, auto_batch_enabled=True, temp_video_dir=tmp_path / "cctv",
            **settings,
        ) as live,
    ):  # fmt: skip
        yield live, db_cable, redis_cable


async def health(live: Live) -> tuple[int, dict[str, Any]]:
    with trio.fail_after(15):
        r = await live.http.get("/health")
    return r.status_code, r.json()


def restarts(body: dict[str, Any]) -> dict[str, int]:
    return {a["name"]: a["restarts"] for a in body["actors"]}


async def until_ok(live: Live) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            status, body = await health(live)
            if status == 200 and body["status"] == "ok":
                return body
            await trio.sleep(0.2)


@pytest.mark.parametrize("pulled", ["database", "redis"])
async def test_an_outage_crashes_no_actor(
    database_url: str, redis_url: Any, tmp_path: Path, pulled: str
) -> None:
    async with booth_behind_cables(database_url, redis_url, tmp_path) as (live, db, cache):
        # Work in every actor's hands: a queued job for the dispatcher's sweep and the pool.
        event = await live.event()
        session = await live.guest(event["id"])
        before = await until_ok(live)
        assert set(restarts(before).values()) == {0}
        cable = db if pulled == "database" else cache
        cable.cut()
        await trio.sleep(OUTAGE / 2)
        status, during = await health(live)
        assert status == 503 or during["status"] != "ok"
        check = "database" if pulled == "database" else "redis"
        assert during["checks"][check]["status"] == "down", during["checks"]
        await trio.sleep(OUTAGE / 2)
        cable.mend()
        after = await until_ok(live)
        assert restarts(after) == restarts(before), after["actors"]
        assert all(a["state"] == "running" for a in after["actors"]), after["actors"]
        # And the booth works: a capture makes a job that succeeds.
        r = await live.submit(session)
        assert r.status_code == 201, r.text
        assert (await live.wait_final(r.json()["id"]))["status"] == "succeeded"


async def test_a_database_link_that_drops_packets_gets_answers_not_hangs(
    database_url: str, redis_url: Any, tmp_path: Path
) -> None:
    """Worse than a pulled cable: the route is lost and nothing is reset, so only timeouts can
    tell. /health still answers within its check's 2 s, and guests and operators get a 503 in
    our error shape within the statement timeout instead of a spinner; it all works again the
    moment the link does."""
    async with booth_behind_cables(
        database_url, redis_url, tmp_path, database_statement_timeout_seconds=3
    ) as (live, db, _cache):
        event = await live.event()
        session = await live.guest(event["id"])
        await until_ok(live)
        db.blackhole()
        with trio.fail_after(8):  # a hang guard, not a measurement
            status, body = await health(live)
        assert status == 503 and body["checks"]["database"]["status"] == "down"
        with trio.fail_after(15):
            refused = await live.submit(session, key="blackholed-1")
            registered = await live.http.post(
                "/sessions", json={"eventId": event["id"], "name": "Dewi", "whatsapp": "0812345678"}
            )
        for r in (refused, registered):
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
        db.mend()
        await until_ok(live)
        resent = await live.submit(session, key="blackholed-1")
        assert resent.status_code == 201, resent.text
        assert (await live.wait_final(resent.json()["id"]))["status"] == "succeeded"
