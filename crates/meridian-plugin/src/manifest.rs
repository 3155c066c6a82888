use std::collections::BTreeMap;
use std::fmt;

use meridian_bus::TopicPattern;
use meridian_core::{TenantId, ValidationErrors};
use serde::{Deserialize, Serialize};

use crate::schema::ConfigSchema;

/// A plugin's manifest, validated: every value in it is usable as it stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub name: PluginName,
    pub version: semver::Version,
    pub pool: PoolType,
    pub run: Run,
    /// The grants the plugin asks for; they start pending until an admin decides.
    pub grants: Requested,
    /// Set when the plugin works for one tenant only.
    pub tenant: Option<TenantId>,
    pub config_schema: Option<ConfigSchema>,
}

/// A plugin name: 1 to 63 of `[a-z0-9_-]`, starting with a letter or digit. It names the
/// plugin's durable subscriptions on the bus, so it follows the bus's consumer-name grammar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PluginName(String);

impl PluginName {
    pub const MAX_LEN: usize = 63;

    pub fn parse(s: &str) -> Result<PluginName, String> {
        let ok_char =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "name must be 1 to {} characters long",
                Self::MAX_LEN
            ));
        }
        if !s.bytes().all(ok_char) || !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(format!(
                "name {s:?} must use a-z, 0-9, '_' and '-' and start with a letter or digit"
            ));
        }
        Ok(PluginName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pool a plugin belongs to; it decides the plugin's template of allowed topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolType {
    /// Data gateway: catalog, stock and warehouse feeds.
    Dgm,
    /// Order management.
    Oms,
    Fulfillment,
    Notify,
    Analytics,
}

impl PoolType {
    pub const ALL: [PoolType; 5] = [
        PoolType::Dgm,
        PoolType::Oms,
        PoolType::Fulfillment,
        PoolType::Notify,
        PoolType::Analytics,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::Dgm => "dgm",
            PoolType::Oms => "oms",
            PoolType::Fulfillment => "fulfillment",
            PoolType::Notify => "notify",
            PoolType::Analytics => "analytics",
        }
    }

    /// The topics a plugin of this pool may use without any grant, relative to the
    /// deployment (`deployment.{id}.` is put in front): `(publish, subscribe)`.
    ///
    /// A pool reaches its own domain both ways. `analytics` only reads, and only the
    /// business domains (`data`, `oms`, `fulfillment`): billing, notification and auth
    /// events carry payment and contact details, so they take an approved grant (auth
    /// events are reserved and cannot be granted at all).
    pub fn template(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            PoolType::Dgm => (&["platform.data.**"], &["platform.data.**"]),
            PoolType::Oms => (&["platform.oms.**"], &["platform.oms.**"]),
            PoolType::Fulfillment => (&["platform.fulfillment.**"], &["platform.fulfillment.**"]),
            PoolType::Notify => (&["platform.notify.**"], &["platform.notify.**"]),
            PoolType::Analytics => (
                &[],
                &[
                    "platform.data.**",
                    "platform.oms.**",
                    "platform.fulfillment.**",
                ],
            ),
        }
    }
}

impl fmt::Display for PoolType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the plugin is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Run {
    /// A local process: the program and its arguments, and extra environment variables.
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A container image with an explicit tag or digest (never `latest`).
    Image { image: String },
}

/// The grants a plugin requests, as topic patterns relative to the deployment
/// (`platform.data.stock.*`), already checked against the pattern grammar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not TOML, or fields of the wrong type or unknown fields.
    #[error("the manifest is not valid TOML for a plugin manifest: {0}")]
    Syntax(String),
    /// Parsed, but some values are refused; every problem is listed.
    #[error("the manifest is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    pool: PoolType,
    run: RawRun,
    #[serde(default)]
    grants: RawGrants,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    config_schema: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    image: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrants {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// The most grants a manifest may request per direction.
const MAX_GRANTS: usize = 64;

impl Manifest {
    /// Parses and validates a TOML manifest, reporting every invalid field at once.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        let mut errors = ValidationErrors::new();
        let name = errors.check("name", PluginName::parse(&raw.name));
        let version = errors.check("version", parse_version(&raw.version));
        let run = errors.check("run", parse_run(raw.run));
        let tenant = match raw.tenant {
            None => None,
            Some(t) => errors.check(
                "tenant",
                t.parse::<TenantId>()
                    .map(Some)
                    .map_err(|_| format!("tenant {t:?} is not a tenant id (a UUID)")),
            ),
        };
        let mut grants = Requested::default();
        for (direction, list, out) in [
            ("publish", raw.grants.publish, &mut grants.publish),
            ("subscribe", raw.grants.subscribe, &mut grants.subscribe),
        ] {
            if list.len() > MAX_GRANTS {
                errors.push(
                    format!("grants.{direction}"),
                    format!("at most {MAX_GRANTS} patterns may be requested"),
                );
                continue;
            }
            for (i, p) in list.into_iter().enumerate() {
                if let Some(p) = errors.check(
                    &format!("grants.{direction}[{i}]"),
                    check_relative_pattern(&p).map(|()| p),
                ) && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
        let config_schema = match raw.config_schema {
            None => None,
            Some(v) => errors.check(
                "config_schema",
                ConfigSchema::new(v).map(Some).map_err(|e| e.to_string()),
            ),
        };
        errors.into_result()?;
        Ok(Manifest {
            name: name.expect("checked"),
            version: version.expect("checked"),
            pool: raw.pool,
            run: run.expect("checked"),
            grants,
            tenant: tenant.flatten(),
            config_schema: config_schema.flatten(),
        })
    }
}

fn parse_version(v: &str) -> Result<semver::Version, String> {
    if v.trim().eq_ignore_ascii_case("latest") {
        return Err(
            "`latest` is not a version: give the exact semver version (such as 1.4.2) so a \
             deployment always runs what was approved"
                .into(),
        );
    }
    semver::Version::parse(v)
        .map_err(|e| format!("{v:?} is not a semver version such as 1.4.2: {e}"))
}

fn parse_run(raw: RawRun) -> Result<Run, String> {
    match (raw.command, raw.image) {
        (Some(_), Some(_)) => Err("give either run.command or run.image, not both".into()),
        (None, None) => Err("give run.command (a local process) or run.image (a container)".into()),
        (Some(argv), None) => {
            if argv.is_empty() || argv[0].trim().is_empty() {
                return Err("run.command must name a program".into());
            }
            if let Some(k) = raw.env.keys().find(|k| !valid_env_name(k)) {
                return Err(format!(
                    "run.env: {k:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ));
            }
            Ok(Run::Command { argv, env: raw.env })
        }
        (None, Some(image)) => {
            if !raw.env.is_empty() {
                return Err("run.env goes with run.command; an image carries its own".into());
            }
            check_image(&image)?;
            Ok(Run::Image { image })
        }
    }
}

fn valid_env_name(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// An image reference must pin what runs: a digest, or a tag other than `latest`.
fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(format!("run.image {image:?} is not an image reference"));
    }
    if image.contains("@sha256:") {
        return Ok(());
    }
    // The tag follows the last ':' after the last '/' (a registry may carry a port).
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) => Err(format!(
            "run.image {image:?} uses the `latest` tag: pin a version tag or a digest"
        )),
        Some((_, tag)) if !tag.is_empty() => Ok(()),
        _ => Err(format!(
            "run.image {image:?} has no tag: pin a version tag or a digest"
        )),
    }
}

/// A grant pattern is written relative to the deployment (`platform.oms.order.*`), so a
/// manifest can never name another deployment.
pub(crate) fn check_relative_pattern(p: &str) -> Result<(), String> {
    if p == "deployment" || p.starts_with("deployment.") {
        return Err(format!(
            "{p:?}: write grant patterns relative to the deployment (such as \
             platform.data.stock.*); the sidecar confines them to its deployment"
        ));
    }
    TopicPattern::parse(&format!("deployment.x.{p}"))
        .map(|_| ())
        .map_err(|e| format!("{p:?} is not a topic pattern: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "warehouse-sync"
version = "1.2.0"
pool = "dgm"
tenant = "01900000-0000-7000-8000-000000000001"

[run]
command = ["./warehouse-sync", "--feed", "stock.csv"]
env = { RUST_LOG = "info" }

[grants]
publish = ["platform.data.stock.snapshot"]
subscribe = ["platform.oms.order.*", "platform.oms.order.*"]

[config_schema]
type = "object"
required = ["feed"]
[config_schema.properties.feed]
type = "string"
"#;

    #[test]
    fn a_full_manifest_parses() {
        let m = Manifest::from_toml(FULL).unwrap();
        assert_eq!(m.name.as_str(), "warehouse-sync");
        assert_eq!(m.version, semver::Version::new(1, 2, 0));
        assert_eq!(m.pool, PoolType::Dgm);
        assert!(
            matches!(&m.run, Run::Command { argv, env } if argv.len() == 3 && env["RUST_LOG"] == "info")
        );
        assert_eq!(m.grants.publish, ["platform.data.stock.snapshot"]);
        // A repeated request counts once.
        assert_eq!(m.grants.subscribe, ["platform.oms.order.*"]);
        assert!(m.tenant.is_some());
        assert!(m.config_schema.is_some());
    }

    fn with(version: &str, run: &str, extra: &str) -> String {
        format!("name = \"p\"\nversion = \"{version}\"\npool = \"oms\"\n{extra}\n[run]\n{run}\n")
    }

    #[test]
    fn versions_must_be_exact_semver() {
        let ok = |v: &str| Manifest::from_toml(&with(v, "image = \"x/p:1\"", "")).is_ok();
        assert!(ok("0.1.0"));
        assert!(ok("1.0.0-rc.1+build.5"));
        for bad in ["latest", "LATEST", "1.0", "v1.0.0", "", "1.0.0.0", "*"] {
            let err = Manifest::from_toml(&with(bad, "image = \"x/p:1\"", "")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("version"), "{bad}: {text}");
        }
        let err = Manifest::from_toml(&with("latest", "image = \"x/p:1\"", "")).unwrap_err();
        assert!(
            err.to_string().contains("`latest` is not a version"),
            "{err}"
        );
    }

    #[test]
    fn bad_manifests_name_every_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "name = \"P\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"p:1\"",
                "name",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"crm\"\n[run]\nimage = \"p:1\"",
                "unknown variant",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\n",
                "run.command",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\ncommand = []",
                "must name a program",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\ncommand = [\"x\"]\nimage = \"p:1\"",
                "not both",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"p\"",
                "no tag",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"reg:5000/p:latest\"",
                "`latest` tag",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\nextra = 1\n[run]\nimage = \"p:1\"",
                "unknown field",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\ntenant = \"acme\"\n[run]\nimage = \"p:1\"",
                "tenant",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"p:1\"\n[grants]\npublish = [\"deployment.other.platform.oms.x\"]",
                "relative to the deployment",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"p:1\"\n[grants]\nsubscribe = [\"platform.oms.**.x\"]",
                "grants.subscribe[0]",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\ncommand = [\"x\"]\nenv = { \"1A\" = \"v\" }",
                "run.env",
            ),
            (
                "name = \"p\"\nversion = \"1.0.0\"\npool = \"oms\"\n[run]\nimage = \"p:1\"\n[config_schema]\ntype = \"object\"\npattern = \"x\"",
                "config_schema",
            ),
        ];
        for (text, want) in cases {
            let err = Manifest::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // Several problems come back together.
        let err = Manifest::from_toml(
            "name = \"\"\nversion = \"latest\"\npool = \"oms\"\n[run]\nimage = \"p\"",
        )
        .unwrap_err();
        match err {
            ManifestError::Invalid(v) => {
                let fields: Vec<_> = v.0.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["name", "version", "run"]);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn images_with_a_digest_or_a_version_tag_are_accepted() {
        for image in [
            "p:1.2.0",
            "registry.example.com:5000/team/p:1.2.0",
            "p@sha256:0123456789abcdef",
        ] {
            assert!(check_image(image).is_ok(), "{image}");
        }
        assert!(check_image("registry.example.com:5000/team/p").is_err());
    }
}
