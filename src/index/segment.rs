//! One immutable segment: a compacted single-file LMDB environment holding an arroy index (cosine)
//! over L2-normalised embeddings plus the item dictionaries.
//!
//! Databases inside the file:
//! - `vectors`: the arroy index (index 0),
//! - `items`:   local item id (u32, big-endian) → [`ItemRecord`] as JSON,
//! - `keys`:    object key → local item id,
//! - `info`:    `format`, `model`, `dims`, `items` as strings.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arroy::distances::Cosine;
use heed::byteorder::BE;
use heed::types::{SerdeJson, Str, U32};
use heed::{CommitOrAbort, CompactionOption, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};
use rand::rngs::StdRng;
use rand::SeedableRng;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

/// The segment format this build writes and reads (recorded in every segment).
pub const SEGMENT_FORMAT: &str = "1";
const ARROY_INDEX: u16 = 0;
/// Largest address space reserved while building a segment (nothing is allocated up front).
const BUILD_MAP_SIZE_MAX: usize = 64 << 30;

/// Address space to reserve for building a segment of `n` items of `dims` dimensions: a generous
/// bound on what the vectors, the trees and the records need (about 8.5 KB per 1280-d item when
/// done). Reserving no more than needed matters where address space is limited (emulators,
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
}

/// Why a segment cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// LMDB failed.
    #[error("LMDB error on segment {0}: {1}")]
    Lmdb(String, #[source] heed::Error),
    /// arroy failed.
    #[error("arroy error on segment {0}: {1}")]
    Arroy(String, #[source] arroy::Error),
    /// A file operation failed.
    #[error("I/O error on segment {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The file is not a segment of this format.
    #[error("segment {0} is not a lookalike segment: {1}")]
    Invalid(String, String),
    /// A vector of the wrong size.
    #[error("embedding of {key} has {got} dimensions, the index has {want}")]
    Dims {
        /// The item's key.
        key: String,
        /// The vector's dimensions.
        got: usize,
        /// The segment's.
        want: usize,
    },
}

type Vectors = arroy::Database<'static, Cosine>;
type Items = Database<'static, U32<BE>, SerdeJson<ItemRecord>>;
type Keys = Database<'static, Str, U32<BE>>;
type Info = Database<'static, Str, Str>;

/// Build parameters for arroy.
#[derive(Debug, Clone, Copy)]
pub struct BuildParams {
    /// Number of random-projection trees; `None` picks one from the item count.
    pub n_trees: Option<usize>,
    /// Seed of the trees' random projections.
    pub seed: u64,
}

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams {
            n_trees: None,
            seed: 42,
        }
    }
}

/// Trees for `n` items: few trees keep segments small; recall comes from `search_k` at query time.
pub fn default_trees(n: usize) -> usize {
    match n {
        0..=1_000 => 4,
        1_001..=20_000 => 10,
        _ => 20,
    }
}

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
    let arroy_err = |e| SegmentError::Arroy(shown.clone(), e);
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
    let (vectors, items_db, keys_db, info_db): (Vectors, Items, Keys, Info) = env
        .create_databases_and_commit(wtxn, |dbo, wtxn| -> heed::Result<_> {
            Ok(CommitOrAbort::<_, ()>::Commit((
                dbo.create_database(wtxn, Some("vectors"))?,
                dbo.create_database(wtxn, Some("items"))?,
                dbo.create_database(wtxn, Some("keys"))?,
                dbo.create_database(wtxn, Some("info"))?,
            )))
        })
        .map_err(lmdb)?
        .unwrap_commit();

    let mut wtxn = env.write_txn().map_err(lmdb)?;
    let mut writer = arroy::Writer::<Cosine>::new(vectors, ARROY_INDEX, dims);
    writer.set_tmpdir(build_dir.path());
    for (id, (record, vector)) in items.iter().enumerate() {
        if vector.len() != dims {
            return Err(SegmentError::Dims {
                key: record.key.clone(),
                got: vector.len(),
                want: dims,
            });
        }
        let id = u32::try_from(id)
            .map_err(|_| SegmentError::Invalid(shown.clone(), "too many items".into()))?;
        writer.add_item(&mut wtxn, id, vector).map_err(arroy_err)?;
        items_db.put(&mut wtxn, &id, record).map_err(lmdb)?;
        keys_db.put(&mut wtxn, &record.key, &id).map_err(lmdb)?;
    }
    info_db
        .put(&mut wtxn, "format", SEGMENT_FORMAT)
        .map_err(lmdb)?;
    info_db.put(&mut wtxn, "model", model_id).map_err(lmdb)?;
    info_db
        .put(&mut wtxn, "dims", &dims.to_string())
        .map_err(lmdb)?;
    info_db
        .put(&mut wtxn, "items", &items.len().to_string())
        .map_err(lmdb)?;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let trees = params.n_trees.unwrap_or_else(|| default_trees(items.len()));
    writer
        .builder(&mut rng)
        .n_trees(trees)
        .build(&mut wtxn)
        .map_err(arroy_err)?;
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
    env: Env<WithoutTls>,
    vectors: Vectors,
    items: Items,
    keys: Keys,
    /// The model that made the vectors.
    pub model_id: String,
    /// Embedding dimensions.
    pub dims: usize,
    /// Items in the segment.
    pub len: u32,
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
        let opened: Option<(Vectors, Items, Keys, Info)> = env
            .open_databases_and_commit(rtxn, |dbo, rtxn| -> heed::Result<_> {
                let (Some(v), Some(i), Some(k), Some(n)) = (
                    dbo.open_database(rtxn, Some("vectors"))?,
                    dbo.open_database(rtxn, Some("items"))?,
                    dbo.open_database(rtxn, Some("keys"))?,
                    dbo.open_database(rtxn, Some("info"))?,
                ) else {
                    return Ok(CommitOrAbort::Commit(None));
                };
                Ok(CommitOrAbort::<_, ()>::Commit(Some((v, i, k, n))))
            })
            .map_err(lmdb)?
            .unwrap_commit();
        let (vectors, items, keys, info) = opened.ok_or_else(|| invalid("missing databases"))?;
        let rtxn = env.read_txn().map_err(lmdb)?;
        let get = |name: &str| -> Result<String, SegmentError> {
            info.get(&rtxn, name)
                .map_err(lmdb)?
                .map(str::to_owned)
                .ok_or_else(|| invalid(&format!("missing info field {name}")))
        };
        if get("format")? != SEGMENT_FORMAT {
            return Err(invalid("unknown segment format"));
        }
        let model_id = get("model")?;
        let dims: usize = get("dims")?.parse().map_err(|_| invalid("bad dims"))?;
        let len: u32 = get("items")?
            .parse()
            .map_err(|_| invalid("bad item count"))?;
        drop(rtxn);
        Ok(Segment {
            path: path.to_path_buf(),
            env,
            vectors,
            items,
            keys,
            model_id,
            dims,
            len,
        })
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lmdb(&self, e: heed::Error) -> SegmentError {
        SegmentError::Lmdb(self.path.display().to_string(), e)
    }

    fn arroy(&self, e: arroy::Error) -> SegmentError {
        SegmentError::Arroy(self.path.display().to_string(), e)
    }

    /// All (key, id) pairs, in key order.
    pub fn keys(&self) -> Result<Vec<(String, u32)>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let mut out = Vec::with_capacity(self.len as usize);
        for entry in self.keys.iter(&rtxn).map_err(|e| self.lmdb(e))? {
            let (k, id) = entry.map_err(|e| self.lmdb(e))?;
            out.push((k.to_owned(), id));
        }
        Ok(out)
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

    /// The item id of `key`, if the segment holds it.
    pub fn id_of(&self, key: &str) -> Result<Option<u32>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.keys.get(&rtxn, key).map_err(|e| self.lmdb(e))
    }

    /// The record of item `id`.
    pub fn record(&self, id: u32) -> Result<Option<ItemRecord>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        self.items.get(&rtxn, &id).map_err(|e| self.lmdb(e))
    }

    /// The vector of item `id`.
    pub fn vector(&self, id: u32) -> Result<Option<Vec<f32>>, SegmentError> {
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let reader =
            arroy::Reader::open(&rtxn, ARROY_INDEX, self.vectors).map_err(|e| self.arroy(e))?;
        reader.item_vector(&rtxn, id).map_err(|e| self.arroy(e))
    }

    /// Approximate nearest neighbours among `candidates`: (id, cosine similarity), best first.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        candidates: &RoaringBitmap,
        search_k_factor: usize,
    ) -> Result<Vec<(u32, f32)>, SegmentError> {
        if k == 0 || candidates.is_empty() {
            return Ok(Vec::new());
        }
        let rtxn = self.env.read_txn().map_err(|e| self.lmdb(e))?;
        let reader =
            arroy::Reader::open(&rtxn, ARROY_INDEX, self.vectors).map_err(|e| self.arroy(e))?;
        let mut q = reader.nns(k);
        q.candidates(candidates);
        let search_k = k.max(10) * reader.n_trees().max(1) * search_k_factor.max(1);
        if let Some(sk) = NonZeroUsize::new(search_k) {
            q.search_k(sk);
        }
        let found = q.by_vector(&rtxn, query).map_err(|e| self.arroy(e))?;
        // arroy's cosine distance is (1 - cos) / 2.
        Ok(found
            .into_iter()
            .map(|(id, d)| (id, 1.0 - 2.0 * d))
            .collect())
    }
}
