//! Reindexing: rebuild an index with another model, atomically.
//!
//! Every live item is fetched again from where it was indexed from (`record.source`, or a
//! replacement for a folder that moved), encoded with the new encoder on all cores and written
//! into new segments. Then the manifest is replaced, in one compare-and-swap conditional on the
//! ETag of the manifest whose items were encoded, by one that names the new model and lists only
//! the new segments. Readers see the old index or the new one, never a mix.
//!
//! Other writers keep writing meanwhile. When the swap loses (an ingest, a delete or a compaction
//! committed), the manifest is read again and only what changed is redone: items whose
//! `(key, etag)` has not been encoded yet are encoded, items no longer live are left out, segments
//! whose items are all still live are kept and the others are rebuilt. A manifest that names
//! another model by then (someone else reindexed) stops the run. Nothing is lost: the swap only
//! succeeds against the manifest whose live items the new segments hold, exactly.
//!
//! An image whose object is gone from its source is dropped (it was deleted; its delete
//! notification would remove it anyway) and reported. Any other failure to fetch an image, or an
//! image the new model cannot encode, stops the run before the swap: the index is unchanged.
//!
//! The old segments stay in the store, so readers of the old manifest keep working; `lookalike gc`
//! removes them later, together with segments uploaded by a run that did not commit.
//!
//! A run is one call ([`Reindexer::run`]) or, to control what happens between the steps (tests,
//! progress display), [`Reindexer::start`] and then [`ReindexJob::encode`],
//! [`ReindexJob::commit`] and, after a lost swap, [`ReindexJob::reread`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::index::lease::{Lease, LEASE_TTL};
use crate::index::manifest::{segment_key, Manifest};
use crate::index::segment::{BuildParams, ItemRecord};
use crate::index::writer::{self, BuiltSegment};
use crate::index::{Index, IndexError, Snapshot};
use crate::ingest::Progress;
use crate::model::encoder::Encoder;
use crate::model::ModelRef;
use crate::preprocess::Limits;
use crate::store::DynStore;
use crate::task;

mod encode;
mod error;
mod sources;

pub use error::ReindexError;
use sources::Sources;

/// Items per new segment (the default batch of `lookalike index`).
pub const SEGMENT_ITEMS: usize = 5000;
/// Swap attempts before giving up when the index keeps changing.
pub const MAX_ATTEMPTS: usize = 16;

/// What a reindex did.
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    /// `false` when the index already used the new model: nothing was done.
    pub swapped: bool,
    /// The model the index had.
    pub old_model: ModelRef,
    /// The model it has now.
    pub new_model: ModelRef,
    /// The manifest version now (after a swap: the old version + 1).
    pub version: u64,
    /// Items the index holds now.
    pub items: usize,
    /// Images fetched and encoded with the new model, over all attempts.
    pub encoded: usize,
    /// Keys left out because their object is gone from the source (sorted).
    pub dropped: Vec<String>,
    /// Keys whose object changed since it was indexed (another ETag): they were encoded as the
    /// object is now and keep their record; the change's own ingest refreshes it (sorted).
    pub modified: Vec<String>,
    /// Compare-and-swap attempts (1 = no concurrent change; 0 = nothing to do).
    pub attempts: usize,
    /// Segments of the index now.
    pub segments: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Everything a reindex needs.
#[derive(Clone)]
pub struct Reindexer {
    /// The index, opened without a model check (`Index::open(.., None)`) or with its old model.
    pub index: Arc<Index>,
    /// The new model.
    pub encoder: Arc<Encoder>,
    /// Where all images are now, replacing the source recorded with each item (a folder that
    /// moved). The new records name it as their source.
    pub source: Option<DynStore>,
    /// Limits on the images.
    pub limits: Limits,
    /// Segment build parameters.
    pub build: BuildParams,
    /// Items per new segment.
    pub segment_items: usize,
    /// Swap attempts before [`ReindexError::Contention`].
    pub max_attempts: usize,
}

/// The outcome of [`Reindexer::start`].
pub enum Start<'a> {
    /// The index already uses the new model: nothing to do.
    UpToDate(ReindexReport),
    /// The manifest has been read; encode its items, then commit.
    Ready(ReindexJob<'a>),
}

impl Reindexer {
    /// A reindexer with the defaults: images from their recorded sources, default limits and
    /// build parameters, [`SEGMENT_ITEMS`] per segment, [`MAX_ATTEMPTS`] attempts.
    pub fn new(index: Arc<Index>, encoder: Arc<Encoder>) -> Self {
        Reindexer {
            index,
            encoder,
            source: None,
            limits: Limits::default(),
            build: BuildParams::default(),
            segment_items: SEGMENT_ITEMS,
            max_attempts: MAX_ATTEMPTS,
        }
    }

    /// Reindex: read the manifest, encode every live item, swap; after a lost swap, redo what
    /// changed and try again. `progress` is called with the number of images just processed.
    pub async fn run(&self, progress: Option<Progress>) -> Result<ReindexReport, ReindexError> {
        match self.start().await? {
            Start::UpToDate(report) => Ok(report),
            Start::Ready(job) => job.finish(progress).await,
        }
    }

    /// Read the manifest and the records of its live items.
    pub async fn start(&self) -> Result<Start<'_>, ReindexError> {
        let started = Instant::now();
        let snapshot = self.index.refresh().await?;
        if snapshot.etag.is_none() {
            return Err(ReindexError::EmptyIndex(self.index.store().location()));
        }
        let old_model = snapshot.manifest.model.clone();
        let new_model = self.encoder.model_ref();
        if old_model == new_model {
            return Ok(Start::UpToDate(ReindexReport {
                swapped: false,
                old_model,
                new_model,
                version: snapshot.version(),
                items: snapshot.live_items() as usize,
                encoded: 0,
                dropped: Vec::new(),
                modified: Vec::new(),
                attempts: 0,
                segments: snapshot
                    .manifest
                    .segments
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
                seconds: started.elapsed().as_secs_f64(),
            }));
        }
        let live = live_records(&snapshot).await?;
        Ok(Start::Ready(ReindexJob {
            r: self,
            started,
            old_model,
            new_model,
            snapshot,
            live,
            sources: Sources::new(self.source.clone()),
            vectors: HashMap::new(),
            missing: HashSet::new(),
            modified: BTreeSet::new(),
            built: Vec::new(),
            lease: None,
            attempts: 0,
            encoded: 0,
        }))
    }
}

/// `(key, etag)`: one version of one image.
type Version = (String, String);

fn version_of(r: &ItemRecord) -> Version {
    (r.key.clone(), r.etag.clone())
}

/// A segment uploaded by this run, not listed by any manifest yet.
struct Built {
    segment: BuiltSegment,
    items: Vec<Version>,
}

/// A reindex in progress: the manifest read last, what has been encoded and built so far.
pub struct ReindexJob<'a> {
    r: &'a Reindexer,
    started: Instant,
    old_model: ModelRef,
    new_model: ModelRef,
    /// The manifest whose live items are being encoded (its ETag is the swap's condition).
    snapshot: Arc<Snapshot>,
    live: Vec<ItemRecord>,
    /// Where the images are read from.
    sources: Sources,
    vectors: HashMap<Version, Vec<f32>>,
    /// Versions whose object is gone from the source.
    missing: HashSet<Version>,
    modified: BTreeSet<String>,
    built: Vec<Built>,
    /// Holds `built` against `gc` until the commit (taken with the first upload).
    lease: Option<Box<Lease>>,
    attempts: usize,
    encoded: usize,
}

impl ReindexJob<'_> {
    /// The model the index has (the run's starting point).
    pub fn old_model(&self) -> &ModelRef {
        &self.old_model
    }

    /// The model the run reindexes with.
    pub fn new_model(&self) -> &ModelRef {
        &self.new_model
    }

    /// Version of the manifest read last (the one the next commit is conditional on).
    pub fn manifest_version(&self) -> u64 {
        self.snapshot.version()
    }

    /// Live items of that manifest.
    pub fn live_items(&self) -> usize {
        self.live.len()
    }

    /// Live items not fetched and encoded yet.
    pub fn pending(&self) -> usize {
        self.live.iter().filter(|r| !self.is_done(r)).count()
    }

    /// Swap attempts so far.
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Segments built and uploaded so far that the next commit would list.
    pub fn segments(&self) -> Vec<String> {
        self.built
            .iter()
            .map(|b| b.segment.entry.name.clone())
            .collect()
    }

    fn is_done(&self, r: &ItemRecord) -> bool {
        let v = version_of(r);
        self.vectors.contains_key(&v) || self.missing.contains(&v)
    }

    /// Build the segments that are missing and swap the manifest, conditional on the ETag of the
    /// manifest read last. `Ok(None)`: another writer committed first; nothing was swapped, and
    /// [`ReindexJob::reread`] then the next commit redo what changed. Encodes what is still
    /// pending first (without progress).
    pub async fn commit(&mut self) -> Result<Option<ReindexReport>, ReindexError> {
        if self.pending() > 0 {
            self.encode(None).await?;
        }
        let missing = &self.missing;
        self.sources
            .check(&self.live, |r| missing.contains(&version_of(r)))?;
        // The items of the new index: the live ones whose object is still there.
        let present: BTreeMap<&str, &ItemRecord> = self
            .live
            .iter()
            .filter(|r| !self.missing.contains(&version_of(r)))
            .map(|r| (r.key.as_str(), r))
            .collect();
        // A segment of an earlier attempt that is gone (its lease lapsed, say while the network
        // was down, and gc took it) is rebuilt.
        let mut kept = Vec::with_capacity(self.built.len());
        for b in std::mem::take(&mut self.built) {
            let key = segment_key(&b.segment.entry.name);
            if self
                .r
                .index
                .store()
                .head(&key)
                .await
                .map_err(IndexError::from)?
                .is_some()
            {
                kept.push(b);
            } else {
                tracing::warn!(segment = %b.segment.entry.name, "an uploaded segment is gone; building it again");
            }
        }
        self.built = kept;
        // Keep the segments whose items are all still live, as they were; rebuild the others.
        self.built.retain(|b| {
            b.items
                .iter()
                .all(|(k, e)| present.get(k.as_str()).is_some_and(|r| &r.etag == e))
        });
        let covered: HashSet<&str> = self
            .built
            .iter()
            .flat_map(|b| b.items.iter().map(|(k, _)| k.as_str()))
            .collect();
        let rest: Vec<&ItemRecord> = present
            .values()
            .filter(|r| !covered.contains(r.key.as_str()))
            .copied()
            .collect();
        let new_source = self.sources.replacement();
        let mut new_built = Vec::new();
        if !rest.is_empty() && self.lease.is_none() {
            self.lease = Some(Box::new(
                Lease::take(self.r.index.store().clone(), "lookalike reindex", LEASE_TTL).await?,
            ));
        }
        for group in rest.chunks(self.r.segment_items.max(1)) {
            let mut items = Vec::with_capacity(group.len());
            for r in group {
                let vector = self.vectors.get(&version_of(r)).cloned().ok_or_else(|| {
                    ReindexError::Internal(format!("{} has not been encoded", r.key))
                })?;
                let mut record = (*r).clone();
                if let Some(s) = &new_source {
                    record.source = s.clone();
                }
                items.push((record, vector));
            }
            let segment =
                writer::build_and_upload(&self.r.index, &self.new_model, items, 0, self.r.build)
                    .await?;
            if let Some(lease) = &self.lease {
                lease.hold([segment.entry.name.clone()]).await?;
            }
            new_built.push(Built {
                segment,
                items: group.iter().map(|r| version_of(r)).collect(),
            });
        }
        let dropped: Vec<String> = self
            .live
            .iter()
            .filter(|r| !present.contains_key(r.key.as_str()))
            .map(|r| r.key.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let items = present.len();
        let modified: Vec<String> = self
            .modified
            .iter()
            .filter(|k| present.contains_key(k.as_str()))
            .cloned()
            .collect();
        self.built.extend(new_built);

        let manifest = Manifest::successor(
            &self.snapshot.manifest,
            self.new_model.clone(),
            self.built.iter().map(|b| b.segment.entry.clone()),
            writer::now_ms(),
        );
        let etag = self
            .snapshot
            .etag
            .clone()
            .ok_or_else(|| ReindexError::Internal("the manifest read has no ETag".into()))?;
        self.attempts += 1;
        if !writer::swap_manifest(self.r.index.store().as_ref(), &etag, &manifest).await? {
            tracing::info!(
                attempt = self.attempts,
                "the index changed while it was being reindexed"
            );
            return Ok(None);
        }

        // Committed. The rest only saves downloads: failures are logged, not returned.
        if let Some(lease) = self.lease.take() {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "cannot release the segment lease (it expires by itself)");
            }
        }
        for b in std::mem::take(&mut self.built) {
            if let Err(e) = b.segment.install(&self.r.index) {
                tracing::warn!(error = %e, "cannot move a new segment into the cache");
            }
        }
        if self.r.index.model().is_none_or(|m| m == &self.new_model) {
            if let Err(e) = self.r.index.refresh().await {
                tracing::warn!(error = %e, "cannot load the new snapshot");
            }
        }
        Ok(Some(ReindexReport {
            swapped: true,
            old_model: self.old_model.clone(),
            new_model: self.new_model.clone(),
            version: manifest.version,
            items,
            encoded: self.encoded,
            dropped,
            modified,
            attempts: self.attempts,
            segments: manifest.segments.iter().map(|s| s.name.clone()).collect(),
            seconds: self.started.elapsed().as_secs_f64(),
        }))
    }

    /// After a lost swap: read the manifest again. Stops if it names another model; otherwise
    /// forgets what is no longer live, so that the next commit holds exactly its live items.
    pub async fn reread(&mut self) -> Result<(), ReindexError> {
        let snapshot = match self.r.index.refresh().await {
            Ok(s) => s,
            Err(IndexError::ModelMismatch {
                index, index_dims, ..
            }) => {
                return Err(ReindexError::ModelChanged {
                    expected: self.old_model.id.clone(),
                    found: index,
                    found_dims: index_dims,
                })
            }
            Err(e) => return Err(e.into()),
        };
        if snapshot.manifest.model != self.old_model {
            return Err(ReindexError::ModelChanged {
                expected: self.old_model.id.clone(),
                found: snapshot.manifest.model.id.clone(),
                found_dims: snapshot.manifest.model.dims,
            });
        }
        if snapshot.etag == self.snapshot.etag {
            return Err(ReindexError::ManifestGone(self.r.index.store().location()));
        }
        self.live = live_records(&snapshot).await?;
        self.snapshot = snapshot;
        let live: HashSet<Version> = self.live.iter().map(version_of).collect();
        self.vectors.retain(|v, _| live.contains(v));
        self.missing.retain(|v| live.contains(v));
        let keys: HashSet<&str> = self.live.iter().map(|r| r.key.as_str()).collect();
        self.modified.retain(|k| keys.contains(k.as_str()));
        Ok(())
    }

    /// Encode, commit, and after every lost swap re-read, wait a little and try again, at most
    /// [`Reindexer::max_attempts`] times.
    pub async fn finish(
        mut self,
        progress: Option<Progress>,
    ) -> Result<ReindexReport, ReindexError> {
        loop {
            self.encode(progress.clone()).await?;
            if let Some(report) = self.commit().await? {
                return Ok(report);
            }
            if self.attempts >= self.r.max_attempts.max(1) {
                return Err(ReindexError::Contention(self.attempts));
            }
            writer::backoff(self.attempts).await;
            self.reread().await?;
        }
    }
}

/// The live records of a snapshot (LMDB reads: off the async runtime).
async fn live_records(snapshot: &Arc<Snapshot>) -> Result<Vec<ItemRecord>, ReindexError> {
    let snap = snapshot.clone();
    Ok(task::blocking(move || snap.live_records()).await??)
}
