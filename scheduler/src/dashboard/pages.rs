//! The dashboard's HTML, rendered with maud (every value escaped). Lists work
//! without JavaScript; `live.js` only turns `<time data-ms>` into the
//! browser's zone and follows a running job.

use super::charts;
use super::{FleetQuery, Frame, JobsQuery, TrendQuery};
use crate::core::Trend;
use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use msfleet_proto::{self as pb, job_event, JobState};
use std::collections::BTreeMap;

/// Children of a fan-out or sharded parent shown on its page.
pub const MAX_CHILDREN: usize = 64;
/// Newest jobs the schedules page looks through for each schedule's runs.
pub const SCHEDULE_JOBS: u32 = 500;
/// Runs of a schedule shown (and counted in its pass rate).
const SCHEDULE_RUNS: usize = 10;
/// Bytes of log shown at the end of a job page.
const LOG_TAIL: usize = 64 * 1024;

/// `ms` as UTC text (the browser shows it in its own zone).
pub fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A point in time: UTC on the server, the browser's zone once `live.js` runs.
fn when(ms: i64) -> Markup {
    if ms <= 0 {
        return html! { "-" };
    }
    html! { time data-ms=(ms) datetime=(utc(ms)) { (utc(ms)) } }
}

fn seconds(s: f64) -> String {
    if s <= 0.0 {
        "-".into()
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn layout(frame: Option<&Frame>, title: &str, active: &str, body: Markup) -> Markup {
    let nav = [
        ("fleet", "/fleet", "Fleet"),
        ("queues", "/queues", "Queues"),
        ("jobs", "/jobs", "Jobs"),
        ("trends", "/trends", "Trends"),
        ("schedules", "/schedules", "Schedules"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · msfleet" }
                link rel="stylesheet" href="/static/dashboard.css";
                script src="/static/live.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "msfleet" }
                    @if frame.is_some() {
                        nav {
                            @for (key, href, label) in nav {
                                a href=(href) class=[(key == active).then_some("active")] { (label) }
                            }
                        }
                    }
                    @if let Some(f) = frame {
                        form.who method="post" action="/logout" {
                            span #who data-role=(f.role) { (f.user) " (" (f.role) ")" }
                            input type="hidden" name="csrf" value=(f.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// A page that only says one thing (an error, a refusal).
pub fn message(code: StatusCode, text: &str) -> Markup {
    layout(
        None,
        code.canonical_reason().unwrap_or("Error"),
        "",
        html! { p.message { (text) } p { a href="/" { "Back to the dashboard" } } },
    )
}

/// The login form; `error` says why the last token was refused.
pub fn login(next: &str, error: Option<&str>) -> Markup {
    layout(
        None,
        "Log in",
        "",
        html! {
            @if let Some(e) = error { p.message.bad { (e) } }
            p { "A viewer (or higher) token: " code { "msctl token create NAME --role viewer" } ", or "
                code { "msctl dashboard" } " for a login link." }
            form.login method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label { "Token " input type="password" name="token" autocomplete="off" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

fn hidden_csrf(frame: &Frame) -> Markup {
    html! { input type="hidden" name="csrf" value=(frame.csrf); }
}

fn state_badge(state: &str) -> Markup {
    html! { span class={ "state state-" (state) } { (state) } }
}

fn hardware(caps: Option<&pb::Capabilities>) -> String {
    let Some(c) = caps else {
        return "-".into();
    };
    let mut parts = Vec::new();
    let mut gpus: BTreeMap<&str, usize> = BTreeMap::new();
    for g in &c.gpus {
        *gpus.entry(g.name.as_str()).or_default() += 1;
    }
    for (name, n) in gpus {
        parts.push(format!("{n}× {name}"));
    }
    let mut npus: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &c.npus {
        *npus.entry(n.name.as_str()).or_default() += 1;
    }
    for (name, n) in npus {
        parts.push(format!("{n}× NPU {name}"));
    }
    if let Some(h) = &c.host {
        parts.push(format!("{} cores, {} GiB", h.cores, h.memory_mb / 1024));
    }
    parts.join(", ")
}

pub fn fleet(
    frame: &Frame,
    agents: &[&pb::Agent],
    total: usize,
    profiles: &[String],
    q: &FleetQuery,
) -> Markup {
    layout(
        Some(frame),
        "Fleet",
        "fleet",
        html! {
            form.filters method="get" action="/fleet" {
                label { "Label " input name="label" placeholder="pool=nightly" value=(q.label); }
                label { "Profile "
                    select name="profile" {
                        option value="" { "any" }
                        @for p in profiles {
                            option value=(p) selected[*p == q.profile] { (p) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            p.summary { (agents.len()) " of " (total) " agents" }
            div.scroll { table #agents {
                thead { tr { th { "Agent" } th { "State" } th { "Profile" } th { "Hardware" }
                    th { "Health" } th { "Running" } th { "Last heartbeat" }
                    @if frame.admin { th { "Admin" } } } }
                tbody {
                    @for a in agents {
                        @let caps = a.capabilities.as_ref();
                        @let health = caps.and_then(|c| c.health.as_ref());
                        tr.agent data-name=(a.name) data-state=(a.state) {
                            td { (a.name)
                                @if let Some(c) = caps { @if !c.labels.is_empty() {
                                    div.reason { @for (k, v) in &c.labels { (k) "=" (v) " " } }
                                } } }
                            td { (state_badge(&a.state))
                                @if !a.state_reason.is_empty() { div.reason { (a.state_reason) } } }
                            td { (caps.map_or("", |c| c.profile.as_str())) }
                            td { (hardware(caps)) }
                            td { (health.map_or("-", |h| h.status.as_str()))
                                @if let Some(h) = health { @for r in &h.reasons { div.reason { (r) } } } }
                            td { @for t in &a.running { a href={ "/jobs/" (t) } { (t) } " " }
                                @if a.running.is_empty() { "-" } }
                            td { (when(a.last_seen_ms)) }
                            @if frame.admin {
                                td { form.inline method="post" action="/actions/agent" {
                                    (hidden_csrf(frame))
                                    input type="hidden" name="name" value=(a.name);
                                    input type="hidden" name="back" value="/fleet";
                                    @if a.admin == pb::AgentAdmin::Drained as i32 || a.admin == pb::AgentAdmin::Quarantined as i32 {
                                        button.admin name="action" value="undrain" { "Undrain" }
                                    } @else {
                                        button.admin name="action" value="drain" { "Drain" }
                                    }
                                } }
                            }
                        }
                    }
                }
            } }
        },
    )
}

pub fn queues(frame: &Frame, queues: &[pb::Queue]) -> Markup {
    layout(
        Some(frame),
        "Queues",
        "queues",
        html! {
            div.scroll { table #queues {
                thead { tr { th { "Queue" } th { "Pending" } th { "Running" } th { "Oldest pending" }
                    th { "Wait p50 (1 h)" } th { "Wait p95 (1 h)" } th { "Assigned (1 h)" } } }
                tbody { @for q in queues {
                    tr data-queue=(q.name) {
                        td { a href={ "/jobs?queue=" (q.name) } { (q.name) } }
                        td.num { (q.pending) } td.num { (q.running) }
                        td.num { (seconds(q.oldest_pending_s)) }
                        td.num { (seconds(q.wait_p50_s)) } td.num { (seconds(q.wait_p95_s)) }
                        td.num { (q.waits_last_hour) }
                    }
                } }
            } }
            p.note { "Wait: from submit to the first assignment, over the jobs assigned in the last hour." }
        },
    )
}

/// The next page of the jobs list: the same filters from `cursor` on.
fn jobs_link(q: &JobsQuery, limit: u32, cursor: &str) -> String {
    let mut url = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("queue", q.queue.as_str()),
        ("state", q.state.as_str()),
        ("label", q.label.as_str()),
        ("submitter", q.submitter.as_str()),
        ("cursor", cursor),
    ] {
        if !v.is_empty() {
            url.append_pair(k, v);
        }
    }
    url.append_pair("limit", &limit.to_string());
    format!("/jobs?{}", url.finish())
}

fn counts_text(t: Option<&pb::TestCounts>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    if t.total == 0 {
        return "-".into();
    }
    format!(
        "{} passed, {} failed, {} skipped",
        t.passed, t.failed, t.skipped
    )
}

pub fn jobs(
    frame: &Frame,
    jobs: &[pb::Job],
    q: &JobsQuery,
    limit: u32,
    next_cursor: &str,
    queues: &[String],
) -> Markup {
    layout(
        Some(frame),
        "Jobs",
        "jobs",
        html! {
            form.filters method="get" action="/jobs" {
                label { "Queue " select name="queue" {
                    option value="" { "any" }
                    @for name in queues { option value=(name) selected[*name == q.queue] { (name) } }
                } }
                label { "State " select name="state" {
                    option value="" { "any" }
                    @for s in pb::ALL_STATES { option value=(s.label()) selected[s.label() == q.state] { (s.label()) } }
                } }
                label { "Label " input name="label" placeholder="key=value" value=(q.label); }
                label { "Submitter " input name="submitter" placeholder="name" value=(q.submitter); }
                input type="hidden" name="limit" value=(limit);
                button type="submit" { "Filter" }
            }
            div.scroll { table #jobs {
                thead { tr { th { "Job" } th { "State" } th { "Kind" } th { "Queue" } th { "Agent" }
                    th { "Tests" } th { "Submitted" } th { "By" } } }
                tbody { @for j in jobs {
                    @let spec = j.spec.as_ref();
                    tr.job data-id=(j.id) {
                        td { a href={ "/jobs/" (j.id) } { (j.id) } }
                        td { (state_badge(j.state().label())) }
                        td { (spec.map_or("", |s| s.kind.as_str())) }
                        td { (spec.map_or("", |s| s.queue.as_str())) }
                        td { (j.agent) }
                        td { (counts_text(j.tests.as_ref())) }
                        td { (when(j.submitted_at_ms)) }
                        td { (j.submitted_by) }
                    }
                } }
            } }
            @if jobs.is_empty() { p.empty { "No job matches." } }
            @if !next_cursor.is_empty() { p { a.more href=(jobs_link(q, limit, next_cursor)) { "Older jobs" } } }
        },
    )
}

/// One result row's text for a test event.
fn result_row(t: &pb::TestResult) -> Markup {
    html! {
        tr class={ "result outcome-" (t.outcome) } {
            td.nodeid { (t.nodeid) } td { (t.when) } td { (t.outcome) }
            td.num { (format!("{:.2}", t.duration_s)) }
        }
    }
}

fn case_rows(job: &pb::Job) -> Markup {
    html! {
        div.scroll { table #cases {
            thead { tr { th { "Case" } th { "Profile" } th { "Metric" } th { "Verdict" } th { "Median" }
                th { "Baseline" } th { "Δ" } th { "Why" } } }
            tbody { @for c in &job.cases {
                @let ex = c.explanation.clone().unwrap_or_default();
                tr class={ "case verdict-" (c.verdict) } {
                    td { a href=(trend_link(&c.name, &c.profile, &c.input_hash, &c.metric)) { (c.name) } }
                    td { (c.profile) } td { (c.metric) }
                    td { span class={ "verdict verdict-" (c.verdict) } { (c.verdict) }
                        @if c.rerun { " (re-run" @if c.confirmed { ", confirmed" } ")" } }
                    td.num { (charts::short(ex.value)) }
                    td.num { (ex.baseline.map_or("-".into(), charts::short)) }
                    td.num { (ex.delta_pct.map_or("-".into(), |d| format!("{d:+.1}%"))) }
                    td.why {
                        @if !ex.rule.is_empty() { b { (ex.rule) } " " }
                        (ex.message)
                        @if let Some(z) = ex.z { " z=" (format!("{z:.2}")) }
                        @if let Some(t) = ex.t_limit { " limit=" (format!("{t:.2}")) }
                        @if ex.k > 0 { " k=" (ex.k) }
                        @if !ex.limit.is_empty() { " (" (ex.limit) ")" }
                    }
                }
            } }
        } }
    }
}

pub fn job(
    frame: &Frame,
    job: &pb::Job,
    events: &[pb::JobEvent],
    children: &[pb::Job],
    matrix: &pb::matrix::Matrix,
) -> Markup {
    let state = job.state();
    let spec = job.spec.clone().unwrap_or_default();
    let mut results = Vec::new();
    let mut log = Vec::new();
    for ev in events {
        match &ev.kind {
            Some(job_event::Kind::Test(t)) if ev.attempt == job.attempts => results.push(t),
            Some(job_event::Kind::Log(l)) if ev.attempt == job.attempts => {
                log.extend_from_slice(&l.data)
            }
            _ => {}
        }
    }
    let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(LOG_TAIL)..]).into_owned();
    let counts = job.tests.unwrap_or_default();
    let live = !state.is_terminal();
    layout(
        Some(frame),
        &format!("Job {}", job.id),
        "jobs",
        html! {
            section #job data-id=(job.id) data-seq=(job.last_event_seq) data-live=(live)
                data-attempt=(job.attempts) {
                dl.facts {
                    dt { "State" } dd { span #state class={ "state state-" (state.label()) } { (state.label()) }
                        " " span #reason.reason { (job.reason) } }
                    dt { "Kind" } dd { (spec.kind) " on queue " a href={ "/jobs?queue=" (spec.queue) } { (spec.queue) } }
                    dt { "Attempts" } dd #attempts { (job.attempts) }
                    dt { "Agent" } dd #agent { (job.agent) }
                    dt { "Submitted" } dd { (when(job.submitted_at_ms)) " by " (job.submitted_by) }
                    dt { "Started" } dd { (when(job.started_at_ms)) }
                    dt { "Finished" } dd #finished { (when(job.finished_at_ms)) }
                    @if !job.schedule.is_empty() { dt { "Schedule" } dd { (job.schedule) } }
                    @if !job.parent.is_empty() { dt { "Parent" } dd { a href={ "/jobs/" (job.parent) } { (job.parent) } } }
                }
                @for w in &job.warnings { p.message.bad { (w) } }
                @if frame.admin && live {
                    form.inline method="post" action="/actions/cancel" {
                        (hidden_csrf(frame))
                        input type="hidden" name="job" value=(job.id);
                        input type="hidden" name="back" value={ "/jobs/" (job.id) };
                        button.admin.danger type="submit" { "Cancel job" }
                    }
                }
                @if live { p #live.note { "Live: results appear as the agent reports them." } }
                h2 { "Tests" }
                p #counts.counts {
                    span { "passed " b #c-passed { (counts.passed) } }
                    span { "failed " b #c-failed { (counts.failed) } }
                    span { "skipped " b #c-skipped { (counts.skipped) } }
                    span { "errors " b #c-errors { (counts.errors) } }
                    span { "xfailed " b #c-xfailed { (counts.xfailed) } }
                    span { "flaky " b #c-flaky { (counts.flaky) } }
                    span { "total " b #c-total { (counts.total) } }
                }
                div.scroll { table #results {
                    thead { tr { th { "Test" } th { "Phase" } th { "Outcome" } th { "Seconds" } } }
                    tbody { @for t in &results { (result_row(t)) } }
                } }
                @if !job.cases.is_empty() || spec.kind == "benchmark" {
                    h2 { "Benchmark verdicts" }
                    (case_rows(job))
                    @if frame.admin && state.is_terminal() && !job.cases.is_empty() {
                        (accept_form(frame, &job.id, &format!("/jobs/{}", job.id)))
                    }
                }
                @if !children.is_empty() {
                    h2 { "Children" }
                    (children_table(children))
                    h2 { "Compatibility matrix" }
                    (compat(matrix))
                }
                h2 { "Log" }
                pre #log.log { (tail) }
            }
        },
    )
}

/// Rows of a compatibility matrix shown at most.
const MATRIX_ROWS: usize = 500;

/// The tests that did not pass in every column (profile, agent or shard),
/// with each column's cell; the summary of every column on top.
fn compat(m: &pb::matrix::Matrix) -> Markup {
    let rows = m.selected(false);
    let summary = m.summary();
    html! {
        div.scroll { table #compat {
            thead {
                tr { th { "Test" } @for p in &m.profiles { th { (p) } } }
                tr.summary { td { (m.rows.len()) " tests" }
                    @for s in &summary { td.reason {
                        @for c in pb::matrix::CELLS { @if let Some(n) = s.get(&c) { (n) " " (c.label()) " " } }
                    } } }
            }
            tbody { @for (test, cells) in rows.iter().take(MATRIX_ROWS) {
                tr.row data-test=(test) { td.nodeid { (test) }
                    @for c in cells { td class={ "cell cell-" (c.outcome()) } { (c.label()) } } }
            } }
        } }
        @if rows.is_empty() && !m.rows.is_empty() { p.note { "Every test passed in every column." } }
        @if rows.len() > MATRIX_ROWS { p.note { "The first " (MATRIX_ROWS) " of " (rows.len()) " rows." } }
    }
}

/// A parent's children, one column each (profile, agent or shard), with
/// their state and counts.
fn children_table(children: &[pb::Job]) -> Markup {
    html! {
        div.scroll { table #matrix {
            thead { tr { th { "Column" } th { "Job" } th { "State" } th { "Passed" } th { "Failed" }
                th { "Skipped" } th { "Agent" } } }
            tbody { @for c in children {
                @let t = c.tests.unwrap_or_default();
                tr class={ "state-" (c.state().label()) } {
                    td { (c.column) } td { a href={ "/jobs/" (c.id) } { (c.id) } }
                    td { (state_badge(c.state().label())) }
                    td.num { (t.passed) } td.num { (t.failed) } td.num { (t.skipped) } td { (c.agent) }
                }
            } }
        } }
    }
}

fn accept_form(frame: &Frame, job: &str, back: &str) -> Markup {
    html! {
        form.inline.accept method="post" action="/actions/accept" {
            (hidden_csrf(frame))
            input type="hidden" name="job" value=(job);
            input type="hidden" name="back" value=(back);
            button.admin.accept type="submit" title="make this run's cases the baseline (audited)" { "Accept as baseline" }
        }
    }
}

/// The JSON a live page gets for one event.
pub fn event_json(ev: &pb::JobEvent, counts: &pb::TestCounts) -> serde_json::Value {
    use serde_json::json;
    let body = match &ev.kind {
        Some(job_event::Kind::State(s)) => json!({
            "kind": "state", "state": s.state().label(), "reason": s.reason, "agent": s.agent,
            "terminal": s.state().is_terminal(),
        }),
        Some(job_event::Kind::Test(t)) => json!({
            "kind": "test", "nodeid": t.nodeid, "when": t.when, "outcome": t.outcome,
            "duration_s": t.duration_s,
            "counts": {
                "passed": counts.passed, "failed": counts.failed, "skipped": counts.skipped,
                "errors": counts.errors, "xfailed": counts.xfailed, "flaky": counts.flaky,
                "total": counts.total,
            },
        }),
        Some(job_event::Kind::Log(l)) => json!({
            "kind": "log", "stream": l.stream, "text": String::from_utf8_lossy(&l.data),
        }),
        Some(job_event::Kind::Case(c)) => json!({
            "kind": "case", "name": c.name, "verdict": c.verdict,
            "value": c.explanation.as_ref().map_or(0.0, |e| e.value),
        }),
        Some(job_event::Kind::Environment(e)) => json!({
            "kind": "environment", "seconds": e.seconds,
        }),
        None => json!({ "kind": "other" }),
    };
    let mut body = body;
    if let Some(o) = body.as_object_mut() {
        o.insert("seq".into(), ev.seq.into());
        o.insert("attempt".into(), ev.attempt.into());
        o.insert("time_ms".into(), ev.time_ms.into());
    }
    body
}

fn trend_link(case: &str, profile: &str, input: &str, metric: &str) -> String {
    let mut url = form_urlencoded::Serializer::new(String::new());
    url.append_pair("case", case)
        .append_pair("profile", profile)
        .append_pair("input", input)
        .append_pair("metric", metric);
    format!("/trend?{}", url.finish())
}

pub fn trends(frame: &Frame, all: &[Trend], q: &TrendQuery) -> Markup {
    layout(
        Some(frame),
        "Benchmark trends",
        "trends",
        html! {
            form.filters method="get" action="/trends" {
                label { "Case " input name="case" value=(q.case); }
                label { "Profile " input name="profile" value=(q.profile); }
                button type="submit" { "Filter" }
            }
            div.scroll { table #trends {
                thead { tr { th { "Case" } th { "Profile" } th { "Metric" } th { "Last run" } th { "Last verdict" }
                    th { "Baseline runs" } } }
                tbody { @for t in all {
                    @let k = t.runs.key.clone().unwrap_or_default();
                    @let last = t.runs.runs.last();
                    tr {
                        td { a href=(trend_link(&k.case, &k.profile, &k.input_hash, &k.metric)) { (k.case) } }
                        td { (k.profile) } td { (k.metric) }
                        td { (when(last.map_or(0, |r| r.time_ms))) }
                        td { @if let Some(r) = last { span class={ "verdict verdict-" (r.verdict) } { (r.verdict) } } }
                        td.num { (t.baseline.as_ref().map_or(0, |b| b.history.len())) }
                    }
                } }
            } }
            @if all.is_empty() { p.empty { "No benchmark runs yet." } }
        },
    )
}

pub fn trend(frame: &Frame, found: &[Trend]) -> Markup {
    let first = found[0].runs.key.clone().unwrap_or_default();
    layout(
        Some(frame),
        &format!("{} on {}", first.case, first.profile),
        "trends",
        html! {
            @for t in found {
                @let k = t.runs.key.clone().unwrap_or_default();
                @let unit = t.runs.runs.iter().rev().map(|r| r.unit.as_str()).find(|u| !u.is_empty()).unwrap_or("");
                @let accepted = charts::accepted_jobs(t.baseline.as_ref());
                @let band = t.baseline.as_ref().and_then(charts::band);
                section.trend-key data-case=(k.case) data-profile=(k.profile) data-metric=(k.metric) {
                    h2 { (k.metric) " " small { "input " (k.input_hash) } }
                    figure.chart { (charts::trend(&t.runs.runs, band, &accepted, unit))
                        figcaption {
                            span.key-run { "● run median (colour: verdict)" }
                            span.key-accepted { "◯ accepted baseline run" }
                            @if let Some(b) = band { span.key-band { "▭ baseline band " (charts::short(b.low)) "–" (charts::short(b.high)) " " (unit) } }
                            @if let Some(a) = t.baseline.as_ref().and_then(|b| b.anchor) { span { " anchor " (charts::short(a)) } }
                        }
                    }
                    div.scroll { table.runs {
                        thead { tr { th { "Job" } th { "Time" } th { "Median" } th { "Verdict" } th { "Δ" }
                            th { "Baseline" } @if frame.admin { th { "Admin" } } } }
                        tbody { @for r in t.runs.runs.iter().rev() {
                            tr class={ "run verdict-" (r.verdict) } {
                                td { a href={ "/jobs/" (r.job_id) } { (r.job_id) } }
                                td { (when(r.time_ms)) }
                                td.num { (charts::short(r.median)) " " (r.unit) }
                                td { span class={ "verdict verdict-" (r.verdict) } { (r.verdict) } }
                                td.num { (r.delta_pct.map_or("-".into(), |d| format!("{d:+.1}%"))) }
                                td { @if accepted.contains(&r.job_id) { "accepted" } }
                                @if frame.admin { td {
                                    @if !accepted.contains(&r.job_id) {
                                        (accept_form(frame, &r.job_id, &trend_link(&k.case, &k.profile, &k.input_hash, &k.metric)))
                                    }
                                } }
                            }
                        } }
                    } }
                }
            }
        },
    )
}

pub fn schedules(frame: &Frame, schedules: &[pb::Schedule], recent: &[pb::Job]) -> Markup {
    let mut runs: BTreeMap<&str, Vec<&pb::Job>> = BTreeMap::new();
    for j in recent
        .iter()
        .filter(|j| !j.schedule.is_empty() && j.parent.is_empty())
    {
        let list = runs.entry(j.schedule.as_str()).or_default();
        if list.len() < SCHEDULE_RUNS {
            list.push(j);
        }
    }
    layout(
        Some(frame),
        "Schedules",
        "schedules",
        html! {
            div.scroll { table #schedules {
                thead { tr { th { "Schedule" } th { "Cron" } th { "Next fire" } th { "Last runs" }
                    th { "Pass rate" } th { "Paused" } } }
                tbody { @for s in schedules {
                    @let mine = runs.get(s.name.as_str()).cloned().unwrap_or_default();
                    @let finished: Vec<&&pb::Job> = mine.iter().filter(|j| j.state().is_terminal()).collect();
                    @let passed = finished.iter().filter(|j| j.state() == JobState::Passed).count();
                    tr data-name=(s.name) {
                        td { (s.name) }
                        td { code { (s.cron) } " " (s.tz) }
                        td { @if s.paused { "paused" } @else { (when(s.next_ms)) } }
                        td { @for j in &mine { a class={ "run state-" (j.state().label()) } href={ "/jobs/" (j.id) }
                            title=(j.state().label()) { (j.id) } " " } }
                        td.num { @if finished.is_empty() { "-" } @else {
                            (passed) "/" (finished.len()) " (" (100 * passed / finished.len()) "%)" } }
                        td { @if s.paused { "by " (s.paused_by) } }
                    }
                } }
            } }
            p.note { "Last runs: among the newest " (SCHEDULE_JOBS) " jobs, up to " (SCHEDULE_RUNS) " per schedule." }
        },
    )
}
