//! `lookalike index`: encode a folder or S3 prefix into the index.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use lookalike::catalog::{is_image_name, MetadataTable, IMAGE_EXTENSIONS};
use lookalike::index::segment::BuildParams;
use lookalike::ingest::{Ingester, Outcome};
use lookalike::preprocess::Limits;
use lookalike::store::{open_images, ImageSource};

use super::common::{check_source, image_bar, IndexLocation, ModelLocation};

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Folder or s3://bucket/prefix holding the images (category = each image's parent folder).
    /// Items of an S3 prefix are keyed by their bucket-relative key, as the ingest function
    /// keys them (`s3://b/catalog` → `catalog/shoes/1.jpg`).
    pub source: String,
    #[command(flatten)]
    pub location: IndexLocation,
    #[command(flatten)]
    pub model: ModelLocation,
    /// CSV with per-image metadata: first column the key (path relative to SOURCE), then fields.
    #[arg(long)]
    pub metadata: Option<PathBuf>,
    /// Images per segment (one manifest commit each).
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,
    /// Also build this many arroy trees (over sign bits) in every segment, and search big
    /// segments through them (default: no trees; every segment's codes are scanned).
    #[arg(long)]
    pub trees: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: IndexArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    check_source(&args.source, "")?;
    let ImageSource {
        store: source,
        prefix,
    } = open_images(&args.source).await?;
    let encoder = Arc::new(args.model.load()?);
    let index = Arc::new(args.location.open(Some(&encoder)).await?);
    let metadata = match &args.metadata {
        Some(p) => Some(Arc::new(MetadataTable::load(p)?.under(&prefix))),
        None => None,
    };
    let listed = source.list(&prefix).await?;
    let total_files = listed.len();
    let objects: Vec<_> = listed
        .into_iter()
        .filter(|o| is_image_name(&o.key))
        .collect();
    let ignored = total_files - objects.len();
    let ingester = Ingester {
        index: index.clone(),
        encoder,
        source,
        limits: Limits::default(),
        metadata,
        build: BuildParams {
            n_trees: args.trees,
            trees_from: if args.trees.is_some() {
                1
            } else {
                BuildParams::default().trees_from
            },
            ..BuildParams::default()
        },
    };

    let bar = image_bar(objects.len() as u64, "indexing");
    let tick = bar.clone();
    let progress: lookalike::ingest::Progress = Arc::new(move |n| tick.inc(n));

    let mut reports = Vec::new();
    for batch in objects.chunks(args.batch_size.max(1)) {
        let report = ingester
            .ingest(batch.to_vec(), Vec::new(), Some(progress.clone()))
            .await?;
        reports.push(report);
    }
    bar.finish_and_clear();

    let count = |f: fn(&Outcome) -> bool| reports.iter().map(|r| r.count(f)).sum::<usize>();
    let indexed = count(|o| matches!(o, Outcome::Indexed));
    let duplicates = count(|o| matches!(o, Outcome::Duplicate));
    let rejected: Vec<_> = reports.iter().flat_map(|r| r.rejected()).cloned().collect();
    let failed: Vec<_> = reports.iter().flat_map(|r| r.failed()).cloned().collect();
    let snapshot = index.snapshot();
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "indexed": indexed,
            "duplicates": duplicates,
            "rejected": rejected,
            "failed": failed,
            "ignored_files": ignored,
            "seconds": secs,
            "version": snapshot.version(),
            "items": snapshot.live_items(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return fail_if_any(&failed);
    }
    println!(
        "indexed {indexed} images ({duplicates} already indexed) in {secs:.1} s ({:.1} images/s); index {} now holds {} items in {} segments (version {})",
        (indexed + duplicates) as f64 / secs.max(1e-9),
        args.location.index,
        snapshot.live_items(),
        snapshot.segment_count(),
        snapshot.version(),
    );
    if ignored > 0 {
        println!(
            "ignored {ignored} files that are not images by name ({})",
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    if !rejected.is_empty() {
        println!(
            "skipped {} files that could not be indexed:",
            rejected.len()
        );
        for r in &rejected {
            if let Outcome::Rejected { reason } = &r.outcome {
                println!("  {}: {reason}", r.key);
            }
        }
    }
    for r in &failed {
        if let Outcome::Failed { reason } = &r.outcome {
            eprintln!("not indexed this time: {}: {reason}", r.key);
        }
    }
    fail_if_any(&failed)
}

/// A run that could not fetch some images fails (after committing the rest): running it again
/// picks up exactly what is missing.
fn fail_if_any(failed: &[lookalike::ingest::ItemOutcome]) -> anyhow::Result<()> {
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} images could not be fetched; the others are committed, run the same command again",
            failed.len()
        )
    }
}
