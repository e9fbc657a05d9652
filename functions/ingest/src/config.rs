//! The function's configuration, from the environment.

use lookalike::config::ConfigError;
use lookalike::lambda::FunctionEnv;
use lookalike::preprocess::Limits;

/// Segment cache in the function's ephemeral storage.
pub const DEFAULT_CACHE: &str = "/tmp/lookalike/ingest";

#[derive(Debug, Clone)]
pub struct Config {
    /// `LOOKALIKE_INDEX`, `LOOKALIKE_MODEL`, `LOOKALIKE_CACHE_DIR`.
    pub env: FunctionEnv,
    /// `LOOKALIKE_MAX_IMAGE_BYTES`, `LOOKALIKE_MAX_PIXELS`, `LOOKALIKE_MAX_SIDE`.
    pub limits: Limits,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Ok(Config {
            env: FunctionEnv::from_env(DEFAULT_CACHE)?,
            limits: Limits::from_env(Limits::default())?,
        })
    }
}
