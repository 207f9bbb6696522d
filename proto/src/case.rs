//! Benchmark case files: the one definition of their format, used by the agent
//! (which loads and runs cases) and by msctl (which writes measured baselines
//! back into case files).
//!
//! A case file is a JSON object. Three shapes load unchanged:
//!
//! * **full model-regression case** (`"type": "text"`, or no `type`):
//!   `name`, `description`, `user_input` (an object: the run's parameters),
//!   `initial_time_s` + `initial_tolerance` (default 0.10), `baseline_time_s` +
//!   `baseline_tolerance` (default 0.20), `operator_top_n` (default 10),
//!   `operator_tolerance` (default 0.10), `operators` (a list of
//!   `{name, total_time_s, num_calls}`) and an optional `compilation_config`
//!   (any JSON value);
//! * **video case** (`"type": "video"`): the same fields, but no `user_input`;
//!   the run's parameters sit at the top level. Every top-level field that is
//!   not one of the known case fields ([`KNOWN_FIELDS`]) is then part of the
//!   case's input (and so of its [`Case::input_hash`]). A video case that does
//!   have a `user_input` object uses that instead;
//! * **short case** (no `type` or `"type": "text"`, no `initial_time_s`,
//!   `initial_tolerance` or `baseline_tolerance`, but a `tolerance`): `name`,
//!   `description`, `user_input`, `baseline_time_s` (0 = no baseline yet) and
//!   `tolerance`, which is the tolerance of its baseline anchor. (In any case
//!   without a `baseline_tolerance`, `tolerance` stands in for it.)
//!
//! Any other `type` loads as [`CaseKind::Other`] and takes its input like a
//! video case. A `null` optional field counts as absent. A time of 0
//! (`initial_time_s` or `baseline_time_s`) means "no anchor yet".
//!
//! Fields this module does not know are kept: [`Case::with_baseline`] and
//! [`Case::to_json_pretty`] write the original object back with every field
//! in its original order and every number as it was read (integers stay
//! integers, floats print as the shortest text that reads back to the same
//! `f64`). Key order survives only with serde_json's `preserve_order` feature.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// `initial_tolerance` when a case gives none.
pub const DEFAULT_INITIAL_TOLERANCE: f64 = 0.10;
/// `baseline_tolerance` when a case gives neither it nor `tolerance`.
pub const DEFAULT_BASELINE_TOLERANCE: f64 = 0.20;
/// `operator_top_n` when a case gives none.
pub const DEFAULT_OPERATOR_TOP_N: usize = 10;
/// `operator_tolerance` when a case gives none.
pub const DEFAULT_OPERATOR_TOLERANCE: f64 = 0.10;

/// Top-level fields that describe the case rather than the run; in a video
/// case every other top-level field is a run parameter.
pub const KNOWN_FIELDS: &[&str] = &[
    "type",
    "name",
    "description",
    "user_input",
    "initial_time_s",
    "initial_tolerance",
    "baseline_time_s",
    "baseline_tolerance",
    "tolerance",
    "operator_top_n",
    "operator_tolerance",
    "operators",
    "compilation_config",
];

/// Which shape a case file has (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CaseKind {
    /// `"type": "text"` or no `type`: parameters in `user_input`.
    Text,
    /// `"type": "video"`: parameters at the top level.
    Video,
    /// The short format: `user_input`, `baseline_time_s`, `tolerance`.
    Short,
    /// Any other `type`, kept verbatim.
    Other(String),
}

impl fmt::Display for CaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseKind::Text => f.write_str("text"),
            CaseKind::Video => f.write_str("video"),
            CaseKind::Short => f.write_str("short"),
            CaseKind::Other(t) => f.write_str(t),
        }
    }
}

/// A reference time and the relative deviation allowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    pub time_s: f64,
    pub tolerance: f64,
}

/// One operator's share of a run, as recorded in `operators`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operator {
    pub name: String,
    pub total_time_s: f64,
    pub num_calls: u64,
}

/// One benchmark case, parsed from its file.
///
/// The public fields are a read-only view of the file. Export
/// ([`Case::to_json_pretty`]) writes the original object, so changing a field
/// here does not change what is written; use [`Case::with_baseline`].
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `name`, else the file stem.
    pub name: String,
    pub kind: CaseKind,
    /// `description`, else empty.
    pub description: String,
    /// The run's parameters: `user_input`, or a video case's top-level
    /// parameters (always an object).
    pub input: Value,
    /// `initial_time_s` / `initial_tolerance`; `None` when the time is absent or 0.
    pub initial: Option<Anchor>,
    /// `baseline_time_s` / `baseline_tolerance` (else `tolerance`); `None` when
    /// the time is absent or 0 (no baseline yet).
    pub baseline: Option<Anchor>,
    /// `baseline_tolerance` (else `tolerance`, else 0.20), also when there is
    /// no baseline time yet: it applies to a baseline accepted later.
    pub baseline_tolerance: f64,
    pub operator_top_n: usize,
    pub operator_tolerance: f64,
    /// `operators`, else empty.
    pub operators: Vec<Operator>,
    pub compilation_config: Option<Value>,
    stem: String,
    file: PathBuf,
    raw: Map<String, Value>,
}

/// A case that could not be loaded (or exported), named by its file stem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("case {case} ({}): {reason}", file.display())]
pub struct CaseError {
    /// The file stem.
    pub case: String,
    pub file: PathBuf,
    pub reason: String,
}

impl Case {
    /// Parses the text of the case file whose stem is `stem`. Errors name the
    /// file as `{stem}.json`; [`load_files`] and [`load_dir`] give the real path.
    pub fn parse(stem: &str, text: &str) -> Result<Case, CaseError> {
        Case::parse_at(Path::new(&format!("{stem}.json")), stem, text)
    }

    fn parse_at(file: &Path, stem: &str, text: &str) -> Result<Case, CaseError> {
        let error = |reason: String| CaseError {
            case: stem.to_string(),
            file: file.to_path_buf(),
            reason,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let value: Value =
            serde_json::from_str(text).map_err(|e| error(format!("not valid JSON: {e}")))?;
        let Value::Object(raw) = value else {
            return Err(error(format!(
                "the top level must be a JSON object, found {}",
                describe(&value)
            )));
        };
        Case::from_map(stem, file, raw).map_err(error)
    }

    fn from_map(stem: &str, file: &Path, raw: Map<String, Value>) -> Result<Case, String> {
        let name = match opt_str(&raw, "name")? {
            Some("") => return Err("\"name\" must not be empty".to_string()),
            Some(n) => n.to_string(),
            None => stem.to_string(),
        };
        let description = opt_str(&raw, "description")?.unwrap_or("").to_string();
        let is_short = raw.contains_key("tolerance")
            && !["initial_time_s", "initial_tolerance", "baseline_tolerance"]
                .iter()
                .any(|k| raw.contains_key(*k));
        let kind = match opt_str(&raw, "type")? {
            None | Some("text") if is_short => CaseKind::Short,
            None | Some("text") => CaseKind::Text,
            Some("video") => CaseKind::Video,
            Some(other) => CaseKind::Other(other.to_string()),
        };

        let input = match opt(&raw, "user_input") {
            Some(v @ Value::Object(_)) => v.clone(),
            Some(v) => {
                return Err(format!(
                    "\"user_input\" must be an object, found {}",
                    describe(v)
                ))
            }
            None => match kind {
                CaseKind::Video | CaseKind::Other(_) => Value::Object(
                    raw.iter()
                        .filter(|(k, _)| !KNOWN_FIELDS.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                CaseKind::Text | CaseKind::Short => {
                    return Err(format!(
                        "{kind} case has no \"user_input\" object (only video cases, \
                         \"type\": \"video\", take their parameters from the top level)"
                    ))
                }
            },
        };

        let initial_time = opt_nonneg(&raw, "initial_time_s")?;
        let initial_tolerance =
            opt_nonneg(&raw, "initial_tolerance")?.unwrap_or(DEFAULT_INITIAL_TOLERANCE);
        let baseline_time = opt_nonneg(&raw, "baseline_time_s")?;
        let short_tolerance = opt_nonneg(&raw, "tolerance")?;
        let baseline_tolerance = opt_nonneg(&raw, "baseline_tolerance")?
            .or(short_tolerance)
            .unwrap_or(DEFAULT_BASELINE_TOLERANCE);
        let operator_tolerance =
            opt_nonneg(&raw, "operator_tolerance")?.unwrap_or(DEFAULT_OPERATOR_TOLERANCE);
        let operator_top_n = match opt(&raw, "operator_top_n") {
            None => DEFAULT_OPERATOR_TOP_N,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    format!(
                        "\"operator_top_n\" must be a non-negative integer, found {}",
                        describe(v)
                    )
                })?,
        };
        let operators = match opt(&raw, "operators") {
            None => Vec::new(),
            Some(v) => parse_operators(v)?,
        };
        let anchor = |time: Option<f64>, tolerance| {
            time.filter(|t| *t > 0.0)
                .map(|time_s| Anchor { time_s, tolerance })
        };

        Ok(Case {
            name,
            kind,
            description,
            input,
            initial: anchor(initial_time, initial_tolerance),
            baseline: anchor(baseline_time, baseline_tolerance),
            baseline_tolerance,
            operator_top_n,
            operator_tolerance,
            operators,
            compilation_config: opt(&raw, "compilation_config").cloned(),
            stem: stem.to_string(),
            file: file.to_path_buf(),
            raw,
        })
    }

    /// Hex (16 digits) of the FNV-1a 64-bit hash of the canonical JSON of
    /// [`Case::input`]: object keys sorted (by bytes) at every level, no
    /// whitespace, numbers as serde_json prints them. Key order and layout in
    /// the file do not change it; any value does (including `1` vs `1.0`).
    pub fn input_hash(&self) -> String {
        let mut canonical = String::new();
        write_canonical(&self.input, &mut canonical);
        format!("{:016x}", fnv1a64(canonical.as_bytes()))
    }

    /// This case with `baseline_time_s` set to `time_s` and, if given,
    /// `operators` replaced; every other field (unknown ones included) keeps
    /// its value and position. A missing `baseline_time_s` is added right
    /// after `initial_time_s` (else `description`, `name`, `type`, else at the
    /// end); missing `operators` go at the end. Operators are written as
    /// `{name, total_time_s, num_calls}`.
    ///
    /// Fails when `time_s` or an operator's time is negative or not finite.
    pub fn with_baseline(
        &self,
        time_s: f64,
        operators: Option<Vec<Operator>>,
    ) -> Result<Case, CaseError> {
        let error = |reason: String| CaseError {
            case: self.stem.clone(),
            file: self.file.clone(),
            reason,
        };
        let time = finite_nonneg(time_s).ok_or_else(|| {
            error(format!(
                "new baseline time {time_s} is not a finite non-negative number"
            ))
        })?;
        let mut raw = self.raw.clone();
        set_field(
            &mut raw,
            "baseline_time_s",
            Value::Number(time),
            &["initial_time_s", "description", "name", "type"],
        );
        if let Some(ops) = operators {
            let mut list = Vec::with_capacity(ops.len());
            for op in ops {
                let total = finite_nonneg(op.total_time_s).ok_or_else(|| {
                    error(format!(
                        "operator {}: total_time_s {} is not a finite non-negative number",
                        op.name, op.total_time_s
                    ))
                })?;
                let mut obj = Map::new();
                obj.insert("name".to_string(), Value::String(op.name));
                obj.insert("total_time_s".to_string(), Value::Number(total));
                obj.insert("num_calls".to_string(), Value::from(op.num_calls));
                list.push(Value::Object(obj));
            }
            set_field(&mut raw, "operators", Value::Array(list), &[]);
        }
        Case::from_map(&self.stem, &self.file, raw).map_err(error)
    }

    /// The case file's text: the original object (with any new baseline),
    /// indented by two spaces, ending in a newline.
    pub fn to_json_pretty(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(&self.raw).expect("a JSON object always serializes");
        text.push('\n');
        text
    }
}

/// Loads the given case files, in the given order. A file that cannot be read
/// or parsed becomes a [`CaseError`]; the others still load.
pub fn load_files(paths: &[PathBuf]) -> (Vec<(PathBuf, Case)>, Vec<CaseError>) {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| CaseError {
                case: stem.clone(),
                file: path.clone(),
                reason: format!("cannot read the file: {e}"),
            })
            .and_then(|text| Case::parse_at(path, &stem, &text));
        match loaded {
            Ok(case) => cases.push((path.clone(), case)),
            Err(e) => errors.push(e),
        }
    }
    (cases, errors)
}

/// Loads every `*.json` file directly in `dir`, sorted by file name. A file
/// that cannot be read or parsed becomes a [`CaseError`]; the others still
/// load. An unreadable directory is one error named after the directory.
pub fn load_dir(dir: &Path) -> (Vec<(PathBuf, Case)>, Vec<CaseError>) {
    let dir_error = |e: std::io::Error| CaseError {
        case: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        file: dir.to_path_buf(),
        reason: format!("cannot read the case directory: {e}"),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return (Vec::new(), vec![dir_error(e)]),
    };
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                if path.extension().is_some_and(|x| x == "json") && path.is_file() {
                    paths.push(path);
                }
            }
            Err(e) => errors.push(dir_error(e)),
        }
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let (cases, file_errors) = load_files(&paths);
    errors.extend(file_errors);
    (cases, errors)
}

/// The field's value, `None` when it is missing or `null`.
fn opt<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn opt_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match opt(map, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(format!("\"{key}\" must be a string, found {}", describe(v))),
    }
}

fn opt_nonneg(map: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    opt(map, key).map(|v| nonneg(v, key)).transpose()
}

fn nonneg(v: &Value, what: &str) -> Result<f64, String> {
    match v.as_f64() {
        Some(x) if x >= 0.0 => Ok(x),
        _ => Err(format!(
            "\"{what}\" must be a non-negative number, found {}",
            describe(v)
        )),
    }
}

fn parse_operators(v: &Value) -> Result<Vec<Operator>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "\"operators\" must be a list of {{name, total_time_s, num_calls}} objects, found {}",
            describe(v)
        ));
    };
    let mut operators = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(obj) = item else {
            return Err(format!(
                "operators[{i}] must be an object with name, total_time_s and num_calls, found {}",
                describe(item)
            ));
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(format!(
                    "operators[{i}]: \"name\" must be a string, found {}",
                    describe(other)
                ))
            }
            None => return Err(format!("operators[{i}]: \"name\" is missing")),
        };
        let at = |reason: String| format!("operators[{i}] ({}): {reason}", clip(&name));
        let field = |key: &str| {
            obj.get(key)
                .ok_or_else(|| at(format!("\"{key}\" is missing")))
        };
        let total_time_s = nonneg(field("total_time_s")?, "total_time_s").map_err(at)?;
        let calls = field("num_calls")?;
        let num_calls = calls.as_u64().ok_or_else(|| {
            at(format!(
                "\"num_calls\" must be a non-negative integer, found {}",
                describe(calls)
            ))
        })?;
        operators.push(Operator {
            name,
            total_time_s,
            num_calls,
        });
    }
    Ok(operators)
}

/// What a value is, for error messages.
/// `s` as an error quotes it: whole up to 40 characters, else its start and
/// `...` (so a 100 KB name does not make a 100 KB message).
fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        None => s.to_string(),
        Some((end, _)) => format!("{}...", &s[..end]),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("a string ({:?}...)", head)
        }
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn finite_nonneg(x: f64) -> Option<Number> {
    if x >= 0.0 {
        Number::from_f64(x)
    } else {
        None
    }
}

/// Sets `key` in place if present; otherwise inserts it right after the first
/// of `after` that is present, or at the end.
fn set_field(map: &mut Map<String, Value>, key: &str, value: Value, after: &[&str]) {
    if let Some(slot) = map.get_mut(key) {
        *slot = value;
        return;
    }
    let Some(anchor) = after.iter().find(|k| map.contains_key(**k)) else {
        map.insert(key.to_string(), value);
        return;
    };
    let old = std::mem::take(map);
    let mut value = Some(value);
    for (k, v) in old {
        let is_anchor = k == *anchor;
        map.insert(k, v);
        if is_anchor {
            if let Some(value) = value.take() {
                map.insert(key.to_string(), value);
            }
        }
    }
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(obj) => {
            let mut entries: Vec<_> = obj.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal, escaped the way serde_json writes it (fixed here so
/// the hash cannot move with a serde_json upgrade).
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../tests/fixtures/bench-cases/qwen3-8B-decode.json");
    const VIDEO: &str = include_str!("../tests/fixtures/bench-cases/wan2.2-ulysses4-cfg2.json");
    const SHORT: &str = r#"{
        "name": "llama-tiny",
        "description": "a short case",
        "user_input": {"model_id": "tiny", "num_queries": 4},
        "baseline_time_s": 0,
        "tolerance": 0.05
    }"#;

    fn text() -> Case {
        Case::parse("qwen3-8B-decode", TEXT).unwrap()
    }

    fn video() -> Case {
        Case::parse("wan2.2-ulysses4-cfg2", VIDEO).unwrap()
    }

    fn keys(text: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(text).unwrap();
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn reason(text: &str) -> String {
        Case::parse("bad", text).unwrap_err().reason
    }

    #[test]
    fn text_fixture_loads_with_exact_values() {
        let c = text();
        assert_eq!(c.name, "qwen3-8B-decode");
        assert_eq!(c.kind, CaseKind::Text);
        assert_eq!(
            c.description,
            "Qwen3-8B decode, 32 queries, ctx=1536, TP=2, compile"
        );
        assert_eq!(
            c.initial,
            Some(Anchor {
                time_s: 0.012733,
                tolerance: 0.1
            })
        );
        assert_eq!(
            c.baseline,
            Some(Anchor {
                time_s: 0.015406,
                tolerance: 0.2
            })
        );
        assert_eq!(c.operator_top_n, 10);
        assert_eq!(c.operator_tolerance, 0.1);
        assert_eq!(c.operators.len(), 10);
        assert_eq!(
            c.operators[0],
            Operator {
                name: "aten.mm.default".into(),
                total_time_s: 0.005301999999999999,
                num_calls: 73
            }
        );
        assert_eq!(c.operators[7].total_time_s, 9.8822e-05);
        assert_eq!(
            c.compilation_config,
            Some(serde_json::json!(["enable_matmul_allreduce"]))
        );
        let input = c.input.as_object().unwrap();
        assert_eq!(input["model_id"], "Qwen/Qwen3-8B");
        assert_eq!(input["num_queries"], 32);
        assert!(input["num_queries"].is_u64());
        assert_eq!(
            input["mtp_acceptance_rate"],
            serde_json::json!([0.9, 0.6, 0.4, 0.2])
        );
        assert!(input["prefix_cache_hit_rate"].is_f64());
        assert_eq!(input.len(), 49);
    }

    #[test]
    fn video_fixture_loads_with_top_level_parameters_as_input() {
        let c = video();
        assert_eq!(c.name, "wan2.2-ulysses4-cfg2");
        assert_eq!(c.kind, CaseKind::Video);
        assert!(c.description.starts_with("Wan2.2-T2V-A14B ulysses=4"));
        assert_eq!(
            c.initial,
            Some(Anchor {
                time_s: 8.217,
                tolerance: 0.1
            })
        );
        assert_eq!(
            c.baseline,
            Some(Anchor {
                time_s: 7.698,
                tolerance: 0.2
            })
        );
        assert_eq!(c.operator_top_n, 10);
        assert_eq!(c.operator_tolerance, 0.1);
        assert_eq!(c.operators.len(), 10);
        assert_eq!(
            c.operators[0],
            Operator {
                name: "tensor_cast.attention.default".into(),
                total_time_s: 5.076,
                num_calls: 80
            }
        );
        assert_eq!(c.operators[2].total_time_s, 0.37721800000000005);
        assert_eq!(c.compilation_config, None);

        let input = c.input.as_object().unwrap();
        assert_eq!(
            input["model_id"],
            "assets/model_config/Wan2.2-T2V-A14B-Diffusers"
        );
        assert_eq!(input["height"], 720);
        assert_eq!(input["ulysses_size"], 4);
        assert_eq!(input["cfg_parallel"], true);
        assert_eq!(input["device"], "ATLAS_800_A2_376T_64G");
        assert_eq!(
            input.keys().collect::<Vec<_>>(),
            [
                "device",
                "model_id",
                "seq_len",
                "batch_size",
                "height",
                "width",
                "frame_num",
                "sample_step",
                "dtype",
                "use_cfg",
                "world_size",
                "ulysses_size",
                "cfg_parallel",
                "quantize_linear_action"
            ]
        );
        for known in [
            "type",
            "name",
            "description",
            "initial_time_s",
            "baseline_time_s",
            "initial_tolerance",
            "baseline_tolerance",
            "operator_top_n",
            "operator_tolerance",
            "operators",
        ] {
            assert!(!input.contains_key(known), "{known} leaked into the input");
        }
    }

    #[test]
    fn short_case_uses_tolerance_for_its_baseline() {
        let c = Case::parse("llama-tiny", SHORT).unwrap();
        assert_eq!(c.kind, CaseKind::Short);
        assert_eq!(c.name, "llama-tiny");
        assert_eq!(c.description, "a short case");
        assert_eq!(c.baseline, None, "baseline_time_s 0 means no baseline yet");
        assert_eq!(c.initial, None);
        assert_eq!(
            c.input,
            serde_json::json!({"model_id": "tiny", "num_queries": 4})
        );
        assert!(c.operators.is_empty());

        let with = c.with_baseline(1.25, None).unwrap();
        assert_eq!(with.kind, CaseKind::Short);
        assert_eq!(
            with.baseline,
            Some(Anchor {
                time_s: 1.25,
                tolerance: 0.05
            })
        );
        assert_eq!(keys(&with.to_json_pretty()), keys(SHORT));
    }

    #[test]
    fn defaults_apply_when_fields_are_absent_or_null() {
        let c = Case::parse(
            "stem-name",
            r#"{"user_input": {}, "initial_time_s": 2, "baseline_time_s": 3,
                "operator_top_n": null, "compilation_config": null, "description": null}"#,
        )
        .unwrap();
        assert_eq!(c.name, "stem-name");
        assert_eq!(c.kind, CaseKind::Text);
        assert_eq!(c.description, "");
        assert_eq!(
            c.initial,
            Some(Anchor {
                time_s: 2.0,
                tolerance: DEFAULT_INITIAL_TOLERANCE
            })
        );
        assert_eq!(
            c.baseline,
            Some(Anchor {
                time_s: 3.0,
                tolerance: DEFAULT_BASELINE_TOLERANCE
            })
        );
        assert_eq!(c.operator_top_n, DEFAULT_OPERATOR_TOP_N);
        assert_eq!(c.operator_tolerance, DEFAULT_OPERATOR_TOLERANCE);
        assert_eq!(c.compilation_config, None);
        assert!(c.operators.is_empty());
    }

    #[test]
    fn other_types_are_kept_and_take_top_level_parameters() {
        let c = Case::parse("x", r#"{"type": "audio", "name": "a", "rate": 16000}"#).unwrap();
        assert_eq!(c.kind, CaseKind::Other("audio".into()));
        assert_eq!(c.input, serde_json::json!({"rate": 16000}));
        let c = Case::parse("x", r#"{"type": "video", "user_input": {"h": 1}, "w": 2}"#).unwrap();
        assert_eq!(
            c.input,
            serde_json::json!({"h": 1}),
            "a video user_input wins"
        );
    }

    #[test]
    fn input_hash_ignores_layout_and_key_order() {
        let a = Case::parse(
            "a",
            r#"{"user_input": {"x": 1, "y": {"b": [1, 2.5], "a": "s"}}}"#,
        )
        .unwrap();
        let b = Case::parse(
            "b",
            "{\n  \"name\": \"other\",\n  \"user_input\": {\"y\": {\"a\":\"s\",\n\"b\":[1,2.5]},\"x\":1},\n  \"baseline_time_s\": 4\n}",
        )
        .unwrap();
        assert_eq!(a.input_hash(), b.input_hash());
        assert_eq!(a.input_hash().len(), 16);
        assert!(a.input_hash().chars().all(|c| c.is_ascii_hexdigit()));

        for changed in [
            r#"{"user_input": {"x": 2, "y": {"b": [1, 2.5], "a": "s"}}}"#,
            r#"{"user_input": {"x": 1.0, "y": {"b": [1, 2.5], "a": "s"}}}"#,
            r#"{"user_input": {"x": 1, "y": {"b": [2.5, 1], "a": "s"}}}"#,
            r#"{"user_input": {"x": 1, "y": {"b": [1, 2.5], "a": "t"}}}"#,
            r#"{"user_input": {"x": 1, "y": {"b": [1, 2.5], "a": "s", "c": null}}}"#,
            r#"{"user_input": {"x": 1, "y": {"b": [1, 2.5]}, "a": "s"}}"#,
        ] {
            let c = Case::parse("c", changed).unwrap();
            assert_ne!(a.input_hash(), c.input_hash(), "{changed}");
        }
    }

    #[test]
    fn input_hash_of_fixtures_is_stable() {
        let t = text();
        let v = video();
        assert_ne!(t.input_hash(), v.input_hash());
        // Only the input counts: a new baseline or reformatting keeps the key.
        let t2 = t.with_baseline(1.0, Some(Vec::new())).unwrap();
        assert_eq!(t.input_hash(), t2.input_hash());
        let v2 = Case::parse("v", &v.with_baseline(9.0, None).unwrap().to_json_pretty()).unwrap();
        assert_eq!(v.input_hash(), v2.input_hash());
        // Reordering the video's top-level parameters keeps it too.
        let mut obj: Vec<(String, Value)> = serde_json::from_str::<Map<String, Value>>(VIDEO)
            .unwrap()
            .into_iter()
            .collect();
        obj.reverse();
        let reversed = Value::Object(obj.into_iter().collect()).to_string();
        assert_eq!(
            v.input_hash(),
            Case::parse("v", &reversed).unwrap().input_hash()
        );
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn canonical_json_sorts_keys_and_escapes_like_serde_json() {
        let v = serde_json::json!({"b": [1, -0.5, 1e300, null, true], "a": {"d": "q\"\\\n\u{1}é", "c": 18446744073709551615u64}});
        let mut out = String::new();
        write_canonical(&v, &mut out);
        assert_eq!(
            out,
            r#"{"a":{"c":18446744073709551615,"d":"q\"\\\n\u0001é"},"b":[1,-0.5,1e+300,null,true]}"#
        );
        let s = Value::String("q\"\\\n\r\t\u{8}\u{c}\u{1f}é".into());
        let mut mine = String::new();
        write_canonical(&s, &mut mine);
        assert_eq!(mine, s.to_string());
    }

    #[test]
    fn export_without_change_keeps_every_value() {
        for (stem, src) in [("qwen3-8B-decode", TEXT), ("wan2.2-ulysses4-cfg2", VIDEO)] {
            let c = Case::parse(stem, src).unwrap();
            let out = c.to_json_pretty();
            assert!(out.ends_with("}\n"));
            assert!(out.starts_with("{\n  \"type\": "), "two-space indent");
            let before: Value = serde_json::from_str(src).unwrap();
            let after: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(before, after);
            assert_eq!(keys(src), keys(&out));
            assert_eq!(Case::parse(stem, &out).unwrap(), c);
        }
        // Floats print shortest-roundtrip, integers stay integers.
        let out = video().to_json_pretty();
        assert!(out.contains("\"total_time_s\": 0.37721800000000005,"));
        assert!(out.contains("\"seq_len\": 128,"));
        assert!(out.contains("\"num_calls\": 884"));
        assert!(text()
            .to_json_pretty()
            .contains("\"prefix_cache_hit_rate\": 0.0,"));
    }

    #[test]
    fn with_baseline_round_trips_and_keeps_unknown_fields_in_place() {
        // A fixture copy with an unknown scalar and a nested unknown object.
        let mut obj: Map<String, Value> = serde_json::from_str(TEXT).unwrap();
        let mut edited = Map::new();
        for (k, v) in std::mem::take(&mut obj) {
            let is_description = k == "description";
            edited.insert(k, v);
            if is_description {
                edited.insert("owner".into(), "x".into());
                edited.insert(
                    "ci".into(),
                    serde_json::json!({"zeta": 1, "alpha": {"y": [1, 2], "b": 0.1}}),
                );
            }
        }
        let src = serde_json::to_string_pretty(&edited).unwrap();
        let c = Case::parse("qwen3-8B-decode", &src).unwrap();
        assert_eq!(
            c.input,
            text().input,
            "unknown top-level fields of a text case are not input"
        );

        let ops = vec![
            Operator {
                name: "aten.mm.default".into(),
                total_time_s: 0.1 + 0.2,
                num_calls: 74,
            },
            Operator {
                name: "new.op".into(),
                total_time_s: 1e-7,
                num_calls: 1,
            },
        ];
        let new = c.with_baseline(0.016123456789, Some(ops.clone())).unwrap();
        assert_eq!(
            new.baseline,
            Some(Anchor {
                time_s: 0.016123456789,
                tolerance: 0.2
            })
        );
        assert_eq!(new.operators, ops);
        assert_eq!(new.initial, c.initial);
        assert_eq!(new.input, c.input);

        let out = new.to_json_pretty();
        let back = Case::parse("qwen3-8B-decode", &out).unwrap();
        assert_eq!(back, new);
        assert_eq!(back.operators[0].total_time_s, 0.1 + 0.2);
        assert_eq!(keys(&out), keys(&src));
        let k = keys(&out);
        assert_eq!(&k[3..5], ["owner", "ci"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["owner"], "x");
        assert_eq!(
            v["ci"].as_object().unwrap().keys().collect::<Vec<_>>(),
            ["zeta", "alpha"]
        );
        assert_eq!(v["ci"]["alpha"], serde_json::json!({"y": [1, 2], "b": 0.1}));
        assert!(v["operators"][0]["num_calls"].is_u64());
        // Only baseline_time_s and operators changed.
        let before: Value = serde_json::from_str(&src).unwrap();
        for key in k {
            if key != "baseline_time_s" && key != "operators" {
                assert_eq!(before[&key], v[&key], "{key}");
            }
        }

        // Without new operators the old ones stay.
        let kept = c.with_baseline(2.0, None).unwrap();
        assert_eq!(kept.operators, c.operators);
    }

    #[test]
    fn with_baseline_adds_missing_fields_in_place() {
        let c = Case::parse(
            "n",
            r#"{"type": "text", "name": "n", "initial_time_s": 1, "user_input": {}, "z": 1}"#,
        )
        .unwrap();
        assert_eq!(c.baseline, None);
        let op = Operator {
            name: "o".into(),
            total_time_s: 0.5,
            num_calls: 2,
        };
        let out = c
            .with_baseline(1.5, Some(vec![op]))
            .unwrap()
            .to_json_pretty();
        assert_eq!(
            keys(&out),
            [
                "type",
                "name",
                "initial_time_s",
                "baseline_time_s",
                "user_input",
                "z",
                "operators"
            ]
        );
        assert!(out.contains(
            "\"operators\": [\n    {\n      \"name\": \"o\",\n      \"total_time_s\": 0.5,\n      \"num_calls\": 2\n    }\n  ]\n}\n"
        ));
        let c = Case::parse("n", r#"{"user_input": {}, "z": 1}"#).unwrap();
        let out = c.with_baseline(1.5, None).unwrap().to_json_pretty();
        assert_eq!(keys(&out), ["user_input", "z", "baseline_time_s"]);
    }

    #[test]
    fn with_baseline_rejects_bad_times() {
        let c = text();
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let e = c.with_baseline(bad, None).unwrap_err();
            assert_eq!(e.case, "qwen3-8B-decode");
            assert!(e.reason.contains("not a finite non-negative number"), "{e}");
        }
        let op = Operator {
            name: "o".into(),
            total_time_s: f64::NAN,
            num_calls: 1,
        };
        let e = c.with_baseline(1.0, Some(vec![op])).unwrap_err();
        assert!(e.reason.starts_with("operator o: total_time_s NaN"), "{e}");
        // Zero is allowed and means "no baseline".
        assert_eq!(c.with_baseline(0.0, None).unwrap().baseline, None);
    }

    #[test]
    fn error_names_case_file_and_reason() {
        let e = Case::parse("broken", "{\"name\": 3}").unwrap_err();
        assert_eq!(e.case, "broken");
        assert_eq!(e.file, PathBuf::from("broken.json"));
        assert_eq!(
            e.to_string(),
            "case broken (broken.json): \"name\" must be a string, found a number (3)"
        );
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let r = reason("{\n  \"name\": \"x\",\n  oops\n}");
        assert!(r.starts_with("not valid JSON: "), "{r}");
        assert!(r.contains("line 3 column 3"), "{r}");
        assert!(
            reason("").starts_with("not valid JSON: EOF"),
            "{}",
            reason("")
        );
        assert!(reason("{} trailing").contains("trailing characters"));
    }

    #[test]
    fn malformed_fields_report_why() {
        let ok_input = r#""user_input": {}"#;
        let cases: Vec<(String, &str)> = vec![
            ("[1, 2]".into(), "the top level must be a JSON object, found a list"),
            ("\"case\"".into(), "the top level must be a JSON object, found a string (\"case\")"),
            (format!(r#"{{"name": 3, {ok_input}}}"#), "\"name\" must be a string, found a number (3)"),
            (format!(r#"{{"name": "", {ok_input}}}"#), "\"name\" must not be empty"),
            (format!(r#"{{"type": 1, {ok_input}}}"#), "\"type\" must be a string, found a number (1)"),
            (format!(r#"{{"description": [], {ok_input}}}"#), "\"description\" must be a string, found a list"),
            (format!(r#"{{"baseline_time_s": "fast", {ok_input}}}"#), "\"baseline_time_s\" must be a non-negative number, found a string (\"fast\")"),
            (format!(r#"{{"baseline_time_s": -1, {ok_input}}}"#), "\"baseline_time_s\" must be a non-negative number, found a number (-1)"),
            (format!(r#"{{"initial_time_s": true, {ok_input}}}"#), "\"initial_time_s\" must be a non-negative number, found a boolean (true)"),
            (format!(r#"{{"initial_tolerance": -0.1, {ok_input}}}"#), "\"initial_tolerance\" must be a non-negative number, found a number (-0.1)"),
            (format!(r#"{{"baseline_tolerance": {{}}, {ok_input}}}"#), "\"baseline_tolerance\" must be a non-negative number, found an object"),
            (format!(r#"{{"tolerance": "5%", {ok_input}}}"#), "\"tolerance\" must be a non-negative number, found a string (\"5%\")"),
            (format!(r#"{{"operator_tolerance": -2, {ok_input}}}"#), "\"operator_tolerance\" must be a non-negative number, found a number (-2)"),
            (format!(r#"{{"operator_top_n": 2.5, {ok_input}}}"#), "\"operator_top_n\" must be a non-negative integer, found a number (2.5)"),
            (format!(r#"{{"operators": {{}}, {ok_input}}}"#), "\"operators\" must be a list of {name, total_time_s, num_calls} objects, found an object"),
            (format!(r#"{{"operators": [3], {ok_input}}}"#), "operators[0] must be an object with name, total_time_s and num_calls, found a number (3)"),
            (format!(r#"{{"operators": [{{"total_time_s": 1, "num_calls": 1}}], {ok_input}}}"#), "operators[0]: \"name\" is missing"),
            (format!(r#"{{"operators": [{{"name": 1, "total_time_s": 1, "num_calls": 1}}], {ok_input}}}"#), "operators[0]: \"name\" must be a string, found a number (1)"),
            (format!(r#"{{"operators": [{{"name": "a", "total_time_s": 1, "num_calls": 1}}, {{"name": "b", "num_calls": 1}}], {ok_input}}}"#), "operators[1] (b): \"total_time_s\" is missing"),
            (format!(r#"{{"operators": [{{"name": "a", "total_time_s": "1", "num_calls": 1}}], {ok_input}}}"#), "operators[0] (a): \"total_time_s\" must be a non-negative number, found a string (\"1\")"),
            (format!(r#"{{"operators": [{{"name": "a", "total_time_s": 1, "num_calls": 1.5}}], {ok_input}}}"#), "operators[0] (a): \"num_calls\" must be a non-negative integer, found a number (1.5)"),
            (format!(r#"{{"operators": [{{"name": "a", "total_time_s": 1, "num_calls": -1}}], {ok_input}}}"#), "operators[0] (a): \"num_calls\" must be a non-negative integer, found a number (-1)"),
            (format!(r#"{{"operators": [{{"name": "a", "total_time_s": 1}}], {ok_input}}}"#), "operators[0] (a): \"num_calls\" is missing"),
            (r#"{"user_input": [1]}"#.into(), "\"user_input\" must be an object, found a list"),
            (r#"{"type": "video", "user_input": "x"}"#.into(), "\"user_input\" must be an object, found a string (\"x\")"),
            (r#"{"name": "n", "baseline_time_s": 1}"#.into(), "text case has no \"user_input\" object (only video cases, \"type\": \"video\", take their parameters from the top level)"),
            (r#"{"type": "text", "user_input": null}"#.into(), "text case has no \"user_input\" object"),
            (r#"{"name": "n", "baseline_time_s": 0, "tolerance": 0.05}"#.into(), "short case has no \"user_input\" object"),
        ];
        for (text, want) in cases {
            let r = reason(&text);
            assert!(r.starts_with(want), "{text}\n  got:  {r}\n  want: {want}");
        }
    }

    #[test]
    fn long_strings_are_cut_in_errors() {
        let r = reason(&format!(
            r#"{{"user_input": {{}}, "baseline_time_s": "{}"}}"#,
            "v".repeat(100)
        ));
        assert!(r.contains(&format!("\"{}\"...", "v".repeat(40))), "{r}");
        assert!(r.len() < 120, "{r}");
    }

    #[test]
    fn truncated_fixtures_never_panic() {
        for (stem, src) in [("t", TEXT), ("v", VIDEO), ("s", SHORT)] {
            let mut ok = 0;
            for end in 0..src.len() {
                if let Some(prefix) = src.get(..end) {
                    if let Ok(c) = Case::parse(stem, prefix) {
                        ok += 1;
                        let _ = c.input_hash();
                        let _ = c.with_baseline(1.0, None).map(|c| c.to_json_pretty());
                    }
                }
            }
            // Only the full text (and nothing shorter but trailing whitespace) parses.
            assert!(ok <= 1, "{stem}: {ok} prefixes parsed");
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "msfleet-case-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn load_dir_loads_good_cases_and_names_bad_ones() {
        let dir = temp_dir("dir");
        std::fs::write(dir.join("wan2.2-ulysses4-cfg2.json"), VIDEO).unwrap();
        std::fs::write(dir.join("qwen3-8B-decode.json"), TEXT).unwrap();
        std::fs::write(dir.join("bad-name.json"), r#"{"name": 3}"#).unwrap();
        std::fs::write(dir.join("not-json.json"), "this is not JSON\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        std::fs::create_dir(dir.join("sub.json")).unwrap();
        std::fs::create_dir(dir.join("nested")).unwrap();
        std::fs::write(dir.join("nested").join("deep.json"), TEXT).unwrap();

        let (cases, errors) = load_dir(&dir);
        let names: Vec<_> = cases.iter().map(|(_, c)| c.name.as_str()).collect();
        assert_eq!(names, ["qwen3-8B-decode", "wan2.2-ulysses4-cfg2"]);
        assert_eq!(cases[0].0, dir.join("qwen3-8B-decode.json"));
        assert_eq!(cases[1].1.to_json_pretty(), video().to_json_pretty());
        assert_eq!(cases[1].1.input, video().input);

        let stems: Vec<_> = errors.iter().map(|e| e.case.as_str()).collect();
        assert_eq!(stems, ["bad-name", "not-json"]);
        assert_eq!(errors[0].file, dir.join("bad-name.json"));
        assert_eq!(
            errors[0].reason,
            "\"name\" must be a string, found a number (3)"
        );
        assert!(
            errors[1].reason.starts_with("not valid JSON: expected"),
            "{}",
            errors[1]
        );
        assert!(
            errors[1].reason.contains("line 1 column 2"),
            "{}",
            errors[1]
        );
        assert!(errors[1].to_string().starts_with(&format!(
            "case not-json ({}): not valid JSON",
            dir.join("not-json.json").display()
        )));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_dir_reports_a_missing_directory() {
        let dir = temp_dir("gone").join("nope");
        let (cases, errors) = load_dir(&dir);
        assert!(cases.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].case, "nope");
        assert!(errors[0]
            .reason
            .starts_with("cannot read the case directory"));
    }

    #[test]
    fn load_files_keeps_order_and_reports_unreadable_files() {
        let dir = temp_dir("files");
        let video_path = dir.join("v.json");
        let text_path = dir.join("t.json");
        std::fs::write(&video_path, VIDEO).unwrap();
        std::fs::write(&text_path, format!("\u{feff}{TEXT}")).unwrap();
        std::fs::write(dir.join("bin.json"), [0xff, 0xfe, 0x00]).unwrap();
        let paths = vec![
            video_path.clone(),
            dir.join("missing.json"),
            text_path.clone(),
            dir.join("bin.json"),
        ];
        let (cases, errors) = load_files(&paths);
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].0, video_path);
        assert_eq!(cases[1].0, text_path);
        assert_eq!(
            cases[1].1.name, "qwen3-8B-decode",
            "a byte-order mark is skipped"
        );
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].case, "missing");
        assert!(
            errors[0].reason.starts_with("cannot read the file: "),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1].case, "bin");
        assert!(
            errors[1].reason.starts_with("cannot read the file: "),
            "{}",
            errors[1]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A regression found by `fuzz_case_long_values`: an operator's error
    /// quoted its name whole.
    #[test]
    fn long_operator_names_are_cut_in_errors() {
        let r = reason(&format!(
            r#"{{"user_input": {{}}, "operators": [{{"name": "{}", "total_time_s": "x"}}]}}"#,
            "v".repeat(5000)
        ));
        assert!(
            r.starts_with(&format!("operators[0] ({}...): ", "v".repeat(40))),
            "{r:.200}"
        );
        assert!(r.len() < 200, "{r:.200}");
    }
}
