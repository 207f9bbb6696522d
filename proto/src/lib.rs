//! Generated types and services of the `msfleet.v1` protobuf package, shared by
//! the scheduler, the agent, msctl and the tests, plus the few naming rules
//! every side must agree on (state names, limits).

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("msfleet.v1");

    /// Encoded `FileDescriptorSet`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("msfleet_descriptor");
}

pub use v1::*;

pub mod backoff;
pub mod bench;
pub mod case;
pub mod client;
pub mod codec;
pub mod devices;
pub mod environment;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
#[cfg(test)]
mod fuzz_tests;
pub mod matrix;
pub mod memory;
pub mod noise;
pub mod open_files;
pub mod policy;
pub mod roots;
pub mod secrets;
pub mod systemd;
pub mod telemetry;

/// Largest log chunk (bytes of `LogChunk.data`) the scheduler accepts; agents split to this.
pub const MAX_LOG_CHUNK: usize = 64 * 1024;

/// Longest failure text (`TestResult.longrepr`) the scheduler accepts; the
/// agent cuts longer ones itself ([`cut_longrepr`]).
pub const MAX_LONGREPR: usize = 1 << 20;
/// Most markers of one test result.
pub const MAX_MARKERS: usize = 256;
/// Longest pytest node id.
pub const MAX_NODEID: usize = 4096;
/// What replaces the middle of a failure text that was too long.
pub const TRUNCATED: &str = "\n... [truncated by msfleet] ...\n";

/// `text` within [`MAX_LONGREPR`] bytes: a longer one keeps its start and
/// its end (where pytest puts the error) around a visible [`TRUNCATED`].
pub fn cut_longrepr(text: String) -> String {
    if text.len() <= MAX_LONGREPR {
        return text;
    }
    let keep = (MAX_LONGREPR - TRUNCATED.len()) / 2;
    let mut head = keep;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - keep;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{TRUNCATED}{}", &text[..head], &text[tail..])
}

/// Largest gRPC message either side decodes.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Most test results in one `TaskUpdate.tests` batch.
pub const MAX_BATCH_RESULTS: usize = 4096;
/// Largest encoded `TestResults` batch the scheduler accepts: room for the
/// largest single result (a [`MAX_LONGREPR`] text, a [`MAX_NODEID`] id and
/// [`MAX_MARKERS`] markers) with the rest of the message well within [`MAX_MESSAGE`].
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

impl JobState {
    /// The lower-case name users see and type (`queued`, `timed_out`, ...).
    pub fn label(self) -> &'static str {
        match self {
            JobState::Unspecified => "unspecified",
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Passed => "passed",
            JobState::Failed => "failed",
            JobState::Error => "error",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Expired => "expired",
            JobState::NoResource => "no_resource",
        }
    }

    /// Parses a name as printed by [`JobState::label`].
    pub fn from_label(s: &str) -> Option<JobState> {
        ALL_STATES.iter().copied().find(|st| st.label() == s)
    }

    /// True once the job can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Passed
                | JobState::Failed
                | JobState::Error
                | JobState::Cancelled
                | JobState::TimedOut
                | JobState::Expired
                | JobState::NoResource
        )
    }
}

/// Every state a job can be in, in lifecycle order.
pub const ALL_STATES: [JobState; 10] = [
    JobState::Queued,
    JobState::Assigned,
    JobState::Running,
    JobState::Passed,
    JobState::Failed,
    JobState::Error,
    JobState::Cancelled,
    JobState::TimedOut,
    JobState::Expired,
    JobState::NoResource,
];

impl AgentAdmin {
    /// `active`, `drained` or `quarantined`.
    pub fn label(self) -> &'static str {
        match self {
            AgentAdmin::Unspecified | AgentAdmin::Active => "active",
            AgentAdmin::Drained => "drained",
            AgentAdmin::Quarantined => "quarantined",
        }
    }
}

impl TestCounts {
    /// Counts one result under pytest's terminal category; other categories
    /// (`rerun`, ...) are not part of pytest's summary and are not counted.
    /// `flaky` moves one earlier failure to the flaky count; `subpassed` (a
    /// passed subtest) is pytest's "N subtests passed", not a test of `total`.
    pub fn record(&mut self, outcome: &str) {
        if outcome == "flaky" {
            self.failed = self.failed.saturating_sub(1);
            self.flaky += 1;
            return;
        }
        if outcome == "subpassed" {
            self.subtests_passed += 1;
            return;
        }
        let slot = match outcome {
            "passed" => &mut self.passed,
            "failed" => &mut self.failed,
            "skipped" => &mut self.skipped,
            "xfailed" => &mut self.xfailed,
            "xpassed" => &mut self.xpassed,
            "error" => &mut self.errors,
            _ => return,
        };
        *slot += 1;
        self.total += 1;
    }

    /// Counts one result as [`TestCounts::record`] does; a failed subtest
    /// (`when` "subtest") is also one of `subtests_failed`.
    pub fn record_result(&mut self, t: &TestResult) {
        self.record(&t.outcome);
        if t.when == SUBTEST && t.outcome == "failed" {
            self.subtests_failed += 1;
        }
    }
}

/// `TestResult.when` of a subtest's result.
pub const SUBTEST: &str = "subtest";

impl std::ops::AddAssign for TestCounts {
    /// Sums two tallies, e.g. a parent's from its children's.
    fn add_assign(&mut self, o: TestCounts) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
        self.xfailed += o.xfailed;
        self.xpassed += o.xpassed;
        self.errors += o.errors;
        self.flaky += o.flaky;
        self.total += o.total;
        self.subtests_passed += o.subtests_passed;
        self.subtests_failed += o.subtests_failed;
    }
}

impl AttemptRef {
    /// `task#attempt@epoch`, for logs and error messages.
    pub fn display(&self) -> String {
        format!("{}#{}@{}", self.task_id, self.attempt, self.epoch)
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn subtests_count_as_pytest_9_counts_them() {
        // pytest 9 -v: "2 failed, 1 passed, 2 subtests passed" for a test
        // whose subtest failed (the test is failed too) and its two passes.
        let mut c = TestCounts::default();
        let r = |when: &str, outcome: &str| TestResult {
            nodeid: "t.py::test_sub".into(),
            when: when.into(),
            outcome: outcome.into(),
            ..Default::default()
        };
        for t in [
            r(SUBTEST, "subpassed"),
            r(SUBTEST, "failed"),
            r(SUBTEST, "subpassed"),
            r("call", "failed"),
            r("call", "passed"),
        ] {
            c.record_result(&t);
        }
        assert_eq!(
            (
                c.failed,
                c.passed,
                c.subtests_passed,
                c.subtests_failed,
                c.total
            ),
            (2, 1, 2, 1, 3)
        );
        let mut sum = c;
        sum += c;
        assert_eq!((sum.subtests_passed, sum.subtests_failed), (4, 2));
    }

    #[test]
    fn a_long_failure_text_keeps_its_start_and_end_within_the_limit() {
        let text = format!("start{}é{}end", "x".repeat(MAX_LONGREPR), "y".repeat(10));
        let cut = cut_longrepr(text);
        assert!(cut.len() <= MAX_LONGREPR, "{}", cut.len());
        assert!(cut.starts_with("start") && cut.ends_with("end"));
        assert!(cut.contains("... [truncated by msfleet] ..."));
        assert_eq!(cut_longrepr("short".into()), "short");
    }
}
