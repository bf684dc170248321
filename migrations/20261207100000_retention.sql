-- no-transaction
-- The pruner's scan (BGAGENT_RETAIN_*): finished tasks of one status, oldest finish first. Partial,
-- so queued and running rows (the hot path's) never enter it, and a batch reads only the rows it
-- deletes however many finished tasks are kept.
--
-- Built concurrently so that adding it to a table of many millions of rows does not stop
-- enqueues, claims and records while it builds; that needs a file of its own outside a
-- transaction (the first line). If the build is interrupted, PostgreSQL keeps an invalid index
-- under this name and the migration fails again when retried: drop it with
-- `drop index concurrently tasks_finished_idx;` and migrate again.
create index concurrently tasks_finished_idx on tasks (status, finished_at)
    where status in ('succeeded', 'failed', 'cancelled');
