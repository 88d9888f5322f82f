//! Recovery's questions to the instruments, family by family: the process that drove them dies
//! between a command's intent and its outcome (the driver is dropped; a new one connects, as a
//! restarted labd's would), the new driver learns what the journal says was done (`replay`) and
//! says whether the command in doubt happened (`settle`) from the instrument's own state. Each
//! verdict is checked against what the simulator really did, and the work goes on from there.

use crate::support::repo;
use devices::driver::arm::{ArmConfig, ArmDriver};
use devices::driver::liquid::{LiquidConfig, LiquidHandlerDriver};
use devices::link::{Endpoint, Link};
use devices::sim::arm::{self, ArmSim};
use devices::sim::liquid::{error_reply, LiquidSim};
use devices::sim::{spawn_serial, spawn_tcp, Faults, SimClock};
use devices::{Instrument, Settled, TimeScale};
use labware::{InstrumentClass, Library, Site};
use protocols::plan::{CommandOp, RunPlan};
use std::time::Duration;

const FAST: TimeScale = TimeScale(0.0001);

fn serial_dilution() -> RunPlan {
    let text = std::fs::read_to_string(repo().join("protocols/examples/serial-dilution.yaml")).unwrap();
    let c = protocols::compile(
        &protocols::SourceFile::new("serial-dilution.yaml", text),
        protocols::Format::Auto,
        &Site::sim().unwrap(),
        &Library::shipped(),
    );
    c.plan.unwrap()
}

fn kind(op: &CommandOp) -> &'static str {
    match op {
        CommandOp::PickUpTip { .. } => "pick_up_tip",
        CommandOp::Aspirate { .. } => "aspirate",
        CommandOp::Dispense { .. } => "dispense",
        CommandOp::Mix { .. } => "mix",
        CommandOp::BlowOut { .. } => "blow_out",
        CommandOp::DropTip { .. } => "drop_tip",
        _ => "other",
    }
}

/// For the first command of each kind in the serial dilution's liquid handling (and one mix
/// right after a dispense into the same well): labd "dies" once after sending it and once
/// before. A new driver settles it: happened when it was sent, not done when it was not; the
/// mix in the same well is for a person. The task then runs to its end on the new driver, and
/// the simulator's wells hold what an uninterrupted run leaves.
#[tokio::test]
async fn a_liquid_handler_says_whether_the_command_in_doubt_happened() {
    let plan = serial_dilution();
    let task = plan.tasks.iter().find(|t| t.class == Some(InstrumentClass::LiquidHandler)).unwrap();
    let ops: Vec<CommandOp> = task.commands.iter().map(|c| c.op.clone()).collect();
    let site = Site::sim().unwrap();
    let inst = site.instruments.iter().find(|i| i.id == task.instruments[0]).unwrap().clone();
    let mut cases: Vec<(usize, bool)> = Vec::new();
    // A mix right after a dispense into the same well is the case for a person (below).
    let after_dispense_into_it = |i: usize| match (i.checked_sub(1).map(|p| &ops[p]), &ops[i]) {
        (Some(CommandOp::Dispense { labware: a, well: x, .. }), CommandOp::Mix { labware: b, well: y, .. }) => {
            a == b && x == y
        }
        _ => false,
    };
    for k in ["pick_up_tip", "aspirate", "dispense", "mix", "blow_out", "drop_tip"] {
        if let Some(i) = (0..ops.len()).find(|&i| kind(&ops[i]) == k && !after_dispense_into_it(i)) {
            cases.push((i, true));
            cases.push((i, false));
        }
    }
    assert!(cases.len() >= 8, "the task has the common kinds: {cases:?}");
    // The reference: the whole task, never interrupted.
    let uninterrupted = {
        let sim = LiquidSim::new(&inst, Library::shipped());
        let state = sim.state.clone();
        fill(&plan, &state);
        let pty = spawn_serial(sim, Faults::default(), SimClock::new(FAST), error_reply).unwrap();
        let d = connect(&inst, &pty.path).await;
        d.prepare(&plan).await.unwrap();
        for op in &ops {
            d.start(op).await.unwrap().finish().await.unwrap();
        }
        let bench = state.lock().unwrap().bench.clone();
        let snapshot = bench.lock().unwrap().snapshot();
        snapshot
    };
    let mut verdicts = Vec::new();
    for (i, sent) in cases {
        let sim = LiquidSim::new(&inst, Library::shipped());
        let state = sim.state.clone();
        fill(&plan, &state);
        let pty = spawn_serial(sim, Faults::default(), SimClock::new(FAST), error_reply).unwrap();
        {
            let before = connect(&inst, &pty.path).await;
            before.prepare(&plan).await.unwrap();
            for op in &ops[..i + usize::from(sent)] {
                before.start(op).await.unwrap().finish().await.unwrap();
            }
        } // labd dies here
        let after = connect(&inst, &pty.path).await;
        after.prepare(&plan).await.unwrap();
        after.replay(&ops[..i]).await.unwrap();
        let verdict = after.settle(&ops[i]).await.unwrap();
        let what = format!("{} #{i} {}", kind(&ops[i]), if sent { "sent" } else { "not sent" });
        match (&verdict, sent) {
            (Settled::Happened(_), true) | (Settled::NotDone(_), false) => {}
            other => panic!("{what}: {other:?}"),
        }
        verdicts.push(format!("{what}: {}", verdict.why()));
        // Going on from there gives the uninterrupted task's wells.
        let next = if sent { i + 1 } else { i };
        for op in &ops[next..] {
            after.start(op).await.unwrap().finish().await.unwrap();
        }
        let bench = state.lock().unwrap().bench.clone();
        assert_eq!(bench.lock().unwrap().snapshot(), uninterrupted, "{what}: the wells after going on");
    }
    // A mix in the well just dispensed into leaves the head where it was: a person decides.
    if let Some(i) = (0..ops.len()).find(|&i| after_dispense_into_it(i)) {
        let sim = LiquidSim::new(&inst, Library::shipped());
        fill(&plan, &sim.state);
        let pty = spawn_serial(sim, Faults::default(), SimClock::new(FAST), error_reply).unwrap();
        {
            let before = connect(&inst, &pty.path).await;
            before.prepare(&plan).await.unwrap();
            for op in &ops[..=i] {
                before.start(op).await.unwrap().finish().await.unwrap();
            }
        }
        let after = connect(&inst, &pty.path).await;
        after.prepare(&plan).await.unwrap();
        after.replay(&ops[..i]).await.unwrap();
        let verdict = after.settle(&ops[i]).await.unwrap();
        assert!(matches!(verdict, Settled::Unknown(ref w) if w.contains("cannot say")), "{verdict:?}");
        verdicts.push(format!("mix #{i} in the well just dispensed into: {}", verdict.why()));
    }
    println!("{}", verdicts.join("\n"));
}

fn fill(plan: &RunPlan, state: &std::sync::Arc<std::sync::Mutex<devices::sim::liquid::LiquidState>>) {
    let bench = state.lock().unwrap().bench.clone();
    for lw in &plan.labware {
        for (well, mix) in &lw.composition {
            for (liquid, ul) in mix {
                bench.lock().unwrap().fill(&lw.name, well, liquid, *ul);
            }
        }
    }
}

async fn connect(inst: &labware::site::Instrument, pty: &str) -> LiquidHandlerDriver {
    let link = Link::open(Endpoint::Serial(pty.to_string())).await.unwrap();
    LiquidHandlerDriver::new(inst, Library::shipped(), link, LiquidConfig::default())
}

fn nests() -> Vec<String> {
    ["hotel1", "lh1", "lh2", "handoff"].iter().map(|s| s.to_string()).collect()
}

fn mv(labware: &str, to: &str) -> CommandOp {
    CommandOp::MoveLabware { labware: labware.into(), to: to.into() }
}

/// The arm, stopped at every step of a move (the driver's ten exchanges; labd dies after the
/// `k`-th): before the grip, the plate was not taken (sent again, it moves once); with the
/// plate in the gripper, the move is finished by placing it; after the release, it happened.
/// A move to where the arm already stood, stopped before the grip, is for a person.
#[tokio::test]
async fn an_arm_says_where_the_plate_is_after_a_move_in_doubt() {
    let steps = |from: usize, to: usize| -> Vec<String> {
        vec![
            "gripper 1".into(),
            format!("moveAppro {from} 1"),
            format!("move {from} 1"),
            "gripper 2".into(),
            format!("moveAppro {from} 1"),
            format!("moveAppro {to} 1"),
            format!("move {to} 1"),
            "gripper 1".into(),
            format!("moveAppro {to} 1"),
        ]
    };
    let config = || ArmConfig { poll: Duration::from_millis(5), ..ArmConfig::default() };
    for k in 0..=9 {
        let addr = arm_with_a_plate_at_the_hotel().await;
        {
            let before = ArmDriver::new(nests(), Link::open(Endpoint::Tcp(addr.to_string())).await.unwrap(), config());
            let lines: Vec<String> = ["mode 0", "hp 1 20", "attach 1", "home"].map(String::from).into_iter().collect();
            for line in lines.iter().chain(&steps(1, 2)[..k]) {
                before.command(line).await.unwrap();
                still(&before).await;
            }
        } // labd dies after k of the move's exchanges
        let after = ArmDriver::new(nests(), Link::open(Endpoint::Tcp(addr.to_string())).await.unwrap(), config());
        after.locate("p", "hotel1");
        after.replay(&[mv("q", "lh2")]).await.unwrap();
        let verdict = after.settle(&mv("p", "lh1")).await.unwrap();
        let expect = match k {
            0..=3 => "not done",
            4..=7 => "rest",
            _ => "happened",
        };
        let got = match &verdict {
            Settled::NotDone(_) => "not done",
            Settled::Rest(..) => "rest",
            Settled::Happened(_) => "happened",
            Settled::Unknown(_) => "unknown",
        };
        assert_eq!(got, expect, "stopped after {k} exchanges: {verdict:?}");
        if got != "happened" {
            // Sent (again, or to finish): the plate ends on lh1, once.
            after.start(&mv("p", "lh1")).await.unwrap().finish().await.unwrap();
        }
        // Exactly one plate on lh1 and none left at the hotel's slot it came from: moving it on
        // works, and putting another on lh1 collides.
        after.locate("p", "lh1");
        after.start(&mv("p", "lh2")).await.unwrap().finish().await.unwrap();
        after.locate("p", "lh2");
        after.start(&mv("p", "lh1")).await.unwrap().finish().await.unwrap();
        println!("arm stopped after {k} exchanges: {got}: {}", verdict.why());
    }
    // Stopped before the grip of a move to where the arm stood: nobody can tell.
    let addr = arm_with_a_plate_at_the_hotel().await;
    {
        let before = ArmDriver::new(nests(), Link::open(Endpoint::Tcp(addr.to_string())).await.unwrap(), config());
        for line in ["mode 0", "hp 1 20", "attach 1", "home", "moveAppro 2 1"] {
            before.command(line).await.unwrap();
            still(&before).await;
        }
    }
    let after = ArmDriver::new(nests(), Link::open(Endpoint::Tcp(addr.to_string())).await.unwrap(), config());
    after.locate("p", "hotel1");
    after.replay(&[mv("q", "lh1")]).await.unwrap();
    let verdict = after.settle(&mv("p", "lh1")).await.unwrap();
    assert!(matches!(verdict, Settled::Unknown(ref w) if w.contains("stood there before")), "{verdict:?}");
}

/// Waits until two `wherej` answers agree: the motion a line started has ended.
async fn still(arm: &ArmDriver) {
    let mut last = String::new();
    loop {
        let now = arm.command("wherej").await.unwrap().data;
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A simulated arm with one plate at the hotel; where it listens.
async fn arm_with_a_plate_at_the_hotel() -> std::net::SocketAddr {
    let mut sim = ArmSim::new(&nests());
    sim.place("hotel1");
    spawn_tcp(sim, Faults::default(), SimClock::new(TimeScale(0.01)), arm::error_reply, "127.0.0.1:0").await.unwrap()
}
