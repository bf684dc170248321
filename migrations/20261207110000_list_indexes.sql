-- GET /tasks?agent=…&status=… , newest first. Each filter combination of the list has an index
-- that returns its page in order: (status, id), (agent, id), this one, and the primary key for
-- no filter. Without it the agent-and-status list walked (agent, id) through every finished task
-- of the agent to find its few queued ones. None of the older indexes became redundant: a list
-- by agent alone still needs (agent, id), which returns ids in order across statuses.
create index tasks_agent_status_id_idx on tasks (agent, status, id desc);
