//! The compaction Lambda (`lookalike-compact`): a thin adapter that runs the core's unattended
//! maintenance ([`lookalike::index::maintain`]) on a schedule. Tiered compaction keeps the number
//! of segments (what every query searches and every cold start downloads) logarithmic in the
//! index size, and garbage collection removes replaced segments once their grace period is over.
//!
//! The template gives it a reserved concurrency of 1 (at most one compaction at a time) and
//! drops a scheduled invocation that would have to wait; ingest never waits for it, since a
//! compaction commits only if its inputs are still listed and keeps whatever was committed
//! meanwhile.
//!
//! - [`config`]: the environment.

pub mod config;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lookalike::index::maintain::{maintain, MaintainPolicy};
use lookalike::index::{Index, IndexError};
use lookalike::store::DynStore;
use serde::Serialize;
use tokio::sync::OnceCell;

/// The function's state, created once per container.
pub struct CompactFunction {
    store: DynStore,
    cache_dir: PathBuf,
    policy: MaintainPolicy,
    reserve: Duration,
    /// Opened on first use, so that a store outage fails an invocation, not the container.
    index: OnceCell<Arc<Index>>,
}

/// What one invocation did (logged, and returned to a direct invocation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Compactions committed.
    pub compactions: usize,
    /// Items written into merged segments.
    pub items_merged: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    /// Segment files deleted by garbage collection.
    pub removed: usize,
    /// More was left to merge when the time ran out (the next invocation goes on).
    pub out_of_time: bool,
    /// The invocation's time left when it started (none: no deadline).
    pub time_left_ms: Option<u64>,
    pub elapsed_ms: f64,
}

impl CompactFunction {
    /// A function over the index in `store`, with its local segment copies in `cache_dir`.
    pub fn new(
        store: DynStore,
        cache_dir: impl Into<PathBuf>,
        policy: MaintainPolicy,
        reserve: Duration,
    ) -> Self {
        CompactFunction {
            store,
            cache_dir: cache_dir.into(),
            policy,
            reserve,
            index: OnceCell::new(),
        }
    }

    /// One maintenance run with `time_left` before the invocation's deadline (`None`: no
    /// deadline). Whatever the event (a schedule's, or `{}` from `sam local invoke`).
    pub async fn handle(&self, time_left: Option<Duration>) -> Result<Summary, IndexError> {
        let index = self
            .index
            .get_or_try_init(|| async {
                Index::open(self.store.clone(), &self.cache_dir, None)
                    .await
                    .map(Arc::new)
            })
            .await?;
        let budget = time_left.map_or(Duration::MAX, |t| t.saturating_sub(self.reserve));
        let run = maintain(
            index,
            MaintainPolicy {
                budget,
                ..self.policy
            },
        )
        .await?;
        let summary = Summary {
            compactions: run.compactions.len(),
            items_merged: run
                .compactions
                .iter()
                .filter_map(|c| c.output.as_ref())
                .map(|o| o.items)
                .sum(),
            segments_before: run.segments_before,
            segments_after: run.segments_after,
            removed: run.removed.len(),
            out_of_time: run.out_of_time,
            time_left_ms: time_left.map(|t| t.as_millis() as u64),
            elapsed_ms: run.elapsed.as_secs_f64() * 1e3,
        };
        tracing::info!(
            compactions = summary.compactions,
            items_merged = summary.items_merged,
            segments_before = summary.segments_before,
            segments_after = summary.segments_after,
            removed = summary.removed,
            out_of_time = summary.out_of_time,
            elapsed_ms = summary.elapsed_ms,
            "maintenance done"
        );
        Ok(summary)
    }
}
