-- The whole data model of DESIGN.md. PostgreSQL is the source of truth for everything that must
-- survive a restart; Redis only holds what the seeds put there (active booth session, idempotency).
-- Timestamps are timestamptz (UTC). Ids are uuid except where a seed's contract uses integers
-- (clip requests: `{"clip_request_id": 123}`).

-- Events ---------------------------------------------------------------------------------------
create table events (
    id          uuid primary key default gen_random_uuid(),
    slug        text not null unique check (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$'),
    name        text not null check (length(name) between 1 and 200),
    -- default_style, frame_key, branding, fallback_chain, ...: free-form, validated by the app
    settings    jsonb not null default '{}'::jsonb,
    visibility  text not null default 'public' check (visibility in ('public', 'private')),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- Operators (OPERATOR_PASSWORD / OPERATORS_JSON are also accepted; this table is `photobot operator add`)
create table operators (
    id            uuid primary key default gen_random_uuid(),
    username      text not null unique check (length(username) between 1 and 64),
    password_hash text not null,
    role          text not null default 'operator' check (role in ('operator', 'admin')),
    created_at    timestamptz not null default now(),
    disabled_at   timestamptz
);

-- Booths: one box (or one hot folder) at an event -----------------------------------------------
create table booths (
    id          text primary key check (length(id) between 1 and 64),
    event_id    uuid references events(id) on delete set null,
    name        text,
    settings    jsonb not null default '{}'::jsonb,
    created_at  timestamptz not null default now()
);

-- Guest sessions: a registration. `code` is for the operator's lookup only; the guest's own page
-- is addressed by a random token of which only the SHA-256 is stored.
create table guest_sessions (
    id          uuid primary key default gen_random_uuid(),
    event_id    uuid not null references events(id) on delete cascade,
    code        text not null check (code ~ '^[A-Z2-9]{4,10}$'),
    token_hash  bytea not null unique,
    name        text not null check (length(name) between 1 and 100),
    whatsapp    text not null check (whatsapp ~ '^\+[1-9][0-9]{6,14}$'),
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null,
    ended_at    timestamptz,
    client_ip   inet
);
create unique index guest_sessions_event_code on guest_sessions (event_id, code);
create index guest_sessions_expires on guest_sessions (expires_at);

-- Booth sessions: each Pro Capture run (the Redis key is the live copy; this is the record that
-- survives, and the CCTV clip request is cut from its start and end).
create table booth_sessions (
    id          uuid primary key default gen_random_uuid(),
    booth_id    text not null references booths(id) on delete cascade,
    event_id    uuid not null references events(id) on delete cascade,
    session_id  uuid references guest_sessions(id) on delete set null,  -- null: gallery (roaming) mode
    mode        text not null default 'session' check (mode in ('session', 'gallery')),
    style_id    text,
    operator_id text,
    started_at  timestamptz not null default now(),
    ended_at    timestamptz,
    end_reason  text check (end_reason in ('stopped', 'expired', 'replaced'))
);
create index booth_sessions_open on booth_sessions (booth_id) where ended_at is null;

-- Jobs: one accepted photo → exactly one job → exactly one final state ---------------------------
create table jobs (
    id               uuid primary key default gen_random_uuid(),
    event_id         uuid not null references events(id) on delete cascade,
    session_id       uuid references guest_sessions(id) on delete set null,
    parent_job_id    uuid references jobs(id) on delete set null,           -- retry → child job
    booth_id         text,
    operator_id      text,
    source           text not null check (source in ('operator', 'hotfolder', 'retry', 'api')),
    status           text not null default 'queued'
                     check (status in ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    mode             text not null default 'default',
    style_id         text,
    provider         text,                    -- requested (null: the event's chain / the default)
    provider_used    text,                    -- the one that produced the output
    guest_name       text,                    -- snapshot at submit time
    guest_whatsapp   text,
    input_key        text not null,
    input_sha256     text not null check (input_sha256 ~ '^[0-9a-f]{64}$'),
    input_type       text not null,
    input_bytes      bigint not null check (input_bytes >= 0),
    output_keys      text[] not null default '{}',
    best_output_key  text,
    progress_percent smallint not null default 0 check (progress_percent between 0 and 100),
    progress_stage   text not null default 'queued',
    error_code       text,
    error_message    text,
    attempts         integer not null default 0,
    cancel_requested boolean not null default false,
    idempotency_key  text,
    metadata         jsonb not null default '{}'::jsonb,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    check ((status in ('succeeded', 'failed', 'canceled')) = (finished_at is not null))
);
create unique index jobs_idempotency on jobs (idempotency_key) where idempotency_key is not null;
-- The hot folder's guarantee that one photo makes one job, even after Redis forgot the key.
create unique index jobs_hotfolder_once on jobs (coalesce(session_id::text, event_id::text), input_sha256)
    where source = 'hotfolder';
create index jobs_event_created on jobs (event_id, created_at desc, id desc);
create index jobs_session on jobs (session_id, created_at desc);
create index jobs_booth_created on jobs (booth_id, created_at desc) where booth_id is not null;
create index jobs_unfinished on jobs (created_at) where status in ('queued', 'running');

create table job_attempts (
    id                  bigint generated always as identity primary key,
    job_id              uuid not null references jobs(id) on delete cascade,
    attempt             integer not null check (attempt >= 1),
    provider            text not null,
    started_at          timestamptz not null default now(),
    finished_at         timestamptz,
    outcome             text check (outcome in ('succeeded', 'transient_error', 'fatal_error',
                                                'canceled', 'interrupted')),
    error_code          text,
    error_message       text,
    provider_request_id text,
    metadata            jsonb not null default '{}'::jsonb,
    unique (job_id, attempt)
);

-- Photos: what the gallery shows. Published as soon as the original is stored. -----------------
create table photos (
    id               uuid primary key default gen_random_uuid(),
    event_id         uuid not null references events(id) on delete cascade,
    session_id       uuid references guest_sessions(id) on delete set null,
    job_id           uuid unique references jobs(id) on delete set null,
    source           text not null check (source in ('job', 'upload', 'hotfolder')),
    original_key     text not null,
    content_type     text not null,
    size_bytes       bigint not null check (size_bytes >= 0),
    sha256           text check (sha256 ~ '^[0-9a-f]{64}$'),
    width            integer,
    height           integer,
    optimized_key    text,
    thumb_small_key  text,
    thumb_medium_key text,
    thumb_large_key  text,
    derivatives_ready_at timestamptz,
    uploaded_by      text,
    created_at       timestamptz not null default clock_timestamp(),
    deleted_at       timestamptz
);
-- Keyset pagination newest-first on (created_at, id) within an event.
create index photos_event_keyset on photos (event_id, created_at desc, id desc) where deleted_at is null;
create index photos_session on photos (session_id, created_at desc) where session_id is not null;
create unique index photos_hotfolder_once on photos (event_id, sha256) where source = 'hotfolder';

create table photo_likes (
    photo_id    uuid not null references photos(id) on delete cascade,
    device_id   text not null check (length(device_id) between 8 and 128),
    created_at  timestamptz not null default now(),
    primary key (photo_id, device_id)
);

create table photo_comments (
    id          uuid primary key default gen_random_uuid(),
    photo_id    uuid not null references photos(id) on delete cascade,
    device_id   text not null,
    author_name text check (length(author_name) <= 60),
    body        text not null check (length(body) between 1 and 500),
    created_at  timestamptz not null default now(),
    deleted_at  timestamptz
);
create index photo_comments_photo on photo_comments (photo_id, created_at);

-- Image jobs: seed 002's record, one per derivative task (the external Go worker's contract). ---
create table image_jobs (
    id                 uuid primary key default gen_random_uuid(),
    entity_type        text not null check (entity_type in ('event', 'photo', 'report', 'other')),
    entity_id          text not null,
    photo_id           uuid references photos(id) on delete cascade,
    source_image_key   text not null,
    output_image_key   text,
    outputs            jsonb not null default '{}'::jsonb,  -- thumbnail keys by size
    status             text not null default 'PENDING'
                       check (status in ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    error_msg          text not null default '',
    original_filename  text,
    mimetype           text,
    file_size          bigint,
    attempts           integer not null default 0,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    processed_at       timestamptz
);
create index image_jobs_entity on image_jobs (entity_type, entity_id, created_at desc);
create index image_jobs_pending on image_jobs (created_at) where status in ('PENDING', 'PROCESSING');

-- CCTV (seed 003) ------------------------------------------------------------------------------
create table cameras (
    id                 uuid primary key default gen_random_uuid(),
    booth_id           text not null references booths(id) on delete cascade,
    name               text not null default 'camera',
    base_url           text not null,
    track_id           integer not null default 101 check (track_id > 0),
    username           text not null,
    password_encrypted text not null,                -- Fernet under CAMERA_ENCRYPTION_KEY
    -- 'utc': the NVR's `Z` times are UTC; 'local': they are its wall clock (common on Hikvision)
    time_mode          text not null default 'local' check (time_mode in ('utc', 'local')),
    utc_offset_minutes integer,                      -- cached from /ISAPI/System/time
    created_at         timestamptz not null default now(),
    deleted_at         timestamptz
);
create index cameras_booth on cameras (booth_id) where deleted_at is null;

create table clip_requests (
    id              bigint generated always as identity primary key,
    camera_id       uuid not null references cameras(id) on delete cascade,
    session_id      uuid references guest_sessions(id) on delete set null,
    booth_session_id uuid unique references booth_sessions(id) on delete set null,
    start_time      timestamptz not null,
    end_time        timestamptz not null,
    status          text not null default 'PENDING'
                    check (status in ('PENDING', 'READY_FOR_BATCH', 'PROCESSING', 'CLIP_GENERATED', 'FAILED')),
    failure_reason  text,
    attempts        integer not null default 0,
    ready_at        timestamptz not null,            -- end_time + flush delay
    claimed_by      text,
    claimed_at      timestamptz,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    check (end_time > start_time)
);
create index clip_requests_ready on clip_requests (ready_at) where status in ('PENDING', 'READY_FOR_BATCH');
create index clip_requests_session on clip_requests (session_id) where session_id is not null;

create table clips (
    id               uuid primary key default gen_random_uuid(),
    clip_request_id  bigint not null unique references clip_requests(id) on delete cascade,
    storage_key      text not null,
    poster_key       text,
    duration_seconds double precision not null check (duration_seconds >= 0),
    size_bytes       bigint not null check (size_bytes >= 0),
    created_at       timestamptz not null default now()
);
