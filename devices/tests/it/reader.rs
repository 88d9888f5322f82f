//! The plate-reader driver and the simulated reader over SiLA 2 gRPC (insecure and TLS), and both
//! against peers: the Python `sila2` server with the same feature, and the SiLA interop tester.

use crate::support::{free_port, peers_python, repo, wait_port, Child};
use devices::driver::reader::{connect, PlateReaderDriver};
use devices::sila::server::{ReaderConfig, ReaderSim};
use devices::sila::FeatureClient;
use devices::sim::Faults;
use devices::{Instrument, InstrumentError, TimeScale};
use labware::Site;
use protocols::plan::CommandOp;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FAST: TimeScale = TimeScale(0.01);

async fn simulated(faults: &str, tls: Option<(String, String)>) -> std::net::SocketAddr {
    let site = Site::sim().unwrap();
    let inst = site.instruments.iter().find(|i| i.id == "reader1").unwrap();
    let bench = dilution_plate();
    let sim = ReaderSim::new(ReaderConfig::from_site(inst, FAST, Faults::parse(faults).unwrap()).on_bench(bench));
    sim.serve("127.0.0.1:0", tls).await.unwrap()
}

/// A plate `plate` holding a 1:2 dilution series of a dye that absorbs, fluoresces and glows,
/// along the columns (column 1 undiluted), 100 µL per well.
fn dilution_plate() -> devices::sim::bench::SharedBench {
    use labware::optics::Optics;
    let bench = devices::sim::bench::Bench::shared(1);
    let mut b = bench.lock().unwrap();
    let dye = Optics {
        absorbance: vec![(450.0, 2.0), (600.0, 0.5)],
        fluorescence_rfu: Some(40_000.0),
        luminescence_rlu_per_s: Some(250_000.0),
    };
    b.set_optics("dye", dye);
    for (i, well) in wells(96).iter().enumerate() {
        let dye = 100.0 * 0.5f64.powi((i / 8) as i32);
        b.fill("plate", well, "dye", dye);
        b.fill("plate", well, "buffer", 100.0 - dye);
    }
    drop(b);
    bench
}

fn wells(n: usize) -> Vec<String> {
    let rows = ["A", "B", "C", "D", "E", "F", "G", "H"];
    (0..n).map(|i| format!("{}{}", rows[i % 8], i / 8 + 1)).collect()
}

async fn read(d: &PlateReaderDriver, op: CommandOp) -> Result<devices::Outcome, InstrumentError> {
    d.start(&op).await?.finish().await
}

#[tokio::test]
async fn reads_a_plate_over_sila_with_progress_and_per_well_values() {
    let addr = simulated("", None).await;
    let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
    let id = d.identify().await.unwrap();
    assert_eq!(id.model, "LabwrightSimulatedPlateReader");
    assert_eq!(id.serial.len(), 36);
    assert!(d.features().await.unwrap().contains(&"org.labwright/instruments/PlateReader/v1".to_string()));
    let exec = d
        .start(&CommandOp::ReadAbsorbance {
            labware: "plate".into(),
            wells: wells(96),
            wavelengths_nm: vec![450.0, 600.0],
        })
        .await
        .unwrap();
    let progress = exec.progress.clone();
    let out = exec.finish().await.unwrap();
    assert!(progress.borrow().fraction > 0.0);
    let m = &out.measurements[0];
    assert_eq!((m.values.len(), m.unit.as_str(), m.kind.as_str()), (192, "OD", "absorbance"));
    assert!(m.values[0] > m.values[2 * 88], "column 1 is more concentrated than column 12");
    // Values come from the wells: A1 (undiluted dye) at 450 nm reads the blank plus the dye's 2.0
    // OD, B1 (its replicate) agrees within the noise, A2 (1:2) reads half the signal.
    let (a1, b1, a2) = (m.values[0], m.values[2], m.values[16]);
    assert!((a1 - 2.04).abs() < 0.2 && (a1 - b1).abs() < 0.15, "A1 {a1}, B1 {b1}");
    assert!(((a2 - 0.04) / (a1 - 0.04) - 0.5).abs() < 0.1, "A2 {a2} is half of A1 {a1}");
    assert!(m.values[1] < a1 / 2.0, "A1 at 600 nm absorbs less: {}", m.values[1]);
    assert!(!d.plate_present().await.unwrap(), "the plate was ejected after the read");
    // A plate left inside (a read that failed after loading it) is ejected to make it safe.
    d.load("plate").await.unwrap();
    assert_eq!(d.make_safe().await.unwrap(), "ejected the plate");
    assert!(!d.plate_present().await.unwrap());
    assert_eq!(d.make_safe().await.unwrap(), "no plate inside");
    let out = read(
        &d,
        CommandOp::ReadFluorescence {
            labware: "plate".into(),
            wells: wells(8),
            excitation_nm: 485.0,
            emission_nm: 528.0,
        },
    )
    .await
    .unwrap();
    assert_eq!(out.measurements[0].unit, "RFU");
    // Luminescence (a glow assay): one value per well in RLU, brighter where more is left.
    let out = read(&d, CommandOp::ReadLuminescence { labware: "plate".into(), wells: wells(96) }).await.unwrap();
    let m = &out.measurements[0];
    assert_eq!((m.values.len(), m.unit.as_str(), m.kind.as_str()), (96, "RLU", "luminescence"));
    assert!(m.values[0] > m.values[88] && m.values[88] > 0.0, "column 1 brighter than column 12: {:?}", m.values);
    assert!(!d.plate_present().await.unwrap(), "the plate was ejected after the read");
    assert_eq!(d.status().await.unwrap().temperature_c, Some(25.0));
}

/// A reader without a luminescence detector (the site's reader2) refuses the read with a SiLA
/// validation error, and gives the plate back.
#[tokio::test]
async fn a_reader_without_luminescence_refuses_it() {
    let site = Site::sim().unwrap();
    let inst = site.instruments.iter().find(|i| i.id == "reader2").unwrap();
    let sim = ReaderSim::new(ReaderConfig::from_site(inst, FAST, Faults::default()));
    let addr = sim.serve("127.0.0.1:0", None).await.unwrap();
    let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
    let e = read(&d, CommandOp::ReadLuminescence { labware: "plate".into(), wells: wells(8) }).await.unwrap_err();
    assert!(
        matches!(&e, InstrumentError::Validation { message, .. } if message.contains("no luminescence detector")),
        "{e:?}"
    );
    assert!(!d.plate_present().await.unwrap(), "nothing measured: the plate was given back");
}

#[tokio::test]
async fn sila_errors_are_classified() {
    let addr = simulated("", None).await;
    let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
    // A wavelength the reader cannot do: a SiLA validation error naming the parameter.
    let e =
        read(&d, CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells(1), wavelengths_nm: vec![1200.0] })
            .await
            .unwrap_err();
    match &e {
        InstrumentError::Validation { parameter, message } => {
            assert!(parameter.ends_with("ReadAbsorbance/Parameter/Wavelengths"), "{parameter}");
            assert!(message.contains("1200"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Defined execution errors.
    d.load("p1").await.unwrap();
    let e = d.load("p2").await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "PlateAlreadyLoaded"), "{e:?}");
    d.eject().await.unwrap();
    let e = d.eject().await.unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "NoPlateLoaded"), "{e:?}");

    // A stuck door (fault injection).
    let addr = simulated("stuck_door", None).await;
    let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
    let e =
        read(&d, CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells(4), wavelengths_nm: vec![600.0] })
            .await
            .unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "DoorStuck"), "{e:?}");
    assert_eq!(e.recovery(), devices::Recovery::Fail);

    // An injected device error during the read comes back through the result call.
    let addr = simulated("error=ReadAbsorbance:LampFailure", None).await;
    let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
    let e =
        read(&d, CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells(4), wavelengths_nm: vec![600.0] })
            .await
            .unwrap_err();
    assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "LampFailure"), "{e:?}");

    // A read that never finishes: the executor's deadline catches it (state unknown).
    let addr = simulated("timeout=ReadAbsorbance", None).await;
    let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
    let exec = d
        .start(&CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells(4), wavelengths_nm: vec![600.0] })
        .await
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(800), exec.finish()).await.is_err());

    // Nobody listening.
    let port = free_port();
    let e = connect(&format!("127.0.0.1:{port}"), None, Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(e, InstrumentError::Disconnected(_)), "{e:?}");
}

#[path = "../../../tests/support/certs.rs"]
mod certs;
use certs::certificates;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn the_simulated_reader_serves_tls() {
    let dir = temp_dir("tls");
    let (ca, cert, key) = certificates(&dir);
    let addr = simulated("", Some((cert, key))).await;
    let d = PlateReaderDriver::new(connect(&addr.to_string(), Some(&ca), Duration::from_secs(5)).await.unwrap());
    assert_eq!(d.identify().await.unwrap().model, "LabwrightSimulatedPlateReader");
    let out =
        read(&d, CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells(8), wavelengths_nm: vec![600.0] })
            .await
            .unwrap();
    assert_eq!(out.measurements[0].values.len(), 8);
    // Plain text against a TLS server fails as a lost link, not a hang.
    let plain = connect(&addr.to_string(), None, Duration::from_secs(2)).await;
    if let Ok(ch) = plain {
        assert!(PlateReaderDriver::new(ch).identify().await.is_err());
    }
}

/// Generates the Python server package from our FDL and starts it.
fn python_reader(py: &Path, dir: &Path, port: u16, tls: bool) -> Child {
    let codegen = py.parent().unwrap().join("sila2-codegen");
    let out = std::process::Command::new(codegen)
        .args(["new-package", "-n", "lwreader", "-o"])
        .arg(dir)
        .arg(repo().join("protos/proto/sila2/PlateReader.sila.xml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "sila2-codegen: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::copy(
        repo().join("tests/peers/platereader_impl.py"),
        dir.join("lwreader/feature_implementations/platereader_impl.py"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(py);
    cmd.current_dir(dir).args([
        "-m",
        "lwreader",
        "--ip-address",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--disable-discovery",
    ]);
    if tls {
        // With discovery off the Python server needs its certificate and key given.
        cmd.arg("--cert-file").arg(dir.join("server.pem")).arg("--private-key-file").arg(dir.join("server.key"));
    } else {
        cmd.arg("--insecure");
    }
    Child(cmd.stdout(std::process::Stdio::null()).spawn().unwrap())
}

#[tokio::test]
async fn the_driver_reads_from_the_python_sila2_server() {
    let Some(py) = peers_python() else { return };
    for tls in [false, true] {
        let dir = temp_dir(if tls { "pysila-tls" } else { "pysila" });
        let port = free_port();
        let ca = if tls { Some(certificates(&dir).0) } else { None };
        let _server = python_reader(&py, &dir, port, tls);
        wait_port(port, 60).await;
        let d = PlateReaderDriver::new(
            connect(&format!("127.0.0.1:{port}"), ca.as_deref(), Duration::from_secs(5)).await.unwrap(),
        );
        let id = d.identify().await.unwrap();
        assert_eq!(id.serial.len(), 36, "{id:?}");
        assert!(d.features().await.unwrap().contains(&"org.labwright/instruments/PlateReader/v1".to_string()));
        let out = read(
            &d,
            CommandOp::ReadAbsorbance { labware: "plate".into(), wells: wells(12), wavelengths_nm: vec![450.0, 600.0] },
        )
        .await
        .unwrap();
        let m = &out.measurements[0];
        assert_eq!((m.values.len(), m.unit.as_str()), (24, "OD"));
        assert!((m.values[0] - (0.05 + 1.5 + 0.0045)).abs() < 1e-9, "A1 at 450 nm: {}", m.values[0]);
        let out = read(
            &d,
            CommandOp::ReadFluorescence {
                labware: "plate".into(),
                wells: wells(3),
                excitation_nm: 485.0,
                emission_nm: 528.0,
            },
        )
        .await
        .unwrap();
        assert_eq!(out.measurements[0].unit, "RFU");
        let out = read(&d, CommandOp::ReadLuminescence { labware: "plate".into(), wells: wells(3) }).await.unwrap();
        assert_eq!((out.measurements[0].unit.as_str(), out.measurements[0].values.len()), ("RLU", 3));
        // The Python server's defined execution error arrives classified.
        let e = d.load("stuck").await.unwrap_err();
        assert!(matches!(&e, InstrumentError::Device { code, .. } if code == "DoorStuck"), "{e:?}");
        assert_eq!(d.status().await.unwrap().temperature_c, Some(26.5));
    }
}

/// Hand-written messages of the interop tester's ObservableCommandTest feature (field numbers
/// from its FDL); the generic observable-command client drives them.
mod observable_test {
    use protos::sila2::framework::{Integer, Real};
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CountParameters {
        #[prost(message, optional, tag = "1")]
        pub n: Option<Integer>,
        #[prost(message, optional, tag = "2")]
        pub delay: Option<Real>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CountResponses {
        #[prost(message, optional, tag = "1")]
        pub iteration_response: Option<Integer>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoParameters {
        #[prost(message, optional, tag = "1")]
        pub value: Option<Integer>,
        #[prost(message, optional, tag = "2")]
        pub delay: Option<Real>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoResponses {
        #[prost(message, optional, tag = "1")]
        pub received_value: Option<Integer>,
    }
}

#[tokio::test]
async fn the_interop_tester_grades_our_client_and_our_server() {
    let Some(py) = peers_python() else { return };
    use protos::sila2::framework::{Integer, Real, String as S};
    use protos::sila2::silaservice as ss;

    // 1. Its test server records what our client does, then grades it (only the features we use).
    let dir = temp_dir("interop-server");
    let port = free_port();
    let report = dir.join("client-report.xml");
    let mut server = std::process::Command::new(&py)
        .current_dir(&dir)
        .args([
            "-m",
            "sila2_interop_communication_tester.test_server",
            "--server-address",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--report-file")
        .arg(&report)
        .args([
            "test_silaservice.py::test_get_feature_definition_called_for_silaservice",
            "test_silaservice.py::test_set_server_name_called_with_SiLA_is_Awesome",
            "test_silaservice.py::test_server_name_requested",
            "test_silaservice.py::test_server_type_requested",
            "test_silaservice.py::test_server_uuid_requested",
            "test_silaservice.py::test_server_description_requested",
            "test_silaservice.py::test_server_version_requested",
            "test_silaservice.py::test_server_vendor_url_requested",
            "test_silaservice.py::test_implemented_features_requested",
            "test_observable_command.py::test_count_called_with_value_5_and_delay_1",
            "test_observable_command.py::test_count_info_read_from_start_to_end",
            "test_observable_command.py::test_count_result_was_collected",
            "test_observable_command.py::test_echo_value_after_delay_called_with_value_3_and_delay_5",
            "test_observable_command.py::test_echo_value_after_delay_info_read_from_start_to_end",
            "test_observable_command.py::test_echo_value_after_delay_result_was_collected",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port, 60).await;
    let channel = connect(&format!("127.0.0.1:{port}"), None, Duration::from_secs(5)).await.unwrap();
    let mut svc = FeatureClient::new(channel.clone(), "sila2.org.silastandard.core.silaservice.v1.SiLAService");
    let fdl: ss::GetFeatureDefinitionResponses = svc
        .unary(
            "GetFeatureDefinition",
            ss::GetFeatureDefinitionParameters {
                feature_identifier: Some(S { value: "org.silastandard/core/SiLAService/v1".into() }),
            },
        )
        .await
        .unwrap();
    assert!(fdl.feature_definition.unwrap().value.contains("SiLAService"));
    let _: ss::SetServerNameResponses = svc
        .unary(
            "SetServerName",
            ss::SetServerNameParameters { server_name: Some(S { value: "SiLA is Awesome".into() }) },
        )
        .await
        .unwrap();
    let _: ss::GetServerNameResponses = svc.unary("Get_ServerName", ss::GetServerNameParameters {}).await.unwrap();
    let _: ss::GetServerDescriptionResponses =
        svc.unary("Get_ServerDescription", ss::GetServerDescriptionParameters {}).await.unwrap();
    let _: ss::GetServerVendorUrlResponses =
        svc.unary("Get_ServerVendorURL", ss::GetServerVendorUrlParameters {}).await.unwrap();
    let _: ss::GetImplementedFeaturesResponses =
        svc.unary("Get_ImplementedFeatures", ss::GetImplementedFeaturesParameters {}).await.unwrap();
    let id = PlateReaderDriver::new(channel.clone()).identify().await.unwrap(); // ServerType, UUID, Version
    assert_eq!(id.serial.len(), 36);
    let oc = "sila2.org.silastandard.test.observablecommandtest.v1.ObservableCommandTest";
    let mut a = FeatureClient::new(channel.clone(), oc);
    let mut b = FeatureClient::new(channel, oc);
    let none = |_: f64| {};
    let (count, echo) = tokio::join!(
        a.observe::<_, observable_test::CountResponses>(
            "Count",
            observable_test::CountParameters { n: Some(Integer { value: 5 }), delay: Some(Real { value: 1.0 }) },
            &none
        ),
        b.observe::<_, observable_test::EchoResponses>(
            "EchoValueAfterDelay",
            observable_test::EchoParameters { value: Some(Integer { value: 3 }), delay: Some(Real { value: 5.0 }) },
            &none
        )
    );
    assert_eq!(count.unwrap().iteration_response.unwrap().value, 4);
    assert_eq!(echo.unwrap().received_value.unwrap().value, 3);
    let pid = server.id().to_string();
    std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
    let xml = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(status.success(), "the interop tester failed our client:\n{xml}");
    assert!(xml.contains("tests=\"15\"") && xml.contains("failures=\"0\""), "{xml}");

    // 2. Its test client grades our simulated reader's SiLAService (25 tests).
    let addr = simulated("", None).await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&py)
            .current_dir(&dir)
            .args([
                "-m",
                "sila2_interop_communication_tester.test_client",
                "--server-address",
                &addr.to_string(),
                "sila_service/",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the interop tester failed our server:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("25 passed"), "{text}");
}

/// Every plate-reader task of every example, run through the driver against the simulated reader
/// it would run on: the compiler's estimate against the reader's own door and read time.
#[tokio::test]
async fn quoted_reads_agree_with_the_simulated_readers_timing_within_ten_percent() {
    let site = Site::sim().unwrap();
    let lib = labware::Library::shipped();
    let mut report = Vec::new();
    let mut worst: f64 = 0.0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("protocols/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let c = protocols::compile(&protocols::SourceFile::new(&name, text), protocols::Format::Auto, &site, &lib);
        let plan = c.plan.unwrap();
        for task in plan.tasks.iter().filter(|t| t.class == Some(labware::InstrumentClass::PlateReader)) {
            let id = task.instruments.first().map_or("reader1", String::as_str);
            let inst = site.instruments.iter().find(|i| i.id == id).unwrap();
            let sim = ReaderSim::new(ReaderConfig::from_site(inst, TimeScale(0.0001), Faults::default()));
            let addr = sim.clone().serve("127.0.0.1:0", None).await.unwrap();
            let d = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
            for cmd in &task.commands {
                d.start(&cmd.op).await.unwrap().finish().await.unwrap();
            }
            let ratio = task.duration_s / sim.busy_s();
            worst = worst.max((ratio - 1.0).abs());
            report.push(format!(
                "{name} task {} ({}, {id}): quoted {:.1} s, simulator {:.1} s, ratio {ratio:.3}",
                task.id,
                task.label,
                task.duration_s,
                sim.busy_s()
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(report.len() >= 4, "the examples read plates: {report:?}");
    assert!(worst <= 0.10, "a quote is off by {:.1}%:\n{}", worst * 100.0, report.join("\n"));
}
