-- The embedded bus on PostgreSQL, in the store's schema; every table name starts with `bus_`
-- and the bus keeps its own `bus_schema_migrations`.

-- The log. Appends hold a transaction-scoped advisory lock until commit, so `seq` order is
-- commit order and a reader fetching "after seq N" never skips a row that commits later.
CREATE TABLE bus_log (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    -- Never decreasing along `seq` (appends clamp it under the lock): StartAt::Time.
    published_at timestamptz NOT NULL,
    -- The envelope's JSON exactly as published.
    payload      bytea       NOT NULL
);

CREATE INDEX bus_log_published_at ON bus_log (published_at);

-- One row per durable consumer; everything matching at or below `acked_through` is done.
CREATE TABLE bus_consumers (
    name          text        PRIMARY KEY,
    pattern       text        NOT NULL,
    acked_through bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Acknowledged messages above the consumer's watermark (acked out of order).
CREATE TABLE bus_acks (
    consumer text   NOT NULL REFERENCES bus_consumers (name) ON DELETE CASCADE,
    seq      bigint NOT NULL,
    PRIMARY KEY (consumer, seq)
);

-- Negatively acknowledged messages: deliveries so far and when they are due again.
CREATE TABLE bus_pending (
    consumer   text        NOT NULL REFERENCES bus_consumers (name) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    attempts   integer     NOT NULL,
    not_before timestamptz NOT NULL,
    PRIMARY KEY (consumer, seq)
);
