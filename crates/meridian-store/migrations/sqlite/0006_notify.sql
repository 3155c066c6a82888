-- The notification service (crates/meridian-notify): tenant webhook endpoints, the
-- notifications made from events, and every delivery attempt.

-- A tenant's webhook endpoints. `event_types` is a JSON array of filters (`order.created`,
-- `order.*`, `*`). The secrets sign deliveries; during a rotation the previous one signs
-- too, until it expires.
CREATE TABLE webhook_endpoints (
    id                         TEXT PRIMARY KEY,
    tenant_id                  TEXT NOT NULL REFERENCES tenants (id),
    url                        TEXT NOT NULL,
    description                TEXT NOT NULL,
    event_types                TEXT NOT NULL CHECK (json_valid(event_types)),
    enabled                    INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    secret                     TEXT NOT NULL,
    previous_secret            TEXT,
    previous_secret_expires_at TEXT,
    disabled_reason            TEXT,
    created_at                 TEXT NOT NULL,
    updated_at                 TEXT NOT NULL
) STRICT;
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, id);

-- One row per (event, channel, recipient): the row is its own dedup record (DESIGN.md
-- §4.3), so a redelivered event inserts nothing. `payload` is the exact body every attempt
-- sends. Pending rows are the delivery worker's queue, by `next_attempt_at`.
CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    channel         TEXT NOT NULL CHECK (channel IN ('webhook', 'email', 'sms')),
    recipient       TEXT NOT NULL,
    webhook_id      TEXT,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at TEXT,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (event_id, channel, recipient)
) STRICT;
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_by_tenant ON notifications (tenant_id, id);
CREATE INDEX notifications_by_webhook ON notifications (tenant_id, webhook_id, id);

-- Every attempt to deliver a notification, numbered from 1.
CREATE TABLE notification_attempts (
    notification_id TEXT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt         INTEGER NOT NULL CHECK (attempt >= 1),
    at              TEXT NOT NULL,
    status_code     INTEGER,
    error           TEXT,
    duration_ms     INTEGER NOT NULL CHECK (duration_ms >= 0),
    succeeded       INTEGER NOT NULL CHECK (succeeded IN (0, 1)),
    PRIMARY KEY (notification_id, attempt)
) STRICT, WITHOUT ROWID;

-- Templates per tenant, event type and channel (email, SMS), checked when saved.
CREATE TABLE notification_templates (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    event_type TEXT NOT NULL,
    channel    TEXT NOT NULL CHECK (channel IN ('email', 'sms')),
    subject    TEXT,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (tenant_id, event_type, channel)
) STRICT;
