-- The count time of the last warehouse stock snapshot applied per stock level, so an
-- older snapshot arriving late is ignored instead of overwriting a newer count.
CREATE TABLE stock_snapshots (
    tenant_id    TEXT NOT NULL,
    warehouse_id TEXT NOT NULL,
    sku          TEXT NOT NULL,
    counted_at   TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    applied_at   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, warehouse_id, sku),
    FOREIGN KEY (tenant_id, warehouse_id) REFERENCES warehouses (tenant_id, id)
);
