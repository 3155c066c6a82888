//! A small pool of read connections, used from `spawn_blocking`.
//!
//! SQLite calls block, so they never run on the async executor. A semaphore bounds the
//! number of reads in flight to the pool size; a connection lost to a panic is replaced by
//! opening a new one on demand.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::conn::{self, Access};
use super::error::lost;
use crate::StoreError;

pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    /// A pool of `conns` already opened connections to `path`.
    pub(super) fn new(path: PathBuf, conns: Vec<Connection>) -> Self {
        Self {
            path,
            permits: Arc::new(Semaphore::new(conns.len().max(1))),
            idle: Mutex::new(conns),
        }
    }

    /// Runs `f` on a read connection on the blocking thread pool.
    pub(super) async fn run<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the sqlite reader pool is closed".into()))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // The permit lives as long as the blocking work, even if the caller's future is
            // dropped meanwhile.
            let _permit = permit;
            let popped = pool.idle.lock().pop();
            let mut conn = match popped {
                Some(c) => c,
                None => conn::open(&pool.path, Access::Read)?,
            };
            let result = f(&mut conn);
            pool.idle.lock().push(conn);
            result
        })
        .await
        .map_err(|_| lost("reader"))?
    }
}
