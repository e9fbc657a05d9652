//! What the subcommands share: the default paths, where the index and the model are
//! ([`IndexLocation`], [`ModelLocation`]) and how they are opened, the folder-or-S3 source
//! check, and the progress bar over images.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lookalike::index::Index;
use lookalike::model::encoder::Encoder;
use lookalike::store;

/// Where the index is kept unless `--index` or `LOOKALIKE_INDEX` says otherwise.
pub const DEFAULT_INDEX: &str = ".lookalike/index";
/// Where the model is kept unless `--model` or `LOOKALIKE_MODEL` says otherwise.
pub const DEFAULT_MODEL: &str = ".lookalike/model";
/// The folder for downloads, segment caches and training caches.
pub const DEFAULT_CACHE: &str = ".lookalike/cache";

/// Where the index is and where its segments are cached.
#[derive(Debug, Clone, Args)]
pub struct IndexLocation {
    /// Index location: a folder or s3://bucket/prefix.
    #[arg(long = "index", env = "LOOKALIKE_INDEX", default_value = DEFAULT_INDEX)]
    pub index: String,
    /// Local cache of index segments (defaults to a folder under .lookalike/cache).
    #[arg(long = "cache", env = "LOOKALIKE_CACHE")]
    pub cache: Option<PathBuf>,
}

impl IndexLocation {
    /// Where the index's segments are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| {
            use sha2::Digest;
            let h = hex::encode(sha2::Sha256::digest(self.index.as_bytes()));
            Path::new(DEFAULT_CACHE).join(format!("segments-{}", &h[..12]))
        })
    }

    /// Open the index; with `encoder`, refuse an index built with another model.
    pub async fn open(&self, encoder: Option<&Encoder>) -> anyhow::Result<Index> {
        let store = store::open(&self.index).await?;
        let model = encoder.map(Encoder::model_ref);
        Ok(Index::open(store, &self.cache_dir(), model).await?)
    }
}

/// Which encoder model to use.
#[derive(Debug, Clone, Args)]
pub struct ModelLocation {
    /// Model directory with encoder.onnx and model.json.
    #[arg(long = "model", env = "LOOKALIKE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
}

impl ModelLocation {
    /// Load the model.
    pub fn load(&self) -> anyhow::Result<Encoder> {
        let card = self.load_card()?;
        Ok(Encoder::load_with_card(
            &self.model.join(lookalike::model::ONNX_FILE),
            card,
        )?)
    }

    /// Check that the folder holds a model (without loading it); returns its card.
    pub fn load_card(&self) -> anyhow::Result<lookalike::model::ModelCard> {
        if !self.model.join(lookalike::model::ONNX_FILE).exists() {
            anyhow::bail!(
                "no model in {} (expected {} and {}); create it with `lookalike model import efficientnet-lite0 --out {}`",
                self.model.display(),
                lookalike::model::ONNX_FILE,
                lookalike::model::CARD_FILE,
                self.model.display()
            );
        }
        Ok(lookalike::model::ModelCard::load(&self.model)?)
    }
}

/// Opens the images at `location` (a folder or `s3://bucket/prefix`); a path that is not a
/// folder is an error naming it, after `flag` (`"--source "`, or `""` for a positional argument).
pub async fn open_source(location: &str, flag: &str) -> anyhow::Result<lookalike::store::DynStore> {
    check_source(location, flag)?;
    Ok(lookalike::store::open(location).await?)
}

/// Refuses a source that is neither an existing folder nor an S3 location (`flag` names the
/// option in the message).
pub fn check_source(location: &str, flag: &str) -> anyhow::Result<()> {
    if !location.starts_with("s3://") && !std::path::Path::new(location).is_dir() {
        anyhow::bail!("{flag}{location} is not a folder (or an s3://bucket/prefix)");
    }
    Ok(())
}

/// A progress bar over `len` images, headed `what` (`"indexing"`).
pub fn image_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} images  {{per_sec}}  ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
