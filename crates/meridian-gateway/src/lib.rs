//! The API gateway's engine, independent of the HTTP framework that serves it.
//!
//! What this crate owns:
//! - **Rate limits**: GCRA ([`gcra`]) per tenant and route class, with quotas from the
//!   tenant's plan ([`plan`]). State lives in this process ([`local`]) or in Redis
//!   ([`redis`], one atomic Lua script per decision); [`limiter::RateLimiter`] chooses, and
//!   falls back to a per-instance share of each quota when Redis cannot be reached — never
//!   unlimited, never an error.
//! - **Routing** ([`routing`]): which service owns a path, which services a process runs,
//!   and the upstream of each service it does not.
//! - **The reverse proxy** ([`proxy`]) with a circuit breaker per upstream ([`breaker`]).
//!
//! What it does not own: authentication (the API crate puts the principal in the request
//! before the limiter runs), problem+json rendering (the API crate maps [`ProxyError`] and
//! refusals to error codes) and configuration loading (the binary).

pub mod breaker;
pub mod gcra;
pub mod limiter;
pub mod local;
pub mod plan;
pub mod proxy;
pub mod redis;
pub mod routing;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use gcra::{Decision, Quota};
pub use limiter::{
    Policy, RateLimitConfig, RateLimitStatus, RateLimiter, Source, Subject, Verdict,
};
pub use plan::{PlanSpec, Plans, RouteClass};
pub use proxy::{Proxy, ProxyConfig, ProxyError};
pub use routing::{Service, Services};
