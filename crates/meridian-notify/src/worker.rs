//! The delivery worker: leases due notifications from the store, sends them, records every
//! attempt and schedules the next one.
//!
//! Several workers (in one process or many) can share a store: a claimed notification is
//! leased for longer than a request can take, so no other worker sends it meanwhile, and a
//! worker that dies leaves it due again when the lease ends. Delivery is therefore at least
//! once; receivers drop repeats by `webhook-id`, which is the same on every attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_store::StoreError;
use meridian_store::notify::{
    AfterAttempt, Channel, DeliveryAttempt, Notification, NotifyStore, WebhookEndpoint, WebhookId,
};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::breaker::Breakers;
use crate::limit::TenantLimits;
use crate::retry::{Outcome, RetryPolicy};
use crate::webhook;

/// How the worker sends and retries.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub retry: RetryPolicy,
    /// The longest one HTTP request may take.
    pub request_timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often an idle worker looks for due notifications (it is also woken as soon as
    /// the consumer queues new ones).
    pub poll_interval: Duration,
    /// Disable an endpoint whose last this-many notifications all failed; 0 never does.
    pub disable_after: u32,
    /// SMTP providers for email notifications; without them email notifications fail.
    pub email: Option<crate::email::EmailConfig>,
    /// The SMS provider; without it SMS notifications fail.
    pub sms: Option<crate::sms::SmsConfig>,
    /// Open an endpoint's circuit breaker after this many failures in a row; 0 never does.
    pub breaker_threshold: u32,
    /// How long an open breaker holds the endpoint's deliveries back.
    pub breaker_cooldown: Duration,
    /// Sends per second per tenant, all channels; 0 does not limit.
    pub tenant_rate_per_second: u32,
    /// How many sends a tenant may make at once above its rate.
    pub tenant_burst: u32,
    /// Trust for https receivers and providers (system roots plus `MERIDIAN_HTTP_CA_FILE`).
    pub outbound: meridian_http::Outbound,
    /// Whether tenant webhooks may reach loopback, private and link-local addresses
    /// (`MERIDIAN_WEBHOOK_ALLOW_PRIVATE`); refused by default.
    pub address_guard: meridian_http::AddressGuard,
    /// Opens webhook secrets sealed at rest; without it only secrets stored in the clear
    /// sign (a sealed one makes the delivery fail, naming why).
    pub secrets: Option<crate::secrets::SecretSealer>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(10),
            concurrency: 64,
            poll_interval: Duration::from_millis(250),
            disable_after: 20,
            email: None,
            sms: None,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
            tenant_rate_per_second: 0,
            tenant_burst: 100,
            outbound: meridian_http::Outbound::system(),
            address_guard: meridian_http::AddressGuard::STRICT,
            secrets: None,
        }
    }
}

/// The most notifications leased in one claim.
const CLAIM_BATCH: usize = 256;

/// How much longer than a request's timeout a lease lasts.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Wakes an idle worker: the consumer pulls it after queueing notifications. A wake while
/// the worker is busy is remembered, so none is lost.
#[derive(Clone, Debug, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }
}

/// The worker's HTTP clients: tenant webhooks go through the address guard; the SMS
/// provider, which the operator configured, does not.
#[derive(Clone)]
struct Clients {
    webhooks: reqwest::Client,
    providers: reqwest::Client,
}

/// Runs the worker until `shutdown` turns `true`, then waits for the deliveries in flight
/// (each bounded by the request timeout).
pub async fn run_worker(
    store: Arc<dyn NotifyStore>,
    config: WorkerConfig,
    wake: Wake,
    mut shutdown: watch::Receiver<bool>,
) {
    let clients = Clients {
        webhooks: webhook::client(
            config.request_timeout,
            &config.outbound,
            config.address_guard,
        ),
        providers: webhook::provider_client(config.request_timeout, &config.outbound),
    };
    let breakers = Arc::new(Breakers::new(
        config.breaker_threshold,
        config.breaker_cooldown,
    ));
    let limits = TenantLimits::new(config.tenant_rate_per_second, config.tenant_burst);
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut store_backoff = Duration::from_millis(100);
    while !*shutdown.borrow() {
        while tasks.try_join_next().is_some() {}
        let free = permits.available_permits();
        if free == 0 {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let now = meridian_core::now();
        let lease = now
            + chrono::Duration::from_std(config.request_timeout + LEASE_MARGIN)
                .unwrap_or(chrono::Duration::MAX);
        let due = match store
            .claim_due_notifications(now, lease, free.min(CLAIM_BATCH) as u32)
            .await
        {
            Ok(due) => {
                store_backoff = Duration::from_millis(100);
                due
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim due notifications");
                tokio::select! {
                    _ = tokio::time::sleep(store_backoff) => {}
                    _ = shutdown.changed() => {}
                }
                store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = wake.woken() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let endpoints = endpoints_of(store.as_ref(), &due).await;
        for n in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let endpoint = n
                .webhook_id
                .and_then(|id| endpoints.get(&id).cloned().flatten());
            if let Some(e) = &endpoint
                && !breakers.allow(e.id, std::time::Instant::now())
            {
                // Held back: the lease keeps it from the other workers until it ends, and
                // then it is due again, with no attempt spent.
                metrics::counter!("meridian_notify_breaker_held_total").increment(1);
                continue;
            }
            if let Some(limits) = &limits
                && let Err(wait) = limits.check(n.tenant_id, std::time::Instant::now())
            {
                // Over the tenant's rate: due again when it may send, no attempt spent.
                metrics::counter!("meridian_notify_rate_limited_total").increment(1);
                let at = meridian_core::now()
                    + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                if let Err(e) = store.reschedule_notification(n.id, n.attempts, at).await {
                    tracing::warn!(notification.id = %n.id, error = %e, "cannot reschedule");
                }
                continue;
            }
            let (store, clients, config, breakers) = (
                store.clone(),
                clients.clone(),
                config.clone(),
                breakers.clone(),
            );
            tasks.spawn(async move {
                deliver_one(
                    store.as_ref(),
                    &clients,
                    &config,
                    &breakers,
                    endpoint.as_deref(),
                    n,
                )
                .await;
                drop(permit);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// The endpoints of a batch of notifications, each read once. An endpoint that is gone is
/// `None`; one that cannot be read now is left out (its notifications wait for the lease).
async fn endpoints_of(
    store: &dyn NotifyStore,
    due: &[Notification],
) -> HashMap<WebhookId, Option<Arc<WebhookEndpoint>>> {
    let mut endpoints = HashMap::new();
    for n in due {
        let Some(id) = n.webhook_id else { continue };
        if endpoints.contains_key(&id) {
            continue;
        }
        match store.get_webhook(n.tenant_id, id).await {
            Ok(e) => {
                endpoints.insert(id, Some(Arc::new(e)));
            }
            Err(StoreError::NotFound { .. }) => {
                endpoints.insert(id, None);
            }
            Err(e) => tracing::warn!(error = %e, webhook.id = %id, "cannot read the endpoint"),
        }
    }
    endpoints
}

async fn deliver_one(
    store: &dyn NotifyStore,
    clients: &Clients,
    config: &WorkerConfig,
    breakers: &Breakers,
    endpoint: Option<&WebhookEndpoint>,
    n: Notification,
) {
    let attempt = n.attempts + 1;
    let at = meridian_core::now();
    // `usable`: the channel can be retried (an endpoint that is gone or a channel without
    // a provider fails at once).
    let ((outcome, duration), usable) = match (n.channel, endpoint) {
        (Channel::Webhook, Some(e)) if e.enabled => (
            webhook::deliver(
                &clients.webhooks,
                config.address_guard,
                config.secrets.as_ref(),
                e,
                &n,
            )
            .await,
            true,
        ),
        (Channel::Webhook, Some(_)) => (gone("the endpoint is disabled"), false),
        (Channel::Webhook, None) => (gone("the endpoint was deleted"), false),
        (Channel::Email, _) => match &config.email {
            Some(email) => (send_email(email, &n).await, true),
            None => (gone("no email provider is configured"), false),
        },
        (Channel::Sms, _) => match &config.sms {
            Some(sms) => (
                crate::sms::send(&clients.providers, sms, &n.recipient, &n.payload).await,
                true,
            ),
            None => (gone("no sms provider is configured"), false),
        },
    };
    if let (Channel::Webhook, Some(e), true) = (n.channel, endpoint, usable) {
        let failed = matches!(outcome, Outcome::Transport(_) | Outcome::RetryAfter(..));
        if breakers.record(e.id, failed, std::time::Instant::now()) {
            metrics::counter!("meridian_notify_breaker_opened_total").increment(1);
            tracing::warn!(webhook.id = %e.id, tenant.id = %e.tenant_id, "webhook circuit breaker opened");
        }
    }
    let after = match &outcome {
        Outcome::Delivered(_) => AfterAttempt::Succeeded,
        _ if !usable => AfterAttempt::Failed,
        other => match config.retry.next_delay(attempt, other) {
            Some(delay) => AfterAttempt::Retry(
                meridian_core::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
            ),
            None => AfterAttempt::Failed,
        },
    };
    let label = match after {
        AfterAttempt::Succeeded => "delivered",
        AfterAttempt::Retry(_) => "retry",
        AfterAttempt::Failed => "failed",
    };
    metrics::counter!("meridian_notify_attempts_total", "channel" => n.channel.as_str(), "outcome" => label)
        .increment(1);
    metrics::histogram!("meridian_notify_attempt_seconds", "channel" => n.channel.as_str())
        .record(duration.as_secs_f64());
    let record = DeliveryAttempt {
        notification_id: n.id,
        attempt,
        at,
        status_code: outcome.status(),
        error: outcome.error(),
        duration_ms: u32::try_from(duration.as_millis()).unwrap_or(u32::MAX),
        succeeded: matches!(outcome, Outcome::Delivered(_)),
    };
    let failed = matches!(after, AfterAttempt::Failed);
    match store.record_attempt(&record, after).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            tracing::debug!(notification.id = %n.id, attempt, "attempt already recorded by another worker");
            return;
        }
        Err(e) => {
            // The lease runs out and the notification is sent again: at least once.
            tracing::warn!(notification.id = %n.id, error = %e, "cannot record the attempt");
            return;
        }
    }
    if failed && usable {
        tracing::info!(notification.id = %n.id, tenant.id = %n.tenant_id, attempt, "delivery failed for good");
        if let (Some(e), true) = (endpoint, config.disable_after > 0) {
            disable_if_failing(store, e, config.disable_after).await;
        }
    }
}

fn gone(why: &str) -> (Outcome, Duration) {
    (Outcome::Undeliverable(why.to_owned()), Duration::ZERO)
}

/// Sends an email notification: its payload is the rendered [`Email`](crate::email::Email).
async fn send_email(config: &crate::email::EmailConfig, n: &Notification) -> (Outcome, Duration) {
    let started = std::time::Instant::now();
    let email: crate::email::Email = match serde_json::from_str(&n.payload) {
        Ok(e) => e,
        Err(e) => return gone(&format!("the stored email does not decode: {e}")),
    };
    let outcome = match crate::email::send(config, &n.recipient, &email).await {
        Ok(_) => Outcome::Delivered(250),
        Err(crate::email::EmailError::Transient(e)) => Outcome::Transport(e),
        Err(crate::email::EmailError::Permanent(e)) => Outcome::Undeliverable(e),
    };
    (outcome, started.elapsed())
}

/// Disables an endpoint whose last `threshold` notifications all failed, and says so.
async fn disable_if_failing(store: &dyn NotifyStore, endpoint: &WebhookEndpoint, threshold: u32) {
    let failures = match store
        .consecutive_failures(endpoint.tenant_id, endpoint.id)
        .await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(webhook.id = %endpoint.id, error = %e, "cannot count failures");
            return;
        }
    };
    if failures < threshold {
        return;
    }
    let reason = format!("disabled after {failures} failed deliveries in a row");
    match store
        .disable_webhook(endpoint.tenant_id, endpoint.id, &reason)
        .await
    {
        Ok(true) => {
            metrics::counter!("meridian_notify_endpoints_disabled_total").increment(1);
            tracing::warn!(
                webhook.id = %endpoint.id, tenant.id = %endpoint.tenant_id, failures,
                "webhook endpoint disabled automatically"
            );
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(webhook.id = %endpoint.id, error = %e, "cannot disable the endpoint")
        }
    }
}
