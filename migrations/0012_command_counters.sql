-- 0012: the last counter accepted from each key of `mqtt.command_keys`, so a signed command
-- captured off the broker cannot be replayed, not even after a restart.
CREATE TABLE command_counters (
    key TEXT PRIMARY KEY,                -- the public key as configured, `ed25519:<base64>`
    counter INTEGER NOT NULL,            -- strictly increasing per key
    at_ms INTEGER NOT NULL               -- when it was accepted (Unix epoch milliseconds)
) STRICT;
