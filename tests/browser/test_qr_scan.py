"""The guest's QR at the booth: the console's camera reads the QR of the join page (the guest's
page URL, not their code) and finds the guest, in a Chromium that has no BarcodeDetector (as on
Linux, in Firefox and on older iOS Safari), so the box's own decoder (jsQR) does the reading.

The camera is Chromium's fake capture device playing a video file this test writes: frames of
the real QR the booth made for a real registration.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import segno
from PIL import Image
from playwright.sync_api import Browser, Playwright, expect

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP, LiveBooth
from tests.browser.console_helpers import logged_in

WIDTH, HEIGHT = 640, 480


def y4m_of(image: Image.Image, path: Path, frames: int = 10) -> None:
    """A Y4M (4:2:0, full-range JPEG YCbCr) video of ``image`` standing still."""
    ycbcr = image.convert("RGB").resize((WIDTH, HEIGHT)).convert("YCbCr")
    y, cb, cr = ycbcr.split()
    half = (WIDTH // 2, HEIGHT // 2)
    planes = y.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + planes)


def qr_frame(text: str) -> Image.Image:
    """The guest's QR as a phone screen held up to the camera: centred, on white, with room."""
    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="png", scale=8, border=4)
    qr = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    side = 360
    qr = qr.resize((side, side), Image.Resampling.NEAREST)
    frame = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    frame.paste(qr, ((WIDTH - side) // 2, (HEIGHT - side) // 2))
    return frame


@pytest.fixture(scope="module")
def guest(booth: LiveBooth) -> dict:
    return booth.guest(name="Sari Scanned")


@pytest.fixture(scope="module")
def camera_browser(
    playwright: Playwright, guest: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    """A Chromium whose camera shows the guest's QR (the booth's own, from their guestUrl)."""
    video = tmp_path_factory.mktemp("camera") / "guest-qr.y4m"
    y4m_of(qr_frame(guest["guestUrl"]), video)
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={video}"],
    )
    yield browser
    browser.close()


def test_the_guest_qr_is_scanned_without_barcode_detector(
    booth: LiveBooth, camera_browser: Browser, guest: dict, page_errors, shot
) -> None:
    context = camera_browser.new_context(base_url=booth.url, permissions=["camera"], **DESKTOP)
    context.set_default_timeout(20_000)
    logged_in(context, booth.token)
    try:
        page = page_errors(context.new_page())
        page.goto("/console#capture")
        expect(page.locator("#event-select")).to_have_value("demo")
        assert page.evaluate("'BarcodeDetector' in window") is False  # the jsQR path, for real
        assert page.evaluate("typeof window.jsQR") == "function"  # served by the box
        scan = page.get_by_role("button", name="Scan QR")
        expect(scan).to_be_visible()
        with page.expect_response(re.compile(r"/sessions/scan$")) as answer:
            scan.click()
        assert answer.value.status == 200
        expect(page.locator("#guest-name")).to_have_text("Sari Scanned")
        expect(page.locator("#guest-code")).to_have_text(guest["code"])
        expect(page.locator("#lookup-code")).to_have_value(guest["code"])
        expect(page.locator("#scanner")).to_be_hidden()  # and the camera is off again
        assert page.evaluate("document.querySelector('#scanner-video').srcObject") is None
        shot(page, "console-qr-scanned")
    finally:
        context.close()


#: Every camera stream the page opens, kept where the test can see whether it is still live.
RECORD_STREAMS = """
window.__streams = [];
const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await open(constraints);
  window.__streams.push(stream);
  return stream;
};
"""
ALL_ENDED = "n => window.__streams.length === n && window.__streams.every(s => s.getTracks().every(t => t.readyState === 'ended'))"  # noqa: E501


def test_a_camera_opened_after_its_scan_was_stopped_or_replaced_is_let_go(
    booth: LiveBooth, camera_browser: Browser, guest: dict, page_errors
) -> None:
    """Two taps on Scan QR, or Stop while the camera is still opening (the permission prompt):
    the camera that opens late is closed at once instead of staying on behind the page."""
    context = camera_browser.new_context(base_url=booth.url, permissions=["camera"], **DESKTOP)
    context.set_default_timeout(20_000)
    context.add_init_script(RECORD_STREAMS)
    logged_in(context, booth.token)
    try:
        page = page_errors(context.new_page())
        page.goto("/console#capture")
        expect(page.locator("#event-select")).to_have_value("demo")
        expect(page.get_by_role("button", name="Scan QR")).to_be_visible()

        # Both taps land before either camera has opened: one scan goes on, and finds the guest.
        page.evaluate(
            "() => { const b = document.querySelector('#scan-qr'); b.click(); b.click(); }"
        )
        expect(page.locator("#guest-name")).to_have_text("Sari Scanned")
        page.wait_for_function(ALL_ENDED, arg=2)

        page.get_by_role("button", name="Next guest").click()
        expect(page.locator("#guest-found")).to_be_hidden()
        page.evaluate(
            "() => { document.querySelector('#scan-qr').click();"
            " document.querySelector('#scanner-stop').click(); }"
        )
        page.wait_for_function(ALL_ENDED, arg=3)
        expect(page.locator("#scanner")).to_be_hidden()
        expect(page.locator("#lookup-error")).to_be_hidden()  # stopping is not a failure
        expect(page.locator("#guest-found")).to_be_hidden()  # nor does a stopped scan go on
    finally:
        context.close()
