//! The SQL the backend runs, in one place so the statements the order writer prepares and
//! the ones the pooled paths prepare (`prepare_cached`) are the same text.
//!
//! Batch statements take one array per column and `unnest` them, so a batch of any size is
//! one statement and one round trip.

use sha2::{Digest, Sha256};

/// A stable 64-bit advisory lock key for `parts`: the first 8 bytes of their SHA-256, so
/// every version of Meridian, in every process, derives the same key.
pub(super) fn advisory_key(parts: &[&[u8]]) -> i64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

// --- column lists, in the order `rows.rs` reads them ---

pub(super) const PRODUCT_COLUMNS: &str = "id, tenant_id, sku, name, description, price_amount, \
     price_currency, attributes, created_at, updated_at";

pub(super) const WAREHOUSE_COLUMNS: &str = "id, tenant_id, code, name, priority, created_at";

pub(super) const ORDER_COLUMNS: &str = "id, tenant_id, status, allocation, lines, customer, \
     shipping_address, total_amount, currency, idempotency_key, created_at, updated_at";

pub(super) const LEDGER_COLUMNS: &str = "seq, id, tenant_id, warehouse_id, sku, kind, \
     on_hand_delta, reserved_delta, on_hand_after, reserved_after, reason, order_id, created_at";

pub(super) const API_KEY_COLUMNS: &str =
    "id, tenant_id, name, role, scopes, created_at, expires_at, last_used_at, revoked_at";

// --- locks ---

/// Serializes outbox appends across every connection and instance, held to commit, so that
/// `outbox.seq` is allocated in commit order (see the migration). Taken last in every
/// transaction, right before the outbox insert and `COMMIT`, so it is held only for that.
pub(super) const OUTBOX_LOCK: &str = "SELECT pg_advisory_xact_lock(7250291605842166801)";

/// Advisory locks on `(tenant, idempotency key)` hashes, taken in array order (the caller
/// sorts), so concurrent writers, in this process or another, serialize per key.
pub(super) const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k";

// --- order writer: snapshot loads ---

pub(super) const LOAD_IDEMPOTENCY: &str = "\
    SELECT i.tenant_id, i.key, i.request_hash, i.order_id \
    FROM idempotency_keys i \
    JOIN unnest($1::uuid[], $2::text[]) AS u(tenant_id, key) \
      ON i.tenant_id = u.tenant_id AND i.key = u.key";

pub(super) const LOAD_PRODUCTS: &str = "\
    SELECT p.tenant_id, p.sku, p.id, p.name, p.price_amount, p.price_currency \
    FROM products p \
    JOIN unnest($1::uuid[], $2::text[]) AS u(tenant_id, sku) \
      ON p.tenant_id = u.tenant_id AND p.sku = u.sku";

/// Every level of the named `(tenant, sku)` pairs, locked in the global lock order. The
/// `LockRows` node sits above the sort, so rows are locked in `ORDER BY` order.
pub(super) const LOAD_STOCK: &str = "\
    SELECT s.tenant_id, s.warehouse_id, w.code, w.priority, s.sku, s.on_hand, s.reserved \
    FROM stock_levels s \
    JOIN warehouses w ON w.id = s.warehouse_id \
    JOIN unnest($1::uuid[], $2::text[]) AS u(tenant_id, sku) \
      ON s.tenant_id = u.tenant_id AND s.sku = u.sku \
    ORDER BY s.tenant_id, s.warehouse_id, s.sku \
    FOR UPDATE OF s";

/// The levels of named `(warehouse, sku)` cells of one tenant, locked in the global order.
pub(super) const LOCK_CELLS: &str = "\
    SELECT s.tenant_id, s.warehouse_id, w.code, w.priority, s.sku, s.on_hand, s.reserved \
    FROM stock_levels s \
    JOIN warehouses w ON w.id = s.warehouse_id \
    JOIN unnest($2::uuid[], $3::text[]) AS u(warehouse_id, sku) \
      ON s.warehouse_id = u.warehouse_id AND s.sku = u.sku \
    WHERE s.tenant_id = $1 \
    ORDER BY s.tenant_id, s.warehouse_id, s.sku \
    FOR UPDATE OF s";

// --- set-based writes ---

/// Applies net deltas to levels the transaction has already locked.
pub(super) const UPDATE_STOCK: &str = "\
    UPDATE stock_levels s \
    SET on_hand = s.on_hand + u.on_hand_delta, \
        reserved = s.reserved + u.reserved_delta, \
        updated_at = $6 \
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int8[]) \
         AS u(tenant_id, warehouse_id, sku, on_hand_delta, reserved_delta) \
    WHERE s.tenant_id = u.tenant_id AND s.warehouse_id = u.warehouse_id AND s.sku = u.sku";

/// `WITH ORDINALITY ... ORDER BY` keeps `seq` in the order the entries were planned.
pub(super) const INSERT_LEDGER: &str = "\
    INSERT INTO stock_ledger (id, tenant_id, warehouse_id, sku, kind, on_hand_delta, \
        reserved_delta, on_hand_after, reserved_after, reason, order_id, created_at) \
    SELECT id, tenant_id, warehouse_id, sku, kind, on_hand_delta, reserved_delta, \
        on_hand_after, reserved_after, reason, order_id, created_at \
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::int8[], \
        $7::int8[], $8::int8[], $9::int8[], $10::text[], $11::uuid[], $12::timestamptz[]) \
        WITH ORDINALITY AS u(id, tenant_id, warehouse_id, sku, kind, on_hand_delta, \
        reserved_delta, on_hand_after, reserved_after, reason, order_id, created_at, ord) \
    ORDER BY ord";

pub(super) const INSERT_ORDERS: &str = "\
    INSERT INTO orders (id, tenant_id, status, allocation, lines, customer, shipping_address, \
        total_amount, currency, idempotency_key, created_at, updated_at) \
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], \
        $6::jsonb[], $7::jsonb[], $8::int8[], $9::text[], $10::text[], $11::timestamptz[], \
        $12::timestamptz[])";

pub(super) const INSERT_IDEMPOTENCY: &str = "\
    INSERT INTO idempotency_keys (tenant_id, key, request_hash, order_id, created_at) \
    SELECT tenant_id, key, request_hash, order_id, $5 \
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[]) \
         AS u(tenant_id, key, request_hash, order_id)";

pub(super) const INSERT_OUTBOX: &str = "\
    INSERT INTO outbox (id, tenant_id, topic, aggregate_id, envelope, created_at) \
    SELECT id, tenant_id, topic, aggregate_id, envelope, created_at \
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[], \
        $6::timestamptz[]) WITH ORDINALITY \
        AS u(id, tenant_id, topic, aggregate_id, envelope, created_at, ord) \
    ORDER BY ord";

pub(super) fn orders_by_id() -> String {
    format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = ANY($1::uuid[])")
}

/// Whether an order exists, after waiting for any transaction still appending to the outbox
/// (see [`OUTBOX_LOCK`]): used to learn the fate of a batch whose `COMMIT` got no answer.
pub(super) const ORDER_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)";

#[cfg(test)]
mod tests {
    #[test]
    fn the_outbox_lock_uses_the_published_key() {
        let key = super::super::OUTBOX_LOCK_KEY.to_string();
        assert_eq!(
            super::OUTBOX_LOCK,
            format!("SELECT pg_advisory_xact_lock({key})")
        );
    }
}
