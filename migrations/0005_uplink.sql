-- 0005: runtime settings and the MQTT uplink's record of retained topics.
-- Times are Unix epoch milliseconds (UTC) in INTEGER columns.

-- Runtime overrides of box-level sections set over MQTT or the API (`recording`, `sampler`).
-- A section without a row takes its values from heldar.toml; deleting the row reverts to them.
CREATE TABLE settings (
    section TEXT PRIMARY KEY,
    value TEXT NOT NULL,                 -- JSON object with the section's keys, validated
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- Retained topics the uplink has published, so that state it no longer holds (a removed camera,
-- its Home Assistant entities) is cleared on the broker even across daemon restarts.
CREATE TABLE mqtt_retained (
    topic TEXT PRIMARY KEY
) STRICT;
