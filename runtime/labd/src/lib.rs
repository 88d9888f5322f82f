//! The Labwright runtime and its command lines: `labd` ([`daemon`]: `serve` runs the store,
//! the executor, the API, telemetry and the console; `sim` serves a site's simulated
//! instruments; `demo`) and `labctl` ([`labctl`]: validate, compile, quote and simulate
//! protocols; the client commands a scientist, technician or admin uses against a running labd).
//! docs/ARCHITECTURE.md has the map.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

/// `println!` for command output that a closed pipe ends quietly: the write's error returns
/// from the enclosing function (`labctl schedule | head -1` must not panic), and `labctl`'s
/// `main` turns a broken pipe into a quiet exit.
macro_rules! out {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// The command line parsed, or the exit code to end with: 0 after printing `--help` or
/// `--version`, 2 (usage) after printing what is wrong.
pub(crate) fn parse_args<C: clap::Parser>() -> Result<C, i32> {
    C::try_parse().map_err(|e| {
        // Where even stderr is gone there is no one left to tell.
        let _ = e.print();
        if e.use_stderr() {
            2
        } else {
            0
        }
    })
}

pub mod api;
pub mod board;
pub mod capacity;
pub mod client;
pub mod clock;
pub mod console;
pub mod daemon;
pub mod demo;
pub mod executor;
pub mod experience;
#[cfg(test)]
mod fixtures;
pub mod halt;
pub mod health;
pub mod held;
pub mod kitting;
pub mod kitting_tasks;
pub mod lab;
pub mod labctl;
pub mod lineage;
pub mod logging;
pub mod manifest;
pub mod material;
pub mod metrics;
pub mod opentrons_python;
pub mod paging;
mod reasons;
pub mod relay;
pub mod results;
pub mod role;
pub mod secret;
pub mod serve;
pub mod service;
pub mod stock;
pub mod storage;
pub mod store;
pub mod telemetry;

/// Locks a mutex; a panic elsewhere while it was held does not take the daemon down with it
/// (the guarded data are plain values, still consistent field by field).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
