//! Products. Every change writes its `platform.data.product.*` event (subject: the SKU,
//! data: the product) to the outbox in the same transaction.

use meridian_catalog::{NewProduct, Product, ProductPatch};
use meridian_core::{ProductId, Sku, TenantId, Timestamp};
use tokio_postgres::types::Json;

use super::{PgStore, error, into_page, page_limit, rows, sql, writes};
use crate::{Page, PageRequest, Result, StoreError, decode_cursor};

/// The product event `event` (`product.created`, ...) for `product`.
fn event(
    store: &PgStore,
    event: &str,
    product: &Product,
    now: Timestamp,
) -> meridian_core::OutboxEvent {
    let data = serde_json::to_value(product).unwrap_or(serde_json::Value::Null);
    store.events.event(
        "data",
        event,
        product.tenant_id,
        product.sku.as_str(),
        data,
        now,
    )
}

pub(super) async fn create(store: &PgStore, tenant: TenantId, new: NewProduct) -> Result<Product> {
    let now = meridian_core::now();
    let product = Product {
        id: ProductId::new(),
        tenant_id: tenant,
        sku: new.sku,
        name: new.name,
        description: new.description,
        price: new.price,
        attributes: new.attributes,
        created_at: now,
        updated_at: now,
    };
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO products ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            sql::PRODUCT_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    let inserted = tx
        .execute(
            &stmt,
            &[
                product.id.as_uuid(),
                tenant.as_uuid(),
                &product.sku.as_str(),
                &product.name,
                &product.description,
                &product.price.amount,
                &product.price.currency.as_str(),
                &Json(&product.attributes),
                &product.created_at,
                &product.updated_at,
            ],
        )
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if error::is_unique_violation(&e) => {
            return Err(StoreError::already_exists("product", &product.sku));
        }
        Err(e) if error::is_foreign_key_violation(&e) => {
            return Err(StoreError::not_found("tenant", tenant));
        }
        Err(e) => return Err(error::db(e)),
    }
    writes::append_outbox_pooled(&tx, &[event(store, "product.created", &product, now)]).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(product)
}

pub(super) async fn get(store: &PgStore, tenant: TenantId, sku: &Sku) -> Result<Product> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {} FROM products WHERE tenant_id = $1 AND sku = $2",
            sql::PRODUCT_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    let row = client
        .query_opt(&stmt, &[tenant.as_uuid(), &sku.as_str()])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("product", sku))?;
    rows::product(&row)
}

pub(super) async fn list(
    store: &PgStore,
    tenant: TenantId,
    page: PageRequest,
) -> Result<Page<Product>> {
    let limit = page_limit(&page);
    // Every SKU sorts after "" byte-wise, so the first page needs no special statement.
    let after = match &page.cursor {
        Some(c) => decode_cursor(c)?,
        None => String::new(),
    };
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {} FROM products WHERE tenant_id = $1 AND sku > $2 ORDER BY sku LIMIT $3",
            sql::PRODUCT_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    let items = client
        .query(&stmt, &[tenant.as_uuid(), &after, &(limit as i64 + 1)])
        .await
        .map_err(error::db)?
        .iter()
        .map(rows::product)
        .collect::<Result<Vec<_>>>()?;
    Ok(into_page(items, limit, |p| p.sku.to_string()))
}

pub(super) async fn update(
    store: &PgStore,
    tenant: TenantId,
    sku: &Sku,
    patch: ProductPatch,
) -> Result<Product> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let select = tx
        .prepare_cached(&format!(
            "SELECT {} FROM products WHERE tenant_id = $1 AND sku = $2 FOR UPDATE",
            sql::PRODUCT_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    let row = tx
        .query_opt(&select, &[tenant.as_uuid(), &sku.as_str()])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("product", sku))?;
    let mut product = rows::product(&row)?;
    if !patch.apply(&mut product) {
        // Nothing changed: no write and no event.
        return Ok(product);
    }
    let now = meridian_core::now();
    product.updated_at = now;
    let update = tx
        .prepare_cached(
            "UPDATE products SET name = $2, description = $3, price_amount = $4, \
             price_currency = $5, attributes = $6, updated_at = $7 WHERE id = $1",
        )
        .await
        .map_err(error::db)?;
    tx.execute(
        &update,
        &[
            product.id.as_uuid(),
            &product.name,
            &product.description,
            &product.price.amount,
            &product.price.currency.as_str(),
            &Json(&product.attributes),
            &product.updated_at,
        ],
    )
    .await
    .map_err(error::db)?;
    writes::append_outbox_pooled(&tx, &[event(store, "product.updated", &product, now)]).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(product)
}

pub(super) async fn delete(store: &PgStore, tenant: TenantId, sku: &Sku) -> Result<()> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let stmt = tx
        .prepare_cached(&format!(
            "DELETE FROM products WHERE tenant_id = $1 AND sku = $2 RETURNING {}",
            sql::PRODUCT_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    let row = tx
        .query_opt(&stmt, &[tenant.as_uuid(), &sku.as_str()])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("product", sku))?;
    let product = rows::product(&row)?;
    let now = meridian_core::now();
    writes::append_outbox_pooled(&tx, &[event(store, "product.deleted", &product, now)]).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(())
}
