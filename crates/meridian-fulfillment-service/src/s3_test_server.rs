//! For tests (feature `s3-test-server`): an S3-compatible server over a directory (s3s-fs)
//! on a loopback port, with signed requests required, that can be stopped and started
//! again on the same port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::task::{JoinHandle, JoinSet};

/// The credentials the server accepts.
pub const ACCESS_KEY_ID: &str = "meridian-test-access";
pub const SECRET_ACCESS_KEY: &str = "meridian-test-secret-key";

/// A running S3-compatible server. Buckets are directories under its root.
pub struct S3TestServer {
    root: PathBuf,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl S3TestServer {
    /// Serves `root` on a random loopback port.
    pub async fn start(root: &Path) -> S3TestServer {
        Self::start_on(root, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn start_on(root: &Path, addr: SocketAddr) -> S3TestServer {
        std::fs::create_dir_all(root).unwrap();
        let fs = s3s_fs::FileSystem::new(root).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every open connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        S3TestServer {
            root: root.to_owned(),
            addr,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (a directory under the root).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root.join(bucket)).unwrap();
    }

    /// Where the object `key` of `bucket` is kept on disk.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(bucket).join(key)
    }

    /// Stops serving: the port is closed and open connections are cut.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let next = Self::start_on(&self.root, self.addr).await;
        *self = next;
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
