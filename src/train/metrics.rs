//! Quality figures: retrieval precision@k by category (exact cosine search, leave-one-out) and
//! classification accuracy, and [`Quality`], the two side by side for one model.

use serde::Serialize;

use super::linalg::gemm;

/// The cut-offs reported everywhere.
pub const KS: [usize; 3] = [1, 5, 10];

/// Retrieval quality of a set of embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Retrieval {
    /// Precision@1.
    pub p_at_1: f64,
    /// Precision@5.
    pub p_at_5: f64,
    /// Precision@10.
    pub p_at_10: f64,
}

/// Classification accuracy and retrieval precision of one model on the evaluation images.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quality {
    /// Before: nearest category mean of the base embeddings; after: the trained classifier.
    pub accuracy: f64,
    /// Precision@k of the evaluation images searching each other.
    #[serde(flatten)]
    pub retrieval: Retrieval,
}

/// Precision@1/5/10 by category: every embedding queries all the others (exact cosine search,
/// itself left out), and a hit counts when it has the query's label. `emb` holds unit rows of
/// `dims` values.
pub fn precision(emb: &[f32], dims: usize, labels: &[usize]) -> Retrieval {
    precision_of(emb, dims, labels, 0..labels.len())
}

/// [`precision`] averaged over the queries `rows` only; every row is searched.
pub fn precision_of(
    emb: &[f32],
    dims: usize,
    labels: &[usize],
    rows: std::ops::Range<usize>,
) -> Retrieval {
    let n = labels.len();
    assert_eq!(emb.len(), n * dims, "embeddings do not match the labels");
    assert!(rows.end <= n, "query rows out of range");
    let queries = &emb[rows.start * dims..rows.end * dims];
    let mut sims = vec![0f32; rows.len() * n];
    gemm(
        rows.len(),
        dims,
        n,
        1.0,
        queries,
        false,
        emb,
        true,
        0.0,
        &mut sims,
    );
    let mut totals = [0f64; 3];
    for (q, row) in rows.clone().zip(sims.chunks_exact(n)) {
        let mut order: Vec<usize> = (0..n).filter(|&i| i != q).collect();
        // Highest similarity first; ties by index, so the figure is deterministic.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for (t, &k) in totals.iter_mut().zip(&KS) {
            let hits = order
                .iter()
                .take(k)
                .filter(|&&i| labels[i] == labels[q])
                .count();
            *t += hits as f64 / k as f64;
        }
    }
    let n = rows.len().max(1) as f64;
    Retrieval {
        p_at_1: totals[0] / n,
        p_at_5: totals[1] / n,
        p_at_10: totals[2] / n,
    }
}

/// Accuracy of the nearest class mean (cosine) built from `train`: how well plain embeddings
/// classify, to compare with a trained classifier.
pub fn nearest_mean_accuracy(
    train: &[f32],
    train_labels: &[usize],
    eval: &[f32],
    eval_labels: &[usize],
    dims: usize,
    classes: usize,
) -> f64 {
    if eval_labels.is_empty() {
        return f64::NAN;
    }
    let mut means = vec![0f32; classes * dims];
    for (row, &y) in train.chunks_exact(dims).zip(train_labels) {
        means[y * dims..(y + 1) * dims]
            .iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += v);
    }
    super::linalg::normalize_rows(&mut means, dims);
    let mut scores = vec![0f32; eval_labels.len() * classes];
    gemm(
        eval_labels.len(),
        dims,
        classes,
        1.0,
        eval,
        false,
        &means,
        true,
        0.0,
        &mut scores,
    );
    let correct = scores
        .chunks_exact(classes)
        .zip(eval_labels)
        .filter(|(row, &y)| argmax(row) == y)
        .count();
    correct as f64 / eval_labels.len() as f64
}

/// The index of the largest value of `row`.
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |a, (i, &v)| if v > a.1 { (i, v) } else { a },
        )
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_counts_same_label_neighbours() {
        // Two tight pairs on orthogonal axes, plus one point between them.
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let emb = [1.0, 0.0, 0.99, 0.14, 0.0, 1.0, 0.14, 0.99, s, s];
        let labels = [0, 0, 1, 1, 0];
        let r = precision(&emb, 2, &labels);
        // Every top-1 has the query's label (point 4 ties between 1 and 3; the lower index wins).
        assert_eq!(r.p_at_1, 1.0, "{r:?}");
        // Top-5 holds all 4 others: 0 has 2 same-label neighbours among them (1 and 4).
        assert!(
            (r.p_at_5 - (2.0 + 2.0 + 1.0 + 1.0 + 2.0) / 5.0 / 5.0).abs() < 1e-9,
            "{r:?}"
        );
        // k beyond the set: hits / k with fewer than k candidates.
        let r = precision(&emb[..4], 2, &labels[..2]);
        assert_eq!(r.p_at_1, 1.0);
        assert!((r.p_at_5 - 0.2).abs() < 1e-9);
        // Only some rows query; all rows are searched.
        let r = precision_of(&emb, 2, &labels, 4..5);
        assert_eq!(r.p_at_1, 1.0);
        assert!((r.p_at_5 - 2.0 / 5.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn nearest_mean_classifies_clusters() {
        let train = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9];
        let eval = [0.8, 0.2, 0.3, 0.7];
        let acc = nearest_mean_accuracy(&train, &[0, 0, 1, 1], &eval, &[0, 1], 2, 2);
        assert_eq!(acc, 1.0);
        assert_eq!(argmax(&[0.1, 0.5, 0.2]), 1);
    }
}
