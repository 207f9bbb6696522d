//! End-to-end: the web dashboard in Debian's headless Chromium, driven over
//! WebDriver by Debian's chromedriver (`scripts/test` installs both). Real
//! msched and msagent processes; the browser logs in with a `?token=` link
//! as `msctl dashboard` prints it. Screenshots go to
//! `<target dir>/dashboard-screenshots/` (printed), for a person to look at.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tiny WebDriver client: JSON over HTTP/1.1 to a chromedriver it started.
mod webdriver {
    use super::*;

    pub struct Browser {
        driver: Child,
        addr: String,
        session: String,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    fn tool(names: &[&str]) -> String {
        for name in names {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .expect("sh");
            let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
            if found.status.success() && !path.is_empty() {
                return path;
            }
        }
        panic!(
            "{} is missing: apt-get install -y chromium chromium-driver (scripts/test does)",
            names[0]
        );
    }

    /// One request; the status and the JSON body.
    fn call(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut conn = TcpStream::connect(addr).expect("chromedriver answers");
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            conn,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the head, then
        // Content-Length bytes.
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let (head, body_start, length) = loop {
            let n = conn.read(&mut buf).expect("a response from chromedriver");
            assert!(n > 0, "chromedriver closed the connection");
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                break (head, end + 4, length);
            }
        };
        while raw.len() < body_start + length {
            let n = conn.read(&mut buf).expect("the rest of the response");
            assert!(n > 0, "chromedriver closed the connection early");
            raw.extend_from_slice(&buf[..n]);
        }
        let rest = String::from_utf8_lossy(&raw[body_start..body_start + length]).into_owned();
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status");
        (code, serde_json::from_str(&rest).unwrap_or(Value::Null))
    }

    impl Browser {
        /// Headless Chromium at `width` x `height`.
        pub fn start(width: u32, height: u32) -> Browser {
            let chromium = tool(&["chromium", "chromium-browser"]);
            let chromedriver = tool(&["chromedriver"]);
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let driver = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts");
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(&addr).is_err() {
                assert!(Instant::now() < deadline, "chromedriver did not listen");
                std::thread::sleep(Duration::from_millis(100));
            }
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--no-first-run",
                             format!("--window-size={width},{height}")],
                },
            }}});
            let mut b = Browser {
                driver,
                addr,
                session: String::new(),
            };
            let (code, v) = call(&b.addr, "POST", "/session", Some(&caps));
            assert_eq!(code, 200, "a browser session: {v}");
            b.session = v["value"]["sessionId"]
                .as_str()
                .expect("a session id")
                .to_string();
            b
        }

        fn post(&self, what: &str, body: Value) -> Value {
            let (code, v) = call(
                &self.addr,
                "POST",
                &format!("/session/{}/{what}", self.session),
                Some(&body),
            );
            assert_eq!(code, 200, "WebDriver {what}: {v}");
            v["value"].clone()
        }

        pub fn goto(&self, url: &str) {
            self.post("url", json!({ "url": url }));
        }

        /// Runs `script` (a function body; `arguments` are `args`) in the page.
        pub fn js(&self, script: &str, args: Value) -> Value {
            self.post("execute/sync", json!({ "script": script, "args": args }))
        }

        /// Waits until `script` returns something truthy; returns it.
        pub fn wait_js(&self, what: &str, script: &str, within: Duration) -> Value {
            let deadline = Instant::now() + within;
            loop {
                let v = self.js(script, json!([]));
                let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                    && v != json!(0)
                    && v != json!("");
                if truthy {
                    return v;
                }
                assert!(
                    Instant::now() < deadline,
                    "waited {within:?} for {what}; last: {v}"
                );
                std::thread::sleep(Duration::from_millis(150));
            }
        }

        pub fn count(&self, selector: &str) -> u64 {
            self.js(
                "return document.querySelectorAll(arguments[0]).length;",
                json!([selector]),
            )
            .as_u64()
            .unwrap_or(0)
        }

        pub fn url(&self) -> String {
            self.js("return location.href;", json!([]))
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        pub fn resize(&self, width: u32, height: u32) {
            self.post("window/rect", json!({ "width": width, "height": height }));
        }

        /// The page as `prefers-color-scheme: dark` shows it.
        pub fn dark(&self) {
            self.post(
                "goog/cdp/execute",
                json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                    "features": [{"name": "prefers-color-scheme", "value": "dark"}]}}),
            );
        }

        /// Writes a PNG of the window to `dir/name.png`.
        pub fn screenshot(&self, dir: &std::path::Path, name: &str) -> PathBuf {
            let (code, v) = call(
                &self.addr,
                "GET",
                &format!("/session/{}/screenshot", self.session),
                None,
            );
            assert_eq!(code, 200, "screenshot: {v}");
            let png = base64_decode(v["value"].as_str().expect("base64 PNG"));
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::create_dir_all(dir).unwrap();
            let path = dir.join(format!("{name}.png"));
            std::fs::write(&path, png).unwrap();
            path
        }
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            if !self.session.is_empty() {
                let _ = std::panic::catch_unwind(|| {
                    call(
                        &self.addr,
                        "DELETE",
                        &format!("/session/{}", self.session),
                        None,
                    )
                });
            }
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        };
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for v in text.bytes().filter_map(value) {
            acc = (acc << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}

use webdriver::Browser;

/// Where the screenshots go (printed so a person finds them).
fn shots() -> PathBuf {
    let target = bin_dir()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("dashboard screenshots: {}", dir.display());
    dir
}

/// A person's new token of `role` (its secret).
fn token(f: &Fleet, name: &str, role: &str) -> String {
    let out = f.ctl(&["token", "create", name, "--role", role]);
    assert_eq!(out.code, 0, "{out}");
    out.stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// `msctl dashboard` with `token_file`'s token: the login link.
fn login_link(f: &Fleet, secret: &str) -> String {
    let file = f
        .path()
        .join(format!("dash-{}.token", &secret[secret.len() - 6..]));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let mut cmd = ctl_cmd(&f.addr(), &["dashboard", "--http", &f.sched.http_addr]);
    cmd.env("MSFLEET_TOKEN_FILE", &file);
    let out = run_cmd(cmd, Duration::from_secs(20));
    assert_eq!(out.code, 0, "{out}");
    let link = out.stdout.trim().to_string();
    assert!(
        link.starts_with("http://127.0.0.1:") && link.ends_with(&format!("?token={secret}")),
        "{link}"
    );
    link
}

/// A raw HTTP/1.1 POST of a form to the dashboard: the status and body.
fn post_form(addr: &str, path: &str, headers: &[(&str, &str)], form: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        conn,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn fleet_lists_two_running_agents_and_a_job_page_shows_results_arriving_live() {
    let mut f = Fleet::new();
    f.add_agent("dash-a", &["pool=blue"], &[]);
    f.add_agent("dash-b", &["pool=green"], &[]);
    let viewer = token(&f, "vera", "viewer");
    let link = login_link(&f, &viewer);
    let dir = shots();
    let b = Browser::start(1280, 900);

    // The login link: a cookie, and the same page without the token.
    b.goto(&link);
    let home = b.url();
    assert!(
        !home.contains("token"),
        "the token left the address: {home}"
    );
    assert_eq!(
        b.js("return document.cookie;", json!([])),
        json!(""),
        "HttpOnly"
    );
    let base = format!("http://{}", f.sched.http_addr);
    b.goto(&format!("{base}/fleet"));
    let names = b.wait_js(
        "two agents on the fleet page",
        "var r = [...document.querySelectorAll('tr.agent')].map(t => t.dataset.name + ':' + t.dataset.state); return r.length == 2 ? r : null;",
        Duration::from_secs(20),
    );
    assert_eq!(names, json!(["dash-a:online", "dash-b:online"]), "{names}");
    let who = b.js("return document.getElementById('who').textContent + document.querySelector('main').innerHTML;", json!([]));
    assert_eq!(
        b.count("button.admin"),
        0,
        "a viewer sees no admin buttons: {who}"
    );
    // The label filter keeps one.
    b.goto(&format!("{base}/fleet?label=pool%3Dgreen"));
    assert_eq!(b.count("tr.agent"), 1);
    b.goto(&format!("{base}/fleet"));
    b.screenshot(&dir, "fleet");

    // A suite of 6 tests, ~1 s each: the page fills in while it runs.
    let suite = f.sleepy_suite("live", 6, 1.0);
    let id = f.submit(&["pytest", "--dir", suite.to_str().unwrap()]);
    b.goto(&format!("{base}/jobs/{id}"));
    b.js("window.__same_page = 'yes';", json!([]));
    let first = b.wait_js(
        "the first result, live",
        "var n = document.querySelectorAll('#results tr.result').length; return n >= 1 && n < 6 ? n : null;",
        Duration::from_secs(60),
    );
    let running = b.js(
        "return document.getElementById('state').textContent;",
        json!([]),
    );
    assert_eq!(running, json!("running"), "the state moved live");
    b.screenshot(&dir, "job-live");
    b.wait_js(
        "all six results and the final state",
        "return document.querySelectorAll('#results tr.result').length >= 6 && document.getElementById('state').textContent == 'passed';",
        Duration::from_secs(90),
    );
    let passed = b.js(
        "return document.getElementById('c-passed').textContent;",
        json!([]),
    );
    assert_eq!(passed, json!("6"), "the counts moved with the results");
    assert_eq!(
        b.js("return window.__same_page;", json!([])),
        json!("yes"),
        "no reload"
    );
    let calls = b.count("#results tr.result.outcome-passed");
    let cli = f.show(&id);
    assert_eq!(count(&cli, "passed"), 6);
    assert!(calls >= 6, "{calls} passed rows, after {first} first");
    b.screenshot(&dir, "job-done");
    // The jobs list, filtered by state, links to it.
    b.goto(&format!("{base}/jobs?state=passed"));
    let listed = b.js(
        "return [...document.querySelectorAll('tr.job')].map(t => t.dataset.id);",
        json!([]),
    );
    assert_eq!(listed, json!([id]), "{listed}");
    b.goto(&format!("{base}/jobs?state=running"));
    assert_eq!(b.count("tr.job"), 0);
    // The same page after the fact, on a phone, in the dark.
    b.resize(390, 844);
    b.dark();
    b.goto(&format!("{base}/jobs/{id}"));
    assert_eq!(b.count("#results tr.result"), 6);
    let bg = b.js(
        "return getComputedStyle(document.body).backgroundColor;",
        json!([]),
    );
    assert_eq!(bg, json!("rgb(15, 20, 25)"), "the dark theme");
    let overflow = b.js(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
        json!([]),
    );
    assert_eq!(
        overflow,
        json!(true),
        "no sideways scroll of the whole page at phone width"
    );
    b.screenshot(&dir, "job-phone-dark");
    b.goto(&format!("{base}/queues"));
    let waited = b.js(
        "return document.querySelector('tr[data-queue=\"default\"] td:nth-child(7)').textContent;",
        json!([]),
    );
    assert_eq!(waited, json!("1"), "one job assigned in the last hour");
    b.screenshot(&dir, "queues-phone-dark");
}

/// The benchmark case command: sleeps `sleep_s` times the factor in
/// `speed.txt` and reports it.
const BENCH_PY: &str = r#"
import json, os, sys, time
case = json.load(open(sys.argv[1]))
factor = float(open("speed.txt").read().strip()) if os.path.exists("speed.txt") else 1.0
t = time.perf_counter()
time.sleep(case["user_input"]["sleep_s"] * factor)
with open(os.environ["MSFLEET_METRICS"], "w") as f:
    json.dump({"total_time_s": time.perf_counter() - t}, f)
"#;

#[test]
fn a_trend_chart_draws_every_run_and_only_admins_may_accept() {
    let mut f = Fleet::new();
    f.add_agent("bench-a", &[], ALLOW_BENCH);
    let case = serde_json::to_string(&json!({
        "name": "sleepy", "description": "sleeps", "user_input": {"sleep_s": 0.1},
        "baseline_time_s": 0.1, "tolerance": 0.2,
    }))
    .unwrap();
    let suite = f.write_suite(
        "trend",
        &[("bench.py", BENCH_PY), ("cases/sleepy.json", &case)],
    );
    let cmd = format!("{} bench.py {{case}}", python().display());
    let mut jobs = Vec::new();
    // Six trusted runs; the fifth 60% slower (a regression).
    for i in 0..6 {
        let factor = if i == 4 { "1.6" } else { "1.0" };
        std::fs::write(suite.join("speed.txt"), factor).unwrap();
        let id = f.submit(&[
            "bench",
            "--dir",
            suite.to_str().unwrap(),
            "--cases",
            "cases",
            "--command",
            &cmd,
            "--warmup",
            "1",
            "--repetitions",
            "3",
            "--trusted",
        ]);
        let job = f.wait_terminal(&id);
        jobs.push((id, job));
    }
    let verdicts: Vec<String> = jobs
        .iter()
        .map(|(_, j)| j["cases"][0]["verdict"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(verdicts[4], "regression", "{verdicts:?}");
    let medians: Vec<f64> = jobs
        .iter()
        .map(|(_, j)| {
            j["cases"][0]["explanation"]["value"]
                .as_f64()
                .expect("a median")
        })
        .collect();

    let viewer = token(&f, "vera", "viewer");
    let admin = token(&f, "ana", "admin");
    let base = format!("http://{}", f.sched.http_addr);
    let dir = shots();
    let b = Browser::start(1280, 900);
    b.goto(&login_link(&f, &admin));
    b.goto(&format!("{base}/trends"));
    assert_eq!(b.count("#trends tbody tr"), 1);
    let href = b.js(
        "return document.querySelector('#trends tbody a').getAttribute('href');",
        json!([]),
    );
    b.goto(&format!("{base}{}", href.as_str().unwrap()));
    // Every run is one point, with the median the job reported.
    let drawn = b.js(
        "return [...document.querySelectorAll('svg.trend circle.run')].map(c => [c.dataset.job, Number(c.dataset.median), c.dataset.verdict]);",
        json!([]),
    );
    let drawn = drawn.as_array().cloned().unwrap_or_default();
    assert_eq!(drawn.len(), 6, "{drawn:?}");
    for (i, p) in drawn.iter().enumerate() {
        assert_eq!(p[0].as_str(), Some(jobs[i].0.as_str()), "{p}");
        assert!(
            (p[1].as_f64().unwrap() - medians[i]).abs() < 1e-9,
            "{p} vs {}",
            medians[i]
        );
        assert_eq!(p[2].as_str(), Some(verdicts[i].as_str()));
    }
    assert_eq!(b.count("svg.trend circle.run.verdict-regression"), 1);
    // The trusted runs that joined the baseline are ringed; the regression is not.
    let accepted = b.count("svg.trend circle.accepted");
    assert_eq!(accepted, 5, "five runs joined the baseline");
    assert_eq!(b.count("svg.trend rect.band"), 1, "the baseline band");
    // The admin accepts the regressing run as the baseline from the chart's table.
    assert_eq!(b.count("button.accept"), 1, "only the run not yet accepted");
    b.screenshot(&dir, "trend-admin");
    b.js(
        "document.querySelector('button.accept').click();",
        json!([]),
    );
    b.wait_js(
        "the accept to land",
        "return document.querySelectorAll('svg.trend circle.accepted').length == 6;",
        Duration::from_secs(20),
    );
    let list = f.ctl(&["baseline", "list", "--json"]).json();
    let audit = list[0]["audit"].as_array().cloned().unwrap_or_default();
    let last = audit.last().expect("an audit entry");
    assert_eq!(
        (last["action"].as_str(), last["who"].as_str()),
        (Some("accept"), Some("ana")),
        "{last}"
    );
    assert_eq!(last["job_id"].as_str(), Some(jobs[4].0.as_str()));
    let audits = audit.len();

    // A viewer sees the chart but no accept button, and a POST of theirs is refused.
    let vb = Browser::start(1280, 900);
    vb.goto(&login_link(&f, &viewer));
    vb.goto(&format!("{base}{}", href.as_str().unwrap()));
    assert_eq!(vb.count("svg.trend circle.run"), 6);
    assert_eq!(
        vb.count("button.accept"),
        0,
        "a viewer sees no accept button"
    );
    assert_eq!(vb.count("button.admin"), 0);
    vb.screenshot(&dir, "trend-viewer");
    let job = &jobs[0].0;
    let status = vb.js(
        "return fetch('/actions/accept', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'job=' + arguments[0]}).then(r => r.status);",
        json!([job]),
    );
    assert_eq!(status, json!(403), "a viewer's POST is refused");
    // A forged POST with the admin's cookie but no CSRF token, or from another origin.
    let http = f.sched.http_addr.clone();
    let cookie = format!("msfleet_token={admin}");
    let (code, body) = post_form(
        &http,
        "/actions/accept",
        &[("Cookie", &cookie)],
        &format!("job={job}"),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    assert!(!body.contains(&admin), "the token is never echoed");
    let (code, body) = post_form(
        &http,
        "/actions/accept",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        &format!("job={job}&csrf={}", "0".repeat(64)),
    );
    assert_eq!(code, 403, "{body}");
    let list = f.ctl(&["baseline", "list", "--json"]).json();
    assert_eq!(
        list[0]["audit"].as_array().map(Vec::len),
        Some(audits),
        "nothing changed"
    );
    // No token at all: the login page.
    let (code, body) = msfleet_tests::http_get(&http, "/trends", None).unwrap();
    assert_eq!(code, 401);
    assert!(body.contains("Log in"), "{body}");
}

#[test]
fn a_fanout_parents_page_shows_the_tests_that_did_not_pass_everywhere() {
    let mut f = Fleet::new();
    f.add_agent_with_env("fan-a", &["profile=alpha"], &[], &[("DASH_SIDE", "alpha")]);
    f.add_agent_with_env("fan-b", &["profile=beta"], &[], &[("DASH_SIDE", "beta")]);
    let suite = f.write_suite(
        "fan",
        &[(
            "test_fan.py",
            "import os\n\ndef test_everywhere():\n    pass\n\n\
             def test_only_alpha():\n    assert os.environ.get('DASH_SIDE') == 'alpha'\n",
        )],
    );
    let id = f.submit(&[
        "pytest",
        "--dir",
        suite.to_str().unwrap(),
        "--fanout",
        "each-profile",
    ]);
    let parent = f.wait_terminal(&id);
    assert_eq!(
        parent["children"].as_array().map(Vec::len),
        Some(2),
        "{parent:#}"
    );
    let admin = std::fs::read_to_string(admin_token_file(&f.addr()).unwrap()).unwrap();
    let b = Browser::start(1280, 900);
    b.goto(&login_link(&f, admin.trim()));
    b.goto(&format!("http://{}/jobs/{id}", f.sched.http_addr));
    let columns = b.js("return [...document.querySelectorAll('#compat thead tr:first-child th')].map(t => t.textContent);", json!([]));
    assert_eq!(columns, json!(["Test", "alpha", "beta"]), "{columns}");
    let rows = b.js(
        "return [...document.querySelectorAll('#compat tr.row')].map(r => [...r.children].map(c => c.textContent));",
        json!([]),
    );
    assert_eq!(
        rows,
        json!([["test_fan.py::test_only_alpha", "pass", "fail"]]),
        "only the test that did not pass everywhere"
    );
    assert_eq!(
        b.count("#job table tbody tr.state-passed, #job table tbody tr.state-failed"),
        2,
        "both children listed"
    );
    b.screenshot(&shots(), "fanout-matrix");

    // A schedule that ran once (run-now) and passed: its next fire, its run, 1/1.
    let ok = f.write_suite(
        "nightly-ok",
        &[("test_ok.py", "def test_ok():\n    pass\n")],
    );
    let file = f.path().join("nightly.toml");
    std::fs::write(
        &file,
        format!("kind = \"pytest\"\nrequirements = 'label.profile==\"alpha\"'\n[source]\ndir = \"{}\"\n", ok.display()),
    )
    .unwrap();
    let out = f.ctl(&[
        "schedule",
        "add",
        "nightly-ok",
        "--cron",
        "0 2 * * *",
        "-f",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out}");
    let out = f.ctl(&["schedule", "run-now", "nightly-ok"]);
    assert_eq!(out.code, 0, "{out}");
    let run = out
        .stdout
        .split_whitespace()
        .find(|w| w.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or_default()
        .to_string();
    f.wait_state(&run, "passed");
    b.goto(&format!("http://{}/schedules", f.sched.http_addr));
    let row = b.js(
        "var r = document.querySelector('#schedules tr[data-name=\"nightly-ok\"]'); return r && [...r.children].map(c => c.textContent);",
        json!([]),
    );
    assert_eq!(row[3].as_str().map(str::trim), Some(run.as_str()), "{row}");
    assert_eq!(row[4], json!("1/1 (100%)"), "{row}");
    assert!(
        row[2].as_str().is_some_and(|t| !t.is_empty() && t != "-"),
        "a next fire: {row}"
    );
    b.screenshot(&shots(), "schedules");
}

/// The jobs list pages with the core's cursor and filters by submitter;
/// plain HTML, no browser needed.
#[test]
fn the_jobs_list_pages_with_a_cursor_and_filters_by_submitter() {
    let f = Fleet::new();
    let suite = f.write_suite("paged", &[("test_p.py", "def test_p():\n    pass\n")]);
    let ids: Vec<String> = (0..3)
        .map(|_| {
            f.submit(&[
                "pytest",
                "--dir",
                suite.to_str().unwrap(),
                "--allow-unmatched",
            ])
        })
        .collect();
    let admin = std::fs::read_to_string(admin_token_file(&f.addr()).unwrap()).unwrap();
    let admin = admin.trim();
    let http = &f.sched.http_addr;
    let rows = |body: &str| -> Vec<String> {
        body.split("<tr class=\"job\" data-id=\"")
            .skip(1)
            .filter_map(|r| r.split('"').next().map(str::to_string))
            .collect()
    };
    let (code, first) = msfleet_tests::http_get(http, "/jobs?limit=2", Some(admin)).unwrap();
    assert_eq!(code, 200, "{first}");
    assert_eq!(
        rows(&first),
        vec![ids[2].clone(), ids[1].clone()],
        "newest first"
    );
    let next = first
        .split("href=\"")
        .filter_map(|h| h.split('"').next())
        .find(|h| h.starts_with("/jobs?") && h.contains("cursor="))
        .unwrap_or_else(|| panic!("an 'Older jobs' link with a cursor: {first}"))
        .replace("&amp;", "&");
    let (code, second) = msfleet_tests::http_get(http, &next, Some(admin)).unwrap();
    assert_eq!(code, 200, "{second}");
    assert_eq!(rows(&second), vec![ids[0].clone()], "the rest, once");
    assert!(!second.contains("Older jobs"), "the last page: {second}");
    let (_, none) =
        msfleet_tests::http_get(http, "/jobs?submitter=nobody-at-all", Some(admin)).unwrap();
    assert!(
        rows(&none).is_empty() && none.contains("No job matches."),
        "{none}"
    );
}
