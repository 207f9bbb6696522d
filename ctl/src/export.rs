//! `msctl baseline export`: writes the scheduler's baselines back into the
//! case files, like the projects' own `--update-baselines`. [`plan`] is pure
//! (cases + baselines -> new file contents); the command writes the result
//! with [`write_atomic`].

use msfleet_proto::bench::{TOTAL_TIME, WALL_TIME};
use msfleet_proto::case::{Case, Operator};
use msfleet_proto::{Baseline, BaselineKey};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What export does with one case file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `text` is the file's new content.
    Updated {
        metric: String,
        profile: String,
        value: f64,
        /// Operators written (`None`: the file's are kept).
        operators: Option<usize>,
        text: String,
    },
    /// The baseline is what the file already says.
    Unchanged {
        metric: String,
        profile: String,
        value: f64,
    },
    /// No baseline matches the case (name, input, metric, profile), or it has
    /// no value yet; the file is left untouched.
    NoBaseline(String),
    /// The case cannot be exported; the file is left untouched.
    Error(String),
}

/// One case file and what export does with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub path: PathBuf,
    pub case: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    #[error(
        "baselines of several hardware profiles match these cases: {}; pick one with --profile",
        .0.join(", ")
    )]
    SeveralProfiles(Vec<String>),
}

/// For each case, the baseline to write: the one whose key is (the case's
/// name, its input hash, `metric` — else the only metric, else `total_time_s`,
/// else `wall_time_s` — and `profile`). When no `profile` is given, the
/// matching baselines must all be of one profile (a baseline of one profile
/// never stands for another). The new `baseline_time_s` is the anchor, else
/// the newest history median; the operators are the anchor's (or, without an
/// anchor, the newest run's) when there are any, else the file's are kept.
pub fn plan(
    cases: &[(PathBuf, Case)],
    baselines: &[Baseline],
    profile: Option<&str>,
    metric: Option<&str>,
) -> Result<Vec<Planned>, ExportError> {
    let matching: Vec<Vec<(&BaselineKey, &Baseline)>> = cases
        .iter()
        .map(|(_, case)| {
            let hash = case.input_hash();
            baselines
                .iter()
                .filter_map(|b| b.key.as_ref().map(|k| (k, b)))
                .filter(|(k, _)| {
                    k.case == case.name
                        && k.input_hash == hash
                        && profile.is_none_or(|p| k.profile == p)
                        && metric.is_none_or(|m| k.metric == m)
                })
                .collect()
        })
        .collect();
    let profiles: BTreeSet<&str> = matching
        .iter()
        .flatten()
        .map(|(k, _)| k.profile.as_str())
        .collect();
    if profiles.len() > 1 {
        return Err(ExportError::SeveralProfiles(
            profiles.into_iter().map(str::to_string).collect(),
        ));
    }
    Ok(cases
        .iter()
        .zip(matching)
        .map(|((path, case), found)| Planned {
            path: path.clone(),
            case: case.name.clone(),
            outcome: export_one(case, &found),
        })
        .collect())
}

fn export_one(case: &Case, found: &[(&BaselineKey, &Baseline)]) -> Outcome {
    let metrics: BTreeSet<&str> = found.iter().map(|(k, _)| k.metric.as_str()).collect();
    let chosen = match metrics.len() {
        0 => return Outcome::NoBaseline(String::new()),
        1 => metrics.first().copied(),
        _ => [TOTAL_TIME, WALL_TIME]
            .into_iter()
            .find(|m| metrics.contains(m)),
    };
    let Some(chosen) = chosen else {
        return Outcome::Error(format!(
            "baselines for several metrics ({}): pick one with --metric",
            metrics.into_iter().collect::<Vec<_>>().join(", ")
        ));
    };
    let Some((key, b)) = found.iter().find(|(k, _)| k.metric == chosen) else {
        return Outcome::NoBaseline(String::new());
    };
    let newest = b.history.last();
    let (value, operators) = match (b.anchor, newest) {
        (Some(anchor), _) => (anchor, &b.anchor_operators),
        (None, Some(run)) => (run.median, &run.operators),
        (None, None) => {
            return Outcome::NoBaseline(format!(
                "the {} baseline on {} has no accepted value yet",
                key.metric, key.profile
            ))
        }
    };
    let operators: Option<Vec<Operator>> = (!operators.is_empty()).then(|| {
        operators
            .iter()
            .map(|o| Operator {
                name: o.name.clone(),
                total_time_s: o.total_time_s,
                num_calls: o.num_calls,
            })
            .collect()
    });
    let written = operators.as_ref().map(Vec::len);
    let updated = match case.with_baseline(value, operators) {
        Ok(c) => c,
        Err(e) => return Outcome::Error(e.reason),
    };
    if updated == *case {
        return Outcome::Unchanged {
            metric: key.metric.clone(),
            profile: key.profile.clone(),
            value,
        };
    }
    Outcome::Updated {
        metric: key.metric.clone(),
        profile: key.profile.clone(),
        value,
        operators: written,
        text: updated.to_json_pretty(),
    }
}

/// The line `baseline export` prints for a case.
pub fn outcome_line(p: &Planned) -> String {
    let status = match &p.outcome {
        Outcome::Updated {
            metric,
            profile,
            value,
            operators,
            ..
        } => {
            let ops = match operators {
                Some(1) => ", 1 operator".to_string(),
                Some(n) => format!(", {n} operators"),
                None => String::new(),
            };
            format!(
                "{:<12} {}  baseline_time_s = {} ({metric}, profile {profile}{ops})",
                "updated",
                p.case,
                crate::render::num(*value)
            )
        }
        Outcome::Unchanged {
            metric,
            profile,
            value,
        } => format!(
            "{:<12} {}  baseline_time_s = {} ({metric}, profile {profile})",
            "unchanged",
            p.case,
            crate::render::num(*value)
        ),
        Outcome::NoBaseline(why) if why.is_empty() => {
            format!("{:<12} {}", "no baseline", p.case)
        }
        Outcome::NoBaseline(why) => format!("{:<12} {}  ({why})", "no baseline", p.case),
        Outcome::Error(e) => format!("{:<12} {}  {e}", "error", p.case),
    };
    format!("{status}  [{}]", p.path.display())
}

/// Replaces `path` with `text` atomically: a temporary file in the same
/// directory (with the old file's permissions), synced, then renamed over it.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.msctl-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::case::load_dir;
    use msfleet_proto::{BaselineRun, OperatorTime};
    use serde_json::Value;

    const DECODE: &str = "qwen3-8B-decode";
    const VIDEO: &str = "wan2.2-ulysses4-cfg2";

    fn fixtures() -> Vec<(PathBuf, Case)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/fixtures/bench-cases");
        let (cases, errors) = load_dir(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cases.len(), 2);
        cases
    }

    fn case<'a>(cases: &'a [(PathBuf, Case)], name: &str) -> &'a Case {
        &cases
            .iter()
            .find(|(_, c)| c.name == name)
            .expect("fixture")
            .1
    }

    fn op(name: &str, t: f64, calls: u64) -> OperatorTime {
        OperatorTime {
            name: name.into(),
            total_time_s: t,
            num_calls: calls,
        }
    }

    fn baseline(case: &Case, metric: &str, profile: &str, anchor: Option<f64>) -> Baseline {
        Baseline {
            key: Some(BaselineKey {
                case: case.name.clone(),
                input_hash: case.input_hash(),
                metric: metric.into(),
                profile: profile.into(),
            }),
            anchor,
            anchor_operators: if anchor.is_some() {
                vec![op("aten.mm.default", 0.0061, 73), op("new.op", 0.001, 2)]
            } else {
                vec![]
            },
            history: vec![
                BaselineRun {
                    job_id: "7".into(),
                    time_ms: 1_700_000_000_000,
                    median: 0.0170,
                    operators: vec![],
                    ..Default::default()
                },
                BaselineRun {
                    job_id: "9".into(),
                    time_ms: 1_700_000_100_000,
                    median: 0.0180,
                    operators: vec![op("aten.mm.default", 0.0065, 73)],
                    ..Default::default()
                },
            ],
            audit: vec![],
            ..Default::default()
        }
    }

    fn object(text: &str) -> serde_json::Map<String, Value> {
        match serde_json::from_str(text) {
            Ok(Value::Object(m)) => m,
            other => panic!("not an object: {other:?}"),
        }
    }

    fn updated_text(p: &Planned) -> &str {
        match &p.outcome {
            Outcome::Updated { text, .. } => text,
            other => panic!("{}: not updated: {other:?}", p.case),
        }
    }

    #[test]
    fn anchor_updates_baseline_time_and_operators_and_keeps_the_rest() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let plan = plan(
            &cases,
            &[baseline(decode, TOTAL_TIME, "a2-64g", Some(0.0201))],
            None,
            None,
        )
        .unwrap();
        assert_eq!(plan.len(), 2);
        let d = plan.iter().find(|p| p.case == DECODE).unwrap();
        assert!(
            matches!(&d.outcome, Outcome::Updated { metric, profile, value, operators: Some(2), .. }
                if metric == TOTAL_TIME && profile == "a2-64g" && *value == 0.0201),
            "{:?}",
            d.outcome
        );
        let before = object(&decode.to_json_pretty());
        let after = object(updated_text(d));
        // Same fields in the same order; only baseline_time_s and operators differ.
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        for (k, v) in &before {
            if k != "baseline_time_s" && k != "operators" {
                assert_eq!(&after[k], v, "{k} changed");
            }
        }
        assert_eq!(after["baseline_time_s"], serde_json::json!(0.0201));
        assert_eq!(
            after["operators"],
            serde_json::json!([
                {"name": "aten.mm.default", "total_time_s": 0.0061, "num_calls": 73},
                {"name": "new.op", "total_time_s": 0.001, "num_calls": 2},
            ])
        );
        // It is still a valid case with the same input (same baseline key).
        let back = Case::parse(DECODE, updated_text(d)).unwrap();
        assert_eq!(back.input_hash(), decode.input_hash());
        assert_eq!(back.baseline.map(|a| a.time_s), Some(0.0201));
        assert_eq!(back.baseline.map(|a| a.tolerance), Some(0.2));
        // The case without a baseline is left alone.
        let v = plan.iter().find(|p| p.case == VIDEO).unwrap();
        assert_eq!(v.outcome, Outcome::NoBaseline(String::new()));
    }

    #[test]
    fn without_an_anchor_the_newest_run_is_written() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let plan = plan(
            &cases,
            &[baseline(decode, TOTAL_TIME, "a2-64g", None)],
            None,
            None,
        )
        .unwrap();
        let d = plan.iter().find(|p| p.case == DECODE).unwrap();
        let after = object(updated_text(d));
        assert_eq!(after["baseline_time_s"], serde_json::json!(0.018));
        assert_eq!(after["operators"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn another_profiles_baseline_is_not_used() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let other = [baseline(decode, TOTAL_TIME, "h100-80g", Some(0.0101))];
        let plan = plan(&cases, &other, Some("a2-64g"), None).unwrap();
        assert!(plan
            .iter()
            .all(|p| p.outcome == Outcome::NoBaseline(String::new())));
    }

    #[test]
    fn two_profiles_need_a_choice() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let video = case(&cases, VIDEO);
        let both = [
            baseline(decode, TOTAL_TIME, "a2-64g", Some(0.0201)),
            baseline(video, TOTAL_TIME, "h100-80g", Some(7.1)),
        ];
        let err = plan(&cases, &both, None, None).unwrap_err();
        assert_eq!(
            err,
            ExportError::SeveralProfiles(vec!["a2-64g".into(), "h100-80g".into()])
        );
        assert!(err.to_string().contains("a2-64g, h100-80g"));
        assert!(err.to_string().contains("--profile"));
        let plan = plan(&cases, &both, Some("h100-80g"), None).unwrap();
        let v = plan.iter().find(|p| p.case == VIDEO).unwrap();
        assert_eq!(
            object(updated_text(v))["baseline_time_s"],
            serde_json::json!(7.1)
        );
        let d = plan.iter().find(|p| p.case == DECODE).unwrap();
        assert_eq!(d.outcome, Outcome::NoBaseline(String::new()));
    }

    #[test]
    fn keys_must_match_name_and_input() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let mut renamed = baseline(decode, TOTAL_TIME, "a2-64g", Some(0.02));
        let mut other_input = renamed.clone();
        if let Some(k) = renamed.key.as_mut() {
            k.case = "qwen3-8B-prefill".into();
        }
        if let Some(k) = other_input.key.as_mut() {
            k.input_hash = "0000000000000000".into();
        }
        let no_key = Baseline::default();
        let plan = plan(&cases, &[renamed, other_input, no_key], None, None).unwrap();
        assert!(plan
            .iter()
            .all(|p| p.outcome == Outcome::NoBaseline(String::new())));
    }

    #[test]
    fn metric_choice_prefers_total_then_wall_time() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let pick = |bs: &[Baseline], metric: Option<&str>| {
            let plan = plan(&cases, bs, None, metric).unwrap();
            plan.into_iter().find(|p| p.case == DECODE).unwrap().outcome
        };
        let total = baseline(decode, TOTAL_TIME, "p", Some(0.02));
        let wall = baseline(decode, WALL_TIME, "p", Some(0.5));
        let other = baseline(decode, "analytic_s", "p", Some(0.03));
        let value = |o: Outcome| match o {
            Outcome::Updated { metric, value, .. } => (metric, value),
            o => panic!("{o:?}"),
        };
        let all = [other.clone(), wall.clone(), total];
        assert_eq!(value(pick(&all, None)), (TOTAL_TIME.to_string(), 0.02));
        assert_eq!(
            value(pick(&[other.clone(), wall.clone()], None)),
            (WALL_TIME.to_string(), 0.5)
        );
        assert_eq!(
            value(pick(&all, Some("analytic_s"))),
            ("analytic_s".to_string(), 0.03)
        );
        let mut other2 = other.clone();
        if let Some(k) = other2.key.as_mut() {
            k.metric = "prefill_s".into();
        }
        match pick(&[other, other2], None) {
            Outcome::Error(e) => assert!(e.contains("--metric"), "{e}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn the_same_value_is_unchanged_and_an_empty_baseline_has_none() {
        let cases = fixtures();
        let decode = case(&cases, DECODE);
        let mut same = baseline(decode, TOTAL_TIME, "p", Some(0.015406));
        same.anchor_operators.clear();
        let plan1 = plan(&cases, &[same], None, None).unwrap();
        let d = plan1.iter().find(|p| p.case == DECODE).unwrap();
        assert!(matches!(d.outcome, Outcome::Unchanged { .. }), "{d:?}");

        let mut empty = baseline(decode, TOTAL_TIME, "p", None);
        empty.history.clear();
        let plan2 = plan(&cases, &[empty], None, None).unwrap();
        let d = plan2.iter().find(|p| p.case == DECODE).unwrap();
        assert!(
            matches!(&d.outcome, Outcome::NoBaseline(why) if why.contains("no accepted value")),
            "{d:?}"
        );
        let line = outcome_line(d);
        assert!(line.starts_with("no baseline  qwen3-8B-decode"), "{line}");
    }

    #[test]
    fn write_atomic_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("msctl-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("case.json");
        std::fs::write(&path, "{}\n").unwrap();
        write_atomic(&path, "{\"a\": 1}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\": 1}\n");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
