-- Image jobs (seed 002) run by the built-in optimizer or by external workers.
-- claimed_by / claimed_at: which booth process is working on a PROCESSING job ('external' for a
--   worker that reported PROCESSING through the callback); a restarted process takes back only
--   the jobs it had claimed itself.
-- next_attempt_at: a PENDING job put back after a storage failure waits until then (back-off).
-- enqueued_at: when the seed's envelope was last pushed onto the Redis list task_queue
--   (IMAGE_WORKERS=external); PENDING jobs never pushed (Redis was down) are pushed again.
-- One image job per photo: publishing a photo twice (recovery after a crash) reuses it.
alter table image_jobs add column claimed_by text;
alter table image_jobs add column claimed_at timestamptz;
alter table image_jobs add column next_attempt_at timestamptz;
alter table image_jobs add column enqueued_at timestamptz;
create unique index image_jobs_one_per_photo on image_jobs (photo_id) where photo_id is not null;
create index image_jobs_claimed on image_jobs (claimed_by) where status = 'PROCESSING';
