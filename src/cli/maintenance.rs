//! `lookalike delete`, `compact` and `gc`.

use std::time::Duration;

use clap::Args;

use lookalike::index::segment::BuildParams;
use lookalike::index::writer::{self, CompactionPolicy};

use super::common::IndexLocation;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Keys to remove from search results.
    #[arg(required = true)]
    pub keys: Vec<String>,
    #[command(flatten)]
    pub location: IndexLocation,
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let index = args.location.open(None).await?;
    let snapshot = index.snapshot();
    if snapshot.etag.is_none() {
        anyhow::bail!("index {} is empty: nothing to delete", args.location.index);
    }
    let model = snapshot.manifest.model.clone();
    let commit = writer::append(
        &index,
        &model,
        Vec::new(),
        &args.keys,
        BuildParams::default(),
    )
    .await?;
    if let Some(c) = commit {
        println!(
            "deleted {} keys (index version {})",
            args.keys.len(),
            c.version
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    /// Merge all segments into one (default: tiered, merging levels with 4 or more segments).
    #[arg(long)]
    pub all: bool,
    /// Tiered fan-out: segments per level that trigger a merge.
    #[arg(long, default_value_t = 4)]
    pub fanout: usize,
}

pub async fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let index = args.location.open(None).await?;
    let policy = if args.all {
        CompactionPolicy::All
    } else {
        CompactionPolicy::Tiered {
            fanout: args.fanout,
        }
    };
    let mut rounds = 0;
    while let Some(c) = writer::compact(&index, policy, BuildParams::default()).await? {
        rounds += 1;
        println!(
            "merged {} segments into {} (index version {})",
            c.merged.len(),
            c.output
                .as_ref()
                .map_or("nothing (all items were deleted)".to_string(), |o| format!(
                    "{} ({} items)",
                    o.name, o.items
                )),
            c.version
        );
        if matches!(policy, CompactionPolicy::All) {
            break;
        }
    }
    if rounds == 0 {
        println!("nothing to compact");
    }
    let removed = writer::gc(&index, Duration::from_secs(15 * 60)).await?;
    if !removed.is_empty() {
        println!(
            "removed {} unlisted segment files older than 15 minutes",
            removed.len()
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    /// Keep unlisted segments younger than this many seconds (a writer may be about to commit them).
    #[arg(long, default_value_t = 900)]
    pub grace_secs: u64,
}

pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let index = args.location.open(None).await?;
    let removed = writer::gc(&index, Duration::from_secs(args.grace_secs)).await?;
    println!("removed {} unlisted segment files", removed.len());
    for name in removed {
        println!("  {name}");
    }
    Ok(())
}
