//! Helpers shared by the benchmarks of every crate: the labelled photo set, synthetic
//! embeddings, indexes, BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Instant;

use lookalike::index::segment::{BuildParams, ItemRecord};
use lookalike::index::{writer, Index};
use lookalike::model::encoder::Encoder;
use lookalike::model::ModelRef;
use lookalike::preprocess::Limits;
use lookalike::store::{DynStore, LocalStore};
use rand::rngs::StdRng;
use rand::RngExt;
use rayon::prelude::*;

/// The labelled photos (read in place, never copied into the repository).
pub const DATASET: &str = "../shared/datasets/clothing-small";
/// The imported default model.
pub const MODEL: &str = ".lookalike/model";

pub use crate::repo_root;

/// Cores of this machine (printed with the figures).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `DATASET` and `MODEL` under the repository root, or `None` (after a SKIPPED line).
pub fn dataset_and_model() -> Option<(PathBuf, PathBuf)> {
    let (data, model) = (repo_root().join(DATASET), repo_root().join(MODEL));
    if data.is_dir() && model.join("encoder.onnx").exists() {
        Some((data, model))
    } else {
        println!(
            "SKIPPED: needs {} and an imported model in {} (run scripts/demo.sh first)",
            data.display(),
            model.display()
        );
        None
    }
}

/// One model's real embeddings of clothing-small.
pub struct Embeddings {
    /// The model's name in reports (`lite0`, `fine-tuned`).
    pub label: &'static str,
    /// The model.
    pub model: ModelRef,
    /// The photos' keys (category folder / file name).
    pub keys: Vec<String>,
    /// One unit vector per photo, in the order of `keys`.
    pub vectors: Vec<Vec<f32>>,
}

/// Encode every photo of the dataset with the model in `model_dir` (on all cores).
pub fn embed(label: &'static str, model_dir: &Path) -> Embeddings {
    let encoder = Encoder::load(model_dir).unwrap();
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
        "{label}: encoded {} images in {:.1} s",
        vectors.len(),
        t.elapsed().as_secs_f64()
    );
    Embeddings {
        label,
        model: encoder.model_ref(),
        keys: images.into_iter().map(|(k, _)| k).collect(),
        vectors,
    }
}

/// The dot product of two vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v` scaled to unit length.
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = dot(&v, &v).sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// The median (of a non-empty list).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// The value at fraction `p` (0..=1) of a sorted, non-empty list.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The JPEGs of [`DATASET`] as (key relative to it, path), sorted by path.
pub fn dataset_images() -> Vec<(String, PathBuf)> {
    images_in(&repo_root().join(DATASET))
}

/// The JPEGs under `dir` as (key relative to it, path), sorted by path.
pub fn images_in(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")) {
            let key = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            out.push((key, p.to_path_buf()));
        }
    }
    out
}

/// The record of an item `key` (its category from the key's folder).
pub fn record(key: &str) -> ItemRecord {
    ItemRecord {
        key: key.to_string(),
        source: "bench".into(),
        etag: "e".into(),
        size: 0,
        category: lookalike::catalog::category_of(key).to_string(),
        metadata: Default::default(),
        sequencer: None,
    }
}

/// An index in a fresh local folder holding `items` in `segments` segments.
pub async fn build_index(
    model: &ModelRef,
    items: Vec<(ItemRecord, Vec<f32>)>,
    segments: usize,
) -> (Index, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::new(dir.path().join("store")).unwrap());
    let index = build_index_in(store, &dir.path().join("cache"), model, items, segments).await;
    (index, dir)
}

/// An index in `store` (cached in `cache`) holding `items` in `segments` segments.
pub async fn build_index_in(
    store: DynStore,
    cache: &Path,
    model: &ModelRef,
    items: Vec<(ItemRecord, Vec<f32>)>,
    segments: usize,
) -> Index {
    let index = Index::open(store, cache, Some(model.clone()))
        .await
        .unwrap();
    let per = items.len().div_ceil(segments.max(1)).max(1);
    let mut items = items;
    while !items.is_empty() {
        let rest = items.split_off(per.min(items.len()));
        writer::append(&index, model, items, &[], BuildParams::default())
            .await
            .unwrap();
        items = rest;
    }
    index.refresh().await.unwrap();
    index
}

/// A point between two random real embeddings, plus noise (σ = 0.01 per dimension),
/// renormalised: spreads synthetic items over the region real photos occupy without the ties
/// that copies of a few hundred vectors would create.
pub fn synth_between(vectors: &[Vec<f32>], rng: &mut StdRng) -> Vec<f32> {
    synth_between_with(vectors, rng, 0.01)
}

/// [`synth_between`] with noise of `sigma` per dimension.
pub fn synth_between_with(vectors: &[Vec<f32>], rng: &mut StdRng, sigma: f32) -> Vec<f32> {
    let (a, b) = (
        &vectors[rng.random_range(0..vectors.len())],
        &vectors[rng.random_range(0..vectors.len())],
    );
    let w: f32 = rng.random_range(0.0..1.0);
    unit(
        a.iter()
            .zip(b)
            .map(|(x, y)| w * x + (1.0 - w) * y + sigma * gaussian(rng))
            .collect(),
    )
}

/// A random real embedding plus noise (`sigma` per dimension), renormalised: clusters around
/// the real photos, the easier of the index benchmark's two distributions.
pub fn synth_noisy(vectors: &[Vec<f32>], rng: &mut StdRng, sigma: f32) -> Vec<f32> {
    let a = &vectors[rng.random_range(0..vectors.len())];
    unit(a.iter().map(|x| x + sigma * gaussian(rng)).collect())
}

/// A standard normal sample (Box-Muller).
pub fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// Write `report` to `target/bench/<name>.json` and `body` (after the command that reproduces it)
/// to the `name` section of BENCHMARKS.md, unless `LOOKALIKE_BENCH_NO_MD` is set.
pub fn publish(
    name: &str,
    heading: &str,
    command: &str,
    report: &impl serde::Serialize,
    body: &str,
) {
    let out = repo_root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(report).unwrap(),
    )
    .unwrap();
    if std::env::var_os("LOOKALIKE_BENCH_NO_MD").is_some() {
        println!("wrote target/bench/{name}.json (BENCHMARKS.md left alone)");
        return;
    }
    update_section(
        name,
        heading,
        &format!(
            "Command: `{command}`

{body}"
        ),
    );
    println!("wrote target/bench/{name}.json and the {name} section of BENCHMARKS.md");
}

/// Replace the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in BENCHMARKS.md.
/// A missing section is appended under `## {heading}`.
pub fn update_section(name: &str, heading: &str, body: &str) {
    let path = repo_root().join("BENCHMARKS.md");
    let path = path.as_path();
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let (begin, end) = (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    );
    let block = format!("{begin}\n{body}\n{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &text[..b], block, &text[e + end.len()..]),
        _ => format!("{}\n\n## {heading}\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new).unwrap();
}

/// Peak resident memory of this process so far (MiB), from /proc (0 where unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
