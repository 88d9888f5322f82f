//! The PF400-style arm over TCP and the LWSP/1 stations over PTYs, against their simulators.

use devices::codec::pf400::is_collision;
use devices::driver::arm::{ArmConfig, ArmDriver};
use devices::driver::station::{StationConfig, StationDriver, StationKind};
use devices::link::{Endpoint, Link};
use devices::sim::arm::{self, ArmSim};
use devices::sim::station::{self, StationSim};
use devices::sim::{spawn_serial, spawn_tcp, Faults, SimClock};
use devices::{Instrument, InstrumentError, TimeScale};
use protocols::plan::CommandOp;
use std::time::Duration;

const FAST: TimeScale = TimeScale(0.01);

fn nests() -> Vec<String> {
    ["hotel1", "lh1", "lh2", "handoff"].iter().map(|s| s.to_string()).collect()
}

async fn arm(faults: &str, plates_at: &[&str]) -> ArmDriver {
    let mut sim = ArmSim::new(&nests());
    for p in plates_at {
        sim.place(p);
    }
    let addr = spawn_tcp(sim, Faults::parse(faults).unwrap(), SimClock::new(FAST), arm::error_reply, "127.0.0.1:0")
        .await
        .unwrap();
    let link = Link::open(Endpoint::Tcp(addr.to_string())).await.unwrap();
    ArmDriver::new(nests(), link, ArmConfig { poll: Duration::from_millis(5), ..ArmConfig::default() })
}

/// An arm's taught positions in lab.toml are checked against the arm at connect: the shipped
/// Opentrons site's match the simulated arm; a position re-taught on the arm (or changed in the
/// file) is a startup error naming the nest and both sets of joints.
#[tokio::test]
async fn taught_positions_are_checked_against_the_arm_at_connect() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sites/opentrons.toml")).unwrap();
    let site = labware::Site::from_toml(&text).unwrap();
    let a = site.arms.iter().find(|a| a.id == "arm1").unwrap();
    let sim = ArmSim::new(&a.reach);
    let addr = spawn_tcp(sim, Faults::default(), SimClock::new(FAST), arm::error_reply, "127.0.0.1:0").await.unwrap();
    let ep = Endpoint::Tcp(addr.to_string());
    let driver = devices::driver::open_arm(a, &ep, FAST).await.unwrap();
    assert_eq!(driver.verify_positions().await.unwrap(), a.reach.len());

    // Someone re-teaches the reader's nest on the arm's pendant.
    driver.command("locAngles 6 250 121.5 30 30 80").await.unwrap();
    drop(driver); // the controller serves one connection at a time
    let e = devices::driver::open_arm(a, &ep, FAST).await.err().unwrap();
    let text = e.to_string();
    assert!(text.contains("reader1") && text.contains("121.5") && text.contains("120"), "{text}");
    assert!(matches!(e, InstrumentError::Validation { .. }));
}

fn mv(labware: &str, to: &str) -> CommandOp {
    CommandOp::MoveLabware { labware: labware.into(), to: to.into() }
}

#[tokio::test]
async fn the_arm_moves_plates_between_nests_and_reports_collisions() {
    let a = arm("", &["hotel1", "lh2"]).await;
    assert!(a.identify().await.unwrap().firmware.contains("PF400"));
    a.locate("plate1", "hotel1");
    a.start(&mv("plate1", "lh1")).await.unwrap().finish().await.unwrap();
    assert_eq!(a.location_of("plate1").as_deref(), Some("lh1"));
    assert_eq!(a.make_safe().await.unwrap(), "halted; the gripper is open");
    // Where it is, by its own queries (what recovery puts in front of a technician).
    let w = a.whereabouts().await.unwrap().text;
    assert!(w.starts_with("joints ") && w.ends_with("gripper open or holding a plate"), "{w}");
    assert_eq!(w.split(';').next().unwrap().split_whitespace().count(), 1 + 5, "five joints: {w}");
    // Back again proves the plate really moved in the simulator (the nest was free).
    a.start(&mv("plate1", "hotel1")).await.unwrap().finish().await.unwrap();
    // Onto an occupied nest: the simulator's arm collides.
    let e = a.start(&mv("plate1", "lh2")).await.unwrap().finish().await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if is_collision(code)), "{e:?}");
    // The plate is still in the gripper: the arm cannot put it down safely on its own.
    let e = a.make_safe().await.unwrap_err();
    assert!(e.to_string().contains("may still hold a plate"), "{e}");
    // Bad requests are refused before anything moves.
    let e = a.start(&mv("plate1", "freezer")).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Validation { .. }), "{e:?}");
    let e = a.start(&mv("unknown-plate", "lh1")).await.unwrap_err();
    assert!(e.to_string().contains("locate it first"), "{e}");
}

#[tokio::test]
async fn the_arm_link_reconnects_after_the_controller_hangs_up() {
    let a = arm("disconnect_after=2", &[]).await;
    a.command("nop").await.unwrap();
    a.command("nop").await.unwrap();
    let e = a.command("nop").await.unwrap_err();
    assert!(matches!(e, InstrumentError::Disconnected(_)), "{e:?}");
    // The next command re-opens the connection (with backoff) and works.
    a.command("nop").await.unwrap();
}

#[tokio::test]
async fn a_silent_arm_is_a_timeout_and_garbage_a_protocol_error() {
    let mut sim = ArmSim::new(&nests());
    sim.place("hotel1");
    let addr =
        spawn_tcp(sim, Faults::parse("timeout=wherej").unwrap(), SimClock::new(FAST), arm::error_reply, "127.0.0.1:0")
            .await
            .unwrap();
    let link = Link::open(Endpoint::Tcp(addr.to_string())).await.unwrap();
    let a = ArmDriver::new(
        nests(),
        link,
        ArmConfig { reply_timeout: Duration::from_millis(200), poll: Duration::from_millis(5), ..ArmConfig::default() },
    );
    a.locate("p", "hotel1");
    let e = a.start(&mv("p", "lh1")).await.unwrap().finish().await.unwrap_err();
    assert!(matches!(e, InstrumentError::Timeout(_)), "{e:?}");
    assert!(!e.may_resend(false), "a move that timed out is not resent");
    let g = arm("garbage=version", &[]).await;
    assert!(matches!(g.identify().await.unwrap_err(), InstrumentError::Protocol(_)));
}

async fn station(kind: StationKind, faults: &str) -> (StationDriver, devices::sim::Pty) {
    let pty = spawn_serial(
        StationSim::new(kind, "st-1", 12),
        Faults::parse(faults).unwrap(),
        SimClock::new(FAST),
        station::error_reply,
    )
    .unwrap();
    let link = Link::open(Endpoint::Serial(pty.path.clone())).await.unwrap();
    (StationDriver::new(kind, link, StationConfig::new(FAST)), pty)
}

#[tokio::test]
async fn stations_seal_spin_and_incubate() {
    let (sealer, _p1) = station(StationKind::Sealer, "").await;
    assert_eq!(sealer.identify().await.unwrap().model, "lw-sim-sealer");
    let run = |d: &StationDriver, op: CommandOp| {
        let d = d.clone();
        async move { d.start(&op).await?.finish().await }
    };
    run(&sealer, CommandOp::Seal { labware: "p".into() }).await.unwrap();
    let e = run(&sealer, CommandOp::Seal { labware: "p".into() }).await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "E07"), "{e:?}");
    run(&sealer, CommandOp::Peel { labware: "p".into() }).await.unwrap();
    assert!(sealer.start(&CommandOp::Centrifuge { labware: "p".into(), g: 500.0, duration_s: 60.0 }).await.is_err());

    let (cfg, _p2) = station(StationKind::Centrifuge, "").await;
    run(&cfg, CommandOp::Centrifuge { labware: "p".into(), g: 1000.0, duration_s: 60.0 }).await.unwrap();
    let e = run(&cfg, CommandOp::Centrifuge { labware: "p".into(), g: 9000.0, duration_s: 60.0 }).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Validation { .. }), "{e:?}");

    let (inc, _p3) = station(StationKind::Incubator, "").await;
    let exec = inc
        .start(&CommandOp::Incubate {
            labware: "p".into(),
            temperature_c: Some(37.0),
            duration_s: 30.0,
            shake_rpm: None,
            co2_percent: None,
        })
        .await
        .unwrap();
    // While the plate incubates, the link is free: status answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = inc.status().await.unwrap();
    assert_eq!(st.temperature_c, Some(37.0));
    assert!(st.detail.starts_with("1 plate inside") && !st.detail.contains("rpm"), "{}", st.detail);
    exec.finish().await.unwrap();
    assert_eq!(inc.status().await.unwrap().detail, "empty");
    // Cell culture: at ambient temperature (the heater off) in 5 % CO₂.
    let culture = CommandOp::Incubate {
        labware: "p".into(),
        temperature_c: None,
        duration_s: 30.0,
        shake_rpm: None,
        co2_percent: Some(5.0),
    };
    let exec = inc.start(&culture).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = inc.status().await.unwrap();
    assert!(st.detail.contains("CO₂ at 5 %") && st.temperature_c == Some(25.0), "{st:?}");
    exec.finish().await.unwrap();

    let (stuck, _p4) = station(StationKind::Sealer, "error=SEAL:E01").await;
    let e = run(&stuck, CommandOp::Seal { labware: "p".into() }).await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "E01"), "{e:?}");
}
