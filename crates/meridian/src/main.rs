//! The `meridian` binary: command line, configuration and the wiring of backends. The
//! behaviour lives in the library crates; this crate only assembles them.

mod auth_cli;
mod auth_config;
mod bench;
mod config;
mod demo;
mod fulfillment_config;
mod notify_config;
mod plugin_manager;
mod plugins_cli;
mod server;
mod sidecar;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Real-time inventory and order fulfillment for multi-tenant commerce"
)]
struct Cli {
    /// A TOML config file; defaults to ./meridian.toml when it exists. Environment variables
    /// override it (see README.md for the list).
    #[arg(long, global = true, env = "MERIDIAN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on embedded defaults, with a demo tenant on first start.
    Dev,
    /// Serve the API with the configured backends (for production).
    Serve {
        /// The services this process runs: `all` (the default), or a list such as
        /// `gateway` or `catalog,inventory`; a gateway forwards the others to
        /// MERIDIAN_GATEWAY_UPSTREAMS.
        #[arg(long, env = "MERIDIAN_SERVICES")]
        services: Option<String>,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Manage tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// JWT signing keys.
    Keys {
        #[command(subcommand)]
        command: auth_cli::KeysCommand,
    },
    /// Users of a tenant.
    Users {
        #[command(subcommand)]
        command: auth_cli::UsersCommand,
    },
    /// Inventory maintenance.
    Stock {
        #[command(subcommand)]
        command: StockCommand,
    },
    /// Messages a consumer gave up on: list, inspect and replay (across tenants, or one).
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// The plugin registry: register, list, approve or deny grants, deregister, audit.
    Plugins {
        #[command(subcommand)]
        command: plugins_cli::PluginsCommand,
    },
    /// A plugin's sidecar: its ACL-scoped door to the bus, state and health (docs/plugins.md).
    Sidecar(sidecar::SidecarArgs),
    /// Benchmarks against a real server over TCP.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Create a tenant and its first admin API key (shown once).
    Create {
        name: String,
        /// Print exactly {"tenant_id": "...", "api_key": "..."} on stdout.
        #[arg(long)]
        json: bool,
        /// Also create an owner user with this email (its password is printed once).
        #[arg(long)]
        owner_email: Option<String>,
    },
}

#[derive(Subcommand)]
enum StockCommand {
    /// Check every stock level against the sum of its ledger; exits 1 on any mismatch.
    Reconcile {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<meridian_core::TenantId>,
    },
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// Dead letters, newest first, one JSON object per line.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<meridian_core::TenantId>,
        /// At most this many (1 to 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The `next_cursor` printed by the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One dead letter, as JSON.
    Show { id: meridian_core::EventId },
    /// Publish the original message to its original topic again and mark it replayed.
    Replay { id: meridian_core::EventId },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Outbound https (webhooks, carriers, S3) runs on rustls with `ring`.
    meridian_http::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Bench { command } = cli.command {
        init_logging(LogFormat::Text, "warn");
        return bench::run(command).await.map(|()| ExitCode::SUCCESS);
    }
    let config = match &cli.command {
        Command::Serve {
            services: Some(services),
        } => Config::load_from(cli.config.as_deref(), |k| {
            if k == "MERIDIAN_SERVICES" {
                Some(services.clone())
            } else {
                std::env::var(k).ok()
            }
        })?,
        // `meridian dev` is a single developer's machine: webhook receivers on localhost are
        // the norm, so private addresses are allowed unless the variable says otherwise.
        Command::Dev => Config::load_from(cli.config.as_deref(), |k| {
            std::env::var(k)
                .ok()
                .or_else(|| (k == "MERIDIAN_WEBHOOK_ALLOW_PRIVATE").then(|| "true".to_owned()))
        })?,
        _ => Config::load(cli.config.as_deref())?,
    };
    match cli.command {
        Command::Dev => {
            init_logging(config.log_format, "info");
            demo::run_dev(config).await?;
        }
        Command::Serve { .. } => {
            init_logging(config.log_format, "info");
            server::serve(config, None).await?;
        }
        Command::Migrate => {
            init_logging(config.log_format, "info");
            let store = server::open_store(&config).await?;
            eprintln!("schema of the {} store is up to date", store.backend());
        }
        Command::Tenants {
            command:
                TenantsCommand::Create {
                    name,
                    json,
                    owner_email,
                },
        } => {
            init_logging(config.log_format, "warn");
            let store = server::open_store(&config).await?;
            let tenant = store
                .create_tenant(&name)
                .await
                .context("cannot create the tenant")?;
            let key = store
                .create_api_key(tenant.id, "admin")
                .await
                .context("cannot create the API key")?;
            let owner = match owner_email {
                Some(email) => Some(
                    auth_cli::create_user(
                        store.as_ref(),
                        tenant.id,
                        &email,
                        meridian_store::Role::Owner,
                        auth_cli::generated_password(),
                    )
                    .await?,
                ),
                None => None,
            };
            if json {
                let mut out = serde_json::json!({"tenant_id": tenant.id, "api_key": key.token});
                if let Some((user, password)) = &owner {
                    out["owner"] = serde_json::json!({
                        "user_id": user.id,
                        "email": user.email,
                        "password": password,
                    });
                }
                println!("{out}");
            } else {
                println!("tenant {} ({})", tenant.name, tenant.id);
                println!("api key {} (shown once; store it now)", key.token);
                if let Some((user, password)) = &owner {
                    auth_cli::print_user(user, password.as_deref());
                }
            }
        }
        Command::Keys { command } => {
            init_logging(config.log_format, "warn");
            let store = server::open_store(&config).await?;
            auth_cli::keys(&config, store.as_ref(), command).await?;
        }
        Command::Users { command } => {
            init_logging(config.log_format, "warn");
            let store = server::open_store(&config).await?;
            auth_cli::users(store.as_ref(), command).await?;
        }
        Command::Stock {
            command: StockCommand::Reconcile { tenant },
        } => {
            init_logging(config.log_format, "warn");
            let store = server::open_store(&config).await?;
            let mismatches = store.reconcile(tenant).await?;
            if mismatches.is_empty() {
                println!("ok: every stock level agrees with its ledger");
            } else {
                for m in &mismatches {
                    println!(
                        "mismatch: tenant {} warehouse {} sku {}: level (on_hand {}, reserved {}) but ledger (on_hand {}, reserved {})",
                        m.tenant_id,
                        m.warehouse_id,
                        m.sku,
                        m.level.0,
                        m.level.1,
                        m.ledger.0,
                        m.ledger.1
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::DeadLetters { command } => {
            init_logging(config.log_format, "warn");
            dead_letters(&config, command).await?;
        }
        Command::Plugins { command } => {
            init_logging(config.log_format, "warn");
            let (_, plugins) = server::open_stores(&config).await?;
            plugins_cli::run(plugins.as_ref(), command).await?;
        }
        Command::Sidecar(args) => {
            init_logging(config.log_format, "info");
            sidecar::run(&config, args).await?;
        }
        Command::Bench { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn dead_letters(config: &Config, command: DeadLettersCommand) -> Result<()> {
    let store = server::open_store(config).await?;
    match command {
        DeadLettersCommand::List {
            tenant,
            limit,
            cursor,
        } => {
            if !(1..=meridian_store::PageRequest::MAX_LIMIT).contains(&limit) {
                anyhow::bail!(
                    "--limit must be between 1 and {}",
                    meridian_store::PageRequest::MAX_LIMIT
                );
            }
            let page = store
                .list_dead_letters(tenant, meridian_store::PageRequest { limit, cursor })
                .await
                .context("cannot list dead letters")?;
            for d in &page.items {
                println!("{}", serde_json::to_string(d)?);
            }
            if let Some(next) = page.next_cursor {
                eprintln!("more: --cursor {next}");
            }
        }
        DeadLettersCommand::Show { id } => {
            let d = store
                .get_dead_letter(None, id)
                .await
                .with_context(|| format!("cannot show dead letter {id}"))?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        DeadLettersCommand::Replay { id } => {
            if config.bus_backend == config::BusBackend::Memory {
                anyhow::bail!(
                    "BUS_BACKEND=memory lives inside the server process; replay through the \
                     API instead (POST /v1/dead-letters/{id}/replay)"
                );
            }
            let bus = server::open_bus(config).await?;
            let d = meridian_relay::replay_dead_letter(store.as_ref(), bus.as_ref(), None, id)
                .await
                .with_context(|| format!("cannot replay dead letter {id}"))?;
            println!(
                "replayed {} to {} (event {})",
                d.id, d.original_topic, d.envelope.id
            );
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
