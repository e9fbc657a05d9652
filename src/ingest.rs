//! Ingest: objects from a source store become items of the index — fetched with bounded
//! parallelism, encoded on all cores, written as one segment and committed in one manifest change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use rayon::prelude::*;
use serde::Serialize;

use crate::catalog::{category_of, MetadataTable};
use crate::index::segment::BuildParams;
use crate::index::writer::{self, Commit};
use crate::index::{Index, IndexError, ItemRecord, ModelRef};
use crate::model::encoder::Encoder;
use crate::preprocess::Limits;
use crate::store::{DynStore, GetResult, ObjectMeta};

/// Images fetched and encoded together; bounds the memory held by raw image bytes.
const CHUNK: usize = 64;
/// Concurrent fetches from the source store.
const FETCH_CONCURRENCY: usize = 16;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Indexed,
    /// The same (key, etag) is already indexed.
    Duplicate,
    /// Not indexable (not an image, too large, corrupt, missing): permanent, not retried.
    Rejected {
        reason: String,
    },
    Deleted,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemOutcome {
    pub key: String,
    pub etag: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Time spent per stage, summed over the batch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimes {
    pub fetch: Duration,
    pub encode: Duration,
    pub commit: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The manifest version committed, `None` when nothing changed.
    pub version: Option<u64>,
    pub segment: Option<String>,
    pub items: Vec<ItemOutcome>,
    #[serde(skip)]
    pub commit: Option<Commit>,
    #[serde(skip)]
    pub times: StageTimes,
}

impl IngestReport {
    pub fn count(&self, pred: impl Fn(&Outcome) -> bool) -> usize {
        self.items.iter().filter(|i| pred(&i.outcome)).count()
    }
    pub fn indexed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Indexed))
    }
    pub fn rejected(&self) -> Vec<&ItemOutcome> {
        self.items
            .iter()
            .filter(|i| matches!(i.outcome, Outcome::Rejected { .. }))
            .collect()
    }
}

/// Called with the number of objects just processed (from worker threads).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Everything an ingest needs; built once (per Lambda container, per CLI run) and reused.
pub struct Ingester {
    pub index: Arc<Index>,
    pub encoder: Arc<Encoder>,
    /// Where the images are (`s3://bucket/prefix` or a folder); keys are relative to it.
    pub source: DynStore,
    pub limits: Limits,
    pub metadata: Option<Arc<MetadataTable>>,
    pub build: BuildParams,
}

impl Ingester {
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            id: self.encoder.model_id().to_string(),
            dims: self.encoder.dims(),
        }
    }

    /// Ingest `objects` and delete `deleted` keys in one commit. `progress` is called once per
    /// object processed (from worker threads).
    pub async fn ingest(
        &self,
        objects: Vec<ObjectMeta>,
        deleted: Vec<String>,
        progress: Option<Progress>,
    ) -> Result<IngestReport, IndexError> {
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
        for chunk in todo.chunks(CHUNK) {
            let t = Instant::now();
            let fetched = self.fetch(chunk).await;
            times.fetch += t.elapsed();
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
                        items.push((self.record(meta), vector));
                    }
                    Err(reason) => {
                        tracing::warn!(key = %meta.key, %reason, "rejected");
                        outcomes.push(ItemOutcome {
                            key: meta.key,
                            etag: meta.etag,
                            outcome: Outcome::Rejected { reason },
                        });
                    }
                }
            }
        }
        let deleted: Vec<String> = deleted
            .into_iter()
            .filter(|k| !latest.contains_key(k.as_str()))
            .collect();
        for key in &deleted {
            outcomes.push(ItemOutcome {
                key: key.clone(),
                etag: String::new(),
                outcome: Outcome::Deleted,
            });
        }

        let t = Instant::now();
        let commit =
            writer::append(&self.index, &self.model_ref(), items, &deleted, self.build).await?;
        times.commit = t.elapsed();
        if commit.is_some() {
            self.index.refresh().await?;
        }
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

    /// Fetch a chunk concurrently. The etag and user metadata of the fetched object win over the
    /// event's (they describe the bytes we actually encode).
    async fn fetch(&self, chunk: &[ObjectMeta]) -> Vec<(ObjectMeta, Result<bytes::Bytes, String>)> {
        stream::iter(chunk.iter().cloned())
            .map(|meta| async move {
                match self.source.get(&meta.key, None).await {
                    Ok(GetResult::Found(o)) => {
                        let mut m = o.meta;
                        if m.metadata.is_empty() {
                            m.metadata = meta.metadata;
                        }
                        (m, Ok(o.bytes))
                    }
                    Ok(GetResult::NotModified) => {
                        (meta, Err("unexpected not-modified".to_string()))
                    }
                    Err(e) => (meta, Err(format!("cannot fetch: {e}"))),
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await
    }

    async fn encode(
        &self,
        fetched: Vec<(ObjectMeta, Result<bytes::Bytes, String>)>,
        progress: Option<Progress>,
    ) -> Result<Vec<(ObjectMeta, Result<Vec<f32>, String>)>, IndexError> {
        let encoder = self.encoder.clone();
        let limits = self.limits;
        // Encoding is CPU-bound: run it on rayon's pool, off the async runtime.
        let run = move || {
            fetched
                .into_par_iter()
                .map(|(meta, bytes)| {
                    let r = bytes
                        .and_then(|b| encoder.encode_image(&b, &limits).map_err(|e| e.to_string()));
                    if let Some(p) = &progress {
                        p(1);
                    }
                    (meta, r)
                })
                .collect::<Vec<_>>()
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|e| IndexError::Internal(e.to_string()))
    }

    fn record(&self, meta: ObjectMeta) -> ItemRecord {
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
        }
    }
}
