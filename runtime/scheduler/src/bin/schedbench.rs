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
}

const USAGE: &str = "usage: schedbench --format jsplib|fjsp FILE... [--time-limit SECS] [--iterations N] [--seed N] [--emit-schedule FILE]";

fn parse_args() -> Result<Args, String> {
    let mut a =
        Args { format: String::new(), files: Vec::new(), time_limit: None, iterations: None, seed: 1, emit: None };
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
            "-h" | "--help" => return Err(USAGE.into()),
            f if f.starts_with("--") => return Err(format!("unknown option {f}\n{USAGE}")),
            f => a.files.push(f.to_string()),
        }
    }
    if !matches!(a.format.as_str(), "jsplib" | "fjsp") {
        return Err(format!("--format must be jsplib or fjsp\n{USAGE}"));
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
    let mut failed = false;
    let mut emitted = Vec::new();
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
        let inst = match inst {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {f}: {e}");
                failed = true;
                continue;
            }
        };
        let budget = Budget { time: args.time_limit.map(Duration::from_secs_f64), iterations: args.iterations };
        let t = std::time::Instant::now();
        let out = solve(&inst, budget, args.seed);
        let total = t.elapsed();
        let valid = verify(&inst, &out.schedule);
        if let Err(e) = &valid {
            eprintln!("error: {f}: invalid schedule: {e}");
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
    if let Some(path) = &args.emit {
        let body = if emitted.len() == 1 { emitted.remove(0) } else { format!("[{}]", emitted.join(",")) };
        if let Err(e) = std::fs::write(path, body + "\n") {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
