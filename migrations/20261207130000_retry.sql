-- Retry and redrive (POST /tasks/{id}/retry, POST /tasks/retry): a finished task goes back to
-- the queue under its id, its attempt numbers keep counting (earlier task_attempts rows stay),
-- and it gets a fresh budget: max_attempts becomes attempts + attempt_budget.
--
-- attempt_budget is the budget the task was enqueued with. Null means "never retried", so
-- max_attempts still holds it: the first retry stores it. A nullable column without a default is
-- a catalogue change only; a backfill would rewrite every row of a large table.
alter table tasks add column attempt_budget integer check (attempt_budget between 1 and 100);

-- A retried task may hold more than 100 attempts in all; the budget of one run stays bounded by
-- the enqueue validation and by attempt_budget's check.
alter table tasks drop constraint tasks_max_attempts_check;
-- `not valid`: new and updated rows are checked, existing ones are not scanned (under this
-- migration's lock), because every one of them passed the stricter check just dropped.
alter table tasks add constraint tasks_max_attempts_check check (max_attempts >= 1) not valid;
