//! Command-line definitions and dispatch. Each subcommand lives in its own module; what they
//! share is in `common`, the renderings in `output`.

mod common;
mod demo;
mod duplicates;
mod indexing;
mod maintenance;
mod model;
mod ops;
mod output;
mod reindex;
mod search;
mod serve;
mod train;

use clap::{Parser, Subcommand};

pub use output::error_report;

#[derive(Debug, Parser)]
#[command(
    name = "lookalike",
    version,
    about = "Image-similarity search: index images, query by image"
)]
pub struct Cli {
    /// More log output (repeat for more); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import or inspect encoder models.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Encode every image under a folder or S3 prefix and add them to the index.
    Index(indexing::IndexArgs),
    /// Find the indexed images most similar to an image (or to an indexed key).
    Query(search::QueryArgs),
    /// Show what the index holds.
    Stats(search::StatsArgs),
    /// Find groups of near-duplicate images across the whole index.
    Duplicates(duplicates::DuplicatesArgs),
    /// Remove keys from the index.
    Delete(maintenance::DeleteArgs),
    /// Merge segments (tiered by default, `--all` for one segment).
    Compact(maintenance::CompactArgs),
    /// Delete segment files that no manifest lists (left by interrupted writers or compactions).
    Gc(maintenance::GcArgs),
    /// Fine-tune the encoder on images sorted into category folders; writes a new model folder.
    Train(train::TrainArgs),
    /// Rebuild the index with another model (re-encodes every indexed image, then swaps atomically).
    Reindex(reindex::ReindexArgs),
    /// Serve the search API and the search page over HTTP (loopback by default).
    Serve(serve::ServeArgs),
    /// Send the images already under an S3 prefix to the ingest queue, for the deployed
    /// ingest function to index.
    Backfill(ops::BackfillArgs),
    /// What the pipeline is doing: the index's manifest, rejected objects, the queues.
    Status(ops::StatusArgs),
    /// Move messages from the ingest dead-letter queue back to the ingest queue.
    Redrive(ops::RedriveArgs),
    /// The embedded default end to end: import the model, index sample photos, run a query.
    Demo(demo::DemoArgs),
}

impl Cli {
    /// The log verbosity: `serve` logs a line per request, so it starts at info.
    pub fn log_verbosity(&self) -> u8 {
        match self.command {
            Command::Serve(_) => self.verbose.max(1),
            _ => self.verbose,
        }
    }
}

/// Logs to stderr: warnings, more with `-v`, or what `RUST_LOG` says.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,lookalike=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(cmd) => model::run(cmd).await,
        Command::Index(args) => indexing::run(args).await,
        Command::Query(args) => search::query(args).await,
        Command::Stats(args) => search::stats(args).await,
        Command::Duplicates(args) => duplicates::run(args).await,
        Command::Delete(args) => maintenance::delete(args).await,
        Command::Compact(args) => maintenance::compact(args).await,
        Command::Gc(args) => maintenance::gc(args).await,
        Command::Train(args) => train::run(args).await,
        Command::Reindex(args) => reindex::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Backfill(args) => ops::backfill_run(args).await,
        Command::Status(args) => ops::status(args).await,
        Command::Redrive(args) => ops::redrive(args).await,
    }
}
