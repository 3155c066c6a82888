//! Plans and route classes: which quota applies to a request.
//!
//! A tenant's plan (from its principal) and the request's route class pick one [`Quota`].
//! Quotas are written as `"<rate>/<unit> burst <n>"`, for example `"100/s burst 200"` or
//! `"600/min"` (the burst then defaults to one second's worth, at least 1).

use std::collections::BTreeMap;
use std::fmt;

use http::Method;

use crate::gcra::Quota;

/// What kind of request this is, for rate limiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteClass {
    /// `GET` and `HEAD`.
    Read,
    /// Every other method.
    Write,
    /// The token endpoint, limited per client IP (its callers are not authenticated yet).
    Auth,
}

impl RouteClass {
    pub const ALL: [RouteClass; 3] = [RouteClass::Read, RouteClass::Write, RouteClass::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Read => "read",
            RouteClass::Write => "write",
            RouteClass::Auth => "auth",
        }
    }

    /// The class of a request.
    pub fn of(method: &Method, path: &str) -> RouteClass {
        if is_token_endpoint(path) {
            RouteClass::Auth
        } else if method == Method::GET || method == Method::HEAD {
            RouteClass::Read
        } else {
            RouteClass::Write
        }
    }
}

impl fmt::Display for RouteClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The endpoints that exchange credentials for tokens.
pub fn is_token_endpoint(path: &str) -> bool {
    matches!(path, "/v1/auth/token" | "/oauth/token" | "/v1/oauth/token")
}

/// One plan's quota per route class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    pub read: Quota,
    pub write: Quota,
    pub auth: Quota,
}

impl PlanLimits {
    pub fn quota(&self, class: RouteClass) -> Quota {
        match class {
            RouteClass::Read => self.read,
            RouteClass::Write => self.write,
            RouteClass::Auth => self.auth,
        }
    }
}

/// Every plan by name. A principal whose plan is unknown is limited as [`Plans::DEFAULT`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plans {
    plans: BTreeMap<String, PlanLimits>,
}

/// A plan as written in `meridian.toml` (`[rate_limits.plans.<name>]`); a missing class takes
/// the `standard` plan's quota.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub read: Option<String>,
    pub write: Option<String>,
    pub auth: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate limit {value:?} for plan {plan:?} class {class}: {why}")]
pub struct PlanError {
    pub plan: String,
    pub class: &'static str,
    pub value: String,
    pub why: &'static str,
}

impl Plans {
    /// The plan of tenants that have none, and of requests without a tenant.
    pub const DEFAULT: &'static str = "standard";

    /// The built-in plans: `free`, `standard` and `enterprise`.
    pub fn builtin() -> Plans {
        let q = |s: &str| parse_quota(s).expect("built-in quotas are valid");
        let plan = |r: &str, w: &str, a: &str| PlanLimits {
            read: q(r),
            write: q(w),
            auth: q(a),
        };
        let mut plans = BTreeMap::new();
        plans.insert(
            "free".to_owned(),
            plan("20/s burst 40", "10/s burst 20", "2/s burst 10"),
        );
        plans.insert(
            Self::DEFAULT.to_owned(),
            plan("200/s burst 400", "100/s burst 200", "5/s burst 20"),
        );
        plans.insert(
            "enterprise".to_owned(),
            plan("2000/s burst 4000", "1000/s burst 2000", "20/s burst 100"),
        );
        Plans { plans }
    }

    /// The built-in plans with `specs` laid over them (a spec for a new name adds a plan).
    pub fn with_specs<'a>(
        specs: impl IntoIterator<Item = (&'a String, &'a PlanSpec)>,
    ) -> Result<Plans, PlanError> {
        let mut plans = Self::builtin();
        // The default plan first: new plans take its (possibly overridden) quotas.
        let mut specs: Vec<_> = specs.into_iter().collect();
        specs.sort_by_key(|(name, _)| name.as_str() != Self::DEFAULT);
        for (name, spec) in specs {
            let standard = plans.plans[Self::DEFAULT];
            let base = plans.plans.get(name).copied().unwrap_or(standard);
            let parse = |class: &'static str, v: &Option<String>, default: Quota| match v {
                None => Ok(default),
                Some(v) => parse_quota(v).map_err(|why| PlanError {
                    plan: name.clone(),
                    class,
                    value: v.clone(),
                    why,
                }),
            };
            let limits = PlanLimits {
                read: parse("read", &spec.read, base.read)?,
                write: parse("write", &spec.write, base.write)?,
                auth: parse("auth", &spec.auth, base.auth)?,
            };
            plans.plans.insert(name.clone(), limits);
        }
        Ok(plans)
    }

    /// The limits of `plan`, or of the default plan when it is unknown.
    pub fn get(&self, plan: &str) -> &PlanLimits {
        self.plans
            .get(plan)
            .or_else(|| self.plans.get(Self::DEFAULT))
            .expect("the default plan always exists")
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plans.keys().map(String::as_str)
    }
}

/// Parses `"<rate>/<unit>[ burst <n>]"`; units: `s`, `min`, `h` (and their long forms).
pub fn parse_quota(s: &str) -> Result<Quota, &'static str> {
    const FORMAT: &str = "expected \"<rate>/<s|min|h> [burst <n>]\", e.g. \"100/s burst 200\"";
    let mut words = s.split_whitespace();
    let rate = words.next().ok_or(FORMAT)?;
    let (count, unit) = rate.split_once('/').ok_or(FORMAT)?;
    let count: f64 = count.parse().map_err(|_| FORMAT)?;
    if !(count.is_finite() && count > 0.0) {
        return Err("the rate must be a positive number");
    }
    let seconds = match unit {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(FORMAT),
    };
    let per_second = count / seconds;
    let burst = match (words.next(), words.next()) {
        (None, _) => per_second.ceil().max(1.0) as u32,
        (Some("burst"), Some(n)) => {
            let n: u32 = n.parse().map_err(|_| "the burst must be a whole number")?;
            if n == 0 {
                return Err("the burst must be at least 1");
            }
            n
        }
        _ => return Err(FORMAT),
    };
    if words.next().is_some() {
        return Err(FORMAT);
    }
    if per_second > 1_000_000.0 {
        return Err("the rate must be at most 1000000/s");
    }
    Ok(Quota::per_second(per_second, burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_with_and_without_burst() {
        assert_eq!(
            parse_quota("100/s burst 200").unwrap(),
            Quota::per_second(100.0, 200)
        );
        assert_eq!(parse_quota("600/min").unwrap(), Quota::per_second(10.0, 10));
        assert_eq!(parse_quota("1/h").unwrap().burst, 1);
        assert_eq!(parse_quota("0.5/s burst 3").unwrap().interval_us, 2_000_000);
        for bad in [
            "",
            "100",
            "100/day",
            "-1/s",
            "x/s",
            "10/s burst",
            "10/s burst 0",
            "10/s flurry 3",
            "10/s burst 3 extra",
        ] {
            assert!(parse_quota(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classes_follow_method_and_token_endpoint() {
        assert_eq!(RouteClass::of(&Method::GET, "/v1/orders"), RouteClass::Read);
        assert_eq!(
            RouteClass::of(&Method::HEAD, "/v1/orders"),
            RouteClass::Read
        );
        assert_eq!(
            RouteClass::of(&Method::POST, "/v1/orders"),
            RouteClass::Write
        );
        assert_eq!(RouteClass::of(&Method::DELETE, "/v1/x"), RouteClass::Write);
        assert_eq!(
            RouteClass::of(&Method::POST, "/v1/auth/token"),
            RouteClass::Auth
        );
    }

    #[test]
    fn specs_override_builtins_and_unknown_plans_fall_back() {
        let mut specs = BTreeMap::new();
        specs.insert(
            "standard".to_owned(),
            PlanSpec {
                read: Some("5/s burst 5".into()),
                ..PlanSpec::default()
            },
        );
        specs.insert("gold".to_owned(), PlanSpec::default());
        let plans = Plans::with_specs(&specs).unwrap();
        assert_eq!(plans.get("standard").read, Quota::per_second(5.0, 5));
        assert_eq!(
            plans.get("standard").write,
            Plans::builtin().get("standard").write
        );
        assert_eq!(plans.get("gold"), plans.get("standard"));
        assert_eq!(plans.get("no-such-plan"), plans.get("standard"));

        specs.insert(
            "bad".to_owned(),
            PlanSpec {
                write: Some("lots".into()),
                ..PlanSpec::default()
            },
        );
        let err = Plans::with_specs(&specs).unwrap_err();
        assert_eq!((err.plan.as_str(), err.class), ("bad", "write"));
    }
}
