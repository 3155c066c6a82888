//! The consumer loop on the memory bus: success, panics, an unavailable backend, closing
//! and shutdown.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use meridian_bus::consumer::{self, DeadLetter, DeadLetterSink, Handler, HandlerError, NoopSink};
use meridian_bus::{
    Bus, BusError, Capabilities, Delivery, MemoryBus, Message, RetryPolicy, SubscribeOptions,
    Subscription, TopicPattern,
};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn message(topic: &Topic, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/consumer",
            "meridian.test.ping",
            TenantId::new(),
            "k",
            meridian_core::now(),
            json!({ "n": n }),
        ),
    )
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    }
}

/// Counts calls, panics on the ones it is told to, and signals every call.
struct Scripted {
    calls: AtomicU32,
    panic: bool,
    called: Notify,
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, _message: &Message) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.called.notify_one();
        if self.panic {
            panic!("handler exploded");
        }
        Ok(())
    }
}

#[derive(Default)]
struct Recorded(Mutex<Vec<DeadLetter>>);

#[async_trait]
impl DeadLetterSink for Recorded {
    async fn record(&self, dl: &DeadLetter) -> Result<(), BusError> {
        self.0.lock().unwrap().push(dl.clone());
        Ok(())
    }
}

/// Declares the durable consumer `name` on `t`, publishes one message and runs `handler`
/// on it under [`fast_policy`] until its dead letter is published; returns the letter's
/// data and how many letters the sink recorded.
async fn dead_letter_of_one(
    t: &Topic,
    name: &str,
    handler: Arc<dyn Handler>,
) -> (serde_json::Value, usize) {
    let bus = Arc::new(MemoryBus::new());
    let mut dlq = bus
        .subscribe(
            &TopicPattern::exact(&t.dead_letter()),
            SubscribeOptions::ephemeral("watch"),
        )
        .await
        .unwrap();
    let sink = Arc::new(Recorded::default());
    let (stop, shutdown) = watch::channel(false);
    // Subscribing before the loop starts would race it; the durable group keeps the message
    // for the loop's subscription whenever it arrives.
    let options = SubscribeOptions::durable(name);
    consumer::declare(bus.as_ref(), &TopicPattern::exact(t), options.clone())
        .await
        .unwrap();
    bus.publish(message(t, 1)).await.unwrap();
    let task = tokio::spawn(consumer::run(
        bus.clone(),
        TopicPattern::exact(t),
        options,
        handler,
        fast_policy(),
        sink.clone(),
        shutdown,
    ));
    let d = timeout(WAIT, dlq.next()).await.unwrap().unwrap();
    let data = d.message.envelope().data.clone();
    stop.send(true).unwrap();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    let recorded = sink.0.lock().unwrap().len();
    (data, recorded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_then_dead_lettered() {
    let handler = Arc::new(Scripted {
        calls: AtomicU32::new(0),
        panic: true,
        called: Notify::new(),
    });
    let t = Topic::platform("d", "test", "panic.created");
    let (letter, recorded) = dead_letter_of_one(&t, "exploder", handler.clone()).await;
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["reason"], "handler panicked: handler exploded");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    assert_eq!(recorded, 1);
}

/// Refuses every message as a permanent failure.
struct Refuses(AtomicU32);

#[async_trait]
impl Handler for Refuses {
    async fn handle(&self, _message: &Message) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(HandlerError::permanent(
            "count 3 is below the 5 units reserved",
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_dead_lettered_on_its_first_attempt() {
    let handler = Arc::new(Refuses(AtomicU32::new(0)));
    let t = Topic::platform("d", "test", "refused.created");
    let (letter, recorded) = dead_letter_of_one(&t, "refuser", handler.clone()).await;
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["reason"], "count 3 is below the 5 units reserved");
    assert_eq!(handler.0.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!(recorded, 1);
}

/// A bus whose subscribe and `next` fail with `Unavailable` a few times first.
struct Flaky {
    inner: MemoryBus,
    subscribe_failures: AtomicU32,
    next_failures: u32,
}

struct FlakySubscription {
    inner: Box<dyn Subscription>,
    failures: u32,
}

#[async_trait]
impl Subscription for FlakySubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(BusError::Unavailable("broker restarting".into()));
        }
        self.inner.next().await
    }
}

#[async_trait]
impl Bus for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        self.inner.publish(message).await
    }
    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let left = self.subscribe_failures.load(Ordering::SeqCst);
        if left > 0 {
            self.subscribe_failures.store(left - 1, Ordering::SeqCst);
            return Err(BusError::Unavailable("no broker yet".into()));
        }
        Ok(Box::new(FlakySubscription {
            inner: self.inner.subscribe(pattern, options).await?,
            failures: self.next_failures,
        }))
    }
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_backend_is_waited_out_and_closing_ends_the_loop() {
    let memory = MemoryBus::new();
    let t = Topic::platform("d", "test", "flaky.created");
    let options = SubscribeOptions::durable("patient");
    drop(
        memory
            .subscribe(&TopicPattern::exact(&t), options.clone())
            .await
            .unwrap(),
    );
    memory.publish(message(&t, 1)).await.unwrap();
    let bus = Arc::new(Flaky {
        inner: memory.clone(),
        subscribe_failures: AtomicU32::new(2),
        next_failures: 2,
    });
    let handler = Arc::new(Scripted {
        calls: AtomicU32::new(0),
        panic: false,
        called: Notify::new(),
    });
    let (_stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(consumer::run(
        bus,
        TopicPattern::exact(&t),
        options,
        handler.clone(),
        fast_policy(),
        Arc::new(NoopSink),
        shutdown,
    ));
    timeout(WAIT, handler.called.notified())
        .await
        .expect("the loop gave up on an unavailable backend");
    memory.close();
    let ended = timeout(WAIT, task).await.unwrap().unwrap();
    assert!(matches!(ended, Err(BusError::Closed)), "{ended:?}");
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_stops_an_idle_loop() {
    let bus = Arc::new(MemoryBus::new());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(consumer::run(
        bus,
        TopicPattern::parse("deployment.d.platform.**").unwrap(),
        SubscribeOptions::ephemeral("idle"),
        Arc::new(Scripted {
            calls: AtomicU32::new(0),
            panic: false,
            called: Notify::new(),
        }),
        RetryPolicy::default(),
        Arc::new(NoopSink),
        shutdown,
    ));
    stop.send(true).unwrap();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
}

/// Records every batch it is given; fails the messages whose `n` is in `fail`.
struct Batches {
    fail: Vec<u64>,
    seen: Mutex<Vec<Vec<u64>>>,
}

#[async_trait]
impl consumer::BatchHandler for Batches {
    async fn handle_batch(&self, messages: &[&Message]) -> Vec<Result<(), HandlerError>> {
        let ns: Vec<u64> = messages
            .iter()
            .map(|m| m.envelope().data["n"].as_u64().unwrap())
            .collect();
        let results = ns
            .iter()
            .map(|n| {
                if self.fail.contains(n) {
                    Err(HandlerError::new(format!("refused {n}")))
                } else {
                    Ok(())
                }
            })
            .collect();
        self.seen.lock().unwrap().push(ns);
        results
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_settled_message_by_message() {
    let bus = Arc::new(MemoryBus::new());
    let t = Topic::platform("d", "test", "batch.created");
    let mut dlq = bus
        .subscribe(
            &TopicPattern::exact(&t.dead_letter()),
            SubscribeOptions::ephemeral("watch"),
        )
        .await
        .unwrap();
    let options = SubscribeOptions::durable("batcher");
    drop(
        bus.subscribe(&TopicPattern::exact(&t), options.clone())
            .await
            .unwrap(),
    );
    // Published before the loop starts, so the first batch can hold several.
    for n in 0..50 {
        bus.publish(message(&t, n)).await.unwrap();
    }
    let handler = Arc::new(Batches {
        fail: vec![7],
        seen: Mutex::new(Vec::new()),
    });
    let sink = Arc::new(Recorded::default());
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(consumer::run_batched(
        bus.clone(),
        TopicPattern::exact(&t),
        options,
        handler.clone(),
        16,
        fast_policy(),
        sink.clone(),
        shutdown,
    ));
    // The refused message goes to the dead-letter topic after its three attempts.
    let d = timeout(WAIT, dlq.next()).await.unwrap().unwrap();
    let dead = DeadLetter::from_message(&d.message).unwrap();
    assert_eq!(dead.original.envelope().data["n"], 7);
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.reason, "refused 7");
    stop.send(true).unwrap();
    timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(sink.0.lock().unwrap().len(), 1);

    let seen = handler.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|b| !b.is_empty() && b.len() <= 16),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|b| b.len() > 1),
        "batches of one only: {seen:?}"
    );
    let all: Vec<u64> = seen.iter().flatten().copied().collect();
    // Every other message was handled once (acked after its batch), in publish order;
    // the refused one three times.
    let others: Vec<u64> = all.iter().copied().filter(|n| *n != 7).collect();
    assert_eq!(others, (0..50).filter(|n| *n != 7).collect::<Vec<_>>());
    assert_eq!(all.iter().filter(|n| **n == 7).count(), 3);
}
