"""Publishing a photo to its event's gallery: the row first, then the announcement, then the
derivative work.

Seed 004: a photo is published as soon as its original is stored — no approval, no waiting for
thumbnails. Order matters for "nothing lost": the ``photos`` row is the publication (the gallery
API and polling read it); the websocket announcement (``photo:upload:complete`` on
``Wiring.publish``) is best effort, since a guest who misses it catches up by polling ``since``;
the image job is a durable row its optimizer sweeps, so derivatives follow even after a crash.

Sources: a succeeded job's best output (the pool calls :meth:`Publisher.publish_job`; jobs that
succeeded without a photo — a crash in between — are published by :meth:`recover`), an
operator's upload, and a hot folder bound to the gallery.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from actors import GalleryMessage
from photobot import jobs, photos
from photobot.db import Database
from photobot.errors import PhotobotError
from photobot.events import resolve_event

log = logging.getLogger("photobot.gallery")


class DerivativeQueue(Protocol):
    async def enqueue_for_photo(self, photo: photos.Photo) -> str: ...


class Publisher:
    def __init__(
        self,
        db: Database,
        announce: trio.MemorySendChannel[GalleryMessage],
        derivatives: DerivativeQueue | None = None,
    ) -> None:
        self.db = db
        self._announce = announce
        #: Set by the composition root once the image job queue exists.
        self.derivatives = derivatives

    async def publish(self, new: photos.NewPhoto) -> tuple[photos.Photo, bool]:
        """Store the photo row and announce it; ``(photo, created)`` (idempotent per source)."""
        photo, created = await photos.insert(self.db, new)
        if not created:
            # A redo (retried upload, the same file again, a crash after the insert): the
            # announcement is not repeated, but the derivative work is made sure of — it is
            # idempotent, and the first attempt may have died before queuing it.
            if self.derivatives is not None:
                await self.derivatives.enqueue_for_photo(photo)
            return photo, False
        event = await resolve_event(self.db, photo.event_id)
        if event.visibility == "public":
            message = GalleryMessage(
                event.slug,
                "photo:upload:complete",
                {
                    "photo_id": photo.id,
                    "event_slug": event.slug,
                    "created_at": photo.created_at.isoformat(),
                },
            )
            try:
                self._announce.send_nowait(message)
            except trio.WouldBlock:
                log.warning("gallery announcement dropped", extra={"photoId": photo.id})
        if self.derivatives is not None:
            await self.derivatives.enqueue_for_photo(photo)
        log.info("photo published", extra={"photoId": photo.id, "source": photo.source})
        return photo, True

    async def publish_job(self, job: jobs.Job, size_bytes: int, content_type: str) -> photos.Photo:
        """The job's best output becomes the gallery photo (once per job)."""
        assert job.best_output_key is not None
        photo, _ = await self.publish(
            photos.NewPhoto(
                event_id=job.event_id,
                source="job",
                original_key=job.best_output_key,
                content_type=content_type,
                size_bytes=size_bytes,
                session_id=job.session_id,
                job_id=job.id,
            )
        )
        return photo

    async def recover(self, storage_size: StorageSize) -> int:
        """Publish succeeded jobs that have no photo yet (the process died in between)."""
        rows = await self.db.fetch(
            """select j.id from jobs j
               where j.status = 'succeeded' and j.best_output_key is not null
                 and not exists (select 1 from photos p where p.job_id = j.id)
               order by j.finished_at limit 1000"""
        )
        done = 0
        for row in rows:
            job = await jobs.get(self.db, str(row["id"]))
            assert job.best_output_key is not None
            try:
                size = await storage_size(job.best_output_key)
                await self.publish_job(job, size, _content_type(job.best_output_key))
            except PhotobotError as exc:  # one bad row must not stop the others (or the pool)
                log.warning(
                    "job output not published", extra={"jobId": job.id, "error": exc.message}
                )
                continue
            done += 1
        return done


class StorageSize(Protocol):
    async def __call__(self, key: str) -> int: ...


def _content_type(key: str) -> str:
    ext = key.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "webp": "image/webp"}.get(ext, "image/jpeg")
