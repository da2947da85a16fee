"""HMAC-signed download URLs for the local-disk backend, as pure functions.

No I/O and no clock: the caller passes ``now`` (wall-clock Unix seconds, ``time.time()``, because
``exp`` is an absolute time that must mean the same thing after a restart). The web layer serves
``GET {url_prefix}/<key>?exp=..&sig=..[&dl=..]`` by calling :func:`verify_signed` with the
URL-decoded key and the query parameters, and maps :class:`SignatureError` (both subclasses) to 403.

What the signature covers: a version tag, the key, ``exp`` and the download name (or its absence).
They are serialised as a JSON array, so no choice of key or name can make two different grants
produce the same message. The MAC is HMAC-SHA256, sent as unpadded base64url (43 characters), and
compared in constant time. The signature is checked before the expiry, so a tampered ``exp``
reports "invalid", never "expired".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from photobot.errors import InvalidInput

from .base import InvalidKey, SignatureExpired, SignatureInvalid, validate_key

_VERSION = "photobot-files-v1"
# Unix seconds: digits only, bounded so int() stays cheap on hostile input.
_EXP_RE = re.compile(r"[0-9]{1,12}")
#: Shorter signing keys are refused: a guessable key makes every URL forgeable.
MIN_SIGNING_KEY_BYTES = 16
MAX_DOWNLOAD_NAME_CHARS = 255


@dataclass(frozen=True, slots=True)
class SignedGrant:
    """What a verified URL allows: GET ``key`` until ``expires_at``, optionally as a download."""

    key: str
    expires_at: int
    download_name: str | None = None

    @property
    def content_disposition(self) -> str | None:
        """The ``Content-Disposition`` header to send, or None to let the browser display it."""
        if self.download_name is None:
            return None
        return content_disposition(self.download_name)


def validate_download_name(name: str) -> str:
    """A file name for ``Content-Disposition``: non-empty, no path separators or control chars."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("download_name must be a non-empty string")
    if len(name) > MAX_DOWNLOAD_NAME_CHARS:
        raise InvalidInput(f"download_name is longer than {MAX_DOWNLOAD_NAME_CHARS} characters")
    if "/" in name or "\\" in name or any(unicodedata.category(c) == "Cc" for c in name):
        raise InvalidInput("download_name must not contain '/', '\\' or control characters")
    return name


def content_disposition(download_name: str) -> str:
    """RFC 6266 ``attachment`` header: an ASCII fallback plus the exact UTF-8 name."""
    validate_download_name(download_name)
    fallback = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_" for ch in download_name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(download_name, safe='')}"


def _check_signing_key(signing_key: bytes) -> None:
    if not isinstance(signing_key, bytes | bytearray) or len(signing_key) < MIN_SIGNING_KEY_BYTES:
        raise ValueError(f"signing_key must be at least {MIN_SIGNING_KEY_BYTES} bytes")


def _mac(key: str, expires_at: int, signing_key: bytes, download_name: str | None) -> str:
    message = json.dumps(
        [_VERSION, key, expires_at, download_name], ensure_ascii=True, separators=(",", ":")
    ).encode("ascii")
    digest = hmac.new(signing_key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign(
    key: str, expires_at: int, signing_key: bytes, download_name: str | None = None
) -> dict[str, str]:
    """Query parameters granting GET of ``key`` until ``expires_at`` (Unix seconds).

    Returns ``{"exp": ..., ["dl": ...,] "sig": ...}``; the caller URL-encodes them.
    """
    validate_key(key)
    _check_signing_key(signing_key)
    if isinstance(expires_at, bool) or not isinstance(expires_at, int) or expires_at < 0:
        raise InvalidInput("expires_at must be a non-negative integer (Unix seconds)")
    if download_name is not None:
        validate_download_name(download_name)
    params = {"exp": str(expires_at)}
    if download_name is not None:
        params["dl"] = download_name
    params["sig"] = _mac(key, expires_at, signing_key, download_name)
    return params


def verify_signed(
    key: str, params: Mapping[str, str], signing_key: bytes, now: float
) -> SignedGrant:
    """Check the query parameters of a signed URL for ``key`` at time ``now``.

    Raises :class:`SignatureInvalid` (missing/malformed parameter, wrong key, anything altered)
    or :class:`SignatureExpired` (genuine but ``now >= exp``). ``params`` may be any mapping,
    e.g. a Werkzeug ``MultiDict`` (its ``get`` returns the first value).
    """
    _check_signing_key(signing_key)
    exp_raw = params.get("exp")
    sig = params.get("sig")
    download_name = params.get("dl")
    if not isinstance(exp_raw, str) or not isinstance(sig, str):
        raise SignatureInvalid("signed URL is missing 'exp' or 'sig'")
    if not _EXP_RE.fullmatch(exp_raw):
        raise SignatureInvalid("signed URL has a malformed 'exp'")
    try:
        validate_key(key)
    except InvalidKey:
        raise SignatureInvalid("signed URL names an invalid key") from None
    expires_at = int(exp_raw)
    expected = _mac(key, expires_at, signing_key, download_name)
    # Compare bytes: compare_digest refuses non-ASCII str, and a query can carry anything.
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("utf-8", "surrogatepass")):
        raise SignatureInvalid("signed URL signature does not match")
    if now >= expires_at:
        raise SignatureExpired("signed URL has expired")
    return SignedGrant(key=key, expires_at=expires_at, download_name=download_name)
