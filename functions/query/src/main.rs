//! `lookalike-query`: the Lambda entry point. The model, the S3 client and the first snapshot
//! sync happen in the init phase ([`lookalike_query::init`], logged with their times); each
//! request is answered by [`lookalike_query::handle`].

use std::sync::Arc;

use lambda_http::lambda_runtime::{self, service_fn, Error, LambdaEvent};
use lookalike_query::config::Config;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lookalike::lambda::init_logging();
    // An init error ends the process: logged as one JSON line with its message (and what caused
    // it), then returned as the typed error, which Lambda reports as the init failure.
    let config = Config::from_env().inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    let (service, report) = lookalike_query::init(&config)
        .await
        .inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    match &report.snapshot_error {
        None => tracing::info!(index = %config.env.index, init = ?report, "initialised"),
        Some(e) => {
            tracing::error!(index = %config.env.index, error = %e, init = ?report, "initialised without a snapshot")
        }
    }
    let service = Arc::new(service);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let service = service.clone();
        async move { Ok::<_, Error>(lookalike_query::handle(&service, event.payload).await) }
    }))
    .await
}
