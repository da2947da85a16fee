"""A local ComfyUI server for tests: the real HTTP + websocket protocol, a fake GPU.

Speaks ComfyUI's API as described in shared/notes/protocols.md §2 (read from
Comfy-Org/ComfyUI ``server.py``/``execution.py``/``main.py``), on 127.0.0.1, under Trio
(quart-trio served by hypercorn). Every route also answers under ``/api``.

- ``POST /upload/image`` (multipart ``image``, ``type``, ``subfolder``, ``overwrite``): a name
  clash with different bytes is renamed ``x (1).png`` unless ``overwrite``; identical bytes keep
  the name. No image → 400.
- ``POST /prompt`` validates like ComfyUI: missing ``class_type`` → ``invalid_prompt``; unknown
  class → ``missing_node_type``; no output node → ``prompt_no_outputs``; per-node input errors
  (``required_input_missing``, ``value_not_in_list``, ``invalid_input_type``,
  ``value_smaller_than_min``/``bigger_than_max``, ``bad_linked_input``, LoadImage's
  ``custom_validation_failed``) → 400 ``{"error", "node_errors"}``. A ``prompt_id`` the client
  chose must be a canonical UUID (``invalid_prompt_id``).
- One prompt runs at a time. Websocket events: ``status`` on connect (with ``sid``) and on every
  queue change (broadcast); per run ``execution_start``, ``execution_cached`` (the checkpoint
  loader is cached when the previous run loaded the same checkpoint), ``executing`` per node,
  ``progress {value,max,prompt_id,node}`` per sampler step, a binary preview frame mid-way,
  ``executed`` for SaveImage, ``execution_success``; then the history entry is filed, ``status``
  is broadcast and ``executing {node: null}`` is sent. Per-prompt events go only to the socket
  whose ``clientId`` queued the prompt (all sockets when it gave none); a new socket with the
  same ``clientId`` replaces the old one.
- ``GET /history/{id}`` is ``{}`` until the run is filed. ``GET /view`` serves the output: the
  input image blended with :data:`TINT` (see :func:`expected_tint`), as PNG. ``GET/POST /queue``
  (``delete``, ``clear``), ``POST /interrupt`` (``prompt_id`` honoured as in current ComfyUI),
  ``GET /prompt``, ``GET /system_stats``, ``GET /object_info``, ``GET/POST /history``.

Scripted faults (:class:`Faults`, set with :meth:`ComfyUIStandin.set_faults` or
``POST /__standin__/fault`` with the same fields as JSON, ``{"reset": true}`` for defaults):
``prompt_500`` (the next N ``POST /prompt`` answer 500), ``execution_error`` (``"error"`` or
``"oom"``: runs fail in the sampler), ``stall`` (runs go silent after ``execution_start`` and
never finish unless interrupted), ``step_delay`` (seconds per sampler step: slow progress),
``broadcast`` (per-prompt events go to every socket, like a shared socket), and
``view_content_type`` (a wrong ``Content-Type`` on ``/view``). :meth:`ComfyUIStandin.restart`
(``POST /__standin__/restart``) stops the HTTP server, which drops every connection, wipes queue
and history (inputs and outputs stay on "disk"), optionally stays down for ``downtime`` seconds,
then listens again on the same port. :meth:`ComfyUIStandin.drop_websockets` closes the sockets
only. What the server saw is kept for assertions (``uploads``, ``prompts``, ``interrupts``,
``deleted``, ``ws_connects``) and served as ``GET /__standin__/state``.

Use in-process: ``async with open_comfyui_standin() as standin: standin.url``; or as a process:
``python -m tests.standins.comfyui --port 0`` prints ``listening on http://127.0.0.1:PORT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import logging
import math
import mimetypes
import posixpath
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from PIL import Image
from quart import Response, request, websocket
from quart_trio import QuartTrio

log = logging.getLogger("tests.standins.comfyui")

#: The colour every output is blended with, and how strongly (see :func:`expected_tint`).
TINT = (255, 0, 160)
TINT_ALPHA = 0.5

CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")
SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "ddim")
SCHEDULERS = ("normal", "karras", "exponential", "simple", "sgm_uniform")

Handler = Callable[..., Awaitable[Any]]

#: Binary websocket event type for a preview image, then the image format (2 = PNG).
PREVIEW_IMAGE, FORMAT_PNG = 1, 2


def expected_tint(rgb: tuple[int, int, int]) -> tuple[int, ...]:
    """The colour a pixel of ``rgb`` has in the output (allow 1 either way for rounding)."""
    return tuple(
        round(c * (1 - TINT_ALPHA) + t * TINT_ALPHA) for c, t in zip(rgb, TINT, strict=True)
    )


# -- node catalogue --------------------------------------------------------------------------


@dataclass(frozen=True)
class In:
    """One required input: ``kind`` is LINK, INT, FLOAT, STRING, COMBO or IMAGE_FILE."""

    kind: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


LINK = In("LINK")
STRING = In("STRING")


@dataclass(frozen=True)
class NodeType:
    inputs: dict[str, In]
    output_node: bool = False


NODE_TYPES: dict[str, NodeType] = {
    "CheckpointLoaderSimple": NodeType({"ckpt_name": In("COMBO", CHECKPOINTS)}),
    "LoadImage": NodeType({"image": In("IMAGE_FILE")}),
    "VAEEncode": NodeType({"pixels": LINK, "vae": LINK}),
    "CLIPTextEncode": NodeType({"text": STRING, "clip": LINK}),
    "KSampler": NodeType(
        {
            "model": LINK,
            "seed": In("INT", min=0, max=2**64 - 1),
            "steps": In("INT", min=1, max=10000),
            "cfg": In("FLOAT", min=0.0, max=100.0),
            "sampler_name": In("COMBO", SAMPLERS),
            "scheduler": In("COMBO", SCHEDULERS),
            "positive": LINK,
            "negative": LINK,
            "latent_image": LINK,
            "denoise": In("FLOAT", min=0.0, max=1.0),
        }
    ),
    "VAEDecode": NodeType({"samples": LINK, "vae": LINK}),
    "SaveImage": NodeType({"images": LINK, "filename_prefix": STRING}, output_node=True),
    "PreviewImage": NodeType({"images": LINK}, output_node=True),
}


def _err(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


class PromptInvalid(Exception):
    """``POST /prompt`` answers 400 with ``{"error": error, "node_errors": node_errors}``."""

    def __init__(self, error: dict[str, Any], node_errors: Any = None) -> None:
        super().__init__(error["message"])
        self.error = error
        self.node_errors = {} if node_errors is None else node_errors


# -- state -----------------------------------------------------------------------------------


@dataclass
class Faults:
    """Scripted misbehaviour; see the module docstring."""

    prompt_500: int = 0
    execution_error: Literal["error", "oom"] | None = None
    stall: bool = False
    step_delay: float = 0.01
    broadcast: bool = False
    view_content_type: str | None = None


@dataclass
class QueuedPrompt:
    number: int
    prompt_id: str
    prompt: dict[str, Any]
    client_id: str | None
    extra_data: dict[str, Any]
    outputs: list[str]
    #: trio.current_time() when the run started and when it was filed (None until then).
    started_at: float | None = None
    finished_at: float | None = None
    status: str | None = None  # success | error | interrupted | lost

    def item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]

    def input_name(self) -> str | None:
        for node in self.prompt.values():
            if node.get("class_type") == "LoadImage":
                return str(node["inputs"]["image"])
        return None


@dataclass
class _Socket:
    send: trio.MemorySendChannel[str | bytes]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class _Interrupted(Exception):
    pass


class ComfyUIStandin:
    """The server's state and behaviour; run it with :func:`open_comfyui_standin`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.faults = Faults()
        #: Files by (type, subfolder, filename): "input" uploads and "output" results.
        self.files: dict[tuple[str, str, str], bytes] = {}
        #: Observations for tests (what clients did).
        self.uploads: list[str] = []
        self.prompts: list[QueuedPrompt] = []
        self.interrupts: list[str | None] = []
        self.deleted: list[str] = []
        #: clientId of every websocket that connected, in order.
        self.ws_connects: list[str] = []
        self.restarts = 0
        self._pending: list[QueuedPrompt] = []
        self._running: QueuedPrompt | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._sockets: dict[str, _Socket] = {}
        self._wakeup = trio.Event()
        self._interrupted = trio.Event()
        self._exec_scope: trio.CancelScope | None = None
        self._serve_scope: trio.CancelScope | None = None
        self._serving_stopped: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._number = 0
        self._counter = 0
        self._last_ckpt: str | None = None
        self._last_node: str | None = None
        self._preview = _png_bytes(Image.new("RGB", (8, 8), TINT))
        self.app = self._build_app()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- control (Python API) ----------------------------------------------------------------

    def set_faults(self, *, reset: bool = False, **changes: Any) -> Faults:
        """Change faults by field name (``reset`` first restores the defaults)."""
        if reset:
            self.faults = Faults()
        names = {f.name for f in dataclasses.fields(Faults)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}")
        if changes.get("execution_error") not in (None, "error", "oom"):
            raise ValueError("execution_error must be null, 'error' or 'oom'")
        self.faults = dataclasses.replace(self.faults, **changes)
        return self.faults

    async def restart(self, *, downtime: float = 0.0) -> None:
        """Like a ComfyUI restart: every connection drops, queue and history are wiped."""
        assert self._nursery is not None and self._serve_scope is not None
        assert self._serving_stopped is not None
        self._serve_scope.cancel()
        await self._serving_stopped.wait()
        self.restarts += 1
        self._pending.clear()
        self._history.clear()
        if self._running is not None:
            self._running.status = "lost"
        self._running = None
        if self._exec_scope is not None:
            self._exec_scope.cancel()
        for sock in self._sockets.values():
            sock.scope.cancel()
        self._sockets.clear()
        self._last_ckpt = None
        await trio.sleep(downtime)
        await self._nursery.start(self._serve)

    def drop_websockets(self) -> None:
        """Close every websocket (a network blip); the queue keeps running."""
        for sock in list(self._sockets.values()):
            sock.scope.cancel()

    def history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        return self._history.get(prompt_id)

    def queue_ids(self) -> tuple[list[str], list[str]]:
        running = [self._running.prompt_id] if self._running else []
        return running, [p.prompt_id for p in self._pending]

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ComfyUIStandin]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._worker)
            await nursery.start(self._serve)
            task_status.started(self)

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        config = HypercornConfig()
        config.bind = [f"{self.host}:{self.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("tests.standins.comfyui.http")  # type: ignore[assignment]
        config.graceful_timeout = 0
        self._serving_stopped = stopped = trio.Event()
        try:
            # Everything hypercorn runs (listeners, connections, websocket handlers) lives in
            # this scope, so cancelling it is a process restart as far as clients can tell.
            with trio.CancelScope() as self._serve_scope:
                async with trio.open_nursery() as nursery:
                    binds: list[str] = await nursery.start(
                        functools.partial(serve, self.app, config)  # type: ignore[arg-type]
                    )
                    self.port = int(binds[0].rsplit(":", 1)[1])
                    task_status.started()
        finally:
            stopped.set()

    # -- messages ----------------------------------------------------------------------------

    def _send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        self._send_raw(json.dumps({"type": event, "data": data}), sid)

    def _send_raw(self, message: str | bytes, sid: str | None) -> None:
        if sid is None or self.faults.broadcast:
            targets = list(self._sockets.values())
        else:
            targets = [self._sockets[sid]] if sid in self._sockets else []
        for sock in targets:
            try:
                sock.send.send_nowait(message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self._pending) + (self._running is not None)}}

    def _queue_updated(self) -> None:
        self._send("status", {"status": self._queue_info()}, None)

    # -- the worker: one prompt at a time ----------------------------------------------------

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
            queued = self._pending.pop(0)
            self._running = queued
            queued.started_at = trio.current_time()
            self._interrupted = trio.Event()  # ComfyUI clears the flag when a run starts
            self._queue_updated()  # PromptQueue.get() announces the change
            with trio.CancelScope() as self._exec_scope:
                status_str, outputs, messages = await self._execute(queued)
                queued.status = status_str
                queued.finished_at = trio.current_time()
                self._history[queued.prompt_id] = {
                    "prompt": queued.item(),
                    "outputs": outputs,
                    "status": {
                        "status_str": "success" if status_str == "success" else "error",
                        "completed": status_str == "success",
                        "messages": messages,
                    },
                    "meta": {n: {"node_id": n, "display_node": n} for n in outputs},
                }
                self._running = None
                self._last_node = None
                self._queue_updated()
                if queued.client_id is not None:
                    self._send(
                        "executing", {"node": None, "prompt_id": queued.prompt_id}, queued.client_id
                    )
            # Cancelled by restart(): that run is simply gone.
            self._running = None
            self._exec_scope = None

    async def _execute(self, queued: QueuedPrompt) -> tuple[str, dict[str, Any], list[list[Any]]]:
        pid, sid, prompt = queued.prompt_id, queued.client_id, queued.prompt
        messages: list[list[Any]] = []

        def emit(event: str, data: dict[str, Any], *, record: bool = False) -> None:
            data = {**data, "prompt_id": pid}
            if record:
                messages.append([event, {**data, "timestamp": _now_ms()}])
            self._send(event, data, sid)

        emit("execution_start", {"timestamp": _now_ms()}, record=True)
        if self.faults.stall:
            # The websocket goes quiet and the run never ends (ComfyUI#3390) until interrupted.
            await self._interrupted.wait()
            messages.append(["execution_interrupted", {"prompt_id": pid}])
            return "interrupted", {}, messages

        order = _execution_order(prompt, queued.outputs)
        ckpts = [n for n in order if prompt[n]["class_type"] == "CheckpointLoaderSimple"]
        cached = [n for n in ckpts if prompt[n]["inputs"]["ckpt_name"] == self._last_ckpt]
        emit("execution_cached", {"nodes": cached, "timestamp": _now_ms()}, record=True)
        executed: list[str] = list(cached)
        outputs: dict[str, Any] = {}
        image: bytes | None = None
        try:
            for node_id in order:
                if node_id in cached:
                    continue
                node = prompt[node_id]
                class_type = node["class_type"]
                self._last_node = node_id
                emit("executing", {"node": node_id, "display_node": node_id})
                self._check_interrupt()
                if class_type == "CheckpointLoaderSimple":
                    self._last_ckpt = node["inputs"]["ckpt_name"]
                elif class_type == "LoadImage":
                    image = self.files[("input", *_split_name(node["inputs"]["image"]))]
                elif class_type == "KSampler":
                    if self.faults.execution_error is not None:
                        oom = self.faults.execution_error == "oom"
                        error = _execution_error(node_id, class_type, executed, oom=oom)
                        emit("execution_error", error, record=True)
                        return "error", {}, messages
                    steps = int(node["inputs"]["steps"])
                    for step in range(1, steps + 1):
                        await trio.sleep(self.faults.step_delay)
                        self._check_interrupt()
                        emit("progress", {"value": step, "max": steps, "node": node_id})
                        if step == steps // 2:
                            frame = struct.pack(">II", PREVIEW_IMAGE, FORMAT_PNG) + self._preview
                            self._send_raw(frame, sid)
                elif class_type in ("SaveImage", "PreviewImage"):
                    assert image is not None
                    png = await trio.to_thread.run_sync(_tinted_png, image)
                    saved = self._save_output(node, png, temp=class_type == "PreviewImage")
                    outputs[node_id] = {"images": [saved]}
                    emit(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": {"images": [saved]}},
                    )
                await trio.lowlevel.checkpoint()
                executed.append(node_id)
        except _Interrupted:
            emit(
                "execution_interrupted",
                {
                    "node_id": self._last_node,
                    "node_type": prompt[self._last_node or ""]["class_type"],
                    "executed": executed,
                    "timestamp": _now_ms(),
                },
                record=True,
            )
            return "interrupted", outputs, messages
        emit("execution_success", {"timestamp": _now_ms()}, record=True)
        return "success", outputs, messages

    def _check_interrupt(self) -> None:
        if self._interrupted.is_set():
            raise _Interrupted

    def _save_output(self, node: dict[str, Any], png: bytes, *, temp: bool) -> dict[str, str]:
        self._counter += 1
        kind = "temp" if temp else "output"
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI"))
        subfolder, base = posixpath.split(prefix)
        filename = f"{base}_{self._counter:05}_.png"
        self.files[(kind, subfolder, filename)] = png
        return {"filename": filename, "subfolder": subfolder, "type": kind}

    # -- prompt validation -------------------------------------------------------------------

    def _validate(self, prompt: Any) -> list[str]:
        """Check a prompt as ComfyUI does; return its output node ids or raise PromptInvalid."""
        if not isinstance(prompt, dict):
            raise PromptInvalid(_err("invalid_prompt", "Invalid prompt", "prompt is not an object"))
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                raise PromptInvalid(
                    _err(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    )
                )
            if node["class_type"] not in NODE_TYPES:
                raise PromptInvalid(
                    _err(
                        "missing_node_type",
                        f"Node '{node['class_type']}' not found. The custom node may not be"
                        " installed.",
                        f"Node ID '#{node_id}'",
                        node_id=node_id,
                        class_type=node["class_type"],
                    )
                )
        outputs = [n for n, node in prompt.items() if NODE_TYPES[node["class_type"]].output_node]
        if not outputs:
            raise PromptInvalid(_err("prompt_no_outputs", "Prompt has no outputs"), [])
        node_errors: dict[str, Any] = {}
        for output in outputs:
            for node_id in _execution_order(prompt, [output]):
                errors = self._node_errors(prompt, node_id)
                if errors:
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": errors,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(output)
        if node_errors:
            details = "\n".join(
                f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"]
            )
            raise PromptInvalid(
                _err(
                    "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
                ),
                node_errors,
            )
        return outputs

    def _node_errors(self, prompt: dict[str, Any], node_id: str) -> list[dict[str, Any]]:
        node = prompt[node_id]
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        errors: list[dict[str, Any]] = []
        for name, spec in NODE_TYPES[node["class_type"]].inputs.items():
            if name not in inputs:
                errors.append(
                    _err(
                        "required_input_missing", "Required input is missing", name, input_name=name
                    )
                )
                continue
            value = inputs[name]
            if isinstance(value, list):
                if len(value) != 2 or not isinstance(value[1], int):
                    errors.append(
                        _err(
                            "bad_linked_input",
                            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            name,
                            input_name=name,
                        )
                    )
                elif str(value[0]) not in prompt:
                    errors.append(
                        _err(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            f"'{value[0]}'",
                            input_name=name,
                        )
                    )
                continue
            if spec.kind == "LINK":
                errors.append(
                    _err(
                        "required_input_missing", "Required input is missing", name, input_name=name
                    )
                )
            elif spec.kind in ("INT", "FLOAT"):
                ok = (
                    isinstance(value, int)
                    if spec.kind == "INT"
                    else isinstance(value, (int, float))
                )
                if not ok or isinstance(value, bool):
                    errors.append(
                        _err(
                            "invalid_input_type",
                            f"Failed to convert an input value to a {spec.kind} value",
                            f"{name}, {value!r}",
                            input_name=name,
                            received_value=value,
                        )
                    )
                elif spec.min is not None and value < spec.min:
                    errors.append(
                        _err(
                            "value_smaller_than_min",
                            f"Value {value} smaller than min of {spec.min:g}",
                            name,
                            input_name=name,
                            received_value=value,
                        )
                    )
                elif spec.max is not None and value > spec.max:
                    errors.append(
                        _err(
                            "value_bigger_than_max",
                            f"Value {value} bigger than max of {spec.max:g}",
                            name,
                            input_name=name,
                            received_value=value,
                        )
                    )
            elif spec.kind == "STRING" and not isinstance(value, str):
                errors.append(
                    _err(
                        "invalid_input_type",
                        "Failed to convert an input value to a STRING value",
                        f"{name}, {value!r}",
                        input_name=name,
                    )
                )
            elif spec.kind == "COMBO" and value not in spec.choices:
                errors.append(
                    _err(
                        "value_not_in_list",
                        "Value not in list",
                        f"{name}: '{value}' not in {list(spec.choices)}",
                        input_name=name,
                        received_value=value,
                    )
                )
            elif spec.kind == "IMAGE_FILE" and (
                not isinstance(value, str) or ("input", *_split_name(value)) not in self.files
            ):
                errors.append(
                    _err(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"{name} - Invalid image file: {value}",
                        input_name=name,
                    )
                )
        return errors

    # -- HTTP and websocket ------------------------------------------------------------------

    def _build_app(self) -> QuartTrio:
        app = QuartTrio("comfyui-standin")
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

        def route(path: str, methods: list[str]) -> Callable[[Handler], Handler]:
            def register(fn: Handler) -> Handler:
                name = fn.__name__
                app.add_url_rule(path, name, fn, methods=methods)
                app.add_url_rule("/api" + path, "api_" + name, fn, methods=methods)
                return fn

            return register

        @route("/upload/image", ["POST"])
        async def upload_image() -> Any:
            files = await request.files
            form = await request.form
            image = files.get("image")
            if image is None or not image.filename:
                return Response(b"", status=400)
            kind = form.get("type") or "input"
            if kind not in ("input", "temp", "output"):
                return Response(b"", status=400)
            subfolder = form.get("subfolder", "")
            filename = posixpath.basename(image.filename)
            if not _safe_subfolder(subfolder) or filename in ("", ".", ".."):
                return Response(b"", status=400)
            data = image.read()
            if not data:
                return Response(b"", status=400)
            overwrite = form.get("overwrite") in ("true", "1")
            stem, ext = posixpath.splitext(filename)
            i = 1
            while not overwrite and (kind, subfolder, filename) in self.files:
                if self.files[(kind, subfolder, filename)] == data:
                    break  # the same image again: keep its name
                filename = f"{stem} ({i}){ext}"
                i += 1
            self.files[(kind, subfolder, filename)] = data
            self.uploads.append(filename)
            return {"name": filename, "subfolder": subfolder, "type": kind}

        @route("/prompt", ["POST"])
        async def post_prompt() -> Any:
            # Read the body before any early answer: hypercorn can stall the next request on a
            # keep-alive connection when a handler leaves the request body unread.
            body = await request.get_json(force=True, silent=True)
            if self.faults.prompt_500 > 0:
                self.faults.prompt_500 -= 1
                return Response("500 Internal Server Error", status=500, mimetype="text/plain")
            if not isinstance(body, dict) or "prompt" not in body:
                error = _err("no_prompt", "No prompt provided", "No prompt provided")
                return {"error": error, "node_errors": {}}, 400
            prompt_id = body.get("prompt_id")
            if prompt_id is None:
                prompt_id = str(uuid.uuid4())
            elif not _canonical_uuid(prompt_id):
                error = _err("invalid_prompt_id", "Invalid prompt_id", "must be a canonical UUID")
                return {"error": error, "node_errors": {}}, 400
            try:
                outputs = self._validate(body["prompt"])
            except PromptInvalid as e:
                return {"error": e.error, "node_errors": e.node_errors}, 400
            self._number += 1
            number = -self._number if body.get("front") else self._number
            client_id = body.get("client_id")
            queued = QueuedPrompt(
                number=number,
                prompt_id=prompt_id,
                prompt=body["prompt"],
                client_id=client_id if isinstance(client_id, str) else None,
                extra_data=body.get("extra_data") or {},
                outputs=outputs,
            )
            self.prompts.append(queued)
            if body.get("front"):
                self._pending.insert(0, queued)
            else:
                self._pending.append(queued)
            self._wakeup.set()
            self._queue_updated()
            return {"prompt_id": prompt_id, "number": number, "node_errors": {}}

        @route("/prompt", ["GET"])
        async def get_prompt() -> Any:
            return self._queue_info()

        @route("/queue", ["GET"])
        async def get_queue() -> Any:
            return {
                "queue_running": [self._running.item()] if self._running else [],
                "queue_pending": [p.item() for p in self._pending],
            }

        @route("/queue", ["POST"])
        async def post_queue() -> Any:
            body = await request.get_json(force=True, silent=True) or {}
            if body.get("clear"):
                self._pending.clear()
            for prompt_id in body.get("delete") or []:
                self.deleted.append(prompt_id)
                self._pending[:] = [p for p in self._pending if p.prompt_id != prompt_id]
            self._queue_updated()
            return Response(b"", status=200)

        @route("/interrupt", ["POST"])
        async def post_interrupt() -> Any:
            body = await request.get_json(force=True, silent=True) or {}
            prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
            self.interrupts.append(prompt_id)
            # Current ComfyUI: with a prompt_id, interrupt only if that prompt is running.
            if not prompt_id or (self._running and self._running.prompt_id == prompt_id):
                self._interrupted.set()
            return Response(b"", status=200)

        @route("/history", ["GET"])
        async def get_history() -> Any:
            items = list(self._history.items())
            max_items = request.args.get("max_items", type=int)
            if max_items is not None:
                items = items[-max_items:] if max_items > 0 else []
            return dict(items)

        @route("/history/<prompt_id>", ["GET"])
        async def get_history_item(prompt_id: str) -> Any:
            entry = self._history.get(prompt_id)
            return {prompt_id: entry} if entry is not None else {}

        @route("/history", ["POST"])
        async def post_history() -> Any:
            body = await request.get_json(force=True, silent=True) or {}
            if body.get("clear"):
                self._history.clear()
            for prompt_id in body.get("delete") or []:
                self._history.pop(prompt_id, None)
            return Response(b"", status=200)

        @route("/view", ["GET"])
        async def view() -> Any:
            filename = request.args.get("filename", "")
            if not filename or filename.startswith("/") or ".." in filename:
                return Response(b"", status=400)
            kind = request.args.get("type", "output")
            if kind not in ("input", "output", "temp"):
                return Response(b"", status=400)
            subfolder = request.args.get("subfolder", "")
            if not _safe_subfolder(subfolder):
                return Response(b"", status=403)
            data = self.files.get((kind, subfolder, filename))
            if data is None:
                return Response(b"", status=404)
            mimetype = self.faults.view_content_type or (
                mimetypes.guess_type(filename)[0] or "application/octet-stream"
            )
            response = Response(data, mimetype=mimetype)
            response.headers["Content-Disposition"] = f'filename="{filename}"'
            return response

        @route("/system_stats", ["GET"])
        async def system_stats() -> Any:
            return {
                "system": {
                    "os": sys.platform,
                    "python_version": sys.version,
                    "embedded_python": False,
                    "comfyui_version": "0.3.64-standin",
                    "ram_total": 16 * 2**30,
                    "ram_free": 8 * 2**30,
                },
                "devices": [
                    {
                        "name": "standin:0 fake GPU",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": 8 * 2**30,
                        "vram_free": 6 * 2**30,
                        "torch_vram_total": 0,
                        "torch_vram_free": 0,
                    }
                ],
            }

        @route("/object_info", ["GET"])
        async def object_info() -> Any:
            return {
                name: {
                    "input": {
                        "required": {
                            k: [list(v.choices)] if v.kind == "COMBO" else [v.kind]
                            for k, v in t.inputs.items()
                        }
                    },
                    "output_node": t.output_node,
                    "name": name,
                }
                for name, t in NODE_TYPES.items()
            }

        @app.route("/__standin__/fault", methods=["POST"])
        async def set_fault() -> Any:
            body = await request.get_json(force=True, silent=True)
            if not isinstance(body, dict):
                return {"error": "expected a JSON object"}, 400
            try:
                faults = self.set_faults(**body)
            except (TypeError, ValueError) as e:
                return {"error": str(e)}, 400
            return {"faults": dataclasses.asdict(faults)}

        @app.route("/__standin__/restart", methods=["POST"])
        async def restart() -> Any:
            body = await request.get_json(force=True, silent=True) or {}
            assert self._nursery is not None
            # Restart from outside this request (it is about to be cut off), after answering.
            self._nursery.start_soon(self._restart_later, float(body.get("downtime", 0.0)))
            return {"restarting": True}, 202

        @app.route("/__standin__/state", methods=["GET"])
        async def state() -> Any:
            running, pending = self.queue_ids()
            return {
                "faults": dataclasses.asdict(self.faults),
                "uploads": self.uploads,
                "prompts": [p.prompt_id for p in self.prompts],
                "interrupts": self.interrupts,
                "deleted": self.deleted,
                "ws_connects": self.ws_connects,
                "restarts": self.restarts,
                "running": running,
                "pending": pending,
            }

        async def ws() -> None:
            sid = websocket.args.get("clientId") or uuid.uuid4().hex
            await websocket.accept()
            self.ws_connects.append(sid)
            send, receive = trio.open_memory_channel[str | bytes](math.inf)
            sock = _Socket(send)
            old = self._sockets.get(sid)
            if old is not None:
                old.scope.cancel()  # the newest socket of a client id wins
            self._sockets[sid] = sock
            send.send_nowait(
                json.dumps({"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
            )
            if self._running and self._running.client_id == sid and self._last_node is not None:
                send.send_nowait(
                    json.dumps({"type": "executing", "data": {"node": self._last_node}})
                )
            try:
                with sock.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_drain_incoming)
                        async for message in receive:
                            await websocket.send(message)
            finally:
                if self._sockets.get(sid) is sock:
                    del self._sockets[sid]
            await websocket.close(1001)

        async def _drain_incoming() -> None:
            while True:
                await websocket.receive()  # clients may send feature flags; nothing to do

        app.add_websocket("/ws", "ws", ws)
        app.add_websocket("/api/ws", "api_ws", ws)
        return app

    async def _restart_later(self, downtime: float) -> None:
        await trio.sleep(0.05)  # let the 202 reach the caller first
        await self.restart(downtime=downtime)


# -- helpers ---------------------------------------------------------------------------------


def _execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """The nodes ``outputs`` need, in dependency order (inputs first)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen or node_id not in prompt:
            return
        seen.add(node_id)
        inputs = prompt[node_id].get("inputs")
        for value in (inputs if isinstance(inputs, dict) else {}).values():
            if isinstance(value, list) and len(value) == 2:
                visit(str(value[0]))
        order.append(node_id)

    for node_id in outputs:
        visit(node_id)
    return order


def _execution_error(
    node_id: str, class_type: str, executed: list[str], *, oom: bool = False
) -> dict[str, Any]:
    if oom:
        exc_type = "torch.OutOfMemoryError"
        message = (
            "Allocation on device 0 would exceed allowed memory. (out of memory)\n"
            "Currently allocated     : 7.61 GiB\nThis error means you ran out of memory on your"
            " GPU.\n\nTIPS: If the workflow worked before you might have accidentally set the"
            " batch_size to a large number."
        )
    else:
        exc_type = "RuntimeError"
        message = "mat1 and mat2 shapes cannot be multiplied (154x2048 and 768x320)"
    return {
        "node_id": node_id,
        "node_type": class_type,
        "executed": executed,
        "exception_message": message,
        "exception_type": exc_type,
        "traceback": [
            '  File "/ComfyUI/execution.py", line 496, in execute\n',
            f"{exc_type}: {message.splitlines()[0]}\n",
        ],
        "current_inputs": {},
        "current_outputs": {},
        "timestamp": _now_ms(),
    }


def _tinted_png(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    tinted = Image.blend(rgb, Image.new("RGB", rgb.size, TINT), TINT_ALPHA)
    return _png_bytes(tinted)


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _split_name(name: str) -> tuple[str, str]:
    """A LoadImage value ``sub/dir/x.png`` as (subfolder, filename)."""
    subfolder, filename = posixpath.split(name)
    return subfolder, filename


def _safe_subfolder(subfolder: str) -> bool:
    if not subfolder:
        return True
    normal = posixpath.normpath(subfolder)
    return not (normal.startswith(("/", "..")) or "/../" in f"/{normal}/")


def _canonical_uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


@asynccontextmanager
async def open_comfyui_standin(
    *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ComfyUIStandin]:
    """Run a stand-in for the duration of the block; ``standin.url`` is where it listens."""
    try:
        async with trio.open_nursery() as nursery:
            standin: ComfyUIStandin = await nursery.start(ComfyUIStandin(host, port).run)
            try:
                yield standin
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Let the block's own exception (a failed assert, pytest.raises) through unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    args = parser.parse_args(argv)

    async def run() -> None:
        async with open_comfyui_standin(host=args.host, port=args.port) as standin:
            print(f"listening on {standin.url}", flush=True)
            await trio.sleep_forever()

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
