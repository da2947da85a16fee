"""Cameras, clip requests and clips in PostgreSQL (seed 003's packing items and mini clips).

A **camera** belongs to a booth: the NVR's base URL, the track (channel * 100 + stream), the
username, and the password encrypted with Fernet under ``CAMERA_ENCRYPTION_KEY`` (or the box's
own generated key). The password is decrypted only to talk to the NVR; it is in no API answer
and no log line.

A **clip request** names a camera and a time range, optionally a guest session. Its status:

``PENDING`` → ``READY_FOR_BATCH`` (once ``ready_at`` = end + flush delay has passed: the NVR
writes its recordings a little late) → ``PROCESSING`` (claimed by one box: ``claimed_by``) →
``CLIP_GENERATED`` (a ``clips`` row exists) or ``FAILED`` (``failure_reason``).

Every booth session that ends (Stop Capture, replaced, or TTL expiry) gets a clip request for
its booth's camera, covering its start to end with padding: :meth:`ClipStore.reconcile` derives
them from ``booth_sessions`` (the unique ``booth_session_id`` makes that idempotent, so a crash
between the end of a session and its request loses nothing). Gallery-mode sessions (no guest)
get none.

Claiming uses ``FOR UPDATE SKIP LOCKED``: two boxes sharing the database never take the same
request. A box that stops mid-way puts its requests back (``release``); one that died has them
put back when it starts again (``recover``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken

from photobot.db import Database, Record
from photobot.errors import ConfigError, Conflict, InvalidInput, NotFound

STATUSES = ("PENDING", "READY_FOR_BATCH", "PROCESSING", "CLIP_GENERATED", "FAILED")
TimeMode = Literal["utc", "local"]
#: The longest clip a request may ask for (an NVR download of hours would fill the disk).
MAX_CLIP = timedelta(hours=2)


class CameraKey:
    """Fernet encryption of camera passwords."""

    def __init__(self, key: bytes | str) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise ConfigError(
                "CAMERA_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64-encoded bytes)"
            ) from None

    def encrypt(self, password: str) -> str:
        return self._fernet.encrypt(password.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "a camera password cannot be decrypted: CAMERA_ENCRYPTION_KEY changed"
            ) from None


@dataclass(frozen=True)
class Camera:
    id: str
    booth_id: str
    name: str
    base_url: str
    track_id: int
    username: str
    password_encrypted: str
    time_mode: TimeMode
    utc_offset_minutes: int | None
    created_at: datetime

    @classmethod
    def from_record(cls, r: Record) -> Camera:
        return cls(
            id=str(r["id"]),
            booth_id=r["booth_id"],
            name=r["name"],
            base_url=r["base_url"],
            track_id=r["track_id"],
            username=r["username"],
            password_encrypted=r["password_encrypted"],
            time_mode=r["time_mode"],
            utc_offset_minutes=r["utc_offset_minutes"],
            created_at=r["created_at"],
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "boothId": self.booth_id,
            "name": self.name,
            "baseUrl": self.base_url,
            "trackId": self.track_id,
            "username": self.username,
            "timeMode": self.time_mode,
            "utcOffsetMinutes": self.utc_offset_minutes,
            "createdAt": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class ClipRequest:
    id: int
    camera_id: str
    session_id: str | None
    booth_session_id: str | None
    start_time: datetime
    end_time: datetime
    status: str
    failure_reason: str | None
    attempts: int
    ready_at: datetime
    claimed_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_record(cls, r: Record) -> ClipRequest:
        return cls(
            id=r["id"],
            camera_id=str(r["camera_id"]),
            session_id=None if r["session_id"] is None else str(r["session_id"]),
            booth_session_id=None if r["booth_session_id"] is None else str(r["booth_session_id"]),
            start_time=r["start_time"],
            end_time=r["end_time"],
            status=r["status"],
            failure_reason=r["failure_reason"],
            attempts=r["attempts"],
            ready_at=r["ready_at"],
            claimed_by=r["claimed_by"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cameraId": self.camera_id,
            "sessionId": self.session_id,
            "boothSessionId": self.booth_session_id,
            "startTime": self.start_time.isoformat(),
            "endTime": self.end_time.isoformat(),
            "status": self.status,
            "failureReason": self.failure_reason,
            "attempts": self.attempts,
            "readyAt": self.ready_at.isoformat(),
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Clip:
    id: str
    clip_request_id: int
    storage_key: str
    poster_key: str | None
    duration_seconds: float
    size_bytes: int
    created_at: datetime

    @classmethod
    def from_record(cls, r: Record) -> Clip:
        return cls(
            id=str(r["id"]),
            clip_request_id=r["clip_request_id"],
            storage_key=r["storage_key"],
            poster_key=r["poster_key"],
            duration_seconds=r["duration_seconds"],
            size_bytes=r["size_bytes"],
            created_at=r["created_at"],
        )


_REQUEST_COLUMNS = (
    "id, camera_id, session_id, booth_session_id, start_time, end_time, status, failure_reason,"
    " attempts, ready_at, claimed_by, created_at, updated_at"
)
_CAMERA_COLUMNS = (
    "id, booth_id, name, base_url, track_id, username, password_encrypted, time_mode,"
    " utc_offset_minutes, created_at"
)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} not found", code=f"{what.replace(' ', '_')}_not_found") from None


class ClipStore:
    """The CCTV tables. ``padding`` widens automatic requests on both sides; ``flush_delay`` is
    how long after a request's end its recordings are assumed complete on the NVR."""

    def __init__(self, db: Database, key: CameraKey, *, padding: float, flush_delay: float) -> None:
        self.db = db
        self.key = key
        self.padding = timedelta(seconds=padding)
        self.flush_delay = timedelta(seconds=flush_delay)

    # -- cameras -------------------------------------------------------------------------------

    async def add_camera(self, *, booth_id: str, name: str, base_url: str, track_id: int,
                         username: str, password: str, time_mode: TimeMode) -> Camera:  # fmt: skip
        encrypted = self.key.encrypt(password)
        async with self.db.transaction() as tx:
            await tx.execute(
                "insert into booths (id) values ($1) on conflict (id) do nothing", booth_id
            )
            row = await tx.fetchrow(
                f"insert into cameras (booth_id, name, base_url, track_id, username,"
                f" password_encrypted, time_mode) values ($1, $2, $3, $4, $5, $6, $7)"
                f" returning {_CAMERA_COLUMNS}",
                booth_id, name, base_url, track_id, username, encrypted, time_mode,
            )  # fmt: skip
        assert row is not None
        return Camera.from_record(row)

    async def cameras(self, booth_id: str | None = None) -> list[Camera]:
        rows = await self.db.fetch(
            f"select {_CAMERA_COLUMNS} from cameras where deleted_at is null"
            " and ($1::text is null or booth_id = $1) order by created_at, id",
            booth_id,
        )
        return [Camera.from_record(r) for r in rows]

    async def camera(self, camera_id: str) -> Camera:
        row = await self.db.fetchrow(
            f"select {_CAMERA_COLUMNS} from cameras where id = $1 and deleted_at is null",
            _uuid(camera_id, "camera"),
        )
        if row is None:
            raise NotFound("camera not found", code="camera_not_found")
        return Camera.from_record(row)

    async def remove_camera(self, camera_id: str) -> None:
        done = await self.db.execute(
            "update cameras set deleted_at = now() where id = $1 and deleted_at is null",
            _uuid(camera_id, "camera"),
        )
        if done.endswith(" 0"):
            raise NotFound("camera not found", code="camera_not_found")

    async def remember_offset(self, camera_id: str, minutes: int) -> None:
        await self.db.execute(
            "update cameras set utc_offset_minutes = $2 where id = $1",
            uuid.UUID(camera_id),
            minutes,
        )

    def password(self, camera: Camera) -> str:
        return self.key.decrypt(camera.password_encrypted)

    # -- clip requests -------------------------------------------------------------------------

    async def create_request(self, camera_id: str, start: datetime, end: datetime,
                             session_id: str | None = None) -> ClipRequest:  # fmt: skip
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInput("start and end need a time zone (e.g. …Z)", code="invalid_time")
        if end <= start:
            raise InvalidInput("end must be after start", code="invalid_time")
        if end - start > MAX_CLIP:
            raise InvalidInput("a clip may be at most 2 hours long", code="invalid_time")
        camera = await self.camera(camera_id)
        sid = None if session_id is None else _uuid(session_id, "session")
        if sid is not None and not await self.db.fetchval(
            "select 1 from guest_sessions where id = $1", sid
        ):
            raise NotFound("session not found", code="session_not_found")
        row = await self.db.fetchrow(
            f"insert into clip_requests (camera_id, session_id, start_time, end_time, ready_at,"
            f" status) values ($1, $2, $3, $4, $5,"
            f" case when $5 <= now() then 'READY_FOR_BATCH' else 'PENDING' end)"
            f" returning {_REQUEST_COLUMNS}",
            uuid.UUID(camera.id), sid, start, end, end + self.flush_delay,
        )  # fmt: skip
        assert row is not None
        return ClipRequest.from_record(row)

    async def request(self, request_id: int) -> ClipRequest:
        row = await self.db.fetchrow(
            f"select {_REQUEST_COLUMNS} from clip_requests where id = $1", request_id
        )
        if row is None:
            raise NotFound("clip request not found", code="clip_request_not_found")
        return ClipRequest.from_record(row)

    async def requests(self, *, status: str | None = None, camera_id: str | None = None,
                       session_id: str | None = None, limit: int = 50,
                       before_id: int | None = None) -> list[ClipRequest]:  # fmt: skip
        rows = await self.db.fetch(
            f"select {_REQUEST_COLUMNS} from clip_requests"
            " where ($1::text is null or status = $1) and ($2::uuid is null or camera_id = $2)"
            " and ($3::uuid is null or session_id = $3) and ($5::bigint is null or id < $5)"
            " order by id desc limit $4",
            status,
            None if camera_id is None else _uuid(camera_id, "camera"),
            None if session_id is None else _uuid(session_id, "session"),
            limit,
            before_id,
        )
        return [ClipRequest.from_record(r) for r in rows]

    async def reconcile(self) -> int:
        """Create the missing requests for ended booth sessions, and mark the requests whose
        ``ready_at`` has passed ``READY_FOR_BATCH``. Returns how many became ready."""
        pad = self.padding
        await self.db.execute(
            "insert into clip_requests (camera_id, session_id, booth_session_id, start_time,"
            " end_time, ready_at)"
            " select cam.id, bs.session_id, bs.id, bs.started_at - $1::interval,"
            "        bs.ended_at + $1::interval, bs.ended_at + $1::interval + $2::interval"
            "   from booth_sessions bs"
            "   join lateral (select id, created_at from cameras c where c.booth_id = bs.booth_id"
            "                   and c.deleted_at is null order by c.created_at, c.id limit 1) cam"
            "     on true"
            "  where bs.ended_at is not null and bs.session_id is not null"
            "    and not exists (select 1 from clip_requests r where r.booth_session_id = bs.id)"
            "    and bs.ended_at > bs.started_at and bs.ended_at >= cam.created_at"
            "    and bs.ended_at - bs.started_at <= $3::interval"
            " on conflict (booth_session_id) do nothing",
            pad, self.flush_delay, MAX_CLIP,
        )  # fmt: skip
        done = await self.db.execute(
            "update clip_requests set status = 'READY_FOR_BATCH', updated_at = now()"
            " where status = 'PENDING' and ready_at <= now()"
        )
        return int(done.rsplit(" ", 1)[1])

    async def claim_batch(self, worker: str, limit: int) -> list[ClipRequest]:
        rows = await self.db.fetch(
            "update clip_requests set status = 'PROCESSING', claimed_by = $1, claimed_at = now(),"
            " attempts = attempts + 1, updated_at = now()"
            " where id in (select id from clip_requests where status = 'READY_FOR_BATCH'"
            "              order by ready_at, id limit $2 for update skip locked)"
            f" returning {_REQUEST_COLUMNS}",
            worker,
            limit,
        )
        return sorted((ClipRequest.from_record(r) for r in rows), key=lambda r: r.ready_at)

    async def claim(self, worker: str, request_id: int) -> ClipRequest | None:
        """Claim one request (a manual trigger); None when it is not ready or already taken."""
        row = await self.db.fetchrow(
            "update clip_requests set status = 'PROCESSING', claimed_by = $1, claimed_at = now(),"
            " attempts = attempts + 1, updated_at = now()"
            " where id = (select id from clip_requests where id = $2"
            "             and status = 'READY_FOR_BATCH' for update skip locked)"
            f" returning {_REQUEST_COLUMNS}",
            worker,
            request_id,
        )
        return None if row is None else ClipRequest.from_record(row)

    async def trigger(self, request_id: int, now: datetime) -> ClipRequest:
        """Make a request ready at once (``POST /trigger``): a ``FAILED`` one is tried again, a
        ``PENDING`` one whose end has passed skips the rest of its flush delay.

        Raises NotFound, or InvalidInput ``not_ready`` (still recording, being processed, or
        done)."""
        row = await self.db.fetchrow(
            "update clip_requests set status = 'READY_FOR_BATCH', failure_reason = null,"
            " updated_at = now() where id = $1 and (status in ('READY_FOR_BATCH', 'FAILED')"
            " or (status = 'PENDING' and end_time <= $2))"
            f" returning {_REQUEST_COLUMNS}",
            request_id,
            now,
        )
        if row is not None:
            return ClipRequest.from_record(row)
        current = await self.request(request_id)  # NotFound when there is none
        why = {
            "PENDING": "its time range has not ended yet",
            "PROCESSING": "it is being processed",
            "CLIP_GENERATED": "its clip is already made",
        }.get(current.status, current.status)
        raise InvalidInput(f"clip request {request_id} is not ready: {why}", code="not_ready")

    async def release(self, request_id: int, worker: str) -> None:
        """Put a request this box was processing back in the queue (stopping, cancelled)."""
        await self.db.execute(
            "update clip_requests set status = 'READY_FOR_BATCH', claimed_by = null,"
            " claimed_at = null, updated_at = now()"
            " where id = $1 and status = 'PROCESSING' and claimed_by = $2",
            request_id,
            worker,
        )

    async def requeue_mine(self, worker: str, *, holding: list[int]) -> int:
        """Put back this box's ``PROCESSING`` requests other than ``holding`` (the ones it is
        working on): one whose final state could not be written stays no longer than a tick."""
        done = await self.db.execute(
            "update clip_requests set status = 'READY_FOR_BATCH', claimed_by = null,"
            " claimed_at = null, updated_at = now()"
            " where status = 'PROCESSING' and claimed_by = $1 and not (id = any($2::bigint[]))",
            worker,
            holding,
        )
        return int(done.rsplit(" ", 1)[1])

    async def recover(self, worker: str) -> int:
        """At start: this box's requests left ``PROCESSING`` by a crash go back in the queue."""
        done = await self.db.execute(
            "update clip_requests set status = 'READY_FOR_BATCH', claimed_by = null,"
            " claimed_at = null, updated_at = now()"
            " where status = 'PROCESSING' and claimed_by = $1",
            worker,
        )
        return int(done.rsplit(" ", 1)[1])

    async def fail(self, request_id: int, worker: str, reason: str) -> None:
        await self.db.execute(
            "update clip_requests set status = 'FAILED', failure_reason = $3, updated_at = now()"
            " where id = $1 and claimed_by = $2 and status = 'PROCESSING'",
            request_id,
            worker,
            reason[:1000],
        )

    async def complete(self, request_id: int, worker: str, *, storage_key: str, poster_key: str,
                       duration: float, size: int) -> Clip:  # fmt: skip
        """Mark the request ``CLIP_GENERATED`` and record its clip, in one transaction.

        Only while the request is still ``worker``'s and PROCESSING: otherwise (another run
        took it back meanwhile) nothing is written and :class:`Conflict` ``clip_request_lost``
        is raised, so the caller removes what it uploaded instead of overwriting a clip.
        """
        async with self.db.transaction() as tx:
            ours = await tx.fetchval(
                "update clip_requests set status = 'CLIP_GENERATED', failure_reason = null,"
                " updated_at = now() where id = $1 and claimed_by = $2 and status = 'PROCESSING'"
                " returning id",
                request_id,
                worker,
            )
            if ours is None:
                raise Conflict(
                    f"clip request {request_id} is no longer being made by this box",
                    code="clip_request_lost",
                )
            row = await tx.fetchrow(
                "insert into clips (clip_request_id, storage_key, poster_key, duration_seconds,"
                " size_bytes) values ($1, $2, $3, $4, $5)"
                " on conflict (clip_request_id) do update set storage_key = excluded.storage_key,"
                " poster_key = excluded.poster_key, duration_seconds = excluded.duration_seconds,"
                " size_bytes = excluded.size_bytes"
                " returning id, clip_request_id, storage_key, poster_key, duration_seconds,"
                " size_bytes, created_at",
                request_id, storage_key, poster_key, duration, size,
            )  # fmt: skip
        assert row is not None
        return Clip.from_record(row)

    async def clip_of(self, request_id: int) -> Clip | None:
        row = await self.db.fetchrow(
            "select id, clip_request_id, storage_key, poster_key, duration_seconds, size_bytes,"
            " created_at from clips where clip_request_id = $1",
            request_id,
        )
        return None if row is None else Clip.from_record(row)

    async def clips_of_session(self, session_id: str) -> list[Clip]:
        rows = await self.db.fetch(
            "select c.id, c.clip_request_id, c.storage_key, c.poster_key, c.duration_seconds,"
            " c.size_bytes, c.created_at from clips c join clip_requests r"
            " on r.id = c.clip_request_id where r.session_id = $1"
            " order by c.created_at desc limit 20",
            uuid.UUID(session_id),
        )
        return [Clip.from_record(r) for r in rows]
