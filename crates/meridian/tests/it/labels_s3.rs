//! Labels on S3-compatible storage through the real binary: an S3 server (s3s-fs) runs in
//! the test process; `meridian serve` keeps labels in its bucket, serves them through the
//! authenticated URL and a pre-signed link, rides out an outage of the server (dead letter,
//! replay), and refuses to start on a bad URL, a missing bucket or refused credentials.

use std::time::{Duration, Instant};

use meridian_fulfillment_service::s3_test_server::{
    ACCESS_KEY_ID, S3TestServer, SECRET_ACCESS_KEY,
};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Api, Db, Server, command, create_tenant};

const BUCKET: &str = "labels";

fn s3_env(server: &S3TestServer, bucket: &str, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MERIDIAN_LABEL_STORE", format!("s3://{bucket}/meridian")),
        ("MERIDIAN_LABEL_STORE_ENDPOINT", server.endpoint()),
        ("MERIDIAN_LABEL_STORE_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", secret.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

async fn wait_for(api: &Api, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let body = api.ok(Method::GET, path, None).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {path} is {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_is(status: &'static str) -> impl Fn(&Value) -> bool {
    move |b| b["items"][0]["status"] == status
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_live_in_an_s3_bucket_and_survive_its_outage() {
    let s3_dir = tempfile::tempdir().unwrap();
    let mut s3 = S3TestServer::start(s3_dir.path()).await;
    s3.create_bucket(BUCKET);
    let db = Db::sqlite();
    let server = Server::start_with(&db, &s3_env(&s3, BUCKET, SECRET_ACCESS_KEY)).await;
    let ready: Value = crate::support::http()
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["label_store"],
        json!({"backend": "s3", "status": "ok"}),
        "{ready}"
    );

    let (tenant, key) = create_tenant(&db, "S3 labels");
    let api = Api::new(&server.base, &key);
    api.seed("S3-1", &[5]).await;
    let order_id = api.place_one("S3-1").await;
    let list = wait_for(
        &api,
        &format!("/v1/shipments?order_id={order_id}"),
        "a labelled shipment",
        status_is("label_created"),
    )
    .await;
    let shipment = &list["items"][0];
    let id = shipment["id"].as_str().unwrap().to_owned();

    // The label is an object in the bucket, under the prefix; nothing on local disk.
    let object = s3.object_path(BUCKET, &format!("meridian/labels/{tenant}/{id}.pdf"));
    let stored = std::fs::read(&object).expect("the label is in the bucket");
    assert!(stored.starts_with(b"%PDF-1.4"));
    assert!(!db.data_dir().join("objects").join("labels").exists());

    // Downloaded through the authenticated URL ...
    let r = crate::support::http()
        .get(format!(
            "{}{}",
            server.base,
            shipment["label_url"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(r.bytes().await.unwrap(), stored);
    // ... and through a pre-signed link, without a credential.
    let link = api
        .ok(
            Method::GET,
            &format!("/v1/shipments/{id}/label-url?expires_in=120"),
            None,
        )
        .await;
    let r = crate::support::http()
        .get(format!("{}{}", server.base, link["url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap(), stored);

    // The S3 server goes away: readiness says so, and a new label fails its three
    // attempts and becomes a dead letter naming the bucket.
    s3.stop().await;
    let ready: Value = crate::support::http()
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["label_store"]["status"], "unavailable", "{ready}");
    let second = api.place_one("S3-1").await;
    let dead = wait_for(&api, "/v1/dead-letters", "a label dead letter", |page| {
        page["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|d| d["consumer"] == "fulfillment-labels"))
    })
    .await;
    let dead = dead["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["consumer"] == "fulfillment-labels")
        .unwrap()
        .clone();
    assert_eq!(dead["attempts"], 3);
    let reason = dead["reason"].as_str().unwrap();
    assert!(reason.contains("S3 bucket labels"), "{reason}");
    let path = format!("/v1/shipments?order_id={second}");
    let pending = api.ok(Method::GET, &path, None).await;
    assert_eq!(pending["items"][0]["status"], "pending");

    // It is back; the operator replays the dead letter and the label is made.
    s3.restart().await;
    api.ok(
        Method::POST,
        &format!("/v1/dead-letters/{}/replay", dead["id"].as_str().unwrap()),
        None,
    )
    .await;
    let list = wait_for(
        &api,
        &path,
        "the replayed label",
        status_is("label_created"),
    )
    .await;
    let id = list["items"][0]["id"].as_str().unwrap();
    let object = s3.object_path(BUCKET, &format!("meridian/labels/{tenant}/{id}.pdf"));
    assert!(std::fs::read(&object).unwrap().starts_with(b"%PDF-1.4"));
}

/// `meridian serve` with `env`, expected to exit at start; returns its stderr.
async fn refused_start(db: &Db, env: &[(&'static str, String)]) -> String {
    let mut cmd = command(db);
    cmd.arg("serve")
        .env("MERIDIAN_BIND", "127.0.0.1:0")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("serve kept running with {env:?}"))
        .expect("run meridian serve");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "serve started with {env:?}: {stderr}"
    );
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_s3_label_store_stops_the_start_with_the_reason() {
    let s3_dir = tempfile::tempdir().unwrap();
    let s3 = S3TestServer::start(s3_dir.path()).await;
    s3.create_bucket(BUCKET);
    let db = Db::sqlite();

    let mut env = s3_env(&s3, BUCKET, SECRET_ACCESS_KEY);
    env[0].1 = "s3://Not_A_Bucket".into();
    let err = refused_start(&db, &env).await;
    assert!(err.contains("invalid MERIDIAN_LABEL_STORE"), "{err}");

    let mut env = s3_env(&s3, BUCKET, SECRET_ACCESS_KEY);
    env.retain(|(k, _)| *k != "MERIDIAN_LABEL_STORE_ALLOW_HTTP");
    let err = refused_start(&db, &env).await;
    assert!(err.contains("MERIDIAN_LABEL_STORE_ALLOW_HTTP"), "{err}");

    let err = refused_start(&db, &s3_env(&s3, "no-such-bucket", SECRET_ACCESS_KEY)).await;
    assert!(
        err.contains("cannot use the S3 label store s3://no-such-bucket"),
        "{err}"
    );

    let err = refused_start(&db, &s3_env(&s3, BUCKET, "a-wrong-secret-key")).await;
    assert!(err.contains("cannot list S3 bucket labels"), "{err}");
}
