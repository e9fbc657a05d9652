//! The ingest function's handler, driven with the `events/` files (retargeted at a test bucket)
//! against a real S3 API (moto) and the real encoder. Skipped with a message when moto or the
//! model is missing (scripts/test.sh provides both).

use std::sync::Arc;
use std::time::Duration;

use lookalike::index::segment::BuildParams;
use lookalike::index::{writer, Index, ItemRecord, Snapshot};
use lookalike::ingest::{rejected_key, RejectedRecord};
use lookalike::preprocess::Limits;
use lookalike::store::{GetResult, S3Store};
use lookalike_ingest::IngestFunction;
use serde_json::{json, Value};
use testkit::lambda::{delete_object, put_object, s3_event, s3_record, sqs_batch};

use testkit::faults::{FaultyStore, HoldSegmentUpload};
use testkit::lambda::TestBucket;

/// A [`TestBucket`] with what the ingest function tests do with it.
struct Env(TestBucket);

impl std::ops::Deref for Env {
    type Target = TestBucket;
    fn deref(&self) -> &TestBucket {
        &self.0
    }
}

impl Env {
    /// `None` (after a SKIPPED line) without moto or the model.
    async fn new(name: &str) -> Option<Env> {
        TestBucket::new(name).await.map(Env)
    }

    /// A new function instance (a new container: its own cache in its own /tmp).
    fn function(&self) -> IngestFunction {
        IngestFunction::new(
            self.index_store.clone(),
            self.tempdir(),
            self.encoder.clone(),
            self.client.clone(),
            Limits::default(),
        )
    }

    /// A function instance whose index store is `store` (e.g. one that injects faults).
    fn function_on(&self, store: lookalike::store::DynStore) -> IngestFunction {
        IngestFunction::new(
            store,
            self.tempdir(),
            self.encoder.clone(),
            self.client.clone(),
            Limits::default(),
        )
    }

    fn put_event(&self, keys: &[&str]) -> Value {
        s3_event(
            keys.iter()
                .map(|k| s3_record(true, &self.bucket, k))
                .collect(),
        )
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(testkit::fixture(name)).unwrap()
}

fn failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("not a batch response: {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect()
}

fn keys(snapshot: &Snapshot) -> Vec<String> {
    let mut keys: Vec<String> = snapshot
        .live_items_with_vectors()
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.key)
        .collect();
    keys.sort();
    keys
}

#[test]
fn put_makes_searchable_delete_removes_overwrite_replaces() {
    testkit::block_on(async {
        let Some(env) = Env::new("put-delete").await else {
            return;
        };
        let f = env.function();
        // The events/ file's key is URL-encoded ("chelsea+the+cat.jpg"): it names this object.
        let key = "catalog/cats/chelsea the cat.jpg";
        put_object(
            &env.client,
            &env.bucket,
            key,
            fixture("chelsea.jpg"),
            &[("photographer", "Stefan van der Walt")],
        )
        .await;
        let put = testkit::lambda::event("s3-put.json", &env.bucket);
        let handled = f.handle(&put).await;
        assert_eq!(handled.error, None);
        assert_eq!(handled.summary.indexed, 1, "{:?}", handled.summary);
        let summary = handled.response().unwrap();
        assert_eq!(summary["indexed"], 1);

        let snap = env.snapshot().await;
        assert_eq!(keys(&snap), vec![key.to_string()]);
        let record: ItemRecord = snap.record(key).unwrap().unwrap();
        assert_eq!(record.category, "cats");
        assert_eq!(record.metadata["photographer"], "Stefan van der Walt");
        assert_eq!(record.source, format!("s3://{}", env.bucket));
        let query = env
            .encoder
            .encode_image(&fixture("chelsea.jpg"), &Limits::default())
            .unwrap();
        let hits = snap.search(&query, 1, None, None).unwrap();
        assert_eq!(hits[0].record.key, key);
        assert!(hits[0].score > 0.99, "{}", hits[0].score);

        // Overwrite: same key, another image -> only the new vector.
        env.put(key, fixture("coffee.jpg")).await;
        let handled = f.handle(&put).await;
        assert_eq!(handled.summary.indexed, 1, "{:?}", handled.summary);
        let snap = env.snapshot().await;
        assert_eq!(snap.live_items(), 1);
        let (_, vector) = snap.lookup(key).unwrap().unwrap();
        let coffee = env
            .encoder
            .encode_image(&fixture("coffee.jpg"), &Limits::default())
            .unwrap();
        let cos: f32 = vector.iter().zip(&coffee).map(|(a, b)| a * b).sum();
        assert!(
            cos > 0.999,
            "the indexed vector is not the new image's ({cos})"
        );
        let hits = snap.search(&query, 5, None, None).unwrap();
        assert_eq!(hits.len(), 1, "the old vector must be gone");

        // Delete.
        delete_object(&env.client, &env.bucket, key).await;
        let handled = f
            .handle(&testkit::lambda::event("s3-delete.json", &env.bucket))
            .await;
        assert_eq!(handled.summary.deleted, 1, "{:?}", handled.summary);
        let snap = env.snapshot().await;
        assert_eq!(snap.live_items(), 0);
        assert!(snap.search(&query, 5, None, None).unwrap().is_empty());
    });
}

#[test]
fn the_same_event_twice_is_one_item_and_a_stale_delete_is_ignored() {
    testkit::block_on(async {
        let Some(env) = Env::new("twice").await else {
            return;
        };
        env.put("shop/a.jpg", testkit::synthetic_jpeg(1)).await;
        let ev = env.put_event(&["shop/a.jpg"]);
        let first = env.function().handle(&ev).await;
        assert_eq!(first.summary.indexed, 1);
        // Redelivered, to another container and to the same one.
        let second = env.function().handle(&ev).await;
        assert_eq!(second.summary.duplicates, 1, "{:?}", second.summary);
        assert_eq!(second.summary.versions, Vec::<u64>::new(), "no commit");
        let snap = env.snapshot().await;
        assert_eq!(snap.live_items(), 1);
        assert_eq!(snap.manifest.segments.len(), 1);

        // A delete notification that arrives after the key was uploaded again changes nothing.
        let stale_delete = s3_event(vec![s3_record(false, &env.bucket, "shop/a.jpg")]);
        let handled = env.function().handle(&stale_delete).await;
        assert_eq!(handled.summary.skipped, 1, "{:?}", handled.summary);
        assert_eq!(env.snapshot().await.live_items(), 1);

        // A creation whose object is gone by the time it is fetched deletes the key.
        delete_object(&env.client, &env.bucket, "shop/a.jpg").await;
        let handled = env.function().handle(&ev).await;
        assert_eq!(handled.summary.deleted, 1, "{:?}", handled.summary);
        assert_eq!(env.snapshot().await.live_items(), 0);
    });
}

#[test]
fn eight_concurrent_invocations_of_25_images_make_200_items() {
    testkit::block_on(async {
        let Some(env) = Env::new("concurrent").await else {
            return;
        };
        let mut batches = Vec::new();
        for inv in 0..8u64 {
            let mut bodies = Vec::new();
            for i in 0..25u64 {
                let key = format!("cat{inv}/img-{i}.jpg");
                env.put(&key, testkit::synthetic_jpeg(inv * 100 + i)).await;
                bodies.push(s3_event(vec![s3_record(true, &env.bucket, &key)]));
            }
            batches.push(sqs_batch(&env.bucket, bodies));
        }
        let functions: Vec<IngestFunction> = (0..8).map(|_| env.function()).collect();
        let handled =
            futures::future::join_all(functions.iter().zip(&batches).map(|(f, b)| f.handle(b)))
                .await;
        for h in &handled {
            assert_eq!(failures(&h.response().unwrap()), Vec::<String>::new());
            assert_eq!(h.summary.indexed, 25, "{:?}", h.summary);
        }
        let snap = env.snapshot().await;
        assert_eq!(snap.live_items(), 200);
        assert_eq!(snap.manifest.segments.len(), 8);
        assert_eq!(keys(&snap).len(), 200);
        let categories = snap.categories();
        assert_eq!(categories.len(), 8);
        assert!(categories.iter().all(|(_, n)| *n == 25), "{categories:?}");
    });
}

#[test]
fn a_corrupt_image_is_rejected_for_good_and_not_a_batch_failure() {
    testkit::block_on(async {
        let Some(env) = Env::new("corrupt").await else {
            return;
        };
        let mut bodies = Vec::new();
        for i in 0..9u64 {
            let key = format!("good/{i}.jpg");
            env.put(&key, testkit::synthetic_jpeg(500 + i)).await;
            bodies.push(s3_event(vec![s3_record(true, &env.bucket, &key)]));
        }
        let mut corrupt = fixture("rocket.jpg");
        corrupt.truncate(300);
        env.put("bad/truncated.jpg", corrupt).await;
        bodies.push(s3_event(vec![s3_record(
            true,
            &env.bucket,
            "bad/truncated.jpg",
        )]));
        let batch = sqs_batch(&env.bucket, bodies);
        let handled = env.function().handle(&batch).await;
        assert_eq!(failures(&handled.response().unwrap()), Vec::<String>::new());
        assert_eq!(handled.summary.indexed, 9);
        assert_eq!(handled.summary.rejected, 1);
        assert_eq!(env.snapshot().await.live_items(), 9);

        let GetResult::Found(obj) = env
            .index_store
            .get(&rejected_key("bad/truncated.jpg"), None)
            .await
            .unwrap()
        else {
            panic!("no rejection record");
        };
        let record: RejectedRecord = serde_json::from_slice(&obj.bytes).unwrap();
        assert_eq!(record.key, "bad/truncated.jpg");
        assert!(!record.etag.is_empty());
        assert!(record.reason.contains("decode"), "{}", record.reason);

        // Delivered again: rejected again, still not a failure, still 9 items.
        let again = env.function().handle(&batch).await;
        assert_eq!(failures(&again.response().unwrap()), Vec::<String>::new());
        assert_eq!(env.snapshot().await.live_items(), 9);
    });
}

/// A key of S3's full 1024 bytes (over LMDB's 511-byte key limit), with spaces and multi-byte
/// characters, is indexed beside its neighbours in one batch, and deleted again.
#[test]
fn a_key_of_1024_bytes_is_indexed_beside_its_neighbours() {
    testkit::block_on(async {
        let Some(env) = Env::new("long-key").await else {
            return;
        };
        let head = "long/a folder é/";
        let long = format!("{head}{}.jpg", "x".repeat(1024 - head.len() - 4));
        assert_eq!(long.len(), 1024);
        let keys_in = [long.as_str(), "short/0.jpg", "short/1.jpg"];
        let mut bodies = Vec::new();
        for (i, key) in keys_in.iter().enumerate() {
            env.put(key, testkit::synthetic_jpeg(700 + i as u64)).await;
            bodies.push(s3_event(vec![s3_record(true, &env.bucket, key)]));
        }
        let handled = env.function().handle(&sqs_batch(&env.bucket, bodies)).await;
        assert_eq!(failures(&handled.response().unwrap()), Vec::<String>::new());
        assert_eq!(handled.summary.indexed, 3, "{:?}", handled.summary);
        let snap = env.snapshot().await;
        assert_eq!(keys(&snap).len(), 3);
        assert_eq!(snap.record(&long).unwrap().unwrap().category, "a folder é");

        delete_object(&env.client, &env.bucket, &long).await;
        let batch = sqs_batch(
            &env.bucket,
            vec![s3_event(vec![s3_record(false, &env.bucket, &long)])],
        );
        let handled = env.function().handle(&batch).await;
        assert_eq!(failures(&handled.response().unwrap()), Vec::<String>::new());
        assert_eq!(handled.summary.deleted, 1, "{:?}", handled.summary);
        let snap = env.snapshot().await;
        assert_eq!(
            keys(&snap),
            vec!["short/0.jpg".to_string(), "short/1.jpg".to_string()]
        );
    });
}

#[test]
fn with_the_store_unreachable_every_message_is_a_failure() {
    testkit::block_on(async {
        let Some(encoder) = testkit::encoder() else {
            return;
        };
        let client = testkit::moto::unreachable_client();
        let dir = testkit::tempdir();
        let f = IngestFunction::new(
            Arc::new(S3Store::new(client.clone(), "unreachable", "index")),
            dir.path(),
            encoder,
            client,
            Limits::default(),
        );
        let bodies = (0..3)
            .map(|i| s3_event(vec![s3_record(true, "unreachable", &format!("x/{i}.jpg"))]))
            .collect();
        let handled = f.handle(&sqs_batch("unreachable", bodies)).await;
        assert_eq!(
            failures(&handled.response().unwrap()),
            vec!["msg-0", "msg-1", "msg-2"]
        );
        // A direct invocation reports an error (so Lambda retries it).
        let direct = f
            .handle(&s3_event(vec![s3_record(true, "unreachable", "x/0.jpg")]))
            .await;
        assert!(direct.response().is_err());
    });
}

#[test]
fn test_events_own_prefix_and_unreadable_messages() {
    testkit::block_on(async {
        let Some(env) = Env::new("misc").await else {
            return;
        };
        let f = env.function();
        // The message S3 sends when the notification is configured: nothing to do.
        let handled = f
            .handle(&testkit::lambda::event(
                "sqs-s3-test-event.json",
                &env.bucket,
            ))
            .await;
        assert_eq!(failures(&handled.response().unwrap()), Vec::<String>::new());
        assert_eq!(handled.summary.ignored, 1);

        // An event for the index's own prefix (a notification configured too broadly) is
        // ignored, and an unreadable message is returned as a failure (it ends in the DLQ);
        // the good message of the same batch is committed.
        env.put("ok/1.jpg", testkit::synthetic_jpeg(77)).await;
        let batch = sqs_batch(
            &env.bucket,
            vec![
                s3_event(vec![s3_record(true, &env.bucket, "index/manifest.json")]),
                json!("this is not an S3 event"),
                s3_event(vec![s3_record(true, &env.bucket, "ok/1.jpg")]),
            ],
        );
        let handled = f.handle(&batch).await;
        assert_eq!(failures(&handled.response().unwrap()), vec!["msg-1"]);
        assert_eq!(handled.summary.ignored, 1);
        assert_eq!(handled.summary.indexed, 1);
        assert_eq!(keys(&*env.snapshot().await), vec!["ok/1.jpg"]);

        // The SQS batch from events/: two uploads and a delete of a key never indexed.
        env.put("catalog/drinks/coffee.jpg", fixture("coffee.jpg"))
            .await;
        env.put("catalog/space/rocket.jpg", fixture("rocket.jpg"))
            .await;
        let handled = f
            .handle(&testkit::lambda::event("sqs-s3-batch.json", &env.bucket))
            .await;
        assert_eq!(failures(&handled.response().unwrap()), Vec::<String>::new());
        assert_eq!(handled.summary.indexed, 2, "{:?}", handled.summary);
        assert_eq!(env.snapshot().await.live_items(), 3);

        // Not an S3 or SQS event at all: an error, not a panic.
        assert!(f
            .handle(&json!({"hello": "world"}))
            .await
            .response()
            .is_err());
    });
}

#[test]
fn a_segment_written_but_never_committed_is_invisible_and_collected() {
    testkit::block_on(async {
        let Some(env) = Env::new("orphan").await else {
            return;
        };
        env.put("a/1.jpg", testkit::synthetic_jpeg(1)).await;
        let handled = env.function().handle(&env.put_event(&["a/1.jpg"])).await;
        assert_eq!(handled.summary.indexed, 1);

        // An invocation that dies between the segment upload and the manifest commit.
        let index = Index::open(env.index_store.clone(), &env.tempdir(), None)
            .await
            .unwrap();
        let model = env.encoder.model_ref();
        let vector = env
            .encoder
            .encode_image(&testkit::synthetic_jpeg(2), &Limits::default())
            .unwrap();
        let record = ItemRecord {
            key: "a/2.jpg".into(),
            source: format!("s3://{}", env.bucket),
            etag: "x".into(),
            size: 1,
            category: "a".into(),
            metadata: Default::default(),
            sequencer: None,
        };
        let orphan = writer::build_and_upload(
            &index,
            &model,
            vec![(record, vector.clone())],
            0,
            BuildParams::default(),
        )
        .await
        .unwrap();
        drop(orphan); // the process is gone
        let listed = env.index_store.list("segments/").await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");

        // Not visible to readers, nor to the next ingest.
        let snap = env.snapshot().await;
        assert_eq!(keys(&snap), vec!["a/1.jpg"]);
        assert!(snap
            .search(&vector, 5, None, None)
            .unwrap()
            .iter()
            .all(|h| h.record.key != "a/2.jpg"));
        env.put("a/3.jpg", testkit::synthetic_jpeg(3)).await;
        env.function().handle(&env.put_event(&["a/3.jpg"])).await;
        assert_eq!(keys(&*env.snapshot().await), vec!["a/1.jpg", "a/3.jpg"]);

        // Garbage collection (no grace period here) removes exactly the orphan.
        let removed = writer::gc(&index, writer::GcPolicy::uniform(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        let left = env.index_store.list("segments/").await.unwrap();
        assert_eq!(left.len(), 2);
        assert_eq!(keys(&*env.snapshot().await), vec!["a/1.jpg", "a/3.jpg"]);
    });
}

/// The binary refuses to start when its index lies inside the prefix the notifications watch
/// (every upload would be ignored as the index's own file), naming both.
#[test]
fn an_index_inside_the_watched_prefix_is_refused_at_start_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike-ingest"))
        .env_clear()
        .env("LOOKALIKE_INDEX", "s3://bucket/images/index")
        .env("LOOKALIKE_IMAGES_PREFIX", "images/")
        .env("LOOKALIKE_MODEL", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("LOOKALIKE_IMAGES_PREFIX") && log.contains("overlaps"),
        "{log}"
    );
    assert!(log.contains("s3://bucket/images/index"), "{log}");
}

/// An SQS batch of one record for `key` with S3 sequencer `sequencer`.
fn sequenced(bucket: &str, created: bool, key: &str, sequencer: &str) -> Value {
    let mut record = s3_record(created, bucket, key);
    record["s3"]["object"]["sequencer"] = json!(sequencer);
    sqs_batch(bucket, vec![s3_event(vec![record])])
}

/// The races S3's sequencer exists for. Invocation A fetches and encodes a key's upload and is
/// held before it commits; meanwhile the key changes and invocation B commits that change; then
/// A commits. An overwrite (v2) stays indexed over A's older v1, and a deletion stays deleted.
#[test]
fn an_invocation_that_commits_after_a_later_change_of_its_key_does_not_undo_it() {
    testkit::block_on(async {
        let Some(env) = Env::new("out-of-order").await else {
            return;
        };
        for (key, overwrite) in [("race/over.jpg", true), ("race/gone.jpg", false)] {
            env.put(key, testkit::synthetic_jpeg(801)).await;
            let hold = Arc::new(HoldSegmentUpload::default());
            let held = env.function_on(Arc::new(FaultyStore {
                inner: env.index_store.clone(),
                fault: hold.clone(),
            }));
            let first = sequenced(&env.bucket, true, key, "0062E99A88DC407470");
            hold.arm();
            let a = held.handle(&first);
            tokio::pin!(a);
            tokio::select! {
                _ = hold.reached() => {}
                h = &mut a => panic!("{key}: A ended before its upload: {:?}", h.summary),
            }
            // While A waits: the key changes, and B commits that change.
            let (later, v2) = if overwrite {
                let v2 = testkit::synthetic_jpeg(802);
                env.put(key, v2.clone()).await;
                (
                    sequenced(&env.bucket, true, key, "0062E99A88DC407471"),
                    Some(v2),
                )
            } else {
                delete_object(&env.client, &env.bucket, key).await;
                (
                    sequenced(&env.bucket, false, key, "0062E99A88DC407471"),
                    None,
                )
            };
            let b = env.function().handle(&later).await;
            assert_eq!(failures(&b.response().unwrap()), Vec::<String>::new());
            assert_eq!(
                b.summary.indexed + b.summary.deleted,
                1,
                "{key}: {:?}",
                b.summary
            );
            hold.release();
            let a = a.await;
            assert_eq!(failures(&a.response().unwrap()), Vec::<String>::new());
            assert_eq!(
                a.summary.skipped, 1,
                "{key}: A's stale upload is skipped: {:?}",
                a.summary
            );

            let snap = env.snapshot().await;
            match v2 {
                Some(v2) => {
                    let (record, vector) = snap.lookup(key).unwrap().expect("v2 is indexed");
                    let want = env.encoder.encode_image(&v2, &Limits::default()).unwrap();
                    let cos: f32 = vector.iter().zip(&want).map(|(a, b)| a * b).sum();
                    assert!(cos > 0.99, "{key}: the indexed vector is not v2's ({cos})");
                    assert_eq!(record.sequencer.as_deref(), Some("0062E99A88DC407471"));
                }
                None => assert!(snap.record(key).unwrap().is_none(), "{key} came back"),
            }
            // A new container sees the same.
            let fresh = env.snapshot().await;
            assert_eq!(
                fresh.record(key).unwrap().map(|r| r.etag),
                snap.record(key).unwrap().map(|r| r.etag)
            );
        }
    });
}

/// An event whose `size` is missing or stale does not let a big object through: the read stops
/// at the limit and the object is rejected on its own.
#[test]
fn an_object_over_the_limit_is_rejected_even_when_its_event_says_it_is_small() {
    testkit::block_on(async {
        let Some(env) = Env::new("stale-size").await else {
            return;
        };
        let small = testkit::synthetic_jpeg(950);
        let big = fixture("rocket.jpg");
        assert!(big.len() > small.len() * 2, "{} {}", big.len(), small.len());
        env.put("ok/small.jpg", small.clone()).await;
        env.put("big/rocket.jpg", big.clone()).await;
        let mut bodies = Vec::new();
        for key in ["ok/small.jpg", "big/rocket.jpg"] {
            let mut record = s3_record(true, &env.bucket, key);
            record["s3"]["object"]["size"] = json!(1);
            bodies.push(s3_event(vec![record]));
        }
        let limited = IngestFunction::new(
            env.index_store.clone(),
            env.tempdir(),
            env.encoder.clone(),
            env.client.clone(),
            Limits {
                max_bytes: small.len() + (big.len() - small.len()) / 2,
                ..Limits::default()
            },
        );
        let handled = limited.handle(&sqs_batch(&env.bucket, bodies)).await;
        assert_eq!(failures(&handled.response().unwrap()), Vec::<String>::new());
        assert_eq!(
            (handled.summary.indexed, handled.summary.rejected),
            (1, 1),
            "{:?}",
            handled.summary
        );
        let GetResult::Found(obj) = env
            .index_store
            .get(&rejected_key("big/rocket.jpg"), None)
            .await
            .unwrap()
        else {
            panic!("no rejection record");
        };
        let record: RejectedRecord = serde_json::from_slice(&obj.bytes).unwrap();
        assert!(
            record.reason.contains("over the limit"),
            "{}",
            record.reason
        );
    });
}
