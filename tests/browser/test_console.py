"""The operator console in a real browser: login, capture (webcam), offline resume, Pro Capture,
the queue and job detail, event admin with photographer upload; at phone and laptop sizes."""

from __future__ import annotations

import os
import re
import secrets
import time

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.conftest import OPERATOR_PASSWORD
from tests.browser.console_helpers import frame_png, logged_in, not_an_image, photo

OFFLINE_ERRORS = ("ERR_INTERNET_DISCONNECTED", "ERR_FAILED")


def open_console(context: BrowserContext, page_errors, tab: str = "capture",
                 allow: tuple[str, ...] = ()) -> Page:  # fmt: skip
    page = page_errors(context.new_page(), allow=allow)
    page.goto(f"/console#{tab}")
    expect(page.get_by_role("tab", name=re.compile(r"^Capture"))).to_be_visible()
    expect(page.locator("#event-select")).to_have_value("demo")
    return page


def find_guest(page: Page, guest: dict, name: str) -> None:
    page.get_by_label("Guest code").fill(guest["code"].lower())
    page.get_by_role("button", name="Find guest").click()
    expect(page.locator("#guest-name")).to_have_text(name)
    expect(page.locator("#guest-whatsapp")).to_have_text(re.compile(r"^\+62"))


def take_photo(page: Page) -> None:
    page.get_by_role("button", name="Start camera").click()
    video = page.locator("#camera-video")
    expect(video).to_be_visible()
    page.wait_for_function("document.querySelector('#camera-video').videoWidth > 0")
    page.get_by_role("button", name="Take photo").click()
    expect(page.locator("#photo-preview")).to_be_visible()
    expect(page.get_by_role("button", name="Retake")).to_be_visible()


def job_count_for_key(booth, key: str) -> int:
    return int(booth.sql(f"select count(*) from jobs where idempotency_key = '{key}'"))


def test_login_webcam_capture_reaches_the_guest_page(booth, desktop, page_errors, shot) -> None:
    page = page_errors(desktop.new_page(), allow=("status of 401",))
    page.goto("/console")
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()
    shot(page, "console-login-desktop")

    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_have_text("Wrong username or password.")

    page.get_by_label("Password").fill(OPERATOR_PASSWORD)
    page.get_by_label("Remember me on this device").check()
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("tab", name=re.compile(r"^Capture"))).to_have_attribute(
        "aria-selected", "true"
    )
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    page.locator("#event-select").select_option("demo")

    # "Scan QR" is offered wherever there is a camera: without BarcodeDetector (this Chromium)
    # the box's own decoder reads the QR (tests/browser/test_qr_scan.py).
    expect(page.get_by_role("button", name="Scan QR")).to_be_visible()

    guest = booth.guest("Ayu Capture", "0812 1111 2222")
    find_guest(page, guest, "Ayu Capture")
    send = page.get_by_role("button", name="Send photo")
    expect(send).to_be_disabled()
    take_photo(page)
    page.locator("#panel-capture").get_by_label("Style", exact=True).select_option("sepia")
    expect(send).to_be_enabled()
    shot(page, "console-capture-desktop")
    send.click()

    row = page.locator("#sent-list li").first
    expect(row).to_contain_text("Ayu Capture")
    expect(row.locator(".chip")).to_have_text("Done", timeout=45_000)
    expect(row.locator("img.job-thumb")).to_be_visible()
    jobs = booth.jobs_of(guest["sessionId"])
    assert [j["status"] for j in jobs] == ["succeeded"]
    assert jobs[0]["styleId"] == "sepia"
    shot(page, "console-capture-sent-desktop")

    # The styled photo is on the guest's own page.
    guest_page = page_errors(desktop.new_page())
    guest_page.goto(guest["guestUrl"])
    photo_item = guest_page.locator("#guest-photos li img")
    expect(photo_item.first).to_be_visible(timeout=20_000)
    results = booth.api("GET", f"/api/guest/{guest['guestUrl'].rsplit('/', 1)[1]}/results")
    assert [p["jobId"] for p in results["photos"]] == [jobs[0]["id"]]

    # Remembered: a reload stays logged in; logging out forgets the token.
    page.reload()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()
    expect(page.locator("#login-message")).to_have_text("You are logged out.")
    page.reload()
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()


def test_offline_capture_is_kept_and_resumed_once(booth, desktop, page_errors, shot) -> None:
    logged_in(desktop, booth.token)
    page = open_console(desktop, page_errors, allow=OFFLINE_ERRORS)
    guest = booth.guest("Budi Offline", "0812 3333 4444")
    find_guest(page, guest, "Budi Offline")
    take_photo(page)

    desktop.set_offline(True)
    page.get_by_role("button", name="Send photo").click()
    expect(page.locator("#submit-error")).to_contain_text("Resume upload")
    resume = page.get_by_role("region", name=re.compile(r"^Resume upload"))
    expect(resume).to_be_visible()
    expect(resume.get_by_role("heading")).to_have_text("Resume upload (1)")
    expect(resume.locator("li")).to_contain_text("Budi Offline")
    expect(page.locator("#net-banner")).to_contain_text("offline")
    expect(page.locator("#tab-resume-count")).to_have_text("1")
    shot(page, "console-resume-desktop")
    assert booth.jobs_of(guest["sessionId"]) == []

    # Kept on the device: back online, a reload lists it again (nothing was sent meanwhile).
    desktop.set_offline(False)
    page.reload()
    resume = page.get_by_role("region", name=re.compile(r"^Resume upload"))
    expect(resume.locator("li")).to_have_count(1)
    expect(resume.locator("li")).to_contain_text("Budi Offline")
    assert booth.jobs_of(guest["sessionId"]) == []
    key = resume.locator("li").get_attribute("data-key")
    assert key

    resume.get_by_role("button", name="Resume").click()
    expect(resume).to_be_hidden()
    expect(page.locator("#sent-list li").first).to_contain_text("Budi Offline")
    jobs = booth.jobs_of(guest["sessionId"])
    assert len(jobs) == 1
    assert job_count_for_key(booth, key) == 1


def test_upload_progress_moves_on_a_slow_link(booth, desktop, page_errors) -> None:
    """On a slow venue link the operator sees the upload move, and cannot send twice."""
    logged_in(desktop, booth.token)
    page = open_console(desktop, page_errors)
    guest = booth.guest("Citra Slow", "0812 5555 6666")
    find_guest(page, guest, "Citra Slow")
    # A file, not a webcam frame: big enough that a throttled upload takes a few seconds.
    big = photo(77, (1600, 1200))
    assert len(big) > 400_000
    page.locator("#photo-file").set_input_files(
        {"name": "big.jpg", "mimeType": "image/jpeg", "buffer": big}
    )
    expect(page.locator("#photo-preview")).to_be_visible()
    cdp = desktop.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 200_000,
    })  # fmt: skip
    send = page.get_by_role("button", name="Send photo")
    send.click()
    page.wait_for_function(
        "() => { const b = document.getElementById('upload-bar');"
        " return !b.closest('[hidden]') && b.value > 0 && b.value < 100; }"
    )
    expect(send).to_be_disabled()
    mid = page.evaluate("() => document.getElementById('upload-bar').value")
    page.wait_for_function(
        f"() => document.getElementById('upload-bar').value > {mid}"
        " || !!document.getElementById('upload-progress').hidden"
    )
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
    })  # fmt: skip
    expect(page.locator("#upload-progress")).to_be_hidden(timeout=30_000)
    expect(page.locator("#sent-list li").first).to_contain_text("Citra Slow")
    assert len(booth.jobs_of(guest["sessionId"])) == 1


def test_lost_response_then_resume_makes_exactly_one_job(booth, desktop, page_errors) -> None:
    logged_in(desktop, booth.token)
    page = open_console(desktop, page_errors, allow=OFFLINE_ERRORS)
    guest = booth.guest("Citra Lost", "0812 5555 6666")
    find_guest(page, guest, "Citra Lost")
    page.get_by_label("Or choose a photo file").set_input_files(
        {"name": "citra.jpg", "mimeType": "image/jpeg", "buffer": photo(101)}
    )
    expect(page.locator("#photo-preview")).to_be_visible()

    reached = []

    def lose_response(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        response = route.fetch()  # the upload reaches the booth and the job is made…
        reached.append(response.status)
        route.abort()  # …but the answer never reaches the browser

    page.route("**/jobs", lose_response)
    page.get_by_role("button", name="Send photo").click()
    resume = page.get_by_role("region", name=re.compile(r"^Resume upload"))
    expect(resume.locator("li")).to_have_count(1)
    assert reached == [201]
    jobs = booth.jobs_of(guest["sessionId"])
    assert len(jobs) == 1
    page.unroute("**/jobs")

    key = resume.locator("li").get_attribute("data-key")
    resume.get_by_role("button", name="Resume").click()
    expect(resume).to_be_hidden()
    # The booth answered with the job it had already made for this capture.
    expect(page.locator(f'#sent-list li[data-job-id="{jobs[0]["id"]}"]')).to_be_visible()
    assert [j["id"] for j in booth.jobs_of(guest["sessionId"])] == [jobs[0]["id"]]
    assert job_count_for_key(booth, key) == 1


def drop_in_hotfolder(booth, data: bytes, name: str) -> None:
    """Write the photo beside the hot folder, then move it in at once (as a camera app would)."""
    staging = booth.hotfolder.parent / f".{name}.part"
    staging.write_bytes(data)
    os.replace(staging, booth.hotfolder / name)


def test_pro_capture_hot_folder_job_arrives_live(booth, desktop, page_errors, shot) -> None:
    logged_in(desktop, booth.token)
    page = open_console(desktop, page_errors, tab="pro")
    pro = page.locator("#panel-pro")
    expect(pro).to_be_visible()
    expect(page.locator("#pro-state")).to_contain_text("No active session")
    guest = booth.guest("Dewi Pro", "0812 7777 8888")
    find_guest(page, guest, "Dewi Pro")
    pro.get_by_label("Style", exact=True).select_option("bw")
    try:
        pro.get_by_role("button", name="Start Pro Capture for Dewi Pro").click()
        expect(page.locator("#pro-state")).to_contain_text("Waiting for file…")
        expect(page.locator("#pro-state")).to_contain_text("Dewi Pro")
        ttl = page.locator("#pro-ttl")
        expect(ttl).to_have_text(re.compile(r"^Ends in \d+:\d\d"))
        first = ttl.inner_text()
        expect(ttl).not_to_have_text(first)  # it counts down every second
        active = booth.api("GET", f"/booth/{booth_id(page)}/active-session", auth=True)
        assert active["sessionId"] == guest["sessionId"] and active["styleId"] == "bw"
        shot(page, "console-pro-desktop")

        drop_in_hotfolder(booth, photo(int(time.time() * 1000) % 2**31), "IMG_0001.jpg")
        row = page.locator("#recent-list li", has_text="Dewi Pro")
        expect(row).to_be_visible(timeout=30_000)
        expect(row).to_have_class(re.compile(r"\bfresh\b"))  # highlighted as new
        expect(row.locator(".chip")).to_have_text("Done", timeout=45_000)
        jobs = booth.jobs_of(guest["sessionId"])
        assert len(jobs) == 1 and jobs[0]["source"] == "hotfolder" and jobs[0]["styleId"] == "bw"
        shot(page, "console-pro-job-desktop")

        pro.get_by_role("button", name="Stop").click()
        expect(page.locator("#pro-state")).to_contain_text("No active session")
        booth.api("GET", f"/booth/{booth_id(page)}/active-session", auth=True, expect=404)

        # Gallery mode needs no guest.
        pro.get_by_role("button", name="Start gallery mode").click()
        expect(page.locator("#pro-state")).to_contain_text("Gallery mode")
        active = booth.api("GET", f"/booth/{booth_id(page)}/active-session", auth=True)
        assert active["mode"] == "gallery"
        pro.get_by_role("button", name="Stop").click()
        expect(page.locator("#pro-state")).to_contain_text("No active session")
    finally:
        booth.api("DELETE", f"/booth/{booth_id(page)}/active-session", auth=True)


def booth_id(page: Page) -> str:
    return page.evaluate("JSON.parse(document.getElementById('page-data').textContent).boothId")


def submit_job(booth, guest: dict, seed: int, style: str = "vivid",
               size: tuple[int, int] = (640, 480)) -> dict:  # fmt: skip
    return booth.api(
        "POST", "/jobs", auth=True, expect=201,
        headers={"Idempotency-Key": secrets.token_hex(8)},
        data={"sessionId": guest["sessionId"], "eventId": "demo", "styleId": style},
        files={"image": ("q.jpg", photo(seed, size), "image/jpeg")},
    )  # fmt: skip


def test_queue_filters_detail_and_retry(booth, desktop, page_errors, shot) -> None:
    tag = secrets.token_hex(3)
    guest = booth.guest(f"Eka Queue {tag}", "0812 9999 0000")
    job = submit_job(booth, guest, seed=202)
    booth.wait_for(lambda: booth.jobs_of(guest["sessionId"])[0]["status"] == "succeeded",
                   timeout=60, what="the queued job to succeed")  # fmt: skip

    logged_in(desktop, booth.token)
    page = open_console(desktop, page_errors, tab="queue")
    queue = page.locator("#panel-queue")
    rows = page.locator("#queue-list li")
    expect(rows.first).to_be_visible()
    expect(rows.locator(".chip").first).to_be_visible()

    # Search narrows the list to this guest; the status filter includes or excludes the job.
    queue.get_by_label("Search").fill(f"Eka Queue {tag}")
    expect(rows).to_have_count(1)
    row = rows.first
    expect(row).to_contain_text(f"Eka Queue {tag}")
    expect(row.locator(".chip")).to_have_text("Done")
    queue.get_by_label("Status").select_option("failed")
    expect(page.locator("#queue-empty")).to_be_visible()
    expect(rows).to_have_count(0)
    queue.get_by_label("Status").select_option("succeeded")
    expect(rows).to_have_count(1)
    shot(page, "console-queue-desktop")

    # Detail: stages, attempts with outcomes, the styled preview, download.
    row.get_by_role("button", name=re.compile(r"^Details")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name=f"Job #{job['id'][:8]}")).to_be_visible()
    expect(dialog.locator(".job-head .chip")).to_have_text("Done")
    expect(dialog.get_by_role("list", name="Stages").locator("li")).to_have_count(5)
    expect(dialog.locator(".stages .stage-done")).to_have_count(5)
    attempts = dialog.locator("table.attempts tbody tr")
    expect(attempts).to_have_count(1)
    expect(attempts.first).to_contain_text("succeeded")
    preview = dialog.locator(".job-preview img")
    expect(preview).to_be_visible()
    loaded = "img => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=preview.element_handle())
    download = dialog.get_by_role("link", name="Download")
    assert (download.get_attribute("href") or "").startswith("/files/")
    assert download.get_attribute("download")
    expect(dialog.get_by_role("button", name="Cancel job")).to_be_hidden()  # already final
    shot(page, "console-job-detail-desktop")

    # Retry: a child job, shown in the dialog, that runs to the end.
    dialog.get_by_role("button", name="Retry").click()
    expect(dialog.get_by_role("button", name=f"Retry of job #{job['id'][:8]}")).to_be_visible()
    expect(dialog.locator(".job-head .chip")).to_have_text("Done", timeout=45_000)
    jobs = booth.jobs_of(guest["sessionId"])
    assert len(jobs) == 2
    child = next(j for j in jobs if j["id"] != job["id"])
    assert child["parentJobId"] == job["id"] and child["status"] == "succeeded"
    dialog.get_by_role("button", name="Close").first.click()
    expect(dialog).to_be_hidden()
    # The queue (still filtered to this guest) picks the child up live.
    expect(rows).to_have_count(2)

    # "Load more": 20 a page, the next page from the cursor.
    many = booth.guest(f"Gita Many {tag}", "0812 1357 2468")
    made = {submit_job(booth, many, seed=1000 + i, size=(64, 48))["id"] for i in range(21)}
    queue.get_by_label("Status").select_option("")
    queue.get_by_label("Search").fill(f"Gita Many {tag}")
    expect(rows).to_have_count(20)
    more = queue.get_by_role("button", name="Load more")
    more.click()
    expect(rows).to_have_count(21)
    expect(more).to_be_hidden()
    shown = set(page.eval_on_selector_all("#queue-list li", "els => els.map(e => e.dataset.jobId)"))
    assert shown == made


def test_event_admin_create_edit_frame_and_bulk_upload(booth, desktop, page_errors, shot) -> None:
    tag = secrets.token_hex(3)
    slug = f"garden-{tag}"
    logged_in(desktop, booth.token)
    refused = ("status of 422", "status of 409")  # the bad file, the taken slug: on purpose
    page = open_console(desktop, page_errors, tab="events", allow=refused)
    panel = page.locator("#panel-events")

    create = panel.get_by_role("region", name="New event")
    create.get_by_label("Name").fill(f"Garden Party {tag}")
    create.get_by_label("Address (slug, optional)").fill(slug)
    create.get_by_label("Visibility").select_option("private")
    create.get_by_label("Default style").select_option("vintage")
    create.get_by_role("button", name="Create event").click()
    expect(page.locator("#event-select")).to_have_value(slug)
    created = booth.api("GET", f"/events/{slug}", auth=True)
    assert created["visibility"] == "private"
    assert created["settings"]["defaultStyle"] == "vintage"

    # A taken slug is refused with the API's message, on the form.
    create.get_by_label("Name").fill("Another party")
    create.get_by_label("Address (slug, optional)").fill(slug)
    create.get_by_role("button", name="Create event").click()
    expect(page.locator("#create-error")).to_be_visible()
    expect(page.locator("#create-error")).not_to_be_empty()

    edit = panel.get_by_role("region", name="Selected event")
    expect(edit.get_by_label("Name")).to_have_value(f"Garden Party {tag}")
    expect(edit.get_by_label("Default style")).to_have_value("vintage")
    edit.get_by_label("Name").fill(f"Garden Party {tag} (evening)")
    edit.get_by_label("Visibility").select_option("public")
    edit.get_by_label("Default style").select_option("bw")
    edit.get_by_role("button", name="Save changes").click()
    selected = page.locator("#event-select option:checked")
    expect(selected).to_have_text(f"Garden Party {tag} (evening)")
    edited = booth.api("GET", f"/events/{slug}", auth=True)
    assert edited["name"] == f"Garden Party {tag} (evening)"
    assert edited["visibility"] == "public"
    assert edited["settings"]["defaultStyle"] == "bw"
    # The new default style is preselected for captures.
    expect(page.locator("#capture-style")).to_have_value("bw")

    frame = panel.get_by_role("region", name="Frame")
    frame.get_by_label("Frame PNG").set_input_files(
        {"name": "frame.png", "mimeType": "image/png", "buffer": frame_png()}
    )
    frame.get_by_role("button", name="Upload frame").click()
    expect(page.locator("#frame-current")).to_contain_text("A frame is set")
    assert booth.api("GET", f"/events/{slug}", auth=True)["settings"]["frameKey"]

    bulk = panel.get_by_role("region", name="Photographer upload")
    files = [{"name": f"DSC_{i}.jpg", "mimeType": "image/jpeg", "buffer": photo(300 + i)}
             for i in range(3)]  # fmt: skip
    files.append({"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": not_an_image()})
    bulk.get_by_label("Photos").set_input_files(files)
    bulk.get_by_role("button", name="Upload photos").click()
    rows = bulk.locator("li.bulk-row")
    expect(rows).to_have_count(4)
    expect(page.locator("#bulk-summary")).to_have_text(
        f"3 of 4 uploaded to the {slug} gallery.", timeout=30_000
    )
    for i in range(3):
        row = rows.filter(has_text=f"DSC_{i}.jpg")
        expect(row.locator(".bulk-status")).to_have_text("Published")
        expect(row.locator("progress")).to_have_attribute("value", "100")
    # The server's own reason, per file.
    bad = rows.filter(has_text="notes.jpg").locator(".bulk-status")
    expect(bad).to_have_text("Refused: image data is truncated")
    shot(page, "console-events-desktop")

    photos = booth.api("GET", f"/api/gallery/{slug}/photos")["photos"]
    assert len(photos) == 3


def fits(page: Page) -> None:
    """Nothing is wider than the screen (no sideways scrolling)."""
    width = page.viewport_size["width"] if page.viewport_size else 0
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def snap(page: Page, shot, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, name)


def test_every_view_at_phone_and_laptop_size_and_keyboard_tabs(
    booth, phone, desktop, page_errors, shot
) -> None:
    guest = booth.guest("Fajar Layout With A Rather Long Name", "0812 2468 1357")
    job = submit_job(booth, guest, seed=404, style="pop")
    for size, context in (("phone", phone), ("desktop", desktop)):
        if size == "phone":  # the login form, before this context is logged in
            login = page_errors(context.new_page())
            login.goto("/console")
            expect(login.get_by_label("Password")).to_be_focused()
            fits(login)
            snap(login, shot, "console-login-phone")
            login.close()
        logged_in(context, booth.token)
        page = open_console(context, page_errors)
        find_guest(page, guest, "Fajar Layout With A Rather Long Name")
        take_photo(page)
        fits(page)
        snap(page, shot, f"console-capture-{size}")

        # Keyboard: arrow keys move between the tabs, and the hash follows.
        page.get_by_role("tab", name=re.compile(r"^Capture")).focus()
        page.keyboard.press("ArrowRight")
        pro_tab = page.get_by_role("tab", name="Pro Capture")
        expect(pro_tab).to_be_focused()
        expect(pro_tab).to_have_attribute("aria-selected", "true")
        expect(page).to_have_url(re.compile(r"#pro$"))
        expect(page.locator("#panel-pro")).to_be_visible()
        expect(page.locator("#panel-pro #guest-card")).to_be_visible()  # the same guest card
        start = page.get_by_role("button", name=re.compile(r"^Start Pro Capture for Fajar"))
        expect(start).to_be_enabled()
        fits(page)
        snap(page, shot, f"console-pro-{size}")

        page.keyboard.press("ArrowRight")
        expect(page.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")
        row = page.locator(f'#queue-list li[data-job-id="{job["id"]}"]')
        expect(row).to_be_visible()
        fits(page)
        snap(page, shot, f"console-queue-{size}")
        row.get_by_role("button", name=re.compile(r"^Details")).click()
        dialog = page.get_by_role("dialog")
        expect(dialog.locator(".job-head .chip")).to_have_text("Done", timeout=45_000)
        expect(dialog.locator(".job-preview img")).to_be_visible()
        shot(page, f"console-job-detail-{size}", full_page=False)
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()

        expect(row.get_by_role("button", name=re.compile(r"^Details"))).to_be_focused()
        page.get_by_role("tab", name="Queue").focus()
        page.keyboard.press("End")
        expect(page.get_by_role("tab", name="Events")).to_have_attribute("aria-selected", "true")
        expect(page.locator("#panel-events")).to_be_visible()
        fits(page)
        snap(page, shot, f"console-events-{size}")

        # A hash link opens its tab directly.
        page.goto("/console#queue")
        expect(page.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")


def test_queue_follows_a_running_job_live_and_cancels_it(booth, desktop, page_errors) -> None:
    tag = secrets.token_hex(3)
    guest = booth.guest(f"Hana Running {tag}", "0812 8642 9753")
    # A job another box is styling, held mid-way so the console can be watched following it.
    job_id = booth.sql(
        "insert into jobs (event_id, session_id, source, status, style_id, input_key,"
        " input_sha256, input_type, input_bytes, progress_percent, progress_stage, started_at,"
        " claimed_by, guest_name) select id, '" + guest["sessionId"] + "', 'operator', 'running',"
        " 'vivid', 'k/in.jpg', '" + secrets.token_hex(32) + "', 'image/jpeg', 1, 40,"
        " 'ai_processing', now(), 'another-box', 'Hana Running " + tag + "'"
        " from events where slug = 'demo' returning id"
    ).splitlines()[0]

    logged_in(desktop, booth.token)
    page = open_console(desktop, page_errors, tab="queue")
    page.locator("#panel-queue").get_by_label("Search").fill(f"Hana Running {tag}")
    expect(page.locator("#queue-list li")).to_have_count(1)
    row = page.locator(f'#queue-list li[data-job-id="{job_id}"]')
    expect(row.locator(".chip")).to_have_text("Running")
    expect(row.locator("progress")).to_have_attribute("value", "40")
    expect(row).to_contain_text("Styling · 40%")

    booth.sql(f"update jobs set progress_percent = 85, progress_stage = 'uploading_output'"
              f" where id = '{job_id}'")  # fmt: skip
    expect(row).to_contain_text("Saving · 85%")  # followed without a reload

    row.get_by_role("button", name=re.compile(r"^Details")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator(".job-head .chip")).to_have_text("Running")
    expect(dialog.locator(".stages [aria-current='step']")).to_contain_text("Saving")
    expect(dialog.get_by_role("button", name="Retry")).to_be_hidden()  # not final yet
    dialog.get_by_role("button", name="Cancel job").click()
    expect(dialog.locator("#job-result")).to_have_text(
        "Cancel requested: the job stops at its next stage."
    )
    assert booth.sql(f"select cancel_requested from jobs where id = '{job_id}'") == "t"
    expect(dialog.get_by_role("button", name="Cancel job")).to_be_hidden()

    # The box styling it honours the request: the dialog and the list follow.
    booth.sql(f"update jobs set status = 'canceled', error_code = 'canceled',"
              f" error_message = 'Canceled by the operator.', finished_at = now()"
              f" where id = '{job_id}'")  # fmt: skip
    expect(dialog.locator(".job-head .chip")).to_have_text("Canceled")
    expect(dialog.locator(".stages .stage-canceled")).to_contain_text("Saving")
    expect(dialog.get_by_role("button", name="Retry")).to_be_visible()
    page.keyboard.press("Escape")
    expect(row.locator(".chip")).to_have_text("Canceled")


def test_a_refused_token_returns_to_the_login_form(booth, desktop, page_errors) -> None:
    logged_in(desktop, "not-a-valid-token")
    page = page_errors(desktop.new_page(), allow=("status of 401",))
    page.goto("/console#queue")
    expect(page.get_by_role("heading", name="Operator login")).to_be_visible()
    expect(page.locator("#login-message")).to_have_text(
        "Your login has expired. Please log in again."
    )
    expect(page.locator("#console")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('photobot.console.token')") is None
