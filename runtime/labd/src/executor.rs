//! The executor: takes accepted runs from the store, has the scheduler plan them on the shared
//! instruments, and carries the plan out on the drivers — tasks on instruments, plate moves on
//! arms — journaling intent before every command and its outcome after, writing events, results
//! and usage as it goes.
//!
//! The plan becomes a list of jobs (tasks and moves) in planned order. A job starts at its planned
//! time once the jobs it depends on have finished: the same plate's earlier jobs, the task's
//! predecessors, and earlier jobs on the same single-plate instrument, nest or arm. Every
//! dependency points to an earlier job, so execution cannot deadlock; a late job delays only what
//! depends on it.

use crate::lab::Lab;
use crate::store::{Intent, NewRun, ResultRow, Run, RunState, Store, Usage};
use devices::{family, Family, Instrument, Recovery, TimeScale};
use protocols::plan::{CommandOp, RunPlan};
use scheduler::lab::solve::{solve, LabBudget, LabSchedule, MoveSlot};
use scheduler::lab::LabProblem;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Per command: time spent journaling, and in total.
pub type CommandTimings = Arc<std::sync::Mutex<Vec<(Duration, Duration)>>>;

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Device time per wall time (1.0 real time; small in tests and demos).
    pub scale: TimeScale,
    /// Planning budget per batch.
    pub plan_budget: Duration,
    pub seed: u64,
    /// How often a command whose failure allows a resend is sent again.
    pub retries: u32,
    /// How often to look for a technician's answer to an intervention.
    pub intervention_poll: Duration,
    /// When set, every command's (journal time, total time) is recorded here (benchmarks).
    pub timings: Option<CommandTimings>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            scale: TimeScale::REAL,
            plan_budget: Duration::from_millis(300),
            seed: 7,
            retries: 2,
            intervention_poll: Duration::from_millis(50),
            timings: None,
        }
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    pub runs: Vec<(String, RunState, Option<String>)>,
    /// Planned makespan, device seconds.
    pub planned_makespan_s: f64,
    pub commands: u64,
    pub moves: u64,
}

/// One unit of work in planned order.
#[derive(Debug, Clone)]
enum Job {
    Task { run: usize, task: usize, resource: Option<usize>, on_arm: bool },
    Move(MoveSlot),
}

#[derive(Debug, Clone)]
struct Planned {
    job: Job,
    start: f64,
    /// (job index, whether its failure fails this job too).
    deps: Vec<(usize, bool)>,
    run: usize,
}

/// A run being executed.
#[derive(Debug)]
struct Admitted {
    run: Run,
    plan: RunPlan,
}

/// Rewrites a plan so its labware names are unique across runs (`<prefix>.<name>`): two tenants'
/// "plate" are different plates to the arm and the liquid handler.
pub fn scoped(plan: &RunPlan, prefix: &str) -> Result<RunPlan, String> {
    let mut v = serde_json::to_value(plan).map_err(|e| e.to_string())?;
    let name = |s: &str| format!("{prefix}.{s}");
    if let Some(lw) = v.get_mut("labware").and_then(|l| l.as_array_mut()) {
        for l in lw {
            if let Some(n) = l.get("name").and_then(|n| n.as_str()).map(name) {
                l["name"] = n.into();
            }
        }
    }
    if let Some(tasks) = v.get_mut("tasks").and_then(|t| t.as_array_mut()) {
        for t in tasks {
            if let Some(h) = t.get_mut("holds").and_then(|h| h.as_array_mut()) {
                for x in h.iter_mut() {
                    if let Some(n) = x.as_str().map(name) {
                        *x = n.into();
                    }
                }
            }
            if let Some(cmds) = t.get_mut("commands").and_then(|c| c.as_array_mut()) {
                for c in cmds {
                    for key in ["labware", "rack"] {
                        if let Some(n) = c.get(key).and_then(|x| x.as_str()).map(name) {
                            c[key] = n.into();
                        }
                    }
                }
            }
        }
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// Drives runs on a lab.
#[derive(Debug, Clone)]
pub struct Executor {
    store: Arc<dyn Store>,
    lab: Arc<Lab>,
    config: ExecutorConfig,
}

/// Runs a store call off the async threads (the store is blocking).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Executor {
    pub fn new(store: Arc<dyn Store>, lab: Arc<Lab>, config: ExecutorConfig) -> Self {
        Executor { store, lab, config }
    }

    /// Submits a compiled plan for a tenant (what the API's Submit does after compiling).
    pub fn submit(&self, tenant_id: &str, key: &str, name: &str, source: &str, plan: &RunPlan) -> Result<Run, String> {
        let run = NewRun {
            tenant_id: tenant_id.into(),
            idempotency_key: key.into(),
            name: name.into(),
            source: source.into(),
            plan_json: serde_json::to_string(plan).map_err(|e| e.to_string())?,
            priority: 0,
        };
        self.store.submit_run(&run).map(|(r, _)| r).map_err(|e| e.to_string())
    }

    /// After a restart: runs that were running when the runtime stopped are failed with a reason
    /// naming any command whose outcome is unknown (never silently resent); a technician gets an
    /// intervention for each such command that is not safe to repeat. Queued runs are untouched
    /// and run normally. Returns the runs it failed.
    pub fn recover(&self) -> Result<Vec<String>, String> {
        let open = self.store.open_attempts().map_err(|e| e.to_string())?;
        let mut failed = Vec::new();
        for run in self.store.runs(None, &[RunState::Running, RunState::Cancelling]).map_err(|e| e.to_string())? {
            let mine: Vec<_> = open.iter().filter(|a| a.intent.run_id == run.id).collect();
            for a in &mine {
                let _ =
                    self.store.record_outcome(&a.id, "unknown", Some("labd stopped before the outcome was recorded"));
                if !a.intent.repeatable {
                    let _ = self.store.open_intervention(
                        &run.id,
                        (a.intent.task_id >= 0).then_some(a.intent.task_id),
                        Some(&a.intent.instrument),
                        &format!("labd restarted while {} was running {}", a.intent.instrument, a.intent.op_json),
                        "check the instrument and the plate; the run was stopped and will not resend this command",
                    );
                }
            }
            let reason = match mine.first() {
                Some(a) => format!(
                    "labd restarted mid-run; {} may or may not have run {}",
                    a.intent.instrument, a.intent.op_json
                ),
                None => "labd restarted mid-run between commands".to_string(),
            };
            let state = if run.state == RunState::Cancelling { RunState::Cancelled } else { RunState::Failed };
            self.store.set_run_state(&run.id, state, Some(&reason)).map_err(|e| e.to_string())?;
            failed.push(run.id);
        }
        Ok(failed)
    }

    /// Plans every queued run together and carries the plan out; returns when each has reached
    /// a final state.
    pub async fn run_queued(&self) -> Result<BatchReport, String> {
        let store = self.store.clone();
        let queued = blocking(move || store.runs(None, &[RunState::Queued])).await.map_err(|e| e.to_string())?;
        let mut report = BatchReport::default();
        if queued.is_empty() {
            return Ok(report);
        }
        let mut problem = LabProblem::from_site(&self.lab.site).map_err(|e| e.0)?;
        let mut admitted: Vec<Admitted> = Vec::new();
        for run in queued {
            let fail = |why: String| {
                let _ = self.store.set_run_state(&run.id, RunState::Failed, Some(&why));
                why
            };
            let plan: RunPlan = match serde_json::from_str(&run.plan_json) {
                Ok(p) => p,
                Err(e) => {
                    let why = fail(format!("the stored plan cannot be read: {e}"));
                    report.runs.push((run.id.clone(), RunState::Failed, Some(why)));
                    continue;
                }
            };
            let short = run.id.trim_start_matches("run_").chars().take(8).collect::<String>();
            let plan = scoped(&plan, &short)?;
            let weight = self.store.tenant(&run.tenant_id).map(|t| t.weight).unwrap_or(1.0);
            if let Err(e) = problem.add_plan(&run.id, &run.tenant_id, weight, 0.0, &plan) {
                let why = fail(format!("this lab cannot run it: {}", e.0));
                report.runs.push((run.id.clone(), RunState::Failed, Some(why)));
                continue;
            }
            admitted.push(Admitted { run, plan });
        }
        if admitted.is_empty() {
            return Ok(report);
        }
        let budget = LabBudget { time: Some(self.config.plan_budget), iterations: None };
        let (p2, seed) = (problem.clone(), self.config.seed);
        let outcome = blocking(move || solve(&p2, budget, seed)).await.ok_or("the scheduler found no plan")?;
        let schedule = outcome.schedule;
        report.planned_makespan_s = schedule.makespan();
        for (i, a) in admitted.iter().enumerate() {
            self.store.set_run_state(&a.run.id, RunState::Running, None).map_err(|e| e.to_string())?;
            let payload = serde_json::json!({"planned_end_s": schedule.completion(i), "tasks": a.plan.tasks.len()});
            self.store.append_event(&a.run.id, "scheduled", &payload.to_string()).map_err(|e| e.to_string())?;
        }
        let jobs = jobs(&problem, &schedule);
        report.moves = jobs.iter().filter(|j| matches!(j.job, Job::Move(_))).count() as u64;
        let failures = self.execute(&problem, &admitted, jobs).await;
        for (i, a) in admitted.iter().enumerate() {
            let cancelling = self.store.run(None, &a.run.id).is_ok_and(|r| r.state == RunState::Cancelling);
            let (state, reason) = match (failures.get(&i), cancelling) {
                (_, true) => (RunState::Cancelled, Some("cancelled; its plates were returned to storage".to_string())),
                (None, false) => (RunState::Succeeded, None),
                (Some(why), false) => (RunState::Failed, Some(why.clone())),
            };
            self.store.set_run_state(&a.run.id, state, reason.as_deref()).map_err(|e| e.to_string())?;
            report.runs.push((a.run.id.clone(), state, reason));
        }
        report.commands = admitted.iter().map(|a| a.plan.command_count() as u64).sum();
        Ok(report)
    }

    /// Runs the jobs; returns the first failure of each failed run.
    async fn execute(
        &self,
        problem: &LabProblem,
        admitted: &[Admitted],
        jobs: Vec<Planned>,
    ) -> BTreeMap<usize, String> {
        let t0 = Instant::now();
        let mut done: Vec<watch::Receiver<Option<bool>>> = Vec::new();
        let mut handles = Vec::new();
        let problem = Arc::new(problem.clone());
        let runs: Arc<Vec<(Run, RunPlan)>> =
            Arc::new(admitted.iter().map(|a| (a.run.clone(), a.plan.clone())).collect());
        for job in jobs {
            let (tx, rx) = watch::channel(None);
            let waits: Vec<(watch::Receiver<Option<bool>>, bool)> =
                job.deps.iter().map(|&(d, c)| (done[d].clone(), c)).collect();
            done.push(rx);
            let me = self.clone();
            let problem = problem.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                let mut cascade_failed = false;
                for (mut w, cascade) in waits {
                    let ok = loop {
                        if let Some(ok) = *w.borrow_and_update() {
                            break ok;
                        }
                        if w.changed().await.is_err() {
                            break false;
                        }
                    };
                    cascade_failed |= cascade && !ok;
                }
                let result = if cascade_failed {
                    Err(String::new()) // an earlier step of this run failed; its reason is recorded
                } else {
                    let at = t0 + me.config.scale.wall(job.start);
                    tokio::time::sleep_until(at).await;
                    me.job(&problem, &runs, &job.job).await
                };
                let _ = tx.send(Some(result.is_ok()));
                (job.run, result)
            }));
        }
        let mut failures = BTreeMap::new();
        for h in handles {
            if let Ok((run, Err(why))) = h.await {
                if !why.is_empty() {
                    failures.entry(run).or_insert(why);
                }
            }
        }
        failures
    }

    async fn job(&self, problem: &LabProblem, runs: &[(Run, RunPlan)], job: &Job) -> Result<(), String> {
        if let Job::Task { run, .. } = job {
            // A cancelled run stops at the next task boundary; its plate moves still run, so
            // every plate ends up back in storage.
            let (store, id) = (self.store.clone(), runs[*run].0.id.clone());
            if blocking(move || store.run(None, &id)).await.is_ok_and(|r| r.state == RunState::Cancelling) {
                return Ok(());
            }
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
                let plate = plates.get(m.plate).copied().ok_or("a move names a plate the run does not have")?;
                let arm_id = &problem.arms[m.arm].id;
                let arm = self.lab.arms.get(arm_id).ok_or_else(|| format!("arm {arm_id} is not connected"))?.clone();
                let (from, to) = (problem.nests[m.from].id.clone(), problem.nests[m.to].id.clone());
                arm.locate(plate, &from);
                let op = CommandOp::MoveLabware { labware: plate.into(), to };
                self.command(run, -1, 0, arm_id, arm.as_ref(), &op, false).await
            }
            Job::Task { run: r, task: t, resource, on_arm } => {
                if *on_arm {
                    return Err(format!("task {t} needs lid handling by an arm, which the arm driver does not do yet"));
                }
                self.task(problem, runs, *r, *t, *resource).await
            }
        }
    }

    async fn task(
        &self,
        problem: &LabProblem,
        runs: &[(Run, RunPlan)],
        r: usize,
        t: usize,
        resource: Option<usize>,
    ) -> Result<(), String> {
        let (run, plan) = &runs[r];
        let task = &plan.tasks[t];
        let instrument = resource.map(|res| problem.resources[res].id.clone());
        let started = Instant::now();
        let ev = serde_json::json!({"task": t, "label": task.label, "instrument": instrument});
        self.event(run, "task_started", ev).await;
        let driver: Option<Arc<dyn Instrument>> =
            instrument.as_ref().and_then(|id| self.lab.instruments.get(id).cloned());
        if let (Some(d), Some(class)) = (&driver, task.class) {
            if class == labware::InstrumentClass::LiquidHandler {
                self.load_deck(instrument.as_deref().unwrap_or(""), plan);
                d.prepare(plan)
                    .await
                    .map_err(|e| format!("{}: preparing the deck: {e}", instrument.as_deref().unwrap_or("?")))?;
            }
        }
        for (ci, cmd) in task.commands.iter().enumerate() {
            match family(&cmd.op) {
                Family::Timer => {
                    if let CommandOp::Wait { duration_s } = cmd.op {
                        tokio::time::sleep(self.config.scale.wall(duration_s)).await;
                    }
                }
                Family::Technician => self.manual(run, t, &cmd.op).await?,
                _ => {
                    let id =
                        instrument.clone().ok_or_else(|| format!("task {t} ({}) has no instrument", task.label))?;
                    let d = driver.clone().ok_or_else(|| format!("instrument {id} is not connected"))?;
                    self.command(run, t as i64, ci as i64, &id, d.as_ref(), &cmd.op, cmd.repeatable).await?;
                }
            }
        }
        let device_s = started.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12);
        if let (Some(id), Some(class)) = (&instrument, task.class) {
            let usage = Usage {
                tenant_id: run.tenant_id.clone(),
                run_id: run.id.clone(),
                instrument_class: class.as_str().into(),
                instrument: id.clone(),
                device_seconds: device_s,
            };
            let store = self.store.clone();
            let _ = blocking(move || store.add_usage(&usage)).await;
        }
        self.event(run, "task_finished", serde_json::json!({"task": t, "device_s": device_s})).await;
        Ok(())
    }

    /// In a simulated lab, the simulated technician loads the liquid handler's deck from the
    /// plan's loading list (in a real lab the loading list goes to a person).
    fn load_deck(&self, instrument: &str, plan: &RunPlan) {
        let Some(state) = self.lab.simulated.as_ref().and_then(|s| s.liquid.get(instrument)) else { return };
        let Ok(mut s) = state.lock() else { return };
        for lw in &plan.labware {
            for (well, ul) in &lw.contents {
                let key = (lw.name.clone(), well.clone());
                if !s.volumes.contains_key(&key) {
                    s.fill(&lw.name, well, *ul);
                }
            }
        }
    }

    async fn event(&self, run: &Run, kind: &str, payload: serde_json::Value) {
        let (store, id, kind) = (self.store.clone(), run.id.clone(), kind.to_string());
        let _ = blocking(move || store.append_event(&id, &kind, &payload.to_string())).await;
    }

    /// A manual step: a technician does it and says so in the console (an intervention).
    async fn manual(&self, run: &Run, task: usize, op: &CommandOp) -> Result<(), String> {
        let CommandOp::Manual { instruction } = op else { return Ok(()) };
        let i = self
            .store
            .open_intervention(&run.id, Some(task as i64), None, "manual step", instruction)
            .map_err(|e| e.to_string())?;
        match self.await_resolution(&i.id).await?.as_str() {
            "abort" => Err(format!("a technician aborted the run at the manual step `{instruction}`")),
            _ => Ok(()),
        }
    }

    async fn await_resolution(&self, id: &str) -> Result<String, String> {
        loop {
            let store = self.store.clone();
            let all = blocking(move || store.interventions(None, false)).await.map_err(|e| e.to_string())?;
            if let Some(i) = all.iter().find(|i| i.id == id && i.state != "open") {
                return Ok(i.state.clone());
            }
            tokio::time::sleep(self.config.intervention_poll).await;
        }
    }

    /// Sends one command with the journal: intent first, outcome after. Resends only what the
    /// error allows; an uncertain outcome of a command that is not safe to repeat becomes an
    /// intervention for a technician (done / redo / abort).
    #[allow(clippy::too_many_arguments)]
    async fn command(
        &self,
        run: &Run,
        task: i64,
        index: i64,
        instrument: &str,
        driver: &dyn Instrument,
        op: &CommandOp,
        repeatable: bool,
    ) -> Result<(), String> {
        let mut tries = 0;
        loop {
            let began = Instant::now();
            let intent = Intent {
                run_id: run.id.clone(),
                task_id: task,
                command_index: index,
                instrument: instrument.into(),
                op_json: serde_json::to_string(op).unwrap_or_default(),
                repeatable,
            };
            let store = self.store.clone();
            let attempt = blocking(move || store.record_intent(&intent)).await.map_err(|e| e.to_string())?;
            let journal_intent = began.elapsed();
            let result = match driver.start(op).await {
                Ok(exec) => exec.finish().await,
                Err(e) => Err(e),
            };
            let sent = Instant::now();
            let (outcome, err) = match &result {
                Ok(_) => ("ok", None),
                Err(e) if e.recovery() == Recovery::Indeterminate => ("unknown", Some(e.to_string())),
                Err(e) => ("failed", Some(e.to_string())),
            };
            let (store, aid, e2) = (self.store.clone(), attempt.id.clone(), err.clone());
            blocking(move || store.record_outcome(&aid, outcome, e2.as_deref())).await.map_err(|e| e.to_string())?;
            if let Some(t) = &self.config.timings {
                if let Ok(mut t) = t.lock() {
                    t.push((journal_intent + sent.elapsed(), began.elapsed()));
                }
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
                        blocking(move || store.add_result(&row)).await.map_err(|e| e.to_string())?;
                    }
                    return Ok(());
                }
                Err(e) if e.may_resend(repeatable) && tries < self.config.retries => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if e.recovery() == Recovery::Indeterminate => {
                    let i = self
                        .store
                        .open_intervention(
                            &run.id,
                            (task >= 0).then_some(task),
                            Some(instrument),
                            &format!("{instrument}: {e}"),
                            "check whether the step happened: done if it did, redo to send it again, abort to stop the run",
                        )
                        .map_err(|e| e.to_string())?;
                    match self.await_resolution(&i.id).await?.as_str() {
                        "done" => return Ok(()),
                        "redo" => continue,
                        _ => return Err(format!("{instrument}: {e}; a technician aborted the run")),
                    }
                }
                Err(e) => return Err(format!("{instrument}: {e}")),
            }
        }
    }
}

/// What a job waits for: a plate, or exclusive use of a single-plate instrument, nest or arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Plate(usize, usize),
    Resource(usize),
    Arm(usize),
}

/// Builds the jobs of a schedule in planned order with their dependencies. Every dependency
/// points to an earlier job.
fn jobs(problem: &LabProblem, s: &LabSchedule) -> Vec<Planned> {
    let mut items: Vec<(f64, f64, Job, usize)> = Vec::new();
    for (r, tasks) in s.tasks.iter().enumerate() {
        for (t, slot) in tasks.iter().enumerate() {
            items.push((
                slot.start,
                slot.end,
                Job::Task { run: r, task: t, resource: slot.resource, on_arm: slot.on_arm },
                r,
            ));
        }
    }
    for m in &s.moves {
        items.push((m.start, m.end, Job::Move(*m), m.run));
    }
    items.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let single = |res: usize| problem.resources.get(res).is_some_and(|r| r.capacity <= 1);
    let mut last: BTreeMap<Key, usize> = BTreeMap::new();
    let mut task_job: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, (start, _, job, run)) in items.into_iter().enumerate() {
        let mut deps: Vec<(usize, bool)> = Vec::new();
        let mut touch = |key: Key, cascade: bool, deps: &mut Vec<(usize, bool)>| {
            if let Some(&j) = last.get(&key) {
                deps.push((j, cascade));
            }
            last.insert(key, i);
        };
        match &job {
            Job::Task { run: r, task: t, resource, on_arm } => {
                let lt = &problem.runs[*r].tasks[*t];
                for a in &lt.after {
                    if let Some(&j) = task_job.get(&(*r, *a)) {
                        deps.push((j, true));
                    }
                }
                for &p in &lt.plates {
                    touch(Key::Plate(*r, p), true, &mut deps);
                }
                match (resource, on_arm) {
                    (Some(res), true) => touch(Key::Arm(*res), false, &mut deps),
                    (Some(res), false) if single(*res) => touch(Key::Resource(*res), false, &mut deps),
                    _ => {}
                }
                task_job.insert((*r, *t), i);
            }
            Job::Move(m) => {
                touch(Key::Plate(m.run, m.plate), true, &mut deps);
                touch(Key::Arm(m.arm), false, &mut deps);
                for nest in [m.from, m.to] {
                    if let Some(owner) = problem.nests.get(nest).and_then(|n| n.owner) {
                        if single(owner) {
                            touch(Key::Resource(owner), false, &mut deps);
                        }
                    }
                }
            }
        }
        out.push(Planned { job, start, deps, run });
    }
    out
}
