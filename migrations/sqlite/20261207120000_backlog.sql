-- The backlog gauges (GET /metrics of the API): queued tasks by run_at, so the "due" and
-- "delayed" counts and the oldest due task are index scans over the queued rows only, however
-- many finished rows the table holds. `status` is in the key only so that the scans are covering
-- (SQLite checks the query's status term on the index entry instead of reading each row).
-- Running tasks are counted on tasks_running_lease_idx.
create index tasks_queued_run_at_idx on tasks (run_at, status) where status = 'queued';
