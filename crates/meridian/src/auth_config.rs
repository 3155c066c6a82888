//! The auth settings: `[auth]` in `meridian.toml` and `MERIDIAN_AUTH_*` in the
//! environment, validated at start, and the master key that seals the JWT signing keys.
//!
//! The master key comes from `MERIDIAN_AUTH_MASTER_KEY` (32 bytes, standard base64). On
//! SQLite, when it is unset, a key file (`auth-master.key`, mode 0600) in the data directory
//! is created on first start and read afterwards; on PostgreSQL, where several machines
//! share the keys, the setting is required.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_api::auth::AuthConfig;
use meridian_auth::MasterKey;
use serde::Deserialize;

use crate::config::{Config, StorageBackend};

/// `[auth]` in `meridian.toml`. Durations are written like `15m`, `30d`, `250ms`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub master_key: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub access_token_ttl: Option<String>,
    pub refresh_token_ttl: Option<String>,
    pub key_rotation: Option<String>,
    pub leeway: Option<String>,
    pub revocation_poll: Option<String>,
    pub login_failures_per_account: Option<u32>,
    pub login_failures_per_ip: Option<u32>,
    pub login_window: Option<String>,
}

/// The raw settings, before the master key is resolved.
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    master_key: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    access_token_ttl: Option<Duration>,
    refresh_token_ttl: Option<Duration>,
    key_rotation: Option<Duration>,
    leeway: Option<Duration>,
    revocation_poll: Option<Duration>,
    login_failures_per_account: Option<u32>,
    login_failures_per_ip: Option<u32>,
    login_window: Option<Duration>,
}

/// Parses `250ms`, `30s`, `15m`, `12h`, `30d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

impl AuthSettings {
    pub fn load(file: AuthFile, env: &dyn Fn(&str) -> Option<String>) -> Result<AuthSettings> {
        let pick = |k: &str, f: Option<String>| env(k).or(f).filter(|s| !s.trim().is_empty());
        let dur = |k: &str, f: Option<String>| -> Result<Option<Duration>> {
            match pick(k, f) {
                None => Ok(None),
                Some(v) => parse_duration(&v).map(Some).with_context(|| {
                    format!("invalid {k}={v:?}: expected a duration like 15m, 30d or 250ms")
                }),
            }
        };
        let num = |k: &str, f: Option<u32>| -> Result<Option<u32>> {
            match env(k) {
                None => Ok(f),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .with_context(|| format!("invalid {k}={v:?}: expected a whole number")),
            }
        };
        Ok(AuthSettings {
            master_key: pick("MERIDIAN_AUTH_MASTER_KEY", file.master_key),
            issuer: pick("MERIDIAN_AUTH_ISSUER", file.issuer),
            audience: pick("MERIDIAN_AUTH_AUDIENCE", file.audience),
            access_token_ttl: dur("MERIDIAN_AUTH_ACCESS_TOKEN_TTL", file.access_token_ttl)?,
            refresh_token_ttl: dur("MERIDIAN_AUTH_REFRESH_TOKEN_TTL", file.refresh_token_ttl)?,
            key_rotation: dur("MERIDIAN_AUTH_KEY_ROTATION", file.key_rotation)?,
            leeway: dur("MERIDIAN_AUTH_LEEWAY", file.leeway)?,
            revocation_poll: dur("MERIDIAN_AUTH_REVOCATION_POLL", file.revocation_poll)?,
            login_failures_per_account: num(
                "MERIDIAN_AUTH_LOGIN_FAILURES_PER_ACCOUNT",
                file.login_failures_per_account,
            )?,
            login_failures_per_ip: num(
                "MERIDIAN_AUTH_LOGIN_FAILURES_PER_IP",
                file.login_failures_per_ip,
            )?,
            login_window: dur("MERIDIAN_AUTH_LOGIN_WINDOW", file.login_window)?,
        })
    }

    /// Checks what can be checked without touching the disk.
    pub fn validate(&self) -> Result<()> {
        if let Some(k) = &self.master_key {
            MasterKey::from_base64(k)
                .map_err(|e| anyhow::anyhow!("invalid MERIDIAN_AUTH_MASTER_KEY: {e}"))?;
        }
        self.apply(AuthConfig::new(MasterKey::generate()), "http://x")
            .validate()
            .map_err(anyhow::Error::msg)
    }

    fn apply(&self, mut c: AuthConfig, default_issuer: &str) -> AuthConfig {
        c.issuer = self
            .issuer
            .clone()
            .unwrap_or_else(|| default_issuer.to_owned());
        if let Some(a) = &self.audience {
            c.audience.clone_from(a);
        }
        let set = |slot: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut c.access_token_ttl, self.access_token_ttl);
        set(&mut c.refresh_token_ttl, self.refresh_token_ttl);
        set(&mut c.key_rotation_interval, self.key_rotation);
        set(&mut c.leeway, self.leeway);
        set(&mut c.revocation_poll, self.revocation_poll);
        set(&mut c.login_window, self.login_window);
        if let Some(n) = self.login_failures_per_account {
            c.login_failures_per_account = n;
        }
        if let Some(n) = self.login_failures_per_ip {
            c.login_failures_per_ip = n;
        }
        c
    }
}

/// The auth configuration for `config`, resolving (and on SQLite, creating) the master key.
pub fn auth_config(config: &Config) -> Result<AuthConfig> {
    let settings = &config.auth;
    settings.validate()?;
    let master = match (&settings.master_key, config.storage_backend) {
        (Some(k), _) => MasterKey::from_base64(k)
            .map_err(|e| anyhow::anyhow!("invalid MERIDIAN_AUTH_MASTER_KEY: {e}"))?,
        (None, StorageBackend::Sqlite) => key_file(&config.data_dir)?,
        (None, StorageBackend::Postgres) => bail!(
            "MERIDIAN_AUTH_MASTER_KEY is required when STORAGE_BACKEND=postgres: every instance \
             must seal and open the JWT signing keys with the same key (generate one with \
             `openssl rand -base64 32`)"
        ),
    };
    // Stable across the instances of a deployment, whatever their addresses; set
    // MERIDIAN_AUTH_ISSUER to the public URL for OIDC clients.
    let default_issuer = format!("urn:meridian:{}", config.deployment_id);
    let c = settings.apply(AuthConfig::new(master), &default_issuer);
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(c)
}

/// Reads the data directory's key file, creating it (mode 0600) on first use.
fn key_file(data_dir: &Path) -> Result<MasterKey> {
    let path = data_dir.join("auth-master.key");
    if path.exists() {
        let s = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the auth master key file {}", path.display()))?;
        return MasterKey::from_base64(&s).map_err(|e| {
            anyhow::anyhow!(
                "the auth master key file {} is invalid: {e}",
                path.display()
            )
        });
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let key = MasterKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = match options.open(&path) {
        Ok(f) => f,
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return key_file(data_dir),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot create the auth master key file {}", path.display())
            });
        }
    };
    use std::io::Write;
    file.write_all(key.to_base64().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the auth master key file {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "MERIDIAN_AUTH_MASTER_KEY is not set: created a master key file for the JWT signing keys; \
         back it up with the database, or set MERIDIAN_AUTH_MASTER_KEY"
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("42"), Some(Duration::from_secs(42)));
        assert_eq!(parse_duration("5 weeks"), None);
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn settings_are_validated_with_the_setting_named() {
        let env = |k: &str| (k == "MERIDIAN_AUTH_ACCESS_TOKEN_TTL").then(|| "2d".to_owned());
        let s = AuthSettings::load(AuthFile::default(), &env).unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("MERIDIAN_AUTH_ACCESS_TOKEN_TTL"), "{e}");
        let env = |k: &str| (k == "MERIDIAN_AUTH_MASTER_KEY").then(|| "short".to_owned());
        let s = AuthSettings::load(AuthFile::default(), &env).unwrap();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("MERIDIAN_AUTH_MASTER_KEY")
        );
    }

    #[test]
    fn a_key_file_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = key_file(dir.path()).unwrap();
        let b = key_file(dir.path()).unwrap();
        assert_eq!(a.to_base64(), b.to_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("auth-master.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
