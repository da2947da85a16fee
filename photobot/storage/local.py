"""Local-disk backend: objects are files under one root folder, served by the app via signed URLs.

- Layout: key ``a/b/c.jpg`` is the file ``{root}/a/b/c.jpg``. Keys pass :func:`validate_key`
  (no ``..``, no absolute paths), and the resolved path is checked to stay inside ``root`` even if
  someone placed a symlink in the tree. The top-level name ``.tmp`` is reserved (see below).
- Atomic writes: data goes to a temp file in ``{root}/.tmp`` (same filesystem), is fsynced, then
  ``os.replace``d over the final name and the directory is fsynced. A crash leaves at most an
  orphan in ``.tmp`` (swept by :meth:`LocalStorage.check` after an hour), never a half file under
  a key.
- A file system cannot hold both ``a`` and ``a/b``; such a put raises :class:`InvalidKey`.
  Empty directories are left behind by ``delete`` (cheap, and pruning would race with puts).
- Content types are not stored: the serving route derives them from the extension (every key the
  app builds has one), see :func:`guess_content_type`.
- Threads: every blocking call runs in ``trio.to_thread.run_sync`` behind this instance's
  ``limiter`` (a ``trio.CapacityLimiter`` named "local-disk"), owned by the instance.
- Nothing is retried: local I/O errors are not transient. They become ``StorageError``.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import shutil
import stat as stat_mod
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import quote, urlencode

import trio

from photobot.errors import InvalidInput, StorageError

from .base import (
    CHUNK_SIZE,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    validate_content_type,
    validate_key,
    validate_ttl,
)
from .signing import sign

T = TypeVar("T")

#: Reserved top-level folder for in-progress writes; never a valid key prefix here.
STAGING_DIR = ".tmp"
#: Orphaned temp files older than this are removed by ``check()``.
STALE_TEMP_SECONDS = 3600.0


def guess_content_type(key: str) -> str:
    """Content type for serving a local object, from its extension."""
    guessed, _ = mimetypes.guess_type(key, strict=False)
    if guessed is None and key.lower().endswith(".webp"):
        guessed = "image/webp"  # absent from some older mime tables
    return guessed or "application/octet-stream"


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; without it a power cut can lose the new directory entry.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileChunks:
    """Async iterator over an open file, one thread hop per chunk; at most ``remaining`` bytes
    (None: to the end)."""

    def __init__(
        self, f: BinaryIO, limiter: trio.CapacityLimiter, chunk_size: int,
        remaining: int | None = None,
    ) -> None:  # fmt: skip
        self._f = f
        self._limiter = limiter
        self._chunk_size = chunk_size
        self._remaining = remaining

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        want = self._chunk_size
        if self._remaining is not None:
            want = min(want, self._remaining)
            if want <= 0:
                raise StopAsyncIteration
        try:
            chunk = await trio.to_thread.run_sync(self._f.read, want, limiter=self._limiter)
        except OSError as exc:
            raise StorageError(f"local storage read failed: {exc.strerror}") from exc
        if not chunk:
            raise StopAsyncIteration
        if self._remaining is not None:
            self._remaining -= len(chunk)
        return chunk


class LocalStorage:
    """Files under ``root``; ``signed_url`` points at the app's own ``url_prefix`` route."""

    def __init__(
        self,
        root: Path,
        signing_key: bytes,
        url_prefix: str = "/files",
        *,
        max_threads: int = 8,
        fsync: bool = True,
    ) -> None:
        # abspath, not resolve(): no I/O in the constructor (it may run on the event loop).
        self.root = Path(os.path.abspath(root))
        self._signing_key = bytes(signing_key)
        sign("probe", 0, self._signing_key)  # fail fast on a short signing key
        self.url_prefix = url_prefix.rstrip("/")
        self.fsync = fsync  # tests may turn it off; production keeps it on
        self.limiter_name = "local-disk"
        self.limiter = trio.CapacityLimiter(max_threads)

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r})"

    async def __aenter__(self) -> LocalStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- helpers ---------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """The file for ``key`` (validated; no I/O). The serving route may use it for sendfile."""
        validate_key(key)
        parts = key.split("/")
        if parts[0] == STAGING_DIR:
            raise InvalidKey(f"keys under '{STAGING_DIR}/' are reserved by local storage")
        return self.root.joinpath(*parts)

    def _ensure_inside(self, path: Path) -> None:
        # Blocking (realpath touches the disk): only call from worker threads.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if not real.startswith(real_root + os.sep):
            raise InvalidKey("storage key resolves outside the storage root")

    async def _run(self, fn: Callable[[], T], what: str, key: str | None = None) -> T:
        try:
            return await trio.to_thread.run_sync(fn, limiter=self.limiter)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if key is None:
                raise StorageError(f"local storage {what} failed: {exc.strerror}") from exc
            raise ObjectNotFound(f"no object at key {key!r}") from None
        except OSError as exc:
            raise StorageError(f"local storage {what} failed: {exc.strerror}") from exc

    def _atomic_write(self, path: Path, write: Callable[[BinaryIO], None]) -> None:
        self._ensure_inside(path)  # before mkdir: never create directories through a symlink
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidKey("a parent of this key is already stored as an object") from None
        staging = self.root / STAGING_DIR
        staging.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=staging, prefix="put-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
            try:
                os.replace(tmp_name, path)
            except IsADirectoryError:
                raise InvalidKey("this key is a prefix of other stored objects") from None
            if self.fsync:
                _fsync_dir(path.parent)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    # -- Storage API -------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path_for(key)
        validate_content_type(content_type)
        view = memoryview(data)  # accept bytes-likes without copying
        await self._run(lambda: self._atomic_write(path, lambda f: f.write(view)), "put")

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        dest = self.path_for(key)
        validate_content_type(content_type)
        src = Path(path)

        def copy(f: BinaryIO) -> None:
            with open(src, "rb") as s:
                shutil.copyfileobj(s, f, CHUNK_SIZE)

        try:
            await trio.to_thread.run_sync(
                lambda: self._atomic_write(dest, copy), limiter=self.limiter
            )
        except FileNotFoundError:
            raise InvalidInput(f"put_file: no such source file {str(src)!r}") from None
        except OSError as exc:
            raise StorageError(f"local storage put_file failed: {exc.strerror}") from exc

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self.path_for(key)

        def read() -> bytes:
            self._ensure_inside(path)
            with open(path, "rb") as f:
                if max_bytes is not None:
                    data = f.read(max_bytes + 1)
                    if len(data) > max_bytes:
                        raise ObjectTooLarge(f"object is larger than {max_bytes} bytes")
                    return data
                return f.read()

        return await self._run(read, "get", key)

    @asynccontextmanager
    async def open_read(
        self, key: str, *, start: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Chunks of the object; ``start``/``length`` read a byte range (HTTP Range requests:
        a phone's video player asks for the part it needs)."""
        path = self.path_for(key)

        def open_file() -> BinaryIO:
            self._ensure_inside(path)
            f = open(path, "rb")  # closed in open_read's finally
            if start:
                f.seek(start)
            return f

        f = await self._run(open_file, "open_read", key)
        try:
            yield _FileChunks(f, self.limiter, CHUNK_SIZE, length)
        finally:
            f.close()  # closing a regular file does not block meaningfully

    async def get_to_file(self, key: str, path: Path) -> None:
        src = self.path_for(key)
        dest = Path(path)

        def copy() -> None:
            self._ensure_inside(src)
            with open(src, "rb") as s:  # open first: a missing key creates no temp file
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as d:
                        shutil.copyfileobj(s, d, CHUNK_SIZE)
                        d.flush()
                        if self.fsync:
                            os.fsync(d.fileno())
                    os.replace(tmp, dest)
                except BaseException:
                    with suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise

        await self._run(copy, "get_to_file", key)

    async def delete(self, key: str) -> None:
        path = self.path_for(key)

        def unlink() -> None:
            self._ensure_inside(path)
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            except IsADirectoryError:
                return  # a "directory" is not an object: nothing stored under this exact key
            if self.fsync:
                _fsync_dir(path.parent)

        await self._run(unlink, "delete")

    async def exists(self, key: str) -> bool:
        path = self.path_for(key)
        return await self._run(lambda: os.path.isfile(path), "exists")

    async def size(self, key: str) -> int:
        path = self.path_for(key)

        def file_size() -> int:
            st = os.stat(path)
            if not stat_mod.S_ISREG(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file")
            return st.st_size

        return await self._run(file_size, "size", key)

    async def signed_url(self, key: str, ttl: int, *, download_name: str | None = None) -> str:
        self.path_for(key)  # validates the key (and the reserved prefix)
        validate_ttl(ttl)
        # Wall clock, not trio.current_time(): exp is absolute and checked by verify_signed.
        expires_at = int(time.time()) + ttl
        params = sign(key, expires_at, self._signing_key, download_name)
        query = urlencode(params, quote_via=quote)
        return f"{self.url_prefix}/{quote(key, safe='/')}?{query}"

    async def signed_urls(self, keys: Sequence[str], ttl: int) -> dict[str, str]:
        """:meth:`signed_url` for many keys (no download names): one clock reading, each key
        validated once — a gallery page signs up to a few hundred."""
        validate_ttl(ttl)
        expires_at = int(time.time()) + ttl
        out = {}
        for key in keys:
            if key.split("/", 1)[0] == STAGING_DIR:
                raise InvalidKey(f"keys under '{STAGING_DIR}/' are reserved by local storage")
            params = sign(key, expires_at, self._signing_key)  # validates the key
            # exp is digits and sig base64url: URL-encoding would leave them as they are.
            out[key] = (
                f"{self.url_prefix}/{quote(key, safe='/')}?exp={params['exp']}&sig={params['sig']}"
            )
        return out

    async def check(self) -> None:
        """Root exists (created if missing), is writable, and stale temp files are swept."""

        def probe() -> None:
            staging = self.root / STAGING_DIR
            staging.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=staging, prefix="check-") as f:
                f.write(b"ok")
                f.flush()
            cutoff = time.time() - STALE_TEMP_SECONDS
            for entry in os.scandir(staging):
                with suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

        await self._run(probe, "check")

    async def aclose(self) -> None:
        """Nothing to release: files are opened and closed per call."""
