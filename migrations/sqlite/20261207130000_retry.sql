-- Retry and redrive: the PostgreSQL migration of the same name is the specification.
-- attempt_budget is the budget the task was enqueued with (null until its first retry, while
-- max_attempts still holds it), and max_attempts may pass 100 once a task is retried.
--
-- SQLite cannot change a column's check, so the table is rebuilt: a new table, the rows copied,
-- the old one dropped, the new one renamed, its indexes made again. The migration runs in one
-- transaction and the engine runs with foreign keys off (no table refers to tasks anyway).

create table tasks_new (
    id               blob primary key not null check (length(id) = 16),
    agent            text not null,
    command          text not null,
    meta             text not null default '{}',
    status           text not null default 'queued'
                     check (status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         integer not null default 0,
    max_attempts     integer not null default 5 check (max_attempts >= 1),
    timeout_secs     integer not null default 300 check (timeout_secs > 0),
    idempotency_key  text unique,
    run_at           integer not null,
    published_at     integer,
    worker_id        text,
    lease_until      integer,
    result           text,
    last_error       text,
    cancel_requested integer not null default 0 check (cancel_requested in (0, 1)),
    created_at       integer not null,
    started_at       integer,
    finished_at      integer,
    updated_at       integer not null,
    attempt_budget   integer check (attempt_budget between 1 and 100)
) strict;

insert into tasks_new (id, agent, command, meta, status, attempts, max_attempts, timeout_secs,
                       idempotency_key, run_at, published_at, worker_id, lease_until, result,
                       last_error, cancel_requested, created_at, started_at, finished_at,
                       updated_at)
select id, agent, command, meta, status, attempts, max_attempts, timeout_secs, idempotency_key,
       run_at, published_at, worker_id, lease_until, result, last_error, cancel_requested,
       created_at, started_at, finished_at, updated_at
from tasks;

drop table tasks;
alter table tasks_new rename to tasks;

-- Every index of the earlier migrations, as they made them.
create index tasks_status_id_idx on tasks (status, id desc);
create index tasks_agent_id_idx on tasks (agent, id desc);
create index tasks_unpublished_idx on tasks (run_at) where status = 'queued' and published_at is null;
create index tasks_running_lease_idx on tasks (lease_until) where status = 'running';
create index tasks_finished_idx on tasks (status, finished_at)
    where status in ('succeeded', 'failed', 'cancelled');
create index tasks_agent_status_id_idx on tasks (agent, status, id desc);
create index tasks_queued_run_at_idx on tasks (run_at, status) where status = 'queued';
