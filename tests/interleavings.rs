//! Randomised interleavings: several writers apply a seeded stream of uploads, overwrites and
//! deletes of a few keys, in an order unlike S3's, through a store that delays writes, fails
//! manifest reads and loses the answers of manifest writes that landed; a compactor and gc run
//! beside them. A writer whose change failed retries it later (as SQS redelivers). Afterwards
//! the index must hold, for every key, exactly the change with the greatest S3 sequencer.
//!
//! Seeds: `LOOKALIKE_INTERLEAVING_SEEDS=1,2,3` (default: eight on a local folder, two on S3
//! through moto). A failure names its seed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lookalike::index::segment::{BuildParams, ItemRecord};
use lookalike::index::writer::{self, CompactionPolicy, Deletion, GcPolicy};
use lookalike::index::Index;
use lookalike::model::ModelRef;
use lookalike::store::{DynStore, LocalStore};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use testkit::faults::{FaultyStore, RandomFaults};

const DIMS: usize = 8;
const KEYS: usize = 6;
const OPS: usize = 48;
const WRITERS: usize = 4;

fn model() -> ModelRef {
    ModelRef {
        id: "interleave".into(),
        dims: DIMS,
    }
}

/// One change S3 reported: `etag` for an upload, `None` for a delete.
#[derive(Debug, Clone)]
struct Op {
    key: String,
    sequencer: String,
    etag: Option<String>,
}

fn vector(rng: &mut StdRng) -> Vec<f32> {
    let v: Vec<f32> = (0..DIMS).map(|_| rng.random_range(-1.0..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// What the run did, for the report.
#[derive(Debug, Default)]
struct Tally {
    commits: AtomicUsize,
    retries: AtomicUsize,
    compactions: AtomicUsize,
}

async fn run_seed(seed: u64, base: DynStore) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    // S3's order: sequencers grow with the op's index (padded hex, as S3's are).
    let ops: Vec<Op> = (0..OPS)
        .map(|i| Op {
            key: format!("k/{}.jpg", rng.random_range(0..KEYS)),
            sequencer: format!("{:016X}", 0x0062_E99A_0000_0000u64 + i as u64 * 7),
            etag: rng.random_bool(0.7).then(|| format!("e{i}")),
        })
        .collect();
    let mut want: BTreeMap<String, Option<String>> = BTreeMap::new();
    for op in &ops {
        want.insert(op.key.clone(), op.etag.clone());
    }
    // The order they reach the writers: shuffled, so that later changes often commit first.
    let mut arrival = ops.clone();
    arrival.shuffle(&mut rng);
    let queue = Arc::new(Mutex::new(VecDeque::from(arrival)));
    let faults = Arc::new(RandomFaults::new(seed, 0.05, 0.1, 0.05, 3));
    let store: DynStore = Arc::new(FaultyStore {
        inner: base.clone(),
        fault: faults.clone(),
    });
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (queue, store, tally, done) =
            (queue.clone(), store.clone(), tally.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 1000 + w as u64);
            let cache = tempfile::tempdir().unwrap();
            let index = loop {
                match Index::open(store.clone(), cache.path(), Some(model())).await {
                    Ok(i) => break i,
                    Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            };
            loop {
                // A batch of one to three ops of distinct keys, as one invocation gets them.
                let batch: Vec<Op> = {
                    let mut q = queue.lock().unwrap();
                    let mut b: Vec<Op> = Vec::new();
                    let n = rng.random_range(1..=3);
                    while b.len() < n {
                        let Some(op) = q.pop_front() else { break };
                        if b.iter().any(|o| o.key == op.key) {
                            q.push_back(op);
                            break;
                        }
                        b.push(op);
                    }
                    b
                };
                if batch.is_empty() {
                    if done.load(Ordering::SeqCst) == OPS {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let items: Vec<(ItemRecord, Vec<f32>)> = batch
                    .iter()
                    .filter_map(|op| {
                        let etag = op.etag.clone()?;
                        let mut r = testkit::bench::record(&op.key);
                        r.etag = etag;
                        r.sequencer = Some(op.sequencer.clone());
                        Some((r, vector(&mut rng)))
                    })
                    .collect();
                let deletions: Vec<Deletion> = batch
                    .iter()
                    .filter(|op| op.etag.is_none())
                    .map(|op| Deletion {
                        key: op.key.clone(),
                        sequencer: Some(op.sequencer.clone()),
                    })
                    .collect();
                let r = writer::append_changes(
                    &index,
                    &model(),
                    items,
                    &deletions,
                    BuildParams::default(),
                )
                .await;
                match r {
                    Ok(_) => {
                        tally.commits.fetch_add(1, Ordering::Relaxed);
                        done.fetch_add(batch.len(), Ordering::SeqCst);
                    }
                    // Not acknowledged: delivered again later.
                    Err(_) => {
                        tally.retries.fetch_add(1, Ordering::Relaxed);
                        queue.lock().unwrap().extend(batch);
                    }
                }
            }
        }));
    }
    {
        let (store, tally, done) = (store.clone(), tally.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0xC0FFEE);
            let cache = tempfile::tempdir().unwrap();
            let Ok(index) = Index::open(store, cache.path(), Some(model())).await else {
                return;
            };
            let gc = GcPolicy {
                retired: Duration::from_millis(20),
                orphans: Duration::from_secs(3600),
            };
            while done.load(Ordering::SeqCst) < OPS {
                let policy = if rng.random_bool(0.2) {
                    CompactionPolicy::All
                } else {
                    CompactionPolicy::Tiered { fanout: 2 }
                };
                if let Ok(c) = writer::compact(&index, policy, BuildParams::default()).await {
                    if c.done().is_some() {
                        tally.compactions.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = writer::gc(&index, gc).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..10))).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // A fresh reader, no faults: every key as its last change in S3's order left it.
    let cache = tempfile::tempdir().unwrap();
    let index = Index::open(base, cache.path(), Some(model()))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the index does not open: {e}"));
    let snap = index.snapshot();
    for (key, etag) in &want {
        let got = snap.record(key).unwrap().map(|r| r.etag);
        assert_eq!(
            &got, etag,
            "seed {seed}: {key} should be {etag:?} (the change with the greatest sequencer)"
        );
    }
    let live = want.values().filter(|e| e.is_some()).count() as u64;
    assert_eq!(snap.live_items(), live, "seed {seed}: live items");
    let keys: Vec<String> = snap
        .live_items_with_vectors()
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.key)
        .collect();
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "seed {seed}: a key is live twice");
    let (failed_gets, lost, conflicts) = faults.counts();
    format!(
        "seed {seed}: {OPS} changes of {KEYS} keys by {WRITERS} writers, {} commits, {} retried \
         batches, {} compactions, {failed_gets} failed manifest reads, {lost} lost answers, {conflicts} 409s; \
         {live} keys live, all as expected",
        tally.commits.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed),
        tally.compactions.load(Ordering::Relaxed),
    )
}

fn seeds(default: &[u64]) -> Vec<u64> {
    std::env::var("LOOKALIKE_INTERLEAVING_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_interleavings_on_a_local_folder_end_in_s3_order() {
    for seed in seeds(&[1, 2, 3, 4, 5, 6, 7, 8]) {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(LocalStore::new(dir.path()).unwrap());
        println!("{}", run_seed(seed, store).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_interleavings_on_s3_end_in_s3_order() {
    for seed in seeds(&[101, 102]) {
        let Some(store) = testkit::s3_store("interleave").await else {
            return;
        };
        println!("{}", run_seed(seed, store).await);
    }
}
