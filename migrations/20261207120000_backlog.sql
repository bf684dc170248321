-- no-transaction
-- The backlog gauges (GET /metrics of the API): queued tasks by run_at, so the "due" and
-- "delayed" counts and the oldest due task are index scans over the queued rows only, however
-- many finished rows the table holds. Running tasks are counted on tasks_running_lease_idx.
-- Built concurrently (outside a transaction, hence the first line) so a large table keeps taking
-- writes meanwhile. A build that fails leaves an invalid index: drop it and migrate again.
create index concurrently tasks_queued_run_at_idx on tasks (run_at) where status = 'queued';
