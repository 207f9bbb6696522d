//! Benchmark baselines as the core serves them: audited accepts from users and
//! the baselines an agent's live attempt asks for (its own profile's only).
//! The rules of what may join a history live in [`crate::baseline`].

use super::*;

impl Core {
    pub(super) fn accept_baselines(
        &mut self,
        req: &pb::AcceptBaselinesRequest,
        by: &str,
        step: &mut Step,
    ) -> Result<Vec<pb::Baseline>, Status> {
        let claimed = req.who.trim();
        if !claimed.is_empty() && claimed != by {
            return Err(Status::invalid_argument(format!(
                "the audit records who accepted from the caller's token ('{by}'); drop --by '{}'",
                crate::clip(claimed)
            )));
        }
        let id = self.job_id(&req.job_id)?;
        let job = &self.jobs[&id].job;
        if job.spec.as_ref().is_none_or(|s| s.kind != "benchmark") {
            return Err(Status::failed_precondition(format!(
                "job {id} is not a benchmark job"
            )));
        }
        if !job.state().is_terminal() {
            return Err(Status::failed_precondition(format!(
                "job {id} is still {}; accept it once it has finished",
                job.state().label()
            )));
        }
        if job.cases.is_empty() {
            return Err(Status::failed_precondition(format!(
                "job {id} has no case results to accept"
            )));
        }
        let who = by;
        let (cases, job_id) = (job.cases.clone(), job.id.clone());
        let changed = self.baselines.accept(&cases, &job_id, who, self.now);
        if changed.is_empty() {
            return Err(Status::failed_precondition(format!(
                "job {id} has no measured case to accept (all errored)"
            )));
        }
        for (key, b) in &changed {
            step.writes.put_baseline(key, b);
        }
        tracing::info!(job = id, who, cases = changed.len(), "baselines accepted");
        Ok(changed.into_iter().map(|(_, b)| b).collect())
    }

    pub(super) fn get_baselines(
        &self,
        req: &pb::GetBaselinesRequest,
        agent: &str,
    ) -> Result<pb::GetBaselinesResponse, Status> {
        let r = req
            .attempt
            .clone()
            .ok_or_else(|| Status::invalid_argument("GetBaselines needs the caller's attempt"))?;
        let task = r.task_id.parse::<u64>().unwrap_or(0);
        let owner = self
            .leases
            .get(task)
            .map(|l| l.agent.clone())
            .ok_or_else(|| {
                Status::failed_precondition(format!("task {} has no live attempt", r.task_id))
            })?;
        if owner != agent {
            return Err(Status::permission_denied(format!(
                "task {} is not leased to agent {agent}",
                r.task_id
            )));
        }
        self.leases
            .check(task, &r, &owner)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let profile = agent_profile(&self.agents, &owner);
        let wanted = req
            .keys
            .iter()
            .map(|k| (k.case.clone(), k.input_hash.clone()))
            .collect();
        Ok(pb::GetBaselinesResponse {
            baselines: self.baselines.for_profile(&profile, &wanted),
            profile,
        })
    }

    /// One case result of `task`'s live attempt, stamped with the agent's
    /// profile. A trusted run (the `nightly` queue or `--trusted`) offers it to
    /// the history; [`BaselineBook::record_trusted`] decides whether it joins.
    pub(super) fn record_case(
        &mut self,
        task: u64,
        attempt: u32,
        agent: &str,
        mut c: pb::CaseResult,
        step: &mut Step,
    ) {
        c.profile = agent_profile(&self.agents, agent);
        let Some(e) = self.jobs.get_mut(&task) else {
            return;
        };
        let trusted = e.job.spec.as_ref().is_some_and(|s| {
            s.queue == "nightly" || s.benchmark.as_ref().is_some_and(|b| b.trusted)
        });
        step.observe(Observation::bench_verdict(&c.verdict));
        e.job.cases.push(c.clone());
        if let Some((key, runs)) = self.case_runs.record(&c, &e.job.id, self.now) {
            step.writes.put_case_runs(&key, &runs);
        }
        if trusted {
            if let Some((key, b)) = self.baselines.record_trusted(&c, &e.job.id, self.now) {
                step.writes.put_baseline(&key, &b);
            }
        }
        self.push_event(task, attempt, job_event::Kind::Case(c), step);
    }
}

#[cfg(test)]
mod tests {
    use super::super::harness::*;
    use super::super::Command;
    use msfleet_proto::{self as pb, task_update, JobSpec, Outcome};

    fn bench(queue: &str) -> JobSpec {
        let mut s = spec();
        s.kind = "benchmark".into();
        s.queue = queue.into();
        s.benchmark = Some(pb::BenchmarkSpec {
            command: vec!["./run".into(), "{case}".into()],
            ..Default::default()
        });
        s
    }

    fn case(name: &str, verdict: &str, value: f64) -> task_update::Kind {
        task_update::Kind::Case(pb::CaseResult {
            name: name.into(),
            input_hash: "h1".into(),
            metric: "wall_time".into(),
            verdict: verdict.into(),
            explanation: Some(pb::Explanation {
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Runs one benchmark job on `conn` reporting `cases`; returns its id.
    fn run(
        h: &mut Harness,
        conn: &mut Conn,
        spec: JobSpec,
        cases: Vec<task_update::Kind>,
    ) -> String {
        let job = h.submit(spec).unwrap();
        let r = h.assignments(conn)[0].attempt.clone().unwrap();
        h.update(conn, &r, 1, started());
        let n = cases.len() as u64;
        for (i, c) in cases.into_iter().enumerate() {
            h.update(conn, &r, 2 + i as u64, c);
        }
        h.update(conn, &r, 2 + n, finished(Outcome::Passed));
        job.id
    }

    fn list(h: &mut Harness) -> Vec<pb::Baseline> {
        let req = pb::ListBaselinesRequest::default();
        h.call(|reply| Command::ListBaselines { req, reply })
            .unwrap()
    }

    fn accept(h: &mut Harness, job: &str) -> Result<Vec<pb::Baseline>, tonic::Status> {
        let req = pb::AcceptBaselinesRequest {
            job_id: job.into(),
            who: String::new(),
        };
        h.call(|reply| Command::AcceptBaselines {
            req,
            by: "ana".into(),
            reply,
        })
    }

    #[test]
    fn trusted_runs_build_history_for_their_profile_and_regressions_never_do() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        run(
            &mut h,
            &mut a,
            bench("nightly"),
            vec![case("c", "no_baseline", 1.0)],
        );
        run(
            &mut h,
            &mut a,
            bench("nightly"),
            vec![case("c", "regression", 2.0)],
        );
        run(
            &mut h,
            &mut a,
            bench("benchmark"),
            vec![case("c", "pass", 1.1)],
        );
        h.reload();
        let b = list(&mut h);
        assert_eq!(b.len(), 1);
        let key = b[0].key.clone().unwrap();
        assert_eq!((key.case.as_str(), key.profile.as_str()), ("c", "p-a"));
        let values: Vec<f64> = b[0].history.iter().map(|r| r.median).collect();
        assert_eq!(values, vec![1.0], "only the trusted, non-regressing run");
    }

    #[test]
    fn an_accept_is_audited_and_refused_for_what_it_cannot_take() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        let mut never = spec();
        never.requirements = "gpu.count>=1".into();
        never.allow_unmatched = true;
        let pytest = h.submit(never).unwrap();
        let e = accept(&mut h, &pytest.id).unwrap_err();
        assert!(e.message().contains("is not a benchmark job"), "{e}");
        let errored = run(
            &mut h,
            &mut a,
            bench("benchmark"),
            vec![case("c", "error", 0.0)],
        );
        let e = accept(&mut h, &errored).unwrap_err();
        assert!(e.message().contains("no measured case"), "{e}");
        assert!(list(&mut h).is_empty());

        let good = run(
            &mut h,
            &mut a,
            bench("benchmark"),
            vec![case("c", "regression", 1.5)],
        );
        let changed = accept(&mut h, &good).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].anchor, Some(1.5));
        let audit = changed[0].audit.last().unwrap();
        assert_eq!(
            (audit.action.as_str(), audit.who.as_str()),
            ("accept", "ana")
        );
        assert_eq!(audit.job_id, good);
    }

    #[test]
    fn an_agent_gets_only_its_own_profiles_baselines_and_only_for_a_live_attempt() {
        let mut h = Harness::new();
        let mut a = h.register("a1", "p-a", 1);
        let done = run(
            &mut h,
            &mut a,
            bench("nightly"),
            vec![case("c", "no_baseline", 1.0)],
        );
        let mut b = h.register("b1", "p-b", 1);
        h.disconnect(&a);
        let job = h.submit(bench("benchmark")).unwrap();
        let r = h.assignments(&mut b)[0].attempt.clone().unwrap();
        let ask = |attempt: Option<pb::AttemptRef>| pb::GetBaselinesRequest {
            attempt,
            keys: vec![pb::BaselineKey {
                case: "c".into(),
                input_hash: "h1".into(),
                ..Default::default()
            }],
        };
        let req = ask(Some(r.clone()));
        let got = h
            .call(|reply| Command::GetBaselines {
                req,
                agent: "b1".into(),
                reply,
            })
            .unwrap();
        assert_eq!(got.profile, "p-b");
        assert!(got.baselines.is_empty(), "p-a's baseline never judges p-b");
        let stale = pb::AttemptRef {
            epoch: r.epoch + 1,
            ..r.clone()
        };
        let req = ask(Some(stale));
        let e = h
            .call(|reply| Command::GetBaselines {
                req,
                agent: "b1".into(),
                reply,
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let req = ask(Some(pb::AttemptRef {
            task_id: done,
            attempt: 1,
            epoch: 1,
        }));
        let e = h
            .call(|reply| Command::GetBaselines {
                req,
                agent: "b1".into(),
                reply,
            })
            .unwrap_err();
        assert!(e.message().contains("has no live attempt"), "{e}");
        assert_ne!(job.id, "");
    }
}
