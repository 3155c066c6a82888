//! Test buses on the shared Kafka-protocol broker (`tansu`).

use std::sync::Arc;
use std::time::Duration;

use meridian_bus::Bus;
use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus_kafka::{KafkaBus, KafkaConfig};

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
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let work = async {
                    let bus = KafkaBus::connect(&url).await.ok()?;
                    bus.delete_deployment(&deployment).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        });
        let _ = cleaner.join();
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

/// The `tansu` binary that `scripts/services.sh kafka` installs (`MERIDIAN_TEST_TANSU`
/// overrides it).
fn tansu_binary() -> std::path::PathBuf {
    if let Ok(path) = std::env::var("MERIDIAN_TEST_TANSU") {
        return path.into();
    }
    let cargo_home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    cargo_home.join("bin").join("tansu")
}

/// A `tansu` broker child process of the test's own (in-memory storage: a restart loses
/// its data, so it serves outage tests, not durability tests).
pub struct PrivateBroker {
    pub port: u16,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free local port");
        let broker = PrivateBroker {
            port,
            child: tokio::sync::Mutex::new(None),
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
        let child = tokio::process::Command::new(&binary)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install it with scripts/services.sh kafka): {e}",
                    binary.display()
                )
            });
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
        *guard = Some(child);
    }

    pub async fn stop(&self) {
        if let Some(mut child) = self.child.lock().await.take() {
            let _ = child.kill().await;
        }
    }
}
