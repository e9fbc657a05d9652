//! What both Lambda functions assemble in their init phase: the environment they share
//! ([`FunctionEnv`]), JSON logging, the model and the index's store, with a typed [`InitError`]
//! that the runtime reports as the init failure.

use std::path::PathBuf;

use crate::config::{env_string, ConfigError};
use crate::model::card::ModelCard;
use crate::model::encoder::{Encoder, EncoderError};
use crate::store::{self, DynStore, StoreError};

/// Where the model layer puts the model.
pub const LAMBDA_MODEL_DIR: &str = "/opt/model";

/// Why a function could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A setting in the environment is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The model folder could not be loaded.
    #[error("cannot load the model from {}: {source}", path.display())]
    Model {
        /// The model folder.
        path: PathBuf,
        /// What the encoder reported.
        #[source]
        source: Box<EncoderError>,
    },
    /// The thread loading the model failed (a panic: a bug, reported as such).
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    /// The index's store could not be opened (a bad location, or no S3 client configuration).
    #[error("cannot open the index {index}: {source}")]
    Store {
        /// The index location.
        index: String,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
}

/// What both Lambda functions read: the index, the model and the local segment cache.
#[derive(Debug, Clone)]
pub struct FunctionEnv {
    /// `LOOKALIKE_INDEX`: `s3://bucket/prefix` of the index (required).
    pub index: String,
    /// `LOOKALIKE_MODEL`: folder with `encoder.onnx` and `model.json` (default `/opt/model`,
    /// where the model layer is mounted).
    pub model: PathBuf,
    /// `LOOKALIKE_CACHE_DIR`: local copies of the index's segments.
    pub cache_dir: PathBuf,
}

impl FunctionEnv {
    /// From the environment; `default_cache` when `LOOKALIKE_CACHE_DIR` is unset.
    pub fn from_env(default_cache: &str) -> Result<FunctionEnv, ConfigError> {
        let index = env_string("LOOKALIKE_INDEX", "");
        if index.is_empty() {
            return Err(ConfigError {
                name: "LOOKALIKE_INDEX".into(),
                value: String::new(),
                reason: "set it to the index location, s3://bucket/prefix".into(),
            });
        }
        Ok(FunctionEnv {
            index,
            model: env_string("LOOKALIKE_MODEL", LAMBDA_MODEL_DIR).into(),
            cache_dir: env_string("LOOKALIKE_CACHE_DIR", default_cache).into(),
        })
    }

    /// The init phase's common part: load the model and open the index's store (an S3 client).
    pub async fn load(&self) -> Result<(Encoder, DynStore), InitError> {
        let encoder = self.load_model()?;
        let store = self.open_store().await?;
        Ok((encoder, store))
    }

    /// The model (the ONNX graph, optimised for one image: the slow part of an init).
    pub fn load_model(&self) -> Result<Encoder, InitError> {
        Encoder::load(&self.model).map_err(|source| InitError::Model {
            path: self.model.clone(),
            source: Box::new(source),
        })
    }

    /// The model's card alone (its identity and embedding size), read in a millisecond.
    pub fn model_card(&self) -> Result<ModelCard, InitError> {
        ModelCard::load(&self.model).map_err(|source| InitError::Model {
            path: self.model.clone(),
            source: Box::new(source.into()),
        })
    }

    /// The index's store (an S3 client for an `s3://` location).
    pub async fn open_store(&self) -> Result<DynStore, InitError> {
        store::open(&self.index)
            .await
            .map_err(|source| InitError::Store {
                index: self.index.clone(),
                source,
            })
    }
}

/// JSON log lines (what CloudWatch Logs and Lambda's log tooling expect), filtered by `RUST_LOG`
/// (default `info`); Lambda adds the timestamps.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_ansi(false)
        .without_time()
        .try_init();
}
