//! Benchmark job rules both sides apply: the scheduler validates a
//! `BenchmarkSpec` at submit with them, the agent runs with them.

use crate::{BenchmarkSpec, Extractor};
use regex::Regex;

pub const DEFAULT_WARMUP: u32 = 1;
pub const DEFAULT_REPETITIONS: u32 = 5;
pub const MAX_WARMUP: u32 = 100;
pub const MAX_REPETITIONS: u32 = 1000;
/// Metric measured by the agent for every run.
pub const WALL_TIME: &str = "wall_time_s";
/// The metric case files' `baseline_time_s` refers to when the case reports it.
pub const TOTAL_TIME: &str = "total_time_s";

/// How a case's explanation message says that the stored history could not
/// be fetched: "history unavailable: WHY (...)", alone or after "; ", always
/// last.
pub const HISTORY_UNAVAILABLE: &str = "history unavailable: ";

/// The "history unavailable: ..." part of a case's explanation message, for
/// views that do not show the whole message.
pub fn history_unavailable(message: &str) -> Option<&str> {
    let at = if message.starts_with(HISTORY_UNAVAILABLE) {
        0
    } else {
        message.find(&format!("; {HISTORY_UNAVAILABLE}"))? + 2
    };
    Some(&message[at..])
}

/// Checks a benchmark spec and fills its defaults. The error says what to fix.
pub fn validate(spec: &mut BenchmarkSpec) -> Result<(), String> {
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        return Err(
            "a benchmark job needs a command (e.g. --command 'python run_case.py {case}')".into(),
        );
    }
    if spec.cases.is_empty() {
        spec.cases.push(".".into());
    }
    if let Some(bad) = spec
        .cases
        .iter()
        .find(|c| c.split('/').any(|part| part == ".."))
    {
        return Err(format!(
            "case path '{bad}' must stay inside the workspace (no '..')"
        ));
    }
    let warmup = *spec.warmup.get_or_insert(DEFAULT_WARMUP);
    let reps = *spec.repetitions.get_or_insert(DEFAULT_REPETITIONS);
    if warmup > MAX_WARMUP {
        return Err(format!("warmup {warmup} is more than {MAX_WARMUP}"));
    }
    if reps == 0 || reps > MAX_REPETITIONS {
        return Err(format!(
            "repetitions must be 1..={MAX_REPETITIONS}, got {reps}"
        ));
    }
    for e in &spec.extractors {
        Extract::compile(e)?;
    }
    Ok(())
}

/// A compiled metric extractor.
#[derive(Debug, Clone)]
pub struct Extract {
    pub metric: String,
    re: Regex,
}

impl Extract {
    pub fn compile(e: &Extractor) -> Result<Extract, String> {
        if e.metric.trim().is_empty() {
            return Err(format!("extractor '{}' has no metric name", e.pattern));
        }
        let re = Regex::new(&e.pattern)
            .map_err(|err| format!("extractor for '{}': bad regex: {err}", e.metric))?;
        if re.captures_len() < 2 {
            return Err(format!(
                "extractor for '{}': the regex needs a capture group for the value, e.g. 'took ([\\d.]+) ms'",
                e.metric
            ));
        }
        Ok(Extract {
            metric: e.metric.clone(),
            re,
        })
    }

    /// The value of the last match in `text`, in seconds when a time unit was captured.
    pub fn extract(&self, text: &str) -> Option<f64> {
        let caps = self.re.captures_iter(text).last()?;
        let value: f64 = caps.get(1)?.as_str().trim().parse().ok()?;
        match caps.get(2) {
            Some(unit) => to_seconds(value, unit.as_str()),
            None => Some(value),
        }
    }
}

/// Converts a time in `unit` to seconds.
pub fn to_seconds(value: f64, unit: &str) -> Option<f64> {
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" | "μs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" | "secs" => 1.0,
        "min" => 60.0,
        _ => return None,
    };
    Some(value * scale)
}

/// True for metrics where a larger value is better (throughput, rates).
pub fn higher_is_better(metric: &str) -> bool {
    let m = metric.to_ascii_lowercase();
    m.contains("throughput")
        || m.ends_with("_per_s")
        || m.ends_with("_per_sec")
        || m.ends_with("_ps")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_unavailable_part_of_a_message() {
        assert_eq!(
            history_unavailable("within 20%; history unavailable: refused; really (x)"),
            Some("history unavailable: refused; really (x)")
        );
        assert_eq!(
            history_unavailable("history unavailable: refused"),
            Some("history unavailable: refused")
        );
        assert_eq!(history_unavailable("the history unavailable: no"), None);
        assert_eq!(history_unavailable("within 20%"), None);
    }

    #[test]
    fn extracts_the_last_value_in_seconds() {
        let e = Extract::compile(&Extractor {
            metric: "analytic_s".into(),
            pattern: r"Total time for analytic:\s*([\d.]+)\s*(ns|us|ms|s)".into(),
        })
        .unwrap();
        let out = "warming\nTotal time for analytic: 12 ms\nTotal time for analytic: 39.8 ms\n";
        assert!((e.extract(out).unwrap() - 0.0398).abs() < 1e-12);
        assert_eq!(e.extract("nothing here"), None);
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let mut s = BenchmarkSpec {
            command: vec!["python".into(), "{case}".into()],
            ..Default::default()
        };
        validate(&mut s).unwrap();
        assert_eq!((s.warmup, s.repetitions), (Some(1), Some(5)));
        assert_eq!(s.cases, vec![".".to_string()]);
        let mut no_cmd = BenchmarkSpec::default();
        assert!(validate(&mut no_cmd).unwrap_err().contains("command"));
        let mut zero = s.clone();
        zero.repetitions = Some(0);
        assert!(validate(&mut zero).unwrap_err().contains("repetitions"));
        let mut bad_re = s.clone();
        bad_re.extractors.push(Extractor {
            metric: "x".into(),
            pattern: "([".into(),
        });
        assert!(validate(&mut bad_re).unwrap_err().contains("bad regex"));
        let mut no_group = s.clone();
        no_group.extractors.push(Extractor {
            metric: "x".into(),
            pattern: r"\d+".into(),
        });
        assert!(validate(&mut no_group)
            .unwrap_err()
            .contains("capture group"));
        let mut escape = s;
        escape.cases = vec!["../other".into()];
        assert!(validate(&mut escape).is_err());
    }

    #[test]
    fn direction_by_name() {
        assert!(higher_is_better("tokens_per_s"));
        assert!(higher_is_better("throughput"));
        assert!(!higher_is_better("total_time_s"));
    }
}
