//! Helpers of the Lambda tests: the `events/` files as templates, retargeted at a test bucket.

use serde_json::{json, Value};

/// The bucket name the `events/` files use.
pub const EVENTS_BUCKET: &str = "lookalike-images";

/// An `events/` file, with its bucket name replaced by `bucket`.
pub fn event(name: &str, bucket: &str) -> Value {
    let path = crate::repo_root().join("events").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text.replace(EVENTS_BUCKET, bucket))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// URL-encode a key the way S3 notifications do (space as `+`).
pub use lookalike::backfill::encode_key;

/// An S3 notification record for `key`, from `events/s3-put.json` or `events/s3-delete.json`.
pub fn s3_record(created: bool, bucket: &str, key: &str) -> Value {
    let file = if created {
        "s3-put.json"
    } else {
        "s3-delete.json"
    };
    let mut ev = event(file, bucket);
    let mut record = ev["Records"][0].take();
    record["s3"]["object"]["key"] = json!(encode_key(key));
    record
}

/// A direct S3 event with `records`.
pub fn s3_event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

/// An SQS batch (from `events/sqs-s3-batch.json`) with one message per entry of `bodies`;
/// message ids are `msg-<i>`.
pub fn sqs_batch(bucket: &str, bodies: Vec<Value>) -> Value {
    let template = event("sqs-s3-batch.json", bucket)["Records"][0].clone();
    let records: Vec<Value> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut m = template.clone();
            m["messageId"] = json!(format!("msg-{i}"));
            m["body"] = json!(body.to_string());
            m
        })
        .collect();
    json!({ "Records": records })
}

/// Upload `bytes` to `bucket`/`key` with user metadata.
pub async fn put_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    bytes: Vec<u8>,
    metadata: &[(&str, &str)],
) {
    let mut req = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(bytes.into());
    for (k, v) in metadata {
        req = req.metadata(*k, *v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("cannot upload {key}: {e:?}"));
}

/// Delete `bucket`/`key`.
pub async fn delete_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("cannot delete {key}: {e:?}"));
}

/// A fresh bucket on the shared moto server with images at its root and the index under
/// `index/`, the encoder, and temporary folders that live as long as it does. A test file that
/// needs more wraps it in a type of its own (`struct Env(TestBucket)` with `Deref`).
pub struct TestBucket {
    /// The bucket's name.
    pub bucket: String,
    /// A client of the moto server.
    pub client: aws_sdk_s3::Client,
    /// The index's store (`index/` in the bucket).
    pub index_store: lookalike::store::DynStore,
    /// The default encoder.
    pub encoder: std::sync::Arc<lookalike::model::encoder::Encoder>,
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl TestBucket {
    /// `None` (after a SKIPPED line) without moto or the model.
    pub async fn new(name: &str) -> Option<TestBucket> {
        let encoder = crate::encoder()?;
        let server = crate::moto::MotoServer::shared()?;
        let bucket = crate::moto::unique_bucket(name);
        server.create_bucket(&bucket).await;
        let client = server.client();
        Some(TestBucket {
            index_store: std::sync::Arc::new(lookalike::store::S3Store::new(
                client.clone(),
                &bucket,
                "index",
            )),
            bucket,
            client,
            encoder,
            dirs: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// A new temporary folder (a container's /tmp).
    pub fn tempdir(&self) -> std::path::PathBuf {
        let dir = crate::tempdir();
        let path = dir.path().to_path_buf();
        self.dirs.lock().unwrap().push(dir);
        path
    }

    /// The index as a new reader sees it now.
    pub async fn snapshot(&self) -> std::sync::Arc<lookalike::index::Snapshot> {
        lookalike::index::Index::open(self.index_store.clone(), &self.tempdir(), None)
            .await
            .unwrap()
            .snapshot()
    }

    /// Upload `bytes` as `key` (no metadata).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) {
        put_object(&self.client, &self.bucket, key, bytes, &[]).await;
    }
}
