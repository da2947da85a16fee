"""kie.ai provider: image edit through kie's market task API, one task per attempt.

Protocol (shared/notes/protocols.md §3):

- ``POST /api/v1/jobs/createTask`` with ``{"model", "input": {"prompt", "image_urls", ...}}``
  answers ``{"code": 200, "msg": ..., "data": {"taskId": ...}}``.
- ``GET /api/v1/jobs/recordInfo?taskId=`` answers ``data.state`` ``waiting`` / ``queuing`` /
  ``generating`` (keep polling), ``success`` (``data.resultJson`` is a JSON *string* holding
  ``resultUrls``) or ``fail`` (``failCode`` / ``failMsg``).
- Every response carries a ``code`` in its body, and errors may arrive as HTTP 200 with a
  non-200 ``code``. The body code wins whenever the HTTP status is 2xx.
- kie fetches the input itself, so the job must carry a URL kie can reach (``input_url``).

Semantics (see :mod:`photobot.providers.base`):

- One call = one kie task. Re-polling ``recordInfo`` after a hiccup is not a retry: the task
  (already paid for) keeps running, so up to ``max_poll_errors`` consecutive transient poll
  failures are ridden out before the attempt is given up as transient.
- Classification, by HTTP status or body code: 401/403 → fatal ``auth_failed``; 402 → fatal
  ``insufficient_credits``; 400/422 and other 4xx → fatal ``invalid_request``; 451 → fatal
  ``input_not_reachable``; 501 → fatal ``task_failed``; 429 → transient ``rate_limited``
  (:class:`KieRateLimited` carries ``retry_after`` when the server sent one); 455, 5xx → transient
  ``provider_unavailable``; network errors → transient ``provider_unavailable``, timeouts and the
  overall ``timeout`` → transient ``provider_timeout``. A task that ends in ``fail`` → fatal
  ``task_failed`` (``input_not_reachable`` for failCode 451); a result that is not an image →
  fatal ``bad_result``.
- kie has no cancel endpoint, so cancellation just stops polling and propagates.
- Error messages are scrubbed: the API key never appears, and URL query strings (signed input
  URLs carry a signature) are cut.
- The API key goes only to ``base_url``; result files are downloaded without it, because they
  live on other hosts.
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx
import trio
from PIL import Image, UnidentifiedImageError

from photobot.providers.base import (
    FatalProviderError,
    OutputImage,
    Progress,
    ProviderInput,
    ProviderOutput,
    TransientProviderError,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.kie.ai"
#: The market name; bare ``nano-banana-edit`` has been seen to answer 422 "not supported".
DEFAULT_MODEL = "google/nano-banana-edit"

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"

PENDING_STATES = frozenset({"waiting", "queuing", "generating"})

#: Prompts per booth style; an unknown style name is put into a generic prompt.
DEFAULT_PROMPTS: Mapping[str, str] = {
    "default": (
        "Turn this photo into a polished, fun event portrait. Keep every person's face, pose "
        "and expression recognisable; do not add or remove people."
    ),
    "anime": (
        "Redraw this photo as a vibrant anime illustration. Keep every person recognisable, "
        "with the same pose and expression; do not add or remove people."
    ),
    "watercolor": (
        "Repaint this photo as a soft watercolor painting. Keep every person recognisable, "
        "with the same pose and expression; do not add or remove people."
    ),
    "vintage": (
        "Make this photo look like a 1970s film print with warm faded colors and grain. Keep "
        "every person exactly as they are."
    ),
    "comic": (
        "Redraw this photo as a bold comic-book panel with ink outlines and halftone shading. "
        "Keep every person recognisable; do not add or remove people."
    ),
}

MAX_MESSAGE = 200
MAX_RESULT_BYTES = 50 * 1024 * 1024

_SNIFF = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)[?#][^\s\"'<>]*")


class KieRateLimited(TransientProviderError):
    """kie answered 429; ``retry_after`` (seconds) is set when it said how long to wait."""

    code = "rate_limited"

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class KieProvider:
    """One kie.ai market task per :meth:`process` call; see the module docstring."""

    name = "kie"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        timeout: float = 600.0,
        poll_interval: float = 2.0,
        max_poll_interval: float = 10.0,
        connect_timeout: float = 10.0,
        request_timeout: float = 60.0,
        max_poll_errors: int = 3,
        prompts: Mapping[str, str] | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("kie needs an API key")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.max_poll_errors = max_poll_errors
        self.prompts: Mapping[str, str] = prompts if prompts is not None else DEFAULT_PROMPTS
        self._api_key = api_key
        # Sent per API request instead of as a client default, so result downloads from other
        # hosts never carry the key.
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout),
            follow_redirects=True,
            headers={"Accept": "application/json"},
        )
        #: Pillow checks of results run in threads behind this limiter.
        self.limiter = trio.CapacityLimiter(2)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- one attempt ---------------------------------------------------------------------------

    async def process(self, job: ProviderInput, progress: Progress) -> ProviderOutput:
        if not job.input_url:
            raise FatalProviderError(
                "kie fetches the input photo from a URL, and there is none: configure public "
                "storage (S3/R2) or PUBLIC_BASE_URL so kie can reach the booth's files",
                code="input_not_reachable",
            )
        started = time.monotonic()
        with trio.move_on_after(self.timeout) as scope:
            return await self._attempt(job, progress, started)
        assert scope.cancelled_caught
        raise TransientProviderError(
            f"kie did not finish within {self.timeout:g} s", code="provider_timeout"
        )

    async def _attempt(
        self, job: ProviderInput, progress: Progress, started: float
    ) -> ProviderOutput:
        reporter = _ProgressReporter(progress)
        reporter.report(0.0)
        payload = {
            "model": self.model,
            "input": {
                "prompt": self.prompt_for(job.style),
                "image_urls": [job.input_url],
                "output_format": "png",
                "image_size": "auto",
            },
        }
        data = await self._api("POST", CREATE_PATH, json=payload)
        task_id = data.get("taskId") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise TransientProviderError(
                "kie createTask answered without a taskId", code="bad_response"
            )
        log.info("kie task %s created for job %s (model %s)", task_id, job.job_id, self.model)
        reporter.report(0.02)

        record = await self._poll(task_id, reporter)
        urls = _result_urls(record)
        if not urls:
            raise FatalProviderError(
                f"kie task {task_id} succeeded without result URLs", code="bad_result"
            )
        images = [await self._download(url) for url in urls]
        reporter.report(1.0)

        metadata: dict[str, Any] = {"model": record.get("model") or self.model, "task_id": task_id}
        for key, value in record.items():
            # Cost/time fields vary per model and API version; keep whatever kie reports.
            lowered = key.lower()
            if (
                "cost" in lowered or "credit" in lowered or key in {"createTime", "completeTime"}
            ) and (value not in (None, "")):
                metadata[key] = value
        metadata["elapsed_s"] = round(time.monotonic() - started, 3)
        log.info("kie task %s succeeded with %d image(s)", task_id, len(images))
        return ProviderOutput(
            images=images, best=0, provider_request_id=task_id, seed=None, metadata=metadata
        )

    def prompt_for(self, style: str | None) -> str:
        if not style:
            return self.prompts.get("default", DEFAULT_PROMPTS["default"])
        if style in self.prompts:
            return self.prompts[style]
        return (
            f"Restyle this photo in a {style} style. Keep every person recognisable, with the "
            "same pose and expression; do not add or remove people."
        )

    async def _poll(self, task_id: str, reporter: _ProgressReporter) -> dict[str, Any]:
        interval = self.poll_interval
        errors = 0
        polls = 0
        while True:
            await trio.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)
            polls += 1
            try:
                record = await self._api("GET", RECORD_PATH, params={"taskId": task_id})
            except TransientProviderError as exc:
                # The task keeps running on kie's side (and is paid for); one bad poll must not
                # throw it away. Give up only when the API stays unhealthy.
                errors += 1
                if errors > self.max_poll_errors:
                    raise
                log.warning("kie poll of %s failed (%s), polling on", task_id, exc.code)
                retry_after = getattr(exc, "retry_after", None)
                if retry_after:
                    interval = max(interval, min(retry_after, 60.0))
                continue
            errors = 0
            if not isinstance(record, dict):
                raise TransientProviderError(
                    "kie recordInfo answered without data", code="bad_response"
                )
            state = str(record.get("state") or "").lower()
            if state == "success":
                return record
            if state == "fail":
                raise _task_failed(task_id, record, self._api_key)
            if state not in PENDING_STATES:
                # Unknown states are treated as still running: the timeout bounds the attempt.
                log.warning("kie task %s in unknown state %r", task_id, _scrub(state, ""))
            reporter.from_record(state, record.get("progress"), polls)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API request; returns ``data`` from a ``code == 200`` envelope or raises."""
        try:
            response = await self._client.request(
                method, self.base_url + path, headers=self._auth, **kwargs
            )
        except httpx.TimeoutException as exc:
            raise TransientProviderError(
                f"kie {path} timed out ({type(exc).__name__})", code="provider_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise TransientProviderError(
                f"kie unreachable at {self.base_url} ({type(exc).__name__})",
                code="provider_unavailable",
            ) from None

        body: Any = None
        try:
            body = response.json()
        except ValueError:
            body = None
        code: int | None = None
        msg = ""
        if isinstance(body, dict):
            raw_code = body.get("code")
            if isinstance(raw_code, int) or (isinstance(raw_code, str) and raw_code.isdigit()):
                code = int(raw_code)
            msg = str(body.get("msg") or body.get("message") or "")
        retry_after = _retry_after(response.headers.get("Retry-After"))

        if response.is_success:
            if code is None:
                raise TransientProviderError(
                    f"kie {path} answered HTTP {response.status_code} without a JSON envelope",
                    code="bad_response",
                )
            if code == 200:
                return body.get("data")
            # Errors delivered as HTTP 200: classify by the body code.
            raise _classify(code, msg, path, retry_after, self._api_key)
        raise _classify(response.status_code, msg, path, retry_after, self._api_key)

    async def _download(self, url: str) -> OutputImage:
        shown = _scrub(url, self._api_key)
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientProviderError(
                        f"kie result {shown} answered HTTP {response.status_code}",
                        code="provider_unavailable",
                    )
                if not response.is_success:
                    raise FatalProviderError(
                        f"kie result {shown} answered HTTP {response.status_code}",
                        code="bad_result",
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESULT_BYTES:
                        raise FatalProviderError(
                            f"kie result {shown} is larger than {MAX_RESULT_BYTES} bytes",
                            code="bad_result",
                        )
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise TransientProviderError(
                f"kie result {shown} timed out", code="provider_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise TransientProviderError(
                f"kie result {shown} unreachable ({type(exc).__name__})",
                code="provider_unavailable",
            ) from None
        data = b"".join(chunks)
        # The Content-Type header is not trusted: an error page can come as 200 "image/png".
        content_type = sniff_image_type(data)
        if content_type is None:
            raise FatalProviderError(
                f"kie result {shown} is not an image (starts {data[:16]!r})", code="bad_result"
            )
        width, height = await trio.to_thread.run_sync(_check_image, data, limiter=self.limiter)
        if width is None:
            raise FatalProviderError(f"kie result {shown} is a broken image", code="bad_result")
        return OutputImage(data=data, content_type=content_type, width=width, height=height)


# -- helpers ---------------------------------------------------------------------------------


class _ProgressReporter:
    """Keeps reported progress monotonic and below 1.0 until the results are in."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self.value = -1.0

    def report(self, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if fraction > self.value:
            self.value = fraction
            self._progress(fraction)

    def from_record(self, state: str, raw: Any, polls: int) -> None:
        reported = _parse_progress(raw)
        if reported is not None:
            # Leave room for the download; never report 100 % before the files are here.
            self.report(0.05 + 0.9 * reported)
        elif state == "generating":
            # No number from kie: creep towards 90 % so the screen shows life, never arriving.
            self.report(0.9 - 0.8 * math.exp(-polls / 10))
        elif state == "queuing":
            self.report(0.05)


def _parse_progress(raw: Any) -> float | None:
    """kie reports ``progress`` as 0-1 or 0-100, as a number or a string ("0.48")."""
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or value < 0:
        return None
    if value > 1.0:
        value /= 100.0
    return min(value, 1.0)


def _result_urls(record: Mapping[str, Any]) -> list[str]:
    """``resultJson`` is a JSON string; tolerate an already-decoded object and both spellings."""
    raw = record.get("resultJson")
    parsed: Any = raw
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise FatalProviderError(
                "kie resultJson is not valid JSON", code="bad_result"
            ) from None
    if not isinstance(parsed, dict):
        return []
    urls = parsed.get("resultUrls") or parsed.get("result_urls") or []
    if isinstance(urls, str):
        urls = [urls]
    return [u for u in urls if isinstance(u, str) and u.startswith(("http://", "https://"))]


def _task_failed(task_id: str, record: Mapping[str, Any], api_key: str) -> FatalProviderError:
    fail_code = str(record.get("failCode") or "").strip()
    fail_msg = _scrub(str(record.get("failMsg") or "no reason given"), api_key)
    code = "input_not_reachable" if fail_code == "451" else "task_failed"
    suffix = f" (failCode {_scrub(fail_code, api_key)})" if fail_code else ""
    return FatalProviderError(_short(f"kie task {task_id} failed: {fail_msg}{suffix}"), code=code)


def _classify(
    code: int, msg: str, path: str, retry_after: float | None, api_key: str
) -> TransientProviderError | FatalProviderError:
    detail = f"kie {path}: {code}" + (f" {_scrub(msg, api_key)}" if msg else "")
    detail = _short(detail)
    if code in (401, 403):
        return FatalProviderError(detail, code="auth_failed")
    if code == 402:
        return FatalProviderError(detail, code="insufficient_credits")
    if code == 429:
        return KieRateLimited(detail, retry_after=retry_after)
    if code == 451:
        return FatalProviderError(detail, code="input_not_reachable")
    if code == 501:  # documented as "generation failed"
        return FatalProviderError(detail, code="task_failed")
    if code == 455 or code >= 500:
        return TransientProviderError(detail, code="provider_unavailable")
    if code == 404 and path == RECORD_PATH:
        # The task vanished (a restarted queue, or not visible yet): a new attempt may work.
        return TransientProviderError(detail, code="task_lost")
    if 400 <= code < 500:
        return FatalProviderError(detail, code="invalid_request")
    return TransientProviderError(detail, code="bad_response")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        return min(max(0.0, seconds), 3600.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), 3600.0)


def sniff_image_type(data: bytes) -> str | None:
    """The image type from the first bytes (JPEG, PNG, WebP), or None."""
    for magic, content_type in _SNIFF:
        if data.startswith(magic):
            return content_type
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _check_image(data: bytes) -> tuple[int | None, int | None]:
    """Decode the whole image (in a thread): a truncated file fails here, not in a gallery."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.width, im.height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None, None


def _scrub(text: str, api_key: str) -> str:
    """Remove the key and URL query strings (signed URLs carry a signature) from ``text``."""
    if api_key:
        text = text.replace(api_key, "***")
    return _URL_QUERY.sub(r"\1?…", text)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
