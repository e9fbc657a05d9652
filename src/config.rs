//! Configuration from the environment, shared by the Lambdas: typed values with defaults and a
//! clear error naming the variable when a value does not parse.

use std::str::FromStr;
use std::time::Duration;

use crate::preprocess::Limits;

#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// `name` parsed as `T`, or `default` when unset or empty.
pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name: name.into(),
            value: v.clone(),
            reason: e.to_string(),
        }),
        _ => Ok(default),
    }
}

/// A string variable, or `default` when unset or empty.
pub fn env_string(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A duration in seconds (fractions allowed).
pub fn env_secs(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let secs: f64 = env_or(name, default.as_secs_f64())?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(ConfigError {
            name: name.into(),
            value: secs.to_string(),
            reason: "must be between 0 and 1e9 seconds".into(),
        });
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Image limits: `LOOKALIKE_MAX_IMAGE_BYTES`, `LOOKALIKE_MAX_PIXELS`, `LOOKALIKE_MAX_SIDE`
/// over `base`.
pub fn limits_from_env(base: Limits) -> Result<Limits, ConfigError> {
    let side: u32 = env_or("LOOKALIKE_MAX_SIDE", base.max_width.max(base.max_height))?;
    Ok(Limits {
        max_bytes: env_or("LOOKALIKE_MAX_IMAGE_BYTES", base.max_bytes)?,
        max_pixels: env_or("LOOKALIKE_MAX_PIXELS", base.max_pixels)?,
        max_width: side,
        max_height: side,
        ..base
    })
}

/// JSON log lines (what CloudWatch Logs and Lambda's log tooling expect), filtered by `RUST_LOG`
/// (default `info`); Lambda adds the timestamps.
pub fn init_lambda_logging() {
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

/// What both Lambda functions read: the index, the model and the local segment cache.
#[derive(Debug, Clone)]
pub struct FunctionEnv {
    /// `LOOKALIKE_INDEX`: `s3://bucket/prefix` of the index (required).
    pub index: String,
    /// `LOOKALIKE_MODEL`: folder with `encoder.onnx` and `model.json` (default `/opt/model`,
    /// where the model layer is mounted).
    pub model: std::path::PathBuf,
    /// `LOOKALIKE_CACHE_DIR`: local copies of the index's segments.
    pub cache_dir: std::path::PathBuf,
}

/// Where the model layer puts the model.
pub const LAMBDA_MODEL_DIR: &str = "/opt/model";

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
    pub async fn load(
        &self,
    ) -> Result<(crate::model::encoder::Encoder, crate::store::DynStore), String> {
        let encoder = crate::model::encoder::Encoder::load(&self.model)
            .map_err(|e| format!("cannot load the model from {}: {e}", self.model.display()))?;
        let store = crate::store::open(&self.index)
            .await
            .map_err(|e| format!("cannot open the index {}: {e}", self.index))?;
        Ok((encoder, store))
    }
}
