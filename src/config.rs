//! Configuration from the environment: typed values with defaults and a clear error naming the
//! variable when a value does not parse. The lowest layer of the crate: it imports nothing from it
//! (the modules that own a setting read it with these helpers, e.g. `preprocess::Limits::from_env`).

use std::str::FromStr;
use std::time::Duration;

/// An environment variable whose value is refused.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    /// The variable's name.
    pub name: String,
    /// Its value as set.
    pub value: String,
    /// Why the value is refused.
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
