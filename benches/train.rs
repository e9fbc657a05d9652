//! `lookalike train` benchmark (issue: encoder fine-tuning). Prints figures, writes
//! `target/bench/train.json` and the train section of BENCHMARKS.md. Run:
//! `cargo bench --bench train` (release build).
//!
//! On ../shared/datasets/clothing-small: half of each category held out (`--test-split 0.5`),
//! the other half trained on (with 20% of it for early stopping). Reports precision@1/5/10 by
//! category on the held-out half before (base 1280-d embedding) and after (the exported 256-d
//! encoder), and the wall time from an empty embedding cache. Then two ablations from the warm
//! cache: no augmentation (1 view) and 8 views.

mod support;

use std::sync::Arc;

use lookalike::store::{DynStore, LocalStore};
use lookalike::train::{self, TrainOptions, TrainReport};
use support::publish;

async fn run(
    data: &std::path::Path,
    model: &std::path::Path,
    views: u32,
    cache: &std::path::Path,
) -> TrainReport {
    let out = tempfile::tempdir().unwrap();
    let source: DynStore = Arc::new(LocalStore::new(data).unwrap());
    let opts = TrainOptions {
        test_split: 0.5,
        views,
        cache_dir: Some(cache.to_path_buf()),
        ..TrainOptions::default()
    };
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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some((data, model)) = support::dataset_and_model() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    println!(
        "training on half of {} (empty embedding cache) ...",
        data.display()
    );
    let cold = run(&data, &model, 4, cache.path()).await;
    println!("ablations from the warm cache ...");
    let one = run(&data, &model, 1, cache.path()).await;
    let eight = run(&data, &model, 8, cache.path()).await;

    let b = cold.before;
    let body = format!(
        "On {cores} cores: {train} training + {val} validation images \
         (half of each category of clothing-small), evaluated on the {test} held-out images.\n\n\
         | model | views | accuracy | P@1 | P@5 | P@10 | best epoch | training | total |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | base {base} (1280-d) | - | {:.3} (nearest mean) | {:.3} | {:.3} | {:.3} | - | - | - |\n\
         {}\n{}\n{}\n\n\
         Cold run (embedding cache empty): base embeddings {:.1} s ({} computed), training {:.1} s, \
         export {:.1} s, check of the exported encoder {:.1} s; **total {:.1} s**. The exported \
         encoder's embeddings differ from the training-time ones by at most {:.1e}.",
        b.accuracy,
        b.retrieval.p_at_1,
        b.retrieval.p_at_5,
        b.retrieval.p_at_10,
        row("fine-tuned 256-d (default)", &cold),
        row("fine-tuned 256-d, no augmentation", &one),
        row("fine-tuned 256-d, 8 views", &eight),
        cold.seconds.embeddings,
        cold.embeddings_computed,
        cold.seconds.training,
        cold.seconds.export,
        cold.seconds.check,
        cold.seconds.total,
        cold.exported_max_abs_diff,
        cores = support::cores(),
        train = cold.images.train,
        val = cold.images.validation,
        test = cold.images.test,
        base = cold.base_model,
    );
    println!("{body}");
    publish(
        "train",
        "Fine-tuning (`lookalike train`)",
        "cargo bench --bench train",
        &serde_json::json!({ "cold": cold, "views_1": one, "views_8": eight }),
        &body,
    );
}
