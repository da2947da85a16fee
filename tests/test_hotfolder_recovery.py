"""The hot folder across a kill -9 of the whole booth: a burst is being copied in while the
process dies; after the restart every file is handled exactly once (one job per photo, nothing
left, nothing misfiled)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.booth_process import Booth
from tests.test_recovery import PASSWORD, booth_env, jpeg, wait_for

pytestmark = pytest.mark.slow


def _files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_file()) if path.exists() else []


def test_kill_9_mid_burst_then_restart(server_tmp_path: Path) -> None:
    data_dir = server_tmp_path / "booth"
    hot = server_tmp_path / "hot"
    env = booth_env(HOTFOLDER_PATH=str(hot), FILE_STABILITY_DELAY_MS="500", BOOTH_ID="booth-1")
    first = Booth(data_dir, env=env)
    second = Booth(data_dir, env=env)
    try:
        first.start()
        with httpx.Client(base_url=first.url, timeout=10) as http:
            token = http.post("/auth/login", json={"password": PASSWORD}).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            event = http.post("/events", json={"name": "Recovery"}, headers=auth).json()
            guest = http.post(
                "/sessions",
                json={"eventId": event["id"], "name": "Ayu", "whatsapp": "08123456789"},
            ).json()
            r = http.post(
                "/booth/booth-1/active-session",
                json={"sessionId": guest["sessionId"], "eventId": event["id"]},
                headers=auth,
            )
            assert r.status_code == 200, r.text
        time.sleep(1.2)  # the embedded Redis writes its append-only file every second
        total = 40
        for i in range(total):
            (hot / f"IMG_{i:04}.JPG").write_bytes(jpeg(i))
            time.sleep(0.03)
            if i == 25:
                first.stop(signal.SIGKILL)  # mid-burst, with files in every stage
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL

        second.start()
        second.wait_healthy()
        processed = wait_for(
            "every file processed",
            lambda: (names := _files(hot / "processed")) and len(names) >= total and names,
            timeout=60,
        )
        assert len(processed) == total  # none twice (a second copy would be IMG_x-1.JPG)
        assert _files(hot) == [] and _files(hot / "orphan") == [] and _files(hot / "invalid") == []
        with httpx.Client(base_url=second.url, timeout=10) as http:
            token = http.post("/auth/login", json={"password": PASSWORD}).json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            recent = http.get("/booth/booth-1/recent-jobs?limit=200", headers=auth).json()
        jobs = recent["items"]
        assert len(jobs) == total
        assert {j["sessionId"] for j in jobs} == {guest["sessionId"]}
        assert second.stop(signal.SIGTERM) == 0
    finally:
        first.kill()
        second.kill()
