//! Webhooks over https to a receiver under a private CA (trusted through the CA file),
//! signed with secrets that are sealed at rest, and the address guard that keeps tenant
//! webhooks off loopback unless the deployment allows private addresses. On SQLite with the
//! embedded bus.

use std::time::{Duration, Instant};

use meridian_auth::MasterKey;
use meridian_http::test_support::{Received, TestCa};
use meridian_http::{AddressGuard, Outbound};
use meridian_notify::secrets::is_sealed;
use meridian_notify::{SecretSealer, WorkerConfig};
use meridian_store::PageRequest;
use meridian_store::notify::{NewWebhookEndpoint, NotificationStatus};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::sqlite_embedded::stack_with;
use crate::support::{Stack, fast_retries};

/// Stores an endpoint at `url` whose secret is stored as `stored`.
async fn endpoint(
    stack: &Stack,
    url: &str,
    stored: String,
) -> meridian_store::notify::WebhookEndpoint {
    stack
        .store
        .create_webhook(
            stack.tenant,
            NewWebhookEndpoint {
                url: url.to_owned(),
                description: String::new(),
                event_types: vec!["order.created".into()],
                enabled: true,
                secret: stored,
            },
        )
        .await
        .unwrap()
}

fn header(r: &Received, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn verifies(r: &Received, secret: &str) -> bool {
    meridian_notify::signing::verify(
        secret,
        &header(r, "webhook-id"),
        &header(r, "webhook-timestamp"),
        &header(r, "webhook-signature"),
        &r.body,
        chrono::Utc::now().timestamp(),
    )
    .is_ok()
}

async fn next(rx: &mut UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no webhook arrived")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_under_a_private_ca_are_signed_with_sealed_secrets() {
    let ca = TestCa::new();
    let (sealed_addr, mut sealed_rx) = ca.serve(200).await;
    let (clear_addr, mut clear_rx) = ca.serve(200).await;
    let sealer = SecretSealer::new(MasterKey::generate());
    let (stack, _dir) = stack_with(WorkerConfig {
        outbound: Outbound::with_ca_pem(ca.ca_pem.as_bytes()).unwrap(),
        secrets: Some(sealer.clone()),
        ..fast_retries()
    })
    .await;

    // One endpoint's secret sealed at rest, one stored in the clear before sealing existed.
    let secret = meridian_notify::signing::new_secret();
    let sealed = endpoint(
        &stack,
        &format!("https://localhost:{}/hook", sealed_addr.port()),
        sealer.seal(stack.tenant, &secret),
    )
    .await;
    let stored = stack
        .store
        .get_webhook(stack.tenant, sealed.id)
        .await
        .unwrap()
        .secret;
    assert!(is_sealed(&stored), "{stored}");
    assert!(
        !stored.contains(&secret),
        "the stored column is not the secret"
    );
    let legacy = meridian_notify::signing::new_secret();
    endpoint(
        &stack,
        &format!("https://localhost:{}/hook", clear_addr.port()),
        legacy.clone(),
    )
    .await;

    stack.place_order().await;
    let got = next(&mut sealed_rx).await;
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/hook"));
    assert!(
        verifies(&got, &secret),
        "the sealed endpoint's signature does not verify"
    );
    assert!(!verifies(&got, &stored));
    let got = next(&mut clear_rx).await;
    assert!(verifies(&got, &legacy), "a secret in the clear still signs");
    stack.stop().await;
}

/// Polls the tenant's notifications until one has the `status`.
async fn until_status(
    stack: &Stack,
    status: NotificationStatus,
) -> meridian_store::notify::Notification {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = stack
            .store
            .list_notifications(stack.tenant, None, PageRequest::default())
            .await
            .unwrap();
        if let Some(n) = page.items.into_iter().find(|n| n.status == status) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no notification became {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_guard_keeps_webhooks_off_loopback() {
    let ca = TestCa::new();
    let (addr, mut rx) = ca.serve(200).await;
    let (stack, _dir) = stack_with(WorkerConfig {
        outbound: Outbound::with_ca_pem(ca.ca_pem.as_bytes()).unwrap(),
        address_guard: AddressGuard::STRICT,
        ..fast_retries()
    })
    .await;
    // A literal loopback address, and a name that resolves to it.
    endpoint(
        &stack,
        &format!("https://127.0.0.1:{}/hook", addr.port()),
        meridian_notify::signing::new_secret(),
    )
    .await;
    stack.place_order().await;
    let failed = until_status(&stack, NotificationStatus::Failed).await;
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(error.contains("not a public address"), "{error}");
    assert_eq!(failed.attempts, 1, "a refused address is not retried");
    assert!(rx.try_recv().is_err(), "nothing reached the receiver");
    stack.stop().await;
}
