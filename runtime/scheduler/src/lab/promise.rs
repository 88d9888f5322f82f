//! Promises: the time a run is promised to finish, fixed when it is admitted. The promise is the
//! later of the completion the plan then gives it and its fair finish (`queue`: runs arriving
//! later may be due sooner and go ahead), plus a margin in proportion to that turnaround
//! (durations are estimates; a longer wait meets more overruns and failures). Later repairs
//! protect promises (`replan`): an arriving run goes where it makes no older promise late (or
//! later than it already was), and a repair that would break promises by re-planning work an
//! event did not touch keeps that work where it was. Pure bookkeeping: the planner decides,
//! this only remembers and counts.

/// The margin used when none is set: 35 % of the planned turnaround. Measured with
/// `labctl simulate --disturb` (tasks 0.8–1.2× their estimates, liquid handlers failing): 20 %
/// kept 91–92 % of promises at 30 and 50 tenants, 35 % kept 96.7 and 97.0 %
/// (docs/scheduling.md, "Promises").
pub const DEFAULT_MARGIN: f64 = 0.35;

/// Below this a run is not late (device seconds; plans are built to microseconds).
const TOLERANCE_S: f64 = 1e-3;

/// The promise for a run released at `release` and planned to end at `planned_end`: that end
/// plus `margin` × the planned turnaround.
pub fn promised(release: f64, planned_end: f64, margin: f64) -> f64 {
    planned_end + margin * (planned_end - release).max(0.0)
}

/// Every run's promise, by run index.
#[derive(Debug, Clone)]
pub struct Promises {
    due: Vec<Option<f64>>,
    margin: f64,
}

impl Default for Promises {
    fn default() -> Promises {
        Promises { due: Vec::new(), margin: DEFAULT_MARGIN }
    }
}

impl Promises {
    /// The fraction of the planned turnaround added to promises made from now on.
    pub fn margin(&self) -> f64 {
        self.margin
    }

    pub fn set_margin(&mut self, margin: f64) {
        self.margin = if margin.is_finite() { margin.max(0.0) } else { DEFAULT_MARGIN };
    }

    /// Promises `run` (released at `release`, planned to end at `planned_end`) its planned end
    /// plus the margin; returns the promise.
    pub fn make(&mut self, run: usize, release: f64, planned_end: f64) -> f64 {
        let due = promised(release, planned_end, self.margin);
        self.set(run, Some(due));
        due
    }

    /// Sets (or, with `None`, withdraws: a cancelled run) a run's promise.
    pub fn set(&mut self, run: usize, due: Option<f64>) {
        if self.due.len() <= run {
            self.due.resize(run + 1, None);
        }
        self.due[run] = due;
    }

    pub fn get(&self, run: usize) -> Option<f64> {
        self.due.get(run).copied().flatten()
    }

    /// Runs planned to finish after their promise, given every run's completion.
    pub fn late(&self, completions: &[f64]) -> Vec<usize> {
        self.due
            .iter()
            .enumerate()
            .filter_map(|(r, d)| {
                let end = completions.get(r).copied()?;
                (d.is_some_and(|d| end > d + TOLERANCE_S)).then_some(r)
            })
            .collect()
    }

    /// Runs a change from `before` to `completions` would make late, or later than they were
    /// already: a run late once must not become the place every later change pushes into.
    pub fn newly_late(&self, before: &[f64], completions: &[f64]) -> Vec<usize> {
        self.due
            .iter()
            .enumerate()
            .filter_map(|(r, d)| {
                let (d, end) = (d.as_ref()?, completions.get(r)?);
                let bound = before.get(r).map_or(*d, |b| b.max(*d));
                (*end > bound + TOLERANCE_S).then_some(r)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promise_is_the_planned_end_plus_a_share_of_the_wait() {
        let mut p = Promises::default();
        p.set_margin(0.25);
        // Released at 100, planned to end at 500: 400 s of turnaround, 100 s of margin.
        assert_eq!(p.make(0, 100.0, 500.0), 600.0);
        assert_eq!(p.make(2, 0.0, 40.0), 50.0);
        assert_eq!(p.get(1), None);
        assert_eq!(p.late(&[600.0, 9e9, 50.0]), Vec::<usize>::new());
        assert_eq!(p.late(&[601.0, 9e9, 50.0]), vec![0]);
        // Run 0 was late already and got later; run 2 became late.
        assert_eq!(p.newly_late(&[601.0, 0.0, 0.0], &[602.0, 0.0, 60.0]), vec![0, 2]);
        assert_eq!(p.newly_late(&[601.0, 0.0, 0.0], &[601.0, 0.0, 50.0]), Vec::<usize>::new());
        p.set(0, None);
        assert_eq!(p.late(&[602.0, 0.0, 60.0]), vec![2]);
    }
}
