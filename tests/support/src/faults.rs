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
    /// Before a put-if-match of `key` (manifest commits): may delay the writer here; an error
    /// here is returned instead of writing (S3's 409 ConditionalRequestConflict: nothing landed).
    async fn before_put_if_match(&self, _key: &str) -> StoreResult<()> {
        Ok(())
    }
    /// Before a `get` of `key`: an error here is returned instead of the object.
    fn before_get(&self, _key: &str) -> StoreResult<()> {
        Ok(())
    }
    /// After `key` was downloaded to `dest`: may damage the file.
    fn after_download(&self, _key: &str, _dest: &Path) {}
    /// After a conditional put (if-absent or if-match) of `key` answered `written`: may replace
    /// the answer the caller sees (a lost response).
    fn after_conditional_put(
        &self,
        _key: &str,
        written: StoreResult<String>,
    ) -> StoreResult<String> {
        written
    }
}

#[async_trait]
impl<F: Fault> Fault for std::sync::Arc<F> {
    async fn before_put_if_absent(&self, key: &str) {
        (**self).before_put_if_absent(key).await
    }
    async fn before_put_if_match(&self, key: &str) -> StoreResult<()> {
        (**self).before_put_if_match(key).await
    }
    fn before_get(&self, key: &str) -> StoreResult<()> {
        (**self).before_get(key)
    }
    fn after_download(&self, key: &str, dest: &Path) {
        (**self).after_download(key, dest)
    }
    fn after_conditional_put(
        &self,
        key: &str,
        written: StoreResult<String>,
    ) -> StoreResult<String> {
        (**self).after_conditional_put(key, written)
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
        let written = self.inner.put_if_absent(key, body).await;
        self.fault.after_conditional_put(key, written)
    }
    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> StoreResult<String> {
        self.fault.before_put_if_match(key).await?;
        let written = self.inner.put_if_match(key, body, etag).await;
        self.fault.after_conditional_put(key, written)
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

/// How a [`LoseManifestAnswer`] reports a manifest write that landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostAnswer {
    /// 412, as the SDK's own retry of the landed write sees it.
    PreconditionFailed,
    /// A network error after the write landed.
    Backend,
}

/// Once armed, the next manifest write lands but its caller is told it did not.
#[derive(Debug)]
pub struct LoseManifestAnswer {
    armed: std::sync::atomic::AtomicBool,
    answer: LostAnswer,
}

impl LoseManifestAnswer {
    /// A fault that answers `answer` to the next landed manifest write once armed.
    pub fn new(answer: LostAnswer) -> Self {
        LoseManifestAnswer {
            armed: false.into(),
            answer,
        }
    }
    /// Lose the answer of the next manifest write that lands.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    /// Whether an answer was lost since the last [`Self::arm`].
    pub fn fired(&self) -> bool {
        !self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Fault for LoseManifestAnswer {
    fn after_conditional_put(
        &self,
        key: &str,
        written: StoreResult<String>,
    ) -> StoreResult<String> {
        lose_answer(key, written, || {
            self.armed
                .swap(false, std::sync::atomic::Ordering::SeqCst)
                .then_some(self.answer)
        })
    }
}

/// `written`, or in its place the error of the [`LostAnswer`] that `lose` picks when `written`
/// is a manifest write that landed (`lose` returns `None` to let the answer through).
fn lose_answer(
    key: &str,
    written: StoreResult<String>,
    lose: impl FnOnce() -> Option<LostAnswer>,
) -> StoreResult<String> {
    if key != lookalike::index::manifest::MANIFEST_KEY || written.is_err() {
        return written;
    }
    match lose() {
        None => written,
        Some(LostAnswer::PreconditionFailed) => {
            Err(lookalike::store::StoreError::PreconditionFailed(key.into()))
        }
        Some(LostAnswer::Backend) => Err(lookalike::store::StoreError::Backend(
            "connection reset (injected)".into(),
        )),
    }
}

/// Seeded random faults for the interleaving tests: short delays before every conditional put,
/// failed manifest reads, manifest writes refused with S3's 409 (a conflicting conditional
/// write: nothing lands), and manifest writes that land but whose answer is lost.
#[derive(Debug)]
pub struct RandomFaults {
    rng: std::sync::Mutex<rand::rngs::StdRng>,
    /// Chance that a manifest GET fails (a network error).
    pub p_get_fails: f64,
    /// Chance that a landed manifest write answers 412 or a network error anyway.
    pub p_answer_lost: f64,
    /// Chance that a manifest write is refused with 409 ConditionalRequestConflict.
    pub p_conflict: f64,
    /// Longest delay before a conditional put, in ms.
    pub max_delay_ms: u64,
    /// Faults injected so far: (failed gets, lost answers, 409s).
    pub injected: (
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
        std::sync::atomic::AtomicUsize,
    ),
}

impl RandomFaults {
    /// Faults drawn from `seed`.
    pub fn new(
        seed: u64,
        p_get_fails: f64,
        p_answer_lost: f64,
        p_conflict: f64,
        max_delay_ms: u64,
    ) -> Self {
        RandomFaults {
            rng: std::sync::Mutex::new(rand::SeedableRng::seed_from_u64(seed)),
            p_get_fails,
            p_answer_lost,
            p_conflict,
            max_delay_ms,
            injected: Default::default(),
        }
    }

    fn chance(&self, p: f64) -> bool {
        use rand::RngExt;
        self.rng.lock().unwrap().random_bool(p)
    }

    async fn delay(&self) {
        use rand::RngExt;
        let ms = self.rng.lock().unwrap().random_range(0..=self.max_delay_ms);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }

    /// Whether to inject a fault into this call on `key`: only on the manifest, with chance
    /// `p`, counted in `counter`.
    fn inject_on_manifest(
        &self,
        key: &str,
        p: f64,
        counter: &std::sync::atomic::AtomicUsize,
    ) -> bool {
        let hit = key == lookalike::index::manifest::MANIFEST_KEY && self.chance(p);
        if hit {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        hit
    }

    /// (failed gets, lost answers, 409s) injected so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.injected.0.load(Relaxed),
            self.injected.1.load(Relaxed),
            self.injected.2.load(Relaxed),
        )
    }
}

#[async_trait]
impl Fault for RandomFaults {
    async fn before_put_if_absent(&self, _key: &str) {
        self.delay().await
    }
    async fn before_put_if_match(&self, key: &str) -> StoreResult<()> {
        self.delay().await;
        if self.inject_on_manifest(key, self.p_conflict, &self.injected.2) {
            return Err(lookalike::store::StoreError::PreconditionFailed(
                "injected: 409 ConditionalRequestConflict".into(),
            ));
        }
        Ok(())
    }
    fn before_get(&self, key: &str) -> StoreResult<()> {
        if self.inject_on_manifest(key, self.p_get_fails, &self.injected.0) {
            return Err(lookalike::store::StoreError::Backend(
                "injected: connection reset".into(),
            ));
        }
        Ok(())
    }
    fn after_conditional_put(
        &self,
        key: &str,
        written: StoreResult<String>,
    ) -> StoreResult<String> {
        lose_answer(key, written, || {
            if !self.chance(self.p_answer_lost) {
                return None;
            }
            self.injected
                .1
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(if self.chance(0.5) {
                LostAnswer::PreconditionFailed
            } else {
                LostAnswer::Backend
            })
        })
    }
}
