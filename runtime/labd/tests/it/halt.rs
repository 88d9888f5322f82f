//! A stop that stops: an emergency stop reaches every driver at once, the command it cut short
//! holds its run with an intervention instead of failing it, nothing is sent while the lab is
//! halted, and after the resume the run finishes.

use super::{faulty_rig, heavy};
use labd::halt::{emergency_stop, Halt};
use labd::store::RunState;
use std::time::Duration;

#[test]
fn an_emergency_stop_holds_runs_and_a_resume_lets_them_finish() {
    let _machine = heavy();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, lab) = faulty_rig(&[]).await;
        let ex = std::sync::Arc::new(ex);
        let board = ex.board();
        let t = store.create_tenant("acme", 1.0).unwrap();
        // Ten hours of shaking: 3.6 s at the rig's time scale, long enough to be stopped.
        let text = "labwright: 1\nname: long shake\nliquids:\n  water: water\nlabware:\n  plate:\n    type: corning_96_wellplate_360ul_flat\n    contents:\n      \"A1:H12\": { water: 100 uL }\nsteps:\n  - shake: { labware: plate, speed: 800 rpm, duration: 10 h }\n";
        let c = protocols::compile(
            &protocols::SourceFile::new("shake.yaml", text.to_string()),
            protocols::Format::Auto,
            &labware::Site::sim().unwrap(),
            &labware::Library::shipped(),
        );
        let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let run = ex.submit(&t.id, "shake-1", "long shake", "shake.yaml", &plan).unwrap();
        let worker = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run_queued().await })
        };
        let shaker = plan.tasks.iter().find(|t| t.label.contains("shake")).and_then(|t| t.instruments.first().cloned()).unwrap();
        while board.running(&shaker).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // the shake is under way

        let drivers = labd::lab::Connected::of(lab.clone()).drivers();
        let n = drivers.len();
        let stopped = emergency_stop(&board.halt, drivers, "tech-1", "smoke in cell 2").await;
        assert_eq!(stopped.len(), n, "every instrument and arm was told");
        assert!(stopped.iter().all(|d| d.error.is_none()), "{stopped:?}");
        let slowest = stopped.iter().map(|d| d.elapsed).max().unwrap();
        eprintln!("emergency stop: {n} drivers, slowest took {slowest:?}");

        // The shake was cut short: its run waits for a person, it did not fail.
        let held = loop {
            let open = store.interventions(None, true).unwrap();
            if let Some(i) = open.into_iter().find(|i| i.run_id == run.id) {
                break i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(held.what.contains("emergency stop by tech-1 (smoke in cell 2)"), "{}", held.what);
        // Held, with why, where the tenant and the console see it.
        let state = || store.run(None, &run.id).unwrap();
        while state().state != RunState::AwaitingRecovery {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(state().reason.unwrap_or_default().contains("emergency stop by tech-1"));
        // Redo while the lab is still stopped: nothing goes out until it is resumed.
        store.resolve_intervention(&held.id, "redo", "tech-1").unwrap();
        while state().state != RunState::Running {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = store.attempts(&run.id).unwrap().len();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.attempts(&run.id).unwrap().len(), before, "no command is sent while the lab is stopped");
        assert!(matches!(board.halt.get(), Halt::Stopped { .. }));

        board.halt.set(Halt::Clear);
        let report = tokio::time::timeout(Duration::from_secs(120), worker).await.unwrap().unwrap().unwrap();
        assert_eq!(report.runs.len(), 1);
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs[0].2);
        assert!(store.attempts(&run.id).unwrap().len() > before, "the shake was sent again");
    });
}

/// `labctl halt` and `labctl resume` through labd's API: staff only; an emergency stop says how
/// long each instrument and arm took to take it.
#[test]
fn labctl_halts_and_resumes_the_lab_and_only_staff_may() {
    let _machine = heavy();
    let lab = super::serve_lab("halt", "0.001");
    let scientist = lab.tenant("acme");
    let (code, so, se) = lab.ctl(&scientist, &["halt", "--emergency", "--reason", "curious"]);
    assert_ne!(code, 0, "a scientist cannot stop the lab: {so}{se}");
    let v = lab.json(&lab.admin, &["halt", "--reason", "spill on the deck", "--format", "json"]);
    assert_eq!(v["state"], "paused");
    assert_eq!(v["reason"], "spill on the deck");
    let v = lab.json(&lab.admin, &["halt", "--emergency", "--reason", "smoke in cell 2", "--format", "json"]);
    assert_eq!(v["state"], "stopped");
    let stopped = v["stopped"].as_array().unwrap();
    let site = labware::Site::sim().unwrap();
    assert_eq!(stopped.len(), site.instruments.len() + site.arms.len(), "{v}");
    assert!(stopped.iter().all(|d| d["error"].is_null() && d["elapsed_ms"].as_f64().is_some()), "{v}");
    let (code, so, _) = lab.ctl(&lab.admin, &["resume"]);
    assert_eq!(code, 0);
    assert!(so.contains("lab resumed"), "{so}");
}
