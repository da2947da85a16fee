"""The live gallery in a real browser: pages, the "New images added" toast, polling without the
socket, and the photo view. Each test makes its own event, so galleries do not mix."""

from __future__ import annotations

import json
import re
import secrets
import time

from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.conftest import LiveBooth
from tests.browser.images import jpeg

_seed = iter(range(10_000, 1_000_000))
#: The first n images on the page have loaded (for screenshots that show photos, not grey).
LOADED = "n => [...document.images].slice(0, n).every(i => i.complete && i.naturalWidth)"


def new_event(booth: LiveBooth) -> str:
    event = booth.api("POST", "/events", auth=True,
                      json={"name": f"Gallery {secrets.token_hex(3)}"})  # fmt: skip
    return event["slug"]


def publish(booth: LiveBooth, slug: str, count: int = 1) -> list[str]:
    """Upload ``count`` new photos into the event's gallery; their ids, in upload order."""
    ids: list[str] = []
    for start in range(0, count, 10):
        files = [("photos", (f"p{n}.jpg", jpeg(next(_seed)), "image/jpeg"))
                 for n in range(start, min(count, start + 10))]  # fmt: skip
        body = booth.api("POST", f"/events/{slug}/photos", auth=True, files=files)
        assert not body["errors"]
        ids.extend(p["photoId"] for p in body["photos"])
    return ids


def all_ready(booth: LiveBooth, slug: str, count: int) -> bool:
    photos = booth.api("GET", f"/api/gallery/{slug}/photos", params={"limit": 200})["photos"]
    return len(photos) == count and all(p["ready"] for p in photos)


def tile_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("#grid > li", "els => els.map(e => e.dataset.photoId)")


def open_gallery(page: Page, slug: str) -> None:
    page.goto(f"/e/{slug}")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads


def test_gallery_pages_newest_first_with_infinite_scroll(booth, phone, desktop, page_errors,
                                                         shot) -> None:  # fmt: skip
    slug = new_event(booth)
    ids = publish(booth, slug, 36)
    booth.wait_for(lambda: all_ready(booth, slug, 36), timeout=90, what="derivatives")
    newest_first = list(reversed(ids))

    page = page_errors(phone.new_page())
    older_pages: list[str] = []
    page.on("request", lambda r: older_pages.append(r.url) if "before=" in r.url else None)
    open_gallery(page, slug)
    expect(page.locator("#grid > li")).to_have_count(30)  # the first page
    assert tile_ids(page) == newest_first[:30]
    first = page.locator("#grid > li img").first
    expect(first).to_have_attribute("loading", "lazy")
    # Thumbnails are the small derivative, not the full photo.
    api_newest = booth.api("GET", f"/api/gallery/{slug}/photos", params={"limit": 1})["photos"][0]
    assert first.get_attribute("src") == api_newest["urls"]["small"]
    # Every tile has the same square shape: arriving photos cannot shift the layout.
    sizes = page.eval_on_selector_all(
        "#grid > li", "els => els.slice(0, 6).map(e => [e.offsetWidth, e.offsetHeight])"
    )
    assert all(w == h == sizes[0][0] for w, h in sizes), sizes
    page.wait_for_function(LOADED, arg=9)
    shot(page, "gallery-phone", full_page=False)

    # Scrolling to the end brings the older page (the `before` cursor), each photo once.
    page.locator("#grid-sentinel").scroll_into_view_if_needed()
    expect(page.locator("#grid > li")).to_have_count(36)
    assert tile_ids(page) == newest_first
    assert len(older_pages) == 1  # one `before` page, and the end noticed (no further asks)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360

    wide = page_errors(desktop.new_page())
    open_gallery(wide, slug)
    wide.wait_for_function(LOADED, arg=12)
    shot(wide, "gallery-desktop", full_page=False)


def test_new_photos_toast_then_prepend_without_reload(booth, phone, page_errors, shot) -> None:
    slug = new_event(booth)
    old = publish(booth, slug, 3)
    page = page_errors(phone.new_page())
    open_gallery(page, slug)
    expect(page.locator("#grid > li")).to_have_count(3)
    toast = page.get_by_role("button", name=re.compile("New images added"))
    expect(toast).to_be_hidden()

    # The toast appears within 2 s of the photo being published.
    [first] = publish(booth, slug, 1)
    published = time.monotonic()
    expect(toast).to_be_visible(timeout=2000)
    latency = time.monotonic() - published
    print(f"toast visible {latency * 1000:.0f} ms after the upload answered")
    expect(page.locator("#new-toast-text")).to_have_text("New images added")
    # Nothing was inserted on its own: the grid under the guest's thumb stays put.
    expect(page.locator("#grid > li")).to_have_count(3)

    more = publish(booth, slug, 2)
    expect(page.locator("#new-toast-text")).to_have_text("New images added (3)")
    shot(page, "gallery-phone-toast", full_page=False)

    page.mouse.wheel(0, 400)
    toast.click()
    expect(page.locator("#grid > li")).to_have_count(6)
    assert tile_ids(page) == [*reversed([first, *more]), *reversed(old)]
    expect(toast).to_be_hidden()
    page.wait_for_function("() => window.scrollY === 0")
    assert page.evaluate("window.__sameDocument") is True  # no reload

    # Someone looking at a photo is not interrupted: the toast waits behind the viewer.
    page.locator("#grid > li button").nth(2).click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    [late] = publish(booth, slug, 1)
    expect(page.locator("#new-toast-text")).to_have_text("New images added")
    expect(viewer).to_be_visible()
    expect(page.locator("#grid > li")).to_have_count(6)
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    toast.click()
    expect(page.locator("#grid > li").first).to_have_attribute("data-photo-id", late)
    # Each photo on the page once, never announced again.
    ids = tile_ids(page)
    assert len(ids) == len(set(ids)) == 7
    expect(toast).to_be_hidden()
    # Camera photos show a placeholder until their thumbnails exist; `photo:updated` swaps the
    # thumbnail in where the placeholder was, without a reload.
    expect(page.locator("#grid .pending")).to_have_count(0, timeout=30_000)
    page.wait_for_function(LOADED, arg=7)
    assert tile_ids(page) == ids


def test_polling_delivers_when_the_socket_is_killed(booth, phone, page_errors) -> None:
    slug = new_event(booth)
    publish(booth, slug, 2)
    page = page_errors(phone.new_page())
    page.clock.install()  # lets the test move the page's timers (the 30-45 s poll) forward

    sockets: list[WebSocketRoute] = []
    kill = {"on": False}

    def route(ws: WebSocketRoute) -> None:
        if kill["on"]:
            ws.close(code=1011, reason="killed by the test")
            return
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/ws/events/"), route)
    open_gallery(page, slug)
    expect(page.locator("#grid > li")).to_have_count(2)

    kill["on"] = True
    for ws in sockets:
        ws.close(code=1011, reason="killed by the test")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "polling")

    [photo] = publish(booth, slug, 1)
    toast = page.get_by_role("button", name=re.compile("New images added"))
    page.clock.run_for(5_000)  # reconnect attempts come and go; no socket, no news yet
    expect(toast).to_be_hidden()
    page.clock.run_for(45_000)  # the poll (every 30-45 s) asks `since`
    expect(toast).to_be_visible()
    toast.click()
    expect(page.locator("#grid > li")).to_have_count(3)
    expect(page.locator("#grid > li").first).to_have_attribute("data-photo-id", photo)

    # The socket comes back: live again, and the photo already shown is not announced again.
    kill["on"] = False
    page.clock.run_for(60_000)
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    page.clock.run_for(2_000)
    expect(toast).to_be_hidden()
    assert tile_ids(page).count(photo) == 1
    assert page.evaluate("window.__sameDocument") is True


def test_a_relay_gap_resync_announces_what_the_socket_missed(booth, phone, page_errors) -> None:
    """A booth whose Redis relay had a gap tells its guests ``gallery:resync``: the page asks
    ``since`` and announces the photos it was never told about, once."""
    slug = new_event(booth)
    publish(booth, slug, 1)
    page = page_errors(phone.new_page())
    routes: list[WebSocketRoute] = []
    dropped: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if "photo:upload:complete" in str(message):
                dropped.append(str(message))  # the gap: this announcement never arrives
            else:
                ws.send(message)

        server.on_message(from_server)
        routes.append(ws)

    page.route_web_socket(re.compile(r"/ws/events/"), route)
    open_gallery(page, slug)
    expect(page.locator("#grid > li")).to_have_count(1)

    [missed] = publish(booth, slug, 1)
    for _ in range(200):
        if any(missed in m for m in dropped):
            break
        page.wait_for_timeout(25)  # the route's handler runs while the page is being waited on
    assert any(missed in m for m in dropped)
    toast = page.get_by_role("button", name=re.compile("New images added"))
    expect(toast).to_be_hidden()

    routes[-1].send(json.dumps({"type": "gallery:resync"}))
    expect(toast).to_be_visible()
    toast.click()
    expect(page.locator("#grid > li")).to_have_count(2)
    expect(page.locator("#grid > li").first).to_have_attribute("data-photo-id", missed)
    with page.expect_response(lambda r: "since=" in r.url):  # nothing new: nothing announced
        routes[-1].send(json.dumps({"type": "gallery:resync"}))
    expect(toast).to_be_hidden()
    assert tile_ids(page).count(missed) == 1 and page.evaluate("window.__sameDocument") is True


def test_photo_view_like_comment_download_share(booth, phone, page_errors, shot) -> None:
    slug = new_event(booth)
    [photo] = publish(booth, slug, 1)
    booth.wait_for(lambda: all_ready(booth, slug, 1), timeout=60, what="derivatives")
    page = page_errors(phone.new_page())
    open_gallery(page, slug)
    page.get_by_role("button", name="Open photo").click()
    viewer = page.get_by_role("dialog")
    expect(viewer).to_be_visible()
    expect(page).to_have_url(re.compile(rf"#photo={photo}$"))
    page.wait_for_function("() => document.getElementById('viewer-img').naturalWidth > 0")

    like = viewer.locator("#like-button")
    expect(like).to_have_attribute("aria-pressed", "false")
    like.click()
    expect(like).to_have_attribute("aria-pressed", "true")
    expect(viewer.locator("#like-count")).to_have_text("1")

    viewer.get_by_label("Write a comment").fill("Lovely <b>photo</b>!")
    viewer.get_by_role("button", name="Send").click()
    comment = viewer.locator("#comment-list li").first
    expect(comment).to_contain_text("Lovely <b>photo</b>!")  # text, never HTML
    shot(page, "gallery-phone-viewer", full_page=False)

    href = viewer.get_by_role("link", name="Download").get_attribute("href")
    assert href == f"/api/gallery/{slug}/photos/{photo}/download"
    download = page.request.get(href)
    assert download.ok and download.headers["content-type"].startswith("image/")

    viewer.get_by_role("button", name="Share").click()  # no Web Share in headless: copies
    expect(page.locator("#toasts")).to_contain_text(re.compile("Link copied|/e/"))

    # The link opens the same photo; like and comment are still there.
    other = page_errors(phone.new_page())
    other.goto(f"/e/{slug}#photo={photo}")
    expect(other.get_by_role("dialog")).to_be_visible()
    expect(other.locator("#comment-list li").first).to_contain_text("Lovely")
    other.keyboard.press("Escape")
    expect(other.locator("#grid > li")).to_have_count(1)
    expect(other.locator("#grid > li .badge")).to_have_text("♥ 1")


def test_private_event_has_no_public_gallery(booth, phone, page_errors) -> None:
    event = booth.api("POST", "/events", auth=True,
                      json={"name": "Secret party", "visibility": "private"})  # fmt: skip
    page = page_errors(phone.new_page())
    page.goto(f"/e/{event['slug']}")
    expect(page.get_by_text("This event's gallery is private.")).to_be_visible()
    expect(page.locator("#grid")).to_have_count(0)


def test_the_poll_runs_while_the_socket_is_open_and_never_announces_twice(
    booth, phone, page_errors, shot
) -> None:
    """Seed 004: the 30-45 s poll runs even while the socket is up (a socket can lose a message
    without closing). The announcement the socket lost is caught by the poll; when it arrives
    late after all, nothing is announced a second time."""
    slug = new_event(booth)
    publish(booth, slug, 1)
    page = page_errors(phone.new_page())
    page.clock.install()
    routes: list[WebSocketRoute] = []
    held: list[str | bytes] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if "photo:upload:complete" in str(message):
                held.append(message)  # lost, as far as the page can tell (for now)
            else:
                ws.send(message)

        server.on_message(from_server)
        routes.append(ws)

    page.route_web_socket(re.compile(r"/ws/events/"), route)
    open_gallery(page, slug)
    expect(page.locator("#grid > li")).to_have_count(1)

    [missed] = publish(booth, slug, 1)
    for _ in range(200):
        if any(missed in str(m) for m in held):
            break
        page.wait_for_timeout(25)  # the route's handler runs while the page is being waited on
    assert any(missed in str(m) for m in held)
    toast = page.get_by_role("button", name=re.compile("New images added"))
    expect(toast).to_be_hidden()
    with page.expect_response(lambda r: "since=" in r.url):
        page.clock.run_for(45_000)  # the poll, with the socket still open
    expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    expect(toast).to_be_visible()
    expect(page.locator("#new-toast-text")).to_have_text("New images added")  # one, not "(2)"
    shot(page, "gallery-poll-announces-a-lost-message")

    toast.click()
    expect(page.locator("#grid > li")).to_have_count(2)
    expect(page.locator("#grid > li").first).to_have_attribute("data-photo-id", missed)
    shot(page, "gallery-poll-caught-a-lost-message")

    for message in held:  # the lost announcement turns up after all: already shown, so silent
        routes[-1].send(message)
    with page.expect_response(lambda r: "since=" in r.url):
        page.clock.run_for(45_000)  # and the next poll finds nothing new either
    expect(toast).to_be_hidden()
    assert tile_ids(page).count(missed) == 1 and page.evaluate("window.__sameDocument") is True
