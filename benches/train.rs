//! `lookalike train` benchmark (issue: encoder fine-tuning). Prints figures, writes
//! `target/bench/train.json` and the train section of BENCHMARKS.md. Run:
//! `cargo bench --bench train` (release build).
//!
//! On ../shared/datasets/clothing-small: half of each category held out (`--test-split 0.5`),
//! the other half trained on (with 20% of it for early stopping). Reports precision@1/5/10 by
//! category on the held-out half before (base 1280-d embedding) and after (the exported 256-d
//! encoder), and the wall time from an empty embedding cache, for the default base model and
//! for EfficientNet-Lite2 (imported with `lookalike model import`). Then, from the warm cache,
//! the embedding's parts alone and no augmentation, and three more split seeds of both bases.

use std::path::Path;
use std::sync::Arc;

use lookalike::store::{DynStore, LocalStore};
use lookalike::train::{self, TrainOptions, TrainReport};
use testkit::bench::publish;

async fn run(
    data: &Path,
    model: &Path,
    cache: &Path,
    tweak: impl Fn(&mut TrainOptions),
) -> TrainReport {
    let out = tempfile::tempdir().unwrap();
    let source: DynStore = Arc::new(LocalStore::new(data).unwrap());
    let mut opts = TrainOptions {
        test_split: 0.5,
        cache_dir: Some(cache.to_path_buf()),
        ..TrainOptions::default()
    };
    tweak(&mut opts);
    train::train(source, model, out.path(), &opts, Arc::new(|_| {}))
        .await
        .expect("training failed")
}

fn row(name: &str, r: &TrainReport) -> String {
    format!(
        "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {} of {} | {:.1} s | {:.1} s |",
        r.views,
        r.after.accuracy,
        r.exported.p_at_1,
        r.exported.p_at_5,
        r.exported.p_at_10,
        r.best_epoch,
        r.epochs_run,
        r.seconds.training,
        r.seconds.total
    )
}

fn parts(r: &TrainReport) -> String {
    format!(
        "feature layer alone ({}-d) {:.3}, discriminant alone ({}-d) {}",
        r.feature_layer_dims,
        r.feature_layer_only.p_at_10,
        r.discriminant_dims,
        r.discriminant_only
            .map_or("-".to_string(), |d| format!("{:.3}", d.p_at_10))
    )
}

fn cold_line(name: &str, r: &TrainReport) -> String {
    format!(
        "{name}: base embeddings {:.1} s ({} computed), training {:.1} s, export {:.1} s, check of \
         the exported encoder {:.1} s; **total {:.1} s**; the exported encoder's embeddings differ \
         from the training-time ones by at most {:.1e}.",
        r.seconds.embeddings,
        r.embeddings_computed,
        r.seconds.training,
        r.seconds.export,
        r.seconds.check,
        r.seconds.total,
        r.exported_max_abs_diff,
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some((data, model)) = testkit::bench::dataset_and_model() else {
        return;
    };
    let lite2 = testkit::bench::repo_root().join(".lookalike/bench/efficientnet-lite2");
    if !lite2.join("encoder.onnx").exists() {
        println!("importing efficientnet-lite2 into {} ...", lite2.display());
        lookalike::model::import::import(
            "efficientnet-lite2",
            &lite2,
            &testkit::bench::repo_root().join(".lookalike/cache/pip"),
            None,
        )
        .expect("importing efficientnet-lite2");
    }
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path();
    println!(
        "training on half of {} (empty embedding cache) ...",
        data.display()
    );
    let cold = run(&data, &model, cache, |_| {}).await;
    println!("efficientnet-lite2 base (empty embedding cache) ...");
    let cold2 = run(&data, &lite2, cache, |_| {}).await;
    println!("ablations from the warm cache ...");
    let no_disc = run(&data, &model, cache, |o| o.discriminant_weight = 0.0).await;
    let one = run(&data, &model, cache, |o| o.views = 1).await;
    println!("three more split seeds ...");
    let mut seeds = Vec::new();
    for seed in [1u64, 2, 3] {
        let a = run(&data, &model, cache, |o| o.seed = seed).await;
        let b = run(&data, &lite2, cache, |o| o.seed = seed).await;
        seeds.push((seed, a, b));
    }
    let seed_rows: Vec<String> = std::iter::once((42u64, &cold, &cold2))
        .chain(seeds.iter().map(|(s, a, b)| (*s, a, b)))
        .map(|(s, a, b)| {
            format!(
                "| {s} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                a.before.retrieval.p_at_10,
                a.feature_layer_only.p_at_10,
                a.exported.p_at_10,
                b.before.retrieval.p_at_10,
                b.feature_layer_only.p_at_10,
                b.exported.p_at_10
            )
        })
        .collect();
    let mean = |f: &dyn Fn(&TrainReport) -> f64, lite2: bool| -> f64 {
        let all: Vec<f64> = std::iter::once(if lite2 { &cold2 } else { &cold })
            .chain(seeds.iter().map(|(_, a, b)| if lite2 { b } else { a }))
            .map(f)
            .collect();
        all.iter().sum::<f64>() / all.len() as f64
    };
    let before = |r: &TrainReport| r.before.retrieval.p_at_10;
    let layer = |r: &TrainReport| r.feature_layer_only.p_at_10;
    let after = |r: &TrainReport| r.exported.p_at_10;

    let b = cold.before;
    let b2 = cold2.before;
    let body = format!(
        "On {cores} cores: {train} training + {val} validation images \
         (half of each category of clothing-small), evaluated on the {test} held-out images. \
         The 256-d embedding is a trained feature layer plus 9 discriminant directions \
         (`--discriminant-weight 1.5`).\n\n\
         | model | views | accuracy | P@1 | P@5 | P@10 | best epoch | training | total |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | base {base} (1280-d) | - | {:.3} (nearest mean) | {:.3} | {:.3} | {:.3} | - | - | - |\n\
         {}\n{}\n{}\n\
         | base {base2} (1280-d) | - | {:.3} (nearest mean) | {:.3} | {:.3} | {:.3} | - | - | - |\n\
         {}\n\n\
         Parts of the default embedding: {}. On the Lite2 base: {}.\n\n\
         - {}\n- {}\n\n\
         P@10 on the held-out half over four split seeds (`--seed`; 42 is the table above):\n\n\
         | seed | Lite0 base | Lite0 feature layer only | **Lite0 fine-tuned** | Lite2 base | Lite2 feature layer only | **Lite2 fine-tuned** |\n\
         |---|---|---|---|---|---|---|\n\
         {}\n\
         | mean | {:.3} | {:.3} | **{:.3}** | {:.3} | {:.3} | **{:.3}** |",
        b.accuracy,
        b.retrieval.p_at_1,
        b.retrieval.p_at_5,
        b.retrieval.p_at_10,
        row("fine-tuned 256-d (default)", &cold),
        row("fine-tuned, feature layer only (`--discriminant-weight 0`)", &no_disc),
        row("fine-tuned 256-d, no augmentation", &one),
        b2.accuracy,
        b2.retrieval.p_at_1,
        b2.retrieval.p_at_5,
        b2.retrieval.p_at_10,
        row("fine-tuned 256-d on Lite2", &cold2),
        parts(&cold),
        parts(&cold2),
        cold_line("Cold run, Lite0 base (embedding cache empty)", &cold),
        cold_line("Cold run, Lite2 base", &cold2),
        seed_rows.join("\n"),
        mean(&before, false),
        mean(&layer, false),
        mean(&after, false),
        mean(&before, true),
        mean(&layer, true),
        mean(&after, true),
        cores = testkit::bench::cores(),
        train = cold.images.train,
        val = cold.images.validation,
        test = cold.images.test,
        base = cold.base_model,
        base2 = cold2.base_model,
    );
    println!("{body}");
    let seed_json: Vec<_> = seeds
        .iter()
        .map(|(s, a, b)| serde_json::json!({ "seed": s, "lite0": a, "lite2": b }))
        .collect();
    publish(
        "train",
        "Fine-tuning (`lookalike train`)",
        "cargo bench --bench train",
        &serde_json::json!({
            "cold": cold,
            "cold_lite2": cold2,
            "feature_layer_only": no_disc,
            "views_1": one,
            "seeds": seed_json,
        }),
        &body,
    );
}
