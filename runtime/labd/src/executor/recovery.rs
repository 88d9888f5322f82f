//! Recovery after a restart: each run that was running is queued again, resumed, or failed
//! with the reason (the decisions are [`super::resume`]'s; this is where they are read from the
//! store and written back).

use super::*;

impl Executor {
    /// After a restart, each run that was running when the runtime stopped:
    /// - had not touched anything (no command, no plate move, no manual step): queued again;
    /// - stopped between its tasks, nothing in flight, its plates in storage: resumed — queued
    ///   again with what it finished kept (admission plans only the rest; see [`resume`]);
    /// - otherwise: failed with a reason naming any command whose outcome is unknown (never
    ///   silently resent), and a technician gets an intervention for each such command that is
    ///   not safe to repeat.
    ///
    /// Each instrument with a command in flight is first asked where it is
    /// ([`devices::Instrument::whereabouts`]); its answer goes into the technician's
    /// intervention. Queued runs are untouched and run normally. Returns the runs it failed.
    pub async fn recover(&self) -> Result<Vec<String>, ExecutorError> {
        let store = self.store.clone();
        let open = blocking(move || store.open_attempts()).await?;
        // All at once: an instrument that does not answer costs its 10 s once, not per instrument.
        let mut asking = tokio::task::JoinSet::new();
        for id in open.iter().map(|a| a.intent.instrument.clone()).collect::<BTreeSet<_>>() {
            let ex = self.clone();
            asking.spawn(async move {
                let report = ex.whereabouts(&id).await;
                (id, report)
            });
        }
        let mut reports = BTreeMap::new();
        while let Some(answered) = asking.join_next().await {
            match answered {
                Ok((id, report)) => {
                    reports.insert(id, report);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "asking an instrument where it is stopped; its commands are asked about")
                }
            }
        }
        let ex = self.clone();
        blocking(move || ex.recover_with(open, &reports)).await
    }

    /// What an instrument says of where it is, or why it did not say (within 10 s).
    async fn whereabouts(&self, id: &str) -> Result<devices::Whereabouts, Silent> {
        let driver: Option<Arc<dyn Instrument>> = match self.lab.instruments.get(id) {
            Some(d) => Some(d.clone()),
            None => self.lab.arms.get(id).map(|a| a.clone() as Arc<dyn Instrument>),
        };
        let Some(d) = driver else { return Err(Silent::NotConnected) };
        match tokio::time::timeout(Duration::from_secs(10), d.whereabouts()).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(Silent::CouldNotSay(e)),
            Err(_) => Err(Silent::NoAnswer),
        }
    }

    /// Recovery's decisions, given what each instrument with a command in flight said of itself
    /// (or why it said nothing).
    fn recover_with(
        &self,
        open: Vec<crate::store::Attempt>,
        reports: &BTreeMap<String, Result<devices::Whereabouts, Silent>>,
    ) -> Result<Vec<String>, ExecutorError> {
        let asked = self.store.interventions(None, false)?;
        let storage = self.storage_nests();
        let mut failed = Vec::new();
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
            if matches!(run.state, RunState::Running | RunState::AwaitingRecovery) {
                let progress = resume::progress(&self.store.events(None, &run.id, 0)?);
                let why = match serde_json::from_str::<RunPlan>(&run.plan_json) {
                    Ok(plan) => match resume::blocker(&plan, &progress, &attempts, &storage) {
                        None => {
                            self.resume(&run, &plan, &progress)?;
                            continue;
                        }
                        Some(why) => why,
                    },
                    Err(e) => format!("its stored plan cannot be read: {e}"),
                };
                tracing::info!(run = %run.id, why = %why, "the run cannot resume by itself");
            }
            let mine: Vec<_> = open.iter().filter(|a| a.intent.run_id == run.id).collect();
            let mut unsettled = Vec::new();
            for a in &mine {
                let inst = &a.intent.instrument;
                let report = reports.get(inst);
                let said = match report {
                    Some(Ok(w)) => w.text.clone(),
                    Some(Err(why)) => why.to_string(),
                    None => "nothing".into(),
                };
                // Where the instrument's own answer settles it, nobody needs to look.
                if let Some((outcome, why)) =
                    report.and_then(|r| r.as_ref().ok()).and_then(|w| resume::settle(&a.intent.op_json, w))
                {
                    let note = format!("settled at recovery: {why} ({inst} reports: {said})");
                    self.store.record_outcome(&a.id, outcome, Some(&note))?;
                    continue;
                }
                self.store.record_outcome(&a.id, "unknown", Some("labd stopped before the outcome was recorded"))?;
                unsettled.push(*a);
                if !a.intent.repeatable {
                    self.store.open_intervention(
                        &run.id,
                        (a.intent.task_id >= 0).then_some(a.intent.task_id),
                        Some(inst),
                        &format!(
                            "labd restarted while {inst} was running {}; {inst} reports: {said}; that does not say whether it happened",
                            a.intent.op_json
                        ),
                        "check the instrument and the plate; the run was stopped and will not resend this command",
                    )?;
                }
            }
            let reason = match (unsettled.first(), mine.first()) {
                (Some(a), _) => format!(
                    "labd restarted mid-run; {} may or may not have run {}",
                    a.intent.instrument, a.intent.op_json
                ),
                (None, Some(a)) => format!(
                    "labd restarted mid-run while {} was running {} (its outcome is known; the task cannot go on by itself yet)",
                    a.intent.instrument, a.intent.op_json
                ),
                (None, None) => "labd restarted mid-run between commands".to_string(),
            };
            let state = if run.state == RunState::Cancelling { RunState::Cancelled } else { RunState::Failed };
            self.store.set_run_state(&run.id, state, Some(&reason))?;
            failed.push(run.id);
        }
        Ok(failed)
    }

    /// Puts a run that stopped between its tasks back in the queue, telling its tenant what was
    /// kept and any time limit between tasks the restart broke.
    fn resume(&self, run: &Run, plan: &RunPlan, progress: &resume::Progress) -> Result<(), ExecutorError> {
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
    fn storage_nests(&self) -> BTreeSet<String> {
        LabProblem::from_site(&self.lab.site)
            .map(|p| p.nests.get(p.storage).map(|n| n.id.clone()).into_iter().collect())
            .unwrap_or_default()
    }
}

/// Why an instrument said nothing of where it is at recovery.
#[derive(Debug, thiserror::Error)]
enum Silent {
    #[error("not connected to this node")]
    NotConnected,
    #[error("could not say ({0})")]
    CouldNotSay(devices::InstrumentError),
    #[error("no answer within 10 s")]
    NoAnswer,
}
