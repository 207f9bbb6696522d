//! The per-job durable event log: every state change, test result, case
//! result and log chunk is an event with a sequence number; watchers follow
//! [`Progress`], which moves only after the events it covers are durable.

use super::*;

/// How far a job's durable event log reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub durable_seq: u64,
    /// The job's final event is durable: nothing will follow `durable_seq`.
    pub done: bool,
}

/// What a watcher needs: the job and a channel that moves as events become durable.
pub struct WatchHandle {
    pub job: u64,
    pub progress: watch::Receiver<Progress>,
}

impl Core {
    pub(super) fn watch(&mut self, id: &str) -> Result<WatchHandle, Status> {
        let id = self.job_id(id)?;
        let e = &self.jobs[&id];
        let progress = match &e.progress {
            Some(p) => p.subscribe(),
            None => {
                watch::channel(Progress {
                    durable_seq: e.job.last_event_seq,
                    done: true,
                })
                .1
            }
        };
        Ok(WatchHandle { job: id, progress })
    }

    pub(super) fn push_event(
        &mut self,
        id: u64,
        attempt: u32,
        kind: job_event::Kind,
        step: &mut Step,
    ) {
        let Some(e) = self.jobs.get_mut(&id) else {
            return;
        };
        let done = matches!(&kind, job_event::Kind::State(s) if s.state().is_terminal());
        e.job.last_event_seq += 1;
        let seq = e.job.last_event_seq;
        step.writes.put_event(
            id,
            JobEvent {
                seq,
                time_ms: self.now,
                attempt,
                kind: Some(kind),
            },
        );
        step.touched.insert(id);
        let progress = if done {
            e.progress.take()
        } else {
            e.progress.clone()
        };
        if let Some(p) = progress {
            step.after.push(Box::new(move |ok| {
                if ok {
                    p.send_modify(|v| {
                        v.durable_seq = v.durable_seq.max(seq);
                        v.done |= done;
                    });
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use super::Progress;
    use msfleet_proto::Outcome;

    #[test]
    fn progress_follows_durable_events_and_ends_with_the_final_state() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "cpu", 1);
        let job = h.submit(spec()).unwrap();
        let id = job.id.clone();
        let w = h.call(|reply| Command::Watch { id, reply }).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        let seen = *w.progress.borrow();
        assert_eq!(seen.durable_seq, 2, "queued + assigned are durable");
        assert!(!seen.done);
        h.update(&mut a, &r, 1, started());
        h.update(&mut a, &r, 2, test_result("t.py::a", "passed"));
        h.update(&mut a, &r, 3, finished(Outcome::Passed));
        let end = *w.progress.borrow();
        assert_eq!(
            end,
            Progress {
                durable_seq: 5,
                done: true
            }
        );
        assert_eq!(h.events(&job.id).len(), 5);
        let seqs: Vec<u64> = h.events(&job.id).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        // Watching a finished job (also after a reload) starts done.
        h.reload();
        let id = job.id.clone();
        let w = h.call(|reply| Command::Watch { id, reply }).unwrap();
        assert_eq!(
            *w.progress.borrow(),
            Progress {
                durable_seq: 5,
                done: true
            }
        );
        let missing = h.call(|reply| Command::Watch {
            id: "999".into(),
            reply,
        });
        assert_eq!(missing.err().map(|e| e.code()), Some(tonic::Code::NotFound));
    }
}
