//! Capacity planning: what would this site do with this workload from N tenants? Runs the
//! runtime's own scheduler the way the executor drives it — a plan when the first runs arrive,
//! repaired as each later run arrives, with what is under way pinned — in virtual time: the
//! clock jumps from one arrival to the next, nothing sleeps. Simulated instruments take exactly
//! their planned durations, so the repaired plan is what runs; or, disturbed
//! ([`Effort::disturb`]), tasks last up to ±20 % of their estimates and liquid handlers fail
//! as the scheduler's trace simulator models them, and every start, end, overrun and failure
//! is repaired. Each run is promised a completion when it arrives; the report counts the
//! promises kept. The report is pure data; the caller writes it out.

use crate::executor::ExecutorConfig;
use labware::Site;
use scheduler::lab::replan::{Event, Planner};
use scheduler::lab::solve::{LabBudget, LabSchedule};
use scheduler::lab::trace::{drive_learning, Disturbance, NOISE};
use scheduler::lab::{LabProblem, Run};
use scheduler::shop::solve::Rng;
use serde::Serialize;
use std::collections::BTreeMap;

mod learning;
mod render;
mod workload;
pub use learning::DurationLine;
pub use render::{cost_curve_svg, gantt_svg, markdown, target_markdown};
pub use workload::{SubmitEntry, Workload, WorkloadFile, MAX_RUNS};

/// Why a capacity simulation could not be made: the workload file is wrong (fix the file), or
/// the site cannot plan it (fix the site or the protocols).
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error("{0}")]
    Workload(String),
    #[error("{0}")]
    Plan(String),
}

/// One resource's share of the time.
#[derive(Debug, Clone, Serialize)]
pub struct Utilisation {
    pub id: String,
    pub class: String,
    /// Time it holds at least one plate or runs a task.
    pub busy_s: f64,
    /// Plates (or tasks) it can hold at once: an incubator's slots.
    pub slots: u32,
    /// Slot time in use ÷ (slots × makespan): for a one-at-a-time instrument, busy time ÷
    /// makespan; an incubator holding one plate of twelve is 1/12 used, not fully.
    pub fraction: f64,
}

/// One tenant's experience.
#[derive(Debug, Clone, Serialize)]
pub struct TenantLine {
    pub tenant: String,
    /// The workload's kind of tenant it is (`all` without profiles).
    pub profile: String,
    pub runs: usize,
    /// Mean of (completion − submission) over its runs, device seconds.
    pub mean_turnaround_s: f64,
    pub max_turnaround_s: f64,
    /// Mean turnaround ÷ turnaround alone on the empty lab.
    pub mean_slowdown: f64,
    pub max_slowdown: f64,
    /// Runs that finished by the time they were promised when they arrived.
    pub promises_kept: usize,
}

/// What one service class got: its share of the work, what it paid, how it was served.
#[derive(Debug, Clone, Serialize)]
pub struct ClassLine {
    pub class: labware::ServiceClass,
    pub runs: usize,
    /// Device time of its runs' tasks on instruments (not arms), seconds.
    pub device_s: f64,
    /// Of the task time on the bottleneck, the part its runs took.
    pub bottleneck_share: f64,
    /// What its runs are billed in all (device time at the class's factor, fees, consumables).
    pub revenue: f64,
    pub mean_turnaround_s: f64,
    /// Mean turnaround ÷ turnaround alone on the empty lab.
    pub mean_slowdown: f64,
    /// Runs promised a completion (spot: none) and of those, finished by it.
    pub promised: usize,
    pub promises_kept: usize,
    /// Sold with a turnaround (the site's `[prices.turnaround]`): its runs that finished within
    /// it (turnaround ≤ the factor × turnaround alone); `None` when the class has none.
    pub within_turnaround: Option<usize>,
}

/// A bar of the Gantt chart.
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub lane: String,
    pub tenant: String,
    pub run: String,
    pub label: String,
    pub start_s: f64,
    pub end_s: f64,
}

/// What one simulated scenario produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tenants: usize,
    pub runs: usize,
    /// First submission to last plate home, device seconds.
    pub makespan_s: f64,
    /// The scheduler's best lower bound on the makespan of the whole workload.
    pub lower_bound_s: f64,
    /// The instruments whose eligible work bounds the makespan most (all of a class, or the part
    /// of it that can run the work: the liquid handlers carrying a pipette, …).
    pub bound_set: Vec<String>,
    pub utilisation: Vec<Utilisation>,
    pub bottleneck: String,
    pub per_tenant: Vec<TenantLine>,
    /// Jain's index over tenants' weighted progress (1: perfectly even).
    pub jain: f64,
    /// Runs promised a completion when they arrived (every run but spot ones).
    pub promised: usize,
    /// Of those, runs that finished by their promise.
    pub promises_kept: usize,
    /// Per service class submitted, in the order priority, standard, spot.
    pub per_class: Vec<ClassLine>,
    /// The seed of the disturbances (overruns and failures) when simulated with them.
    pub disturbed: Option<u64>,
    /// Whether runs were planned with estimates learned from the tasks finished before.
    pub learned: bool,
    /// The margin the last run was promised with (a fraction of its planned turnaround):
    /// wider than the site's when tasks spread beyond what the lab learned.
    pub promise_margin: f64,
    /// How far estimates were from what tasks took, per instrument class and kind of work
    /// (empty when every task took its estimate).
    pub durations: Vec<DurationLine>,
    pub currency: String,
    /// What running the whole site for the makespan costs at the price table's hourly rates,
    /// divided over the runs: the operator's cost per run, which falls as tenants share.
    pub site_cost_per_run: f64,
    /// What tenants are billed per run on average (their device time, the fee per run, and
    /// the consumables and reagents their runs use up).
    pub billed_per_run: f64,
    /// Of that, consumables and reagents (what the lab buys for each run).
    pub consumables_per_run: f64,
    /// Storage of the containers runs store, for the workload's `storage_days` (billed apart
    /// from the run, per container-day).
    pub storage_per_run: f64,
    /// Device-hours tenants used (tasks on instruments and plate moves on arms).
    pub device_hours: f64,
    /// What tenants paid per device-hour on average (their device time at the site's rates
    /// and their classes' factors, without fees and consumables).
    pub charged_per_device_hour: f64,
    /// The price per device-hour at which what tenants pay for device time covers the site's
    /// cost (every instrument at its hourly rate for the makespan, as `site_cost_per_run`) at
    /// this load.
    pub break_even_per_device_hour: f64,
    /// The 90th percentile of turnaround of promised runs (standard and priority), seconds.
    pub turnaround_p90_s: f64,
    /// Re-plans: one per arrival time after the first.
    pub replans: usize,
    /// The planner's seed when its budgets were counted, not timed: the same seed gives the
    /// same report. `None`: planned as the executor does, within time budgets.
    pub seed: Option<u64>,
    /// Wall seconds the simulation took (printed, not reported: it differs run to run).
    #[serde(skip)]
    pub wall_s: f64,
    #[serde(skip)]
    pub bars: Vec<Bar>,
}

/// How hard the planner searches.
#[derive(Debug, Clone, Copy)]
pub struct Effort {
    /// The first plan's budget.
    pub plan: LabBudget,
    /// Improvement after each repair.
    pub repair: LabBudget,
    pub seed: u64,
    /// Tasks overrun and underrun their estimates and liquid handlers fail, drawn with this
    /// seed ([`disturbances`]); `None`: every task takes its estimate (times the workload's
    /// `[durations]`).
    pub disturb: Option<u64>,
    /// Plan each arriving run with estimates corrected by the tasks finished so far, as the
    /// executor does (the default); false: always the compiler's estimates.
    pub learn: bool,
}

impl Effort {
    /// What the executor spends (time-bounded, so results vary a little with machine load).
    pub fn executor() -> Effort {
        let c = ExecutorConfig::default();
        Effort {
            plan: LabBudget { time: Some(c.plan_budget), iterations: None },
            repair: LabBudget { time: Some(c.repair_budget), iterations: None },
            seed: c.seed,
            disturb: None,
            learn: true,
        }
    }

    /// Repeatable: budgets counted in candidate plans instead of time, so the same seed gives
    /// the same report on any machine under any load (`labctl simulate --seed`).
    pub fn seeded(seed: u64) -> Effort {
        Effort {
            plan: LabBudget { time: None, iterations: Some(SEEDED_PLAN_ITERATIONS) },
            repair: LabBudget { time: None, iterations: Some(SEEDED_REPAIR_ITERATIONS) },
            seed,
            disturb: None,
            learn: true,
        }
    }

    /// The same effort on a lab whose tasks overrun and instruments fail, drawn from `seed`.
    pub fn disturbed(self, seed: u64) -> Effort {
        Effort { disturb: Some(seed), ..self }
    }
}

/// Runs submitted per liquid-handler failure in a disturbed simulation.
pub const RUNS_PER_FAILURE: usize = 50;

/// A lab's disturbances for a workload: tasks last their estimate × 0.8 to 1.2 (the trace
/// simulator's noise), and one liquid handler in turn fails for 10 to 40 minutes per
/// [`RUNS_PER_FAILURE`] runs submitted, at a time drawn over twice the span of the arrivals.
pub fn disturbances(problem: &LabProblem, runs: usize, span_s: f64, rng: &mut Rng) -> Disturbance {
    let lhs: Vec<usize> = (0..problem.resources.len())
        .filter(|&r| problem.resources[r].class == labware::InstrumentClass::LiquidHandler)
        .collect();
    let window = (2.0 * span_s).max(3600.0) as usize;
    let failures = if lhs.is_empty() {
        Vec::new()
    } else {
        (0..runs.div_ceil(RUNS_PER_FAILURE))
            .map(|_| (rng.below(window) as f64, lhs[rng.below(lhs.len())], 600.0 + rng.below(1800) as f64))
            .collect()
    };
    Disturbance { noise: NOISE, failures, bias: Vec::new() }
}

/// Candidate plans the first plan of a seeded simulation tries.
pub const SEEDED_PLAN_ITERATIONS: u64 = 300;
/// Candidate orders tried after each repair of a seeded simulation.
pub const SEEDED_REPAIR_ITERATIONS: u64 = 10;

/// Runs the workload from `tenants` tenants on the site in virtual time, planning as the
/// executor does.
pub fn simulate(site: &Site, workload: &Workload, tenants: usize) -> Result<Report, CapacityError> {
    simulate_with(site, workload, tenants, Effort::executor())
}

/// [`simulate`] with a given planning effort (an iteration budget and no repair improvement
/// make it deterministic).
pub fn simulate_with(
    site: &Site,
    workload: &Workload,
    tenants: usize,
    effort: Effort,
) -> Result<Report, CapacityError> {
    let began = std::time::Instant::now();
    let base = LabProblem::from_site(site)
        .map_err(|e| CapacityError::Plan(format!("the site cannot be scheduled: {}", e.0)))?;
    // Arrivals: (time, tenant, protocol), in time order; ties keep tenant order. Each tenant
    // draws its random submissions from its own stream of the seed, so tenant t submits the
    // same whatever the number of tenants.
    let mut arrivals = Vec::new();
    for (t, profile) in workload.profiles_of(tenants).into_iter().enumerate() {
        let mut rng = Rng::new(effort.seed ^ (t as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for &p in &workload.profiles[profile].protocols {
            for at in workload.protocols[p].timing.arrivals(&mut rng) {
                arrivals.push((at + t as f64 * workload.tenant_offset_s, t, p));
            }
            if arrivals.len() > MAX_RUNS {
                return Err(CapacityError::Workload(format!(
                    "{tenants} tenants submit more than {MAX_RUNS} runs: simulate fewer tenants or submissions"
                )));
            }
        }
    }
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    if arrivals.is_empty() {
        return Err(CapacityError::Workload("the workload submits nothing".into()));
    }
    let start = arrivals[0].0;
    let model = |n: usize, (at, t, p): (f64, usize, usize)| -> Run {
        let id = format!("run-{n:05}");
        let plan = workload.protocols[p].plan.scoped(&format!("{n:05}"));
        let mut run = Run::from_plan(&id, &tenant_name(t), 1.0, at - start, &plan);
        run.class = workload.protocols[p].class;
        run
    };
    let first: Vec<_> = arrivals.iter().take_while(|a| a.0 == start).copied().collect();
    let mut problem = base.clone();
    for (n, a) in first.iter().enumerate() {
        problem
            .add_run(model(n, *a))
            .map_err(|e| CapacityError::Plan(format!("{}: {}", workload.protocols[a.2].name, e.0)))?;
    }
    let mut planner = Planner::new(problem, effort.plan, effort.seed)
        .map_err(|e| CapacityError::Plan(format!("no plan: {}", e.0)))?;
    // A lab whose tasks do not take their estimates runs event by event, and learns.
    if effort.disturb.is_some() || !workload.durations.is_empty() {
        planner.pin_past = true;
        let later: Vec<(f64, Run)> =
            arrivals.iter().enumerate().skip(first.len()).map(|(n, a)| (a.0 - start, model(n, *a))).collect();
        let mut rng = Rng::new(effort.disturb.unwrap_or(effort.seed));
        let span = arrivals.last().map_or(0.0, |a| a.0 - start);
        let mut lab = match effort.disturb {
            Some(_) => disturbances(&planner.problem, arrivals.len(), span, &mut rng),
            None => Disturbance::default(),
        };
        lab.bias = workload.durations.clone();
        let mut learner = learning::Learner::new(workload, arrivals.iter().map(|a| a.2).collect(), effort.learn);
        let stats = drive_learning(&mut planner, later, &lab, &mut rng, true, effort.repair, &mut learner)
            .map_err(|e| CapacityError::Plan(format!("the disturbed simulation stopped: {e}")))?;
        let mut r = report(site, workload, tenants, effort, &planner, &arrivals, stats.events, began)?;
        r.learned = effort.learn;
        r.durations = learner.report();
        return Ok(r);
    }
    let mut replans = 0;
    let mut last_at = start;
    for (n, a) in arrivals.iter().enumerate().skip(first.len()) {
        if a.0 > last_at {
            replans += 1;
            last_at = a.0;
        }
        // As the executor does: a plate already on its way pins the task it is going to.
        let now = a.0 - start;
        let en_route: Vec<_> = planner.schedule.moves.iter().filter(|m| m.start < now).copied().collect();
        for m in &en_route {
            planner.pin_en_route(m);
        }
        let run = model(n, *a);
        planner.handle_within(a.0 - start, Event::RunArrived(run), effort.repair).map_err(|e| {
            CapacityError::Plan(format!("run {n} ({}) could not be planned: {}", workload.protocols[a.2].name, e.0))
        })?;
    }
    report(site, workload, tenants, effort, &planner, &arrivals, replans, began)
}

/// The report of a simulation that has run to the end.
#[allow(clippy::too_many_arguments)]
fn report(
    site: &Site,
    workload: &Workload,
    tenants: usize,
    effort: Effort,
    planner: &Planner,
    arrivals: &[(f64, usize, usize)],
    replans: usize,
    began: std::time::Instant,
) -> Result<Report, CapacityError> {
    let (p, s) = (&planner.problem, &planner.schedule);
    let violations = scheduler::lab::check::validate(p, s);
    if let Some(v) = violations.first() {
        return Err(CapacityError::Plan(format!(
            "the simulated plan breaks a constraint ({} in all): {v:?}",
            violations.len()
        )));
    }
    let late = planner.late();
    let ends = s.completions();
    let makespan = s.makespan();
    let utilisation = utilisation(p, s, makespan);
    let bottleneck =
        utilisation.iter().max_by(|a, b| a.fraction.total_cmp(&b.fraction)).map(|u| u.id.clone()).unwrap_or_default();
    let fairness = p.fairness(s);
    let mut per_tenant = Vec::new();
    let profiles = workload.profiles_of(tenants);
    let profile_of: std::collections::BTreeMap<String, &str> =
        (0..tenants).map(|t| (tenant_name(t), workload.profiles[profiles[t]].name.as_str())).collect();
    for f in &fairness.tenants {
        let turnarounds: Vec<f64> =
            p.runs.iter().enumerate().filter(|(_, r)| r.tenant == f.tenant).map(|(i, r)| ends[i] - r.release).collect();
        per_tenant.push(TenantLine {
            tenant: f.tenant.clone(),
            profile: profile_of.get(&f.tenant).map_or_else(String::new, |p| p.to_string()),
            runs: turnarounds.len(),
            mean_turnaround_s: turnarounds.iter().sum::<f64>() / turnarounds.len().max(1) as f64,
            max_turnaround_s: turnarounds.iter().copied().fold(0.0, f64::max),
            mean_slowdown: f.mean,
            max_slowdown: f.max,
            promises_kept: (0..p.runs.len())
                .filter(|&i| p.runs[i].tenant == f.tenant && planner.promise(i).is_some() && !late.contains(&i))
                .count(),
        });
    }
    let promised = (0..p.runs.len()).filter(|&i| planner.promise(i).is_some()).count();
    let per_class = per_class(site, p, s, planner, &late, workload, arrivals, &bottleneck);
    let runs = p.runs.len();
    let hourly: f64 = site.instruments.iter().map(|i| site.price_per_hour(i.class)).sum();
    let site_cost_per_run = hourly * makespan / 3600.0 / runs as f64;
    let billed: f64 = arrivals.iter().map(|a| workload.protocols[a.2].price).sum();
    let fee = site.prices.per_run;
    let device_revenue: f64 =
        arrivals.iter().map(|a| workload.protocols[a.2].price - workload.protocols[a.2].consumables - fee).sum();
    let device_hours =
        (s.tasks.iter().flatten().filter(|t| t.resource.is_some()).map(|t| t.end - t.start).sum::<f64>()
            + s.moves.iter().map(|m| m.end - m.start).sum::<f64>())
            / 3600.0;
    let promised_turnarounds: Vec<f64> =
        (0..runs).filter(|&i| p.runs[i].class.promised()).map(|i| ends[i] - p.runs[i].release).collect();
    let consumables: f64 = arrivals.iter().map(|a| workload.protocols[a.2].consumables).sum();
    let storage: f64 = arrivals.iter().map(|a| workload.protocols[a.2].storage).sum();
    Ok(Report {
        tenants,
        runs,
        makespan_s: makespan,
        lower_bound_s: p.lower_bound(),
        bound_set: p.bottleneck_set().map(|b| b.0).unwrap_or_default(),
        utilisation,
        bottleneck,
        per_tenant,
        jain: fairness.jain,
        promised,
        promises_kept: promised - late.len(),
        per_class,
        disturbed: effort.disturb,
        // Set by the simulation that ran event by event, the one that learns.
        learned: false,
        promise_margin: planner.promise_margin(),
        durations: Vec::new(),
        currency: workload.currency.clone(),
        site_cost_per_run,
        billed_per_run: billed / runs as f64,
        device_hours,
        charged_per_device_hour: device_revenue / device_hours.max(1e-9),
        break_even_per_device_hour: hourly * makespan / 3600.0 / device_hours.max(1e-9),
        turnaround_p90_s: percentile(&promised_turnarounds, 0.9),
        // + 0.0: a sum of nothing is −0.0 in Rust, printed "-0.00".
        consumables_per_run: consumables / runs as f64 + 0.0,
        storage_per_run: storage / runs as f64 + 0.0,
        replans,
        seed: (effort.plan.time.is_none() && effort.repair.time.is_none()).then_some(effort.seed),
        wall_s: began.elapsed().as_secs_f64(),
        bars: bars(p, s),
    })
}

/// Per service class: runs, device time, share of the bottleneck, revenue, turnaround and
/// promises. Arrival `n` is run `n` of the problem (runs are added in arrival order).
#[allow(clippy::too_many_arguments)]
fn per_class(
    site: &Site,
    p: &LabProblem,
    s: &LabSchedule,
    planner: &Planner,
    late: &[usize],
    workload: &Workload,
    arrivals: &[(f64, usize, usize)],
    bottleneck: &str,
) -> Vec<ClassLine> {
    // Task time on the bottleneck, all classes together (an incubator holds several plates at
    // once: its tasks overlap, so this is not its busy time).
    let on_bottleneck_total: f64 = s
        .tasks
        .iter()
        .flatten()
        .filter(|t| !t.on_arm && t.resource.is_some_and(|r| p.resources[r].id == bottleneck))
        .map(|t| t.end - t.start)
        .sum();
    let solo = p.solo_turnarounds();
    let ends = s.completions();
    let mut classes: Vec<labware::ServiceClass> = p.runs.iter().map(|r| r.class).collect();
    classes.sort_by_key(|c| c.rank());
    classes.dedup();
    classes
        .into_iter()
        .map(|class| {
            let mine: Vec<usize> = (0..p.runs.len()).filter(|&i| p.runs[i].class == class).collect();
            let (mut device_s, mut on_bottleneck) = (0.0, 0.0);
            for &ri in &mine {
                for slot in s.tasks[ri].iter().filter(|t| !t.on_arm) {
                    let Some(r) = slot.resource else { continue };
                    device_s += slot.end - slot.start;
                    if p.resources[r].id == bottleneck {
                        on_bottleneck += slot.end - slot.start;
                    }
                }
            }
            let turnaround: Vec<f64> = mine.iter().map(|&i| ends[i] - p.runs[i].release).collect();
            let slowdown: Vec<f64> = mine.iter().zip(&turnaround).map(|(&i, t)| t / solo[i].max(1e-9)).collect();
            let n = mine.len().max(1) as f64;
            let promised: Vec<usize> = mine.iter().copied().filter(|&i| planner.promise(i).is_some()).collect();
            ClassLine {
                class,
                runs: mine.len(),
                device_s,
                bottleneck_share: on_bottleneck / on_bottleneck_total.max(1e-9),
                revenue: mine.iter().filter_map(|&i| arrivals.get(i)).map(|a| workload.protocols[a.2].price).sum(),
                mean_turnaround_s: turnaround.iter().sum::<f64>() / n,
                mean_slowdown: slowdown.iter().sum::<f64>() / n,
                promised: promised.len(),
                promises_kept: promised.iter().filter(|i| !late.contains(i)).count(),
                within_turnaround: site
                    .turnaround_target(class)
                    .map(|f| turnaround.iter().zip(&mine).filter(|(t, &i)| **t <= f * solo[i] + 1e-6).count()),
            }
        })
        .collect()
}

/// The `q` quantile (0–1) of `xs`, nearest rank; 0 for none.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The most tenants the site takes at a turnaround target, and the scenarios that showed it.
#[derive(Debug, Clone)]
pub struct AtTarget {
    /// The 90th percentile of turnaround of promised runs may not exceed this, seconds.
    pub target_s: f64,
    /// The most tenants found within it (0: not even one).
    pub tenants: usize,
    /// That scenario, and the next number of tenants tried above it (over the target), if any.
    pub within: Option<Report>,
    pub beyond: Option<Report>,
}

/// The largest number of tenants, up to `max`, whose runs' 90th percentile of turnaround stays
/// within `target_s`: doubling from one tenant until the target breaks, then halving the gap.
/// (Turnaround need not grow monotonically with tenants; this finds a number within the target
/// with the next one tried above it, not the largest of every number.)
pub fn tenants_at_target(
    site: &Site,
    workload: &Workload,
    effort: Effort,
    target_s: f64,
    max: usize,
) -> Result<AtTarget, CapacityError> {
    let within_target = |r: &Report| r.turnaround_p90_s <= target_s;
    let mut best: Option<Report> = None;
    let mut beyond: Option<Report> = None;
    let mut n = 1;
    while n <= max.max(1) {
        let r = simulate_with(site, workload, n, effort)?;
        if !within_target(&r) {
            beyond = Some(r);
            break;
        }
        best = Some(r);
        if n == max {
            break;
        }
        n = (n * 2).min(max);
    }
    // Between the last within and the first beyond.
    while let (Some(lo), Some(hi)) = (&best, &beyond) {
        if hi.tenants - lo.tenants <= 1 {
            break;
        }
        let mid = (lo.tenants + hi.tenants) / 2;
        let r = simulate_with(site, workload, mid, effort)?;
        if within_target(&r) {
            best = Some(r);
        } else {
            beyond = Some(r);
        }
    }
    Ok(AtTarget { target_s, tenants: best.as_ref().map_or(0, |r| r.tenants), within: best, beyond })
}

/// The name a simulated tenant goes by.
pub fn tenant_name(t: usize) -> String {
    format!("tenant-{:02}", t + 1)
}

/// Length of the union of intervals.
fn union_length(mut v: Vec<(f64, f64)>) -> f64 {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut cur): (f64, Option<(f64, f64)>) = (0.0, None);
    for (a, b) in v {
        cur = match cur {
            Some((s, e)) if a <= e => Some((s, e.max(b))),
            Some((s, e)) => {
                total += e - s;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    total + cur.map_or(0.0, |(s, e)| e - s)
}

fn utilisation(p: &LabProblem, s: &LabSchedule, makespan: f64) -> Vec<Utilisation> {
    // Intervals per lane; a lane's slot time is the sum of its intervals (they overlap on an
    // instrument that holds several plates).
    let mut lanes: BTreeMap<(bool, usize), Vec<(f64, f64)>> = BTreeMap::new();
    for slot in s.tasks.iter().flatten() {
        if let Some(r) = slot.resource {
            lanes.entry((slot.on_arm, r)).or_default().push((slot.start, slot.end));
        }
    }
    for m in &s.moves {
        lanes.entry((true, m.arm)).or_default().push((m.start, m.end));
    }
    let mut out = Vec::new();
    for (i, r) in p.resources.iter().enumerate() {
        let intervals = lanes.remove(&(false, i)).unwrap_or_default();
        let slots = r.capacity.max(1);
        let slot_s: f64 = intervals.iter().map(|(a, b)| b - a).sum();
        let busy = union_length(intervals);
        let used = if slots > 1 { slot_s / f64::from(slots) } else { busy };
        out.push(Utilisation {
            id: r.id.clone(),
            class: r.class.as_str().into(),
            busy_s: busy,
            slots,
            fraction: used / makespan.max(1e-9),
        });
    }
    for (i, a) in p.arms.iter().enumerate() {
        let busy = union_length(lanes.remove(&(true, i)).unwrap_or_default());
        out.push(Utilisation {
            id: a.id.clone(),
            class: "robot_arm".into(),
            busy_s: busy,
            slots: 1,
            fraction: busy / makespan.max(1e-9),
        });
    }
    out
}

fn bars(p: &LabProblem, s: &LabSchedule) -> Vec<Bar> {
    let mut out = Vec::new();
    for (ri, tasks) in s.tasks.iter().enumerate() {
        let run = &p.runs[ri];
        for (ti, slot) in tasks.iter().enumerate() {
            let Some(r) = slot.resource else { continue };
            let lane = if slot.on_arm { p.arms[r].id.clone() } else { p.resources[r].id.clone() };
            out.push(Bar {
                lane,
                tenant: run.tenant.clone(),
                run: run.id.clone(),
                label: run.tasks[ti].label.clone(),
                start_s: slot.start,
                end_s: slot.end,
            });
        }
    }
    for m in &s.moves {
        let run = &p.runs[m.run];
        out.push(Bar {
            lane: p.arms[m.arm].id.clone(),
            tenant: run.tenant.clone(),
            run: run.id.clone(),
            label: format!("move {} → {}", p.nests[m.from].id, p.nests[m.to].id),
            start_s: m.start,
            end_s: m.end,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned re-planning with many arrivals, deterministic: the shipped workload from 30
    /// tenants, each arrival repaired in with what has started pinned, checked by the validator
    /// (inside `simulate_with`). Before the fixes in `prebook` and `make_pin` this broke arm
    /// and plate-continuity constraints.
    #[test]
    fn thirty_tenants_replanned_arrival_by_arrival_break_no_constraint() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&root.join("sites/workload.toml"), &site).unwrap();
        let effort = Effort {
            plan: LabBudget { time: None, iterations: Some(200) },
            repair: LabBudget { time: None, iterations: Some(0) },
            seed: 7,
            disturb: None,
            learn: true,
        };
        let r = simulate_with(&site, &workload, 30, effort).unwrap();
        assert_eq!(r.runs, 120);
        assert!(r.makespan_s >= r.lower_bound_s);
    }

    /// Fifty tenants, each arrival repaired with a few candidate orders tried: a repair once
    /// took a pinned task's plates home after another pinned plate had been put down on the
    /// same one-plate instrument (lh3 overbooked at the last arrival), because the moves home
    /// of pinned tasks were booked in run order and another run's took the only arm slot.
    /// Seen first as a time-budgeted `labctl simulate` failing now and then.
    #[test]
    fn fifty_tenants_repaired_with_a_search_break_no_constraint() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&root.join("sites/workload.toml"), &site).unwrap();
        let effort = Effort {
            plan: LabBudget { time: None, iterations: Some(300) },
            repair: LabBudget { time: None, iterations: Some(3) },
            seed: 0,
            disturb: None,
            learn: true,
        };
        let r = simulate_with(&site, &workload, 50, effort).unwrap();
        assert_eq!(r.runs, 200);
    }

    /// Fair online: thirty tenants submitting the same day's work five minutes apart, planned
    /// arrival by arrival as the executor plans, are served evenly (issue 22's target: Jain's
    /// index at least 0.9; first come, first served gave 0.36 at 50 tenants), and no tenant's
    /// runs wait more than twice as long for their size as the median tenant's.
    #[test]
    fn thirty_tenants_planned_online_are_served_evenly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&root.join("sites/workload.toml"), &site).unwrap();
        let r = simulate_with(&site, &workload, 30, Effort::seeded(1)).unwrap();
        assert!(r.jain >= 0.9, "Jain's index {:.3}", r.jain);
        let mut slowdowns: Vec<f64> = r.per_tenant.iter().map(|t| t.mean_slowdown).collect();
        slowdowns.sort_by(f64::total_cmp);
        let (median, worst) = (slowdowns[slowdowns.len() / 2], slowdowns[slowdowns.len() - 1]);
        assert!(worst <= 2.0 * median, "worst tenant {worst:.1}× its runs' length, median {median:.1}×");
        // Every task took its estimate: no promise made at an arrival was broken by a later one.
        assert_eq!(r.promises_kept, r.runs);
    }

    /// Durations from experience in the simulation (issue 22, item 6): on a lab whose reader
    /// takes three times the compiler's estimate and liquid handlers 1.3 times, runs planned
    /// with what the lab has learned end up planned within a few per cent of what their reads
    /// take, and keep more promises than runs planned with the compiler's estimates throughout.
    #[test]
    fn the_simulation_learns_how_long_tasks_really_take() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&root.join("sites/workload-durations.toml"), &site).unwrap();
        let learned = simulate_with(&site, &workload, 10, Effort::seeded(1)).unwrap();
        let fixed = simulate_with(&site, &workload, 10, Effort { learn: false, ..Effort::seeded(1) }).unwrap();
        assert!(learned.learned && !fixed.learned);
        let line = |r: &Report, kind: &str| r.durations.iter().find(|d| d.kind == kind).cloned().unwrap();
        let (reads, reads_fixed) = (line(&learned, "read_absorbance"), line(&fixed, "read_absorbance"));
        assert!((reads.actual_over_estimate - 3.0).abs() < 1e-6, "{reads:?}");
        assert!((line(&learned, "aspirate").actual_over_estimate - 1.3).abs() < 1e-6);
        assert!((line(&learned, "incubate").actual_over_estimate - 1.0).abs() < 1e-6);
        assert!(reads.error_planned_later_half < 0.05, "{reads:?}");
        assert!(reads_fixed.error_planned_later_half > 0.6, "{reads_fixed:?}");
        // Every PCR set-up arrives before the first has finished: the later ones are corrected
        // while they wait, at the arrivals after the lab learned.
        let dispenses = line(&learned, "dispense");
        assert!(dispenses.error_planned_later_half < 0.05, "{dispenses:?}");
        assert!(line(&fixed, "dispense").error_planned_later_half > 0.2);
        assert!(
            learned.promises_kept > fixed.promises_kept,
            "{} against {}",
            learned.promises_kept,
            fixed.promises_kept
        );
        // Factors that are not a plausible speed are refused with where and what to give.
        for (bad, says) in [("plate_reader = 0", "[durations] plate_reader"), ("plate_rider = 2", "plate_rider")] {
            let dir = std::env::temp_dir().join(format!("labwright-durations-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("w.toml");
            let text = format!(
                "[durations]\n{bad}\n\n[[submit]]\nprotocol = \"{}\"\n",
                root.join("protocols/examples/serial-dilution.yaml").display()
            );
            std::fs::write(&file, text).unwrap();
            let err = Workload::load(&file, &site).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    /// Promises under disturbance (issue 22's target): thirty tenants as above, but tasks last
    /// 0.8–1.2× their estimates and liquid handlers fail, every start, end, overrun and failure
    /// re-planned. At least 95 % of runs finish by the completion promised when they arrived
    /// (96.7 % with these seeds). Jain's index falls to 0.87 here (0.98 with other seeds), so
    /// the even service of the undisturbed test is not asserted.
    #[test]
    fn thirty_tenants_disturbed_keep_their_promises() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&root.join("sites/workload.toml"), &site).unwrap();
        let r = simulate_with(&site, &workload, 30, Effort::seeded(1).disturbed(1)).unwrap();
        assert_eq!(r.disturbed, Some(1));
        let kept = r.promises_kept as f64 / r.runs as f64;
        assert!(kept >= 0.95, "{} of {} promises kept", r.promises_kept, r.runs);
    }

    /// The cost per run counts what runs use up (the quote's consumables and reagents, part of
    /// what they are billed) and what they store, for the workload's days of storage.
    #[test]
    fn cost_per_run_counts_consumables_and_storage() {
        let dir = std::env::temp_dir().join(format!("lw-capacity-costs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("store.yaml"),
            "labwright: 1\nname: kept\nliquids:\n  buffer: { reagent: PBS }\nlabware:\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 10 mL } } }\n  plate: { type: corning_96_wellplate_360ul_flat, store: { condition: 4C } }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: res/A1, to: plate/A1:H1, volume: 20 uL, tips: always }\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("w.toml"),
            "storage_days = 30\n[[submit]]\nprotocol = \"store.yaml\"\ncount = 2\nevery_s = 600\n",
        )
        .unwrap();
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&dir.join("w.toml"), &site).unwrap();
        let effort = Effort {
            plan: LabBudget { time: None, iterations: Some(50) },
            repair: LabBudget { time: None, iterations: Some(0) },
            seed: 7,
            disturb: None,
            learn: true,
        };
        let r = simulate_with(&site, &workload, 2, effort).unwrap();
        let p = &site.prices;
        let consumables = p.per_unit["corning_96_wellplate_360ul_flat"]
            + p.per_unit["nest_12_reservoir_15ml"]
            + p.per_unit["opentrons_96_tiprack_300ul"]
            + 10.0 * p.reagents["PBS"];
        assert!((r.consumables_per_run - consumables).abs() < 0.011, "{} vs {consumables}", r.consumables_per_run);
        assert!((r.storage_per_run - 30.0 * p.storage_per_day["4C"]).abs() < 1e-9, "{}", r.storage_per_run);
        assert!(r.billed_per_run > r.consumables_per_run, "the bill includes them, with device time and the fee");
        let md = render::markdown("sim", "w", std::slice::from_ref(&r));
        assert!(
            md.contains(&format!("{:.2} USD in consumables and reagents, 3.00 USD in storage", r.consumables_per_run)),
            "{md}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn union_of_overlapping_intervals_counts_once() {
        assert_eq!(union_length(vec![(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]), 4.0);
        assert_eq!(union_length(vec![]), 0.0);
    }
}
