//! Why a reindex stopped. Every variant but [`ReindexError::Index`] leaves the index unchanged.

use crate::index::IndexError;
use crate::model::encoder::EncodeError;
use crate::store::StoreError;
use crate::task::TaskError;

/// Why a reindex stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    /// The index itself failed (store, manifest, segments).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The index has no manifest yet.
    #[error("index {0} is empty (it has no manifest yet): nothing to reindex; index the images with the new model instead")]
    EmptyIndex(String),
    /// A local folder that items were indexed from is not there (moved?).
    #[error(
        "{location}, where {items} indexed images come from, is not a folder (moved?); \
         the index is unchanged"
    )]
    SourceMissing {
        /// The recorded source.
        location: String,
        /// Live items indexed from it.
        items: usize,
    },
    /// A source could not be opened.
    #[error("cannot open {location}, where {items} indexed images come from: {source}; the index is unchanged")]
    OpenSource {
        /// The recorded source.
        location: String,
        /// Live items indexed from it.
        items: usize,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// Every item of a source is gone from it: a wrong or moved source rather than a mass
    /// deletion.
    #[error(
        "none of the {items} images indexed from {location} is there any more: wrong or moved \
         source? (if they were really deleted, remove them from the index first); the index is \
         unchanged"
    )]
    SourceEmpty {
        /// The source.
        location: String,
        /// Live items indexed from it.
        items: usize,
    },
    /// An image could not be fetched (other than being gone).
    #[error("cannot fetch {key} from {location}: {source}; the index is unchanged")]
    Fetch {
        /// The item's key.
        key: String,
        /// Its source.
        location: String,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// The new model cannot encode an image.
    #[error("model {model} cannot encode {key}: {source}; the index is unchanged")]
    Encode {
        /// The item's key.
        key: String,
        /// The new model's id.
        model: String,
        /// Why (boxed: it is large, and this is the rare path).
        #[source]
        source: Box<EncodeError>,
    },
    /// Another reindex swapped in another model meanwhile.
    #[error(
        "someone else changed the index to model {found} ({found_dims}-d) while it was being \
         reindexed from {expected}; this run is abandoned (its model is not the one in the index)"
    )]
    ModelChanged {
        /// The model this run started from.
        expected: String,
        /// The model the index has now.
        found: String,
        /// Its dimensions.
        found_dims: usize,
    },
    /// The index kept changing: every swap lost.
    #[error(
        "gave up after {0} attempts: the index kept changing while it was being reindexed; \
         the index is unchanged (pause ingest and run reindex again)"
    )]
    Contention(usize),
    /// The manifest changed but cannot be read again.
    #[error("the manifest of {0} changed while reindexing but cannot be read again (was it deleted?); the index is unchanged")]
    ManifestGone(String),
    /// A background task (encoding, record reads) did not return.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A broken invariant of the reindex itself (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}
