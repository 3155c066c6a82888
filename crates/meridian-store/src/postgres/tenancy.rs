//! Tenants, API keys, users, refresh tokens, signing keys and revocations.
//!
//! A revocation takes the outbox lock before its row is inserted, so revocation `seq`s,
//! like outbox `seq`s, are allocated in commit order: an instance that has applied
//! everything up to `seq` never misses a smaller one committed later.

use deadpool_postgres::Transaction;
use meridian_core::{ApiKeyId, EventSource, TenantId, Timestamp, UserId};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{PgStore, error, rows, sql, writes};
use crate::keys::{ApiKeySecret, hashes_equal, parse_api_key};
use crate::{
    ApiKey, CreatedApiKey, NewApiKey, NewRefreshToken, NewUser, Principal, RefreshOutcome,
    RefreshedUser, Result, Revocation, RevocationKind, Role, SUBJECT_REVOCATION_HORIZON,
    StoreError, StoredSigningKey, Subject, Tenant, User, UserLogin,
};

pub(super) async fn create_tenant(store: &PgStore, name: &str) -> Result<Tenant> {
    let tenant = Tenant {
        id: TenantId::new(),
        name: name.to_owned(),
        plan: crate::DEFAULT_PLAN.to_owned(),
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
        .prepare_cached("SELECT id, name, plan, created_at FROM tenants WHERE id = $1")
        .await
        .map_err(error::db)?;
    let row = client
        .query_opt(&stmt, &[tenant.as_uuid()])
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("tenant", tenant))?;
    rows::tenant(&row)
}

pub(super) async fn set_tenant_plan(
    store: &PgStore,
    tenant: TenantId,
    plan: &str,
) -> Result<Tenant> {
    let plan = crate::check_plan(plan)?;
    let client = store.client().await?;
    let row = client
        .query_opt(
            "UPDATE tenants SET plan = $2 WHERE id = $1 RETURNING id, name, plan, created_at",
            &[tenant.as_uuid(), &plan],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("tenant", tenant))?;
    rows::tenant(&row)
}

// --- revocations ---

async fn revoke(
    tx: &Transaction<'_>,
    events: &EventSource,
    kind: RevocationKind,
    subject: &str,
    tenant: TenantId,
    at: Timestamp,
    expires_at: Timestamp,
) -> Result<Revocation> {
    tx.batch_execute(sql::OUTBOX_LOCK)
        .await
        .map_err(error::db)?;
    let row = tx
        .query_one(
            "INSERT INTO revocations (kind, subject, tenant_id, at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING seq",
            &[&kind.as_str(), &subject, tenant.as_uuid(), &at, &expires_at],
        )
        .await
        .map_err(error::db)?;
    let r = Revocation {
        seq: rows::get(&row, "seq")?,
        kind,
        subject: subject.to_owned(),
        tenant_id: tenant,
        at,
        expires_at,
    };
    writes::append_outbox_pooled(tx, &[crate::revocation_event(events, &r)]).await?;
    Ok(r)
}

pub(super) async fn revoke_token(
    store: &PgStore,
    tenant: TenantId,
    jti: &str,
    expires_at: Timestamp,
) -> Result<Revocation> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let now = meridian_core::now();
    let r = revoke(
        &tx,
        &store.events,
        RevocationKind::Token,
        jti,
        tenant,
        now,
        expires_at,
    )
    .await?;
    tx.commit().await.map_err(error::db)?;
    Ok(r)
}

pub(super) async fn revocations_after(store: &PgStore, after: i64) -> Result<Vec<Revocation>> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT seq, kind, subject, tenant_id, at, expires_at FROM revocations \
             WHERE seq > $1 AND expires_at > now() ORDER BY seq",
        )
        .await
        .map_err(error::db)?;
    client
        .query(&stmt, &[&after])
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| {
            let kind: &str = rows::get(row, "kind")?;
            Ok(Revocation {
                seq: rows::get(row, "seq")?,
                kind: RevocationKind::parse(kind).ok_or_else(|| {
                    StoreError::Internal(format!("unknown revocation kind {kind}"))
                })?,
                subject: rows::get(row, "subject")?,
                tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
                at: rows::get(row, "at")?,
                expires_at: rows::get(row, "expires_at")?,
            })
        })
        .collect()
}

// --- API keys ---

pub(super) async fn issue_api_key(
    store: &PgStore,
    tenant: TenantId,
    new: NewApiKey,
) -> Result<CreatedApiKey> {
    let secret = ApiKeySecret::generate();
    let key = ApiKey {
        id: secret.id,
        tenant_id: tenant,
        name: new.name,
        role: new.role,
        scopes: new.scopes,
        created_at: meridian_core::now(),
        expires_at: new.expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_at, scopes, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
                &rows::scopes_str(key.scopes),
                &key.expires_at,
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

pub(super) async fn get_api_key(
    store: &PgStore,
    tenant: TenantId,
    key: ApiKeyId,
) -> Result<ApiKey> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {} FROM api_keys WHERE tenant_id = $1 AND id = $2",
                sql::API_KEY_COLUMNS
            ),
            &[tenant.as_uuid(), key.as_uuid()],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("api key", key))?;
    rows::api_key(&row)
}

/// Revoking twice is not an error; the first revocation time is kept. Another tenant's key
/// is `NotFound`, exactly like a key that does not exist.
pub(super) async fn revoke_api_key(store: &PgStore, tenant: TenantId, key: ApiKeyId) -> Result<()> {
    let now = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let n = tx
        .execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3) \
             WHERE tenant_id = $1 AND id = $2",
            &[tenant.as_uuid(), key.as_uuid(), &now],
        )
        .await
        .map_err(error::db)?;
    if n == 0 {
        return Err(StoreError::not_found("api key", key));
    }
    revoke(
        &tx,
        &store.events,
        RevocationKind::ApiKey,
        &key.to_string(),
        tenant,
        now,
        now + SUBJECT_REVOCATION_HORIZON,
    )
    .await?;
    tx.commit().await.map_err(error::db)?;
    Ok(())
}

pub(super) async fn rotate_api_key(
    store: &PgStore,
    tenant: TenantId,
    key: ApiKeyId,
) -> Result<CreatedApiKey> {
    let now = meridian_core::now();
    let fresh = ApiKeySecret::generate();
    let token = fresh.token.replacen(
        &fresh.id.as_uuid().simple().to_string(),
        &key.as_uuid().simple().to_string(),
        1,
    );
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE api_keys SET secret_hash = $3 \
                 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL RETURNING {}",
                sql::API_KEY_COLUMNS
            ),
            &[tenant.as_uuid(), key.as_uuid(), &fresh.hash],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("api key", key))?;
    let updated = rows::api_key(&row)?;
    revoke(
        &tx,
        &store.events,
        RevocationKind::ApiKeySecret,
        &key.to_string(),
        tenant,
        now,
        now + SUBJECT_REVOCATION_HORIZON,
    )
    .await?;
    tx.commit().await.map_err(error::db)?;
    Ok(CreatedApiKey {
        key: updated,
        token,
    })
}

pub(super) async fn touch_api_key(store: &PgStore, key: ApiKeyId, at: Timestamp) -> Result<()> {
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE api_keys SET last_used_at = $2 \
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .await
        .map_err(error::db)?;
    client
        .execute(&stmt, &[key.as_uuid(), &at])
        .await
        .map_err(error::db)?;
    Ok(())
}

pub(super) async fn authenticate(store: &PgStore, token: &str) -> Result<Option<Principal>> {
    let Some((key_id, presented_hash)) = parse_api_key(token) else {
        return Ok(None);
    };
    let client = store.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT k.tenant_id, k.role, k.secret_hash, k.scopes, t.plan \
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.id = $1 AND k.revoked_at IS NULL \
               AND (k.expires_at IS NULL OR k.expires_at > now())",
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
        subject: Subject::ApiKey(key_id),
        role: rows::role(rows::get(&row, "role")?)?,
        scopes: rows::scopes(rows::get(&row, "scopes")?)?,
        plan: rows::get(&row, "plan")?,
    }))
}

// --- users ---

const USER_COLUMNS: &str = "id, tenant_id, email, role, created_at, disabled_at";

fn user(row: &Row) -> Result<User> {
    Ok(User {
        id: UserId::from_uuid(rows::get(row, "id")?),
        tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
        email: rows::get(row, "email")?,
        role: rows::role(rows::get(row, "role")?)?,
        created_at: rows::get(row, "created_at")?,
        disabled_at: rows::get(row, "disabled_at")?,
    })
}

pub(super) async fn create_user(store: &PgStore, tenant: TenantId, new: NewUser) -> Result<User> {
    let user = User {
        id: UserId::new(),
        tenant_id: tenant,
        email: crate::normalize_email(&new.email)?,
        role: new.role,
        created_at: meridian_core::now(),
        disabled_at: None,
    };
    let client = store.client().await?;
    let inserted = client
        .execute(
            "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                user.id.as_uuid(),
                tenant.as_uuid(),
                &user.email,
                &new.password_hash,
                &rows::role_str(user.role),
                &user.created_at,
            ],
        )
        .await;
    match inserted {
        Ok(_) => Ok(user),
        Err(e) if error::is_unique_violation(&e) => {
            Err(StoreError::already_exists("user", &user.email))
        }
        Err(e) if error::is_foreign_key_violation(&e) => {
            Err(StoreError::not_found("tenant", tenant))
        }
        Err(e) => Err(error::db(e)),
    }
}

pub(super) async fn list_users(store: &PgStore, tenant: TenantId) -> Result<Vec<User>> {
    let client = store.client().await?;
    client
        .query(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY id"),
            &[tenant.as_uuid()],
        )
        .await
        .map_err(error::db)?
        .iter()
        .map(user)
        .collect()
}

pub(super) async fn get_user(store: &PgStore, tenant: TenantId, id: UserId) -> Result<User> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"),
            &[tenant.as_uuid(), id.as_uuid()],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("user", id))?;
    user(&row)
}

pub(super) async fn set_user_role(
    store: &PgStore,
    tenant: TenantId,
    id: UserId,
    role: Role,
) -> Result<User> {
    let now = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE users SET role = $3 WHERE tenant_id = $1 AND id = $2 \
                 RETURNING {USER_COLUMNS}"
            ),
            &[tenant.as_uuid(), id.as_uuid(), &rows::role_str(role)],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("user", id))?;
    let u = user(&row)?;
    // Tokens carry the role they were issued with: the old ones must go.
    revoke(
        &tx,
        &store.events,
        RevocationKind::User,
        &id.to_string(),
        tenant,
        now,
        now + SUBJECT_REVOCATION_HORIZON,
    )
    .await?;
    tx.commit().await.map_err(error::db)?;
    Ok(u)
}

pub(super) async fn disable_user(store: &PgStore, tenant: TenantId, id: UserId) -> Result<User> {
    let now = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE users SET disabled_at = coalesce(disabled_at, $3) \
                 WHERE tenant_id = $1 AND id = $2 RETURNING {USER_COLUMNS}"
            ),
            &[tenant.as_uuid(), id.as_uuid(), &now],
        )
        .await
        .map_err(error::db)?
        .ok_or_else(|| StoreError::not_found("user", id))?;
    let u = user(&row)?;
    tx.execute(
        "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE user_id = $1",
        &[id.as_uuid(), &now],
    )
    .await
    .map_err(error::db)?;
    revoke(
        &tx,
        &store.events,
        RevocationKind::User,
        &id.to_string(),
        tenant,
        now,
        now + SUBJECT_REVOCATION_HORIZON,
    )
    .await?;
    tx.commit().await.map_err(error::db)?;
    Ok(u)
}

pub(super) async fn user_logins(store: &PgStore, email: &str) -> Result<Vec<UserLogin>> {
    let Ok(email) = crate::normalize_email(email) else {
        return Ok(Vec::new());
    };
    let client = store.client().await?;
    client
        .query(
            "SELECT u.id, u.tenant_id, u.email, u.role, u.created_at, u.disabled_at, \
             u.password_hash, t.plan FROM users u JOIN tenants t ON t.id = u.tenant_id \
             WHERE u.email = $1 AND u.disabled_at IS NULL ORDER BY u.id",
            &[&email],
        )
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| {
            Ok(UserLogin {
                user: user(row)?,
                password_hash: rows::get(row, "password_hash")?,
                plan: rows::get(row, "plan")?,
            })
        })
        .collect()
}

// --- refresh tokens ---

async fn insert_refresh(tx: &Transaction<'_>, t: &NewRefreshToken, now: Timestamp) -> Result<()> {
    tx.execute(
        "INSERT INTO refresh_tokens (id, family_id, tenant_id, user_id, token_hash, created_at, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &uuid::Uuid::now_v7(),
            &t.family_id,
            t.tenant_id.as_uuid(),
            t.user_id.as_uuid(),
            &t.token_hash,
            &now,
            &t.expires_at,
        ],
    )
    .await
    .map_err(error::db)?;
    Ok(())
}

pub(super) async fn create_refresh_token(store: &PgStore, t: NewRefreshToken) -> Result<()> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    insert_refresh(&tx, &t, meridian_core::now()).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(())
}

pub(super) async fn rotate_refresh_token(
    store: &PgStore,
    presented_hash: &str,
    next: NewRefreshToken,
) -> Result<RefreshOutcome> {
    let now = meridian_core::now();
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    // FOR UPDATE: two concurrent uses of one token serialize; the second sees it spent.
    let Some(row) = tx
        .query_opt(
            "SELECT family_id, user_id, tenant_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            &[&presented_hash],
        )
        .await
        .map_err(error::db)?
    else {
        return Ok(RefreshOutcome::Invalid);
    };
    let family: uuid::Uuid = rows::get(&row, "family_id")?;
    let user_id = UserId::from_uuid(rows::get(&row, "user_id")?);
    let tenant = TenantId::from_uuid(rows::get(&row, "tenant_id")?);
    let expires_at: Timestamp = rows::get(&row, "expires_at")?;
    let used_at: Option<Timestamp> = rows::get(&row, "used_at")?;
    let revoked_at: Option<Timestamp> = rows::get(&row, "revoked_at")?;
    if revoked_at.is_some() || expires_at <= now {
        return Ok(RefreshOutcome::Invalid);
    }
    if used_at.is_some() {
        tx.execute(
            "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE family_id = $1",
            &[&family, &now],
        )
        .await
        .map_err(error::db)?;
        tx.commit().await.map_err(error::db)?;
        return Ok(RefreshOutcome::Reused);
    }
    let row = tx
        .query_one(
            &format!(
                "SELECT {USER_COLUMNS}, (SELECT plan FROM tenants WHERE id = $1) AS plan \
                 FROM users WHERE tenant_id = $1 AND id = $2"
            ),
            &[tenant.as_uuid(), user_id.as_uuid()],
        )
        .await
        .map_err(error::db)?;
    let u = user(&row)?;
    if u.disabled_at.is_some() {
        return Ok(RefreshOutcome::Invalid);
    }
    tx.execute(
        "UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1",
        &[&presented_hash, &now],
    )
    .await
    .map_err(error::db)?;
    let next = NewRefreshToken {
        family_id: family,
        tenant_id: tenant,
        user_id,
        ..next
    };
    insert_refresh(&tx, &next, now).await?;
    tx.commit().await.map_err(error::db)?;
    Ok(RefreshOutcome::Rotated(RefreshedUser {
        user: u,
        plan: rows::get(&row, "plan")?,
    }))
}

pub(super) async fn revoke_refresh_token(store: &PgStore, presented_hash: &str) -> Result<bool> {
    let client = store.client().await?;
    let n = client
        .execute(
            "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now()) \
             WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
            &[&presented_hash],
        )
        .await
        .map_err(error::db)?;
    Ok(n > 0)
}

// --- signing keys ---

pub(super) async fn add_signing_key(
    store: &PgStore,
    key: &StoredSigningKey,
    retire_current_at: Option<Timestamp>,
) -> Result<()> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(error::db)?;
    if let Some(at) = retire_current_at {
        tx.execute(
            "UPDATE signing_keys SET retire_at = $1 WHERE retire_at > $1",
            &[&at],
        )
        .await
        .map_err(error::db)?;
    }
    tx.execute(
        "INSERT INTO signing_keys (kid, alg, encrypted_private_key, public_jwk, created_at, \
         retire_at, expire_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &key.kid,
            &key.alg,
            &key.encrypted_private_key,
            &Json(&key.public_jwk),
            &key.created_at,
            &key.retire_at,
            &key.expire_at,
        ],
    )
    .await
    .map_err(error::db)?;
    tx.commit().await.map_err(error::db)?;
    Ok(())
}

pub(super) async fn signing_keys(store: &PgStore) -> Result<Vec<StoredSigningKey>> {
    let client = store.client().await?;
    client
        .query(
            "SELECT kid, alg, encrypted_private_key, public_jwk, created_at, retire_at, \
             expire_at FROM signing_keys WHERE expire_at > now() ORDER BY created_at, kid",
            &[],
        )
        .await
        .map_err(error::db)?
        .iter()
        .map(|row| {
            let Json(public_jwk) = rows::get(row, "public_jwk")?;
            Ok(StoredSigningKey {
                kid: rows::get(row, "kid")?,
                alg: rows::get(row, "alg")?,
                encrypted_private_key: rows::get(row, "encrypted_private_key")?,
                public_jwk,
                created_at: rows::get(row, "created_at")?,
                retire_at: rows::get(row, "retire_at")?,
                expire_at: rows::get(row, "expire_at")?,
            })
        })
        .collect()
}
