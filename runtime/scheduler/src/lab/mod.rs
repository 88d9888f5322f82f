//! The lab scheduling model: every tenant's runs on the site's instruments, with the plate moves
//! the robot arms must make between them.
//!
//! - Resources are instrument instances (a class, a capacity, pipettes, nests), technicians, and
//!   buffer nests (transfer stations) that hold one plate.
//! - Plates (labware of kind well plate) live in storage (the plate hotel) and are carried by arms
//!   along the cheapest chain of arm moves; an instrument is occupied from the moment a plate
//!   arrives on its nest until the arm move that takes it away has ended (blocking nests: an arm
//!   cannot lower the next plate while it is still lifting this one off), so an arm that is late
//!   keeps an instrument busy.
//! - Policy: after each task its plates go back to storage. The storage is the escape valve that
//!   makes the constructive schedule deadlock-free: a plate in flight always has somewhere to go.
//! - Runs have a tenant, a weight, a release time and max lags between tasks; resources have
//!   unavailability windows and may be reserved for one tenant.

pub mod check;
pub mod fair;
pub mod generate;
pub mod promise;
pub mod queue;
pub mod replan;
pub mod solve;
pub mod trace;

use labware::{InstrumentClass, LabwareKind, Site};
use protocols::plan::RunPlan;
use serde::Serialize;
use std::collections::BTreeMap;

/// A place a plate can be.
#[derive(Debug, Clone, PartialEq)]
pub struct Nest {
    pub id: String,
    /// The resource the nest belongs to; `None` for storage and buffers.
    pub owner: Option<usize>,
}

/// Something that runs tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: String,
    pub class: InstrumentClass,
    pub capacity: u32,
    pub pipettes: Vec<String>,
    /// Where its plates sit (instruments); empty for technicians.
    pub nest: Option<usize>,
    /// Set points it can hold (incubators, heater-shakers); `None`: not a capability it has.
    pub temperature_c: Option<labware::site::Range>,
    pub shaking_rpm: Option<labware::site::Range>,
}

/// A plate-moving arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub id: String,
    pub reach: Vec<usize>,
    /// Seconds between two nests it reaches.
    pub moves: BTreeMap<(usize, usize), f64>,
}

/// One arm move of a route.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Leg {
    pub arm: usize,
    pub from: usize,
    pub to: usize,
    pub seconds: f64,
}

/// A time window `[start, end)` in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub start: f64,
    pub end: f64,
}

/// A task of a run, in scheduler terms.
#[derive(Debug, Clone, PartialEq)]
pub struct LabTask {
    pub class: Option<InstrumentClass>,
    pub duration: f64,
    pub after: Vec<usize>,
    /// Plates (indices into the run's plates) the task needs on its instrument.
    pub plates: Vec<usize>,
    pub pipettes: Vec<String>,
    /// Set points (incubation temperature, shaking): tasks sharing an instrument must agree.
    pub settings: protocols::plan::Settings,
    pub label: String,
    /// Ids of the instruments that can run it (every capability it needs, from the compiler);
    /// empty: any instrument of its class that has its pipettes and set points.
    pub instruments: Vec<String>,
}

/// A submitted run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub tenant: String,
    /// Fairness weight of the tenant (higher: served sooner).
    pub weight: f64,
    /// What the tenant bought: priority goes ahead of standard work, spot only fills idle
    /// capacity and is promised nothing (`replan`).
    pub class: labware::ServiceClass,
    pub release: f64,
    pub plates: Vec<String>,
    pub tasks: Vec<LabTask>,
    /// (from, to, max seconds between the end of `from` and the start of `to`).
    pub max_lags: Vec<(usize, usize, f64)>,
    /// (from, to, min seconds between the end of `from` and the start of `to`): "wait at least".
    pub min_lags: Vec<(usize, usize, f64)>,
}

impl Run {
    /// A compiled plan in scheduler terms; well plates become the run's plates.
    pub fn from_plan(id: &str, tenant: &str, weight: f64, release: f64, plan: &RunPlan) -> Run {
        let plates: Vec<String> =
            plan.labware.iter().filter(|l| l.kind == LabwareKind::WellPlate).map(|l| l.name.clone()).collect();
        let tasks = plan
            .tasks
            .iter()
            .map(|t| LabTask {
                class: t.class,
                duration: t.duration_s,
                after: t.after.iter().map(|&a| a as usize).collect(),
                plates: t.holds.iter().filter_map(|h| plates.iter().position(|p| p == h)).collect(),
                pipettes: t.pipettes.clone(),
                settings: t.settings,
                label: t.label.clone(),
                instruments: t.instruments.clone(),
            })
            .collect();
        Run {
            id: id.to_string(),
            tenant: tenant.to_string(),
            weight,
            class: labware::ServiceClass::Standard,
            release,
            plates,
            tasks,
            max_lags: plan.max_lags.iter().map(|l| (l.from as usize, l.to as usize, l.max_s)).collect(),
            min_lags: Vec::new(),
        }
    }
}

/// Everything the scheduler plans over.
#[derive(Debug, Clone)]
pub struct LabProblem {
    pub nests: Vec<Nest>,
    pub resources: Vec<Resource>,
    pub arms: Vec<Arm>,
    /// Where plates wait between tasks.
    pub storage: usize,
    /// Unavailability per resource (maintenance, down).
    pub down: Vec<Vec<Window>>,
    /// Bench-time reservations: resource → (tenant, window); others may not use it then.
    pub reservations: Vec<Vec<(String, Window)>>,
    pub runs: Vec<Run>,
    /// Tasks already under way, per run and task: they keep their instrument and times.
    pub pinned: Vec<Vec<Option<Pin>>>,
    /// Nothing not yet started may start before this time (the planner's "now").
    pub not_before: f64,
    /// Announced start times, per run and task: a repair does not start a task more than a
    /// minute earlier than announced (people and other systems plan around them); later only
    /// when forced.
    pub anchors: Vec<Vec<Option<f64>>>,
    /// Cheapest chain of arm moves between every two nests.
    routes: Vec<Vec<Option<Vec<Leg>>>>,
}

/// A task that has started (or whose plates are on their way): re-planning keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pin {
    pub resource: Option<usize>,
    pub on_arm: bool,
    pub start: f64,
    pub end: f64,
    /// Moves that brought its plates, as they happened.
    pub inbound: Vec<solve::MoveSlot>,
    /// Moves that are taking (or took) its plates home, once they have begun.
    pub outbound: Vec<solve::MoveSlot>,
}

/// A tenant's slowdowns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantSlowdown {
    pub tenant: String,
    pub runs: usize,
    pub mean: f64,
    pub max: f64,
}

/// Slowdown per tenant and Jain's fairness index (1 = perfectly even).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fairness {
    pub tenants: Vec<TenantSlowdown>,
    pub jain: f64,
}

/// A problem that cannot be scheduled, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

impl LabProblem {
    /// The site's resources, nests and arms, with no runs yet.
    pub fn from_site(site: &Site) -> Result<LabProblem, ModelError> {
        let mut nests: Vec<Nest> = Vec::new();
        let mut resources: Vec<Resource> = Vec::new();
        let mut storage = None;
        for inst in &site.instruments {
            let r = resources.len();
            let nest = nests.len();
            // One nest per instrument: its capacity says how many plates it holds.
            nests
                .push(Nest { id: inst.nest_ids().first().cloned().unwrap_or_else(|| inst.id.clone()), owner: Some(r) });
            for extra in inst.nest_ids().iter().skip(1) {
                nests.push(Nest { id: extra.clone(), owner: Some(r) });
            }
            if inst.class == InstrumentClass::PlateHotel && storage.is_none() {
                storage = Some(nest);
            }
            resources.push(Resource {
                id: inst.id.clone(),
                class: inst.class,
                capacity: inst.capacity,
                pipettes: inst.pipettes.iter().map(|p| p.name.clone()).collect(),
                nest: Some(nest),
                temperature_c: inst.temperature_c,
                shaking_rpm: inst.shaking_rpm,
            });
        }
        for loc in &site.locations {
            let r = resources.len();
            nests.push(Nest { id: loc.id.clone(), owner: Some(r) });
            // A transfer station holds one plate; it is a resource nobody runs tasks on.
            resources.push(Resource {
                id: loc.id.clone(),
                class: InstrumentClass::PlateHotel,
                capacity: 1,
                pipettes: Vec::new(),
                nest: Some(nests.len() - 1),
                temperature_c: None,
                shaking_rpm: None,
            });
        }
        for n in 1..=site.site.technicians {
            resources.push(Resource {
                id: format!("technician{n}"),
                class: InstrumentClass::Technician,
                capacity: 1,
                pipettes: Vec::new(),
                nest: None,
                temperature_c: None,
                shaking_rpm: None,
            });
        }
        let Some(storage) = storage else {
            return Err(ModelError("the site has no plate_hotel: plates need storage between tasks".into()));
        };
        let index: BTreeMap<&str, usize> = nests.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let mut arms = Vec::new();
        for a in &site.arms {
            let reach: Vec<usize> = a.reach.iter().filter_map(|n| index.get(n.as_str()).copied()).collect();
            let mut moves = BTreeMap::new();
            for &x in &reach {
                for &y in &reach {
                    if x != y {
                        if let Some(s) = a.move_time(&nests[x].id, &nests[y].id) {
                            moves.insert((x, y), s);
                        }
                    }
                }
            }
            arms.push(Arm { id: a.id.clone(), reach, moves });
        }
        let n = resources.len();
        let mut p = LabProblem {
            nests,
            resources,
            arms,
            storage,
            down: vec![Vec::new(); n],
            reservations: vec![Vec::new(); n],
            runs: Vec::new(),
            pinned: Vec::new(),
            not_before: 0.0,
            anchors: Vec::new(),
            routes: Vec::new(),
        };
        p.routes = p.all_routes();
        Ok(p)
    }

    /// The site part of the problem (resources, nests, arms, windows, reservations) without
    /// runs, pins or anchors.
    pub fn clone_site(&self) -> LabProblem {
        LabProblem {
            nests: self.nests.clone(),
            resources: self.resources.clone(),
            arms: self.arms.clone(),
            storage: self.storage,
            down: self.down.clone(),
            reservations: self.reservations.clone(),
            runs: Vec::new(),
            pinned: Vec::new(),
            not_before: self.not_before,
            anchors: Vec::new(),
            routes: self.routes.clone(),
        }
    }

    /// Dijkstra over nests, edges being arm moves (nests number in the tens).
    fn all_routes(&self) -> Vec<Vec<Option<Vec<Leg>>>> {
        let n = self.nests.len();
        let mut out = vec![vec![None; n]; n];
        for (src, row) in out.iter_mut().enumerate() {
            let mut dist = vec![f64::INFINITY; n];
            let mut prev: Vec<Option<Leg>> = vec![None; n];
            let mut done = vec![false; n];
            dist[src] = 0.0;
            for _ in 0..n {
                let Some(u) =
                    (0..n).filter(|&i| !done[i] && dist[i].is_finite()).min_by(|&a, &b| dist[a].total_cmp(&dist[b]))
                else {
                    break;
                };
                done[u] = true;
                for (ai, arm) in self.arms.iter().enumerate() {
                    for (&(x, y), &s) in &arm.moves {
                        if x == u && dist[u] + s < dist[y] {
                            dist[y] = dist[u] + s;
                            prev[y] = Some(Leg { arm: ai, from: x, to: y, seconds: s });
                        }
                    }
                }
            }
            for (dst, slot) in row.iter_mut().enumerate() {
                if dst == src {
                    *slot = Some(Vec::new());
                } else if dist[dst].is_finite() {
                    let mut legs = Vec::new();
                    let mut cur = dst;
                    while let Some(l) = prev[cur] {
                        legs.push(l);
                        cur = l.from;
                    }
                    legs.reverse();
                    *slot = Some(legs);
                }
            }
        }
        out
    }

    /// The arm moves that carry a plate from one nest to another, if any chain of arms does.
    pub fn route(&self, from: usize, to: usize) -> Option<&[Leg]> {
        self.routes.get(from)?.get(to)?.as_deref()
    }

    /// Adds a compiled plan as a run; well plates become the run's plates.
    pub fn add_plan(
        &mut self,
        id: &str,
        tenant: &str,
        weight: f64,
        release: f64,
        plan: &RunPlan,
    ) -> Result<usize, ModelError> {
        self.add_run(Run::from_plan(id, tenant, weight, release, plan))
    }

    /// Whether any of a run's tasks is pinned (started, or a plate already on its way to it).
    pub fn has_begun(&self, run: usize) -> bool {
        self.pinned.get(run).is_some_and(|p| p.iter().any(Option::is_some))
    }

    /// Adds a run after checking it can be scheduled at all on this site.
    pub fn add_run(&mut self, run: Run) -> Result<usize, ModelError> {
        for (i, t) in run.tasks.iter().enumerate() {
            let what = || format!("run {} task {i} ({})", run.id, t.label);
            if t.after.iter().any(|&a| a >= i) {
                return Err(ModelError(format!(
                    "{}: depends on a later task; tasks must be in topological order",
                    what()
                )));
            }
            if !(t.duration.is_finite() && t.duration >= 0.0) {
                return Err(ModelError(format!("{}: duration must be a non-negative number", what())));
            }
            if let Some(class) = t.class {
                let cands = self.candidates(t);
                if cands.is_empty() {
                    return Err(ModelError(format!("{}: no {class} on this site can run it", what())));
                }
                if !t.plates.is_empty() && class != InstrumentClass::Technician && class != InstrumentClass::RobotArm {
                    let reachable = cands.iter().any(|&r| {
                        self.resources[r].nest.is_some_and(|n| {
                            self.route(self.storage, n).is_some() && self.route(n, self.storage).is_some()
                        })
                    });
                    if !reachable {
                        return Err(ModelError(format!("{}: no arm route between storage and any {class}", what())));
                    }
                }
            }
        }
        for &(f, t, min) in &run.min_lags {
            if f >= run.tasks.len() || t >= run.tasks.len() || t <= f || !(min.is_finite() && min >= 0.0) {
                return Err(ModelError(format!(
                    "run {}: min lag from task {f} to task {t} must go forward and be a non-negative time",
                    run.id
                )));
            }
            if let Some(&(_, _, max)) = run.max_lags.iter().find(|l| l.0 == f && l.1 == t) {
                if min > max {
                    return Err(ModelError(format!(
                        "run {}: task {t} must start at least {min:.0} s and at most {max:.0} s after task {f}",
                        run.id
                    )));
                }
            }
        }
        for &(f, t, max) in &run.max_lags {
            if f >= run.tasks.len() || t >= run.tasks.len() || t <= f {
                return Err(ModelError(format!(
                    "run {}: max lag from task {f} to task {t} does not go forward",
                    run.id
                )));
            }
            // Plates go to storage and back between the two tasks: that much time is unavoidable.
            let min_gap = self.min_transfer(&run, f, t);
            if min_gap > max + 1e-9 {
                return Err(ModelError(format!(
                    "run {}: task {t} must start within {max:.0} s of task {f}, but moving its plates between the instruments takes at least {min_gap:.0} s",
                    run.id
                )));
            }
        }
        self.pinned.push(vec![None; run.tasks.len()]);
        self.runs.push(run);
        Ok(self.runs.len() - 1)
    }

    /// Resources that can run a task.
    pub fn candidates(&self, t: &LabTask) -> Vec<usize> {
        match t.class {
            None => Vec::new(),
            Some(InstrumentClass::RobotArm) => Vec::new(),
            Some(c) => self
                .resources
                .iter()
                .enumerate()
                .filter(|(_, r)| r.class == c && t.pipettes.iter().all(|p| r.pipettes.contains(p)))
                .filter(|(_, r)| {
                    let temp_ok =
                        t.settings.temperature_c.is_none_or(|x| r.temperature_c.is_none_or(|g| g.contains(x)));
                    let rpm_ok =
                        t.settings.shake_rpm.is_none_or(|x| x == 0.0 || r.shaking_rpm.is_some_and(|g| g.contains(x)));
                    temp_ok && rpm_ok
                })
                .filter(|(_, r)| c == InstrumentClass::Technician || r.nest.is_some())
                .filter(|(_, r)| t.instruments.is_empty() || t.instruments.contains(&r.id))
                .map(|(i, _)| i)
                .collect(),
        }
    }

    /// Whether a task is done by an arm (lid handling) rather than an instrument.
    pub fn is_arm_task(t: &LabTask) -> bool {
        t.class == Some(InstrumentClass::RobotArm)
    }

    /// Seconds of arm moves at least needed to take a plate from storage to the nest of
    /// resource `r` and back.
    pub fn round_trip(&self, r: usize) -> f64 {
        let Some(n) = self.resources[r].nest else { return 0.0 };
        let leg = |a, b| self.route(a, b).map_or(0.0, |l| l.iter().map(|x| x.seconds).sum::<f64>());
        leg(self.storage, n) + leg(n, self.storage)
    }

    /// Seconds of arm moves at least needed to take a plate from storage to `r`'s nest
    /// (`inward`) or from there home (0 without a nest).
    fn leg_to(&self, r: usize, inward: bool) -> f64 {
        let Some(n) = self.resources[r].nest else { return 0.0 };
        let (a, b) = if inward { (self.storage, n) } else { (n, self.storage) };
        self.route(a, b).map_or(0.0, |l| l.iter().map(|x| x.seconds).sum::<f64>())
    }

    /// The quickest move any arm makes from `r`'s nest (0 without a nest).
    fn shortest_move_away(&self, r: usize) -> f64 {
        let Some(n) = self.resources[r].nest else { return 0.0 };
        self.arms
            .iter()
            .flat_map(|a| a.moves.iter().filter(|m| m.0 .0 == n).map(|m| *m.1))
            .fold(f64::INFINITY, f64::min)
    }

    fn min_transfer(&self, run: &Run, f: usize, t: usize) -> f64 {
        let shares = run.tasks[f].plates.iter().any(|p| run.tasks[t].plates.contains(p));
        if !shares {
            return 0.0;
        }
        let best_out =
            self.candidates(&run.tasks[f]).iter().map(|&r| self.round_trip(r) / 2.0).fold(f64::INFINITY, f64::min);
        let best_in =
            self.candidates(&run.tasks[t]).iter().map(|&r| self.round_trip(r) / 2.0).fold(f64::INFINITY, f64::min);
        let x = best_out + best_in;
        if x.is_finite() {
            x
        } else {
            0.0
        }
    }

    /// Lower bounds on the makespan, each with its name; the best is the largest.
    pub fn lower_bounds(&self) -> Vec<(&'static str, f64)> {
        let mut cp: f64 = 0.0;
        let mut load: BTreeMap<InstrumentClass, f64> = BTreeMap::new();
        let mut arm_work = 0.0;
        let mut min_release = f64::INFINITY;
        for run in &self.runs {
            min_release = min_release.min(run.release);
            // A plate comes from storage before its first task and goes home after its last;
            // between two tasks it may stay on the instrument, and work that does not need it
            // waits only for the task's end (counting every task's round trip made the bound
            // exceed a plan's makespan when a plateless wait followed a task).
            let before = ancestors(run);
            let users = |p: usize| (0..run.tasks.len()).filter(move |&j| run.tasks[j].plates.contains(&p));
            // First (last) in time whatever the plan: every other task of the plate comes after
            // (before) it.
            let first_use = |p: usize, i: usize| users(p).all(|j| j == i || before[j].contains(&i));
            let last_use = |p: usize, i: usize| users(p).all(|j| j == i || before[i].contains(&j));
            let mut finish = vec![0.0f64; run.tasks.len()];
            let mut done = run.release;
            for (i, t) in run.tasks.iter().enumerate() {
                let cands = self.candidates(t);
                let leg = |inward: bool| cands.iter().map(|&r| self.leg_to(r, inward)).fold(f64::INFINITY, f64::min);
                let fin = |x: f64| if x.is_finite() { x } else { 0.0 };
                let brought = t.plates.iter().any(|&p| first_use(p, i));
                let taken_home = t.plates.iter().any(|&p| last_use(p, i));
                let inward = if brought { fin(leg(true)) } else { 0.0 };
                let outward = if taken_home { fin(leg(false)) } else { 0.0 };
                let start = t.after.iter().map(|&a| finish[a]).fold(run.release, f64::max);
                finish[i] = start + inward + t.duration;
                done = done.max(finish[i] + outward);
                if let Some(c) = t.class {
                    *load.entry(c).or_insert(0.0) += self.held(t, &cands);
                }
                // Every plate is brought in and taken home for each task at most once.
                let trip = cands.iter().map(|&r| self.round_trip(r)).fold(f64::INFINITY, f64::min);
                if !t.plates.is_empty() && trip.is_finite() {
                    arm_work += trip * t.plates.len() as f64;
                }
            }
            cp = cp.max(done);
        }
        if self.runs.is_empty() {
            return vec![("empty", 0.0)];
        }
        let mut out = vec![("critical path", cp)];
        let cap: BTreeMap<InstrumentClass, f64> = self.resources.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.class).or_insert(0.0) += f64::from(r.capacity);
            m
        });
        let busiest = load.iter().map(|(c, l)| l / cap.get(c).copied().unwrap_or(1.0)).fold(0.0, f64::max);
        out.push(("resource load", min_release + busiest));
        if let Some((_, per_unit)) = self.binding_set(&self.eligible_loads()) {
            out.push(("eligible-set load", min_release + per_unit));
        }
        if !self.arms.is_empty() {
            out.push(("arm moves", min_release + arm_work / self.arms.len() as f64));
        }
        out.push(("one-machine preemptive (Jackson)", self.jackson_bound()));
        out
    }

    /// The set of instruments whose eligible work per unit of capacity is largest: every task
    /// that only instruments of a set S can run must be run on S, so its load over S's capacity
    /// bounds the makespan from below. Which instances can run a task (pipettes, set-point
    /// ranges, read modes, labware) is counted, not only its class: when two of three liquid
    /// handlers carry the only pipette a task needs, the bound divides by two. The sets tried are
    /// every task's own set and every union of two; returns the set (resource indices) and its
    /// load per unit.
    fn binding_set(&self, by_set: &BTreeMap<Vec<usize>, f64>) -> Option<(Vec<usize>, f64)> {
        let own: Vec<&Vec<usize>> = by_set.keys().collect();
        let mut tried: std::collections::BTreeSet<Vec<usize>> = own.iter().map(|s| (*s).clone()).collect();
        for (i, a) in own.iter().enumerate() {
            for b in &own[i + 1..] {
                let mut u: Vec<usize> = a.iter().chain(b.iter()).copied().collect();
                u.sort_unstable();
                u.dedup();
                tried.insert(u);
            }
        }
        tried
            .into_iter()
            .filter_map(|set| {
                let capacity: f64 = set.iter().map(|&r| f64::from(self.resources[r].capacity)).sum();
                let load: f64 = by_set
                    .iter()
                    .filter(|(eligible, _)| eligible.iter().all(|r| set.binary_search(r).is_ok()))
                    .map(|(_, l)| l)
                    .sum();
                (capacity > 0.0).then(|| (set, load / capacity))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The instruments of the tightest eligible-set bound (see [`LabProblem::lower_bounds`]) and
    /// that bound: the set that limits the lab, which may be part of a class.
    pub fn bottleneck_set(&self) -> Option<(Vec<String>, f64)> {
        let min_release = self.runs.iter().map(|r| r.release).fold(f64::INFINITY, f64::min);
        let (set, per_unit) = self.binding_set(&self.eligible_loads())?;
        Some((set.iter().map(|&r| self.resources[r].id.clone()).collect(), min_release + per_unit))
    }

    /// How long a task holds a unit of an instrument: it runs, and the instrument stays taken
    /// until the first move away from its nest has ended.
    fn held(&self, t: &LabTask, cands: &[usize]) -> f64 {
        let away = if t.plates.is_empty() {
            0.0
        } else {
            cands.iter().map(|&r| self.shortest_move_away(r)).fold(f64::INFINITY, f64::min)
        };
        t.duration + if away.is_finite() { away } else { 0.0 }
    }

    /// The time tasks hold units, summed by the set of instruments that can run them.
    fn eligible_loads(&self) -> BTreeMap<Vec<usize>, f64> {
        let mut by_set: BTreeMap<Vec<usize>, f64> = BTreeMap::new();
        for t in self.runs.iter().flat_map(|r| &r.tasks).filter(|t| t.class.is_some()) {
            let cands = self.candidates(t);
            if !cands.is_empty() {
                *by_set.entry(cands.clone()).or_insert(0.0) += self.held(t, &cands);
            }
        }
        by_set
    }

    /// Heads and tails of every task: the earliest it can start (release, predecessors, its
    /// plates' trips) and the least time its run needs after it ends.
    fn heads_tails(&self, run: &Run) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = run.tasks.len();
        let trip: Vec<f64> = run
            .tasks
            .iter()
            .map(|t| {
                if t.plates.is_empty() {
                    return 0.0;
                }
                let x = self.candidates(t).iter().map(|&r| self.round_trip(r)).fold(f64::INFINITY, f64::min);
                if x.is_finite() {
                    x / 2.0
                } else {
                    0.0
                }
            })
            .collect();
        let mut head = vec![0.0f64; n];
        for (i, t) in run.tasks.iter().enumerate() {
            head[i] = t.after.iter().map(|&a| head[a] + run.tasks[a].duration + trip[a]).fold(run.release, f64::max)
                + trip[i];
        }
        let mut tail = vec![0.0f64; n];
        for i in (0..n).rev() {
            for &a in &run.tasks[i].after {
                tail[a] = tail[a].max(trip[a] + trip[i] + run.tasks[i].duration + tail[i]);
            }
        }
        for i in 0..n {
            tail[i] = tail[i].max(trip[i]);
        }
        (head, tail, trip)
    }

    /// Jackson's preemptive schedule on every class served by a single one-at-a-time instrument:
    /// the largest completion-plus-tail is a lower bound on the makespan.
    fn jackson_bound(&self) -> f64 {
        let mut best: f64 = 0.0;
        let classes: std::collections::BTreeSet<InstrumentClass> = self.resources.iter().map(|r| r.class).collect();
        for class in classes {
            let inst: Vec<&Resource> = self.resources.iter().filter(|r| r.class == class).collect();
            if inst.len() != 1 || inst[0].capacity != 1 || class == InstrumentClass::PlateHotel {
                continue;
            }
            // (head, duration, tail)
            let mut jobs: Vec<(f64, f64, f64)> = Vec::new();
            for run in &self.runs {
                let (head, tail, _) = self.heads_tails(run);
                for (i, t) in run.tasks.iter().enumerate() {
                    if t.class == Some(class) {
                        jobs.push((head[i], t.duration, tail[i]));
                    }
                }
            }
            jobs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut ready: Vec<(f64, f64)> = Vec::new(); // (tail, remaining)
            let (mut t, mut i) = (0.0f64, 0);
            while i < jobs.len() || !ready.is_empty() {
                if ready.is_empty() {
                    t = t.max(jobs[i].0);
                }
                while i < jobs.len() && jobs[i].0 <= t {
                    ready.push((jobs[i].2, jobs[i].1));
                    i += 1;
                }
                // Largest tail first; run it until it ends or the next release.
                let k = (0..ready.len()).max_by(|&a, &b| ready[a].0.total_cmp(&ready[b].0)).unwrap_or(0);
                let next = if i < jobs.len() { jobs[i].0 } else { f64::INFINITY };
                let run_for = ready[k].1.min(next - t).max(0.0);
                t += run_for;
                ready[k].1 -= run_for;
                if ready[k].1 <= 1e-9 {
                    best = best.max(t + ready[k].0);
                    ready.swap_remove(k);
                }
            }
        }
        best
    }

    /// How much each tenant waited because others share the lab: per run, turnaround in this
    /// schedule divided by its turnaround alone on the empty lab. Spot runs, sold with no
    /// turnaround, are not counted.
    pub fn fairness(&self, s: &solve::LabSchedule) -> Fairness {
        self.fairness_against(s, &self.solo_turnarounds())
    }

    /// As [`LabProblem::fairness`], with each run's turnaround alone already known.
    pub fn fairness_against(&self, s: &solve::LabSchedule, solo: &[f64]) -> Fairness {
        let mut per_tenant: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let ends = s.completions();
        for (ri, run) in self.runs.iter().enumerate() {
            let shared = ends[ri] - run.release;
            if run.class.promised() && solo[ri] > 0.0 && solo[ri].is_finite() {
                per_tenant.entry(run.tenant.clone()).or_default().push(shared / solo[ri]);
            }
        }
        let tenants: Vec<TenantSlowdown> = per_tenant
            .into_iter()
            .map(|(tenant, xs)| TenantSlowdown {
                mean: xs.iter().sum::<f64>() / xs.len() as f64,
                max: xs.iter().copied().fold(0.0, f64::max),
                runs: xs.len(),
                tenant,
            })
            .collect();
        // Jain's index over each tenant's progress relative to its share: 1 / (mean slowdown ×
        // weight), equal for all tenants under weighted-fair service.
        let weight: BTreeMap<&str, f64> = self.runs.iter().map(|r| (r.tenant.as_str(), r.weight)).collect();
        let x: Vec<f64> =
            tenants.iter().map(|t| 1.0 / (t.mean * weight.get(t.tenant.as_str()).copied().unwrap_or(1.0))).collect();
        Fairness { tenants, jain: jain_index(&x) }
    }

    /// The best lower bound.
    pub fn lower_bound(&self) -> f64 {
        self.lower_bounds().into_iter().map(|b| b.1).fold(0.0, f64::max)
    }
}

/// Jain's fairness index of `x` (each tenant's progress): 1 when all are equal, 1/n when one
/// gets everything; 1 for no tenant. The one place the formula lives (the report's
/// `LabProblem::fairness` and the online queue's search both use it).
pub fn jain_index(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 1.0;
    }
    x.iter().sum::<f64>().powi(2) / (x.len() as f64 * x.iter().map(|v| v * v).sum::<f64>())
}

/// Per task of `run`, the tasks that must finish before it (through `after`, transitively).
fn ancestors(run: &Run) -> Vec<std::collections::BTreeSet<usize>> {
    let mut out: Vec<std::collections::BTreeSet<usize>> = Vec::with_capacity(run.tasks.len());
    for t in &run.tasks {
        let mut mine = std::collections::BTreeSet::new();
        for &a in t.after.iter().filter(|&&a| a < out.len()) {
            mine.insert(a);
            mine.extend(out[a].iter().copied());
        }
        out.push(mine);
    }
    out
}
