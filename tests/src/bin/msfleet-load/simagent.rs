//! A cheap simulated agent for the fleet-scale scenarios (`scale`, `restart`):
//! like msagent it opens its own HTTP/2 connection (`agent_link`: the real
//! agent's keepalive settings), registers with what it runs, heartbeats at the
//! interval the scheduler gave, holds an assignment as running (it never
//! finishes), and after a lost session reconnects with the real agent's
//! jittered backoff (`msfleet_proto::backoff`).
//!
//! Connections leave from several loopback source addresses (127.0.0.1,
//! 127.0.0.2, ...), so a fleet gets past the ~28,000 ephemeral ports of one
//! (source, destination) pair. `per_connection > 1` multiplexes that many
//! agents over one HTTP/2 connection instead (for fleets larger than the
//! open-files limit allows): the scenario prints which it did.

use anyhow::Result;
use msfleet_proto as pb;
use msfleet_proto::agent_link_client::AgentLinkClient;
use msfleet_proto::backoff::{reconnect_delay, Jitter};
use msfleet_proto::client::Bearer;
use msfleet_proto::{agent_message, scheduler_message};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Width of one bucket of the connection-rate record.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Buckets kept (2 minutes); later connections count in the last one.
const BUCKETS: usize = 1200;

/// What the simulated fleet did, counted without locks.
pub struct FleetStats {
    pub t0: Instant,
    /// Connection attempts (a new TCP connection, or a new session on a
    /// shared one) per [`BUCKET`] since `t0`.
    connects: Vec<AtomicU64>,
    /// Per agent: when (ns since `t0`, 0 never) it last got `Registered`.
    pub registered_ns: Vec<AtomicU64>,
    /// Per agent: when its last registration resumed every attempt it held
    /// (0 never; only agents holding attempts set it).
    pub resumed_ns: Vec<AtomicU64>,
    /// Attempts the agents hold now.
    pub running: AtomicU64,
    /// Attempts the scheduler told an agent to abandon (Reject with abandon).
    pub abandoned: AtomicU64,
    /// Sessions that ended (any reason) while the scenario wanted them up.
    pub sessions_ended: AtomicU64,
}

impl FleetStats {
    pub fn new(agents: usize) -> Arc<FleetStats> {
        Arc::new(FleetStats {
            t0: Instant::now(),
            connects: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            registered_ns: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            resumed_ns: (0..agents).map(|_| AtomicU64::new(0)).collect(),
            running: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            sessions_ended: AtomicU64::new(0),
        })
    }

    pub fn since_t0_ns(&self) -> u64 {
        (self.t0.elapsed().as_nanos() as u64).max(1)
    }

    fn connected(&self) {
        let i = ((self.t0.elapsed().as_millis() / BUCKET.as_millis()) as usize).min(BUCKETS - 1);
        self.connects[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Agents whose last registration came after `ns`.
    pub fn registered_after(&self, ns: u64) -> usize {
        self.registered_ns
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) > ns)
            .count()
    }

    /// Agents whose attempts were all resumed by a registration after `ns`.
    pub fn resumed_after(&self, ns: u64) -> usize {
        self.resumed_ns
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) > ns)
            .count()
    }

    /// (connection attempts, the most in any one second) from `from` on.
    pub fn connects_since(&self, from: Duration) -> (u64, u64) {
        let first = (from.as_millis() / BUCKET.as_millis()) as usize;
        let counts: Vec<u64> = self.connects[first.min(BUCKETS)..]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let per_s = (Duration::from_secs(1).as_millis() / BUCKET.as_millis()) as usize;
        let peak = counts
            .windows(per_s.min(counts.len()).max(1))
            .map(|w| w.iter().sum::<u64>())
            .max()
            .unwrap_or(0);
        (counts.iter().sum(), peak)
    }
}

/// Where a simulated agent's connections go and come from.
#[derive(Clone)]
pub struct Link {
    pub addr: String,
    /// Loopback source addresses to spread connections over (127.0.0.1..=N).
    pub sources: u8,
    /// TLS (then `addr` is `https://`), or plain text.
    pub tls: Option<ClientTlsConfig>,
}

impl Link {
    /// The agent endpoint (msagent's HTTP/2 settings) from source number `i`.
    fn endpoint(&self, i: usize) -> Result<Endpoint> {
        let last = (i % usize::from(self.sources.max(1))) as u8 + 1;
        Ok(msfleet_proto::client::agent_link(
            self.admin_endpoint()?
                .local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))),
        ))
    }

    /// The scheduler's address, over TLS where the fleet uses it.
    fn admin_endpoint(&self) -> Result<Endpoint> {
        let endpoint =
            Endpoint::from_shared(self.addr.clone())?.connect_timeout(Duration::from_secs(5));
        Ok(match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        })
    }

    /// A channel for agent `i`'s next session: its own new connection, or
    /// (multiplexed) its group's shared channel, which reconnects by itself.
    async fn channel(&self, i: usize, shared: Option<&Channel>) -> Result<Channel> {
        match shared {
            Some(ch) => Ok(ch.clone()),
            None => Ok(self.endpoint(i)?.connect().await?),
        }
    }

    /// One lazily connected channel shared by a group of agents.
    pub fn shared(&self, group: usize) -> Result<Channel> {
        Ok(self.endpoint(group)?.connect_lazy())
    }
}

/// One simulated agent, `index` in the fleet's stats.
pub struct SimAgent {
    pub index: usize,
    pub name: String,
    pub secret: String,
    pub link: Link,
    pub shared: Option<Channel>,
    pub stats: Arc<FleetStats>,
}

enum Ended {
    /// The session ended after registering (the backoff starts over).
    Registered,
    Failed,
    Stopped,
}

impl SimAgent {
    /// Runs until `stop` turns true: sessions, reconnecting as msagent does.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut jitter = Jitter::seeded(self.index as u64 ^ crate::now_ns());
        let instance = format!("{}-{}", self.name, crate::now_ns());
        let mut held: Vec<pb::AttemptRef> = Vec::new();
        let mut failures = 0u32;
        loop {
            let ended = self
                .session(&instance, &mut held, &mut jitter, &mut stop)
                .await;
            match ended {
                Ended::Stopped => return,
                Ended::Registered => failures = 0,
                Ended::Failed => {}
            }
            if *stop.borrow() {
                return;
            }
            self.stats.sessions_ended.fetch_add(1, Ordering::Relaxed);
            let wait = reconnect_delay(failures, jitter.draw());
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn session(
        &self,
        instance: &str,
        held: &mut Vec<pb::AttemptRef>,
        jitter: &mut Jitter,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        self.stats.connected();
        let Ok(ch) = self.link.channel(self.index, self.shared.as_ref()).await else {
            return Ended::Failed;
        };
        let Ok(bearer) = Bearer::new(Some(&self.secret)) else {
            return Ended::Stopped;
        };
        let mut client = AgentLinkClient::with_interceptor(ch, bearer)
            .max_decoding_message_size(msfleet_proto::MAX_MESSAGE)
            .max_encoding_message_size(msfleet_proto::MAX_MESSAGE);
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(8);
        let register = crate::register(&self.name, instance, held.clone());
        if tx.send(register).await.is_err() {
            return Ended::Failed;
        }
        let opened = tokio::select! {
            opened = client.session(ReceiverStream::new(rx)) => opened,
            _ = stop.changed() => return Ended::Stopped,
        };
        let Ok(inbound) = opened else {
            return Ended::Failed;
        };
        let mut inbound = inbound.into_inner();
        let mut registered = false;
        // The first heartbeat at a random phase, so a fleet's spread over the interval.
        let mut every = Duration::from_secs(5);
        let mut next_beat = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                _ = stop.changed() => return Ended::Stopped,
                () = tokio::time::sleep_until(next_beat), if registered => {
                    next_beat += every;
                    let hb = pb::Heartbeat { running: held.clone() };
                    if tx.send(pb::AgentMessage { msg: Some(agent_message::Msg::Heartbeat(hb)) }).await.is_err() {
                        break;
                    }
                }
                msg = inbound.message() => {
                    let Ok(Some(msg)) = msg else { break };
                    match msg.msg {
                        Some(scheduler_message::Msg::Registered(r)) => {
                            registered = true;
                            every = Duration::from_millis(r.heartbeat_interval_ms.max(100));
                            let phase = jitter.draw() % (every.as_millis() as u64).max(1);
                            next_beat = tokio::time::Instant::now() + Duration::from_millis(phase);
                            let now = self.stats.since_t0_ns();
                            self.stats.registered_ns[self.index].store(now, Ordering::Relaxed);
                            if !held.is_empty() && held.iter().all(|h| r.resumed.contains(h)) {
                                self.stats.resumed_ns[self.index].store(now, Ordering::Relaxed);
                            }
                        }
                        Some(scheduler_message::Msg::Assign(a)) => {
                            let Some(r) = a.attempt else { continue };
                            let started = pb::TaskUpdate {
                                attempt: Some(r.clone()),
                                seq: 1,
                                kind: Some(pb::task_update::Kind::Started(pb::Started {})),
                            };
                            held.push(r);
                            self.stats.running.fetch_add(1, Ordering::Relaxed);
                            if tx.send(pb::AgentMessage { msg: Some(agent_message::Msg::Update(started)) }).await.is_err() {
                                break;
                            }
                        }
                        Some(scheduler_message::Msg::Reject(r)) if r.abandon => {
                            if let Some(a) = &r.attempt {
                                let before = held.len();
                                held.retain(|h| h != a);
                                if held.len() < before {
                                    self.stats.running.fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                            eprintln!("{}: told to abandon an attempt: {}", self.name, r.message);
                        }
                        _ => {}
                    }
                }
            }
        }
        if registered {
            Ended::Registered
        } else {
            Ended::Failed
        }
    }
}

/// Makes `n` agent tokens `{prefix}-NNNNNN` (64 requests in flight) and
/// starts the agents; `per_connection` agents share one HTTP/2 connection;
/// with `tls` every connection (the admin's too) is TLS.
#[allow(clippy::too_many_arguments)]
pub async fn start_fleet(
    sched: &crate::Sched,
    n: usize,
    prefix: &str,
    sources: u8,
    per_connection: usize,
    tls: Option<ClientTlsConfig>,
    stats: Arc<FleetStats>,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    use futures::StreamExt;
    let link = Link {
        addr: match tls {
            Some(_) => crate::tls::https(&sched.addr),
            None => sched.addr.clone(),
        },
        sources,
        tls,
    };
    let admin = crate::fleet_client(link.admin_endpoint()?.connect().await?, &sched.admin)?;
    let secrets: Vec<Result<(usize, String, String)>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut admin = admin.clone();
            let name = format!("{prefix}-{i:06}");
            async move {
                let secret = crate::agent_secret(&mut admin, name.clone()).await?;
                Ok((i, name, secret))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let per = per_connection.max(1);
    let groups: Vec<Option<Channel>> = if per > 1 {
        (0..n.div_ceil(per))
            .map(|g| link.shared(g).map(Some))
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    for s in secrets {
        let (index, name, secret) = s?;
        let agent = SimAgent {
            index,
            name,
            secret,
            link: link.clone(),
            shared: groups.get(index / per).cloned().flatten(),
            stats: stats.clone(),
        };
        tokio::spawn(agent.run(stop.clone()));
    }
    Ok(())
}
