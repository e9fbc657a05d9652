//! The HTTP server of `lookalike serve`: HTTP/1.1 (hyper) on a TCP listener. Each request
//! becomes an [`ApiRequest`] and is answered by [`QueryService::handle`], the same code the
//! query Lambda runs; bodies over the service's limit are refused with 413 before they are read
//! whole. Shutdown is graceful: the listener closes, requests in flight finish (for at most
//! [`DRAIN_TIMEOUT`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api::{ApiError, ApiRequest, ApiResponse, QueryService};

/// How long requests in flight may take to finish after shutdown was asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A client has this long to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request body read: a base64 JSON body of the largest accepted image, plus room for
/// the other fields (what [`ApiRequest::route`] accepts at most).
pub fn max_body_bytes(max_image_bytes: usize) -> usize {
    max_image_bytes / 3 * 4 + 64 * 1024
}

/// Answer requests on `listener` until `shutdown` completes, then drain.
pub async fn serve(
    listener: TcpListener,
    service: Arc<QueryService>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = service.clone();
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| {
                            let service = service.clone();
                            async move { Ok::<_, Infallible>(answer(&service, req).await) }
                        }),
                    );
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn answer(service: &QueryService, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let response = match read_request(service, req).await {
        Ok(req) => service.handle(&req).await,
        Err(e) => e.to_response(),
    };
    to_hyper(response)
}

/// The core request for an HTTP request; a body over the limit is a 413.
async fn read_request(
    service: &QueryService,
    req: Request<Incoming>,
) -> Result<ApiRequest, ApiError> {
    let max = max_body_bytes(service.config().limits.max_bytes);
    let too_large = || ApiError::too_large(format!("the body is over {max} bytes"));
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                too_large()
            } else {
                ApiError::bad_request("bad_body", "the request body could not be read")
                    .with_detail(e)
            }
        })?
        .to_bytes();
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok(ApiRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        content_type: header(hyper::header::CONTENT_TYPE),
        body,
        if_none_match: header(hyper::header::IF_NONE_MATCH),
    })
}

fn to_hyper(response: ApiResponse) -> Response<Full<Bytes>> {
    let mut out = Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &response.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            out.headers_mut().append(n, v);
        }
    }
    out
}
