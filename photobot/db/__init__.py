"""PostgreSQL through asyncpg: the one adapter, and the only home of the asyncio bridge.

asyncpg is an asyncio library; Photobot is a Trio program. :meth:`Database.open` opens a
trio-asyncio loop for its own lifetime and every call crosses it with ``aio_as_trio``. Nothing
else in the code base imports asyncio, asyncpg or trio_asyncio.

A crossing costs about 200 µs here, so work that needs several statements should cross once:
:meth:`Database.run` hands an asyncio coroutine function a pooled connection inside one hop.
Short single statements use :meth:`fetch` and friends.

Errors: asyncpg and OS errors never leave this module; they become :mod:`photobot.errors`
(``Conflict`` for unique violations, ``InvalidInput`` for bad values, ``NotFound`` for a dangling
reference, ``DatabaseError`` for everything that is not the caller's fault).

Cancellation: a Trio cancel cancels the asyncio side of the call and returns at once, without
waiting for asyncpg's cleanup (see :func:`_detachable`); a transaction interrupted that way is
rolled back (shielded) and its connection returned to the pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import asyncpg
import trio
import trio_asyncio

from photobot.concurrency import sole
from photobot.errors import Conflict, DatabaseError, InvalidInput, NotFound, PhotobotError

log = logging.getLogger("photobot.db")

P = ParamSpec("P")
T = TypeVar("T")

Record = asyncpg.Record
Connection = asyncpg.Connection

_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    OSError,
    TimeoutError,
)


def translate(exc: BaseException) -> PhotobotError:
    """Map a driver error to a domain error (message safe to show: no DSN, no values)."""
    if isinstance(exc, PhotobotError):
        return exc
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        return Conflict(f"already exists ({exc.constraint_name})", code="duplicate")
    if isinstance(exc, asyncpg.exceptions.ForeignKeyViolationError):
        return NotFound(f"referenced row does not exist ({exc.constraint_name})")
    if isinstance(
        exc,
        (
            asyncpg.exceptions.CheckViolationError,
            asyncpg.exceptions.NotNullViolationError,
            asyncpg.exceptions.DataError,
        ),
    ):
        return InvalidInput(f"rejected by the database: {exc.__class__.__name__}")
    if isinstance(exc, _UNAVAILABLE):
        return DatabaseError(f"database unavailable: {exc.__class__.__name__}")
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        return DatabaseError(f"database error {exc.sqlstate}: {exc.__class__.__name__}")
    return DatabaseError(f"database error: {exc.__class__.__name__}")


async def _cross(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await trio_asyncio.aio_as_trio(_detachable)(fn, *args, **kwargs)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise translate(exc) from exc


def _log_stray_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's report of an error nobody awaited (e.g. asyncpg noticing, after the fact, that
    a connection to a server which has died was lost). trio-asyncio's default handler raises
    it into the loop's nursery, which would end the whole database bridge, and the booth with
    it, over a connection that is already gone: here it is logged instead."""
    exc = context.get("exception")
    log.warning(
        "asyncio: %s", context.get("message", "unhandled error"),
        extra={"error": f"{type(exc).__name__}: {exc}" if exc is not None else None},
    )  # fmt: skip


async def _detachable(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` as its own asyncio task; a cancel from Trio cancels it and returns at once.

    Without this a Trio deadline waited for asyncpg's cleanup of the cancelled call, which on a
    link that silently drops packets lasts ``command_timeout`` (a 2 s health check took 62 s).
    The task finishes its cancellation (the query is cancelled, its connection reset or
    discarded) in the background.
    """
    task = asyncio.ensure_future(fn(*args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_consume)
        raise


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late error of a call nobody waits for is not news


class _Queries:
    """Single-statement helpers, each one crossing the bridge once."""

    async def _conn_call(self, method: str, query: str, *args: Any) -> Any:
        raise NotImplementedError

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        return await self._conn_call("fetch", query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        return await self._conn_call("fetchrow", query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._conn_call("fetchval", query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        return await self._conn_call("execute", query, *args)

    async def executemany(self, query: str, args: Sequence[Sequence[Any]]) -> None:
        await self._conn_call("executemany", query, args)


class Transaction(_Queries):
    """A connection inside an open transaction; valid only within ``Database.transaction()``."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def _conn_call(self, method: str, query: str, *args: Any) -> Any:
        return await _cross(getattr(self._conn, method), query, *args)


class Database(_Queries):
    """A pool of asyncpg connections, used from Trio. Open with :meth:`open`."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, statement_timeout: float = 60.0) -> None:
        self._pool = pool
        self._dsn = dsn
        self._timeout = statement_timeout

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        statement_timeout: float = 60.0,
    ) -> AsyncIterator[Database]:
        """Open the bridge and a pool; close both on exit (in-flight calls are cancelled first).

        trio-asyncio's loop runs a nursery, which would wrap any exception passing through it
        (ours, or the caller's from inside the block) in an ExceptionGroup; a lone exception is
        unwrapped so callers see exactly what was raised.
        """
        try:
            async with trio_asyncio.open_loop() as loop:
                loop.set_exception_handler(_log_stray_error)
                pool = await _cross(
                    asyncpg.create_pool,
                    dsn,
                    min_size=min_size,
                    max_size=max_size,
                    timeout=connect_timeout,
                    command_timeout=statement_timeout,
                    # A broken connection is replaced on the next acquire, so the pool outlives
                    # a brief database restart instead of poisoning every later query.
                    max_inactive_connection_lifetime=300,
                )
                try:
                    yield cls(pool, dsn, statement_timeout)
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(5) as cs:
                        try:
                            await _cross(pool.close)
                        except PhotobotError:
                            pass
                    if cs.cancelled_caught:
                        pool.terminate()
        except BaseExceptionGroup as group:
            raise sole(group) from None

    async def _conn_call(self, method: str, query: str, *args: Any) -> Any:
        # Not the pool's own fetch(): it acquires without a timeout, and its release then
        # resets the connection without one, which on a link that drops packets never ends.
        # Here waiting for a connection and the statement are bounded, and a connection whose
        # statement timed out or was cancelled is dropped at once rather than reset (asyncpg
        # would first wait for the server to confirm the cancel, over that same bad link).
        async def on_asyncio() -> Any:
            conn = await self._pool.acquire(timeout=self._timeout)
            try:
                result = await getattr(conn, method)(query, *args)
            except (TimeoutError, asyncio.CancelledError, OSError, asyncpg.InterfaceError):
                conn.terminate()
                await self._pool.release(conn)  # closed: returns its slot without waiting
                raise
            except BaseException:
                await self._pool.release(conn)
                raise
            await self._pool.release(conn)
            return result

        return await _cross(on_asyncio)

    async def run(
        self, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, transaction: bool = True
    ) -> T:
        """Run an asyncio coroutine function with one pooled connection, in one crossing.

        With ``transaction=True`` it runs inside a transaction committed when ``fn`` returns.
        """

        async def on_asyncio() -> T:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)

        return await _cross(on_asyncio)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction spanning several Trio-side statements (one crossing each)."""
        conn = await _cross(self._pool.acquire, timeout=self._timeout)
        try:
            tr = conn.transaction()
            await _cross(tr.start)
            try:
                yield Transaction(conn)
            except BaseException:
                with trio.CancelScope(shield=True):
                    try:
                        await _cross(tr.rollback)
                    except PhotobotError:
                        pass
                raise
            else:
                await _cross(tr.commit)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await _cross(self._pool.release, conn)
                except PhotobotError:
                    pass

    async def check(self, timeout: float = 2.0) -> None:
        """Health: one round trip, or :class:`DatabaseError`."""
        with trio.move_on_after(timeout) as cs:
            await self.fetchval("select 1")
        if cs.cancelled_caught:
            raise DatabaseError(f"database did not answer within {timeout:.0f} s")

    @property
    def pool_size(self) -> int:
        return self._pool.get_size()


def from_record(cls: type[T], record: Record) -> T:
    """Build dataclass ``cls`` from a row, column by field name; UUIDs become strings (ids
    travel as text through the app and its JSON)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = record[f.name]
        values[f.name] = str(value) if isinstance(value, uuid.UUID) else value
    return cls(**values)


async def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_dsn`` if missing; return its DSN.

    Used for the embedded server, whose initdb only makes ``postgres``.
    """
    if not name.replace("_", "").isalnum():
        raise InvalidInput(f"bad database name {name!r}")

    async def on_asyncio() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            exists = await conn.fetchval("select 1 from pg_database where datname = $1", name)
            if not exists:
                try:
                    await conn.execute(f'create database "{name}"')
                except asyncpg.exceptions.DuplicateDatabaseError:
                    pass  # another booth process won the race
        finally:
            await conn.close()

    try:
        async with trio_asyncio.open_loop():
            await _cross(on_asyncio)
    except BaseExceptionGroup as group:
        raise sole(group) from None
    return with_database(admin_dsn, name)


def with_database(dsn: str, name: str) -> str:
    """The same server URL with another database name."""
    base, sep, query = dsn.partition("?")
    scheme, _, rest = base.partition("://")
    netloc = rest.split("/", 1)[0]
    return f"{scheme}://{netloc}/{name}" + (sep + query if sep else "")


__all__ = [
    "Connection",
    "Database",
    "Record",
    "Transaction",
    "ensure_database",
    "from_record",
    "translate",
    "with_database",
]
