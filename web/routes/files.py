"""``GET /files/<key>``: objects of the local-disk storage, behind HMAC-signed expiring URLs.

Only used when storage is the local folder (with S3 the signed URLs point at the bucket). A
missing, altered or expired signature is a 403 that does not say whether the object exists.
A single byte range (``Range: bytes=…``) is answered 206 with ``Content-Range``, as video
players require; one outside the file is a 416.
"""

from __future__ import annotations

import mimetypes
import re
import time
from collections.abc import AsyncIterator

from quart import Blueprint, Response, request

from photobot.storage import LocalStorage, content_disposition, verify_signed
from web.deps import services
from web.errors import ApiError

bp = Blueprint("files", __name__)

_UNSATISFIABLE = object()
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


def byte_range(header: str | None, size: int) -> tuple[int, int] | object | None:
    """One ``Range: bytes=a-b`` (or ``a-``, ``-n``) → ``(start, length)``; None to send the whole
    file (no header, or one this does not serve: several ranges, other units); the sentinel
    ``_UNSATISFIABLE`` for a range outside the file. Video players (Safari on every iPhone)
    need this to play a clip at all."""
    if not header or size == 0:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        if last and int(last) < start:
            return None  # not a valid range: RFC 9110 says ignore it
        if start >= size:
            return _UNSATISFIABLE
        end = min(int(last), size - 1) if last else size - 1
    else:
        suffix = int(last)
        if suffix == 0:
            return _UNSATISFIABLE
        start, end = max(0, size - suffix), size - 1
    return start, end - start + 1


@bp.get("/files/<path:key>")
async def get_file(key: str) -> Response:
    s = services()
    if not isinstance(s.storage, LocalStorage):
        raise ApiError(404, "not_found", "no such file")
    grant = verify_signed(key, request.args, s.secrets.url_signing_key, time.time())
    size = await s.storage.size(grant.key)  # ObjectNotFound → 404 (the signature was genuine)
    span = byte_range(request.headers.get("Range"), size)
    if span is _UNSATISFIABLE:
        response = Response("", status=416)
        response.headers["Content-Range"] = f"bytes */{size}"
        return response
    start, length = span if isinstance(span, tuple) else (0, size)
    storage = s.storage

    async def body() -> AsyncIterator[bytes]:
        async with storage.open_read(grant.key, start=start, length=length) as chunks:
            async for chunk in chunks:
                yield chunk

    content_type = mimetypes.guess_type(grant.key)[0] or "application/octet-stream"
    response = Response(body(), status=206 if span else 200, content_type=content_type)
    response.headers["Content-Length"] = str(length)
    response.headers["Accept-Ranges"] = "bytes"
    if span:
        response.headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if grant.download_name:
        response.headers["Content-Disposition"] = content_disposition(grant.download_name)
    return response
