//! The compaction function's handler on a moto S3 index (and on a local folder): a stream of
//! small commits is merged tier by tier with nothing lost, a second run finds nothing to do,
//! replaced segments are collected only after their grace period, and a spent time budget
//! starts no merge.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use lookalike::index::maintain::MaintainPolicy;
use lookalike::index::segment::{BuildParams, ItemRecord};
use lookalike::index::writer::{self, CompactionPolicy, GcPolicy};
use lookalike::index::Index;
use lookalike::model::ModelRef;
use lookalike::store::{DynStore, LocalStore};
use lookalike_compact::CompactFunction;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use testkit::bench::{record, unit};

const DIMS: usize = 24;

fn model() -> ModelRef {
    ModelRef {
        id: "compact-test".into(),
        dims: DIMS,
    }
}

fn vector(rng: &mut StdRng) -> Vec<f32> {
    unit((0..DIMS).map(|_| rng.random_range(-1.0..1.0)).collect())
}

fn item(key: &str, v: Vec<f32>) -> (ItemRecord, Vec<f32>) {
    (record(key), v)
}

async fn stores() -> Vec<(&'static str, DynStore)> {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut v: Vec<(&'static str, DynStore)> =
        vec![("local", Arc::new(LocalStore::new(&dir).unwrap()))];
    if let Some(s3) = testkit::s3_store("compact").await {
        v.push(("s3", s3));
    }
    v
}

fn policy(fanout: usize, gc: GcPolicy) -> MaintainPolicy {
    MaintainPolicy {
        compaction: CompactionPolicy::Tiered { fanout },
        gc,
        ..MaintainPolicy::default()
    }
}

fn live_keys(index: &Index) -> BTreeSet<String> {
    let snap = index.snapshot();
    let q = vec![1.0 / (DIMS as f32).sqrt(); DIMS];
    snap.search(&q, 10_000, None, None)
        .unwrap()
        .into_iter()
        .map(|h| h.record.key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_runs_keep_the_segment_count_down_and_lose_nothing() {
    for (name, store) in stores().await {
        let cache = tempfile::tempdir().unwrap();
        let writer_index = Index::open(store.clone(), cache.path(), Some(model()))
            .await
            .unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        // 17 commits of 10 items (one also deletes an item of the first commit).
        for c in 0..17 {
            let items = (0..10)
                .map(|i| item(&format!("cat{}/{c}-{i}.jpg", i % 3), vector(&mut rng)))
                .collect();
            let deleted: Vec<String> = if c == 5 {
                vec!["cat0/0-0.jpg".into()]
            } else {
                vec![]
            };
            writer::append(
                &writer_index,
                &model(),
                items,
                &deleted,
                BuildParams::default(),
            )
            .await
            .unwrap();
        }
        writer_index.refresh().await.unwrap();
        let before = live_keys(&writer_index);
        assert_eq!(before.len(), 169, "{name}");

        let fn_cache = tempfile::tempdir().unwrap();
        let function = CompactFunction::new(
            store.clone(),
            fn_cache.path(),
            policy(4, GcPolicy::uniform(Duration::from_secs(3600))),
            Duration::from_secs(1),
        );
        let s = function
            .handle(Some(Duration::from_secs(600)))
            .await
            .unwrap();
        let first = s.clone();
        assert_eq!(s.segments_before, 17, "{name}");
        // A level with 4 or more segments is merged into one of the next level: the 17
        // level-0 segments become one.
        assert_eq!(s.compactions, 1, "{name}: {s:?}");
        assert_eq!(s.items_merged, 169, "{name}: {s:?}");
        assert!(s.segments_after < 4, "{name}: {s:?}");
        assert!(!s.out_of_time);
        assert_eq!(
            s.removed, 0,
            "{name}: replaced segments are within their grace period"
        );
        writer_index.refresh().await.unwrap();
        assert_eq!(
            live_keys(&writer_index),
            before,
            "{name}: the same live items"
        );
        assert!(writer_index
            .snapshot()
            .record("cat0/0-0.jpg")
            .unwrap()
            .is_none());

        // A second run finds nothing to merge.
        let s = function
            .handle(Some(Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(s.compactions, 0, "{name}: {s:?}");

        // Without a grace period the replaced segments go; only the listed ones are left.
        let function = CompactFunction::new(
            store.clone(),
            fn_cache.path(),
            policy(4, GcPolicy::uniform(Duration::ZERO)),
            Duration::from_secs(1),
        );
        let s = function.handle(None).await.unwrap();
        // Every segment written (17 commits, one per merge) but the ones left listed.
        assert_eq!(
            s.removed,
            17 + first.compactions - first.segments_after,
            "{name}: {s:?}"
        );
        let listed = writer_index
            .refresh()
            .await
            .unwrap()
            .manifest
            .segments
            .len();
        assert_eq!(
            store.list("segments/").await.unwrap().len(),
            listed,
            "{name}"
        );
        assert_eq!(live_keys(&writer_index), before, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_merge_starts_without_time_left() {
    let (_, store) = stores().await.remove(0);
    let cache = tempfile::tempdir().unwrap();
    let index = Index::open(store.clone(), cache.path(), Some(model()))
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    for c in 0..4 {
        let items = vec![item(&format!("a/{c}.jpg"), vector(&mut rng))];
        writer::append(&index, &model(), items, &[], BuildParams::default())
            .await
            .unwrap();
    }
    let fn_cache = tempfile::tempdir().unwrap();
    let function = CompactFunction::new(
        store.clone(),
        fn_cache.path(),
        policy(4, GcPolicy::default()),
        Duration::from_secs(120),
    );
    // 60 s left, 120 s reserved: nothing is merged, and the summary says more is to do.
    let s = function
        .handle(Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(s.compactions, 0);
    assert!(s.out_of_time);
    assert_eq!(s.segments_after, 4);
    // An empty index (no manifest yet) is nothing to do, not an error.
    let empty: DynStore = Arc::new(LocalStore::new(tempfile::tempdir().unwrap().keep()).unwrap());
    let function = CompactFunction::new(
        empty,
        fn_cache.path().join("empty"),
        policy(4, GcPolicy::default()),
        Duration::ZERO,
    );
    let s = function.handle(None).await.unwrap();
    assert_eq!((s.compactions, s.segments_after, s.removed), (0, 0, 0));
}
