"""Object storage: one ``Storage`` interface, a local-disk backend and an S3 backend.

Pick a backend at start-up (``LocalStorage`` for the embedded default, ``S3Storage`` when
``S3_*`` is configured) and pass it around typed as :class:`Storage`. Build keys with
:mod:`photobot.storage.keys`; the web layer verifies local signed URLs with
:func:`photobot.storage.signing.verify_signed`. Semantics shared by both backends are in
:mod:`photobot.storage.base`.
"""

from __future__ import annotations

from .base import (
    CHUNK_SIZE,
    MAX_URL_TTL,
    InvalidKey,
    ObjectNotFound,
    ObjectTooLarge,
    SignatureError,
    SignatureExpired,
    SignatureInvalid,
    Storage,
    StorageAccessDenied,
    validate_key,
)
from .keys import job_input_key, job_output_key, optimized_key, raw_key
from .local import LocalStorage
from .s3 import S3Storage
from .signing import SignedGrant, content_disposition, sign, verify_signed

__all__ = [
    "CHUNK_SIZE",
    "MAX_URL_TTL",
    "InvalidKey",
    "LocalStorage",
    "ObjectNotFound",
    "ObjectTooLarge",
    "S3Storage",
    "SignatureError",
    "SignatureExpired",
    "SignatureInvalid",
    "SignedGrant",
    "Storage",
    "StorageAccessDenied",
    "content_disposition",
    "job_input_key",
    "job_output_key",
    "optimized_key",
    "raw_key",
    "sign",
    "validate_key",
    "verify_signed",
]
