//! Index benchmarks (issue: core engine). Prints figures, writes `target/bench/index.json` and the
//! index section of BENCHMARKS.md. Run: `cargo bench --bench index` (release build).
//!
//! 1. Retrieval quality on ../shared/datasets/clothing-small: leave-one-out precision@10 by
//!    category with exact cosine search vs through the index (3 segments, merged search).
//! 2. Recall@10 of the merged multi-segment search against exact search at 10k and 100k items
//!    (real embeddings + Gaussian noise), for several search_k factors; latency p50/p99; bytes/item.
//! 3. `lookalike index` on clothing-small: images/s and peak memory (/usr/bin/time).

use std::path::Path;
use std::time::Instant;

use lookalike::model::encoder::Encoder;
use lookalike::preprocess::Limits;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use testkit::bench::{
    build_index, dataset_images, dot, percentile, publish, record, synth_between, DATASET, MODEL,
};

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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut report = serde_json::Map::new();
    let mut md = String::new();
    if !Path::new(DATASET).is_dir() || !Path::new(MODEL).join("encoder.onnx").exists() {
        println!(
            "SKIPPED: needs {DATASET} and an imported model in {MODEL} (run scripts/demo.sh first)"
        );
        return;
    }
    let n_images = dataset_images().len();
    // 3. The CLI on clothing-small: throughput and peak memory of the child process.
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
    md += &format!(
        "\n`lookalike index ../shared/datasets/clothing-small` (release, {} cores, model load included): \
         {secs:.1} s for {} images = **{rate:.1} images/s**, peak RSS **{:.0} MiB**.\n",
        testkit::bench::cores(),
        n_images,
        peak_kib / 1024.0
    );

    let encoder = Encoder::load(Path::new(MODEL)).unwrap();
    let model = encoder.model_ref();
    let images = dataset_images();
    let t = Instant::now();
    let vectors: Vec<Vec<f32>> = images
        .par_iter()
        .map(|(_, p)| {
            encoder
                .encode_image(&std::fs::read(p).unwrap(), &Limits::default())
                .unwrap()
        })
        .collect();
    println!(
        "encoded {} images in {:.1} s",
        vectors.len(),
        t.elapsed().as_secs_f64()
    );
    let cats: Vec<String> = images
        .iter()
        .map(|(k, _)| lookalike::catalog::category_of(k).to_string())
        .collect();

    // 1. Leave-one-out precision@10: exact vs through the index.
    let exact_p10: f64 = (0..vectors.len())
        .map(|i| {
            let top = exact_topk(&vectors, &vectors[i], 10, Some(i));
            top.iter().filter(|&&j| cats[j] == cats[i]).count() as f64 / 10.0
        })
        .sum::<f64>()
        / vectors.len() as f64;
    let items: Vec<_> = images
        .iter()
        .zip(&vectors)
        .map(|((k, _), v)| (record(k), v.clone()))
        .collect();
    let (index, _dir) = build_index(&model, items, 3).await;
    let snap = index.snapshot();
    let index_p10: f64 = images
        .iter()
        .enumerate()
        .map(|(i, (key, _))| {
            let r = lookalike::query::by_key(&snap, key, 10, None).unwrap();
            r.results.iter().filter(|h| h.category == cats[i]).count() as f64 / 10.0
        })
        .sum::<f64>()
        / images.len() as f64;
    println!("clothing-small leave-one-out P@10: exact {exact_p10:.3}, through the index (3 segments) {index_p10:.3}");
    report.insert("clothing_p10_exact".into(), exact_p10.into());
    report.insert("clothing_p10_index".into(), index_p10.into());
    md += &format!(
        "Leave-one-out precision@10 by category on clothing-small ({} photos, {}-d EfficientNet-Lite0 embeddings):\n\n\
         | search | P@10 |\n| --- | --- |\n| exact cosine | {exact_p10:.3} |\n| through the index (3 segments, merged) | {index_p10:.3} |\n\n",
        images.len(),
        model.dims
    );
    drop(snap);
    drop(index);

    // 2. Recall@10 at scale.
    md += "Recall@10 of the merged multi-segment search against exact cosine search. Items are points between \
           two random real embeddings of clothing-small plus Gaussian noise (σ = 0.01 per dimension), \
           renormalised; queries are drawn the same way. 200 queries, one thread each, k = 10.\n\n\
           | items | segments | search_k factor | recall@10 | p50 ms | p99 ms | bytes/item | build s |\n\
           | --- | --- | --- | --- | --- | --- | --- | --- |\n";
    let mut scale = Vec::new();
    for (n, segments) in [(10_000usize, 4usize), (100_000, 5)] {
        let mut rng = StdRng::seed_from_u64(n as u64);
        let synth = |rng: &mut StdRng| synth_between(&vectors, rng);
        let base: Vec<Vec<f32>> = (0..n).map(|_| synth(&mut rng)).collect();
        let queries: Vec<Vec<f32>> = (0..200).map(|_| synth(&mut rng)).collect();
        let truth: Vec<Vec<usize>> = queries
            .par_iter()
            .map(|q| exact_topk(&base, q, 10, None))
            .collect();
        let items: Vec<_> = base
            .iter()
            .enumerate()
            .map(|(i, v)| (record(&format!("c/{i}.jpg")), v.clone()))
            .collect();
        let t = Instant::now();
        let (index, _dir) = build_index(&model, items, segments).await;
        let build_s = t.elapsed().as_secs_f64();
        drop(base);
        let snap = index.snapshot();
        let bytes_per_item = snap.manifest.total_bytes() as f64 / n as f64;
        for factor in [5usize, 15, 40] {
            let mut lat = Vec::new();
            let mut hits = 0usize;
            for (q, t_ids) in queries.iter().zip(&truth) {
                let t = Instant::now();
                let res = snap.search_with(q, 10, None, None, factor).unwrap();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                let want: std::collections::HashSet<String> =
                    t_ids.iter().map(|i| format!("c/{i}.jpg")).collect();
                hits += res.iter().filter(|h| want.contains(&h.record.key)).count();
            }
            lat.sort_by(f64::total_cmp);
            let recall = hits as f64 / (10.0 * queries.len() as f64);
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            println!(
                "{n} items / {segments} segments, search_k factor {factor}: recall@10 {recall:.3}, p50 {p50:.2} ms, p99 {p99:.2} ms, {bytes_per_item:.0} bytes/item, build {build_s:.1} s"
            );
            md += &format!("| {n} | {segments} | {factor} | {recall:.3} | {p50:.2} | {p99:.2} | {bytes_per_item:.0} | {build_s:.1} |\n");
            scale.push(serde_json::json!({"items": n, "segments": segments, "search_k_factor": factor,
                "recall_at_10": recall, "p50_ms": p50, "p99_ms": p99, "bytes_per_item": bytes_per_item, "build_s": build_s}));
        }
    }
    report.insert("scale".into(), scale.into());

    publish("index", "Index", "cargo bench --bench index", &report, &md);
}
