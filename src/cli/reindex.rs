//! `lookalike reindex`: rebuild an index with another model.

use std::sync::Arc;

use clap::Args;

use lookalike::reindex::{ReindexError, Reindexer};

use super::common::{image_bar, open_source, IndexLocation, ModelLocation};

#[derive(Debug, Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    /// The new model: every indexed image is encoded again with it.
    #[command(flatten)]
    pub model: ModelLocation,
    /// Where the images are now (a folder or s3://bucket/prefix), in place of the location
    /// recorded with each item (e.g. a folder that moved); the new index records it.
    #[arg(long)]
    pub source: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: ReindexArgs) -> anyhow::Result<()> {
    let encoder = Arc::new(args.model.load()?);
    // No model check: the index holds the old model's embeddings.
    let index = Arc::new(args.location.open(None).await?);
    let source = match &args.source {
        Some(s) => Some(open_source(s, "--source ").await?),
        None => None,
    };
    let reindexer = Reindexer {
        source,
        ..Reindexer::new(index.clone(), encoder)
    };

    let bar = image_bar(index.snapshot().live_items(), "reindexing");
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let tick = bar.clone();
    let progress: lookalike::ingest::Progress = Arc::new(move |n| {
        tick.inc(n);
        // Items committed meanwhile are encoded on a retry: the bar grows with them.
        if tick.length().is_some_and(|len| tick.position() > len) {
            tick.set_length(tick.position());
        }
    });
    let result = reindexer.run(Some(progress)).await;
    bar.finish_and_clear();
    let report = result.map_err(with_flag_hint)?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let index_name = &args.location.index;
    if !report.swapped {
        println!(
            "index {index_name} already uses model {} ({}-d): nothing to do",
            report.new_model.id, report.new_model.dims
        );
        return Ok(());
    }
    println!(
        "reindexed {index_name} with model {} ({}-d, was {} {}-d): {} images encoded in {:.1} s, {} items in {} segments, version {}{}; `lookalike gc` removes the old segments once nothing reads them",
        report.new_model.id,
        report.new_model.dims,
        report.old_model.id,
        report.old_model.dims,
        report.encoded,
        report.seconds,
        report.items,
        report.segments.len(),
        report.version,
        if report.attempts > 1 {
            format!(" ({} attempts: the index changed meanwhile)", report.attempts)
        } else {
            String::new()
        }
    );
    if !report.dropped.is_empty() {
        println!(
            "dropped {} images whose objects are gone from the source:",
            report.dropped.len()
        );
        for key in &report.dropped {
            println!("  {key}");
        }
    }
    Ok(())
}

/// The library's error, with what to do about it on this command line.
fn with_flag_hint(e: ReindexError) -> anyhow::Error {
    let hint = match &e {
        ReindexError::SourceMissing { .. } => Some("give its new location with --source"),
        ReindexError::SourceEmpty { .. } => Some(
            "give the right source with --source; if the images were really deleted, \
             remove them with `lookalike delete` first",
        ),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::anyhow!("{e} ({hint})"),
        None => e.into(),
    }
}
