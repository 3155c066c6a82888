//! The label object-store port and its local-directory backend (the S3 backend is in
//! `s3_labels`, behind the `s3` feature).

use std::path::{Path, PathBuf};

use async_trait::async_trait;

/// Why a label could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum LabelStoreError {
    /// A key outside the grammar (`[A-Za-z0-9._-]+` segments separated by `/`, no `..`).
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
    /// The backend failed; the operation may be retried.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
}

/// Where labels are kept: keys like `labels/{tenant}/{shipment}.pdf`, values the PDF bytes.
///
/// Contract: `put` returns only once the object is durable and replaces an object with the
/// same key whole (a reader never sees half of one); `get` returns `None` for a key never
/// stored.
#[async_trait]
pub trait LabelStore: Send + Sync + 'static {
    /// `"local"`, `"s3"`, ...
    fn name(&self) -> &'static str;
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LabelStoreError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LabelStoreError>;
    /// Whether the store can be used now: checked at start-up (a failure stops it) and
    /// reported by `/readyz`.
    async fn check(&self) -> Result<(), LabelStoreError>;
}

/// Checks a key: non-empty segments of `[A-Za-z0-9._-]` separated by `/`, none `.` or `..`.
pub fn check_key(key: &str) -> Result<(), LabelStoreError> {
    let ok = !key.is_empty()
        && key.len() <= 512
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(LabelStoreError::InvalidKey(key.to_owned()))
    }
}

/// Splits `s3://bucket[/prefix]` into a bucket (3 to 63 of `a-z 0-9 - .`, not starting or
/// ending with `-` or `.`) and a prefix without slashes at either end (segments as in
/// [`check_key`], or empty). The error says which part is wrong.
pub fn parse_s3_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| "expected s3://bucket[/prefix]".to_owned())?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !bucket_ok {
        return Err(format!(
            "the bucket {bucket:?} must be 3 to 63 lower-case letters, digits, '-' or '.'"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() && check_key(prefix).is_err() {
        return Err(format!(
            "the prefix {prefix:?} must be segments of letters, digits, '.', '_' or '-'"
        ));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// Labels as files under a directory (by default `{MERIDIAN_DATA_DIR}/objects`): a key is a
/// relative path. Writes go to a temporary file that is synced and then renamed over the
/// key, so a crash leaves either the old object or the new one.
#[derive(Clone, Debug)]
pub struct LocalLabelStore {
    root: PathBuf,
}

impl LocalLabelStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, LabelStoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn unavailable(what: &str, path: &Path, e: std::io::Error) -> LabelStoreError {
    tracing::error!(error = %e, path = %path.display(), "{what} failed");
    LabelStoreError::Unavailable(format!("cannot {what} {}", path.display()))
}

#[async_trait]
impl LabelStore for LocalLabelStore {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), LabelStoreError> {
        use std::io::Write;
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(|e| unavailable("create", dir, e))?;
            let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
            let write = || -> std::io::Result<()> {
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                // The rename is durable once the directory is.
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                unavailable("write", &path, e)
            })
        })
        .await
        .map_err(|e| LabelStoreError::Unavailable(format!("label writer stopped: {e}")))?
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, LabelStoreError> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("read", &path, e)),
        })
        .await
        .map_err(|e| LabelStoreError::Unavailable(format!("label reader stopped: {e}")))?
    }

    /// Creates the directory if needed and checks that it is one.
    async fn check(&self) -> Result<(), LabelStoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| unavailable("create", &root, e))
        })
        .await
        .map_err(|e| LabelStoreError::Unavailable(format!("label store check stopped: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_inside_the_store() {
        for good in ["labels/t/s.pdf", "a", "a-b_c.d/e"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/abs", "a//b", "../x", "a/../b", "a/./b", "a b", "a\\b", "é",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn put_replaces_and_get_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalLabelStore::new(dir.path().join("objects"));
        assert_eq!(store.get("labels/t/s.pdf").await.unwrap(), None);
        store.put("labels/t/s.pdf", b"one".to_vec()).await.unwrap();
        store.put("labels/t/s.pdf", b"two".to_vec()).await.unwrap();
        assert_eq!(
            store.get("labels/t/s.pdf").await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("objects/labels/t"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["s.pdf"], "no temporary file is left behind");
        assert!(matches!(
            store.put("../escape", vec![]).await,
            Err(LabelStoreError::InvalidKey(_))
        ));
    }
}
