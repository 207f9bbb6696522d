//! Fuzz targets for benchmark case files (`cargo test fuzz_case`; cases from
//! `MSFLEET_FUZZ_CASES`, default 256).

use crate::case::{Case, KNOWN_FIELDS};
use proptest::prelude::*;
use serde_json::{Map, Value};

use crate::fuzz::{fuzz_config, MAX_ERROR_BYTES};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0..1000u32).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6..1e6f64).prop_map(Value::from),
        prop_oneof![Just(0.0f64), Just(1.0), Just(-0.0), Just(0.05), Just(1e300)]
            .prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
        prop::sample::select(&["text", "video", "short", "other", "", "x"][..])
            .prop_map(|s| Value::String(s.into())),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,6}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn operator() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![leaf(), Just(Value::String("op".into()))]),
        prop::option::of(prop_oneof![(0.0..10.0f64).prop_map(Value::from), leaf()]),
        prop::option::of(prop_oneof![(0..100u64).prop_map(Value::from), leaf()]),
    )
        .prop_map(|(name, total, calls)| {
            let mut m = Map::new();
            for (k, v) in [
                ("name", name),
                ("total_time_s", total),
                ("num_calls", calls),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            Value::Object(m)
        })
}

/// A value for `key`, usually of the right type.
fn value_for(key: &'static str) -> BoxedStrategy<Value> {
    let good: BoxedStrategy<Value> = match key {
        "type" => prop::sample::select(&["text", "video", "vid", "Text"][..])
            .prop_map(|s| Value::String(s.into()))
            .boxed(),
        "name" | "description" => "\\PC{0,10}".prop_map(Value::String).boxed(),
        "user_input" | "compilation_config" => prop::collection::vec(("[a-z_]{1,6}", json()), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().collect()))
            .boxed(),
        "operators" => prop::collection::vec(operator(), 0..3)
            .prop_map(Value::Array)
            .boxed(),
        "operator_top_n" => (0..20u64).prop_map(Value::from).boxed(),
        _ => prop_oneof![
            (0.0..100.0f64).prop_map(Value::from),
            (0..3u64).prop_map(Value::from)
        ]
        .boxed(),
    };
    prop_oneof![4 => good, 1 => json()].boxed()
}

/// A case-like object: known keys with (mostly) typed values, plus unknown
/// ones (a video case's parameters).
fn case_object() -> impl Strategy<Value = Map<String, Value>> {
    let known = prop::collection::vec(
        prop::sample::select(KNOWN_FIELDS).prop_flat_map(|k| (Just(k.to_string()), value_for(k))),
        0..10,
    );
    let unknown = prop::collection::vec(("[a-z_]{1,8}", json()), 0..4);
    (known, unknown).prop_map(|(known, unknown)| known.into_iter().chain(unknown).collect())
}

/// `v` with every object's keys in reverse order (the same JSON value).
fn reversed(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .rev()
                .map(|(k, v)| (k.clone(), reversed(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
        other => other.clone(),
    }
}

/// What every answer of `Case::parse` must satisfy.
fn check_case(text: &str) -> Result<Option<Case>, TestCaseError> {
    match Case::parse("fuzz", text) {
        Ok(c) => {
            let _ = c.input_hash();
            // What export writes reads back as the same case.
            let again = Case::parse("fuzz", &c.to_json_pretty());
            prop_assert!(again.is_ok(), "{:?}", again.err());
            let again = again.unwrap();
            prop_assert_eq!(again.input_hash(), c.input_hash());
            prop_assert_eq!(&again.input, &c.input);
            prop_assert_eq!(
                (&again.name, &again.kind, again.baseline, again.initial),
                (&c.name, &c.kind, c.baseline, c.initial)
            );
            Ok(Some(c))
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!e.reason.is_empty());
            prop_assert!(
                shown.len() <= MAX_ERROR_BYTES,
                "{} byte error for a {} byte input: {:.300}",
                shown.len(),
                text.len(),
                shown
            );
            Ok(None)
        }
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Case-like objects: a loaded case's input hash is stable under key
    /// reordering (at every level) and layout, and the export round-trips.
    #[test]
    fn fuzz_case_objects_hash_is_stable_under_key_order(obj in case_object(), pretty in any::<bool>()) {
        let v = Value::Object(obj);
        let text = serde_json::to_string(&v).unwrap();
        let Some(c) = check_case(&text)? else { return Ok(()) };
        let rev = reversed(&v);
        let other = if pretty { serde_json::to_string_pretty(&rev) } else { serde_json::to_string(&rev) }.unwrap();
        let d = check_case(&other)?;
        prop_assert!(d.is_some(), "reordered keys refused: {}", other);
        let d = d.unwrap();
        prop_assert_eq!(d.input_hash(), c.input_hash(), "{} vs {}", text, other);
        prop_assert_eq!(d.input, c.input);
    }

    /// Any JSON value and random bytes: no panic, a short refusal.
    #[test]
    fn fuzz_case_random_json_and_bytes(v in json(), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_case(&serde_json::to_string(&v).unwrap())?;
        check_case(&String::from_utf8_lossy(&bytes))?;
    }

    /// Huge strings in every field (up to 100 KB): a short refusal.
    #[test]
    fn fuzz_case_long_values(key in prop::sample::select(KNOWN_FIELDS), n in 0..100_000usize, op in any::<bool>()) {
        let long = Value::String("v".repeat(n));
        let mut m = Map::new();
        m.insert("user_input".into(), Value::Object(Map::new()));
        if op {
            let mut o = Map::new();
            o.insert("name".into(), long.clone());
            o.insert("total_time_s".into(), Value::from("x"));
            m.insert("operators".into(), Value::Array(vec![Value::Object(o)]));
        } else {
            m.insert(key.to_string(), long);
        }
        check_case(&serde_json::to_string(&m).unwrap())?;
        check_case(&format!("{{\"user_input\": {{}}, \"x\": {}", "1".repeat(n)))?;
    }
}
