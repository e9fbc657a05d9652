//! The function's configuration, from the environment.

use lookalike::config::{env_string, ConfigError};
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
    /// `LOOKALIKE_IMAGES_PREFIX`: the prefix the bucket's notifications watch (the template's
    /// `ImagesPrefix`), when set; checked against the index's prefix at start-up.
    pub images_prefix: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let env = FunctionEnv::from_env(DEFAULT_CACHE)?;
        let images_prefix =
            Some(env_string("LOOKALIKE_IMAGES_PREFIX", "")).filter(|p| !p.is_empty());
        if let Some(images) = &images_prefix {
            check_prefixes(&env.index, images)?;
        }
        Ok(Config {
            env,
            limits: Limits::from_env(Limits::default())?,
            images_prefix,
        })
    }
}

/// Refuses an index that lies inside the watched images prefix (or holds it): the function
/// ignores events for its own index's keys, so every upload would be dropped unseen, and
/// otherwise its own writes would trigger it.
pub fn check_prefixes(index: &str, images_prefix: &str) -> Result<(), ConfigError> {
    let index_keys = match lookalike::store::parse_s3_location(index) {
        Some((_, "")) => String::new(),
        Some((_, p)) => format!("{p}/"),
        None => return Ok(()),
    };
    if index_keys.starts_with(images_prefix) || images_prefix.starts_with(&index_keys) {
        return Err(ConfigError {
            name: "LOOKALIKE_IMAGES_PREFIX".into(),
            value: images_prefix.into(),
            reason: format!(
                "the index {index} (keys {index_keys:?}) overlaps the watched images prefix: \
                 uploads there would be ignored as the index's own files; put the index outside \
                 it (the template's IndexPrefix and ImagesPrefix)"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_prefixes;

    #[test]
    fn an_index_inside_the_images_prefix_is_refused() {
        for (index, images) in [
            ("s3://b/index", "images/"),
            ("s3://b/index", "images"),
            ("s3://b/images-index", "images/"),
            ("s3://b/a/index", "a/img/"),
        ] {
            assert!(check_prefixes(index, images).is_ok(), "{index} {images}");
        }
        for (index, images) in [
            ("s3://b/images/index", "images/"),
            ("s3://b/index", "index/"),
            ("s3://b/index", "ind"),
            ("s3://b", "images/"),
            ("s3://b/index", "index/photos/"),
        ] {
            let e = check_prefixes(index, images).unwrap_err();
            assert!(e.to_string().contains("overlaps"), "{index} {images}: {e}");
        }
    }
}
