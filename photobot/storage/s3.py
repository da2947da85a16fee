"""S3-compatible backend (AWS S3, Cloudflare R2, MinIO, GCS via HMAC, SeaweedFS) on boto3.

Ownership and threads
    Each ``S3Storage`` owns one boto3 session and client, built once on first use (or by
    ``open()`` / ``async with``) in a worker thread, because building a client reads service JSON
    from disk. boto3 clients are thread-safe, so every call shares it. Every blocking boto3 call
    runs in ``trio.to_thread.run_sync`` behind this instance's ``limiter`` (a
    ``trio.CapacityLimiter`` named "s3"). ``put_file``/``get_to_file`` use s3transfer, which
    may add up to ``transfer_concurrency`` threads of its own inside one limiter slot.
    A cancelled call waits for its thread to finish (bounded by the connect/read timeouts).

Retries
    botocore's own retries are off (``max_attempts: 0``) so that waiting happens on Trio's clock
    (``trio.sleep``, cancellable) in one place: :meth:`S3Storage._call`. Retried: connection
    errors and timeouts, HTTP 5xx, 429, ``SlowDown`` and other throttling codes. Not retried:
    missing keys (``ObjectNotFound``), 403 / bad credentials (``StorageAccessDenied``), any other
    4xx (``StorageError``). Backoff is exponential with full jitter, ``max_attempts`` in total.
    Every operation here is idempotent (puts overwrite, deletes ignore missing keys), so retrying
    is safe. Reads of a stream already handed to the caller (``open_read``) are not retried.

Atomicity
    S3 makes each PUT (and each completed multipart upload) visible all at once.
    ``get_to_file`` downloads to a temp file beside the target and renames it into place.

Compatibility (see shared/notes/protocols.md §5)
    SigV4 always; ``request_checksum_calculation``/``response_checksum_validation`` are
    "when_required" because boto3 >= 1.36 otherwise sends ``x-amz-checksum-crc32`` headers that
    R2 and several MinIO-likes reject. ``ContentType`` is always sent (GCS). Presigned URLs sign
    the Host header, so they are made by a second client pointed at ``public_endpoint_url``
    when the browser reaches storage by another name than we do.

Error messages name the operation and the S3 error code, never the credentials.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Literal, TypeVar

import boto3
import trio
from boto3.exceptions import RetriesExceededError
from boto3.s3.transfer import TransferConfig
from botocore import exceptions as botoexc
from botocore.config import Config
from botocore.exceptions import ClientError

from photobot.errors import InvalidInput, StorageError

from .base import (
    CHUNK_SIZE,
    ObjectNotFound,
    ObjectTooLarge,
    StorageAccessDenied,
    validate_content_type,
    validate_key,
    validate_ttl,
)
from .signing import content_disposition

log = logging.getLogger(__name__)

T = TypeVar("T")
_Kind = Literal["not_found", "transient", "denied", "fatal"]

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",  # transient on a box whose clock is being corrected by NTP
        "InternalError",
        "ServiceUnavailable",
    }
)
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "403",
    }
)


def _error_chain(exc: BaseException) -> list[BaseException]:
    # boto3 wraps multipart failures (S3UploadFailedError raised inside `except ClientError`,
    # RetriesExceededError(last_exception)); look through the wrappers for the real cause.
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 8:
        seen.append(cur)
        if isinstance(cur, RetriesExceededError) and cur.last_exception is not None:
            cur = cur.last_exception
        else:
            cur = cur.__cause__ or cur.__context__
    return seen


def _client_error_info(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def classify(exc: BaseException) -> tuple[_Kind, str]:
    """(kind, short reason) for a boto3/botocore failure. Pure; exposed for tests and logs."""
    for e in _error_chain(exc):
        if isinstance(e, ClientError):
            code, status = _client_error_info(e)
            reason = code or f"HTTP {status}"
            if code == "NoSuchBucket":
                return "fatal", reason
            if code in _NOT_FOUND_CODES or (status == 404 and not code):
                return "not_found", reason
            if code in _TRANSIENT_CODES or status == 429 or status >= 500:
                return "transient", reason
            if code in _DENIED_CODES or status == 403:
                return "denied", reason
            return "fatal", reason
        if isinstance(e, botoexc.SSLError):
            return "fatal", "TLS error"  # a certificate problem does not fix itself
        if isinstance(
            e, botoexc.ConnectionError | botoexc.HTTPClientError | botoexc.IncompleteReadError
        ):
            return "transient", type(e).__name__
    return "fatal", type(exc).__name__


class _BodyChunks:
    """Async iterator over a botocore StreamingBody, one thread hop per chunk."""

    def __init__(self, body: Any, limiter: trio.CapacityLimiter, chunk_size: int) -> None:
        self._body = body
        self._limiter = limiter
        self._chunk_size = chunk_size

    def __aiter__(self) -> _BodyChunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await trio.to_thread.run_sync(
                self._body.read, self._chunk_size, limiter=self._limiter
            )
        except Exception as exc:
            # Mid-stream failures are not retried: the caller already consumed earlier chunks.
            raise StorageError(f"S3 read stream failed: {classify(exc)[1]}") from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class S3Storage:
    """One bucket on an S3-compatible service."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str,
        secret_access_key: str,
        force_path_style: bool = False,
        public_endpoint_url: str | None = None,
        create_bucket: bool = False,
        max_attempts: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_threads: int = 8,
        multipart_threshold: int = 8 * 1024 * 1024,
        multipart_chunksize: int = 8 * 1024 * 1024,
        transfer_concurrency: int = 4,
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url
        self.region = region
        self.force_path_style = force_path_style
        self.create_bucket = create_bucket
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._config = Config(
            signature_version="s3v4",
            region_name=region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Our own loop retries (on trio's clock); botocore makes exactly one attempt.
            retries={"max_attempts": 0, "mode": "standard"},
            s3={"addressing_style": "path" if force_path_style else "auto"},
            # boto3 >= 1.36 adds CRC32 checksum headers by default; R2/MinIO-likes reject them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, max_threads * transfer_concurrency),
        )
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=transfer_concurrency,
            use_threads=transfer_concurrency > 1,
            num_download_attempts=2,  # s3transfer's inner retry; the outer loop is ours
        )
        self.limiter_name = "s3"
        self.limiter = trio.CapacityLimiter(max_threads)
        self._rng = random.Random()
        self._client: Any = None
        self._presign_client: Any = None
        self._open_lock = trio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    async def __aenter__(self) -> S3Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- lifecycle ---------------------------------------------------------------------------

    def _make_client(self, endpoint_url: str | None) -> Any:
        # A private Session: the default session is not thread-safe, and explicit credentials
        # keep ~/.aws or AWS_* environment variables from silently changing who we are.
        session = boto3.session.Session(
            aws_access_key_id=self._access_key_id,
            aws_secret_access_key=self._secret_access_key,
            region_name=self.region,
        )
        return session.client("s3", endpoint_url=endpoint_url, config=self._config)

    async def open(self) -> None:
        """Build the clients (once) and create the bucket if asked. Safe to call repeatedly."""
        if self._closed:
            raise StorageError("S3 storage is closed")
        if self._client is not None:
            return
        async with self._open_lock:
            if self._client is not None:
                return

            def build() -> tuple[Any, Any]:
                client = self._make_client(self.endpoint_url)
                presign = client
                if self.public_endpoint_url and self.public_endpoint_url != self.endpoint_url:
                    presign = self._make_client(self.public_endpoint_url)
                return client, presign

            try:
                client, presign = await trio.to_thread.run_sync(build, limiter=self.limiter)
            except Exception as exc:  # bad endpoint URL, unknown AWS_PROFILE, ...
                raise StorageError(f"S3 client setup failed: {type(exc).__name__}") from exc
            if self.create_bucket:
                await self._ensure_bucket(client)
            self._client, self._presign_client = client, presign

    async def _ensure_bucket(self, client: Any) -> None:
        def ensure() -> None:
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                code, status = _client_error_info(exc)
                if status != 404 and code not in ("NoSuchBucket", "404", "NotFound"):
                    raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region not in ("us-east-1", "auto"):
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                client.create_bucket(**kwargs)
            except ClientError as exc:
                if _client_error_info(exc)[0] not in ("BucketAlreadyOwnedByYou",):
                    raise

        await self._retrying("create_bucket", ensure)

    async def aclose(self) -> None:
        """Close the HTTP connection pools. The instance cannot be used afterwards."""
        self._closed = True
        clients = {id(c): c for c in (self._client, self._presign_client) if c is not None}
        self._client = self._presign_client = None
        for client in clients.values():
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(client.close, limiter=self.limiter)

    # -- retry core --------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): uniform in [0, min(cap, base * 2^n)].
        return self._rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))

    async def _retrying(self, op: str, fn: Callable[[], T], key: str | None = None) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await trio.to_thread.run_sync(fn, limiter=self.limiter)
            except (StorageError, InvalidInput):
                raise  # our own domain errors raised inside fn
            except Exception as exc:
                kind, reason = classify(exc)
                if kind == "not_found":
                    if key is not None:
                        raise ObjectNotFound(f"no object at key {key!r}") from None
                    # Only bucket-level calls get here (head_bucket has no error body).
                    raise StorageError(f"S3 {op} failed: bucket {self.bucket!r} not found") from exc
                if kind == "transient" and attempt < self.max_attempts:
                    delay = self._backoff(attempt)
                    log.warning(
                        "S3 %s failed (%s), attempt %d/%d, retrying in %.2fs",
                        op,
                        reason,
                        attempt,
                        self.max_attempts,
                        delay,
                    )
                    await trio.sleep(delay)
                    continue
                if kind == "denied":
                    raise StorageAccessDenied(
                        f"S3 {op} refused: {reason} (check access key, secret, bucket permissions)"
                    ) from exc
                if kind == "transient":
                    raise StorageError(
                        f"S3 {op} failed after {attempt} attempts: {reason}"
                    ) from exc
                raise StorageError(f"S3 {op} failed: {reason}") from exc

    async def _call(self, op: str, fn: Callable[[Any], T], key: str | None = None) -> T:
        await self.open()
        client = self._client
        return await self._retrying(op, lambda: fn(client), key)

    # -- Storage API -------------------------------------------------------------------------

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)
        validate_content_type(content_type)
        body = bytes(data)
        await self._call(
            "put",
            lambda c: c.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type
            ),
        )

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        validate_key(key)
        validate_content_type(content_type)
        src = Path(path)

        def upload(c: Any) -> None:
            if not src.is_file():
                raise InvalidInput(f"put_file: no such source file {str(src)!r}")
            c.upload_file(
                str(src),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )

        await self._call("put_file", upload)

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        validate_key(key)

        def fetch(c: Any) -> bytes:
            resp = c.get_object(Bucket=self.bucket, Key=key)
            body = resp["Body"]
            try:
                if max_bytes is not None:
                    if int(resp.get("ContentLength", 0)) > max_bytes:
                        raise ObjectTooLarge(f"object is larger than {max_bytes} bytes")
                    data: bytes = body.read(max_bytes + 1)
                    if len(data) > max_bytes:
                        raise ObjectTooLarge(f"object is larger than {max_bytes} bytes")
                    return data
                return body.read()
            finally:
                body.close()

        return await self._call("get", fetch, key)

    @asynccontextmanager
    async def open_read(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        validate_key(key)
        resp = await self._call(
            "open_read", lambda c: c.get_object(Bucket=self.bucket, Key=key), key
        )
        body = resp["Body"]
        try:
            yield _BodyChunks(body, self.limiter, CHUNK_SIZE)
        finally:
            # Closing an unfinished body drops the connection instead of draining it.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(body.close, limiter=self.limiter)

    async def get_to_file(self, key: str, path: Path) -> None:
        validate_key(key)
        dest = Path(path)

        def download(c: Any) -> None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.close(fd)
            try:
                c.download_file(self.bucket, key, tmp, Config=self._transfer)
                os.replace(tmp, dest)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

        await self._call("get_to_file", download, key)

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._call("delete", lambda c: c.delete_object(Bucket=self.bucket, Key=key))

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
        except ObjectNotFound:
            return False
        return True

    async def size(self, key: str) -> int:
        validate_key(key)
        resp = await self._call("head", lambda c: c.head_object(Bucket=self.bucket, Key=key), key)
        return int(resp["ContentLength"])

    async def signed_url(self, key: str, ttl: int, *, download_name: str | None = None) -> str:
        validate_key(key)
        validate_ttl(ttl)
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if download_name is not None:
            params["ResponseContentDisposition"] = content_disposition(download_name)
        await self.open()
        presign = self._presign_client
        # Presigning is local computation (no request), but it is still a boto3 call: keep it off
        # the event loop like the rest, so a slow first-use credential/endpoint lookup cannot stall.
        url: str = await trio.to_thread.run_sync(
            lambda: presign.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl),
            limiter=self.limiter,
        )
        return url

    async def signed_urls(self, keys: Sequence[str], ttl: int) -> dict[str, str]:
        """:meth:`signed_url` for many keys (no download names) in one thread hop: the presign
        client is thread-safe and presigning makes no request."""
        validate_ttl(ttl)
        for key in keys:
            validate_key(key)
        await self.open()
        presign = self._presign_client
        bucket = self.bucket

        def sign_all() -> dict[str, str]:
            return {
                key: presign.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl
                )
                for key in keys
            }

        return await trio.to_thread.run_sync(sign_all, limiter=self.limiter)

    async def check(self) -> None:
        """HEAD the bucket: proves the endpoint answers, the credentials work, the bucket exists."""
        await self._call("check", lambda c: c.head_bucket(Bucket=self.bucket))
