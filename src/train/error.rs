//! [`TrainError`]: why `train` stopped. The variants carry the facts (a path, a value, a count)
//! and keep the underlying error as their source (boxed where it is large); the CLI words them
//! in terms of its flags.

use std::path::PathBuf;

use crate::model::encoder::{EncodeError, EncoderError};
use crate::store::StoreError;
use crate::task::TaskError;

use super::dataset::DatasetError;
use super::discriminant::DiscriminantError;

/// Why `train` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The output folder is the base model's folder: training would overwrite its input.
    #[error("the output folder {} is the base model's folder; write the fine-tuned model somewhere else", .0.display())]
    OutIsBase(PathBuf),
    /// The discriminant weight is negative or not a number.
    #[error("the discriminant weight must be 0 or more, not {0}")]
    BadDiscriminantWeight(f32),
    /// The embedding's dimensions cannot hold the discriminant directions and a feature layer.
    #[error("an embedding of {dims} dimensions leaves no room for the feature layer next to the {directions} discriminant directions of {categories} categories")]
    NoRoomForFeatureLayer {
        /// The embedding dimensions asked for.
        dims: usize,
        /// The discriminant directions (categories - 1).
        directions: usize,
        /// The categories of the dataset.
        categories: usize,
    },
    /// The base model could not be loaded.
    #[error("cannot load the base model in {}", path.display())]
    LoadBase {
        /// The base model's folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<EncoderError>,
    },
    /// Listing or splitting the labelled images failed.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The embedding cache folder could not be created.
    #[error("cannot create the embedding cache in {}", path.display())]
    Cache {
        /// The cache folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// An image the listing named could not be fetched.
    #[error("cannot fetch {key}")]
    Fetch {
        /// The image's key in the source.
        key: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// No training image could be decoded (the report lists the skipped ones).
    #[error("no training image could be read (see the skipped images)")]
    NoTrainingImages,
    /// Fewer than 2 evaluation images were left to measure the result on.
    #[error("fewer than 2 evaluation images ({found} could be read)")]
    TooFewEvaluationImages {
        /// The evaluation images that could be read.
        found: usize,
    },
    /// The discriminant directions could not be fitted.
    #[error("cannot fit the discriminant directions")]
    Discriminant(#[source] DiscriminantError),
    /// The base model's ONNX file could not be read.
    #[error("cannot read {}", path.display())]
    ReadBase {
        /// The ONNX file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The feature layer could not be added to the base model's graph.
    #[error("cannot add the feature layer to the base model's graph")]
    Extend(#[source] crate::model::fine_tuned::FineTuneError),
    /// The output folder could not be created.
    #[error("cannot create {}", path.display())]
    CreateOut {
        /// The output folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A file of the fine-tuned model (or the report) could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: crate::model::import::FileError,
    },
    /// The model card or the report could not be serialised.
    #[error("cannot serialise {what}")]
    Serialize {
        /// What was being serialised.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The exported model could not be loaded back.
    #[error("cannot load the exported model in {}", path.display())]
    LoadExported {
        /// The output folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<EncoderError>,
    },
    /// The exported encoder failed on an image the base model read.
    #[error("the exported encoder failed on {key}, an image the base model read")]
    ExportedEncode {
        /// The image's key in the source.
        key: String,
        /// What went wrong.
        #[source]
        source: Box<EncodeError>,
    },
    /// A blocking task (embedding, fitting, training, checking) did not return.
    #[error(transparent)]
    Task(#[from] TaskError),
}
