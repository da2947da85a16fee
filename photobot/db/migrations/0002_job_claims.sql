-- Which booth process is running a job. A restarted process takes back (requeues) only the
-- jobs it had claimed itself; another box's running jobs are left alone.
alter table jobs add column claimed_by text;
alter table jobs add column claimed_at timestamptz;
create index jobs_claimed on jobs (claimed_by) where status = 'running';
