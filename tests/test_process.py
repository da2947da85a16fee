"""A real ``photobot run`` process with embedded defaults: ready, healthy, stops cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from photobot.db.migrate import load_migrations
from photobot.embedded import EmbeddedPostgres
from tests.booth_process import Booth, alive, clean_env, processes_mentioning

pytestmark = pytest.mark.slow

ACTORS = {
    "session_registry", "gallery_broadcaster", "ai_worker_pool", "image_optimizer",
    "job_dispatcher",
    "hotfolder_watcher", "cctv_poller",
}  # fmt: skip


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    # Not tmp_path: the embedded servers run as an unprivileged user when we are root, and
    # pytest's tmp root is private to root (see conftest.server_tmp_path).
    path = server_tmp_path / "booth-data"
    yield path
    for pid in processes_mentioning(str(path)):  # never leave a server behind a failed test
        subprocess.run(["kill", "-9", str(pid)], check=False)


def _stop_and_check_clean(booth: Booth) -> list[dict[str, Any]]:
    """SIGTERM, then check that every actor stopped within its grace and nothing is left
    behind; returns the booth's JSON log lines."""
    children = booth.children()
    assert len(children) >= 2  # at least the PostgreSQL postmaster and Redis
    # The deadline only catches a hang: how long a stop takes is a busy machine's business.
    code = booth.stop(signal.SIGTERM, timeout=120)
    stderr = booth.stderr()  # the pipe can be read once
    assert code == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    # Graceful, not the grace's safety net: no actor had to be cancelled (what a slow stop
    # would show; the seconds it took would not tell a slow machine from a stuck actor).
    assert [e["msg"] for e in logs if "cancelled after grace" in e["msg"]] == []
    assert {a for a in ACTORS if any(e["msg"] == f"actor {a} stopped" for e in logs)} == ACTORS
    assert [pid for pid in children if alive(pid)] == []
    assert processes_mentioning(str(booth.data_dir)) == []
    return logs


def test_run_is_healthy_and_sigterm_exits_clean(data_dir: Path) -> None:
    booth = Booth(data_dir, ["--demo"])
    try:
        booth.start()
        body = booth.wait_healthy()
        assert {a["name"] for a in body["actors"]} == ACTORS
        assert body["checks"]["database"]["backend"].startswith("embedded postgresql")
        assert body["checks"]["redis"]["backend"].startswith("embedded redis")
        assert body["checks"]["storage"]["backend"] == "local disk"
        comms = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in booth.children()}
        assert "postgres" in comms and any(c.startswith(("redis", "valkey")) for c in comms)
        logs = _stop_and_check_clean(booth)
        assert any(entry["msg"] == "shutting down gracefully" for entry in logs)
    finally:
        booth.kill()


def test_restart_on_the_same_data_dir_keeps_the_data(data_dir: Path) -> None:
    first = Booth(data_dir, ["--demo"])
    try:
        first.start()
        _stop_and_check_clean(first)
    finally:
        first.kill()
    secrets_before = (data_dir / "secrets.json").read_text()

    second = Booth(data_dir)
    try:
        second.start()
        second.wait_healthy()
        _stop_and_check_clean(second)
    finally:
        second.kill()
    assert (data_dir / "secrets.json").read_text() == secrets_before

    with EmbeddedPostgres(data_dir / "postgres") as pg:
        out = subprocess.run(
            [str(pg.bindir / "psql"), pg.url_for("photobot"), "-Atc",
             "select slug from events; select count(*) from schema_migrations"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
    assert out == ["demo", str(len(load_migrations()))]


def test_sigkill_then_restart_recovers(data_dir: Path) -> None:
    first = Booth(data_dir)
    try:
        first.start()
        first.stop(signal.SIGKILL)
    finally:
        first.kill()
    second = Booth(data_dir)
    try:
        second.start()
        second.wait_healthy()
        _stop_and_check_clean(second)
    finally:
        second.kill()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PORT": "eighty"}, "photobot: invalid setting PORT='eighty'"),
        ({"DATABASE_URL": "mysql://u:secret@h/db"}, "photobot: invalid setting DATABASE_URL:"),
        ({"S3_BUCKET": "x"}, "photobot: invalid settings: S3 storage is half configured"),
    ],
)
def test_broken_setting_exits_nonzero_with_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "photobot", "run", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, env=clean_env(**env), cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "secret" not in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was started


def test_unreachable_external_database_exits_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "photobot", "run", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env=clean_env(DATABASE_URL="postgresql://postgres@127.0.0.1:1/none"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("photobot: database unavailable")


def test_migrate_command_applies_and_reports(data_dir: Path) -> None:
    command = [sys.executable, "-m", "photobot", "migrate", "--data-dir", str(data_dir)]
    first = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"database schema at version {load_migrations()[-1].version}"
    again = subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert processes_mentioning(str(data_dir)) == []
