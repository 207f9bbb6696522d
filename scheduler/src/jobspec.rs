//! What a valid job spec is. Every check here runs before anything is written,
//! so a refused submit changes nothing.

use crate::config::Config;
use crate::requirement::Requirement;
use msfleet_proto::{source, JobSpec};
use tonic::Status;

/// Most arguments, env entries and labels a spec may carry, and their size.
const MAX_ITEMS: usize = 1024;
const MAX_TEXT: usize = 16 * 1024;
/// Longest requirement whose refusal shows it with carets under the error.
const RENDERED: usize = 160;
/// Most re-runs of failed tests a job may ask for.
const MAX_RETRY_FAILED: u32 = 10;

/// Validates `spec` in place (fills defaults) and returns its parsed requirement.
pub fn validate(spec: &mut JobSpec, cfg: &Config) -> Result<Requirement, Status> {
    crate::limits::spec(spec)?;
    if spec.kind.is_empty() {
        spec.kind = "pytest".into();
    }
    match spec.kind.as_str() {
        "pytest" => {
            if spec.benchmark.is_some() {
                return Err(Status::invalid_argument(
                    "a pytest job cannot carry benchmark settings; use kind 'benchmark'",
                ));
            }
        }
        "benchmark" if spec.retry_failed > 0 => {
            return Err(Status::invalid_argument(
                "retry_failed re-runs failed pytest tests; it does not apply to benchmark jobs",
            ))
        }
        "benchmark" => {
            let bench = spec.benchmark.get_or_insert_with(Default::default);
            msfleet_proto::bench::validate(bench).map_err(Status::invalid_argument)?;
        }
        "check" => {
            return Err(Status::invalid_argument(
                "a health check is made by the scheduler: run `msctl agent check NAME`",
            ))
        }
        other => {
            return Err(Status::invalid_argument(format!(
                "unknown job kind '{}': use 'pytest' or 'benchmark'",
                crate::clip(other)
            )))
        }
    }
    if spec.queue.is_empty() {
        spec.queue = "default".into();
    }
    if !cfg.queues.contains_key(&spec.queue) {
        let known: Vec<&str> = cfg.queues.keys().map(String::as_str).collect();
        return Err(Status::invalid_argument(format!(
            "unknown queue '{}' (known queues: {})",
            crate::clip(&spec.queue),
            known.join(", ")
        )));
    }
    match spec.source.as_ref().and_then(|s| s.kind.as_ref()) {
        None => {
            return Err(Status::invalid_argument(
                "the job has no source: give a directory (--dir) or a git repository (--git URL --ref REF)",
            ))
        }
        Some(source::Kind::Dir(d)) => {
            if !msfleet_proto::roots::is_clean_absolute(d) {
                return Err(Status::invalid_argument(format!(
                    "source dir '{}' must be an absolute path without '..'",
                    crate::clip(d)
                )));
            }
        }
        Some(source::Kind::Git(g)) => {
            if g.url.trim().is_empty() {
                return Err(Status::invalid_argument("git source has an empty url"));
            }
            if g.r#ref.starts_with('-') || g.url.starts_with('-') {
                return Err(Status::invalid_argument(
                    "git url and ref must not start with '-'",
                ));
            }
        }
    }
    msfleet_proto::environment::validate(
        spec.environment.as_ref(),
        &spec.caches,
        spec.env.keys().chain(spec.secret_env.keys()),
    )
    .map_err(Status::invalid_argument)?;
    if (spec.environment.is_some() || !spec.caches.is_empty()) && spec.kind != "pytest" {
        return Err(Status::invalid_argument(
            "an environment (--setup, --requirements, --install-project) and caches apply to pytest jobs only",
        ));
    }
    if let Some(m) = spec.memory_limit_bytes {
        msfleet_proto::memory::check(m).map_err(Status::invalid_argument)?;
    }
    crate::devices::check_request(spec).map_err(Status::invalid_argument)?;
    if spec.retry_failed > MAX_RETRY_FAILED {
        return Err(Status::invalid_argument(format!(
            "retry_failed {} is more than {MAX_RETRY_FAILED}",
            spec.retry_failed
        )));
    }
    match spec.timeout_ms {
        Some(t) if t <= 0 => {
            return Err(Status::invalid_argument(format!(
                "timeout must be positive, got {t} ms"
            )))
        }
        Some(_) => {}
        None => spec.timeout_ms = Some(cfg.default_timeout.as_millis() as i64),
    }
    match spec.expire_after_ms {
        Some(t) if t <= 0 => {
            return Err(Status::invalid_argument(format!(
                "expire_after must be positive, got {t} ms"
            )))
        }
        Some(_) => {}
        None => spec.expire_after_ms = Some(cfg.expire_after_for(&spec.queue).as_millis() as i64),
    }
    if spec.retries.is_none() {
        spec.retries = Some(cfg.default_retries);
    }
    if spec.agent_lost_retries.is_none() {
        spec.agent_lost_retries = Some(cfg.default_agent_lost_retries);
    }
    let too_big = spec.args.len() > MAX_ITEMS
        || spec.env.len() + spec.secret_env.len() > MAX_ITEMS
        || spec.labels.len() > MAX_ITEMS
        || spec.args.iter().any(|a| a.len() > MAX_TEXT)
        || spec
            .env
            .iter()
            .chain(spec.secret_env.iter())
            .chain(spec.labels.iter())
            .any(|(k, v)| k.len() > MAX_TEXT || v.len() > MAX_TEXT);
    if too_big {
        return Err(Status::invalid_argument(format!(
            "job spec too large: at most {MAX_ITEMS} args/env/labels of {MAX_TEXT} bytes each"
        )));
    }
    let bad_name = |k: &&String| k.is_empty() || k.contains(['=', '\0']);
    if let Some(k) = spec.env.keys().chain(spec.secret_env.keys()).find(bad_name) {
        return Err(Status::invalid_argument(format!(
            "bad environment variable name '{}'",
            crate::clip(k)
        )));
    }
    if let Some(k) = spec.secret_env.keys().find(|k| spec.env.contains_key(*k)) {
        return Err(Status::invalid_argument(format!(
            "{k} is both in env and in secret_env; give it once"
        )));
    }
    if let Some(k) = spec
        .secret_env
        .iter()
        .find(|(_, v)| v.as_str() == msfleet_proto::secrets::REDACTED)
        .map(|(k, _)| k)
    {
        return Err(Status::invalid_argument(format!(
            "secret_env {k} is '{}', which is how views show a secret: give the value itself",
            msfleet_proto::secrets::REDACTED
        )));
    }
    if spec.name.is_empty() {
        spec.name = default_name(spec);
    }
    Requirement::parse(&spec.requirements).map_err(|e| {
        // The caret rendering quotes the whole expression: only for a short one.
        match spec.requirements.chars().count() {
            n if n <= RENDERED => Status::invalid_argument(format!(
                "bad requirement: {e}\n{}",
                e.render(&spec.requirements)
            )),
            _ => Status::invalid_argument(format!("bad requirement: {e}")),
        }
    })
}

fn default_name(spec: &JobSpec) -> String {
    let what = match &spec.benchmark {
        Some(b) => b.cases.join(" "),
        None => spec.args.join(" "),
    };
    let mut name = format!("{} {what}", spec.kind);
    name.truncate(name.trim_end().len().min(80));
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use msfleet_proto::Source;
    use tonic::Code;

    fn spec() -> JobSpec {
        JobSpec {
            source: Some(Source {
                kind: Some(source::Kind::Dir("/srv/p".into())),
            }),
            args: vec!["tests/smoke".into()],
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled() {
        let cfg = Config::new("/tmp/x");
        let mut s = spec();
        validate(&mut s, &cfg).unwrap();
        assert_eq!(s.queue, "default");
        assert_eq!(s.kind, "pytest");
        assert_eq!(s.retries, Some(2));
        assert_eq!(s.agent_lost_retries, Some(5));
        assert_eq!(s.timeout_ms, Some(3_600_000));
        assert_eq!(s.name, "pytest tests/smoke");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let cfg = Config::new("/tmp/x");
        type Mutation = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|s| s.queue = "nope".into()),
                "unknown queue 'nope'",
            ),
            (
                Box::new(|s| s.timeout_ms = Some(0)),
                "timeout must be positive",
            ),
            (
                Box::new(|s| s.timeout_ms = Some(-5)),
                "timeout must be positive",
            ),
            (
                Box::new(|s| s.requirements = "gpu.count >= ".into()),
                "bad requirement",
            ),
            (Box::new(|s| s.source = None), "no source"),
            (
                Box::new(|s| {
                    s.source = Some(Source {
                        kind: Some(source::Kind::Dir("rel/dir".into())),
                    })
                }),
                "absolute path",
            ),
            (Box::new(|s| s.kind = "make".into()), "unknown job kind"),
            (
                Box::new(|s| s.memory_limit_bytes = Some(1 << 20)),
                "memory limit 1 MiB must be between 16 MiB and 16 TiB",
            ),
            (
                Box::new(|s| s.memory_limit_bytes = Some(u64::MAX)),
                "must be between 16 MiB and 16 TiB",
            ),
            (
                Box::new(|s| {
                    s.secret_env.insert("A=B".into(), "v".into());
                }),
                "bad environment variable name 'A=B'",
            ),
            (
                Box::new(|s| {
                    s.env.insert("TOKEN".into(), "v".into());
                    s.secret_env.insert("TOKEN".into(), "w".into());
                }),
                "TOKEN is both in env and in secret_env",
            ),
            (
                Box::new(|s| {
                    s.secret_env.insert("TOKEN".into(), "[redacted]".into());
                }),
                "give the value itself",
            ),
            (Box::new(|s| s.kind = "benchmark".into()), "needs a command"),
        ];
        for (mutate, want) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = validate(&mut s, &cfg).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.message().contains(want), "{} !~ {want}", err.message());
        }
    }
}
