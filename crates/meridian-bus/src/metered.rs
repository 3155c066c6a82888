//! [`MeteredBus`]: any [`Bus`] with Prometheus metrics on its publishes and its
//! consumers' lag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{Bus, BusError, Capabilities, Message, SubscribeOptions, Subscription, TopicPattern};

/// Wraps a bus and counts what is published through it:
///
/// - `meridian_bus_published_total{topic}` and `meridian_bus_publish_failures_total{topic}`;
/// - `meridian_bus_publish_duration_seconds{topic}`: how long the backend took to accept one
///   message (for a batch, the batch's time, recorded once per message).
///
/// `topic` is the full topic, whose segments are the deployment, the domain and the event
/// type: a set fixed by the code, so the label stays bounded. Tenants never appear in it.
///
/// Its subscriptions export `meridian_bus_consumer_lag{consumer, pattern}`: the backend's
/// [`Subscription::lag`] (messages held for the consumer and not yet acknowledged), sampled
/// at most once per [`LAG_SAMPLE_INTERVAL`] when the consumer asks for its next delivery,
/// never per message. Backends that cannot tell export nothing.
///
/// Consumer-side metrics are recorded by [`crate::consumer::run`], labelled by pattern.
pub struct MeteredBus {
    inner: Arc<dyn Bus>,
}

impl std::fmt::Debug for MeteredBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBus")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl MeteredBus {
    pub fn new(inner: Arc<dyn Bus>) -> Self {
        Self { inner }
    }
}

fn record(topic: &str, result: &Result<(), BusError>, seconds: f64) {
    let topic = topic.to_owned();
    match result {
        Ok(()) => {
            metrics::counter!("meridian_bus_published_total", "topic" => topic.clone())
                .increment(1);
            metrics::histogram!("meridian_bus_publish_duration_seconds", "topic" => topic)
                .record(seconds);
        }
        Err(_) => {
            metrics::counter!("meridian_bus_publish_failures_total", "topic" => topic).increment(1);
        }
    }
}

#[async_trait]
impl Bus for MeteredBus {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        let topic = message.topic.as_str().to_owned();
        let started = Instant::now();
        let result = self.inner.publish(message).await;
        record(&topic, &result, started.elapsed().as_secs_f64());
        result
    }

    async fn publish_batch(&self, messages: Vec<Message>) -> Vec<Result<(), BusError>> {
        let topics: Vec<String> = messages
            .iter()
            .map(|m| m.topic.as_str().to_owned())
            .collect();
        let started = Instant::now();
        let results = self.inner.publish_batch(messages).await;
        let seconds = started.elapsed().as_secs_f64();
        for (topic, result) in topics.iter().zip(&results) {
            record(topic, result, seconds);
        }
        results
    }

    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let consumer = options.consumer.clone();
        let inner = self.inner.subscribe(pattern, options).await?;
        Ok(Box::new(MeteredSubscription {
            inner,
            lag: metrics::gauge!(
                "meridian_bus_consumer_lag",
                "pattern" => pattern.to_string(),
                "consumer" => consumer,
            ),
            sampled: None,
        }))
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
}

/// How often a subscription's lag is sampled.
pub const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// A subscription that samples its backend's lag into a gauge.
struct MeteredSubscription {
    inner: Box<dyn Subscription>,
    lag: metrics::Gauge,
    sampled: Option<Instant>,
}

impl MeteredSubscription {
    async fn sample(&mut self) {
        if self
            .sampled
            .is_some_and(|at| at.elapsed() < LAG_SAMPLE_INTERVAL)
        {
            return;
        }
        self.sampled = Some(Instant::now());
        if let Some(lag) = self.inner.lag().await {
            #[allow(clippy::cast_precision_loss)]
            self.lag.set(lag as f64);
        }
    }
}

#[async_trait]
impl Subscription for MeteredSubscription {
    async fn next(&mut self) -> Result<crate::Delivery, BusError> {
        // Sampled before waiting, so that waiting stays cancel-safe.
        self.sample().await;
        self.inner.next().await
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<crate::Delivery>, BusError> {
        self.sample().await;
        self.inner.next_batch(max).await
    }

    async fn lag(&mut self) -> Option<u64> {
        self.inner.lag().await
    }
}
