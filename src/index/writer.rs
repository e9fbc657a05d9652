//! Changing an index: every change is a new immutable segment and/or a compare-and-swap of
//! `manifest.json` (S3 conditional writes, or the local store's atomic equivalent). A lost race
//! re-reads the manifest and retries; segments are uploaded before the commit, so a writer that
//! dies in between leaves only an unlisted file that [`gc`] removes later.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt;

use super::manifest::{
    segment_key, Manifest, SegmentEntry, Tombstone, MANIFEST_KEY, SEGMENTS_PREFIX,
};
use super::segment::{write_segment, BuildParams, ItemRecord};
use super::{Index, IndexError, Snapshot};
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
    /// Keys of the segment's items that were stale at commit (a later change of the key was
    /// indexed first): in the segment but hidden.
    pub stale: Vec<String>,
    /// Deletions not applied: the key's indexed item is newer than the delete notification.
    pub skipped_deletions: Vec<String>,
}

pub use super::clock::now_ms;

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
    let id = new_commit_id();
    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        let (manifest, etag) = read_manifest(store, model).await?;
        match try_commit(store, model, &id, manifest, etag, &mut change).await? {
            Attempt::Done(m, committed) => return Ok((*m, committed, attempt)),
            Attempt::Lost => backoff(attempt).await,
        }
    }
    Err(IndexError::Contention(MAX_COMMIT_ATTEMPTS))
}

/// [`update_manifest`] for a change that must see the items the manifest lists, not only the
/// manifest: each attempt refreshes `index` (syncing new segments) and applies `change` to the
/// snapshot it got, and the compare-and-swap is on that snapshot's manifest.
async fn update_snapshot<F>(
    index: &Index,
    model: &ModelRef,
    mut change: F,
) -> Result<(Manifest, bool, usize), IndexError>
where
    F: FnMut(&Snapshot, &mut Manifest) -> Result<bool, IndexError>,
{
    let id = new_commit_id();
    let store = index.store().as_ref();
    for attempt in 1..=MAX_COMMIT_ATTEMPTS {
        let snapshot = index.refresh().await?;
        let (manifest, etag) = match &snapshot.etag {
            Some(etag) => (snapshot.manifest.clone(), Some(etag.clone())),
            None => (Manifest::new(model.clone()), None),
        };
        check_model(&manifest, model)?;
        let change = |m: &mut Manifest| change(&snapshot, m);
        match try_commit(store, model, &id, manifest, etag, change).await? {
            Attempt::Done(m, committed) => return Ok((*m, committed, attempt)),
            Attempt::Lost => backoff(attempt).await,
        }
    }
    Err(IndexError::Contention(MAX_COMMIT_ATTEMPTS))
}

/// A fresh commit id.
fn new_commit_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// How one compare-and-swap attempt ended.
enum Attempt {
    /// Committed (`true`; possibly by an earlier attempt whose answer was lost), or nothing to
    /// commit (`false`); with the manifest as written or read.
    Done(Box<Manifest>, bool),
    /// Another writer got there first: read again and retry.
    Lost,
}

/// One attempt of commit `id` over `manifest` (stored with `etag`).
async fn try_commit(
    store: &dyn ObjectStore,
    model: &ModelRef,
    id: &str,
    mut manifest: Manifest,
    etag: Option<String>,
    mut change: impl FnMut(&mut Manifest) -> Result<bool, IndexError>,
) -> Result<Attempt, IndexError> {
    if manifest.has_commit(id) {
        tracing::info!(commit = %id, "an earlier attempt of this commit landed");
        return Ok(Attempt::Done(Box::new(manifest), true));
    }
    if !change(&mut manifest)? {
        return Ok(Attempt::Done(Box::new(manifest), false));
    }
    manifest.record_commit(id);
    manifest.committed_ms = Some(now_ms());
    match put_manifest(store, manifest.to_bytes().into(), etag.as_deref()).await {
        Ok(true) => Ok(Attempt::Done(Box::new(manifest), true)),
        Ok(false) => Ok(Attempt::Lost),
        // The write may have landed before the error: look once, then give up.
        Err(e) => match read_manifest(store, model).await {
            Ok((now, _)) if now.has_commit(id) => Ok(Attempt::Done(Box::new(now), true)),
            _ => Err(e),
        },
    }
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
    check_model(&manifest, model)?;
    Ok((manifest, etag))
}

/// An error unless `manifest` holds `model`'s embeddings.
fn check_model(manifest: &Manifest, model: &ModelRef) -> Result<(), IndexError> {
    if &manifest.model != model {
        return Err(IndexError::ModelMismatch {
            index: manifest.model.id.clone(),
            index_dims: manifest.model.dims,
            model: model.id.clone(),
            model_dims: model.dims,
        });
    }
    Ok(())
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
    let body = Manifest {
        committed_ms: Some(now_ms()),
        ..manifest.clone()
    }
    .to_bytes();
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
        .prefix(&super::cache::work_prefix("build"))
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
            hidden: Vec::new(),
        },
        work,
    })
}

/// A key to delete, with the S3 sequencer of its delete notification (if it had one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The key.
    pub key: String,
    /// The notification's sequencer (see [`super::sequencer`]); `None` orders it by commit.
    pub sequencer: Option<String>,
}

impl Deletion {
    /// A deletion ordered by commit (the CLI's).
    pub fn by_commit(key: impl Into<String>) -> Self {
        Deletion {
            key: key.into(),
            sequencer: None,
        }
    }
}

/// Append a batch: one new segment with `items` (may be empty) and deletions of `deleted` keys,
/// committed together in one manifest change, in commit order (no sequencers).
pub async fn append(
    index: &Index,
    model: &ModelRef,
    items: Vec<(ItemRecord, Vec<f32>)>,
    deleted: &[String],
    params: BuildParams,
) -> Result<Option<Commit>, IndexError> {
    let deletions: Vec<Deletion> = deleted.iter().map(Deletion::by_commit).collect();
    append_changes(index, model, items, &deletions, params).await
}

/// Append a batch of changes ordered by S3's sequencers where they have them: at commit time,
/// against the snapshot the commit is made on, an item whose key has a later change indexed
/// (an item or a deletion with a greater sequencer) is stale and hidden (listed in its segment
/// entry's `hidden`), and a deletion older than the key's indexed item is skipped. The rest is
/// [`append`]: one segment and the deletions, in one compare-and-swap.
pub async fn append_changes(
    index: &Index,
    model: &ModelRef,
    items: Vec<(ItemRecord, Vec<f32>)>,
    deletions: &[Deletion],
    params: BuildParams,
) -> Result<Option<Commit>, IndexError> {
    if items.is_empty() && deletions.is_empty() {
        return Ok(None);
    }
    let ordered: Vec<(String, String)> = items
        .iter()
        .filter_map(|(r, _)| Some((r.key.clone(), r.sequencer.clone()?)))
        .collect();
    let by_sequencer = !ordered.is_empty() || deletions.iter().any(|d| d.sequencer.is_some());
    let start = Instant::now();
    let segment = if items.is_empty() {
        None
    } else {
        Some(build_and_upload(index, model, items, 0, params).await?)
    };
    let segment_write = start.elapsed();
    let start = Instant::now();
    let mut committed_entry = None;
    let mut outcome = (Vec::new(), Vec::new());
    let mut apply = |m: &mut Manifest, stale: Vec<String>, applied: Vec<&Deletion>| {
        let seq = m.bump();
        if let Some(seg) = &segment {
            let mut entry = seg.entry.clone();
            entry.sequence = seq;
            entry.hidden = stale.clone();
            m.segments.push(entry.clone());
            committed_entry = Some(entry);
        }
        let now = now_ms();
        for d in &applied {
            m.deleted.insert(d.key.clone(), seq);
            if let Some(t) = &d.sequencer {
                let newest = super::sequencer::later(
                    m.tombstones.get(&d.key).map(|t| t.sequencer.clone()),
                    Some(t.clone()),
                );
                m.tombstones.insert(
                    d.key.clone(),
                    Tombstone {
                        sequencer: newest.unwrap_or_default(),
                        at_ms: now,
                    },
                );
            }
        }
        let skipped = deletions
            .iter()
            .filter(|d| !applied.iter().any(|a| a.key == d.key))
            .map(|d| d.key.clone())
            .collect();
        outcome = (stale, skipped);
    };
    let (manifest, _, attempts) = if by_sequencer {
        update_snapshot(index, model, |snap, m| {
            let (stale, applied) = order_against(snap, m, &ordered, deletions)?;
            apply(m, stale, applied);
            Ok(true)
        })
        .await?
    } else {
        update_manifest(index.store().as_ref(), model, |m| {
            apply(m, Vec::new(), deletions.iter().collect());
            Ok(true)
        })
        .await?
    };
    let manifest_commit = start.elapsed();
    if let Some(seg) = segment {
        seg.install(index)?;
    }
    let (stale, skipped_deletions) = outcome;
    if !stale.is_empty() || !skipped_deletions.is_empty() {
        tracing::info!(
            ?stale,
            ?skipped_deletions,
            "changes older than what the index holds were not applied"
        );
    }
    Ok(Some(Commit {
        version: manifest.version,
        segment: committed_entry,
        attempts,
        segment_write,
        manifest_commit,
        stale,
        skipped_deletions,
    }))
}

/// Which of a batch's changes are older than what `snapshot` (whose manifest is `m`) holds for
/// their key: the keys of stale items, and the deletions to apply.
fn order_against<'d>(
    snapshot: &Snapshot,
    m: &Manifest,
    items: &[(String, String)],
    deletions: &'d [Deletion],
) -> Result<(Vec<String>, Vec<&'d Deletion>), IndexError> {
    use super::sequencer::is_older;
    let indexed = |key: &str| -> Result<Option<String>, IndexError> {
        Ok(snapshot.record(key)?.and_then(|r| r.sequencer))
    };
    let mut stale = Vec::new();
    for (key, seq) in items {
        let deleted_later = m
            .tombstones
            .get(key)
            .is_some_and(|t| is_older(Some(seq), Some(&t.sequencer)));
        if deleted_later || is_older(Some(seq), indexed(key)?.as_deref()) {
            stale.push(key.clone());
        }
    }
    let mut applied = Vec::new();
    for d in deletions {
        if !is_older(d.sequencer.as_deref(), indexed(&d.key)?.as_deref()) {
            applied.push(d);
        }
    }
    Ok((stale, applied))
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
        m.prune_tombstones(now_ms());
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
    /// yet) is deleted this long after it was created, unless a live lease holds it (a reindex
    /// holds its segments until its commit, however long it runs: see [`super::lease`]).
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
    // List first, then the leases, then the manifest: a segment that leaves the manifest in
    // between is then already among the retired ones (a segment is forgotten only after its file
    // is deleted), and one whose lease is released in between (after its commit) is listed by
    // the manifest read after it.
    let objects = index.store().list(SEGMENTS_PREFIX).await?;
    let (leased, dead_leases) = super::lease::read_leases(index.store(), policy.orphans).await?;
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
        if leased.contains(name) && !manifest.retired.contains_key(name) {
            present.insert(name.to_string());
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
    for key in dead_leases {
        index.store().delete(&key).await?;
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
