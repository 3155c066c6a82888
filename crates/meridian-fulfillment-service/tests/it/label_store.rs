//! The label store contract, run against each backend: the local directory and an
//! S3-compatible server (s3s-fs) inside the test process over real HTTP. Then what only
//! S3 has: start-up checks of the bucket and credentials, and an outage of the server
//! while labels are being made (retries, then a dead letter, then a replay).

use std::sync::Arc;
use std::time::Duration;

use meridian_fulfillment::ShipmentStatus;
use meridian_fulfillment_service::s3_test_server::{
    ACCESS_KEY_ID, S3TestServer, SECRET_ACCESS_KEY,
};
use meridian_fulfillment_service::{
    LABELS_CONSUMER, LabelStore, LabelStoreError, LocalLabelStore, ManualCarrier, S3LabelStore,
    S3LabelStoreConfig,
};

use crate::http_carrier::{first_dead_letter, place_order, stack_with, wait_shipment};

const BUCKET: &str = "labels";

/// An S3 label store on `server`'s `bucket` under `prefix`.
fn s3_store(server: &S3TestServer, bucket: &str, secret: &str) -> S3LabelStore {
    let mut config = S3LabelStoreConfig::from_url(&format!("s3://{bucket}/meridian/test")).unwrap();
    config.endpoint = Some(server.endpoint());
    config.allow_http = true;
    config.timeout = Duration::from_secs(5);
    config.aws = vec![
        ("access_key_id".into(), ACCESS_KEY_ID.into()),
        ("secret_access_key".into(), secret.into()),
        ("region".into(), "us-east-1".into()),
    ];
    S3LabelStore::new(config).unwrap()
}

/// The cases every backend passes.
async fn contract(store: &dyn LabelStore) {
    store.check().await.unwrap();
    let key = "labels/tenant-a/shipment-1.pdf";
    assert_eq!(store.get(key).await.unwrap(), None, "a key never stored");
    store.put(key, b"%PDF-1.4 one".to_vec()).await.unwrap();
    assert_eq!(
        store.get(key).await.unwrap().as_deref(),
        Some(&b"%PDF-1.4 one"[..])
    );
    store.put(key, b"%PDF-1.4 two".to_vec()).await.unwrap();
    assert_eq!(
        store.get(key).await.unwrap().as_deref(),
        Some(&b"%PDF-1.4 two"[..]),
        "a put replaces the object whole"
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    store
        .put("labels/tenant-b/big.pdf", big.clone())
        .await
        .unwrap();
    assert_eq!(
        store.get("labels/tenant-b/big.pdf").await.unwrap(),
        Some(big)
    );
    assert_eq!(
        store.get("labels/tenant-b/shipment-1.pdf").await.unwrap(),
        None,
        "keys of another tenant are apart"
    );
    for bad in ["../escape.pdf", "labels//x", "", "a b"] {
        assert!(
            matches!(
                store.put(bad, vec![1]).await,
                Err(LabelStoreError::InvalidKey(_))
            ),
            "{bad}"
        );
        assert!(matches!(
            store.get(bad).await,
            Err(LabelStoreError::InvalidKey(_))
        ));
    }
}

#[tokio::test]
async fn local_directory_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalLabelStore::new(dir.path().join("objects"));
    contract(&store).await;
    assert!(
        dir.path()
            .join("objects/labels/tenant-a/shipment-1.pdf")
            .is_file()
    );
}

#[tokio::test]
async fn s3_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3TestServer::start(dir.path()).await;
    server.create_bucket(BUCKET);
    let store = s3_store(&server, BUCKET, SECRET_ACCESS_KEY);
    assert_eq!(store.name(), "s3");
    contract(&store).await;
    // The object is in the bucket, under the prefix.
    let on_disk = server.object_path(BUCKET, "meridian/test/labels/tenant-a/shipment-1.pdf");
    assert_eq!(std::fs::read(on_disk).unwrap(), b"%PDF-1.4 two");
}

#[tokio::test]
async fn s3_check_refuses_a_missing_bucket_bad_credentials_and_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3TestServer::start(dir.path()).await;
    server.create_bucket(BUCKET);

    let missing = s3_store(&server, "no-such-bucket", SECRET_ACCESS_KEY);
    let e = missing.check().await.unwrap_err().to_string();
    assert!(e.contains("no-such-bucket"), "{e}");

    let forbidden = s3_store(&server, BUCKET, "not-the-secret-key");
    let e = forbidden.check().await.unwrap_err().to_string();
    assert!(e.contains("cannot list S3 bucket labels"), "{e}");
    assert!(forbidden.put("labels/x.pdf", vec![1]).await.is_err());

    let store = s3_store(&server, BUCKET, SECRET_ACCESS_KEY);
    store.check().await.unwrap();
    server.stop().await;
    let e = store.check().await.unwrap_err();
    assert!(matches!(e, LabelStoreError::Unavailable(_)), "{e}");
    assert!(matches!(
        store.put("labels/x.pdf", vec![1]).await,
        Err(LabelStoreError::Unavailable(_))
    ));
    server.restart().await;
    store.put("labels/x.pdf", vec![1]).await.unwrap();
    assert_eq!(store.get("labels/x.pdf").await.unwrap(), Some(vec![1]));
}

/// The S3 server is down while a label is made: three attempts fail, the work is a dead
/// letter naming the bucket; the server comes back and a replay stores the label there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_dead_letters_the_label_and_a_replay_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = S3TestServer::start(&dir.path().join("s3")).await;
    server.create_bucket(BUCKET);
    let labels: Arc<dyn LabelStore> = Arc::new(s3_store(&server, BUCKET, SECRET_ACCESS_KEY));
    server.stop().await;
    let stack = stack_with(
        tempfile::tempdir().unwrap(),
        Arc::new(ManualCarrier),
        labels.clone(),
    )
    .await;
    let t = place_order(&*stack.store).await;

    let dead = first_dead_letter(&*stack.store, t, Duration::from_secs(60)).await;
    assert_eq!(dead.consumer, LABELS_CONSUMER);
    assert_eq!(dead.attempts, 3);
    assert!(
        dead.reason.contains("S3 bucket labels"),
        "the reason names the store: {}",
        dead.reason
    );
    let s = wait_shipment(&*stack.store, t, |_| true).await;
    assert_eq!(s.status, ShipmentStatus::Pending);

    server.restart().await;
    meridian_relay::replay_dead_letter(&*stack.store, &*stack.bus, Some(t), dead.id)
        .await
        .unwrap();
    let s = wait_shipment(&*stack.store, t, |s| s.status != ShipmentStatus::Pending).await;
    assert_eq!(s.status, ShipmentStatus::LabelCreated);
    let key = s.label_key.clone().unwrap();
    let pdf = labels.get(&key).await.unwrap().unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4"));
    let on_disk = server.object_path(BUCKET, &format!("meridian/test/{key}"));
    assert_eq!(std::fs::read(on_disk).unwrap(), pdf);
    let _ = stack.stop.send(true);
}
