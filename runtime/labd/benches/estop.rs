//! How fast an emergency stop reaches the lab: every driver of the simulated site and of the
//! Opentrons site told to stop (`labd::halt::emergency_stop`) while three commands are under way
//! — a ten-hour shake on the heater-shaker, a read on the plate reader, and an aspirate the
//! simulated Opentrons robot never finishes — then the time until each driver confirmed and until
//! each command under way had ended. A status exchange with the heater-shaker is the same-run
//! floor.
//!
//! `cargo bench -p labd --bench estop` (ROUNDS=N to change the sample size).

use labd::halt::{emergency_stop, Halt, HaltSwitch};
use protocols::plan::CommandOp;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pct(mut v: Vec<Duration>, q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e3
}

fn report(name: &str, v: Vec<Duration>) {
    let n = v.len();
    println!(
        "{name:<58} n={n:<4} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        pct(v.clone(), 0.5),
        pct(v.clone(), 0.99),
        pct(v, 1.0)
    );
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    rt.block_on(async {
        let scale = devices::TimeScale(0.01);
        let sim = Arc::new(labd::lab::Lab::simulated(labware::Site::sim().unwrap(), scale).await.unwrap());
        let ot_site =
            labware::Site::from_toml(&std::fs::read_to_string(root.join("sites/opentrons.toml")).unwrap()).unwrap();
        let faults: BTreeMap<String, devices::sim::Faults> =
            [("ot2".to_string(), devices::sim::Faults::parse("timeout=aspirate").unwrap())].into();
        let ot = Arc::new(labd::lab::Lab::simulated_with_faults(ot_site.clone(), scale, &faults).await.unwrap());
        let connected = labd::lab::Connected::of(sim.clone());
        connected.add(ot.clone());
        let drivers = connected.drivers();
        let source = std::fs::read_to_string(root.join("protocols/examples/serial-dilution.yaml")).unwrap();
        let plan = protocols::compile(
            &protocols::SourceFile::new("sd.yaml", source),
            protocols::Format::Auto,
            &ot_site,
            &labware::Library::shipped(),
        )
        .plan
        .unwrap();
        if let Some(b) = &ot.simulated {
            if let Ok(mut b) = b.bench.lock() {
                b.fill("reservoir", "A1", "water", 15_000.0);
            }
        }
        let hs = sim.instruments["hs1"].clone();
        let reader = sim.instruments["reader1"].clone();
        let ot2 = ot.instruments["ot2"].clone();
        let switch = HaltSwitch::default();
        let (mut floor, mut confirmed) = (Vec::new(), Vec::new());
        let (mut shake_ended, mut read_ended, mut aspirate_ended) = (Vec::new(), Vec::new(), Vec::new());
        let columns = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];
        let rows = ["A", "B", "C", "D", "E", "F", "G", "H"];
        for round in 0..rounds {
            let t = Instant::now();
            hs.status().await.unwrap();
            floor.push(t.elapsed());
            // Three commands under way.
            hs.start(&CommandOp::Latch { open: false }).await.unwrap().finish().await.unwrap();
            let shake = hs
                .start(&CommandOp::Shake { labware: "p".into(), rpm: 800.0, duration_s: 36_000.0, temperature_c: None })
                .await
                .unwrap();
            let read = reader
                .start(&CommandOp::ReadAbsorbance {
                    labware: format!("bench-{round}"),
                    wells: vec!["A1".into()],
                    wavelengths_nm: vec![600.0],
                })
                .await
                .unwrap();
            ot2.prepare(&plan).await.unwrap();
            let well = format!("{}{}", rows[round % 8], columns[(round / 8) % 12]);
            ot2.start(&CommandOp::PickUpTip { pipette: "p300_single_gen2".into(), rack: "tips_a".into(), well })
                .await
                .unwrap()
                .finish()
                .await
                .unwrap();
            let aspirate = ot2
                .start(&CommandOp::Aspirate {
                    pipette: "p300_single_gen2".into(),
                    labware: "reservoir".into(),
                    well: "A1".into(),
                    volume_ul: 50.0,
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let asked = Instant::now();
            let stopped = emergency_stop(&switch, drivers.clone(), "bench", "emergency stop bench").await;
            assert!(stopped.iter().all(|d| d.error.is_none()), "{stopped:?}");
            confirmed.push(stopped.iter().map(|d| d.elapsed).max().unwrap_or_default());
            let ended = |e: devices::Execution| async move {
                let r = e.finish().await;
                (r, asked.elapsed())
            };
            let ((a, ta), (b, tb), (c, tc)) = tokio::join!(ended(shake), ended(read), ended(aspirate));
            shake_ended.push(ta);
            read_ended.push(tb);
            aspirate_ended.push(tc);
            assert!(a.is_err() && c.is_err(), "the shake and the aspirate were cut short: {a:?} {c:?}");
            let _ = b; // a read may end with its values if it was nearly done
            switch.set(Halt::Clear);
            // The robot's run was stopped with a tip on: a technician takes it off (the next
            // round prepares a new run); the reader may still hold the plate.
            if let Some(robot) = ot.simulated.as_ref().and_then(|s| s.opentrons.get("ot2")) {
                if let Ok(mut s) = robot.state.lock() {
                    s.mounts.values_mut().for_each(|c| c.tips.iter_mut().for_each(|t| *t = None));
                }
            }
            reader.make_safe().await.unwrap();
        }
        println!("emergency stop: {} drivers, {rounds} rounds, time scale {}", drivers.len(), scale.0);
        report("floor: one heater-shaker status exchange", floor);
        report("every driver confirmed the stop (slowest driver)", confirmed);
        report("the heater-shaker's ten-hour shake had ended", shake_ended);
        report("the plate reader's read had ended", read_ended);
        report("the Opentrons robot's endless aspirate had ended", aspirate_ended);
    });
}
