//! The export: the base graph plus the trained feature layer (and discriminant) as one ONNX
//! model with its card, written to the output folder; then the check that loads it back the
//! way search does and runs it from scratch on the evaluation images, through the shared
//! pipeline.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::encoder::Encoder;
use crate::model::fine_tuned::{self, DiscriminantLayer, FeatureLayer};
use crate::model::import::write_atomic;
use crate::model::{CARD_FILE, ONNX_FILE};
use crate::pipeline::{self, Job};
use crate::store::DynStore;
use crate::task;

use super::dataset::{Dataset, Split};
use super::discriminant::Discriminant;
use super::embed::{listed_bytes, Evaluation};
use super::error::TrainError;
use super::fit::Fitted;
use super::metrics::{self, Retrieval};
use super::options::TrainOptions;
use super::progress::{Event, Progress};

/// Writes the fine-tuned model of `fitted` on top of `base` (loaded from `base_dir`) to `out`;
/// returns its model id.
pub(super) fn export(
    base: &Encoder,
    base_dir: &Path,
    out: &Path,
    dataset: &Dataset,
    split: &Split,
    fitted: &Fitted,
    opts: &TrainOptions,
) -> Result<String, TrainError> {
    let head = &fitted.trained.head;
    let disc = fitted.discriminant.as_ref();
    let classifier = head.classifier();
    let bias = head.bias();
    let disc_bias = disc.map(Discriminant::bias);
    let layer = FeatureLayer {
        weights: &head.w1,
        bias: &bias,
        classifier: &classifier,
        labels: &dataset.categories,
        discriminant: disc
            .zip(disc_bias.as_deref())
            .map(|(d, b)| DiscriminantLayer {
                weights: &d.proj,
                bias: b,
                weight: opts.discriminant_weight,
            }),
    };
    let base_path = base_dir.join(ONNX_FILE);
    let base_onnx = std::fs::read(&base_path).map_err(|source| TrainError::ReadBase {
        path: base_path,
        source,
    })?;
    let onnx = fine_tuned::extend(&base_onnx, base.card(), &layer).map_err(TrainError::Extend)?;
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-ft", folder_name(&dataset.location)));
    let id = format!(
        "{}-{}d-{}",
        sanitize(&name),
        fitted.dims,
        &hex::encode(Sha256::digest(&onnx))[..8]
    );
    let card = fine_tuned::card(
        base.card(),
        id.clone(),
        fitted.dims,
        &dataset.categories,
        format!(
            "lookalike train: a {}-d feature layer and {} discriminant directions on {} ({} images in {} categories) over {}",
            head.dims,
            fitted.discriminant_dims(),
            dataset.location,
            split.train.len() + split.val.len(),
            dataset.categories.len(),
            base.model_id()
        ),
    );
    std::fs::create_dir_all(out).map_err(|source| TrainError::CreateOut {
        path: out.to_path_buf(),
        source,
    })?;
    write_file(&out.join(ONNX_FILE), &onnx)?;
    write_json(&out.join(CARD_FILE), "the model card", &card)?;
    Ok(id)
}

/// How the exported encoder, run from scratch, does on the evaluation images.
pub(super) struct Checked {
    /// Its retrieval precision.
    pub exported: Retrieval,
    /// Largest difference between its embeddings and the trained head's.
    pub max_abs_diff: f32,
}

/// Loads the model in `out` like search loads it and encodes the evaluation images with it.
pub(super) async fn check(
    source: &DynStore,
    dataset: &Dataset,
    eval: &Evaluation,
    fitted: &Fitted,
    out: &Path,
    opts: &TrainOptions,
    progress: &Progress,
) -> Result<Checked, TrainError> {
    let encoder = Arc::new(
        Encoder::load(out).map_err(|source| TrainError::LoadExported {
            path: out.to_path_buf(),
            source: Box::new(source),
        })?,
    );
    let dims = fitted.dims;
    let jobs: Vec<Job<(usize, usize)>> = eval
        .examples
        .iter()
        .enumerate()
        .map(|(row, &i)| Job {
            item: (row, i),
            store: source.clone(),
            key: dataset.examples[i].key.clone(),
            size: 0,
        })
        .collect();
    let key = |&(_, i): &(usize, usize)| dataset.examples[i].key.clone();
    let mut features = vec![0f32; eval.examples.len() * dims];
    let mut chunks = pipeline::fetch_chunks(
        jobs,
        pipeline::FetchLimits::for_images(opts.limits.max_bytes),
    );
    while let Some(chunk) = chunks.next().await {
        let fetched = listed_bytes(chunk, key)?;
        let (enc, limits, progress) = (encoder.clone(), opts.limits, progress.clone());
        let vectors = task::par_map(fetched, move |(item, bytes)| {
            let r = enc.encode_image(&bytes, &limits);
            progress(Event::Checked(1));
            (item, r)
        })
        .await?;
        for (item, v) in vectors {
            let v = v.map_err(|source| TrainError::ExportedEncode {
                key: key(&item),
                source: Box::new(source),
            })?;
            let row = item.0;
            features[row * dims..(row + 1) * dims].copy_from_slice(&v);
        }
    }
    Ok(Checked {
        exported: metrics::precision(&features, dims, &eval.samples.y),
        max_abs_diff: features
            .iter()
            .zip(&fitted.eval_features)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max),
    })
}

/// Writes a file of the output atomically.
pub(super) fn write_file(path: &Path, data: &[u8]) -> Result<(), TrainError> {
    write_atomic(path, data).map_err(|e| TrainError::Write {
        path: path.to_path_buf(),
        source: e,
    })
}

/// Writes `value` as pretty JSON (and a newline) atomically; `what` names it in an error.
pub(super) fn write_json(
    path: &Path,
    what: &'static str,
    value: &impl Serialize,
) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(value)
        .map_err(|source| TrainError::Serialize { what, source })?;
    write_file(path, (json + "\n").as_bytes())
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
