//! Following a job's event stream, resuming from the last seen event when the
//! connection drops (e.g. while the scheduler restarts).

use crate::Client;
use crate::CtlError;
use msfleet_proto::{JobEvent, WatchJobRequest};
use std::time::{Duration, Instant};
use tonic::Code;

/// How long a follower keeps trying to reconnect before giving up.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Calls `on_event` for every event after `after_seq` until the job's last
/// event (or until `on_event` returns false). Returns the last seq seen.
pub async fn follow(
    client: &mut Client,
    job: &str,
    after_seq: u64,
    mut on_event: impl FnMut(&JobEvent) -> bool,
) -> Result<u64, CtlError> {
    let mut cursor = after_seq;
    let mut down_since: Option<Instant> = None;
    loop {
        let req = WatchJobRequest {
            id: job.to_string(),
            after_seq: cursor,
        };
        let result: Result<(), tonic::Status> = match client.watch_job(req).await {
            Ok(resp) => {
                down_since = None;
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(ev)) => {
                            if ev.seq <= cursor {
                                continue;
                            }
                            cursor = ev.seq;
                            if !on_event(&ev) {
                                return Ok(cursor);
                            }
                        }
                        Ok(None) => return Ok(cursor),
                        Err(s) => break Err(s),
                    }
                }
            }
            Err(s) => Err(s),
        };
        let Err(status) = result else { continue };
        let transient = matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        );
        if !transient {
            return Err(status.into());
        }
        let since = *down_since.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            return Err(CtlError::infra(format!(
                "lost the scheduler for {}s while following job {job}: {}",
                RECONNECT_FOR.as_secs(),
                status.message()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
