//! `meridian bench gateway`: what the gateway adds to a request. One trivial handler is
//! served twice by one in-process server: behind the gateway's layers (bearer verification
//! with its permission check, the per-tenant rate limit) and without them, inside the same
//! outer layers. Keep-alive HTTP/1 connections drive each in turn; the report gives both
//! throughputs and latency percentiles, and the added p99.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::config::Config;

#[derive(Args, Clone)]
pub struct GatewayArgs {
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of measured load per route.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unmeasured load per route first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The credential the gated route sees: `jwt` (an access token from the token endpoint)
    /// or `api-key`.
    #[arg(long, default_value = "jwt")]
    credential: String,
    /// The rate-limit policy in front of the gated route: local or redis.
    #[arg(long, default_value = "local")]
    policy: String,
    /// Redis for --policy redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

struct Run {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

pub async fn run(args: GatewayArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let data_dir = dir.path().display().to_string();
    let policy = args.policy.clone();
    let redis_url = args.redis_url.clone();
    let mut config = Config::load_from(None, |k| match k {
        "MERIDIAN_DATA_DIR" => Some(data_dir.clone()),
        "MERIDIAN_RATE_LIMIT_POLICY" => Some(policy.clone()),
        "MERIDIAN_REDIS_URL" if policy == "redis" => Some(redis_url.clone()),
        "MERIDIAN_RATE_LIMIT_REDIS_PREFIX" => {
            Some(format!("bench:{}:", uuid::Uuid::now_v7().simple()))
        }
        _ => None,
    })?;
    if !matches!(args.policy.as_str(), "local" | "redis") {
        bail!("--policy must be local or redis");
    }
    // A quota the load never reaches: every request pays for a full decision, none is
    // refused, so both routes answer 200.
    let mut specs = std::collections::BTreeMap::new();
    specs.insert(
        meridian_gateway::Plans::DEFAULT.to_owned(),
        meridian_gateway::PlanSpec {
            read: Some("1000000/s burst 1000000".into()),
            ..Default::default()
        },
    );
    config.gateway.rate_limit.plans = meridian_gateway::Plans::with_specs(&specs)?;

    let (store, plugins) = crate::server::open_stores(&config).await?;
    let tenant = store.create_tenant("bench-gateway").await?;
    let key = store.create_api_key(tenant.id, "bench").await?;
    let auth = meridian_api::auth::AuthService::start(
        store.clone(),
        crate::auth_config::auth_config(&config)?,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("cannot start the auth service")?;
    let limiter = meridian_gateway::RateLimiter::start(config.gateway.rate_limit.clone())?;
    let state = meridian_api::AppState {
        store,
        plugins,
        plugin_status: None,
        bus: None,
        metrics: meridian_api::install_metrics(),
        config: meridian_api::ApiConfig {
            gateway: meridian_api::GatewayConfig {
                rate_limiter: Some(limiter),
                ..Default::default()
            },
            ..Default::default()
        },
        auth,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = meridian_api::gateway_bench_router(state)
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let bearer = match args.credential.as_str() {
        "api-key" => key.token.clone(),
        "jwt" => access_token(addr, &key.key.id.to_string(), &key.token).await?,
        other => bail!("--credential must be jwt or api-key, not {other:?}"),
    };
    let authorization = format!("Bearer {bearer}");

    // Check both routes answer before measuring.
    for path in ["/bench/baseline", "/v1/products/BENCH-1"] {
        let status = probe(addr, path, &authorization).await?;
        if status != 200 {
            bail!("GET {path} answered {status}, expected 200");
        }
    }

    let load = uptime_load();
    eprintln!(
        "gateway bench: {} connections, {} s per route after {} s warm-up, credential {}, rate limits {}",
        args.connections, args.duration, args.warmup, args.credential, args.policy
    );
    let baseline = drive(addr, "/bench/baseline", &authorization, &args).await?;
    let gated = drive(addr, "/v1/products/BENCH-1", &authorization, &args).await?;

    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "route", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for (name, r) in [
        ("without gateway (/bench/baseline)", &baseline),
        ("with gateway (auth + rate limit)", &gated),
    ] {
        println!(
            "{:<34} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            name,
            r.rps(),
            r.ms(0.5),
            r.ms(0.99),
            r.ms(0.999),
            r.errors
        );
    }
    let added_p50 = gated.ms(0.5) - baseline.ms(0.5);
    let added_p99 = gated.ms(0.99) - baseline.ms(0.99);
    println!(
        "added latency: p50 {added_p50:+.3} ms, p99 {added_p99:+.3} ms (target p99 <= 0.5 ms)"
    );
    println!(
        "authenticated throughput: {:.0} req/s (target >= 20000 on 2 cores)",
        gated.rps()
    );
    println!(
        "machine: {} CPUs; load average before the run: {load}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if baseline.errors + gated.errors > 0 {
        bail!("{} requests failed", baseline.errors + gated.errors);
    }
    Ok(())
}

fn uptime_load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// An access token for the key, from the token endpoint (client credentials).
async fn access_token(addr: SocketAddr, key_id: &str, secret: &str) -> Result<String> {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/auth/token"))
        .json(&serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": key_id,
            "client_secret": secret,
        }))
        .send()
        .await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    match body["access_token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_owned()),
        _ => bail!("the token endpoint answered {status}: {body}"),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
) -> Result<http::Request<Empty<Bytes>>> {
    Ok(http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, authorization)
        .body(Empty::new())?)
}

async fn probe(addr: SocketAddr, path: &str, authorization: &str) -> Result<u16> {
    let mut sender = connect(addr).await?;
    let resp = sender
        .send_request(request(addr, path, authorization)?)
        .await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Warm-up, then `duration` of measured load on `path` over `connections` connections.
async fn drive(
    addr: SocketAddr,
    path: &str,
    authorization: &str,
    args: &GatewayArgs,
) -> Result<Run> {
    let started = Instant::now();
    let measure_from = started + Duration::from_secs(args.warmup);
    let until = measure_from + Duration::from_secs(args.duration);
    let authorization: Arc<str> = authorization.into();
    let path: Arc<str> = path.into();
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (authorization, path) = (authorization.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut requests, mut errors) = (0u64, 0u64);
            let mut sender = connect(addr).await?;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let ok = match sender
                    .send_request(request(addr, &path, &authorization)?)
                    .await
                {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        resp.into_body().collect().await.is_ok() && ok
                    }
                    Err(_) => {
                        sender = connect(addr).await?;
                        false
                    }
                };
                if t0 >= measure_from {
                    if ok {
                        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                        requests += 1;
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((hist, requests, errors))
        }));
    }
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::from_secs(args.duration),
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for t in tasks {
        let (hist, requests, errors) = t.await??;
        run.latency_us.add(hist)?;
        run.requests += requests;
        run.errors += errors;
    }
    Ok(run)
}
