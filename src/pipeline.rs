//! The one fetch → decode → encode pipeline that ingest, reindex and train stream their images
//! through (and the backfill and the search page after them).
//!
//! [`fetch_chunks`] takes [`Job`]s (an item of the caller's and where its image is) and yields
//! them back in chunks of [`CHUNK`] with the fetched object beside each: objects are fetched
//! [`FETCH_CONCURRENCY`] at a time, in order, and the next chunk is fetched while the caller
//! works on the current one, so the store and the CPUs are busy at once. The prefetch is bounded:
//! at most the chunk being worked on, one ready chunk and one being fetched are in memory.
//! The CPU work runs on all cores through [`crate::task::par_map`].
//!
//! What to do with a failed fetch or a failed encode is the caller's: ingest reports an outcome
//! per item, reindex stops at the first failure (dropping the [`Chunks`] stops the fetching),
//! train skips the image.

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::store::{get_object, DynStore, Object, StoreResult, FETCH_CONCURRENCY};

/// Images per chunk of CPU work: enough to keep every core busy between two fetches.
pub const CHUNK: usize = 64;

/// One image to fetch: the caller's `item` and the object `key` in `store`.
#[derive(Debug, Clone)]
pub struct Job<T> {
    /// What the caller wants back beside the object.
    pub item: T,
    /// The store the image is in.
    pub store: DynStore,
    /// Its key there.
    pub key: String,
}

/// A job with its fetched object, or the store's reason why it could not be fetched.
#[derive(Debug)]
pub struct Fetched<T> {
    /// The job's item.
    pub item: T,
    /// The object (bytes and metadata as the store returned them).
    pub object: StoreResult<Object>,
}

/// The chunks of a [`fetch_chunks`] run, in job order. Dropping it stops the fetching.
#[derive(Debug)]
pub struct Chunks<T> {
    rx: mpsc::Receiver<Vec<Fetched<T>>>,
    producer: tokio::task::JoinHandle<()>,
}

impl<T> Chunks<T> {
    /// The next chunk, `None` after the last.
    pub async fn next(&mut self) -> Option<Vec<Fetched<T>>> {
        self.rx.recv().await
    }
}

impl<T> Drop for Chunks<T> {
    fn drop(&mut self) {
        self.producer.abort();
    }
}

/// Fetches the jobs' objects in chunks of `chunk` (at least 1), one chunk ahead of the caller.
/// Must be called inside a tokio runtime.
pub fn fetch_chunks<T, I>(jobs: I, chunk: usize) -> Chunks<T>
where
    T: Send + 'static,
    I: IntoIterator<Item = Job<T>>,
    I::IntoIter: Send + 'static,
{
    // One ready chunk waits in the channel while the next is fetched.
    let (tx, rx) = mpsc::channel(1);
    let jobs = jobs.into_iter();
    let producer = tokio::spawn(async move {
        let mut chunks = futures::stream::iter(jobs)
            .map(|job| async move {
                let object = get_object(job.store.as_ref(), &job.key).await;
                Fetched {
                    item: job.item,
                    object,
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .chunks(chunk.max(1));
        while let Some(c) = chunks.next().await {
            if tx.send(c).await.is_err() {
                return; // the caller stopped listening
            }
        }
    });
    Chunks { rx, producer }
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
        })
        .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_come_in_job_order_with_their_objects() {
        let (_dir, store) = store_with(10).await;
        let mut chunks = fetch_chunks(jobs(&store, (0..10).map(|i| format!("k{i:03}"))), 4);
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
        let mut chunks = fetch_chunks(jobs(&store, keys), 64);
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
        let mut chunks = fetch_chunks(Vec::<Job<String>>::new(), 8);
        assert!(chunks.next().await.is_none());
        let (_dir, store2) = store_with(3).await;
        let _ = store;
        let mut chunks = fetch_chunks(jobs(&store2, (0..3).map(|i| format!("k{i:03}"))), 1);
        assert_eq!(chunks.next().await.unwrap().len(), 1);
        drop(chunks);
    }
}
