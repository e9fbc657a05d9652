//! The function's configuration, from the environment.

use lookalike::api::ServiceConfig;
use lookalike::config::ConfigError;
use lookalike::lambda::FunctionEnv;

/// Segment cache in the function's ephemeral storage.
pub const DEFAULT_CACHE: &str = "/tmp/lookalike/query";

#[derive(Debug, Clone)]
pub struct Config {
    /// `LOOKALIKE_INDEX`, `LOOKALIKE_MODEL`, `LOOKALIKE_CACHE_DIR`.
    pub env: FunctionEnv,
    /// `LOOKALIKE_CHECK_INTERVAL_SECS`, `LOOKALIKE_PRESIGN_SECS`, image limits.
    pub service: ServiceConfig,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Ok(Config {
            env: FunctionEnv::from_env(DEFAULT_CACHE)?,
            service: ServiceConfig::from_env()?,
        })
    }
}
