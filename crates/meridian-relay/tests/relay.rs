//! The relay and the projection on the SQLite store and the memory bus: rows leave in
//! order, are marked sent only once the bus took them, and wait while the bus is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use meridian_bus::{
    Bus, BusError, Capabilities, MemoryBus, Message, NoopSink, SubscribeOptions, Subscription,
    TopicPattern,
};
use meridian_catalog::NewProduct;
use meridian_core::{EventSource, Money, Quantity, TenantId};
use meridian_inventory::NewWarehouse;
use meridian_orders::{AllocationStrategy, Order, OrderLineRequest, OrderRequest, PlaceOrder};
use meridian_relay::{
    FRAUD_DECISIONS_CONSUMER, FraudDecisions, Relay, RelayConfig, RelayError, StoreDeadLetterSink,
    replay_dead_letter, run_order_events,
};
use meridian_store::sqlite::SqliteConfig;
use meridian_store::{Store, StoreConfig};
use tokio::sync::watch;

/// The memory bus, with a switch that makes every publish fail as if the broker were down.
struct SwitchedBus {
    inner: MemoryBus,
    down: AtomicBool,
}

#[async_trait]
impl Bus for SwitchedBus {
    fn name(&self) -> &'static str {
        "switched-memory"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("switched off".into()));
        }
        self.inner.publish(message).await
    }
    async fn subscribe(
        &self,
        pattern: &TopicPattern,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        self.inner.subscribe(pattern, options).await
    }
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

struct Fixture {
    store: Arc<dyn Store>,
    tenant: TenantId,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = meridian_store::open(
        StoreConfig::Sqlite(SqliteConfig::new(dir.path().join("m.db"))),
        EventSource::new("relaytest").unwrap(),
    )
    .await
    .unwrap();
    let tenant = store.create_tenant("t").await.unwrap().id;
    let sku = "SKU-1".parse().unwrap();
    store
        .create_product(
            tenant,
            NewProduct {
                sku: "SKU-1".parse().unwrap(),
                name: "One".into(),
                description: None,
                price: Money::new(100, "USD".parse().unwrap()),
                attributes: Default::default(),
            },
        )
        .await
        .unwrap();
    let code = "W1".parse().unwrap();
    store
        .create_warehouse(
            tenant,
            NewWarehouse {
                code: "W1".parse().unwrap(),
                name: "W1".into(),
                priority: 1,
            },
        )
        .await
        .unwrap();
    store
        .set_stock(tenant, &code, &sku, 100, "seed")
        .await
        .unwrap();
    Fixture {
        store,
        tenant,
        _dir: dir,
    }
}

async fn place(f: &Fixture) -> Order {
    let request = OrderRequest::new(
        vec![OrderLineRequest {
            sku: "SKU-1".parse().unwrap(),
            quantity: Quantity::new(1).unwrap(),
        }],
        None,
        None,
        AllocationStrategy::Priority,
    )
    .unwrap();
    f.store
        .place_order(PlaceOrder {
            tenant_id: f.tenant,
            request,
            idempotency_key: None,
            request_hash: String::new(),
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn rows_are_published_in_order_and_marked_sent() {
    let f = fixture().await;
    let bus = Arc::new(MemoryBus::new());
    let pattern = TopicPattern::parse("deployment.relaytest.**").unwrap();
    let mut sub = bus
        .subscribe(&pattern, SubscribeOptions::ephemeral("watch"))
        .await
        .unwrap();
    let o1 = place(&f).await;
    let o2 = place(&f).await;
    let expected = f.store.outbox_unsent(100).await.unwrap();
    assert_eq!(expected.len(), 5);

    let relay = Relay::new(f.store.clone(), bus.clone(), RelayConfig::default());
    assert_eq!(relay.step().await.unwrap(), 5);
    assert!(f.store.outbox_unsent(100).await.unwrap().is_empty());
    assert_eq!(relay.step().await.unwrap(), 0, "nothing is published twice");

    let mut got = Vec::new();
    for _ in 0..5 {
        let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap();
        got.push(d.message.id());
        d.ack().await.unwrap();
    }
    let want: Vec<_> = expected.iter().map(|r| r.envelope.id).collect();
    assert_eq!(got, want, "published in seq order");
    let subjects: Vec<_> = expected[3..]
        .iter()
        .map(|r| r.envelope.subject.clone())
        .collect();
    assert_eq!(subjects, [o1.id.to_string(), o2.id.to_string()]);
}

#[tokio::test]
async fn a_down_bus_leaves_rows_unsent_until_it_returns() {
    let f = fixture().await;
    let bus = Arc::new(SwitchedBus {
        inner: MemoryBus::new(),
        down: AtomicBool::new(true),
    });
    place(&f).await;
    let relay = Relay::new(f.store.clone(), bus.clone(), RelayConfig::default());
    let err = relay.step().await.unwrap_err();
    assert!(matches!(err, RelayError::Publish { .. }), "{err}");
    assert_eq!(f.store.outbox_unsent(100).await.unwrap().len(), 4);
    bus.down.store(false, Ordering::SeqCst);
    assert_eq!(relay.step().await.unwrap(), 4);
    assert!(f.store.outbox_unsent(100).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_running_relay_and_projection_build_the_timeline() {
    let f = fixture().await;
    let bus = Arc::new(SwitchedBus {
        inner: MemoryBus::new(),
        down: AtomicBool::new(true),
    });
    let (stop, shutdown) = watch::channel(false);
    let consumer = tokio::spawn(run_order_events(
        bus.clone(),
        f.store.clone(),
        "relaytest",
        Arc::new(NoopSink),
        shutdown.clone(),
    ));
    let relay = tokio::spawn(
        Relay::new(f.store.clone(), bus.clone(), RelayConfig::default()).run(shutdown),
    );
    // Orders commit while the bus is down.
    let order = place(&f).await;
    f.store
        .transition_order(f.tenant, order.id, meridian_orders::OrderAction::Cancel)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(f.store.outbox_unsent(100).await.unwrap().len(), 5);
    bus.down.store(false, Ordering::SeqCst);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let types = loop {
        let events = f.store.order_events(f.tenant, order.id).await.unwrap();
        if events.len() == 2 || tokio::time::Instant::now() > deadline {
            break events.into_iter().map(|e| e.ty).collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(
        types,
        ["meridian.oms.order.created", "meridian.oms.order.canceled"]
    );
    assert!(f.store.outbox_unsent(100).await.unwrap().is_empty());

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), consumer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_message_the_projection_cannot_handle_is_dead_lettered_in_the_store_and_replayable() {
    let f = fixture().await;
    let bus = Arc::new(MemoryBus::new());
    let (stop, shutdown) = watch::channel(false);
    let consumer = tokio::spawn(run_order_events(
        bus.clone(),
        f.store.clone(),
        "relaytest",
        Arc::new(StoreDeadLetterSink::new(f.store.clone())),
        shutdown,
    ));
    // An order event whose subject is no order id: the projection refuses it every time.
    let order = place(&f).await;
    let mut bad = f
        .store
        .outbox_unsent(100)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.envelope.subject == order.id.to_string())
        .unwrap();
    bad.envelope.id = meridian_core::EventId::new();
    bad.envelope.subject = "not-an-order".into();
    // Give the consumer time to subscribe: the memory bus keeps nothing for late comers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.publish(Message::new(bad.topic.clone(), bad.envelope.clone()))
        .await
        .unwrap();

    let wait_for = |n: usize| {
        let store = f.store.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let page = store
                    .list_dead_letters(Some(f.tenant), Default::default())
                    .await
                    .unwrap();
                if page.items.len() >= n {
                    return page.items;
                }
                assert!(tokio::time::Instant::now() < deadline, "no dead letter yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let first = wait_for(1).await.remove(0);
    assert_eq!(first.envelope, bad.envelope);
    assert_eq!(first.original_topic, bad.topic);
    assert_eq!(first.attempts, 3);
    assert_eq!(first.consumer, "order-events");
    assert!(first.reason.contains("not an order id"), "{}", first.reason);

    let replayed = replay_dead_letter(f.store.as_ref(), bus.as_ref(), Some(f.tenant), first.id)
        .await
        .unwrap();
    assert!(replayed.replayed_at.is_some());
    // Still unhandleable: it fails three more times and is dead-lettered again.
    let both = wait_for(2).await;
    assert_eq!(both[1].id, first.id);
    assert_eq!(
        both[0].envelope.id, bad.envelope.id,
        "the replay kept the event id"
    );
    // Another tenant cannot replay it.
    let other = f.store.create_tenant("other").await.unwrap().id;
    assert!(
        replay_dead_letter(f.store.as_ref(), bus.as_ref(), Some(other), first.id)
            .await
            .is_err()
    );
    stop.send(true).unwrap();
    consumer.await.unwrap().unwrap();
}

/// Waits until the outbox has no unsent row.
async fn drained(store: &dyn Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.outbox_unsent_count().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox was not drained"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn quick() -> RelayConfig {
    RelayConfig {
        poll_interval: Duration::from_millis(10),
        standby_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

/// An idle relay publishes a committed row when the store signals it, not at its next
/// poll: with an hour between polls, each order still reaches the bus at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_is_woken_by_committed_rows_not_its_poll() {
    let f = fixture().await;
    let bus = Arc::new(MemoryBus::new());
    let mut orders = bus
        .subscribe(
            &TopicPattern::parse("deployment.relaytest.platform.oms.order.created").unwrap(),
            SubscribeOptions::ephemeral("watch"),
        )
        .await
        .unwrap();
    let config = RelayConfig {
        poll_interval: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    let (stop, shutdown) = watch::channel(false);
    let relay = tokio::spawn(Relay::new(f.store.clone(), bus.clone(), config).run(shutdown));
    drained(f.store.as_ref()).await;
    for round in 0..5 {
        // Idle before each order: the relay is waiting, not mid-round.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let order = place(&f).await;
        let d = tokio::time::timeout(Duration::from_secs(10), orders.next())
            .await
            .unwrap_or_else(|_| panic!("order {round} was not published within 10 s"))
            .unwrap();
        assert_eq!(d.message.key(), order.id.to_string());
        d.ack().await.unwrap();
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_publishes_and_a_standby_takes_over_when_it_stops() {
    let f = fixture().await;
    let bus = Arc::new(MemoryBus::new());
    let mut watch_all = bus
        .subscribe(
            &TopicPattern::parse("deployment.relaytest.**").unwrap(),
            SubscribeOptions::ephemeral("watch"),
        )
        .await
        .unwrap();
    // Two relays on one database, as two `meridian serve` processes would be; the second
    // opens the database on its own, so its lock is its own too.
    let second_store = meridian_store::open(
        StoreConfig::Sqlite(SqliteConfig::new(f._dir.path().join("m.db"))),
        EventSource::new("relaytest").unwrap(),
    )
    .await
    .unwrap();
    let (stop_a, shutdown_a) = watch::channel(false);
    let (stop_b, shutdown_b) = watch::channel(false);
    let a = tokio::spawn(Relay::new(f.store.clone(), bus.clone(), quick()).run(shutdown_a));
    // A is active once it has published the fixture's rows; only then does B start.
    drained(f.store.as_ref()).await;
    let b = tokio::spawn(Relay::new(second_store.clone(), bus.clone(), quick()).run(shutdown_b));
    futures::future::join_all((0..20).map(|_| place(&f))).await;
    drained(f.store.as_ref()).await;

    // A stops (its lock is released); B takes over and publishes what comes next.
    stop_a.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), a)
        .await
        .unwrap()
        .unwrap();
    for _ in 0..10 {
        place(&f).await;
    }
    drained(f.store.as_ref()).await;

    // Every row reached the bus exactly once: 3 fixture rows and 30 orders.
    let rows = f.store.outbox_after(0, 1000).await.unwrap();
    assert_eq!(rows.len(), 33);
    let mut got = Vec::new();
    for _ in 0..rows.len() {
        let d = tokio::time::timeout(Duration::from_secs(5), watch_all.next())
            .await
            .unwrap()
            .unwrap();
        got.push(d.message.id());
        d.ack().await.unwrap();
    }
    let want: Vec<_> = rows.iter().map(|r| r.envelope.id).collect();
    assert_eq!(got, want, "each row once, in seq order");
    stop_b.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), b)
        .await
        .unwrap()
        .unwrap();
    // Both relays have stopped: anything more would already be queued.
    assert!(
        watch_all.next().now_or_never().is_none(),
        "a row was published twice"
    );
}

/// A `platform.oms.fraud.decision` message as the fraud-screen plugin's sidecar publishes it.
fn decision(tenant: TenantId, data: serde_json::Value) -> Message {
    let env = meridian_core::Envelope::new(
        "/meridian/relaytest/plugins/fraud-screen",
        "meridian.oms.fraud.decision",
        tenant,
        data["order_id"].as_str().unwrap_or("none").to_owned(),
        meridian_core::now(),
        data,
    );
    let topic =
        meridian_core::Topic::parse("deployment.relaytest.platform.oms.fraud.decision").unwrap();
    Message::new(topic, env)
}

/// The `order.held` and `order.released` outbox events of one order.
async fn hold_events(store: &dyn Store, order: &Order) -> Vec<String> {
    store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            r.envelope.subject == order.id.to_string()
                && (r.envelope.ty.ends_with(".order.held")
                    || r.envelope.ty.ends_with(".order.released"))
        })
        .map(|r| r.envelope.ty)
        .collect()
}

async fn hold_state(f: &Fixture, order: &Order) -> meridian_store::OrderHoldState {
    f.store
        .holds()
        .order_hold(f.tenant, order.id)
        .await
        .unwrap()
}

/// The order has no hold, no screening result and no hold event.
async fn assert_untouched(f: &Fixture, order: &Order) {
    assert_eq!(hold_state(f, order).await, Default::default());
    assert!(hold_events(f.store.as_ref(), order).await.is_empty());
}

#[tokio::test]
async fn a_fraud_decision_delivered_twice_holds_the_order_once() {
    use meridian_bus::Handler;
    let f = fixture().await;
    let order = place(&f).await;
    let handler = FraudDecisions::new(f.store.clone());
    let hold = decision(
        f.tenant,
        serde_json::json!({"order_id": order.id, "decision": "hold", "reason": "total amount 100 is above 50"}),
    );
    handler.handle(&hold).await.unwrap();
    handler.handle(&hold).await.unwrap();
    let state = hold_state(&f, &order).await;
    let h = state.hold.unwrap();
    assert_eq!(h.source, "fraud-screen");
    assert_eq!(h.reason, "total amount 100 is above 50");
    assert_eq!(
        hold_events(f.store.as_ref(), &order).await,
        ["meridian.oms.order.held"]
    );

    // The screen's approval releases its hold, once.
    let approve = decision(
        f.tenant,
        serde_json::json!({"order_id": order.id, "decision": "approve", "reason": "reviewed"}),
    );
    handler.handle(&approve).await.unwrap();
    handler.handle(&approve).await.unwrap();
    let state = hold_state(&f, &order).await;
    assert_eq!(state.hold, None);
    assert_eq!(state.screening.unwrap().reason, "reviewed");
    assert_eq!(
        hold_events(f.store.as_ref(), &order).await,
        ["meridian.oms.order.held", "meridian.oms.order.released"]
    );
}

#[tokio::test]
async fn a_decision_naming_another_tenant_s_order_is_refused_and_changes_nothing() {
    use meridian_bus::Handler;
    let f = fixture().await;
    let order = place(&f).await;
    let other = f.store.create_tenant("other").await.unwrap().id;
    let handler = FraudDecisions::new(f.store.clone());
    let err = handler
        .handle(&decision(
            other,
            serde_json::json!({"order_id": order.id, "decision": "hold", "reason": "x"}),
        ))
        .await
        .unwrap_err();
    assert!(err.reason.contains("has no order"), "{}", err.reason);
    assert!(err.reason.contains(&other.to_string()), "{}", err.reason);
    assert_untouched(&f, &order).await;
}

#[tokio::test]
async fn a_decision_for_a_canceled_order_changes_nothing() {
    use meridian_bus::Handler;
    let f = fixture().await;
    let order = place(&f).await;
    f.store
        .transition_order(f.tenant, order.id, meridian_orders::OrderAction::Cancel)
        .await
        .unwrap();
    let handler = FraudDecisions::new(f.store.clone());
    handler
        .handle(&decision(
            f.tenant,
            serde_json::json!({"order_id": order.id, "decision": "hold", "reason": "x"}),
        ))
        .await
        .unwrap();
    assert_untouched(&f, &order).await;
}

#[tokio::test]
async fn a_payload_that_is_not_a_decision_is_refused_with_its_reason() {
    use meridian_bus::Handler;
    let f = fixture().await;
    let order = place(&f).await;
    let handler = FraudDecisions::new(f.store.clone());
    for (data, want) in [
        (
            serde_json::json!({"decision": "hold"}),
            "not a fraud decision",
        ),
        (
            serde_json::json!({"order_id": "nope", "decision": "hold"}),
            "is not an order id",
        ),
        (
            serde_json::json!({"order_id": order.id, "decision": "maybe"}),
            "must be \"hold\" or \"approve\"",
        ),
    ] {
        let err = handler
            .handle(&decision(f.tenant, data.clone()))
            .await
            .unwrap_err();
        assert!(err.reason.contains(want), "{data}: {}", err.reason);
    }
    assert!(hold_events(f.store.as_ref(), &order).await.is_empty());
}

#[tokio::test]
async fn the_running_consumer_dead_letters_a_bad_decision_in_the_store() {
    let f = fixture().await;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let (stop, shutdown) = watch::channel(false);
    let sink = Arc::new(StoreDeadLetterSink::new(f.store.clone()));
    // Declared first: the durable consumer keeps what is published before it runs.
    meridian_relay::declare_fraud_decisions(bus.as_ref(), "relaytest")
        .await
        .unwrap();
    let consumer = tokio::spawn(meridian_relay::run_fraud_decisions(
        bus.clone(),
        f.store.clone(),
        "relaytest",
        sink,
        shutdown,
    ));
    let order = place(&f).await;
    let other = f.store.create_tenant("other").await.unwrap().id;
    bus.publish(decision(
        other,
        serde_json::json!({"order_id": order.id, "decision": "hold", "reason": "x"}),
    ))
    .await
    .unwrap();
    bus.publish(decision(
        f.tenant,
        serde_json::json!({"order_id": order.id, "decision": "hold", "reason": "big"}),
    ))
    .await
    .unwrap();
    // The good decision is applied; the other tenant's is dead-lettered under its tenant.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let page = f
            .store
            .list_dead_letters(Some(other), Default::default())
            .await
            .unwrap();
        let held = f
            .store
            .holds()
            .order_hold(f.tenant, order.id)
            .await
            .unwrap();
        if let (Some(d), Some(_)) = (page.items.first(), held.hold) {
            break d.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.consumer, FRAUD_DECISIONS_CONSUMER);
    assert!(dead.reason.contains("has no order"), "{}", dead.reason);
    assert_eq!(
        hold_events(f.store.as_ref(), &order).await,
        ["meridian.oms.order.held"]
    );
    stop.send(true).unwrap();
    consumer.await.unwrap().unwrap();
}
