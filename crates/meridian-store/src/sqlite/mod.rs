//! SQLite backend.

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file; created with its directory if missing.
    pub path: PathBuf,
    /// Read connections kept open for queries.
    pub readers: usize,
}
