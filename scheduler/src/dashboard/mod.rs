//! The web dashboard on msched's HTTP listener: fleet, queues, jobs (a job's
//! results arrive live), benchmark trends with charts, schedules.
//!
//! - Pages are rendered on the server ([`pages`], maud) and work without
//!   JavaScript; the one script (`static/live.js`, served from the binary)
//!   shows times in the browser's zone and follows a running job over
//!   server-sent events.
//! - Data comes from the core through its [`CoreHandle`] commands, the same
//!   views the gRPC API serves; a job's events come from the store through
//!   [`crate::api::follow`], the one watch path, so nothing shows before it
//!   is durable.
//! - Who may look, and whose form a POST is: [`login`]. Pages need a viewer
//!   (or higher) token; actions (accept a baseline, drain / undrain an agent,
//!   cancel a job) need an admin and the session's CSRF token.

pub mod charts;
pub mod login;
pub mod pages;

use crate::core::{Command, CoreHandle, Trend};
use crate::http::HttpState;
use crate::store::Store;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use futures::Stream;
use login::{CsrfKey, Refused, Viewer};
use msfleet_proto as pb;
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;
use tonic::Status;

/// What the dashboard keeps for the life of the process.
pub struct Settings {
    pub csrf: CsrfKey,
    /// Cookies get `Secure` (the listener serves HTTPS).
    pub secure: bool,
    /// True once msched is stopping: live pages end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Events read for a job page at most (the newest); a live page follows on.
const PAGE_EVENTS: u64 = 20_000;
/// Events read per child for a parent's compatibility matrix (the newest).
const CHILD_EVENTS: u64 = 5_000;
/// Longest query string or form taken.
const MAX_QUERY: usize = 2048;
/// Jobs a list page may ask for at once.
const MAX_LIST: u32 = 1000;

/// The dashboard's routes, behind the login gate; `/login` and the static
/// files are open.
pub fn router(state: HttpState) -> Router<HttpState> {
    let pages = Router::new()
        .route("/", get(fleet))
        .route("/fleet", get(fleet))
        .route("/queues", get(queues))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/trends", get(trends))
        .route("/trend", get(trend))
        .route("/schedules", get(schedules))
        .route("/actions/accept", post(accept))
        .route("/actions/agent", post(agent_admin))
        .route("/actions/cancel", post(cancel))
        .route("/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state, gate));
    Router::new()
        .merge(pages)
        .route("/login", get(login_form).post(login_post))
        .route("/static/dashboard.css", get(css))
        .route("/static/live.js", get(script))
}

/// A page's answer to a failure: its status and one line saying what to do.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Html(pages::message(self.0, &self.1).into_string())).into_response()
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        use tonic::Code;
        let code = match s.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(code, s.message().to_string())
    }
}

type Page = Result<Response, Failure>;

fn html(markup: maud::Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// The core and the store, once loaded.
fn ready(state: &HttpState) -> Result<(CoreHandle, Store), Failure> {
    state.loaded().ok_or_else(|| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "msched is still loading its store; try again in a moment".into(),
        )
    })
}

/// The login gate: `?token=` logs in (cookie, then a redirect without it);
/// else a cookie or bearer token of a viewer (or higher) gets through, with
/// its [`Viewer`] in the request's extensions.
async fn gate(State(state): State<HttpState>, mut req: Request, next: Next) -> Response {
    let secure = state.dashboard().secure;
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if target.len() > MAX_QUERY {
        return Failure(StatusCode::URI_TOO_LONG, "the address is too long".into()).into_response();
    }
    if let Some((secret, clean)) = login::take_token_param(&target) {
        return match login::authenticate(&secret, state.tokens()) {
            Ok(_) => match login::set_cookie(&secret, secure) {
                Some(cookie) => (
                    StatusCode::SEE_OTHER,
                    [(header::SET_COOKIE, cookie)],
                    [(header::LOCATION, clean)],
                )
                    .into_response(),
                None => refused(
                    Refused::BadToken(
                        "the token is not one: it has characters a token never has".into(),
                    ),
                    &clean,
                    secure,
                ),
            },
            Err(why) => refused(why, &clean, secure),
        };
    }
    match login::viewer(req.headers(), state.tokens()) {
        Ok(viewer) => {
            req.extensions_mut().insert(viewer);
            next.run(req).await
        }
        Err(why) => refused(why, &target, secure),
    }
}

/// The login page (401) or a refusal (403), never echoing a token.
fn refused(why: Refused, next: &str, secure: bool) -> Response {
    match why {
        Refused::Forbidden(m) => Failure(StatusCode::FORBIDDEN, m).into_response(),
        Refused::NoToken => (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(next, None).into_string()),
        )
            .into_response(),
        Refused::BadToken(m) => (
            StatusCode::UNAUTHORIZED,
            [(header::SET_COOKIE, login::clear_cookie(secure))],
            Html(pages::login(next, Some(&m)).into_string()),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
}

async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    html(pages::login(login::local_target(&q.next), None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

async fn login_post(State(state): State<HttpState>, Form(f): Form<LoginForm>) -> Response {
    let secure = state.dashboard().secure;
    let next = login::local_target(&f.next).to_string();
    let secret = f.token.trim();
    match login::authenticate(secret, state.tokens()) {
        Ok(_) => match login::set_cookie(secret, secure) {
            Some(cookie) => (
                StatusCode::SEE_OTHER,
                [(header::SET_COOKIE, cookie)],
                [(header::LOCATION, next)],
            )
                .into_response(),
            None => refused(
                Refused::BadToken(
                    "the token is not one: it has characters a token never has".into(),
                ),
                &next,
                secure,
            ),
        },
        Err(why) => refused(why, &next, secure),
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Page {
    let d = state.dashboard();
    d.csrf
        .check_post(&viewer, &headers, &f.csrf)
        .map_err(|m| Failure(StatusCode::FORBIDDEN, m))?;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, login::clear_cookie(d.secure))],
        [(header::LOCATION, "/login".to_string())],
    )
        .into_response())
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/dashboard.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("static/live.js"),
    )
        .into_response()
}

/// What every page needs to draw its frame: who looks, their CSRF token.
pub struct Frame {
    pub user: String,
    pub role: &'static str,
    pub admin: bool,
    pub csrf: String,
}

fn frame(state: &HttpState, viewer: &Viewer) -> Frame {
    let role = match &viewer.who {
        crate::auth::Principal::Person { role, .. } => role.label(),
        crate::auth::Principal::Agent { .. } => crate::auth::AGENT_ROLE,
    };
    Frame {
        user: viewer.who.name().to_string(),
        role,
        admin: viewer.is_admin(),
        csrf: state.dashboard().csrf.token(viewer),
    }
}

#[derive(Deserialize, Default)]
pub struct FleetQuery {
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub profile: String,
}

async fn fleet(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<FleetQuery>,
) -> Page {
    let (core, _) = ready(&state)?;
    let label = match q.label.trim() {
        "" => None,
        l => Some(l.split_once('=').ok_or_else(|| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("label filter '{}' must look like key=value", crate::clip(l)),
            )
        })?),
    };
    let agents = core.call(|reply| Command::ListAgents { reply }).await?;
    let profiles: Vec<String> = {
        let mut p: Vec<String> = agents
            .iter()
            .filter_map(|a| a.capabilities.as_ref().map(|c| c.profile.clone()))
            .filter(|p| !p.is_empty())
            .collect();
        p.sort();
        p.dedup();
        p
    };
    let shown: Vec<&pb::Agent> = agents
        .iter()
        .filter(|a| {
            let caps = a.capabilities.as_ref();
            (q.profile.is_empty() || caps.is_some_and(|c| c.profile == q.profile))
                && label.is_none_or(|(k, v)| {
                    caps.and_then(|c| c.labels.get(k))
                        .is_some_and(|have| have == v)
                })
        })
        .collect();
    Ok(html(pages::fleet(
        &frame(&state, &viewer),
        &shown,
        agents.len(),
        &profiles,
        &q,
    )))
}

async fn queues(State(state): State<HttpState>, Extension(viewer): Extension<Viewer>) -> Page {
    let (core, _) = ready(&state)?;
    let queues = core.call(|reply| Command::ListQueues { reply }).await?;
    Ok(html(pages::queues(&frame(&state, &viewer), &queues)))
}

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub submitter: String,
    /// Where the page starts: the `next_cursor` of the page before.
    #[serde(default)]
    pub cursor: String,
    #[serde(default)]
    pub limit: Option<u32>,
}

async fn jobs(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<JobsQuery>,
) -> Page {
    let (core, _) = ready(&state)?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIST);
    let req = pb::ListJobsRequest {
        queue: q.queue.trim().to_string(),
        state: q.state.trim().to_string(),
        labels: match q.label.trim() {
            "" => vec![],
            l => vec![l.to_string()],
        },
        submitter: q.submitter.trim().to_string(),
        cursor: q.cursor.trim().to_string(),
        limit,
    };
    crate::limits::Bounded::check(&req)?;
    let page = core.call(|reply| Command::ListJobs { req, reply }).await?;
    let queues = core.call(|reply| Command::ListQueues { reply }).await?;
    let names: Vec<String> = queues.into_iter().map(|q| q.name).collect();
    Ok(html(pages::jobs(
        &frame(&state, &viewer),
        &page.jobs,
        &q,
        limit,
        &page.next_cursor,
        &names,
    )))
}

/// The newest `newest` durable events of job `id` up to `upto`.
async fn read_events(
    store: Store,
    id: u64,
    upto: u64,
    newest: u64,
) -> Result<Vec<pb::JobEvent>, Failure> {
    let from = upto.saturating_sub(newest);
    tokio::task::spawn_blocking(move || store.events(id, from, upto))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn job(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Page {
    let (core, store) = ready(&state)?;
    let job = core.call(|reply| Command::GetJob { id, reply }).await?;
    let num = job.id.parse::<u64>().unwrap_or(0);
    let events = read_events(store.clone(), num, job.last_event_seq, PAGE_EVENTS).await?;
    let mut children = Vec::new();
    let mut columns = Vec::new();
    for child in job.children.iter().take(pages::MAX_CHILDREN) {
        let id = child.clone();
        let Ok(c) = core.call(|reply| Command::GetJob { id, reply }).await else {
            continue;
        };
        let num = c.id.parse::<u64>().unwrap_or(0);
        let evs = read_events(store.clone(), num, c.last_event_seq, CHILD_EVENTS).await?;
        let tests = evs
            .iter()
            .filter(|e| e.attempt == c.attempts)
            .filter_map(|e| match &e.kind {
                Some(pb::job_event::Kind::Test(t)) => Some(t),
                _ => None,
            });
        let column = if c.column.is_empty() {
            c.id.clone()
        } else {
            c.column.clone()
        };
        columns.push((column, pb::matrix::combine(tests)));
        children.push(c);
    }
    let matrix = pb::matrix::Matrix::new(&columns);
    Ok(html(pages::job(
        &frame(&state, &viewer),
        &job,
        &events,
        &children,
        &matrix,
    )))
}

#[derive(Deserialize, Default)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

/// A job's events as server-sent events, from `?after=` (or the browser's
/// `Last-Event-ID` on a reconnect) on; each test result carries the counts of
/// the attempt so far, computed as the core counts them.
async fn job_events(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Failure> {
    let (core, store) = ready(&state)?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(q.after);
    let handle = core.call(|reply| Command::Watch { id, reply }).await?;
    // From the start: the counts of the attempt are the sum of its results.
    let mut rx = crate::api::follow(handle, store, 0, state.dashboard().stopping.clone());
    let stream = async_stream(move |tx| async move {
        let mut counts = pb::TestCounts::default();
        let mut attempt = 0;
        while let Some(item) = rx.recv().await {
            let ev = match item {
                Ok(ev) => ev,
                Err(s) => {
                    let _ = tx
                        .send(Event::default().event("end").data(s.message()))
                        .await;
                    return;
                }
            };
            if ev.attempt > attempt {
                attempt = ev.attempt;
                counts = pb::TestCounts::default();
            }
            if let Some(pb::job_event::Kind::Test(t)) = &ev.kind {
                counts.record_result(t);
            }
            if ev.seq <= after {
                continue;
            }
            let data = pages::event_json(&ev, &counts).to_string();
            if tx
                .send(Event::default().id(ev.seq.to_string()).data(data))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Event::default().event("end").data("done")).await;
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// A stream fed by a task: `body` sends into a bounded channel.
fn async_stream<F, Fut>(body: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(body(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

#[derive(Deserialize, Default)]
pub struct TrendQuery {
    #[serde(default)]
    pub case: String,
    #[serde(default)]
    pub profile: String,
    #[serde(default)]
    pub input: String,
    #[serde(default)]
    pub metric: String,
}

async fn trends(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<TrendQuery>,
) -> Page {
    let (core, _) = ready(&state)?;
    let (case, profile) = (q.case.clone(), q.profile.clone());
    let all = core
        .call(|reply| Command::Trends {
            case,
            profile,
            newest: 1,
            reply,
        })
        .await?;
    Ok(html(pages::trends(&frame(&state, &viewer), &all, &q)))
}

async fn trend(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<TrendQuery>,
) -> Page {
    let (core, _) = ready(&state)?;
    if q.case.is_empty() || q.profile.is_empty() {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "a trend needs ?case= and ?profile= (pick one on the trends page)".into(),
        ));
    }
    let (case, profile) = (q.case.clone(), q.profile.clone());
    let found: Vec<Trend> = core
        .call(|reply| Command::Trends {
            case,
            profile,
            newest: usize::MAX,
            reply,
        })
        .await?
        .into_iter()
        .filter(|t| {
            let k = t.runs.key.clone().unwrap_or_default();
            (q.input.is_empty() || k.input_hash == q.input)
                && (q.metric.is_empty() || k.metric == q.metric)
        })
        .collect();
    if found.is_empty() {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!(
                "no runs of case '{}' on profile '{}'",
                crate::clip(&q.case),
                crate::clip(&q.profile)
            ),
        ));
    }
    Ok(html(pages::trend(&frame(&state, &viewer), &found)))
}

async fn schedules(State(state): State<HttpState>, Extension(viewer): Extension<Viewer>) -> Page {
    let (core, _) = ready(&state)?;
    let schedules = core.call(|reply| Command::ListSchedules { reply }).await?;
    let req = pb::ListJobsRequest {
        limit: pages::SCHEDULE_JOBS,
        ..Default::default()
    };
    let recent = core.call(|reply| Command::ListJobs { req, reply }).await?;
    Ok(html(pages::schedules(
        &frame(&state, &viewer),
        &schedules,
        &recent.jobs,
    )))
}

/// An admin action's gate: an admin, and (from a browser session) the
/// session's own form.
fn admin_post(
    state: &HttpState,
    viewer: &Viewer,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<(), Failure> {
    state
        .dashboard()
        .csrf
        .check_post(viewer, headers, csrf)
        .map_err(|m| Failure(StatusCode::FORBIDDEN, m))?;
    crate::auth::admit(
        &viewer.who,
        crate::auth::Need::Person(crate::auth::Role::Admin),
    )
    .map_err(|m| Failure(StatusCode::FORBIDDEN, m))
}

/// Back to the page the form was on (a path of this site).
fn back(to: &str) -> Response {
    Redirect::to(login::local_target(to)).into_response()
}

#[derive(Deserialize)]
struct AcceptForm {
    job: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    back: String,
}

async fn accept(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<AcceptForm>,
) -> Page {
    admin_post(&state, &viewer, &headers, &f.csrf)?;
    let (core, _) = ready(&state)?;
    let req = pb::AcceptBaselinesRequest {
        job_id: f.job.trim().to_string(),
        who: String::new(),
    };
    crate::limits::Bounded::check(&req)?;
    let by = viewer.who.name().to_string();
    core.call(|reply| Command::AcceptBaselines { req, by, reply })
        .await?;
    Ok(back(&f.back))
}

#[derive(Deserialize)]
struct AgentForm {
    name: String,
    /// "drain" or "undrain".
    action: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    back: String,
}

async fn agent_admin(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<AgentForm>,
) -> Page {
    admin_post(&state, &viewer, &headers, &f.csrf)?;
    let (core, _) = ready(&state)?;
    let admin = match f.action.as_str() {
        "drain" => pb::AgentAdmin::Drained,
        "undrain" => pb::AgentAdmin::Active,
        other => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown agent action '{}' (drain, undrain)",
                    crate::clip(other)
                ),
            ))
        }
    };
    let req = pb::SetAgentAdminRequest {
        name: f.name.trim().to_string(),
        admin: admin as i32,
        ..Default::default()
    };
    crate::limits::Bounded::check(&req)?;
    let by = viewer.who.name().to_string();
    core.call(|reply| Command::SetAgentAdmin {
        name: req.name,
        admin,
        drain_deadline_in_ms: 0,
        by,
        reason: String::new(),
        reply,
    })
    .await?;
    Ok(back(&f.back))
}

#[derive(Deserialize)]
struct CancelForm {
    job: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    back: String,
}

async fn cancel(
    State(state): State<HttpState>,
    Extension(viewer): Extension<Viewer>,
    headers: HeaderMap,
    Form(f): Form<CancelForm>,
) -> Page {
    admin_post(&state, &viewer, &headers, &f.csrf)?;
    let (core, _) = ready(&state)?;
    let req = pb::CancelJobRequest {
        id: f.job.trim().to_string(),
    };
    crate::limits::Bounded::check(&req)?;
    let who = viewer.who.clone();
    core.call(|reply| Command::Cancel {
        id: req.id,
        who,
        reply,
    })
    .await?;
    Ok(back(&f.back))
}
