//! A seeded trace simulator: runs arriving at random, task durations off by up to ±20 %,
//! instruments failing and coming back. It drives a [`Planner`] with the events an executor
//! would send, checks every repaired plan with the validator, and reports how long repairs took.
//! Tests use it for "no violation, no deadlock"; the benchmarks for repair latency.

use super::check::validate;
use super::generate::generate;
use super::replan::{Event, Planner};
use super::solve::LabBudget;
use super::{LabProblem, Run};
use crate::shop::solve::Rng;
use labware::{InstrumentClass, Site};
use std::time::Duration;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    pub seed: u64,
    /// Tasks known at the start (released over `spread_s`).
    pub initial_tasks: usize,
    pub spread_s: f64,
    /// Tasks arriving later, one run about every `arrival_gap_s`.
    pub arriving_tasks: usize,
    pub arrival_gap_s: f64,
    /// Liquid-handler failures, each lasting 10 to 40 minutes.
    pub failures: usize,
    /// Validate every repaired plan (slower; the tests do, the benchmark does not).
    pub validate: bool,
    /// Runs built interleaved at a time in every repair; `None`: what the first search chose.
    pub window: Option<usize>,
}

impl TraceConfig {
    /// The CI-sized trace.
    pub fn small(seed: u64) -> TraceConfig {
        TraceConfig {
            seed,
            initial_tasks: 40,
            spread_s: 1800.0,
            arriving_tasks: 30,
            arrival_gap_s: 660.0,
            failures: 2,
            validate: true,
            window: None,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct TraceStats {
    pub events: usize,
    /// Announced starts moved by more than a minute, summed over events.
    pub moved: usize,
    /// Time of every repair, with the number of tasks not yet started at that moment.
    pub repairs: Vec<(Duration, usize)>,
    /// Runs built interleaved at a time, at the end.
    pub window: usize,
}

/// Runs one trace to the end. Errors name the seed, the event and the first violations.
pub fn run_trace(site: &Site, cfg: &TraceConfig) -> Result<TraceStats, String> {
    let seed = cfg.seed;
    let mut rng = Rng::new(seed);
    let base = generate(site, cfg.initial_tasks, 3, cfg.spread_s, seed).map_err(|e| e.to_string())?;
    let mut arrivals: Vec<(f64, Run)> = Vec::new();
    if cfg.arriving_tasks > 0 {
        let extra = generate(site, cfg.arriving_tasks, 3, 1.0, seed + 1_000_000).map_err(|e| e.to_string())?;
        let mut t = 0.0;
        for mut run in extra.runs {
            t += 60.0 + rng.below((2.0 * cfg.arrival_gap_s) as usize + 1) as f64;
            // One arrival in ten is urgent.
            if rng.below(10) == 0 {
                run.weight = 5.0;
            }
            arrivals.push((t, run));
        }
    }
    let lhs: Vec<usize> =
        (0..base.resources.len()).filter(|&r| base.resources[r].class == InstrumentClass::LiquidHandler).collect();
    let failures: Vec<(f64, usize, f64)> = (0..cfg.failures)
        .map(|_| (rng.below(6000) as f64, lhs[rng.below(lhs.len())], 600.0 + rng.below(1800) as f64))
        .collect();
    let mut planner =
        Planner::new(base, LabBudget { time: None, iterations: Some(3) }, seed).map_err(|e| e.to_string())?;
    if let Some(w) = cfg.window {
        planner.set_window(w);
    }
    let lab = Disturbance { noise: NOISE, failures, bias: Vec::new() };
    let mut stats =
        drive(&mut planner, arrivals, &lab, &mut rng, cfg.validate, LabBudget { time: None, iterations: Some(0) })
            .map_err(|e| format!("seed {seed}, {e}"))?;
    stats.window = planner.window();
    Ok(stats)
}

/// How far tasks' real durations stray from their estimates: each lasts its estimate × a factor
/// drawn evenly from 1 − NOISE to 1 + NOISE.
pub const NOISE: f64 = 0.2;

/// How the lab departs from the plan while it runs.
#[derive(Debug, Clone, Default)]
pub struct Disturbance {
    /// Each task lasts its estimate × a factor drawn evenly from 1 − noise to 1 + noise.
    pub noise: f64,
    /// Instruments going down: (when, resource, for how long), device seconds.
    pub failures: Vec<(f64, usize, f64)>,
    /// Per instrument class, how much longer than the estimate it arrived with a task on such
    /// an instrument really lasts (before the noise): a compiler's model that is off on this
    /// lab. Classes not listed take their estimate.
    pub bias: Vec<(InstrumentClass, f64)>,
}

impl Disturbance {
    fn bias(&self, class: Option<InstrumentClass>) -> f64 {
        class.and_then(|c| self.bias.iter().find(|b| b.0 == c)).map_or(1.0, |b| b.1)
    }
}

/// A task on an instrument that has ended, as the planner's side of a lab learns from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    pub run: usize,
    pub task: usize,
    /// The instrument it ran on.
    pub resource: Option<usize>,
    /// Its estimate when its run arrived, before any correction.
    pub estimate: f64,
    /// What it was planned to take (the estimate as corrected when its run arrived).
    pub planned: f64,
    /// What it took.
    pub actual: f64,
}

/// How a lab learns durations from experience while [`drive_learning`] runs it: told of every
/// task on an instrument that ends, it corrects the estimates of each run before it arrives.
pub trait Learning {
    fn finished(&mut self, problem: &LabProblem, task: Finished);
    /// `run`, about to arrive as run number `index`, with its estimates corrected.
    fn correct(&mut self, index: usize, run: &mut Run);
    /// The promise margin for the next arrival, instead of `base`: wider when tasks spread
    /// beyond what the lab has learned (the executor's rule).
    fn promise_margin(&mut self, base: f64) -> f64 {
        base
    }
    /// Runs of `problem` with a task not yet started whose estimates the lab now corrects
    /// otherwise than when they were planned: (run, every task's estimate).
    fn waiting(&mut self, _problem: &LabProblem) -> Vec<(usize, Vec<f64>)> {
        Vec::new()
    }
}

/// Learns nothing: every run is planned with the estimates it arrives with.
#[derive(Debug)]
pub struct NoLearning;

impl Learning for NoLearning {
    fn finished(&mut self, _: &LabProblem, _: Finished) {}
    fn correct(&mut self, _: usize, _: &mut Run) {}
}

/// Drives `planner` through a lab's events in virtual time until every task has ended: runs
/// arriving at their times (`arrivals`, in time order), tasks starting when planned and ending
/// after their disturbed durations (overruns reported when the plan's end passes), instruments
/// failing and coming back. Every event is repaired with `improve` and, when `validate`,
/// checked by the validator. Errors name the event and the first violations.
pub fn drive(
    planner: &mut Planner,
    arrivals: Vec<(f64, Run)>,
    lab: &Disturbance,
    rng: &mut Rng,
    check: bool,
    improve: LabBudget,
) -> Result<TraceStats, String> {
    drive_learning(planner, arrivals, lab, rng, check, improve, &mut NoLearning)
}

/// [`drive`], with `learning` told of every task on an instrument that ends, correcting each
/// arriving run's estimates and, at each arrival, those of the runs still waiting. What a task
/// really lasts comes from the estimate its run arrived with (× the lab's bias for its
/// instrument class, × the noise), never from the corrected one.
pub fn drive_learning(
    planner: &mut Planner,
    mut arrivals: Vec<(f64, Run)>,
    lab: &Disturbance,
    rng: &mut Rng,
    check: bool,
    improve: LabBudget,
    learning: &mut dyn Learning,
) -> Result<TraceStats, String> {
    let mut failures = lab.failures.clone();
    failures.sort_by(|a, b| a.0.total_cmp(&b.0));
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut arrivals = std::collections::VecDeque::from(arrivals);
    let tasks: usize = planner.problem.runs.iter().map(|r| r.tasks.len()).sum::<usize>()
        + arrivals.iter().map(|a| a.1.tasks.len()).sum::<usize>();
    // Per run and task, once started: when it began and when it will really end.
    let mut started: Vec<Vec<Option<(f64, f64)>>> =
        planner.problem.runs.iter().map(|r| vec![None; r.tasks.len()]).collect();
    let mut finished: Vec<Vec<bool>> = planner.problem.runs.iter().map(|r| vec![false; r.tasks.len()]).collect();
    let mut overrun_told: Vec<Vec<bool>> = finished.clone();
    // Per run and task: the estimate it arrived with.
    let mut estimates: Vec<Vec<f64>> =
        planner.problem.runs.iter().map(|r| r.tasks.iter().map(|t| t.duration).collect()).collect();
    let mut ups: Vec<(f64, usize)> = Vec::new();
    let mut stats = TraceStats::default();
    let mut now = 0.0f64;
    let limit = 50 * tasks + 1000;
    let base_margin = planner.promise_margin();
    for _ in 0..limit {
        // The next thing to happen: (time, priority, event). Times within a microsecond are one
        // instant, where ends and overruns come before starts.
        let mut next: Option<(f64, u8, Event)> = None;
        let mut consider = |t: f64, pri: u8, e: Event| {
            if next.as_ref().is_none_or(|n| t < n.0 - 1e-6 || ((t - n.0).abs() <= 1e-6 && pri < n.1)) {
                next = Some((t, pri, e));
            }
        };
        let mut pending = 0;
        for (ri, run) in planner.problem.runs.iter().enumerate() {
            for ti in 0..run.tasks.len() {
                let slot = planner.schedule.tasks[ri][ti];
                match (started[ri][ti], finished[ri][ti]) {
                    (None, _) => {
                        pending += 1;
                        consider(slot.start.max(now), 3, Event::TaskStarted { run: ri, task: ti });
                    }
                    (Some((_, actual_end)), false) => {
                        if actual_end > slot.end + 1e-6 && !overrun_told[ri][ti] {
                            consider(
                                slot.end.max(now),
                                1,
                                Event::TaskOverrun { run: ri, task: ti, expected_end: actual_end },
                            );
                        } else {
                            let at = actual_end.max(now);
                            consider(at, 0, Event::TaskFinished { run: ri, task: ti, at });
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some((t, run)) = arrivals.front() {
            // Corrected by what the lab has learned only if this is what happens next.
            consider(*t, 2, Event::RunArrived(run.clone()));
        }
        if let Some(&(t, r, d)) = failures.first() {
            consider(t, 2, Event::InstrumentDown { resource: r, until: t + d });
        }
        if let Some(&(t, r)) = ups.first() {
            consider(t, 2, Event::InstrumentUp { resource: r });
        }
        let Some((t, _, mut ev)) = next else { break };
        now = now.max(t);
        match &mut ev {
            Event::RunArrived(arriving) => {
                let Some((_, mut run)) = arrivals.pop_front() else { break };
                // What the lab learned since runs still waiting arrived corrects them too.
                for (r, durations) in learning.waiting(&planner.problem) {
                    planner.reestimate(r, &durations);
                }
                estimates.push(run.tasks.iter().map(|t| t.duration).collect());
                learning.correct(planner.problem.runs.len(), &mut run);
                planner.set_margin_for_arrivals(learning.promise_margin(base_margin));
                *arriving = run;
            }
            Event::InstrumentDown { resource, until } => {
                ups.push((*until, *resource));
                ups.sort_by(|a, b| a.0.total_cmp(&b.0));
                failures.remove(0);
            }
            Event::InstrumentUp { .. } => {
                ups.remove(0);
            }
            Event::TaskStarted { run, task } => {
                let d = estimates[*run][*task] * lab.bias(planner.problem.runs[*run].tasks[*task].class);
                let noise = 1.0 - lab.noise + 2.0 * lab.noise * (rng.below(1000) as f64 / 1000.0);
                started[*run][*task] = Some((now, now + d * noise));
            }
            Event::TaskOverrun { run, task, .. } => overrun_told[*run][*task] = true,
            Event::TaskFinished { run, task, at } => {
                finished[*run][*task] = true;
                let (r, t) = (*run, *task);
                let lab_task = &planner.problem.runs[r].tasks[t];
                if lab_task.class.is_some() && !LabProblem::is_arm_task(lab_task) {
                    let finished = Finished {
                        run: r,
                        task: t,
                        resource: planner.schedule.tasks[r][t].resource,
                        estimate: estimates[r][t],
                        planned: lab_task.duration,
                        actual: *at - started[r][t].map_or(*at, |s| s.0),
                    };
                    learning.finished(&planner.problem, finished);
                }
            }
            Event::RunCancelled { .. } | Event::ReservationsChanged(_) => {}
        }
        let rep = planner.handle_within(now, ev.clone(), improve).map_err(|e| format!("at {now}: {e}"))?;
        stats.repairs.push((rep.repair_time, pending));
        if let Event::RunArrived(_) = ev {
            let n = planner.problem.runs.last().map_or(0, |r| r.tasks.len());
            started.push(vec![None; n]);
            finished.push(vec![false; n]);
            overrun_told.push(vec![false; n]);
        }
        stats.moved += rep.moved;
        stats.events += 1;
        if check {
            let v = validate(&planner.problem, &planner.schedule);
            if !v.is_empty() {
                return Err(format!("event {} ({ev:?}) at {now}: {:?}", stats.events, &v[..v.len().min(3)]));
            }
        }
    }
    let all_done = finished.iter().flatten().all(|&f| f) && arrivals.is_empty();
    if !all_done {
        return Err(format!("deadlock or runaway: not every task finished after {} events", stats.events));
    }
    Ok(stats)
}
