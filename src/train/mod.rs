//! `lookalike train`: fine-tunes an encoder for a catalogue. On top of a frozen base model it
//! trains a feature layer (the new embedding) and a category classifier on images sorted into
//! category folders, then exports the base graph plus the feature layer as one ONNX model.
//!
//! - [`dataset`]: listing the labelled images and splitting each category.
//! - [`features`]: backbone embeddings of images and augmented views, cached by content hash.
//! - [`head`]: the feature layer + cosine classifier and its training loop (AdamW, early stopping).
//! - [`discriminant`]: shrinkage LDA directions, solved in closed form, exported beside the
//!   feature layer.
//! - [`linalg`]: the matrix products (matrixmultiply's sgemm).
//! - [`metrics`]: precision@k by category and accuracy.

pub mod dataset;
pub mod discriminant;
pub mod features;
pub mod head;
pub mod linalg;
pub mod metrics;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::encoder::Encoder;
use crate::model::fine_tuned::{self, DiscriminantLayer, FeatureLayer};
use crate::model::import::write_atomic;
use crate::model::{CARD_FILE, ONNX_FILE};
use crate::preprocess::Limits;
use crate::store::{get_object, DynStore, FETCH_CONCURRENCY};

pub use dataset::{Dataset, Split};
pub use discriminant::Discriminant;
pub use head::{EpochStats, HeadConfig, Samples};
pub use metrics::Retrieval;

/// The training report, next to the model in the output folder.
pub const REPORT_FILE: &str = "training.json";
/// Images fetched and encoded together.
const CHUNK: usize = 128;

/// Everything `train` can be told besides where the images, the base model and the output are.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub head: HeadConfig,
    /// Fraction of each category (after the test part) used for early stopping.
    pub val_split: f64,
    /// Fraction of each category held out entirely, to measure the result on unseen images.
    pub test_split: f64,
    /// Seed of the split (the head's initialisation and shuffling use `head.seed`).
    pub seed: u64,
    /// Views of each training image: 1 is the image alone; 2 adds its mirror image; more add
    /// random crops (see [`features::view`]).
    pub views: u32,
    pub limits: Limits,
    /// Where backbone embeddings are cached (none: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Name part of the new model id (default: the image folder's name).
    pub name: Option<String>,
    /// Weight of the discriminant directions next to the trained feature layer in the embedding
    /// (0: the feature layer alone). They take (categories - 1) of `head.dims`.
    pub discriminant_weight: f32,
    /// Shrinkage of the discriminant's within-category covariance.
    pub shrinkage: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            head: HeadConfig::default(),
            val_split: 0.2,
            test_split: 0.0,
            seed: 42,
            views: 4,
            limits: Limits::default(),
            cache_dir: None,
            name: None,
            discriminant_weight: 1.5,
            shrinkage: discriminant::DEFAULT_SHRINKAGE,
        }
    }
}

/// What `train` reports while it works.
#[derive(Debug, Clone)]
pub enum Event {
    /// About to compute the backbone embeddings of `images` images.
    Embedding {
        images: u64,
    },
    /// `n` more images embedded.
    Embedded(u64),
    /// About to train for at most `max_epochs`.
    Training {
        max_epochs: usize,
    },
    Epoch(EpochStats),
    /// Writing the model, then checking it on `images` images.
    Exporting {
        images: u64,
    },
    Checked(u64),
}

pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;

/// Classification accuracy and retrieval precision of one model on the evaluation images.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quality {
    /// Before: nearest category mean of the base embeddings; after: the trained classifier.
    pub accuracy: f64,
    #[serde(flatten)]
    pub retrieval: Retrieval,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageCounts {
    pub train: usize,
    pub validation: usize,
    pub test: usize,
    /// Training samples: training images times views.
    pub training_samples: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub embeddings: f64,
    pub training: f64,
    pub export: f64,
    pub check: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub model_id: String,
    pub base_model: String,
    /// Embedding dimensions: the feature layer's plus the discriminant's.
    pub dims: usize,
    pub feature_layer_dims: usize,
    pub discriminant_dims: usize,
    pub discriminant_weight: f32,
    pub source: String,
    pub out: String,
    pub categories: Vec<String>,
    pub images: ImageCounts,
    pub views: u32,
    /// `test` when a test part was held out, else `validation`.
    pub evaluated_on: String,
    /// The base model's embeddings.
    pub before: Quality,
    /// The exported embedding (feature layer and discriminant) on the same cached backbone
    /// embeddings; the accuracy is the trained classifier's.
    pub after: Quality,
    /// The parts of the embedding alone.
    pub feature_layer_only: Retrieval,
    pub discriminant_only: Option<Retrieval>,
    /// The exported encoder, run from scratch on the evaluation images.
    pub exported: Retrieval,
    /// Largest difference between the exported encoder's embeddings and the trained head's.
    pub exported_max_abs_diff: f32,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub config: HeadConfig,
    pub embeddings_computed: usize,
    pub embeddings_cached: usize,
    pub skipped: Vec<Skipped>,
    pub seconds: Timings,
    pub history: Vec<EpochStats>,
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Trains on the category folders of `source` on top of the model in `base_dir` and writes the
/// fine-tuned model (encoder.onnx, model.json, training.json) to `out`.
pub async fn train(
    source: DynStore,
    base_dir: &Path,
    out: &Path,
    opts: &TrainOptions,
    progress: Progress,
) -> Result<TrainReport> {
    let started = Instant::now();
    if same_dir(base_dir, out) {
        bail!(
            "--out {} is the base model's folder; write the fine-tuned model somewhere else",
            out.display()
        );
    }
    if !(opts.discriminant_weight.is_finite() && opts.discriminant_weight >= 0.0) {
        bail!(
            "--discriminant-weight must be 0 or more, not {}",
            opts.discriminant_weight
        );
    }
    let base = Arc::new(Encoder::load(base_dir)?);
    let dataset = Dataset::list(source.as_ref()).await?;
    let split = dataset.split(opts.val_split, opts.test_split, opts.seed)?;
    let classes = dataset.categories.len();
    if opts.discriminant_weight > 0.0 && opts.head.dims < classes {
        bail!(
            "--dims {} leaves no room for the feature layer next to the {} discriminant directions of {classes} categories: use a larger --dims, or --discriminant-weight 0",
            opts.head.dims,
            classes - 1
        );
    }
    let cache = match &opts.cache_dir {
        Some(dir) => Some(
            features::FeatureCache::new(dir, base.model_id())
                .with_context(|| format!("creating the embedding cache in {}", dir.display()))?,
        ),
        None => None,
    };

    // Backbone embeddings: every view of the training images, the plain view of the others.
    let t = Instant::now();
    let mut jobs: Vec<(usize, u32)> = Vec::new();
    for &i in &split.train {
        jobs.push((i, opts.views.max(1)));
    }
    for &i in split.val.iter().chain(&split.test) {
        jobs.push((i, 1));
    }
    jobs.sort_unstable();
    progress(Event::Embedding {
        images: jobs.len() as u64,
    });
    let mut embedded: Vec<Option<Vec<Vec<f32>>>> = vec![None; dataset.examples.len()];
    let mut skipped = Vec::new();
    let (mut computed, mut cached) = (0usize, 0usize);
    for chunk in jobs.chunks(CHUNK) {
        let fetched = fetch(&source, &dataset, chunk).await?;
        let (base, cache, limits, progress) =
            (base.clone(), cache.clone(), opts.limits, progress.clone());
        let results = on_all_cores(fetched, move |(i, views, bytes)| {
            let r = features::embed_views(&base, &bytes, views, &limits, cache.as_ref());
            progress(Event::Embedded(1));
            (i, views, r)
        })
        .await?;
        for (i, views, r) in results {
            match r {
                Ok((v, n)) => {
                    computed += n;
                    cached += views as usize - n;
                    embedded[i] = Some(v);
                }
                Err(e) => {
                    let key = dataset.examples[i].key.clone();
                    tracing::warn!(%key, error = %e, "skipping an image");
                    skipped.push(Skipped {
                        key,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    let t_embed = secs(t);

    let d = base.dims();
    let gather = |part: &[usize], all_views: bool| -> (Samples, Vec<usize>) {
        let mut s = Samples::new(d);
        let mut used = Vec::new();
        for &i in part {
            if let Some(views) = &embedded[i] {
                let take = if all_views { views.len() } else { 1 };
                for v in &views[..take] {
                    s.push(v, dataset.examples[i].label);
                }
                used.push(i);
            }
        }
        (s, used)
    };
    let (train_set, _) = gather(&split.train, true);
    let (train_plain, _) = gather(&split.train, false);
    let (val_set, _) = gather(&split.val, false);
    let (eval_name, eval_part) = if split.test.is_empty() {
        ("validation", &split.val)
    } else {
        ("test", &split.test)
    };
    let (eval_set, eval_used) = gather(eval_part, false);
    if train_set.is_empty() {
        bail!("no training image could be read (see the skipped images)");
    }
    if eval_set.len() < 2 {
        bail!("fewer than 2 evaluation images: use a larger --val-split or --test-split");
    }

    let before = Quality {
        accuracy: metrics::nearest_mean_accuracy(
            &train_plain.x,
            &train_plain.y,
            &eval_set.x,
            &eval_set.y,
            d,
            classes,
        ),
        retrieval: metrics::precision(&eval_set.x, d, &eval_set.y),
    };

    // Training: the discriminant in closed form on every labelled image the head may use (no
    // early stopping needs the validation images), then the feature layer in what is left of
    // the dimensions.
    let t = Instant::now();
    let disc = if opts.discriminant_weight > 0.0 {
        let mut labelled = train_plain.clone();
        labelled.x.extend_from_slice(&val_set.x);
        labelled.y.extend_from_slice(&val_set.y);
        // At most classes - 1 directions: the check above left the feature layer room.
        let shrinkage = opts.shrinkage;
        Some(
            tokio::task::spawn_blocking(move || Discriminant::fit(&labelled, classes, shrinkage))
                .await??,
        )
    } else {
        None
    };
    let disc_dims = disc.as_ref().map_or(0, |d| d.dims);
    progress(Event::Training {
        max_epochs: opts.head.max_epochs,
    });
    let mut cfg = opts.head.clone();
    cfg.dims -= disc_dims;
    let cfg_used = cfg.clone();
    let trained = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            head::train(
                &train_set,
                &val_set,
                &train_plain,
                classes,
                &cfg,
                &mut |e| progress(Event::Epoch(e.clone())),
            )
        })
        .await?
    };
    let t_train = secs(t);
    let head = &trained.head;
    let head_features = head.features(&eval_set.x);
    let feature_layer_only = metrics::precision(&head_features, head.dims, &eval_set.y);
    let (eval_features, discriminant_only) = match &disc {
        Some(disc) => {
            let f = disc.features(&eval_set.x);
            let only = metrics::precision(&f, disc.dims, &eval_set.y);
            (
                discriminant::concat(
                    &head_features,
                    head.dims,
                    &f,
                    disc.dims,
                    opts.discriminant_weight,
                ),
                Some(only),
            )
        }
        None => (head_features, None),
    };
    let dims = head.dims + disc_dims;
    let after = Quality {
        accuracy: head.evaluate(&eval_set).1,
        retrieval: metrics::precision(&eval_features, dims, &eval_set.y),
    };

    // Export.
    let t = Instant::now();
    progress(Event::Exporting {
        images: eval_used.len() as u64,
    });
    let classifier = head.classifier();
    let bias = head.bias();
    let disc_bias = disc.as_ref().map(Discriminant::bias);
    let layer = FeatureLayer {
        weights: &head.w1,
        bias: &bias,
        classifier: &classifier,
        labels: &dataset.categories,
        discriminant: disc
            .as_ref()
            .zip(disc_bias.as_deref())
            .map(|(d, b)| DiscriminantLayer {
                weights: &d.proj,
                bias: b,
                weight: opts.discriminant_weight,
            }),
    };
    let base_onnx = std::fs::read(base_dir.join(ONNX_FILE))
        .with_context(|| format!("reading {}", base_dir.join(ONNX_FILE).display()))?;
    let onnx = fine_tuned::extend(&base_onnx, base.card(), &layer)?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-ft", folder_name(&dataset.location)));
    let id = format!(
        "{}-{}d-{}",
        sanitize(&name),
        dims,
        &hex::encode(Sha256::digest(&onnx))[..8]
    );
    let card = fine_tuned::card(
        base.card(),
        id.clone(),
        dims,
        &dataset.categories,
        format!(
            "lookalike train: a {}-d feature layer and {} discriminant directions on {} ({} images in {} categories) over {}",
            head.dims,
            disc_dims,
            dataset.location,
            split.train.len() + split.val.len(),
            classes,
            base.model_id()
        ),
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_atomic(&out.join(ONNX_FILE), &onnx)?;
    write_atomic(
        &out.join(CARD_FILE),
        (serde_json::to_string_pretty(&card)? + "\n").as_bytes(),
    )?;
    let t_export = secs(t);

    // Check: the exported encoder, loaded like search loads it, on the evaluation images.
    let t = Instant::now();
    let exported_encoder = Arc::new(Encoder::load(out)?);
    let mut exported_features = vec![0f32; eval_used.len() * dims];
    for (n, chunk) in eval_used.chunks(CHUNK).enumerate() {
        let jobs: Vec<(usize, u32)> = chunk.iter().map(|&i| (i, 1)).collect();
        let fetched = fetch(&source, &dataset, &jobs).await?;
        let (enc, limits, progress) = (exported_encoder.clone(), opts.limits, progress.clone());
        let vectors = on_all_cores(fetched, move |(_, _, bytes)| {
            let r = enc.encode_image(&bytes, &limits);
            progress(Event::Checked(1));
            r
        })
        .await?;
        for (j, v) in vectors.into_iter().enumerate() {
            let v = v.context("the exported encoder failed on an image the base model read")?;
            let row = n * CHUNK + j;
            exported_features[row * dims..(row + 1) * dims].copy_from_slice(&v);
        }
    }
    let exported = metrics::precision(&exported_features, dims, &eval_set.y);
    let exported_max_abs_diff = exported_features
        .iter()
        .zip(&eval_features)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let t_check = secs(t);

    let report = TrainReport {
        model_id: id,
        base_model: base.model_id().to_string(),
        dims,
        feature_layer_dims: head.dims,
        discriminant_dims: disc_dims,
        discriminant_weight: if disc.is_some() {
            opts.discriminant_weight
        } else {
            0.0
        },
        source: dataset.location.clone(),
        out: out.display().to_string(),
        categories: dataset.categories.clone(),
        images: ImageCounts {
            train: split.train.len(),
            validation: split.val.len(),
            test: split.test.len(),
            training_samples: split.train.len() * opts.views.max(1) as usize,
        },
        views: opts.views.max(1),
        evaluated_on: eval_name.into(),
        before,
        after,
        feature_layer_only,
        discriminant_only,
        exported,
        exported_max_abs_diff,
        epochs_run: trained.epochs_run,
        best_epoch: trained.best_epoch,
        config: cfg_used,
        embeddings_computed: computed,
        embeddings_cached: cached,
        skipped,
        seconds: Timings {
            embeddings: t_embed,
            training: t_train,
            export: t_export,
            check: t_check,
            total: secs(started),
        },
        history: trained.history.clone(),
    };
    write_atomic(
        &out.join(REPORT_FILE),
        (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
    )?;
    Ok(report)
}

/// `f` over `items` on all cores (one item per task), off the async runtime.
async fn on_all_cores<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> R + Send + Sync + 'static,
) -> Result<Vec<R>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    Ok(
        tokio::task::spawn_blocking(move || items.into_par_iter().with_max_len(1).map(f).collect())
            .await?,
    )
}

/// Fetches the images of `jobs` (example index, views); a missing or unreadable object is an
/// error: the listing just named it.
async fn fetch(
    source: &DynStore,
    dataset: &Dataset,
    jobs: &[(usize, u32)],
) -> Result<Vec<(usize, u32, bytes::Bytes)>> {
    futures::stream::iter(jobs.iter().copied())
        .map(|(i, views)| {
            let key = dataset.examples[i].key.clone();
            async move {
                get_object(source.as_ref(), &key)
                    .await
                    .map(|o| (i, views, o.bytes))
                    .with_context(|| format!("fetching {key}"))
            }
        })
        .buffered(FETCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The last path component of a folder or `s3://bucket/prefix`.
fn folder_name(location: &str) -> String {
    location
        .trim_end_matches('/')
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("model")
        .to_string()
}

/// Lower-case letters, digits, `-`, `.` and `_` only.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}
