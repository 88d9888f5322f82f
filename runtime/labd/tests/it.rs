//! The runtime's integration tests, one module per subject (`it/*.rs`): `labctl` and `labd` as
//! users run them, real processes, real files, real wires. The builders they share (starting
//! labd, tenants and tokens, watching, MQTT, the console, the canary) live here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../tests/support/certs.rs"]
mod certs;
#[path = "it/chaos.rs"]
mod chaos;
#[path = "it/cli.rs"]
mod cli;
#[path = "it/console.rs"]
mod console;
#[path = "it/executor.rs"]
mod executor;
#[path = "it/first_hour.rs"]
mod first_hour;
#[path = "it/halt.rs"]
mod halt;
#[path = "it/inventory.rs"]
mod inventory;
#[path = "it/isolation.rs"]
mod isolation;
#[path = "it/mqtt.rs"]
mod mqtt;
#[path = "it/observability.rs"]
mod observability;
#[path = "it/opentrons.rs"]
mod opentrons;
#[path = "it/opentrons_python.rs"]
mod opentrons_python;
#[path = "it/python_client.rs"]
mod python_client;
#[path = "it/resume.rs"]
mod resume;
#[path = "it/safe_state.rs"]
mod safe_state;
#[path = "it/scaleout.rs"]
mod scaleout;
#[path = "it/schema.rs"]
mod schema;
#[path = "it/serve.rs"]
mod serve;
#[path = "it/service.rs"]
mod service;
#[path = "it/simulate.rs"]
mod simulate;
#[path = "it/store.rs"]
mod store;

/// A server's quote of `file` in a service class (`""`: standard), over gRPC.
fn lab_quote_in(lab: &Lab, token: &str, file: &Path, class: &str) -> protos::labwright::v1::QuoteResponse {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use protos::labwright::v1 as pb;
        let ch = tonic::transport::Channel::from_shared(lab.url.clone()).unwrap().connect().await.unwrap();
        let ask = pb::ValidateRequest {
            file_name: file.file_name().unwrap().to_string_lossy().into(),
            source: std::fs::read(file).unwrap(),
            service_class: class.into(),
            ..Default::default()
        };
        let mut r = tonic::Request::new(ask);
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        pb::protocols_client::ProtocolsClient::new(ch).quote(r).await.unwrap().into_inner()
    })
}

fn labctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_labctl")).args(args).current_dir(root()).output().expect("labctl runs")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmp(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("labctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

/// `labctl ARGS…` whose reader has gone before it writes (`labctl … | head -0`): (exit code,
/// stderr).
fn labctl_into_closed_pipe(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), text(&o.stderr))
}

fn corpus_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            corpus_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

/// Whether labd's gRPC Health says the server is SERVING (service "").
fn grpc_serving(url: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let Ok(ch) = tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect().await else {
            return false;
        };
        let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        r.is_ok_and(|r| r.into_inner().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    })
}

/// Kills the child process when dropped, so a failing test leaves no daemon behind.
struct Reap(std::process::Child);

/// Starts `labd` with these arguments in `cwd`; returns once it listens, with what it printed
/// up to then.
fn start_labd(args: &[&std::ffi::OsStr], cwd: &Path) -> (Reap, String) {
    // Tests run side by side: each console on a port of its own, unless the test chose one.
    let mut args = args.to_vec();
    if args.first().is_some_and(|a| *a == "serve") && !args.iter().any(|a| *a == "--console") {
        args.extend([std::ffi::OsStr::new("--console"), std::ffi::OsStr::new("127.0.0.1:0")]);
    }
    listening(Command::new(env!("CARGO_BIN_EXE_labd")).args(&args).current_dir(cwd))
}

/// Starts `cmd` (a `labd serve`) and waits until it says its API listens: the process, and what
/// it printed until then.
fn listening(cmd: &mut Command) -> (Reap, String) {
    use std::io::BufRead;
    let mut s = Reap(cmd.stdout(std::process::Stdio::piped()).spawn().unwrap());
    let mut out = std::io::BufReader::new(s.0.stdout.take().unwrap());
    let (mut seen, mut line) = (String::new(), String::new());
    while !line.contains("gRPC API on") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "labd stopped before listening: {seen}");
        seen.push_str(&line);
    }
    std::thread::spawn(move || for _ in out.lines() {});
    (s, seen)
}

/// The embedded broker's port, from what `labd serve` printed at start.
/// The console's URL, from what labd printed at start.
fn console_of(seen: &str) -> String {
    seen.lines()
        .find_map(|l| l.strip_prefix("labd: console on "))
        .unwrap_or_else(|| panic!("labd says where its console is: {seen}"))
        .trim()
        .to_string()
}

fn mqtt_port_of(seen: &str) -> u16 {
    seen.split("MQTT broker (embedded) on 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("labd says where its broker listens: {seen}"))
}

/// The Python of the peers' virtual environment (`scripts/peers`), if present; missing is a
/// failure when `LABWRIGHT_REQUIRE_PEERS=1` (CI).
fn peers_python() -> Option<PathBuf> {
    venv_python("LABWRIGHT_PEERS_VENV", ".peers")
}

/// The Python of one of `scripts/peers`' venvs: `$var`, else `dir` in the checkout.
fn venv_python(var: &str, dir: &str) -> Option<PathBuf> {
    let py = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| root().join(dir)).join("bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
        "peer tests are required but {} is missing: run scripts/peers",
        py.display()
    );
    eprintln!("skipped: no {} (scripts/peers installs it)", py.display());
    None
}

/// The user running the tests.
fn whoami() -> String {
    text(&Command::new("id").arg("-un").output().unwrap().stdout).trim().to_string()
}

/// `labctl --url URL --token TOKEN ARGS…`: (exit code, stdout, stderr).
/// `labctl` with `stdin` typed on its standard input (a barcode scanner at the bench).
fn labctl_typing(url: &str, token: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["--url", url, "--token", token])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

fn labctl_at(url: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let o =
        Command::new(env!("CARGO_BIN_EXE_labctl")).args(["--url", url, "--token", token]).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
}

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An in-memory store and an executor on the simulated site at 1/10,000 of real time.
async fn executor_rig() -> (std::sync::Arc<dyn labd::store::Store>, labd::executor::Executor) {
    let (store, ex, _) = faulty_rig(&[]).await;
    (store, ex)
}

/// The same, with simulators misbehaving as told (instrument id, fault spec); also the lab.
async fn faulty_rig(
    faults: &[(&str, &str)],
) -> (std::sync::Arc<dyn labd::store::Store>, labd::executor::Executor, std::sync::Arc<labd::lab::Lab>) {
    use labd::executor::{Executor, ExecutorConfig};
    use std::sync::Arc;
    let scale = devices::TimeScale(0.0001);
    let store: Arc<dyn labd::store::Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
    let faults = faults.iter().map(|(id, f)| (id.to_string(), devices::sim::Faults::parse(f).unwrap())).collect();
    let lab =
        Arc::new(labd::lab::Lab::simulated_with_faults(labware::Site::sim().unwrap(), scale, &faults).await.unwrap());
    let config =
        ExecutorConfig { scale, probe_every: std::time::Duration::from_millis(200), ..ExecutorConfig::default() };
    let ex = Executor::new(store.clone(), lab.clone(), config);
    (store, ex, lab)
}

/// Which instrument each started task ran on, over all of a store's runs.
fn task_instruments(store: &std::sync::Arc<dyn labd::store::Store>) -> Vec<String> {
    let mut out = Vec::new();
    for r in store.runs(None, &[]).unwrap() {
        for e in store.events(None, &r.id, 0).unwrap() {
            if e.kind == "task_started" {
                let v: serde_json::Value = serde_json::from_str(&e.payload_json).unwrap();
                out.push(v["instrument"].as_str().unwrap_or("").to_string());
            }
        }
    }
    out
}

/// Small protocols that, together, make the compiler emit every command op it can: file name
/// and source.
fn contract_sources() -> Vec<(String, String)> {
    let head = "labwright: 1\nname: contract\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  plate:\n    type: corning_96_wellplate_360ul_flat\n    contents:\n      \"A1:H12\": { water: 100 uL }\n  tips: { type: opentrons_96_tiprack_300ul }\n  tips20: { type: opentrons_96_tiprack_20ul }\nsteps:\n";
    let labwright = [
        "  - transfer: { from: res/A1, to: plate/A1:A3, volume: 50 uL, mix_after: { times: 2, volume: 40 uL } }\n  - transfer: { from: res/A1, to: plate/B1, volume: 5 uL }\n  - mix: { wells: plate/C1, times: 2, volume: 50 uL }\n",
        // Whole columns: lh3's 8-channel head (single channels elsewhere).
        "  - transfer: { from: res/A1, to: plate/A1:H2, volume: 50 uL, mix_after: { times: 2, volume: 40 uL } }\n",
        // Small volumes only: the 20 µL single channel, which lh3 has too.
        "  - transfer: { from: res/A1, to: plate/D1:D2, volume: 5 uL, mix_after: { times: 2, volume: 10 uL } }\n",
        "  - incubate: { labware: plate, temperature: 37 °C, duration: 10 min }\n",
        // Cell culture in CO₂ (only an incubator that keeps it), and at the room's temperature.
        "  - incubate: { labware: plate, temperature: 37 °C, co2: 5 %, duration: 10 min }\n",
        "  - incubate: { labware: plate, temperature: ambient, duration: 5 min }\n",
        "  - shake: { labware: plate, speed: 800 rpm, duration: 1 min, temperature: 37 °C }\n",
        "  - seal: plate\n  - unseal: plate\n",
        "  - read_absorbance: { labware: plate, wavelengths: [450 nm, 600 nm] }\n",
        "  - read_fluorescence: { labware: plate, excitation: 485 nm, emission: 528 nm }\n",
        "  - read_luminescence: { labware: plate }\n",
        "  - centrifuge: { labware: plate, force: 1000 xg, duration: 1 min }\n",
    ];
    let mut sources: Vec<(String, String)> = labwright
        .iter()
        .enumerate()
        .map(|(i, steps)| (format!("contract-{i}.yaml"), format!("{head}{steps}")))
        .collect();
    // Opentrons heater-shaker module commands (a fixture of Opentrons', its pipetting left out).
    let fixture = root().join("../shared/corpus/protocols/opentrons/fixtures/6/heaterShakerCommands.json");
    let mut hs: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let commands = hs["commands"].as_array_mut().unwrap();
    let module = commands.iter().find(|c| c["commandType"] == "heaterShaker/setTargetTemperature").unwrap()["params"]
        ["moduleId"]
        .clone();
    commands.retain(|c| {
        let kind = c["commandType"].as_str().unwrap_or("");
        kind.starts_with("heaterShaker/") || kind == "loadModule" || kind == "loadLabware"
    });
    // The shaker stops before the latch opens (the module refuses otherwise, as a real one does).
    let latch = commands.iter().position(|c| c["commandType"] == "heaterShaker/openLabwareLatch").unwrap();
    commands.insert(
        latch,
        serde_json::json!({"commandType": "heaterShaker/deactivateShaker", "params": {"moduleId": module}}),
    );
    hs["pipettes"] = serde_json::json!({});
    sources.push(("heater-shaker.json".into(), hs.to_string()));
    // 1000 µL tips: the longest tips over the tallest rack (travel height and tip drop).
    sources.push((
        "big-tips.yaml".into(),
        "labwright: 1\nname: big tips\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  tips: { type: opentrons_96_tiprack_300ul }\n  big: { type: opentrons_96_tiprack_1000ul }\nsteps:\n  - transfer: { from: res/A1, to: res/A2, volume: 100 uL }\n  - transfer: { from: res/A1, to: res/A3, volume: 500 uL }\n".into(),
    ));
    // Reagent from the lab's stock (Autoprotocol `provision`): a technician's task.
    sources.push((
        "provision.json".into(),
        r#"{"refs": {"p": {"new": "96-flat", "discard": true}}, "instructions": [{"op": "provision", "resource_id": "rs_water", "to": [{"well": "p/0", "volume": "50:microliter"}, {"well": "p/1", "volume": "50:microliter"}]}]}"#.into(),
    ));
    sources
}

/// Runs to carry out, each with a label, and the (command op, instrument) pairs they claim.
type Contract = (Vec<(String, protocols::plan::RunPlan)>, std::collections::BTreeSet<(String, String)>);

/// The compiler ↔ instruments contract on `site`: each source as compiled, and each task forced
/// onto every instrument the compiler allows it on that carries its pipettes; and the (command
/// op, instrument) pairs claimed. A source that does not compile panics, or is left out when
/// `skip_uncompilable` (a site without some capability).
fn contract_runs(site: &labware::Site, sources: &[(String, String)], skip_uncompilable: bool) -> Contract {
    let mut runs = Vec::new();
    let mut claims = std::collections::BTreeSet::new();
    for (name, text) in sources {
        let c = protocols::compile(
            &protocols::SourceFile::new(name.clone(), text.clone()),
            protocols::Format::Auto,
            site,
            &labware::Library::shipped(),
        );
        let plan = match c.plan {
            Some(p) => p,
            None if skip_uncompilable => continue,
            None => panic!("{name}: {:#?}", c.diagnostics),
        };
        runs.push((format!("{name} as compiled"), plan.clone()));
        for (ti, task) in plan.tasks.iter().enumerate() {
            for id in &task.instruments {
                let inst = site.instruments.iter().find(|i| &i.id == id).unwrap();
                if !task.pipettes.iter().all(|p| inst.pipettes.iter().any(|q| &q.name == p)) {
                    continue; // the scheduler matches pipettes; this handler lacks one
                }
                for c in &task.commands {
                    let op = serde_json::to_value(&c.op).unwrap()["op"].as_str().unwrap().to_string();
                    claims.insert((op, id.clone()));
                }
                let mut forced = plan.clone();
                forced.tasks[ti].instruments = vec![id.clone()];
                runs.push((format!("{name}: `{}` on {id}", task.label), forced));
            }
        }
    }
    (runs, claims)
}

/// Carries the contract's runs out on the executor, a technician saying `done` to every
/// intervention (additions from the stock); returns the runs that did not succeed, in words.
async fn carry_out_contract(
    store: std::sync::Arc<dyn labd::store::Store>,
    ex: std::sync::Arc<labd::executor::Executor>,
    runs: &[(String, protocols::plan::RunPlan)],
) -> Vec<String> {
    let t = store.create_tenant("contract", 1.0).unwrap();
    let mut names = std::collections::BTreeMap::new();
    for (k, (label, plan)) in runs.iter().enumerate() {
        let run = ex.submit(&t.id, &format!("c{k}"), label, "contract", plan).unwrap();
        names.insert(run.id, label.clone());
    }
    let technician = {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                for i in store.interventions(None, true).unwrap() {
                    store.resolve_intervention(&i.id, "done", "contract-test").unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    let report = tokio::time::timeout(std::time::Duration::from_secs(300), ex.run_queued()).await.unwrap().unwrap();
    technician.abort();
    assert_eq!(report.runs.len(), runs.len());
    report
        .runs
        .iter()
        .filter(|r| r.1 != labd::store::RunState::Succeeded)
        .map(|r| format!("{}: {:?}", names[&r.0], r.2))
        .collect()
}

fn compile_example(name: &str) -> protocols::plan::RunPlan {
    compile_example_on(name, &labware::Site::sim().unwrap())
}

/// An example compiled for another site (what a labd serving that site compiles).
fn compile_example_on(name: &str, site: &labware::Site) -> protocols::plan::RunPlan {
    let path = root().join("protocols/examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let c = protocols::compile(
        &protocols::SourceFile::new(name, text),
        protocols::Format::Auto,
        site,
        &labware::Library::shipped(),
    );
    c.plan.unwrap_or_else(|| panic!("{name} compiles"))
}

/// What the simulated liquid handlers really did, per run: (op, labware without the run's
/// prefix, well, µL) with counts. Labware names are scoped `<run short id>.<name>`.
fn wire_liquid(log_dir: &Path) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>> {
    let mut out: std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>> = Default::default();
    for entry in std::fs::read_dir(log_dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let (prefix, name) = parts[1].split_once('.').unwrap();
            let key = format!("{} {name} {} {}", parts[0], parts[2], parts[3]);
            *out.entry(prefix.to_string()).or_default().entry(key).or_default() += 1;
        }
    }
    out
}

fn short(run_id: &str) -> String {
    run_id.trim_start_matches("run_").chars().take(8).collect()
}

/// Mosquitto with the config `labd mqtt-config` wrote into `broker_dir`, once it listens on
/// `port`. Run as root (CI), Mosquitto would drop to the `mosquitto` user, which cannot read the
/// 0600 files; this broker keeps the test's user.
fn mosquitto(broker_dir: &Path, port: u16) -> Reap {
    let conf = std::fs::read_to_string(broker_dir.join("mosquitto.conf")).unwrap();
    if !conf.contains("\nuser ") {
        std::fs::write(broker_dir.join("mosquitto.conf"), format!("{conf}user {}\n", whoami())).unwrap();
    }
    let b = Reap(
        Command::new("mosquitto")
            .arg("-c")
            .arg(broker_dir.join("mosquitto.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/peers)"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    b
}

/// A tenant's subscriber: a `paho-mqtt` script when the peers are installed (CI requires them),
/// else `mosquitto_sub`; printing `TOPIC PAYLOAD` lines. Returns once it has had time to
/// subscribe.
fn mqtt_listen(port: u16, user: &str, pass: &str, topic: &str) -> Reap {
    let port = port.to_string();
    let mut cmd = match peers_python() {
        Some(py) => {
            let mut c = Command::new(py);
            c.arg(root().join("tests/peers/mqtt_subscriber.py")).args(["127.0.0.1", &port, user, pass, topic]);
            c
        }
        None => {
            let mut c = Command::new("mosquitto_sub");
            c.args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", pass, "-v", "-q", "1", "-t", topic]);
            c
        }
    };
    let r = Reap(cmd.stdout(std::process::Stdio::piped()).spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    r
}

/// Stops a subscriber and returns what it printed.
fn mqtt_collect(r: &mut Reap) -> String {
    let _ = r.0.kill();
    let mut out = String::new();
    std::io::Read::read_to_string(r.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    out
}

/// On a broker at `port`: the runtime publishes retained states for two tenants; tenant 0,
/// subscribed to `#`, `lab/#`, `lab/v1/t/+/#` and tenant 1's exact topic, receives only its own
/// (delivery is checked, not SUBACKs); its own publish is dropped; a wrong password is refused.
/// `creds` are (username, password) per tenant.
fn check_mqtt_isolation(port: u16, runtime_pw: &str, creds: &[(String, String)], tenant_ids: &[String]) {
    let port = port.to_string();
    let publish = |user: &str, pass: &str, topic: &str, msg: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", pass, "-q", "1", "-r", "-t", topic, "-m", msg])
            .output()
            .unwrap()
    };
    let (a_topic, b_topic) = (
        labd::telemetry::run_topic(&tenant_ids[0], "run_a", "state"),
        labd::telemetry::run_topic(&tenant_ids[1], "run_b", "state"),
    );
    for (t, m) in [(&a_topic, "acme-state"), (&b_topic, "globex-state")] {
        let o = publish(labd::telemetry::RUNTIME_USER, runtime_pw, t, m);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // acme's own publish (retained, to its own subtree) must not be accepted.
    let forged = labd::telemetry::run_topic(&tenant_ids[0], "run_x", "state");
    let _ = publish(&creds[0].0, &creds[0].1, &forged, "forged");
    let subscribe = |user: &str, pass: &str, topics: &[&str]| {
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", pass, "-v", "-W", "2"];
        for t in topics {
            args.extend(["-t", t]);
        }
        let o = Command::new("mosquitto_sub").args(&args).output().unwrap();
        (text(&o.stdout), text(&o.stderr), o.status.code())
    };
    let (got, _, _) = subscribe(&creds[0].0, &creds[0].1, &["#", "lab/#", "lab/v1/t/+/#", &b_topic]);
    assert!(got.contains("acme-state"), "acme receives its own: {got}");
    assert!(!got.contains("globex") && !got.contains(&tenant_ids[1]), "acme receives nothing of globex's: {got}");
    assert!(!got.contains("forged"), "a tenant's publish is refused: {got}");
    let (got, _, _) = subscribe(&creds[1].0, &creds[1].1, &["#"]);
    assert!(got.contains("globex-state") && !got.contains("acme"), "{got}");
    let (got, err, code) = subscribe(&creds[0].0, "wrong-password", &["#"]);
    assert!(got.is_empty() && code != Some(0), "a wrong password is refused: {got} {err}");
}

/// What tenant 0's subscriber got of `run` (with `n_events` events): every event, `seq` 1…n
/// without a gap, and the retained final state `succeeded`; tenant 1's subscriber on `#` got
/// nothing of it.
fn check_mqtt_delivery(acme_got: &str, globex_got: &str, run: &str, n_events: usize, acme_tenant: &str) {
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"));
    let mut seqs = std::collections::BTreeSet::new();
    let mut final_state = String::new();
    let mut values = 0;
    for line in acme_got.lines().filter(|l| l.contains(run)) {
        let (topic, payload) = line.split_once(' ').unwrap();
        let v = json(payload);
        assert_eq!(v["v"], 1);
        assert_eq!(v["run"].as_str(), Some(run));
        if topic.ends_with("/events") {
            seqs.insert(v["seq"].as_i64().unwrap());
        }
        if topic.ends_with("/state") {
            final_state = v["state"].as_str().unwrap_or_default().to_string();
        }
        if topic.ends_with("/results") {
            assert_eq!(v["data"]["unit"], "OD", "{v}");
            values += v["data"]["values"].as_array().map_or(0, |a| a.len());
        }
    }
    assert_eq!(values, 96, "the plate reader's 96 values arrived on the results topic");
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), (1..=n_events as i64).collect::<Vec<_>>(), "every event, gapless");
    assert_eq!(final_state, "succeeded");
    assert!(
        !globex_got.contains(run) && !globex_got.contains(acme_tenant),
        "the other tenant sees none of it: {globex_got}"
    );
}

/// A loopback port nothing listens on right now.
/// An MQTT 3.1.1 CONNECT with a login on a fresh connection: the CONNACK return code, and the
/// connection (to hold it open).
fn mqtt_connect_raw(port: u16, user: &str, pass: &str) -> (u8, std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut connect = rumqttc::mqttbytes::v4::Connect::new(format!("raw-{}", rand_suffix()));
    connect.set_login(user, pass);
    let mut out = bytes::BytesMut::new();
    connect.write(&mut out).unwrap();
    c.write_all(&out).unwrap();
    let mut ack = [0u8; 4];
    c.read_exact(&mut ack).unwrap();
    assert_eq!(ack[0], 0x20, "a CONNACK: {ack:?}");
    (ack[3], c)
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}

/// `labd serve` on its own config (extra `labd.toml` lines), started by `launcher` (e.g.
/// `prlimit`): (process, broker port, admin token, API url, data dir).
/// Every command op the compiler can emit for an instrument (the contract's list).
const COMPILER_OPS: [&str; 19] = [
    "pick_up_tip",
    "aspirate",
    "dispense",
    "mix",
    "drop_tip",
    "incubate",
    "shake",
    "seal",
    "peel",
    "read_absorbance",
    "read_fluorescence",
    "read_luminescence",
    "centrifuge",
    "set_temperature",
    "wait_for_temperature",
    "set_shake_speed",
    "stop_shaking",
    "stop_heating",
    "latch",
];

/// A test node's `labd.toml` in `dir`: data in `dir/data`, a free API port, 1/1000 of real time,
/// an MQTT port of labd's choosing, the console at `console` (`off`, `127.0.0.1:0`), then
/// `extra` keys. Returns (the config file, the data dir, the API port).
fn labd_toml(dir: &Path, console: &str, extra: &str) -> (PathBuf, PathBuf, u16) {
    labd_toml_at(dir, console, 0.001, extra)
}

/// [`labd_toml`] at another time scale.
fn labd_toml_at(dir: &Path, console: &str, time_scale: f64, extra: &str) -> (PathBuf, PathBuf, u16) {
    let api_port = free_port();
    let data = dir.join("data");
    let config = dir.join("labd.toml");
    let text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:{api_port}\"\nmqtt_port = 0\ntime_scale = {time_scale}\nconsole_listen = {console:?}\n{extra}",
        data.display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    (config, data, api_port)
}

/// The site's simulators in a process of their own (`labd sim`), as real instruments are: they
/// keep what they hold (tips, liquid, plates, their position) when labd dies. Its site file
/// points every instrument at them; the simulated technician loads plates on their bench.
struct SimProcess {
    proc: Reap,
    site: PathBuf,
    bench: String,
}

fn sim_process(dir: &Path, site: &str, scale: f64, logs: &Path) -> SimProcess {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["sim", "--format", "json", "--time-scale", &scale.to_string(), "--site"])
        .arg(root().join(site))
        .arg("--log-dir")
        .arg(logs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sim.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut at = std::collections::BTreeMap::new();
    let proc = Reap(child);
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let endpoint = format!("{}:{}", v["transport"].as_str().unwrap(), v["address"].as_str().unwrap());
        let id = v["id"].as_str().unwrap().to_string();
        at.insert(id.clone(), endpoint);
        if id == "bench" {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    // Each instrument's and arm's `endpoint` line becomes the simulator's address.
    let text = std::fs::read_to_string(root().join(site)).unwrap();
    let mut id = String::new();
    let mut site = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("id = ") {
            id = v.trim_matches('"').to_string();
        }
        match (line.starts_with("endpoint = "), at.get(&id)) {
            (true, Some(e)) => site.push_str(&format!("endpoint = {e:?}\n")),
            _ => site.push_str(&format!("{line}\n")),
        }
        if line.starts_with("[[") {
            id.clear();
        }
    }
    let file = dir.join("site.toml");
    std::fs::write(&file, site).unwrap();
    let bench = at["bench"].trim_start_matches("tcp:").to_string();
    SimProcess { proc, site: file, bench }
}

/// What a technician at the bench decides for an intervention, looking at the plate (here: at
/// the simulated liquid handler's own record of every liquid movement). A manual step is done.
/// A command recovery could not settle happened if the record shows its liquid moved, and is
/// sent again if it does not.
fn technician_decides(
    what: &str,
    run: &str,
    plans: &std::collections::BTreeMap<String, protocols::plan::RunPlan>,
    logs: &Path,
) -> &'static str {
    if !what.starts_with("labd restarted while") {
        return "done"; // a manual step, an addition, an instrument to check
    }
    let Some(plan) = plans.get(run) else { return "abort" };
    let Some((head, op)) = what.split_once(": {") else { return "redo" }; // a plate move: not taken
    let op_json = format!("{{{}", op.split_once("; ").map_or(op, |(j, _)| j));
    let numbers: Vec<usize> = head.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (Some(&index), Some(&task)) = (numbers.first(), numbers.get(1)) else { return "abort" };
    let Ok(op) = serde_json::from_str::<protocols::plan::CommandOp>(&op_json) else { return "abort" };
    use protocols::plan::CommandOp::*;
    let key = |verb: &str, labware: &str, well: &str, ul: f64| {
        let name = labware.split_once('.').map_or(labware, |(_, n)| n);
        format!("{verb} {name} {well} {ul:.3}")
    };
    let (wanted, times) = match &op {
        Mix { labware, well, volume_ul, times, .. } => (key("aspirate", labware, well, *volume_ul), *times as usize),
        Aspirate { labware, well, volume_ul, .. } => (key("aspirate", labware, well, *volume_ul), 1),
        Dispense { labware, well, volume_ul, .. } => (key("dispense", labware, well, *volume_ul), 1),
        _ => return "done",
    };
    let moves = |op: &protocols::plan::CommandOp| match op {
        Mix { labware, well, volume_ul, times, .. } if key("aspirate", labware, well, *volume_ul) == wanted => {
            *times as usize
        }
        Aspirate { labware, well, volume_ul, .. } if key("aspirate", labware, well, *volume_ul) == wanted => 1,
        Dispense { labware, well, volume_ul, .. } if key("dispense", labware, well, *volume_ul) == wanted => 1,
        _ => 0,
    };
    let before: usize = plan.tasks[..task].iter().flat_map(|t| &t.commands).map(|c| moves(&c.op)).sum::<usize>()
        + plan.tasks[task].commands[..index].iter().map(|c| moves(&c.op)).sum::<usize>();
    let logged = wire_liquid(logs).get(&short(run)).and_then(|m| m.get(&wanted)).copied().unwrap_or(0);
    match logged {
        n if n == before + times => "done",
        n if n == before => "redo",
        _ => "abort",
    }
}

/// A technician at the bench until `stop`: answers every open intervention as
/// [`technician_decides`] does; returns (run, what, decision) for each.
fn technician_at_the_bench(
    url: &str,
    token: &str,
    plans: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, protocols::plan::RunPlan>>>,
    logs: &Path,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(String, String, &'static str)>> {
    let (url, token, logs) = (url.to_string(), token.to_string(), logs.to_path_buf());
    std::thread::spawn(move || {
        let mut decided: Vec<(String, String, &'static str)> = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let (code, so, _) = labctl_at(&url, &token, &["interventions", "--format", "json"]);
            if code == 0 {
                for i in items(so.trim()) {
                    let (id, run, what) =
                        (i["id"].as_str().unwrap(), i["run"].as_str().unwrap(), i["what"].as_str().unwrap());
                    let choice = technician_decides(what, run, &plans.lock().unwrap(), &logs);
                    if labctl_at(&url, &token, &["resolve", id, choice]).0 == 0 {
                        decided.push((run.to_string(), what.to_string(), choice));
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        decided
    })
}

/// A crash-free reference: `plan` carried out once by an in-process executor on the simulated
/// site, its liquid handlers logging into `logs`. Returns the run's short id (its labware
/// prefix in the logs), its results and how many plate moves it made.
fn reference_run(plan: &protocols::plan::RunPlan, logs: &Path) -> (String, Vec<labd::store::ResultRow>, usize) {
    use labd::executor::{Executor, ExecutorConfig};
    use labd::store::{RunState, Store};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let scale = devices::TimeScale(0.0001);
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let none = Default::default();
        let lab = labd::lab::Lab::simulated_logged(labware::Site::sim().unwrap(), scale, &none, Some(logs));
        let lab = std::sync::Arc::new(lab.await.unwrap());
        let ex = Executor::new(store.clone(), lab, ExecutorConfig { scale, ..ExecutorConfig::default() });
        let t = store.create_tenant("ref", 1.0).unwrap();
        let run = ex.submit(&t.id, "ref", "ref", "reference", plan).unwrap();
        // A technician does every manual step at once.
        let tech = store.clone();
        let technician = tokio::spawn(async move {
            loop {
                for i in tech.interventions(None, true).unwrap() {
                    tech.resolve_intervention(&i.id, "done", "reference technician").unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        let report = ex.run_queued().await.unwrap();
        technician.abort();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs);
        let moves = store.attempts(&run.id).unwrap().iter().filter(|a| a.intent.task_id < 0).count();
        (short(&run.id), store.results(None, &run.id).unwrap(), moves)
    })
}

fn serve_with(name: &str, extra: &str, launcher: &[&str]) -> (Reap, u16, String, String, PathBuf) {
    let dir = fresh_dir(name);
    let (config, data, api_port) = labd_toml(&dir, "off", extra);
    let mut cmd = Command::new(launcher.first().copied().unwrap_or(env!("CARGO_BIN_EXE_labd")));
    if !launcher.is_empty() {
        cmd.args(&launcher[1..]).arg(env!("CARGO_BIN_EXE_labd"));
    }
    let (server, seen) = listening(cmd.args(["serve", "--config"]).arg(&config).current_dir(&dir));
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    (server, mqtt_port_of(&seen), admin, format!("http://127.0.0.1:{api_port}"), dir)
}

/// CPU seconds a process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Tests that load the machine heavily (several daemons, PostgreSQL, a browser) share this lock;
/// a test that compares wall-clock timing takes it alone, so what it measures is the runtime
/// and not a neighbour's fsyncs.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn heavy() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

fn quiet_machine() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// The items of a listing `labctl … --format json` printed: one JSON array, whole.
fn items(so: &str) -> Vec<serde_json::Value> {
    match serde_json::from_str(so) {
        Ok(serde_json::Value::Array(a)) => a,
        other => panic!("not one JSON array ({other:?}): {so}"),
    }
}

/// An empty directory of this test process's own under the system temp dir.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether headless Chromium and Playwright are installed for the console's browser tests; CI
/// (`LABWRIGHT_REQUIRE_PEERS=1`) requires them.
fn chromium_available() -> bool {
    let found =
        Path::new("/usr/bin/chromium").exists() && root().join("tests/browser/node_modules/playwright-core").exists();
    assert!(
        found || std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
        "browser tests are required but Chromium or playwright-core is missing: run scripts/peers"
    );
    found
}

/// A GET on labd's console API with a bearer token; returns the status code and the body.
fn console_get(base: &str, path: &str, token: &str) -> (u16, String) {
    console_call(base, "GET", path, token, None)
}

/// A POST of JSON `body` to labd's console API with a bearer token: the status code and the body.
fn console_post(base: &str, path: &str, token: &str, body: &serde_json::Value) -> (u16, String) {
    console_call(base, "POST", path, token, Some(body))
}

fn console_call(base: &str, method: &str, path: &str, token: &str, json: Option<&serde_json::Value>) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let sent = json.map(|j| j.to_string()).unwrap_or_default();
    let typed = if json.is_some() { "Content-Type: application/json\r\n" } else { "" };
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{typed}Content-Length: {}\r\nConnection: close\r\n\r\n{sent}",
        sent.len()
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    // Bodies come chunked: keep the JSON between the first chunk size and the terminating 0.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

/// A raw GET on labd's console naming `host` in the `Host` header: the whole answer.
fn console_raw(base: &str, path: &str, host: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    raw
}

/// `labd serve` started for a test, with its URLs and the admin token.
struct Lab {
    server: Reap,
    /// How `labd` was started, to start it again on the same data.
    args: Vec<std::ffi::OsString>,
    url: String,
    console: String,
    admin: String,
    dir: PathBuf,
    /// Where the embedded MQTT broker listens.
    mqtt_port: u16,
}

fn serve_lab(name: &str, scale: &str) -> Lab {
    serve_lab_on(name, scale, None)
}

/// `serve_lab` on a site of the test's own (a `lab.toml` text).
fn serve_lab_on(name: &str, scale: &str, site: Option<&str>) -> Lab {
    serve_lab_with(name, scale, site, "")
}

/// The same, with `extra` lines in labd.toml (and the shipped site when none is given).
fn serve_lab_with(name: &str, scale: &str, site: Option<&str>, extra: &str) -> Lab {
    let shipped;
    let site = match site {
        None if !extra.is_empty() => {
            shipped = std::fs::read_to_string(root().join("sites/sim.toml")).unwrap();
            Some(shipped.as_str())
        }
        other => other,
    };
    let dir = std::env::temp_dir().join(format!("lw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["serve", "--listen", &listen, "--time-scale", scale, "--mqtt-port", "0", "--data-dir"];
    let mut args: Vec<std::ffi::OsString> = args.iter().map(std::ffi::OsString::from).collect();
    args.push(dir.clone().into_os_string());
    if let Some(site) = site {
        let conf = std::env::temp_dir().join(format!("lw-{name}-{}-conf", std::process::id()));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("lab.toml"), site).unwrap();
        std::fs::write(
            conf.join("labd.toml"),
            format!("site = {:?}\n{extra}", conf.join("lab.toml").display().to_string()),
        )
        .unwrap();
        args.extend(["--config".into(), conf.join("labd.toml").into_os_string()]);
    }
    let started: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (server, seen) = start_labd(&started, &root());
    let console = console_of(&seen);
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    let mqtt_port = mqtt_port_of(&seen);
    Lab { server, args, url: format!("http://{listen}"), console, admin, dir, mqtt_port }
}

impl Lab {
    /// Kills `labd` with SIGKILL and starts it again on the same data, listening where it did.
    fn kill_and_restart(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
        let args: Vec<&std::ffi::OsStr> = self.args.iter().map(|a| a.as_os_str()).collect();
        let (server, seen) = start_labd(&args, &root());
        self.server = server;
        self.console = console_of(&seen);
        self.mqtt_port = mqtt_port_of(&seen);
    }

    fn ctl(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        labctl_at(&self.url, token, args)
    }

    fn json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let (code, so, se) = self.ctl(token, args);
        assert_eq!(code, 0, "labctl {args:?}: {so}{se}");
        serde_json::from_str(so.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {so}"))
    }

    /// A technician's token.
    fn technician(&self) -> String {
        self.json(&self.admin, &["token", "create", "--role", "technician", "--format", "json"])["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// labctl's standard output, asserting it succeeded.
    fn ok(&self, token: &str, args: &[&str]) -> String {
        let (code, so, se) = self.ctl(token, args);
        assert_eq!(code, 0, "labctl {args:?}: {so}{se}");
        so
    }

    /// `tenant`'s shipment received by the admin at `location` (a storage unit or condition):
    /// `rows` are the manifest's lines after its header, each container scanned once.
    fn ship(&self, tenant: &str, location: &str, rows: &str) {
        let file = self.dir.join(format!("shipment-{}.csv", free_port()));
        std::fs::write(&file, format!("barcode,type,well,sample,liquid,volume\n{rows}")).unwrap();
        let mut scans: Vec<&str> = rows.lines().filter_map(|l| l.split(',').next()).collect();
        scans.dedup();
        let args = ["receive", file.to_str().unwrap(), "--tenant", tenant, "--location", location];
        let (code, so, se) = labctl_typing(&self.url, &self.admin, &args, &(scans.join("\n") + "\n"));
        assert_eq!(code, 0, "receiving {rows}: {so}{se}");
    }

    /// A new tenant and a scientist's token for it.
    fn tenant(&self, name: &str) -> String {
        self.json(&self.admin, &["tenant", "add", name, "--format", "json"]);
        self.json(&self.admin, &["token", "create", "--tenant", name, "--format", "json"])["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The id of the open intervention of `run`, as `token` lists them, once it opens (within
    /// 90 s).
    fn intervention_of(&self, token: &str, run: &str) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let (_, so, _) = self.ctl(token, &["interventions", "--format", "json"]);
            if let Some(id) =
                items(&so).into_iter().find(|i| i["run"] == run).and_then(|i| i["id"].as_str().map(String::from))
            {
                return id;
            }
            assert!(std::time::Instant::now() < until, "no intervention for run {run}: {so}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    fn submit(&self, token: &str, example: &str) -> String {
        self.submit_file(token, &root().join("protocols/examples").join(example), &[])
    }

    fn submit_file(&self, token: &str, file: &Path, extra: &[&str]) -> String {
        let mut args = vec!["submit", file.to_str().unwrap(), "--format", "json"];
        args.extend(extra);
        self.json(token, &args)["run"]["id"].as_str().unwrap().to_string()
    }

    /// A new tenant, a scientist's token for it and that token's MQTT (username, password).
    fn tenant_with_mqtt(&self, name: &str) -> (String, (String, String)) {
        self.json(&self.admin, &["tenant", "add", name, "--format", "json"]);
        let c = self.json(&self.admin, &["token", "create", "--tenant", name, "--format", "json"]);
        let mqtt = (c["mqtt"]["username"].as_str().unwrap().into(), c["mqtt"]["password"].as_str().unwrap().into());
        (c["token"].as_str().unwrap().to_string(), mqtt)
    }

    fn wait_final(&self, token: &str, runs: &[&str], secs: u64) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let (_, so, _) = self.ctl(token, &["runs", "--format", "json"]);
            let all: serde_json::Value = serde_json::from_str(so.lines().next().unwrap_or("[]")).unwrap_or_default();
            let state = |id: &str| {
                all.as_array()
                    .and_then(|a| a.iter().find(|r| r["id"] == id))
                    .and_then(|r| r["state"].as_str().map(String::from))
                    .unwrap_or_default()
            };
            if runs.iter().all(|r| state(r) == "succeeded") {
                return;
            }
            assert!(runs.iter().all(|r| state(r) != "failed"), "a run failed: {so}");
            assert!(std::time::Instant::now() < until, "runs did not finish in {secs} s: {so}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// The canary in every free-text place of a protocol (name, liquids, labware, manual step).
const CANARY: &str = "zq7canary";

/// PCR setup with the canary written into every free-text field a scientist fills in.
fn canary_protocol(dir: &Path) -> PathBuf {
    let pcr = std::fs::read_to_string(root().join("protocols/examples/pcr-setup.yaml")).unwrap();
    let text = replace_word(&pcr, "pcr", &format!("{CANARY}_pcr"))
        .replace("name: PCR setup", &format!("name: PCR setup {CANARY} confidential"))
        .replace("master_mix", &format!("{CANARY}_mix"))
        .replace("template DNA", &format!("{CANARY} template DNA"))
        .replace("tubes", &format!("{CANARY}_tubes"))
        .replace("Move the sealed", &format!("CONFIDENTIAL {CANARY} move the sealed"))
        // The plate map: sample and group names are the tenant's too.
        .replace(
            &format!("  {CANARY}_pcr: {{ type: nest_96_wellplate_100ul_pcr_full_skirt }}\n"),
            &format!(
                "  {CANARY}_pcr:\n    type: nest_96_wellplate_100ul_pcr_full_skirt\n    map:\n      \"A1:H6\": {{ sample: {CANARY}-patient, group: {CANARY}-cohort }}\n"
            ),
        );
    assert!(text.matches(CANARY).count() > 10, "{text}");
    assert!(text.contains(&format!("sample: {CANARY}-patient")), "the canary's plate map: {text}");
    let file = dir.join(format!("{CANARY}-pcr.yaml"));
    std::fs::write(&file, text).unwrap();
    file
}

/// `text` with every whole word `word` (not part of a longer name) replaced by `by`.
fn replace_word(text: &str, word: &str, by: &str) -> String {
    let name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(word) {
        let (before, after) = (rest[..i].chars().next_back(), rest[i + word.len()..].chars().next());
        out.push_str(&rest[..i]);
        out.push_str(if before.is_some_and(name) || after.is_some_and(name) { word } else { by });
        rest = &rest[i + word.len()..];
    }
    out + rest
}

/// `labctl watch RUN --format json` in the background: its lines as they come.
fn watch_lines(lab: &Lab, token: &str, run: &str) -> std::sync::mpsc::Receiver<String> {
    let mut watch = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(["--url", &lab.url, "--token", token, "watch", run, "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let _reap = Reap(watch);
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}
