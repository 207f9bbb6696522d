//! Durable cron schedules. **Invariant: a slot fires at most once, ever**: the
//! consumed slot is written in the same atomic batch as the job it made
//! ([`Core::fire_schedules`]). The time logic itself is [`crate::schedule`].

use super::*;

impl Core {
    pub(super) fn schedule_named(&self, name: &str) -> Result<String, Status> {
        self.schedules
            .contains_key(name)
            .then(|| name.to_string())
            .ok_or_else(|| Status::not_found(format!("no schedule named '{}'", crate::clip(name))))
    }

    pub(super) fn add_schedule(
        &mut self,
        mut rec: pb::Schedule,
        by: &str,
        step: &mut Step,
    ) -> Result<pb::Schedule, Status> {
        let name = rec.name.trim().to_string();
        check_name("schedule", &name)?;
        if self.schedules.contains_key(&name) {
            return Err(Status::already_exists(format!(
                "a schedule named '{name}' exists; delete it first or pick another name"
            )));
        }
        if rec.tz.trim().is_empty() {
            rec.tz = schedule::DEFAULT_TZ.to_string();
        }
        let cron = CronSpec::parse(&rec.cron, &rec.tz)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let misfire: Misfire = match rec.misfire.as_str() {
            "" => Misfire::FireOnce,
            m => m
                .parse()
                .map_err(|e: schedule::ScheduleError| Status::invalid_argument(e.to_string()))?,
        };
        let overlap: Overlap = match rec.overlap.as_str() {
            "" => Overlap::Skip,
            o => o
                .parse()
                .map_err(|e: schedule::ScheduleError| Status::invalid_argument(e.to_string()))?,
        };
        let mut spec = rec
            .spec
            .clone()
            .ok_or_else(|| Status::invalid_argument("a schedule needs a job spec (-f job.toml)"))?;
        jobspec::validate(&mut spec, &self.cfg)?;
        let stored = pb::Schedule {
            name: name.clone(),
            cron: rec.cron.trim().to_string(),
            tz: cron.tz().to_string(),
            spec: rec.spec,
            misfire: misfire.to_string(),
            overlap: overlap.to_string(),
            paused: rec.paused,
            created_ms: self.now,
            created_by: by.to_string(),
            paused_by: if rec.paused {
                by.to_string()
            } else {
                String::new()
            },
            paused_ms: if rec.paused { self.now } else { 0 },
            ..Default::default()
        };
        step.writes.put_schedule(&stored);
        tracing::info!(schedule = %name, cron = %stored.cron, tz = %stored.tz, "schedule added");
        self.schedules.insert(name.clone(), (stored, cron));
        Ok(self.schedule_view(&name))
    }

    pub(super) fn list_schedules(&self) -> Vec<pb::Schedule> {
        self.schedules
            .keys()
            .map(|n| self.schedule_view(n))
            .collect()
    }

    /// Pauses or resumes a schedule; a paused schedule consumes no slots.
    pub(super) fn set_schedule_paused(
        &mut self,
        name: &str,
        paused: bool,
        by: &str,
        step: &mut Step,
    ) -> Result<pb::Schedule, Status> {
        let name = self.schedule_named(name)?;
        if let Some((rec, _)) = self.schedules.get_mut(&name) {
            rec.paused = paused;
            rec.paused_by = by.to_string();
            rec.paused_ms = self.now;
            step.writes.put_schedule(rec);
        }
        Ok(self.schedule_view(&name))
    }

    /// Deletes a schedule; the jobs it made stay.
    pub(super) fn delete_schedule(
        &mut self,
        name: &str,
        step: &mut Step,
    ) -> Result<pb::Schedule, Status> {
        let name = self.schedule_named(name)?;
        let view = self.schedule_view(&name);
        self.schedules.remove(&name);
        step.writes.remove_schedule(&name);
        Ok(view)
    }

    pub(super) fn schedule_view(&self, name: &str) -> pb::Schedule {
        let Some((rec, cron)) = self.schedules.get(name) else {
            return pb::Schedule::default();
        };
        let mut v = rec.clone();
        v.spec = v.spec.as_ref().map(msfleet_proto::secrets::redacted);
        let from = rec.last_slot_ms.unwrap_or(i64::MIN).max(self.now);
        if let Some(next) = cron.next_after(from) {
            v.next_ms = next;
            v.next_local = cron.format_local(next);
        }
        if let Some(job) = rec
            .last_job_id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.job_record(id))
        {
            v.last_state = job.state().label().to_string();
        }
        v
    }

    pub(super) fn run_schedule_now(
        &mut self,
        name: &str,
        by: &str,
        step: &mut Step,
    ) -> Result<Job, Status> {
        let name = self.schedule_named(name)?;
        let (rec, cron) = &self.schedules[&name];
        let mut spec = rec.spec.clone().unwrap_or_default();
        if spec.expire_after_ms.is_none() {
            spec.expire_after_ms = period_ms(cron, self.now);
        }
        let job = self.submit(spec, Some((name.clone(), 0)), by, None, step)?;
        if let Some((rec, _)) = self.schedules.get_mut(&name) {
            rec.last_job_id = job.id.clone();
            rec.last_state.clear();
            step.writes.put_schedule(rec);
        }
        Ok(job)
    }

    /// Fires every schedule whose slot is due. The consumed slot is written in
    /// the same atomic batch as the job it made, so a slot fires at most once
    /// even across crashes.
    pub(super) fn fire_schedules(&mut self, step: &mut Step) {
        let names: Vec<String> = self
            .schedules
            .iter()
            .filter(|(_, (rec, _))| !rec.paused)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some((rec, cron)) = self.schedules.get(&name) else {
                continue;
            };
            let misfire = rec.misfire.parse().unwrap_or(Misfire::FireOnce);
            let decision = schedule::due(cron, rec.created_ms, rec.last_slot_ms, self.now, misfire);
            let (slot, fire) = match decision {
                Due::Nothing { .. } => continue,
                Due::Fire { slot, missed } => {
                    if missed > 0 {
                        tracing::warn!(schedule = %name, missed, "scheduler was down across slots; firing the latest once");
                    }
                    (slot, true)
                }
                Due::SkipTo { slot, missed } => {
                    tracing::warn!(schedule = %name, missed, "misfire policy skip: not firing missed slots");
                    (slot, false)
                }
            };
            let previous_running = rec
                .last_job_id
                .parse::<u64>()
                .ok()
                .and_then(|id| self.jobs.get(&id))
                .is_some_and(|e| !e.job.state().is_terminal());
            let overlap = rec.overlap.parse().unwrap_or(Overlap::Skip);
            let mut spec = rec.spec.clone().unwrap_or_default();
            if spec.expire_after_ms.is_none() {
                // A run not started by the next slot gives way to it.
                spec.expire_after_ms = period_ms(cron, slot);
            }
            let mut outcome = String::new();
            let mut job_id = None;
            let mut fired = "missed";
            if fire {
                match overlap.decide(previous_running) {
                    OverlapAction::Skip => {
                        fired = "skipped";
                        outcome = "skipped: the previous run is still going".into();
                        tracing::info!(schedule = %name, slot, "{outcome}");
                    }
                    OverlapAction::Start | OverlapAction::Queue => {
                        let by = format!("schedule:{name}");
                        match self.submit(spec, Some((name.clone(), slot)), &by, None, step) {
                            Ok(job) => {
                                fired = "fired";
                                job_id = Some(job.id)
                            }
                            Err(status) => {
                                fired = "refused";
                                outcome = format!("refused: {}", status.message());
                                tracing::error!(schedule = %name, slot, "{outcome}");
                            }
                        }
                    }
                }
            }
            step.observe(Observation::ScheduleFire {
                schedule: name.clone(),
                outcome: fired,
            });
            if let Some((rec, _)) = self.schedules.get_mut(&name) {
                rec.last_slot_ms = Some(slot);
                if let Some(id) = job_id {
                    rec.last_job_id = id;
                    rec.last_state.clear();
                } else if !outcome.is_empty() {
                    rec.last_state = outcome;
                }
                step.writes.put_schedule(rec);
            }
        }
    }
}

/// A scheduled run's default expiry: from `at` to the schedule's next slot
/// (within the expiry limits).
fn period_ms(cron: &CronSpec, at: i64) -> Option<i64> {
    let next = cron.next_after(at)?;
    Some((next - at).clamp(1, limits::MAX_EXPIRE_AFTER_MS))
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use msfleet_proto as pb;

    const MIN: i64 = 60_000;

    fn add(h: &mut Harness, name: &str, cron: &str) -> Result<pb::Schedule, tonic::Status> {
        let schedule = Box::new(pb::Schedule {
            name: name.into(),
            cron: cron.into(),
            tz: "UTC".into(),
            spec: Some(spec()),
            overlap: "queue".into(),
            ..Default::default()
        });
        h.call(|reply| Command::AddSchedule {
            schedule,
            by: "ops".into(),
            reply,
        })
    }

    fn fired(h: &mut Harness, name: &str) -> Vec<i64> {
        h.jobs()
            .into_iter()
            .filter(|j| j.schedule == name)
            .map(|j| j.slot_ms)
            .collect()
    }

    #[test]
    fn a_slot_fires_once_and_never_again_across_a_reload() {
        let mut h = Harness::new();
        // T0 is 15:06:40 UTC: the next slots are 15:10 and 15:15.
        let added = add(&mut h, "nightly", "*/5 * * * *").unwrap();
        let slot = added.next_ms;
        assert_eq!(slot, T0 + 3 * MIN + 20_000);
        h.tick();
        assert!(fired(&mut h, "nightly").is_empty(), "nothing is due yet");
        h.set_now(slot);
        h.tick();
        h.tick();
        assert_eq!(fired(&mut h, "nightly"), vec![slot], "fired once");
        h.reload();
        h.tick();
        assert_eq!(
            fired(&mut h, "nightly"),
            vec![slot],
            "not again after a reload"
        );
        h.set_now(slot + 5 * MIN);
        h.tick();
        assert_eq!(fired(&mut h, "nightly"), vec![slot + 5 * MIN, slot]);
    }

    #[test]
    fn downtime_across_slots_fires_only_the_latest_one() {
        let mut h = Harness::new();
        let slot = add(&mut h, "s", "*/5 * * * *").unwrap().next_ms;
        h.reload();
        h.set_now(slot + 3 * 5 * MIN + 1);
        h.tick();
        assert_eq!(fired(&mut h, "s"), vec![slot + 15 * MIN]);
    }

    #[test]
    fn a_paused_schedule_consumes_no_slot_and_a_deleted_one_is_gone() {
        let mut h = Harness::new();
        let slot = add(&mut h, "s", "*/5 * * * *").unwrap().next_ms;
        let paused = h
            .call(|reply| Command::SetSchedulePaused {
                name: "s".into(),
                paused: true,
                by: "ops".into(),
                reply,
            })
            .unwrap();
        assert!(paused.paused);
        h.set_now(slot);
        h.tick();
        assert!(fired(&mut h, "s").is_empty());
        let e = add(&mut h, "s", "*/5 * * * *").unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        h.call(|reply| Command::DeleteSchedule {
            name: "s".into(),
            reply,
        })
        .unwrap();
        h.reload();
        let listed = h.call(|reply| Command::ListSchedules { reply }).unwrap();
        assert!(listed.is_empty());
    }

    #[test]
    fn a_bad_cron_is_refused_naming_the_field() {
        let mut h = Harness::new();
        let e = add(&mut h, "s", "61 * * * *").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("minute"), "{}", e.message());
        let listed = h.call(|reply| Command::ListSchedules { reply }).unwrap();
        assert!(listed.is_empty());
    }

    #[test]
    fn a_scheduled_run_expires_at_the_next_slot_so_a_stuck_fan_out_lets_it_fire() {
        use msfleet_proto::{AgentAdmin, JobState, Outcome};
        // The clock jumps from slot to slot without heartbeats: a lease long
        // enough that the agents are not lost meanwhile.
        let mut h = Harness::with(|c| c.lease_timeout = std::time::Duration::from_secs(3600));
        let mut a = h.register("a1", "p", 1);
        let mut b = h.register("a2", "p", 1);
        // a2's one slot is busy, so its child of the fan-out waits; then a2 is drained.
        h.fill_slot(&mut b, "agent.name == \"a2\"");
        let mut fan = spec();
        fan.fanout = "each-agent".into();
        let schedule = Box::new(pb::Schedule {
            name: "nightly".into(),
            cron: "*/5 * * * *".into(),
            tz: "UTC".into(),
            spec: Some(fan),
            overlap: "skip".into(),
            ..Default::default()
        });
        let slot = h
            .call(|reply| Command::AddSchedule {
                schedule,
                by: "ops".into(),
                reply,
            })
            .unwrap()
            .next_ms;
        h.set_now(slot);
        h.tick();
        let first = h
            .jobs()
            .into_iter()
            .find(|j| j.schedule == "nightly")
            .unwrap();
        assert_eq!(first.spec.as_ref().unwrap().expire_after_ms, Some(5 * MIN));
        h.set_admin("a2", AgentAdmin::Drained).unwrap();
        let r = h.assignments(&mut a)[0].attempt.clone().unwrap();
        h.finish(&mut a, &r, Outcome::Passed);
        assert_eq!(h.state(&first.id), JobState::Running);
        // At the next slot the first run finishes (a2 not run) and the next fires.
        h.set_now(slot + 5 * MIN);
        h.tick();
        let done = h.job(&first.id);
        assert_eq!(done.state(), JobState::Passed, "{}", done.reason);
        assert!(done.reason.contains("not run on: a2"), "{}", done.reason);
        assert_eq!(fired(&mut h, "nightly"), vec![slot + 5 * MIN, slot]);
    }
}
