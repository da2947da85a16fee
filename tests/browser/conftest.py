"""Browser tests: Playwright driving Debian's Chromium against a real ``photobot run``.

These run in a pytest process of their own (``./dev test`` starts it with
``--confcutdir=tests/browser``, so ``tests/conftest.py`` is not loaded and nothing here imports
the app): the app imports trio_asyncio, which changes asyncio for the whole process, and
Playwright's sync API runs on asyncio.

Fixtures:

``booth``    session: a ``photobot run --demo`` subprocess on a free port with embedded
             PostgreSQL, Redis and storage, ``OPERATOR_PASSWORD`` set and a hot folder
             (:class:`LiveBooth`: ``url``, ``hotfolder``, ``api(...)``, ``token``, ``guest(...)``).
``browser``  session: Chromium from ``/usr/bin/chromium`` (``PHOTOBOT_CHROMIUM`` overrides),
             headless, with the fake camera. Never a downloaded browser.
``phone`` / ``desktop``  function: a fresh browser context (360x740 touch / 1280x800).
``page_errors``  function: ``watch(page)`` records uncaught page errors and failed console
             messages; the test fails at teardown if any happened.
``shot``     function: ``shot(page, name)`` saves ``test-output/screenshots/<name>.png``.
``nvr``      session: the stand-in Hikvision NVR (``tests/standins/nvr.py``) as a subprocess on a
             free port, Digest user ``admin`` / :data:`NVR_PASSWORD`, wall clock UTC+7 with ``Z``
             meaning local (cameras pointing at it use ``timeMode`` ``local``) (:class:`LiveNvr`:
             ``url``, ``add_recordings(start, count, seconds)``, ``state()``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from photobot.embedded import find_pg_bindir
from tests.booth_process import Booth, clean_env

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = os.environ.get("PHOTOBOT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
OPERATOR_PASSWORD = "browser-test-password"
PHONE = {"viewport": {"width": 360, "height": 740}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 2}  # fmt: skip
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
NVR_USERNAME = "admin"
NVR_PASSWORD = "nvr-test-password"


@dataclass
class LiveBooth:
    proc: Booth
    url: str
    hotfolder: Path
    client: httpx.Client
    _token: str | None = field(default=None, repr=False)

    @property
    def token(self) -> str:
        """An operator token (logged in once per session: logins are rate limited)."""
        if self._token is None:
            body = self.api("POST", "/auth/login", json={"password": OPERATOR_PASSWORD})
            self._token = body["token"]
        return self._token

    def api(self, method: str, path: str, *, auth: bool = False, expect: int | None = None,
            **kwargs: Any) -> Any:  # fmt: skip
        headers = kwargs.pop("headers", {})
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        response = self.client.request(method, path, headers=headers, **kwargs)
        if expect is not None:
            assert response.status_code == expect, response.text
        else:
            assert response.is_success, f"{method} {path} → {response.status_code} {response.text}"
        return response.json() if response.content else None

    def guest(self, name: str = "Ayu", whatsapp: str = "081234567890", event: str = "demo") -> dict:
        """Register a guest through the API: ``{"sessionId", "code", "guestUrl", …}``."""
        return self.api("POST", "/sessions", json={"eventId": event, "name": name,
                                                   "whatsapp": whatsapp})  # fmt: skip

    def jobs_of(self, session_id: str) -> list[dict]:
        items = self.api("GET", "/jobs", auth=True, params={"eventId": "demo", "limit": 200})
        return [j for j in items["items"] if j["sessionId"] == session_id]

    def sql(self, query: str) -> str:
        """Run SQL on the booth's embedded database (psql, unaligned, tuples only).

        For facts the API does not expose (exactly one job per capture) and for states a test
        cannot otherwise hold still (a job mid-way through styling)."""
        pid_file = self.proc.data_dir / "postgres" / "pgdata" / "postmaster.pid"
        port = pid_file.read_text().splitlines()[3].strip()
        done = subprocess.run(
            [str(find_pg_bindir() / "psql"), "-h", "127.0.0.1", "-p", port, "-U", "postgres",
             "-d", "photobot", "-At", "-v", "ON_ERROR_STOP=1", "-c", query],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or predicate}")
            time.sleep(0.1)


def _tmp_base() -> str | None:
    shm = "/dev/shm"  # the embedded PostgreSQL starts much faster on tmpfs
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


@pytest.fixture(scope="session")
def booth() -> Iterator[LiveBooth]:
    root = Path(tempfile.mkdtemp(prefix="photobot-browser-", dir=_tmp_base()))
    hotfolder = root / "hotfolder"
    hotfolder.mkdir()
    log_dir = ROOT / "test-output"
    log_dir.mkdir(exist_ok=True)
    env = clean_env(
        OPERATOR_PASSWORD=OPERATOR_PASSWORD,
        HOTFOLDER_PATH=str(hotfolder),
        REGISTER_RATE_LIMIT_PER_MINUTE="1000",  # every test registers from 127.0.0.1
        LOG_LEVEL="INFO",
    )
    proc = Booth(root / "data", ["--demo"], env=env, log_path=log_dir / "browser-booth.log")
    try:
        proc.start(timeout=90)
        proc.wait_healthy(timeout=30)
        assert proc.url is not None
        with httpx.Client(base_url=proc.url, timeout=30) as client:
            yield LiveBooth(proc, proc.url, hotfolder, client)
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: ./dev test installs Debian's chromium")
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


def _context(browser: Browser, booth: LiveBooth, options: dict) -> BrowserContext:
    context = browser.new_context(base_url=booth.url, permissions=["camera"], **options)
    context.set_default_timeout(15_000)
    return context


@pytest.fixture
def phone(browser: Browser, booth: LiveBooth) -> Iterator[BrowserContext]:
    context = _context(browser, booth, PHONE)
    yield context
    context.close()


@pytest.fixture
def desktop(browser: Browser, booth: LiveBooth) -> Iterator[BrowserContext]:
    context = _context(browser, booth, DESKTOP)
    yield context
    context.close()


@pytest.fixture
def page_errors() -> Iterator[Callable[..., Page]]:
    """``watch(page, allow=())``: uncaught errors and console errors on the page fail the test.

    ``allow`` lists substrings of console errors the test provokes on purpose (a request made
    while offline, a 404 it asks for). Network-level failures of the gallery's websocket are
    always allowed: a test that kills it expects them."""
    errors: list[str] = []
    allowed: list[str] = ["WebSocket connection to"]

    def watch(page: Page, allow: tuple[str, ...] = ()) -> Page:
        allowed.extend(allow)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None
            ),
        )
        return page

    yield watch
    real = [e for e in errors if not any(a in e for a in allowed)]
    assert not real, "errors on the page:\n" + "\n".join(real)


@pytest.fixture
def shot() -> Callable[[Page, str], Path]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str, full_page: bool = True) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return take


@dataclass
class LiveNvr:
    """The stand-in NVR process and its control routes (no auth on those)."""

    proc: subprocess.Popen[bytes]
    url: str
    client: httpx.Client
    username: str = NVR_USERNAME
    password: str = NVR_PASSWORD

    def add_recordings(self, start: datetime, count: int, seconds: float,
                       **extra: Any) -> list[str]:  # fmt: skip
        """``count`` contiguous recordings of ``seconds`` from ``start`` (aware, true UTC) on
        track 101; returns their names."""
        body = {"track_id": 101, "start": start.isoformat(), "count": count, "seconds": seconds}
        response = self.client.post("/__standin__/recordings", json={**body, **extra})
        assert response.is_success, response.text
        return response.json()["names"]

    def state(self) -> dict[str, Any]:
        response = self.client.get("/__standin__/state")
        assert response.is_success, response.text
        return response.json()


@pytest.fixture(scope="session")
def nvr() -> Iterator[LiveNvr]:
    log_dir = ROOT / "test-output"
    log_dir.mkdir(exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="photobot-nvr-", dir=_tmp_base()))
    out_path, err_path = log_dir / "nvr-standin.out.log", log_dir / "nvr-standin.err.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.standins.nvr", "--port", "0", "--username",
             NVR_USERNAME, "--password", NVR_PASSWORD, "--cache-dir", str(cache)],
            cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        url = ""
        deadline = time.monotonic() + 30
        while not url:
            for line in out_path.read_text(errors="replace").splitlines():
                if line.startswith("listening on "):
                    url = line.removeprefix("listening on ").strip()
            if url:
                break
            if proc.poll() is not None:
                pytest.fail(f"the NVR stand-in exited ({proc.returncode}): see {err_path}")
            if time.monotonic() > deadline:
                pytest.fail(f"the NVR stand-in did not start in 30 s: see {err_path}")
            time.sleep(0.05)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield LiveNvr(proc, url, client)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(cache, ignore_errors=True)
