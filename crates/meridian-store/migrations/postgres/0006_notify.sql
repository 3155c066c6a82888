-- The notification service (crates/meridian-notify): tenant webhook endpoints, the
-- notifications made from events, and every delivery attempt.

-- A tenant's webhook endpoints. `event_types` is a JSON array of filters (`order.created`,
-- `order.*`, `*`). The secrets sign deliveries; during a rotation the previous one signs
-- too, until it expires.
CREATE TABLE webhook_endpoints (
    id                         uuid        PRIMARY KEY,
    tenant_id                  uuid        NOT NULL REFERENCES tenants (id),
    url                        text        NOT NULL,
    description                text        NOT NULL,
    event_types                jsonb       NOT NULL,
    enabled                    boolean     NOT NULL,
    secret                     text        NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    disabled_reason            text,
    created_at                 timestamptz NOT NULL,
    updated_at                 timestamptz NOT NULL
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, id);

-- One row per (event, channel, recipient): the row is its own dedup record (DESIGN.md
-- §4.3), so a redelivered event inserts nothing. `payload` is the exact body every attempt
-- sends. Pending rows are the delivery worker's queue, by `next_attempt_at`.
CREATE TABLE notifications (
    id              uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('webhook', 'email', 'sms')),
    recipient       text        NOT NULL,
    webhook_id      uuid,
    payload         text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        integer     NOT NULL CHECK (attempts >= 0),
    next_attempt_at timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    UNIQUE (event_id, channel, recipient)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notifications_by_tenant ON notifications (tenant_id, id);
CREATE INDEX notifications_by_webhook ON notifications (tenant_id, webhook_id, id);

-- Every attempt to deliver a notification, numbered from 1.
CREATE TABLE notification_attempts (
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL CHECK (attempt >= 1),
    at              timestamptz NOT NULL,
    status_code     integer,
    error           text,
    duration_ms     integer     NOT NULL CHECK (duration_ms >= 0),
    succeeded       boolean     NOT NULL,
    PRIMARY KEY (notification_id, attempt)
);

-- Templates per tenant, event type and channel (email, SMS), checked when saved.
CREATE TABLE notification_templates (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    event_type text        NOT NULL,
    channel    text        NOT NULL CHECK (channel IN ('email', 'sms')),
    subject    text,
    body       text        NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (tenant_id, event_type, channel)
);
