//! `meridian bench orders`: places orders over real TCP with N concurrent clients against a
//! seeded catalog, reports throughput and latency percentiles, and checks at the end that no
//! stock was oversold.
//!
//! By default it starts `meridian serve` as a child process on a fresh data directory (or a
//! fresh PostgreSQL schema), so the server's memory can be read from `/proc`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Place orders of 1 to 3 lines with N concurrent clients; report throughput, latency
    /// and whether any stock was oversold.
    Orders(OrdersArgs),
    /// Move messages through a bus backend with one producer and one consumer; report
    /// throughput and publish-to-deliver latency (memory: the amortized cost per message;
    /// nats and rabbitmq: against their raw client library in the same run).
    Bus(BusArgs),
    /// Measure what the gateway adds (bearer verification and the rate limit) to a trivial
    /// route, against the same route without it; report throughput and latency of both.
    Gateway(gateway::GatewayArgs),
}

mod gateway;

#[derive(Args, Clone)]
pub struct BusArgs {
    /// The backend to measure: memory, embedded (SQLite), nats or rabbitmq.
    #[arg(long, default_value = "memory")]
    backend: String,
    /// The broker for nats (default nats://127.0.0.1:4222) and rabbitmq (default
    /// amqp://guest:guest@127.0.0.1:5672/%2f).
    #[arg(long)]
    url: Option<String>,
    /// Messages moved through the bus per run (default: 5,000,000 for memory, 100,000 for
    /// the others: long enough that start-up does not sway the figure).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per publish_batch call, 1 = one publish per message (default: 256 for
    /// memory, 100 otherwise).
    #[arg(long)]
    batch: Option<usize>,
    /// memory: deliveries taken per next_batch call and settled with one ack_all; 1 calls
    /// next and ack per message.
    #[arg(long, default_value_t = 256)]
    receive_batch: usize,
    /// memory: keep a copy of each delivered message, so one held past its ack wait is
    /// redelivered (MemoryBusConfig::track_unacked; off by default).
    #[arg(long)]
    track_unacked: bool,
    /// memory: microseconds an idle consumer spins before parking (MemoryBusConfig::spin).
    #[arg(long, default_value_t = 20)]
    spin_us: u64,
    /// embedded, nats, rabbitmq: the approximate size of one message, in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// embedded, nats, rabbitmq: the consumer's max_in_flight (prefetch).
    #[arg(long, default_value_t = 256)]
    prefetch: usize,
    /// embedded, nats, rabbitmq: runs (for nats and rabbitmq, of each side, alternating
    /// raw and bus); the median run is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// nats: plain acks (no server confirmation) on both sides instead of the bus's default
    /// confirmed acks.
    #[arg(long)]
    plain_acks: bool,
}

#[derive(Args, Clone)]
pub struct OrdersArgs {
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of unmeasured load first.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Products in the catalog.
    #[arg(long, default_value_t = 10_000)]
    skus: usize,
    /// Warehouses, each stocking every SKU.
    #[arg(long, default_value_t = 3)]
    warehouses: usize,
    /// Units of each SKU per warehouse are drawn from 0..=this, so some SKUs sell out.
    #[arg(long, default_value_t = 200)]
    max_stock: i64,
    /// The store of the server the benchmark starts: sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// PostgreSQL URL for --store postgres; the schema `meridian_bench` is recreated.
    #[arg(
        long,
        env = "MERIDIAN_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,
    /// Benchmark a server that is already running instead (needs --api-key).
    #[arg(long)]
    url: Option<String>,
    #[arg(long, requires = "url")]
    api_key: Option<String>,
}

struct Target {
    base: String,
    api_key: String,
    child: Option<tokio::process::Child>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn run(command: BenchCommand) -> Result<()> {
    let args = match command {
        BenchCommand::Orders(args) => args,
        BenchCommand::Bus(args) => return run_bus(args).await,
        BenchCommand::Gateway(args) => return gateway::run(args).await,
    };
    ensure!(
        args.clients > 0 && args.skus > 0 && args.warehouses > 0,
        "--clients, --skus and --warehouses must be positive"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut target = start_target(&args, &client).await?;
    let result = drive(&args, &client, &target).await;
    if let Some(pid) = target.child.as_ref().and_then(|c| c.id()) {
        if let Some((hwm, rss)) = server_memory(pid) {
            eprintln!("server memory: peak RSS {hwm} MB, RSS at end {rss} MB");
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        if let Some(child) = target.child.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
    result
}

/// `meridian bench bus`: one producer and one consumer through the chosen backend (see
/// `meridian_bus::bench` and the backends' `bench` modules).
async fn run_bus(args: BusArgs) -> Result<()> {
    ensure!(args.messages != Some(0), "--messages must be positive");
    ensure!(args.rounds > 0, "--rounds must be positive");
    match args.backend.as_str() {
        "memory" => run_bus_memory(&args).await,
        "embedded" => run_bus_embedded(&args).await,
        "nats" => run_bus_nats(&args).await,
        "rabbitmq" => run_bus_rabbitmq(&args).await,
        other => bail!("invalid --backend {other:?}: expected memory, embedded, nats or rabbitmq"),
    }
}

async fn run_bus_memory(args: &BusArgs) -> Result<()> {
    let options = meridian_bus::bench::BenchOptions {
        messages: args.messages.unwrap_or(5_000_000),
        batch: args.batch.unwrap_or(256),
        track_unacked: args.track_unacked,
        spin: Duration::from_micros(args.spin_us),
        receive_batch: args.receive_batch,
    };
    let r = meridian_bus::bench::bench_memory_with(options).await?;
    println!(
        "bus memory: {} messages, publish batch {}, receive batch {}, track_unacked {}, spin {} us",
        options.messages, options.batch, options.receive_batch, options.track_unacked, args.spin_us
    );
    println!("  elapsed:    {:.3} s", r.elapsed.as_secs_f64());
    println!(
        "  throughput: {:.0} messages/s published and consumed",
        r.messages_per_second
    );
    println!(
        "  amortized:  {:.1} ns/message publish-to-deliver (publish, receive, ack, free)",
        r.ns_per_message
    );
    println!(
        "  median round: {:.1} ns/message",
        r.median_round_ns_per_message
    );
    println!(
        "  latency (publish_batch call to delivery of the batch's last message): p50 {:.1} us, p99 {:.1} us",
        r.p50_latency.as_secs_f64() * 1e6,
        r.p99_latency.as_secs_f64() * 1e6
    );
    println!(
        "  of which freeing the message (one buffer): {:.1} ns; the bus itself: {:.1} ns",
        r.drop_ns_per_message,
        r.transport_ns_per_message()
    );
    println!(
        "  outside the clock: building a message (envelope + encoding) {:.1} ns; freeing a decoded envelope {:.1} ns",
        r.build_ns_per_message, r.envelope_drop_ns_per_message
    );
    println!(
        "  baseline: a bare tokio mpsc channel moves the same messages at {:.1} ns/message",
        r.channel_ns_per_message
    );
    Ok(())
}

fn throughput_options(
    args: &BusArgs,
    default_messages: u64,
) -> meridian_bus::bench::ThroughputOptions {
    meridian_bus::bench::ThroughputOptions {
        messages: args.messages.unwrap_or(default_messages),
        payload_bytes: args.payload_bytes,
        batch: args.batch.unwrap_or(100),
        max_in_flight: args.prefetch.max(1),
        concurrent_acks: 1,
    }
}

fn print_side(name: &str, side: &meridian_bus::bench::SideResult) {
    println!(
        "  {name:>14}: {:>8.0} msg/s  p50 {:>8.2} ms  p99 {:>8.2} ms  ({:.2} s)",
        side.messages_per_second,
        side.p50_latency.as_secs_f64() * 1e3,
        side.p99_latency.as_secs_f64() * 1e3,
        side.elapsed.as_secs_f64()
    );
}

/// Prints every run and the medians of a bus-against-raw comparison.
fn print_comparison(
    raw_name: &str,
    bus_name: &str,
    c: &meridian_bus::bench::Comparison,
) -> Result<()> {
    let ratios = c.run_ratios();
    for (i, ((raw, bus), ratio)) in c.raw_runs.iter().zip(&c.bus_runs).zip(&ratios).enumerate() {
        println!("  run {}: bus / raw {:.1}%", i + 1, ratio * 100.0);
        print_side(raw_name, raw);
        print_side(bus_name, bus);
    }
    let (raw, bus, ratio) = match (c.raw(), c.bus(), c.ratio()) {
        (Some(raw), Some(bus), Some(ratio)) => (raw, bus, ratio),
        _ => bail!("the benchmark produced no runs"),
    };
    println!("  median of {} runs:", c.bus_runs.len());
    print_side(raw_name, &raw);
    print_side(bus_name, &bus);
    println!(
        "  bus / raw throughput: {:.1}% (median of the runs' ratios; medians' ratio {:.1}%)",
        ratio * 100.0,
        bus.messages_per_second / raw.messages_per_second * 100.0
    );
    Ok(())
}

/// The embedded bus on a fresh SQLite file per run, in a temporary directory: every
/// publish and every ack is durable (committed) before it returns. Acks are kept in
/// progress up to `--prefetch` at once, so the bus can commit them in groups.
async fn run_bus_embedded(args: &BusArgs) -> Result<()> {
    use meridian_bus_embedded::{EmbeddedBus, EmbeddedConfig};
    let options = meridian_bus::bench::ThroughputOptions {
        concurrent_acks: args.prefetch.max(1),
        ..throughput_options(args, 100_000)
    };
    println!(
        "bus embedded (SQLite, durable): {} messages of ~{} bytes, publish batch {}, max_in_flight {}, {} acks in progress",
        options.messages,
        options.payload_bytes,
        options.batch,
        options.max_in_flight,
        options.concurrent_acks
    );
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        let dir = tempfile::tempdir()?;
        let bus = EmbeddedBus::open(EmbeddedConfig::Sqlite {
            path: dir.path().join("bus.db"),
        })
        .await?;
        let topic = meridian_core::Topic::platform("bench", "oms", "order.created");
        let r = meridian_bus::bench::bench_throughput(Arc::new(bus), &topic, &options).await?;
        print_side(&format!("run {}", round + 1), &r);
        runs.push(r);
    }
    let median =
        meridian_bus::bench::SideResult::median(runs).context("the benchmark produced no runs")?;
    print_side("median", &median);
    Ok(())
}

#[cfg(feature = "bus-nats")]
async fn run_bus_nats(args: &BusArgs) -> Result<()> {
    use meridian_bus_nats::bench::{self, BenchOptions};
    let defaults = BenchOptions::default();
    let options = BenchOptions {
        url: args.url.clone().unwrap_or(defaults.url),
        messages: args.messages.unwrap_or(defaults.messages),
        payload_bytes: args.payload_bytes,
        batch: args.batch.unwrap_or(defaults.batch),
        prefetch: args.prefetch.max(1),
        confirm_acks: !args.plain_acks,
        rounds: args.rounds,
    };
    println!(
        "bus nats: {} messages of ~{} bytes, publish batch {}, prefetch {}, {} acks; {} alternating runs per side",
        options.messages,
        options.payload_bytes,
        options.batch,
        options.prefetch,
        if options.confirm_acks {
            "confirmed"
        } else {
            "plain"
        },
        options.rounds
    );
    let c = bench::run(&options).await?;
    print_comparison("raw async-nats", "nats bus", &c)
}

#[cfg(not(feature = "bus-nats"))]
async fn run_bus_nats(_: &BusArgs) -> Result<()> {
    bail!("--backend nats needs the binary built with the feature bus-nats")
}

#[cfg(feature = "bus-rabbitmq")]
async fn run_bus_rabbitmq(args: &BusArgs) -> Result<()> {
    use meridian_bus_rabbitmq::bench::{self, BenchOptions};
    let defaults = BenchOptions::default();
    let options = BenchOptions {
        url: args.url.clone().unwrap_or(defaults.url),
        messages: args.messages.unwrap_or(defaults.messages),
        payload_bytes: args.payload_bytes,
        batch: args.batch.unwrap_or(defaults.batch),
        prefetch: u16::try_from(args.prefetch.max(1))
            .context("--prefetch is at most 65535 for rabbitmq")?,
        rounds: args.rounds,
    };
    println!(
        "bus rabbitmq: {} messages of ~{} bytes, confirmed publish batch {}, prefetch {}; {} alternating runs per side",
        options.messages, options.payload_bytes, options.batch, options.prefetch, options.rounds
    );
    let c = bench::run(&options).await?;
    print_comparison("raw lapin", "rabbitmq bus", &c)
}

#[cfg(not(feature = "bus-rabbitmq"))]
async fn run_bus_rabbitmq(_: &BusArgs) -> Result<()> {
    bail!("--backend rabbitmq needs the binary built with the feature bus-rabbitmq")
}

async fn start_target(args: &OrdersArgs, client: &reqwest::Client) -> Result<Target> {
    if let Some(url) = &args.url {
        return Ok(Target {
            base: url.trim_end_matches('/').to_owned(),
            api_key: args
                .api_key
                .clone()
                .context("--api-key is required with --url")?,
            child: None,
            _dir: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut env: Vec<(&str, String)> = vec![
        ("MERIDIAN_DATA_DIR", dir.path().display().to_string()),
        ("MERIDIAN_BIND", format!("127.0.0.1:{port}")),
        ("RUST_LOG", "warn".into()),
    ];
    match args.store.as_str() {
        "sqlite" => env.push(("STORAGE_BACKEND", "sqlite".into())),
        "postgres" => {
            reset_bench_schema(&args.database_url).await?;
            env.push(("STORAGE_BACKEND", "postgres".into()));
            env.push(("DATABASE_URL", args.database_url.clone()));
            env.push(("MERIDIAN_DATABASE_SCHEMA", "meridian_bench".into()));
            // The schema is new, so any master key will do; PostgreSQL requires one.
            env.push((
                "MERIDIAN_AUTH_MASTER_KEY",
                meridian_auth::MasterKey::generate().to_base64(),
            ));
        }
        other => bail!("invalid --store {other:?}: expected sqlite or postgres"),
    }
    // One tenant places thousands of orders a second, far past any plan's quota: this
    // benchmark measures the order path, `bench gateway` measures the limiter.
    env.push(("MERIDIAN_RATE_LIMIT_POLICY", "off".into()));
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    for var in [
        "DATABASE_URL",
        "MERIDIAN_DATABASE_SCHEMA",
        "MERIDIAN_CONFIG",
        "MERIDIAN_AUTH_MASTER_KEY",
    ] {
        if !env.iter().any(|(k, _)| *k == var) {
            cmd.env_remove(var);
        }
    }
    let child = cmd.spawn().context("cannot start meridian serve")?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(client, &base, dir.path().join("server.log")).await?;

    let out = tokio::process::Command::new(&exe)
        .args(["tenants", "create", "bench", "--json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "tenants create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value =
        serde_json::from_slice(&out.stdout).context("tenants create --json printed no JSON")?;
    let api_key = created["api_key"]
        .as_str()
        .context("no api_key in tenants create output")?
        .to_owned();
    eprintln!("started meridian serve ({} store) at {base}", args.store);
    Ok(Target {
        base,
        api_key,
        child: Some(child),
        _dir: Some(dir),
    })
}

#[cfg(feature = "store-postgres")]
async fn reset_bench_schema(url: &str) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    tokio::spawn(conn);
    client
        .batch_execute("DROP SCHEMA IF EXISTS meridian_bench CASCADE")
        .await?;
    Ok(())
}

#[cfg(not(feature = "store-postgres"))]
async fn reset_bench_schema(_url: &str) -> Result<()> {
    bail!("--store postgres needs the `store-postgres` feature")
}

async fn wait_ready(client: &reqwest::Client, base: &str, log: PathBuf) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tail = std::fs::read_to_string(&log).unwrap_or_default();
    bail!("the server did not become ready within 60 s; its log:\n{tail}")
}

fn server_memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb / 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Runs `f` over `items` with `concurrency` requests in flight, printing progress.
async fn for_each_concurrent<T, F, Fut>(
    label: &str,
    items: Vec<T>,
    concurrency: usize,
    f: F,
) -> Result<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let total = items.len();
    let queue = Arc::new(parking_queue(items));
    let done = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (queue, done, f) = (queue.clone(), done.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                // Take the item in its own statement so the lock is released before awaiting.
                let item = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some(item) = item else { break };
                f(item).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let progress = {
        let done = done.clone();
        let label = label.to_owned();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!("  {label}: {}/{total}", done.load(Ordering::Relaxed));
            }
        })
    };
    let mut result = Ok(());
    for t in tasks {
        if let Err(e) = t.await? {
            result = Err(e);
        }
    }
    progress.abort();
    eprintln!(
        "  {label}: {total}/{total} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    result
}

fn parking_queue<T>(items: Vec<T>) -> std::sync::Mutex<Vec<T>> {
    std::sync::Mutex::new(items)
}

async fn expect_ok(resp: reqwest::Result<reqwest::Response>, what: &str) -> Result<Value> {
    let resp = resp.with_context(|| format!("{what}: request failed"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    ensure!(status.is_success(), "{what}: HTTP {status}: {body}");
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn sku_name(i: usize) -> String {
    format!("BENCH-{i:06}")
}

async fn drive(args: &OrdersArgs, client: &reqwest::Client, target: &Target) -> Result<()> {
    let base = Arc::new(target.base.clone());
    let auth = Arc::new(format!("Bearer {}", target.api_key));

    eprintln!(
        "seeding {} warehouses, {} products and their stock...",
        args.warehouses, args.skus
    );
    for w in 0..args.warehouses {
        let body =
            json!({"code": format!("W{w}"), "name": format!("Warehouse {w}"), "priority": w});
        expect_ok(
            client
                .post(format!("{base}/v1/warehouses"))
                .header("authorization", auth.as_str())
                .json(&body)
                .send()
                .await,
            "create warehouse",
        )
        .await?;
    }
    let (c, b, a) = (client.clone(), base.clone(), auth.clone());
    for_each_concurrent("products", (0..args.skus).collect(), 32, move |i| {
        let (c, b, a) = (c.clone(), b.clone(), a.clone());
        async move {
            let body = json!({"sku": sku_name(i), "name": format!("Bench product {i}"), "price": {"amount": 100 + (i % 5000) as i64, "currency": "EUR"}});
            expect_ok(c.post(format!("{b}/v1/products")).header("authorization", a.as_str()).json(&body).send().await, "create product").await.map(drop)
        }
    })
    .await?;
    let mut rng = rand::rng();
    let mut seeded: HashMap<(usize, String), i64> = HashMap::new();
    let mut levels = Vec::new();
    for i in 0..args.skus {
        for w in 0..args.warehouses {
            let on_hand = rng.random_range(0..=args.max_stock);
            seeded.insert((w, sku_name(i)), on_hand);
            levels.push((w, i, on_hand));
        }
    }
    let (c, b, a) = (client.clone(), base.clone(), auth.clone());
    for_each_concurrent("stock levels", levels, 32, move |(w, i, on_hand)| {
        let (c, b, a) = (c.clone(), b.clone(), a.clone());
        async move {
            let body = json!({"on_hand": on_hand, "reason": "bench seed"});
            expect_ok(
                c.put(format!("{b}/v1/inventory/W{w}/{}", sku_name(i)))
                    .header("authorization", a.as_str())
                    .json(&body)
                    .send()
                    .await,
                "set stock",
            )
            .await
            .map(drop)
        }
    })
    .await?;

    if args.warmup > 0 {
        eprintln!("warming up for {} s...", args.warmup);
    }
    let warm = load(args, client, &base, &auth, Duration::from_secs(args.warmup)).await?;
    eprintln!(
        "measuring {} clients for {} s...",
        args.clients, args.duration
    );
    // The relay's figures for the measured window only: seeding and warm-up are taken off.
    let relay_before = scrape_metrics(client, &base).await.ok();
    let run = load(
        args,
        client,
        &base,
        &auth,
        Duration::from_secs(args.duration),
    )
    .await?;

    let secs = run.elapsed.as_secs_f64();
    let h = &run.latency;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "orders benchmark: {} store, {} clients, {} SKUs x {} warehouses, {:.1} s",
        args.store, args.clients, args.skus, args.warehouses, secs
    );
    println!("  requests:   {} ({:.0}/s)", h.len(), h.len() as f64 / secs);
    println!(
        "  created:    {} ({:.0} orders/s)",
        run.created,
        run.created as f64 / secs
    );
    println!("  refused:    {} insufficient_stock", run.refused);
    println!("  errors:     {}", run.errors);
    println!(
        "  latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.50),
        ms(0.95),
        ms(0.99),
        h.max() as f64 / 1000.0
    );

    report_relay(client, &base, relay_before.as_deref()).await;

    let mut reserved = warm.reserved;
    for (k, v) in run.reserved {
        *reserved.entry(k).or_default() += v;
    }
    check_no_oversell(args, client, &base, &auth, &seeded, &reserved).await?;
    ensure!(
        run.errors == 0 && warm.errors == 0,
        "{} requests failed with an unexpected status",
        run.errors + warm.errors
    );
    Ok(())
}

/// One sample of the server's `/metrics`: name, labels (as written) and value.
type Metrics = Vec<(String, String, f64)>;

async fn scrape_metrics(client: &reqwest::Client, base: &str) -> Result<Metrics> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value))
        })
        .collect())
}

/// The sum of a metric's series whose labels contain `label_part`.
fn metric_sum(m: &[(String, String, f64)], name: &str, label_part: &str) -> f64 {
    m.iter()
        .filter(|(n, l, _)| n == name && l.contains(label_part))
        .map(|(_, _, v)| v)
        .sum()
}

/// The cumulative buckets `(le, count)` of an unlabelled histogram, minus those of `before`.
fn histogram_buckets(
    now: &Metrics,
    before: Option<&[(String, String, f64)]>,
    name: &str,
) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let read = |m: &[(String, String, f64)]| -> Vec<(f64, f64)> {
        let mut b: Vec<(f64, f64)> = m
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .filter_map(|(_, l, v)| {
                let le = l.split("le=\"").nth(1)?.trim_end_matches('"');
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, *v))
            })
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b
    };
    let mut buckets = read(now);
    if let Some(before) = before {
        let old = read(before);
        for (le, count) in &mut buckets {
            if let Some((_, c)) = old.iter().find(|(l, _)| l == le) {
                *count -= c;
            }
        }
    }
    buckets
}

/// The `q` quantile from cumulative buckets, interpolated linearly inside the bucket as
/// Prometheus' `histogram_quantile` does; `None` without samples.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let frac = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * frac);
        }
        lower = (le, count);
    }
    None
}

/// Order events the relay published and the order-events projection has not settled yet.
fn projection_backlog(m: &Metrics) -> f64 {
    let published: f64 = m
        .iter()
        .filter(|(n, l, _)| {
            n == "meridian_bus_published_total"
                && l.contains(".platform.oms.order.")
                && !l.contains(".dlq")
        })
        .map(|(_, _, v)| v)
        .sum();
    let consumer = "consumer=\"order-events\"";
    let settled = metric_sum(m, "meridian_bus_acked_total", consumer)
        + metric_sum(m, "meridian_bus_dead_lettered_total", consumer);
    (published - settled).max(0.0)
}

/// Prints the relay's lag over the measured window and whether the relay and the
/// projection kept up: their backlog when the load stopped, and how long they took to
/// empty it. Reports what it could not read instead of failing the benchmark.
async fn report_relay(
    client: &reqwest::Client,
    base: &str,
    before: Option<&[(String, String, f64)]>,
) {
    let at_end = match scrape_metrics(client, base).await {
        Ok(m) => m,
        Err(e) => {
            println!("  relay:      cannot read {base}/metrics: {e}");
            return;
        }
    };
    let buckets = histogram_buckets(&at_end, before, meridian_relay::OUTBOX_LAG);
    let published = buckets.last().map_or(0.0, |b| b.1);
    match (
        bucket_quantile(&buckets, 0.5),
        bucket_quantile(&buckets, 0.99),
    ) {
        (Some(p50), Some(p99)) => println!(
            "  relay lag:  p50 {:.1} ms  p99 {:.1} ms  ({published:.0} rows published while measuring; from {})",
            p50 * 1000.0,
            p99 * 1000.0,
            meridian_relay::OUTBOX_LAG
        ),
        _ => println!("  relay lag:  no rows published while measuring"),
    }
    let unsent = metric_sum(&at_end, meridian_relay::OUTBOX_UNSENT, "");
    let backlog = projection_backlog(&at_end);
    let lag = at_end
        .iter()
        .find(|(n, l, _)| n == "meridian_bus_consumer_lag" && l.contains("order-events"))
        .map(|(_, _, v)| format!(", bus consumer lag {v:.0}"))
        .unwrap_or_default();
    println!(
        "  at the end: outbox unsent {unsent:.0} (sampled each second), projection backlog {backlog:.0} events{lag}"
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    loop {
        let Ok(m) = scrape_metrics(client, base).await else {
            break;
        };
        let (unsent, backlog) = (
            metric_sum(&m, meridian_relay::OUTBOX_UNSENT, ""),
            projection_backlog(&m),
        );
        if unsent == 0.0 && backlog == 0.0 {
            println!(
                "  caught up:  relay and projection drained {:.1} s after the load stopped",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        if Instant::now() > deadline {
            println!(
                "  caught up:  NO: after 120 s, outbox unsent {unsent:.0}, projection backlog {backlog:.0}"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct LoadResult {
    latency: Histogram<u64>,
    created: u64,
    refused: u64,
    errors: u64,
    elapsed: Duration,
    /// Units allocated per (warehouse code, sku) by the orders that got a 201.
    reserved: HashMap<(String, String), i64>,
}

async fn load(
    args: &OrdersArgs,
    client: &reqwest::Client,
    base: &Arc<String>,
    auth: &Arc<String>,
    duration: Duration,
) -> Result<LoadResult> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (client, base, auth) = (client.clone(), base.clone(), auth.clone());
        let skus = args.skus;
        tasks.push(tokio::spawn(async move {
            let mut r = LoadResult {
                latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
                created: 0,
                refused: 0,
                errors: 0,
                elapsed: Duration::ZERO,
                reserved: HashMap::new(),
            };
            let url = format!("{base}/v1/orders");
            // A thread-local RNG cannot cross the await points of a spawned task.
            let mut rng = StdRng::from_rng(&mut rand::rng());
            while Instant::now() < deadline {
                let n = rng.random_range(1..=3);
                let mut picked: Vec<usize> = Vec::with_capacity(n);
                while picked.len() < n {
                    let i = rng.random_range(0..skus);
                    if !picked.contains(&i) {
                        picked.push(i);
                    }
                }
                let lines: Vec<Value> = picked
                    .iter()
                    .map(|&i| json!({"sku": sku_name(i), "quantity": rng.random_range(1..=3)}))
                    .collect();
                let allocation = *["priority", "priority", "most_stock", "split"]
                    .choose(&mut rng)
                    .expect("non-empty");
                let body = json!({"lines": lines, "allocation": allocation});
                let t0 = Instant::now();
                let resp = client
                    .post(&url)
                    .header("authorization", auth.as_str())
                    .json(&body)
                    .send()
                    .await;
                let (status, text) = match resp {
                    Ok(resp) => (
                        resp.status().as_u16(),
                        resp.text().await.unwrap_or_default(),
                    ),
                    Err(_) => (0, String::new()),
                };
                let _ = r.latency.record((t0.elapsed().as_micros() as u64).max(1));
                match status {
                    201 => {
                        r.created += 1;
                        let order: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        for line in order["lines"].as_array().into_iter().flatten() {
                            let sku = line["sku"].as_str().unwrap_or_default();
                            for a in line["allocations"].as_array().into_iter().flatten() {
                                let wh = a["warehouse"].as_str().unwrap_or_default();
                                *r.reserved
                                    .entry((wh.to_owned(), sku.to_owned()))
                                    .or_default() += a["quantity"].as_i64().unwrap_or(0);
                            }
                        }
                    }
                    409 => r.refused += 1,
                    _ => {
                        if r.errors < 3 {
                            eprintln!("unexpected response {status}: {text}");
                        }
                        r.errors += 1;
                    }
                }
            }
            r
        }));
    }
    let mut total = LoadResult {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        created: 0,
        refused: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        reserved: HashMap::new(),
    };
    for t in tasks {
        let r = t.await?;
        total.latency.add(&r.latency)?;
        total.created += r.created;
        total.refused += r.refused;
        total.errors += r.errors;
        for (k, v) in r.reserved {
            *total.reserved.entry(k).or_default() += v;
        }
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

/// Every level must still have its seeded on-hand, reserved must equal exactly what the
/// 201 responses allocated, and reserved must never exceed on-hand.
async fn check_no_oversell(
    args: &OrdersArgs,
    client: &reqwest::Client,
    base: &Arc<String>,
    auth: &Arc<String>,
    seeded: &HashMap<(usize, String), i64>,
    reserved: &HashMap<(String, String), i64>,
) -> Result<()> {
    eprintln!("checking every stock level against the acknowledged orders...");
    let problems = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seeded = Arc::new(seeded.clone());
    let reserved = Arc::new(reserved.clone());
    let (c, b, a, p) = (client.clone(), base.clone(), auth.clone(), problems.clone());
    for_each_concurrent("inventory checks", (0..args.skus).collect(), 32, move |i| {
        let (c, b, a, p, seeded, reserved) = (c.clone(), b.clone(), a.clone(), p.clone(), seeded.clone(), reserved.clone());
        async move {
            let sku = sku_name(i);
            let inv = expect_ok(c.get(format!("{b}/v1/inventory/{sku}")).header("authorization", a.as_str()).send().await, "get inventory").await?;
            for level in inv["levels"].as_array().into_iter().flatten() {
                let wh = level["warehouse"].as_str().unwrap_or_default().to_owned();
                let w: usize = wh.trim_start_matches('W').parse().unwrap_or(usize::MAX);
                let (on_hand, res) = (level["on_hand"].as_i64().unwrap_or(-1), level["reserved"].as_i64().unwrap_or(-1));
                let want_on_hand = seeded.get(&(w, sku.clone())).copied().unwrap_or(-1);
                let want_reserved = reserved.get(&(wh.clone(), sku.clone())).copied().unwrap_or(0);
                if on_hand != want_on_hand || res != want_reserved || res > on_hand || res < 0 {
                    p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(format!(
                        "{sku} in {wh}: on_hand {on_hand} (seeded {want_on_hand}), reserved {res} (acknowledged {want_reserved})"
                    ));
                }
            }
            Ok(())
        }
    })
    .await?;
    let problems = problems.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if problems.is_empty() {
        println!(
            "  oversell check: ok (every level: reserved = acknowledged allocations <= on_hand)"
        );
        Ok(())
    } else {
        for p in problems.iter().take(20) {
            eprintln!("  {p}");
        }
        bail!("oversell check failed on {} stock levels", problems.len())
    }
}
