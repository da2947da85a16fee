"""The page shells (web/pages.py): what the server itself promises about them.

What the pages *do* is tested in a real browser (tests/browser); here: routing, the security
headers, the static files' caching, and that nothing a user typed can break out of the page's
data block.
"""

from __future__ import annotations

import json
import re

from photobot.events import create_event
from tests.test_auth import Booth, booth_env_fixture, booth_fixture

__all__ = ["booth_env_fixture", "booth_fixture"]  # fixtures used by name


async def _html(b: Booth, path: str, status: int = 200) -> str:
    response = await b.client.get(path)
    assert response.status_code == status, path
    assert response.content_type == "text/html; charset=utf-8"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return (await response.get_data()).decode()


def _page_data(html: str) -> object:
    match = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.S)
    assert match, "no page-data block"
    return json.loads(match.group(1))


async def test_home_redirects_to_the_only_public_event_or_lists_them(booth: Booth) -> None:
    b = booth
    assert "No event yet" in await _html(b, "/")
    await create_event(b.services.db, {"name": "Wedding", "slug": "wedding"})
    await create_event(b.services.db, {"name": "Secret", "slug": "secret", "visibility": "private"})
    response = await b.client.get("/")
    assert response.status_code == 302 and response.headers["Location"] == "/e/wedding/join"
    await create_event(b.services.db, {"name": "Gala", "slug": "gala"})
    html = await _html(b, "/")
    assert "/e/wedding/join" in html and "/e/gala/join" in html and "secret" not in html


async def test_event_pages_and_unknown_event(booth: Booth) -> None:
    b = booth
    await create_event(b.services.db, {"name": "Wedding", "slug": "wedding"})
    await create_event(b.services.db, {"name": "Secret", "slug": "secret", "visibility": "private"})
    join = await _html(b, "/e/wedding/join")
    assert _page_data(join) == {"slug": "wedding", "name": "Wedding", "visibility": "public"}
    assert "Get my code" in join
    # Nothing sends WhatsApp messages: the page must not promise it, and says what does happen.
    assert "we send" not in join.lower()
    assert "Nothing is sent to it by itself" in join
    assert "/static/js/gallery.js?v=" in await _html(b, "/e/wedding")
    private = await _html(b, "/e/secret")
    assert "gallery is private" in private and "gallery.js" not in private
    assert "Event not found" in await _html(b, "/e/nope/join", 404)
    assert "Event not found" in await _html(b, "/e/nope", 404)


async def test_page_data_cannot_end_the_script_block(booth: Booth) -> None:
    b = booth
    name = "</script><script>alert(1)</script>"
    await create_event(b.services.db, {"name": name, "slug": "tricky"})
    html = await _html(b, "/e/tricky/join")
    assert "<script>alert(1)" not in html
    assert _page_data(html) == {"slug": "tricky", "name": name, "visibility": "public"}


async def test_guest_page_keeps_its_token_private(booth: Booth) -> None:
    response = await booth.client.get("/g/some-token-value")
    assert response.status_code == 200
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "private, no-store"


async def test_console_carries_booth_and_styles(booth: Booth) -> None:
    data = _page_data(await _html(booth, "/console"))
    assert isinstance(data, dict)
    assert data["boothId"] == booth.services.settings.booth_id
    assert {"id": "sepia", "label": "Sepia"} in data["styles"]


async def test_static_files_are_versioned_and_cached(booth: Booth) -> None:
    b = booth
    html = await _html(b, "/e/x/join", 404)
    [css] = re.findall(r'href="(/static/app\.css\?v=[0-9a-f]{12})"', html)
    response = await b.client.get(css)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "--accent" in (await response.get_data()).decode()
    js = await b.client.get("/static/js/common.js")
    assert js.status_code == 200 and "javascript" in js.content_type
    for bad in ["/static/../pages.py", "/static/%2e%2e/pages.py", "/static/nope.js"]:
        assert (await b.client.get(bad)).status_code == 404, bad
