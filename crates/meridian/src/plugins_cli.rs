//! `meridian plugins`: the plugin registry from the command line, working on the configured
//! store directly (as `meridian tenants create` does). Every change is audited with the
//! actor `cli:{user}`, where the user is `$USER` (or `unknown`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use meridian_plugin::{Direction, GrantDecision, GrantDecisions, GrantStatus};
use meridian_store::{GrantDirection, GrantState, PluginRecord, PluginStore};
use uuid::Uuid;

#[derive(clap::Subcommand)]
pub enum PluginsCommand {
    /// Register a plugin from its manifest (TOML); its grants start pending.
    Register { manifest: PathBuf },
    /// Registered plugins with their grants, one JSON object per line.
    List,
    /// One plugin, as JSON.
    Show { plugin: String },
    /// Approve one of a plugin's grants (its id, as `list` shows it).
    Approve { plugin: String, grant: Uuid },
    /// Deny one of a plugin's grants, or revoke an approval.
    Deny { plugin: String, grant: Uuid },
    /// Deregister a plugin; its audit trail stays.
    Deregister { plugin: String },
    /// The audit trail (of one plugin, or of the registry), oldest first, one JSON object
    /// per line.
    Audit { plugin: Option<String> },
}

fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// A plugin by id or name.
async fn resolve(store: &dyn PluginStore, key: &str) -> Result<PluginRecord> {
    match key.parse::<Uuid>() {
        Ok(id) => store.get_plugin(id).await,
        Err(_) => store.find_plugin(key).await,
    }
    .with_context(|| format!("cannot find plugin {key}"))
}

/// The decisions the sidecar's ACL applies: approvals and denials; pending grants allow
/// nothing and are left out.
pub fn decisions(p: &PluginRecord) -> GrantDecisions {
    GrantDecisions {
        grants: p
            .grants
            .iter()
            .filter_map(|g| {
                let decision = match g.state {
                    GrantState::Pending => return None,
                    GrantState::Approved => GrantStatus::Approved,
                    GrantState::Denied => GrantStatus::Denied,
                };
                Some(GrantDecision {
                    direction: match g.direction {
                        GrantDirection::Publish => Direction::Publish,
                        GrantDirection::Subscribe => Direction::Subscribe,
                    },
                    pattern: g.pattern.clone(),
                    decision,
                })
            })
            .collect(),
    }
}

pub async fn run(store: &dyn PluginStore, command: PluginsCommand) -> Result<()> {
    match command {
        PluginsCommand::Register { manifest } => {
            let text = std::fs::read(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let (m, text) = match meridian_api::parse_manifest(false, &text) {
                Ok(parsed) => parsed,
                Err(problem) => bail!("{}: {}", manifest.display(), problem_text(&problem)),
            };
            let p = store
                .register_plugin(&meridian_api::new_plugin(&m, text, actor()))
                .await
                .context("cannot register the plugin")?;
            println!("registered {} {} ({})", p.name, p.version, p.id);
            for g in &p.grants {
                println!(
                    "  grant {} {} {} ({})",
                    g.id, g.direction, g.pattern, g.state
                );
            }
        }
        PluginsCommand::List => {
            for p in store.list_plugins().await.context("cannot list plugins")? {
                println!("{}", serde_json::to_string(&p)?);
            }
        }
        PluginsCommand::Show { plugin } => {
            let p = resolve(store, &plugin).await?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        PluginsCommand::Approve { plugin, grant } => {
            decide(store, &plugin, grant, GrantState::Approved).await?;
        }
        PluginsCommand::Deny { plugin, grant } => {
            decide(store, &plugin, grant, GrantState::Denied).await?;
        }
        PluginsCommand::Deregister { plugin } => {
            let p = resolve(store, &plugin).await?;
            store
                .deregister_plugin(p.id, &actor())
                .await
                .context("cannot deregister the plugin")?;
            println!("deregistered {} ({})", p.name, p.id);
        }
        PluginsCommand::Audit { plugin } => {
            let id = match plugin {
                Some(key) => Some(resolve(store, &key).await?.id),
                None => None,
            };
            for e in store
                .plugin_audit(id)
                .await
                .context("cannot read the audit trail")?
            {
                println!("{}", serde_json::to_string(&e)?);
            }
        }
    }
    Ok(())
}

async fn decide(
    store: &dyn PluginStore,
    key: &str,
    grant: Uuid,
    decision: GrantState,
) -> Result<()> {
    let p = resolve(store, key).await?;
    let g = store
        .decide_grant(p.id, grant, decision, &actor())
        .await
        .with_context(|| format!("cannot decide grant {grant} of plugin {}", p.name))?;
    println!(
        "{} {} {} {} of {}",
        decision, g.id, g.direction, g.pattern, p.name
    );
    Ok(())
}

/// A problem's detail and its field errors, for a terminal.
fn problem_text(problem: &meridian_api::problem::Problem) -> String {
    let mut out = problem.detail().to_owned();
    for e in problem.errors() {
        out.push_str(&format!("\n  {}: {}", e.field, e.message));
    }
    out
}
