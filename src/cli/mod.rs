//! Command-line definitions and dispatch. Each subcommand lives in its own module.

mod demo;
mod indexing;
mod maintenance;
mod model;
mod output;
mod reindex;
mod search;
mod train;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use lookalike::index::Index;
use lookalike::model::encoder::Encoder;
use lookalike::store;

pub const DEFAULT_INDEX: &str = ".lookalike/index";
pub const DEFAULT_MODEL: &str = ".lookalike/model";
pub const DEFAULT_CACHE: &str = ".lookalike/cache";

#[derive(Debug, Parser)]
#[command(
    name = "lookalike",
    version,
    about = "Image-similarity search: index images, query by image"
)]
pub struct Cli {
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import or inspect encoder models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Encode every image under a folder or S3 prefix and add them to the index.
    Index(indexing::IndexArgs),
    /// Find the indexed images most similar to an image (or to an indexed key).
    Query(search::QueryArgs),
    /// Show what the index holds.
    Stats(search::StatsArgs),
    /// Remove keys from the index.
    Delete(maintenance::DeleteArgs),
    /// Merge segments (tiered by default, `--all` for one segment).
    Compact(maintenance::CompactArgs),
    /// Delete segment files that no manifest lists (left by interrupted writers or compactions).
    Gc(maintenance::GcArgs),
    /// Fine-tune the encoder on images sorted into category folders; writes a new model folder.
    Train(train::TrainArgs),
    /// Rebuild the index with another model (re-encodes every indexed image, then swaps atomically).
    Reindex(reindex::ReindexArgs),
    /// The embedded default end to end: import the model, index sample photos, run a query.
    Demo(demo::DemoArgs),
}

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
    fn cache_dir(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| {
            use sha2::Digest;
            let h = hex::encode(sha2::Sha256::digest(self.index.as_bytes()));
            Path::new(DEFAULT_CACHE).join(format!("segments-{}", &h[..12]))
        })
    }

    /// Open the index; with `encoder`, refuse an index built with another model.
    pub async fn open(&self, encoder: Option<&Encoder>) -> anyhow::Result<Index> {
        let store = store::open(&self.index).await?;
        let model = encoder.map(|e| lookalike::index::ModelRef {
            id: e.model_id().to_string(),
            dims: e.dims(),
        });
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

/// Opens the images at `location` (a folder or `s3://bucket/prefix`); a path that is not a
/// folder is an error naming it, after `flag` (`"--source "`, or `""` for a positional argument).
pub async fn open_source(location: &str, flag: &str) -> anyhow::Result<lookalike::store::DynStore> {
    if !location.starts_with("s3://") && !std::path::Path::new(location).is_dir() {
        anyhow::bail!("{flag}{location} is not a folder (or an s3://bucket/prefix)");
    }
    Ok(lookalike::store::open(location).await?)
}

impl ModelLocation {
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

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,lookalike=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(cmd) => model::run(cmd).await,
        Command::Index(args) => indexing::run(args).await,
        Command::Query(args) => search::query(args).await,
        Command::Stats(args) => search::stats(args).await,
        Command::Delete(args) => maintenance::delete(args).await,
        Command::Compact(args) => maintenance::compact(args).await,
        Command::Gc(args) => maintenance::gc(args).await,
        Command::Train(args) => train::run(args).await,
        Command::Reindex(args) => reindex::run(args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}
