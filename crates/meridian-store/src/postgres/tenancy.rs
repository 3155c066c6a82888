//! Tenants and API keys.

use meridian_core::{ApiKeyId, TenantId};

use super::{PgStore, error, rows, sql};
use crate::keys::{ApiKeySecret, hashes_equal, parse_api_key};
use crate::{ApiKey, CreatedApiKey, Principal, Result, Role, StoreError, Tenant};

pub(super) async fn create_tenant(store: &PgStore, name: &str) -> Result<Tenant> {
    let tenant = Tenant {
        id: TenantId::new(),
        name: name.to_owned(),
        created_at: meridian_core::now(),
    };
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .await
        .map_err(error::db)?;
    client
        .execute(
            &stmt,
            &[tenant.id.as_uuid(), &tenant.name, &tenant.created_at],
        )
        .await
        .map_err(error::db)?;
    Ok(tenant)
}

pub(super) async fn get_tenant(store: &PgStore, tenant: TenantId) -> Result<Tenant> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached("SELECT id, name, created_at FROM tenants WHERE id = $1")
        .await
        .map_err(error::db)?;
    let row = client
        .query_opt(&stmt, &[tenant.as_uuid()])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("tenant", tenant))?;
    rows::tenant(&row)
}

pub(super) async fn create_api_key(
    store: &PgStore,
    tenant: TenantId,
    name: &str,
) -> Result<CreatedApiKey> {
    let secret = ApiKeySecret::generate();
    let key = ApiKey {
        id: secret.id,
        tenant_id: tenant,
        name: name.to_owned(),
        role: Role::Admin,
        created_at: meridian_core::now(),
        revoked_at: None,
    };
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .map_err(error::db)?;
    let inserted = client
        .execute(
            &stmt,
            &[
                key.id.as_uuid(),
                tenant.as_uuid(),
                &key.name,
                &rows::role_str(key.role),
                &secret.hash,
                &key.created_at,
            ],
        )
        .await;
    match inserted {
        Ok(_) => Ok(CreatedApiKey {
            key,
            token: secret.token,
        }),
        Err(e) if error::is_foreign_key_violation(&e) => {
            Err(StoreError::not_found("tenant", tenant))
        }
        Err(e) => Err(error::db(e)),
    }
}

pub(super) async fn list_api_keys(store: &PgStore, tenant: TenantId) -> Result<Vec<ApiKey>> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
            sql::API_KEY_COLUMNS
        ))
        .await
        .map_err(error::db)?;
    client
        .query(&stmt, &[tenant.as_uuid()])
        .await
        .map_err(error::db)?
        .iter()
        .map(rows::api_key)
        .collect()
}

/// Revoking twice is not an error; the first revocation time is kept. Another tenant's key
/// is `NotFound`, exactly like a key that does not exist.
pub(super) async fn revoke_api_key(store: &PgStore, tenant: TenantId, key: ApiKeyId) -> Result<()> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3) \
             WHERE tenant_id = $1 AND id = $2",
        )
        .await
        .map_err(error::db)?;
    let n = client
        .execute(
            &stmt,
            &[tenant.as_uuid(), key.as_uuid(), &meridian_core::now()],
        )
        .await
        .map_err(error::db)?;
    if n == 0 {
        return Err(StoreError::not_found("api key", key));
    }
    Ok(())
}

pub(super) async fn authenticate(store: &PgStore, token: &str) -> Result<Option<Principal>> {
    let Some((key_id, presented_hash)) = parse_api_key(token) else {
        return Ok(None);
    };
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT tenant_id, role, secret_hash FROM api_keys \
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .await
        .map_err(error::db)?;
    let Some(row) = client
        .query_opt(&stmt, &[key_id.as_uuid()])
        .await
        .map_err(error::db)?
    else {
        return Ok(None);
    };
    let stored_hash: &str = rows::get(&row, "secret_hash")?;
    if !hashes_equal(stored_hash, &presented_hash) {
        return Ok(None);
    }
    Ok(Some(Principal {
        tenant_id: TenantId::from_uuid(rows::get(&row, "tenant_id")?),
        key_id,
        role: rows::role(rows::get(&row, "role")?)?,
    }))
}
