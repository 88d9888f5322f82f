//! Durations from experience in the capacity simulation, as the executor learns them: every task
//! on an instrument that ends is a sample ([`crate::experience`]), and each run is planned, when
//! it arrives, with its estimates corrected by what the lab has learned so far (the runs still
//! waiting corrected again when that changed) and promised with the margin the spread left
//! after correction gives (`Experience::promise_margin`). The report then says how far the
//! estimates plans used were from what tasks took.

use super::workload::Workload;
use crate::experience::{median, task_kind, Experience, TaskDuration, RECENT};
use scheduler::lab::trace::{Finished, Learning};
use scheduler::lab::{LabProblem, Run};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Learns from the simulated lab's finished tasks and corrects arriving runs' estimates.
#[derive(Debug)]
pub struct Learner<'a> {
    workload: &'a Workload,
    /// The workload entry each run (by index, in order of arrival) comes from.
    protocol_of: Vec<usize>,
    /// Correct estimates (as the executor does), or only record what happened.
    learn: bool,
    /// Newest first, at most [`RECENT`], as the executor reads them from its store.
    samples: VecDeque<TaskDuration>,
    experience: Experience,
    /// A sample came since `experience` was built.
    stale: bool,
    /// What runs still waiting were last corrected with.
    applied: Experience,
    /// Every finished task: (class, kind, compiler's estimate, planned, actual).
    seen: Vec<(String, &'static str, f64, f64, f64)>,
}

impl<'a> Learner<'a> {
    pub fn new(workload: &'a Workload, protocol_of: Vec<usize>, learn: bool) -> Learner<'a> {
        Learner {
            workload,
            protocol_of,
            learn,
            samples: VecDeque::new(),
            experience: Experience::default(),
            stale: false,
            applied: Experience::default(),
            seen: Vec::new(),
        }
    }

    /// Learns again from the samples if one came since it last did.
    fn refresh(&mut self) {
        if self.stale {
            self.experience = Experience::from_samples(self.samples.make_contiguous());
            self.stale = false;
        }
    }

    fn kind(&self, run: usize, task: usize) -> &'static str {
        self.protocol_of
            .get(run)
            .and_then(|&p| self.workload.protocols[p].plan.tasks.get(task))
            .map_or("wait", task_kind)
    }

    /// How far estimates were from what tasks took, per instrument class and kind of work.
    pub fn report(&self) -> Vec<DurationLine> {
        let mut per: BTreeMap<(String, &'static str), Vec<Seconds>> = BTreeMap::new();
        for (class, kind, estimate, planned, actual) in &self.seen {
            per.entry((class.clone(), kind)).or_default().push((*estimate, *planned, *actual));
        }
        per.into_iter()
            .map(|((class, kind), v)| {
                let err = |xs: &[Seconds], pick: fn(&Seconds) -> f64| {
                    median(xs.iter().map(|x| (x.2 - pick(x)).abs() / x.2.max(1e-9)).collect())
                };
                let later = &v[v.len() / 2..];
                DurationLine {
                    class,
                    kind: kind.to_string(),
                    samples: v.len(),
                    actual_over_estimate: median(v.iter().map(|x| x.2 / x.0.max(1e-9)).collect()),
                    error_estimate: err(&v, |x| x.0),
                    error_planned: err(&v, |x| x.1),
                    error_planned_later_half: err(later, |x| x.1),
                }
            })
            .collect()
    }
}

impl Learning for Learner<'_> {
    fn finished(&mut self, problem: &LabProblem, f: Finished) {
        let Some(class) = problem.runs[f.run].tasks[f.task].class else { return };
        let kind = self.kind(f.run, f.task);
        self.seen.push((class.as_str().to_string(), kind, f.estimate, f.planned, f.actual));
        self.samples.push_front(TaskDuration {
            run_id: problem.runs[f.run].id.clone(),
            task_id: f.task as i64,
            instrument: f.resource.map_or_else(String::new, |r| problem.resources[r].id.clone()),
            class: class.as_str().to_string(),
            kind: kind.to_string(),
            estimated_s: f.estimate,
            actual_s: f.actual,
            at: 0,
        });
        self.samples.truncate(RECENT);
        self.stale = true;
    }

    fn correct(&mut self, index: usize, run: &mut Run) {
        if !self.learn {
            return;
        }
        self.refresh();
        let Some(&p) = self.protocol_of.get(index) else { return };
        let corrected = self.experience.corrected(&self.workload.protocols[p].plan);
        for (t, c) in run.tasks.iter_mut().zip(&corrected.tasks) {
            t.duration = c.duration_s;
        }
    }

    fn waiting(&mut self, problem: &LabProblem) -> Vec<(usize, Vec<f64>)> {
        if !self.learn {
            return Vec::new();
        }
        self.refresh();
        if self.experience.corrects_as(&self.applied) {
            return Vec::new();
        }
        self.applied = self.experience.clone();
        let mut out = Vec::new();
        for (r, pins) in problem.pinned.iter().enumerate() {
            let Some(&p) = self.protocol_of.get(r).filter(|_| pins.iter().any(Option::is_none)) else { continue };
            let corrected = self.experience.corrected(&self.workload.protocols[p].plan);
            out.push((r, corrected.tasks.iter().map(|t| t.duration_s).collect()));
        }
        out
    }

    fn promise_margin(&mut self, base: f64) -> f64 {
        if !self.learn {
            return base;
        }
        self.refresh();
        self.experience.promise_margin(base)
    }
}

/// One task's compiler's estimate, planned duration and actual duration.
type Seconds = (f64, f64, f64);

/// Estimates against what tasks took, for one instrument class and kind of work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurationLine {
    pub class: String,
    pub kind: String,
    pub samples: usize,
    /// Median of actual ÷ the compiler's estimate.
    pub actual_over_estimate: f64,
    /// Median of |actual − estimate| ÷ actual, with the compiler's estimate.
    pub error_estimate: f64,
    /// The same with the estimate the plan used (corrected when its run arrived).
    pub error_planned: f64,
    /// The same over the later half of the tasks, once the lab had learned.
    pub error_planned_later_half: f64,
}
