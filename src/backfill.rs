//! Backfill: hand the images already in a bucket to the ingest fleet.
//!
//! The prefix is listed a page at a time (never all of it in memory). Each object becomes the
//! S3 notification a PUT of it would have sent (bucket-relative key, URL-encoded as S3 encodes
//! it; size; ETag), and the notifications go to the ingest queue with `SendMessageBatch`, many
//! batches in flight, so that the queue's event source mapping fans them out over concurrent
//! ingest invocations. An image both backfilled and notified is indexed once: the ingest path
//! knows an object by its key and ETag. A backfill message has no `sequencer` (only S3 makes
//! those), so it applies in commit order like a change made by the CLI.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::json;

use crate::queue::{Queue, MAX_BATCH};
use crate::store::{ObjectMeta, S3Store, StoreError};

/// Keys per listing page (S3's maximum).
pub const PAGE: usize = 1000;
/// Attempts at one listing page before the backfill stops.
const LIST_ATTEMPTS: usize = 5;

/// How to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// Bucket-relative prefix to list (`""` for the whole bucket).
    pub prefix: String,
    /// Start after this (bucket-relative) key: the key a previous run printed.
    pub start_after: Option<String>,
    /// Objects per message (1 to 10): 1 is what S3 sends; more means fewer messages, each
    /// retried as a whole if its invocation reports it failed.
    pub per_message: usize,
    /// `SendMessageBatch` calls in flight at once.
    pub in_flight: usize,
    /// List and count only; send nothing.
    pub dry_run: bool,
    /// Keys per listing page, 1 to [`PAGE`]; the run can stop (Ctrl-C) after each page.
    pub page_size: usize,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            prefix: String::new(),
            start_after: None,
            per_message: 1,
            in_flight: 16,
            dry_run: false,
            page_size: PAGE,
        }
    }
}

/// An object that could not be enqueued.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotEnqueued {
    /// Its bucket-relative key.
    pub key: String,
    /// Why (SQS's answer after the retries).
    pub reason: String,
}

/// What a backfill did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BackfillReport {
    /// The bucket.
    pub bucket: String,
    /// Objects listed (folder markers included).
    pub listed: u64,
    /// Objects enqueued (with `dry_run`: that would have been).
    pub enqueued: u64,
    /// Messages sent.
    pub messages: u64,
    /// Folder markers (keys ending in `/`), not sent.
    pub skipped: u64,
    /// Objects that could not be enqueued, with why.
    pub failed: Vec<NotEnqueued>,
    /// Every object up to this key (in key order) is enqueued: `--start-after` it to go on.
    /// `None` when nothing was (or no start key was given).
    pub resume_after: Option<String>,
    /// Stopped early (interrupted, or the listing failed).
    pub interrupted: bool,
    /// Why the listing stopped, when it failed.
    pub error: Option<String>,
    /// Whether nothing was sent.
    pub dry_run: bool,
    /// Wall time.
    pub seconds: f64,
}

/// The notification S3 would send for a PUT of each of `objects` in `bucket`, as one message
/// body (an S3 event with one record per object).
pub fn notification(bucket: &str, objects: &[ObjectMeta]) -> String {
    let time = aws_sdk_s3::primitives::DateTime::from(SystemTime::now())
        .fmt(aws_sdk_s3::primitives::DateTimeFormat::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let records: Vec<_> = objects
        .iter()
        .map(|o| {
            json!({
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventTime": time,
                "eventName": "ObjectCreated:Put",
                "awsRegion": "",
                "userIdentity": {"principalId": "lookalike-backfill"},
                "requestParameters": {"sourceIPAddress": ""},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "lookalike-backfill",
                    "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                    "object": {
                        "key": encode_key(&o.key),
                        "size": o.size,
                        "eTag": o.etag,
                    }
                }
            })
        })
        .collect();
    json!({ "Records": records }).to_string()
}

/// A key as S3 writes it in notifications: URL-encoded, a space as `+`, `/` left as it is.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// List `options.prefix` of `store`'s bucket (a store at the bucket's root) and send every object
/// to `queue` (none with `dry_run`). `progress` is called after every page; `stop` ends the run
/// after the page in flight (Ctrl-C), with a report that says where to resume.
pub async fn backfill(
    store: &S3Store,
    queue: Option<&Queue>,
    options: &BackfillOptions,
    progress: &(dyn Fn(&BackfillReport) + Sync),
    stop: &AtomicBool,
) -> BackfillReport {
    let started = Instant::now();
    let per_message = options.per_message.clamp(1, MAX_BATCH);
    let mut report = BackfillReport {
        bucket: store.bucket().to_string(),
        resume_after: options.start_after.clone(),
        dry_run: options.dry_run || queue.is_none(),
        ..BackfillReport::default()
    };
    let mut after = options.start_after.clone();
    // Once an object failed, the resume point stays before it.
    let mut resume_frozen = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            report.interrupted = true;
            break;
        }
        let (page, more) =
            match list_page(store, &options.prefix, after.as_deref(), options.page_size).await {
                Ok(p) => p,
                Err(e) => {
                    report.error = Some(e.to_string());
                    report.interrupted = true;
                    break;
                }
            };
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        let listed = page.len();
        report.listed += listed as u64;
        let objects: Vec<ObjectMeta> = page.into_iter().filter(|o| !o.key.ends_with('/')).collect();
        report.skipped += (listed - objects.len()) as u64;
        let messages: Vec<&[ObjectMeta]> = objects.chunks(per_message).collect();
        match queue.filter(|_| !options.dry_run) {
            None => {
                report.enqueued += objects.len() as u64;
                report.messages += messages.len() as u64;
            }
            Some(queue) => {
                let bodies: Vec<String> = messages
                    .iter()
                    .map(|m| notification(store.bucket(), m))
                    .collect();
                // In order (`buffered`), so that the resume point is exact.
                let results: Vec<Vec<(usize, String)>> = stream::iter(bodies.chunks(MAX_BATCH))
                    .map(|batch| queue.send_batch(batch))
                    .buffered(options.in_flight.max(1))
                    .collect()
                    .await;
                for (b, failed) in results.into_iter().enumerate() {
                    let first = b * MAX_BATCH;
                    let batch_len = MAX_BATCH.min(messages.len() - first);
                    for (j, message) in messages[first..first + batch_len].iter().enumerate() {
                        match failed.iter().find(|(i, _)| *i == j) {
                            Some((_, reason)) => {
                                resume_frozen = true;
                                report.failed.extend(message.iter().map(|o| NotEnqueued {
                                    key: o.key.clone(),
                                    reason: reason.clone(),
                                }));
                            }
                            None => {
                                report.messages += 1;
                                report.enqueued += message.len() as u64;
                                if !resume_frozen {
                                    report.resume_after = message.last().map(|o| o.key.clone());
                                }
                            }
                        }
                    }
                }
            }
        }
        if !resume_frozen {
            report.resume_after = after.clone();
        }
        report.seconds = started.elapsed().as_secs_f64();
        progress(&report);
        if !more {
            break;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// One listing page, retried with back-off.
async fn list_page(
    store: &S3Store,
    prefix: &str,
    after: Option<&str>,
    page_size: usize,
) -> Result<(Vec<ObjectMeta>, bool), StoreError> {
    let mut attempt = 0;
    let max = page_size.clamp(1, PAGE) as i32;
    loop {
        match store.list_page(prefix, after, max).await {
            Ok(p) => return Ok(p),
            Err(e) if attempt + 1 < LIST_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "listing failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
