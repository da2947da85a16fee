"""Shared Pillow helpers: identify, safely decode, orient, size and re-encode photos.

Pure and I/O-free: every function takes bytes or a ``PIL.Image.Image`` and returns a value; none
touches the disk, the network, Trio or global Pillow settings. They are all **blocking** (CPU
work in Pillow's C code, which releases the GIL), so callers on the event loop run them in
``trio.to_thread.run_sync`` behind their own limiter.

Semantics:

- The type of an image is decided by its **content** (magic bytes), never by a file name or a
  claimed content type. Only JPEG, PNG and WebP are accepted (:func:`sniff_image`), and Pillow is
  only allowed to parse the input as the format that was sniffed.
- Every decoding failure is an :class:`InvalidImage` with a stable ``code``:
  ``unsupported_image`` (not JPEG/PNG/WebP), ``image_too_large`` (more than ``max_pixels``; the
  check uses the header, before any pixel is decoded, so a decompression bomb costs nothing),
  ``image_truncated`` (the data stops early) and ``image_unreadable`` (anything else corrupt).
- Images come out in display orientation: EXIF orientation is applied (and the tag dropped).
- :func:`encode_jpeg` never carries metadata over (EXIF with GPS, XMP, ICC, comments): outputs
  are shared with guests, and a phone photo's EXIF holds where and when it was taken.
- Large JPEGs decode at a reduced scale when the caller says how big the result must be
  (``min_size``): libjpeg's DCT scaling (``Image.draft``) decodes a 24 MP photo at 1/2 or 1/4
  much faster than a full decode followed by a resize.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from photobot.errors import InvalidInput

JPEG = "image/jpeg"
PNG = "image/png"
WEBP = "image/webp"

#: Pillow format name per content type: Image.open only tries this one plugin.
_PILLOW_FORMATS = {JPEG: "JPEG", PNG: "PNG", WEBP: "WEBP"}

#: EXIF tag "Orientation"; values 5-8 swap width and height.
_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})

#: What Pillow's decoders raise on hostile or damaged data. Fuzzing has shown all of these
#: escaping from one plugin or another, so they are all "the bytes are bad", never a bug here.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)


class InvalidImage(InvalidInput):
    """The data is not a usable JPEG, PNG or WebP image."""

    code = "unsupported_image"


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, before any pixel is decoded."""

    content_type: str
    #: Size in display orientation (after EXIF orientation is applied).
    width: int
    height: int
    #: EXIF orientation 1-8 (1 = as stored).
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def sniff_image(data: bytes) -> str:
    """Return the content type of ``data`` from its magic bytes: JPEG, PNG or WebP.

    Raises :class:`InvalidImage` (``unsupported_image``) for anything else, including an empty
    input. The caller's claimed type or file extension is deliberately not an argument.
    """
    head = bytes(data[:16])
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    raise InvalidImage("not a JPEG, PNG or WebP image", code="unsupported_image")


def probe_image(data: bytes, *, max_pixels: int) -> ImageInfo:
    """Type and display size of ``data`` from the header only (cheap, no pixel decoding).

    Raises :class:`InvalidImage` like :func:`open_image`, except that truncation or corruption
    past the header is only found by decoding. For a PNG whose EXIF chunk sits after the pixel
    data (rare) the orientation is reported as 1; :func:`open_image` still applies it.
    """
    content_type = sniff_image(data)
    img = _open_lazy(data, content_type, max_pixels)
    with img:
        orientation = _header_orientation(img)
        w, h = img.size
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return ImageInfo(content_type, w, h, orientation)


#: Enough of a file for any camera's header: JPEG markers up to the first scan (EXIF, XMP and
#: MPF segments are 64 KB each at most), PNG chunks before the pixel data.
PROBE_HEAD_BYTES = 2 * 1024 * 1024


def probe_image_file(path: str | os.PathLike[str], *, max_pixels: int) -> ImageInfo:
    """:func:`probe_image` of a file, reading only its head (blocking: call it from a thread).

    A file the head cannot settle (an error, or a format whose reader wants the whole file) is
    probed again whole, so its verdict and error code are exactly :func:`probe_image`'s."""
    with open(path, "rb") as f:
        head = f.read(PROBE_HEAD_BYTES)
        if len(head) == PROBE_HEAD_BYTES:
            try:
                return probe_image(head, max_pixels=max_pixels)
            except InvalidImage:
                pass
            head += f.read()
    return probe_image(head, max_pixels=max_pixels)


def open_image(
    data: bytes, *, max_pixels: int, min_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` into a loaded image in display orientation.

    ``max_pixels`` bounds width x height, checked from the header before decoding (a tiny file
    may declare 30000x30000). ``min_size`` (display orientation) is the smallest size the caller
    will use, e.g. the output size for a plain resize, or the whole image scaled so that a crop
    still covers the output. A JPEG may then be decoded at 1/2, 1/4 or 1/8 scale, but never
    below ``min_size`` in either dimension; other formats decode at full size. Give the true
    target with the image's aspect: a square box around a 3:2 photo prevents any reduction.

    The mode is what the file has (``RGB``, ``L``, ``RGBA``, ``P``, ``CMYK``...); use
    :func:`to_rgb` for an opaque sRGB image. Animated images give their first frame.
    Raises :class:`InvalidImage` with code ``unsupported_image``, ``image_too_large``,
    ``image_truncated`` or ``image_unreadable``.
    """
    content_type = sniff_image(data)
    img = _open_lazy(data, content_type, max_pixels)
    try:
        if min_size is not None and content_type == JPEG:
            want = min_size
            if _header_orientation(img) in _SWAPS_AXES:
                want = (min_size[1], min_size[0])  # draft works in stored orientation
            if want[0] > 0 and want[1] > 0 and want[0] < img.width and want[1] < img.height:
                img.draft(img.mode, want)  # picks the largest reduction still >= want
        img.load()
    except _DECODE_ERRORS as exc:
        img.close()
        raise _decode_error(data, content_type, exc) from None
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except _DECODE_ERRORS:
        # A corrupt EXIF block: the pixels are fine, so show them as stored rather than fail.
        pass
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An opaque ``RGB`` version of ``img`` in sRGB (may return ``img`` itself).

    Transparency is flattened onto ``background``. An embedded ICC profile other than sRGB
    (e.g. Display P3 from recent phones) is converted to sRGB, because outputs are written
    without profiles; an unreadable profile is ignored.
    """
    icc = img.info.get("icc_profile")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, (0, 0), rgba)
        out = flat
    elif img.mode == "RGB":
        out = img
    else:
        out = img.convert("RGB")  # L, P, CMYK, I;16, 1, YCbCr...
    if icc and img.mode in ("RGB", "RGBA"):
        out = _icc_to_srgb(out, icc)
    return out


def fit_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest size with ``size``'s aspect that fits in ``box``; never larger than ``size``."""
    w, h = size
    scale = min(box[0] / w, box[1] / h, 1.0)
    return (max(1, round(w * scale)), max(1, round(h * scale)))


def center_crop_box(size: tuple[int, int], aspect: float) -> tuple[int, int, int, int]:
    """The largest centred ``(left, top, right, bottom)`` box of ``size`` with width/height =
    ``aspect``."""
    w, h = size
    if w / h > aspect:  # too wide: trim the sides
        cw, ch = max(1, round(h * aspect)), h
    else:  # too tall: trim top and bottom
        cw, ch = w, max(1, round(w / aspect))
    left, top = (w - cw) // 2, (h - ch) // 2
    return (left, top, left + cw, top + ch)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Encode ``img`` as a baseline JPEG with **no metadata** (no EXIF/GPS, XMP, ICC, comment).

    ``L`` and ``RGB`` are encoded as they are; other modes go through :func:`to_rgb` first.
    """
    if img.mode not in ("L", "RGB"):
        img = to_rgb(img)
    if img.info:
        # Pillow copies ``info`` along through resize/convert and writes some keys (the JPEG
        # comment) back out by default: encode a copy that carries nothing.
        img = img.copy()
        img.info.clear()
    buf = io.BytesIO()
    # No optimize=True: it buffers the whole image and encodes it in one call holding the GIL
    # (measured: 67 ms event-loop stall and 4x the time at 2400x1600) for ~5 % fewer bytes.
    img.save(buf, "JPEG", quality=quality, exif=b"")
    return buf.getvalue()


# -- internals ------------------------------------------------------------------------------


def _open_lazy(data: bytes, content_type: str, max_pixels: int) -> Image.Image:
    """``Image.open`` restricted to the sniffed format, plus the pixel-count guard."""
    try:
        img = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[content_type]])
    except Image.DecompressionBombError:
        # Pillow's own (global, much higher) limit fired before ours could.
        raise InvalidImage("image has too many pixels", code="image_too_large") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise _decode_error(data, content_type, exc) from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise InvalidImage("image has no pixels", code="image_unreadable")
    if w * h > max_pixels:
        img.close()
        raise InvalidImage(
            f"image is {w}x{h}, more than {max_pixels} pixels", code="image_too_large"
        )
    return img


def _header_orientation(img: Image.Image) -> int:
    """EXIF orientation without decoding pixels (PNG: only an eXIf chunk before the data)."""
    try:
        if img.format == "PNG":
            if "exif" not in img.info:
                return 1  # PngImageFile.getexif() would decode the whole image to look further
            exif = Image.Exif()
            exif.load(img.info["exif"])
        else:
            exif = img.getexif()
        value = exif.get(_ORIENTATION, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _decode_error(data: bytes, content_type: str, exc: BaseException) -> InvalidImage:
    if _looks_truncated(data, content_type, exc):
        return InvalidImage("image data is truncated", code="image_truncated")
    return InvalidImage(f"cannot decode {content_type} image", code="image_unreadable")


def _looks_truncated(data: bytes, content_type: str, exc: BaseException) -> bool:
    # The file's own structure decides first: Pillow also says "truncated" when scrambled data
    # runs its decoder off the end, and only "cannot identify" when the cut is inside the header.
    if content_type == PNG:
        return b"IEND" not in data[-64:]  # a complete PNG ends with its IEND chunk
    if content_type == WEBP and len(data) >= 8:
        (riff_size,) = struct.unpack_from("<I", data, 4)  # RIFF says how long the file is
        return len(data) < riff_size + 8
    if content_type == JPEG and data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9"):
        return False  # ends with its EOI marker: complete, so the damage is inside
    # A JPEG without EOI at the end (some cameras append trailers after it): trust Pillow
    # ("image file is truncated", "Truncated File Read").
    return isinstance(exc, EOFError) or "truncated" in str(exc).lower()


def _icc_to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        desc = ImageCms.getProfileDescription(src) or ""
        if "srgb" in desc.lower().replace(" ", ""):
            return img  # already sRGB: converting would only cost time
        dst = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(img, src, dst, outputMode=img.mode)
    except (ImageCms.PyCMSError, *_DECODE_ERRORS):
        return img  # a broken profile: the pixels as they are beat no photo
    return out if out is not None else img


__all__ = [
    "JPEG",
    "PNG",
    "WEBP",
    "ImageInfo",
    "InvalidImage",
    "center_crop_box",
    "encode_jpeg",
    "fit_size",
    "open_image",
    "probe_image",
    "sniff_image",
    "to_rgb",
]
