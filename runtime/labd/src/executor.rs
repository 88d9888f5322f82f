//! The executor: takes accepted runs from the store, keeps one plan for everything admitted on
//! the shared instruments, and carries it out on the drivers — tasks on instruments, plate moves
//! on arms — journaling intent before every command and its outcome after, writing events,
//! results and usage as it goes.
//!
//! The plan becomes jobs (tasks and moves) in planned order. A job starts at its planned time
//! once the jobs it depends on have finished: the same plate's earlier jobs, the task's
//! predecessors, and earlier jobs on the same single-plate instrument, nest or arm. Every
//! dependency points to an earlier job, so execution cannot deadlock; a late job delays only what
//! depends on it.
//!
//! The plan is repaired while it runs ([`scheduler::lab::replan::Planner`]): when a run arrives,
//! an instrument goes into maintenance or stops answering, or comes back. What has started (and
//! every task a plate is already travelling to) is pinned; everything else may move, including
//! to another instrument of the same class. Each repair is a new generation of jobs; jobs of an
//! older generation that have not started retire.

mod attention;

use crate::board::{Board, Slot};
use crate::lab::Lab;
use crate::lock;
use crate::reasons::{On, Reason};
use crate::store::{Intent, NewRun, ResultRow, Run, RunState, Store, Usage};
use devices::{family, Family, Instrument, Recovery, State, TimeScale};
use protocols::plan::{CommandOp, RunPlan};
use scheduler::lab::replan::{Event as ReplanEvent, Planner};
use scheduler::lab::solve::{LabBudget, LabSchedule, MoveSlot};
use scheduler::lab::{LabProblem, Window};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long an instrument that is down or in maintenance is planned around (device seconds):
/// until it is back, which ends the window early. Finite, because the planner places work
/// after a window's end and an endless window leaves it nowhere to go.
const DOWN_HORIZON_S: f64 = 1.0e7;

/// Where one command's time went (benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct CommandTiming {
    /// The instrument family, e.g. `LiquidHandler`.
    pub family: &'static str,
    /// Durable journal writes.
    pub journal: Duration,
    /// The exchange with the instrument (driver and wire).
    pub instrument: Duration,
    /// Everything, from the intent to the recorded outcome.
    pub total: Duration,
}

/// Prints p50/p99 of command timings: in total, without the instrument exchange (the
/// executor's own overhead), journaling, and in total per instrument family (benchmarks).
pub fn print_timings(v: &[CommandTiming]) {
    fn pct(mut v: Vec<Duration>, q: f64) -> f64 {
        v.sort();
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
    let line = |what: &str, d: Vec<Duration>| {
        println!("  {what:<34} n={:<6} p50 {:>6.0} µs  p99 {:>6.0} µs", d.len(), pct(d.clone(), 0.5), pct(d, 0.99));
    };
    line("per command, total", v.iter().map(|t| t.total).collect());
    line("per command, executor (no exchange)", v.iter().map(|t| t.total.saturating_sub(t.instrument)).collect());
    line("per command, journaling", v.iter().map(|t| t.journal).collect());
    let mut families: Vec<&str> = v.iter().map(|t| t.family).collect();
    families.sort();
    families.dedup();
    for f in families {
        line(&format!("total, {f}"), v.iter().filter(|t| t.family == f).map(|t| t.total).collect());
    }
}

/// Per command: where its time went.
pub type CommandTimings = Arc<std::sync::Mutex<Vec<CommandTiming>>>;

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Device time per wall time (1.0 real time; small in tests and demos).
    pub scale: TimeScale,
    /// Planning budget for the first plan after the lab was idle.
    pub plan_budget: Duration,
    /// Improvement budget after each repair (a run arrived, an instrument went down).
    pub repair_budget: Duration,
    pub seed: u64,
    /// How often a command whose failure allows a resend is sent again.
    pub retries: u32,
    /// How often to look for a technician's answer to an intervention, new runs and maintenance.
    pub poll: Duration,
    /// How often an instrument that stopped answering is asked again.
    pub probe_every: Duration,
    /// When set, every command's (journal time, total time) is recorded here (benchmarks).
    pub timings: Option<CommandTimings>,
    /// When set, the time of each end-of-task outcome write is recorded here (benchmarks).
    pub flush_timings: Option<Arc<Mutex<Vec<Duration>>>>,
    /// The work cell this executor drives (several nodes): it claims the queued runs its
    /// instruments can run and carries out only those. `None`: every run (one node).
    pub cell: Option<String>,
    /// Rung when a run may have been submitted (PostgreSQL `NOTIFY`), so that a node need not
    /// wait for its next poll.
    pub wake: Option<Arc<tokio::sync::Notify>>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            scale: TimeScale::REAL,
            plan_budget: Duration::from_millis(300),
            repair_budget: Duration::from_millis(30),
            seed: 7,
            retries: 2,
            poll: Duration::from_millis(50),
            probe_every: Duration::from_secs(2),
            timings: None,
            flush_timings: None,
            cell: None,
            wake: None,
        }
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchReport {
    pub runs: Vec<(String, RunState, Option<String>)>,
    /// Planned makespan of the first plan, device seconds.
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

/// Seconds of a task the tenant is billed for. Instruments bill the time they took. A manual
/// step bills its planned time: how long a technician takes to get to it is the lab's
/// waiting, not the tenant's work (a 5-minute step resolved an hour late is 5 minutes).
fn billed_seconds(class: labware::InstrumentClass, planned_s: f64, took_s: f64) -> f64 {
    match class {
        labware::InstrumentClass::Technician => planned_s,
        _ => took_s,
    }
}

/// What a technician is asked to add: per reagent and volume, the wells (`add 50 µL of water
/// to plate A1, A2 (2 wells)`).
fn additions_text(adds: &[(&str, &str, &str, f64)]) -> String {
    /// (reagent, labware, volume) → wells.
    type Group<'a> = ((&'a str, &'a str, String), Vec<&'a str>);
    let mut groups: Vec<Group> = Vec::new();
    for &(reagent, labware, well, ul) in adds {
        let key = (reagent, labware, protocols::units::fmt_ul(ul));
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(well),
            None => groups.push((key, vec![well])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|((reagent, labware, vol), wells)| {
            let n = if wells.len() > 1 { format!(" ({} wells)", wells.len()) } else { String::new() };
            format!("add {vol} of {reagent} to {labware} {}{n}", wells.join(", "))
        })
        .collect();
    parts.join("; ")
}

/// Job identity across repairs: a task is `t:run:task`; a move is its plate's leg with its
/// planned start, which a repair keeps bit for bit once the move is pinned.
fn job_key(job: &Job) -> String {
    match job {
        Job::Task { run, task, .. } => task_key(*run, *task),
        Job::Move(m) => format!("m:{}:{}:{}:{}:{}:{:x}", m.run, m.plate, m.from, m.to, m.arm, m.start.to_bits()),
    }
}

fn task_key(run: usize, task: usize) -> String {
    format!("t:{run}:{task}")
}

/// A task's label as the scientist wrote it (empty if the run or task is unknown).
fn task_label(s: &Session, run: usize, task: usize) -> &str {
    s.runs.get(run).and_then(|a| a.plan.tasks.get(task)).map_or("", |t| t.label.as_str())
}

/// Why `change` calls for a repair, kept with whose work it was; `None` for an arrival, which
/// is no reason anyone is told.
fn reason(s: &Session, change: &Change) -> Option<Reason> {
    let task = |run: usize, task: usize| {
        let tenant = s.runs.get(run).map_or(String::new(), |a| a.run.tenant_id.clone());
        let on = s
            .planner
            .schedule
            .tasks
            .get(run)
            .and_then(|slots| slots.get(task))
            .and_then(|slot| if slot.on_arm { None } else { slot.resource })
            .and_then(|r| s.planner.problem.resources.get(r))
            .map(|r| On { id: r.id.clone(), class: r.class });
        (tenant, task_label(s, run, task).to_string(), on)
    };
    Some(match change {
        Change::Arrived(_) => return None,
        Change::Down(id, why) => Reason::Unavailable { instrument: id.clone(), why: why.clone() },
        Change::Up(id) => Reason::Back { instrument: id.clone() },
        Change::Reservations(_) => Reason::Reservations,
        Change::Overrun { run, task: t, .. } => {
            let (tenant, label, on) = task(*run, *t);
            Reason::Overrun { tenant, label, on }
        }
        Change::Finished { run, task: t, .. } => {
            let (tenant, label, on) = task(*run, *t);
            Reason::Finished { tenant, label, on }
        }
    })
}

/// The task a plate move delivers to: the plate's next task after the move.
pub(crate) fn destination(p: &Planner, m: &MoveSlot) -> Option<usize> {
    let run = p.problem.runs.get(m.run)?;
    let slots = p.schedule.tasks.get(m.run)?;
    (0..run.tasks.len())
        .filter(|&t| run.tasks[t].plates.contains(&m.plate) && slots[t].start >= m.end - 1e-6)
        .min_by(|&a, &b| slots[a].start.total_cmp(&slots[b].start))
}

fn family_name(op: &CommandOp) -> &'static str {
    match family(op) {
        Family::LiquidHandler => "liquid handler",
        Family::HeaterShaker => "heater-shaker",
        Family::Incubator => "incubator",
        Family::PlateReader => "plate reader",
        Family::Sealer => "sealer",
        Family::Centrifuge => "centrifuge",
        Family::RobotArm => "robot arm",
        _ => "other",
    }
}

/// What job tasks share with the executor's loop.
#[derive(Debug, Default)]
struct Dispatch {
    /// Jobs may start only under this plan generation; a repair bumps it.
    generation: u64,
    /// Jobs that have started, by key, with their completion: later generations wait on these.
    started: HashMap<String, watch::Receiver<Option<bool>>>,
    in_flight: usize,
}

/// From a job to the loop.
#[derive(Debug)]
enum Report {
    Done {
        session: u64,
        key: String,
        run: usize,
        result: Result<(), String>,
        /// When it finished, in device seconds since the session began.
        at: f64,
    },
    /// An instrument did not answer before a plate was sent to it.
    Down { instrument: String, why: String },
}

/// Why an instrument is out of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Down,
    Maintenance,
}

/// What makes the plan change.
#[derive(Debug)]
enum Change {
    Arrived(Box<Admitted>),
    Down(String, String),
    Up(String),
    Reservations(Vec<Vec<(String, Window)>>),
    /// A task that has started is running past its planned end (a technician not yet done with
    /// a manual step, a slow instrument): planned as ending at `expected_end`, so work that
    /// waits for its instrument, arm or plate is re-planned instead of stalling behind it.
    Overrun {
        run: usize,
        task: usize,
        expected_end: f64,
    },
    /// A task that had been re-planned as overrunning has finished (`at`, device seconds): what
    /// waits for it is planned from its real end instead of from the guessed one.
    Finished {
        run: usize,
        task: usize,
        at: f64,
    },
}

/// A run being executed.
#[derive(Debug)]
struct Admitted {
    run: Run,
    plan: RunPlan,
    model: scheduler::lab::Run,
}

/// The runs admitted since the lab was last idle, and their plan.
struct Session {
    id: u64,
    planner: Planner,
    t0: Instant,
    t0_ms: i64,
    runs: Vec<Admitted>,
    /// Per run: its jobs in the current plan.
    keys: Vec<Vec<String>>,
    /// Every job of every generation, by key.
    jobs: HashMap<String, Job>,
    /// Finished jobs: whether each succeeded.
    done: HashMap<String, bool>,
    failures: BTreeMap<usize, String>,
    closed: Vec<bool>,
    /// Tasks re-planned as overrunning that have not finished yet, by job key.
    overrunning: HashSet<String>,
}

/// Everything one job needs to run on its own task.
struct JobCtx {
    session: u64,
    generation: u64,
    key: String,
    job: Planned,
    tx: watch::Sender<Option<bool>>,
    me: watch::Receiver<Option<bool>>,
    waits: Vec<(watch::Receiver<Option<bool>>, bool)>,
    t0: Instant,
    problem: Arc<LabProblem>,
    runs: Arc<Vec<(Run, RunPlan)>>,
    dispatch: Arc<Mutex<Dispatch>>,
    reports: mpsc::UnboundedSender<Report>,
    gates: Vec<String>,
    probe: Option<String>,
}

/// Whether a burst of arrivals at an idle lab is complete: no new arrival for two ticks, or
/// half a second since the first. `burst` is (count, first seen, last change).
fn burst_settled(burst: &mut Option<(usize, Instant, Instant)>, count: usize, tick: Duration) -> bool {
    let now = Instant::now();
    let (seen, first, changed) = burst.get_or_insert((count, now, now));
    if *seen != count {
        *seen = count;
        *changed = now;
    }
    now.duration_since(*changed) >= tick * 2 || now.duration_since(*first) >= Duration::from_millis(500)
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
    board: Arc<Board>,
    /// One lock per single-plate instrument, held for a whole task: whatever a plan or a repair
    /// says, two tasks never interleave their commands on one instrument.
    interlocks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

fn change_name(c: &Change) -> &'static str {
    match c {
        Change::Arrived(_) => "an arrival",
        Change::Down(..) => "an instrument down",
        Change::Up(_) => "an instrument back",
        Change::Reservations(_) => "new reservations",
        Change::Overrun { .. } => "an overrun",
        Change::Finished { .. } => "an overrunning task's end",
    }
}

/// Waits for a wake-up, or forever when there is no source of them.
async fn wake(source: &Option<Arc<tokio::sync::Notify>>) {
    match source {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
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
        Self::with_board(store, lab, config, Arc::new(Board::default()))
    }

    /// An executor that shows its work on an existing board (a cell's next term on a node).
    pub fn with_board(store: Arc<dyn Store>, lab: Arc<Lab>, config: ExecutorConfig, board: Arc<Board>) -> Self {
        Executor { store, lab, config, board, interlocks: Arc::default() }
    }

    /// What the lab is doing, for the API.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
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
    /// intervention for each such command that is not safe to repeat. A run that had not yet
    /// touched anything (no command, no plate move, no manual step) goes back to the queue
    /// instead. Queued runs are untouched and run normally. Returns the runs it failed.
    pub fn recover(&self) -> Result<Vec<String>, String> {
        let open = self.store.open_attempts().map_err(|e| e.to_string())?;
        let asked = self.store.interventions(None, false).map_err(|e| e.to_string())?;
        let mut failed = Vec::new();
        for run in self.store.runs(None, &[RunState::Running, RunState::Cancelling]).map_err(|e| e.to_string())? {
            if self.config.cell.is_some() && run.cell != self.config.cell {
                continue; // another cell's run: its node recovers it
            }
            let untouched = self.store.attempts(&run.id).map_err(|e| e.to_string())?.is_empty()
                && !asked.iter().any(|i| i.run_id == run.id);
            if untouched {
                let (state, reason) = match run.state {
                    RunState::Cancelling => (RunState::Cancelled, "cancelled; labd stopped before it began"),
                    _ => (RunState::Queued, "labd stopped before it began; queued again"),
                };
                self.store.set_run_state(&run.id, state, Some(reason)).map_err(|e| e.to_string())?;
                continue;
            }
            let mine: Vec<_> = open.iter().filter(|a| a.intent.run_id == run.id).collect();
            for a in &mine {
                self.store
                    .record_outcome(&a.id, "unknown", Some("labd stopped before the outcome was recorded"))
                    .map_err(|e| e.to_string())?;
                if !a.intent.repeatable {
                    self.store
                        .open_intervention(
                            &run.id,
                            (a.intent.task_id >= 0).then_some(a.intent.task_id),
                            Some(&a.intent.instrument),
                            &format!("labd restarted while {} was running {}", a.intent.instrument, a.intent.op_json),
                            "check the instrument and the plate; the run was stopped and will not resend this command",
                        )
                        .map_err(|e| e.to_string())?;
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

    /// Carries out queued runs until `stop` turns true: admits runs as they arrive (within each
    /// tenant's quota), keeps one plan for everything admitted and repairs it as runs arrive and
    /// instruments go down or into maintenance and come back, and dispatches each job when it is
    /// due and what it waits for has finished.
    pub async fn run(&self, stop: watch::Receiver<bool>) -> Result<(), String> {
        self.drive(stop, false).await.map(|_| ())
    }

    /// Runs everything queued (and whatever arrives meanwhile) to a final state, then returns.
    pub async fn run_queued(&self) -> Result<BatchReport, String> {
        let (_keep, stop) = watch::channel(false);
        self.drive(stop, true).await
    }

    async fn drive(&self, mut stop: watch::Receiver<bool>, until_idle: bool) -> Result<BatchReport, String> {
        let (reports_tx, mut reports) = mpsc::unbounded_channel::<Report>();
        let dispatch = Arc::new(Mutex::new(Dispatch::default()));
        let mut session: Option<Session> = None;
        let mut report = BatchReport::default();
        let mut retry_at: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(self.config.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_probe = Instant::now();
        let mut last_overrun_check = Instant::now();
        // When the lab is idle, a burst of submissions is planned together: the first plan waits
        // until the queue has been still for two ticks (at most half a second).
        let mut burst: Option<(usize, Instant, Instant)> = None;
        let mut sessions = 0u64;
        // The site in scheduler terms (nests, arm routes): the same for every admission and plan.
        let site = LabProblem::from_site(&self.lab.site).map_err(|e| e.0)?;
        // What the plan treats as unavailable, and why; the board mirrors it for technicians.
        // An earlier drive's findings carry over through the board.
        let mut out_of_service: BTreeMap<String, Out> = self
            .board
            .unavailable_all()
            .into_iter()
            .map(|(id, why)| (id, if why.starts_with("down") { Out::Down } else { Out::Maintenance }))
            .collect();
        loop {
            let mut events: Vec<Change> = Vec::new();
            tokio::select! {
                r = reports.recv() => {
                    if let Some(r) = r {
                        self.on_report(r, session.as_mut(), &mut out_of_service, &mut events);
                    }
                }
                _ = tick.tick() => {}
                _ = wake(&self.config.wake) => {}
                _ = stop.changed() => break,
            }
            // Whatever woke the loop, what jobs reported is taken in first: a task that has
            // finished is not mistaken for one that overruns.
            while let Ok(r) = reports.try_recv() {
                self.on_report(r, session.as_mut(), &mut out_of_service, &mut events);
            }
            // A store error here (the database unreachable for longer than its retries) is
            // logged and tried again next tick: the executor never ends over storage.
            if let Err(e) = self.sync_maintenance(&mut out_of_service, &mut events).await {
                tracing::warn!(error = %e, "cannot read maintenance flags; trying again");
            }
            if last_probe.elapsed() >= self.config.probe_every {
                last_probe = Instant::now();
                self.probe_down(&mut out_of_service, &mut events).await;
            }
            if let Some(s) = session.as_ref() {
                if last_overrun_check.elapsed() >= self.config.probe_every {
                    last_overrun_check = Instant::now();
                    events.extend(self.overruns(s, &dispatch));
                }
            }
            let arrivals = match self.admit(&site, session.as_ref(), &mut retry_at, &mut report).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot admit queued runs; trying again");
                    Vec::new()
                }
            };
            if session.is_none() && !arrivals.is_empty() && !burst_settled(&mut burst, arrivals.len(), self.config.poll)
            {
                continue; // not taken: they stay queued and are admitted again next tick
            }
            if session.is_none() && !arrivals.is_empty() {
                burst = None;
                sessions += 1;
                session = match self.start_session(&site, sessions, arrivals, &mut report).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Not started: the runs are admitted again next tick.
                        tracing::warn!(error = %e, "cannot start a plan; trying again");
                        None
                    }
                };
                if let Some(s) = session.as_mut() {
                    self.respawn(s, &dispatch, &reports_tx);
                }
            } else if let Some(s) = session.as_mut() {
                events.extend(arrivals.into_iter().map(|a| Change::Arrived(Box::new(a))));
                if !events.is_empty() {
                    self.replan(s, events, &dispatch, &reports_tx, &mut retry_at, &mut report).await;
                }
            }
            if let Some(s) = session.as_mut() {
                let reserved = match self.reservations(&s.planner.problem, s.t0_ms).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read reservations; keeping the plan's");
                        s.planner.problem.reservations.clone()
                    }
                };
                if reserved != s.planner.problem.reservations {
                    let change = vec![Change::Reservations(reserved)];
                    self.replan(s, change, &dispatch, &reports_tx, &mut retry_at, &mut report).await;
                }
                if let Err(e) = self.close_finished(s, &mut report).await {
                    tracing::warn!(error = %e, "cannot record a run's final state; trying again");
                }
                let running = s.closed.iter().filter(|&&c| !c).count();
                crate::metrics::with(|m| m.runs_running.set(running as i64));
                if s.closed.iter().all(|&c| c) {
                    self.board.close_plan();
                    session = None;
                    lock(&dispatch).started.clear();
                }
            }
            if until_idle && session.is_none() {
                let store = self.store.clone();
                match blocking(move || store.runs(None, &[RunState::Queued])).await {
                    Ok(queued) if queued.is_empty() => break,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot list queued runs; trying again"),
                }
            }
        }
        // Stopping: nothing new starts; commands already on an instrument get a moment to finish
        // so their outcome is journaled (what does not finish is recovered at the next start).
        lock(&dispatch).generation = u64::MAX;
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&dispatch).in_flight > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(report)
    }

    /// Bench-time reservations in the plan's terms: per resource, (tenant, device-time window
    /// relative to `t0_ms`). A reservation names an instrument, or a class (its first
    /// instrument); ones that have ended are left out.
    async fn reservations(&self, p: &LabProblem, t0_ms: i64) -> Result<Vec<Vec<(String, Window)>>, String> {
        let store = self.store.clone();
        let all = blocking(move || store.reservations(None)).await.map_err(|e| e.to_string())?;
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
    fn overruns(&self, s: &Session, dispatch: &Arc<Mutex<Dispatch>>) -> Vec<Change> {
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
                out.push(Change::Overrun { run: *run, task: *task, expected_end: now + duration.max(600.0) });
            }
        }
        out
    }

    fn now_s(&self, s: &Session) -> f64 {
        s.t0.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12)
    }

    fn on_report(
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
                    if !why.is_empty() {
                        s.failures.entry(run).or_insert_with(|| why.clone());
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
    fn announce(&self, id: &str, why: Option<String>) {
        self.board.set_unavailable(id, why.clone());
        let (state, detail) = match why.as_deref().and_then(|w| w.split_once(": ")) {
            Some((state, detail)) => (state.to_string(), detail.to_string()),
            None => ("available".to_string(), String::new()),
        };
        tracing::info!(instrument = id, state = %state, detail = %detail, "instrument status");
        let topic = crate::telemetry::device_status_topic(&self.lab.site.site.name, id);
        let payload =
            serde_json::json!({"v": 1, "device": id, "state": state, "detail": detail, "ts": crate::store::now_ms()});
        if let Err(e) = self.store.outbox_put(&topic, &payload.to_string()) {
            tracing::error!(instrument = id, error = %e, "cannot queue the instrument's status for MQTT");
        }
    }

    /// Maintenance flags live in the store (technicians set them through the API); the plan,
    /// the board and the status topics follow them.
    async fn sync_maintenance(&self, out: &mut BTreeMap<String, Out>, events: &mut Vec<Change>) -> Result<(), String> {
        let store = self.store.clone();
        let flagged = blocking(move || store.maintenance()).await.map_err(|e| e.to_string())?;
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
    async fn probe_down(&self, out: &mut BTreeMap<String, Out>, events: &mut Vec<Change>) {
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

    /// Queued runs that may start now: within their tenant's concurrent-run quota and
    /// device-hour quota, and runnable on this site at all (else failed with the reason).
    async fn admit(
        &self,
        site: &LabProblem,
        session: Option<&Session>,
        retry_at: &mut HashMap<String, Instant>,
        report: &mut BatchReport,
    ) -> Result<Vec<Admitted>, String> {
        let store = self.store.clone();
        let mut queued = blocking(move || store.runs(None, &[RunState::Queued])).await.map_err(|e| e.to_string())?;
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
        for run in queued {
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
                .await
                .map_err(|e| e.to_string())?;
                tenants.insert(run.tenant_id.clone(), read);
            }
            let Some((tenant, used)) = tenants.get(&run.tenant_id).cloned() else { continue };
            let running = active.get(&run.tenant_id).copied().unwrap_or(0);
            if tenant.max_concurrent_runs.is_some_and(|max| running >= max) {
                continue; // waits for one of the tenant's runs to finish
            }
            let fail = |why: String, report: &mut BatchReport| {
                let _ = self.store.set_run_state(&run.id, RunState::Failed, Some(&why));
                report.runs.push((run.id.clone(), RunState::Failed, Some(why)));
            };
            if let Some(hours) = tenant.device_hours_per_month {
                if used >= hours * 3600.0 {
                    let why = format!(
                        "the tenant's quota of {hours} device-hours this month is used up ({:.2} h used); ask an admin to raise it",
                        used / 3600.0
                    );
                    fail(why, report);
                    continue;
                }
            }
            let plan: RunPlan = match serde_json::from_str(&run.plan_json) {
                Ok(p) => p,
                Err(e) => {
                    fail(format!("the stored plan cannot be read: {e}"), report);
                    continue;
                }
            };
            let short = run.id.trim_start_matches("run_").chars().take(8).collect::<String>();
            let plan = scoped(&plan, &short)?;
            // Priority p doubles the tenant's fairness weight p times (−3 to 3): served sooner.
            let weight = tenant.weight * 2f64.powi(tenant.priority.clamp(-3, 3) as i32);
            let model = scheduler::lab::Run::from_plan(&run.id, &run.tenant_id, weight, 0.0, &plan);
            if let Err(e) = site.clone().add_run(model.clone()) {
                fail(format!("this lab cannot run it: {}", e.0), report);
                continue;
            }
            *active.entry(run.tenant_id.clone()).or_default() += 1;
            out.push(Admitted { run, plan, model });
        }
        Ok(out)
    }

    /// Claims unclaimed queued runs this cell can run. A cell that is no busier than any other
    /// claims at once; a busier one only claims runs nobody took within two seconds, so work
    /// spreads over cells and no run waits for a cell that cannot run it.
    async fn claim(&self, site: &LabProblem, cell: &str, queued: &mut [Run]) -> Result<(), String> {
        let now = crate::store::now_ms();
        if !queued.iter().any(|r| r.cell.is_none()) {
            return Ok(());
        }
        let store = self.store.clone();
        let loads = blocking(move || store.cell_loads()).await.map_err(|e| e.to_string())?;
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
            if blocking(move || store.claim_run(&id, &c)).await.map_err(|e| e.to_string())? {
                run.cell = Some(cell.to_string());
                claimed += 1;
            }
        }
        Ok(())
    }

    /// Plans the first runs after the lab was idle.
    async fn start_session(
        &self,
        site: &LabProblem,
        id: u64,
        arrivals: Vec<Admitted>,
        report: &mut BatchReport,
    ) -> Result<Option<Session>, String> {
        let mut problem = site.clone();
        for a in &arrivals {
            problem.add_run(a.model.clone()).map_err(|e| e.0)?;
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
                    let why = format!("the scheduler found no plan: {}", e.0);
                    let _ = self.store.set_run_state(&a.run.id, RunState::Failed, Some(&why));
                    report.runs.push((a.run.id.clone(), RunState::Failed, Some(why)));
                }
                return Ok(None);
            }
        };
        planner.pin_past = false;
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
    async fn admitted(&self, s: &mut Session, a: Admitted, report: &mut BatchReport) -> Result<(), String> {
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
        let payload = serde_json::json!({
            "planned_end_s": planned_end, "planned_end_at": planned_end_at, "tasks": tasks, "waits_for": waits_for,
        })
        .to_string();
        // The run is in the plan now: its state must follow, or it would be admitted twice.
        // Tried until the store takes it.
        let mut pause = Duration::from_millis(100);
        loop {
            let (store, run_id, payload) = (store.clone(), id.clone(), payload.clone());
            let written = blocking(move || {
                if store.run(None, &run_id)?.state == RunState::Queued {
                    store.set_run_state(&run_id, RunState::Running, None)?;
                }
                store.append_event(&run_id, "scheduled", &payload)
            })
            .await;
            match written {
                Ok(_) => {
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

    /// Applies what changed to the plan: pins what has started (and tasks a plate is already on
    /// its way to), repairs around the rest, dispatches the new plan's jobs, then announces runs
    /// whose end moved.
    #[allow(clippy::too_many_arguments)]
    async fn replan(
        &self,
        s: &mut Session,
        changes: Vec<Change>,
        dispatch: &Arc<Mutex<Dispatch>>,
        reports: &mpsc::UnboundedSender<Report>,
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
                Some(Job::Move(m)) if m.to != s.planner.problem.storage => {
                    if let Some(t) = destination(&s.planner, m) {
                        s.planner.pin_task(m.run, t);
                    }
                }
                _ => {}
            }
        }
        let before: Vec<f64> = (0..s.runs.len()).map(|i| s.planner.schedule.completion(i)).collect();
        let improve = self.config.repair_budget;
        let mut because = Vec::new();
        for change in changes {
            if let Some(r) = reason(s, &change) {
                because.push(r);
            }
            let now = self.now_s(s);
            let resource = |id: &str| s.planner.problem.resources.iter().position(|r| r.id == id);
            let event = match &change {
                Change::Arrived(a) => ReplanEvent::RunArrived(a.model.clone()),
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
            let began = Instant::now();
            let (planner, result) = blocking(move || {
                let r = planner.handle(now, event, improve);
                (planner, r)
            })
            .await;
            crate::metrics::with(|m| m.repair_seconds.observe(began.elapsed().as_secs_f64()));
            // A repair that breaks a constraint is not dispatched: the plan in force stays.
            let result = result.and_then(|r| {
                match scheduler::lab::check::validate(&planner.problem, &planner.schedule).first() {
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
        for (i, b) in before.iter().enumerate() {
            let after = s.planner.schedule.completion(i);
            if !s.closed[i] && (after - b).abs() > 60.0 {
                let told = crate::reasons::told_to(&because, &s.runs[i].run.tenant_id);
                let payload = serde_json::json!({
                    "planned_end_s": after, "was_s": b, "because": told,
                    "planned_end_at": self.clock_at(s, after), "was_at": self.clock_at(s, *b),
                });
                self.event(&s.runs[i].run, "rescheduled", payload).await;
            }
        }
    }

    /// Turns the current plan into jobs. Jobs that have started keep going; the rest of the
    /// previous plan retires (its waiting jobs see a new generation and stop).
    fn respawn(&self, s: &mut Session, dispatch: &Arc<Mutex<Dispatch>>, reports: &mpsc::UnboundedSender<Report>) {
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
            };
            let me = self.clone();
            tokio::spawn(async move { me.run_job(ctx).await });
        }
        drop(d);
        self.board.replan(slots);
    }

    /// What a job waits on before it starts: the instruments it uses must be available (`gates`:
    /// a task's instrument; a move's arm and the instrument it takes the plate to); a plate
    /// leaving for an instrument first checks that the instrument answers (`probe`).
    fn guards(&self, s: &Session, job: &Job) -> (Vec<String>, Option<String>) {
        let p = &s.planner.problem;
        match job {
            Job::Task { resource: Some(r), on_arm: false, .. } => {
                (p.resources.get(*r).map(|r| r.id.clone()).into_iter().collect(), None)
            }
            Job::Move(m) => {
                let arm = p.arms.get(m.arm).map(|a| a.id.clone());
                let target = (m.to != p.storage)
                    .then(|| destination(&s.planner, m))
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
    fn clock_at(&self, s: &Session, device_s: f64) -> String {
        let wall_ms = self.config.scale.wall(device_s.max(0.0)).as_secs_f64() * 1000.0;
        crate::clock::rfc3339(s.t0_ms.saturating_add(wall_ms as i64))
    }

    /// The job as a slot on the technicians' board.
    fn slot(&self, s: &Session, problem: &LabProblem, job: &Planned) -> Option<Slot> {
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

    async fn run_job(self, ctx: JobCtx) {
        let stale = |ctx: &JobCtx| lock(&ctx.dispatch).generation != ctx.generation;
        let mut cascade_failed = false;
        for (mut w, cascade) in ctx.waits.iter().cloned() {
            let ok = loop {
                if let Some(ok) = *w.borrow_and_update() {
                    break ok;
                }
                if w.changed().await.is_err() {
                    // It retired without running (its plan was replaced, or its instrument did
                    // not answer): so does this job; the next plan has both.
                    return;
                }
            };
            cascade_failed |= cascade && !ok;
        }
        if stale(&ctx) {
            return; // an older plan's job: the current plan has its own
        }
        // After a failed task the run's plates still travel their planned moves, so they end up
        // in storage and leave no instrument's nest blocked for the next run; its tasks do not run.
        let is_move = matches!(ctx.job.job, Job::Move(_));
        if !cascade_failed || is_move {
            tokio::time::sleep_until(ctx.t0 + self.config.scale.wall(ctx.job.start)).await;
            for gate in &ctx.gates {
                while self.board.unavailable(gate).is_some() {
                    if stale(&ctx) {
                        return;
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
                        let _ = ctx.reports.send(Report::Down { instrument: id.clone(), why });
                        return;
                    }
                }
            }
        }
        {
            let mut d = lock(&ctx.dispatch);
            if d.generation != ctx.generation {
                return;
            }
            d.started.insert(ctx.key.clone(), ctx.me.clone());
            d.in_flight += 1;
        }
        self.board.started(&ctx.key, crate::store::now_ms());
        let result = match (cascade_failed, is_move) {
            (true, false) => Err(String::new()), // an earlier step of this run failed; its reason is recorded
            // The run has failed already: the move's own failure is news, its success is not.
            (true, true) => self.job(&ctx.problem, &ctx.runs, &ctx.job.job).await.and(Err(String::new())),
            (false, _) => self.job(&ctx.problem, &ctx.runs, &ctx.job.job).await,
        };
        lock(&ctx.dispatch).in_flight -= 1;
        self.board.finished(&ctx.key, crate::store::now_ms(), result.is_ok());
        // The loop hears of it before anything waiting for it can start, so it never takes a
        // task whose plate has moved on for one still running.
        let (ok, at) = (result.is_ok(), ctx.t0.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12));
        let _ = ctx.reports.send(Report::Done { session: ctx.session, key: ctx.key, run: ctx.job.run, result, at });
        let _ = ctx.tx.send(Some(ok));
    }

    /// Runs whose every job has finished reach their final state.
    async fn close_finished(&self, s: &mut Session, report: &mut BatchReport) -> Result<(), String> {
        for i in 0..s.runs.len() {
            if s.closed[i] || !s.keys[i].iter().all(|k| s.done.contains_key(k)) {
                continue;
            }
            let (store, id) = (self.store.clone(), s.runs[i].run.id.clone());
            let failure = s.failures.get(&i).cloned();
            let (state, reason) = blocking(move || {
                let cancelling = store.run(None, &id).is_ok_and(|r| r.state == RunState::Cancelling);
                let (state, reason) = match (failure, cancelling) {
                    (_, true) => {
                        (RunState::Cancelled, Some("cancelled; its plates were returned to storage".to_string()))
                    }
                    (None, false) => (RunState::Succeeded, None),
                    (Some(why), false) => (RunState::Failed, Some(why)),
                };
                store.set_run_state(&id, state, reason.as_deref()).map(|_| (state, reason))
            })
            .await
            .map_err(|e| e.to_string())?;
            s.closed[i] = true; // only once its final state is stored: else tried again
            crate::metrics::with(|m| m.runs_ended.with_label_values(&[state.as_str()]).inc());
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
                let mut pending = None;
                let result = self.command(run, -1, 0, arm_id, arm.as_ref(), &op, false, &mut pending).await;
                self.flush(&mut pending).await?;
                if result.is_err() {
                    self.make_safe(run, arm_id, arm.as_ref()).await;
                }
                result
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
        let result = self.task_commands(run, plan, t, &instrument, &driver).await;
        if let (Err(_), Some(id), Some(d)) = (&result, &instrument, &driver) {
            self.make_safe(run, id, d.as_ref()).await;
        }
        result
    }

    /// Carries out one task's commands on its instrument (or by a technician's hand).
    async fn task_commands(
        &self,
        run: &Run,
        plan: &RunPlan,
        t: usize,
        instrument: &Option<String>,
        driver: &Option<Arc<dyn Instrument>>,
    ) -> Result<(), String> {
        let task = &plan.tasks[t];
        let started = Instant::now();
        let ev = serde_json::json!({"task": t, "label": task.label, "instrument": instrument});
        self.event(run, "task_started", ev).await;
        if let (Some(d), Some(class)) = (driver, task.class) {
            if class == labware::InstrumentClass::LiquidHandler {
                self.load_deck(instrument.as_deref().unwrap_or(""), plan);
                d.prepare(plan)
                    .await
                    .map_err(|e| format!("{}: preparing the deck: {e}", instrument.as_deref().unwrap_or("?")))?;
            }
        }
        // The last command's success, written with the next command's intent (one durable
        // write per command); flushed before anything that waits and at the end of the task.
        let mut pending: Option<String> = None;
        // Commands already carried out with an earlier one (additions a technician does at once).
        let mut done_up_to = 0;
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
                    self.manual(run, t, &cmd.op).await?
                }
                _ => {
                    let id =
                        instrument.clone().ok_or_else(|| format!("task {t} ({}) has no instrument", task.label))?;
                    let d = driver.clone().ok_or_else(|| format!("instrument {id} is not connected"))?;
                    let sent =
                        self.command(run, t as i64, ci as i64, &id, d.as_ref(), &cmd.op, cmd.repeatable, &mut pending);
                    sent.await?;
                }
            }
        }
        self.flush(&mut pending).await?;
        let device_s = started.elapsed().as_secs_f64() / self.config.scale.0.max(1e-12);
        if let (Some(id), Some(class)) = (instrument, task.class) {
            let usage = Usage {
                tenant_id: run.tenant_id.clone(),
                run_id: run.id.clone(),
                instrument_class: class.as_str().into(),
                instrument: id.clone(),
                device_seconds: billed_seconds(class, task.duration_s, device_s),
            };
            let store = self.store.clone();
            blocking(move || store.add_usage(&usage))
                .await
                .map_err(|e| format!("recording usage for the bill: {e}"))?;
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

    /// Reagent from the lab's stock added by a technician: one intervention listing every
    /// addition of the task. In a simulated lab, the simulated technician's additions reach the
    /// simulated liquid handlers' wells once the intervention is resolved as done.
    async fn add_by_hand(&self, run: &Run, task: usize, adds: &[protocols::plan::Command]) -> Result<(), String> {
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
        let (store, id) = (self.store.clone(), run.id.clone());
        let text = instruction.clone();
        let i = blocking(move || store.open_intervention(&id, Some(task as i64), None, "add reagent", &text))
            .await
            .map_err(|e| e.to_string())?;
        match self.await_resolution(&i.id).await?.as_str() {
            "abort" => Err(format!("a technician aborted the run at `{instruction}`")),
            _ => {
                for state in self.lab.simulated.iter().flat_map(|s| s.liquid.values()) {
                    if let Ok(mut s) = state.lock() {
                        for (_, labware, well, ul) in &adds {
                            s.fill(labware, well, *ul);
                        }
                    }
                }
                Ok(())
            }
        }
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
            tokio::time::sleep(self.config.poll).await;
        }
    }

    /// Writes a success that was waiting for the next command's intent.
    async fn flush(&self, pending: &mut Option<String>) -> Result<(), String> {
        let Some(id) = pending.take() else { return Ok(()) };
        let began = Instant::now();
        let store = self.store.clone();
        blocking(move || store.record_outcome(&id, "ok", None)).await.map_err(|e| e.to_string())?;
        if let Some(t) = &self.config.flush_timings {
            lock(t).push(began.elapsed());
        }
        Ok(())
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
        pending: &mut Option<String>,
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
            let (store, previous) = (self.store.clone(), pending.take());
            let attempt = blocking(move || store.record_ok_then_intent(previous.as_deref(), &intent))
                .await
                .map_err(|e| e.to_string())?;
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
            let measured = result.as_ref().is_ok_and(|o| !o.measurements.is_empty());
            if outcome == "ok" && !measured {
                *pending = Some(attempt.id.clone()); // written with the next intent
            } else {
                let (store, aid, e2) = (self.store.clone(), attempt.id.clone(), err.clone());
                blocking(move || store.record_outcome(&aid, outcome, e2.as_deref()))
                    .await
                    .map_err(|e| e.to_string())?;
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
                        instrument: sent.duration_since(began + journal_intent),
                        total: began.elapsed(),
                    });
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
