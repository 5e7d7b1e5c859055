-- 0002: the camera registry, camera health and the recording index.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- Cameras the box records. Invariant C1: rows with source 'file' mirror heldar.toml and are
-- rewritten at every start; rows with source 'runtime' were created over MQTT, the API or the CLI
-- and exist only here.
CREATE TABLE cameras (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL CHECK (source IN ('file', 'runtime')),
    settings TEXT NOT NULL,            -- the camera as JSON with heldar.toml's [[cameras]] keys, no secrets
    password TEXT,                     -- runtime cameras only (file cameras read password_file); NULL = none
    enabled_override INTEGER,          -- runtime toggles: NULL follows settings, 0/1 overrides them
    record_override INTEGER,
    detect_override INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- Last known health of each camera's main stream, written on state changes, not per frame.
CREATE TABLE camera_health (
    camera_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,               -- connecting | recording | offline | error | disabled
    since_ms INTEGER NOT NULL,         -- when it entered that state
    reconnects INTEGER NOT NULL,       -- pipeline rebuilds after a failure, since the daemon started
    last_error TEXT,                   -- masked (never credentials); NULL when none yet
    fps REAL,                          -- frames per second observed on the current or last run
    bitrate_kbps REAL,                 -- idem, kilobits per second
    codec TEXT,                        -- h264 | h265; NULL before the first buffer
    width INTEGER,
    height INTEGER,
    gop_ms INTEGER,                    -- observed keyframe interval
    last_segment_at_ms INTEGER         -- end of the newest indexed segment
) STRICT;

-- One row per recording file. Invariant S3: inserted only after the file and its directory were
-- fsynced, so a row never points at a file that a power cut could take back.
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    camera_id TEXT NOT NULL,           -- no foreign key: footage outlives a removed camera until retention
    start_ms INTEGER NOT NULL,         -- wall clock of the first frame
    end_ms INTEGER NOT NULL,           -- wall clock at the end of the last frame
    path TEXT NOT NULL UNIQUE,         -- relative to data_dir/recordings
    bytes INTEGER NOT NULL,
    codec TEXT NOT NULL,               -- h264 | h265
    width INTEGER,                     -- NULL when unknown
    height INTEGER,
    recovered INTEGER NOT NULL DEFAULT 0,        -- 1: indexed at start-up from a file a crash left open
    evidence_locked INTEGER NOT NULL DEFAULT 0   -- 1: retention never deletes it
) STRICT;
CREATE INDEX segments_by_camera ON segments (camera_id, start_ms);
CREATE INDEX segments_by_start ON segments (start_ms);

-- Holes longer than 2 s in a camera's recording.
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,
    camera_id TEXT NOT NULL,
    start_ms INTEGER NOT NULL,         -- end of the footage before the hole
    end_ms INTEGER NOT NULL,           -- start of the footage after it
    reason TEXT NOT NULL               -- camera_offline | daemon_down | file_lost
) STRICT;
CREATE INDEX gaps_by_camera ON gaps (camera_id, start_ms);
