//! `lookalike reindex`: an index built with model A rebuilt with model B and swapped in one
//! compare-and-swap, on the local store and on S3 (moto); concurrent commits between encoding and
//! the swap, vanished and broken source objects, a moved source folder, the no-op, and the CLI.
//!
//! Model B is the default model's ONNX graph read at its `logits` output (1000-d, no pooling)
//! under another id: a real, different embedding with different dimensions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use lookalike::catalog::MetadataTable;
use lookalike::index::lease::LEASES_PREFIX;
use lookalike::index::manifest::{Manifest, MANIFEST_KEY, SEGMENTS_PREFIX};
use lookalike::index::segment::{BuildParams, ItemRecord};
use lookalike::index::writer;
use lookalike::index::{Index, IndexError};
use lookalike::ingest::{Ingester, Progress};
use lookalike::model::encoder::Encoder;
use lookalike::preprocess::Limits;
use lookalike::query;
use lookalike::reindex::{ReindexError, ReindexReport, Reindexer, Start};
use lookalike::store::{DynStore, GetResult, LocalStore, StoreError, StoreResult};
use testkit::cli::{failed, ok};
use testkit::faults::{Fault, FaultyStore};
use testkit::lookalike;
use testkit::synthetic_jpeg;

const MODEL_B_ID: &str = "efficientnet-lite0-logits-test";

/// Write model B into `dir`: the default model's ONNX file with a card that reads `logits`.
fn write_model_b(dir: &Path) {
    let a = testkit::model_dir();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(a.join("encoder.onnx"), dir.join("encoder.onnx")).unwrap();
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("model.json")).unwrap()).unwrap();
    let card_obj = card.as_object_mut().unwrap();
    card_obj.insert("id".into(), MODEL_B_ID.into());
    card_obj.insert("output".into(), "logits".into());
    card_obj.insert("dims".into(), 1000.into());
    card_obj.insert("pooling".into(), "none".into());
    card_obj.remove("logits");
    std::fs::write(
        dir.join("model.json"),
        serde_json::to_vec_pretty(&card).unwrap(),
    )
    .unwrap();
}

/// Models A (the default) and B, loaded once; `None` (after a SKIPPED line) without the model.
fn models() -> Option<(Arc<Encoder>, Arc<Encoder>)> {
    static B: OnceLock<Arc<Encoder>> = OnceLock::new();
    let a = testkit::encoder()?;
    let b = B.get_or_init(|| {
        let dir = testkit::tempdir();
        write_model_b(dir.path());
        Arc::new(Encoder::load(dir.path()).unwrap())
    });
    assert_eq!(b.dims(), 1000);
    assert_ne!(a.model_ref(), b.model_ref());
    Some((a, b.clone()))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(testkit::fixture(name)).unwrap()
}

/// An image source and an index, with an ingester of model A.
struct World {
    name: &'static str,
    source: DynStore,
    index_store: DynStore,
    ingester: Ingester,
    _dirs: Vec<tempfile::TempDir>,
}

impl World {
    async fn local(a: &Arc<Encoder>) -> World {
        let d = testkit::tempdir();
        let source: DynStore = Arc::new(LocalStore::new(d.path().join("images")).unwrap());
        let index_store: DynStore = Arc::new(LocalStore::new(d.path().join("index")).unwrap());
        World::new("local", source, index_store, a, d).await
    }

    async fn s3(a: &Arc<Encoder>) -> Option<World> {
        let source = testkit::s3_store("rx-images").await?;
        let index_store = testkit::s3_store("rx-index").await?;
        Some(World::new("s3", source, index_store, a, testkit::tempdir()).await)
    }

    /// Local, then S3 when moto is there.
    async fn both(a: &Arc<Encoder>) -> Vec<World> {
        let mut v = vec![World::local(a).await];
        v.extend(World::s3(a).await);
        v
    }

    async fn new(
        name: &'static str,
        source: DynStore,
        index_store: DynStore,
        a: &Arc<Encoder>,
        dir: tempfile::TempDir,
    ) -> World {
        let index = Arc::new(
            Index::open(index_store.clone(), &dir.path().join("cache"), None)
                .await
                .unwrap(),
        );
        let ingester = Ingester {
            index,
            encoder: a.clone(),
            source: source.clone(),
            limits: Limits::default(),
            metadata: Some(Arc::new(
                MetadataTable::from_csv_str("key,title\nanimals/chelsea.jpg,Chelsea the cat\n")
                    .unwrap(),
            )),
            build: BuildParams::default(),
        };
        World {
            name,
            source,
            index_store,
            ingester,
            _dirs: vec![dir],
        }
    }

    fn index(&self) -> Arc<Index> {
        self.ingester.index.clone()
    }

    /// Upload `objects` to the source and ingest them with model A.
    async fn add(&self, objects: &[(String, Vec<u8>)]) {
        let mut metas = Vec::new();
        for (key, bytes) in objects {
            self.source
                .put(key, Bytes::from(bytes.clone()))
                .await
                .unwrap();
            metas.push(self.source.head(key).await.unwrap().unwrap());
        }
        let report = self.ingester.ingest(metas, vec![], None).await.unwrap();
        assert_eq!(
            report.indexed(),
            objects.len(),
            "{}: {:?}",
            self.name,
            report.items
        );
    }

    /// Another writer: its own `Index` over the same store (another process, another Lambda).
    async fn other_writer(&self) -> (Ingester, tempfile::TempDir) {
        let cache = testkit::tempdir();
        let index = Arc::new(
            Index::open(self.index_store.clone(), cache.path(), None)
                .await
                .unwrap(),
        );
        let ingester = Ingester {
            index,
            encoder: self.ingester.encoder.clone(),
            source: self.source.clone(),
            limits: Limits::default(),
            metadata: None,
            build: BuildParams::default(),
        };
        (ingester, cache)
    }

    /// The manifest as stored, and its ETag.
    async fn stored_manifest(&self) -> (Manifest, String) {
        match self.index_store.get(MANIFEST_KEY, None).await.unwrap() {
            GetResult::Found(o) => (Manifest::from_bytes(&o.bytes).unwrap(), o.meta.etag),
            GetResult::NotModified => unreachable!(),
        }
    }

    /// A fresh reader of the index, checking `model` like the query service does.
    async fn open_with(&self, model: &Encoder) -> Result<Index, IndexError> {
        let cache = testkit::tempdir().keep();
        Index::open(self.index_store.clone(), &cache, Some(model.model_ref())).await
    }
}

fn photos() -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        ("animals/chelsea.jpg".to_string(), fixture("chelsea.jpg")),
        ("drinks/coffee.jpg".to_string(), fixture("coffee.jpg")),
        ("vehicles/rocket.jpg".to_string(), fixture("rocket.jpg")),
    ];
    v.extend((0..3).map(|i| (format!("patterns/{i}.jpg"), synthetic_jpeg(i))));
    v
}

fn patterns(n: u64) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("patterns/{i}.jpg"), synthetic_jpeg(i)))
        .collect()
}

/// Live records by key.
fn records(index: &Index) -> BTreeMap<String, ItemRecord> {
    index
        .snapshot()
        .live_records()
        .unwrap()
        .into_iter()
        .map(|r| (r.key.clone(), r))
        .collect()
}

fn keys(index: &Index) -> Vec<String> {
    records(index).into_keys().collect()
}

fn top_key(index: &Index, encoder: &Encoder, image: &[u8]) -> (String, f32) {
    let r = query::by_image(
        &index.snapshot(),
        encoder,
        image,
        &Limits::default(),
        &query::SearchOptions::top(3),
    )
    .unwrap();
    (r.results[0].key.clone(), r.results[0].score)
}

fn counting() -> (Progress, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    (
        Arc::new(move |k| {
            c.fetch_add(k, Ordering::SeqCst);
        }),
        n,
    )
}

/// Reindex with model B, then check what every reindex must leave behind.
async fn reindex_round_trip(w: &World, a: &Arc<Encoder>, b: &Arc<Encoder>) {
    let name = w.name;
    w.add(&photos()).await;
    let index = w.index();
    let before = records(&index);
    assert_eq!(before.len(), 6, "{name}");
    let (old, old_etag) = w.stored_manifest().await;
    assert_eq!(old.model, a.model_ref());

    let (progress, seen) = counting();
    let report = Reindexer::new(index.clone(), b.clone())
        .run(Some(progress))
        .await
        .unwrap();
    assert!(report.swapped, "{name}");
    assert_eq!(report.old_model, a.model_ref(), "{name}");
    assert_eq!(report.new_model, b.model_ref(), "{name}");
    assert_eq!(report.encoded, 6, "{name}");
    assert_eq!(report.items, 6, "{name}");
    assert!(report.dropped.is_empty(), "{name}: {:?}", report.dropped);
    assert!(report.modified.is_empty(), "{name}: {:?}", report.modified);
    assert_eq!(report.attempts, 1, "{name}");
    assert_eq!(report.version, old.version + 1, "{name}");
    assert_eq!(seen.load(Ordering::SeqCst), 6, "{name}: progress per image");

    // The stored manifest: model B, only the new segments, no deletions, one version more,
    // sequences continuing from the old manifest's.
    let (new, new_etag) = w.stored_manifest().await;
    assert_ne!(new_etag, old_etag);
    assert_eq!(new.model, b.model_ref(), "{name}");
    assert_eq!(new.version, old.version + 1, "{name}");
    assert!(new.deleted.is_empty(), "{name}");
    let names: Vec<String> = new.segments.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, report.segments, "{name}");
    assert!(new.segments.iter().all(|s| s.sequence >= old.next_sequence));
    assert!(old.segments.iter().all(|o| !names.contains(&o.name)));
    assert_eq!(new.total_items(), 6);

    // The same items (keys, sources, etags, metadata), now searchable with B.
    assert_eq!(index.snapshot().manifest.model, b.model_ref());
    assert_eq!(records(&index), before, "{name}");
    assert_eq!(
        before["animals/chelsea.jpg"].metadata["title"],
        "Chelsea the cat"
    );
    let (key, score) = top_key(&index, b, &fixture("chelsea.jpg"));
    assert_eq!(key, "animals/chelsea.jpg", "{name}");
    assert!(score > 0.99, "{name}: {score}");
    let (key, _) = top_key(&index, b, &synthetic_jpeg(2));
    assert_eq!(key, "patterns/2.jpg", "{name}");

    // A fresh reader with B sees the same; one still on A is refused, naming both models.
    let with_b = w.open_with(b).await.unwrap();
    assert_eq!(keys(&with_b), keys(&index));
    let (key, _) = top_key(&with_b, b, &fixture("rocket.jpg"));
    assert_eq!(key, "vehicles/rocket.jpg", "{name}");
    match w.open_with(a).await {
        Err(e @ IndexError::ModelMismatch { .. }) => {
            let IndexError::ModelMismatch { index, model, .. } = &e else {
                unreachable!()
            };
            assert_eq!(index, MODEL_B_ID);
            assert_eq!(model, a.model_id());
            let msg = e.to_string();
            assert!(
                msg.contains(MODEL_B_ID) && msg.contains(a.model_id()),
                "{msg}"
            );
        }
        other => panic!("{name}: opening with the old model: {other:?}"),
    }
    // Ingest with the old model is refused too (a Lambda not yet redeployed).
    w.source
        .put("late/1.jpg", Bytes::from(synthetic_jpeg(77)))
        .await
        .unwrap();
    let meta = w.source.head("late/1.jpg").await.unwrap().unwrap();
    let err = w
        .ingester
        .ingest(vec![meta], vec![], None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, IndexError::ModelMismatch { .. }),
        "{name}: {err}"
    );

    // The old segments are still in the store for readers of the old manifest; gc takes them.
    let stored: Vec<String> = w
        .index_store
        .list(SEGMENTS_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.trim_start_matches(SEGMENTS_PREFIX).to_string())
        .collect();
    assert!(
        old.segments.iter().all(|s| stored.contains(&s.name)),
        "{name}"
    );
    // (gc also takes the segment that the refused ingest uploaded before its commit failed.)
    let removed = writer::gc(&index, writer::GcPolicy::uniform(std::time::Duration::ZERO))
        .await
        .unwrap();
    assert!(
        old.segments.iter().all(|s| removed.contains(&s.name)),
        "{name}"
    );
    assert!(names.iter().all(|n| !removed.contains(n)), "{name}");
    let fresh = w.open_with(b).await.unwrap();
    assert_eq!(fresh.snapshot().live_items(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_index_is_rebuilt_with_the_new_model() {
    let Some((a, b)) = models() else { return };
    let w = World::local(&a).await;
    reindex_round_trip(&w, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_index_is_rebuilt_with_the_new_model() {
    let Some((a, b)) = models() else { return };
    let Some(w) = World::s3(&a).await else { return };
    reindex_round_trip(&w, &a, &b).await;
}

/// The steps of a reindex with a concurrent ingest and delete committed between the encoding and
/// the swap: the swap loses, the new image is encoded, the deleted one is left out, and only the
/// segment that held the deleted item is rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingest_and_delete_are_not_lost() {
    let Some((a, b)) = models() else { return };
    for w in World::both(&a).await {
        let name = w.name;
        w.add(&patterns(5)).await;
        let reindexer = Reindexer {
            segment_items: 2,
            ..Reindexer::new(w.index(), b.clone())
        };
        let Start::Ready(mut job) = reindexer.start().await.unwrap() else {
            panic!("{name}: nothing to do?")
        };
        assert_eq!(job.pending(), 5);
        assert_eq!(job.encode(None).await.unwrap(), 5);
        assert_eq!(job.pending(), 0);

        // Meanwhile, another writer still on model A: an upload and a delete, committed.
        let (other, _cache) = w.other_writer().await;
        w.source
            .put("new/fresh.jpg", Bytes::from(synthetic_jpeg(100)))
            .await
            .unwrap();
        let meta = w.source.head("new/fresh.jpg").await.unwrap().unwrap();
        assert_eq!(
            other
                .ingest(vec![meta], vec![], None)
                .await
                .unwrap()
                .indexed(),
            1
        );
        writer::append(
            &other.index,
            &a.model_ref(),
            vec![],
            &["patterns/1.jpg".to_string()],
            BuildParams::default(),
        )
        .await
        .unwrap();
        let (between, _) = w.stored_manifest().await;

        // The swap is conditional on the manifest that was encoded: it loses, nothing changes.
        assert!(job.commit().await.unwrap().is_none(), "{name}");
        assert_eq!(job.attempts(), 1);
        let first_segments = job.segments();
        assert_eq!(first_segments.len(), 3, "{name}: 5 items, 2 per segment");
        assert_eq!(w.stored_manifest().await.0, between, "{name}: unchanged");

        // A gc now, even one that gives orphans no grace at all, leaves the uploaded segments
        // alone: the reindex holds them with a lease until it commits, however long it runs.
        let leases = || async { w.index_store.list(LEASES_PREFIX).await.unwrap().len() };
        assert_eq!(leases().await, 1, "{name}");
        let removed = writer::gc(
            &other.index,
            writer::GcPolicy::uniform(std::time::Duration::ZERO),
        )
        .await
        .unwrap();
        assert!(
            first_segments.iter().all(|s| !removed.contains(s)),
            "{name}: gc took a leased segment: {removed:?}"
        );

        // Re-read: only the new image is left to encode.
        job.reread().await.unwrap();
        assert_eq!(job.manifest_version(), between.version);
        assert_eq!(job.live_items(), 5);
        assert_eq!(job.pending(), 1, "{name}");
        assert_eq!(job.encode(None).await.unwrap(), 1);
        let report = job.commit().await.unwrap().expect("no further change");
        assert_eq!(report.attempts, 2, "{name}");
        assert_eq!(report.encoded, 6, "{name}");
        assert_eq!(report.items, 5, "{name}");
        assert_eq!(report.version, between.version + 1, "{name}");
        // Segments sorted by key: [0, 1] [2, 3] [4]; the delete invalidated the first only.
        assert!(!report.segments.contains(&first_segments[0]), "{name}");
        assert!(report.segments.contains(&first_segments[1]), "{name}");
        assert!(report.segments.contains(&first_segments[2]), "{name}");
        assert_eq!(report.segments.len(), 3, "{name}");
        assert_eq!(
            leases().await,
            0,
            "{name}: the lease is released at the commit"
        );

        let (stored, _) = w.stored_manifest().await;
        assert_eq!(stored.model, b.model_ref());
        assert!(stored.deleted.is_empty());
        let index = w.open_with(&b).await.unwrap();
        assert_eq!(
            keys(&index),
            [
                "new/fresh.jpg",
                "patterns/0.jpg",
                "patterns/2.jpg",
                "patterns/3.jpg",
                "patterns/4.jpg"
            ],
            "{name}"
        );
        let (key, score) = top_key(&index, &b, &synthetic_jpeg(100));
        assert_eq!(key, "new/fresh.jpg", "{name}");
        assert!(score > 0.99);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_reindex_stops_the_other_and_contention_is_bounded() {
    let Some((a, b)) = models() else { return };
    let w = World::local(&a).await;
    w.add(&patterns(3)).await;

    // Someone else reindexes (to the same model B) between our encoding and our swap.
    let ours = Reindexer::new(w.index(), b.clone());
    let Start::Ready(mut job) = ours.start().await.unwrap() else {
        panic!()
    };
    job.encode(None).await.unwrap();
    let (other, _cache) = w.other_writer().await;
    let theirs = Reindexer::new(other.index.clone(), b.clone())
        .run(None)
        .await
        .unwrap();
    assert!(theirs.swapped);
    let (after_theirs, etag) = w.stored_manifest().await;
    match job.finish(None).await {
        Err(e @ ReindexError::ModelChanged { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(MODEL_B_ID) && msg.contains(a.model_id()),
                "{msg}"
            );
        }
        other => panic!("expected ModelChanged, got {other:?}"),
    }
    let (now, now_etag) = w.stored_manifest().await;
    assert_eq!((now, now_etag), (after_theirs, etag), "untouched");

    // Attempts are bounded: with one allowed, a commit in between is fatal (and harmless).
    let w = World::local(&a).await;
    w.add(&patterns(2)).await;
    let reindexer = Reindexer {
        max_attempts: 1,
        ..Reindexer::new(w.index(), b.clone())
    };
    let Start::Ready(mut job) = reindexer.start().await.unwrap() else {
        panic!()
    };
    job.encode(None).await.unwrap();
    w.add(&[("late/x.jpg".to_string(), synthetic_jpeg(50))])
        .await;
    let (before, _) = w.stored_manifest().await;
    let err = job.finish(None).await.unwrap_err();
    assert!(matches!(err, ReindexError::Contention(1)), "{err}");
    assert!(err.to_string().contains("unchanged"), "{err}");
    assert_eq!(w.stored_manifest().await.0, before);
    assert_eq!(w.stored_manifest().await.0.model, a.model_ref());
}

/// Fails (not a 404) on one key.
#[derive(Debug)]
struct FailingKey(String);

impl Fault for FailingKey {
    fn before_get(&self, key: &str) -> StoreResult<()> {
        if key == self.0 {
            return Err(StoreError::Backend("throttled (simulated)".into()));
        }
        Ok(())
    }
}

async fn assert_unchanged(w: &World, before: &(Manifest, String), a: &Encoder) {
    assert_eq!(&w.stored_manifest().await, before, "{}", w.name);
    let index = w.open_with(a).await.unwrap();
    assert_eq!(index.snapshot().manifest.model, a.model_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vanished_images_are_dropped_and_broken_ones_abort() {
    let Some((a, b)) = models() else { return };
    for w in World::both(&a).await {
        let name = w.name;
        w.add(&patterns(4)).await;
        let before = w.stored_manifest().await;

        // An image the new model cannot read: nothing is swapped, the error names the key.
        w.source
            .put("patterns/3.jpg", Bytes::from_static(b"no longer a JPEG"))
            .await
            .unwrap();
        let err = Reindexer::new(w.index(), b.clone())
            .run(None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ReindexError::Encode { key, .. } if key == "patterns/3.jpg"),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("patterns/3.jpg"), "{err}");
        assert_unchanged(&w, &before, &a).await;

        // A source failing otherwise than with a 404: nothing is swapped either.
        w.source
            .put("patterns/3.jpg", Bytes::from(synthetic_jpeg(3)))
            .await
            .unwrap();
        let failing: DynStore = Arc::new(FaultyStore {
            inner: w.source.clone(),
            fault: FailingKey("patterns/2.jpg".into()),
        });
        let err = Reindexer {
            source: Some(failing),
            ..Reindexer::new(w.index(), b.clone())
        }
        .run(None)
        .await
        .unwrap_err();
        assert!(
            matches!(&err, ReindexError::Fetch { key, .. } if key == "patterns/2.jpg"),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("throttled"), "{err}");
        assert_unchanged(&w, &before, &a).await;

        // An image deleted from the source (its delete not ingested yet) is dropped and
        // reported.
        w.source.delete("patterns/1.jpg").await.unwrap();
        let report = Reindexer::new(w.index(), b.clone())
            .run(None)
            .await
            .unwrap();
        assert!(report.swapped);
        assert_eq!(report.dropped, ["patterns/1.jpg"], "{name}");
        assert_eq!(report.items, 3, "{name}");
        assert_eq!(report.encoded, 3, "{name}");
        // patterns/3.jpg was re-uploaded with the same bytes: same ETag, nothing modified.
        assert!(report.modified.is_empty(), "{name}: {:?}", report.modified);
        let index = w.open_with(&b).await.unwrap();
        assert_eq!(
            keys(&index),
            ["patterns/0.jpg", "patterns/2.jpg", "patterns/3.jpg"],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_folder_is_refused_then_read_from_its_new_place() {
    let Some((a, b)) = models() else { return };
    let d = testkit::tempdir();
    let old_dir = d.path().join("photos");
    let source: DynStore = Arc::new(LocalStore::new(&old_dir).unwrap());
    let old_location = source.location();
    let index_store: DynStore = Arc::new(LocalStore::new(d.path().join("index")).unwrap());
    let w = World::new("local", source, index_store, &a, testkit::tempdir()).await;
    w.add(&patterns(2)).await;
    let before = w.stored_manifest().await;

    let new_dir = d.path().join("moved");
    std::fs::rename(&old_dir, &new_dir).unwrap();
    let err = Reindexer::new(w.index(), b.clone())
        .run(None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ReindexError::SourceMissing { location, items: 2 } if location == &old_location),
        "{err}"
    );
    assert!(!old_dir.exists(), "the missing folder must not be created");
    assert_unchanged(&w, &before, &a).await;

    // A wrong folder (where none of the images is) is refused rather than emptying the index.
    let empty: DynStore = Arc::new(LocalStore::new(d.path().join("empty")).unwrap());
    let err = Reindexer {
        source: Some(empty),
        ..Reindexer::new(w.index(), b.clone())
    }
    .run(None)
    .await
    .unwrap_err();
    assert!(
        matches!(err, ReindexError::SourceEmpty { items: 2, .. }),
        "{err}"
    );
    assert_unchanged(&w, &before, &a).await;

    let moved: DynStore = Arc::new(LocalStore::new(&new_dir).unwrap());
    let report = Reindexer {
        source: Some(moved.clone()),
        ..Reindexer::new(w.index(), b.clone())
    }
    .run(None)
    .await
    .unwrap();
    assert_eq!(report.items, 2);
    let index = w.open_with(&b).await.unwrap();
    let recs = records(&index);
    assert!(
        recs.values().all(|r| r.source == moved.location()),
        "{recs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reindex_onto_the_same_model_is_a_no_op() {
    let Some((a, b)) = models() else { return };
    let w = World::local(&a).await;
    w.add(&patterns(2)).await;
    let before = w.stored_manifest().await;
    let report: ReindexReport = Reindexer::new(w.index(), a.clone())
        .run(None)
        .await
        .unwrap();
    assert!(!report.swapped);
    assert_eq!(report.attempts, 0);
    assert_eq!(report.encoded, 0);
    assert_eq!(report.items, 2);
    assert_eq!(report.version, before.0.version);
    assert_eq!(report.old_model, report.new_model);
    assert_eq!(w.stored_manifest().await, before, "untouched");

    // After a reindex to B, B again is a no-op too.
    let first = Reindexer::new(w.index(), b.clone())
        .run(None)
        .await
        .unwrap();
    assert!(first.swapped);
    let after = w.stored_manifest().await;
    let again = Reindexer::new(w.index(), b.clone())
        .run(None)
        .await
        .unwrap();
    assert!(!again.swapped);
    assert_eq!(again.version, first.version);
    assert_eq!(w.stored_manifest().await, after);

    // An index with no manifest has nothing to reindex.
    let empty: DynStore = Arc::new(LocalStore::new(testkit::tempdir().keep()).unwrap());
    let index = Arc::new(
        Index::open(empty, &testkit::tempdir().keep(), None)
            .await
            .unwrap(),
    );
    let err = Reindexer::new(index, b.clone())
        .run(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ReindexError::EmptyIndex(_)), "{err}");
}

#[test]
fn cli_reindex_json_summary_and_errors() {
    if testkit::encoder().is_none() {
        return;
    }
    let dir = testkit::tempdir();
    let photos = dir.path().join("photos");
    for (cat, name) in [("animals", "chelsea.jpg"), ("drinks", "coffee.jpg")] {
        std::fs::create_dir_all(photos.join(cat)).unwrap();
        std::fs::copy(testkit::fixture(name), photos.join(cat).join(name)).unwrap();
    }
    write_model_b(&dir.path().join("model-b"));
    ok(lookalike!(dir.path(), &["index", "photos"]));

    let out = ok(lookalike!(
        dir.path(),
        &["reindex", "--model", "model-b", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["swapped"], true, "{out}");
    assert_eq!(v["new_model"]["id"], MODEL_B_ID);
    assert_eq!(v["new_model"]["dims"], 1000);
    assert_eq!(v["items"], 2);
    assert_eq!(v["encoded"], 2);
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["version"], 2);

    let out = ok(lookalike!(
        dir.path(),
        &[
            "query",
            "photos/drinks/coffee.jpg",
            "--model",
            "model-b",
            "-k",
            "1",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"][0]["key"], "drinks/coffee.jpg");

    // The old model is refused, naming both.
    let err = failed(lookalike!(
        dir.path(),
        &["query", "photos/drinks/coffee.jpg"],
    ));
    assert!(err.contains(MODEL_B_ID), "{err}");
    let a = testkit::encoder().unwrap();
    assert!(err.contains(a.model_id()), "{err}");

    let out = ok(lookalike!(dir.path(), &["reindex", "--model", "model-b"]));
    assert!(out.contains("nothing to do"), "{out}");

    // Back to A, human summary; then errors exit non-zero with a clear message.
    let out = ok(lookalike!(dir.path(), &["reindex"]));
    assert!(
        out.contains("reindexed") && out.contains("2 images encoded"),
        "{out}"
    );
    let err = failed(lookalike!(
        dir.path(),
        &["reindex", "--model", "model-b", "--index", "nothing-here"],
    ));
    assert!(err.contains("nothing to reindex"), "{err}");
    let err = failed(lookalike!(
        dir.path(),
        &[
            "reindex",
            "--model",
            "model-b",
            "--source",
            "no-such-folder",
        ],
    ));
    assert!(err.contains("no-such-folder"), "{err}");
}
