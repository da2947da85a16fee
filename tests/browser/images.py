"""Test photos: small, real JPEGs that differ from each other (content-addressed uploads)."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw


def jpeg(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A gradient with a few coloured shapes; ``seed`` makes each photo distinct."""
    rng = random.Random(seed)
    width, height = size
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(20, max(21, width // 4))
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()
