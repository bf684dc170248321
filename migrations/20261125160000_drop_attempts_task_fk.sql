-- task_attempts rows are written only by the statements that update their task (the fenced
-- record and the reaper), so they always name an existing task. The foreign key re-checked that
-- with a trigger and a row lock per attempt, which cost about a sixth of the database's time on
-- the hot path. Nothing deletes tasks; a retention job that does must delete their attempts too.
alter table task_attempts drop constraint task_attempts_task_id_fkey;
