//! Compile benchmarks (run with `cargo bench -p labd --bench compile`); figures go to
//! `docs/benchmarks.md`. Medians of repeated runs, with a same-run baseline (`labctl --version`,
//! the cost of starting the process at all) so the figures can be compared across noisy runs.

use labware::{Library, Site};
use protocols::{compile, Format, SourceFile};
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Peak resident set of this process so far, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A protocol of about 10,000 commands: thirteen 384-well plates filled from one reservoir,
/// one aspirate and one dispense per well, one tip per plate.
fn big_protocol() -> String {
    let mut s = String::from(
        "labwright: 1\nname: ten thousand commands\nliquids: { buffer: assay buffer }\nlabware:\n  res:\n    type: nest_1_reservoir_195ml\n    contents: { A1: { buffer: 190 mL } }\n  tips: { type: opentrons_96_tiprack_20ul }\n",
    );
    for p in 0..13 {
        s.push_str(&format!("  p{p}: {{ type: corning_384_wellplate_112ul_flat }}\n"));
    }
    s.push_str("steps:\n");
    for p in 0..13 {
        s.push_str(&format!("  - transfer: {{ from: res/A1, to: p{p}/A1:P24, volume: 10 uL, tips: once }}\n"));
    }
    s
}

fn main() {
    let exe = env!("CARGO_BIN_EXE_labctl");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dilution = format!("{root}/protocols/examples/serial-dilution.yaml");
    let big_path = std::env::temp_dir().join("labwright-bench-10k.yaml");
    let big = big_protocol();
    std::fs::write(&big_path, &big).expect("temp dir writable");
    let site = Site::sim().expect("shipped site");

    // Memory first, so the peak belongs to the 10k compile and not to earlier work.
    let before = peak_rss_kib();
    let lib = Library::shipped();
    let c = compile(&SourceFile::new("10k.yaml", big.clone()), Format::Auto, &site, &lib);
    let after = peak_rss_kib();
    let plan = c.plan.expect("the 10k protocol compiles");
    let commands = plan.command_count();

    let runs = 30;
    let spawn = |args: &[&str]| -> Duration {
        let t = Instant::now();
        let out = Command::new(exe).args(args).output().expect("labctl runs");
        let d = t.elapsed();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        d
    };
    let baseline = median((0..runs).map(|_| spawn(&["--version"])).collect());
    let dilution_proc = median((0..runs).map(|_| spawn(&["compile", &dilution, "-o", "/dev/null"])).collect());
    let big_proc = median(
        (0..runs).map(|_| spawn(&["compile", big_path.to_str().unwrap_or_default(), "-o", "/dev/null"])).collect(),
    );

    let dil_text = std::fs::read_to_string(&dilution).expect("example exists");
    let in_proc = |text: &str| -> Duration {
        median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    let lib = Library::shipped();
                    let c = compile(&SourceFile::new("p.yaml", text.to_string()), Format::Auto, &site, &lib);
                    let d = t.elapsed();
                    assert!(c.plan.is_some());
                    d
                })
                .collect(),
        )
    };
    let dil_in = in_proc(&dil_text);
    let big_in = in_proc(&big);
    let dil_cmds = compile(&SourceFile::new("d", dil_text.clone()), Format::Auto, &site, &Library::shipped())
        .plan
        .map_or(0, |p| p.command_count());

    println!("labctl compile benchmarks (median of {runs} runs)");
    println!("  baseline: labctl --version (process start)      {}", ms(baseline));
    println!("  serial dilution ({dil_cmds} commands), whole process  {}", ms(dilution_proc));
    println!("  serial dilution, in-process                     {}", ms(dil_in));
    println!("  10k protocol ({commands} commands), whole process  {}", ms(big_proc));
    println!("  10k protocol, in-process                        {}", ms(big_in));
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "  10k protocol, peak RSS of the compiling process {} KiB (+{} KiB for the compile)",
            a,
            a.saturating_sub(b)
        );
    }
}
