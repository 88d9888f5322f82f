//! The Opentrons HTTP driver against the simulated robot on a real loopback socket: a compiled
//! serial dilution ends with the robot's own per-well volumes equal to the compiler's; the
//! one-active-run rule, command errors, error recovery and lost replies keep their meaning; and
//! Opentrons' own HTTP client (`opentrons-http-api-client`, PyPI) drives the simulator.

use crate::support::{engine_python, peers_python, repo};
use devices::codec::opentrons::Robot;
use devices::driver::opentrons::{OpentronsConfig, OpentronsDriver};
use devices::sim::bench::SharedBench;
use devices::sim::opentrons::{self as sim, OpentronsSim};
use devices::sim::Faults;
use devices::{family, Family, Instrument, InstrumentError, Recovery, TimeScale};
use labware::{Library, Site};
use protocols::plan::{CommandOp, RunPlan};
use serde_json::Value;
use std::time::Duration;

const FAST: TimeScale = TimeScale(0.0001);

fn site() -> Site {
    Site::from_toml(&std::fs::read_to_string(repo().join("sites/opentrons.toml")).unwrap()).unwrap()
}

struct Rig {
    driver: OpentronsDriver,
    sim: OpentronsSim,
    server: tokio::task::JoinHandle<()>,
    address: String,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn rig(instrument: &str, faults: &str, config: OpentronsConfig) -> Rig {
    let site = site();
    let inst = site.instruments.iter().find(|i| i.id == instrument).unwrap().clone();
    let robot = Robot::carrying(&inst.pipettes);
    let cfg = sim::OpentronsConfig::from_site(&inst, robot, FAST, Faults::parse(faults).unwrap())
        .with_modules_of(&site, instrument);
    let sim = OpentronsSim::new(cfg, Library::shipped(), SharedBench::default());
    let (addr, server) = sim.clone().serve("127.0.0.1:0").await.unwrap();
    let driver = OpentronsDriver::new(&inst, &addr.to_string(), Library::shipped(), config);
    Rig { driver, sim, server, address: addr.to_string() }
}

fn compile(file: &str) -> (RunPlan, protocols::check::Tracked) {
    let text = std::fs::read_to_string(repo().join("protocols/examples").join(file)).unwrap();
    let c = protocols::compile(
        &protocols::SourceFile::new(file, text),
        protocols::Format::Auto,
        &site(),
        &Library::shipped(),
    );
    assert!(c.plan.is_some(), "{file} compiles for sites/opentrons.toml: {:?}", c.diagnostics);
    (c.plan.unwrap(), c.tracked.unwrap())
}

fn fill(bench: &SharedBench, plan: &RunPlan) {
    for lw in &plan.labware {
        for (well, mix) in &lw.composition {
            for (liquid, ul) in mix {
                bench.lock().unwrap().fill(&lw.name, well, liquid, *ul);
            }
        }
    }
}

fn bench(rig: &Rig) -> SharedBench {
    rig.sim.bench()
}

#[tokio::test]
async fn serial_dilution_over_the_http_api_leaves_what_the_compiler_predicts() {
    let (plan, tracked) = compile("serial-dilution.yaml");
    let used: Vec<&str> = plan.tasks.iter().flat_map(|t| t.pipettes.iter().map(String::as_str)).collect();
    assert!(used.iter().all(|p| p.ends_with("_gen2")), "the OT-2's pipettes: {used:?}");
    let rig = rig("ot2", "", OpentronsConfig::default()).await;
    fill(&bench(&rig), &plan);
    let id = rig.driver.identify().await.unwrap();
    assert_eq!(id.model, "OT-2 Standard");
    rig.driver.prepare(&plan).await.unwrap();
    let mut sent = 0;
    for task in &plan.tasks {
        for cmd in &task.commands {
            if family(&cmd.op) == Family::LiquidHandler {
                rig.driver.start(&cmd.op).await.unwrap().finish().await.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.op));
                sent += 1;
            }
        }
    }
    assert!(sent > 600, "the whole dilution ran ({sent} commands)");
    {
        let shared = bench(&rig);
        let b = shared.lock().unwrap();
        let mut compared = 0;
        for (slot, lw) in plan.labware.iter().enumerate() {
            let def = Library::shipped().get(&lw.load_name).unwrap().clone();
            if def.tip.is_some() {
                continue;
            }
            for (j, w) in def.wells.iter().enumerate() {
                let predicted = tracked.wells[slot][j].volume();
                let simulated = b.volume(&lw.name, &w.name);
                assert!(
                    (predicted - simulated).abs() <= 1e-6,
                    "{} {}: compiler {predicted:.3} µL, robot {simulated:.3} µL",
                    lw.name,
                    w.name
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 96 + 12);
        let state = rig.sim.state.lock().unwrap();
        assert!(state.mounts.values().all(|c| c.tips.iter().all(Option::is_none)), "every tip was dropped");
        // The lab's labware offsets reached the run: the plate was loaded with one.
        let posted: Vec<&Value> = state.posted.iter().map(|b| &b["data"]).collect();
        assert!(posted.iter().all(|c| c["intent"] == "setup" || c["intent"] == "protocol"));
        assert!(
            posted
                .iter()
                .any(|c| c["commandType"] == "loadLabware"
                    && c["params"]["loadName"] == "corning_96_wellplate_360ul_flat")
        );
    }
    let run = rig.driver.run_id().await.unwrap();
    let reply = get(&rig.address, &format!("/runs/{run}")).await;
    let offsets = reply["data"]["labwareOffsets"].as_array().unwrap();
    assert!(!offsets.is_empty(), "lab.toml's offsets were posted: {reply}");
    let plate = reply["data"]["labware"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["loadName"] == "corning_96_wellplate_360ul_flat")
        .unwrap();
    assert!(plate["offsetId"].is_string(), "the plate was loaded with its offset: {plate}");
}

/// A GET of the robot API, as any client would.
async fn get(address: &str, path: &str) -> Value {
    http("GET", address, path, None).await.1
}

async fn http(method: &str, address: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nOpentrons-Version: *\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

fn step(op: &str, extra: serde_json::Value) -> CommandOp {
    let mut v = serde_json::json!({"op": op});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

async fn run(driver: &OpentronsDriver, op: &CommandOp) -> Result<(), InstrumentError> {
    driver.start(op).await?.finish().await.map(|_| ())
}

#[tokio::test]
async fn one_active_run_errors_recovery_and_a_safe_robot() {
    let (plan, _) = compile("serial-dilution.yaml");
    let rig = rig("ot2", "error_once=aspirate:liquidNotFound", OpentronsConfig::default()).await;
    fill(&bench(&rig), &plan);
    rig.driver.prepare(&plan).await.unwrap();

    // Another client cannot create a run while ours plays: the robot is busy, try later.
    let (status, reply) = http("POST", &rig.address, "/runs", None).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["errors"][0]["id"], "RunAlreadyActive");
    // Another lab's labd that was given the same robot (another instrument id): its runs are
    // not this lab's, it is kept waiting.
    let mut elsewhere = site().instruments.into_iter().find(|i| i.id == "ot2").unwrap();
    elsewhere.id = "other-lab-ot2".into();
    let other = OpentronsDriver::new(&elsewhere, &rig.address, Library::shipped(), OpentronsConfig::default());
    let e = other.prepare(&plan).await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Busy(m) if m.contains("RunAlreadyActive")), "{e}");
    assert_eq!(e.recovery(), Recovery::Retry);

    // A command the robot refuses comes back in its words, classified as a failure.
    let asp = step(
        "aspirate",
        serde_json::json!({"pipette": "p300_single_gen2", "labware": "reservoir", "well": "A1", "volume_ul": 50.0}),
    );
    let pick = step("pick_up_tip", serde_json::json!({"pipette": "p300_single_gen2", "rack": "tips_a", "well": "A1"}));
    run(&rig.driver, &pick).await.unwrap();
    // The injected liquid-sensing fault: the robot holds the run in error recovery.
    let e = run(&rig.driver, &asp).await.unwrap_err();
    let InstrumentError::Device { code, message } = &e else { panic!("{e}") };
    assert_eq!(code, "awaiting-recovery");
    assert!(message.contains("liquidNotFound"), "{message}");
    let status = rig.driver.status().await.unwrap();
    assert!(matches!(status.state, devices::State::Fault(_)), "{status:?}");
    let w = rig.driver.whereabouts().await.unwrap();
    assert_eq!(w.tips_on, Some(1), "{w}");
    // Making it safe drops the tip with fix-it commands and closes the run.
    let did = rig.driver.make_safe().await.unwrap();
    assert!(did.contains("dropped 1 tip"), "{did}");
    assert!(rig.sim.state.lock().unwrap().mounts.values().all(|c| c.tips.iter().all(Option::is_none)));
    let fixit = rig.sim.state.lock().unwrap().posted.iter().filter(|b| b["data"]["intent"] == "fixit").count();
    assert_eq!(fixit, 2, "move to the trash, drop in place");
    // The robot is free again: the other client gets it.
    other.prepare(&plan).await.unwrap();

    // A command that makes no physical sense fails the task (and the robot's run).
    let e = run(&other, &asp).await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "TipNotAttachedError"), "{e}");
    assert_eq!(e.recovery(), Recovery::Fail);
    let used = step("pick_up_tip", serde_json::json!({"pipette": "p300_single_gen2", "rack": "tips_a", "well": "A1"}));
    other.prepare(&plan).await.unwrap();
    let e = run(&other, &used).await.unwrap_err();
    assert!(
        matches!(&e, InstrumentError::Device { code, message } if code == "awaiting-recovery" && message.contains("tipPhysicallyMissing")),
        "{e}"
    );
}

#[tokio::test]
async fn a_lost_reply_is_looked_up_by_its_key_and_never_sent_twice() {
    let (plan, _) = compile("serial-dilution.yaml");
    let cfg = OpentronsConfig { request_timeout: Duration::from_millis(400), ..OpentronsConfig::default() };
    // Two pipettes and four labware are the first six commands; the seventh command's reply is lost.
    let rig = rig("ot2", "disconnect_after=6", cfg).await;
    fill(&bench(&rig), &plan);
    rig.driver.prepare(&plan).await.unwrap_or_else(|e| panic!("{e}"));
    let pick = step("pick_up_tip", serde_json::json!({"pipette": "p300_single_gen2", "rack": "tips_a", "well": "A1"}));
    let loads = rig.sim.state.lock().unwrap().posted.len();
    assert_eq!(loads, 6, "setup commands");
    run(&rig.driver, &pick).await.unwrap();
    let picks = rig.sim.state.lock().unwrap().posted.iter().filter(|b| b["data"]["commandType"] == "pickUpTip").count();
    assert_eq!(picks, 1, "the pick-up whose reply was lost ran once and was not sent again");
    let w = rig.driver.whereabouts().await.unwrap();
    assert_eq!(w.tips_on, Some(1));

    // The robot gone: nothing was sent, so the executor may try again later.
    rig.server.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = run(&rig.driver, &step("drop_tip", serde_json::json!({"pipette": "p300_single_gen2"}))).await.unwrap_err();
    assert_eq!(e.recovery(), Recovery::Retry, "{e}");
}

#[tokio::test]
async fn a_flex_names_its_slots_by_grid_and_drops_tips_in_its_trash_bin() {
    let text = r#"
labwright: 1
name: flex transfer
liquids:
  buffer: PBS
labware:
  tips: { type: opentrons_96_tiprack_1000ul }
  src: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 5 mL } } }
  plate: { type: corning_96_wellplate_360ul_flat }
steps:
  - transfer: { from: src/A1, to: plate/A1:A3, volume: 100 uL, tips: once }
"#;
    let c = protocols::compile(
        &protocols::SourceFile::new("flex.yaml", text.to_string()),
        protocols::Format::Auto,
        &site(),
        &Library::shipped(),
    );
    let Some(plan) = c.plan else { panic!("{:?}", c.diagnostics) };
    let rig = rig("flex", "", OpentronsConfig::default()).await;
    fill(&bench(&rig), &plan);
    assert_eq!(rig.driver.identify().await.unwrap().model, "OT-3 Standard");
    rig.driver.prepare(&plan).await.unwrap();
    for t in &plan.tasks {
        for cmd in t.commands.iter().filter(|c| family(&c.op) == Family::LiquidHandler) {
            run(&rig.driver, &cmd.op).await.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.op));
        }
    }
    let b = bench(&rig);
    for w in ["A1", "A2", "A3"] {
        assert!((b.lock().unwrap().volume("plate", w) - 100.0).abs() < 1e-9);
    }
    let state = rig.sim.state.lock().unwrap();
    let slots: Vec<&str> = state
        .posted
        .iter()
        .filter(|b| b["data"]["commandType"] == "loadLabware")
        .map(|b| b["data"]["params"]["location"]["slotName"].as_str().unwrap())
        .collect();
    assert_eq!(slots, ["D1", "D2", "D3"]);
    assert!(state.posted.iter().any(|b| b["data"]["params"]["addressableAreaName"] == "movableTrashA3"));
}

/// Opentrons' own HTTP client (`ot_api`, the `opentrons-http-api-client` package PyLabRobot's
/// OT-2 backend uses) drives the simulated robot: its requests parse, and the replies have the
/// shapes it reads.
#[tokio::test]
async fn opentrons_http_api_client_drives_the_simulated_robot() {
    let Some(py) = peers_python() else { return };
    let rig = rig("ot2", "", OpentronsConfig::default()).await;
    bench(&rig).lock().unwrap().fill("src", "A1", "dye", 200.0);
    let (host, port) = rig.address.rsplit_once(':').unwrap();
    let (host, port, script) = (host.to_string(), port.to_string(), repo().join("tests/peers/ot_http_client.py"));
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new(py).arg(script).args([&host, &port]).output())
            .await
            .unwrap()
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ot_api client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(report["robot_model"], "OT-2 Standard");
    assert!(report["refused"].as_str().unwrap().contains("TipNotAttachedError"), "{report}");
    let b = bench(&rig);
    let b = b.lock().unwrap();
    assert!((b.volume("src", "A1") - 150.0).abs() < 1e-9, "50 µL drawn");
    assert!((b.volume("plate", "B2") - 50.0).abs() < 1e-9, "50 µL dispensed");
}

/// What the driver posts and what the simulated robot serves parse with Opentrons' own protocol
/// engine models, and every error type the simulator reports is one the engine has.
#[tokio::test]
async fn commands_and_replies_match_opentrons_protocol_engine_models() {
    let Some(py) = engine_python() else { return };
    let (plan, _) = compile("serial-dilution.yaml");
    let rig = rig("ot2", "", OpentronsConfig::default()).await;
    fill(&bench(&rig), &plan);
    rig.driver.prepare(&plan).await.unwrap();
    let ops: Vec<&CommandOp> =
        plan.tasks[0].commands.iter().map(|c| &c.op).filter(|op| family(op) == Family::LiquidHandler).collect();
    for op in ops.iter().take(3) {
        run(&rig.driver, op).await.unwrap();
    }
    let p = serde_json::json!({"pipette": "p300_single_gen2"});
    let at = serde_json::json!({"pipette": "p300_single_gen2", "labware": "plate", "well": "A1"});
    for op in [
        step("move_to", at.clone()),
        step("blow_out", at.clone()),
        step("drop_tip", p.clone()),
        step("home", serde_json::json!({})),
        step("pick_up_tip", serde_json::json!({"pipette": "p300_single_gen2", "rack": "tips_b", "well": "H12"})),
        step(
            "aspirate",
            serde_json::json!({"pipette": "p300_single_gen2", "labware": "plate", "well": "A1", "volume_ul": 50.0}),
        ),
    ] {
        run(&rig.driver, &op).await.unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }
    let mix = step(
        "mix",
        serde_json::json!({"pipette": "p300_single_gen2", "labware": "plate", "well": "A1", "volume_ul": 20.0, "times": 2}),
    );
    run(&rig.driver, &mix).await.unwrap_or_else(|e| panic!("{mix:?}: {e}"));
    // A failure served as the robot words it, and fix-it commands while in recovery.
    let e = run(
        &rig.driver,
        &step("pick_up_tip", serde_json::json!({"pipette": "p300_single_gen2", "rack": "tips_b", "well": "H12"})),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("TipAttachedError"), "{e}");
    let run_id = rig.driver.run_id().await.unwrap();
    // The robot serves a run's commands a page at a time: the 20 most recent unless asked.
    let recent = get(&rig.address, &format!("/runs/{run_id}/commands")).await;
    let total = recent["meta"]["totalLength"].as_u64().unwrap();
    assert!(total > 20 && recent["data"].as_array().unwrap().len() == 20, "{}", recent["meta"]);
    assert_eq!(recent["meta"]["cursor"].as_u64().unwrap(), total - 20);
    let commands =
        get(&rig.address, &format!("/runs/{run_id}/commands?cursor=0&pageLength=1000")).await["data"].clone();
    assert_eq!(commands.as_array().unwrap().len() as u64, total);
    let posted = rig.sim.state.lock().unwrap().posted.clone();
    let kinds: std::collections::BTreeSet<&str> =
        posted.iter().filter_map(|b| b["data"]["commandType"].as_str()).collect();
    assert!(kinds.len() >= 12, "every kind of command the driver sends: {kinds:?}");
    engine_check(py, posted, commands, "pipettes").await;
}

/// Abort stops the robot's run: a command that would never end (the simulated robot hangs on
/// aspirate) ends at once as failed by the stop, and the run is stopped on the robot.
#[tokio::test]
async fn abort_stops_the_robots_run_and_the_command_under_way() {
    let (plan, _) = compile("serial-dilution.yaml");
    let rig = rig("ot2", "timeout=aspirate", OpentronsConfig::default()).await;
    fill(&bench(&rig), &plan);
    rig.driver.prepare(&plan).await.unwrap();
    run(
        &rig.driver,
        &step("pick_up_tip", serde_json::json!({"pipette": "p300_single_gen2", "rack": "tips_a", "well": "A1"})),
    )
    .await
    .unwrap();
    let asp = step(
        "aspirate",
        serde_json::json!({"pipette": "p300_single_gen2", "labware": "reservoir", "well": "A1", "volume_ul": 50.0}),
    );
    let exec = rig.driver.start(&asp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = std::time::Instant::now();
    rig.driver.abort().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), exec.finish()).await.expect("the command ended").unwrap_err();
    eprintln!("abort → command ended in {:?}: {e}", asked.elapsed());
    assert!(
        matches!(&e, InstrumentError::Cancelled)
            || matches!(&e, InstrumentError::Device { code, .. } if code == "RunStoppedError"),
        "{e}"
    );
    let run_id = rig.driver.run_id().await.unwrap();
    assert_eq!(get(&rig.address, &format!("/runs/{run_id}")).await["data"]["status"], "stopped");
}

/// A run an earlier labd left playing on the robot (a crash, or the node before a failover) is
/// recognised by its commands' keys and closed by the next driver; another client's run is not.
#[tokio::test]
async fn a_run_an_earlier_labd_left_is_closed_and_another_clients_is_not() {
    let (plan, _) = compile("serial-dilution.yaml");
    let rig = rig("ot2", "", OpentronsConfig::default()).await;
    fill(&bench(&rig), &plan);
    rig.driver.prepare(&plan).await.unwrap();
    let left = rig.driver.run_id().await.unwrap();
    // labd restarts: a new driver for the same robot.
    let inst = site().instruments.into_iter().find(|i| i.id == "ot2").unwrap();
    let next = OpentronsDriver::new(&inst, &rig.address, Library::shipped(), OpentronsConfig::default());
    next.prepare(&plan).await.unwrap();
    assert_ne!(next.run_id().await.unwrap(), left);
    assert_eq!(get(&rig.address, &format!("/runs/{left}")).await["data"]["current"], false);
    // Someone else's run (the Opentrons App's, with its own commands) is left alone.
    next.make_safe().await.unwrap();
    let (_, other) = http("POST", &rig.address, "/runs", None).await;
    let other_id = other["data"]["id"].as_str().unwrap().to_string();
    let body = r#"{"data": {"commandType": "home", "params": {}, "intent": "setup", "key": "opentrons-app-1"}}"#;
    http("POST", &rig.address, &format!("/runs/{other_id}/commands?waitUntilComplete=true"), Some(body)).await;
    http("POST", &rig.address, &format!("/runs/{other_id}/actions"), Some(r#"{"data": {"actionType": "play"}}"#)).await;
    let e = next.prepare(&plan).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Busy(_)), "{e}");
    assert_eq!(get(&rig.address, &format!("/runs/{other_id}")).await["data"]["current"], true);
}

/// Compiles a protocol's text for sites/opentrons.toml.
fn compile_text(name: &str, text: &str) -> RunPlan {
    let c = protocols::compile(
        &protocols::SourceFile::new(name, text.to_string()),
        protocols::Format::Auto,
        &site(),
        &Library::shipped(),
    );
    c.plan.unwrap_or_else(|| panic!("{name}: {:?}", c.diagnostics))
}

/// The robot's current run, as any client reads it.
async fn current_run(address: &str) -> String {
    let runs = get(address, "/runs").await;
    runs["links"]["current"]["href"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
}

/// Runs the protocol engine's models over what was posted and served (see `ot_engine_check.py`).
async fn engine_check(py: std::path::PathBuf, posted: Vec<Value>, commands: Value, name: &str) {
    let error_types: Vec<&str> = sim::RECOVERABLE.iter().chain(sim::ENGINE_ERRORS.iter()).copied().collect();
    let file = std::env::temp_dir().join(format!("lw-ot-engine-{name}-{}.json", std::process::id()));
    let report = serde_json::json!({"posted": posted, "commands": commands, "error_types": error_types});
    std::fs::write(&file, report.to_string()).unwrap();
    let script = repo().join("tests/peers/ot_engine_check.py");
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(py).arg(script).arg(&file).output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "Opentrons' models disagree:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("protocol engine check ({name}): {}", stdout.trim());
}

async fn carry_out(driver: &dyn Instrument, op: &CommandOp) -> Result<(), InstrumentError> {
    driver.start(op).await?.finish().await.map(|_| ())
}

/// A heater-shaker plugged into the Flex, opened as labd opens it (sharing the robot's link with
/// the pipettes): it goes into the pipettes' run when there is one and a run of its own when
/// not, follows the engine's rules (latch closed before shaking, a target before a wait), holds
/// its shake without blocking the robot, and an abort stops it on the robot.
#[tokio::test]
async fn a_module_on_the_robot_is_driven_through_the_robots_run() {
    use devices::driver::{open, OpenConfig};
    let site = site();
    let rig = rig("flex", "", OpentronsConfig::default()).await;
    let cfg = OpenConfig { scale: FAST, sila_ca: None, robots: Default::default() };
    let ep = devices::link::Endpoint::parse(&format!("opentrons:{}", rig.address)).unwrap();
    let inst = |id: &str| site.instruments.iter().find(|i| i.id == id).unwrap().clone();
    let hs = open(&inst("hs1"), &ep, &cfg).await.unwrap();
    let lh = open(&inst("flex"), &ep, &cfg).await.unwrap();
    assert_eq!(hs.identify().await.unwrap().model, "heaterShakerModuleV1");
    let physical = |sim: &OpentronsSim| sim.state.lock().unwrap().modules.get("hs1-sim").cloned().unwrap_or_default();

    // No run of ours yet: the module makes one, shakes warm and stops.
    let shake = CommandOp::Shake { labware: "plate".into(), rpm: 800.0, duration_s: 60.0, temperature_c: Some(37.0) };
    carry_out(hs.as_ref(), &shake).await.unwrap();
    let p = physical(&rig.sim);
    assert_eq!((p.rpm, p.target_c), (0.0, None), "stopped shaking and heating: {p:?}");

    // The pipettes' task starts a run of its own; the module then works inside it.
    let text = "labwright: 1\nname: flex\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  big: { type: opentrons_96_tiprack_1000ul }\nsteps:\n  - transfer: { from: res/A1, to: res/A2, volume: 500 uL }\n";
    let plan = compile_text("flex.yaml", text);
    fill(&bench(&rig), &plan);
    lh.prepare(&plan).await.unwrap();
    let first = plan.tasks[0].commands.iter().find(|c| family(&c.op) == Family::LiquidHandler).unwrap();
    carry_out(lh.as_ref(), &first.op).await.unwrap();
    carry_out(hs.as_ref(), &CommandOp::SetTemperature { labware: None, temperature_c: 40.0 }).await.unwrap();
    carry_out(hs.as_ref(), &CommandOp::WaitForTemperature { labware: None }).await.unwrap();
    assert_eq!(physical(&rig.sim).temperature_c, 40.0);
    let current = current_run(&rig.address).await;
    let commands =
        get(&rig.address, &format!("/runs/{current}/commands?cursor=0&pageLength=1000")).await["data"].clone();
    let kinds: Vec<&str> = commands.as_array().unwrap().iter().filter_map(|c| c["commandType"].as_str()).collect();
    assert!(
        kinds.contains(&"pickUpTip")
            && kinds.contains(&"loadModule")
            && kinds.contains(&"heaterShaker/waitForTemperature"),
        "pipettes and module share one run: {kinds:?}"
    );
    // The rest of the pipetting goes on in the same run.
    for c in plan.tasks[0].commands.iter().skip(1).filter(|c| family(&c.op) == Family::LiquidHandler) {
        carry_out(lh.as_ref(), &c.op).await.unwrap_or_else(|e| panic!("{:?}: {e}", c.op));
    }

    // Refused before anything is sent: too fast for a heater-shaker.
    let sent = rig.sim.state.lock().unwrap().posted.len();
    let e = hs.start(&CommandOp::SetShakeSpeed { labware: None, rpm: 5000.0 }).await.unwrap_err();
    assert_eq!(e.recovery(), Recovery::Fail, "{e}");
    assert_eq!(rig.sim.state.lock().unwrap().posted.len(), sent);

    // Aborted mid-shake: the hold ends at once and the robot stops the module.
    let long = CommandOp::Shake { labware: "plate".into(), rpm: 1200.0, duration_s: 36_000.0, temperature_c: None };
    let exec = hs.start(&long).await.unwrap();
    while physical(&rig.sim).rpm == 0.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hs.abort().await.unwrap();
    let e = exec.finish().await.unwrap_err();
    assert!(matches!(e, InstrumentError::Cancelled), "{e}");
    let p = physical(&rig.sim);
    assert_eq!((p.rpm, p.target_c), (0.0, None), "the abort stopped the module: {p:?}");
    assert!(hs.make_safe().await.unwrap().contains("stopped"));

    // A module the robot does not report is refused at connect, naming where it should be.
    let mut missing = inst("hs1");
    missing.slot = Some(9);
    let e = open(&missing, &ep, &cfg).await.err().unwrap();
    assert!(e.to_string().contains("slot B3"), "{e}");

    if let Some(py) = engine_python() {
        let posted = rig.sim.state.lock().unwrap().posted.clone();
        engine_check(py, posted, commands, "modules").await;
    }
}

/// The Flex's gripper, opened as labd opens it: it takes the plate the pipettes' task loaded in
/// its deck slot to the heater-shaker and back with the robot's `moveLabware`, opening the
/// latch the shake closed, finds a plate the run has not loaded where the executor says it is,
/// and is refused on an OT-2 (which has none).
#[tokio::test]
async fn the_flex_gripper_moves_plates_between_deck_and_heater_shaker() {
    use devices::driver::{open, open_mover, OpenConfig};

    let site = site();
    let rig = rig("flex", "", OpentronsConfig::default()).await;
    let cfg = OpenConfig { scale: FAST, sila_ca: None, robots: Default::default() };
    let ep = devices::link::Endpoint::parse(&format!("opentrons:{}", rig.address)).unwrap();
    let inst = |id: &str| site.instruments.iter().find(|i| i.id == id).unwrap().clone();
    let gripper_arm = site.arms.iter().find(|a| a.id == "gripper1").unwrap().clone();
    let lh = open(&inst("flex"), &ep, &cfg).await.unwrap();
    let hs = open(&inst("hs1"), &ep, &cfg).await.unwrap();
    let gripper = open_mover(&gripper_arm, &site, &ep, &cfg).await.unwrap();

    let text = "labwright: 1\nname: grip\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  plate: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_1000ul }\nsteps:\n  - transfer: { from: res/A1, to: plate/A1, volume: 100 uL }\n";
    let plan = compile_text("grip.yaml", text);
    fill(&bench(&rig), &plan);
    lh.prepare(&plan).await.unwrap();
    for cmd in plan.tasks.iter().flat_map(|t| &t.commands).filter(|c| family(&c.op) == Family::LiquidHandler) {
        carry_out(lh.as_ref(), &cmd.op).await.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.op));
    }
    let slot = devices::deck::Deck::for_plan(&plan, &Library::shipped(), 6).unwrap().get("plate").unwrap().slot;
    let run_labware = |address: String| async move {
        let current = current_run(&address).await;
        get(&address, &format!("/runs/{current}")).await["data"]["labware"].clone()
    };
    let where_is = |labware: &Value, name: &str| {
        labware.as_array().unwrap().iter().find(|l| l["displayName"] == name).map(|l| l["location"].clone())
    };

    // Deck → heater-shaker, shake (which latches), heater-shaker → deck.
    let move_to = |to: &str| CommandOp::MoveLabware { labware: "plate".into(), to: to.into() };
    gripper.locate("plate", "flex");
    let plate_def = Library::shipped().get("corning_96_wellplate_360ul_flat").unwrap().clone();
    gripper.carries("plate", &plate_def, Some(slot));
    carry_out(gripper.as_ref(), &move_to("hs1")).await.unwrap();
    let on_module = where_is(&run_labware(rig.address.clone()).await, "plate").unwrap();
    assert!(on_module["moduleId"].is_string(), "the plate sits on the heater-shaker: {on_module}");
    let shake = CommandOp::Shake { labware: "plate".into(), rpm: 600.0, duration_s: 30.0, temperature_c: None };
    carry_out(hs.as_ref(), &shake).await.unwrap();
    assert!(!rig.sim.state.lock().unwrap().modules["hs1-sim"].latch_open, "the shake latched the plate");
    carry_out(gripper.as_ref(), &move_to("flex")).await.unwrap();
    let back = where_is(&run_labware(rig.address.clone()).await, "plate").unwrap();
    assert_eq!(back, serde_json::json!({"slotName": Robot::Flex.slot_name(slot)}), "back in its deck slot");

    // A plate the robot's run has not loaded: loaded where the executor says it is, then moved.
    gripper.locate("spare", "hs1");
    gripper.carries("spare", &plate_def, Some(5));
    carry_out(gripper.as_ref(), &CommandOp::MoveLabware { labware: "spare".into(), to: "flex".into() }).await.unwrap();
    assert_eq!(where_is(&run_labware(rig.address.clone()).await, "spare").unwrap()["slotName"], "C2");
    // A plate whose place is not known is refused before anything moves.
    let e = gripper.start(&CommandOp::MoveLabware { labware: "ghost".into(), to: "hs1".into() }).await.unwrap_err();
    assert!(e.to_string().contains("does not know where"), "{e}");

    let posted = rig.sim.state.lock().unwrap().posted.clone();
    let moves: Vec<&Value> = posted.iter().filter(|b| b["data"]["commandType"] == "moveLabware").collect();
    assert!(moves.iter().any(|b| b["data"]["params"]["strategy"] == "usingGripper"));
    if let Some(py) = engine_python() {
        let current = current_run(&rig.address).await;
        let commands =
            get(&rig.address, &format!("/runs/{current}/commands?cursor=0&pageLength=1000")).await["data"].clone();
        engine_check(py, posted, commands, "gripper").await;
    }

    // An OT-2 has no gripper: naming one is refused at connect.
    let ot2 = rig_for_ot2_gripper(&site).await;
    assert!(ot2.contains("only a Flex has a gripper"), "{ot2}");
}

/// Opens a gripper that names the OT-2 against a simulated OT-2; the error's text.
async fn rig_for_ot2_gripper(site: &Site) -> String {
    let rig = rig("ot2", "", OpentronsConfig::default()).await;
    let mut arm = site.arms.iter().find(|a| a.id == "gripper1").unwrap().clone();
    arm.robot = Some("ot2".into());
    arm.reach = vec!["ot2".into()];
    let cfg = devices::driver::OpenConfig { scale: FAST, sila_ca: None, robots: Default::default() };
    let ep = devices::link::Endpoint::parse(&format!("opentrons:{}", rig.address)).unwrap();
    devices::driver::open_mover(&arm, site, &ep, &cfg).await.err().unwrap().to_string()
}

/// A temperature module on the OT-2 (a site incubator plugged into the robot): an incubation is
/// set, wait, hold and deactivate through the robot; a latch is refused before anything is sent.
#[tokio::test]
async fn a_temperature_module_incubates_through_the_robot() {
    use devices::driver::{open, OpenConfig};
    let site = site();
    let rig = rig("ot2", "", OpentronsConfig::default()).await;
    let cfg = OpenConfig { scale: FAST, sila_ca: None, robots: Default::default() };
    let ep = devices::link::Endpoint::parse(&format!("opentrons:{}", rig.address)).unwrap();
    let temp = open(site.instruments.iter().find(|i| i.id == "temp1").unwrap(), &ep, &cfg).await.unwrap();
    assert_eq!(temp.identify().await.unwrap().model, "temperatureModuleV2");
    let hold = CommandOp::Incubate {
        labware: "plate".into(),
        temperature_c: Some(4.0),
        duration_s: 600.0,
        shake_rpm: None,
        co2_percent: None,
    };
    carry_out(temp.as_ref(), &hold).await.unwrap();
    let posted: Vec<String> = rig
        .sim
        .state
        .lock()
        .unwrap()
        .posted
        .iter()
        .filter_map(|b| b["data"]["commandType"].as_str().map(String::from))
        .collect();
    assert_eq!(
        posted,
        [
            "loadModule",
            "temperatureModule/setTargetTemperature",
            "temperatureModule/waitForTemperature",
            "temperatureModule/deactivate"
        ]
    );
    let p = rig.sim.state.lock().unwrap().modules["temp1-sim"].clone();
    assert_eq!(p.target_c, None, "deactivated after the hold: {p:?}");
    let e = temp.start(&CommandOp::Latch { open: true }).await.unwrap_err();
    assert!(e.to_string().contains("no latch"), "{e}");
    let shaken = CommandOp::Incubate {
        labware: "plate".into(),
        temperature_c: Some(30.0),
        duration_s: 60.0,
        shake_rpm: Some(300.0),
        co2_percent: None,
    };
    assert!(temp.start(&shaken).await.unwrap_err().to_string().contains("cannot shake"));
}
