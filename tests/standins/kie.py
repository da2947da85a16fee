"""A local stand-in for kie.ai's market task API (shared/notes/protocols.md §3).

What it does, like the real service:

- Checks ``Authorization: Bearer <key>``; a wrong or missing key gets ``{"code": 401, ...}``.
- ``POST /api/v1/jobs/createTask`` validates the model (``google/nano-banana-edit`` and friends;
  the bare ``nano-banana-edit`` is refused, as kie now does), ``input.prompt`` and
  ``input.image_urls``, and answers ``{"code": 200, "msg": "success", "data": {"taskId"}}``.
- It then FETCHES the first ``image_urls`` entry itself (httpx). A URL it cannot fetch, or bytes
  that are not an image, make the task end in ``fail`` with failCode ``451``/``400``.
- ``GET /api/v1/jobs/recordInfo?taskId=`` walks the task through ``waiting`` → ``queuing`` →
  ``generating`` → ``success`` over ``polls_to_finish`` polls (default 4). ``resultJson`` is a
  JSON *string* ``{"resultUrls": [...]}``; the result is the input with its colours inverted,
  served as PNG under this server's own ``/files/<taskId>/0.png`` (no auth, expires after
  ``file_ttl`` seconds, like kie's temporary file host).
- Errors come as a real HTTP status with the same ``code`` in the body, or, with
  ``errors_in_body=True``, as HTTP 200 with only the body ``code`` telling (kie does both).

Scripted faults, from a test (Python API) or another process (``POST /__standin__/fault``):

- ``add_fault(status, times=N, endpoint="createTask"|"recordInfo"|"files"|"*", in_body=...,
  retry_after=...)``: the next N matching calls answer ``status`` (402, 429, 500, 503, ...),
  as HTTP status or as HTTP 200 with ``{"code": status}``. JSON: ``{"status": 429, "times": 2,
  "endpoint": "*", "in_body": false, "retry_after": 1}``.
- ``script_next_task("fail" | "stuck" | "html_result", fail_code=..., fail_msg=...)``: the next
  created task ends in ``fail``, stays ``generating`` forever, or succeeds with a result URL
  that serves HTML. JSON: ``{"task": "fail", "fail_msg": "..."}``.
- ``gate``: a ``trio.Event``; tasks stay ``generating`` until it is set (Python API only).
- ``credits``: None is unlimited; at 0, createTask answers 402. JSON: ``{"credits": 0}``.
- ``POST /__standin__/reset`` clears faults and scripts; ``GET /__standin__/state`` shows calls.

Not modelled: callbacks (``callBackUrl`` is accepted and ignored), the older per-model
endpoints, the file-upload host.

Use in-process: ``async with open_kie_standin(api_key="k") as standin: standin.url``; or as a
process: ``python -m tests.standins.kie --port 0 --api-key K`` prints
``listening on http://127.0.0.1:PORT`` and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import functools
import io
import itertools
import json
import os
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from PIL import Image, ImageDraw, ImageOps
from quart import Response, request
from quart_trio import QuartTrio

SUPPORTED_MODELS = frozenset(
    {"google/nano-banana-edit", "google/nano-banana", "nano-banana-pro", "flux-kontext-pro"}
)
Endpoint = Literal["createTask", "recordInfo", "files", "*"]
TaskOutcome = Literal["fail", "stuck", "html_result"]
HTML_PAGE = b"<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>"


@dataclass
class Fault:
    """Answer ``status`` to the next ``times`` calls of ``endpoint``."""

    status: int
    times: int = 1
    endpoint: Endpoint = "*"
    in_body: bool = False
    msg: str | None = None
    retry_after: float | None = None


@dataclass
class TaskScript:
    outcome: TaskOutcome
    fail_code: str = "500"
    fail_msg: str = "Internal error, please try again later."


@dataclass
class Task:
    task_id: str
    model: str
    param: str  # the createTask body, as kie echoes it: a JSON string
    image_url: str
    script: TaskScript | None
    create_ms: int
    update_ms: int
    polls: int = 0
    state: str = "waiting"
    result: bytes | None = None  # the altered input, once fetched and made
    failure: tuple[str, str] | None = None  # (failCode, failMsg)
    fetched: trio.Event = field(default_factory=trio.Event)
    complete_ms: int | None = None
    result_urls: list[str] = field(default_factory=list)


@dataclass
class StoredFile:
    data: bytes
    content_type: str
    expires: float


def _now_ms() -> int:
    return int(time.time() * 1000)


def alter_image(data: bytes) -> bytes:
    """The stand-in's "AI": invert the colours and draw a border, as PNG."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = ImageOps.invert(im.convert("RGB"))
    draw = ImageDraw.Draw(rgb)
    draw.rectangle((0, 0, rgb.width - 1, rgb.height - 1), outline=(255, 0, 255), width=2)
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


class KieStandin:
    """State and scripting for one running stand-in; see the module docstring."""

    def __init__(
        self,
        api_key: str,
        *,
        polls_to_finish: int = 4,
        errors_in_body: bool = False,
        report_progress: bool = True,
        credits: int | None = None,
        file_ttl: float = 3600.0,
        fetch_timeout: float = 10.0,
    ) -> None:
        self.api_key = api_key
        self.polls_to_finish = max(1, polls_to_finish)
        self.errors_in_body = errors_in_body
        self.report_progress = report_progress
        self.credits = credits
        self.file_ttl = file_ttl
        self.fetch_timeout = fetch_timeout
        self.url = ""  # set once listening
        self.tasks: dict[str, Task] = {}
        self.files: dict[str, StoredFile] = {}
        self.faults: list[Fault] = []
        self.task_scripts: list[TaskScript] = []
        #: Calls per endpoint name, and whether /files requests carried an Authorization header.
        self.calls: Counter[str] = Counter()
        self.file_requests_with_auth = 0
        self.fetched_urls: list[str] = []
        #: While this event is set and not yet fired, every task stays ``generating`` however
        #: often it is polled: a test decides when the styling ends, not a count of polls that
        #: a busy machine stretches.
        self.gate: trio.Event | None = None
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        self.app = self._build_app()

    # -- scripting API -------------------------------------------------------------------------

    def add_fault(
        self,
        status: int,
        *,
        times: int = 1,
        endpoint: Endpoint = "*",
        in_body: bool = False,
        msg: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.faults.append(Fault(status, times, endpoint, in_body, msg, retry_after))

    def script_next_task(
        self,
        outcome: TaskOutcome,
        *,
        fail_code: str = "500",
        fail_msg: str = "Internal error, please try again later.",
    ) -> None:
        self.task_scripts.append(TaskScript(outcome, fail_code, fail_msg))

    def reset(self) -> None:
        self.faults.clear()
        self.task_scripts.clear()
        self.credits = None

    # -- internals -----------------------------------------------------------------------------

    def _envelope(
        self,
        code: int,
        msg: str,
        *,
        in_body: bool | None = None,
        retry_after: float | None = None,
    ) -> Response:
        """An error envelope: real HTTP status, or HTTP 200 with only the body code telling."""
        body = json.dumps({"code": code, "msg": msg, "data": None})
        in_body = self.errors_in_body if in_body is None else in_body
        response = Response(body, status=200 if in_body else code, content_type="application/json")
        if retry_after is not None:
            response.headers["Retry-After"] = f"{retry_after:g}"
        return response

    def _take_fault(self, endpoint: str) -> Response | None:
        for fault in self.faults:
            if fault.endpoint in ("*", endpoint) and fault.times > 0:
                fault.times -= 1
                if fault.times == 0:
                    self.faults.remove(fault)
                msg = fault.msg or _DEFAULT_MSGS.get(fault.status, "error")
                if endpoint == "files":
                    return Response(msg, status=fault.status, content_type="text/plain")
                return self._envelope(
                    fault.status, msg, in_body=fault.in_body, retry_after=fault.retry_after
                )
        return None

    def _authorized(self) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    def _unauthorized(self) -> Response:
        return self._envelope(401, "You do not have access permissions")

    async def _fetch_input(self, task: Task) -> None:
        """Fetch the input like kie does; the task fails if it cannot."""
        assert self._client is not None
        try:
            self.fetched_urls.append(task.image_url)
            try:
                response = await self._client.get(task.image_url)
            except httpx.HTTPError as exc:
                task.failure = (
                    "451",
                    f"Failed to fetch the image from {task.image_url}: {type(exc).__name__}",
                )
                return
            if response.status_code != 200:
                task.failure = (
                    "451",
                    f"Failed to fetch the image from {task.image_url}: HTTP {response.status_code}",
                )
                return
            try:
                task.result = await trio.to_thread.run_sync(alter_image, response.content)
            except Exception:
                task.failure = ("400", "The input image could not be decoded")
        finally:
            task.fetched.set()

    def _advance(self, task: Task) -> None:
        """One poll moves the task on: waiting, queuing, generating..., then the outcome."""
        task.polls += 1
        task.update_ms = _now_ms()
        if task.state in ("success", "fail"):
            return
        if task.polls < self.polls_to_finish:
            task.state = ("waiting", "queuing", "generating")[min(task.polls, 3) - 1]
            return
        if self.gate is not None and not self.gate.is_set():
            task.state = "generating"
            return
        script = task.script
        if script is not None and script.outcome == "stuck":
            task.state = "generating"
            return
        if script is not None and script.outcome == "fail":
            self._finish_fail(task, script.fail_code, script.fail_msg)
            return
        if not task.fetched.is_set():
            task.state = "generating"  # still downloading the input
            return
        if task.failure is not None:
            self._finish_fail(task, *task.failure)
            return
        name = f"{task.task_id}/0.png"
        if script is not None and script.outcome == "html_result":
            # A .png URL that serves an HTML error page with status 200.
            stored = StoredFile(HTML_PAGE, "text/html", time.monotonic() + self.file_ttl)
        else:
            assert task.result is not None
            stored = StoredFile(task.result, "image/png", time.monotonic() + self.file_ttl)
        self.files[name] = stored
        task.result_urls = [f"{self.url}/files/{name}"]
        task.state = "success"
        task.complete_ms = _now_ms()

    def _finish_fail(self, task: Task, code: str, msg: str) -> None:
        task.state = "fail"
        task.complete_ms = _now_ms()
        task.failure = (code, msg)

    def _record(self, task: Task) -> dict[str, Any]:
        data: dict[str, Any] = {
            "taskId": task.task_id,
            "model": task.model,
            "state": task.state,
            "param": task.param,
            "resultJson": "",
            "failCode": "",
            "failMsg": "",
            "costTime": None,
            "completeTime": task.complete_ms,
            "createTime": task.create_ms,
            "updateTime": task.update_ms,
        }
        if task.state == "success":
            data["resultJson"] = json.dumps({"resultUrls": task.result_urls})
            data["costTime"] = max(1, (task.complete_ms or 0) - task.create_ms)
        elif task.state == "fail" and task.failure is not None:
            data["failCode"], data["failMsg"] = task.failure
        if self.report_progress and task.state == "generating":
            # Like the 4o record-info: a string fraction.
            data["progress"] = f"{min(0.99, task.polls / (self.polls_to_finish + 1)):.2f}"
        return data

    def _validate(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body must be a JSON object"
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "model is required"
        if model not in SUPPORTED_MODELS:
            return "The model name is not supported"
        params = body.get("input")
        if not isinstance(params, dict):
            return "input is required"
        prompt = params.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return "input.prompt is required"
        if len(prompt) > 5000:
            return "input.prompt is too long"
        urls = params.get("image_urls")
        if not isinstance(urls, list) or not urls:
            return "input.image_urls is required"
        if len(urls) > 10:
            return "input.image_urls allows at most 10 images"
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return "input.image_urls must be public http(s) URLs"
        fmt = params.get("output_format", "png")
        if fmt not in ("png", "jpeg"):
            return "input.output_format must be png or jpeg"
        return None

    def _build_app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        @app.post("/api/v1/jobs/createTask")
        async def create_task() -> Response:
            self.calls["createTask"] += 1
            if (fault := self._take_fault("createTask")) is not None:
                return fault
            if not self._authorized():
                return self._unauthorized()
            body = await request.get_json(force=True, silent=True)
            if (problem := self._validate(body)) is not None:
                return self._envelope(422, problem)
            if self.credits is not None:
                if self.credits <= 0:
                    return self._envelope(402, "Credits insufficient")
                self.credits -= 1
            task_id = f"task_{next(self._ids):04d}{secrets.token_hex(4)}"
            now = _now_ms()
            task = Task(
                task_id=task_id,
                model=body["model"],
                param=json.dumps(body),
                image_url=body["input"]["image_urls"][0],
                script=self.task_scripts.pop(0) if self.task_scripts else None,
                create_ms=now,
                update_ms=now,
            )
            self.tasks[task_id] = task
            assert self._nursery is not None
            self._nursery.start_soon(self._fetch_input, task)
            return Response(
                json.dumps({"code": 200, "msg": "success", "data": {"taskId": task_id}}),
                content_type="application/json",
            )

        @app.get("/api/v1/jobs/recordInfo")
        async def record_info() -> Response:
            self.calls["recordInfo"] += 1
            if (fault := self._take_fault("recordInfo")) is not None:
                return fault
            if not self._authorized():
                return self._unauthorized()
            task_id = request.args.get("taskId", "")
            if not task_id:
                return self._envelope(422, "taskId is required")
            task = self.tasks.get(task_id)
            if task is None:
                return self._envelope(404, "Task not found")
            self._advance(task)
            return Response(
                json.dumps({"code": 200, "msg": "success", "data": self._record(task)}),
                content_type="application/json",
            )

        @app.get("/files/<task_id>/<name>")
        async def files(task_id: str, name: str) -> Response:
            self.calls["files"] += 1
            if "Authorization" in request.headers:
                self.file_requests_with_auth += 1
            if (fault := self._take_fault("files")) is not None:
                return fault
            stored = self.files.get(f"{task_id}/{name}")
            if stored is None or stored.expires < time.monotonic():
                return Response("Not Found", status=404, content_type="text/plain")
            return Response(stored.data, content_type=stored.content_type)

        @app.post("/__standin__/fault")
        async def add_fault() -> tuple[dict[str, Any], int]:
            body = await request.get_json(force=True, silent=True)
            if not isinstance(body, dict):
                return {"ok": False, "error": "JSON object expected"}, 400
            try:
                if "status" in body:
                    self.add_fault(
                        int(body["status"]),
                        times=int(body.get("times", 1)),
                        endpoint=body.get("endpoint", "*"),
                        in_body=bool(body.get("in_body", False)),
                        msg=body.get("msg"),
                        retry_after=body.get("retry_after"),
                    )
                if "task" in body:
                    if body["task"] not in ("fail", "stuck", "html_result"):
                        raise ValueError(f"unknown task outcome {body['task']!r}")
                    self.script_next_task(
                        body["task"],
                        fail_code=str(body.get("fail_code", "500")),
                        fail_msg=str(body.get("fail_msg", TaskScript("fail").fail_msg)),
                    )
                if "credits" in body:
                    self.credits = None if body["credits"] is None else int(body["credits"])
            except (TypeError, ValueError) as exc:
                return {"ok": False, "error": str(exc)}, 400
            return {"ok": True}, 200

        @app.post("/__standin__/reset")
        async def reset() -> dict[str, Any]:
            self.reset()
            return {"ok": True}

        @app.get("/__standin__/state")
        async def state() -> dict[str, Any]:
            return {
                "calls": dict(self.calls),
                "tasks": {t.task_id: t.state for t in self.tasks.values()},
                "faults": len(self.faults),
                "credits": self.credits,
            }

        return app


_DEFAULT_MSGS = {
    401: "You do not have access permissions",
    402: "Credits insufficient",
    422: "Validation error",
    429: "Rate limited, please try again later",
    455: "Service unavailable",
    500: "Internal error, please try again later",
    503: "Service temporarily unavailable",
}


async def serve_app(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app with hypercorn until cancelled; ``started`` gets its base URL."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None  # type: ignore[assignment]
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(serve, app, config, shutdown_trigger=trio.sleep_forever)
        )
        task_status.started(binds[0].rstrip("/"))


@asynccontextmanager
async def open_kie_standin(
    api_key: str, *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[KieStandin]:
    """Run a :class:`KieStandin` on ``host:port`` (0 = any free port) for the block."""
    standin = KieStandin(api_key, **options)
    async with (
        httpx.AsyncClient(timeout=standin.fetch_timeout, follow_redirects=True) as client,
        trio.open_nursery() as nursery,
    ):
        standin._client = client
        standin._nursery = nursery
        standin.url = await nursery.start(
            functools.partial(serve_app, standin.app, host=host, port=port)
        )
        try:
            yield standin
        finally:
            nursery.cancel_scope.cancel()


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.standins.kie", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=os.environ.get("KIE_API_KEY"))
    parser.add_argument("--polls", type=int, default=4, help="polls until a task finishes")
    parser.add_argument("--errors-in-body", action="store_true", help="errors as HTTP 200")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("--api-key (or KIE_API_KEY) is required")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_kie_standin(
            args.api_key,
            host=args.host,
            port=args.port,
            polls_to_finish=args.polls,
            errors_in_body=args.errors_in_body,
        ) as standin:
            print(f"listening on {standin.url}", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    trio.run(_main, sys.argv[1:])
