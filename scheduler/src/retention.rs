//! Retention: finished jobs older than `--retain` leave the store in the
//! background. The core picks them on its tick (`Core::retire_finished`,
//! bounded batches, never a live job nor a finished child of a live parent),
//! drops them from memory and its indexes at once, and hands their ids here;
//! this thread deletes each one's test history, events and record
//! (`Store::delete_job`), never on the core thread. A crash before it is done
//! leaves the job in the store: the next start loads it, and it is picked again.
//!
//! The same thread archives: a finished job [`ARCHIVE_AFTER_MS`] after its
//! end moves from its own keys into its chunk of 64 (`Store::archive_finished`),
//! so the store's key count, and with it sled's memory and open time, grows
//! by a few keys per 64 old jobs. Deletes and archiving on one thread never
//! rewrite a chunk at once.

use crate::clock::Clock;
use crate::store::Store;
use std::collections::HashSet;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long after its end a finished job is archived (the core's cache of
/// recent finished jobs is written to its own keys meanwhile).
pub const ARCHIVE_AFTER_MS: i64 = 60_000;
/// Jobs archived per pass at most (a few chunks).
const ARCHIVE_PASS: usize = 256;
/// After a full pass the thread rests this many times as long as the pass
/// took: archiving is background work and takes at most a quarter of a
/// core from the core thread and the flusher, however far behind it is.
const ARCHIVE_REST: u32 = 3;
/// How often the thread looks for jobs to archive when idle.
const ARCHIVE_EVERY: Duration = Duration::from_secs(1);

/// Keys deleted per sled batch.
const CHUNK: usize = 4096;

type InFlight = Arc<Mutex<HashSet<u64>>>;

fn lock(set: &InFlight) -> std::sync::MutexGuard<'_, HashSet<u64>> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

/// The background deleter: ids in, store records out.
pub struct Retirer {
    tx: Option<mpsc::Sender<Vec<u64>>>,
    /// Jobs handed over (or about to be) and not yet deleted.
    in_flight: InFlight,
    thread: Option<thread::JoinHandle<()>>,
}

impl Retirer {
    pub fn start(store: Store, clock: Arc<dyn Clock>) -> std::io::Result<Retirer> {
        let (tx, rx) = mpsc::channel::<Vec<u64>>();
        let in_flight: InFlight = Arc::default();
        let left = in_flight.clone();
        let thread = thread::Builder::new()
            .name("msched-retain".into())
            .spawn(move || {
                let mut wait = ARCHIVE_EVERY;
                loop {
                    match rx.recv_timeout(wait) {
                        Ok(ids) => {
                            match store.delete_jobs(&ids, CHUNK) {
                                Ok(keys) => tracing::debug!(jobs = ids.len(), keys, "retired"),
                                Err(e) => {
                                    tracing::error!(jobs = ids.len(), error = %e, "deleting retired jobs failed; the next start retries them")
                                }
                            }
                            let mut in_flight = lock(&left);
                            for id in &ids {
                                in_flight.remove(id);
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    let cutoff = clock.now_ms().saturating_sub(ARCHIVE_AFTER_MS);
                    let started = std::time::Instant::now();
                    wait = match store.archive_finished(cutoff, ARCHIVE_PASS) {
                        Ok(n) => {
                            if n > 0 {
                                crate::metrics::jobs_archived(n as u64);
                                tracing::debug!(jobs = n, "archived finished jobs");
                            }
                            if n >= ARCHIVE_PASS {
                                (started.elapsed() * ARCHIVE_REST).min(ARCHIVE_EVERY)
                            } else {
                                ARCHIVE_EVERY
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "archiving finished jobs failed; they stay in their own keys");
                            ARCHIVE_EVERY
                        }
                    };
                }
            })?;
        Ok(Retirer {
            tx: Some(tx),
            in_flight,
            thread: Some(thread),
        })
    }

    /// Jobs handed over (or about to be) and not yet deleted.
    pub fn queued(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Whether job `id` is on its way out.
    pub fn retiring(&self, id: u64) -> bool {
        lock(&self.in_flight).contains(&id)
    }

    /// Counts `ids` as handed over now; they are sent with the returned
    /// handle once the turn that dropped them from memory is durable.
    pub fn reserve(&self, ids: &[u64]) -> RetireTx {
        lock(&self.in_flight).extend(ids.iter().copied());
        RetireTx {
            tx: self.tx.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

/// Sends one reserved batch to the retirer's thread (from the flusher's).
pub struct RetireTx {
    tx: Option<mpsc::Sender<Vec<u64>>>,
    in_flight: InFlight,
}

impl RetireTx {
    pub fn send(self, ids: Vec<u64>) {
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(ids)) = tx.send(ids) {
                self.cancel(&ids);
            }
        }
    }

    /// The batch is not sent after all (the turn did not become durable).
    pub fn cancel(&self, ids: &[u64]) {
        let mut set = lock(&self.in_flight);
        for id in ids {
            set.remove(id);
        }
    }
}

impl Drop for Retirer {
    /// Finishes what was handed over, so the store is left whole and closed.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
