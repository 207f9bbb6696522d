//! Job environments, end to end, with real venvs, real pip and real git: a src-layout project
//! at two refs gives each ref its own results; a ref that changes a pinned dependency gets a
//! new environment and the next job with the same pins reuses it (faster); a failing setup
//! ends `error` with its output in the log and a failed build is never reused; two concurrent
//! jobs with one key build it once; named caches persist across jobs.
//!
//! Offline: pytest, setuptools and their dependencies come from the wheelhouse that
//! `scripts/venv.sh` fills (`.venv/wheelhouse`), the project's own dependency (`tinydep`)
//! from wheels written in the test's temp dir; jobs set `PIP_NO_INDEX=1` and
//! `PIP_FIND_LINKS`.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `.venv/wheelhouse` of `scripts/venv.sh`; fails (never skips) when it is missing.
fn wheelhouse() -> PathBuf {
    let w = repo_root().join(".venv/wheelhouse");
    assert!(
        w.join(".complete").exists(),
        "{} is missing: run scripts/venv.sh",
        w.display()
    );
    w
}

/// Writes `NAME-VERSION-py3-none-any.whl` (a package whose `VERSION` is `version`) into `dir`.
fn write_wheel(dir: &Path, name: &str, version: &str) {
    let script = r#"
import sys, zipfile, os
name, version, out = sys.argv[1:4]
dist = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f'VERSION = "{version}"\n',
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: msfleet-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
files[f"{dist}/RECORD"] = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(os.path.join(out, f"{name}-{version}-py3-none-any.whl"), "w") as z:
    for p, t in files.items():
        z.writestr(p, t)
"#;
    let mut c = Command::new(python());
    c.args(["-c", script, name, version, &s(dir)]);
    let out = run_cmd(c, Duration::from_secs(30));
    assert_eq!(out.code, 0, "writing the wheel {name} {version}:\n{out}");
}

/// A git repository of a src-layout project `calc` (pyproject with setuptools, tests in
/// `tests/`, `requirements-test.txt` naming pytest), one commit per [`Repo::commit`].
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn new(dir: PathBuf) -> Repo {
        std::fs::create_dir_all(dir.join("src/calc")).unwrap();
        std::fs::create_dir_all(dir.join("tests")).unwrap();
        std::fs::write(dir.join("requirements-test.txt"), "pytest\n").unwrap();
        std::fs::write(
            dir.join("tests/test_calc.py"),
            "import os, time, calc, tinydep\n\n\
             def test_answer_is_one():\n    assert calc.answer() == 1\n\n\
             def test_tinydep_is_the_pinned_one():\n    \
             until = os.environ.get('HOLD_UNTIL')\n    \
             while until and not os.path.exists(until):\n        time.sleep(0.1)\n    \
             assert tinydep.VERSION == calc.PINNED\n",
        )
        .unwrap();
        let r = Repo { dir };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn git(&self, args: &[&str]) {
        let mut c = Command::new("git");
        c.args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(&self.dir);
        let out = run_cmd(c, Duration::from_secs(30));
        assert_eq!(out.code, 0, "git {args:?}:\n{out}");
    }

    /// Commits a version whose `calc.answer()` is `answer` and that pins `tinydep==pin`,
    /// tagged `tag`.
    fn commit(&self, tag: &str, answer: u32, pin: &str) {
        std::fs::write(
            self.dir.join("pyproject.toml"),
            format!(
                "[build-system]\nrequires = [\"setuptools>=64\"]\nbuild-backend = \"setuptools.build_meta\"\n\n\
                 [project]\nname = \"calc\"\nversion = \"0.1\"\ndependencies = [\"tinydep=={pin}\"]\n\n\
                 [tool.setuptools.packages.find]\nwhere = [\"src\"]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            self.dir.join("src/calc/__init__.py"),
            format!("PINNED = \"{pin}\"\n\ndef answer():\n    return {answer}\n"),
        )
        .unwrap();
        self.git(&["add", "."]);
        self.git(&["commit", "--allow-empty", "-qm", tag]);
        self.git(&["tag", tag]);
    }

    fn url(&self) -> String {
        format!("file://{}", s(&self.dir))
    }
}

/// A fleet with one agent that may fetch local git URLs, a `calc` repo, and `tinydep` 1.0
/// and 2.0 wheels; `PIP_FIND_LINKS` for the jobs.
fn setup(slots: &str) -> (Fleet, Repo, String) {
    setup_with(&["--slots", slots])
}

/// [`setup`] with these agent flags.
fn setup_with(flags: &[&str]) -> (Fleet, Repo, String) {
    let mut f = Fleet::new();
    let mut extra = ALLOW_FILE_GIT.to_vec();
    extra.extend_from_slice(flags);
    f.add_agent("a1", &[], &extra);
    let wheels = f.path().join("wheels");
    write_wheel(&wheels, "tinydep", "1.0");
    write_wheel(&wheels, "tinydep", "2.0");
    let links = format!("PIP_FIND_LINKS={} {}", s(&wheels), s(&wheelhouse()));
    let repo = Repo::new(f.path().join("calc"));
    (f, repo, links)
}

/// `msctl submit pytest --git URL --ref REF --requirements requirements-test.txt
/// --install-project` with the offline pip variables, then `EXTRA`.
fn submit_ref(f: &Fleet, repo: &Repo, links: &str, r#ref: &str, extra: &[&str]) -> String {
    let url = repo.url();
    let mut args = vec![
        "pytest",
        "--git",
        &url,
        "--ref",
        r#ref,
        "--requirements",
        "requirements-test.txt",
        "--install-project",
        "--env",
        "PIP_NO_INDEX=1",
        "--env",
        links,
        "--timeout",
        "5m",
    ];
    args.extend_from_slice(extra);
    args.extend(["--", "tests"]);
    f.submit(&args)
}

/// `msctl logs ID`.
fn logs(f: &Fleet, id: &str) -> String {
    let out = f.ctl(&["logs", id]);
    assert_eq!(out.code, 0, "{out}");
    out.stdout + &out.stderr
}

/// A job's setup time apart from its tests, as `msctl show --json` has it
/// (`setup`), checked against the log's "environment ready in X s" line and
/// `msctl watch`'s: (seconds, cached).
fn ready(f: &Fleet, id: &str) -> (f64, bool) {
    let j = f.show(id);
    let setup = &j["setup"];
    let secs = setup["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("job {id} shows no setup time: {j:#}"));
    let cached = setup["cached"].as_bool().expect("cached");
    let text = logs(f, id);
    let line = text
        .lines()
        .find_map(|l| l.split("msfleet: environment ready in ").nth(1))
        .unwrap_or_else(|| panic!("job {id} has no 'environment ready' line:\n{text}"));
    let (logged, rest) = line.split_once(" s (").expect("ready line shape");
    assert_eq!(logged, format!("{secs:.1}"), "log and show agree");
    assert_eq!(rest.starts_with("cached"), cached);
    let watch = f.ctl(&["watch", id]);
    let want = format!(
        "environment ready in {secs:.1} s ({})",
        if cached { "cached" } else { "built" }
    );
    assert!(
        watch.stdout.contains(&want),
        "watch shows the setup: {watch}"
    );
    (secs, cached)
}

fn wait(f: &Fleet, id: &str) -> Value {
    f.wait_job(id, "a terminal state", is_terminal)
}

/// The checkout of each ref is what is tested: ref v1 (answer 1) passes, ref v2 (answer 2)
/// fails its test, though both share one environment (the second reuses it and re-links its
/// own checkout). Without the environment the src-layout package is not importable at all.
#[test]
fn a_src_layout_project_at_two_refs_tests_each_refs_own_code() {
    let (f, repo, links) = setup("1");
    repo.commit("v1", 1, "1.0");
    repo.commit("v2", 2, "1.0");

    let plain = f.submit(&["pytest", "--git", &repo.url(), "--ref", "v1", "--", "tests"]);
    let j = wait(&f, &plain);
    assert_ne!(
        j["state"], "passed",
        "without an environment calc is not importable: {j:#}"
    );

    let one = submit_ref(&f, &repo, &links, "v1", &[]);
    let j = wait(&f, &one);
    assert_eq!(j["state"], "passed", "{j:#}\n{}", logs(&f, &one));
    assert_eq!(count(&j, "passed"), 2, "{j:#}");
    let (cold, cached) = ready(&f, &one);
    assert!(!cached, "the first job builds the environment");
    assert_eq!(
        j["environment"]["requirements"][0], "requirements-test.txt",
        "{j:#}"
    );
    assert_eq!(j["environment"]["install_project"], "", "{j:#}");
    let shown = f.ctl(&["show", &one]);
    assert!(
        shown
            .stdout
            .contains("venv:      -r requirements-test.txt, -e ."),
        "{shown}"
    );

    let two = submit_ref(&f, &repo, &links, "v2", &[]);
    let j = wait(&f, &two);
    assert_eq!(
        j["state"], "failed",
        "v2's own code (answer 2) is tested: {j:#}"
    );
    assert_eq!(count(&j, "failed"), 1, "{j:#}");
    assert_eq!(count(&j, "passed"), 1, "{j:#}");
    let (warm, cached) = ready(&f, &two);
    assert!(cached, "same dependency files: the environment is reused");
    eprintln!("environment: cold {cold:.1} s, warm (re-link only) {warm:.1} s");

    // And v1 again, after v2 was linked into the same venv: v1's code once more.
    let again = submit_ref(&f, &repo, &links, "v1", &[]);
    let j = wait(&f, &again);
    assert_eq!(j["state"], "passed", "{j:#}");
}

/// A ref that pins another version of a dependency gets a new environment with that version;
/// the next ref with the same pins reuses it, and its setup is faster.
#[test]
fn a_changed_pin_gets_a_new_environment_that_the_next_job_reuses() {
    let (f, repo, links) = setup("1");
    repo.commit("v1", 1, "1.0");
    repo.commit("v2", 1, "2.0");
    // Same pins as v2; a code-only change (a comment).
    std::fs::write(repo.dir.join("src/calc/extra.py"), "# a code change only\n").unwrap();
    repo.git(&["add", "."]);
    repo.git(&["commit", "-qm", "v3"]);
    repo.git(&["tag", "v3"]);

    let mut figures = Vec::new();
    for (r#ref, want_cached) in [("v1", false), ("v2", false), ("v3", true)] {
        let id = submit_ref(&f, &repo, &links, r#ref, &[]);
        let j = wait(&f, &id);
        assert_eq!(
            j["state"],
            "passed",
            "{ref}: tinydep is the pinned version: {j:#}\n{}",
            logs(&f, &id)
        );
        let (secs, cached) = ready(&f, &id);
        assert_eq!(cached, want_cached, "{ref}: cached {cached}, {secs} s");
        figures.push((r#ref, secs, cached));
    }
    eprintln!("environment ready: {figures:?}");
    let (built, reused) = (figures[1].1, figures[2].1);
    assert!(
        reused < built,
        "the reused environment ({reused} s) is ready sooner than the built one ({built} s)"
    );
}

/// A setup command that fails ends the job `error` (never `failed`), the reason one line
/// naming it, its output in the job's log; the venv it left is never reused: the same key
/// builds again, and passes once the command does.
#[test]
fn a_failing_setup_ends_in_error_with_its_output_and_is_not_reused() {
    let (f, repo, links) = setup("1");
    repo.commit("v1", 1, "1.0");
    let flag = f.path().join("setup-may-pass");
    let setup = format!("echo checking the setup flag; test -e {}", s(&flag));

    let id = submit_ref(&f, &repo, &links, "v1", &["--setup", &setup]);
    let j = wait(&f, &id);
    assert_eq!(j["state"], "error", "{j:#}");
    let reason = j["reason"].as_str().unwrap_or_default();
    assert_eq!(reason, format!("setup failed: `{setup}` exited 1"), "{j:#}");
    assert_eq!(count(&j, "total"), 0, "{j:#}");
    let text = logs(&f, &id);
    assert!(text.contains("checking the setup flag"), "{text}");

    // A requirements install that fails (a package no index has) is the same.
    std::fs::write(
        repo.dir.join("requirements-bad.txt"),
        "no-such-package-msfleet\n",
    )
    .unwrap();
    repo.git(&["add", "."]);
    repo.git(&["commit", "-qm", "bad requirements"]);
    repo.git(&["tag", "bad"]);
    let bad = submit_ref(
        &f,
        &repo,
        &links,
        "bad",
        &["--requirements", "requirements-bad.txt"],
    );
    let j = wait(&f, &bad);
    assert_eq!(j["state"], "error", "{j:#}");
    assert_eq!(
        j["reason"], "setup failed: pip install -r requirements-bad.txt exited 1",
        "{j:#}"
    );
    assert!(logs(&f, &bad).contains("no-such-package-msfleet"));

    std::fs::write(&flag, "").unwrap();
    let id = submit_ref(&f, &repo, &links, "v1", &["--setup", &setup]);
    let j = wait(&f, &id);
    assert_eq!(j["state"], "passed", "{j:#}\n{}", logs(&f, &id));
    let text = logs(&f, &id);
    assert!(
        text.contains("removing the half-built environment"),
        "the failed build was not reused:\n{text}"
    );
    assert!(!ready(&f, &id).1, "built again, not cached");
}

/// Two jobs with one key at once on a two-slot agent: one builds, the other waits and reuses.
#[test]
fn two_concurrent_jobs_with_one_key_build_it_once() {
    let (mut f, repo, links) = setup("2");
    repo.commit("v1", 1, "1.0");
    let a = submit_ref(&f, &repo, &links, "v1", &[]);
    let b = submit_ref(&f, &repo, &links, "v1", &[]);
    let (ja, jb) = (wait(&f, &a), wait(&f, &b));
    assert_eq!(ja["state"], "passed", "{ja:#}");
    assert_eq!(jb["state"], "passed", "{jb:#}");
    let mut cached = [ready(&f, &a).1, ready(&f, &b).1];
    cached.sort();
    assert_eq!(
        cached,
        [false, true],
        "exactly one of the two built the environment"
    );
    let envs = f.agent("a1").work_dir.join("envs");
    let built: Vec<_> = std::fs::read_dir(&envs)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    assert_eq!(built.len(), 1, "one environment in {}", envs.display());
}

/// A named cache is one directory kept across jobs: what one job writes the next one reads,
/// through the variable the cache names (and `pip` points PIP_CACHE_DIR at its own).
#[test]
fn named_caches_persist_across_jobs() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let suite = f.write_suite(
        "caches",
        &[(
            "test_cache.py",
            "import os, pathlib\n\n\
             def test_cache():\n    d = pathlib.Path(os.environ['MODEL_DIR'])\n    \
             assert d.is_dir()\n    assert pathlib.Path(os.environ['PIP_CACHE_DIR']).is_dir()\n    \
             marker = d / 'model.bin'\n    \
             if os.environ['PHASE'] == 'write':\n        marker.write_text('weights')\n    \
             else:\n        assert marker.read_text() == 'weights'\n",
        )],
    );
    for phase in ["write", "read"] {
        let phase_env = format!("PHASE={phase}");
        let id = f.submit(&[
            "pytest",
            "--dir",
            &s(&suite),
            "--cache",
            "models=MODEL_DIR",
            "--cache",
            "pip",
            "--env",
            &phase_env,
        ]);
        let j = wait(&f, &id);
        assert_eq!(j["state"], "passed", "{phase}: {j:#}\n{}", logs(&f, &id));
    }
    assert!(f
        .agent("a1")
        .work_dir
        .join("caches/models/model.bin")
        .exists());
}

/// The key in a job's "environment ready" line.
fn key_of(f: &Fleet, id: &str) -> String {
    let text = logs(f, id);
    let line = text
        .lines()
        .find(|l| l.contains("msfleet: environment ready in "))
        .unwrap_or_else(|| panic!("no ready line:\n{text}"));
    let key = line
        .split("key ")
        .nth(1)
        .expect("key")
        .trim_end_matches(')');
    key.to_string()
}

/// Under a budget smaller than one venv, an environment in use is never evicted, and the
/// least recently used one that is not goes when another is made ready; `msctl agents
/// --json` shows what the agent holds and its budget.
#[test]
fn eviction_under_a_small_budget_keeps_environments_in_use() {
    let (mut f, repo, links) = setup_with(&[
        "--slots",
        "2",
        "--cache-budget",
        "1MiB",
        "--probe-interval",
        "1s",
    ]);
    repo.commit("v1", 1, "1.0");
    repo.commit("v2", 1, "2.0");
    let flag = f.path().join("release-the-holder");
    let hold = format!("HOLD_UNTIL={}", s(&flag));
    let holder = submit_ref(&f, &repo, &links, "v2", &["--env", &hold]);
    f.wait_job(&holder, "its environment is ready", |_| {
        logs(&f, &holder).contains("environment ready in")
    });
    let k2 = key_of(&f, &holder);

    // Built while v2's environment is in use: over budget, but nothing may go.
    let first = submit_ref(&f, &repo, &links, "v1", &[]);
    let j = wait(&f, &first);
    assert_eq!(j["state"], "passed", "{j:#}");
    let k1 = key_of(&f, &first);
    assert_ne!(k1, k2);
    assert!(
        !logs(&f, &first).contains("evicted"),
        "{}",
        logs(&f, &first)
    );
    let envs = f.agent("a1").work_dir.join("envs");
    assert!(
        envs.join(&k2).join(".msfleet-ready").exists(),
        "in use: kept"
    );

    std::fs::write(&flag, "").unwrap();
    let j = wait(&f, &holder);
    assert_eq!(j["state"], "passed", "{j:#}");

    // v1 again: its environment is reused, and v2's, no longer in use and least recently
    // used, is evicted.
    let again = submit_ref(&f, &repo, &links, "v1", &[]);
    let j = wait(&f, &again);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert!(ready(&f, &again).1, "v1's environment was kept");
    let text = logs(&f, &again);
    assert!(
        text.contains(&format!("msfleet: evicted environment {k2} (")),
        "{text}"
    );
    assert!(!envs.join(&k2).exists());
    assert!(envs.join(&k1).join(".msfleet-ready").exists());

    let usage = wait_for(
        Duration::from_secs(30),
        "agents --json shows the environment held",
        || {
            let a = f.agent_json("a1")?;
            let u = a["environment_usage"].clone();
            let names: Vec<String> = u["environments"]
                .as_array()?
                .iter()
                .filter_map(|e| e["name"].as_str().map(String::from))
                .collect();
            (names == [k1.clone()]).then_some(u)
        },
        || format!("{:#}", f.agent_json("a1").unwrap_or_default()),
    );
    assert_eq!(usage["budget_bytes"], 1 << 20, "{usage:#}");
    assert!(
        usage["used_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{usage:#}"
    );
}

/// With two free agents the scheduler gives a job to the one warm for its environment (it
/// reported an environment filed under the job's affinity key), though the other comes first;
/// when the warm one is busy, the cold one still takes the job rather than let it wait.
#[test]
fn affinity_prefers_the_warm_agent_and_a_cold_one_runs_when_it_is_busy() {
    let (mut f, repo, links) = setup_with(&["--probe-interval", "1s"]);
    let mut extra = ALLOW_FILE_GIT.to_vec();
    extra.extend(["--probe-interval", "1s"]);
    f.add_agent("a2", &[], &extra);
    repo.commit("v1", 1, "1.0");
    repo.commit("v2", 1, "1.0");

    let warmup = submit_ref(
        &f,
        &repo,
        &links,
        "v1",
        &["--require", "agent.name == \"a2\""],
    );
    let j = wait(&f, &warmup);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "a2");
    wait_for(
        Duration::from_secs(30),
        "a2 reports its warm environment",
        || {
            let a = f.agent_json("a2")?;
            let envs = a["environment_usage"]["environments"].as_array()?.clone();
            envs.iter()
                .any(|e| e["affinity"].as_array().is_some_and(|k| !k.is_empty()))
                .then_some(())
        },
        || format!("{:#}", f.agent_json("a2").unwrap_or_default()),
    );

    // Both free; a1 is first in every order but affinity's.
    let next = submit_ref(&f, &repo, &links, "v2", &[]);
    let j = wait(&f, &next);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "a2", "the warm agent takes it: {j:#}");
    assert!(ready(&f, &next).1, "and reuses its environment");

    // a2 busy: the cold a1 runs the next one at once.
    let flag = f.path().join("release");
    let hold = format!("HOLD_UNTIL={}", s(&flag));
    let holder = submit_ref(
        &f,
        &repo,
        &links,
        "v1",
        &["--require", "agent.name == \"a2\"", "--env", &hold],
    );
    f.wait_state(&holder, "running");
    let cold = submit_ref(&f, &repo, &links, "v2", &[]);
    let j = wait(&f, &cold);
    assert_eq!(j["state"], "passed", "{j:#}");
    assert_eq!(j["agent"], "a1", "never pinned to the warm agent: {j:#}");
    assert!(!ready(&f, &cold).1, "a1 builds its own");
    std::fs::write(&flag, "").unwrap();
    let j = wait(&f, &holder);
    assert_eq!(j["state"], "passed", "{j:#}");
}

/// Bad environment input is refused at submit, one line saying what to fix.
#[test]
fn bad_environment_input_is_refused_with_one_line() {
    let f = Fleet::new();
    let dir = s(&f.path().join("x"));
    for (args, want) in [
        (
            vec!["--requirements", "../outside.txt"],
            "must be a path relative to the checkout",
        ),
        (vec!["--cache", "nope"], "unknown cache 'nope'"),
        (
            vec!["--cache", "huggingface", "--env", "HF_HOME=/x"],
            "sets HF_HOME, which the job's env also sets",
        ),
        (
            vec!["--system-site-packages"],
            "needs --setup, --requirements or --install-project",
        ),
        (vec!["--install-project", "a;b"], "is not a name"),
    ] {
        let mut full = vec!["submit", "pytest", "--dir", &dir];
        full.extend(args.iter().copied());
        let out = f.ctl(&full);
        assert_ne!(out.code, 0, "{args:?}: {out}");
        assert!(out.stderr.contains(want), "{args:?}: {out}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{args:?}: {out}");
    }
}
