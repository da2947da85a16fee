"""The web layer in-process, on real services: /health, /metrics, signed files, error shape."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as Client

from photobot.cache import Cache
from photobot.config import load_settings
from photobot.root import Services, actor_specs, build_supervisor, open_services
from photobot.supervisor import ChildContext, ChildSpec, Restart
from web.app import create_app

ACTORS = [
    "session_registry", "gallery_broadcaster", "ai_worker_pool", "image_optimizer",
    "job_dispatcher",
    "hotfolder_watcher", "cctv_poller",
]  # fmt: skip


@pytest.fixture
async def services(database_url: str, redis_url, tmp_path: Path) -> AsyncIterator[Services]:  # type: ignore[no-untyped-def]
    settings = load_settings(
        database_url=database_url, redis_url=redis_url.url, redis_prefix=redis_url.prefix
    )
    async with open_services(settings, tmp_path / "data") as s:
        yield s


async def _client(services: Services, nursery: trio.Nursery, specs=None) -> Client:  # type: ignore[no-untyped-def]
    supervisor = build_supervisor(services, specs, backoff_base=0.05, jitter=0)
    await nursery.start(supervisor.run)
    app = create_app(services)
    return app.test_client()


async def test_health_ok_lists_every_actor(services: Services, nursery: trio.Nursery) -> None:
    client = await _client(services, nursery)
    response = await client.get("/health")
    body = await response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert {k: v["status"] for k, v in body["checks"].items()} == {
        "database": "ok", "redis": "ok", "storage": "ok",
    }  # fmt: skip
    assert [a["name"] for a in body["actors"]] == ACTORS
    assert all(a["state"] == "running" and a["restarts"] == 0 for a in body["actors"])
    assert [s.name for s in actor_specs(services)] == ACTORS


async def test_health_degraded_when_redis_is_gone(
    services: Services, nursery: trio.Nursery
) -> None:
    client = await _client(services, nursery)
    services.cache = Cache.from_url("redis://127.0.0.1:1/0", timeout=0.3)
    body = await (await client.get("/health")).get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["database"]["status"] == "ok"


async def test_crashing_actor_shows_in_health_and_metrics(
    services: Services, nursery: trio.Nursery
) -> None:
    crashes = 0
    settled = trio.Event()

    async def flaky(ctx: ChildContext) -> None:
        nonlocal crashes
        ctx.started()
        if crashes < 2:
            crashes += 1
            raise RuntimeError(f"boom {crashes}")
        settled.set()
        await ctx.stopping.wait()

    async def steady(ctx: ChildContext) -> None:
        ctx.started()
        await ctx.stopping.wait()

    specs = [ChildSpec("steady", steady), ChildSpec("flaky", flaky, Restart.PERMANENT)]
    client = await _client(services, nursery, specs)
    with trio.fail_after(5):
        await settled.wait()
    body = await (await client.get("/health")).get_json()
    flaky_status = body["actors"][1]
    assert flaky_status["restarts"] == 2
    assert flaky_status["lastError"] == "RuntimeError: boom 2"
    kinds = [(e["kind"], e["actor"]) for e in body["supervisorEvents"]]
    assert kinds.count(("crashed", "flaky")) == 2 and kinds.count(("restarting", "flaky")) == 2
    crashed = [e for e in body["supervisorEvents"] if e["kind"] == "crashed"]
    assert crashed[-1]["error"] == "RuntimeError: boom 2" and crashed[-1]["delaySeconds"] > 0
    text = (await (await client.get("/metrics")).get_data()).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("photobot_actor_restarts_total", (("actor", "flaky"),))] == 2
    assert samples[("photobot_actor_up", (("actor", "steady"),))] == 1


async def test_metrics_is_prometheus_text(services: Services, nursery: trio.Nursery) -> None:
    client = await _client(services, nursery)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = (await response.get_data()).decode()
    assert text.endswith("\n")
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"photobot_build_info", "photobot_actor_up", "photobot_actor_restarts",
            "photobot_queue_depth", "photobot_jobs"} <= names  # fmt: skip
    up = [line for line in text.splitlines() if line.startswith("photobot_actor_up{")]
    assert len(up) == len(ACTORS)
    # TYPE comes before its samples and each family's lines are contiguous.
    seen: list[str] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            seen.append(line.split()[2])
        elif line and not line.startswith("#"):
            assert line.startswith(seen[-1])


async def test_signed_file_urls(services: Services, nursery: trio.Nursery) -> None:
    client = await _client(services, nursery)
    key = "events/e1/2026-11-22/j1/output_1.jpg"
    await services.storage.put(key, b"\xff\xd8jpeg bytes", "image/jpeg")
    url = await services.storage.signed_url(key, 60, download_name="my photo.jpg")
    response = await client.get(url)
    assert response.status_code == 200
    assert await response.get_data() == b"\xff\xd8jpeg bytes"
    assert response.headers["Content-Type"] == "image/jpeg"
    assert "my photo.jpg" in response.headers["Content-Disposition"]

    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    for tampered in (
        parts.path.replace("output_1", "output_2") + "?" + parts.query,
        parts.path + "?" + urlencode(params | {"exp": str(int(params["exp"]) + 60)}),
        parts.path + "?" + urlencode(params | {"sig": "0" * len(params["sig"])}),
        parts.path,
    ):
        bad = await client.get(tampered)
        assert bad.status_code == 403, tampered
        assert (await bad.get_json())["error"]["code"].startswith("signature_")

    expired = await services.storage.signed_url(key, 1)
    # The signature carries whole seconds: wait until its expiry second has passed.
    await trio.sleep(int(time.time()) + 2 - time.time())
    response = await client.get(expired)
    assert response.status_code == 403
    assert (await response.get_json())["error"]["code"] == "signature_expired"


async def test_signed_file_urls_serve_byte_ranges(
    services: Services, nursery: trio.Nursery
) -> None:
    # A phone's video player (Safari always) asks for ranges and plays nothing without them.
    client = await _client(services, nursery)
    key = "clips/booth-1/2026-11-22/1-abcd.mp4"
    data = bytes(range(256)) * 1000  # several read chunks
    await services.storage.put(key, data, "video/mp4")
    url = await services.storage.signed_url(key, 60)
    whole = await client.get(url)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    assert await whole.get_data() == data
    for header, start, end in [
        ("bytes=0-1", 0, 1),
        ("bytes=100-70000", 100, 70000),
        ("bytes=255990-", 255990, len(data) - 1),
        ("bytes=-10", len(data) - 10, len(data) - 1),
        ("bytes=5-9999999", 5, len(data) - 1),
    ]:
        part = await client.get(url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"
        assert part.headers["Content-Length"] == str(end - start + 1)
        assert await part.get_data() == data[start : end + 1], header
    for header in ["bytes=256000-", "bytes=-0"]:
        refused = await client.get(url, headers={"Range": header})
        assert refused.status_code == 416, header
        assert refused.headers["Content-Range"] == f"bytes */{len(data)}"
    # Not served as ranges (several, other units, invalid, absurd): the whole file.
    for header in ["bytes=0-1,5-6", "items=0-1", "bytes=-", "bytes=10-5", "bytes=" + "9" * 5000]:
        full = await client.get(url, headers={"Range": header})
        assert full.status_code == 200 and await full.get_data() == data, header


async def test_unknown_route_and_method_have_the_error_shape(
    services: Services, nursery: trio.Nursery
) -> None:
    client = await _client(services, nursery)
    missing = await client.get("/no/such/thing")
    assert missing.status_code == 404
    assert set((await missing.get_json())["error"]) == {"code", "message"}
    wrong = await client.delete("/health")
    assert wrong.status_code == 405
    assert (await wrong.get_json())["error"]["code"] == "method_not_allowed"
