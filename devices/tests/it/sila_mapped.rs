//! Any SiLA 2 server through a `lab.toml` mapping: Python `sila2` servers built in the test from
//! feature definitions that are not Labwright's (`tests/peers/sila/`: a vendor-style thermal
//! sealer and centrifuge) are driven through the mapping, with unit conversion, an observable
//! command's progress, a defined execution error and a server that goes away mid-command; a
//! mapping naming what the server lacks is a startup error naming both.

use crate::support::{free_port, peers_python, repo, wait_port, Child};
use devices::driver::{open, OpenConfig};
use devices::link::Endpoint;
use devices::{Instrument, InstrumentError, Recovery, TimeScale};
use protocols::plan::CommandOp;
use std::path::Path;

/// Generates the server package from the two feature definitions and starts it.
fn python_stations(py: &Path, dir: &Path, port: u16, log: &Path) -> Child {
    let codegen = py.parent().unwrap().join("sila2-codegen");
    let fdl = repo().join("tests/peers/sila");
    let out = std::process::Command::new(codegen)
        .args(["new-package", "-n", "lwstations", "-o"])
        .arg(dir)
        .arg(fdl.join("ThermalSealer.sila.xml"))
        .arg(fdl.join("Centrifuge.sila.xml"))
        .arg(fdl.join("AbsorbanceReader.sila.xml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "sila2-codegen: {}", String::from_utf8_lossy(&out.stderr));
    for f in ["thermalsealer_impl.py", "centrifuge_impl.py", "absorbancereader_impl.py"] {
        std::fs::copy(fdl.join(f), dir.join("lwstations/feature_implementations").join(f)).unwrap();
    }
    let mut cmd = std::process::Command::new(py);
    cmd.current_dir(dir).env("LW_STATION_LOG", log).args([
        "-m",
        "lwstations",
        "--ip-address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--disable-discovery",
        "--insecure",
    ]);
    Child(cmd.stdout(std::process::Stdio::null()).spawn().unwrap())
}

const SEALER: &str = r#"
[[instrument]]
id = "sealer9"
class = "sealer"
labware = ["well_plate"]
seal_modes = ["seal", "peel"]
endpoint = "sila:ADDRESS"
sila = [
  { op = "seal", feature = "com.example/sealing/ThermalSealer/v1", command = "SealPlate", parameters = [
    { name = "SealTemperature", value = 170.0, offset = 273.15 },
    { name = "SealTime", value = 2.5, scale = 1000.0 },
    { name = "PlateId", from = "labware" },
  ] },
  { op = "peel", feature = "com.example/sealing/ThermalSealer/v1", command = "PeelPlate", parameters = [
    { name = "PlateId", from = "labware" },
  ] },
]

[[instrument]]
id = "hotel9"
class = "plate_hotel"
capacity = 20
endpoint = "sila:ADDRESS"

[[instrument]]
id = "cfg9"
class = "centrifuge"
labware = ["well_plate"]
max_g = 3000.0
endpoint = "sila:ADDRESS"
sila = [
  { op = "centrifuge", feature = "com.example/centrifugation/Centrifuge/v1", command = "Spin", parameters = [
    { name = "Force", from = "g" },
    { name = "DurationMinutes", from = "duration_s", scale = 0.016666666666666666 },
    { name = "Balanced", value = true },
  ] },
]

[[instrument]]
id = "reader9"
class = "plate_reader"
labware = ["well_plate"]
modes = ["absorbance", "luminescence"]
absorbance_nm = [400.0, 700.0]
endpoint = "sila:ADDRESS"
sila = [
  { op = "read_absorbance", feature = "com.example/measurement/AbsorbanceReader/v1", command = "MeasureAbsorbance", response = "OpticalDensities", unit = "OD", parameters = [
    { name = "PlateId", from = "labware" }, { name = "Wells", from = "wells" }, { name = "Wavelength", from = "wavelength_nm" },
  ] },
  { op = "read_luminescence", feature = "com.example/measurement/AbsorbanceReader/v1", command = "MeasureLuminescence", response = "Counts", unit = "RLU", parameters = [
    { name = "Wells", from = "wells" },
  ] },
]
"#;

/// What the fixture reader answers for a well at a wavelength (`absorbancereader_impl.py`).
fn density(well: &str, wavelength: f64) -> f64 {
    let row = (well.as_bytes()[0] - b'A') as f64;
    let column: f64 = well[1..].parse().unwrap();
    ((0.05 + row * 0.1 + column * 0.001 + wavelength / 100000.0) * 1e6).round() / 1e6
}

fn site_with(address: &str, instruments: &str) -> labware::Site {
    let prices = "[prices]\ncurrency = \"USD\"\nper_run = 5.0\n\n[prices.per_hour]\nsealer = 18.0\ncentrifuge = 15.0\nplate_reader = 30.0\n";
    let text = format!("[site]\nname = \"sila\"\n{}\n{prices}", instruments.replace("ADDRESS", address));
    labware::Site::from_toml(&text).unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(site: &labware::Site, id: &str) -> Result<std::sync::Arc<dyn Instrument>, InstrumentError> {
    let inst = site.instruments.iter().find(|i| i.id == id).unwrap();
    let config = OpenConfig { scale: TimeScale(1.0), sila_ca: None, robots: Default::default() };
    open(inst, &Endpoint::parse(&inst.endpoint).unwrap(), &config).await
}

fn log_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn any_sila_server_is_driven_through_its_lab_toml_mapping() {
    let Some(py) = peers_python() else { return };
    let dir = std::env::temp_dir().join(format!("lw-sila-mapped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.jsonl");
    let port = free_port();
    let mut server = python_stations(&py, &dir, port, &log);
    wait_port(port, 60).await;
    let address = format!("127.0.0.1:{port}");
    let site = site_with(&address, SEALER);

    // Sealing: constants converted (°C → K, s → ms), the plate's name from the plan command.
    let sealer = connect(&site, "sealer9").await.unwrap();
    assert!(!sealer.identify().await.unwrap().model.is_empty());
    let exec = sealer.start(&CommandOp::Seal { labware: "r1.plate".into() }).await.unwrap();
    let progress = exec.progress.clone();
    exec.finish().await.unwrap();
    assert_eq!(progress.borrow().fraction, 1.0);
    let calls = log_lines(&log);
    assert_eq!(calls[0]["command"], "SealPlate");
    assert!((calls[0]["SealTemperature"].as_f64().unwrap() - 443.15).abs() < 1e-9, "{}", calls[0]);
    assert_eq!(calls[0]["SealTime"], 2500);
    assert_eq!(calls[0]["PlateId"], "r1.plate");

    // A defined execution error keeps its identifier and is a failure, not a retry.
    let e = sealer.start(&CommandOp::Peel { labware: "noplate-3".into() }).await.unwrap().finish().await.unwrap_err();
    assert!(
        matches!(&e, InstrumentError::Device { code, message } if code == "NoPlate" && message.contains("noplate-3")),
        "{e}"
    );
    assert_eq!(e.recovery(), Recovery::Fail);
    // A command the mapping does not carry is refused before anything is sent.
    let e = sealer.start(&CommandOp::Cover { labware: "p".into() }).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Validation { .. }), "{e}");

    // Centrifuging: an observable command whose progress arrives while it runs; seconds sent
    // as minutes.
    let cfg = connect(&site, "cfg9").await.unwrap();
    let exec =
        cfg.start(&CommandOp::Centrifuge { labware: "r1.plate".into(), g: 1000.0, duration_s: 60.0 }).await.unwrap();
    let mut progress = exec.progress.clone();
    let mut seen = Vec::new();
    let finished = tokio::spawn(exec.finish());
    while let Ok(Ok(())) = tokio::time::timeout(std::time::Duration::from_secs(5), progress.changed()).await {
        seen.push(progress.borrow().fraction);
        if seen.last() == Some(&1.0) {
            break;
        }
    }
    finished.await.unwrap().unwrap();
    assert!(seen.iter().any(|f| *f > 0.0 && *f < 1.0), "progress while it ran: {seen:?}");
    let spin = log_lines(&log).into_iter().find(|c| c["command"] == "Spin").unwrap();
    assert!((spin["DurationMinutes"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{spin}");
    assert_eq!(spin["Force"], 1000.0);
    assert_eq!(spin["Balanced"], true);

    // Reading: a single-wavelength command called once per wavelength, the wells as a SiLA
    // list, the values back well-major with the mapping's unit; counts (Integers) as numbers.
    let reader = connect(&site, "reader9").await.unwrap();
    let wells: Vec<String> = ["A1", "B2", "H12"].map(String::from).to_vec();
    let read = CommandOp::ReadAbsorbance {
        labware: "r1.plate".into(),
        wells: wells.clone(),
        wavelengths_nm: vec![450.0, 600.0],
    };
    let outcome = reader.start(&read).await.unwrap().finish().await.unwrap();
    let m = &outcome.measurements[0];
    let expected: Vec<f64> = wells.iter().flat_map(|w| [density(w, 450.0), density(w, 600.0)]).collect();
    assert_eq!((m.kind.as_str(), m.unit.as_str(), &m.wells, &m.values), ("absorbance", "OD", &wells, &expected));
    let measured: Vec<serde_json::Value> =
        log_lines(&log).into_iter().filter(|c| c["command"] == "MeasureAbsorbance").collect();
    assert_eq!(measured.len(), 2, "one call per wavelength: {measured:?}");
    assert_eq!(measured[0]["Wells"], serde_json::json!(["A1", "B2", "H12"]));
    assert_eq!(measured[1]["Wavelength"], 600);
    let glow = CommandOp::ReadLuminescence { labware: "r1.plate".into(), wells: wells.clone() };
    let outcome = reader.start(&glow).await.unwrap().finish().await.unwrap();
    assert_eq!(outcome.measurements[0].values, [1000.0, 1001.0, 1002.0]);
    assert_eq!(outcome.measurements[0].unit, "RLU");
    let odd =
        CommandOp::ReadAbsorbance { labware: "r1.plate".into(), wells: wells.clone(), wavelengths_nm: vec![500.0] };
    let e = reader.start(&odd).await.unwrap().finish().await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "WavelengthNotAvailable"), "{e}");
    let unread = site_with(&address, &SEALER.replacen("response = \"Counts\"", "response = \"Photons\"", 1));
    let e = connect(&unread, "reader9").await.unwrap_err().to_string();
    assert!(e.contains("Photons") && e.contains("Counts"), "{e}");

    // A hotel takes no commands: at a SiLA endpoint with no mapping it is connected for its
    // identity and status.
    let hotel = connect(&site, "hotel9").await.unwrap();
    assert_eq!(hotel.status().await.unwrap().state, devices::State::Idle);
    let e = hotel.start(&CommandOp::Seal { labware: "p".into() }).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Validation { .. }), "{e}");

    // Mappings that name what the server lacks: startup errors naming both sides.
    let wrong = |from: &str, to: &str| site_with(&address, &SEALER.replacen(from, to, 1));
    let cases = [
        (wrong("command = \"SealPlate\"", "command = \"SealPlates\""), "SealPlates", "SealPlate, PeelPlate"),
        (
            wrong(
                "sealing/ThermalSealer/v1\", command = \"SealPlate\"",
                "sealing/Sealer/v1\", command = \"SealPlate\"",
            ),
            "com.example/sealing/Sealer/v1",
            "com.example/sealing/ThermalSealer/v1",
        ),
        (wrong("{ name = \"SealTime\", value = 2.5, scale = 1000.0 },", ""), "SealTime", "not given"),
        (
            wrong(
                "{ name = \"PlateId\", from = \"labware\" },",
                "{ name = \"PlateId\", from = \"labware\" },\n    { name = \"Pressure\", value = 3.0 },",
            ),
            "Pressure",
            "PlateId",
        ),
        (
            wrong("{ name = \"PlateId\", from = \"labware\" },", "{ name = \"PlateId\", from = \"rpm\" },"),
            "rpm",
            "labware",
        ),
    ];
    for (bad, names, has) in cases {
        let e = connect(&bad, "sealer9").await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(names) && text.contains(has), "{text}");
    }

    // The server going away mid-spin: the outcome is unknown, not "nothing happened".
    let exec =
        cfg.start(&CommandOp::Centrifuge { labware: "r2.plate".into(), g: 500.0, duration_s: 60.0 }).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = server.0.kill();
    let _ = server.0.wait();
    let e = tokio::time::timeout(std::time::Duration::from_secs(30), exec.finish()).await.unwrap().unwrap_err();
    assert_eq!(e.recovery(), Recovery::Indeterminate, "{e}");
    // And a server that is not there is a link to retry.
    let e = connect(&site, "cfg9").await.unwrap_err();
    assert_eq!(e.recovery(), Recovery::Retry, "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
