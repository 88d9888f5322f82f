//! Admission: which queued runs may start now (the cell's claims, the tenant's quotas, whether
//! this site can run them at all), and a run joining the plan.

use super::*;

impl Executor {
    /// Queued runs that may start now: within their tenant's concurrent-run quota and
    /// device-hour quota, and runnable on this site at all (else failed with the reason).
    pub(super) async fn admit(
        &self,
        site: &LabProblem,
        session: Option<&Session>,
        retry_at: &mut HashMap<String, Instant>,
        report: &mut BatchReport,
    ) -> Result<Vec<Admitted>, ExecutorError> {
        let store = self.store.clone();
        let mut queued = blocking(move || store.runs(None, &[RunState::Queued])).await?;
        crate::metrics::with(|m| m.runs_queued.set(queued.len() as i64));
        if let Some(cell) = &self.config.cell {
            self.claim(site, cell, &mut queued).await?;
            queued.retain(|r| r.cell.as_ref() == Some(cell));
        }
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        queued.sort_by_key(|r| r.submitted_at);
        let mut active: HashMap<String, i64> = HashMap::new();
        if let Some(s) = session {
            for (i, a) in s.runs.iter().enumerate() {
                if !s.closed[i] {
                    *active.entry(a.run.tenant_id.clone()).or_default() += 1;
                }
            }
        }
        let month = crate::clock::month_start_ms(crate::store::now_ms());
        // Each tenant's record and usage this month, read once per admission round.
        let mut tenants: HashMap<String, (crate::store::Tenant, f64)> = HashMap::new();
        let mut out = Vec::new();
        // Plans use estimates corrected by what tasks really took, read once per round.
        let mut experience: Option<crate::experience::Experience> = None;
        for mut run in queued {
            if retry_at.get(&run.id).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            if !tenants.contains_key(&run.tenant_id) {
                let (store, tenant_id) = (self.store.clone(), run.tenant_id.clone());
                let read = blocking(move || {
                    let t = store.tenant(&tenant_id)?;
                    let used: f64 = store.usage(Some(&tenant_id), month)?.iter().map(|u| u.device_seconds).sum();
                    Ok::<_, crate::store::StoreError>((t, used))
                })
                .await?;
                tenants.insert(run.tenant_id.clone(), read);
            }
            let Some((tenant, used)) = tenants.get(&run.tenant_id).cloned() else { continue };
            let running = active.get(&run.tenant_id).copied().unwrap_or(0);
            if tenant.max_concurrent_runs.is_some_and(|max| running >= max) {
                continue; // waits for one of the tenant's runs to finish
            }
            if let Some(hours) = tenant.device_hours_per_month {
                if used >= hours * 3600.0 {
                    let why = format!(
                        "the tenant's quota of {hours} device-hours this month is used up ({:.2} h used); ask an admin to raise it",
                        used / 3600.0
                    );
                    self.refuse(&run.id, why, report).await;
                    continue;
                }
            }
            let plan: RunPlan = match serde_json::from_str(&run.plan_json) {
                Ok(p) => p,
                Err(e) => {
                    self.refuse(&run.id, format!("the stored plan cannot be read: {e}"), report).await;
                    continue;
                }
            };
            // Frozen material it names thaws before its first task (a run resumed has thawed).
            let (thaw_s, retrieved) =
                if run.started_at.is_none() { self.fetching(&run, &plan).await? } else { (0.0, 0) };
            // Where people kit, the plan carries kitting as its first tasks, stored with the run
            // once before it starts (its history and journal count tasks the same way after).
            let kitted_by_people = self.config.kitting == Kitting::Technicians
                && run.started_at.is_none()
                && !crate::kitting_tasks::has_kitting(&plan);
            let plan = if kitted_by_people {
                let kitted = crate::kitting_tasks::with_kitting(&plan, thaw_s, retrieved);
                let json = serde_json::to_string(&kitted).map_err(|e| ExecutorError::Plan(e.to_string()))?;
                let (store, id, stored) = (self.store.clone(), run.id.clone(), json.clone());
                if !blocking(move || store.set_plan(&id, &stored)).await? {
                    continue; // it started meanwhile (another node): judged again next turn
                }
                run.plan_json = json;
                kitted
            } else {
                plan
            };
            // A run resumed after a restart: only what it has not done yet is planned.
            let plan = if run.started_at.is_some() {
                let (store, id) = (self.store.clone(), run.id.clone());
                let events = blocking(move || store.events(None, &id, 0)).await?;
                let finished = resume::progress(&events).finished;
                resume::remainder(&plan, &finished, crate::store::now_ms(), self.config.scale.0).0
            } else {
                plan
            };
            let short = crate::store::run_prefix(&run.id);
            let plan = plan.scoped(&short);
            // Priority p doubles the tenant's fairness weight p times (−3 to 3): served sooner.
            let weight = tenant.weight * 2f64.powi(tenant.priority.clamp(-3, 3) as i32);
            if experience.is_none() {
                let store = self.store.clone();
                let samples = blocking(move || store.task_durations(crate::experience::RECENT)).await?;
                experience = Some(crate::experience::Experience::from_samples(&samples));
            }
            let estimated = experience.as_ref().map_or_else(|| plan.clone(), |e| e.corrected(&plan));
            let mut model = scheduler::lab::Run::from_plan(&run.id, &run.tenant_id, weight, 0.0, &estimated);
            model.class = run.class;
            if let Err(e) = site.clone().add_run(model.clone()) {
                self.refuse(&run.id, format!("this lab cannot run it: {}", e.0), report).await;
                continue;
            }
            *active.entry(run.tenant_id.clone()).or_default() += 1;
            let margin = experience
                .as_ref()
                .map_or(self.config.promise_margin, |e| e.promise_margin(self.config.promise_margin));
            // The thaw delays the run's first task, unless its plan's thawing task does.
            let ready_after_s = if crate::kitting_tasks::has_kitting(&plan) { 0.0 } else { thaw_s };
            // The simulated technician fetches frozen material now, so it thaws while the plan
            // waits for it (fetched at the first job's turn, it would thaw only after the wait).
            if ready_after_s > 0.0 && self.config.kitting == Kitting::Simulated {
                let storage = site.nests.get(site.storage).map(|n| n.id.clone()).unwrap_or_default();
                if let Err(e) = self.fetch_now(&run, &storage).await {
                    self.refuse(&run.id, e.to_string(), report).await;
                    continue;
                }
            }
            let experience = experience.clone().unwrap_or_default();
            out.push(Admitted { run, plan, model, margin, experience, ready_after_s });
        }
        Ok(out)
    }

    /// What fetching the containers `plan` names involves: how long the frozen ones take to
    /// thaw once fetched (0 for none), and how many an arm brings out of an automated store.
    async fn fetching(&self, run: &Run, plan: &RunPlan) -> Result<(f64, usize), ExecutorError> {
        let named: Vec<String> = plan.labware.iter().filter_map(|l| l.container.clone()).collect();
        if named.is_empty() {
            return Ok((0.0, 0));
        }
        let (store, tenant) = (self.store.clone(), run.tenant_id.clone());
        let held = blocking(move || store.containers(Some(&tenant))).await?;
        let held: Vec<_> = held.into_iter().filter(|c| named.contains(&c.id)).collect();
        let units = &self.lab.site.storage;
        Ok((crate::kitting::thaw_s(plan, &held, units), crate::kitting::retrieved(plan, &held, units)))
    }

    /// Fails a queued run that cannot start, with the reason. Not written (the store failing past
    /// its retries): the run stays queued and is judged again next turn.
    async fn refuse(&self, run_id: &str, why: String, report: &mut BatchReport) {
        let (store, id, reason) = (self.store.clone(), run_id.to_string(), why.clone());
        match blocking(move || store.set_run_state(&id, RunState::Failed, Some(&reason))).await {
            Ok(_) => report.runs.push((run_id.to_string(), RunState::Failed, Some(why))),
            Err(e) => tracing::error!(run = %run_id, error = %e, "cannot record that the run is refused; trying again"),
        }
    }

    /// Claims unclaimed queued runs this cell can run. A cell that is no busier than any other
    /// claims at once; a busier one only claims runs nobody took within two seconds, so work
    /// spreads over cells and no run waits for a cell that cannot run it.
    pub(super) async fn claim(&self, site: &LabProblem, cell: &str, queued: &mut [Run]) -> Result<(), ExecutorError> {
        let now = crate::store::now_ms();
        if !queued.iter().any(|r| r.cell.is_none()) {
            return Ok(());
        }
        let store = self.store.clone();
        let loads = blocking(move || store.cell_loads()).await?;
        let mine = loads.iter().find(|(c, _)| c == cell).map_or(0, |l| l.1);
        let least_elsewhere = loads.iter().filter(|(c, _)| c != cell).map(|l| l.1).min().unwrap_or(0);
        let mut claimed = 0;
        for run in queued.iter_mut().filter(|r| r.cell.is_none()) {
            let overdue = now - run.submitted_at > 2_000;
            if mine + claimed > least_elsewhere && !overdue {
                continue;
            }
            let Ok(plan) = serde_json::from_str::<RunPlan>(&run.plan_json) else { continue };
            let model = scheduler::lab::Run::from_plan(&run.id, &run.tenant_id, 1.0, 0.0, &plan);
            if site.clone().add_run(model).is_err() {
                continue; // this cell lacks what it needs
            }
            let (store, id, c) = (self.store.clone(), run.id.clone(), cell.to_string());
            if blocking(move || store.claim_run(&id, &c)).await? {
                run.cell = Some(cell.to_string());
                claimed += 1;
            }
        }
        Ok(())
    }

    /// Plans the first runs after the lab was idle.
    pub(super) async fn start_session(
        &self,
        site: &LabProblem,
        id: u64,
        arrivals: Vec<Admitted>,
        report: &mut BatchReport,
    ) -> Result<Option<Session>, ExecutorError> {
        let mut problem = site.clone();
        for a in &arrivals {
            // The session starts now (0): a run is ready once its material has thawed.
            let model = scheduler::lab::Run { release: a.ready_after_s, ..a.model.clone() };
            problem.add_run(model).map_err(|e| ExecutorError::Site(e.0))?;
        }
        let t0_ms = crate::store::now_ms();
        problem.reservations = self.reservations(&problem, t0_ms).await?;
        let unavailable = self.board.unavailable_all();
        let mut avoiding = problem.clone();
        for (i, r) in problem.resources.iter().enumerate() {
            if unavailable.contains_key(&r.id) {
                avoiding.down[i].push(Window { start: 0.0, end: DOWN_HORIZON_S });
            }
        }
        let budget = LabBudget { time: Some(self.config.plan_budget), iterations: None };
        let seed = self.config.seed;
        // Around what is unavailable if possible; otherwise the plan waits for it to come back.
        let planner =
            blocking(move || Planner::new(avoiding, budget, seed).or_else(|_| Planner::new(problem, budget, seed)))
                .await;
        let mut planner = match planner {
            Ok(p) => p,
            Err(e) => {
                for a in arrivals {
                    self.refuse(&a.run.id, format!("the scheduler found no plan: {}", e.0), report).await;
                }
                return Ok(None);
            }
        };
        planner.pin_past = false;
        planner.set_promise_margin(arrivals.first().map_or(self.config.promise_margin, |a| a.margin));
        report.planned_makespan_s = report.planned_makespan_s.max(planner.schedule.makespan());
        let mut s = Session {
            id,
            planner,
            t0: Instant::now() - Duration::from_millis((crate::store::now_ms() - t0_ms).max(0) as u64),
            t0_ms,
            runs: Vec::new(),
            keys: Vec::new(),
            jobs: HashMap::new(),
            done: HashMap::new(),
            failures: BTreeMap::new(),
            closed: Vec::new(),
            overrunning: HashSet::new(),
        };
        for a in arrivals {
            self.admitted(&mut s, a, report).await?;
        }
        Ok(Some(s))
    }

    /// A run joins the plan: it is running from now on, with its planned end announced.
    /// Its place in the session follows the planner's run index, so it is taken before anything
    /// can fail.
    pub(super) async fn admitted(
        &self,
        s: &mut Session,
        a: Admitted,
        report: &mut BatchReport,
    ) -> Result<(), ExecutorError> {
        let i = s.runs.len();
        let planned_end = s.planner.schedule.completion(i);
        let planned_end_at = self.clock_at(s, planned_end);
        // Instruments out of service that this run's plan waits for (the only ones that can do
        // some of its work): the tenant learns why its end is where it is.
        let unavailable = self.board.unavailable_all();
        let mut waits_for: Vec<String> = s
            .planner
            .schedule
            .tasks
            .get(i)
            .into_iter()
            .flatten()
            .filter(|slot| !slot.on_arm)
            .filter_map(|slot| slot.resource.and_then(|r| s.planner.problem.resources.get(r)))
            .filter(|r| unavailable.contains_key(&r.id))
            .map(|r| r.id.clone())
            .collect();
        waits_for.dedup();
        report.commands += a.plan.command_count() as u64;
        let (store, id, tasks) = (self.store.clone(), a.run.id.clone(), a.plan.tasks.len());
        s.runs.push(a);
        s.keys.push(Vec::new());
        s.closed.push(false);
        // A run admitted again (labd restarted, its work went back to the queue) keeps the
        // promise it was first given.
        let earlier = {
            let (store, run_id) = (store.clone(), id.clone());
            match blocking(move || store.events(None, &run_id, 0)).await {
                Ok(events) => crate::service::first_promise_ms(&events),
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, "cannot read the run's earlier promise; it is promised anew");
                    None
                }
            }
        };
        if let Some(ms) = earlier {
            s.planner.set_promise(i, Some(self.device_s_at(s, ms)));
        }
        let promised = s.planner.promise(i);
        let payload = serde_json::json!({
            "planned_end_s": planned_end, "planned_end_at": planned_end_at, "tasks": tasks, "waits_for": waits_for,
            "service_class": s.runs[i].run.class.as_str(),
            "promised_s": promised,
            "promised_at": promised.map(|p| self.clock_at(s, p)),
            "promised_at_ms": promised.map(|p| self.wall_ms(s, p)),
        })
        .to_string();
        // The run is in the plan now: its state must follow, or it would be admitted twice.
        // Tried until the store takes it. A run cancelled while it was being admitted has
        // ended: it stays in the plan as work nobody does (its jobs see it ended and do
        // nothing), closed, and nothing more is written to it — retrying would stall the lab.
        let mut pause = Duration::from_millis(100);
        loop {
            let (store, run_id, payload) = (store.clone(), id.clone(), payload.clone());
            let written = blocking(move || {
                let state = store.run(None, &run_id)?.state;
                if state.is_final() {
                    return Ok(false);
                }
                if state == RunState::Queued {
                    store.set_run_state(&run_id, RunState::Running, None)?;
                }
                store.append_event(&run_id, "scheduled", &payload).map(|_| true)
            })
            .await;
            match written {
                Ok(false) => {
                    tracing::info!(run = %id, "run ended (cancelled) while it was being admitted; nothing of it is done");
                    if let Some(closed) = s.closed.get_mut(i) {
                        *closed = true;
                    }
                    return Ok(());
                }
                Ok(true) => {
                    tracing::info!(run = %id, planned_end_at = %planned_end_at, "run started");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(run = %id, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot record that the run started; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
