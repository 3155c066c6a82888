//! `TestApp`: the real router on a real SQLite store in a fresh temporary directory, driven
//! with `oneshot`, plus fixtures and assertions shared by the tests.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use meridian_api::{ApiConfig, AppState, install_metrics, router};
use meridian_core::{EventSource, TenantId};
use meridian_store::sqlite::SqliteConfig;
use meridian_store::{Store, StoreConfig};
use serde_json::{Value, json};
use tempfile::TempDir;
use tower::ServiceExt;

pub struct TestApp {
    router: Router,
    pub store: Arc<dyn Store>,
    pub auth: Arc<meridian_api::auth::AuthService>,
    /// The key the app's signing keys are sealed with (to forge tokens in tests).
    pub master_key: meridian_auth::MasterKey,
    /// The default caller's tenant and token ("tenant A").
    pub tenant: TenantId,
    pub token: String,
    _dir: TempDir,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_config(ApiConfig::default()).await
    }

    pub async fn with_config(config: ApiConfig) -> Self {
        Self::build(config, None, |_| {}).await
    }

    /// The app with auth settings changed by `f` (throttle limits, TTLs).
    pub async fn with_auth(f: impl FnOnce(&mut meridian_api::auth::AuthConfig)) -> Self {
        Self::build(ApiConfig::default(), None, f).await
    }

    /// The app with a bus wired into its state (for `/readyz`).
    pub async fn with_bus(bus: Arc<dyn meridian_bus::Bus>) -> Self {
        Self::build(ApiConfig::default(), Some(bus), |_| {}).await
    }

    async fn build(
        config: ApiConfig,
        bus: Option<Arc<dyn meridian_bus::Bus>>,
        auth_config: impl FnOnce(&mut meridian_api::auth::AuthConfig),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, plugins) = meridian_store::open_with_plugins(
            StoreConfig::Sqlite(SqliteConfig {
                path: dir.path().join("meridian.db"),
                readers: 2,
            }),
            EventSource::new("test").expect("valid deployment id"),
        )
        .await
        .expect("open the SQLite store");
        let master_key = meridian_auth::MasterKey::generate();
        let mut auth_settings = meridian_api::auth::AuthConfig::new(master_key.clone());
        auth_config(&mut auth_settings);
        let auth = meridian_api::auth::AuthService::start(store.clone(), auth_settings)
            .await
            .expect("start the auth service");
        let state = AppState {
            store: store.clone(),
            bus,
            metrics: install_metrics(),
            config,
            auth: auth.clone(),
            plugins,
            plugin_status: None,
        };
        let (tenant, token) = create_tenant(store.as_ref(), "tenant-a").await;
        Self {
            router: router(state),
            auth,
            master_key,
            store,
            tenant,
            token,
            _dir: dir,
        }
    }

    /// Another tenant with its own API key, made through the store as an operator would.
    pub async fn new_tenant(&self, name: &str) -> (TenantId, String) {
        create_tenant(self.store.as_ref(), name).await
    }

    /// A request as the default tenant.
    pub fn call(&self, method: Method, uri: &str) -> Call<'_> {
        Call {
            app: self,
            method,
            uri: uri.to_owned(),
            token: Some(self.token.clone()),
            headers: Vec::new(),
            body: None,
        }
    }

    pub async fn get(&self, uri: &str) -> TestResponse {
        self.call(Method::GET, uri).send().await
    }

    pub async fn post(&self, uri: &str, body: Value) -> TestResponse {
        self.call(Method::POST, uri).json(&body).send().await
    }

    pub async fn put(&self, uri: &str, body: Value) -> TestResponse {
        self.call(Method::PUT, uri).json(&body).send().await
    }

    pub async fn patch(&self, uri: &str, body: Value) -> TestResponse {
        self.call(Method::PATCH, uri).json(&body).send().await
    }

    pub async fn delete(&self, uri: &str) -> TestResponse {
        self.call(Method::DELETE, uri).send().await
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("read the response body")
            .to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// Places an order for one unit of `sku` (201 expected); its id.
    pub async fn place_one(&self, sku: &str) -> String {
        let r = self
            .post(
                "/v1/orders",
                json!({"lines": [{"sku": sku, "quantity": 1}]}),
            )
            .await;
        r.assert_status(StatusCode::CREATED);
        r.json()["id"].as_str().unwrap().to_owned()
    }

    /// Products SKU-1 (10.00 USD) and SKU-2 (2.50 USD); warehouses WH-A (priority 1) and WH-B
    /// (priority 2); SKU-1 has 5 in WH-A and 10 in WH-B, SKU-2 has 3 in WH-A.
    pub async fn seed(&self) {
        for (sku, amount) in [("SKU-1", 1000), ("SKU-2", 250)] {
            self.post(
                "/v1/products",
                json!({"sku": sku, "name": format!("Product {sku}"), "price": {"amount": amount, "currency": "USD"}}),
            )
            .await
            .assert_status(StatusCode::CREATED);
        }
        for (code, priority) in [("WH-A", 1), ("WH-B", 2)] {
            self.post(
                "/v1/warehouses",
                json!({"code": code, "name": format!("Warehouse {code}"), "priority": priority}),
            )
            .await
            .assert_status(StatusCode::CREATED);
        }
        for (wh, sku, n) in [
            ("WH-A", "SKU-1", 5),
            ("WH-B", "SKU-1", 10),
            ("WH-A", "SKU-2", 3),
        ] {
            self.put(&format!("/v1/inventory/{wh}/{sku}"), json!({"on_hand": n}))
                .await
                .assert_status(StatusCode::OK);
        }
    }

    /// Everything a bad request could have changed for the default tenant: the catalog,
    /// warehouses, stock and ledgers of the seeded SKUs, orders, and the outbox.
    pub async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for uri in [
            "/v1/products?limit=200",
            "/v1/warehouses",
            "/v1/inventory/SKU-1",
            "/v1/inventory/SKU-2",
            "/v1/inventory/SKU-1/ledger?limit=200",
            "/v1/inventory/SKU-2/ledger?limit=200",
            "/v1/orders?limit=200",
        ] {
            let r = self.get(uri).await;
            // Unseeded apps answer 404 for the SKUs; that is part of the state too.
            out.insert(
                uri.to_owned(),
                json!({"status": r.status.as_u16(), "body": r.json()}),
            );
        }
        let outbox = self.store.outbox_after(0, 10_000).await.expect("outbox");
        let mine = outbox
            .iter()
            .filter(|r| r.envelope.tenant == self.tenant)
            .count();
        out.insert("outbox events".into(), json!(mine));
        Value::Object(out)
    }

    /// `(on_hand, reserved, available)` of `sku` in warehouse `wh`.
    pub async fn level(&self, sku: &str, wh: &str) -> (i64, i64, i64) {
        let r = self.get(&format!("/v1/inventory/{sku}")).await;
        r.assert_status(StatusCode::OK);
        let v = r.json();
        let level = v["levels"]
            .as_array()
            .expect("levels")
            .iter()
            .find(|l| l["warehouse"] == wh)
            .unwrap_or_else(|| panic!("no level for {sku} in {wh}: {v}"));
        (
            level["on_hand"].as_i64().expect("on_hand"),
            level["reserved"].as_i64().expect("reserved"),
            level["available"].as_i64().expect("available"),
        )
    }

    pub async fn order_count(&self) -> usize {
        let r = self.get("/v1/orders?limit=200").await;
        r.assert_status(StatusCode::OK);
        r.json()["items"].as_array().expect("items").len()
    }
}

async fn create_tenant(store: &dyn Store, name: &str) -> (TenantId, String) {
    let tenant = store.create_tenant(name).await.expect("create tenant");
    let key = store
        .create_api_key(tenant.id, "test key")
        .await
        .expect("create api key");
    (tenant.id, key.token)
}

/// A request under construction.
pub struct Call<'a> {
    app: &'a TestApp,
    method: Method,
    uri: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<(Option<String>, Vec<u8>)>,
}

impl Call<'_> {
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn no_auth(mut self) -> Self {
        self.token = None;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn json(self, body: &Value) -> Self {
        let bytes = serde_json::to_vec(body).expect("serialize");
        self.raw(Some("application/json"), bytes)
    }

    /// A body with any content type (or none), for malformed-input tests.
    pub fn raw(mut self, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some((content_type.map(str::to_owned), body.into()));
        self
    }

    pub async fn send(self) -> TestResponse {
        let mut b = Request::builder().method(self.method).uri(&self.uri);
        if let Some(token) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (n, v) in &self.headers {
            b = b.header(n.as_str(), v.as_str());
        }
        let body = match self.body {
            Some((ct, bytes)) => {
                if let Some(ct) = ct {
                    b = b.header(header::CONTENT_TYPE, ct);
                }
                Body::from(bytes)
            }
            None => Body::empty(),
        };
        self.app.send(b.body(body).expect("valid request")).await
    }
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    /// The body as JSON (`null` when empty).
    pub fn json(&self) -> Value {
        if self.body.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }

    /// Asserts an RFC 9457 problem with `status` and `code`, and returns its body.
    #[track_caller]
    pub fn problem(&self, status: StatusCode, code: &str) -> Value {
        self.assert_status(status);
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(
            ct,
            "application/problem+json",
            "content type; body: {}",
            self.text()
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["status"], status.as_u16(), "{v}");
        assert_eq!(v["type"], format!("urn:meridian:problem:{code}"), "{v}");
        assert!(v["title"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        assert!(v["detail"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
        v
    }

    /// The fields named in a problem's `errors`.
    pub fn error_fields(problem: &Value) -> Vec<String> {
        problem["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
