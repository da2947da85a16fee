"""Guest registration in a real browser: the form, the API's validation messages, the result."""

from __future__ import annotations

import json
import re

from playwright.sync_api import expect


def test_register_shows_code_qr_and_page_link(booth, phone, page_errors, shot) -> None:
    page = page_errors(phone.new_page(), allow=("status of 422",))  # the refused number
    page.goto("/e/demo/join")
    expect(page.get_by_role("heading", name="Get your photo code")).to_be_visible()
    shot(page, "join-phone")

    # Nothing typed: told at once, on the field.
    page.get_by_role("button", name="Get my code").click()
    expect(page.locator("#name-error")).to_have_text("Please enter your name.")
    expect(page.get_by_label("Your name")).to_have_attribute("aria-invalid", "true")

    # A number the API refuses: its message appears under the WhatsApp field.
    page.get_by_label("Your name").fill("Ayu Lestari")
    page.get_by_label("WhatsApp number").fill("12")
    page.get_by_role("button", name="Get my code").click()
    expect(page.locator("#whatsapp-error")).to_be_visible()
    expect(page.locator("#whatsapp-error")).not_to_be_empty()
    expect(page.locator("#name-error")).to_be_hidden()
    shot(page, "join-phone-invalid")

    page.get_by_label("WhatsApp number").fill("0812 3456 7890")
    page.get_by_role("button", name="Get my code").click()
    code = page.locator("#result-code")
    expect(code).to_have_text(re.compile(r"^[A-HJ-NP-Z2-9]{6}$"))
    qr = page.locator("#result-qr")
    expect(qr).to_be_visible()
    # The QR really loaded (an SVG from the box) and is drawn at its full size.
    assert page.evaluate("img => img.complete && img.naturalWidth > 0", qr.element_handle())
    box = qr.bounding_box()
    assert box is not None and box["width"] >= 200
    link = page.get_by_role("link", name="Open my photo page")
    href = link.get_attribute("href")
    assert href is not None and re.search(r"/g/[A-Za-z0-9_-]{30,}$", href)
    # Fits a 360 px phone: nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    shot(page, "join-phone-result")

    # The operator can find this guest by the code shown.
    found = booth.api("GET", f"/sessions/{code.inner_text()}", auth=True,
                      params={"eventId": "demo"})  # fmt: skip
    assert found["name"] == "Ayu Lestari"
    assert found["whatsapp"] == "+6281234567890"

    link.click()
    expect(page).to_have_url(href)

    # Back on the join page, this phone is offered its page again.
    page.goto("/e/demo/join")
    expect(page.get_by_text("You already registered on this phone.")).to_be_visible()


def test_join_page_desktop_and_unknown_event(booth, desktop, page_errors, shot) -> None:
    page = page_errors(desktop.new_page(), allow=("status of 404",))
    page.goto("/e/demo/join")
    expect(page.get_by_label("Your name")).to_be_visible()
    shot(page, "join-desktop")
    response = page.goto("/e/no-such-event/join")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Event not found")).to_be_visible()


def test_home_leads_to_the_join_page(booth, phone, page_errors) -> None:
    page = page_errors(phone.new_page())
    public = [e for e in booth.api("GET", "/events", auth=True)["events"]
              if e["visibility"] == "public"]  # fmt: skip
    page.goto("/")
    if len(public) == 1:  # the usual booth: / goes straight to the one event's join page
        expect(page).to_have_url(re.compile(r"/e/demo/join$"))
    else:  # other tests made events: a list, each with its join and gallery links
        items = page.get_by_role("listitem")
        expect(items).to_have_count(len(public))
        items.filter(has_text="Demo event").get_by_role("link", name="Join").click()
        expect(page).to_have_url(re.compile(r"/e/demo/join$"))
    expect(page.get_by_role("heading", name="Get your photo code")).to_be_visible()


def test_a_booth_that_cannot_answer_gets_plain_words(booth, phone, page_errors) -> None:
    """The booth's own 503 body (its shape pinned by tests/test_outages.py) names internals;
    the guest reads plain words, and the form can be sent again."""
    page = page_errors(phone.new_page(), allow=("status of 503",))
    body = json.dumps(
        {"error": {"code": "database_unavailable", "message": "database unavailable: TimeoutError"}}
    )
    page.route(
        "**/sessions",
        lambda route: route.fulfill(status=503, content_type="application/json", body=body),
    )
    page.goto("/e/demo/join")
    page.get_by_label("Your name").fill("Sari Wulandari")
    page.get_by_label("WhatsApp number").fill("0812 9876 5432")
    page.get_by_role("button", name="Get my code").click()
    error = page.locator("#form-error")
    expect(error).to_have_text("The booth cannot answer right now. Please try again in a moment.")
    expect(page.get_by_role("button", name="Get my code")).to_be_enabled()

    page.unroute("**/sessions")  # the booth answers again
    page.get_by_role("button", name="Get my code").click()
    expect(page.locator("#result-code")).to_have_text(re.compile(r"^[A-HJ-NP-Z2-9]{6}$"))
