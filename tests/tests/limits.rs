//! End-to-end: the limits that keep a client from exhausting the scheduler
//! (issue 8, item 6), through the real msctl, msched and msagent.

mod common;

use common::*;

/// A 10,000-level requirement expression used to come back as `h2 protocol
/// error` (the refusal quoted the whole expression into a gRPC header); it is
/// refused as bad input with one short line.
#[test]
fn a_huge_requirement_is_refused_in_one_short_line() {
    let f = Fleet::new();
    let deep = format!("{}gpu.count>=1{}", "(".repeat(10_000), ")".repeat(10_000));
    let suite = f.write_suite("s", &[("test_a.py", "def test_a():\n    pass\n")]);
    let dir = suite.to_str().unwrap();
    let out = f.ctl(&["submit", "pytest", "--dir", dir, "--require", &deep]);
    assert_eq!(out.code, 2, "{out:.2000}");
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "one line: {out:.2000}");
    assert!(lines[0].len() < 300, "short: {}", lines[0]);
    assert!(
        lines[0].contains("requirements is too long"),
        "{}",
        lines[0]
    );
    assert!(!out.stderr.contains("h2 protocol error"), "{out:.2000}");
}

/// A job that prints more than `--max-log-bytes` ends with the marker as the
/// last of its log, and its tests are still counted.
#[test]
fn output_past_the_log_limit_is_dropped_after_one_marker() {
    let mut f = Fleet::with_opts(SchedOpts {
        extra: vec!["--max-log-bytes".into(), "1MiB".into()],
        ..Default::default()
    });
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite(
        "loud",
        &[(
            "test_loud.py",
            "import sys\n\n\
             def test_loud():\n    \
                 for _ in range(3 * 1024):\n        \
                     sys.stdout.write('y' * 1023 + '\\n')\n\n\
             def test_after():\n    \
                 assert True\n\n\
             def test_fails():\n    \
                 assert False\n",
        )],
    );
    let dir = suite.to_str().unwrap();
    let id = f.submit(&["pytest", "--dir", dir, "--", "-s"]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "failed", "{j:#}");
    assert_eq!(j["tests"]["passed"], 2, "{j:#}");
    assert_eq!(j["tests"]["failed"], 1, "{j:#}");
    let logs = f.ctl(&["logs", &id]);
    assert_eq!(logs.code, 0, "{logs:.2000}");
    let all = format!("{}{}", logs.stdout, logs.stderr);
    let marker = "[msfleet: this attempt's output passed the 1 MiB log limit; the rest is dropped]";
    assert_eq!(
        all.matches(marker).count(),
        1,
        "one marker:\n{:.3000}",
        logs.stderr
    );
    let ys = logs.stdout.matches('y').count();
    assert!(
        ys < (1 << 20) && ys > (1 << 20) - 64 * 1024,
        "output kept up to the limit: {ys} bytes of it"
    );
    assert!(
        !all.contains("short test summary") && !all.contains("1 failed"),
        "pytest's summary came after the limit and was dropped:\n{:.3000}",
        &all[all.len().saturating_sub(3000)..]
    );
}
