//! The one fetch → decode → encode pipeline that ingest, reindex and train stream their images
//! through (and the backfill and the search page after them).
//!
//! [`fetch_chunks`] takes [`Job`]s (an item of the caller's and where its image is) and yields
//! them back in chunks with the fetched object beside each: objects are fetched
//! [`FETCH_CONCURRENCY`] at a time, in order, and the next chunk is fetched while the caller
//! works on the current one, so the store and the CPUs are busy at once. The prefetch is bounded
//! in count and in bytes ([`FetchLimits`]): at most the chunk being worked on, one ready chunk
//! and one being fetched are in memory, together at most about `in_flight_bytes`, and no object
//! is read past `max_object_bytes`. The CPU work runs on all cores through
//! [`crate::task::par_map`].
//!
//! What to do with a failed fetch or a failed encode is the caller's: ingest reports an outcome
//! per item, reindex stops at the first failure (dropping the [`Chunks`] stops the fetching),
//! train skips the image.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::store::{DynStore, Object, StoreResult, FETCH_CONCURRENCY};

/// Images per chunk of CPU work: enough to keep every core busy between two fetches.
pub const CHUNK: usize = 64;
/// Bytes of fetched images the pipeline holds at most by default (being fetched, ready, and
/// being worked on), whatever the objects' sizes.
pub const IN_FLIGHT_BYTES: u64 = 512 << 20;
/// What a job of unknown size (`size` 0) is counted as until it is fetched.
const UNKNOWN_SIZE: u64 = 8 << 20;

/// One image to fetch: the caller's `item` and the object `key` in `store`.
#[derive(Debug, Clone)]
pub struct Job<T> {
    /// What the caller wants back beside the object.
    pub item: T,
    /// The store the image is in.
    pub store: DynStore,
    /// Its key there.
    pub key: String,
    /// Its size as listed or notified (0 when unknown): what it is counted as in flight.
    pub size: u64,
}

/// How much a [`fetch_chunks`] run holds at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Most jobs per chunk.
    pub chunk: usize,
    /// A chunk ends once its objects reach a quarter of this; fetching waits while this many
    /// bytes are held.
    pub in_flight_bytes: u64,
    /// A bigger object is not read past this: its fetch is [`crate::store::StoreError::TooLarge`].
    pub max_object_bytes: u64,
}

impl FetchLimits {
    /// Chunks of [`CHUNK`] within [`IN_FLIGHT_BYTES`], objects up to `max_object_bytes`.
    pub fn for_images(max_object_bytes: usize) -> Self {
        FetchLimits {
            chunk: CHUNK,
            in_flight_bytes: IN_FLIGHT_BYTES,
            max_object_bytes: max_object_bytes as u64,
        }
    }

    fn chunk_bytes(&self) -> u64 {
        (self.in_flight_bytes / 4).max(1)
    }

    /// What a job counts as: its size (or [`UNKNOWN_SIZE`]), at most what can ever be granted.
    fn reservation(&self, size: u64) -> u32 {
        let most = self
            .in_flight_bytes
            .saturating_sub(self.chunk_bytes())
            .max(1);
        let bytes = if size == 0 { UNKNOWN_SIZE } else { size };
        let bytes = bytes.min(self.max_object_bytes.max(1)).min(most);
        kib(bytes)
    }
}

fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

/// A job with its fetched object, or the store's reason why it could not be fetched.
#[derive(Debug)]
pub struct Fetched<T> {
    /// The job's item.
    pub item: T,
    /// The object (bytes and metadata as the store returned them).
    pub object: StoreResult<Object>,
}

/// A chunk on its way to the caller, with the budget its objects hold.
type Sent<T> = (Vec<Fetched<T>>, Vec<OwnedSemaphorePermit>);

/// The chunks of a [`fetch_chunks`] run, in job order. Dropping it stops the fetching.
#[derive(Debug)]
pub struct Chunks<T> {
    rx: mpsc::Receiver<Sent<T>>,
    producer: tokio::task::JoinHandle<()>,
    /// The budget of the chunk the caller works on: given back when it asks for the next one.
    held: Vec<OwnedSemaphorePermit>,
}

impl<T> Chunks<T> {
    /// The next chunk, `None` after the last. The caller is done with the previous chunk's bytes
    /// by now: their share of the in-flight budget goes back.
    pub async fn next(&mut self) -> Option<Vec<Fetched<T>>> {
        self.held.clear();
        let (chunk, permits) = self.rx.recv().await?;
        self.held = permits;
        Some(chunk)
    }
}

impl<T> Drop for Chunks<T> {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

/// Fetches the jobs' objects in chunks within `limits`, one chunk ahead of the caller.
/// Must be called inside a tokio runtime.
pub fn fetch_chunks<T, I>(jobs: I, limits: FetchLimits) -> Chunks<T>
where
    T: Send + 'static,
    I: IntoIterator<Item = Job<T>>,
    I::IntoIter: Send + 'static,
{
    // One ready chunk waits in the channel while the next is fetched.
    let (tx, rx) = mpsc::channel(1);
    let jobs = jobs.into_iter();
    let budget = Arc::new(Semaphore::new(kib(limits.in_flight_bytes) as usize));
    let producer = tokio::spawn(async move {
        // Jobs take their share of the budget in order (the semaphore is fair), so a chunk
        // always completes: the budget exceeds a chunk's bytes plus the largest share.
        let mut fetched = futures::stream::iter(jobs)
            .map(|job| {
                let budget = budget.clone();
                async move {
                    let permit = budget
                        .acquire_many_owned(limits.reservation(job.size))
                        .await
                        .expect("the budget is never closed");
                    let object = job
                        .store
                        .get_capped(&job.key, limits.max_object_bytes)
                        .await;
                    (
                        Fetched {
                            item: job.item,
                            object,
                        },
                        permit,
                    )
                }
            })
            .buffered(FETCH_CONCURRENCY);
        let mut chunk: Sent<T> = (Vec::new(), Vec::new());
        let mut bytes = 0u64;
        while let Some((f, permit)) = fetched.next().await {
            bytes += f.object.as_ref().map_or(0, |o| o.bytes.len() as u64);
            chunk.0.push(f);
            chunk.1.push(permit);
            if chunk.0.len() >= limits.chunk.max(1) || bytes >= limits.chunk_bytes() {
                bytes = 0;
                if tx.send(std::mem::take(&mut chunk)).await.is_err() {
                    return; // the caller stopped listening
                }
            }
        }
        if !chunk.0.is_empty() {
            let _ = tx.send(chunk).await;
        }
    });
    Chunks {
        rx,
        producer,
        held: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, StoreError};
    use std::sync::Arc;

    async fn store_with(n: usize) -> (tempfile::TempDir, DynStore) {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path()).unwrap());
        for i in 0..n {
            store
                .put(&format!("k{i:03}"), format!("v{i}").into_bytes().into())
                .await
                .unwrap();
        }
        (dir, store)
    }

    fn jobs(store: &DynStore, keys: impl Iterator<Item = String>) -> Vec<Job<String>> {
        keys.map(|key| Job {
            item: key.clone(),
            store: store.clone(),
            key,
            size: 0,
        })
        .collect()
    }

    fn chunks_of(n: usize) -> FetchLimits {
        FetchLimits {
            chunk: n,
            ..FetchLimits::for_images(1 << 20)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_come_in_job_order_with_their_objects() {
        let (_dir, store) = store_with(10).await;
        let mut chunks = fetch_chunks(
            jobs(&store, (0..10).map(|i| format!("k{i:03}"))),
            chunks_of(4),
        );
        let mut sizes = Vec::new();
        let mut seen = Vec::new();
        while let Some(c) = chunks.next().await {
            sizes.push(c.len());
            for f in c {
                let o = f.object.unwrap();
                assert_eq!(o.meta.key, f.item);
                seen.push(String::from_utf8(o.bytes.to_vec()).unwrap());
            }
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        assert_eq!(seen, (0..10).map(|i| format!("v{i}")).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_fetch_stays_with_its_item() {
        let (_dir, store) = store_with(2).await;
        let keys = ["k000", "missing", "k001"].map(String::from).into_iter();
        let mut chunks = fetch_chunks(jobs(&store, keys), chunks_of(64));
        let c = chunks.next().await.unwrap();
        assert!(chunks.next().await.is_none());
        assert_eq!(c.len(), 3);
        assert!(c[0].object.is_ok() && c[2].object.is_ok());
        assert_eq!(c[1].item, "missing");
        assert!(matches!(c[1].object, Err(StoreError::NotFound(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_jobs_no_chunks_and_a_dropped_stream_stops() {
        let (_dir, store) = store_with(0).await;
        let mut chunks = fetch_chunks(Vec::<Job<String>>::new(), chunks_of(8));
        assert!(chunks.next().await.is_none());
        let (_dir, store2) = store_with(3).await;
        let _ = store;
        let mut chunks = fetch_chunks(
            jobs(&store2, (0..3).map(|i| format!("k{i:03}"))),
            chunks_of(1),
        );
        assert_eq!(chunks.next().await.unwrap().len(), 1);
        drop(chunks);
    }

    /// Objects of 300 KiB under a 1 MiB budget: chunks end at a quarter of the budget (256 KiB,
    /// so one object each), the pipeline never holds more than the budget, and an object over
    /// the cap is refused without being read whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bytes_in_flight_and_each_object_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path()).unwrap());
        for i in 0..12 {
            store
                .put(&format!("k{i:03}"), vec![i as u8; 300 << 10].into())
                .await
                .unwrap();
        }
        store.put("big", vec![0u8; 2 << 20].into()).await.unwrap();
        let mut all: Vec<Job<String>> = jobs(&store, (0..12).map(|i| format!("k{i:03}")));
        all.iter_mut().for_each(|j| j.size = 300 << 10);
        all.extend(jobs(&store, std::iter::once("big".to_string())));
        let limits = FetchLimits {
            chunk: 64,
            in_flight_bytes: 1 << 20,
            max_object_bytes: 1 << 20,
        };
        let mut chunks = fetch_chunks(all, limits);
        let mut n = 0;
        while let Some(c) = chunks.next().await {
            // Give the producer time to fill whatever budget is left.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let held: u64 = c
                .iter()
                .map(|f| f.object.as_ref().map_or(0, |o| o.bytes.len() as u64))
                .sum();
            assert!(held <= 1 << 20, "{held}");
            for f in c {
                n += 1;
                if f.item == "big" {
                    assert!(
                        matches!(f.object, Err(StoreError::TooLarge { limit, .. }) if limit == 1 << 20),
                        "{:?}",
                        f.object.map(|o| o.bytes.len())
                    );
                } else {
                    assert_eq!(f.object.unwrap().bytes.len(), 300 << 10);
                }
            }
        }
        assert_eq!(n, 13);
    }
}
