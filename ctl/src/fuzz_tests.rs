//! Fuzz targets for the job file (`msctl submit -f job.toml` and the
//! `--dry-run` writer) (`cargo test fuzz_jobfile`; cases from
//! `MSFLEET_FUZZ_CASES`, default 256).

use crate::jobfile::{BenchmarkFile, ExtractFile, JobFile, SourceFile};
use proptest::prelude::*;

use msfleet_proto::fuzz::{fuzz_config, MAX_ERROR_BYTES};

/// What every answer of the job file parser must satisfy: an accepted file
/// that makes a spec round-trips through the dry-run writer to the same
/// file and spec; a refusal has a short, non-empty message.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    match JobFile::parse(text) {
        Ok(f) => check_file(&f)?,
        Err(e) => check_error(&e.to_string(), text.len())?,
    }
    Ok(())
}

fn check_error(shown: &str, input_len: usize) -> Result<(), TestCaseError> {
    prop_assert!(!shown.is_empty());
    prop_assert!(
        shown.len() <= MAX_ERROR_BYTES,
        "{} byte error for a {} byte input: {:.300}",
        shown.len(),
        input_len,
        shown
    );
    Ok(())
}

fn check_file(f: &JobFile) -> Result<(), TestCaseError> {
    let written = f.to_toml();
    let back = JobFile::parse(&written);
    prop_assert!(
        back.is_ok(),
        "dry-run output does not read back: {:?}\n{}",
        back.err(),
        written
    );
    let back = back.unwrap();
    prop_assert_eq!(&back, f, "{}", written);
    match (f.to_spec(), back.to_spec()) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) => {
            prop_assert_eq!(a.to_string(), b.to_string());
            check_error(&a.to_string(), written.len())?;
        }
        (a, b) => prop_assert!(false, "{:?} became {:?}", a, b),
    }
    Ok(())
}

/// Strings TOML must carry: quotes, escapes, newlines, control and
/// non-ASCII characters, and empty.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ./:_-]{0,12}",
        "\\PC{0,12}",
        Just(String::new()),
        Just("'\"\\\n\t\r\u{0}\u{7f}é🚀".to_string()),
        Just("\"\"\"".to_string()),
        Just("'''".to_string()),
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("30m".to_string()),
        Just("1h30m".to_string()),
        Just("0s".to_string()),
        Just("-5m".to_string()),
        Just("99999999999999999h".to_string()),
        "[0-9]{1,4}(ms|s|m|h|d|x)?",
        text(),
    ]
}

fn job_file() -> impl Strategy<Value = JobFile> {
    let kind = prop_oneof![
        Just("pytest".to_string()),
        Just("benchmark".to_string()),
        text()
    ];
    let source = (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(dir, git, git_ref)| SourceFile { dir, git, git_ref });
    let bench = prop::option::of(
        (
            prop::collection::vec(text(), 0..4),
            prop::collection::vec(text(), 0..3),
            prop::option::of(0..10u32),
            prop::option::of(0..10u32),
            text(),
            any::<bool>(),
            prop::collection::vec(
                (
                    text(),
                    prop_oneof![Just(r"t=([\d.]+)\s*(ns|us|ms|s)".to_string()), text()],
                )
                    .prop_map(|(metric, pattern)| ExtractFile { metric, pattern }),
                0..2,
            ),
        )
            .prop_map(
                |(command, cases, warmup, repetitions, metric, trusted, extract)| BenchmarkFile {
                    command,
                    cases,
                    warmup,
                    repetitions,
                    metric,
                    trusted,
                    extract,
                },
            ),
    );
    let map = || prop::collection::btree_map(text(), text(), 0..3);
    (
        (
            kind,
            text(),
            text(),
            any::<i32>(),
            text(),
            prop::option::of(duration()),
        ),
        (
            prop::option::of(any::<u32>()),
            prop::collection::vec(text(), 0..4),
            text(),
            any::<u32>(),
            prop_oneof![
                Just(String::new()),
                Just("each-profile".to_string()),
                text()
            ],
            0..5u32,
        ),
        (source, map(), map(), bench),
        (
            prop::option::of((
                prop::collection::vec(text(), 0..3),
                prop::collection::vec(text(), 0..3),
                prop::option::of(text()),
                any::<bool>(),
            )),
            prop::collection::vec(text(), 0..3),
        ),
    )
        .prop_map(
            |(
                (kind, name, queue, priority, requirements, timeout),
                (retries, args, dedup_key, retry_failed, fanout, shards),
                (source, env, labels, benchmark),
                (environment, caches),
            )| JobFile {
                kind,
                name,
                queue,
                priority,
                requirements,
                timeout,
                agent_lost_retries: retries.map(|r| r.wrapping_mul(7)),
                retries,
                expire_after: None,
                memory: None,
                gpus: shards,
                npus: shards.saturating_sub(1),
                gpu_memory: (shards > 0).then(|| "40G".to_string()),
                npu_memory: None,
                allow_unmatched: false,
                args,
                dedup_key,
                retry_failed,
                fanout,
                shards,
                source,
                env,
                labels,
                // Secret values do not round-trip on purpose: --dry-run prints
                // them as [redacted] (tested in commands.rs).
                secret_env: Default::default(),
                benchmark,
                environment: environment.map(
                    |(setup, requirements, install_project, system_site_packages)| {
                        crate::jobfile::EnvironmentFile {
                            setup,
                            requirements,
                            install_project,
                            system_site_packages,
                        }
                    },
                ),
                caches,
            },
        )
}

/// TOML-ish lines built from the job file's own keys and tables.
fn tomlish() -> impl Strategy<Value = String> {
    let key = prop::sample::select(
        &[
            "kind",
            "name",
            "queue",
            "priority",
            "requirements",
            "timeout",
            "retries",
            "agent_lost_retries",
            "args",
            "dedup_key",
            "retry_failed",
            "fanout",
            "shards",
            "gpus",
            "npus",
            "gpu_memory",
            "environment",
            "setup",
            "install_project",
            "system_site_packages",
            "caches",
            "dir",
            "git",
            "ref",
            "command",
            "cases",
            "warmup",
            "repetitions",
            "metric",
            "trusted",
            "pattern",
            "bogus",
            "A",
        ][..],
    );
    let value = prop::sample::select(
        &[
            "\"pytest\"",
            "\"benchmark\"",
            "\"/srv/x\"",
            "\"30m\"",
            "'1h'",
            "1",
            "-1",
            "0",
            "4294967296",
            "true",
            "[]",
            "[\"a\", \"b\"]",
            "[1]",
            "{}",
            "\"\"",
            "\"unterminated",
            "1.5",
            "1979-05-27",
            "\"\"\"\nx\"\"\"",
            "nan",
        ][..],
    );
    let line = prop_oneof![
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop::sample::select(
            &["[source]", "[env]", "[labels]", "[benchmark]", "[[benchmark.extract]]", "[bogus]", "[source", "["][..]
        )
        .prop_map(str::to_string),
        1 => "\\PC{0,20}",
        1 => Just(String::new()),
    ];
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(fuzz_config())]

    /// Random bytes: no panic, and the round-trip / error properties.
    #[test]
    fn fuzz_jobfile_random_text(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_text(&String::from_utf8_lossy(&bytes))?;
    }

    /// Lines made of the job file's keys, tables and typical values.
    #[test]
    fn fuzz_jobfile_tomlish(text in tomlish()) {
        check_text(&text)?;
    }

    /// Any job table: the dry-run writer writes what the reader reads back
    /// as the same file, and both make the same spec (or the same refusal).
    #[test]
    fn fuzz_jobfile_structured_round_trip(f in job_file()) {
        check_file(&f)?;
    }

    /// Huge inputs (up to 100 KB on one line or many): a short refusal.
    #[test]
    fn fuzz_jobfile_long_input(
        head in prop::sample::select(&["kind = \"", "timeout = \"", "x", "[source]\ndir = \"/srv\"\ntimeout = \"", "= ", "[", "bogus = \""][..]),
        unit in prop::sample::select(&["x", "1", "\n", "é", "\"", "h"][..]),
        n in 0..100_000usize,
        tail in prop::sample::select(&["", "\"", "\"\n"][..]),
    ) {
        let text = format!("{head}{}{tail}", unit.repeat(n));
        check_text(&text)?;
    }
}
