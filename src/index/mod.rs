//! The index snapshot: `manifest.json` plus immutable single-file LMDB segments under `segments/`.
//!
//! - [`manifest`]: the format of the one mutable object, changed only by compare-and-swap.
//! - [`segment`]: writing and reading one segment (vectors + dictionaries in one LMDB file).
//! - [`vectors`]: a segment's vectors (compact codes, arroy trees) and the search over them.
//! - [`ivf`]: inverted lists (k-means clusters) of big segments.
//! - [`quant`]: the 8-bit and thermometer codes of format 2.
//! - [`segment_error`]: why a segment cannot be written or read.
//! - [`cache`]: verified local copies of segments.
//! - [`snapshot`]: a consistent read view and the merged multi-segment search.
//! - [`filter`]: metadata filters, their JSON and compact forms, per-field bitmaps.
//! - [`writer`]: appending segments, deleting keys, compaction and garbage collection.
//! - [`maintain`]: compaction rounds and garbage collection as one unattended run.
//! - [`sequencer`]: S3's order of the changes of one key.
//! - [`lease`]: leases that keep a long writer's uploaded segments from `gc` until it commits.
//! - [`clock`]: the milliseconds of segment names, retirements, leases and commits.

pub mod cache;
pub mod clock;
pub mod filter;
pub mod ivf;
pub mod lease;
pub mod maintain;
pub mod manifest;
pub mod quant;
pub mod segment;
pub mod segment_error;
pub mod sequencer;
pub mod snapshot;
pub mod vectors;
pub mod writer;

use std::path::Path;
use std::sync::{Arc, RwLock};

pub use cache::{SegmentCache, SyncReport};
pub use filter::{Filter, FilterError};
pub use manifest::{Manifest, ManifestError, SegmentEntry, MANIFEST_KEY};
pub use segment::{ItemRecord, Segment, SegmentError};
pub use snapshot::{Hit, Page, Scope, Snapshot};

use crate::model::ModelRef;
use crate::store::{DynStore, GetResult, StoreError};
use crate::task::{self, TaskError};

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest cannot be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A segment cannot be written or read.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// The index was built with another model than the encoder's.
    #[error(
        "the index was built with model {index} ({index_dims}-d) but the encoder is {model} ({model_dims}-d); \
         use the index's model or rebuild the index with `lookalike reindex`"
    )]
    ModelMismatch {
        /// The index's model id.
        index: String,
        /// The index's dimensions.
        index_dims: usize,
        /// The encoder's model id.
        model: String,
        /// The encoder's dimensions.
        model_dims: usize,
    },
    /// A query vector of the wrong size.
    #[error("query vector has {got} dimensions, the index has {want}")]
    Dims {
        /// The vector's dimensions.
        got: usize,
        /// The index's.
        want: usize,
    },
    /// A downloaded segment does not match the manifest (after retries).
    #[error("segment {0} is corrupt: {1}")]
    Corrupt(String, String),
    /// A local file operation failed.
    #[error("I/O error on {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The cache's disk (or its configured budget) cannot hold the segments a sync needs.
    #[error(
        "not enough space for the index's new segments in {dir}: {needed} bytes needed, {free} free{budget}; \
         the last snapshot keeps answering (give the function more ephemeral storage: an index \
         needs room for itself twice while a compaction's output replaces its inputs)"
    )]
    NoSpace {
        /// The cache folder.
        dir: String,
        /// Bytes the sync would download.
        needed: u64,
        /// Bytes free on its disk (or left in its budget).
        free: u64,
        /// `" (budget N bytes)"` when a budget, not the disk, is the limit.
        budget: String,
    },
    /// Too many concurrent commits won the compare-and-swap first.
    #[error("gave up committing the manifest after {0} conflicting attempts")]
    Contention(usize),
    /// A background task (segment build, snapshot open) did not return.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// An index: its store, a local segment cache and the latest snapshot loaded from them.
pub struct Index {
    store: DynStore,
    cache: SegmentCache,
    current: RwLock<Arc<Snapshot>>,
    /// One refresh at a time: a sync deletes files that its manifest does not list, which must
    /// not race with another sync of a newer manifest.
    refreshing: tokio::sync::Mutex<()>,
    model: Option<ModelRef>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("store", &self.store.location())
            .finish()
    }
}

impl Index {
    /// Open the index in `store`, caching segments under `cache_dir`, and load the latest snapshot.
    /// With `model`, an index built with another model is refused.
    pub async fn open(
        store: DynStore,
        cache_dir: &Path,
        model: Option<ModelRef>,
    ) -> Result<Self, IndexError> {
        Self::open_in(store, SegmentCache::new(cache_dir)?, model).await
    }

    /// [`Index::open`] with a cache made by the caller (e.g. with a budget).
    pub async fn open_in(
        store: DynStore,
        cache: SegmentCache,
        model: Option<ModelRef>,
    ) -> Result<Self, IndexError> {
        let empty = Arc::new(Snapshot::empty(Manifest::new(model.clone().unwrap_or(
            ModelRef {
                id: String::new(),
                dims: 0,
            },
        ))));
        let index = Index {
            store,
            cache,
            current: RwLock::new(empty),
            refreshing: Default::default(),
            model,
        };
        index.refresh().await?;
        Ok(index)
    }

    /// The store the index lives in.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The local segment cache.
    pub fn cache(&self) -> &SegmentCache {
        &self.cache
    }

    /// The model the index was opened with (checked against every manifest).
    pub fn model(&self) -> Option<&ModelRef> {
        self.model.as_ref()
    }

    /// The snapshot loaded last (cheap; no I/O).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Check the manifest (conditional GET on its ETag); on change, sync new segments and swap in
    /// a new snapshot. Returns the snapshot now current.
    pub async fn refresh(&self) -> Result<Arc<Snapshot>, IndexError> {
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.snapshot();
        let got = self.store.get(MANIFEST_KEY, current.etag.as_deref()).await;
        let object = match got {
            Ok(GetResult::NotModified) => return Ok(current),
            Ok(GetResult::Found(o)) => o,
            Err(StoreError::NotFound(_)) => return Ok(current),
            Err(e) => return Err(e.into()),
        };
        let manifest = Manifest::from_bytes(&object.bytes)?;
        self.check_model(&manifest)?;
        let report = self.cache.sync(self.store.as_ref(), &manifest).await?;
        if !report.downloaded.is_empty() {
            tracing::info!(
                segments = report.downloaded.len(),
                bytes = report.downloaded_bytes,
                version = manifest.version,
                "synced new segments"
            );
        }
        let cache = self.cache.clone();
        let etag = object.meta.etag.clone();
        let previous = current.clone();
        let snapshot = task::blocking(move || -> Result<Snapshot, IndexError> {
            let opened = manifest
                .segments
                .iter()
                .map(|s| Segment::open(&cache.path_of(&s.name)))
                .collect::<Result<Vec<_>, _>>()?;
            Snapshot::next(&previous, manifest, Some(etag), opened)
        })
        .await??;
        let snapshot = Arc::new(snapshot);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snapshot.clone();
        Ok(snapshot)
    }

    fn check_model(&self, manifest: &Manifest) -> Result<(), IndexError> {
        match &self.model {
            Some(m) if m != &manifest.model => Err(IndexError::ModelMismatch {
                index: manifest.model.id.clone(),
                index_dims: manifest.model.dims,
                model: m.id.clone(),
                model_dims: m.dims,
            }),
            _ => Ok(()),
        }
    }
}
