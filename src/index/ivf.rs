//! Inverted lists of a big segment: its items clustered by spherical k-means, so that a search
//! scans the codes of the few clusters nearest the query instead of every item.
//!
//! The segment stores its items list after list (ids `offsets[c]..offsets[c + 1]` are list `c`),
//! so a probed list is one contiguous run of codes. In the segment's `codes` database:
//! `ivf_centroids` (`lists × dims` f32) and `ivf_offsets` (`lists + 1` u32), little-endian.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Segments with at least this many items get inverted lists (smaller ones are scanned whole).
pub const IVF_FROM: usize = 4_096;
/// k-means rounds when building the lists.
const ROUNDS: usize = 8;
/// Items sampled per list to fit the centroids.
const SAMPLE_PER_LIST: usize = 64;

/// Lists for a segment of `n` items: about √n (316 at 100k, 1,000 at 1M).
pub fn lists_for(n: usize) -> usize {
    ((n as f64).sqrt() as usize).clamp(16, 4096)
}

/// The inverted lists of a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Lists {
    /// Unit-norm centroids, `lists × dims`.
    pub centroids: Vec<f32>,
    /// Dimensions.
    pub dims: usize,
    /// Where each list starts in `ids` (`lists + 1` values).
    pub offsets: Vec<u32>,
    /// Item ids, list after list.
    pub ids: Vec<u32>,
}

/// `out[i * nb + j] = a_i · b_j` for row-major `a` (`na × dims`) and `b` (`nb × dims`).
fn dots(a: &[f32], b: &[f32], dims: usize, out: &mut Vec<f32>) {
    let (na, nb) = (a.len() / dims, b.len() / dims);
    out.clear();
    out.resize(na * nb, 0.0);
    if na == 0 || nb == 0 {
        return;
    }
    // SAFETY: `a` is na×dims and `b` is nb×dims (read as its transpose, dims×nb, through the
    // strides), `out` is na×nb; every index sgemm computes lies inside them, and `out` is a
    // separate allocation.
    unsafe {
        matrixmultiply::sgemm(
            na,
            dims,
            nb,
            1.0,
            a.as_ptr(),
            dims as isize,
            1,
            b.as_ptr(),
            1,
            dims as isize,
            0.0,
            out.as_mut_ptr(),
            nb as isize,
            1,
        );
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// The index of the largest value of each row of `scores` (`rows × cols`).
fn argmax_rows(scores: &[f32], cols: usize) -> Vec<usize> {
    scores
        .chunks_exact(cols)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (j, &s)| {
                    if s > best.1 {
                        (j, s)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

/// Cluster `vectors` (unit norm, `dims` each) into `lists` lists.
pub fn build(vectors: &[&[f32]], dims: usize, lists: usize, seed: u64) -> Lists {
    let n = vectors.len();
    let lists = lists.clamp(1, n.max(1));
    let mut rng = StdRng::seed_from_u64(seed);
    // Fit on a sample, starting from random distinct items.
    let mut order: Vec<usize> = (0..n).collect();
    for i in 0..n.min(lists * SAMPLE_PER_LIST) {
        let j = rng.random_range(i..n);
        order.swap(i, j);
    }
    let sample: Vec<f32> = order[..n.min(lists * SAMPLE_PER_LIST)]
        .iter()
        .flat_map(|&i| vectors[i].iter().copied())
        .collect();
    let mut centroids: Vec<f32> = order[..lists]
        .iter()
        .flat_map(|&i| vectors[i].iter().copied())
        .collect();
    let mut scores = Vec::new();
    for _ in 0..ROUNDS {
        dots(&sample, &centroids, dims, &mut scores);
        let assign = argmax_rows(&scores, lists);
        let mut sums = vec![0f32; lists * dims];
        let mut counts = vec![0usize; lists];
        for (row, &c) in sample.chunks_exact(dims).zip(&assign) {
            counts[c] += 1;
            for (s, x) in sums[c * dims..(c + 1) * dims].iter_mut().zip(row) {
                *s += x;
            }
        }
        for c in 0..lists {
            if counts[c] == 0 {
                // An empty list restarts from a random sample point.
                let r = rng.random_range(0..sample.len() / dims);
                sums[c * dims..(c + 1) * dims].copy_from_slice(&sample[r * dims..(r + 1) * dims]);
            }
            normalise(&mut sums[c * dims..(c + 1) * dims]);
        }
        centroids = sums;
    }
    // Assign every item, a block at a time.
    let mut members: Vec<Vec<u32>> = vec![Vec::new(); lists];
    const BLOCK: usize = 4096;
    for (b, block) in vectors.chunks(BLOCK).enumerate() {
        let flat: Vec<f32> = block.iter().flat_map(|v| v.iter().copied()).collect();
        dots(&flat, &centroids, dims, &mut scores);
        for (i, c) in argmax_rows(&scores, lists).into_iter().enumerate() {
            members[c].push((b * BLOCK + i) as u32);
        }
    }
    let mut offsets = Vec::with_capacity(lists + 1);
    let mut ids = Vec::with_capacity(n);
    for m in members {
        offsets.push(ids.len() as u32);
        ids.extend(m);
    }
    offsets.push(ids.len() as u32);
    Lists {
        centroids,
        dims,
        offsets,
        ids,
    }
}

fn scores(centroids: &[f32], dims: usize, query: &[f32]) -> Vec<f32> {
    // One query against the centroids: a dot product per list. (A matrix product would pack
    // the whole centroid matrix on every search, which cost more than the products.)
    centroids
        .chunks_exact(dims.max(1))
        .map(|c| super::quant::dot_f32(query, c))
        .collect()
}

/// Every list, nearest to `query` first (for a filtered search whose nearest lists hold too
/// few of its candidates).
pub fn ranked(centroids: &[f32], dims: usize, query: &[f32]) -> Vec<usize> {
    let scores = scores(centroids, dims, query);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// The `nprobe` lists whose centroids are nearest to `query`.
pub fn probe(centroids: &[f32], dims: usize, query: &[f32], nprobe: usize) -> Vec<usize> {
    let scores = scores(centroids, dims, query);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let nprobe = nprobe.clamp(1, order.len().max(1));
    if order.len() > nprobe {
        order.select_nth_unstable_by(nprobe - 1, |&a, &b| scores[b].total_cmp(&scores[a]));
        order.truncate(nprobe);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_partition_the_items_and_probing_finds_the_own_cluster() {
        let mut rng = StdRng::seed_from_u64(3);
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| {
                let mut v: Vec<f32> = (0..32).map(|_| rng.random_range(-1.0..1.0)).collect();
                normalise(&mut v);
                v
            })
            .collect();
        let items: Vec<Vec<f32>> = (0..800)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 8]
                    .iter()
                    .map(|x| x + rng.random_range(-0.05..0.05))
                    .collect();
                normalise(&mut v);
                v
            })
            .collect();
        let refs: Vec<&[f32]> = items.iter().map(|v| v.as_slice()).collect();
        let l = build(&refs, 32, 8, 1);
        let mut all = l.ids.clone();
        all.sort();
        assert_eq!(
            all,
            (0..800).collect::<Vec<u32>>(),
            "every item exactly once"
        );
        assert_eq!(l.offsets.len(), 9);
        // Each item's nearest list holds it.
        for (i, v) in items.iter().enumerate().step_by(37) {
            let c = probe(&l.centroids, 32, v, 1)[0];
            let members = &l.ids[l.offsets[c] as usize..l.offsets[c + 1] as usize];
            assert!(members.contains(&(i as u32)), "item {i}");
        }
    }
}
