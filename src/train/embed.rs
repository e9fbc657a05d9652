//! The embedding pass: the frozen base model's embeddings of the split's images (every view of
//! the training images, the plain view of the others), fetched and encoded through the shared
//! pipeline, then gathered into the training, validation and evaluation sets. An image that
//! cannot be decoded is skipped and listed; one that cannot be fetched is an error.

use std::sync::Arc;

use serde::Serialize;

use crate::model::encoder::Encoder;
use crate::pipeline::{self, Fetched, Job};
use crate::store::DynStore;
use crate::task;

use super::dataset::{Dataset, Split};
use super::error::TrainError;
use super::features::{self, FeatureCache};
use super::head::Samples;
use super::options::TrainOptions;
use super::progress::{Event, Progress};

/// An image left out because it could not be decoded.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// Its key in the source.
    pub key: String,
    /// Why it could not be used.
    pub reason: String,
}

/// The base embeddings of the split's images.
pub(super) struct Embedded {
    /// Per example (an index into [`Dataset::examples`]): the embedding of each view; none for
    /// an image that was skipped.
    views: Vec<Option<Vec<Vec<f32>>>>,
    /// What was skipped, computed and found in the cache.
    pub tally: Tally,
}

/// The counts of the embedding pass, for the report.
#[derive(Debug, Default)]
pub(super) struct Tally {
    /// The images that could not be decoded, and why.
    pub skipped: Vec<Skipped>,
    /// Embeddings computed.
    pub computed: usize,
    /// Embeddings found in the cache.
    pub cached: usize,
}

/// What the head and the discriminant are fitted on.
pub(super) struct Training {
    /// Every view of the training images.
    pub train: Samples,
    /// The plain view of the training images.
    pub train_plain: Samples,
    /// The plain view of the validation images.
    pub val: Samples,
}

/// The images the result is measured on: the test part, or the validation part without one.
pub(super) struct Evaluation {
    /// Their plain views' base embeddings.
    pub samples: Samples,
    /// The examples they are, in the order of `samples`.
    pub examples: Vec<usize>,
    /// `test` or `validation`.
    pub part: &'static str,
}

/// Embeds the split's images with `base`, through the embedding cache of `opts`.
pub(super) async fn embed(
    source: &DynStore,
    dataset: &Dataset,
    split: &Split,
    base: &Arc<Encoder>,
    opts: &TrainOptions,
    progress: &Progress,
) -> Result<Embedded, TrainError> {
    let cache =
        match &opts.cache_dir {
            Some(dir) => Some(FeatureCache::new(dir, base.model_id()).map_err(|source| {
                TrainError::Cache {
                    path: dir.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let mut wanted: Vec<(usize, u32)> = split
        .train
        .iter()
        .map(|&i| (i, opts.views()))
        .chain(split.val.iter().chain(&split.test).map(|&i| (i, 1)))
        .collect();
    wanted.sort_unstable();
    progress(Event::Embedding {
        images: wanted.len() as u64,
    });
    let jobs: Vec<Job<(usize, u32)>> = wanted
        .into_iter()
        .map(|(i, views)| Job {
            item: (i, views),
            store: source.clone(),
            key: dataset.examples[i].key.clone(),
            size: 0,
        })
        .collect();

    let mut embedded = Embedded {
        views: vec![None; dataset.examples.len()],
        tally: Tally::default(),
    };
    let mut chunks = pipeline::fetch_chunks(
        jobs,
        pipeline::FetchLimits::for_images(opts.limits.max_bytes),
    );
    while let Some(chunk) = chunks.next().await {
        let fetched = listed_bytes(chunk, |&(i, _)| dataset.examples[i].key.clone())?;
        let (base, cache, limits, progress) =
            (base.clone(), cache.clone(), opts.limits, progress.clone());
        let results = task::par_map(fetched, move |((i, views), bytes)| {
            let r = features::embed_views(&base, &bytes, views, &limits, cache.as_ref());
            progress(Event::Embedded(1));
            (i, views, r)
        })
        .await?;
        let tally = &mut embedded.tally;
        for (i, views, r) in results {
            match r {
                Ok((v, n)) => {
                    tally.computed += n;
                    tally.cached += views as usize - n;
                    embedded.views[i] = Some(v);
                }
                Err(e) => {
                    let key = dataset.examples[i].key.clone();
                    tracing::warn!(%key, error = %e, "skipping an image");
                    tally.skipped.push(Skipped {
                        key,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
    Ok(embedded)
}

impl Embedded {
    /// The training and evaluation sets of `split` (`dims`-wide base embeddings), and the
    /// tally; refused when no training image or fewer than 2 evaluation images were read.
    pub(super) fn into_sets(
        self,
        dataset: &Dataset,
        split: &Split,
        dims: usize,
    ) -> Result<(Training, Evaluation, Tally), TrainError> {
        let gather = |part: &[usize], all_views: bool| -> (Samples, Vec<usize>) {
            let mut s = Samples::new(dims);
            let mut used = Vec::new();
            for &i in part {
                if let Some(views) = &self.views[i] {
                    let take = if all_views { views.len() } else { 1 };
                    for v in &views[..take] {
                        s.push(v, dataset.examples[i].label);
                    }
                    used.push(i);
                }
            }
            (s, used)
        };
        let training = Training {
            train: gather(&split.train, true).0,
            train_plain: gather(&split.train, false).0,
            val: gather(&split.val, false).0,
        };
        let (part, images) = if split.test.is_empty() {
            ("validation", &split.val)
        } else {
            ("test", &split.test)
        };
        let (samples, examples) = gather(images, false);
        if training.train.is_empty() {
            return Err(TrainError::NoTrainingImages);
        }
        if samples.len() < 2 {
            return Err(TrainError::TooFewEvaluationImages {
                found: samples.len(),
            });
        }
        let evaluation = Evaluation {
            samples,
            examples,
            part,
        };
        Ok((training, evaluation, self.tally))
    }
}

/// The fetched bytes of a chunk of listed images, in order; a missing or unreadable object is
/// an error (the listing just named it). `key` names an item's image.
pub(super) fn listed_bytes<T>(
    chunk: Vec<Fetched<T>>,
    key: impl Fn(&T) -> String,
) -> Result<Vec<(T, bytes::Bytes)>, TrainError> {
    chunk
        .into_iter()
        .map(|f| match f.object {
            Ok(o) => Ok((f.item, o.bytes)),
            Err(source) => Err(TrainError::Fetch {
                key: key(&f.item),
                source,
            }),
        })
        .collect()
}
