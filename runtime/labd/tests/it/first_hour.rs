//! The two protocols a new scientist wrote from the docs in the first hour (issue 15): a Bradford
//! assay and a 384-well dose-response with a 48 h incubation and a luminescence read. Both run to
//! success in the simulated lab, their results are values a scientist can use (a standard curve,
//! replicates that agree), the read waits for the only reader that can do it while it is in
//! maintenance during the incubation, and the quoted device time of the instruments' work agrees
//! with what the simulated instruments took within 10%.

use crate::{compile_example, faulty_rig, task_instruments};
use labd::store::RunState;
use std::time::{Duration, Instant};

/// Device seconds the simulated liquid handlers and readers have worked so far.
fn instrument_seconds(lab: &labd::lab::Lab) -> f64 {
    let sims = lab.simulated.as_ref().unwrap();
    let lh: f64 = sims.liquid.values().map(|s| s.lock().unwrap().busy_s).sum();
    lh + sims.readers.values().map(|r| r.busy_s()).sum::<f64>()
}

/// Quoted device seconds of the plan's liquid-handler and reader tasks.
fn quoted_seconds(plan: &protocols::plan::RunPlan) -> f64 {
    use labware::InstrumentClass::{LiquidHandler, PlateReader};
    plan.tasks.iter().filter(|t| matches!(t.class, Some(LiquidHandler | PlateReader))).map(|t| t.duration_s).sum()
}

fn within_ten_percent(what: &str, quoted: f64, took: f64) {
    let ratio = quoted / took;
    eprintln!(
        "{what}: quoted {quoted:.0} s of liquid handling and reading, the instruments took {took:.0} s ({ratio:.3})"
    );
    assert!((ratio - 1.0).abs() <= 0.10, "{what}: quoted {quoted:.0} s, took {took:.0} s");
}

#[test]
fn a_bradford_assay_gives_a_standard_curve_and_agreeing_duplicates() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, lab) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        let plan = compile_example("bradford.yaml");
        let before = instrument_seconds(&lab);
        let run = ex.submit(&t.id, "bradford", "bradford", "bradford.yaml", &plan).unwrap();
        let report = tokio::time::timeout(Duration::from_secs(300), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", store.run(None, &run.id).unwrap().reason);
        within_ten_percent("bradford", quoted_seconds(&plan), instrument_seconds(&lab) - before);
        let results = store.results(Some(&t.id), &run.id).unwrap();
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert_eq!((r.kind.as_str(), r.unit.as_str(), r.wavelengths_nm.as_slice()), ("absorbance", "OD", &[595.0][..]));
        let od = |well: &str| r.values[r.wells.iter().position(|w| w == well).unwrap()];
        // The standard curve: 2 mg/mL halved seven times, then the blank; duplicates agree.
        let curve: Vec<f64> = (1..=9).map(|c| (od(&format!("A{c}")) + od(&format!("B{c}"))) / 2.0).collect();
        eprintln!("bradford standard curve (A595, 1:2 from 2 mg/mL, then blank): {curve:.3?}");
        assert!(curve.windows(2).all(|w| w[0] > w[1]), "falls with each dilution: {curve:?}");
        for c in 1..=9 {
            let (a, b) = (od(&format!("A{c}")), od(&format!("B{c}")));
            assert!((a - b).abs() <= 0.05 * a.max(b) + 0.01, "column {c}: duplicates {a} and {b}");
        }
        // Each dilution halves the signal above the blank (linear in protein, as the liquids say).
        let blank = curve[8];
        for w in curve[..4].windows(2) {
            let halving = (w[1] - blank) / (w[0] - blank);
            assert!((halving - 0.5).abs() < 0.1, "a 1:2 step reads half: {halving} in {curve:?}");
        }
        // Samples in the order of their protein content, duplicates agreeing.
        let samples: Vec<f64> = (1..=6).map(|c| (od(&format!("C{c}")) + od(&format!("D{c}"))) / 2.0).collect();
        assert!(samples.windows(2).all(|w| w[0] > w[1]), "{samples:?}");
        assert!(od("C7") < 0.05 && od("D9") < 0.05, "empty wells read the plate's blank");
    });
}

#[test]
fn a_384_well_dose_response_waits_for_the_luminescence_reader_through_its_maintenance() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, lab) = faulty_rig(&[]).await;
        let ex = std::sync::Arc::new(ex);
        let t = store.create_tenant("acme", 1.0).unwrap();
        let plan = compile_example("dose-response-384.yaml");
        let read = plan.tasks.iter().find(|t| t.label.starts_with("read luminescence")).unwrap();
        assert_eq!(read.instruments, ["reader1"]);
        let before = instrument_seconds(&lab);
        let run = ex.submit(&t.id, "dose", "dose-response", "dose-response-384.yaml", &plan).unwrap();
        let worker = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run_queued().await })
        };
        // Once the incubation has begun, reader1 goes into maintenance.
        let incubate = plan.tasks.iter().position(|t| t.label.starts_with("incubate")).unwrap();
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            let events = store.events(None, &run.id, 0).unwrap();
            let started = events.iter().any(|e| {
                e.kind == "task_started"
                    && serde_json::from_str::<serde_json::Value>(&e.payload_json).unwrap()["task"] == incubate
            });
            if started {
                break;
            }
            assert!(Instant::now() < until, "the incubation did not start: {events:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.set_maintenance("reader1", Some(("lamp replacement", "tech-1"))).unwrap();
        ex.board().set_unavailable("reader1", Some("maintenance: lamp replacement".into()));
        // The 48 h incubation is 17 s here; past it, everything but the read has happened.
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            let finished = store.events(None, &run.id, 0).unwrap().iter().filter(|e| e.kind == "task_finished").count();
            if finished == plan.tasks.len() - 1 {
                break;
            }
            assert!(Instant::now() < until, "the work before the read did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await; // 5,000 device-seconds
        assert!(!task_instruments(&store).iter().any(|i| i.starts_with("reader")), "the read waits for reader1");
        assert_eq!(store.run(None, &run.id).unwrap().state, RunState::Running);
        store.set_maintenance("reader1", None).unwrap();
        let report = tokio::time::timeout(Duration::from_secs(300), worker).await.unwrap().unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", store.run(None, &run.id).unwrap().reason);
        let readers: Vec<String> = task_instruments(&store).into_iter().filter(|i| i.starts_with("reader")).collect();
        assert_eq!(readers, ["reader1"]);
        within_ten_percent("dose-response", quoted_seconds(&plan), instrument_seconds(&lab) - before);
        let results = store.results(Some(&t.id), &run.id).unwrap();
        let r = &results[0];
        assert_eq!((r.kind.as_str(), r.unit.as_str(), r.values.len()), ("luminescence", "RLU", 384));
        let rlu = |well: &str| r.values[r.wells.iter().position(|w| w == well).unwrap()];
        // Wells with cells glow; background wells (no cells: columns 12 and 24) read dark counts.
        assert!(rlu("A1") > 10_000.0 && rlu("P22") > 10_000.0, "{} {}", rlu("A1"), rlu("P22"));
        assert!(rlu("A12") < 100.0 && rlu("P24") < 100.0, "{} {}", rlu("A12"), rlu("P24"));
    });
}
