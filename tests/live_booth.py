"""A live booth for end-to-end tests: real HTTP server, real actors, real PostgreSQL, Redis
and storage, and the AI stand-ins (kie always; ComfyUI when a test asks for it)."""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from PIL import Image

from actors.pool import PoolConfig
from photobot.bus import JobEvent
from photobot.config import load_settings
from photobot.providers.kie import KieProvider
from photobot.root import Services, build_supervisor, open_services
from tests.standins.kie import KieStandin, open_kie_standin
from web.app import create_asgi

PASSWORD = "jobs-test-password"
KIE_KEY = "kie-test-key-123"


def jpeg(width: int = 640, height: int = 480, color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    img = Image.new("RGB", (width, height), color)
    # A random 16x16 block at a random place: survives JPEG quantization, so two calls give
    # distinct bytes (distinct sha256) — a single random pixel sometimes did not.
    x, y = random.randrange(0, max(1, width - 16)), random.randrange(0, max(1, height - 16))
    block = (random.randrange(256), random.randrange(256), random.randrange(256))
    img.paste(block, (x, y, x + 16, y + 16))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge image (900 MP)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@dataclass
class Live:
    services: Services
    http: httpx.AsyncClient
    kie: KieStandin
    token: str = ""
    events: list[JobEvent] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def event(self, **settings: Any) -> dict[str, Any]:
        body = {"name": f"Party {random.randrange(10**6)}", "settings": settings}
        r = await self.http.post("/events", json=body, headers=self.auth)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def guest(self, event_id: str, name: str = "Ayu Lestari") -> dict[str, Any]:
        r = await self.http.post(
            "/sessions", json={"eventId": event_id, "name": name, "whatsapp": "08123456789"}
        )
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def submit(
        self, session: dict[str, Any], image: bytes | None = None, *, key: str | None = None,
        filename: str = "shot.jpg", **fields: str,
    ) -> httpx.Response:  # fmt: skip
        headers = dict(self.auth)
        if key is not None:
            headers["Idempotency-Key"] = key
        data = {"sessionId": session["sessionId"], "eventId": session["eventId"], **fields}
        files = {"image": (filename, image if image is not None else jpeg(), "image/jpeg")}
        return await self.http.post("/jobs", data=data, files=files, headers=headers)

    async def wait_final(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                r = await self.http.get(f"/jobs/{job_id}", headers=self.auth)
                body = r.json()
                if body["status"] in ("succeeded", "failed", "canceled"):
                    return body  # type: ignore[no-any-return]
                await trio.sleep(0.05)


@asynccontextmanager
async def open_live(
    database_url: str, redis_url: Any, data_dir: Path, **overrides: Any
) -> AsyncIterator[Live]:
    """Open a live booth; ``overrides`` are settings (e.g. ``comfy_api_base_url``)."""
    async with open_kie_standin(api_key=KIE_KEY, polls_to_finish=2) as kie:
        settings = load_settings(
            database_url=database_url,
            redis_url=redis_url.url,
            redis_prefix=redis_url.prefix,
            operator_password=PASSWORD,
            kie_api_key=KIE_KEY,
            kie_api_base_url=kie.url,
            worker_concurrency_kie=2,
            **overrides,
        )
        async with open_services(settings, data_dir) as services:
            # Test-speed timings; the clients and the pool are the real ones.
            services.pool.providers["kie"] = KieProvider(
                KIE_KEY, base_url=kie.url, poll_interval=0.05, max_poll_interval=0.1, timeout=5
            )
            services.pool.reconfigure(PoolConfig(
                backoff_base=0.05, backoff_max=0.2, breaker_threshold=3, breaker_cool_down=60,
                flush_interval=0.05,
            ))  # fmt: skip
            supervisor = build_supervisor(services)
            async with trio.open_nursery() as inner:
                await inner.start(supervisor.run)
                config = HypercornConfig()
                config.bind = ["127.0.0.1:0"]
                stop = trio.Event()
                binds = await inner.start(
                    functools.partial(
                        serve, create_asgi(services), config, shutdown_trigger=stop.wait
                    )
                )
                services.pool.public_base_url = binds[0]
                async with httpx.AsyncClient(base_url=binds[0], timeout=30) as http:
                    live = Live(services, http, kie)
                    r = await http.post("/auth/login", json={"password": PASSWORD})
                    live.token = r.json()["token"]

                    async def record() -> None:
                        async with services.bus.subscribe(capacity=10_000) as events:
                            async for event in events:
                                live.events.append(event)

                    inner.start_soon(record)
                    yield live
                await supervisor.stop()
                stop.set()
                inner.cancel_scope.cancel()
