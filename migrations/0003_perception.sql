-- 0003: credentials, inference tasks and leases, the outbox with consumer cursors, detections.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- API tokens. Only the SHA-256 of a token is stored; the token itself is shown once.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,                 -- tok_<n>: the credential id in provenance, leases, audit
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'worker')),
    hash TEXT NOT NULL UNIQUE,           -- hex SHA-256 of the token
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER                -- NULL while valid
) STRICT;

-- Inference tasks: one kind of analysis on one camera stream.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,                 -- <camera>:<task_type>:<profile>, stable for the task's life
    camera_id TEXT NOT NULL,
    task_type TEXT NOT NULL,
    profile TEXT NOT NULL CHECK (profile IN ('main', 'sub')),
    fps REAL NOT NULL,                   -- requested rate, 0.1..30
    width INTEGER NOT NULL,              -- requested frame width in pixels, 160..3840
    config TEXT NOT NULL,                -- JSON object, opaque to the daemon
    enabled INTEGER NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('file', 'runtime'))
) STRICT;

-- Who holds which task. A lease is live while expires_at_ms is in the future; nothing reaps them.
CREATE TABLE leases (
    task_id TEXT PRIMARY KEY,
    lease_id TEXT NOT NULL,
    credential TEXT NOT NULL,            -- token id, or 'local' when auth is off
    worker_id TEXT NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX leases_by_lease ON leases (lease_id);

-- Workers seen leasing, so tasks are shared among the live workers of one credential.
CREATE TABLE workers (
    credential TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    ttl_ms INTEGER NOT NULL,             -- the worker is live until last_seen_ms + ttl_ms
    PRIMARY KEY (credential, worker_id)
) STRICT;

-- The outbox: an append-only log of what consumers must see, in seq order (invariant O1).
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after compaction
    event_id TEXT NOT NULL UNIQUE,          -- stable across redelivery, for receivers to deduplicate
    kind TEXT NOT NULL,                     -- detection | zone | alarm | camera | system
    type TEXT NOT NULL,                     -- what happened within the kind: detections, gap, enter, ...
    camera_id TEXT,                         -- NULL for box-level records
    ts_ms INTEGER NOT NULL,                 -- when it happened (capture time for detections)
    payload TEXT NOT NULL,                  -- JSON object
    created_at_ms INTEGER NOT NULL          -- when it was appended
) STRICT;
CREATE INDEX outbox_by_created ON outbox (created_at_ms);

-- Per-consumer durable cursors: the last seq each consumer finished (invariant O1).
CREATE TABLE consumer_cursors (
    consumer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- Counters that survive restarts (outbox records dropped by the bounds, ...).
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;

-- One row per ingested batch. The (camera, frame_id) key makes a retried post a no-op (S2).
CREATE TABLE detection_batches (
    id INTEGER PRIMARY KEY,
    camera_id TEXT NOT NULL,
    frame_id TEXT,                          -- as the worker sent it, or <task>:<captured_ms> from its ticket
    task_type TEXT NOT NULL,
    task_id TEXT,                           -- from the ticket; NULL when ticketless
    credential TEXT NOT NULL,
    worker_id TEXT,                         -- from the lease behind the ticket
    ts_ms INTEGER NOT NULL,                 -- the batch's timestamp
    ticketed INTEGER NOT NULL,
    outbox_seq INTEGER NOT NULL             -- the record that carries this batch
) STRICT;
CREATE UNIQUE INDEX batches_dedup ON detection_batches (camera_id, frame_id) WHERE frame_id IS NOT NULL;
CREATE INDEX batches_by_time ON detection_batches (camera_id, ts_ms);

CREATE TABLE detections (
    id INTEGER PRIMARY KEY,
    batch_id INTEGER NOT NULL REFERENCES detection_batches (id) ON DELETE CASCADE,
    camera_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    label TEXT,
    confidence REAL,
    bbox TEXT,                              -- JSON [x, y, w, h], normalised, top-left origin
    track_id TEXT,
    attributes TEXT NOT NULL                -- JSON object; source and _prov are written by the server
) STRICT;
CREATE INDEX detections_by_camera ON detections (camera_id, ts_ms);
CREATE INDEX detections_by_batch ON detections (batch_id);
