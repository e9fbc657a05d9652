//! One consistent, read-only view of an index: a manifest and its open segments. A query runs
//! entirely against one snapshot, so an answer never mixes two manifest versions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::manifest::{Manifest, SegmentEntry};
use super::segment::{ItemRecord, Segment};
use super::IndexError;

/// Default multiplier of arroy's `search_k` (`k * n_trees * factor` nodes visited per segment).
pub const DEFAULT_SEARCH_K_FACTOR: usize = 40;

pub struct Snapshot {
    pub manifest: Manifest,
    /// ETag of the manifest object this snapshot was read from (`None` for an empty index).
    pub etag: Option<String>,
    /// Newest first.
    segments: Vec<LiveSegment>,
    live_items: u64,
    pub search_k_factor: usize,
}

struct LiveSegment {
    entry: SegmentEntry,
    seg: Arc<Segment>,
    /// Items of this segment that are visible: not deleted and not superseded by a newer segment.
    live: RoaringBitmap,
    categories: HashMap<String, RoaringBitmap>,
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub record: ItemRecord,
    /// Cosine similarity in [-1, 1].
    pub score: f32,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.manifest.version)
            .field("segments", &self.segments.len())
            .field("live_items", &self.live_items)
            .finish()
    }
}

impl Snapshot {
    /// An index with no manifest yet.
    pub fn empty(manifest: Manifest) -> Self {
        Snapshot {
            manifest,
            etag: None,
            segments: Vec::new(),
            live_items: 0,
            search_k_factor: DEFAULT_SEARCH_K_FACTOR,
        }
    }

    /// Build a snapshot from a manifest and its already-open segments (same order as the manifest).
    pub fn new(
        manifest: Manifest,
        etag: Option<String>,
        opened: Vec<Arc<Segment>>,
    ) -> Result<Self, IndexError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut segments = Vec::with_capacity(opened.len());
        let mut live_items = 0;
        for (entry, seg) in manifest.segments.iter().zip(opened).rev() {
            if seg.model_id != manifest.model.id || seg.dims != manifest.model.dims {
                return Err(IndexError::Corrupt(
                    entry.name.clone(),
                    format!(
                        "segment holds model {} ({}d), manifest says {}",
                        seg.model_id, seg.dims, manifest.model.id
                    ),
                ));
            }
            let mut live = RoaringBitmap::new();
            let mut categories: HashMap<String, RoaringBitmap> = HashMap::new();
            for (id, rec) in seg.records()? {
                if manifest.is_deleted(&rec.key, entry.sequence) || seen.contains(&rec.key) {
                    continue;
                }
                live.insert(id);
                categories
                    .entry(rec.category.clone())
                    .or_default()
                    .insert(id);
                seen.insert(rec.key);
            }
            live_items += live.len();
            segments.push(LiveSegment {
                entry: entry.clone(),
                seg,
                live,
                categories,
            });
        }
        Ok(Snapshot {
            manifest,
            etag,
            segments,
            live_items,
            search_k_factor: DEFAULT_SEARCH_K_FACTOR,
        })
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub fn live_items(&self) -> u64 {
        self.live_items
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Live items per category, sorted by name.
    pub fn categories(&self) -> Vec<(String, u64)> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for s in &self.segments {
            for (c, b) in &s.categories {
                *counts.entry(c).or_default() += b.len();
            }
        }
        let mut v: Vec<_> = counts
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        v.sort();
        v
    }

    /// The live record and vector of `key`, if indexed.
    pub fn lookup(&self, key: &str) -> Result<Option<(ItemRecord, Vec<f32>)>, IndexError> {
        for s in &self.segments {
            if let Some(id) = s.seg.id_of(key)? {
                if !s.live.contains(id) {
                    return Ok(None);
                }
                let rec = s.seg.record(id)?;
                let vec = s.seg.vector(id)?;
                return Ok(rec.zip(vec));
            }
        }
        Ok(None)
    }

    /// The live record of `key` (no vector).
    pub fn record(&self, key: &str) -> Result<Option<ItemRecord>, IndexError> {
        for s in &self.segments {
            if let Some(id) = s.seg.id_of(key)? {
                return if s.live.contains(id) {
                    Ok(s.seg.record(id)?)
                } else {
                    Ok(None)
                };
            }
        }
        Ok(None)
    }

    /// Top `k` live items by cosine similarity to `query` (unit norm), optionally only from
    /// `category`, never `exclude_key`. Each segment is searched among its live items only, then
    /// the per-segment lists are merged by score.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        category: Option<&str>,
        exclude_key: Option<&str>,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_with(query, k, category, exclude_key, self.search_k_factor)
    }

    /// [`Snapshot::search`] with an explicit `search_k` factor (more is slower and more exact).
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        category: Option<&str>,
        exclude_key: Option<&str>,
        search_k_factor: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.manifest.model.dims {
            return Err(IndexError::Dims {
                got: query.len(),
                want: self.manifest.model.dims,
            });
        }
        let mut scored: Vec<(f32, usize, u32)> = Vec::new();
        for (si, s) in self.segments.iter().enumerate() {
            let mut candidates = match category {
                Some(c) => match s.categories.get(c) {
                    Some(b) => b.clone(),
                    None => continue,
                },
                None => s.live.clone(),
            };
            if let Some(ex) = exclude_key {
                if let Some(id) = s.seg.id_of(ex)? {
                    candidates.remove(id);
                }
            }
            for (id, score) in s.seg.search(query, k, &candidates, search_k_factor)? {
                scored.push((score, si, id));
            }
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(k);
        let mut hits = Vec::with_capacity(scored.len());
        for (score, si, id) in scored {
            let s = &self.segments[si];
            let record = s.seg.record(id)?.ok_or_else(|| {
                IndexError::Corrupt(
                    s.entry.name.clone(),
                    format!("item {id} has a vector but no record"),
                )
            })?;
            hits.push(Hit { record, score });
        }
        Ok(hits)
    }

    /// Every live (record, vector), newest segment first (compaction, reindexing, exact search).
    pub fn live_items_with_vectors(&self) -> Result<Vec<(ItemRecord, Vec<f32>)>, IndexError> {
        let mut out = Vec::with_capacity(self.live_items as usize);
        for s in &self.segments {
            for id in &s.live {
                let rec = s.seg.record(id)?;
                let vec = s.seg.vector(id)?;
                if let Some(pair) = rec.zip(vec) {
                    out.push(pair);
                }
            }
        }
        Ok(out)
    }

    /// Live (record, vector) pairs of the named segments only (compaction inputs).
    pub fn live_items_of(
        &self,
        names: &[String],
    ) -> Result<Vec<(ItemRecord, Vec<f32>)>, IndexError> {
        let mut out = Vec::new();
        for s in self
            .segments
            .iter()
            .filter(|s| names.contains(&s.entry.name))
        {
            for id in &s.live {
                if let Some(pair) = s.seg.record(id)?.zip(s.seg.vector(id)?) {
                    out.push(pair);
                }
            }
        }
        Ok(out)
    }
}
