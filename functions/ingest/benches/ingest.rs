//! Ingest function benchmarks (issue: ingest Lambda). Prints figures, writes
//! `target/bench/ingest.json` and the ingest section of BENCHMARKS.md.
//! Run: `cargo bench -p lookalike-ingest --bench ingest` (release build).
//!
//! 1. One invocation of the real handler with an SQS batch of 100 clothing-small photos in a
//!    moto S3 bucket: images/s and the time per stage (fetch, decode, preprocess, encode,
//!    segment write, manifest commit).
//! 2. The cost of a 10-image ingest into an index of 1k items vs 100k items (commit cost must
//!    not grow with the index).

use std::sync::Arc;
use std::time::Instant;

use lookalike::index::segment::BuildParams;
use lookalike::ingest::Ingester;
use lookalike::model::encoder::Encoder;
use lookalike::preprocess::{self, Limits};
use lookalike::store::{LocalStore, ObjectMeta, ObjectStore, S3Store};
use lookalike_ingest::IngestFunction;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use testkit::bench::{dataset_images, median, publish, record, synth_between};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An SQS batch of S3 put notifications, one per key.
fn sqs_batch(bucket: &str, keys: &[String]) -> serde_json::Value {
    let records: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let s3 = json!({"Records": [{
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-11-28T12:00:00.000Z", "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "bench"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {}, "s3": {"s3SchemaVersion": "1.0", "configurationId": "bench",
                "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                "object": {"key": key, "size": 1, "eTag": "", "sequencer": "00"}}}]});
            json!({"messageId": format!("m{i}"), "receiptHandle": "r", "body": s3.to_string(),
                   "attributes": {}, "messageAttributes": {}, "eventSource": "aws:sqs",
                   "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1"})
        })
        .collect();
    json!({ "Records": records })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some((data, model_dir)) = testkit::bench::dataset_and_model() else {
        return;
    };
    let Some(server) = testkit::moto::MotoServer::start_or_skip() else {
        return;
    };
    let cores = testkit::bench::cores();
    let encoder = Arc::new(Encoder::load(&model_dir).unwrap());
    let model = encoder.model_ref();
    // 10 photos of each category: 100 images.
    let mut per_cat = std::collections::BTreeMap::<String, usize>::new();
    let images: Vec<(String, Vec<u8>)> = dataset_images()
        .into_iter()
        .filter(|(k, _)| {
            let n = per_cat
                .entry(lookalike::catalog::category_of(k).to_string())
                .or_default();
            *n += 1;
            *n <= 10
        })
        .map(|(k, p)| (k, std::fs::read(p).unwrap()))
        .collect();
    assert_eq!(
        images.len(),
        100,
        "expected 10 categories of at least 10 photos"
    );
    let mut report = serde_json::Map::new();
    let mut md = String::new();

    // 1. One invocation: the real handler, an SQS batch of 100 messages, moto S3.
    let client = server.client();
    let bucket = testkit::moto::unique_bucket("bench-ingest");
    server.create_bucket(&bucket).await;
    let source = S3Store::new(client.clone(), &bucket, "");
    for (key, bytes) in &images {
        source.put(key, bytes.clone().into()).await.unwrap();
    }
    let keys: Vec<String> = images.iter().map(|(k, _)| k.clone()).collect();
    let batch = sqs_batch(&bucket, &keys);
    let mut runs = Vec::new();
    for run in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let index_store = Arc::new(S3Store::new(
            client.clone(),
            &bucket,
            format!("index-{run}"),
        ));
        let f = IngestFunction::new(
            index_store,
            dir.path(),
            encoder.clone(),
            client.clone(),
            Limits::default(),
        );
        let t = Instant::now();
        let handled = f.handle(&batch).await;
        let wall = ms(t.elapsed());
        assert_eq!(handled.summary.indexed, 100, "{:?}", handled.summary);
        assert!(handled.failed_messages.is_empty());
        println!(
            "invocation {run}: {wall:.0} ms, {:?}",
            handled.summary.times_ms
        );
        runs.push((wall, handled.summary.times_ms));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (wall, stages) = runs[1].clone();
    let rate = 100.0 / (wall / 1e3);
    // Decode / preprocess / encode per image, one thread (the invocation runs them on all cores).
    let limits = Limits::default();
    let card = encoder.card().clone();
    let (mut dec, mut pre, mut enc) = (Vec::new(), Vec::new(), Vec::new());
    for (_, bytes) in &images {
        let t = Instant::now();
        let (w, h) = preprocess::needed_size(&card);
        let img = preprocess::decode_scaled(bytes, &limits, Some((w, h))).unwrap();
        dec.push(ms(t.elapsed()));
        let t = Instant::now();
        let tensor = preprocess::to_tensor(&img, &card).unwrap();
        pre.push(ms(t.elapsed()));
        let t = Instant::now();
        encoder.encode_tensor(&tensor).unwrap();
        enc.push(ms(t.elapsed()));
    }
    let (dec, pre, enc) = (median(dec), median(pre), median(enc));
    println!(
        "one invocation, 100 photos: {wall:.0} ms = {rate:.1} images/s; per image (1 thread): decode {dec:.1} ms, preprocess {pre:.1} ms, encode {enc:.1} ms"
    );
    md += &format!(
        "One invocation of the ingest handler with an SQS batch of 100 clothing-small photos (10 per category, \
         median of 3 runs, each into a new index) in a local moto S3 bucket, release build, {cores} cores:\n\n\
         **{wall:.0} ms = {rate:.1} images/s.**\n\n\
         | stage | wall ms (whole batch) | ms per image |\n| --- | --- | --- |\n\
         | fetch (16 concurrent GETs) | {:.0} | {:.1} |\n\
         | decode + preprocess + encode (all cores) | {:.0} | {:.1} |\n\
         | segment write (build + upload) | {:.0} | {:.1} |\n\
         | manifest commit (compare-and-swap) | {:.0} | {:.2} |\n\n\
         Per image on one thread: decode {dec:.1} ms, preprocess (resize, normalise) {pre:.1} ms, encode {enc:.1} ms.\n\n",
        stages.fetch, stages.fetch / 100.0,
        stages.encode, stages.encode / 100.0,
        stages.segment_write, stages.segment_write / 100.0,
        stages.manifest_commit, stages.manifest_commit / 100.0,
    );
    report.insert("invocation_100_ms".into(), wall.into());
    report.insert("invocation_images_per_s".into(), rate.into());
    report.insert("stages_ms".into(), serde_json::to_value(&stages).unwrap());
    report.insert(
        "per_image_ms".into(),
        json!({"decode": dec, "preprocess": pre, "encode": enc}),
    );

    // 2. A 10-image ingest into an index of 1k vs 100k items (local store: the index sizes differ
    //    by hundreds of MB, which is not what this measures).
    let vectors: Vec<Vec<f32>> = images
        .iter()
        .map(|(_, b)| encoder.encode_image(b, &limits).unwrap())
        .collect();
    let local_source: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&data).unwrap());
    let all = dataset_images();
    md += "A 10-image ingest (fetch from a local folder, encode, segment write, commit) into an existing index; \
           median of 5 ingests of different photos:\n\n\
           | index items | ingest ms | segment write ms | manifest commit ms |\n| --- | --- | --- | --- |\n";
    let mut scaling = Vec::new();
    for n in [1_000usize, 100_000] {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let items: Vec<_> = (0..n)
            .map(|i| {
                (
                    record(&format!("synthetic/{i}.jpg")),
                    synth_between(&vectors, &mut rng),
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
        let t = Instant::now();
        let index =
            testkit::bench::build_index_in(store, &dir.path().join("cache"), &model, items, 1)
                .await;
        println!(
            "built a {n}-item index in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let ingester = Ingester {
            index: Arc::new(index),
            encoder: encoder.clone(),
            source: local_source.clone(),
            limits,
            metadata: None,
            build: BuildParams::default(),
        };
        let (mut total, mut write, mut commit) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..5 {
            let batch: Vec<ObjectMeta> = all[200 + rep * 10..200 + rep * 10 + 10]
                .iter()
                .map(|(k, p)| ObjectMeta {
                    key: k.clone(),
                    size: std::fs::metadata(p).unwrap().len(),
                    etag: String::new(),
                    metadata: Default::default(),
                })
                .collect();
            let t = Instant::now();
            let r = ingester.ingest(batch, Vec::new(), None).await.unwrap();
            total.push(ms(t.elapsed()));
            assert_eq!(r.indexed(), 10);
            write.push(ms(r.times.segment_write));
            commit.push(ms(r.times.manifest_commit));
        }
        let (t, w, c) = (median(total), median(write), median(commit));
        println!(
            "10-image ingest into {n} items: {t:.0} ms (segment write {w:.0} ms, commit {c:.1} ms)"
        );
        md += &format!("| {n} | {t:.0} | {w:.0} | {c:.1} |\n");
        scaling.push(json!({"items": n, "ingest_ms": t, "segment_write_ms": w, "commit_ms": c}));
    }
    let ratio =
        scaling[1]["ingest_ms"].as_f64().unwrap() / scaling[0]["ingest_ms"].as_f64().unwrap();
    println!("100k / 1k ingest time: {ratio:.2}x (target: within 2x)");
    md += &format!("\n100k / 1k: **{ratio:.2}x** (target: within 2x).\n");
    report.insert("ingest_10_scaling".into(), scaling.into());
    report.insert("ingest_10_ratio_100k_1k".into(), ratio.into());

    publish(
        "ingest",
        "Ingest Lambda",
        "cargo bench -p lookalike-ingest --bench ingest",
        &report,
        &md,
    );
}
