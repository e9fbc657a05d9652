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
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::index::manifest::Manifest;
use crate::index::segment::{BuildParams, ItemRecord};
use crate::index::writer::{self, BuiltSegment};
use crate::index::{Index, IndexError, Snapshot};
use crate::ingest::Progress;
use crate::model::encoder::Encoder;
use crate::model::ModelRef;
use crate::preprocess::Limits;
use crate::store::{
    self, get_object, DynStore, ObjectStore, S3Store, StoreError, FETCH_CONCURRENCY,
};

/// Items per new segment (the default batch of `lookalike index`).
pub const SEGMENT_ITEMS: usize = 5000;
/// Swap attempts before giving up when the index keeps changing.
pub const MAX_ATTEMPTS: usize = 16;
/// Images fetched and encoded together; bounds the memory held by raw image bytes. The next
/// chunk is fetched while one is encoded.
const ENCODE_CHUNK: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("index {0} is empty (it has no manifest yet): nothing to reindex; index the images with the new model instead")]
    EmptyIndex(String),
    #[error(
        "{location}, where {items} indexed images come from, is not a folder (moved?); \
         give its new location with --source; the index is unchanged"
    )]
    SourceMissing { location: String, items: usize },
    #[error("cannot open {location}, where {items} indexed images come from: {error}; the index is unchanged")]
    OpenSource {
        location: String,
        items: usize,
        error: String,
    },
    #[error(
        "none of the {items} images indexed from {location} is there any more: wrong or moved \
         source? (give the right one with --source; if they were really deleted, remove them with \
         `lookalike delete` first); the index is unchanged"
    )]
    SourceEmpty { location: String, items: usize },
    #[error("cannot fetch {key} from {location}: {error}; the index is unchanged")]
    Fetch {
        key: String,
        location: String,
        error: String,
    },
    #[error("model {model} cannot encode {key}: {error}; the index is unchanged")]
    Encode {
        key: String,
        model: String,
        error: String,
    },
    #[error(
        "someone else changed the index to model {found} ({found_dims}-d) while it was being \
         reindexed from {expected}; this run is abandoned (its model is not the one in the index)"
    )]
    ModelChanged {
        expected: String,
        found: String,
        found_dims: usize,
    },
    #[error(
        "gave up after {0} attempts: the index kept changing while it was being reindexed; \
         the index is unchanged (pause ingest and run reindex again)"
    )]
    Contention(usize),
    #[error("the manifest of {0} changed while reindexing but cannot be read again (was it deleted?); the index is unchanged")]
    ManifestGone(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a reindex did.
#[derive(Debug, Clone, Serialize)]
pub struct ReindexReport {
    /// `false` when the index already used the new model: nothing was done.
    pub swapped: bool,
    pub old_model: ModelRef,
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
    pub limits: Limits,
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
            sources: HashMap::new(),
            vectors: HashMap::new(),
            missing: HashSet::new(),
            modified: BTreeSet::new(),
            built: Vec::new(),
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
    /// Opened sources by recorded location.
    sources: HashMap<String, DynStore>,
    vectors: HashMap<Version, Vec<f32>>,
    /// Versions whose object is gone from the source.
    missing: HashSet<Version>,
    modified: BTreeSet<String>,
    built: Vec<Built>,
    attempts: usize,
    encoded: usize,
}

impl ReindexJob<'_> {
    pub fn old_model(&self) -> &ModelRef {
        &self.old_model
    }

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

    /// Fetch and encode the live items not encoded yet; returns how many were processed.
    /// Stops at the first image that cannot be fetched (other than a missing object, which is
    /// dropped) or encoded.
    pub async fn encode(&mut self, progress: Option<Progress>) -> Result<usize, ReindexError> {
        let todo: Vec<ItemRecord> = self
            .live
            .iter()
            .filter(|r| !self.is_done(r))
            .cloned()
            .collect();
        self.open_sources(&todo).await?;
        let mut chunks = todo.chunks(ENCODE_CHUNK);
        let Some(first) = chunks.next() else {
            return Ok(0);
        };
        let mut fetched = self.fetch(first).await?;
        loop {
            let next = chunks.next();
            // Fetch the next chunk while this one is encoded.
            let (encoded, prefetched) = tokio::join!(self.encode_chunk(fetched), async {
                match next {
                    Some(chunk) => Some(self.fetch(chunk).await),
                    None => None,
                }
            });
            let encoded = encoded?;
            let n = encoded.len() as u64;
            for (record, outcome) in encoded {
                match outcome {
                    Some((vector, etag)) => {
                        if etag != record.etag && !etag.is_empty() {
                            self.modified.insert(record.key.clone());
                        }
                        self.vectors.insert(version_of(&record), vector);
                        self.encoded += 1;
                    }
                    None => {
                        tracing::info!(key = %record.key, "gone from the source; dropped");
                        self.missing.insert(version_of(&record));
                    }
                }
            }
            if let Some(p) = &progress {
                p(n);
            }
            match prefetched {
                Some(f) => fetched = f?,
                None => break,
            }
        }
        Ok(todo.len())
    }

    /// Open the sources of `todo` not opened yet (each once).
    async fn open_sources(&mut self, todo: &[ItemRecord]) -> Result<(), ReindexError> {
        if self.r.source.is_some() {
            return Ok(());
        }
        let mut wanted: BTreeMap<&str, usize> = BTreeMap::new();
        for r in todo
            .iter()
            .filter(|r| !self.sources.contains_key(&r.source))
        {
            *wanted.entry(&r.source).or_default() += 1;
        }
        for (location, items) in wanted {
            let store = open_source(self.r.index.store().as_ref(), location, items).await?;
            self.sources.insert(location.to_string(), store);
        }
        Ok(())
    }

    fn source_of(&self, r: &ItemRecord) -> Result<&DynStore, ReindexError> {
        match &self.r.source {
            Some(s) => Ok(s),
            None => self
                .sources
                .get(&r.source)
                .ok_or_else(|| ReindexError::Internal(format!("source {} not open", r.source))),
        }
    }

    /// Fetch a chunk concurrently: `None` for an object that is gone.
    async fn fetch(
        &self,
        chunk: &[ItemRecord],
    ) -> Result<Vec<(ItemRecord, Option<(Bytes, String)>)>, ReindexError> {
        let results: Vec<Result<_, ReindexError>> = stream::iter(chunk)
            .map(|r| async move {
                let source = self.source_of(r)?;
                let fail = |error: String| ReindexError::Fetch {
                    key: r.key.clone(),
                    location: source.location(),
                    error,
                };
                match get_object(source.as_ref(), &r.key).await {
                    Ok(o) => Ok((r.clone(), Some((o.bytes, o.meta.etag)))),
                    Err(StoreError::NotFound(_)) => Ok((r.clone(), None)),
                    Err(e) => Err(fail(e.to_string())),
                }
            })
            .buffered(FETCH_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Encode fetched images on all cores (off the async runtime): `(vector, fetched etag)`, or
    /// `None` for an object that is gone.
    #[allow(clippy::type_complexity)]
    async fn encode_chunk(
        &self,
        fetched: Vec<(ItemRecord, Option<(Bytes, String)>)>,
    ) -> Result<Vec<(ItemRecord, Option<(Vec<f32>, String)>)>, ReindexError> {
        let encoder = self.r.encoder.clone();
        let limits = self.r.limits;
        let images: Vec<Bytes> = fetched
            .iter()
            .filter_map(|(_, f)| f.as_ref().map(|(b, _)| b.clone()))
            .collect();
        let mut vectors =
            tokio::task::spawn_blocking(move || encoder.encode_many(&images, &limits))
                .await
                .map_err(|e| ReindexError::Internal(e.to_string()))?
                .into_iter();
        let mut out = Vec::with_capacity(fetched.len());
        for (record, f) in fetched {
            let Some((_, etag)) = f else {
                out.push((record, None));
                continue;
            };
            let fail = |error: String| ReindexError::Encode {
                key: record.key.clone(),
                model: self.new_model.id.clone(),
                error,
            };
            let vector = match vectors.next() {
                Some(Ok(v)) => v,
                Some(Err(e)) => return Err(fail(e.to_string())),
                None => return Err(ReindexError::Internal("an embedding is missing".into())),
            };
            out.push((record, Some((vector, etag))));
        }
        Ok(out)
    }

    /// A source from which every item is gone is a wrong source, not a mass deletion.
    fn check_sources(&self) -> Result<(), ReindexError> {
        // With --source every item is read from there, whatever source it was indexed from.
        let over = self.r.source.as_ref().map(|s| s.location());
        let mut per_source: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for r in &self.live {
            let (total, gone) = per_source
                .entry(over.as_deref().unwrap_or(&r.source))
                .or_default();
            *total += 1;
            *gone += self.missing.contains(&version_of(r)) as usize;
        }
        let empty = per_source
            .into_iter()
            .find(|(_, (total, gone))| *total > 0 && gone == total)
            .map(|(location, (items, _))| (location.to_string(), items));
        match empty {
            Some((location, items)) => Err(ReindexError::SourceEmpty { location, items }),
            None => Ok(()),
        }
    }

    /// Build the segments that are missing and swap the manifest, conditional on the ETag of the
    /// manifest read last. `Ok(None)`: another writer committed first; nothing was swapped, and
    /// [`ReindexJob::reread`] then the next commit redo what changed. Encodes what is still
    /// pending first (without progress).
    pub async fn commit(&mut self) -> Result<Option<ReindexReport>, ReindexError> {
        if self.pending() > 0 {
            self.encode(None).await?;
        }
        self.check_sources()?;
        // The items of the new index: the live ones whose object is still there.
        let present: BTreeMap<&str, &ItemRecord> = self
            .live
            .iter()
            .filter(|r| !self.missing.contains(&version_of(r)))
            .map(|r| (r.key.as_str(), r))
            .collect();
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
        let new_source = self.r.source.as_ref().map(|s| s.location());
        let mut new_built = Vec::new();
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

        // The new manifest: the new model, only the new segments, no deletions; one version
        // after the old one, sequences continuing from it.
        let old = &self.snapshot.manifest;
        let mut manifest = Manifest::new(self.new_model.clone());
        manifest.next_sequence = old.next_sequence;
        for b in &self.built {
            let mut entry = b.segment.entry.clone();
            entry.sequence = manifest.bump();
            manifest.segments.push(entry);
        }
        manifest.version = old.version + 1;
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
    Ok(tokio::task::spawn_blocking(move || snap.live_records())
        .await
        .map_err(|e| ReindexError::Internal(e.to_string()))??)
}

/// Open the source recorded as `location`. An S3 source goes through the index store's client
/// when it has one (same endpoint and credentials, as the query service does for presigned
/// URLs). A local folder must exist: opening a missing one would create it empty, and every
/// image would then look deleted.
async fn open_source(
    index_store: &dyn ObjectStore,
    location: &str,
    items: usize,
) -> Result<DynStore, ReindexError> {
    if let Some((bucket, prefix)) = store::parse_s3_location(location) {
        if let (Some(client), false) = (index_store.s3_client(), bucket.is_empty()) {
            return Ok(Arc::new(S3Store::new(client, bucket, prefix)));
        }
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        if !Path::new(path).is_dir() {
            return Err(ReindexError::SourceMissing {
                location: location.to_string(),
                items,
            });
        }
    }
    store::open(location)
        .await
        .map_err(|e| ReindexError::OpenSource {
            location: location.to_string(),
            items,
            error: e.to_string(),
        })
}
