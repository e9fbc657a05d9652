//! One immutable segment: a compacted single-file LMDB environment holding the vectors of its
//! items (see [`super::vectors`]) and the item dictionaries.
//!
//! Databases inside the file:
//! - `codes`:   format 2's compact vector codes,
//! - `vectors`: arroy trees (index 0): format 2's sign-code trees of big segments, or format 1's
//!   full-precision cosine index,
//! - `items`:   local item id (u32, big-endian) → [`ItemRecord`] as JSON,
//! - `keys`:    object key → local item id (a key longer than LMDB's key limit is stored as
//!   [`lmdb_key`]'s digest form, and every lookup checks the record's own key),
//! - `info`:    `format`, `model`, `dims`, `items` (and in format 2 `trees`) as strings.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use heed::byteorder::BE;
use heed::types::{Bytes, SerdeJson, Str, U32};
use heed::{CommitOrAbort, CompactionOption, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::filter::{Field, FieldIndex};

pub use super::segment_error::SegmentError;
use super::vectors::{self, BitTrees, Codes, Vectors};
pub use super::vectors::{default_trees, refine_count, BuildParams, SearchParams, Shortlist};

/// The segment format this build writes (recorded in every segment).
pub const SEGMENT_FORMAT: &str = "2";
/// The older format this build still reads (full-precision vectors).
pub const SEGMENT_FORMAT_FLOAT: &str = "1";
/// Largest address space reserved while building a segment (nothing is allocated up front).
const BUILD_MAP_SIZE_MAX: usize = 64 << 30;

/// Address space to reserve for building a segment of `n` items of `dims` dimensions: a generous
/// bound on what the vectors, the trees and the records need (about 8.5 KB per 1280-d item when
/// done in format 1, under 2 KB in format 2). Reserving no more than needed matters where address space is limited (emulators,
/// `ulimit -v`); a build that still runs out retries with more ([`write_segment`]).
fn build_map_size(n: usize, dims: usize) -> usize {
    let bytes = n.saturating_mul(dims * 4 * 4 + (16 << 10)) + (256 << 20);
    bytes
        .div_ceil(1 << 20)
        .saturating_mul(1 << 20)
        .min(BUILD_MAP_SIZE_MAX)
}

/// What the index knows about one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Object key relative to the source (`catalog/shoes/1.jpg`).
    pub key: String,
    /// Where the key lives: `s3://bucket/prefix` or a local folder.
    pub source: String,
    /// The object's ETag when it was indexed.
    pub etag: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its category (the key's folder).
    pub category: String,
    /// User metadata (S3 `x-amz-meta-*` and CSV columns).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The S3 sequencer of the notification that indexed it (none from the CLI or a hand-made
    /// event): orders it against other changes of its key (see [`super::sequencer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer: Option<String>,
}

/// Longest object key the `keys` database stores as itself. LMDB refuses keys over 511 bytes;
/// S3 allows 1024.
const LMDB_KEY_MAX: usize = 511;
/// Marks the digest form of a long key. A control character, so no ordinary key starts with it;
/// a key that does still resolves correctly, since [`Segment::id_of`] checks the record.
const LONG_KEY_MARK: char = '\u{1}';

/// The `keys` database's key for an object key: the key itself, or for one too long for LMDB a
/// mark and the key's SHA-256.
fn lmdb_key(key: &str) -> std::borrow::Cow<'_, str> {
    if key.len() <= LMDB_KEY_MAX {
        key.into()
    } else {
        format!(
            "{LONG_KEY_MARK}{}",
            crate::digest::sha256_hex(key.as_bytes())
        )
        .into()
    }
}

type Items = Database<'static, U32<BE>, SerdeJson<ItemRecord>>;
type Keys = Database<'static, Str, U32<BE>>;
type Info = Database<'static, Str, Str>;
/// The `vectors` database before its format says which arroy distance it holds.
type Untyped = Database<'static, Bytes, Bytes>;

/// Write `items` (record + unit-norm embedding, local ids assigned in order) into a compacted
/// single-file segment at `out`. `work_dir` holds the temporary build environment and arroy's
/// temporary files.
pub fn write_segment(
    out: &Path,
    work_dir: &Path,
    model_id: &str,
    dims: usize,
    items: &[(ItemRecord, Vec<f32>)],
    params: BuildParams,
) -> Result<(), SegmentError> {
    let mut map_size = build_map_size(items.len(), dims);
    loop {
        match write_segment_with(out, work_dir, model_id, dims, items, params, map_size) {
            Err(SegmentError::Lmdb(_, heed::Error::Mdb(heed::MdbError::MapFull)))
                if map_size < BUILD_MAP_SIZE_MAX =>
            {
                map_size = (map_size * 4).min(BUILD_MAP_SIZE_MAX);
            }
            other => return other,
        }
    }
}

fn write_segment_with(
    out: &Path,
    work_dir: &Path,
    model_id: &str,
    dims: usize,
    items: &[(ItemRecord, Vec<f32>)],
    params: BuildParams,
    map_size: usize,
) -> Result<(), SegmentError> {
    let shown = out.display().to_string();
    let lmdb = |e| SegmentError::Lmdb(shown.clone(), e);
    let build_dir = tempfile::Builder::new()
        .prefix("segment-build-")
        .tempdir_in(work_dir)
        .map_err(|e| SegmentError::Io(work_dir.display().to_string(), e))?;
    let build_path = build_dir.path().join("build.lmdb");
    let env = unsafe {
        EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(map_size)
            .max_dbs(8)
            .flags(EnvFlags::NO_SUB_DIR)
            .open(&build_path)
    }
    .map_err(lmdb)?;
    let wtxn = env.write_txn().map_err(lmdb)?;
    let (trees, codes, items_db, keys_db, info_db): (BitTrees, Codes, Items, Keys, Info) = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit((
                dbo.create_database(wtxn, Some("vectors"))?,
                dbo.create_database(wtxn, Some("codes"))?,
                dbo.create_database(wtxn, Some("items"))?,
                dbo.create_database(wtxn, Some("keys"))?,
                dbo.create_database(wtxn, Some("info"))?,
            )))
        })
        .map_err(lmdb)?
        .unwrap_commit();

    let mut wtxn = env.write_txn().map_err(lmdb)?;
    // A big segment is clustered first, and its items are stored list after list: a search
    // then scans each probed list's codes as one contiguous run.
    let lists = (items.len() >= params.ivf_from.max(1)
        && items.iter().all(|(_, v)| v.len() == dims))
    .then(|| {
        let vectors: Vec<&[f32]> = items.iter().map(|(_, v)| v.as_slice()).collect();
        super::ivf::build(
            &vectors,
            dims,
            super::ivf::lists_for(items.len()),
            params.seed,
        )
    });
    let ordered: Vec<&(ItemRecord, Vec<f32>)> = match &lists {
        Some(l) => l.ids.iter().map(|&i| &items[i as usize]).collect(),
        None => items.iter().collect(),
    };
    for (id, (record, vector)) in ordered.iter().map(|p| (&p.0, &p.1)).enumerate() {
        if vector.len() != dims {
            return Err(SegmentError::Dims {
                key: record.key.clone(),
                got: vector.len(),
                want: dims,
            });
        }
        let id = u32::try_from(id)
            .map_err(|_| SegmentError::Invalid(shown.clone(), "too many items".into()))?;
        items_db.put(&mut wtxn, &id, record).map_err(lmdb)?;
        let stored = lmdb_key(&record.key);
        if stored.len() != record.key.len() && keys_db.get(&wtxn, &stored).map_err(lmdb)?.is_some()
        {
            return Err(SegmentError::Invalid(
                shown.clone(),
                format!("two keys share the long-key form {stored:?}"),
            ));
        }
        keys_db.put(&mut wtxn, &stored, &id).map_err(lmdb)?;
    }
    let with_trees = items.len() >= params.trees_from.max(1);
    let fields = [
        ("format", SEGMENT_FORMAT.to_string()),
        ("model", model_id.to_string()),
        ("dims", dims.to_string()),
        ("items", items.len().to_string()),
        ("trees", u8::from(with_trees).to_string()),
    ];
    for (k, v) in &fields {
        info_db.put(&mut wtxn, k, v).map_err(lmdb)?;
    }
    let vectors: Vec<&[f32]> = ordered.iter().map(|(_, v)| v.as_slice()).collect();
    vectors::write_compact(
        &shown,
        &mut wtxn,
        codes,
        trees,
        dims,
        &vectors,
        lists.as_ref(),
        params,
        build_dir.path(),
    )?;
    wtxn.commit().map_err(lmdb)?;

    if out.exists() {
        std::fs::remove_file(out).map_err(|e| SegmentError::Io(shown.clone(), e))?;
    }
    env.copy_to_path(out, CompactionOption::Enabled)
        .map_err(lmdb)?;
    drop(env);
    Ok(())
}

/// A segment file opened read-only and memory-mapped.
pub struct Segment {
    path: PathBuf,
    /// The path as error messages show it (made once, not on every search).
    shown: String,
    env: Env<WithoutTls>,
    vectors: Vectors,
    /// The segment's format (`"2"`, or `"1"` for an older segment).
    pub format: &'static str,
    items: Items,
    keys: Keys,
    /// The model that made the vectors.
    pub model_id: String,
    /// Embedding dimensions.
    pub dims: usize,
    /// Items in the segment.
    pub len: u32,
    /// Per-field value bitmaps, each built on the first filter that tests its field.
    fields: Mutex<HashMap<Field, Arc<FieldIndex>>>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

/// heed refuses to open one path twice in a process: every open segment is shared through this
/// registry, so a query and an ingest in the same process reuse the same environment.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Segment>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<Segment>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

impl Segment {
    /// Open (or reuse the already open) segment at `path`.
    pub fn open(path: &Path) -> Result<Arc<Segment>, SegmentError> {
        let canonical = path
            .canonicalize()
            .map_err(|e| SegmentError::Io(path.display().to_string(), e))?;
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seg) = reg.get(&canonical).and_then(Weak::upgrade) {
            return Ok(seg);
        }
        let seg = Arc::new(Self::open_uncached(&canonical)?);
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(canonical, Arc::downgrade(&seg));
        Ok(seg)
    }

    fn open_uncached(path: &Path) -> Result<Segment, SegmentError> {
        let shown = path.display().to_string();
        let lmdb = |e| SegmentError::Lmdb(shown.clone(), e);
        let invalid = |m: &str| SegmentError::Invalid(shown.clone(), m.to_string());
        let len = std::fs::metadata(path)
            .map_err(|e| SegmentError::Io(shown.clone(), e))?
            .len();
        let map_size = (len as usize).div_ceil(1 << 16).max(1) << 16;
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_dbs(8)
                .flags(EnvFlags::NO_SUB_DIR | EnvFlags::READ_ONLY)
                .open(path)
        }
        .map_err(lmdb)?;
        let rtxn = env.read_txn().map_err(lmdb)?;
        type Opened = (Items, Keys, Info, Option<Untyped>, Option<Codes>);
        let opened: Option<Opened> = env
            .open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
                let (Some(i), Some(k), Some(n)) = (
                    dbo.open_database(rtxn, Some("items"))?,
                    dbo.open_database(rtxn, Some("keys"))?,
                    dbo.open_database(rtxn, Some("info"))?,
                ) else {
                    return Ok(CommitOrAbort::Commit(None));
                };
                let vectors = dbo.open_database(rtxn, Some("vectors"))?;
                let codes = dbo.open_database(rtxn, Some("codes"))?;
                Ok(CommitOrAbort::<_, ()>::Commit(Some((
                    i, k, n, vectors, codes,
                ))))
            })
            .map_err(lmdb)?
            .unwrap_commit();
        let (items, keys, info, vectors, codes) =
            opened.ok_or_else(|| invalid("missing databases"))?;
        let rtxn = env.read_txn().map_err(lmdb)?;
        let get = |name: &str| -> Result<String, SegmentError> {
            info.get(&rtxn, name)
                .map_err(lmdb)?
                .map(str::to_owned)
                .ok_or_else(|| invalid(&format!("missing info field {name}")))
        };
        let format = match get("format")?.as_str() {
            SEGMENT_FORMAT => SEGMENT_FORMAT,
            SEGMENT_FORMAT_FLOAT => SEGMENT_FORMAT_FLOAT,
            other => {
                return Err(invalid(&format!(
                    "unknown segment format {other} (this build reads {SEGMENT_FORMAT_FLOAT} and {SEGMENT_FORMAT})"
                )))
            }
        };
        let model_id = get("model")?;
        let dims: usize = get("dims")?.parse().map_err(|_| invalid("bad dims"))?;
        let len: u32 = get("items")?
            .parse()
            .map_err(|_| invalid("bad item count"))?;
        let with_trees = get("trees").ok().as_deref() == Some("1");
        let missing = || invalid("missing vector databases");
        let vectors = if format == SEGMENT_FORMAT_FLOAT {
            Vectors::Float(vectors.ok_or_else(missing)?.remap_types())
        } else {
            let trees: Option<BitTrees> = match with_trees {
                true => Some(vectors.ok_or_else(missing)?.remap_types()),
                false => None,
            };
            let codes = codes.ok_or_else(missing)?;
            Vectors::Compact(vectors::Compact::open(
                &shown,
                &rtxn,
                codes,
                trees,
                dims,
                len as usize,
            )?)
        };
        drop(rtxn);
        Ok(Segment {
            path: path.to_path_buf(),
            shown: shown.clone(),
            env,
            vectors,
            format,
            items,
            keys,
            model_id,
            dims,
            len,
            fields: Mutex::default(),
        })
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lmdb(&self, e: heed::Error) -> SegmentError {
        SegmentError::Lmdb(self.shown.clone(), e)
    }

    /// Every record with its id (used for category bitmaps, compaction and stats).
    pub fn records(&self) -> Result<Vec<(u32, ItemRecord)>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let mut out = Vec::with_capacity(self.len as usize);
        for entry in self.items.iter(&rtxn).map_err(|e| self.lmdb(e))? {
            out.push(entry.map_err(|e| self.lmdb(e))?);
        }
        Ok(out)
    }

    /// The value bitmaps of `fields` (in that order), over all the segment's items. A field's
    /// first use reads every record once; later filters on it are lookups.
    pub fn field_indexes(&self, fields: &[&Field]) -> Result<Vec<Arc<FieldIndex>>, SegmentError> {
        let lock = || self.fields.lock().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<&Field> = {
            let have = lock();
            fields
                .iter()
                .copied()
                .filter(|f| !have.contains_key(*f))
                .collect()
        };
        if !missing.is_empty() {
            let records = self.records()?;
            let built = FieldIndex::build(&missing, records.iter().map(|(id, r)| (*id, r)));
            let mut have = lock();
            for (f, index) in missing.into_iter().zip(built) {
                have.entry(f.clone()).or_insert_with(|| Arc::new(index));
            }
        }
        let have = lock();
        Ok(fields.iter().map(|f| have[*f].clone()).collect())
    }

    /// The item id of `key`, if the segment holds it.
    pub fn id_of(&self, key: &str) -> Result<Option<u32>, SegmentError> {
        if key.is_empty() {
            // LMDB refuses zero-length keys; no item has one.
            return Ok(None);
        }
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let stored = lmdb_key(key);
        let Some(id) = self.keys.get(&rtxn, &stored).map_err(|e| self.lmdb(e))? else {
            return Ok(None);
        };
        if stored.len() == key.len() {
            return Ok(Some(id));
        }
        let record = self.items.get(&rtxn, &id).map_err(|e| self.lmdb(e))?;
        Ok(record.filter(|r| r.key == key).map(|_| id))
    }

    /// The record of item `id`.
    pub fn record(&self, id: u32) -> Result<Option<ItemRecord>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.items.get(&rtxn, &id).map_err(|e| self.lmdb(e))
    }

    /// The vector of item `id` (in format 2, decoded from its int8 code: within 0.4% of each
    /// component's scale of the original).
    pub fn vector(&self, id: u32) -> Result<Option<Vec<f32>>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.vectors.vector(&self.shown, &rtxn, id)
    }

    /// The first phase of a search: the best of `candidates` by their compact codes, at most
    /// [`vectors::refine_count`]`(k)` of them, in no order (see [`Segment::refine`]).
    pub fn shortlist(
        &self,
        query: &[f32],
        k: usize,
        candidates: &RoaringBitmap,
        params: &SearchParams,
    ) -> Result<Shortlist, SegmentError> {
        if k == 0 || candidates.is_empty() {
            return Ok(Shortlist::empty());
        }
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.vectors
            .shortlist(&self.shown, &rtxn, query, k, candidates, params)
    }

    /// The second phase: `hits` (ids of `shortlist`'s) scored again more exactly.
    pub fn refine(
        &self,
        shortlist: &Shortlist,
        hits: &mut [(u32, f32)],
    ) -> Result<(), SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.vectors.refine(&self.shown, &rtxn, shortlist, hits)
    }
}
