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
    bridge_with(py, port, dir, &["--firmware-log".as_ref(), firmware.as_os_str()])
}

fn bridge_with(py: &Path, port: u16, dir: &Path, args: &[&std::ffi::OsStr]) -> Child {
    Child(
        std::process::Command::new(py)
            .arg(repo().join("bridges/pylabrobot/bridge.py"))
            .args(["--port", &port.to_string(), "--workdir"])
            .arg(dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn bridged_site(port: u16) -> Site {
    let text = std::fs::read_to_string(repo().join("bridges/pylabrobot/lab.toml")).unwrap();
    Site::from_toml(&text.replace("127.0.0.1:50070", &format!("127.0.0.1:{port}"))).unwrap()
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
    let site = bridged_site(port);
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

/// PyLabRobot's plate reader, heater-shaker, centrifuge and incubator (their chatterbox backends) behind the
/// bridge, driven through the mappings of `bridges/pylabrobot/lab.toml`: what PyLabRobot's
/// backends were asked to do is what the plan said, a heated shake is heat, wait, shake and stop
/// heating, and a machine the bridge does not serve is refused at connect.
#[tokio::test]
async fn the_bridge_serves_pylabrobots_reader_heater_shaker_centrifuge_and_incubator() {
    let Some(py) = peers_python() else { return };
    let dir = std::env::temp_dir().join(format!("lw-plr-stations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("machines.log");
    let port = free_port();
    let chatterbox = std::ffi::OsStr::new("chatterbox");
    let args: Vec<&std::ffi::OsStr> = vec![
        "--liquid-handler".as_ref(),
        "none".as_ref(),
        "--reader".as_ref(),
        chatterbox,
        "--heater-shaker".as_ref(),
        chatterbox,
        "--centrifuge".as_ref(),
        chatterbox,
        "--incubator".as_ref(),
        chatterbox,
        "--machine-log".as_ref(),
        log.as_os_str(),
    ];
    let _server = bridge_with(&py, port, &dir.join("pkg"), &args);
    wait_port(port, 90).await;
    let site = bridged_site(port);
    let config = OpenConfig { scale: TimeScale(1.0), sila_ca: None, robots: Default::default() };
    let connect = |id: &str| {
        let inst = site.instruments.iter().find(|i| i.id == id).unwrap().clone();
        let config = config.clone();
        async move { open(&inst, &Endpoint::parse(&inst.endpoint).unwrap(), &config).await }
    };
    let printed = || std::fs::read_to_string(&log).unwrap_or_default();

    let reader = connect("reader1").await.unwrap();
    let wells: Vec<String> = ["A1", "B3", "H12"].map(String::from).to_vec();
    let read =
        CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells.clone(), wavelengths_nm: vec![450.0, 600.0] };
    let outcome = reader.start(&read).await.unwrap().finish().await.unwrap();
    let m = &outcome.measurements[0];
    assert_eq!((m.wells.len(), m.values.len(), m.unit.as_str()), (3, 6, "OD"), "{m:?}");
    assert!(m.values.iter().all(|v| *v == 0.0), "the chatterbox reads zeros: {m:?}");
    assert!(
        printed().contains("Reading absorbance at wavelength 450.")
            && printed().contains("Reading absorbance at wavelength 600."),
        "{}",
        printed()
    );
    let glow = CommandOp::ReadLuminescence { labware: "plate".into(), wells: wells.clone() };
    assert_eq!(reader.start(&glow).await.unwrap().finish().await.unwrap().measurements[0].values.len(), 3);

    let hs = connect("hs1").await.unwrap();
    let warm = CommandOp::Shake { labware: "plate".into(), rpm: 800.0, duration_s: 0.2, temperature_c: Some(37.0) };
    hs.start(&warm).await.unwrap().finish().await.unwrap();
    let text = printed();
    let order = [
        "Setting the temperature to 37.0.",
        "Shaking at speed 800.0",
        "Stopping shaking",
        "Deactivating the temperature controller.",
    ];
    let at: Vec<usize> = order.iter().map(|l| text.find(l).unwrap_or_else(|| panic!("no {l:?} in\n{text}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "heat, shake, stop, cool in that order:\n{text}");

    // Without a way to stop heating, a heated shake is refused, never run cold or left hot.
    let text = std::fs::read_to_string(repo().join("bridges/pylabrobot/lab.toml")).unwrap();
    let cut = text.replace("127.0.0.1:50070", &format!("127.0.0.1:{port}")).replace(
        "  { op = \"stop_heating\", feature = \"org.labwright/bridges/HeaterShaker/v1\", command = \"Deactivate\" },\n",
        "",
    );
    let cut = Site::from_toml(&cut).unwrap();
    let inst = cut.instruments.iter().find(|i| i.id == "hs1").unwrap();
    let cold = open(inst, &Endpoint::parse(&inst.endpoint).unwrap(), &config).await.unwrap();
    let e = cold.start(&warm).await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Validation { parameter, .. } if parameter == "temperature_c"), "{e}");

    let cf = connect("cfg1").await.unwrap();
    cf.start(&CommandOp::Centrifuge { labware: "plate".into(), g: 1000.0, duration_s: 30.0 })
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert!(printed().contains("Starting spin cycle with g: 1000.0, duration: 30.0"), "{}", printed());

    // An incubation without shaking: the mapping's default speed (0, the feature's "none").
    let inc = connect("inc1").await.unwrap();
    let still = CommandOp::Incubate {
        labware: "plate".into(),
        temperature_c: Some(37.0),
        duration_s: 0.2,
        shake_rpm: None,
        co2_percent: None,
    };
    inc.start(&still).await.unwrap().finish().await.unwrap();
    let text = printed();
    assert!(text.contains("Setting temperature to 37.0") && text.contains("Fetching plate"), "{text}");
    assert!(!text.contains("Starting shaking at"), "no shaking was asked for:\n{text}");
    let shaken = CommandOp::Incubate {
        labware: "plate".into(),
        temperature_c: Some(30.0),
        duration_s: 0.2,
        shake_rpm: Some(300.0),
        co2_percent: None,
    };
    inc.start(&shaken).await.unwrap().finish().await.unwrap();
    assert!(printed().contains("Starting shaking at 5.0 Hz"), "{}", printed());

    // The liquid handler is not served by this bridge: its mapping is refused at connect.
    let e = connect("star1").await.err().unwrap().to_string();
    assert!(e.contains("org.labwright/bridges/LiquidHandler/v1") && e.contains("does not implement"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
