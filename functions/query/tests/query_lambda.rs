//! The query function's handler, driven with the `events/` files (API Gateway HTTP API v2
//! requests) against an index in a real S3 API (moto), built from real images with the real
//! encoder. Skipped with a message when moto or the model is missing (scripts/test.sh provides
//! both).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use lambda_http::Body;
use lookalike::api::{ApiRequest, QueryService, ServiceConfig};
use lookalike::index::segment::BuildParams;
use lookalike::index::writer::{self, CompactionPolicy};
use lookalike::index::Index;
use lookalike::ingest::Ingester;
use lookalike::preprocess::Limits;
use lookalike::store::{ObjectMeta, S3Store};
use serde_json::{json, Value};
use testkit::lambda::{event, put_object};

const FIXTURES: [(&str, &str); 3] = [
    ("catalog/cats/chelsea.jpg", "chelsea.jpg"),
    ("catalog/drinks/coffee.jpg", "coffee.jpg"),
    ("catalog/space/rocket.jpg", "rocket.jpg"),
];

use testkit::lambda::TestBucket;

/// A [`TestBucket`] with what the query service tests do with it.
struct Env(TestBucket);

impl std::ops::Deref for Env {
    type Target = TestBucket;
    fn deref(&self) -> &TestBucket {
        &self.0
    }
}

impl Env {
    /// `None` (after a SKIPPED line) without moto or the model.
    async fn new(name: &str) -> Option<Env> {
        TestBucket::new(name).await.map(Env)
    }

    /// A query "container": its own /tmp, manifest checks on every request.
    fn service_in(&self, cache: &Path, config: ServiceConfig) -> QueryService {
        QueryService::new(
            self.index_store.clone(),
            cache,
            self.encoder.clone(),
            config,
        )
    }

    fn service(&self) -> QueryService {
        self.service_in(&self.tempdir(), eager())
    }

    /// Upload `objects` and ingest them in one commit (as the ingest function does).
    async fn ingest(&self, objects: &[(String, Vec<u8>)]) {
        let mut metas = Vec::new();
        for (key, bytes) in objects {
            put_object(
                &self.client,
                &self.bucket,
                key,
                bytes.clone(),
                &[("shop", "test")],
            )
            .await;
            metas.push(ObjectMeta {
                key: key.clone(),
                size: bytes.len() as u64,
                etag: String::new(),
                metadata: Default::default(),
            });
        }
        let index = Index::open(self.index_store.clone(), &self.tempdir(), None)
            .await
            .unwrap();
        let ingester = Ingester {
            index: Arc::new(index),
            encoder: self.encoder.clone(),
            source: Arc::new(S3Store::new(self.client.clone(), &self.bucket, "")),
            limits: Limits::default(),
            metadata: None,
            build: BuildParams::default(),
        };
        let report = ingester.ingest(metas, Vec::new(), None).await.unwrap();
        assert_eq!(report.indexed(), objects.len(), "{:?}", report.items);
    }

    async fn ingest_fixtures(&self) {
        let objects: Vec<(String, Vec<u8>)> = FIXTURES
            .iter()
            .map(|(key, file)| (key.to_string(), fixture(file)))
            .collect();
        self.ingest(&objects).await;
    }
}

/// Check the manifest on every request (tests change the index between requests).
fn eager() -> ServiceConfig {
    ServiceConfig {
        check_interval: Duration::ZERO,
        ..ServiceConfig::default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(testkit::fixture(name)).unwrap()
}

struct Reply {
    status: i64,
    body: Value,
    response: ApiGatewayV2httpResponse,
}

/// Send an API Gateway event through the function's handler.
async fn send(service: &QueryService, event: Value) -> Reply {
    let response = lookalike_query::handle(service, event).await;
    let text = match &response.body {
        Some(Body::Text(t)) => t.clone(),
        other => panic!("expected a text body, got {other:?}"),
    };
    assert_eq!(
        response.headers.get("content-type").unwrap(),
        "application/json"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text}"));
    Reply {
        status: response.status_code,
        body,
        response,
    }
}

/// An HTTP API request from the `events/` templates.
fn http(
    method: &str,
    path: &str,
    query: &str,
    content_type: Option<&str>,
    body: Option<Value>,
) -> Value {
    let mut ev = event("http-stats.json", "unused");
    ev["rawPath"] = json!(path);
    ev["requestContext"]["http"]["path"] = json!(path);
    ev["requestContext"]["http"]["method"] = json!(method);
    ev["rawQueryString"] = json!(query);
    if let Some(ct) = content_type {
        ev["headers"]["content-type"] = json!(ct);
    }
    if let Some(b) = body {
        ev["body"] = b;
    }
    ev
}

/// `POST /search` with a JSON body.
fn json_search(body: &str) -> Value {
    http(
        "POST",
        "/search",
        "",
        Some("application/json"),
        Some(json!(body)),
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Search with an image through API Gateway (base64 body).
fn image_event(bytes: &[u8], query: &str) -> Value {
    let mut ev = http(
        "POST",
        "/search",
        query,
        Some("image/jpeg"),
        Some(json!(b64(bytes))),
    );
    ev["isBase64Encoded"] = json!(true);
    ev
}

fn result_keys(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {body}"))
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect()
}

fn assert_error(reply: &Reply, status: i64, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["error"], code, "{}", reply.body);
    assert!(
        !reply.body["message"].as_str().unwrap_or("").is_empty(),
        "{}",
        reply.body
    );
}

#[test]
fn every_endpoint_answers_from_the_events_files() {
    testkit::block_on(async {
        let Some(env) = Env::new("endpoints").await else {
            return;
        };
        env.ingest_fixtures().await;
        let service = env.service();

        // POST /search with a base64 image (a thumbnail of chelsea.jpg), k=5.
        let r = send(&service, event("http-search-image.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let keys = result_keys(&r.body);
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0], "catalog/cats/chelsea.jpg");
        let top = &r.body["results"][0];
        assert_eq!(top["category"], "cats");
        assert_eq!(top["metadata"]["shop"], "test");
        assert!(top["score"].as_f64().unwrap() > 0.7, "{top}");
        assert_eq!(r.body["index_version"], 1);
        assert!(r.body["took_ms"].as_f64().unwrap() > 0.0);
        // The URL is a working presigned GET of the image.
        let url = top["url"].as_str().unwrap();
        assert!(url.contains("X-Amz-Signature"), "{url}");
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        let path = url
            .strip_prefix("http://127.0.0.1:")
            .expect("a loopback URL");
        let (port, path) = path.split_once('/').unwrap();
        let (status, bytes) = testkit::moto::http_get(port.parse().unwrap(), &format!("/{path}"));
        assert_eq!(status, 200);
        assert_eq!(bytes, fixture("chelsea.jpg"));

        // POST /search with JSON {"key"}: the key itself is left out.
        let r = send(&service, event("http-search-key.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let keys = result_keys(&r.body);
        assert_eq!(keys.len(), 2);
        assert!(!keys.contains(&"catalog/drinks/coffee.jpg".to_string()));

        // POST /search with JSON {"image_base64", "k", "category"}.
        let body =
            json!({"image_base64": b64(&fixture("rocket.jpg")), "k": 2, "category": "space"});
        let r = send(&service, json_search(&body.to_string())).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(result_keys(&r.body), vec!["catalog/space/rocket.jpg"]);

        // A category filter in the query string.
        let r = send(
            &service,
            image_event(&fixture("coffee.jpg"), "k=10&category=cats"),
        )
        .await;
        assert_eq!(result_keys(&r.body), vec!["catalog/cats/chelsea.jpg"]);

        // Metadata filters: the compact form in the query string (percent-encoded), JSON in
        // the body; a filter that keeps nothing answers no results, not an error.
        let r = send(
            &service,
            image_event(
                &fixture("coffee.jpg"),
                "filter=shop%3Dtest%2Ccategory%21%3Dcats",
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let keys = result_keys(&r.body);
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(!keys.contains(&"catalog/cats/chelsea.jpg".to_string()));
        let body = json!({"key": "catalog/drinks/coffee.jpg", "filter": {"category": {"$in": ["space"]}, "shop": "test"}});
        let r = send(&service, json_search(&body.to_string())).await;
        assert_eq!(result_keys(&r.body), vec!["catalog/space/rocket.jpg"]);
        let body = json!({"key": "catalog/drinks/coffee.jpg", "filter": "shop=other"});
        let r = send(&service, json_search(&body.to_string())).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(result_keys(&r.body).is_empty());

        // Pages: offset with k, and the next page's offset while there may be more.
        let page = |offset: usize| {
            http(
                "GET",
                "/items/catalog%2Fcats%2Fchelsea.jpg/similar",
                &format!("k=1&offset={offset}"),
                None,
                None,
            )
        };
        let first = send(&service, page(0)).await;
        assert_eq!(first.body["next_offset"], 1, "{}", first.body);
        let second = send(&service, page(1)).await;
        assert_eq!(second.body["next_offset"], 2);
        let third = send(&service, page(2)).await;
        assert!(result_keys(&third.body).is_empty());
        assert!(third.body.get("next_offset").is_none());
        let mut both = result_keys(&first.body);
        both.extend(result_keys(&second.body));
        let r = send(
            &service,
            http(
                "GET",
                "/items/catalog%2Fcats%2Fchelsea.jpg/similar",
                "k=2&offset=0",
                None,
                None,
            ),
        )
        .await;
        assert_eq!(result_keys(&r.body), both);

        // GET /items/{key}/similar, key URL-encoded (and with plain slashes too).
        let r = send(&service, event("http-similar.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let keys = result_keys(&r.body);
        assert_eq!(keys.len(), 2);
        assert!(!keys.contains(&"catalog/space/rocket.jpg".to_string()));
        let r = send(
            &service,
            http(
                "GET",
                "/items/catalog/space/rocket.jpg/similar",
                "k=1",
                None,
                None,
            ),
        )
        .await;
        assert_eq!(result_keys(&r.body).len(), 1);

        // GET /stats.
        let r = send(&service, event("http-stats.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["items"], 3);
        assert_eq!(r.body["segments"], 1);
        assert_eq!(r.body["version"], 1);
        assert_eq!(r.body["model"], env.encoder.model_id());
        assert_eq!(r.body["dims"], env.encoder.dims());
        assert_eq!(r.body["categories"]["cats"], 1);

        // GET /openapi.json: the document kept in the repository, describing these routes.
        let r = send(&service, http("GET", "/openapi.json", "", None, None)).await;
        assert_eq!(r.status, 200);
        let kept: Value = serde_json::from_str(
            &std::fs::read_to_string(testkit::repo_root().join("docs/openapi.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(r.body, kept);
        assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/search",
            "/items/{key}/similar",
            "/stats",
            "/openapi.json",
            "/",
        ] {
            assert!(
                r.body["paths"].get(path).is_some(),
                "{path} is not documented"
            );
        }

        // A named stage prefixes rawPath; it is not part of the route.
        let mut staged = http("GET", "/prod/stats", "", None, None);
        staged["requestContext"]["stage"] = json!("prod");
        assert_eq!(send(&service, staged).await.status, 200);

        // A raw (not base64) image body, as a direct HTTP server would pass it.
        let raw = ApiRequest {
            method: "POST".into(),
            path: "/search".into(),
            query: "k=1".into(),
            content_type: Some("image/jpeg".into()),
            body: Bytes::from(fixture("rocket.jpg")),
            if_none_match: None,
        };
        let r = service.handle(&raw).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            result_keys(&r.json_body()),
            vec!["catalog/space/rocket.jpg"]
        );
    });
}

#[test]
fn duplicates_are_the_variants_of_a_photo_and_not_the_other_photos() {
    testkit::block_on(async {
        let Some(env) = Env::new("duplicates").await else {
            return;
        };
        // The three photos and four near-duplicates of each (re-encoded, halved, cropped,
        // mirrored), in one commit.
        let mut objects = Vec::new();
        for (key, file) in FIXTURES {
            let bytes = fixture(file);
            for (kind, v) in testkit::variants::variants(&bytes) {
                objects.push((key.replace(".jpg", &format!("-{kind}.jpg")), v));
            }
            objects.push((key.to_string(), bytes));
        }
        env.ingest(&objects).await;
        let service = env.service();
        let family = |key: &str| {
            key.trim_end_matches(".jpg")
                .split('-')
                .next()
                .unwrap()
                .to_string()
        };
        for (key, _) in FIXTURES {
            let path = format!("/items/{}/duplicates", key.replace('/', "%2F"));
            // A loose threshold: all four variants, nothing else.
            let r = send(&service, http("GET", &path, "min_score=0.8", None, None)).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let keys = result_keys(&r.body);
            assert_eq!(keys.len(), 4, "{key}: {}", r.body["results"]);
            assert!(
                keys.iter().all(|k| family(k) == family(key)),
                "{key}: {keys:?}"
            );
            assert!(r.body["results"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["score"].as_f64().unwrap() >= 0.8));
            assert_eq!(r.body["truncated"], false);
            // The default threshold: some of them (BENCHMARKS.md: 82% of such pairs on
            // clothing-small), and still nothing else.
            let r = send(&service, http("GET", &path, "", None, None)).await;
            let keys = result_keys(&r.body);
            assert!(
                !keys.is_empty(),
                "{key}: no variant at the default threshold"
            );
            assert!(
                keys.iter().all(|k| family(k) == family(key)),
                "{key}: {keys:?}"
            );
        }
        // An uploaded image: its own indexed copy is a duplicate too (nothing is left out).
        let mut upload = image_event(&fixture("rocket.jpg"), "min_score=0.8");
        upload["rawPath"] = json!("/duplicates");
        upload["requestContext"]["http"]["path"] = json!("/duplicates");
        let r = send(&service, upload).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let keys = result_keys(&r.body);
        assert_eq!(keys.len(), 5, "{keys:?}");
        assert_eq!(keys[0], "catalog/space/rocket.jpg");
        // With k 2, the two best and the sign that more pass.
        let body = json!({"key": "catalog/cats/chelsea.jpg", "min_score": 0.8, "k": 2});
        let post = http(
            "POST",
            "/duplicates",
            "",
            Some("application/json"),
            Some(json!(body.to_string())),
        );
        let r = send(&service, post).await;
        assert_eq!(result_keys(&r.body).len(), 2);
        assert_eq!(r.body["truncated"], true);
        // Bad thresholds.
        for q in [
            "min_score=1.5",
            "min_score=high",
            "min_score=-2",
            "min_score=NaN",
        ] {
            let r = send(
                &service,
                http(
                    "GET",
                    "/items/catalog%2Fcats%2Fchelsea.jpg/duplicates",
                    q,
                    None,
                    None,
                ),
            )
            .await;
            assert_error(&r, 400, "bad_min_score");
        }
    });
}

#[test]
fn the_page_is_served_at_the_root_of_any_stage_and_images_stay_in_s3() {
    testkit::block_on(async {
        let Some(env) = Env::new("page").await else {
            return;
        };
        env.ingest_fixtures().await;
        let service = env.service();
        let mut staged = http("GET", "/prod", "", None, None);
        staged["requestContext"]["stage"] = json!("prod");
        let mut staged_slash = http("GET", "/prod/", "", None, None);
        staged_slash["requestContext"]["stage"] = json!("prod");
        for ev in [http("GET", "/", "", None, None), staged, staged_slash] {
            let response = lookalike_query::handle(&service, ev).await;
            assert_eq!(response.status_code, 200);
            assert_eq!(
                response.headers.get("content-type").unwrap(),
                "text/html; charset=utf-8"
            );
            assert!(!response.is_base64_encoded);
            match &response.body {
                Some(Body::Text(t)) => assert_eq!(t, lookalike::api::PAGE),
                other => panic!("expected the page, got {other:?}"),
            }
        }
        // The page's searches by key name the query image, with a presigned URL like the results.
        let r = send(
            &service,
            http(
                "GET",
                "/items/catalog/cats/chelsea.jpg/similar",
                "k=1",
                None,
                None,
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["query"]["key"], "catalog/cats/chelsea.jpg");
        assert_eq!(r.body["query"]["category"], "cats");
        let url = r.body["query"]["url"].as_str().unwrap();
        assert!(url.contains("X-Amz-Signature"), "{url}");
        // Images of an S3 index are not served through the function: they have presigned URLs.
        let r = send(
            &service,
            http("GET", "/images/catalog/cats/chelsea.jpg", "", None, None),
        )
        .await;
        assert_error(&r, 404, "not_found");
    });
}

#[test]
fn every_bad_request_gets_its_json_error() {
    testkit::block_on(async {
        let Some(env) = Env::new("errors").await else {
            return;
        };
        env.ingest_fixtures().await;
        let service = env.service();
        let jpeg = fixture("chelsea.jpg");

        // Invalid base64 with isBase64Encoded: true (lambda_http itself would panic on it).
        let r = send(&service, event("http-bad-request.json", &env.bucket)).await;
        assert_error(&r, 400, "invalid_base64");
        // Not an image.
        let r = send(
            &service,
            image_event(b"hello, this is not an image at all", ""),
        )
        .await;
        assert_error(&r, 400, "invalid_image");
        let mut truncated = jpeg.clone();
        truncated.truncate(500);
        assert_error(
            &send(&service, image_event(&truncated, "")).await,
            400,
            "invalid_image",
        );
        // Malformed JSON, unknown fields, neither/both of key and image_base64.
        for body in [
            "{\"key\": ",
            "{\"key\": \"a\", \"kk\": 3}",
            "{}",
            "{\"key\": \"a\", \"image_base64\": \"AAAA\"}",
            "[1, 2]",
        ] {
            let r = send(&service, json_search(body)).await;
            assert_error(&r, 400, "invalid_json");
        }
        let r = send(&service, json_search("{\"image_base64\": \"@@@\"}")).await;
        assert_error(&r, 400, "invalid_base64");
        // k outside 1..=100, in the query string and in JSON.
        for k in ["0", "101", "-3", "ten", "1.5"] {
            let r = send(&service, image_event(&jpeg, &format!("k={k}"))).await;
            assert_error(&r, 400, "bad_k");
        }
        for k in [0, 101] {
            let body = json!({"key": "catalog/cats/chelsea.jpg", "k": k}).to_string();
            let r = send(&service, json_search(&body)).await;
            assert_error(&r, 400, "bad_k");
        }
        assert_eq!(
            send(&service, image_event(&jpeg, "k=100")).await.status,
            200
        );
        // Malformed filters name the problem; offsets past the deepest page are refused.
        for (query, says) in [
            ("filter=color", "expected an operator after color"),
            ("filter=price%3Eten", "takes a number"),
            ("filter=%7B%22a%22%3A", "not valid JSON"),
            (
                "filter=%7B%22a%22%3A%7B%22%24like%22%3A1%7D%7D",
                "unknown operator $like",
            ),
        ] {
            let r = send(&service, image_event(&jpeg, query)).await;
            assert_error(&r, 400, "bad_filter");
            assert!(
                r.body["message"].as_str().unwrap().contains(says),
                "{query}: {}",
                r.body
            );
        }
        let body = json!({"key": "catalog/cats/chelsea.jpg", "filter": {"price": {"$gt": "ten"}}});
        assert_error(
            &send(&service, json_search(&body.to_string())).await,
            400,
            "bad_filter",
        );
        let body = json!({"key": "catalog/cats/chelsea.jpg", "filter": [1]});
        assert_error(
            &send(&service, json_search(&body.to_string())).await,
            400,
            "bad_filter",
        );
        for query in [
            "offset=-1",
            "offset=x",
            "offset=495&k=10",
            "k=100&offset=401",
        ] {
            let r = send(&service, image_event(&jpeg, query)).await;
            assert_error(&r, 400, "bad_offset");
        }
        let body = json!({"key": "catalog/cats/chelsea.jpg", "offset": 600});
        assert_error(
            &send(&service, json_search(&body.to_string())).await,
            400,
            "bad_offset",
        );
        // Unknown key, unknown route, wrong method.
        let r = send(
            &service,
            http("GET", "/items/no%2Fsuch.jpg/similar", "", None, None),
        )
        .await;
        assert_error(&r, 404, "unknown_key");
        let body = json!({"key": "no/such.jpg"}).to_string();
        let r = send(&service, json_search(&body)).await;
        assert_error(&r, 404, "unknown_key");
        // An empty, oversized or NUL key is a bad request, and the answer names no path.
        for key in [String::new(), "k".repeat(1025), "a\0b".into()] {
            let r = send(&service, json_search(&json!({ "key": key }).to_string())).await;
            assert_error(&r, 400, "bad_key");
            assert!(!r.body.to_string().contains("/tmp"), "{}", r.body);
        }
        let r = send(&service, http("GET", "/items/%00/similar", "", None, None)).await;
        assert_error(&r, 400, "bad_key");
        assert_error(
            &send(&service, http("GET", "/nope", "", None, None)).await,
            404,
            "not_found",
        );
        assert_error(
            &send(&service, http("GET", "/search", "", None, None)).await,
            405,
            "method_not_allowed",
        );
        // Unsupported or missing content type.
        let mut ev = image_event(&jpeg, "");
        ev["headers"]["content-type"] = json!("text/plain");
        assert_error(&send(&service, ev).await, 415, "unsupported_media_type");
        let mut ev = image_event(&jpeg, "");
        ev["headers"]
            .as_object_mut()
            .unwrap()
            .remove("content-type");
        assert_error(&send(&service, ev).await, 415, "unsupported_media_type");
        // Not an API Gateway event at all.
        assert_error(
            &send(&service, json!({"hello": 1})).await,
            400,
            "invalid_event",
        );

        // A body at the limit is answered, one byte over is 413 (raw and base64 in JSON).
        let limited = env.service_in(
            &env.tempdir(),
            ServiceConfig {
                limits: Limits {
                    max_bytes: jpeg.len(),
                    ..eager().limits
                },
                ..eager()
            },
        );
        assert_eq!(send(&limited, image_event(&jpeg, "k=1")).await.status, 200);
        let mut over = jpeg.clone();
        over.push(0);
        assert_error(
            &send(&limited, image_event(&over, "k=1")).await,
            413,
            "payload_too_large",
        );
        let body = json!({"image_base64": b64(&over)}).to_string();
        let r = send(&limited, json_search(&body)).await;
        assert_error(&r, 413, "payload_too_large");
        // Too many pixels is 413 too.
        let pixels = env.service_in(
            &env.tempdir(),
            ServiceConfig {
                limits: Limits {
                    max_pixels: 1000,
                    ..eager().limits
                },
                ..eager()
            },
        );
        assert_error(
            &send(&pixels, image_event(&jpeg, "")).await,
            413,
            "payload_too_large",
        );
    });
}

#[test]
fn no_index_yet_is_empty_and_an_unreachable_store_is_503() {
    testkit::block_on(async {
        let Some(env) = Env::new("empty").await else {
            return;
        };
        let service = env.service();
        let r = send(&service, event("http-stats.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["items"], 0);
        let r = send(&service, event("http-search-image.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(result_keys(&r.body), Vec::<String>::new());
        assert_eq!(r.body["index_version"], 0);

        // A store that cannot be reached.
        let unreachable = QueryService::new(
            Arc::new(S3Store::new(
                testkit::moto::unreachable_client(),
                "b",
                "index",
            )),
            env.tempdir(),
            env.encoder.clone(),
            eager(),
        );
        for ev in [
            event("http-stats.json", &env.bucket),
            event("http-search-image.json", &env.bucket),
        ] {
            let r = send(&unreachable, ev).await;
            assert_error(&r, 503, "index_unavailable");
            assert_eq!(r.response.headers.get("retry-after").unwrap(), "5");
            // The backend's error (addresses, SDK text) goes to the log, not to the client.
            assert_eq!(
                r.body["message"], "the index cannot be read now; retry shortly",
                "{}",
                r.body
            );
        }
        // Bad requests are still told apart from an outage.
        let r = send(&unreachable, event("http-bad-request.json", &env.bucket)).await;
        assert_error(&r, 400, "invalid_base64");
    });
}

#[test]
fn a_query_racing_ingests_always_answers_from_one_manifest() {
    testkit::block_on(async {
        let Some(env) = Env::new("race").await else {
            return;
        };
        const BATCHES: u64 = 4;
        const PER: u64 = 4;
        let env = Arc::new(env);
        let writer_env = env.clone();
        let writer = tokio::spawn(async move {
            for b in 0..BATCHES {
                let objects: Vec<(String, Vec<u8>)> = (0..PER)
                    .map(|i| (format!("b{b}/{i}.jpg"), testkit::synthetic_jpeg(b * 10 + i)))
                    .collect();
                writer_env.ingest(&objects).await;
            }
        });
        let service = env.service();
        let probe = testkit::synthetic_jpeg(0);
        let mut versions = HashSet::new();
        loop {
            let done = writer.is_finished();
            let r = send(&service, image_event(&probe, "k=100")).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let version = r.body["index_version"].as_u64().unwrap();
            let keys = result_keys(&r.body);
            // Version v holds exactly the first v batches: nothing more, nothing less.
            assert_eq!(
                keys.len() as u64,
                version * PER,
                "version {version}: {keys:?}"
            );
            for key in &keys {
                let batch: u64 = key[1..key.find('/').unwrap()].parse().unwrap();
                assert!(batch < version, "{key} is not in version {version}");
            }
            let stats = send(&service, event("http-stats.json", &env.bucket)).await;
            assert_eq!(
                stats.body["items"].as_u64().unwrap(),
                stats.body["version"].as_u64().unwrap() * PER
            );
            versions.insert(version);
            if done {
                break;
            }
        }
        writer.await.unwrap();
        assert!(versions.contains(&BATCHES), "{versions:?}");
    });
}

fn segment_files(dir: &Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".lmdb"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn tmp_holds_only_listed_segments_and_a_new_segment_is_the_only_download() {
    testkit::block_on(async {
        let Some(env) = Env::new("tmp").await else {
            return;
        };
        let cache = env.tempdir();
        let service = env.service_in(&cache, eager());
        for b in 0..3u64 {
            let objects: Vec<(String, Vec<u8>)> = (0..3)
                .map(|i| {
                    (
                        format!("s{b}/{i}.jpg"),
                        testkit::synthetic_jpeg(300 + b * 10 + i),
                    )
                })
                .collect();
            env.ingest(&objects).await;
        }
        let r = send(&service, event("http-stats.json", &env.bucket)).await;
        assert_eq!(r.body["segments"], 3);
        let before = segment_files(&cache);
        assert_eq!(before.len(), 3);

        // A new small segment: only it is downloaded; the others stay the same files.
        env.ingest(&[("s9/new.jpg".to_string(), testkit::synthetic_jpeg(999))])
            .await;
        let r = send(&service, event("http-stats.json", &env.bucket)).await;
        assert_eq!(r.body["items"], 10);
        let after = segment_files(&cache);
        assert_eq!(after.len(), 4);
        for f in &before {
            assert!(after.contains(f), "{} was downloaded again", f.0);
        }

        // Compaction: the merged segments leave /tmp once the service moves on.
        let index = Index::open(env.index_store.clone(), &env.tempdir(), None)
            .await
            .unwrap();
        writer::compact(&index, CompactionPolicy::All, BuildParams::default())
            .await
            .unwrap()
            .done()
            .expect("a compaction");
        let r = send(&service, event("http-stats.json", &env.bucket)).await;
        assert_eq!(r.body["segments"], 1);
        assert_eq!(r.body["items"], 10);
        let files = segment_files(&cache);
        assert_eq!(files.len(), 1, "{files:?}");
        let r = send(&service, image_event(&testkit::synthetic_jpeg(999), "k=1")).await;
        assert_eq!(result_keys(&r.body), vec!["s9/new.jpg"]);
    });
}

/// A container whose /tmp (here a budget for it) cannot hold the index's next segments keeps
/// answering from its last snapshot, leaves no partial download behind, and says why in words
/// (503, no path) when it has no snapshot at all.
#[test]
fn a_full_cache_keeps_serving_the_last_snapshot() {
    testkit::block_on(async {
        let Some(env) = Env::new("full-disk").await else {
            return;
        };
        env.ingest_fixtures().await;
        let first = env.snapshot().await;
        let held = first.manifest.total_bytes();
        let cache = env.tempdir();
        let tight = ServiceConfig {
            cache_budget: Some(held + 1024),
            ..eager()
        };
        let service = env.service_in(&cache, tight.clone());
        let r = send(&service, event("http-stats.json", &env.bucket)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let version = r.body["version"].clone();

        // A new segment that does not fit beside the first.
        let more: Vec<(String, Vec<u8>)> = (0..4)
            .map(|i| {
                (
                    format!("catalog/more/{i}.jpg"),
                    testkit::synthetic_jpeg(900 + i),
                )
            })
            .collect();
        env.ingest(&more).await;
        for _ in 0..2 {
            let r = send(&service, event("http-search-image.json", &env.bucket)).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["index_version"], version, "still the last snapshot");
            assert!(!result_keys(&r.body).is_empty());
        }
        let leftovers: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // A container with room gets the new version; one with no room for anything says so.
        let roomy = send(&env.service(), event("http-stats.json", &env.bucket)).await;
        assert_eq!(roomy.body["items"], 7, "{}", roomy.body);
        let none = env.service_in(
            &env.tempdir(),
            ServiceConfig {
                cache_budget: Some(1024),
                ..eager()
            },
        );
        let r = send(&none, event("http-stats.json", &env.bucket)).await;
        assert_error(&r, 503, "index_unavailable");
        assert!(!r.body.to_string().contains("/tmp"), "{}", r.body);
    });
}
