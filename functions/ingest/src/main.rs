//! `lookalike-ingest`: the Lambda entry point. Init ([`lookalike_ingest::init`]: configuration,
//! model, S3 client) happens once per container; each invocation is handed to
//! [`lookalike_ingest::IngestFunction::handle`].

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use lookalike_ingest::config::Config;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lookalike::lambda::init_logging();
    let start = Instant::now();
    // An init error ends the process: logged as one JSON line with its message (and what caused
    // it), then returned as the typed error, which Lambda reports as the init failure.
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    let function = lookalike_ingest::init(&config)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    let function = Arc::new(function);
    tracing::info!(
        index = %config.env.index,
        model = %config.env.model.display(),
        init_ms = start.elapsed().as_secs_f64() * 1e3,
        "initialised"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let function = function.clone();
        async move {
            let handled = function.handle(&event.payload).await;
            handled.response().map_err(Error::from)
        }
    }))
    .await
}
