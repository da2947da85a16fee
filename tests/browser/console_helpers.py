"""Helpers for the console's browser tests: test photos and a logged-in console context."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib

from PIL import Image
from playwright.sync_api import BrowserContext

TOKEN_KEY = "photobot.console.token"
EVENT_KEY = "photobot.console.event"


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A JPEG: a colour gradient with random noise, so every seed gives a distinct photo."""
    rng = random.Random(seed)
    width, height = size
    base = Image.linear_gradient("L").resize(size)
    tint = tuple(rng.randrange(60, 256) for _ in range(3))
    image = Image.merge("RGB", [base.point(lambda v, t=t: v * t // 255) for t in tint])
    noise = Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    image = Image.blend(image, noise, 0.25)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def frame_png(size: tuple[int, int] = (400, 300)) -> bytes:
    """A transparent PNG with an opaque border: a frame."""
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    w, h = size
    for box in ((0, 0, w, 12), (0, h - 12, w, h), (0, 0, 12, h), (w - 12, 0, w, h)):
        image.paste((194, 65, 12, 255), box)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def not_an_image() -> bytes:
    """Bytes named like a photo that no decoder accepts (a PNG signature, then garbage)."""
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + zlib.compress(b"nothing")


def logged_in(context: BrowserContext, token: str, event: str = "demo") -> BrowserContext:
    """Every page of the context starts remembered-logged-in with ``event`` selected (logins
    through the form are rate limited, so only the login test uses it)."""
    stored = json.dumps({"token": token, "expiresAt": None})
    context.add_init_script(
        f"localStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(stored)});"
        f"localStorage.setItem({json.dumps(EVENT_KEY)}, {json.dumps(event)});"
    )
    return context
