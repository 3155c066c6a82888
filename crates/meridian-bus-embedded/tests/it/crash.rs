//! `kill -9` in the middle of publishing and acknowledging, then a restart on the same
//! database: every publish that returned is in the log, every ack that returned holds
//! (the message is not delivered again) and every message not acked is delivered.
//!
//! The test binary runs itself as the child: the same test, with [`CHILD_ENV`] naming the
//! database, publishes and acks in a loop and prints each step after it returns; the parent
//! reads those lines, kills the child with SIGKILL, reopens the database and checks.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use meridian_bus::{Bus, Message, SubscribeOptions, TopicPattern};
use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
use meridian_core::{Envelope, TenantId, Topic};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

/// Set in the child: the database to use, as written by [`encode`].
const CHILD_ENV: &str = "MERIDIAN_BUS_CRASH_CHILD";

/// Acks the parent waits for before it kills the child.
const ACKS_BEFORE_KILL: usize = 300;

const CONSUMER: &str = "crasher";

fn topic() -> Topic {
    Topic::parse("deployment.crash.platform.test.crash.created").expect("a valid topic")
}

fn encode(config: &EmbeddedConfig) -> String {
    match config {
        EmbeddedConfig::Sqlite { path } => format!("sqlite\t{}", path.display()),
        EmbeddedConfig::Postgres { url, schema, .. } => {
            format!("postgres\t{url}\t{}", schema.as_deref().unwrap_or(""))
        }
    }
}

fn decode(spec: &str) -> EmbeddedConfig {
    let parts: Vec<&str> = spec.split('\t').collect();
    match parts.as_slice() {
        ["sqlite", path] => EmbeddedConfig::Sqlite {
            path: PathBuf::from(path),
        },
        ["postgres", url, schema] => EmbeddedConfig::Postgres {
            url: (*url).to_owned(),
            schema: (!schema.is_empty()).then(|| (*schema).to_owned()),
            pool_size: 2,
        },
        _ => panic!("bad {CHILD_ENV}: {spec:?}"),
    }
}

fn message(n: u64) -> Message {
    Message::new(
        topic(),
        Envelope::new(
            "/meridian/test/crash",
            "meridian.test.ping",
            TenantId::new(),
            format!("k{}", n % 8),
            meridian_core::now(),
            serde_json::json!({ "n": n }),
        ),
    )
}

/// In the child process, runs the child and never returns; otherwise returns at once.
/// A crash test calls this first, before it creates anything to clean up.
pub async fn be_the_child_if_asked() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(decode(&spec)).await;
    }
}

/// Runs the test named `test` (the caller) as a child on `config`, kills it mid-stream and
/// checks the database afterwards.
pub async fn kill_9_loses_nothing(test: &str, config: EmbeddedConfig) {
    // Make the tables and the consumer first, so the child cannot be killed before its
    // consumer exists (a new consumer starts at the head).
    {
        let bus = EmbeddedBus::open(config.clone()).await.expect("open");
        drop(
            bus.subscribe(&TopicPattern::exact(&topic()), options())
                .await
                .expect("subscribe"),
        );
    }

    let exe = std::env::current_exe().expect("the test binary");
    let mut child = tokio::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, encode(&config))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let (mut published, mut acking, mut acked) = (HashSet::new(), HashSet::new(), HashSet::new());
    // libtest prints `test <name> ... ` without a newline before the child's first line, so
    // a step is read as the last two words of a line.
    let mut record = |line: &str| {
        let mut words = line.split_whitespace().rev();
        let (id, step) = (words.next(), words.next());
        let set = match step {
            Some("published") => &mut published,
            Some("acking") => &mut acking,
            Some("acked") => &mut acked,
            _ => return false,
        };
        id.is_some_and(|id| set.insert(id.to_owned())) && step == Some("acked")
    };
    let mut acks = 0;
    while acks < ACKS_BEFORE_KILL {
        let line = timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the child is too slow")
            .expect("read the child's output")
            .expect("the child ended before it was killed");
        if record(&line) {
            acks += 1;
        }
    }
    child.start_kill().expect("SIGKILL the child");
    child.wait().await.expect("reap the child");
    // Everything it printed before it died.
    while let Ok(Some(line)) = lines.next_line().await {
        record(&line);
    }
    assert!(acked.len() >= ACKS_BEFORE_KILL);

    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(config).await.expect("reopen"));
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&topic()), options())
        .await
        .expect("subscribe after the crash");
    let marker = message(u64::MAX);
    let marker_id = marker.id().to_string();
    bus.publish(marker).await.expect("publish the marker");
    let mut delivered = HashSet::new();
    loop {
        let d = timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery after the restart")
            .expect("next");
        let id = d.message.id().to_string();
        d.ack().await.expect("ack after the restart");
        if id == marker_id {
            break;
        }
        delivered.insert(id);
    }
    for id in &acked {
        assert!(
            !delivered.contains(id),
            "{id} was acked before the crash and delivered again"
        );
    }
    // A message whose ack was under way may go either way; any other published message
    // must come back.
    let lost: Vec<_> = published
        .iter()
        .filter(|id| !acking.contains(*id) && !delivered.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "published before the crash, never delivered: {lost:?}"
    );
}

fn options() -> SubscribeOptions {
    SubscribeOptions {
        max_in_flight: 32,
        ..SubscribeOptions::durable(CONSUMER)
    }
}

/// Publishes and acks until killed, printing each step once it has returned.
async fn child(config: EmbeddedConfig) -> ! {
    let bus = Arc::new(EmbeddedBus::open(config).await.expect("child: open"));
    let mut sub = bus
        .subscribe(&TopicPattern::exact(&topic()), options())
        .await
        .expect("child: subscribe");
    for p in 0..4u64 {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            for n in 0.. {
                let m = message(p * 1_000_000 + n);
                let id = m.id();
                bus.publish(m).await.expect("child: publish");
                println!("published {id}");
            }
        });
    }
    loop {
        let d = sub.next().await.expect("child: next");
        let id = d.message.id();
        println!("acking {id}");
        d.ack().await.expect("child: ack");
        println!("acked {id}");
    }
}
