//! The lab schedule validator. It trusts nothing the solver computed beyond the schedule itself:
//! plate positions, nest occupancy and arm usage are rebuilt from the moves.

use super::solve::{settings_key, LabSchedule};
use super::LabProblem;
use labware::InstrumentClass;

const EPS: f64 = 1e-6;

/// A broken constraint, with enough detail to find it.
#[derive(Debug, Clone, PartialEq)]
pub enum LabViolation {
    /// A run or task has no slot, or the schedule's shape does not match the problem.
    Shape(String),
    BeforeRelease {
        run: usize,
        task: usize,
    },
    TooShort {
        run: usize,
        task: usize,
    },
    Precedence {
        run: usize,
        task: usize,
        after: usize,
    },
    WrongResource {
        run: usize,
        task: usize,
    },
    /// A move the arm cannot make, or one shorter than the arm's move time.
    BadMove {
        index: usize,
        why: String,
    },
    /// An arm doing two things at once.
    ArmOverlap {
        arm: usize,
        at: f64,
    },
    /// A plate moved from a nest it was not at, or moved while another move of it was running.
    PlateContinuity {
        run: usize,
        plate: usize,
        at: f64,
    },
    /// A task whose plates are not on its instrument while it runs.
    PlateAbsent {
        run: usize,
        task: usize,
        plate: usize,
    },
    /// A plate sitting on an instrument nest with no task of its run there.
    Parked {
        run: usize,
        plate: usize,
        nest: usize,
        at: f64,
    },
    /// More tasks (or plates, on a transfer station) at once than the resource holds.
    Capacity {
        resource: usize,
        at: f64,
    },
    /// Used while down.
    Down {
        resource: usize,
        at: f64,
    },
    /// Used in a window reserved for another tenant.
    Reserved {
        resource: usize,
        run: usize,
    },
    MaxLag {
        run: usize,
        from: usize,
        to: usize,
        excess: f64,
    },
    /// Tasks with different set points (temperatures, shaking) sharing an instrument at once.
    Settings {
        resource: usize,
        at: f64,
    },
    /// A "wait at least" lag cut short.
    MinLag {
        run: usize,
        from: usize,
        to: usize,
        short: f64,
    },
}

/// Every violation of `s` against `p` (empty when valid).
pub fn validate(p: &LabProblem, s: &LabSchedule) -> Vec<LabViolation> {
    let mut v = Vec::new();
    if s.tasks.len() != p.runs.len() {
        v.push(LabViolation::Shape(format!("{} runs scheduled for {} runs", s.tasks.len(), p.runs.len())));
        return v;
    }
    // Arms: one thing at a time; moves they can make.
    let mut arm_busy: Vec<Vec<(f64, f64)>> = vec![Vec::new(); p.arms.len()];
    for (i, m) in s.moves.iter().enumerate() {
        let Some(arm) = p.arms.get(m.arm) else {
            v.push(LabViolation::BadMove { index: i, why: "no such arm".into() });
            continue;
        };
        match arm.moves.get(&(m.from, m.to)) {
            Some(&secs) if m.end - m.start + EPS >= secs => {}
            Some(&secs) => v.push(LabViolation::BadMove {
                index: i,
                why: format!("takes {:.1} s, the arm needs {secs:.1} s", m.end - m.start),
            }),
            None => {
                v.push(LabViolation::BadMove { index: i, why: format!("arm {} does not reach both nests", arm.id) })
            }
        }
        arm_busy[m.arm].push((m.start, m.end));
    }
    for (ri, run) in p.runs.iter().enumerate() {
        for ti in 0..run.tasks.len() {
            let Some(slot) = s.tasks[ri].get(ti) else {
                v.push(LabViolation::Shape(format!("run {ri} task {ti} is not scheduled")));
                continue;
            };
            if slot.on_arm {
                if let Some(a) = slot.resource.filter(|&a| a < p.arms.len()) {
                    arm_busy[a].push((slot.start, slot.end));
                }
            }
        }
    }
    for (a, busy) in arm_busy.iter_mut().enumerate() {
        busy.sort_by(|x, y| x.0.total_cmp(&y.0));
        if let Some(w) = busy.windows(2).find(|w| w[1].0 < w[0].1 - EPS) {
            v.push(LabViolation::ArmOverlap { arm: a, at: w[1].0 });
        }
    }
    if !v.is_empty() && v.iter().any(|x| matches!(x, LabViolation::Shape(_))) {
        return v;
    }
    // Plates: where each is over time, rebuilt from its moves.
    // presence: (run, plate, nest, from, to, gone): on the nest from the end of the move that
    // brought it to the start of the move that takes it, and in the way of the next plate until
    // that move ends (an arm cannot lower a plate onto one it is still lifting off).
    let mut presence: Vec<(usize, usize, usize, f64, f64, f64)> = Vec::new();
    // Each plate's moves, gathered once (a filter per plate made validation quadratic).
    let mut moves_of: Vec<Vec<Vec<&super::solve::MoveSlot>>> =
        p.runs.iter().map(|r| vec![Vec::new(); r.plates.len()]).collect();
    for m in &s.moves {
        if let Some(list) = moves_of.get_mut(m.run).and_then(|r| r.get_mut(m.plate)) {
            list.push(m);
        }
    }
    // Where each plate's presences start in `presence`, by run and plate.
    let mut presence_of: Vec<Vec<std::ops::Range<usize>>> = Vec::with_capacity(p.runs.len());
    for ((ri, run), plates) in p.runs.iter().enumerate().zip(moves_of) {
        let mut ranges = Vec::with_capacity(run.plates.len());
        for (pl, mut mv) in plates.into_iter().enumerate() {
            let first = presence.len();
            mv.sort_by(|a, b| a.start.total_cmp(&b.start));
            let mut at = p.storage;
            let mut since = run.release;
            for m in mv {
                if m.from != at || m.start + EPS < since {
                    v.push(LabViolation::PlateContinuity { run: ri, plate: pl, at: m.start });
                }
                presence.push((ri, pl, at, since, m.start, m.end));
                at = m.to;
                since = m.end;
            }
            presence.push((ri, pl, at, since, f64::INFINITY, f64::INFINITY));
            ranges.push(first..presence.len());
        }
        presence_of.push(ranges);
    }
    // Tasks: release, duration, precedence, resource, plates present.
    // occupancy per resource: (start, end, weight)
    let mut occ: Vec<Vec<(f64, f64)>> = vec![Vec::new(); p.resources.len()];
    let mut keyed: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); p.resources.len()];
    for (ri, run) in p.runs.iter().enumerate() {
        for (ti, t) in run.tasks.iter().enumerate() {
            let slot = s.tasks[ri][ti];
            if slot.start + EPS < run.release {
                v.push(LabViolation::BeforeRelease { run: ri, task: ti });
            }
            let under_way = p.pinned.get(ri).and_then(|x| x.get(ti)).is_some_and(Option::is_some);
            // A task that has run reports its real duration, which may be shorter than planned.
            if slot.end - slot.start + EPS < t.duration && !under_way {
                v.push(LabViolation::TooShort { run: ri, task: ti });
            }
            for &a in &t.after {
                if slot.start + EPS < s.tasks[ri][a].end {
                    v.push(LabViolation::Precedence { run: ri, task: ti, after: a });
                }
            }
            let ok = match (t.class, slot.resource, slot.on_arm) {
                (None, None, _) => true,
                (Some(InstrumentClass::RobotArm), Some(a), true) => a < p.arms.len(),
                (Some(_), Some(r), false) => p.candidates(t).contains(&r),
                _ => false,
            };
            if !ok {
                v.push(LabViolation::WrongResource { run: ri, task: ti });
                continue;
            }
            let Some(r) = slot.resource.filter(|_| !slot.on_arm) else { continue };
            let res = &p.resources[r];
            let mut a = slot.start;
            let mut b = slot.end;
            if let (Some(nest), false) = (res.nest, res.class == InstrumentClass::Technician) {
                for &pl in &t.plates {
                    let of_plate = presence_of[ri].get(pl).map_or(&presence[0..0], |r| &presence[r.clone()]);
                    match of_plate.iter().find(|x| {
                        x.0 == ri && x.1 == pl && x.2 == nest && x.3 <= slot.start + EPS && x.4 + EPS >= slot.end
                    }) {
                        Some(x) => {
                            a = a.min(x.3);
                            b = b.max(x.5);
                        }
                        None => v.push(LabViolation::PlateAbsent { run: ri, task: ti, plate: pl }),
                    }
                }
            }
            occ[r].push((a, b));
            keyed[r].push((a, b, settings_key(t)));
            // A task already under way when its instrument failed is the technician's problem,
            // not a planning error; anything planned into a down window is.
            if p.down[r]
                .iter()
                .any(|w| w.start < b - EPS && w.end > a + EPS && !(under_way && slot.start < w.start + EPS))
            {
                v.push(LabViolation::Down { resource: r, at: a });
            }
            if p.reservations[r].iter().any(|(tn, w)| tn != &run.tenant && w.start < b - EPS && w.end > a + EPS) {
                v.push(LabViolation::Reserved { resource: r, run: ri });
            }
        }
        for &(f, t, min) in &run.min_lags {
            let short = min - (s.tasks[ri][t].start - s.tasks[ri][f].end);
            if short > EPS {
                v.push(LabViolation::MinLag { run: ri, from: f, to: t, short });
            }
        }
        for &(f, t, max) in &run.max_lags {
            let excess = s.tasks[ri][t].start - s.tasks[ri][f].end - max;
            if excess > EPS {
                v.push(LabViolation::MaxLag { run: ri, from: f, to: t, excess });
            }
        }
    }
    // Plates on a nest with no task of theirs there (instrument nests only), and transfer
    // stations holding more plates than they can.
    for &(ri, pl, nest, a, b, gone) in &presence {
        if nest == p.storage || b - a <= EPS {
            continue;
        }
        let Some(r) = p.nests[nest].owner else { continue };
        let is_station = p.resources[r].class == InstrumentClass::PlateHotel;
        if is_station {
            occ[r].push((a, gone));
            continue;
        }
        let used = p.runs[ri].tasks.iter().enumerate().any(|(ti, t)| {
            let sl = s.tasks[ri][ti];
            sl.resource == Some(r) && !sl.on_arm && t.plates.contains(&pl) && sl.start + EPS >= a && sl.end <= b + EPS
        });
        if !used {
            v.push(LabViolation::Parked { run: ri, plate: pl, nest, at: a });
        }
    }
    for (r, ks) in keyed.iter_mut().enumerate() {
        // A sweep by start: only intervals still open when one starts can overlap it (or any
        // that starts later), so each is compared with those alone, not with all.
        ks.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut open: Vec<(f64, f64, u64)> = Vec::new();
        let mut clash = None;
        for &x in ks.iter() {
            open.retain(|y| y.1 > x.0 + EPS);
            if let Some(y) = open.iter().find(|y| y.2 != x.2 && y.0 < x.1 - EPS && y.1 > x.0 + EPS) {
                clash = Some(y.0.max(x.0));
                break;
            }
            open.push(x);
        }
        if let Some(at) = clash {
            v.push(LabViolation::Settings { resource: r, at });
        }
    }
    for (r, intervals) in occ.iter().enumerate() {
        let cap = p.resources[r].capacity as i32;
        // Overlaps shorter than EPS are rounding, not double-booking.
        let mut ev: Vec<(f64, i32)> = intervals
            .iter()
            .filter(|(a, b)| b - a > 2.0 * EPS)
            .flat_map(|&(a, b)| [(a + EPS, 1), (b - EPS, -1)])
            .collect();
        ev.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let mut cur = 0;
        for (t, d) in ev {
            cur += d;
            if cur > cap {
                v.push(LabViolation::Capacity { resource: r, at: t });
                break;
            }
        }
    }
    v
}
