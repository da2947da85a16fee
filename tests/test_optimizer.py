"""The image optimizer: derivative functions on real JPEGs with EXIF (sizes, orientation, no GPS),
and the built-in optimizer actor on a live booth (bad images, storage trouble, restarts)."""

from __future__ import annotations

import io
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from PIL import Image, ImageOps

from actors import GalleryMessage
from actors.optimizer import OptimizerConfig
from photobot import optimizer, photos
from photobot.errors import StorageError
from photobot.image_jobs import ImageJob, derivative_keys
from photobot.imaging import InvalidImage
from photobot.optimizer import SIZES, make_derivatives
from tests.live_booth import Live, open_live, png_bomb

RED, BLUE = (220, 20, 20), (20, 20, 220)
GPS_IFD = 0x8825


def exif_jpeg(
    width: int, height: int, *, orientation: int = 1, gps: bool = True, quality: int = 90
) -> bytes:
    """A real JPEG as a phone writes it: EXIF with orientation, camera, time and a GPS position.

    The stored pixels are blue with a red top-left quadrant, so a test can see where the
    display orientation put it.
    """
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(Image.new("RGB", (width // 2, height // 2), RED), (0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R6"
    exif[0x0132] = "2025:01:31 19:45:00"
    if gps:
        exif[GPS_IFD] = {1: "S", 2: (6.0, 10.0, 30.5), 3: "E", 4: (106.0, 49.0, 10.25)}
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, exif=exif.tobytes())
    return out.getvalue()


def assert_no_metadata(data: bytes) -> None:
    """A WebP carrying nothing but pixels: no EXIF (GPS), XMP or ICC chunk."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    for chunk in (b"EXIF", b"XMP ", b"ICCP", b"Exif"):
        assert chunk not in data, chunk
    with Image.open(io.BytesIO(data)) as img:
        assert not dict(img.getexif())
        assert not img.getexif().get_ifd(GPS_IFD)
        assert "exif" not in img.info and "icc_profile" not in img.info and "xmp" not in img.info


def quadrant_colors(data: bytes) -> list[tuple[int, int, int]]:
    """Mean colour of the four quadrants (tl, tr, bl, br) of an image."""
    with Image.open(io.BytesIO(data)) as img:
        small = img.convert("RGB").resize((2, 2), Image.Resampling.BOX)
        return [small.getpixel(xy) for xy in ((0, 0), (1, 0), (0, 1), (1, 1))]  # type: ignore[misc]


def near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# -- the pure functions ------------------------------------------------------------------------


def test_sizes_orientation_and_no_gps_on_a_phone_jpeg() -> None:
    source = exif_jpeg(3000, 2000, orientation=6)
    with Image.open(io.BytesIO(source)) as src:
        assert src.getexif().get_ifd(GPS_IFD)  # the original does carry a position
    made = make_derivatives(source)
    # Orientation 6: stored 3000x2000 landscape, displayed 2000x3000 portrait.
    assert (made.source_width, made.source_height) == (2000, 3000)
    expected = {"optimized": (1707, 2560), "large": (1365, 2048), "medium": (800, 1200),
                "small": (267, 400)}  # fmt: skip
    for rendition in made.renditions():
        assert (rendition.width, rendition.height) == expected[rendition.name]
        assert rendition.content_type == "image/webp"
        with Image.open(io.BytesIO(rendition.data)) as img:
            assert img.format == "WEBP" and img.size == expected[rendition.name]
        assert_no_metadata(rendition.data)
        # Rotated 90° clockwise for display: the stored top-left (red) is now top-right.
        tl, tr, bl, br = quadrant_colors(rendition.data)
        assert near(tr, RED) and near(tl, BLUE) and near(bl, BLUE) and near(br, BLUE)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_reference(orientation: int) -> None:
    source = exif_jpeg(600, 400, orientation=orientation)
    made = make_derivatives(source)
    with Image.open(io.BytesIO(source)) as src:
        reference = ImageOps.exif_transpose(src)
        ref = io.BytesIO()
        reference.save(ref, "PNG")
    assert (made.optimized.width, made.optimized.height) == reference.size
    got, want = quadrant_colors(made.optimized.data), quadrant_colors(ref.getvalue())
    assert all(near(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    assert_no_metadata(made.small.data)


def test_a_small_original_is_never_upscaled_and_alpha_is_flattened() -> None:
    img = Image.new("RGBA", (800, 600), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (400, 600), (10, 200, 10, 255)), (0, 0))
    png = io.BytesIO()
    img.save(png, "PNG")
    made = make_derivatives(png.getvalue())
    assert [(r.width, r.height) for r in made.renditions()] == [
        (800, 600), (800, 600), (800, 600), (400, 300),
    ]  # fmt: skip
    # Same size, same bytes: encoded once.
    assert made.optimized.data is made.large.data is made.medium.data
    with Image.open(io.BytesIO(made.small.data)) as small:
        assert small.mode == "RGB"
        assert near(small.getpixel((350, 150)), (255, 255, 255))  # transparent → white
        assert near(small.getpixel((50, 150)), (10, 200, 10))


def test_decoding_is_drafted_to_the_true_target_size(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, tuple[int, int]]] = []
    real_open = optimizer.open_image

    def spy(data: bytes, **kwargs: Any) -> Image.Image:
        img = real_open(data, **kwargs)
        seen.append((kwargs.get("min_size"), img.size))
        return img

    monkeypatch.setattr(optimizer, "open_image", spy)
    made = make_derivatives(exif_jpeg(6000, 4000, quality=70, gps=False))
    # The largest rendition's real size in the photo's aspect (not a square box), and libjpeg
    # decoded at 1/2 scale: 3000x2000 is the smallest DCT scale still covering 2560x1707.
    assert seen == [((2560, 1707), (3000, 2000))]
    assert (made.optimized.width, made.optimized.height) == (2560, 1707)
    assert max(made.small.width, made.small.height) == SIZES["small"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (png_bomb(), "image_too_large"),
        (exif_jpeg(1200, 800)[:-3000], "image_truncated"),
        (b"GIF89a not what we take", "unsupported_image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9", "image_unreadable"),
    ],
    ids=["bomb", "truncated", "gif", "garbage-jpeg"],
)
def test_bad_input_is_an_invalid_image_with_a_stable_code(data: bytes, code: str) -> None:
    with pytest.raises(InvalidImage) as caught:
        make_derivatives(data)
    assert caught.value.code == code


def test_derivative_keys_follow_the_seed_layout() -> None:
    job_id = "0b8d4c36-3a36-4b56-9f8b-0f1e2d3c4b5a"
    keys = derivative_keys("raw/1234567890-abc123def456.jpg", job_id)
    assert keys == {
        "optimized": "optimized/1234567890-abc123def456-optimized.webp",
        "large": "optimized/1234567890-abc123def456-large.webp",
        "medium": "optimized/1234567890-abc123def456-medium.webp",
        "small": "optimized/1234567890-abc123def456-small.webp",
    }
    gallery = derivative_keys("events/e1/2025-01-31/photos/abcdef0123456789.jpg", job_id)
    assert gallery["optimized"] == f"optimized/{job_id}-optimized.webp"
    assert gallery["small"] == f"optimized/{job_id}-small.webp"


# -- the actor on a live booth -----------------------------------------------------------------

FAST = OptimizerConfig(sweep_interval=0.1, backoff_base=0.05, backoff_max=0.2)


@pytest.fixture
async def live(database_url: str, redis_url: Any, tmp_path: Path) -> AsyncIterator[Live]:
    async with open_live(database_url, redis_url, tmp_path / "data") as booth:
        booth.services.optimizer.reconfigure(FAST)
        yield booth


def capture(live: Live) -> list[GalleryMessage]:
    """Record what the image jobs announce (still passing it on to the broadcaster)."""
    seen: list[GalleryMessage] = []
    passed_on = live.services.image_jobs.announce

    def spy(message: GalleryMessage) -> None:
        seen.append(message)
        passed_on(message)

    live.services.image_jobs.announce = spy
    return seen


async def upload(live: Live, event: dict[str, Any], *images: bytes) -> list[str]:
    files = [("photos", (f"p{n}.jpg", data, "image/jpeg")) for n, data in enumerate(images)]
    r = await live.http.post(f"/events/{event['slug']}/photos", files=files, headers=live.auth)
    assert r.status_code == 201, r.text
    assert not r.json()["errors"], r.text
    return [p["photoId"] for p in r.json()["photos"]]


async def job_of(live: Live, photo_id: str) -> ImageJob:
    [job] = await live.services.image_jobs.list_jobs(entity_type="photo", entity_id=photo_id)
    return job


async def wait_status(live: Live, photo_id: str, *statuses: str, timeout: float = 30) -> ImageJob:
    with trio.fail_after(timeout):
        while True:
            jobs = await live.services.image_jobs.list_jobs(entity_type="photo", entity_id=photo_id)
            if jobs and jobs[0].status in statuses:
                return jobs[0]
            await trio.sleep(0.05)


async def test_a_published_photo_gets_its_derivatives_and_photo_updated(live: Live) -> None:
    seen = capture(live)
    event = await live.event()
    source = exif_jpeg(3000, 2000, orientation=8)
    [photo_id] = await upload(live, event, source)
    job = await wait_status(live, photo_id, "COMPLETED", "FAILED")
    assert job.status == "COMPLETED" and job.error_msg == "", job
    assert job.claimed_by is None and job.processed_at is not None and job.attempts == 1

    photo = await photos.get(live.services.db, photo_id)
    keys = derivative_keys(photo.original_key, job.id)
    assert (photo.optimized_key, photo.thumb_large_key, photo.thumb_medium_key,
            photo.thumb_small_key) == (keys["optimized"], keys["large"], keys["medium"],
                                       keys["small"])  # fmt: skip
    assert job.output_image_key == keys["optimized"]
    assert (photo.width, photo.height) == (2000, 3000)  # display orientation
    assert photo.derivatives_ready_at is not None
    storage = live.services.storage
    for name, long_edge in SIZES.items():
        data = await storage.get(keys[name])
        assert_no_metadata(data)
        with Image.open(io.BytesIO(data)) as img:
            assert max(img.size) == long_edge and img.width < img.height
        # Orientation 8 (90° counter-clockwise): the stored top-left is now bottom-left.
        assert near(quadrant_colors(data)[2], RED)
    # The original is kept as it came, EXIF and all (guests never get it: the gallery serves
    # the derivatives).
    assert await storage.get(photo.original_key) == source

    with trio.fail_after(5):
        while True:
            if [m for m in seen if m.type == "photo:updated"]:
                break
            await trio.sleep(0.02)
    [updated] = [m for m in seen if m.type == "photo:updated"]
    assert updated.event_slug == event["slug"]
    assert updated.data["photo_id"] == photo_id


async def test_bomb_and_truncated_files_fail_their_image_job_not_the_gallery(live: Live) -> None:
    event = await live.event()
    # A truncated JPEG passes the upload's header check; the decoder finds the damage later.
    [truncated_id] = await upload(live, event, exif_jpeg(1600, 1200)[:-4000])
    # A decompression bomb is refused at upload, so put one in as if it had slipped in.
    bomb_key = "events/bombs/2025-01-31/photos/bomb.png"
    await live.services.storage.put(bomb_key, png_bomb(), "image/png")
    bomb, _ = await live.services.publisher.publish(
        photos.NewPhoto(
            event_id=event["id"], source="upload", original_key=bomb_key,
            content_type="image/png", size_bytes=100, sha256="b" * 64,
        )
    )  # fmt: skip
    truncated = await wait_status(live, truncated_id, "COMPLETED", "FAILED")
    bombed = await wait_status(live, bomb.id, "COMPLETED", "FAILED")
    assert truncated.status == "FAILED" and truncated.error_msg.startswith("image_truncated:")
    assert bombed.status == "FAILED" and bombed.error_msg.startswith("image_too_large:")
    assert truncated.processed_at is not None and truncated.claimed_by is None

    for photo_id in (truncated_id, bomb.id):
        photo = await photos.get(live.services.db, photo_id)  # still published
        assert photo.deleted_at is None and photo.optimized_key is None
        assert await live.services.storage.exists(photo.original_key)
    [actor] = [a for a in live.services.supervisor.status() if a.name == "image_optimizer"]
    assert actor.state == "running" and actor.restarts == 0 and actor.last_error is None

    # The optimizer keeps working after them.
    [good] = await upload(live, event, exif_jpeg(800, 600))
    assert (await wait_status(live, good, "COMPLETED", "FAILED")).status == "COMPLETED"


async def test_a_storage_error_leaves_the_job_pending_with_back_off(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = live.services.storage
    real_put = storage.put
    failures = {"left": 2}

    async def flaky_put(key: str, data: bytes, content_type: str) -> None:
        if key.startswith("optimized/") and failures["left"] > 0:
            failures["left"] -= 1
            raise StorageError("bucket timed out")
        await real_put(key, data, content_type)

    monkeypatch.setattr(storage, "put", flaky_put)
    seen_pending: list[ImageJob] = []
    real_defer = live.services.image_jobs.defer

    async def spy_defer(*args: Any, **kwargs: Any) -> ImageJob | None:
        job = await real_defer(*args, **kwargs)
        if job is not None:
            seen_pending.append(job)
        return job

    monkeypatch.setattr(live.services.image_jobs, "defer", spy_defer)
    event = await live.event()
    [photo_id] = await upload(live, event, exif_jpeg(1200, 800))
    job = await wait_status(live, photo_id, "COMPLETED", "FAILED")
    assert job.status == "COMPLETED" and job.attempts == 2 and job.error_msg == ""
    [pending] = seen_pending  # both failed puts were one attempt (the four run at once)
    assert pending.status == "PENDING" and pending.claimed_by is None
    assert pending.error_msg == "storage_unavailable: bucket timed out"
    assert pending.next_attempt_at is not None and pending.next_attempt_at > pending.updated_at


async def test_storage_errors_give_up_after_max_attempts(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    live.services.optimizer.reconfigure(
        OptimizerConfig(sweep_interval=0.05, backoff_base=0.01, backoff_max=0.02, max_attempts=3)
    )

    async def down(key: str, **kwargs: Any) -> bytes:
        raise StorageError("storage is down")

    monkeypatch.setattr(live.services.storage, "get", down)
    event = await live.event()
    [photo_id] = await upload(live, event, exif_jpeg(640, 480))
    job = await wait_status(live, photo_id, "FAILED")
    assert job.attempts == 3
    assert job.error_msg == "storage_unavailable: storage is down (gave up after 3 attempts)"


async def test_the_sweep_takes_back_jobs_left_processing_by_this_booth(live: Live) -> None:
    """As after a kill -9: jobs PROCESSING under our name are redone, another box's are not."""
    db = live.services.db
    # No sweeps while we stage the crash (one would race us): one more pass, then an hour.
    live.services.optimizer.reconfigure(OptimizerConfig(sweep_interval=3600))
    await trio.sleep(0.3)
    mine_key = "events/x/2025-01-31/photos/mine.jpg"
    theirs_key = "events/x/2025-01-31/photos/theirs.jpg"
    data = exif_jpeg(900, 600)
    ids = {}
    for name, key, claimant in (("mine", mine_key, live.services.settings.booth_id),
                                ("theirs", theirs_key, "booth-2")):  # fmt: skip
        await live.services.storage.put(key, data, "image/jpeg")
        job, _ = await live.services.image_jobs.create(
            entity_type="other", entity_id=name, source_image_key=key
        )
        await db.execute(
            "update image_jobs set status = 'PROCESSING', claimed_by = $2 where id = $1",
            job.id, claimant,
        )  # fmt: skip
        ids[name] = job.id
    # What a restarted optimizer does first: sweep.
    assert set(await live.services.image_jobs.runnable_ids(live.services.settings.booth_id)) == {
        ids["mine"]
    }
    done = await live.services.optimizer.process(ids["mine"])
    assert done is not None and done.status == "COMPLETED"
    theirs = await live.services.image_jobs.get(ids["theirs"])
    assert theirs.status == "PROCESSING" and theirs.claimed_by == "booth-2"
    assert await live.services.optimizer.process(ids["theirs"]) is None  # not ours to run


async def test_a_job_deleted_while_rendering_leaves_no_objects_behind(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    live.services.optimizer.reconfigure(OptimizerConfig(sweep_interval=3600))
    await trio.sleep(0.3)
    key = "raw/1700000000000-0123456789ab.jpg"
    await live.services.storage.put(key, exif_jpeg(900, 600), "image/jpeg")
    job, _ = await live.services.image_jobs.create(
        entity_type="event", entity_id="e-1", source_image_key=key
    )
    real_render = live.services.optimizer._render
    rendered, go_on = threading.Event(), threading.Event()

    def render_then_wait(data: bytes) -> Any:
        made = real_render(data)
        rendered.set()
        go_on.wait(60)
        return made

    monkeypatch.setattr(live.services.optimizer, "_render", render_then_wait)
    outcome: list[Any] = []

    async def process() -> None:
        outcome.append(await live.services.optimizer.process(job.id))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(process)
        await trio.to_thread.run_sync(rendered.wait, 60)
        await live.services.image_jobs.delete(job.id)  # while the derivatives are in hand
        go_on.set()
    assert outcome == [None]
    for derivative in derivative_keys(key, job.id).values():
        assert not await live.services.storage.exists(derivative)
    assert not await live.services.storage.exists(key)  # the delete took the raw source too
