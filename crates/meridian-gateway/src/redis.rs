//! The shared limiter: one atomic Lua script per decision in Redis, with Redis's own clock,
//! so every instance sees the same TAT for a key.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::gcra::{Decision, Quota};

/// GCRA in Lua; the same arithmetic as [`crate::gcra::decide`]. KEYS[1]: the key; ARGV[1]:
/// interval (µs); ARGV[2]: burst. Returns {allowed, remaining, retry_after_us, reset_after_us}.
/// `%.0f` keeps the TAT exact: Lua's default number formatting would round it.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * burst
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = tonumber(stored)
  if tat < now then tat = now end
end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, 0, ahead - tolerance, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1)
local remaining = math.floor((tolerance - ahead) / interval)
if remaining > burst then remaining = burst end
return {1, remaining, 0, ahead}
";

#[derive(Debug, thiserror::Error)]
pub enum RedisLimitError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A connection to Redis and the loaded script.
#[derive(Clone)]
pub struct RedisGcra {
    conn: ConnectionManager,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisGcra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGcra")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisGcra {
    /// Prepares a lazily connecting client: nothing is sent until the first decision, so a
    /// Redis that is down at start-up does not stop the process.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisGcra, RedisLimitError> {
        let client = redis::Client::open(url).map_err(|e| RedisLimitError::Url(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisGcra {
            conn,
            script: redis::Script::new(GCRA_LUA),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// One decision for `key`, bounded by the configured timeout.
    pub async fn check(&self, key: &str, quota: Quota) -> Result<Decision, RedisLimitError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(quota.interval_us).arg(quota.burst);
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
        let (allowed, remaining, retry_us, reset_us) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| RedisLimitError::Timeout(self.timeout))??;
        let us = |v: i64| Duration::from_micros(v.max(0) as u64);
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.burst,
            remaining: remaining.clamp(0, i64::from(quota.burst)) as u32,
            retry_after: us(retry_us),
            reset_after: us(reset_us),
        })
    }

    /// Whether Redis answers a PING within the timeout.
    pub async fn ping(&self) -> Result<(), RedisLimitError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        tokio::time::timeout(self.timeout, ping)
            .await
            .map_err(|_| RedisLimitError::Timeout(self.timeout))??;
        Ok(())
    }
}
