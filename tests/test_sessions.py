"""Guest sessions on real services: registration, codes, tokens, QR, lookups, limits, expiry."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree

import pytest
import segno
import trio

from actors.registry import (
    CODE_ALPHABET,
    SessionRegistry,
    normalize_whatsapp,
    whatsapp_share_link,
)
from photobot.errors import Conflict, InvalidInput, NotFound
from photobot.events import Event, create_event
from photobot.root import actor_specs
from photobot.supervisor import Supervisor
from tests.test_auth import JSON, Booth, BoothEnv, booth_env_fixture, booth_fixture, error_of
from web.routes import sessions as session_routes

__all__ = ["booth_env_fixture", "booth_fixture"]  # fixtures used by name

CODE_RE = re.compile(f"[{CODE_ALPHABET}]{{6}}")
GUEST = {"name": "Ana", "whatsapp": "08123456789"}


async def _event(b: Booth, slug: str = "wedding") -> Event:
    return await create_event(b.services.db, {"name": slug.title(), "slug": slug})


async def _register(b: Booth, body: dict[str, Any], ip: str = "10.1.0.1") -> Any:
    return await b.client.post("/sessions", json=body, scope_base={"client": (ip, 50000)})


def _qr_modules(svg: bytes) -> set[tuple[int, int]]:
    """Decode segno's SVG path (``M x y``, ``m dx dy``, ``h n`` in module units) to dark cells."""
    root = ElementTree.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    (path,) = root.iter("{http://www.w3.org/2000/svg}path")
    dark: set[tuple[int, int]] = set()
    x = y = 0.0
    for op, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?", path.get("d", "")):
        if op == "M":
            x, y = float(a), float(b)
        elif op == "m":
            x, y = x + float(a), y + float(b)
        else:
            for i in range(int(a)):
                dark.add((int(x) + i, int(y)))
            x += float(a)
    return dark


def _expected_modules(data: str) -> set[tuple[int, int]]:
    qr = segno.make(data, error="m", micro=False)
    border = session_routes.QR_BORDER
    return {
        (col + border, row + border)
        for row, line in enumerate(qr.matrix)
        for col, bit in enumerate(line)
        if bit
    }


# -- registration ----------------------------------------------------------------------------


async def test_register_happy_path(booth: Booth) -> None:
    b = booth
    event = await _event(b)
    before = datetime.now(UTC)
    response = await _register(b, {"eventId": "wedding", "name": "  Ana 😀 ", "whatsapp":
                                   "+62 812-3456-789"})  # fmt: skip
    assert response.status_code == 201, await response.get_json()
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.get_json()
    assert set(body) == {"sessionId", "eventId", "code", "guestUrl", "expiresAt", "qrSvgUrl"}
    assert CODE_RE.fullmatch(body["code"])
    assert body["eventId"] == str(event.id)
    url = urlsplit(body["guestUrl"])
    assert f"{url.scheme}://{url.netloc}" == "http://localhost"  # the request's host
    token = url.path.removeprefix("/g/")
    assert url.path == f"/g/{token}" and len(token) >= 43
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert body["qrSvgUrl"] == body["guestUrl"] + "/qr.svg"
    expires = datetime.fromisoformat(body["expiresAt"])
    ttl = timedelta(seconds=b.services.settings.session_ttl_seconds)
    assert before + ttl - timedelta(seconds=5) <= expires <= datetime.now(UTC) + ttl

    row = await b.services.db.fetchrow("select * from guest_sessions")
    assert row["name"] == "Ana 😀" and row["whatsapp"] == "+628123456789"
    assert bytes(row["token_hash"]) == hashlib.sha256(token.encode()).digest()
    assert token not in repr(dict(row))  # only the hash is kept
    assert str(row["client_ip"]) == "10.1.0.1"

    # The guest's token finds the session; the QR shows the guest URL.
    found = await b.services.registry.lookup_token(token)
    assert str(found.id) == body["sessionId"] and found.code == body["code"]
    qr = await b.client.get(urlsplit(body["qrSvgUrl"]).path)
    assert qr.status_code == 200
    assert qr.headers["Content-Type"].startswith("image/svg+xml")
    assert qr.headers["Referrer-Policy"] == "no-referrer"
    assert _qr_modules(await qr.get_data()) == _expected_modules(body["guestUrl"])
    assert _qr_modules(await qr.get_data()) != _expected_modules(body["guestUrl"] + "x")

    # Registering by the event's uuid works the same.
    by_id = await _register(b, {"eventId": str(event.id), **GUEST})
    assert by_id.status_code == 201


async def test_wrong_tokens_are_not_found(booth: Booth) -> None:
    b = booth
    await _event(b)
    await _register(b, {"eventId": "wedding", **GUEST})
    for token in ("", "x", "A" * 43, "A" * 500):
        with pytest.raises(NotFound):
            await b.services.registry.lookup_token(token)
    assert (await b.client.get(f"/g/{'A' * 43}/qr.svg")).status_code == 404


async def test_public_base_url_is_used_for_links(booth_env: BoothEnv) -> None:
    async with booth_env.open(public_base_url="https://booth.example.com/") as b:
        await _event(b)
        body = await (await _register(b, {"eventId": "wedding", **GUEST})).get_json()
        assert body["guestUrl"].startswith("https://booth.example.com/g/")
        qr = await b.client.get(urlsplit(body["qrSvgUrl"]).path)
        assert _qr_modules(await qr.get_data()) == _expected_modules(body["guestUrl"])


WHATSAPP_OK = [
    ("08123456789", "+628123456789"),
    ("+62 812-3456-789", "+628123456789"),
    ("628123456789", "+628123456789"),
    ("8123456789", "+628123456789"),
    ("0812-3456-7890", "+6281234567890"),
    ("62812345678", "+62812345678"),  # phonenumbers alone would make this +6262812345678
    ("+62 (0)812 3456 789", "+628123456789"),
    ("(0812) 3456.789", "+628123456789"),
    ("+14155550123", "+14155550123"),
    ("+44 7911 123456", "+447911123456"),
    ("0044 7911 123456", "+447911123456"),
]
WHATSAPP_BAD: list[Any] = [
    "12", "abc", "(021) 555-1234", "021-5551234", "+62 21 5551234", "+44 20 7183 8750", "0812",
    "+6281234567890123", "0812-3456-789x", "", "   ", "+", "1" * 40, 628123456789, None,
    ["08123456789"],
]  # fmt: skip


@pytest.mark.parametrize(("given", "e164"), WHATSAPP_OK)
def test_whatsapp_normalized_to_e164(given: str, e164: str) -> None:
    assert normalize_whatsapp(given) == e164


@pytest.mark.parametrize("given", WHATSAPP_BAD)
def test_whatsapp_rejected(given: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        normalize_whatsapp(given)
    assert caught.value.code == "invalid_whatsapp" and "whatsapp" in caught.value.message


async def test_bad_whatsapp_and_names_are_422_naming_the_field(booth: Booth) -> None:
    b = booth
    await _event(b)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"whatsapp": "12"}, "invalid_whatsapp", "whatsapp"),
        ({"whatsapp": "abc"}, "invalid_whatsapp", "whatsapp"),
        ({"whatsapp": "(021) 555-1234"}, "invalid_whatsapp", "whatsapp"),
        ({"whatsapp": 8123456789}, "invalid_whatsapp", "whatsapp"),
        ({"whatsapp": None}, "invalid_whatsapp", "whatsapp"),
        ({"name": ""}, "invalid_name", "name"),
        ({"name": "   "}, "invalid_name", "name"),
        ({"name": "x" * 101}, "invalid_name", "name"),
        ({"name": "bad\x00name"}, "invalid_name", "name"),
        ({"name": "new\nline"}, "invalid_name", "name"),
        ({"name": "\ud800"}, "invalid_name", "name"),
        ({"name": "Ana\u202egnp.exe"}, "invalid_name", "name"),
        ({"name": 42}, "invalid_name", "name"),
        ({"name": ["Ana"]}, "invalid_name", "name"),
    ]
    for i, (override, code, field) in enumerate(cases):
        response = await _register(b, {"eventId": "wedding", **GUEST, **override}, f"10.2.0.{i}")
        assert response.status_code == 422, override
        error = await error_of(response)
        assert error["code"] == code and field in error["message"], (override, error)
    for i, missing in enumerate(("name", "whatsapp", "eventId")):
        body = {"eventId": "wedding", **GUEST}
        del body[missing]
        response = await _register(b, body, f"10.3.0.{i}")
        assert response.status_code == 422
        assert missing in (await error_of(response))["message"]
    ok = await _register(b, {"eventId": "wedding", "name": "x" * 100, "whatsapp": "8123456789"})
    assert ok.status_code == 201
    assert await b.services.db.fetchval("select count(*) from guest_sessions") == 1


async def test_bad_bodies_and_unknown_events(booth: Booth) -> None:
    b = booth
    await _event(b)
    bodies: list[tuple[dict[str, Any], int, str]] = [
        ({"data": b"{", "headers": JSON}, 400, "invalid_json"),
        ({"data": b"[1]", "headers": JSON}, 400, "invalid_json"),
        ({"data": b"eventId=wedding", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "unsupported_media_type"),  # noqa: E501
        ({"json": {"eventId": 5, **GUEST}}, 422, "invalid_input"),
        ({"json": {"eventId": "wedding", "code": "AAAAAA", **GUEST}}, 422, "invalid_input"),
        ({"json": {"eventId": "no-such-event", **GUEST}}, 404, "event_not_found"),
        ({"json": {"eventId": str(uuid.uuid4()), **GUEST}}, 404, "event_not_found"),
    ]  # fmt: skip
    for i, (kwargs, status, code) in enumerate(bodies):
        response = await b.client.post(
            "/sessions", scope_base={"client": (f"10.4.0.{i}", 1)}, **kwargs
        )
        assert response.status_code == status, kwargs
        assert (await error_of(response))["code"] == code
    assert await b.services.db.fetchval("select count(*) from guest_sessions") == 0


async def test_registration_rate_limit_per_ip(booth: Booth) -> None:
    b = booth
    await _event(b)
    for _ in range(10):
        assert (await _register(b, {"eventId": "wedding", **GUEST}, "10.5.0.1")).status_code == 201
    limited = await _register(b, {"eventId": "wedding", **GUEST}, "10.5.0.1")
    assert limited.status_code == 429
    assert (await error_of(limited))["code"] == "rate_limited"
    assert 0 < int(limited.headers["Retry-After"]) <= 60
    assert (await _register(b, {"eventId": "wedding", **GUEST}, "10.5.0.2")).status_code == 201
    assert await b.services.db.fetchval("select count(*) from guest_sessions") == 11


async def test_registration_rate_limit_is_a_setting(booth_env: BoothEnv) -> None:
    # A box behind a tunnel sees every guest at one address: the operator raises the limit.
    async with booth_env.open(register_rate_limit_per_minute=3) as b:
        await _event(b)
        for _ in range(3):
            response = await _register(b, {"eventId": "wedding", **GUEST}, "10.6.0.1")
            assert response.status_code == 201
        limited = await _register(b, {"eventId": "wedding", **GUEST}, "10.6.0.1")
        assert limited.status_code == 429


# -- codes -----------------------------------------------------------------------------------


async def test_codes_unique_under_concurrent_registrations(booth: Booth) -> None:
    b = booth
    await _event(b)
    # Every code comes up twice in a row, so about half of all inserts collide and must retry.
    issued: list[str] = []

    def colliding_codes() -> str:
        n = len(issued) // 2
        code = "".join(CODE_ALPHABET[(n // 32**i) % 32] for i in range(6))
        issued.append(code)
        return code

    registries = {
        "colliding": SessionRegistry(
            b.services.db, b.services.cache, b.services.settings, code_factory=colliding_codes
        ),
        "random": b.services.registry,
    }
    for kind, registry in registries.items():
        codes: list[str] = []

        async def one(i: int, registry: SessionRegistry = registry, out: list[str] = codes) -> None:
            reg = await registry.register("wedding", f"Guest {i}", "08123456789", None)
            out.append(reg.session.code)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        assert len(codes) == 50 and len(set(codes)) == 50, kind
        assert all(CODE_RE.fullmatch(c) for c in codes), kind
    assert len(issued) > 50  # collisions happened and were retried
    assert await b.services.db.fetchval("select count(distinct code) from guest_sessions") == 100


async def test_code_space_exhaustion_is_reported(booth: Booth) -> None:
    b = booth
    await _event(b)
    same = SessionRegistry(
        b.services.db, b.services.cache, b.services.settings, code_factory=lambda: "ABCDEF"
    )
    await same.register("wedding", "First", "08123456789")
    with pytest.raises(Conflict):
        await same.register("wedding", "Second", "08123456789")


# -- operator lookup -------------------------------------------------------------------------


async def test_lookup_by_code_as_operator(booth: Booth) -> None:
    b = booth
    wedding = await _event(b)
    await _event(b, "gala")
    body = await (await _register(b, {"eventId": "wedding", **GUEST})).get_json()
    code = body["code"]

    response = await b.client.get(f"/sessions/{code}", headers=b.auth())
    assert response.status_code == 200
    found = await response.get_json()
    assert found == {
        "sessionId": body["sessionId"], "eventId": str(wedding.id), "code": code,
        "name": "Ana", "whatsapp": "+628123456789", "expiresAt": found["expiresAt"],
    }  # fmt: skip
    assert datetime.fromisoformat(found["expiresAt"]) == datetime.fromisoformat(body["expiresAt"])
    for query in ("?eventId=wedding", f"?eventId={wedding.id}"):
        r = await b.client.get(f"/sessions/{code.lower()}{query}", headers=b.auth())
        assert r.status_code == 200 and (await r.get_json())["sessionId"] == body["sessionId"]
    for path in (f"/sessions/{code}?eventId=gala", "/sessions/ZZZZZZ", "/sessions/0O1I00",
                 f"/sessions/{code}?eventId=no-such"):  # fmt: skip
        r = await b.client.get(path, headers=b.auth())
        assert r.status_code == 404, path
    for headers in ({}, {"Authorization": "Bearer forged"}):
        assert (await b.client.get(f"/sessions/{code}", headers=headers)).status_code == 401


async def test_a_scanned_guest_qr_finds_the_guest(booth: Booth) -> None:
    """The join page's QR holds the guest's page URL, not their code: the console's scanner
    sends whatever it read, and the booth resolves a page URL, a bare token or a code."""
    b = booth
    wedding = await _event(b)
    body = await (await _register(b, {"eventId": "wedding", **GUEST})).get_json()
    url = body["guestUrl"]
    token = url.rsplit("/", 1)[1]

    async def scan(payload: Any, headers: dict[str, str] | None = None) -> Any:
        return await b.client.post(
            "/sessions/scan", json=payload, headers=b.auth() if headers is None else headers
        )

    for qr in (url, f"{url}/", f"  {url}\n", token, f"http://10.0.0.9:8000/g/{token}?x=1",
               body["code"], body["code"].lower()):  # fmt: skip
        r = await scan({"qr": qr, "eventId": "wedding"})
        assert r.status_code == 200, qr
        found = await r.get_json()
        assert found["sessionId"] == body["sessionId"] and found["name"] == "Ana", qr
        assert found["eventId"] == str(wedding.id) and token not in json.dumps(found)
    assert (await scan({"qr": url})).status_code == 200  # no event needed for a page URL
    await _event(b, "gala")
    r = await scan({"qr": url, "eventId": "gala"})  # the console is on another event
    assert r.status_code == 422 and (await error_of(r))["code"] == "session_event_mismatch"
    for qr in (url[:-1] + ("A" if url[-1] != "A" else "B"), "https://example.com/other",
               "ZZZZZZ", "x" * 40):  # fmt: skip
        r = await scan({"qr": qr})
        assert r.status_code == 404 and (await error_of(r))["code"] == "session_not_found", qr
    for payload in ({}, {"qr": ""}, {"qr": 5}, {"qr": "x" * 600}, {"qr": url, "eventId": 3}):
        assert (await scan(payload)).status_code == 422, payload
    for headers in ({}, {"Authorization": "Bearer forged"}):
        assert (await scan({"qr": url}, headers)).status_code == 401
    await b.services.db.execute("update guest_sessions set expires_at = now() - interval '1 s'")
    assert (await scan({"qr": url})).status_code == 404  # an expired guest is not found


async def test_same_code_at_two_events_needs_the_event(booth: Booth) -> None:
    b = booth
    await _event(b)
    await _event(b, "gala")
    same = SessionRegistry(
        b.services.db, b.services.cache, b.services.settings, code_factory=lambda: "ABCDEF"
    )
    await same.register("wedding", "Ana", "08123456789")
    await same.register("gala", "Budi", "08123456780")
    r = await b.client.get("/sessions/ABCDEF", headers=b.auth())
    assert r.status_code == 409 and (await error_of(r))["code"] == "ambiguous_code"
    r = await b.client.get("/sessions/ABCDEF?eventId=gala", headers=b.auth())
    assert (await r.get_json())["name"] == "Budi"


async def test_expired_sessions_are_not_found(booth: Booth) -> None:
    b = booth
    await _event(b)
    body = await (await _register(b, {"eventId": "wedding", **GUEST})).get_json()
    token = body["guestUrl"].rsplit("/", 1)[1]
    registry = b.services.registry
    live = await registry.get(body["sessionId"])
    assert live.code == body["code"] and not live.expired

    await b.services.db.execute("update guest_sessions set expires_at = now() - interval '1 s'")
    r = await b.client.get(f"/sessions/{body['code']}", headers=b.auth())
    assert r.status_code == 404 and (await error_of(r))["code"] == "session_not_found"
    assert (await b.client.get(f"/g/{token}/qr.svg")).status_code == 404
    with pytest.raises(NotFound):
        await registry.lookup_token(token)
    with pytest.raises(NotFound):
        await registry.get(body["sessionId"], include_expired=False)
    # By id it is still there, marked expired (the jobs API answers "expired", not "unknown"),
    # and the guest's page may still find it to show old photos.
    assert (await registry.get(body["sessionId"])).expired
    assert (await registry.lookup_token(token, include_expired=True)).code == body["code"]
    for bad_id in ("not-a-uuid", str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await registry.get(bad_id)


# -- the actor and the share link ------------------------------------------------------------


async def test_registry_actor_runs_under_the_supervisor(booth: Booth) -> None:
    (spec,) = [s for s in actor_specs(booth.services) if s.name == "session_registry"]
    supervisor = Supervisor([spec])
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(supervisor.run)
        assert [s.state for s in supervisor.status()] == ["running"]
        with trio.fail_after(5):
            await supervisor.stop()
    assert [s.state for s in supervisor.status()] == ["stopped"]


def test_whatsapp_share_link() -> None:
    text = "Foto kamu 😀 & teman #booth\nlihat: https://x/g/abc?x=1"
    link = whatsapp_share_link("+628123456789", text)
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "wa.me", "/628123456789")
    assert parts.query.startswith("text=") and "+" not in parts.query and " " not in link
    assert "%20" in parts.query and "%26" in parts.query and "%23" in parts.query
    assert "%0A" in parts.query
    assert unquote(parts.query.removeprefix("text=")) == text
    assert whatsapp_share_link("+14155550123") == "https://wa.me/14155550123"
    for bad in ("628123456789", "+0123", "+62 812"):
        with pytest.raises(InvalidInput):
            whatsapp_share_link(bad, "hi")
