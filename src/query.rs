//! Query: the top-K most similar indexed images to an image (bytes) or to an indexed key,
//! answered from one snapshot.

use std::time::Instant;

use serde::Serialize;

use crate::index::{Filter, Hit, IndexError, ItemRecord, Page, Scope, Snapshot};
use crate::model::encoder::{EncodeError, Encoder};
use crate::preprocess::Limits;

/// Results when a search does not say.
pub const DEFAULT_K: usize = 10;
/// Most results one search returns.
pub const MAX_K: usize = 100;
/// Deepest result a paged search reaches (`offset + k`).
pub const MAX_DEPTH: usize = 500;

/// What a search asks for besides its query: how many results, which items, which page.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Results (1..=[`MAX_K`]).
    pub k: usize,
    /// Only items of this category.
    pub category: Option<String>,
    /// Only items this filter keeps.
    pub filter: Option<Filter>,
    /// A paged search: skip this many results. Every paged search ranks with the candidate
    /// budget of [`MAX_DEPTH`] results, so the pages of one query on one snapshot are slices of
    /// one ranking (disjoint, and together one search of their total depth).
    pub offset: Option<usize>,
    /// Only results at least this similar (cosine): a near-duplicate search, which returns
    /// every item above the threshold up to `k` rather than a fixed number.
    pub min_score: Option<f32>,
}

/// The default threshold of a near-duplicate search (cosine similarity). Measured on
/// clothing-small with Lite0 (BENCHMARKS.md, duplicates): the lowest threshold at which no two
/// different photos were grouped; it groups 82% of the pairs of re-encoded, halved, cropped
/// and mirrored copies of a photo (at 0.90: 92%, and 5 false pairs).
pub const DEFAULT_MIN_SCORE: f32 = 0.92;

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions::top(DEFAULT_K)
    }
}

impl SearchOptions {
    /// The best `k`, unfiltered, unpaged.
    pub fn top(k: usize) -> Self {
        SearchOptions {
            k,
            category: None,
            filter: None,
            offset: None,
            min_score: None,
        }
    }

    /// The near-duplicates of a query: up to [`MAX_K`] results at or above `min_score`.
    pub fn duplicates(min_score: f32) -> Self {
        SearchOptions {
            min_score: Some(min_score),
            ..SearchOptions::top(MAX_K)
        }
    }

    /// Only from `category`.
    pub fn in_category(mut self, category: Option<&str>) -> Self {
        self.category = category.map(str::to_string);
        self
    }

    fn check(&self) -> Result<(), QueryError> {
        check_k(self.k as i64)?;
        if let Some(offset) = self.offset {
            check_offset(offset as i64, self.k)?;
        }
        if let Some(m) = self.min_score {
            check_min_score(m as f64)?;
        }
        Ok(())
    }
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// `k` out of range.
    #[error("k must be between 1 and {MAX_K}, got {0}")]
    BadK(i64),
    /// `min_score` out of range.
    #[error("min_score must be a number between -1 and 1 (a cosine similarity), got {0}")]
    BadMinScore(f64),
    /// `offset` out of range.
    #[error("offset must be at least 0 and offset + k at most {MAX_DEPTH}, got offset {offset} with k {k}")]
    BadOffset {
        /// The offset asked for.
        offset: i64,
        /// The k asked for.
        k: usize,
    },
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
    /// For a paged search that may have more results: the `offset` of the next page (with the
    /// same `k`; the next page is a slice of the same ranking while `index_version` stays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// With `min_score`: whether every one of the `k` results passed it, so that more items
    /// may (raise `k`, up to [`MAX_K`], or page on with `offset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
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

/// Validate a requested similarity threshold.
pub fn check_min_score(m: f64) -> Result<f32, QueryError> {
    if m.is_finite() && (-1.0..=1.0).contains(&m) {
        Ok(m as f32)
    } else {
        Err(QueryError::BadMinScore(m))
    }
}

/// Validate a requested offset for pages of `k`.
pub fn check_offset(offset: i64, k: usize) -> Result<usize, QueryError> {
    if offset >= 0 && (offset as u64).saturating_add(k as u64) <= MAX_DEPTH as u64 {
        Ok(offset as usize)
    } else {
        Err(QueryError::BadOffset { offset, k })
    }
}

/// The search `options` asks for, on one snapshot.
fn search(
    snapshot: &Snapshot,
    vector: &[f32],
    options: &SearchOptions,
    exclude_key: Option<&str>,
) -> Result<Vec<Hit>, IndexError> {
    if snapshot.live_items() == 0 {
        return Ok(Vec::new());
    }
    let scope = Scope {
        category: options.category.as_deref(),
        filter: options.filter.as_ref(),
        exclude_key,
    };
    let mut params = snapshot.params;
    if options.offset.is_some() {
        params.depth = params.depth.max(MAX_DEPTH);
    }
    let page = Page {
        offset: options.offset.unwrap_or(0),
        k: options.k,
    };
    let mut hits = snapshot.search_page(vector, page, &scope, &params)?;
    if let Some(m) = options.min_score {
        hits.retain(|h| h.score >= m);
    }
    Ok(hits)
}

fn respond(
    snapshot: &Snapshot,
    hits: Vec<Hit>,
    options: &SearchOptions,
    start: Instant,
    timings: QueryTimings,
) -> SearchResponse {
    let truncated = options.min_score.map(|_| hits.len() == options.k);
    let next_offset = options.offset.and_then(|offset| {
        let next = offset + hits.len();
        (hits.len() == options.k && next < MAX_DEPTH).then_some(next)
    });
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
        next_offset,
        truncated,
        timings,
        query: None,
    }
}

/// The images similar to the image in `bytes`.
pub fn by_image(
    snapshot: &Snapshot,
    encoder: &Encoder,
    bytes: &[u8],
    limits: &Limits,
    options: &SearchOptions,
) -> Result<SearchResponse, QueryError> {
    let start = Instant::now();
    options.check()?;
    let vector = encoder.encode_image(bytes, limits)?;
    let encode_ms = start.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let hits = search(snapshot, &vector, options, None)?;
    let search_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(respond(
        snapshot,
        hits,
        options,
        start,
        QueryTimings {
            encode_ms,
            search_ms,
        },
    ))
}

/// The images similar to the indexed image `key` (which is left out of its own results).
pub fn by_key(
    snapshot: &Snapshot,
    key: &str,
    options: &SearchOptions,
) -> Result<SearchResponse, QueryError> {
    let start = Instant::now();
    options.check()?;
    let (record, vector) = snapshot
        .lookup(key)?
        .ok_or_else(|| QueryError::UnknownKey(key.to_string()))?;
    let hits = search(snapshot, &vector, options, Some(key))?;
    let search_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut response = respond(
        snapshot,
        hits,
        options,
        start,
        QueryTimings {
            encode_ms: 0.0,
            search_ms,
        },
    );
    response.query = Some(record);
    Ok(response)
}
