//! `lookalike train`: fine-tunes an encoder for a catalogue. On top of a frozen base model it
//! trains a feature layer (the new embedding) and a category classifier on images sorted into
//! category folders, then exports the base graph plus the feature layer as one ONNX model.
//!
//! [`train`] runs the phases in order, one file each:
//!
//! - `options`: [`TrainOptions`], their defaults and the checks made before any image is read.
//! - `embed`: the embedding pass, the base embeddings of the split's images through the shared
//!   pipeline, gathered into the training and evaluation sets.
//! - `fit`: the discriminant directions and the feature layer, and their quality.
//! - `export`: the fine-tuned ONNX model and its card, and the check of the exported encoder.
//! - `report`: the [`TrainReport`] written beside the model.
//!
//! Beside them, `progress` holds the [`Event`]s `train` sends while it works and `error` the
//! [`TrainError`] it stops with.
//!
//! What they are built from:
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
mod embed;
mod error;
mod export;
pub mod features;
mod fit;
pub mod head;
pub mod linalg;
pub mod metrics;
mod options;
mod progress;
mod report;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::model::encoder::Encoder;
use crate::store::DynStore;

pub use dataset::{Dataset, DatasetError, Split, SplitFraction};
pub use discriminant::{Discriminant, DiscriminantError};
pub use embed::Skipped;
pub use error::TrainError;
pub use head::{EpochStats, HeadConfig, Samples};
pub use metrics::{Quality, Retrieval};
pub use options::TrainOptions;
pub use progress::{Event, Progress};
pub use report::{ImageCounts, Timings, TrainReport, REPORT_FILE};

/// Trains on the category folders of `source` on top of the model in `base_dir` and writes the
/// fine-tuned model (encoder.onnx, model.json, training.json) to `out`.
pub async fn train(
    source: DynStore,
    base_dir: &Path,
    out: &Path,
    opts: &TrainOptions,
    progress: Progress,
) -> Result<TrainReport, TrainError> {
    let started = Instant::now();
    opts.check(base_dir, out)?;
    let base = Arc::new(
        Encoder::load(base_dir).map_err(|source| TrainError::LoadBase {
            path: base_dir.to_path_buf(),
            source: Box::new(source),
        })?,
    );
    let dataset = Dataset::list(source.as_ref()).await?;
    let split = dataset.split(opts.val_split, opts.test_split, opts.seed)?;
    let classes = dataset.categories.len();
    opts.check_dims(classes)?;

    let t = Instant::now();
    let embedded = embed::embed(&source, &dataset, &split, &base, opts, &progress).await?;
    let embeddings = secs(t);
    let (training, eval, tally) = embedded.into_sets(&dataset, &split, base.dims())?;

    let fitted = fit::fit(training, &eval, classes, opts, &progress).await?;

    let t = Instant::now();
    progress(Event::Exporting {
        images: eval.examples.len() as u64,
    });
    let model_id = export::export(&base, base_dir, out, &dataset, &split, &fitted, opts)?;
    let export_secs = secs(t);

    let t = Instant::now();
    let checked = export::check(&source, &dataset, &eval, &fitted, out, opts, &progress).await?;
    let check_secs = secs(t);

    let seconds = Timings {
        embeddings,
        training: fitted.seconds,
        export: export_secs,
        check: check_secs,
        total: secs(started),
    };
    let report = TrainReport::from(report::Phases {
        model_id,
        base: &base,
        dataset: &dataset,
        split: &split,
        opts,
        out,
        tally,
        eval: &eval,
        fitted,
        checked,
        seconds,
    });
    export::write_json(&out.join(REPORT_FILE), "the training report", &report)?;
    Ok(report)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
