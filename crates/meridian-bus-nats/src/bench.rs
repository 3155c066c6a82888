//! The NATS throughput benchmark (`meridian bench bus --backend nats`): the bus against
//! async-nats used directly, in the same run, on the same server, with the same work.
//!
//! Both sides move `messages` messages of about `payload_bytes` bytes through a file-backed
//! JetStream stream: one producer publishes in batches of `batch`, each message with a
//! `Nats-Msg-Id` header (the bus's deduplication id), sending the whole batch before
//! awaiting its acks; one pull consumer with `prefetch` unacknowledged messages allowed
//! receives and acknowledges each message, awaiting each ack (a confirmed double ack when
//! `confirm_acks`, as the bus does by default, otherwise a plain ack). The clock runs from the
//! first publish to the last acknowledgement. The bus side also encodes and decodes the
//! CloudEvents envelope and validates the topic: that is the cost being measured. Latency is
//! from just before a message's batch is published to its receipt by the consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use meridian_bus::BusError;
use meridian_bus::bench::{
    Comparison, SideResult, ThroughputOptions, bench_throughput, micros_since,
};
use meridian_core::Topic;

use crate::{NatsBus, NatsConfig};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub url: String,
    pub messages: u64,
    /// The approximate size of one message on the wire, in bytes.
    pub payload_bytes: usize,
    /// Messages per batch of publishes whose acks are awaited together.
    pub batch: usize,
    /// Unacknowledged deliveries the consumer holds (`max_in_flight`, `max_ack_pending`).
    pub prefetch: usize,
    /// Both sides wait for the server to confirm each ack ([`NatsConfig::confirm_acks`]).
    pub confirm_acks: bool,
    /// Runs of each side, alternating raw and bus so that drift in the machine's load hits
    /// both alike.
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            messages: 100_000,
            payload_bytes: 1024,
            batch: 100,
            prefetch: 256,
            confirm_acks: true,
            rounds: 3,
        }
    }
}

/// Runs both sides `rounds` times, alternating, each run on fresh streams that are deleted
/// after it.
pub async fn run(options: &BenchOptions) -> Result<Comparison, BusError> {
    let mut result = Comparison {
        bus_runs: Vec::new(),
        raw_runs: Vec::new(),
    };
    for round in 0..options.rounds.max(1) {
        result.raw_runs.push(raw_nats(options, round).await?);
        result.bus_runs.push(bus(options, round).await?);
    }
    Ok(result)
}

fn deployment(side: &str, round: usize) -> String {
    format!("bench{side}{}r{round}", std::process::id())
}

async fn bus(options: &BenchOptions, round: usize) -> Result<SideResult, BusError> {
    let d = deployment("bus", round);
    let bus = NatsBus::connect_with(NatsConfig {
        confirm_acks: options.confirm_acks,
        ..NatsConfig::new(options.url.clone())
    })
    .await?;
    let topic = Topic::platform(&d, "oms", "order.created");
    let result = bench_throughput(
        Arc::new(bus.clone()),
        &topic,
        &ThroughputOptions {
            messages: options.messages,
            payload_bytes: options.payload_bytes,
            batch: options.batch,
            max_in_flight: options.prefetch,
            concurrent_acks: 1,
        },
    )
    .await;
    // Delete the streams whatever happened, then report.
    bus.delete_deployment(&d).await?;
    result
}

async fn raw_nats(options: &BenchOptions, round: usize) -> Result<SideResult, BusError> {
    fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BusError {
        move |e| BusError::Internal(format!("raw nats {what}: {e}"))
    }
    let d = deployment("raw", round);
    let subject = format!("deployment.{d}.platform.oms.order.created");
    let client = async_nats::ConnectOptions::new()
        .name("meridian-bench-raw")
        .connect(options.url.as_str())
        .await
        .map_err(err("connect"))?;
    let js = jetstream::new(client.clone());
    // The profile the bus gives its streams (see `Inner::stream_config`).
    let stream_name = format!("RAW_{d}");
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: 1,
            duplicate_window: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(err("create stream"))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(60),
            max_deliver: -1,
            filter_subject: subject.clone(),
            max_ack_pending: i64::try_from(options.prefetch.max(1)).unwrap_or(i64::MAX),
            ..Default::default()
        })
        .await
        .map_err(err("create consumer"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(options.prefetch.clamp(1, 256))
        .messages()
        .await
        .map_err(err("pull"))?;

    let base = Instant::now();
    let total = options.messages;
    let confirm = options.confirm_acks;
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let m = messages
                .next()
                .await
                .ok_or_else(|| BusError::Internal("raw nats consumer ended".into()))?
                .map_err(err("deliver"))?;
            let mut t = [0u8; 8];
            if let Some(head) = m.payload.get(..8) {
                t.copy_from_slice(head);
            }
            latencies.push(micros_since(base).saturating_sub(u64::from_le_bytes(t)));
            if confirm {
                m.double_ack().await.map_err(err("ack"))?;
            } else {
                m.ack().await.map_err(err("ack"))?;
            }
        }
        Ok::<_, BusError>((Instant::now(), latencies))
    });
    let mut payload = vec![b'x'; options.payload_bytes.max(8)];
    let started = Instant::now();
    let mut n = 0;
    while n < total {
        let count = (total - n).min(options.batch.max(1) as u64);
        payload[..8].copy_from_slice(&micros_since(base).to_le_bytes());
        let mut acks = Vec::with_capacity(count as usize);
        for i in n..n + count {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{d}-{i}").as_str());
            let ack = js
                .publish_with_headers(subject.clone(), headers, payload.clone().into())
                .await
                .map_err(err("publish"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(err("publish ack"))?;
        }
        n += count;
    }
    let (finished, latencies) = consumer
        .await
        .map_err(|e| BusError::Internal(format!("raw nats consumer: {e}")))??;
    let result = SideResult::new(finished - started, total, latencies);
    js.delete_stream(&stream_name)
        .await
        .map_err(err("delete stream"))?;
    Ok(result)
}
