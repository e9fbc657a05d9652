//! The index core (manifest, segments, cache, snapshot search, writer) against both stores:
//! a local folder and S3 on a local moto server. Vectors are synthetic here so the tests need no
//! model; tests/ingest.rs covers the path from image bytes.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lookalike::index::lease::Lease;
use lookalike::index::manifest::{segment_key, Manifest, MANIFEST_KEY};
use lookalike::index::segment::{BuildParams, ItemRecord, SearchParams};
use lookalike::index::writer::{self, CompactionPolicy, Deletion};
use lookalike::index::{Index, IndexError, ManifestError};
use lookalike::model::ModelRef;
use lookalike::store::{DynStore, LocalStore};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use testkit::faults::{Fault, FaultyStore, HoldSegmentUpload, LoseManifestAnswer, LostAnswer};

const DIMS: usize = 16;

fn model() -> ModelRef {
    ModelRef {
        id: "test-model".into(),
        dims: DIMS,
    }
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn random_vec(rng: &mut StdRng) -> Vec<f32> {
    unit((0..DIMS).map(|_| rng.random_range(-1.0..1.0)).collect())
}

fn item(key: &str, etag: &str, v: Vec<f32>) -> (ItemRecord, Vec<f32>) {
    let mut metadata = serde_json::Map::new();
    metadata.insert("n".into(), serde_json::Value::String(key.to_uppercase()));
    (
        ItemRecord {
            key: key.into(),
            source: "test".into(),
            etag: etag.into(),
            size: 1,
            category: lookalike::catalog::category_of(key).into(),
            metadata,
            sequencer: None,
        },
        v,
    )
}

/// The two stores every test runs against: a local folder and a fresh bucket on the moto server.
async fn stores() -> Vec<(&'static str, DynStore)> {
    let mut v: Vec<(&'static str, DynStore)> = Vec::new();
    let dir = tempfile::tempdir().unwrap().keep();
    v.push(("local", Arc::new(LocalStore::new(&dir).unwrap())));
    if let Some(store) = testkit::s3_store("index").await {
        v.push(("s3", store));
    }
    v
}

async fn open(store: &DynStore) -> Index {
    let cache = tempfile::tempdir().unwrap().keep();
    Index::open(store.clone(), &cache, Some(model()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_search_delete_overwrite() {
    for (name, store) in stores().await {
        let index = open(&store).await;
        assert_eq!(index.snapshot().live_items(), 0, "{name}: empty index");
        let mut rng = StdRng::seed_from_u64(1);
        let items: Vec<_> = (0..40)
            .map(|i| {
                item(
                    &format!("cat{}/img{i}.jpg", i % 3),
                    "e1",
                    random_vec(&mut rng),
                )
            })
            .collect();
        let probe = items[7].1.clone();
        let c = writer::append(&index, &model(), items, &[], BuildParams::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.version, 1);
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 40, "{name}");
        let rec = snap.record("cat1/img7.jpg").unwrap().unwrap();
        assert_eq!(rec.category, "cat1");
        assert_eq!(rec.metadata["n"], "CAT1/IMG7.JPG");

        // The item's own vector finds it first; a category filter keeps to that category.
        let hits = snap.search(&probe, 5, None, None).unwrap();
        assert_eq!(hits[0].record.key, "cat1/img7.jpg", "{name}");
        // Scores come from 8-bit codes: within a few thousandths of the exact cosine.
        assert!((hits[0].score - 1.0).abs() < 1e-2, "{}", hits[0].score);
        let hits = snap.search(&probe, 10, Some("cat2"), None).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|h| h.record.category == "cat2"));
        let hits = snap.search(&probe, 5, None, Some("cat1/img7.jpg")).unwrap();
        assert!(hits.iter().all(|h| h.record.key != "cat1/img7.jpg"));

        // Overwrite with a new vector in a new segment: only the new one is visible.
        let mut new_v = probe.iter().map(|x| -x).collect::<Vec<_>>();
        new_v = unit(new_v);
        writer::append(
            &index,
            &model(),
            vec![item("cat1/img7.jpg", "e2", new_v.clone())],
            &[],
            BuildParams::default(),
        )
        .await
        .unwrap();
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 40, "{name}: overwrite keeps the count");
        assert_eq!(snap.record("cat1/img7.jpg").unwrap().unwrap().etag, "e2");
        let hits = snap.search(&probe, 40, None, None).unwrap();
        assert_eq!(
            hits.iter()
                .filter(|h| h.record.key == "cat1/img7.jpg")
                .count(),
            1
        );
        assert_eq!(
            snap.search(&new_v, 1, None, None).unwrap()[0].record.etag,
            "e2"
        );

        // Delete: gone from results, lookups and counts.
        writer::append(
            &index,
            &model(),
            vec![],
            &["cat1/img7.jpg".to_string()],
            BuildParams::default(),
        )
        .await
        .unwrap();
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 39, "{name}");
        assert!(snap.record("cat1/img7.jpg").unwrap().is_none());
        assert!(snap
            .search(&new_v, 39, None, None)
            .unwrap()
            .iter()
            .all(|h| h.record.key != "cat1/img7.jpg"));
    }
}

/// S3 allows keys of 1024 bytes; LMDB's own key limit is 511. Long keys (two of them sharing
/// a 600-byte prefix, one with multi-byte characters) are indexed beside short ones, overwritten,
/// deleted and compacted like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_up_to_the_s3_limit_are_indexed_overwritten_deleted_and_compacted() {
    let prefix = format!("long/{}", "a".repeat(600));
    let long_a = format!("{prefix}{}", "b".repeat(1024 - prefix.len()));
    let long_b = format!("{prefix}{}", "é".repeat((1024 - prefix.len()) / 2));
    assert_eq!(long_a.len(), 1024);
    assert!(long_b.len() > 1000 && long_b.len() <= 1024);
    for (name, store) in stores().await {
        let index = open(&store).await;
        let mut rng = StdRng::seed_from_u64(11);
        let mut items: Vec<_> = (0..10)
            .map(|i| item(&format!("short/{i}.jpg"), "e1", random_vec(&mut rng)))
            .collect();
        let (va, vb) = (random_vec(&mut rng), random_vec(&mut rng));
        items.push(item(&long_a, "e1", va.clone()));
        items.push(item(&long_b, "e1", vb.clone()));
        writer::append(&index, &model(), items, &[], BuildParams::default())
            .await
            .unwrap();
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 12, "{name}");
        assert_eq!(snap.record(&long_a).unwrap().unwrap().key, long_a);
        assert_eq!(snap.record(&long_b).unwrap().unwrap().category, "long");
        assert!(snap.record(&format!("{prefix}c")).unwrap().is_none());
        assert_eq!(
            snap.search(&va, 1, None, None).unwrap()[0].record.key,
            long_a
        );
        // Excluding a long key by name works like a short one.
        assert!(snap
            .search(&vb, 12, None, Some(&long_b))
            .unwrap()
            .iter()
            .all(|h| h.record.key != long_b));

        // Overwrite one in a new segment, delete the other: the older segment hides both.
        let va2 = random_vec(&mut rng);
        writer::append(
            &index,
            &model(),
            vec![item(&long_a, "e2", va2.clone())],
            std::slice::from_ref(&long_b),
            BuildParams::default(),
        )
        .await
        .unwrap();
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 11, "{name}");
        assert_eq!(snap.record(&long_a).unwrap().unwrap().etag, "e2");
        assert!(snap.record(&long_b).unwrap().is_none());
        let hits = snap.search(&va, 11, None, None).unwrap();
        assert_eq!(hits.iter().filter(|h| h.record.key == long_a).count(), 1);
        assert!(hits.iter().all(|h| h.record.key != long_b));

        writer::compact(&index, CompactionPolicy::All, BuildParams::default())
            .await
            .unwrap();
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.manifest.segments.len(), 1, "{name}");
        assert_eq!(snap.live_items(), 11);
        assert_eq!(snap.record(&long_a).unwrap().unwrap().etag, "e2");
        assert!(snap.record(&long_b).unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing_and_duplicate_nothing() {
    for (name, store) in stores().await {
        let index = Arc::new(open(&store).await);
        let mut tasks = Vec::new();
        for w in 0..8 {
            let index = index.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(w);
                let items: Vec<_> = (0..25)
                    .map(|i| item(&format!("w{w}/{i}.jpg"), "e", random_vec(&mut rng)))
                    .collect();
                writer::append(&index, &model(), items, &[], BuildParams::default())
                    .await
                    .unwrap()
                    .unwrap()
            }));
        }
        let mut versions = HashSet::new();
        for t in tasks {
            versions.insert(t.await.unwrap().version);
        }
        assert_eq!(
            versions.len(),
            8,
            "{name}: every commit got its own version"
        );
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.segment_count(), 8);
        assert_eq!(snap.live_items(), 200, "{name}: exactly 200 items");
        let all = snap.live_items_with_vectors().unwrap();
        let keys: HashSet<_> = all.iter().map(|(r, _)| r.key.clone()).collect();
        assert_eq!(keys.len(), 200, "{name}: none twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_keeps_live_items_and_results() {
    for (name, store) in stores().await {
        let index = open(&store).await;
        let mut rng = StdRng::seed_from_u64(7);
        for b in 0..5 {
            let items: Vec<_> = (0..20)
                .map(|i| {
                    item(
                        &format!("c{}/b{b}-{i}.jpg", i % 2),
                        "e",
                        random_vec(&mut rng),
                    )
                })
                .collect();
            writer::append(&index, &model(), items, &[], BuildParams::default())
                .await
                .unwrap();
        }
        // An overwrite and a delete that compaction must respect.
        let over = random_vec(&mut rng);
        writer::append(
            &index,
            &model(),
            vec![item("c0/b0-0.jpg", "e2", over.clone())],
            &["c1/b1-1.jpg".into()],
            BuildParams::default(),
        )
        .await
        .unwrap();
        let before = index.refresh().await.unwrap();
        assert_eq!(before.live_items(), 99);
        let queries: Vec<Vec<f32>> = (0..10).map(|_| random_vec(&mut rng)).collect();
        // The same items, as sets: the merged segment's 8-bit codes are fitted anew, so two
        // nearly tied neighbours may swap places.
        let results =
            |snap: &lookalike::index::Snapshot| -> Vec<std::collections::BTreeSet<String>> {
                queries
                    .iter()
                    .map(|q| {
                        snap.search(q, 10, None, None)
                            .unwrap()
                            .into_iter()
                            .map(|h| h.record.key)
                            .collect()
                    })
                    .collect()
            };
        let expected = results(&before);

        let c = writer::compact(
            &index,
            CompactionPolicy::Tiered { fanout: 4 },
            BuildParams::default(),
        )
        .await
        .unwrap()
        .done()
        .expect("six level-0 segments trigger a merge");
        assert_eq!(c.merged.len(), 6);
        let after = index.snapshot();
        assert_eq!(after.segment_count(), 1, "{name}");
        assert_eq!(after.live_items(), 99);
        assert_eq!(
            after.manifest.total_items(),
            99,
            "{name}: hidden items are dropped"
        );
        assert!(
            after.manifest.deleted.is_empty(),
            "{name}: deletions are pruned"
        );
        assert_eq!(after.record("c0/b0-0.jpg").unwrap().unwrap().etag, "e2");
        assert!(after.record("c1/b1-1.jpg").unwrap().is_none());
        assert_eq!(results(&after), expected, "{name}: same search results");

        // The merged inputs are now unlisted: gc removes them; the cache dropped them on sync.
        let removed = writer::gc(&index, writer::GcPolicy::uniform(std::time::Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(removed.len(), 6, "{name}");
        assert_eq!(store.list("segments/").await.unwrap().len(), 1);
        let cached: Vec<_> = std::fs::read_dir(index.cache().dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".lmdb"))
            .collect();
        assert_eq!(cached.len(), 1, "{name}: cache keeps only listed segments");
    }
}

/// Deletes and overwrites committed while a compaction is building its segment survive the
/// compaction's commit (the merged segment was built from the state before them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_committed_during_a_compaction_survive_it() {
    for (name, store) in stores().await {
        for policy in [
            CompactionPolicy::All,
            CompactionPolicy::Tiered { fanout: 2 },
        ] {
            let hold = Arc::new(HoldSegmentUpload::default());
            let held: DynStore = Arc::new(FaultyStore {
                inner: store.clone(),
                fault: hold.clone(),
            });
            // A fresh prefix of the same store for each policy.
            let writer_index = open(&store).await;
            let mut rng = StdRng::seed_from_u64(11);
            let first =
                writer::append(&writer_index, &model(), vec![], &[], BuildParams::default())
                    .await
                    .unwrap();
            assert!(first.is_none());
            for b in 0..3 {
                let items = (0..5)
                    .map(|i| item(&format!("c/{b}-{i}.jpg"), "e1", random_vec(&mut rng)))
                    .collect();
                writer::append(&writer_index, &model(), items, &[], BuildParams::default())
                    .await
                    .unwrap();
            }
            let cache = tempfile::tempdir().unwrap();
            let compactor = Index::open(held, cache.path(), Some(model()))
                .await
                .unwrap();
            hold.arm();
            let mut task = tokio::spawn(async move {
                writer::compact(&compactor, policy, BuildParams::default()).await
            });
            tokio::select! {
                _ = hold.reached() => {}
                r = &mut task => panic!("{name}: the compaction ended before its upload: {r:?}"),
            }
            // While the merged segment waits to be uploaded: a delete, an overwrite, a new item.
            let newer = random_vec(&mut rng);
            writer::append(
                &writer_index,
                &model(),
                vec![
                    item("c/1-1.jpg", "e2", newer),
                    item("c/new.jpg", "e1", random_vec(&mut rng)),
                ],
                &["c/0-0.jpg".into(), "c/2-4.jpg".into()],
                BuildParams::default(),
            )
            .await
            .unwrap();
            hold.release();
            let done = task
                .await
                .unwrap()
                .unwrap()
                .done()
                .expect("compaction commits");
            assert!(done.merged.len() >= 2, "{name} {policy:?}");
            let snap = open(&store).await.snapshot();
            assert!(
                snap.record("c/0-0.jpg").unwrap().is_none(),
                "{name} {policy:?}: delete undone"
            );
            assert!(
                snap.record("c/2-4.jpg").unwrap().is_none(),
                "{name} {policy:?}: delete undone"
            );
            assert_eq!(
                snap.record("c/1-1.jpg").unwrap().unwrap().etag,
                "e2",
                "{name} {policy:?}"
            );
            assert!(
                snap.record("c/new.jpg").unwrap().is_some(),
                "{name} {policy:?}"
            );
            assert_eq!(snap.live_items(), 15 - 2 + 1, "{name} {policy:?}");
            let hits = snap.search(&random_vec(&mut rng), 20, None, None).unwrap();
            let keys: HashSet<String> = hits.into_iter().map(|h| h.record.key).collect();
            assert!(
                !keys.contains("c/0-0.jpg") && !keys.contains("c/2-4.jpg"),
                "{name}"
            );
            assert_eq!(keys.len(), 14, "{name} {policy:?}");
            // Each policy in its own index.
            for obj in store.list("").await.unwrap() {
                store.delete(&obj.key).await.unwrap();
            }
        }
    }
}

/// Segments replaced by a compaction stay downloadable for the grace period (a reader of the
/// previous manifest may still fetch them), then gc removes them and forgets them.
/// A manifest write that lands but whose answer is lost (the SDK's retry then sees 412, or the
/// call fails) is recognised by its commit id: an append is listed once with its deletions at
/// one sequence, and a compaction reports itself done rather than raced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_whose_answer_was_lost_is_applied_once() {
    for (name, store) in stores().await {
        for answer in [LostAnswer::PreconditionFailed, LostAnswer::Backend] {
            let lose = Arc::new(LoseManifestAnswer::new(answer));
            let faulty: DynStore = Arc::new(FaultyStore {
                inner: store.clone(),
                fault: lose.clone(),
            });
            let cache = tempfile::tempdir().unwrap();
            let index = Index::open(faulty, cache.path(), Some(model()))
                .await
                .unwrap();
            let mut rng = StdRng::seed_from_u64(5);
            let before = index.refresh().await.unwrap().manifest.clone();
            let batch = |b: usize, rng: &mut StdRng| -> Vec<_> {
                (0..4)
                    .map(|i| item(&format!("c/{b}-{i}.jpg"), "e1", random_vec(rng)))
                    .collect()
            };
            for b in 0..2 {
                writer::append(
                    &index,
                    &model(),
                    batch(b, &mut rng),
                    &[],
                    BuildParams::default(),
                )
                .await
                .unwrap();
            }
            lose.arm();
            let c = writer::append(
                &index,
                &model(),
                batch(2, &mut rng),
                &["c/0-0.jpg".to_string()],
                BuildParams::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{name} {answer:?}: {e}"))
            .unwrap();
            assert!(lose.fired(), "{name}: the fault did not fire");
            let m = index.refresh().await.unwrap().manifest.clone();
            assert_eq!(
                m.version,
                before.version + 3,
                "{name} {answer:?}: one version per commit"
            );
            let seg = c.segment.unwrap();
            assert_eq!(
                m.segments.iter().filter(|s| s.name == seg.name).count(),
                1,
                "{name} {answer:?}: the segment is listed once"
            );
            assert_eq!(
                m.deleted.get("c/0-0.jpg"),
                Some(&seg.sequence),
                "{name} {answer:?}"
            );
            assert_eq!(
                m.next_sequence,
                seg.sequence + 1,
                "{name} {answer:?}: no second sequence"
            );

            lose.arm();
            let done = writer::compact(&index, CompactionPolicy::All, BuildParams::default())
                .await
                .unwrap_or_else(|e| panic!("{name} {answer:?}: {e}"));
            assert!(lose.fired());
            let done = done
                .done()
                .unwrap_or_else(|| panic!("{name} {answer:?}: reported as raced"));
            let m = index.refresh().await.unwrap().manifest.clone();
            assert_eq!(m.segments.len(), 1, "{name} {answer:?}");
            assert_eq!(m.segments[0].name, done.output.unwrap().name);
            assert_eq!(index.snapshot().live_items(), 11, "{name} {answer:?}");
        }
    }
}

fn sequenced(key: &str, etag: &str, seq: Option<&str>, v: Vec<f32>) -> (ItemRecord, Vec<f32>) {
    let (mut record, v) = item(key, etag, v);
    record.sequencer = seq.map(str::to_string);
    (record, v)
}

fn delete_at(key: &str, seq: Option<&str>) -> Vec<Deletion> {
    vec![Deletion {
        key: key.into(),
        sequencer: seq.map(str::to_string),
    }]
}

/// Changes of one key that commit out of S3's order (a writer fetched an object, then a later
/// change of the key committed first) are ordered by their sequencers: a stale put is hidden, a
/// stale delete skipped, before and after compaction, in incremental and fresh snapshots. A
/// change without a sequencer applies in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_of_a_key_apply_in_sequencer_order_whatever_order_they_commit_in() {
    for (name, store) in stores().await {
        let index = open(&store).await;
        let mut rng = StdRng::seed_from_u64(21);
        let mut vecs = || random_vec(&mut rng);
        let put = |key: &str, etag: &str, seq: Option<&str>, v: Vec<f32>| {
            let index = &index;
            let item = sequenced(key, etag, seq, v);
            async move {
                writer::append_changes(index, &model(), vec![item], &[], BuildParams::default())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let delete = |key: &str, seq: Option<&str>| {
            let index = &index;
            let d = delete_at(key, seq);
            async move {
                writer::append_changes(index, &model(), vec![], &d, BuildParams::default())
                    .await
                    .unwrap()
                    .unwrap()
            }
        };
        let (v1, v2) = (vecs(), vecs());

        // 1. An overwrite indexed first, then the older upload: the older one is hidden.
        put("a/over.jpg", "v2", Some("0055AED6DCD90281E6"), v2.clone()).await;
        let c = put("a/over.jpg", "v1", Some("0055AED6DCD90281E5"), v1.clone()).await;
        assert_eq!(c.stale, vec!["a/over.jpg".to_string()], "{name}");
        assert_eq!(c.segment.as_ref().unwrap().hidden, c.stale);
        // 2. A delete committed, then an upload fetched before it: no resurrection.
        put("a/gone.jpg", "v1", Some("10"), vecs()).await;
        delete("a/gone.jpg", Some("30")).await;
        let c = put("a/gone.jpg", "v2", Some("20"), vecs()).await;
        assert_eq!(c.stale, vec!["a/gone.jpg".to_string()], "{name}");
        // 3. A re-upload indexed, then the delete that came before it: skipped.
        put("a/back.jpg", "v3", Some("05"), vecs()).await;
        let c = delete("a/back.jpg", Some("04")).await;
        assert_eq!(
            c.skipped_deletions,
            vec!["a/back.jpg".to_string()],
            "{name}"
        );
        // 4. Padding: "0A" is "0A00", older than "0A01".
        put("a/pad.jpg", "new", Some("0A01"), vecs()).await;
        let c = put("a/pad.jpg", "old", Some("0A"), vecs()).await;
        assert_eq!(c.stale.len(), 1, "{name}");
        // 5. No sequencer (the CLI, a hand-made event): commit order, as before.
        put("a/cli.jpg", "s", Some("FF"), vecs()).await;
        let c = put("a/cli.jpg", "cli", None, vecs()).await;
        assert!(c.stale.is_empty(), "{name}");
        delete("a/cli2.jpg", None).await;
        put("a/cli2.jpg", "late", None, vecs()).await;

        let check = |snap: &lookalike::index::Snapshot, when: &str| {
            let etag = |k: &str| snap.record(k).unwrap().map(|r| r.etag);
            assert_eq!(etag("a/over.jpg").as_deref(), Some("v2"), "{name} {when}");
            assert_eq!(etag("a/gone.jpg"), None, "{name} {when}");
            assert_eq!(etag("a/back.jpg").as_deref(), Some("v3"), "{name} {when}");
            assert_eq!(etag("a/pad.jpg").as_deref(), Some("new"), "{name} {when}");
            assert_eq!(etag("a/cli.jpg").as_deref(), Some("cli"), "{name} {when}");
            assert_eq!(etag("a/cli2.jpg").as_deref(), Some("late"), "{name} {when}");
            assert_eq!(snap.live_items(), 5, "{name} {when}");
            // The hidden vector is not searchable; the live one is.
            let hits = snap.search(&v1, 10, None, None).unwrap();
            let over: Vec<_> = hits
                .iter()
                .filter(|h| h.record.key == "a/over.jpg")
                .collect();
            assert_eq!(over.len(), 1, "{name} {when}");
            assert_eq!(over[0].record.etag, "v2", "{name} {when}");
            assert_eq!(
                snap.search(&v2, 1, None, None).unwrap()[0].record.etag,
                "v2"
            );
        };
        check(&index.refresh().await.unwrap(), "incremental");
        check(&open(&store).await.snapshot(), "fresh");
        writer::compact(&index, CompactionPolicy::All, BuildParams::default())
            .await
            .unwrap();
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.segment_count(), 1);
        check(&snap, "compacted");
        // The tombstone outlives the compaction: a stale upload of the deleted key is still
        // hidden, and one with a later sequencer is not.
        let c = put("a/gone.jpg", "v2", Some("21"), vecs()).await;
        assert_eq!(c.stale.len(), 1, "{name}");
        let c = put("a/gone.jpg", "v4", Some("31"), vecs()).await;
        assert!(c.stale.is_empty(), "{name}");
        assert_eq!(
            index
                .refresh()
                .await
                .unwrap()
                .record("a/gone.jpg")
                .unwrap()
                .unwrap()
                .etag,
            "v4"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retired_segments_outlive_their_manifest_by_the_grace_period() {
    for (name, store) in stores().await {
        let index = open(&store).await;
        let mut rng = StdRng::seed_from_u64(5);
        for b in 0..3 {
            let items = (0..4)
                .map(|i| item(&format!("c/{b}-{i}.jpg"), "e", random_vec(&mut rng)))
                .collect();
            writer::append(&index, &model(), items, &[], BuildParams::default())
                .await
                .unwrap();
        }
        // A reader that synced the manifest before the compaction and has not downloaded yet.
        let previous = lookalike::store::get_object(store.as_ref(), MANIFEST_KEY)
            .await
            .unwrap();
        let c = writer::compact(&index, CompactionPolicy::All, BuildParams::default())
            .await
            .unwrap()
            .done()
            .unwrap();
        let manifest = index.refresh().await.unwrap().manifest.clone();
        assert_eq!(manifest.retired.len(), 3, "{name}");
        assert!(c.merged.iter().all(|n| manifest.retired.contains_key(n)));
        // Orphans without grace, retired segments with an hour: nothing is removed.
        let policy = writer::GcPolicy {
            retired: Duration::from_secs(3600),
            orphans: Duration::ZERO,
        };
        assert!(
            writer::gc(&index, policy).await.unwrap().is_empty(),
            "{name}"
        );
        let old = Manifest::from_bytes(&previous.bytes).unwrap();
        for s in &old.segments {
            let got = lookalike::store::get_object(store.as_ref(), &segment_key(&s.name)).await;
            assert!(
                got.is_ok(),
                "{name}: {} was deleted within its grace period",
                s.name
            );
        }
        // Past the grace period they go, and the manifest forgets them.
        let removed = writer::gc(&index, writer::GcPolicy::uniform(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(removed.len(), 3, "{name}");
        let after = index.refresh().await.unwrap();
        assert!(after.manifest.retired.is_empty(), "{name}");
        assert_eq!(after.live_items(), 12, "{name}");
        assert_eq!(store.list("segments/").await.unwrap().len(), 1, "{name}");
    }
}

/// An index holding one committed item, `a/1.jpg`.
async fn one_item_index(store: &DynStore, rng: &mut StdRng) -> Index {
    let index = open(store).await;
    writer::append(
        &index,
        &model(),
        vec![item("a/1.jpg", "e", random_vec(rng))],
        &[],
        BuildParams::default(),
    )
    .await
    .unwrap();
    index
}

/// A segment holding `key`, uploaded and never committed (an orphan).
async fn upload_orphan(index: &Index, key: &str, rng: &mut StdRng) -> writer::BuiltSegment {
    writer::build_and_upload(
        index,
        &model(),
        vec![item(key, "e", random_vec(rng))],
        0,
        BuildParams::default(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncommitted_segment_is_invisible_and_collected() {
    for (name, store) in stores().await {
        let mut rng = StdRng::seed_from_u64(3);
        let index = one_item_index(&store, &mut rng).await;
        // A writer that dies after uploading its segment, before the manifest commit.
        let orphan = upload_orphan(&index, "a/2.jpg", &mut rng).await;
        let snap = index.refresh().await.unwrap();
        assert_eq!(snap.live_items(), 1, "{name}: the orphan is never served");
        assert!(snap.record("a/2.jpg").unwrap().is_none());
        // Young orphans are kept (their writer may still commit); old ones are removed.
        assert!(
            writer::gc(&index, writer::GcPolicy::uniform(Duration::from_secs(3600)))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            writer::gc(&index, writer::GcPolicy::uniform(std::time::Duration::ZERO))
                .await
                .unwrap(),
            vec![orphan.entry.name.clone()]
        );
        assert!(store
            .head(&segment_key(&orphan.entry.name))
            .await
            .unwrap()
            .is_none());
        assert_eq!(index.refresh().await.unwrap().live_items(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leased_segment_is_kept_until_its_lease_ends() {
    for (name, store) in stores().await {
        let mut rng = StdRng::seed_from_u64(8);
        let index = one_item_index(&store, &mut rng).await;
        let no_grace = writer::GcPolicy::uniform(Duration::ZERO);
        // Released: the segment is an ordinary orphan again.
        let lease = Lease::take(store.clone(), "test", Duration::from_secs(3600))
            .await
            .unwrap();
        let held = upload_orphan(&index, "a/2.jpg", &mut rng).await.entry.name;
        lease.hold([held.clone()]).await.unwrap();
        assert!(
            writer::gc(&index, no_grace).await.unwrap().is_empty(),
            "{name}"
        );
        lease.release().await.unwrap();
        assert_eq!(
            writer::gc(&index, no_grace).await.unwrap(),
            [held],
            "{name}"
        );
        // Not renewed (its holder died): once it expires, its segments go, and so does it.
        let lease = Lease::take(store.clone(), "test", Duration::from_millis(300))
            .await
            .unwrap();
        let held = upload_orphan(&index, "a/3.jpg", &mut rng).await.entry.name;
        lease.hold([held.clone()]).await.unwrap();
        let key = lease.key().to_string();
        drop(lease);
        assert!(
            writer::gc(&index, no_grace).await.unwrap().is_empty(),
            "{name}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            writer::gc(&index, no_grace).await.unwrap(),
            [held],
            "{name}"
        );
        assert!(store.head(&key).await.unwrap().is_none(), "{name}: {key}");
        assert_eq!(index.refresh().await.unwrap().live_items(), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_manifest_format_is_refused() {
    for (name, store) in stores().await {
        let mut m: serde_json::Value =
            serde_json::from_slice(&Manifest::new(model()).to_bytes()).unwrap();
        let next = lookalike::index::manifest::FORMAT_VERSION + 1;
        m["format"] = next.into();
        store
            .put(MANIFEST_KEY, Bytes::from(serde_json::to_vec(&m).unwrap()))
            .await
            .unwrap();
        let cache = tempfile::tempdir().unwrap();
        let err = Index::open(store.clone(), cache.path(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IndexError::Manifest(ManifestError::UnknownFormat { found }) if found == next as u64
            ),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("format version {next}")),
            "{name}: {msg}"
        );
        assert!(msg.contains("lookalike index"), "{name}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_model_is_refused_with_both_ids() {
    for (name, store) in stores().await {
        let index = open(&store).await;
        let mut rng = StdRng::seed_from_u64(5);
        writer::append(
            &index,
            &model(),
            vec![item("a/1.jpg", "e", random_vec(&mut rng))],
            &[],
            BuildParams::default(),
        )
        .await
        .unwrap();
        let other = ModelRef {
            id: "other-model".into(),
            dims: DIMS,
        };
        let cache = tempfile::tempdir().unwrap();
        let err = Index::open(store.clone(), cache.path(), Some(other.clone()))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("test-model") && msg.contains("other-model"),
            "{name}: {msg}"
        );
        let err = writer::append(
            &index,
            &other,
            vec![item("a/2.jpg", "e", random_vec(&mut rng))],
            &[],
            BuildParams::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, IndexError::ModelMismatch { .. }), "{name}");
    }
}

/// Corrupts the first `bad` downloads of segment files (a flaky network or a truncated
/// transfer); everything else passes through to the real store.
#[derive(Debug)]
struct Corrupting {
    bad: std::sync::atomic::AtomicUsize,
    truncate: bool,
}

impl Fault for Corrupting {
    fn after_download(&self, _key: &str, dest: &Path) {
        let left = self.bad.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.bad
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            let mut data = std::fs::read(dest).unwrap();
            if self.truncate {
                data.truncate(data.len() / 2);
            } else {
                let mid = data.len() / 2;
                data[mid] ^= 0xff;
            }
            std::fs::write(dest, data).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_or_truncated_downloads_are_fetched_again_never_opened() {
    for (name, store) in stores().await {
        let writer_index = open(&store).await;
        let mut rng = StdRng::seed_from_u64(9);
        let items: Vec<_> = (0..10)
            .map(|i| item(&format!("a/{i}.jpg"), "e", random_vec(&mut rng)))
            .collect();
        writer::append(&writer_index, &model(), items, &[], BuildParams::default())
            .await
            .unwrap();

        for truncate in [false, true] {
            // One bad transfer: detected by the checksum and fetched again.
            let flaky: DynStore = Arc::new(FaultyStore {
                inner: store.clone(),
                fault: Corrupting {
                    bad: 1.into(),
                    truncate,
                },
            });
            let cache = tempfile::tempdir().unwrap();
            let index = Index::open(flaky, cache.path(), Some(model()))
                .await
                .unwrap();
            assert_eq!(
                index.snapshot().live_items(),
                10,
                "{name}: recovered from a bad download"
            );

            // Every transfer bad: a clear error, and nothing under a segment name in the cache.
            let broken: DynStore = Arc::new(FaultyStore {
                inner: store.clone(),
                fault: Corrupting {
                    bad: 100.into(),
                    truncate,
                },
            });
            let cache = tempfile::tempdir().unwrap();
            let err = Index::open(broken, cache.path(), Some(model()))
                .await
                .unwrap_err();
            assert!(matches!(err, IndexError::Corrupt(..)), "{name}: {err}");
            let names: Vec<String> = std::fs::read_dir(cache.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into())
                .collect();
            assert!(
                names.iter().all(|n| !n.ends_with(".lmdb")),
                "{name}: {names:?}"
            );
        }
    }
}

/// What a snapshot shows: (key, etag) of the live items, the category counts, the live count.
type View = (Vec<(String, String)>, Vec<(String, u64)>, u64);

fn view(index: &Index) -> View {
    let snap = index.snapshot();
    let mut items: Vec<(String, String)> = snap
        .live_items_with_vectors()
        .unwrap()
        .into_iter()
        .map(|(r, _)| (r.key, r.etag))
        .collect();
    items.sort();
    (items, snap.categories(), snap.live_items())
}

/// A reader that follows every commit (incremental snapshots) sees exactly what a new reader
/// (a snapshot built from scratch) sees, through appends, overwrites, deletions, re-additions
/// and a compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshots_match_snapshots_built_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::new(dir.path()).unwrap());
    let follower = open(&store).await;
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..12 {
        // Distinct keys within a batch.
        let items: Vec<_> = (0..rng.random_range(0..6))
            .map(|_| {
                let key = format!(
                    "c{}/{}.jpg",
                    rng.random_range(0..3),
                    rng.random_range(0..10)
                );
                let it = item(&key, &format!("e{round}"), random_vec(&mut rng));
                (key, it)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect();
        let deleted: Vec<String> = (0..rng.random_range(0..3))
            .map(|_| {
                format!(
                    "c{}/{}.jpg",
                    rng.random_range(0..3),
                    rng.random_range(0..10)
                )
            })
            .filter(|k| !items.iter().any(|(r, _)| &r.key == k))
            .collect();
        writer::append(&follower, &model(), items, &deleted, BuildParams::default())
            .await
            .unwrap();
        if round == 8 {
            writer::compact(&follower, CompactionPolicy::All, BuildParams::default())
                .await
                .unwrap()
                .done();
        }
        follower.refresh().await.unwrap();
        let fresh = open(&store).await;
        assert_eq!(view(&follower), view(&fresh), "round {round}");
    }
    assert!(follower.snapshot().live_items() > 0);
}

/// Dimensions of the tests of the compact codes: enough for 8-bit codes to rank random
/// vectors exactly (at 16 dimensions their steps are as large as the gaps between neighbours).
const WIDE: usize = 128;

fn wide() -> ModelRef {
    ModelRef {
        id: "test-model-128".into(),
        dims: WIDE,
    }
}

fn wide_vec(rng: &mut StdRng) -> Vec<f32> {
    unit((0..WIDE).map(|_| rng.random_range(-1.0..1.0)).collect())
}

async fn open_wide(store: &DynStore) -> Index {
    let cache = tempfile::tempdir().unwrap().keep();
    Index::open(store.clone(), &cache, Some(wide()))
        .await
        .unwrap()
}

/// An empty index of [`wide`] vectors in a temporary folder (kept while the folder lives).
async fn wide_folder_index() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    let index = open_wide(&store).await;
    (dir, index)
}

/// Exact top-k keys of `query` among `items` (cosine on the full-precision vectors).
fn exact_keys(items: &[(ItemRecord, Vec<f32>)], query: &[f32], k: usize) -> Vec<String> {
    let mut scored: Vec<(f32, &str)> = items
        .iter()
        .map(|(r, v)| {
            (
                v.iter().zip(query).map(|(a, b)| a * b).sum(),
                r.key.as_str(),
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(k)
        .map(|(_, k)| k.to_string())
        .collect()
}

/// The share of the exact top-10 that the index returns, over `queries`.
fn recall(index: &Index, items: &[(ItemRecord, Vec<f32>)], queries: &[Vec<f32>]) -> f64 {
    recall_with(index, items, queries, &SearchParams::default())
}

fn recall_with(
    index: &Index,
    items: &[(ItemRecord, Vec<f32>)],
    queries: &[Vec<f32>],
    params: &SearchParams,
) -> f64 {
    let snap = index.snapshot();
    let mut hits = 0;
    for q in queries {
        let want: HashSet<String> = exact_keys(items, q, 10).into_iter().collect();
        let got = snap.search_with(q, 10, None, None, params).unwrap();
        hits += got.iter().filter(|h| want.contains(&h.record.key)).count();
    }
    hits as f64 / (10 * queries.len()) as f64
}

/// Each result of a search of `snap` (small enough that every item is scored) is in the exact
/// top 10, or within 1e-3 of the exact 10th score (a tie the 10-bit codes cannot break), and its
/// score is the exact one within 1e-3.
fn assert_exact_up_to_the_codes(
    snap: &lookalike::index::Snapshot,
    items: &[(ItemRecord, Vec<f32>)],
    queries: &[Vec<f32>],
) {
    for q in queries {
        let exact = |v: &[f32]| -> f32 { v.iter().zip(q).map(|(a, b)| a * b).sum() };
        let mut scores: Vec<f32> = items.iter().map(|(_, v)| exact(v)).collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        for hit in snap.search(q, 10, None, None).unwrap() {
            let (_, v) = items.iter().find(|(r, _)| r.key == hit.record.key).unwrap();
            assert!(
                exact(v) >= scores[9] - 1e-3,
                "{}: {} < {}",
                hit.record.key,
                exact(v),
                scores[9]
            );
            assert!(
                (hit.score - exact(v)).abs() < 1e-3,
                "score {} vs {}",
                hit.score,
                exact(v)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_segments_round_trip_and_agree_with_exact_search() {
    let mut rng = StdRng::seed_from_u64(14);
    let items: Vec<_> = (0..150)
        .map(|i| item(&format!("c{}/{i}.jpg", i % 3), "e", wide_vec(&mut rng)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    let index = open_wide(&store).await;
    writer::append(&index, &wide(), items.clone(), &[], BuildParams::default())
        .await
        .unwrap();
    let snap = index.refresh().await.unwrap();
    // Records, keys and vectors come back (vectors within the 8-bit codes' precision).
    for (record, v) in &items {
        let (got, back) = snap.lookup(&record.key).unwrap().expect("indexed");
        assert_eq!(&got, record);
        let cos: f32 = v.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!(cos > 0.999, "{}: cos {cos}", record.key);
    }
    let seg_file = std::fs::read_dir(dir.path().join("store/segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let cache_copy = dir.path().join("copy.lmdb");
    std::fs::copy(&seg_file, &cache_copy).unwrap();
    let seg = lookalike::index::Segment::open(&cache_copy).unwrap();
    assert_eq!(seg.format, lookalike::index::segment::SEGMENT_FORMAT);
    assert_eq!((seg.len, seg.dims), (150, WIDE));
    // 150 items with the default re-rank budget (200): every item is scored, so the search is
    // exact up to the codes' precision.
    let queries: Vec<Vec<f32>> = (0..30).map(|_| wide_vec(&mut rng)).collect();
    assert_exact_up_to_the_codes(&snap, &items, &queries);
    assert!(recall(&index, &items, &queries) >= 0.99);
    // Category filters and exclusions still hold.
    let q = &queries[0];
    let hits = snap.search(q, 10, Some("c1"), Some("c1/1.jpg")).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits
        .iter()
        .all(|h| h.record.category == "c1" && h.record.key != "c1/1.jpg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_searched_together_agree_with_exact_search() {
    // Four segments: each one's best candidates by their 8-bit codes are pooled, and only the
    // best of the pool are scored again with the refinements. With every item a candidate the
    // answer is still exact up to the codes' precision, whichever segment each result is in.
    let mut rng = StdRng::seed_from_u64(17);
    let items: Vec<_> = (0..200)
        .map(|i| item(&format!("c{}/{i}.jpg", i % 3), "e", wide_vec(&mut rng)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    let index = open_wide(&store).await;
    for batch in items.chunks(50) {
        writer::append(&index, &wide(), batch.to_vec(), &[], BuildParams::default())
            .await
            .unwrap();
    }
    let snap = index.refresh().await.unwrap();
    assert_eq!(snap.manifest.segments.len(), 4);
    let queries: Vec<Vec<f32>> = (0..30).map(|_| wide_vec(&mut rng)).collect();
    assert_exact_up_to_the_codes(&snap, &items, &queries);
    // A k larger than any one segment (50 items) is answered in full, best first.
    let hits = snap.search(&queries[0], 120, None, None).unwrap();
    assert_eq!(hits.len(), 120);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_segments_search_through_trees_and_scans_agree() {
    // The same 3,000 items in a segment with trees (arroy's, over sign bits), in one with
    // inverted lists, and in one with neither (a scan of the thermometer codes): each finds most
    // of the exact neighbours, through its own candidate path.
    let mut rng = StdRng::seed_from_u64(15);
    let items: Vec<_> = (0..3000)
        .map(|i| item(&format!("c/{i}.jpg"), "e", wide_vec(&mut rng)))
        .collect();
    let queries: Vec<Vec<f32>> = (0..30).map(|_| wide_vec(&mut rng)).collect();
    for (trees_from, ivf_from) in [
        (1000, usize::MAX),
        (usize::MAX, usize::MAX),
        (usize::MAX, 1000),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
        let index = open_wide(&store).await;
        let params = BuildParams {
            trees_from,
            ivf_from,
            n_trees: Some(10),
            ..BuildParams::default()
        };
        writer::append(&index, &wide(), items.clone(), &[], params)
            .await
            .unwrap();
        index.refresh().await.unwrap();
        // The trees rank by 1-bit codes: they need a wide search to find as much as the scan
        // of the 4-plane thermometer codes (measured here: 0.47 at factor 4, 0.88 at 50).
        let params = SearchParams {
            tree_factor: 50,
            nprobe: 1000,
            ..SearchParams::default()
        };
        let r = recall_with(&index, &items, &queries, &params);
        let want = if trees_from == usize::MAX { 0.9 } else { 0.8 };
        assert!(r >= want, "trees from {trees_from}: recall {r}");
        if ivf_from != usize::MAX {
            // Random vectors have no clusters: probing all 54 lists (above) scans every item;
            // 16 lists find a part of the neighbours.
            let some = recall_with(&index, &items, &queries, &SearchParams::default());
            assert!(some > 0.2, "16 of 54 lists: recall {some}");
        }
        // A category filter below half the segment scans the candidates instead.
        let snap = index.snapshot();
        let hits = snap.search(&queries[0], 5, Some("c"), None).unwrap();
        assert_eq!(hits.len(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_format_indexes_are_read_and_compacted_into_the_new_format() {
    let mut rng = StdRng::seed_from_u64(16);
    let batches: Vec<Vec<_>> = (0..2)
        .map(|b| {
            (0..30)
                .map(|i| {
                    item(
                        &format!("c{}/{b}-{i}.jpg", i % 2),
                        "old",
                        wide_vec(&mut rng),
                    )
                })
                .collect()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    testkit::format1::write_index(&store_dir, &wide(), &batches, &["c0/0-0.jpg"]);
    let store: DynStore = Arc::new(LocalStore::new(&store_dir).unwrap());
    let index = open_wide(&store).await;
    let snap = index.snapshot();
    assert_eq!(snap.manifest.format, 1);
    assert_eq!(snap.live_items(), 59, "the deletion holds");
    let all: Vec<_> = batches.concat();
    let live: Vec<_> = all
        .iter()
        .filter(|(r, _)| r.key != "c0/0-0.jpg")
        .cloned()
        .collect();
    let queries: Vec<Vec<f32>> = (0..10).map(|_| wide_vec(&mut rng)).collect();
    assert!(recall(&index, &live, &queries) >= 0.9);
    // New items go into a compact segment beside the old ones; the manifest is now in the current format.
    let extra = vec![item("c1/new.jpg", "new", wide_vec(&mut rng))];
    writer::append(&index, &wide(), extra.clone(), &[], BuildParams::default())
        .await
        .unwrap();
    let snap = index.refresh().await.unwrap();
    assert_eq!(
        snap.manifest.format,
        lookalike::index::manifest::FORMAT_VERSION
    );
    assert_eq!(snap.live_items(), 60);
    // `compact --all` rewrites everything in the new format, keeping exactly the live items.
    writer::compact(&index, CompactionPolicy::All, BuildParams::default())
        .await
        .unwrap()
        .done()
        .expect("compacted");
    let snap = index.refresh().await.unwrap();
    assert_eq!(snap.segment_count(), 1);
    assert_eq!(snap.live_items(), 60);
    assert!(snap.record("c0/0-0.jpg").unwrap().is_none());
    let name = &snap.manifest.segments[0].name;
    let seg = lookalike::index::Segment::open(&index.cache().path_of(name)).unwrap();
    assert_eq!(seg.format, lookalike::index::segment::SEGMENT_FORMAT);
    let mut live = live;
    live.extend(extra);
    assert_eq!(recall(&index, &live, &queries), 1.0);
}

/// Items with metadata to filter on: a color (none on every seventh), a price as text, sizes as
/// a list, and a few categories.
fn item_with_fields(i: usize, v: Vec<f32>) -> (ItemRecord, Vec<f32>) {
    let (mut record, v) = item(&format!("c{}/{i}.jpg", i % 4), "e", v);
    let m = &mut record.metadata;
    if !i.is_multiple_of(7) {
        m.insert("color".into(), ["red", "blue", "green"][i % 3].into());
    }
    m.insert("price".into(), format!("{}.5", i % 100).into());
    m.insert(
        "sizes".into(),
        serde_json::json!([format!("s{}", i % 5), format!("s{}", (i + 1) % 5)]),
    );
    (record, v)
}

/// Filters of both forms, from wide to very selective.
fn sample_filters() -> Vec<lookalike::index::Filter> {
    use lookalike::index::filter::{json, text};
    let mut v: Vec<_> = [
        "color=red",
        "color=red|blue,category=c1",
        "price>=10,price<20.5",
        "price<=3.5 OR category=c3",
        "NOT EXISTS color",
        "color!=green",
        "sizes=s2",
        "(color=blue OR sizes=s4) AND NOT category=c0",
        "price>1000",
        "category=c2,price<2",
    ]
    .iter()
    .map(|t| text::parse(t).unwrap())
    .collect();
    v.push(
        json::parse(&serde_json::json!({
            "$or": [{"color": {"$in": ["green"]}}, {"price": {"$gt": 95}}],
            "sizes": {"$nin": ["s0"]}
        }))
        .unwrap(),
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_agree_with_a_brute_force_evaluation() {
    // Three segments of 200: every candidate is scored, so a filtered search must return the
    // exact top 10 of the matching items (up to the codes' precision), and all of them when
    // fewer than 10 match.
    use lookalike::index::{Page, Scope};
    let mut rng = StdRng::seed_from_u64(21);
    let items: Vec<_> = (0..600)
        .map(|i| item_with_fields(i, wide_vec(&mut rng)))
        .collect();
    let (_dir, index) = wide_folder_index().await;
    for batch in items.chunks(200) {
        writer::append(&index, &wide(), batch.to_vec(), &[], BuildParams::default())
            .await
            .unwrap();
    }
    let snap = index.refresh().await.unwrap();
    let queries: Vec<Vec<f32>> = (0..5).map(|_| wide_vec(&mut rng)).collect();
    for filter in sample_filters() {
        let matching: Vec<_> = items
            .iter()
            .filter(|(r, _)| filter.matches(&r.category, &r.metadata))
            .cloned()
            .collect();
        for q in &queries {
            let scope = Scope {
                filter: Some(&filter),
                ..Scope::default()
            };
            let page = Page { offset: 0, k: 10 };
            let hits = snap.search_page(q, page, &scope, &snap.params).unwrap();
            assert_eq!(hits.len(), matching.len().min(10), "{filter:?}");
            let exact = |v: &[f32]| -> f32 { v.iter().zip(q).map(|(a, b)| a * b).sum() };
            let mut scores: Vec<f32> = matching.iter().map(|(_, v)| exact(v)).collect();
            scores.sort_by(|a, b| b.total_cmp(a));
            for hit in &hits {
                let r = &hit.record;
                assert!(
                    filter.matches(&r.category, &r.metadata),
                    "{filter:?}: {}",
                    r.key
                );
                let (_, v) = items.iter().find(|(x, _)| x.key == r.key).unwrap();
                let nth = scores[hits.len() - 1];
                assert!(exact(v) >= nth - 1e-3, "{filter:?}: {} below", r.key);
            }
        }
    }
    // A filter and a category narrow together; an unknown field matches nothing.
    let f = lookalike::index::filter::text::parse("color=red").unwrap();
    let scope = Scope {
        category: Some("c1"),
        filter: Some(&f),
        exclude_key: None,
    };
    let hits = snap
        .search_page(&queries[0], Page { offset: 0, k: 50 }, &scope, &snap.params)
        .unwrap();
    let want = items
        .iter()
        .filter(|(r, _)| r.category == "c1" && f.matches(&r.category, &r.metadata))
        .count();
    assert_eq!(hits.len(), want);
    let none = lookalike::index::filter::text::parse("nosuch=1").unwrap();
    let scope = Scope {
        filter: Some(&none),
        ..Scope::default()
    };
    let page = Page { offset: 0, k: 10 };
    assert!(snap
        .search_page(&queries[0], page, &scope, &snap.params)
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_the_nearest_lists_lack_still_returns_k_results() {
    // Two clusters in one segment with inverted lists; the filter keeps the far cluster (more
    // than half the items, so the search probes lists rather than scanning the candidates).
    // The 16 lists nearest the query hold none of them: the search goes on to further lists.
    use lookalike::index::{Page, Scope};
    let mut rng = StdRng::seed_from_u64(22);
    let axis = wide_vec(&mut rng);
    let near = |sign: f32, rng: &mut StdRng| -> Vec<f32> {
        let noise = wide_vec(rng);
        unit(
            axis.iter()
                .zip(&noise)
                .map(|(a, n)| sign * 3.0 * a + n)
                .collect(),
        )
    };
    let items: Vec<_> = (0..3000)
        .map(|i| {
            let far = i % 5 < 3;
            let (mut r, v) = item(
                &format!("c/{i}.jpg"),
                "e",
                near(if far { -1.0 } else { 1.0 }, &mut rng),
            );
            r.metadata
                .insert("side".into(), if far { "far" } else { "near" }.into());
            (r, v)
        })
        .collect();
    let (_dir, index) = wide_folder_index().await;
    let build = BuildParams {
        ivf_from: 1000,
        ..BuildParams::default()
    };
    writer::append(&index, &wide(), items.clone(), &[], build)
        .await
        .unwrap();
    let snap = index.refresh().await.unwrap();
    let filter = lookalike::index::filter::text::parse("side=far").unwrap();
    let scope = Scope {
        filter: Some(&filter),
        ..Scope::default()
    };
    let q = near(1.0, &mut rng);
    let hits = snap
        .search_page(&q, Page { offset: 0, k: 10 }, &scope, &snap.params)
        .unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h.record.metadata["side"] == "far"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_disjoint_and_together_one_search() {
    use lookalike::query::{self, SearchOptions, MAX_DEPTH};
    let mut rng = StdRng::seed_from_u64(23);
    let items: Vec<_> = (0..3600)
        .map(|i| item_with_fields(i, wide_vec(&mut rng)))
        .collect();
    let (_dir, index) = wide_folder_index().await;
    // A big segment with inverted lists and two small ones.
    let build = BuildParams {
        ivf_from: 1000,
        ..BuildParams::default()
    };
    writer::append(&index, &wide(), items[..3000].to_vec(), &[], build)
        .await
        .unwrap();
    for batch in items[3000..].chunks(300) {
        writer::append(&index, &wide(), batch.to_vec(), &[], BuildParams::default())
            .await
            .unwrap();
    }
    let snap = index.refresh().await.unwrap();
    let key = "c1/3001.jpg";
    for filter in [None, Some("color=red|blue")] {
        let paged = |offset: usize, k: usize| SearchOptions {
            offset: Some(offset),
            filter: filter.map(|f| lookalike::index::filter::text::parse(f).unwrap()),
            ..SearchOptions::top(k)
        };
        let whole = query::by_key(&snap, key, &paged(0, 100)).unwrap();
        assert_eq!(whole.results.len(), 100);
        assert_eq!(whole.next_offset, Some(100));
        let mut joined = Vec::new();
        let mut offset = Some(0);
        for _ in 0..10 {
            let page = query::by_key(&snap, key, &paged(offset.unwrap(), 10)).unwrap();
            assert_eq!(page.index_version, whole.index_version);
            joined.extend(page.results.into_iter().map(|r| r.key));
            offset = page.next_offset;
        }
        assert_eq!(offset, Some(100));
        let want: Vec<String> = whole.results.iter().map(|r| r.key.clone()).collect();
        assert_eq!(joined, want, "filter {filter:?}");
        assert_eq!(joined.iter().collect::<HashSet<_>>().len(), 100, "disjoint");
        // The last page that fits: no next offset past the deepest.
        let last = query::by_key(&snap, key, &paged(MAX_DEPTH - 10, 10)).unwrap();
        assert_eq!(last.results.len(), 10);
        assert_eq!(last.next_offset, None);
    }
    // Out of range: a negative offset, or deeper than MAX_DEPTH.
    assert!(matches!(
        query::check_offset(-1, 10),
        Err(query::QueryError::BadOffset { .. })
    ));
    let too_deep = SearchOptions {
        offset: Some(MAX_DEPTH - 5),
        ..SearchOptions::top(10)
    };
    let err = query::by_key(&snap, key, &too_deep).unwrap_err();
    assert!(err.to_string().contains("offset + k at most 500"), "{err}");
    // Unpaged searches return no next offset.
    let plain = query::by_key(&snap, key, &SearchOptions::top(10)).unwrap();
    assert_eq!(plain.next_offset, None);
}
