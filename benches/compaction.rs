//! Compaction in the deployment, simulated: a stream of items committed 100 at a time (what the
//! ingest function does with an SQS batch of 100), with the compaction function's run
//! (`index::maintain`: tiered, fan-out 4, then gc) after every `every` commits, against a local
//! index. Vectors are precomputed real-derived Lite0 embeddings (a clothing-small photo's
//! embedding plus noise, σ = 0.01 per dimension) written through the core API; the encoder is
//! not run. Three handles on the index, each with its own cache, as in the deployment: the
//! ingest function's, the compaction function's and the query function's.
//!
//! Prints and writes `target/bench/compaction.json` and the compaction section of BENCHMARKS.md:
//! the segment count over the stream (mean and max), query p50/p99 at checkpoints (one thread,
//! k = 10), time spent committing and compacting, the longest compaction run, write
//! amplification, peak memory; and at the end recall@10 against exact search, before and after
//! a final merge of everything into one segment.
//!
//! Run: `cargo bench --bench compaction`. Environment: `LOOKALIKE_BENCH_RUNS`, a list of
//! `items:every` (items streamed, commits between compaction runs; default
//! `100000:1,100000:30`; add `1000000:1` for the 1M run, about half an hour here),
//! `LOOKALIKE_BENCH_NO_MD` (leave BENCHMARKS.md alone).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lookalike::index::maintain::{maintain, MaintainPolicy};
use lookalike::index::manifest::{Manifest, MANIFEST_KEY};
use lookalike::index::segment::{BuildParams, ItemRecord};
use lookalike::index::writer::{self, CompactionPolicy, GcPolicy};
use lookalike::index::{Index, Snapshot};
use lookalike::store::{get_object, DynStore, LocalStore};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde_json::{json, Value};
use testkit::bench::{
    dataset_and_model, dot, embed, peak_rss_mib, percentile, publish, record, synth_noisy,
};

const BATCH: usize = 100;
const FANOUT: usize = 4;
const QUERIES: usize = 100;

/// `LOOKALIKE_BENCH_RUNS`: (items, every) pairs.
fn runs() -> Vec<(usize, usize)> {
    std::env::var("LOOKALIKE_BENCH_RUNS")
        .unwrap_or_else(|_| "100000:1,100000:30".into())
        .split(',')
        .filter_map(|r| {
            let (items, every) = r.trim().split_once(':')?;
            Some((items.parse().ok()?, every.parse::<usize>().ok()?.max(1)))
        })
        .collect()
}

/// p50 and p99 (ms) of `queries` on `snap`, after a warm-up pass.
fn latency(snap: &Snapshot, queries: &[Vec<f32>]) -> (f64, f64) {
    for q in queries.iter().take(20) {
        snap.search(q, 10, None, None).unwrap();
    }
    let mut lat: Vec<f64> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            snap.search(q, 10, None, None).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    (percentile(&lat, 0.5), percentile(&lat, 0.99))
}

fn recall(snap: &Snapshot, queries: &[Vec<f32>], truth: &[HashSet<usize>]) -> f64 {
    let hits: usize = queries
        .iter()
        .zip(truth)
        .map(|(q, want)| {
            snap.search(q, 10, None, None)
                .unwrap()
                .iter()
                .filter(|h| {
                    let id = h.record.key[2..h.record.key.len() - 4]
                        .parse::<usize>()
                        .unwrap();
                    want.contains(&id)
                })
                .count()
        })
        .sum();
    hits as f64 / (10 * queries.len()) as f64
}

async fn manifest(store: &DynStore) -> Manifest {
    let o = get_object(store.as_ref(), MANIFEST_KEY).await.unwrap();
    Manifest::from_bytes(&o.bytes).unwrap()
}

async fn stream(
    base: &[Vec<f32>],
    model: &lookalike::model::ModelRef,
    items: usize,
    every: usize,
) -> Value {
    let dims = model.dims;
    let sigma = 0.01 * (1280.0 / dims as f32).sqrt();
    let dir = tempfile::tempdir_in(testkit::repo_root().join("target")).unwrap();
    let store: DynStore = std::sync::Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    let open = |name: &str| {
        let store = store.clone();
        let cache = dir.path().join(name);
        let model = model.clone();
        async move { Index::open(store, &cache, Some(model)).await.unwrap() }
    };
    let (ingest, compactor, query) = (
        open("ingest").await,
        open("compact").await,
        open("query").await,
    );
    let policy = MaintainPolicy {
        compaction: CompactionPolicy::Tiered { fanout: FANOUT },
        // Nothing reads an old manifest here: replaced segments go at once (disk).
        gc: GcPolicy::uniform(Duration::ZERO),
        ..MaintainPolicy::default()
    };
    let mut rng = StdRng::seed_from_u64(items as u64 ^ every as u64);
    let mut all: Vec<Vec<f32>> = Vec::with_capacity(items);
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|_| synth_noisy(base, &mut rng, sigma))
        .collect();
    let commits = items / BATCH;
    let checkpoints: Vec<usize> = (1..=10).map(|i| commits * i / 10).collect();
    let (mut commit_s, mut compact_s, mut longest_run_s) = (0.0f64, 0.0f64, 0.0f64);
    let (mut merged_items, mut runs, mut compactions) = (0u64, 0usize, 0usize);
    let (mut seg_sum, mut seg_max) = (0usize, 0usize);
    let mut points = Vec::new();
    let start = Instant::now();
    for c in 1..=commits {
        let batch: Vec<(ItemRecord, Vec<f32>)> = (0..BATCH)
            .map(|_| {
                let v = synth_noisy(base, &mut rng, sigma);
                let id = all.len();
                all.push(v.clone());
                (record(&format!("c/{id}.jpg")), v)
            })
            .collect();
        let t = Instant::now();
        writer::append(&ingest, model, batch, &[], BuildParams::default())
            .await
            .unwrap();
        commit_s += t.elapsed().as_secs_f64();
        if c % every == 0 {
            let t = Instant::now();
            let run = maintain(&compactor, policy).await.unwrap();
            let took = t.elapsed().as_secs_f64();
            compact_s += took;
            longest_run_s = longest_run_s.max(took);
            runs += 1;
            compactions += run.compactions.len();
            merged_items += run
                .compactions
                .iter()
                .filter_map(|c| c.output.as_ref())
                .map(|o| o.items)
                .sum::<u64>();
        }
        let segments = manifest(&store).await.segments.len();
        seg_sum += segments;
        seg_max = seg_max.max(segments);
        if checkpoints.contains(&c) {
            let snap = query.refresh().await.unwrap();
            let (p50, p99) = latency(&snap, &queries);
            let n = c * BATCH;
            println!(
                "every {every}: {n} items, {} segments, p50 {p50:.3} ms, p99 {p99:.3} ms ({:.0} s so far, peak {:.0} MiB)",
                snap.segment_count(),
                start.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
            points.push(json!({
                "items": n, "segments": snap.segment_count(), "p50_ms": p50, "p99_ms": p99,
                "bytes_per_item": snap.manifest.total_bytes() as f64 / n as f64,
            }));
        }
    }
    let stream_s = start.elapsed().as_secs_f64();
    let snap = query.refresh().await.unwrap();
    let t = Instant::now();
    let truth: Vec<HashSet<usize>> = queries
        .par_iter()
        .map(|q| {
            let mut scored: Vec<(f32, usize)> = all
                .iter()
                .enumerate()
                .map(|(i, v)| (dot(v, q), i))
                .collect();
            scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
            scored[..10].iter().map(|s| s.1).collect()
        })
        .collect();
    println!("exact truth in {:.1} s", t.elapsed().as_secs_f64());
    let recall_policy = recall(&snap, &queries, &truth);
    let (p50_policy, p99_policy) = latency(&snap, &queries);
    // Everything merged into one segment: the best the index can do at this size.
    let t = Instant::now();
    let all_run = maintain(
        &compactor,
        MaintainPolicy {
            compaction: CompactionPolicy::All,
            ..policy
        },
    )
    .await
    .unwrap();
    let merge_all_s = t.elapsed().as_secs_f64();
    let one = query.refresh().await.unwrap();
    let recall_one = recall(&one, &queries, &truth);
    let (p50_one, p99_one) = latency(&one, &queries);
    let row = json!({
        "items": items, "dims": dims, "batch": BATCH, "fanout": FANOUT, "every": every,
        "stream_s": stream_s, "commit_s": commit_s, "compact_s": compact_s,
        "maintenance_runs": runs, "compactions": compactions,
        "longest_run_s": longest_run_s,
        "write_amplification": merged_items as f64 / items as f64,
        "segments_mean": seg_sum as f64 / commits as f64, "segments_max": seg_max,
        "segments_end": snap.segment_count(),
        "recall_at_10_end": recall_policy, "p50_ms_end": p50_policy, "p99_ms_end": p99_policy,
        "merge_all_s": merge_all_s, "merge_all_compactions": all_run.compactions.len(),
        "recall_at_10_one_segment": recall_one, "p50_ms_one_segment": p50_one,
        "p99_ms_one_segment": p99_one,
        "bytes_per_item_one_segment": one.manifest.total_bytes() as f64 / items as f64,
        "peak_rss_mib": peak_rss_mib(),
        "checkpoints": points,
    });
    println!("{}", serde_json::to_string_pretty(&row).unwrap());
    row
}

fn table(rows: &[Value]) -> String {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut md = String::from(
        "| items | compaction every | segments mean / max / end | p50 / p99 ms at the end | recall@10 | commit s | compaction s (longest run) | write amplification | one segment: merge s, p50 ms, recall | peak MiB |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} commits | {:.1} / {} / {} | {:.2} / {:.2} | {:.3} | {:.0} | {:.0} ({:.1}) | {:.1} | {:.0}, {:.2}, {:.3} | {:.0} |\n",
            r["items"], r["every"], f(r, "segments_mean"), r["segments_max"], r["segments_end"],
            f(r, "p50_ms_end"), f(r, "p99_ms_end"), f(r, "recall_at_10_end"), f(r, "commit_s"),
            f(r, "compact_s"), f(r, "longest_run_s"), f(r, "write_amplification"),
            f(r, "merge_all_s"), f(r, "p50_ms_one_segment"), f(r, "recall_at_10_one_segment"),
            f(r, "peak_rss_mib"),
        );
    }
    md += "\nSegments and p50 over the stream (checkpoints every tenth):\n\n| items | compaction every | segments | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |\n";
    for r in rows {
        for p in r["checkpoints"].as_array().unwrap() {
            md += &format!(
                "| {} | {} | {} | {:.2} | {:.2} |\n",
                p["items"],
                r["every"],
                p["segments"],
                f(p, "p50_ms"),
                f(p, "p99_ms")
            );
        }
    }
    md
}

#[tokio::main]
async fn main() {
    let Some((_, model_dir)) = dataset_and_model() else {
        return;
    };
    let e = embed("lite0", &model_dir);
    let mut rows = Vec::new();
    for (items, every) in runs() {
        rows.push(stream(&e.vectors, &e.model, items, every).await);
    }
    let md = format!(
        "A stream of items committed {BATCH} at a time, with a compaction run (tiered, fan-out {FANOUT}, then gc) after every \
         `every` commits, on {} cores, local folder store; real-derived Lite0 vectors (1280-d, a clothing-small embedding plus noise) \
         through the core API, so encoding is not included. `every` = 1 is a compactor that keeps up with ingest; 30 is a \
         once-a-minute schedule with a commit every 2 s. Query p50/p99: one thread, k = 10, 100 queries, default search \
         parameters.\n\n{}",
        testkit::bench::cores(),
        table(&rows)
    );
    publish(
        "compaction",
        "Compaction in the deployment (simulated stream)",
        "cargo bench --bench compaction",
        &rows,
        &md,
    );
}
