"""The booth's health, as ``GET /health`` reports it.

``down`` (HTTP 503) when the database — the source of truth — does not answer; ``degraded``
(HTTP 200) when Redis or storage do not answer or an actor is not running; else ``ok``. Checks
run concurrently, each bounded by its own timeout, so a hung dependency costs at most that.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

import photobot
from photobot.errors import PhotobotError

if TYPE_CHECKING:
    from photobot.root import Services

CHECK_TIMEOUT = 2.0
#: Supervisor events (started, crashed, restarting in N s, gave up) shown, newest last.
RECENT_EVENTS = 20


async def _probe(check: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    started = trio.current_time()
    try:
        with trio.fail_after(CHECK_TIMEOUT):
            await check()
    except trio.TooSlowError:
        return {"status": "down", "error": f"no answer within {CHECK_TIMEOUT:.0f} s"}
    except PhotobotError as exc:
        return {"status": "down", "error": exc.message}
    return {"status": "ok", "latencyMs": round((trio.current_time() - started) * 1000, 1)}


async def report(services: Services) -> tuple[dict[str, Any], int]:
    checks: dict[str, dict[str, Any]] = {}

    async def run(name: str, check: Callable[[], Awaitable[None]]) -> None:
        checks[name] = await _probe(check) | {"backend": services.backends[name]}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "database", services.db.check)
        nursery.start_soon(run, "redis", services.cache.check)
        nursery.start_soon(run, "storage", services.storage.check)

    actors = [
        {
            "name": s.name,
            "state": s.state,
            "restartType": s.restart_type,
            "restarts": s.restarts,
            "lastError": s.last_error,
            "nextRestartInSeconds": s.next_restart_in,
        }
        for s in services.supervisor.status()
    ]
    if checks["database"]["status"] != "ok":
        status = "down"
    elif any(c["status"] != "ok" for c in checks.values()) or any(
        a["state"] != "running" for a in actors
    ):
        status = "degraded"
    else:
        status = "ok"
    now = trio.current_time()
    recent = [
        {
            "kind": e.kind,
            "actor": e.child,
            "secondsAgo": round(now - e.at, 1),
            "error": e.error,
            "delaySeconds": None if e.delay is None else round(e.delay, 2),
        }
        for e in services.supervisor.events[-RECENT_EVENTS:]
    ]
    body = {
        "status": status,
        "version": photobot.__version__,
        "boothId": services.settings.booth_id,
        "uptimeSeconds": round(time.time() - services.started_at, 1),
        "checks": checks,
        "actors": actors,
        "gallery": services.gallery.stats(),
        "cctv": services.cctv.stats(services.wiring.clip_trigger[1]),
        "supervisorEvents": recent,
    }
    return body, 503 if status == "down" else 200


__all__ = ["report"]
