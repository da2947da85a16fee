"""Recovery of real ``photobot run`` processes: kill -9 and SIGTERM with kie.ai jobs in flight,
then a restart on the same data dir; and the README's curl flow with the local provider.

Everything goes through HTTP, as an operator's browser or curl would. The kie.ai stand-in runs
as its own process (``python -m tests.standins.kie``) and fetches the input photo from the
booth's signed URL, so the booth listens on a fixed port known up front (``PUBLIC_BASE_URL``).

Timing: our KieProvider sleeps 2 s before its first poll, then 3 s, 4.5 s, … A stand-in with
``--polls 20`` keeps a task ``generating`` for minutes (a job stays ``running`` as long as the
test needs); one with ``--polls 1`` finishes a task at the first poll (~2 s a job).
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from tests.booth_process import Booth, alive, clean_env, proc_ppid, processes_mentioning

pytestmark = pytest.mark.slow

PASSWORD = "recovery-test-password"
KIE_KEY = "kie-recovery-key-123"
REPO = Path(__file__).resolve().parent.parent
FINAL = ("succeeded", "failed", "canceled")
#: Settings of the parent environment that would change what these tests exercise.
_DROPPED = (
    "KIE_", "COMFY_", "AI_PROVIDER", "WORKER_", "OPERATOR", "SHUTDOWN_", "PUBLIC_BASE_URL",
    "BOOTH_ID", "JWT_", "LOG_LEVEL", "SESSION_TTL",
)  # fmt: skip

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# helpers


def booth_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith(_DROPPED)}
    env.update(OPERATOR_PASSWORD=PASSWORD, **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jpeg(n: int) -> bytes:
    """A small JPEG, distinct per ``n`` (distinct sha256)."""
    img = Image.new("RGB", (320, 240), (40 + 30 * n % 200, 120, 200 - 20 * n % 180))
    img.putpixel((n % 320, 0), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.1) -> T:
    """Call ``probe`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


@dataclass
class KieProcess:
    """``python -m tests.standins.kie`` as a child process."""

    log_path: Path
    polls: int
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self, timeout: float = 20) -> KieProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.standins.kie", "--port", "0",
                 "--api-key", KIE_KEY, "--polls", str(self.polls)],
                stdout=subprocess.PIPE, stderr=log, cwd=REPO,
                env={k: v for k, v in os.environ.items() if not k.startswith("KIE_")},
            )  # fmt: skip
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"kie stand-in did not start: {line!r} {self.log_path.read_text()}")
        self.url = line.removeprefix("listening on ").strip()
        return self

    def state(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/__standin__/state", timeout=5)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Operator:
    """An operator talking to one running booth over HTTP."""

    base_url: str
    http: httpx.Client = field(init=False)
    token: str = ""

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=20)

    def __enter__(self) -> Operator:
        r = self.http.post("/auth/login", json={"password": PASSWORD})
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def event(self, name: str) -> str:
        r = self.http.post("/events", json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def guest(self, event_ref: str, name: str = "Ayu Lestari") -> dict[str, Any]:
        r = self.http.post(
            "/sessions", json={"eventId": event_ref, "name": name, "whatsapp": "08123456789"}
        )
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def submit(self, session: dict[str, Any], image: bytes, **fields: str) -> dict[str, Any]:
        r = self.http.post(
            "/jobs",
            data={"sessionId": session["sessionId"], "eventId": session["eventId"], **fields},
            files={"image": ("shot.jpg", image, "image/jpeg")},
        )
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def statuses(self, ids: list[str]) -> dict[str, str]:
        return {job_id: self.job(job_id)["status"] for job_id in ids}

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def probe() -> dict[str, dict[str, Any]] | None:
            jobs = {job_id: self.job(job_id) for job_id in ids}
            return jobs if all(j["status"] in FINAL for j in jobs.values()) else None

        return wait_for(f"jobs {ids} to be final", probe, timeout, every=0.25)


@pytest.fixture
def data_dir(server_tmp_path: Path) -> Iterator[Path]:
    # Not tmp_path: the embedded servers run as `nobody` when we are root (conftest).
    path = server_tmp_path / "booth-data"
    yield path
    for pid in processes_mentioning(str(path)):  # never leave a server behind a failed test
        subprocess.run(["kill", "-9", str(pid)], check=False)


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[Callable[[int], KieProcess]]:
    started: list[KieProcess] = []

    def start(polls: int) -> KieProcess:
        kie = KieProcess(tmp_path / f"kie-{len(started)}.log", polls)
        started.append(kie)
        return kie.start()

    try:
        yield start
    finally:
        for kie in started:
            kie.stop()
        assert all(kie.proc is None or kie.proc.poll() is not None for kie in started)


def stop_cleanly(booth: Booth, within: float) -> float:
    """SIGTERM; assert exit 0 within ``within`` s and no child left; return the seconds taken."""
    children = booth.children()
    assert len(children) >= 2  # at least the PostgreSQL postmaster and Redis
    started = time.monotonic()
    code = booth.stop(signal.SIGTERM, timeout=within + 10)
    elapsed = time.monotonic() - started
    assert code == 0, booth.stderr()
    assert elapsed < within, f"stopping took {elapsed:.1f} s"
    assert [pid for pid in children if alive(pid)] == []
    assert processes_mentioning(str(booth.data_dir)) == []
    return elapsed


def log_messages(booth: Booth) -> list[str]:
    return [json.loads(line)["msg"] for line in booth.stderr().splitlines() if line.startswith("{")]


def kie_booth(data_dir: Path, port: int, kie: KieProcess, **extra: str) -> Booth:
    env = booth_env(
        KIE_API_KEY=KIE_KEY,
        KIE_API_BASE_URL=kie.url,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",  # kie fetches the input photo from us
        **extra,
    )
    # Booth passes `--port 0`; a later `--port` wins with argparse.
    return Booth(data_dir, ["--port", str(port)], env)


def outcomes(job: dict[str, Any]) -> list[str]:
    return [a["outcome"] for a in job["attemptsDetail"]]


# --------------------------------------------------------------------------------------------
# tests


def test_kill_9_with_jobs_queued_and_running_then_restart_finishes_each_job_once(
    data_dir: Path, standins: Callable[[int], KieProcess]
) -> None:
    submitted = 6
    settings = {"WORKER_CONCURRENCY_KIE": "2", "SHUTDOWN_GRACE_SECONDS": "3"}
    slow = standins(20)  # tasks stay `generating` for minutes
    port = free_port()
    first = kie_booth(data_dir, port, slow, **settings)
    try:
        first.start()
        assert first.url == f"http://127.0.0.1:{port}"
        with Operator(first.url) as op:
            event_id = op.event("Recovery party")
            session = op.guest(event_id)
            ids = [op.submit(session, jpeg(n), provider="kie")["id"] for n in range(submitted)]
            assert len(set(ids)) == submitted

            def two_running() -> dict[str, str] | None:
                statuses = op.statuses(ids)
                kie_tasks = slow.state()["tasks"]
                running = [i for i, s in statuses.items() if s == "running"]
                queued = [i for i, s in statuses.items() if s == "queued"]
                # Both kie tasks exist (the attempts are truly under way at kie).
                ok = len(running) == 2 and len(queued) == submitted - 2 and len(kie_tasks) == 2
                return statuses if ok else None

            statuses = wait_for("2 running and 4 queued jobs", two_running, timeout=15)
        running_at_kill = {i for i, s in statuses.items() if s == "running"}
        children = first.children()
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        # The embedded servers go with it (parent-death signal): nothing keeps the data dir.
        wait_for(
            "the killed booth's servers to exit",
            lambda: (
                not [p for p in children if alive(p)] and not processes_mentioning(str(data_dir))
            ),
            timeout=15,
        )
    finally:
        first.kill()

    fast = standins(1)  # a task finishes at its first poll
    second = kie_booth(data_dir, port, fast, **settings)
    try:
        second.start()
        started = time.monotonic()
        with Operator(second.url) as op:
            final = op.wait_final(ids, timeout=40)
            took = time.monotonic() - started
            r = op.http.get("/jobs", params={"eventId": event_id, "limit": 200})
            assert r.status_code == 200, r.text
            listed = [item["id"] for item in r.json()["items"]]
        print(f"all {submitted} jobs final {took:.1f} s after the restart")
        # The stand-in keeps its connection to us open (it fetched our photos): see the last test.
        stop_cleanly(second, within=3 + 4)
    finally:
        second.kill()

    # No duplicate jobs: exactly the submitted ones.
    assert sorted(listed) == sorted(ids)
    assert {i: j["status"] for i, j in final.items()} == dict.fromkeys(ids, "succeeded")
    for job_id, job in final.items():
        assert job["providerUsed"] == "kie" and job["downloadUrl"] == f"/jobs/{job_id}/download"
        if job_id in running_at_kill:
            # The attempt cut off by kill -9 is closed as interrupted, then one clean run.
            assert outcomes(job) == ["interrupted", "succeeded"], job
            assert job["attemptsDetail"][0]["error"]["code"] == "interrupted"
            assert job["attempts"] == 2
        else:
            assert outcomes(job) == ["succeeded"], job
            assert job["attempts"] == 1
        assert outcomes(job).count("succeeded") == 1
    # kie: the slow stand-in saw only the two attempts cut off (no new task after the kill);
    # the fast one exactly one task per job, each the request id of that job's success.
    slow_state, fast_state = slow.state(), fast.state()
    assert slow_state["calls"]["createTask"] == 2 and len(slow_state["tasks"]) == 2
    assert fast_state["calls"]["createTask"] == submitted
    assert sorted(fast_state["tasks"].values()) == ["success"] * submitted
    request_ids = [
        a["providerRequestId"]
        for job in final.values()
        for a in job["attemptsDetail"]
        if a["outcome"] == "succeeded"
    ]
    assert sorted(request_ids) == sorted(fast_state["tasks"])


def test_readme_flow_with_the_local_provider(data_dir: Path) -> None:
    booth = Booth(data_dir, ["--demo"], booth_env())
    try:
        booth.start()
        assert booth.url is not None
        with Operator(booth.url) as op:
            session = op.guest("demo")
            assert session["guestUrl"].startswith(f"{booth.url}/g/")
            r = op.http.post(
                "/jobs",
                data={"sessionId": session["sessionId"], "eventId": "demo"},
                files={"image": ("shot.jpg", jpeg(1), "image/jpeg")},
            )
            assert r.status_code == 201, r.text
            job = r.json()
            assert job["status"] == "queued" and job["provider"] is None
            assert job["eventId"] == session["eventId"]
            done = op.wait_final([job["id"]], timeout=20)[job["id"]]
            assert done["status"] == "succeeded", done
            assert done["providerUsed"] == "local" and outcomes(done) == ["succeeded"]

            r = op.http.get(f"/jobs/{job['id']}/download")
            assert r.status_code == 302, r.text
            photo = op.http.get(r.headers["Location"])
            assert photo.status_code == 200
            assert photo.headers["content-type"] == "image/jpeg"
            assert photo.content.startswith(b"\xff\xd8")
            assert Image.open(io.BytesIO(photo.content)).format == "JPEG"

            token = session["guestUrl"].rsplit("/", 1)[1]
            qr = httpx.get(f"{booth.url}/g/{token}/qr.svg", timeout=10)  # no login: the guest
            assert qr.status_code == 200
            assert qr.headers["content-type"].startswith("image/svg+xml")
            assert b"<svg" in qr.content
            assert httpx.get(f"{booth.url}/g/not-{token}/qr.svg", timeout=10).status_code == 404
        stop_cleanly(booth, within=10)
    finally:
        booth.kill()


def test_sigterm_with_a_job_running_exits_in_grace_and_the_job_finishes_once_after_restart(
    data_dir: Path, standins: Callable[[int], KieProcess]
) -> None:
    grace = 3
    slow = standins(20)
    port = free_port()
    first = kie_booth(data_dir, port, slow, SHUTDOWN_GRACE_SECONDS=str(grace))
    try:
        first.start()
        with Operator(first.url) as op:
            session = op.guest(op.event("Shutdown party"))
            job_id = op.submit(session, jpeg(7), provider="kie")["id"]
            wait_for(
                "the job to run at kie",
                lambda: op.job(job_id)["status"] == "running" and len(slow.state()["tasks"]) == 1,
                timeout=15,
            )
        took = stop_cleanly(first, within=grace + 4)
        print(f"SIGTERM with a kie job running: exit 0 after {took:.1f} s (grace {grace} s)")
        assert "shutting down gracefully" in log_messages(first)
    finally:
        first.kill()

    fast = standins(1)
    second = kie_booth(data_dir, port, fast, SHUTDOWN_GRACE_SECONDS=str(grace))
    try:
        second.start()
        with Operator(second.url) as op:
            job = op.wait_final([job_id], timeout=20)[job_id]
        stop_cleanly(second, within=grace + 4)
    finally:
        second.kill()
    assert job["status"] == "succeeded", job
    assert outcomes(job) == ["interrupted", "succeeded"], job
    assert job["attempts"] == 2
    assert fast.state()["calls"]["createTask"] == 1
    assert slow.state()["calls"]["createTask"] == 1


def test_sigterm_is_not_held_up_by_an_idle_keep_alive_client(data_dir: Path) -> None:
    grace = 3
    booth = Booth(data_dir, [], booth_env(SHUTDOWN_GRACE_SECONDS=str(grace)))
    try:
        booth.start()
        assert booth.url is not None
        with httpx.Client(base_url=booth.url) as browser:  # keeps its connection, as browsers do
            assert browser.get("/health").status_code == 200
            took = stop_cleanly(booth, within=grace + 4)
        print(f"SIGTERM with an idle keep-alive client: exit 0 after {took:.1f} s")
        assert took < grace - 1  # idle, it stops in well under a second without that client
    finally:
        booth.kill()


def _server_pid(booth: Booth, server: str) -> int:
    """The embedded server's main process: the booth's direct child of that name."""
    assert booth.proc is not None
    names = ("postgres",) if server == "postgres" else ("redis", "valkey")
    [pid] = [
        pid for pid in booth.children()
        if proc_ppid(pid) == booth.proc.pid
        and Path(f"/proc/{pid}/comm").read_text().strip().startswith(names)
    ]  # fmt: skip
    return pid


@pytest.mark.parametrize("server", ["postgres", "redis"])
def test_an_embedded_server_killed_mid_evening_comes_back_by_itself(
    data_dir: Path, server: str
) -> None:
    """The OOM killer (say) takes the embedded PostgreSQL or Redis: the booth starts it again
    on the same port, and the evening goes on without anyone restarting Photobot."""
    booth = Booth(data_dir, ["--demo"], booth_env())
    try:
        booth.start()
        booth.wait_healthy()
        assert booth.url is not None
        with Operator(booth.url) as op:
            session = op.guest("demo")
            victim = _server_pid(booth, server)
            os.kill(victim, signal.SIGKILL)
            wait_for("the server to die", lambda: not alive(victim) or None, timeout=10)
            revived = wait_for(
                "the server to be started again",
                lambda: pid if (pid := _maybe_pid(booth, server)) not in (None, victim) else None,
                timeout=30,
            )
            assert alive(revived)
            booth.wait_healthy(timeout=60)
            job = op.submit(session, jpeg(7))
            done = op.wait_final([job["id"]], timeout=30)[job["id"]]
            assert done["status"] == "succeeded", done
        stop_cleanly(booth, within=10)
    finally:
        booth.kill()


def _maybe_pid(booth: Booth, server: str) -> int | None:
    try:
        return _server_pid(booth, server)
    except ValueError:
        return None
