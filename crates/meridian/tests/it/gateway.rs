//! The gateway over real HTTP: rate limits shared by two instances through the real Redis,
//! the local fallback when a Redis the test owns is stopped, and split mode with a gateway
//! and two service processes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Api, Db, Server, create_tenant};

/// Instances sharing a PostgreSQL store share the key that seals the JWT signing keys.
const MASTER_KEY: (&str, &str) = (
    "MERIDIAN_AUTH_MASTER_KEY",
    "bWVyaWRpYW4tZ2F0ZXdheS10ZXN0LW1hc3Rlci1rZXk=",
);

fn master_key() -> (&'static str, String) {
    (MASTER_KEY.0, MASTER_KEY.1.to_owned())
}

fn shared_redis_url() -> String {
    std::env::var("MERIDIAN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn require_redis(url: &str) {
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or_default();
    if let Err(e) = std::net::TcpStream::connect(addr) {
        panic!("Redis at {url} is not reachable (run scripts/services.sh redis): {e}");
    }
}

/// A small read quota that does not refill during a test.
fn write_plan_config(db: &Db, read: &str) {
    std::fs::write(
        db.data_dir().join("meridian.toml"),
        format!("[rate_limits.plans.standard]\nread = \"{read}\"\n"),
    )
    .unwrap();
}

/// One GET with the key; returns status, headers and the JSON body.
async fn get(base: &str, key: &str, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = crate::support::http()
        .get(format!("{base}{path}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn readyz(base: &str) -> (u16, Value) {
    let resp = crate::support::http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn rate_limits_hold_across_two_instances_sharing_redis() {
    let url = shared_redis_url();
    require_redis(&url);
    let db = Db::postgres();
    write_plan_config(&db, "1/h burst 5");
    let (_, key) = create_tenant(&db, "limited");
    let prefix = format!("it:{}:", uuid::Uuid::now_v7().simple());
    let env = [
        ("MERIDIAN_RATE_LIMIT_POLICY", "redis".to_owned()),
        ("MERIDIAN_REDIS_URL", url),
        ("MERIDIAN_RATE_LIMIT_REDIS_PREFIX", prefix),
        master_key(),
    ];
    let a = Server::start_with(&db, &env).await;
    let b = Server::start_with(&db, &env).await;

    let mut admitted = 0;
    let mut refused = None;
    for i in 0..8 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, headers, body) = get(base, &key, "/v1/products").await;
        assert!(headers.contains_key("ratelimit-policy"), "{headers:?}");
        assert!(headers.contains_key("ratelimit"), "{headers:?}");
        match status {
            200 => admitted += 1,
            429 => refused = Some((headers, body)),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(admitted, 5, "the burst is shared by both instances");
    let (headers, body) = refused.expect("requests past the burst are refused");
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(headers["content-type"], "application/problem+json");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(headers["ratelimit-policy"], "\"read\";q=5;w=18000");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"read\";r=0;t=")
    );
    // Writes are another class with their own quota.
    let api = Api::new(&b.base, &key);
    let (status, _) = api
        .send(
            Method::POST,
            "/v1/warehouses",
            Some(json!({"code": "W1", "name": "W1", "priority": 0})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    let (_, ready) = readyz(&a.base).await;
    assert_eq!(
        ready["rate_limit"],
        json!({"policy": "redis", "degraded": false})
    );
}

/// A `redis-server` of the test's own, so stopping it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = PrivateRedis { port, child: None };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn /usr/bin/redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_redis_outage_falls_back_to_a_conservative_local_limit() {
    let mut redis = PrivateRedis::start();
    let db = Db::sqlite();
    write_plan_config(&db, "1/h burst 6");
    let (_, key) = create_tenant(&db, "fallback");
    let server = Server::start_with(
        &db,
        &[
            ("MERIDIAN_RATE_LIMIT_POLICY", "redis".to_owned()),
            (
                "MERIDIAN_REDIS_URL",
                format!("redis://127.0.0.1:{}", redis.port),
            ),
            ("MERIDIAN_RATE_LIMIT_INSTANCES", "2".to_owned()),
        ],
    )
    .await;
    assert_eq!(get(&server.base, &key, "/v1/products").await.0, 200);

    redis.stop();
    // Never a 5xx and never unlimited: this instance enforces half of the burst (3 of 6).
    let mut admitted = 0;
    for _ in 0..10 {
        let (status, headers, body) = get(&server.base, &key, "/v1/products").await;
        match status {
            200 => admitted += 1,
            429 => assert_eq!(body["code"], "rate_limited"),
            other => panic!("unexpected {other} while Redis is down: {body}"),
        }
        assert_eq!(headers["ratelimit-policy"], "\"read\";q=3;w=21600");
    }
    assert_eq!(admitted, 3);
    let (status, ready) = readyz(&server.base).await;
    assert_eq!(
        status, 200,
        "a Redis outage does not make the API unready: {ready}"
    );
    assert_eq!(
        ready["rate_limit"],
        json!({"policy": "redis", "degraded": true})
    );
    let metrics = crate::support::http()
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("meridian_rate_limit_degraded 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meridian_rate_limit_decisions_total")
                && l.contains("source=\"fallback\"")),
        "{metrics}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ready) = readyz(&server.base).await;
        if ready["rate_limit"]["degraded"] == json!(false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not notice Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The restarted Redis has no state: a full burst, decided by Redis again.
    let (status, headers, _) = get(&server.base, &key, "/v1/products").await;
    assert_eq!(status, 200);
    assert_eq!(headers["ratelimit-policy"], "\"read\";q=6;w=21600");
}

#[tokio::test]
async fn split_mode_routes_through_the_gateway_to_two_service_processes() {
    let db = Db::postgres();
    let (_, key) = create_tenant(&db, "split");
    let stock = Server::start_with(
        &db,
        &[
            ("MERIDIAN_SERVICES", "catalog,inventory".to_owned()),
            master_key(),
        ],
    )
    .await;
    let mut orders = Server::start_with(
        &db,
        &[
            ("MERIDIAN_SERVICES", "orders,auth".to_owned()),
            master_key(),
        ],
    )
    .await;
    let upstreams = format!(
        "catalog={0},inventory={0},orders={1},auth={1}",
        stock.base, orders.base
    );
    let gateway = Server::start_with(
        &db,
        &[
            ("MERIDIAN_SERVICES", "gateway".to_owned()),
            ("MERIDIAN_GATEWAY_UPSTREAMS", upstreams),
            ("MERIDIAN_BREAKER_FAILURES", "2".to_owned()),
            ("MERIDIAN_BREAKER_COOLDOWN_MS", "60000".to_owned()),
            ("MERIDIAN_UPSTREAM_RETRIES", "0".to_owned()),
            ("MERIDIAN_RATE_LIMIT_POLICY", "local".to_owned()),
            master_key(),
        ],
    )
    .await;

    // A service process does not serve the others' routes itself.
    let (status, _, body) = get(&stock.base, &key, "/v1/orders").await;
    assert_eq!(status, 404, "{body}");

    // Through the gateway: catalog and inventory on one process, orders on the other.
    let api = Api::new(&gateway.base, &key);
    api.seed("SPLIT-1", &[5]).await;
    let order = api
        .ok(
            Method::POST,
            "/v1/orders",
            Some(json!({"lines": [{"sku": "SPLIT-1", "quantity": 2}]})),
        )
        .await;
    let id = order["id"].as_str().expect("order id").to_owned();
    let fetched = api.ok(Method::GET, &format!("/v1/orders/{id}"), None).await;
    assert_eq!(fetched["id"], order["id"]);

    // The request id goes through and comes back; rate limits are the gateway's.
    let resp = crate::support::http()
        .get(format!("{}/v1/products/SPLIT-1", gateway.base))
        .bearer_auth(&key)
        .header("x-request-id", "split-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "split-req-1");
    assert!(resp.headers().contains_key("ratelimit"));
    let (_, direct, _) = get(&stock.base, &key, "/v1/products/SPLIT-1").await;
    assert!(
        !direct.contains_key("ratelimit"),
        "services behind the gateway do not limit"
    );

    let (status, ready) = readyz(&gateway.base).await;
    assert_eq!(status, 200);
    assert_eq!(ready["services"], "gateway");
    assert_eq!(ready["upstreams"].as_array().unwrap().len(), 4, "{ready}");

    // The orders process goes away: 502 until the breaker opens, then 503 at once.
    orders.kill9();
    let (status, _, body) = get(&gateway.base, &key, "/v1/orders").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("bad_gateway")),
        "{body}"
    );
    let (status, _, _) = get(&gateway.base, &key, "/v1/orders").await;
    assert_eq!(status, 502);
    let (status, headers, body) = get(&gateway.base, &key, "/v1/orders").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    // The other upstream is unaffected.
    assert_eq!(get(&gateway.base, &key, "/v1/products").await.0, 200);
    let (_, ready) = readyz(&gateway.base).await;
    let circuits: Vec<_> = ready["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["service"].as_str().unwrap().to_owned(),
                u["circuit"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        circuits.contains(&("orders".into(), "open".into())),
        "{circuits:?}"
    );
    assert!(
        circuits.contains(&("catalog".into(), "closed".into())),
        "{circuits:?}"
    );
}

#[tokio::test]
async fn requests_get_ids_cors_and_one_json_access_log_line() {
    let db = Db::sqlite();
    let (tenant, key) = create_tenant(&db, "hygiene");
    let server = Server::start_with(
        &db,
        &[
            ("MERIDIAN_LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "warn,meridian::access=info".to_owned()),
            (
                "MERIDIAN_CORS_ORIGINS",
                "https://app.example.com".to_owned(),
            ),
        ],
    )
    .await;
    let http = crate::support::http();

    // A client's request id is kept; a missing one is generated.
    let resp = http
        .get(format!("{}/v1/products", server.base))
        .bearer_auth(&key)
        .header("x-request-id", "hygiene-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "hygiene-1");
    let resp = http
        .get(format!("{}/v1/products", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "{generated}");

    // CORS: a preflight from an allowed origin is answered without credentials.
    let preflight = http
        .request(Method::OPTIONS, format!("{}/v1/orders", server.base))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = http
        .get(format!("{}/v1/products", server.base))
        .bearer_auth(&key)
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    // The access log: one JSON line for the request, fields at the top level.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["fields"]["request_id"] == "hygiene-1")
            .collect::<Vec<_>>();
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "one access event per request: {found:?}");
            break found.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "no access log line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let f = &line["fields"];
    assert_eq!(line["target"], "meridian::access");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "/v1/products");
    assert_eq!(f["status"], 200);
    assert_eq!(f["tenant"], tenant.as_str());
    assert!(f["latency_ms"].as_f64().is_some(), "{line}");
    assert!(f["bytes"].as_u64().is_some(), "{line}");
}

#[tokio::test]
async fn the_token_endpoint_is_limited_per_client_ip() {
    let db = Db::sqlite();
    std::fs::write(
        db.data_dir().join("meridian.toml"),
        "[rate_limits.plans.standard]\nauth = \"1/h burst 2\"\n",
    )
    .unwrap();
    let server =
        Server::start_with(&db, &[("MERIDIAN_RATE_LIMIT_POLICY", "local".to_owned())]).await;
    let http = crate::support::http();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = http
            .post(format!("{}/v1/auth/token", server.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&client_id=nobody&client_secret=wrong")
            .send()
            .await
            .unwrap();
        let limited = resp.status() == 429;
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(headers.contains_key("ratelimit-policy"), "{headers:?}");
        if limited {
            assert_eq!(body["code"], "rate_limited", "{body}");
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(limited);
    }
    assert_eq!(
        statuses,
        [false, false, true],
        "the third attempt from this IP is refused"
    );
}
