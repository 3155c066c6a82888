//! The plugin's durable state and the sidecar's own bookkeeping (its subscriptions), in one
//! SQLite file per plugin instance. Every write is committed with `synchronous=FULL` before
//! the sidecar answers, so an acknowledged write survives a `kill -9` of the sidecar.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use crate::SidecarError;

/// The longest state key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// The largest state value (its JSON), in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct StateStore {
    conn: Arc<Mutex<Connection>>,
}

/// A subscription the sidecar reopens when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSubscription {
    pub name: String,
    pub pattern: String,
    pub from_earliest: bool,
}

fn internal(e: rusqlite::Error) -> SidecarError {
    SidecarError::State(e.to_string())
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, SidecarError> {
        let conn = Connection::open(path).map_err(|e| {
            SidecarError::State(format!(
                "cannot open the state file {}: {e}",
                path.display()
            ))
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS plugin_state (
                 key TEXT PRIMARY KEY NOT NULL,
                 value TEXT NOT NULL,
                 updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             );
             CREATE TABLE IF NOT EXISTS sidecar_subscriptions (
                 name TEXT PRIMARY KEY NOT NULL,
                 pattern TEXT NOT NULL,
                 from_earliest INTEGER NOT NULL
             );",
        )
        .map_err(internal)?;
        Ok(StateStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SidecarError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock()))
            .await
            .map_err(|e| SidecarError::State(e.to_string()))?
            .map_err(internal)
    }

    pub async fn get(&self, key: &str) -> Result<Option<serde_json::Value>, SidecarError> {
        let key = key.to_owned();
        let text: Option<String> = self
            .with(move |c| {
                c.query_row(
                    "SELECT value FROM plugin_state WHERE key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| SidecarError::State(e.to_string())))
            .transpose()
    }

    pub async fn put(&self, key: &str, value: &serde_json::Value) -> Result<(), SidecarError> {
        let (key, text) = (key.to_owned(), value.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO plugin_state (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                params![key, text],
            )
        })
        .await
        .map(|_| ())
    }

    /// Whether the key existed.
    pub async fn delete(&self, key: &str) -> Result<bool, SidecarError> {
        let key = key.to_owned();
        self.with(move |c| c.execute("DELETE FROM plugin_state WHERE key = ?1", params![key]))
            .await
            .map(|n| n > 0)
    }

    pub async fn subscriptions(&self) -> Result<Vec<SavedSubscription>, SidecarError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, pattern, from_earliest FROM sidecar_subscriptions ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(SavedSubscription {
                    name: r.get(0)?,
                    pattern: r.get(1)?,
                    from_earliest: r.get::<_, i64>(2)? != 0,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn save_subscription(&self, s: &SavedSubscription) -> Result<(), SidecarError> {
        let s = s.clone();
        self.with(move |c| {
            c.execute(
                "INSERT INTO sidecar_subscriptions (name, pattern, from_earliest)
                 VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                params![s.name, s.pattern, i64::from(s.from_earliest)],
            )
        })
        .await
        .map(|_| ())
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<(), SidecarError> {
        let name = name.to_owned();
        self.with(move |c| {
            c.execute(
                "DELETE FROM sidecar_subscriptions WHERE name = ?1",
                params![name],
            )
        })
        .await
        .map(|_| ())
    }
}

/// A state key: 1 to [`MAX_KEY_BYTES`] bytes without control characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("a state key is 1 to {MAX_KEY_BYTES} bytes long"));
    }
    if key.chars().any(char::is_control) {
        return Err("a state key has no control characters".into());
    }
    Ok(())
}
