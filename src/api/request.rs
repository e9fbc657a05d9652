//! A request as plain data, and its parsing into a [`Route`]: path, query string, content type and
//! body are checked here, so the service only sees valid searches.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use super::ApiError;
use crate::index::filter;
pub use crate::query::SearchOptions as SearchParams;
use crate::query::{check_k, check_min_score, check_offset, DEFAULT_MIN_SCORE};

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
    /// The `If-None-Match` header (`GET /images/{key}` answers 304 when it names the image).
    pub if_none_match: Option<String>,
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
    /// `GET /`: the search page.
    Page,
    /// `GET /images/{key}`: an indexed image of a local-folder index (`lookalike serve`).
    Image(String),
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

/// Longest object key S3 allows, in bytes; a longer one cannot name an indexed item.
pub const MAX_KEY_BYTES: usize = 1024;

/// A key a search may name: not empty, at most [`MAX_KEY_BYTES`], no NUL.
fn check_key(key: String) -> Result<String, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("bad_key", "the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "bad_key",
            format!(
                "the key is {} bytes; object keys are at most {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    if key.contains('\0') {
        return Err(ApiError::bad_request(
            "bad_key",
            "the key contains a NUL character",
        ));
    }
    Ok(key)
}

/// A key from a path segment: percent-decoded (an encoded slash is a slash of the key), UTF-8,
/// and checked by [`check_key`].
fn decode_key(raw: &str) -> Result<String, ApiError> {
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("bad_key", "the key is not valid UTF-8"))?
        .into_owned();
    check_key(key)
}

/// `key` as a URL path: each segment percent-encoded, slashes kept (what the routes decode).
pub fn encode_key_path(key: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let encoded: Vec<String> = key
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect();
    encoded.join("/")
}

/// The path of `key` under `/images/`, relative to the API's base.
pub fn image_path(key: &str) -> String {
    format!("images/{}", encode_key_path(key))
}

/// The JSON body of `POST /search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    key: Option<String>,
    image_base64: Option<String>,
    k: Option<i64>,
    category: Option<String>,
    /// A JSON filter object, or the compact form as a string.
    filter: Option<serde_json::Value>,
    offset: Option<i64>,
    min_score: Option<f64>,
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

/// Standard base64 with padding (binary response bodies through API Gateway).
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
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
            "" | "/index.html" => allow("GET").map(|_| Route::Page),
            "/search" => {
                allow("POST")?;
                self.search(max_image_bytes, SearchParams::default())
            }
            "/duplicates" => {
                allow("POST")?;
                self.search(max_image_bytes, duplicates())
            }
            "/stats" => allow("GET").map(|_| Route::Stats),
            "/openapi.json" => allow("GET").map(|_| Route::OpenApi),
            _ => {
                if let Some(raw_key) = self.path.strip_prefix("/images/").filter(|k| !k.is_empty())
                {
                    allow("GET")?;
                    return Ok(Route::Image(decode_key(raw_key)?));
                }
                let item = path.strip_prefix("/items/");
                let similar = item.and_then(|p| p.strip_suffix("/similar"));
                let dups = item.and_then(|p| p.strip_suffix("/duplicates"));
                match similar.map(|k| (k, false)).or(dups.map(|k| (k, true))) {
                    Some((raw_key, dups)) if !raw_key.is_empty() => {
                        allow("GET")?;
                        let key = decode_key(raw_key)?;
                        let defaults = if dups {
                            duplicates()
                        } else {
                            SearchParams::default()
                        };
                        Ok(Route::Search(SearchInput::Key(key), self.params(defaults)?))
                    }
                    _ => Err(ApiError::not_found(format!(
                        "no route for {} {}; see GET /openapi.json",
                        self.method, self.path
                    ))),
                }
            }
        }
    }

    /// `k`, `category`, `filter`, `offset` and `min_score` from the query string, over the
    /// route's defaults.
    fn params(&self, defaults: SearchParams) -> Result<SearchParams, ApiError> {
        let mut params = defaults;
        let mut offset = None;
        for (name, value) in form_urlencoded::parse(self.query.as_bytes()) {
            match name.as_ref() {
                "k" => params.k = parse_k(&value)?,
                "category" if !value.is_empty() => params.category = Some(value.into_owned()),
                "filter" if !value.trim().is_empty() => {
                    params.filter = Some(parse_filter_text(&value)?)
                }
                "offset" => offset = Some(parse_int("offset", "bad_offset", &value)?),
                "min_score" => params.min_score = Some(parse_min_score(&value)?),
                _ => {}
            }
        }
        params.offset = offset.map(|o| checked_offset(o, params.k)).transpose()?;
        Ok(params)
    }

    fn search(&self, max_image_bytes: usize, defaults: SearchParams) -> Result<Route, ApiError> {
        let mut params = self.params(defaults)?;
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
            match body.filter {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(text)) if text.trim().is_empty() => {}
                Some(serde_json::Value::String(text)) => {
                    params.filter = Some(parse_filter_text(&text)?)
                }
                Some(v) => {
                    params.filter = Some(filter::json::parse(&v).map_err(|e| {
                        ApiError::bad_request("bad_filter", format!("bad filter: {e}"))
                    })?)
                }
            }
            if let Some(m) = body.min_score {
                params.min_score = Some(checked_min_score(m)?);
            }
            if let Some(o) = body.offset {
                params.offset = Some(checked_offset(o, params.k)?);
            } else if let Some(o) = params.offset {
                params.offset = Some(checked_offset(o as i64, params.k)?);
            }
            let input = match (body.key, body.image_base64) {
                (Some(key), None) => SearchInput::Key(check_key(key)?),
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

/// An integer parameter; the error `code` when it is not one.
fn parse_int(name: &str, code: &'static str, value: &str) -> Result<i64, ApiError> {
    value.trim().parse().map_err(|_| {
        ApiError::bad_request(code, format!("{name} must be an integer, got {value:?}"))
    })
}

fn parse_k(value: &str) -> Result<usize, ApiError> {
    check_k(parse_int("k", "bad_k", value)?)
        .map_err(|e| ApiError::bad_request("bad_k", e.to_string()))
}

/// What a duplicates route searches for unless told: up to 100 results at or above the
/// default threshold.
fn duplicates() -> SearchParams {
    SearchParams::duplicates(DEFAULT_MIN_SCORE)
}

fn parse_min_score(value: &str) -> Result<f32, ApiError> {
    let m: f64 = value.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "bad_min_score",
            format!("min_score must be a number, got {value:?}"),
        )
    })?;
    checked_min_score(m)
}

fn checked_min_score(m: f64) -> Result<f32, ApiError> {
    check_min_score(m).map_err(|e| ApiError::bad_request("bad_min_score", e.to_string()))
}

fn checked_offset(offset: i64, k: usize) -> Result<usize, ApiError> {
    check_offset(offset, k).map_err(|e| ApiError::bad_request("bad_offset", e.to_string()))
}

/// A filter given as text: the compact form, or JSON when it starts with `{`.
fn parse_filter_text(text: &str) -> Result<filter::Filter, ApiError> {
    filter::text::parse_compact_or_json(text)
        .map_err(|e| ApiError::bad_request("bad_filter", format!("bad filter: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{DEFAULT_K, MAX_K};

    const MAX: usize = 1000;

    fn get(path: &str, query: &str) -> ApiRequest {
        ApiRequest {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            ..ApiRequest::default()
        }
    }

    fn post(query: &str, content_type: Option<&str>, body: impl Into<Bytes>) -> ApiRequest {
        ApiRequest {
            method: "POST".into(),
            path: "/search".into(),
            query: query.into(),
            content_type: content_type.map(str::to_string),
            body: body.into(),
            if_none_match: None,
        }
    }

    fn json(query: &str, body: serde_json::Value) -> ApiRequest {
        post(query, Some("application/json"), body.to_string())
    }

    fn image(query: &str, body: &'static [u8]) -> ApiRequest {
        post(query, Some("image/jpeg"), body)
    }

    fn params(k: usize, category: Option<&str>) -> SearchParams {
        SearchParams::top(k).in_category(category)
    }

    fn route(req: &ApiRequest) -> Route {
        req.route(MAX)
            .unwrap_or_else(|e| panic!("{req:?} was refused: {e}"))
    }

    /// The status and code of the refusal of `req`.
    fn refusal(req: &ApiRequest) -> (u16, &'static str) {
        match req.route(MAX) {
            Ok(r) => panic!("{req:?} was accepted as {r:?}"),
            Err(e) => {
                assert_eq!(e.retry_after, None, "{e}");
                (e.status, e.code)
            }
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn every_route() {
        assert_eq!(
            route(&image("", b"jpeg")),
            Route::Search(
                SearchInput::Image(Bytes::from_static(b"jpeg")),
                params(DEFAULT_K, None)
            )
        );
        assert_eq!(route(&get("/stats", "")), Route::Stats);
        assert_eq!(route(&get("/openapi.json", "")), Route::OpenApi);
        assert_eq!(
            route(&get("/items/cats/chelsea.jpg/similar", "")),
            Route::Search(
                SearchInput::Key("cats/chelsea.jpg".into()),
                params(DEFAULT_K, None)
            )
        );
    }

    #[test]
    fn the_page_and_images_have_routes() {
        assert_eq!(route(&get("/", "")), Route::Page);
        assert_eq!(route(&get("", "")), Route::Page);
        assert_eq!(route(&get("/index.html", "")), Route::Page);
        assert_eq!(
            route(&get("/images/cats/chelsea.jpg", "")),
            Route::Image("cats/chelsea.jpg".into())
        );
        // An encoded slash is a slash of the key; `..` stays in the key (which no index holds).
        assert_eq!(
            route(&get("/images/cats%2Fa%20b.jpg", "")),
            Route::Image("cats/a b.jpg".into())
        );
        assert_eq!(route(&get("/images/../x", "")), Route::Image("../x".into()));
        assert_eq!(refusal(&get("/images/", "")).0, 404);
        assert_eq!(refusal(&get("/images/%00", "")), (400, "bad_key"));
        assert_eq!(refusal(&get("/images/%FF", "")), (400, "bad_key"));
        let mut post = get("/images/a.jpg", "");
        post.method = "POST".into();
        assert_eq!(refusal(&post).0, 405);
        let mut post = get("/", "");
        post.method = "POST".into();
        assert_eq!(refusal(&post).0, 405);
    }

    #[test]
    fn image_paths_encode_each_segment_and_route_back_to_their_key() {
        for key in [
            "cats/chelsea.jpg",
            "drinks/café au lait.jpg",
            "a/b?c#d%e.png",
            "x/+&=.jpg",
        ] {
            let path = format!("/{}", image_path(key));
            assert!(
                !path.contains(' ') && !path.contains('?') && !path.contains('#'),
                "{path}"
            );
            assert_eq!(route(&get(&path, "")), Route::Image(key.into()), "{path}");
        }
        assert_eq!(
            image_path("drinks/café au lait.jpg"),
            "images/drinks/caf%C3%A9%20au%20lait.jpg"
        );
    }

    #[test]
    fn a_trailing_slash_and_the_method_case_do_not_matter() {
        assert_eq!(route(&get("/stats/", "")), Route::Stats);
        assert_eq!(
            route(&ApiRequest {
                method: "get".into(),
                ..get("/openapi.json", "")
            }),
            Route::OpenApi
        );
        let mut req = image("", b"jpeg");
        req.method = "post".into();
        req.path = "/search/".into();
        assert!(matches!(
            route(&req),
            Route::Search(SearchInput::Image(_), _)
        ));
    }

    #[test]
    fn head_is_accepted_where_get_is() {
        for path in ["/stats", "/openapi.json", "/items/a.jpg/similar"] {
            let req = ApiRequest {
                method: "HEAD".into(),
                ..get(path, "")
            };
            assert!(req.route(MAX).is_ok(), "HEAD {path}");
        }
        let mut req = image("", b"jpeg");
        req.method = "HEAD".into();
        assert_eq!(refusal(&req), (405, "method_not_allowed"));
    }

    #[test]
    fn the_wrong_method_is_405() {
        let mut search = image("", b"jpeg");
        search.method = "GET".into();
        let wrong = [
            search,
            ApiRequest {
                method: "POST".into(),
                ..get("/stats", "")
            },
            ApiRequest {
                method: "DELETE".into(),
                ..get("/openapi.json", "")
            },
            ApiRequest {
                method: "PUT".into(),
                ..get("/items/a.jpg/similar", "")
            },
        ];
        for req in wrong {
            assert_eq!(refusal(&req), (405, "method_not_allowed"), "{req:?}");
            let e = req.route(MAX).unwrap_err();
            assert!(e.message.contains(&req.method), "{}", e.message);
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in [
            "/index.htm",
            "/nope",
            "/items",
            "/items/",
            "/items//similar",
            "/items/a.jpg",
            "/items/a.jpg/similar/more",
            "/search/more",
            "/Stats",
        ] {
            let e = get(path, "").route(MAX).unwrap_err();
            assert_eq!((e.status, e.code), (404, "not_found"), "{path:?}");
            assert!(e.message.contains("GET /openapi.json"), "{}", e.message);
        }
    }

    #[test]
    fn the_key_of_similar_is_percent_decoded() {
        let key = |path: &str| match route(&get(path, "")) {
            Route::Search(SearchInput::Key(k), _) => k,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(key("/items/cats%2Fchelsea.jpg/similar"), "cats/chelsea.jpg");
        assert_eq!(key("/items/a%20b+c.jpg/similar"), "a b+c.jpg");
        assert_eq!(key("/items/caf%C3%A9.jpg/similar"), "café.jpg");
        assert_eq!(key("/items/100%.jpg/similar"), "100%.jpg");
        assert_eq!(
            refusal(&get("/items/%FF.jpg/similar", "")),
            (400, "bad_key")
        );
        assert_eq!(refusal(&get("/items/a%00b/similar", "")), (400, "bad_key"));
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            refusal(&get(&format!("/items/{long}/similar"), "")),
            (400, "bad_key")
        );
        assert_eq!(
            key(&format!("/items/{}/similar", &long[1..])),
            &long[1..],
            "a key of exactly {MAX_KEY_BYTES} bytes is fine"
        );
    }

    #[test]
    fn an_empty_or_oversized_key_in_a_json_body_is_a_bad_key() {
        for key in [String::new(), "x".repeat(MAX_KEY_BYTES + 1), "a\0b".into()] {
            let e = json("", serde_json::json!({ "key": key }))
                .route(MAX)
                .unwrap_err();
            assert_eq!((e.status, e.code), (400, "bad_key"), "{key:?}");
        }
    }

    #[test]
    fn k_from_the_query_string() {
        let k = |query: &str| match route(&get("/items/a.jpg/similar", query)) {
            Route::Search(_, p) => p.k,
            other => panic!("{query}: {other:?}"),
        };
        assert_eq!(k(""), DEFAULT_K);
        assert_eq!(k("k=1"), 1);
        assert_eq!(k("k=5"), 5);
        assert_eq!(k(&format!("k={MAX_K}")), MAX_K);
        assert_eq!(k("k=%207%20"), 7, "spaces around the number");
        assert_eq!(k("other=1&k=3"), 3);
        for bad in [
            "k=0",
            "k=-1",
            &format!("k={}", MAX_K + 1),
            "k=abc",
            "k=1.5",
            "k=",
            "k=99999999999999999999",
        ] {
            assert_eq!(
                refusal(&get("/items/a.jpg/similar", bad)),
                (400, "bad_k"),
                "{bad}"
            );
            // The same check on a search.
            assert_eq!(refusal(&image(bad, b"jpeg")), (400, "bad_k"), "{bad}");
        }
    }

    #[test]
    fn the_category_filter() {
        let category = |query: &str| match route(&get("/items/a.jpg/similar", query)) {
            Route::Search(_, p) => p.category,
            other => panic!("{query}: {other:?}"),
        };
        assert_eq!(category(""), None);
        assert_eq!(category("category="), None, "empty means no filter");
        assert_eq!(category("category=cats").as_deref(), Some("cats"));
        assert_eq!(
            category("category=home+decor").as_deref(),
            Some("home decor")
        );
        assert_eq!(category("category=caf%C3%A9&k=3").as_deref(), Some("café"));
        assert_eq!(
            route(&image("k=3&category=cats", b"jpeg")),
            Route::Search(
                SearchInput::Image(Bytes::from_static(b"jpeg")),
                params(3, Some("cats"))
            )
        );
    }

    #[test]
    fn a_json_body_with_a_key() {
        assert_eq!(
            route(&json("", serde_json::json!({"key": "cats/chelsea.jpg"}))),
            Route::Search(
                SearchInput::Key("cats/chelsea.jpg".into()),
                params(DEFAULT_K, None)
            )
        );
        assert_eq!(
            route(&json(
                "",
                serde_json::json!({"key": "a.jpg", "k": 4, "category": "cats"})
            )),
            Route::Search(SearchInput::Key("a.jpg".into()), params(4, Some("cats")))
        );
    }

    #[test]
    fn a_json_body_with_base64() {
        let bytes = b"\x89PNG\r\n\x1a\n not really an image";
        let expect = Route::Search(
            SearchInput::Image(Bytes::from_static(bytes)),
            params(DEFAULT_K, None),
        );
        let encoded = b64(bytes);
        assert!(encoded.ends_with('='), "the test needs padding: {encoded}");
        let forms = [
            encoded.clone(),
            encoded.trim_end_matches('=').to_string(),
            format!("data:image/png;base64,{encoded}"),
            format!("{}\n{}\r\n", &encoded[..8], &encoded[8..]),
        ];
        for form in forms {
            assert_eq!(
                route(&json("", serde_json::json!({"image_base64": form}))),
                expect,
                "{form:?}"
            );
        }
    }

    #[test]
    fn the_json_body_overrides_the_query_string() {
        let req = json(
            "k=2&category=cats",
            serde_json::json!({"key": "a.jpg", "k": 7, "category": "dogs"}),
        );
        assert_eq!(
            route(&req),
            Route::Search(SearchInput::Key("a.jpg".into()), params(7, Some("dogs")))
        );
        // Fields the body leaves out (or an empty category) keep the query string's.
        let req = json(
            "k=2&category=cats",
            serde_json::json!({"key": "a.jpg", "category": ""}),
        );
        assert_eq!(
            route(&req),
            Route::Search(SearchInput::Key("a.jpg".into()), params(2, Some("cats")))
        );
    }

    #[test]
    fn bad_json_bodies() {
        let invalid = [
            serde_json::json!({}),
            serde_json::json!({"key": "a.jpg", "image_base64": b64(b"x")}),
            serde_json::json!({"key": "a.jpg", "colour": "red"}),
            serde_json::json!({"key": 5}),
            serde_json::json!({"key": "a.jpg", "k": "5"}),
            serde_json::json!({"key": "a.jpg", "k": 1.5}),
            serde_json::json!(["a.jpg"]),
            serde_json::json!("a.jpg"),
        ];
        for body in invalid {
            assert_eq!(
                refusal(&json("", body.clone())),
                (400, "invalid_json"),
                "{body}"
            );
        }
        for text in ["", "{", "key=a.jpg", "\u{FFFD}"] {
            let req = post("", Some("application/json"), text.to_string());
            assert_eq!(refusal(&req), (400, "invalid_json"), "{text:?}");
        }
        for k in [0, -3, MAX_K as i64 + 1] {
            let req = json("", serde_json::json!({"key": "a.jpg", "k": k}));
            assert_eq!(refusal(&req), (400, "bad_k"), "{k}");
        }
        for text in ["not base64!", "QUJD*", "data:image/png;base64,@@@"] {
            let req = json("", serde_json::json!({"image_base64": text}));
            assert_eq!(refusal(&req), (400, "invalid_base64"), "{text:?}");
        }
    }

    #[test]
    fn content_types() {
        for t in IMAGE_TYPES {
            let req = post("", Some(t), &b"bytes"[..]);
            assert!(
                matches!(route(&req), Route::Search(SearchInput::Image(_), _)),
                "{t}"
            );
        }
        // Parameters and case are ignored.
        for t in ["IMAGE/PNG", "image/jpeg; charset=binary", " image/webp "] {
            let req = post("", Some(t), &b"bytes"[..]);
            assert!(
                matches!(route(&req), Route::Search(SearchInput::Image(_), _)),
                "{t}"
            );
        }
        let body = serde_json::json!({"key": "a.jpg"}).to_string();
        for t in ["application/json; charset=utf-8", "Application/JSON"] {
            let req = post("", Some(t), body.clone());
            assert_eq!(
                route(&req),
                Route::Search(SearchInput::Key("a.jpg".into()), params(DEFAULT_K, None)),
                "{t}"
            );
        }
        for t in [
            None,
            Some("text/plain"),
            Some("image/tiff"),
            Some("multipart/form-data; boundary=x"),
            Some(""),
        ] {
            let req = post("", t, &b"bytes"[..]);
            assert_eq!(refusal(&req), (415, "unsupported_media_type"), "{t:?}");
        }
    }

    #[test]
    fn an_empty_image_body_is_400() {
        assert_eq!(refusal(&image("", b"")), (400, "invalid_image"));
    }

    #[test]
    fn sizes_at_and_over_the_limit() {
        let at = vec![7u8; MAX];
        let over = vec![7u8; MAX + 1];
        let raw = |b: &[u8]| post("", Some("image/png"), b.to_vec());
        let based = |b: &[u8]| json("", serde_json::json!({"image_base64": b64(b)}));
        assert!(raw(&at).route(MAX).is_ok());
        assert!(based(&at).route(MAX).is_ok());
        assert_eq!(refusal(&raw(&over)), (413, "payload_too_large"));
        assert_eq!(refusal(&based(&over)), (413, "payload_too_large"));
        // A JSON body is refused before parsing when it could not hold an image within the
        // limit (4 bytes of base64 for 3 of image, plus 64 KiB for the other fields).
        let max_json = MAX / 3 * 4 + 64 * 1024;
        let padded = |n: usize| {
            let mut text = String::from(r#"{"key": "a.jpg"}"#);
            text.push_str(&" ".repeat(n - text.len()));
            post("", Some("application/json"), text)
        };
        assert!(padded(max_json).route(MAX).is_ok());
        assert_eq!(refusal(&padded(max_json + 1)), (413, "payload_too_large"));
    }

    #[test]
    fn media_type_and_base64_on_their_own() {
        assert_eq!(media_type("Image/JPEG; q=1"), "image/jpeg");
        assert_eq!(media_type(""), "");
        assert_eq!(decode_base64("QUJD").unwrap(), b"ABC");
        assert_eq!(decode_base64("QUI").unwrap(), b"AB");
        assert_eq!(decode_base64("QUI=").unwrap(), b"AB");
        assert_eq!(decode_base64("data:x;base64,QUJD").unwrap(), b"ABC");
        assert_eq!(decode_base64(" QU\tJD\n").unwrap(), b"ABC");
        // Only a `data:` prefix is stripped.
        let e = decode_base64("x;base64,QUJD").unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_base64"));
    }
}
