//! One invocation: notices grouped by bucket, each group one core ingest (one segment, one
//! manifest commit), and the answer the trigger needs to retry exactly what did not commit.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use lookalike::index::segment::BuildParams;
use lookalike::index::writer::Deletion;
use lookalike::index::{Index, IndexError};
use lookalike::ingest::{IngestReport, Ingester, Outcome};
use lookalike::model::encoder::Encoder;
use lookalike::preprocess::Limits;
use lookalike::store::{DynStore, ObjectMeta, S3Store};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::events::{self, Batch, Change, Delivery, EventError, Notice};

/// The function's state, created once per container.
pub struct IngestFunction {
    index_store: DynStore,
    cache_dir: PathBuf,
    encoder: Arc<Encoder>,
    /// Client for the image buckets named in the events.
    s3: aws_sdk_s3::Client,
    limits: Limits,
    build: BuildParams,
    /// Opened on first use, so that a store outage fails invocations (which are retried), not
    /// the container's init.
    index: OnceCell<Arc<Index>>,
    /// The index's bucket and key prefix (`"prefix/"`, or `""` for the whole bucket) when it is
    /// in S3: events for keys under it are the function's own writes.
    own_prefix: Option<(String, String)>,
}

/// Milliseconds per stage, summed over the invocation's commits.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct StageMs {
    /// Fetching the objects (concurrently).
    pub fetch: f64,
    /// Decoding, preprocessing and encoding (on all cores).
    pub encode: f64,
    /// Building and uploading the segment.
    pub segment_write: f64,
    /// The manifest compare-and-swap.
    pub manifest_commit: f64,
}

/// Counts of one invocation, logged and returned for direct invocations.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub indexed: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub deleted: usize,
    pub skipped: usize,
    pub failed: usize,
    pub ignored: usize,
    /// Manifest versions committed by this invocation.
    pub versions: Vec<u64>,
    pub times_ms: StageMs,
}

/// What an invocation produced.
#[derive(Debug, Clone)]
pub struct Handled {
    pub summary: Summary,
    /// SQS message ids to retry.
    pub failed_messages: Vec<String>,
    /// Why a direct invocation failed (the Lambda then reports an error and is retried).
    pub error: Option<InvocationError>,
    pub delivery: Delivery,
}

/// Why an invocation failed as a whole (a direct invocation reports it to Lambda, which retries).
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvocationError {
    /// The payload is not an event this function handles.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The ingest of one bucket's objects did not commit.
    #[error("ingest of s3://{bucket} failed: {source}")]
    Ingest {
        /// The images' bucket.
        bucket: String,
        /// Why it failed.
        #[source]
        source: Arc<IndexError>,
    },
    /// Some objects could not be fetched (the others were committed).
    #[error("{0} objects could not be fetched; retry")]
    Unfetched(usize),
}

/// Two invocation errors are equal when they say the same (the index's errors are not
/// comparable otherwise).
impl PartialEq for InvocationError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

/// Why [`Handled::response`] has no response for the runtime.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The invocation failed (a direct invocation: Lambda retries it).
    #[error(transparent)]
    Invocation(#[from] InvocationError),
    /// The response cannot be serialised.
    #[error("cannot serialise the response: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Handled {
    /// The invocation's response: the SQS partial batch response, or a summary.
    pub fn response(&self) -> Result<Value, ResponseError> {
        match self.delivery {
            Delivery::Sqs => {
                let mut r = SqsBatchResponse::default();
                for id in &self.failed_messages {
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = id.clone();
                    r.batch_item_failures.push(f);
                }
                Ok(serde_json::to_value(r)?)
            }
            Delivery::Direct => match &self.error {
                Some(e) => Err(e.clone().into()),
                None => Ok(serde_json::to_value(&self.summary)?),
            },
        }
    }
}

impl IngestFunction {
    pub fn new(
        index_store: DynStore,
        cache_dir: impl Into<PathBuf>,
        encoder: Arc<Encoder>,
        s3: aws_sdk_s3::Client,
        limits: Limits,
    ) -> Self {
        let own_prefix = index_store.location().strip_prefix("s3://").map(|rest| {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            };
            (bucket.to_string(), prefix)
        });
        IngestFunction {
            own_prefix,
            index_store,
            cache_dir: cache_dir.into(),
            encoder,
            s3,
            limits,
            build: BuildParams::default(),
            index: OnceCell::new(),
        }
    }

    /// The index, opened (and its segments synced) on first use.
    pub async fn index(&self) -> Result<&Arc<Index>, IndexError> {
        self.index
            .get_or_try_init(|| async {
                let model = Some(self.encoder.model_ref());
                let index = Index::open(self.index_store.clone(), &self.cache_dir, model).await?;
                Ok(Arc::new(index))
            })
            .await
    }

    /// Whether `bucket`/`key` is one of the index's own objects (an event for it means the
    /// notification is configured too broadly; following it would loop).
    fn is_own_object(&self, bucket: &str, key: &str) -> bool {
        self.own_prefix
            .as_ref()
            .is_some_and(|(b, prefix)| b == bucket && key.starts_with(prefix.as_str()))
    }

    /// Handle one invocation's payload.
    pub async fn handle(&self, event: &Value) -> Handled {
        let start = Instant::now();
        let batch = match events::parse(event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot handle this event");
                return Handled {
                    summary: Summary::default(),
                    failed_messages: Vec::new(),
                    error: Some(e.into()),
                    delivery: Delivery::Direct,
                };
            }
        };
        let handled = self.handle_batch(batch).await;
        tracing::info!(
            summary = ?handled.summary,
            failed_messages = handled.failed_messages.len(),
            ms = start.elapsed().as_secs_f64() * 1e3,
            "ingest invocation"
        );
        handled
    }

    async fn handle_batch(&self, batch: Batch) -> Handled {
        let mut summary = Summary {
            ignored: batch.ignored,
            ..Summary::default()
        };
        let mut failed_messages: HashSet<String> =
            batch.unreadable.iter().map(|(id, _)| id.clone()).collect();
        let mut error = None;

        // Per bucket: the latest change per key. With sequencers on all of a key's notices the
        // greatest decides; otherwise any creation wins (the object is fetched, and if it is
        // gone by then the key is deleted). Removals are checked against the bucket.
        let mut buckets: BTreeMap<String, BTreeMap<String, Vec<&Notice>>> = BTreeMap::new();
        for n in &batch.notices {
            if self.is_own_object(&n.bucket, &n.key) {
                tracing::warn!(bucket = %n.bucket, key = %n.key, "ignoring an event for the index's own prefix; exclude it from the notification");
                summary.ignored += 1;
                continue;
            }
            if n.key.ends_with('/') {
                summary.ignored += 1; // a "folder" marker
                continue;
            }
            buckets
                .entry(n.bucket.clone())
                .or_default()
                .entry(n.key.clone())
                .or_default()
                .push(n);
        }

        for (bucket, keys) in &buckets {
            let mut objects = Vec::new();
            let mut deleted = Vec::new();
            for (key, notices) in keys {
                match latest_change(notices) {
                    (Change::Created { size, etag }, sequencer) => objects.push((
                        ObjectMeta {
                            key: key.clone(),
                            size,
                            etag,
                            metadata: Default::default(),
                        },
                        sequencer,
                    )),
                    (Change::Removed, sequencer) => deleted.push(Deletion {
                        key: key.clone(),
                        sequencer,
                    }),
                }
            }
            let messages_of = |key: &str| -> Vec<String> {
                keys.get(key)
                    .map(|ns| ns.iter().filter_map(|n| n.message_id.clone()).collect())
                    .unwrap_or_default()
            };
            match self.ingest_bucket(bucket, objects, deleted).await {
                Ok(report) => {
                    add_report(&mut summary, &report);
                    for item in report.failed() {
                        failed_messages.extend(messages_of(&item.key));
                    }
                }
                Err(e) => {
                    tracing::error!(%bucket, error = %e, "ingest failed; the batch will be retried");
                    summary.failed += keys.len();
                    for key in keys.keys() {
                        failed_messages.extend(messages_of(key));
                    }
                    error = Some(InvocationError::Ingest {
                        bucket: bucket.clone(),
                        source: Arc::new(e),
                    });
                }
            }
        }
        if batch.delivery == Delivery::Direct && error.is_none() && summary.failed > 0 {
            error = Some(InvocationError::Unfetched(summary.failed));
        }
        let mut failed_messages: Vec<String> = failed_messages.into_iter().collect();
        failed_messages.sort();
        Handled {
            summary,
            failed_messages,
            error,
            delivery: batch.delivery,
        }
    }

    async fn ingest_bucket(
        &self,
        bucket: &str,
        objects: Vec<(ObjectMeta, Option<String>)>,
        deleted: Vec<Deletion>,
    ) -> Result<IngestReport, IndexError> {
        let index = self.index().await?.clone();
        let ingester = Ingester {
            index,
            encoder: self.encoder.clone(),
            source: Arc::new(S3Store::new(self.s3.clone(), bucket, "")),
            limits: self.limits,
            metadata: None,
            build: self.build,
        };
        let report = ingester.ingest_changes(objects, deleted, None).await?;
        tracing::info!(%bucket, version = ?report.version, segment = ?report.segment, "committed");
        Ok(report)
    }
}

/// The change that decides a key of a batch, with the sequencer it is ordered by (see the
/// comment in `handle_batch`).
fn latest_change(notices: &[&Notice]) -> (Change, Option<String>) {
    if notices.iter().all(|n| n.sequencer.is_some()) {
        let latest = notices
            .iter()
            .max_by(|a, b| {
                let (a, b) = (a.sequencer.as_deref(), b.sequencer.as_deref());
                lookalike::index::sequencer::compare(a.unwrap_or(""), b.unwrap_or(""))
            })
            .expect("a key has at least one notice");
        return (latest.change.clone(), latest.sequencer.clone());
    }
    let created = notices.iter().rev().find_map(|n| match &n.change {
        c @ Change::Created { .. } => Some(c.clone()),
        Change::Removed => None,
    });
    (created.unwrap_or(Change::Removed), None)
}

fn add_report(summary: &mut Summary, report: &IngestReport) {
    for item in &report.items {
        *match item.outcome {
            Outcome::Indexed => &mut summary.indexed,
            Outcome::Duplicate => &mut summary.duplicates,
            Outcome::Rejected { .. } => &mut summary.rejected,
            Outcome::Deleted => &mut summary.deleted,
            Outcome::Skipped { .. } => &mut summary.skipped,
            Outcome::Failed { .. } => &mut summary.failed,
        } += 1;
    }
    summary.versions.extend(report.version);
    let t = &report.times;
    summary.times_ms.fetch += t.fetch.as_secs_f64() * 1e3;
    summary.times_ms.encode += t.encode.as_secs_f64() * 1e3;
    summary.times_ms.segment_write += t.segment_write.as_secs_f64() * 1e3;
    summary.times_ms.manifest_commit += t.manifest_commit.as_secs_f64() * 1e3;
}
