//! PostgreSQL backend.

#[derive(Clone, Debug)]
pub struct PgConfig {
    /// A `postgres://` URL.
    pub url: String,
    /// The schema to use (created if missing); `None` uses the server's default search path.
    pub schema: Option<String>,
    /// Pooled connections for reads and single-row writes; the order writer has its own.
    pub pool_size: usize,
}
