-- The embedded bus on SQLite. Lives in the store's database file next to the store's tables;
-- every table name starts with `bus_` and the bus keeps its own `bus_schema_migrations`.

-- The log. `seq` is the public position (Delivery::position, StartAt::Position), so it is
-- AUTOINCREMENT: a position is never reused, even once retention deletes old rows.
CREATE TABLE bus_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic        TEXT    NOT NULL,
    -- Unix microseconds, never decreasing along `seq` (the writer clamps it), so the first
    -- row at or after a time is also the lowest such seq (StartAt::Time).
    published_at INTEGER NOT NULL,
    -- The envelope's JSON exactly as published.
    payload      BLOB    NOT NULL
) STRICT;

CREATE INDEX bus_log_published_at ON bus_log (published_at);

-- One row per durable consumer. Every message at or below `acked_through` that matches the
-- pattern has been acknowledged (or was skipped as not matching).
CREATE TABLE bus_consumers (
    name          TEXT    PRIMARY KEY,
    pattern       TEXT    NOT NULL,
    acked_through INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

-- Acknowledged messages above the consumer's watermark (acked out of order).
CREATE TABLE bus_acks (
    consumer TEXT    NOT NULL REFERENCES bus_consumers (name) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (consumer, seq)
) STRICT, WITHOUT ROWID;

-- Negatively acknowledged messages: how often they were delivered and when they are due
-- again (Unix microseconds).
CREATE TABLE bus_pending (
    consumer   TEXT    NOT NULL REFERENCES bus_consumers (name) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL,
    not_before INTEGER NOT NULL,
    PRIMARY KEY (consumer, seq)
) STRICT, WITHOUT ROWID;
