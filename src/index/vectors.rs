//! The vectors of one segment and the nearest-neighbour search over them.
//!
//! Two layouts, told apart by the segment's `format`:
//! - **format 2** (written by this build): compact codes in the `codes` database, each array a
//!   single contiguous value that the memory map serves without copying:
//!   - `u8`: one 8-bit code per dimension and item ([`quant::Affine`], with `lo` and `step`),
//!   - `fine`: a 2-bit refinement of each 8-bit code, for the final order of the best few,
//!   - `bits`: one thermometer code per item ([`quant::Thermometer`], with `thresholds`),
//!   - `center`: the segment's mean (the origin of the trees).
//!
//!   Segments of at least [`BuildParams::trees_from`] items also hold arroy trees
//!   (`BinaryQuantizedCosine` over the centred vectors) in `vectors`. A search chooses
//!   candidates by bits — from the trees when the segment has them, by a Hamming scan otherwise —
//!   and scores the best [`SearchParams::rerank`] on the 8-bit codes, then the best few again with
//!   their refinements. About `1.25 × dims` bytes plus 160 bytes per item.
//! - **format 1** (older builds, read only): full `f32` vectors in an arroy `Cosine` index.

use std::num::NonZeroUsize;

use arroy::distances::{BinaryQuantizedCosine, Cosine};
use heed::types::{Bytes, Str};
use heed::{Database, RoTxn, RwTxn};
use rand::rngs::StdRng;
use rand::SeedableRng;
use roaring::RoaringBitmap;

use super::quant;
use super::segment_error::SegmentError;

/// arroy's index number inside the `vectors` database.
pub(super) const ARROY_INDEX: u16 = 0;

pub(super) type FloatTrees = arroy::Database<'static, Cosine>;
pub(super) type BitTrees = arroy::Database<'static, BinaryQuantizedCosine>;
pub(super) type Codes = Database<'static, Str, Bytes>;

/// How a segment is built.
#[derive(Debug, Clone, Copy)]
pub struct BuildParams {
    /// Number of arroy trees; `None` picks one from the item count ([`default_trees`]).
    pub n_trees: Option<usize>,
    /// Seed of the trees' random projections.
    pub seed: u64,
    /// Segments with fewer items hold no trees: a Hamming scan of their sign codes is faster.
    pub trees_from: usize,
    /// Segments with at least this many items get inverted lists ([`super::ivf`]).
    pub ivf_from: usize,
}

/// Segments below this size hold no trees and are searched by scanning their thermometer codes
/// (BENCHMARKS.md: about 1.6 ms for 100k 1280-d items on one thread). By default no segment
/// has trees: arroy's `BinaryQuantizedCosine` trees rank candidates by one bit per dimension,
/// and in the tests they needed a search over most of a segment to match the scan's recall.
/// Whether they pay off for segments of millions of items is still to be measured.
pub const DEFAULT_TREES_FROM: usize = usize::MAX;

impl Default for BuildParams {
    fn default() -> Self {
        BuildParams {
            n_trees: None,
            seed: 42,
            trees_from: DEFAULT_TREES_FROM,
            ivf_from: super::ivf::IVF_FROM,
        }
    }
}

/// Trees for a segment of `n` items.
pub fn default_trees(n: usize) -> usize {
    match n {
        0..=1_000 => 4,
        1_001..=20_000 => 10,
        _ => 20,
    }
}

/// How a search trades time for recall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchParams {
    /// Candidates per segment scored exactly on the int8 codes (at least `k`).
    pub rerank: usize,
    /// ...and at least this share of a segment's items: a segment of a million holds many more
    /// near-ties than the bits can order, so its budget grows with it (BENCHMARKS.md: recall
    /// 0.60 at 1M items in one segment with a flat 200).
    pub rerank_share: f64,
    /// With trees, arroy gathers `rerank × tree_factor` items before ranking them by sign code.
    pub tree_factor: usize,
    /// Size the candidate budgets for at least this many results (0: for as many as asked).
    /// Pages of one query searched with the same `depth` are slices of one ranking.
    pub depth: usize,
    /// Format 1 only: arroy visits `k × n_trees × search_k_factor` nodes per segment.
    pub search_k_factor: usize,
    /// In segments with inverted lists, the lists nearest the query whose items are scanned.
    pub nprobe: usize,
}

/// Inverted lists scanned per segment by default.
pub const DEFAULT_NPROBE: usize = 16;

/// Candidates re-scored per segment by default.
pub const DEFAULT_RERANK: usize = 200;

/// The least share of a segment's items re-scored by default: 0.2%, which is the flat budget
/// at 100k items and 2,000 candidates at 1M.
pub const DEFAULT_RERANK_SHARE: f64 = 0.002;

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            rerank: DEFAULT_RERANK,
            rerank_share: DEFAULT_RERANK_SHARE,
            depth: 0,
            tree_factor: 4,
            search_k_factor: 40,
            nprobe: DEFAULT_NPROBE,
        }
    }
}

/// The re-ranked candidates whose refined score is computed: `k × REFINE_FACTOR`, at least
/// `REFINE_MIN`, over the whole search (the 8-bit scores of different segments estimate the
/// same cosine, so the best few of all segments are refined, not each segment's best few).
const REFINE_FACTOR: usize = 4;
const REFINE_MIN: usize = 40;

impl Shortlist {
    /// No candidates.
    pub fn empty() -> Self {
        Shortlist {
            hits: Vec::new(),
            prepared: None,
        }
    }
}

/// How many of a search's best candidates by 8-bit score are scored again with their
/// refinements (and the most any one segment contributes to them).
pub fn refine_count(k: usize) -> usize {
    (k * REFINE_FACTOR).max(REFINE_MIN)
}

/// The first phase of a search of one segment: its best candidates by their 8-bit codes (in
/// format 1, by their exact scores), at most [`refine_count`] of them, in no order, and what
/// [`Vectors::refine`] needs to score them again.
pub struct Shortlist {
    /// (id, estimated cosine similarity).
    pub hits: Vec<(u32, f32)>,
    /// The query prepared for this segment's codes (`None`: format 1, the scores are exact).
    prepared: Option<quant::Prepared>,
}

/// Where a segment's vectors are.
pub(super) enum Vectors {
    /// Format 1: full-precision arroy cosine index.
    Float(FloatTrees),
    /// Format 2: compact codes, and trees for big segments.
    Compact(Compact),
}

pub(super) struct Compact {
    codes: Codes,
    trees: Option<BitTrees>,
    /// Inverted lists: the centroids and where each list starts (the ids stay in the map).
    ivf: Option<(Vec<f32>, Vec<u32>)>,
    affine: quant::Affine,
    thermo: quant::Thermometer,
    center: Vec<f32>,
    dims: usize,
    len: usize,
}

/// The code arrays of a format-2 segment, borrowed from the memory map.
struct CodeArrays<'t> {
    u8: &'t [u8],
    fine: &'t [u8],
    bits: &'t [u8],
}

fn get<'t>(
    codes: Codes,
    name: &str,
    rtxn: &'t RoTxn,
    field: &str,
    want: Option<usize>,
) -> Result<&'t [u8], SegmentError> {
    let got = codes
        .get(rtxn, field)
        .map_err(|e| SegmentError::Lmdb(name.to_string(), e))?
        .ok_or_else(|| SegmentError::Invalid(name.to_string(), format!("no {field} codes")))?;
    match want {
        Some(want) if got.len() != want => Err(SegmentError::Invalid(
            name.to_string(),
            format!("{field} codes hold {} bytes, expected {want}", got.len()),
        )),
        _ => Ok(got),
    }
}

impl Compact {
    /// Open the codes (checking every array's length against the item count) and, when
    /// present, the trees.
    pub(super) fn open(
        name: &str,
        rtxn: &RoTxn,
        codes: Codes,
        trees: Option<BitTrees>,
        dims: usize,
        len: usize,
    ) -> Result<Self, SegmentError> {
        let floats = |field: &str, n: usize| -> Result<Vec<f32>, SegmentError> {
            Ok(quant::f32s(get(codes, name, rtxn, field, Some(n * 4))?))
        };
        let thresholds = quant::f32s(get(codes, name, rtxn, "thresholds", None)?);
        if dims == 0 || thresholds.is_empty() || !thresholds.len().is_multiple_of(dims) {
            return Err(SegmentError::Invalid(
                name.to_string(),
                "bad thresholds".into(),
            ));
        }
        let compact = Compact {
            codes,
            trees,
            affine: quant::Affine {
                lo: floats("lo", dims)?,
                step: floats("step", dims)?,
            },
            thermo: quant::Thermometer { thresholds, dims },
            center: floats("center", dims)?,
            ivf: None,
            dims,
            len,
        };
        compact.arrays(name, rtxn)?;
        let centroids = codes
            .get(rtxn, "ivf_centroids")
            .map_err(|e| SegmentError::Lmdb(name.to_string(), e))?;
        let ivf = match centroids {
            None => None,
            Some(c) if !c.is_empty() && c.len() % (dims * 4) == 0 => {
                let lists = c.len() / (dims * 4);
                let offsets: Vec<u32> =
                    get(codes, name, rtxn, "ivf_offsets", Some((lists + 1) * 4))?
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
                if !ordered || offsets.last() != Some(&(len as u32)) {
                    return Err(SegmentError::Invalid(
                        name.to_string(),
                        "bad inverted lists".into(),
                    ));
                }
                Some((quant::f32s(c), offsets))
            }
            Some(_) => {
                return Err(SegmentError::Invalid(
                    name.to_string(),
                    "bad inverted-list centroids".into(),
                ))
            }
        };
        Ok(Compact { ivf, ..compact })
    }

    fn arrays<'t>(&self, name: &str, rtxn: &'t RoTxn) -> Result<CodeArrays<'t>, SegmentError> {
        let n = self.len;
        Ok(CodeArrays {
            u8: get(self.codes, name, rtxn, "u8", Some(n * self.dims))?,
            fine: get(
                self.codes,
                name,
                rtxn,
                "fine",
                Some(n * quant::fine_len(self.dims)),
            )?,
            bits: get(
                self.codes,
                name,
                rtxn,
                "bits",
                Some(n * self.thermo.words() * 8),
            )?,
        })
    }
}

impl Vectors {
    /// The vector of item `id` (decoded from its int8 code in format 2).
    pub(super) fn vector(
        &self,
        name: &str,
        rtxn: &RoTxn,
        id: u32,
    ) -> Result<Option<Vec<f32>>, SegmentError> {
        match self {
            Vectors::Float(db) => {
                let reader = arroy::Reader::open(rtxn, ARROY_INDEX, *db)
                    .map_err(|e| SegmentError::Arroy(name.to_string(), e))?;
                reader
                    .item_vector(rtxn, id)
                    .map_err(|e| SegmentError::Arroy(name.to_string(), e))
            }
            Vectors::Compact(c) => {
                let i = id as usize;
                if i >= c.len {
                    return Ok(None);
                }
                let a = c.arrays(name, rtxn)?;
                let f = quant::fine_len(c.dims);
                Ok(Some(c.affine.decode_fine(
                    &a.u8[i * c.dims..(i + 1) * c.dims],
                    &a.fine[i * f..(i + 1) * f],
                )))
            }
        }
    }

    /// The best of `candidates` (not empty; `k > 0`: [`super::segment::Segment::shortlist`]
    /// checks) for `query`: the search's first phase.
    pub(super) fn shortlist(
        &self,
        name: &str,
        rtxn: &RoTxn,
        query: &[f32],
        k: usize,
        candidates: &RoaringBitmap,
        params: &SearchParams,
    ) -> Result<Shortlist, SegmentError> {
        match self {
            Vectors::Float(db) => Ok(Shortlist {
                hits: search_float(name, rtxn, *db, query, k, candidates, params)?,
                prepared: None,
            }),
            Vectors::Compact(c) => c.shortlist(name, rtxn, query, k, candidates, params),
        }
    }

    /// The search's second phase: `hits` (ids from `shortlist`) scored again with their 2-bit
    /// refinements, which settle the order of near ties where the 8-bit error is as large as
    /// the gaps.
    pub(super) fn refine(
        &self,
        name: &str,
        rtxn: &RoTxn,
        shortlist: &Shortlist,
        hits: &mut [(u32, f32)],
    ) -> Result<(), SegmentError> {
        let (Vectors::Compact(c), Some(prepared)) = (self, &shortlist.prepared) else {
            return Ok(());
        };
        let a = c.arrays(name, rtxn)?;
        let f = quant::fine_len(c.dims);
        for (id, score) in hits.iter_mut() {
            let i = *id as usize;
            if i < c.len {
                *score = quant::Affine::dot_fine(
                    prepared,
                    &a.u8[i * c.dims..(i + 1) * c.dims],
                    &a.fine[i * f..(i + 1) * f],
                );
            }
        }
        Ok(())
    }
}

fn search_float(
    name: &str,
    rtxn: &RoTxn,
    db: FloatTrees,
    query: &[f32],
    k: usize,
    candidates: &RoaringBitmap,
    params: &SearchParams,
) -> Result<Vec<(u32, f32)>, SegmentError> {
    let arroy_err = |e| SegmentError::Arroy(name.to_string(), e);
    let reader = arroy::Reader::open(rtxn, ARROY_INDEX, db).map_err(arroy_err)?;
    let mut q = reader.nns(k);
    q.candidates(candidates);
    let search_k = k.max(10) * reader.n_trees().max(1) * params.search_k_factor.max(1);
    if let Some(sk) = NonZeroUsize::new(search_k) {
        q.search_k(sk);
    }
    let found = q.by_vector(rtxn, query).map_err(arroy_err)?;
    // arroy's cosine distance is (1 - cos) / 2.
    Ok(found
        .into_iter()
        .map(|(id, d)| (id, 1.0 - 2.0 * d))
        .collect())
}

impl Compact {
    fn shortlist(
        &self,
        name: &str,
        rtxn: &RoTxn,
        query: &[f32],
        k: usize,
        candidates: &RoaringBitmap,
        params: &SearchParams,
    ) -> Result<Shortlist, SegmentError> {
        let a = self.arrays(name, rtxn)?;
        let by_share = (self.len as f64 * params.rerank_share.clamp(0.0, 1.0)) as usize;
        let rerank = params.rerank.max(k).max(by_share);
        let pool: Vec<u32> = if candidates.len() as usize <= rerank {
            candidates.iter().collect()
        } else if let Some(trees) = self
            .trees
            .filter(|_| candidates.len() * 2 >= self.len as u64)
        {
            self.tree_candidates(name, rtxn, trees, query, rerank, candidates, params)?
        } else if let Some(ivf) = self.ivf.as_ref().filter(|(centroids, _)| {
            // Probe when the nearest lists should hold the budget of candidates (a filter
            // that keeps few items is cheaper to scan: its items' bits, nothing else).
            let lists = (centroids.len() / self.dims.max(1)).max(1) as u64;
            candidates.len() * (params.nprobe as u64).clamp(1, lists) >= rerank as u64 * lists
        }) {
            self.probe_candidates(&a, ivf, query, rerank, candidates, params)
        } else {
            self.scan_candidates(&a, query, rerank, candidates)
        };
        let prepared = self.affine.prepare(query);
        let mut pool = pool;
        pool.retain(|&id| (id as usize) < self.len);
        let code = |id: u32| &a.u8[id as usize * self.dims..(id as usize + 1) * self.dims];
        // The codes are at random places of the map: each one is requested a few candidates
        // ahead, so that its loads overlap the scoring of the ones before it.
        const AHEAD: usize = 4;
        for &id in pool.iter().take(AHEAD) {
            quant::prefetch(code(id));
        }
        let mut scored: Vec<(u32, f32)> = Vec::with_capacity(pool.len());
        for (j, &id) in pool.iter().enumerate() {
            if let Some(&next) = pool.get(j + AHEAD) {
                quant::prefetch(code(next));
            }
            scored.push((id, quant::Affine::dot(&prepared, code(id))));
        }
        let keep = refine_count(k).min(scored.len());
        if keep > 0 && keep < scored.len() {
            scored.select_nth_unstable_by(keep - 1, |x, y| y.1.total_cmp(&x.1));
        }
        scored.truncate(keep);
        Ok(Shortlist {
            hits: scored,
            prepared: Some(prepared),
        })
    }

    /// The `r` candidates whose sign codes are nearest to the query's.
    fn scan_candidates(
        &self,
        a: &CodeArrays,
        query: &[f32],
        r: usize,
        candidates: &RoaringBitmap,
    ) -> Vec<u32> {
        let mut q = vec![0u64; self.thermo.words()];
        self.thermo.encode(query, &mut q);
        let dist: Vec<(u32, u16)> = if candidates.len() as usize == self.len {
            // Every item: one pass over the contiguous codes.
            let mut all = Vec::with_capacity(self.len);
            quant::hamming_all(a.bits, &q, &mut all);
            all.into_iter()
                .enumerate()
                .map(|(i, d)| (i as u32, d))
                .collect()
        } else {
            candidates
                .iter()
                .filter(|&id| (id as usize) < self.len)
                .map(|id| (id, quant::hamming_at(a.bits, id as usize, &q) as u16))
                .collect()
        };
        quant::smallest(&dist, r, self.thermo.thresholds.len())
    }

    /// The `r` candidates nearest by thermometer code among the items of the `nprobe` inverted
    /// lists nearest the query.
    fn probe_candidates(
        &self,
        a: &CodeArrays,
        (centroids, offsets): &(Vec<f32>, Vec<u32>),
        query: &[f32],
        r: usize,
        candidates: &RoaringBitmap,
        params: &SearchParams,
    ) -> Vec<u32> {
        let all = candidates.len() as usize == self.len;
        let mut q = vec![0u64; self.thermo.words()];
        self.thermo.encode(query, &mut q);
        let w8 = q.len() * 8;
        let mut dist: Vec<(u32, u16)> = Vec::new();
        let mut run = Vec::new();
        let mut scan = |list: usize, dist: &mut Vec<(u32, u16)>| {
            let (from, to) = (offsets[list] as usize, offsets[list + 1] as usize);
            run.clear();
            quant::hamming_all(&a.bits[from * w8..to * w8], &q, &mut run);
            dist.extend(
                run.iter()
                    .enumerate()
                    .map(|(i, &d)| ((from + i) as u32, d))
                    .filter(|&(id, _)| all || candidates.contains(id)),
            );
        };
        let probed = super::ivf::probe(centroids, self.dims, query, params.nprobe);
        for &list in &probed {
            scan(list, &mut dist);
        }
        if !all && dist.len() < r {
            // A filter that keeps few items of the nearest lists: further lists, nearest
            // first, until the budget is full, so that a filter never costs results.
            for list in super::ivf::ranked(centroids, self.dims, query) {
                if dist.len() >= r {
                    break;
                }
                if !probed.contains(&list) {
                    scan(list, &mut dist);
                }
            }
        }
        quant::smallest(&dist, r, self.thermo.thresholds.len())
    }

    /// The `r` candidates that arroy's sign-code trees find nearest.
    #[allow(clippy::too_many_arguments)]
    fn tree_candidates(
        &self,
        name: &str,
        rtxn: &RoTxn,
        trees: BitTrees,
        query: &[f32],
        r: usize,
        candidates: &RoaringBitmap,
        params: &SearchParams,
    ) -> Result<Vec<u32>, SegmentError> {
        let arroy_err = |e| SegmentError::Arroy(name.to_string(), e);
        let reader = arroy::Reader::open(rtxn, ARROY_INDEX, trees).map_err(arroy_err)?;
        let centred: Vec<f32> = query.iter().zip(&self.center).map(|(x, c)| x - c).collect();
        let mut q = reader.nns(r);
        q.candidates(candidates);
        if let Some(sk) = NonZeroUsize::new(r * params.tree_factor.max(1)) {
            q.search_k(sk);
            q.oversampling(NonZeroUsize::MIN);
        }
        let found = q.by_vector(rtxn, &centred).map_err(arroy_err)?;
        Ok(found.into_iter().map(|(id, _)| id).collect())
    }
}

/// Write the format-2 vectors of `vectors` (item ids in order) into `codes` and, for a segment
/// of at least `params.trees_from` items, arroy trees into `trees`.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_compact(
    name: &str,
    wtxn: &mut RwTxn,
    codes: Codes,
    trees: BitTrees,
    dims: usize,
    vectors: &[&[f32]],
    lists: Option<&super::ivf::Lists>,
    params: BuildParams,
    tmpdir: &std::path::Path,
) -> Result<(), SegmentError> {
    let lmdb = |e| SegmentError::Lmdb(name.to_string(), e);
    let arroy_err = |e| SegmentError::Arroy(name.to_string(), e);
    let n = vectors.len();
    let center = quant::mean(vectors.iter().copied(), dims);
    let affine = quant::Affine::fit(vectors, dims);
    let thermo = quant::Thermometer::fit(vectors, dims, quant::Thermometer::planes_for(dims));
    let w = thermo.words();
    let mut u8s = vec![0u8; n * dims];
    let f = quant::fine_len(dims);
    let mut fine = vec![0u8; n * f];
    let mut bits = vec![0u64; n * w];
    for (i, v) in vectors.iter().enumerate() {
        let code = &mut u8s[i * dims..(i + 1) * dims];
        affine.encode(v, code);
        affine.encode_fine(v, code, &mut fine[i * f..(i + 1) * f]);
        thermo.encode(v, &mut bits[i * w..(i + 1) * w]);
    }
    let bits: Vec<u8> = bits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let fields: [(&str, &[u8]); 7] = [
        ("center", &quant::f32_bytes(&center)),
        ("lo", &quant::f32_bytes(&affine.lo)),
        ("step", &quant::f32_bytes(&affine.step)),
        ("thresholds", &quant::f32_bytes(&thermo.thresholds)),
        ("u8", &u8s),
        ("fine", &fine),
        ("bits", &bits),
    ];
    for (field, bytes) in fields {
        codes.put(wtxn, field, bytes).map_err(lmdb)?;
    }
    if let Some(lists) = lists {
        // The items are stored list after list: list `c` is the ids `offsets[c]..offsets[c + 1]`.
        let offsets: Vec<u8> = lists.offsets.iter().flat_map(|x| x.to_le_bytes()).collect();
        codes
            .put(wtxn, "ivf_centroids", &quant::f32_bytes(&lists.centroids))
            .map_err(lmdb)?;
        codes.put(wtxn, "ivf_offsets", &offsets).map_err(lmdb)?;
    }
    if n >= params.trees_from.max(1) {
        let mut writer = arroy::Writer::<BinaryQuantizedCosine>::new(trees, ARROY_INDEX, dims);
        writer.set_tmpdir(tmpdir);
        let mut centred = vec![0f32; dims];
        for (id, v) in vectors.iter().enumerate() {
            for ((c, x), m) in centred.iter_mut().zip(v.iter()).zip(&center) {
                *c = x - m;
            }
            writer
                .add_item(wtxn, id as u32, &centred)
                .map_err(arroy_err)?;
        }
        let mut rng = StdRng::seed_from_u64(params.seed);
        writer
            .builder(&mut rng)
            .n_trees(params.n_trees.unwrap_or_else(|| default_trees(n)))
            .build(wtxn)
            .map_err(arroy_err)?;
    }
    Ok(())
}
