"""Benchmark: gallery page queries with 100 000 photos in one event (issue benchmark 3).

    .venv/bin/python -m tests.bench.bench_gallery_query                      # 100 000 photos
    .venv/bin/python -m tests.bench.bench_gallery_query --photos 5000 --samples 100  # smoke run

What runs: embedded PostgreSQL and Redis (``durable=False``, data on tmpfs when there is one),
the booth's services with local storage (HMAC-signed URLs), and the real app under Hypercorn on
127.0.0.1 — no actors, nothing else competing. The data is made with INSERT … SELECT in
PostgreSQL: ``--photos`` photos in the measured event spread over an 8-hour evening (pairs share
a ``created_at``, so the ``id`` tie-break is exercised), 20 % more in a second event (they share
the index), 95 % with all derivatives (5 URLs to sign per photo) and 70 % from AI jobs, about
3 likes per photo (300 000 rows at 100 000 photos) and a comment on every third; then ANALYZE.

What is timed, at ``--samples`` random positions each (cursors drawn from the event's photos,
``limit`` 50, a guest's ``X-Device-Id`` given so ``likedByMe`` is computed), after a warm-up:

1. the query function :func:`photobot.gallery.page`: one bridge crossing, two statements (the
   event row — with the visibility horizon for ``since`` — then the page with its like and
   comment counts);
2. full HTTP requests ``GET /api/gallery/<slug>/photos?since=|before=&limit=50``, one at a
   time: the server-side handler time (ASGI call → last body byte handed to Hypercorn: event
   lookup, query, URL signing, JSON) and the client's round trip.

``since`` at a random cursor returns the 50 photos just newer than it (a client catching up);
``before`` the 50 just older (infinite scroll). It prints p50/p95/p99 of each, the plans of
both queries (EXPLAIN ANALYZE, which must use ``photos_event_keyset``), the whole handler's
p95 (the URLs of a page at a random position are not in the signed-URL cache yet, so this is
the worst case; ~220 URLs to sign), and as its last line the p95 of the page queries (1.)
against the 10 ms goal.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from photobot import gallery
from photobot.config import load_settings
from photobot.db import Database, ensure_database
from photobot.embedded import open_embedded_postgres, open_embedded_redis
from photobot.root import Services, open_services
from tests.bench.common import bench_dirs, percentile
from web.app import create_asgi

LIMIT = 50
DEVICE = "bench-device-0001"
EVENING_SECONDS = 8 * 3600


def summary(name: str, seconds: Sequence[float]) -> str:
    ms = [1000 * s for s in seconds]
    return (
        f"  {name:<34} p50 {percentile(ms, 50):6.2f} ms   p95 {percentile(ms, 95):6.2f} ms"
        f"   p99 {percentile(ms, 99):6.2f} ms   max {max(ms):6.2f} ms"
    )


class HandlerTimer:
    """ASGI wrapper: how long each HTTP request spends in the app, up to its last body byte."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.samples: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.samples.append(time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, timed_send)


# -- data --------------------------------------------------------------------------------------


async def make_data(db: Database, photos: int) -> tuple[uuid.UUID, str]:
    """The measured event (id, slug) with ``photos`` photos, likes and comments; see above."""
    slug = "bench-gallery"
    event_id = await db.fetchval(
        "insert into events (slug, name) values ($1, 'Gallery bench') returning id", slug
    )
    other = await db.fetchval(
        "insert into events (slug, name) values ('bench-other', 'Other') returning id"
    )
    spacing = EVENING_SECONDS / photos
    for ev, n in ((event_id, photos), (other, photos // 5)):
        await db.execute(
            """insert into photos (event_id, source, original_key, content_type, size_bytes,
                   width, height, optimized_key, thumb_small_key, thumb_medium_key,
                   thumb_large_key, derivatives_ready_at, created_at)
               select $1::uuid, case when g % 10 < 7 then 'job' else 'upload' end,
                      'events/' || $1::text || '/2025-01-31/photos/' || md5(g::text) || '.jpg',
                      'image/jpeg', 8000000, 6000, 4000,
                      case when g % 20 <> 0 then 'optimized/' || md5(g::text) || '.webp' end,
                      case when g % 20 <> 0 then 'thumbs/s/' || md5(g::text) || '.webp' end,
                      case when g % 20 <> 0 then 'thumbs/m/' || md5(g::text) || '.webp' end,
                      case when g % 20 <> 0 then 'thumbs/l/' || md5(g::text) || '.webp' end,
                      case when g % 20 <> 0 then now() end,
                      now() - interval '8 hours 1 minute'
                            + (g / 2) * 2 * $3::float8 * interval '1 second'
                 from generate_series(1, $2::int) g""",
            ev,
            n,
            spacing,
        )
    await db.execute(
        """insert into photo_likes (photo_id, device_id)
           select p.id, 'device-' || d
             from photos p cross join lateral generate_series(1, (random() * 6)::int) d
            where p.event_id = $1""",
        event_id,
    )
    await db.execute(
        """insert into photo_comments (photo_id, device_id, author_name, body)
           select id, 'device-1', 'Guest', 'What a lovely photo!'
             from photos where event_id = $1 and get_byte(uuid_send(id), 15) % 3 = 0""",
        event_id,
    )
    await db.execute(  # the benchmark's guest liked one photo in seven
        "insert into photo_likes (photo_id, device_id) select id, $2 from photos"
        " where event_id = $1 and get_byte(uuid_send(id), 14) % 7 = 0 on conflict do nothing",
        event_id,
        DEVICE,
    )
    await db.execute("vacuum analyze photos")
    await db.execute("vacuum analyze photo_likes")
    await db.execute("vacuum analyze photo_comments")
    return event_id, slug


async def random_cursors(db: Database, event_id: uuid.UUID, n: int) -> list[gallery.Cursor]:
    rows = await db.fetch(
        "select created_at, id from photos where event_id = $1 and deleted_at is null"
        " order by random() limit $2",
        event_id,
        n,
    )
    return [gallery.Cursor(r["created_at"], r["id"]) for r in rows]


async def explain(db: Database, event_id: uuid.UUID, cursor: gallery.Cursor) -> dict[str, str]:
    plans = {}
    args = (event_id, DEVICE, LIMIT + 1, cursor.created_at, cursor.id)
    for name, sql, extra in (
        ("since", gallery.SINCE_SQL, (gallery.now_utc(),)),
        ("before", gallery.BEFORE_SQL, ()),
    ):
        rows = await db.fetch("explain (analyze, buffers) " + sql, *args, *extra)
        plan = "\n".join(r[0] for r in rows)
        if "photos_event_keyset" not in plan or "Seq Scan on photos" in plan:
            raise SystemExit(
                f"bench_gallery_query: the {name} query does not use the index:\n{plan}"
            )
        plans[name] = plan
    return plans


# -- timing -------------------------------------------------------------------------------------


async def time_functions(
    db: Database, event_id: uuid.UUID, cursors: list[gallery.Cursor]
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"since": [], "before": []}
    for cursor in cursors:
        for kind in ("since", "before"):
            t = time.perf_counter()
            await gallery.page(db, event_id, limit=LIMIT, device_id=DEVICE, **{kind: cursor})
            out[kind].append(time.perf_counter() - t)
    return out


async def time_http(
    http: httpx.AsyncClient, timer: HandlerTimer, slug: str, cursors: list[gallery.Cursor]
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    server: dict[str, list[float]] = {"since": [], "before": []}
    client: dict[str, list[float]] = {"since": [], "before": []}
    url = f"/api/gallery/{slug}/photos"
    for cursor in cursors:
        for kind in ("since", "before"):
            params = {kind: cursor.encode(), "limit": str(LIMIT)}
            before = len(timer.samples)
            t = time.perf_counter()
            r = await http.get(url, params=params, headers={"X-Device-Id": DEVICE})
            client[kind].append(time.perf_counter() - t)
            if r.status_code != 200:
                raise SystemExit(f"bench_gallery_query: HTTP {r.status_code}: {r.text[:200]}")
            body = r.json()
            if len(body["photos"]) > LIMIT:
                raise SystemExit("bench_gallery_query: page larger than the limit")
            assert len(timer.samples) == before + 1
            server[kind].append(timer.samples[-1])
    return server, client


async def time_hot(
    http: httpx.AsyncClient, timer: HandlerTimer, slug: str, n: int
) -> dict[str, list[float]]:
    """What most requests are: the newest page (every guest opening the gallery) and a poll
    with ``since`` at the top that finds nothing new; server-side handler time."""
    out: dict[str, list[float]] = {"newest page": [], "poll (nothing new)": []}
    url = f"/api/gallery/{slug}/photos"
    top = (await http.get(url, params={"limit": str(LIMIT)})).json()["newestCursor"]
    for _ in range(n):
        for name, params in (
            ("newest page", {"limit": str(LIMIT)}),
            ("poll (nothing new)", {"since": top, "limit": str(LIMIT)}),
        ):
            r = await http.get(url, params=params, headers={"X-Device-Id": DEVICE})
            if r.status_code != 200:
                raise SystemExit(f"bench_gallery_query: HTTP {r.status_code}: {r.text[:200]}")
            out[name].append(timer.samples[-1])
    return out


async def bench(args: argparse.Namespace, servers: Path, work: Path) -> None:
    async with (
        open_embedded_postgres(servers / "postgres", durable=False) as pg,
        open_embedded_redis(servers / "redis", durable=False) as rd,
    ):
        dsn = await ensure_database(pg.url, "photobot")
        settings = load_settings(
            database_url=dsn, redis_url=rd.url, operator_password="bench-gallery-password",
            database_statement_timeout_seconds=600,  # seeding 100k photos is one statement
        )  # fmt: skip
        async with open_services(settings, work / "data") as services, trio.open_nursery() as inner:
            t = time.perf_counter()
            event_id, slug = await make_data(services.db, args.photos)
            counts = await services.db.fetchrow(
                "select (select count(*) from photos where event_id = $1) as photos,"
                " (select count(*) from photos) as all_photos,"
                " (select count(*) from photo_likes) as likes,"
                " (select count(*) from photo_comments) as comments",
                event_id,
            )
            assert counts is not None
            print(
                f"data: {counts['photos']:,} photos in the event ({counts['all_photos']:,} in "
                f"all), {counts['likes']:,} likes, {counts['comments']:,} comments, made in "
                f"{time.perf_counter() - t:.1f} s"
            )
            cursors = await random_cursors(services.db, event_id, args.samples + args.warmup)
            warm, timed = cursors[: args.warmup], cursors[args.warmup :]
            plans = await explain(services.db, event_id, timed[0])

            await time_functions(services.db, event_id, warm)
            functions = await time_functions(services.db, event_id, timed)
            horizon = []
            for _ in range(len(timed)):
                t = time.perf_counter()
                await services.db.fetchval(gallery.HORIZON_SQL, gallery.HORIZON_CAP)
                horizon.append(time.perf_counter() - t)

            timer = HandlerTimer(create_asgi(services))
            server, client = await _serve_and_time(inner, services, timer, slug, warm, timed)

    cores = os.cpu_count() or 1
    print(f"{len(timed)} random positions, limit {LIMIT}, one request at a time, {cores} cores")
    print("query function photobot.gallery.page (one bridge crossing, counts included):")
    print(summary("since", functions["since"]))
    print(summary("before", functions["before"]))
    print(summary("visibility horizon alone (since)", horizon))
    print("HTTP GET /api/gallery/<slug>/photos, server-side handler time:")
    print(summary("since", server["since"]))
    print(summary("before", server["before"]))
    print("  the most frequent requests (signed URLs reused):")
    for name in ("newest page", "poll (nothing new)"):
        print(summary(f"  {name}", server[name]))
    print("HTTP round trip seen by the client (httpx in the same process):")
    print(summary("since", client["since"]))
    print(summary("before", client["before"]))
    if args.plans:
        for name, plan in plans.items():
            print(f"plan ({name}):\n{plan}")
    else:
        for name, plan in plans.items():
            scan = next(line.strip() for line in plan.splitlines() if "photos_event_keyset" in line)
            total = next(line.strip() for line in plan.splitlines() if "Execution Time" in line)
            print(f"plan ({name}): {scan}; {total}")
    print(
        f"whole HTTP handler at random positions (URLs signed afresh): p95 since "
        f"{1000 * percentile(server['since'], 95):.1f} ms, before "
        f"{1000 * percentile(server['before'], 95):.1f} ms; the newest page "
        f"{1000 * percentile(server['newest page'], 95):.1f} ms"
    )
    print(
        f"gallery query: p95 since {1000 * percentile(functions['since'], 95):.1f} ms, "
        f"before {1000 * percentile(functions['before'], 95):.1f} ms at {args.photos:,} photos "
        "(goal ≤ 10 ms)"
    )


async def _serve_and_time(
    inner: trio.Nursery,
    services: Services,
    timer: HandlerTimer,
    slug: str,
    warm: list[gallery.Cursor],
    timed: list[gallery.Cursor],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # type: ignore[assignment]
    stop = trio.Event()
    binds = await inner.start(functools.partial(serve, timer, config, shutdown_trigger=stop.wait))
    try:
        async with httpx.AsyncClient(base_url=binds[0], timeout=30) as http:
            await time_http(http, timer, slug, warm)
            server, client = await time_http(http, timer, slug, timed)
            server |= await time_hot(http, timer, slug, len(timed))
            return server, client
    finally:
        stop.set()


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--photos", type=int, default=100_000, help="photos in the event")
    ap.add_argument("--samples", type=int, default=1000, help="timed positions per query kind")
    ap.add_argument("--warmup", type=int, default=100, help="untimed positions first")
    ap.add_argument("--plans", action="store_true", help="print the whole EXPLAIN ANALYZE plans")
    args = ap.parse_args()
    if args.photos < 2 or args.samples < 1 or args.warmup < 0:
        ap.error("--photos must be >= 2 and --samples >= 1")
    if args.samples + args.warmup > args.photos:
        ap.error("--samples + --warmup must not exceed --photos")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    random.seed(1)
    with bench_dirs() as (servers, work):
        trio.run(bench, args, servers, work)


if __name__ == "__main__":
    main()
