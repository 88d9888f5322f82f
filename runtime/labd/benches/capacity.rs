//! Capacity simulation speed (run with `cargo bench -p labd --bench capacity`); figures go to
//! `docs/benchmarks.md`. The shipped workload (`sites/workload.toml`) from 1, 10 and 50 tenants,
//! three times each: median wall time, planning only (virtual time, nothing sleeps), and the
//! peak memory of the process after the 50-tenant runs.

use std::path::PathBuf;
use std::time::Duration;

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let site = match labware::Site::sim() {
        Ok(s) => s,
        Err(e) => return eprintln!("the shipped site: {e}"),
    };
    let workload = match labd::capacity::Workload::load(&root.join("sites/workload.toml"), &site) {
        Ok(w) => w,
        Err(e) => return eprintln!("{e}"),
    };
    for tenants in [1, 10, 50] {
        let mut walls = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let began = std::time::Instant::now();
            match labd::capacity::simulate(&site, &workload, tenants) {
                Ok(r) => last = Some(r),
                Err(e) => return eprintln!("{tenants} tenants: {e}"),
            }
            walls.push(began.elapsed());
        }
        walls.sort();
        let median: Duration = walls[1];
        if let Some(r) = last {
            let tasks: usize = r.bars.len();
            println!(
                "{tenants:>3} tenants: {} runs, {tasks} tasks and moves planned, makespan {:.2} h; wall median {:.2} s (runs: {})",
                r.runs,
                r.makespan_s / 3600.0,
                median.as_secs_f64(),
                walls.iter().map(|w| format!("{:.2}", w.as_secs_f64())).collect::<Vec<_>>().join(", ")
            );
        }
    }
    if let Some(kib) = peak_rss_kib() {
        println!("peak memory: {:.1} MiB", kib as f64 / 1024.0);
    }
}
