//! Fairness: how much each tenant waits because others share the lab, a fair reference order,
//! and a search that trades at most a few percent of makespan for a smaller worst slowdown.

use super::solve::{solve, LabBudget, LabOutcome, LabSchedule};
use super::LabProblem;
use crate::shop::solve::Rng;
use std::collections::BTreeMap;
use std::time::Instant;

impl LabProblem {
    /// Each run's turnaround alone on the empty lab (completion minus release).
    pub fn solo_turnarounds(&self) -> Vec<f64> {
        // The empty lab, cloned once without the runs (cloning them per run would be quadratic).
        let empty = self.empty_lab();
        self.runs.iter().map(|run| empty.turnaround_alone(run)).collect()
    }

    /// The site with no runs and no clock: where [`LabProblem::turnaround_alone`] is measured.
    pub fn empty_lab(&self) -> LabProblem {
        let mut empty = self.clone_site();
        empty.not_before = 0.0;
        empty
    }

    /// A run's turnaround on this lab with nothing else in it (NaN when it cannot be built).
    pub fn turnaround_alone(&self, run: &super::Run) -> f64 {
        let mut alone = self.clone();
        alone.runs = vec![run.clone()];
        alone.pinned = vec![vec![None; run.tasks.len()]];
        alone.anchors = Vec::new();
        alone.build(&[0]).map_or(f64::NAN, |s| s.completion(0) - run.release)
    }

    /// The worst tenant's slowdown: per tenant, the mean over its runs of turnaround ÷ solo
    /// turnaround, times the tenant's weight (a tenant of weight 2 is owed twice the share, so
    /// half the slowdown: weighted slowdowns are equal when service is weighted-fair).
    pub fn worst_slowdown(&self, s: &LabSchedule, solo: &[f64]) -> f64 {
        let mut per: BTreeMap<&str, (f64, usize, f64)> = BTreeMap::new();
        let ends = s.completions();
        for (ri, run) in self.runs.iter().enumerate() {
            if solo[ri].is_nan() || solo[ri] <= 0.0 {
                continue;
            }
            let e = per.entry(run.tenant.as_str()).or_insert((0.0, 0, run.weight));
            e.0 += (ends[ri] - run.release) / solo[ri];
            e.1 += 1;
        }
        per.values().map(|&(sum, n, w)| sum / n as f64 * w).fold(0.0, f64::max)
    }

    /// A fairness-weighted reference order (weighted fair queuing): each tenant's runs get
    /// virtual finish times advancing by solo turnaround ÷ weight from their release; runs are
    /// inserted by virtual finish.
    pub fn fair_order(&self, solo: &[f64]) -> Vec<usize> {
        let mut by_release: Vec<usize> = (0..self.runs.len()).collect();
        by_release.sort_by(|&a, &b| self.runs[a].release.total_cmp(&self.runs[b].release).then(a.cmp(&b)));
        let mut last: BTreeMap<&str, f64> = BTreeMap::new();
        let mut tagged: Vec<(f64, usize)> = Vec::with_capacity(by_release.len());
        for r in by_release {
            let run = &self.runs[r];
            let start = last.get(run.tenant.as_str()).copied().unwrap_or(f64::NEG_INFINITY).max(run.release);
            let finish = start + solo[r].max(0.0) / run.weight.max(1e-9);
            last.insert(run.tenant.as_str(), finish);
            tagged.push((finish, r));
        }
        tagged.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        tagged.into_iter().map(|t| t.1).collect()
    }
}

/// What a fair solve found, with the references it is measured against.
#[derive(Debug, Clone)]
pub struct FairOutcome {
    pub outcome: LabOutcome,
    /// Best makespan found by the makespan-first search.
    pub makespan_first: f64,
    /// Worst tenant slowdown of the makespan-first schedule.
    pub slowdown_makespan_first: f64,
    /// Worst tenant slowdown of the fair reference order.
    pub slowdown_reference: f64,
    /// Worst tenant slowdown of the returned schedule.
    pub slowdown: f64,
}

/// The Jain's index a fair schedule should reach: service in proportion to the weights, give or
/// take.
pub const JAIN_FLOOR: f64 = 0.9;

/// How fair a schedule is.
#[derive(Debug, Clone, Copy)]
struct Judged {
    /// The worst tenant's weighted slowdown.
    slowdown: f64,
    jain: f64,
}

impl Judged {
    /// First Jain's index at least [`JAIN_FLOOR`] (below it, higher is better), then the smaller
    /// worst slowdown: minimising only the worst tenant's slowdown can leave the others served
    /// far out of proportion to their weights.
    fn better_than(&self, other: &Judged) -> bool {
        match (self.jain >= JAIN_FLOOR, other.jain >= JAIN_FLOOR) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => self.slowdown < other.slowdown - 1e-9,
            (false, false) => self.jain > other.jain + 1e-9,
        }
    }
}

/// Makespan first (half the budget), then among schedules no more than `makespan_slack` (e.g.
/// 0.03) longer, one with Jain's index at least [`JAIN_FLOOR`] and the smallest worst-tenant
/// slowdown.
pub fn solve_fair(p: &LabProblem, budget: LabBudget, seed: u64, makespan_slack: f64) -> Option<FairOutcome> {
    let half = LabBudget { time: budget.time.map(|t| t / 2), iterations: budget.iterations.map(|i| i / 2) };
    let first = solve(p, half, seed)?;
    let solo = p.solo_turnarounds();
    let m_star = first.schedule.makespan();
    let cap = m_star * (1.0 + makespan_slack);
    let reference = p.fair_order(&solo);
    let ref_sched = p.build(&reference)?;
    let slowdown_reference = p.worst_slowdown(&ref_sched, &solo);
    let slowdown_makespan_first = p.worst_slowdown(&first.schedule, &solo);
    let judge =
        |s: &LabSchedule| Judged { slowdown: p.worst_slowdown(s, &solo), jain: p.fairness_against(s, &solo).jain };
    // Start from whichever of the two is better under the cap.
    let (mut order, mut best, mut window) = (first.order.clone(), first.schedule.clone(), first.window);
    let mut best_j = judge(&best);
    let ref_j = judge(&ref_sched);
    if ref_sched.makespan() <= cap && ref_j.better_than(&best_j) {
        order = reference;
        window = 1;
        best = ref_sched;
        best_j = ref_j;
    }
    let t0 = Instant::now();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let n = order.len();
    let mut it = 0u64;
    let done = |it: u64| half.iterations.is_some_and(|k| it >= k) || half.time.is_some_and(|t| t0.elapsed() >= t);
    while n > 1 && !done(it) {
        it += 1;
        let mut cand = order.clone();
        let i = rng.below(n);
        let r = cand.remove(i);
        cand.insert(rng.below(n), r);
        if let Some(s) = p.build_interleaved(&cand, window) {
            if s.makespan() <= cap + 1e-6 {
                let j = judge(&s);
                if j.better_than(&best_j) {
                    best_j = j;
                    best = s;
                    order = cand;
                }
            }
        }
    }
    let iterations = first.iterations + it;
    Some(FairOutcome {
        outcome: LabOutcome {
            schedule: best,
            order,
            window,
            first_makespan: first.first_makespan,
            time_to_first: first.time_to_first,
            iterations,
        },
        makespan_first: m_star,
        slowdown_makespan_first,
        slowdown_reference,
        slowdown: best_j.slowdown,
    })
}
