//! Fixtures: the machine's RabbitMQ, a private RabbitMQ node for restarts, and teardown.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use meridian_bus::Bus;
use meridian_bus::conformance::{TestBus, unique_deployment};
use meridian_bus_rabbitmq::{DeclaredQueues, RabbitBus, RabbitConfig};

/// The broker the tests use: `MERIDIAN_TEST_AMQP_URL`, or the machine's RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("MERIDIAN_TEST_AMQP_URL")
        .unwrap_or_else(|_| meridian_bus_rabbitmq::DEFAULT_URL.to_owned())
}

pub fn config(url: &str, deployment: &str) -> RabbitConfig {
    RabbitConfig {
        connection_name: format!("meridian-test-{deployment}"),
        ..RabbitConfig::new(url)
    }
}

/// Connects or fails the test: a missing broker is a failure, never a skip.
pub async fn connect(config: RabbitConfig) -> RabbitBus {
    let url = config.url.clone();
    RabbitBus::connect(config).await.unwrap_or_else(|e| {
        panic!(
            "RabbitMQ is required at {url} (set MERIDIAN_TEST_AMQP_URL; `apt-get install \
             rabbitmq-server`): {e}"
        )
    })
}

/// Deletes a test deployment's exchanges and queues when the test ends.
pub struct Teardown {
    url: String,
    deployment: String,
    queues: Arc<Mutex<Vec<DeclaredQueues>>>,
}

impl Teardown {
    pub fn new(url: &str, deployment: &str) -> Self {
        Self {
            url: url.to_owned(),
            deployment: deployment.to_owned(),
            queues: Arc::default(),
        }
    }

    /// Also deletes the durable queues `bus` declares.
    pub fn track(&self, bus: &RabbitBus) {
        track(&self.queues, bus);
    }
}

fn track(queues: &Mutex<Vec<DeclaredQueues>>, bus: &RabbitBus) {
    queues
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(bus.declared_queues());
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(DeclaredQueues::names)
            .collect();
        let url = self.url.clone();
        let deployment = self.deployment.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own does the deleting, and the test waits for it.
        let done = meridian_bus::conformance::finish_on_own_thread(async move {
            let bus = RabbitBus::connect(config(&url, &deployment)).await?;
            let result = bus.delete_deployment(&deployment, &names).await;
            bus.close();
            result
        });
        match done {
            Some(Ok(())) => {}
            Some(Err(e)) => eprintln!(
                "teardown of deployment {deployment:?} failed: {e}",
                deployment = self.deployment
            ),
            None => eprintln!("teardown of deployment {:?} panicked", self.deployment),
        }
    }
}

/// A bus on the machine's RabbitMQ with a deployment of its own. No `restart_broker`: the
/// machine's broker is shared with other tests and never restarted; the restart case runs
/// against a [`PrivateBroker`] (see `conformance.rs`).
pub async fn shared_broker() -> TestBus {
    let url = amqp_url();
    let deployment = unique_deployment();
    let bus = connect(config(&url, &deployment)).await;
    let teardown = Teardown::new(&url, &deployment);
    teardown.track(&bus);
    let queues = teardown.queues.clone();
    let (reopen_url, reopen_deployment) = (url.clone(), deployment.clone());
    TestBus {
        bus: Arc::new(bus),
        deployment,
        reopen: Some(Box::new(move || {
            let (url, deployment, queues) = (
                reopen_url.clone(),
                reopen_deployment.clone(),
                queues.clone(),
            );
            async move {
                let bus = connect(config(&url, &deployment)).await;
                track(&queues, &bus);
                Arc::new(bus) as Arc<dyn Bus>
            }
            .boxed()
        })),
        restart_broker: None,
        _guard: Box::new(teardown),
    }
}

/// A bus on a RabbitMQ node of its own, which `restart_broker` stops and starts again.
pub async fn private_broker() -> TestBus {
    let broker = tokio::task::block_in_place(PrivateBroker::start);
    let url = broker.url();
    let deployment = unique_deployment();
    let bus = connect(config(&url, &deployment)).await;
    let broker = Arc::new(tokio::sync::Mutex::new(broker));
    let reopen_url = url.clone();
    let reopen_deployment = deployment.clone();
    let restart = broker.clone();
    TestBus {
        bus: Arc::new(bus),
        deployment,
        reopen: Some(Box::new(move || {
            let (url, deployment) = (reopen_url.clone(), reopen_deployment.clone());
            async move { Arc::new(connect(config(&url, &deployment)).await) as Arc<dyn Bus> }
                .boxed()
        })),
        restart_broker: Some(Box::new(move || {
            let broker = restart.clone();
            async move {
                let mut broker = broker.lock().await;
                tokio::task::block_in_place(|| broker.restart());
            }
            .boxed()
        })),
        // The node and its data directory go with the test: nothing to delete.
        _guard: Box::new(broker),
    }
}

/// A RabbitMQ node started by the test: its own node name, ports, data and log
/// directories, and no plugins, so it shares nothing with the machine's broker (except
/// epmd, the Erlang port mapper, which serves any number of nodes).
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    node: String,
    port: u16,
    dist_port: u16,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Starts a node and waits until it accepts AMQP connections.
    pub fn start() -> PrivateBroker {
        let dir = tempfile::Builder::new()
            .prefix("meridian-rmq-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write plugins file");
        let node = format!("mt{}@localhost", &unique_deployment()[1..]);
        let mut broker = PrivateBroker {
            dir,
            node,
            port: free_port(),
            dist_port: free_port(),
            child: None,
        };
        broker.spawn();
        broker
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("server.out")).expect("a log file");
        let log_err = log.try_clone().expect("a log file");
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .current_dir(d)
            // The Erlang cookie is created in HOME; a private one keeps the node apart.
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("node.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            // Files that do not exist: ignore the machine's /etc/rabbitmq configuration.
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rabbitmq-server (is it installed?): {e}"));
        self.child = Some(child);
        let started = Instant::now();
        while !accepts(self.port) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the private RabbitMQ node exited with {status}: {}",
                    tail(&d.join("server.out"))
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the private RabbitMQ node did not start within 60 s: {}",
                tail(&d.join("server.out"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node as a service stop would (SIGTERM: the node shuts down cleanly and
    /// closes its client connections) and waits until it is gone.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = std::fs::read_to_string(self.dir.path().join("node.pid")).unwrap_or_default();
        let pid = pid.trim();
        if pid.is_empty() {
            let _ = child.kill();
        } else {
            // The pid file holds the Erlang VM's pid, the process that must get the signal
            // (the child is the shell script that started it).
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // The VM may outlive its start script by a moment; the port closing is the sign.
        while accepts(self.port) && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A port nothing listens on right now (the OS picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
