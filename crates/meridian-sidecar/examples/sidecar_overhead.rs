//! The sidecar's overhead, in one run: a plugin publishing and consuming messages of about
//! 1 KB at a steady rate through a real `meridian sidecar` process, against the same
//! workload going to the bus directly.
//!
//! ```sh
//! cargo build --release -p meridian
//! cargo run --release -p meridian-sidecar --example sidecar_overhead -- [MERIDIAN_BIN] \
//!     [--messages N] [--warmup N] [--rate MSG_PER_S] [--bytes N]
//! ```
//!
//! Both workloads use the `memory` bus, so the difference between them is the sidecar
//! alone: HTTP on loopback, JSON, the ACL check, the envelope and the sidecar's
//! subscription queue.
//!
//! - **direct**: a `MemoryBus` in this process; one task publishes on a fixed schedule,
//!   another holds a durable subscription, receives each message and acknowledges it.
//! - **sidecar**: `meridian sidecar` started as a child process (`BUS_BACKEND=memory`, a
//!   manifest written to a temporary directory, pool `dgm`), reached over two keep-alive
//!   HTTP/1.1 connections, as a plugin would: one publishes (`POST /v1/publish`, waiting
//!   for the 202), the other long-polls (`GET /v1/subscriptions/{name}/messages`) and
//!   acknowledges what it received (`POST /v1/subscriptions/{name}/ack`) before polling again.
//!
//! Each message carries its send time (microseconds on this process's clock); the latency is
//! publish start to hand-over to the consumer (the bus delivery, or the poll answer parsed).
//! The first `--warmup` messages are left out of the percentiles. After the sidecar workload
//! the sidecar's peak and current resident memory are read from `/proc/{pid}/status`
//! (`VmHWM`, `VmRSS`).
//!
//! The `meridian` binary is the first argument, else `MERIDIAN_BIN`, else `meridian` next
//! to this example's directory (`target/release/meridian`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use meridian_bus::{Bus, MemoryBus, Message, SubscribeOptions, TopicPattern};
use meridian_core::{Envelope, TenantId, Topic};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

const DEPLOYMENT: &str = "bench";
/// Relative to the deployment; inside the `dgm` pool's template (`platform.data.**`).
const TOPIC: &str = "platform.data.bench.overhead";
const TOKEN: &str = "sidecar-overhead-bench-token";

struct Options {
    binary: PathBuf,
    messages: u64,
    warmup: u64,
    rate: u64,
    bytes: usize,
}

fn options() -> Result<Options, Error> {
    let mut binary = None;
    let (mut messages, mut warmup, mut rate, mut bytes) = (10_000, 1_000, 1_000, 1_024);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<u64, Error> {
            Ok(args
                .next()
                .ok_or_else(|| format!("{arg} needs a value"))?
                .parse()?)
        };
        match arg.as_str() {
            "--messages" => messages = value()?,
            "--warmup" => warmup = value()?,
            "--rate" => rate = value()?.max(1),
            "--bytes" => bytes = value()? as usize,
            other if !other.starts_with("--") && binary.is_none() => {
                binary = Some(PathBuf::from(other));
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let binary = match binary.or_else(|| std::env::var_os("MERIDIAN_BIN").map(PathBuf::from)) {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("meridian"))
            .ok_or("cannot locate the meridian binary; pass its path")?,
    };
    if !binary.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p meridian` or pass its path",
            binary.display()
        )
        .into());
    }
    Ok(Options {
        binary,
        messages,
        warmup,
        rate,
        bytes,
    })
}

/// Microseconds since `base`.
fn micros(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

/// The `data` of a message: its number, its send time and padding.
fn data(n: u64, t: u64, pad: &str) -> Value {
    json!({ "n": n, "t": t, "pad": pad })
}

/// The padding that brings an encoded envelope to about `bytes`.
fn padding(topic: &Topic, bytes: usize) -> Result<String, Error> {
    let overhead = Message::new(topic.clone(), envelope(0, u64::MAX, ""))
        .encode(usize::MAX)?
        .len();
    Ok("x".repeat(bytes.saturating_sub(overhead)))
}

fn envelope(n: u64, t: u64, pad: &str) -> Envelope {
    Envelope::new(
        format!("/meridian/{DEPLOYMENT}/plugins/bench"),
        "meridian.data.bench.overhead",
        TenantId::new(),
        "bench",
        meridian_core::now(),
        data(n, t, pad),
    )
}

/// Sleeps until message `n` is due at `rate` per second after `start`.
async fn pace(start: tokio::time::Instant, n: u64, rate: u64) {
    tokio::time::sleep_until(start + Duration::from_micros(n * 1_000_000 / rate)).await;
}

struct Percentiles {
    p50: u64,
    p95: u64,
    p99: u64,
    max: u64,
}

fn percentiles(mut samples: Vec<u64>) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len().max(1));
        samples.get(i - 1).copied().unwrap_or(0)
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or(0),
    }
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

fn report(name: &str, p: &Percentiles) {
    println!(
        "{name:<8} p50 {}  p95 {}  p99 {}  max {}",
        ms(p.p50),
        ms(p.p95),
        ms(p.p99),
        ms(p.max)
    );
}

async fn run_direct(o: &Options, topic: &Topic, pad: &str) -> Result<Vec<u64>, Error> {
    let bus = Arc::new(MemoryBus::new());
    let mut sub = bus
        .subscribe(
            &TopicPattern::exact(topic),
            SubscribeOptions::durable("plugin-bench-overhead"),
        )
        .await?;
    let total = o.messages;
    let base = Instant::now();
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        while (latencies.len() as u64) < total {
            let delivery = sub.next().await?;
            let t = delivery.message.envelope().data["t"].as_u64().unwrap_or(0);
            latencies.push(micros(base).saturating_sub(t));
            delivery.ack().await?;
        }
        Ok::<_, Error>(latencies)
    });
    let start = tokio::time::Instant::now();
    for n in 0..total {
        pace(start, n, o.rate).await;
        let env = envelope(n, micros(base), pad);
        bus.publish(Message::new(topic.clone(), env)).await?;
    }
    consumer.await?
}

/// One keep-alive HTTP/1.1 connection to the sidecar.
struct Client {
    send: SendRequest<Full<Bytes>>,
    authority: String,
}

impl Client {
    async fn connect(addr: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self {
            send,
            authority: addr.to_owned(),
        })
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), Error> {
        self.send.ready().await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {TOKEN}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let res = self.send.send_request(req).await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn expect(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        ok: &[u16],
    ) -> Result<Bytes, Error> {
        let (status, bytes) = self.call(method, path, body).await?;
        if !ok.contains(&status) {
            return Err(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&bytes)
            )
            .into());
        }
        Ok(bytes)
    }
}

/// The sidecar child process; killed when dropped.
struct SidecarProcess {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start_sidecar(binary: &Path) -> Result<SidecarProcess, Error> {
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("bench.toml");
    std::fs::write(
        &manifest,
        "name = \"bench\"\nversion = \"1.0.0\"\npool = \"dgm\"\n\n[run]\ncommand = [\"true\"]\n",
    )?;
    let mut child = Command::new(binary)
        .arg("sidecar")
        .arg("--manifest")
        .arg(&manifest)
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--bind")
        .arg("127.0.0.1:0")
        .env("MERIDIAN_SIDECAR_TOKEN", TOKEN)
        .env("BUS_BACKEND", "memory")
        .env("MERIDIAN_DEPLOYMENT_ID", DEPLOYMENT)
        .env("MERIDIAN_DATA_DIR", dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = v["listening"].as_str()
            {
                return Ok::<_, Error>(addr.to_owned());
            }
        }
        Err("the sidecar exited before listening".into())
    })
    .await
    .map_err(|_| "the sidecar did not listen within 30 s")??;
    // Keep draining stdout so the sidecar never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(SidecarProcess {
        child,
        addr,
        _dir: dir,
    })
}

/// `VmHWM` and `VmRSS` of `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64), Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

async fn run_sidecar(o: &Options, sidecar: &SidecarProcess, pad: &str) -> Result<Vec<u64>, Error> {
    let mut control = Client::connect(&sidecar.addr).await?;
    control
        .expect(
            "POST",
            "/v1/subscriptions",
            Some(serde_json::to_vec(
                &json!({ "name": "overhead", "pattern": TOPIC, "start": "earliest" }),
            )?),
            &[200, 201],
        )
        .await?;
    let tenant = TenantId::new();
    let total = o.messages;
    let base = Instant::now();
    let mut poller = control;
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(total as usize);
        while (latencies.len() as u64) < total {
            let bytes = poller
                .expect(
                    "GET",
                    "/v1/subscriptions/overhead/messages?max=256&wait_ms=5000",
                    None,
                    &[200],
                )
                .await?;
            let now = micros(base);
            let body: Value = serde_json::from_slice(&bytes)?;
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            let mut ids = Vec::with_capacity(messages.len());
            for m in &messages {
                let t = m["event"]["data"]["t"].as_u64().unwrap_or(0);
                latencies.push(now.saturating_sub(t));
                ids.push(m["delivery_id"].clone());
            }
            if !ids.is_empty() {
                poller
                    .expect(
                        "POST",
                        "/v1/subscriptions/overhead/ack",
                        Some(serde_json::to_vec(&json!({ "delivery_ids": ids }))?),
                        &[200],
                    )
                    .await?;
            }
        }
        Ok::<_, Error>(latencies)
    });
    let mut publisher = Client::connect(&sidecar.addr).await?;
    let start = tokio::time::Instant::now();
    for n in 0..total {
        pace(start, n, o.rate).await;
        let body = json!({
            "topic": TOPIC,
            "subject": "bench",
            "tenant": tenant,
            "data": data(n, micros(base), pad),
        });
        publisher
            .expect(
                "POST",
                "/v1/publish",
                Some(serde_json::to_vec(&body)?),
                &[202],
            )
            .await?;
    }
    consumer.await?
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut run = options()?;
    run.messages += run.warmup;
    let topic = Topic::parse(&format!("deployment.{DEPLOYMENT}.{TOPIC}"))?;
    let pad = padding(&topic, run.bytes)?;
    println!(
        "sidecar overhead: {} messages of ~{} bytes at {} msg/s (first {} left out), bus memory, sidecar {}",
        run.messages - run.warmup,
        run.bytes,
        run.rate,
        run.warmup,
        run.binary.display()
    );

    let direct = run_direct(&run, &topic, &pad).await?;
    let sidecar = start_sidecar(&run.binary).await?;
    let pid = sidecar.child.id().ok_or("the sidecar has exited")?;
    let (idle_hwm, idle_rss) = memory_kib(pid)?;
    let through = run_sidecar(&run, &sidecar, &pad).await?;
    let (hwm, rss) = memory_kib(pid)?;

    let skip = run.warmup as usize;
    let direct = percentiles(direct.into_iter().skip(skip).collect());
    let through = percentiles(through.into_iter().skip(skip).collect());
    report("direct", &direct);
    report("sidecar", &through);
    let added = through.p99 as i64 - direct.p99 as i64;
    println!(
        "added p99 {:.3} ms (target <= 0.5 ms): {}",
        added as f64 / 1000.0,
        if added <= 500 { "met" } else { "NOT met" }
    );
    println!(
        "sidecar memory: VmHWM {:.1} MiB, VmRSS {:.1} MiB after the run (idle before it: VmHWM {:.1} MiB, VmRSS {:.1} MiB); target <= 20 MB: {}",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0,
        idle_hwm as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        if hwm * 1024 <= 20_000_000 {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(sidecar);
    Ok(())
}
