"""``GET /files/<key>``: objects of the local-disk storage, behind HMAC-signed expiring URLs.

Only used when storage is the local folder (with S3 the signed URLs point at the bucket). A
missing, altered or expired signature is a 403 that does not say whether the object exists.
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import AsyncIterator

from quart import Blueprint, Response, request

from photobot.storage import LocalStorage, content_disposition, verify_signed
from web.deps import services
from web.errors import ApiError

bp = Blueprint("files", __name__)


@bp.get("/files/<path:key>")
async def get_file(key: str) -> Response:
    s = services()
    if not isinstance(s.storage, LocalStorage):
        raise ApiError(404, "not_found", "no such file")
    grant = verify_signed(key, request.args, s.secrets.url_signing_key, time.time())
    size = await s.storage.size(grant.key)  # ObjectNotFound → 404 (the signature was genuine)

    async def body() -> AsyncIterator[bytes]:
        async with s.storage.open_read(grant.key) as chunks:
            async for chunk in chunks:
                yield chunk

    content_type = mimetypes.guess_type(grant.key)[0] or "application/octet-stream"
    response = Response(body(), status=200, content_type=content_type)
    response.headers["Content-Length"] = str(size)
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if grant.download_name:
        response.headers["Content-Disposition"] = content_disposition(grant.download_name)
    return response
