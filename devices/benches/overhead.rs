//! Driver overhead per command beyond the device's own time, over a PTY (serial), over
//! loopback gRPC (SiLA 2), over loopback HTTP (an Opentrons robot's API) and through the
//! PyLabRobot bridge (SiLA 2 to a Python server, when the peers' venv is there): p50 and p99 of many round trips against simulators whose device time
//! is zero, with a raw PTY echo measured in the same run as the floor.
//!
//! `cargo bench -p devices --bench overhead` (ROUNDS=N to change the sample size).

use devices::codec::module::{Dialect, Request};
use devices::driver::liquid::{LiquidConfig, LiquidHandlerDriver};
use devices::driver::module::{ModuleConfig, ModuleDriver};
use devices::driver::reader::{connect, PlateReaderDriver};
use devices::link::{Endpoint, Link};
use devices::sila::server::{ReaderConfig, ReaderSim};
use devices::sim::liquid::LiquidSim;
use devices::sim::module::{error_reply_for, ModuleSim};
use devices::sim::{spawn_serial, Faults, SimClock};
use devices::{Instrument, TimeScale};
use protocols::plan::CommandOp;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Device time off: what is measured is the driver, the link and the simulator's bookkeeping.
const INSTANT: TimeScale = TimeScale(1e-9);

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99), at(1.0))
}

fn report(name: &str, v: Vec<Duration>) {
    let n = v.len();
    let (p50, p99, max) = percentiles(v);
    println!("{name:<58} n={n:<6} p50 {p50:>8.1} µs   p99 {p99:>8.1} µs   max {max:>8.1} µs");
}

async fn time<F, Fut>(rounds: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..rounds / 10 {
        f().await; // warm up
    }
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        f().await;
        out.push(t.elapsed());
    }
    out
}

/// The example serial dilution compiled for `site` (without its read where the site has no reader).
fn serial_dilution(site: &labware::Site, with_read: bool) -> protocols::plan::RunPlan {
    let mut text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../protocols/examples/serial-dilution.yaml"))
            .unwrap();
    if !with_read {
        text = text.replace("  - read_absorbance: { labware: plate, wavelength: 600 nm }\n", "");
    }
    let c = protocols::compile(
        &protocols::SourceFile::new("sd.yaml", text),
        protocols::Format::Auto,
        site,
        &labware::Library::shipped(),
    );
    c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        // Floor: a raw line echo over a PTY pair, no codec, no driver.
        let (master, pty) = devices::sim::pty().unwrap();
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(master);
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if w.write_all(format!("{l}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let port = devices::link::open_serial(&pty.path).unwrap();
        let (r, mut w) = tokio::io::split(port);
        let mut lines = BufReader::new(r).lines();
        let mut floor = Vec::with_capacity(rounds);
        for i in 0..rounds + rounds / 10 {
            let t = Instant::now();
            w.write_all(b"ping\n").await.unwrap();
            lines.next_line().await.unwrap();
            if i >= rounds / 10 {
                floor.push(t.elapsed());
            }
        }
        report("baseline: raw line echo over a PTY", floor);

        // Serial: a heater-shaker query through the module driver.
        let hs = spawn_serial(
            ModuleSim::new(Dialect::HeaterShaker, "b"),
            Faults::default(),
            SimClock::new(INSTANT),
            |_, c| error_reply_for(Dialect::HeaterShaker, c),
        )
        .unwrap();
        let d = ModuleDriver::new(
            Dialect::HeaterShaker,
            Link::open(Endpoint::Serial(hs.path.clone())).await.unwrap(),
            ModuleConfig::for_dialect(Dialect::HeaterShaker, INSTANT),
        );
        let v = time(rounds, || {
            let d = d.clone();
            async move {
                d.request(Request::new("M105")).await.unwrap();
            }
        })
        .await;
        report("serial: heater-shaker M105 exchange (module driver)", v);
        let v = time(rounds, || {
            let d = d.clone();
            async move {
                d.start(&CommandOp::SetTemperature { labware: None, temperature_c: 37.0 })
                    .await
                    .unwrap()
                    .finish()
                    .await
                    .unwrap();
            }
        })
        .await;
        report("serial: heater-shaker set_temperature command (Instrument)", v);

        // Serial: a liquid-handler aspirate/dispense pair (7 G-code lines each, with M400).
        let site = labware::Site::sim().unwrap();
        let inst = site.instruments.iter().find(|i| i.id == "lh1").unwrap().clone();
        let sim = LiquidSim::new(&inst, labware::Library::shipped());
        let state = sim.state.clone();
        let lh =
            spawn_serial(sim, Faults::default(), SimClock::new(INSTANT), devices::sim::liquid::error_reply).unwrap();
        let driver = LiquidHandlerDriver::new(
            &inst,
            labware::Library::shipped(),
            Link::open(Endpoint::Serial(lh.path.clone())).await.unwrap(),
            LiquidConfig::default(),
        );
        let plan = serial_dilution(&site, true);
        driver.prepare(&plan).await.unwrap();
        state.lock().unwrap().fill("reservoir", "A1", 10_000.0);
        let p = "p300_single".to_string();
        let go = |op: CommandOp| {
            let d = driver.clone();
            async move { d.start(&op).await.unwrap().finish().await.unwrap() }
        };
        go(CommandOp::PickUpTip { pipette: p.clone(), rack: "tips_a".into(), well: "A1".into() }).await;
        let v = time(rounds / 3, || {
            let go = &go;
            let p = p.clone();
            async move {
                go(CommandOp::Aspirate {
                    pipette: p.clone(),
                    labware: "reservoir".into(),
                    well: "A1".into(),
                    volume_ul: 100.0,
                })
                .await;
                go(CommandOp::Dispense {
                    pipette: p.clone(),
                    labware: "reservoir".into(),
                    well: "A1".into(),
                    volume_ul: 100.0,
                })
                .await;
            }
        })
        .await;
        report("serial: liquid-handler aspirate+dispense (2 commands, 12 lines)", v);

        // SiLA: a unary property read and a whole observable read over loopback gRPC.
        let reader = site.instruments.iter().find(|i| i.id == "reader1").unwrap();
        let addr = ReaderSim::new(ReaderConfig::from_site(reader, INSTANT, Faults::default()))
            .serve("127.0.0.1:0", None)
            .await
            .unwrap();
        let r = PlateReaderDriver::new(connect(&addr.to_string(), None, Duration::from_secs(5)).await.unwrap());
        let v = time(rounds, || {
            let r = r.clone();
            async move {
                r.plate_present().await.unwrap();
            }
        })
        .await;
        report("sila: Get_PlatePresent (unary, loopback gRPC)", v);
        r.load("bench").await.unwrap();
        let v = time(rounds / 3, || {
            let r = r.clone();
            async move {
                let op = CommandOp::ReadAbsorbance {
                    labware: "bench".into(),
                    wells: vec!["A1".into()],
                    wavelengths_nm: vec![600.0],
                };
                r.start(&op).await.unwrap().finish().await.unwrap();
                r.load("bench").await.unwrap();
            }
        })
        .await;
        report("sila: read_absorbance + load (observable: start, info, result, eject)", v);

        // HTTP: an Opentrons robot's API on loopback (the simulated robot, device time off).
        let ot_site = labware::Site::from_toml(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sites/opentrons.toml")).unwrap(),
        )
        .unwrap();
        let ot2 = ot_site.instruments.iter().find(|i| i.id == "ot2").unwrap();
        let robot = devices::codec::opentrons::Robot::carrying(&ot2.pipettes);
        let cfg = devices::sim::opentrons::OpentronsConfig::from_site(ot2, robot, INSTANT, Faults::default());
        let bench = devices::sim::bench::SharedBench::default();
        let sim = devices::sim::opentrons::OpentronsSim::new(cfg, labware::Library::shipped(), bench.clone());
        let (addr, _server) = sim.serve("127.0.0.1:0").await.unwrap();
        let ot = devices::driver::opentrons::OpentronsDriver::new(
            ot2,
            &addr.to_string(),
            labware::Library::shipped(),
            devices::driver::opentrons::OpentronsConfig::default(),
        );
        let v = time(rounds, || {
            let ot = ot.clone();
            async move {
                ot.identify().await.unwrap();
            }
        })
        .await;
        report("http: Opentrons identify (GET /health)", v);
        let plan = serial_dilution(&ot_site, true);
        ot.prepare(&plan).await.unwrap();
        bench.lock().unwrap().fill("reservoir", "A1", "water", 10_000.0);
        let p = "p300_single_gen2".to_string();
        let go = |op: CommandOp| {
            let d = ot.clone();
            async move { d.start(&op).await.unwrap().finish().await.unwrap() }
        };
        go(CommandOp::PickUpTip { pipette: p.clone(), rack: "tips_a".into(), well: "A1".into() }).await;
        let v = time(rounds / 3, || {
            let go = &go;
            let p = p.clone();
            async move {
                let at = |volume_ul| (p.clone(), "reservoir".to_string(), "A1".to_string(), volume_ul);
                let (pipette, labware, well, volume_ul) = at(100.0);
                go(CommandOp::Aspirate { pipette, labware, well, volume_ul }).await;
                let (pipette, labware, well, volume_ul) = at(100.0);
                go(CommandOp::Dispense { pipette, labware, well, volume_ul }).await;
            }
        })
        .await;
        report("http: Opentrons aspirate+dispense (2 commands, 2 POSTs)", v);

        // Bridged: a PyLabRobot STAR (chatterbox) behind bridges/pylabrobot over SiLA 2, through
        // the generic mapping. Needs the peers' venv (scripts/peers); skipped without it.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let py = root.join(".peers/bin/python");
        if !py.exists() {
            println!("bridged: skipped ({} missing; run scripts/peers)", py.display());
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let work = std::env::temp_dir().join(format!("lw-bench-plr-{}", std::process::id()));
        let mut bridge = std::process::Command::new(&py)
            .arg(root.join("bridges/pylabrobot/bridge.py"))
            .args(["--port", &port.to_string(), "--workdir"])
            .arg(&work)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(90);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < until, "the bridge did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = std::fs::read_to_string(root.join("bridges/pylabrobot/lab.toml")).unwrap();
        let plr_site =
            labware::Site::from_toml(&text.replace("127.0.0.1:50070", &format!("127.0.0.1:{port}"))).unwrap();
        let star = plr_site.instruments.iter().find(|i| i.id == "star1").unwrap();
        let config = devices::driver::OpenConfig { scale: INSTANT, sila_ca: None, robots: Default::default() };
        let plr = devices::driver::open(star, &Endpoint::parse(&star.endpoint).unwrap(), &config).await.unwrap();
        let plan = serial_dilution(&plr_site, false);
        plr.prepare(&plan).await.unwrap();
        let p = "p300_single".to_string();
        let run = |op: CommandOp| {
            let d = plr.clone();
            async move { d.start(&op).await.unwrap().finish().await.unwrap() }
        };
        run(CommandOp::PickUpTip { pipette: p.clone(), rack: "tips_a".into(), well: "A1".into() }).await;
        let v = time(rounds / 10, || {
            let run = &run;
            let p = p.clone();
            async move {
                let (labware, well) = ("reservoir".to_string(), "A1".to_string());
                run(CommandOp::Aspirate {
                    pipette: p.clone(),
                    labware: labware.clone(),
                    well: well.clone(),
                    volume_ul: 100.0,
                })
                .await;
                run(CommandOp::Dispense { pipette: p.clone(), labware, well, volume_ul: 100.0 }).await;
            }
        })
        .await;
        report("bridged: PyLabRobot STAR aspirate+dispense (2 SiLA calls)", v);
        let _ = bridge.kill();
        let _ = bridge.wait();
        let _ = std::fs::remove_dir_all(&work);
    });
}
