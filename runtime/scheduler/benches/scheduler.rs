//! Scheduler benchmarks (`cargo bench -p scheduler --bench scheduler`); figures go to
//! `docs/scheduling.md`. Prints medians and percentiles; asserts nothing about time.

use labware::Site;
use scheduler::lab::generate::generate;
use scheduler::lab::trace::{run_trace, TraceConfig};
use std::time::{Duration, Instant};

fn pct(xs: &mut [Duration], p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let site = Site::sim().expect("shipped site");
    println!("first plan (constructive, default order), median of 7 runs:");
    for tasks in [1_000usize, 10_000, 50_000] {
        // Releases over an hour per 300 tasks: a busy lab with a deep queue.
        let p = generate(&site, tasks, 8, 3600.0 * tasks as f64 / 300.0, 1).expect("generated");
        let order = p.default_order();
        let mut times = Vec::new();
        let mut ok = false;
        for _ in 0..7 {
            let t = Instant::now();
            ok = p.build(&order).is_some();
            times.push(t.elapsed());
        }
        println!(
            "  {tasks:>6} tasks: {} (built: {ok}), peak RSS so far {} KiB",
            ms(pct(&mut times, 0.5)),
            peak_rss_kib().unwrap_or(0)
        );
    }

    for window in [None, Some(scheduler::lab::solve::MAX_WINDOW)] {
        let cfg = TraceConfig {
            seed: 7,
            initial_tasks: 1000,
            spread_s: 3600.0,
            arriving_tasks: 100,
            arrival_gap_s: 300.0,
            failures: 3,
            validate: false,
            window,
        };
        let stats = run_trace(&site, &cfg).expect("the trace runs to the end");
        println!(
            "repair after an event (no background improvement), trace with 1,000 tasks queued, {} run(s) built interleaved:",
            stats.window
        );
        let mut deep: Vec<Duration> = stats.repairs.iter().filter(|r| r.1 >= 900).map(|r| r.0).collect();
        let mut all: Vec<Duration> = stats.repairs.iter().map(|r| r.0).collect();
        println!(
            "  events with >= 900 pending tasks: {}; p50 {}, p99 {}, max {}",
            deep.len(),
            ms(pct(&mut deep, 0.5)),
            ms(pct(&mut deep, 0.99)),
            ms(pct(&mut deep, 1.0))
        );
        println!(
            "  all {} events: p50 {}, p99 {}; announced starts moved by > 60 s: {} in all",
            all.len(),
            ms(pct(&mut all, 0.5)),
            ms(pct(&mut all, 0.99)),
            stats.moved
        );
    }

    let n: u64 = std::env::var("LAB_TRACES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let t = Instant::now();
    let (mut events, mut interleaved) = (0, 0);
    for seed in 0..n {
        // Every other trace repairs with runs built interleaved, whatever the first search chose.
        let mut cfg = TraceConfig::small(seed);
        if seed % 2 == 1 {
            cfg.window = Some(scheduler::lab::solve::MAX_WINDOW);
        }
        match run_trace(&site, &cfg) {
            Ok(s) => {
                events += s.events;
                interleaved += usize::from(s.window > 1);
            }
            Err(e) => {
                println!("  trace FAILED: {e}");
                return;
            }
        }
    }
    println!(
        "validated dynamic traces: {n} seeds ({interleaved} repaired with runs built interleaved), {events} events, 0 violations, 0 deadlocks ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
}
