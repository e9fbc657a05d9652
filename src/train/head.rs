//! The trainable part of a fine-tuned encoder: a linear feature layer whose output is
//! L2-normalised (the new embedding, or its first part beside the discriminant directions) and a
//! cosine-softmax classifier over the categories, trained with AdamW on frozen backbone
//! embeddings, with early stopping on the validation precision@10.
//!
//! The classifier scores an image by `scale · cos(feature, class vector)`, so training pulls
//! each category's features towards one direction on the unit sphere: exactly the geometry that
//! cosine nearest-neighbour search uses afterwards.

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::linalg::{fold_center, gemm, normalize_rows, normalize_rows_backward};

/// Labelled vectors: `x` holds `len` rows of `dims` values.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// The vectors, row after row.
    pub x: Vec<f32>,
    /// Their labels.
    pub y: Vec<usize>,
    /// Values per vector.
    pub dims: usize,
}

impl Samples {
    /// No samples of `dims` values.
    pub fn new(dims: usize) -> Self {
        Samples {
            x: Vec::new(),
            y: Vec::new(),
            dims,
        }
    }

    /// Adds vector `v` with its label.
    pub fn push(&mut self, v: &[f32], label: usize) {
        assert_eq!(v.len(), self.dims, "sample has the wrong number of values");
        self.x.extend_from_slice(v);
        self.y.push(label);
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// Training hyper-parameters.
#[derive(Debug, Clone, Serialize)]
pub struct HeadConfig {
    /// Feature (embedding) dimensions.
    pub dims: usize,
    /// Most epochs to train.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation precision@10 (the loss without
    /// a gallery).
    pub patience: usize,
    /// Samples per gradient step.
    pub batch: usize,
    /// AdamW's learning rate.
    pub learning_rate: f32,
    /// Decoupled weight decay (AdamW) on the feature layer.
    pub weight_decay: f32,
    /// Scale of the cosine logits.
    pub scale: f32,
    /// Weight of the uniform distribution mixed into the targets.
    pub label_smoothing: f32,
    /// Dropout on the backbone embedding while training.
    pub dropout: f32,
    /// Seed of the initialisation, the shuffling and the dropout.
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            dims: 256,
            max_epochs: 300,
            patience: 40,
            batch: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            scale: 16.0,
            label_smoothing: 0.1,
            dropout: 0.2,
            seed: 42,
        }
    }
}

/// Feature layer + classifier.
#[derive(Debug, Clone)]
pub struct Head {
    /// Input (backbone embedding) dimensions.
    pub input: usize,
    /// Feature dimensions.
    pub dims: usize,
    /// Categories the classifier tells apart.
    pub classes: usize,
    /// Subtracted from the input first: the mean of the training embeddings. Centring removes
    /// the direction that all base embeddings share, which otherwise dominates their cosines.
    pub center: Vec<f32>,
    /// Feature layer weights, `input × dims`.
    pub w1: Vec<f32>,
    /// Feature layer bias, `dims`.
    pub b1: Vec<f32>,
    /// Class vectors, `classes × dims` (not normalised; see [`Head::classifier`]).
    pub w2: Vec<f32>,
    /// Scale of the cosine logits.
    pub scale: f32,
}

impl Head {
    /// A randomly initialised head (Glorot uniform, seeded).
    pub fn new(input: usize, dims: usize, classes: usize, scale: f32, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let a1 = (6.0 / (input + dims) as f32).sqrt();
        let a2 = (6.0 / (dims + classes) as f32).sqrt();
        Head {
            input,
            dims,
            classes,
            center: vec![0.0; input],
            w1: (0..input * dims)
                .map(|_| rng.random_range(-a1..a1))
                .collect(),
            b1: vec![0.0; dims],
            w2: (0..classes * dims)
                .map(|_| rng.random_range(-a2..a2))
                .collect(),
            scale,
        }
    }

    /// The bias of the layer as exported, with the centring folded in:
    /// `(x - center) · w1 + b1 = x · w1 + (b1 - center · w1)`.
    pub fn bias(&self) -> Vec<f32> {
        fold_center(&self.center, &self.w1, &self.b1)
    }

    /// Linear features (before normalisation) of the rows of `x`.
    fn linear(&self, x: &[f32]) -> Vec<f32> {
        self.affine(x, &self.bias())
    }

    /// `x · w1 + bias` for the rows of `x`.
    fn affine(&self, x: &[f32], bias: &[f32]) -> Vec<f32> {
        let n = x.len() / self.input;
        let mut z: Vec<f32> = bias.iter().copied().cycle().take(n * self.dims).collect();
        gemm(
            n, self.input, self.dims, 1.0, x, false, &self.w1, false, 1.0, &mut z,
        );
        z
    }

    /// The embeddings of the rows of `x`: the feature layer's output, L2-normalised.
    pub fn features(&self, x: &[f32]) -> Vec<f32> {
        let mut z = self.linear(x);
        normalize_rows(&mut z, self.dims);
        z
    }

    /// Unit class vectors, `classes × dims`.
    fn unit_classes(&self) -> (Vec<f32>, Vec<f32>) {
        let mut w = self.w2.clone();
        let norms = normalize_rows(&mut w, self.dims);
        (w, norms)
    }

    /// The classifier as exported, `dims × classes`: logits = features · classifier.
    pub fn classifier(&self) -> Vec<f32> {
        let (w, _) = self.unit_classes();
        let mut t = super::linalg::transpose(&w, self.classes, self.dims);
        t.iter_mut().for_each(|v| *v *= self.scale);
        t
    }

    /// Logits of unit features `f` (`n × dims`).
    pub fn logits(&self, f: &[f32]) -> Vec<f32> {
        let n = f.len() / self.dims;
        let (w, _) = self.unit_classes();
        let mut l = vec![0f32; n * self.classes];
        gemm(
            n,
            self.dims,
            self.classes,
            self.scale,
            f,
            false,
            &w,
            true,
            0.0,
            &mut l,
        );
        l
    }

    /// Mean cross-entropy (without smoothing) and accuracy on `s`.
    pub fn evaluate(&self, s: &Samples) -> (f32, f64) {
        if s.is_empty() {
            return (f32::NAN, f64::NAN);
        }
        let logits = self.logits(&self.features(&s.x));
        let mut loss = 0f32;
        let mut correct = 0usize;
        for (row, &y) in logits.chunks_exact(self.classes).zip(&s.y) {
            let (lse, argmax) = log_sum_exp(row);
            loss += lse - row[y];
            correct += usize::from(argmax == y);
        }
        (loss / s.len() as f32, correct as f64 / s.len() as f64)
    }
}

/// `log Σ exp(row)` and the index of the largest value.
fn log_sum_exp(row: &[f32]) -> (f32, usize) {
    let (argmax, max) =
        row.iter()
            .copied()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, v)| if v > a.1 { (i, v) } else { a },
            );
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (max + sum.ln(), argmax)
}

/// AdamW state of one parameter tensor.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32, weight_decay: f32, t: i32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        let c1 = 1.0 - B1.powi(t);
        let c2 = 1.0 - B2.powi(t);
        for i in 0..p.len() {
            self.m[i] = B1 * self.m[i] + (1.0 - B1) * g[i];
            self.v[i] = B2 * self.v[i] + (1.0 - B2) * g[i] * g[i];
            let update = (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + EPS);
            p[i] -= lr * (update + weight_decay * p[i]);
        }
    }
}

/// Gradients of the mean loss of a batch.
struct Grads {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
}

/// Mean smoothed cross-entropy of the rows of `xb` (labels `ys`), already centred, and its
/// gradients.
fn loss_and_grads(
    head: &Head,
    xb: &[f32],
    ys: impl Iterator<Item = usize>,
    smooth: f32,
) -> (f32, Grads) {
    let (d, h, c) = (head.input, head.dims, head.classes);
    let b = xb.len() / d;
    // Forward.
    let mut f = head.affine(xb, &head.b1);
    let norms = normalize_rows(&mut f, h);
    let (wn, cnorms) = head.unit_classes();
    let mut dl = vec![0f32; b * c];
    gemm(b, h, c, head.scale, &f, false, &wn, true, 0.0, &mut dl);
    // Softmax cross-entropy against q = (1 - smooth) one-hot + smooth / c: dL/dlogits = (p - q) / b.
    let mut loss = 0f32;
    for (row, y) in dl.chunks_exact_mut(c).zip(ys) {
        let (lse, _) = log_sum_exp(row);
        for (j, v) in row.iter_mut().enumerate() {
            let q = smooth / c as f32 + if j == y { 1.0 - smooth } else { 0.0 };
            loss -= q * (*v - lse);
            *v = ((*v - lse).exp() - q) / b as f32;
        }
    }
    // Backward.
    let mut df = vec![0f32; b * h];
    gemm(b, c, h, head.scale, &dl, false, &wn, false, 0.0, &mut df);
    let mut dwn = vec![0f32; c * h];
    gemm(c, b, h, head.scale, &dl, true, &f, false, 0.0, &mut dwn);
    normalize_rows_backward(&wn, &cnorms, &mut dwn, h);
    normalize_rows_backward(&f, &norms, &mut df, h);
    let mut dw1 = vec![0f32; d * h];
    gemm(d, b, h, 1.0, xb, true, &df, false, 0.0, &mut dw1);
    let mut db1 = vec![0f32; h];
    for row in df.chunks_exact(h) {
        db1.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
    (
        loss / b as f32,
        Grads {
            w1: dw1,
            b1: db1,
            w2: dwn,
        },
    )
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f32,
    /// Mean validation loss (without smoothing).
    pub val_loss: f32,
    /// Validation accuracy of the classifier.
    pub val_accuracy: f64,
    /// Precision@10 of the validation images searching the training images and each other.
    pub val_p_at_10: f64,
}

/// The result of [`train`]: the head of the best epoch.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The head of the best epoch.
    pub head: Head,
    /// That epoch.
    pub best_epoch: usize,
    /// Epochs run.
    pub epochs_run: usize,
    /// Every epoch's figures.
    pub history: Vec<EpochStats>,
}

/// Trains a head on `train` (centred on its mean). After every epoch the validation images
/// query a gallery of `gallery` (the training images, one view each) plus themselves, and the
/// epoch with the best validation precision@10 is kept (ties: the lower validation loss);
/// training stops after `cfg.patience` epochs without a better one. Precision, not the loss, is
/// what search needs: the validation loss bottoms out within a few epochs, long before the
/// neighbourhoods stop improving. Without a gallery the loss decides; with an empty `val` it
/// runs `cfg.max_epochs` and keeps the last epoch.
pub fn train(
    train: &Samples,
    val: &Samples,
    gallery: &Samples,
    classes: usize,
    cfg: &HeadConfig,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Trained {
    assert!(!train.is_empty(), "no training samples");
    let (d, h, c) = (train.dims, cfg.dims, classes);
    let mut head = Head::new(d, h, c, cfg.scale, cfg.seed);
    let mut center = vec![0f32; d];
    for row in train.x.chunks_exact(d) {
        center.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    center.iter_mut().for_each(|m| *m /= train.len() as f32);
    let centred: Vec<f32> = train
        .x
        .chunks_exact(d)
        .flat_map(|row| row.iter().zip(&center).map(|(v, m)| v - m))
        .collect();
    head.center = center;
    // Validation queries and the gallery they search, as one set (queries last).
    let mut searched = gallery.clone();
    searched.x.extend_from_slice(&val.x);
    searched.y.extend_from_slice(&val.y);
    let queries = gallery.len()..searched.len();

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let (mut adam_w1, mut adam_b1, mut adam_w2) =
        (Adam::new(d * h), Adam::new(h), Adam::new(c * h));
    let mut order: Vec<usize> = (0..train.len()).collect();
    // (precision@10, loss) of the best epoch so far.
    let mut best: Option<((f64, f32), Head, usize)> = None;
    let mut history = Vec::new();
    let mut step = 0i32;
    let batch = cfg.batch.max(1);
    let keep = 1.0 - cfg.dropout.clamp(0.0, 0.95);
    let smooth = cfg.label_smoothing.clamp(0.0, 0.99);

    // Work buffer, sized for a full batch.
    let mut xb = vec![0f32; batch * d];
    for epoch in 1..=cfg.max_epochs.max(1) {
        order.shuffle(&mut rng);
        let mut epoch_loss = 0f32;
        for idx in order.chunks(batch) {
            let b = idx.len();
            let xb = &mut xb[..b * d];
            for (row, &i) in xb.chunks_exact_mut(d).zip(idx) {
                row.copy_from_slice(&centred[i * d..(i + 1) * d]);
                if keep < 1.0 {
                    for v in row.iter_mut() {
                        *v = if rng.random::<f32>() < keep {
                            *v / keep
                        } else {
                            0.0
                        };
                    }
                }
            }
            let (loss, g) = loss_and_grads(&head, xb, idx.iter().map(|&i| train.y[i]), smooth);
            epoch_loss += loss * b as f32;
            step += 1;
            let lr = cfg.learning_rate;
            adam_w1.step(&mut head.w1, &g.w1, lr, cfg.weight_decay, step);
            adam_b1.step(&mut head.b1, &g.b1, lr, 0.0, step);
            adam_w2.step(&mut head.w2, &g.w2, lr, 0.0, step);
        }
        let (val_loss, val_accuracy) = head.evaluate(val);
        let val_p_at_10 = if val.is_empty() || gallery.is_empty() {
            f64::NAN
        } else {
            let f = head.features(&searched.x);
            super::metrics::precision_of(&f, h, &searched.y, queries.clone()).p_at_10
        };
        let stats = EpochStats {
            epoch,
            train_loss: epoch_loss / train.len() as f32,
            val_loss,
            val_accuracy,
            val_p_at_10,
        };
        on_epoch(&stats);
        history.push(stats);
        if val.is_empty() {
            continue;
        }
        let score = (
            if val_p_at_10.is_nan() {
                0.0
            } else {
                val_p_at_10
            },
            val_loss,
        );
        let improved = best.as_ref().is_none_or(|((p, l), _, _)| {
            score.0 > *p + 1e-9 || ((score.0 - *p).abs() <= 1e-9 && score.1 < *l)
        });
        if improved {
            best = Some((score, head.clone(), epoch));
        } else if best
            .as_ref()
            .is_some_and(|(_, _, e)| epoch - e >= cfg.patience.max(1))
        {
            break;
        }
    }
    let epochs_run = history.len();
    let (head, best_epoch) = match best {
        Some((_, head, e)) => (head, e),
        None => (head, epochs_run),
    };
    Trained {
        head,
        best_epoch,
        epochs_run,
        history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well-separated clusters in 8-d, with noise.
    fn clusters(n_per: usize, seed: u64) -> Samples {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut s = Samples::new(8);
        for class in 0..3 {
            for _ in 0..n_per {
                let v: Vec<f32> = (0..8)
                    .map(|j| {
                        let centre = if j % 3 == class { 1.0 } else { 0.0 };
                        centre + rng.random_range(-0.3..0.3)
                    })
                    .collect();
                s.push(&v, class);
            }
        }
        s
    }

    #[test]
    fn learns_separable_classes_and_stops_early() {
        let (tr, va) = (clusters(30, 1), clusters(10, 2));
        let cfg = HeadConfig {
            dims: 4,
            max_epochs: 500,
            patience: 10,
            batch: 16,
            learning_rate: 1e-2,
            ..HeadConfig::default()
        };
        let mut seen = 0;
        let t = train(&tr, &va, &tr, 3, &cfg, &mut |_| seen += 1);
        assert_eq!(seen, t.epochs_run);
        assert!(t.epochs_run < 500, "early stopping never triggered");
        assert!(t.best_epoch <= t.epochs_run);
        let (loss, acc) = t.head.evaluate(&va);
        assert!(acc >= 0.95, "validation accuracy {acc}, loss {loss}");
        let f = t.head.features(&va.x);
        for row in f.chunks(4) {
            let n: f32 = row.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        // The exported classifier gives the same logits as the training-time path.
        let w = t.head.classifier();
        let mut l = vec![0f32; va.len() * 3];
        gemm(va.len(), 4, 3, 1.0, &f, false, &w, false, 0.0, &mut l);
        for (a, b) in l.iter().zip(t.head.logits(&f)) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let s = clusters(4, 3);
        let mut head = Head::new(8, 3, 3, 4.0, 7);
        head.b1 = vec![0.1, -0.2, 0.05];
        let loss = |hd: &Head| loss_and_grads(hd, &s.x, s.y.iter().copied(), 0.1).0;
        let (_, g) = loss_and_grads(&head, &s.x, s.y.iter().copied(), 0.1);
        let eps = 1e-3f32;
        let check = |name: &str, analytic: &[f32], get: &dyn Fn(&mut Head) -> &mut Vec<f32>| {
            for i in [0, 1, analytic.len() / 2, analytic.len() - 1] {
                let (mut plus, mut minus) = (head.clone(), head.clone());
                get(&mut plus)[i] += eps;
                get(&mut minus)[i] -= eps;
                let numeric = (loss(&plus) - loss(&minus)) / (2.0 * eps);
                assert!(
                    (numeric - analytic[i]).abs() < 2e-3 + 0.02 * numeric.abs(),
                    "{name}[{i}]: numeric {numeric}, analytic {}",
                    analytic[i]
                );
            }
        };
        check("w1", &g.w1, &|h| &mut h.w1);
        check("b1", &g.b1, &|h| &mut h.b1);
        check("w2", &g.w2, &|h| &mut h.w2);
    }
}
