-- 0004: zones, the zone engine's state, its events and occupancy.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- Zones. Invariant C1: 'file' rows mirror heldar.toml and are rewritten at every start.
CREATE TABLE zones (
    id TEXT PRIMARY KEY,                 -- the zone's name, unique on the box
    camera_id TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('file', 'runtime')),
    settings TEXT NOT NULL               -- JSON with heldar.toml's [[zones]] keys
) STRICT;

-- The zone engine's state per camera (tracks, what zone each is in, pending timers), written
-- in the transaction that also advances the engine's outbox cursor (invariant O2).
CREATE TABLE zone_state (
    camera_id TEXT PRIMARY KEY,
    state TEXT NOT NULL                  -- JSON
) STRICT;

CREATE TABLE zone_events (
    id INTEGER PRIMARY KEY,
    zone_id TEXT NOT NULL,
    camera_id TEXT NOT NULL,
    task TEXT NOT NULL,                  -- task id, or task type for ticketless batches
    track_id TEXT NOT NULL,
    label TEXT,
    type TEXT NOT NULL,                  -- enter | exit | dwell | cross_ab | cross_ba
    ts_ms INTEGER NOT NULL,              -- capture time of the detection that caused it, or the deadline
    dwell_ms INTEGER,                    -- time inside, for exit and dwell
    reason TEXT,                         -- exit only: left | lost
    outbox_seq INTEGER NOT NULL          -- the record that announced it
) STRICT;
CREATE INDEX zone_events_by_camera ON zone_events (camera_id, ts_ms);

-- Current occupancy: tracks inside and not static, per zone and label.
CREATE TABLE zone_occupancy (
    zone_id TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    total INTEGER NOT NULL,
    by_label TEXT NOT NULL,              -- JSON object: label -> count
    updated_at_ms INTEGER NOT NULL
) STRICT;
