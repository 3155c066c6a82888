-- The outbox relay's work queue: the rows not yet published, in seq order. A partial
-- index stays as small as the backlog, however long the outbox grows.
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;

-- Inbox deduplication (DESIGN.md §4.3): one row per (consumer, event) handled. A consumer
-- inserts here in the same transaction as its own writes, so a redelivered event is seen
-- as a duplicate and changes nothing.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- The order-events projection: each order's timeline, kept by the `order-events` consumer
-- from the `platform.oms.order.*` events it receives. An event appears once, whichever
-- inbox let it through.
CREATE TABLE order_events (
    seq         bigserial   PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    order_id    uuid        NOT NULL,
    event_id    uuid        NOT NULL,
    type        text        NOT NULL,
    time        timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX order_events_by_event ON order_events (event_id);
CREATE INDEX order_events_by_order ON order_events (tenant_id, order_id, time, seq);

-- Dead letters: messages a consumer gave up on after its last attempt, kept so that an
-- operator can list, inspect and replay them. `id` is the dead-letter envelope's id (the
-- one published on `<topic>.dlq`); `envelope` is the original message's envelope.
CREATE TABLE dead_letters (
    id             uuid        PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    original_topic text        NOT NULL,
    envelope       jsonb       NOT NULL,
    reason         text        NOT NULL,
    attempts       integer     NOT NULL CHECK (attempts >= 0),
    consumer       text        NOT NULL,
    failed_at      timestamptz NOT NULL,
    replayed_at    timestamptz
);
-- Ids are UUIDv7: `id DESC` is newest first.
CREATE INDEX dead_letters_by_tenant ON dead_letters (tenant_id, id);
