-- 0014: a worker remembers the lease id of its last lease call, so releasing that lease takes
-- the worker out of the share at once. Before, a released worker counted as live until its TTL
-- ran out, and a worker starting in its place got no tasks for up to five minutes.
ALTER TABLE workers ADD COLUMN lease_id TEXT;
-- And the task types it asked for (a JSON array; NULL: every type), so the split gives each
-- task to a worker that can do it. Before, workers of different task types under one token
-- counted against each other, and part of each one's tasks stayed unleased.
ALTER TABLE workers ADD COLUMN task_types TEXT;
