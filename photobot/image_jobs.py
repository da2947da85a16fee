"""Image jobs (seed 002): one row per "make the optimized images of this picture", and its queue.

The record is the seed's (``image_jobs``: entity, source key, output key, UPPERCASE status
``PENDING`` → ``PROCESSING`` → ``COMPLETED`` | ``FAILED``, error message, original file's name,
type and size, timestamps). Photobot's gallery photos get one image job each (entity type
``photo``); the seed's other entity types (``event``, ``report``, ``other``) are accepted too.

Who does the work (``IMAGE_WORKERS``):

- ``builtin`` (default): :meth:`ImageJobs.notify` sends the id on ``Wiring.optimize`` without
  waiting (a full channel is fine: the row is PENDING and the optimizer's sweep finds it). The
  optimizer (:mod:`actors.optimizer`) claims, renders and calls :meth:`ImageJobs.complete`.
- ``external``: the seed's exact envelope ``{"task_type":"process_image","payload":
  {"imageJobID":"…"}}`` is LPUSHed onto the Redis list ``task_queue`` (through ``Cache.key``,
  so a configured prefix applies). A worker BRPOPs it, reads the job (``GET
  /api/image-jobs/:id``), and reports through ``PATCH /api/image-jobs/:id/status``, i.e.
  :meth:`ImageJobs.transition`. A push that fails (Redis down) leaves ``enqueued_at`` empty and
  the optimizer actor, idle otherwise in this mode, pushes it again on its sweep.

Transitions (:meth:`transition`, refused otherwise with ``Conflict`` ``invalid_transition``):
``PENDING → PROCESSING``; ``PROCESSING → PROCESSING`` (a worker repeating itself);
``PROCESSING → COMPLETED`` (needs the output key, which must exist in storage);
``PENDING | PROCESSING → FAILED``. Back to ``PENDING`` only through :meth:`retry` (from
``FAILED``, or ``PENDING`` to push it again).

Completion (:meth:`complete`, shared by the built-in optimizer and the callback) records the
keys and, for a photo, sets the photo's derivative keys (:func:`photobot.photos.set_derivatives`)
and announces ``photo:updated`` to the event's gallery room through the ``announce`` callback.
An external worker returns a single ``outputImageKey`` (the seed has no thumbnails): it becomes
the photo's ``optimized_key`` and the thumbnail keys are left empty, so the gallery falls back
to the optimized image (or the original) for every size.

Keys (:func:`derivative_keys`): for a seed ``raw/{name}.{ext}`` source the optimized image is
the seed's ``optimized/{name}-optimized.webp``; gallery photos' originals live elsewhere
(``events/…``), so theirs is ``optimized/{imageJobId}-optimized.webp``. Thumbnails sit beside
it: ``…-large.webp``, ``…-medium.webp``, ``…-small.webp``.

Deleting (:meth:`delete`) removes the job's objects, then the row. A photo's original belongs
to the photo and is kept (originals are never deleted by the optimizer's API); its derivatives
are deleted and the photo's derivative keys cleared, so the gallery falls back to the original.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import trio

from actors import GalleryMessage
from photobot import photos
from photobot.cache import Cache
from photobot.db import Database, Record, from_record
from photobot.errors import CacheError, Conflict, InvalidInput, NotFound, PhotobotError
from photobot.events import resolve_event
from photobot.storage import Storage, validate_key
from photobot.storage.keys import optimized_key

log = logging.getLogger("photobot.image_jobs")

Status = Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED"]
STATUSES: tuple[str, ...] = ("PENDING", "PROCESSING", "COMPLETED", "FAILED")
ENTITY_TYPES: tuple[str, ...] = ("event", "photo", "report", "other")
Mode = Literal["builtin", "external"]

#: The seed's Redis list and task type.
TASK_QUEUE = "task_queue"
TASK_TYPE = "process_image"
#: ``claimed_by`` of a job an external worker reported PROCESSING.
EXTERNAL_WORKER = "external"
#: Longest error message stored (worker-supplied messages are cut, not refused).
MAX_ERROR_CHARS = 500

_COLUMNS = (
    "id, entity_type, entity_id, photo_id, source_image_key, output_image_key, outputs, status,"
    " error_msg, original_filename, mimetype, file_size, attempts, created_at, updated_at,"
    " processed_at, claimed_by, claimed_at, next_attempt_at, enqueued_at"
)


@dataclass(frozen=True)
class ImageJob:
    """One ``image_jobs`` row. ``outputs`` maps thumbnail names (``large``, ``medium``,
    ``small``) to keys; ``output_image_key`` is the optimized image (the seed's output)."""

    id: str
    entity_type: str
    entity_id: str
    photo_id: str | None
    source_image_key: str
    output_image_key: str | None
    outputs: dict[str, str]
    status: str
    error_msg: str
    original_filename: str | None
    mimetype: str | None
    file_size: int | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    processed_at: datetime | None
    claimed_by: str | None
    claimed_at: datetime | None
    next_attempt_at: datetime | None
    enqueued_at: datetime | None

    @classmethod
    def from_record(cls, r: Record) -> ImageJob:
        raw = r["outputs"]
        outputs = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        return replace(from_record(cls, r), outputs={str(k): str(v) for k, v in outputs.items()})

    def object_keys(self) -> list[str]:
        """Keys of the outputs stored for this job (optimized image first)."""
        keys = [self.output_image_key] if self.output_image_key else []
        return keys + [k for k in self.outputs.values() if k not in keys]


def parse_id(value: str) -> uuid.UUID:
    """An image job id from a URL; anything that is not a UUID is simply not found."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound("no such image job", code="image_job_not_found") from None


def envelope(image_job_id: str) -> str:
    """The seed's exact queue message, compact as its ``redis-cli LPUSH`` example."""
    return json.dumps(
        {"task_type": TASK_TYPE, "payload": {"imageJobID": image_job_id}}, separators=(",", ":")
    )


def derivative_keys(source_image_key: str, image_job_id: str) -> dict[str, str]:
    """Where the renditions of a job go: ``{"optimized", "large", "medium", "small"} → key``."""
    try:
        base = optimized_key(source_image_key).removesuffix("-optimized.webp")
    except InvalidInput:  # not a seed raw/ key (a gallery photo's original)
        base = f"optimized/{parse_id(image_job_id)}"
    return {
        name: validate_key(f"{base}-{name}.webp")
        for name in ("optimized", "large", "medium", "small")
    }


def announce_on(
    channel: trio.MemorySendChannel[GalleryMessage],
) -> Callable[[GalleryMessage], None]:
    """An ``announce`` callback sending on ``Wiring.publish`` without waiting.

    A full channel drops the message with a log line: guests' pages poll with ``since`` and
    catch up, so an announcement is never worth stalling an image job for.
    """

    def announce(message: GalleryMessage) -> None:
        try:
            channel.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            log.warning(
                "gallery update dropped; polling covers it",
                extra={"photoId": message.data.get("photo_id"), "type": message.type},
            )

    return announce


class ImageJobs:
    """The image-job record, its transitions and its queue (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        cache: Cache,
        storage: Storage,
        mode: Mode,
        optimize: trio.MemorySendChannel[str],
        announce: Callable[[GalleryMessage], None],
    ) -> None:
        if mode not in ("builtin", "external"):
            raise ValueError(f"mode must be 'builtin' or 'external', not {mode!r}")
        self.db = db
        self.cache = cache
        self.storage = storage
        self.mode: Mode = mode
        self._optimize = optimize
        self.announce = announce

    # -- creating and queueing ---------------------------------------------------------------

    async def create(
        self,
        *,
        entity_type: str,
        entity_id: str,
        source_image_key: str,
        photo_id: str | None = None,
        original_filename: str | None = None,
        mimetype: str | None = None,
        file_size: int | None = None,
    ) -> tuple[ImageJob, bool]:
        """Insert a PENDING job (not queued yet: call :meth:`notify`); ``(job, created)``.

        With ``photo_id`` it is idempotent: the photo's existing job is returned instead.
        """
        if entity_type not in ENTITY_TYPES:
            raise InvalidInput(f"entityType must be one of {', '.join(ENTITY_TYPES)}")
        validate_key(source_image_key)
        row = await self.db.fetchrow(
            f"""insert into image_jobs (entity_type, entity_id, photo_id, source_image_key,
                                        original_filename, mimetype, file_size)
                values ($1, $2, $3, $4, $5, $6, $7)
                on conflict (photo_id) where photo_id is not null do nothing
                returning {_COLUMNS}""",
            entity_type,
            entity_id,
            None if photo_id is None else photos.parse_id(photo_id),
            source_image_key,
            original_filename,
            mimetype,
            file_size,
        )
        if row is not None:
            return ImageJob.from_record(row), True
        if photo_id is None:  # pragma: no cover — only the photo index can conflict
            raise Conflict("the image job could not be created", code="image_job_conflict")
        existing = await self.db.fetchrow(
            f"select {_COLUMNS} from image_jobs where photo_id = $1", photos.parse_id(photo_id)
        )
        if existing is None:  # deleted in between: a rare race, surfaced rather than guessed
            raise Conflict("the image job could not be created", code="image_job_conflict")
        return ImageJob.from_record(existing), False

    async def enqueue_for_photo(self, photo: photos.Photo) -> str:
        """Create (or find) the photo's image job and queue it; return its id.

        Never fails because of the queue: a full channel or an unreachable Redis leaves the job
        PENDING for the optimizer's sweep. Database errors propagate.
        """
        job, created = await self.create(
            entity_type="photo",
            entity_id=photo.id,
            photo_id=photo.id,
            source_image_key=photo.original_key,
            original_filename=photo.original_key.rsplit("/", 1)[-1],
            mimetype=photo.content_type,
            file_size=photo.size_bytes,
        )
        if created or job.status == "PENDING":
            await self.notify(job.id)
        if created:
            log.info("image job queued", extra={"imageJobId": job.id, "photoId": photo.id})
        return job.id

    async def notify(self, image_job_id: str) -> None:
        """Hand a PENDING job to whoever does the work (see the module docstring)."""
        if self.mode == "builtin":
            try:
                self._optimize.send_nowait(image_job_id)
            except trio.WouldBlock:
                pass  # the row is PENDING; the optimizer's sweep picks it up
            return
        await self.push(image_job_id)

    async def push(self, image_job_id: str) -> bool:
        """LPUSH the seed's envelope onto ``task_queue`` once, noting when; ``False`` if Redis
        failed (the row stays unpushed for the sweep).

        The row is locked across the LPUSH: a concurrent push of the same job (the upload's
        notify racing the optimizer's sweep, or another box's sweep) waits, then finds
        ``enqueued_at`` set and pushes nothing, so a worker never pops one job twice.
        """
        try:
            async with self.db.transaction() as tx:
                unpushed = await tx.fetchval(
                    """select true from image_jobs
                       where id = $1 and status = 'PENDING' and enqueued_at is null
                       for update""",
                    uuid.UUID(image_job_id),
                )
                if not unpushed:
                    return True  # already pushed by someone else, or no longer waiting
                await self.cache.lpush(TASK_QUEUE, envelope(image_job_id))
                await tx.execute(
                    "update image_jobs set enqueued_at = now() where id = $1",
                    uuid.UUID(image_job_id),
                )
        except CacheError as exc:
            log.warning(
                "image job not pushed; will retry",
                extra={"imageJobId": image_job_id, "error": exc.message},
            )
            return False
        return True

    # -- reading -----------------------------------------------------------------------------

    async def get(self, image_job_id: str) -> ImageJob:
        row = await self.db.fetchrow(
            f"select {_COLUMNS} from image_jobs where id = $1", parse_id(image_job_id)
        )
        if row is None:
            raise NotFound("no such image job", code="image_job_not_found")
        return ImageJob.from_record(row)

    async def list_jobs(
        self,
        *,
        entity_type: str | None = None,
        entity_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[ImageJob]:
        """Newest first, filtered by any of entity type, entity id and status."""
        clauses, args = [], []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if entity_type is not None:
            clauses.append(f"entity_type = {arg(entity_type)}")
        if entity_id is not None:
            clauses.append(f"entity_id = {arg(entity_id)}")
        if status is not None:
            clauses.append(f"status = {arg(status)}")
        where = ("where " + " and ".join(clauses)) if clauses else ""
        rows = await self.db.fetch(
            f"select {_COLUMNS} from image_jobs {where}"
            f" order by created_at desc, id desc limit {arg(limit)}",
            *args,
        )
        return [ImageJob.from_record(r) for r in rows]

    # -- the worker's side -------------------------------------------------------------------

    async def claim(self, image_job_id: str, worker: str) -> ImageJob | None:
        """PENDING (and due) → PROCESSING under ``worker``; also re-takes a job ``worker``
        itself left PROCESSING (a restart). ``None`` when it is not ours to run."""
        row = await self.db.fetchrow(
            f"""update image_jobs set status = 'PROCESSING', claimed_by = $2, claimed_at = now(),
                       attempts = attempts + 1, updated_at = now()
                where id = $1
                  and ((status = 'PENDING'
                        and (next_attempt_at is null or next_attempt_at <= now()))
                       or (status = 'PROCESSING' and claimed_by = $2))
                returning {_COLUMNS}""",
            parse_id(image_job_id),
            worker,
        )
        return None if row is None else ImageJob.from_record(row)

    async def runnable_ids(self, worker: str, limit: int = 200) -> list[str]:
        """For the built-in optimizer's sweep: PENDING jobs that are due, and PROCESSING jobs
        ``worker`` claimed (left behind by a restart or a database blip), oldest first."""
        rows = await self.db.fetch(
            """select id from image_jobs
               where (status = 'PENDING' and (next_attempt_at is null or next_attempt_at <= now()))
                  or (status = 'PROCESSING' and claimed_by = $1)
               order by created_at limit $2""",
            worker,
            limit,
        )
        return [str(r["id"]) for r in rows]

    async def unpushed_ids(self, limit: int = 200) -> list[str]:
        """For external mode: PENDING jobs whose envelope never reached Redis."""
        rows = await self.db.fetch(
            """select id from image_jobs where status = 'PENDING' and enqueued_at is null
               order by created_at limit $1""",
            limit,
        )
        return [str(r["id"]) for r in rows]

    async def defer(
        self, image_job_id: str, worker: str, error_msg: str, delay: float
    ) -> ImageJob | None:
        """PROCESSING (ours) → PENDING again, not before ``delay`` seconds (a storage failure)."""
        row = await self.db.fetchrow(
            f"""update image_jobs set status = 'PENDING', claimed_by = null, claimed_at = null,
                       next_attempt_at = now() + make_interval(secs => $3), error_msg = $4,
                       updated_at = now()
                where id = $1 and status = 'PROCESSING' and claimed_by = $2
                returning {_COLUMNS}""",
            parse_id(image_job_id),
            worker,
            float(delay),
            _clip(error_msg),
        )
        return None if row is None else ImageJob.from_record(row)

    async def fail(
        self, image_job_id: str, error_msg: str, *, worker: str | None = None
    ) -> ImageJob | None:
        """PENDING | PROCESSING → FAILED with a reason (``worker``: only if it holds the job)."""
        row = await self.db.fetchrow(
            f"""update image_jobs set status = 'FAILED', error_msg = $2, processed_at = now(),
                       claimed_by = null, next_attempt_at = null, updated_at = now()
                where id = $1 and status in ('PENDING', 'PROCESSING')
                  and ($3::text is null or claimed_by = $3)
                returning {_COLUMNS}""",
            parse_id(image_job_id),
            _clip(error_msg) or "failed",
            worker,
        )
        if row is None:
            return None
        job = ImageJob.from_record(row)
        log.warning("image job failed", extra={"imageJobId": job.id, "error": job.error_msg})
        return job

    async def complete(
        self,
        image_job_id: str,
        *,
        optimized_key: str,
        large_key: str | None = None,
        medium_key: str | None = None,
        small_key: str | None = None,
        width: int | None = None,
        height: int | None = None,
        worker: str | None = None,
    ) -> ImageJob | None:
        """PROCESSING → COMPLETED with the output keys; then, for a photo, set its derivatives
        and announce ``photo:updated``.

        ``optimized_key`` is the seed's ``outputImageKey``; the thumbnails are optional (an
        external worker makes only the optimized image). ``width``/``height`` are the
        original's display size, stored on the photo when given. With ``worker``, only a job
        that worker holds is completed. ``None`` when the job is gone or not PROCESSING (e.g.
        deleted meanwhile): the caller then owns the objects it uploaded.
        """
        outputs = {
            name: key
            for name, key in (("large", large_key), ("medium", medium_key), ("small", small_key))
            if key is not None
        }
        photo: photos.Photo | None = None
        # One transaction: a job is never COMPLETED without its photo knowing the keys.
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"""update image_jobs set status = 'COMPLETED', output_image_key = $2,
                           outputs = $3::jsonb, error_msg = '', processed_at = now(),
                           claimed_by = null, next_attempt_at = null, updated_at = now()
                    where id = $1 and status = 'PROCESSING'
                      and ($4::text is null or claimed_by = $4)
                    returning {_COLUMNS}""",
                parse_id(image_job_id),
                validate_key(optimized_key),
                json.dumps(outputs),
                worker,
            )
            if row is None:
                return None
            job = ImageJob.from_record(row)
            if job.photo_id is not None:
                try:
                    photo = await photos.set_derivatives(
                        tx,  # type: ignore[arg-type]  # same query methods as Database
                        job.photo_id,
                        optimized_key=optimized_key,
                        large_key=large_key,
                        medium_key=medium_key,
                        small_key=small_key,
                        width=width,
                        height=height,
                    )
                except NotFound:
                    photo = None  # the photo went away meanwhile (its job row goes with it)
        log.info("image job completed", extra={"imageJobId": job.id, "photoId": job.photo_id})
        if photo is not None:
            try:
                await self._announce_update(photo)
            except PhotobotError as exc:  # done all the same: polling shows the update
                log.warning(
                    "photo:updated not announced", extra={"photoId": photo.id, "error": exc.message}
                )
        return job

    async def _announce_update(self, photo: photos.Photo) -> None:
        if photo.deleted_at is not None:
            return
        event = await resolve_event(self.db, photo.event_id)
        if event.visibility != "public":
            return  # as Publisher: only public galleries are announced
        self.announce(
            GalleryMessage(
                event.slug, "photo:updated", {"photo_id": photo.id, "event_slug": event.slug}
            )
        )

    # -- the API's side ----------------------------------------------------------------------

    async def transition(
        self,
        image_job_id: str,
        status: str,
        *,
        output_image_key: str | None = None,
        error_msg: str | None = None,
    ) -> ImageJob:
        """Apply a worker's status report (``PATCH /api/image-jobs/:id/status``).

        ``status`` is matched case-insensitively (the seed's Go sample sends lowercase) and
        stored UPPERCASE. Raises ``NotFound``, ``InvalidInput`` (unknown status, missing or
        absent output key) or ``Conflict`` ``invalid_transition``.
        """
        wanted = status.strip().upper() if isinstance(status, str) else ""
        if wanted not in STATUSES:
            raise InvalidInput(
                "status must be PROCESSING, COMPLETED or FAILED", code="invalid_status"
            )
        job_uuid = parse_id(image_job_id)
        if wanted == "PENDING":
            current = await self.get(image_job_id)
            raise self._refused(current.status, wanted, " (use POST /api/image-jobs/:id/retry)")
        if wanted == "PROCESSING":
            row = await self.db.fetchrow(
                f"""update image_jobs set status = 'PROCESSING', claimed_by = $2,
                           claimed_at = coalesce(claimed_at, now()), updated_at = now(),
                           attempts = attempts + (status = 'PENDING')::int
                    where id = $1 and (status = 'PENDING'
                                       or (status = 'PROCESSING' and claimed_by = $2))
                    returning {_COLUMNS}""",
                job_uuid,
                EXTERNAL_WORKER,
            )
            if row is not None:
                return ImageJob.from_record(row)
        elif wanted == "COMPLETED":
            if not isinstance(output_image_key, str) or not output_image_key:
                raise InvalidInput(
                    "outputImageKey is required with COMPLETED", code="missing_field"
                )
            validate_key(output_image_key)
            current = await self.get(image_job_id)
            if current.status != "PROCESSING":
                raise self._refused(current.status, wanted)
            if output_image_key == current.source_image_key or not output_image_key.startswith(
                "optimized/"
            ):
                # The output becomes what guests download: never the source (a camera
                # original may carry GPS), and a later DELETE must not take the source with it.
                raise InvalidInput(
                    "outputImageKey must be a new object under optimized/, not the source",
                    code="invalid_output_key",
                )
            if not await self.storage.exists(output_image_key):
                raise InvalidInput(
                    f"outputImageKey {output_image_key!r} is not in storage; upload it first",
                    code="output_missing",
                )
            done = await self.complete(image_job_id, optimized_key=output_image_key)
            if done is not None:
                return done
        else:  # FAILED
            failed = await self.fail(image_job_id, (error_msg or "").strip() or "failed")
            if failed is not None:
                return failed
        current = await self.get(image_job_id)
        raise self._refused(current.status, wanted)

    @staticmethod
    def _refused(current: str, wanted: str, hint: str = "") -> Conflict:
        return Conflict(
            f"cannot change an image job from {current} to {wanted}{hint}",
            code="invalid_transition",
        )

    async def retry(self, image_job_id: str) -> ImageJob:
        """FAILED (or PENDING) → PENDING with the error cleared, and queued again."""
        row = await self.db.fetchrow(
            f"""update image_jobs set status = 'PENDING', error_msg = '', processed_at = null,
                       claimed_by = null, claimed_at = null, next_attempt_at = null,
                       enqueued_at = null, updated_at = now()
                where id = $1 and status in ('FAILED', 'PENDING')
                returning {_COLUMNS}""",
            parse_id(image_job_id),
        )
        if row is None:
            current = await self.get(image_job_id)
            raise Conflict(
                f"only a FAILED image job can be retried; this one is {current.status}",
                code="invalid_transition",
            )
        job = ImageJob.from_record(row)
        await self.notify(job.id)
        log.info("image job retried", extra={"imageJobId": job.id})
        return job

    async def delete(self, image_job_id: str) -> ImageJob:
        """Delete the job's objects, then the row (see the module docstring for photos).

        Storage errors propagate with the row kept, so the delete can simply be repeated.
        A job still PROCESSING in the built-in optimizer finds its row gone and removes what
        it uploads.
        """
        job = await self.get(image_job_id)
        keys = job.object_keys()
        if job.photo_id is None:
            keys.insert(0, job.source_image_key)
        else:
            await self.db.execute(
                """update photos set optimized_key = null, thumb_small_key = null,
                          thumb_medium_key = null, thumb_large_key = null,
                          derivatives_ready_at = null
                   where id = $1 and optimized_key = $2""",
                uuid.UUID(job.photo_id),
                job.output_image_key,
            )
        for key in keys:
            await self.storage.delete(key)
        await self.db.execute("delete from image_jobs where id = $1", uuid.UUID(job.id))
        log.info("image job deleted", extra={"imageJobId": job.id, "objects": len(keys)})
        return job


def _clip(message: str) -> str:
    # One printable line: a worker's message may hold newlines or NUL (PostgreSQL refuses it).
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(message)).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


__all__ = [
    "ENTITY_TYPES",
    "EXTERNAL_WORKER",
    "STATUSES",
    "TASK_QUEUE",
    "TASK_TYPE",
    "ImageJob",
    "ImageJobs",
    "announce_on",
    "derivative_keys",
    "envelope",
    "parse_id",
]
