//! The few dense-matrix operations training needs, over row-major slices: `f32` products
//! through `matrixmultiply`'s sgemm (SIMD kernels picked at run time) for the head, and the
//! `f64` Cholesky solve and symmetric eigendecomposition that the discriminant is fitted with.

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

/// The bias of `x ↦ (x - center) · w + bias` written as `x · w + b`: `b = bias - center · w`,
/// with `w` stored `center.len() × bias.len()`.
pub fn fold_center(center: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut b = bias.to_vec();
    gemm(
        1,
        center.len(),
        bias.len(),
        -1.0,
        center,
        false,
        w,
        false,
        1.0,
        &mut b,
    );
    b
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

/// The Cholesky factor `L` (`a = L·Lᵀ`) of a symmetric positive definite `n × n` matrix, written
/// over the lower triangle of `a` (the upper triangle is left as it was). Fails with the first
/// pivot that is not positive (the matrix is not positive definite).
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), usize> {
    assert_eq!(a.len(), n * n, "cholesky: not an {n}x{n} matrix");
    for j in 0..n {
        let d = a[j * n + j] - a[j * n..j * n + j].iter().map(|v| v * v).sum::<f64>();
        if d.is_nan() || d <= 0.0 {
            return Err(j);
        }
        let pivot = d.sqrt();
        a[j * n + j] = pivot;
        let (head, tail) = a.split_at_mut((j + 1) * n);
        let row_j = &head[j * n..j * n + j];
        for row_i in tail.chunks_exact_mut(n) {
            let dot: f64 = row_i[..j].iter().zip(row_j).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - dot) / pivot;
        }
    }
    Ok(())
}

/// Solves `L·Lᵀ·x = b` in place for the `n × m` right-hand sides `b`, given the factor from
/// [`cholesky`].
pub fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64], m: usize) {
    assert_eq!(l.len(), n * n, "cholesky_solve: factor is not {n}x{n}");
    assert_eq!(b.len(), n * m, "cholesky_solve: b is not {n}x{m}");
    // L·y = b, top down.
    for i in 0..n {
        let (solved, rest) = b.split_at_mut(i * m);
        let bi = &mut rest[..m];
        for k in 0..i {
            let lik = l[i * n + k];
            if lik != 0.0 {
                bi.iter_mut()
                    .zip(&solved[k * m..(k + 1) * m])
                    .for_each(|(v, y)| *v -= lik * y);
            }
        }
        bi.iter_mut().for_each(|v| *v /= l[i * n + i]);
    }
    // Lᵀ·x = y, bottom up.
    for i in (0..n).rev() {
        let (head, solved) = b.split_at_mut((i + 1) * m);
        let bi = &mut head[i * m..];
        for k in i + 1..n {
            let lki = l[k * n + i];
            if lki != 0.0 {
                bi.iter_mut()
                    .zip(&solved[(k - i - 1) * m..(k - i) * m])
                    .for_each(|(v, x)| *v -= lki * x);
            }
        }
        bi.iter_mut().for_each(|v| *v /= l[i * n + i]);
    }
}

/// Eigenvalues (largest first) and unit eigenvectors (the columns of the returned row-major
/// `n × n` matrix, in the same order) of a symmetric `n × n` matrix, by cyclic Jacobi rotations:
/// meant for small matrices (one row and column per category).
pub fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "symmetric_eigen: not an {n}x{n} matrix");
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale.max(f64::MIN_POSITIVE) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ·A·J on rows and columns p and q; V ← V·J.
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vectors = vec![0f64; n * n];
    for (col, &i) in order.iter().enumerate() {
        for k in 0..n {
            vectors[k * n + col] = v[k * n + i];
        }
    }
    (values, vectors)
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

    /// A symmetric positive definite matrix: `b·bᵀ + n·I`.
    fn spd(n: usize) -> Vec<f64> {
        let b: Vec<f64> = (0..n * n)
            .map(|i| ((i * 7 + 3) % 11) as f64 - 5.0)
            .collect();
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| b[i * n + k] * b[j * n + k]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn cholesky_solve_inverts_the_matrix() {
        let n = 6;
        let a = spd(n);
        let mut l = a.clone();
        cholesky(&mut l, n).unwrap();
        let x: Vec<f64> = (0..n * 2).map(|i| i as f64 * 0.25 - 1.0).collect();
        let mut b = vec![0f64; n * 2];
        for i in 0..n {
            for c in 0..2 {
                b[i * 2 + c] = (0..n).map(|k| a[i * n + k] * x[k * 2 + c]).sum();
            }
        }
        cholesky_solve(&l, n, &mut b, 2);
        for (got, want) in b.iter().zip(&x) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        let mut not_pd = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut not_pd, 2), Err(1));
    }

    #[test]
    fn symmetric_eigen_reconstructs_the_matrix() {
        let n = 5;
        let a = spd(n);
        let (values, vectors) = symmetric_eigen(&a, n);
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        for i in 0..n {
            for j in 0..n {
                let back: f64 = (0..n)
                    .map(|k| vectors[i * n + k] * values[k] * vectors[j * n + k])
                    .sum();
                assert!((back - a[i * n + j]).abs() < 1e-8, "({i},{j}): {back}");
                let dot: f64 = (0..n)
                    .map(|k| vectors[k * n + i] * vectors[k * n + j])
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-10, "vectors not orthonormal");
            }
        }
    }
}
