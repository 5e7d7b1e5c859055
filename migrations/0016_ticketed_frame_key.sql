-- 0016: a ticketed batch's duplicate key ordered by time, so the index appends at its end.
-- `batches_dedup` is keyed by camera first: with eight cameras posting, every commit wrote a leaf
-- per camera and their splits (33 of the soak's 190 pages per commit at a one-second linger).
-- A ticketed batch's frame id is `{task_id}:{captured_ms}` from its ticket, so its key is
-- (captured_ms, task_id) instead, and capture times of all cameras rise together.
ALTER TABLE detection_batches ADD COLUMN captured_ms INTEGER;  -- from the ticket; NULL when ticketless
DROP INDEX batches_dedup;
CREATE UNIQUE INDEX batches_dedup ON detection_batches (camera_id, frame_id)
    WHERE frame_id IS NOT NULL AND ticketed = 0;
CREATE UNIQUE INDEX batches_by_frame ON detection_batches (captured_ms, task_id)
    WHERE captured_ms IS NOT NULL;
-- Ticketed batches stored before keep captured_ms NULL (a backfill would rewrite every row of a
-- month's detections at boot): their tickets were signed with an earlier run's key, so no retry
-- of one can be stored again. Only a ticketless post that sends such a batch's ticketed frame id
-- `{task_id}:{captured_ms}` as its own is not seen as its duplicate.
-- From this version, a detection record's payload is stored without the `source` and `_prov`
-- every detection repeated, and with the batch's `credential`; the reader writes them back
-- (`provenance::restore_into_batch`, when `outbox` reads a record). Records stored before keep
-- theirs.
