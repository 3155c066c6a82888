//! The bus consumer: turns each order and shipment event into one notification per
//! matching endpoint, deduplicated by the store on `(event id, channel, recipient)`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use async_trait::async_trait;
use meridian_bus::consumer::{self, DeadLetterSink};
use meridian_bus::{
    BatchHandler, Bus, BusError, HandlerError, Message, RetryPolicy, StartAt, SubscribeOptions,
    TopicPattern,
};
use meridian_core::{Envelope, TenantId};
use meridian_store::notify::{
    Channel, NewNotification, NotificationId, NotifyStore, Template, WebhookEndpoint,
};
use tokio::sync::watch;

use crate::email::Email;
use crate::worker::Wake;
use crate::{events, templates};

/// The consumer of order events.
pub const ORDERS_CONSUMER: &str = "notify-orders";
/// The consumer of shipment events.
pub const SHIPMENTS_CONSUMER: &str = "notify-shipments";

/// The most events handled in one store transaction.
pub const BATCH: usize = 256;

/// The consumer of the notification service's own events (an endpoint disabled).
pub const WEBHOOKS_CONSUMER: &str = "notify-webhooks";

/// The consumers and their patterns: order, shipment and webhook events of the deployment.
pub fn subscriptions(deployment: &str) -> Result<[(&'static str, TopicPattern); 3], BusError> {
    Ok([
        (
            WEBHOOKS_CONSUMER,
            TopicPattern::parse(&format!(
                "deployment.{deployment}.platform.notify.webhook.*"
            ))?,
        ),
        (
            ORDERS_CONSUMER,
            TopicPattern::parse(&format!("deployment.{deployment}.platform.oms.order.*"))?,
        ),
        (
            SHIPMENTS_CONSUMER,
            TopicPattern::parse(&format!(
                "deployment.{deployment}.platform.fulfillment.shipment.*"
            ))?,
        ),
    ])
}

/// The message's envelope: the one place this crate reads it from a bus message.
fn envelope(message: &Message) -> &Envelope {
    message.envelope()
}

/// Makes the notifications of a batch of events in one store transaction and wakes the
/// delivery worker.
pub struct NotifyConsumer {
    store: Arc<dyn NotifyStore>,
    wake: Wake,
}

impl std::fmt::Debug for NotifyConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConsumer").finish_non_exhaustive()
    }
}

impl NotifyConsumer {
    pub fn new(store: Arc<dyn NotifyStore>, wake: Wake) -> Self {
        Self { store, wake }
    }

    /// The notifications `events` make: one per event and matching enabled endpoint of the
    /// event's tenant.
    pub async fn notifications(
        &self,
        events: &[&Envelope],
    ) -> Result<Vec<NewNotification>, HandlerError> {
        let mut tenants: HashMap<TenantId, TenantSetup> = HashMap::new();
        let mut out = Vec::new();
        let now = meridian_core::now();
        for e in events {
            let Some(ty) = events::event_type(e) else {
                continue;
            };
            if let Entry::Vacant(slot) = tenants.entry(e.tenant) {
                slot.insert(self.setup(e.tenant).await?);
            }
            let setup = &tenants[&e.tenant];
            let new = |channel, recipient: String, webhook_id, payload| NewNotification {
                id: NotificationId::new(),
                tenant_id: e.tenant,
                event_id: e.id,
                event_type: ty.to_owned(),
                channel,
                recipient,
                webhook_id,
                payload,
                next_attempt_at: now,
            };
            let matching: Vec<&WebhookEndpoint> = setup
                .endpoints
                .iter()
                .filter(|w| events::matches(&w.event_types, ty))
                .collect();
            if !matching.is_empty() {
                let payload = events::payload(e, ty);
                for w in matching {
                    out.push(new(
                        Channel::Webhook,
                        w.id.to_string(),
                        Some(w.id),
                        payload.clone(),
                    ));
                }
            }
            let email_template = setup
                .templates
                .iter()
                .find(|t| t.channel == Channel::Email && t.event_type == ty);
            if let (Some(t), Some(to)) = (email_template, customer_email(&e.data)) {
                let email = render_email(t, e, ty);
                let payload = serde_json::to_string(&email).expect("an email serializes");
                out.push(new(Channel::Email, to, None, payload));
            }
            let sms_template = setup
                .templates
                .iter()
                .find(|t| t.channel == Channel::Sms && t.event_type == ty);
            if let (Some(t), Some(to)) = (sms_template, crate::sms::phone_number(&e.data)) {
                // An SMS's payload is its text.
                out.push(new(Channel::Sms, to, None, render_email(t, e, ty).body));
            }
        }
        Ok(out)
    }

    async fn setup(&self, tenant: TenantId) -> Result<TenantSetup, HandlerError> {
        let endpoints = self.store.enabled_webhooks(tenant).await.map_err(|err| {
            HandlerError::new(format!("cannot read the webhook endpoints: {err}"))
        })?;
        let templates = self
            .store
            .list_templates(tenant)
            .await
            .map_err(|err| HandlerError::new(format!("cannot read the templates: {err}")))?;
        Ok(TenantSetup {
            endpoints,
            templates,
        })
    }
}

/// What a tenant has set up to be told: its enabled endpoints and its templates.
struct TenantSetup {
    endpoints: Vec<WebhookEndpoint>,
    templates: Vec<Template>,
}

/// The customer's address in an order's data (`customer.email`), lowercase.
fn customer_email(data: &serde_json::Value) -> Option<String> {
    let email = data
        .get("customer")?
        .get("email")?
        .as_str()?
        .trim()
        .to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && !domain.is_empty() && !email.contains(char::is_whitespace))
        .then_some(email)
}

/// Renders an email (or, without its subject, an SMS) from a template that was checked
/// when saved. Rendering is lenient
/// (missing fields are empty), so it does not fail; if it ever did, a plain message says
/// what happened rather than losing the notification.
fn render_email(t: &Template, e: &Envelope, ty: &str) -> Email {
    let ctx = templates::context(
        ty,
        &e.id.to_string(),
        &e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        &e.data,
    );
    match templates::render(t.subject.as_deref(), &t.body, &ctx) {
        Ok(r) => Email {
            subject: r.subject.unwrap_or_else(|| ty.to_owned()),
            body: r.body,
        },
        Err(problems) => {
            tracing::error!(template.id = %t.id, ?problems, "a saved template did not render");
            Email {
                subject: ty.to_owned(),
                body: format!("Event {ty} ({}).", e.subject),
            }
        }
    }
}

#[async_trait]
impl BatchHandler for NotifyConsumer {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let events: Vec<&Envelope> = messages.iter().map(|m| envelope(m)).collect();
        let result = match self.notifications(&events).await {
            Ok(new) => self
                .store
                .enqueue_notifications(&new)
                .await
                .map_err(|e| HandlerError::new(format!("cannot queue the notifications: {e}")))
                .map(|inserted| {
                    let fresh = inserted.iter().filter(|i| **i).count();
                    if fresh > 0 {
                        metrics::counter!("meridian_notify_queued_total", "channel" => "webhook")
                            .increment(fresh as u64);
                        self.wake.wake();
                    }
                    if fresh < inserted.len() {
                        tracing::debug!(
                            repeats = inserted.len() - fresh,
                            "notifications already queued"
                        );
                    }
                }),
            Err(e) => Err(e),
        };
        vec![result; messages.len()]
    }
}

fn options(consumer: &str) -> SubscribeOptions {
    SubscribeOptions {
        // Notifications are about what happens from the time the service first runs: a
        // new deployment does not notify of its history.
        start: StartAt::New,
        max_in_flight: 4 * BATCH,
        ..SubscribeOptions::durable(consumer)
    }
}

/// Declares both durable consumers ([`consumer::declare`]), so that events published from
/// now on are kept for them even before [`run_consumers`] subscribes. Call it before
/// starting the outbox relay.
pub async fn declare(bus: &dyn Bus, deployment: &str) -> Result<(), BusError> {
    for (name, pattern) in subscriptions(deployment)? {
        consumer::declare(bus, &pattern, options(name)).await?;
    }
    Ok(())
}

/// Runs both consumers until `shutdown` turns `true`, with the bus's retries and dead
/// letters (`<topic>.dlq` and `dead_letters`).
pub async fn run_consumers(
    bus: Arc<dyn Bus>,
    store: Arc<dyn NotifyStore>,
    deployment: &str,
    dead_letters: Arc<dyn DeadLetterSink>,
    wake: Wake,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let handler = Arc::new(NotifyConsumer::new(store, wake));
    let runs = subscriptions(deployment)?.map(|(name, pattern)| {
        consumer::run_batched(
            bus.clone(),
            pattern,
            options(name),
            handler.clone(),
            BATCH,
            RetryPolicy::default(),
            dead_letters.clone(),
            shutdown.clone(),
        )
    });
    let [webhooks, orders, shipments] = runs;
    let (a, b, c) = tokio::join!(webhooks, orders, shipments);
    a.and(b).and(c)
}
