use std::collections::HashMap;
use std::fmt;

use meridian_bus::TopicPattern;
use meridian_core::{TenantId, Topic, valid_segment};
use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, check_relative_pattern};

/// Which way a grant goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Publish,
    Subscribe,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Publish => "publish",
            Direction::Subscribe => "subscribe",
        }
    }
}

/// An admin's decision on one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    Approved,
    /// Denied grants become deny rules: they win over the pool template too.
    Denied,
}

/// One decision: a direction and a pattern relative to the deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDecision {
    pub direction: Direction,
    pub pattern: String,
    pub decision: GrantStatus,
}

/// The decisions on a plugin's grants, as the sidecar is given them (TOML: a `[[grant]]`
/// table per decision). Until the registry hands them over, they come from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDecisions {
    #[serde(default, rename = "grant")]
    pub grants: Vec<GrantDecision>,
}

impl GrantDecisions {
    pub fn from_toml(text: &str) -> Result<GrantDecisions, AclError> {
        toml::from_str(text).map_err(|e| AclError::Decisions(e.message().to_owned()))
    }
}

/// Building an ACL failed: the inputs contradict each other or are malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AclError {
    #[error("deployment id {0:?} must be 1 or more of a-z, 0-9, '_' and '-'")]
    Deployment(String),
    #[error("grant decisions are not valid TOML: {0}")]
    Decisions(String),
    #[error("grant decision for {direction} {pattern:?}: {message}")]
    Decision {
        direction: &'static str,
        pattern: String,
        message: String,
    },
}

/// Why an operation was refused. The sidecar answers 403 `acl_denied` with this text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The topic or pattern lies in another deployment.
    OutsideDeployment { deployment: String },
    /// No rule allows it (default deny).
    NotGranted,
    /// A deny rule matches (a denied grant or a reserved topic).
    Denied { rule: String },
    /// The plugin is bound to another tenant.
    WrongTenant,
}

impl DenyReason {
    /// A short label for metrics and audit events.
    pub fn label(&self) -> &'static str {
        match self {
            DenyReason::OutsideDeployment { .. } => "outside_deployment",
            DenyReason::NotGranted => "not_granted",
            DenyReason::Denied { .. } => "denied_rule",
            DenyReason::WrongTenant => "wrong_tenant",
        }
    }
}

/// A refused publish or subscription, with what was asked and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{dir} on {target:?} is not allowed: {reason}", dir = .direction.as_str())]
pub struct AclDenied {
    pub direction: Direction,
    /// The topic or pattern asked for.
    pub target: String,
    pub reason: DenyReason,
}

impl AclDenied {
    /// The stable error code for problem+json.
    pub const CODE: &'static str = "acl_denied";
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::OutsideDeployment { deployment } => {
                write!(f, "outside this plugin's deployment {deployment:?}")
            }
            DenyReason::NotGranted => {
                f.write_str("neither the pool template nor an approved grant covers it")
            }
            DenyReason::Denied { rule } => write!(f, "denied by the rule {rule:?}"),
            DenyReason::WrongTenant => f.write_str("the plugin is bound to another tenant"),
        }
    }
}

/// Topics no plugin may use in either direction, whatever it is granted: auth events
/// (revocations, key rotation) steer the platform's own security.
const RESERVED: &[&str] = &["platform.auth.**"];

/// One rule: the pattern and its segments, pre-split for the pattern algebra.
#[derive(Clone, Debug)]
struct Rule {
    pattern: TopicPattern,
    segs: Vec<Seg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
    Rest,
}

impl Rule {
    fn new(pattern: TopicPattern) -> Rule {
        let segs = split(pattern.as_str());
        Rule { pattern, segs }
    }
}

fn split(pattern: &str) -> Vec<Seg> {
    pattern
        .split('.')
        .map(|s| match s {
            "*" => Seg::One,
            "**" => Seg::Rest,
            l => Seg::Lit(l.to_owned()),
        })
        .collect()
}

/// Every topic `inner` matches, `outer` matches too. Exact for the pattern grammar (`*`
/// is one segment, `**` one or more at the end).
fn covers(outer: &[Seg], inner: &[Seg]) -> bool {
    match (outer.split_first(), inner.split_first()) {
        (None, None) => true,
        (Some((Seg::Rest, _)), Some(_)) => true,
        (Some((Seg::One, o)), Some((Seg::Lit(_) | Seg::One, i))) => covers(o, i),
        (Some((Seg::Lit(a), o)), Some((Seg::Lit(b), i))) if a == b => covers(o, i),
        _ => false,
    }
}

/// Some topic matches both patterns.
fn overlaps(a: &[Seg], b: &[Seg]) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((Seg::Rest, _)), Some(_)) | (Some(_), Some((Seg::Rest, _))) => true,
        (Some((x, a)), Some((y, b))) => {
            let meet = match (x, y) {
                (Seg::Lit(p), Seg::Lit(q)) => p == q,
                _ => true,
            };
            meet && overlaps(a, b)
        }
        _ => false,
    }
}

#[derive(Clone, Debug, Default)]
struct Rules {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Rules {
    fn decide(&self, topic: &Topic) -> Result<(), DenyReason> {
        if let Some(d) = self.deny.iter().find(|r| r.pattern.matches(topic)) {
            return Err(DenyReason::Denied {
                rule: d.pattern.to_string(),
            });
        }
        if self.allow.iter().any(|r| r.pattern.matches(topic)) {
            Ok(())
        } else {
            Err(DenyReason::NotGranted)
        }
    }
}

/// A plugin's effective ACL in one deployment. Built once when its sidecar starts (or its
/// grants change); cheap to query.
#[derive(Clone, Debug)]
pub struct Acl {
    deployment: String,
    tenant: Option<TenantId>,
    publish: Rules,
    subscribe: Rules,
}

impl Acl {
    /// The ACL of `manifest`'s plugin in `deployment`: its pool template and the requested
    /// grants an admin approved, minus the grants an admin denied and the reserved topics.
    ///
    /// An approval must be for a grant the manifest requests (same direction and pattern),
    /// so an approval list cannot widen a plugin beyond what was reviewed; a denial may name
    /// any pattern. Requested grants without a decision are pending and allow nothing.
    pub fn new(
        deployment: &str,
        manifest: &Manifest,
        decisions: &GrantDecisions,
    ) -> Result<Acl, AclError> {
        if !valid_segment(deployment) {
            return Err(AclError::Deployment(deployment.to_owned()));
        }
        let resolve = |rel: &str| {
            TopicPattern::parse(&format!("deployment.{deployment}.{rel}"))
                .map(Rule::new)
                .map_err(|e| e.to_string())
        };
        let (pub_template, sub_template) = manifest.pool.template();
        let mut acl = Acl {
            deployment: deployment.to_owned(),
            tenant: manifest.tenant,
            publish: Rules::default(),
            subscribe: Rules::default(),
        };
        for (rules, template) in [
            (&mut acl.publish, pub_template),
            (&mut acl.subscribe, sub_template),
        ] {
            for rel in template.iter().copied() {
                rules
                    .allow
                    .push(resolve(rel).expect("templates are valid patterns"));
            }
            for rel in RESERVED.iter().copied() {
                rules
                    .deny
                    .push(resolve(rel).expect("reserved patterns are valid"));
            }
        }
        for d in &decisions.grants {
            let fail = |message: String| AclError::Decision {
                direction: d.direction.as_str(),
                pattern: d.pattern.clone(),
                message,
            };
            check_relative_pattern(&d.pattern).map_err(fail)?;
            let (rules, requested) = match d.direction {
                Direction::Publish => (&mut acl.publish, &manifest.grants.publish),
                Direction::Subscribe => (&mut acl.subscribe, &manifest.grants.subscribe),
            };
            let rule = resolve(&d.pattern).map_err(fail)?;
            match d.decision {
                GrantStatus::Approved if !requested.contains(&d.pattern) => {
                    return Err(fail(format!(
                        "plugin {} does not request this grant; only requested grants can be \
                         approved",
                        manifest.name
                    )));
                }
                GrantStatus::Approved => rules.allow.push(rule),
                GrantStatus::Denied => rules.deny.push(rule),
            }
        }
        Ok(acl)
    }

    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The tenant the plugin is bound to, if any.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant
    }

    /// The tenant a publish is for: a tenant-bound plugin publishes for its tenant (naming
    /// another is refused); an unbound plugin must name one.
    pub fn publish_tenant(&self, asked: Option<TenantId>) -> Result<Option<TenantId>, DenyReason> {
        match (self.tenant, asked) {
            (Some(bound), Some(t)) if t != bound => Err(DenyReason::WrongTenant),
            (Some(bound), _) => Ok(Some(bound)),
            (None, t) => Ok(t),
        }
    }

    /// May the plugin publish to `topic` for `tenant`? Dead-letter topics (`*.dlq`) are the
    /// platform's alone to write.
    pub fn check_publish(&self, topic: &Topic, tenant: TenantId) -> Result<(), AclDenied> {
        let deny = |reason| AclDenied {
            direction: Direction::Publish,
            target: topic.to_string(),
            reason,
        };
        if topic.deployment() != self.deployment {
            return Err(deny(DenyReason::OutsideDeployment {
                deployment: self.deployment.clone(),
            }));
        }
        if topic.as_str().ends_with(".dlq") {
            return Err(deny(DenyReason::Denied {
                rule: "dead-letter topics (*.dlq)".into(),
            }));
        }
        if self.tenant.is_some_and(|bound| bound != tenant) {
            return Err(deny(DenyReason::WrongTenant));
        }
        self.publish.decide(topic).map_err(deny)
    }

    /// May the plugin receive `topic` for `tenant`? The full evaluation; a subscription
    /// uses its [`SubscriptionFilter`] instead.
    pub fn check_receive(&self, topic: &Topic, tenant: TenantId) -> Result<(), DenyReason> {
        if topic.deployment() != self.deployment {
            return Err(DenyReason::OutsideDeployment {
                deployment: self.deployment.clone(),
            });
        }
        if self.tenant.is_some_and(|bound| bound != tenant) {
            return Err(DenyReason::WrongTenant);
        }
        self.subscribe.decide(topic)
    }

    /// Sets up a subscription on `pattern`: refused unless one allow rule covers the whole
    /// pattern (a pattern only partly allowed is refused rather than silently narrowed) and
    /// some of it escapes the deny rules. The filter that comes back drops, per message,
    /// other tenants' events (for a tenant-bound plugin) and topics a deny rule cuts out.
    pub fn subscription(&self, pattern: &TopicPattern) -> Result<SubscriptionFilter, AclDenied> {
        let deny = |reason| AclDenied {
            direction: Direction::Subscribe,
            target: pattern.to_string(),
            reason,
        };
        if pattern.deployment() != self.deployment {
            return Err(deny(DenyReason::OutsideDeployment {
                deployment: self.deployment.clone(),
            }));
        }
        let segs = split(pattern.as_str());
        if let Some(d) = self.subscribe.deny.iter().find(|d| covers(&d.segs, &segs)) {
            return Err(deny(DenyReason::Denied {
                rule: d.pattern.to_string(),
            }));
        }
        if !self.subscribe.allow.iter().any(|a| covers(&a.segs, &segs)) {
            return Err(deny(DenyReason::NotGranted));
        }
        let cut: Vec<TopicPattern> = self
            .subscribe
            .deny
            .iter()
            .filter(|d| overlaps(&d.segs, &segs))
            .map(|d| d.pattern.clone())
            .collect();
        Ok(SubscriptionFilter {
            tenant: self.tenant,
            cut,
            cache: HashMap::new(),
        })
    }
}

/// The per-message side of a subscription's ACL, decided at set-up: a tenant comparison,
/// and a per-topic cache only when a deny rule overlaps the subscribed pattern. Every topic
/// a subscription delivers matches its pattern, which an allow rule covers, so only the
/// deny rules can still refuse one.
#[derive(Clone, Debug)]
pub struct SubscriptionFilter {
    tenant: Option<TenantId>,
    /// Deny rules that overlap the pattern.
    cut: Vec<TopicPattern>,
    cache: HashMap<String, bool>,
}

impl SubscriptionFilter {
    /// Topics remembered per subscription; past this the cache starts over (the bound keeps
    /// a plugin subscribed to a wide pattern from growing it without limit).
    const CACHE_LIMIT: usize = 4096;

    /// Whether a message on `topic` for `tenant`, delivered by this subscription, may go
    /// to the plugin.
    pub fn admits(&mut self, topic: &Topic, tenant: TenantId) -> Result<(), DenyReason> {
        if self.tenant.is_some_and(|bound| bound != tenant) {
            return Err(DenyReason::WrongTenant);
        }
        if self.cut.is_empty() {
            return Ok(());
        }
        let allowed = match self.cache.get(topic.as_str()) {
            Some(&allowed) => allowed,
            None => {
                let allowed = !self.cut.iter().any(|d| d.matches(topic));
                if self.cache.len() >= Self::CACHE_LIMIT {
                    self.cache.clear();
                }
                self.cache.insert(topic.as_str().to_owned(), allowed);
                allowed
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(DenyReason::Denied {
                rule: self
                    .cut
                    .iter()
                    .find(|d| d.matches(topic))
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            })
        }
    }

    /// Whether per-message evaluation needs the topic at all (false: only the tenant).
    pub fn needs_topic_lookup(&self) -> bool {
        !self.cut.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolType;

    const DEP: &str = "prod";

    fn manifest(
        pool: PoolType,
        tenant: Option<TenantId>,
        publish: &[&str],
        subscribe: &[&str],
    ) -> Manifest {
        let list = |l: &[&str]| {
            l.iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let tenant = tenant
            .map(|t| format!("tenant = \"{t}\"\n"))
            .unwrap_or_default();
        Manifest::from_toml(&format!(
            "name = \"p\"\nversion = \"1.0.0\"\npool = \"{pool}\"\n{tenant}[run]\nimage = \"p:1\"\n\
             [grants]\npublish = [{}]\nsubscribe = [{}]\n",
            list(publish),
            list(subscribe)
        ))
        .unwrap()
    }

    fn topic(rel: &str) -> Topic {
        Topic::parse(&format!("deployment.{DEP}.{rel}")).unwrap()
    }

    fn pattern(rel: &str) -> TopicPattern {
        TopicPattern::parse(&format!("deployment.{DEP}.{rel}")).unwrap()
    }

    /// Topics of every domain, and what each pool's template allows: (topic, pools that
    /// may publish it, pools that may receive it).
    const MATRIX: &[(&str, &[PoolType], &[PoolType])] = {
        use PoolType::*;
        &[
            ("platform.data.stock.snapshot", &[Dgm], &[Dgm, Analytics]),
            ("platform.data.warehouse.synced", &[Dgm], &[Dgm, Analytics]),
            ("platform.oms.order.created", &[Oms], &[Oms, Analytics]),
            ("platform.oms.order.hold", &[Oms], &[Oms, Analytics]),
            (
                "platform.fulfillment.shipment.created",
                &[Fulfillment],
                &[Fulfillment, Analytics],
            ),
            ("platform.notify.email.sent", &[Notify], &[Notify]),
            ("platform.billing.invoice.issued", &[], &[]),
            ("platform.reports.daily.ready", &[], &[]),
            ("platform.auth.revoked", &[], &[]),
        ]
    };

    #[test]
    fn pool_templates_by_topic_and_tenant_binding() {
        let (a, b) = (TenantId::new(), TenantId::new());
        for pool in PoolType::ALL {
            for bound in [None, Some(a)] {
                let acl = Acl::new(
                    DEP,
                    &manifest(pool, bound, &[], &[]),
                    &GrantDecisions::default(),
                )
                .unwrap();
                for (rel, publishers, receivers) in MATRIX {
                    let t = topic(rel);
                    let case = format!("{pool} bound={} {rel}", bound.is_some());
                    // Its own tenant (or any, unbound).
                    assert_eq!(
                        acl.check_publish(&t, a).is_ok(),
                        publishers.contains(&pool),
                        "publish {case}"
                    );
                    assert_eq!(
                        acl.check_receive(&t, a).is_ok(),
                        receivers.contains(&pool),
                        "receive {case}"
                    );
                    // Another tenant: only an unbound plugin, and only where the topic is allowed.
                    let other_ok = bound.is_none();
                    assert_eq!(
                        acl.check_publish(&t, b).is_ok(),
                        other_ok && publishers.contains(&pool),
                        "publish other tenant {case}"
                    );
                    assert_eq!(
                        acl.check_receive(&t, b).is_ok(),
                        other_ok && receivers.contains(&pool),
                        "receive other tenant {case}"
                    );
                    if bound.is_some() && publishers.contains(&pool) {
                        let e = acl.check_publish(&t, b).unwrap_err();
                        assert_eq!(e.reason, DenyReason::WrongTenant, "{case}");
                    }
                    // Subscriptions: the exact topic as a pattern, set up then filtered.
                    match acl.subscription(&TopicPattern::exact(&t)) {
                        Ok(mut f) => {
                            assert!(receivers.contains(&pool), "subscribe {case}");
                            assert!(f.admits(&t, a).is_ok(), "{case}");
                            assert_eq!(f.admits(&t, b).is_ok(), other_ok, "{case}");
                        }
                        Err(e) => {
                            assert!(!receivers.contains(&pool), "subscribe {case}: {e}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn topics_outside_the_deployment_are_denied() {
        let acl = Acl::new(
            DEP,
            &manifest(PoolType::Oms, None, &[], &[]),
            &GrantDecisions::default(),
        )
        .unwrap();
        let t = Topic::parse("deployment.staging.platform.oms.order.created").unwrap();
        let e = acl.check_publish(&t, TenantId::new()).unwrap_err();
        assert!(matches!(e.reason, DenyReason::OutsideDeployment { .. }));
        assert!(acl.check_receive(&t, TenantId::new()).is_err());
        let p = TopicPattern::parse("deployment.staging.platform.oms.**").unwrap();
        assert!(matches!(
            acl.subscription(&p).unwrap_err().reason,
            DenyReason::OutsideDeployment { .. }
        ));
        assert!(
            Acl::new(
                "Bad.Dep",
                &manifest(PoolType::Oms, None, &[], &[]),
                &GrantDecisions::default()
            )
            .is_err()
        );
    }

    fn decisions(list: &[(Direction, &str, GrantStatus)]) -> GrantDecisions {
        GrantDecisions {
            grants: list
                .iter()
                .map(|(d, p, s)| GrantDecision {
                    direction: *d,
                    pattern: (*p).to_owned(),
                    decision: *s,
                })
                .collect(),
        }
    }

    #[test]
    fn grants_allow_only_once_approved_and_denials_win() {
        use Direction::*;
        use GrantStatus::*;
        let m = manifest(
            PoolType::Dgm,
            None,
            &["platform.billing.usage.*"],
            &["platform.oms.order.*", "platform.billing.**"],
        );
        let t = TenantId::new();
        // Pending: nothing beyond the template.
        let pending = Acl::new(DEP, &m, &GrantDecisions::default()).unwrap();
        assert!(
            pending
                .check_publish(&topic("platform.billing.usage.recorded"), t)
                .is_err()
        );
        assert!(
            pending
                .check_receive(&topic("platform.oms.order.created"), t)
                .is_err()
        );

        let acl = Acl::new(
            DEP,
            &m,
            &decisions(&[
                (Publish, "platform.billing.usage.*", Approved),
                (Subscribe, "platform.oms.order.*", Approved),
                (Subscribe, "platform.billing.**", Denied),
                // A denial cuts into the template as well.
                (Publish, "platform.data.price.*", Denied),
                (Subscribe, "platform.data.price.*", Denied),
            ]),
        )
        .unwrap();
        let cases: &[(Direction, &str, bool)] = &[
            (Publish, "platform.billing.usage.recorded", true),
            (Publish, "platform.billing.invoice.issued", false),
            (Publish, "platform.data.stock.snapshot", true),
            (Publish, "platform.data.price.changed", false),
            (Publish, "platform.data.stock.snapshot.dlq", false),
            (Subscribe, "platform.oms.order.created", true),
            (Subscribe, "platform.oms.shipment.created", false),
            (Subscribe, "platform.billing.usage.recorded", false),
            (Subscribe, "platform.data.price.changed", false),
            (Subscribe, "platform.data.stock.snapshot", true),
        ];
        for (dir, rel, want) in cases {
            let got = match dir {
                Publish => acl.check_publish(&topic(rel), t).is_ok(),
                Subscribe => acl.check_receive(&topic(rel), t).is_ok(),
            };
            assert_eq!(got, *want, "{dir:?} {rel}");
        }
        // An approval for something never requested is refused outright.
        let err = Acl::new(
            DEP,
            &m,
            &decisions(&[(Publish, "platform.oms.**", Approved)]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not request"), "{err}");
        let err = Acl::new(
            DEP,
            &m,
            &decisions(&[(Publish, "deployment.x.platform.oms.**", Denied)]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("relative"), "{err}");
    }

    #[test]
    fn reserved_topics_cannot_be_granted() {
        use Direction::*;
        let m = manifest(PoolType::Analytics, None, &["platform.**"], &["**"]);
        let acl = Acl::new(
            DEP,
            &m,
            &decisions(&[
                (Publish, "platform.**", GrantStatus::Approved),
                (Subscribe, "**", GrantStatus::Approved),
            ]),
        )
        .unwrap();
        let t = TenantId::new();
        assert!(acl.check_publish(&topic("platform.billing.x.y"), t).is_ok());
        assert!(
            acl.check_publish(&topic("platform.auth.revoked"), t)
                .is_err()
        );
        assert!(
            acl.check_receive(&topic("platform.auth.revoked"), t)
                .is_err()
        );
        // A wide subscription is set up, but auth events never pass its filter.
        let mut f = acl.subscription(&pattern("**")).unwrap();
        assert!(f.needs_topic_lookup());
        assert!(f.admits(&topic("platform.oms.order.created"), t).is_ok());
        for _ in 0..2 {
            // The second time comes from the cache and must agree.
            assert!(matches!(
                f.admits(&topic("platform.auth.revoked"), t),
                Err(DenyReason::Denied { .. })
            ));
        }
        assert!(acl.subscription(&pattern("platform.auth.**")).is_err());
    }

    #[test]
    fn subscriptions_must_lie_inside_one_allow_rule() {
        let acl = Acl::new(
            DEP,
            &manifest(PoolType::Oms, None, &[], &[]),
            &GrantDecisions::default(),
        )
        .unwrap();
        let cases = [
            ("platform.oms.**", true),
            ("platform.oms.order.*", true),
            ("platform.oms.*.created", true),
            ("platform.oms.order.created", true),
            ("platform.*.order.created", false),
            ("platform.**", false),
            ("**", false),
            ("platform.data.**", false),
        ];
        for (rel, want) in cases {
            let got = acl.subscription(&pattern(rel));
            assert_eq!(got.is_ok(), want, "{rel}");
            if let Ok(f) = got {
                // Only the reserved auth rule exists, and it cannot overlap platform.oms.
                assert!(!f.needs_topic_lookup(), "{rel}");
            }
        }
    }

    #[test]
    fn pattern_algebra() {
        let s = |p: &str| split(p);
        let cover = [
            ("a.**", "a.b", true),
            ("a.**", "a.**", true),
            ("a.**", "a.*.c", true),
            ("a.**", "a", false),
            ("a.*", "a.b", true),
            ("a.*", "a.**", false),
            ("a.*", "a.b.c", false),
            ("a.b", "a.*", false),
            ("a.*.c", "a.b.c", true),
        ];
        for (o, i, want) in cover {
            assert_eq!(covers(&s(o), &s(i)), want, "{o} covers {i}");
        }
        let overlap = [
            ("a.**", "a.b.c", true),
            ("a.*", "a.b.c", false),
            ("a.*.c", "a.b.*", true),
            ("a.b", "a.c", false),
            ("a.b.**", "a.*", false),
            ("a.**", "*.b", true),
            ("a", "a.**", false),
        ];
        for (a, b, want) in overlap {
            assert_eq!(overlaps(&s(a), &s(b)), want, "{a} overlaps {b}");
            assert_eq!(overlaps(&s(b), &s(a)), want, "{b} overlaps {a}");
        }
    }

    #[test]
    fn publish_tenant_follows_the_binding() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let bound = Acl::new(
            DEP,
            &manifest(PoolType::Oms, Some(a), &[], &[]),
            &GrantDecisions::default(),
        )
        .unwrap();
        assert_eq!(bound.publish_tenant(None), Ok(Some(a)));
        assert_eq!(bound.publish_tenant(Some(a)), Ok(Some(a)));
        assert_eq!(bound.publish_tenant(Some(b)), Err(DenyReason::WrongTenant));
        let free = Acl::new(
            DEP,
            &manifest(PoolType::Oms, None, &[], &[]),
            &GrantDecisions::default(),
        )
        .unwrap();
        assert_eq!(free.publish_tenant(None), Ok(None));
        assert_eq!(free.publish_tenant(Some(b)), Ok(Some(b)));
    }

    #[test]
    fn decisions_file_parses() {
        let d = GrantDecisions::from_toml(
            "[[grant]]\ndirection = \"publish\"\npattern = \"platform.data.x\"\ndecision = \"approved\"\n",
        )
        .unwrap();
        assert_eq!(d.grants.len(), 1);
        assert!(
            GrantDecisions::from_toml(
                "[[grant]]\ndirection = \"both\"\npattern = \"x\"\ndecision = \"approved\""
            )
            .is_err()
        );
    }
}
