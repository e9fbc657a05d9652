//! The training phase: the discriminant directions in closed form, then the feature layer in
//! what is left of the dimensions, both on the blocking pool; and the quality of the base and
//! of the trained embedding on the evaluation images.

use std::time::Instant;

use crate::task;

use super::discriminant::{self, Discriminant};
use super::embed::{Evaluation, Training};
use super::error::TrainError;
use super::head::{self, HeadConfig, Trained};
use super::metrics::{self, Quality, Retrieval};
use super::options::TrainOptions;
use super::progress::{Event, Progress};

/// The trained parts of the embedding and how they do on the evaluation images.
pub(super) struct Fitted {
    /// The discriminant directions (none with a discriminant weight of 0).
    pub discriminant: Option<Discriminant>,
    /// The feature layer and classifier of the best epoch, with the training history.
    pub trained: Trained,
    /// The head's configuration as trained (its dims are what the discriminant left).
    pub config: HeadConfig,
    /// Embedding dimensions: the feature layer's plus the discriminant's.
    pub dims: usize,
    /// The base embeddings.
    pub before: Quality,
    /// The trained embedding (feature layer and discriminant).
    pub after: Quality,
    /// The feature layer alone.
    pub feature_layer_only: Retrieval,
    /// The discriminant alone.
    pub discriminant_only: Option<Retrieval>,
    /// The trained embedding of the evaluation images, `dims` values each.
    pub eval_features: Vec<f32>,
    /// Seconds spent fitting and training.
    pub seconds: f64,
}

impl Fitted {
    /// Dimensions of the discriminant part (0 without one).
    pub(super) fn discriminant_dims(&self) -> usize {
        self.discriminant.as_ref().map_or(0, |d| d.dims)
    }
}

/// Fits the discriminant (on every labelled image the head may use: no early stopping needs the
/// validation images) and trains the feature layer on `training`, for `classes` categories.
pub(super) async fn fit(
    training: Training,
    eval: &Evaluation,
    classes: usize,
    opts: &TrainOptions,
    progress: &Progress,
) -> Result<Fitted, TrainError> {
    let Training {
        train,
        train_plain,
        val,
    } = training;
    let d = train.dims;
    let ev = &eval.samples;
    let before = Quality {
        accuracy: metrics::nearest_mean_accuracy(
            &train_plain.x,
            &train_plain.y,
            &ev.x,
            &ev.y,
            d,
            classes,
        ),
        retrieval: metrics::precision(&ev.x, d, &ev.y),
    };

    let t = Instant::now();
    let disc = if opts.discriminant_weight > 0.0 {
        let mut labelled = train_plain.clone();
        labelled.x.extend_from_slice(&val.x);
        labelled.y.extend_from_slice(&val.y);
        // At most classes - 1 directions: the options' check left the feature layer room.
        let shrinkage = opts.shrinkage;
        let fitted = task::blocking(move || Discriminant::fit(&labelled, classes, shrinkage))
            .await?
            .map_err(TrainError::Discriminant)?;
        Some(fitted)
    } else {
        None
    };
    let disc_dims = disc.as_ref().map_or(0, |d| d.dims);
    progress(Event::Training {
        max_epochs: opts.head.max_epochs,
    });
    let mut config = opts.head.clone();
    config.dims -= disc_dims;
    let trained = {
        let (progress, cfg) = (progress.clone(), config.clone());
        task::blocking(move || {
            head::train(&train, &val, &train_plain, classes, &cfg, &mut |e| {
                progress(Event::Epoch(e.clone()))
            })
        })
        .await?
    };
    let seconds = t.elapsed().as_secs_f64();

    let head = &trained.head;
    let head_features = head.features(&ev.x);
    let feature_layer_only = metrics::precision(&head_features, head.dims, &ev.y);
    let (eval_features, discriminant_only) = match &disc {
        Some(disc) => {
            let f = disc.features(&ev.x);
            let only = metrics::precision(&f, disc.dims, &ev.y);
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
        accuracy: head.evaluate(ev).1,
        retrieval: metrics::precision(&eval_features, dims, &ev.y),
    };
    Ok(Fitted {
        discriminant: disc,
        trained,
        config,
        dims,
        before,
        after,
        feature_layer_only,
        discriminant_only,
        eval_features,
        seconds,
    })
}
