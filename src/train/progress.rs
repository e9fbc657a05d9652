//! What `train` reports while it works: the [`Event`]s it sends to a [`Progress`] callback.

use std::sync::Arc;

use super::head::EpochStats;

/// What `train` reports while it works.
#[derive(Debug, Clone)]
pub enum Event {
    /// About to compute the backbone embeddings of `images` images.
    Embedding {
        /// Images to embed.
        images: u64,
    },
    /// `n` more images embedded.
    Embedded(u64),
    /// About to train for at most `max_epochs`.
    Training {
        /// The most epochs the training may run.
        max_epochs: usize,
    },
    /// An epoch finished.
    Epoch(EpochStats),
    /// Writing the model, then checking it on `images` images.
    Exporting {
        /// Images the exported encoder is checked on.
        images: u64,
    },
    /// `n` more images checked with the exported encoder.
    Checked(u64),
}

/// Where `train` sends its [`Event`]s (from any thread).
pub type Progress = Arc<dyn Fn(Event) + Send + Sync>;
