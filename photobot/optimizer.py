"""Derivatives of a photo for guests: an optimized WebP for viewing and three WebP thumbnails.

Pure and I/O-free, like :mod:`photobot.imaging` (whose decoding, orientation, colour and error
rules it reuses): :func:`make_derivatives` takes the original's bytes and returns encoded WebPs.
It is **blocking** CPU work in Pillow's C code, which releases the GIL while it decodes, resizes
and encodes (another Python thread is never held up more than ~7 ms during a 24 MP photo), so
callers on the Trio loop run it with ``trio.to_thread.run_sync`` behind their own limiter, and
two threads use both cores (the loop then shares the two cores with them: ~20-30 ms worst lag).

Semantics:

- Sizes are long-edge caps (:data:`SIZES`): ``optimized`` 2560 px, ``large`` 2048, ``medium``
  1200, ``small`` 400. The aspect is kept and nothing is ever upscaled: a photo smaller than a
  cap keeps its own size for that rendition (and identical sizes share one encoding).
- The optimized image is capped, not full size: a full-size 24 MP WebP costs 1-3 s to encode
  and is far larger than any screen a guest views it on. The original is kept untouched in
  storage by the caller; only these renditions are meant for guests.
- Decoded **once**: the JPEG decoder's DCT scaling (``Image.draft``) is asked for the true
  target size of the largest rendition in the photo's own aspect (a 6000x4000 photo decodes at
  3000x2000 for a 2560x1707 target), then each smaller rendition is resized from the previous
  one, largest to smallest.
- Output is in display orientation (EXIF orientation applied), opaque sRGB (transparency
  flattened on white, ICC profiles converted to sRGB, see :func:`photobot.imaging.to_rgb`), and
  carries **no metadata at all**: no EXIF (so no GPS, camera serial or time), no XMP, no ICC.
- Bad input raises :class:`photobot.imaging.InvalidImage` with its stable ``code``
  (``unsupported_image``, ``image_too_large`` for decompression bombs, checked from the header
  before any pixel is decoded, ``image_truncated``, ``image_unreadable``).

Speed choices (``tests/bench/bench_derivatives.py``, 24 MP JPEG, 2 cores): the whole job takes
~0.4 s single-threaded. WebP ``method=0`` halves it against ``method=4`` (~1.0 s) for files 0-5 %
larger. The cascade's strong steps resample bicubic (antialiased when shrinking; bilinear
visibly softens the small thumbnails), its mild steps (ratio < 1.5) bilinear, where the two
look alike and bilinear costs a third less.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from photobot.imaging import InvalidImage, fit_size, open_image, probe_image, to_rgb

WEBP = "image/webp"

#: Long-edge caps in pixels, largest first (the order the cascade works in).
SIZES: dict[str, int] = {"optimized": 2560, "large": 2048, "medium": 1200, "small": 400}
#: Rendition names, largest first.
NAMES: tuple[str, ...] = tuple(SIZES)

#: WebP quality (0-100) for every rendition.
WEBP_QUALITY = 80
#: libwebp effort 0-6; 0 is ~3x faster than the default 4 for ~4 % more bytes (see above).
WEBP_METHOD = 0
#: Resampling filter of the cascade's strong steps.
RESAMPLE = Image.Resampling.BICUBIC
#: A step shrinking by less than this uses bilinear: at mild ratios the filters are visually
#: alike and bilinear costs ~35 % less (3000→2560: 55 vs 84 ms; 2560→2048: 35 vs 58 ms).
MILD_RATIO = 1.5
#: Largest original accepted (width x height): more than any camera of ours (24-45 MP); a
#: decompression bomb claims more and is refused from its header.
MAX_PIXELS = 60_000_000


@dataclass(frozen=True)
class Rendition:
    """One encoded derivative."""

    name: str
    data: bytes
    width: int
    height: int
    content_type: str = WEBP


@dataclass(frozen=True)
class Derivatives:
    """Everything :func:`make_derivatives` makes from one original.

    ``source_width``/``source_height`` are the original's size in display orientation (from
    its header, so not the reduced size it was decoded at).
    """

    source_width: int
    source_height: int
    optimized: Rendition
    large: Rendition
    medium: Rendition
    small: Rendition

    def renditions(self) -> tuple[Rendition, ...]:
        """All four, largest first."""
        return (self.optimized, self.large, self.medium, self.small)


def plan_sizes(
    size: tuple[int, int], sizes: dict[str, int] | None = None
) -> dict[str, tuple[int, int]]:
    """Output size of each rendition for an original of ``size`` (display orientation).

    Each is the largest size with the original's aspect whose long edge is at most the cap,
    never larger than the original.
    """
    caps = SIZES if sizes is None else sizes
    return {name: fit_size(size, (cap, cap)) for name, cap in caps.items()}


def encode_webp(
    img: Image.Image, *, quality: int = WEBP_QUALITY, method: int = WEBP_METHOD
) -> bytes:
    """Encode an ``RGB`` image as lossy WebP with **no metadata** (EXIF, XMP and ICC all empty).

    Pillow writes only what is passed here (never ``img.info``); they are passed explicitly
    anyway, so a later Pillow that copied ``info`` along could not leak a GPS position.
    """
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=quality, method=method, exif=b"", xmp=b"", icc_profile=None)
    return buf.getvalue()


def make_derivatives(
    data: bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    quality: int = WEBP_QUALITY,
    method: int = WEBP_METHOD,
    resample: Image.Resampling = RESAMPLE,
) -> Derivatives:
    """Decode ``data`` once and return its four WebP renditions (see the module docstring).

    Blocking; raises :class:`~photobot.imaging.InvalidImage` for input that is not a usable
    JPEG, PNG or WebP image.
    """
    info = probe_image(data, max_pixels=max_pixels)
    targets = plan_sizes(info.size)
    # Draft to the true size of the largest rendition, in the photo's aspect and orientation.
    img = open_image(data, max_pixels=max_pixels, min_size=targets[NAMES[0]])
    try:
        current = to_rgb(img)
        made: dict[str, Rendition] = {}
        previous: Rendition | None = None
        for name in NAMES:
            size = targets[name]
            if previous is not None and (previous.width, previous.height) == size:
                made[name] = Rendition(name, previous.data, *size)  # a small original
                continue
            if current.size != size:
                # A mild step (3000→2560, 2560→2048) looks the same with the cheaper filter;
                # the strong ones (2048→1200, 1200→400) keep bicubic's sharpness.
                mild = current.width < size[0] * MILD_RATIO
                current = current.resize(size, Image.Resampling.BILINEAR if mild else resample)
            previous = made[name] = Rendition(
                name, encode_webp(current, quality=quality, method=method), *size
            )
    finally:
        img.close()
    return Derivatives(
        source_width=info.width,
        source_height=info.height,
        optimized=made["optimized"],
        large=made["large"],
        medium=made["medium"],
        small=made["small"],
    )


__all__ = [
    "MAX_PIXELS",
    "NAMES",
    "SIZES",
    "WEBP",
    "WEBP_METHOD",
    "WEBP_QUALITY",
    "Derivatives",
    "InvalidImage",
    "Rendition",
    "encode_webp",
    "make_derivatives",
    "plan_sizes",
]
