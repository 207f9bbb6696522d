//! Containment, end to end: a test that detaches a server with `setsid` (as tests of
//! inference servers, Ray or torch launchers do) leaves nothing behind when its job ends,
//! is cancelled or times out, with cgroups (the agent's default where it can make one) and
//! without (`--no-cgroups`: the agent is a subreaper and kills every descendant); and a job
//! over its `--memory` limit ends `error` naming the limit.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A suite whose one test starts `setsid sleep 300 &` from a shell (a new session, out of
/// pytest's process group), writes the detached pid to `$MSFLEET_DETACHED_PIDFILE`, checks it
/// runs, and then holds for `$MSFLEET_HOLD_S` seconds (0: the test returns at once).
const DETACHING_TEST: &str = r#"
import os, subprocess, time

def test_starts_a_detached_server():
    pidfile = os.environ["MSFLEET_DETACHED_PIDFILE"]
    subprocess.run(["sh", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $! > " + pidfile + ".tmp"], check=True)
    os.rename(pidfile + ".tmp", pidfile)
    pid = int(open(pidfile).read())
    # Its own session (once setsid ran): pytest's process group does not hold it.
    for _ in range(500):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if int(fields[3]) == pid:
            break
        time.sleep(0.01)
    assert fields[0] in "RS", fields
    assert int(fields[3]) == pid, f"sleep is not a session leader: {fields}"
    time.sleep(float(os.environ.get("MSFLEET_HOLD_S", "0")))
"#;

struct Detaching {
    dir: PathBuf,
    pidfile: PathBuf,
}

fn detaching_suite(f: &Fleet) -> Detaching {
    let dir = f.write_suite("detach", &[("test_detach.py", DETACHING_TEST)]);
    Detaching {
        dir,
        pidfile: f.path().join("detached.pid"),
    }
}

impl Detaching {
    fn submit(&self, f: &Fleet, hold_s: u32, extra: &[&str]) -> String {
        let pidfile = format!("MSFLEET_DETACHED_PIDFILE={}", s(&self.pidfile));
        let hold = format!("MSFLEET_HOLD_S={hold_s}");
        let dir = s(&self.dir);
        let mut args = vec!["pytest", "--dir", &dir, "--env", &pidfile, "--env", &hold];
        args.extend_from_slice(extra);
        f.submit(&args)
    }

    /// The detached pid, once the test wrote it.
    fn pid(&self, f: &Fleet) -> i32 {
        wait_for(
            Duration::from_secs(60),
            "the test to write the detached pid",
            || {
                std::fs::read_to_string(&self.pidfile)
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            },
            || f.logs(),
        )
    }
}

fn assert_gone(pid: i32, within: Duration, what: &str) {
    let t0 = Instant::now();
    while pid_alive(pid) {
        if t0.elapsed() > within {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Leave nothing running after a failed test.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{what}: the detached process {pid} still runs after {within:?} ({stat})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts agent `a1` (with `extra` flags) and returns how it contains runs, as
/// `msctl agents --json` shows it.
fn agent(f: &mut Fleet, extra: &[&str]) -> String {
    f.add_agent("a1", &[], extra);
    let a = f.agent_json("a1").expect("agent a1 listed");
    let mode = a["containment"].as_str().unwrap_or_default().to_string();
    assert!(
        ["cgroup-v2", "cgroup-v1", "subreaper"].contains(&mode.as_str()),
        "{a:#}"
    );
    eprintln!("agent a1 contains runs by: {mode}");
    mode
}

/// The run cgroups agent `pid` still has in this machine's v1 pids hierarchy (where the
/// agent makes them by default: `msfleet` under its own cgroup, which is the test's).
fn leftover_cgroups(agent_pid: i32) -> Vec<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(path) = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
        ctrls
            .split(',')
            .any(|c| c == "pids")
            .then(|| path.to_string())
    }) else {
        return Vec::new();
    };
    let base = Path::new("/sys/fs/cgroup/pids")
        .join(path.trim_start_matches('/'))
        .join("msfleet");
    let prefix = format!("a{agent_pid}-");
    std::fs::read_dir(base)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn ends_normally(extra: &[&str]) {
    let mut f = Fleet::new();
    let mode = agent(&mut f, extra);
    let suite = detaching_suite(&f);
    let id = suite.submit(&f, 0, &[]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "passed", "{j:#}\n{}", f.logs());
    let pid = suite.pid(&f);
    assert_gone(pid, Duration::from_secs(5), "after the job passed");
    if mode == "cgroup-v1" {
        let agent_pid = f.agent("a1").pid().unwrap();
        assert_eq!(
            leftover_cgroups(agent_pid),
            Vec::<String>::new(),
            "run cgroups are removed"
        );
    }
}

fn cancelled(extra: &[&str]) {
    let mut f = Fleet::new();
    agent(&mut f, extra);
    let suite = detaching_suite(&f);
    let id = suite.submit(&f, 300, &[]);
    f.wait_state(&id, "running");
    let pid = suite.pid(&f);
    assert!(
        pid_alive(pid),
        "the detached process runs while the test does"
    );
    let out = f.ctl(&["cancel", &id, "--wait"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(f.show(&id)["state"], "cancelled");
    // --kill-grace is 2 s.
    assert_gone(pid, Duration::from_secs(5), "after msctl cancel");
}

fn timed_out(extra: &[&str]) {
    let mut f = Fleet::new();
    agent(&mut f, extra);
    let suite = detaching_suite(&f);
    let id = suite.submit(&f, 300, &["--timeout", "4s"]);
    let pid = suite.pid(&f);
    assert!(
        pid_alive(pid),
        "the detached process runs while the test does"
    );
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "timed_out", "{j:#}");
    assert_gone(pid, Duration::from_secs(5), "after the timeout");
}

#[test]
fn a_setsid_child_is_gone_after_the_job_ends() {
    ends_normally(&[]);
}

#[test]
fn a_setsid_child_is_gone_after_cancel() {
    cancelled(&[]);
}

#[test]
fn a_setsid_child_is_gone_after_a_timeout() {
    timed_out(&[]);
}

#[test]
fn without_cgroups_a_setsid_child_is_gone_after_the_job_ends() {
    ends_normally(&["--no-cgroups"]);
}

#[test]
fn without_cgroups_a_setsid_child_is_gone_after_cancel() {
    cancelled(&["--no-cgroups"]);
}

#[test]
fn without_cgroups_a_setsid_child_is_gone_after_a_timeout() {
    timed_out(&["--no-cgroups"]);
}

/// The subreaper path also reaps what it adopted: no zombie of the agent is left.
#[test]
fn without_cgroups_the_agent_is_a_subreaper_and_leaves_no_zombie() {
    let mut f = Fleet::new();
    assert_eq!(agent(&mut f, &["--no-cgroups"]), "subreaper");
    let suite = detaching_suite(&f);
    let id = suite.submit(&f, 0, &[]);
    assert_eq!(f.wait_terminal(&id)["state"], "passed");
    let pid = suite.pid(&f);
    assert_gone(pid, Duration::from_secs(5), "after the job passed");
    // The killed sleep was re-parented to the agent (its subreaper): a zombie until the
    // agent reaps it.
    let agent_pid = f.agent("a1").pid().unwrap();
    wait_for(
        Duration::from_secs(5),
        "the agent to reap the adopted process",
        || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
        || format!("ppid {:?}, agent {agent_pid}", ppid_of(pid)),
    );
}

const ALLOCATING_TEST: &str = r#"
def test_allocates_256_mb():
    block = bytearray(256 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
"#;

#[test]
fn a_job_over_its_memory_limit_ends_error_naming_the_limit() {
    let mut f = Fleet::new();
    f.add_agent("a1", &[], &[]);
    let a = f.agent_json("a1").unwrap();
    if a["enforces_memory"] != true {
        eprintln!(
            "skipped: this machine gives the agent no writable cgroup memory controller ({})",
            a["containment"]
        );
        return;
    }
    let dir = f.write_suite("alloc", &[("test_alloc.py", ALLOCATING_TEST)]);
    let id = f.submit(&["pytest", "--dir", &s(&dir), "--memory", "64M"]);
    let j = f.wait_terminal(&id);
    assert_eq!(j["state"], "error", "{j:#}");
    let reason = j["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("out of memory: the job's limit is 64 MiB, peak "),
        "{reason}"
    );
    assert_eq!(j["memory_limit_bytes"], 64 << 20);
    // The same test under a limit it fits in passes.
    let id = f.submit(&["pytest", "--dir", &s(&dir), "--memory", "1G"]);
    assert_eq!(f.wait_terminal(&id)["state"], "passed");
}

#[test]
fn a_memory_limit_is_refused_where_no_agent_can_enforce_it() {
    let mut f = Fleet::new();
    assert_eq!(agent(&mut f, &["--no-cgroups"]), "subreaper");
    assert_eq!(f.agent_json("a1").unwrap()["enforces_memory"], false);
    let dir = f.write_suite("alloc", &[("test_alloc.py", ALLOCATING_TEST)]);
    let out = f.ctl(&["submit", "pytest", "--dir", &s(&dir), "--memory", "64M"]);
    assert_ne!(out.code, 0, "{out}");
    assert!(
        out.stderr
            .contains("cannot enforce a memory limit of 64 MiB (containment: subreaper)"),
        "{out}"
    );
    let bad = f.ctl(&["submit", "pytest", "--dir", &s(&dir), "--memory", "lots"]);
    assert_eq!(bad.code, 2, "{bad}");
    assert!(bad.stderr.contains("--memory: memory 'lots'"), "{bad}");
    let small = f.ctl(&["submit", "pytest", "--dir", &s(&dir), "--memory", "1M"]);
    assert_ne!(small.code, 0, "{small}");
    assert!(small.stderr.contains("must be between 16 MiB"), "{small}");
}

/// An agent killed mid-run leaves its run's cgroup behind with a detached server in it; the
/// agent started after it empties and removes that cgroup.
#[test]
fn a_restarted_agent_kills_what_a_crashed_one_left_in_its_cgroups() {
    let mut f = Fleet::new();
    let mode = agent(&mut f, &[]);
    if !mode.starts_with("cgroup") {
        eprintln!("skipped: no writable cgroup here (the agent reports {mode})");
        return;
    }
    let suite = detaching_suite(&f);
    let id = suite.submit(&f, 300, &[]);
    f.wait_state(&id, "running");
    let pid = suite.pid(&f);
    assert!(
        pid_alive(pid),
        "the detached process runs while the test does"
    );
    let old_agent = f.agent("a1").pid().unwrap();
    // Killed, the agent cannot end its run: the cgroup and the server in it stay. (Any agent
    // that starts on this host meanwhile, another test's too, may sweep them already.)
    f.agent("a1").kill9();
    f.agents.retain(|a| a.name != "a1");
    f.add_agent("a1", &[], &[]);
    assert_gone(pid, Duration::from_secs(5), "after the agent restarted");
    if mode == "cgroup-v1" {
        assert_eq!(leftover_cgroups(old_agent), Vec::<String>::new());
    }
}

/// `msagent --probe` says how the agent contains runs and whether it can enforce a memory
/// limit; a `--cgroup-root` that is not a cgroup path is refused with what to write.
#[test]
fn the_probe_reports_containment_and_bad_roots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin("msagent"));
    cmd.args(["--probe", "--no-cgroups", "--work-dir"])
        .arg(dir.path());
    let out = run_cmd(cmd, Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["containment"], "subreaper", "{report:#}");
    assert_eq!(report["enforces_memory"], false, "{report:#}");

    let mut cmd = std::process::Command::new(bin("msagent"));
    cmd.args(["--probe", "--cgroup-root", "msfleet", "--work-dir"])
        .arg(dir.path());
    let out = run_cmd(cmd, Duration::from_secs(60));
    assert_eq!(out.code, 2, "{out}");
    assert!(
        out.stderr
            .contains("--cgroup-root 'msfleet' must be a cgroup path starting with '/'"),
        "{out}"
    );
}

/// On the subreaper path, a detached process that exits on its own while its run goes on is
/// re-parented to the agent and reaped by it within seconds (no zombie piles up).
#[test]
fn without_cgroups_a_detached_process_that_exits_is_reaped_while_the_run_goes_on() {
    let mut f = Fleet::new();
    assert_eq!(agent(&mut f, &["--no-cgroups"]), "subreaper");
    let test = r#"
import os, subprocess, time

def test_a_short_lived_detached_process_is_reaped():
    out = subprocess.run(["sh", "-c", "setsid sleep 0.3 > /dev/null 2>&1 & echo $!"],
                         check=True, capture_output=True, text=True)
    pid = int(out.stdout)
    deadline = time.time() + 15
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(0.1)
    state = open(f"/proc/{pid}/stat").read() if os.path.exists(f"/proc/{pid}") else "gone"
    assert state == "gone", state
"#;
    let dir = f.write_suite("reap", &[("test_reap.py", test)]);
    let id = f.submit(&["pytest", "--dir", &s(&dir)]);
    let j = f.wait_terminal(&id);
    assert_eq!(
        j["state"],
        "passed",
        "{j:#}\n{}",
        f.ctl(&["logs", &id]).stdout
    );
}
