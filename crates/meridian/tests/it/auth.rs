//! The auth service across instances: two `meridian serve` processes on one database, over
//! real HTTP. A token issued by one is accepted by the other, and a revocation made on one
//! is enforced by the other within a second; plus the auth CLI.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Db, Server, create_tenant, run_cli};

async fn token(base: &str, form: &str) -> (u16, Value) {
    let r = crate::support::http()
        .post(format!("{base}/v1/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .expect("token request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn status(base: &str, bearer: &str) -> u16 {
    crate::support::http()
        .get(format!("{base}/v1/products"))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

/// Polls `base` with `bearer` until it is refused; how long that took after `since`.
async fn refused_after(base: &str, bearer: &str, since: Instant) -> Duration {
    loop {
        if status(base, bearer).await == 401 {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn revocation_reaches_the_second_instance(db: Db, env: &[(&str, String)]) {
    let (_tenant, key) = create_tenant(&db, "acme");
    let key_id = key.split('_').nth(1).unwrap().to_owned();
    let a = Server::start_with(&db, env).await;
    let b = Server::start_with(&db, env).await;

    // A JWT from A works on B (same signing keys, from the store).
    let (s, body) = token(
        &a.base,
        &format!("grant_type=client_credentials&client_id={key_id}&client_secret={key}"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let jwt = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(status(&b.base, &jwt).await, 200);
    // And B has the API key cached.
    assert_eq!(status(&b.base, &key).await, 200);

    // Revoke the JWT on A: B refuses it within a second.
    let r = crate::support::http()
        .post(format!("{}/v1/auth/revoke", a.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={jwt}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let took = refused_after(&b.base, &jwt, Instant::now()).await;
    eprintln!("access-token revocation seen by the second instance after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Rotate the API key on A: the old secret, cached on B, is refused there within a second.
    let r = crate::support::http()
        .post(format!("{}/v1/api-keys/{key_id}/rotate", a.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rotated: Value = r.json().await.unwrap();
    let new_key = rotated["token"].as_str().unwrap().to_owned();
    let took = refused_after(&b.base, &key, Instant::now()).await;
    eprintln!("api-key rotation seen by the second instance after {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(status(&b.base, &new_key).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_a_second_instance_on_postgres() {
    revocation_reaches_the_second_instance(Db::postgres(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_a_second_instance_on_sqlite() {
    revocation_reaches_the_second_instance(Db::sqlite(), &[]).await;
}

/// With the store poll slowed to a minute, only the bus can deliver the revocation in time:
/// this checks the bus path on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_travels_by_the_bus_when_the_poll_is_slow() {
    revocation_reaches_the_second_instance(
        Db::postgres(),
        &[("MERIDIAN_AUTH_REVOCATION_POLL", "60s".to_owned())],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_users_and_rotates_keys() {
    let db = Db::sqlite();
    let out = run_cli(
        &db,
        &[
            "tenants",
            "create",
            "acme",
            "--owner-email",
            "owner@acme.test",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password "))
        .and_then(|l| l.split(' ').next())
        .expect("a generated password is printed")
        .to_owned();
    let tenant = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tenant acme ("))
        .map(|l| l.trim_end_matches(')').to_owned())
        .expect("tenant line");

    let mut cmd = crate::support::command(&db);
    let mut child = cmd
        .args([
            "users",
            "create",
            "--tenant",
            &tenant,
            "--email",
            "viewer@acme.test",
            "--role",
            "viewer",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "a viewer's long password").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("password"),
        "a given password is not printed"
    );

    let server = Server::start(&db).await;
    let (s, body) = token(
        &server.base,
        &format!("grant_type=password&username=owner%40acme.test&password={password}"),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = token(
        &server.base,
        "grant_type=password&username=viewer%40acme.test&password=a+viewer%27s+long+password",
    )
    .await;
    assert_eq!(s, 200);

    let jwks = |base: String| async move {
        crate::support::http()
            .get(format!("{base}/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["keys"]
            .as_array()
            .unwrap()
            .len()
    };
    let old_token = body["access_token"].as_str().unwrap().to_owned();
    let before = jwks(server.base.clone()).await;
    let out = run_cli(&db, &["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("new signing key "));
    // An instance started now publishes the new key beside the old one, and still accepts
    // tokens the old key signed.
    let second = Server::start(&db).await;
    assert_eq!(jwks(second.base.clone()).await, before + 1);
    assert_eq!(status(&second.base, &old_token).await, 200);
}
