"""Shared fixtures: real PostgreSQL and Redis servers for the whole suite.

The suite starts its own embedded servers (``photobot.embedded``; session-scoped, non-durable)
and fails, never skips, if it cannot.

Every test that uses ``database_url``/``redis_url`` (or ``postgres_server``/``redis_server``)
is parametrized by backend:

* ``embedded``: always; the suite's own servers;
* ``external``: only when ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` is set for a service the
  test uses. Under ``external`` each service uses its ``TEST_*_URL`` if set, else the embedded
  one, so a test using both services runs twice, not four times. An external URL that cannot be
  reached is an error, not a skip.

Fixtures:

``server_tmp_path``  function: an empty dir (on tmpfs when available, removed after the test)
    for the data of a server the test starts. Use it instead of ``tmp_path`` for embedded
    servers: as root they run as ``nobody``, and ``/tmp/pytest-of-root`` is reset to 0700 by
    every pytest session that starts on this machine (several run at once here), which would cut
    the server off from its files mid-run.
``embedded_postgres`` / ``embedded_redis``  session: the started servers.
``postgres_server``  session: ``PgServer(backend, admin_url, bindir)``; ``admin_url`` is the
    ``postgres`` database as a superuser, for tests that manage databases themselves.
``database_url``  function: URL of a fresh, empty database ``pbt_<pid>_<n>_<hex>`` (made from
    template0), dropped WITH (FORCE) afterwards. Uses the ``psql`` of the embedded bindir.
``redis_server``  session: URL of the Redis server.
``redis_url``  function: ``RedisTarget(url, prefix)``; the test must put every key under
    ``prefix`` (``pbt:<hex8>:``); afterwards keys matching ``prefix*`` are deleted (SCAN + DEL).
    Nothing is ever flushed: the external server is shared.

Blocking subprocess/redis-py code only: the app imports trio_asyncio, which patches asyncio.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from photobot.embedded import EmbeddedPostgres, EmbeddedRedis, find_pg_bindir, pid_alive

DB_ENV = "TEST_DATABASE_URL"
REDIS_ENV = "TEST_REDIS_URL"
EMBEDDED = "embedded"
EXTERNAL = "external"


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests may create databases on."""

    backend: str  # "embedded" or "external"
    admin_url: str
    bindir: Path

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{database}"))

    def psql(self, sql: str, *, url: str | None = None) -> str:
        """Run ``sql`` with psql (unaligned, tuples only); raise with psql's stderr on error."""
        proc = subprocess.run(
            [self.bindir / "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
             "-d", url or self.admin_url, "-c", sql],
            capture_output=True,
            text=True,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
            timeout=60,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"psql on {self.backend} server failed: {proc.stderr.strip()}")
        return proc.stdout.strip()


@dataclass(frozen=True)
class RedisTarget:
    """A Redis URL plus the key prefix this test owns."""

    url: str
    prefix: str


# --------------------------------------------------------------------------------------------
# parametrization


#: The browser tests run in a process of their own (see tests/browser/conftest.py); ``./dev test``
#: runs them with ``--confcutdir=tests/browser``, which keeps this file, and this line, out.
collect_ignore = ["browser"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = set(metafunc.fixturenames)
    uses_db = bool(names & {"database_url", "postgres_server"})
    uses_redis = bool(names & {"redis_url", "redis_server"})
    if not (uses_db or uses_redis):
        return
    backends = [EMBEDDED]
    if (uses_db and os.environ.get(DB_ENV)) or (uses_redis and os.environ.get(REDIS_ENV)):
        backends.append(EXTERNAL)
    metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """``embedded`` or ``external`` (see module docstring)."""
    return str(getattr(request, "param", EMBEDDED))


# --------------------------------------------------------------------------------------------
# embedded servers


def _server_tmp_base() -> str | None:
    # tmpfs: initdb takes ~0.6 s there versus 1.2-2.6 s on this machine's shared disk, and a
    # cluster copy 0.1 s versus ~1 s. The data is throwaway; per-test dirs are removed at once.
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


@pytest.fixture(scope="session")
def server_tmp_root() -> Iterator[Path]:
    """Session base dir for server data (``/dev/shm/photobot-test-<pid>-*``), removed at the end.

    Deliberately not under ``tmp_path_factory``: see ``server_tmp_path`` in the module docstring.
    """
    base = _server_tmp_base() or tempfile.gettempdir()
    # A session killed outright (its servers exit by their death signal) cannot clean up, and on
    # tmpfs its clusters would hold RAM until reboot: remove roots whose session pid is gone.
    for stale in Path(base).glob("photobot-test-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"photobot-test-{os.getpid()}-", dir=base))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server_tmp_path(server_tmp_root: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:40]
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=server_tmp_root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # tmpfs is RAM: do not keep clusters around


@pytest.fixture(scope="session")
def embedded_postgres(server_tmp_root: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(server_tmp_root / "session-pg", durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def embedded_redis(server_tmp_root: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(server_tmp_root / "session-redis", durable=False) as server:
        yield server


# --------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def postgres_server(backend: str, request: pytest.FixtureRequest) -> PgServer:
    external = os.environ.get(DB_ENV) if backend == EXTERNAL else None
    if external:
        server = PgServer(EXTERNAL, external, find_pg_bindir())
        error = None
        try:
            server.psql("select 1")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
        if error is not None:  # outside the except: no chained driver traceback in the report
            pytest.fail(f"{DB_ENV}={external} is not usable: {error}", pytrace=False)
        return server
    pg: EmbeddedPostgres = request.getfixturevalue("embedded_postgres")
    return PgServer(EMBEDDED, pg.url, pg.bindir)


_db_counter = itertools.count(1)


@pytest.fixture
def database_url(postgres_server: PgServer) -> Iterator[str]:
    # pid + counter make names unique within and across concurrent runs; the random suffix
    # avoids colliding with a database left behind by a crashed earlier run that had our pid.
    name = f"pbt_{os.getpid()}_{next(_db_counter)}_{secrets.token_hex(2)}"
    # template0: truly empty even if someone added objects to template1 on a shared server.
    postgres_server.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield postgres_server.url_for(name)
    finally:
        # FORCE: a test that leaked a connection must not make the drop fail or hang.
        postgres_server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------
# Redis


@pytest.fixture(scope="session")
def redis_server(backend: str, request: pytest.FixtureRequest) -> str:
    external = os.environ.get(REDIS_ENV) if backend == EXTERNAL else None
    if external:
        error = None
        try:
            with redis.Redis.from_url(external, socket_connect_timeout=5) as client:
                client.ping()
        except redis.RedisError as exc:
            error = str(exc)
        if error is not None:
            pytest.fail(f"{REDIS_ENV}={external} is not usable: {error}", pytrace=False)
        return external
    server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
    return server.url


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[RedisTarget]:
    # Hex and ':' only, so the prefix contains no SCAN glob metacharacters.
    target = RedisTarget(redis_server, f"pbt:{secrets.token_hex(4)}:")
    try:
        yield target
    finally:
        with redis.Redis.from_url(redis_server) as client:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{target.prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
