//! The stored baselines of this agent's profile, asked from the scheduler, and what a case's
//! verdict is judged against.

use super::cases::LoadedCase;
use super::verdict;
use crate::attempt::{Guard, Halt};
use msfleet_proto as pb;
use msfleet_proto::case::{self, Case};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the agent keeps asking the scheduler for baselines before it judges without them.
pub const BASELINE_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Baselines of this agent's profile for the attempt's cases.
#[derive(Debug, Clone, Default)]
pub struct Baselines {
    /// By (case name, input hash); one entry per metric.
    pub by_case: HashMap<(String, String), Vec<pb::Baseline>>,
    /// Set when the scheduler could not be asked: said in every explanation.
    pub unavailable: Option<String>,
}

impl Baselines {
    pub fn from_list(list: Vec<pb::Baseline>) -> Baselines {
        let mut by_case: HashMap<(String, String), Vec<pb::Baseline>> = HashMap::new();
        for b in list {
            let Some(k) = &b.key else { continue };
            by_case
                .entry((k.case.clone(), k.input_hash.clone()))
                .or_default()
                .push(b);
        }
        Baselines {
            by_case,
            unavailable: None,
        }
    }

    pub(super) fn find(&self, lc: &LoadedCase, metric: &str) -> Option<&pb::Baseline> {
        self.by_case
            .get(&(lc.case.name.clone(), lc.input_hash.clone()))?
            .iter()
            .find(|b| b.key.as_ref().is_some_and(|k| k.metric == metric))
    }
}

/// The verdict inputs of a case's primary metric: the case file's anchors, with the stored
/// anchor (accepted with `msctl baseline accept`) in place of `baseline_time_s`, the stored
/// history of accepted runs and the noise prior the scheduler pooled (absent: the history's
/// own spread alone).
pub fn baseline_for(c: &Case, stored: Option<&pb::Baseline>) -> verdict::Baseline {
    let anchor = |a: &case::Anchor| verdict::Anchor {
        value: a.time_s,
        tolerance: a.tolerance,
    };
    let stored_anchor = stored
        .and_then(|b| b.anchor)
        .filter(|v| v.is_finite() && *v > 0.0)
        .map(|value| verdict::Anchor {
            value,
            tolerance: c.baseline_tolerance,
        });
    let history = stored.map_or(&[][..], |b| {
        &b.history[b.history.len().saturating_sub(verdict::DEFAULT_K_WINDOW)..]
    });
    // The prior the scheduler pooled over the profile's cases of this metric.
    let prior = stored
        .and_then(|b| b.noise.as_ref())
        .filter(|n| n.prior_df > 0.0 && n.pooled_sd_log.is_finite() && n.pooled_sd_log > 0.0)
        .filter(|n| n.prior_df.is_finite())
        .map(|n| verdict::NoisePrior {
            var: n.pooled_sd_log.powi(2),
            df: n.prior_df,
            cases: n.cases_pooled as usize,
        });
    verdict::Baseline {
        initial: c.initial.as_ref().map(anchor),
        baseline: stored_anchor.or_else(|| c.baseline.as_ref().map(anchor)),
        history: history.iter().map(|r| r.median).collect(),
        history_ids: history.iter().map(|r| r.job_id.clone()).collect(),
        prior,
    }
}

/// Why one GetBaselines call failed.
/// Where the scheduler is and the agent's credential.
pub type Link = (pb::client::Target, pb::client::Bearer);

enum FetchError {
    /// Worth another try (scheduler down or restarting).
    Transient(String),
    Final(String),
}

async fn get_baselines_once(
    link: &Link,
    req: pb::GetBaselinesRequest,
) -> Result<pb::GetBaselinesResponse, FetchError> {
    let (target, bearer) = link;
    let endpoint = target
        .endpoint()
        .map_err(|e| FetchError::Final(e.to_string()))?;
    let channel =
        endpoint
            .connect()
            .await
            .map_err(|e| match target.explain(&pb::client::chain(&e)) {
                pb::client::ConnectError::Config(m) => FetchError::Final(m),
                pb::client::ConnectError::Unreachable(m) => FetchError::Transient(m),
            })?;
    let mut client =
        pb::agent_link_client::AgentLinkClient::with_interceptor(channel, bearer.clone())
            .max_decoding_message_size(pb::MAX_MESSAGE)
            .max_encoding_message_size(pb::MAX_MESSAGE);
    let mut request = tonic::Request::new(req);
    request.set_timeout(Duration::from_secs(10));
    match client.get_baselines(request).await {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => {
            use tonic::Code;
            let msg = format!("GetBaselines: {}: {}", s.code(), s.message());
            Err(match s.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Cancelled => FetchError::Transient(msg),
                _ => FetchError::Final(msg),
            })
        }
    }
}

/// Asks the scheduler at `addr` for the baselines of `req`'s cases, retrying transient failures
/// for up to `budget`. `Ok(Err(why))` when it gave up; `Err` when the attempt was stopped.
pub async fn fetch_baselines(
    link: &Link,
    req: pb::GetBaselinesRequest,
    budget: Duration,
    guard: &mut Guard<'_>,
) -> Result<Result<pb::GetBaselinesResponse, String>, Halt> {
    let give_up = Instant::now() + budget;
    let mut pause = Duration::from_millis(500);
    loop {
        let outcome = tokio::select! {
            r = get_baselines_once(link, req.clone()) => r,
            h = guard.wait() => return Err(h),
        };
        match outcome {
            Ok(resp) => return Ok(Ok(resp)),
            Err(FetchError::Final(why)) => return Ok(Err(why)),
            Err(FetchError::Transient(why)) => {
                if Instant::now() + pause > give_up {
                    return Ok(Err(why));
                }
                tracing::warn!(%why, retry_in = ?pause, "baselines unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    h = guard.wait() => return Err(h),
                }
                pause = (pause * 2).min(Duration::from_secs(8));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn link(addr: &str) -> Link {
        (
            pb::client::Target {
                addr: addr.to_string(),
                ..Default::default()
            },
            pb::client::Bearer::new(None).unwrap(),
        )
    }
    use msfleet_proto::bench::TOTAL_TIME;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;

    // ------------------------------------------------------------ GetBaselines

    struct Stub;

    #[tonic::async_trait]
    impl pb::agent_link_server::AgentLink for Stub {
        type SessionStream =
            tokio_stream::wrappers::ReceiverStream<Result<pb::SchedulerMessage, tonic::Status>>;

        async fn session(
            &self,
            _: tonic::Request<tonic::Streaming<pb::AgentMessage>>,
        ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("stub"))
        }

        async fn get_baselines(
            &self,
            req: tonic::Request<pb::GetBaselinesRequest>,
        ) -> Result<tonic::Response<pb::GetBaselinesResponse>, tonic::Status> {
            let req = req.into_inner();
            if req.attempt.map(|a| a.epoch) != Some(7) {
                return Err(tonic::Status::failed_precondition("stale epoch"));
            }
            let baselines = req
                .keys
                .into_iter()
                .map(|k| pb::Baseline {
                    key: Some(pb::BaselineKey {
                        metric: TOTAL_TIME.into(),
                        profile: "h100".into(),
                        ..k
                    }),
                    anchor: Some(0.5),
                    ..Default::default()
                })
                .collect();
            Ok(tonic::Response::new(pb::GetBaselinesResponse {
                profile: "h100".into(),
                baselines,
            }))
        }
    }

    fn request(epoch: u64) -> pb::GetBaselinesRequest {
        pb::GetBaselinesRequest {
            attempt: Some(pb::AttemptRef {
                task_id: "t".into(),
                attempt: 1,
                epoch,
            }),
            keys: vec![pb::BaselineKey {
                case: "c".into(),
                input_hash: "h".into(),
                ..Default::default()
            }],
        }
    }

    /// Serves [`Stub`] on an ephemeral port: its address and the server task.
    pub(crate) async fn stub_scheduler() -> (String, JoinHandle<Result<(), tonic::transport::Error>>)
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::agent_link_server::AgentLinkServer::new(Stub))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, server)
    }

    #[tokio::test]
    async fn baselines_come_from_the_scheduler_or_fall_back() {
        let (addr, server) = stub_scheduler().await;
        let (_stop_tx, mut stop) = watch::channel(None);
        let mut guard = Guard::new(
            tokio::time::Instant::now() + Duration::from_secs(60),
            &mut stop,
        );
        let resp = fetch_baselines(&link(&addr), request(7), Duration::from_secs(5), &mut guard)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.profile, "h100");
        let b = Baselines::from_list(resp.baselines);
        assert_eq!(
            b.by_case[&("c".to_string(), "h".to_string())][0].anchor,
            Some(0.5)
        );
        // A refusal is not retried.
        let t0 = Instant::now();
        let why = fetch_baselines(
            &link(&addr),
            request(1),
            Duration::from_secs(30),
            &mut guard,
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(why.contains("stale epoch"), "{why}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        server.abort();
        let _ = server.await;

        // Nobody listening: retried until the budget is spent, then given up.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let t0 = Instant::now();
        let why = fetch_baselines(
            &link(&closed),
            request(7),
            Duration::from_secs(1),
            &mut guard,
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(why.starts_with("connecting to"), "{why}");
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stored_anchor_keeps_the_case_tolerance_and_the_history_window() {
        let c = Case::parse(
            "c",
            r#"{"user_input": {}, "initial_time_s": 1, "baseline_time_s": 2, "baseline_tolerance": 0.3}"#,
        )
        .unwrap();
        let stored = pb::Baseline {
            anchor: Some(1.5),
            history: (0..40)
                .map(|i| pb::BaselineRun {
                    job_id: i.to_string(),
                    median: 1.0,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let b = baseline_for(&c, Some(&stored));
        assert_eq!(
            b.baseline,
            Some(verdict::Anchor {
                value: 1.5,
                tolerance: 0.3
            })
        );
        assert_eq!(b.initial.map(|a| a.value), Some(1.0));
        assert_eq!(b.history.len(), 30);
        assert_eq!(b.history_ids.first().map(String::as_str), Some("10"));
        let plain = baseline_for(&c, None);
        assert_eq!(plain.baseline.map(|a| a.value), Some(2.0));
        assert!(plain.history.is_empty());
    }
}
