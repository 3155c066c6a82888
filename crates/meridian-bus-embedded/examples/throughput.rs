//! Durable throughput of the embedded bus on SQLite: N messages published by P concurrent
//! publishers and consumed, concurrently, by one durable consumer that acknowledges every
//! message (each ack durable before it returns). Prints messages per second.
//!
//! ```text
//! cargo run --release -p meridian-bus-embedded --example throughput -- [N] [P] [BATCH] [SEQ]
//! ```
//!
//! `BATCH` > 1 makes each publisher call `publish_batch` with that many messages; the
//! default 1 calls `publish` per message. `SEQ` = 1 makes the consumer await each ack
//! before taking the next delivery (as a one-at-a-time handler loop does); the default 0
//! keeps acks in progress concurrently.
//!
//! The database is a fresh file in the system temporary directory (set `TMPDIR` to measure
//! another disk), or, when `MERIDIAN_BENCH_DATABASE_URL` names a PostgreSQL server, a fresh
//! schema there, dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use meridian_bus::{Bus, Message, StartAt, SubscribeOptions, TopicPattern};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::{Envelope, TenantId, Topic};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let n = args.next().transpose()?.unwrap_or(200_000);
    let publishers = args.next().transpose()?.unwrap_or(64).max(1);
    let batch = args.next().transpose()?.unwrap_or(1).max(1);
    let sequential = args.next().transpose()?.unwrap_or(0) == 1;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench.db");
    let postgres = std::env::var("MERIDIAN_BENCH_DATABASE_URL").ok();
    let schema = format!("bus_bench_{}", std::process::id());
    let (config, label) = match &postgres {
        Some(url) => (
            EmbeddedConfig::Postgres {
                url: url.clone(),
                schema: Some(schema.clone()),
                pool_size: EmbeddedConfig::DEFAULT_POOL_SIZE,
            },
            "postgres",
        ),
        None => (EmbeddedConfig::Sqlite { path: path.clone() }, "sqlite"),
    };
    let bus = Arc::new(EmbeddedBus::open(config).await?);
    let topic = Topic::parse("deployment.bench.platform.oms.order.created")?;
    let pattern = TopicPattern::parse("deployment.bench.platform.oms.order.*")?;
    let options = SubscribeOptions {
        max_in_flight: 4096,
        ack_wait: Duration::from_secs(60),
        start: StartAt::New,
        ..SubscribeOptions::durable("bench")
    };
    let mut sub = bus.subscribe(&pattern, options).await?;

    let acked = Arc::new(AtomicU64::new(0));
    let (all_acked, done) = tokio::sync::oneshot::channel::<Instant>();
    let consumer = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut all_acked = Some(all_acked);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let mut received = 0;
            while received < n {
                let d = sub.next().await?;
                received += 1;
                if sequential {
                    d.ack().await?;
                    let _ = tx.send(());
                    continue;
                }
                // Acks are durable when they return; keep many in progress so the group
                // commit can batch them, as a consumer with max_in_flight > 1 would.
                let tx = tx.clone();
                tokio::spawn(async move {
                    if d.ack().await.is_ok() {
                        let _ = tx.send(());
                    }
                });
            }
            drop(tx);
            while rx.recv().await.is_some() {
                if acked.fetch_add(1, Ordering::Relaxed) + 1 == n
                    && let Some(tx) = all_acked.take()
                {
                    let _ = tx.send(Instant::now());
                }
            }
            Ok::<_, meridian_bus::BusError>(())
        })
    };

    let payload = serde_json::json!({
        "order_id": "0192f5e0-0000-7000-8000-000000000000",
        "lines": [{ "sku": "SKU-1", "quantity": 1 }],
        "total": { "amount": 1999, "currency": "EUR" }
    });
    let started = Instant::now();
    let per = n / publishers;
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let bus = Arc::clone(&bus);
            let topic = topic.clone();
            let payload = payload.clone();
            let count = if p + 1 == publishers {
                n - per * p
            } else {
                per
            };
            tokio::spawn(async move {
                let message = |i: u64| {
                    Message::new(
                        topic.clone(),
                        Envelope::new(
                            "/meridian/bench",
                            "meridian.oms.order.created",
                            TenantId::new(),
                            format!("order-{p}-{i}"),
                            meridian_core::now(),
                            payload.clone(),
                        ),
                    )
                };
                let mut i = 0;
                while i < count {
                    let k = batch.min(count - i);
                    if k == 1 {
                        bus.publish(message(i)).await?;
                    } else {
                        for r in bus.publish_batch((i..i + k).map(message).collect()).await {
                            r?;
                        }
                    }
                    i += k;
                }
                Ok::<_, meridian_bus::BusError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let published = started.elapsed();
    let finished = done.await?;
    consumer.await??;
    let total = finished - started;
    let size = match &postgres {
        Some(url) => drop_schema(url, &schema).await?,
        None => std::fs::metadata(&path)?.len() + wal_size(&path),
    };
    println!(
        "embedded/{label}: {n} messages, {publishers} publishers, batch {batch}, {} acks: \
         published in {:.2} s ({:.0} msg/s); published and consumed (acked durably) in \
         {:.2} s = {:.0} msg/s; database {:.1} MiB",
        if sequential {
            "sequential"
        } else {
            "concurrent"
        },
        published.as_secs_f64(),
        n as f64 / published.as_secs_f64(),
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Drops the benchmark's schema; returns the size its tables had.
async fn drop_schema(url: &str, schema: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let size: i64 = client
        .query_one(
            "SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&schema],
        )
        .await?
        .get(0);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(size.max(0) as u64)
}

fn wal_size(path: &std::path::Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}
