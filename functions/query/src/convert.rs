//! API Gateway HTTP API (payload format 2.0) events to and from the core's plain requests.

use bytes::Bytes;
use lambda_http::aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_http::http::{HeaderName, HeaderValue};
use lambda_http::Body;
use lookalike::api::request::{decode_base64, encode_base64};
use lookalike::api::{ApiError, ApiRequest, ApiResponse};

/// The core request for an API Gateway event: the stage prefix is removed from the path (a named
/// stage appears in `rawPath`; `$default` does not), a base64 body is decoded (400 if invalid).
pub fn from_gateway(event: &ApiGatewayV2httpRequest) -> Result<ApiRequest, ApiError> {
    let ctx = &event.request_context;
    let mut path = event
        .raw_path
        .clone()
        .or_else(|| ctx.http.path.clone())
        .unwrap_or_else(|| "/".into());
    if let Some(stage) = ctx
        .stage
        .as_deref()
        .filter(|s| !s.is_empty() && *s != "$default")
    {
        let prefix = format!("/{stage}");
        if path == prefix || path.starts_with(&format!("{prefix}/")) {
            path = path[prefix.len()..].to_string();
            if path.is_empty() {
                path = "/".into();
            }
        }
    }
    let content_type = event
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match &event.body {
        None => Bytes::new(),
        Some(b) if event.is_base64_encoded => Bytes::from(decode_base64(b)?),
        Some(b) => Bytes::from(b.clone().into_bytes()),
    };
    let if_none_match = event
        .headers
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(ApiRequest {
        method: ctx.http.method.as_str().to_string(),
        path,
        query: event.raw_query_string.clone().unwrap_or_default(),
        content_type,
        body,
        if_none_match,
    })
}

/// Whether a body of this content type is text (sent as is); others go base64-encoded.
fn is_text(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|t| {
        let t = t.to_ascii_lowercase();
        t.starts_with("text/") || t.starts_with("application/json")
    })
}

/// The API Gateway response for a core response (JSON and the page as text, anything else
/// base64-encoded).
pub fn to_gateway(response: &ApiResponse) -> ApiGatewayV2httpResponse {
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(response.status);
    for (name, value) in &response.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.headers.insert(n, v);
        }
    }
    if is_text(response.header("content-type")) {
        out.body = Some(Body::Text(
            String::from_utf8_lossy(&response.body).into_owned(),
        ));
        out.is_base64_encoded = false;
    } else {
        out.body = Some(Body::Text(encode_base64(&response.body)));
        out.is_base64_encoded = true;
    }
    out
}
