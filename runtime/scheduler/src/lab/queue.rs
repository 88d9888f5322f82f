//! The order runs are admitted in online: fair queuing across tenants by stretch (turnaround ÷
//! turnaround alone). Each run has a fair finish: the later of its release and its tenant's
//! previous fair finish, plus its turnaround alone ÷ its weight × the lab's present stretch. Runs
//! not yet begun are kept in order of fair finish, re-sorted at every arrival with the stretch
//! the plan in force shows. On a congested lab (stretch 30) a tenant arriving late with a short
//! run goes ahead of long runs submitted earlier, so every tenant waits about the same multiple
//! of its runs' own length: first come, first served let the first tenants' runs take their
//! time alone and the last tenants' 100 times it (Jain's index 0.36 at 50 tenants). The tenant's
//! chain of fair finishes keeps a tenant that submits much at once from taking the lab over.
//! Stretch-based deadlines follow Bender, Chakrabarti and Muthukrishnan (1998), "Flow and
//! stretch metrics for scheduling continuous job streams".
//!
//! Service classes come before fair finishes: runs not yet begun are ordered priority, standard,
//! spot, and by fair finish within a class. Spot runs take no part in the lab's stretch or
//! Jain's index (they are sold without a turnaround) and do not delay their tenant's other runs'
//! fair finishes.

use labware::ServiceClass;
use std::collections::BTreeMap;

/// What the queue knows of a run.
#[derive(Debug, Clone)]
struct Entry {
    tenant: String,
    release: f64,
    /// Turnaround alone on the empty lab.
    solo: f64,
    weight: f64,
    /// Turnaround alone ÷ weight: the tenant's claim on the lab for this run.
    share: f64,
    class: ServiceClass,
}

/// Every run admitted, in the order runs were added to the problem.
#[derive(Debug, Clone, Default)]
pub struct FairQueue {
    runs: Vec<Entry>,
}

impl FairQueue {
    /// Adds the next run (its index is the number of runs admitted so far): `solo` is its
    /// turnaround alone on the empty lab, `weight` the tenant's share (higher: served sooner).
    pub fn admit(&mut self, tenant: &str, weight: f64, class: ServiceClass, release: f64, solo: f64) {
        let solo = if solo.is_finite() && solo > 0.0 { solo } else { 0.0 };
        let share = solo / weight.max(1e-9);
        self.runs.push(Entry { tenant: tenant.to_string(), release, solo, weight, share, class });
    }

    /// Whether a run counts towards the lab's stretch and fairness (spot does not).
    fn measured(e: &Entry) -> bool {
        e.solo > 0.0 && e.class.promised()
    }

    /// How many times slower than alone the lab serves runs now: the mean, over runs the plan
    /// in force has finishing after `now`, of planned turnaround ÷ turnaround alone (1 when none).
    pub fn stretch(&self, now: f64, completion: impl Fn(usize) -> f64) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for (r, e) in self.runs.iter().enumerate() {
            let end = completion(r);
            if Self::measured(e) && end.is_finite() && end > now {
                sum += (end - e.release) / e.solo;
                n += 1;
            }
        }
        if n == 0 {
            1.0
        } else {
            (sum / n as f64).max(1.0)
        }
    }

    /// Jain's index over tenants' progress (1 ÷ (mean turnaround ÷ turnaround alone × weight))
    /// were runs to finish at `completions`, as [`LabProblem::fairness`] reports it: what the
    /// search must not lower.
    ///
    /// [`LabProblem::fairness`]: super::LabProblem::fairness
    pub fn jain(&self, completions: &[f64]) -> f64 {
        let mut per: BTreeMap<&str, (f64, usize, f64)> = BTreeMap::new();
        for (e, &end) in self.runs.iter().zip(completions) {
            if Self::measured(e) && end.is_finite() {
                let t = per.entry(e.tenant.as_str()).or_insert((0.0, 0, e.weight));
                t.0 += (end - e.release) / e.solo;
                t.1 += 1;
            }
        }
        let x: Vec<f64> = per.values().map(|&(sum, n, w)| 1.0 / (sum / n as f64 * w)).collect();
        super::jain_index(&x)
    }

    /// Each run's fair finish when the lab runs `stretch` times slower than alone: per tenant,
    /// in submission order, the later of its release and the fair finish of the tenant's
    /// previous run of no less weight and no later class (an urgent run does not queue behind
    /// its tenant's ordinary ones, nor a standard one behind its spot runs), plus `stretch` ×
    /// its share.
    pub fn deadlines(&self, stretch: f64) -> Vec<f64> {
        // Per tenant: (weight, class rank, fair finish of its latest run of that weight and class).
        let mut last: BTreeMap<&str, Vec<(f64, u8, f64)>> = BTreeMap::new();
        self.runs
            .iter()
            .map(|e| {
                let mine = last.entry(e.tenant.as_str()).or_default();
                let rank = e.class.rank();
                let prev = mine
                    .iter()
                    .filter(|(w, r, _)| *w >= e.weight - 1e-12 && *r <= rank)
                    .map(|x| x.2)
                    .fold(e.release, f64::max);
                let due = prev + stretch.max(1.0) * e.share;
                match mine.iter_mut().find(|(w, r, _)| (*w - e.weight).abs() < 1e-12 && *r == rank) {
                    Some(x) => x.2 = due,
                    None => mine.push((e.weight, rank, due)),
                }
                due
            })
            .collect()
    }

    /// `order` with the runs not yet begun sorted by class, then fair finish (earliest first),
    /// in the places they held; runs already begun keep theirs.
    pub fn reorder(&self, order: &[usize], stretch: f64, begun: impl Fn(usize) -> bool) -> Vec<usize> {
        let due = self.deadlines(stretch);
        let key = |r: usize| {
            let rank = self.runs.get(r).map_or(u8::MAX, |e| e.class.rank());
            (rank, due.get(r).copied().unwrap_or(f64::INFINITY))
        };
        sort_waiting(order, key, begun)
    }
}

/// `order` with the runs not yet begun sorted by `key` (smallest first, ties by index) in the
/// places they held; runs already begun keep theirs.
fn sort_waiting(order: &[usize], key: impl Fn(usize) -> (u8, f64), begun: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut waiting: Vec<usize> = order.iter().copied().filter(|&r| !begun(r)).collect();
    waiting.sort_by(|&a, &b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(&b))
    });
    let mut next = waiting.into_iter();
    order.iter().map(|&r| if begun(r) { r } else { next.next().unwrap_or(r) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD: ServiceClass = ServiceClass::Standard;

    #[test]
    fn on_a_congested_lab_a_later_short_run_goes_before_an_earlier_long_one() {
        let mut q = FairQueue::default();
        q.admit("a", 1.0, STD, 0.0, 3600.0);
        q.admit("b", 1.0, STD, 600.0, 300.0);
        // Alone (stretch 1): due 3600 and 900 — b first anyway; the long run began, so it keeps
        // its place.
        assert_eq!(q.reorder(&[0, 1], 1.0, |r| r == 0), vec![0, 1]);
        q.admit("c", 1.0, STD, 0.0, 3600.0);
        q.admit("d", 1.0, STD, 1200.0, 600.0);
        // Not begun: c (0 + 3600 s) and d (1200 + 600 s). At stretch 1, c is due at 3600 and d
        // at 1800; at stretch 10 at 36,000 and 7,200: d first either way, and c not last
        // because it came first.
        assert_eq!(q.reorder(&[0, 1, 2, 3], 10.0, |r| r <= 1), vec![0, 1, 3, 2]);
    }

    #[test]
    fn a_tenants_runs_chain_and_weight_shortens_them() {
        let mut q = FairQueue::default();
        for _ in 0..3 {
            q.admit("a", 1.0, STD, 0.0, 100.0);
        }
        q.admit("b", 2.0, STD, 0.0, 100.0);
        // a's three runs submitted at once are due one after another; b's (weight 2) at half
        // its length; at stretch 2 every share counts twice.
        assert_eq!(q.deadlines(1.0), vec![100.0, 200.0, 300.0, 50.0]);
        assert_eq!(q.deadlines(2.0), vec![200.0, 400.0, 600.0, 100.0]);
        assert_eq!(q.reorder(&[0, 1, 2, 3], 1.0, |_| false), vec![3, 0, 1, 2]);
        // An urgent run of a's (weight 10) does not wait for a's ordinary ones.
        q.admit("a", 10.0, STD, 0.0, 100.0);
        assert_eq!(q.deadlines(1.0)[4], 10.0);
    }

    #[test]
    fn priority_goes_first_spot_last_and_spot_neither_slows_nor_measures() {
        let mut q = FairQueue::default();
        q.admit("a", 1.0, ServiceClass::Spot, 0.0, 10.0);
        q.admit("a", 1.0, STD, 0.0, 100.0);
        q.admit("b", 1.0, ServiceClass::Priority, 500.0, 1000.0);
        q.admit("c", 1.0, STD, 0.0, 50.0);
        // Priority before standard whatever the fair finish, spot after, though it is shortest.
        assert_eq!(q.reorder(&[0, 1, 2, 3], 1.0, |_| false), vec![2, 3, 1, 0]);
        // a's standard run is not chained behind its spot run: due at its own length.
        assert_eq!(q.deadlines(1.0)[1], 100.0);
        // A spot run planned to take forever changes neither the stretch nor Jain's index.
        let ends = [1e9, 200.0, 1500.0, 100.0];
        assert_eq!(q.stretch(0.0, |r| ends[r]), q.stretch(0.0, |r| if r == 0 { 10.0 } else { ends[r] }));
        assert_eq!(q.jain(&ends), q.jain(&[10.0, 200.0, 1500.0, 100.0]));
    }

    #[test]
    fn stretch_is_the_mean_planned_slowdown_of_runs_still_to_finish() {
        let mut q = FairQueue::default();
        q.admit("a", 1.0, STD, 0.0, 100.0);
        q.admit("b", 1.0, STD, 0.0, 100.0);
        q.admit("c", 1.0, STD, 0.0, 100.0);
        // a finished at 100 (before now = 150); b and c are planned to end at 300 and 500.
        let ends = [100.0, 300.0, 500.0];
        assert_eq!(q.stretch(150.0, |r| ends[r]), 4.0);
        // Nothing left to run: the lab serves as if alone.
        assert_eq!(q.stretch(1000.0, |r| ends[r]), 1.0);
        // Equal progress: Jain 1; one tenant four times slower than the others: lower.
        assert!((q.jain(&[300.0, 300.0, 300.0]) - 1.0).abs() < 1e-12);
        assert!((q.jain(&[100.0, 100.0, 400.0]) - 0.818).abs() < 1e-3);
    }
}
