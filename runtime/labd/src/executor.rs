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

mod admission;
mod attention;
mod bench;
mod dispatch;
mod failure;
mod finish;
mod jobs;
mod kitting;
pub use kitting::Kitting;
mod recovery;
mod repair;
pub mod resume;
mod timing;

pub use failure::ExecutorError;

use jobs::jobs;
pub use timing::{print_timings, CommandTiming, CommandTimings};

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
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long an instrument that is down or in maintenance is planned around (device seconds):
/// until it is back, which ends the window early. Finite, because the planner places work
/// after a window's end and an endless window leaves it nowhere to go.
const DOWN_HORIZON_S: f64 = 1.0e7;

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
    /// Who kits each run's material before its first job.
    pub kitting: Kitting,
    /// A run is promised its planned end plus this fraction of its planned turnaround
    /// (`scheduler::lab::promise`).
    pub promise_margin: f64,
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
            kitting: Kitting::Simulated,
            promise_margin: scheduler::lab::promise::DEFAULT_MARGIN,
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
    /// Every job's task: shutdown waits for them (within a bound).
    tasks: tokio_util::task::TaskTracker,
    /// Cancelled at shutdown: jobs still waiting for their turn end at once; jobs already on an
    /// instrument finish, so their outcome is journaled.
    stopping: tokio_util::sync::CancellationToken,
}

/// From a job to the loop.
#[derive(Debug)]
enum Report {
    Done {
        session: u64,
        key: String,
        run: usize,
        result: Result<(), failure::JobError>,
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
    /// Recovery is finishing work that was under way on it when labd stopped.
    Resuming,
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
    /// The promise margin for it: the configured one, wider when tasks on this lab spread
    /// beyond what it was measured against (`experience`).
    margin: f64,
    /// What the lab had learned when it was admitted: the runs still waiting are corrected with
    /// it when it arrives (`repair`).
    experience: crate::experience::Experience,
    /// Device seconds from its arrival before its first task can start: its frozen material
    /// thawing (`crate::kitting::thaw_s`). The plan and the promise count it.
    ready_after_s: f64,
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
    reports: mpsc::Sender<Report>,
    gates: Vec<String>,
    probe: Option<String>,
    /// Shutdown: a job still waiting for its turn ends; one on an instrument finishes.
    stopping: tokio_util::sync::CancellationToken,
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
    /// Recovery finishing what runs left under way at the last stop (see [`finish`]).
    finishing: tokio_util::task::TaskTracker,
    /// Per run, whether its material is kitted, behind a lock its jobs share: the first job
    /// issues the list and waits for it, the run's other jobs wait for that one (the store is
    /// asked only until the run is kitted).
    kitted: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<kitting::KitGate>>>>>,
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
        Executor {
            store,
            lab,
            config,
            board,
            interlocks: Arc::default(),
            finishing: Default::default(),
            kitted: Arc::default(),
        }
    }

    /// What the lab is doing, for the API.
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    /// Submits a compiled plan for a tenant (what the API's Submit does after compiling).
    pub fn submit(
        &self,
        tenant_id: &str,
        key: &str,
        name: &str,
        source: &str,
        plan: &RunPlan,
    ) -> Result<Run, ExecutorError> {
        let run = NewRun {
            tenant_id: tenant_id.into(),
            idempotency_key: key.into(),
            name: name.into(),
            source: source.into(),
            plan_json: serde_json::to_string(plan).map_err(|e| ExecutorError::Plan(e.to_string()))?,
            priority: 0,
            class: Default::default(),
        };
        Ok(self.store.submit_run(&run).map(|(r, _)| r)?)
    }

    /// Carries out queued runs until `stop` turns true: admits runs as they arrive (within each
    /// tenant's quota), keeps one plan for everything admitted and repairs it as runs arrive and
    /// instruments go down or into maintenance and come back, and dispatches each job when it is
    /// due and what it waits for has finished.
    pub async fn run(&self, stop: watch::Receiver<bool>) -> Result<(), ExecutorError> {
        self.drive(stop, false).await.map(|_| ())
    }

    /// Runs everything queued (and whatever arrives meanwhile) to a final state, then returns.
    pub async fn run_queued(&self) -> Result<BatchReport, ExecutorError> {
        let (_keep, stop) = watch::channel(false);
        self.drive(stop, true).await
    }

    async fn drive(&self, mut stop: watch::Receiver<bool>, until_idle: bool) -> Result<BatchReport, ExecutorError> {
        // Bounded: a job waits to report rather than the loop's backlog growing without limit
        // (each report is taken in as soon as the loop wakes).
        let (reports_tx, mut reports) = mpsc::channel::<Report>(1024);
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
        let site = LabProblem::from_site(&self.lab.site).map_err(|e| ExecutorError::Site(e.0))?;
        // What the plan treats as unavailable, and why; the board mirrors it for technicians.
        // An earlier drive's findings carry over through the board.
        let mut out_of_service: BTreeMap<String, Out> = self
            .board
            .unavailable_all()
            .into_iter()
            .map(|(id, why)| {
                let out = match why {
                    w if w.starts_with("down") => Out::Down,
                    w if w == finish::RESUMING => Out::Resuming,
                    _ => Out::Maintenance,
                };
                (id, out)
            })
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
            // Recovery gives an instrument back once it has finished the work left on it.
            let finished: Vec<String> = out_of_service
                .iter()
                .filter(|(id, out)| **out == Out::Resuming && self.board.unavailable(id).is_none())
                .map(|(id, _)| id.clone())
                .collect();
            for id in finished {
                out_of_service.remove(&id);
                self.announce(&id, None);
                events.push(Change::Up(id));
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
        let tasks = {
            let mut d = lock(&dispatch);
            d.generation = u64::MAX;
            d.stopping.cancel();
            d.tasks.close();
            d.tasks.clone()
        };
        // Reports still on their way are drained so no job waits on a full channel.
        let drained = async {
            tokio::select! {
                _ = tasks.wait() => {}
                _ = async { while reports.recv().await.is_some() {} } => {}
            }
        };
        self.finishing.close();
        let drained = async {
            drained.await;
            self.finishing.wait().await;
        };
        if tokio::time::timeout(Duration::from_secs(5), drained).await.is_err() {
            tracing::warn!(running = tasks.len(), "commands still on instruments after 5 s; recovery settles them");
        }
        Ok(report)
    }
}
