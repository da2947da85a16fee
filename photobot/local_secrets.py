"""Secrets a booth needs even when nobody configured them.

With ``JWT_SECRET`` unset, operator tokens are signed with a random key; with local storage,
signed file URLs need an HMAC key; with ``CAMERA_ENCRYPTION_KEY`` unset, camera passwords are
encrypted with a Fernet key of the box's own. All are generated on first start and kept in
``<data dir>/secrets.json`` (mode 0600) so tokens and links stay valid across restarts.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalSecrets:
    jwt_secret: bytes
    url_signing_key: bytes
    camera_key: bytes  # a Fernet key (url-safe base64 of 32 bytes)


def load_or_create(data_dir: Path) -> LocalSecrets:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for name in ("jwt_secret", "url_signing_key"):
        if name not in stored:
            stored[name] = secrets.token_hex(32)
            changed = True
    if "camera_key" not in stored:  # added later: a secrets file from before gains it
        stored["camera_key"] = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        changed = True
    if changed:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(stored, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return LocalSecrets(
        jwt_secret=bytes.fromhex(stored["jwt_secret"]),
        url_signing_key=bytes.fromhex(stored["url_signing_key"]),
        camera_key=stored["camera_key"].encode(),
    )
