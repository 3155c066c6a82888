//! The RabbitMQ throughput benchmark (`meridian bench bus --backend rabbitmq`): the bus
//! against lapin used directly, in the same run, on the same broker, with the same work.
//!
//! Both sides move `messages` messages of about `payload_bytes` bytes through a durable
//! quorum queue bound to a topic exchange: one producer publishes persistent messages in
//! batches of `batch` and awaits the broker's confirms for each batch; one consumer, with
//! `prefetch` deliveries in flight, receives and acknowledges each message. The clock runs
//! from the first publish to the last acknowledgement. The bus side
//! ([`meridian_bus::bench::bench_throughput`]) also encodes and decodes the CloudEvents
//! envelope, validates the topic and filters the pattern: that is the cost being measured.
//! End-to-end latency is from just before a message's batch is published to its receipt by
//! the consumer.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use meridian_bus::BusError;
use meridian_bus::bench::{
    Comparison, SideResult, ThroughputOptions, bench_throughput, micros_since,
};
use meridian_core::Topic;

use crate::{RabbitBus, RabbitConfig};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub url: String,
    pub messages: u64,
    /// The approximate size of one message on the wire, in bytes.
    pub payload_bytes: usize,
    /// Messages per confirmed batch.
    pub batch: usize,
    /// Unacknowledged deliveries the consumer holds (`max_in_flight`, `basic.qos`).
    pub prefetch: u16,
    /// Runs of each side, alternating raw and bus so that drift in the machine's load hits
    /// both alike; each side reports its median run by throughput.
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            url: crate::DEFAULT_URL.to_owned(),
            messages: 100_000,
            payload_bytes: 1024,
            batch: 100,
            prefetch: 256,
            rounds: 3,
        }
    }
}

/// Runs both sides `rounds` times, alternating, each run on a fresh deployment that is
/// deleted after it.
pub async fn run(options: &BenchOptions) -> Result<Comparison, BusError> {
    let mut result = Comparison {
        bus_runs: Vec::new(),
        raw_runs: Vec::new(),
    };
    for round in 0..options.rounds.max(1) {
        result.raw_runs.push(raw_lapin(options, round).await?);
        result.bus_runs.push(bus(options, round).await?);
    }
    Ok(result)
}

fn deployment(side: &str, round: usize) -> String {
    format!("bench{side}{}r{round}", std::process::id())
}

async fn bus(options: &BenchOptions, round: usize) -> Result<SideResult, BusError> {
    let d = deployment("bus", round);
    let bus = RabbitBus::connect(RabbitConfig::new(options.url.clone())).await?;
    let topic = Topic::platform(&d, "oms", "order.created");
    let result = bench_throughput(
        Arc::new(bus.clone()),
        &topic,
        &ThroughputOptions {
            messages: options.messages,
            payload_bytes: options.payload_bytes,
            batch: options.batch,
            max_in_flight: usize::from(options.prefetch),
            concurrent_acks: 1,
        },
    )
    .await;
    // Delete the broker objects whatever happened, then report.
    bus.delete_deployment(&d, &bus.declared_queues().names())
        .await?;
    bus.close();
    result
}

async fn raw_lapin(options: &BenchOptions, round: usize) -> Result<SideResult, BusError> {
    let err =
        |what: &'static str| move |e: lapin::Error| BusError::Internal(format!("{what}: {e}"));
    let d = deployment("raw", round);
    let exchange = format!("meridian.{d}");
    let queue = format!("meridian.{d}.bench");
    let routing_key = format!("deployment.{d}.platform.oms.order.created");
    let conn = Connection::connect(&options.url, ConnectionProperties::default())
        .await
        .map_err(err("connect"))?;
    let ch = conn.create_channel().await.map_err(err("channel"))?;
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(err("declare exchange"))?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map_err(err("declare queue"))?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        routing_key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(err("bind"))?;
    let consume_ch = conn.create_channel().await.map_err(err("channel"))?;
    consume_ch
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await
        .map_err(err("qos"))?;
    let mut consumer = consume_ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("consume"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(err("confirms"))?;

    let base = Instant::now();
    let total = options.messages;
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let delivery = consumer
                .next()
                .await
                .ok_or_else(|| BusError::Internal("raw consumer ended".into()))?
                .map_err(err("deliver"))?;
            let mut t = [0u8; 8];
            if let Some(head) = delivery.data.get(..8) {
                t.copy_from_slice(head);
            }
            latencies.push(micros_since(base).saturating_sub(u64::from_le_bytes(t)));
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(err("ack"))?;
        }
        Ok::<_, BusError>((Instant::now(), latencies))
    });
    let started = Instant::now();
    let mut payload = vec![b'x'; options.payload_bytes.max(8)];
    let mut n = 0;
    while n < total {
        let count = (total - n).min(options.batch as u64);
        payload[..8].copy_from_slice(&micros_since(base).to_le_bytes());
        let mut confirms = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let confirm = ch
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .map_err(err("publish"))?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await.map_err(err("confirm"))? {
                Confirmation::Ack(_) => {}
                other => return Err(BusError::Internal(format!("raw confirm: {other:?}"))),
            }
        }
        n += count;
    }
    let (finished, latencies) = consumer
        .await
        .map_err(|e| BusError::Internal(format!("raw consumer: {e}")))??;
    let result = SideResult::new(finished - started, total, latencies);
    let _ = consume_ch.close(200, "done".into()).await;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .map_err(err("delete queue"))?;
    ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .map_err(err("delete exchange"))?;
    let _ = conn.close(200, "done".into()).await;
    Ok(result)
}
