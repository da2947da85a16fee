"""The database adapter and migrations, against real PostgreSQL servers (embedded, and the
machine's own when TEST_DATABASE_URL is set)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from photobot.db import Database, with_database
from photobot.db.migrate import Migration, load_migrations, migrate
from photobot.errors import Conflict, DatabaseError, InvalidInput, NotFound

EXPECTED_TABLES = {
    "events", "operators", "booths", "guest_sessions", "booth_sessions", "jobs", "job_attempts",
    "photos", "photo_likes", "photo_comments", "image_jobs", "cameras", "clip_requests", "clips",
    "schema_migrations",
}  # fmt: skip


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    async with Database.open(database_url, max_size=4) as database:
        await migrate(database)
        yield database


async def test_migrations_create_the_whole_model_and_rerun_is_a_noop(database_url: str) -> None:
    async with Database.open(database_url) as database:
        first = await migrate(database)
        assert first == [m.version for m in load_migrations()]
        assert await migrate(database) == []
        tables = {
            r["table_name"]
            for r in await database.fetch(
                "select table_name from information_schema.tables where table_schema='public'"
            )
        }
    assert tables == EXPECTED_TABLES


async def test_concurrent_migrations_take_turns(database_url: str) -> None:
    applied: list[list[int]] = []

    async def one() -> None:
        async with Database.open(database_url, max_size=1) as database:
            applied.append(await migrate(database))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
    assert sorted(applied, key=len) == [[], [], [m.version for m in load_migrations()]]


async def test_an_edited_migration_is_refused(db: Database) -> None:
    original = load_migrations()[0]
    edited = Migration(original.version, original.name, original.sql + "\n-- edited")
    with pytest.raises(DatabaseError, match="changed after it was applied"):
        await migrate(db, [edited])


async def test_driver_errors_become_domain_errors(db: Database) -> None:
    await db.execute("insert into events (slug, name) values ('party', 'Party')")
    with pytest.raises(Conflict) as dup:
        await db.execute("insert into events (slug, name) values ('party', 'Again')")
    assert dup.value.code == "duplicate"
    with pytest.raises(InvalidInput):
        await db.execute("insert into events (slug, name) values ('Not A Slug!', 'x')")
    with pytest.raises(NotFound):
        await db.execute(
            "insert into booths (id, event_id) values ('b1', $1)",
            "00000000-0000-0000-0000-000000000000",
        )


async def test_transaction_commits_and_rolls_back(db: Database) -> None:
    async with db.transaction() as tx:
        await tx.execute("insert into events (slug, name) values ('kept', 'Kept')")
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("insert into events (slug, name) values ('gone', 'Gone')")
            raise RuntimeError("abort")
    slugs = [r["slug"] for r in await db.fetch("select slug from events order by slug")]
    assert slugs == ["kept"]


async def test_cancelled_transaction_rolls_back_and_frees_its_connection(db: Database) -> None:
    with trio.move_on_after(0.5):
        async with db.transaction() as tx:
            await tx.execute("insert into events (slug, name) values ('half', 'Half')")
            await tx.execute("select pg_sleep(5)")
    assert await db.fetchval("select count(*) from events") == 0
    # Every connection is back in the pool: four more transactions can open at once.
    async with trio.open_nursery() as nursery:
        for i in range(4):

            async def one(i: int = i) -> None:
                async with db.transaction() as tx:
                    await tx.execute("insert into events (slug, name) values ($1, 'x')", f"e{i}")

            nursery.start_soon(one)
    assert await db.fetchval("select count(*) from events") == 4


async def test_run_crosses_once_for_a_batch(db: Database) -> None:
    async def batch(conn) -> int:  # type: ignore[no-untyped-def]
        await conn.executemany(
            "insert into events (slug, name) values ($1, $2)", [(f"s{i}", "n") for i in range(50)]
        )
        return await conn.fetchval("select count(*) from events")

    assert await db.run(batch) == 50


async def test_jobs_enforce_one_final_state_shape(db: Database) -> None:
    event_id = await db.fetchval("insert into events (slug, name) values ('j', 'J') returning id")
    insert = """insert into jobs (event_id, source, input_key, input_sha256, input_type,
                                  input_bytes, status, finished_at)
                values ($1, 'operator', 'k', $2, 'image/jpeg', 1, $3, $4)"""
    sha = "a" * 64
    await db.execute(insert, event_id, sha, "queued", None)
    with pytest.raises(InvalidInput):  # a final state needs finished_at
        await db.execute(insert, event_id, sha, "succeeded", None)
    with pytest.raises(InvalidInput):
        await db.execute(insert, event_id, sha, "exploded", None)


async def test_unreachable_database_is_a_domain_error() -> None:
    with pytest.raises(DatabaseError):
        async with Database.open("postgresql://postgres@127.0.0.1:1/x", connect_timeout=2):
            pass


async def test_check_reports_health(db: Database) -> None:
    await db.check()


def test_with_database_swaps_only_the_name() -> None:
    assert (
        with_database("postgresql://u:p@h:5/old?sslmode=disable", "new")
        == "postgresql://u:p@h:5/new?sslmode=disable"
    )
