"""The guest's own page (the QR's link) in a real browser: results, live progress, downloads,
WhatsApp links, and a wrong link."""

from __future__ import annotations

import re
import secrets
from urllib.parse import unquote, urlsplit

from playwright.sync_api import expect

from tests.browser.conftest import LiveBooth
from tests.browser.images import jpeg


def submit_job(booth: LiveBooth, session_id: str, seed: int, style: str = "sepia") -> dict:
    files = {"image": ("booth.jpg", jpeg(seed), "image/jpeg")}
    data = {"sessionId": session_id, "eventId": "demo", "styleId": style}
    return booth.api("POST", "/jobs", auth=True, files=files, data=data, expect=201)


def test_guest_page_shows_results_downloads_and_whatsapp(booth, phone, desktop, page_errors,
                                                         shot) -> None:  # fmt: skip
    guest = booth.guest("Budi Santoso", "0812-9999-0001")
    job = submit_job(booth, guest["sessionId"], seed=1)

    page = page_errors(phone.new_page())
    page.goto(guest["guestUrl"])
    expect(page.locator("#guest-name")).to_have_text("Budi Santoso")
    expect(page.locator("#guest-code")).to_have_text(guest["code"])
    photo = page.locator("#guest-photos li")
    expect(photo).to_have_count(1, timeout=30_000)  # styled by the booth, then shown live
    page.wait_for_function(
        "() => [...document.querySelectorAll('#guest-photos img')].every(i => i.naturalWidth > 0)"
    )
    assert photo.get_attribute("data-photo-id")
    assert booth.api("GET", f"/jobs/{job['id']}", auth=True)["status"] == "succeeded"
    expect(page.locator("#progress-section")).to_be_hidden()

    download = photo.get_by_role("link", name="Download")
    response = page.request.get(download.get_attribute("href") or "")
    assert response.ok and response.headers["content-type"] == "image/jpeg"
    assert len(response.body()) > 1000

    wa = urlsplit(photo.get_by_role("link", name="Send to my WhatsApp").get_attribute("href") or "")
    assert (wa.scheme, wa.netloc, wa.path) == ("https", "wa.me", "/6281299990001")
    text = unquote(wa.query.removeprefix("text="))
    assert text.startswith("My photo from Demo event: http") and "/download" in text

    keep = urlsplit(page.get_by_role("link", name="Save link on WhatsApp").get_attribute("href"))
    assert keep.netloc == "wa.me" and guest["guestUrl"] in unquote(keep.query)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    shot(page, "guest-phone")

    wide = page_errors(desktop.new_page())
    wide.goto(guest["guestUrl"])
    expect(wide.locator("#guest-photos li img")).to_have_count(1)
    wide.wait_for_function("() => document.querySelector('#guest-photos img').naturalWidth > 0")
    shot(wide, "guest-desktop")


def test_guest_page_shows_live_progress(booth, phone, page_errors, shot) -> None:
    guest = booth.guest("Citra", "081277770002")
    # A job another box is styling, held mid-way so the page can be watched following it.
    job_id = booth.sql(
        "insert into jobs (event_id, session_id, source, status, style_id, input_key,"
        " input_sha256, input_type, input_bytes, progress_percent, progress_stage, started_at,"
        " claimed_by) select id, '" + guest["sessionId"] + "', 'operator', 'running', 'vivid',"
        " 'k/in.jpg', '" + secrets.token_hex(32) + "', 'image/jpeg', 1, 60, 'ai_processing',"
        " now(), 'another-box' from events where slug = 'demo' returning id"
    ).splitlines()[0]
    page = page_errors(phone.new_page())
    page.goto(guest["guestUrl"])
    item = page.locator(f'#job-list li[data-job-id="{job_id}"]')
    expect(item).to_contain_text("styling… 60%")
    expect(item.locator("progress")).to_have_attribute("value", "60")
    expect(page.locator("#photos-empty")).to_be_visible()
    shot(page, "guest-phone-progress")

    booth.sql(f"update jobs set progress_percent = 85, progress_stage = 'uploading_output'"
              f" where id = '{job_id}'")  # fmt: skip
    expect(item).to_contain_text("almost done…")  # the page follows without a reload
    booth.sql(f"update jobs set status = 'failed', error_code = 'provider_failed',"
              f" error_message = 'x', finished_at = now() where id = '{job_id}'")  # fmt: skip
    expect(item).to_contain_text("did not work")
    expect(item.locator("progress")).to_have_count(0)


def test_wrong_link_says_so(booth, phone, page_errors) -> None:
    page = page_errors(phone.new_page(), allow=("status of 404",))
    page.goto(f"/g/{secrets.token_urlsafe(32)}")
    expect(page.get_by_text(re.compile("This page is not available"))).to_be_visible()
    expect(page.locator("#guest-head")).to_be_hidden()
