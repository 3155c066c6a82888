//! Test buses on the shared Kafka-protocol broker (`tansu`), and private `tansu` brokers
//! this process starts and restarts.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use meridian_bus::Bus;
use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus_kafka::{KafkaBus, KafkaConfig};
use tokio::process::{Child, Command};

pub fn shared_url() -> String {
    std::env::var("MERIDIAN_TEST_KAFKA_URL").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub async fn connect(url: &str) -> KafkaBus {
    let config = KafkaConfig::from_url(url).expect("a valid MERIDIAN_TEST_KAFKA_URL");
    KafkaBus::connect_with(config).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the Kafka broker at {url} (start it with `scripts/services.sh kafka` \
             or set MERIDIAN_TEST_KAFKA_URL): {e}"
        )
    })
}

/// Deletes a deployment's topics when the test ends, on a thread of its own: the test's
/// runtime is going away while this drops.
pub struct Cleanup {
    pub url: String,
    pub deployment: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let url = self.url.clone();
        let deployment = self.deployment.clone();
        meridian_bus::conformance::finish_on_own_thread(async move {
            let work = async {
                let bus = KafkaBus::connect(&url).await.ok()?;
                bus.delete_deployment(&deployment).await.ok()
            };
            tokio::time::timeout(Duration::from_secs(10), work).await
        });
    }
}

pub async fn shared_test_bus() -> TestBus {
    let url = shared_url();
    let bus = connect(&url).await;
    let deployment = unique_deployment();
    let reopen_url = url.clone();
    TestBus {
        bus: Arc::new(bus),
        reopen: Some(Box::new(move || {
            let url = reopen_url.clone();
            Box::pin(async move { Arc::new(connect(&url).await) as Arc<dyn Bus> })
        })),
        restart_broker: None,
        _guard: Box::new(Cleanup {
            url,
            deployment: deployment.clone(),
        }),
        deployment,
    }
}

/// The `tansu` version `scripts/services.sh` installs (keep the two in step).
const TANSU_VERSION: &str = "0.6.0";

/// The `tansu` binary that `scripts/services.sh kafka` installs, built with the in-memory
/// and the PostgreSQL storage engines: `$CARGO_HOME/tansu-<version>-pg/bin/tansu`
/// (`MERIDIAN_TEST_TANSU` overrides it).
fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("MERIDIAN_TEST_TANSU") {
        return path.into();
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    cargo_home
        .join(format!("tansu-{TANSU_VERSION}-pg"))
        .join("bin")
        .join("tansu")
}

/// A `tansu` broker child process of the test's own, on a free port, restartable on the
/// same port and storage. In memory ([`PrivateBroker::start`]) a restart loses everything,
/// so it serves outage tests; on PostgreSQL ([`PrivateBroker::start_durable`]) topics,
/// records, consumer-group offsets and idempotent-producer state survive a restart.
///
/// With `MERIDIAN_TEST_TANSU_LOG=<directory>` the broker's output goes to
/// `<directory>/tansu-<port>.log` (otherwise it is discarded).
pub struct PrivateBroker {
    pub port: u16,
    storage_engine: String,
    child: tokio::sync::Mutex<Option<Child>>,
    /// Declared after `child`, so it is dropped after it.
    _database: Option<TansuDatabase>,
}

impl PrivateBroker {
    /// A broker keeping its data in memory.
    pub async fn start() -> PrivateBroker {
        Self::start_with("memory://tansu/".into(), None).await
    }

    /// A broker keeping its data in a PostgreSQL database of its own, made for it and
    /// dropped when the broker is.
    pub async fn start_durable() -> PrivateBroker {
        let database = TansuDatabase::create().await;
        Self::start_with(database.storage_url(), Some(database)).await
    }

    async fn start_with(storage_engine: String, database: Option<TansuDatabase>) -> PrivateBroker {
        let port = Self::restartable_port();
        let broker = PrivateBroker {
            port,
            storage_engine,
            child: tokio::sync::Mutex::new(None),
            _database: database,
        };
        broker.start_again().await;
        broker
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn start_again(&self) {
        let mut guard = self.child.lock().await;
        if guard.is_some() {
            return;
        }
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let binary = tansu_binary();
        let (stdout, stderr) = self.output();
        let child = Command::new(&binary)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &self.storage_engine])
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install it with scripts/services.sh kafka): {e}",
                    binary.display()
                )
            });
        let mut child = child;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu on port {} did not start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Something answering on the port is not enough: it must be this broker (a tansu
        // that could not bind has exited).
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "tansu on port {} exited ({status}); another process holds the port",
                self.port
            );
        }
        *guard = Some(child);
    }

    /// Stops the broker as a crash would (SIGKILL): nothing gets a chance to be flushed.
    pub async fn stop(&self) {
        if let Some(mut child) = self.child.lock().await.take() {
            let _ = child.kill().await;
        }
    }

    /// A free port for a broker that restarts on it. Ports the kernel hands out (to `bind` on
    /// port 0 and to outgoing connections) come from the ephemeral range, 32768–60999 here, so
    /// one of those could be taken by another test's socket while the broker is down; this
    /// picks a free port below that range instead.
    fn restartable_port() -> u16 {
        use std::hash::{BuildHasher, RandomState};
        for attempt in 0u32.. {
            let random = RandomState::new().hash_one(attempt);
            let port = 20_000 + (random % 12_000) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
            assert!(attempt < 1_000, "no free port below the ephemeral range");
        }
        unreachable!()
    }

    /// The conformance suite's broker restart: a crash, then a start on the same storage.
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    fn output(&self) -> (Stdio, Stdio) {
        let Some(dir) = std::env::var_os("MERIDIAN_TEST_TANSU_LOG") else {
            return (Stdio::null(), Stdio::null());
        };
        let path = PathBuf::from(dir).join(format!("tansu-{}.log", self.port));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let copy = file.try_clone().expect("a second handle on the log");
        (copy.into(), file.into())
    }
}

/// A test bus on a private broker with PostgreSQL storage, which the suite's
/// `broker_restart` case crashes and starts again mid-stream.
pub async fn private_test_bus() -> TestBus {
    let broker = Arc::new(PrivateBroker::start_durable().await);
    let url = broker.url();
    let bus = connect(&url).await;
    let restarted = broker.clone();
    TestBus {
        bus: Arc::new(bus),
        deployment: unique_deployment(),
        reopen: Some(Box::new(move || {
            let url = url.clone();
            Box::pin(async move { Arc::new(connect(&url).await) as Arc<dyn Bus> })
        })),
        restart_broker: Some(Box::new(move || {
            let broker = restarted.clone();
            Box::pin(async move { broker.restart().await })
        })),
        // The broker and its database live as long as the test; both go afterwards.
        _guard: Box::new(broker),
    }
}

/// The tables tansu's PostgreSQL storage engine needs; it does not create them itself.
const TANSU_SCHEMA: &str = include_str!("tansu_postgres.sql");

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL server the tests use (`MERIDIAN_TEST_DATABASE_URL`).
fn database_server_url() -> String {
    std::env::var("MERIDIAN_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

/// A database of its own for one private broker, with tansu's tables; dropped (with
/// whatever connections are left on it) when this is.
struct TansuDatabase {
    name: String,
}

impl TansuDatabase {
    async fn create() -> TansuDatabase {
        let server = database_server_url();
        let name = format!("meridian_tansu_{}", unique_deployment());
        pg_connect(&server)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let database = TansuDatabase { name };
        pg_connect(&database.url())
            .await
            .batch_execute(TANSU_SCHEMA)
            .await
            .unwrap_or_else(|e| panic!("cannot create tansu's tables in {}: {e}", database.name));
        database
    }

    /// The server's URL with this database in its path.
    fn url(&self) -> String {
        let server = database_server_url();
        let (base, query) = server.split_once('?').unwrap_or((&server, ""));
        let authority = base.find("://").map_or(0, |i| i + 3);
        let base = base[authority..]
            .find('/')
            .map_or(base, |slash| &base[..authority + slash]);
        if query.is_empty() {
            format!("{base}/{}", self.name)
        } else {
            format!("{base}/{}?{query}", self.name)
        }
    }

    /// What tansu gets: without TLS unless the URL asks for it, since tansu checks the
    /// server's certificate against the system's roots and a local test server's
    /// self-signed one fails that (its client prefers TLS when the server offers it).
    fn storage_url(&self) -> String {
        let url = self.url();
        if url.contains("sslmode=") {
            url
        } else if url.contains('?') {
            format!("{url}&sslmode=disable")
        } else {
            format!("{url}?sslmode=disable")
        }
    }
}

impl Drop for TansuDatabase {
    fn drop(&mut self) {
        // Drop cannot await: run the DROP on a thread of its own with a small runtime.
        let (server, name) = (database_server_url(), self.name.clone());
        let dropped = meridian_bus::conformance::finish_on_own_thread(async move {
            let (client, connection) =
                tokio_postgres::connect(&server, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await?;
            drop(client);
            let _ = driver.await;
            Ok::<_, tokio_postgres::Error>(())
        });
        if !matches!(dropped, Some(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {url} is required for a durable tansu broker \
                 (set MERIDIAN_TEST_DATABASE_URL): {e}"
            )
        });
    tokio::spawn(connection);
    client
}
