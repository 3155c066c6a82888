-- The outbox relay's work queue: the rows not yet published, in seq order. A partial
-- index stays as small as the backlog, however long the outbox grows.
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;

-- Inbox deduplication (DESIGN.md §4.3): one row per (consumer, event) handled. A consumer
-- inserts here in the same transaction as its own writes, so a redelivered event is seen
-- as a duplicate and changes nothing.
CREATE TABLE inbox (
    consumer    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
) STRICT, WITHOUT ROWID;

-- The order-events projection: each order's timeline, kept by the `order-events` consumer
-- from the `platform.oms.order.*` events it receives. An event appears once, whichever
-- inbox let it through.
CREATE TABLE order_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    type        TEXT NOT NULL,
    time        TEXT NOT NULL,
    data        TEXT NOT NULL CHECK (json_valid(data)),
    recorded_at TEXT NOT NULL
) STRICT;
CREATE UNIQUE INDEX order_events_by_event ON order_events (event_id);
CREATE INDEX order_events_by_order ON order_events (tenant_id, order_id, time, seq);

-- Dead letters: messages a consumer gave up on after its last attempt, kept so that an
-- operator can list, inspect and replay them. `id` is the dead-letter envelope's id (the
-- one published on `<topic>.dlq`); `envelope` is the original message's envelope.
CREATE TABLE dead_letters (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    original_topic TEXT NOT NULL,
    envelope       TEXT NOT NULL CHECK (json_valid(envelope)),
    reason         TEXT NOT NULL,
    attempts       INTEGER NOT NULL CHECK (attempts >= 0),
    consumer       TEXT NOT NULL,
    failed_at      TEXT NOT NULL,
    replayed_at    TEXT
) STRICT;
-- Ids are UUIDv7: `id DESC` is newest first.
CREATE INDEX dead_letters_by_tenant ON dead_letters (tenant_id, id);
