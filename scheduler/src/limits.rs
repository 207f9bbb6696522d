//! Limits, so that no client can exhaust the scheduler: every string, list
//! and map of every request the scheduler takes has a bound, checked here
//! before the request reaches the core ([`Bounded::check`], called by
//! `api.rs` for each RPC and by [`crate::jobspec::validate`] for specs).
//!
//! A refusal names the field and the limit and never quotes the input, so a
//! refusal stays short however large the input (a 10,000-level requirement
//! used to come back as `h2 protocol error`: the refusal quoted the whole
//! expression into a gRPC header). Where other checks quote input they cut it
//! short with [`crate::clip`].

use msfleet_proto as pb;
use tonic::Status;

/// `|priority|` of any job.
pub const MAX_PRIORITY: i32 = 1000;
/// `|priority|` of a job submitted by anyone below admin.
pub const MAX_SUBMITTER_PRIORITY: i32 = 100;
/// Retries of a lost attempt.
pub const MAX_RETRIES: u32 = 10;
/// Retries of attempts lost with their agent (`agent_lost_retries`).
pub const MAX_AGENT_LOST_RETRIES: u32 = 100;
/// How far ahead a drain's deadline may lie: 30 days.
pub const MAX_DRAIN_DEADLINE_MS: u64 = 30 * 24 * 3600 * 1000;
/// Attempt timeout: 7 days.
pub const MAX_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest a job may wait unstarted (`expire_after`): 30 days.
pub const MAX_EXPIRE_AFTER_MS: i64 = 30 * 24 * 3600 * 1000;
/// Node ids in a `select` list.
pub const MAX_SELECT: usize = 100_000;
/// A pytest node id (`select` items, test results, `TestHistory.test_id`).
pub const MAX_NODEID: usize = pb::MAX_NODEID;
/// Labels of a job, of a `ListJobs` filter, of an agent token.
pub const MAX_LABELS: usize = 64;
/// Arguments and env entries of a job; benchmark commands and cases.
pub const MAX_ITEMS: usize = 1024;
/// One argument, env or label key or value.
pub const MAX_TEXT: usize = 16 * 1024;
/// Paths and git urls and refs.
pub const MAX_PATH: usize = 4096;
/// Names: jobs, queues, profiles, schedules, agents, tokens, metrics.
pub const MAX_NAME: usize = 256;
/// Ids (jobs, tasks, instances).
pub const MAX_ID: usize = 128;
/// Keywords: kinds, states, roles, policies, log streams.
pub const MAX_WORD: usize = 64;
/// A requirement expression, in bytes (the parser counts characters).
pub const MAX_REQUIREMENTS: usize = crate::requirement::MAX_LEN;
/// A cron expression and a time zone name.
pub const MAX_CRON: usize = 256;
/// A submit's dedup key.
pub const MAX_DEDUP_KEY: usize = 256;
/// The failure text of one test result (the agent cuts longer ones).
pub const MAX_LONGREPR: usize = pb::MAX_LONGREPR;
/// Markers of one test result (the agent drops the rest).
pub const MAX_MARKERS: usize = pb::MAX_MARKERS;
/// One benchmark case result, encoded.
pub const MAX_CASE_RESULT: usize = 1 << 20;
/// An agent's capabilities, encoded.
pub const MAX_CAPABILITIES: usize = 1 << 20;
/// Attempts named in one heartbeat or register, and keys of one GetBaselines.
pub const MAX_REFS: usize = 4096;
/// Text of a `Finished` reason kept (longer is cut, not refused: refusing
/// the last update of an attempt would leave it running forever).
pub const MAX_REASON: usize = 4096;
/// Longest reason a person gives (an admin's quarantine).
pub const MAX_TEXT_REASON: usize = 1024;

fn too_long(what: &str, len: usize, max: usize) -> Status {
    Status::invalid_argument(format!(
        "{what} is too long: {len} bytes, the limit is {max}"
    ))
}

/// `s` is at most `max` bytes.
pub fn text(what: &str, s: &str, max: usize) -> Result<(), Status> {
    if s.len() > max {
        return Err(too_long(what, s.len(), max));
    }
    Ok(())
}

/// At most `max` items, each at most `each` bytes.
pub fn list(what: &str, items: &[String], max: usize, each: usize) -> Result<(), Status> {
    if items.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} has too many items: {}, the limit is {max}",
            items.len()
        )));
    }
    match items.iter().find(|s| s.len() > each) {
        Some(s) => Err(too_long(&format!("an item of {what}"), s.len(), each)),
        None => Ok(()),
    }
}

/// At most `max` entries, keys and values at most `each` bytes.
pub fn map<'a>(
    what: &str,
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    max: usize,
    each: usize,
) -> Result<(), Status> {
    if entries.len() > max {
        return Err(Status::invalid_argument(format!(
            "{what} has too many entries: {}, the limit is {max}",
            entries.len()
        )));
    }
    for (k, v) in entries {
        text(&format!("a key of {what}"), k, each)?;
        text(&format!("a value of {what}"), v, each)?;
    }
    Ok(())
}

/// The bounds of one job spec (called by [`crate::jobspec::validate`], so a
/// schedule's spec is held to them too).
pub fn spec(s: &pb::JobSpec) -> Result<(), Status> {
    text("kind", &s.kind, MAX_WORD)?;
    text("name", &s.name, MAX_NAME)?;
    text("queue", &s.queue, MAX_NAME)?;
    text("requirements", &s.requirements, MAX_REQUIREMENTS)?;
    text("dedup_key", &s.dedup_key, MAX_DEDUP_KEY)?;
    text("fanout", &s.fanout, MAX_WORD)?;
    if s.priority.unsigned_abs() > MAX_PRIORITY as u32 {
        return Err(Status::invalid_argument(format!(
            "priority {} is out of range: the limit is -{MAX_PRIORITY}..={MAX_PRIORITY}",
            s.priority
        )));
    }
    if let Some(r) = s.retries.filter(|&r| r > MAX_RETRIES) {
        return Err(Status::invalid_argument(format!(
            "retries {r} is more than {MAX_RETRIES}"
        )));
    }
    if let Some(r) = s.agent_lost_retries.filter(|&r| r > MAX_AGENT_LOST_RETRIES) {
        return Err(Status::invalid_argument(format!(
            "agent_lost_retries {r} is more than {MAX_AGENT_LOST_RETRIES}"
        )));
    }
    if let Some(t) = s.expire_after_ms.filter(|&t| t > MAX_EXPIRE_AFTER_MS) {
        return Err(Status::invalid_argument(format!(
            "expire_after of {t} ms is more than 30 days ({MAX_EXPIRE_AFTER_MS} ms)"
        )));
    }
    if let Some(t) = s.timeout_ms.filter(|&t| t > MAX_TIMEOUT_MS) {
        return Err(Status::invalid_argument(format!(
            "timeout of {t} ms is more than 7 days ({MAX_TIMEOUT_MS} ms)"
        )));
    }
    match s.source.as_ref().and_then(|s| s.kind.as_ref()) {
        Some(pb::source::Kind::Dir(d)) => text("source dir", d, MAX_PATH)?,
        Some(pb::source::Kind::Git(g)) => {
            text("git url", &g.url, MAX_PATH)?;
            text("git ref", &g.r#ref, MAX_PATH)?;
        }
        None => {}
    }
    list("args", &s.args, MAX_ITEMS, MAX_TEXT)?;
    list("select", &s.select, MAX_SELECT, MAX_NODEID)?;
    map("env", s.env.iter(), MAX_ITEMS, MAX_TEXT)?;
    map("labels", s.labels.iter(), MAX_LABELS, MAX_TEXT)?;
    if let Some(b) = &s.benchmark {
        list("benchmark command", &b.command, MAX_ITEMS, MAX_TEXT)?;
        list("benchmark cases", &b.cases, MAX_ITEMS, MAX_PATH)?;
        text("benchmark metric", &b.metric, MAX_NAME)?;
        if b.extractors.len() > MAX_LABELS {
            return Err(Status::invalid_argument(format!(
                "benchmark extractors has too many items: {}, the limit is {MAX_LABELS}",
                b.extractors.len()
            )));
        }
        for x in &b.extractors {
            text("an extractor's metric", &x.metric, MAX_NAME)?;
            text("an extractor's pattern", &x.pattern, MAX_PATH)?;
        }
    }
    Ok(())
}

/// The priority a caller may give: admins up to [`MAX_PRIORITY`], everyone
/// else up to [`MAX_SUBMITTER_PRIORITY`] (either sign).
pub fn priority_for(priority: i32, admin: bool) -> Result<(), Status> {
    if !admin && priority.unsigned_abs() > MAX_SUBMITTER_PRIORITY as u32 {
        return Err(Status::invalid_argument(format!(
            "priority {priority} needs an admin token: submitters may use \
             -{MAX_SUBMITTER_PRIORITY}..={MAX_SUBMITTER_PRIORITY}"
        )));
    }
    Ok(())
}

/// A test result an agent reports: refused whole when over a limit (the
/// agent truncates `longrepr` itself, so only a broken agent gets here).
pub fn test_result(t: &pb::TestResult) -> Result<(), Status> {
    text("test result nodeid", &t.nodeid, MAX_NODEID)?;
    text("test result when", &t.when, MAX_WORD)?;
    text("test result outcome", &t.outcome, MAX_WORD)?;
    text("test result longrepr", &t.longrepr, MAX_LONGREPR)?;
    list("test result markers", &t.markers, MAX_MARKERS, MAX_NAME)
}

/// A batch of test results (`TaskUpdate.tests`): refused whole when it is
/// empty, holds over [`pb::MAX_BATCH_RESULTS`] results or
/// [`pb::MAX_BATCH_BYTES`] encoded, or any result is over a limit (named by
/// its place in the batch).
pub fn test_results(batch: &pb::TestResults) -> Result<(), Status> {
    use prost::Message;
    if batch.results.is_empty() {
        return Err(Status::invalid_argument("an empty batch of test results"));
    }
    if batch.results.len() > pb::MAX_BATCH_RESULTS {
        return Err(Status::invalid_argument(format!(
            "{} results in one batch; at most {} (send the rest in the next)",
            batch.results.len(),
            pb::MAX_BATCH_RESULTS
        )));
    }
    let len = batch.encoded_len();
    if len > pb::MAX_BATCH_BYTES {
        return Err(too_long(
            "test result batch (encoded)",
            len,
            pb::MAX_BATCH_BYTES,
        ));
    }
    for (i, t) in batch.results.iter().enumerate() {
        test_result(t)
            .map_err(|s| Status::invalid_argument(format!("result {i}: {}", s.message())))?;
    }
    Ok(())
}

/// A benchmark case result an agent reports.
pub fn case_result(c: &pb::CaseResult) -> Result<(), Status> {
    use prost::Message;
    let len = c.encoded_len();
    if len > MAX_CASE_RESULT {
        return Err(too_long("case result (encoded)", len, MAX_CASE_RESULT));
    }
    Ok(())
}

/// What a request may hold, checked before it reaches the core.
pub trait Bounded {
    fn check(&self) -> Result<(), Status>;
}

macro_rules! bounded {
    ($($ty:ty => |$r:ident| $body:expr;)*) => {
        $(impl Bounded for $ty {
            fn check(&self) -> Result<(), Status> {
                let $r = self;
                $body
            }
        })*
    };
}

bounded! {
    pb::SubmitRequest => |r| r.spec.as_ref().map_or(Ok(()), spec);
    pb::GetJobRequest => |r| text("job id", &r.id, MAX_ID);
    pb::CancelJobRequest => |r| text("job id", &r.id, MAX_ID);
    pb::WatchJobRequest => |r| text("job id", &r.id, MAX_ID);
    pb::ListJobsRequest => |r| {
        text("queue", &r.queue, MAX_NAME)?;
        text("state", &r.state, MAX_WORD)?;
        text("cursor", &r.cursor, MAX_ID)?;
        text("submitter", &r.submitter, MAX_NAME)?;
        list("label filters", &r.labels, MAX_LABELS, MAX_TEXT)
    };
    pb::ListAgentsRequest => |_r| Ok(());
    pb::ListQueuesRequest => |_r| Ok(());
    pb::ListSchedulesRequest => |_r| Ok(());
    pb::SetAgentAdminRequest => |r| {
        text("agent name", &r.name, MAX_NAME)?;
        if r.drain_deadline_in_ms > MAX_DRAIN_DEADLINE_MS {
            return Err(Status::invalid_argument(format!(
                "drain deadline of {} ms is more than 30 days ({MAX_DRAIN_DEADLINE_MS} ms)",
                r.drain_deadline_in_ms
            )));
        }
        text("reason", &r.reason, MAX_TEXT_REASON)
    };
    pb::ForgetAgentRequest => |r| text("agent name", &r.name, MAX_NAME);
    pb::CheckAgentRequest => |r| text("agent name", &r.name, MAX_NAME);
    pb::ScheduleName => |r| text("schedule name", &r.name, MAX_NAME);
    pb::SetSchedulePausedRequest => |r| text("schedule name", &r.name, MAX_NAME);
    pb::Schedule => |r| {
        text("schedule name", &r.name, MAX_NAME)?;
        text("cron", &r.cron, MAX_CRON)?;
        text("tz", &r.tz, MAX_CRON)?;
        text("misfire", &r.misfire, MAX_WORD)?;
        text("overlap", &r.overlap, MAX_WORD)?;
        r.spec.as_ref().map_or(Ok(()), spec)
    };
    pb::TestHistoryRequest => |r| {
        text("test id", &r.test_id, MAX_NODEID)?;
        text("profile", &r.profile, MAX_NAME)
    };
    pb::ListBaselinesRequest => |r| {
        text("case", &r.case, MAX_PATH)?;
        text("profile", &r.profile, MAX_NAME)
    };
    pb::AcceptBaselinesRequest => |r| {
        text("job id", &r.job_id, MAX_ID)?;
        text("who", &r.who, MAX_NAME)
    };
    pb::CreateTokenRequest => |r| {
        text("token name", &r.name, MAX_NAME)?;
        text("role", &r.role, MAX_WORD)?;
        text("profile", &r.profile, MAX_NAME)?;
        map("token labels", r.labels.iter(), MAX_LABELS, MAX_TEXT)
    };
    pb::ListTokensRequest => |r| text("token kind", &r.kind, MAX_WORD);
    pb::RevokeTokenRequest => |r| {
        text("token name", &r.name, MAX_NAME)?;
        text("token kind", &r.kind, MAX_WORD)
    };
    pb::AttemptRef => |r| text("task id", &r.task_id, MAX_ID);
    pb::GetBaselinesRequest => |r| {
        r.attempt.as_ref().map_or(Ok(()), Bounded::check)?;
        if r.keys.len() > MAX_REFS {
            return Err(Status::invalid_argument(format!(
                "baseline keys has too many items: {}, the limit is {MAX_REFS}",
                r.keys.len()
            )));
        }
        for k in &r.keys {
            text("baseline case", &k.case, MAX_PATH)?;
            text("baseline input hash", &k.input_hash, MAX_NAME)?;
            text("baseline metric", &k.metric, MAX_NAME)?;
            text("baseline profile", &k.profile, MAX_NAME)?;
        }
        Ok(())
    };
    pb::Register => |r| {
        use prost::Message;
        text("agent name", &r.name, MAX_NAME)?;
        text("instance id", &r.instance_id, MAX_ID)?;
        refs(&r.resume)?;
        let caps = r.capabilities.as_ref().map_or(0, |c| c.encoded_len());
        if caps > MAX_CAPABILITIES {
            return Err(too_long("capabilities (encoded)", caps, MAX_CAPABILITIES));
        }
        if let Some(c) = &r.capabilities {
            list("roots", &c.roots, MAX_LABELS, MAX_PATH)?;
            map("agent labels", c.labels.iter(), MAX_LABELS, MAX_TEXT)?;
            text("profile", &c.profile, MAX_NAME)?;
            health(c)?;
            text("containment", &c.containment, MAX_NAME)?;
        }
        Ok(())
    };
    pb::Heartbeat => |r| refs(&r.running);
    pb::HealthReport => |r| {
        use prost::Message;
        let caps = r.capabilities.as_ref().map_or(0, |c| c.encoded_len());
        if caps > MAX_CAPABILITIES {
            return Err(too_long("capabilities (encoded)", caps, MAX_CAPABILITIES));
        }
        r.capabilities.as_ref().map_or(Ok(()), health)
    };
}

/// The health summary and the environment usage an agent reports with its capabilities.
fn health(c: &pb::Capabilities) -> Result<(), Status> {
    if let Some(h) = &c.health {
        text("health status", &h.status, MAX_WORD)?;
        list("health reasons", &h.reasons, MAX_LABELS, MAX_NAME)?;
    }
    if let Some(u) = &c.environment_usage {
        for (what, entries) in [("environments", &u.environments), ("caches", &u.caches)] {
            if entries.len() > MAX_ITEMS {
                return Err(Status::invalid_argument(format!(
                    "environment usage lists too many {what}: {}, the limit is {MAX_ITEMS}",
                    entries.len()
                )));
            }
            for e in entries {
                text("an environment's or cache's name", &e.name, MAX_NAME)?;
                list(
                    "an environment's affinity",
                    &e.affinity,
                    MAX_LABELS,
                    MAX_WORD,
                )?;
            }
        }
    }
    Ok(())
}

fn refs(refs: &[pb::AttemptRef]) -> Result<(), Status> {
    if refs.len() > MAX_REFS {
        return Err(Status::invalid_argument(format!(
            "attempts has too many items: {}, the limit is {MAX_REFS}",
            refs.len()
        )));
    }
    refs.iter().try_for_each(Bounded::check)
}

/// `text` cut to at most `max` bytes (at a character boundary).
pub fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::jobspec::validate;
    use msfleet_proto::{source, GitSource, JobSpec, Source};
    use tonic::Code;

    fn job() -> JobSpec {
        JobSpec {
            source: Some(Source {
                kind: Some(source::Kind::Dir("/srv/p".into())),
            }),
            args: vec!["tests".into()],
            ..Default::default()
        }
    }

    fn refused(s: JobSpec) -> String {
        let mut s = s;
        let e = validate(&mut s, &Config::new("/tmp/x")).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().len() < 200, "short: {}", e.message());
        assert!(!e.message().contains('\n'), "one line: {}", e.message());
        e.message().to_string()
    }

    fn accepted(s: JobSpec) {
        let mut s = s;
        validate(&mut s, &Config::new("/tmp/x")).expect("within the limits");
    }

    /// Each bound: the spec at the limit passes, one past it is refused with
    /// a message naming the field (and never quoting the input).
    #[test]
    fn every_spec_bound_admits_the_limit_and_refuses_one_more() {
        type Set = Box<dyn Fn(&mut JobSpec, usize)>;
        let cases: Vec<(&str, usize, Set)> = vec![
            ("priority", 1000, Box::new(|s, n| s.priority = n as i32)),
            ("priority", 1000, Box::new(|s, n| s.priority = -(n as i32))),
            ("retries", 10, Box::new(|s, n| s.retries = Some(n as u32))),
            (
                "agent_lost_retries",
                MAX_AGENT_LOST_RETRIES as usize,
                Box::new(|s, n| s.agent_lost_retries = Some(n as u32)),
            ),
            (
                "7 days",
                MAX_TIMEOUT_MS as usize,
                Box::new(|s, n| s.timeout_ms = Some(n as i64)),
            ),
            (
                "select has too many items",
                MAX_SELECT,
                Box::new(|s, n| s.select = vec!["t.py::x".into(); n]),
            ),
            (
                "an item of select",
                MAX_NODEID,
                Box::new(|s, n| s.select = vec!["x".repeat(n)]),
            ),
            (
                "labels has too many entries",
                MAX_LABELS,
                Box::new(|s, n| s.labels = (0..n).map(|i| (format!("k{i}"), "v".into())).collect()),
            ),
            (
                "env has too many entries",
                MAX_ITEMS,
                Box::new(|s, n| s.env = (0..n).map(|i| (format!("K{i}"), "v".into())).collect()),
            ),
            (
                "args has too many items",
                MAX_ITEMS,
                Box::new(|s, n| s.args = vec!["a".into(); n]),
            ),
            ("name", MAX_NAME, Box::new(|s, n| s.name = "n".repeat(n))),
            (
                "dedup_key",
                MAX_DEDUP_KEY,
                Box::new(|s, n| s.dedup_key = "d".repeat(n)),
            ),
            (
                "requirements",
                MAX_REQUIREMENTS,
                Box::new(|s, n| s.requirements = format!("slots>=1{}", " ".repeat(n - 8))),
            ),
            (
                "source dir",
                MAX_PATH,
                Box::new(|s, n| {
                    s.source = Some(Source {
                        kind: Some(source::Kind::Dir(format!("/{}", "d".repeat(n - 1)))),
                    })
                }),
            ),
            (
                "git url",
                MAX_PATH,
                Box::new(|s, n| {
                    s.source = Some(Source {
                        kind: Some(source::Kind::Git(GitSource {
                            url: "u".repeat(n),
                            r#ref: "main".into(),
                        })),
                    })
                }),
            ),
            (
                "git ref",
                MAX_PATH,
                Box::new(|s, n| {
                    s.source = Some(Source {
                        kind: Some(source::Kind::Git(GitSource {
                            url: "https://example.org/x.git".into(),
                            r#ref: "r".repeat(n),
                        })),
                    })
                }),
            ),
        ];
        for (want, limit, set) in cases {
            let mut s = job();
            set(&mut s, limit);
            accepted(s);
            let mut s = job();
            set(&mut s, limit + 1);
            let why = refused(s);
            assert!(why.contains(want), "{why} !~ {want}");
        }
    }

    #[test]
    fn a_deeply_nested_requirement_is_refused_in_one_short_line() {
        let mut s = job();
        s.requirements = format!("{}gpu.count>=1{}", "(".repeat(10_000), ")".repeat(10_000));
        let why = refused(s);
        assert!(
            why.contains("requirements is too long: 20012 bytes"),
            "{why}"
        );
        // Within the length bound, too deep: the parser's error, without the caret rendering
        // of a long expression.
        let mut s = job();
        s.requirements = format!("{}gpu.count>=1{}", "(".repeat(100), ")".repeat(100));
        let why = refused(s);
        assert!(why.contains("bad requirement"), "{why}");
    }

    #[test]
    fn submitters_get_a_smaller_priority_range_than_admins() {
        assert!(priority_for(100, false).is_ok());
        assert!(priority_for(-100, false).is_ok());
        let e = priority_for(101, false).unwrap_err();
        assert!(
            e.message().contains("needs an admin token"),
            "{}",
            e.message()
        );
        assert!(priority_for(-101, false).is_err());
        assert!(priority_for(1000, true).is_ok());
    }

    #[test]
    fn request_strings_are_bounded_without_being_quoted() {
        let long = "x".repeat(100_000);
        let reqs: Vec<Box<dyn Bounded>> = vec![
            Box::new(pb::GetJobRequest { id: long.clone() }),
            Box::new(pb::CancelJobRequest { id: long.clone() }),
            Box::new(pb::WatchJobRequest {
                id: long.clone(),
                after_seq: 0,
            }),
            Box::new(pb::ListJobsRequest {
                labels: vec!["a=b".into(); MAX_LABELS + 1],
                ..Default::default()
            }),
            Box::new(pb::ListJobsRequest {
                state: long.clone(),
                ..Default::default()
            }),
            Box::new(pb::TestHistoryRequest {
                test_id: "t".repeat(MAX_NODEID + 1),
                ..Default::default()
            }),
            Box::new(pb::Schedule {
                name: "s".into(),
                cron: long.clone(),
                ..Default::default()
            }),
            Box::new(pb::Schedule {
                name: "s".into(),
                tz: long.clone(),
                ..Default::default()
            }),
            Box::new(pb::ScheduleName { name: long.clone() }),
            Box::new(pb::SetAgentAdminRequest {
                name: long.clone(),
                admin: 0,
                drain_deadline_in_ms: 0,
                reason: String::new(),
            }),
            Box::new(pb::SetAgentAdminRequest {
                name: "a".into(),
                admin: 2,
                drain_deadline_in_ms: MAX_DRAIN_DEADLINE_MS + 1,
                reason: String::new(),
            }),
            Box::new(pb::ForgetAgentRequest { name: long.clone() }),
            Box::new(pb::CheckAgentRequest { name: long.clone() }),
            Box::new(pb::AcceptBaselinesRequest {
                job_id: long.clone(),
                who: String::new(),
            }),
            Box::new(pb::ListBaselinesRequest {
                case: long.clone(),
                ..Default::default()
            }),
            Box::new(pb::CreateTokenRequest {
                name: long.clone(),
                ..Default::default()
            }),
            Box::new(pb::RevokeTokenRequest {
                name: long.clone(),
                kind: String::new(),
            }),
            Box::new(pb::ListTokensRequest { kind: long.clone() }),
            Box::new(pb::Register {
                name: "a".into(),
                instance_id: long.clone(),
                ..Default::default()
            }),
            Box::new(pb::Heartbeat {
                running: vec![Default::default(); MAX_REFS + 1],
            }),
            Box::new(pb::GetBaselinesRequest {
                attempt: Some(pb::AttemptRef {
                    task_id: long.clone(),
                    ..Default::default()
                }),
                keys: Vec::new(),
            }),
        ];
        for r in reqs {
            let e = r.check().unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument);
            assert!(e.message().len() < 120, "{}", e.message());
        }
        assert!(pb::TestHistoryRequest {
            test_id: "t".repeat(MAX_NODEID),
            ..Default::default()
        }
        .check()
        .is_ok());
    }

    #[test]
    fn cut_keeps_whole_characters() {
        let mut s = "ééé".to_string();
        cut(&mut s, 3);
        assert_eq!(s, "é");
    }
}
