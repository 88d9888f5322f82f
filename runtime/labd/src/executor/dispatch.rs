//! Carrying out one job: a task's commands on its instrument (or by a technician's hand), a plate
//! move on an arm, each command journaled (intent before, outcome after) and resent only as its
//! error allows.

use super::failure::JobError;
use super::*;

impl Executor {
    pub(super) async fn run_job(self, ctx: JobCtx) {
        // Shutdown ends a job still waiting for its turn; a job on an instrument finishes.
        let turn = tokio::select! {
            turn = self.wait_turn(&ctx) => turn,
            _ = ctx.stopping.cancelled() => None,
        };
        let Some(cascade_failed) = turn else { return };
        // The run's material kitted first. Until then the job has not started (the board shows
        // nothing under way, and a repair may still move it). A plan's own kitting tasks are
        // that work, under way on the board and planned like any other task.
        let stage = match ctx.job.job {
            Job::Task { run, task, .. } => ctx.runs[run].1.tasks.get(task).and_then(crate::kitting_tasks::stage),
            Job::Move(_) => None,
        };
        let kitted = if stage.is_some() {
            Ok(())
        } else {
            tokio::select! {
                k = self.kitted(&ctx.runs[ctx.job.run].0, &ctx.problem.nests[ctx.problem.storage].id) => k,
                _ = ctx.stopping.cancelled() => return,
            }
        };
        let is_move = matches!(ctx.job.job, Job::Move(_));
        {
            let mut d = lock(&ctx.dispatch);
            if d.generation != ctx.generation {
                return;
            }
            d.started.insert(ctx.key.clone(), ctx.me.clone());
        }
        self.board.started(&ctx.key, crate::store::now_ms());
        let result = match (cascade_failed, is_move) {
            _ if kitted.is_err() && !cascade_failed => kitted,
            (true, false) => Err(JobError::Cascaded), // its reason is recorded
            // The run has failed already: the move's own failure is news, its success is not.
            (true, true) => self.job(&ctx.problem, &ctx.runs, &ctx.job.job).await.and(Err(JobError::Cascaded)),
            (false, _) => self.job(&ctx.problem, &ctx.runs, &ctx.job.job).await,
        };
        self.board.finished(&ctx.key, crate::store::now_ms(), result.is_ok());
        // The loop hears of it before anything waiting for it can start, so it never takes a
        // task whose plate has moved on for one still running.
        let (ok, at) = (result.is_ok(), ctx.t0.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12));
        let _ =
            ctx.reports.send(Report::Done { session: ctx.session, key: ctx.key, run: ctx.job.run, result, at }).await;
        let _ = ctx.tx.send(Some(ok));
    }

    /// Waits until the job may start: what it waits for has finished, its planned start has
    /// come, its instruments are available and answer. `Some(whether its run has failed)`, or
    /// `None` when it retires (a newer plan has it, or its instrument did not answer).
    async fn wait_turn(&self, ctx: &JobCtx) -> Option<bool> {
        let stale = |ctx: &JobCtx| lock(&ctx.dispatch).generation != ctx.generation;
        let is_move = matches!(ctx.job.job, Job::Move(_));
        let mut cascade_failed = false;
        for (mut w, cascade) in ctx.waits.iter().cloned() {
            let ok = loop {
                if let Some(ok) = *w.borrow_and_update() {
                    break ok;
                }
                if w.changed().await.is_err() {
                    // It retired without running (its plan was replaced, or its instrument did
                    // not answer): so does this job; the next plan has both.
                    return None;
                }
            };
            cascade_failed |= cascade && !ok;
        }
        if stale(ctx) {
            return None; // an older plan's job: the current plan has its own
        }
        // After a failed task the run's plates still travel their planned moves, so they end up
        // in storage and leave no instrument's nest blocked for the next run; its tasks do not run.
        if !cascade_failed || is_move {
            tokio::time::sleep_until(ctx.t0 + self.config.scale.wall(ctx.job.start)).await;
            for gate in &ctx.gates {
                while self.board.unavailable(gate).is_some() {
                    if stale(ctx) {
                        return None;
                    }
                    tokio::time::sleep(self.config.poll).await;
                }
            }
            if let Some(id) = &ctx.probe {
                if let Some(d) = self.lab.instruments.get(id) {
                    let answer = tokio::time::timeout(Duration::from_secs(10), d.status()).await;
                    let why = match answer {
                        Ok(Ok(st)) if st.state == State::Offline => Some("it reports offline".to_string()),
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some("no answer to a status request within 10 s".to_string()),
                    };
                    if let Some(why) = why {
                        // The plate stays where it is; the re-plan sends it elsewhere.
                        // The loop is gone only at shutdown, when nothing is re-planned anyway.
                        let _ = ctx.reports.send(Report::Down { instrument: id.clone(), why }).await;
                        return None;
                    }
                }
            }
        }
        Some(cascade_failed)
    }

    /// Carries out one job inside its span: a task (run, tenant, task, instrument) or a plate
    /// move (run, tenant, plate, arm), which the log's lines and an OpenTelemetry trace carry.
    pub(super) async fn job(&self, problem: &LabProblem, runs: &[(Run, RunPlan)], job: &Job) -> Result<(), JobError> {
        let span = match job {
            Job::Task { run, task, resource, .. } => tracing::info_span!(
                "task",
                run = %runs[*run].0.id,
                tenant = %runs[*run].0.tenant_id,
                task,
                instrument = resource.map_or("bench", |r| problem.resources[r].id.as_str()),
            ),
            Job::Move(m) => tracing::info_span!(
                "plate move",
                run = %runs[m.run].0.id,
                tenant = %runs[m.run].0.tenant_id,
                plate = m.plate,
                from = %problem.nests[m.from].id,
                to = %problem.nests[m.to].id,
                arm = %problem.arms[m.arm].id,
            ),
        };
        tracing::Instrument::instrument(self.job_in_span(problem, runs, job), span).await
    }

    async fn job_in_span(&self, problem: &LabProblem, runs: &[(Run, RunPlan)], job: &Job) -> Result<(), JobError> {
        // A cancelled run stops at the next task boundary; its plate moves still run, so every
        // plate ends up back in storage. A run that ended before it began (cancelled while it
        // was admitted) has nothing on the bench: none of its jobs is done.
        let run = match job {
            Job::Task { run, .. } => *run,
            Job::Move(m) => m.run,
        };
        let (store, id) = (self.store.clone(), runs[run].0.id.clone());
        let state = blocking(move || store.run(None, &id)).await.map(|r| r.state);
        match (job, state) {
            (_, Ok(s)) if s.is_final() => return Ok(()),
            (Job::Task { .. }, Ok(RunState::Cancelling)) => return Ok(()),
            _ => {}
        }
        match job {
            Job::Move(m) => {
                let (run, plan) = &runs[m.run];
                let plates: Vec<&str> = plan
                    .labware
                    .iter()
                    .filter(|l| l.kind == labware::LabwareKind::WellPlate)
                    .map(|l| l.name.as_str())
                    .collect();
                let plate = plates
                    .get(m.plate)
                    .copied()
                    .ok_or_else(|| JobError::Lab("a move names a plate the run does not have".into()))?;
                let (from, to) = (&problem.nests[m.from].id, &problem.nests[m.to].id);
                self.move_plate(run, plan, plate, from, to, &problem.arms[m.arm].id).await
            }
            Job::Task { run: r, task: t, resource, on_arm } => {
                if *on_arm {
                    return Err(JobError::Lab(format!(
                        "task {t} needs lid handling by an arm, which the arm driver does not do yet"
                    )));
                }
                self.task(problem, runs, *r, *t, *resource).await
            }
        }
    }

    /// Moves one plate of a run from nest to nest on an arm, journaled; an arm left in doubt
    /// is made safe.
    pub(super) async fn move_plate(
        &self,
        run: &Run,
        plan: &RunPlan,
        plate: &str,
        from: &str,
        to: &str,
        arm_id: &str,
    ) -> Result<(), JobError> {
        let arm =
            self.lab.arms.get(arm_id).ok_or_else(|| JobError::Lab(format!("arm {arm_id} is not connected")))?.clone();
        arm.locate(plate, from);
        let lib = labware::Library::shipped();
        let def = plan.labware.iter().find(|l| l.name == plate).and_then(|l| plan.labware_def(&l.load_name, &lib));
        if let Some(def) = def {
            arm.carries(plate, def, self.deck_slot(plan, plate, [from, to]));
        }
        let op = CommandOp::MoveLabware { labware: plate.into(), to: to.into() };
        let mut pending = None;
        let result = self.command(run, -1, 0, arm_id, arm.as_ref(), &op, false, &mut pending).await;
        self.flush(&mut pending).await?;
        if result.as_ref().is_err_and(|e| !e.fenced()) {
            self.make_safe(run, arm_id, arm.as_ref()).await;
        }
        result
    }

    pub(super) async fn task(
        &self,
        problem: &LabProblem,
        runs: &[(Run, RunPlan)],
        r: usize,
        t: usize,
        resource: Option<usize>,
    ) -> Result<(), JobError> {
        let (run, plan) = &runs[r];
        let instrument = resource.map(|res| problem.resources[res].id.clone());
        let single = resource.is_some_and(|res| problem.resources[res].capacity == 1);
        let interlock = match (&instrument, single) {
            (Some(id), true) => Some(lock(&self.interlocks).entry(id.clone()).or_default().clone()),
            _ => None,
        };
        let _held = match interlock {
            Some(l) => Some(l.lock_owned().await),
            None => None,
        };
        let driver: Option<Arc<dyn Instrument>> =
            instrument.as_ref().and_then(|id| self.lab.instruments.get(id).cloned());
        let result = self.task_commands(run, plan, t, &instrument, &driver, None).await;
        if let (Err(e), Some(id), Some(d)) = (&result, &instrument, &driver) {
            if !e.fenced() {
                self.make_safe(run, id, d.as_ref()).await;
            }
        }
        result
    }

    /// Carries out one task's commands on its instrument (or by a technician's hand); with
    /// `resume_at`, a task that was under way when labd stopped goes on from that command.
    pub(super) async fn task_commands(
        &self,
        run: &Run,
        plan: &RunPlan,
        t: usize,
        instrument: &Option<String>,
        driver: &Option<Arc<dyn Instrument>>,
        resume_at: Option<usize>,
    ) -> Result<(), JobError> {
        let task = &plan.tasks[t];
        if resume::was_carried_out(task) {
            return Ok(()); // before labd restarted; its events are in the history already
        }
        let started = Instant::now();
        if resume_at.is_none() {
            let ev = serde_json::json!({"task": t, "label": task.label, "instrument": instrument});
            self.event(run, "task_started", ev).await?;
        }
        let stage = crate::kitting_tasks::stage(task);
        if let Some(stage) = stage {
            self.kitting_stage(run, stage).await?;
        }
        if let (Some(d), Some(class)) = (driver, task.class) {
            self.put_on_bench(plan).await?;
            if class == labware::InstrumentClass::LiquidHandler {
                d.prepare(plan)
                    .await
                    .map_err(|error| JobError::Prepare { instrument: instrument.clone().unwrap_or_default(), error })?;
            }
        }
        // The last command's success, written with the next command's intent (one durable
        // write per command); flushed before anything that waits and at the end of the task.
        let mut pending: Option<String> = None;
        // Commands already carried out with an earlier one (additions a technician does at once),
        // or before labd restarted.
        let mut done_up_to = resume_at.unwrap_or(0);
        for (ci, cmd) in task.commands.iter().enumerate() {
            if ci < done_up_to {
                continue;
            }
            match family(&cmd.op) {
                Family::Timer => {
                    self.flush(&mut pending).await?;
                    if let CommandOp::Wait { duration_s } = cmd.op {
                        tokio::time::sleep(self.config.scale.wall(duration_s)).await;
                    }
                }
                Family::Technician if matches!(cmd.op, CommandOp::AddReagent { .. }) => {
                    self.flush(&mut pending).await?;
                    let n =
                        task.commands[ci..].iter().take_while(|c| matches!(c.op, CommandOp::AddReagent { .. })).count();
                    done_up_to = ci + n;
                    self.add_by_hand(run, t, &task.commands[ci..ci + n]).await?
                }
                Family::Technician => {
                    self.flush(&mut pending).await?;
                    // The same instruction earlier in the task: its n-th occurrence is this one.
                    let nth = task.commands[..ci].iter().filter(|c| c.op == cmd.op).count();
                    self.manual(run, t, &cmd.op, nth).await?
                }
                _ => {
                    let id = instrument
                        .clone()
                        .ok_or_else(|| JobError::Lab(format!("task {t} ({}) has no instrument", task.label)))?;
                    let d = driver.clone().ok_or_else(|| JobError::Lab(format!("instrument {id} is not connected")))?;
                    let sent =
                        self.command(run, t as i64, ci as i64, &id, d.as_ref(), &cmd.op, cmd.repeatable, &mut pending);
                    sent.await?;
                }
            }
        }
        self.flush(&mut pending).await?;
        // A simulated lab's plates keep what this task did should labd restart before the next
        // task (the task counts as done once its `task_finished` event is written, after this).
        if self.lab.keeps_bench() {
            let lab = self.lab.clone();
            if let Err(e) = blocking(move || lab.save_bench()).await {
                tracing::warn!(run = %run.id, error = %e, "cannot save the simulated bench; a restart would lose this task's liquids");
            }
        }
        let device_s = started.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12);
        // Kitting is the lab's work for the run (in its per-run fee), and how long people take
        // to fetch things teaches nothing about instruments.
        if let (Some(id), Some(class), None) = (instrument, task.class, stage) {
            // What the task really took, once per run and task: plans and quotes learn from it
            // (`experience`). A task taken up again after a restart ran only in part: no sample.
            let whole = resume_at.is_none_or(|c| c == 0);
            let took = crate::experience::TaskDuration {
                run_id: run.id.clone(),
                task_id: t as i64,
                instrument: id.clone(),
                class: class.as_str().into(),
                kind: crate::experience::task_kind(task).into(),
                estimated_s: task.duration_s,
                actual_s: device_s,
                at: crate::store::now_ms(),
            };
            if whole {
                let store = self.store.clone();
                blocking(move || store.record_duration(&took))
                    .await
                    .map_err(JobError::store("recording how long the task took"))?;
            }
            let usage = Usage {
                tenant_id: run.tenant_id.clone(),
                run_id: run.id.clone(),
                instrument_class: class.as_str().into(),
                instrument: id.clone(),
                device_seconds: billed_seconds(class, task.duration_s, device_s),
            };
            let store = self.store.clone();
            blocking(move || store.add_usage(&usage)).await.map_err(JobError::store("recording usage for the bill"))?;
        }
        self.event(run, "task_finished", serde_json::json!({"task": t, "device_s": device_s})).await?;
        Ok(())
    }

    /// Appends to the run's history; an error (the store failing past its retries) is the
    /// caller's to surface.
    pub(super) async fn event(&self, run: &Run, kind: &str, payload: serde_json::Value) -> Result<(), JobError> {
        let (store, id, k) = (self.store.clone(), run.id.clone(), kind.to_string());
        blocking(move || store.append_event(&id, &k, &payload.to_string()))
            .await
            .map(|_| ())
            .map_err(JobError::store(format!("recording the run's `{kind}` event")))
    }

    /// Reagent from the lab's stock added by a technician: one intervention listing every
    /// addition of the task. In a simulated lab, the simulated technician's additions reach the
    /// simulated liquid handlers' wells once the intervention is resolved as done.
    pub(super) async fn add_by_hand(
        &self,
        run: &Run,
        task: usize,
        adds: &[protocols::plan::Command],
    ) -> Result<(), JobError> {
        let adds: Vec<(&str, &str, &str, f64)> = adds
            .iter()
            .filter_map(|c| match &c.op {
                CommandOp::AddReagent { reagent, labware, well, volume_ul } => {
                    Some((reagent.as_str(), labware.as_str(), well.as_str(), *volume_ul))
                }
                _ => None,
            })
            .collect();
        let instruction = additions_text(&adds);
        let i = self.ask_once(run, task, "add reagent", &instruction, 0).await?;
        match self.await_resolution(&i).await?.as_str() {
            "abort" => Err(JobError::Aborted(format!("`{instruction}`"))),
            _ => {
                let poured: Vec<(&str, &str, &str, f64)> = adds.iter().map(|&(r, l, w, ul)| (l, w, r, ul)).collect();
                self.pour(&poured).await
            }
        }
    }

    /// A manual step: a technician does it and says so in the console (an intervention).
    /// `nth`: how many times the task gives the same instruction before this one.
    pub(super) async fn manual(&self, run: &Run, task: usize, op: &CommandOp, nth: usize) -> Result<(), JobError> {
        let CommandOp::Manual { instruction } = op else { return Ok(()) };
        let i = self.ask_once(run, task, "manual step", instruction, nth).await?;
        match self.await_resolution(&i).await?.as_str() {
            "abort" => Err(JobError::Aborted(format!("the manual step `{instruction}`"))),
            _ => Ok(()),
        }
    }

    /// Asks a technician (an intervention), unless labd already asked before it restarted: the
    /// `nth` earlier request of the task with the same words is this one (open: still waited
    /// for; resolved: the answer stands). Returns the intervention's id.
    async fn ask_once(&self, run: &Run, task: usize, what: &str, todo: &str, nth: usize) -> Result<String, JobError> {
        let (store, id, what, todo) = (self.store.clone(), run.id.clone(), what.to_string(), todo.to_string());
        let i = blocking(move || {
            let asked: Vec<_> = store
                .interventions(None, false)?
                .into_iter()
                .filter(|i| i.run_id == id && i.task_id == Some(task as i64) && i.what == what && i.todo == todo)
                .collect();
            match asked.into_iter().nth(nth) {
                Some(i) => Ok(i),
                None => store.open_intervention(&id, Some(task as i64), None, &what, &todo),
            }
        })
        .await?;
        Ok(i.id)
    }

    /// The deck slot a liquid handler at one of `nests` puts `plate` in for this run (the same
    /// deck its driver loads), for movers that place plates on a robot's deck.
    fn deck_slot(&self, plan: &protocols::plan::RunPlan, plate: &str, nests: [&str; 2]) -> Option<u32> {
        let lh = self.lab.site.instruments.iter().find(|i| {
            i.class == labware::InstrumentClass::LiquidHandler
                && nests.iter().any(|n| i.nest_ids().iter().any(|x| x == n))
        })?;
        let deck =
            devices::deck::Deck::for_plan(plan, &labware::Library::shipped(), lh.deck_slots.unwrap_or(11)).ok()?;
        deck.get(plate).map(|p| p.slot)
    }

    /// Holds a run in `awaiting_recovery` while a person decides on a step left in doubt, and
    /// lets it go on after (a run cancelled meanwhile stays cancelling).
    pub(super) async fn hold(&self, run_id: &str, held: bool, why: &str) -> Result<(), JobError> {
        let (store, id, why) = (self.store.clone(), run_id.to_string(), why.to_string());
        if blocking(move || store.hold_run(&id, held, Some(&why))).await?.is_some() {
            tracing::info!(run = %run_id, held, "run held for recovery");
        }
        Ok(())
    }

    pub(super) async fn await_resolution(&self, id: &str) -> Result<String, JobError> {
        // Woken by this process's writes (a technician resolving it through this node's API);
        // a resolution through another node is seen within a second.
        let mut written = self.store.written();
        loop {
            let (store, iid) = (self.store.clone(), id.to_string());
            let i = blocking(move || store.intervention(&iid)).await?;
            if i.state != "open" {
                return Ok(i.state);
            }
            tokio::select! {
                _ = written.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes a success that was waiting for the next command's intent.
    pub(super) async fn flush(&self, pending: &mut Option<String>) -> Result<(), JobError> {
        let Some(id) = pending.take() else { return Ok(()) };
        let began = Instant::now();
        let store = self.store.clone();
        blocking(move || store.record_outcome(&id, "ok", None)).await?;
        if let Some(t) = &self.config.flush_timings {
            lock(t).push(began.elapsed());
        }
        Ok(())
    }

    /// Sends one command with the journal: intent first, outcome after. Resends only what the
    /// error allows; an uncertain outcome of a command that is not safe to repeat becomes an
    /// intervention for a technician (done / redo / abort).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn command(
        &self,
        run: &Run,
        task: i64,
        index: i64,
        instrument: &str,
        driver: &dyn Instrument,
        op: &CommandOp,
        repeatable: bool,
        pending: &mut Option<String>,
    ) -> Result<(), JobError> {
        let span = tracing::info_span!("command", run = %run.id, instrument, index, op = op.name());
        tracing::Instrument::instrument(async move {
        let mut tries = 0;
        loop {
            // Paused or stopped by a technician: nothing is sent (nor journaled) until resumed.
            self.board.halt.wait_clear().await;
            let began = Instant::now();
            let intent = Intent {
                run_id: run.id.clone(),
                task_id: task,
                command_index: index,
                instrument: instrument.into(),
                op_json: serde_json::to_string(op).unwrap_or_default(),
                repeatable,
            };
            let (store, previous) = (self.store.clone(), pending.take());
            // On this task's own thread (`block_in_place`), not handed to the blocking pool:
            // under load, waking this task again after a hand-off costs more than the write.
            let (attempt, in_store) = crate::store::offload::leave_worker(|| {
                let entered = Instant::now();
                store.record_ok_then_intent(previous.as_deref(), &intent).map(|a| (a, entered.elapsed()))
            })?;
            let journal_intent = began.elapsed();
            let mut result = match driver.start(op).await {
                Ok(exec) => exec.finish().await,
                Err(e) => Err(e),
            };
            let sent = Instant::now();
            // An emergency stop while it ran: whatever the driver says, how far it got is for a
            // person to judge.
            let cut_short = result.is_err() && matches!(self.board.halt.get(), crate::halt::Halt::Stopped { .. });
            // A command not safe to repeat whose outcome the link lost (a timeout, a dropped
            // connection): the instrument is asked first; a person only where it cannot say.
            let mut settled: Option<String> = None;
            let mut not_done = false;
            if let Err(e) = result.as_ref().map_err(Clone::clone) {
                if !cut_short && !repeatable && e.recovery() == Recovery::Indeterminate {
                    let asked = tokio::time::timeout(Duration::from_secs(30), driver.settle(op)).await;
                    let said = |w: &str| format!("settled by asking {instrument} after `{e}`: {w}");
                    match asked {
                        Ok(Ok(devices::Settled::Happened(w))) => {
                            settled = Some(said(&w));
                            result = Ok(devices::Outcome::default());
                        }
                        Ok(Ok(devices::Settled::NotDone(w))) => {
                            settled = Some(said(&w));
                            not_done = true;
                        }
                        Ok(Ok(devices::Settled::Rest(rest, w))) => {
                            settled = Some(said(&format!("{w}; finished")));
                            result = match driver.start(&rest).await {
                                Ok(exec) => exec.finish().await,
                                Err(e) => Err(e),
                            };
                        }
                        Ok(Ok(devices::Settled::Unknown(_))) | Ok(Err(_)) | Err(_) => {}
                    }
                    tracing::info!(run = %run.id, instrument, error = %e, settled = ?settled, "command in doubt settled with the instrument");
                }
            }
            let (outcome, err) = match &result {
                _ if not_done => ("not_done", settled.clone()),
                Err(e) if cut_short => ("unknown", Some(format!("emergency stop: {e}"))),
                Ok(_) => ("ok", settled.clone()),
                Err(e) if e.recovery() == Recovery::Indeterminate => ("unknown", Some(e.to_string())),
                Err(e) => ("failed", Some(e.to_string())),
            };
            let measured = result.as_ref().is_ok_and(|o| !o.measurements.is_empty());
            if outcome == "ok" && !measured && settled.is_none() {
                *pending = Some(attempt.id.clone()); // written with the next intent
            } else {
                let (store, aid, e2) = (self.store.clone(), attempt.id.clone(), err.clone());
                blocking(move || store.record_outcome(&aid, outcome, e2.as_deref())).await?;
            }
            let family = if task < 0 { "robot arm" } else { family_name(op) };
            crate::metrics::with(|m| {
                m.commands.with_label_values(&[family, outcome]).inc();
                m.command_seconds.with_label_values(&[family]).observe(began.elapsed().as_secs_f64());
                m.journal_seconds.observe(journal_intent.as_secs_f64());
            });
            if let Some(t) = &self.config.timings {
                if let Ok(mut t) = t.lock() {
                    t.push(CommandTiming {
                        family,
                        journal: journal_intent + sent.elapsed(),
                        store: in_store,
                        instrument: sent.duration_since(began + journal_intent),
                        total: began.elapsed(),
                    });
                }
            }
            if not_done && tries < self.config.retries {
                tries += 1; // it never happened: sent again
                continue;
            }
            match result {
                Ok(out) => {
                    for m in out.measurements {
                        let row = ResultRow {
                            id: crate::store::new_id("res"),
                            run_id: run.id.clone(),
                            task_id: task,
                            labware: m.labware.split_once('.').map_or(m.labware.clone(), |(_, n)| n.to_string()),
                            kind: m.kind,
                            wells: m.wells,
                            wavelengths_nm: m.wavelengths_nm,
                            values: m.values,
                            unit: m.unit,
                            created_at: crate::store::now_ms(),
                        };
                        let store = self.store.clone();
                        blocking(move || store.add_result(&row)).await?;
                    }
                    return Ok(());
                }
                Err(e) if e.may_resend(repeatable) && tries < self.config.retries => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if cut_short || e.recovery() == Recovery::Indeterminate => {
                    let what = match self.board.halt.get() {
                        crate::halt::Halt::Stopped { by, reason } if cut_short => {
                            format!("{instrument}: emergency stop by {by} ({reason}) while this step ran: {e}")
                        }
                        _ => format!("{instrument}: {e}"),
                    };
                    let what = super::failure::in_tenant_words(&what, &run.id);
                    let (store, id, at, asked) =
                        (self.store.clone(), run.id.clone(), instrument.to_string(), what.clone());
                    let i = blocking(move || {
                        store.open_intervention(
                            &id,
                            (task >= 0).then_some(task),
                            Some(&at),
                            &asked,
                            "check whether the step happened: done if it did, redo to send it again, abort to stop the run",
                        )
                    })
                    .await?;
                    self.hold(&run.id, true, &what).await?;
                    let decided = self.await_resolution(&i.id).await?;
                    if decided != "abort" {
                        self.hold(&run.id, false, &format!("a person decided `{decided}` for: {what}")).await?;
                    }
                    match decided.as_str() {
                        "done" => return Ok(()),
                        "redo" => continue,
                        _ => {
                            return Err(JobError::Instrument { instrument: instrument.into(), error: e, aborted: true })
                        }
                    }
                }
                Err(e) => return Err(JobError::Instrument { instrument: instrument.into(), error: e, aborted: false }),
            }
        }
        }, span)
        .await
    }
}
