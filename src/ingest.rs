//! Ingest: objects from a source store become items of the index — fetched with bounded
//! parallelism, encoded on all cores, written as one segment and committed in one manifest change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::catalog::{category_of, MetadataTable};
use crate::index::segment::BuildParams;
use crate::index::writer::{self, Commit, Deletion};
use crate::index::{Index, IndexError, ItemRecord};
use crate::model::encoder::Encoder;
use crate::model::ModelRef;
use crate::pipeline::{self, Job};
use crate::preprocess::Limits;
use crate::store::{DynStore, Object, ObjectMeta, StoreError, StoreResult, FETCH_CONCURRENCY};
use crate::task;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Encoded and committed.
    Indexed,
    /// The same (key, etag) is already indexed.
    Duplicate,
    /// Not indexable (not an image, too large, corrupt): permanent, not retried. A record of it
    /// is written under the index's `rejected/` prefix.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Removed from the index.
    Deleted,
    /// Nothing to do: the object was deleted before it could be fetched, or a deleted key exists
    /// again (a later upload wins over an older delete notification).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Could not be processed now (the source store failed): nothing was committed for it and the
    /// caller should retry it.
    Failed {
        /// What failed.
        reason: String,
    },
}

impl Outcome {
    /// Whether the work for this object is done for good (committed, or permanently refused).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

/// Prefix, under the index, of the records of rejected objects.
pub const REJECTED_PREFIX: &str = "rejected/";

/// What `rejected/<key>.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RejectedRecord {
    /// The object's key.
    pub key: String,
    /// The ETag that was refused.
    pub etag: String,
    /// The source store's location.
    pub source: String,
    /// Why it was refused.
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub rejected_at_ms: u64,
}

/// The key of the rejection record of `key`.
pub fn rejected_key(key: &str) -> String {
    format!("{REJECTED_PREFIX}{key}.json")
}

/// What happened to one object of a batch.
#[derive(Debug, Clone, Serialize)]
pub struct ItemOutcome {
    /// The object's key.
    pub key: String,
    /// The ETag that was processed (the fetched one when the object was fetched).
    pub etag: String,
    /// What happened.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Time spent per stage, summed over the batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    /// Waiting for fetched images (the pipeline fetches the next chunk while one is encoded).
    pub fetch: Duration,
    /// Decode + preprocess + encoder run, on all cores (wall time).
    pub encode: Duration,
    /// Segment build and upload.
    pub segment_write: Duration,
    /// Manifest compare-and-swap (every attempt).
    pub manifest_commit: Duration,
}

/// What one ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The manifest version committed, `None` when nothing changed.
    pub version: Option<u64>,
    /// The segment written, if any.
    pub segment: Option<String>,
    /// Every object of the batch with its outcome.
    pub items: Vec<ItemOutcome>,
    /// The commit's details (sizes, times), when something was committed.
    #[serde(skip)]
    pub commit: Option<Commit>,
    /// Time per stage.
    #[serde(skip)]
    pub times: StageTimes,
}

impl IngestReport {
    /// How many objects had an outcome matching `pred`.
    pub fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.items.iter().filter(|i| pred(&i.outcome)).count()
    }
    /// How many objects were indexed.
    pub fn indexed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Indexed))
    }
    /// The rejected objects.
    pub fn rejected(&self) -> Vec<&ItemOutcome> {
        self.items
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Rejected { .. }))
            .collect()
    }
    /// Objects that were not processed (to retry).
    pub fn failed(&self) -> Vec<&ItemOutcome> {
        self.items
            .iter()
            .filter(|i| !i.outcome.is_final())
            .collect()
    }
}

/// Called with the number of objects just processed (from worker threads).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Everything an ingest needs; built once (per Lambda container, per CLI run) and reused.
pub struct Ingester {
    /// The index to add to.
    pub index: Arc<Index>,
    /// The encoder (the index's model).
    pub encoder: Arc<Encoder>,
    /// Where the images are (`s3://bucket/prefix` or a folder); keys are relative to it.
    pub source: DynStore,
    /// Limits on the images.
    pub limits: Limits,
    /// Per-key metadata from a CSV, merged over the objects' own.
    pub metadata: Option<Arc<MetadataTable>>,
    /// Segment build parameters.
    pub build: BuildParams,
}

impl Ingester {
    /// What the index records of the encoder's model.
    pub fn model_ref(&self) -> ModelRef {
        self.encoder.model_ref()
    }

    /// Ingest `objects` and delete `deleted` keys in one commit, in commit order (what the CLI
    /// does: no sequencers). `progress` is called once per object processed (from worker
    /// threads).
    pub async fn ingest(
        &self,
        objects: Vec<ObjectMeta>,
        deleted: Vec<String>,
        progress: Option<Progress>,
    ) -> Result<IngestReport, IndexError> {
        let uploads = objects.into_iter().map(|o| (o, None)).collect();
        let deletions = deleted.into_iter().map(Deletion::by_commit).collect();
        self.ingest_changes(uploads, deletions, progress).await
    }

    /// [`Ingester::ingest`] for changes reported by S3 notifications: each upload and deletion
    /// with its notification's sequencer (if it had one), so that a change that commits after a
    /// later change of the same key does not undo it ([`writer::append_changes`]).
    pub async fn ingest_changes(
        &self,
        uploads: Vec<(ObjectMeta, Option<String>)>,
        deleted: Vec<Deletion>,
        progress: Option<Progress>,
    ) -> Result<IngestReport, IndexError> {
        let sequencers: HashMap<String, Option<String>> = uploads
            .iter()
            .map(|(o, s)| (o.key.clone(), s.clone()))
            .collect();
        let objects: Vec<ObjectMeta> = uploads.into_iter().map(|(o, _)| o).collect();
        let snapshot = self.index.refresh().await?;
        let mut times = StageTimes::default();
        let mut outcomes: Vec<ItemOutcome> = Vec::with_capacity(objects.len() + deleted.len());
        // Within a batch the last event for a key wins.
        let mut latest: HashMap<&str, usize> = HashMap::new();
        for (i, o) in objects.iter().enumerate() {
            latest.insert(&o.key, i);
        }
        let mut todo = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if latest.get(o.key.as_str()) != Some(&i) {
                continue;
            }
            let duplicate = snapshot
                .record(&o.key)?
                .is_some_and(|r| !o.etag.is_empty() && r.etag == o.etag);
            if duplicate {
                outcomes.push(ItemOutcome {
                    key: o.key.clone(),
                    etag: o.etag.clone(),
                    outcome: Outcome::Duplicate,
                });
                if let Some(p) = &progress {
                    p(1);
                }
            } else if o.size > self.limits.max_bytes as u64 {
                let reason = format!(
                    "{} bytes is over the limit of {} bytes",
                    o.size, self.limits.max_bytes
                );
                outcomes.push(ItemOutcome {
                    key: o.key.clone(),
                    etag: o.etag.clone(),
                    outcome: Outcome::Rejected { reason },
                });
                if let Some(p) = &progress {
                    p(1);
                }
            } else {
                todo.push(o.clone());
            }
        }

        let mut items: Vec<(ItemRecord, Vec<f32>)> = Vec::with_capacity(todo.len());
        let mut vanished = Vec::new();
        let jobs = todo.into_iter().map(|meta| Job {
            key: meta.key.clone(),
            size: meta.size,
            store: self.source.clone(),
            item: meta,
        });
        let mut chunks = pipeline::fetch_chunks(
            jobs.collect::<Vec<_>>(),
            pipeline::FetchLimits::for_images(self.limits.max_bytes),
        );
        loop {
            // The pipeline fetches the next chunk while this one is encoded: what counts as fetch
            // time is the wait for a chunk.
            let t = Instant::now();
            let Some(chunk) = chunks.next().await else {
                break;
            };
            let mut fetched: Vec<_> = chunk
                .into_iter()
                .map(|f| fetched(f.item, f.object))
                .collect();
            times.fetch += t.elapsed();
            // The notification's ETag may be missing or stale: the fetched object's decides
            // whether this exact content is already indexed.
            let mut fresh = Vec::with_capacity(fetched.len());
            for (meta, bytes) in fetched.drain(..) {
                let indexed = bytes.is_ok()
                    && !meta.etag.is_empty()
                    && snapshot
                        .record(&meta.key)?
                        .is_some_and(|r| r.etag == meta.etag);
                if indexed {
                    if let Some(p) = &progress {
                        p(1);
                    }
                    outcomes.push(ItemOutcome {
                        key: meta.key,
                        etag: meta.etag,
                        outcome: Outcome::Duplicate,
                    });
                } else {
                    fresh.push((meta, bytes));
                }
            }
            let fetched = fresh;
            let t = Instant::now();
            let encoded = self.encode(fetched, progress.clone()).await?;
            times.encode += t.elapsed();
            for (meta, result) in encoded {
                match result {
                    Ok(vector) => {
                        outcomes.push(ItemOutcome {
                            key: meta.key.clone(),
                            etag: meta.etag.clone(),
                            outcome: Outcome::Indexed,
                        });
                        let sequencer = sequencers.get(&meta.key).cloned().flatten();
                        items.push((self.record(meta, sequencer), vector));
                    }
                    // Deleted after its notification: the deletion is at least that late.
                    Err(Outcome::Deleted) => vanished.push(Deletion {
                        sequencer: sequencers.get(&meta.key).cloned().flatten(),
                        key: meta.key,
                    }),
                    Err(outcome) => {
                        tracing::warn!(key = %meta.key, etag = %meta.etag, ?outcome, "not indexed");
                        outcomes.push(ItemOutcome {
                            key: meta.key,
                            etag: meta.etag,
                            outcome,
                        });
                    }
                }
            }
        }
        let deleted: Vec<Deletion> = deleted
            .into_iter()
            .filter(|d| !latest.contains_key(d.key.as_str()))
            .chain(vanished)
            .collect();
        let deleted = self.check_deletions(deleted, &mut outcomes).await;

        let commit =
            writer::append_changes(&self.index, &self.model_ref(), items, &deleted, self.build)
                .await?;
        if let Some(c) = &commit {
            times.segment_write = c.segment_write;
            times.manifest_commit = c.manifest_commit;
            mark_superseded(&mut outcomes, c);
            self.index.refresh().await?;
        }
        self.record_rejections(&outcomes).await;
        Ok(IngestReport {
            version: commit.as_ref().map(|c| c.version),
            segment: commit
                .as_ref()
                .and_then(|c| c.segment.as_ref().map(|s| s.name.clone())),
            items: outcomes,
            commit,
            times,
        })
    }

    async fn encode(
        &self,
        fetched: Vec<(ObjectMeta, Result<Bytes, Outcome>)>,
        progress: Option<Progress>,
    ) -> Result<Vec<(ObjectMeta, Result<Vec<f32>, Outcome>)>, IndexError> {
        let encoder = self.encoder.clone();
        let limits = self.limits;
        // Encoding is CPU-bound: on all cores, off the async runtime.
        Ok(task::par_map(fetched, move |(meta, bytes)| {
            let r = bytes.and_then(|b| {
                encoder
                    .encode_image(&b, &limits)
                    .map_err(|e| Outcome::Rejected {
                        reason: e.to_string(),
                    })
            });
            if let Some(p) = &progress {
                p(1);
            }
            (meta, r)
        })
        .await?)
    }

    /// Keep the deletions whose object is really gone: a notification can arrive after the key
    /// was uploaded again, and the index follows the store.
    async fn check_deletions(
        &self,
        deleted: Vec<Deletion>,
        outcomes: &mut Vec<ItemOutcome>,
    ) -> Vec<Deletion> {
        let checked: Vec<(Deletion, StoreResult<Option<ObjectMeta>>)> = stream::iter(deleted)
            .map(|d| async move {
                let r = self.source.head(&d.key).await;
                (d, r)
            })
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        let mut gone = Vec::new();
        for (d, head) in checked {
            let key = d.key.clone();
            let (etag, outcome) = match head {
                Ok(None) | Err(StoreError::NotFound(_)) | Err(StoreError::InvalidKey(..)) => {
                    gone.push(d);
                    (String::new(), Outcome::Deleted)
                }
                Ok(Some(meta)) => (
                    meta.etag,
                    Outcome::Skipped {
                        reason: "the object exists again; not deleted".into(),
                    },
                ),
                Err(e) => (
                    String::new(),
                    Outcome::Failed {
                        reason: format!("cannot check the deleted object: {e}"),
                    },
                ),
            };
            outcomes.push(ItemOutcome { key, etag, outcome });
        }
        gone
    }

    /// Write a `rejected/<key>.json` record under the index for every rejected object. Best
    /// effort: the rejection is also logged, and a failed write does not undo the commit.
    async fn record_rejections(&self, outcomes: &[ItemOutcome]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let writes = outcomes.iter().filter_map(|item| match &item.outcome {
            Outcome::Rejected { reason } => Some(RejectedRecord {
                key: item.key.clone(),
                etag: item.etag.clone(),
                source: self.source.location(),
                reason: reason.clone(),
                rejected_at_ms: now,
            }),
            _ => None,
        });
        let store = self.index.store();
        stream::iter(writes)
            .for_each_concurrent(FETCH_CONCURRENCY, |record| async move {
                tracing::warn!(
                    key = %record.key,
                    etag = %record.etag,
                    reason = %record.reason,
                    "rejected"
                );
                let body = serde_json::to_vec_pretty(&record).unwrap_or_default();
                if let Err(e) = store.put(&rejected_key(&record.key), body.into()).await {
                    tracing::warn!(key = %record.key, error = %e, "cannot write the rejection record");
                }
            })
            .await;
    }

    fn record(&self, meta: ObjectMeta, sequencer: Option<String>) -> ItemRecord {
        let mut metadata: serde_json::Map<String, serde_json::Value> = meta
            .metadata
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        if let Some(row) = self.metadata.as_ref().and_then(|t| t.get(&meta.key)) {
            metadata.extend(row.clone());
        }
        ItemRecord {
            category: category_of(&meta.key).to_string(),
            source: self.source.location(),
            key: meta.key,
            etag: meta.etag,
            size: meta.size,
            metadata,
            sequencer,
        }
    }
}

/// What the commit found older than the index: its stale items and skipped deletions are
/// `Skipped`, not `Indexed` or `Deleted`.
fn mark_superseded(outcomes: &mut [ItemOutcome], commit: &Commit) {
    for o in outcomes.iter_mut() {
        let reason = match o.outcome {
            Outcome::Indexed if commit.stale.contains(&o.key) => {
                "a later change of the key was indexed first (S3 sequencer)"
            }
            Outcome::Deleted if commit.skipped_deletions.contains(&o.key) => {
                "the indexed object is newer than the deletion (S3 sequencer)"
            }
            _ => continue,
        };
        o.outcome = Outcome::Skipped {
            reason: reason.into(),
        };
    }
}

/// A fetched object as ingest sees it. The etag and user metadata of the fetched object win over
/// the event's (they describe the bytes we actually encode); a failed fetch is the item's outcome.
fn fetched(meta: ObjectMeta, object: StoreResult<Object>) -> (ObjectMeta, Result<Bytes, Outcome>) {
    match object {
        Ok(o) => {
            let mut m = o.meta;
            if m.metadata.is_empty() {
                m.metadata = meta.metadata;
            }
            (m, Ok(o.bytes))
        }
        // Deleted since the notification: the deletion is what to index.
        Err(StoreError::NotFound(_)) => (meta, Err(Outcome::Deleted)),
        // An invalid key can never be fetched, a too big object never read: refuse it for good.
        Err(e @ (StoreError::InvalidKey(..) | StoreError::TooLarge { .. })) => {
            let reason = e.to_string();
            (meta, Err(Outcome::Rejected { reason }))
        }
        Err(e) => {
            let reason = format!("cannot fetch: {e}");
            (meta, Err(Outcome::Failed { reason }))
        }
    }
}
