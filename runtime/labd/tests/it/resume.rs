//! Runs survive their labd: a run stopped between its tasks resumes after a restart, without
//! doing again what it did, and measures what a run that was never interrupted measures.

use super::*;

/// Buffer and dye pipetted, a 10-minute wait, a read: the wait is where labd dies.
const PROTOCOL: &str = r#"labwright: 1
name: Resume check
liquids:
  dye: { description: dye, absorbance: { 595 nm: 0.9 OD } }
  buffer: buffer
labware:
  reservoir:
    type: nest_12_reservoir_15ml
    contents:
      A1: { dye: 5 mL }
      A2: { buffer: 5 mL }
  assay: { type: corning_96_wellplate_360ul_flat }
  tips_300: { type: opentrons_96_tiprack_300ul }
steps:
  - transfer: { from: reservoir/A2, to: assay/A1:A6, volume: 100 uL, tips: once }
  - id: dye
    transfer: { from: reservoir/A1, to: assay/A1:A3, volume: 100 uL, tips: once }
  - wait: 10 min
  - id: read
    read_absorbance: { labware: assay, wells: assay/A1:A6, wavelength: 595 nm }
constraints:
  - { from: dye, to: read, max_lag: 60 min }
"#;

/// SIGKILL while the run waits between its liquid handling and its read: after the restart
/// the run resumes (planned again, the finished task skipped), the liquid handler never
/// pipettes twice, and the read gives the values of a crash-free reference run — the simulated
/// plate kept its contents in the data directory, as a real plate would on the bench.
#[test]
fn a_run_killed_between_tasks_resumes_and_measures_what_an_uninterrupted_run_does() {
    let _machine = heavy();
    use labd::store::Store;
    let base = fresh_dir("resume");
    let file = base.join("resume.yaml");
    std::fs::write(&file, PROTOCOL).unwrap();
    let (ref_logs, logs, data) = (base.join("ref-logs"), base.join("logs"), base.join("data"));
    for d in [&ref_logs, &logs, &data] {
        std::fs::create_dir_all(d).unwrap();
    }
    let compiled = protocols::compile(
        &protocols::SourceFile::new("resume.yaml", PROTOCOL.to_string()),
        protocols::Format::Auto,
        &labware::Site::sim().unwrap(),
        &labware::Library::shipped(),
    );
    let plan = compiled.plan.expect("the protocol compiles");
    let wait_task = plan.tasks.iter().position(|t| t.class.is_none()).expect("a wait task");

    // The reference: the same simulators, never interrupted.
    let (ref_short, ref_results, _) = reference_run(&plan, &ref_logs);
    let reference = wire_liquid(&ref_logs).remove(&ref_short).expect("the reference moved liquid");

    let log_dir = format!("sim_log_dir = {:?}\n", logs.display().to_string());
    let (config, _, port) = labd_toml_at(&base, "127.0.0.1:0", 0.01, &log_dir);
    let start = || start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &root()).0;
    let url = format!("http://127.0.0.1:{port}");
    let mut daemon = start();
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    assert_eq!(labctl_at(&url, &admin, &["tenant", "add", "acme"]).0, 0);
    let acme = labctl_at(&url, &admin, &["token", "create", "--tenant", "acme"]).1.trim().to_string();
    let (code, so, se) = labctl_at(&url, &acme, &["submit", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let run = serde_json::from_str::<serde_json::Value>(so.trim()).unwrap()["run"]["id"].as_str().unwrap().to_string();

    // Kill labd once the run is in its wait.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["--url", &url, "--token", &acme, "watch", &run, "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
        let waiting = lines.map_while(Result::ok).find(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["kind"] == "task_started" && v["payload"]["task"] == wait_task
        });
        assert!(waiting.is_some(), "the run never reached its wait");
    }
    // The plate's move home runs beside the wait's start; the kill lands inside the wait (600
    // device-s = 6 s here), after the move (a few device seconds). No event marks a plate move.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    daemon.0.kill().unwrap(); // SIGKILL: no chance to clean up
    daemon.0.wait().unwrap();
    let _ = watch.wait();

    let restarted = std::time::Instant::now();
    let restarted_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    daemon = start();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (state, reason) = loop {
        let (_, so, _) = labctl_at(&url, &acme, &["runs", "--format", "json"]);
        let runs = items(so.trim());
        let r = runs.iter().find(|r| r["id"] == run.as_str()).expect("the run is listed");
        let state = r["state"].as_str().unwrap().to_string();
        if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
            break (state, r["reason"].as_str().unwrap_or_default().to_string());
        }
        assert!(std::time::Instant::now() < until, "the run did not finish after the restart: {r}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    println!("resumed run finished {:.1} s after the restart", restarted.elapsed().as_secs_f64());
    std::process::Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    assert!(daemon.0.wait().unwrap().success());
    assert_eq!(state, "succeeded", "{reason}");

    let store = labd::store::sqlite::SqliteStore::open(&data.join("labd.sqlite")).unwrap();
    let events = store.events(None, &run, 0).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let first_after = events.iter().find(|e| e.at >= restarted_ms && e.kind == "task_started").expect("a task after");
    println!("restart to the resumed run's first task: {} ms", first_after.at - restarted_ms);
    assert_eq!(kinds.iter().filter(|k| **k == "scheduled").count(), 2, "planned, then planned again: {kinds:?}");
    assert!(!kinds.contains(&"constraint_lost"), "60 min of lag were not used up: {kinds:?}");
    let resumed = events.iter().find(|e| e.kind == "state" && e.payload_json.contains("resuming"));
    assert!(resumed.is_some(), "the history says the run resumed: {kinds:?}");
    let lh_task = plan.tasks.iter().position(|t| t.class == Some(labware::InstrumentClass::LiquidHandler)).unwrap();
    let finished_lh = events
        .iter()
        .filter(|e| e.kind == "task_finished")
        .filter(|e| serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap()["task"] == lh_task)
        .count();
    assert_eq!(finished_lh, 1, "the liquid handling ran once: {kinds:?}");
    let did = wire_liquid(&logs).remove(&short(&run)).expect("the run moved liquid");
    assert_eq!(did, reference, "every liquid movement exactly once, as in the reference");
    let results = store.results(None, &run).unwrap();
    assert_eq!(results.len(), ref_results.len());
    for (a, b) in results.iter().zip(&ref_results) {
        assert_eq!((&a.wells, &a.values), (&b.wells, &b.values), "the read after the restart matches the reference");
    }
    let _ = std::fs::remove_dir_all(&base);
}
