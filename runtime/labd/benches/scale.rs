//! Scale benchmark: 1,000 runs from 50 tenants on a 100-instrument simulated site, carried out
//! by the real executor over the real wire in accelerated time. Reports wall time, planning
//! time, peak memory, and executor overhead per command under that load.
//!
//! `cargo bench -p labd --bench scale` (RUNS=N and TENANTS=N to change the load; SIMS=process
//! runs the simulators in a `labd sim` of their own, SIMS_NICE=N at a lower CPU priority).

use labd::executor::{Executor, ExecutorConfig};
use labd::store::{sqlite::SqliteStore, RunState, Store};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ASSAY: &str = r#"labwright: 1
name: bench assay
liquids:
  lb: LB medium
labware:
  media:
    type: nest_1_reservoir_195ml
    contents:
      A1: { lb: 30 mL }
  plate: { type: corning_96_wellplate_360ul_flat }
  tips_300: { type: opentrons_96_tiprack_300ul }
steps:
  - transfer:
      from: media/A1
      to: plate/A1:D1
      volume: 100 uL
  - incubate: { labware: plate, temperature: 37 °C, duration: 10 min, shaking: 300 rpm }
  - read_absorbance: { labware: plate, wavelength: 600 nm }
"#;

/// A site of `cells` work cells around one plate hotel: a central arm serves the hotel, three
/// liquid handlers and one hand-off nest per cell; each cell's arm serves its hand-off nest,
/// five liquid handlers, three readers and four incubators. 8 cells: 100 instruments.
fn site(cells: usize) -> String {
    let mut s = String::from("[site]\nname = \"scale\"\ntechnicians = 4\n\n");
    let lh = |s: &mut String, id: &str| {
        let _ = write!(
            s,
            "[[instrument]]\nid = \"{id}\"\nclass = \"liquid_handler\"\ndeck_slots = 11\nlabware = [\"well_plate\", \"reservoir\", \"tip_rack\", \"tube_rack\", \"trash\"]\npipettes = [{{ name = \"p300_single\", channels = 1, min_ul = 20.0, max_ul = 300.0, tip_ul = 300.0, flow_ul_per_s = 92.86 }}]\nendpoint = \"sim\"\n\n"
        );
    };
    let _ =
        write!(s, "[[instrument]]\nid = \"hotel1\"\nclass = \"plate_hotel\"\ncapacity = 400\nendpoint = \"sim\"\n\n");
    let mut central = vec!["hotel1".to_string()];
    for i in 0..3 {
        let id = format!("lh0_{i}");
        lh(&mut s, &id);
        central.push(id);
    }
    let mut arms = String::new();
    for c in 1..=cells {
        let mut reach = vec![format!("handoff{c}")];
        let _ = write!(s, "[[location]]\nid = \"handoff{c}\"\n\n");
        for i in 0..5 {
            let id = format!("lh{c}_{i}");
            lh(&mut s, &id);
            reach.push(id);
        }
        for i in 0..3 {
            let id = format!("reader{c}_{i}");
            let _ = write!(s, "[[instrument]]\nid = \"{id}\"\nclass = \"plate_reader\"\nlabware = [\"well_plate\"]\nmodes = [\"absorbance\"]\nabsorbance_nm = [340.0, 750.0]\nendpoint = \"sim:sila\"\n\n");
            reach.push(id);
        }
        for i in 0..4 {
            let id = format!("inc{c}_{i}");
            let _ = write!(s, "[[instrument]]\nid = \"{id}\"\nclass = \"incubator\"\nlabware = [\"well_plate\"]\ncapacity = 12\ntemperature_c = [4.0, 50.0]\nshaking_rpm = [0.0, 1000.0]\nendpoint = \"sim\"\n\n");
            reach.push(id);
        }
        central.push(format!("handoff{c}"));
        let quoted: Vec<String> = reach.iter().map(|r| format!("\"{r}\"")).collect();
        let _ = write!(
            arms,
            "[[arm]]\nid = \"arm{c}\"\nreach = [{}]\nmove_s = 10.0\nendpoint = \"sim\"\n\n",
            quoted.join(", ")
        );
    }
    let quoted: Vec<String> = central.iter().map(|r| format!("\"{r}\"")).collect();
    let _ = write!(s, "[[arm]]\nid = \"arm0\"\nreach = [{}]\nmove_s = 6.0\nendpoint = \"sim\"\n\n", quoted.join(", "));
    s.push_str(&arms);
    s.push_str("[prices]\ncurrency = \"USD\"\nper_run = 5.0\n\n[prices.per_hour]\nliquid_handler = 48.0\nplate_reader = 36.0\nincubator = 4.0\nplate_hotel = 0.5\nrobot_arm = 6.0\n");
    s
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A killed-on-drop `labd sim`.
struct Sims(std::process::Child);

impl Drop for Sims {
    fn drop(&mut self) {
        drop(self.0.kill());
        drop(self.0.wait());
    }
}

/// Starts `labd sim` on the site: each instrument's and arm's endpoint, the bench's, the process.
fn sims_process(
    dir: &std::path::Path,
    site: &str,
    scale: &str,
) -> (std::collections::BTreeMap<String, String>, String, Sims) {
    use std::io::BufRead;
    let file = dir.join("site.toml");
    std::fs::write(&file, site).unwrap();
    // SIMS_NICE=N: the simulators at a lower CPU priority, as instruments on CPUs of their own
    // would not take the executor's.
    let nice = std::env::var("SIMS_NICE").unwrap_or_else(|_| "0".into());
    let mut child = std::process::Command::new("nice")
        .args(["-n", &nice, env!("CARGO_BIN_EXE_labd")])
        .args(["sim", "--format", "json", "--time-scale", scale, "--site"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sim.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let sims = Sims(child);
    let mut endpoints = std::collections::BTreeMap::new();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let at = format!("{}:{}", v["transport"].as_str().unwrap(), v["address"].as_str().unwrap());
        if v["id"] == "bench" {
            std::thread::spawn(move || lines.for_each(drop));
            return (endpoints, v["address"].as_str().unwrap().to_string(), sims);
        }
        endpoints.insert(v["id"].as_str().unwrap().to_string(), at);
    }
    panic!("labd sim stopped before its bench line (see {})", dir.join("sim.log").display());
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let tenants: usize = std::env::var("TENANTS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let site_text = site(8);
    let site = labware::Site::from_toml(&site_text).expect("the generated site is valid");
    let instruments = site.instruments.len();
    let plan = protocols::compile(
        &protocols::SourceFile::new("assay.yaml", ASSAY.to_string()),
        protocols::Format::Auto,
        &site,
        &labware::Library::shipped(),
    )
    .plan
    .expect("the assay compiles");
    let dir = std::env::temp_dir().join(format!("lw-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let scale = devices::TimeScale(1e-4);
        // GROUP_COMMIT=0: every journal write in its own transaction (the baseline).
        let grouped = std::env::var("GROUP_COMMIT").map_or(true, |v| v != "0");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.join("scale.sqlite")).unwrap().with_group_commit(grouped));
        println!("journal: {}", if grouped { "group commit" } else { "one transaction per write" });
        let started = Instant::now();
        // SIMS=process: the simulators in a `labd sim` of their own, as instruments are in a lab
        // (off this machine's executor); otherwise on the executor's own two worker threads.
        let (lab, _sims) = if std::env::var("SIMS").is_ok_and(|v| v == "process") {
            let (endpoints, bench, sims) = sims_process(&dir, &site_text, "1e-4");
            let mut lab = labd::lab::Lab::connect(site.clone(), &endpoints, scale).await.unwrap();
            lab.hands = Some(devices::sim::hands::Hands::at(&bench));
            (Arc::new(lab), Some(sims))
        } else {
            (Arc::new(labd::lab::Lab::simulated(site.clone(), scale).await.unwrap()), None)
        };
        println!("simulators: {}", if _sims.is_some() { "their own process (labd sim)" } else { "in process" });
        println!(
            "site: {instruments} instruments and {} arms, simulators up in {:.2} s",
            site.arms.len(),
            started.elapsed().as_secs_f64()
        );
        let timings = Arc::new(Mutex::new(Vec::new()));
        let config = ExecutorConfig {
            scale,
            timings: Some(timings.clone()),
            plan_budget: Duration::from_secs(2),
            ..ExecutorConfig::default()
        };
        let ex = Executor::new(store.clone(), lab, config);
        let ts: Vec<_> = (0..tenants).map(|i| store.create_tenant(&format!("tenant{i}"), 1.0).unwrap()).collect();
        let t0 = Instant::now();
        for i in 0..runs {
            ex.submit(&ts[i % tenants].id, &format!("k{i}"), "assay", "assay.yaml", &plan).unwrap();
        }
        let submitted = t0.elapsed();
        let t1 = Instant::now();
        let report = ex.run_queued().await.unwrap();
        let wall = t1.elapsed();
        let ok = report.runs.iter().filter(|r| r.1 == RunState::Succeeded).count();
        let failed: Vec<_> = report.runs.iter().filter(|r| r.1 != RunState::Succeeded).take(3).collect();
        let v = std::mem::take(&mut *timings.lock().unwrap());
        println!(
            "{runs} runs from {tenants} tenants: {ok} succeeded (failed e.g. {failed:?}); submitted in {:.2} s; executed in {:.1} s wall; planned makespan {:.0} s device = {:.1} s wall at scale 1e-4",
            submitted.as_secs_f64(),
            wall.as_secs_f64(),
            report.planned_makespan_s,
            report.planned_makespan_s * 1e-4
        );
        println!("{} commands, {} plate moves; peak memory {:.0} MiB", v.len(), report.moves, peak_rss_mib());
        labd::executor::print_timings(&v);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
