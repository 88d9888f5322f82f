//! The plan while it runs: what changed (instruments down, in maintenance or back, overruns,
//! reservations, arrivals), the repair, the new generation of jobs, and runs reaching their final
//! state.

use super::*;

/// A run ending this many device seconds after its promise still kept it (the clock's grain).
const PROMISE_GRACE_S: f64 = 1.0;

impl Executor {
    /// Bench-time reservations in the plan's terms: per resource, (tenant, device-time window
    /// relative to `t0_ms`). A reservation names an instrument, or a class (its first
    /// instrument); ones that have ended are left out.
    pub(super) async fn reservations(
        &self,
        p: &LabProblem,
        t0_ms: i64,
    ) -> Result<Vec<Vec<(String, Window)>>, ExecutorError> {
        let store = self.store.clone();
        let all = blocking(move || store.reservations(None)).await?;
        let now = crate::store::now_ms();
        let mut out = vec![Vec::new(); p.resources.len()];
        let device_s = |ms: i64| (ms - t0_ms) as f64 / 1000.0 / self.config.scale.0.max(1e-12);
        for r in all.into_iter().filter(|r| r.ends_at > now) {
            let named = |id: &str| p.resources.iter().position(|x| x.id == id);
            let first_of_class = || {
                let inst = self.lab.site.instruments.iter().find(|i| i.class.as_str() == r.instrument_class)?;
                named(&inst.id)
            };
            if let Some(i) = named(&r.instrument_class).or_else(first_of_class) {
                let w = Window { start: device_s(r.starts_at).max(0.0), end: device_s(r.ends_at) };
                out[i].push((r.tenant_id, w));
            }
        }
        Ok(out)
    }

    /// Device seconds since the session's plan began.
    /// Started tasks running well past their planned end (5% of their duration, at least 30 s):
    /// each is planned to need about as long again (at least 10 more minutes). Checked every
    /// `probe_every`, so a task that keeps overrunning is re-planned at that pace, not faster.
    pub(super) fn overruns(&self, s: &Session, dispatch: &Arc<Mutex<Dispatch>>) -> Vec<Change> {
        let now = self.now_s(s);
        // Still running by the job's own signal, not by the reports taken in so far: a report
        // can be on its way while what follows the task has already started.
        let running: Vec<String> = {
            let d = lock(dispatch);
            d.started.iter().filter(|(_, done)| done.borrow().is_none()).map(|(k, _)| k.clone()).collect()
        };
        let mut out = Vec::new();
        for key in running {
            if s.done.contains_key(&key) {
                continue;
            }
            let Some(Job::Task { run, task, .. }) = s.jobs.get(&key) else { continue };
            let Some(slot) = s.planner.schedule.tasks.get(*run).and_then(|t| t.get(*task)) else { continue };
            let duration = (slot.end - slot.start).max(1.0);
            if now > slot.end + (0.05 * duration).max(30.0) {
                // How much longer: an instrument's work is late by a share of its estimate (its
                // pace is known); a person's by anything, so the plan assumes the worst.
                let by_hand = s
                    .runs
                    .get(*run)
                    .and_then(|a| a.plan.tasks.get(*task))
                    .is_some_and(|t| t.class == Some(labware::InstrumentClass::Technician));
                let more = if by_hand { duration.max(600.0) } else { (0.1 * duration).max(60.0) };
                out.push(Change::Overrun { run: *run, task: *task, expected_end: now + more });
            }
        }
        out
    }

    pub(super) fn now_s(&self, s: &Session) -> f64 {
        s.t0.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12)
    }

    pub(super) fn on_report(
        &self,
        r: Report,
        session: Option<&mut Session>,
        out: &mut BTreeMap<String, Out>,
        events: &mut Vec<Change>,
    ) {
        match r {
            Report::Done { session: sid, key, run, result, at } => {
                let Some(s) = session.filter(|s| s.id == sid) else { return };
                if let Err(why) = &result {
                    if !matches!(why, failure::JobError::Cascaded) {
                        let id = s.runs.get(run).map(|r| r.run.id.clone()).unwrap_or_default();
                        s.failures.entry(run).or_insert_with(|| failure::in_tenant_words(&why.to_string(), &id));
                    }
                }
                // The plan still expects it to run until its guessed end: pull the rest in.
                if s.overrunning.remove(&key) {
                    if let Some(Job::Task { run, task, .. }) = s.jobs.get(&key) {
                        events.push(Change::Finished { run: *run, task: *task, at });
                    }
                }
                s.done.insert(key, result.is_ok());
            }
            Report::Down { instrument, why } => {
                if !out.contains_key(&instrument) {
                    tracing::warn!(instrument = %instrument, why = %why, "instrument down; its waiting work moves to another instrument");
                    out.insert(instrument.clone(), Out::Down);
                    self.announce(&instrument, Some(format!("down: {why}")));
                    events.push(Change::Down(instrument, why));
                }
            }
        }
    }

    /// An instrument became unavailable (`Some(why)`, `down: …` or `maintenance: …`) or is back:
    /// the board shows it and technicians hear it on the instrument's status topic.
    pub(super) fn announce(&self, id: &str, why: Option<String>) {
        self.board.set_unavailable(id, why.clone());
        let (state, detail) = match why.as_deref().and_then(|w| w.split_once(": ")) {
            Some((state, detail)) => (state.to_string(), detail.to_string()),
            None => ("available".to_string(), String::new()),
        };
        tracing::info!(instrument = id, state = %state, detail = %detail, "instrument status");
        let message = crate::telemetry::envelope::device_status(
            &self.lab.site.site.name,
            id,
            &state,
            &detail,
            crate::store::now_ms(),
        );
        if let Err(e) = self.store.outbox_put(&message) {
            tracing::error!(instrument = id, error = %e, "cannot queue the instrument's status for MQTT");
        }
    }

    /// Maintenance flags live in the store (technicians set them through the API); the plan,
    /// the board and the status topics follow them.
    pub(super) async fn sync_maintenance(
        &self,
        out: &mut BTreeMap<String, Out>,
        events: &mut Vec<Change>,
    ) -> Result<(), ExecutorError> {
        let store = self.store.clone();
        let flagged = blocking(move || store.maintenance()).await?;
        let flagged = self.release_attended(flagged).await?;
        for m in &flagged {
            if out.get(&m.instrument) != Some(&Out::Maintenance) {
                if !out.contains_key(&m.instrument) {
                    events.push(Change::Down(m.instrument.clone(), "maintenance".into()));
                }
                out.insert(m.instrument.clone(), Out::Maintenance);
                self.announce(&m.instrument, Some(format!("maintenance: {}", m.reason)));
            }
        }
        let ended: Vec<String> = out
            .iter()
            .filter(|(id, kind)| **kind == Out::Maintenance && !flagged.iter().any(|m| &m.instrument == *id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            out.remove(&id);
            self.announce(&id, None);
            events.push(Change::Up(id));
        }
        Ok(())
    }

    /// Instruments that went down are asked again now and then; one that answers is back.
    pub(super) async fn probe_down(&self, out: &mut BTreeMap<String, Out>, events: &mut Vec<Change>) {
        let down: Vec<String> = out.iter().filter(|(_, k)| **k == Out::Down).map(|(id, _)| id.clone()).collect();
        for id in down {
            let Some(d) = self.lab.instruments.get(&id) else { continue };
            if matches!(tokio::time::timeout(Duration::from_secs(5), d.status()).await, Ok(Ok(st)) if st.state != State::Offline)
            {
                tracing::info!(instrument = %id, "instrument answers again; back in the plan");
                out.remove(&id);
                self.announce(&id, None);
                events.push(Change::Up(id));
            }
        }
    }

    /// Applies what changed to the plan: pins what has started (and tasks a plate is already on
    /// its way to), repairs around the rest, dispatches the new plan's jobs, then announces runs
    /// whose end moved.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn replan(
        &self,
        s: &mut Session,
        changes: Vec<Change>,
        dispatch: &Arc<Mutex<Dispatch>>,
        reports: &mpsc::Sender<Report>,
        retry_at: &mut HashMap<String, Instant>,
        report: &mut BatchReport,
    ) {
        // Nothing may start while the plan is being repaired: a job that started after the
        // pins were taken would be neither pinned nor replaced, and the new plan could put
        // another task on its instrument at the same time. Retiring the current generation
        // freezes the starts; `respawn`, which always follows, makes the next one.
        let (started, finished): (Vec<String>, HashSet<String>) = {
            let mut d = lock(dispatch);
            d.generation += 1;
            let finished = d.started.iter().filter(|(_, done)| done.borrow().is_some()).map(|(k, _)| k.clone());
            (d.started.keys().cloned().collect(), finished.collect())
        };
        // A task seen overrunning may have finished since (and its plate moved on): not re-planned.
        let changes: Vec<Change> = changes
            .into_iter()
            .filter(|c| !matches!(c, Change::Overrun { run, task, .. } if finished.contains(&task_key(*run, *task))))
            .collect();
        for key in &started {
            match s.jobs.get(key) {
                Some(Job::Task { run, task, .. }) => s.planner.pin_task(*run, *task),
                Some(Job::Move(m)) => s.planner.pin_en_route(m),
                _ => {}
            }
        }
        let before: Vec<f64> = s.planner.schedule.completions();
        let improve = self.config.repair_budget;
        let mut because = Vec::new();
        for change in changes {
            if let Some(r) = reason(s, &change) {
                because.push(r);
            }
            let now = self.now_s(s);
            let resource = |id: &str| s.planner.problem.resources.iter().position(|r| r.id == id);
            let event = match &change {
                Change::Arrived(a) => {
                    ReplanEvent::RunArrived(scheduler::lab::Run { release: now + a.ready_after_s, ..a.model.clone() })
                }
                Change::Down(id, _) => match resource(id) {
                    Some(r) => ReplanEvent::InstrumentDown { resource: r, until: now + DOWN_HORIZON_S },
                    None => continue,
                },
                Change::Up(id) => match resource(id) {
                    Some(r) => ReplanEvent::InstrumentUp { resource: r },
                    None => continue,
                },
                Change::Reservations(r) => ReplanEvent::ReservationsChanged(r.clone()),
                Change::Overrun { run, task, expected_end } => {
                    ReplanEvent::TaskOverrun { run: *run, task: *task, expected_end: *expected_end }
                }
                Change::Finished { run, task, at } => ReplanEvent::TaskFinished { run: *run, task: *task, at: *at },
            };
            // The repair works on a copy: if it fails, the plan in force stays as it was.
            let mut planner = s.planner.clone();
            if let Change::Arrived(a) = &change {
                planner.set_margin_for_arrivals(a.margin);
                // Runs still waiting are planned with what the lab has learned since they came;
                // each arrival corrects them all, so the last one admitted says what with.
                if s.runs.last().is_some_and(|last| !last.experience.corrects_as(&a.experience)) {
                    for (i, r) in s.runs.iter().enumerate() {
                        let corrected = a.experience.corrected(&r.plan);
                        planner.reestimate(i, &corrected.tasks.iter().map(|t| t.duration_s).collect::<Vec<_>>());
                    }
                }
            }
            let began = Instant::now();
            let (planner, result) = blocking(move || {
                let r = planner.handle(now, event, improve);
                (planner, r)
            })
            .await;
            crate::metrics::with(|m| m.repair_seconds.observe(began.elapsed().as_secs_f64()));
            // A repair that breaks a constraint is not dispatched: the plan in force stays. A plan
            // may overbook people, never instruments: technicians over their number (a manual
            // step overrunning into the next) only means one step waits for a free pair of hands,
            // while keeping the old plan would hold every later job behind the overrun.
            let result = result.and_then(|r| {
                let violations = scheduler::lab::check::validate(&planner.problem, &planner.schedule);
                let people = |v: &scheduler::lab::check::LabViolation| {
                    matches!(v, scheduler::lab::check::LabViolation::Capacity { resource, .. }
                        if planner.problem.resources.get(*resource).is_some_and(|x| x.class == labware::InstrumentClass::Technician))
                };
                match violations.iter().find(|v| !people(v)) {
                    Some(v) => Err(scheduler::lab::ModelError(format!("the repaired plan breaks a constraint: {v:?}"))),
                    None => Ok(r),
                }
            });
            crate::metrics::with(|m| {
                m.repairs.with_label_values(&[if result.is_ok() { "taken" } else { "rejected" }]).inc()
            });
            if let Err(e) = result {
                tracing::warn!(after = change_name(&change), violation = %e.0, "repair not taken; the plan in force stays");
                match change {
                    // Cannot be fitted in right now (instruments down): tried again shortly.
                    Change::Arrived(a) => {
                        retry_at.insert(a.run.id.clone(), Instant::now() + Duration::from_secs(5));
                    }
                    Change::Down(id, _) => {
                        tracing::warn!(instrument = %id, why = %e.0, "no plan avoids the instrument; work for it waits until it is back")
                    }
                    Change::Up(_) | Change::Reservations(_) | Change::Overrun { .. } | Change::Finished { .. } => {}
                }
                continue;
            }
            s.planner = planner;
            if let Change::Overrun { run, task, .. } = change {
                s.overrunning.insert(task_key(run, task));
            }
            if let Change::Arrived(a) = change {
                if let Err(e) = self.admitted(s, *a, report).await {
                    tracing::error!(error = %e, "cannot admit a run");
                }
            }
        }
        // Starts resume with the new plan's jobs; the announcements can follow.
        self.respawn(s, dispatch, reports);
        let ends = s.planner.schedule.completions();
        for (i, b) in before.iter().enumerate() {
            let after = ends.get(i).copied().unwrap_or(0.0);
            if !s.closed[i] && (after - b).abs() > 60.0 {
                let told = crate::reasons::told_to(&because, &s.runs[i].run.tenant_id);
                let payload = serde_json::json!({
                    "planned_end_s": after, "was_s": b, "because": told,
                    "planned_end_at": self.clock_at(s, after), "was_at": self.clock_at(s, *b),
                });
                if let Err(e) = self.event(&s.runs[i].run, "rescheduled", payload).await {
                    tracing::error!(run = %s.runs[i].run.id, error = %e, "cannot tell the run that its end moved");
                }
            }
            // The plan now ends it after its promise: the tenant hears it once, with why.
            let Some(promised) = s.planner.promise(i) else { continue };
            if !s.closed[i] && after > promised + PROMISE_GRACE_S && *b <= promised + PROMISE_GRACE_S {
                let told = crate::reasons::told_to(&because, &s.runs[i].run.tenant_id);
                let payload = serde_json::json!({
                    "planned_end_s": after, "promised_s": promised, "late_by_s": after - promised, "because": told,
                    "planned_end_at": self.clock_at(s, after), "promised_at": self.clock_at(s, promised),
                });
                tracing::warn!(run = %s.runs[i].run.id, tenant = %s.runs[i].run.tenant_id, late_by_s = after - promised, "a run's promise is at risk");
                if let Err(e) = self.event(&s.runs[i].run, "promise_at_risk", payload).await {
                    tracing::error!(run = %s.runs[i].run.id, error = %e, "cannot tell the run that its promise is at risk");
                }
            }
        }
    }

    /// Turns the current plan into jobs. Jobs that have started keep going; the rest of the
    /// previous plan retires (its waiting jobs see a new generation and stop).
    pub(super) fn respawn(&self, s: &mut Session, dispatch: &Arc<Mutex<Dispatch>>, reports: &mpsc::Sender<Report>) {
        let planned = jobs(&s.planner.problem, &s.planner.schedule);
        let problem = Arc::new(s.planner.problem.clone());
        let runs: Arc<Vec<(Run, RunPlan)>> = Arc::new(s.runs.iter().map(|a| (a.run.clone(), a.plan.clone())).collect());
        let mut d = lock(dispatch);
        d.generation += 1;
        let generation = d.generation;
        let mut done: Vec<watch::Receiver<Option<bool>>> = Vec::with_capacity(planned.len());
        let mut slots = Vec::new();
        for k in s.keys.iter_mut() {
            k.clear();
        }
        for job in planned {
            let key = job_key(&job.job);
            s.jobs.insert(key.clone(), job.job.clone());
            if let Some(keys) = s.keys.get_mut(job.run) {
                keys.push(key.clone());
            }
            if let Some(rx) = d.started.get(&key) {
                done.push(rx.clone());
                continue;
            }
            let (tx, rx) = watch::channel(None);
            let waits: Vec<(watch::Receiver<Option<bool>>, bool)> =
                job.deps.iter().filter_map(|&(i, c)| done.get(i).map(|w| (w.clone(), c))).collect();
            done.push(rx.clone());
            if let Some(slot) = self.slot(s, &problem, &job) {
                slots.push((key.clone(), slot));
            }
            let (gates, probe) = self.guards(s, &job.job);
            let ctx = JobCtx {
                session: s.id,
                generation,
                key,
                job,
                tx,
                me: rx,
                waits,
                t0: s.t0,
                problem: problem.clone(),
                runs: runs.clone(),
                dispatch: dispatch.clone(),
                reports: reports.clone(),
                gates,
                probe,
                stopping: d.stopping.clone(),
            };
            let me = self.clone();
            d.tasks.spawn(async move { me.run_job(ctx).await });
        }
        drop(d);
        self.board.replan(slots);
    }

    /// What a job waits on before it starts: the instruments it uses must be available (`gates`:
    /// a task's instrument; a move's arm and the instrument it takes the plate to); a plate
    /// leaving for an instrument first checks that the instrument answers (`probe`).
    pub(super) fn guards(&self, s: &Session, job: &Job) -> (Vec<String>, Option<String>) {
        let p = &s.planner.problem;
        match job {
            Job::Task { resource: Some(r), on_arm: false, .. } => {
                (p.resources.get(*r).map(|r| r.id.clone()).into_iter().collect(), None)
            }
            Job::Move(m) => {
                let arm = p.arms.get(m.arm).map(|a| a.id.clone());
                let target = (m.to != p.storage)
                    .then(|| s.planner.destination(m))
                    .flatten()
                    .and_then(|t| s.planner.schedule.tasks[m.run][t].resource)
                    .and_then(|r| p.resources.get(r))
                    .map(|r| r.id.clone())
                    .filter(|id| self.lab.instruments.contains_key(id));
                (arm.into_iter().chain(target.clone()).collect(), target)
            }
            _ => (Vec::new(), None),
        }
    }

    /// The clock time (RFC 3339, UTC) at `device_s` device seconds into the session's plan.
    pub(super) fn clock_at(&self, s: &Session, device_s: f64) -> String {
        crate::clock::rfc3339(self.wall_ms(s, device_s))
    }

    /// The wall-clock time (ms since the epoch) of a session's device time.
    pub(super) fn wall_ms(&self, s: &Session, device_s: f64) -> i64 {
        let wall_ms = self.config.scale.wall(device_s.max(0.0)).as_secs_f64() * 1000.0;
        s.t0_ms.saturating_add(wall_ms as i64)
    }

    /// A wall-clock time (ms since the epoch) as the session's device time.
    pub(super) fn device_s_at(&self, s: &Session, wall_ms: i64) -> f64 {
        (wall_ms - s.t0_ms) as f64 / 1000.0 / self.config.scale.0.max(1e-12)
    }

    /// The job as a slot on the technicians' board.
    pub(super) fn slot(&self, s: &Session, problem: &LabProblem, job: &Planned) -> Option<Slot> {
        let (run, plan) = s.runs.get(job.run).map(|a| (&a.run, &a.plan))?;
        let ms = |device_s: f64| s.t0_ms + (self.config.scale.wall(device_s).as_secs_f64() * 1000.0) as i64;
        let (lane, kind, label, end) = match &job.job {
            Job::Task { task, resource, on_arm, .. } => {
                let lane = match (resource, on_arm) {
                    (Some(r), true) => problem.arms.get(*r).map(|a| a.id.clone()),
                    (Some(r), false) => problem.resources.get(*r).map(|r| r.id.clone()),
                    (None, _) => None,
                }?;
                let end = s.planner.schedule.tasks[job.run][*task].end;
                (lane, "task", plan.tasks.get(*task).map(|t| t.label.clone()).unwrap_or_default(), end)
            }
            Job::Move(m) => {
                let from = problem.nests.get(m.from).map_or("?", |n| n.id.as_str());
                let to = problem.nests.get(m.to).map_or("?", |n| n.id.as_str());
                (problem.arms.get(m.arm)?.id.clone(), "move", format!("{from} → {to}"), m.end)
            }
        };
        Some(Slot {
            lane,
            run_id: run.id.clone(),
            tenant_id: run.tenant_id.clone(),
            kind,
            label,
            planned_start_ms: ms(job.start),
            planned_end_ms: ms(end),
            started_ms: None,
            finished_ms: None,
            state: "planned",
        })
    }

    /// The `promise_broken` event of a run ending now, if now is after its promise.
    fn promise_broken(&self, s: &Session, promised: f64) -> Option<serde_json::Value> {
        let now = self.now_s(s);
        (now > promised + PROMISE_GRACE_S).then(|| {
            serde_json::json!({
                "promised_s": promised, "finished_s": now, "late_by_s": now - promised,
                "promised_at": self.clock_at(s, promised), "finished_at": self.clock_at(s, now),
                "because": "its work took longer than planned or waited for an instrument (see its promise_at_risk and rescheduled events)",
            })
        })
    }

    /// Runs whose every job has finished reach their final state.
    pub(super) async fn close_finished(&self, s: &mut Session, report: &mut BatchReport) -> Result<(), ExecutorError> {
        for i in 0..s.runs.len() {
            if s.closed[i] || !s.keys[i].iter().all(|k| s.done.contains_key(k)) {
                continue;
            }
            let (store, id) = (self.store.clone(), s.runs[i].run.id.clone());
            let failure = s.failures.get(&i).cloned();
            let (plan_json, tenant) = (s.runs[i].run.plan_json.clone(), s.runs[i].run.tenant_id.clone());
            let lab = self.lab.clone();
            // Before the final state, which closes the run's event log.
            let broken = s.planner.promise(i).and_then(|p| self.promise_broken(s, p));
            let late = broken.as_ref().map(|b| b["late_by_s"].as_f64().unwrap_or(0.0));
            let (state, reason, restock) = blocking(move || {
                let cancelling = store.run(None, &id).is_ok_and(|r| r.state == RunState::Cancelling);
                let (state, reason) = match (failure, cancelling) {
                    (_, true) => {
                        (RunState::Cancelled, Some("cancelled; its plates were returned to storage".to_string()))
                    }
                    (None, false) => (RunState::Succeeded, None),
                    (Some(why), false) => (RunState::Failed, Some(why)),
                };
                // Before the final state: a store failure here is tried again with it, and each
                // of these happens once per run whatever happens.
                let restock = crate::material::run_ended(store.as_ref(), &id, &tenant, &plan_json, state, &lab.site)?;
                if let (RunState::Succeeded, Some(payload)) = (state, &broken) {
                    store.append_event(&id, "promise_broken", &payload.to_string())?;
                }
                store.set_run_state(&id, state, reason.as_deref()).map(|_| (state, reason, restock))
            })
            .await?;
            for c in &restock {
                tracing::warn!(item = %c.load_name, on_hand = c.on_hand, reorder_at = c.reorder_at, "reorder: a consumable is at or below its reorder point");
            }
            s.closed[i] = true; // only once its final state is stored: else tried again
            crate::metrics::with(|m| m.runs_ended.with_label_values(&[state.as_str()]).inc());
            if state == RunState::Succeeded && s.planner.promise(i).is_some() {
                let outcome = if late.is_some() { "broken" } else { "kept" };
                crate::metrics::with(|m| m.promises.with_label_values(&[outcome]).inc());
                if let Some(late_by_s) = late {
                    let run = &s.runs[i].run;
                    tracing::warn!(run = %run.id, tenant = %run.tenant_id, late_by_s, "a run finished after its promise");
                }
            }
            let run = &s.runs[i].run;
            match state {
                RunState::Succeeded => {
                    tracing::info!(run = %run.id, tenant = %run.tenant_id, state = %state, "run ended")
                }
                _ => {
                    tracing::warn!(run = %run.id, tenant = %run.tenant_id, state = %state, reason = reason.as_deref().unwrap_or(""), "run ended")
                }
            }
            report.moves += s.keys[i].iter().filter(|k| k.starts_with("m:")).count() as u64;
            report.runs.push((s.runs[i].run.id.clone(), state, reason));
        }
        Ok(())
    }
}
