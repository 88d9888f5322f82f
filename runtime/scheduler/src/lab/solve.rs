//! Building and improving lab schedules.
//!
//! The constructive step inserts runs one at a time, each task on the instance where it ends
//! earliest, booking the arm moves that bring its plates from storage and take them back. A run
//! whose max lags come out broken is re-inserted with the earlier task held back by the excess,
//! which places lag-linked tasks as one block. The improver is a large-neighbourhood search over
//! the insertion order (move one run, swap two), keeping a change when the schedule gets better:
//! anytime, seeded, and deterministic for an iteration budget.

use super::{LabProblem, Leg, Window};
use crate::shop::solve::Rng;
use labware::InstrumentClass;
use serde::Serialize;
use std::time::{Duration, Instant};

const EPS: f64 = 1e-6;

/// How much earlier than announced a repair may start a task a person does: technicians are
/// told when to come. Automated tasks move earlier as far as the lab lets them (anchoring every
/// task at a minute per repair lost 8 % of makespan to tasks ending early under ±20 % noise,
/// and broke half the promises; docs/scheduling.md, "Promises").
pub const ANCHOR_SLACK_S: f64 = 60.0;

/// Where and when a task runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TaskSlot {
    /// Index into the problem's resources (or arms, for lid tasks); `None` for pure delays.
    pub resource: Option<usize>,
    /// Lid tasks run on an arm.
    pub on_arm: bool,
    pub start: f64,
    pub end: f64,
}

/// One arm move of one plate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MoveSlot {
    pub run: usize,
    pub plate: usize,
    pub arm: usize,
    pub from: usize,
    pub to: usize,
    pub start: f64,
    pub end: f64,
}

/// A pinned task on a one-plate instrument, for [`LabProblem::nest_needed_by`].
#[derive(Debug, Clone, Copy)]
struct PinnedArrival {
    start: f64,
    /// When its first plate is delivered (its first inbound move starts).
    arrives: f64,
    /// (run, task).
    task: (usize, usize),
    /// The earliest `arrives` of this and every later pinned task on the instrument.
    soonest: f64,
}

/// A complete lab schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LabSchedule {
    /// Per run, per task.
    pub tasks: Vec<Vec<TaskSlot>>,
    pub moves: Vec<MoveSlot>,
}

impl LabSchedule {
    /// End of the last task or move.
    pub fn makespan(&self) -> f64 {
        let t = self.tasks.iter().flatten().map(|s| s.end).fold(0.0, f64::max);
        self.moves.iter().map(|m| m.end).fold(t, f64::max)
    }

    /// When each run finishes (its last task or its plates' last move home).
    pub fn completion(&self, run: usize) -> f64 {
        let t = self.tasks.get(run).map_or(0.0, |ts| ts.iter().map(|s| s.end).fold(0.0, f64::max));
        self.moves.iter().filter(|m| m.run == run).map(|m| m.end).fold(t, f64::max)
    }

    /// Every run's completion ([`LabSchedule::completion`]) in one pass over the moves.
    pub fn completions(&self) -> Vec<f64> {
        let mut end: Vec<f64> = self.tasks.iter().map(|ts| ts.iter().map(|s| s.end).fold(0.0, f64::max)).collect();
        for m in &self.moves {
            if let Some(e) = end.get_mut(m.run) {
                *e = e.max(m.end);
            }
        }
        end
    }
}

/// Busy intervals of one resource, tagged with the run that booked them, sorted by start so a
/// query only looks at the intervals near it.
#[derive(Debug, Clone)]
struct Timeline {
    /// Nothing is placed before this (the problem's `not_before`): an interval that ends by then
    /// can keep nothing out, so it is not kept. A repair long into a busy day would otherwise
    /// search, and shift on every insertion, all the work done since the lab opened.
    horizon: f64,
    /// (start, end, run, settings key): tasks with other settings cannot share the resource.
    busy: Vec<(f64, f64, usize, u64)>,
    /// Longest interval ever booked: how far back from a query an overlapping one can start.
    max_len: f64,
    /// The latest end of any interval in `busy`.
    latest_end: f64,
    /// Open-ended bookings (start, run, settings key): an instrument held until its plates' way
    /// home is booked. Kept apart so they do not make every query scan from the beginning.
    open: Vec<(f64, usize, u64)>,
}

impl Timeline {
    fn new(horizon: f64) -> Timeline {
        Timeline { horizon, busy: Vec::new(), max_len: 0.0, latest_end: 0.0, open: Vec::new() }
    }

    fn book(&mut self, a: f64, b: f64, run: usize) {
        self.book_keyed(a, b, run, 0);
    }

    fn book_keyed(&mut self, a: f64, b: f64, run: usize, key: u64) {
        if b.is_infinite() {
            self.open.push((a, run, key));
            return;
        }
        if b <= self.horizon + EPS {
            return;
        }
        let i = self.busy.partition_point(|x| x.0 <= a);
        self.busy.insert(i, (a, b, run, key));
        self.max_len = self.max_len.max(b - a);
        self.latest_end = self.latest_end.max(b);
    }

    /// [`Timeline::book`] without keeping the order: many bookings at once, then
    /// [`Timeline::sort`] (inserting each in order shifts the whole tail every time).
    fn book_unsorted(&mut self, a: f64, b: f64, run: usize) {
        if b.is_infinite() || b <= self.horizon + EPS {
            return self.book(a, b, run);
        }
        self.busy.push((a, b, run, 0));
        self.max_len = self.max_len.max(b - a);
        self.latest_end = self.latest_end.max(b);
    }

    /// Restores the order after [`Timeline::book_unsorted`]; equal starts keep the order they
    /// were booked in, as [`Timeline::book`] would have put them.
    fn sort(&mut self) {
        self.busy.sort_by(|x, y| x.0.total_cmp(&y.0));
    }

    /// Removes the open-ended booking of `run` from `from`.
    fn unbook_open(&mut self, from: f64, run: usize) {
        if let Some(i) = self.open.iter().position(|x| x.1 == run && x.0 == from) {
            self.open.remove(i);
        }
    }

    /// Removes every booking of `run`.
    fn unbook(&mut self, run: usize) {
        self.busy.retain(|x| x.2 != run);
        self.open.retain(|x| x.1 != run);
        self.latest_end = self.busy.iter().map(|x| x.1).fold(0.0, f64::max);
    }

    /// Whether nothing is booked at or after `t`.
    fn free_from(&self, t: f64) -> bool {
        self.open.is_empty() && self.latest_end <= t + EPS
    }

    /// Earliest `t >= from` where `[t, t + len)` overlaps no interval (capacity-1 resources), so
    /// a placement can jump over a run of back-to-back bookings in one step.
    fn first_gap(&self, from: f64, len: f64) -> f64 {
        let mut t = from;
        let lo = self.busy.partition_point(|x| x.0 < from - self.max_len - EPS);
        for x in &self.busy[lo..] {
            if x.0 >= t + len - EPS {
                break;
            }
            if x.1 > t + EPS {
                t = x.1;
            }
        }
        if self.open.iter().any(|o| o.0 < t + len - EPS) {
            return f64::INFINITY;
        }
        t
    }

    /// The end of the earliest interval that keeps `[a, b)` from fitting under `cap`, if any.
    fn conflict(&self, a: f64, b: f64, cap: u32) -> Option<f64> {
        self.conflict_keyed(a, b, cap, 0)
    }

    /// As [`Timeline::conflict`], and an overlapping interval with other settings (another
    /// incubation temperature) conflicts whatever the capacity: batching shares settings.
    fn conflict_keyed(&self, a: f64, b: f64, cap: u32, key: u64) -> Option<f64> {
        let hi = self.busy.partition_point(|x| x.0 < b - EPS);
        let lo = self.busy[..hi].partition_point(|x| x.0 < a - self.max_len - EPS);
        let open = || self.open.iter().filter(|o| o.0 < b - EPS).map(|o| (o.0, f64::INFINITY, o.1, o.2));
        let overlapping = || self.busy[lo..hi].iter().copied().chain(open()).filter(|x| x.1 > a + EPS);
        // Counted first: most queries end here, and this is the placement's innermost loop.
        let (mut count, mut soonest, mut other_settings) = (0usize, f64::INFINITY, None::<f64>);
        for x in overlapping() {
            if x.3 != key {
                other_settings = Some(other_settings.map_or(x.1, |e| e.min(x.1)));
            }
            count += 1;
            soonest = soonest.min(x.1);
        }
        if other_settings.is_some() {
            return other_settings;
        }
        if count < cap as usize {
            return None;
        }
        if cap == 1 {
            return Some(soonest);
        }
        let overlapping: Vec<(f64, f64, usize, u64)> = overlapping().collect();
        // Sweep: does any instant of [a, b) see `cap` intervals?
        let mut events: Vec<(f64, i32)> = Vec::with_capacity(overlapping.len() * 2);
        for x in &overlapping {
            events.push((x.0.max(a), 1));
            events.push((x.1.min(b), -1));
        }
        events.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
        let mut cur = 0;
        for (t, d) in events {
            cur += d;
            if cur >= cap as i32 {
                // The earliest of the intervals live at `t` to end frees a unit.
                return overlapping.iter().filter(|x| x.0 <= t + EPS && x.1 > t + EPS).map(|x| x.1).reduce(f64::min);
            }
        }
        None
    }
}

/// Bookings of every resource and arm.
#[derive(Debug, Clone)]
struct State {
    res: Vec<Timeline>,
    arms: Vec<Timeline>,
}

impl State {
    fn unbook(&mut self, run: usize) {
        for t in self.res.iter_mut().chain(self.arms.iter_mut()) {
            t.unbook(run);
        }
    }
}

/// A number that is equal for tasks with equal instrument settings (0 for none).
pub fn settings_key(t: &super::LabTask) -> u64 {
    match (t.settings.temperature_c, t.settings.shake_rpm) {
        (None, None) => 0,
        (temp, rpm) => {
            let c = temp.map_or(0, |x| (x * 100.0).round() as i64 + 1_000_000) as u64;
            let s = rpm.map_or(0, |x| x.round() as i64 + 1) as u64;
            1 + c.wrapping_mul(100_003) + s
        }
    }
}

/// Pinned tasks booked ahead: (run, task) → (slot, when its plates are back in storage).
type Prebooked = std::collections::HashMap<(usize, usize), (TaskSlot, f64)>;

/// A tentative placement of one task.
struct Placement {
    slot: TaskSlot,
    moves: Vec<MoveSlot>,
    /// Transfer stations held between legs.
    holds: Vec<(usize, f64, f64)>,
    occupancy: Option<(usize, f64, f64)>,
    plates_back: f64,
    /// Built interleaved, the moves that take the plates away are left for later (see
    /// [`LabProblem::build_interleaved`]): the instrument is held open from `occupancy`'s start
    /// until they are booked, and `moves`/`holds` hold only the way in.
    open: bool,
}

/// The moves that take a task's plates off its instrument and home.
struct Departure {
    moves: Vec<MoveSlot>,
    holds: Vec<(usize, f64, f64)>,
    /// When the instrument is free (the last plate's first leg away has ended).
    free_at: f64,
    /// When every plate is back in storage.
    back: f64,
}

/// Where the insertion of one run has got to.
struct Cursor {
    run: usize,
    /// When each of its plates is back in storage.
    plate_ready: Vec<f64>,
    /// Its tasks placed so far, in order.
    slots: Vec<TaskSlot>,
    /// How many moves it has added to the schedule.
    added: usize,
    /// Its last task's instrument, held open until its plates are taken away: (resource, from).
    open: Option<(usize, f64)>,
}

impl Cursor {
    fn new(run: &super::Run, ri: usize) -> Cursor {
        Cursor { run: ri, plate_ready: vec![run.release; run.plates.len()], slots: Vec::new(), added: 0, open: None }
    }
}

/// How the next task of a run would be placed.
enum Step {
    /// Pinned: booked before any run was inserted; its plates are home at `.1`.
    Given(TaskSlot, f64),
    /// A pure delay.
    Delay(TaskSlot),
    /// A lid task on an arm.
    Arm(TaskSlot),
    /// On an instrument, with its plates' moves.
    On(Placement),
    /// The plates of the run's last task taken off its instrument and home.
    Leave(Departure),
}

impl Step {
    /// When it first needs anything: its first arm move, else its start.
    fn first_use(&self) -> f64 {
        match self {
            Step::Given(..) => f64::NEG_INFINITY,
            Step::Delay(s) | Step::Arm(s) => s.start,
            Step::On(p) => p.moves.iter().map(|m| m.start).fold(p.slot.start, f64::min),
            Step::Leave(d) => d.moves.iter().map(|m| m.start).fold(d.free_at, f64::min),
        }
    }
}

fn window_conflict(ws: &[Window], a: f64, b: f64) -> Option<f64> {
    ws.iter().filter(|w| w.start < b - EPS && w.end > a + EPS).map(|w| w.end).reduce(f64::min)
}

impl LabProblem {
    fn reserved_conflict(&self, r: usize, tenant: &str, a: f64, b: f64) -> Option<f64> {
        self.reservations[r]
            .iter()
            .filter(|(t, w)| t != tenant && w.start < b - EPS && w.end > a + EPS)
            .map(|(_, w)| w.end)
            .reduce(f64::min)
    }

    /// Books a chain of legs from `t0`, each leg on its arm's first free slot. A plate that waits
    /// on a transfer station between two legs holds it (capacity 1) from the first leg's start to
    /// the second leg's end; such holds go to `holds`.
    #[allow(clippy::too_many_arguments)]
    fn book_legs(
        &self,
        st: &State,
        legs: &[Leg],
        t0: f64,
        run: usize,
        plate: usize,
        out: &mut Vec<MoveSlot>,
        holds: &mut Vec<(usize, f64, f64)>,
    ) -> f64 {
        let (mark_moves, mark_holds) = (out.len(), holds.len());
        let mut from = t0;
        for _ in 0..10_000 {
            out.truncate(mark_moves);
            holds.truncate(mark_holds);
            let mut cursor = from;
            let mut retry = None;
            for (i, l) in legs.iter().enumerate() {
                let mut s = cursor;
                // The arm's timeline was last found free at this time (asking again at the
                // same time gives the same answer).
                let mut free_at = f64::NAN;
                loop {
                    let mine = out
                        .iter()
                        .filter(|m| m.arm == l.arm && m.start < s + l.seconds - EPS && m.end > s + EPS)
                        .map(|m| m.end)
                        .reduce(f64::max);
                    // Jump over a run of back-to-back arm moves in one step.
                    let gap = if s == free_at { s } else { st.arms[l.arm].first_gap(s, l.seconds) };
                    let next = mine.map_or(gap, |m| m.max(gap));
                    if next > s + EPS {
                        if next == gap {
                            free_at = gap;
                        }
                        s = next;
                    } else {
                        break;
                    }
                }
                out.push(MoveSlot { run, plate, arm: l.arm, from: l.from, to: l.to, start: s, end: s + l.seconds });
                cursor = s + l.seconds;
                if i > 0 {
                    // The plate waited on `l.from` between the previous leg and this one.
                    if let Some(r) = self.nests[l.from].owner {
                        let a = out[out.len() - 2].start;
                        let cap = self.resources[r].capacity;
                        let mine = holds.iter().filter(|h| h.0 == r && h.1 < cursor - EPS && h.2 > a + EPS).count();
                        let theirs = st.res[r].conflict(a, cursor, cap.saturating_sub(mine as u32).max(1));
                        if mine as u32 >= cap {
                            retry = holds.iter().filter(|h| h.0 == r).map(|h| h.2).reduce(f64::max);
                        } else if let Some(e) = theirs {
                            retry = Some(e);
                        }
                        if retry.is_some() {
                            break;
                        }
                        holds.push((r, a, cursor));
                    }
                }
            }
            match retry {
                Some(e) => from = e.max(from + EPS * 10.0),
                None => return cursor,
            }
        }
        f64::INFINITY
    }

    /// Books the moves that take the plates of task `ti` of run `ri` off `r`'s nest and home,
    /// each leg at its arm's first free time from `end` (and after the moves already in
    /// `moves`), appending them to `moves` and the stations they wait on to `holds`. Returns when
    /// the nest is free (the last plate's first leg away has ended) and when every plate is home.
    #[allow(clippy::too_many_arguments)]
    fn book_departure(
        &self,
        st: &State,
        ri: usize,
        ti: usize,
        r: usize,
        end: f64,
        moves: &mut Vec<MoveSlot>,
        holds: &mut Vec<(usize, f64, f64)>,
    ) -> Option<(f64, f64)> {
        let outbound = self.route(self.resources[r].nest?, self.storage)?;
        let (mut free_at, mut back) = (end, end);
        for &p in &self.runs[ri].tasks[ti].plates {
            let k = moves.len();
            let home = self.book_legs(st, outbound, end, ri, p, moves, holds);
            // An arm cannot lower the next plate onto the nest while it is still lifting this
            // one off.
            free_at = free_at.max(moves.get(k).map_or(end, |m| m.end));
            back = back.max(home);
        }
        Some((free_at, back))
    }

    /// Earliest placement of task `ti` of run `ri` on resource `r` at or after `t0`. With
    /// `open`, a one-at-a-time instrument with nothing booked after the plates arrive is held
    /// open instead of booking their way home (see [`LabProblem::build_interleaved`]).
    fn place_on(&self, st: &State, ri: usize, ti: usize, r: usize, mut t0: f64, open: bool) -> Option<Placement> {
        let run = &self.runs[ri];
        let task = &run.tasks[ti];
        let res = &self.resources[r];
        let moves_plates = !task.plates.is_empty() && res.class != InstrumentClass::Technician;
        for _ in 0..1_000_000 {
            let mut moves = Vec::new();
            let mut holds = Vec::new();
            let (first_arrival, start) = if moves_plates {
                let nest = res.nest?;
                let inbound = self.route(self.storage, nest)?;
                let mut first = f64::INFINITY;
                let mut last = t0;
                for &p in &task.plates {
                    let arrive = self.book_legs(st, inbound, t0, ri, p, &mut moves, &mut holds);
                    first = first.min(if inbound.is_empty() { t0 } else { arrive });
                    last = last.max(arrive);
                }
                (first, last)
            } else {
                (t0, t0)
            };
            let end = start + task.duration;
            let (mut last_departure, mut back) = (end, end);
            let (moves_in, holds_in) = (moves.len(), holds.len());
            if moves_plates {
                (last_departure, back) = self.book_departure(st, ri, ti, r, end, &mut moves, &mut holds)?;
            }
            let (a, b) = (first_arrival, last_departure.max(first_arrival + EPS));
            let conflict = [
                st.res[r].conflict_keyed(a, b, res.capacity, settings_key(task)),
                window_conflict(&self.down[r], a, b),
                self.reserved_conflict(r, &run.tenant, a, b),
            ]
            .into_iter()
            .flatten()
            .reduce(f64::min);
            match conflict {
                // Held open by a plate whose way home is not booked yet.
                Some(e) if !e.is_finite() => return None,
                Some(e) => {
                    // Try again so the plates arrive when the resource frees up; on a
                    // one-at-a-time resource, at the first gap long enough for the whole stay.
                    let e = if res.capacity == 1 { st.res[r].first_gap(e, b - a).max(e) } else { e };
                    if !e.is_finite() {
                        return None;
                    }
                    // Leave so that the plates, moving without waiting, arrive at `e`: then the
                    // next attempt is past this conflict, so the loop advances every time.
                    let travel = if moves_plates {
                        res.nest
                            .and_then(|n| self.route(self.storage, n))
                            .map_or(0.0, |l| l.iter().map(|x| x.seconds).sum::<f64>())
                    } else {
                        0.0
                    };
                    t0 = (e - travel).max(t0 + EPS * 10.0);
                }
                None => {
                    if !back.is_finite() {
                        return None;
                    }
                    // Nothing booked on it after the plates arrive, no down time, no one
                    // else's reservation: the stay can end whenever the arm gets to it.
                    let open = open
                        && moves_plates
                        && res.capacity == 1
                        && self.down[r].is_empty()
                        && self.reservations[r].is_empty()
                        && st.res[r].free_from(a);
                    if open {
                        moves.truncate(moves_in);
                        holds.truncate(holds_in);
                    }
                    return Some(Placement {
                        slot: TaskSlot { resource: Some(r), on_arm: false, start, end },
                        moves,
                        holds,
                        occupancy: Some((r, a, if open { f64::INFINITY } else { b })),
                        // Held open, the plates are home when their way home is booked: not
                        // known yet, so such a candidate ranks after any whose plates have a
                        // time home, and among themselves by the task's end. (Ranked by the
                        // way home as if booked now instead, repairs moved four times as many
                        // announced starts in the benchmark's trace, 92,368 against 22,330.)
                        plates_back: if open { f64::INFINITY } else { back },
                        open,
                    });
                }
            }
        }
        None
    }

    /// A lid task on the first arm that reaches storage.
    fn place_on_arm(&self, st: &State, task_dur: f64, mut t0: f64) -> Option<(usize, f64)> {
        let arm = self.arms.iter().position(|a| a.reach.contains(&self.storage))?;
        for _ in 0..10_000 {
            match st.arms[arm].conflict(t0, t0 + task_dur, 1) {
                Some(e) => t0 = e,
                None => return Some((arm, t0)),
            }
        }
        None
    }

    /// Where to put the next task of the run `cur` is inserting, without booking anything;
    /// `None` when the task cannot be placed at all.
    fn next_step(&self, st: &State, cur: &Cursor, hold: &[f64], pre: &Prebooked, open: bool) -> Option<Step> {
        if let Some((r, _)) = cur.open {
            let ti = cur.slots.len() - 1;
            let (mut moves, mut holds) = (Vec::new(), Vec::new());
            let (free_at, back) = self.book_departure(st, cur.run, ti, r, cur.slots[ti].end, &mut moves, &mut holds)?;
            return back.is_finite().then_some(Step::Leave(Departure { moves, holds, free_at, back }));
        }
        let (ri, ti) = (cur.run, cur.slots.len());
        let run = &self.runs[ri];
        let task = &run.tasks[ti];
        if let Some(&(slot, back)) = pre.get(&(ri, ti)) {
            // Under way: booked before any run was inserted.
            return Some(Step::Given(slot, back));
        }
        let slots = &cur.slots;
        let preds = task.after.iter().map(|&a| slots[a].end).fold(run.release, f64::max);
        // "Wait at least": the later task starts no earlier than the earlier one's end plus the lag.
        let preds = run
            .min_lags
            .iter()
            .filter(|l| l.1 == ti && l.0 < slots.len())
            .map(|l| slots[l.0].end + l.2)
            .fold(preds, f64::max);
        let t0 =
            task.plates.iter().map(|&p| cur.plate_ready[p]).fold(preds, f64::max).max(hold[ti]).max(self.not_before);
        // The later task of a max lag follows its earlier one, not its announcement.
        let lagged = run.max_lags.iter().any(|&(_, t, _)| t == ti);
        let by_hand = task.class == Some(InstrumentClass::Technician);
        let anchor = self.anchors.get(ri).and_then(|a| a.get(ti)).copied().flatten().filter(|_| !lagged && by_hand);
        let t0 = anchor.map_or(t0, |a| t0.max(a - ANCHOR_SLACK_S));
        if task.class.is_none() {
            return Some(Step::Delay(TaskSlot { resource: None, on_arm: false, start: t0, end: t0 + task.duration }));
        }
        if LabProblem::is_arm_task(task) {
            let (arm, s) = self.place_on_arm(st, task.duration, t0)?;
            return Some(Step::Arm(TaskSlot { resource: Some(arm), on_arm: true, start: s, end: s + task.duration }));
        }
        self.candidates(task)
            .into_iter()
            .filter_map(|r| self.place_on(st, ri, ti, r, t0, open))
            .min_by(|a, b| a.plates_back.total_cmp(&b.plates_back).then(a.slot.end.total_cmp(&b.slot.end)))
            .map(Step::On)
    }

    /// Books `step` as the next task of `cur`'s run.
    fn take_step(&self, st: &mut State, sched: &mut LabSchedule, cur: &mut Cursor, step: Step) {
        let ri = cur.run;
        let plates = self.runs[ri].tasks.get(cur.slots.len()).map_or(&[][..], |t| &t.plates[..]);
        match step {
            Step::Given(slot, back) => {
                for &p in plates {
                    cur.plate_ready[p] = cur.plate_ready[p].max(back);
                }
                cur.slots.push(slot);
            }
            Step::Delay(slot) => cur.slots.push(slot),
            Step::Arm(slot) => {
                if let Some(arm) = slot.resource {
                    st.arms[arm].book(slot.start, slot.end, ri);
                }
                for &p in plates {
                    cur.plate_ready[p] = slot.end;
                }
                cur.slots.push(slot);
            }
            Step::Leave(d) => {
                let ti = cur.slots.len() - 1;
                if let Some((r, from)) = cur.open.take() {
                    st.res[r].unbook_open(from, ri);
                    st.res[r].book_keyed(from, d.free_at.max(from + EPS), ri, settings_key(&self.runs[ri].tasks[ti]));
                }
                self.book_moves(st, sched, cur, &d.moves, &d.holds);
                for &p in &self.runs[ri].tasks[ti].plates {
                    cur.plate_ready[p] = d.back;
                }
            }
            Step::On(pl) => {
                let key = settings_key(&self.runs[ri].tasks[cur.slots.len()]);
                if let Some((r, a, b)) = pl.occupancy {
                    st.res[r].book_keyed(a, b, ri, key);
                    if pl.open {
                        cur.open = Some((r, a));
                    }
                }
                self.book_moves(st, sched, cur, &pl.moves, &pl.holds);
                for &p in plates {
                    cur.plate_ready[p] = pl.plates_back;
                }
                cur.slots.push(pl.slot);
            }
        }
    }

    /// Books a run's moves on their arms and the stations they wait on.
    fn book_moves(
        &self,
        st: &mut State,
        sched: &mut LabSchedule,
        cur: &mut Cursor,
        moves: &[MoveSlot],
        holds: &[(usize, f64, f64)],
    ) {
        for m in moves {
            st.arms[m.arm].book(m.start, m.end, cur.run);
        }
        for &(r, a, b) in holds {
            st.res[r].book(a, b, cur.run);
        }
        cur.added += moves.len();
        sched.moves.extend_from_slice(moves);
    }

    /// Inserts one run; returns false when a task could not be placed at all.
    fn insert_run(&self, st: &mut State, sched: &mut LabSchedule, ri: usize, hold: &[f64], pre: &Prebooked) -> bool {
        let mut cur = Cursor::new(&self.runs[ri], ri);
        while cur.slots.len() < self.runs[ri].tasks.len() {
            let Some(step) = self.next_step(st, &cur, hold, pre, false) else { return false };
            self.take_step(st, sched, &mut cur, step);
        }
        sched.tasks[ri] = cur.slots;
        true
    }

    /// The worst broken max lag of a run as scheduled: (earlier task, excess).
    fn worst_lag(&self, ri: usize, slots: &[TaskSlot]) -> Option<(usize, f64)> {
        self.runs[ri]
            .max_lags
            .iter()
            .map(|&(f, t, max)| (f, slots[t].start - slots[f].end - max))
            .filter(|x| x.1 > EPS)
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Inserts one run on its own, and while a max lag comes out broken, takes it out and inserts
    /// it again with the earlier task held back by the excess (lag-linked tasks as one block).
    fn insert_with_lags(&self, st: &mut State, sched: &mut LabSchedule, ri: usize, pre: &Prebooked) -> bool {
        let mut hold = vec![0.0; self.runs[ri].tasks.len()];
        for attempt in 0..=24 {
            let mark = sched.moves.len();
            if !self.insert_run(st, sched, ri, &hold, pre) {
                return false;
            }
            match self.worst_lag(ri, &sched.tasks[ri]) {
                Some((f, excess)) if attempt < 24 => {
                    // Hold the earlier task back so the later one follows it in time.
                    hold[f] = sched.tasks[ri][f].start + excess;
                    st.unbook(ri);
                    sched.moves.truncate(mark);
                    // Pinned tasks keep their bookings: put them back.
                    self.rebook_pins(st, sched, ri);
                }
                _ => break,
            }
        }
        true
    }

    /// Empty bookings with every pinned task booked, and the order runs go in: a run whose lag
    /// clock is already ticking (the earlier task under way, the later one not) goes first,
    /// earliest deadline first, since nothing else can give it back the time.
    fn start_build(&self, order: &[usize]) -> (State, LabSchedule, Prebooked, Vec<usize>, usize) {
        let mut st = State {
            res: vec![Timeline::new(self.not_before); self.resources.len()],
            arms: vec![Timeline::new(self.not_before); self.arms.len()],
        };
        let mut sched = LabSchedule { tasks: vec![Vec::new(); self.runs.len()], moves: Vec::new() };
        let pre = self.prebook(&mut st, &mut sched);
        let deadline = |ri: usize| {
            self.runs[ri]
                .max_lags
                .iter()
                .filter_map(|&(f, t, max)| match (&self.pinned[ri][f], &self.pinned[ri][t]) {
                    (Some(p), None) => Some(p.end + max),
                    _ => None,
                })
                .reduce(f64::min)
        };
        let mut ticking: Vec<(f64, usize)> = order.iter().filter_map(|&r| deadline(r).map(|d| (d, r))).collect();
        ticking.sort_by(|a, b| a.0.total_cmp(&b.0));
        let first = ticking.len();
        let order: Vec<usize> =
            ticking.iter().map(|x| x.1).chain(order.iter().copied().filter(|&r| deadline(r).is_none())).collect();
        (st, sched, pre, order, first)
    }

    /// Builds a schedule inserting runs in `order`, one whole run after another. Runs whose lags
    /// cannot be met after some retries keep their best attempt; the validator reports what
    /// remains.
    pub fn build(&self, order: &[usize]) -> Option<LabSchedule> {
        let (mut st, mut sched, pre, order, _) = self.start_build(order);
        for &ri in &order {
            if !self.insert_with_lags(&mut st, &mut sched, ri, &pre) {
                return None;
            }
        }
        Some(sched)
    }

    /// Builds a schedule with `window` runs in progress at a time: the next task placed is the
    /// one, among the next tasks of those runs, whose first arm move (or start) comes earliest,
    /// and a finished run makes room for the next in `order`. Interleaving runs task by task keeps
    /// an arm busy where whole runs one after another leave it gaps too short for a move. A run
    /// that comes out with a broken max lag is taken out and inserted again on its own, as
    /// [`LabProblem::build`] does. `window` 1 is [`LabProblem::build`].
    pub fn build_interleaved(&self, order: &[usize], window: usize) -> Option<LabSchedule> {
        if window <= 1 {
            return self.build(order);
        }
        let (mut st, mut sched, pre, order, ticking) = self.start_build(order);
        for &ri in &order[..ticking] {
            if !self.insert_with_lags(&mut st, &mut sched, ri, &pre) {
                return None;
            }
        }
        let mut queue = order[ticking..].iter();
        let mut active: Vec<Cursor> = Vec::with_capacity(window);
        let zeros: Vec<f64> = vec![0.0; self.runs.iter().map(|r| r.tasks.len()).max().unwrap_or(0)];
        loop {
            while active.len() < window {
                match queue.next() {
                    Some(&ri) if self.runs[ri].tasks.is_empty() => sched.tasks[ri] = Vec::new(),
                    Some(&ri) => active.push(Cursor::new(&self.runs[ri], ri)),
                    None => break,
                }
            }
            if active.is_empty() {
                return Some(sched);
            }
            // A run whose next task waits on an instrument another run holds open has no step
            // now; one that holds an instrument open always has (its plates can go home), so
            // only a task that cannot be placed at all leaves every run without one.
            let mut best: Option<(f64, usize, Step)> = None;
            for (i, cur) in active.iter().enumerate() {
                let Some(step) = self.next_step(&st, cur, &zeros, &pre, true) else { continue };
                let key = step.first_use();
                if best.as_ref().is_none_or(|b| key < b.0 - EPS) {
                    best = Some((key, i, step));
                }
            }
            let (_, i, step) = best?;
            self.take_step(&mut st, &mut sched, &mut active[i], step);
            let ri = active[i].run;
            if active[i].slots.len() < self.runs[ri].tasks.len() || active[i].open.is_some() {
                continue;
            }
            let cur = active.remove(i);
            if self.worst_lag(ri, &cur.slots).is_none() {
                sched.tasks[ri] = cur.slots;
                continue;
            }
            // Undo this run and insert it on its own, holding back what breaks its lag. The moves
            // it added are the last `added` of its moves in the list (any before them are its
            // pinned tasks', booked again by `rebook_pins`).
            st.unbook(ri);
            let mut drop = cur.added;
            for k in (0..sched.moves.len()).rev() {
                if drop == 0 {
                    break;
                }
                if sched.moves[k].run == ri {
                    sched.moves.remove(k);
                    drop -= 1;
                }
            }
            self.rebook_pins(&mut st, &sched, ri);
            if !self.insert_with_lags(&mut st, &mut sched, ri, &pre) {
                return None;
            }
        }
    }

    /// Whether plate `p` of pinned task `ti` stays where it is for a later pinned task of its
    /// run (both were reached by the same moves), so it is not taken home in between.
    fn stays_for_next_pin(&self, ri: usize, ti: usize, pin: &super::Pin, p: usize) -> bool {
        let mine: Vec<&MoveSlot> = pin.inbound.iter().filter(|m| m.plate == p).collect();
        !mine.is_empty()
            && self.pinned[ri].iter().enumerate().any(|(tj, other)| {
                other.as_ref().is_some_and(|o| {
                    tj != ti
                        && o.start >= pin.end - EPS
                        && self.runs[ri].tasks[tj].plates.contains(&p)
                        && mine.iter().all(|m| o.inbound.contains(m))
                })
            })
    }

    /// Books every pinned task (its plates' inbound moves as they happened, its instrument, the
    /// moves that will take its plates home) before any run is inserted, so the rest of the plan
    /// is built around what is already under way.
    fn prebook(&self, st: &mut State, sched: &mut LabSchedule) -> Prebooked {
        let mut pre = Prebooked::new();
        let pins = || {
            self.pinned
                .iter()
                .enumerate()
                .flat_map(|(ri, ps)| ps.iter().enumerate().filter_map(move |(ti, p)| p.as_ref().map(|p| (ri, ti, p))))
        };
        // First what has happened: moves already made, lid tasks on arms. Two pinned tasks of a
        // plate that goes from one to the other without going home both list the moves that
        // brought it: each move is booked once. Such pins are of one run, and pins come run by
        // run, so the moves seen are those of the run at hand (a few).
        let mut booked: (usize, Vec<MoveSlot>) = (usize::MAX, Vec::new());
        for (ri, _, pin) in pins() {
            if booked.0 != ri {
                booked = (ri, Vec::new());
            }
            let mut made: Vec<MoveSlot> = Vec::new();
            for m in pin.inbound.iter().chain(&pin.outbound) {
                let same = |b: &MoveSlot| {
                    (b.run, b.plate, b.arm, b.from, b.to, b.start.to_bits())
                        == (m.run, m.plate, m.arm, m.from, m.to, m.start.to_bits())
                };
                if !booked.1.iter().any(same) {
                    booked.1.push(*m);
                    made.push(*m);
                }
            }
            for m in &made {
                st.arms[m.arm].book_unsorted(m.start, m.end, ri);
                sched.moves.push(*m);
            }
            self.book_station_holds(st, &made, ri, Timeline::book_unsorted);
            if let (Some(a), true) = (pin.resource, pin.on_arm) {
                st.arms[a].book_unsorted(pin.start, pin.end, ri);
            }
        }
        for t in st.res.iter_mut().chain(st.arms.iter_mut()) {
            t.sort();
        }
        // Then the moves still to make to take their plates home, never before now; first those
        // of instruments another pinned task's plate is already bound for, the soonest first: in
        // pin order, another plate's way home could take the only arm slot before that arrival,
        // and the plate on the nest would still be there when the next one is put down.
        let arrivals = self.pinned_arrivals();
        let mut homeward: Vec<(f64, usize, usize, &super::Pin)> =
            pins().map(|(ri, ti, pin)| (self.nest_needed_by(&arrivals, ri, ti, pin), ri, ti, pin)).collect();
        homeward.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, ri, ti, pin) in homeward {
            let task = &self.runs[ri].tasks[ti];
            let mut back = pin.end;
            // The instrument is free once the last of its plates has left.
            let mut departure = pin.end;
            for &p in &task.plates {
                let first = pin.outbound.iter().filter(|m| m.plate == p).min_by(|a, b| a.start.total_cmp(&b.start));
                if let Some(first) = first {
                    departure = departure.max(first.end);
                }
            }
            for m in &pin.outbound {
                back = back.max(m.end);
            }
            if let (Some(r), false) = (pin.resource, pin.on_arm) {
                let res = &self.resources[r];
                let mut moves = Vec::new();
                let mut holds = Vec::new();
                if let (Some(nest), false) =
                    (res.nest, res.class == InstrumentClass::Technician || task.plates.is_empty())
                {
                    if let Some(outbound) = self.route(nest, self.storage) {
                        let stays = |p: usize| self.stays_for_next_pin(ri, ti, pin, p);
                        for &p in
                            task.plates.iter().filter(|&&p| !pin.outbound.iter().any(|m| m.plate == p) && !stays(p))
                        {
                            let k = moves.len();
                            back = back.max(self.book_legs(
                                st,
                                outbound,
                                pin.end.max(self.not_before),
                                ri,
                                p,
                                &mut moves,
                                &mut holds,
                            ));
                            departure = departure.max(moves.get(k).map_or(pin.end, |m| m.end));
                        }
                    }
                }
                let first = pin.inbound.iter().map(|m| m.end).fold(pin.start, f64::min);
                st.res[r].book_keyed(first, departure.max(pin.end).max(first + EPS), ri, settings_key(task));
                for m in &moves {
                    st.arms[m.arm].book(m.start, m.end, ri);
                }
                for &(h, a, b) in &holds {
                    st.res[h].book(a, b, ri);
                }
                sched.moves.extend(moves);
            }
            let slot = TaskSlot { resource: pin.resource, on_arm: pin.on_arm, start: pin.start, end: pin.end };
            pre.insert((ri, ti), (slot, back));
        }
        pre
    }

    /// Per one-plate instrument, its pinned tasks (not arms' own) by start, each with the
    /// earliest delivery from it on (`nest_needed_by` asks it for every pin: a scan of every
    /// pin per pin took 30 % of a 200-tenant simulation).
    fn pinned_arrivals(&self) -> Vec<Vec<PinnedArrival>> {
        let mut by: Vec<Vec<PinnedArrival>> = vec![Vec::new(); self.resources.len()];
        for (rj, pins) in self.pinned.iter().enumerate() {
            for (tj, other) in pins.iter().enumerate() {
                let Some(other) = other.as_ref() else { continue };
                let Some(r) = other.resource.filter(|&r| !other.on_arm && self.resources[r].capacity == 1) else {
                    continue;
                };
                let arrives = other.inbound.iter().map(|m| m.start).fold(other.start, f64::min);
                by[r].push(PinnedArrival { start: other.start, arrives, task: (rj, tj), soonest: f64::INFINITY });
            }
        }
        for list in &mut by {
            list.sort_by(|a, b| a.start.total_cmp(&b.start));
            let mut soonest = f64::INFINITY;
            for e in list.iter_mut().rev() {
                soonest = soonest.min(e.arrives);
                e.soonest = soonest;
            }
        }
        by
    }

    /// When the next pinned task on a pinned task's one-plate instrument has its first plate
    /// delivered there (its first inbound move starts), by which the pinned task's plates must
    /// have left; infinite when no pinned task follows it there. `arrivals`:
    /// [`LabProblem::pinned_arrivals`].
    fn nest_needed_by(&self, arrivals: &[Vec<PinnedArrival>], ri: usize, ti: usize, pin: &super::Pin) -> f64 {
        // An instrument that holds several plates (an incubator) need not be cleared first.
        let Some(r) = pin.resource.filter(|&r| !pin.on_arm && self.resources[r].capacity == 1) else {
            return f64::INFINITY;
        };
        let list = &arrivals[r];
        let from = list.partition_point(|e| e.start < pin.end - EPS);
        // A task of no length starts where it ends: it is not its own follower.
        if pin.start >= pin.end - EPS {
            return list[from..].iter().filter(|e| e.task != (ri, ti)).map(|e| e.arrives).fold(f64::INFINITY, f64::min);
        }
        list.get(from).map_or(f64::INFINITY, |e| e.soonest)
    }

    /// Books the transfer stations a chain of moves waits on (from one leg's start to the next
    /// leg's end, as `book_legs` does).
    fn book_station_holds(
        &self,
        st: &mut State,
        moves: &[MoveSlot],
        ri: usize,
        book: fn(&mut Timeline, f64, f64, usize),
    ) {
        for a in moves {
            let Some(r) = self.nests[a.to]
                .owner
                .filter(|&r| self.resources[r].class == InstrumentClass::PlateHotel && a.to != self.storage)
            else {
                continue;
            };
            let next = moves
                .iter()
                .filter(|b| b.plate == a.plate && b.from == a.to && b.start >= a.end - EPS)
                .min_by(|x, y| x.start.total_cmp(&y.start));
            if let Some(b) = next {
                book(&mut st.res[r], a.start, b.end, ri);
            }
        }
    }

    /// After a run's trial insertion is undone, books its pinned tasks again.
    fn rebook_pins(&self, st: &mut State, sched: &LabSchedule, ri: usize) {
        let mine: Vec<MoveSlot> = sched.moves.iter().filter(|m| m.run == ri).copied().collect();
        for m in &mine {
            st.arms[m.arm].book(m.start, m.end, ri);
        }
        self.book_station_holds(st, &mine, ri, Timeline::book);
        for (ti, pin) in self.pinned[ri].iter().enumerate() {
            let Some(pin) = pin else { continue };
            if let (Some(r), false) = (pin.resource, pin.on_arm) {
                let plates = &self.runs[ri].tasks[ti].plates;
                let first = pin.inbound.iter().map(|m| m.end).fold(pin.start, f64::min);
                // It stays until the last of its plates has been taken off (the first leg away ends).
                let depart = plates
                    .iter()
                    .filter_map(|&p| {
                        sched
                            .moves
                            .iter()
                            .filter(|m| m.run == ri && m.plate == p && m.start >= pin.end - EPS)
                            .min_by(|a, b| a.start.total_cmp(&b.start))
                            .map(|m| m.end)
                    })
                    .fold(pin.end, f64::max);
                st.res[r].book_keyed(first, depart.max(first + EPS), ri, settings_key(&self.runs[ri].tasks[ti]));
            } else if let (Some(a), true) = (pin.resource, pin.on_arm) {
                st.arms[a].book(pin.start, pin.end, ri);
            }
        }
    }

    /// Default insertion order: release time, then weight (heavier first), then position.
    pub fn default_order(&self) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.runs.len()).collect();
        o.sort_by(|&a, &b| {
            let (x, y) = (&self.runs[a], &self.runs[b]);
            x.release.total_cmp(&y.release).then(y.weight.total_cmp(&x.weight)).then(a.cmp(&b))
        });
        o
    }

    /// The objective: makespan first, then weighted completion (so heavier tenants finish sooner).
    pub fn cost(&self, s: &LabSchedule) -> (f64, f64) {
        let ends = s.completions();
        let weighted: f64 = self.runs.iter().zip(&ends).map(|(run, end)| run.weight * (end - run.release)).sum();
        (s.makespan(), weighted)
    }
}

/// How long to search.
#[derive(Debug, Clone, Copy)]
pub struct LabBudget {
    pub time: Option<Duration>,
    pub iterations: Option<u64>,
}

/// What a solve produced.
#[derive(Debug, Clone)]
pub struct LabOutcome {
    pub schedule: LabSchedule,
    pub order: Vec<usize>,
    /// Runs in progress at a time while building ([`LabProblem::build_interleaved`]).
    pub window: usize,
    pub first_makespan: f64,
    pub time_to_first: Duration,
    pub iterations: u64,
}

/// The most runs the search interleaves at a time.
pub const MAX_WINDOW: usize = 4;

/// Builds a first schedule, then improves the insertion order (and how many runs are built
/// interleaved) within the budget.
pub fn solve(p: &LabProblem, budget: LabBudget, seed: u64) -> Option<LabOutcome> {
    solve_with_window(p, budget, seed, MAX_WINDOW)
}

/// How close the arm-moves bound must come to the best lower bound for the search to build runs
/// interleaved: that is where interleaving pays (the arm is the bottleneck); elsewhere its slower
/// builds cost the order search more iterations than they win.
pub const ARM_BOUND_SHARE: f64 = 0.8;

/// As [`solve`], interleaving at most `max_window` runs at a time (1: whole runs only), and
/// only when the arms are the bottleneck ([`ARM_BOUND_SHARE`]).
pub fn solve_with_window(p: &LabProblem, budget: LabBudget, seed: u64, max_window: usize) -> Option<LabOutcome> {
    let t0 = Instant::now();
    let mut order = p.default_order();
    let mut window = 1;
    let mut best = p.build(&order)?;
    let time_to_first = t0.elapsed();
    let first_makespan = best.makespan();
    let mut best_cost = p.cost(&best);
    let bounds = p.lower_bounds();
    let lb = bounds.iter().map(|b| b.1).fold(0.0, f64::max);
    let arm_bound = bounds.iter().find(|b| b.0 == "arm moves").map_or(0.0, |b| b.1);
    let max_window = if arm_bound >= ARM_BOUND_SHARE * lb { max_window.max(1) } else { 1 };
    let mut rng = Rng::new(seed);
    let mut it = 0;
    let n = order.len();
    let done = |it: u64| budget.iterations.is_some_and(|k| it >= k) || budget.time.is_some_and(|t| t0.elapsed() >= t);
    while n > 1 && !done(it) && best_cost.0 > lb + EPS {
        it += 1;
        let mut cand = order.clone();
        let mut w = window;
        if it < max_window as u64 {
            // First, each window on the default order.
            w = it as usize + 1;
        } else if max_window > 1 && rng.below(8) == 0 {
            w = 1 + rng.below(max_window);
        } else if rng.below(2) == 0 {
            let (i, j) = (rng.below(n), rng.below(n));
            cand.swap(i, j);
        } else {
            let i = rng.below(n);
            let r = cand.remove(i);
            cand.insert(rng.below(n), r);
        }
        if let Some(s) = p.build_interleaved(&cand, w) {
            let c = p.cost(&s);
            if c.0 < best_cost.0 - EPS || (c.0 <= best_cost.0 + EPS && c.1 < best_cost.1 - EPS) {
                best = s;
                best_cost = c;
                order = cand;
                window = w;
            }
        }
    }
    Some(LabOutcome { schedule: best, order, window, first_makespan, time_to_first, iterations: it })
}
