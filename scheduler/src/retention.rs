//! Retention: finished jobs older than `--retain` leave the store in the
//! background. The core picks them on its tick (`Core::retire_finished`,
//! bounded batches, never a live job nor a finished child of a live parent),
//! drops them from memory and its indexes at once, and hands their ids here;
//! this thread deletes each one's test history, events and record
//! (`Store::delete_job`), never on the core thread. A crash before it is done
//! leaves the job in the store: the next start loads it, and it is picked again.

use crate::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

/// Keys deleted per sled batch.
const CHUNK: usize = 4096;

/// The background deleter: ids in, store records out.
pub struct Retirer {
    tx: Option<mpsc::Sender<Vec<u64>>>,
    /// Jobs handed over and not yet deleted.
    queued: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Retirer {
    pub fn start(store: Store) -> std::io::Result<Retirer> {
        let (tx, rx) = mpsc::channel::<Vec<u64>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let left = queued.clone();
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
                        left.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            })?;
        Ok(Retirer {
            tx: Some(tx),
            queued,
            thread: Some(thread),
        })
    }

    /// Jobs handed over (or about to be) and not yet deleted.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Counts `n` jobs as handed over now; they are sent with the returned
    /// handle once the turn that dropped them from memory is durable.
    pub fn reserve(&self, n: usize) -> RetireTx {
        self.queued.fetch_add(n, Ordering::AcqRel);
        RetireTx {
            tx: self.tx.clone(),
            queued: self.queued.clone(),
        }
    }
}

/// Sends one reserved batch to the retirer's thread (from the flusher's).
pub struct RetireTx {
    tx: Option<mpsc::Sender<Vec<u64>>>,
    queued: Arc<AtomicUsize>,
}

impl RetireTx {
    pub fn send(self, ids: Vec<u64>) {
        let n = ids.len();
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(ids).is_ok());
        if !sent {
            self.cancel(n);
        }
    }

    /// The batch is not sent after all (the turn did not become durable).
    pub fn cancel(self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
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
