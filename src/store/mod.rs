//! The object store that images and the index live in: a local directory (the embedded default)
//! or an S3 bucket/prefix. Keys are always relative to the store's root (prefix) and use `/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub mod local;
pub mod s3;

pub use local::LocalStore;
pub use s3::S3Store;

/// What a store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectMeta {
    /// Key relative to the store's root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Opaque version tag (S3 ETag without quotes; a content hash on the local store).
    pub etag: String,
    /// User metadata (`x-amz-meta-*` on S3, without the prefix); empty on the local store.
    pub metadata: BTreeMap<String, String>,
}

/// A fetched object.
#[derive(Debug, Clone)]
pub struct Object {
    /// The object's bytes.
    pub bytes: Bytes,
    /// Its metadata.
    pub meta: ObjectMeta,
}

/// Result of a conditional get.
#[derive(Debug, Clone)]
pub enum GetResult {
    /// The object's etag equals the one given: nothing was transferred.
    NotModified,
    /// The object.
    Found(Object),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object under the key.
    #[error("object not found: {0}")]
    NotFound(String),
    /// A conditional write lost: the object exists (put-if-absent) or changed (put-if-match).
    /// S3's 409 ConditionalRequestConflict maps here too: the caller re-reads and retries.
    #[error("precondition failed for {0}")]
    PreconditionFailed(String),
    /// A key the store refuses (empty, `..`, too long, ...).
    #[error("invalid key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    /// Not a folder or `s3://bucket/prefix`.
    #[error("invalid store location {0:?}: {1}")]
    InvalidLocation(String, String),
    /// A local file operation failed.
    #[error("I/O error on {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The backend could not be reached or answered with an error (network, auth, throttling).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The object is bigger than the caller reads ([`ObjectStore::get_capped`]).
    #[error("{key} is {size} bytes or more, over the limit of {limit} bytes")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size, or as many bytes as were read before giving up.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// A store operation's result.
pub type StoreResult<T> = Result<T, StoreError>;

/// An object store: the operations lookalike needs, on a local folder or S3.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Human-readable location, e.g. `s3://bucket/prefix` or `/abs/path`.
    fn location(&self) -> String;
    /// Get an object; with `if_none_match = Some(etag)` returns `NotModified` when unchanged.
    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<GetResult>;
    /// Unconditional put; returns the new etag.
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<String>;
    /// Put only if no object exists under `key` (`If-None-Match: *`); returns the new etag.
    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<String>;
    /// Put only if the current etag equals `etag` (`If-Match`); returns the new etag.
    /// A missing object is `PreconditionFailed` as well.
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> StoreResult<String>;
    /// Metadata of one object, `None` when it does not exist.
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>>;
    /// All objects whose key starts with `prefix` (recursively), sorted by key.
    /// Listed entries carry key, size and etag; user metadata is only filled by `head`/`get`.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>>;
    /// Delete an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> StoreResult<()>;
    /// The object under `key` if it has at most `max_bytes`; [`StoreError::TooLarge`] otherwise,
    /// found out without reading more than `max_bytes` of it where the store can (S3: the
    /// declared length first, then a counted stream; a folder: the file's size).
    async fn get_capped(&self, key: &str, max_bytes: u64) -> StoreResult<Object> {
        let object = match self.get(key, None).await? {
            GetResult::Found(o) => o,
            GetResult::NotModified => {
                return Err(StoreError::Backend(format!(
                    "{key}: the store answered not-modified to a plain GET"
                )))
            }
        };
        check_cap(key, object.bytes.len() as u64, max_bytes)?;
        Ok(object)
    }
    /// Stream an object into `dest` (created or truncated) without holding it in memory.
    async fn download_to(&self, key: &str, dest: &Path) -> StoreResult<ObjectMeta>;
    /// The S3 client behind this store, if it is one: lets callers reach other buckets with the
    /// same configuration and credentials (the ingest Lambda's source, presigned result URLs).
    fn s3_client(&self) -> Option<aws_sdk_s3::Client> {
        None
    }
}

/// A shared object store.
pub type DynStore = Arc<dyn ObjectStore>;

/// Objects fetched at once by the passes that read many source images (ingest, reindex, train).
pub const FETCH_CONCURRENCY: usize = 16;

/// [`StoreError::TooLarge`] when `size` is over `limit`.
pub fn check_cap(key: &str, size: u64, limit: u64) -> StoreResult<()> {
    if size > limit {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

/// An unconditional `get`: the object, or an error. (A not-modified answer to a get without an
/// etag is a backend fault, reported as one.)
pub async fn get_object(store: &dyn ObjectStore, key: &str) -> StoreResult<Object> {
    match store.get(key, None).await? {
        GetResult::Found(o) => Ok(o),
        GetResult::NotModified => Err(StoreError::Backend(format!(
            "{key}: the store answered not-modified to a plain GET"
        ))),
    }
}

/// `(bucket, prefix)` of an `s3://bucket/prefix` location (the prefix without surrounding
/// slashes); `None` when `location` is not an S3 location.
pub fn parse_s3_location(location: &str) -> Option<(&str, &str)> {
    let rest = location.strip_prefix("s3://")?;
    Some(match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    })
}

/// Where a batch of images is read from: the store that names each object as the ingest
/// function does, and the prefix to list under it.
#[derive(Debug, Clone)]
pub struct ImageSource {
    /// For S3 the whole bucket, so that keys are bucket-relative (`catalog/shoes/1.jpg`), as
    /// S3 event notifications carry them; for a local folder the folder itself.
    pub store: DynStore,
    /// `catalog/` for `s3://bucket/catalog`; empty for a bucket or a folder.
    pub prefix: String,
}

/// Open the images at `s3://bucket/prefix` (or a local folder) so that every object gets the
/// key the ingest function gives it: indexing a prefix by hand and by S3 notifications makes
/// one item per object, never two.
pub async fn open_images(location: &str) -> StoreResult<ImageSource> {
    match parse_s3_location(location) {
        Some((bucket, prefix)) => Ok(ImageSource {
            store: open(&format!("s3://{bucket}")).await?,
            prefix: match prefix {
                "" => String::new(),
                p => format!("{p}/"),
            },
        }),
        None => Ok(ImageSource {
            store: open(location).await?,
            prefix: String::new(),
        }),
    }
}

/// Open a store from `s3://bucket/prefix` or a local directory path (created if missing;
/// a `file://` prefix is accepted and stripped).
pub async fn open(location: &str) -> StoreResult<DynStore> {
    if let Some((bucket, prefix)) = parse_s3_location(location) {
        if bucket.is_empty() {
            return Err(StoreError::InvalidLocation(
                location.into(),
                "missing bucket name".into(),
            ));
        }
        Ok(Arc::new(S3Store::from_env(bucket, prefix).await?))
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        if path.is_empty() {
            return Err(StoreError::InvalidLocation(
                location.into(),
                "empty path".into(),
            ));
        }
        Ok(Arc::new(LocalStore::new(path)?))
    }
}

/// Reject keys that could escape the store's root or are not plain relative paths.
pub fn validate_key(key: &str) -> StoreResult<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey(key.into(), "empty key"));
    }
    if key.starts_with('/') || key.contains('\\') || key.contains('\0') {
        return Err(StoreError::InvalidKey(
            key.into(),
            "must be a relative path with '/' separators",
        ));
    }
    if key
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(StoreError::InvalidKey(
            key.into(),
            "empty, '.' or '..' path component",
        ));
    }
    Ok(())
}
