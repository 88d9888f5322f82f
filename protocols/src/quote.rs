//! Quote: how long a run takes on an empty lab, how much device time it uses, what it costs.

use crate::plan::{RunPlan, Task};
use labware::{InstrumentClass, ServiceClass, Site};
use serde::Serialize;
use std::collections::BTreeMap;

/// A price and duration estimate for one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quote {
    /// Critical path on an empty lab, including plate moves, seconds.
    pub duration_s: f64,
    /// Device time per instrument class, seconds (robot arm: estimated plate moves).
    pub device_s: BTreeMap<InstrumentClass, f64>,
    pub plate_moves: u32,
    pub lines: Vec<CostLine>,
    /// Labware the run uses up and the lab's reagents poured for it.
    pub consumables: Vec<crate::consumables::ConsumableLine>,
    pub per_run: f64,
    pub total: f64,
    pub currency: String,
    /// The service class priced: device time at the class's factor on the rates.
    pub class: ServiceClass,
}

/// One line of the bill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostLine {
    pub class: InstrumentClass,
    pub hours: f64,
    pub rate_per_hour: f64,
    pub amount: f64,
}

/// Prices a plan with the site's price table, as a standard run.
pub fn quote(plan: &RunPlan, site: &Site) -> Quote {
    quote_as(plan, site, ServiceClass::Standard)
}

/// Prices a plan as a run of class `service`: device time at the site's rates times the class's factor;
/// consumables, reagents and the per-run fee cost the same in every class.
pub fn quote_as(plan: &RunPlan, site: &Site, service: ServiceClass) -> Quote {
    let mv = site.typical_move_s();
    let mut device_s: BTreeMap<InstrumentClass, f64> = BTreeMap::new();
    for t in &plan.tasks {
        if let Some(c) = t.class {
            *device_s.entry(c).or_insert(0.0) += t.duration_s;
        }
    }
    let plate_moves = count_moves(plan);
    if plate_moves > 0 {
        *device_s.entry(InstrumentClass::RobotArm).or_insert(0.0) += f64::from(plate_moves) * mv;
    }
    let factor = site.class_factor(service);
    let lines: Vec<CostLine> = device_s
        .iter()
        .map(|(&class, &s)| {
            let hours = s / 3600.0;
            let rate = site.price_per_hour(class) * factor;
            CostLine { class, hours, rate_per_hour: rate, amount: round_cents(hours * rate) }
        })
        .collect();
    let consumables = crate::consumables::Consumption::of_plan(plan).lines(site);
    let per_run = site.prices.per_run;
    let total = round_cents(
        per_run + lines.iter().map(|l| l.amount).sum::<f64>() + consumables.iter().map(|l| l.amount).sum::<f64>(),
    );
    Quote {
        duration_s: critical_path(&plan.tasks, mv),
        device_s,
        plate_moves,
        lines,
        consumables,
        per_run,
        total,
        currency: site.prices.currency.clone(),
        class: service,
    }
}

fn round_cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Plate moves: each labware goes from storage to its first instrument, between instruments of
/// different classes, and back to storage.
pub fn count_moves(plan: &RunPlan) -> u32 {
    let mut moves = 0;
    for lw in &plan.labware {
        let mut last: Option<InstrumentClass> = None;
        for t in plan.tasks.iter().filter(|t| t.holds.contains(&lw.name)) {
            let Some(c) = t.class else { continue };
            if c == InstrumentClass::RobotArm || c == InstrumentClass::Technician {
                continue;
            }
            if last != Some(c) {
                moves += 1;
                last = Some(c);
            }
        }
        if last.is_some() {
            moves += 1; // back to storage
        }
    }
    moves
}

fn needs_move(a: &Task, b: &Task) -> bool {
    a.class != b.class && a.holds.iter().any(|h| b.holds.contains(h))
}

/// Longest path through the task graph, adding a plate move between tasks of different classes
/// that share labware. Tasks are in topological order.
pub fn critical_path(tasks: &[Task], move_s: f64) -> f64 {
    let mut finish = vec![0.0f64; tasks.len()];
    for (i, t) in tasks.iter().enumerate() {
        let start = t
            .after
            .iter()
            .map(|&p| p as usize)
            .filter(|&p| p < i)
            .map(|p| finish[p] + if needs_move(&tasks[p], t) { move_s } else { 0.0 })
            .fold(0.0, f64::max);
        finish[i] = start + t.duration_s;
    }
    finish.into_iter().fold(0.0, f64::max)
}

/// Whether `to` is reachable from `from` along dependencies.
pub fn reaches(tasks: &[Task], from: usize, to: usize) -> bool {
    let mut seen = vec![false; tasks.len()];
    if from >= tasks.len() || to >= tasks.len() {
        return false;
    }
    seen[from] = true;
    for i in from + 1..=to {
        if tasks[i].after.iter().any(|&p| seen.get(p as usize).copied().unwrap_or(false)) {
            seen[i] = true;
        }
    }
    seen[to]
}

/// The least time between the end of `from` and the start of `to` forced by the tasks that must
/// run in between (None when `to` does not depend on `from`).
pub fn min_gap(tasks: &[Task], from: usize, to: usize, move_s: f64) -> Option<f64> {
    if !reaches(tasks, from, to) {
        return None;
    }
    // ready[i]: earliest time task i can start, measured from the end of `from`.
    let mut end: Vec<Option<f64>> = vec![None; tasks.len()];
    end[from] = Some(0.0);
    let mut gap = 0.0;
    for i in from + 1..=to {
        let start = tasks[i]
            .after
            .iter()
            .filter_map(|&p| {
                end.get(p as usize)
                    .copied()
                    .flatten()
                    .map(|e| e + if needs_move(&tasks[p as usize], &tasks[i]) { move_s } else { 0.0 })
            })
            .reduce(f64::max);
        if let Some(s) = start {
            if i == to {
                gap = s;
            }
            end[i] = Some(s + tasks[i].duration_s);
        }
    }
    Some(gap)
}

/// `1 h 5 min`, `4 min 10 s`, `12 s`.
pub fn fmt_duration(s: f64) -> String {
    let s = s.round() as i64;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m, sec) {
        (0, 0, x) => format!("{x} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, x) => format!("{m} min {x} s"),
        (h, 0, _) => format!("{h} h"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}
