-- The backlog gauges (GET /metrics of the API): queued tasks by run_at, so "due" and "delayed"
-- counts and the oldest due task are index scans over the queued rows only, however many
-- finished rows the table holds. Running tasks are counted on tasks_running_lease_idx.
create index tasks_queued_run_at_idx on tasks (run_at) where status = 'queued';
