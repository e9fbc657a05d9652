//! `lookalike-compact`: the Lambda entry point. Init (configuration, the index's S3 client)
//! happens once per container; each scheduled invocation is one maintenance run
//! ([`lookalike_compact::CompactFunction::handle`]) within the invocation's deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Error, LambdaEvent};
use lookalike::lambda::InitError;
use lookalike_compact::config::Config;
use lookalike_compact::CompactFunction;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lookalike::lambda::init_logging();
    let config = Config::from_env()
        .map_err(InitError::from)
        .inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    let store = lookalike::store::open(&config.env.index)
        .await
        .map_err(|source| InitError::Store {
            index: config.env.index.clone(),
            source,
        })
        .inspect_err(|e| tracing::error!(error = %e, "init failed"))?;
    let function = std::sync::Arc::new(CompactFunction::new(
        store,
        &config.env.cache_dir,
        config.policy,
        config.reserve,
    ));
    tracing::info!(index = %config.env.index, "initialised");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let function = function.clone();
        async move {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64;
            // An invocation cannot start past its deadline: a deadline already gone (a local
            // emulator's) is no deadline.
            let deadline = event.context.deadline;
            let left = (deadline > now).then(|| Duration::from_millis(deadline - now));
            if left.is_none() {
                tracing::warn!(
                    deadline,
                    now,
                    "no usable invocation deadline; none is applied"
                );
            }
            let summary = function
                .handle(left)
                .await
                .inspect_err(|e| tracing::error!(error = %e, "maintenance failed"))?;
            Ok::<_, Error>(serde_json::to_value(summary)?)
        }
    }))
    .await
}
