"""KieProvider against the kie.ai stand-in (tests/standins/kie.py); the client is never patched.

The input photo is served by a tiny in-test file server that checks a signature in the query
string, like the booth's signed URLs, so "kie cannot fetch the input" is a real 403 and the
error messages can be checked for leaked signatures. Poll intervals are 0.05 s.
"""

from __future__ import annotations

import io
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
from PIL import Image
from quart import Response, request
from quart_trio import QuartTrio

from photobot.providers.base import (
    FatalProviderError,
    ProviderInput,
    ProviderOutput,
    TransientProviderError,
)
from photobot.providers.kie import KieProvider, KieRateLimited
from tests.standins import standin_process
from tests.standins.kie import KieStandin, alter_image, open_kie_standin, serve_app


def make_photo() -> bytes:
    """A small PNG with distinct regions, so an inverted copy is easy to recognise."""
    im = Image.new("RGB", (64, 48), (200, 40, 10))
    im.paste((10, 180, 60), (32, 0, 64, 48))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


PHOTO = make_photo()


@dataclass
class InputServer:
    """The booth's public storage: serves ``/inputs/<name>?sig=<sig>``, 403 on a bad sig."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    sig: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def put(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.url}/inputs/{name}?sig={self.sig}"


@pytest.fixture
async def input_server() -> AsyncIterator[InputServer]:
    server = InputServer()
    app = QuartTrio(__name__)

    @app.get("/inputs/<name>")
    async def get_input(name: str) -> Response:
        if request.args.get("sig") != server.sig:
            return Response("forbidden", status=403)
        if name not in server.files:
            return Response("not found", status=404)
        return Response(server.files[name], content_type="image/png")

    async with trio.open_nursery() as nursery:
        server.url = await nursery.start(serve_app, app)
        yield server
        nursery.cancel_scope.cancel()


@pytest.fixture
def api_key() -> str:
    return "kie-test-" + secrets.token_hex(12)


@pytest.fixture
async def standin(api_key: str) -> AsyncIterator[KieStandin]:
    async with open_kie_standin(api_key) as s:
        yield s


@pytest.fixture
async def make_provider() -> AsyncIterator[Callable[..., KieProvider]]:
    made: list[KieProvider] = []

    def make(api_key: str, base_url: str, **overrides: Any) -> KieProvider:
        options: dict[str, Any] = {
            "poll_interval": 0.05,
            "max_poll_interval": 0.1,
            "timeout": 10.0,
            "connect_timeout": 2.0,
        }
        options.update(overrides)
        provider = KieProvider(api_key, base_url=base_url, **options)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def job(input_url: str | None, *, style: str | None = "anime") -> ProviderInput:
    return ProviderInput(
        job_id="job-1",
        image=PHOTO,
        content_type="image/png",
        mode="ai",
        style=style,
        seed=None,
        input_url=input_url,
    )


async def run(provider: KieProvider, input_url: str | None) -> tuple[ProviderOutput, list[float]]:
    seen: list[float] = []
    out = await provider.process(job(input_url), seen.append)
    return out, seen


def assert_secret_free(exc: BaseException, *secrets_: str) -> None:
    text = f"{exc} {exc!r} {getattr(exc, 'message', '')}"
    for secret in secrets_:
        assert secret not in text


# -- success -------------------------------------------------------------------------------------


async def test_success_returns_altered_input_with_monotonic_progress(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    provider = make_provider(standin.api_key, standin.url)
    url = input_server.put("a.png", PHOTO)

    out, seen = await run(provider, url)

    [task] = standin.tasks.values()
    assert out.provider_request_id == task.task_id
    assert task.state == "success"
    assert standin.fetched_urls == [url]  # kie fetched the signed URL itself
    assert '"image_urls": ["' + url in task.param
    assert len(out.images) == 1 and out.best == 0
    image = out.images[0]
    assert image.content_type == "image/png"
    assert (image.width, image.height) == (64, 48)
    assert image.data == alter_image(PHOTO)
    with Image.open(io.BytesIO(image.data)) as im:
        assert im.convert("RGB").getpixel((10, 20)) == (255 - 200, 255 - 40, 255 - 10)
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert any(0.05 < p < 1.0 for p in seen)  # the stand-in's `progress` was used
    assert out.metadata["model"] == "google/nano-banana-edit"
    assert out.metadata["costTime"] >= 1
    # The key goes to the API only, never to the file host.
    assert standin.file_requests_with_auth == 0


async def test_without_progress_field_progress_creeps(
    api_key: str, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    async with open_kie_standin(api_key, polls_to_finish=8, report_progress=False) as standin:
        provider = make_provider(api_key, standin.url)
        _, seen = await run(provider, input_server.put("a.png", PHOTO))
    middle = [p for p in seen if 0.02 < p < 1.0]
    assert len(middle) >= 4, seen  # a creep step per generating poll
    assert seen == sorted(seen) and seen[-1] == 1.0


# -- HTTP-level errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("errors_in_body", [False, True], ids=["http401", "body401"])
async def test_wrong_key_is_fatal_and_not_leaked(
    errors_in_body: bool, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    async with open_kie_standin("the-right-key", errors_in_body=errors_in_body) as standin:
        wrong = "sk-wrong-" + secrets.token_hex(16)
        provider = make_provider(wrong, standin.url)
        with pytest.raises(FatalProviderError) as info:
            await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == "auth_failed"
    assert "401" in info.value.message
    assert_secret_free(info.value, wrong, "the-right-key")
    assert standin.tasks == {}


async def test_no_credits_is_fatal(
    api_key: str, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    async with open_kie_standin(api_key, credits=0) as standin:
        provider = make_provider(api_key, standin.url)
        with pytest.raises(FatalProviderError) as info:
            await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == "insufficient_credits"


@pytest.mark.parametrize("errors_in_body", [False, True], ids=["http422", "body422"])
async def test_unknown_model_is_fatal(
    api_key: str,
    errors_in_body: bool,
    input_server: InputServer,
    make_provider: Callable[..., KieProvider],
) -> None:
    async with open_kie_standin(api_key, errors_in_body=errors_in_body) as standin:
        provider = make_provider(api_key, standin.url, model="nano-banana-edit")
        with pytest.raises(FatalProviderError) as info:
            await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == "invalid_request"
    assert "not supported" in info.value.message


async def test_rate_limited_is_transient_with_retry_after(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.add_fault(429, times=1, endpoint="createTask", retry_after=7)
    provider = make_provider(standin.api_key, standin.url)
    with pytest.raises(KieRateLimited) as info:
        await run(provider, input_server.put("a.png", PHOTO))
    assert isinstance(info.value, TransientProviderError)
    assert info.value.code == "rate_limited"
    assert info.value.retry_after == 7.0
    assert standin.tasks == {}


async def test_server_error_is_transient_then_next_call_succeeds(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.add_fault(500, times=1, endpoint="createTask")
    provider = make_provider(standin.api_key, standin.url)
    url = input_server.put("a.png", PHOTO)
    with pytest.raises(TransientProviderError) as info:
        await run(provider, url)
    assert info.value.code == "provider_unavailable"
    out, _ = await run(provider, url)
    assert out.images[0].data == alter_image(PHOTO)
    assert standin.calls["createTask"] == 2


@pytest.mark.parametrize(
    ("status", "fatal", "code"),
    [
        (401, True, "auth_failed"),
        (402, True, "insufficient_credits"),
        (422, True, "invalid_request"),
        (429, False, "rate_limited"),
        (455, False, "provider_unavailable"),
        (500, False, "provider_unavailable"),
        (505, False, "provider_unavailable"),
    ],
)
async def test_error_code_inside_http_200_body_is_classified_by_body_code(
    status: int,
    fatal: bool,
    code: str,
    standin: KieStandin,
    input_server: InputServer,
    make_provider: Callable[..., KieProvider],
) -> None:
    standin.add_fault(status, endpoint="createTask", in_body=True)
    provider = make_provider(standin.api_key, standin.url)
    with pytest.raises(FatalProviderError if fatal else TransientProviderError) as info:
        await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == code
    assert str(status) in info.value.message


async def test_poll_hiccups_are_ridden_out(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    # One task, already paid for: two failed polls must not throw it away.
    standin.add_fault(503, times=2, endpoint="recordInfo")
    provider = make_provider(standin.api_key, standin.url)
    out, _ = await run(provider, input_server.put("a.png", PHOTO))
    assert out.images[0].data == alter_image(PHOTO)
    assert standin.calls["createTask"] == 1


async def test_polling_gives_up_when_the_api_stays_down(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.add_fault(503, times=100, endpoint="recordInfo")
    provider = make_provider(standin.api_key, standin.url, max_poll_errors=2)
    with pytest.raises(TransientProviderError) as info:
        await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == "provider_unavailable"
    assert standin.calls["recordInfo"] == 3


# -- task outcomes -------------------------------------------------------------------------------


async def test_failed_task_is_fatal_with_kie_message(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.script_next_task("fail", fail_code="400", fail_msg="Content policy violation. " * 20)
    provider = make_provider(standin.api_key, standin.url)
    with pytest.raises(FatalProviderError) as info:
        await run(provider, input_server.put("a.png", PHOTO))
    [task] = standin.tasks.values()
    assert info.value.code == "task_failed"
    assert task.task_id in info.value.message
    assert "Content policy violation." in info.value.message
    assert len(info.value.message) <= 200  # shortened


async def test_stuck_task_times_out_as_transient(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.script_next_task("stuck")
    provider = make_provider(standin.api_key, standin.url, timeout=0.8, max_poll_interval=0.05)
    started = trio.current_time()
    seen: list[float] = []
    with pytest.raises(TransientProviderError) as info:
        await provider.process(job(input_server.put("a.png", PHOTO)), seen.append)
    assert info.value.code == "provider_timeout"
    assert 0.8 <= trio.current_time() - started < 10  # its own deadline, not a hang
    # kie's progress stalls at its last value; the provider reports each value once.
    assert standin.calls["recordInfo"] >= len(seen) + 5 and len(seen) > 3
    assert seen == sorted(set(seen)) and seen[-1] < 1.0
    assert [t.state for t in standin.tasks.values()] == ["generating"]


async def test_html_result_is_fatal_bad_result(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.script_next_task("html_result")
    provider = make_provider(standin.api_key, standin.url)
    with pytest.raises(FatalProviderError) as info:
        await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == "bad_result"
    assert standin.calls["files"] == 1


async def test_unreachable_input_url_fails_the_task(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    input_server.put("a.png", PHOTO)
    bad_sig = "expired-" + secrets.token_hex(8)
    url = f"{input_server.url}/inputs/a.png?sig={bad_sig}"  # the input server answers 403
    provider = make_provider(standin.api_key, standin.url)
    with pytest.raises(FatalProviderError) as info:
        await run(provider, url)
    assert info.value.code == "input_not_reachable"
    assert "403" in info.value.message
    assert standin.fetched_urls == [url]
    # kie's failMsg quotes the URL; its signature must not reach the log.
    assert_secret_free(info.value, bad_sig)


async def test_without_input_url_is_fatal_before_any_request(
    standin: KieStandin, make_provider: Callable[..., KieProvider]
) -> None:
    provider = make_provider(standin.api_key, standin.url)
    with pytest.raises(FatalProviderError) as info:
        await run(provider, None)
    assert info.value.code == "input_not_reachable"
    assert "PUBLIC_BASE_URL" in info.value.message
    assert sum(standin.calls.values()) == 0


async def test_server_down_is_transient(
    api_key: str, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = make_provider(api_key, f"http://127.0.0.1:{port}")
    with pytest.raises(TransientProviderError) as info:
        await run(provider, input_server.put("a.png", PHOTO))
    assert info.value.code == "provider_unavailable"
    assert_secret_free(info.value, api_key)


async def test_cancellation_propagates_and_is_not_a_provider_error(
    standin: KieStandin, input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    standin.script_next_task("stuck")
    provider = make_provider(standin.api_key, standin.url, timeout=30)
    with trio.move_on_after(0.4) as scope:
        await run(provider, input_server.put("a.png", PHOTO))
    assert scope.cancelled_caught
    assert standin.calls["recordInfo"] >= 1


# -- the stand-in as a separate process ----------------------------------------------------------


async def test_standin_runs_as_a_process_with_json_faults(
    input_server: InputServer, make_provider: Callable[..., KieProvider]
) -> None:
    key = "proc-" + secrets.token_hex(8)
    async with standin_process("kie", "--api-key", key) as url:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{url}/__standin__/fault", json={"credits": 0})
            assert r.json() == {"ok": True}
        provider = make_provider(key, url)
        with pytest.raises(FatalProviderError) as info:
            await run(provider, input_server.put("a.png", PHOTO))
        assert info.value.code == "insufficient_credits"
