-- The pruner's scan (BGAGENT_RETAIN_*): finished tasks of one status, oldest finish first.
-- Partial, so queued and running rows never enter it and a batch reads only the rows it deletes.
-- A statement uses it only when its where clause repeats the predicate word for word.
create index tasks_finished_idx on tasks (status, finished_at)
    where status in ('succeeded', 'failed', 'cancelled');
