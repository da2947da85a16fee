"""Versioned SQL migrations, applied at start-up and by ``photobot migrate``.

Files ``migrations/NNNN_name.sql`` are applied in order, each in its own transaction, and
recorded in ``schema_migrations`` with a checksum. Re-running is a no-op. Several booth processes
sharing one database may start together: a session advisory lock makes them take turns. A file
whose content changed after it was applied is refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

from photobot.db import Database
from photobot.errors import DatabaseError

log = logging.getLogger("photobot.db")

# Arbitrary but fixed: the advisory lock id every Photobot process uses for migrations.
_LOCK_ID = 0x70686F746F626F74  # "photobot"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("photobot.db").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"duplicate migration versions: {versions}")
    return found


async def migrate(db: Database, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations; return the versions applied now."""
    todo = load_migrations() if migrations is None else migrations

    async def on_asyncio(conn: asyncpg.Connection) -> list[int]:
        await conn.execute("select pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                """create table if not exists schema_migrations (
                       version integer primary key,
                       name text not null,
                       checksum text not null,
                       applied_at timestamptz not null default now())"""
            )
            rows = await conn.fetch("select version, checksum from schema_migrations")
            applied = {r["version"]: r["checksum"] for r in rows}
            done = []
            for m in todo:
                if m.version in applied:
                    if applied[m.version] != m.checksum:
                        raise DatabaseError(
                            f"migration {m.version}_{m.name} changed after it was applied; "
                            "add a new migration instead of editing an old one"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "insert into schema_migrations (version, name, checksum) values ($1,$2,$3)",
                        m.version,
                        m.name,
                        m.checksum,
                    )
                done.append(m.version)
            return done
        finally:
            await conn.execute("select pg_advisory_unlock($1)", _LOCK_ID)

    done = await db.run(on_asyncio, transaction=False)
    if done:
        log.info("applied migrations %s", done, extra={"versions": done})
    return done
