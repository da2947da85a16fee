"""Jobs through a ComfyUI server (the stand-in, speaking ComfyUI's HTTP + websocket protocol)
on a live booth: success, a failed execution, GPU out of memory falling back to ``local``, and
an operator's cancel interrupting the remote run."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from PIL import Image

from photobot.providers.comfyui import ComfyUIProvider
from tests.live_booth import Live, open_live
from tests.standins.comfyui import ComfyUIStandin, open_comfyui_standin


@pytest.fixture
async def comfy() -> AsyncIterator[ComfyUIStandin]:
    async with open_comfyui_standin() as standin:
        yield standin


@pytest.fixture
async def live(
    database_url: str, redis_url: Any, tmp_path: Path, comfy: ComfyUIStandin
) -> AsyncIterator[Live]:
    async with open_live(
        database_url, redis_url, tmp_path / "data", comfy_api_base_url=comfy.url
    ) as booth:
        booth.services.pool.providers["comfyui"] = ComfyUIProvider(
            comfy.url, timeout=20, stall_timeout=2
        )
        yield booth


async def _job(live: Live, **fields: str) -> str:
    event = await live.event(**({"fallbackChain": ["comfyui", "local"]} if not fields else {}))
    session = await live.guest(event["id"])
    r = await live.submit(session, **fields)
    assert r.status_code == 201, r.text
    return r.json()["id"]  # type: ignore[no-any-return]


async def test_comfyui_success(live: Live, comfy: ComfyUIStandin) -> None:
    done = await live.wait_final(await _job(live, provider="comfyui", styleId="vintage"))
    assert done["status"] == "succeeded", done
    assert done["providerUsed"] == "comfyui"
    image = await live.http.get(done["bestOutputUrl"])
    assert Image.open(io.BytesIO(image.content)).format == "PNG"
    assert len(comfy.prompts) == 1 and len(comfy.uploads) == 1


async def test_comfyui_execution_error_fails_the_job(live: Live, comfy: ComfyUIStandin) -> None:
    comfy.set_faults(execution_error="error")
    done = await live.wait_final(await _job(live, provider="comfyui"))
    assert done["status"] == "failed"
    assert done["error"]["code"] == "execution_error"
    assert [a["outcome"] for a in done["attemptsDetail"]] == ["fatal_error"]


async def test_gpu_oom_is_retried_then_the_chain_falls_back(
    live: Live, comfy: ComfyUIStandin
) -> None:
    comfy.set_faults(execution_error="oom")
    done = await live.wait_final(await _job(live), timeout=60)
    assert done["status"] == "succeeded" and done["providerUsed"] == "local", done
    attempts = [(a["provider"], a["outcome"]) for a in done["attemptsDetail"]]
    assert attempts == [("comfyui", "transient_error")] * 3 + [("local", "succeeded")]
    assert {a["error"]["code"] for a in done["attemptsDetail"][:3]} == {"gpu_oom"}


async def test_cancel_interrupts_the_remote_run(live: Live, comfy: ComfyUIStandin) -> None:
    comfy.set_faults(step_delay=0.5)  # a slow sampler: the run is mid-way when we cancel
    job_id = await _job(live, provider="comfyui")
    with trio.fail_after(15):
        while True:
            job = (await live.http.get(f"/jobs/{job_id}", headers=live.auth)).json()
            if job["progress"]["stage"] == "ai_processing" and comfy.prompts:
                break
            await trio.sleep(0.05)
    r = await live.http.post(f"/jobs/{job_id}/cancel", headers=live.auth)
    assert r.status_code == 200
    done = await live.wait_final(job_id, timeout=10)
    assert done["status"] == "canceled"
    assert [a["outcome"] for a in done["attemptsDetail"]] == ["canceled"]
    assert comfy.interrupts or comfy.deleted  # the remote side was told
