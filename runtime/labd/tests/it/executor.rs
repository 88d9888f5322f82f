//! The executor on the simulated site: failover, maintenance, reservations, quotas, interventions, and the compiler ↔ instruments contract.

use super::*;

/// `labd sim` starts every simulated instrument of the shipped site as its own endpoint, prints
/// one JSON line per instrument, and Labwright's drivers reach each one as if it were real.
#[test]
fn labd_sim_serves_every_instrument_of_the_site_and_drivers_reach_them() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["sim", "--format", "json", "--time-scale", "0.01", "--site"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sites/sim.toml"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let site = labware::Site::sim().unwrap();
    let expected =
        site.instruments.len() + site.arms.len() - site.instruments_of(labware::InstrumentClass::RobotArm).count();
    let mut lines = Vec::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while lines.len() < expected {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "labd sim stopped after {} lines", lines.len());
        lines.push(serde_json::from_str::<serde_json::Value>(&l).unwrap());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for l in &lines {
            let id = l["id"].as_str().unwrap();
            let endpoint = devices::link::Endpoint::parse(&format!(
                "{}:{}",
                l["transport"].as_str().unwrap(),
                l["address"].as_str().unwrap()
            ))
            .unwrap();
            if let Some(arm) = site.arms.iter().find(|a| a.id == id) {
                let d = devices::driver::open_arm(arm, &endpoint, devices::TimeScale(0.01)).await.unwrap();
                assert_eq!(d.command("nop").await.unwrap().code, 0, "{id}");
                continue;
            }
            let inst = site.instruments.iter().find(|i| i.id == id).unwrap();
            assert_eq!(l["class"].as_str().unwrap(), inst.class.as_str());
            let cfg = devices::driver::OpenConfig {
                scale: devices::TimeScale(0.01),
                sila_ca: None,
                robots: Default::default(),
            };
            let d = devices::driver::open(inst, &endpoint, &cfg).await.unwrap_or_else(|e| panic!("{id}: {e}"));
            let who = d.identify().await.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert!(!who.model.is_empty() || !who.firmware.is_empty(), "{id}: {who:?}");
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// A plate reader that stops answering: plates bound for it are not sent; the plan is repaired
/// and its reads run on the second reader; when it answers again, it is back in service.
#[test]
fn a_reader_going_down_fails_over_to_the_second_reader() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, lab) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        for k in 0..2 {
            ex.submit(&t.id, &format!("g{k}"), "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        }
        let power = lab.simulated.as_ref().unwrap().power["reader1"].clone();
        power.set(false);
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        for (id, state, reason) in &report.runs {
            assert_eq!(*state, RunState::Succeeded, "{id}: {reason:?}");
            assert!(!store.results(None, id).unwrap().is_empty(), "{id} has its reads");
        }
        let used = task_instruments(&store);
        assert!(!used.iter().any(|i| i == "reader1"), "nothing ran on the dead reader: {used:?}");
        assert!(used.iter().any(|i| i == "reader2"), "the second reader took the reads: {used:?}");
        let flag = ex.board().unavailable("reader1").expect("reader1 is marked unavailable");
        assert!(flag.starts_with("down: "), "{flag}");
        for r in store.runs(None, &[]).unwrap() {
            let sent = store.attempts(&r.id).unwrap();
            assert!(sent.iter().all(|a| a.intent.instrument != "reader1"), "no command went to reader1");
        }

        // Powered on again: the next batch finds it answering and may use it.
        power.set(true);
        ex.submit(&t.id, "g-after", "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs);
        assert_eq!(ex.board().unavailable("reader1"), None, "reader1 is back");
    });
}

/// A technician's maintenance flag keeps new work off an instrument; clearing it brings it back.
#[test]
fn maintenance_keeps_work_off_an_instrument() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        // As the API does it: the flag in the store, and the board updated at once.
        store.set_maintenance("reader2", Some(("lamp replacement", "tech-1"))).unwrap();
        ex.board().set_unavailable("reader2", Some("maintenance: lamp replacement".into()));
        for k in 0..2 {
            ex.submit(&t.id, &format!("g{k}"), "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        }
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == RunState::Succeeded), "{:?}", report.runs);
        let used = task_instruments(&store);
        assert!(!used.iter().any(|i| i == "reader2"), "nothing ran on the reader in maintenance: {used:?}");
        assert_eq!(ex.board().unavailable("reader2").as_deref(), Some("maintenance: lamp replacement"));
        let lanes: std::collections::BTreeSet<String> = ex.board().schedule().into_iter().map(|s| s.lane).collect();
        assert!(lanes.contains("reader1") && lanes.contains("arm2"), "the schedule has lanes: {lanes:?}");
        store.set_maintenance("reader2", None).unwrap();
        ex.submit(&t.id, "g-after", "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(ex.board().unavailable("reader2"), None);
    });
}

/// The contract between the compiler and the instruments: every command the compiler emits for
/// an instrument, on every instrument of the site the compiler says can run it, carried out by
/// the real driver against its simulator over the wire, through the executor. A capability the
/// compiler accepts but no driver executes fails here (luminescence reads once did; reagent
/// additions went to the liquid handler, which refuses them).
#[test]
fn contract_every_command_runs_on_every_instrument_the_compiler_allows() {
    let _machine = heavy();
    let site = labware::Site::sim().unwrap();
    let (runs, claims) = contract_runs(&site, &contract_sources(), false);
    let ops: std::collections::BTreeSet<&str> = claims.iter().map(|(op, _)| op.as_str()).collect();
    for op in COMPILER_OPS {
        assert!(ops.contains(op), "no snippet makes the compiler emit `{op}`: {ops:?}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex) = executor_rig().await;
        let failed = carry_out_contract(store, std::sync::Arc::new(ex), &runs).await;
        assert!(
            failed.is_empty(),
            "claimed by the compiler, refused or failed on the instrument:\n{}",
            failed.join("\n")
        );
        eprintln!("contract: {} runs, {} (command, instrument) pairs: {claims:?}", runs.len(), claims.len());
    });
}

/// A luminescence read only reader1 can do waits for reader1 while it is in maintenance: it is
/// never routed to reader2 (absorbance only), the run is told why its end moved, and when
/// reader1 is back the read runs there and the run succeeds.
#[test]
fn work_waits_for_the_only_instrument_that_can_do_it() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let ex = std::sync::Arc::new(ex);
        let t = store.create_tenant("acme", 1.0).unwrap();
        let plan = compile_example("viability-glo.yaml");
        let read = plan.tasks.iter().find(|t| t.label.starts_with("read luminescence")).unwrap();
        assert_eq!(read.instruments, ["reader1"], "the compiler lists who can read luminescence");
        store.set_maintenance("reader1", Some(("lamp replacement", "tech-1"))).unwrap();
        ex.board().set_unavailable("reader1", Some("maintenance: lamp replacement".into()));
        let run = ex.submit(&t.id, "glo", "viability", "viability-glo.yaml", &plan).unwrap();
        let worker = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run_queued().await })
        };
        // Everything before the read happens; the read does not start anywhere.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let events = store.events(None, &run.id, 0).unwrap();
            let finished = events.iter().filter(|e| e.kind == "task_finished").count();
            if finished == 3 {
                break;
            }
            assert!(std::time::Instant::now() < until, "the work before the read did not finish: {events:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await; // 5,000 device-seconds
        let used = task_instruments(&store);
        assert!(!used.iter().any(|i| i.starts_with("reader")), "the read waits for reader1: {used:?}");
        assert_eq!(store.run(None, &run.id).unwrap().state, RunState::Running);
        store.set_maintenance("reader1", None).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(120), worker).await.unwrap().unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == RunState::Succeeded), "{:?}", report.runs);
        assert_eq!(
            task_instruments(&store).iter().filter(|i| i.starts_with("reader")).collect::<Vec<_>>(),
            ["reader1"]
        );
        let results = store.results(Some(&t.id), &run.id).unwrap();
        assert_eq!(
            (results[0].kind.as_str(), results[0].unit.as_str(), results[0].values.len()),
            ("luminescence", "RLU", 16)
        );
        let told: Vec<String> = store
            .events(None, &run.id, 0)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "scheduled" || e.kind == "rescheduled")
            .map(|e| e.payload_json)
            .collect();
        assert!(told[0].contains("\"waits_for\":[\"reader1\"]"), "the tenant was told what it waits for: {told:?}");
        assert!(told.iter().any(|p| p.contains("reader1 is back")), "and when it came back: {told:?}");
    });
}

/// Bench time reserved for one tenant keeps another tenant's work off those instruments until the
/// reservation ends.
#[test]
fn a_reservation_keeps_other_tenants_off_the_instrument() {
    use labd::store::{Reservation, RunState};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let a = store.create_tenant("acme", 1.0).unwrap();
        let b = store.create_tenant("globex", 1.0).unwrap();
        let now = labd::store::now_ms();
        // 3 s wall = 30,000 s of device time at 1e-4; unreserved, the first read comes after
        // about 0.6 s (measured in a debug build).
        let ends = now + 3000;
        for inst in ["reader1", "plate_reader"] {
            // By id, and by class (the class's first instrument, reader1 again): both hold.
            let id = labd::store::new_id("rsv");
            let r = Reservation {
                id,
                tenant_id: b.id.clone(),
                instrument_class: inst.into(),
                starts_at: now,
                ends_at: ends,
            };
            store.add_reservation(&r).unwrap();
        }
        let id = labd::store::new_id("rsv");
        let r = Reservation {
            id,
            tenant_id: b.id.clone(),
            instrument_class: "reader2".into(),
            starts_at: now,
            ends_at: ends,
        };
        store.add_reservation(&r).unwrap();
        let run = ex.submit(&a.id, "a", "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs);
        let first_read = store
            .events(None, &run.id, 0)
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "task_started" && e.payload_json.contains("\"reader"))
            .expect("the run read its plate");
        assert!(
            first_read.at >= ends - 5,
            "acme's first read at {} waited for globex's reservation until {ends}",
            first_read.at
        );
    });
}

/// A liquid handler that stops answering mid-transfer and cannot say where its head is either:
/// the outcome is unknown, the command is not resent, a technician is asked; aborting fails the
/// run with that reason. (One that can say is settled without a person: see `recovery.rs` of
/// the devices crate.)
#[test]
fn a_timeout_mid_transfer_becomes_an_intervention() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let f = "timeout=G0 B,timeout=M119";
        let (store, ex, _) = faulty_rig(&[("lh1", f), ("lh2", f), ("lh3", f)]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        let run = ex.submit(&t.id, "d", "dilution", "sd.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        let driving = tokio::spawn({
            let ex = ex.clone();
            async move { ex.run_queued().await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let i = loop {
            if let Some(i) = store.interventions(None, true).unwrap().into_iter().next() {
                break i;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no intervention was opened: {:#?}",
                store.attempts(&run.id).unwrap().iter().rev().take(4).collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(i.instrument.as_deref().is_some_and(|x| x.starts_with("lh")), "{i:?}");
        assert!(i.todo.contains("done") && i.todo.contains("redo") && i.todo.contains("abort"), "{i:?}");
        let attempts = store.attempts(&run.id).unwrap();
        let last = attempts.last().unwrap();
        assert_eq!(last.outcome.as_deref(), Some("unknown"), "{last:?}");
        assert!(!last.intent.repeatable, "a liquid transfer is not safe to repeat");
        assert_eq!(attempts.iter().filter(|a| a.intent == last.intent).count(), 1, "it was not resent");
        store.resolve_intervention(&i.id, "abort", "tech-1").unwrap();
        let report =
            tokio::time::timeout(std::time::Duration::from_secs(120), driving).await.unwrap().unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Failed);
        assert!(report.runs[0].2.as_deref().unwrap().contains("a technician aborted"), "{:?}", report.runs);
    });
}

/// Quotas: at most N runs of a tenant at once (the rest wait their turn), and no new runs once
/// the month's device-hours are used.
#[test]
fn quotas_hold_runs_back_and_refuse_when_used_up() {
    use labd::store::{RunState, Usage};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        store.set_quotas(&t.id, Some(1), None, 0).unwrap();
        let plan = compile_example("growth-curve.yaml");
        let a = ex.submit(&t.id, "a", "growth", "g.yaml", &plan).unwrap();
        let b = ex.submit(&t.id, "b", "growth", "g.yaml", &plan).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == RunState::Succeeded), "{:?}", report.runs);
        let (a, b) = (store.run(None, &a.id).unwrap(), store.run(None, &b.id).unwrap());
        assert!(b.started_at.unwrap() >= a.finished_at.unwrap(), "the second run waited for the first");

        let u = store.create_tenant("umbrella", 1.0).unwrap();
        store.set_quotas(&u.id, None, Some(0.5), 0).unwrap();
        let spent = ex.submit(&u.id, "x", "growth", "g.yaml", &plan).unwrap();
        store
            .add_usage(&Usage {
                tenant_id: u.id.clone(),
                run_id: spent.id.clone(),
                instrument_class: "plate_reader".into(),
                instrument: "reader1".into(),
                device_seconds: 1800.0,
            })
            .unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(60), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Failed);
        assert!(report.runs[0].2.as_deref().unwrap().contains("quota of 0.5 device-hours"), "{:?}", report.runs);
    });
}

/// Two tenants' runs, planned together by the scheduler and carried out on the simulated site
/// over the real wire (PTYs, TCP, SiLA): both succeed, every command is journaled with its
/// outcome, results and usage are recorded, and each tenant sees only its own.
#[test]
fn the_executor_runs_two_tenants_on_the_simulated_site() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex) = executor_rig().await;
        let a = store.create_tenant("acme", 1.0).unwrap();
        let b = store.create_tenant("globex", 1.0).unwrap();
        let ra = ex
            .submit(&a.id, "a-1", "dilution", "serial-dilution.yaml", &compile_example("serial-dilution.yaml"))
            .unwrap();
        let rb = ex.submit(&b.id, "b-1", "growth", "growth-curve.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued())
            .await
            .expect("finishes")
            .unwrap();
        for (id, state, reason) in &report.runs {
            assert_eq!(*state, RunState::Succeeded, "run {id}: {reason:?}");
        }
        assert!(report.moves > 0, "plates were moved by the arms");
        for (tenant, run) in [(&a, &ra), (&b, &rb)] {
            let events = store.events(Some(&tenant.id), &run.id, 0).unwrap();
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gapless");
            assert!(events.iter().any(|e| e.kind == "task_finished"));
            assert!(!store.results(Some(&tenant.id), &run.id).unwrap().is_empty(), "the plate was read");
            assert!(store.attempts(&run.id).unwrap().iter().all(|a| a.outcome.as_deref() == Some("ok")));
        }
        assert!(store.open_attempts().unwrap().is_empty(), "every intent has its outcome");
        assert!(store.results(Some(&a.id), &rb.id).is_err(), "acme cannot read globex's results");
        let r = &store.results(Some(&a.id), &ra.id).unwrap()[0];
        assert_eq!((r.labware.as_str(), r.values.len(), r.unit.as_str()), ("plate", 96, "OD"));
        assert!(store
            .usage(Some(&a.id), 0)
            .unwrap()
            .iter()
            .any(|u| u.instrument_class == "liquid_handler" && u.device_seconds > 0.0));
        eprintln!(
            "executor: {} commands, {} moves, planned makespan {:.0} s",
            report.commands, report.moves, report.planned_makespan_s
        );
    });
}

/// A run on an idle lab is promised its planned end plus the margin when it joins the plan
/// (its `scheduled` event), finishes by that promise and no earlier than the plan allows
/// (the simulators take their estimated durations), and no `promise_broken` event follows.
#[test]
fn a_run_on_an_idle_lab_finishes_by_its_promise() {
    use labd::executor::{Executor, ExecutorConfig};
    use std::sync::Arc;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 1 device-second per 10 wall milliseconds: each command's own wall time (the journal,
        // the simulator's reply) counts for little device time, as on a real lab (at 1 ms the
        // run took 1.66× its plan in device seconds).
        let scale = devices::TimeScale(0.01);
        let store: Arc<dyn labd::store::Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let lab = Arc::new(labd::lab::Lab::simulated(labware::Site::sim().unwrap(), scale).await.unwrap());
        let ex = Executor::new(store.clone(), lab, ExecutorConfig { scale, ..ExecutorConfig::default() });
        let events = one_dilution(&store, &ex).await;
        let scheduled = events.iter().find(|e| e.kind == "scheduled").expect("a scheduled event");
        let s: serde_json::Value = serde_json::from_str(&scheduled.payload_json).unwrap();
        let (planned, promised) = (s["planned_end_s"].as_f64().unwrap(), s["promised_s"].as_f64().unwrap());
        let margin = scheduler::lab::promise::DEFAULT_MARGIN;
        assert!(
            (promised - planned * (1.0 + margin)).abs() < 1.0,
            "promised {promised} for a plan ending at {planned}"
        );
        let promised_at_ms = s["promised_at_ms"].as_i64().unwrap();
        assert!(s["promised_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{s}");
        let ended = events.iter().rev().find(|e| e.kind == "state").unwrap();
        assert!(ended.payload_json.contains("succeeded"), "{ended:?}");
        assert!(ended.at <= promised_at_ms, "ended at {} ms, promised by {promised_at_ms} ms: {events:?}", ended.at);
        let took_s = (ended.at - scheduled.at) as f64 / 10.0; // device seconds
        assert!(took_s >= 0.9 * planned, "the run took {took_s} device s, planned {planned}");
        assert!(!events.iter().any(|e| e.kind.starts_with("promise_")), "{events:?}");
    });
}

/// Every task on an instrument leaves what it really took; once a kind of work has taken
/// longer than estimated often enough, the next run is planned with the corrected estimate,
/// and once tasks spread widely around their corrected estimates, promised with more margin.
#[test]
fn plans_learn_how_long_tasks_really_take() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let first = one_dilution(&store, &ex).await;
        let took = store.task_durations(100).unwrap();
        let plan = compile_example("serial-dilution.yaml");
        let on_instruments = plan.tasks.iter().filter(|t| t.class.is_some()).count();
        assert_eq!(took.len(), on_instruments, "{took:?}");
        for d in &took {
            let task = &plan.tasks[d.task_id as usize];
            assert_eq!((d.kind.as_str(), d.estimated_s), (labd::experience::task_kind(task), task.duration_s));
            assert!(d.actual_s > 0.0 && !d.instrument.is_empty(), "{d:?}");
        }
        // The reader's reads have taken three times their estimate, five times over.
        let read = took.iter().find(|d| d.class == "plate_reader").expect("a read");
        for n in 0..labd::experience::MIN_SAMPLES as i64 {
            let slow = labd::experience::TaskDuration {
                task_id: 100 + n,
                actual_s: read.estimated_s * 3.0,
                at: read.at + 1 + n,
                ..read.clone()
            };
            assert!(store.record_duration(&slow).unwrap());
        }
        let reads: f64 = plan
            .tasks
            .iter()
            .filter(|t| {
                t.class.is_some_and(|c| c.as_str() == "plate_reader") && labd::experience::task_kind(t) == read.kind
            })
            .map(|t| t.duration_s)
            .sum();
        let second = one_more_dilution(&store, &ex, "k2").await;
        let planned = |events: &[labd::store::Event]| {
            let e = events.iter().find(|e| e.kind == "scheduled").expect("a scheduled event");
            serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap()["planned_end_s"].as_f64().unwrap()
        };
        let longer = planned(&second) - planned(&first);
        assert!(
            (longer - 2.0 * reads).abs() < 5.0,
            "planned {longer} s longer; the reads ({reads} s estimated) should count three times"
        );

        // Seals that take their estimate half the time and twice it the other half: the spread
        // left after correction widens the next promise beyond the default margin.
        for n in 0..20i64 {
            let seal = labd::experience::TaskDuration {
                task_id: 200 + n,
                class: "sealer".into(),
                kind: "seal".into(),
                estimated_s: 10.0,
                actual_s: if n % 2 == 0 { 10.0 } else { 20.0 },
                at: read.at + 100 + n,
                ..read.clone()
            };
            assert!(store.record_duration(&seal).unwrap());
        }
        let third = one_more_dilution(&store, &ex, "k3").await;
        let margin = |events: &[labd::store::Event]| {
            let e = events.iter().find(|e| e.kind == "scheduled").expect("a scheduled event");
            let v = serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap();
            v["promised_s"].as_f64().unwrap() / v["planned_end_s"].as_f64().unwrap() - 1.0
        };
        let base = scheduler::lab::promise::DEFAULT_MARGIN;
        assert!((margin(&first) - base).abs() < 0.01, "{}", margin(&first));
        assert!(margin(&third) >= base + 0.15, "{} against {base}", margin(&third));
    });
}

/// acme submits a serial dilution, which runs to success: its events.
async fn one_dilution(
    store: &std::sync::Arc<dyn labd::store::Store>,
    ex: &labd::executor::Executor,
) -> Vec<labd::store::Event> {
    let t = store.create_tenant("acme", 1.0).unwrap();
    dilution_of(store, ex, &t.id, "k").await
}

/// acme's next serial dilution, run to success: its events.
async fn one_more_dilution(
    store: &std::sync::Arc<dyn labd::store::Store>,
    ex: &labd::executor::Executor,
    key: &str,
) -> Vec<labd::store::Event> {
    let t = store.tenant_by_name("acme").unwrap();
    dilution_of(store, ex, &t.id, key).await
}

async fn dilution_of(
    store: &std::sync::Arc<dyn labd::store::Store>,
    ex: &labd::executor::Executor,
    tenant_id: &str,
    key: &str,
) -> Vec<labd::store::Event> {
    let plan = compile_example("serial-dilution.yaml");
    let run = ex.submit(tenant_id, key, "dilution", "serial-dilution.yaml", &plan).unwrap();
    let report = tokio::time::timeout(std::time::Duration::from_secs(120), ex.run_queued()).await.unwrap().unwrap();
    assert!(report.runs.iter().all(|r| r.1 == labd::store::RunState::Succeeded), "{:?}", report.runs);
    store.events(None, &run.id, 0).unwrap()
}

/// A run whose reader answers slowly finishes long after its promise: the tenant gets a
/// `promise_broken` event, before the run's final state closes its event log.
#[test]
fn a_run_finishing_after_its_promise_is_told_so() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 200 ms per reply at 1/10,000 of real time: 2,000 device seconds per command.
        let (store, ex, _) = faulty_rig(&[("reader1", "slow_ms=200"), ("reader2", "slow_ms=200")]).await;
        let events = one_dilution(&store, &ex).await;
        let broken = events.iter().position(|e| e.kind == "promise_broken").unwrap_or_else(|| panic!("{events:?}"));
        let b: serde_json::Value = serde_json::from_str(&events[broken].payload_json).unwrap();
        assert!(b["late_by_s"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["promised_at"].as_str().is_some() && b["finished_at"].as_str().is_some(), "{b}");
        assert_eq!(events.last().unwrap().kind, "state", "the final state comes last: {events:?}");
        assert!(broken < events.len() - 1);
    });
}

/// A spot run beside a standard one: both run to success; the spot run is promised nothing
/// (its `scheduled` event says so) and its device time is billed as spot, apart from the
/// standard run's.
#[test]
fn a_spot_run_is_promised_nothing_and_billed_as_spot() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        let plan = compile_example("serial-dilution.yaml");
        let submit = |key: &str, class: labware::ServiceClass| {
            store
                .submit_run(&labd::store::NewRun {
                    tenant_id: t.id.clone(),
                    idempotency_key: key.into(),
                    name: "dilution".into(),
                    source: "serial-dilution.yaml".into(),
                    plan_json: serde_json::to_string(&plan).unwrap(),
                    priority: 0,
                    class,
                })
                .unwrap()
                .0
        };
        let standard = submit("std", labware::ServiceClass::Standard);
        let spot = submit("spot", labware::ServiceClass::Spot);
        assert_eq!(store.run(None, &spot.id).unwrap().class, labware::ServiceClass::Spot);
        let report = tokio::time::timeout(std::time::Duration::from_secs(120), ex.run_queued()).await.unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == labd::store::RunState::Succeeded), "{:?}", report.runs);
        let scheduled = |run: &str| {
            let events = store.events(None, run, 0).unwrap();
            let e = events.iter().find(|e| e.kind == "scheduled").expect("a scheduled event");
            serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap()
        };
        let (s, p) = (scheduled(&standard.id), scheduled(&spot.id));
        assert_eq!((s["service_class"].as_str(), p["service_class"].as_str()), (Some("standard"), Some("spot")));
        assert!(s["promised_s"].as_f64().is_some(), "{s}");
        assert!(p["promised_s"].is_null() && p["promised_at"].is_null(), "{p}");
        let usage = store.usage(Some(&t.id), 0).unwrap();
        let lh = |class: labware::ServiceClass| {
            usage
                .iter()
                .find(|u| u.instrument_class == "liquid_handler" && u.service_class == class)
                .map_or(0.0, |u| u.device_seconds)
        };
        assert!(lh(labware::ServiceClass::Standard) > 0.0 && lh(labware::ServiceClass::Spot) > 0.0, "{usage:?}");
    });
}

/// Runs waiting are planned again with what the lab learned after they came. acme's three
/// serial dilutions go in together; while the first is on lh3, the lab learns that liquid
/// handling takes three times its estimate (five tasks), and a fourth run arrives. The third,
/// still waiting behind two runs (time enough for the arrival however busy the machine), is
/// re-planned with its liquid handling three times as long: it is told it will end later by at
/// least twice that task's estimate (without the correction, by what the first run's overrun
/// pushes it, under a minute here, against 2 × 261 s).
#[test]
fn runs_waiting_are_planned_again_with_what_the_lab_learned() {
    use labd::executor::{Executor, ExecutorConfig};
    use std::sync::Arc;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let scale = devices::TimeScale(0.01);
        let store: Arc<dyn labd::store::Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let lab = Arc::new(
            labd::lab::Lab::simulated_with_faults(labware::Site::sim().unwrap(), scale, &Default::default())
                .await
                .unwrap(),
        );
        let config =
            ExecutorConfig { scale, probe_every: std::time::Duration::from_millis(200), ..ExecutorConfig::default() };
        let ex = Arc::new(Executor::new(store.clone(), lab, config));
        let t = store.create_tenant("acme", 1.0).unwrap();
        let plan = compile_example("serial-dilution.yaml");
        let handling = plan.tasks.iter().position(|t| t.class.is_some_and(|c| c.as_str() == "liquid_handler")).unwrap();
        let first = ex.submit(&t.id, "a", "dilution", "serial-dilution.yaml", &plan).unwrap();
        ex.submit(&t.id, "b", "dilution", "serial-dilution.yaml", &plan).unwrap();
        let waiting = ex.submit(&t.id, "w", "dilution", "serial-dilution.yaml", &plan).unwrap();
        let driving = tokio::spawn({
            let ex = ex.clone();
            async move { ex.run_queued().await }
        });
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !store
            .events(None, &first.id, 0)
            .unwrap()
            .iter()
            .any(|e| e.kind == "task_started" && e.payload_json.contains("lh3"))
        {
            assert!(std::time::Instant::now() < until, "the first run never reached lh3");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let task = &plan.tasks[handling];
        for n in 0..labd::experience::MIN_SAMPLES as i64 {
            let slow = labd::experience::TaskDuration {
                run_id: first.id.clone(),
                task_id: 100 + n,
                instrument: "lh3".into(),
                class: "liquid_handler".into(),
                kind: labd::experience::task_kind(task).into(),
                estimated_s: task.duration_s,
                actual_s: 3.0 * task.duration_s,
                at: n,
            };
            assert!(store.record_duration(&slow).unwrap());
        }
        ex.submit(&t.id, "c", "dilution", "serial-dilution.yaml", &plan).unwrap();
        let report =
            tokio::time::timeout(std::time::Duration::from_secs(180), driving).await.unwrap().unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == labd::store::RunState::Succeeded), "{:?}", report.runs);
        let events = store.events(None, &waiting.id, 0).unwrap();
        let later: Vec<f64> = events
            .iter()
            .filter(|e| e.kind == "rescheduled")
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap())
            .map(|v| v["planned_end_s"].as_f64().unwrap() - v["was_s"].as_f64().unwrap())
            .collect();
        let want = 2.0 * task.duration_s;
        assert!(
            later.iter().any(|&d| d > 0.8 * want),
            "the waiting run was told {later:?} s later; its liquid handling ({} s estimated) should count three times",
            task.duration_s
        );
    });
}
