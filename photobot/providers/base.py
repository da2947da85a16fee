"""The provider interface: ``process(input) -> outputs + metadata``, one attempt per call.

Semantics every provider keeps:

- ``process`` makes exactly one attempt. It never retries on its own; it raises
  :class:`TransientProviderError` when the same call may succeed later (timeout, network error,
  HTTP 5xx, 429, a stalled or restarted remote queue) and :class:`FatalProviderError` when it
  will not (validation error, other 4xx, a workflow or task that failed on its input, an
  unusable result). Anything else escaping ``process`` is a bug and is treated as fatal.
- Error messages are short, for an operator's screen and the log: never a key, a token, a
  password or image bytes.
- Cancellation (Trio) is the only way to stop an attempt early: the job was canceled, the hard
  timeout hit, or the booth is shutting down. A provider that has remote work in flight tells
  the remote side on the way out (shielded, bounded), e.g. ComfyUI ``/interrupt``.
- ``progress(fraction)`` may be called with 0.0-1.0 for the AI stage while work runs; it is a
  plain function and must not block.
- Blocking work (Pillow) runs in threads behind a named limiter; nothing blocks the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from photobot.errors import PhotobotError

#: Reports AI-stage progress as a fraction 0.0-1.0.
Progress = Callable[[float], None]


class ProviderError(PhotobotError):
    """One attempt failed. ``transient`` says whether another attempt may succeed."""

    code = "provider_error"
    transient = False


class TransientProviderError(ProviderError):
    """Timeout, network failure, 5xx, 429, a stalled queue: retry with back-off."""

    code = "provider_unavailable"
    transient = True


class FatalProviderError(ProviderError):
    """Bad input, rejected request, failed execution: retrying the same call will not help."""

    code = "provider_rejected"
    transient = False


@dataclass(frozen=True)
class ProviderInput:
    job_id: str
    image: bytes
    content_type: str  # image/jpeg, image/png or image/webp (checked by content upstream)
    mode: str
    style: str | None
    seed: int | None
    #: A URL where the provider can fetch the input itself (kie needs one), or None.
    input_url: str | None = None
    #: The event's frame overlay (PNG with alpha) and branding text, for providers that apply it.
    frame_png: bytes | None = None
    branding: str | None = None


@dataclass(frozen=True)
class OutputImage:
    data: bytes
    content_type: str  # what the bytes are, checked by the provider
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ProviderOutput:
    images: list[OutputImage]
    #: Index into ``images`` of the one to show and download by default.
    best: int = 0
    provider_request_id: str | None = None
    seed: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    async def process(self, job: ProviderInput, progress: Progress) -> ProviderOutput: ...

    async def aclose(self) -> None: ...
