//! Retention: finished jobs older than `--retain` leave the store in the
//! background. The core picks them on its tick (`Core::retire_finished`,
//! bounded batches, never a live job nor a finished child of a live parent),
//! drops them from memory and its indexes at once, and hands their ids here;
//! this thread deletes each one's test history, events and record
//! (`Store::delete_job`), never on the core thread. A crash before it is done
//! leaves the job in the store: the next start loads it, and it is picked again.

use crate::store::Store;
use std::collections::HashSet;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

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
    pub fn start(store: Store) -> std::io::Result<Retirer> {
        let (tx, rx) = mpsc::channel::<Vec<u64>>();
        let in_flight: InFlight = Arc::default();
        let left = in_flight.clone();
        let thread = thread::Builder::new()
            .name("msched-retain".into())
            .spawn(move || {
                while let Ok(ids) = rx.recv() {
                    for id in ids {
                        match store.delete_job(id, CHUNK) {
                            Ok(keys) => tracing::debug!(job = id, keys, "retired"),
                            Err(e) => {
                                tracing::error!(job = id, error = %e, "deleting a retired job failed; the next start retries it")
                            }
                        }
                        lock(&left).remove(&id);
                    }
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
