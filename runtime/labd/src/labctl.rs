//! `labctl` commands. Exit codes: 0 success, 1 the input has errors (diagnostics printed),
//! 2 usage or I/O error. A panic would be a bug; it is caught and reported as exit 2, never 101.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use labware::{LabwareDef, Library, Site};
use protocols::quote::fmt_duration;
use protocols::{Compilation, Format, SourceFile};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Exit code: the input has errors.
pub const EXIT_INPUT: i32 = 1;
/// Exit code: usage or I/O error.
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(name = "labctl", version, about = "Labwright: check, compile and quote lab protocols; manage labware")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    conn: crate::client::Conn,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Check a protocol against the site and print every problem found.
    Validate(Input),
    /// Compile a protocol to a device plan (plan JSON on stdout, summary on stderr).
    Compile {
        #[command(flatten)]
        input: Input,
        /// Write the plan here instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "PLAN.json")]
        output: Option<PathBuf>,
    },
    /// Estimate duration, device time and cost of a protocol.
    Quote {
        #[command(flatten)]
        input: Input,
        /// The service class to price it as: standard, priority (planned ahead of standard
        /// work) or spot (idle capacity only, no promise); device time at the site's factor.
        #[arg(long, default_value = "standard")]
        class: String,
    },
    /// Labware definitions.
    #[command(subcommand)]
    Labware(LabwareCmd),
    /// Print the protocol language's JSON Schema (for editors: docs/protocol-language.md).
    Schema,
    /// Capacity report: run a workload from N tenants through the runtime's scheduler on a
    /// site in virtual time (nothing sleeps) and write utilisation, bottleneck, makespan,
    /// turnaround and slowdown per tenant, cost per run, a Gantt chart and the cost curve.
    Simulate {
        /// Site description (lab.toml); defaults to the shipped simulated site.
        #[arg(long, value_name = "FILE")]
        site: Option<PathBuf>,
        /// What one tenant submits (workload.toml; see docs/capacity.md).
        #[arg(long, value_name = "FILE")]
        workload: PathBuf,
        /// Numbers of tenants to simulate, one scenario each (the largest gets the full report).
        #[arg(long, num_args = 1.., default_values_t = vec![1, 2, 5, 10])]
        tenants: Vec<usize>,
        /// Where to write report.md, report.json, gantt.svg and cost-curve.svg.
        #[arg(long, default_value = "capacity-report")]
        out: PathBuf,
        /// Plan repeatably with this seed (budgets counted in candidate plans, not time): the
        /// same seed gives the same report. Without it the planner works as the executor does,
        /// within time budgets, and figures vary a little with the machine's load.
        #[arg(long)]
        seed: Option<u64>,
        /// Disturb the lab with this seed: tasks last 0.8–1.2× their estimates and liquid
        /// handlers fail for 10–40 minutes (one failure per 50 runs), every event re-planned.
        /// Without it every task takes exactly its estimate.
        #[arg(long, value_name = "SEED")]
        disturb: Option<u64>,
        /// Plan every run with the compiler's estimates, not corrected by what tasks took
        /// before (the executor corrects them; this shows what learning changes). Matters
        /// with --disturb or a workload's [durations].
        #[arg(long)]
        no_learning: bool,
        /// Instead of --tenants: find the most tenants whose runs' 90th percentile of
        /// turnaround stays within this many hours, and the price per device-hour that breaks
        /// even at that load.
        #[arg(long, value_name = "HOURS")]
        turnaround_target: Option<f64>,
        /// With --turnaround-target: try at most this many tenants.
        #[arg(long, default_value_t = 200)]
        max_tenants: usize,
    },
    /// Talk to a running labd (submit, runs, watch, results, tenant, token).
    #[command(flatten)]
    Client(crate::client::ClientCmd),
}

#[derive(clap::Args, Debug)]
struct Input {
    /// Protocol file (Labwright YAML/JSON, Autoprotocol JSON or Opentrons JSON).
    file: PathBuf,
    /// Site description (lab.toml); defaults to the shipped simulated site.
    #[arg(long, value_name = "FILE")]
    site: Option<PathBuf>,
    /// Input format (auto: Labwright, Autoprotocol or Opentrons JSON by their content, an
    /// Opentrons Python protocol by its `.py` name or its `run(protocol)`).
    #[arg(long, value_enum, default_value_t = From::Auto)]
    from: From,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutFormat::Text)]
    format: OutFormat,
    #[command(flatten)]
    python: crate::opentrons_python::PythonArgs,
}

#[derive(Subcommand, Debug)]
enum LabwareCmd {
    /// List the shipped labware.
    List {
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
    },
    /// Show one labware definition as Labwright JSON.
    Show { name: String },
    /// Convert Opentrons labware v2 JSON files to Labwright's format.
    Import {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write `<load_name>.json` files here instead of printing them.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum From {
    Auto,
    Labwright,
    Autoprotocol,
    Opentrons,
    /// An Opentrons Python protocol, read through Opentrons' analyzer.
    OpentronsPython,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum OutFormat {
    Text,
    Json,
}

/// Runs `labctl` with the process arguments and returns the exit code.
pub fn main() -> i32 {
    let cli = match crate::parse_args::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(code)) => code,
        // The reader went away (`labctl schedule | head -1`): what it read is all it wanted.
        Ok(Err(e)) if closed_pipe(&e) => 0,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            EXIT_USAGE
        }
        Err(_) => {
            eprintln!("error: labctl hit an internal error (a bug); please report it with the input file");
            EXIT_USAGE
        }
    }
}

/// Whether `e` is a write to a pipe whose reader has gone.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Cmd::Validate(input) => {
            let (src, c) = compile_input(&input)?;
            report(&src, &c, input.format, "validate")?;
            Ok(exit_for(&c))
        }
        Cmd::Compile { input, output } => {
            let (src, c) = compile_input(&input)?;
            report(&src, &c, OutFormat::Text, "compile")?;
            if let Some(plan) = &c.plan {
                let json = plan.to_json();
                match output {
                    Some(path) => std::fs::write(&path, json + "\n")
                        .with_context(|| format!("cannot write {}", path.display()))?,
                    None => {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "{json}")?;
                    }
                }
            }
            Ok(exit_for(&c))
        }
        Cmd::Quote { input, class } => {
            let class = labware::ServiceClass::parse(&class).map_err(|e| anyhow::anyhow!("--class: {e}"))?;
            let (src, c) = compile_input(&input)?;
            if c.has_errors() || input.format == OutFormat::Text {
                report(&src, &c, if c.has_errors() { input.format } else { OutFormat::Text }, "quote")?;
            }
            let site = load_site(input.site.as_deref())?;
            let quoted =
                c.plan.as_ref().filter(|_| c.quote.is_some()).map(|p| protocols::quote::quote_as(p, &site, class));
            if let (Some(q), Some(plan)) = (&quoted, &c.plan) {
                match input.format {
                    OutFormat::Json => out!("{}", serde_json::to_string_pretty(q)?),
                    OutFormat::Text => {
                        out!(
                            "{}: {} tasks, {} commands, {}",
                            plan.protocol,
                            plan.tasks.len(),
                            plan.command_count(),
                            q.class
                        );
                        out!("  {:<34}{}", "duration on an empty lab", fmt_duration(q.duration_s));
                        out!("  {:<34}{}", "plate moves", q.plate_moves);
                        for l in &q.lines {
                            out!(
                                "  {:<34}{:>14.2} h x {:>6.2} = {:>8.2} {}",
                                l.class.as_str(),
                                l.hours,
                                l.rate_per_hour,
                                l.amount,
                                q.currency
                            );
                        }
                        for l in &q.consumables {
                            out!(
                                "  {:<34}{:>11} {:<4} x {:>6.2} = {:>8.2} {}",
                                l.item,
                                fmt_quantity(l.quantity),
                                l.unit,
                                l.price,
                                l.amount,
                                q.currency
                            );
                        }
                        out!("  {:<34}{:>36.2} {}", "per-run fee", q.per_run, q.currency);
                        out!("  {:<34}{:>36.2} {}", "total", q.total, q.currency);
                        if let Some(f) = site.turnaround_target(class) {
                            out!(
                                "  {:<34}within {f}× its time on an empty lab (a server's quote says whether it fits now)",
                                "turnaround sold"
                            );
                        }
                    }
                }
            }
            Ok(exit_for(&c))
        }
        Cmd::Labware(cmd) => labware_cmd(cmd),
        Cmd::Schema => {
            out!("{}", serde_json::to_string_pretty(&protocols::shape::json_schema())?);
            Ok(0)
        }
        Cmd::Simulate { site, workload, tenants, out, seed, disturb, no_learning, turnaround_target, max_tenants } => {
            let target = match turnaround_target {
                Some(h) if h.is_finite() && h > 0.0 && max_tenants >= 1 => Some((h * 3600.0, max_tenants)),
                Some(_) => bail!("--turnaround-target takes a positive number of hours, --max-tenants at least 1"),
                None => None,
            };
            simulate(site.as_deref(), &workload, &tenants, &out, seed, (disturb, !no_learning), target)
        }
        Cmd::Client(cmd) => crate::client::run(cli.conn, cmd),
    }
}

/// A count as a count, a volume to the µL.
fn fmt_quantity(q: f64) -> String {
    if q.fract() == 0.0 {
        format!("{q:.0}")
    } else {
        format!("{q:.3}")
    }
}

fn exit_for(c: &Compilation) -> i32 {
    if c.has_errors() {
        EXIT_INPUT
    } else {
        0
    }
}

fn simulate(
    site_file: Option<&Path>,
    workload_file: &Path,
    tenants: &[usize],
    out: &Path,
    seed: Option<u64>,
    (disturb, learn): (Option<u64>, bool),
    target: Option<(f64, usize)>,
) -> Result<i32> {
    use crate::capacity;
    if tenants.is_empty() || tenants.contains(&0) {
        bail!("--tenants takes numbers of tenants of at least 1, e.g. --tenants 1 5 10 50");
    }
    let site = load_site(site_file)?;
    let workload = capacity::Workload::load(workload_file, &site)?;
    let mut effort = seed.map_or_else(capacity::Effort::executor, capacity::Effort::seeded);
    effort.disturb = disturb;
    effort.learn = learn;
    // With a target, the scenarios are the two either side of it.
    let (scenarios, at_target): (Vec<capacity::Report>, Option<capacity::AtTarget>) = match target {
        Some((target_s, max)) => {
            let a = capacity::tenants_at_target(&site, &workload, effort, target_s, max)?;
            (a.within.iter().chain(&a.beyond).cloned().collect(), Some(a))
        }
        None => {
            let mut v = Vec::new();
            for &n in tenants {
                v.push(capacity::simulate_with(&site, &workload, n, effort)?);
            }
            (v, None)
        }
    };
    let mut reports = Vec::new();
    for r in scenarios {
        let n = r.tenants;
        eprintln!(
            "{n:>4} tenants: {} runs, makespan {:.2} h, bottleneck {}, Jain {:.3}, promises kept {:.1}%, p90 turnaround {:.2} h, site cost per run {:.2} {cur} + consumables {:.2} {cur} + storage {:.2} {cur}, break-even {:.2} {cur} per device-hour ({:.2} s)",
            r.runs,
            r.makespan_s / 3600.0,
            r.bottleneck,
            r.jain,
            100.0 * r.promises_kept as f64 / r.promised.max(1) as f64,
            r.turnaround_p90_s / 3600.0,
            r.site_cost_per_run,
            r.consumables_per_run,
            r.storage_per_run,
            r.break_even_per_device_hour,
            r.wall_s,
            cur = r.currency,
        );
        for c in r.per_class.iter().filter(|_| r.per_class.len() > 1) {
            eprintln!(
                "      {:<8} {} runs, {:.2} device-h, {:.1}% of {}, revenue {:.2} {cur}, mean slowdown {:.2}, promises kept {} of {}",
                c.class.as_str(),
                c.runs,
                c.device_s / 3600.0,
                100.0 * c.bottleneck_share,
                r.bottleneck,
                c.revenue,
                c.mean_slowdown,
                c.promises_kept,
                c.promised,
                cur = r.currency,
            );
        }
        reports.push(r);
    }
    if let Some(a) = &at_target {
        match &a.within {
            // The answer asked for: on stdout, beside where the report is.
            Some(r) => out!(
                "at most {} tenants keep the 90th percentile of turnaround within {:.2} h ({:.2} h); break-even at that load: {:.2} {cur} per device-hour, charged {:.2}",
                a.tenants,
                a.target_s / 3600.0,
                r.turnaround_p90_s / 3600.0,
                r.break_even_per_device_hour,
                r.charged_per_device_hour,
                cur = r.currency,
            ),
            None => out!("not even one tenant keeps the 90th percentile of turnaround within {:.2} h", a.target_s / 3600.0),
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let Some(biggest) = reports.iter().max_by_key(|r| r.tenants) else { bail!("nothing simulated") };
    let site_name = site_file.map_or("shipped simulated site".to_string(), |p| p.display().to_string());
    let mut md = capacity::markdown(&site_name, &workload_file.display().to_string(), &reports);
    if let Some(a) = &at_target {
        md.push_str(&capacity::target_markdown(a));
    }
    let files = [
        ("report.md", md),
        ("report.json", serde_json::to_string_pretty(&reports).context("report as JSON")?),
        ("gantt.svg", capacity::gantt_svg(biggest)),
        ("cost-curve.svg", capacity::cost_curve_svg(&reports)),
    ];
    for (name, text) in files {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    out!("capacity report: {}", out.join("report.md").display());
    Ok(0)
}

fn load_site(path: Option<&Path>) -> Result<Site> {
    match path {
        None => Site::sim().map_err(|e| anyhow::anyhow!("the shipped site is invalid (a bug): {e}")),
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read site file {}", p.display()))?;
            Site::from_toml(&text).map_err(|e| anyhow::anyhow!("site file {}: {e}", p.display()))
        }
    }
}

fn compile_input(input: &Input) -> Result<(SourceFile, Compilation)> {
    let site = load_site(input.site.as_deref())?;
    let forced = input.from == From::OpentronsPython;
    let auto = input.from == From::Auto;
    let read = if forced || auto {
        crate::opentrons_python::read(&input.file, forced, &input.python)?
    } else {
        let bytes = std::fs::read(&input.file).with_context(|| format!("cannot read {}", input.file.display()))?;
        crate::opentrons_python::Read::Source { name: input.file.display().to_string(), bytes, analyzed: false }
    };
    let (name, bytes, analyzed) = match read {
        crate::opentrons_python::Read::Source { name, bytes, analyzed } => (name, bytes, analyzed),
        crate::opentrons_python::Read::Refused { python, diagnostics } => {
            let c = Compilation { format: Format::Opentrons, plan: None, quote: None, diagnostics, tracked: None };
            return Ok((python, c));
        }
    };
    let format = match input.from {
        _ if analyzed => Format::Opentrons,
        From::Auto | From::OpentronsPython => Format::Auto,
        From::Labwright => Format::Labwright,
        From::Autoprotocol => Format::Autoprotocol,
        From::Opentrons => Format::Opentrons,
    };
    let (src, mut c) = protocols::compile_bytes(&name, bytes, format, &site, &Library::shipped());
    if analyzed {
        crate::opentrons_python::name_commands(&src.text, &mut c.diagnostics);
    }
    Ok((src, c))
}

fn report(src: &SourceFile, c: &Compilation, format: OutFormat, verb: &str) -> Result<()> {
    match format {
        OutFormat::Json => {
            let diags: Vec<_> = c.diagnostics.iter().map(|d| d.to_json(src)).collect();
            let summary = c.plan.as_ref().map(
                |p| serde_json::json!({"protocol": p.protocol, "tasks": p.tasks.len(), "commands": p.command_count()}),
            );
            let v = serde_json::json!({
                "file": src.name,
                "format": c.format.as_str(),
                "ok": !c.has_errors(),
                "diagnostics": diags,
                "summary": summary,
            });
            out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        OutFormat::Text => {
            let mut err = std::io::stderr().lock();
            for d in &c.diagnostics {
                let _ = writeln!(err, "{}", d.render(src));
            }
            let errors = c.diagnostics.iter().filter(|d| d.is_error()).count();
            let warnings = c.diagnostics.len() - errors;
            if errors > 0 {
                let _ = writeln!(err, "{verb}: {} has {errors} error(s) and {warnings} warning(s)", src.name);
            } else if let Some(p) = &c.plan {
                let dur = c.quote.as_ref().map(|q| fmt_duration(q.duration_s)).unwrap_or_default();
                let _ = writeln!(
                    err,
                    "{verb}: {} ok ({} protocol \"{}\"): {} tasks, {} commands, about {dur}{}",
                    src.name,
                    c.format.as_str(),
                    p.protocol,
                    p.tasks.len(),
                    p.command_count(),
                    if warnings > 0 { format!(", {warnings} warning(s)") } else { String::new() }
                );
            }
        }
    }
    Ok(())
}

fn labware_cmd(cmd: LabwareCmd) -> Result<i32> {
    match cmd {
        LabwareCmd::List { format } => {
            let lib = Library::shipped();
            match format {
                OutFormat::Json => {
                    let v: Vec<_> = lib
                        .iter()
                        .map(|d| serde_json::json!({"load_name": d.load_name, "display_name": d.display_name, "kind": d.kind, "wells": d.wells.len()}))
                        .collect();
                    out!("{}", serde_json::to_string_pretty(&v)?);
                }
                OutFormat::Text => {
                    for d in lib.iter() {
                        let cap = d.tip.map_or_else(
                            || {
                                d.wells.first().map_or(String::new(), |w| {
                                    format!("{} µL/well", protocols::units::trim(w.max_volume_ul))
                                })
                            },
                            |t| format!("{} µL tips", protocols::units::trim(t.volume_ul)),
                        );
                        out!("{:<52} {:<14} {:>4} wells  {}", d.load_name, d.kind.as_str(), d.wells.len(), cap);
                    }
                }
            }
            Ok(0)
        }
        LabwareCmd::Show { name } => {
            let lib = Library::shipped();
            match lib.get(&name) {
                Some(d) => {
                    out!("{}", d.to_json());
                    Ok(0)
                }
                None => {
                    let s = lib.suggest(&name);
                    if s.is_empty() {
                        bail!("no labware named `{name}`; `labctl labware list` shows them all")
                    }
                    bail!("no labware named `{name}`; did you mean `{}`?", s.join("`, `"))
                }
            }
        }
        LabwareCmd::Import { files, out_dir } => {
            let mut failed = 0;
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
                match labware::opentrons::import(&text) {
                    Ok(def) => write_def(&def, out_dir.as_deref())?,
                    Err(e) => {
                        eprintln!("error: {}: {e}", f.display());
                        failed += 1;
                    }
                }
            }
            Ok(if failed > 0 { EXIT_INPUT } else { 0 })
        }
    }
}

fn write_def(def: &LabwareDef, out_dir: Option<&Path>) -> Result<()> {
    match out_dir {
        None => out!("{}", def.to_json()),
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join(format!("{}.json", def.load_name));
            std::fs::write(&path, def.to_json() + "\n").with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
