-- Background Agent schema for the embedded engine (`bgagent dev`): the same tables as the
-- PostgreSQL schema one directory up, in SQLite's types. One process owns the file.
--
-- Types: ids are 16-byte UUID blobs (v7 ids sort by time bytewise, so `order by id desc` is
-- newest first); times are integer microseconds since the Unix epoch, UTC, written by the
-- process (its clock is the store's clock); JSON is text; booleans are 0/1. STRICT tables refuse
-- a value of the wrong type instead of storing it as something else.

create table tasks (
    id               blob primary key not null check (length(id) = 16),
    agent            text not null,
    command          text not null,
    meta             text not null default '{}',
    status           text not null default 'queued'
                     check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         integer not null default 0,
    max_attempts     integer not null default 5 check (max_attempts between 1 and 100),
    timeout_secs     integer not null default 300 check (timeout_secs > 0),
    idempotency_key  text unique,
    run_at           integer not null,
    -- null = not (yet) in the queue for its current run; the relay publishes such rows.
    published_at     integer,
    worker_id        text,
    lease_until      integer,
    result           text,
    last_error       text,
    -- set when a cancel arrives while a worker runs the task; the worker records `cancelled`.
    cancel_requested integer not null default 0 check (cancel_requested in (0, 1)),
    created_at       integer not null,
    started_at       integer,
    finished_at      integer,
    updated_at       integer not null
) strict;

-- GET /tasks?status=… and ?agent=… , newest first.
create index tasks_status_id_idx on tasks (status, id desc);
create index tasks_agent_id_idx on tasks (agent, id desc);
-- The relay's scan: due and unpublished. Partial, so it stays small however many tasks finished.
create index tasks_unpublished_idx on tasks (run_at) where status = 'queued' and published_at is null;
-- The reaper's scan: running tasks by lease.
create index tasks_running_lease_idx on tasks (lease_until) where status = 'running';

-- No foreign key to tasks: as in PostgreSQL, attempts are written only by the statements that
-- update their task, so they always name an existing task.
create table task_attempts (
    -- autoincrement: ids are never reused, so newest-first paging by id stays stable.
    id          integer primary key autoincrement,
    task_id     blob not null,
    attempt     integer not null,
    agent       text not null,
    worker_id   text,
    outcome     text not null
                check (outcome in ('succeeded', 'failed', 'retry', 'timeout', 'cancelled')),
    error       text,
    started_at  integer not null,
    finished_at integer not null,
    -- one record per attempt: the fenced result write cannot be doubled by a redelivery.
    unique (task_id, attempt)
) strict;

create table agents (
    name       text primary key not null,
    endpoint   text not null,
    meta       text not null default '{}',
    created_at integer not null,
    updated_at integer not null
) strict;

create table workers (
    id         text primary key not null,
    host       text not null,
    version    text not null,
    started_at integer not null,
    last_seen  integer not null,
    paused     integer not null default 0 check (paused in (0, 1)),
    in_flight  integer not null default 0,
    processed  integer not null default 0,
    stopped_at integer
) strict;

create index workers_last_seen_idx on workers (last_seen);

-- The fleet's paused state and the broker epoch: exactly one row, so readers never see
-- "no state".
create table control (
    id           integer primary key not null default 1 check (id = 1),
    paused       integer not null default 0 check (paused in (0, 1)),
    changed_by   text not null default 'migration',
    changed_at   integer not null,
    broker_epoch blob check (broker_epoch is null or length(broker_epoch) = 16)
) strict;

insert into control (id, changed_at) values (1, cast(unixepoch('subsec') * 1000000 as integer));
