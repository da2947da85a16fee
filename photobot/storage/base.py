"""The storage interface shared by every backend: the ``Storage`` protocol, its errors, key rules.

Semantics every backend keeps (the tests run the same functions against each):

- Keys are ``/``-separated relative paths (``events/12/2025-01-31/abc/input.jpg``) checked by
  :func:`validate_key` before any I/O, so a key that is fine on one backend is fine on all of them.
- ``put``/``put_file``/``get_to_file`` are all-or-nothing: a reader sees the old object, the new
  one, or none, never a partial file under the final name.
- ``get``/``size``/``open_read`` raise :class:`ObjectNotFound` for a missing key; ``delete`` of a
  missing key succeeds (idempotent, so retries and double deletes are harmless).
- Backend and driver failures surface as :class:`~photobot.errors.StorageError` (or its subclass
  :class:`StorageAccessDenied`); callers never import boto3 or catch ``OSError``.
- Nothing blocks the Trio event loop: each backend runs blocking calls in worker threads behind
  its own ``trio.CapacityLimiter`` (attribute ``limiter``), so storage traffic cannot starve the
  other users of ``trio.to_thread``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from photobot.errors import InvalidInput, NotFound, PhotobotError, StorageError

#: Size of the chunks ``open_read`` yields; big enough to amortise a thread hop per chunk.
CHUNK_SIZE = 1024 * 1024

#: S3's own limit on key length, applied to every backend so keys stay portable.
MAX_KEY_BYTES = 1024
#: Most filesystems limit one path component to 255 bytes; applied everywhere for portability.
MAX_SEGMENT_BYTES = 255
#: SigV4 presigned URLs cannot live longer than 7 days; the local backend uses the same bound.
MAX_URL_TTL = 7 * 24 * 3600


class ObjectNotFound(NotFound):
    """No object is stored under this key."""

    code = "object_not_found"


class InvalidKey(InvalidInput):
    """The storage key is not a safe relative path."""

    code = "invalid_key"


class ObjectTooLarge(InvalidInput):
    """The object is larger than the caller allowed (``get(..., max_bytes=...)``)."""

    code = "object_too_large"


class StorageAccessDenied(StorageError):
    """Object storage refused our credentials or permissions (a configuration problem)."""

    code = "storage_access_denied"


class SignatureError(PhotobotError):
    """A signed URL did not verify. Base of the two cases below; the web maps it to 403."""

    code = "signature_invalid"


class SignatureInvalid(SignatureError):
    """The signed URL was altered, is incomplete, or was signed with another key."""

    code = "signature_invalid"


class SignatureExpired(SignatureError):
    """The signed URL was genuine but its expiry time has passed."""

    code = "signature_expired"


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a safe, portable storage key; raise :class:`InvalidKey`.

    Rejected: non-strings, empty keys, absolute paths, empty / ``.`` / ``..`` segments (so
    ``a//b`` and a trailing ``/`` too), backslashes (a path separator on Windows and in some
    proxies), NUL and every other control character (C0, DEL, C1), lone surrogates, and keys or
    segments longer than S3 / filesystems allow.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"storage key must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidKey("storage key is empty")
    if key.startswith("/"):
        raise InvalidKey("storage key must be relative (it starts with '/')")
    if "\\" in key:
        raise InvalidKey("storage key must not contain a backslash")
    # Category Cc is exactly C0 + DEL + C1; NUL is one of them.
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise InvalidKey("storage key must not contain control characters")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("storage key is not valid Unicode (lone surrogate)") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"storage key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey("storage key must not contain empty, '.' or '..' segments")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"a storage key segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return key


def validate_content_type(content_type: str) -> str:
    """Every put names a content type (GCS rejects signed puts without one); no control chars."""
    if not isinstance(content_type, str) or not content_type.strip():
        raise InvalidInput("content_type is required")
    if any(unicodedata.category(ch) == "Cc" for ch in content_type) or not content_type.isascii():
        raise InvalidInput("content_type must be printable ASCII")
    return content_type


def validate_ttl(ttl: int) -> int:
    """Signed URL lifetimes are whole seconds in ``1 .. MAX_URL_TTL``."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_URL_TTL:
        raise InvalidInput(f"ttl must be an integer number of seconds in 1..{MAX_URL_TTL}")
    return ttl


@runtime_checkable
class Storage(Protocol):
    """What the rest of Photobot uses. Implemented by ``LocalStorage`` and ``S3Storage``."""

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``, replacing any previous object atomically."""
        ...

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at ``path`` without loading it into memory (multipart on S3)."""
        ...

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Whole object. ``max_bytes`` guards memory: larger objects raise ``ObjectTooLarge``."""
        ...

    def open_read(self, key: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with s.open_read(k) as chunks: async for c in chunks`` (~CHUNK_SIZE each)."""
        ...

    async def get_to_file(self, key: str, path: Path) -> None:
        """Download to ``path`` atomically (temp file beside it, then rename)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int: ...

    async def signed_url(self, key: str, ttl: int, *, download_name: str | None = None) -> str:
        """A URL that lets anyone holding it GET the object for ``ttl`` seconds."""
        ...

    async def signed_urls(self, keys: Sequence[str], ttl: int) -> dict[str, str]:
        """:meth:`signed_url` for many keys at once (no download names), cheaper per key."""
        ...

    async def check(self) -> None:
        """Health probe: return if usable, raise ``StorageError`` otherwise."""
        ...

    async def aclose(self) -> None: ...
