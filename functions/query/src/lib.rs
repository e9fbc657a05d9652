//! The query Lambda (`lookalike-query`): a thin adapter from API Gateway HTTP API (payload v2)
//! requests to the core's HTTP API ([`lookalike::api::QueryService`]).
//!
//! The request conversion is our own rather than `lambda_http::run`'s: lambda_http turns a v2
//! request with `isBase64Encoded: true` and an invalid body into a panic before any handler runs.
//! Here the body is decoded with a checked decoder and a bad one is a 400.
//!
//! - [`convert`]: API Gateway event <-> [`lookalike::api::ApiRequest`] / [`lookalike::api::ApiResponse`].
//! - [`config`]: the environment.

pub mod config;
pub mod convert;

use std::sync::Arc;
use std::time::Instant;

use lambda_http::aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lookalike::api::{ApiError, QueryService};
use serde::Serialize;
use serde_json::Value;

/// How the init phase went (logged by the function, printed by the cold-start benchmark).
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub model_ms: f64,
    pub snapshot_ms: f64,
    pub init_ms: f64,
    pub version: u64,
    pub items: u64,
    pub segments: usize,
    /// Why there is no snapshot yet (requests answer 503 until there is).
    pub snapshot_error: Option<String>,
}

/// The init phase: load the model, create the S3 client and sync the first snapshot. Only a bad
/// configuration or model fails it; an unreachable index is reported and retried per request.
pub async fn init(
    config: &config::Config,
) -> Result<(QueryService, InitReport), lookalike::lambda::InitError> {
    let start = Instant::now();
    let (encoder, index_store) = config.env.load().await?;
    let model_ms = start.elapsed().as_secs_f64() * 1e3;
    let service = QueryService::new(
        index_store,
        &config.env.cache_dir,
        Arc::new(encoder),
        config.service.clone(),
    );
    let t = Instant::now();
    let snapshot = service.snapshot().await;
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let report = InitReport {
        model_ms,
        snapshot_ms,
        init_ms: start.elapsed().as_secs_f64() * 1e3,
        version: snapshot.as_ref().map(|s| s.version()).unwrap_or(0),
        items: snapshot.as_ref().map(|s| s.live_items()).unwrap_or(0),
        segments: snapshot.as_ref().map(|s| s.segment_count()).unwrap_or(0),
        snapshot_error: snapshot.err().map(|e| e.message),
    };
    Ok((service, report))
}

/// Answer one API Gateway event (any JSON: an event that is not an HTTP API request is a 400).
pub async fn handle(service: &QueryService, event: Value) -> ApiGatewayV2httpResponse {
    let request: ApiGatewayV2httpRequest = match serde_json::from_value(event) {
        Ok(r) => r,
        Err(e) => {
            return convert::to_gateway(
                &ApiError::bad_request(
                    "invalid_event",
                    format!("not an API Gateway HTTP API (v2) request: {e}"),
                )
                .to_response(),
            )
        }
    };
    let response = match convert::from_gateway(&request) {
        Ok(req) => service.handle(&req).await,
        Err(e) => e.to_response(),
    };
    convert::to_gateway(&response)
}
