//! Query: the top-K most similar indexed images to an image (bytes) or to an indexed key,
//! answered from one snapshot.

use std::time::Instant;

use serde::Serialize;

use crate::index::{Hit, IndexError, ItemRecord, Snapshot};
use crate::model::encoder::{EncodeError, Encoder};
use crate::preprocess::Limits;

/// Results when a search does not say.
pub const DEFAULT_K: usize = 10;
/// Most results one search returns.
pub const MAX_K: usize = 100;

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `k` out of range.
    #[error("k must be between 1 and {MAX_K}, got {0}")]
    BadK(i64),
    /// A search by key names no indexed item.
    #[error("no indexed image has the key {0:?}")]
    UnknownKey(String),
    /// The query image cannot be decoded or encoded.
    #[error("cannot use the query image: {0}")]
    Image(#[from] EncodeError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// One result, as the CLI's `--json` and the HTTP API return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResult {
    /// The item's key.
    pub key: String,
    /// Cosine similarity to the query (1 is identical).
    pub score: f32,
    /// The item's category.
    pub category: String,
    /// The item's metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where the key lives (`s3://bucket/prefix` or a folder).
    pub source: String,
}

/// Milliseconds per stage of one query.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueryTimings {
    /// Decode + resize + normalise + encoder run (0 for a query by key).
    pub encode_ms: f64,
    /// Search of every segment + merge.
    pub search_ms: f64,
}

/// The results of a search and where its time went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResponse {
    /// The results, best first.
    pub results: Vec<SearchResult>,
    /// Total time of the search.
    pub took_ms: f64,
    /// The manifest version searched.
    pub index_version: u64,
    /// Where the time went.
    pub timings: QueryTimings,
    /// The record of the query item, for a search by key (the API shows it; the CLI's JSON
    /// does not carry it).
    #[serde(skip)]
    pub query: Option<ItemRecord>,
}

/// Validate a requested k.
pub fn check_k(k: i64) -> Result<usize, QueryError> {
    if (1..=MAX_K as i64).contains(&k) {
        Ok(k as usize)
    } else {
        Err(QueryError::BadK(k))
    }
}

fn respond(
    snapshot: &Snapshot,
    hits: Vec<Hit>,
    start: Instant,
    timings: QueryTimings,
) -> SearchResponse {
    SearchResponse {
        results: hits
            .into_iter()
            .map(|h| SearchResult {
                key: h.record.key,
                score: h.score,
                category: h.record.category,
                metadata: h.record.metadata,
                source: h.record.source,
            })
            .collect(),
        took_ms: start.elapsed().as_secs_f64() * 1e3,
        index_version: snapshot.version(),
        timings,
        query: None,
    }
}

/// Top `k` images similar to the image in `bytes`.
pub fn by_image(
    snapshot: &Snapshot,
    encoder: &Encoder,
    bytes: &[u8],
    limits: &Limits,
    k: usize,
    category: Option<&str>,
) -> Result<SearchResponse, QueryError> {
    let start = Instant::now();
    let k = check_k(k as i64)?;
    let vector = encoder.encode_image(bytes, limits)?;
    let encode_ms = start.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let hits = if snapshot.live_items() == 0 {
        Vec::new()
    } else {
        snapshot.search(&vector, k, category, None)?
    };
    let search_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(respond(
        snapshot,
        hits,
        start,
        QueryTimings {
            encode_ms,
            search_ms,
        },
    ))
}

/// Top `k` images similar to the indexed image `key` (which is left out of its own results).
pub fn by_key(
    snapshot: &Snapshot,
    key: &str,
    k: usize,
    category: Option<&str>,
) -> Result<SearchResponse, QueryError> {
    let start = Instant::now();
    let k = check_k(k as i64)?;
    let (record, vector) = snapshot
        .lookup(key)?
        .ok_or_else(|| QueryError::UnknownKey(key.to_string()))?;
    let hits = snapshot.search(&vector, k, category, Some(key))?;
    let search_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut response = respond(
        snapshot,
        hits,
        start,
        QueryTimings {
            encode_ms: 0.0,
            search_ms,
        },
    );
    response.query = Some(record);
    Ok(response)
}
