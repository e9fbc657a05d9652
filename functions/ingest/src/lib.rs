//! The ingest Lambda (`lookalike-ingest`): a thin adapter from S3 notifications — delivered
//! directly or through an SQS queue — to the core's ingest ([`lookalike::ingest::Ingester`]).
//!
//! - [`events`]: S3 / SQS (/ SNS) payloads into [`events::Notice`]s.
//! - [`handler`]: one invocation: per bucket one segment and one manifest commit; the SQS partial
//!   batch response names exactly the messages whose work did not commit.
//! - [`config`]: the environment.

pub mod config;
pub mod events;
pub mod handler;

pub use handler::{Handled, IngestFunction, InvocationError, ResponseError, StageMs, Summary};

use std::sync::Arc;

use lookalike::lambda::InitError as CommonInitError;
use lookalike::store::{self, StoreError};

/// Why the ingest function could not start.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The configuration, the model or the index's store.
    #[error(transparent)]
    Common(#[from] CommonInitError),
    /// No S3 client for the images could be made (with a local index, in tests).
    #[error("cannot create the S3 client for the images: {0}")]
    Images(#[source] StoreError),
}

/// The init phase: configuration checked, model loaded, S3 client created. The index itself is
/// opened on the first invocation (a store outage then fails invocations, which are retried,
/// rather than the container).
pub async fn init(config: &config::Config) -> Result<IngestFunction, InitError> {
    let (encoder, index_store) = config.env.load().await?;
    let s3 = match index_store.s3_client() {
        Some(c) => c,
        // A local index (testing): the images still come from S3.
        None => store::S3Store::from_env("images", "")
            .await
            .map_err(InitError::Images)?
            .client()
            .clone(),
    };
    Ok(IngestFunction::new(
        index_store,
        &config.env.cache_dir,
        Arc::new(encoder),
        s3,
        config.limits,
    ))
}
