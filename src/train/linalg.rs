//! The few dense-matrix operations the training loop needs, over row-major `f32` slices.
//! Products go through `matrixmultiply`'s sgemm (SIMD kernels picked at run time).

/// `c (m×n) = alpha · op(a) · op(b) + beta · c`, all row-major. `op(a)` is `m×k`: `a` is stored
/// as `m×k`, or as `k×m` when `ta`. `op(b)` is `k×n`: `b` is stored as `k×n`, or as `n×k` when `tb`.
///
/// # Panics
/// If a slice's length does not match its shape.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    beta: f32,
    c: &mut [f32],
) {
    assert_eq!(
        a.len(),
        m * k,
        "gemm: a has {} values, not {m}x{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm: b has {} values, not {k}x{n}",
        b.len()
    );
    assert_eq!(
        c.len(),
        m * n,
        "gemm: c has {} values, not {m}x{n}",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: the asserts above guarantee that every index sgemm computes from these shapes and
    // strides lies inside the slices, and `c` does not alias `a` or `b` (it is `&mut`).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Scales each row of the `rows × cols` matrix to unit length; returns the norms it divided by
/// (an all-zero row is left alone and reports a norm of 1).
pub fn normalize_rows(x: &mut [f32], cols: usize) -> Vec<f32> {
    x.chunks_exact_mut(cols)
        .map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                row.iter_mut().for_each(|v| *v /= norm);
                norm
            } else {
                1.0
            }
        })
        .collect()
}

/// Backward pass of [`normalize_rows`]: given `y = x / |x|` (row-wise), the norms and `dy`,
/// replaces `dy` with `dx = (dy - y (y·dy)) / |x|`.
pub fn normalize_rows_backward(y: &[f32], norms: &[f32], dy: &mut [f32], cols: usize) {
    for ((yr, dr), &n) in y
        .chunks_exact(cols)
        .zip(dy.chunks_exact_mut(cols))
        .zip(norms)
    {
        let dot: f32 = yr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
        for (d, &yv) in dr.iter_mut().zip(yr) {
            *d = (*d - yv * dot) / n;
        }
    }
}

/// Transpose of a `rows × cols` matrix.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_a_naive_product_with_every_transpose() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let want = naive(m, k, n, &a, &b);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut c = vec![1f32; m * n];
            let aa = if ta { &at } else { &a };
            let bb = if tb { &bt } else { &b };
            gemm(m, k, n, 2.0, aa, ta, bb, tb, 1.0, &mut c);
            for (got, w) in c.iter().zip(&want) {
                assert!(
                    (got - (2.0 * w + 1.0)).abs() < 1e-4,
                    "{ta} {tb}: {got} vs {w}"
                );
            }
        }
    }

    #[test]
    fn normalize_backward_matches_finite_differences() {
        let x = vec![0.3f32, -1.2, 0.7, 2.0, 0.1, -0.4];
        let g = [0.5f32, -0.25, 1.0]; // loss = g · normalize(row)
        let loss = |x: &[f32]| -> f32 {
            let mut y = x.to_vec();
            normalize_rows(&mut y, 3);
            y.chunks(3)
                .map(|r| r.iter().zip(&g).map(|(a, b)| a * b).sum::<f32>())
                .sum()
        };
        let mut y = x.clone();
        let norms = normalize_rows(&mut y, 3);
        let mut dy: Vec<f32> = g.iter().chain(g.iter()).copied().collect();
        normalize_rows_backward(&y, &norms, &mut dy, 3);
        for i in 0..x.len() {
            let mut xp = x.clone();
            xp[i] += 1e-3;
            let mut xm = x.clone();
            xm[i] -= 1e-3;
            let fd = (loss(&xp) - loss(&xm)) / 2e-3;
            assert!((fd - dy[i]).abs() < 1e-2, "{i}: {fd} vs {}", dy[i]);
        }
    }
}
