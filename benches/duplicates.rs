//! The near-duplicate threshold, measured. Prints figures, writes `target/bench/duplicates.json`
//! and the duplicates section of BENCHMARKS.md. Run: `cargo bench --bench duplicates`.
//!
//! Every sixth photo of ../shared/datasets/clothing-small (100 of 600) gets four near-duplicates
//! (`testkit::variants`: re-encoded at JPEG quality 40, halved, cropped 6% a side, mirrored);
//! all 1,000 images are encoded with the default model and indexed. `lookalike duplicates`'
//! search (`duplicates::groups`, 20 neighbours) then runs at several thresholds. A true pair is
//! two images of one photo (10 per family of five); a false pair joins two different photos.
//! clothing-small has no exact duplicates among its 600, so every pair of two originals is false.
//! Then the time of `duplicates::groups` over a 100k-item index (Lite0 embeddings plus noise).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use lookalike::duplicates;
use lookalike::model::encoder::Encoder;
use lookalike::preprocess::Limits;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;
use serde_json::{json, Value};
use testkit::bench::{build_index, dataset_images, embed, publish, record, synth_noisy, MODEL};

const THRESHOLDS: [f32; 9] = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98];

fn main() {
    if testkit::bench::dataset_and_model().is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let encoder = Encoder::load(Path::new(MODEL)).unwrap();
    // (key, origin photo, image bytes)
    let mut images: Vec<(String, usize, Vec<u8>)> = Vec::new();
    for (i, (key, path)) in dataset_images().into_iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        if i % 6 == 0 {
            for (kind, v) in testkit::variants::variants(&bytes) {
                images.push((format!("{kind}/{key}"), i, v));
            }
        }
        images.push((format!("original/{key}"), i, bytes));
    }
    let t = Instant::now();
    let vectors: Vec<Vec<f32>> = images
        .par_iter()
        .map(|(_, _, b)| encoder.encode_image(b, &Limits::default()).unwrap())
        .collect();
    println!(
        "encoded {} images in {:.1} s",
        images.len(),
        t.elapsed().as_secs_f64()
    );
    let origin: HashMap<String, usize> = images.iter().map(|(k, o, _)| (k.clone(), *o)).collect();
    let mut family: HashMap<usize, usize> = HashMap::new();
    for (_, o, _) in &images {
        *family.entry(*o).or_default() += 1;
    }
    let true_pairs: usize = family.values().map(|&n| n * (n - 1) / 2).sum();
    let mut rows: Vec<Value> = Vec::new();
    let families = family.values().filter(|&&n| n > 1).count();
    // Each kind of variant against its photo, on the full-precision vectors.
    let originals: HashMap<usize, usize> = images
        .iter()
        .enumerate()
        .filter(|(_, (k, _, _))| k.starts_with("original/"))
        .map(|(i, (_, o, _))| (*o, i))
        .collect();
    let mut kinds_md = String::from(
        "
Each kind of variant against its photo (exact cosine of the two embeddings):

| variant | min | median | share ≥ 0.90 | share ≥ 0.92 | share ≥ 0.95 |
| --- | --- | --- | --- | --- | --- |
",
    );
    for kind in testkit::variants::KINDS {
        let mut scores: Vec<f32> = images
            .iter()
            .enumerate()
            .filter(|(_, (k, _, _))| k.starts_with(&format!("{kind}/")))
            .map(|(i, (_, o, _))| testkit::bench::dot(&vectors[i], &vectors[originals[o]]))
            .collect();
        scores.sort_by(f32::total_cmp);
        let share =
            |t: f32| scores.iter().filter(|&&s| s >= t).count() as f64 / scores.len() as f64;
        println!(
            "{kind}: min {:.3}, median {:.3}, ≥0.90 {:.2}, ≥0.92 {:.2}, ≥0.95 {:.2}",
            scores[0],
            scores[scores.len() / 2],
            share(0.90),
            share(0.92),
            share(0.95)
        );
        kinds_md += &format!(
            "| {kind} | {:.3} | {:.3} | {:.0}% | {:.0}% | {:.0}% |\n",
            scores[0],
            scores[scores.len() / 2],
            100.0 * share(0.90),
            100.0 * share(0.92),
            100.0 * share(0.95)
        );
        rows.push(
            json!({"variant": kind, "min": scores[0], "median": scores[scores.len() / 2],
            "share_090": share(0.90), "share_092": share(0.92), "share_095": share(0.95)}),
        );
    }
    let items = images
        .iter()
        .zip(vectors)
        .map(|((k, _, _), v)| (record(k), v))
        .collect();
    let (index, _dir) = rt.block_on(build_index(&encoder.model_ref(), items, 1));
    let snap = index.snapshot();
    let mut md = format!(
        "clothing-small, {} images: 600 photos, and 4 near-duplicates of each of {families} of them \
         (re-encoded at JPEG quality 40, halved, cropped 6% a side, mirrored), default model ({}), one \
         segment, 20 neighbours per image. {true_pairs} true pairs (two images of one photo); a false pair \
         joins two different photos.\n\n\
         | min_score | true pairs found | families found whole | false pairs | groups with two photos |\n\
         | --- | --- | --- | --- | --- |\n",
        images.len(),
        encoder.model_id()
    );
    for t in THRESHOLDS {
        let report = duplicates::groups(&snap, t, 20, &|| {}).unwrap();
        let (mut found, mut false_pairs) = (0usize, 0usize);
        for g in &report.groups {
            for p in &g.pairs {
                if origin[&p.a] == origin[&p.b] {
                    found += 1;
                } else {
                    false_pairs += 1;
                }
            }
        }
        // Pairs found: the true pairs that are in one group (joined directly or through others).
        let mut in_group = 0usize;
        let mut whole = 0usize;
        let mut mixed = 0usize;
        for g in &report.groups {
            let mut count: HashMap<usize, usize> = HashMap::new();
            for k in &g.keys {
                *count.entry(origin[k]).or_default() += 1;
            }
            if count.len() > 1 {
                mixed += 1;
            }
            for (o, n) in &count {
                in_group += n * (n - 1) / 2;
                if *n == family[o] && family[o] > 1 {
                    whole += 1;
                }
            }
        }
        println!(
            "min_score {t:.2}: {in_group}/{true_pairs} true pairs grouped ({found} directly), {whole}/{families} families whole, {false_pairs} false pairs, {mixed} groups with two photos"
        );
        md += &format!(
            "| {t:.2} | {in_group} of {true_pairs} ({:.1}%) | {whole} of {families} | {false_pairs} | {mixed} |\n",
            100.0 * in_group as f64 / true_pairs as f64
        );
        rows.push(json!({
            "min_score": t, "true_pairs": true_pairs, "true_pairs_grouped": in_group,
            "true_pairs_direct": found, "families": families, "families_whole": whole,
            "false_pairs": false_pairs, "mixed_groups": mixed,
        }));
    }
    md += &kinds_md;
    // The whole-index run at 100k (Lite0 embeddings plus noise: about 170 items per photo, whose
    // pairs score about 0.88, so a threshold of 0.85 joins them into large groups).
    let n: usize = std::env::var("LOOKALIKE_BENCH_DUPLICATES_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    if n > 0 {
        let e = embed("lite0", Path::new(MODEL));
        let mut rng = StdRng::seed_from_u64(7);
        let items = (0..n)
            .map(|i| {
                (
                    record(&format!("c/{i}.jpg")),
                    synth_noisy(&e.vectors, &mut rng, 0.01),
                )
            })
            .collect();
        let (index, _dir) = rt.block_on(build_index(&e.model, items, 1));
        let t = Instant::now();
        let report = duplicates::groups(&index.snapshot(), 0.85, 20, &|| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{n} items: {} groups, {} items grouped, {secs:.1} s on {} cores",
            report.groups.len(),
            report.grouped_items,
            testkit::bench::cores()
        );
        md += &format!(
            "\n`duplicates::groups` (what `lookalike duplicates` runs) over {n} items in one segment (Lite0 \
             embeddings plus noise: items drawn from one photo score about 0.88), min_score 0.85, 20 neighbours: {secs:.1} s on {} \
             cores, {} groups holding {} items.\n",
            testkit::bench::cores(),
            report.groups.len(),
            report.grouped_items
        );
        rows.push(json!({"items": n, "seconds": secs, "groups": report.groups.len()}));
    }
    publish(
        "duplicates",
        "Near-duplicates",
        "cargo bench --bench duplicates",
        &rows,
        &md,
    );
}
