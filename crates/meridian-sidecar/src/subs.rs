//! The plugin's subscriptions: one task per subscription pulls from the bus, applies the
//! ACL filter decided at set-up, and queues admitted deliveries for the plugin's long-poll.
//! Deliveries handed to the plugin wait in `in_flight` until it acks or nacks them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meridian_bus::{Bus, BusError, Delivery, Message, SubscribeOptions, TopicPattern};
use meridian_core::Envelope;
use meridian_plugin::SubscriptionFilter;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::metrics;

/// Deliveries admitted but not yet fetched by the plugin, per subscription.
const QUEUE: usize = 64;

/// The envelope of a bus message. The only place the sidecar reaches into a `Message`'s
/// envelope.
pub fn envelope(message: &Message) -> &Envelope {
    message.envelope()
}

pub struct Sub {
    pub pattern: String,
    queue: tokio::sync::Mutex<mpsc::Receiver<Delivery>>,
    /// Handed to the plugin, with when: past the ack wait the bus redelivers, so the
    /// entry is dropped (abandoning the delivery) rather than kept forever.
    in_flight: Mutex<HashMap<u64, (Instant, Delivery)>>,
    ack_wait: Duration,
    task: JoinHandle<()>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
pub struct Subscriptions {
    subs: Mutex<HashMap<String, Arc<Sub>>>,
    next_id: AtomicU64,
}

/// A delivery handed to the plugin.
pub struct Handed {
    pub id: u64,
    pub delivery_attempt: u32,
    pub message: Message,
}

impl Subscriptions {
    pub fn get(&self, name: &str) -> Option<Arc<Sub>> {
        self.subs.lock().get(name).cloned()
    }

    /// Starts a subscription's task, unless one by that name runs already.
    pub fn open(
        &self,
        name: &str,
        bus: Arc<dyn Bus>,
        pattern: TopicPattern,
        filter: SubscriptionFilter,
        options: SubscribeOptions,
    ) {
        let mut subs = self.subs.lock();
        if subs.contains_key(name) {
            return;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let ack_wait = options.ack_wait;
        let task = tokio::spawn(pump(bus, pattern.clone(), filter, options, tx));
        subs.insert(
            name.to_owned(),
            Arc::new(Sub {
                pattern: pattern.to_string(),
                queue: tokio::sync::Mutex::new(rx),
                in_flight: Mutex::new(HashMap::new()),
                ack_wait,
                task,
            }),
        );
    }

    pub fn close(&self, name: &str) -> bool {
        self.subs.lock().remove(name).is_some()
    }

    pub fn close_all(&self) {
        self.subs.lock().clear();
    }

    /// Up to `max` admitted deliveries, waiting up to `wait` for the first.
    pub async fn poll(&self, sub: &Sub, max: usize, wait: Duration) -> Vec<Handed> {
        let mut queue = sub.queue.lock().await;
        let mut got = Vec::new();
        match tokio::time::timeout(wait, queue.recv()).await {
            Ok(Some(d)) => got.push(d),
            Ok(None) | Err(_) => return Vec::new(),
        }
        while got.len() < max {
            match queue.try_recv() {
                Ok(d) => got.push(d),
                Err(_) => break,
            }
        }
        drop(queue);
        let now = meridian_core::now();
        let handed_at = Instant::now();
        let mut in_flight = sub.in_flight.lock();
        in_flight.retain(|_, (at, _)| handed_at.duration_since(*at) < sub.ack_wait);
        got.into_iter()
            .map(|d| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
                let topic = d.message.topic.to_string();
                let age = (now - envelope(&d.message).time)
                    .to_std()
                    .unwrap_or_default()
                    .as_secs_f64();
                ::metrics::counter!(metrics::DELIVERED_TOTAL, "topic" => topic.clone())
                    .increment(1);
                ::metrics::histogram!(metrics::DELIVERY_LATENCY_SECONDS, "topic" => topic)
                    .record(age);
                let handed = Handed {
                    id,
                    delivery_attempt: d.attempt,
                    message: d.message.clone(),
                };
                in_flight.insert(id, (handed_at, d));
                handed
            })
            .collect()
    }

    /// Acks (`nack: None`) or nacks with a delay the deliveries named; returns the ids that
    /// were not in flight.
    pub async fn settle(&self, sub: &Sub, ids: &[u64], nack: Option<Duration>) -> Vec<u64> {
        let mut unknown = Vec::new();
        let taken: Vec<Delivery> = {
            let mut in_flight = sub.in_flight.lock();
            ids.iter()
                .filter_map(|id| {
                    let d = in_flight.remove(id).map(|(_, d)| d);
                    if d.is_none() {
                        unknown.push(*id);
                    }
                    d
                })
                .collect()
        };
        let outcome = if nack.is_some() { "nack" } else { "ack" };
        for d in taken {
            let result = match nack {
                None => d.ack().await,
                Some(delay) => d.nack(delay).await,
            };
            match result {
                Ok(()) => {
                    ::metrics::counter!(metrics::SETTLED_TOTAL, "outcome" => outcome).increment(1)
                }
                Err(e) => {
                    metrics::error("settle");
                    tracing::warn!(error = %e, outcome, "cannot settle a delivery; the bus will redeliver it");
                }
            }
        }
        unknown
    }
}

/// Subscribes (retrying while the bus is unreachable) and moves admitted deliveries to the
/// queue; messages the filter refuses are acknowledged so they never come back.
async fn pump(
    bus: Arc<dyn Bus>,
    pattern: TopicPattern,
    mut filter: SubscriptionFilter,
    options: SubscribeOptions,
    tx: mpsc::Sender<Delivery>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut sub = match bus.subscribe(&pattern, options.clone()).await {
            Ok(s) => s,
            Err(e) => {
                metrics::error("subscribe");
                tracing::warn!(%pattern, error = %e, "cannot subscribe yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let d = match sub.next().await {
                Ok(d) => d,
                Err(BusError::Closed) => return,
                Err(e) => {
                    metrics::error("receive");
                    tracing::warn!(%pattern, error = %e, "subscription failed; subscribing again");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            };
            let tenant = envelope(&d.message).tenant;
            match filter.admits(&d.message.topic, tenant) {
                Ok(()) => {
                    if tx.send(d).await.is_err() {
                        return;
                    }
                }
                Err(reason) => {
                    ::metrics::counter!(metrics::FILTERED_TOTAL, "reason" => reason.label())
                        .increment(1);
                    if let Err(e) = d.ack().await {
                        metrics::error("settle");
                        tracing::warn!(error = %e, "cannot ack a filtered delivery");
                    }
                }
            }
        }
    }
}
