//! `lookalike train`: a feature layer trained on category folders (local and S3 on moto),
//! exported as one ONNX graph that tract and onnxruntime both run, its card and lineage, the
//! embedding cache, bad input, and the way a fine-tuned model meets an index built with another
//! model (refused, naming both ids; `reindex` moves the index over).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lookalike::index::{Index, IndexError};
use lookalike::ingest::Ingester;
use lookalike::model::encoder::Encoder;
use lookalike::model::fine_tuned::{CATEGORY_LOGITS, FEATURES};
use lookalike::model::ModelCard;
use lookalike::preprocess::{self, Limits};
use lookalike::reindex::Reindexer;
use lookalike::store::{DynStore, LocalStore};
use lookalike::train::{self, HeadConfig, TrainOptions, TrainReport};
use testkit::cli::{failed, ok};
use testkit::lookalike;

const CATEGORIES: [&str; 3] = ["checks", "gradients", "stripes"];

/// A 128x128 JPEG whose pattern depends on the category and whose colours on `seed`.
fn pattern_jpeg(category: usize, seed: u64) -> Vec<u8> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 31 + category as u64);
    let a: [u8; 3] = [rng.random(), rng.random(), rng.random()];
    let b: [u8; 3] = [rng.random(), rng.random(), rng.random()];
    let period = rng.random_range(8..24u32);
    let img = image::RgbImage::from_fn(128, 128, |x, y| {
        let c = match category {
            0 => ((x / period) + (y / period)) % 2 == 0,
            1 => return image::Rgb([(x * 2) as u8, (y * 2) as u8, a[2]]),
            _ => (y / period) % 2 == 0,
        };
        image::Rgb(if c { a } else { b })
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// `per_category` images in each of the three category folders.
fn dataset(per_category: u64) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for (c, name) in CATEGORIES.iter().enumerate() {
        for i in 0..per_category {
            v.push((format!("{name}/{i:02}.jpg"), pattern_jpeg(c, i)));
        }
    }
    v
}

/// Writes `files` under `dir` and opens it as a store.
fn folder(dir: &Path, files: &[(String, Vec<u8>)]) -> DynStore {
    for (key, bytes) in files {
        let p = dir.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    Arc::new(LocalStore::new(dir).unwrap())
}

fn options(cache: Option<&Path>) -> TrainOptions {
    TrainOptions {
        head: HeadConfig {
            dims: 16,
            max_epochs: 60,
            patience: 20,
            batch: 16,
            ..HeadConfig::default()
        },
        val_split: 0.2,
        test_split: 0.3,
        seed: 7,
        views: 2,
        limits: Limits::default(),
        cache_dir: cache.map(Path::to_path_buf),
        name: Some("patterns".into()),
        ..TrainOptions::default()
    }
}

async fn run_train(
    source: DynStore,
    out: &Path,
    opts: &TrainOptions,
) -> anyhow::Result<TrainReport> {
    let events = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = events.clone();
    let progress: train::Progress = Arc::new(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let report = train::train(source, &testkit::model_dir(), out, opts, progress).await?;
    assert!(
        events.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "no progress reported"
    );
    Ok(report)
}

/// Runs `encoder.onnx` in `dir` with onnxruntime (the test venv's Python) on `tensor`
/// (`[1, 3, 224, 224]`); `None` when no Python with onnxruntime is at hand.
fn onnxruntime_features(dir: &Path, tensor: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
    let python = testkit::repo_root().join(".venv/bin/python");
    if !python.exists() {
        return None;
    }
    let input = dir.join("input.f32");
    let bytes: Vec<u8> = tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let script = format!(
        "import sys, numpy as np, onnxruntime as ort\n\
         s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
         x = np.fromfile(sys.argv[2], dtype='<f4').reshape(1, 3, 224, 224)\n\
         f, l = s.run(['{FEATURES}', '{CATEGORY_LOGITS}'], {{'input': x}})\n\
         f.astype('<f4').tofile(sys.argv[3]); l.astype('<f4').tofile(sys.argv[4])\n"
    );
    let (f, l) = (dir.join("features.f32"), dir.join("logits.f32"));
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(dir.join("encoder.onnx"))
        .arg(&input)
        .arg(&f)
        .arg(&l)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named") {
            return None;
        }
        panic!("onnxruntime failed on the exported model: {err}");
    }
    let read = |p: &Path| -> Vec<f32> {
        std::fs::read(p)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    Some((read(&f), read(&l)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_exports_one_onnx_graph_and_caches_embeddings() {
    let Some(base) = testkit::encoder() else {
        return;
    };
    let work = testkit::tempdir();
    let images = work.path().join("images");
    let files = dataset(10);
    let source = folder(&images, &files);
    std::fs::write(images.join("README.txt"), "not an image").unwrap();
    let cache = work.path().join("cache");
    let out = work.path().join("model");
    let opts = options(Some(&cache));

    let r = run_train(source.clone(), &out, &opts).await.unwrap();
    assert_eq!(r.categories, CATEGORIES);
    assert_eq!(
        (r.images.train, r.images.validation, r.images.test),
        (15, 6, 9),
        "per category: 3 test, 2 validation, 5 training images"
    );
    assert_eq!(r.images.training_samples, 30);
    assert_eq!(r.evaluated_on, "test");
    assert_eq!(r.base_model, base.model_id());
    // Every image was embedded once per view, none from the cache.
    assert_eq!(
        (r.embeddings_computed, r.embeddings_cached),
        (15 * 2 + 6 + 9, 0)
    );
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert!(r.best_epoch >= 1 && r.best_epoch <= r.epochs_run && r.epochs_run <= 60);
    assert_eq!(r.history.len(), r.epochs_run);
    // Three easy patterns: the trained features retrieve and classify them.
    assert!(r.after.retrieval.p_at_1 >= 0.8, "{:?}", r.after);
    assert!(r.after.accuracy >= 0.8, "{:?}", r.after);
    // The exported graph reproduces the trained head on fresh decodes of the same images.
    assert!(
        r.exported_max_abs_diff < 1e-3,
        "{}",
        r.exported_max_abs_diff
    );
    assert_eq!(r.exported.p_at_1, r.after.retrieval.p_at_1);
    // The 16 dimensions: 2 discriminant directions (3 categories) and a 14-d feature layer.
    assert_eq!(
        (r.dims, r.feature_layer_dims, r.discriminant_dims),
        (16, 14, 2)
    );
    assert_eq!(r.config.dims, 14);
    let parts = r.discriminant_only.expect("the discriminant's own figures");
    assert!(parts.p_at_1 >= 0.8, "{parts:?}");

    // The card: a new id, the base's input handling, the categories, the lineage.
    let card = ModelCard::load(&out).unwrap();
    assert_eq!(card.id, r.model_id);
    assert!(card.id.starts_with("patterns-16d-"), "{}", card.id);
    assert_ne!(card.id, base.model_id());
    assert_eq!(card.dims, 16);
    assert_eq!(card.output, FEATURES);
    assert_eq!(card.logits.as_deref(), Some(CATEGORY_LOGITS));
    assert_eq!(card.labels, CATEGORIES);
    assert_eq!(card.lineage, vec![base.model_id().to_string()]);
    assert_eq!(card.input, base.card().input);
    assert_eq!(card.normalize, base.card().normalize);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(train::REPORT_FILE)).unwrap()).unwrap();
    assert_eq!(saved["model_id"], r.model_id.as_str());

    // The fine-tuned encoder: unit 16-d embeddings, and logits that name the category.
    let tuned = Encoder::load(&out).unwrap();
    let (key, bytes) = &files[12]; // gradients/02.jpg
    let tensor = preprocess::preprocess(bytes, tuned.card(), &Limits::default()).unwrap();
    let (emb, logits) = tuned.encode_tensor_with_logits(&tensor).unwrap();
    let logits = logits.unwrap();
    assert_eq!(emb.len(), 16);
    assert!((emb.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4);
    assert_eq!(logits.len(), 3);
    let best = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(card.labels[best], "gradients", "{key}: logits {logits:?}");

    // The same graph in onnxruntime: a standard ONNX model, not a tract-only one.
    match onnxruntime_features(&out, &tensor) {
        Some((f, l)) => {
            assert_eq!(f.len(), 16);
            for (a, b) in f.iter().zip(&emb) {
                assert!((a - b).abs() < 1e-3, "onnxruntime {a} vs tract {b}");
            }
            for (a, b) in l.iter().zip(&logits) {
                assert!((a - b).abs() < 1e-2, "onnxruntime logits {a} vs tract {b}");
            }
        }
        None => println!(
            "SKIPPED: onnxruntime check (no .venv with onnxruntime; scripts/test.sh installs it)"
        ),
    }

    // A second run (the same split, another initialisation) reads every embedding from the cache.
    let mut again = options(Some(&cache));
    again.head.seed = 8;
    let out2 = work.path().join("model2");
    let r2 = run_train(source, &out2, &again).await.unwrap();
    assert_eq!(r2.embeddings_computed, 0);
    assert_eq!(r2.embeddings_cached, r.embeddings_computed);
    assert_ne!(r2.model_id, r.model_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trains_from_s3_and_skips_broken_images() {
    if testkit::encoder().is_none() {
        return;
    }
    let Some(server) = testkit::moto::MotoServer::shared() else {
        return;
    };
    let bucket = testkit::moto::unique_bucket("train");
    server.create_bucket(&bucket).await;
    let source: DynStore = Arc::new(lookalike::store::S3Store::new(
        server.client(),
        bucket,
        "catalog",
    ));
    for (key, bytes) in dataset(10) {
        source.put(&key, bytes.into()).await.unwrap();
    }
    source
        .put(
            "stripes/broken.jpg",
            bytes::Bytes::from_static(b"\xff\xd8\xff not really a jpeg"),
        )
        .await
        .unwrap();
    let work = testkit::tempdir();
    let out = work.path().join("model");
    let r = run_train(source, &out, &options(None)).await.unwrap();
    assert!(r.source.starts_with("s3://"), "{}", r.source);
    assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
    assert_eq!(r.skipped[0].key, "stripes/broken.jpg");
    assert!(!r.skipped[0].reason.is_empty());
    assert!(r.after.retrieval.p_at_1 >= 0.8, "{:?}", r.after);
    assert!(out.join("encoder.onnx").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_training_input_is_refused_clearly() {
    if testkit::encoder().is_none() {
        return;
    }
    let work = testkit::tempdir();
    // One category only.
    let one = folder(&work.path().join("one"), &dataset(4)[..4]);
    let err = run_train(one, &work.path().join("m1"), &options(None))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("at least 2 category folders"),
        "{err}"
    );
    // Too few images for the split.
    let few = folder(&work.path().join("few"), &dataset(3));
    let err = run_train(few, &work.path().join("m2"), &options(None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has 3 images"), "{err}");
    // No room for the feature layer beside 2 discriminant directions, or a negative weight.
    let images = folder(&work.path().join("images"), &dataset(10));
    let mut narrow = options(None);
    narrow.head.dims = 2;
    let err = run_train(images.clone(), &work.path().join("m3"), &narrow)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("leaves no room"), "{err}");
    narrow.discriminant_weight = -1.0;
    let err = run_train(images.clone(), &work.path().join("m4"), &narrow)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("0 or more"), "{err}");
    // Writing over the base model.
    let err = train::train(
        images,
        &testkit::model_dir(),
        &testkit::model_dir(),
        &options(None),
        Arc::new(|_| {}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("base model's folder"), "{err}");
    assert!(!work.path().join("m1").join("encoder.onnx").exists());
}

/// The fine-tuned model against an index built with the base model: ingest and search refuse it
/// naming both ids, and `reindex` moves the index to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fine_tuned_model_needs_a_reindex() {
    let Some(base) = testkit::encoder() else {
        return;
    };
    let work = testkit::tempdir();
    let images = work.path().join("images");
    let files = dataset(10);
    let source = folder(&images, &files);
    let out = work.path().join("model");
    run_train(source.clone(), &out, &options(None))
        .await
        .unwrap();
    let tuned = Arc::new(Encoder::load(&out).unwrap());

    let index_store: DynStore = Arc::new(LocalStore::new(work.path().join("index")).unwrap());
    let cache = work.path().join("cache");
    let index = Arc::new(
        Index::open(index_store.clone(), &cache, Some(base.model_ref()))
            .await
            .unwrap(),
    );
    let ingester = Ingester {
        index: index.clone(),
        encoder: base.clone(),
        source: source.clone(),
        limits: Limits::default(),
        metadata: None,
        build: Default::default(),
    };
    let listed = source.list("").await.unwrap();
    ingester.ingest(listed, Vec::new(), None).await.unwrap();

    let err = Index::open(
        index_store.clone(),
        &work.path().join("cache2"),
        Some(tuned.model_ref()),
    )
    .await
    .unwrap_err();
    match &err {
        IndexError::ModelMismatch { index, model, .. } => {
            assert_eq!(index, base.model_id());
            assert_eq!(model, tuned.model_id());
        }
        other => panic!("expected a model mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(base.model_id()) && text.contains(tuned.model_id()),
        "{text}"
    );

    let open = Arc::new(
        Index::open(index_store.clone(), &cache, None)
            .await
            .unwrap(),
    );
    let report = Reindexer::new(open, tuned.clone()).run(None).await.unwrap();
    assert!(report.swapped);
    assert_eq!(report.items, files.len());
    let index = Index::open(
        index_store,
        &work.path().join("cache3"),
        Some(tuned.model_ref()),
    )
    .await
    .unwrap();
    let snapshot = index.snapshot();
    assert_eq!(snapshot.manifest.model.dims, 16);
    // Search with the fine-tuned model: an image finds itself, then its own category.
    let (key, bytes) = &files[3];
    let v = tuned.encode_image(bytes, &Limits::default()).unwrap();
    let hits = snapshot.search(&v, 5, None, None).unwrap();
    assert_eq!(&hits[0].record.key, key);
    let same = hits
        .iter()
        .filter(|h| h.record.category == "checks")
        .count();
    assert!(
        same >= 4,
        "{:?}",
        hits.iter().map(|h| &h.record.key).collect::<Vec<_>>()
    );
}

#[test]
fn cli_train_prints_a_table_or_json() {
    if testkit::encoder().is_none() {
        return;
    }
    let work = testkit::tempdir();
    folder(&work.path().join("images"), &dataset(10));
    let args = [
        "train",
        "images",
        "--out",
        "model",
        "--dims",
        "8",
        "--views",
        "1",
        "--epochs",
        "20",
        "--test-split",
        "0.3",
        "--cache",
        "cache",
    ];
    let stdout = ok(lookalike!(work.path(), &args));
    for needle in [
        "before (base embedding)",
        "after (8-d embedding)",
        "6-d feature layer alone",
        "2-d discriminant alone",
        "exported encoder.onnx",
        "P@10",
        "never trained on",
        "model/encoder.onnx",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let mut json_args = args.to_vec();
    json_args[3] = "model2";
    json_args.extend(["--json", "--discriminant-weight", "0"]);
    let json = ok(lookalike!(work.path(), &json_args));
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON report");
    // Without the discriminant the feature layer takes all 8 dimensions.
    assert_eq!(v["dims"], 8);
    assert_eq!(v["feature_layer_dims"], 8);
    assert_eq!(v["discriminant_dims"], 0);
    assert!(v["discriminant_only"].is_null());
    assert_eq!(
        v["embeddings_computed"], 0,
        "the second run reads the cache"
    );
    assert!(v["after"]["p_at_10"].as_f64().is_some());

    // Clear errors: a missing folder, a missing base model.
    let err = failed(lookalike!(work.path(), &["train", "nowhere", "--out", "m"]));
    assert!(err.contains("nowhere is not a folder"), "{err}");
    let err = failed(lookalike!(
        work.path(),
        &["train", "images", "--out", "m", "--model", "no-model"],
    ));
    assert!(err.contains("no model in no-model"), "{err}");
}
