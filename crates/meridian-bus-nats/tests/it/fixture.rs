//! Test buses: on the shared NATS, or on a private `nats-server` this process starts and
//! restarts.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_bus::Bus;
use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus_nats::{NatsBus, NatsConfig};
use tokio::process::{Child, Command};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

pub fn shared_url() -> String {
    std::env::var("MERIDIAN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A config with short failure timers, so outage tests finish quickly.
pub fn test_config(url: &str) -> NatsConfig {
    NatsConfig {
        unavailable_after: Duration::from_secs(3),
        heartbeat: Duration::from_secs(1),
        ..NatsConfig::new(url)
    }
}

pub async fn connect(url: &str) -> NatsBus {
    NatsBus::connect_with(test_config(url))
        .await
        .unwrap_or_else(|e| panic!("cannot reach NATS at {url} (set MERIDIAN_TEST_NATS_URL): {e}"))
}

/// Deletes a deployment's streams when the test ends, on a thread of its own: the test's
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
                let bus = NatsBus::connect(&url).await.ok()?;
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

/// A `nats-server` child process with JetStream and its own store, restartable on the same
/// port and store.
pub struct PrivateServer {
    pub port: u16,
    store: tempfile::TempDir,
    child: tokio::sync::Mutex<Option<Child>>,
}

impl PrivateServer {
    pub async fn start() -> Arc<PrivateServer> {
        Self::start_with("").await
    }

    /// Starts a server with `config` (nats-server configuration syntax) on top of the
    /// command-line settings.
    pub async fn start_with(config: &str) -> Arc<PrivateServer> {
        let port = free_port();
        let store = tempfile::tempdir().expect("a temporary store directory");
        std::fs::write(store.path().join("server.conf"), config).expect("write the config");
        let child = spawn_server(port, store.path()).await;
        Arc::new(PrivateServer {
            port,
            store,
            child: tokio::sync::Mutex::new(Some(child)),
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server: gracefully (SIGTERM, as a service manager would) or as a crash
    /// (SIGKILL: whatever the server had not written to its store is lost).
    pub async fn stop(&self, graceful: bool) {
        let mut guard = self.child.lock().await;
        if let Some(mut child) = guard.take() {
            if let Some(pid) = child.id() {
                let signal = if graceful { "-TERM" } else { "-KILL" };
                let _ = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    pub async fn start_again(&self) {
        let mut guard = self.child.lock().await;
        if guard.is_none() {
            *guard = Some(spawn_server(self.port, self.store.path()).await);
        }
    }

    /// The conformance suite's broker restart: a crash, the harder case for resuming.
    pub async fn restart(&self) {
        self.stop(false).await;
        self.start_again().await;
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

async fn spawn_server(port: u16, store: &Path) -> Child {
    let store: PathBuf = store.to_owned();
    let child = Command::new(NATS_SERVER)
        .arg("-c")
        .arg(store.join("server.conf"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {NATS_SERVER}: {e}"));
    // Ready when it accepts connections (JetStream is up by then on a single server).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        assert!(
            Instant::now() < deadline,
            "nats-server on port {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn private_test_bus() -> TestBus {
    let server = PrivateServer::start().await;
    let url = server.url();
    let bus = connect(&url).await;
    let reopen_url = url.clone();
    let restarted = server.clone();
    TestBus {
        bus: Arc::new(bus),
        deployment: unique_deployment(),
        reopen: Some(Box::new(move || {
            let url = reopen_url.clone();
            Box::pin(async move { Arc::new(connect(&url).await) as Arc<dyn Bus> })
        })),
        restart_broker: Some(Box::new(move || {
            let server = restarted.clone();
            Box::pin(async move { server.restart().await })
        })),
        // The private server (and its store) lives as long as the test; kill_on_drop
        // stops it afterwards.
        _guard: Box::new(server),
    }
}
