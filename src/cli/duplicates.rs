//! `lookalike duplicates`: groups of near-duplicate images across the whole index.

use clap::Args;

use lookalike::duplicates::{self, DEFAULT_NEIGHBOURS};
use lookalike::query::DEFAULT_MIN_SCORE;

use super::common::{image_bar, IndexLocation};

#[derive(Debug, Args)]
pub struct DuplicatesArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    /// Cosine similarity at or above which two images are near-duplicates (-1..=1).
    #[arg(long, default_value_t = DEFAULT_MIN_SCORE, allow_negative_numbers = true)]
    pub min_score: f32,
    /// Nearest neighbours looked at per image (1..=100): groups larger than this are still
    /// found when their members chain together.
    #[arg(long, default_value_t = DEFAULT_NEIGHBOURS)]
    pub neighbours: usize,
    /// Print JSON: {"min_score", "items", "groups": [{"keys", "pairs": [{"a", "b", "score"}]}], ...}.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DuplicatesArgs) -> anyhow::Result<()> {
    if !(1..=100).contains(&args.neighbours) {
        anyhow::bail!(
            "--neighbours must be between 1 and 100, got {}",
            args.neighbours
        );
    }
    let index = args.location.open(None).await?;
    let snapshot = index.snapshot();
    let bar = image_bar(snapshot.live_items(), "comparing");
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (min_score, neighbours) = (args.min_score, args.neighbours);
    let tick = bar.clone();
    let report = lookalike::task::blocking(move || {
        duplicates::groups(&snapshot, min_score, neighbours, &|| tick.inc(1))
    })
    .await??;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} groups of near-duplicates (cosine ≥ {}) among {} images, {} images in them ({:.1} s)",
        report.groups.len(),
        report.min_score,
        report.items,
        report.grouped_items,
        report.took_ms / 1e3
    );
    for (n, group) in report.groups.iter().enumerate() {
        println!("\ngroup {}: {} images", n + 1, group.keys.len());
        for key in &group.keys {
            println!("  {key}");
        }
        for pair in &group.pairs {
            println!("    {:.3}  {}  ~  {}", pair.score, pair.a, pair.b);
        }
    }
    Ok(())
}
