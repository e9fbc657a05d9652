//! A request as plain data, and its parsing into a [`Route`]: path, query string, content type and
//! body are checked here, so the service only sees valid searches.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::ApiError;
use crate::query::{check_k, DEFAULT_K};

/// An HTTP request: `path` and `query` as they came over the wire (percent-encoded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The body (already base64-decoded).
    pub body: Bytes,
}

/// Number of results and the category filter of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchParams {
    /// Number of results.
    pub k: usize,
    /// Only items of this category.
    pub category: Option<String>,
}

/// What to search with.
#[derive(Debug, Clone, PartialEq)]
pub enum SearchInput {
    /// Encoded image bytes.
    Image(Bytes),
    /// An indexed key.
    Key(String),
}

/// A valid request.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A search by image or key.
    Search(SearchInput, SearchParams),
    /// `GET /stats`.
    Stats,
    /// `GET /openapi.json`.
    OpenApi,
}

/// Media types accepted as a raw image body (the format itself is sniffed from the bytes).
pub const IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "application/octet-stream",
];

/// The JSON body of `POST /search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    key: Option<String>,
    image_base64: Option<String>,
    k: Option<i64>,
    category: Option<String>,
}

/// Standard base64 with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode base64 (standard alphabet, padding optional, line breaks ignored, an optional
/// `data:<type>;base64,` prefix stripped).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    let text = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text,
    };
    let compact: String;
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        compact = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        &compact
    } else {
        text
    };
    BASE64.decode(text).map_err(|e| {
        ApiError::bad_request(
            "invalid_base64",
            format!("the body is not valid base64: {e}"),
        )
    })
}

/// The media type of a `Content-Type` value, lower case, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl ApiRequest {
    /// Parse into a route; images larger than `max_image_bytes` are refused with 413.
    pub fn route(&self, max_image_bytes: usize) -> Result<Route, ApiError> {
        let path = self.path.trim_end_matches('/');
        let method = self.method.to_ascii_uppercase();
        let allow = |allowed: &str| -> Result<(), ApiError> {
            if method == allowed || (allowed == "GET" && method == "HEAD") {
                Ok(())
            } else {
                Err(ApiError::new(
                    405,
                    "method_not_allowed",
                    format!("{} {path} is not supported; use {allowed}", self.method),
                ))
            }
        };
        match path {
            "/search" => {
                allow("POST")?;
                self.search(max_image_bytes)
            }
            "/stats" => allow("GET").map(|_| Route::Stats),
            "/openapi.json" => allow("GET").map(|_| Route::OpenApi),
            _ => match path
                .strip_prefix("/items/")
                .and_then(|p| p.strip_suffix("/similar"))
            {
                Some(raw_key) if !raw_key.is_empty() => {
                    allow("GET")?;
                    let key = percent_encoding::percent_decode_str(raw_key)
                        .decode_utf8()
                        .map_err(|_| {
                            ApiError::bad_request("bad_key", "the key is not valid UTF-8")
                        })?
                        .into_owned();
                    Ok(Route::Search(SearchInput::Key(key), self.params()?))
                }
                _ => Err(ApiError::not_found(format!(
                    "no route for {} {}; see GET /openapi.json",
                    self.method, self.path
                ))),
            },
        }
    }

    /// `k` and `category` from the query string.
    fn params(&self) -> Result<SearchParams, ApiError> {
        let mut params = SearchParams {
            k: DEFAULT_K,
            category: None,
        };
        for (name, value) in form_urlencoded::parse(self.query.as_bytes()) {
            match name.as_ref() {
                "k" => params.k = parse_k(&value)?,
                "category" if !value.is_empty() => params.category = Some(value.into_owned()),
                _ => {}
            }
        }
        Ok(params)
    }

    fn search(&self, max_image_bytes: usize) -> Result<Route, ApiError> {
        let mut params = self.params()?;
        let Some(content_type) = self.content_type.as_deref().map(media_type) else {
            return Err(ApiError::unsupported_media_type(
                "missing Content-Type: send an image (image/jpeg, image/png, image/webp) or application/json",
            ));
        };
        if content_type == "application/json" {
            // base64 takes 4 bytes for every 3, plus room for the other fields.
            let max_json = max_image_bytes / 3 * 4 + 64 * 1024;
            if self.body.len() > max_json {
                return Err(ApiError::too_large(format!(
                    "the JSON body is {} bytes; the limit is {max_json} bytes",
                    self.body.len()
                )));
            }
            let body: SearchBody = serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::bad_request(
                    "invalid_json",
                    format!("the body is not a valid search request: {e}"),
                )
            })?;
            if let Some(k) = body.k {
                params.k = check_k(k).map_err(|e| ApiError::bad_request("bad_k", e.to_string()))?;
            }
            if let Some(c) = body.category.filter(|c| !c.is_empty()) {
                params.category = Some(c);
            }
            let input = match (body.key, body.image_base64) {
                (Some(key), None) => SearchInput::Key(key),
                (None, Some(b64)) => {
                    let bytes = decode_base64(&b64)?;
                    check_size(bytes.len(), max_image_bytes)?;
                    SearchInput::Image(bytes.into())
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_json",
                        "give exactly one of \"key\" and \"image_base64\"",
                    ))
                }
            };
            Ok(Route::Search(input, params))
        } else if IMAGE_TYPES.contains(&content_type.as_str()) {
            if self.body.is_empty() {
                return Err(ApiError::bad_request("invalid_image", "the body is empty"));
            }
            check_size(self.body.len(), max_image_bytes)?;
            Ok(Route::Search(SearchInput::Image(self.body.clone()), params))
        } else {
            Err(ApiError::unsupported_media_type(format!(
                "Content-Type {content_type} is not supported: send image/jpeg, image/png, image/webp or application/json"
            )))
        }
    }
}

fn parse_k(value: &str) -> Result<usize, ApiError> {
    let k: i64 = value.trim().parse().map_err(|_| {
        ApiError::bad_request("bad_k", format!("k must be an integer, got {value:?}"))
    })?;
    check_k(k).map_err(|e| ApiError::bad_request("bad_k", e.to_string()))
}

fn check_size(len: usize, max: usize) -> Result<(), ApiError> {
    if len > max {
        Err(ApiError::too_large(format!(
            "the image is {len} bytes; the limit is {max} bytes"
        )))
    } else {
        Ok(())
    }
}
