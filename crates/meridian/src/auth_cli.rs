//! `meridian keys ...` and `meridian users ...`: operator commands of the auth service.

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use meridian_core::TenantId;
use meridian_store::{NewUser, Role, Store};

use crate::config::Config;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a new JWT signing key current now. The previous keys stay in the JWKS until the
    /// tokens they signed have expired; every instance picks the new key up within 30 s (at
    /// once for tokens it has not seen).
    Rotate,
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a user. The password is read from stdin (one line) when stdin is not a
    /// terminal; otherwise one is generated and printed once.
    Create {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        email: String,
        /// owner, admin, member, viewer or platform_admin.
        #[arg(long)]
        role: Role,
    },
}

pub async fn keys(config: &Config, store: &dyn Store, command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Rotate => {
            let auth = crate::auth_config::auth_config(config)?;
            let kid = meridian_api::auth::AuthService::rotate_signing_key(store, &auth)
                .await
                .context("cannot rotate the signing keys")?;
            println!("new signing key {kid}");
        }
    }
    Ok(())
}

/// The password to give a new user, and whether it was generated (and must be shown).
fn password_from_stdin() -> Result<(String, bool)> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok((meridian_auth::password::generate(), true));
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Ok((meridian_auth::password::generate(), true));
    }
    if let Err(e) = meridian_auth::password::check(&password) {
        bail!("the password {e}");
    }
    Ok((password, false))
}

/// Creates a user; returns it with its password when that was generated (to show once).
pub async fn create_user(
    store: &dyn Store,
    tenant: TenantId,
    email: &str,
    role: Role,
    (password, generated): (String, bool),
) -> Result<(meridian_store::User, Option<String>)> {
    let hash = {
        let p = password.clone();
        tokio::task::spawn_blocking(move || meridian_auth::password::hash(&p)).await?
    };
    let user = store
        .create_user(
            tenant,
            NewUser {
                email: email.to_owned(),
                password_hash: hash,
                role,
            },
        )
        .await
        .context("cannot create the user")?;
    Ok((user, generated.then_some(password)))
}

/// Prints a created user, and its generated password if there is one.
pub fn print_user(user: &meridian_store::User, password: Option<&str>) {
    println!("user {} ({}) role {}", user.email, user.id, user.role);
    if let Some(p) = password {
        println!("password {p} (shown once; store it now)");
    }
}

pub async fn users(store: &dyn Store, command: UsersCommand) -> Result<()> {
    match command {
        UsersCommand::Create {
            tenant,
            email,
            role,
        } => {
            let (user, password) =
                create_user(store, tenant, &email, role, password_from_stdin()?).await?;
            print_user(&user, password.as_deref());
            Ok(())
        }
    }
}

/// For `tenants create --owner-email`: a generated password, printed once.
pub fn generated_password() -> (String, bool) {
    (meridian_auth::password::generate(), true)
}
