//! The notification tables on SQLite: writes through the writer thread, reads from the
//! read pool.

use async_trait::async_trait;
use meridian_core::{TenantId, Timestamp, ValidationErrors};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::SqliteStore;
use super::conn::immediate;
use super::queries::into_page;
use super::rows::{json, opt_parsed, opt_time, parsed, time, to_json, ts};
use crate::notify::{
    AfterAttempt, Channel, DeliveryAttempt, NOTIFICATION_COLUMNS, NewNotification, NewTemplate,
    NewWebhookEndpoint, Notification, NotificationId, NotificationStatus, NotifyStore,
    TEMPLATE_COLUMNS, Template, TemplateId, TemplatePatch, WEBHOOK_COLUMNS, WebhookEndpoint,
    WebhookId, WebhookPatch, duplicate_template, stale_attempt,
};
use crate::{Page, PageRequest, Result, StoreError, decode_cursor};

fn bad(i: usize, msg: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.to_owned().into())
}

/// Every row one statement returns, mapped.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_map(params, map)?
        .collect::<rusqlite::Result<_>>()?)
}

/// The one row one statement returns, mapped; `NotFound` for `what` `id` without it.
fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
    what: &'static str,
    id: impl ToString,
) -> Result<T> {
    conn.prepare_cached(sql)?
        .query_row(params, map)
        .optional()?
        .ok_or_else(|| StoreError::not_found(what, id))
}

/// Runs one statement and fails with `NotFound` for `what` `id` when it changed no row.
fn change(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    what: &'static str,
    id: impl ToString,
) -> Result<()> {
    if conn.prepare_cached(sql)?.execute(params)? == 0 {
        return Err(StoreError::not_found(what, id));
    }
    Ok(())
}

/// `NotFound` unless the tenant exists (checked before inserting a row of its own).
fn require_tenant(conn: &Connection, tenant: TenantId) -> Result<()> {
    let known: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")?
        .query_row(params![tenant.to_string()], |r| r.get(0))
        .optional()?;
    known
        .map(|_| ())
        .ok_or_else(|| StoreError::not_found("tenant", tenant))
}

fn webhook(r: &Row<'_>) -> rusqlite::Result<WebhookEndpoint> {
    Ok(WebhookEndpoint {
        id: parsed(r, 0)?,
        tenant_id: parsed(r, 1)?,
        url: r.get(2)?,
        description: r.get(3)?,
        event_types: json(r, 4)?,
        enabled: r.get(5)?,
        secret: r.get(6)?,
        previous_secret: r.get(7)?,
        previous_secret_expires_at: opt_time(r, 8)?,
        disabled_reason: r.get(9)?,
        created_at: time(r, 10)?,
        updated_at: time(r, 11)?,
    })
}

fn notification(r: &Row<'_>) -> rusqlite::Result<Notification> {
    let channel: String = r.get(4)?;
    let status: String = r.get(8)?;
    Ok(Notification {
        id: parsed(r, 0)?,
        tenant_id: parsed(r, 1)?,
        event_id: parsed(r, 2)?,
        event_type: r.get(3)?,
        channel: Channel::parse(&channel).ok_or_else(|| bad(4, "unknown channel"))?,
        recipient: r.get(5)?,
        webhook_id: opt_parsed(r, 6)?,
        payload: r.get(7)?,
        status: NotificationStatus::parse(&status).ok_or_else(|| bad(8, "unknown status"))?,
        attempts: r.get(9)?,
        next_attempt_at: opt_time(r, 10)?,
        last_error: r.get(11)?,
        created_at: time(r, 12)?,
        updated_at: time(r, 13)?,
    })
}

fn attempt(r: &Row<'_>) -> rusqlite::Result<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        notification_id: parsed(r, 0)?,
        attempt: r.get(1)?,
        at: time(r, 2)?,
        status_code: r.get(3)?,
        error: r.get(4)?,
        duration_ms: r.get(5)?,
        succeeded: r.get(6)?,
    })
}

fn find_webhook(conn: &Connection, tenant: TenantId, id: WebhookId) -> Result<WebhookEndpoint> {
    one(
        conn,
        &format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE id = ?1 AND tenant_id = ?2"
        ),
        params![id.to_string(), tenant.to_string()],
        webhook,
        "webhook",
        id,
    )
}

fn find_notification(
    conn: &Connection,
    tenant: TenantId,
    id: NotificationId,
) -> Result<Notification> {
    one(
        conn,
        &format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = ?1 AND tenant_id = ?2"
        ),
        params![id.to_string(), tenant.to_string()],
        notification,
        "notification",
        id,
    )
}

fn create_webhook(
    conn: &mut Connection,
    tenant: TenantId,
    id: WebhookId,
    new: &NewWebhookEndpoint,
) -> Result<WebhookEndpoint> {
    let types = to_json("webhook event types", &new.event_types)?;
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        require_tenant(tx, tenant)?;
        tx.prepare_cached(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, \
             enabled, secret, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        )?
        .execute(params![
            id.to_string(),
            tenant.to_string(),
            new.url,
            new.description,
            types,
            new.enabled,
            new.secret,
            now,
        ])?;
        find_webhook(tx, tenant, id)
    })
}

fn list_webhooks(
    conn: &Connection,
    tenant: TenantId,
    page: &PageRequest,
) -> Result<Page<WebhookEndpoint>> {
    let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
    let after = match &page.cursor {
        Some(c) => cursor_id(c)?,
        None => String::new(),
    };
    let items = all(
        conn,
        &format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints \
             WHERE tenant_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ),
        params![tenant.to_string(), after, limit as i64 + 1],
        webhook,
    )?;
    Ok(into_page(items, limit, |i| i.id.to_string()))
}

/// A cursor holding a UUID (the key these listings sort by), as text.
fn cursor_id(cursor: &str) -> Result<String> {
    decode_cursor(cursor)?
        .parse::<uuid::Uuid>()
        .map(|u| u.to_string())
        .map_err(|_| {
            StoreError::Validation(ValidationErrors::single(
                "cursor",
                "is not a cursor this API returned",
            ))
        })
}

fn update_webhook(
    conn: &mut Connection,
    tenant: TenantId,
    id: WebhookId,
    patch: &WebhookPatch,
) -> Result<WebhookEndpoint> {
    let types = patch
        .event_types
        .as_ref()
        .map(|t| to_json("webhook event types", t))
        .transpose()?;
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        change(
            tx,
            "UPDATE webhook_endpoints SET url = COALESCE(?3, url), \
             description = COALESCE(?4, description), \
             event_types = COALESCE(?5, event_types), enabled = COALESCE(?6, enabled), \
             disabled_reason = CASE WHEN ?6 = 1 THEN NULL ELSE disabled_reason END, \
             updated_at = ?7 WHERE id = ?1 AND tenant_id = ?2",
            params![
                id.to_string(),
                tenant.to_string(),
                patch.url,
                patch.description,
                types,
                patch.enabled,
                now,
            ],
            "webhook",
            id,
        )?;
        find_webhook(tx, tenant, id)
    })
}

fn delete_webhook(conn: &mut Connection, tenant: TenantId, id: WebhookId) -> Result<()> {
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        change(
            tx,
            "DELETE FROM webhook_endpoints WHERE id = ?1 AND tenant_id = ?2",
            params![id.to_string(), tenant.to_string()],
            "webhook",
            id,
        )?;
        tx.prepare_cached(
            "UPDATE notifications SET status = 'failed', next_attempt_at = NULL, \
             last_error = 'endpoint deleted', updated_at = ?3 \
             WHERE tenant_id = ?1 AND webhook_id = ?2 AND status = 'pending'",
        )?
        .execute(params![tenant.to_string(), id.to_string(), now])?;
        Ok(())
    })
}

fn rotate_secret(
    conn: &mut Connection,
    tenant: TenantId,
    id: WebhookId,
    secret: &str,
    previous_expires_at: &Timestamp,
) -> Result<WebhookEndpoint> {
    let now = ts(&meridian_core::now());
    let expires = ts(previous_expires_at);
    immediate(conn, |tx| {
        change(
            tx,
            "UPDATE webhook_endpoints SET previous_secret = secret, \
             previous_secret_expires_at = ?4, secret = ?3, updated_at = ?5 \
             WHERE id = ?1 AND tenant_id = ?2",
            params![id.to_string(), tenant.to_string(), secret, expires, now],
            "webhook",
            id,
        )?;
        find_webhook(tx, tenant, id)
    })
}

fn disable_webhook(
    conn: &mut Connection,
    events: &meridian_core::EventSource,
    tenant: TenantId,
    id: WebhookId,
    reason: &str,
) -> Result<bool> {
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        let n = tx
            .prepare_cached(
                "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?3, updated_at = ?4 \
                 WHERE id = ?1 AND tenant_id = ?2 AND enabled = 1",
            )?
            .execute(params![id.to_string(), tenant.to_string(), reason, now])?;
        let endpoint = find_webhook(tx, tenant, id)?;
        if n == 1 {
            let event = crate::notify::webhook_disabled_event(events, tenant, &endpoint, reason);
            super::rows::insert_outbox(tx, &event)?;
        }
        Ok(n == 1)
    })
}

fn enqueue(conn: &mut Connection, items: &[NewNotification]) -> Result<Vec<bool>> {
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO notifications (id, tenant_id, event_id, event_type, channel, recipient, \
             webhook_id, payload, status, attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', 0, ?9, ?10, ?10) \
             ON CONFLICT (event_id, channel, recipient) DO NOTHING",
        )?;
        let mut inserted = Vec::with_capacity(items.len());
        for n in items {
            let rows = stmt.execute(params![
                n.id.to_string(),
                n.tenant_id.to_string(),
                n.event_id.to_string(),
                n.event_type,
                n.channel.as_str(),
                n.recipient,
                n.webhook_id.map(|w| w.to_string()),
                n.payload,
                ts(&n.next_attempt_at),
                now,
            ])?;
            inserted.push(rows == 1);
        }
        Ok(inserted)
    })
}

fn claim(
    conn: &mut Connection,
    now: &Timestamp,
    lease_until: &Timestamp,
    limit: u32,
) -> Result<Vec<Notification>> {
    let (now, lease) = (ts(now), ts(lease_until));
    immediate(conn, |tx| {
        let due = all(
            tx,
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
                 WHERE status = 'pending' AND next_attempt_at <= ?1 \
                 ORDER BY next_attempt_at LIMIT ?2"
            ),
            params![now, limit],
            notification,
        )?;
        let mut lease_stmt =
            tx.prepare_cached("UPDATE notifications SET next_attempt_at = ?2 WHERE id = ?1")?;
        for n in &due {
            lease_stmt.execute(params![n.id.to_string(), lease])?;
        }
        Ok(due)
    })
}

fn record_attempt(conn: &mut Connection, a: &DeliveryAttempt, after: &AfterAttempt) -> Result<()> {
    let now = ts(&meridian_core::now());
    let (status, next) = after.outcome();
    let next = next.as_ref().map(ts);
    immediate(conn, |tx| {
        // Only the attempt that follows the recorded count lands: a stale worker's record
        // (its lease ran out and another worker went on) changes nothing.
        let n = tx
            .prepare_cached(
                "UPDATE notifications SET attempts = ?2, status = ?3, next_attempt_at = ?4, \
                 last_error = ?5, updated_at = ?6 WHERE id = ?1 AND attempts = ?2 - 1",
            )?
            .execute(params![
                a.notification_id.to_string(),
                a.attempt,
                status.as_str(),
                next,
                a.error,
                now,
            ])?;
        if n == 0 {
            return Err(stale_attempt(a));
        }
        tx.prepare_cached(
            "INSERT INTO notification_attempts (notification_id, attempt, at, status_code, \
             error, duration_ms, succeeded) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            a.notification_id.to_string(),
            a.attempt,
            ts(&a.at),
            a.status_code,
            a.error,
            a.duration_ms,
            a.succeeded,
        ])?;
        Ok(())
    })
}

fn list_notifications(
    conn: &Connection,
    tenant: TenantId,
    webhook: Option<WebhookId>,
    page: &PageRequest,
) -> Result<Page<Notification>> {
    let limit = page.limit.clamp(1, PageRequest::MAX_LIMIT) as usize;
    let before = match &page.cursor {
        Some(c) => cursor_id(c)?,
        // Above every UUID's text form.
        None => "g".to_owned(),
    };
    let items = all(
        conn,
        &format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
             WHERE tenant_id = ?1 AND (?2 IS NULL OR webhook_id = ?2) AND id < ?3 \
             ORDER BY id DESC LIMIT ?4"
        ),
        params![
            tenant.to_string(),
            webhook.map(|w| w.to_string()),
            before,
            limit as i64 + 1
        ],
        notification,
    )?;
    Ok(into_page(items, limit, |i| i.id.to_string()))
}

fn attempts(
    conn: &Connection,
    tenant: TenantId,
    id: NotificationId,
) -> Result<Vec<DeliveryAttempt>> {
    find_notification(conn, tenant, id)?;
    all(
        conn,
        "SELECT notification_id, attempt, at, status_code, error, duration_ms, succeeded \
         FROM notification_attempts WHERE notification_id = ?1 ORDER BY attempt",
        params![id.to_string()],
        attempt,
    )
}

fn redeliver(conn: &mut Connection, tenant: TenantId, id: NotificationId) -> Result<Notification> {
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        change(
            tx,
            "UPDATE notifications SET status = 'pending', next_attempt_at = ?3, \
             updated_at = ?3 WHERE id = ?1 AND tenant_id = ?2",
            params![id.to_string(), tenant.to_string(), now],
            "notification",
            id,
        )?;
        find_notification(tx, tenant, id)
    })
}

fn consecutive_failures(conn: &Connection, tenant: TenantId, webhook: WebhookId) -> Result<u32> {
    // The newest finished notifications, newest first; count failures up to the first
    // success.
    let statuses: Vec<String> = conn
        .prepare_cached(
            "SELECT status FROM notifications WHERE tenant_id = ?1 AND webhook_id = ?2 \
             AND status <> 'pending' ORDER BY updated_at DESC LIMIT 1000",
        )?
        .query_map(params![tenant.to_string(), webhook.to_string()], |r| {
            r.get(0)
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(statuses.iter().take_while(|s| *s == "failed").count() as u32)
}

fn template(r: &Row<'_>) -> rusqlite::Result<Template> {
    let channel: String = r.get(3)?;
    Ok(Template {
        id: parsed(r, 0)?,
        tenant_id: parsed(r, 1)?,
        event_type: r.get(2)?,
        channel: Channel::parse(&channel).ok_or_else(|| bad(3, "unknown channel"))?,
        subject: r.get(4)?,
        body: r.get(5)?,
        created_at: time(r, 6)?,
        updated_at: time(r, 7)?,
    })
}

fn find_template(conn: &Connection, tenant: TenantId, id: TemplateId) -> Result<Template> {
    one(
        conn,
        &format!(
            "SELECT {TEMPLATE_COLUMNS} FROM notification_templates WHERE id = ?1 AND tenant_id = ?2"
        ),
        params![id.to_string(), tenant.to_string()],
        template,
        "template",
        id,
    )
}

fn create_template(
    conn: &mut Connection,
    tenant: TenantId,
    id: TemplateId,
    new: &NewTemplate,
) -> Result<Template> {
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        require_tenant(tx, tenant)?;
        let n = tx
            .prepare_cached(
                "INSERT INTO notification_templates (id, tenant_id, event_type, channel, subject, \
                 body, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                 ON CONFLICT (tenant_id, event_type, channel) DO NOTHING",
            )?
            .execute(params![
                id.to_string(),
                tenant.to_string(),
                new.event_type,
                new.channel.as_str(),
                new.subject,
                new.body,
                now,
            ])?;
        if n == 0 {
            return Err(duplicate_template(new));
        }
        find_template(tx, tenant, id)
    })
}

fn update_template(
    conn: &mut Connection,
    tenant: TenantId,
    id: TemplateId,
    patch: &TemplatePatch,
) -> Result<Template> {
    let now = ts(&meridian_core::now());
    immediate(conn, |tx| {
        change(
            tx,
            "UPDATE notification_templates SET \
             subject = CASE WHEN ?3 THEN ?4 ELSE subject END, body = COALESCE(?5, body), \
             updated_at = ?6 WHERE id = ?1 AND tenant_id = ?2",
            params![
                id.to_string(),
                tenant.to_string(),
                patch.subject.is_some(),
                patch.subject.clone().flatten(),
                patch.body,
                now,
            ],
            "template",
            id,
        )?;
        find_template(tx, tenant, id)
    })
}

#[async_trait]
impl NotifyStore for SqliteStore {
    async fn create_webhook(
        &self,
        tenant: TenantId,
        endpoint: NewWebhookEndpoint,
    ) -> Result<WebhookEndpoint> {
        let id = WebhookId::new();
        self.writer
            .write(move |c| create_webhook(c, tenant, id, &endpoint))
            .await
    }

    async fn list_webhooks(
        &self,
        tenant: TenantId,
        page: PageRequest,
    ) -> Result<Page<WebhookEndpoint>> {
        self.read(move |c| list_webhooks(c, tenant, &page)).await
    }

    async fn get_webhook(&self, tenant: TenantId, id: WebhookId) -> Result<WebhookEndpoint> {
        self.read(move |c| find_webhook(c, tenant, id)).await
    }

    async fn update_webhook(
        &self,
        tenant: TenantId,
        id: WebhookId,
        patch: WebhookPatch,
    ) -> Result<WebhookEndpoint> {
        self.writer
            .write(move |c| update_webhook(c, tenant, id, &patch))
            .await
    }

    async fn delete_webhook(&self, tenant: TenantId, id: WebhookId) -> Result<()> {
        self.writer
            .write(move |c| delete_webhook(c, tenant, id))
            .await
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: TenantId,
        id: WebhookId,
        secret: String,
        previous_expires_at: Timestamp,
    ) -> Result<WebhookEndpoint> {
        self.writer
            .write(move |c| rotate_secret(c, tenant, id, &secret, &previous_expires_at))
            .await
    }

    async fn enabled_webhooks(&self, tenant: TenantId) -> Result<Vec<WebhookEndpoint>> {
        self.read(move |c| {
            all(
                c,
                &format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints \
                     WHERE tenant_id = ?1 AND enabled = 1 ORDER BY id"
                ),
                params![tenant.to_string()],
                webhook,
            )
        })
        .await
    }

    async fn disable_webhook(&self, tenant: TenantId, id: WebhookId, reason: &str) -> Result<bool> {
        let reason = reason.to_owned();
        let events = self.events.clone();
        self.writer
            .write(move |c| disable_webhook(c, &events, tenant, id, &reason))
            .await
    }

    async fn enqueue_notifications(&self, notifications: &[NewNotification]) -> Result<Vec<bool>> {
        if notifications.is_empty() {
            return Ok(Vec::new());
        }
        let items = notifications.to_vec();
        self.writer.write(move |c| enqueue(c, &items)).await
    }

    async fn claim_due_notifications(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        self.writer
            .write(move |c| claim(c, &now, &lease_until, limit))
            .await
    }

    async fn record_attempt(&self, attempt: &DeliveryAttempt, after: AfterAttempt) -> Result<()> {
        let attempt = attempt.clone();
        self.writer
            .write(move |c| record_attempt(c, &attempt, &after))
            .await
    }

    async fn reschedule_notification(
        &self,
        id: NotificationId,
        attempts: u32,
        at: Timestamp,
    ) -> Result<bool> {
        self.writer
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE notifications SET next_attempt_at = ?3 \
                         WHERE id = ?1 AND attempts = ?2 AND status = 'pending'",
                    )?
                    .execute(params![id.to_string(), attempts, ts(&at)])?;
                Ok(n == 1)
            })
            .await
    }

    async fn get_notification(&self, tenant: TenantId, id: NotificationId) -> Result<Notification> {
        self.read(move |c| find_notification(c, tenant, id)).await
    }

    async fn list_notifications(
        &self,
        tenant: TenantId,
        webhook: Option<WebhookId>,
        page: PageRequest,
    ) -> Result<Page<Notification>> {
        self.read(move |c| list_notifications(c, tenant, webhook, &page))
            .await
    }

    async fn delivery_attempts(
        &self,
        tenant: TenantId,
        id: NotificationId,
    ) -> Result<Vec<DeliveryAttempt>> {
        self.read(move |c| attempts(c, tenant, id)).await
    }

    async fn redeliver_notification(
        &self,
        tenant: TenantId,
        id: NotificationId,
    ) -> Result<Notification> {
        self.writer.write(move |c| redeliver(c, tenant, id)).await
    }

    async fn consecutive_failures(&self, tenant: TenantId, webhook: WebhookId) -> Result<u32> {
        self.read(move |c| consecutive_failures(c, tenant, webhook))
            .await
    }

    async fn create_template(&self, tenant: TenantId, template: NewTemplate) -> Result<Template> {
        let id = TemplateId::new();
        self.writer
            .write(move |c| create_template(c, tenant, id, &template))
            .await
    }

    async fn list_templates(&self, tenant: TenantId) -> Result<Vec<Template>> {
        self.read(move |c| {
            all(
                c,
                &format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM notification_templates WHERE tenant_id = ?1 \
                     ORDER BY event_type, channel"
                ),
                params![tenant.to_string()],
                template,
            )
        })
        .await
    }

    async fn get_template(&self, tenant: TenantId, id: TemplateId) -> Result<Template> {
        self.read(move |c| find_template(c, tenant, id)).await
    }

    async fn update_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
        patch: TemplatePatch,
    ) -> Result<Template> {
        self.writer
            .write(move |c| update_template(c, tenant, id, &patch))
            .await
    }

    async fn delete_template(&self, tenant: TenantId, id: TemplateId) -> Result<()> {
        self.writer
            .write(move |c| {
                change(
                    c,
                    "DELETE FROM notification_templates WHERE id = ?1 AND tenant_id = ?2",
                    params![id.to_string(), tenant.to_string()],
                    "template",
                    id,
                )
            })
            .await
    }
}
