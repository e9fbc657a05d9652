//! `lookalike train`: fine-tune a feature layer on category folders and export the encoder.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use lookalike::preprocess::Limits;
use lookalike::train::{
    self, DatasetError, Event, HeadConfig, Quality, SplitFraction, TrainError, TrainOptions,
    TrainReport,
};

use super::common::{open_source, ModelLocation, DEFAULT_CACHE};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder or s3://bucket/prefix of images sorted into category folders (`shoes/1.jpg`).
    pub source: String,
    /// Where to write the fine-tuned model (encoder.onnx, model.json, training.json).
    #[arg(long)]
    pub out: PathBuf,
    /// The base model to fine-tune (kept frozen).
    #[command(flatten)]
    pub model: ModelLocation,
    /// Dimensions of the new embedding: the trained feature layer plus (categories - 1)
    /// discriminant directions.
    #[arg(long, default_value_t = 256)]
    pub dims: usize,
    /// Weight of the discriminant directions (shrinkage LDA, solved in closed form) next to the
    /// feature layer in the embedding; 0 leaves them out.
    #[arg(long, default_value_t = 1.5)]
    pub discriminant_weight: f32,
    /// Shrinkage of the discriminant's within-category covariance towards the identity.
    #[arg(long, default_value_t = train::discriminant::DEFAULT_SHRINKAGE, hide_short_help = true)]
    pub shrinkage: f64,
    /// Fraction of each category used for early stopping.
    #[arg(long, default_value_t = 0.2)]
    pub val_split: f64,
    /// Fraction of each category held out from training altogether; quality is then reported on
    /// these unseen images (otherwise on the validation images).
    #[arg(long, default_value_t = 0.0)]
    pub test_split: f64,
    /// Seed of the split, the initialisation and the shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Views per training image: 1 = the image only, 2 = plus its mirror image, more = plus
    /// random crops (mirrored half of the time).
    #[arg(long, default_value_t = 4)]
    pub views: u32,
    /// Most epochs to train.
    #[arg(long, default_value_t = 300)]
    pub epochs: usize,
    /// Stop after this many epochs without a better validation precision@10.
    #[arg(long, default_value_t = 40)]
    pub patience: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f32,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Scale of the cosine-softmax logits.
    #[arg(long, default_value_t = 16.0, hide_short_help = true)]
    pub scale: f32,
    #[arg(long, default_value_t = 1e-4, hide_short_help = true)]
    pub weight_decay: f32,
    /// Dropout on the base embedding while training.
    #[arg(long, default_value_t = 0.2, hide_short_help = true)]
    pub dropout: f32,
    #[arg(long, default_value_t = 0.1, hide_short_help = true)]
    pub label_smoothing: f32,
    /// Name part of the new model id (default: the image folder's name + "-ft").
    #[arg(long)]
    pub name: Option<String>,
    /// Cache of base-model embeddings, by image content hash.
    #[arg(long, default_value_t = format!("{DEFAULT_CACHE}/train"))]
    pub cache: String,
    /// Do not read or write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TrainArgs) -> anyhow::Result<()> {
    let source = open_source(&args.source, "").await?;
    args.model.load_card()?;
    let opts = TrainOptions {
        head: HeadConfig {
            dims: args.dims,
            max_epochs: args.epochs,
            patience: args.patience,
            batch: args.batch,
            learning_rate: args.learning_rate,
            weight_decay: args.weight_decay,
            scale: args.scale,
            label_smoothing: args.label_smoothing,
            dropout: args.dropout,
            seed: args.seed,
        },
        val_split: args.val_split,
        test_split: args.test_split,
        seed: args.seed,
        views: args.views,
        limits: Limits::default(),
        cache_dir: (!args.no_cache).then(|| PathBuf::from(&args.cache)),
        name: args.name.clone(),
        discriminant_weight: args.discriminant_weight,
        shrinkage: args.shrinkage,
    };
    let bar = Arc::new(Mutex::new(ProgressBar::hidden()));
    let progress = {
        let bar = bar.clone();
        let quiet = args.json;
        Arc::new(move |e: Event| show(&bar, e, quiet)) as train::Progress
    };
    let report = train::train(source, &args.model.model, &args.out, &opts, progress).await;
    bar.lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish_and_clear();
    let report = report.map_err(in_flags)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

/// `train`'s error in terms of the flags that set what it is about.
fn in_flags(e: TrainError) -> anyhow::Error {
    match e {
        TrainError::OutIsBase(out) => anyhow::anyhow!(
            "--out {} is the base model's folder; write the fine-tuned model somewhere else",
            out.display()
        ),
        TrainError::BadDiscriminantWeight(w) => {
            anyhow::anyhow!("--discriminant-weight must be 0 or more, not {w}")
        }
        TrainError::NoRoomForFeatureLayer {
            dims,
            directions,
            categories,
        } => anyhow::anyhow!(
            "--dims {dims} leaves no room for the feature layer next to the {directions} discriminant directions of {categories} categories: use a larger --dims, or --discriminant-weight 0"
        ),
        TrainError::Dataset(DatasetError::BadSplit(fraction)) => {
            let (flag, f) = match fraction {
                SplitFraction::Validation(f) => ("--val-split", f),
                SplitFraction::Test(f) => ("--test-split", f),
            };
            anyhow::anyhow!("invalid split: {flag} {f} must be at least 0 and below 1")
        }
        TrainError::TooFewEvaluationImages { .. } => {
            anyhow::anyhow!("fewer than 2 evaluation images: use a larger --val-split or --test-split")
        }
        e => e.into(),
    }
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

fn show(bar: &Mutex<ProgressBar>, e: Event, quiet: bool) {
    if quiet {
        return;
    }
    let mut bar = bar.lock().unwrap_or_else(|p| p.into_inner());
    match e {
        Event::Embedding { images } => {
            *bar = ProgressBar::new(images).with_style(bar_style(
                "{spinner} base embeddings [{bar:40}] {pos}/{len} images  {per_sec}  ETA {eta}",
            ));
        }
        Event::Embedded(n) | Event::Checked(n) => bar.inc(n),
        Event::Training { max_epochs } => {
            bar.finish_and_clear();
            *bar = ProgressBar::new(max_epochs as u64).with_style(bar_style(
                "{spinner} training [{bar:40}] epoch {pos}/{len}  {msg}",
            ));
        }
        Event::Epoch(s) => {
            bar.set_position(s.epoch as u64);
            bar.set_message(format!(
                "train loss {:.3}  val loss {:.3}  val acc {:.3}  val P@10 {:.3}",
                s.train_loss, s.val_loss, s.val_accuracy, s.val_p_at_10
            ));
        }
        Event::Exporting { images } => {
            bar.finish_and_clear();
            *bar = ProgressBar::new(images).with_style(bar_style(
                "{spinner} checking the exported encoder [{bar:40}] {pos}/{len} images",
            ));
        }
    }
}

fn print_report(r: &TrainReport) {
    println!(
        "trained {} ({}-d) from {} on {} images x {} views in {} categories; best epoch {} of {} run",
        r.model_id,
        r.dims,
        r.base_model,
        r.images.train,
        r.views,
        r.categories.len(),
        r.best_epoch,
        r.epochs_run
    );
    let n = match r.evaluated_on.as_str() {
        "test" => r.images.test,
        _ => r.images.validation,
    };
    println!(
        "quality on {n} {} images{}:",
        r.evaluated_on,
        if r.evaluated_on == "test" {
            " (never trained on)"
        } else {
            " (used for early stopping; hold out a --test-split for unseen images)"
        }
    );
    println!(
        "  {:<30} {:>8} {:>6} {:>6} {:>6}",
        "", "accuracy", "P@1", "P@5", "P@10"
    );
    let row = |name: &str, acc: Option<f64>, q: &lookalike::train::Retrieval| {
        let acc = acc.map_or("-".to_string(), |a| format!("{a:.3}"));
        println!(
            "  {:<30} {:>8} {:>6.3} {:>6.3} {:>6.3}",
            name, acc, q.p_at_1, q.p_at_5, q.p_at_10
        );
    };
    let q = |q: &Quality| (Some(q.accuracy), q.retrieval);
    let (a, b) = q(&r.before);
    row(&format!("before ({})", "base embedding"), a, &b);
    let (a, b) = q(&r.after);
    row(&format!("after ({}-d embedding)", r.dims), a, &b);
    if let Some(d) = &r.discriminant_only {
        row(
            &format!("  {}-d feature layer alone", r.feature_layer_dims),
            None,
            &r.feature_layer_only,
        );
        row(
            &format!("  {}-d discriminant alone", r.discriminant_dims),
            None,
            d,
        );
    }
    row("exported encoder.onnx", None, &r.exported);
    println!(
        "time: base embeddings {:.1} s ({} computed, {} cached), training {:.1} s, export {:.1} s, check {:.1} s; total {:.1} s",
        r.seconds.embeddings,
        r.embeddings_computed,
        r.embeddings_cached,
        r.seconds.training,
        r.seconds.export,
        r.seconds.check,
        r.seconds.total
    );
    for s in &r.skipped {
        println!("skipped {}: {}", s.key, s.reason);
    }
    println!(
        "wrote {0}/encoder.onnx, {0}/model.json and {0}/training.json; use it with --model {0}, rebuild an index with `lookalike reindex --model {0}`",
        r.out
    );
}
