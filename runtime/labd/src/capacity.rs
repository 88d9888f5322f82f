//! Capacity planning: what would this site do with this workload from N tenants? Runs the
//! runtime's own scheduler the way the executor drives it — a plan when the first runs arrive,
//! repaired as each later run arrives, with what is under way pinned — in virtual time: the
//! clock jumps from one arrival to the next, nothing sleeps. Simulated instruments take exactly
//! their planned durations, so the repaired plan is what runs. The report is pure data; the
//! caller writes it out.

use crate::executor::ExecutorConfig;
use labware::Site;
use protocols::plan::RunPlan;
use scheduler::lab::replan::{Event, Planner};
use scheduler::lab::solve::{LabBudget, LabSchedule};
use scheduler::lab::{LabProblem, Run};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `workload.toml`: what one tenant submits. Every simulated tenant submits the same, shifted
/// by `tenant_offset_s` per tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// Tenant k's submissions come k × this many device seconds after the first tenant's.
    #[serde(default)]
    pub tenant_offset_s: f64,
    pub submit: Vec<SubmitEntry>,
}

/// Submissions of one protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitEntry {
    /// Protocol file, relative to the workload file.
    pub protocol: PathBuf,
    /// First submission, device seconds after the start.
    #[serde(default)]
    pub at_s: f64,
    /// Then again every this many seconds (with `count` > 1).
    #[serde(default)]
    pub every_s: f64,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

/// The most runs one simulation plans (every tenant's submissions together).
pub const MAX_RUNS: usize = 100_000;

/// A workload with its protocols compiled for the site.
#[derive(Debug, Clone)]
pub struct Workload {
    pub tenant_offset_s: f64,
    /// (file name, plan, price billed per run, arrival times for one tenant).
    pub protocols: Vec<(String, RunPlan, f64, Vec<f64>)>,
    pub currency: String,
}

impl Workload {
    /// Reads a workload file and compiles its protocols against `site`; errors name the file,
    /// the entry and what to change.
    pub fn load(path: &Path, site: &Site) -> Result<Workload, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read workload {}: {e}", path.display()))?;
        let file: WorkloadFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.submit.is_empty() {
            return Err(format!("{}: no [[submit]] entries: add at least one protocol", path.display()));
        }
        if !(file.tenant_offset_s.is_finite() && file.tenant_offset_s >= 0.0) {
            return Err(format!("{}: tenant_offset_s must be a non-negative number of seconds", path.display()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let library = labware::Library::shipped();
        let mut protocols = Vec::new();
        let mut currency = String::new();
        for (i, e) in file.submit.iter().enumerate() {
            let at = format!("{}: [[submit]] #{} ({})", path.display(), i + 1, e.protocol.display());
            if !(e.at_s.is_finite() && e.at_s >= 0.0 && e.every_s.is_finite() && e.every_s >= 0.0) {
                return Err(format!("{at}: at_s and every_s must be non-negative numbers of seconds"));
            }
            if e.count == 0 || e.count > MAX_RUNS as u32 {
                return Err(format!("{at}: count must be between 1 and {MAX_RUNS}"));
            }
            let p = base.join(&e.protocol);
            let source = std::fs::read(&p).map_err(|err| format!("{at}: cannot read {}: {err}", p.display()))?;
            let name = e.protocol.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (_, c) = protocols::compile_bytes(&name, source, protocols::Format::Auto, site, &library);
            let plan = match (c.has_errors(), c.plan) {
                (false, Some(plan)) => plan,
                _ => {
                    let first = c.diagnostics.iter().find(|d| d.is_error()).map(|d| d.message.clone());
                    return Err(format!(
                        "{at}: does not compile for this site: {}; check it with `labctl validate {}`",
                        first.unwrap_or_else(|| "no plan".into()),
                        p.display()
                    ));
                }
            };
            let price = c.quote.as_ref().map_or(0.0, |q| q.total);
            if let Some(q) = &c.quote {
                currency = q.currency.clone();
            }
            let arrivals = (0..e.count).map(|k| e.at_s + k as f64 * e.every_s).collect();
            protocols.push((name, plan, price, arrivals));
        }
        Ok(Workload { tenant_offset_s: file.tenant_offset_s, protocols, currency })
    }
}

/// One resource's share of the time.
#[derive(Debug, Clone, Serialize)]
pub struct Utilisation {
    pub id: String,
    pub class: String,
    pub busy_s: f64,
    /// Busy time ÷ makespan.
    pub fraction: f64,
}

/// One tenant's experience.
#[derive(Debug, Clone, Serialize)]
pub struct TenantLine {
    pub tenant: String,
    pub runs: usize,
    /// Mean of (completion − submission) over its runs, device seconds.
    pub mean_turnaround_s: f64,
    pub max_turnaround_s: f64,
    /// Mean turnaround ÷ turnaround alone on the empty lab.
    pub mean_slowdown: f64,
    pub max_slowdown: f64,
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
    pub utilisation: Vec<Utilisation>,
    pub bottleneck: String,
    pub per_tenant: Vec<TenantLine>,
    /// Jain's index over tenants' weighted progress (1: perfectly even).
    pub jain: f64,
    pub currency: String,
    /// What running the whole site for the makespan costs at the price table's hourly rates,
    /// divided over the runs: the operator's cost per run, which falls as tenants share.
    pub site_cost_per_run: f64,
    /// What tenants are billed per run on average (their device time plus the fee per run).
    pub billed_per_run: f64,
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
}

impl Effort {
    /// What the executor spends (time-bounded, so results vary a little with machine load).
    pub fn executor() -> Effort {
        let c = ExecutorConfig::default();
        Effort {
            plan: LabBudget { time: Some(c.plan_budget), iterations: None },
            repair: LabBudget { time: Some(c.repair_budget), iterations: None },
            seed: c.seed,
        }
    }

    /// Repeatable: budgets counted in candidate plans instead of time, so the same seed gives
    /// the same report on any machine under any load (`labctl simulate --seed`).
    pub fn seeded(seed: u64) -> Effort {
        Effort {
            plan: LabBudget { time: None, iterations: Some(SEEDED_PLAN_ITERATIONS) },
            repair: LabBudget { time: None, iterations: Some(SEEDED_REPAIR_ITERATIONS) },
            seed,
        }
    }
}

/// Candidate plans the first plan of a seeded simulation tries.
pub const SEEDED_PLAN_ITERATIONS: u64 = 300;
/// Candidate orders tried after each repair of a seeded simulation.
pub const SEEDED_REPAIR_ITERATIONS: u64 = 10;

/// Runs the workload from `tenants` tenants on the site in virtual time, planning as the
/// executor does.
pub fn simulate(site: &Site, workload: &Workload, tenants: usize) -> Result<Report, String> {
    simulate_with(site, workload, tenants, Effort::executor())
}

/// [`simulate`] with a given planning effort (an iteration budget and no repair improvement
/// make it deterministic).
pub fn simulate_with(site: &Site, workload: &Workload, tenants: usize, effort: Effort) -> Result<Report, String> {
    let began = std::time::Instant::now();
    let base = LabProblem::from_site(site).map_err(|e| format!("the site cannot be scheduled: {}", e.0))?;
    let per_tenant: usize = workload.protocols.iter().map(|p| p.3.len()).sum();
    if per_tenant.saturating_mul(tenants) > MAX_RUNS {
        return Err(format!(
            "{tenants} tenants × {per_tenant} runs each is more than {MAX_RUNS} runs: simulate fewer tenants or submissions"
        ));
    }
    // Arrivals: (time, tenant, protocol), in time order; ties keep tenant order.
    let mut arrivals = Vec::new();
    for t in 0..tenants {
        for (p, (_, _, _, times)) in workload.protocols.iter().enumerate() {
            for &at in times {
                arrivals.push((at + t as f64 * workload.tenant_offset_s, t, p));
            }
        }
    }
    arrivals.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    if arrivals.is_empty() {
        return Err("the workload submits nothing".into());
    }
    let start = arrivals[0].0;
    let model = |n: usize, (at, t, p): (f64, usize, usize)| -> Result<Run, String> {
        let id = format!("run-{n:05}");
        let plan = workload.protocols[p].1.scoped(&format!("{n:05}"));
        Ok(Run::from_plan(&id, &tenant_name(t), 1.0, at - start, &plan))
    };
    let first: Vec<_> = arrivals.iter().take_while(|a| a.0 == start).copied().collect();
    let mut problem = base.clone();
    for (n, a) in first.iter().enumerate() {
        problem.add_run(model(n, *a)?).map_err(|e| format!("{}: {}", workload.protocols[a.2].0, e.0))?;
    }
    let mut planner = Planner::new(problem, effort.plan, effort.seed).map_err(|e| format!("no plan: {}", e.0))?;
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
        let run = model(n, *a)?;
        planner
            .handle_within(a.0 - start, Event::RunArrived(run), effort.repair)
            .map_err(|e| format!("run {n} ({}) could not be planned: {}", workload.protocols[a.2].0, e.0))?;
    }
    let (p, s) = (&planner.problem, &planner.schedule);
    let violations = scheduler::lab::check::validate(p, s);
    if let Some(v) = violations.first() {
        return Err(format!("the simulated plan breaks a constraint ({} in all): {v:?}", violations.len()));
    }
    let makespan = s.makespan();
    let utilisation = utilisation(p, s, makespan);
    let bottleneck =
        utilisation.iter().max_by(|a, b| a.fraction.total_cmp(&b.fraction)).map(|u| u.id.clone()).unwrap_or_default();
    let fairness = p.fairness(s);
    let mut per_tenant = Vec::new();
    for f in &fairness.tenants {
        let turnarounds: Vec<f64> = p
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tenant == f.tenant)
            .map(|(i, r)| s.completion(i) - r.release)
            .collect();
        per_tenant.push(TenantLine {
            tenant: f.tenant.clone(),
            runs: turnarounds.len(),
            mean_turnaround_s: turnarounds.iter().sum::<f64>() / turnarounds.len().max(1) as f64,
            max_turnaround_s: turnarounds.iter().copied().fold(0.0, f64::max),
            mean_slowdown: f.mean,
            max_slowdown: f.max,
        });
    }
    let runs = p.runs.len();
    let hourly: f64 = site.instruments.iter().map(|i| site.price_per_hour(i.class)).sum();
    let site_cost_per_run = hourly * makespan / 3600.0 / runs as f64;
    let billed: f64 = arrivals.iter().map(|a| workload.protocols[a.2].2).sum();
    Ok(Report {
        tenants,
        runs,
        makespan_s: makespan,
        lower_bound_s: p.lower_bound(),
        utilisation,
        bottleneck,
        per_tenant,
        jain: fairness.jain,
        currency: workload.currency.clone(),
        site_cost_per_run,
        billed_per_run: billed / runs as f64,
        replans,
        seed: (effort.plan.time.is_none() && effort.repair.time.is_none()).then_some(effort.seed),
        wall_s: began.elapsed().as_secs_f64(),
        bars: bars(p, s),
    })
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
        let busy = union_length(lanes.remove(&(false, i)).unwrap_or_default());
        out.push(Utilisation {
            id: r.id.clone(),
            class: r.class.as_str().into(),
            busy_s: busy,
            fraction: busy / makespan.max(1e-9),
        });
    }
    for (i, a) in p.arms.iter().enumerate() {
        let busy = union_length(lanes.remove(&(true, i)).unwrap_or_default());
        out.push(Utilisation {
            id: a.id.clone(),
            class: "robot_arm".into(),
            busy_s: busy,
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

const PALETTE: [&str; 10] =
    ["#457b9d", "#e76f51", "#2a9d8f", "#8e6bbf", "#e9c46a", "#d62f7c", "#6a994e", "#f4a261", "#264653", "#bc6c25"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The schedule as an SVG Gantt chart: one lane per instrument and arm, bars coloured by tenant.
pub fn gantt_svg(r: &Report) -> String {
    let lanes: Vec<&str> = r.utilisation.iter().map(|u| u.id.as_str()).collect();
    let tenants: Vec<&str> = r.per_tenant.iter().map(|t| t.tenant.as_str()).collect();
    let (left, lane_h, width, top) = (110.0, 22.0, 1200.0, 30.0);
    let span = r.makespan_s.max(1.0);
    let x = |t: f64| left + t / span * (width - left - 10.0);
    let height = top + lanes.len() as f64 * lane_h + 30.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"4\" y=\"16\" font-size=\"13\">{} runs from {} tenants: makespan {:.1} h, bottleneck {}</text>\n",
        r.runs,
        r.tenants,
        r.makespan_s / 3600.0,
        escape(&r.bottleneck)
    );
    for (i, lane) in lanes.iter().enumerate() {
        let y = top + i as f64 * lane_h;
        svg.push_str(&format!("<text x=\"4\" y=\"{}\">{}</text>\n", y + 15.0, escape(lane)));
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{width}\" y1=\"{0}\" y2=\"{0}\" stroke=\"#eee\"/>\n",
            y + lane_h
        ));
    }
    for b in &r.bars {
        let Some(i) = lanes.iter().position(|l| *l == b.lane) else { continue };
        let colour = PALETTE[tenants.iter().position(|t| *t == b.tenant).unwrap_or(0) % PALETTE.len()];
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"><title>{} {} {} ({:.0}–{:.0} s)</title></rect>\n",
            x(b.start_s),
            top + i as f64 * lane_h + 3.0,
            (x(b.end_s) - x(b.start_s)).max(0.5),
            lane_h - 6.0,
            escape(&b.tenant),
            escape(&b.run),
            escape(&b.label),
            b.start_s,
            b.end_s
        ));
    }
    // Hour ticks.
    let bottom = top + lanes.len() as f64 * lane_h;
    let step = if span > 48.0 * 3600.0 {
        6.0
    } else if span > 12.0 * 3600.0 {
        2.0
    } else {
        1.0
    };
    let mut h = 0.0;
    while h * 3600.0 <= span {
        svg.push_str(&format!(
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{bottom}\" stroke=\"#ccc\" stroke-dasharray=\"2,3\"/><text x=\"{0:.1}\" y=\"{1}\">{h} h</text>\n",
            x(h * 3600.0),
            bottom + 14.0
        ));
        h += step;
    }
    svg.push_str("</svg>\n");
    svg
}

/// Cost per run against the number of tenants: the curve a shared lab lives on.
pub fn cost_curve_svg(reports: &[Report]) -> String {
    let (w, h, left, bottom) = (640.0, 360.0, 70.0, 50.0);
    let max_t = reports.iter().map(|r| r.tenants).max().unwrap_or(1).max(1) as f64;
    let max_c = reports.iter().map(|r| r.site_cost_per_run.max(r.billed_per_run)).fold(0.0, f64::max).max(1e-9) * 1.1;
    let x = |t: f64| left + t / max_t * (w - left - 20.0);
    let y = |c: f64| (h - bottom) - c / max_c * (h - bottom - 30.0);
    let currency = reports.first().map(|r| r.currency.clone()).unwrap_or_default();
    let (axis_y, right, mid, label_y) = (h - bottom, w - 20.0, w / 2.0, h - 12.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"{left}\" y=\"18\" font-size=\"13\">Cost per run ({currency}) against the number of tenants</text>\n\
         <line x1=\"{left}\" x2=\"{right}\" y1=\"{axis_y}\" y2=\"{axis_y}\" stroke=\"#333\"/><line x1=\"{left}\" x2=\"{left}\" y1=\"30\" y2=\"{axis_y}\" stroke=\"#333\"/>\n\
         <text x=\"{mid}\" y=\"{label_y}\">tenants</text>\n",
        currency = escape(&currency),
    );
    for (name, colour, value) in [
        (
            "site cost per run (all instruments for the makespan)",
            "#d62828",
            (|r: &Report| r.site_cost_per_run) as fn(&Report) -> f64,
        ),
        ("billed per run (device time used)", "#457b9d", |r: &Report| r.billed_per_run),
    ] {
        let points: Vec<String> =
            reports.iter().map(|r| format!("{:.1},{:.1}", x(r.tenants as f64), y(value(r)))).collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        for r in reports {
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{} tenants: {:.2}</title></circle>\n",
                x(r.tenants as f64),
                y(value(r)),
                r.tenants,
                value(r)
            ));
        }
        let ly = if colour == "#d62828" { 40.0 } else { 56.0 };
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            w - 330.0,
            ly - 9.0,
            w - 315.0,
            ly
        ));
    }
    for r in reports {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(r.tenants as f64),
            h - bottom + 15.0,
            r.tenants
        ));
    }
    for k in 0..=4 {
        let c = max_c * k as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{c:.0}</text>\n",
            left - 5.0,
            y(c) + 4.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn hours(s: f64) -> String {
    format!("{:.2} h", s / 3600.0)
}

/// The report as Markdown: the scenario with the most tenants in full, then the curve.
pub fn markdown(site: &str, workload: &str, reports: &[Report]) -> String {
    let Some(r) = reports.iter().max_by_key(|r| r.tenants) else { return String::new() };
    let mut md = format!(
        "# Capacity report\n\nSite `{site}`, workload `{workload}`, simulated in virtual time with the runtime's scheduler.\n\n\
         ## {} tenants, {} runs\n\n\
         - makespan: **{}** (lower bound {}; {:.2}× the bound)\n- bottleneck: **{}**\n- Jain's fairness index: {:.3}\n\
         - site cost per run: {:.2} {cur}; billed per run: {:.2} {cur}\n- planned {} ({} re-plans)\n\n\
         ![Gantt chart](gantt.svg)\n\n### Utilisation\n\n| instrument | class | busy | utilisation |\n|---|---|---:|---:|\n",
        r.tenants,
        r.runs,
        hours(r.makespan_s),
        hours(r.lower_bound_s),
        r.makespan_s / r.lower_bound_s.max(1e-9),
        r.bottleneck,
        r.jain,
        r.site_cost_per_run,
        r.billed_per_run,
        match r.seed {
            Some(seed) => format!("with seed {seed}, budgets counted in candidate plans (repeatable)"),
            None => "as the executor plans, within time budgets (figures vary a little run to run)".into(),
        },
        r.replans,
        cur = r.currency,
    );
    for u in &r.utilisation {
        md.push_str(&format!("| {} | {} | {} | {:.1}% |\n", u.id, u.class, hours(u.busy_s), u.fraction * 100.0));
    }
    md.push_str("\n### Per tenant\n\n| tenant | runs | mean turnaround | max turnaround | mean slowdown | max slowdown |\n|---|---:|---:|---:|---:|---:|\n");
    for t in &r.per_tenant {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} |\n",
            t.tenant,
            t.runs,
            hours(t.mean_turnaround_s),
            hours(t.max_turnaround_s),
            t.mean_slowdown,
            t.max_slowdown
        ));
    }
    md.push_str(&format!(
        "\n## Cost per run against tenants\n\n![cost curve](cost-curve.svg)\n\n| tenants | runs | makespan | bottleneck | its utilisation | max slowdown | site cost per run ({0}) | billed per run ({0}) |\n|---:|---:|---:|---|---:|---:|---:|---:|\n",
        r.currency
    ));
    for r in reports {
        let b = r.utilisation.iter().find(|u| u.id == r.bottleneck).map_or(0.0, |u| u.fraction);
        let worst = r.per_tenant.iter().map(|t| t.max_slowdown).fold(0.0, f64::max);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1}% | {:.2} | {:.2} | {:.2} |\n",
            r.tenants,
            r.runs,
            hours(r.makespan_s),
            r.bottleneck,
            b * 100.0,
            worst,
            r.site_cost_per_run,
            r.billed_per_run
        ));
    }
    md
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
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let site = labware::Site::sim().unwrap();
        let workload = Workload::load(&root.join("sites/workload.toml"), &site).unwrap();
        let effort = Effort {
            plan: LabBudget { time: None, iterations: Some(200) },
            repair: LabBudget { time: None, iterations: Some(0) },
            seed: 7,
        };
        let r = simulate_with(&site, &workload, 30, effort).unwrap();
        assert_eq!(r.runs, 120);
        assert!(r.makespan_s >= r.lower_bound_s);
    }

    #[test]
    fn union_of_overlapping_intervals_counts_once() {
        assert_eq!(union_length(vec![(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]), 4.0);
        assert_eq!(union_length(vec![]), 0.0);
    }
}
