//! The bus benchmarks behind `meridian bench bus`.
//!
//! - [`bench_memory_with`] (`--backend memory`): one producer task publishes pre-built
//!   messages in batches, one consumer task receives them (in batches with
//!   [`Subscription::next_batch`](crate::Subscription::next_batch) and
//!   [`Delivery::ack_all`](crate::Delivery::ack_all), or one `next` and `ack` each) and
//!   frees them, and the clock runs from the first publish to the last acknowledgement. The
//!   figure is wall time divided by messages: the amortized cost of moving one message
//!   through the bus. Building the messages (the envelope and its encoding into a
//!   [`Message`]) is outside the clock (it is the caller's cost, not the bus's; it is
//!   measured apart and reported); dropping them after delivery is inside it, as it would
//!   be in a real consumer. Run it on a multi-threaded Tokio runtime, so the producer and the consumer
//!   can run on different cores; on one thread it measures something else (no cross-core
//!   handoff).
//! - [`bench_throughput`] (`--backend embedded|nats|rabbitmq`): any [`Bus`] moving
//!   messages of about 1 KB from one producer (`publish_batch`) to one consumer that
//!   acknowledges each; reports throughput and publish-to-deliver latency percentiles
//!   ([`SideResult`]). The broker backends run the same work through their raw client
//!   library in the same run (`meridian_bus_nats::bench`, `meridian_bus_rabbitmq::bench`)
//!   and compare the two with [`Comparison`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::{
    Bus, BusError, Delivery, MemoryBus, MemoryBusConfig, Message, SubscribeOptions, TopicPattern,
};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Messages moved through the bus. Millions for a stable figure: the first rounds of a
    /// process also pay for growing its heap.
    pub messages: u64,
    /// Messages per `publish_batch` call; 1 publishes them one at a time with `publish`.
    pub batch: usize,
    /// The bus's [`MemoryBusConfig::track_unacked`].
    pub track_unacked: bool,
    /// The bus's [`MemoryBusConfig::spin`].
    pub spin: Duration,
    /// The consumer takes up to this many deliveries per `next_batch` call and settles them
    /// with one `Delivery::ack_all`; 1 calls `next` and `ack` per message.
    pub receive_batch: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 5_000_000,
            batch: 256,
            track_unacked: false,
            // The low-latency setting: a stream this dense never parks its consumer.
            spin: Duration::from_micros(20),
            receive_batch: 256,
        }
    }
}

/// What was measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchResult {
    pub options: BenchOptions,
    /// From the first publish to the last acknowledgement.
    pub elapsed: Duration,
    /// `elapsed / messages`, in nanoseconds.
    pub ns_per_message: f64,
    pub messages_per_second: f64,
    /// The median round's time per message, in nanoseconds. On a shared machine a round the
    /// scheduler interrupted inflates the amortized figure; the median shows the cost
    /// without those interruptions.
    pub median_round_ns_per_message: f64,
    /// What freeing one message costs the consumer (measured apart, on a message built by
    /// the producer's thread as in the run), in nanoseconds. It is part of
    /// `ns_per_message`: a [`Message`] is one buffer, freed by the consumer.
    pub drop_ns_per_message: f64,
    /// What freeing the same event costs as a decoded [`Envelope`] (nine heap blocks: its
    /// strings, the JSON body), measured the same way, in nanoseconds: what a consumer pays
    /// on top of `drop_ns_per_message` once it decodes a message, and what every message
    /// cost the bus when it carried envelopes.
    pub envelope_drop_ns_per_message: f64,
    /// What building one message costs the producer, outside the clock: encoding the
    /// envelope into the message's buffer ([`Message::new`]) and freeing the envelope, in
    /// nanoseconds.
    pub build_ns_per_message: f64,
    /// The same messages, rounds and tasks through a bare `tokio::sync::mpsc` channel
    /// (send, receive, free), in nanoseconds per message: the floor this machine and this
    /// message type set for handing a message from one core to another.
    pub channel_ns_per_message: f64,
    /// Publish-to-deliver latency, sampled once per published batch: from just before the
    /// `publish_batch` call to the consumer holding the batch's last message.
    pub p50_latency: Duration,
    pub p99_latency: Duration,
}

impl BenchResult {
    /// `ns_per_message` less the cost of freeing the message: what the bus itself costs,
    /// comparable to transports (such as Aeron) whose messages need no freeing.
    pub fn transport_ns_per_message(&self) -> f64 {
        (self.ns_per_message - self.drop_ns_per_message).max(0.0)
    }
}

/// [`bench_memory_with`] with the default options for `messages` messages.
pub async fn bench_memory(messages: u64) -> Result<BenchResult, BusError> {
    bench_memory_with(BenchOptions {
        messages,
        ..BenchOptions::default()
    })
    .await
}

/// Messages built per round, outside the clock. Small enough that a round's messages are
/// still in the CPU caches when they are published, as a freshly built event would be;
/// building all of them first would measure memory bandwidth instead.
const ROUND: u64 = 4096;

/// Measures publish-to-deliver on a fresh [`MemoryBus`] with one producer and one consumer.
///
/// The messages go through in rounds of 4,096: each round is built, then timed from its
/// first publish until the consumer has acknowledged (and freed) all of it. The figure is
/// the sum of the timed parts divided by the messages.
pub async fn bench_memory_with(options: BenchOptions) -> Result<BenchResult, BusError> {
    let batch = options.batch.max(1);
    let bus = Arc::new(MemoryBus::with_config(MemoryBusConfig {
        track_unacked: options.track_unacked,
        spin: options.spin,
    }));
    let topic = Topic::platform("bench", "oms", "order.created");
    let mut sub = bus
        .subscribe(
            &TopicPattern::exact(&topic),
            SubscribeOptions::ephemeral("bench"),
        )
        .await?;
    let total = options.messages;
    let rounds: Vec<u64> = (0..total.div_ceil(ROUND))
        .map(|r| ROUND.min(total - r * ROUND))
        .collect();

    // Latency samples: the producer stamps each published batch (nanoseconds since `base`)
    // before publishing it; the consumer reads the stamp when it holds the batch's last
    // message. One clock read per batch on each side, so sampling costs nothing per message.
    let base = Instant::now();
    let per_round = move |size: u64| size.div_ceil(batch as u64) as usize;
    let chunks: usize = rounds.iter().map(|&size| per_round(size)).sum();
    let stamps: Arc<[AtomicU64]> = (0..chunks).map(|_| AtomicU64::new(0)).collect();
    let receive_batch = options.receive_batch.max(1);
    let (round_done, mut rounds_done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let consumer_rounds = rounds.clone();
    let consumer_stamps = stamps.clone();
    let consumer = tokio::spawn(async move {
        let stamps = consumer_stamps;
        let mut latencies = Vec::with_capacity(chunks);
        let mut chunk_base = 0;
        for size in consumer_rounds {
            let mut received: u64 = 0;
            while received < size {
                let left = size - received;
                let got = if receive_batch == 1 {
                    sub.next().await?.ack().await?;
                    1
                } else {
                    let deliveries = sub.next_batch(receive_batch.min(left as usize)).await?;
                    let got = deliveries.len() as u64;
                    Delivery::ack_all(deliveries).await?;
                    got
                };
                let before = received;
                received += got;
                // The last published batch these messages completed, if any.
                let b = batch as u64;
                let completed = if received == size {
                    Some(per_round(size) - 1)
                } else if received / b != before / b {
                    Some((received / b) as usize - 1)
                } else {
                    None
                };
                if let Some(chunk) = completed {
                    let now = base.elapsed().as_nanos() as u64;
                    let sent = stamps[chunk_base + chunk].load(Ordering::Acquire);
                    latencies.push(now.saturating_sub(sent));
                }
            }
            chunk_base += per_round(size);
            // The producer is waiting for this; if it is gone, the bench is over anyway.
            let _ = round_done.send(());
        }
        Ok::<_, BusError>(latencies)
    });
    let producer = tokio::spawn(async move {
        let mut elapsed = Duration::ZERO;
        let mut per_message = Vec::with_capacity(rounds.len());
        let mut seq = 0;
        let mut chunk = 0;
        for size in rounds {
            let messages = build(&topic, seq, size);
            seq += size;
            let started = Instant::now();
            let mut messages = messages.into_iter();
            loop {
                let part: Vec<Message> = messages.by_ref().take(batch).collect();
                if part.is_empty() {
                    break;
                }
                stamps[chunk].store(base.elapsed().as_nanos() as u64, Ordering::Release);
                chunk += 1;
                if batch == 1 {
                    for m in part {
                        bus.publish(m).await?;
                    }
                } else {
                    for result in bus.publish_batch(part).await {
                        result?;
                    }
                }
            }
            if rounds_done.recv().await.is_none() {
                return Err(BusError::Internal("the bench consumer stopped".into()));
            }
            let took = started.elapsed();
            elapsed += took;
            per_message.push(took.as_nanos() as f64 / size as f64);
        }
        per_message.sort_by(f64::total_cmp);
        let median = per_message
            .get(per_message.len() / 2)
            .copied()
            .unwrap_or(0.0);
        Ok::<_, BusError>((elapsed, median))
    });
    let join = |e: tokio::task::JoinError| BusError::Internal(format!("bench task failed: {e}"));
    let elapsed = producer.await.map_err(join)?;
    let mut latencies = consumer.await.map_err(join)??;
    let (elapsed, median_round_ns_per_message) = elapsed?;
    latencies.sort_unstable();
    let latency = |q: f64| Duration::from_nanos(percentile(&latencies, q));

    let n = options.messages.max(1) as f64;
    Ok(BenchResult {
        options,
        elapsed,
        ns_per_message: elapsed.as_nanos() as f64 / n,
        messages_per_second: n / elapsed.as_secs_f64(),
        median_round_ns_per_message,
        drop_ns_per_message: drop_cost(&topic_for_drop(), options.messages).await?,
        envelope_drop_ns_per_message: envelope_drop_cost(&topic_for_drop(), options.messages)
            .await?,
        build_ns_per_message: build_cost(&topic_for_drop(), options.messages),
        channel_ns_per_message: channel_baseline(&topic_for_drop(), options.messages).await?,
        p50_latency: latency(0.50),
        p99_latency: latency(0.99),
    })
}

/// The `q` quantile of sorted samples (nearest rank); 0 without samples.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// [`bench_memory_with`]'s rounds through a bare unbounded Tokio channel instead of the bus.
async fn channel_baseline(topic: &Topic, messages: u64) -> Result<f64, BusError> {
    let task_failed =
        |e: tokio::task::JoinError| BusError::Internal(format!("bench task failed: {e}"));
    let rounds: Vec<u64> = (0..messages.div_ceil(ROUND))
        .map(|r| ROUND.min(messages - r * ROUND))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let (round_done, mut rounds_done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let consumer_rounds = rounds.clone();
    let consumer = tokio::spawn(async move {
        for size in consumer_rounds {
            for _ in 0..size {
                if rx.recv().await.is_none() {
                    return;
                }
            }
            let _ = round_done.send(());
        }
    });
    let topic = topic.clone();
    let producer = tokio::spawn(async move {
        let mut elapsed = Duration::ZERO;
        let mut seq = 0;
        for size in rounds {
            let batch = build(&topic, seq, size);
            seq += size;
            let started = Instant::now();
            for m in batch {
                if tx.send(m).is_err() {
                    return Err(BusError::Internal("the baseline consumer stopped".into()));
                }
            }
            if rounds_done.recv().await.is_none() {
                return Err(BusError::Internal("the baseline consumer stopped".into()));
            }
            elapsed += started.elapsed();
        }
        Ok(elapsed)
    });
    let elapsed = producer.await.map_err(task_failed)??;
    consumer.await.map_err(task_failed)?;
    Ok(elapsed.as_nanos() as f64 / messages.max(1) as f64)
}

fn topic_for_drop() -> Topic {
    Topic::platform("bench", "oms", "order.created")
}

/// The average cost of freeing one message on one task when another task built it, as
/// the consumer in the run does: rounds are built on one task, handed over and freed on
/// another.
async fn drop_cost(topic: &Topic, messages: u64) -> Result<f64, BusError> {
    drop_cost_of(topic, messages, |m| m).await
}

/// [`drop_cost`] for the same events as decoded envelopes (nine heap blocks each).
async fn envelope_drop_cost(topic: &Topic, messages: u64) -> Result<f64, BusError> {
    drop_cost_of(topic, messages, |m| {
        m.into_iter()
            .map(Message::into_envelope)
            .collect::<Vec<Envelope>>()
    })
    .await
}

/// The average cost of [`build`] per message: building the envelope, encoding it into a
/// [`Message`] and freeing the envelope.
fn build_cost(topic: &Topic, messages: u64) -> f64 {
    let rounds = messages.div_ceil(ROUND).clamp(1, 32);
    let started = Instant::now();
    for round in 0..rounds {
        drop(build(topic, round * ROUND, ROUND));
    }
    started.elapsed().as_nanos() as f64 / (rounds * ROUND) as f64
}

async fn drop_cost_of<T: Send + 'static>(
    topic: &Topic,
    messages: u64,
    convert: fn(Vec<Message>) -> T,
) -> Result<f64, BusError> {
    let rounds = messages.div_ceil(ROUND).clamp(1, 32);
    let mut freed = Duration::ZERO;
    for round in 0..rounds {
        let topic = topic.clone();
        let built = tokio::spawn(async move { convert(build(&topic, round * ROUND, ROUND)) });
        let messages = built
            .await
            .map_err(|e| BusError::Internal(format!("bench task failed: {e}")))?;
        let timed = tokio::spawn(async move {
            let started = Instant::now();
            drop(messages);
            started.elapsed()
        });
        freed += timed
            .await
            .map_err(|e| BusError::Internal(format!("bench task failed: {e}")))?;
    }
    Ok(freed.as_nanos() as f64 / (rounds * ROUND) as f64)
}

/// Realistic `order.created` events: a CloudEvents envelope with a small JSON body, keyed by
/// one of 1,024 orders, encoded into a [`Message`].
fn build(topic: &Topic, first: u64, count: u64) -> Vec<Message> {
    let tenant = TenantId::new();
    let time = meridian_core::now();
    (first..first + count)
        .map(|i| {
            let envelope = Envelope::new(
                "/meridian/bench/oms",
                "meridian.oms.order.created",
                tenant,
                format!("order-{}", i % 1024),
                time,
                json!({ "seq": i, "total_minor": 4999 }),
            );
            Message::new(topic.clone(), envelope)
        })
        .collect()
}

/// What [`bench_throughput`] moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThroughputOptions {
    /// Messages moved in one run.
    pub messages: u64,
    /// The approximate size of one encoded envelope, in bytes (the body is padded to it).
    pub payload_bytes: usize,
    /// Messages per `publish_batch` call; the producer waits for each call to return
    /// (every message accepted, durably where the backend is durable) before the next.
    pub batch: usize,
    /// The consumer's `max_in_flight`.
    pub max_in_flight: usize,
    /// Acknowledgements the consumer keeps in progress at once; 1 awaits each ack before
    /// taking the next delivery. A backend whose acks are durable round trips (the
    /// embedded bus commits them in groups) needs many in progress to batch them.
    pub concurrent_acks: usize,
}

impl Default for ThroughputOptions {
    fn default() -> Self {
        Self {
            messages: 100_000,
            payload_bytes: 1024,
            batch: 100,
            max_in_flight: 256,
            concurrent_acks: 1,
        }
    }
}

/// One side's figures: the bus, or a raw client library doing the same work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SideResult {
    /// From the first publish to the last acknowledgement.
    pub elapsed: Duration,
    /// Messages published and consumed per second over `elapsed`.
    pub messages_per_second: f64,
    /// Publish-to-deliver latency: from just before a message's batch is published to the
    /// consumer receiving it.
    pub p50_latency: Duration,
    pub p99_latency: Duration,
}

impl SideResult {
    /// Figures from the elapsed time and one latency sample (in microseconds) per message.
    pub fn new(elapsed: Duration, messages: u64, mut latencies_us: Vec<u64>) -> Self {
        latencies_us.sort_unstable();
        let at = |q: f64| Duration::from_micros(percentile(&latencies_us, q));
        Self {
            elapsed,
            messages_per_second: messages as f64 / elapsed.as_secs_f64(),
            p50_latency: at(0.50),
            p99_latency: at(0.99),
        }
    }

    /// The run with the median throughput.
    pub fn median(mut runs: Vec<SideResult>) -> Option<SideResult> {
        runs.sort_by(|a, b| a.messages_per_second.total_cmp(&b.messages_per_second));
        runs.get(runs.len() / 2).copied()
    }
}

/// The bus against its raw client library, on the same broker, in the same run.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Every run of each side, in the order they ran (raw and bus alternate).
    pub bus_runs: Vec<SideResult>,
    pub raw_runs: Vec<SideResult>,
}

impl Comparison {
    /// The median bus run.
    pub fn bus(&self) -> Option<SideResult> {
        SideResult::median(self.bus_runs.clone())
    }

    /// The median raw run.
    pub fn raw(&self) -> Option<SideResult> {
        SideResult::median(self.raw_runs.clone())
    }

    /// Bus throughput over raw throughput in each run (a bus run over the raw run just
    /// before it).
    pub fn run_ratios(&self) -> Vec<f64> {
        self.raw_runs
            .iter()
            .zip(&self.bus_runs)
            .map(|(raw, bus)| bus.messages_per_second / raw.messages_per_second)
            .collect()
    }

    /// The median of [`Comparison::run_ratios`]: pairing each bus run with the raw run next
    /// to it cancels most of the drift in a shared machine's load, which comparing the two
    /// sides' medians would not.
    pub fn ratio(&self) -> Option<f64> {
        let mut ratios = self.run_ratios();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied()
    }
}

/// Microseconds since `base`; carried in each message to measure latency.
pub fn micros_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A benchmark message whose encoded envelope is about as long as `pad` makes it. Its event
/// time is the send time, set per batch ([`latency_micros`] reads it).
pub fn payload_message(topic: &Topic, n: u64, pad: &str) -> Message {
    Message::new(topic.clone(), payload_envelope(n, pad))
}

/// The envelope of a [`payload_message`].
pub fn payload_envelope(n: u64, pad: &str) -> Envelope {
    Envelope::new(
        "/meridian/bench/oms",
        "meridian.oms.order.created",
        TenantId::new(),
        format!("order-{}", n % 1024),
        meridian_core::now(),
        json!({ "n": n, "pad": pad }),
    )
}

/// The padding that brings [`payload_message`]'s encoded envelope to about
/// `payload_bytes`.
pub fn padding(topic: &Topic, payload_bytes: usize) -> Result<String, BusError> {
    let overhead = payload_message(topic, 0, "").encode(usize::MAX)?.len();
    Ok("x".repeat(payload_bytes.saturating_sub(overhead)))
}

/// Microseconds from a [`payload_message`]'s send time (its event time, which the bus reads
/// without decoding the envelope) to now.
pub fn latency_micros(message: &Message) -> u64 {
    let elapsed = meridian_core::now() - message.time();
    u64::try_from(elapsed.num_microseconds().unwrap_or(0)).unwrap_or(0)
}

/// Moves `options.messages` messages of about `options.payload_bytes` on `topic` through
/// `bus`: one producer publishing with `publish_batch`, one durable consumer (`bench`,
/// subscribed to exactly `topic` before the first publish) acknowledging every message.
/// The clock runs from the first publish to the last acknowledgement; the messages are
/// built before it starts (building events is the caller's cost), only their send time is
/// written per batch. Encoding, decoding, validation and acks are the bus's cost and are
/// inside it.
pub async fn bench_throughput(
    bus: Arc<dyn Bus>,
    topic: &Topic,
    options: &ThroughputOptions,
) -> Result<SideResult, BusError> {
    let mut sub = bus
        .subscribe(
            &TopicPattern::exact(topic),
            SubscribeOptions {
                max_in_flight: options.max_in_flight.max(1),
                ack_wait: Duration::from_secs(60),
                ..SubscribeOptions::durable("bench")
            },
        )
        .await?;
    let pad = padding(topic, options.payload_bytes)?;
    let total = options.messages;
    let concurrent_acks = options.concurrent_acks.max(1);
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        let mut acks = FuturesUnordered::new();
        let mut received = 0;
        while received < total {
            if acks.len() >= concurrent_acks {
                if let Some(acked) = acks.next().await {
                    acked?;
                }
                continue;
            }
            // `next` is cancel-safe, so losing this race to an ack loses no delivery.
            tokio::select! {
                biased;
                Some(acked) = acks.next(), if !acks.is_empty() => acked?,
                delivery = sub.next() => {
                    let delivery = delivery?;
                    latencies.push(latency_micros(&delivery.message));
                    received += 1;
                    if concurrent_acks == 1 {
                        delivery.ack().await?;
                    } else {
                        acks.push(delivery.ack());
                    }
                }
            }
        }
        while let Some(acked) = acks.next().await {
            acked?;
        }
        Ok::<_, BusError>((Instant::now(), latencies))
    });
    // The envelopes are built before the clock starts; the send time is written into each
    // (as its event time) per batch, so encoding them (`Message::new`) is inside the clock,
    // as it was when backends encoded on publish.
    let mut batches: Vec<Vec<Envelope>> = Vec::new();
    let mut n = 0;
    while n < total {
        let count = (total - n).min(options.batch.max(1) as u64);
        batches.push((n..n + count).map(|i| payload_envelope(i, &pad)).collect());
        n += count;
    }
    let started = Instant::now();
    for batch in batches {
        let now = meridian_core::now();
        let batch: Vec<Message> = batch
            .into_iter()
            .map(|mut e| {
                e.time = now;
                Message::new(topic.clone(), e)
            })
            .collect();
        for result in bus.publish_batch(batch).await {
            result?;
        }
    }
    let (finished, latencies) = consumer
        .await
        .map_err(|e| BusError::Internal(format!("bench consumer: {e}")))??;
    Ok(SideResult::new(finished - started, total, latencies))
}
