-- Shipments (the fulfillment service): one per warehouse allocation of a confirmed order.
-- A shipment's status changes only through meridian-fulfillment's state machine, with its
-- `platform.fulfillment.shipment.*` outbox row in the same transaction.
CREATE TABLE shipments (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    order_id        uuid NOT NULL,
    warehouse_id    uuid NOT NULL,
    warehouse_code  text NOT NULL,
    status          text NOT NULL CHECK (status IN
        ('pending', 'label_created', 'shipped', 'delivered', 'exception', 'canceled')),
    carrier         text NOT NULL,
    tracking_number text,
    label_key       text,
    items           jsonb NOT NULL,
    ship_to         jsonb,
    detail          text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
-- One shipment per (order, warehouse): a second event about the same order adds nothing.
CREATE UNIQUE INDEX shipments_by_order ON shipments (tenant_id, order_id, warehouse_id);
CREATE INDEX shipments_by_tenant ON shipments (tenant_id, id);
-- Carriers' tracking webhooks name a shipment by its tracking number.
CREATE INDEX shipments_by_tracking ON shipments (carrier, tracking_number)
    WHERE tracking_number IS NOT NULL;
