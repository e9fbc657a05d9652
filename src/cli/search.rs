//! `lookalike query` and `lookalike stats`.

use std::path::PathBuf;

use clap::Args;

use lookalike::preprocess::Limits;
use lookalike::query;

use super::common::{IndexLocation, ModelLocation};
use super::output::{print_results, print_stats, stats_json};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The query image (JPEG, PNG, WebP, GIF, BMP). Omit with --key.
    #[arg(required_unless_present = "key")]
    pub image: Option<PathBuf>,
    /// Search by an indexed image's key instead of a file.
    #[arg(long, conflicts_with = "image")]
    pub key: Option<String>,
    #[command(flatten)]
    pub location: IndexLocation,
    #[command(flatten)]
    pub model: ModelLocation,
    /// How many results (1..=100).
    #[arg(short, long, default_value_t = query::DEFAULT_K as i64)]
    pub k: i64,
    /// Only results from this category (folder name).
    #[arg(long)]
    pub category: Option<String>,
    /// Print JSON: {"results": [{"key", "score", "category", "metadata"}], ...}.
    #[arg(long)]
    pub json: bool,
}

pub async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let k = query::check_k(args.k)?;
    let response = if let Some(key) = &args.key {
        let index = args.location.open(None).await?;
        let snapshot = index.snapshot();
        query::by_key(&snapshot, key, k, args.category.as_deref())?
    } else {
        let path = args.image.as_ref().expect("clap requires image or key");
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let encoder = args.model.load()?;
        let index = args.location.open(Some(&encoder)).await?;
        let snapshot = index.snapshot();
        query::by_image(
            &snapshot,
            &encoder,
            &bytes,
            &Limits::for_queries(),
            k,
            args.category.as_deref(),
        )?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        print_results(&response);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    #[arg(long)]
    pub json: bool,
}

pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let index = args.location.open(None).await?;
    let snapshot = index.snapshot();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats_json(&snapshot, &args.location.index))?
        );
    } else {
        print_stats(&snapshot, &args.location.index);
    }
    Ok(())
}
