//! The two gRPC services. They translate requests into core commands and back;
//! all state and every rule lives in [`crate::core`].

use crate::auth::{self, Principal};
use crate::core::{Command, CoreHandle, Progress};
use crate::limits::{self, Bounded};
use crate::store::Store;
use futures::Stream;
use msfleet_proto as pb;
use msfleet_proto::{agent_link_server::AgentLink, agent_message, fleet_server::Fleet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Events read from the store per round trip of a watch.
const WATCH_PAGE: u64 = 512;

/// The caller the auth layer established for `req` ([`crate::auth::layer`]).
fn caller<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated(crate::auth::layer::NO_TOKEN))
}

/// The request of `req`, once it is within [`limits`] (every string, list
/// and map bounded).
fn bounded<T: Bounded>(req: Request<T>) -> Result<T, Status> {
    let r = req.into_inner();
    r.check()?;
    Ok(r)
}

/// A job's durable event log from `after_seq` on, as the core's watch
/// ([`Command::Watch`]) makes it durable: the one way to follow a job, for
/// `WatchJob` and the dashboard's live page alike. Ends after the job's final
/// event, when the receiver is dropped, or (Unavailable) when msched stops.
pub fn follow(
    handle: crate::core::WatchHandle,
    store: Store,
    after_seq: u64,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> mpsc::Receiver<Result<pb::JobEvent, Status>> {
    let (tx, rx) = mpsc::channel::<Result<pb::JobEvent, Status>>(64);
    tokio::spawn(async move {
        let job = handle.job;
        let mut progress = handle.progress;
        let mut cursor = after_seq;
        loop {
            let Progress { durable_seq, done } = *progress.borrow_and_update();
            while cursor < durable_seq {
                let upto = durable_seq.min(cursor + WATCH_PAGE);
                let s = store.clone();
                let from = cursor;
                let page = tokio::task::spawn_blocking(move || s.events(job, from, upto))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| Status::internal(e.to_string())));
                match page {
                    Ok(events) => {
                        for ev in events {
                            cursor = ev.seq;
                            if tx.send(Ok(ev)).await.is_err() {
                                return; // the watcher went away
                            }
                        }
                        cursor = cursor.max(upto);
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
            if done {
                return;
            }
            let changed = tokio::select! {
                changed = progress.changed() => changed,
                () = async {
                    let _ = stopping.wait_for(|s| *s).await;
                } => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "msched is shutting down; watch again to go on after event {cursor}"
                        ))))
                        .await;
                    return;
                }
            };
            if changed.is_err() {
                // The core let go of the job: the last value is final.
                let last = *progress.borrow();
                if last.durable_seq <= cursor {
                    return;
                }
            }
        }
    });
    rx
}

/// The user-facing `msfleet.v1.Fleet` service.
pub struct FleetService {
    core: CoreHandle,
    store: Store,
    /// True once msched is stopping: open watches end (Unavailable) so the
    /// graceful stop does not wait on them; msctl resumes from its cursor.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl FleetService {
    pub fn new(
        core: CoreHandle,
        store: Store,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            core,
            store,
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Fleet for FleetService {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::Job>, Status> {
        let started = std::time::Instant::now();
        let who = caller(&req)?;
        let by = who.name().to_string();
        // The submitter's span (W3C traceparent), only read when traces are exported.
        let parent_span = msfleet_proto::telemetry::enabled()
            .then(|| msfleet_proto::telemetry::extract(req.metadata()))
            .flatten();
        let spec = bounded(req)?
            .spec
            .ok_or_else(|| Status::invalid_argument("SubmitRequest.spec is missing"))?;
        // The one place a caller's role bounds what a spec may ask for.
        limits::priority_for(spec.priority, who.is_admin())?;
        let job = self
            .core
            .call(|reply| Command::Submit {
                spec: Box::new(spec),
                by,
                caller: parent_span,
                reply,
            })
            .await?;
        metrics::histogram!(crate::metrics::SUBMIT).record(started.elapsed().as_secs_f64());
        Ok(Response::new(job))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let id = bounded(req)?.id;
        Ok(Response::new(
            self.core
                .call(|reply| Command::GetJob { id, reply })
                .await?,
        ))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = bounded(req)?;
        Ok(Response::new(
            self.core
                .call(|reply| Command::ListJobs { req, reply })
                .await?,
        ))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&req)?;
        let id = bounded(req)?.id;
        Ok(Response::new(
            self.core
                .call(|reply| Command::Cancel { id, who, reply })
                .await?,
        ))
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let req = bounded(req)?;
        let id = req.id;
        let handle = self.core.call(|reply| Command::Watch { id, reply }).await?;
        let rx = follow(
            handle,
            self.store.clone(),
            req.after_seq,
            self.stopping.clone(),
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self
            .core
            .call(|reply| Command::ListAgents { reply })
            .await?;
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn set_agent_admin(
        &self,
        req: Request<pb::SetAgentAdminRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let by = caller(&req)?.name().to_string();
        let req = bounded(req)?;
        let admin = pb::AgentAdmin::try_from(req.admin)
            .map_err(|_| Status::invalid_argument(format!("unknown agent state {}", req.admin)))?;
        let (name, drain_deadline_in_ms, reason) = (req.name, req.drain_deadline_in_ms, req.reason);
        Ok(Response::new(
            self.core
                .call(|reply| Command::SetAgentAdmin {
                    name,
                    admin,
                    drain_deadline_in_ms,
                    by,
                    reason,
                    reply,
                })
                .await?,
        ))
    }

    async fn forget_agent(
        &self,
        req: Request<pb::ForgetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let name = bounded(req)?.name;
        Ok(Response::new(
            self.core
                .call(|reply| Command::ForgetAgent { name, reply })
                .await?,
        ))
    }

    async fn check_agent(
        &self,
        req: Request<pb::CheckAgentRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let by = caller(&req)?.name().to_string();
        let name = bounded(req)?.name;
        Ok(Response::new(
            self.core
                .call(|reply| Command::CheckAgent { name, by, reply })
                .await?,
        ))
    }

    async fn list_queues(
        &self,
        _req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let queues = self
            .core
            .call(|reply| Command::ListQueues { reply })
            .await?;
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn list_baselines(
        &self,
        req: Request<pb::ListBaselinesRequest>,
    ) -> Result<Response<pb::ListBaselinesResponse>, Status> {
        let req = bounded(req)?;
        let baselines = self
            .core
            .call(|reply| Command::ListBaselines { req, reply })
            .await?;
        Ok(Response::new(pb::ListBaselinesResponse { baselines }))
    }

    async fn accept_baselines(
        &self,
        req: Request<pb::AcceptBaselinesRequest>,
    ) -> Result<Response<pb::AcceptBaselinesResponse>, Status> {
        let by = caller(&req)?.name().to_string();
        let req = bounded(req)?;
        let baselines = self
            .core
            .call(|reply| Command::AcceptBaselines { req, by, reply })
            .await?;
        Ok(Response::new(pb::AcceptBaselinesResponse { baselines }))
    }

    async fn add_schedule(
        &self,
        req: Request<pb::Schedule>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let by = caller(&req)?.name().to_string();
        let schedule = Box::new(bounded(req)?);
        Ok(Response::new(
            self.core
                .call(|reply| Command::AddSchedule {
                    schedule,
                    by,
                    reply,
                })
                .await?,
        ))
    }

    async fn list_schedules(
        &self,
        _req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let schedules = self
            .core
            .call(|reply| Command::ListSchedules { reply })
            .await?;
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn get_schedule(
        &self,
        req: Request<pb::ScheduleName>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let name = bounded(req)?.name;
        Ok(Response::new(
            self.core
                .call(|reply| Command::GetSchedule { name, reply })
                .await?,
        ))
    }

    async fn set_schedule_paused(
        &self,
        req: Request<pb::SetSchedulePausedRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let by = caller(&req)?.name().to_string();
        let pb::SetSchedulePausedRequest { name, paused } = bounded(req)?;
        Ok(Response::new(
            self.core
                .call(|reply| Command::SetSchedulePaused {
                    name,
                    paused,
                    by,
                    reply,
                })
                .await?,
        ))
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::ScheduleName>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let name = bounded(req)?.name;
        Ok(Response::new(
            self.core
                .call(|reply| Command::DeleteSchedule { name, reply })
                .await?,
        ))
    }

    async fn test_history(
        &self,
        req: Request<pb::TestHistoryRequest>,
    ) -> Result<Response<pb::TestHistoryResponse>, Status> {
        let req = bounded(req)?;
        if req.test_id.trim().is_empty() {
            return Err(Status::invalid_argument(
                "give a test id (a pytest node id such as tests/test_a.py::test_x)",
            ));
        }
        let limit = match req.limit {
            0 => 50,
            n => n.min(10_000) as usize,
        };
        let store = self.store.clone();
        let runs = tokio::task::spawn_blocking(move || {
            store.test_history(&req.test_id, &req.profile, limit)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::TestHistoryResponse { runs }))
    }

    async fn run_schedule_now(
        &self,
        req: Request<pb::ScheduleName>,
    ) -> Result<Response<pb::Job>, Status> {
        let by = caller(&req)?.name().to_string();
        let name = bounded(req)?.name;
        Ok(Response::new(
            self.core
                .call(|reply| Command::RunScheduleNow { name, by, reply })
                .await?,
        ))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let by = caller(&req)?.name().to_string();
        let req = bounded(req)?;
        let secret =
            auth::new_secret().map_err(|_| Status::internal("the system random source failed"))?;
        let hash = auth::secret_hash(&secret);
        let token = self
            .core
            .call(|reply| Command::CreateToken {
                req,
                hash,
                by,
                reply,
            })
            .await?;
        Ok(Response::new(pb::CreatedToken {
            token: Some(token),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let kind = bounded(req)?.kind;
        let tokens = self
            .core
            .call(|reply| Command::ListTokens { kind, reply })
            .await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::Token>, Status> {
        let by = caller(&req)?.name().to_string();
        let pb::RevokeTokenRequest { name, kind } = bounded(req)?;
        Ok(Response::new(
            self.core
                .call(|reply| Command::RevokeToken {
                    name,
                    kind,
                    by,
                    reply,
                })
                .await?,
        ))
    }
}

/// The agent-facing `msfleet.v1.AgentLink` service: one session per agent process.
pub struct AgentLinkService {
    core: CoreHandle,
    next_session: Arc<AtomicU64>,
}

impl AgentLinkService {
    pub fn new(core: CoreHandle) -> Self {
        AgentLinkService {
            core,
            next_session: Arc::new(AtomicU64::new(1)),
        }
    }
}

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = BoxStream<pb::SchedulerMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let who = caller(&req)?;
        let mut inbound = req.into_inner();
        let reg = match inbound.message().await? {
            Some(pb::AgentMessage {
                msg: Some(agent_message::Msg::Register(reg)),
            }) => {
                reg.check()?;
                reg
            }
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ))
            }
            None => {
                return Err(Status::cancelled(
                    "the agent closed the session before registering",
                ))
            }
        };
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crate::core::agent_channel(crate::core::AGENT_QUEUE);
        let heard = rx.heard();
        self.core
            .call(|reply| Command::Register {
                session,
                reg,
                who,
                tx,
                reply,
            })
            .await?;
        tokio::spawn(read_session(self.core.clone(), inbound, heard, session));
        Ok(Response::new(Box::pin(rx)))
    }

    async fn get_baselines(
        &self,
        req: Request<pb::GetBaselinesRequest>,
    ) -> Result<Response<pb::GetBaselinesResponse>, Status> {
        let agent = caller(&req)?.name().to_string();
        let req = bounded(req)?;
        Ok(Response::new(
            self.core
                .call(|reply| Command::GetBaselines { req, agent, reply })
                .await?,
        ))
    }
}

/// Reads an agent's session after its Register until the agent closes it,
/// handing each message that needs the core over ([`session_command`]), then
/// tells the core it disconnected.
///
/// Every connected agent holds one of these tasks for good, so its future is
/// kept small (`READ_SESSION_FUTURE_MAX`): what is large lives only
/// while it is used, in a boxed future (a message being read, a command and
/// the wait for room in the core, most of a KiB each).
#[allow(clippy::manual_async_fn)] // on purpose: see the async block below
fn read_session(
    core: CoreHandle,
    mut inbound: Streaming<pb::AgentMessage>,
    heard: crate::core::Heard,
    session: u64,
) -> impl Future<Output = ()> + Send {
    // An `async move` block, not an `async fn`: an async fn's future holds
    // its arguments twice (rust-lang/rust#62958).
    async move {
        loop {
            // `next` (a reference) rather than `message` (a future of 300
            // bytes); only the boxed send lives across the wait for room.
            let hand_over = match futures::StreamExt::next(&mut inbound).await {
                Some(Ok(msg)) => {
                    session_command(session, msg, &heard).map(|cmd| boxed_send(&core, cmd))
                }
                None => break,
                Some(Err(status)) => {
                    tracing::info!(session, %status, "agent session ended");
                    break;
                }
            };
            if let Some(send) = hand_over {
                // Awaiting room in the core slows this agent down (h2 flow
                // control) rather than queueing without end.
                send.await;
            }
        }
        boxed_send(&core, Command::Disconnected { session }).await;
    }
}

/// [`CoreHandle::send`] on the heap: the command and the wait for room are
/// not carried in the future of every idle session's reader.
fn boxed_send(core: &CoreHandle, cmd: Command) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
    Box::pin(core.send(cmd))
}

/// The most an idle session's reader future may hold (bytes): the stream
/// (tonic's `Streaming`, about 230) and a few handles. It was 3.5 KiB with
/// the message, the command and the send inline: 350 MiB at 100,000 agents.
#[cfg(test)]
const READ_SESSION_FUTURE_MAX: usize = 384;

/// What an agent's session message asks of the core, if anything: an idle
/// agent's heartbeat (no attempts listed, not lost) only renews its lease
/// through `heard`, read on the core's tick.
fn session_command(
    session: u64,
    msg: pb::AgentMessage,
    heard: &crate::core::Heard,
) -> Option<Command> {
    heard.note();
    match msg.msg {
        Some(agent_message::Msg::Heartbeat(hb)) => match hb.check() {
            Ok(()) if hb.running.is_empty() && !heard.core_wants_heartbeat() => None,
            Ok(()) => Some(Command::Heartbeat { session, hb }),
            Err(status) => {
                tracing::warn!(session, %status, "ignoring a heartbeat");
                None
            }
        },
        Some(agent_message::Msg::Update(update)) => Some(Command::Update { session, update }),
        Some(agent_message::Msg::HealthReport(report)) => match report.check() {
            Ok(()) => Some(Command::HealthReport { session, report }),
            Err(status) => {
                tracing::warn!(session, %status, "ignoring a health report");
                None
            }
        },
        Some(agent_message::Msg::Register(_)) | None => {
            tracing::warn!(session, "ignoring a repeated or empty agent message");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    /// The size of what `f` returns, without calling it.
    fn output_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_session_reader_holds_little() {
        let size = output_size(super::read_session);
        assert!(
            size <= super::READ_SESSION_FUTURE_MAX,
            "read_session's future is {size} bytes (at most {} wanted): box what it holds \
             across an await",
            super::READ_SESSION_FUTURE_MAX
        );
    }
}
