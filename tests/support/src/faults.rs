//! A store that passes everything through to a real one, except for the faults a test injects
//! (a failing key, damaged downloads, a writer held at an upload while others commit).

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use lookalike::store::{DynStore, GetResult, ObjectMeta, ObjectStore, StoreResult};

/// What a [`FaultyStore`] does besides passing calls through.
#[async_trait]
pub trait Fault: Send + Sync + std::fmt::Debug {
    /// Before a put-if-absent of `key` (segment uploads): may hold the writer here.
    async fn before_put_if_absent(&self, _key: &str) {}
    /// Before a `get` of `key`: an error here is returned instead of the object.
    fn before_get(&self, _key: &str) -> StoreResult<()> {
        Ok(())
    }
    /// After `key` was downloaded to `dest`: may damage the file.
    fn after_download(&self, _key: &str, _dest: &Path) {}
}

#[async_trait]
impl<F: Fault> Fault for std::sync::Arc<F> {
    async fn before_put_if_absent(&self, key: &str) {
        (**self).before_put_if_absent(key).await
    }
    fn before_get(&self, key: &str) -> StoreResult<()> {
        (**self).before_get(key)
    }
    fn after_download(&self, key: &str, dest: &Path) {
        (**self).after_download(key, dest)
    }
}

/// A store that forwards every call to `inner`, with `fault` consulted around downloads.
#[derive(Debug)]
pub struct FaultyStore<F> {
    /// The real store.
    pub inner: DynStore,
    /// The faults to inject.
    pub fault: F,
}

#[async_trait]
impl<F: Fault> ObjectStore for FaultyStore<F> {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str, inm: Option<&str>) -> StoreResult<GetResult> {
        self.fault.before_get(key)?;
        self.inner.get(key, inm).await
    }
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<String> {
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<String> {
        self.fault.before_put_if_absent(key).await;
        self.inner.put_if_absent(key, body).await
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> StoreResult<String> {
        self.inner.put_if_match(key, body, etag).await
    }
    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }
    async fn download_to(&self, key: &str, dest: &Path) -> StoreResult<ObjectMeta> {
        let meta = self.inner.download_to(key, dest).await?;
        self.fault.after_download(key, dest);
        Ok(meta)
    }
}

/// Holds the next segment upload (once armed) until the test releases it: the writer (e.g. a
/// compaction) has built its segment but not committed, and the test commits other changes.
#[derive(Debug, Default)]
pub struct HoldSegmentUpload {
    armed: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl HoldSegmentUpload {
    /// Hold the next segment upload.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    /// Wait until a writer is held.
    pub async fn reached(&self) {
        self.reached.notified().await
    }
    /// Let the held writer go on.
    pub fn release(&self) {
        self.release.notify_one()
    }
}

#[async_trait]
impl Fault for HoldSegmentUpload {
    async fn before_put_if_absent(&self, key: &str) {
        if key.starts_with("segments/")
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.reached.notify_one();
            self.release.notified().await;
        }
    }
}
