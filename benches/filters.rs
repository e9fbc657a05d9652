//! Filtered and paged search. Prints figures, writes `target/bench/filters.json` and the
//! filters section of BENCHMARKS.md. Run: `cargo bench --bench filters` (release build).
//!
//! Items are Lite0 embeddings of ../shared/datasets/clothing-small plus noise (the index
//! benchmark's `noisy` set), each with metadata that filters can keep 50%, 5% or 0.1% of, by
//! equality, a set and a numeric range; the metadata is independent of the vectors. Recall@10
//! is against the exact top 10 of the items the filter keeps (full-precision vectors). Paged
//! searches (`offset`) are timed beside the unpaged one.
//!
//! Environment: `LOOKALIKE_BENCH_SIZES` (default `100000`), `LOOKALIKE_BENCH_SEGMENTS`
//! (default `1,10`).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use lookalike::index::filter::text;
use lookalike::index::segment::ItemRecord;
use lookalike::index::{Filter, Page, Scope};
use lookalike::query::MAX_DEPTH;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use serde_json::{json, Value};
use testkit::bench::{build_index, dot, embed, percentile, publish, record, synth_noisy, MODEL};

const QUERIES: usize = 200;

/// (label, compact filter); the share each keeps is measured (named for 100k items).
const FILTERS: [(&str, &str); 7] = [
    ("none", ""),
    ("50%, equality", "half=yes"),
    ("5%, set of 5 values", "tag=t0|t1|t2|t3|t4"),
    ("5%, range", "rank<5000"),
    ("0.1%, equality", "shelf=s7"),
    ("0.1%, equality and range", "tag=t98,rank<10000"),
    ("0.1%, range", "rank>=1000,rank<1100"),
];

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The item's metadata: `rank` is a random permutation of 0..n (so ranges over it keep a
/// share of the items, not a region of the vectors), `tag` one of 100 values, `shelf` one of
/// 1,000, `half` yes/no.
fn item(i: usize, rank: usize) -> ItemRecord {
    let mut r = record(&format!("c/{i}.jpg"));
    r.metadata.insert("rank".into(), rank.to_string().into());
    r.metadata
        .insert("tag".into(), format!("t{}", (rank * 7919) % 100).into());
    r.metadata.insert(
        "half".into(),
        if rank.is_multiple_of(2) { "yes" } else { "no" }.into(),
    );
    r.metadata
        .insert("shelf".into(), format!("s{}", rank % 1000).into());
    r
}

fn main() {
    if testkit::bench::dataset_and_model().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = embed("lite0", Path::new(MODEL));
    let sigma = 0.01 * (1280.0 / e.model.dims as f32).sqrt();
    let mut rows: Vec<Value> = Vec::new();
    let mut md = format!(
        "Lite0 `noisy` items (a clothing-small embedding plus noise, 1280-d), {QUERIES} queries, k = 10, one \
         query thread, {} cores. Each item's metadata is independent of its vector. Recall@10 is against the exact \
         top 10 among the items the filter keeps. `first query` is the first filtered search on a freshly opened \
         snapshot: it builds the per-field bitmaps of the fields it tests (once per segment and field).\n\n\
         | items | segments | filter | keeps | recall@10 | p50 ms | p99 ms | first query ms |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        testkit::bench::cores()
    );
    let mut paged_md = String::from(
        "\nPaged searches (`offset`, ranked with the candidate budget of the deepest page, 500 results), \
         same queries, no filter:\n\n\
         | items | segments | search | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |\n",
    );
    for n in env_list("LOOKALIKE_BENCH_SIZES", "100000") {
        let mut rng = StdRng::seed_from_u64(n as u64 ^ 0xf11);
        let base: Vec<Vec<f32>> = (0..n)
            .map(|_| synth_noisy(&e.vectors, &mut rng, sigma))
            .collect();
        let mut ranks: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            ranks.swap(i, rng.random_range(0..=i));
        }
        let records: Vec<ItemRecord> = (0..n).map(|i| item(i, ranks[i])).collect();
        let queries: Vec<Vec<f32>> = (0..QUERIES)
            .map(|_| synth_noisy(&e.vectors, &mut rng, sigma))
            .collect();
        let filters: Vec<(&str, Option<Filter>)> = FILTERS
            .iter()
            .map(|&(label, t)| (label, (!t.is_empty()).then(|| text::parse(t).unwrap())))
            .collect();
        // The exact answer of every filter: the best 10 of the items it keeps.
        let t = Instant::now();
        let truths: Vec<(Vec<usize>, Vec<HashSet<usize>>)> = filters
            .iter()
            .map(|(_, f)| {
                let keep: Vec<usize> = (0..n)
                    .filter(|&i| {
                        f.as_ref()
                            .is_none_or(|f| f.matches(&records[i].category, &records[i].metadata))
                    })
                    .collect();
                let truth = queries
                    .par_iter()
                    .map(|q| {
                        let mut s: Vec<(f32, usize)> =
                            keep.iter().map(|&i| (dot(&base[i], q), i)).collect();
                        s.sort_by(|a, b| b.0.total_cmp(&a.0));
                        s.iter().take(10).map(|&(_, i)| i).collect()
                    })
                    .collect();
                (keep, truth)
            })
            .collect();
        println!(
            "{n} items: exact filtered truth in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        for segments in env_list("LOOKALIKE_BENCH_SEGMENTS", "1,10") {
            let items: Vec<(ItemRecord, Vec<f32>)> =
                records.iter().cloned().zip(base.iter().cloned()).collect();
            let (index, _dir) = rt.block_on(build_index(&e.model, items, segments));
            for ((label, filter), (keep, truth)) in filters.iter().zip(&truths) {
                // A fresh snapshot each time would rebuild nothing (segments keep their
                // field bitmaps), so the first query of each filter is its cold one.
                let snap = index.snapshot();
                let scope = Scope {
                    filter: filter.as_ref(),
                    ..Scope::default()
                };
                let page = Page { offset: 0, k: 10 };
                let t = Instant::now();
                snap.search_page(&queries[0], page, &scope, &snap.params)
                    .unwrap();
                let first_ms = t.elapsed().as_secs_f64() * 1e3;
                let mut lat = Vec::new();
                let mut hits = 0usize;
                let mut want_total = 0usize;
                for (q, want) in queries.iter().zip(truth) {
                    let t = Instant::now();
                    let res = snap.search_page(q, page, &scope, &snap.params).unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    let want: HashSet<String> = want.iter().map(|i| format!("c/{i}.jpg")).collect();
                    want_total += want.len();
                    hits += res.iter().filter(|h| want.contains(&h.record.key)).count();
                }
                lat.sort_by(f64::total_cmp);
                let recall = hits as f64 / want_total.max(1) as f64;
                let kept = keep.len() as f64 / n as f64;
                let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
                println!(
                    "{n} items / {segments} segments, filter {label} (keeps {:.2}%): recall@10 {recall:.3}, p50 {p50:.3} ms, p99 {p99:.3} ms, first query {first_ms:.1} ms",
                    kept * 100.0
                );
                md += &format!(
                    "| {n} | {segments} | {label} | {:.2}% | {recall:.3} | {p50:.2} | {p99:.2} | {first_ms:.1} |\n",
                    kept * 100.0
                );
                rows.push(json!({
                    "items": n, "segments": segments, "filter": label,
                    "filter_text": FILTERS.iter().find(|f| f.0 == *label).map(|f| f.1),
                    "keeps": kept, "recall_at_10": recall, "p50_ms": p50, "p99_ms": p99,
                    "first_query_ms": first_ms,
                }));
            }
            // Pages: the unpaged search, then the first and the deepest page of a paged one.
            let snap = index.snapshot();
            let mut paged = snap.params;
            paged.depth = MAX_DEPTH;
            for (label, offset, params) in [
                ("unpaged, k 10", 0, snap.params),
                ("paged, offset 0, k 10", 0, paged),
                ("paged, offset 490, k 10", MAX_DEPTH - 10, paged),
            ] {
                let page = Page { offset, k: 10 };
                let mut lat = Vec::new();
                for q in &queries {
                    let t = Instant::now();
                    snap.search_page(q, page, &Scope::default(), &params)
                        .unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat.sort_by(f64::total_cmp);
                let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
                println!(
                    "{n} items / {segments} segments, {label}: p50 {p50:.3} ms, p99 {p99:.3} ms"
                );
                paged_md += &format!("| {n} | {segments} | {label} | {p50:.2} | {p99:.2} |\n");
                rows.push(json!({
                    "items": n, "segments": segments, "search": label,
                    "p50_ms": p50, "p99_ms": p99,
                }));
            }
        }
    }
    md += &paged_md;
    publish(
        "filters",
        "Filtered and paged search",
        "cargo bench --bench filters",
        &rows,
        &md,
    );
}
