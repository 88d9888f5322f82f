//! `schedbench`: solve benchmark instances and print one JSON line per instance.
//!
//! `schedbench --format jsplib|fjsp FILE... --time-limit SECS [--seed N] [--iterations N]
//! [--emit-schedule FILE]`. Each line: instance, makespan, lower bound (ours), valid (checked by
//! an independent verifier), seconds to the first plan, seconds in all, iterations.

use scheduler::shop::solve::{solve, verify, Budget};
use scheduler::shop::Instance;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    format: String,
    files: Vec<String>,
    time_limit: Option<f64>,
    iterations: Option<u64>,
    seed: u64,
    emit: Option<String>,
    emit_instance: Option<String>,
    threads: usize,
    fair: bool,
    max_window: usize,
}

const USAGE: &str = "usage: schedbench --format jsplib|fjsp|lab FILE... [--time-limit SECS] [--iterations N] [--seed N] [--threads N] [--emit-schedule FILE] [--emit-instance FILE] [--fair] [--max-window N]\n  --max-window N (lab) interleave at most N runs at a time while building (default 4; 1: whole runs one after another)\n  --fair (lab) after the makespan search, minimise the worst tenant slowdown within 3 % of that makespan\n  --emit-instance FILE (lab) writes the generated instances as JSON, for other solvers (scripts/cpsat_lab.py)\n  --threads N solves N instances at once (each search is single-threaded)\n  lab instances are generated: FILE is SIZE[:SEED[:TENANTS[:RELEASE_SPREAD_HOURS]]], SIZE one of S, M, L, XL (about 50/300/650/2000 tasks) or a number;\n  arm-SIZE: one arm and short plate tasks, all released at once (arm-bound)";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        format: String::new(),
        files: Vec::new(),
        time_limit: None,
        iterations: None,
        seed: 1,
        emit: None,
        emit_instance: None,
        threads: 1,
        fair: false,
        max_window: scheduler::lab::solve::MAX_WINDOW,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match x.as_str() {
            "--format" => a.format = val("--format")?,
            "--time-limit" => {
                a.time_limit = Some(val("--time-limit")?.parse().map_err(|_| "--time-limit takes seconds, e.g. 10")?)
            }
            "--iterations" => {
                a.iterations = Some(val("--iterations")?.parse().map_err(|_| "--iterations takes a whole number")?)
            }
            "--seed" => a.seed = val("--seed")?.parse().map_err(|_| "--seed takes a whole number")?,
            "--emit-schedule" => a.emit = Some(val("--emit-schedule")?),
            "--emit-instance" => a.emit_instance = Some(val("--emit-instance")?),
            "--fair" => a.fair = true,
            "--max-window" => {
                a.max_window = val("--max-window")?
                    .parse()
                    .ok()
                    .filter(|&n: &usize| (1..=64).contains(&n))
                    .ok_or("--max-window takes a number from 1 to 64")?
            }
            "--threads" => {
                a.threads = val("--threads")?
                    .parse()
                    .ok()
                    .filter(|&n: &usize| (1..=256).contains(&n))
                    .ok_or("--threads takes a number from 1 to 256")?
            }
            "-h" | "--help" => return Err(USAGE.into()),
            f if f.starts_with("--") => return Err(format!("unknown option {f}\n{USAGE}")),
            f => a.files.push(f.to_string()),
        }
    }
    if !matches!(a.format.as_str(), "jsplib" | "fjsp" | "lab") {
        return Err(format!("--format must be jsplib, fjsp or lab\n{USAGE}"));
    }
    if a.files.is_empty() {
        return Err(format!("no instance files given\n{USAGE}"));
    }
    if a.time_limit.is_none() && a.iterations.is_none() {
        a.time_limit = Some(10.0);
    }
    if a.time_limit.is_some_and(|t| !(t.is_finite() && t >= 0.0)) {
        return Err("--time-limit must be a non-negative number of seconds".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if args.format == "lab" {
        return lab(&args);
    }
    let mut failed = false;
    let mut emitted = Vec::new();
    let mut instances = Vec::new();
    for f in &args.files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {f}: {e}");
                failed = true;
                continue;
            }
        };
        let name = std::path::Path::new(f).file_stem().and_then(|s| s.to_str()).unwrap_or(f).to_string();
        let inst = match args.format.as_str() {
            "jsplib" => Instance::parse_jsplib(&name, &text),
            _ => Instance::parse_fjsp(&name, &text),
        };
        match inst {
            Ok(i) => instances.push(i),
            Err(e) => {
                eprintln!("error: {f}: {e}");
                failed = true;
            }
        }
    }
    let budget = Budget { time: args.time_limit.map(Duration::from_secs_f64), iterations: args.iterations };
    // Solve `threads` instances at a time; print in the order given.
    let mut results = Vec::with_capacity(instances.len());
    for chunk in instances.chunks(args.threads) {
        let outs: Vec<_> = std::thread::scope(|sc| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|inst| {
                    sc.spawn(move || {
                        let t = std::time::Instant::now();
                        let out = solve(inst, budget, args.seed);
                        (out, t.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        for (inst, out) in chunk.iter().zip(outs) {
            match out {
                Ok(o) => results.push((inst, o)),
                Err(_) => {
                    eprintln!("error: {}: the solver failed (a bug)", inst.name);
                    failed = true;
                }
            }
        }
    }
    for (inst, (out, total)) in results {
        let valid = verify(inst, &out.schedule);
        if let Err(e) = &valid {
            eprintln!("error: {}: invalid schedule: {e}", inst.name);
            failed = true;
        }
        println!(
            "{{\"instance\":\"{}\",\"makespan\":{},\"lower_bound\":{},\"valid\":{},\"initial_makespan\":{},\"seconds_to_first\":{:.6},\"seconds\":{:.3},\"iterations\":{}}}",
            inst.name,
            out.schedule.makespan,
            inst.lower_bound(),
            valid.is_ok(),
            out.initial_makespan,
            out.time_to_first.as_secs_f64(),
            total.as_secs_f64(),
            out.iterations
        );
        let starts: Vec<String> = out.schedule.start.iter().map(|r| format!("{r:?}")).collect();
        let machines: Vec<String> = out.schedule.machine.iter().map(|r| format!("{r:?}")).collect();
        emitted.push(if args.format == "jsplib" {
            format!("{{\"instance\":\"{}\",\"starts\":[{}]}}", inst.name, starts.join(","))
        } else {
            format!(
                "{{\"instance\":\"{}\",\"starts\":[{}],\"machines\":[{}]}}",
                inst.name,
                starts.join(","),
                machines.join(",")
            )
        });
    }
    finish(&args, emitted, failed)
}

/// Generated lab-shaped instances on the simulated site.
fn lab(args: &Args) -> ExitCode {
    use scheduler::lab::{check::validate, generate, solve};
    let site = match labware::Site::sim() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: the shipped site: {e}");
            return ExitCode::from(2);
        }
    };
    let mut failed = false;
    let mut emitted = Vec::new();
    let mut instances: Vec<String> = Vec::new();
    for spec in &args.files {
        let mut parts = spec.split(':');
        let size = parts.next().unwrap_or("");
        let fields = (
            spec_field(parts.next(), args.seed),
            spec_field(parts.next(), 4usize),
            spec_field::<f64>(parts.next(), f64::NAN),
        );
        let (Ok(seed), Ok(tenants), Ok(spread_h)) = fields else {
            eprintln!(
                "error: {spec}: expected SIZE[:SEED[:TENANTS[:RELEASE_SPREAD_HOURS]]] with numbers after the size"
            );
            failed = true;
            continue;
        };
        // NaN: not given; the default spread is an hour per 300 tasks.
        if tenants == 0 || spread_h.is_infinite() || spread_h < 0.0 {
            eprintln!("error: {spec}: tenants must be at least 1 and the spread a number of hours");
            failed = true;
            continue;
        }
        let (arm_bound, size) = match size.strip_prefix("arm-") {
            Some(rest) => (true, rest),
            None => (false, size),
        };
        let Some(tasks) =
            generate::size_tasks(size).or_else(|| size.parse().ok().filter(|&n: &usize| n > 0 && n <= 200_000))
        else {
            eprintln!("error: {spec}: size must be S, M, L, XL or a number of tasks up to 200000");
            failed = true;
            continue;
        };
        // Releases spread over an hour per 300 tasks unless the spec says (hours): a busy lab.
        let spread = if spread_h.is_nan() { 3600.0 * tasks as f64 / 300.0 } else { spread_h * 3600.0 };
        let generated = if arm_bound {
            generate::generate_arm_bound(&site, tasks, seed)
        } else {
            generate::generate(&site, tasks, tenants, spread, seed)
        };
        let p = match generated {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {spec}: {e}");
                failed = true;
                continue;
            }
        };
        let label = format!("lab-{}{size}-{seed}", if arm_bound { "arm-" } else { "" });
        instances.push(export_instance(&p, &label));
        let budget =
            solve::LabBudget { time: args.time_limit.map(Duration::from_secs_f64), iterations: args.iterations };
        let t = std::time::Instant::now();
        let mut fair_json = String::from("null");
        let out = if args.fair {
            scheduler::lab::fair::solve_fair(&p, budget, args.seed, 0.03).map(|f| {
                fair_json = format!(
                    "{{\"makespan_first\":{:.0},\"slowdown_makespan_first\":{:.3},\"slowdown_reference\":{:.3},\"slowdown\":{:.3},\"ratio_to_reference\":{:.3}}}",
                    f.makespan_first,
                    f.slowdown_makespan_first,
                    f.slowdown_reference,
                    f.slowdown,
                    f.slowdown / f.slowdown_reference
                );
                f.outcome
            })
        } else {
            solve::solve_with_window(&p, budget, args.seed, args.max_window)
        };
        let Some(out) = out else {
            eprintln!("error: {spec}: no schedule could be built");
            failed = true;
            continue;
        };
        let total = t.elapsed();
        let violations = validate(&p, &out.schedule);
        if !violations.is_empty() {
            eprintln!("error: {spec}: {} violations, first: {:?}", violations.len(), violations[0]);
            failed = true;
        }
        let ms = out.schedule.makespan();
        let arm_busy: Vec<f64> = (0..p.arms.len())
            .map(|a| {
                out.schedule.moves.iter().filter(|m| m.arm == a).map(|m| m.end - m.start).sum::<f64>() / ms.max(1.0)
            })
            .collect();
        let n_tasks: usize = p.runs.iter().map(|r| r.tasks.len()).sum();
        // Fairness needs one solo schedule per run: skipped above 1,000 runs to keep big runs quick.
        let fair = (p.runs.len() <= 1000).then(|| p.fairness(&out.schedule));
        let fairness = fair.map_or("null".to_string(), |f| {
            let worst = f.tenants.iter().map(|t| t.max).fold(0.0, f64::max);
            format!("{{\"jain\":{:.4},\"max_slowdown\":{:.3}}}", f.jain, worst)
        });
        let bounds: Vec<String> = p.lower_bounds().iter().map(|(n, v)| format!("\"{n}\":{v:.0}")).collect();
        println!(
            "{{\"instance\":\"{label}\",\"runs\":{},\"tasks\":{n_tasks},\"makespan\":{ms:.0},\"lower_bound\":{:.0},\"valid\":{},\"first_makespan\":{:.0},\"seconds_to_first\":{:.6},\"seconds\":{:.3},\"iterations\":{},\"window\":{},\"arm_busy\":{:?},\"fairness\":{fairness},\"fair_search\":{fair_json},\"bounds\":{{{}}}}}",
            p.runs.len(),
            p.lower_bound(),
            violations.is_empty(),
            out.first_makespan,
            out.time_to_first.as_secs_f64(),
            total.as_secs_f64(),
            out.iterations,
            out.window,
            arm_busy.iter().map(|x| (x * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
            bounds.join(",")
        );
        let mut rows = Vec::new();
        for (ri, run) in p.runs.iter().enumerate() {
            for (ti, slot) in out.schedule.tasks[ri].iter().enumerate() {
                let inst = match (slot.resource, slot.on_arm) {
                    (Some(a), true) => p.arms[a].id.clone(),
                    (Some(r), false) => p.resources[r].id.clone(),
                    (None, _) => String::new(),
                };
                rows.push(format!(
                    "{{\"run\":\"{}\",\"task\":{ti},\"instance\":\"{inst}\",\"start\":{:.3},\"end\":{:.3}}}",
                    run.id, slot.start, slot.end
                ));
            }
        }
        for m in &out.schedule.moves {
            rows.push(format!(
                "{{\"run\":\"{}\",\"move\":\"{}\",\"instance\":\"{}\",\"from\":\"{}\",\"to\":\"{}\",\"start\":{:.3},\"end\":{:.3}}}",
                p.runs[m.run].id, p.runs[m.run].plates[m.plate], p.arms[m.arm].id, p.nests[m.from].id, p.nests[m.to].id, m.start, m.end
            ));
        }
        emitted.push(format!("{{\"instance\":\"{label}\",\"tasks\":[{}]}}", rows.join(",")));
    }
    if let Some(path) = &args.emit_instance {
        if !write(path, format!("[{}]\n", instances.join(","))) {
            return ExitCode::from(2);
        }
    }
    finish(args, emitted, failed)
}

/// A lab instance as JSON for other solvers: per task its candidate instruments with the arm legs
/// that bring its plates from storage and take them back, and the stations those legs wait on.
fn export_instance(p: &scheduler::lab::LabProblem, name: &str) -> String {
    let legs = |from: usize, to: usize| -> String {
        let l = p.route(from, to).unwrap_or(&[]);
        let items: Vec<String> = l
            .iter()
            .map(|x| {
                let station = p.nests[x.to]
                    .owner
                    .filter(|&r| x.to != p.storage && p.resources[r].class == labware::InstrumentClass::PlateHotel);
                format!(
                    "{{\"arm\":{},\"seconds\":{},\"station_after\":{}}}",
                    x.arm,
                    x.seconds,
                    station.map_or("null".into(), |r| r.to_string())
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    };
    let mut runs = Vec::new();
    for run in &p.runs {
        let mut tasks = Vec::new();
        for t in &run.tasks {
            let cands: Vec<String> = p
                .candidates(t)
                .iter()
                .map(|&r| {
                    let res = &p.resources[r];
                    let moves = !t.plates.is_empty() && res.class != labware::InstrumentClass::Technician;
                    let (inb, outb) = match (res.nest, moves) {
                        (Some(n), true) => (legs(p.storage, n), legs(n, p.storage)),
                        _ => ("[]".to_string(), "[]".to_string()),
                    };
                    format!("{{\"resource\":{r},\"inbound\":{inb},\"outbound\":{outb}}}")
                })
                .collect();
            tasks.push(format!(
                "{{\"label\":\"{}\",\"duration\":{},\"after\":{:?},\"plates\":{:?},\"settings\":{},\"arm_task\":{},\"candidates\":[{}]}}",
                t.label,
                t.duration,
                t.after,
                t.plates,
                scheduler::lab::solve::settings_key(t),
                scheduler::lab::LabProblem::is_arm_task(t),
                cands.join(",")
            ));
        }
        let lags: Vec<String> = run.max_lags.iter().map(|(f, t, m)| format!("[{f},{t},{m}]")).collect();
        runs.push(format!(
            "{{\"id\":\"{}\",\"tenant\":\"{}\",\"release\":{},\"plates\":{},\"tasks\":[{}],\"max_lags\":[{}]}}",
            run.id,
            run.tenant,
            run.release,
            run.plates.len(),
            tasks.join(","),
            lags.join(",")
        ));
    }
    let res: Vec<String> =
        p.resources.iter().map(|r| format!("{{\"id\":\"{}\",\"capacity\":{}}}", r.id, r.capacity)).collect();
    format!(
        "{{\"instance\":\"{name}\",\"arms\":{},\"resources\":[{}],\"lower_bound\":{},\"runs\":[{}]}}",
        p.arms.len(),
        res.join(","),
        p.lower_bound(),
        runs.join(",")
    )
}

fn write(path: &str, body: String) -> bool {
    match std::fs::write(path, body) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("error: cannot write {path}: {e}");
            false
        }
    }
}

/// Writes the schedules (`--emit-schedule`: one object, or a list for several instances) and
/// picks the exit code: 2 when writing failed, 1 when an instance failed, else 0.
fn finish(args: &Args, mut emitted: Vec<String>, failed: bool) -> ExitCode {
    if let Some(path) = &args.emit {
        let body = if emitted.len() == 1 { emitted.remove(0) } else { format!("[{}]", emitted.join(",")) };
        if !write(path, body + "\n") {
            return ExitCode::from(2);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// An optional `:`-separated number of a lab spec: absent means `default`, present must parse.
fn spec_field<T: std::str::FromStr>(part: Option<&str>, default: T) -> Result<T, ()> {
    match part {
        None => Ok(default),
        Some(p) => p.parse().map_err(|_| ()),
    }
}
