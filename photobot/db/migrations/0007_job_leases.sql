-- A lease on each running job, renewed by the box running it, always on PostgreSQL's clock
-- (the boxes' clocks may disagree). Once it has run out, any box sharing the database takes the
-- job over, so a box that died for good no longer strands its running jobs. NULL is a job
-- claimed by a version without leases: left, as before, to its own box's restart.
alter table jobs add column lease_expires_at timestamptz;
create index jobs_lease on jobs (lease_expires_at) where status = 'running';
-- Jobs running while this is applied get one default lease to be renewed in (a box still on
-- the old version does not renew: upgrade the boxes sharing a database together).
update jobs set lease_expires_at = now() + interval '60 seconds' where status = 'running';
