"""ComfyUIProvider against the ComfyUI stand-in (tests/standins/comfyui.py), over real HTTP and
websocket on 127.0.0.1. The client is never patched: every fault is scripted on the server.

Timeouts are small (stall 0.5 s, hard timeout 0.5 s) so the file runs in a few seconds.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image

from photobot.errors import ConfigError
from photobot.providers.base import (
    FatalProviderError,
    ProviderInput,
    ProviderOutput,
    TransientProviderError,
)
from photobot.providers.comfyui import DEFAULT_WORKFLOW, ComfyUIProvider, WorkflowTemplate
from tests.standins import standin_process
from tests.standins.comfyui import ComfyUIStandin, expected_tint, open_comfyui_standin

SIZE = (32, 24)
MakeProvider = Callable[..., ComfyUIProvider]


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", SIZE, color).save(buf, format="PNG")
    return buf.getvalue()


def _job(job_id: str, color: tuple[int, int, int] = (10, 200, 30), **kw: Any) -> ProviderInput:
    fields: dict[str, Any] = {"mode": "ai", "style": "anime", "seed": 7, **kw}
    return ProviderInput(job_id=job_id, image=_png(color), content_type="image/png", **fields)


def _assert_tinted(output: ProviderOutput, color: tuple[int, int, int]) -> None:
    assert len(output.images) == 1
    image = output.images[0]
    assert (image.content_type, image.width, image.height) == ("image/png", *SIZE)
    with Image.open(io.BytesIO(image.data)) as im:
        pixel = im.convert("RGB").getpixel((SIZE[0] // 2, SIZE[1] // 2))
    assert all(abs(a - b) <= 1 for a, b in zip(pixel, expected_tint(color), strict=True)), pixel


class Recorder:
    """A progress callback that keeps (time, fraction) and signals the first report."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, float]] = []
        self.started = trio.Event()

    def __call__(self, fraction: float) -> None:
        self.reports.append((trio.current_time(), fraction))
        self.started.set()

    @property
    def fractions(self) -> list[float]:
        return [f for _, f in self.reports]

    def assert_complete(self) -> None:
        fractions = self.fractions
        assert len(fractions) >= 10, fractions
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, fractions
        assert 0.0 < fractions[0] < 1.0


@pytest.fixture
async def standin() -> AsyncIterator[ComfyUIStandin]:
    async with open_comfyui_standin() as server:
        yield server


@pytest.fixture
async def make_provider(standin: ComfyUIStandin) -> AsyncIterator[MakeProvider]:
    made: list[ComfyUIProvider] = []

    def make(url: str | None = None, **kw: Any) -> ComfyUIProvider:
        # Limits no busy machine reaches in a normal run; tests of a limit set their own.
        options = {"timeout": 60.0, "stall_timeout": 10.0, "connect_timeout": 10.0, **kw}
        provider = ComfyUIProvider(url or standin.url, **options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


async def _wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    # Polling the stand-in's state is simplest here; it has no events for every change.
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


# -- success ---------------------------------------------------------------------------------


async def test_success_returns_the_processed_image(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    # /view lies about the type: the provider must go by the bytes.
    standin.set_faults(view_content_type="application/octet-stream")
    progress = Recorder()
    output = await make_provider().process(_job("job-1", (10, 200, 30)), progress)

    _assert_tinted(output, (10, 200, 30))
    progress.assert_complete()
    [queued] = standin.prompts
    assert output.provider_request_id == queued.prompt_id and output.seed == 7
    # The template was filled in: uploaded name, the style's prompt, the job's seed.
    template = WorkflowTemplate.load(DEFAULT_WORKFLOW)
    nodes = {node["class_type"]: node["inputs"] for node in queued.prompt.values()}
    assert nodes["LoadImage"]["image"] == standin.uploads[0] == output.metadata["input_name"]
    assert "job-1" in standin.uploads[0]
    assert nodes["KSampler"]["seed"] == 7
    assert template.styles["anime"] in [
        n["inputs"]["text"] for n in queued.prompt.values() if n["class_type"] == "CLIPTextEncode"
    ]
    assert standin.history_entry(queued.prompt_id)["status"]["status_str"] == "success"  # type: ignore[index]
    assert standin.interrupts == []


async def test_concurrent_jobs_follow_only_their_own_prompt(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    # Every socket gets every prompt's events (a shared socket, ComfyUI#3652): only the
    # prompt_id tells them apart.
    standin.set_faults(broadcast=True)
    provider = make_provider()
    colors = {"job-a": (200, 20, 20), "job-b": (20, 20, 200)}
    recorders = {job_id: Recorder() for job_id in colors}
    outputs: dict[str, ProviderOutput] = {}

    async def run(job_id: str, seed: int | None) -> None:
        job = _job(job_id, colors[job_id], seed=seed)
        outputs[job_id] = await provider.process(job, recorders[job_id])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "job-a", 1)
        nursery.start_soon(run, "job-b", None)

    assert len(standin.prompts) == 2
    assert len({p.client_id for p in standin.prompts}) == 2
    for job_id, color in colors.items():
        _assert_tinted(outputs[job_id], color)
        recorders[job_id].assert_complete()
        [queued] = [p for p in standin.prompts if job_id in (p.input_name() or "")]
        assert outputs[job_id].provider_request_id == queued.prompt_id
        # No progress was reported before this job's own prompt started running.
        assert queued.started_at is not None
        assert all(t >= queued.started_at for t, f in recorders[job_id].reports if f < 1.0)
    # A random seed was chosen, reported and used.
    [queued_b] = [p for p in standin.prompts if "job-b" in (p.input_name() or "")]
    assert isinstance(outputs["job-b"].seed, int)
    nodes = {n["class_type"]: n["inputs"] for n in queued_b.prompt.values()}
    assert nodes["KSampler"]["seed"] == outputs["job-b"].seed


async def test_websocket_drop_is_ridden_out(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    standin.set_faults(step_delay=0.03)
    progress = Recorder()

    async def drop_after_first_progress() -> None:
        await progress.started.wait()
        standin.drop_websockets()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drop_after_first_progress)
        output = await make_provider().process(_job("job-drop"), progress)

    _assert_tinted(output, (10, 200, 30))
    assert progress.fractions[-1] == 1.0 and progress.fractions == sorted(progress.fractions)
    assert len(standin.prompts) == 1
    assert len(standin.ws_connects) == 2 and len(set(standin.ws_connects)) == 1


async def test_progress_stays_monotonic_across_sampler_nodes(
    standin: ComfyUIStandin, make_provider: MakeProvider, tmp_path: Path
) -> None:
    # A two-pass workflow: ComfyUI's progress starts again at 0 for the second sampler.
    raw = json.loads(DEFAULT_WORKFLOW.read_text())
    refine = {**raw["workflow"]["6"]["inputs"], "steps": 5, "denoise": 0.3}
    raw["workflow"]["9"] = {
        "class_type": "KSampler",
        "inputs": {**refine, "latent_image": ["6", 0]},
    }
    raw["workflow"]["7"]["inputs"]["samples"] = ["9", 0]
    path = tmp_path / "two_pass.json"
    path.write_text(json.dumps(raw))
    progress = Recorder()

    output = await make_provider(workflow_path=path).process(_job("job-2pass"), progress)

    _assert_tinted(output, (10, 200, 30))
    progress.assert_complete()


# -- rejected and failed runs ----------------------------------------------------------------


def _edit_ckpt(workflow: dict[str, Any]) -> None:
    workflow["1"]["inputs"]["ckpt_name"] = "missing.safetensors"


def _drop_steps(workflow: dict[str, Any]) -> None:
    del workflow["6"]["inputs"]["steps"]


def _unknown_node(workflow: dict[str, Any]) -> None:
    workflow["7"]["class_type"] = "VAEDecodeNotInstalled"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_edit_ckpt, "node 1 (CheckpointLoaderSimple) Value not in list: ckpt_name"),
        (_drop_steps, "node 6 (KSampler) Required input is missing: steps"),
        (_unknown_node, "VAEDecodeNotInstalled"),
    ],
)
async def test_rejected_workflow_is_fatal(
    standin: ComfyUIStandin,
    make_provider: MakeProvider,
    tmp_path: Path,
    edit: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    raw = json.loads(DEFAULT_WORKFLOW.read_text())
    edit(raw["workflow"])
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(raw))

    with pytest.raises(FatalProviderError) as info:
        await make_provider(workflow_path=path).process(_job("job-bad"), Recorder())

    assert info.value.code == "invalid_workflow"
    assert expected in info.value.message and len(info.value.message) <= 200
    assert standin.prompts == []


async def test_http_500_is_transient_and_the_next_attempt_succeeds(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    standin.set_faults(prompt_500=1)
    provider = make_provider()

    with pytest.raises(TransientProviderError) as info:
        await provider.process(_job("job-500"), Recorder())
    assert info.value.code == "provider_unavailable" and "500" in info.value.message

    progress = Recorder()
    _assert_tinted(await provider.process(_job("job-500"), progress), (10, 200, 30))
    progress.assert_complete()


async def test_execution_error_is_fatal(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    standin.set_faults(execution_error="error")
    with pytest.raises(FatalProviderError) as info:
        await make_provider().process(_job("job-err"), Recorder())
    assert info.value.code == "execution_error"
    assert "KSampler" in info.value.message and "mat1 and mat2" in info.value.message


async def test_out_of_memory_is_transient(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    standin.set_faults(execution_error="oom")
    provider = make_provider()
    with pytest.raises(TransientProviderError) as info:
        await provider.process(_job("job-oom"), Recorder())
    assert info.value.code == "gpu_oom"

    standin.set_faults(execution_error=None)  # the GPU is free again
    _assert_tinted(await provider.process(_job("job-oom"), Recorder()), (10, 200, 30))


# -- stalls, restarts, timeouts, cancellation ------------------------------------------------


async def test_stall_is_transient_and_interrupts_the_prompt(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    standin.set_faults(stall=True)
    start = trio.current_time()
    with pytest.raises(TransientProviderError) as info:
        await make_provider(stall_timeout=0.5, timeout=60.0).process(_job("job-stall"), Recorder())
    elapsed = trio.current_time() - start

    # The stall detector, not the attempt's timeout: that one would say provider_timeout.
    assert info.value.code == "stalled"
    assert elapsed >= 0.5, elapsed
    [queued] = standin.prompts
    assert standin.interrupts == [queued.prompt_id]
    await _wait_until(lambda: queued.status == "interrupted")
    assert standin.queue_ids() == ([], [])


@pytest.mark.parametrize(
    # Down for far longer than the provider's quick reconnect tries, however slow they run.
    ("downtime", "connects"),
    [(0.0, 2), (5.0, 1)],
    ids=["back-at-once", "down-for-a-while"],
)
async def test_restart_mid_run_is_transient_remote_lost(
    standin: ComfyUIStandin, make_provider: MakeProvider, downtime: float, connects: int
) -> None:
    standin.set_faults(step_delay=0.05)
    progress = Recorder()

    async def restart_after_first_progress() -> None:
        await progress.started.wait()
        await standin.restart(downtime=downtime)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(restart_after_first_progress)
        with pytest.raises(TransientProviderError) as info:
            await make_provider(stall_timeout=60.0, timeout=120.0).process(
                _job("job-restart"), progress
            )
        elapsed = trio.current_time() - start

    assert info.value.code == "remote_lost"
    assert elapsed < 20, elapsed  # noticed when the socket dropped, not after the 60 s stall
    assert standin.restarts == 1 and standin.prompts[0].status == "lost"
    # Back at once: the provider reconnected and found the prompt gone. Down: it could not.
    assert len(standin.ws_connects) == connects


async def test_hard_timeout_is_transient_and_interrupts_the_prompt(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    # Progress keeps flowing (no stall), the run (20 steps, 10 s) is just longer than the
    # attempt may take (3 s, time for the upload and the first steps on a busy machine).
    standin.set_faults(step_delay=0.5)
    progress = Recorder()
    start = trio.current_time()
    with pytest.raises(TransientProviderError) as info:
        await make_provider(timeout=3.0).process(_job("job-slow"), progress)
    elapsed = trio.current_time() - start

    assert info.value.code == "provider_timeout"  # had the run been let finish: no error
    assert elapsed >= 3.0, elapsed
    assert 0.0 < progress.fractions[-1] < 1.0
    [queued] = standin.prompts
    assert standin.interrupts == [queued.prompt_id]
    await _wait_until(lambda: queued.status == "interrupted")


async def test_cancel_mid_run_interrupts_the_prompt(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    standin.set_faults(step_delay=1.0)  # a 20 s run: stopping promptly is not its end
    progress = Recorder()
    result: dict[str, Any] = {}
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            result["output"] = await make_provider().process(_job("job-cancel"), progress)
        result["cancelled"] = scope.cancelled_caught
        result["done_at"] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await progress.started.wait()
        cancelled_at = trio.current_time()
        scope.cancel()

    assert result["cancelled"] is True and "output" not in result
    assert result["done_at"] - cancelled_at < 10
    [queued] = standin.prompts
    assert standin.interrupts == [queued.prompt_id]
    await _wait_until(lambda: queued.status == "interrupted")
    assert standin.queue_ids() == ([], [])


async def test_cancel_while_queued_deletes_the_prompt(
    standin: ComfyUIStandin, make_provider: MakeProvider
) -> None:
    # The first run (4 s) is still going when the second is queued and cancelled, however
    # busy the machine: the second never gets to run.
    standin.set_faults(step_delay=0.2)
    provider = make_provider()
    first, second = Recorder(), Recorder()
    outputs: dict[str, ProviderOutput] = {}
    scope = trio.CancelScope()

    async def run_first() -> None:
        outputs["first"] = await provider.process(_job("job-first"), first)

    async def run_second() -> None:
        with scope:
            outputs["second"] = await provider.process(_job("job-second"), second)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_first)
        await first.started.wait()
        nursery.start_soon(run_second)
        await _wait_until(lambda: len(standin.prompts) == 2)
        scope.cancel()

    waiting = standin.prompts[1]
    assert "second" not in outputs and second.reports == []
    assert waiting.prompt_id in standin.deleted and waiting.started_at is None
    assert standin.interrupts == []  # the running prompt is someone else's: left alone
    _assert_tinted(outputs["first"], (10, 200, 30))


async def test_server_down_is_transient(make_provider: MakeProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientProviderError) as info:
        await make_provider(url=f"http://127.0.0.1:{port}").process(_job("job-down"), Recorder())
    assert info.value.code == "provider_unavailable"
    assert str(port) not in info.value.message  # no URL in messages


# -- template --------------------------------------------------------------------------------


def test_template_fills_only_exact_placeholders() -> None:
    template = WorkflowTemplate.load(DEFAULT_WORKFLOW)
    workflow = template.render(image="in.png", style='pop art", "x": "$seed', seed=99)
    texts = [n["inputs"]["text"] for n in workflow.values() if n["class_type"] == "CLIPTextEncode"]
    # An unknown style is a value inside the custom prompt: it can neither break the JSON nor
    # be substituted itself.
    assert template.custom_style.replace("{style}", 'pop art", "x": "$seed') in texts
    nodes = {n["class_type"]: n["inputs"] for n in workflow.values()}
    assert nodes["KSampler"]["seed"] == 99 and nodes["LoadImage"]["image"] == "in.png"
    assert template.render(image="a", style=None, seed=1) != workflow
    assert template.style_prompt(None) == template.styles["default"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda raw: raw["workflow"]["2"]["inputs"].update(image="$input_img"), "unknown"),
        (lambda raw: raw["workflow"]["2"]["inputs"].update(image="x.png"), "$input_image"),
        (lambda raw: raw["styles"].pop("default"), "default"),
    ],
)
def test_bad_template_is_a_config_error(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], expected: str
) -> None:
    raw = json.loads(DEFAULT_WORKFLOW.read_text())
    edit(raw)
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=expected.replace("$", r"\$")):
        ComfyUIProvider("http://127.0.0.1:1", workflow_path=path)


# -- the stand-in as a process ---------------------------------------------------------------


async def test_standin_runs_as_a_process() -> None:
    async with standin_process("comfyui") as url:
        async with httpx.AsyncClient(base_url=url) as client:
            stats = (await client.get("/api/system_stats")).json()
            assert stats["devices"]
            response = await client.post("/__standin__/fault", json={"prompt_500": 1})
            assert response.json()["faults"]["prompt_500"] == 1
        provider = ComfyUIProvider(url, timeout=10.0, stall_timeout=2.0)
        try:
            with pytest.raises(TransientProviderError):
                await provider.process(_job("job-proc"), Recorder())
            _assert_tinted(await provider.process(_job("job-proc"), Recorder()), (10, 200, 30))
        finally:
            await provider.aclose()
