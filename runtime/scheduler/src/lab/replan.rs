//! Online re-planning: events from the lab change the problem, the plan is repaired at once
//! around what is already under way, then improved within a background budget. Start times
//! already announced move as little as possible; how many moved by more than a minute is counted.

use super::promise::Promises;
use super::queue::FairQueue;
use super::solve::{LabBudget, LabSchedule, MoveSlot};
use super::{LabProblem, ModelError, Pin, Run, Window};
use crate::shop::solve::Rng;
use labware::ServiceClass;
use std::time::{Duration, Instant};

/// The stretch ([`FairQueue::stretch`]) past which runs wait more than half their own length
/// and the background search leaves the fair order alone.
pub const CONGESTED: f64 = 1.5;

/// Something that happened in the lab.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A run was submitted.
    RunArrived(Run),
    /// A task started now.
    TaskStarted { run: usize, task: usize },
    /// A task ended at `at` (early or late). The report can reach the planner after other
    /// work has already moved on from that time, so it is not taken as now.
    TaskFinished { run: usize, task: usize, at: f64 },
    /// A running task will end later than planned (the instrument says when).
    TaskOverrun { run: usize, task: usize, expected_end: f64 },
    /// An instrument went down until `until` (or indefinitely, `f64::INFINITY`).
    InstrumentDown { resource: usize, until: f64 },
    /// An instrument is back.
    InstrumentUp { resource: usize },
    /// A run was cancelled: what has not started will not.
    RunCancelled { run: usize },
    /// Bench-time reservations changed: resource → (tenant, window), as in [`LabProblem`].
    ReservationsChanged(Vec<Vec<(String, Window)>>),
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    /// Time spent building the repaired plan.
    pub repair_time: Duration,
    /// Announced (not yet started) tasks whose start moved by more than 60 s.
    pub moved: usize,
    pub makespan: f64,
}

/// Keeps a plan current as events arrive.
#[derive(Debug, Clone)]
pub struct Planner {
    pub problem: LabProblem,
    pub schedule: LabSchedule,
    /// Pin every task planned to start before now (true, the default: for a plan nobody
    /// reports progress to). An executor that pins what really started ([`Planner::pin_task`])
    /// sets false, so a task running late can still move to another instrument.
    pub pin_past: bool,
    order: Vec<usize>,
    /// Runs built interleaved at a time (the search's choice; 1: one whole run after another).
    window: usize,
    /// Where arriving runs go in the order: weighted fair queuing across tenants.
    queue: FairQueue,
    /// The lab's stretch the order was last sorted at ([`FairQueue::stretch`]).
    stretch: f64,
    /// When each run was promised to finish, fixed at its arrival.
    promises: Promises,
    rng: Rng,
    /// Runs whose estimates changed since the last repair ([`Planner::reestimate`]): no repair
    /// holds them where the plan in force has them.
    reestimated: Vec<usize>,
}

impl Planner {
    /// Plans the problem's runs from scratch.
    pub fn new(problem: LabProblem, budget: LabBudget, seed: u64) -> Result<Planner, ModelError> {
        let mut out = super::solve::solve(&problem, budget, seed)
            .ok_or_else(|| ModelError("no schedule could be built".into()))?;
        // The solver orders for the shortest plan; classes come first: priority runs before
        // standard ones, spot after both (the solver's order within a class).
        if problem.runs.iter().any(|r| r.class != ServiceClass::Standard) {
            let mut order = out.order.clone();
            order.sort_by_key(|&r| problem.runs[r].class.rank());
            if let Some(s) = problem.build_interleaved(&order, out.window).or_else(|| problem.build(&order)) {
                out.schedule = s;
                out.order = order;
            }
        }
        let mut queue = FairQueue::default();
        let empty = problem.empty_lab();
        let mut promises = Promises::default();
        let ends = out.schedule.completions();
        for (i, run) in problem.runs.iter().enumerate() {
            queue.admit(&run.tenant, run.weight, run.class, run.release, empty.turnaround_alone(run));
            if run.class.promised() {
                promises.make(i, run.release, ends[i]);
            }
        }
        Ok(Planner {
            queue,
            stretch: 1.0,
            promises,
            problem,
            schedule: out.schedule,
            pin_past: true,
            order: out.order,
            window: out.window,
            rng: Rng::new(seed),
            reestimated: Vec::new(),
        })
    }

    /// When run `run` was promised to finish (device seconds), if it was.
    pub fn promise(&self, run: usize) -> Option<f64> {
        self.promises.get(run)
    }

    /// Runs the plan in force has finishing after their promise.
    pub fn late(&self) -> Vec<usize> {
        self.promises.late(&self.schedule.completions())
    }

    /// Promises made from now on add `margin` × the planned turnaround to the planned end;
    /// the runs planned so far are promised again with it (call it before the first arrival).
    pub fn set_promise_margin(&mut self, margin: f64) {
        self.promises.set_margin(margin);
        let ends = self.schedule.completions();
        for (i, run) in self.problem.runs.iter().enumerate() {
            if self.promises.get(i).is_some() {
                self.promises.make(i, run.release, ends[i]);
            }
        }
    }

    /// The margin promises made now add (a fraction of the planned turnaround).
    pub fn promise_margin(&self) -> f64 {
        self.promises.margin()
    }

    /// Promises made from now on add `margin` × the planned turnaround to the planned end; the
    /// promises made before stay as they were (a lab that has grown less sure of its estimates
    /// promises the next runs later, it does not move its word to the runs it has promised).
    pub fn set_margin_for_arrivals(&mut self, margin: f64) {
        self.promises.set_margin(margin);
    }

    /// Plans run `run`'s tasks not yet started with `durations` (per task, seconds) from the
    /// next repair on: a lab that has learned how long such tasks take corrects the runs still
    /// waiting, not only those that arrive. Promises stay as they were made. Whether any changed.
    pub fn reestimate(&mut self, run: usize, durations: &[f64]) -> bool {
        let (Some(r), Some(pins)) = (self.problem.runs.get_mut(run), self.problem.pinned.get(run)) else {
            return false;
        };
        let mut changed = false;
        for ((task, &d), pin) in r.tasks.iter_mut().zip(durations).zip(pins) {
            if pin.is_none() && d.is_finite() && d >= 0.0 && (task.duration - d).abs() > 1e-9 {
                task.duration = d;
                changed = true;
            }
        }
        if changed && !self.reestimated.contains(&run) {
            self.reestimated.push(run);
        }
        changed
    }

    /// Restores a promise made before (an executor resuming from its store); `None` withdraws it.
    pub fn set_promise(&mut self, run: usize, due: Option<f64>) {
        self.promises.set(run, due);
    }

    /// Runs built interleaved at a time in repairs (see [`LabProblem::build_interleaved`]).
    pub fn window(&self) -> usize {
        self.window
    }

    /// Builds repairs with `window` runs interleaved at a time from now on.
    pub fn set_window(&mut self, window: usize) {
        self.window = window.max(1);
    }

    /// Pins every task planned to have started before `now`. Moves of plates for tasks not yet
    /// started stay re-plannable: the executor only commits a plate to an instrument when the
    /// task starts, so an overrun never strands a plate in front of a busy instrument.
    fn pin_started(&mut self, now: f64) {
        let moves = self.moves_by_run();
        for (ri, mine) in moves.iter().enumerate().take(self.problem.runs.len()) {
            if !self.pin_past {
                break;
            }
            for ti in 0..self.problem.runs[ri].tasks.len() {
                if self.problem.pinned[ri][ti].is_some() {
                    continue;
                }
                let Some(slot) = self.schedule.tasks.get(ri).and_then(|t| t.get(ti)).copied() else { continue };
                if slot.start < now - 1e-9 {
                    self.problem.pinned[ri][ti] = Some(self.make_pin_among(ri, ti, mine));
                }
            }
        }
        // Moves home that have begun are history too: the whole chain to storage is kept.
        self.pin_moves_home(now);
    }

    /// Pins, with each pinned task that sends its plates home, the chain of moves taking them
    /// there when its first move starts before `begun_before`.
    fn pin_moves_home(&mut self, begun_before: f64) {
        let moves = self.moves_by_run();
        for (ri, mine) in moves.iter().enumerate().take(self.problem.runs.len()) {
            for ti in 0..self.problem.runs[ri].tasks.len() {
                let Some(pin) = self.problem.pinned[ri][ti].clone() else { continue };
                let travels = !pin.on_arm && pin.resource.is_some_and(|r| self.problem.resources[r].nest.is_some());
                if !travels {
                    continue;
                }
                let mut outbound = pin.outbound.clone();
                for &p in &self.problem.runs[ri].tasks[ti].plates {
                    if outbound.iter().any(|m| m.plate == p) {
                        continue;
                    }
                    let mut chain: Vec<_> =
                        mine.iter().filter(|m| m.plate == p && m.start >= pin.end - 1e-6).copied().collect();
                    chain.sort_by(|a, b| a.start.total_cmp(&b.start));
                    let Some(k) = chain.iter().position(|m| m.to == self.problem.storage) else { continue };
                    chain.truncate(k + 1);
                    // A later task of the same plate before the plate leaves: the chain home is
                    // that task's, not this one's.
                    let leaves = chain.first().map_or(f64::INFINITY, |m| m.start);
                    let used_again = (0..self.problem.runs[ri].tasks.len()).any(|tj| {
                        tj != ti
                            && self.problem.runs[ri].tasks[tj].plates.contains(&p)
                            && self.schedule.tasks[ri][tj].start >= pin.end - 1e-6
                            && self.schedule.tasks[ri][tj].start < leaves
                    });
                    if used_again {
                        continue;
                    }
                    if chain.first().is_some_and(|m| m.start < begun_before - 1e-9) {
                        outbound.extend(chain);
                    }
                }
                if let Some(p) = self.problem.pinned[ri][ti].as_mut() {
                    p.outbound = outbound;
                }
            }
        }
    }

    /// Keeps a task where it is planned, with the moves that bring its plates: the executor pins
    /// a task once a plate has set off towards it, so a repair never leaves a plate stranded.
    pub fn pin_task(&mut self, run: usize, task: usize) {
        let planned = self.schedule.tasks.get(run).is_some_and(|t| task < t.len());
        if planned && self.problem.pinned[run][task].is_none() {
            self.problem.pinned[run][task] = Some(self.make_pin(run, task));
        }
    }

    /// The task a plate move delivers to: the plate's next task after the move.
    pub fn destination(&self, m: &super::solve::MoveSlot) -> Option<usize> {
        let run = self.problem.runs.get(m.run)?;
        let slots = self.schedule.tasks.get(m.run)?;
        (0..run.tasks.len())
            .filter(|&t| run.tasks[t].plates.contains(&m.plate) && slots[t].start >= m.end - 1e-6)
            .min_by(|&a, &b| slots[a].start.total_cmp(&slots[b].start))
    }

    /// A plate that has set off (the move started) pins the task it is going to, so a repair
    /// never strands it; a plate going back to storage pins nothing.
    pub fn pin_en_route(&mut self, m: &super::solve::MoveSlot) {
        if m.to == self.problem.storage {
            return;
        }
        if let Some(t) = self.destination(m) {
            self.pin_task(m.run, t);
        }
    }

    /// A pin for a task as currently planned, with the moves that bring its plates.
    fn make_pin(&self, ri: usize, ti: usize) -> Pin {
        let mine: Vec<MoveSlot> = self.schedule.moves.iter().filter(|m| m.run == ri).copied().collect();
        self.make_pin_among(ri, ti, &mine)
    }

    /// [`Planner::make_pin`] given the run's own planned moves (`moves`, from
    /// [`Planner::moves_by_run`]): pinning a whole plan task by task scanned every move of the
    /// lab for every task, and then again for each of them (98 % of the time at 200 tenants).
    fn make_pin_among(&self, ri: usize, ti: usize, moves: &[MoveSlot]) -> Pin {
        let slot = self.schedule.tasks[ri][ti];
        let plates = &self.problem.runs[ri].tasks[ti].plates;
        // Plates travel to instruments with a nest; a technician's task moves none of them.
        let travels = !slot.on_arm && slot.resource.is_some_and(|r| self.problem.resources[r].nest.is_some());
        let storage = self.problem.storage;
        // When a plate last arrived home before the task (its inbound moves start after).
        let last_home = |plate: usize| {
            moves
                .iter()
                .filter(|m| m.plate == plate && m.to == storage && m.end <= slot.start + 1e-6)
                .map(|m| m.end)
                .fold(f64::NEG_INFINITY, f64::max)
        };
        let inbound = if travels {
            moves
                .iter()
                .filter(|m| plates.contains(&m.plate) && m.end <= slot.start + 1e-6)
                .filter(|m| m.start >= last_home(m.plate) - 1e-6)
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        Pin {
            resource: slot.resource,
            on_arm: slot.on_arm,
            start: slot.start,
            end: slot.end,
            inbound,
            outbound: Vec::new(),
        }
    }

    /// The plan in force's moves, per run.
    fn moves_by_run(&self) -> Vec<Vec<MoveSlot>> {
        let mut by = vec![Vec::new(); self.problem.runs.len().max(self.schedule.tasks.len())];
        for m in &self.schedule.moves {
            if let Some(v) = by.get_mut(m.run) {
                v.push(*m);
            }
        }
        by
    }

    /// Applies an event at time `now`, repairs the plan, and improves it for `improve`.
    pub fn handle(&mut self, now: f64, event: Event, improve: Duration) -> Result<Repair, ModelError> {
        self.handle_within(now, event, LabBudget { time: Some(improve), iterations: None })
    }

    /// [`Planner::handle`], improving within `improve`: a time, a number of candidate orders,
    /// or both (whichever ends first). An iteration budget alone makes the repair repeatable.
    pub fn handle_within(&mut self, now: f64, event: Event, improve: LabBudget) -> Result<Repair, ModelError> {
        let t0 = Instant::now();
        self.pin_started(now);
        self.problem.not_before = now;
        // What is announced now is what the repair tries to keep.
        self.problem.anchors =
            self.schedule.tasks.iter().map(|ts| ts.iter().map(|s| Some(s.start)).collect()).collect();
        let before = self.schedule.clone();
        let before_ends = before.completions();
        let before_order = self.order.clone();
        // An arriving run, with the order before it came.
        let mut arrived: Option<(usize, Vec<usize>)> = None;
        // Runs an overrun or a failure pushes: planned again in full if the rebuilt plan
        // breaks promises, everything else held.
        let mut shifted: Vec<usize> = Vec::new();
        let mut reshaped = false;
        match event {
            Event::RunArrived(mut run) => {
                run.release = run.release.max(now);
                let solo = self.problem.empty_lab().turnaround_alone(&run);
                let (tenant, weight, class) = (run.tenant.clone(), run.weight, run.class);
                let release = run.release;
                let i = self.problem.add_run(run)?;
                self.queue.admit(&tenant, weight, class, release, solo);
                arrived = Some((i, self.order.clone()));
                self.order.push(i);
                // Runs not yet begun in order of their fair finish at the lab's present stretch:
                // a heavier (urgent) run goes ahead of lighter ones, a short run of a tenant
                // arriving late ahead of the long runs of those who came first.
                let planned = self.schedule.completions();
                self.stretch = self.queue.stretch(now, |r| planned.get(r).copied().unwrap_or(f64::NAN));
                let problem = &self.problem;
                // Spot work, begun or not, goes behind: what it has started stays pinned, what it
                // has not gives way to the newcomer.
                let keeps_place = |o: usize| problem.has_begun(o) && problem.runs[o].class != ServiceClass::Spot;
                self.order = self.queue.reorder(&self.order, self.stretch, keeps_place);
            }
            // While a task runs, none of its plates has left it, whatever the plan said: moves
            // home planned before now were pinned as begun, and would leave at the old times.
            Event::TaskStarted { run, task } => {
                let pin = self.pin_mut(run, task)?;
                let d = pin.end - pin.start;
                pin.start = now;
                pin.end = now + d;
                pin.outbound.clear();
            }
            Event::TaskFinished { run, task, at } => {
                // The end is capped at the plates' planned departure, so the plan stays
                // consistent with what has been dispatched, whatever the report says: a plate
                // already on its way to a later pinned task (`plates_left`) left by then; and a
                // move home that was due before the task ended is kept as planned, since the
                // executor starts it as soon as the task ends (a move is known by its planned
                // start: planned again, it would be sent twice).
                let left = self.plates_left(run, task);
                let pin = self.pin_mut(run, task)?;
                let left = pin.outbound.iter().map(|m| m.start).fold(left, f64::min);
                pin.end = at.min(now).min(left).max(pin.start);
            }
            Event::TaskOverrun { run, task, expected_end } => {
                let pin = self.pin_mut(run, task)?;
                let (resource, on_arm, was_end) = (pin.resource, pin.on_arm, pin.end);
                pin.end = expected_end.max(pin.end);
                pin.outbound.clear();
                shifted = self.runs_after_on(resource, on_arm, was_end);
                shifted.push(run);
            }
            Event::InstrumentDown { resource, until } => {
                let w =
                    self.problem.down.get_mut(resource).ok_or_else(|| ModelError(format!("no resource {resource}")))?;
                w.push(Window { start: now, end: until });
                shifted = self.runs_after_on(Some(resource), false, now);
            }
            Event::InstrumentUp { resource } => {
                let w =
                    self.problem.down.get_mut(resource).ok_or_else(|| ModelError(format!("no resource {resource}")))?;
                let mut was_until = now;
                for x in w.iter_mut().filter(|x| x.start <= now && x.end > now) {
                    was_until = was_until.max(x.end);
                    x.end = now;
                }
                // Work planned to start when the instrument was due back was waiting for it: it
                // may move as early as it can now, whatever start was announced for it.
                for anchors in &mut self.problem.anchors {
                    for a in
                        anchors.iter_mut().filter(|a| a.is_some_and(|at| at >= was_until - 1e-6 && was_until > now))
                    {
                        *a = None;
                    }
                }
            }
            Event::RunCancelled { run } => {
                self.cancel(run)?;
                self.promises.set(run, None);
                // The plan in force still has the tasks dropped: it is no fallback.
                reshaped = true;
            }
            Event::ReservationsChanged(r) => {
                if r.len() != self.problem.resources.len() {
                    return Err(ModelError(format!(
                        "reservations for {} resources; the lab has {}",
                        r.len(),
                        self.problem.resources.len()
                    )));
                }
                self.problem.reservations = r;
            }
        }
        // Built as the plan in force was; one whole run after another when that fails.
        let interleaved = self.problem.build_interleaved(&self.order, self.window);
        if interleaved.is_none() {
            self.window = 1;
        }
        let schedule = interleaved
            .or_else(|| self.problem.build(&self.order))
            .ok_or_else(|| ModelError("the repaired plan could not be built".into()))?;
        self.schedule = schedule;
        if let Some((run, prev)) = &arrived {
            let run = *run;
            let class = self.problem.runs[run].class;
            if class == ServiceClass::Spot {
                self.spot_in_idle_capacity(run, prev, &before, &before_ends);
            } else {
                self.keep_promises_on_arrival(run, prev, &before, &before_ends);
            }
            let release = self.problem.runs[run].release;
            // Promised by its fair finish when that is later than the plan's end: runs that
            // arrive later and are due sooner will go ahead of it, and the promise leaves them
            // that room (promising the planned end, the lab kept every promise by refusing
            // them: Jain's index 0.69 at 50 tenants instead of 0.97). A priority run goes
            // ahead of every standard one and is promised its planned end; spot is promised
            // nothing.
            let end = self.schedule.completion(run);
            let fair = self.queue.deadlines(self.stretch).get(run).copied().unwrap_or(end);
            let promise = match class {
                ServiceClass::Standard => Some(end.max(fair)),
                ServiceClass::Priority => Some(end),
                ServiceClass::Spot => None,
            };
            match promise {
                Some(by) => {
                    self.promises.make(run, release, by);
                }
                None => self.promises.set(run, None),
            }
        }
        // Built again, the same order can come out later for some runs (the greedy build takes
        // other turns around new pins). When that breaks a promise, the plan in force stays if
        // it still holds; if not, the runs the event pushed (later work on an overrunning or
        // failed instrument) are planned again around everything else held where it was,
        // when that breaks fewer.
        if arrived.is_none() && !reshaped {
            let broken = self.promises.newly_late(&before_ends, &self.schedule.completions()).len();
            if broken > 0 {
                if self.reestimated.is_empty()
                    && self.holds_pins(&before)
                    && super::check::validate(&self.problem, &before).is_empty()
                {
                    self.schedule = before.clone();
                    self.order = before_order;
                } else if let Some(s) = self.fitted_except(&before_order, &before, &shifted) {
                    if self.promises.newly_late(&before_ends, &s.completions()).len() < broken {
                        self.schedule = s;
                        self.order = before_order;
                    }
                }
            }
        }
        let repair_time = t0.elapsed();
        // Background improvement: the same order search, around the pinned tasks.
        let deadline = improve.time.map(|t| Instant::now() + t);
        // No limit at all is no improvement, never an endless one.
        let mut left = improve.iterations.unwrap_or(if deadline.is_some() { u64::MAX } else { 0 });
        let mut best = self.problem.cost(&self.schedule);
        // A shorter plan is kept only if it treats no run worse than the fair order did: the
        // search would otherwise trade the runs served last for a little makespan.
        let mut ends_now = self.schedule.completions();
        let mut jain = self.queue.jain(&ends_now);
        let n = self.order.len();
        // On a congested lab the fair order is the plan: measured at 50 tenants, a search even
        // among runs under way, kept only where Jain's index did not fall, ended at 0.73–0.97
        // (0.97 without it) and no shorter.
        if self.stretch > CONGESTED {
            left = 0;
        }
        while n > 1 && left > 0 && deadline.is_none_or(|d| Instant::now() < d) {
            left -= 1;
            let mut cand = self.order.clone();
            // Two runs next to each other, both under way: which runs begin, and in what order,
            // is the fair queue's to say; the search only settles whose remaining steps fill
            // the gaps better. (Swapping any two runs, or any neighbours, let each repair's
            // search start runs out of their fair turn; summed over 200 arrivals at 50 tenants
            // it took Jain's index from 0.97 to 0.43–0.83 and gained no makespan.)
            let problem = &self.problem;
            let pairs: Vec<usize> =
                (0..n - 1).filter(|&i| problem.has_begun(cand[i]) && problem.has_begun(cand[i + 1])).collect();
            if pairs.is_empty() {
                break;
            }
            let i = pairs[self.rng.below(pairs.len())];
            cand.swap(i, i + 1);
            if let Some(s) = self.problem.build_interleaved(&cand, self.window) {
                let c = self.problem.cost(&s);
                let ends = s.completions();
                let j = self.queue.jain(&ends);
                let keeps_promises = self.promises.newly_late(&ends_now, &ends).is_empty();
                if j >= jain - 1e-9
                    && keeps_promises
                    && (c.0 < best.0 - 1e-6 || (c.0 <= best.0 + 1e-6 && c.1 < best.1 - 1e-6))
                {
                    best = c;
                    jain = j;
                    ends_now = ends;
                    self.schedule = s;
                    self.order = cand;
                }
            }
        }
        self.reestimated.clear();
        let moved = count_moved(&self.problem, &before, &self.schedule, now);
        Ok(Repair { repair_time, moved, makespan: self.schedule.makespan() })
    }

    /// Runs with a task not yet pinned planned on `resource` (an arm when `on_arm`) from `t` on.
    fn runs_after_on(&self, resource: Option<usize>, on_arm: bool, t: f64) -> Vec<usize> {
        let Some(resource) = resource else { return Vec::new() };
        (0..self.schedule.tasks.len())
            .filter(|&ri| {
                self.schedule.tasks[ri].iter().enumerate().any(|(ti, slot)| {
                    slot.resource == Some(resource)
                        && slot.on_arm == on_arm
                        && slot.start >= t - 1e-6
                        && self.problem.pinned[ri].get(ti).is_some_and(Option::is_none)
                })
            })
            .collect()
    }

    /// Whether a plan has every pinned task where its pin says (a task that started late is
    /// pinned at its real start; a plan with it at the planned one no longer holds).
    fn holds_pins(&self, s: &LabSchedule) -> bool {
        self.problem.pinned.iter().enumerate().all(|(ri, pins)| {
            pins.iter().enumerate().all(|(ti, pin)| {
                let Some(pin) = pin else { return true };
                s.tasks.get(ri).and_then(|t| t.get(ti)).is_some_and(|slot| {
                    slot.resource == pin.resource
                        && slot.on_arm == pin.on_arm
                        && (slot.start - pin.start).abs() < 1e-6
                        && (slot.end - pin.end).abs() < 1e-6
                })
            })
        })
    }

    /// Builds a plan for `order` as the plan in force was built (runs interleaved by the
    /// window), or one whole run after another when that fails.
    fn build(&self, order: &[usize]) -> Option<LabSchedule> {
        self.problem.build_interleaved(order, self.window).or_else(|| self.problem.build(order))
    }

    /// An arriving run placed in fair order made an older promise late (`before`: completions
    /// before it came). An ordinary run then goes into the gaps of the plan in force, every
    /// other task held where it was (built again, the runs before can come out seconds later
    /// wherever the new one goes: see `handle_within`). An urgent one (weight above 1), and an
    /// ordinary one that fits no gap, keeps the runs admitted before in their order (`prev`)
    /// and goes at the first place from its fair one on where no promise breaks, looking
    /// further back in growing steps; at the end at worst. (Trying places first for every run
    /// kept 89.5–94.2 % of promises under disturbance at 30 and 50 tenants, and Jain's index
    /// fell to 0.85 at 50 undisturbed; gaps first, 95.5–97.0 % and 0.91.)
    ///
    /// Spot runs are pre-empted, begun or not: every order tried has them after the new run,
    /// and their tasks not started are planned again (not held) around it.
    fn keep_promises_on_arrival(&mut self, run: usize, prev: &[usize], plan: &LabSchedule, before: &[f64]) {
        if self.promises.newly_late(before, &self.schedule.completions()).is_empty() {
            return;
        }
        let problem = &self.problem;
        let (spots, prev): (Vec<usize>, Vec<usize>) =
            prev.iter().partition(|&&r| problem.runs[r].class == ServiceClass::Spot);
        let with_spots = |mut o: Vec<usize>| {
            o.extend(&spots);
            o
        };
        let order: Vec<usize> = with_spots(prev.iter().copied().chain([run]).collect());
        let urgent =
            self.problem.runs[run].weight > 1.0 + 1e-9 || self.problem.runs[run].class == ServiceClass::Priority;
        if !urgent {
            if let Some(s) = self.fitted_except(&order, plan, &spots) {
                if self.promises.newly_late(before, &s.completions()).is_empty() {
                    self.schedule = s;
                    self.order = order;
                    return;
                }
            }
        }
        let fair = self.order.iter().position(|&r| r == run).unwrap_or(prev.len()).min(prev.len());
        let (mut pos, mut step) = (fair, 1);
        while pos < prev.len() {
            let mut cand = prev.to_vec();
            cand.insert(pos, run);
            let cand = with_spots(cand);
            if let Some(s) = self.build(&cand) {
                if self.promises.newly_late(before, &s.completions()).is_empty() {
                    self.schedule = s;
                    self.order = cand;
                    return;
                }
            }
            pos += step;
            step *= 2;
        }
        if urgent {
            if let Some(s) = self.fitted_except(&order, plan, &spots) {
                if self.promises.newly_late(before, &s.completions()).is_empty() {
                    self.schedule = s;
                    self.order = order;
                    return;
                }
            }
        }
        if let Some(s) = self.build(&order) {
            self.schedule = s;
            self.order = order;
        }
    }

    /// A spot run takes only capacity nobody else is using: when the plan built with it last
    /// makes any other run end later than before it came (`before`: completions then), every
    /// task of the plan in force (`plan`) is held where it was and the spot run is booked in
    /// what is left. It is promised nothing and moves nobody's planned end.
    fn spot_in_idle_capacity(&mut self, run: usize, prev: &[usize], plan: &LabSchedule, before: &[f64]) {
        let ends = self.schedule.completions();
        let later = before.iter().zip(&ends).any(|(b, e)| e > &(b + 1e-3));
        if !later {
            return;
        }
        let order: Vec<usize> = prev.iter().copied().chain([run]).collect();
        if let Some(s) = self.fitted_except(&order, plan, &[]) {
            self.schedule = s;
            self.order = order;
        }
    }

    /// `plan` (the plan in force, without the runs of `order` it lacks) kept as it is, every
    /// task held where it was except those of the runs in `free`, which are planned again in
    /// full (in their places in `order`) with the runs `plan` lacks in what is left; `None` if
    /// that cannot be built or breaks a constraint. Runs re-estimated since the last repair are
    /// planned again too: the plan in force has them at their old lengths.
    fn fitted_except(&mut self, order: &[usize], plan: &LabSchedule, free: &[usize]) -> Option<LabSchedule> {
        let free: Vec<usize> = free.iter().chain(&self.reestimated).copied().collect();
        let same_shape = plan.tasks.len() <= self.problem.runs.len()
            && plan.tasks.iter().zip(&self.problem.runs).all(|(slots, run)| slots.len() == run.tasks.len());
        if !same_shape {
            return None;
        }
        let in_force = std::mem::replace(&mut self.schedule, plan.clone());
        let pins = self.problem.pinned.clone();
        let moves = self.moves_by_run();
        for ri in (0..plan.tasks.len()).filter(|r| !free.contains(r)) {
            for ti in 0..plan.tasks[ri].len() {
                if self.problem.pinned[ri][ti].is_none() {
                    self.problem.pinned[ri][ti] = Some(self.make_pin_among(ri, ti, &moves[ri]));
                }
            }
        }
        self.pin_moves_home(f64::INFINITY);
        let built = self.build(order);
        let built = built.filter(|s| super::check::validate(&self.problem, s).is_empty());
        self.problem.pinned = pins;
        self.schedule = in_force;
        built
    }

    /// The earliest planned departure of a task's plates towards a later task already pinned
    /// (infinite when none has left yet).
    fn plates_left(&self, run: usize, task: usize) -> f64 {
        let (Some(tasks), Some(pins)) = (self.problem.runs.get(run).map(|r| &r.tasks), self.problem.pinned.get(run))
        else {
            return f64::INFINITY;
        };
        let Some(plates) = tasks.get(task).map(|t| &t.plates) else { return f64::INFINITY };
        let planned = self.schedule.tasks.get(run).and_then(|s| s.get(task)).map_or(f64::NEG_INFINITY, |s| s.start);
        let begun = pins.get(task).and_then(Option::as_ref).map_or(planned, |p| p.start);
        let mut left = f64::INFINITY;
        for (t, pin) in pins.iter().enumerate() {
            let Some(pin) = pin.as_ref().filter(|p| t != task && p.start > begun) else { continue };
            if !tasks[t].plates.iter().any(|p| plates.contains(p)) {
                continue;
            }
            left = left.min(pin.start);
            for m in pin.inbound.iter().filter(|m| plates.contains(&m.plate) && m.start >= begun) {
                left = left.min(m.start);
            }
        }
        left
    }

    fn pin_mut(&mut self, run: usize, task: usize) -> Result<&mut Pin, ModelError> {
        if self.schedule.tasks.get(run).and_then(|t| t.get(task)).is_none() {
            return Err(ModelError(format!("run {run} has no task {task}")));
        }
        if self.problem.pinned[run][task].is_none() {
            self.problem.pinned[run][task] = Some(self.make_pin(run, task));
        }
        self.problem.pinned[run][task].as_mut().ok_or_else(|| ModelError("pin vanished".into()))
    }

    /// Drops a run's tasks that have not started, renumbering what remains.
    fn cancel(&mut self, run: usize) -> Result<(), ModelError> {
        let r = self.problem.runs.get_mut(run).ok_or_else(|| ModelError(format!("no run {run}")))?;
        let pins = &mut self.problem.pinned[run];
        let keep: Vec<usize> = (0..r.tasks.len()).filter(|&t| pins[t].is_some()).collect();
        let new_index = |old: usize| keep.iter().position(|&k| k == old);
        let tasks = keep
            .iter()
            .map(|&t| {
                let mut task = r.tasks[t].clone();
                task.after = task.after.iter().filter_map(|&a| new_index(a)).collect();
                task
            })
            .collect();
        r.tasks = tasks;
        r.max_lags = r.max_lags.iter().filter_map(|&(f, t, m)| Some((new_index(f)?, new_index(t)?, m))).collect();
        r.min_lags = r.min_lags.iter().filter_map(|&(f, t, m)| Some((new_index(f)?, new_index(t)?, m))).collect();
        *pins = keep.iter().map(|&t| pins[t].clone()).collect();
        Ok(())
    }
}

/// Tasks not started at `now` in `before` whose start moved by more than a minute in `after`.
pub fn count_moved(p: &LabProblem, before: &LabSchedule, after: &LabSchedule, now: f64) -> usize {
    let mut n = 0;
    for (ri, tasks) in before.tasks.iter().enumerate() {
        for (ti, slot) in tasks.iter().enumerate() {
            if slot.start <= now || p.pinned.get(ri).and_then(|x| x.get(ti)).is_some_and(Option::is_some) {
                continue;
            }
            if let Some(new) = after.tasks.get(ri).and_then(|t| t.get(ti)) {
                if (new.start - slot.start).abs() > 60.0 {
                    n += 1;
                }
            }
        }
    }
    n
}
