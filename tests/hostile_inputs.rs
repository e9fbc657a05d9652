//! Hostile inputs: the image decoder over a corpus of nasty files (testkit::hostile) and over
//! random and mutated bytes, the HTTP request parser and the manifest parser over random input.
//! Never a panic, always a typed error (or a valid result). The S3 event parser has the same
//! property test in functions/ingest/tests/event_properties.rs.

use bytes::Bytes;
use lookalike::api::ApiRequest;
use lookalike::index::Manifest;
use lookalike::preprocess::{decode, ImageError, Limits};
use proptest::prelude::*;

#[test]
fn every_file_of_the_corpus_decodes_or_is_refused_with_a_typed_error() {
    let corpus = testkit::hostile::corpus();
    for (name, bytes) in &corpus {
        for limits in [Limits::default(), Limits::for_queries()] {
            match decode(bytes, &limits) {
                Ok(img) => assert!(img.width() >= 8 && img.height() >= 8, "{name}"),
                Err(
                    ImageError::Empty
                    | ImageError::TooManyBytes { .. }
                    | ImageError::UnsupportedFormat { .. }
                    | ImageError::TooLarge { .. }
                    | ImageError::TooSmall { .. }
                    | ImageError::Decode(_),
                ) => {}
            }
        }
    }
    println!(
        "hostile corpus: {} files, each under the ingest and the query limits",
        corpus.len()
    );
}

const MAGICS: [&[u8]; 6] = [
    b"",
    &[0xFF, 0xD8, 0xFF],
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"BM",
];

fn base_images() -> Vec<Vec<u8>> {
    ["chelsea.jpg", "rocket.jpg"]
        .iter()
        .map(|f| std::fs::read(testkit::fixture(f)).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes behind each format's magic number.
    #[test]
    fn random_bytes_never_panic_the_decoder(magic in 0..MAGICS.len(), tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = MAGICS[magic].to_vec();
        bytes.extend(tail);
        let _ = decode(&bytes, &Limits::default());
        let _ = decode(&bytes, &Limits::for_queries());
    }

    /// Real images, truncated and with bytes overwritten anywhere (headers included).
    #[test]
    fn damaged_real_images_never_panic_the_decoder(
        which in 0..2usize,
        cut in 0.0..1.0f64,
        flips in proptest::collection::vec((0.0..1.0f64, any::<u8>()), 0..12),
    ) {
        let mut bytes = base_images().swap_remove(which);
        for (at, b) in flips {
            let i = ((bytes.len() - 1) as f64 * at) as usize;
            bytes[i] = b;
        }
        bytes.truncate(((bytes.len() as f64) * cut) as usize + 1);
        let _ = decode(&bytes, &Limits::for_queries());
    }

    /// Any method, path, query, content type and body: a route or an API error, 4xx for the
    /// client's mistakes.
    #[test]
    fn the_request_parser_never_panics(
        method in prop_oneof![Just("GET".to_string()), Just("POST".to_string()), "[A-Z]{0,8}"],
        path in prop_oneof![
            Just("/search".to_string()),
            "/items/[^?#]{0,40}/similar",
            "/[a-z%./]{0,30}",
            ".{0,60}",
        ],
        query in "[a-z=&%0-9+.-]{0,40}",
        content_type in proptest::option::of(prop_oneof![
            Just("application/json".to_string()),
            Just("image/jpeg".to_string()),
            ".{0,30}",
        ]),
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "\\{\"(key|k|image_base64|category)\": (\"[^\"]{0,20}\"|-?[0-9]{1,4}|null|\\[\\]), \"k\": [0-9]{1,3}\\}"
                .prop_map(String::into_bytes),
        ],
    ) {
        let req = ApiRequest { method, path, query, content_type, body: Bytes::from(body), if_none_match: None };
        if let Err(e) = req.route(1 << 20) {
            prop_assert!((400..500).contains(&e.status), "{e}");
        }
    }

    /// Any bytes, and valid manifests with one field replaced by random JSON.
    #[test]
    fn the_manifest_parser_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        field in prop_oneof![
            Just("format"), Just("version"), Just("segments"), Just("deleted"),
            Just("next_sequence"), Just("retired"), Just("tombstones"), Just("commits"), Just("model"),
        ],
        value in prop_oneof![
            Just(serde_json::json!(null)),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            ".{0,20}".prop_map(|s| serde_json::json!(s)),
            Just(serde_json::json!([{"name": "../../etc/passwd", "items": 1, "bytes": 1, "sha256": "", "sequence": 1}])),
            Just(serde_json::json!({"k": {"sequencer": 5, "at_ms": "x"}})),
        ],
    ) {
        let _ = Manifest::from_bytes(&bytes);
        let mut m = Manifest::new(lookalike::model::ModelRef { id: "m".into(), dims: 4 });
        m.record_commit("c1");
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v[field] = value;
        if let Ok(parsed) = Manifest::from_bytes(&serde_json::to_vec(&v).unwrap()) {
            // A manifest that parses also survives its own round trip.
            prop_assert_eq!(Manifest::from_bytes(&parsed.to_bytes()).unwrap(), parsed);
        }
    }
}
