//! `lookalike delete`, `compact` and `gc`.

use std::time::Duration;

use clap::Args;

use lookalike::index::maintain::{maintain, MaintainPolicy};
use lookalike::index::segment::BuildParams;
use lookalike::index::writer::{self, CompactionPolicy, GcPolicy};

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

/// How long unlisted segment files are kept (`compact` and `gc`).
#[derive(Debug, Args)]
pub struct GraceArgs {
    /// Keep a segment that left the manifest (replaced by a compaction or a reindex) this many
    /// seconds: readers of the previous manifest may still download it.
    #[arg(long, default_value_t = 900)]
    pub grace_secs: u64,
    /// Keep a segment that no manifest ever listed this many seconds after it was created: a
    /// writer (a long reindex) may still be about to commit it.
    #[arg(long, default_value_t = 86_400)]
    pub orphan_grace_secs: u64,
}

impl GraceArgs {
    fn policy(&self) -> GcPolicy {
        GcPolicy {
            retired: Duration::from_secs(self.grace_secs),
            orphans: Duration::from_secs(self.orphan_grace_secs),
        }
    }
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
    #[command(flatten)]
    pub grace: GraceArgs,
}

pub async fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let index = args.location.open(None).await?;
    let compaction = if args.all {
        CompactionPolicy::All
    } else {
        CompactionPolicy::Tiered {
            fanout: args.fanout,
        }
    };
    let run = maintain(
        &index,
        MaintainPolicy {
            compaction,
            gc: args.grace.policy(),
            ..MaintainPolicy::default()
        },
    )
    .await?;
    for c in &run.compactions {
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
    }
    if run.compactions.is_empty() {
        println!("nothing to compact");
    }
    println!(
        "{} segments before, {} after; removed {} unlisted segment files",
        run.segments_before,
        run.segments_after,
        run.removed.len()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    #[command(flatten)]
    pub grace: GraceArgs,
}

pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let index = args.location.open(None).await?;
    let removed = writer::gc(&index, args.grace.policy()).await?;
    println!("removed {} unlisted segment files", removed.len());
    for name in removed {
        println!("  {name}");
    }
    Ok(())
}
