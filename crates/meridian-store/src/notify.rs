//! The notification service's port: tenant webhook endpoints, the notifications made from
//! events (one per event, channel and recipient) and every delivery attempt.
//!
//! [`NotifyStore`] is a separate contract from [`Store`](crate::Store) (which extends it, so
//! one `Arc<dyn Store>` serves both), implemented by both backends and checked by the
//! notify conformance cases in `tests/it/notify.rs`.
//!
//! - Every tenant-scoped method filters by its `TenantId`; another tenant's rows are
//!   `NotFound`.
//! - A notification's row is its own dedup record: `(event_id, channel, recipient)` is
//!   unique, and [`NotifyStore::enqueue_notifications`] inserts with "do nothing on
//!   conflict" in one transaction, so a redelivered event makes no second notification.
//! - Claiming due notifications leases them (moves `next_attempt_at` past the lease), so two
//!   workers never send the same attempt at once; a worker that dies leaves the row due
//!   again when the lease ends.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use meridian_core::{EventId, TenantId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Page, PageRequest, Result};

macro_rules! notify_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

notify_id!(
    /// A tenant's webhook endpoint.
    WebhookId
);
notify_id!(
    /// One notification: an event for one channel and recipient. Its id is the webhook's
    /// `webhook-id`, the same on every attempt, so a receiver can drop repeats.
    NotificationId
);

notify_id!(
    /// A tenant's template for one event type and channel.
    TemplateId
);

/// A template for one event type and channel (email or SMS), checked when it was saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub id: TemplateId,
    pub tenant_id: TenantId,
    pub event_type: String,
    pub channel: Channel,
    /// The subject line's template (email).
    pub subject: Option<String>,
    pub body: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What to create a template with (checked by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTemplate {
    pub event_type: String,
    pub channel: Channel,
    pub subject: Option<String>,
    pub body: String,
}

/// A partial update; `subject: Some(None)` clears the subject.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplatePatch {
    pub subject: Option<Option<String>>,
    pub body: Option<String>,
}

/// A tenant's webhook endpoint, with its signing secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: WebhookId,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: String,
    /// Event-type filters (`order.created`, `order.*`, `*`); at least one.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// The current signing secret (`whsec_` + base64).
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_expires_at`.
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<Timestamp>,
    /// Why the endpoint was disabled automatically, if it was.
    pub disabled_reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What to create an endpoint with (validated by the caller: URL, filters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewWebhookEndpoint {
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub secret: String,
}

/// A partial update; `None` leaves a field as it is. Enabling clears `disabled_reason`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// How a notification reaches its recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Webhook,
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Channel::Webhook, Channel::Email, Channel::Sms]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// Where a notification stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// Delivered (a 2xx from the receiver).
    Succeeded,
    /// Given up: a 4xx other than 429, or the last retry failed.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Succeeded => "succeeded",
            NotificationStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// A notification to create from an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNotification {
    pub id: NotificationId,
    pub tenant_id: TenantId,
    pub event_id: EventId,
    /// The tenant-facing event type, such as `order.created`.
    pub event_type: String,
    pub channel: Channel,
    /// The endpoint id (webhook), address (email) or number (SMS).
    pub recipient: String,
    /// The webhook endpoint, for a webhook notification.
    pub webhook_id: Option<WebhookId>,
    /// The exact body to send; every attempt sends these bytes.
    pub payload: String,
    pub next_attempt_at: Timestamp,
}

/// A notification and where it stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: NotificationId,
    pub tenant_id: TenantId,
    pub event_id: EventId,
    pub event_type: String,
    pub channel: Channel,
    pub recipient: String,
    pub webhook_id: Option<WebhookId>,
    pub payload: String,
    pub status: NotificationStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One delivery attempt, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub notification_id: NotificationId,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at: Timestamp,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Why it failed (timeout, connection refused, status), if it did.
    pub error: Option<String>,
    pub duration_ms: u32,
    pub succeeded: bool,
}

/// The event that tells a tenant its endpoint was disabled.
pub(crate) fn webhook_disabled_event(
    events: &meridian_core::EventSource,
    tenant: TenantId,
    endpoint: &WebhookEndpoint,
    reason: &str,
) -> meridian_core::OutboxEvent {
    events.event(
        "notify",
        "webhook.disabled",
        tenant,
        endpoint.id.to_string(),
        serde_json::json!({"webhook_id": endpoint.id, "url": endpoint.url, "reason": reason}),
        meridian_core::now(),
    )
}

/// What happens to a notification after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    Succeeded,
    /// Try again at this time.
    Retry(Timestamp),
    /// Give up.
    Failed,
}

#[async_trait]
pub trait NotifyStore: Send + Sync + 'static {
    // --- webhook endpoints ---
    async fn create_webhook(
        &self,
        tenant: TenantId,
        endpoint: NewWebhookEndpoint,
    ) -> Result<WebhookEndpoint>;
    /// Endpoints by ascending id (creation order).
    async fn list_webhooks(
        &self,
        tenant: TenantId,
        page: PageRequest,
    ) -> Result<Page<WebhookEndpoint>>;
    async fn get_webhook(&self, tenant: TenantId, id: WebhookId) -> Result<WebhookEndpoint>;
    async fn update_webhook(
        &self,
        tenant: TenantId,
        id: WebhookId,
        patch: WebhookPatch,
    ) -> Result<WebhookEndpoint>;
    /// Deletes the endpoint; its pending notifications fail with "endpoint deleted".
    async fn delete_webhook(&self, tenant: TenantId, id: WebhookId) -> Result<()>;
    /// Makes `secret` current; the old one keeps signing until `previous_expires_at`.
    async fn rotate_webhook_secret(
        &self,
        tenant: TenantId,
        id: WebhookId,
        secret: String,
        previous_expires_at: Timestamp,
    ) -> Result<WebhookEndpoint>;
    /// The tenant's enabled endpoints: what an event is matched against.
    async fn enabled_webhooks(&self, tenant: TenantId) -> Result<Vec<WebhookEndpoint>>;
    /// Disables an endpoint that keeps failing, with the reason, and emits
    /// `platform.notify.webhook.disabled` (data: `webhook_id`, `url`, `reason`) in the same
    /// transaction, so the tenant is told; `false`, and no event, if it was not enabled.
    async fn disable_webhook(&self, tenant: TenantId, id: WebhookId, reason: &str) -> Result<bool>;

    // --- notifications ---
    /// Inserts the notifications in ONE transaction, skipping any whose
    /// `(event_id, channel, recipient)` exists already (a redelivered event). Returns, for
    /// each in order, whether it was inserted now.
    async fn enqueue_notifications(&self, notifications: &[NewNotification]) -> Result<Vec<bool>>;
    /// Leases at most `limit` pending notifications due at `now` (oldest due first) by
    /// moving their `next_attempt_at` to `lease_until`, and returns them.
    async fn claim_due_notifications(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Notification>>;
    /// Records an attempt and what follows it, in one transaction. `attempt.attempt` must
    /// be the notification's attempt count plus one; a stale worker's record (another
    /// worker recorded that attempt first) is `AlreadyExists` and changes nothing.
    async fn record_attempt(&self, attempt: &DeliveryAttempt, after: AfterAttempt) -> Result<()>;
    /// Moves a pending notification's next attempt to `at` without an attempt (a rate
    /// limit or an open circuit breaker held it back). Only while its attempt count is
    /// still `attempts`; `false` if it is not (another worker went on), or not pending.
    async fn reschedule_notification(
        &self,
        id: NotificationId,
        attempts: u32,
        at: Timestamp,
    ) -> Result<bool>;
    async fn get_notification(&self, tenant: TenantId, id: NotificationId) -> Result<Notification>;
    /// Notifications newest first, optionally of one webhook endpoint.
    async fn list_notifications(
        &self,
        tenant: TenantId,
        webhook: Option<WebhookId>,
        page: PageRequest,
    ) -> Result<Page<Notification>>;
    /// Every attempt of one notification, first first.
    async fn delivery_attempts(
        &self,
        tenant: TenantId,
        id: NotificationId,
    ) -> Result<Vec<DeliveryAttempt>>;
    /// Makes a notification due now again, whatever its status (manual redelivery).
    async fn redeliver_notification(
        &self,
        tenant: TenantId,
        id: NotificationId,
    ) -> Result<Notification>;
    /// How many of the endpoint's most recent notifications, newest first, have failed
    /// (stopping at the first that did not): what automatic disabling looks at.
    async fn consecutive_failures(&self, tenant: TenantId, webhook: WebhookId) -> Result<u32>;

    // --- templates ---
    /// `AlreadyExists` if the tenant has a template for the event type and channel.
    async fn create_template(&self, tenant: TenantId, template: NewTemplate) -> Result<Template>;
    /// The tenant's templates by event type, then channel.
    async fn list_templates(&self, tenant: TenantId) -> Result<Vec<Template>>;
    async fn get_template(&self, tenant: TenantId, id: TemplateId) -> Result<Template>;
    async fn update_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
        patch: TemplatePatch,
    ) -> Result<Template>;
    async fn delete_template(&self, tenant: TenantId, id: TemplateId) -> Result<()>;
}
