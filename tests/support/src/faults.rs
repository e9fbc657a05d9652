//! A store that passes everything through to a real one, except for the faults a test injects
//! (a failing key, damaged downloads).

use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;
use lookalike::store::{DynStore, GetResult, ObjectMeta, ObjectStore, StoreResult};

/// What a [`FaultyStore`] does besides passing calls through.
pub trait Fault: Send + Sync + std::fmt::Debug {
    /// Before a `get` of `key`: an error here is returned instead of the object.
    fn before_get(&self, _key: &str) -> StoreResult<()> {
        Ok(())
    }
    /// After `key` was downloaded to `dest`: may damage the file.
    fn after_download(&self, _key: &str, _dest: &Path) {}
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
