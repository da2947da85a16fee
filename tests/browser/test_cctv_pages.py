"""CCTV in a real browser: the console's CCTV tab (cameras: add, test, remove; clip requests:
create, trigger, live status, clip preview) against the stand-in NVR, and the guest's clip on
the guest page; at phone and laptop sizes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser.conftest import DESKTOP, PHONE, LiveBooth, LiveNvr, _context
from tests.browser.console_helpers import logged_in

#: The browser's zone in the clip test: neither UTC nor the NVR's UTC+7, so a wrong conversion
#: anywhere (browser → API → NVR wall clock) would cut the wrong minute.
BROWSER_ZONE = "Asia/Makassar"  # UTC+8, no DST
SEGMENT = 60.0


@pytest.fixture(scope="module")
def recorded(nvr: LiveNvr) -> LiveNvr:
    """Recordings on the stand-in from 20 minutes ago to 10 minutes ahead (true UTC)."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=20)
    nvr.add_recordings(start, count=30, seconds=SEGMENT, label="booth")
    return nvr


@pytest.fixture(scope="module", autouse=True)
def cameras_removed_afterwards(booth: LiveBooth) -> Iterator[None]:
    """The cameras made here are removed at the end: later test modules end booth sessions, and
    the poller would derive clip requests for them from this booth's first camera."""
    before = {c["id"] for c in booth.api("GET", "/cameras", auth=True)["cameras"]}
    yield
    for camera in booth.api("GET", "/cameras", auth=True)["cameras"]:
        if camera["id"] not in before:
            booth.api("DELETE", f"/cameras/{camera['id']}", auth=True, expect=204)


def open_cctv(context: BrowserContext, page_errors, allow: tuple[str, ...] = (),
              fake_clock: bool = False) -> Page:  # fmt: skip
    page = page_errors(context.new_page(), allow=allow)
    if fake_clock:  # time flows until the test pauses it (polls stop)
        page.clock.install()
    page.goto("/console#cctv")
    expect(page.get_by_role("tab", name="CCTV")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-cctv")).to_be_visible()
    return page


def add_camera_via_api(booth: LiveBooth, nvr: LiveNvr, name: str) -> dict:
    return booth.api("POST", "/cameras", auth=True, expect=201, json={
        "name": name, "baseUrl": nvr.url, "username": nvr.username, "password": nvr.password,
        "timeMode": "local",
    })  # fmt: skip


def camera_row(page: Page, name: str) -> Locator:
    return page.locator("#camera-list li.camera-row").filter(
        has=page.locator(".camera-name", has_text=re.compile(f"^{re.escape(name)}$"))
    )


def fits(page: Page) -> None:
    """Nothing is wider than the screen (no sideways scrolling)."""
    width = page.viewport_size["width"] if page.viewport_size else 0
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def load_video(video: Locator, timeout: float = 20_000) -> dict:
    """Make a ``preload="none"`` video fetch its metadata; its readyState and duration."""
    video.evaluate("v => { v.preload = 'metadata'; v.load(); }")
    video.page.wait_for_function("v => v.readyState >= 1 || v.error", arg=video.element_handle(),
                                 timeout=timeout)  # fmt: skip
    return video.evaluate(
        "v => ({readyState: v.readyState, duration: v.duration, error: v.error && v.error.code,"
        " poster: v.poster, width: v.videoWidth})"
    )


def fill_camera_form(page: Page, name: str, url: str, password: str) -> None:
    """The "Add a camera" form (a disclosure: open when the booth has no camera yet)."""
    if not page.locator("#camera-add").evaluate("d => d.open"):
        page.locator("#camera-add summary").click()
    form = page.locator("#camera-form")
    form.get_by_label("Name", exact=True).fill(name)
    form.get_by_label("NVR base URL").fill(url)
    expect(form.get_by_label("Track id")).to_have_value("101")
    expect(page.locator("#camera-track-hint")).to_contain_text("channel × 100 + stream")  # noqa: RUF001
    form.get_by_label("Username").fill("admin")
    form.get_by_label("Password", exact=True).fill(password)
    form.get_by_label("Time mode").select_option("local")


def test_cameras_add_test_refuse_and_remove(booth, nvr, desktop, page_errors, shot) -> None:
    logged_in(desktop, booth.token)
    page = open_cctv(desktop, page_errors, allow=("status of 502",))
    password = page.locator("#camera-password")
    expect(password).to_have_attribute("type", "password")
    expect(password).to_have_attribute("autocomplete", "off")

    # A camera pointing at the stand-in: listed, without its password anywhere on the page.
    fill_camera_form(page, "Booth cam", nvr.url, nvr.password)
    page.get_by_role("button", name="Add camera").click()
    good = camera_row(page, "Booth cam")
    expect(good).to_be_visible()
    expect(good).to_contain_text(nvr.url)
    expect(good).to_contain_text("track 101")
    expect(good).to_contain_text("offset not known yet")
    expect(password).to_have_value("")
    assert nvr.password not in page.content()
    listed = booth.api("GET", "/cameras", auth=True)["cameras"]
    assert all("password" not in c for c in listed)
    # The new camera is offered in the clip request form.
    expect(page.locator("#clip-camera option", has_text="Booth cam")).to_have_count(1)

    # Test: the NVR's wall clock (UTC+7) and its POSIX zone; the offset is remembered.
    good.get_by_role("button", name=re.compile("^Test")).click()
    result = good.locator(".camera-result")
    expect(result).to_contain_text("Connected. NVR time", timeout=20_000)
    expect(result).to_contain_text("UTC+07:00")
    expect(result).to_contain_text("CST-7:00:00")
    expect(good).to_contain_text("Local wall-clock, UTC+07:00 at the last test")
    expect(result).not_to_contain_text("ahead")  # its clock is right: no drift reported
    expect(result).not_to_contain_text("behind")

    # A wrong password: the NVR's refusal is shown.
    fill_camera_form(page, "Wrong password cam", nvr.url, "not-the-password")
    page.get_by_role("button", name="Add camera").click()
    bad = camera_row(page, "Wrong password cam")
    expect(bad).to_be_visible()
    bad.get_by_role("button", name=re.compile("^Test")).click()
    expect(bad.locator(".camera-result")).to_contain_text(
        "The NVR refused the username or password", timeout=20_000
    )
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "cctv-cameras-desktop")

    # Remove asks first; Keep (or Escape) keeps it; Yes removes it.
    bad.get_by_role("button", name=re.compile("^Remove")).click()
    expect(bad.get_by_role("button", name="Yes, remove")).to_be_focused()
    page.keyboard.press("Escape")
    expect(bad.get_by_role("button", name=re.compile("^Remove"))).to_be_focused()
    bad.get_by_role("button", name=re.compile("^Remove")).click()
    bad.get_by_role("button", name="Yes, remove").click()
    expect(bad).to_have_count(0)
    expect(good).to_be_visible()
    names = [c["name"] for c in booth.api("GET", "/cameras", auth=True)["cameras"]]
    assert "Wrong password cam" not in names and "Booth cam" in names
    expect(page.locator("#clip-camera option", has_text="Wrong password cam")).to_have_count(0)

    # Logging out takes the tab's content (camera details) out of the page.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("Password")).to_be_focused()
    expect(page.locator("#panel-cctv > *")).to_have_count(0)


def test_clip_request_trigger_goes_live_to_a_playable_preview(
    booth, recorded, browser, page_errors, shot
) -> None:
    camera = add_camera_via_api(booth, recorded, "Clip cam")
    context = _context(browser, booth, {**DESKTOP, "timezone_id": BROWSER_ZONE, "locale": "en-GB"})
    try:
        logged_in(context, booth.token)
        page = open_cctv(context, page_errors)
        # A 30 s range that ended 2 minutes ago, typed as the browser's wall clock.
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        start = end - timedelta(seconds=30)
        local = ZoneInfo(BROWSER_ZONE)
        form = page.locator("#clip-form")
        form.get_by_label("Camera").select_option(camera["id"])
        form.get_by_label("Start").fill(start.astimezone(local).strftime("%Y-%m-%dT%H:%M:%S"))
        form.get_by_label("End").fill(end.astimezone(local).strftime("%Y-%m-%dT%H:%M:%S"))
        page.get_by_role("button", name="Request clip").click()

        row = page.locator("#clip-list li.clip-row").first
        expect(row).to_contain_text("Clip cam")
        request_id = int(row.get_attribute("data-request-id") or 0)
        item = booth.api("GET", f"/clip-requests/{request_id}", auth=True)
        # The browser sent its own zone: the same instants, whatever the zones.
        assert datetime.fromisoformat(item["startTime"]) == start
        assert datetime.fromisoformat(item["endTime"]) == end
        local_range = f"{start.astimezone(local):%H:%M:%S}"
        expect(row.locator(".clip-meta")).to_contain_text(local_range)

        # Ended over a minute ago: ready at once, Trigger cuts it now (unless the auto batch
        # took it first, in which case it is already on its way).
        chip = row.locator(".chip")
        if item["status"] == "READY_FOR_BATCH":
            trigger = row.get_by_role("button", name=f"Trigger clip request #{request_id}")
            try:
                trigger.click(timeout=5_000)
            except PlaywrightTimeoutError:
                assert booth.api("GET", f"/clip-requests/{request_id}", auth=True)["status"] in (
                    "PROCESSING",
                    "CLIP_GENERATED",
                )
        expect(chip).to_have_text("Clip ready", timeout=60_000)
        video = row.locator(".clip-preview video")
        expect(video).to_have_attribute("preload", "none")
        expect(video).to_have_attribute("poster", re.compile(r"."))
        expect(row.locator(".clip-preview figcaption")).to_contain_text(re.compile(r"0:3\d"))
        loaded = load_video(video)
        assert loaded["error"] is None and loaded["readyState"] >= 1, loaded
        assert abs(loaded["duration"] - 30) <= 1.5, loaded

        # A request already made cannot be triggered again: the API says why (422 not_ready).
        again = booth.api("POST", f"/clip-requests/{request_id}/trigger", auth=True, expect=422)
        assert again["error"]["code"] == "not_ready"
        fits(page)
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "cctv-desktop")
    finally:
        context.close()


def test_trigger_is_offered_only_when_it_can_work(booth, recorded, desktop, page_errors) -> None:
    """A range still being recorded offers no Trigger; a trigger the API refuses (422
    ``not_ready``: the request got taken meanwhile) shows the API's message in its row; a failed
    request shows its reason and can be triggered again."""
    camera = add_camera_via_api(booth, recorded, "Future cam")
    now = datetime.now(UTC).replace(microsecond=0)
    future = booth.api("POST", "/clip-requests", auth=True, expect=201, json={
        "cameraId": camera["id"], "start": (now - timedelta(seconds=10)).isoformat(),
        "end": (now + timedelta(minutes=5)).isoformat(),
    })  # fmt: skip
    assert future["status"] == "PENDING"
    logged_in(desktop, booth.token)
    page = open_cctv(desktop, page_errors, allow=("status of 422",), fake_clock=True)
    row = page.locator(f'#clip-list li[data-request-id="{future["id"]}"]')
    expect(row.locator(".chip")).to_have_text("Pending")
    expect(row).to_contain_text("Recording until")
    expect(row.get_by_role("button", name=re.compile("^Trigger"))).to_have_count(0)

    # A request that failed (as if the NVR had no recording), written as such so the booth's
    # own poller never gets to take it first.
    past_id = booth.sql(
        "insert into clip_requests (camera_id, start_time, end_time, ready_at, status,"
        f" failure_reason) values ('{camera['id']}', now() - interval '5 minutes',"
        " now() - interval '290 seconds', now(), 'FAILED', 'no recording (test)') returning id"
    ).splitlines()[0]
    past = {"id": int(past_id)}
    page.get_by_role("button", name="Refresh").click()
    past_row = page.locator(f'#clip-list li[data-request-id="{past["id"]}"]')
    expect(past_row.locator(".chip")).to_have_text("Failed")
    expect(past_row.locator(".clip-detail")).to_have_text("no recording (test)")
    trigger = past_row.get_by_role("button", name=f"Trigger clip request #{past['id']}")
    expect(trigger).to_be_visible()

    # Meanwhile another client has it processed (the page's polls held still): refused, and
    # the row says why.
    page.clock.pause_at(datetime.now(UTC) + timedelta(seconds=1))
    booth.sql(f"update clip_requests set status = 'PROCESSING', claimed_by = 'browser-test'"
              f" where id = {past['id']}")  # fmt: skip
    trigger.click()
    note = past_row.locator(".clip-note")
    expect(note).to_have_text(
        f"Not triggered: clip request {past['id']} is not ready: it is being processed."
    )
    expect(trigger).to_be_enabled()
    page.clock.resume()
    expect(past_row.locator(".chip")).to_have_text("Cutting…", timeout=10_000)
    expect(past_row.get_by_role("button", name=re.compile("^Trigger"))).to_have_count(0)
    booth.sql(
        "update clip_requests set status = 'FAILED', failure_reason = 'given up (test)'"
        f" where id = {past['id']}"
    )
    expect(past_row.locator(".chip")).to_have_text("Failed", timeout=10_000)
    expect(past_row.locator(".clip-detail")).to_have_text("given up (test)")


def test_guest_page_shows_the_guests_clip(booth, recorded, phone, desktop, page_errors,
                                          shot) -> None:  # fmt: skip
    camera = add_camera_via_api(booth, recorded, "Guest cam")
    guest = booth.guest("Citra Clip", "0812 5555 6666")
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    start = end - timedelta(seconds=20)
    item = booth.api("POST", "/clip-requests", auth=True, expect=201, json={
        "cameraId": camera["id"], "start": start.isoformat(), "end": end.isoformat(),
        "sessionId": guest["sessionId"],
    })  # fmt: skip
    assert item["sessionId"] == guest["sessionId"]
    if item["status"] != "CLIP_GENERATED":
        booth.api("POST", f"/clip-requests/{item['id']}/trigger", auth=True, expect=202)

    def done() -> dict | None:
        now = booth.api("GET", f"/clip-requests/{item['id']}", auth=True)
        assert now["status"] != "FAILED", now
        return now if now["status"] == "CLIP_GENERATED" else None

    made = booth.wait_for(done, timeout=60, what="the guest's clip")
    assert made["clip"] and made["clip"]["posterUrl"]

    for size, context in (("phone", phone), ("desktop", desktop)):
        page = page_errors(context.new_page())
        page.goto(guest["guestUrl"])
        section = page.get_by_role("region", name="Your video")
        expect(section).to_be_visible(timeout=20_000)
        video = section.locator("video")
        expect(video).to_have_count(1)
        expect(video).to_have_attribute("poster", re.compile(r"."))
        poster_ok = page.evaluate(
            "url => fetch(url).then(r => r.ok && r.headers.get('content-type'))",
            video.get_attribute("poster"),
        )
        assert poster_ok and poster_ok.startswith("image/"), poster_ok
        # The poster is what the guest sees before playing: let it paint for the screenshot.
        page.wait_for_timeout(300)
        fits(page)
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, f"guest-clip-{size}")
        loaded = load_video(video)
        assert loaded["error"] is None and loaded["readyState"] >= 1, loaded
        assert abs(loaded["duration"] - 20) <= 1.5, loaded
        page.close()


def test_cctv_tab_at_phone_size_and_by_keyboard(booth, recorded, page_errors, browser,
                                                shot) -> None:  # fmt: skip
    camera = add_camera_via_api(booth, recorded, "Phone cam")
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=6)
    booth.api("POST", "/clip-requests", auth=True, expect=201, json={
        "cameraId": camera["id"], "start": (end - timedelta(seconds=15)).isoformat(),
        "end": end.isoformat(),
    })  # fmt: skip
    context = _context(browser, booth, PHONE)
    try:
        logged_in(context, booth.token)
        page = page_errors(context.new_page())
        page.goto("/console#queue")
        expect(page.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")
        page.get_by_role("tab", name="Queue").focus()
        page.keyboard.press("ArrowRight")
        cctv = page.get_by_role("tab", name="CCTV")
        expect(cctv).to_be_focused()
        expect(cctv).to_have_attribute("aria-selected", "true")
        expect(page).to_have_url(re.compile(r"#cctv$"))
        expect(camera_row(page, "Phone cam")).to_be_visible()
        expect(page.locator("#clip-list li.clip-row").first).to_be_visible()
        clips = page.locator("#clip-list li.clip-row[data-status='CLIP_GENERATED']")
        if clips.count():  # made by the tests before (this one can run alone too)
            expect(clips.first.locator("video")).to_be_visible()
        fits(page)
        page.evaluate("window.scrollTo(0, 0)")
        shot(page, "cctv-phone")
        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Events")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#panel-cctv")).to_be_hidden()
    finally:
        context.close()
