//! Configuration: defaults, then an optional `meridian.toml`, then environment variables.
//! Everything is validated here, at start-up, and a bad value names its setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use meridian_core::EventSource;
use meridian_store::StoreConfig;
use serde::Deserialize;

/// The file form; every key is optional and the environment wins over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    storage_backend: Option<String>,
    database_url: Option<String>,
    database_schema: Option<String>,
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    deployment_id: Option<String>,
    log_format: Option<String>,
    body_limit_bytes: Option<usize>,
    pg_pool_size: Option<usize>,
    sqlite_readers: Option<usize>,
    bus_backend: Option<String>,
    bus_url: Option<String>,
    services: Option<String>,
    cors_origins: Option<String>,
    request_timeout_ms: Option<usize>,
    rate_limits: Option<RateLimitsFile>,
    gateway: Option<GatewayFile>,
    auth: Option<crate::auth_config::AuthFile>,
    fulfillment: Option<crate::fulfillment_config::FulfillmentFile>,
    notify: Option<crate::notify_config::NotifyFile>,
    http_ca_file: Option<PathBuf>,
}

/// `[rate_limits]` in `meridian.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitsFile {
    policy: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    expected_instances: Option<usize>,
    redis_timeout_ms: Option<usize>,
    /// `[rate_limits.plans.<name>]` with `read`, `write` and `auth` quotas.
    #[serde(default)]
    plans: std::collections::BTreeMap<String, meridian_gateway::PlanSpec>,
}

/// `[gateway]` in `meridian.toml`: split-mode routing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    upstreams: Option<String>,
    connect_timeout_ms: Option<usize>,
    upstream_timeout_ms: Option<usize>,
    retries: Option<usize>,
    breaker_failures: Option<usize>,
    breaker_cooldown_ms: Option<usize>,
}

/// The gateway's validated settings: services, rate limits, routing, CORS, time limit.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub services: meridian_gateway::Services,
    pub rate_limit: meridian_gateway::RateLimitConfig,
    pub upstreams: meridian_gateway::routing::Upstreams,
    pub proxy: meridian_gateway::ProxyConfig,
    pub cors_origins: Vec<String>,
    pub request_timeout: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageBackend {
    Sqlite,
    Postgres,
}

/// Which message bus carries the events (`BUS_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusBackend {
    /// In-process, not durable.
    Memory,
    /// A durable log in the store's own database (the default).
    Embedded,
    /// NATS JetStream at `BUS_URL` (cargo feature `bus-nats`).
    Nats,
    /// RabbitMQ at `BUS_URL` (cargo feature `bus-rabbitmq`).
    Rabbitmq,
    /// Kafka at `BUS_URL` (cargo feature `bus-kafka`).
    Kafka,
}

impl BusBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            BusBackend::Memory => "memory",
            BusBackend::Embedded => "embedded",
            BusBackend::Nats => "nats",
            BusBackend::Rabbitmq => "rabbitmq",
            BusBackend::Kafka => "kafka",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub storage_backend: StorageBackend,
    pub database_url: Option<String>,
    pub database_schema: Option<String>,
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub deployment_id: String,
    pub log_format: LogFormat,
    pub body_limit_bytes: usize,
    pub pg_pool_size: usize,
    pub sqlite_readers: usize,
    pub bus_backend: BusBackend,
    /// The broker URL for `nats` and `rabbitmq`.
    pub bus_url: Option<String>,
    /// Services, rate limits, upstreams, CORS and the request time limit.
    pub gateway: GatewaySettings,
    /// Tokens, signing keys, revocation and login throttling (`MERIDIAN_AUTH_*`).
    pub auth: crate::auth_config::AuthSettings,
    /// The carrier of new shipments (`MERIDIAN_CARRIER_*`).
    pub fulfillment: crate::fulfillment_config::FulfillmentSettings,
    /// Email providers and webhook delivery (`MERIDIAN_SMTP_*`, `MERIDIAN_WEBHOOK_*`).
    pub notify: crate::notify_config::NotifySettings,
    /// How outbound HTTP clients trust servers: the system roots plus the certificates of
    /// `MERIDIAN_HTTP_CA_FILE`.
    pub outbound: meridian_http::Outbound,
}

impl Config {
    /// Loads from `file` (or `./meridian.toml` if it exists) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        Self::load_from(file, |k| std::env::var(k).ok())
    }

    /// As [`Config::load`], with the environment given by `env` (for tests).
    pub fn load_from(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let file_config = match file {
            Some(path) => read_file(path)?,
            None if Path::new("meridian.toml").exists() => read_file(Path::new("meridian.toml"))?,
            None => FileConfig::default(),
        };
        let pick = |env_key: &str, file_value: Option<String>| env(env_key).or(file_value);

        let storage_backend = match pick("STORAGE_BACKEND", file_config.storage_backend).as_deref()
        {
            None | Some("sqlite") => StorageBackend::Sqlite,
            Some("postgres") | Some("postgresql") => StorageBackend::Postgres,
            Some(other) => bail!("invalid STORAGE_BACKEND={other:?}: expected sqlite or postgres"),
        };
        let database_url = pick("DATABASE_URL", file_config.database_url).filter(|s| !s.is_empty());
        if storage_backend == StorageBackend::Postgres {
            match &database_url {
                None => bail!("DATABASE_URL is required when STORAGE_BACKEND=postgres"),
                Some(u) if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) => {
                    bail!(
                        "invalid DATABASE_URL: expected a postgres:// URL when STORAGE_BACKEND=postgres"
                    )
                }
                Some(_) => {}
            }
        } else if let Some(u) = &database_url
            && !u.starts_with("sqlite:")
        {
            bail!("invalid DATABASE_URL: expected sqlite:PATH when STORAGE_BACKEND=sqlite");
        }
        let database_schema =
            pick("MERIDIAN_DATABASE_SCHEMA", file_config.database_schema).filter(|s| !s.is_empty());
        if let Some(s) = &database_schema {
            let ok = s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !s.as_bytes()[0].is_ascii_digit();
            if !ok {
                bail!(
                    "invalid MERIDIAN_DATABASE_SCHEMA={s:?}: use up to 63 of a-z, 0-9 and '_', not starting with a digit"
                );
            }
        }
        let bind_raw =
            pick("MERIDIAN_BIND", file_config.bind).unwrap_or_else(|| "127.0.0.1:8080".into());
        let bind: SocketAddr = bind_raw.parse().with_context(|| {
            format!("invalid MERIDIAN_BIND={bind_raw:?}: expected host:port such as 127.0.0.1:8080")
        })?;
        let data_dir = env("MERIDIAN_DATA_DIR")
            .map(PathBuf::from)
            .or(file_config.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        if data_dir.as_os_str().is_empty() {
            bail!("invalid MERIDIAN_DATA_DIR: must not be empty");
        }
        let deployment_id = pick("MERIDIAN_DEPLOYMENT_ID", file_config.deployment_id)
            .unwrap_or_else(|| "local".into());
        EventSource::new(&deployment_id)
            .map_err(|e| anyhow::anyhow!("invalid MERIDIAN_DEPLOYMENT_ID: {e}"))?;
        let log_format = match pick("MERIDIAN_LOG_FORMAT", file_config.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("invalid MERIDIAN_LOG_FORMAT={other:?}: expected text or json"),
        };
        let body_limit_bytes = number(
            &env,
            "MERIDIAN_BODY_LIMIT_BYTES",
            file_config.body_limit_bytes,
            1 << 20,
            1024..=64 << 20,
        )?;
        let pg_pool_size = number(
            &env,
            "MERIDIAN_PG_POOL_SIZE",
            file_config.pg_pool_size,
            16,
            1..=256,
        )?;
        let sqlite_readers = number(
            &env,
            "MERIDIAN_SQLITE_READERS",
            file_config.sqlite_readers,
            4,
            1..=64,
        )?;
        let bus_backend = match pick("BUS_BACKEND", file_config.bus_backend).as_deref() {
            None | Some("embedded") => BusBackend::Embedded,
            Some("memory") => BusBackend::Memory,
            Some("nats") => BusBackend::Nats,
            Some("rabbitmq") => BusBackend::Rabbitmq,
            Some("kafka") => BusBackend::Kafka,
            Some(other) => {
                bail!(
                    "invalid BUS_BACKEND={other:?}: expected embedded, memory, nats, rabbitmq or kafka"
                )
            }
        };
        let built = match bus_backend {
            BusBackend::Nats => cfg!(feature = "bus-nats"),
            BusBackend::Rabbitmq => cfg!(feature = "bus-rabbitmq"),
            BusBackend::Kafka => cfg!(feature = "bus-kafka"),
            BusBackend::Memory | BusBackend::Embedded => true,
        };
        if !built {
            let name = bus_backend.as_str();
            bail!(
                "BUS_BACKEND={name} needs the `bus-{name}` feature; rebuild with --features bus-{name}"
            );
        }
        let bus_url = pick("BUS_URL", file_config.bus_url).filter(|s| !s.is_empty());
        let gateway = gateway_settings(
            &env,
            GatewayFileParts {
                services: file_config.services,
                cors_origins: file_config.cors_origins,
                request_timeout_ms: file_config.request_timeout_ms,
                rate_limits: file_config.rate_limits.unwrap_or_default(),
                gateway: file_config.gateway.unwrap_or_default(),
            },
        )?;
        match (bus_backend, &bus_url) {
            (BusBackend::Nats | BusBackend::Rabbitmq | BusBackend::Kafka, None) => bail!(
                "BUS_URL is required when BUS_BACKEND={}",
                bus_backend.as_str()
            ),
            (BusBackend::Nats, Some(u))
                if !["nats://", "tls://", "ws://", "wss://"]
                    .iter()
                    .any(|p| u.starts_with(p)) =>
            {
                bail!("invalid BUS_URL: expected a nats:// URL when BUS_BACKEND=nats")
            }
            (BusBackend::Rabbitmq, Some(u))
                if !(u.starts_with("amqp://") || u.starts_with("amqps://")) =>
            {
                bail!("invalid BUS_URL: expected an amqp:// URL when BUS_BACKEND=rabbitmq")
            }
            // `kafka://host:port[,host:port][?partitions=N&replication=N]` or a bare
            // `host:port[,host:port]` bootstrap list.
            (BusBackend::Kafka, Some(u))
                if u.strip_prefix("kafka://").unwrap_or(u).contains("://") || !u.contains(':') =>
            {
                bail!(
                    "invalid BUS_URL: expected kafka://host:port or host:port[,host:port] when \
                     BUS_BACKEND=kafka"
                )
            }
            (BusBackend::Memory | BusBackend::Embedded, Some(_)) => bail!(
                "BUS_URL is set but BUS_BACKEND={} does not use it; unset BUS_URL or choose \
                 BUS_BACKEND=nats, rabbitmq or kafka",
                bus_backend.as_str()
            ),
            _ => {}
        }
        let auth =
            crate::auth_config::AuthSettings::load(file_config.auth.unwrap_or_default(), &env)?;
        auth.validate()?;
        let fulfillment = crate::fulfillment_config::FulfillmentSettings::load(
            file_config.fulfillment.unwrap_or_default(),
            &env,
        )?;
        let notify = crate::notify_config::NotifySettings::load(
            file_config.notify.unwrap_or_default(),
            &env,
        )?;
        let outbound = match env("MERIDIAN_HTTP_CA_FILE")
            .map(PathBuf::from)
            .or(file_config.http_ca_file)
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => meridian_http::Outbound::with_ca_file(&path)?,
            None => meridian_http::Outbound::system(),
        };
        Ok(Config {
            outbound,
            gateway,
            auth,
            fulfillment,
            notify,
            bus_backend,
            bus_url,
            storage_backend,
            database_url,
            database_schema,
            bind,
            data_dir,
            deployment_id,
            log_format,
            body_limit_bytes,
            pg_pool_size,
            sqlite_readers,
        })
    }

    pub fn events(&self) -> EventSource {
        EventSource::new(&self.deployment_id).expect("validated at load")
    }

    /// Where the SQLite database lives: `DATABASE_URL=sqlite:PATH`, else `data_dir/meridian.db`.
    pub fn sqlite_path(&self) -> PathBuf {
        match &self.database_url {
            Some(url) => {
                let p = url.trim_start_matches("sqlite:");
                PathBuf::from(p.strip_prefix("//").unwrap_or(p))
            }
            None => self.data_dir.join("meridian.db"),
        }
    }

    pub fn store_config(&self) -> Result<StoreConfig> {
        match self.storage_backend {
            StorageBackend::Sqlite => {
                Ok(StoreConfig::Sqlite(meridian_store::sqlite::SqliteConfig {
                    path: self.sqlite_path(),
                    readers: self.sqlite_readers,
                }))
            }
            #[cfg(feature = "store-postgres")]
            StorageBackend::Postgres => {
                Ok(StoreConfig::Postgres(meridian_store::postgres::PgConfig {
                    url: self.database_url.clone().unwrap_or_default(),
                    schema: self.database_schema.clone(),
                    pool_size: self.pg_pool_size,
                }))
            }
            #[cfg(not(feature = "store-postgres"))]
            StorageBackend::Postgres => bail!(
                "STORAGE_BACKEND=postgres needs the `store-postgres` feature; rebuild with --features store-postgres"
            ),
        }
    }
}

struct GatewayFileParts {
    services: Option<String>,
    cors_origins: Option<String>,
    request_timeout_ms: Option<usize>,
    rate_limits: RateLimitsFile,
    gateway: GatewayFile,
}

fn gateway_settings(
    env: &impl Fn(&str) -> Option<String>,
    file: GatewayFileParts,
) -> Result<GatewaySettings> {
    use meridian_gateway::{BreakerConfig, Plans, Policy, ProxyConfig, RateLimitConfig, Services};
    use std::time::Duration;

    let pick = |key: &str, file_value: Option<String>| env(key).or(file_value);
    let ms = |key: &str, file_value: Option<usize>, default: usize, max: usize| {
        number(env, key, file_value, default, 1..=max).map(|v| Duration::from_millis(v as u64))
    };
    let services = match pick("MERIDIAN_SERVICES", file.services) {
        None => Services::all(),
        Some(s) => Services::parse(&s)?,
    };
    let upstreams = meridian_gateway::routing::parse_upstreams(
        &pick("MERIDIAN_GATEWAY_UPSTREAMS", file.gateway.upstreams.clone()).unwrap_or_default(),
        &services,
    )?;
    let cors_origins: Vec<String> = pick("MERIDIAN_CORS_ORIGINS", file.cors_origins)
        .unwrap_or_default()
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    for o in &cors_origins {
        let ok = o == "*"
            || ((o.starts_with("http://") || o.starts_with("https://"))
                && axum::http::HeaderValue::from_str(o).is_ok());
        if !ok {
            bail!(
                "invalid MERIDIAN_CORS_ORIGINS entry {o:?}: expected * or origins such as https://app.example.com"
            );
        }
    }
    let request_timeout = ms(
        "MERIDIAN_REQUEST_TIMEOUT_MS",
        file.request_timeout_ms,
        30_000,
        600_000,
    )?;

    let rl = file.rate_limits;
    let policy = match pick("MERIDIAN_RATE_LIMIT_POLICY", rl.policy).as_deref() {
        None | Some("local") => Policy::Local,
        Some("off") => Policy::Off,
        Some("redis") => Policy::Redis,
        Some(other) => {
            bail!("invalid MERIDIAN_RATE_LIMIT_POLICY={other:?}: expected off, local or redis")
        }
    };
    let redis_url = pick("MERIDIAN_REDIS_URL", rl.redis_url).filter(|s| !s.is_empty());
    match (policy, &redis_url) {
        (Policy::Redis, None) => {
            bail!("MERIDIAN_REDIS_URL is required when MERIDIAN_RATE_LIMIT_POLICY=redis")
        }
        (_, Some(u)) if !(u.starts_with("redis://") || u.starts_with("unix://")) => {
            bail!("invalid MERIDIAN_REDIS_URL: expected a redis:// URL")
        }
        _ => {}
    }
    let plans = Plans::with_specs(&rl.plans)
        .map_err(|e| anyhow::anyhow!("invalid [rate_limits.plans] in the config file: {e}"))?;
    let defaults = RateLimitConfig::default();
    let rate_limit = RateLimitConfig {
        policy,
        redis_url,
        redis_prefix: pick("MERIDIAN_RATE_LIMIT_REDIS_PREFIX", rl.redis_prefix)
            .unwrap_or(defaults.redis_prefix),
        redis_timeout: ms(
            "MERIDIAN_RATE_LIMIT_REDIS_TIMEOUT_MS",
            rl.redis_timeout_ms,
            50,
            10_000,
        )?,
        expected_instances: number(
            env,
            "MERIDIAN_RATE_LIMIT_INSTANCES",
            rl.expected_instances,
            2,
            1..=1024,
        )? as u32,
        plans,
        ..defaults
    };
    let g = file.gateway;
    let proxy = ProxyConfig {
        connect_timeout: ms(
            "MERIDIAN_UPSTREAM_CONNECT_TIMEOUT_MS",
            g.connect_timeout_ms,
            1_000,
            60_000,
        )?,
        request_timeout: ms(
            "MERIDIAN_UPSTREAM_TIMEOUT_MS",
            g.upstream_timeout_ms,
            10_000,
            600_000,
        )?,
        retries: number(env, "MERIDIAN_UPSTREAM_RETRIES", g.retries, 1, 0..=5)? as u32,
        breaker: BreakerConfig {
            failure_threshold: number(
                env,
                "MERIDIAN_BREAKER_FAILURES",
                g.breaker_failures,
                5,
                1..=1000,
            )? as u32,
            cooldown: ms(
                "MERIDIAN_BREAKER_COOLDOWN_MS",
                g.breaker_cooldown_ms,
                5_000,
                600_000,
            )?,
        },
    };
    Ok(GatewaySettings {
        services,
        rate_limit,
        upstreams,
        proxy,
        cors_origins,
        request_timeout,
    })
}

fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn number(
    env: &impl Fn(&str) -> Option<String>,
    key: &str,
    file_value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize> {
    let value = match env(key) {
        Some(raw) => raw
            .parse::<usize>()
            .with_context(|| format!("invalid {key}={raw:?}: expected a whole number"))?,
        None => file_value.unwrap_or(default),
    };
    if !range.contains(&value) {
        bail!(
            "invalid {key}={value}: must be between {} and {}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(Some(Path::new("/dev/null")), |k| map.get(k).cloned())
    }

    #[test]
    fn the_http_ca_file_is_read_at_start() {
        assert!(load(&[]).unwrap().outbound.ca_file().is_none());
        let e = load(&[("MERIDIAN_HTTP_CA_FILE", "/nonexistent/ca.pem")]).unwrap_err();
        assert!(e.to_string().contains("MERIDIAN_HTTP_CA_FILE"), "{e}");
    }

    #[test]
    fn defaults_are_the_single_node_path() {
        let c = load(&[]).unwrap();
        assert_eq!(c.storage_backend, StorageBackend::Sqlite);
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(c.sqlite_path(), PathBuf::from("data/meridian.db"));
        assert_eq!(c.deployment_id, "local");
        assert_eq!(c.bus_backend, BusBackend::Embedded);
        assert_eq!(c.bus_url, None);
    }

    #[test]
    fn bus_backends_and_urls() {
        let c = load(&[
            ("BUS_BACKEND", "nats"),
            ("BUS_URL", "nats://127.0.0.1:4222"),
        ])
        .unwrap();
        assert_eq!(c.bus_backend, BusBackend::Nats);
        assert_eq!(c.bus_url.as_deref(), Some("nats://127.0.0.1:4222"));
        let c = load(&[
            ("BUS_BACKEND", "rabbitmq"),
            ("BUS_URL", "amqp://g:g@h:5672/%2f"),
        ])
        .unwrap();
        assert_eq!(c.bus_backend, BusBackend::Rabbitmq);
        let c = load(&[
            ("BUS_BACKEND", "kafka"),
            ("BUS_URL", "kafka://127.0.0.1:19092"),
        ])
        .unwrap();
        assert_eq!(c.bus_backend, BusBackend::Kafka);
        assert_eq!(c.bus_url.as_deref(), Some("kafka://127.0.0.1:19092"));
        let c = load(&[("BUS_BACKEND", "kafka"), ("BUS_URL", "k1:9092,k2:9092")]).unwrap();
        assert_eq!(c.bus_url.as_deref(), Some("k1:9092,k2:9092"));
        assert_eq!(
            load(&[("BUS_BACKEND", "memory")]).unwrap().bus_backend,
            BusBackend::Memory
        );
    }

    #[test]
    fn bad_values_name_their_setting() {
        let cases = [
            (vec![("STORAGE_BACKEND", "mongo")], "STORAGE_BACKEND"),
            (vec![("STORAGE_BACKEND", "postgres")], "DATABASE_URL"),
            (
                vec![
                    ("STORAGE_BACKEND", "postgres"),
                    ("DATABASE_URL", "mysql://x"),
                ],
                "DATABASE_URL",
            ),
            (vec![("MERIDIAN_BIND", "nope")], "MERIDIAN_BIND"),
            (
                vec![("MERIDIAN_DEPLOYMENT_ID", "Bad Id")],
                "MERIDIAN_DEPLOYMENT_ID",
            ),
            (vec![("MERIDIAN_LOG_FORMAT", "xml")], "MERIDIAN_LOG_FORMAT"),
            (
                vec![("MERIDIAN_PG_POOL_SIZE", "0")],
                "MERIDIAN_PG_POOL_SIZE",
            ),
            (
                vec![("MERIDIAN_BODY_LIMIT_BYTES", "lots")],
                "MERIDIAN_BODY_LIMIT_BYTES",
            ),
            (
                vec![("MERIDIAN_DATABASE_SCHEMA", "Robert'); DROP")],
                "MERIDIAN_DATABASE_SCHEMA",
            ),
            (vec![("BUS_BACKEND", "kafkaesque")], "BUS_BACKEND"),
            (vec![("BUS_BACKEND", "nats")], "BUS_URL"),
            (vec![("BUS_BACKEND", "rabbitmq")], "BUS_URL"),
            (
                vec![("BUS_BACKEND", "nats"), ("BUS_URL", "amqp://x")],
                "BUS_URL",
            ),
            (
                vec![("BUS_BACKEND", "rabbitmq"), ("BUS_URL", "nats://x")],
                "BUS_URL",
            ),
            (vec![("BUS_URL", "nats://x")], "BUS_URL"),
            (vec![("BUS_BACKEND", "kafka")], "BUS_URL"),
            (
                vec![("BUS_BACKEND", "kafka"), ("BUS_URL", "nats://h:4222")],
                "BUS_URL",
            ),
            (
                vec![("BUS_BACKEND", "kafka"), ("BUS_URL", "just-a-host")],
                "BUS_URL",
            ),
        ];
        for (vars, setting) in cases {
            let err = format!("{:#}", load(&vars).unwrap_err());
            assert!(err.contains(setting), "{vars:?}: {err}");
        }
    }

    #[test]
    fn gateway_settings_are_validated() {
        let c = load(&[]).unwrap();
        assert!(c.gateway.services.is_all());
        assert_eq!(c.gateway.rate_limit.policy, meridian_gateway::Policy::Local);
        let c = load(&[
            ("MERIDIAN_SERVICES", "gateway,auth"),
            (
                "MERIDIAN_GATEWAY_UPSTREAMS",
                "catalog=http://127.0.0.1:9001,inventory=http://127.0.0.1:9001,orders=http://127.0.0.1:9002",
            ),
            ("MERIDIAN_RATE_LIMIT_POLICY", "redis"),
            ("MERIDIAN_REDIS_URL", "redis://127.0.0.1:6379"),
            ("MERIDIAN_CORS_ORIGINS", "https://app.example.com, http://localhost:3000/"),
        ])
        .unwrap();
        assert_eq!(c.gateway.upstreams.len(), 3);
        assert_eq!(
            c.gateway.cors_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        let cases = [
            (
                vec![("MERIDIAN_SERVICES", "gateway,billing")],
                "MERIDIAN_SERVICES",
            ),
            (
                vec![("MERIDIAN_SERVICES", "gateway")],
                "MERIDIAN_GATEWAY_UPSTREAMS",
            ),
            (
                vec![("MERIDIAN_GATEWAY_UPSTREAMS", "orders=http://x:1")],
                "MERIDIAN_GATEWAY_UPSTREAMS",
            ),
            (
                vec![("MERIDIAN_RATE_LIMIT_POLICY", "fast")],
                "MERIDIAN_RATE_LIMIT_POLICY",
            ),
            (
                vec![("MERIDIAN_RATE_LIMIT_POLICY", "redis")],
                "MERIDIAN_REDIS_URL",
            ),
            (
                vec![("MERIDIAN_REDIS_URL", "http://x")],
                "MERIDIAN_REDIS_URL",
            ),
            (
                vec![("MERIDIAN_CORS_ORIGINS", "app.example.com")],
                "MERIDIAN_CORS_ORIGINS",
            ),
            (
                vec![("MERIDIAN_BREAKER_FAILURES", "0")],
                "MERIDIAN_BREAKER_FAILURES",
            ),
            (
                vec![("MERIDIAN_UPSTREAM_TIMEOUT_MS", "soon")],
                "MERIDIAN_UPSTREAM_TIMEOUT_MS",
            ),
        ];
        for (vars, setting) in cases {
            let err = format!("{:#}", load(&vars).unwrap_err());
            assert!(err.contains(setting), "{vars:?}: {err}");
        }
    }

    #[test]
    fn plans_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meridian.toml");
        std::fs::write(
            &path,
            "[rate_limits]\npolicy = \"local\"\n[rate_limits.plans.standard]\nread = \"5/s burst 10\"\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&path), |_| None).unwrap();
        let read = c.gateway.rate_limit.plans.get("standard").read;
        assert_eq!(read, meridian_gateway::Quota::per_second(5.0, 10));
        std::fs::write(&path, "[rate_limits.plans.standard]\nread = \"lots\"\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load_from(Some(&path), |_| None).unwrap_err()
        );
        assert!(
            err.contains("rate_limits.plans") && err.contains("read"),
            "{err}"
        );
    }

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meridian.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9000\"\ndeployment_id = \"filed\"\n",
        )
        .unwrap();
        let c = Config::load_from(Some(&path), |k| {
            (k == "MERIDIAN_BIND").then(|| "127.0.0.1:9100".to_string())
        })
        .unwrap();
        assert_eq!(c.bind.port(), 9100);
        assert_eq!(c.deployment_id, "filed");
        std::fs::write(&path, "colour = \"blue\"\n").unwrap();
        let err = format!(
            "{:#}",
            Config::load_from(Some(&path), |_| None).unwrap_err()
        );
        assert!(err.contains("colour"), "{err}");
    }
}
