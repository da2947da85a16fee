-- Booth sessions (issue 4): when the Redis key `activeSession:{boothId}` was last (re)armed, so a
-- session that ends by TTL expiry is recorded as ending at its last activity; at most one open
-- booth session per booth; and an end always comes with its reason.
alter table booth_sessions add column last_refreshed_at timestamptz;
update booth_sessions set last_refreshed_at = coalesce(ended_at, started_at);
alter table booth_sessions alter column last_refreshed_at set not null;
alter table booth_sessions alter column last_refreshed_at set default now();

-- Should any booth have several open rows already, keep its newest open.
update booth_sessions b
   set ended_at = b.last_refreshed_at, end_reason = 'replaced'
 where b.ended_at is null
   and exists (select 1 from booth_sessions n
                where n.booth_id = b.booth_id and n.ended_at is null
                  and (n.started_at, n.id) > (b.started_at, b.id));
update booth_sessions set end_reason = 'stopped' where ended_at is not null and end_reason is null;
update booth_sessions set ended_at = last_refreshed_at where ended_at is null and end_reason is not null;

drop index booth_sessions_open;
create unique index booth_sessions_one_open on booth_sessions (booth_id) where ended_at is null;
alter table booth_sessions
    add constraint booth_sessions_end_has_reason check ((ended_at is null) = (end_reason is null));
