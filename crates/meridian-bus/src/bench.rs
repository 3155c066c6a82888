//! The memory backend's publish-to-deliver benchmark (`meridian bench bus --backend
//! memory`): one producer task publishes pre-built messages in batches, one consumer task
//! receives and acknowledges each, and the clock runs from the first publish to the last
//! acknowledgement. The figure is wall time divided by messages: the amortized cost of
//! moving one message through the bus.
//!
//! Building the messages is outside the clock (it is the caller's cost, not the bus's);
//! dropping them after delivery is inside it, as it would be in a real consumer.
//!
//! Run it on a multi-threaded Tokio runtime, so the producer and the consumer can run on
//! different cores; on one thread it measures something else (no cross-core handoff).

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;

use crate::{Bus, BusError, MemoryBus, MemoryBusConfig, Message, SubscribeOptions, TopicPattern};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Messages moved through the bus (1,000,000 or more for a stable figure).
    pub messages: u64,
    /// Messages per `publish_batch` call; 1 publishes them one at a time with `publish`.
    pub batch: usize,
    /// The bus's [`MemoryBusConfig::track_unacked`].
    pub track_unacked: bool,
    /// The bus's [`MemoryBusConfig::spin`].
    pub spin: Duration,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            messages: 1_000_000,
            batch: 256,
            track_unacked: true,
            // The low-latency setting: a stream this dense never parks its consumer.
            spin: Duration::from_micros(20),
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
    /// `ns_per_message`: an envelope is nine heap blocks, and a consumer frees them.
    pub drop_ns_per_message: f64,
    /// The same messages, rounds and tasks through a bare `tokio::sync::mpsc` channel
    /// (send, receive, free), in nanoseconds per message: the floor this machine and this
    /// message type set for handing a message from one core to another.
    pub channel_ns_per_message: f64,
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
/// first publish until the consumer has acknowledged all of it. The figure is the sum of the
/// timed parts divided by the messages.
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

    let (round_done, mut rounds_done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let consumer_rounds = rounds.clone();
    let consumer = tokio::spawn(async move {
        for size in consumer_rounds {
            for _ in 0..size {
                sub.next().await?.ack().await?;
            }
            // The producer is waiting for this; if it is gone, the bench is over anyway.
            let _ = round_done.send(());
        }
        Ok::<_, BusError>(())
    });
    let producer = tokio::spawn(async move {
        let mut elapsed = Duration::ZERO;
        let mut per_message = Vec::with_capacity(rounds.len());
        let mut seq = 0;
        for size in rounds {
            let messages = build(&topic, seq, size);
            seq += size;
            let started = Instant::now();
            if batch == 1 {
                for m in messages {
                    bus.publish(m).await?;
                }
            } else {
                let mut messages = messages.into_iter();
                loop {
                    let chunk: Vec<Message> = messages.by_ref().take(batch).collect();
                    if chunk.is_empty() {
                        break;
                    }
                    for result in bus.publish_batch(chunk).await {
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
    consumer.await.map_err(join)??;
    let (elapsed, median_round_ns_per_message) = elapsed?;

    let n = options.messages.max(1) as f64;
    Ok(BenchResult {
        options,
        elapsed,
        ns_per_message: elapsed.as_nanos() as f64 / n,
        messages_per_second: n / elapsed.as_secs_f64(),
        median_round_ns_per_message,
        drop_ns_per_message: drop_cost(&topic_for_drop(), options.messages).await?,
        channel_ns_per_message: channel_baseline(&topic_for_drop(), options.messages).await?,
    })
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
    let rounds = messages.div_ceil(ROUND).clamp(1, 32);
    let mut freed = Duration::ZERO;
    for round in 0..rounds {
        let topic = topic.clone();
        let built = tokio::spawn(async move { build(&topic, round * ROUND, ROUND) });
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
/// one of 1,024 orders.
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
