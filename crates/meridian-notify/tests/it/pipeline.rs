//! The scenarios, written once and run on each store and bus (see `sqlite_embedded` and
//! `postgres_nats`).

use meridian_bus::Message;
use meridian_core::{Envelope, Topic};
use meridian_notify::WorkerConfig;
use meridian_store::notify::{Channel, NewTemplate, Notification, NotificationStatus, WebhookId};
use meridian_store::{Page, PageRequest};

use crate::support::{Receiver, Stack, fast_retries};

/// The notifications of the test's tenant (of one endpoint, or all), newest first.
async fn notifications(stack: &Stack, endpoint: Option<WebhookId>) -> Page<Notification> {
    let all = PageRequest {
        limit: 100,
        cursor: None,
    };
    stack
        .store
        .list_notifications(stack.tenant, endpoint, all)
        .await
        .unwrap()
}

/// Publishes `event` on `topic` straight to the bus, as a producer would.
async fn publish(stack: &Stack, topic: Topic, event: Envelope) {
    stack.bus.publish(Message::new(topic, event)).await.unwrap();
}

/// Gives the test's tenant a template for `order.created` on `channel`.
async fn order_created_template(
    stack: &Stack,
    channel: Channel,
    subject: Option<&str>,
    body: &str,
) {
    stack
        .store
        .create_template(
            stack.tenant,
            NewTemplate {
                event_type: "order.created".into(),
                channel,
                subject: subject.map(Into::into),
                body: body.into(),
            },
        )
        .await
        .unwrap();
}

/// Declares every scenario as a test of the calling backend module, which provides
/// `async fn stack_with(WorkerConfig) -> (Stack, Guard)`; the guard (a temporary
/// directory, a schema) lives until the scenario ends.
macro_rules! scenarios {
    () => {
        $crate::pipeline::scenarios!(
            order_placed_arrives_signed,
            a_500_then_200_is_retried_and_arrives_once,
            a_duplicated_event_gives_one_delivery,
            email_fails_over_to_the_secondary_provider,
            sms_goes_through_the_http_provider,
            a_failing_endpoint_is_disabled_and_the_tenant_told,
            a_tenant_over_its_rate_waits_without_spending_attempts,
        );
    };
    ($($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let mut guard = None;
                $crate::pipeline::$scenario(async |config| {
                    let (stack, kept) = stack_with(config).await;
                    guard = Some(kept);
                    stack
                })
                .await;
                drop(guard);
            }
        )+
    };
}
pub(crate) use scenarios;

/// An order is placed: its `order.created` webhook arrives once, signed with the
/// endpoint's secret, carrying the order; the delivery log shows one successful attempt.
pub async fn order_placed_arrives_signed(start: impl AsyncFnOnce(WorkerConfig) -> Stack) {
    let stack = start(fast_retries()).await;
    let receiver = Receiver::start(&[]).await;
    let endpoint = stack.endpoint(&receiver, &["order.*"]).await;
    let order = stack.place_order().await;

    let got = receiver
        .until("the order.created webhook", |r| !r.is_empty())
        .await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let hook = &got[0];
    assert!(hook.signature_valid, "the signature does not verify");
    assert_eq!(hook.body["type"], "order.created");
    assert_eq!(hook.body["data"]["id"], order.id.to_string());

    let log = notifications(&stack, Some(endpoint.id)).await;
    assert_eq!(log.items.len(), 1);
    let delivery = &log.items[0];
    assert_eq!(delivery.id.to_string(), hook.webhook_id);
    // The worker records the attempt after the receiver answered; wait for it.
    let attempts = until_recorded(&stack, delivery.id, 1).await;
    assert!(attempts[0].succeeded);
    assert_eq!(attempts[0].status_code, Some(200));
    stack.stop().await;
}

/// The endpoint answers 500, then 200: the delivery is retried and accepted exactly once,
/// with the same `webhook-id` both times, and the log shows both attempts.
pub async fn a_500_then_200_is_retried_and_arrives_once(
    start: impl AsyncFnOnce(WorkerConfig) -> Stack,
) {
    let stack = start(fast_retries()).await;
    let receiver = Receiver::start(&[500]).await;
    let endpoint = stack.endpoint(&receiver, &["order.created"]).await;
    stack.place_order().await;

    let got = receiver
        .until("a retried delivery", |r| r.iter().any(|h| h.status == 200))
        .await;
    assert_eq!(
        got.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![500, 200],
        "{got:#?}"
    );
    assert_eq!(got[0].webhook_id, got[1].webhook_id);
    assert!(got.iter().all(|h| h.signature_valid));

    let log = notifications(&stack, Some(endpoint.id)).await;
    assert_eq!(log.items.len(), 1);
    let attempts = until_recorded(&stack, log.items[0].id, 2).await;
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.attempt, a.status_code, a.succeeded))
            .collect::<Vec<_>>(),
        vec![(1, Some(500), false), (2, Some(200), true)]
    );
    let n = stack
        .store
        .get_notification(stack.tenant, log.items[0].id)
        .await
        .unwrap();
    assert_eq!((n.status, n.attempts), (NotificationStatus::Succeeded, 2));
    assert_eq!(
        receiver.received().len(),
        2,
        "nothing is sent after the success"
    );
    stack.stop().await;
}

/// The same event arrives three times (twice on its topic, once more through the other
/// consumer's topic, which a broker's own duplicate window cannot catch): one delivery.
/// A later event on each topic proves both consumers got past the copies, so the log
/// already holds every notification the copies made.
pub async fn a_duplicated_event_gives_one_delivery(start: impl AsyncFnOnce(WorkerConfig) -> Stack) {
    let stack = start(fast_retries()).await;
    let receiver = Receiver::start(&[]).await;
    let endpoint = stack.endpoint(&receiver, &["*"]).await;
    let event = |ty: &str| {
        Envelope::new(
            format!("/meridian/{}/oms", stack.deployment),
            ty,
            stack.tenant,
            "0190a0a0-0000-7000-8000-000000000001",
            meridian_core::now(),
            serde_json::json!({"id": "0190a0a0-0000-7000-8000-000000000001"}),
        )
    };
    let orders = Topic::platform(&stack.deployment, "oms", "order.created");
    let shipments = Topic::platform(&stack.deployment, "fulfillment", "shipment.created");
    let duplicated = event("meridian.oms.order.created");
    for topic in [&orders, &orders, &shipments] {
        publish(&stack, topic.clone(), duplicated.clone()).await;
    }
    let marker_orders = event("meridian.oms.order.confirmed");
    let marker_shipments = event("meridian.fulfillment.shipment.created");
    publish(
        &stack,
        Topic::platform(&stack.deployment, "oms", "order.confirmed"),
        marker_orders.clone(),
    )
    .await;
    publish(&stack, shipments.clone(), marker_shipments.clone()).await;

    let event_id =
        |h: &crate::support::Received| h.body["event_id"].as_str().unwrap_or("").to_owned();
    let markers = [
        marker_orders.id.to_string(),
        marker_shipments.id.to_string(),
    ];
    // The markers are recorded after the copies on each topic, but the worker may deliver
    // them first: wait for the duplicated event's delivery too.
    let got = receiver
        .until("both markers and the duplicated event", |r| {
            markers
                .iter()
                .chain(std::iter::once(&duplicated.id.to_string()))
                .all(|m| r.iter().any(|h| h.body["event_id"] == m.as_str()))
        })
        .await;
    let copies = got
        .iter()
        .filter(|h| event_id(h) == duplicated.id.to_string())
        .count();
    assert_eq!(copies, 1, "{got:#?}");
    let log = notifications(&stack, Some(endpoint.id)).await;
    assert_eq!(
        log.items
            .iter()
            .filter(|n| n.event_id == duplicated.id)
            .count(),
        1
    );
    stack.stop().await;
}

/// The attempts of a notification once `n` are recorded (the worker records after the
/// receiver answered).
async fn until_recorded(
    stack: &Stack,
    id: meridian_store::notify::NotificationId,
    n: usize,
) -> Vec<meridian_store::notify::DeliveryAttempt> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let attempts = stack
            .store
            .delivery_attempts(stack.tenant, id)
            .await
            .unwrap();
        if attempts.len() >= n {
            return attempts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} attempts recorded",
            attempts.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The tenant has an email template for `order.created`; the primary SMTP provider is
/// down (its port closed): the secondary takes over, and the SMTP sink receives the
/// rendered email, once, at the customer's address.
pub async fn email_fails_over_to_the_secondary_provider(
    start: impl AsyncFnOnce(WorkerConfig) -> Stack,
) {
    let sink = crate::support::SmtpSink::start().await;
    let mut config = fast_retries();
    config.email = Some(meridian_notify::email::EmailConfig {
        providers: vec![
            meridian_notify::email::SmtpProvider {
                address: crate::support::closed_port().await,
            },
            meridian_notify::email::SmtpProvider {
                address: sink.address.clone(),
            },
        ],
        from: "shop@example.com".into(),
        hello_name: "meridian.test".into(),
        timeout: std::time::Duration::from_secs(5),
    });
    let stack = start(config).await;
    order_created_template(
        &stack,
        Channel::Email,
        Some("Order {{ data.id }} received"),
        "Thank you, {{ data.customer.name }}.\n.A line starting with a dot.",
    )
    .await;
    let order = stack
        .place_order_for(Some(meridian_orders::Customer {
            email: "Ada@Example.com".into(),
            name: Some("Ada".into()),
            phone: None,
        }))
        .await;

    let mail = sink.first().await;
    assert_eq!(mail.rcpt, "ada@example.com");
    assert!(
        mail.data
            .contains(&format!("Subject: Order {} received\r\n", order.id)),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .contains("Thank you, Ada.\r\n..A line starting with a dot.\r\n"),
        "{}",
        mail.data
    );

    let log = notifications(&stack, None).await;
    let email: Vec<_> = log
        .items
        .iter()
        .filter(|n| n.channel == Channel::Email)
        .collect();
    assert_eq!(email.len(), 1);
    let attempts = until_recorded(&stack, email[0].id, 1).await;
    assert!(attempts[0].succeeded, "{attempts:?}");
    assert_eq!(sink.count(), 1);
    stack.stop().await;
}

/// The tenant has an SMS template; the HTTP SMS provider (a real server the test starts)
/// answers 503, then 200: the message is retried and arrives once, rendered, with the
/// provider's token.
pub async fn sms_goes_through_the_http_provider(start: impl AsyncFnOnce(WorkerConfig) -> Stack) {
    let provider = Receiver::start(&[503]).await;
    let mut config = fast_retries();
    config.sms = Some(meridian_notify::sms::SmsConfig {
        url: provider.url.clone(),
        token: Some("sms-token".into()),
        from: "Meridian".into(),
    });
    let stack = start(config).await;
    order_created_template(
        &stack,
        Channel::Sms,
        None,
        "Order {{ data.id }} is in, {{ data.customer.name }}.",
    )
    .await;
    // Orders carry no phone number yet: the event comes straight to the bus, as a
    // producer that has one would send it.
    let event = Envelope::new(
        format!("/meridian/{}/oms", stack.deployment),
        "meridian.oms.order.created",
        stack.tenant,
        "o-1",
        meridian_core::now(),
        serde_json::json!({"id": "o-1", "customer": {"name": "Ada", "email": "ada@example.com", "phone": "+49 30 1234567"}}),
    );
    publish(
        &stack,
        Topic::platform(&stack.deployment, "oms", "order.created"),
        event,
    )
    .await;
    let got = provider
        .until("the SMS", |r| r.iter().any(|h| h.status == 200))
        .await;
    assert_eq!(
        got.iter().map(|h| h.status).collect::<Vec<_>>(),
        vec![503, 200]
    );
    assert_eq!(
        got[1].body,
        serde_json::json!({"to": "+49301234567", "from": "Meridian", "body": "Order o-1 is in, Ada."})
    );
    assert_eq!(got[1].authorization, "Bearer sms-token");
    stack.stop().await;
}

/// An endpoint whose deliveries keep failing is disabled, and the tenant is told: its other
/// endpoint, subscribed to `webhook.*`, receives `webhook.disabled` naming it.
pub async fn a_failing_endpoint_is_disabled_and_the_tenant_told(
    start: impl AsyncFnOnce(WorkerConfig) -> Stack,
) {
    let failing = Receiver::start(&[400]).await;
    let watcher = Receiver::start(&[]).await;
    let mut config = fast_retries();
    config.disable_after = 1;
    let stack = start(config).await;
    let bad = stack.endpoint(&failing, &["order.*"]).await;
    stack.endpoint(&watcher, &["webhook.*"]).await;
    stack.place_order().await;

    let got = watcher.until("webhook.disabled", |r| !r.is_empty()).await;
    assert_eq!(got[0].body["type"], "webhook.disabled");
    assert_eq!(got[0].body["data"]["webhook_id"], bad.id.to_string());
    assert!(got[0].signature_valid);
    let after = stack.store.get_webhook(stack.tenant, bad.id).await.unwrap();
    assert!(!after.enabled);
    assert!(after.disabled_reason.unwrap().contains("1 failed"));
    assert_eq!(failing.received().len(), 1, "a 400 is not retried");
    stack.stop().await;
}

/// A tenant over its send rate: its deliveries wait for their turn instead of failing, and
/// none spends an attempt on waiting.
pub async fn a_tenant_over_its_rate_waits_without_spending_attempts(
    start: impl AsyncFnOnce(WorkerConfig) -> Stack,
) {
    let receiver = Receiver::start(&[]).await;
    let mut config = fast_retries();
    config.tenant_rate_per_second = 4;
    config.tenant_burst = 1;
    let stack = start(config).await;
    let endpoint = stack.endpoint(&receiver, &["order.created"]).await;
    for _ in 0..4 {
        stack.place_order().await;
    }
    let got = receiver.until("4 deliveries", |r| r.len() >= 4).await;
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|h| h.status == 200 && h.signature_valid));
    let log = notifications(&stack, Some(endpoint.id)).await;
    assert_eq!(log.items.len(), 4);
    for n in &log.items {
        let attempts = until_recorded(&stack, n.id, 1).await;
        assert_eq!(attempts.len(), 1, "waiting for the rate spends no attempt");
    }
    stack.stop().await;
}
