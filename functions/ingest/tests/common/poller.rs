//! Pollers that play SQS's event source mapping for the tests and benchmarks: receive up to 10
//! messages, invoke the real ingest handler with the event Lambda would build, delete the
//! messages that succeeded, leave the reported failures to come back after the visibility
//! timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lookalike::preprocess::Limits;
use lookalike::queue::Queue;
use lookalike_ingest::IngestFunction;
use serde_json::{json, Value};
use testkit::lambda::{event, TestBucket};

/// The SQS event Lambda would build for `messages`.
pub fn sqs_event(bucket: &str, messages: &[lookalike::queue::Received]) -> Value {
    let template = event("sqs-s3-batch.json", bucket)["Records"][0].clone();
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut r = template.clone();
            r["messageId"] = json!(m.id);
            r["receiptHandle"] = json!(m.receipt);
            r["body"] = json!(m.body);
            r
        })
        .collect();
    json!({ "Records": records })
}

/// What the pollers saw.
#[derive(Default)]
pub struct Tally {
    pub invocations: AtomicUsize,
    pub indexed: AtomicUsize,
    pub duplicates: AtomicUsize,
    pub failed_messages: AtomicUsize,
    /// Invocation time per stage, summed (fetch, encode, segment write, manifest commit), and
    /// the handler's whole time, in µs.
    pub stage_us: [std::sync::atomic::AtomicU64; 5],
}

impl Tally {
    /// The summed stage times in seconds: fetch, encode, segment write, manifest commit, all.
    #[allow(dead_code)] // the fleet benchmark's; the test that shares this file does not use it
    pub fn stage_secs(&self) -> [f64; 5] {
        self.stage_us
            .each_ref()
            .map(|a| a.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// `pollers` concurrent pollers, each with its own function instance (container), until the
/// queue has nothing visible or in flight. Received messages are hidden for `visibility`
/// (longer than an invocation takes, as the template's is, or a message is delivered twice).
pub async fn drain(
    env: &TestBucket,
    queue: &Queue,
    pollers: usize,
    visibility: Duration,
) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..pollers {
        let function = IngestFunction::new(
            env.index_store.clone(),
            env.tempdir(),
            env.encoder.clone(),
            env.client.clone(),
            Limits::default(),
        );
        let (queue, tally, bucket) = (queue.clone(), tally.clone(), env.bucket.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                assert!(
                    start.elapsed() < Duration::from_secs(240),
                    "the queue did not drain"
                );
                let got = queue
                    .receive(10, Duration::from_secs(1), visibility)
                    .await
                    .unwrap();
                if got.is_empty() {
                    let c = queue.counts().await.unwrap();
                    if c.visible == 0 && c.in_flight == 0 {
                        return;
                    }
                    continue;
                }
                let invoked = Instant::now();
                let handled = function.handle(&sqs_event(&bucket, &got)).await;
                let t = &handled.summary.times_ms;
                let whole = invoked.elapsed().as_secs_f64() * 1e3;
                for (sum, ms) in tally.stage_us.iter().zip([
                    t.fetch,
                    t.encode,
                    t.segment_write,
                    t.manifest_commit,
                    whole,
                ]) {
                    sum.fetch_add((ms * 1e3) as u64, Ordering::Relaxed);
                }
                tally.invocations.fetch_add(1, Ordering::Relaxed);
                tally
                    .indexed
                    .fetch_add(handled.summary.indexed, Ordering::Relaxed);
                tally
                    .duplicates
                    .fetch_add(handled.summary.duplicates, Ordering::Relaxed);
                tally
                    .failed_messages
                    .fetch_add(handled.failed_messages.len(), Ordering::Relaxed);
                let done: Vec<String> = got
                    .iter()
                    .filter(|m| !handled.failed_messages.contains(&m.id))
                    .map(|m| m.receipt.clone())
                    .collect();
                queue.delete(&done).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}
