//! The conformance suite every [`Bus`] backend passes (cargo feature `conformance`).
//!
//! A backend's integration tests provide a factory returning a fresh [`TestBus`] and invoke
//! [`bus_conformance!`](crate::bus_conformance) once, inside a module of their own:
//!
//! ```text
//! mod memory {
//!     async fn factory() -> meridian_bus::conformance::TestBus { /* ... */ }
//!     meridian_bus::bus_conformance!(factory);
//! }
//! ```
//!
//! The macro expands to one `#[tokio::test]` per case, so the calling crate needs `tokio`
//! (with `macros` and `rt-multi-thread`) among its dev-dependencies, and `meridian-bus` with
//! `features = ["conformance"]`.
//!
//! Cases skip only on a [`Capabilities`] flag (or, for the broker restart, on a backend
//! without a broker process), never because the fixture left something out: a durable
//! backend must provide `reopen`. Every wait has a deadline, so a broken backend fails
//! instead of hanging; absence ("nothing else is delivered") is checked with a marker
//! message published afterwards plus a short quiet period.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use meridian_core::{Envelope, EventId, TenantId, Topic};
use serde_json::json;
use tokio::time::{Instant, timeout};

use crate::consumer::{self, DEAD_LETTER_TYPE, DeadLetter, DeadLetterSink, Handler, HandlerError};
use crate::{
    Bus, BusError, Capabilities, Delivery, MAX_PAYLOAD_BYTES, Message, RetryPolicy, StartAt,
    SubscribeOptions, Subscription, TopicPattern,
};

/// Opens a new client on a backend's durable state (see [`TestBus::reopen`]).
pub type Reopen = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Bus>> + Send + Sync>;

/// Runs `work` to completion on a thread of its own with a runtime of its own, and waits
/// for it. Test guards clean up in `Drop`, which runs inside the test's runtime and cannot
/// await there. `None` when the thread could not run it (no runtime, or a panic).
pub fn finish_on_own_thread<F>(work: F) -> Option<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(rt.block_on(work))
    })
    .join()
    .ok()
    .flatten()
}

/// Stops a broker process and starts it again (see [`TestBus::restart_broker`]).
pub type RestartBroker = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A backend under test, made fresh for each case by the backend's factory.
pub struct TestBus {
    pub bus: Arc<dyn Bus>,
    /// A unique deployment id for this test, so topics never collide across tests.
    pub deployment: String,
    /// Opens a new client on the same durable state, as a process restart would; None for
    /// non-durable backends.
    pub reopen: Option<Reopen>,
    /// Stops the broker and starts it again (called mid-stream); None when there is no
    /// broker process.
    pub restart_broker: Option<RestartBroker>,
    /// Whatever must live as long as the test (temporary directories, containers, ...).
    pub _guard: Box<dyn Any + Send + Sync>,
}

impl TestBus {
    /// A `TestBus` for a backend without durable state or broker process.
    pub fn ephemeral(bus: Arc<dyn Bus>, deployment: impl Into<String>) -> Self {
        Self {
            bus,
            deployment: deployment.into(),
            reopen: None,
            restart_broker: None,
            _guard: Box::new(()),
        }
    }

    /// `deployment.{deployment}.platform.test.{event}`.
    pub fn topic(&self, event: &str) -> Topic {
        Topic::parse(&format!(
            "deployment.{}.platform.test.{event}",
            self.deployment
        ))
        .expect("test topics are valid")
    }

    fn caps(&self) -> Capabilities {
        self.bus.capabilities()
    }
}

/// A unique, valid deployment id for one test: `t` and 16 hex digits.
pub fn unique_deployment() -> String {
    let id = EventId::new().as_uuid().simple().to_string();
    // The low bits of a UUIDv7 are random; the high ones are the time.
    format!("t{}", &id[16..])
}

/// Expands to one `#[tokio::test]` per conformance case, each calling `$factory().await`
/// (an `async fn() -> TestBus`) and then the case. Invoke it once per backend, inside a
/// module of its own.
#[macro_export]
macro_rules! bus_conformance {
    ($factory:path) => {
        $crate::bus_conformance!(@cases $factory;
            capabilities_are_consistent,
            round_trip,
            fan_out,
            consumer_group,
            ack_nack_redelivery,
            dead_letter_after_three_attempts,
            ordering_per_key,
            max_in_flight,
            durable_resume,
            replay_from_position,
            replay_from_time,
            broker_restart,
            invalid_topic_refused,
            payload_too_large_refused,
            publish_batch_reports_each,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let t = $factory().await;
                $crate::conformance::$case(t).await;
            }
        )*
    };
}

/// The longest any single step may take before the case fails.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn message(topic: &Topic, key: &str, n: u64) -> Message {
    Message::new(
        topic.clone(),
        Envelope::new(
            "/meridian/test/conformance",
            "meridian.test.ping",
            TenantId::new(),
            key,
            meridian_core::now(),
            json!({ "n": n }),
        ),
    )
}

fn n_of(d: &Delivery) -> u64 {
    d.message.envelope().data["n"]
        .as_u64()
        .expect("test messages carry n")
}

async fn publish(bus: &dyn Bus, m: Message) {
    let id = m.id();
    timeout(WAIT, bus.publish(m))
        .await
        .unwrap_or_else(|_| panic!("publish of {id} did not return within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("publish of {id} failed: {e}"));
}

async fn subscribe(
    bus: &dyn Bus,
    pattern: &TopicPattern,
    options: SubscribeOptions,
) -> Box<dyn Subscription> {
    timeout(WAIT, bus.subscribe(pattern, options))
        .await
        .unwrap_or_else(|_| panic!("subscribe to {pattern} did not return within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("subscribe to {pattern} failed: {e}"))
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("next failed: {e}"))
}

async fn ack(d: Delivery) {
    timeout(WAIT, d.ack())
        .await
        .expect("ack did not return in time")
        .expect("ack failed");
}

/// `None` if nothing is delivered for [`QUIET`].
async fn quiet(sub: &mut Box<dyn Subscription>) -> Option<Delivery> {
    match timeout(QUIET, sub.next()).await {
        Err(_) => None,
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => panic!("next failed: {e}"),
    }
}

/// Publishes a marker on `topic` and receives until it arrives, then watches for a quiet
/// period; returns everything else delivered meanwhile (acknowledged).
async fn drain_until_marker(
    bus: &dyn Bus,
    sub: &mut Box<dyn Subscription>,
    topic: &Topic,
    key: &str,
) -> Vec<Message> {
    let marker = message(topic, key, u64::MAX);
    let marker_id = marker.id();
    publish(bus, marker).await;
    let mut others = Vec::new();
    loop {
        let d = next(sub).await;
        let done = d.message.id() == marker_id;
        if !done {
            others.push(d.message.clone());
        }
        ack(d).await;
        if done {
            break;
        }
    }
    while let Some(d) = quiet(sub).await {
        if d.message.id() != marker_id {
            others.push(d.message.clone());
        }
        ack(d).await;
    }
    others
}

/// The flags agree with the fixture: a durable backend can be reopened.
pub async fn capabilities_are_consistent(t: TestBus) {
    let caps = t.caps();
    assert_eq!(
        caps.durable,
        t.reopen.is_some(),
        "a durable backend's fixture must provide reopen, and only a durable one's"
    );
    assert!(!t.bus.name().is_empty());
    timeout(WAIT, t.bus.ping())
        .await
        .expect("ping did not return in time")
        .expect("ping failed");
}

/// A published message arrives unchanged on a matching subscription, and only there.
pub async fn round_trip(t: TestBus) {
    let bus = t.bus.as_ref();
    let exact_topic = t.topic("rt.created");
    let pattern = TopicPattern::parse(&format!("deployment.{}.platform.test.rt.*", t.deployment))
        .expect("valid pattern");
    let rest = TopicPattern::parse(&format!("deployment.{}.platform.**", t.deployment))
        .expect("valid pattern");
    let mut sub = subscribe(bus, &pattern, SubscribeOptions::ephemeral("solo")).await;
    let mut all = subscribe(bus, &rest, SubscribeOptions::ephemeral("everything")).await;

    let elsewhere = message(&t.topic("other.created"), "k", 0);
    publish(bus, elsewhere.clone()).await;
    let sent = message(&exact_topic, "k", 1);
    publish(bus, sent.clone()).await;

    let d = next(&mut sub).await;
    assert_eq!(d.message, sent, "the envelope arrives unchanged");
    assert_eq!(d.attempt, 1);
    ack(d).await;

    let mut got = HashSet::new();
    for _ in 0..2 {
        let d = next(&mut all).await;
        got.insert(d.message.id());
        ack(d).await;
    }
    assert_eq!(
        got,
        HashSet::from([elsewhere.id(), sent.id()]),
        "`**` matches both topics"
    );
    let stray = drain_until_marker(bus, &mut sub, &exact_topic, "k").await;
    assert!(
        stray.is_empty(),
        "a non-matching topic or a duplicate was delivered: {stray:?}"
    );
}

/// Subscriptions with different consumer names each receive every message.
pub async fn fan_out(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("fanout.created");
    let pattern = TopicPattern::exact(&topic);
    let mut a = subscribe(bus, &pattern, SubscribeOptions::ephemeral("alpha")).await;
    let mut b = subscribe(bus, &pattern, SubscribeOptions::ephemeral("beta")).await;
    let mut sent = HashSet::new();
    for n in 0..10 {
        let m = message(&topic, &format!("k{n}"), n);
        sent.insert(m.id());
        publish(bus, m).await;
    }
    for sub in [&mut a, &mut b] {
        let mut got = HashSet::new();
        for _ in 0..10 {
            let d = next(sub).await;
            assert!(got.insert(d.message.id()), "duplicate delivery");
            ack(d).await;
        }
        assert_eq!(got, sent, "every consumer name gets every message");
    }
}

/// Subscriptions sharing a consumer name split the messages: each is delivered exactly once
/// to the group, and both members get some.
pub async fn consumer_group(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("group.created");
    let pattern = TopicPattern::exact(&topic);
    let options = SubscribeOptions {
        max_in_flight: 4,
        ..SubscribeOptions::ephemeral("workers")
    };
    let mut a = subscribe(bus, &pattern, options.clone()).await;
    let mut b = subscribe(bus, &pattern, options).await;
    const N: u64 = 40;
    let mut sent = HashSet::new();
    for n in 0..N {
        let m = message(&topic, &format!("key-{n}"), n);
        sent.insert(m.id());
        publish(bus, m).await;
    }
    let mut got = HashSet::new();
    let mut per_member = [0usize; 2];
    let deadline = Instant::now() + WAIT;
    while got.len() < sent.len() {
        let (member, d) = tokio::select! {
            d = a.next() => (0, d),
            d = b.next() => (1, d),
            () = tokio::time::sleep_until(deadline) => {
                panic!("only {} of {N} messages reached the group", got.len())
            }
        };
        let d = d.unwrap_or_else(|e| panic!("next failed: {e}"));
        assert!(
            got.insert(d.message.id()),
            "a group member got a message twice"
        );
        per_member[member] += 1;
        ack(d).await;
    }
    assert_eq!(got, sent);
    assert!(
        per_member.iter().all(|&c| c > 0),
        "both members should share the work: {per_member:?}"
    );
    for sub in [&mut a, &mut b] {
        if let Some(d) = quiet(sub).await {
            panic!("{} was delivered again to the group", d.message.id());
        }
    }
}

/// A nacked message comes back with a rising attempt count; an acked one never does.
pub async fn ack_nack_redelivery(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("redeliver.created");
    let mut sub = subscribe(
        bus,
        &TopicPattern::exact(&topic),
        SubscribeOptions::ephemeral("retrier"),
    )
    .await;
    let sent = message(&topic, "k", 1);
    publish(bus, sent.clone()).await;
    for attempt in 1..=3 {
        let d = next(&mut sub).await;
        assert_eq!(d.message, sent);
        assert_eq!(d.attempt, attempt, "attempts rise by one per delivery");
        if attempt < 3 {
            timeout(WAIT, d.nack(Duration::from_millis(50)))
                .await
                .expect("nack did not return in time")
                .expect("nack failed");
        } else {
            ack(d).await;
        }
    }
    let stray = drain_until_marker(bus, &mut sub, &topic, "k").await;
    assert!(stray.is_empty(), "an acked message came back: {stray:?}");
}

/// Fails every real message; succeeds on probes (n = [`PROBE`]), which only show that the
/// consumer loop has subscribed.
struct Failing {
    calls: AtomicU32,
    probed: tokio::sync::Notify,
}

const PROBE: u64 = u64::MAX - 1;

#[async_trait]
impl Handler for Failing {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        if message.envelope().data["n"].as_u64() == Some(PROBE) {
            self.probed.notify_one();
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Err(HandlerError::new(format!("boom on call {n}")))
    }
}

#[derive(Default)]
struct Recorded(Mutex<Vec<DeadLetter>>);

#[async_trait]
impl DeadLetterSink for Recorded {
    async fn record(&self, dead_letter: &DeadLetter) -> Result<(), BusError> {
        self.0
            .lock()
            .map_err(|_| BusError::Internal("poisoned".into()))?
            .push(dead_letter.clone());
        Ok(())
    }
}

/// `consumer::run` with an always-failing handler moves the message to `<topic>.dlq` after
/// three attempts, with the reason and the attempt count, and records it in the sink.
pub async fn dead_letter_after_three_attempts(t: TestBus) {
    let topic = t.topic("dlq.created");
    let dlq = topic.dead_letter();
    let mut watcher = subscribe(
        t.bus.as_ref(),
        &TopicPattern::exact(&dlq),
        SubscribeOptions::ephemeral("dlq-watch"),
    )
    .await;
    let handler = Arc::new(Failing {
        calls: AtomicU32::new(0),
        probed: tokio::sync::Notify::new(),
    });
    let sink = Arc::new(Recorded::default());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let policy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let task = tokio::spawn(consumer::run(
        t.bus.clone(),
        TopicPattern::exact(&topic),
        SubscribeOptions::ephemeral("doomed"),
        handler.clone(),
        policy,
        sink.clone(),
        shutdown,
    ));
    // The loop subscribes in its own task, and an ephemeral consumer misses what was
    // published before; probes show when it is listening.
    let deadline = Instant::now() + WAIT;
    loop {
        publish(t.bus.as_ref(), message(&topic, "probe", PROBE)).await;
        if timeout(Duration::from_millis(100), handler.probed.notified())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer loop never subscribed"
        );
    }
    let sent = message(&topic, "k", 7);
    publish(t.bus.as_ref(), sent.clone()).await;

    let d = next(&mut watcher).await;
    assert_eq!(d.message.topic, dlq);
    let e = &d.message.envelope();
    assert_eq!(e.ty, DEAD_LETTER_TYPE);
    assert_eq!(e.tenant, sent.tenant());
    assert_eq!(e.subject, sent.envelope().subject);
    assert_eq!(e.data["attempts"], 3);
    assert_eq!(e.data["consumer"], "doomed");
    assert_eq!(e.data["original_topic"], topic.as_str());
    assert_eq!(e.data["original"]["id"], sent.id().to_string());
    assert!(
        e.data["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("boom")),
        "the reason is kept: {}",
        e.data["reason"]
    );
    let from_topic = DeadLetter::from_message(&d.message).expect("a readable dead letter");
    ack(d).await;

    stop.send(true).expect("the consumer is running");
    timeout(WAIT, task)
        .await
        .expect("the consumer did not stop on shutdown")
        .expect("the consumer panicked")
        .expect("the consumer failed");
    let recorded = sink.0.lock().expect("not poisoned").clone();
    assert_eq!(recorded.len(), 1, "the sink records the dead letter once");
    assert_eq!(recorded[0], from_topic);
    assert_eq!(recorded[0].original.id(), sent.id());
    assert_eq!(recorded[0].attempts, 3);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3, "three attempts");
}

/// Messages of one key, published in order from concurrent tasks (one per key), arrive in
/// that order.
pub async fn ordering_per_key(t: TestBus) {
    if !t.caps().ordered_per_key {
        return;
    }
    const KEYS: u64 = 4;
    const PER_KEY: u64 = 250;
    let topic = t.topic("ordered.changed");
    let mut sub = subscribe(
        t.bus.as_ref(),
        &TopicPattern::exact(&topic),
        SubscribeOptions::ephemeral("orderly"),
    )
    .await;
    let publishers: Vec<_> = (0..KEYS)
        .map(|k| {
            let bus = t.bus.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                for n in 0..PER_KEY {
                    publish(bus.as_ref(), message(&topic, &format!("sku-{k}"), n)).await;
                }
            })
        })
        .collect();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for _ in 0..KEYS * PER_KEY {
        let d = next(&mut sub).await;
        let want = expected.entry(d.message.key().to_owned()).or_insert(0);
        assert_eq!(n_of(&d), *want, "key {} out of order", d.message.key());
        *want += 1;
        ack(d).await;
    }
    for p in publishers {
        timeout(WAIT, p)
            .await
            .expect("publisher hung")
            .expect("publisher panicked");
    }
    assert!(expected.values().all(|&n| n == PER_KEY));
}

/// A subscription never holds more than `max_in_flight` unacknowledged deliveries.
pub async fn max_in_flight(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("inflight.created");
    let options = SubscribeOptions {
        max_in_flight: 3,
        ..SubscribeOptions::ephemeral("narrow")
    };
    let mut sub = subscribe(bus, &TopicPattern::exact(&topic), options).await;
    const N: u64 = 8;
    for n in 0..N {
        publish(bus, message(&topic, "k", n)).await;
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut sub).await);
    }
    if let Some(d) = quiet(&mut sub).await {
        panic!("a 4th delivery while 3 are unacknowledged: {d:?}");
    }
    let mut got: HashSet<u64> = held.iter().map(n_of).collect();
    ack(held.remove(0)).await;
    held.push(next(&mut sub).await);
    got.insert(n_of(&held[2]));
    if let Some(d) = quiet(&mut sub).await {
        panic!("a delivery beyond max_in_flight after one ack: {d:?}");
    }
    for d in held.drain(..) {
        ack(d).await;
    }
    while got.len() < N as usize {
        let d = next(&mut sub).await;
        assert!(got.insert(n_of(&d)), "delivered twice: {d:?}");
        ack(d).await;
    }
    assert!(quiet(&mut sub).await.is_none(), "more than was published");
}

/// A durable consumer resumes after the client is reopened: nothing lost, nothing acked
/// delivered again.
pub async fn durable_resume(t: TestBus) {
    if !t.caps().durable {
        return;
    }
    let topic = t.topic("resume.created");
    let pattern = TopicPattern::exact(&topic);
    let options = SubscribeOptions::durable("resumer");
    let TestBus {
        bus,
        reopen,
        _guard,
        ..
    } = t;
    let reopen = reopen.expect("a durable backend provides reopen");
    let mut sub = subscribe(bus.as_ref(), &pattern, options.clone()).await;
    let mut sent = Vec::new();
    for n in 0..10 {
        let m = message(&topic, "k", n);
        sent.push(m.id());
        publish(bus.as_ref(), m).await;
    }
    let mut acked = HashSet::new();
    for _ in 0..5 {
        let d = next(&mut sub).await;
        acked.insert(d.message.id());
        ack(d).await;
    }
    drop(sub);
    // Published while the consumer is away: a durable consumer must still get these.
    for n in 10..15 {
        let m = message(&topic, "k", n);
        sent.push(m.id());
        publish(bus.as_ref(), m).await;
    }
    drop(bus);

    let bus = timeout(WAIT, reopen()).await.expect("reopen hung");
    let mut sub = subscribe(bus.as_ref(), &pattern, options).await;
    let missing: HashSet<EventId> = sent
        .iter()
        .filter(|id| !acked.contains(id))
        .copied()
        .collect();
    let mut got = HashSet::new();
    while got.len() < missing.len() {
        let d = next(&mut sub).await;
        let id = d.message.id();
        assert!(
            !acked.contains(&id),
            "an acknowledged message came back: {id}"
        );
        got.insert(id);
        ack(d).await;
    }
    assert_eq!(
        got, missing,
        "every unacknowledged message arrives after reopen"
    );
    let stray = drain_until_marker(bus.as_ref(), &mut sub, &topic, "k").await;
    assert!(
        stray.iter().all(|m| !acked.contains(&m.id())),
        "an acknowledged message came back: {stray:?}"
    );
}

/// Publishes `1..=5`, consumes them once, and returns their positions.
async fn publish_five_and_read_positions(t: &TestBus, topic: &Topic) -> Vec<u64> {
    let bus = t.bus.as_ref();
    let mut first = subscribe(
        bus,
        &TopicPattern::exact(topic),
        SubscribeOptions::ephemeral("first"),
    )
    .await;
    for n in 1..=5 {
        publish(bus, message(topic, "k", n)).await;
    }
    let mut positions = Vec::new();
    for n in 1..=5 {
        let d = next(&mut first).await;
        assert_eq!(n_of(&d), n);
        positions.push(d.position.expect("a replaying backend reports positions"));
        ack(d).await;
    }
    positions
}

/// A new consumer starting at a position gets that message and the ones after it.
pub async fn replay_from_position(t: TestBus) {
    if !t.caps().replay {
        return;
    }
    let topic = t.topic("replay.position");
    let positions = publish_five_and_read_positions(&t, &topic).await;
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions rise");
    let options = SubscribeOptions {
        start: StartAt::Position(positions[2]),
        ..SubscribeOptions::ephemeral("replayer")
    };
    let mut sub = subscribe(t.bus.as_ref(), &TopicPattern::exact(&topic), options).await;
    for n in 3..=5 {
        let d = next(&mut sub).await;
        assert_eq!(n_of(&d), n);
        assert_eq!(d.position, Some(positions[n as usize - 1]));
        ack(d).await;
    }
}

/// A new consumer starting at a time gets the messages published from then on.
pub async fn replay_from_time(t: TestBus) {
    if !t.caps().replay {
        return;
    }
    let bus = t.bus.as_ref();
    let topic = t.topic("replay.time");
    for n in 1..=2 {
        publish(bus, message(&topic, "k", n)).await;
    }
    // Clock readings need to differ across the cut; nothing can be awaited for that.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = meridian_core::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for n in 3..=4 {
        publish(bus, message(&topic, "k", n)).await;
    }
    let options = SubscribeOptions {
        start: StartAt::Time(cut),
        ..SubscribeOptions::ephemeral("rewinder")
    };
    let mut sub = subscribe(bus, &TopicPattern::exact(&topic), options).await;
    for n in 3..=4 {
        let d = next(&mut sub).await;
        assert_eq!(
            n_of(&d),
            n,
            "replay starts at the first message at or after the time"
        );
        ack(d).await;
    }
}

/// Publishes, retrying while the broker is coming back.
async fn publish_through_outage(bus: &dyn Bus, m: Message) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match timeout(WAIT, bus.publish(m.clone())).await {
            Ok(Ok(())) => return,
            Ok(Err(BusError::Unavailable(_))) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => panic!("publish failed during the restart: {e}"),
            Err(_) => panic!("publish kept timing out after the restart"),
        }
    }
}

/// The broker restarts mid-stream; the subscriber still receives every message, and
/// nothing it acknowledged comes back.
pub async fn broker_restart(t: TestBus) {
    let Some(restart) = t.restart_broker.as_ref() else {
        return;
    };
    let bus = t.bus.as_ref();
    let topic = t.topic("restart.created");
    let mut sub = subscribe(
        bus,
        &TopicPattern::exact(&topic),
        SubscribeOptions::durable("survivor"),
    )
    .await;
    let mut sent = HashSet::new();
    for n in 0..10 {
        let m = message(&topic, "k", n);
        sent.insert(m.id());
        publish_through_outage(bus, m).await;
    }
    timeout(Duration::from_secs(60), restart())
        .await
        .expect("the broker restart hung");
    for n in 10..20 {
        let m = message(&topic, "k", n);
        sent.insert(m.id());
        publish_through_outage(bus, m).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked = HashSet::new();
    while acked.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of {} messages arrived after the restart",
            acked.len(),
            sent.len()
        );
        match timeout(WAIT, sub.next()).await {
            Ok(Ok(d)) => {
                let id = d.message.id();
                assert!(sent.contains(&id));
                assert!(
                    !acked.contains(&id),
                    "{id} was delivered again after its ack succeeded"
                );
                if timeout(WAIT, d.ack()).await.is_ok_and(|r| r.is_ok()) {
                    acked.insert(id);
                }
            }
            Ok(Err(BusError::Unavailable(_))) | Err(_) => {}
            Ok(Err(e)) => panic!("next failed after the restart: {e}"),
        }
    }
}

/// Topics and patterns outside the grammar or outside a deployment are refused.
pub async fn invalid_topic_refused(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("valid.created");
    let mut sub = subscribe(
        bus,
        &TopicPattern::exact(&topic),
        SubscribeOptions::ephemeral("strict"),
    )
    .await;
    // `Topic` deserializes without validation (it is `serde(transparent)`), which is how an
    // invalid topic reaches a backend from the outside: the backend must check it again.
    for raw in [
        format!("deployment.{}.platform.test.Bad", t.deployment),
        format!("deployment.{}.platform.test..x", t.deployment),
        "platform.test.created".to_owned(),
        format!("deployment.{}.other.test.created", t.deployment),
        format!(
            "deployment.{}.platform.test.{}",
            t.deployment,
            "x".repeat(300)
        ),
    ] {
        let bad: Topic = serde_json::from_value(json!(raw)).expect("serde accepts any string");
        let result = timeout(WAIT, bus.publish(message(&bad, "k", 0)))
            .await
            .expect("publish hung");
        assert!(
            matches!(result, Err(BusError::InvalidTopic(_))),
            "{raw:?} gave {result:?}"
        );
    }
    for raw in [
        "platform.test.**".to_owned(),
        "deployment.*.platform.**".to_owned(),
        "deployment.**".to_owned(),
        format!("deployment.{}.platform.test.#", t.deployment),
    ] {
        assert!(
            matches!(TopicPattern::parse(&raw), Err(BusError::InvalidTopic(_))),
            "{raw:?}"
        );
    }
    let stray = drain_until_marker(bus, &mut sub, &topic, "k").await;
    assert!(
        stray.is_empty(),
        "a refused message was delivered: {stray:?}"
    );
}

/// An envelope over [`MAX_PAYLOAD_BYTES`] is refused with a clear error and not delivered.
pub async fn payload_too_large_refused(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("big.created");
    let mut sub = subscribe(
        bus,
        &TopicPattern::exact(&topic),
        SubscribeOptions::ephemeral("small"),
    )
    .await;
    let mut big = message(&topic, "k", 0).into_envelope();
    big.data = json!({ "blob": "x".repeat(MAX_PAYLOAD_BYTES) });
    let big = Message::new(topic.clone(), big);
    let result = timeout(WAIT, bus.publish(big)).await.expect("publish hung");
    match result {
        Err(BusError::PayloadTooLarge { size, limit }) => {
            assert!(size > limit, "{size} > {limit}");
            assert!(limit <= MAX_PAYLOAD_BYTES);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // Escaping can make a short string long: 200,000 control characters are 1.2 MB of JSON.
    let mut escaped = message(&topic, "k", 0).into_envelope();
    escaped.data = json!({ "blob": "\u{1}".repeat(MAX_PAYLOAD_BYTES / 5) });
    let escaped = Message::new(topic.clone(), escaped);
    let result = timeout(WAIT, bus.publish(escaped))
        .await
        .expect("publish hung");
    assert!(
        matches!(result, Err(BusError::PayloadTooLarge { .. })),
        "escaped payload: {result:?}"
    );
    let stray = drain_until_marker(bus, &mut sub, &topic, "k").await;
    assert!(stray.is_empty(), "a refused message was delivered");
}

/// `publish_batch` reports each message's outcome, in order, and delivers the valid ones.
pub async fn publish_batch_reports_each(t: TestBus) {
    let bus = t.bus.as_ref();
    let topic = t.topic("batch.created");
    let mut sub = subscribe(
        bus,
        &TopicPattern::exact(&topic),
        SubscribeOptions::ephemeral("batcher"),
    )
    .await;
    let bad: Topic = serde_json::from_value(json!("deployment.x.platform.test.NOPE"))
        .expect("serde accepts any string");
    let first = message(&topic, "k", 1);
    let last = message(&topic, "k", 3);
    let results = timeout(
        WAIT,
        bus.publish_batch(vec![first.clone(), message(&bad, "k", 2), last.clone()]),
    )
    .await
    .expect("publish_batch hung");
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(results[1], Err(BusError::InvalidTopic(_))),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let mut got = HashSet::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        got.insert(d.message.id());
        ack(d).await;
    }
    assert_eq!(got, HashSet::from([first.id(), last.id()]));
    let stray = drain_until_marker(bus, &mut sub, &topic, "k").await;
    assert!(stray.is_empty(), "unexpected deliveries: {stray:?}");
}
