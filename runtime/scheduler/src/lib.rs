//! Pure scheduling of every tenant's runs onto the shared instrument pool.
//!
//! - [`lab`] is the scheduler the runtime uses: the lab model (instruments, nests, arm routes,
//!   plates, blocking nests, batching, down windows, reservations), a constructive solver with an
//!   anytime order search, online re-planning around work under way, an independent validator,
//!   lower bounds, and a seeded generator and trace simulator for tests and benchmarks.
//! - [`shop`] is the same search core on the job-shop and flexible job-shop instances of the
//!   literature (`schedbench`), where it can be compared with best-known results.
//! - [`list_schedule`] and [`validate()`] at the crate root are the plate-free baseline: the lab
//!   model without arms, kept as the simplest reference.
//!
//! No IO, no tokio. Lab time is an argument; the only clock read is the wall-clock budget of the
//! anytime searches, and an iteration budget makes every result deterministic for a seed.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod lab;
pub mod shop;
pub mod validate;

use labware::{InstrumentClass, Site};
use protocols::plan::{RunPlan, Task};
use serde::Serialize;
use std::collections::BTreeMap;

pub use validate::{validate, Violation};

/// One run to schedule.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub run: String,
    pub tenant: String,
    pub plan: &'a RunPlan,
    /// Earliest start, seconds.
    pub release_s: f64,
}

/// Where and when one task runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    pub job: usize,
    pub task: u32,
    /// Instrument, arm or technician id; `None` for a pure delay.
    pub resource: Option<String>,
    pub start_s: f64,
    pub end_s: f64,
}

/// A complete schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Schedule {
    pub assignments: Vec<Assignment>,
}

impl Schedule {
    /// End of the last task.
    pub fn makespan(&self) -> f64 {
        self.assignments.iter().map(|a| a.end_s).fold(0.0, f64::max)
    }
}

/// A resource that can run tasks of one class, with how many at once.
#[derive(Debug, Clone)]
pub struct Resource {
    pub id: String,
    pub class: InstrumentClass,
    pub capacity: u32,
    pub pipettes: Vec<String>,
}

/// Every resource of a site: instruments, arms (for lid handling) and technicians.
pub fn resources(site: &Site) -> Vec<Resource> {
    let mut out: Vec<Resource> = site
        .instruments
        .iter()
        .map(|i| Resource {
            id: i.id.clone(),
            class: i.class,
            capacity: i.capacity,
            pipettes: i.pipettes.iter().map(|p| p.name.clone()).collect(),
        })
        .collect();
    out.extend(site.arms.iter().map(|a| Resource {
        id: a.id.clone(),
        class: InstrumentClass::RobotArm,
        capacity: 1,
        pipettes: Vec::new(),
    }));
    out.extend((1..=site.site.technicians).map(|n| Resource {
        id: format!("technician{n}"),
        class: InstrumentClass::Technician,
        capacity: 1,
        pipettes: Vec::new(),
    }));
    out
}

/// Whether a resource can run a task: same class, and every pipette the task uses.
pub fn can_run(r: &Resource, t: &Task) -> bool {
    Some(r.class) == t.class && t.pipettes.iter().all(|p| r.pipettes.contains(p))
}

/// Greedy list scheduling: repeatedly start the ready task (all predecessors placed) that can
/// start earliest, on the suitable resource where it can start earliest; ties go to the earlier
/// job and task. Respects release times, precedence and capacities; max lags are not enforced
/// here (the validator reports them).
pub fn list_schedule(site: &Site, jobs: &[Job]) -> Schedule {
    let res = resources(site);
    // Busy intervals per resource.
    let mut busy: Vec<Vec<(f64, f64)>> = vec![Vec::new(); res.len()];
    let mut end: Vec<Vec<Option<f64>>> = jobs.iter().map(|j| vec![None; j.plan.tasks.len()]).collect();
    let mut placed = 0usize;
    let total: usize = jobs.iter().map(|j| j.plan.tasks.len()).sum();
    let mut out = Schedule::default();
    while placed < total {
        let mut best: Option<(f64, usize, usize, Option<usize>)> = None;
        for (ji, j) in jobs.iter().enumerate() {
            for t in &j.plan.tasks {
                let ti = t.id as usize;
                if end[ji][ti].is_some() {
                    continue;
                }
                let Some(ready) = t
                    .after
                    .iter()
                    .try_fold(j.release_s, |acc, &p| end[ji].get(p as usize).copied().flatten().map(|e| acc.max(e)))
                else {
                    continue;
                };
                let choice = if t.class.is_none() {
                    Some((ready, None))
                } else {
                    res.iter()
                        .enumerate()
                        .filter(|(_, r)| can_run(r, t))
                        .map(|(ri, r)| (earliest_fit(&busy[ri], r.capacity, ready, t.duration_s), Some(ri)))
                        .min_by(|a, b| a.0.total_cmp(&b.0))
                };
                // A task no resource can run is placed without one; the validator reports it.
                let (start, ri) = choice.unwrap_or((ready, None));
                if best.is_none_or(|b| start < b.0) {
                    best = Some((start, ji, ti, ri));
                }
            }
        }
        let Some((start, ji, ti, ri)) = best else { break };
        let t = &jobs[ji].plan.tasks[ti];
        let finish = start + t.duration_s;
        if let Some(ri) = ri {
            busy[ri].push((start, finish));
        }
        end[ji][ti] = Some(finish);
        out.assignments.push(Assignment {
            job: ji,
            task: t.id,
            resource: ri.map(|r| res[r].id.clone()),
            start_s: start,
            end_s: finish,
        });
        placed += 1;
    }
    out
}

/// Earliest start at or after `ready` where `[start, start + dur)` keeps at most `capacity`
/// intervals overlapping.
fn earliest_fit(busy: &[(f64, f64)], capacity: u32, ready: f64, dur: f64) -> f64 {
    let mut candidates: Vec<f64> =
        std::iter::once(ready).chain(busy.iter().map(|b| b.1).filter(|&e| e > ready)).collect();
    candidates.sort_by(f64::total_cmp);
    for s in candidates {
        if max_overlap(busy, s, s + dur) < capacity as usize {
            return s;
        }
    }
    ready
}

/// Largest number of intervals in `busy` overlapping any instant of `[a, b)`.
pub(crate) fn max_overlap(busy: &[(f64, f64)], a: f64, b: f64) -> usize {
    if a >= b {
        // An instant: intervals that contain it.
        return busy.iter().filter(|&&(s, e)| s <= a && a < e).count();
    }
    let mut events: Vec<(f64, i32)> = Vec::new();
    for &(s, e) in busy {
        let (s, e) = (s.max(a), e.min(b));
        if s < e {
            events.push((s, 1));
            events.push((e, -1));
        }
    }
    // Ends sort before starts at the same instant: back-to-back tasks do not overlap.
    events.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    let (mut cur, mut best) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        best = best.max(cur);
    }
    best as usize
}

/// Lower bound on the makespan: the longest critical path of any job from its release.
pub fn critical_path_bound(jobs: &[Job]) -> f64 {
    jobs.iter().map(|j| j.release_s + j.plan.earliest_finish().into_iter().fold(0.0, f64::max)).fold(0.0, f64::max)
}

/// Busy seconds per resource, for utilisation.
pub fn busy_seconds(s: &Schedule) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for a in &s.assignments {
        if let Some(r) = &a.resource {
            *out.entry(r.clone()).or_insert(0.0) += a.end_s - a.start_s;
        }
    }
    out
}
