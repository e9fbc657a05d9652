//! Keeping an index in shape without an operator: compaction rounds until the policy finds
//! nothing to merge (or the time budget is spent), then garbage collection. What the compaction
//! function runs on its schedule and what `lookalike compact` runs once.

use std::time::{Duration, Instant};

use super::segment::BuildParams;
use super::writer::{self, Compaction, CompactionPolicy, GcPolicy};
use super::{Index, IndexError};

/// What one maintenance run does.
#[derive(Debug, Clone, Copy)]
pub struct MaintainPolicy {
    /// Which segments to merge.
    pub compaction: CompactionPolicy,
    /// How merged segments are built.
    pub build: BuildParams,
    /// How long unlisted segment files are kept.
    pub gc: GcPolicy,
    /// No compaction round starts after this much time (one that started runs to its end).
    pub budget: Duration,
}

impl Default for MaintainPolicy {
    fn default() -> Self {
        MaintainPolicy {
            compaction: CompactionPolicy::default(),
            build: BuildParams::default(),
            gc: GcPolicy::default(),
            budget: Duration::MAX,
        }
    }
}

/// What a maintenance run did.
#[derive(Debug, Clone, Default)]
pub struct Maintenance {
    /// The compactions committed, in order.
    pub compactions: Vec<Compaction>,
    /// Segments in the manifest before the run.
    pub segments_before: usize,
    /// Segments in the manifest after it.
    pub segments_after: usize,
    /// Segment files deleted by garbage collection.
    pub removed: Vec<String>,
    /// Compaction stopped because the budget was spent while there was more to merge.
    pub out_of_time: bool,
    /// The run's duration.
    pub elapsed: Duration,
}

/// Compact until the policy finds nothing to merge (a merge that lost a race with another
/// writer is retried on the new manifest), then collect garbage.
pub async fn maintain(index: &Index, policy: MaintainPolicy) -> Result<Maintenance, IndexError> {
    let start = Instant::now();
    let mut run = Maintenance {
        segments_before: index.refresh().await?.manifest.segments.len(),
        ..Maintenance::default()
    };
    // Lost races in a row before giving up for this run (another compactor is at work).
    let mut lost = 0;
    loop {
        if start.elapsed() >= policy.budget {
            run.out_of_time =
                writer::pick_inputs(&index.refresh().await?.manifest, policy.compaction).is_some();
            break;
        }
        match writer::compact(index, policy.compaction, policy.build).await? {
            writer::Compacted::Done(c) => {
                lost = 0;
                tracing::info!(
                    merged = c.merged.len(),
                    items = c.output.as_ref().map_or(0, |o| o.items),
                    version = c.version,
                    "compacted"
                );
                run.compactions.push(c);
                if matches!(policy.compaction, CompactionPolicy::All) {
                    break;
                }
            }
            writer::Compacted::Nothing => break,
            writer::Compacted::Raced => {
                lost += 1;
                if lost >= 3 {
                    break;
                }
            }
        }
    }
    run.removed = writer::gc(index, policy.gc).await?;
    run.segments_after = index.refresh().await?.manifest.segments.len();
    run.elapsed = start.elapsed();
    Ok(run)
}
