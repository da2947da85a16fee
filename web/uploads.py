"""A photo upload streamed to a spool file as it arrives: it never sits whole in memory.

:func:`receive_upload` reads a ``multipart/form-data`` request body chunk by chunk through
Werkzeug's sans-IO ``MultipartDecoder`` (the parser Quart's own ``request.files`` uses). Text
fields stay in memory, each bounded; the one file part is written to a fresh file in the spool
folder and hashed (SHA-256) on the way. The writing and hashing run in a worker thread, in
batches of :data:`WRITE_BATCH`, so the event loop only splits the stream; ``hashlib`` releases
the GIL on large buffers, so the hash costs the loop nothing.

Who owns the spool file: the ``async with`` block. It is removed when the block ends, whatever
happened (the caller copies it into storage inside the block). A cancelled or failed request
therefore never leaves a file behind; a crash can, and :func:`photobot.root.open_services`
removes those at start-up.

Errors, all before anything is stored: a body that is not multipart, a malformed one, a second
file part, more than :data:`MAX_PARTS` parts or a field over :data:`MAX_FIELD_BYTES` is
:class:`~photobot.errors.InvalidInput`; a file part over ``max_file_bytes`` is
:class:`~photobot.errors.PayloadTooLarge` as soon as it crosses the limit (the rest is not read).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import trio
from quart import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from photobot.errors import InvalidInput, PayloadTooLarge
from web.errors import ApiError

#: Bytes gathered before one thread hop writes and hashes them.
WRITE_BATCH = 256 * 1024
#: A photo form has a handful of fields; a body with hundreds of parts is not one.
MAX_PARTS = 32
MAX_FIELD_BYTES = 4096
#: Spool writes at once, process-wide ("upload-spool"): many phones uploading must not take
#: every worker thread.
_spool_limiter = trio.CapacityLimiter(4)


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    sha256: str
    filename: str
    field: str
    #: Larger than ``max_file_bytes`` (only with ``oversized="mark"``): nothing of it was kept.
    oversized: bool = False


@dataclass(frozen=True)
class Upload:
    fields: dict[str, str]
    files: list[SpooledFile]

    @property
    def file(self) -> SpooledFile | None:
        """The first file part, for a form that carries one."""
        return self.files[0] if self.files else None


class _Sink:
    """The spool file and its running hash; every method runs in a worker thread."""

    def __init__(self, spool_dir: Path) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=spool_dir, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.file.write(chunk)

    def close(self) -> None:
        self.file.close()


def _boundary(request: Request) -> bytes:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary", "")
    if mimetype != "multipart/form-data" or not boundary:
        # Most often a form posted without its file: say what is missing.
        raise InvalidInput(
            "attach the photo as a multipart/form-data file field", code="missing_field"
        )
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidInput("the multipart boundary is not ASCII", code="bad_multipart") from None


@asynccontextmanager
async def receive_upload(
    request: Request,
    spool_dir: Path,
    *,
    max_file_bytes: int,
    timeout: float,
    max_files: int = 1,
    oversized: Literal["refuse", "mark"] = "refuse",
) -> AsyncIterator[Upload]:
    """Stream ``request``'s multipart body: fields in memory, each file part spooled (see the
    module docstring for who owns the files and what is refused). A file over
    ``max_file_bytes`` ends the request with a 413 (``"refuse"``), or is skipped and returned
    marked ``oversized`` (``"mark"``: one bad file among many must not sink the others). A body
    still arriving after ``timeout`` seconds is a 408."""
    receiver = _Receiver(_boundary(request), spool_dir, max_file_bytes, max_files, oversized)
    try:
        with trio.move_on_after(timeout) as deadline:
            async for chunk in request.body:
                await receiver.feed(chunk)
            await receiver.feed(None)
        if deadline.cancelled_caught:
            raise ApiError(408, "upload_timeout", f"the upload took longer than {timeout:g} s")
        yield receiver.result()
    finally:
        if receiver.sinks:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_discard, receiver.sinks, limiter=_spool_limiter)


class _Receiver:
    """Feeds the decoder and acts on its events; ``feed(None)`` marks the end of the body."""

    def __init__(
        self, boundary: bytes, spool_dir: Path, max_file_bytes: int, max_files: int,
        oversized: str,
    ) -> None:  # fmt: skip
        self.decoder = MultipartDecoder(boundary, max_parts=max(MAX_PARTS, max_files + 16))
        self.spool_dir = spool_dir
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.refuse_oversized = oversized == "refuse"
        self.fields: dict[str, str] = {}
        self.sinks: list[_Sink] = []  # every file opened, so every one is removed at the end
        self.files: list[SpooledFile] = []
        self.part: Field | File | None = None
        self.field_buf = bytearray()
        self.pending = bytearray()
        self.size = 0
        self.ended = False

    async def feed(self, chunk: bytes | None) -> None:
        try:
            self.decoder.receive_data(chunk)
            event = self.decoder.next_event()
            while not isinstance(event, NeedData):
                if isinstance(event, Epilogue):
                    self.ended = True
                    return
                await self._on(event)
                event = self.decoder.next_event()
        except RequestEntityTooLarge:  # the decoder's part count
            raise InvalidInput("this form has too many parts", code="bad_multipart") from None
        except ValueError as exc:
            raise InvalidInput(f"malformed multipart body: {exc}", code="bad_multipart") from None

    @property
    def sink(self) -> _Sink:
        return self.sinks[-1]

    async def _on(self, event: object) -> None:
        if isinstance(event, File):
            if len(self.sinks) >= self.max_files:
                what = "one photo" if self.max_files == 1 else f"at most {self.max_files} photos"
                raise InvalidInput(f"send {what} per request", code="too_many_files")
            self.part, self.size = event, 0
            self.sinks.append(await trio.to_thread.run_sync(_Sink, self.spool_dir))
        elif isinstance(event, Field):
            self.part, self.field_buf = event, bytearray()
        elif isinstance(event, Data) and isinstance(self.part, File):
            self.size += len(event.data)
            too_big = self.size > self.max_file_bytes
            if too_big and self.refuse_oversized:
                raise PayloadTooLarge(f"the photo is larger than {self.max_file_bytes // 2**20} MB")
            if not too_big:
                self.pending += event.data
            else:
                self.pending.clear()  # counted, not kept
            if len(self.pending) >= WRITE_BATCH or not event.more_data:
                await self._flush(last=not event.more_data, oversized=too_big)
        elif isinstance(event, Data) and isinstance(self.part, Field):
            self.field_buf += event.data
            if len(self.field_buf) > MAX_FIELD_BYTES:
                raise InvalidInput(
                    f"the field {self.part.name[:40]!r} is too long", code="invalid_field"
                )
            if not event.more_data:
                self.fields.setdefault(self.part.name, self.field_buf.decode("utf-8", "replace"))

    async def _flush(self, *, last: bool, oversized: bool) -> None:
        sink, batch = self.sink, bytes(self.pending)
        assert isinstance(self.part, File)
        self.pending.clear()

        def write() -> None:
            if batch:
                sink.write(batch)
            if last:
                sink.close()

        await trio.to_thread.run_sync(write, limiter=_spool_limiter)
        if last:
            self.files.append(
                SpooledFile(
                    sink.path, self.size, sink.hash.hexdigest(), self.part.filename or "",
                    self.part.name, oversized,
                )
            )  # fmt: skip

    def result(self) -> Upload:
        if not self.ended:
            raise InvalidInput("the multipart body ended early", code="bad_multipart")
        return Upload(self.fields, self.files)


def _discard(sinks: list[_Sink]) -> None:
    for sink in sinks:
        sink.close()
        with suppress(FileNotFoundError):
            sink.path.unlink()


__all__ = ["SpooledFile", "Upload", "receive_upload"]
