//! Security end to end: the auth matrix of every RPC, agent identity and
//! revocation, roles and audit, TLS (wrong CA, TLS/plain-text mix-ups, mTLS),
//! secure defaults. Real msched/msagent/msctl processes, real TLS made with
//! `openssl` (scripts/test installs it where it is missing).

mod common;

use common::*;
use msfleet_proto as pb;
use msfleet_proto::client::{AuthedChannel, Bearer};
use prost::Message;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tonic::Code;

// ------------------------------------------------------------------ the auth matrix

/// Who calls, in the matrix's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    Viewer,
    Submitter,
    Admin,
    /// Agent `a1`'s own token.
    Agent,
    /// A token that was revoked.
    Revoked,
    /// Agent `a2`'s token (calls on behalf of `a1` where a name is involved).
    OtherAgent,
}

const CALLERS: [Caller; 7] = [
    Caller::Nobody,
    Caller::Viewer,
    Caller::Submitter,
    Caller::Admin,
    Caller::Agent,
    Caller::Revoked,
    Caller::OtherAgent,
];

/// What a call got: refused for who the caller is, or let through (whatever
/// the method then answered about the request itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Unauthenticated,
    Denied,
    Ok,
}

use Got::{Denied as D, Ok as K, Unauthenticated as U};

/// One row per RPC of both services: the expected answer for each caller in
/// `CALLERS` order (nobody, viewer, submitter, admin, agent, revoked, other agent).
const MATRIX: &[(&str, [Got; 7])] = &[
    ("Fleet/Submit", [U, D, K, K, D, U, D]),
    ("Fleet/GetJob", [U, K, K, K, D, U, D]),
    ("Fleet/ListJobs", [U, K, K, K, D, U, D]),
    ("Fleet/CancelJob", [U, D, K, K, D, U, D]),
    ("Fleet/WatchJob", [U, K, K, K, D, U, D]),
    ("Fleet/ListAgents", [U, K, K, K, D, U, D]),
    ("Fleet/SetAgentAdmin", [U, D, D, K, D, U, D]),
    ("Fleet/CheckAgent", [U, D, D, K, D, U, D]),
    ("Fleet/ListQueues", [U, K, K, K, D, U, D]),
    ("Fleet/ListBaselines", [U, K, K, K, D, U, D]),
    ("Fleet/AcceptBaselines", [U, D, D, K, D, U, D]),
    ("Fleet/AddSchedule", [U, D, D, K, D, U, D]),
    ("Fleet/ListSchedules", [U, K, K, K, D, U, D]),
    ("Fleet/GetSchedule", [U, K, K, K, D, U, D]),
    ("Fleet/SetSchedulePaused", [U, D, D, K, D, U, D]),
    ("Fleet/DeleteSchedule", [U, D, D, K, D, U, D]),
    ("Fleet/RunScheduleNow", [U, D, D, K, D, U, D]),
    ("Fleet/TestHistory", [U, K, K, K, D, U, D]),
    ("Fleet/CreateToken", [U, D, D, K, D, U, D]),
    ("Fleet/ListTokens", [U, D, D, K, D, U, D]),
    ("Fleet/RevokeToken", [U, D, D, K, D, U, D]),
    ("Fleet/ForgetAgent", [U, D, D, K, D, U, D]),
    // Asks about an attempt leased to a1.
    ("AgentLink/GetBaselines", [U, D, D, D, K, U, D]),
    // Registers as a1: only a1's own credential may. Last, because a1's
    // credential registering from another instance takes the name over
    // (the live a1 and its attempt are fenced off).
    ("AgentLink/Session", [U, D, D, D, K, U, D]),
];

/// Every method of both msfleet services, from the descriptor the server
/// serves by reflection: a new RPC without a row in MATRIX fails the test.
fn every_method() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::v1::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = BTreeSet::new();
    for file in set.file {
        for svc in file.service {
            for m in &svc.method {
                out.insert(format!("{}/{}", svc.name(), m.name()));
            }
        }
    }
    out
}

struct Matrix {
    fleet: Fleet,
    secrets: std::collections::HashMap<&'static str, String>,
    /// A task leased to a1 (for GetBaselines).
    a1_attempt: pb::AttemptRef,
}

async fn channel(addr: &str, secret: Option<&str>) -> AuthedChannel {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::service::interceptor::InterceptedService::new(ch, Bearer::new(secret).unwrap())
}

/// The code of a call: `Ok` for any answer that is not an auth refusal.
fn got<T>(r: Result<T, tonic::Status>) -> Got {
    match r {
        Err(s) if s.code() == Code::Unauthenticated => Got::Unauthenticated,
        Err(s) if s.code() == Code::PermissionDenied => Got::Denied,
        _ => Got::Ok,
    }
}

async fn call(m: &Matrix, method: &str, who: Caller) -> Got {
    let secret = match who {
        Caller::Nobody => None,
        Caller::Viewer => Some(m.secrets["viewer"].as_str()),
        Caller::Submitter => Some(m.secrets["submitter"].as_str()),
        Caller::Admin => Some(m.secrets["admin"].as_str()),
        Caller::Agent => Some(m.secrets["a1"].as_str()),
        Caller::Revoked => Some(m.secrets["revoked"].as_str()),
        Caller::OtherAgent => Some(m.secrets["a2"].as_str()),
    };
    let ch = channel(&m.fleet.addr(), secret).await;
    let mut f = pb::fleet_client::FleetClient::new(ch.clone());
    let mut a = pb::agent_link_client::AgentLinkClient::new(ch);
    // Requests that change nothing when admitted (unknown names and ids).
    match method {
        "Fleet/Submit" => got(f.submit(pb::SubmitRequest { spec: None }).await),
        "Fleet/GetJob" => got(f.get_job(pb::GetJobRequest { id: "999".into() }).await),
        "Fleet/ListJobs" => got(f.list_jobs(pb::ListJobsRequest::default()).await),
        "Fleet/CancelJob" => got(f
            .cancel_job(pb::CancelJobRequest { id: "999".into() })
            .await),
        "Fleet/WatchJob" => got(f
            .watch_job(pb::WatchJobRequest {
                id: "999".into(),
                ..Default::default()
            })
            .await),
        "Fleet/ListAgents" => got(f.list_agents(pb::ListAgentsRequest {}).await),
        "Fleet/SetAgentAdmin" => got(f
            .set_agent_admin(pb::SetAgentAdminRequest {
                name: "nobody".into(),
                admin: pb::AgentAdmin::Drained as i32,
                drain_deadline_in_ms: 0,
                reason: String::new(),
            })
            .await),
        "Fleet/ForgetAgent" => got(f
            .forget_agent(pb::ForgetAgentRequest {
                name: "nobody".into(),
            })
            .await),
        "Fleet/CheckAgent" => got(f
            .check_agent(pb::CheckAgentRequest {
                name: "nobody".into(),
            })
            .await),
        "Fleet/ListQueues" => got(f.list_queues(pb::ListQueuesRequest {}).await),
        "Fleet/ListBaselines" => got(f.list_baselines(pb::ListBaselinesRequest::default()).await),
        "Fleet/AcceptBaselines" => got(f
            .accept_baselines(pb::AcceptBaselinesRequest {
                job_id: "999".into(),
                who: String::new(),
            })
            .await),
        "Fleet/AddSchedule" => got(f.add_schedule(pb::Schedule::default()).await),
        "Fleet/ListSchedules" => got(f.list_schedules(pb::ListSchedulesRequest {}).await),
        "Fleet/GetSchedule" => got(f.get_schedule(pb::ScheduleName { name: "x".into() }).await),
        "Fleet/SetSchedulePaused" => got(f
            .set_schedule_paused(pb::SetSchedulePausedRequest {
                name: "x".into(),
                paused: true,
            })
            .await),
        "Fleet/DeleteSchedule" => got(f
            .delete_schedule(pb::ScheduleName { name: "x".into() })
            .await),
        "Fleet/RunScheduleNow" => got(f
            .run_schedule_now(pb::ScheduleName { name: "x".into() })
            .await),
        "Fleet/TestHistory" => got(f
            .test_history(pb::TestHistoryRequest {
                test_id: "t.py::x".into(),
                ..Default::default()
            })
            .await),
        "Fleet/CreateToken" => got(f
            .create_token(pb::CreateTokenRequest {
                name: "bad name!".into(),
                role: "viewer".into(),
                ..Default::default()
            })
            .await),
        "Fleet/ListTokens" => got(f.list_tokens(pb::ListTokensRequest::default()).await),
        "Fleet/RevokeToken" => got(f
            .revoke_token(pb::RevokeTokenRequest {
                name: "nobody".into(),
                kind: "people".into(),
            })
            .await),
        "AgentLink/Session" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Register(pb::Register {
                    name: "a1".into(),
                    instance_id: format!("matrix-{who:?}"),
                    capabilities: Some(pb::Capabilities {
                        slots: 1,
                        ..Default::default()
                    }),
                    resume: vec![],
                })),
            })
            .await
            .unwrap();
            let r = a
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            match r {
                Err(s) => got::<()>(Err(s)),
                Ok(resp) => {
                    let mut inbound = resp.into_inner();
                    let first = inbound.message().await;
                    drop(tx);
                    got(first)
                }
            }
        }
        "AgentLink/GetBaselines" => got(a
            .get_baselines(pb::GetBaselinesRequest {
                attempt: Some(m.a1_attempt.clone()),
                keys: vec![],
            })
            .await),
        other => panic!("the matrix test cannot call {other}: add it to call()"),
    }
}

fn created_secret(out: &Out) -> String {
    assert_eq!(out.code, 0, "{out}");
    out.stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_each_kind_of_caller_as_the_matrix_says() {
    let rows: BTreeSet<String> = MATRIX.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(
        every_method(),
        rows,
        "every RPC needs exactly one row in MATRIX (and call())"
    );

    let (fleet, secrets, a1_attempt) = tokio::task::spawn_blocking(|| {
        let mut f = Fleet::new();
        let mut secrets = std::collections::HashMap::new();
        for (name, role) in [
            ("viewer", "viewer"),
            ("submitter", "submitter"),
            ("revoked", "admin"),
        ] {
            secrets.insert(
                name,
                created_secret(&f.ctl(&["token", "create", name, "--role", role])),
            );
        }
        let admin = std::fs::read_to_string(admin_token_file(&f.addr()).unwrap()).unwrap();
        secrets.insert("admin", admin.trim().to_string());
        assert_eq!(f.ctl(&["token", "revoke", "revoked"]).code, 0);
        // a2's token exists; a1 is a live agent running a slow job.
        let a2 = agent_token(&f.addr(), "a2", &[]);
        secrets.insert(
            "a2",
            std::fs::read_to_string(a2).unwrap().trim().to_string(),
        );
        f.add_agent("a1", &[], &[]);
        let a1 = std::fs::read_to_string(f.path().join("tokens/a1.token")).unwrap();
        secrets.insert("a1", a1.trim().to_string());
        let suite = f.sleepy_suite("slow", 1, 60.0);
        let id = f.submit(&["pytest", "--dir", &suite.display().to_string()]);
        f.wait_state(&id, "running");
        let attempt = pb::AttemptRef {
            task_id: id.clone(),
            attempt: 1,
            epoch: 0,
        };
        (f, secrets, attempt)
    })
    .await
    .unwrap();
    let m = Matrix {
        fleet,
        secrets,
        a1_attempt,
    };
    let mut wrong = Vec::new();
    let mut table = String::from("| RPC | nobody | viewer | submitter | admin | agent | revoked | other agent |\n|---|---|---|---|---|---|---|---|\n");
    for (method, want) in MATRIX {
        let mut line = format!("| {method} |");
        for (i, who) in CALLERS.iter().enumerate() {
            let g = call(&m, method, *who).await;
            line += &format!(" {g:?} |");
            if g != want[i] {
                wrong.push(format!(
                    "{method} as {who:?}: got {g:?}, want {:?}",
                    want[i]
                ));
            }
        }
        table += &line;
        table.push('\n');
    }
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "auth matrix mismatches:\n{}",
        wrong.join("\n")
    );
}

// ------------------------------------------------------------------ identity, roles, audit

#[test]
fn an_agent_cannot_register_under_another_agents_name() {
    let mut f = Fleet::new();
    let a2 = agent_token(&f.addr(), "a2", &[]);
    let mut imposter = Agent::start(
        &f.sched.url(),
        f.path(),
        "a1",
        &[],
        std::slice::from_ref(&f.root),
        &["--token-file", &a2.display().to_string()],
    );
    let log_path = imposter.log.clone();
    let st = wait_for(
        Duration::from_secs(20),
        "the imposter to exit",
        || imposter.try_wait(),
        || std::fs::read_to_string(&log_path).unwrap_or_default(),
    );
    assert!(!st.success(), "an agent refused for good exits non-zero");
    let log = std::fs::read_to_string(&imposter.log).unwrap();
    assert!(log.contains("belongs to agent 'a2'"), "{log}");
    assert!(f.agent_json("a1").is_none(), "no agent a1 was registered");
    f.extra_logs.push(imposter.log.clone());
}

#[test]
fn a_revoked_agent_is_disconnected_and_its_attempt_completes_elsewhere() {
    let mut f = Fleet::new();
    f.add_agent("doomed", &[], &[]);
    let suite = f.sleepy_suite("slow", 3, 1.0);
    let id = f.submit(&["pytest", "--dir", &suite.display().to_string()]);
    f.wait_state(&id, "running");
    let t0 = std::time::Instant::now();
    assert_eq!(f.ctl(&["agent", "token", "revoke", "doomed"]).code, 0);
    wait_for(
        Duration::from_secs(5),
        "the revoked agent to be disconnected",
        || (f.agent_json("doomed")?["connected"] == false).then_some(()),
        || format!("{:?}", f.agent_json("doomed")),
    );
    let took = t0.elapsed();
    let doomed = f.agent("doomed");
    let st = wait_for(
        Duration::from_secs(20),
        "the revoked agent to exit",
        || doomed.try_wait(),
        String::new,
    );
    assert!(!st.success());
    f.add_agent("spare", &[], &[]);
    let done = f.wait_terminal(&id);
    assert_eq!(done["state"], "passed", "{done:#}");
    assert_eq!(done["agent"], "spare");
    assert_eq!(
        count(&done, "passed"),
        3,
        "every test counted once: {done:#}"
    );
    assert_eq!(count(&done, "total"), 3);
    println!("revoked -> disconnected in {took:?}");
    let log = std::fs::read_to_string(&f.agents[0].log).unwrap();
    assert!(
        log.contains("revoked"),
        "the agent says why it stopped: {log}"
    );
}

#[test]
fn submitters_cannot_touch_what_is_not_theirs_and_the_audit_names_tokens() {
    let f = Fleet::new();
    let addr = f.addr();
    let dir = f.path().to_path_buf();
    let token = |name: &str, role: &str| -> PathBuf {
        let secret = created_secret(&f.ctl(&["token", "create", name, "--role", role]));
        let p = dir.join(format!("{name}.token"));
        std::fs::write(&p, format!("{secret}\n")).unwrap();
        p
    };
    let ana = token("ana", "submitter");
    let bob = token("bob", "submitter");
    let as_ = |t: &Path, args: &[&str]| {
        let mut full = vec!["--token-file", t.to_str().unwrap()];
        full.extend_from_slice(args);
        run_cmd(ctl_cmd(&addr, &full), CTL_TIMEOUT)
    };
    let suite = f.copy_example("suite");
    let out = as_(
        &ana,
        &["submit", "pytest", "--dir", suite.to_str().unwrap()],
    );
    assert_eq!(out.code, 0, "{out}");
    let id = out.stdout.trim().to_string();
    let shown = as_(&bob, &["show", &id, "--json"]).json();
    assert_eq!(shown["submitted_by"], "ana");
    let out = as_(&bob, &["cancel", &id]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("submitted by 'ana'"), "{out}");
    let out = as_(&bob, &["baseline", "accept", &id]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("needs admin"), "{out}");
    let job = f.write_suite(
        "sched",
        &[("job.toml", "kind = \"pytest\"\n[source]\ndir = \"/tmp\"\n")],
    );
    let out = as_(
        &bob,
        &[
            "schedule",
            "add",
            "n",
            "--cron",
            "@daily",
            "-f",
            job.join("job.toml").to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 2, "{out}");
    let out = as_(&ana, &["cancel", &id]);
    assert_eq!(out.code, 0, "the submitter cancels its own job: {out}");
    // An admin's schedule records who made and paused it.
    let out = f.ctl(&[
        "schedule",
        "add",
        "n",
        "--cron",
        "@daily",
        "-f",
        job.join("job.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(f.ctl(&["schedule", "pause", "n"]).code, 0);
    let s = f.ctl(&["schedule", "show", "n", "--json"]).json();
    assert_eq!(s["created_by"], "admin");
    assert_eq!(s["paused_by"], "admin");
    // Without a token nothing works, and msctl says how to get one.
    let out = run_cmd(ctl_cmd_anonymous(&addr, &["list"]), CTL_TIMEOUT);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("needs a token"), "{out}");
}

#[test]
fn the_bootstrap_admin_token_is_a_private_one_line_file_made_once() {
    use std::os::unix::fs::PermissionsExt;
    let mut f = Fleet::new();
    let path = admin_token_file(&f.addr()).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("msfleet_") && text.ends_with('\n'));
    f.sched.restart();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "not remade");
    assert_eq!(
        f.ctl(&["token", "list"]).code,
        0,
        "still valid after a restart"
    );
    let log = std::fs::read_to_string(&f.sched.log).unwrap();
    assert!(!log.contains(text.trim()), "the secret is never logged");
}

// ------------------------------------------------------------------ TLS

/// A CA and leaf certificates made with openssl.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf for `name` (DNS SAN), usable as server and client certificate.
    fn leaf(&self, name: &str) -> (PathBuf, PathBuf) {
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:{name},IP:127.0.0.1\n"
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        )
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scheduler serving TLS with a certificate from a new CA; with
/// `client_ca`, certificates from that CA also name agents (mTLS).
fn tls_fleet(client_ca: bool) -> (Fleet, Pki, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "fleet-ca");
    let (cert, key) = pki.leaf("localhost");
    let mut opts = SchedOpts {
        tls: Some((cert, key, pki.ca())),
        ..Default::default()
    };
    if client_ca {
        opts.extra = vec!["--client-ca".into(), pki.ca().display().to_string()];
    }
    (Fleet::with_opts(opts), pki, tmp)
}

#[test]
fn tls_works_end_to_end_and_mistakes_fail_fast_with_one_line() {
    let (mut f, _pki, _tmp) = tls_fleet(false);
    let url = f.sched.url();
    assert!(url.starts_with("https://localhost:"), "{url}");
    f.add_agent("t1", &[], &[]);
    let suite = f.copy_example("suite");
    let out = run_cmd(
        ctl_cmd(
            &url,
            &[
                "submit",
                "pytest",
                "--dir",
                suite.to_str().unwrap(),
                "--wait",
            ],
        ),
        CTL_TIMEOUT,
    );
    assert_eq!(out.code, 1, "the example suite has one failing test: {out}");

    // A CA that did not sign the scheduler's certificate.
    let other = Pki::new(f.path(), "other-ca");
    let mut cmd = ctl_cmd(&url, &["list"]);
    cmd.env("MSFLEET_CA", other.ca());
    let out = run_cmd(cmd, CTL_TIMEOUT);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("does not trust"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out}");

    // Plain text against the TLS scheduler.
    let plain = format!("http://{}", f.addr());
    let mut cmd = ctl_cmd(&plain, &["list"]);
    cmd.env_remove("MSFLEET_CA");
    let out = run_cmd(cmd, CTL_TIMEOUT);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("use https://"), "{out}");

    // An agent with the wrong CA gives up at once instead of retrying forever.
    let t0 = std::time::Instant::now();
    let mut lost = Agent::start(
        &url,
        f.path(),
        "wrong-ca",
        &[],
        std::slice::from_ref(&f.root),
        &["--ca", other.ca().to_str().unwrap()],
    );
    let st = wait_for(
        Duration::from_secs(20),
        "the agent with the wrong CA to exit",
        || lost.try_wait(),
        String::new,
    );
    assert!(!st.success());
    assert!(t0.elapsed() < Duration::from_secs(15));
    let log = std::fs::read_to_string(&lost.log).unwrap();
    assert!(log.contains("does not trust"), "{log}");
}

#[test]
fn tls_clients_against_a_plain_text_scheduler_are_told_so() {
    let f = Fleet::new();
    let pki = Pki::new(f.path(), "some-ca");
    let mut cmd = ctl_cmd(
        &format!("https://localhost:{}", f.addr().rsplit(':').next().unwrap()),
        &["list"],
    );
    cmd.env("MSFLEET_CA", pki.ca());
    let out = run_cmd(cmd, CTL_TIMEOUT);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.stderr.contains("does not speak TLS"), "{out}");
}

#[test]
fn mtls_agents_are_named_by_their_certificate() {
    let (mut f, pki, _tmp) = tls_fleet(true);
    let (cert, key) = pki.leaf("gpu-7");
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    f.add_agent("gpu-7", &[], &args);
    let suite = f.copy_example("suite");
    let id = f.submit(&["pytest", "--dir", suite.to_str().unwrap()]);
    let done = f.wait_terminal(&id);
    assert_eq!(done["agent"], "gpu-7", "{done:#}");
    // The same certificate cannot register another name.
    let mut other = Agent::start(
        &f.sched.url(),
        f.path(),
        "gpu-8",
        &[],
        std::slice::from_ref(&f.root),
        &args,
    );
    let st = wait_for(
        Duration::from_secs(20),
        "the misnamed mTLS agent to exit",
        || other.try_wait(),
        String::new,
    );
    assert!(!st.success());
    let log = std::fs::read_to_string(&other.log).unwrap();
    assert!(log.contains("belongs to agent 'gpu-7'"), "{log}");
}

#[test]
fn plain_text_off_loopback_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cmd(
        {
            let mut c = Command::new(bin("msched"));
            c.args(["--listen", "0.0.0.0:0", "--data-dir"])
                .arg(dir.path().join("d"))
                .env_remove("MSCHED_LISTEN");
            c
        },
        Duration::from_secs(30),
    );
    assert_ne!(out.code, 0);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("--tls-cert") && last.contains("--insecure"),
        "{out}"
    );
    assert!(
        !dir.path().join("d/admin.token").exists(),
        "it started nothing"
    );

    // --insecure accepts the risk, and says so at start.
    let log = dir.path().join("insecure.log");
    let ready = dir.path().join("ready");
    let mut child = Command::new(bin("msched"))
        .args(["--listen", "0.0.0.0:0", "--insecure", "--data-dir"])
        .arg(dir.path().join("d"))
        .arg("--ready-file")
        .arg(&ready)
        .env_remove("MSCHED_LISTEN")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the --insecure scheduler to be ready",
        || ready.exists().then_some(()),
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("--insecure: serving plain text off loopback"),
        "{text}"
    );
}
