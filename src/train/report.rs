//! The training report (`training.json` next to the model, and what `train` returns): what was
//! trained on what, how the base, the trained and the exported embeddings do, and the timings.

use std::path::Path;

use serde::Serialize;

use crate::model::encoder::Encoder;

use super::dataset::{Dataset, Split};
use super::embed::{Evaluation, Skipped, Tally};
use super::export::Checked;
use super::fit::Fitted;
use super::head::{EpochStats, HeadConfig};
use super::metrics::{Quality, Retrieval};
use super::options::TrainOptions;

/// The training report's file name, next to the model in the output folder.
pub const REPORT_FILE: &str = "training.json";

/// Images in each part of the split.
#[derive(Debug, Clone, Serialize)]
pub struct ImageCounts {
    /// Training images.
    pub train: usize,
    /// Validation (early stopping) images.
    pub validation: usize,
    /// Held-out test images.
    pub test: usize,
    /// Training samples: training images times views.
    pub training_samples: usize,
}

/// Seconds spent in each phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// The base embeddings.
    pub embeddings: f64,
    /// The discriminant and the feature layer.
    pub training: f64,
    /// Writing the model.
    pub export: f64,
    /// Running the exported encoder on the evaluation images.
    pub check: f64,
    /// All of it.
    pub total: f64,
}

/// What `train` did and how well the result works.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// The fine-tuned model's id.
    pub model_id: String,
    /// The base model's id.
    pub base_model: String,
    /// Embedding dimensions: the feature layer's plus the discriminant's.
    pub dims: usize,
    /// Dimensions of the trained feature layer.
    pub feature_layer_dims: usize,
    /// Dimensions of the discriminant directions (0 without them).
    pub discriminant_dims: usize,
    /// Weight of the discriminant directions in the embedding (0 without them).
    pub discriminant_weight: f32,
    /// Where the images came from.
    pub source: String,
    /// The output folder.
    pub out: String,
    /// The categories, in label order.
    pub categories: Vec<String>,
    /// Images in each part of the split.
    pub images: ImageCounts,
    /// Views per training image.
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
    /// The discriminant directions alone (none without them).
    pub discriminant_only: Option<Retrieval>,
    /// The exported encoder, run from scratch on the evaluation images.
    pub exported: Retrieval,
    /// Largest difference between the exported encoder's embeddings and the trained head's.
    pub exported_max_abs_diff: f32,
    /// Epochs trained.
    pub epochs_run: usize,
    /// The epoch whose head was kept.
    pub best_epoch: usize,
    /// The head's configuration as trained.
    pub config: HeadConfig,
    /// Base embeddings computed.
    pub embeddings_computed: usize,
    /// Base embeddings found in the cache.
    pub embeddings_cached: usize,
    /// Images that could not be decoded.
    pub skipped: Vec<Skipped>,
    /// Seconds spent in each phase.
    pub seconds: Timings,
    /// Every epoch's figures.
    pub history: Vec<EpochStats>,
}

/// What the report is made of: the inputs and each phase's result.
pub(super) struct Phases<'a> {
    pub model_id: String,
    pub base: &'a Encoder,
    pub dataset: &'a Dataset,
    pub split: &'a Split,
    pub opts: &'a TrainOptions,
    pub out: &'a Path,
    pub tally: Tally,
    pub eval: &'a Evaluation,
    pub fitted: Fitted,
    pub checked: Checked,
    pub seconds: Timings,
}

impl From<Phases<'_>> for TrainReport {
    fn from(p: Phases<'_>) -> Self {
        let Phases {
            model_id,
            base,
            dataset,
            split,
            opts,
            out,
            tally,
            eval,
            fitted,
            checked,
            seconds,
        } = p;
        let discriminant_dims = fitted.discriminant_dims();
        TrainReport {
            model_id,
            base_model: base.model_id().to_string(),
            dims: fitted.dims,
            feature_layer_dims: fitted.trained.head.dims,
            discriminant_dims,
            discriminant_weight: if fitted.discriminant.is_some() {
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
                training_samples: split.train.len() * opts.views() as usize,
            },
            views: opts.views(),
            evaluated_on: eval.part.into(),
            before: fitted.before,
            after: fitted.after,
            feature_layer_only: fitted.feature_layer_only,
            discriminant_only: fitted.discriminant_only,
            exported: checked.exported,
            exported_max_abs_diff: checked.max_abs_diff,
            epochs_run: fitted.trained.epochs_run,
            best_epoch: fitted.trained.best_epoch,
            config: fitted.config,
            embeddings_computed: tally.computed,
            embeddings_cached: tally.cached,
            skipped: tally.skipped,
            seconds,
            history: fitted.trained.history,
        }
    }
}
