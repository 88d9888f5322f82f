//! PyLabRobot's machines through Labwright's bridge (`bridges/pylabrobot/`): the compiled serial
//! dilution, driven over SiLA 2 through the generic mapping of `bridges/pylabrobot/lab.toml`,
//! becomes the Hamilton STAR firmware stream PyLabRobot's STAR chatterbox logs — one tip pick-up,
//! aspiration, dispense and drop per plan step, in order, with the plan's volumes — and a bridge
//! restarted mid-run surfaces as errors of the right class.

use crate::support::{free_port, peers_python, repo, wait_port, Child};
use devices::driver::{open, OpenConfig};
use devices::link::Endpoint;
use devices::{family, Family, InstrumentError, Recovery, TimeScale};
use labware::{Library, Site};
use protocols::plan::CommandOp;
use std::path::Path;

fn bridge(py: &Path, port: u16, dir: &Path, firmware: &Path) -> Child {
    Child(
        std::process::Command::new(py)
            .arg(repo().join("bridges/pylabrobot/bridge.py"))
            .args(["--port", &port.to_string(), "--workdir"])
            .arg(dir)
            .arg("--firmware-log")
            .arg(firmware)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The firmware commands of one kind with their first channel's volume (0.1 µL units).
fn stream(firmware: &Path) -> Vec<(String, Option<u32>)> {
    std::fs::read_to_string(firmware)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let kind = l.get(0..4)?.to_string();
            let field = match kind.as_str() {
                "C0AS" => "av",
                "C0DS" => "dv",
                "C0TP" | "C0TR" => "",
                _ => return None,
            };
            let volume = (!field.is_empty())
                .then(|| l.split('&').find_map(|p| p.split_once(field).and_then(|(_, v)| v.get(0..5)?.parse().ok())))
                .flatten();
            Some((kind, volume))
        })
        .collect()
}

#[tokio::test]
async fn a_serial_dilution_through_the_bridge_is_the_star_firmware_stream_pylabrobot_logs() {
    let Some(py) = peers_python() else { return };
    let dir = std::env::temp_dir().join(format!("lw-plr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let firmware = dir.join("star.log");
    let port = free_port();
    let mut server = bridge(&py, port, &dir.join("pkg"), &firmware);
    wait_port(port, 90).await;
    let text = std::fs::read_to_string(repo().join("bridges/pylabrobot/lab.toml")).unwrap();
    let site = Site::from_toml(&text.replace("127.0.0.1:50070", &format!("127.0.0.1:{port}"))).unwrap();
    let star = site.instruments.iter().find(|i| i.id == "star1").unwrap();
    let config = OpenConfig { scale: TimeScale(1.0), sila_ca: None, robots: Default::default() };
    let driver = open(star, &Endpoint::parse(&star.endpoint).unwrap(), &config).await.unwrap();

    // The pipetting of the serial dilution (this site has no reader).
    let source = std::fs::read_to_string(repo().join("protocols/examples/serial-dilution.yaml"))
        .unwrap()
        .replace("  - read_absorbance: { labware: plate, wavelength: 600 nm }\n", "");
    let c = protocols::compile(
        &protocols::SourceFile::new("serial-dilution.yaml", source),
        protocols::Format::Auto,
        &site,
        &Library::shipped(),
    );
    let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    driver.prepare(&plan).await.unwrap();
    // What the STAR must receive, in order: one firmware command per tip step and per stroke.
    let mut expected: Vec<(String, Option<u32>)> = Vec::new();
    let tenths = |ul: f64| Some((ul * 10.0).round() as u32);
    for cmd in plan.tasks.iter().flat_map(|t| &t.commands).filter(|c| family(&c.op) == Family::LiquidHandler) {
        match &cmd.op {
            CommandOp::PickUpTip { .. } => expected.push(("C0TP".into(), None)),
            CommandOp::DropTip { .. } => expected.push(("C0TR".into(), None)),
            CommandOp::Aspirate { volume_ul, .. } => expected.push(("C0AS".into(), tenths(*volume_ul))),
            CommandOp::Dispense { volume_ul, .. } => expected.push(("C0DS".into(), tenths(*volume_ul))),
            CommandOp::Mix { volume_ul, times, .. } => {
                for _ in 0..*times {
                    expected.push(("C0AS".into(), tenths(*volume_ul)));
                    expected.push(("C0DS".into(), tenths(*volume_ul)));
                }
            }
            other => panic!("the serial dilution has no {other:?}"),
        }
        driver.start(&cmd.op).await.unwrap().finish().await.unwrap_or_else(|e| panic!("{:?}: {e}", cmd.op));
    }
    let got = stream(&firmware);
    let count = |k: &str| got.iter().filter(|(kind, _)| kind == k).count();
    assert!(count("C0AS") > 200, "{} aspirations", count("C0AS"));
    assert_eq!(got, expected, "the STAR firmware stream follows the plan step for step");
    eprintln!(
        "pylabrobot bridge: {} firmware commands (C0TP {}, C0AS {}, C0DS {}, C0TR {})",
        got.len(),
        count("C0TP"),
        count("C0AS"),
        count("C0DS"),
        count("C0TR")
    );

    // The bridge gone between steps. The first call may die on the old connection, sent or not
    // (an unknown outcome, for a person); once the server is known to be gone, nothing is sent
    // and the link is retried.
    let _ = server.0.kill();
    let _ = server.0.wait();
    let pick = CommandOp::PickUpTip { pipette: "p300_single".into(), rack: "tips_b".into(), well: "H12".into() };
    let first = driver.start(&pick).await.unwrap().finish().await.unwrap_err();
    assert_ne!(first.recovery(), Recovery::Fail, "{first}");
    let e = driver.start(&pick).await.unwrap().finish().await.unwrap_err();
    assert_eq!(e.recovery(), Recovery::Retry, "{e}");
    // Restarted, it has forgotten the deck: the step fails in its words until the task's deck is
    // sent again.
    let _server = bridge(&py, port, &dir.join("pkg"), &firmware);
    wait_port(port, 90).await;
    let e = loop {
        match driver.start(&pick).await.unwrap().finish().await {
            Err(InstrumentError::Disconnected(_)) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            other => break other.unwrap_err(),
        }
    };
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "UnknownLabware"), "{e}");
    driver.prepare(&plan).await.unwrap();
    driver.start(&pick).await.unwrap().finish().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
