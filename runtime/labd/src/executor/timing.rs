//! Where each command's time goes, for the runtime benchmarks (`cargo bench -p labd --bench runtime`).

use std::sync::Arc;
use std::time::Duration;

/// Where one command's time went (benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct CommandTiming {
    /// The instrument family, e.g. `LiquidHandler`.
    pub family: &'static str,
    /// Durable journal writes, as the executor waits for them (hand-offs to and from the
    /// store's thread included).
    pub journal: Duration,
    /// The intent's write inside the store: waiting for the connection, the transaction, fsync.
    pub store: Duration,
    /// The exchange with the instrument (driver and wire).
    pub instrument: Duration,
    /// Everything, from the intent to the recorded outcome.
    pub total: Duration,
}

/// Prints p50/p99 of command timings: in total, without the instrument exchange (the
/// executor's own overhead), journaling, and in total per instrument family (benchmarks).
pub fn print_timings(v: &[CommandTiming]) {
    fn pct(mut v: Vec<Duration>, q: f64) -> f64 {
        v.sort();
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
    let line = |what: &str, d: Vec<Duration>| {
        println!("  {what:<34} n={:<6} p50 {:>6.0} µs  p99 {:>6.0} µs", d.len(), pct(d.clone(), 0.5), pct(d, 0.99));
    };
    line("per command, total", v.iter().map(|t| t.total).collect());
    line("per command, executor (no exchange)", v.iter().map(|t| t.total.saturating_sub(t.instrument)).collect());
    line("per command, journaling", v.iter().map(|t| t.journal).collect());
    line("per command, intent in the store", v.iter().map(|t| t.store).collect());
    let mut families: Vec<&str> = v.iter().map(|t| t.family).collect();
    families.sort();
    families.dedup();
    for f in families {
        line(&format!("total, {f}"), v.iter().filter(|t| t.family == f).map(|t| t.total).collect());
    }
}

/// Per command: where its time went.
pub type CommandTimings = Arc<std::sync::Mutex<Vec<CommandTiming>>>;
