//! What the pipeline is doing, read cheaply: the manifest (no segment is downloaded), the
//! rejection records and, when given, the queues' counts. `lookalike status` prints it.

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::index::manifest::{Manifest, MANIFEST_KEY};
use crate::index::writer::now_ms;
use crate::index::IndexError;
use crate::ingest::{RejectedRecord, REJECTED_PREFIX};
use crate::queue::{Queue, QueueCounts, QueueError};
use crate::store::{get_object, DynStore, StoreError};

/// Rejection records read to find the latest ones (all of them when there are fewer).
pub const REJECTIONS_READ: usize = 100;

/// The index as its manifest describes it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IndexStatus {
    /// The index location.
    pub index: String,
    /// Whether a manifest exists (nothing has been committed yet when not).
    pub exists: bool,
    /// The manifest version.
    pub version: u64,
    /// The model id.
    pub model: String,
    /// Segments.
    pub segments: usize,
    /// Items stored in the segments, counting those that deletions and overwrites hide until a
    /// compaction removes them (the exact live count needs the segments: `lookalike stats`).
    pub items_stored: u64,
    /// Keys recorded as deleted.
    pub deleted_keys: usize,
    /// Bytes of all segments.
    pub bytes: u64,
    /// Seconds since the last commit (when the manifest records it).
    pub last_commit_age_secs: Option<f64>,
    /// Rejected objects: how many records there are.
    pub rejected: usize,
    /// The latest rejections (of the [`REJECTIONS_READ`] records read), newest first.
    pub latest_rejections: Vec<RejectedRecord>,
}

/// The status of the index in `store` (its manifest and rejection records).
pub async fn index_status(store: &DynStore, latest: usize) -> Result<IndexStatus, IndexError> {
    let manifest = match get_object(store.as_ref(), MANIFEST_KEY).await {
        Ok(o) => Some(Manifest::from_bytes(&o.bytes)?),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let rejected = store.list(REJECTED_PREFIX).await?;
    let read: Vec<Result<Option<RejectedRecord>, StoreError>> =
        stream::iter(rejected.iter().take(REJECTIONS_READ))
            .map(|obj| async move {
                match get_object(store.as_ref(), &obj.key).await {
                    Ok(o) => Ok(serde_json::from_slice::<RejectedRecord>(&o.bytes).ok()),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
    let mut records = Vec::new();
    for r in read {
        records.extend(r?);
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.rejected_at_ms));
    records.truncate(latest);
    let mut status = IndexStatus {
        index: store.location(),
        rejected: rejected.len(),
        latest_rejections: records,
        ..IndexStatus::default()
    };
    let Some(m) = manifest else {
        return Ok(status);
    };
    let now = now_ms();
    status.exists = true;
    status.version = m.version;
    status.model = m.model.id.clone();
    status.segments = m.segments.len();
    status.items_stored = m
        .segments
        .iter()
        .map(|s| s.items.saturating_sub(s.hidden.len() as u64))
        .sum();
    status.deleted_keys = m.deleted.len();
    status.bytes = m.total_bytes();
    status.last_commit_age_secs = m.committed_ms.map(|t| now.saturating_sub(t) as f64 / 1e3);
    Ok(status)
}

/// A queue and its counts.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// The queue's URL.
    pub url: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: QueueCounts,
}

/// The counts of `queue`.
pub async fn queue_status(queue: &Queue) -> Result<QueueStatus, QueueError> {
    Ok(QueueStatus {
        url: queue.url().to_string(),
        counts: queue.counts().await?,
    })
}
