-- Shipments (the fulfillment service): one per warehouse allocation of a confirmed order.
-- A shipment's status changes only through meridian-fulfillment's state machine, with its
-- `platform.fulfillment.shipment.*` outbox row in the same transaction.
CREATE TABLE shipments (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    warehouse_id    TEXT NOT NULL,
    warehouse_code  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (
        status = 'pending' OR status = 'label_created' OR status = 'shipped'
        OR status = 'delivered' OR status = 'exception' OR status = 'canceled'),
    carrier         TEXT NOT NULL,
    tracking_number TEXT,
    label_key       TEXT,
    items           TEXT NOT NULL CHECK (json_valid(items)),
    ship_to         TEXT CHECK (ship_to IS NULL OR json_valid(ship_to)),
    detail          TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
) STRICT;
-- One shipment per (order, warehouse): a second event about the same order adds nothing.
CREATE UNIQUE INDEX shipments_by_order ON shipments (tenant_id, order_id, warehouse_id);
CREATE INDEX shipments_by_tenant ON shipments (tenant_id, id);
-- Carriers' tracking webhooks name a shipment by its tracking number.
CREATE INDEX shipments_by_tracking ON shipments (carrier, tracking_number)
    WHERE tracking_number IS NOT NULL;
