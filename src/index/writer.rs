//! Changing an index: every change is a new immutable segment and/or a compare-and-swap of
//! `manifest.json` (S3 conditional writes, or the local store's atomic equivalent). A lost race
//! re-reads the manifest and retries; segments are uploaded before the commit, so a writer that
//! dies in between leaves only an unlisted file that [`gc`] removes later.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::RngExt;

use super::manifest::{segment_key, Manifest, SegmentEntry, MANIFEST_KEY, SEGMENTS_PREFIX};
use super::segment::{write_segment, BuildParams, ItemRecord};
use super::{Index, IndexError};
use crate::digest::sha256_file;
use crate::model::ModelRef;
use crate::store::{get_object, ObjectStore, StoreError};
use crate::task;

/// Attempts at a manifest compare-and-swap before giving up.
pub const MAX_COMMIT_ATTEMPTS: usize = 64;

/// A committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Manifest version after the commit.
    pub version: u64,
    /// The new segment, if the change wrote one.
    pub segment: Option<SegmentEntry>,
    /// Compare-and-swap attempts it took (1 = no conflict).
    pub attempts: usize,
    /// Time spent building and uploading the segment.
    pub segment_write: Duration,
    /// Time spent committing the manifest (every attempt).
    pub manifest_commit: Duration,
}

/// Milliseconds since the Unix epoch (the clock of segment names and retirements).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A new segment name: creation time (for garbage collection) and randomness (uniqueness).
fn new_segment_name() -> String {
    let ms = now_ms();
    let r: u64 = rand::rng().random();
    format!("{ms:013}-{r:016x}.lmdb")
}

/// Creation time encoded in a segment name.
fn segment_created_ms(name: &str) -> Option<u64> {
    name.split('-').next()?.parse().ok()
}

/// Read the manifest, apply `change`, and write it back only if nobody else wrote in between.
/// `change` returns `Ok(false)` to commit nothing. Returns the manifest as committed (or as read).
///
/// Every call is one commit with its own id, recorded in the manifest it writes. When a write's
/// answer is lost (the SDK's retry then meets 412, or the call fails outright), the next read
/// finds the id if the write landed: the commit is done, and `change` is not applied again.
pub async fn update_manifest<F>(
    store: &dyn ObjectStore,
    model: &ModelRef,
    mut change: F,
) -> Result<(Manifest, bool, usize), IndexError>
where
    F: FnMut(&mut Manifest) -> Result<bool, IndexError>,
{
    let id = format!("{:016x}", rand::rng().random::<u64>());
    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        let (mut manifest, etag) = read_manifest(store, model).await?;
        if manifest.has_commit(&id) {
            tracing::info!(commit = %id, attempt, "an earlier attempt of this commit landed");
            return Ok((manifest, true, attempt));
        }
        if !change(&mut manifest)? {
            return Ok((manifest, false, attempt));
        }
        manifest.record_commit(&id);
        match put_manifest(store, manifest.to_bytes().into(), etag.as_deref()).await {
            Ok(true) => return Ok((manifest, true, attempt)),
            Ok(false) => backoff(attempt).await,
            // The write may have landed before the error: look once, then give up.
            Err(e) => {
                return match read_manifest(store, model).await {
                    Ok((now, _)) if now.has_commit(&id) => Ok((now, true, attempt)),
                    _ => Err(e),
                };
            }
        }
    }
    Err(IndexError::Contention(MAX_COMMIT_ATTEMPTS))
}

/// The stored manifest and its ETag (a new one for `model` and no ETag when there is none yet);
/// an error if it holds another model.
async fn read_manifest(
    store: &dyn ObjectStore,
    model: &ModelRef,
) -> Result<(Manifest, Option<String>), IndexError> {
    let (manifest, etag) = match get_object(store, MANIFEST_KEY).await {
        Ok(o) => (Manifest::from_bytes(&o.bytes)?, Some(o.meta.etag)),
        Err(StoreError::NotFound(_)) => (Manifest::new(model.clone()), None),
        Err(e) => return Err(e.into()),
    };
    if &manifest.model != model {
        return Err(IndexError::ModelMismatch {
            index: manifest.model.id.clone(),
            index_dims: manifest.model.dims,
            model: model.id.clone(),
            model_dims: model.dims,
        });
    }
    Ok((manifest, etag))
}

/// Replace the manifest whose ETag is `etag` with `manifest`, in one compare-and-swap, whatever
/// model either of them names: the commit of a reindex (see [`crate::reindex`]), which
/// [`update_manifest`] refuses because it changes the model. `manifest` is validated as a
/// reader would before it is written. Returns `Ok(false)`, writing nothing, when the stored
/// manifest is no longer the one with `etag` (or is gone): the caller re-reads, redoes its
/// work for what changed, waits ([`backoff`]) and tries again.
pub async fn swap_manifest(
    store: &dyn ObjectStore,
    etag: &str,
    manifest: &Manifest,
) -> Result<bool, IndexError> {
    let body = manifest.to_bytes();
    Manifest::from_bytes(&body)?;
    put_manifest(store, body.into(), Some(etag)).await
}

/// Write the manifest `body` if the stored one still has ETag `etag` (`None`: if there is none
/// yet). `Ok(false)` when another writer got there first.
async fn put_manifest(
    store: &dyn ObjectStore,
    body: Bytes,
    etag: Option<&str>,
) -> Result<bool, IndexError> {
    let written = match etag {
        Some(etag) => store.put_if_match(MANIFEST_KEY, body, etag).await,
        None => store.put_if_absent(MANIFEST_KEY, body).await,
    };
    match written {
        Ok(_) => Ok(true),
        Err(StoreError::PreconditionFailed(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Wait after losing compare-and-swap attempt `attempt` (1-based): a random delay whose bound
/// doubles with every attempt (10 ms, then up to 320 ms), so that racing writers spread out.
pub async fn backoff(attempt: usize) {
    let cap = 5u64 << attempt.min(6);
    let wait = rand::rng().random_range(1..=cap);
    tracing::debug!(
        attempt,
        wait_ms = wait,
        "manifest changed under us; retrying"
    );
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// A segment built and uploaded but not yet known to be committed. It lives in a private work
/// folder of the cache, so a concurrent sync (which deletes unlisted files) cannot touch it;
/// [`BuiltSegment::install`] moves it into the cache once a manifest lists it.
#[derive(Debug)]
pub struct BuiltSegment {
    /// The manifest entry that will list it.
    pub entry: SegmentEntry,
    work: tempfile::TempDir,
}

impl BuiltSegment {
    /// Move the file into the cache under its final name (this process then never downloads it).
    pub fn install(self, index: &Index) -> Result<(), IndexError> {
        let dest = index.cache().path_of(&self.entry.name);
        std::fs::rename(self.work.path().join(&self.entry.name), &dest)
            .map_err(|e| IndexError::Io(dest.display().to_string(), e))
    }
}

/// Build a segment from `items` and upload it (put-if-absent).
pub async fn build_and_upload(
    index: &Index,
    model: &ModelRef,
    items: Vec<(ItemRecord, Vec<f32>)>,
    level: u32,
    params: BuildParams,
) -> Result<BuiltSegment, IndexError> {
    let name = new_segment_name();
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(index.cache().dir())
        .map_err(|e| IndexError::Io(index.cache().dir().display().to_string(), e))?;
    let path = work.path().join(&name);
    let (model_id, dims, n) = (model.id.clone(), model.dims, items.len() as u64);
    let (build_path, work_dir) = (path.clone(), work.path().to_path_buf());
    let (bytes, sha256) = task::blocking(move || -> Result<(u64, String), IndexError> {
        write_segment(&build_path, &work_dir, &model_id, dims, &items, params)?;
        let io = |e| IndexError::Io(build_path.display().to_string(), e);
        let bytes = std::fs::metadata(&build_path).map_err(io)?.len();
        Ok((bytes, sha256_file(&build_path).map_err(io)?))
    })
    .await??;
    let body = tokio::fs::read(&path)
        .await
        .map_err(|e| IndexError::Io(path.display().to_string(), e))?;
    index
        .store()
        .put_if_absent(&segment_key(&name), Bytes::from(body))
        .await?;
    Ok(BuiltSegment {
        entry: SegmentEntry {
            name,
            items: n,
            bytes,
            sha256,
            sequence: 0,
            level,
            format: super::manifest::SEGMENT_FORMAT,
        },
        work,
    })
}

/// Append a batch: one new segment with `items` (may be empty) and deletions of `deleted` keys,
/// committed together in one manifest change.
pub async fn append(
    index: &Index,
    model: &ModelRef,
    items: Vec<(ItemRecord, Vec<f32>)>,
    deleted: &[String],
    params: BuildParams,
) -> Result<Option<Commit>, IndexError> {
    if items.is_empty() && deleted.is_empty() {
        return Ok(None);
    }
    let start = Instant::now();
    let segment = if items.is_empty() {
        None
    } else {
        Some(build_and_upload(index, model, items, 0, params).await?)
    };
    let segment_write = start.elapsed();
    let start = Instant::now();
    let mut committed_entry = None;
    let (manifest, _, attempts) = update_manifest(index.store().as_ref(), model, |m| {
        let seq = m.bump();
        if let Some(seg) = &segment {
            let mut entry = seg.entry.clone();
            entry.sequence = seq;
            m.segments.push(entry.clone());
            committed_entry = Some(entry);
        }
        for key in deleted {
            m.deleted.insert(key.clone(), seq);
        }
        Ok(true)
    })
    .await?;
    let manifest_commit = start.elapsed();
    if let Some(seg) = segment {
        seg.install(index)?;
    }
    Ok(Some(Commit {
        version: manifest.version,
        segment: committed_entry,
        attempts,
        segment_write,
        manifest_commit,
    }))
}

/// Which segments a compaction merges.
#[derive(Debug, Clone, Copy)]
pub enum CompactionPolicy {
    /// Merge everything into one segment.
    All,
    /// Tiered: when `fanout` or more segments share a level, merge them into one of the next level.
    Tiered {
        /// Segments of one level that trigger a merge.
        fanout: usize,
    },
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy::Tiered { fanout: 4 }
    }
}

/// Outcome of a compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// The segments merged.
    pub merged: Vec<String>,
    /// The merged segment (none when every input item was deleted).
    pub output: Option<SegmentEntry>,
    /// The manifest version committed.
    pub version: u64,
}

/// What [`compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compacted {
    /// The policy found nothing to merge.
    Nothing,
    /// Another writer removed an input first (a concurrent compaction): nothing committed.
    Raced,
    /// Merged and committed.
    Done(Compaction),
}

impl Compacted {
    /// The committed compaction, if any.
    pub fn done(self) -> Option<Compaction> {
        match self {
            Compacted::Done(c) => Some(c),
            _ => None,
        }
    }
}

/// The segments `policy` merges next in `manifest`, and the level of their merge.
pub fn pick_inputs(manifest: &Manifest, policy: CompactionPolicy) -> Option<(Vec<String>, u32)> {
    match policy {
        CompactionPolicy::All => {
            // One segment is rewritten too when deletions still hide items in it, or when it is
            // of an older format.
            let needs = manifest.segments.len() > 1
                || !manifest.deleted.is_empty()
                || manifest
                    .segments
                    .iter()
                    .any(|s| s.format != super::manifest::SEGMENT_FORMAT);
            let level = manifest.segments.iter().map(|s| s.level).max().unwrap_or(0) + 1;
            (needs && !manifest.segments.is_empty()).then(|| {
                (
                    manifest.segments.iter().map(|s| s.name.clone()).collect(),
                    level,
                )
            })
        }
        CompactionPolicy::Tiered { fanout } => {
            let max_level = manifest.segments.iter().map(|s| s.level).max()?;
            (0..=max_level).find_map(|level| {
                let names: Vec<String> = manifest
                    .segments
                    .iter()
                    .filter(|s| s.level == level)
                    .map(|s| s.name.clone())
                    .collect();
                (names.len() >= fanout.max(2)).then_some((names, level + 1))
            })
        }
    }
}

/// Merge segments into one that holds only their live items. The commit succeeds only if all
/// input segments are still listed; items written or deleted meanwhile stay correct because the
/// output takes the highest sequence of its inputs.
pub async fn compact(
    index: &Index,
    policy: CompactionPolicy,
    params: BuildParams,
) -> Result<Compacted, IndexError> {
    let snapshot = index.refresh().await?;
    let model = snapshot.manifest.model.clone();
    let Some((inputs, level)) = pick_inputs(&snapshot.manifest, policy) else {
        return Ok(Compacted::Nothing);
    };
    // Every deletion with a lower sequence is in the snapshot, so applied to the output's items.
    let applied = snapshot.manifest.next_sequence;
    let items = {
        let snap = snapshot.clone();
        let names = inputs.clone();
        task::blocking(move || snap.live_items_of(&names)).await??
    };
    let output = if items.is_empty() {
        None
    } else {
        Some(build_and_upload(index, &model, items, level, params).await?)
    };
    let mut out_entry = None;
    let (manifest, committed, _) = update_manifest(index.store().as_ref(), &model, |m| {
        let listed: Vec<&SegmentEntry> = m
            .segments
            .iter()
            .filter(|s| inputs.contains(&s.name))
            .collect();
        if listed.len() != inputs.len() {
            return Ok(false);
        }
        let seq = listed.iter().map(|s| s.sequence).max().unwrap_or(0);
        m.retire(&inputs, now_ms());
        // A deletion still matters if it hides items in a segment that was not merged (one
        // older than it), or if it was committed after the snapshot the merge was built from
        // (then it was not applied to the output's items, which it may hide).
        let oldest_other = m
            .segments
            .iter()
            .map(|s| s.sequence)
            .min()
            .unwrap_or(u64::MAX);
        m.deleted
            .retain(|_, &mut d| d > oldest_other || d >= applied);
        if let Some(o) = &output {
            let mut entry = o.entry.clone();
            entry.sequence = seq;
            m.segments.push(entry.clone());
            out_entry = Some(entry);
        }
        m.segments.sort_by_key(|s| s.sequence);
        m.version += 1;
        Ok(true)
    })
    .await?;
    if !committed {
        tracing::warn!("compaction inputs changed concurrently; nothing committed");
        return Ok(Compacted::Raced);
    }
    if let Some(o) = output {
        o.install(index)?;
    }
    index.refresh().await?;
    Ok(Compacted::Done(Compaction {
        merged: inputs,
        output: out_entry,
        version: manifest.version,
    }))
}

/// How long `gc` leaves segment files that no manifest lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// A retired segment (replaced by a compaction or a reindex) is deleted this long after it
    /// left the manifest: readers that synced an earlier manifest (a cold start downloading it,
    /// a container between checks) may still fetch it.
    pub retired: Duration,
    /// A segment no manifest ever listed (uploaded by a writer that died or has not committed
    /// yet, e.g. a reindex still running) is deleted this long after it was created.
    pub orphans: Duration,
}

impl GcPolicy {
    /// The same grace period for retired and orphaned segments (`Duration::ZERO`: none, for
    /// tests and an index that nothing else reads or writes).
    pub fn uniform(grace: Duration) -> Self {
        GcPolicy {
            retired: grace,
            orphans: grace,
        }
    }
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            retired: Duration::from_secs(15 * 60),
            orphans: Duration::from_secs(24 * 3600),
        }
    }
}

/// Delete the segment files that no manifest lists, each once its grace period is over (see
/// [`GcPolicy`]), and drop the deleted ones from the manifest's retired list. Returns the
/// deleted names.
pub async fn gc(index: &Index, policy: GcPolicy) -> Result<Vec<String>, IndexError> {
    // List first, then read the manifest: a segment that leaves the manifest in between is then
    // already among the retired ones (a segment is forgotten only after its file is deleted).
    let objects = index.store().list(SEGMENTS_PREFIX).await?;
    let manifest = match get_object(index.store().as_ref(), MANIFEST_KEY).await {
        Ok(o) => Manifest::from_bytes(&o.bytes)?,
        Err(StoreError::NotFound(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let now = now_ms();
    let age = |since: u64| Duration::from_millis(now.saturating_sub(since));
    let mut removed = Vec::new();
    let mut present = std::collections::HashSet::new();
    for obj in objects {
        let name = obj.key.trim_start_matches(SEGMENTS_PREFIX);
        if manifest.segments.iter().any(|s| s.name == name) {
            continue;
        }
        let expired = match manifest.retired.get(name) {
            Some(&t) => age(t) >= policy.retired,
            // An unparsable name is none of ours: only an old one is removed.
            None => age(segment_created_ms(name).unwrap_or(0)) >= policy.orphans,
        };
        if expired {
            index.store().delete(&obj.key).await?;
            removed.push(name.to_string());
        } else {
            present.insert(name.to_string());
        }
    }
    // Forget retirements whose file is gone (deleted now, or earlier by another gc).
    let forget: Vec<String> = manifest
        .retired
        .keys()
        .filter(|n| !present.contains(*n))
        .cloned()
        .collect();
    if !forget.is_empty() {
        update_manifest(index.store().as_ref(), &manifest.model, |m| {
            let before = m.retired.len();
            m.retired.retain(|n, _| !forget.contains(n));
            if m.retired.len() == before {
                return Ok(false);
            }
            m.version += 1;
            Ok(true)
        })
        .await?;
    }
    Ok(removed)
}
