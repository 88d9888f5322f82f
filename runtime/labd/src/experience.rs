//! Durations from experience: how long tasks really took against the compiler's estimate, per
//! instrument and kind of work, and the correction plans and quotes apply to estimates. Pure:
//! the executor records each finished task (`Store::record_duration`, once per run and task),
//! and whoever plans reads the latest samples back and builds an [`Experience`] from them.
//!
//! The update is bounded and robust to outliers: for each instrument class and task kind, the
//! factor is the median of the last [`WINDOW`] ratios of actual to estimated seconds, used once
//! there are [`MIN_SAMPLES`] of them, and kept within [`MIN_FACTOR`]..=[`MAX_FACTOR`]. One odd
//! task (an instrument paused by hand for an hour) moves a median little; an estimate off by
//! more than the bounds is a compiler defect to fix, not something to plan around silently.

use protocols::plan::{RunPlan, Task};
use std::collections::BTreeMap;

/// Samples read back from the store to learn from (the most recent, over every class).
pub const RECENT: usize = 5_000;
/// Samples per class and kind the factor is the median of (the most recent).
pub const WINDOW: usize = 50;
/// Samples needed before estimates of a class and kind are corrected at all.
pub const MIN_SAMPLES: usize = 5;
/// The correction never shortens an estimate below half of it.
pub const MIN_FACTOR: f64 = 0.5;
/// The correction never lengthens an estimate beyond three times it.
pub const MAX_FACTOR: f64 = 3.0;
/// A median within this of 1 is noise, not a bias: the estimate stays. Tasks lasting 0.8–1.2×
/// their estimate give medians of 50 within about ±4 %; corrected by those, plans came out a
/// little short as often as long, and the capacity simulation at 30 tenants, disturbed, kept
/// 109 promises of 120 instead of 116.
pub const DEAD_BAND: f64 = 0.05;

/// The factor for ratios `v` (actual ÷ estimated, at least [`MIN_SAMPLES`]): their median, once
/// it is further from 1 than noise would put it — beyond [`DEAD_BAND`] and twice the median's
/// standard error (1.25 × the spread ÷ √n, the spread from the quartiles) —, within the bounds;
/// else 1. Five samples of a task taking 3× its estimate correct it; five of tasks spread
/// 0.8–1.2× around it do not (their median strays ±6 %: at 50 tenants, disturbed, corrections
/// by such early medians broke promises enough to keep 94 % instead of 95.5 %).
fn factor_of(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let m = median(sorted.clone());
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let spread = (q(0.75) - q(0.25)) / 1.35;
    let noise = 2.0 * 1.25 * spread / (sorted.len() as f64).sqrt();
    if (m - 1.0).abs() <= DEAD_BAND.max(noise) {
        1.0
    } else {
        m.clamp(MIN_FACTOR, MAX_FACTOR)
    }
}

/// One finished task: where it ran, what kind of work it was, estimated and actual seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDuration {
    pub run_id: String,
    pub task_id: i64,
    pub instrument: String,
    /// The instrument class, as `InstrumentClass::as_str` spells it.
    pub class: String,
    /// [`task_kind`] of the task.
    pub kind: String,
    pub estimated_s: f64,
    pub actual_s: f64,
    /// When it was recorded (ms since the epoch).
    pub at: i64,
}

impl TaskDuration {
    /// Actual ÷ estimated; `None` when either is not a positive finite number.
    pub fn ratio(&self) -> Option<f64> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        (ok(self.estimated_s) && ok(self.actual_s)).then(|| self.actual_s / self.estimated_s)
    }
}

/// The kind of work a task is: the command that takes most of its estimated time
/// (`aspirate`, `read_absorbance`, `incubate`, …); `wait` for a task of no commands.
pub fn task_kind(task: &Task) -> &'static str {
    let mut per: BTreeMap<&'static str, f64> = BTreeMap::new();
    for c in &task.commands {
        *per.entry(c.op.name()).or_default() += c.estimate_s;
    }
    per.into_iter().max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(a.0))).map_or("wait", |(k, _)| k)
}

/// Samples needed before the spread widens promises at all.
pub const MIN_SPREAD_SAMPLES: usize = 20;
/// The 90th percentile of actual ÷ (corrected) estimate the default promise margin was measured
/// against: tasks lasting 0.8–1.2× their estimate in `labctl simulate --disturb`.
pub const CALIBRATED_P90: f64 = 1.16;
/// The most the spread adds to the promise margin (a fraction of the turnaround).
pub const MAX_EXTRA_MARGIN: f64 = 0.65;

/// Correction factors learned from samples.
#[derive(Debug, Clone, Default)]
pub struct Experience {
    /// (class, kind) → factor, only where there were enough samples.
    factors: BTreeMap<(String, String), f64>,
    /// The 90th percentile of actual ÷ corrected estimate over every sample, once there are
    /// [`MIN_SPREAD_SAMPLES`].
    p90_after_correction: Option<f64>,
}

impl Experience {
    /// Learns from `samples`, newest first (as `Store::task_durations` returns them).
    pub fn from_samples(samples: &[TaskDuration]) -> Experience {
        let mut ratios: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
        for s in samples {
            let Some(r) = s.ratio() else { continue };
            let v = ratios.entry((s.class.clone(), s.kind.clone())).or_default();
            if v.len() < WINDOW {
                v.push(r);
            }
        }
        let factors: BTreeMap<(String, String), f64> =
            ratios.iter().filter(|(_, v)| v.len() >= MIN_SAMPLES).map(|(k, v)| (k.clone(), factor_of(v))).collect();
        let mut left: Vec<f64> = ratios
            .iter()
            .flat_map(|(k, v)| {
                let f = factors.get(k).copied().unwrap_or(1.0);
                v.iter().map(move |r| r / f)
            })
            .collect();
        left.sort_by(f64::total_cmp);
        let p90_after_correction =
            (left.len() >= MIN_SPREAD_SAMPLES).then(|| left[((left.len() - 1) as f64 * 0.9).round() as usize]);
        Experience { factors, p90_after_correction }
    }

    /// The promise margin to use instead of `base` (calibrated for tasks lasting 0.8–1.2× their
    /// estimate): wider by how far the 90th percentile of actual ÷ corrected estimate on this
    /// lab goes beyond that, at most [`MAX_EXTRA_MARGIN`] more; `base` without enough samples.
    /// A lab whose tasks keep overrunning what it learned promises with the confidence it has.
    pub fn promise_margin(&self, base: f64) -> f64 {
        let extra = self.p90_after_correction.map_or(0.0, |p| (p - CALIBRATED_P90).clamp(0.0, MAX_EXTRA_MARGIN));
        base + extra
    }

    /// Whether `other` corrects every estimate as this does.
    pub fn corrects_as(&self, other: &Experience) -> bool {
        self.factors == other.factors
    }

    /// The factor estimates of `kind` on instruments of `class` are multiplied by (1 without
    /// enough experience).
    pub fn factor(&self, class: &str, kind: &str) -> f64 {
        self.factors.get(&(class.to_string(), kind.to_string())).copied().unwrap_or(1.0)
    }

    /// Whether anything has been learned yet.
    pub fn is_empty(&self) -> bool {
        self.factors.is_empty()
    }

    /// `plan` with each task's estimate corrected, for planning and quoting only: the plan a
    /// run executes and is billed by keeps the compiler's estimates (corrected again, the
    /// correction would compound).
    pub fn corrected(&self, plan: &RunPlan) -> RunPlan {
        let mut out = plan.clone();
        if self.is_empty() {
            return out;
        }
        for t in &mut out.tasks {
            if let Some(class) = t.class {
                t.duration_s *= self.factor(class.as_str(), task_kind(t));
            }
        }
        out
    }
}

/// The median of a non-empty list (1 for an empty one).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 1.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How far estimates were from what happened, for one instrument and kind of work.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorLine {
    pub instrument: String,
    pub class: String,
    pub kind: String,
    pub samples: usize,
    /// Percentiles of actual ÷ estimated: 10th, median, 90th.
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
    /// Median of |actual − estimate| ÷ actual, with the compiler's estimate.
    pub error_raw: f64,
    /// The same, with each estimate corrected as plans and quotes correct it now.
    pub error_corrected: f64,
    /// The factor estimates of this class and kind are multiplied by now.
    pub factor: f64,
}

/// The error distribution per instrument and kind of work over `samples` (newest first, at
/// most [`WINDOW`] per line), sorted by instrument then kind.
pub fn error_report(samples: &[TaskDuration]) -> Vec<ErrorLine> {
    let experience = Experience::from_samples(samples);
    let mut per: BTreeMap<(String, String), (String, Vec<&TaskDuration>)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.ratio().is_some()) {
        let line = per.entry((s.instrument.clone(), s.kind.clone())).or_insert_with(|| (s.class.clone(), Vec::new()));
        if line.1.len() < WINDOW {
            line.1.push(s);
        }
    }
    per.into_iter()
        .map(|((instrument, kind), (class, v))| {
            let factor = experience.factor(&class, &kind);
            let mut ratios: Vec<f64> = v.iter().filter_map(|s| s.ratio()).collect();
            ratios.sort_by(f64::total_cmp);
            let pct = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
            let err = |f: f64| median(v.iter().map(|s| (s.actual_s - s.estimated_s * f).abs() / s.actual_s).collect());
            ErrorLine {
                samples: v.len(),
                p10: pct(0.1),
                median: median(ratios.clone()),
                p90: pct(0.9),
                error_raw: err(1.0),
                error_corrected: err(factor),
                factor,
                instrument,
                class,
                kind,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(class: &str, kind: &str, est: f64, actual: f64) -> TaskDuration {
        TaskDuration {
            run_id: "r".into(),
            task_id: 0,
            instrument: format!("{class}1"),
            class: class.into(),
            kind: kind.into(),
            estimated_s: est,
            actual_s: actual,
            at: 0,
        }
    }

    #[test]
    fn estimates_are_corrected_by_the_median_ratio_once_there_are_enough_samples() {
        let slow: Vec<_> = (0..MIN_SAMPLES - 1).map(|_| sample("PlateReader", "read_absorbance", 20.0, 30.0)).collect();
        assert_eq!(Experience::from_samples(&slow).factor("PlateReader", "read_absorbance"), 1.0);
        let mut more = slow.clone();
        // One task paused for an hour does not move the median.
        more.push(sample("PlateReader", "read_absorbance", 20.0, 3600.0));
        more.push(sample("PlateReader", "read_absorbance", 20.0, 30.0));
        let e = Experience::from_samples(&more);
        assert_eq!(e.factor("PlateReader", "read_absorbance"), 1.5);
        // Another kind on the same class, and the same kind elsewhere, are not touched.
        assert_eq!(e.factor("PlateReader", "read_fluorescence"), 1.0);
        assert_eq!(e.factor("LiquidHandler", "read_absorbance"), 1.0);
    }

    #[test]
    fn the_correction_is_bounded_and_follows_the_latest_window() {
        let way_off: Vec<_> = (0..10).map(|_| sample("Sealer", "seal", 10.0, 1000.0)).collect();
        assert_eq!(Experience::from_samples(&way_off).factor("Sealer", "seal"), MAX_FACTOR);
        let quick: Vec<_> = (0..10).map(|_| sample("Sealer", "seal", 10.0, 0.1)).collect();
        assert_eq!(Experience::from_samples(&quick).factor("Sealer", "seal"), MIN_FACTOR);
        // Newest first: the last WINDOW samples say 0.8×; older ones said 2×.
        let mut s: Vec<_> = (0..WINDOW).map(|_| sample("Sealer", "seal", 10.0, 8.0)).collect();
        s.extend((0..WINDOW).map(|_| sample("Sealer", "seal", 10.0, 20.0)));
        assert!((Experience::from_samples(&s).factor("Sealer", "seal") - 0.8).abs() < 1e-12);
        // Nonsense samples are ignored.
        let bad = vec![sample("Sealer", "seal", 0.0, 5.0); 10];
        assert_eq!(Experience::from_samples(&bad).factor("Sealer", "seal"), 1.0);
        // A median within the dead band is noise: 0.96× and 1.04× leave the estimate; 0.94× not.
        for (took, factor) in [(9.6, 1.0), (10.4, 1.0), (9.4, 0.94)] {
            let s: Vec<_> = (0..10).map(|_| sample("Sealer", "seal", 10.0, took)).collect();
            assert!((Experience::from_samples(&s).factor("Sealer", "seal") - factor).abs() < 1e-12, "{took}");
        }
        // Five tasks spread 0.8–1.2× around their estimate: a median of 1.08 is within the noise.
        let spread: Vec<_> = [8.0, 9.0, 10.8, 11.5, 12.0].iter().map(|&t| sample("Sealer", "seal", 10.0, t)).collect();
        assert_eq!(Experience::from_samples(&spread).factor("Sealer", "seal"), 1.0);
        // Five taking three times as long, give or take a little, are a bias.
        let slow: Vec<_> = [29.0, 29.5, 30.0, 30.5, 31.0].iter().map(|&t| sample("Sealer", "seal", 10.0, t)).collect();
        assert_eq!(Experience::from_samples(&slow).factor("Sealer", "seal"), 3.0);
    }

    #[test]
    fn promises_widen_with_the_spread_left_after_correction() {
        let base = 0.35;
        // Steady: every read 1.5× its estimate is corrected exactly; nothing is left to cover.
        let steady: Vec<_> = (0..30).map(|_| sample("PlateReader", "read", 20.0, 30.0)).collect();
        assert_eq!(Experience::from_samples(&steady).promise_margin(base), base);
        // Too few samples to judge the spread.
        let few: Vec<_> = (0..MIN_SPREAD_SAMPLES - 1).map(|i| sample("Sealer", "seal", 10.0, 5.0 + i as f64)).collect();
        assert_eq!(Experience::from_samples(&few).promise_margin(base), base);
        // Seals from 0.5× to 2.4× their estimate (median 1.45×): corrected, the 90th percentile
        // is 2.2 / 1.45 = 1.52×, 0.36 beyond what the default margin covers.
        let spread: Vec<_> = (0..20).map(|i| sample("Sealer", "seal", 10.0, 5.0 + i as f64)).collect();
        let e = Experience::from_samples(&spread);
        assert_eq!(e.factor("Sealer", "seal"), 1.45);
        assert!((e.promise_margin(base) - (base + 22.0 / 14.5 - CALIBRATED_P90)).abs() < 1e-12);
        // Wild spread is bounded.
        let wild: Vec<_> = (0..20).map(|i| sample("Sealer", "seal", 10.0, if i < 15 { 10.0 } else { 500.0 })).collect();
        assert_eq!(Experience::from_samples(&wild).promise_margin(base), base + MAX_EXTRA_MARGIN);
    }

    #[test]
    fn the_report_shows_the_error_before_and_after_correction() {
        let s: Vec<_> =
            [28.0, 30.0, 30.0, 32.0, 30.0].iter().map(|&a| sample("PlateReader", "read", 20.0, a)).collect();
        let r = error_report(&s);
        assert_eq!(r.len(), 1);
        let l = &r[0];
        assert_eq!((l.instrument.as_str(), l.samples), ("PlateReader1", 5));
        assert_eq!((l.p10, l.median, l.p90, l.factor), (1.4, 1.5, 1.6, 1.5));
        // Raw: the estimate is a third short of 30 s; corrected, it is exact for the median task.
        assert!((l.error_raw - 1.0 / 3.0).abs() < 1e-12, "{l:?}");
        assert_eq!(l.error_corrected, 0.0);
    }
}
