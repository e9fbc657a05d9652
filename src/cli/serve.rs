//! `lookalike serve`: the search API and the page over HTTP, on loopback by default.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use lookalike::api::{QueryService, ServiceConfig};

use super::common::{IndexLocation, ModelLocation};

/// Where `serve` listens unless `--addr` says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub location: IndexLocation,
    #[command(flatten)]
    pub model: ModelLocation,
    /// Address to listen on (port 0 picks a free one). Anything but loopback exposes the index
    /// and, for a folder index, its images to the network.
    #[arg(long, env = "LOOKALIKE_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Seconds between checks of the manifest for new segments.
    #[arg(long, default_value_t = 5)]
    pub check_interval: u64,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let encoder = args.model.load()?;
    let store = lookalike::store::open(&args.location.index).await?;
    let config = ServiceConfig {
        check_interval: Duration::from_secs(args.check_interval),
        serve_images: true,
        ..ServiceConfig::from_env()?
    };
    let service = Arc::new(QueryService::new(
        store,
        args.location.cache_dir(),
        Arc::new(encoder),
        config,
    ));
    let snapshot = service.snapshot().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot open the index {}: {} (build one with `lookalike index FOLDER --index {}`)",
            args.location.index,
            e.message,
            args.location.index
        )
    })?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr}, which is not loopback: anyone who can reach it can search the index{}",
            if args.location.index.starts_with("s3://") { "" } else { " and see its images" }
        );
    }
    println!(
        "lookalike serve: {} images (index version {}, model {}) from {}",
        snapshot.live_items(),
        snapshot.version(),
        snapshot.manifest.model.id,
        args.location.index
    );
    println!("open http://{addr}/ in a browser (Ctrl-C stops)");
    std::io::stdout().flush()?;
    lookalike::server::serve(listener, service, lookalike::server::shutdown_signal()).await;
    eprintln!("lookalike serve: stopped");
    Ok(())
}
