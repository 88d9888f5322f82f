//! `labd serve` over its API: submit, watch, results, cancel, recovery after a kill, bad requests, TLS.

use super::*;

/// `labd serve` with the simulated site, driven by `labctl` as a newcomer would: an admin makes
/// two tenants and their tokens; one tenant submits the serial dilution and waits; it gets its
/// 96 values; the other tenant cannot see the run at all; a retry does not make a second run.
#[test]
fn labd_serve_and_labctl_submit_watch_results_with_tenant_isolation() {
    let dir = std::env::temp_dir().join(format!("lw-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["serve", "--listen", &listen, "--time-scale", "0.0001", "--mqtt-port", "0", "--data-dir"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    args.push(dir.as_os_str());
    let (mut server, _) = start_labd(&args, &root());
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    // Token and password hashes are labd's user's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "the data dir is private");
        for f in ["labd.sqlite", "admin.token", "mqtt-runtime.password"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f} is private");
        }
    }
    let url = format!("http://127.0.0.1:{port}");
    let ctl = |token: &str, args: &[&str]| labctl_at(&url, token, args);
    let json = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {s}"))
    };
    for t in ["acme", "globex"] {
        let (code, so, se) = ctl(&admin, &["tenant", "add", t, "--format", "json"]);
        assert_eq!(code, 0, "{so}{se}");
    }
    let token = |t: &str| {
        json(&ctl(&admin, &["token", "create", "--tenant", t, "--format", "json"]).1)["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (acme, globex) = (token("acme"), token("globex"));
    let file = root().join("protocols/examples/serial-dilution.yaml");
    let file = file.to_str().unwrap();
    // Both tenants at once, each waiting for its run.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| ctl(&acme, &["submit", file, "--wait", "--format", "json"]));
        let b = s.spawn(|| ctl(&globex, &["submit", file, "--wait", "--format", "json"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (code, so, se) = a;
    assert_eq!(code, 0, "acme's run succeeded\n{so}\n{se}");
    assert_eq!(b.0, 0, "globex's run succeeded\n{}\n{}", b.1, b.2);
    let run = json(&so)["run"]["id"].as_str().unwrap().to_string();
    let globex_run = json(&b.1)["run"]["id"].as_str().unwrap().to_string();
    assert!(so.contains("\"task_finished\""), "events were streamed");
    let (code, _, se) = ctl(&acme, &["watch", &globex_run]);
    assert!(code != 0 && se.contains("not found"), "acme cannot watch globex's run: {se}");
    assert!(!ctl(&acme, &["runs", "--format", "json"]).1.contains(&globex_run));
    let (code, csv, se) = ctl(&acme, &["results", &run, "--format", "csv"]);
    assert_eq!(code, 0, "{se}");
    assert_eq!(csv.trim().lines().count(), 1 + 96, "a header and one row per well");
    // Each row says what its well is (the example's plate map): the series halves from 5 mM.
    let a12 = csv.lines().find(|l| l.contains(",A12,")).unwrap();
    assert!(a12.contains(",A12,compound,series,sample,1,0.00244140625,mM,600,"), "{a12}");
    let (_, so, _) = ctl(&acme, &["results", &run, "--format", "json"]);
    let design = &json(&so)[0]["design"];
    assert_eq!((design[0]["sample"].as_str(), design[0]["role"].as_str()), (Some("compound"), Some("sample")), "{so}");
    let (code, _, se) = ctl(&globex, &["results", &run]);
    assert_ne!(code, 0);
    assert!(se.contains("not found"), "another tenant's run is simply not found: {se}");
    assert!(!se.contains("acme"), "and nothing about the other tenant leaks: {se}");
    let theirs = json(&ctl(&globex, &["runs", "--format", "json"]).1);
    assert_eq!(theirs.as_array().map(|a| a.len()), Some(1), "globex sees its one run: {theirs}");
    assert_eq!(theirs[0]["id"].as_str(), Some(globex_run.as_str()));
    // Submitting the file again is a new run; the same key again (a retry) is the same run,
    // and labctl says so.
    let (code, so, _) = ctl(&acme, &["submit", file, "--format", "json"]);
    assert_eq!((code, json(&so)["created"].as_bool()), (0, Some(true)), "submitting again is a new run: {so}");
    let again = json(&so)["run"]["id"].as_str().unwrap().to_string();
    assert_ne!(again, run);
    assert_eq!(ctl(&acme, &["cancel", &again]).0, 0);
    let (code, so, se) = ctl(&acme, &["submit", file, "--key", "k-once", "--format", "json"]);
    assert_eq!((code, json(&so)["created"].as_bool()), (0, Some(true)), "{so}{se}");
    let keyed = json(&so)["run"]["id"].as_str().unwrap().to_string();
    let (code, so, se) = ctl(&acme, &["submit", file, "--key", "k-once", "--format", "json"]);
    assert_eq!((code, json(&so)["created"].as_bool()), (0, Some(false)), "a retry returns the same run");
    assert_eq!(json(&so)["run"]["id"].as_str(), Some(keyed.as_str()));
    assert!(se.contains("used before") && se.contains("for a new run"), "labctl says how to get a new run: {se}");
    assert_eq!(ctl(&acme, &["cancel", &keyed]).0, 0);
    // A protocol with manual steps: each becomes an intervention a technician resolves.
    let tech = json(&ctl(&admin, &["token", "create", "--role", "technician", "--format", "json"]).1)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, so, se) = ctl(&tech, &["instruments", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    assert_eq!(items(&so).len(), 13, "every instrument and arm reports: {so}");
    assert!(so.contains("\"id\":\"arm1\"") && so.contains("robot_arm"), "{so}");
    assert!(ctl(&acme, &["instruments"]).2.contains("not allowed"));
    let elisa = root().join("protocols/examples/elisa.yaml");
    let (code, so, se) = ctl(&globex, &["submit", elisa.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let elisa_run = json(&so)["run"]["id"].as_str().unwrap().to_string();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut resolved = 0;
    loop {
        let (_, so, _) = ctl(&globex, &["runs", "--format", "json"]);
        let all = json(&so);
        let state = all.as_array().unwrap().iter().find(|r| r["id"] == elisa_run.as_str()).unwrap()["state"].clone();
        if state == "succeeded" {
            break;
        }
        assert_ne!(state, "failed", "{so}");
        assert!(std::time::Instant::now() < until, "ELISA did not finish: {so}");
        let (_, open, _) = ctl(&tech, &["interventions", "--format", "json"]);
        for i in items(&open) {
            assert_eq!(i["run"].as_str(), Some(elisa_run.as_str()));
            assert!(
                ctl(&globex, &["resolve", i["id"].as_str().unwrap(), "done"]).2.contains("not allowed"),
                "scientists do not resolve"
            );
            assert_eq!(ctl(&tech, &["resolve", i["id"].as_str().unwrap(), "done"]).0, 0);
            resolved += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(resolved, 2, "ELISA's two manual steps were handed to the technician");
    // Watching a finished run replays it with a progress bar.
    let (code, so, _) = ctl(&acme, &["watch", &run]);
    assert_eq!(code, 0);
    assert!(so.contains("[####################]"), "a full progress bar: {so}");
    // Technicians: maintenance, the schedule; admins: usage, quotas, reservations, expiring tokens.
    let (code, so, se) = ctl(&tech, &["maintenance", "reader2", "on", "--reason", "lamp change"]);
    assert_eq!(code, 0, "{se}");
    assert!(so.contains("maintenance") && so.contains("lamp change"), "{so}");
    let (_, so, _) = ctl(&tech, &["instruments", "--format", "json"]);
    let reader2 = items(&so).into_iter().find(|i| i["id"] == "reader2").unwrap();
    assert_eq!(reader2["state"], "maintenance");
    assert_eq!(ctl(&tech, &["maintenance", "reader2", "off"]).0, 0);
    let (code, so, _) = ctl(&tech, &["maintenance", "reader2", "on"]);
    assert_ne!(code, 0, "maintenance needs a reason: {so}");
    let (code, lanes, se) = ctl(&tech, &["schedule", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    assert!(lanes.contains(&run) && lanes.contains(&elisa_run), "the technician sees every run's slots");
    assert!(items(&lanes).iter().any(|l| l["lane"] == "arm1" && l["state"] == "done"), "{lanes}");
    let (_, theirs, _) = ctl(&globex, &["schedule", "--format", "json"]);
    assert!(!theirs.contains(&run) && !theirs.contains("acme"), "globex sees none of acme's slots");
    assert!(theirs.contains(&elisa_run));
    let (code, usage, se) = ctl(&admin, &["usage", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let acme_lh =
        items(&usage).into_iter().find(|l| l["tenant"] == "acme" && l["instrument_class"] == "liquid_handler");
    let acme_lh = acme_lh.unwrap_or_else(|| panic!("{usage}"));
    let hours = acme_lh["device_hours"].as_f64().unwrap();
    assert!(hours > 0.0 && acme_lh["service_class"] == "standard", "{usage}");
    let rate = labware::Site::sim().unwrap().price_per_hour(labware::InstrumentClass::LiquidHandler);
    assert!((acme_lh["amount"].as_f64().unwrap() - hours * rate).abs() <= 0.005 + 1e-9, "{acme_lh}");
    // How acme was served: its finished runs' slowdown and the promises kept.
    let served = items(&usage).into_iter().find(|l| l["tenant"] == "acme" && l["mean_slowdown"].is_number());
    let served = served.unwrap_or_else(|| panic!("{usage}"));
    let (runs, promised, kept) = (
        served["runs"].as_u64().unwrap(),
        served["promised"].as_u64().unwrap(),
        served["promises_kept"].as_u64().unwrap(),
    );
    assert!(runs >= 1 && promised == runs && kept <= promised, "{served}");
    assert!(served["mean_slowdown"].as_f64().unwrap() > 0.0, "{served}");
    assert!(ctl(&admin, &["usage"]).1.contains("MEAN SLOWDOWN"));
    assert!(ctl(&acme, &["usage"]).2.contains("not allowed"));
    assert_eq!(ctl(&admin, &["tenant", "quota", "acme", "--max-runs", "2", "--device-hours", "100"]).0, 0);
    let (code, _, se) = ctl(&admin, &["reserve", "globex", "plate_reader", "--for", "1", "--in", "600"]);
    assert_eq!(code, 0, "{se}");
    assert_eq!(items(&ctl(&admin, &["reservations", "--format", "json"]).1).len(), 1);
    let (code, _, se) = ctl(&admin, &["reserve", "globex", "spectrometer", "--for", "1"]);
    assert!(code != 0 && se.contains("no instrument or instrument class"), "{se}");
    let brief = json(&ctl(&admin, &["token", "create", "--tenant", "acme", "--ttl", "1", "--format", "json"]).1);
    assert!(brief["expires_at_ms"].as_i64().is_some());
    assert_eq!(ctl(brief["token"].as_str().unwrap(), &["runs"]).0, 0, "valid for a second");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, _, se) = ctl(brief["token"].as_str().unwrap(), &["runs"]);
    assert!(code != 0 && se.contains("expired"), "{se}");
    let spare = json(&ctl(&admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1);
    assert_eq!(ctl(&admin, &["token", "revoke", spare["principal"].as_str().unwrap()]).0, 0);
    let (code, _, se) = ctl(spare["token"].as_str().unwrap(), &["runs"]);
    assert!(code != 0 && se.contains("not signed in"), "a revoked token no longer signs in: {se}");
    assert!(
        items(&ctl(&acme, &["interventions", "--all", "--format", "json"]).1).is_empty(),
        "acme sees none of globex's interventions"
    );
    // The standard gRPC health service answers for the API.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let serving = rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        h.check(tonic_health::pb::HealthCheckRequest { service: "labwright.v1.Runs".into() })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(serving, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let (code, _, se) = ctl("lw_not_a_token", &["runs"]);
    assert!(code != 0 && se.contains("not signed in"), "{se}");
    let (code, _, se) = ctl(&acme, &["tenant", "add", "mallory"]);
    assert!(code != 0 && se.contains("not allowed"), "{se}");
    std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success(), "SIGTERM stops labd gracefully");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cancelling a running run stops it at the next task; plate moves still run; it ends cancelled.
/// After a crash with simulators inside labd (which restart with it), a run that was mid-task is
/// failed with that reason and its in-flight commands marked unknown, never resent; queued runs
/// are untouched, and a run that had not begun is queued again.
#[test]
fn cancel_and_recovery_leave_every_run_in_an_explicit_state() {
    use labd::store::{Intent, RunState};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex) = executor_rig().await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        let run = ex.submit(&t.id, "c", "growth", "growth-curve.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let (s2, id) = (store.clone(), run.id.clone());
        let canceller = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if s2.events(None, &id, 0).unwrap().iter().any(|e| e.kind == "task_finished") {
                    s2.set_run_state(&id, RunState::Cancelling, Some("cancelled by test")).unwrap();
                    return;
                }
            }
        });
        let report = tokio::time::timeout(std::time::Duration::from_secs(120), ex.run_queued()).await.unwrap().unwrap();
        canceller.await.unwrap();
        assert_eq!(report.runs[0].1, RunState::Cancelled, "{:?}", report.runs);
        let plan = compile_example("growth-curve.yaml");
        let finished = store.events(None, &run.id, 0).unwrap().iter().filter(|e| e.kind == "task_finished").count();
        assert!(finished < plan.tasks.len(), "it stopped early ({finished} of {} tasks)", plan.tasks.len());

        // A crash mid-run, simulated in the store: running, one dispense sent, no outcome.
        let crashed = ex.submit(&t.id, "d", "dilution", "sd.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        let waiting = ex.submit(&t.id, "e", "dilution", "sd2.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        store.set_run_state(&crashed.id, RunState::Running, None).unwrap();
        store
            .record_intent(&Intent {
                run_id: crashed.id.clone(),
                task_id: 0,
                command_index: 7,
                instrument: "lh1".into(),
                op_json: "{\"op\":\"dispense\"}".into(),
                repeatable: false,
            })
            .unwrap();
        // Another, killed while picking up a tip: the tip switch settles that (no tip is on).
        let picking = ex.submit(&t.id, "p", "dilution", "sd4.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        store.set_run_state(&picking.id, RunState::Running, None).unwrap();
        store
            .record_intent(&Intent {
                run_id: picking.id.clone(),
                task_id: 0,
                command_index: 0,
                instrument: "lh2".into(),
                op_json: r#"{"op":"pick_up_tip","pipette":"p300_single","rack":"x.tips","well":"A1"}"#.into(),
                repeatable: false,
            })
            .unwrap();
        let failed = ex.recover().await.unwrap();
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed.contains(&crashed.id) && failed.contains(&picking.id), "{failed:?}");
        // Simulators inside labd restart with it: nothing of the tasks under way is left to
        // finish or check (simulators run by `labd sim` outlive labd; see the crash loop).
        let pick = &store.attempts(&picking.id).unwrap()[0];
        assert_eq!(pick.outcome.as_deref(), Some("unknown"), "{pick:?}");
        let r = store.run(None, &crashed.id).unwrap();
        assert_eq!(r.state, RunState::Failed);
        assert!(r.reason.unwrap().contains("restarted with it"));
        assert!(store.open_attempts().unwrap().is_empty(), "the in-flight command is marked unknown, not left open");
        assert_eq!(store.attempts(&crashed.id).unwrap()[0].outcome.as_deref(), Some("unknown"));
        assert!(store.interventions(None, true).unwrap().is_empty(), "no physical state to check");
        assert_eq!(store.run(None, &waiting.id).unwrap().state, RunState::Queued, "queued runs continue");

        // Admitted but nothing sent yet: it goes back to the queue rather than failing.
        let untouched =
            ex.submit(&t.id, "f", "dilution", "sd3.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        store.set_run_state(&untouched.id, RunState::Running, None).unwrap();
        assert!(ex.recover().await.unwrap().is_empty());
        let r = store.run(None, &untouched.id).unwrap();
        assert_eq!(
            (r.state, r.reason.as_deref()),
            (RunState::Queued, Some("labd stopped before it began; queued again"))
        );
    });
}

/// `kill -9` of labd mid-run, then a restart: the interrupted run ends explicitly failed with a
/// reason, its event sequence stays gapless, and a run submitted afterwards completes.
#[test]
fn labd_killed_mid_run_recovers_on_restart() {
    let dir = std::env::temp_dir().join(format!("lw-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = |scale: &str| {
        let args = ["serve", "--listen", &listen, "--time-scale", scale, "--mqtt-port", "0", "--data-dir"];
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        args.push(dir.as_os_str());
        start_labd(&args, &root())
    };
    // Slow enough (0.01) that the run is surely mid-way when killed.
    let (mut first, _) = start("0.01");
    let url = format!("http://127.0.0.1:{port}");
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    let ctl = |token: &str, args: &[&str]| labctl_at(&url, token, args);
    assert_eq!(ctl(&admin, &["tenant", "add", "acme"]).0, 0);
    let token = ctl(&admin, &["token", "create", "--tenant", "acme"]).1.trim().to_string();
    let file = root().join("protocols/examples/serial-dilution.yaml");
    let (code, so, se) = ctl(&token, &["submit", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let run = serde_json::from_str::<serde_json::Value>(so.lines().next().unwrap()).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, so, _) = ctl(&token, &["runs", "--format", "json"]);
        if so.contains("\"running\"") {
            break;
        }
        assert!(std::time::Instant::now() < until, "the run never started: {so}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    first.0.kill().unwrap(); // SIGKILL: no chance to clean up
    first.0.wait().unwrap();
    let (mut second, seen) = start("0.0001");
    assert!(seen.contains(&run), "the restart reports the interrupted run: {seen}");
    let (_, so, _) = ctl(&token, &["watch", &run, "--format", "json"]);
    let events: Vec<serde_json::Value> = so.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gapless across the crash");
    let last = events.last().unwrap();
    assert_eq!(last["payload"]["state"], "failed");
    assert!(last["payload"]["reason"].as_str().unwrap().contains("restarted"), "{last}");
    let (code, _, se) = ctl(&token, &["submit", file.to_str().unwrap(), "--key", "after-crash", "--wait"]);
    assert_eq!(code, 0, "a new run completes after the restart: {se}");
    std::process::Command::new("kill").args(["-TERM", &second.0.id().to_string()]).status().unwrap();
    assert!(second.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad requests get clear statuses and the API keeps serving: a malformed protocol, a protocol
/// over the size limit, a message over gRPC's limit, unknown ids, another tenant's run, an
/// expired token, no token, the wrong role, a bad maintenance request.
#[test]
fn bad_requests_get_clear_statuses_and_the_api_keeps_serving() {
    use labd::api::{token_hash, Api};
    use labd::store::{Role, Store};
    use protos::labwright::v1 as pb;
    use std::sync::Arc;
    use tonic::Code;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let acme = store.create_tenant("acme", 1.0).unwrap();
        let globex = store.create_tenant("globex", 1.0).unwrap();
        store.create_principal(Some(&acme.id), Role::Scientist, &token_hash("acme"), None).unwrap();
        store.create_principal(Some(&globex.id), Role::Scientist, &token_hash("globex"), None).unwrap();
        store.create_principal(None, Role::Technician, &token_hash("tech"), None).unwrap();
        let old = store.create_principal(Some(&acme.id), Role::Scientist, &token_hash("old"), None).unwrap();
        store.set_principal_expiry(&old.id, labd::store::now_ms() - 1000).unwrap();
        let api = Api {
            store: store.clone(),
            site: std::sync::Arc::new(labware::Site::sim().unwrap()),
            library: std::sync::Arc::new(labware::Library::shipped()),
            lab: Default::default(),
            board: None,
            time_scale: 1.0,
            mqtt_broker: None,
            embedded_broker: None,
            kitting: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(labd::serve::serve_api(api, listener, None, None, async {
            let _ = stopped.await;
        }));
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        fn req<T>(token: &str, m: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            if !token.is_empty() {
                r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            r
        }
        let submit = |name: &str, source: Vec<u8>, key: &str| pb::SubmitRequest {
            file_name: name.into(),
            source,
            format: 0,
            idempotency_key: key.into(),
            service_class: String::new(),
        };
        let mut runs = pb::runs_client::RunsClient::new(ch.clone()).max_encoding_message_size(64 << 20);
        let example = std::fs::read(root().join("protocols/examples/growth-curve.yaml")).unwrap();

        // A malformed protocol: not accepted, diagnostics say where.
        let r = runs.submit(req("acme", submit("bad.yaml", b"labwright: 1\nsteps: [".to_vec(), "k1"))).await.unwrap();
        let r = r.into_inner();
        assert!(r.run.is_none() && !r.created && !r.diagnostics.is_empty(), "{r:?}");
        assert!(r.diagnostics[0].line >= 1, "{:?}", r.diagnostics);
        // Over the protocol size limit, and over gRPC's message limit.
        let big = vec![b'#'; 9 << 20];
        let e = runs.submit(req("acme", submit("big.yaml", big.clone(), "k2"))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("the limit is 8 MiB"), "{}", e.message());
        // Free text the API takes has its limits too.
        let long_key = "k".repeat(201);
        let e = runs.submit(req("acme", submit("g.yaml", example.clone(), &long_key))).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("limit is 200"), "{e:?}");
        // The same limit for every call that takes a protocol.
        let mut checker = pb::protocols_client::ProtocolsClient::new(ch.clone());
        let ask = pb::ValidateRequest { file_name: "big.yaml".into(), source: big, ..Default::default() };
        for e in [
            checker.validate(req("acme", ask.clone())).await.unwrap_err(),
            checker.quote(req("acme", ask)).await.unwrap_err(),
        ] {
            assert!(e.code() == Code::InvalidArgument && e.message().contains("the limit is 8 MiB"), "{e:?}");
        }
        let huge = vec![b'#'; 20 << 20];
        let e = runs.submit(req("acme", submit("huge.yaml", huge, "k3"))).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        // No key, no token, an unknown token, an expired token.
        let e = runs.submit(req("acme", submit("g.yaml", example.clone(), " "))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("idempotency key"), "{}", e.message());
        let e = runs.list(req("", pb::ListRunsRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = runs.list(req("nope", pb::ListRunsRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = runs.list(req("old", pb::ListRunsRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{}", e.message());
        // A quote plans the protocol behind today's queue.
        let mut protocols = pb::protocols_client::ProtocolsClient::new(ch.clone());
        let quote = |r: &pb::QuoteResponse| (r.estimated_start_s, r.earliest_completion_s, r.duration_s);
        let ask = pb::ValidateRequest { file_name: "g.yaml".into(), source: example.clone(), ..Default::default() };
        let alone = protocols.quote(req("acme", ask.clone())).await.unwrap().into_inner();
        let (start, earliest, duration) = quote(&alone);
        assert!(start < 60.0, "nothing queued: it would start as soon as its plate is there ({start})");
        assert!(earliest >= duration * 0.9 && earliest.is_finite(), "{earliest} vs {duration}");
        assert!(alone.earliest_completion_at_ms > labd::store::now_ms());
        // What the lab would promise: the earliest completion plus the planner's margin.
        let margin = scheduler::lab::promise::DEFAULT_MARGIN;
        assert!((alone.promised_by_s - earliest * (1.0 + margin)).abs() < 1e-6, "{alone:?}");
        assert!(alone.promised_by_at_ms >= alone.earliest_completion_at_ms, "{alone:?}");
        // Unknown ids and another tenant's run look the same: NOT_FOUND, nothing leaks.
        let mine = runs.submit(req("acme", submit("g.yaml", example.clone(), "k4"))).await.unwrap().into_inner();
        let behind = protocols.quote(req("globex", ask.clone())).await.unwrap().into_inner();
        // Behind acme's run, globex learns when it would start and end — not how many runs
        // anyone has queued, nor whose.
        assert!(
            behind.estimated_start_s >= start - 1e-6 && behind.earliest_completion_s >= earliest - 1e-6,
            "{behind:?}"
        );
        assert!(behind.estimated_start_at_ms > labd::store::now_ms());
        // Service classes: spot is cheaper and promised nothing; priority dearer, planned ahead
        // of acme's standard run; an unknown class says which exist.
        let class_of = |class: &str| pb::ValidateRequest { service_class: class.into(), ..ask.clone() };
        let spot = protocols.quote(req("globex", class_of("spot"))).await.unwrap().into_inner();
        let priority = protocols.quote(req("globex", class_of("priority"))).await.unwrap().into_inner();
        assert_eq!((behind.service_class.as_str(), spot.service_class.as_str()), ("standard", "spot"));
        assert_eq!((spot.promised_by_s, spot.promised_by_at_ms), (0.0, 0), "{spot:?}");
        assert!(spot.total < behind.total && behind.total < priority.total, "{spot:?} {behind:?} {priority:?}");
        let factor = labware::Site::sim().unwrap().class_factor(labware::ServiceClass::Spot);
        for (s, b) in spot.lines.iter().zip(&behind.lines) {
            assert!((s.rate_per_hour - b.rate_per_hour * factor).abs() < 1e-9, "{s:?} {b:?}");
        }
        assert!(priority.earliest_completion_s <= behind.earliest_completion_s + 1e-6, "{priority:?}");
        let gold = protocols.quote(req("globex", class_of("gold"))).await.unwrap_err();
        assert_eq!(gold.code(), Code::InvalidArgument);
        assert!(gold.message().contains("standard, priority or spot"), "{}", gold.message());
        let as_spot = pb::SubmitRequest { service_class: "spot".into(), ..submit("g.yaml", example.clone(), "k5") };
        let spot_run = runs.submit(req("globex", as_spot)).await.unwrap().into_inner().run.unwrap();
        assert_eq!(spot_run.service_class, "spot");
        let as_gold = pb::SubmitRequest { service_class: "gold".into(), ..submit("g.yaml", example.clone(), "k6") };
        assert_eq!(runs.submit(req("globex", as_gold)).await.unwrap_err().code(), Code::InvalidArgument);
        let mine = mine.run.unwrap().id;
        let theirs = runs.get(req("globex", pb::GetRunRequest { run_id: mine.clone() })).await.unwrap_err();
        let nothing = runs.get(req("globex", pb::GetRunRequest { run_id: "run_nope".into() })).await.unwrap_err();
        assert_eq!(theirs.code(), Code::NotFound);
        assert_eq!(nothing.code(), Code::NotFound);
        assert_eq!(theirs.message().replace(&mine, "ID"), nothing.message().replace("run_nope", "ID"));
        for e in [
            runs.results(req("globex", pb::ResultsRequest { run_id: mine.clone() })).await.unwrap_err(),
            runs.cancel(req("globex", pb::CancelRequest { run_id: mine.clone() })).await.unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
        }
        let mut w = runs.watch(req("globex", pb::WatchRequest { run_id: mine.clone(), after_seq: 0 })).await;
        if let Ok(s) = w.as_mut() {
            let first = s.get_mut().message().await;
            assert!(first.is_err(), "globex reads nothing of acme's run: {first:?}");
        }
        // The wrong role; a bad maintenance request.
        let mut admin = pb::admin_client::AdminClient::new(ch.clone());
        let e = admin.create_tenant(req("acme", pb::CreateTenantRequest { name: "x".into(), weight: 1.0 })).await;
        assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
        let mut lab = pb::lab_client::LabClient::new(ch.clone());
        let e = lab
            .set_maintenance(req(
                "tech",
                pb::SetMaintenanceRequest { instrument: "reader9".into(), on: true, reason: "x".into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("reader1"), "names the instruments there are: {}", e.message());
        let e = lab
            .set_maintenance(req(
                "tech",
                pb::SetMaintenanceRequest { instrument: "reader1".into(), on: true, reason: String::new() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = lab
            .set_maintenance(req(
                "acme",
                pb::SetMaintenanceRequest { instrument: "reader1".into(), on: true, reason: "x".into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // What the technician did by hand is in the audit trail, newest first, with the reason;
        // what was refused is not. Scientists cannot read it.
        for (on, reason) in [(true, "lamp replacement"), (false, "")] {
            let ask = pb::SetMaintenanceRequest { instrument: "reader1".into(), on, reason: reason.into() };
            lab.set_maintenance(req("tech", ask)).await.unwrap();
        }
        let trail = lab.audit(req("tech", pb::AuditRequest::default())).await.unwrap().into_inner().entries;
        let seen: Vec<(&str, &str, &str)> =
            trail.iter().map(|e| (e.action.as_str(), e.subject.as_str(), e.reason.as_str())).collect();
        assert_eq!(
            seen,
            [("maintenance_off", "reader1", ""), ("maintenance_on", "reader1", "lamp replacement")],
            "{trail:?}"
        );
        assert!(trail.iter().all(|e| e.actor.starts_with("pri_") && e.at_ms > 0), "{trail:?}");
        let e = lab.audit(req("acme", pb::AuditRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = lab.audit(req("tech", pb::AuditRequest { limit: 5000, ..Default::default() })).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // After all that, the API still serves: the same submission again is the same run.
        let again = runs.submit(req("acme", submit("g.yaml", example.clone(), "k4"))).await.unwrap().into_inner();
        assert!(!again.created);
        assert_eq!(again.run.unwrap().id, mine);
        let list = runs.list(req("acme", pb::ListRunsRequest::default())).await.unwrap().into_inner();
        assert_eq!((list.runs.len(), list.next_page_token.as_str()), (1, ""));
        // Lists come a page at a time, in submission order, each page a bounded reply.
        for k in ["k5", "k6"] {
            runs.submit(req("acme", submit("g.yaml", example.clone(), k))).await.unwrap();
        }
        let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let ask = pb::ListRunsRequest { page_size: 2, page_token: token, ..Default::default() };
            let page = runs.list(req("acme", ask)).await.unwrap().into_inner();
            assert!(page.runs.len() <= 2);
            seen.extend(page.runs.into_iter().map(|r| r.id));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!((seen.len(), pages), (3, 2), "{seen:?}");
        assert_eq!(seen[0], mine, "oldest first");
        let bogus = pb::ListRunsRequest { page_token: "nonsense".into(), ..Default::default() };
        assert_eq!(runs.list(req("acme", bogus)).await.unwrap_err().code(), Code::InvalidArgument);
        // Interventions and the schedule page the same way.
        for k in 0..5 {
            store.open_intervention(&mine, None, None, "manual step", &format!("step {k}")).unwrap();
        }
        let (mut todo, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let ask = pb::InterventionsRequest { page_size: 2, page_token: token, ..Default::default() };
            let page = lab.interventions(req("tech", ask)).await.unwrap().into_inner();
            assert!(page.interventions.len() <= 2);
            todo.extend(page.interventions.into_iter().map(|i| (i.created_at_ms, i.todo)));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!((todo.len(), pages), (5, 3), "{todo:?}");
        // Oldest first (those opened in the same millisecond in id order), each once.
        assert!(todo.windows(2).all(|w| w[0].0 <= w[1].0), "oldest first: {todo:?}");
        let texts: std::collections::BTreeSet<&str> = todo.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts.len(), 5, "{todo:?}");
        let theirs = pb::InterventionsRequest::default();
        assert!(lab.interventions(req("globex", theirs)).await.unwrap().into_inner().interventions.is_empty());
        let bogus = pb::ScheduleRequest { page_token: "nonsense".into(), ..Default::default() };
        assert_eq!(lab.schedule(req("tech", bogus)).await.unwrap_err().code(), Code::InvalidArgument);
        // Tenants and the bill page too: however many tenants rent the lab, each reply is bounded.
        store.create_principal(None, Role::Admin, &token_hash("admin"), None).unwrap();
        for name in ["initech", "umbrella", "hooli"] {
            let t = store.create_tenant(name, 1.0).unwrap();
            for class in ["liquid_handler", "plate_reader"] {
                let u = labd::store::Usage {
                    tenant_id: t.id.clone(),
                    run_id: mine.clone(),
                    instrument_class: class.into(),
                    instrument: "x".into(),
                    device_seconds: 360.0,
                };
                store.add_usage(&u).unwrap();
            }
        }
        let mut admin = pb::admin_client::AdminClient::new(ch.clone());
        let (mut names, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = admin
                .list_tenants(req("admin", pb::ListTenantsRequest { page_size: 2, page_token: token }))
                .await
                .unwrap()
                .into_inner();
            assert!(page.tenants.len() <= 2);
            names.extend(page.tenants.into_iter().map(|t| t.name));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!((names.len(), pages), (5, 3), "{names:?}");
        assert_eq!(names.iter().collect::<std::collections::BTreeSet<_>>().len(), 5, "each once: {names:?}");
        let (mut lines, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let ask = pb::UsageRequest { page_size: 4, page_token: token, ..Default::default() };
            let page = admin.usage(req("admin", ask)).await.unwrap().into_inner();
            assert!(page.lines.len() <= 4);
            lines.extend(page.lines.into_iter().map(|l| (l.tenant, l.instrument_class, l.device_hours)));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!((lines.len(), pages), (6, 2), "{lines:?}");
        assert!(lines.iter().all(|l| (l.2 - 0.1).abs() < 1e-9), "{lines:?}");
        let bogus = pb::UsageRequest { page_token: "nonsense".into(), ..Default::default() };
        assert_eq!(admin.usage(req("admin", bogus)).await.unwrap_err().code(), Code::InvalidArgument);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
}

/// The API over TLS: labctl trusts the lab's CA and works; plain gRPC and a missing CA get
/// clear errors; a half-configured TLS stops the start naming the key.
#[test]
fn the_api_over_tls() {
    let dir = fresh_dir("tls");
    certs::certificates(&dir);
    let port = free_port();
    let config = dir.join("labd.toml");
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"server.pem\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("tls_cert is set but tls_key is not"), "{}", text(&o.stderr));
    std::fs::write(
        &config,
        format!("data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nmqtt_port = 0\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\ntime_scale = 0.001\n", data.display().to_string()),
    )
    .unwrap();
    let (mut server, seen) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    assert!(seen.contains("(TLS)"), "{seen}");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let ca = dir.join("ca.pem");
    let ctl = |url: &str, extra: &[&str]| labctl_at(url, &admin, extra);
    let https = format!("https://127.0.0.1:{port}");
    let (code, _, se) = ctl(&https, &["--ca", ca.to_str().unwrap(), "tenant", "add", "acme"]);
    assert_eq!(code, 0, "{se}");
    let (code, so, se) = ctl(&https, &["--ca", ca.to_str().unwrap(), "runs", "--format", "json"]);
    assert_eq!((code, so.trim()), (0, "[]"), "{se}");
    let (code, _, se) = ctl(&https, &["runs"]);
    assert!(code != 0 && se.contains("--ca FILE"), "{se}");
    let (code, _, se) = ctl(&format!("http://127.0.0.1:{port}"), &["runs"]);
    assert!(code != 0 && !se.contains("panicked"), "plain gRPC to a TLS server fails cleanly: {se}");
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
