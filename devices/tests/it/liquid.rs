//! The liquid-handler driver against its simulator over a PTY: the compiled 96-well serial
//! dilution ends with the simulator's own per-well volumes equal to the compiler's prediction,
//! and physically impossible motion is refused.

use crate::support::repo;
use devices::driver::liquid::{LiquidConfig, LiquidHandlerDriver};
use devices::link::{Endpoint, Link};
use devices::sim::liquid::{error_reply, LiquidSim};
use devices::sim::{spawn_serial, Faults, Pty, SimClock};
use devices::{family, Family, Instrument, InstrumentError, TimeScale};
use labware::{Library, Site};
use protocols::plan::{CommandOp, RunPlan};
use std::sync::{Arc, Mutex};

const FAST: TimeScale = TimeScale(0.0001);

type State = Arc<Mutex<devices::sim::liquid::LiquidState>>;

async fn rig(instrument: &str) -> (LiquidHandlerDriver, State, Pty) {
    let site = Site::sim().unwrap();
    let inst = site.instruments.iter().find(|i| i.id == instrument).unwrap().clone();
    let sim = LiquidSim::new(&inst, Library::shipped());
    let state = sim.state.clone();
    let pty = spawn_serial(sim, Faults::default(), SimClock::new(FAST), error_reply).unwrap();
    let link = Link::open(Endpoint::Serial(pty.path.clone())).await.unwrap();
    let driver = LiquidHandlerDriver::new(&inst, Library::shipped(), link, LiquidConfig::default());
    (driver, state, pty)
}

fn compile(file: &str) -> (RunPlan, protocols::check::Tracked) {
    let text = std::fs::read_to_string(repo().join("protocols/examples").join(file)).unwrap();
    let c = protocols::compile(
        &protocols::SourceFile::new(file, text),
        protocols::Format::Auto,
        &Site::sim().unwrap(),
        &Library::shipped(),
    );
    (c.plan.unwrap(), c.tracked.unwrap())
}

#[tokio::test]
async fn serial_dilution_volumes_and_compositions_in_the_simulator_match_the_compiler() {
    let (plan, tracked) = compile("serial-dilution.yaml");
    // The handler the plan can use: lh3, whose 8-channel head does the column-wise work.
    let lh = plan.tasks.iter().find(|t| t.class == Some(labware::InstrumentClass::LiquidHandler)).unwrap();
    let (driver, state, _pty) = rig(&lh.instruments[0]).await;
    // The technician loads the deck as the plan's loading list says, liquid by liquid.
    let bench = state.lock().unwrap().bench.clone();
    for lw in &plan.labware {
        assert_eq!(lw.contents.keys().collect::<Vec<_>>(), lw.composition.keys().collect::<Vec<_>>());
        for (well, mix) in &lw.composition {
            for (liquid, ul) in mix {
                bench.lock().unwrap().fill(&lw.name, well, liquid, *ul);
            }
        }
    }
    assert_eq!(state.lock().unwrap().volume("reservoir", "A1"), 12_000.0);
    assert!(driver.identify().await.unwrap().firmware.contains("lw-sim"));
    driver.prepare(&plan).await.unwrap();
    let mut sent = 0;
    for task in &plan.tasks {
        for cmd in &task.commands {
            if family(&cmd.op) == Family::LiquidHandler {
                driver.start(&cmd.op).await.unwrap().finish().await.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.op));
                sent += 1;
            }
        }
    }
    let planned: usize =
        plan.tasks.iter().flat_map(|t| &t.commands).filter(|c| family(&c.op) == Family::LiquidHandler).count();
    assert_eq!(sent, planned, "the whole dilution ran");
    assert!(plan.tasks.iter().any(|t| t.pipettes.iter().any(|p| p == "p300_multi")), "column-wise, with the head");
    let s = state.lock().unwrap();
    let mut compared = 0;
    let mut worst: f64 = 0.0;
    for (slot, lw) in plan.labware.iter().enumerate() {
        let def = Library::shipped().get(&lw.load_name).unwrap().clone();
        if def.tip.is_some() {
            continue;
        }
        for (j, w) in def.wells.iter().enumerate() {
            let predicted = tracked.wells[slot][j].volume();
            let simulated = s.volume(&lw.name, &w.name);
            worst = worst.max((predicted - simulated).abs());
            assert!(
                (predicted - simulated).abs() <= 0.1,
                "{} {}: compiler predicts {predicted:.3} µL, simulator measured {simulated:.3} µL",
                lw.name,
                w.name
            );
            // Liquid by liquid: the stock is diluted along the row as the compiler tracks it.
            let b = bench.lock().unwrap();
            let empty = Default::default();
            let mix = b.mixture(&lw.name, &w.name).unwrap_or(&empty);
            for (liquid, ul) in &tracked.wells[slot][j].contents {
                let got = mix.get(liquid).copied().unwrap_or(0.0);
                assert!(
                    (ul - got).abs() <= 0.1,
                    "{} {} {liquid}: compiler {ul:.3} µL, simulator {got:.3} µL",
                    lw.name,
                    w.name
                );
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 96 + 12);
    assert!(s.volume("plate", "A12") > 100.0, "the last column holds liquid");
    assert!(s.tips.iter().all(Option::is_none), "all tips were dropped");
    eprintln!("serial dilution: {sent} commands, worst per-well difference {worst:.6} µL, waste {:.2} µL", s.waste_ul);
}

#[tokio::test]
async fn the_simulator_refuses_impossible_motion() {
    let (plan, _) = compile("serial-dilution.yaml");
    let (driver, state, _pty) = rig("lh1").await;
    state.lock().unwrap().fill("reservoir", "A1", 50.0);
    driver.prepare(&plan).await.unwrap();
    // The driver itself refuses an aspirate with no tip before anything moves.
    let e = driver
        .start(&CommandOp::Aspirate {
            pipette: "p300_single".into(),
            labware: "reservoir".into(),
            well: "A1".into(),
            volume_ul: 10.0,
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no tip"), "{e}");
    // Raw G-code that a buggy driver might send: the simulator refuses it.
    driver.start(&CommandOp::Home).await.unwrap().finish().await.unwrap();
    let over_reservoir = {
        let s = state.lock().unwrap();
        s.deck.well_bottom("reservoir", "A1").unwrap()
    };
    driver.gcode(&format!("G0 X{} Y{}", over_reservoir.x, over_reservoir.y)).await.unwrap();
    let e = driver.gcode("G0 Z0.5").await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { message, .. } if message.contains("below the bottom")), "{e}");
    let e = driver.gcode("G0 B25").await.unwrap_err();
    assert!(e.to_string().contains("past its travel"), "{e}");
    // Drawing up with a bare nozzle inside a well.
    driver.gcode("G0 Z20").await.unwrap();
    let e = driver.gcode("G0 B10").await.unwrap_err();
    assert!(e.to_string().contains("no tip"), "{e}");
    // Aspirating more than the well holds (with a tip).
    driver.gcode("G0 Z150").await.unwrap();
    driver
        .start(&CommandOp::PickUpTip { pipette: "p300_single".into(), rack: "tips_a".into(), well: "A1".into() })
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    let e = driver
        .start(&CommandOp::Aspirate {
            pipette: "p300_single".into(),
            labware: "reservoir".into(),
            well: "A1".into(),
            volume_ul: 200.0,
        })
        .await
        .unwrap()
        .finish()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("would draw air"), "{e}");
    assert_eq!(state.lock().unwrap().volume("reservoir", "A1"), 50.0, "a refused aspirate moves no liquid");
    // The controller was reset after the refused block: the next command re-homes and runs.
    driver.start(&CommandOp::DropTip { pipette: "p300_single".into() }).await.unwrap().finish().await.unwrap();
    assert!(state.lock().unwrap().tips.iter().all(Option::is_none));
}

#[tokio::test]
async fn an_eight_channel_head_fills_a_column_at_once() {
    let (plan, _) = compile("serial-dilution.yaml");
    let (driver, state, _pty) = rig("lh3").await;
    for w in ["A1", "B1", "C1", "D1", "E1", "F1", "G1", "H1"] {
        state.lock().unwrap().fill("plate", w, 0.0);
    }
    state.lock().unwrap().fill("reservoir", "A1", 12_000.0);
    driver.prepare(&plan).await.unwrap();
    let run = |op: CommandOp| {
        let d = driver.clone();
        async move { d.start(&op).await.unwrap().finish().await.unwrap() }
    };
    let p = "p300_multi".to_string();
    run(CommandOp::PickUpTip { pipette: p.clone(), rack: "tips_a".into(), well: "A1".into() }).await;
    run(CommandOp::Aspirate { pipette: p.clone(), labware: "reservoir".into(), well: "A1".into(), volume_ul: 50.0 })
        .await;
    run(CommandOp::Dispense { pipette: p.clone(), labware: "plate".into(), well: "A2".into(), volume_ul: 50.0 }).await;
    run(CommandOp::DropTip { pipette: p }).await;
    let s = state.lock().unwrap();
    for row in ["A", "B", "C", "D", "E", "F", "G", "H"] {
        assert!((s.volume("plate", &format!("{row}2")) - 50.0).abs() < 1e-3, "{row}2");
        assert!(s.tips_used.contains(&("tips_a".to_string(), format!("{row}1"))), "tip {row}1 taken");
    }
    assert!((s.volume("reservoir", "A1") - (12_000.0 - 400.0)).abs() < 1e-3);
}

/// After a task failed with a tip on (holding liquid), the driver drops it in the trash, homes,
/// and proves with the controller's switches that no tip is left; the next command starts clean.
#[tokio::test]
async fn a_tip_left_on_by_a_failed_task_is_dropped_and_the_head_homed() {
    let (plan, _) = compile("serial-dilution.yaml");
    let (driver, state, _pty) = rig("lh1").await;
    state.lock().unwrap().fill("reservoir", "A1", 500.0);
    driver.prepare(&plan).await.unwrap();
    let tip = CommandOp::PickUpTip { pipette: "p300_single".into(), rack: "tips_a".into(), well: "A1".into() };
    driver.start(&tip).await.unwrap().finish().await.unwrap();
    // The instrument's row in the console says it in words, not in the firmware's.
    let said = driver.status().await.unwrap().detail;
    assert!(said.starts_with("a 300 µL tip on, ") && said.contains("labware on the deck, head at X "), "{said}");
    assert!(!said.contains("MCS"), "{said}");
    let draw = CommandOp::Aspirate {
        pipette: "p300_single".into(),
        labware: "reservoir".into(),
        well: "A1".into(),
        volume_ul: 100.0,
    };
    driver.start(&draw).await.unwrap().finish().await.unwrap();
    // What the failed task left: a tip with 100 µL, the head low in a well, the controller halted.
    driver.gcode("G0 Z70").await.unwrap();
    driver.gcode("G0 Z0").await.unwrap_err();
    let did = driver.make_safe().await.unwrap();
    assert_eq!(did, "dropped the tip in the trash, homed");
    let said = driver.status().await.unwrap().detail;
    assert!(said.starts_with("no tip on, homed, "), "{said}");
    {
        let s = state.lock().unwrap();
        assert!(s.tips.iter().all(Option::is_none), "no tip on the head");
        assert!((s.waste_ul - 100.0).abs() < 0.01, "the tip's liquid went to the trash: {}", s.waste_ul);
        assert_eq!(s.halted, None);
    }
    // The next run's first command: a tip for another pipette (a tool change needs no tip on).
    let next = CommandOp::PickUpTip { pipette: "p20_single".into(), rack: "tips_a".into(), well: "B1".into() };
    let r = driver.start(&next).await;
    assert!(!matches!(&r, Err(e) if e.to_string().contains("tip on")), "{r:?}");
    // Nothing to do the second time: it only homes.
    let (driver, _state, _pty) = rig("lh1").await;
    assert_eq!(driver.make_safe().await.unwrap(), "homed");
}

/// Every liquid-handler task of every example, run through the real driver against the
/// simulator: the compiler's estimate of each task against the simulator's own motion time.
#[tokio::test]
async fn quoted_liquid_handling_agrees_with_the_simulators_timing_within_ten_percent() {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("protocols/examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    let mut report = Vec::new();
    let mut worst: f64 = 0.0;
    for file in &files {
        let (plan, _) = compile(file);
        for task in plan.tasks.iter().filter(|t| t.class == Some(labware::InstrumentClass::LiquidHandler)) {
            let instrument = task.instruments.first().map_or("lh1", String::as_str);
            let (driver, state, _pty) = rig(instrument).await;
            let bench = state.lock().unwrap().bench.clone();
            for lw in &plan.labware {
                for (well, ul) in &lw.contents {
                    bench.lock().unwrap().fill(&lw.name, well, "x", *ul);
                }
            }
            driver.prepare(&plan).await.unwrap();
            // Homed first, as a running lab's handler is (the driver homes once per
            // connection, not per task): the comparison is about the task's own motion.
            driver.start(&protocols::plan::CommandOp::Home).await.unwrap().finish().await.unwrap();
            let before = state.lock().unwrap().busy_s;
            for cmd in &task.commands {
                if family(&cmd.op) == Family::LiquidHandler {
                    driver.start(&cmd.op).await.unwrap().finish().await.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.op));
                }
            }
            let took = state.lock().unwrap().busy_s - before;
            let ratio = task.duration_s / took;
            worst = worst.max((ratio - 1.0).abs());
            report.push(format!(
                "{file} task {} ({}, {} commands, {instrument}): quoted {:.0} s, simulator {took:.0} s, ratio {ratio:.3}",
                task.id,
                task.label,
                task.commands.len(),
                task.duration_s
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(worst <= 0.10, "a quote is off by {:.1}%:\n{}", worst * 100.0, report.join("\n"));
}
