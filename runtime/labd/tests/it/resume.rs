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

/// The crash loop: `labd` is killed with SIGKILL at 20 random moments while tenants' runs of
/// the examples execute (serial dilutions, ELISAs with their manual washes and incubations, a
/// growth curve with 24 incubate-and-read cycles), on simulators that run in their own process
/// and outlive labd as instruments do, and restarted each time. A run's work under way is
/// finished after the restart (commands in doubt settled by the instruments), so at least 95 %
/// of runs succeed; every completed run did on the liquid handlers exactly what a crash-free
/// reference run did and measured the same values; no run did anything twice; the journal
/// never holds two attempts of a command that is not safe to repeat, except one a person told
/// to send again; every intervention was for a command no instrument could settle, and says so.
#[test]
fn crash_loop_twenty_kills_resume_runs_and_repeat_nothing() {
    let _machine = heavy();
    use labd::store::{RunState, Store};
    const SCALE: f64 = 0.0005;
    let base = fresh_dir("crashloop");
    let (ref_logs, logs) = (base.join("ref-logs"), base.join("logs"));
    for d in [&ref_logs, &logs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let protocols = ["serial-dilution.yaml", "elisa.yaml", "growth-curve.yaml"];
    // The crash-free references, in-process, with the same simulators.
    let mut reference = std::collections::BTreeMap::new();
    for p in protocols {
        let dir = ref_logs.join(p);
        std::fs::create_dir_all(&dir).unwrap();
        let (prefix, results, moves) = reference_run(&compile_example(p), &dir);
        let liquid = wire_liquid(&dir).remove(&prefix).expect("the reference moved liquid");
        reference.insert(p, (liquid, results, moves));
    }

    let sims = sim_process(&base, "sites/sim.toml", SCALE, &logs);
    let extra = format!("site = {:?}\nsim_bench = {:?}\n", sims.site.display().to_string(), sims.bench);
    let (config, data, port) = labd_toml_at(&base, "off", SCALE, &extra);
    let start = || start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &root()).0;
    let url = format!("http://127.0.0.1:{port}");
    let ctl = |token: &str, args: &[&str]| labctl_at(&url, token, args);
    let mut daemon = start();
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let mut tokens = Vec::new();
    for name in ["acme", "globex"] {
        assert_eq!(ctl(&admin, &["tenant", "add", name]).0, 0);
        tokens.push(ctl(&admin, &["token", "create", "--tenant", name]).1.trim().to_string());
    }
    let plans: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, protocols::plan::RunPlan>>> =
        Default::default();
    let mut protocol_of = std::collections::BTreeMap::new();
    let mut submit = |i: usize, p: &'static str| {
        let file = root().join("protocols/examples").join(p);
        let args = ["submit", file.to_str().unwrap(), "--key", &format!("k{i}"), "--format", "json"];
        let (code, so, se) = ctl(&tokens[i % 2], &args);
        assert_eq!(code, 0, "{se}");
        let run =
            serde_json::from_str::<serde_json::Value>(so.trim()).unwrap()["run"]["id"].as_str().unwrap().to_string();
        plans.lock().unwrap().insert(run.clone(), compile_example(p));
        protocol_of.insert(run, p);
    };
    // Six runs under way from the start: two tenants, every protocol.
    let opening = [
        "serial-dilution.yaml",
        "elisa.yaml",
        "growth-curve.yaml",
        "serial-dilution.yaml",
        "elisa.yaml",
        "serial-dilution.yaml",
    ];
    for (i, p) in opening.into_iter().enumerate() {
        submit(100 + i, p);
    }
    // A technician at the bench the whole time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let technician = technician_at_the_bench(&url, &admin, plans.clone(), &logs, stop.clone());
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("crash loop seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut restarts = Vec::new();
    for kill in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(150 + next() % 4500));
        daemon.0.kill().unwrap(); // SIGKILL: no chance to clean up
        daemon.0.wait().unwrap();
        restarts.push(now_ms());
        daemon = start();
        submit(kill, "serial-dilution.yaml");
    }
    let total = opening.len() + 20;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let (_, so, _) = ctl(&admin, &["runs", "--format", "json"]);
        let runs = items(so.trim());
        if runs.len() == total
            && runs.iter().all(|r| ["succeeded", "failed", "cancelled"].contains(&r["state"].as_str().unwrap()))
        {
            break;
        }
        let (_, asked, _) = ctl(&admin, &["interventions", "--format", "json"]);
        assert!(std::time::Instant::now() < until, "runs did not all finish: {so}\nopen interventions: {asked}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let decided = technician.join().unwrap();
    std::process::Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    assert!(daemon.0.wait().unwrap().success());

    let store = labd::store::sqlite::SqliteStore::open(&data.join("labd.sqlite")).unwrap();
    let wire = wire_liquid(&logs);
    let runs = store.runs(None, &[]).unwrap();
    assert_eq!(runs.len(), total, "every accepted run is there");
    let (mut succeeded, mut failed, mut resumed) = (0, 0, 0);
    let mut first_after: Vec<i64> = Vec::new();
    let all_attempts: Vec<labd::store::Attempt> = runs.iter().flat_map(|r| store.attempts(&r.id).unwrap()).collect();
    for (k, &at) in restarts.iter().enumerate() {
        let end = restarts.get(k + 1).copied().unwrap_or(i64::MAX);
        // The first new command of a run that had sent commands before this restart.
        let earlier: std::collections::BTreeSet<&str> =
            all_attempts.iter().filter(|a| a.intent_at < at).map(|a| a.intent.run_id.as_str()).collect();
        let first = all_attempts
            .iter()
            .filter(|a| earlier.contains(a.intent.run_id.as_str()) && a.intent_at >= at && a.intent_at < end)
            .map(|a| a.intent_at - at)
            .min();
        first_after.extend(first);
    }
    for r in &runs {
        let protocol = protocol_of[&r.id];
        let (ref_liquid, ref_results, ref_moves) = &reference[protocol];
        let events = store.events(None, &r.id, 0).unwrap();
        resumed += events.iter().filter(|e| e.kind == "state" && e.payload_json.contains("resuming")).count();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "{}: gapless", r.id);
        let did = wire.get(&short(&r.id)).cloned().unwrap_or_default();
        let attempts = store.attempts(&r.id).unwrap();
        let mut once = std::collections::BTreeMap::new();
        for a in attempts.iter().filter(|a| !a.intent.repeatable && a.intent.task_id >= 0) {
            // A command that did not happen (settled at recovery) was not sent; one a person
            // told to send again was sent again on purpose.
            let told = a.error.as_deref().is_some_and(|e| e.contains("by a person: redo"));
            if a.outcome.as_deref() != Some("not_done") && !told {
                *once.entry((a.intent.task_id, a.intent.command_index)).or_insert(0) += 1;
            }
        }
        let twice: Vec<_> = once.iter().filter(|(_, &n)| n > 1).collect();
        assert!(twice.is_empty(), "{}: commands not safe to repeat sent twice: {twice:?}", r.id);
        // Plate moves that went through: at most the reference's (a plate found away from
        // storage after a restart is brought home, then brought out again for its next task).
        let moves = attempts.iter().filter(|a| a.intent.task_id < 0 && a.outcome.as_deref() == Some("ok")).count();
        for (k, n) in &did {
            assert!(
                ref_liquid.get(k).is_some_and(|m| n <= m),
                "{} ({protocol}): `{k}` done {n} times, more than the reference",
                r.id
            );
        }
        match r.state {
            RunState::Succeeded => {
                succeeded += 1;
                assert_eq!(&did, ref_liquid, "{} ({protocol}): did exactly what the reference did", r.id);
                assert!(moves >= *ref_moves, "{}: every plate move of the reference ({moves} of {ref_moves})", r.id);
                let res = store.results(None, &r.id).unwrap();
                assert_eq!(res.len(), ref_results.len(), "{} ({protocol}): all results", r.id);
                for (a, b) in res.iter().zip(ref_results) {
                    assert_eq!((&a.wells, &a.values, &a.unit), (&b.wells, &b.values, &b.unit), "{}: same values", r.id);
                }
            }
            RunState::Failed => {
                failed += 1;
                println!("crash loop: {} ({protocol}) failed: {}", r.id, r.reason.as_deref().unwrap_or_default());
                assert!(r.reason.as_deref().is_some_and(|w| !w.is_empty()), "{}: failed with a reason", r.id);
            }
            s => panic!("{}: ended {s}", r.id),
        }
    }
    let recovery_asks: Vec<_> = decided.iter().filter(|(_, w, _)| w.starts_with("labd restarted while")).collect();
    for (run, what, choice) in &recovery_asks {
        println!("crash loop: asked about {run}: {what} → {choice}");
        assert!(
            what.contains("cannot settle it"),
            "an intervention says why the instrument could not settle it: {what}"
        );
    }
    first_after.sort_unstable();
    let p50 = first_after.get(first_after.len() / 2).copied().unwrap_or(-1);
    println!(
        "crash loop: {succeeded} of {total} runs succeeded, {failed} failed, after 20 SIGKILLs; {resumed} resumptions; {} interventions about commands in doubt ({} per 100 kills); restart to the first resumed command p50 {p50} ms (n = {})",
        recovery_asks.len(),
        recovery_asks.len() * 5,
        first_after.len()
    );
    assert!(succeeded * 100 >= total * 95, "at least 95 % of runs succeed: {succeeded} of {total}");
    let _ = std::fs::remove_dir_all(&base);
}
