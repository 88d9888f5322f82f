//! Finishing what labd left under way when it stopped: every command in doubt is settled by
//! asking its instrument (the drivers first learn from the journal what was done before it), a
//! task under way goes on from its next command on the same instrument, plates that are not in
//! storage go home; then the run is planned again like a run stopped between its tasks. Only
//! what no instrument can settle goes to a person, with the run `awaiting_recovery` meanwhile.
//! The instruments it uses stay out of the plan until it is done (the board says `resuming`).

use super::failure::JobError;
use super::*;
use crate::store::Attempt;
use devices::Settled;

/// What the board shows for an instrument recovery is finishing work on.
pub(super) const RESUMING: &str = "resuming: finishing work that was under way when labd restarted";

impl Executor {
    /// Finishes a run's leftover work, then plans the rest of it again (or ends it with the
    /// reason), and gives the instruments in `held` back to the plan.
    pub(super) async fn finish(self, run: Run, plan: RunPlan, held: Vec<String>) {
        let scoped = plan.scoped(&crate::store::run_prefix(&run.id));
        let began = Instant::now();
        let finished = self.finish_leftover(&run, &scoped).await;
        for id in &held {
            if self.board.unavailable(id).as_deref() == Some(RESUMING) {
                self.board.set_unavailable(id, None);
            }
        }
        let ended = match finished {
            Ok(()) => self.after_finishing(&run, &plan).await,
            Err(e) => {
                let why = format!("labd restarted mid-run; finishing what was under way failed: {e}");
                let why = failure::in_tenant_words(&why, &run.id);
                let (store, id) = (self.store.clone(), run.id.clone());
                blocking(move || {
                    let state = match store.run(None, &id)?.state {
                        RunState::Cancelling => RunState::Cancelled,
                        _ => RunState::Failed,
                    };
                    store.set_run_state(&id, state, Some(&why))
                })
                .await
                .map(|_| ())
                .map_err(ExecutorError::from)
            }
        };
        match ended {
            Ok(()) => {
                tracing::info!(run = %run.id, tenant = %run.tenant_id, took_ms = began.elapsed().as_millis() as u64, "work under way at the restart finished")
            }
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "cannot record how recovery ended; the next start recovers it again")
            }
        }
    }

    /// Once nothing is under way: a run being cancelled is cancelled; any other goes back to
    /// the queue with what it finished kept.
    async fn after_finishing(&self, run: &Run, plan: &RunPlan) -> Result<(), ExecutorError> {
        let (store, id) = (self.store.clone(), run.id.clone());
        let (now, events) =
            blocking(move || Ok::<_, crate::store::StoreError>((store.run(None, &id)?, store.events(None, &id, 0)?)))
                .await?;
        if now.state == RunState::Cancelling {
            let (store, id) = (self.store.clone(), run.id.clone());
            blocking(move || {
                store.set_run_state(
                    &id,
                    RunState::Cancelled,
                    Some("cancelled; what was under way at the restart is finished and its plates are home"),
                )
            })
            .await?;
            return Ok(());
        }
        let ex = self.clone();
        let (run, plan) = (now, plan.clone());
        blocking(move || ex.resume(&run, &plan, &resume::progress(&events))).await
    }

    async fn finish_leftover(&self, run: &Run, plan: &RunPlan) -> Result<(), JobError> {
        let problem = LabProblem::from_site(&self.lab.site).map_err(|e| JobError::Lab(e.0))?;
        let storage: BTreeSet<String> = problem.nests.get(problem.storage).map(|n| n.id.clone()).into_iter().collect();
        let (store, id) = (self.store.clone(), run.id.clone());
        let (attempts, events) =
            blocking(move || Ok::<_, crate::store::StoreError>((store.attempts(&id)?, store.events(None, &id, 0)?)))
                .await?;
        let cancelling = run.state == RunState::Cancelling;
        // The drivers of tasks under way learn what the journal says they did.
        let progress = resume::progress(&events);
        let left = resume::leftover(plan, &progress, &attempts, &storage);
        for u in &left.tasks {
            let Some(driver) = u.instrument.as_ref().and_then(|i| self.lab.instruments.get(i)) else { continue };
            let mut done: Vec<&Attempt> = attempts
                .iter()
                .filter(|a| a.intent.task_id == u.task as i64 && a.outcome.as_deref() == Some("ok"))
                .collect();
            done.sort_by_key(|a| a.intent.command_index);
            // An op the journal cannot give back would leave the driver's model wrong: stop.
            let ops = done
                .iter()
                .map(|a| serde_json::from_str::<CommandOp>(&a.intent.op_json))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| JobError::Lab(format!("a journaled command of task {} cannot be read: {e}", u.task)))?;
            let instrument = u.instrument.clone().unwrap_or_default();
            let failed = |error| JobError::Instrument { instrument: instrument.clone(), error, aborted: false };
            driver.prepare(plan).await.map_err(|error| JobError::Prepare { instrument: instrument.clone(), error })?;
            driver.replay(&ops).await.map_err(failed)?;
        }
        // Commands in doubt, oldest first.
        let mut doubtful: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.is_none()).collect();
        doubtful.sort_by_key(|a| a.intent_at);
        for a in doubtful {
            self.settle_in_doubt(run, a, &attempts, &storage).await?;
        }
        // Tasks under way go on from their next command (a cancelled run's stop here).
        let (store, id) = (self.store.clone(), run.id.clone());
        let attempts = blocking(move || store.attempts(&id)).await?;
        let left = resume::leftover(plan, &progress, &attempts, &storage);
        for u in &left.tasks {
            let driver = u.instrument.as_ref().and_then(|i| self.lab.instruments.get(i)).cloned();
            if cancelling {
                if let (Some(id), Some(d)) = (&u.instrument, &driver) {
                    self.make_safe(run, id, d.as_ref()).await;
                }
                continue;
            }
            tracing::info!(run = %run.id, task = u.task, from = u.from, instrument = ?u.instrument, "task under way at the restart goes on");
            let result = self.task_commands(run, plan, u.task, &u.instrument, &driver, Some(u.from)).await;
            if let (Err(e), Some(id), Some(d)) = (&result, &u.instrument, &driver) {
                if !e.fenced() {
                    self.make_safe(run, id, d.as_ref()).await;
                }
            }
            result?;
        }
        // Plates not in storage go home, by the arms' routes.
        let (store, id) = (self.store.clone(), run.id.clone());
        let attempts = blocking(move || store.attempts(&id)).await?;
        for (plate, nest) in resume::plates_out(&attempts, &storage) {
            let from = problem.nests.iter().position(|n| n.id == nest);
            let legs = from.and_then(|f| problem.route(f, problem.storage)).map(<[_]>::to_vec);
            let Some(legs) = legs else {
                return Err(JobError::Lab(format!("plate {plate} is on {nest}, from where no arm reaches storage")));
            };
            for leg in legs {
                let (from, to) = (&problem.nests[leg.from].id, &problem.nests[leg.to].id);
                self.move_plate(run, plan, &plate, from, to, &problem.arms[leg.arm].id).await?;
            }
        }
        Ok(())
    }

    /// Settles one command in doubt: by the rules for commands safe to send again and for timed
    /// holds, else by asking its instrument; what nobody can tell goes to a person.
    async fn settle_in_doubt(
        &self,
        run: &Run,
        a: &Attempt,
        attempts: &[Attempt],
        storage: &BTreeSet<String>,
    ) -> Result<(), JobError> {
        let inst = a.intent.instrument.clone();
        let op: CommandOp = serde_json::from_str(&a.intent.op_json)
            .map_err(|e| JobError::Lab(format!("a journaled command cannot be read ({e}): {}", a.intent.op_json)))?;
        let driver: Option<Arc<dyn Instrument>> = match self.lab.instruments.get(&inst) {
            Some(d) => Some(d.clone()),
            None => self.lab.arms.get(&inst).map(|a| a.clone() as Arc<dyn Instrument>),
        };
        let elapsed_s = (crate::store::now_ms() - a.intent_at).max(0) as f64 / 1000.0 / self.config.scale.0.max(1e-12);
        let verdict = if a.intent.repeatable {
            Settled::NotDone("safe to send again".into())
        } else if let Some(v) = resume::settle_hold(&op, elapsed_s) {
            v
        } else if matches!(op, CommandOp::SetTemperature { .. } | CommandOp::SetShakeSpeed { .. }) {
            Settled::NotDone("setting the same set point again changes nothing".into())
        } else if let Some(d) = &driver {
            if let (CommandOp::MoveLabware { labware, .. }, Some(arm)) = (&op, self.lab.arms.get(&inst)) {
                // Where the plate was before this move, and where the arm last stood.
                let before: Vec<Attempt> = attempts.iter().filter(|b| b.intent_at < a.intent_at).cloned().collect();
                let mut at = resume::plates_out(&before, &BTreeSet::new());
                let home = storage.iter().next().cloned().unwrap_or_default();
                arm.locate(labware, &at.remove(labware).unwrap_or(home));
                let (store, id, t) = (self.store.clone(), inst.clone(), a.intent_at);
                let last = blocking(move || store.last_done_on(&id, t - 1)).await?;
                let last: Vec<CommandOp> =
                    last.and_then(|l| serde_json::from_str(&l.intent.op_json).ok()).into_iter().collect();
                if let Err(e) = arm.replay(&last).await {
                    // It then cannot tell a move to where it stood from one that happened: asked.
                    tracing::warn!(run = %run.id, instrument = %inst, error = %e, "the arm could not learn where it stood");
                }
            }
            match tokio::time::timeout(Duration::from_secs(30), d.settle(&op)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => Settled::Unknown(format!("{inst} could not say: {e}")),
                Err(_) => Settled::Unknown(format!("{inst} did not answer within 30 s")),
            }
        } else {
            Settled::Unknown(format!("{inst} is not connected to this node"))
        };
        tracing::info!(run = %run.id, instrument = %inst, command = %a.intent.op_json, verdict = ?verdict, "command in doubt at the restart");
        let note = |w: &str| format!("settled at recovery: {w}");
        let record = |outcome: &'static str, why: String| {
            let (store, aid) = (self.store.clone(), a.id.clone());
            blocking(move || store.record_outcome(&aid, outcome, Some(&why)))
        };
        match verdict {
            Settled::Happened(w) => Ok(record("ok", note(&w)).await?),
            Settled::NotDone(w) => Ok(record("not_done", note(&w)).await?),
            Settled::Rest(rest, w) => {
                let Some(d) = driver else { return Err(JobError::Lab(format!("{inst} is not connected"))) };
                tracing::info!(run = %run.id, instrument = %inst, why = %w, "finishing a command under way at the restart");
                let sent = match d.start(&rest).await {
                    Ok(exec) => exec.finish().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(()) => Ok(record("ok", note(&format!("{w}; finished"))).await?),
                    Err(error) => {
                        record("failed", note(&format!("{w}; finishing it failed: {error}"))).await?;
                        self.make_safe(run, &inst, d.as_ref()).await;
                        Err(JobError::Instrument { instrument: inst, error, aborted: false })
                    }
                }
            }
            Settled::Unknown(w) => self.ask_about(run, a, &op, driver, &w).await,
        }
    }

    /// A command in doubt that its instrument cannot settle: a technician says whether it
    /// happened (done), to send it again (redo) or to stop the run (abort); the run awaits
    /// recovery meanwhile. One intervention per command, across restarts.
    async fn ask_about(
        &self,
        run: &Run,
        a: &Attempt,
        op: &CommandOp,
        driver: Option<Arc<dyn Instrument>>,
        why: &str,
    ) -> Result<(), JobError> {
        let inst = a.intent.instrument.clone();
        let which = match a.intent.task_id {
            t if t >= 0 => format!("command {} of task {t}", a.intent.command_index),
            _ => "a plate move".to_string(),
        };
        let asked = format!("labd restarted while {inst} was running {which}: {}", a.intent.op_json);
        let what = failure::in_tenant_words(&format!("{asked}; {inst} cannot settle it: {why}"), &run.id);
        let todo = "check the instrument and the plate: done if the step happened (the run goes on after it), redo to send it again, abort to stop the run";
        let (store, id, task, at, w, asked2) =
            (self.store.clone(), run.id.clone(), a.intent.task_id, inst.clone(), what.clone(), asked.clone());
        let i = blocking(move || {
            let open = store
                .interventions(None, true)?
                .into_iter()
                .find(|i| i.run_id == id && i.task_id == (task >= 0).then_some(task) && i.what.starts_with(&asked2));
            match open {
                Some(i) => Ok(i),
                None => store.open_intervention(&id, (task >= 0).then_some(task), Some(&at), &w, todo),
            }
        })
        .await?;
        self.hold(&run.id, true, &what).await?;
        let decided = self.await_resolution(&i.id).await?;
        let (store, aid) = (self.store.clone(), a.id.clone());
        let by = format!("settled at recovery by a person: {decided}");
        let outcome = if decided == "done" { "ok" } else { "unknown" };
        blocking(move || store.record_outcome(&aid, outcome, Some(&by))).await?;
        if decided == "abort" {
            return Err(JobError::Aborted(format!("`{}` after labd restarted", a.intent.op_json)));
        }
        self.hold(&run.id, false, &format!("a person decided `{decided}` for: {what}")).await?;
        if decided == "done" {
            if let Some(d) = driver {
                d.replay(std::slice::from_ref(op)).await.map_err(|error| JobError::Instrument {
                    instrument: inst,
                    error,
                    aborted: false,
                })?;
            }
        }
        Ok(())
    }
}
