"""Events API and ``resolve_event`` on real services: CRUD, slug-or-id, 409, strict settings."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from photobot.errors import NotFound
from photobot.events import resolve_event, slug_from_name
from tests.test_auth import JSON, Booth, booth_env_fixture, booth_fixture, error_of

__all__ = ["booth_env_fixture", "booth_fixture"]  # fixtures used by name


async def _create(b: Booth, body: dict[str, Any]) -> Any:
    return await b.client.post("/events", json=body, headers=b.auth())


async def test_create_get_list_by_slug_and_id(booth: Booth) -> None:
    b = booth
    created = await _create(b, {"name": "  Budi & Sari's Wedding  "})
    assert created.status_code == 201
    event = await created.get_json()
    assert event["slug"] == "budi-sari-s-wedding"
    assert created.headers["Location"] == "/events/budi-sari-s-wedding"
    assert event["name"] == "Budi & Sari's Wedding"
    assert event["visibility"] == "public"
    assert event["settings"] == {
        "defaultStyle": None, "fallbackChain": [], "frameKey": None, "branding": None,
    }  # fmt: skip
    assert uuid.UUID(event["id"]) and event["createdAt"] and event["updatedAt"]

    full = await _create(
        b,
        {
            "name": "Launch",
            "slug": "launch-2026",
            "visibility": "private",
            "settings": {
                "defaultStyle": "anime",
                "fallbackChain": ["comfyui", "kie", "local"],
                "frameKey": "events/frames/launch.png",
                "branding": "Launch 2026 · Jakarta",
            },
        },
    )
    assert full.status_code == 201, await full.get_json()
    launch = await full.get_json()
    assert launch["settings"]["fallbackChain"] == ["comfyui", "kie", "local"]
    assert launch["visibility"] == "private"

    by_slug = await (await b.client.get("/events/launch-2026", headers=b.auth())).get_json()
    by_id = await (await b.client.get(f"/events/{launch['id']}", headers=b.auth())).get_json()
    assert by_slug == by_id == launch
    listed = await (await b.client.get("/events", headers=b.auth())).get_json()
    assert [e["slug"] for e in listed["events"]] == ["launch-2026", "budi-sari-s-wedding"]

    # Stored snake_case, only what is set (the worker pool reads this column).
    stored = await b.services.db.fetchval(
        "select settings::text from events where slug = 'launch-2026'"
    )
    assert '"fallback_chain": ["comfyui", "kie", "local"]' in stored
    assert "fallbackChain" not in stored

    for missing in ("nope", str(uuid.uuid4()), "x" * 100):
        response = await b.client.get(f"/events/{missing}", headers=b.auth())
        assert response.status_code == 404
        assert (await error_of(response))["code"] == "event_not_found"


async def test_duplicate_slugs_are_409(booth: Booth) -> None:
    assert (await _create(booth, {"name": "Gala"})).status_code == 201
    for body in ({"name": "Gala"}, {"name": "Other", "slug": "gala"}):
        response = await _create(booth, body)
        assert response.status_code == 409
        error = await error_of(response)
        assert error["code"] == "duplicate_slug" and "gala" in error["message"]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"name": "E", "settings": {"fallbackChain": ["comfyui", "dalle"]}}, "invalid_settings",
         "fallbackChain"),
        ({"name": "E", "settings": {"fallbackChain": ["kie", "kie"]}}, "invalid_settings",
         "fallbackChain"),
        ({"name": "E", "settings": {"fallbackChain": "kie"}}, "invalid_settings", "fallbackChain"),
        ({"name": "E", "settings": {"fallbackChain": [1]}}, "invalid_settings", "fallbackChain"),
        ({"name": "E", "settings": {"provider": "kie"}}, "invalid_settings", "provider"),
        ({"name": "E", "settings": {"defaultStyle": "Bad Style!"}}, "invalid_settings",
         "defaultStyle"),
        ({"name": "E", "settings": {"frameKey": "../../etc/passwd"}}, "invalid_settings",
         "frameKey"),
        ({"name": "E", "settings": {"frameKey": 5}}, "invalid_settings", "frameKey"),
        ({"name": "E", "settings": {"branding": "x" * 201}}, "invalid_settings", "branding"),
        ({"name": "E", "settings": ["kie"]}, "invalid_settings", "settings"),
        ({"name": "E", "slug": "Bad Slug"}, "invalid_slug", "slug"),
        ({"name": "E", "slug": "-edge-"}, "invalid_slug", "slug"),
        ({"name": "E", "slug": str(uuid.uuid4())}, "invalid_slug", "slug"),
        ({"name": "E", "slug": 7}, "invalid_slug", "slug"),
        ({"name": "E", "visibility": "secret"}, "invalid_visibility", "visibility"),
        ({"name": "   "}, "invalid_name", "name"),
        ({"name": "x" * 201}, "invalid_name", "name"),
        ({"name": "tab\there"}, "invalid_name", "name"),
        ({"name": None}, "invalid_name", "name"),
        ({}, "invalid_name", "name"),
        ({"name": "E", "owner": "me"}, "invalid_input", "owner"),
    ],
)  # fmt: skip
async def test_bad_input_is_422_naming_the_field(
    booth: Booth,
    body: dict[str, Any],
    code: str,
    field: str,
) -> None:
    response = await _create(booth, body)
    assert response.status_code == 422
    error = await error_of(response)
    assert error["code"] == code
    assert field in error["message"]
    assert await booth.services.db.fetchval("select count(*) from events") == 0


async def test_bad_bodies_are_4xx(booth: Booth) -> None:
    for data, status in ((b"{", 400), (b'["name"]', 400), (b"null", 400)):
        response = await booth.client.post("/events", data=data, headers={**JSON, **booth.auth()})
        assert response.status_code == status
        assert (await error_of(response))["code"] == "invalid_json"
    patch = await booth.client.patch("/events/x", data=b"[]", headers={**JSON, **booth.auth()})
    assert patch.status_code == 400


async def test_patch(booth: Booth) -> None:
    b = booth
    event = await (
        await _create(b, {"name": "Expo", "settings": {"defaultStyle": "pop", "branding": "Hi"}})
    ).get_json()

    async def patch(target: str, body: dict[str, Any]) -> Any:
        return await b.client.patch(f"/events/{target}", json=body, headers=b.auth())

    r = await patch("expo", {"name": "Expo 2026", "settings": {"fallbackChain": ["kie"]}})
    assert r.status_code == 200
    after = await r.get_json()
    assert after["name"] == "Expo 2026"
    # Settings merge: the untouched keys stay.
    assert after["settings"] == {
        "defaultStyle": "pop", "fallbackChain": ["kie"], "frameKey": None, "branding": "Hi",
    }  # fmt: skip
    r = await patch(event["id"], {"settings": {"branding": None}, "visibility": "private"})
    assert (await r.get_json())["settings"]["branding"] is None
    assert (await r.get_json())["visibility"] == "private"

    r = await patch("expo", {"slug": "expo-2026"})
    assert (await r.get_json())["slug"] == "expo-2026"
    assert (await b.client.get("/events/expo", headers=b.auth())).status_code == 404

    await _create(b, {"name": "Taken"})
    assert (await patch("expo-2026", {"slug": "taken"})).status_code == 409
    bad = await patch("expo-2026", {"settings": {"fallbackChain": ["openai"]}})
    assert bad.status_code == 422 and "fallbackChain" in (await error_of(bad))["message"]
    assert (await patch("expo-2026", {"name": ""})).status_code == 422
    assert (await patch("no-such", {"name": "X"})).status_code == 404
    final = await (await b.client.get("/events/expo-2026", headers=b.auth())).get_json()
    assert final["settings"]["fallbackChain"] == ["kie"] and final["name"] == "Expo 2026"


async def test_every_endpoint_requires_an_operator(booth: Booth) -> None:
    event = await (await _create(booth, {"name": "Private"})).get_json()
    requests = [
        ("POST", "/events", {"name": "X"}),
        ("GET", "/events", None),
        ("GET", "/events/private", None),
        ("GET", f"/events/{event['id']}", None),
        ("PATCH", "/events/private", {"name": "Y"}),
    ]
    for method, path, body in requests:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = await booth.client.open(path, method=method, json=body, headers=headers)
            assert response.status_code == 401, (method, path)
            assert (await error_of(response))["code"] == "unauthorized"
    assert await booth.services.db.fetchval("select name from events") == "Private"


async def test_resolve_event(booth: Booth) -> None:
    event = await (await _create(booth, {"name": "Resolve me"})).get_json()
    db = booth.services.db
    for key in ("resolve-me", event["id"], event["id"].upper(), uuid.UUID(event["id"])):
        assert str((await resolve_event(db, key)).id) == event["id"]  # type: ignore[arg-type]
    for key in ("", "nope", str(uuid.uuid4()), "a/b", "x" * 65, None, 5):
        with pytest.raises(NotFound):
            await resolve_event(db, key)  # type: ignore[arg-type]


def test_slug_from_name() -> None:
    assert slug_from_name("Café Ünïcode 2026!") == "cafe-unicode-2026"
    assert slug_from_name("a" * 80) == "a" * 64
    assert slug_from_name("x" * 63 + " yz") == "x" * 63  # no trailing hyphen after the cut
    generated = slug_from_name("🎉🎉")
    assert generated.startswith("event-") and len(generated) == 12
