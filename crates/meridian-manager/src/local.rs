//! [`LocalRuntime`]: a plugin pair as two local processes. The sidecar is this same binary
//! (`meridian sidecar --plugin {name}`), inheriting the manager's environment so it opens
//! the same store and bus; the plugin is the manifest's command, given the sidecar's address
//! and the per-instance token through its environment.
//!
//! The sidecar leads a process group of its own and the plugin joins it, so stopping a pair
//! kills the group (whatever the plugin started as well), and a sidecar orphaned by a
//! server killed outright (`--exit-with-parent`) takes the plugin down with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::{Instance, InstanceSpec, Runtime, RuntimeError};

/// The only variables of the manager's environment a plugin process gets.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Starts pairs as local processes.
#[derive(Clone, Debug)]
pub struct LocalRuntime {
    /// The `meridian` executable that runs `sidecar`.
    pub meridian_exe: PathBuf,
    /// How long the sidecar may take to print its address.
    pub sidecar_timeout: Duration,
}

impl LocalRuntime {
    /// Sidecars run by the current executable.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self {
            meridian_exe: std::env::current_exe()?,
            sidecar_timeout: Duration::from_secs(30),
        })
    }
}

struct LocalInstance {
    sidecar: Child,
    plugin: Child,
    addr: SocketAddr,
    /// Killed when the instance is stopped or dropped.
    group: Group,
}

/// A pair's process group (the sidecar's pid), until it is killed.
struct Group(Option<u32>);

impl Group {
    /// Kills every process of the group, once, through the shell's `kill` (no unsafe
    /// code). Once killed the id is forgotten, so a reused pid is never signalled.
    fn kill(&mut self) {
        if let Some(id) = self.0.take() {
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("kill -KILL -{id} 2>/dev/null")])
                .stdin(Stdio::null())
                .status();
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

fn describe(s: std::io::Result<ExitStatus>) -> String {
    match s {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Box<dyn Instance>, RuntimeError> {
        let sidecar_err = |reason: String| RuntimeError::Sidecar {
            plugin: spec.name.clone(),
            reason,
        };
        let mut sidecar = Command::new(&self.meridian_exe)
            .args(["sidecar", "--plugin", &spec.name, "--exit-with-parent"])
            .env("MERIDIAN_SIDECAR_TOKEN", &spec.token)
            .env("MERIDIAN_SIDECAR_BIND", "127.0.0.1:0")
            .env_remove("MERIDIAN_SIDECAR_MANIFEST")
            .env_remove("MERIDIAN_SIDECAR_GRANTS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| sidecar_err(e.to_string()))?;
        let pid = sidecar
            .id()
            .ok_or_else(|| sidecar_err("it exited at once".into()))?;
        let group = Group(Some(pid));
        let stdout = sidecar.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(self.sidecar_timeout, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                return Err(sidecar_err(format!(
                    "it exited before listening ({})",
                    describe(sidecar.wait().await)
                )));
            }
            Ok(Err(e)) => return Err(sidecar_err(e.to_string())),
            Err(_) => return Err(sidecar_err("it did not print its address in time".into())),
        };
        let addr: SocketAddr = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["listening"].as_str()?.parse().ok())
            .ok_or_else(|| sidecar_err(format!("unexpected first line {line:?}")))?;
        // Keep reading so the sidecar never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (program, args) = spec.argv.split_first().expect("a manifest names a program");
        // The plugin's only door is its sidecar: it inherits none of the server's settings
        // (database URL, master key), only what a program needs to run.
        let inherited = PASSED_THROUGH
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (*k, v)));
        let plugin = Command::new(program)
            .args(args)
            .env_clear()
            .envs(inherited)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .env("MERIDIAN_SIDECAR_URL", format!("http://{addr}"))
            .env("MERIDIAN_SIDECAR_TOKEN", &spec.token)
            .stdin(Stdio::null())
            .process_group(i32::try_from(pid).unwrap_or(0))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| RuntimeError::Plugin {
                plugin: spec.name.clone(),
                reason: format!("{program}: {e}"),
            })?;
        Ok(Box::new(LocalInstance {
            sidecar,
            plugin,
            addr,
            group,
        }))
    }
}

#[async_trait]
impl Instance for LocalInstance {
    fn sidecar_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn exited(&mut self) -> String {
        tokio::select! {
            s = self.plugin.wait() => format!("the plugin exited ({})", describe(s)),
            s = self.sidecar.wait() => format!("the sidecar exited ({})", describe(s)),
        }
    }

    async fn stop(&mut self) {
        self.group.kill();
        let _ = self.plugin.kill().await;
        let _ = self.sidecar.kill().await;
    }
}

/// Whether the sidecar at `addr` answers `GET /healthz` with 200 within `limit`.
pub(crate) async fn healthz(addr: SocketAddr, limit: Duration) -> bool {
    let probe = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    matches!(tokio::time::timeout(limit, probe).await, Ok(Some(true)))
}
