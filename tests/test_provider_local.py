"""The ``local`` provider and the shared imaging helpers, on real images made here with Pillow.

Covers: every style x mode gives a valid JPEG of the expected size that really differs from the
input; EXIF orientation; no EXIF/GPS in outputs; frame and branding; bad inputs map to the right
``FatalProviderError`` code without hanging; progress; and a 24 MP photo per style with the event
loop staying responsive (the timings are printed for the lead).
"""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from collections.abc import Callable, Iterator

import pytest
import trio
from PIL import Image, ImageChops, ImageDraw, ImageStat

from photobot.imaging import (
    InvalidImage,
    encode_jpeg,
    open_image,
    probe_image,
    sniff_image,
)
from photobot.providers.base import FatalProviderError, ProviderInput, ProviderOutput
from photobot.providers.local import MODES, STYLES, LocalProvider

# -- image makers -------------------------------------------------------------------------


def make_scene(size: tuple[int, int] = (1200, 900)) -> Image.Image:
    """A colourful test card: gradients, a face-like disc, a dark block and light noise."""
    w, h = size
    red = Image.linear_gradient("L").rotate(90).resize(size)
    green = Image.linear_gradient("L").resize(size)
    blue = Image.radial_gradient("L").resize(size)
    img = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(img)
    draw.ellipse((w * 0.35, h * 0.15, w * 0.65, h * 0.75), fill=(230, 180, 150))
    draw.ellipse((w * 0.42, h * 0.3, w * 0.47, h * 0.37), fill=(40, 30, 30))
    draw.ellipse((w * 0.53, h * 0.3, w * 0.58, h * 0.37), fill=(40, 30, 30))
    draw.rectangle((w * 0.05, h * 0.6, w * 0.25, h * 0.95), fill=(30, 90, 200))
    noise = Image.effect_noise(size, 20).convert("RGB")
    return Image.blend(img, noise, 0.06)


def to_bytes(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def job(
    data: bytes,
    *,
    style: str | None = "original",
    mode: str = "default",
    content_type: str = "image/jpeg",
    frame_png: bytes | None = None,
    branding: str | None = None,
) -> ProviderInput:
    return ProviderInput(
        job_id="job-1",
        image=data,
        content_type=content_type,
        mode=mode,
        style=style,
        seed=7,
        frame_png=frame_png,
        branding=branding,
    )


async def run(
    provider: LocalProvider, inp: ProviderInput, progress: list[float] | None = None
) -> ProviderOutput:
    seen = progress if progress is not None else []
    with trio.fail_after(20):  # nothing may hang
        return await provider.process(inp, seen.append)


def decode(out: ProviderOutput) -> Image.Image:
    assert len(out.images) == 1 and out.best == 0
    image = out.images[0]
    assert image.content_type == "image/jpeg"
    assert sniff_image(image.data) == "image/jpeg"
    img = Image.open(io.BytesIO(image.data))
    img.load()
    assert (img.width, img.height) == (image.width, image.height)
    assert list(img.size) == out.metadata["output_size"]
    return img.convert("RGB")


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference, 0-255."""
    if a.size != b.size:
        b = b.resize(a.size)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    return make_scene()


@pytest.fixture(scope="module")
def scene_jpeg(scene: Image.Image) -> bytes:
    return to_bytes(scene, quality=92)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A 6000x4000 (24 MP) q90 JPEG with noise, so it decodes like a camera photo."""
    size = (6000, 4000)
    grad = Image.linear_gradient("L").resize(size)
    base = Image.merge(
        "RGB", (grad, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT), grad.rotate(180))
    )
    # Half-resolution noise scaled up: 3x cheaper to make, still ~6 MB of real entropy.
    noise = Image.effect_noise((3000, 2000), 40).resize(size, Image.Resampling.BILINEAR)
    noisy = Image.merge(
        "RGB", (noise, noise.transpose(Image.Transpose.FLIP_TOP_BOTTOM), noise.rotate(180))
    )
    return to_bytes(Image.blend(base, noisy, 0.3), quality=90)


# -- styles and modes ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_every_style_gives_a_styled_jpeg_of_the_right_size(
    mode: str, scene: Image.Image, scene_jpeg: bytes
) -> None:
    provider = LocalProvider(output_long_edge=800)
    expected = {"default": (800, 600), "print_4x6": (800, 533), "square": (800, 800)}[mode]
    outputs: dict[str, Image.Image] = {}
    for style in STYLES:
        out = await run(provider, job(scene_jpeg, style=style, mode=mode))
        img = decode(out)
        assert img.size == expected, style
        assert out.metadata == {
            "style": style,
            "mode": mode,
            "source_size": [1200, 900],
            "output_size": list(expected),
        }
        assert out.seed == 7 and out.provider_request_id is None
        outputs[style] = img

    # "original" is the input, only cropped and resized: close to it.
    reference = scene.resize(expected) if mode == "default" else None
    if reference is not None:
        assert mean_diff(outputs["original"], reference) < 4
    # Every other style changes the picture meaningfully, and differently from the others.
    styled = [s for s in STYLES if s != "original"]
    for style in styled:
        assert mean_diff(outputs[style], outputs["original"]) > 12, style
    for i, a in enumerate(styled):
        for b in styled[i + 1 :]:
            assert mean_diff(outputs[a], outputs[b]) > 5, (a, b)
    # Black & white is grey: R == G == B (within JPEG rounding).
    r, g, b = outputs["bw"].split()
    assert ImageChops.difference(r, g).getextrema()[1] <= 2
    assert ImageChops.difference(g, b).getextrema()[1] <= 2
    # Sepia is warm: more red than blue on average.
    red, _, blue = ImageStat.Stat(outputs["sepia"]).mean
    assert red > blue + 15


async def test_none_style_is_original_and_unknown_style_or_mode_is_fatal(
    scene_jpeg: bytes,
) -> None:
    provider = LocalProvider(output_long_edge=400)
    out = await run(provider, job(scene_jpeg, style=None))
    assert out.metadata["style"] == "original"
    with pytest.raises(FatalProviderError) as err:
        await run(provider, job(scene_jpeg, style="van_gogh"))
    assert err.value.code == "unknown_style" and not err.value.transient
    with pytest.raises(FatalProviderError) as err:
        await run(provider, job(scene_jpeg, mode="poster"))
    assert err.value.code == "unknown_mode"


async def test_print_mode_follows_orientation_and_small_inputs_are_not_upscaled() -> None:
    provider = LocalProvider(output_long_edge=2400)
    portrait = to_bytes(make_scene((600, 1000)))
    img = decode(await run(provider, job(portrait, mode="print_4x6")))
    assert img.size == (600, 900)  # 2:3 crop of 600x1000, no upscaling to 2400
    img = decode(await run(provider, job(portrait, mode="square")))
    assert img.size == (600, 600)
    img = decode(await run(provider, job(portrait, mode="default")))
    assert img.size == (600, 1000)


# -- orientation and metadata --------------------------------------------------------------


async def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (600, 400), (128, 128, 128))
    ImageDraw.Draw(stored).rectangle((0, 0, 99, 99), fill=(255, 0, 0))  # stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    data = to_bytes(stored, exif=exif, quality=95)

    out = await run(LocalProvider(), job(data))
    img = decode(out)
    assert img.size == (400, 600)
    assert out.metadata["source_size"] == [400, 600]
    # Rotated clockwise, the stored top-left corner is now the top-right one.
    r, g, b = img.getpixel((400 - 50, 50))
    assert r > 200 and g < 60 and b < 60
    r, g, b = img.getpixel((50, 50))
    assert abs(r - 128) < 10 and abs(g - 128) < 10


async def test_no_exif_or_gps_in_the_output(scene: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif[0x0132] = "2025:06:01 12:00:00"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (13.0, 24.0, 9.0)})
    data = to_bytes(scene, exif=exif, comment=b"secret note")
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8825)  # the input does have GPS

    for style in ("original", "bw"):
        out = await run(LocalProvider(output_long_edge=600), job(data, style=style))
        result = Image.open(io.BytesIO(out.images[0].data))
        assert 34853 not in result.getexif()
        assert not result.getexif().get_ifd(0x8825)
        assert len(result.getexif()) == 0
        assert "exif" not in result.info and "comment" not in result.info
        assert b"PhoneMaker" not in out.images[0].data


# -- frame and branding --------------------------------------------------------------------


async def test_frame_is_composited_on_top(scene_jpeg: bytes) -> None:
    # A frame at a different size and aspect: an opaque magenta band on top, a half-transparent
    # green band at the bottom, clear in the middle.
    frame = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    draw = ImageDraw.Draw(frame)
    draw.rectangle((0, 0, 299, 59), fill=(200, 20, 120, 255))
    draw.rectangle((0, 240, 299, 299), fill=(0, 255, 0, 128))
    provider = LocalProvider(output_long_edge=800)
    plain = decode(await run(provider, job(scene_jpeg)))
    framed = decode(await run(provider, job(scene_jpeg, frame_png=to_bytes(frame, "PNG"))))
    assert framed.size == plain.size == (800, 600)

    r, g, b = framed.getpixel((400, 40))  # under the opaque band (top 20 % of the height)
    assert abs(r - 200) < 12 and g < 35 and abs(b - 120) < 12
    middle = (300, 200, 500, 400)
    assert mean_diff(framed.crop(middle), plain.crop(middle)) < 2  # clear area: untouched
    # Half-transparent green: half photo, half green ("over" compositing).
    for x in (100, 400, 700):
        framed_px, plain_px = framed.getpixel((x, 570)), plain.getpixel((x, 570))
        for got, under, band in zip(framed_px, plain_px, (0, 255, 0), strict=True):
            expected = under * (1 - 128 / 255) + band * 128 / 255
            assert abs(got - expected) < 10, (x, framed_px, plain_px)


async def test_branding_changes_only_the_bottom_corner(scene_jpeg: bytes) -> None:
    provider = LocalProvider(output_long_edge=800)
    plain = decode(await run(provider, job(scene_jpeg)))
    branded = decode(await run(provider, job(scene_jpeg, branding="Anna & Ben · 14.06.2025")))
    corner = (560, 540, 800, 600)
    assert mean_diff(branded.crop(corner), plain.crop(corner)) > 10
    top = (0, 0, 800, 400)
    assert mean_diff(branded.crop(top), plain.crop(top)) < 1
    # Very long text is shrunk and cut, never fails or spills past the picture.
    out = await run(provider, job(scene_jpeg, branding="X" * 500))
    assert decode(out).size == (800, 600)


async def test_bad_frame_is_fatal(scene_jpeg: bytes) -> None:
    with pytest.raises(FatalProviderError) as err:
        await run(LocalProvider(), job(scene_jpeg, frame_png=b"not a png at all"))
    assert err.value.code == "invalid_frame"


# -- bad inputs ----------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims widthxheight 1-bit pixels (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)  # the start of all-black rows; never decoded
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_inputs() -> Iterator[tuple[str, bytes, str]]:
    photo = make_scene((640, 480))
    jpeg = to_bytes(photo)
    png = to_bytes(photo, "PNG")
    webp = to_bytes(photo, "WEBP")
    corrupt = bytearray(jpeg)
    corrupt[300:5000] = random.Random(1).randbytes(4700)  # scan data and tables scrambled
    yield "random_bytes", random.Random(0).randbytes(5000), "unsupported_image"
    yield "empty", b"", "unsupported_image"
    yield "gif", to_bytes(photo.convert("P"), "GIF"), "unsupported_image"
    yield "jpeg_cut_in_half", jpeg[: len(jpeg) // 2], "image_truncated"
    yield "jpeg_header_only", jpeg[:200], "image_truncated"
    yield "png_cut_in_half", png[: len(png) // 2], "image_truncated"
    yield "png_signature_only", png[:30], "image_truncated"
    yield "webp_cut_in_half", webp[: len(webp) // 2], "image_truncated"
    yield "jpeg_corrupt", bytes(corrupt), "image_unreadable"
    yield "bomb_30000x30000", png_declaring(30000, 30000), "image_too_large"


@pytest.mark.parametrize(
    ("data", "code"),
    [pytest.param(data, code, id=name) for name, data, code in bad_inputs()],
)
async def test_bad_input_is_fatal_with_its_code(data: bytes, code: str) -> None:
    with trio.fail_after(5):
        with pytest.raises(FatalProviderError) as err:
            await LocalProvider().process(job(data), lambda f: None)
    assert err.value.code == code
    assert not err.value.transient
    assert len(err.value.message) < 120 and "\\x" not in err.value.message


async def test_max_pixels_is_checked_before_decoding() -> None:
    data = to_bytes(make_scene((1600, 1200)))
    with pytest.raises(FatalProviderError) as err:
        await run(LocalProvider(max_pixels=1_000_000), job(data))
    assert err.value.code == "image_too_large"
    await run(LocalProvider(max_pixels=2_000_000), job(data))  # at the limit: fine


async def test_type_comes_from_content_not_the_claim(scene: Image.Image) -> None:
    png = to_bytes(scene, "PNG")
    assert sniff_image(png) == "image/png"
    assert sniff_image(to_bytes(scene, "WEBP")) == "image/webp"
    assert sniff_image(to_bytes(scene)) == "image/jpeg"
    # A PNG (with alpha, even) sent as image/jpeg is processed as the PNG it is.
    rgba = scene.convert("RGBA")
    rgba.putalpha(200)
    out = await run(LocalProvider(output_long_edge=600), job(to_bytes(rgba, "PNG")))
    assert decode(out).size == (600, 450)
    webp = job(to_bytes(scene, "WEBP"), content_type="image/png", mode="square")
    assert decode(await run(LocalProvider(output_long_edge=600), webp)).size == (600, 600)
    with pytest.raises(InvalidImage) as err:
        sniff_image(b"GIF89a" + bytes(100))
    assert err.value.code == "unsupported_image"


# -- progress, cancellation, the imaging helpers -------------------------------------------


async def test_progress_is_monotonic_and_completes(scene_jpeg: bytes) -> None:
    seen: list[float] = []
    await run(LocalProvider(output_long_edge=600), job(scene_jpeg, style="sketch"), seen)
    assert len(seen) >= 3
    assert seen == sorted(seen)
    assert all(0.0 <= f <= 1.0 for f in seen)
    assert seen[-1] >= 0.9


async def test_cancel_stops_within_one_step(big_jpeg: bytes) -> None:
    provider = LocalProvider()
    seen: list[float] = []
    with trio.move_on_after(0.05) as scope:
        await provider.process(job(big_jpeg, style="vivid", mode="square"), seen.append)
    assert scope.cancelled_caught
    # Stopped at the first step boundary after the cancel: at most the decode (0.1) got
    # reported, never the resize, styling or encoding — however slow the machine is.
    assert all(f <= 0.1 for f in seen), seen
    assert provider.limiter.borrowed_tokens == 0


def test_open_image_drafts_jpeg_to_the_real_target(big_jpeg: bytes) -> None:
    info = probe_image(big_jpeg, max_pixels=60_000_000)
    assert (info.content_type, info.size) == ("image/jpeg", (6000, 4000))
    img = open_image(big_jpeg, max_pixels=60_000_000, min_size=(2400, 1600))
    assert img.size == (3000, 2000)  # decoded at 1/2: still covers the target
    # A square box around a 3:2 image cannot be reduced: the 2400 height needs the full decode.
    assert open_image(big_jpeg, max_pixels=60_000_000, min_size=(3600, 2400)).size == (6000, 4000)


def test_encode_jpeg_strips_all_metadata() -> None:
    img = make_scene((200, 150))
    img.info.update({"comment": b"hi", "icc_profile": b"x" * 20, "exif": b"Exif\x00\x00junk"})
    data = encode_jpeg(img, quality=80)
    back = Image.open(io.BytesIO(data))
    assert back.size == (200, 150)
    assert not ({"comment", "icc_profile", "exif", "xmp"} & back.info.keys())
    assert img.info["comment"] == b"hi"  # the caller's image is not modified


# -- 24 megapixels -------------------------------------------------------------------------


async def test_24mp_photo_every_style_with_a_responsive_loop(
    big_jpeg: bytes,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    provider = LocalProvider()
    worst_lateness = 0.0
    done = trio.Event()

    async def ticker() -> None:
        nonlocal worst_lateness
        while not done.is_set():
            before = trio.current_time()
            await trio.sleep(0.01)
            worst_lateness = max(worst_lateness, trio.current_time() - before - 0.01)

    timings: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        for style in STYLES:
            started = time.perf_counter()
            out = await run(provider, job(big_jpeg, style=style))
            timings[style] = time.perf_counter() - started
            assert out.metadata["source_size"] == [6000, 4000]
            assert (out.images[0].width, out.images[0].height) == (2400, 1600)
        done.set()

    assert worst_lateness < 0.1, f"event loop was blocked for {worst_lateness * 1000:.0f} ms"
    line = ", ".join(f"{s} {t:.2f}s" for s, t in timings.items())
    record_property("seconds_per_24mp_photo", timings)
    lateness = f"{worst_lateness * 1000:.1f} ms"
    with capsys.disabled():  # shown even under -q: the lead wants these numbers
        print(f"\n24 MP -> 2400x1600 JPEG, per style: {line}; loop lateness max {lateness}")
