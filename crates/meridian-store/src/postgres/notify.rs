//! The notification tables on PostgreSQL: pooled statements; the multi-row writes in one
//! transaction each. Claiming uses `FOR UPDATE SKIP LOCKED`, so workers in several
//! processes never lease the same row.

use async_trait::async_trait;
use meridian_core::{EventId, TenantId, Timestamp};
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use super::{PgStore, bad_cursor, error, into_page, page_limit, rows};
use crate::notify::{
    AfterAttempt, Channel, DeliveryAttempt, NewNotification, NewTemplate, NewWebhookEndpoint,
    Notification, NotificationId, NotificationStatus, NotifyStore, Template, TemplateId,
    TemplatePatch, WebhookEndpoint, WebhookId, WebhookPatch,
};
use crate::{Page, PageRequest, Result, StoreError, decode_cursor};

const WEBHOOK_COLUMNS: &str = "id, tenant_id, url, description, event_types, enabled, secret, \
     previous_secret, previous_secret_expires_at, disabled_reason, created_at, updated_at";

const NOTIFICATION_COLUMNS: &str = "id, tenant_id, event_id, event_type, channel, recipient, \
     webhook_id, payload, status, attempts, next_attempt_at, last_error, created_at, updated_at";

fn corrupt(column: &str) -> StoreError {
    tracing::error!(column, "postgres notification row does not decode");
    StoreError::Internal(format!("stored column {column} does not decode"))
}

fn webhook(row: &Row) -> Result<WebhookEndpoint> {
    let Json(event_types) = rows::get(row, "event_types")?;
    Ok(WebhookEndpoint {
        id: WebhookId::from_uuid(rows::get(row, "id")?),
        tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
        url: rows::get(row, "url")?,
        description: rows::get(row, "description")?,
        event_types,
        enabled: rows::get(row, "enabled")?,
        secret: rows::get(row, "secret")?,
        previous_secret: rows::get(row, "previous_secret")?,
        previous_secret_expires_at: rows::get(row, "previous_secret_expires_at")?,
        disabled_reason: rows::get(row, "disabled_reason")?,
        created_at: rows::get(row, "created_at")?,
        updated_at: rows::get(row, "updated_at")?,
    })
}

fn notification(row: &Row) -> Result<Notification> {
    let channel: &str = rows::get(row, "channel")?;
    let status: &str = rows::get(row, "status")?;
    let attempts: i32 = rows::get(row, "attempts")?;
    let webhook_id: Option<Uuid> = rows::get(row, "webhook_id")?;
    Ok(Notification {
        id: NotificationId::from_uuid(rows::get(row, "id")?),
        tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
        event_id: EventId::from_uuid(rows::get(row, "event_id")?),
        event_type: rows::get(row, "event_type")?,
        channel: Channel::parse(channel).ok_or_else(|| corrupt("channel"))?,
        recipient: rows::get(row, "recipient")?,
        webhook_id: webhook_id.map(WebhookId::from_uuid),
        payload: rows::get(row, "payload")?,
        status: NotificationStatus::parse(status).ok_or_else(|| corrupt("status"))?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts"))?,
        next_attempt_at: rows::get(row, "next_attempt_at")?,
        last_error: rows::get(row, "last_error")?,
        created_at: rows::get(row, "created_at")?,
        updated_at: rows::get(row, "updated_at")?,
    })
}

fn attempt(row: &Row) -> Result<DeliveryAttempt> {
    let n: i32 = rows::get(row, "attempt")?;
    let status: Option<i32> = rows::get(row, "status_code")?;
    let duration: i32 = rows::get(row, "duration_ms")?;
    Ok(DeliveryAttempt {
        notification_id: NotificationId::from_uuid(rows::get(row, "notification_id")?),
        attempt: u32::try_from(n).map_err(|_| corrupt("attempt"))?,
        at: rows::get(row, "at")?,
        status_code: status.and_then(|s| u16::try_from(s).ok()),
        error: rows::get(row, "error")?,
        duration_ms: u32::try_from(duration).unwrap_or(0),
        succeeded: rows::get(row, "succeeded")?,
    })
}

/// Runs one statement on a pooled connection and returns its rows.
async fn query(store: &PgStore, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
    let client = store.client().await?;
    let stmt = client.prepare_cached(sql).await.map_err(error::db)?;
    client.query(&stmt, params).await.map_err(error::db)
}

async fn one_webhook(
    store: &PgStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    id: WebhookId,
) -> Result<WebhookEndpoint> {
    let rows = query(store, sql, params).await?;
    rows.first()
        .map(webhook)
        .unwrap_or_else(|| Err(StoreError::not_found("webhook", id)))
}

async fn one_notification(
    store: &PgStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    id: NotificationId,
) -> Result<Notification> {
    let rows = query(store, sql, params).await?;
    rows.first()
        .map(notification)
        .unwrap_or_else(|| Err(StoreError::not_found("notification", id)))
}

fn cursor_uuid(cursor: &str) -> Result<Uuid> {
    Uuid::parse_str(&decode_cursor(cursor)?).map_err(|_| bad_cursor())
}

const TEMPLATE_COLUMNS: &str =
    "id, tenant_id, event_type, channel, subject, body, created_at, updated_at";

fn template(row: &Row) -> Result<Template> {
    let channel: &str = rows::get(row, "channel")?;
    Ok(Template {
        id: TemplateId::from_uuid(rows::get(row, "id")?),
        tenant_id: TenantId::from_uuid(rows::get(row, "tenant_id")?),
        event_type: rows::get(row, "event_type")?,
        channel: Channel::parse(channel).ok_or_else(|| corrupt("channel"))?,
        subject: rows::get(row, "subject")?,
        body: rows::get(row, "body")?,
        created_at: rows::get(row, "created_at")?,
        updated_at: rows::get(row, "updated_at")?,
    })
}

async fn one_template(
    store: &PgStore,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    id: TemplateId,
) -> Result<Template> {
    let rows = query(store, sql, params).await?;
    rows.first()
        .map(template)
        .unwrap_or_else(|| Err(StoreError::not_found("template", id)))
}

#[async_trait]
impl NotifyStore for PgStore {
    async fn create_webhook(
        &self,
        tenant: TenantId,
        endpoint: NewWebhookEndpoint,
    ) -> Result<WebhookEndpoint> {
        let id = WebhookId::new();
        // Inserts nothing for an unknown tenant (rather than failing on the foreign key).
        let sql = format!(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, \
             enabled, secret, created_at, updated_at) \
             SELECT $1, t.id, $3, $4, $5, $6, $7, now(), now() FROM tenants t WHERE t.id = $2 \
             RETURNING {WEBHOOK_COLUMNS}"
        );
        let rows = query(
            self,
            &sql,
            &[
                id.as_uuid(),
                tenant.as_uuid(),
                &endpoint.url,
                &endpoint.description,
                &Json(&endpoint.event_types),
                &endpoint.enabled,
                &endpoint.secret,
            ],
        )
        .await?;
        rows.first()
            .map(webhook)
            .unwrap_or_else(|| Err(StoreError::not_found("tenant", tenant)))
    }

    async fn list_webhooks(
        &self,
        tenant: TenantId,
        page: PageRequest,
    ) -> Result<Page<WebhookEndpoint>> {
        let limit = page_limit(&page);
        let after = match &page.cursor {
            Some(c) => cursor_uuid(c)?,
            None => Uuid::nil(),
        };
        let fetch = limit as i64 + 1;
        let items = query(
            self,
            &format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints \
                 WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
            ),
            &[tenant.as_uuid(), &after, &fetch],
        )
        .await?
        .iter()
        .map(webhook)
        .collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, limit, |w| w.id.to_string()))
    }

    async fn get_webhook(&self, tenant: TenantId, id: WebhookId) -> Result<WebhookEndpoint> {
        one_webhook(
            self,
            &format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"
            ),
            &[id.as_uuid(), tenant.as_uuid()],
            id,
        )
        .await
    }

    async fn update_webhook(
        &self,
        tenant: TenantId,
        id: WebhookId,
        patch: WebhookPatch,
    ) -> Result<WebhookEndpoint> {
        let types = patch.event_types.as_ref().map(Json);
        one_webhook(
            self,
            &format!(
                "UPDATE webhook_endpoints SET url = COALESCE($3, url), \
                 description = COALESCE($4, description), \
                 event_types = COALESCE($5, event_types), enabled = COALESCE($6, enabled), \
                 disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
                 updated_at = now() WHERE id = $1 AND tenant_id = $2 \
                 RETURNING {WEBHOOK_COLUMNS}"
            ),
            &[
                id.as_uuid(),
                tenant.as_uuid(),
                &patch.url,
                &patch.description,
                &types,
                &patch.enabled,
            ],
            id,
        )
        .await
    }

    async fn delete_webhook(&self, tenant: TenantId, id: WebhookId) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        let n = tx
            .execute(
                "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
                &[id.as_uuid(), tenant.as_uuid()],
            )
            .await
            .map_err(error::db)?;
        if n == 0 {
            return Err(StoreError::not_found("webhook", id));
        }
        tx.execute(
            "UPDATE notifications SET status = 'failed', next_attempt_at = NULL, \
             last_error = 'endpoint deleted', updated_at = now() \
             WHERE tenant_id = $1 AND webhook_id = $2 AND status = 'pending'",
            &[tenant.as_uuid(), id.as_uuid()],
        )
        .await
        .map_err(error::db)?;
        tx.commit().await.map_err(error::db)
    }

    async fn rotate_webhook_secret(
        &self,
        tenant: TenantId,
        id: WebhookId,
        secret: String,
        previous_expires_at: Timestamp,
    ) -> Result<WebhookEndpoint> {
        one_webhook(
            self,
            &format!(
                "UPDATE webhook_endpoints SET previous_secret = secret, \
                 previous_secret_expires_at = $4, secret = $3, updated_at = now() \
                 WHERE id = $1 AND tenant_id = $2 RETURNING {WEBHOOK_COLUMNS}"
            ),
            &[
                id.as_uuid(),
                tenant.as_uuid(),
                &secret,
                &previous_expires_at,
            ],
            id,
        )
        .await
    }

    async fn enabled_webhooks(&self, tenant: TenantId) -> Result<Vec<WebhookEndpoint>> {
        query(
            self,
            &format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhook_endpoints \
                 WHERE tenant_id = $1 AND enabled ORDER BY id"
            ),
            &[tenant.as_uuid()],
        )
        .await?
        .iter()
        .map(webhook)
        .collect()
    }

    async fn disable_webhook(&self, tenant: TenantId, id: WebhookId, reason: &str) -> Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $3, \
                     updated_at = now() WHERE id = $1 AND tenant_id = $2 AND enabled \
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[id.as_uuid(), tenant.as_uuid(), &reason],
            )
            .await
            .map_err(error::db)?;
        let Some(row) = row else {
            drop(tx);
            // Not enabled, or not there at all.
            self.get_webhook(tenant, id).await?;
            return Ok(false);
        };
        let endpoint = webhook(&row)?;
        let event = crate::notify::webhook_disabled_event(&self.events, tenant, &endpoint, reason);
        super::writes::append_outbox_pooled(&tx, &[event]).await?;
        tx.commit().await.map_err(error::db)?;
        Ok(true)
    }

    async fn enqueue_notifications(&self, notifications: &[NewNotification]) -> Result<Vec<bool>> {
        if notifications.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO notifications (id, tenant_id, event_id, event_type, channel, \
                 recipient, webhook_id, payload, status, attempts, next_attempt_at, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, now(), \
                 now()) ON CONFLICT (event_id, channel, recipient) DO NOTHING",
            )
            .await
            .map_err(error::db)?;
        // Pipelined on the transaction's connection: one round trip's wait for the lot.
        let inserts = notifications.iter().map(|n| {
            let webhook_id: Option<Uuid> = n.webhook_id.map(|w| *w.as_uuid());
            let stmt = &stmt;
            let tx = &tx;
            async move {
                tx.execute(
                    stmt,
                    &[
                        n.id.as_uuid(),
                        n.tenant_id.as_uuid(),
                        n.event_id.as_uuid(),
                        &n.event_type,
                        &n.channel.as_str(),
                        &n.recipient,
                        &webhook_id,
                        &n.payload,
                        &n.next_attempt_at,
                    ],
                )
                .await
            }
        });
        let counts = futures::future::try_join_all(inserts)
            .await
            .map_err(error::db)?;
        tx.commit().await.map_err(error::db)?;
        Ok(counts.into_iter().map(|n| n == 1).collect())
    }

    async fn claim_due_notifications(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        let limit = i64::from(limit);
        query(
            self,
            &format!(
                "UPDATE notifications SET next_attempt_at = $2 WHERE id IN ( \
                 SELECT id FROM notifications WHERE status = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING {NOTIFICATION_COLUMNS}"
            ),
            &[&now, &lease_until, &limit],
        )
        .await?
        .iter()
        .map(notification)
        .collect()
    }

    async fn record_attempt(&self, a: &DeliveryAttempt, after: AfterAttempt) -> Result<()> {
        let (status, next) = match after {
            AfterAttempt::Succeeded => (NotificationStatus::Succeeded, None),
            AfterAttempt::Retry(at) => (NotificationStatus::Pending, Some(at)),
            AfterAttempt::Failed => (NotificationStatus::Failed, None),
        };
        let n = i32::try_from(a.attempt).unwrap_or(i32::MAX);
        let status_code: Option<i32> = a.status_code.map(i32::from);
        let duration = i32::try_from(a.duration_ms).unwrap_or(i32::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(error::db)?;
        // Only the attempt that follows the recorded count lands: a stale worker's record
        // (its lease ran out and another worker went on) changes nothing.
        let updated = tx
            .execute(
                "UPDATE notifications SET attempts = $2, status = $3, next_attempt_at = $4, \
                 last_error = $5, updated_at = now() WHERE id = $1 AND attempts = $2 - 1",
                &[
                    a.notification_id.as_uuid(),
                    &n,
                    &status.as_str(),
                    &next,
                    &a.error,
                ],
            )
            .await
            .map_err(error::db)?;
        if updated == 0 {
            return Err(StoreError::already_exists(
                "delivery attempt",
                format!("{} #{}", a.notification_id, a.attempt),
            ));
        }
        tx.execute(
            "INSERT INTO notification_attempts (notification_id, attempt, at, status_code, \
             error, duration_ms, succeeded) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                a.notification_id.as_uuid(),
                &n,
                &a.at,
                &status_code,
                &a.error,
                &duration,
                &a.succeeded,
            ],
        )
        .await
        .map_err(error::db)?;
        tx.commit().await.map_err(error::db)
    }

    async fn reschedule_notification(
        &self,
        id: NotificationId,
        attempts: u32,
        at: Timestamp,
    ) -> Result<bool> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let rows = query(
            self,
            "UPDATE notifications SET next_attempt_at = $3 \
             WHERE id = $1 AND attempts = $2 AND status = 'pending' RETURNING id",
            &[id.as_uuid(), &attempts, &at],
        )
        .await?;
        Ok(!rows.is_empty())
    }

    async fn get_notification(&self, tenant: TenantId, id: NotificationId) -> Result<Notification> {
        one_notification(
            self,
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id = $1 AND tenant_id = $2"
            ),
            &[id.as_uuid(), tenant.as_uuid()],
            id,
        )
        .await
    }

    async fn list_notifications(
        &self,
        tenant: TenantId,
        webhook: Option<WebhookId>,
        page: PageRequest,
    ) -> Result<Page<Notification>> {
        let limit = page_limit(&page);
        let before = match &page.cursor {
            Some(c) => cursor_uuid(c)?,
            None => Uuid::max(),
        };
        let webhook: Option<Uuid> = webhook.map(|w| *w.as_uuid());
        let fetch = limit as i64 + 1;
        let items = query(
            self,
            &format!(
                "SELECT {NOTIFICATION_COLUMNS} FROM notifications \
                 WHERE tenant_id = $1 AND ($2::uuid IS NULL OR webhook_id = $2) AND id < $3 \
                 ORDER BY id DESC LIMIT $4"
            ),
            &[tenant.as_uuid(), &webhook, &before, &fetch],
        )
        .await?
        .iter()
        .map(notification)
        .collect::<Result<Vec<_>>>()?;
        Ok(into_page(items, limit, |n| n.id.to_string()))
    }

    async fn delivery_attempts(
        &self,
        tenant: TenantId,
        id: NotificationId,
    ) -> Result<Vec<DeliveryAttempt>> {
        self.get_notification(tenant, id).await?;
        query(
            self,
            "SELECT notification_id, attempt, at, status_code, error, duration_ms, succeeded \
             FROM notification_attempts WHERE notification_id = $1 ORDER BY attempt",
            &[id.as_uuid()],
        )
        .await?
        .iter()
        .map(attempt)
        .collect()
    }

    async fn redeliver_notification(
        &self,
        tenant: TenantId,
        id: NotificationId,
    ) -> Result<Notification> {
        one_notification(
            self,
            &format!(
                "UPDATE notifications SET status = 'pending', next_attempt_at = now(), \
                 updated_at = now() WHERE id = $1 AND tenant_id = $2 \
                 RETURNING {NOTIFICATION_COLUMNS}"
            ),
            &[id.as_uuid(), tenant.as_uuid()],
            id,
        )
        .await
    }

    async fn consecutive_failures(&self, tenant: TenantId, webhook: WebhookId) -> Result<u32> {
        let rows = query(
            self,
            "SELECT status FROM notifications WHERE tenant_id = $1 AND webhook_id = $2 \
             AND status <> 'pending' ORDER BY updated_at DESC LIMIT 1000",
            &[tenant.as_uuid(), webhook.as_uuid()],
        )
        .await?;
        let mut n = 0;
        for row in &rows {
            let status: &str = rows::get(row, "status")?;
            if status != "failed" {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    async fn create_template(&self, tenant: TenantId, new: NewTemplate) -> Result<Template> {
        let id = TemplateId::new();
        let rows = query(
            self,
            &format!(
                "INSERT INTO notification_templates (id, tenant_id, event_type, channel, subject, \
                 body, created_at, updated_at) \
                 SELECT $1, t.id, $3, $4, $5, $6, now(), now() FROM tenants t WHERE t.id = $2 \
                 ON CONFLICT (tenant_id, event_type, channel) DO NOTHING \
                 RETURNING {TEMPLATE_COLUMNS}"
            ),
            &[
                id.as_uuid(),
                tenant.as_uuid(),
                &new.event_type,
                &new.channel.as_str(),
                &new.subject,
                &new.body,
            ],
        )
        .await?;
        if let Some(row) = rows.first() {
            return template(row);
        }
        let known = query(
            self,
            "SELECT 1 FROM tenants WHERE id = $1",
            &[tenant.as_uuid()],
        )
        .await?;
        if known.is_empty() {
            return Err(StoreError::not_found("tenant", tenant));
        }
        Err(StoreError::already_exists(
            "template",
            format!("{} {}", new.event_type, new.channel.as_str()),
        ))
    }

    async fn list_templates(&self, tenant: TenantId) -> Result<Vec<Template>> {
        query(
            self,
            &format!(
                "SELECT {TEMPLATE_COLUMNS} FROM notification_templates WHERE tenant_id = $1 \
                 ORDER BY event_type, channel"
            ),
            &[tenant.as_uuid()],
        )
        .await?
        .iter()
        .map(template)
        .collect()
    }

    async fn get_template(&self, tenant: TenantId, id: TemplateId) -> Result<Template> {
        one_template(
            self,
            &format!(
                "SELECT {TEMPLATE_COLUMNS} FROM notification_templates \
                 WHERE id = $1 AND tenant_id = $2"
            ),
            &[id.as_uuid(), tenant.as_uuid()],
            id,
        )
        .await
    }

    async fn update_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
        patch: TemplatePatch,
    ) -> Result<Template> {
        let set_subject = patch.subject.is_some();
        let subject = patch.subject.flatten();
        one_template(
            self,
            &format!(
                "UPDATE notification_templates SET \
                 subject = CASE WHEN $3 THEN $4 ELSE subject END, body = COALESCE($5, body), \
                 updated_at = now() WHERE id = $1 AND tenant_id = $2 RETURNING {TEMPLATE_COLUMNS}"
            ),
            &[
                id.as_uuid(),
                tenant.as_uuid(),
                &set_subject,
                &subject,
                &patch.body,
            ],
            id,
        )
        .await
    }

    async fn delete_template(&self, tenant: TenantId, id: TemplateId) -> Result<()> {
        let rows = query(
            self,
            "DELETE FROM notification_templates WHERE id = $1 AND tenant_id = $2 RETURNING id",
            &[id.as_uuid(), tenant.as_uuid()],
        )
        .await?;
        if rows.is_empty() {
            return Err(StoreError::not_found("template", id));
        }
        Ok(())
    }
}
