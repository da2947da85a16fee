"""The ``local`` provider: offline styling with Pillow, so a booth without internet still works.

One call to :meth:`LocalProvider.process` is one attempt, as in :mod:`photobot.providers.base`:

- Input: the job's bytes, typed by **content** (:func:`photobot.imaging.sniff_image`; the
  claimed ``content_type`` is ignored). EXIF orientation is applied.
- ``job.mode``: ``default`` keeps the aspect ratio; ``print_4x6`` centre-crops to 3:2 (landscape
  or square sources) or 2:3 (portrait); ``square`` centre-crops to 1:1. Anything else is a
  :class:`FatalProviderError` ``unknown_mode``.
- ``job.style``: a key of :data:`STYLES`; ``None`` means ``original``; anything else is a
  :class:`FatalProviderError` ``unknown_style``. Styles are deterministic (the same input gives
  the same output); ``job.seed`` is only echoed back.
- Then the event frame (``job.frame_png``, scaled to the output size and alpha-composited on
  top; unusable → ``invalid_frame``) and the branding text (``job.branding``, small, bottom right,
  on a translucent backing).
- Output: exactly one baseline JPEG without any metadata (no EXIF/GPS), long edge at most
  ``output_long_edge``; smaller sources are never upscaled. ``metadata`` holds ``style``,
  ``mode``, ``source_size`` (display orientation) and ``output_size``.
- Errors: bad input bytes (not JPEG/PNG/WebP, truncated, corrupt, more than ``max_pixels``) raise
  :class:`FatalProviderError` with the imaging code (``unsupported_image``, ``image_truncated``,
  ``image_unreadable``, ``image_too_large``): the same bytes would fail again. Nothing here is
  transient.
- Threads: all Pillow work for a job runs in one ``trio.to_thread.run_sync`` call behind
  ``limiter`` (``limiter_name = "pillow"``, ``max_threads`` slots), so at most ``max_threads``
  photos are decoded at once (memory) and the event loop never blocks. Between steps the
  thread reports ``progress`` (0.1 decoded, 0.3 resized, 0.6 styled, 0.8 framed, 0.9 encoded,
  then 1.0 back on the event loop) through ``trio.from_thread.run_sync`` and checks for
  cancellation, so cancelling a job waits for at most one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio
from PIL import (
    Image,
    ImageChops,
    ImageDraw,
    ImageEnhance,
    ImageFilter,
    ImageFont,
    ImageMath,
    ImageOps,
)

from photobot.imaging import (
    InvalidImage,
    center_crop_box,
    encode_jpeg,
    fit_size,
    open_image,
    probe_image,
    to_rgb,
)
from photobot.providers.base import (
    FatalProviderError,
    OutputImage,
    Progress,
    ProviderInput,
    ProviderOutput,
)

#: Style name → label for the UI. ``None`` as a job's style means ``original``.
STYLES: dict[str, str] = {
    "original": "Original",
    "bw": "Black & white",
    "sepia": "Sepia",
    "vintage": "Vintage",
    "vivid": "Vivid",
    "pop": "Pop art",
    "sketch": "Pencil sketch",
}

#: Mode name → label for the UI.
MODES: dict[str, str] = {
    "default": "Original shape",
    "print_4x6": "4x6 print",
    "square": "Square",
}

JPEG_QUALITY = 90
#: The frame is operator-supplied but still decoded with a bound.
FRAME_MAX_PIXELS = 50_000_000
#: Branding longer than this is cut: it has to fit in a corner.
BRANDING_MAX_CHARS = 80

Box = tuple[float, float, float, float]


class LocalProvider:
    """Offline provider doing real image work with Pillow (see the module docstring)."""

    name = "local"

    def __init__(
        self, *, max_threads: int = 2, max_pixels: int = 60_000_000, output_long_edge: int = 2400
    ) -> None:
        if max_threads < 1 or max_pixels < 1 or output_long_edge < 16:
            raise ValueError("max_threads, max_pixels and output_long_edge must be positive")
        self.max_pixels = max_pixels
        self.output_long_edge = output_long_edge
        self.limiter_name = "pillow"
        self.limiter = trio.CapacityLimiter(max_threads)

    def __repr__(self) -> str:
        return f"LocalProvider(max_threads={self.limiter.total_tokens})"

    async def process(self, job: ProviderInput, progress: Progress) -> ProviderOutput:
        style = "original" if job.style is None else job.style
        if style not in STYLES:
            raise FatalProviderError(f"unknown style {style[:40]!r}", code="unknown_style")
        if job.mode not in MODES:
            raise FatalProviderError(f"unknown mode {job.mode[:40]!r}", code="unknown_mode")

        def report(fraction: float) -> None:
            # In the worker thread: stop between steps if the job was cancelled, and hand the
            # progress callback to the event loop (it is not thread-safe and must not block us).
            trio.from_thread.check_cancelled()
            trio.from_thread.run_sync(progress, fraction)

        render = partial(
            _render,
            job,
            style,
            max_pixels=self.max_pixels,
            long_edge=self.output_long_edge,
            report=report,
        )
        result = await trio.to_thread.run_sync(render, limiter=self.limiter)
        progress(1.0)
        return ProviderOutput(
            images=[OutputImage(result.jpeg, "image/jpeg", *result.output_size)],
            best=0,
            provider_request_id=None,
            seed=job.seed,
            metadata={
                "style": style,
                "mode": job.mode,
                "source_size": list(result.source_size),
                "output_size": list(result.output_size),
            },
        )

    async def aclose(self) -> None:
        """Nothing to release: no connections, and threads end with their calls."""


# -- the pipeline (runs in a worker thread) ------------------------------------------------


@dataclass(frozen=True)
class _Rendered:
    jpeg: bytes
    source_size: tuple[int, int]
    output_size: tuple[int, int]


def _render(
    job: ProviderInput,
    style: str,
    *,
    max_pixels: int,
    long_edge: int,
    report: Callable[[float], None],
) -> _Rendered:
    try:
        info = probe_image(job.image, max_pixels=max_pixels)
        box, out_size = plan_geometry(info.size, job.mode, long_edge)
        # Decode no bigger than needed: the whole source scaled so the crop still covers the
        # output. For a 24 MP JPEG this lets libjpeg decode at 1/2 scale.
        scale = max(out_size[0] / (box[2] - box[0]), out_size[1] / (box[3] - box[1]))
        need = (math.ceil(info.width * scale), math.ceil(info.height * scale))
        img = open_image(job.image, max_pixels=max_pixels, min_size=need)
    except InvalidImage as exc:
        raise FatalProviderError(exc.message, code=exc.code) from None
    report(0.1)

    w, h = img.size
    if abs(w / h - info.width / info.height) > 0.02:
        # Orientation found only while decoding (a PNG's late EXIF chunk): plan again.
        box, out_size = plan_geometry((w, h), job.mode, long_edge)
        source_size = (w, h)
    else:
        sx, sy = w / info.width, h / info.height  # the JPEG draft scale
        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        source_size = info.size
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        # Resampling needs a continuous-tone mode (P would resize by nearest neighbour).
        img = img.convert("RGBA" if img.has_transparency_data else "RGB")
    # reducing_gap: a cheap box reduction first when the source is still much larger (PNG/WebP
    # get no draft); the quality loss is invisible at 3x. Bicubic, as the optimizer's strong
    # steps: for 12 MP → 2400 px it costs 110 ms against Lanczos' 146, while the guest waits.
    img = img.resize(out_size, Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    img = to_rgb(img)
    report(0.3)

    img = _STYLE_FUNCS[style](img)
    report(0.6)

    if job.frame_png:
        _apply_frame(img, job.frame_png)
    if job.branding:
        _draw_branding(img, job.branding)
    report(0.8)

    data = encode_jpeg(img, quality=JPEG_QUALITY)
    report(0.9)
    return _Rendered(data, source_size, img.size)


def plan_geometry(size: tuple[int, int], mode: str, long_edge: int) -> tuple[Box, tuple[int, int]]:
    """Crop box in ``size``'s coordinates and output size for ``mode`` (pure, no Pillow work)."""
    w, h = size
    if mode == "default":
        return (0, 0, w, h), fit_size(size, (long_edge, long_edge))
    if mode == "print_4x6":
        landscape = w >= h
        box = center_crop_box(size, 3 / 2 if landscape else 2 / 3)
        long = min(long_edge, max(box[2] - box[0], box[3] - box[1]))
        short = max(1, round(long * 2 / 3))
        return box, ((long, short) if landscape else (short, long))
    if mode == "square":
        box = center_crop_box(size, 1.0)
        side = min(long_edge, box[2] - box[0])
        return box, (side, side)
    raise ValueError(f"unknown mode {mode!r}")


# -- styles: RGB in, RGB out, at output size ----------------------------------------------


def _style_original(img: Image.Image) -> Image.Image:
    return img


def _style_bw(img: Image.Image) -> Image.Image:
    gray = ImageOps.autocontrast(ImageOps.grayscale(img), cutoff=0.5)
    gray = ImageEnhance.Contrast(gray).enhance(1.2)
    return gray.convert("RGB")  # R == G == B; RGB so frames and branding keep their colours


def _style_sepia(img: Image.Image) -> Image.Image:
    gray = ImageOps.autocontrast(ImageOps.grayscale(img), cutoff=0.5)
    toned = ImageOps.colorize(gray, black=(40, 26, 13), white=(255, 243, 220), mid=(164, 122, 80))
    return _vignette(toned, 0.35)


def _style_vintage(img: Image.Image) -> Image.Image:
    muted = ImageEnhance.Color(img).enhance(0.65)
    # Faded film: lifted blacks, softened whites, warm cast (more red, less blue).
    lut = (
        _curve(lift=34, gain=0.92, gamma=0.92)
        + _curve(lift=22, gain=0.86, gamma=1.0)
        + _curve(lift=8, gain=0.72, gamma=1.1)
    )
    return _vignette(muted.point(lut), 0.3)


def _style_vivid(img: Image.Image) -> Image.Image:
    out = ImageEnhance.Color(img).enhance(1.5)
    out = ImageEnhance.Contrast(out).enhance(1.15)
    return out.filter(ImageFilter.UnsharpMask(radius=2, percent=60, threshold=3))


def _style_pop(img: Image.Image) -> Image.Image:
    radius = max(1, round(min(img.size) / 600))
    smooth = img.filter(ImageFilter.BoxBlur(radius))  # flat areas before posterizing
    flat = ImageOps.posterize(ImageEnhance.Color(smooth).enhance(1.7), 2)
    # Ink lines: strong edges of the smoothed image, slightly thickened, in black.
    edges = ImageOps.grayscale(smooth).filter(ImageFilter.FIND_EDGES)
    edges = edges.filter(ImageFilter.GaussianBlur(radius)).point(lambda v: 0 if v > 12 else 255)
    return ImageChops.multiply(flat, Image.merge("RGB", (edges, edges, edges)))


def _style_sketch(img: Image.Image) -> Image.Image:
    gray = ImageOps.grayscale(img)
    blur = gray.filter(ImageFilter.GaussianBlur(max(2.0, min(img.size) / 120)))
    # "Colour dodge" of the image with its own blur: flat areas go white, lines (pixels darker
    # than their surroundings) stay as pencil strokes. In mode I, so it cannot overflow.
    dodge = ImageMath.lambda_eval(lambda a: a["g"] * 256 / (a["b"] + 1), g=gray, b=blur)
    pencil = dodge.convert("L").point(lambda v: round(255 * (v / 255) ** 2.2))  # darker strokes
    # A light hatch of the original tones, so dark areas read as shaded, not hollow.
    shading = gray.point(lambda v: 185 + v * 70 // 255)
    pencil = ImageChops.multiply(pencil, shading)
    return ImageOps.colorize(pencil, black=(45, 45, 55), white=(250, 246, 236))


_STYLE_FUNCS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "original": _style_original,
    "bw": _style_bw,
    "sepia": _style_sepia,
    "vintage": _style_vintage,
    "vivid": _style_vivid,
    "pop": _style_pop,
    "sketch": _style_sketch,
}
assert _STYLE_FUNCS.keys() == STYLES.keys()


def _curve(*, lift: int, gain: float, gamma: float) -> list[int]:
    """256-entry tone curve: out = lift + (255 - lift) * gain * (v/255) ** gamma."""
    return [min(255, round(lift + (255 - lift) * gain * (v / 255) ** gamma)) for v in range(256)]


def _vignette(img: Image.Image, strength: float) -> Image.Image:
    # radial_gradient is 0 in the centre and 255 at the corners; stretched to the image it is
    # elliptical, like a lens. Squared so the centre stays untouched.
    lut = [round(255 * (1 - strength * (v / 255) ** 2)) for v in range(256)]
    mask = Image.radial_gradient("L").point(lut).resize(img.size, Image.Resampling.BILINEAR)
    return ImageChops.multiply(img, Image.merge("RGB", (mask, mask, mask)))


# -- frame and branding (in place, on the RGB output) --------------------------------------


def _apply_frame(img: Image.Image, frame_png: bytes) -> None:
    try:
        frame = open_image(frame_png, max_pixels=FRAME_MAX_PIXELS)
    except InvalidImage as exc:
        raise FatalProviderError(f"event frame: {exc.message}", code="invalid_frame") from None
    frame = frame.convert("RGBA").resize(img.size, Image.Resampling.LANCZOS)
    img.paste(frame, (0, 0), frame)  # paste with its alpha as mask = "over" onto opaque img


def _draw_branding(img: Image.Image, text: str) -> None:
    text = " ".join(text.split())[:BRANDING_MAX_CHARS]  # one line, no control characters
    if not text:
        return
    w, h = img.size
    margin = max(2, round(min(w, h) * 0.02))
    size = max(8, round(min(w, h) * 0.028))
    while True:
        font = ImageFont.load_default(size=size)
        left, top, right, bottom = font.getbbox(text)
        pad = max(2, size // 2)
        box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
        if box_w <= w - 2 * margin or size <= 8:
            break
        size = max(8, int(size * 0.8))  # long text on a small photo: shrink to fit
    label = Image.new("RGBA", (box_w, box_h), (0, 0, 0, 140))
    ImageDraw.Draw(label).text((pad - left, pad - top), text, font=font, fill=(255, 255, 255))
    img.paste(label, (max(0, w - margin - box_w), max(0, h - margin - box_h)), label)
