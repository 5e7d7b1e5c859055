-- 0015: what every detection repeated, and an index that a batch's index already answers.
-- In the soak's WAL (8 cameras, a commit a second), the (camera, time) index of detections
-- wrote one leaf page per camera to every commit. Detections are listed through their batch's
-- (camera, time) index, `batches_by_time`, instead: a detection's time is its batch's.
DROP INDEX detections_by_camera;
-- From this version, a detection's `attributes` are stored without `source` and `_prov`, which
-- were the same for every detection of a batch: the reader adds them back from the batch's
-- `credential`, `task_id` and `worker_id`, which it holds anyway. Rows stored before keep theirs
-- (the same values), so nothing needs rewriting.
