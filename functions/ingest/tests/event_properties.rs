//! The S3/SQS event parser over random JSON and mutated real events: never a panic, always a
//! batch or a typed error.

use lookalike_ingest::events::parse;
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("Records".to_string()),
                    Just("s3".to_string()),
                    Just("body".to_string()),
                    Just("eventName".to_string()),
                    ".{0,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn events() -> Vec<Value> {
    [
        "s3-put.json",
        "s3-delete.json",
        "sqs-s3-batch.json",
        "sqs-s3-test-event.json",
    ]
    .iter()
    .map(|f| testkit::lambda::event(f, "b"))
    .collect()
}

/// Every leaf path of `v` (object keys and array indexes).
fn paths(v: &Value, at: Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| {
            let mut p = at.clone();
            p.push(json!(k));
            paths(x, p, out)
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| {
            let mut p = at.clone();
            p.push(json!(i));
            paths(x, p, out)
        }),
        _ => out.push(at),
    }
}

fn set(v: &mut Value, path: &[Value], new: Value) {
    let mut cur = v;
    for step in path {
        cur = match step {
            Value::String(k) => &mut cur[k.as_str()],
            other => &mut cur[other.as_u64().unwrap() as usize],
        };
    }
    *cur = new;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_json_never_panics_the_event_parser(v in json_value()) {
        let _ = parse(&v);
    }

    /// A real event with one leaf (a key, a size, a sequencer, an SQS body...) replaced.
    #[test]
    fn mutated_real_events_never_panic_the_event_parser(which in 0..4usize, pick in any::<prop::sample::Index>(), new in json_value()) {
        let mut ev = events().swap_remove(which);
        let mut all = Vec::new();
        paths(&ev, Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        set(&mut ev, &path, new);
        let _ = parse(&ev);
    }
}
