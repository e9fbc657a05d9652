//! The HTTP search API, independent of how a request arrives (API Gateway through the query
//! Lambda today). A request is plain data ([`ApiRequest`]); [`QueryService::handle`] answers it
//! with a JSON [`ApiResponse`] and never panics.
//!
//! | route | answer |
//! |---|---|
//! | `POST /search?k=&category=` | image body (JPEG, PNG, WebP, GIF, BMP) or JSON `{"key"}` / `{"image_base64"}` |
//! | `GET /items/{key}/similar?k=&category=` | the images similar to an indexed one |
//! | `GET /items/{key}/duplicates?min_score=`, `POST /duplicates` | every image at least that similar (up to 100) |
//! | any search: `filter=`, `offset=`, `min_score=` | a metadata filter, a page, a threshold |
//! | `GET /stats` | items, segments, version, model, categories |
//! | `GET /openapi.json` | [`OPENAPI`] |
//! | `GET /` | the search page, [`PAGE`] |
//! | `GET /images/{key}` | an indexed image of a folder (only with [`ServiceConfig::serve_images`]) |
//!
//! - [`error`]: the JSON error body and the status of every failure.
//! - [`request`]: parsing a request (path, query string, content type, body) into a [`Route`].
//! - [`service`]: the snapshot (checked at most once per interval), the search, presigned URLs.

pub mod error;
pub mod request;
pub mod service;

pub use error::ApiError;
pub use request::{ApiRequest, Route, SearchInput, SearchParams};
pub use service::{QueryService, ServiceConfig};

/// The search page (`GET /`): one self-contained HTML file that uses the routes above through
/// URLs relative to itself, so it works at the root of `lookalike serve` and under an API
/// Gateway stage path alike.
pub const PAGE: &str = include_str!("page.html");

/// The OpenAPI 3 description of the API (`docs/openapi.json`).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// An HTTP response: a status, headers and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// A JSON response.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Self {
        // Serialising our own plain structs cannot fail; fall back to an empty object anyway.
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        ApiResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        }
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}
