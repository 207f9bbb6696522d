//! A job's and its attempts' OpenTelemetry spans, and the job metrics (CI/CD semantic
//! conventions).
//!
//! The core never holds a span open: at submit it only chooses the job span's ids
//! ([`link_job`], stored in the job), an attempt's span id is derived from the job span's
//! ([`attempt_traceparent`], sent in the assignment), and when an attempt or the job ends
//! the core builds a [`FinishedSpan`] with explicit start and end times, which
//! `Step::telemetry` emits after the turn's writes are durable (on the flusher thread; the
//! SDK's batch processor only queues it). A job's end is also recorded in the metrics
//! ([`JobEnd`]). With no exporter set up nothing here runs.

use msfleet_proto::telemetry::opentelemetry::metrics::{Counter, Histogram};
use msfleet_proto::telemetry::opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use msfleet_proto::telemetry::opentelemetry::{global, Context, KeyValue};
use msfleet_proto::telemetry::{self as otel, derived_span_id, parse_traceparent, traceparent};
use msfleet_proto::{Job, JobState};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Telemetry the core hands out once the turn's writes are durable.
pub(crate) trait Export: Send + 'static {
    fn export(self);
}

/// A span whose work is over, ready to be exported.
pub(crate) struct FinishedSpan {
    name: &'static str,
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    start_ms: i64,
    end_ms: i64,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

impl Export for FinishedSpan {
    /// Hands the span to the SDK's batch processor.
    fn export(self) {
        static TRACER: OnceLock<global::BoxedTracer> = OnceLock::new();
        let tracer = TRACER.get_or_init(|| global::tracer("msched"));
        let cx = match self.parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                self.trace,
                p,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let mut span = otel::with_ids(self.trace, self.span, || {
            tracer
                .span_builder(self.name)
                .with_kind(SpanKind::Internal)
                .with_start_time(at(self.start_ms))
                .with_attributes(self.attributes)
                .start_with_context(tracer, &cx)
        });
        use msfleet_proto::telemetry::opentelemetry::trace::Span as _;
        span.set_status(match self.error {
            Some(why) => Status::error(why),
            None => Status::Ok,
        });
        span.end_with_timestamp(at(self.end_ms.max(self.start_ms)));
    }
}

fn at(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Chooses the ids of a new job's span and stores them in `job`: a child of the
/// submitter's span `caller` (same trace) when it sent one, else the root of a new trace.
/// Does nothing when no exporter is set up.
pub(crate) fn link_job(job: &mut Job, caller: Option<&SpanContext>) {
    if !otel::enabled() {
        return;
    }
    let trace = caller.map_or_else(otel::new_trace_id, |c| c.trace_id());
    job.trace_context = traceparent(trace, otel::new_span_id());
    job.trace_caller_span_id = caller.map(|c| c.span_id().to_string()).unwrap_or_default();
}

/// The job span's context as stored in the job, if it has one and traces are exported
/// (a job stored while they were exported gets no spans from a scheduler that does not).
pub(crate) fn job_context(job: &Job) -> Option<SpanContext> {
    if !otel::enabled() {
        return None;
    }
    parse_traceparent(&job.trace_context)
}

/// The context (W3C traceparent) of attempt `attempt`'s span, for the assignment; empty
/// when the job has no trace.
pub(crate) fn attempt_traceparent(job: &Job, attempt: u32) -> String {
    job_context(job)
        .map(|sc| traceparent(sc.trace_id(), derived_span_id(sc.span_id(), attempt)))
        .unwrap_or_default()
}

/// `cicd.pipeline.result` / `cicd.pipeline.task.run.result` of a job state.
fn result(state: JobState) -> &'static str {
    match state {
        JobState::Passed => "success",
        JobState::Failed => "failure",
        JobState::Cancelled => "cancellation",
        JobState::TimedOut => "timeout",
        JobState::Expired => "skip",
        _ => "error",
    }
}

/// A span's status is an error for what went wrong apart from the tests: a failed test
/// is the job's result, a cancel someone's choice.
fn infra_failure(state: JobState) -> bool {
    matches!(
        state,
        JobState::Error | JobState::TimedOut | JobState::Expired | JobState::NoResource
    )
}

fn pipeline_name(job: &Job) -> String {
    let spec = job.spec.as_ref();
    match spec.map(|s| s.name.as_str()).filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => spec.map_or("job", |s| s.kind.as_str()).to_string(),
    }
}

/// The span of a job that just ended (`job.state` terminal).
pub(crate) fn job_span(job: &Job) -> Option<FinishedSpan> {
    let sc = job_context(job)?;
    let state = job.state();
    let parent = SpanId::from_hex(&job.trace_caller_span_id).ok();
    let queue = job.spec.as_ref().map_or("", |s| s.queue.as_str());
    Some(FinishedSpan {
        name: "cicd.pipeline.run",
        trace: sc.trace_id(),
        span: sc.span_id(),
        parent: parent.filter(|p| *p != SpanId::INVALID),
        start_ms: job.submitted_at_ms,
        end_ms: job.finished_at_ms,
        attributes: vec![
            KeyValue::new("cicd.pipeline.name", pipeline_name(job)),
            KeyValue::new("cicd.pipeline.run.id", job.id.clone()),
            KeyValue::new("cicd.pipeline.result", result(state)),
            KeyValue::new("msfleet.job.state", state.label()),
            KeyValue::new("msfleet.queue", queue.to_string()),
            KeyValue::new("msfleet.attempts", i64::from(job.attempts)),
        ],
        error: infra_failure(state).then(|| job.reason.clone()),
    })
}

/// The span of attempt `attempt` of `job`, run on `agent` from `start_ms`, that ended at
/// `end_ms` as `state` (`why`: the attempt's reason; for a lost attempt what happened).
pub(crate) fn attempt_span(
    job: &Job,
    attempt: u32,
    agent: &str,
    start_ms: i64,
    end_ms: i64,
    state: JobState,
    why: &str,
) -> Option<FinishedSpan> {
    let sc = job_context(job)?;
    Some(FinishedSpan {
        name: "cicd.pipeline.task.run",
        trace: sc.trace_id(),
        span: derived_span_id(sc.span_id(), attempt),
        parent: Some(sc.span_id()),
        start_ms,
        end_ms,
        attributes: vec![
            KeyValue::new("cicd.pipeline.task.name", pipeline_name(job)),
            KeyValue::new("cicd.pipeline.task.run.id", format!("{}.{attempt}", job.id)),
            KeyValue::new("cicd.pipeline.task.run.result", result(state)),
            KeyValue::new("cicd.pipeline.run.id", job.id.clone()),
            KeyValue::new("cicd.worker.name", agent.to_string()),
        ],
        error: infra_failure(state).then(|| why.to_string()),
    })
}

/// The job metrics: `cicd.pipeline.run.duration` (s, by `cicd.pipeline.result` and
/// `msfleet.queue`; job names are not a label, they are unbounded), `cicd.pipeline.run.errors`
/// (jobs that ended error, timeout, or expired unrun, by `error.type`), and `msfleet.job.wait`
/// (s from submit to the first start, by queue).
struct Instruments {
    duration: Histogram<f64>,
    errors: Counter<u64>,
    wait: Histogram<f64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = global::meter("msched");
        Instruments {
            duration: meter
                .f64_histogram("cicd.pipeline.run.duration")
                .with_unit("s")
                .with_description("Duration of a job, from submit to its end")
                .build(),
            errors: meter
                .u64_counter("cicd.pipeline.run.errors")
                .with_description("Jobs that ended in an error (not a test failure)")
                .build(),
            wait: meter
                .f64_histogram("msfleet.job.wait")
                .with_unit("s")
                .with_description("Wait of a job from submit to its first start")
                .build(),
        }
    })
}

/// A job's end, for the metrics.
pub(crate) struct JobEnd {
    queue: String,
    result: &'static str,
    duration_s: f64,
    wait_s: Option<f64>,
}

/// The metrics of a job that just ended (`job.state` terminal); `None` without metric export.
pub(crate) fn job_end(job: &Job) -> Option<JobEnd> {
    if !otel::metrics_enabled() {
        return None;
    }
    let ms = |a: i64, b: i64| (b.saturating_sub(a)).max(0) as f64 / 1000.0;
    Some(JobEnd {
        queue: job
            .spec
            .as_ref()
            .map_or_else(String::new, |s| s.queue.clone()),
        result: result(job.state()),
        duration_s: ms(job.submitted_at_ms, job.finished_at_ms),
        wait_s: (job.started_at_ms > 0).then(|| ms(job.submitted_at_ms, job.started_at_ms)),
    })
}

impl Export for JobEnd {
    fn export(self) {
        let m = instruments();
        let queue = KeyValue::new("msfleet.queue", self.queue);
        m.duration.record(
            self.duration_s,
            &[
                KeyValue::new("cicd.pipeline.result", self.result),
                queue.clone(),
            ],
        );
        if matches!(self.result, "error" | "timeout" | "skip") {
            m.errors.add(
                1,
                &[KeyValue::new("error.type", self.result), queue.clone()],
            );
        }
        if let Some(w) = self.wait_s {
            m.wait.record(w, &[queue]);
        }
    }
}
