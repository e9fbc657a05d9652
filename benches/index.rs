//! Index benchmarks. Prints figures, writes `target/bench/index.json` and the index section of
//! BENCHMARKS.md. Run: `cargo bench --bench index` (release build).
//!
//! 1. Retrieval quality on ../shared/datasets/clothing-small: leave-one-out precision@10 by
//!    category with exact cosine search vs through the index (3 segments, merged search), for
//!    the default model and the 256-d fine-tuned one (trained into target/bench/fine-tuned by
//!    `lookalike train` when missing).
//! 2. At scale, for both models and two distributions of real-derived embeddings (each item a
//!    real embedding plus noise; each a point between two real embeddings plus noise), in the
//!    same run on the same vectors and queries: lookalike (1, 5 and 20 segments, several re-rank
//!    budgets), and Annoy, hnswlib, hannoy (Meilisearch's HNSW on LMDB, through its Python
//!    binding) and an exact numpy scan through `benches/index_peers.py` in
//!    `.venv` (`.venv/bin/pip install -r requirements-bench.txt`). Recall@10 against exact
//!    search on the full-precision vectors, p50/p99 on one thread, bytes per item, build time.
//! 3. `lookalike index` on clothing-small: images/s and peak memory (/usr/bin/time).
//!
//! Environment: `LOOKALIKE_BENCH_SIZES` (default `10000,100000`; add `1000000` for the 1M run,
//! which skips the peers unless `LOOKALIKE_BENCH_PEERS_UP_TO` is raised from 100000), `LOOKALIKE_BENCH_SEGMENTS` (default `1,5,10,20`),
//! `LOOKALIKE_BENCH_PEERS` (default `exact,annoy,hnswlib,hannoy`; empty for none),
//! `LOOKALIKE_BENCH_PARTS` (default `cli,quality,scale`), `LOOKALIKE_BENCH_MODELS` (default
//! `lite0,fine-tuned`), `LOOKALIKE_BENCH_DISTRIBUTIONS` (default `noisy,between`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use lookalike::index::segment::{ItemRecord, SearchParams};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde_json::{json, Value};
use testkit::bench::{
    build_index, dataset_images, dot, embed, percentile, publish, record, repo_root,
    synth_between_with, synth_noisy, Embeddings, DATASET, MODEL,
};

const QUERIES: usize = 200;
/// (rerank, nprobe) settings measured; nprobe matters only in segments with inverted lists.
const SETTINGS: [(usize, usize); 5] = [(100, 16), (200, 8), (200, 16), (400, 16), (400, 48)];

/// Exact top-k by cosine (vectors are unit norm), excluding `skip`.
fn exact_topk(base: &[Vec<f32>], q: &[f32], k: usize, skip: Option<usize>) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = base
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(i, v)| (dot(v, q), i))
        .collect();
    scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(k);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The fine-tuned 256-d model, trained with `lookalike train`'s defaults when missing.
fn fine_tuned_model() -> Option<PathBuf> {
    let out = repo_root().join("target/bench/fine-tuned");
    if out.join("encoder.onnx").exists() {
        return Some(out);
    }
    println!("training the 256-d fine-tuned model into {}", out.display());
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .arg("train")
        .arg(repo_root().join(DATASET))
        .arg("--out")
        .arg(&out)
        .arg("--model")
        .arg(repo_root().join(MODEL))
        .status()
        .ok()?;
    status.success().then_some(out)
}

/// Leave-one-out P@10 by category: exact, and through a 3-segment index.
async fn quality(e: &Embeddings) -> (f64, f64) {
    let cats: Vec<&str> = e
        .keys
        .iter()
        .map(|k| lookalike::catalog::category_of(k))
        .collect();
    let n = e.vectors.len() as f64;
    let exact: f64 = (0..e.vectors.len())
        .map(|i| {
            let top = exact_topk(&e.vectors, &e.vectors[i], 10, Some(i));
            top.iter().filter(|&&j| cats[j] == cats[i]).count() as f64 / 10.0
        })
        .sum::<f64>()
        / n;
    let items: Vec<_> = e
        .keys
        .iter()
        .zip(&e.vectors)
        .map(|(k, v)| (record(k), v.clone()))
        .collect();
    let (index, _dir) = build_index(&e.model, items, 3).await;
    let snap = index.snapshot();
    let through: f64 = e
        .keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let r = lookalike::query::by_key(&snap, key, &lookalike::query::SearchOptions::top(10))
                .unwrap();
            r.results.iter().filter(|h| h.category == cats[i]).count() as f64 / 10.0
        })
        .sum::<f64>()
        / n;
    (exact, through)
}

/// The synthetic set of one (model, distribution, size).
struct Case<'a> {
    e: &'a Embeddings,
    distribution: &'static str,
    items: usize,
    base: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    truth: Vec<Vec<usize>>,
}

fn make_case<'a>(e: &'a Embeddings, distribution: &'static str, items: usize) -> Case<'a> {
    // Noise of the same total size at every dimension (σ = 0.01 per dimension at 1280-d).
    let sigma = 0.01 * (1280.0 / e.model.dims as f32).sqrt();
    let mut rng = StdRng::seed_from_u64(items as u64 ^ e.model.dims as u64);
    let synth = |rng: &mut StdRng| match distribution {
        "noisy" => synth_noisy(&e.vectors, rng, sigma),
        _ => synth_between_with(&e.vectors, rng, sigma),
    };
    let base: Vec<Vec<f32>> = (0..items).map(|_| synth(&mut rng)).collect();
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| synth(&mut rng)).collect();
    let t = Instant::now();
    let truth: Vec<Vec<usize>> = queries
        .par_iter()
        .map(|q| exact_topk(&base, q, 10, None))
        .collect();
    println!(
        "{} {distribution} {items}: exact truth in {:.1} s",
        e.label,
        t.elapsed().as_secs_f64()
    );
    Case {
        e,
        distribution,
        items,
        base,
        queries,
        truth,
    }
}

fn base_row(c: &Case, engine: &str) -> serde_json::Map<String, Value> {
    let mut r = serde_json::Map::new();
    r.insert("engine".into(), engine.into());
    r.insert("model".into(), c.e.label.into());
    r.insert("distribution".into(), c.distribution.into());
    r.insert("items".into(), c.items.into());
    r.insert("dims".into(), c.e.model.dims.into());
    r
}

async fn measure_lookalike(c: &Case<'_>, segments: usize) -> Vec<Value> {
    let items: Vec<(ItemRecord, Vec<f32>)> = c
        .base
        .iter()
        .enumerate()
        .map(|(i, v)| (record(&format!("c/{i}.jpg")), v.clone()))
        .collect();
    let t = Instant::now();
    let (index, _dir) = build_index(&c.e.model, items, segments).await;
    let build_s = t.elapsed().as_secs_f64();
    let snap = index.snapshot();
    let bytes_per_item = snap.manifest.total_bytes() as f64 / c.items as f64;
    let mut rows = Vec::new();
    for (rerank, nprobe) in SETTINGS {
        let params = SearchParams {
            rerank,
            nprobe,
            ..SearchParams::default()
        };
        // One pass to fault the memory map in, then the measured pass.
        for q in c.queries.iter().take(20) {
            snap.search_with(q, 10, None, None, &params).unwrap();
        }
        let mut lat = Vec::new();
        let mut hits = 0usize;
        for (q, want) in c.queries.iter().zip(&c.truth) {
            let t = Instant::now();
            let res = snap.search_with(q, 10, None, None, &params).unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            let want: HashSet<String> = want.iter().map(|i| format!("c/{i}.jpg")).collect();
            hits += res.iter().filter(|h| want.contains(&h.record.key)).count();
        }
        lat.sort_by(f64::total_cmp);
        let recall = hits as f64 / (10.0 * c.queries.len() as f64);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        println!(
            "lookalike {} {} {} / {segments} segments, rerank {rerank}, nprobe {nprobe}: recall@10 {recall:.3}, p50 {p50:.3} ms, p99 {p99:.3} ms, {bytes_per_item:.0} B/item, build {build_s:.1} s",
            c.e.label, c.distribution, c.items
        );
        let mut r = base_row(c, "lookalike");
        r.insert("segments".into(), segments.into());
        r.insert(
            "params".into(),
            format!("rerank {rerank}, nprobe {nprobe}").into(),
        );
        r.insert("recall_at_10".into(), recall.into());
        r.insert("p50_ms".into(), p50.into());
        r.insert("p99_ms".into(), p99.into());
        r.insert("bytes_per_item".into(), bytes_per_item.into());
        r.insert("build_s".into(), build_s.into());
        rows.push(Value::Object(r));
    }
    rows
}

/// Annoy, hnswlib and numpy on the same vectors, queries and truth (`benches/index_peers.py`).
fn measure_peers(c: &Case, peers: &[String]) -> Vec<Value> {
    let python = repo_root().join(".venv/bin/python");
    if peers.is_empty() || !python.exists() {
        println!("peers SKIPPED: no .venv (run scripts/bootstrap-venv.sh) or LOOKALIKE_BENCH_PEERS empty");
        return Vec::new();
    }
    let dir = tempfile::tempdir().unwrap();
    let flat = |vs: &[Vec<f32>]| -> Vec<u8> {
        vs.iter()
            .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
            .collect()
    };
    std::fs::write(dir.path().join("base.f32"), flat(&c.base)).unwrap();
    std::fs::write(dir.path().join("queries.f32"), flat(&c.queries)).unwrap();
    std::fs::write(
        dir.path().join("truth.json"),
        serde_json::to_vec(&c.truth).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("meta.json"),
        json!({"dims": c.e.model.dims}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("benches/index_peers.py"))
        .arg(dir.path())
        .arg(peers.join(","))
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    if !out.status.success() {
        println!(
            "peers FAILED ({}): is requirements-bench.txt installed in .venv?",
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Map<String, Value>>(l).ok())
        .map(|peer| {
            let mut r = base_row(c, peer["engine"].as_str().unwrap_or("?"));
            r.insert("segments".into(), 1.into());
            for (k, v) in peer {
                r.insert(k, v);
            }
            println!(
                "{} {} {} {}: recall@10 {:.3}, p50 {:.3} ms, p99 {:.3} ms, {:.0} B/item, build {:.1} s",
                r["engine"].as_str().unwrap_or("?"),
                c.e.label,
                c.distribution,
                r["params"].as_str().unwrap_or(""),
                r["recall_at_10"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["bytes_per_item"].as_f64().unwrap_or(0.0),
                r["build_s"].as_f64().unwrap_or(0.0),
            );
            Value::Object(r)
        })
        .collect()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// The markdown table of one case, with each lookalike row's ratio to the fastest peer setting
/// (Annoy or hnswlib) of equal or better recall.
fn case_table(rows: &[Value]) -> String {
    let mut md = String::from(
        "| engine | segments | params | recall@10 | p50 ms | p99 ms | bytes/item | build s | p50 / fastest peer at ≥ recall |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let peers: Vec<&Value> = rows
        .iter()
        .filter(|r| matches!(r["engine"].as_str(), Some("annoy" | "hnswlib")))
        .collect();
    for r in rows {
        let ratio = if r["engine"] == "lookalike" {
            peers
                .iter()
                .filter(|p| f(p, "recall_at_10") >= f(r, "recall_at_10"))
                .map(|p| (f(p, "p50_ms"), *p))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(p50, p)| {
                    format!(
                        "{:.2}x ({} {})",
                        f(r, "p50_ms") / p50,
                        p["engine"].as_str().unwrap_or(""),
                        p["params"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| {
                    if peers.is_empty() {
                        "no peers measured".into()
                    } else {
                        "no peer setting reached this recall".into()
                    }
                })
        } else {
            String::new()
        };
        md += &format!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} | {} |\n",
            r["engine"].as_str().unwrap_or(""),
            r["segments"],
            r["params"].as_str().unwrap_or(""),
            f(r, "recall_at_10"),
            f(r, "p50_ms"),
            f(r, "p99_ms"),
            f(r, "bytes_per_item"),
            f(r, "build_s"),
            ratio
        );
    }
    md
}

fn cli_throughput(md: &mut String, report: &mut serde_json::Map<String, Value>) {
    let n_images = dataset_images().len();
    // Peak memory from /usr/bin/time: a forked child's own rusage would include the pages it
    // shared with this process before exec.
    let dir = tempfile::tempdir().unwrap();
    let time_out = dir.path().join("time.txt");
    let t = Instant::now();
    let status = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&time_out)
        .arg(env!("CARGO_BIN_EXE_lookalike"))
        .args(["index", DATASET, "--index"])
        .arg(dir.path().join("index"))
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .args(["--model", MODEL])
        .status()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(status.success());
    let peak_kib: f64 = std::fs::read_to_string(&time_out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let rate = n_images as f64 / secs;
    println!(
        "lookalike index clothing-small: {secs:.1} s, {rate:.1} images/s, peak RSS {:.0} MiB",
        peak_kib / 1024.0
    );
    report.insert("cli_index_images_per_s".into(), rate.into());
    report.insert("cli_index_peak_rss_mib".into(), (peak_kib / 1024.0).into());
    *md += &format!(
        "\n`lookalike index ../shared/datasets/clothing-small` (release, {} cores, model load included): \
         {secs:.1} s for {n_images} images = **{rate:.1} images/s**, peak RSS **{:.0} MiB**.\n\n",
        testkit::bench::cores(),
        peak_kib / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut report = serde_json::Map::new();
    let mut md = String::new();
    if testkit::bench::dataset_and_model().is_none() {
        return;
    }
    let parts = env_list("LOOKALIKE_BENCH_PARTS", "cli,quality,scale");
    if parts.iter().any(|p| p == "cli") {
        cli_throughput(&mut md, &mut report);
    }

    let wanted = env_list("LOOKALIKE_BENCH_MODELS", "lite0,fine-tuned");
    let mut models = Vec::new();
    if wanted.iter().any(|m| m == "lite0") {
        models.push(embed("lite0", Path::new(MODEL)));
    }
    if wanted.iter().any(|m| m == "fine-tuned") {
        match fine_tuned_model() {
            Some(dir) => models.push(embed("fine-tuned", &dir)),
            None => println!("fine-tuned model SKIPPED: `lookalike train` failed"),
        }
    }

    if parts.iter().any(|p| p == "quality") {
        md += "Leave-one-out precision@10 by category on clothing-small (600 photos):\n\n\
               | model | dims | exact cosine | through the index (3 segments) |\n| --- | --- | --- | --- |\n";
        for e in &models {
            let (exact, through) = quality(e).await;
            println!(
                "{} clothing-small leave-one-out P@10: exact {exact:.3}, through the index {through:.3}",
                e.label
            );
            report.insert(format!("clothing_p10_exact_{}", e.label), exact.into());
            report.insert(format!("clothing_p10_index_{}", e.label), through.into());
            md += &format!(
                "| {} | {} | {exact:.3} | {through:.3} |\n",
                e.label, e.model.dims
            );
        }
        md += "\n";
    }

    let mut all_rows: Vec<Value> = Vec::new();
    if parts.iter().any(|p| p == "scale") {
        let sizes: Vec<usize> = env_list("LOOKALIKE_BENCH_SIZES", "10000,100000")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let segments: Vec<usize> = env_list("LOOKALIKE_BENCH_SEGMENTS", "1,5,10,20")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let peers_up_to: usize = std::env::var("LOOKALIKE_BENCH_PEERS_UP_TO")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let distributions = env_list("LOOKALIKE_BENCH_DISTRIBUTIONS", "noisy,between");
        let peers = env_list("LOOKALIKE_BENCH_PEERS", "exact,annoy,hnswlib,hannoy");
        let mut rows = Vec::new();
        md += &format!(
            "Recall@10 against exact cosine search on the full-precision vectors, {QUERIES} queries drawn like the items, \
             k = 10, one query thread, on {} cores. Two distributions of real-derived embeddings: `noisy` (a real \
             clothing-small embedding plus Gaussian noise) and `between` (a point between two real embeddings plus \
             noise); the noise is σ = 0.01 per dimension at 1280-d (scaled to the same total at 256-d). lookalike's \
             `rerank` is the number of candidates per segment scored on the 8-bit codes (the best 40 of all \
             segments are scored again with their 2-bit refinements); `nprobe` the inverted lists scanned in \
             segments of 4,096 items or more. Peers run in the same \
             benchmark run on the same vectors and queries (Annoy, hnswlib and hannoy through their Python packages, \
             one query thread; numpy's exact scan with one BLAS thread).\n\n",
            testkit::bench::cores()
        );
        for e in &models {
            for distribution in ["noisy", "between"] {
                if !distributions.iter().any(|d| d == distribution) {
                    continue;
                }
                for &n in &sizes {
                    let case = make_case(e, distribution, n);
                    let mut case_rows = Vec::new();
                    for &s in &segments {
                        case_rows.extend(measure_lookalike(&case, s).await);
                    }
                    if n <= peers_up_to {
                        case_rows.extend(measure_peers(&case, &peers));
                    }
                    md += &format!(
                        "**{} ({}-d), {distribution}, {n} items**\n\n{}\n",
                        e.label,
                        e.model.dims,
                        case_table(&case_rows)
                    );
                    rows.extend(case_rows);
                }
            }
        }
        all_rows = rows;
    }

    // index.json is the list of rows the issue asks for; the other figures go beside it.
    let extra = repo_root().join("target/bench/index-quality.json");
    std::fs::create_dir_all(extra.parent().unwrap()).unwrap();
    std::fs::write(&extra, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    publish(
        "index",
        "Index",
        "cargo bench --bench index",
        &all_rows,
        &md,
    );
}
