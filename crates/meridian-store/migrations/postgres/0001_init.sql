-- Meridian's PostgreSQL schema, version 1.
--
-- Mirrors the SQLite schema so both backends behave alike: money in integer minor units,
-- ids as UUIDv7, natural keys (SKU, warehouse code) compared byte-wise (COLLATE "C", as
-- SQLite's BINARY) so pagination orders match on both backends.
--
-- Applied by `meridian_store::postgres::migrate` inside one transaction, under an advisory
-- lock, into the configured schema (the connection's search_path).

CREATE TABLE tenants (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE api_keys (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    name        text        NOT NULL,
    role        text        NOT NULL,
    -- Hex SHA-256 of the key's secret; the secret itself is never stored.
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, id);

CREATE TABLE products (
    id             uuid        PRIMARY KEY,
    tenant_id      uuid        NOT NULL REFERENCES tenants (id),
    sku            text        COLLATE "C" NOT NULL,
    name           text        NOT NULL,
    description    text,
    price_amount   bigint      NOT NULL,
    price_currency text        NOT NULL,
    attributes     jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    UNIQUE (tenant_id, sku)
);

CREATE TABLE warehouses (
    id         uuid        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id),
    code       text        COLLATE "C" NOT NULL,
    name       text        NOT NULL,
    priority   integer     NOT NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (tenant_id, code),
    -- Target of stock_levels' foreign key, so a level can only name its own tenant's
    -- warehouse.
    UNIQUE (tenant_id, id)
);

-- One row per (tenant, warehouse, SKU). Levels outlive a deleted product for audit, so
-- there is no foreign key to products. The CHECK is the last line of defence for "no
-- overselling": the writers check the same rule before they write.
CREATE TABLE stock_levels (
    tenant_id    uuid        NOT NULL,
    warehouse_id uuid        NOT NULL,
    sku          text        COLLATE "C" NOT NULL,
    on_hand      bigint      NOT NULL,
    reserved     bigint      NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, warehouse_id, sku),
    FOREIGN KEY (tenant_id, warehouse_id) REFERENCES warehouses (tenant_id, id),
    CONSTRAINT stock_levels_bounds
        CHECK (on_hand >= 0 AND reserved >= 0 AND reserved <= on_hand)
) WITH (fillfactor = 70);
-- Free space per page lets the hot on_hand/reserved updates stay HOT (no index writes).
CREATE INDEX stock_levels_by_sku ON stock_levels (tenant_id, sku);

-- Append-only. `seq` orders a SKU's history; per-level sums of the deltas must equal the
-- level (see `Store::reconcile`).
CREATE TABLE stock_ledger (
    seq            bigserial   PRIMARY KEY,
    id             uuid        NOT NULL,
    tenant_id      uuid        NOT NULL,
    warehouse_id   uuid        NOT NULL,
    sku            text        COLLATE "C" NOT NULL,
    kind           text        NOT NULL,
    on_hand_delta  bigint      NOT NULL,
    reserved_delta bigint      NOT NULL,
    on_hand_after  bigint      NOT NULL,
    reserved_after bigint      NOT NULL,
    reason         text        NOT NULL,
    order_id       uuid,
    created_at     timestamptz NOT NULL
);
CREATE INDEX stock_ledger_by_sku ON stock_ledger (tenant_id, sku, seq);

CREATE TABLE orders (
    id               uuid        PRIMARY KEY,
    tenant_id        uuid        NOT NULL,
    status           text        NOT NULL,
    allocation       text        NOT NULL,
    -- Vec<OrderLine>, allocations included: an order is read and written whole.
    lines            jsonb       NOT NULL,
    customer         jsonb,
    shipping_address jsonb,
    total_amount     bigint      NOT NULL,
    currency         text        NOT NULL,
    idempotency_key  text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
-- Ids are UUIDv7, so `id DESC` is newest first.
CREATE INDEX orders_by_tenant ON orders (tenant_id, id);
CREATE INDEX orders_by_tenant_status ON orders (tenant_id, status, id);

CREATE TABLE idempotency_keys (
    tenant_id    uuid        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    order_id     uuid        NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

-- The transactional outbox. Rows are written in the same transaction as the change they
-- announce, and `seq` is allocated under a transaction-scoped advisory lock held until
-- commit, so `seq` order is commit order and a relay reading `seq > last` never skips a
-- row that commits late.
CREATE TABLE outbox (
    seq          bigserial   PRIMARY KEY,
    id           uuid        NOT NULL,
    tenant_id    uuid        NOT NULL,
    topic        text        NOT NULL,
    aggregate_id text        NOT NULL,
    envelope     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    sent_at      timestamptz
);
