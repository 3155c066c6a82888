//! The [`NotifyStore`] conformance cases: webhook endpoints, notifications and their
//! attempts, as every backend must keep them. Each backend runs them with
//! `crate::notify::notify_suite!(factory)`, on a fresh store per case.

use std::sync::Arc;

use meridian_core::{EventId, TenantId};
use meridian_store::notify::{
    AfterAttempt, Channel, DeliveryAttempt, NewNotification, NewTemplate, NewWebhookEndpoint,
    NotificationId, NotificationStatus, TemplatePatch, WebhookEndpoint, WebhookPatch,
};
use meridian_store::{PageRequest, Store, StoreError};

macro_rules! notify_suite {
    ($factory:ident) => {
        $crate::notify::notify_suite!(@cases $factory;
            webhooks_are_tenant_scoped,
            notifications_dedup_by_event_channel_and_recipient,
            claims_lease_and_attempts_are_recorded_once,
            failures_redelivery_and_disabling,
            rotation_keeps_the_previous_secret,
            deleting_an_endpoint_fails_its_pending_deliveries,
            templates_are_unique_per_event_and_channel_and_tenant_scoped,
        );
    };
    (@cases $factory:ident; $($case:ident),+ $(,)?) => {
        mod notify_conformance {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let test_store = super::$factory().await;
                    $crate::notify::$case(::std::sync::Arc::clone(&test_store.store)).await;
                    drop(test_store);
                }
            )+
        }
    };
}
pub(crate) use notify_suite;

fn endpoint(url: &str) -> NewWebhookEndpoint {
    NewWebhookEndpoint {
        url: url.into(),
        description: "test".into(),
        event_types: vec!["order.*".into()],
        enabled: true,
        secret: "whsec_c2VjcmV0".into(),
    }
}

fn notification(tenant: TenantId, event: EventId, w: &WebhookEndpoint) -> NewNotification {
    NewNotification {
        id: NotificationId::new(),
        tenant_id: tenant,
        event_id: event,
        event_type: "order.created".into(),
        channel: Channel::Webhook,
        recipient: w.id.to_string(),
        webhook_id: Some(w.id),
        payload: r#"{"type":"order.created"}"#.into(),
        next_attempt_at: meridian_core::now(),
    }
}

fn attempt(n: NotificationId, number: u32, ok: bool) -> DeliveryAttempt {
    DeliveryAttempt {
        notification_id: n,
        attempt: number,
        at: meridian_core::now(),
        status_code: Some(if ok { 200 } else { 500 }),
        error: (!ok).then(|| "the endpoint answered 500".to_owned()),
        duration_ms: 3,
        succeeded: ok,
    }
}

fn later(secs: i64) -> meridian_core::Timestamp {
    meridian_core::now() + chrono::Duration::seconds(secs)
}

pub async fn webhooks_are_tenant_scoped(store: Arc<dyn Store>) {
    let a = store.create_tenant("a").await.unwrap().id;
    let b = store.create_tenant("b").await.unwrap().id;
    let w = store
        .create_webhook(a, endpoint("http://127.0.0.1:1/a"))
        .await
        .unwrap();
    assert_eq!(w.tenant_id, a);
    assert_eq!(w.event_types, vec!["order.*".to_owned()]);
    assert!(w.enabled);
    assert_eq!(store.get_webhook(a, w.id).await.unwrap(), w);
    assert!(matches!(
        store.get_webhook(b, w.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .create_webhook(TenantId::new(), endpoint("http://x"))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let page = |limit| PageRequest {
        limit,
        cursor: None,
    };
    let second = store
        .create_webhook(a, endpoint("http://127.0.0.1:1/second"))
        .await
        .unwrap();
    let first_page = store.list_webhooks(a, page(1)).await.unwrap();
    assert_eq!(first_page.items, vec![w.clone()]);
    let rest = store
        .list_webhooks(
            a,
            PageRequest {
                limit: 10,
                cursor: first_page.next_cursor,
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.items, vec![second.clone()]);
    assert!(rest.next_cursor.is_none());
    assert!(
        store
            .list_webhooks(b, page(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let patch = WebhookPatch {
        url: Some("http://127.0.0.1:1/changed".into()),
        enabled: Some(false),
        ..WebhookPatch::default()
    };
    assert!(matches!(
        store.update_webhook(b, w.id, patch.clone()).await,
        Err(StoreError::NotFound { .. })
    ));
    let changed = store.update_webhook(a, w.id, patch).await.unwrap();
    assert_eq!(changed.url, "http://127.0.0.1:1/changed");
    assert!(!changed.enabled);
    assert_eq!(changed.description, "test");
    assert_eq!(
        store.enabled_webhooks(a).await.unwrap(),
        vec![second.clone()]
    );
    assert!(store.enabled_webhooks(b).await.unwrap().is_empty());

    assert!(matches!(
        store.delete_webhook(b, w.id).await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete_webhook(a, w.id).await.unwrap();
    assert!(matches!(
        store.get_webhook(a, w.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn notifications_dedup_by_event_channel_and_recipient(store: Arc<dyn Store>) {
    let t = store.create_tenant("t").await.unwrap().id;
    let w1 = store
        .create_webhook(t, endpoint("http://one"))
        .await
        .unwrap();
    let w2 = store
        .create_webhook(t, endpoint("http://two"))
        .await
        .unwrap();
    let event = EventId::new();
    let first = notification(t, event, &w1);
    // The same event for the same endpoint twice in one call, and once for another.
    let inserted = store
        .enqueue_notifications(&[
            first.clone(),
            notification(t, event, &w1),
            notification(t, event, &w2),
        ])
        .await
        .unwrap();
    assert_eq!(inserted, vec![true, false, true]);
    // A redelivered event in a later call.
    let again = store
        .enqueue_notifications(&[notification(t, event, &w1), notification(t, event, &w2)])
        .await
        .unwrap();
    assert_eq!(again, vec![false, false]);
    // Another event for the same endpoint is a notification of its own.
    let other = store
        .enqueue_notifications(&[notification(t, EventId::new(), &w1)])
        .await
        .unwrap();
    assert_eq!(other, vec![true]);
    assert!(store.enqueue_notifications(&[]).await.unwrap().is_empty());

    let n = store.get_notification(t, first.id).await.unwrap();
    assert_eq!(n.status, NotificationStatus::Pending);
    assert_eq!(n.attempts, 0);
    assert_eq!(n.payload, first.payload);
    assert_eq!(n.webhook_id, Some(w1.id));
    let of_w1 = store
        .list_notifications(
            t,
            Some(w1.id),
            PageRequest {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(of_w1.items.len(), 2);
    assert!(of_w1.items[0].id > of_w1.items[1].id, "newest first");
    let all = store
        .list_notifications(
            t,
            None,
            PageRequest {
                limit: 10,
                cursor: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
    let stranger = store.create_tenant("s").await.unwrap().id;
    assert!(matches!(
        store.get_notification(stranger, first.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        store
            .list_notifications(
                stranger,
                None,
                PageRequest {
                    limit: 10,
                    cursor: None
                }
            )
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn claims_lease_and_attempts_are_recorded_once(store: Arc<dyn Store>) {
    let t = store.create_tenant("t").await.unwrap().id;
    let w = store
        .create_webhook(t, endpoint("http://one"))
        .await
        .unwrap();
    let new = notification(t, EventId::new(), &w);
    store
        .enqueue_notifications(std::slice::from_ref(&new))
        .await
        .unwrap();

    let claimed = store
        .claim_due_notifications(meridian_core::now(), later(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, new.id);
    // Leased: not due again until the lease ends.
    assert!(
        store
            .claim_due_notifications(meridian_core::now(), later(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_due_notifications(later(61), later(120), 10)
            .await
            .unwrap()
            .len(),
        1
    );

    // Held back without an attempt: due later, count unchanged; a stale count changes nothing.
    assert!(
        store
            .reschedule_notification(new.id, 0, later(3600))
            .await
            .unwrap()
    );
    assert!(
        !store
            .reschedule_notification(new.id, 1, later(1))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_due_notifications(later(3599), later(4000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .reschedule_notification(new.id, 0, meridian_core::now())
            .await
            .unwrap()
    );
    assert_eq!(store.get_notification(t, new.id).await.unwrap().attempts, 0);

    // A failed first attempt, retried at once.
    store
        .record_attempt(
            &attempt(new.id, 1, false),
            AfterAttempt::Retry(meridian_core::now()),
        )
        .await
        .unwrap();
    // A stale worker recording the same attempt changes nothing.
    assert!(matches!(
        store
            .record_attempt(&attempt(new.id, 1, true), AfterAttempt::Succeeded)
            .await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let n = store.get_notification(t, new.id).await.unwrap();
    assert_eq!((n.status, n.attempts), (NotificationStatus::Pending, 1));
    assert_eq!(n.last_error.as_deref(), Some("the endpoint answered 500"));
    let claimed = store
        .claim_due_notifications(meridian_core::now(), later(60), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempts, 1);

    store
        .record_attempt(&attempt(new.id, 2, true), AfterAttempt::Succeeded)
        .await
        .unwrap();
    let n = store.get_notification(t, new.id).await.unwrap();
    assert_eq!(
        (n.status, n.attempts, n.next_attempt_at),
        (NotificationStatus::Succeeded, 2, None)
    );
    assert!(
        store
            .claim_due_notifications(later(3600), later(7200), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let log = store.delivery_attempts(t, new.id).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|a| (a.attempt, a.status_code, a.succeeded))
            .collect::<Vec<_>>(),
        vec![(1, Some(500), false), (2, Some(200), true)]
    );
    let stranger = store.create_tenant("s").await.unwrap().id;
    assert!(matches!(
        store.delivery_attempts(stranger, new.id).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn failures_redelivery_and_disabling(store: Arc<dyn Store>) {
    let t = store.create_tenant("t").await.unwrap().id;
    let w = store
        .create_webhook(t, endpoint("http://one"))
        .await
        .unwrap();
    let ok = notification(t, EventId::new(), &w);
    let bad1 = notification(t, EventId::new(), &w);
    let bad2 = notification(t, EventId::new(), &w);
    store
        .enqueue_notifications(&[ok.clone(), bad1.clone(), bad2.clone()])
        .await
        .unwrap();
    store
        .record_attempt(&attempt(ok.id, 1, true), AfterAttempt::Succeeded)
        .await
        .unwrap();
    assert_eq!(store.consecutive_failures(t, w.id).await.unwrap(), 0);
    for n in [&bad1, &bad2] {
        store
            .record_attempt(&attempt(n.id, 1, false), AfterAttempt::Failed)
            .await
            .unwrap();
    }
    assert_eq!(store.consecutive_failures(t, w.id).await.unwrap(), 2);

    // Manual redelivery makes a failed notification due now, keeping its count.
    let stranger = store.create_tenant("s").await.unwrap().id;
    assert!(matches!(
        store.redeliver_notification(stranger, bad1.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let again = store.redeliver_notification(t, bad1.id).await.unwrap();
    assert_eq!(
        (again.status, again.attempts),
        (NotificationStatus::Pending, 1)
    );
    let due = store
        .claim_due_notifications(later(1), later(60), 10)
        .await
        .unwrap();
    assert_eq!(due.iter().map(|n| n.id).collect::<Vec<_>>(), vec![bad1.id]);

    assert!(store.disable_webhook(t, w.id, "failing").await.unwrap());
    assert!(!store.disable_webhook(t, w.id, "failing").await.unwrap());
    // The tenant is told, once, through an event committed with the change.
    let told: Vec<_> = store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.envelope.ty == "meridian.notify.webhook.disabled")
        .collect();
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].envelope.tenant, t);
    assert_eq!(told[0].envelope.data["reason"], "failing");
    assert_eq!(told[0].envelope.data["webhook_id"], w.id.to_string());
    assert!(
        told[0]
            .topic
            .as_str()
            .ends_with(".platform.notify.webhook.disabled")
    );
    assert!(matches!(
        store.disable_webhook(stranger, w.id, "x").await,
        Err(StoreError::NotFound { .. })
    ));
    let disabled = store.get_webhook(t, w.id).await.unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.disabled_reason.as_deref(), Some("failing"));
    assert!(store.enabled_webhooks(t).await.unwrap().is_empty());
    let enabled = store
        .update_webhook(
            t,
            w.id,
            WebhookPatch {
                enabled: Some(true),
                ..WebhookPatch::default()
            },
        )
        .await
        .unwrap();
    assert!(enabled.enabled);
    assert_eq!(enabled.disabled_reason, None);
}

pub async fn rotation_keeps_the_previous_secret(store: Arc<dyn Store>) {
    let t = store.create_tenant("t").await.unwrap().id;
    let w = store
        .create_webhook(t, endpoint("http://one"))
        .await
        .unwrap();
    let until = later(3600);
    let rotated = store
        .rotate_webhook_secret(t, w.id, "whsec_bmV3".into(), until)
        .await
        .unwrap();
    assert_eq!(rotated.secret, "whsec_bmV3");
    assert_eq!(rotated.previous_secret.as_deref(), Some(w.secret.as_str()));
    let expires = rotated.previous_secret_expires_at.unwrap();
    assert!((expires - until).num_milliseconds().abs() < 1);
    let stranger = store.create_tenant("s").await.unwrap().id;
    assert!(matches!(
        store
            .rotate_webhook_secret(stranger, w.id, "whsec_eA==".into(), until)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn deleting_an_endpoint_fails_its_pending_deliveries(store: Arc<dyn Store>) {
    let t = store.create_tenant("t").await.unwrap().id;
    let w = store
        .create_webhook(t, endpoint("http://one"))
        .await
        .unwrap();
    let n = notification(t, EventId::new(), &w);
    store
        .enqueue_notifications(std::slice::from_ref(&n))
        .await
        .unwrap();
    store.delete_webhook(t, w.id).await.unwrap();
    let after = store.get_notification(t, n.id).await.unwrap();
    assert_eq!(after.status, NotificationStatus::Failed);
    assert_eq!(after.last_error.as_deref(), Some("endpoint deleted"));
    assert!(
        store
            .claim_due_notifications(later(1), later(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn templates_are_unique_per_event_and_channel_and_tenant_scoped(store: Arc<dyn Store>) {
    let t = store.create_tenant("t").await.unwrap().id;
    let new = |channel| NewTemplate {
        event_type: "order.created".into(),
        channel,
        subject: Some("Order {{ data.id }}".into()),
        body: "Thanks".into(),
    };
    let email = store.create_template(t, new(Channel::Email)).await.unwrap();
    assert_eq!(email.subject.as_deref(), Some("Order {{ data.id }}"));
    assert!(matches!(
        store.create_template(t, new(Channel::Email)).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let sms = store.create_template(t, new(Channel::Sms)).await.unwrap();
    assert!(matches!(
        store
            .create_template(TenantId::new(), new(Channel::Sms))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let other = store.create_tenant("o").await.unwrap().id;
    // Another tenant may have its own template for the same event and channel.
    store
        .create_template(other, new(Channel::Email))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_templates(t)
            .await
            .unwrap()
            .iter()
            .map(|x| x.id)
            .collect::<Vec<_>>(),
        vec![email.id, sms.id]
    );
    assert!(matches!(
        store.get_template(other, email.id).await,
        Err(StoreError::NotFound { .. })
    ));
    let changed = store
        .update_template(
            t,
            email.id,
            TemplatePatch {
                subject: Some(None),
                body: Some("New body".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!((changed.subject, changed.body.as_str()), (None, "New body"));
    let kept = store
        .update_template(t, email.id, TemplatePatch::default())
        .await
        .unwrap();
    assert_eq!(kept.body, "New body");
    assert!(matches!(
        store
            .update_template(other, email.id, TemplatePatch::default())
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_template(other, email.id).await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete_template(t, email.id).await.unwrap();
    assert!(matches!(
        store.get_template(t, email.id).await,
        Err(StoreError::NotFound { .. })
    ));
}
