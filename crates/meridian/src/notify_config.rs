//! The notification settings: `[notify]` in `meridian.toml` and `MERIDIAN_SMTP_*`,
//! `MERIDIAN_EMAIL_FROM`, `MERIDIAN_SMS_*`, `MERIDIAN_NOTIFY_*` and `MERIDIAN_WEBHOOK_*` in
//! the environment, validated at start.

use std::time::Duration;

use anyhow::{Result, bail};
use meridian_notify::WorkerConfig;
use meridian_notify::email::{EmailConfig, SmtpProvider};
use meridian_notify::sms::SmsConfig;
use serde::Deserialize;

use crate::auth_config::parse_duration;

/// `[notify]` in `meridian.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// SMTP relays as `host:port`, comma-separated, primary first.
    pub smtp_servers: Option<String>,
    /// The sender of notification emails.
    pub email_from: Option<String>,
    /// Per-request timeout of a webhook delivery, like `10s`.
    pub webhook_timeout: Option<String>,
    /// The HTTP SMS provider's URL.
    pub sms_url: Option<String>,
    /// Its bearer token (better given in the environment).
    pub sms_token: Option<String>,
    /// The SMS sender id.
    pub sms_from: Option<String>,
    /// Sends per second per tenant (0: unlimited).
    pub tenant_rate: Option<u32>,
    /// Sends a tenant may burst above its rate.
    pub tenant_burst: Option<u32>,
    /// Whether tenant webhooks may reach loopback, private and link-local addresses.
    pub webhook_allow_private: Option<bool>,
}

/// The validated settings.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    pub email: Option<EmailConfig>,
    pub sms: Option<SmsConfig>,
    pub tenant_rate: u32,
    pub tenant_burst: u32,
    pub webhook_timeout: Duration,
    /// `MERIDIAN_WEBHOOK_ALLOW_PRIVATE`: tenant webhooks may reach non-public addresses.
    pub webhook_allow_private: bool,
}

impl NotifySettings {
    pub fn load(file: NotifyFile, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let pick = |key: &str, v: Option<String>| env(key).or(v).filter(|s| !s.trim().is_empty());
        let servers: Vec<String> = pick("MERIDIAN_SMTP_SERVERS", file.smtp_servers)
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect())
            .unwrap_or_default();
        for s in &servers {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                bail!(
                    "invalid MERIDIAN_SMTP_SERVERS entry {s:?}: expected host:port such as 127.0.0.1:25"
                );
            }
        }
        let from = pick("MERIDIAN_EMAIL_FROM", file.email_from);
        let email = match (servers.is_empty(), from) {
            (true, _) => None,
            (false, None) => {
                bail!("MERIDIAN_EMAIL_FROM is required when MERIDIAN_SMTP_SERVERS is set")
            }
            (false, Some(from)) if !from.contains('@') || from.contains(['\r', '\n', '<', '>']) => {
                bail!("invalid MERIDIAN_EMAIL_FROM={from:?}: expected an email address")
            }
            (false, Some(from)) => Some(EmailConfig {
                providers: servers
                    .into_iter()
                    .map(|address| SmtpProvider { address })
                    .collect(),
                hello_name: from
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default(),
                from,
                timeout: Duration::from_secs(10),
            }),
        };
        let webhook_timeout = match pick("MERIDIAN_WEBHOOK_TIMEOUT", file.webhook_timeout) {
            None => WorkerConfig::default().request_timeout,
            Some(s) => match parse_duration(&s) {
                Some(d) if d >= Duration::from_millis(100) && d <= Duration::from_secs(60) => d,
                _ => {
                    bail!("invalid MERIDIAN_WEBHOOK_TIMEOUT={s:?}: expected 100ms to 60s, like 10s")
                }
            },
        };
        let sms = match pick("MERIDIAN_SMS_URL", file.sms_url) {
            None => None,
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("invalid MERIDIAN_SMS_URL: expected an http:// or https:// URL");
                }
                Some(SmsConfig {
                    url,
                    token: pick("MERIDIAN_SMS_TOKEN", file.sms_token),
                    from: pick("MERIDIAN_SMS_FROM", file.sms_from)
                        .unwrap_or_else(|| "Meridian".to_owned()),
                })
            }
        };
        let count = |key: &str, file: Option<u32>, default: u32, max: u32| -> Result<u32> {
            match env(key) {
                None => Ok(file.unwrap_or(default)),
                Some(v) => match v.trim().parse::<u32>() {
                    Ok(n) if n <= max => Ok(n),
                    _ => bail!("invalid {key}={v:?}: expected a whole number from 0 to {max}"),
                },
            }
        };
        let tenant_rate = count("MERIDIAN_NOTIFY_TENANT_RATE", file.tenant_rate, 0, 100_000)?;
        let tenant_burst = count(
            "MERIDIAN_NOTIFY_TENANT_BURST",
            file.tenant_burst,
            100,
            100_000,
        )?;
        let webhook_allow_private = match env("MERIDIAN_WEBHOOK_ALLOW_PRIVATE") {
            None => file.webhook_allow_private.unwrap_or(false),
            Some(v) => match v.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => bail!("invalid MERIDIAN_WEBHOOK_ALLOW_PRIVATE={v:?}: expected true or false"),
            },
        };
        Ok(Self {
            email,
            sms,
            tenant_rate,
            tenant_burst,
            webhook_timeout,
            webhook_allow_private,
        })
    }

    /// The delivery worker's configuration.
    pub fn worker(&self) -> WorkerConfig {
        WorkerConfig {
            address_guard: meridian_http::AddressGuard {
                allow_private: self.webhook_allow_private,
            },
            request_timeout: self.webhook_timeout,
            email: self.email.clone(),
            sms: self.sms.clone(),
            tenant_rate_per_second: self.tenant_rate,
            tenant_burst: self.tenant_burst,
            ..WorkerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<NotifySettings> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NotifySettings::load(NotifyFile::default(), &move |k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn private_webhook_addresses_are_refused_unless_allowed() {
        let s = load(&[]).unwrap();
        assert!(!s.webhook_allow_private);
        assert!(!s.worker().address_guard.allow_private);
        let s = load(&[("MERIDIAN_WEBHOOK_ALLOW_PRIVATE", "true")]).unwrap();
        assert!(s.worker().address_guard.allow_private);
        let e = load(&[("MERIDIAN_WEBHOOK_ALLOW_PRIVATE", "maybe")]).unwrap_err();
        assert!(
            e.to_string().contains("MERIDIAN_WEBHOOK_ALLOW_PRIVATE"),
            "{e}"
        );
    }

    #[test]
    fn defaults_and_validation() {
        let s = load(&[]).unwrap();
        assert!(s.email.is_none());
        assert_eq!(s.webhook_timeout, Duration::from_secs(10));
        let s = load(&[
            (
                "MERIDIAN_SMTP_SERVERS",
                "127.0.0.1:2525, mail.example.com:25",
            ),
            ("MERIDIAN_EMAIL_FROM", "shop@example.com"),
            ("MERIDIAN_WEBHOOK_TIMEOUT", "2s"),
        ])
        .unwrap();
        let email = s.email.unwrap();
        assert_eq!(email.providers.len(), 2);
        assert_eq!(email.hello_name, "example.com");
        assert_eq!(s.webhook_timeout, Duration::from_secs(2));
        for (vars, named) in [
            (
                vec![("MERIDIAN_SMTP_SERVERS", "nohost")],
                "MERIDIAN_SMTP_SERVERS",
            ),
            (
                vec![("MERIDIAN_SMTP_SERVERS", "h:25")],
                "MERIDIAN_EMAIL_FROM",
            ),
            (
                vec![("MERIDIAN_WEBHOOK_TIMEOUT", "5m")],
                "MERIDIAN_WEBHOOK_TIMEOUT",
            ),
            (vec![("MERIDIAN_SMS_URL", "ftp://x")], "MERIDIAN_SMS_URL"),
            (
                vec![("MERIDIAN_NOTIFY_TENANT_RATE", "-1")],
                "MERIDIAN_NOTIFY_TENANT_RATE",
            ),
        ] {
            let e = load(&vars).unwrap_err().to_string();
            assert!(e.contains(named), "{e}");
        }
    }
}
