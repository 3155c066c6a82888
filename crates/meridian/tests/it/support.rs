//! Starting the real binary against a fresh SQLite directory or PostgreSQL schema.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const EXE: &str = env!("CARGO_BIN_EXE_meridian");

/// 32 bytes of base64 for the PostgreSQL tests' instances.
pub const TEST_MASTER_KEY: &str = "bWVyaWRpYW4tdGVzdC1tYXN0ZXIta2V5LTMyLWJ5dGU=";

/// Where a test's data lives; cleaned up on drop.
pub enum Db {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        url: String,
        schema: String,
        dir: tempfile::TempDir,
    },
}

impl Db {
    pub fn sqlite() -> Db {
        Db::Sqlite {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A fresh schema in the test database. Fails the test if PostgreSQL cannot be reached:
    /// a backend test is never skipped.
    pub fn postgres() -> Db {
        let url = std::env::var("MERIDIAN_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("bb_{}", uuid::Uuid::now_v7().simple());
        pg_exec(&url, &format!("CREATE SCHEMA {schema}"));
        Db::Postgres {
            url,
            schema,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Db::Sqlite { dir } => vec![
                ("STORAGE_BACKEND", "sqlite".into()),
                ("MERIDIAN_DATA_DIR", dir.path().display().to_string()),
            ],
            Db::Postgres { url, schema, dir } => vec![
                ("STORAGE_BACKEND", "postgres".into()),
                ("DATABASE_URL", url.clone()),
                ("MERIDIAN_DATABASE_SCHEMA", schema.clone()),
                ("MERIDIAN_DATA_DIR", dir.path().display().to_string()),
                // Required on PostgreSQL: every instance seals signing keys with it.
                ("MERIDIAN_AUTH_MASTER_KEY", TEST_MASTER_KEY.into()),
            ],
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        match self {
            Db::Sqlite { dir } | Db::Postgres { dir, .. } => dir.path().to_path_buf(),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Postgres { url, schema, .. } = self {
            pg_exec(url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

fn pg_exec(url: &str, sql: &str) {
    let url = url.to_owned();
    let sql = sql.to_owned();
    // Runs on its own thread and runtime so it works from Drop and from async tests alike.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL at {url} is not reachable (run scripts/services.sh): {e}")
                });
            tokio::spawn(conn);
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    })
    .join()
    .expect("PostgreSQL helper thread");
}

/// Runs `meridian <args>` to completion with the database's environment.
pub fn run_cli(db: &Db, args: &[&str]) -> Output {
    command(db).args(args).output().expect("run meridian")
}

pub fn command(db: &Db) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        // Load tests drive one tenant far past any plan's quota; the gateway's own tests
        // turn rate limits back on.
        .env("MERIDIAN_RATE_LIMIT_POLICY", "off")
        .current_dir(db.data_dir())
        .envs(db.env());
    cmd
}

/// `meridian tenants create NAME --json`, returning (tenant id, api key).
pub fn create_tenant(db: &Db, name: &str) -> (String, String) {
    let out = run_cli(db, &["tenants", "create", name, "--json"]);
    assert!(
        out.status.success(),
        "tenants create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("tenants create --json prints JSON");
    (
        v["tenant_id"].as_str().unwrap().to_owned(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}

/// A running `meridian serve`.
pub struct Server {
    pub base: String,
    child: Child,
    pub log: PathBuf,
}

impl Server {
    pub async fn start(db: &Db) -> Server {
        Self::start_with(db, &[]).await
    }

    /// As [`Server::start`], with extra environment (a bus backend, a deployment id).
    pub async fn start_with(db: &Db, env: &[(&str, String)]) -> Server {
        Self::start_in(db, env, &db.data_dir()).await
    }

    /// As [`Server::start_with`], in the working directory `dir` (where the plugin
    /// manager runs plugins' relative commands).
    pub async fn start_in(db: &Db, env: &[(&str, String)], dir: &std::path::Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = db.data_dir().join(format!("server-{port}.log"));
        let child = command(db)
            .current_dir(dir)
            .arg("serve")
            .env("MERIDIAN_BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn meridian serve");
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "server not ready; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// SIGKILL: no shutdown hook runs, exactly like a crash.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for one tenant.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    key: String,
    http: reqwest::Client,
}

/// An HTTP client for talking to the processes under test. Every client of this binary is
/// built here: reqwest's TLS has no provider of its own, so the process's must be installed
/// first.
pub fn http() -> reqwest::Client {
    meridian_http::install_crypto_provider();
    reqwest::Client::new()
}

impl Api {
    pub fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.to_owned(),
            key: key.to_owned(),
            http: http(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Places an order for one unit of `sku` (2xx expected); its id.
    pub async fn place_one(&self, sku: &str) -> String {
        let order = self
            .ok(
                reqwest::Method::POST,
                "/v1/orders",
                Some(serde_json::json!({"lines": [{"sku": sku, "quantity": 1}]})),
            )
            .await;
        order["id"].as_str().unwrap().to_owned()
    }

    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self
            .send(method.clone(), path, body)
            .await
            .expect("request");
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Warehouses W0..Wn-1 and one product `sku` with `stock[i]` units in warehouse i.
    pub async fn seed(&self, sku: &str, stock: &[i64]) {
        for (i, on_hand) in stock.iter().enumerate() {
            let code = format!("W{i}");
            let (status, _) = self
                .send(
                    reqwest::Method::POST,
                    "/v1/warehouses",
                    Some(json!({"code": code, "name": code, "priority": i})),
                )
                .await
                .unwrap();
            assert!(status == 201 || status == 409, "create warehouse: {status}");
            if i == 0 {
                self.ok(reqwest::Method::POST, "/v1/products", Some(json!({"sku": sku, "name": sku, "price": {"amount": 999, "currency": "EUR"}}))).await;
            }
            self.ok(
                reqwest::Method::PUT,
                &format!("/v1/inventory/{code}/{sku}"),
                Some(json!({"on_hand": on_hand, "reason": "test seed"})),
            )
            .await;
        }
    }
}

/// Waits for the line a starting `meridian sidecar` prints once it listens
/// (`{"listening": "<addr>"}`) and returns its base URL; the rest of its stdout is read in
/// the background, so the sidecar never blocks on a full pipe.
pub async fn sidecar_base_url(child: &mut tokio::process::Child) -> String {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stdout = child.stdout.take().expect("the sidecar's stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the sidecar printed its address in time")
        .expect("read stdout")
        .expect("the sidecar exited before listening");
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    let base = format!("http://{}", v["listening"].as_str().unwrap());
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    base
}
