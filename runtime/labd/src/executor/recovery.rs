//! Recovery after a restart: each run that was running is queued again, resumed, or has what
//! it left under way finished first ([`super::finish`]); the decisions are [`super::resume`]'s,
//! this is where they are read from the store and written back.

use super::*;

impl Executor {
    /// After a restart (or when this node takes over a cell), each run that had begun:
    /// - had not touched anything (no command, no plate move, no manual step): queued again;
    /// - stopped between its tasks, nothing in flight, its plates in storage: resumed — queued
    ///   again with what it finished kept (admission plans only the rest; see [`resume`]);
    /// - otherwise: what it left under way is finished in the background — each command in
    ///   doubt settled by asking its instrument, a task under way going on from its next
    ///   command, plates brought home — with the instruments involved out of the plan until
    ///   then; then it is resumed as above. Only what no instrument can settle goes to a person.
    ///
    /// Simulators inside labd restart with it and keep nothing of a task under way: such a
    /// run fails with that reason. Queued runs are untouched and run normally. Returns the runs
    /// it failed.
    pub async fn recover(&self) -> Result<Vec<String>, ExecutorError> {
        let ex = self.clone();
        let (failed, finishing) = blocking(move || ex.recover_with()).await?;
        for (run, plan, held) in finishing {
            for id in &held {
                self.board.set_unavailable(id, Some(finish::RESUMING.to_string()));
            }
            tracing::warn!(run = %run.id, tenant = %run.tenant_id, instruments = ?held, "finishing what the run had under way when labd stopped");
            self.finishing.spawn(self.clone().finish(run, plan, held));
        }
        Ok(failed)
    }

    /// Recovery's decisions from the store; returns the runs failed and the runs whose leftover
    /// work is to be finished (with the instruments it holds).
    #[allow(clippy::type_complexity)]
    fn recover_with(&self) -> Result<(Vec<String>, Vec<(Run, RunPlan, Vec<String>)>), ExecutorError> {
        let asked = self.store.interventions(None, false)?;
        let storage = self.storage_nests();
        let mut failed = Vec::new();
        let mut finishing = Vec::new();
        let live = [RunState::Running, RunState::AwaitingRecovery, RunState::Cancelling];
        for run in self.store.runs(None, &live)? {
            if self.config.cell.is_some() && run.cell != self.config.cell {
                continue; // another cell's run: its node recovers it
            }
            let attempts = self.store.attempts(&run.id)?;
            let untouched = attempts.is_empty() && !asked.iter().any(|i| i.run_id == run.id);
            if untouched {
                let (state, reason) = match run.state {
                    RunState::Cancelling => (RunState::Cancelled, "cancelled; labd stopped before it began"),
                    _ => (RunState::Queued, "labd stopped before it began; queued again"),
                };
                self.store.set_run_state(&run.id, state, Some(reason))?;
                continue;
            }
            let plan = match serde_json::from_str::<RunPlan>(&run.plan_json) {
                Ok(plan) => plan,
                Err(e) => {
                    let why = format!("labd restarted mid-run and its stored plan cannot be read: {e}");
                    self.store.set_run_state(&run.id, RunState::Failed, Some(&why))?;
                    failed.push(run.id);
                    continue;
                }
            };
            let progress = resume::progress(&self.store.events(None, &run.id, 0)?);
            let scoped = plan.scoped(&crate::store::run_prefix(&run.id));
            let left = resume::leftover(&scoped, &progress, &attempts, &storage);
            let in_doubt: Vec<&crate::store::Attempt> = attempts.iter().filter(|a| a.outcome.is_none()).collect();
            if in_doubt.is_empty() && left.is_empty() {
                if run.state == RunState::Cancelling {
                    self.store.set_run_state(
                        &run.id,
                        RunState::Cancelled,
                        Some("cancelled; labd stopped between its tasks"),
                    )?;
                } else {
                    self.resume(&run, &plan, &progress)?;
                }
                continue;
            }
            if self.lab.simulated.is_some() {
                // Simulators inside labd started afresh with it: what they held mid-task (tips,
                // liquid in them, plates) is gone, so there is nothing to finish or to check.
                for a in &in_doubt {
                    self.store.record_outcome(&a.id, "unknown", Some("labd restarted, and its simulators with it"))?;
                }
                let state = if run.state == RunState::Cancelling { RunState::Cancelled } else { RunState::Failed };
                let why = "labd restarted mid-run with a task under way; its simulated instruments run inside labd and restarted with it, \
                           so what they held mid-task is gone (run them with `labd sim` and runs resume instead)";
                self.store.set_run_state(&run.id, state, Some(why))?;
                failed.push(run.id);
                continue;
            }
            // What stays out of the plan until this run's leftover is finished: the instruments
            // of its tasks under way, those a plate of it stands on, those with a command in
            // doubt (arms are shared by everyone's moves and stay in the plan).
            let nest_owner = |nest: &str| {
                self.lab.site.instruments.iter().find(|i| i.nest_ids().iter().any(|n| n == nest)).map(|i| i.id.clone())
            };
            let mut held: BTreeSet<String> = left.tasks.iter().filter_map(|u| u.instrument.clone()).collect();
            held.extend(left.plates.values().filter_map(|n| nest_owner(n)));
            held.extend(
                in_doubt.iter().map(|a| a.intent.instrument.clone()).filter(|i| !self.lab.arms.contains_key(i)),
            );
            held.retain(|i| self.lab.instruments.contains_key(i));
            finishing.push((run, plan, held.into_iter().collect()));
        }
        Ok((failed, finishing))
    }

    /// Puts a run that stopped between its tasks back in the queue, telling its tenant what was
    /// kept and any time limit between tasks the restart broke.
    pub(super) fn resume(&self, run: &Run, plan: &RunPlan, progress: &resume::Progress) -> Result<(), ExecutorError> {
        let (_, lost) = resume::remainder(plan, &progress.finished, crate::store::now_ms(), self.config.scale.0);
        for l in &lost {
            let label = |t: usize| plan.tasks.get(t).map_or_else(|| format!("task {t}"), |t| t.label.clone());
            let payload = serde_json::json!({
                "from": l.from, "to": l.to, "max_s": l.max_s, "since_s": l.since_s,
                "why": format!(
                    "`{}` was to start within {:.0} s of the end of `{}`; labd restarted and {:.0} s have passed",
                    label(l.to), l.max_s, label(l.from), l.since_s
                ),
            });
            self.store.append_event(&run.id, "constraint_lost", &payload.to_string())?;
        }
        let (done, of) = (progress.finished.len(), plan.tasks.len());
        let reason = format!("labd restarted between its tasks; resuming with {done} of {of} tasks done");
        self.store.set_run_state(&run.id, RunState::Queued, Some(&reason))?;
        tracing::warn!(run = %run.id, tenant = %run.tenant_id, done, of, "run resumed after a restart");
        Ok(())
    }

    /// The nests where plates wait between tasks (a plate there is safe to plan from).
    pub(super) fn storage_nests(&self) -> BTreeSet<String> {
        LabProblem::from_site(&self.lab.site)
            .map(|p| p.nests.get(p.storage).map(|n| n.id.clone()).into_iter().collect())
            .unwrap_or_default()
    }
}
