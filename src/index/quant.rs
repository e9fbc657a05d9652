//! Compact codes of embeddings, as format-2 segments store them:
//!
//! - [`Affine`]: 8 bits per dimension over the range the segment spans in that dimension. The
//!   re-rank scores a float query against these codes.
//! - [`Thermometer`]: 1 to 4 bits per dimension, compared by Hamming distance, to choose the
//!   candidates. Image embeddings (post-ReLU features) are all positive, so raw signs would say
//!   nothing; the thresholds are the segment's own per-dimension quantiles.

/// Words of 64 bits per code of `bits` bits.
pub fn words(bits: usize) -> usize {
    bits.div_ceil(64)
}

/// Per-dimension affine 8-bit quantisation (like faiss's SQ8): dimension `d` of a vector is
/// `lo[d] + code[d] · step[d]`, with `lo` and `step` taken from the range the segment's own
/// vectors span in that dimension, so every dimension uses all 256 levels.
#[derive(Debug, Clone, PartialEq)]
pub struct Affine {
    /// The smallest value of each dimension.
    pub lo: Vec<f32>,
    /// The width of one level in each dimension.
    pub step: Vec<f32>,
}

impl Affine {
    /// The quantiser of `vectors` (all of `dims` dimensions), over each dimension's whole
    /// range. (Clamping the extreme 0.1% of each dimension made the steps finer but lost recall:
    /// the large components are the ones that tell neighbours apart.)
    pub fn fit(vectors: &[&[f32]], dims: usize) -> Self {
        let mut lo = vec![f32::INFINITY; dims];
        let mut hi = vec![f32::NEG_INFINITY; dims];
        for v in vectors {
            for ((l, h), x) in lo.iter_mut().zip(hi.iter_mut()).zip(v.iter()) {
                *l = l.min(*x);
                *h = h.max(*x);
            }
        }
        let step = lo
            .iter()
            .zip(&hi)
            .map(|(l, h)| if h > l { (h - l) / 255.0 } else { 0.0 })
            .collect();
        let lo = lo
            .into_iter()
            .map(|l| if l.is_finite() { l } else { 0.0 })
            .collect();
        Affine { lo, step }
    }

    /// The code of `v` into `out`.
    pub fn encode(&self, v: &[f32], out: &mut [u8]) {
        for (((o, x), l), s) in out.iter_mut().zip(v).zip(&self.lo).zip(&self.step) {
            *o = if *s > 0.0 {
                ((x - l) / s).round().clamp(0.0, 255.0) as u8
            } else {
                0
            };
        }
    }

    /// The 2-bit refinement of `v`'s code `code` into `out` (`fine_len(dims)` bytes, four
    /// dimensions per byte): where in its step each value lies, in quarters. With it a value is
    /// known to an eighth of a step instead of half a step.
    pub fn encode_fine(&self, v: &[f32], code: &[u8], out: &mut [u8]) {
        out.iter_mut().for_each(|o| *o = 0);
        for (d, (((x, c), l), s)) in v.iter().zip(code).zip(&self.lo).zip(&self.step).enumerate() {
            let r = if *s > 0.0 {
                ((x - l) / s - *c as f32 + 0.5) * 4.0
            } else {
                0.0
            };
            let q = (r.floor().clamp(0.0, 3.0)) as u8;
            out[d / 4] |= q << (2 * (d % 4));
        }
    }

    /// The vector a code and its refinement stand for.
    pub fn decode_fine(&self, code: &[u8], fine: &[u8]) -> Vec<f32> {
        code.iter()
            .zip(&self.lo)
            .zip(&self.step)
            .enumerate()
            .map(|(d, ((&c, l), s))| l + (c as f32 + fine_offset(fine, d)) * s)
            .collect()
    }

    /// The dot product of the prepared query with the vector of `code` and its refinement.
    /// The refinement's offsets are `0.25·f − 0.375` for `f` in 0..4, so its term is
    /// `0.25 · Σ (q ⊙ step)[d] · f[d] − 0.375 · Σ (q ⊙ step)`; the first sum runs over the
    /// refinement bytes once per 2-bit position, against the query's values at that position.
    #[inline]
    pub fn dot_fine(prepared: &Prepared, code: &[u8], fine: &[u8]) -> f32 {
        prepared.base
            + dot_u8(&prepared.scaled, code)
            + 0.25 * dot_fine_bits(&prepared.by_position, fine)
            - 0.375 * prepared.scaled_sum
    }

    /// The vector a code stands for.
    pub fn decode(&self, code: &[u8]) -> Vec<f32> {
        code.iter()
            .zip(&self.lo)
            .zip(&self.step)
            .map(|((&c, l), s)| l + c as f32 * s)
            .collect()
    }

    /// What [`Affine::dot`] needs of a query.
    pub fn prepare(&self, q: &[f32]) -> Prepared {
        let scaled: Vec<f32> = q.iter().zip(&self.step).map(|(a, b)| a * b).collect();
        let bytes = fine_len(scaled.len());
        let by_position = std::array::from_fn(|j| {
            (0..bytes)
                .map(|i| scaled.get(4 * i + j).copied().unwrap_or(0.0))
                .collect()
        });
        let (fixed, fixed_scale) = to_fixed(&scaled);
        Prepared {
            base: q.iter().zip(&self.lo).map(|(a, b)| a * b).sum(),
            scaled_sum: scaled.iter().sum(),
            scaled,
            fixed,
            fixed_scale,
            by_position,
        }
    }

    /// The dot product of the prepared query with the vector of `code`, in integer arithmetic
    /// (the query's `q ⊙ step` in 16-bit fixed point: its relative error, under 2⁻¹⁵ of the
    /// largest term, is far below the 8-bit code's own). The re-rank's cost.
    #[inline]
    pub fn dot(prepared: &Prepared, code: &[u8]) -> f32 {
        prepared.base + prepared.fixed_scale * dot_u8_i16(&prepared.fixed, code) as f32
    }
}

/// A query prepared for one segment's codes: `q · lo`, `q ⊙ step`, the latter's sum, and its
/// values split by position within a refinement byte (`by_position[j][i]` is dimension `4i + j`).
#[derive(Debug, Clone)]
pub struct Prepared {
    base: f32,
    scaled: Vec<f32>,
    scaled_sum: f32,
    /// `scaled` in fixed point: `scaled[d] ≈ fixed[d] · fixed_scale`.
    fixed: Vec<i16>,
    fixed_scale: f32,
    by_position: [Vec<f32>; 4],
}

/// `Σ_i Σ_j by_position[j][i] · ((fine[i] >> 2j) & 3)`, vectorised where the CPU allows.
#[inline]
fn dot_fine_bits(by_position: &[Vec<f32>; 4], fine: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_fine_bits_avx2(by_position, fine) };
    }
    dot_fine_bits_portable(by_position, fine)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fine_bits_avx2(by_position: &[Vec<f32>; 4], fine: &[u8]) -> f32 {
    dot_fine_bits_portable(by_position, fine)
}

#[inline(always)]
fn dot_fine_bits_portable(by_position: &[Vec<f32>; 4], fine: &[u8]) -> f32 {
    const LANES: usize = 16;
    let mut total = 0f32;
    for (j, q) in by_position.iter().enumerate() {
        let shift = 2 * j as u32;
        let mut acc = [0f32; LANES];
        let n = q.len().min(fine.len());
        let (qc, qr) = q[..n].split_at(n - n % LANES);
        let (fc, fr) = fine[..n].split_at(qc.len());
        for (qs, fs) in qc.chunks_exact(LANES).zip(fc.chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += qs[l] * ((fs[l] >> shift) & 3) as f32;
            }
        }
        total += acc.iter().sum::<f32>()
            + qr.iter()
                .zip(fr)
                .map(|(a, &b)| a * ((b >> shift) & 3) as f32)
                .sum::<f32>();
    }
    total
}

/// `Σ a[i] · b[i]` for two float vectors, vectorised where the CPU allows (AVX2 and FMA on
/// x86_64, detected at run time).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_f32_avx2(a, b) };
    }
    dot_f32_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_portable(a, b)
}

#[inline(always)]
fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let n = a.len().min(b.len());
    let mut acc = [0f32; LANES];
    let (ac, ar) = a[..n].split_at(n - n % LANES);
    let (bc, br) = b[..n].split_at(ac.len());
    for (xs, ys) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += xs[l] * ys[l];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

/// `v` in 16-bit fixed point, with the scale that keeps every 32-bit partial sum of
/// [`dot_u8_i16`] (`dims / 8` products of a code byte and a value per lane) from overflowing;
/// the lanes are added in 64 bits.
fn to_fixed(v: &[f32]) -> (Vec<i16>, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    // Each of the 8 lanes of the AVX2 sum adds `dims / 8` products of at most 255 · top.
    let per_lane = v.len().div_ceil(8).max(1) as f64;
    let top = (i32::MAX as f64 / (255.0 * per_lane)).min(i16::MAX as f64) as f32;
    if max == 0.0 || !max.is_finite() {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / top;
    let fixed = v.iter().map(|x| (x / scale).round() as i16).collect();
    (fixed, scale)
}

/// `Σ q[i] · code[i]` in integers: AVX2's multiply-add of 16-bit pairs on x86_64 (detected at
/// run time), a plain loop the compiler vectorises elsewhere (NEON on arm64).
#[inline]
pub fn dot_u8_i16(q: &[i16], code: &[u8]) -> i64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_u8_i16_avx2(q, code) };
    }
    dot_u8_i16_portable(q, code)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_u8_i16_avx2(q: &[i16], code: &[u8]) -> i64 {
    use std::arch::x86_64::*;
    let n = q.len().min(code.len());
    let body = n - n % 16;
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i < body {
        // SAFETY: `i + 16 <= n`, so 16 code bytes and 16 query values are in bounds.
        let c = _mm256_cvtepu8_epi16(_mm_loadu_si128(code.as_ptr().add(i) as *const __m128i));
        let w = _mm256_loadu_si256(q.as_ptr().add(i) as *const __m256i);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(c, w));
        i += 16;
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
    lanes.iter().map(|&x| x as i64).sum::<i64>() + dot_u8_i16_portable(&q[body..n], &code[body..n])
}

#[inline(always)]
fn dot_u8_i16_portable(q: &[i16], code: &[u8]) -> i64 {
    const LANES: usize = 8;
    let mut acc = [0i32; LANES];
    let n = q.len().min(code.len());
    let (qc, qr) = q[..n].split_at(n - n % LANES);
    let (cc, cr) = code[..n].split_at(qc.len());
    for (qs, cs) in qc.chunks_exact(LANES).zip(cc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += qs[l] as i32 * cs[l] as i32;
        }
    }
    acc.iter().map(|&x| x as i64).sum::<i64>()
        + qr.iter()
            .zip(cr)
            .map(|(&a, &b)| a as i64 * b as i64)
            .sum::<i64>()
}

/// Ask the CPU to start loading `bytes` into its caches (a hint; nothing where the
/// architecture has no stable prefetch instruction). The re-rank reads codes at random places
/// of the memory map, and waiting for each one is most of its time.
#[inline]
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch only hints; the address is inside a live slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                line.as_ptr() as *const i8,
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Bytes of the 2-bit refinement of a `dims`-dimensional code.
pub fn fine_len(dims: usize) -> usize {
    dims.div_ceil(4)
}

/// Where in its step a refined value lies (the centres of the step's quarters).
const FINE_OFFSETS: [f32; 4] = [-0.375, -0.125, 0.125, 0.375];

fn fine_offset(fine: &[u8], d: usize) -> f32 {
    FINE_OFFSETS[((fine[d / 4] >> (2 * (d % 4))) & 3) as usize]
}

/// `Σ q[i] · code[i]`, with the CPU's vector instructions where it has them (AVX2 and FMA
/// on x86_64, detected at run time; the baseline build may not assume them).
#[inline]
pub fn dot_u8(q: &[f32], code: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_u8_avx2(q, code) };
    }
    dot_u8_portable(q, code)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_u8_avx2(q: &[f32], code: &[u8]) -> f32 {
    dot_u8_portable(q, code)
}

#[inline(always)]
fn dot_u8_portable(q: &[f32], code: &[u8]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (qc, qr) = q.split_at(q.len() - q.len() % LANES);
    let (cc, cr) = code.split_at(qc.len());
    for (qs, cs) in qc.chunks_exact(LANES).zip(cc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += qs[l] * cs[l] as f32;
        }
    }
    let tail: f32 = qr.iter().zip(cr).map(|(a, &b)| a * b as f32).sum();
    acc.iter().sum::<f32>() + tail
}

/// Thermometer codes: each dimension compared with `planes` thresholds (the segment's own
/// quantiles of that dimension), one bit per comparison. The Hamming distance of two codes is
/// the L1 distance of their levels: a cheap, coarse stand-in for the distance of the vectors
/// that picks the candidates the re-rank then scores exactly. One plane is the sign code of the
/// vector minus the per-dimension median; fewer dimensions get more planes.
#[derive(Debug, Clone, PartialEq)]
pub struct Thermometer {
    /// Thresholds, plane after plane (`planes × dims`).
    pub thresholds: Vec<f32>,
    /// Dimensions.
    pub dims: usize,
}

impl Thermometer {
    /// Planes for `dims` dimensions: about 1,280 bits per code, from 1 to 4 planes.
    pub fn planes_for(dims: usize) -> usize {
        (1280 / dims.max(1)).clamp(1, 4)
    }

    /// Thresholds at the quantiles `i / (planes + 1)` of each dimension of `vectors`.
    pub fn fit(vectors: &[&[f32]], dims: usize, planes: usize) -> Self {
        let mut thresholds = vec![0f32; planes * dims];
        let mut column = Vec::with_capacity(vectors.len());
        for d in 0..dims {
            column.clear();
            column.extend(vectors.iter().map(|v| v[d]));
            // Each quantile by selection, not a sort: O(n) per plane (a merge of 1M items
            // fits 1,280 dimensions).
            let n = column.len();
            for p in 0..planes {
                thresholds[p * dims + d] = if n == 0 {
                    0.0
                } else {
                    let at = (n * (p + 1) / (planes + 1)).min(n - 1);
                    *column.select_nth_unstable_by(at, f32::total_cmp).1
                };
            }
        }
        Thermometer { thresholds, dims }
    }

    /// Planes of this code.
    pub fn planes(&self) -> usize {
        self.thresholds.len() / self.dims.max(1)
    }

    /// Words of one code.
    pub fn words(&self) -> usize {
        words(self.thresholds.len())
    }

    /// The code of `v` into `out` (`self.words()` words).
    pub fn encode(&self, v: &[f32], out: &mut [u64]) {
        out.iter_mut().for_each(|w| *w = 0);
        for (p, plane) in self.thresholds.chunks_exact(self.dims.max(1)).enumerate() {
            for (d, (x, t)) in v.iter().zip(plane).enumerate() {
                if x > t {
                    let bit = p * self.dims + d;
                    out[bit / 64] |= 1 << (bit % 64);
                }
            }
        }
    }
}

/// The mean of `vectors` (all of `dims` dimensions); zeros when there are none.
pub fn mean<'a>(vectors: impl IntoIterator<Item = &'a [f32]>, dims: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dims];
    let mut n = 0usize;
    for v in vectors {
        for (s, x) in sum.iter_mut().zip(v) {
            *s += *x as f64;
        }
        n += 1;
    }
    sum.into_iter()
        .map(|s| if n == 0 { 0.0 } else { (s / n as f64) as f32 })
        .collect()
}

/// Hamming distance of two sign codes.
#[inline]
pub fn hamming(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// Little-endian bytes of `f32`s.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `f32`s from little-endian bytes (a trailing partial value is ignored).
pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The Hamming distance between `q` and each code of `bits` (codes of `q.len()` words, one after
/// another), into `out`: the scan of a whole segment. Uses the CPU's population count and
/// vector instructions where it has them (detected at run time on x86_64).
pub fn hamming_all(bits: &[u8], q: &[u64], out: &mut Vec<u16>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
    {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { hamming_all_avx2(bits, q, out) };
    }
    hamming_all_portable(bits, q, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn hamming_all_avx2(bits: &[u8], q: &[u64], out: &mut Vec<u16>) {
    hamming_all_portable(bits, q, out)
}

#[inline(always)]
fn hamming_all_portable(bits: &[u8], q: &[u64], out: &mut Vec<u16>) {
    // Plain loops over fixed-size arrays: iterator adaptors would be separate functions,
    // compiled without the caller's target features.
    macro_rules! fixed {
        ($($w:literal),*) => {
            match q.len() {
                $($w => return scan_fixed::<$w>(bits, q.try_into().expect("length checked"), out),)*
                _ => {}
            }
        };
    }
    fixed!(2, 4, 8, 12, 16, 20, 24, 32);
    let w = q.len();
    if w == 0 {
        return;
    }
    let n = bits.len() / (w * 8);
    out.reserve(n);
    for i in 0..n {
        let mut d = 0u32;
        for (j, y) in q.iter().enumerate() {
            let off = (i * w + j) * 8;
            let x = u64::from_le_bytes(bits[off..off + 8].try_into().expect("8 bytes"));
            d += (x ^ y).count_ones();
        }
        out.push(d as u16);
    }
}

#[inline(always)]
fn scan_fixed<const W: usize>(bits: &[u8], q: &[u64; W], out: &mut Vec<u16>) {
    let n = bits.len() / (W * 8);
    out.reserve(n);
    for i in 0..n {
        let code = &bits[i * W * 8..(i + 1) * W * 8];
        let mut d = 0u32;
        let mut j = 0;
        while j < W {
            let mut b = [0u8; 8];
            b.copy_from_slice(&code[j * 8..j * 8 + 8]);
            d += (u64::from_le_bytes(b) ^ q[j]).count_ones();
            j += 1;
        }
        out.push(d as u16);
    }
}

/// Hamming distance between `q` and sign code `i` of a little-endian byte array, without copying.
#[inline]
pub fn hamming_at(bytes: &[u8], i: usize, q: &[u64]) -> u32 {
    let c = &bytes[i * q.len() * 8..(i + 1) * q.len() * 8];
    c.chunks_exact(8)
        .zip(q)
        .map(|(b, y)| {
            let x = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            (x ^ y).count_ones()
        })
        .sum()
}

/// The indices of the `r` smallest of `dist` (ties broken by position), in no particular order.
/// Distances are small integers (Hamming distances up to the dimension count), so a histogram
/// finds the cut in one pass.
pub fn smallest(dist: &[(u32, u16)], r: usize, max_dist: usize) -> Vec<u32> {
    if dist.len() <= r {
        return dist.iter().map(|&(i, _)| i).collect();
    }
    let mut hist = vec![0usize; max_dist + 2];
    for &(_, d) in dist {
        hist[(d as usize).min(max_dist + 1)] += 1;
    }
    let (mut cut, mut below) = (0usize, 0usize);
    while cut < hist.len() && below + hist[cut] < r {
        below += hist[cut];
        cut += 1;
    }
    // Everything under `cut`, then enough of those exactly at `cut`.
    let mut at_cut = r - below;
    let mut out = Vec::with_capacity(r);
    for &(i, d) in dist {
        let d = d as usize;
        if d < cut {
            out.push(i);
        } else if d == cut && at_cut > 0 {
            out.push(i);
            at_cut -= 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn affine_codes_keep_the_dot_product() {
        let vs: Vec<Vec<f32>> = (0..50)
            .map(|j| {
                unit(
                    (0..300)
                        .map(|i| ((i * 37 + j * 11) % 101) as f32 / 101.0)
                        .collect(),
                )
            })
            .collect();
        let refs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
        let q = Affine::fit(&refs, 300);
        let mut code = vec![0u8; 300];
        q.encode(&vs[3], &mut code);
        let approx = Affine::dot(&q.prepare(&vs[7]), &code);
        let exact: f32 = vs[3].iter().zip(&vs[7]).map(|(a, b)| a * b).sum();
        assert!((approx - exact).abs() < 1e-3, "{approx} vs {exact}");
        let back = q.decode(&code);
        for ((a, b), s) in vs[3].iter().zip(&back).zip(&q.step) {
            assert!((a - b).abs() <= s / 2.0 + 1e-6);
        }
    }

    #[test]
    fn the_fixed_point_dot_matches_the_float_one_without_overflow() {
        for dims in [7, 256, 1280, 1283, 4096] {
            let q: Vec<f32> = (0..dims)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.4)
                .collect();
            let code: Vec<u8> = (0..dims).map(|i| ((i * 31) % 256) as u8).collect();
            let (fixed, scale) = to_fixed(&q);
            let got = dot_u8_i16(&fixed, &code) as f32 * scale;
            let want = dot_u8(&q, &code);
            let size: f32 = q.iter().map(|x| x.abs() * 255.0).sum();
            assert!((got - want).abs() <= 1e-4 * size, "{dims}: {got} vs {want}");
            // The worst case for the 32-bit sums: every code byte 255, every value the largest.
            let (fixed, scale) = to_fixed(&vec![1.0; dims]);
            let top = dot_u8_i16(&fixed, &vec![255; dims]) as f32 * scale;
            assert!((top - 255.0 * dims as f32).abs() <= 1e-3 * 255.0 * dims as f32);
            assert_eq!(
                dot_u8_i16(&fixed, &code),
                dot_u8_i16_portable(&fixed, &code)
            );
        }
        assert_eq!(to_fixed(&[0.0; 4]).1, 0.0);
    }

    #[test]
    fn the_refinement_quarters_the_error() {
        let vs: Vec<Vec<f32>> = (0..50)
            .map(|j| {
                unit(
                    (0..301)
                        .map(|i| ((i * 37 + j * 11) % 101) as f32 / 101.0)
                        .collect(),
                )
            })
            .collect();
        let refs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
        let q = Affine::fit(&refs, 301);
        let mut code = vec![0u8; 301];
        let mut fine = vec![0u8; fine_len(301)];
        q.encode(&vs[3], &mut code);
        q.encode_fine(&vs[3], &code, &mut fine);
        let back = q.decode_fine(&code, &fine);
        for ((a, b), s) in vs[3].iter().zip(&back).zip(&q.step) {
            assert!((a - b).abs() <= s / 8.0 + 1e-6, "{a} {b} {s}");
        }
        let exact: f32 = vs[3].iter().zip(&vs[7]).map(|(a, b)| a * b).sum();
        let fine_dot = Affine::dot_fine(&q.prepare(&vs[7]), &code, &fine);
        let via_decode: f32 = back.iter().zip(&vs[7]).map(|(a, b)| a * b).sum();
        assert!(
            (fine_dot - via_decode).abs() < 1e-4,
            "{fine_dot} vs {via_decode}"
        );
        let coarse = Affine::dot(&q.prepare(&vs[7]), &code);
        assert!((fine_dot - exact).abs() <= (coarse - exact).abs() + 1e-4);
        assert!((fine_dot - exact).abs() < 3e-4, "{fine_dot} vs {exact}");
    }

    #[test]
    fn constant_dimensions_and_odd_lengths() {
        let vs = [vec![0.5f32, 1.0, 0.0], vec![0.5, 0.0, 1.0]];
        let refs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
        let q = Affine::fit(&refs, 3);
        assert_eq!(q.step[0], 0.0);
        let mut code = vec![9u8; 3];
        q.encode(&vs[0], &mut code);
        assert_eq!(code, [0, 255, 0]);
        assert_eq!(q.decode(&code), vs[0]);
        assert_eq!(dot_u8(&[1.0, 2.0, 3.0], &[1, 1, 1]), 6.0);
    }

    #[test]
    fn thermometer_hamming_is_the_level_distance() {
        let vs: Vec<Vec<f32>> = (0..100).map(|i| vec![i as f32, (99 - i) as f32]).collect();
        let refs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
        let t = Thermometer::fit(&refs, 2, 3);
        assert_eq!(t.planes(), 3);
        let (mut a, mut b) = (vec![0u64; t.words()], vec![0u64; t.words()]);
        t.encode(&vs[0], &mut a);
        t.encode(&vs[99], &mut b);
        // Level 0 vs level 3 in both dimensions.
        assert_eq!(hamming(&a, &b), 6);
        t.encode(&vs[60], &mut b);
        assert_eq!(hamming(&a, &b), 4);
        assert_eq!(Thermometer::planes_for(1280), 1);
        assert_eq!(Thermometer::planes_for(256), 4);
    }

    #[test]
    fn codes_read_back_from_bytes() {
        let (a, b) = ([0b1011u64, 7], [0b0001u64, 5]);
        let bytes: Vec<u8> = a.iter().chain(&b).flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(hamming_at(&bytes, 1, &a), hamming(&a, &b));
        let mut all = Vec::new();
        hamming_all(&bytes, &a, &mut all);
        assert_eq!(all, [0, hamming(&a, &b) as u16]);
        assert_eq!(f32s(&f32_bytes(&[1.5, -2.0])), [1.5, -2.0]);
    }

    #[test]
    fn smallest_takes_exactly_r_with_ties() {
        let dist: Vec<(u32, u16)> = [5u16, 1, 3, 3, 3, 0, 9]
            .iter()
            .enumerate()
            .map(|(i, &d)| (i as u32 * 10, d))
            .collect();
        let mut got = smallest(&dist, 4, 16);
        got.sort();
        assert_eq!(got, [10, 20, 30, 50]);
        assert_eq!(smallest(&dist, 10, 16).len(), 7);
    }
}
