-- Background Agent schema. PostgreSQL is the source of truth: the broker only carries task ids,
-- so every accepted task, claim, attempt and result lives here.

create table tasks (
    -- UUID v7, chosen by the API: time-ordered, so "newest first" and keyset pagination walk the
    -- primary key and no separate created_at index is needed.
    id               uuid primary key,
    agent            text not null,
    command          text not null,
    meta             jsonb not null default '{}'::jsonb,
    -- text + check rather than an enum type: adding a status later is a one-line migration.
    status           text not null default 'queued'
                     check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         integer not null default 0,
    max_attempts     integer not null default 5 check (max_attempts between 1 and 100),
    timeout_secs     integer not null default 300 check (timeout_secs > 0),
    idempotency_key  text unique,
    run_at           timestamptz not null default now(),
    -- null = not (yet) on the broker for its current run; the relay publishes such rows.
    published_at     timestamptz,
    worker_id        text,
    lease_until      timestamptz,
    result           jsonb,
    last_error       text,
    -- set when a cancel arrives while a worker runs the task; the worker records `cancelled`.
    cancel_requested boolean not null default false,
    created_at       timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz not null default now()
);

-- GET /tasks?status=… and ?agent=… , newest first.
create index tasks_status_id_idx on tasks (status, id desc);
create index tasks_agent_id_idx on tasks (agent, id desc);
-- The relay's scan: due and unpublished. Partial, so it stays small however many tasks finished.
create index tasks_unpublished_idx on tasks (run_at) where status = 'queued' and published_at is null;
-- The reaper's scan: running tasks by lease.
create index tasks_running_lease_idx on tasks (lease_until) where status = 'running';

create table task_attempts (
    -- identity, so newest-first paging of GET /processed walks the primary key.
    id          bigint generated always as identity primary key,
    task_id     uuid not null references tasks (id) on delete cascade,
    attempt     integer not null,
    agent       text not null,
    worker_id   text,
    outcome     text not null
                check (outcome in ('succeeded', 'failed', 'retry', 'timeout', 'cancelled')),
    error       text,
    started_at  timestamptz not null,
    finished_at timestamptz not null default now(),
    -- one record per attempt: the fenced result write cannot be doubled by a redelivery.
    unique (task_id, attempt)
);

create table agents (
    name       text primary key,
    endpoint   text not null,
    meta       jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table workers (
    id         text primary key,
    host       text not null,
    version    text not null,
    started_at timestamptz not null default now(),
    last_seen  timestamptz not null default now(),
    paused     boolean not null default false,
    in_flight  integer not null default 0,
    processed  bigint not null default 0,
    stopped_at timestamptz
);

create index workers_last_seen_idx on workers (last_seen);

-- The fleet's paused state: exactly one row, so readers never see "no state".
create table control (
    id         boolean primary key default true check (id),
    paused     boolean not null default false,
    changed_by text not null default 'migration',
    changed_at timestamptz not null default now()
);

insert into control (id) values (true);
