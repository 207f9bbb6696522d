//! Fuzz targets for what the agent parses from other programs
//! (`cargo test fuzz_`; cases from `MSFLEET_FUZZ_CASES`, default 256):
//! `npu-smi info` output and the pytest plugin's result lines. Kept in a
//! file of their own so they do not touch `runner.rs` and `bench/`.

use crate::probe::npu::{parse_info, parse_usages};
use crate::runner::PluginMessage;
use proptest::prelude::*;
use serde_json::{Map, Value};

use msfleet_proto::fuzz::{fuzz_config, MAX_ERROR_BYTES};

/// The recorded real outputs.
const FIXTURES: &[&str] = &[
    include_str!("../tests/fixtures/npu-smi/info-310-23.0.0.txt"),
    include_str!("../tests/fixtures/npu-smi/info-310p3-25.3.rc1.txt"),
    include_str!("../tests/fixtures/npu-smi/info-310p3-2card-no-header.txt"),
    include_str!("../tests/fixtures/npu-smi/info-910b-8card-24.1.0.txt"),
    include_str!("../tests/fixtures/npu-smi/info-910b4-1card-id2.txt"),
    include_str!("../tests/fixtures/npu-smi/usages-ascend910.txt"),
];

/// One way to damage a recorded output.
#[derive(Debug, Clone)]
enum Mutation {
    DropLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replace the `k`-th `|`-separated cell of a line.
    GarbleCell(usize, usize, String),
    /// Cut the text at a byte offset (rounded down to a char boundary).
    Truncate(usize),
    InsertLine(usize, String),
    /// Make a line very long.
    Stretch(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let junk = prop_oneof![
        Just(String::new()),
        Just("NA".to_string()),
        Just("-".to_string()),
        Just("4294967296".to_string()),
        Just("99999999999999999999 / 1".to_string()),
        Just("0 / 0".to_string()),
        Just("|".to_string()),
        "[0-9/ .A-Za-z]{0,12}",
        "\\PC{0,10}",
    ];
    prop_oneof![
        3 => any::<usize>().prop_map(Mutation::DropLine),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        4 => (any::<usize>(), 0..12usize, junk.clone()).prop_map(|(l, k, s)| Mutation::GarbleCell(l, k, s)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), junk).prop_map(|(l, s)| Mutation::InsertLine(l, s)),
        1 => (any::<usize>(), 0..100_000usize).prop_map(|(l, n)| Mutation::Stretch(l, n)),
    ]
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::DropLine(i) if !lines.is_empty() => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
        Mutation::GarbleCell(i, k, s) if !lines.is_empty() => {
            let mut cells: Vec<String> = lines[i % n].split('|').map(str::to_string).collect();
            let k = k % cells.len();
            cells[k] = s.clone();
            lines[i % n] = cells.join("|");
        }
        Mutation::Truncate(at) => {
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
        Mutation::InsertLine(i, s) => lines.insert(i % (lines.len() + 1), s.clone()),
        Mutation::Stretch(i, len) if !lines.is_empty() => {
            let l = &mut lines[i % n];
            let pad = "9".repeat(*len);
            let mut mid = l.len() / 2;
            while !l.is_char_boundary(mid) {
                mid -= 1;
            }
            l.insert_str(mid, &pad);
        }
        _ => {}
    }
    lines.join("\n")
}

fn check_npu(text: &str) -> Result<(), TestCaseError> {
    let _ = parse_usages(text);
    match parse_info(text) {
        Ok(info) => {
            let lines = text.lines().count();
            prop_assert!(
                info.cards.len() <= lines,
                "{} cards from {} lines",
                info.cards.len(),
                lines
            );
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!shown.is_empty());
            prop_assert!(
                shown.len() <= MAX_ERROR_BYTES,
                "{} byte error for a {} byte input: {:.300}",
                shown.len(),
                text.len(),
                shown
            );
        }
    }
    Ok(())
}

/// Whether the plugin-line parser must accept `v`: an object whose `type`
/// is a string and whose known fields, when present, have their types
/// (`collected` may be null). Unknown fields are ignored.
fn well_typed(v: &Value) -> bool {
    let Value::Object(m) = v else { return false };
    let is_str = |k: &str| m.get(k).is_none_or(Value::is_string);
    matches!(m.get("type"), Some(Value::String(_)))
        && ["nodeid", "when", "outcome", "longrepr"]
            .into_iter()
            .all(is_str)
        && m.get("duration_s").is_none_or(Value::is_number)
        && m.get("markers")
            .is_none_or(|v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        && m.get("collected").is_none_or(|v| v.is_null() || v.is_u64())
}

fn plugin_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9..1e9f64).prop_map(Value::from),
        prop::sample::select(
            &["test", "session", "call", "setup", "passed", "failed", "t.py::a", ""][..]
        )
        .prop_map(|s| Value::String(s.into())),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    let field = prop_oneof![
        4 => scalar.clone(),
        1 => prop::collection::vec(scalar, 0..3).prop_map(Value::Array),
    ];
    let key = prop::sample::select(
        &[
            "type",
            "nodeid",
            "when",
            "outcome",
            "duration_s",
            "longrepr",
            "markers",
            "collected",
            "extra",
        ][..],
    );
    prop::collection::vec((key, field), 0..9).prop_map(|kv| {
        Value::Object(
            kv.into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    })
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Recorded real `npu-smi` outputs, damaged 1-4 times (lines dropped,
    /// duplicated, swapped, cells garbled, text truncated, a line stretched
    /// to 100 KB): never a panic, never more chips than lines, a short error.
    #[test]
    fn fuzz_npu_smi_mutated_fixtures(
        fixture in 0..FIXTURES.len(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut text = FIXTURES[fixture].to_string();
        for m in &mutations {
            text = mutate(&text, m);
        }
        check_npu(&text)?;
    }

    /// Random text: the same properties.
    #[test]
    fn fuzz_npu_smi_random_text(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_npu(&String::from_utf8_lossy(&bytes))?;
    }

    /// The pytest plugin's JSON lines: a line is accepted exactly when it is
    /// an object with a string `type` and well-typed known fields; random
    /// bytes never panic.
    #[test]
    fn fuzz_plugin_lines(v in plugin_value(), bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        let line = serde_json::to_string(&v).unwrap();
        let parsed = serde_json::from_str::<PluginMessage>(&line);
        prop_assert_eq!(parsed.is_ok(), well_typed(&v), "{} -> {:?}", line, parsed);
        let _ = serde_json::from_str::<PluginMessage>(&String::from_utf8_lossy(&bytes));
    }
}

/// A regression found by `fuzz_npu_smi_mutated_fixtures`: a bad line was
/// quoted whole in the error, so a stretched 100 KB line made a 100 KB message.
#[test]
fn npu_smi_errors_cut_a_long_line_short() {
    let text = FIXTURES[2];
    let lines: Vec<&str> = text.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.contains("310P3"))
        .expect("a chip row");
    let mut damaged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mid = damaged[row].len() / 2;
    damaged[row].insert_str(mid, &"9".repeat(100_000));
    damaged.remove(row + 1);
    let e = parse_info(&damaged.join("\n")).unwrap_err().to_string();
    assert!(
        e.len() <= MAX_ERROR_BYTES && e.contains("..."),
        "{} bytes: {e:.300}",
        e.len()
    );
}
