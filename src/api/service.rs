//! The query service: one index snapshot at a time (the manifest is checked at most once per
//! interval, by conditional GET), searches on the blocking pool, presigned URLs for results.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::OnceCell;

use super::request::{ApiRequest, Route, SearchInput, SearchParams};
use super::{ApiError, ApiResponse, OPENAPI, PAGE};
use crate::config::{env_secs, ConfigError};
use crate::index::{Index, Snapshot};
use crate::model::encoder::Encoder;
use crate::preprocess::Limits;
use crate::query::{self, QueryTimings, SearchResponse};
use crate::store::{DynStore, S3Store};
use crate::task;

/// Settings of the query service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// At most one manifest check per interval.
    pub check_interval: Duration,
    /// Lifetime of the presigned image URLs in results.
    pub presign_ttl: Duration,
    /// Limits on query images; `max_bytes` is the largest accepted image body.
    pub limits: Limits,
    /// At most this many bytes of segments in the cache (none: only the disk limits).
    pub cache_budget: Option<u64>,
    /// Serve the images of local-folder sources at `GET /images/{key}` and link results to
    /// them (`lookalike serve`; the query Lambda's results are in S3 and presigned).
    pub serve_images: bool,
}

/// Largest image `GET /images/{key}` sends.
pub const MAX_SERVED_IMAGE_BYTES: u64 = 64 << 20;

/// After a sync that found no room, the manifest is not checked again for this long (doubling
/// with every such failure, up to [`MAX_FULL_DISK_BACKOFF`]).
pub const FULL_DISK_BACKOFF: Duration = Duration::from_secs(30);
/// The longest wait between checks while the disk stays too small.
pub const MAX_FULL_DISK_BACKOFF: Duration = Duration::from_secs(300);

/// Largest query image by default: API Gateway's payload limit to Lambda is 6 MB and base64 adds
/// a third, so raw images up to 4.5 MiB can reach the function at all.
pub const DEFAULT_MAX_QUERY_BYTES: usize = 4608 * 1024;

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            check_interval: Duration::from_secs(5),
            presign_ttl: Duration::from_secs(15 * 60),
            limits: Limits {
                max_bytes: DEFAULT_MAX_QUERY_BYTES,
                ..Limits::for_queries()
            },
            cache_budget: None,
            serve_images: false,
        }
    }
}

impl ServiceConfig {
    /// `LOOKALIKE_CHECK_INTERVAL_SECS`, `LOOKALIKE_PRESIGN_SECS`, `LOOKALIKE_CACHE_MAX_MB` and
    /// the image limits (`LOOKALIKE_MAX_IMAGE_BYTES`, `LOOKALIKE_MAX_PIXELS`,
    /// `LOOKALIKE_MAX_SIDE`).
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        let budget_mb: u64 = crate::config::env_or("LOOKALIKE_CACHE_MAX_MB", 0)?;
        Ok(ServiceConfig {
            check_interval: env_secs("LOOKALIKE_CHECK_INTERVAL_SECS", d.check_interval)?,
            presign_ttl: env_secs("LOOKALIKE_PRESIGN_SECS", d.presign_ttl)?,
            limits: Limits::from_env(d.limits)?,
            cache_budget: (budget_mb > 0).then_some(budget_mb << 20),
            serve_images: d.serve_images,
        })
    }
}

/// One search result as the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ApiResult {
    /// The item's key.
    pub key: String,
    /// Cosine similarity to the query (1 is identical).
    pub score: f32,
    /// The item's category.
    pub category: String,
    /// The item's metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// A presigned GET of the image (`null` for images that are not in S3).
    pub url: Option<String>,
}

/// Where a search's time went.
#[derive(Debug, Clone, Serialize)]
pub struct ApiTimings {
    /// The index search's parts.
    #[serde(flatten)]
    pub query: QueryTimings,
    /// Presigning the result URLs.
    pub presign_ms: f64,
}

/// The indexed image a search by key was made with.
#[derive(Debug, Clone, Serialize)]
pub struct ApiQueryItem {
    /// Its key.
    pub key: String,
    /// Its category.
    pub category: String,
    /// Its metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Where to see it (as the results' `url`).
    pub url: Option<String>,
}

/// The answer to a search.
#[derive(Debug, Clone, Serialize)]
pub struct ApiSearchResponse {
    /// The indexed image searched with (searches by key only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<ApiQueryItem>,
    /// The results, best first.
    pub results: Vec<ApiResult>,
    /// Total time of the request.
    pub took_ms: f64,
    /// The manifest version searched (pages and retries can tell whether the index changed).
    pub index_version: u64,
    /// For a paged search (`offset` given) that may have more: the next page's `offset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// With `min_score`: whether all `k` results passed it (more items may).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// Where the time went.
    pub timings: ApiTimings,
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Live items.
    pub items: u64,
    /// Segments.
    pub segments: usize,
    /// Manifest version.
    pub version: u64,
    /// The model's id.
    pub model: String,
    /// Embedding dimensions.
    pub dims: usize,
    /// The distance (cosine).
    pub distance: String,
    /// Bytes of all segments.
    pub bytes: u64,
    /// Keys deleted and still recorded as such.
    pub deleted_keys: usize,
    /// Live items per category.
    pub categories: serde_json::Map<String, serde_json::Value>,
}

impl Stats {
    /// The statistics of a snapshot.
    pub fn of(snapshot: &Snapshot) -> Stats {
        let m = &snapshot.manifest;
        Stats {
            items: snapshot.live_items(),
            segments: snapshot.segment_count(),
            version: m.version,
            model: m.model.id.clone(),
            dims: m.model.dims,
            distance: m.distance.clone(),
            bytes: m.total_bytes(),
            deleted_keys: m.deleted.len(),
            categories: snapshot
                .categories()
                .into_iter()
                .map(|(c, n)| (c, n.into()))
                .collect(),
        }
    }
}

/// The service behind the HTTP API. Create it once per process (Lambda container).
pub struct QueryService {
    store: DynStore,
    cache_dir: PathBuf,
    encoder: Arc<Encoder>,
    config: ServiceConfig,
    index: OnceCell<Arc<Index>>,
    last_check: Mutex<Option<Instant>>,
    /// How long checks wait after a sync found no room (zero when the last one had room).
    full_disk_backoff: Mutex<Duration>,
    s3: Option<aws_sdk_s3::Client>,
    /// The folder stores `GET /images/{key}` reads from, opened once per source.
    image_stores: Mutex<std::collections::HashMap<String, DynStore>>,
}

impl QueryService {
    /// A service over the index in `store`, caching segments in `cache_dir`. Nothing is read
    /// until [`QueryService::snapshot`] (call it in the init phase to start warm).
    pub fn new(
        store: DynStore,
        cache_dir: impl Into<PathBuf>,
        encoder: Arc<Encoder>,
        config: ServiceConfig,
    ) -> Self {
        let s3 = store.s3_client();
        QueryService {
            store,
            cache_dir: cache_dir.into(),
            encoder,
            config,
            index: OnceCell::new(),
            last_check: Mutex::new(None),
            full_disk_backoff: Mutex::new(Duration::ZERO),
            s3,
            image_stores: Mutex::default(),
        }
    }

    /// Open the index the way the service does on its first request: sync the snapshot into
    /// the cache folder, open its segments. It needs only the model's identity, not the model,
    /// so a cold start can run it while the model loads and hand it to [`QueryService::with_index`].
    pub async fn open_index(
        store: DynStore,
        cache_dir: &std::path::Path,
        model: crate::model::ModelRef,
        config: &ServiceConfig,
    ) -> Result<Index, crate::index::IndexError> {
        let cache = crate::index::SegmentCache::new(cache_dir)?.with_budget(config.cache_budget);
        Index::open_in(store, cache, Some(model)).await
    }

    /// A service over an index already opened by [`QueryService::open_index`] (with this
    /// encoder's model), as if its first request had opened it just now.
    pub fn with_index(
        store: DynStore,
        cache_dir: impl Into<PathBuf>,
        encoder: Arc<Encoder>,
        config: ServiceConfig,
        index: Index,
    ) -> Self {
        let service = QueryService::new(store, cache_dir, encoder, config);
        let _ = service.index.set(Arc::new(index));
        *service.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        service
    }

    /// The service's settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The index, once opened.
    pub fn index(&self) -> Option<&Arc<Index>> {
        self.index.get()
    }

    /// The snapshot to answer from: opens the index on first use, then checks the manifest at
    /// most once per `check_interval`. If a check fails after a snapshot was loaded, the last
    /// snapshot keeps serving (it is complete and consistent) and the failure is logged; with
    /// no snapshot at all the answer is 503.
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        let mut opened_now = false;
        let index = self
            .index
            .get_or_try_init(|| async {
                opened_now = true;
                let model = self.encoder.model_ref();
                Self::open_index(self.store.clone(), &self.cache_dir, model, &self.config)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, index = %self.store.location(), "cannot open the index");
                ApiError::from(e)
            })?;
        if opened_now {
            *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            return Ok(index.snapshot());
        }
        let due = {
            let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
            let wait = self.config.check_interval.max(
                *self
                    .full_disk_backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            match *last {
                Some(t) if t.elapsed() < wait => false,
                _ => {
                    *last = Some(Instant::now());
                    true
                }
            }
        };
        if due {
            let backoff = || {
                self.full_disk_backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            };
            match index.refresh().await {
                Ok(s) => {
                    *backoff() = Duration::ZERO;
                    return Ok(s);
                }
                Err(e @ crate::index::IndexError::ModelMismatch { .. }) => return Err(e.into()),
                Err(crate::index::IndexError::NoSpace {
                    needed, free, dir, ..
                }) => {
                    let wait = (*backoff() * 2).clamp(FULL_DISK_BACKOFF, MAX_FULL_DISK_BACKOFF);
                    *backoff() = wait;
                    let current = index.snapshot();
                    tracing::error!(
                        metric = "lookalike_cache_full",
                        needed_bytes = needed,
                        free_bytes = free,
                        %dir,
                        version = current.version(),
                        next_check_secs = wait.as_secs(),
                        "no room for the new segments; serving the last snapshot"
                    );
                }
                Err(e) => {
                    let current = index.snapshot();
                    tracing::warn!(error = %e, version = current.version(), "manifest check failed; serving the last snapshot");
                }
            }
        }
        Ok(index.snapshot())
    }

    /// Answer one request. Never panics: every failure is a JSON error response.
    pub async fn handle(&self, req: &ApiRequest) -> ApiResponse {
        let start = Instant::now();
        let answer = match req.route(self.config.limits.max_bytes) {
            Ok(route) => {
                self.answer(route, req.if_none_match.as_deref(), start)
                    .await
            }
            Err(e) => Err(e),
        };
        let response = answer.unwrap_or_else(|e| {
            if e.status >= 500 {
                tracing::error!(
                    status = e.status,
                    code = e.code,
                    message = %e.message,
                    detail = e.detail.as_deref().unwrap_or(""),
                    "request failed"
                );
            }
            e.to_response()
        });
        tracing::info!(
            method = %req.method,
            path = %req.path,
            status = response.status,
            ms = start.elapsed().as_secs_f64() * 1e3,
            "request"
        );
        response
    }

    async fn answer(
        &self,
        route: Route,
        if_none_match: Option<&str>,
        start: Instant,
    ) -> Result<ApiResponse, ApiError> {
        match route {
            Route::OpenApi => Ok(ApiResponse {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: OPENAPI.as_bytes().to_vec(),
            }),
            Route::Stats => {
                let snapshot = self.snapshot().await?;
                Ok(ApiResponse::json(200, &Stats::of(&snapshot)))
            }
            Route::Search(input, params) => {
                let r = self.search(input, params, start).await?;
                Ok(ApiResponse::json(200, &r))
            }
            Route::Page => Ok(ApiResponse {
                status: 200,
                headers: vec![
                    ("content-type".into(), "text/html; charset=utf-8".into()),
                    ("cache-control".into(), "no-cache".into()),
                ],
                body: PAGE.as_bytes().to_vec(),
            }),
            Route::Image(key) => self.image(&key, if_none_match).await,
        }
    }

    /// `GET /images/{key}`: the bytes of an indexed image of a local-folder source. Only keys
    /// that the snapshot holds are served, read through the source's store (which refuses any
    /// key that could leave its folder).
    async fn image(&self, key: &str, if_none_match: Option<&str>) -> Result<ApiResponse, ApiError> {
        if !self.config.serve_images {
            return Err(ApiError::not_found(
                "images are not served here: each result carries its url",
            ));
        }
        let snapshot = self.snapshot().await?;
        let record = snapshot
            .record(key)?
            .ok_or_else(|| ApiError::not_found(format!("no indexed image has the key {key:?}")))?;
        if crate::store::parse_s3_location(&record.source).is_some() {
            return Err(ApiError::not_found(
                "this image is in S3: use the presigned url of the result",
            ));
        }
        let etag = format!("\"{}\"", record.etag.trim_matches('"'));
        let headers = |content_type: Option<&str>| {
            let mut h = vec![
                ("etag".to_string(), etag.clone()),
                ("cache-control".into(), "private, max-age=300".into()),
                ("x-content-type-options".into(), "nosniff".into()),
            ];
            if let Some(t) = content_type {
                h.insert(0, ("content-type".into(), t.into()));
            }
            h
        };
        if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            return Ok(ApiResponse {
                status: 304,
                headers: headers(None),
                body: Vec::new(),
            });
        }
        let gone = || ApiError::not_found(format!("the image {key:?} is no longer in its folder"));
        let store = self.image_store(&record.source).await?;
        let object = match store.get_capped(key, MAX_SERVED_IMAGE_BYTES).await {
            Ok(o) => o,
            Err(crate::store::StoreError::NotFound(_)) => return Err(gone()),
            Err(e @ crate::store::StoreError::TooLarge { .. }) => {
                return Err(ApiError::too_large("the image is too large to serve").with_detail(e))
            }
            Err(e) => return Err(ApiError::internal("cannot read the image").with_detail(e)),
        };
        let content_type = image::guess_format(&object.bytes)
            .map(|f| f.to_mime_type())
            .unwrap_or("application/octet-stream");
        Ok(ApiResponse {
            status: 200,
            headers: headers(Some(content_type)),
            body: object.bytes.to_vec(),
        })
    }

    /// The store of a folder source, opened on first use and kept.
    async fn image_store(&self, source: &str) -> Result<DynStore, ApiError> {
        let opened = self
            .image_stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(source)
            .cloned();
        if let Some(store) = opened {
            return Ok(store);
        }
        let store = crate::store::open(source)
            .await
            .map_err(|e| ApiError::internal("cannot open the image folder").with_detail(e))?;
        self.image_stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source.to_string(), store.clone());
        Ok(store)
    }

    /// A search from one snapshot, with presigned URLs.
    pub async fn search(
        &self,
        input: SearchInput,
        params: SearchParams,
        start: Instant,
    ) -> Result<ApiSearchResponse, ApiError> {
        let snapshot = self.snapshot().await?;
        let encoder = self.encoder.clone();
        let limits = self.config.limits;
        // Decoding and encoding are CPU-bound: off the async runtime, on one thread per core
        // however many requests wait (see `task::compute`). A panic in there becomes a 500,
        // not a dead process.
        let found: SearchResponse = task::compute(move || match input {
            SearchInput::Image(bytes) => {
                query::by_image(&snapshot, &encoder, &bytes, &limits, &params)
            }
            SearchInput::Key(key) => query::by_key(&snapshot, &key, &params),
        })
        .await
        .map_err(|e| ApiError::internal("the search task failed").with_detail(e))??;
        let t = Instant::now();
        let query = match found.query {
            Some(record) => Some(ApiQueryItem {
                url: self.url_of(&record.source, &record.key).await,
                key: record.key,
                category: record.category,
                metadata: record.metadata,
            }),
            None => None,
        };
        let mut results = Vec::with_capacity(found.results.len());
        for r in found.results {
            let url = self.url_of(&r.source, &r.key).await;
            results.push(ApiResult {
                key: r.key,
                score: r.score,
                category: r.category,
                metadata: r.metadata,
                url,
            });
        }
        Ok(ApiSearchResponse {
            query,
            results,
            took_ms: start.elapsed().as_secs_f64() * 1e3,
            index_version: found.index_version,
            next_offset: found.next_offset,
            truncated: found.truncated,
            timings: ApiTimings {
                query: found.timings,
                presign_ms: t.elapsed().as_secs_f64() * 1e3,
            },
        })
    }

    /// Where a client can see `key` of `source`: a presigned GET in S3, `images/{key}` (relative
    /// to the API's base) for a folder when the service serves images, `None` otherwise or when
    /// signing fails (logged: a result without a URL beats no result).
    async fn url_of(&self, source: &str, key: &str) -> Option<String> {
        let Some((bucket, prefix)) = crate::store::parse_s3_location(source) else {
            return self
                .config
                .serve_images
                .then(|| super::request::image_path(key));
        };
        let client = self.s3.as_ref()?;
        let store = S3Store::new(client.clone(), bucket, prefix);
        match store.presign_get(key, self.config.presign_ttl).await {
            Ok(url) => Some(url),
            Err(e) => {
                tracing::warn!(%key, %source, error = %e, "cannot presign");
                None
            }
        }
    }
}
