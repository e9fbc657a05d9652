//! Every failure of the API as `{"error": "<code>", "message": "..."}` with its HTTP status.

use serde::Serialize;

use super::ApiResponse;
use crate::index::IndexError;
use crate::model::encoder::EncodeError;
use crate::preprocess::ImageError;
use crate::query::QueryError;

/// Seconds a client should wait before retrying a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An API error: the HTTP status, a stable code and a message for people, sent as a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// A stable, machine-readable code (`bad_k`, `invalid_image`, ...).
    pub code: &'static str,
    /// What went wrong, in words.
    pub message: String,
    /// `Retry-After` seconds (503 only).
    pub retry_after: Option<u64>,
    /// What caused it, for the log only: paths and backend errors never reach the client.
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            detail: None,
        }
    }

    /// The same error with `detail` for the log (never sent).
    pub fn with_detail(mut self, detail: impl ToString) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// A 404 (`not_found`).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// A 413 (`too_large`).
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "payload_too_large", message)
    }

    /// A 415 (`unsupported_media_type`).
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "unsupported_media_type", message)
    }

    /// A 500 (`internal`); the message goes to the client, so it must not carry internals.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The index cannot be read right now; the client should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(RETRY_AFTER_SECS),
            ..Self::new(503, "index_unavailable", message)
        }
    }

    /// The JSON response.
    pub fn to_response(&self) -> ApiResponse {
        let mut r = ApiResponse::json(
            self.status,
            &Body {
                error: self.code,
                message: &self.message,
            },
        );
        if let Some(s) = self.retry_after {
            r.headers.push(("retry-after".into(), s.to_string()));
        }
        r
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::TooManyBytes { .. } | ImageError::TooLarge { .. } => {
                Self::too_large(e.to_string())
            }
            // Anything else means the body is not a usable image: the request is bad.
            _ => Self::bad_request("invalid_image", e.to_string()),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Store(_)
            | IndexError::Corrupt(..)
            | IndexError::Contention(_)
            | IndexError::NoSpace { .. } => {
                Self::unavailable("the index cannot be read now; retry shortly").with_detail(e)
            }
            // Names the two models, nothing else: what an operator needs to see the fix.
            IndexError::ModelMismatch { .. } => Self::new(500, "model_mismatch", e.to_string()),
            _ => Self::internal("the index failed to answer").with_detail(e),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::BadK(_) => Self::bad_request("bad_k", e.to_string()),
            QueryError::BadOffset { .. } => Self::bad_request("bad_offset", e.to_string()),
            QueryError::BadMinScore(_) => Self::bad_request("bad_min_score", e.to_string()),
            QueryError::UnknownKey(_) => Self::new(404, "unknown_key", e.to_string()),
            QueryError::Image(EncodeError::Image(img)) => img.into(),
            QueryError::Image(EncodeError::Model(m)) => {
                Self::internal("the encoder failed").with_detail(m)
            }
            QueryError::Index(i) => i.into(),
        }
    }
}
