-- GET /tasks?agent=…&status=… , newest first: each filter combination of the list has an index
-- that returns its page in order, as in PostgreSQL (see the migration of the same name there).
create index tasks_agent_status_id_idx on tasks (agent, status, id desc);
