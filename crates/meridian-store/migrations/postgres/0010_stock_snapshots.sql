-- The count time of the last warehouse stock snapshot applied per stock level, so an
-- older snapshot arriving late is ignored instead of overwriting a newer count.
CREATE TABLE stock_snapshots (
    tenant_id    uuid        NOT NULL,
    warehouse_id uuid        NOT NULL,
    sku          text        COLLATE "C" NOT NULL,
    counted_at   timestamptz NOT NULL,
    event_id     uuid        NOT NULL,
    applied_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, warehouse_id, sku),
    FOREIGN KEY (tenant_id, warehouse_id) REFERENCES warehouses (tenant_id, id)
);
