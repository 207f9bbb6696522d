//! The scheduler's Prometheus metrics: every name, label and description in
//! one place.
//!
//! Counters and histograms are observed by the core ([`Observation`], queued
//! on the turn's `Step` and recorded only once its writes are durable, so a
//! scrape never shows what a crash could still undo) and by the store's
//! flusher (commit time and batch size). Gauges (jobs per queue and state,
//! oldest pending, agents per state) are computed at scrape time from a
//! [`Snapshot`] the core makes on demand.
//!
//! With no recorder installed (`--http-listen off`) every `metrics` macro is a
//! no-op.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;

pub const QUEUE_JOBS: &str = "msfleet_queue_jobs";
pub const OLDEST_PENDING: &str = "msfleet_oldest_pending_seconds";
pub const JOB_WAIT: &str = "msfleet_job_wait_seconds";
pub const JOB_DURATION: &str = "msfleet_job_duration_seconds";
pub const JOBS_FINISHED: &str = "msfleet_jobs_finished_total";
pub const AGENTS: &str = "msfleet_agents";
pub const LEASE_EXPIRED: &str = "msfleet_lease_expired_total";
pub const ATTEMPTS_RETRIED: &str = "msfleet_attempts_retried_total";
pub const TEST_RESULTS: &str = "msfleet_test_results_total";
pub const BENCH_VERDICTS: &str = "msfleet_bench_verdicts_total";
pub const SCHEDULE_FIRES: &str = "msfleet_schedule_fires_total";
pub const STORE_COMMIT: &str = "msfleet_store_commit_seconds";
pub const JOBS_ARCHIVED: &str = "msfleet_store_jobs_archived_total";
pub const STORE_COMMIT_BATCH: &str = "msfleet_store_commit_batch";
pub const SUBMIT: &str = "msfleet_submit_seconds";

/// Job states the queue gauge reports (the ones a job waits or runs in).
pub const QUEUE_STATES: [&str; 3] = ["queued", "assigned", "running"];

/// Agent states the agent gauge reports: every state `agent_state` gives.
pub const AGENT_STATES: [&str; 6] = [
    "online",
    "busy",
    "offline",
    "lost",
    "drained",
    "quarantined",
];

/// Test outcomes counted by name; anything else an agent sends is `other`,
/// so an agent cannot make label values without bound.
const TEST_OUTCOMES: [&str; 8] = [
    "passed",
    "failed",
    "skipped",
    "xfailed",
    "xpassed",
    "error",
    "subpassed",
    "flaky",
];

/// Benchmark verdicts counted by name; anything else is `other`.
const BENCH_VERDICTS_KNOWN: [&str; 6] = [
    "pass",
    "regression",
    "improvement",
    "no_baseline",
    "noisy",
    "error",
];

/// Seconds from a few milliseconds (a submit, a flush) to a day (a job).
const TIME_BUCKETS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Records per store flush.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 20000.0,
];

/// Installs the Prometheus recorder for this process and describes every
/// metric; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for name in [JOB_WAIT, JOB_DURATION, STORE_COMMIT, SUBMIT] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), &TIME_BUCKETS)?;
    }
    builder =
        builder.set_buckets_for_metric(Matcher::Full(STORE_COMMIT_BATCH.into()), &BATCH_BUCKETS)?;
    let handle = builder.install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_gauge!(
        QUEUE_JOBS,
        "Jobs per queue that are queued, assigned or running"
    );
    describe_gauge!(
        OLDEST_PENDING,
        metrics::Unit::Seconds,
        "Age of the oldest queued job per queue (0 when none waits)"
    );
    describe_histogram!(
        JOB_WAIT,
        metrics::Unit::Seconds,
        "Time from submit to the first start of a job, per queue"
    );
    describe_histogram!(
        JOB_DURATION,
        metrics::Unit::Seconds,
        "Time from a job's start to its end, per queue and result"
    );
    describe_counter!(JOBS_FINISHED, "Jobs that ended, per queue and result");
    describe_gauge!(AGENTS, "Known agents per state");
    describe_counter!(
        LEASE_EXPIRED,
        "Agents found silent past their lease (lost), with or without attempts"
    );
    describe_counter!(
        ATTEMPTS_RETRIED,
        "Attempts lost (agent gone, given up, stopped, quarantined) and requeued"
    );
    describe_counter!(TEST_RESULTS, "Test results reported by agents, per outcome");
    describe_counter!(BENCH_VERDICTS, "Benchmark case results, per verdict");
    describe_counter!(
        SCHEDULE_FIRES,
        "Schedule slots handled, per schedule and outcome (fired, skipped, refused, missed)"
    );
    describe_histogram!(
        STORE_COMMIT,
        metrics::Unit::Seconds,
        "Duration of one group-commit flush of the store"
    );
    describe_counter!(
        JOBS_ARCHIVED,
        "Finished jobs moved from their own keys into the store's archive chunks"
    );
    describe_histogram!(
        STORE_COMMIT_BATCH,
        "Records written by one group-commit flush"
    );
    describe_histogram!(
        SUBMIT,
        metrics::Unit::Seconds,
        "Duration of a Submit call, until the job is durable"
    );
}

/// Something the core saw happen, recorded once the turn's writes are durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A job's first start (`wait_s`: since its submit).
    Started {
        queue: String,
        wait_s: f64,
    },
    /// A job ended; `ran_s` from its start when it started.
    Finished {
        queue: String,
        result: &'static str,
        ran_s: Option<f64>,
    },
    Retried,
    LeaseExpired,
    TestResult {
        outcome: String,
    },
    BenchVerdict {
        verdict: String,
    },
    ScheduleFire {
        schedule: String,
        outcome: &'static str,
    },
}

impl Observation {
    pub fn test_result(outcome: &str) -> Observation {
        Observation::TestResult {
            outcome: known_or_other(&TEST_OUTCOMES, outcome),
        }
    }

    pub fn bench_verdict(verdict: &str) -> Observation {
        Observation::BenchVerdict {
            verdict: known_or_other(&BENCH_VERDICTS_KNOWN, verdict),
        }
    }

    pub fn record(&self) {
        match self {
            Observation::Started { queue, wait_s } => {
                histogram!(JOB_WAIT, "queue" => queue.clone()).record(*wait_s)
            }
            Observation::Finished {
                queue,
                result,
                ran_s,
            } => {
                counter!(JOBS_FINISHED, "queue" => queue.clone(), "result" => *result).increment(1);
                if let Some(s) = ran_s {
                    histogram!(JOB_DURATION, "queue" => queue.clone(), "result" => *result)
                        .record(*s);
                }
            }
            Observation::Retried => counter!(ATTEMPTS_RETRIED).increment(1),
            Observation::LeaseExpired => counter!(LEASE_EXPIRED).increment(1),
            Observation::TestResult { outcome } => {
                counter!(TEST_RESULTS, "outcome" => outcome.clone()).increment(1)
            }
            Observation::BenchVerdict { verdict } => {
                counter!(BENCH_VERDICTS, "verdict" => verdict.clone()).increment(1)
            }
            Observation::ScheduleFire { schedule, outcome } => {
                counter!(SCHEDULE_FIRES, "schedule" => schedule.clone(), "outcome" => *outcome)
                    .increment(1)
            }
        }
    }
}

fn known_or_other(known: &[&str], value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    if known.contains(&lower.as_str()) {
        lower
    } else {
        "other".into()
    }
}

/// `jobs` finished jobs archived by one pass of the retention thread.
pub fn jobs_archived(jobs: u64) {
    counter!(JOBS_ARCHIVED).increment(jobs);
}

/// One group-commit flush of `records` records that took `seconds`.
pub fn store_commit(seconds: f64, records: u64) {
    histogram!(STORE_COMMIT).record(seconds);
    histogram!(STORE_COMMIT_BATCH).record(records as f64);
}

/// The core's gauges at one moment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    /// Every configured queue, with its jobs per state of [`QUEUE_STATES`].
    pub queue_jobs: BTreeMap<String, [u64; 3]>,
    /// Every configured queue: age of its oldest queued job (0: none).
    pub oldest_pending_s: BTreeMap<String, f64>,
    /// Agents per state of [`AGENT_STATES`].
    pub agents: [u64; 6],
}

impl Snapshot {
    /// Sets the gauges to this snapshot (every queue and state, zeros too, so
    /// a drained queue reads 0 rather than its last value).
    pub fn publish(&self) {
        for (queue, counts) in &self.queue_jobs {
            for (state, n) in QUEUE_STATES.iter().zip(counts) {
                gauge!(QUEUE_JOBS, "queue" => queue.clone(), "state" => *state).set(*n as f64);
            }
        }
        for (queue, age) in &self.oldest_pending_s {
            gauge!(OLDEST_PENDING, "queue" => queue.clone()).set(*age);
        }
        for (state, n) in AGENT_STATES.iter().zip(self.agents) {
            gauge!(AGENTS, "state" => *state).set(n as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_label_values_are_bounded() {
        assert_eq!(
            Observation::test_result("PASSED"),
            Observation::TestResult {
                outcome: "passed".into()
            }
        );
        let long = "x".repeat(10_000);
        assert_eq!(
            Observation::test_result(&long),
            Observation::TestResult {
                outcome: "other".into()
            }
        );
        assert_eq!(
            Observation::bench_verdict("weird"),
            Observation::BenchVerdict {
                verdict: "other".into()
            }
        );
    }
}
