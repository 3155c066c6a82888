-- Meridian's SQLite schema, version 1.
--
-- Conventions: ids are UUID strings (UUIDv7, so they sort by creation time); timestamps are
-- RFC 3339 UTC strings with microseconds ("2025-01-02T03:04:05.123456Z"), which sort as
-- text; money is integer minor units; JSON columns hold the serde form of the domain type.
-- Every tenant-owned table carries tenant_id, and every query filters by it.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin')),
    -- Hex SHA-256 of the secret part of the token; the token itself is never stored.
    secret_hash TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

CREATE TABLE products (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    sku            TEXT NOT NULL,
    name           TEXT NOT NULL,
    description    TEXT,
    price_amount   INTEGER NOT NULL CHECK (price_amount >= 0),
    price_currency TEXT NOT NULL,
    attributes     TEXT NOT NULL CHECK (json_valid(attributes)),
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    UNIQUE (tenant_id, sku)
) STRICT;

CREATE TABLE warehouses (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    code        TEXT NOT NULL,
    name        TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (tenant_id, code),
    -- Target of the composite foreign keys below: a stock row can only point at a
    -- warehouse of its own tenant.
    UNIQUE (tenant_id, id)
) STRICT;

-- No foreign key to products: a deleted product's levels stay for audit (see Store docs).
CREATE TABLE stock_levels (
    tenant_id    TEXT NOT NULL,
    warehouse_id TEXT NOT NULL,
    sku          TEXT NOT NULL,
    on_hand      INTEGER NOT NULL,
    reserved     INTEGER NOT NULL,
    updated_at   TEXT NOT NULL,
    -- SKU before warehouse: order placement and stock reads load every level of a SKU, and
    -- SQLite's planner (without ANALYZE statistics) otherwise walks the tenant's whole key
    -- prefix to find them.
    PRIMARY KEY (tenant_id, sku, warehouse_id),
    FOREIGN KEY (tenant_id, warehouse_id) REFERENCES warehouses (tenant_id, id),
    -- The last line of defence against overselling (DESIGN.md §4.1).
    CHECK (on_hand >= 0 AND reserved >= 0 AND reserved <= on_hand)
) STRICT, WITHOUT ROWID;

-- The foreign key above is checked on warehouse deletes.
CREATE INDEX stock_levels_by_warehouse ON stock_levels (tenant_id, warehouse_id);

CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id),
    status           TEXT NOT NULL
                     CHECK (status = 'pending' OR status = 'confirmed' OR status = 'fulfilled' OR status = 'canceled'),
    allocation       TEXT NOT NULL CHECK (allocation = 'priority' OR allocation = 'most_stock' OR allocation = 'split'),
    -- Vec<OrderLine>, with each line's allocations.
    lines            TEXT NOT NULL CHECK (json_valid(lines)),
    customer         TEXT CHECK (customer IS NULL OR json_valid(customer)),
    shipping_address TEXT CHECK (shipping_address IS NULL OR json_valid(shipping_address)),
    total_amount     INTEGER NOT NULL,
    currency         TEXT NOT NULL,
    idempotency_key  TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
) STRICT;

-- Newest-first listing, with and without a status filter.
CREATE INDEX orders_by_tenant ON orders (tenant_id, id);
CREATE INDEX orders_by_tenant_status ON orders (tenant_id, status, id);

CREATE TABLE stock_ledger (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    tenant_id      TEXT NOT NULL,
    warehouse_id   TEXT NOT NULL,
    sku            TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind = 'set' OR kind = 'adjust' OR kind = 'reserve' OR kind = 'release' OR kind = 'commit'),
    on_hand_delta  INTEGER NOT NULL,
    reserved_delta INTEGER NOT NULL,
    on_hand_after  INTEGER NOT NULL,
    reserved_after INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    order_id       TEXT REFERENCES orders (id),
    created_at     TEXT NOT NULL,
    FOREIGN KEY (tenant_id, warehouse_id) REFERENCES warehouses (tenant_id, id)
) STRICT;

CREATE INDEX stock_ledger_by_sku ON stock_ledger (tenant_id, sku, seq);

-- The ledger is append-only: corrections are new movements, never edits.
CREATE TRIGGER stock_ledger_no_update BEFORE UPDATE ON stock_ledger
BEGIN
    SELECT RAISE(ABORT, 'stock_ledger is append-only');
END;

CREATE TRIGGER stock_ledger_no_delete BEFORE DELETE ON stock_ledger
BEGIN
    SELECT RAISE(ABORT, 'stock_ledger is append-only');
END;

CREATE TABLE idempotency_keys (
    tenant_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    -- Digest of the first request's canonical body: tells a retry from a reused key.
    request_hash TEXT NOT NULL,
    order_id     TEXT NOT NULL REFERENCES orders (id),
    created_at   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
) STRICT, WITHOUT ROWID;

-- The transactional outbox: written in the same transaction as the change it announces.
-- seq is assigned at insert; with SQLite's single writer that is also commit order.
CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    tenant_id    TEXT NOT NULL,
    topic        TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    envelope     TEXT NOT NULL CHECK (json_valid(envelope)),
    created_at   TEXT NOT NULL,
    sent_at      TEXT
) STRICT;
