//! The function's configuration, from the environment.

use std::time::Duration;

use lookalike::config::{env_or, env_secs, ConfigError};
use lookalike::index::maintain::MaintainPolicy;
use lookalike::index::writer::{CompactionPolicy, GcPolicy};
use lookalike::lambda::FunctionEnv;

/// Segment cache in the function's ephemeral storage.
pub const DEFAULT_CACHE: &str = "/tmp/lookalike/compact";

#[derive(Debug, Clone)]
pub struct Config {
    /// `LOOKALIKE_INDEX`, `LOOKALIKE_CACHE_DIR` (the model is not needed).
    pub env: FunctionEnv,
    /// `LOOKALIKE_COMPACT_FANOUT` (segments of one level that trigger a merge, default 4),
    /// `LOOKALIKE_GC_GRACE_SECS` (how long a replaced segment stays downloadable, default 900),
    /// `LOOKALIKE_ORPHAN_GRACE_SECS` (how long an uncommitted upload is kept, default 86400).
    pub policy: MaintainPolicy,
    /// `LOOKALIKE_COMPACT_RESERVE_SECS`: no merge starts with less than this much of the
    /// invocation's time left (default 120; a merge that started runs to its end).
    pub reserve: Duration,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let fanout: usize = env_or("LOOKALIKE_COMPACT_FANOUT", 4)?;
        if fanout < 2 {
            return Err(ConfigError {
                name: "LOOKALIKE_COMPACT_FANOUT".into(),
                value: fanout.to_string(),
                reason: "must be 2 or more".into(),
            });
        }
        let defaults = GcPolicy::default();
        Ok(Config {
            env: FunctionEnv::from_env(DEFAULT_CACHE)?,
            policy: MaintainPolicy {
                compaction: CompactionPolicy::Tiered { fanout },
                gc: GcPolicy {
                    retired: env_secs("LOOKALIKE_GC_GRACE_SECS", defaults.retired)?,
                    orphans: env_secs("LOOKALIKE_ORPHAN_GRACE_SECS", defaults.orphans)?,
                },
                ..MaintainPolicy::default()
            },
            reserve: env_secs("LOOKALIKE_COMPACT_RESERVE_SECS", Duration::from_secs(120))?,
        })
    }
}
