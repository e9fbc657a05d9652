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
    let env = &config.env;
    let card = env.model_card()?;
    let store = env.open_store().await?;
    // The model loads on one core while the snapshot downloads and opens: the index needs only
    // the model's identity from its card.
    let loading = {
        let env = env.clone();
        lookalike::task::blocking(move || {
            let t = Instant::now();
            env.load_model()
                .map(|e| (e, t.elapsed().as_secs_f64() * 1e3))
        })
    };
    let opening = async {
        let t = Instant::now();
        let index = QueryService::open_index(
            store.clone(),
            &env.cache_dir,
            card.model_ref(),
            &config.service,
        )
        .await;
        (index, t.elapsed().as_secs_f64() * 1e3)
    };
    let (loaded, (index, opened_ms)) = tokio::join!(loading, opening);
    let (encoder, model_ms) = loaded??;
    let encoder = Arc::new(encoder);
    let service = match index {
        Ok(index) => QueryService::with_index(
            store,
            &env.cache_dir,
            encoder,
            config.service.clone(),
            index,
        ),
        // Reported below: the service opens the index again, and keeps trying per request.
        Err(_) => QueryService::new(store, &env.cache_dir, encoder, config.service.clone()),
    };
    let t = Instant::now();
    let snapshot = service.snapshot().await;
    let snapshot_ms = opened_ms.max(t.elapsed().as_secs_f64() * 1e3);
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
