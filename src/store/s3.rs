//! The S3 store: objects under `s3://bucket/prefix/`.
//!
//! - Keys are checked with [`validate_key`] like on the local store, so both stores accept the same
//!   key space; `list` skips (with a warning) S3 keys outside it, e.g. console "folder" markers
//!   (`photos/`) or keys with `//`.
//! - Conditional writes use S3's own compare-and-swap: `If-None-Match: *` and `If-Match: "<etag>"` on
//!   PutObject. 412 PreconditionFailed and 409 ConditionalRequestConflict (a concurrent conditional
//!   write on real S3) both become [`StoreError::PreconditionFailed`]: the caller re-reads and
//!   retries. `If-Match` on a missing key answers 404; that is a lost precondition as well.
//! - ETags are returned without quotes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::StreamExt;

use super::{validate_key, GetResult, Object, ObjectMeta, ObjectStore, StoreError, StoreResult};

/// Region used when neither the environment nor the profile names one (S3-compatible servers and
/// moto do not care; real S3 buckets elsewhere need `AWS_REGION`).
pub const FALLBACK_REGION: &str = "us-east-1";

/// A store in an S3 bucket under an optional key prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Without leading/trailing slashes; empty for the bucket root.
    prefix: String,
    /// `download_to` fetches objects larger than this in parts of this size, several at a time.
    part_size: u64,
}

/// Ranged downloads are off by default (one GET per object): on the local moto server they were
/// 4.5x slower (it reads the whole object for every range). `LOOKALIKE_DOWNLOAD_PART_MB` turns
/// them on for stores made by [`S3Store::from_env`], to measure against real S3, where parallel
/// ranged GETs are the usual way past the throughput of one stream.
pub const DOWNLOAD_PART_SIZE: u64 = u64::MAX;
/// Parts fetched at once.
const DOWNLOAD_CONCURRENCY: usize = 8;

impl S3Store {
    /// A GET that reads at most `max_bytes` of the body: the declared length is checked first,
    /// then what arrives is counted (the length may be missing).
    async fn get_within(
        &self,
        key: &str,
        if_none_match: Option<&str>,
        max_bytes: u64,
    ) -> StoreResult<GetResult> {
        validate_key(key)?;
        let mut req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key));
        if let Some(etag) = if_none_match {
            req = req.if_none_match(quote_etag(etag));
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if http_status(&e) == Some(304) => return Ok(GetResult::NotModified),
            Err(e) => return Err(map_err("get", key, e)),
        };
        let declared = out.content_length().unwrap_or(0).max(0) as u64;
        super::check_cap(key, declared, max_bytes)?;
        let etag = out.e_tag().map(unquote_etag).unwrap_or_default();
        let metadata = to_btree(out.metadata());
        let mut body = out.body;
        let mut buf = bytes::BytesMut::with_capacity(declared.min(256 << 20) as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                StoreError::Backend(format!(
                    "get {key}: reading the body: {}",
                    DisplayErrorContext(&e)
                ))
            })?;
            super::check_cap(key, (buf.len() + chunk.len()) as u64, max_bytes)?;
            buf.extend_from_slice(&chunk);
        }
        let bytes = buf.freeze();
        Ok(GetResult::Found(Object {
            meta: ObjectMeta {
                key: key.to_string(),
                size: bytes.len() as u64,
                etag,
                metadata,
            },
            bytes,
        }))
    }

    /// A store over an existing client.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        prefix: impl AsRef<str>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.as_ref().trim_matches('/').to_string(),
            part_size: DOWNLOAD_PART_SIZE,
        }
    }

    /// The same store with another download part size (at least 1 byte).
    pub fn with_part_size(mut self, bytes: u64) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    /// A store whose client comes from the standard AWS configuration chain (environment, profile,
    /// web identity, container/instance credentials). `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`
    /// point it at an S3-compatible server; path-style addressing is forced whenever an endpoint
    /// is overridden.
    pub async fn from_env(bucket: &str, prefix: &str) -> StoreResult<Self> {
        if bucket.is_empty() {
            return Err(StoreError::InvalidLocation(
                format!("s3://{bucket}/{prefix}"),
                "missing bucket name".into(),
            ));
        }
        let sdk = crate::sdk::load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            builder = builder.region(aws_sdk_s3::config::Region::new(FALLBACK_REGION));
        }
        let s3_endpoint = sdk.service_config().and_then(|c| {
            c.load_config(
                aws_types::service_config::ServiceConfigKey::builder()
                    .service_id("S3")
                    .env("AWS_ENDPOINT_URL")
                    .profile("endpoint_url")
                    .build()
                    .expect("complete service config key"),
            )
        });
        if sdk.endpoint_url().is_some() || s3_endpoint.is_some() {
            builder = builder.force_path_style(true);
        }
        let client = aws_sdk_s3::Client::from_conf(builder.build());
        let part_mb: u64 = crate::config::env_or("LOOKALIKE_DOWNLOAD_PART_MB", 0).map_err(|e| {
            StoreError::InvalidLocation(format!("s3://{bucket}/{prefix}"), e.to_string())
        })?;
        let store = Self::new(client, bucket, prefix);
        Ok(if part_mb > 0 {
            store.with_part_size(part_mb << 20)
        } else {
            store
        })
    }

    /// The S3 client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix (no leading or trailing `/`; empty for the bucket root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full S3 key of a store key.
    pub fn s3_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    /// One page (at most `max` keys, at most 1000) of the objects whose keys start with `prefix`
    /// and sort after `start_after` (both relative to the store's prefix), in key order, and
    /// whether S3 has more. Keys are returned as they are, valid store keys or not; the next
    /// page starts after the last key of this one. For listings too long to hold at once.
    pub async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: i32,
    ) -> StoreResult<(Vec<ObjectMeta>, bool)> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{root}{prefix}"))
            .set_start_after(start_after.map(|k| format!("{root}{k}")))
            .max_keys(max.clamp(1, 1000))
            .send()
            .await
            .map_err(|e| map_err("list", prefix, e))?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|obj| {
                let key = obj.key()?.strip_prefix(&root)?;
                Some(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    etag: obj.e_tag().map(unquote_etag).unwrap_or_default(),
                    metadata: BTreeMap::new(),
                })
            })
            .collect();
        Ok((objects, out.is_truncated().unwrap_or(false)))
    }

    /// A presigned GET URL for `key`, valid for `expires` (at most 7 days).
    pub async fn presign_get(&self, key: &str, expires: Duration) -> StoreResult<String> {
        validate_key(key)?;
        let config = PresigningConfig::expires_in(expires)
            .map_err(|e| StoreError::Backend(format!("presign {key}: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .presigned(config)
            .await
            .map_err(|e| map_err("presign", key, e))?;
        Ok(req.uri().to_string())
    }

    async fn do_put(&self, key: &str, body: Bytes, cond: Cond<'_>) -> StoreResult<String> {
        validate_key(key)?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .body(ByteStream::from(body));
        req = match cond {
            Cond::None => req,
            Cond::Absent => req.if_none_match("*"),
            Cond::Match(etag) => req.if_match(quote_etag(etag)),
        };
        match req.send().await {
            Ok(out) => out
                .e_tag()
                .map(unquote_etag)
                .ok_or_else(|| StoreError::Backend(format!("put {key}: response without an ETag"))),
            Err(e) => {
                let err = map_err("put", key, e);
                match (cond, err) {
                    // If-Match on a missing object: 404 (moto) -- the precondition did not hold.
                    (Cond::Match(_), StoreError::NotFound(k)) => {
                        Err(StoreError::PreconditionFailed(k))
                    }
                    (_, err) => Err(err),
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Cond<'a> {
    None,
    Absent,
    Match(&'a str),
}

#[async_trait]
impl ObjectStore for S3Store {
    fn s3_client(&self) -> Option<aws_sdk_s3::Client> {
        Some(self.client.clone())
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn get(&self, key: &str, if_none_match: Option<&str>) -> StoreResult<GetResult> {
        self.get_within(key, if_none_match, u64::MAX).await
    }

    async fn get_capped(&self, key: &str, max_bytes: u64) -> StoreResult<Object> {
        match self.get_within(key, None, max_bytes).await? {
            GetResult::Found(o) => Ok(o),
            GetResult::NotModified => Err(StoreError::Backend(format!(
                "get {key}: not-modified to a plain GET"
            ))),
        }
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<String> {
        self.do_put(key, body, Cond::None).await
    }

    async fn put_if_absent(&self, key: &str, body: Bytes) -> StoreResult<String> {
        self.do_put(key, body, Cond::Absent).await
    }

    async fn put_if_match(&self, key: &str, body: Bytes, etag: &str) -> StoreResult<String> {
        self.do_put(key, body, Cond::Match(etag)).await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        validate_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().map(unquote_etag).unwrap_or_default(),
                metadata: to_btree(out.metadata()),
            })),
            Err(e) => match map_err("head", key, e) {
                StoreError::NotFound(_) => Ok(None),
                err => Err(err),
            },
        }
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{root}{prefix}");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| map_err("list", prefix, e))?;
            for obj in page.contents() {
                let Some(full) = obj.key() else { continue };
                let Some(key) = full.strip_prefix(&root) else {
                    continue;
                };
                if validate_key(key).is_err() {
                    tracing::warn!(key = full, bucket = %self.bucket, "s3 store list: skipping an object whose key is not a valid store key");
                    continue;
                }
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    etag: obj.e_tag().map(unquote_etag).unwrap_or_default(),
                    metadata: BTreeMap::new(),
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err("delete", key, e) {
                StoreError::NotFound(_) => Ok(()),
                err => Err(err),
            },
        }
    }

    /// One GET; or, with a part size set, the first part comes with the object's size and the
    /// other parts are ranged GETs (at most `DOWNLOAD_CONCURRENCY` at a time, each pinned to the
    /// first part's ETag) written at their offsets. A failed download leaves no file behind.
    async fn download_to(&self, key: &str, dest: &Path) -> StoreResult<ObjectMeta> {
        validate_key(key)?;
        let part = self.part_size;
        let mut first = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key));
        if part != u64::MAX {
            first = first.range(format!("bytes=0-{}", part - 1));
        }
        let first = first.send().await;
        let first = match first {
            Ok(out) => out,
            // An empty object has no byte 0: 416 InvalidRange. Fetch it whole.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.s3_key(key))
                .send()
                .await
                .map_err(|e| map_err("get", key, e))?,
            Err(e) => return Err(map_err("get", key, e)),
        };
        // "bytes 0-N/TOTAL"; without it (a whole object) the length is the size.
        let total = first
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or_else(|| first.content_length().unwrap_or(0).max(0) as u64);
        let etag = first.e_tag().map(unquote_etag).unwrap_or_default();
        let meta = ObjectMeta {
            key: key.to_string(),
            size: total,
            etag: etag.clone(),
            metadata: to_btree(first.metadata()),
        };
        let fail = |e: String| {
            let _ = std::fs::remove_file(dest);
            StoreError::Backend(format!("download {key} to {}: {e}", dest.display()))
        };
        let io = |e: std::io::Error| StoreError::Io(dest.display().to_string(), e);
        let file = std::fs::File::create(dest).map_err(io)?;
        file.set_len(total).map_err(io)?;
        let file = std::sync::Arc::new(file);
        // The body is written as it arrives, a few MiB at a time: a segment of a million items
        // is about 2 GB, more than a function's memory should hold at once.
        let mut body = first.body;
        let mut pending = bytes::BytesMut::new();
        let mut written = 0u64;
        loop {
            let chunk = body
                .next()
                .await
                .transpose()
                .map_err(|e| fail(DisplayErrorContext(&e).to_string()))?;
            let done = chunk.is_none();
            if let Some(chunk) = chunk {
                pending.extend_from_slice(&chunk);
            }
            if pending.len() >= WRITE_CHUNK || (done && !pending.is_empty()) {
                let bytes = pending.split().freeze();
                let n = bytes.len() as u64;
                write_at(&file, written, bytes)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                written += n;
            }
            if done {
                break;
            }
        }
        let ranges: Vec<(u64, u64)> = (written..total)
            .step_by(part as usize)
            .map(|start| (start, (start + part).min(total) - 1))
            .collect();
        let parts = futures::stream::iter(ranges)
            .map(|(start, end)| {
                let (file, etag) = (file.clone(), etag.clone());
                async move {
                    let mut req = self
                        .client
                        .get_object()
                        .bucket(&self.bucket)
                        .key(self.s3_key(key))
                        .range(format!("bytes={start}-{end}"));
                    if !etag.is_empty() {
                        req = req.if_match(quote_etag(&etag));
                    }
                    let out = req
                        .send()
                        .await
                        .map_err(|e| map_err("get", key, e).to_string())?;
                    let bytes = out
                        .body
                        .collect()
                        .await
                        .map_err(|e| DisplayErrorContext(&e).to_string())?
                        .into_bytes();
                    if bytes.len() as u64 != end - start + 1 {
                        return Err(format!("part {start}-{end}: got {} bytes", bytes.len()));
                    }
                    let n = bytes.len() as u64;
                    write_at(&file, start, bytes)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<u64, String>(n)
                }
            })
            .buffer_unordered(DOWNLOAD_CONCURRENCY);
        futures::pin_mut!(parts);
        while let Some(n) = parts.next().await {
            written += n.map_err(&fail)?;
        }
        if written != total {
            return Err(fail(format!("got {written} of {total} bytes")));
        }
        Ok(meta)
    }
}

/// How much of a download's body is gathered before it is written to the file.
const WRITE_CHUNK: usize = 8 << 20;

/// Write `bytes` at `offset` of `file`, off the async runtime.
async fn write_at(
    file: &std::sync::Arc<std::fs::File>,
    offset: u64,
    bytes: Bytes,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = file.clone();
    crate::task::blocking(move || file.write_all_at(&bytes, offset))
        .await
        .map_err(std::io::Error::other)?
}

fn quote_etag(etag: &str) -> String {
    format!("\"{}\"", unquote_etag(etag))
}

fn unquote_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn to_btree(m: Option<&std::collections::HashMap<String, String>>) -> BTreeMap<String, String> {
    m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Map an SDK error to a [`StoreError`] by HTTP status and S3 error code (the generated error types
/// have no variants for 412/409 on PutObject).
fn map_err<E>(op: &str, key: &str, err: SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = http_status(&err);
    let code = err.code().map(str::to_string);
    match (status, code.as_deref()) {
        // A missing bucket is a configuration error, not a missing object.
        (_, Some("NoSuchBucket")) => {}
        (Some(404), _) | (_, Some("NoSuchKey")) => return StoreError::NotFound(key.to_string()),
        (Some(412), _)
        | (Some(409), _)
        | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => {
            return StoreError::PreconditionFailed(key.to_string())
        }
        _ => {}
    }
    let detail = match (&code, err.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.clone(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    match status {
        Some(s) => StoreError::Backend(format!("{op} {key}: {detail} (HTTP {s})")),
        None => StoreError::Backend(format!("{op} {key}: {detail}")),
    }
}
