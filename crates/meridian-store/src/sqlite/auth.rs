//! The auth service's tables on SQLite: API keys, users, refresh tokens, signing keys and
//! revocations. Writes run on the writer thread, each in its own `BEGIN IMMEDIATE`
//! transaction; a revocation and its outbox event commit together.

use meridian_core::{ApiKeyId, EventSource, TenantId, Timestamp, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::commands::check_label;
use super::conn::immediate;
use super::error::is_unique_violation;
use super::queries;
use super::rows::{
    api_key_columns, insert_outbox, opt_time, parsed, role_str, scopes_str, time, ts,
};
use crate::keys::{ApiKeySecret, hashes_equal, parse_api_key};
use crate::{
    ApiKey, CreatedApiKey, NewApiKey, NewRefreshToken, NewUser, Principal, RefreshOutcome,
    RefreshedUser, Revocation, RevocationKind, Role, SUBJECT_REVOCATION_HORIZON, Scopes,
    StoreError, StoredSigningKey, Subject, Tenant, User, UserLogin,
};

type Result<T> = std::result::Result<T, StoreError>;

fn bad(i: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        i,
        rusqlite::types::Type::Text,
        format!("unknown {what}").into(),
    )
}

fn role_at(r: &Row<'_>, i: usize) -> rusqlite::Result<Role> {
    let s: String = r.get(i)?;
    Role::parse(&s).ok_or_else(|| bad(i, "role"))
}

// --- tenants ---

pub(super) fn set_tenant_plan(
    conn: &mut Connection,
    tenant: TenantId,
    plan: &str,
) -> Result<Tenant> {
    let plan = crate::check_plan(plan)?;
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached("UPDATE tenants SET plan = ?1 WHERE id = ?2")?
            .execute(params![plan, tenant.to_string()])?;
        if n == 0 {
            return Err(StoreError::not_found("tenant", tenant));
        }
        queries::get_tenant(tx, tenant)
    })
}

// --- revocations ---

fn revoke(
    tx: &Connection,
    events: &EventSource,
    kind: RevocationKind,
    subject: &str,
    tenant: TenantId,
    at: Timestamp,
    expires_at: Timestamp,
) -> Result<Revocation> {
    tx.prepare_cached(
        "INSERT INTO revocations (kind, subject, tenant_id, at, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        kind.as_str(),
        subject,
        tenant.to_string(),
        ts(&at),
        ts(&expires_at)
    ])?;
    let r = Revocation {
        seq: tx.last_insert_rowid(),
        kind,
        subject: subject.to_owned(),
        tenant_id: tenant,
        at,
        expires_at,
    };
    insert_outbox(tx, &crate::revocation_event(events, &r))?;
    Ok(r)
}

pub(super) fn revoke_token(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    jti: &str,
    expires_at: Timestamp,
) -> Result<Revocation> {
    let now = meridian_core::now();
    immediate(conn, |tx| {
        revoke(
            tx,
            events,
            RevocationKind::Token,
            jti,
            tenant,
            now,
            expires_at,
        )
    })
}

fn revocation(r: &Row<'_>) -> rusqlite::Result<Revocation> {
    let kind: String = r.get(1)?;
    Ok(Revocation {
        seq: r.get(0)?,
        kind: RevocationKind::parse(&kind).ok_or_else(|| bad(1, "revocation kind"))?,
        subject: r.get(2)?,
        tenant_id: parsed(r, 3)?,
        at: time(r, 4)?,
        expires_at: time(r, 5)?,
    })
}

pub(super) fn revocations_after(conn: &Connection, after: i64) -> Result<Vec<Revocation>> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, kind, subject, tenant_id, at, expires_at FROM revocations \
             WHERE seq > ?1 AND expires_at > ?2 ORDER BY seq",
        )?
        .query_map(params![after, ts(&meridian_core::now())], revocation)?
        .collect::<rusqlite::Result<_>>()?)
}

// --- API keys ---

pub(super) fn issue_api_key(
    conn: &mut Connection,
    tenant: TenantId,
    new: NewApiKey,
) -> Result<CreatedApiKey> {
    let name = check_label("name", &new.name)?;
    let secret = ApiKeySecret::generate();
    let key = ApiKey {
        id: secret.id,
        tenant_id: tenant,
        name,
        role: new.role,
        scopes: new.scopes,
        created_at: meridian_core::now(),
        expires_at: new.expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    immediate(conn, |tx| {
        queries::get_tenant(tx, tenant)?;
        tx.prepare_cached(
            "INSERT INTO api_keys (id, tenant_id, name, role, secret_hash, created_at, scopes, \
             expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            key.id.to_string(),
            tenant.to_string(),
            key.name,
            role_str(key.role),
            secret.hash,
            ts(&key.created_at),
            scopes_str(key.scopes),
            key.expires_at.as_ref().map(ts),
        ])?;
        Ok(())
    })?;
    Ok(CreatedApiKey {
        key,
        token: secret.token,
    })
}

pub(super) fn list_api_keys(conn: &Connection, tenant: TenantId) -> Result<Vec<ApiKey>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        api_key_columns!(),
        " FROM api_keys WHERE tenant_id = ?1 ORDER BY id"
    ))?;
    let keys = stmt
        .query_map(params![tenant.to_string()], super::rows::api_key)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(keys)
}

pub(super) fn get_api_key(conn: &Connection, tenant: TenantId, key: ApiKeyId) -> Result<ApiKey> {
    conn.prepare_cached(concat!(
        "SELECT ",
        api_key_columns!(),
        " FROM api_keys WHERE tenant_id = ?1 AND id = ?2"
    ))?
    .query_row(
        params![tenant.to_string(), key.to_string()],
        super::rows::api_key,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("api key", key))
}

/// Revoking an already revoked key succeeds and keeps the first revocation time.
pub(super) fn revoke_api_key(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    key: ApiKeyId,
) -> Result<()> {
    let now = meridian_core::now();
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) \
                 WHERE tenant_id = ?2 AND id = ?3",
            )?
            .execute(params![ts(&now), tenant.to_string(), key.to_string()])?;
        if n == 0 {
            return Err(StoreError::not_found("api key", key));
        }
        revoke(
            tx,
            events,
            RevocationKind::ApiKey,
            &key.to_string(),
            tenant,
            now,
            now + SUBJECT_REVOCATION_HORIZON,
        )?;
        Ok(())
    })
}

pub(super) fn rotate_api_key(
    conn: &mut Connection,
    events: &EventSource,
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
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "UPDATE api_keys SET secret_hash = ?1 \
                 WHERE tenant_id = ?2 AND id = ?3 AND revoked_at IS NULL",
            )?
            .execute(params![fresh.hash, tenant.to_string(), key.to_string()])?;
        if n == 0 {
            return Err(StoreError::not_found("api key", key));
        }
        revoke(
            tx,
            events,
            RevocationKind::ApiKeySecret,
            &key.to_string(),
            tenant,
            now,
            now + SUBJECT_REVOCATION_HORIZON,
        )?;
        Ok(CreatedApiKey {
            key: get_api_key(tx, tenant, key)?,
            token,
        })
    })
}

pub(super) fn touch_api_key(conn: &mut Connection, key: ApiKeyId, at: Timestamp) -> Result<()> {
    immediate(conn, |tx| {
        tx.prepare_cached(
            "UPDATE api_keys SET last_used_at = ?1 \
             WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
        )?
        .execute(params![ts(&at), key.to_string()])?;
        Ok(())
    })
}

pub(super) fn authenticate(conn: &Connection, token: &str) -> Result<Option<Principal>> {
    let Some((key_id, presented)) = parse_api_key(token) else {
        return Ok(None);
    };
    let row = conn
        .prepare_cached(
            "SELECT k.tenant_id, k.role, k.secret_hash, k.revoked_at, k.scopes, k.expires_at, \
             t.plan FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = ?1",
        )?
        .query_row(params![key_id.to_string()], |r| {
            Ok((
                parsed::<TenantId>(r, 0)?,
                role_at(r, 1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                opt_time(r, 5)?,
                r.get::<_, String>(6)?,
            ))
        })
        .optional()?;
    let Some((tenant_id, role, stored, revoked_at, scopes, expires_at, plan)) = row else {
        return Ok(None);
    };
    if revoked_at.is_some()
        || !hashes_equal(&presented, &stored)
        || expires_at.is_some_and(|e| e <= meridian_core::now())
    {
        return Ok(None);
    }
    let scopes = Scopes::parse(&scopes).map_err(StoreError::Internal)?;
    Ok(Some(Principal {
        tenant_id,
        subject: Subject::ApiKey(key_id),
        role,
        scopes,
        plan,
    }))
}

// --- users ---

const USER_COLUMNS: &str = "id, tenant_id, email, role, created_at, disabled_at";

fn user(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: parsed(r, 0)?,
        tenant_id: parsed(r, 1)?,
        email: r.get(2)?,
        role: role_at(r, 3)?,
        created_at: time(r, 4)?,
        disabled_at: opt_time(r, 5)?,
    })
}

pub(super) fn create_user(conn: &mut Connection, tenant: TenantId, new: NewUser) -> Result<User> {
    let user = User {
        id: UserId::new(),
        tenant_id: tenant,
        email: crate::normalize_email(&new.email)?,
        role: new.role,
        created_at: meridian_core::now(),
        disabled_at: None,
    };
    immediate(conn, |tx| {
        queries::get_tenant(tx, tenant)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO users (id, tenant_id, email, password_hash, role, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                user.id.to_string(),
                tenant.to_string(),
                user.email,
                new.password_hash,
                role_str(user.role),
                ts(&user.created_at),
            ]);
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::already_exists("user", &user.email))
            }
            Err(e) => Err(e.into()),
        }
    })?;
    Ok(user)
}

pub(super) fn list_users(conn: &Connection, tenant: TenantId) -> Result<Vec<User>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 ORDER BY id"
        ))?
        .query_map(params![tenant.to_string()], user)?
        .collect::<rusqlite::Result<_>>()?)
}

pub(super) fn get_user(conn: &Connection, tenant: TenantId, id: UserId) -> Result<User> {
    conn.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND id = ?2"
    ))?
    .query_row(params![tenant.to_string(), id.to_string()], user)
    .optional()?
    .ok_or_else(|| StoreError::not_found("user", id))
}

pub(super) fn set_user_role(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    id: UserId,
    role: Role,
) -> Result<User> {
    let now = meridian_core::now();
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached("UPDATE users SET role = ?1 WHERE tenant_id = ?2 AND id = ?3")?
            .execute(params![role_str(role), tenant.to_string(), id.to_string()])?;
        if n == 0 {
            return Err(StoreError::not_found("user", id));
        }
        // Tokens carry the role they were issued with: the old ones must go.
        revoke(
            tx,
            events,
            RevocationKind::User,
            &id.to_string(),
            tenant,
            now,
            now + SUBJECT_REVOCATION_HORIZON,
        )?;
        get_user(tx, tenant, id)
    })
}

pub(super) fn disable_user(
    conn: &mut Connection,
    events: &EventSource,
    tenant: TenantId,
    id: UserId,
) -> Result<User> {
    let now = meridian_core::now();
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "UPDATE users SET disabled_at = COALESCE(disabled_at, ?1) \
                 WHERE tenant_id = ?2 AND id = ?3",
            )?
            .execute(params![ts(&now), tenant.to_string(), id.to_string()])?;
        if n == 0 {
            return Err(StoreError::not_found("user", id));
        }
        tx.prepare_cached(
            "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?1) WHERE user_id = ?2",
        )?
        .execute(params![ts(&now), id.to_string()])?;
        revoke(
            tx,
            events,
            RevocationKind::User,
            &id.to_string(),
            tenant,
            now,
            now + SUBJECT_REVOCATION_HORIZON,
        )?;
        get_user(tx, tenant, id)
    })
}

pub(super) fn user_logins(conn: &Connection, email: &str) -> Result<Vec<UserLogin>> {
    let Ok(email) = crate::normalize_email(email) else {
        return Ok(Vec::new());
    };
    Ok(conn
        .prepare_cached(
            "SELECT u.id, u.tenant_id, u.email, u.role, u.created_at, u.disabled_at, \
             u.password_hash, t.plan FROM users u JOIN tenants t ON t.id = u.tenant_id \
             WHERE u.email = ?1 AND u.disabled_at IS NULL ORDER BY u.id",
        )?
        .query_map(params![email], |r| {
            Ok(UserLogin {
                user: user(r)?,
                password_hash: r.get(6)?,
                plan: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

// --- refresh tokens ---

fn insert_refresh(tx: &Connection, t: &NewRefreshToken, now: Timestamp) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO refresh_tokens (id, family_id, tenant_id, user_id, token_hash, created_at, \
         expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        uuid::Uuid::now_v7().to_string(),
        t.family_id.to_string(),
        t.tenant_id.to_string(),
        t.user_id.to_string(),
        t.token_hash,
        ts(&now),
        ts(&t.expires_at),
    ])?;
    Ok(())
}

pub(super) fn create_refresh_token(conn: &mut Connection, t: NewRefreshToken) -> Result<()> {
    let now = meridian_core::now();
    immediate(conn, |tx| insert_refresh(tx, &t, now))
}

pub(super) fn rotate_refresh_token(
    conn: &mut Connection,
    presented_hash: &str,
    next: NewRefreshToken,
) -> Result<RefreshOutcome> {
    let now = meridian_core::now();
    // The reuse path must commit its family revocation, so it is a successful transaction
    // that returns `Reused`.
    immediate(conn, |tx| {
        let row = tx
            .prepare_cached(
                "SELECT r.family_id, r.user_id, r.tenant_id, r.expires_at, r.used_at, \
                 r.revoked_at FROM refresh_tokens r WHERE r.token_hash = ?1",
            )?
            .query_row(params![presented_hash], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    parsed::<UserId>(r, 1)?,
                    parsed::<TenantId>(r, 2)?,
                    time(r, 3)?,
                    opt_time(r, 4)?,
                    opt_time(r, 5)?,
                ))
            })
            .optional()?;
        let Some((family, user_id, tenant, expires_at, used_at, revoked_at)) = row else {
            return Ok(RefreshOutcome::Invalid);
        };
        if revoked_at.is_some() || expires_at <= now {
            return Ok(RefreshOutcome::Invalid);
        }
        if used_at.is_some() {
            tx.prepare_cached(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?1) \
                 WHERE family_id = ?2",
            )?
            .execute(params![ts(&now), family])?;
            return Ok(RefreshOutcome::Reused);
        }
        let u = get_user(tx, tenant, user_id)?;
        if u.disabled_at.is_some() {
            return Ok(RefreshOutcome::Invalid);
        }
        tx.prepare_cached("UPDATE refresh_tokens SET used_at = ?1 WHERE token_hash = ?2")?
            .execute(params![ts(&now), presented_hash])?;
        let next = NewRefreshToken {
            family_id: family
                .parse()
                .map_err(|_| StoreError::Internal("bad family id".into()))?,
            tenant_id: tenant,
            user_id,
            ..next
        };
        insert_refresh(tx, &next, now)?;
        let plan = queries::get_tenant(tx, tenant)?.plan;
        Ok(RefreshOutcome::Rotated(RefreshedUser { user: u, plan }))
    })
}

pub(super) fn revoke_refresh_token(conn: &mut Connection, presented_hash: &str) -> Result<bool> {
    let now = meridian_core::now();
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?1) \
                 WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = ?2)",
            )?
            .execute(params![ts(&now), presented_hash])?;
        Ok(n > 0)
    })
}

// --- signing keys ---

pub(super) fn add_signing_key(
    conn: &mut Connection,
    key: &StoredSigningKey,
    retire_current_at: Option<Timestamp>,
) -> Result<()> {
    let jwk = serde_json::to_string(&key.public_jwk)
        .map_err(|e| StoreError::Internal(format!("cannot serialize a JWK: {e}")))?;
    immediate(conn, |tx| {
        if let Some(at) = retire_current_at {
            tx.prepare_cached("UPDATE signing_keys SET retire_at = ?1 WHERE retire_at > ?1")?
                .execute(params![ts(&at)])?;
        }
        tx.prepare_cached(
            "INSERT INTO signing_keys (kid, alg, encrypted_private_key, public_jwk, created_at, \
             retire_at, expire_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            key.kid,
            key.alg,
            key.encrypted_private_key,
            jwk,
            ts(&key.created_at),
            ts(&key.retire_at),
            ts(&key.expire_at),
        ])?;
        Ok(())
    })
}

pub(super) fn signing_keys(conn: &Connection) -> Result<Vec<StoredSigningKey>> {
    Ok(conn
        .prepare_cached(
            "SELECT kid, alg, encrypted_private_key, public_jwk, created_at, retire_at, expire_at \
             FROM signing_keys WHERE expire_at > ?1 ORDER BY created_at, kid",
        )?
        .query_map(params![ts(&meridian_core::now())], |r| {
            Ok(StoredSigningKey {
                kid: r.get(0)?,
                alg: r.get(1)?,
                encrypted_private_key: r.get(2)?,
                public_jwk: super::rows::json(r, 3)?,
                created_at: time(r, 4)?,
                retire_at: time(r, 5)?,
                expire_at: time(r, 6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}
