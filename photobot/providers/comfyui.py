"""ComfyUI provider: one prompt on a ComfyUI server per attempt, followed over its websocket.

Protocol (shared/notes/protocols.md §2). One :meth:`ComfyUIProvider.process` call:

1. ``POST /upload/image`` (multipart ``image``, ``overwrite=true``) under a name unique to this
   attempt, so two jobs never share an input file.
2. Open ``/ws?clientId=<hex>`` *before* queueing: ComfyUI sends a prompt's events only to the
   socket of the ``client_id`` that queued it, and nothing is replayed, so a socket opened after
   ``POST /prompt`` can miss the start or even the end of a short run.
3. ``POST /prompt {"prompt", "client_id", "prompt_id"}``. The workflow comes from a JSON template
   (``config/comfyui/img2img.json``, see :class:`WorkflowTemplate`); the prompt id is made here
   so that a cancellation that lands while the request is in flight can still name the prompt.
4. Follow the socket: ``progress {value,max}`` → ``progress(value/max)`` (kept monotonic);
   ``executing {node: null}`` or ``execution_success`` for our prompt → finished;
   ``execution_error`` / ``execution_interrupted`` → failed. Messages for other prompt ids
   (other clients on a shared socket, ComfyUI#3652) and binary preview frames are ignored.
5. ``GET /history/{id}`` (``{}`` until ComfyUI has filed the run, so retried briefly), then
   ``GET /view`` for every ``type: output`` image. The content type is taken from the bytes
   (Pillow, in a thread behind :attr:`ComfyUIProvider.limiter`), never from the headers.

Outcomes (see :mod:`photobot.providers.base` for the transient/fatal contract):

- ``/prompt`` answers 400 with ComfyUI's error body → fatal ``invalid_workflow`` (short summary
  of the first node errors). 429 → transient ``rate_limited``; 408 and 5xx → transient
  ``provider_unavailable``; any other 4xx → fatal ``provider_rejected``. Network errors and
  per-request timeouts → transient ``provider_unavailable``.
- ``execution_error`` → fatal ``execution_error``, **except out-of-memory** (``torch``
  ``OutOfMemoryError``, "out of memory", "OOM", "Allocation on device") → transient ``gpu_oom``:
  ComfyUI unloads its models after an OOM (ComfyUI#4934) and the same prompt usually runs once
  the GPU is shared by fewer jobs, so another attempt later is worth it.
- ``execution_interrupted`` (someone pressed cancel in ComfyUI) → transient ``interrupted``.
- No output image, or one that is not a PNG/JPEG/WebP → fatal ``bad_result``.
- The whole attempt is bounded by ``timeout`` → transient ``provider_timeout``.
- Stall: no websocket message at all (ComfyUI's own ``status`` included) for ``stall_timeout``
  → look the prompt up (``GET /queue`` first, then ``/history``, so a prompt that finishes in
  between is not mistaken for lost): finished → collect the result (we missed the end);
  gone from both → transient ``remote_lost`` (ComfyUI restarted, history is in memory only,
  ComfyUI#3331); *running* → interrupt it and transient ``stalled`` (ComfyUI#3390); still
  *pending* behind other clients' work → keep waiting: a busy queue is not a stall, and the
  hard ``timeout`` still bounds the attempt.
- The websocket drops → reconnect with the same ``clientId`` (ComfyUI routes to the newest
  socket; a few tries within about 0.35 s) and look the prompt up as above; if the server cannot
  be reached → transient ``remote_lost``. After :data:`MAX_RECONNECTS` drops → transient
  ``provider_unavailable``.

Cancellation (job canceled, hard timeout, shutdown): on the way out, shielded and bounded by
:data:`CLEANUP_TIMEOUT`, ``POST /queue {"delete": [id]}`` (a pending prompt never starts) and,
if the prompt is running, ``POST /interrupt {"prompt_id": id}``; then the cancellation goes on.
Servers older than 2025 ignore ``prompt_id`` in ``/interrupt`` and stop whatever runs, which is
why it is only sent when ``/queue`` says ours is the running one.

Messages are short and never carry the base URL (it may hold credentials) or image bytes.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import outcome
import trio
from PIL import Image, UnidentifiedImageError
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from photobot.errors import ConfigError
from photobot.providers.base import (
    FatalProviderError,
    OutputImage,
    Progress,
    ProviderError,
    ProviderInput,
    ProviderOutput,
    TransientProviderError,
)

log = logging.getLogger(__name__)

#: The template used when none is given: ``config/comfyui/img2img.json`` in the source tree.
DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "config" / "comfyui" / "img2img.json"

#: Seconds the shielded clean-up (queue delete, interrupt) may take after a cancellation.
CLEANUP_TIMEOUT = 2.0
#: Seconds to wait for the websocket close handshake; a dead peer must not hold us up.
WS_CLOSE_TIMEOUT = 1.0
#: Websocket drops ridden out in one attempt before giving up.
MAX_RECONNECTS = 3
#: Waits before each try to reconnect a dropped websocket (about 0.35 s in all).
RECONNECT_DELAYS = (0.0, 0.05, 0.1, 0.2)
#: Waits before each ``/history`` read after the end of a run (it can lag the websocket).
HISTORY_RETRY_DELAYS = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
#: Per-request read/write timeout; the attempt as a whole is bounded by ``timeout``.
REQUEST_TIMEOUT = 30.0
#: Preview frames are a few hundred kB at most; a bigger frame would close the socket (1009).
MAX_WS_MESSAGE = 16 * 1024 * 1024
MAX_RESULT_BYTES = 50 * 1024 * 1024
MAX_MESSAGE = 200
MAX_CUSTOM_STYLE = 200

PLACEHOLDER_IMAGE = "$input_image"
PLACEHOLDER_STYLE = "$style_prompt"
PLACEHOLDER_SEED = "$seed"
PLACEHOLDERS = (PLACEHOLDER_IMAGE, PLACEHOLDER_STYLE, PLACEHOLDER_SEED)
#: Anything shaped like a placeholder but not one of ours is a typo in the template.
_PLACEHOLDER_LIKE = re.compile(r"^\$[A-Za-z_][A-Za-z0-9_]*$")
_OOM = re.compile(r"out of memory|\bOOM\b|allocation on device", re.IGNORECASE)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]+")

_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}
_PIL_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}

Where = Literal["running", "pending", "done", "gone"]


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


# -- workflow template -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowTemplate:
    """An API-format ComfyUI workflow with placeholders, plus the prompt text per style.

    File format (JSON object): ``workflow`` (the API-format prompt: ``{node_id: {"class_type",
    "inputs"}}``), ``styles`` (``{name: prompt}``, must hold ``default``), optional
    ``custom_style`` (a prompt for a style name not in ``styles``; ``{style}`` in it is replaced
    by the name). Inside ``workflow``, an input whose value is *exactly* ``"$input_image"``,
    ``"$style_prompt"`` or ``"$seed"`` is replaced by a typed value; nothing else is touched.
    Values are put into the parsed structure, never formatted into JSON text, so a style name
    cannot change the workflow's shape.
    """

    workflow: Mapping[str, Any]
    styles: Mapping[str, str]
    custom_style: str = "{style}"

    @classmethod
    def load(cls, path: Path) -> WorkflowTemplate:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"ComfyUI workflow template {path.name}: {e}") from None
        try:
            return cls.from_dict(raw)
        except ValueError as e:
            raise ConfigError(f"ComfyUI workflow template {path.name}: {e}") from None

    @classmethod
    def from_dict(cls, raw: Any) -> WorkflowTemplate:
        """Check the structure and the placeholders; raise ``ValueError`` naming the problem."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        workflow, styles = raw.get("workflow"), raw.get("styles")
        custom = raw.get("custom_style", "{style}")
        if not isinstance(workflow, dict) or not workflow:
            raise ValueError("'workflow' must be a non-empty object (API format)")
        if not isinstance(styles, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in styles.items()
        ):
            raise ValueError("'styles' must map style names to prompt texts")
        if "default" not in styles:
            raise ValueError("'styles' needs a 'default' entry")
        if not isinstance(custom, str) or "{style}" not in custom:
            raise ValueError("'custom_style' must contain {style}")
        counts = dict.fromkeys(PLACEHOLDERS, 0)
        for node_id, node in workflow.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                raise ValueError(f"node {node_id} needs a class_type")
            inputs = node.get("inputs")
            if not isinstance(inputs, dict):
                raise ValueError(f"node {node_id} needs an inputs object")
            for name, value in inputs.items():
                if isinstance(value, str) and _PLACEHOLDER_LIKE.match(value):
                    if value not in counts:
                        raise ValueError(f"node {node_id} input {name}: unknown {value}")
                    counts[value] += 1
        if counts[PLACEHOLDER_IMAGE] != 1:
            raise ValueError(f"{PLACEHOLDER_IMAGE} must appear exactly once")
        for placeholder in (PLACEHOLDER_STYLE, PLACEHOLDER_SEED):
            if counts[placeholder] < 1:
                raise ValueError(f"{placeholder} must appear at least once")
        return cls(workflow=workflow, styles=styles, custom_style=custom)

    def style_prompt(self, style: str | None) -> str:
        name = (style or "").strip()
        if not name:
            return self.styles["default"]
        if name in self.styles:
            return self.styles[name]
        # An operator-typed style: used as words in a prompt (a value, never JSON or a format
        # string), cut short so a pasted essay cannot crowd out the rest of the prompt.
        return self.custom_style.replace("{style}", name[:MAX_CUSTOM_STYLE])

    def render(self, *, image: str, style: str | None, seed: int) -> dict[str, Any]:
        values: dict[str, Any] = {
            PLACEHOLDER_IMAGE: image,
            PLACEHOLDER_STYLE: self.style_prompt(style),
            PLACEHOLDER_SEED: seed,
        }
        workflow = copy.deepcopy(dict(self.workflow))
        for node in workflow.values():
            inputs = node["inputs"]
            for name, value in inputs.items():
                if isinstance(value, str) and value in values:
                    inputs[name] = values[value]
        return workflow


# -- the provider ----------------------------------------------------------------------------


class _Reporter:
    """Passes progress on clamped to 0..1 and never backwards (ComfyUI restarts at 0 per node)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._last = -1.0

    def report(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if fraction > self._last:
            self._last = fraction
            self._progress(fraction)


class _NoSocket(Exception):
    """The websocket could not be opened (nothing was sent over it)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(type(error).__name__)
        self.error = error


@dataclass
class _Run:
    """What one attempt has put on the server so far."""

    client_id: str
    prompt_id: str
    workflow: dict[str, Any]
    reporter: _Reporter
    submitted: bool = False


class ComfyUIProvider:
    """One ComfyUI prompt per :meth:`process` call; see the module docstring."""

    name = "comfyui"

    def __init__(
        self,
        base_url: str,
        *,
        workflow_path: Path | None = None,
        timeout: float = 300.0,
        stall_timeout: float = 60.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._template = WorkflowTemplate.load(workflow_path or DEFAULT_WORKFLOW)
        self._timeout = timeout
        self._stall_timeout = stall_timeout
        self._connect_timeout = connect_timeout
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("COMFY_API_BASE_URL must be an http(s) URL")
        # The websocket URL carries no credentials; user:password in the base URL becomes
        # Basic auth (httpx does the same for the HTTP requests).
        netloc = parts.netloc.rpartition("@")[2]
        scheme = "wss" if parts.scheme == "https" else "ws"
        self._ws_url = urlunsplit((scheme, netloc, parts.path + "/ws", "", ""))
        self._ws_headers: list[tuple[bytes, bytes]] = []
        if parts.username is not None:
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode())
            self._ws_headers.append((b"authorization", b"Basic " + token))
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(REQUEST_TIMEOUT, connect=connect_timeout),
            follow_redirects=False,
        )
        #: Pillow checks of results run in threads behind this limiter.
        self.limiter = trio.CapacityLimiter(2)
        self.limiter_name = "comfyui-images"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def process(self, job: ProviderInput, progress: Progress) -> ProviderOutput:
        with trio.move_on_after(self._timeout):
            return await self._attempt(job, progress)
        # Reached only when our own deadline fired; _attempt has already told ComfyUI.
        raise TransientProviderError(
            f"ComfyUI did not finish within {self._timeout:g} s", code="provider_timeout"
        )

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, job: ProviderInput, progress: Progress) -> ProviderOutput:
        seed = job.seed if job.seed is not None else secrets.randbelow(2**32)
        image_name = await self._upload(job)
        run = _Run(
            client_id=uuid.uuid4().hex,
            prompt_id=str(uuid.uuid4()),
            workflow=self._template.render(image=image_name, style=job.style, seed=seed),
            reporter=_Reporter(progress),
        )
        try:
            drops = 0
            while await self._with_socket(run, first=drops == 0) == "closed":
                drops += 1
                if drops > MAX_RECONNECTS:
                    raise TransientProviderError(
                        "ComfyUI websocket keeps dropping", code="provider_unavailable"
                    )
            entry = await self._history_entry(run.prompt_id)
        except trio.Cancelled:
            if run.submitted:
                await self._abandon(run.prompt_id)
            raise
        images, files = await self._collect(entry)
        run.reporter.report(1.0)
        return ProviderOutput(
            images=images,
            provider_request_id=run.prompt_id,
            seed=seed,
            metadata={"input_name": image_name, "output_files": files},
        )

    async def _with_socket(self, run: _Run, *, first: bool) -> str:
        """Open the websocket, then queue (``first``) or re-find the prompt, then follow it.

        Returns ``"done"`` or ``"closed"`` (the socket dropped). The body's outcome is captured
        and raised after the socket is closed, so a slow close cannot hide the real error.
        """
        # A reconnect gets a few quick tries: a proxy blip or a fast restart is over in well
        # under a second, and a restarted server must be asked whether our prompt survived.
        delays = (0.0,) if first else RECONNECT_DELAYS
        error: BaseException | None = None
        for delay in delays:
            await trio.sleep(delay)
            try:
                return await self._socket_session(run, first=first)
            except _NoSocket as e:
                error = e.error
        if first:
            raise TransientProviderError(
                f"ComfyUI websocket: cannot connect ({type(error).__name__})",
                code="provider_unavailable",
            )
        raise TransientProviderError("ComfyUI went away mid-run", code="remote_lost")

    async def _socket_session(self, run: _Run, *, first: bool) -> str:
        result: outcome.Outcome[str] | None = None
        try:
            async with open_websocket_url(
                f"{self._ws_url}?clientId={run.client_id}",
                extra_headers=self._ws_headers,
                max_message_size=MAX_WS_MESSAGE,
                message_queue_size=16,
                connect_timeout=self._connect_timeout,
                disconnect_timeout=WS_CLOSE_TIMEOUT,
            ) as ws:
                result = await outcome.acapture(self._drive, ws, run, first)
        except (HandshakeError, ConnectionClosed, OSError, trio.BrokenResourceError) as e:
            if result is None:
                raise _NoSocket(e) from None
            # Otherwise only the close handshake failed; the result stands.
        assert result is not None
        return result.unwrap()

    async def _drive(self, ws: WebSocketConnection, run: _Run, first: bool) -> str:
        if first:
            # From here on the server may hold our prompt, so cancellation must clean up.
            run.submitted = True
            run.prompt_id = await self._submit(run)
        else:
            # Reconnected: the run may have ended, or the server restarted, while we were away.
            where = await self._locate(run.prompt_id)
            if where == "done":
                return "done"
            if where == "gone":
                raise _lost()
        while True:
            event = await self._follow(ws, run)
            if event != "quiet":
                return event
            where = await self._locate(run.prompt_id)
            if where == "done":
                return "done"
            if where == "gone":
                raise _lost()
            if where == "running":
                await self._abandon(run.prompt_id)
                raise TransientProviderError(
                    f"ComfyUI sent nothing for {self._stall_timeout:g} s", code="stalled"
                )
            # "pending": other clients' work runs first; that is a queue, not a stall.

    async def _follow(self, ws: WebSocketConnection, run: _Run) -> str:
        """Read messages until our prompt ends (``"done"``), a quiet spell, or a closed socket."""
        while True:
            with trio.move_on_after(self._stall_timeout):
                try:
                    message = await ws.get_message()
                except ConnectionClosed:
                    return "closed"
                if _handle_message(message, run):
                    return "done"
                continue
            return "quiet"

    # -- HTTP --------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """Send one request; transport failures, 408, 429 and 5xx raise transient errors."""
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise TransientProviderError(
                f"ComfyUI {what}: timed out", code="provider_unavailable"
            ) from None
        except httpx.TransportError as e:
            raise TransientProviderError(
                f"ComfyUI {what}: {type(e).__name__}", code="provider_unavailable"
            ) from None
        status = response.status_code
        if status == 429:
            raise TransientProviderError(f"ComfyUI {what}: HTTP 429", code="rate_limited")
        if status == 408 or status >= 500:
            raise TransientProviderError(
                f"ComfyUI {what}: HTTP {status}", code="provider_unavailable"
            )
        return response

    async def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, what, **kwargs)
        if response.status_code >= 400:
            raise FatalProviderError(f"ComfyUI {what}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise FatalProviderError(f"ComfyUI {what}: not JSON", code="bad_response") from None

    async def _upload(self, job: ProviderInput) -> str:
        ext = _EXTENSIONS.get(job.content_type, ".png")
        safe_job = _UNSAFE_NAME.sub("-", job.job_id)[:40]
        filename = f"photobot_{safe_job}_{uuid.uuid4().hex[:12]}{ext}"
        body = await self._json(
            "POST",
            "/upload/image",
            "upload",
            files={"image": (filename, job.image, job.content_type)},
            data={"overwrite": "true", "type": "input"},
        )
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise FatalProviderError(
                "ComfyUI upload: no file name in the answer", code="bad_response"
            )
        subfolder = body.get("subfolder") or ""
        return f"{subfolder}/{name}" if isinstance(subfolder, str) and subfolder else name

    async def _submit(self, run: _Run) -> str:
        payload = {"prompt": run.workflow, "client_id": run.client_id, "prompt_id": run.prompt_id}
        try:
            response = await self._client.post("/prompt", json=payload)
        except httpx.TransportError as e:
            if not isinstance(e, httpx.ConnectError):
                # The request may have arrived: make sure it does not run behind our back.
                await self._abandon(run.prompt_id)
            raise TransientProviderError(
                f"ComfyUI prompt: {type(e).__name__}", code="provider_unavailable"
            ) from None
        status = response.status_code
        if status == 400:
            raise _workflow_rejected(response)
        if status == 429:
            raise TransientProviderError("ComfyUI prompt: HTTP 429", code="rate_limited")
        if status == 408 or status >= 500:
            raise TransientProviderError(
                f"ComfyUI prompt: HTTP {status}", code="provider_unavailable"
            )
        if status >= 300:
            raise FatalProviderError(f"ComfyUI prompt: HTTP {status}")
        try:
            body = response.json()
        except ValueError:
            body = None
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise FatalProviderError(
                "ComfyUI prompt: no prompt_id in the answer", code="bad_response"
            )
        # Servers from before client-chosen ids ignore ours and answer with their own.
        return prompt_id

    async def _locate(self, prompt_id: str) -> Where:
        # /queue first: a prompt leaves the queue and enters history in one step, so reading
        # in this order cannot see it in neither place while it finishes.
        queue = await self._json("GET", "/queue", "queue")
        if isinstance(queue, dict):
            if prompt_id in _queue_ids(queue.get("queue_running")):
                return "running"
            if prompt_id in _queue_ids(queue.get("queue_pending")):
                return "pending"
        history = await self._json("GET", f"/history/{prompt_id}", "history")
        if isinstance(history, dict) and prompt_id in history:
            return "done"
        return "gone"

    async def _history_entry(self, prompt_id: str) -> Mapping[str, Any]:
        # The websocket can announce the end before ComfyUI files the run (execution_success
        # is sent from inside the run), so an empty answer is read again a few times.
        for delay in HISTORY_RETRY_DELAYS:
            await trio.sleep(delay)
            history = await self._json("GET", f"/history/{prompt_id}", "history")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if isinstance(entry, dict):
                return entry
        raise TransientProviderError(
            "ComfyUI finished but has no history for the prompt", code="remote_lost"
        )

    async def _collect(self, entry: Mapping[str, Any]) -> tuple[list[OutputImage], list[str]]:
        status = entry.get("status")
        if isinstance(status, dict) and status.get("status_str") == "error":
            raise _failure_from_history(status)
        refs = _output_refs(entry.get("outputs"))
        if not refs:
            raise FatalProviderError("ComfyUI produced no output image", code="bad_result")
        images: list[OutputImage] = []
        files: list[str] = []
        for ref in refs:
            image = await self._download(ref)
            if image is not None:
                images.append(image)
                files.append(ref["filename"])
        if not images:
            raise FatalProviderError("ComfyUI output is not a usable image", code="bad_result")
        return images, files

    async def _download(self, ref: Mapping[str, str]) -> OutputImage | None:
        response = await self._request("GET", "/view", "view", params=dict(ref))
        if response.status_code >= 400:
            raise FatalProviderError(
                f"ComfyUI view: HTTP {response.status_code}", code="bad_result"
            )
        data = response.content
        if len(data) > MAX_RESULT_BYTES:
            raise FatalProviderError("ComfyUI output is too large", code="bad_result")
        checked = await trio.to_thread.run_sync(_inspect_image, data, limiter=self.limiter)
        if checked is None:
            return None
        content_type, width, height = checked
        return OutputImage(data=data, content_type=content_type, width=width, height=height)

    async def _abandon(self, prompt_id: str) -> None:
        """Drop our prompt on the server; shielded because we are usually being cancelled."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + CLEANUP_TIMEOUT
            # Each step on its own: one failing must not keep the others from being tried.
            failed: list[str] = []
            try:
                # A pending prompt is simply removed, so it never starts.
                await self._client.post("/queue", json={"delete": [prompt_id]})
            except httpx.HTTPError as e:
                failed.append(f"delete: {type(e).__name__}")
            running: bool | None = None  # unknown: interrupt anyway, naming our prompt
            try:
                queue = (await self._client.get("/queue")).json()
                running = prompt_id in _queue_ids(queue.get("queue_running"))
            except (httpx.HTTPError, ValueError, AttributeError) as e:
                failed.append(f"queue: {type(e).__name__}")
            if running is not False:
                try:
                    await self._client.post("/interrupt", json={"prompt_id": prompt_id})
                except httpx.HTTPError as e:
                    failed.append(f"interrupt: {type(e).__name__}")
        if failed or scope.cancelled_caught:
            log.info(
                "comfyui: withdrawing the prompt did not fully succeed",
                extra={"promptId": prompt_id, "failed": ", ".join(failed) or "timed out"},
            )


# -- message and result parsing --------------------------------------------------------------


def _handle_message(message: str | bytes, run: _Run) -> bool:
    """Act on one websocket message; True when it says our prompt finished. Raises on failure."""
    if isinstance(message, bytes):
        return False  # preview frames (4-byte event type + image): nothing we show
    try:
        parsed = json.loads(message)
    except ValueError:
        return False
    if not isinstance(parsed, dict):
        return False
    kind, data = parsed.get("type"), parsed.get("data")
    # status messages carry no prompt_id; other prompts' events can share a socket (#3652).
    if not isinstance(data, dict) or data.get("prompt_id") != run.prompt_id:
        return False
    if kind == "progress":
        value, maximum = data.get("value"), data.get("max")
        if isinstance(value, (int, float)) and isinstance(maximum, (int, float)) and maximum > 0:
            run.reporter.report(value / maximum)
        return False
    if kind == "executing":
        return data.get("node") is None
    if kind == "execution_success":
        return True
    if kind == "execution_error":
        raise _execution_failed(data)
    if kind == "execution_interrupted":
        raise TransientProviderError("ComfyUI interrupted the run", code="interrupted")
    return False


def _execution_failed(data: Mapping[str, Any]) -> ProviderError:
    exc_type = str(data.get("exception_type") or "")
    exc_message = str(data.get("exception_message") or "")
    node = data.get("node_type") or data.get("node_id") or "a node"
    if "OutOfMemory" in exc_type or _OOM.search(exc_message):
        return TransientProviderError(f"ComfyUI ran out of GPU memory in {node}", code="gpu_oom")
    lines = exc_message.strip().splitlines()
    detail = lines[0] if lines else exc_type.rpartition(".")[2] or "error"
    return FatalProviderError(_short(f"ComfyUI failed in {node}: {detail}"), code="execution_error")


def _failure_from_history(status: Mapping[str, Any]) -> ProviderError:
    """The run failed and we missed the websocket message: read it from the history."""
    messages = status.get("messages")
    for item in messages if isinstance(messages, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
            if item[0] == "execution_error":
                return _execution_failed(item[1])
            if item[0] == "execution_interrupted":
                return TransientProviderError("ComfyUI interrupted the run", code="interrupted")
    return FatalProviderError("ComfyUI reported an error", code="execution_error")


def _workflow_rejected(response: httpx.Response) -> FatalProviderError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return FatalProviderError("ComfyUI prompt: HTTP 400")
    parts: list[str] = []
    node_errors = body.get("node_errors")
    for node_id, node in (node_errors if isinstance(node_errors, dict) else {}).items():
        if not isinstance(node, dict):
            continue
        errors = node.get("errors")
        first = errors[0] if isinstance(errors, list) and errors else {}
        first = first if isinstance(first, dict) else {}
        text = ": ".join(str(first[k]) for k in ("message", "details") if first.get(k))
        parts.append(f"node {node_id} ({node.get('class_type', '?')}) {text}".strip())
    if not parts:
        error = body.get("error")
        if isinstance(error, dict):
            parts.append(str(error.get("message") or error.get("type") or "rejected"))
        elif isinstance(error, str):
            parts.append(error)
    summary = "; ".join(parts[:2]) or "rejected"
    return FatalProviderError(
        _short(f"ComfyUI rejected the workflow: {summary}"), code="invalid_workflow"
    )


def _queue_ids(items: Any) -> set[str]:
    """Prompt ids in a ``queue_running``/``queue_pending`` list (``[number, id, ...]`` items)."""
    ids: set[str] = set()
    for item in items if isinstance(items, list) else []:
        if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str):
            ids.add(item[1])
        elif isinstance(item, dict) and isinstance(item.get("prompt_id"), str):
            ids.add(item["prompt_id"])
    return ids


def _output_refs(outputs: Any) -> list[dict[str, str]]:
    """``/view`` parameters for every saved image (``type: output``; previews are ``temp``)."""
    refs: list[dict[str, str]] = []
    for node_output in (outputs if isinstance(outputs, dict) else {}).values():
        images = node_output.get("images") if isinstance(node_output, dict) else None
        for image in images if isinstance(images, list) else []:
            if not isinstance(image, dict) or image.get("type", "output") != "output":
                continue
            filename = image.get("filename")
            if isinstance(filename, str) and filename:
                subfolder = image.get("subfolder")
                refs.append({
                    "filename": filename,
                    "subfolder": subfolder if isinstance(subfolder, str) else "",
                    "type": "output",
                })  # fmt: skip
    return refs


def _inspect_image(data: bytes) -> tuple[str, int, int] | None:
    """(content type, width, height) read from the bytes, or None if not a usable image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            content_type = _PIL_TYPES.get(im.format or "")
            width, height = im.size
            im.verify()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if content_type is None:
        return None
    return content_type, width, height


def _lost() -> TransientProviderError:
    return TransientProviderError("ComfyUI lost the prompt (restarted?)", code="remote_lost")
