//! `lookalike query` and `lookalike stats`.

use std::path::PathBuf;

use clap::Args;

use lookalike::index::filter;
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
    /// Only results this filter keeps: the compact form (`color=red,price<50`) or JSON
    /// (`{"color": "red"}`); see the README's "Filters".
    #[arg(long)]
    pub filter: Option<String>,
    /// Skip this many results (a later page; offset + k at most 500).
    #[arg(long)]
    pub offset: Option<i64>,
    /// Only results at least this similar (cosine, -1..=1): the near-duplicates of the query
    /// (with k up to 100; the README's "Near-duplicates").
    #[arg(long, allow_negative_numbers = true)]
    pub min_score: Option<f64>,
    /// Print JSON: {"results": [{"key", "score", "category", "metadata"}], ...}.
    #[arg(long)]
    pub json: bool,
}

/// The search options of the command line.
fn options(args: &QueryArgs) -> anyhow::Result<query::SearchOptions> {
    let k = query::check_k(args.k)?;
    let mut options = query::SearchOptions::top(k).in_category(args.category.as_deref());
    if let Some(text) = &args.filter {
        let parsed = filter::text::parse_compact_or_json(text)
            .map_err(|e| anyhow::anyhow!("bad --filter: {e}"))?;
        options.filter = Some(parsed);
    }
    if let Some(offset) = args.offset {
        options.offset = Some(query::check_offset(offset, k)?);
    }
    if let Some(m) = args.min_score {
        options.min_score = Some(query::check_min_score(m)?);
    }
    Ok(options)
}

pub async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let options = options(&args)?;
    let response = if let Some(key) = &args.key {
        let index = args.location.open(None).await?;
        let snapshot = index.snapshot();
        query::by_key(&snapshot, key, &options)?
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
            &options,
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
