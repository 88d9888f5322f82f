//! `labctl` as a user runs it: real processes, real files, exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "it/chaos.rs"]
mod chaos;
#[path = "it/observability.rs"]
mod observability;
#[path = "it/safe_state.rs"]
mod safe_state;
#[path = "it/scaleout.rs"]
mod scaleout;

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

#[test]
fn a_closed_pipe_ends_labctl_quietly() {
    for args in [
        &["labware", "list"][..],
        &["labware", "list", "--format", "json"],
        &["quote", "protocols/examples/elisa.yaml"],
    ] {
        let (code, stderr) = labctl_into_closed_pipe(args);
        assert!(
            code == 0 && !stderr.contains("error") && !stderr.contains("panicked"),
            "labctl {args:?} into a closed pipe: exit {code}, {stderr}"
        );
    }
}

#[test]
fn validate_an_example() {
    let o = labctl(&["validate", "protocols/examples/serial-dilution.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("ok (labwright protocol \"96-well serial dilution\")"));
}

#[test]
fn errors_exit_1_with_rustc_style_diagnostics() {
    let p = tmp("bad.yaml", b"labwright: 1\nlabware:\n  plate: { type: corning_96_wellplate_360ul_flat }\nsteps:\n  - read_absorbance: { labware: plate, wavelength: 1200 nm }\n  - seal: { labware: plat }\n");
    let o = labctl(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("error[P0401]"), "{err}");
    assert!(err.contains(&format!("--> {}:5:52\n", p.display())), "{err}");
    assert!(err.contains("error[P0202]: no labware named `plat` in this protocol"), "{err}");
    assert!(err.contains("= help: did you mean `plate`?"), "{err}");
    assert!(err.contains("has 2 error(s)"), "{err}");
}

#[test]
fn json_diagnostics() {
    let p = tmp("bad.json", br#"{"labwright": 1, "labware": {}, "steps": [{"wait": "5 furlongs"}]}"#);
    let o = labctl(&["validate", p.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["format"], "labwright");
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "P0110");
    assert_eq!(d["line"], 1);
    assert_eq!(d["column"], 52);
    assert_eq!(d["message"], "`duration`: unknown unit `furlongs`");
}

#[test]
fn invalid_utf8_is_a_diagnostic() {
    let p = tmp("latin1.yaml", b"labwright: 1\nname: caf\xe9\n");
    let o = labctl(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("error[P0002]: the file is not valid UTF-8 (byte 22)"));
}

/// A data directory labd cannot use is named in the error, and labd stops.
#[test]
fn an_unusable_data_dir_is_named() {
    let file = tmp("not-a-dir", b"a file where the data directory should be");
    let o = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--console", "off", "--mqtt-port", "0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    let se = text(&o.stderr);
    assert!(!o.status.success() && se.contains(file.to_str().unwrap()) && se.contains("data_dir"), "{se}");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let o = labctl(&["validate", "no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot read no/such/file.yaml"));
    assert_eq!(labctl(&["validate"]).status.code(), Some(2));
    assert_eq!(labctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(labctl(&["validate", "x.yaml", "--from", "pdf"]).status.code(), Some(2));
    let site = tmp(
        "site.toml",
        std::fs::read_to_string(root().join("sites/sim.toml"))
            .unwrap()
            .replace("capacity = 12", "capacity = 0")
            .as_bytes(),
    );
    let o = labctl(&["validate", "protocols/examples/elisa.yaml", "--site", site.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("instrument[5] (inc1): capacity must be at least 1"), "{}", text(&o.stderr));
}

#[test]
fn compile_writes_the_plan() {
    let o = labctl(&["compile", "protocols/examples/pcr-setup.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["version"], 1);
    assert_eq!(plan["protocol"], "PCR setup");
    assert!(text(&o.stderr).contains("compile: protocols/examples/pcr-setup.yaml ok"));
    let out = std::env::temp_dir().join(format!("labctl-plan-{}.json", std::process::id()));
    let o = labctl(&["compile", "protocols/examples/pcr-setup.yaml", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, plan);
}

#[test]
fn quote_in_text_and_json() {
    let o = labctl(&["quote", "protocols/examples/elisa.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(out.contains("duration on an empty lab"), "{out}");
    assert!(out.contains("total"), "{out}");
    let o = labctl(&["quote", "protocols/examples/elisa.yaml", "--format", "json"]);
    let q: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(q["currency"], "USD");
    let total = q["total"].as_f64().unwrap();
    let sum: f64 = q["lines"].as_array().unwrap().iter().map(|l| l["amount"].as_f64().unwrap()).sum::<f64>()
        + q["per_run"].as_f64().unwrap();
    assert!((total - sum).abs() < 0.011);
}

#[test]
fn labware_commands() {
    let o = labctl(&["labware", "list"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).lines().count() >= 25);
    let o = labctl(&["labware", "show", "nest_12_reservoir_15ml"]);
    let def: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(def["wells"].as_array().unwrap().len(), 12);
    let o = labctl(&["labware", "show", "nest_12_reservoir_15m"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("did you mean `nest_12_reservoir_15ml`"));
    let src = root().join("../shared/corpus/labware/opentrons-v2/corning_384_wellplate_112ul_flat");
    let file = std::fs::read_dir(&src).unwrap().flatten().next().unwrap().path();
    let o = labctl(&["labware", "import", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let def: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(def["wells"].as_array().unwrap().len(), 384);
    let bad = tmp("bad-labware.json", b"{\"schemaVersion\": 3}");
    assert_eq!(labctl(&["labware", "import", bad.to_str().unwrap()]).status.code(), Some(1));
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

#[test]
fn no_corpus_file_crashes_labctl() {
    let mut files = Vec::new();
    corpus_files(&root().join("../shared/corpus/protocols"), &mut files);
    assert!(files.len() > 30);
    for f in files {
        let o = labctl(&["validate", f.to_str().unwrap()]);
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{}: exit {:?}\n{}",
            f.display(),
            o.status.code(),
            text(&o.stderr)
        );
    }
}

/// `labd sim` starts every simulated instrument of the shipped site as its own endpoint, prints
/// one JSON line per instrument, and Labwright's drivers reach each one as if it were real.
#[test]
fn labd_sim_serves_every_instrument_of_the_site_and_drivers_reach_them() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["sim", "--format", "json", "--time-scale", "0.01", "--site"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sites/sim.toml"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let site = labware::Site::sim().unwrap();
    let expected =
        site.instruments.len() + site.arms.len() - site.instruments_of(labware::InstrumentClass::RobotArm).count();
    let mut lines = Vec::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while lines.len() < expected {
        let mut l = String::new();
        assert!(out.read_line(&mut l).unwrap() > 0, "labd sim stopped after {} lines", lines.len());
        lines.push(serde_json::from_str::<serde_json::Value>(&l).unwrap());
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for l in &lines {
            let id = l["id"].as_str().unwrap();
            let endpoint = devices::link::Endpoint::parse(&format!(
                "{}:{}",
                l["transport"].as_str().unwrap(),
                l["address"].as_str().unwrap()
            ))
            .unwrap();
            if let Some(arm) = site.arms.iter().find(|a| a.id == id) {
                let d = devices::driver::open_arm(arm, &endpoint, devices::TimeScale(0.01)).await.unwrap();
                assert_eq!(d.command("nop").await.unwrap().code, 0, "{id}");
                continue;
            }
            let inst = site.instruments.iter().find(|i| i.id == id).unwrap();
            assert_eq!(l["class"].as_str().unwrap(), inst.class.as_str());
            let cfg = devices::driver::OpenConfig { scale: devices::TimeScale(0.01), sila_ca: None };
            let d = devices::driver::open(inst, &endpoint, &cfg).await.unwrap_or_else(|e| panic!("{id}: {e}"));
            let who = d.identify().await.unwrap_or_else(|e| panic!("{id}: {e}"));
            assert!(!who.model.is_empty() || !who.firmware.is_empty(), "{id}: {who:?}");
        }
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// The SQLite backend passes the store conformance suite, in memory and on disk.
#[test]
fn sqlite_store_passes_the_conformance_suite() {
    use labd::store::{conformance, sqlite::SqliteStore, Store};
    use std::sync::Arc;
    conformance::run_all(&|| Arc::new(SqliteStore::in_memory().unwrap()) as Arc<dyn Store>);
    let dir = std::env::temp_dir().join(format!("lw-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(&|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Arc::new(SqliteStore::open(&dir.join(format!("db{n}.sqlite"))).unwrap()) as Arc<dyn Store>
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// What was committed is there after the store is closed and opened again (and migrations are
/// not applied twice).
#[test]
fn sqlite_store_keeps_what_it_committed_across_reopen() {
    use labd::store::{sqlite::SqliteStore, NewRun, Store};
    let dir = std::env::temp_dir().join(format!("lw-reopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("labd.sqlite");
    let (tenant, run) = {
        let s = SqliteStore::open(&path).unwrap();
        let t = s.create_tenant("durable", 1.0).unwrap();
        let (r, _) = s
            .submit_run(&NewRun {
                tenant_id: t.id.clone(),
                idempotency_key: "k".into(),
                name: "n".into(),
                source: "s".into(),
                plan_json: "{}".into(),
                priority: 0,
            })
            .unwrap();
        s.append_event(&r.id, "progress", "{}").unwrap();
        (t.id, r.id)
    };
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.events(Some(&tenant), &run, 0).unwrap().len(), 2);
    assert_eq!(s.append_event(&run, "progress", "{}").unwrap().seq, 3, "the sequence continues without a gap");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database another process holds locked for a minute (a backup tool, a long `sqlite3`
/// session) mid-run: labd waits for it and every run still succeeds; nothing fails because a
/// write had to wait.
#[test]
fn a_database_locked_for_a_minute_mid_run_fails_nothing() {
    let _machine = heavy();
    let lab = serve_lab("locked", "0.001");
    let (acme, globex) = (lab.tenant("acme"), lab.tenant("globex"));
    let runs = [
        (acme.clone(), lab.submit(&acme, "growth-curve.yaml")),
        (acme.clone(), lab.submit(&acme, "serial-dilution.yaml")),
        (globex.clone(), lab.submit(&globex, "serial-dilution.yaml")),
    ];
    // Once the growth curve (12 h of device time: 45 s here) has begun, another process takes
    // the write lock and keeps it for 60 s.
    let events = watch_lines(&lab, &acme, &runs[0].1);
    loop {
        let line = events.recv_timeout(std::time::Duration::from_secs(60)).expect("the run begins");
        if line.contains("\"task_started\"") {
            break;
        }
    }
    // Readiness tells the truth before, during and after the lock, on HTTP and gRPC alike.
    let ready = |want: bool| {
        let began = std::time::Instant::now();
        loop {
            let (code, body) = console_get(&lab.console, "/readyz", "");
            let grpc = grpc_serving(&lab.url);
            if (code == 200) == want && grpc == want {
                return (began.elapsed(), body);
            }
            assert!(began.elapsed().as_secs() < 15, "readiness is not {want} after 15 s: {code} {body}, gRPC {grpc}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let (_, body) = ready(true);
    for part in ["\"store\":\"writable\"", "\"executor\":\"running\"", "\"cells_driven\":1", "\"instruments\":13"] {
        assert!(body.contains(part), "{part} in {body}");
    }
    assert_eq!(console_get(&lab.console, "/healthz", "").0, 200);
    let db = rusqlite::Connection::open(lab.dir.join("labd.sqlite")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (after, body) = ready(false);
    assert!(body.contains("not writable"), "{body}");
    eprintln!("readiness went false {:.1} s into the lock", after.as_secs_f64());
    std::thread::sleep(std::time::Duration::from_secs(60).saturating_sub(after));
    assert_eq!(console_get(&lab.console, "/healthz", "").0, 200, "alive all along");
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let (after, _) = ready(true);
    eprintln!("readiness back {:.1} s after the lock", after.as_secs_f64());
    let unfinished = lab.json(&acme, &["runs", "--format", "json"]);
    assert!(
        unfinished.as_array().unwrap().iter().any(|r| r["id"] == runs[0].1.as_str() && r["state"] == "running"),
        "the lock was held mid-run: {unfinished}"
    );
    for (token, run) in &runs {
        lab.wait_final(token, &[run.as_str()], 180);
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
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

/// A database that lost committed writes (its write-ahead log emptied after a crash: here, the
/// file put back as it was before the writes) is refused at open, naming the files and what to
/// do, instead of running on without the runs and journaled commands it lost. Deleting the
/// mark accepts the loss knowingly.
#[test]
fn sqlite_store_refuses_a_database_that_lost_committed_writes() {
    use labd::store::{sqlite::SqliteStore, NewRun, Store};
    let dir = fresh_dir("lost-wal");
    let path = dir.join("labd.sqlite");
    let before = dir.join("before.sqlite");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_tenant("acme", 1.0).unwrap();
    }
    std::fs::copy(&path, &before).unwrap();
    {
        let s = SqliteStore::open(&path).unwrap();
        let t = s.tenant_by_name("acme").unwrap();
        for k in ["a", "b", "c"] {
            let new = NewRun {
                tenant_id: t.id.clone(),
                idempotency_key: k.into(),
                name: "n".into(),
                source: "s".into(),
                plan_json: "{}".into(),
                priority: 0,
            };
            s.submit_run(&new).unwrap();
        }
    }
    assert!(SqliteStore::open(&path).is_ok(), "an intact database opens");
    std::fs::copy(&before, &path).unwrap();
    for side in ["labd.sqlite-wal", "labd.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(side));
    }
    let e = SqliteStore::open(&path).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("lost committed work") && e.contains("labd.sqlite.mark") && e.contains("Restore the last backup"),
        "{e}"
    );
    // A mark that is not a count is named, not read as none.
    std::fs::write(dir.join("labd.sqlite.mark"), "garbage").unwrap();
    let e = SqliteStore::open(&path).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("labd.sqlite.mark") && e.contains("garbage"), "{e}");
    std::fs::remove_file(dir.join("labd.sqlite.mark")).unwrap();
    let s = SqliteStore::open(&path).expect("the loss accepted knowingly");
    assert!(s.runs(None, &[]).unwrap().is_empty(), "the lost runs are gone, and labd knows it started from here");
    let _ = std::fs::remove_dir_all(&dir);
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
    let py = std::env::var_os("LABWRIGHT_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".peers"))
        .join("bin/python");
    if py.exists() {
        return Some(py);
    }
    assert!(
        std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
        "peer tests are required but {} is missing: run scripts/peers",
        py.display()
    );
    None
}

/// The user running the tests.
fn whoami() -> String {
    text(&Command::new("id").arg("-un").output().unwrap().stdout).trim().to_string()
}

/// `labctl --url URL --token TOKEN ARGS…`: (exit code, stdout, stderr).
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

/// A plate reader that stops answering: plates bound for it are not sent; the plan is repaired
/// and its reads run on the second reader; when it answers again, it is back in service.
#[test]
fn a_reader_going_down_fails_over_to_the_second_reader() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, lab) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        for k in 0..2 {
            ex.submit(&t.id, &format!("g{k}"), "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        }
        let power = lab.simulated.as_ref().unwrap().power["reader1"].clone();
        power.set(false);
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        for (id, state, reason) in &report.runs {
            assert_eq!(*state, RunState::Succeeded, "{id}: {reason:?}");
            assert!(!store.results(None, id).unwrap().is_empty(), "{id} has its reads");
        }
        let used = task_instruments(&store);
        assert!(!used.iter().any(|i| i == "reader1"), "nothing ran on the dead reader: {used:?}");
        assert!(used.iter().any(|i| i == "reader2"), "the second reader took the reads: {used:?}");
        let flag = ex.board().unavailable("reader1").expect("reader1 is marked unavailable");
        assert!(flag.starts_with("down: "), "{flag}");
        for r in store.runs(None, &[]).unwrap() {
            let sent = store.attempts(&r.id).unwrap();
            assert!(sent.iter().all(|a| a.intent.instrument != "reader1"), "no command went to reader1");
        }

        // Powered on again: the next batch finds it answering and may use it.
        power.set(true);
        ex.submit(&t.id, "g-after", "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs);
        assert_eq!(ex.board().unavailable("reader1"), None, "reader1 is back");
    });
}

/// A technician's maintenance flag keeps new work off an instrument; clearing it brings it back.
#[test]
fn maintenance_keeps_work_off_an_instrument() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        // As the API does it: the flag in the store, and the board updated at once.
        store.set_maintenance("reader2", Some(("lamp replacement", "tech-1"))).unwrap();
        ex.board().set_unavailable("reader2", Some("maintenance: lamp replacement".into()));
        for k in 0..2 {
            ex.submit(&t.id, &format!("g{k}"), "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        }
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == RunState::Succeeded), "{:?}", report.runs);
        let used = task_instruments(&store);
        assert!(!used.iter().any(|i| i == "reader2"), "nothing ran on the reader in maintenance: {used:?}");
        assert_eq!(ex.board().unavailable("reader2").as_deref(), Some("maintenance: lamp replacement"));
        let lanes: std::collections::BTreeSet<String> = ex.board().schedule().into_iter().map(|s| s.lane).collect();
        assert!(lanes.contains("reader1") && lanes.contains("arm2"), "the schedule has lanes: {lanes:?}");
        store.set_maintenance("reader2", None).unwrap();
        ex.submit(&t.id, "g-after", "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(ex.board().unavailable("reader2"), None);
    });
}

/// Small protocols that, together, make the compiler emit every command op it can: file name
/// and source.
fn contract_sources() -> Vec<(String, String)> {
    let head = "labwright: 1\nname: contract\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  plate:\n    type: corning_96_wellplate_360ul_flat\n    contents:\n      \"A1:H12\": { water: 100 uL }\n  tips: { type: opentrons_96_tiprack_300ul }\n  tips20: { type: opentrons_96_tiprack_20ul }\nsteps:\n";
    let labwright = [
        "  - transfer: { from: res/A1, to: plate/A1:A3, volume: 50 uL, mix_after: { times: 2, volume: 40 uL } }\n  - transfer: { from: res/A1, to: plate/B1, volume: 5 uL }\n  - mix: { wells: plate/C1, times: 2, volume: 50 uL }\n",
        // Small volumes only: the 20 µL single channel, which lh3 has too.
        "  - transfer: { from: res/A1, to: plate/D1:D2, volume: 5 uL, mix_after: { times: 2, volume: 10 uL } }\n",
        "  - incubate: { labware: plate, temperature: 37 °C, duration: 10 min }\n",
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

/// The contract between the compiler and the instruments: every command the compiler emits for
/// an instrument, on every instrument of the site the compiler says can run it, carried out by
/// the real driver against its simulator over the wire, through the executor. A capability the
/// compiler accepts but no driver executes fails here (luminescence reads once did; reagent
/// additions went to the liquid handler, which refuses them).
#[test]
fn contract_every_command_runs_on_every_instrument_the_compiler_allows() {
    use labd::store::RunState;
    let _machine = heavy();
    let sources = contract_sources();
    let site = labware::Site::sim().unwrap();
    let mut runs: Vec<(String, protocols::plan::RunPlan)> = Vec::new();
    let mut claims: std::collections::BTreeSet<(String, String)> = Default::default();
    for (name, text) in &sources {
        let c = protocols::compile(
            &protocols::SourceFile::new(name.clone(), text.clone()),
            protocols::Format::Auto,
            &site,
            &labware::Library::shipped(),
        );
        let plan = c.plan.unwrap_or_else(|| panic!("{name}: {:#?}", c.diagnostics));
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
    let ops: std::collections::BTreeSet<&str> = claims.iter().map(|(op, _)| op.as_str()).collect();
    for op in [
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
    ] {
        assert!(ops.contains(op), "no snippet makes the compiler emit `{op}`: {ops:?}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex) = executor_rig().await;
        let ex = std::sync::Arc::new(ex);
        let t = store.create_tenant("contract", 1.0).unwrap();
        let mut names = std::collections::BTreeMap::new();
        for (k, (label, plan)) in runs.iter().enumerate() {
            let run = ex.submit(&t.id, &format!("c{k}"), label, "contract", plan).unwrap();
            names.insert(run.id, label.clone());
        }
        let worker = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run_queued().await })
        };
        // The technician: every addition from the stock is done when asked.
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
        let report = tokio::time::timeout(std::time::Duration::from_secs(300), worker).await.unwrap().unwrap().unwrap();
        technician.abort();
        let failed: Vec<String> = report
            .runs
            .iter()
            .filter(|r| r.1 != RunState::Succeeded)
            .map(|r| format!("{}: {:?}", names[&r.0], r.2))
            .collect();
        assert!(
            failed.is_empty(),
            "claimed by the compiler, refused or failed on the instrument:\n{}",
            failed.join("\n")
        );
        assert_eq!(report.runs.len(), runs.len());
        eprintln!("contract: {} runs, {} (command, instrument) pairs: {claims:?}", runs.len(), claims.len());
    });
}

/// A luminescence read only reader1 can do waits for reader1 while it is in maintenance: it is
/// never routed to reader2 (absorbance only), the run is told why its end moved, and when
/// reader1 is back the read runs there and the run succeeds.
#[test]
fn work_waits_for_the_only_instrument_that_can_do_it() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let ex = std::sync::Arc::new(ex);
        let t = store.create_tenant("acme", 1.0).unwrap();
        let plan = compile_example("viability-glo.yaml");
        let read = plan.tasks.iter().find(|t| t.label.starts_with("read luminescence")).unwrap();
        assert_eq!(read.instruments, ["reader1"], "the compiler lists who can read luminescence");
        store.set_maintenance("reader1", Some(("lamp replacement", "tech-1"))).unwrap();
        ex.board().set_unavailable("reader1", Some("maintenance: lamp replacement".into()));
        let run = ex.submit(&t.id, "glo", "viability", "viability-glo.yaml", &plan).unwrap();
        let worker = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run_queued().await })
        };
        // Everything before the read happens; the read does not start anywhere.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let events = store.events(None, &run.id, 0).unwrap();
            let finished = events.iter().filter(|e| e.kind == "task_finished").count();
            if finished == 3 {
                break;
            }
            assert!(std::time::Instant::now() < until, "the work before the read did not finish: {events:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await; // 5,000 device-seconds
        let used = task_instruments(&store);
        assert!(!used.iter().any(|i| i.starts_with("reader")), "the read waits for reader1: {used:?}");
        assert_eq!(store.run(None, &run.id).unwrap().state, RunState::Running);
        store.set_maintenance("reader1", None).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(120), worker).await.unwrap().unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == RunState::Succeeded), "{:?}", report.runs);
        assert_eq!(
            task_instruments(&store).iter().filter(|i| i.starts_with("reader")).collect::<Vec<_>>(),
            ["reader1"]
        );
        let results = store.results(Some(&t.id), &run.id).unwrap();
        assert_eq!(
            (results[0].kind.as_str(), results[0].unit.as_str(), results[0].values.len()),
            ("luminescence", "RLU", 16)
        );
        let told: Vec<String> = store
            .events(None, &run.id, 0)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "scheduled" || e.kind == "rescheduled")
            .map(|e| e.payload_json)
            .collect();
        assert!(told[0].contains("\"waits_for\":[\"reader1\"]"), "the tenant was told what it waits for: {told:?}");
        assert!(told.iter().any(|p| p.contains("reader1 is back")), "and when it came back: {told:?}");
    });
}

/// Bench time reserved for one tenant keeps another tenant's work off those instruments until the
/// reservation ends.
#[test]
fn a_reservation_keeps_other_tenants_off_the_instrument() {
    use labd::store::{Reservation, RunState};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let a = store.create_tenant("acme", 1.0).unwrap();
        let b = store.create_tenant("globex", 1.0).unwrap();
        let now = labd::store::now_ms();
        // 3 s wall = 30,000 s of device time at 1e-4; unreserved, the first read comes after
        // about 0.6 s (measured in a debug build).
        let ends = now + 3000;
        for inst in ["reader1", "plate_reader"] {
            // By id, and by class (the class's first instrument, reader1 again): both hold.
            let id = labd::store::new_id("rsv");
            let r = Reservation {
                id,
                tenant_id: b.id.clone(),
                instrument_class: inst.into(),
                starts_at: now,
                ends_at: ends,
            };
            store.add_reservation(&r).unwrap();
        }
        let id = labd::store::new_id("rsv");
        let r = Reservation {
            id,
            tenant_id: b.id.clone(),
            instrument_class: "reader2".into(),
            starts_at: now,
            ends_at: ends,
        };
        store.add_reservation(&r).unwrap();
        let run = ex.submit(&a.id, "a", "growth", "g.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs);
        let first_read = store
            .events(None, &run.id, 0)
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "task_started" && e.payload_json.contains("\"reader"))
            .expect("the run read its plate");
        assert!(
            first_read.at >= ends - 5,
            "acme's first read at {} waited for globex's reservation until {ends}",
            first_read.at
        );
    });
}

/// A liquid handler that stops answering mid-transfer: the outcome is unknown, the command is not
/// resent, a technician is asked; aborting fails the run with that reason.
#[test]
fn a_timeout_mid_transfer_becomes_an_intervention() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let f = "timeout=G0 B";
        let (store, ex, _) = faulty_rig(&[("lh1", f), ("lh2", f), ("lh3", f)]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        let run = ex.submit(&t.id, "d", "dilution", "sd.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        let driving = tokio::spawn({
            let ex = ex.clone();
            async move { ex.run_queued().await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let i = loop {
            if let Some(i) = store.interventions(None, true).unwrap().into_iter().next() {
                break i;
            }
            assert!(std::time::Instant::now() < deadline, "no intervention was opened");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(i.instrument.as_deref().is_some_and(|x| x.starts_with("lh")), "{i:?}");
        assert!(i.todo.contains("done") && i.todo.contains("redo") && i.todo.contains("abort"), "{i:?}");
        let attempts = store.attempts(&run.id).unwrap();
        let last = attempts.last().unwrap();
        assert_eq!(last.outcome.as_deref(), Some("unknown"), "{last:?}");
        assert!(!last.intent.repeatable, "a liquid transfer is not safe to repeat");
        assert_eq!(attempts.iter().filter(|a| a.intent == last.intent).count(), 1, "it was not resent");
        store.resolve_intervention(&i.id, "abort", "tech-1").unwrap();
        let report =
            tokio::time::timeout(std::time::Duration::from_secs(120), driving).await.unwrap().unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Failed);
        assert!(report.runs[0].2.as_deref().unwrap().contains("a technician aborted"), "{:?}", report.runs);
    });
}

/// Quotas: at most N runs of a tenant at once (the rest wait their turn), and no new runs once
/// the month's device-hours are used.
#[test]
fn quotas_hold_runs_back_and_refuse_when_used_up() {
    use labd::store::{RunState, Usage};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex, _) = faulty_rig(&[]).await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        store.set_quotas(&t.id, Some(1), None, 0).unwrap();
        let plan = compile_example("growth-curve.yaml");
        let a = ex.submit(&t.id, "a", "growth", "g.yaml", &plan).unwrap();
        let b = ex.submit(&t.id, "b", "growth", "g.yaml", &plan).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued()).await.unwrap().unwrap();
        assert!(report.runs.iter().all(|r| r.1 == RunState::Succeeded), "{:?}", report.runs);
        let (a, b) = (store.run(None, &a.id).unwrap(), store.run(None, &b.id).unwrap());
        assert!(b.started_at.unwrap() >= a.finished_at.unwrap(), "the second run waited for the first");

        let u = store.create_tenant("umbrella", 1.0).unwrap();
        store.set_quotas(&u.id, None, Some(0.5), 0).unwrap();
        let spent = ex.submit(&u.id, "x", "growth", "g.yaml", &plan).unwrap();
        store
            .add_usage(&Usage {
                tenant_id: u.id.clone(),
                run_id: spent.id.clone(),
                instrument_class: "plate_reader".into(),
                instrument: "reader1".into(),
                device_seconds: 1800.0,
            })
            .unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(60), ex.run_queued()).await.unwrap().unwrap();
        assert_eq!(report.runs[0].1, RunState::Failed);
        assert!(report.runs[0].2.as_deref().unwrap().contains("quota of 0.5 device-hours"), "{:?}", report.runs);
    });
}

fn compile_example(name: &str) -> protocols::plan::RunPlan {
    let path = root().join("protocols/examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let c = protocols::compile(
        &protocols::SourceFile::new(name, text),
        protocols::Format::Auto,
        &labware::Site::sim().unwrap(),
        &labware::Library::shipped(),
    );
    c.plan.unwrap_or_else(|| panic!("{name} compiles"))
}

/// Two tenants' runs, planned together by the scheduler and carried out on the simulated site
/// over the real wire (PTYs, TCP, SiLA): both succeed, every command is journaled with its
/// outcome, results and usage are recorded, and each tenant sees only its own.
#[test]
fn the_executor_runs_two_tenants_on_the_simulated_site() {
    use labd::store::RunState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex) = executor_rig().await;
        let a = store.create_tenant("acme", 1.0).unwrap();
        let b = store.create_tenant("globex", 1.0).unwrap();
        let ra = ex
            .submit(&a.id, "a-1", "dilution", "serial-dilution.yaml", &compile_example("serial-dilution.yaml"))
            .unwrap();
        let rb = ex.submit(&b.id, "b-1", "growth", "growth-curve.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let report = tokio::time::timeout(std::time::Duration::from_secs(240), ex.run_queued())
            .await
            .expect("finishes")
            .unwrap();
        for (id, state, reason) in &report.runs {
            assert_eq!(*state, RunState::Succeeded, "run {id}: {reason:?}");
        }
        assert!(report.moves > 0, "plates were moved by the arms");
        for (tenant, run) in [(&a, &ra), (&b, &rb)] {
            let events = store.events(Some(&tenant.id), &run.id, 0).unwrap();
            let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gapless");
            assert!(events.iter().any(|e| e.kind == "task_finished"));
            assert!(!store.results(Some(&tenant.id), &run.id).unwrap().is_empty(), "the plate was read");
            assert!(store.attempts(&run.id).unwrap().iter().all(|a| a.outcome.as_deref() == Some("ok")));
        }
        assert!(store.open_attempts().unwrap().is_empty(), "every intent has its outcome");
        assert!(store.results(Some(&a.id), &rb.id).is_err(), "acme cannot read globex's results");
        let r = &store.results(Some(&a.id), &ra.id).unwrap()[0];
        assert_eq!((r.labware.as_str(), r.values.len(), r.unit.as_str()), ("plate", 96, "OD"));
        assert!(store
            .usage(Some(&a.id), 0)
            .unwrap()
            .iter()
            .any(|u| u.instrument_class == "liquid_handler" && u.device_seconds > 0.0));
        eprintln!(
            "executor: {} commands, {} moves, planned makespan {:.0} s",
            report.commands, report.moves, report.planned_makespan_s
        );
    });
}

/// `labd serve` with the simulated site, driven by `labctl` as a newcomer would: an admin makes
/// two tenants and their tokens; one tenant submits the serial dilution and waits; it gets its
/// 96 values; the other tenant cannot see the run at all; a retry does not make a second run.
#[test]
fn labd_serve_and_labctl_submit_watch_results_with_tenant_isolation() {
    let dir = std::env::temp_dir().join(format!("lw-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["serve", "--listen", &listen, "--time-scale", "0.0001", "--mqtt-port", "0", "--data-dir"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    args.push(dir.as_os_str());
    let (mut server, _) = start_labd(&args, &root());
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    // Token and password hashes are labd's user's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "the data dir is private");
        for f in ["labd.sqlite", "admin.token", "mqtt-runtime.password"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f} is private");
        }
    }
    let url = format!("http://127.0.0.1:{port}");
    let ctl = |token: &str, args: &[&str]| labctl_at(&url, token, args);
    let json = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {s}"))
    };
    for t in ["acme", "globex"] {
        let (code, so, se) = ctl(&admin, &["tenant", "add", t, "--format", "json"]);
        assert_eq!(code, 0, "{so}{se}");
    }
    let token = |t: &str| {
        json(&ctl(&admin, &["token", "create", "--tenant", t, "--format", "json"]).1)["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (acme, globex) = (token("acme"), token("globex"));
    let file = root().join("protocols/examples/serial-dilution.yaml");
    let file = file.to_str().unwrap();
    // Both tenants at once, each waiting for its run.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| ctl(&acme, &["submit", file, "--wait", "--format", "json"]));
        let b = s.spawn(|| ctl(&globex, &["submit", file, "--wait", "--format", "json"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (code, so, se) = a;
    assert_eq!(code, 0, "acme's run succeeded\n{so}\n{se}");
    assert_eq!(b.0, 0, "globex's run succeeded\n{}\n{}", b.1, b.2);
    let run = json(&so)["run"]["id"].as_str().unwrap().to_string();
    let globex_run = json(&b.1)["run"]["id"].as_str().unwrap().to_string();
    assert!(so.contains("\"task_finished\""), "events were streamed");
    let (code, _, se) = ctl(&acme, &["watch", &globex_run]);
    assert!(code != 0 && se.contains("not found"), "acme cannot watch globex's run: {se}");
    assert!(!ctl(&acme, &["runs", "--format", "json"]).1.contains(&globex_run));
    let (code, csv, se) = ctl(&acme, &["results", &run, "--format", "csv"]);
    assert_eq!(code, 0, "{se}");
    assert_eq!(csv.trim().lines().count(), 1 + 96, "a header and one row per well");
    let (code, _, se) = ctl(&globex, &["results", &run]);
    assert_ne!(code, 0);
    assert!(se.contains("not found"), "another tenant's run is simply not found: {se}");
    assert!(!se.contains("acme"), "and nothing about the other tenant leaks: {se}");
    let theirs = json(&ctl(&globex, &["runs", "--format", "json"]).1);
    assert_eq!(theirs.as_array().map(|a| a.len()), Some(1), "globex sees its one run: {theirs}");
    assert_eq!(theirs[0]["id"].as_str(), Some(globex_run.as_str()));
    // Submitting the file again is a new run; the same key again (a retry) is the same run,
    // and labctl says so.
    let (code, so, _) = ctl(&acme, &["submit", file, "--format", "json"]);
    assert_eq!((code, json(&so)["created"].as_bool()), (0, Some(true)), "submitting again is a new run: {so}");
    let again = json(&so)["run"]["id"].as_str().unwrap().to_string();
    assert_ne!(again, run);
    assert_eq!(ctl(&acme, &["cancel", &again]).0, 0);
    let (code, so, se) = ctl(&acme, &["submit", file, "--key", "k-once", "--format", "json"]);
    assert_eq!((code, json(&so)["created"].as_bool()), (0, Some(true)), "{so}{se}");
    let keyed = json(&so)["run"]["id"].as_str().unwrap().to_string();
    let (code, so, se) = ctl(&acme, &["submit", file, "--key", "k-once", "--format", "json"]);
    assert_eq!((code, json(&so)["created"].as_bool()), (0, Some(false)), "a retry returns the same run");
    assert_eq!(json(&so)["run"]["id"].as_str(), Some(keyed.as_str()));
    assert!(se.contains("used before") && se.contains("for a new run"), "labctl says how to get a new run: {se}");
    assert_eq!(ctl(&acme, &["cancel", &keyed]).0, 0);
    // A protocol with manual steps: each becomes an intervention a technician resolves.
    let tech = json(&ctl(&admin, &["token", "create", "--role", "technician", "--format", "json"]).1)["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, so, se) = ctl(&tech, &["instruments", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    assert_eq!(items(&so).len(), 13, "every instrument and arm reports: {so}");
    assert!(so.contains("\"id\":\"arm1\"") && so.contains("robot_arm"), "{so}");
    assert!(ctl(&acme, &["instruments"]).2.contains("not allowed"));
    let elisa = root().join("protocols/examples/elisa.yaml");
    let (code, so, se) = ctl(&globex, &["submit", elisa.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let elisa_run = json(&so)["run"]["id"].as_str().unwrap().to_string();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut resolved = 0;
    loop {
        let (_, so, _) = ctl(&globex, &["runs", "--format", "json"]);
        let all = json(&so);
        let state = all.as_array().unwrap().iter().find(|r| r["id"] == elisa_run.as_str()).unwrap()["state"].clone();
        if state == "succeeded" {
            break;
        }
        assert_ne!(state, "failed", "{so}");
        assert!(std::time::Instant::now() < until, "ELISA did not finish: {so}");
        let (_, open, _) = ctl(&tech, &["interventions", "--format", "json"]);
        for i in items(&open) {
            assert_eq!(i["run"].as_str(), Some(elisa_run.as_str()));
            assert!(
                ctl(&globex, &["resolve", i["id"].as_str().unwrap(), "done"]).2.contains("not allowed"),
                "scientists do not resolve"
            );
            assert_eq!(ctl(&tech, &["resolve", i["id"].as_str().unwrap(), "done"]).0, 0);
            resolved += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(resolved, 2, "ELISA's two manual steps were handed to the technician");
    // Watching a finished run replays it with a progress bar.
    let (code, so, _) = ctl(&acme, &["watch", &run]);
    assert_eq!(code, 0);
    assert!(so.contains("[####################]"), "a full progress bar: {so}");
    // Technicians: maintenance, the schedule; admins: usage, quotas, reservations, expiring tokens.
    let (code, so, se) = ctl(&tech, &["maintenance", "reader2", "on", "--reason", "lamp change"]);
    assert_eq!(code, 0, "{se}");
    assert!(so.contains("maintenance") && so.contains("lamp change"), "{so}");
    let (_, so, _) = ctl(&tech, &["instruments", "--format", "json"]);
    let reader2 = items(&so).into_iter().find(|i| i["id"] == "reader2").unwrap();
    assert_eq!(reader2["state"], "maintenance");
    assert_eq!(ctl(&tech, &["maintenance", "reader2", "off"]).0, 0);
    let (code, so, _) = ctl(&tech, &["maintenance", "reader2", "on"]);
    assert_ne!(code, 0, "maintenance needs a reason: {so}");
    let (code, lanes, se) = ctl(&tech, &["schedule", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    assert!(lanes.contains(&run) && lanes.contains(&elisa_run), "the technician sees every run's slots");
    assert!(items(&lanes).iter().any(|l| l["lane"] == "arm1" && l["state"] == "done"), "{lanes}");
    let (_, theirs, _) = ctl(&globex, &["schedule", "--format", "json"]);
    assert!(!theirs.contains(&run) && !theirs.contains("acme"), "globex sees none of acme's slots");
    assert!(theirs.contains(&elisa_run));
    let (code, usage, se) = ctl(&admin, &["usage", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let acme_lh =
        items(&usage).into_iter().find(|l| l["tenant"] == "acme" && l["instrument_class"] == "liquid_handler");
    assert!(acme_lh.is_some_and(|l| l["device_hours"].as_f64().unwrap() > 0.0), "{usage}");
    assert!(ctl(&acme, &["usage"]).2.contains("not allowed"));
    assert_eq!(ctl(&admin, &["tenant", "quota", "acme", "--max-runs", "2", "--device-hours", "100"]).0, 0);
    let (code, _, se) = ctl(&admin, &["reserve", "globex", "plate_reader", "--for", "1", "--in", "600"]);
    assert_eq!(code, 0, "{se}");
    assert_eq!(items(&ctl(&admin, &["reservations", "--format", "json"]).1).len(), 1);
    let (code, _, se) = ctl(&admin, &["reserve", "globex", "spectrometer", "--for", "1"]);
    assert!(code != 0 && se.contains("no instrument or instrument class"), "{se}");
    let brief = json(&ctl(&admin, &["token", "create", "--tenant", "acme", "--ttl", "1", "--format", "json"]).1);
    assert!(brief["expires_at_ms"].as_i64().is_some());
    assert_eq!(ctl(brief["token"].as_str().unwrap(), &["runs"]).0, 0, "valid for a second");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (code, _, se) = ctl(brief["token"].as_str().unwrap(), &["runs"]);
    assert!(code != 0 && se.contains("expired"), "{se}");
    let spare = json(&ctl(&admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1);
    assert_eq!(ctl(&admin, &["token", "revoke", spare["principal"].as_str().unwrap()]).0, 0);
    let (code, _, se) = ctl(spare["token"].as_str().unwrap(), &["runs"]);
    assert!(code != 0 && se.contains("not signed in"), "a revoked token no longer signs in: {se}");
    assert!(
        items(&ctl(&acme, &["interventions", "--all", "--format", "json"]).1).is_empty(),
        "acme sees none of globex's interventions"
    );
    // The standard gRPC health service answers for the API.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let serving = rt.block_on(async {
        let ch = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        h.check(tonic_health::pb::HealthCheckRequest { service: "labwright.v1.Runs".into() })
            .await
            .unwrap()
            .into_inner()
            .status
    });
    assert_eq!(serving, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let (code, _, se) = ctl("lw_not_a_token", &["runs"]);
    assert!(code != 0 && se.contains("not signed in"), "{se}");
    let (code, _, se) = ctl(&acme, &["tenant", "add", "mallory"]);
    assert!(code != 0 && se.contains("not allowed"), "{se}");
    std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success(), "SIGTERM stops labd gracefully");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cancelling a running run stops it at the next task; plate moves still run; it ends cancelled.
/// After a crash, a run that was running is failed with a reason, an in-flight command that is not
/// safe to repeat becomes an intervention and is never resent, queued runs are untouched, and a
/// run that had not begun is queued again.
#[test]
fn cancel_and_recovery_leave_every_run_in_an_explicit_state() {
    use labd::store::{Intent, RunState};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, ex) = executor_rig().await;
        let t = store.create_tenant("acme", 1.0).unwrap();
        let run = ex.submit(&t.id, "c", "growth", "growth-curve.yaml", &compile_example("growth-curve.yaml")).unwrap();
        let (s2, id) = (store.clone(), run.id.clone());
        let canceller = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if s2.events(None, &id, 0).unwrap().iter().any(|e| e.kind == "task_finished") {
                    s2.set_run_state(&id, RunState::Cancelling, Some("cancelled by test")).unwrap();
                    return;
                }
            }
        });
        let report = tokio::time::timeout(std::time::Duration::from_secs(120), ex.run_queued()).await.unwrap().unwrap();
        canceller.await.unwrap();
        assert_eq!(report.runs[0].1, RunState::Cancelled, "{:?}", report.runs);
        let plan = compile_example("growth-curve.yaml");
        let finished = store.events(None, &run.id, 0).unwrap().iter().filter(|e| e.kind == "task_finished").count();
        assert!(finished < plan.tasks.len(), "it stopped early ({finished} of {} tasks)", plan.tasks.len());

        // A crash mid-run, simulated in the store: running, one dispense sent, no outcome.
        let crashed = ex.submit(&t.id, "d", "dilution", "sd.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        let waiting = ex.submit(&t.id, "e", "dilution", "sd2.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        store.set_run_state(&crashed.id, RunState::Running, None).unwrap();
        store
            .record_intent(&Intent {
                run_id: crashed.id.clone(),
                task_id: 0,
                command_index: 7,
                instrument: "lh1".into(),
                op_json: "{\"op\":\"dispense\"}".into(),
                repeatable: false,
            })
            .unwrap();
        assert_eq!(ex.recover().unwrap(), vec![crashed.id.clone()]);
        let r = store.run(None, &crashed.id).unwrap();
        assert_eq!(r.state, RunState::Failed);
        assert!(r.reason.unwrap().contains("may or may not have run"));
        assert!(store.open_attempts().unwrap().is_empty(), "the in-flight command is marked unknown, not left open");
        assert_eq!(store.attempts(&crashed.id).unwrap()[0].outcome.as_deref(), Some("unknown"));
        assert_eq!(store.interventions(None, true).unwrap().len(), 1, "a technician is asked to check the dispense");
        assert_eq!(store.run(None, &waiting.id).unwrap().state, RunState::Queued, "queued runs continue");

        // Admitted but nothing sent yet: it goes back to the queue rather than failing.
        let untouched =
            ex.submit(&t.id, "f", "dilution", "sd3.yaml", &compile_example("serial-dilution.yaml")).unwrap();
        store.set_run_state(&untouched.id, RunState::Running, None).unwrap();
        assert!(ex.recover().unwrap().is_empty());
        let r = store.run(None, &untouched.id).unwrap();
        assert_eq!(
            (r.state, r.reason.as_deref()),
            (RunState::Queued, Some("labd stopped before it began; queued again"))
        );
    });
}

/// `kill -9` of labd mid-run, then a restart: the interrupted run ends explicitly failed with a
/// reason, its event sequence stays gapless, and a run submitted afterwards completes.
#[test]
fn labd_killed_mid_run_recovers_on_restart() {
    let dir = std::env::temp_dir().join(format!("lw-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = |scale: &str| {
        let args = ["serve", "--listen", &listen, "--time-scale", scale, "--mqtt-port", "0", "--data-dir"];
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        args.push(dir.as_os_str());
        start_labd(&args, &root())
    };
    // Slow enough (0.01) that the run is surely mid-way when killed.
    let (mut first, _) = start("0.01");
    let url = format!("http://127.0.0.1:{port}");
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    let ctl = |token: &str, args: &[&str]| labctl_at(&url, token, args);
    assert_eq!(ctl(&admin, &["tenant", "add", "acme"]).0, 0);
    let token = ctl(&admin, &["token", "create", "--tenant", "acme"]).1.trim().to_string();
    let file = root().join("protocols/examples/serial-dilution.yaml");
    let (code, so, se) = ctl(&token, &["submit", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let run = serde_json::from_str::<serde_json::Value>(so.lines().next().unwrap()).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, so, _) = ctl(&token, &["runs", "--format", "json"]);
        if so.contains("\"running\"") {
            break;
        }
        assert!(std::time::Instant::now() < until, "the run never started: {so}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    first.0.kill().unwrap(); // SIGKILL: no chance to clean up
    first.0.wait().unwrap();
    let (mut second, seen) = start("0.0001");
    assert!(seen.contains(&run), "the restart reports the interrupted run: {seen}");
    let (_, so, _) = ctl(&token, &["watch", &run, "--format", "json"]);
    let events: Vec<serde_json::Value> = so.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gapless across the crash");
    let last = events.last().unwrap();
    assert_eq!(last["payload"]["state"], "failed");
    assert!(last["payload"]["reason"].as_str().unwrap().contains("restarted"), "{last}");
    let (code, _, se) = ctl(&token, &["submit", file.to_str().unwrap(), "--key", "after-crash", "--wait"]);
    assert_eq!(code, 0, "a new run completes after the restart: {se}");
    std::process::Command::new("kill").args(["-TERM", &second.0.id().to_string()]).status().unwrap();
    assert!(second.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad requests get clear statuses and the API keeps serving: a malformed protocol, a protocol
/// over the size limit, a message over gRPC's limit, unknown ids, another tenant's run, an
/// expired token, no token, the wrong role, a bad maintenance request.
#[test]
fn bad_requests_get_clear_statuses_and_the_api_keeps_serving() {
    use labd::api::{token_hash, Api};
    use labd::store::{Role, Store};
    use protos::labwright::v1 as pb;
    use std::sync::Arc;
    use tonic::Code;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store: Arc<dyn Store> = Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let acme = store.create_tenant("acme", 1.0).unwrap();
        let globex = store.create_tenant("globex", 1.0).unwrap();
        store.create_principal(Some(&acme.id), Role::Scientist, &token_hash("acme"), None).unwrap();
        store.create_principal(Some(&globex.id), Role::Scientist, &token_hash("globex"), None).unwrap();
        store.create_principal(None, Role::Technician, &token_hash("tech"), None).unwrap();
        let old = store.create_principal(Some(&acme.id), Role::Scientist, &token_hash("old"), None).unwrap();
        store.set_principal_expiry(&old.id, labd::store::now_ms() - 1000).unwrap();
        let api = Api {
            store: store.clone(),
            site: std::sync::Arc::new(labware::Site::sim().unwrap()),
            library: std::sync::Arc::new(labware::Library::shipped()),
            lab: Default::default(),
            board: None,
            time_scale: 1.0,
            mqtt_broker: None,
            embedded_broker: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(labd::serve::serve_api(api, listener, None, None, async {
            let _ = stopped.await;
        }));
        let ch = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        fn req<T>(token: &str, m: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            if !token.is_empty() {
                r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            r
        }
        let submit = |name: &str, source: Vec<u8>, key: &str| pb::SubmitRequest {
            file_name: name.into(),
            source,
            format: 0,
            idempotency_key: key.into(),
        };
        let mut runs = pb::runs_client::RunsClient::new(ch.clone()).max_encoding_message_size(64 << 20);
        let example = std::fs::read(root().join("protocols/examples/growth-curve.yaml")).unwrap();

        // A malformed protocol: not accepted, diagnostics say where.
        let r = runs.submit(req("acme", submit("bad.yaml", b"labwright: 1\nsteps: [".to_vec(), "k1"))).await.unwrap();
        let r = r.into_inner();
        assert!(r.run.is_none() && !r.created && !r.diagnostics.is_empty(), "{r:?}");
        assert!(r.diagnostics[0].line >= 1, "{:?}", r.diagnostics);
        // Over the protocol size limit, and over gRPC's message limit.
        let big = vec![b'#'; 9 << 20];
        let e = runs.submit(req("acme", submit("big.yaml", big.clone(), "k2"))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("the limit is 8 MiB"), "{}", e.message());
        // Free text the API takes has its limits too.
        let long_key = "k".repeat(201);
        let e = runs.submit(req("acme", submit("g.yaml", example.clone(), &long_key))).await.unwrap_err();
        assert!(e.code() == Code::InvalidArgument && e.message().contains("limit is 200"), "{e:?}");
        // The same limit for every call that takes a protocol.
        let mut checker = pb::protocols_client::ProtocolsClient::new(ch.clone());
        let ask = pb::ValidateRequest { file_name: "big.yaml".into(), source: big, format: 0 };
        for e in [
            checker.validate(req("acme", ask.clone())).await.unwrap_err(),
            checker.quote(req("acme", ask)).await.unwrap_err(),
        ] {
            assert!(e.code() == Code::InvalidArgument && e.message().contains("the limit is 8 MiB"), "{e:?}");
        }
        let huge = vec![b'#'; 20 << 20];
        let e = runs.submit(req("acme", submit("huge.yaml", huge, "k3"))).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        // No key, no token, an unknown token, an expired token.
        let e = runs.submit(req("acme", submit("g.yaml", example.clone(), " "))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("idempotency key"), "{}", e.message());
        let e = runs.list(req("", pb::ListRunsRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = runs.list(req("nope", pb::ListRunsRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = runs.list(req("old", pb::ListRunsRequest::default())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{}", e.message());
        // A quote plans the protocol behind today's queue.
        let mut protocols = pb::protocols_client::ProtocolsClient::new(ch.clone());
        let quote = |r: &pb::QuoteResponse| (r.estimated_start_s, r.earliest_completion_s, r.duration_s);
        let ask = pb::ValidateRequest { file_name: "g.yaml".into(), source: example.clone(), format: 0 };
        let alone = protocols.quote(req("acme", ask.clone())).await.unwrap().into_inner();
        let (start, earliest, duration) = quote(&alone);
        assert!(start < 60.0, "nothing queued: it would start as soon as its plate is there ({start})");
        assert!(earliest >= duration * 0.9 && earliest.is_finite(), "{earliest} vs {duration}");
        assert!(alone.earliest_completion_at_ms > labd::store::now_ms());
        // Unknown ids and another tenant's run look the same: NOT_FOUND, nothing leaks.
        let mine = runs.submit(req("acme", submit("g.yaml", example.clone(), "k4"))).await.unwrap().into_inner();
        let behind = protocols.quote(req("globex", ask)).await.unwrap().into_inner();
        // Behind acme's run, globex learns when it would start and end — not how many runs
        // anyone has queued, nor whose.
        assert!(
            behind.estimated_start_s >= start - 1e-6 && behind.earliest_completion_s >= earliest - 1e-6,
            "{behind:?}"
        );
        assert!(behind.estimated_start_at_ms > labd::store::now_ms());
        let mine = mine.run.unwrap().id;
        let theirs = runs.get(req("globex", pb::GetRunRequest { run_id: mine.clone() })).await.unwrap_err();
        let nothing = runs.get(req("globex", pb::GetRunRequest { run_id: "run_nope".into() })).await.unwrap_err();
        assert_eq!(theirs.code(), Code::NotFound);
        assert_eq!(nothing.code(), Code::NotFound);
        assert_eq!(theirs.message().replace(&mine, "ID"), nothing.message().replace("run_nope", "ID"));
        for e in [
            runs.results(req("globex", pb::ResultsRequest { run_id: mine.clone() })).await.unwrap_err(),
            runs.cancel(req("globex", pb::CancelRequest { run_id: mine.clone() })).await.unwrap_err(),
        ] {
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
        }
        let mut w = runs.watch(req("globex", pb::WatchRequest { run_id: mine.clone(), after_seq: 0 })).await;
        if let Ok(s) = w.as_mut() {
            let first = s.get_mut().message().await;
            assert!(first.is_err(), "globex reads nothing of acme's run: {first:?}");
        }
        // The wrong role; a bad maintenance request.
        let mut admin = pb::admin_client::AdminClient::new(ch.clone());
        let e = admin.create_tenant(req("acme", pb::CreateTenantRequest { name: "x".into(), weight: 1.0 })).await;
        assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
        let mut lab = pb::lab_client::LabClient::new(ch.clone());
        let e = lab
            .set_maintenance(req(
                "tech",
                pb::SetMaintenanceRequest { instrument: "reader9".into(), on: true, reason: "x".into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("reader1"), "names the instruments there are: {}", e.message());
        let e = lab
            .set_maintenance(req(
                "tech",
                pb::SetMaintenanceRequest { instrument: "reader1".into(), on: true, reason: String::new() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = lab
            .set_maintenance(req(
                "acme",
                pb::SetMaintenanceRequest { instrument: "reader1".into(), on: true, reason: "x".into() },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        // After all that, the API still serves: the same submission again is the same run.
        let again = runs.submit(req("acme", submit("g.yaml", example.clone(), "k4"))).await.unwrap().into_inner();
        assert!(!again.created);
        assert_eq!(again.run.unwrap().id, mine);
        let list = runs.list(req("acme", pb::ListRunsRequest::default())).await.unwrap().into_inner();
        assert_eq!((list.runs.len(), list.next_page_token.as_str()), (1, ""));
        // Lists come a page at a time, in submission order, each page a bounded reply.
        for k in ["k5", "k6"] {
            runs.submit(req("acme", submit("g.yaml", example.clone(), k))).await.unwrap();
        }
        let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let ask = pb::ListRunsRequest { page_size: 2, page_token: token, ..Default::default() };
            let page = runs.list(req("acme", ask)).await.unwrap().into_inner();
            assert!(page.runs.len() <= 2);
            seen.extend(page.runs.into_iter().map(|r| r.id));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!((seen.len(), pages), (3, 2), "{seen:?}");
        assert_eq!(seen[0], mine, "oldest first");
        let bogus = pb::ListRunsRequest { page_token: "nonsense".into(), ..Default::default() };
        assert_eq!(runs.list(req("acme", bogus)).await.unwrap_err().code(), Code::InvalidArgument);
        // Interventions and the schedule page the same way.
        for k in 0..5 {
            store.open_intervention(&mine, None, None, "manual step", &format!("step {k}")).unwrap();
        }
        let (mut todo, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let ask = pb::InterventionsRequest { page_size: 2, page_token: token, ..Default::default() };
            let page = lab.interventions(req("tech", ask)).await.unwrap().into_inner();
            assert!(page.interventions.len() <= 2);
            todo.extend(page.interventions.into_iter().map(|i| i.todo));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!((todo.len(), pages), (5, 3), "{todo:?}");
        assert_eq!(todo[0], "step 0", "oldest first");
        let theirs = pb::InterventionsRequest::default();
        assert!(lab.interventions(req("globex", theirs)).await.unwrap().into_inner().interventions.is_empty());
        let bogus = pb::ScheduleRequest { page_token: "nonsense".into(), ..Default::default() };
        assert_eq!(lab.schedule(req("tech", bogus)).await.unwrap_err().code(), Code::InvalidArgument);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
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

/// The crash loop: `labd` is killed with SIGKILL at 20 random moments while tenants' runs
/// execute, and restarted each time. At the end every run is complete or explicitly failed,
/// every run's events are gapless, completed runs did on the liquid handlers exactly what a
/// crash-free reference run did and measured the same values, interrupted runs never did more
/// than the reference (no liquid movement twice), and the journal never holds two attempts of a
/// command that is not safe to repeat.
#[test]
fn crash_loop_twenty_kills_lose_nothing_and_repeat_nothing() {
    let _machine = heavy();
    use labd::store::{RunState, Store};
    let protocol = "serial-dilution.yaml";
    let base = std::env::temp_dir().join(format!("lw-crashloop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (ref_logs, logs, data) = (base.join("ref-logs"), base.join("logs"), base.join("data"));
    for d in [&ref_logs, &logs, &data] {
        std::fs::create_dir_all(d).unwrap();
    }

    // The crash-free reference, in-process, with the same simulators.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ref_short, ref_results, ref_moves) = rt.block_on(async {
        use labd::executor::{Executor, ExecutorConfig};
        let scale = devices::TimeScale(0.0001);
        let store: std::sync::Arc<dyn Store> =
            std::sync::Arc::new(labd::store::sqlite::SqliteStore::in_memory().unwrap());
        let none = Default::default();
        let lab = labd::lab::Lab::simulated_logged(labware::Site::sim().unwrap(), scale, &none, Some(&ref_logs));
        let lab = std::sync::Arc::new(lab.await.unwrap());
        let ex = Executor::new(store.clone(), lab, ExecutorConfig { scale, ..ExecutorConfig::default() });
        let t = store.create_tenant("ref", 1.0).unwrap();
        let run = ex.submit(&t.id, "ref", "ref", protocol, &compile_example(protocol)).unwrap();
        let report = ex.run_queued().await.unwrap();
        assert_eq!(report.runs[0].1, RunState::Succeeded, "{:?}", report.runs);
        let moves = store.attempts(&run.id).unwrap().iter().filter(|a| a.intent.task_id < 0).count();
        (short(&run.id), store.results(None, &run.id).unwrap(), moves)
    });
    drop(rt);
    let reference = wire_liquid(&ref_logs).remove(&ref_short).expect("the reference moved liquid");
    assert!(reference.values().sum::<usize>() > 100, "a real amount of pipetting: {}", reference.len());

    let port = free_port();
    let config = base.join("labd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nmqtt_port = 0\ntime_scale = 0.0005\nsim_log_dir = {:?}\n",
            data.display().to_string(),
            logs.display().to_string()
        ),
    )
    .unwrap();
    let start = || start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &root()).0;
    let url = format!("http://127.0.0.1:{port}");
    let ctl = |token: &str, args: &[&str]| labctl_at(&url, token, args);
    let file = root().join("protocols/examples").join(protocol);
    let mut daemon = start();
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let mut tokens = Vec::new();
    for name in ["acme", "globex"] {
        assert_eq!(ctl(&admin, &["tenant", "add", name]).0, 0);
        tokens.push(ctl(&admin, &["token", "create", "--tenant", name]).1.trim().to_string());
    }
    let submit = |i: usize| {
        let (code, _, se) = ctl(&tokens[i % 2], &["submit", file.to_str().unwrap(), "--key", &format!("k{i}")]);
        assert_eq!(code, 0, "{se}");
    };
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("crash loop seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for kill in 0..20 {
        submit(kill);
        std::thread::sleep(std::time::Duration::from_millis(150 + next() % 4500));
        daemon.0.kill().unwrap(); // SIGKILL: no chance to clean up
        daemon.0.wait().unwrap();
        daemon = start();
    }
    submit(20);
    submit(21);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (_, so, _) = ctl(&admin, &["runs", "--format", "json"]);
        let runs: Vec<serde_json::Value> = serde_json::from_str(so.trim()).unwrap();
        if runs.len() == 22
            && runs.iter().all(|r| ["succeeded", "failed", "cancelled"].contains(&r["state"].as_str().unwrap()))
        {
            break;
        }
        assert!(std::time::Instant::now() < until, "runs did not all finish: {so}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::process::Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    assert!(daemon.0.wait().unwrap().success());

    let store = labd::store::sqlite::SqliteStore::open(&data.join("labd.sqlite")).unwrap();
    let wire = wire_liquid(&logs);
    let runs = store.runs(None, &[]).unwrap();
    assert_eq!(runs.len(), 22, "every accepted run is there");
    let (mut succeeded, mut failed) = (0, 0);
    for r in &runs {
        let events = store.events(None, &r.id, 0).unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "{}: gapless", r.id);
        let did = wire.get(&short(&r.id)).cloned().unwrap_or_default();
        let attempts = store.attempts(&r.id).unwrap();
        let mut once = std::collections::BTreeMap::new();
        for a in attempts.iter().filter(|a| !a.intent.repeatable && a.intent.task_id >= 0) {
            *once.entry((a.intent.task_id, a.intent.command_index)).or_insert(0) += 1;
        }
        let twice: Vec<_> = once.iter().filter(|(_, &n)| n > 1).collect();
        assert!(twice.is_empty(), "{}: commands not safe to repeat sent twice: {twice:?}", r.id);
        // Plate moves have no command index: at most as many as the reference made.
        let moves = attempts.iter().filter(|a| a.intent.task_id < 0).count();
        let listed: Vec<String> = attempts
            .iter()
            .filter(|a| a.intent.task_id < 0)
            .map(|a| format!("{} {} -> {:?} {:?}", a.intent.instrument, a.intent.op_json, a.outcome, a.error))
            .collect();
        let why = store.events(None, &r.id, 0).unwrap().iter().map(|e| format!("{e:?}")).collect::<Vec<_>>();
        assert!(
            moves <= ref_moves,
            "{} ({:?}): {moves} plate moves, the reference made {ref_moves}:\n{}\nevents:\n{}",
            r.id,
            r.state,
            listed.join("\n"),
            why.join("\n")
        );
        match r.state {
            RunState::Succeeded => {
                succeeded += 1;
                assert_eq!(did, reference, "{}: did exactly what the reference did", r.id);
                assert_eq!(moves, ref_moves, "{}: every plate move, once", r.id);
                let res = store.results(None, &r.id).unwrap();
                assert_eq!(res.len(), ref_results.len(), "{}: all results", r.id);
                for (a, b) in res.iter().zip(&ref_results) {
                    assert_eq!((&a.wells, &a.values, &a.unit), (&b.wells, &b.values, &b.unit), "{}: same values", r.id);
                }
            }
            RunState::Failed => {
                failed += 1;
                assert!(r.reason.as_deref().is_some_and(|w| !w.is_empty()), "{}: failed with a reason", r.id);
                for (k, n) in &did {
                    assert!(
                        reference.get(k).is_some_and(|m| n <= m),
                        "{}: `{k}` done {n} times, more than the reference",
                        r.id
                    );
                }
            }
            s => panic!("{}: ended {s}", r.id),
        }
    }
    println!("crash loop: {succeeded} runs succeeded, {failed} failed explicitly after 20 SIGKILLs");
    assert!(succeeded >= 2 && failed >= 1, "both paths were exercised: {succeeded} succeeded, {failed} failed");
    let _ = std::fs::remove_dir_all(&base);
}

/// The API over TLS: labctl trusts the lab's CA and works; plain gRPC and a missing CA get
/// clear errors; a half-configured TLS stops the start naming the key.
#[test]
fn the_api_over_tls() {
    let dir = fresh_dir("tls");
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl").current_dir(&dir).args(args).output().expect("openssl is installed");
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Lab CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    let port = free_port();
    let config = dir.join("labd.toml");
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\ntls_cert = \"server.pem\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("tls_cert is set but tls_key is not"), "{}", text(&o.stderr));
    std::fs::write(
        &config,
        format!("data_dir = {:?}\nlisten = \"127.0.0.1:{port}\"\nmqtt_port = 0\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\ntime_scale = 0.001\n", data.display().to_string()),
    )
    .unwrap();
    let (mut server, seen) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    assert!(seen.contains("(TLS)"), "{seen}");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let ca = dir.join("ca.pem");
    let ctl = |url: &str, extra: &[&str]| labctl_at(url, &admin, extra);
    let https = format!("https://127.0.0.1:{port}");
    let (code, _, se) = ctl(&https, &["--ca", ca.to_str().unwrap(), "tenant", "add", "acme"]);
    assert_eq!(code, 0, "{se}");
    let (code, so, se) = ctl(&https, &["--ca", ca.to_str().unwrap(), "runs", "--format", "json"]);
    assert_eq!((code, so.trim()), (0, "[]"), "{se}");
    let (code, _, se) = ctl(&https, &["runs"]);
    assert!(code != 0 && se.contains("--ca FILE"), "{se}");
    let (code, _, se) = ctl(&format!("http://127.0.0.1:{port}"), &["runs"]);
    assert!(code != 0 && !se.contains("panicked"), "plain gRPC to a TLS server fails cleanly: {se}");
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Telemetry on an external Mosquitto configured by `labd mqtt-config`. Isolation: credentials
/// come with `labctl token create`; a tenant subscribed to `#`, `lab/#`, `lab/v1/t/+/#` and to
/// the other tenant's exact topic receives only its own messages (delivery is checked, not
/// SUBACKs); a wrong password is refused; a tenant's publish never reaches anyone; our `$7$`
/// hashes are the ones `mosquitto_passwd` makes. Delivery: the relay brings a tenant every event
/// of its run, gapless; with the broker down and labd killed after committing, the backlog
/// arrives once both are back.
#[test]
fn mqtt_tenants_stay_apart_and_every_event_arrives() {
    let dir = fresh_dir("mqtt");
    // Our hash format is Mosquitto's own.
    let pw = dir.join("check.passwd");
    let o = Command::new("mosquitto_passwd").args(["-c", "-b"]).arg(&pw).args(["someone", "s3cret"]).output();
    let o = o.expect("mosquitto_passwd is installed (scripts/peers)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let line = std::fs::read_to_string(&pw).unwrap();
    let hash = line.trim().split_once(':').unwrap().1.to_string();
    assert!(labd::telemetry::mosquitto::verify("s3cret", &hash), "{hash}");
    assert!(!labd::telemetry::mosquitto::verify("s3cre7", &hash));

    let (api_port, mqtt_port) = (free_port(), free_port());
    let data = dir.join("data");
    let config = dir.join("labd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{api_port}\"\nmqtt_broker = \"external\"\nmqtt_port = {mqtt_port}\ntime_scale = 0.001\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let (mut server, _) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let url = format!("http://127.0.0.1:{api_port}");
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"));
    let mut creds = Vec::new();
    let mut tenant_ids = Vec::new();
    for t in ["acme", "globex"] {
        tenant_ids.push(
            json(&labctl_at(&url, &admin, &["tenant", "add", t, "--format", "json"]).1)["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let c = json(&labctl_at(&url, &admin, &["token", "create", "--tenant", t, "--format", "json"]).1);
        assert_eq!(c["mqtt"]["port"].as_u64(), Some(mqtt_port as u64));
        assert!(c["mqtt"]["topics"].as_str().unwrap().ends_with("/#"));
        creds.push((
            c["mqtt"]["username"].as_str().unwrap().to_string(),
            c["mqtt"]["password"].as_str().unwrap().to_string(),
        ));
    }
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let broker_dir = dir.join("broker");
    let o = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["mqtt-config", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&broker_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let passwd = std::fs::read_to_string(broker_dir.join("passwd")).unwrap();
    assert!(!passwd.contains(&creds[0].1), "no password in the clear");
    let runtime_pw = std::fs::read_to_string(data.join("mqtt-runtime.password")).unwrap().trim().to_string();
    let start_broker = || mosquitto(&broker_dir, mqtt_port);
    let mut broker = start_broker();
    check_mqtt_isolation(mqtt_port, &runtime_pw, &creds, &tenant_ids);

    // labd publishing through the relay: acme's subscriber gets its run's events in order.
    let conf = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{conf}mqtt_publish = true\n")).unwrap();
    let listen = |user: &str, pass: &str, topic: &str| mqtt_listen(mqtt_port, user, pass, topic);
    let mut acme_sub = listen(&creds[0].0, &creds[0].1, &labd::telemetry::tenant_subtree(&tenant_ids[0]));
    let mut globex_sub = listen(&creds[1].0, &creds[1].1, "#");
    let (mut server, seen) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    assert!(seen.contains("telemetry to mqtt://"), "{seen}");
    let acme_token = {
        let c = json(&labctl_at(&url, &admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1);
        c["token"].as_str().unwrap().to_string()
    };
    let file = root().join("protocols/examples/serial-dilution.yaml");
    let (code, so, se) =
        labctl_at(&url, &acme_token, &["submit", file.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run = json(so.lines().next().unwrap())["run"]["id"].as_str().unwrap().to_string();
    let n_events = so.lines().count() - 1;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let (acme_got, globex_got) = (mqtt_collect(&mut acme_sub), mqtt_collect(&mut globex_sub));
    check_mqtt_delivery(&acme_got, &globex_got, &run, n_events, &tenant_ids[0]);

    // The broker is down while a run executes, and labd is killed (SIGKILL) with its events
    // committed but never published; the broker comes back, labd restarts: the backlog arrives.
    drop(broker);
    let (mut server, _) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    let (code, so, se) = labctl_at(
        &url,
        &acme_token,
        &["submit", file.to_str().unwrap(), "--key", "offline", "--wait", "--format", "json"],
    );
    assert_eq!(code, 0, "{so}{se}");
    let run = json(so.lines().next().unwrap())["run"]["id"].as_str().unwrap().to_string();
    let n_events = so.lines().count() - 1;
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    broker = start_broker();
    let mut acme_sub = listen(&creds[0].0, &creds[0].1, &labd::telemetry::tenant_subtree(&tenant_ids[0]));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (mut server, _) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let store_path = data.join("labd.sqlite");
    loop {
        // Done when the outbox holds nothing unsent.
        let c = rusqlite::Connection::open(&store_path).unwrap();
        let unsent: i64 = c.query_row("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL", [], |r| r.get(0)).unwrap();
        if unsent == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{unsent} outbox rows never published");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let got = mqtt_collect(&mut acme_sub);
    let seqs: std::collections::BTreeSet<i64> = got
        .lines()
        .filter(|l| l.contains(&run) && l.split(' ').next().is_some_and(|t| t.ends_with("/events")))
        .map(|l| json(l.split_once(' ').unwrap().1)["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), (1..=n_events as i64).collect::<Vec<_>>(), "the backlog, gapless");
    // A subscriber that was offline after seq 5 fills its gap through the API.
    let (mut server, _) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    let (code, so, se) = labctl_at(&url, &acme_token, &["watch", &run, "--after", "5", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let rest: Vec<i64> = so.lines().map(|l| json(l)["seq"].as_i64().unwrap()).collect();
    assert_eq!(rest, (6..=n_events as i64).collect::<Vec<_>>());
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
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

/// The embedded broker `labd serve` runs by default: the same isolation and delivery checks as
/// on Mosquitto, with credentials from `labctl token create`; a revoked token's connection is
/// cut off.
#[test]
fn the_embedded_broker_keeps_tenants_apart_and_delivers() {
    let dir = fresh_dir("embedded-mqtt");
    let api_port = free_port();
    let data = dir.join("data");
    let config = dir.join("labd.toml");
    let text_config = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:{api_port}\"\nmqtt_port = 0\ntime_scale = 0.001\n",
        data.display().to_string()
    );
    std::fs::write(&config, text_config).unwrap();
    let (mut server, seen) = start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    let port = mqtt_port_of(&seen);
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let url = format!("http://127.0.0.1:{api_port}");
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"));
    let (mut creds, mut tenant_ids, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    for t in ["acme", "globex"] {
        let tenant = json(&labctl_at(&url, &admin, &["tenant", "add", t, "--format", "json"]).1);
        tenant_ids.push(tenant["id"].as_str().unwrap().to_string());
        let c = json(&labctl_at(&url, &admin, &["token", "create", "--tenant", t, "--format", "json"]).1);
        assert_eq!(c["mqtt"]["port"].as_u64(), Some(u64::from(port)), "{c}");
        creds.push((
            c["mqtt"]["username"].as_str().unwrap().to_string(),
            c["mqtt"]["password"].as_str().unwrap().to_string(),
        ));
        tokens.push((c["token"].as_str().unwrap().to_string(), c["principal"].as_str().unwrap().to_string()));
    }
    // No wait: a token's MQTT identity works as soon as `token create` returns.
    let runtime_pw = std::fs::read_to_string(data.join("mqtt-runtime.password")).unwrap().trim().to_string();
    check_mqtt_isolation(port, &runtime_pw, &creds, &tenant_ids);

    let tech = json(&labctl_at(&url, &admin, &["token", "create", "--role", "technician", "--format", "json"]).1);
    let tech_token = tech["token"].as_str().unwrap().to_string();
    let tech_creds = (tech["mqtt"]["username"].as_str().unwrap(), tech["mqtt"]["password"].as_str().unwrap());
    let mut tech_sub = mqtt_listen(port, tech_creds.0, tech_creds.1, "lab/v1/site/#");
    let mut acme_sub = mqtt_listen(port, &creds[0].0, &creds[0].1, "#");
    let mut globex_sub = mqtt_listen(port, &creds[1].0, &creds[1].1, "#");
    let file = root().join("protocols/examples/serial-dilution.yaml");
    let (code, so, se) =
        labctl_at(&url, &tokens[0].0, &["submit", file.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run = json(so.lines().next().unwrap())["run"]["id"].as_str().unwrap().to_string();
    let n_events = so.lines().count() - 1;
    let (code, _, se) = labctl_at(&url, &tech_token, &["maintenance", "reader2", "on", "--reason", "lamp change"]);
    assert_eq!(code, 0, "{se}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (acme_got, globex_got) = (mqtt_collect(&mut acme_sub), mqtt_collect(&mut globex_sub));
    check_mqtt_delivery(&acme_got, &globex_got, &run, n_events, &tenant_ids[0]);
    assert!(!acme_got.contains("lab/v1/site"), "tenants do not see the site's topics: {acme_got}");
    // Technicians hear that the runtime is online (retained) and that reader2 went into maintenance.
    let tech_got = mqtt_collect(&mut tech_sub);
    let site_line = |suffix: &str| tech_got.lines().find(|l| l.split(' ').next().is_some_and(|t| t.ends_with(suffix)));
    let online = site_line("/runtime/status").unwrap_or_else(|| panic!("{tech_got}"));
    assert!(online.contains("\"online\""), "{online}");
    let reader2 = site_line("/devices/reader2/status").unwrap_or_else(|| panic!("{tech_got}"));
    assert!(reader2.contains("\"maintenance\"") && reader2.contains("lamp change"), "{reader2}");
    assert!(!tech_got.contains(&run), "run data is the tenant's, not the site's: {tech_got}");

    // Revoking acme's token takes its MQTT identity with it.
    assert_eq!(labctl_at(&url, &admin, &["token", "revoke", &tokens[0].1]).0, 0);
    let o = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", &creds[0].0, "-P", &creds[0].1, "-t", "#", "-W", "2"])
        .output()
        .unwrap();
    assert!(o.status.code() != Some(0) && o.stdout.is_empty(), "a revoked identity cannot connect");
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
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
fn serve_with(name: &str, extra: &str, launcher: &[&str]) -> (Reap, u16, String, String, PathBuf) {
    let dir = fresh_dir(name);
    let api_port = free_port();
    let data = dir.join("data");
    let config = dir.join("labd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{api_port}\"\nmqtt_port = 0\ntime_scale = 0.001\nconsole_listen = \"off\"\n{extra}",
            data.display().to_string()
        ),
    )
    .unwrap();
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

/// The embedded broker under pressure: clients of MQTT 5 and 3.1 get a CONNACK refusal in their
/// own version; one identity gets at most its share of connections and the broker at most its
/// total, each past it refused with "server unavailable"; out of file handles, the accept loop
/// waits instead of spinning, and serves again once handles are free.
#[test]
fn the_embedded_broker_refuses_what_it_cannot_serve_and_never_spins() {
    use std::io::{Read, Write};
    let _machine = heavy();
    let (mut server, port, admin, url, dir) =
        serve_with("broker-limits", "mqtt_max_connections = 8\nmqtt_max_connections_per_identity = 2\n", &[]);
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"));
    json(&labctl_at(&url, &admin, &["tenant", "add", "acme", "--format", "json"]).1);
    let creds = |_: ()| {
        let c = json(&labctl_at(&url, &admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1);
        (c["mqtt"]["username"].as_str().unwrap().to_string(), c["mqtt"]["password"].as_str().unwrap().to_string())
    };
    // Other versions of MQTT, answered in their own.
    let refusal = |connect: &[u8], want: usize| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        c.write_all(connect).unwrap();
        let mut ack = vec![0u8; want];
        c.read_exact(&mut ack).unwrap();
        ack
    };
    let v5 = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'x'];
    assert_eq!(refusal(&v5, 5), [0x20, 0x03, 0x00, 0x84, 0x00], "MQTT 5: unsupported protocol version");
    let v31 = [0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 1, b'x'];
    assert_eq!(refusal(&v31, 4), [0x20, 0x02, 0x00, 0x01], "MQTT 3.1: unacceptable protocol version");
    // Two connections of one token; the third is refused; another token still connects.
    let (user, pass) = creds(());
    let (a, _keep_a) = mqtt_connect_raw(port, &user, &pass);
    let (b, _keep_b) = mqtt_connect_raw(port, &user, &pass);
    assert_eq!((a, b), (0, 0), "within its share");
    assert_eq!(mqtt_connect_raw(port, &user, &pass).0, 3, "a third connection of one identity: server unavailable");
    let (other_user, other_pass) = creds(());
    let (c, _keep_c) = mqtt_connect_raw(port, &other_user, &other_pass);
    assert_eq!(c, 0, "another identity is not held back by the first");
    // The total: 8 connections, signed in or not (three are, plus the runtime's own relay).
    let idle: Vec<std::net::TcpStream> =
        (0..4).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (full, _) = mqtt_connect_raw(port, &other_user, &other_pass);
    assert_eq!(full, 3, "past the total: server unavailable");
    drop(idle);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(mqtt_connect_raw(port, &other_user, &other_pass).0, 0, "room again once they closed");
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);

    // Out of file handles: labd limited to 96, 150 connections opened at it.
    let (server, port, admin, url, dir) = serve_with("broker-fds", "", &["prlimit", "--nofile=96:96"]);
    let pid = server.0.id();
    let flood: Vec<std::net::TcpStream> =
        (0..150).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(used < 1.0, "labd used {used:.2} CPU seconds in 3 s while out of file handles: the accept loop spins");
    drop(flood);
    json(&labctl_at(&url, &admin, &["tenant", "add", "acme", "--format", "json"]).1);
    let c = json(&labctl_at(&url, &admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        // The half-open connections it had accepted time out after 10 s; then it serves again.
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && mqtt_connect_raw(port, c["mqtt"]["username"].as_str().unwrap(), c["mqtt"]["password"].as_str().unwrap())
                .0
                == 0;
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < until, "the broker did not serve again once handles were free");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
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

/// A GET on labd's console API with a bearer token; returns the status code and the body.
fn console_get(base: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
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
    _server: Reap,
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
        std::fs::write(conf.join("labd.toml"), format!("site = {:?}\n", conf.join("lab.toml").display().to_string()))
            .unwrap();
        args.extend(["--config".into(), conf.join("labd.toml").into_os_string()]);
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (server, seen) = start_labd(&args, &root());
    let console = seen
        .lines()
        .find_map(|l| l.strip_prefix("labd: console on "))
        .unwrap_or_else(|| panic!("labd says where its console is: {seen}"))
        .trim()
        .to_string();
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap().trim().to_string();
    let mqtt_port = mqtt_port_of(&seen);
    Lab { _server: server, url: format!("http://{listen}"), console, admin, dir, mqtt_port }
}

impl Lab {
    fn ctl(&self, token: &str, args: &[&str]) -> (i32, String, String) {
        labctl_at(&self.url, token, args)
    }

    fn json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let (code, so, se) = self.ctl(token, args);
        assert_eq!(code, 0, "labctl {args:?}: {so}{se}");
        serde_json::from_str(so.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {so}"))
    }

    /// A new tenant and a scientist's token for it.
    fn tenant(&self, name: &str) -> String {
        self.json(&self.admin, &["tenant", "add", name, "--format", "json"]);
        self.json(&self.admin, &["token", "create", "--tenant", name, "--format", "json"])["token"]
            .as_str()
            .unwrap()
            .to_string()
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

/// `labd demo` runs to completion: three tenants' six runs succeed, the summary adds up, the
/// results are where it says, and it told the visitor how to open the console and watch MQTT.
#[test]
fn labd_demo_runs_to_completion_and_sums_up() {
    let _machine = heavy();
    let dir = std::env::temp_dir().join(format!("lw-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["demo", "--time-scale", "0.0002", "--console", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the demo exits 0 when every run succeeded\n{so}\n{se}");
    assert!(so.contains("6 of 6 succeeded"), "{so}");
    assert!(so.contains("mosquitto_sub -h 127.0.0.1 -p ") && so.contains("-t 'lab/v1/t/"), "an MQTT line: {so}");
    assert!(so.contains("console:   http://127.0.0.1:"), "the console URL: {so}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["runs"].as_u64(), summary["succeeded"].as_u64()), (Some(6), Some(6)), "{summary}");
    // The growth curve alone takes 12 h 35 min of device time: nothing finishes sooner.
    let makespan = summary["makespan_s"].as_f64().unwrap();
    assert!((12.0 * 3600.0 + 35.0 * 60.0..48.0 * 3600.0).contains(&makespan), "makespan {makespan}");
    let tenants = summary["tenants"].as_object().unwrap();
    assert_eq!(tenants.len(), 3);
    for (name, t) in tenants {
        let turnaround = t["turnaround_s"].as_f64().unwrap();
        assert!(turnaround > 0.0 && turnaround <= makespan * 1.05 + 600.0, "{name}: {t} vs makespan {makespan}");
    }
    let utilisation = summary["utilisation"].as_object().unwrap();
    assert!(utilisation.values().all(|u| (0.0..=1.0).contains(&u.as_f64().unwrap())), "{summary}");
    assert!(utilisation["lh1"].as_f64().unwrap() > 0.0 && utilisation["inc1"].as_f64().unwrap() > 0.0);
    let csvs = std::fs::read_dir(dir.join("results")).unwrap().count();
    assert!(csvs >= 3, "one CSV per run that measured something: {csvs}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The technician console in Debian's Chromium (playwright-core): the page loads, instruments
/// appear, the Gantt chart draws tasks, an intervention is resolved from the page, maintenance
/// is toggled, and a scientist cannot see another tenant's run or name. Screenshots are kept
/// in target/console-screenshots.
#[test]
fn the_console_works_in_chromium() {
    let _machine = heavy();
    let script = root().join("tests/browser/console.mjs");
    let ready =
        Path::new("/usr/bin/chromium").exists() && root().join("tests/browser/node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
            "browser tests are required but Chromium or playwright-core is missing: run scripts/peers"
        );
        eprintln!("skipped: no /usr/bin/chromium or tests/browser/node_modules (scripts/peers installs them)");
        return;
    }
    let lab = serve_lab("console", "0.001");
    let (acme, globex) = (lab.tenant("acme"), lab.tenant("globex"));
    let tech = lab.json(&lab.admin, &["token", "create", "--role", "technician", "--format", "json"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    // PCR setup ends with a manual step: the lab waits for a technician.
    let acme_run = lab.submit(&acme, "pcr-setup.yaml");
    let globex_run = lab.submit(&globex, "serial-dilution.yaml");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let intervention = loop {
        let (_, so, _) = lab.ctl(&tech, &["interventions", "--format", "json"]);
        if let Some(id) = items(&so)
            .into_iter()
            .find(|i| i["run"] == acme_run.as_str())
            .and_then(|i| i["id"].as_str().map(String::from))
        {
            break id;
        }
        assert!(std::time::Instant::now() < until, "no intervention for the manual step: {so}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // The JSON API keeps the gRPC rules: no token, no data; a scientist gets no instruments.
    assert_eq!(console_get(&lab.console, "/api/runs", "nonsense").0, 401);
    let (code, body) = console_get(&lab.console, "/api/runs", "tökén");
    assert!(code == 401 && body.contains("not plain text"), "a header that is not ASCII is named: {code} {body}");
    assert_eq!(console_get(&lab.console, "/api/instruments", &acme).0, 403);
    let (code, body) = console_get(&lab.console, "/api/runs", &acme);
    assert!(code == 200 && body.contains(&acme_run) && !body.contains(&globex_run), "{code} {body}");
    let shots = root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .args([&lab.console, &tech, &acme, &acme_run, &globex_run, "globex"])
        .arg(&shots)
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the console test in Chromium failed:\n{so}\n{se}");
    eprintln!("console in Chromium: {so}");
    // What the page did is what the lab knows: the intervention was resolved as done.
    let (_, all, _) = lab.ctl(&tech, &["interventions", "--all", "--format", "json"]);
    let resolved =
        items(&all).into_iter().find(|i| i["id"] == intervention.as_str()).unwrap_or_else(|| panic!("{all}"));
    assert_eq!(resolved["state"], "done", "{resolved}");
    lab.wait_final(&acme, &[&acme_run], 120);
    for png in ["console-technician.png", "console-resolved.png", "console-scientist.png"] {
        assert!(std::fs::metadata(shots.join(png)).map(|m| m.len() > 10_000).unwrap_or(false), "{png} saved");
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// `labctl simulate` with 50 tenants in virtual time: every scenario is planned without a
/// constraint broken (it checks itself with the scheduler's validator), the numbers hang
/// together, and sharing makes a run cheaper for the operator.
#[test]
fn simulate_fifty_tenants_in_virtual_time() {
    let _machine = heavy();
    let out_dir = std::env::temp_dir().join(format!("lw-capacity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let workload = root().join("sites/workload.toml");
    let out = labctl(&[
        "simulate",
        "--workload",
        workload.to_str().unwrap(),
        "--tenants",
        "1",
        "10",
        "50",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    eprintln!("{se}");
    let reports: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 3);
    for r in reports {
        let (runs, tenants) = (r["runs"].as_u64().unwrap(), r["tenants"].as_u64().unwrap());
        assert_eq!(runs, tenants * 4, "the workload submits four runs per tenant");
        assert!(r["makespan_s"].as_f64().unwrap() >= r["lower_bound_s"].as_f64().unwrap() - 1e-6, "{r}");
        for u in r["utilisation"].as_array().unwrap() {
            assert!((0.0..=1.0 + 1e-9).contains(&u["fraction"].as_f64().unwrap()), "{u}");
        }
        let per = r["per_tenant"].as_array().unwrap();
        assert_eq!(per.len() as u64, tenants);
        assert!(per.iter().all(|t| t["mean_slowdown"].as_f64().unwrap() >= 1.0 - 1e-6), "{r}");
    }
    let cost = |i: usize| reports[i]["site_cost_per_run"].as_f64().unwrap();
    assert!(cost(1) < cost(0) * 0.6, "ten tenants share the fixed cost: {} vs {}", cost(1), cost(0));
    let gantt = std::fs::read_to_string(out_dir.join("gantt.svg")).unwrap();
    assert!(gantt.matches("<rect").count() > 200 * 4, "a bar per task and move");
    assert!(std::fs::read_to_string(out_dir.join("cost-curve.svg")).unwrap().contains("<polyline"));
    assert!(std::fs::read_to_string(out_dir.join("report.md")).unwrap().contains("| 50 | 200 |"));
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// `simulate --seed`: the same seed gives the same report, byte for byte, however loaded the
/// machine is (budgets are counted in candidate plans, not in time).
#[test]
fn simulate_with_a_seed_repeats_itself() {
    let workload = root().join("sites/workload.toml");
    let report = |n: usize| {
        let dir = fresh_dir(&format!("seeded-{n}"));
        let out = labctl(&[
            "simulate",
            "--workload",
            workload.to_str().unwrap(),
            "--tenants",
            "2",
            "10",
            "--seed",
            "11",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let files = ["report.json", "report.md", "gantt.svg"].map(|f| std::fs::read_to_string(dir.join(f)).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        files
    };
    let (a, b) = (report(1), report(2));
    assert!(a[1].contains("with seed 11"), "{}", a[1]);
    assert_eq!(a, b, "two runs with one seed differ");
}

/// The capacity simulation and a run through the live executor (real simulated instruments
/// over their wires, scale 0.01) agree within 5% on makespan and mean turnaround. (Turnaround
/// once came out 26% apart under CI load: the executor had split the six concurrent submissions
/// into a first plan and repairs; it now plans a burst at an idle lab together, as the
/// simulation does.)
#[test]
fn simulate_matches_the_live_executor_within_five_percent() {
    let _machine = quiet_machine();
    let dir = fresh_dir("simlive");
    let examples = root().join("protocols/examples");
    let workload = dir.join("workload.toml");
    std::fs::write(
        &workload,
        format!(
            "[[submit]]\nprotocol = {:?}\n[[submit]]\nprotocol = {:?}\n",
            examples.join("serial-dilution.yaml"),
            examples.join("normalisation.yaml")
        ),
    )
    .unwrap();
    let site = labware::Site::sim().unwrap();
    let w = labd::capacity::Workload::load(&workload, &site).unwrap();
    let sim = labd::capacity::simulate(&site, &w, 3).unwrap();
    let first = sim.bars.iter().map(|b| b.start_s).fold(f64::INFINITY, f64::min);
    let sim_makespan = sim.makespan_s - first;
    let sim_turnaround = sim.per_tenant.iter().map(|t| t.mean_turnaround_s).sum::<f64>() / 3.0;

    let scale = 0.01;
    let lab = serve_lab("simlive", "0.01");
    let tokens: Vec<String> = ["t1", "t2", "t3"].iter().map(|t| lab.tenant(t)).collect();
    let lab_ref = &lab;
    let runs: Vec<String> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for t in &tokens {
            for f in ["serial-dilution.yaml", "normalisation.yaml"] {
                hs.push(s.spawn(move || lab_ref.submit(t, f)));
            }
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: Vec<&str> = runs.iter().map(String::as_str).collect();
    lab.wait_final(&lab.admin, &ids, 300);
    let (code, body) = console_get(&lab.console, "/api/schedule", &lab.admin);
    assert_eq!(code, 200, "{body}");
    let schedule: serde_json::Value = serde_json::from_str(&body).unwrap();
    let slots = schedule["slots"].as_array().unwrap();
    let started = slots.iter().filter_map(|s| s["started_ms"].as_i64()).filter(|&t| t > 0).min().unwrap();
    let end_of = |run: Option<&str>| {
        slots
            .iter()
            .filter(|s| run.is_none_or(|r| s["run_id"] == r))
            .filter_map(|s| s["finished_ms"].as_i64())
            .max()
            .unwrap()
    };
    let device = |ms: i64| (ms - started) as f64 / 1000.0 / scale;
    let live_makespan = device(end_of(None));
    let live_turnaround = runs.iter().map(|r| device(end_of(Some(r)))).sum::<f64>() / runs.len() as f64;
    // The simulation's mean is over tenants of their mean over runs; with two runs each, the same.
    let dev = |a: f64, b: f64| (a - b).abs() / b;
    eprintln!(
        "makespan: simulated {sim_makespan:.0} s, live {live_makespan:.0} s ({:+.1}%); mean turnaround: simulated {sim_turnaround:.0} s, live {live_turnaround:.0} s ({:+.1}%)",
        100.0 * (live_makespan - sim_makespan) / sim_makespan,
        100.0 * (live_turnaround - sim_turnaround) / sim_turnaround
    );
    // Why the live plan moved, so a deviation can be explained.
    for (run, token) in runs.iter().zip(tokens.iter().flat_map(|t| [t, t])) {
        let (_, so, _) = lab.ctl(token, &["watch", run, "--format", "json"]);
        for e in so.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
            if e["kind"] == "rescheduled" {
                eprintln!("{run}: rescheduled {}", e["payload"]);
            }
        }
    }
    assert!(dev(live_makespan, sim_makespan) <= 0.05, "makespan differs by more than 5%");
    assert!(dev(live_turnaround, sim_turnaround) <= 0.05, "mean turnaround differs by more than 5%");
    let _ = std::fs::remove_dir_all(&lab.dir);
    let _ = std::fs::remove_dir_all(&dir);
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
        .replace("Move the sealed", &format!("CONFIDENTIAL {CANARY} move the sealed"));
    assert!(text.matches(CANARY).count() > 10, "{text}");
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

/// A manual step nobody has done yet does not stall the lab: once it runs past its planned end
/// the plan is repaired around it, another tenant's run that needs the same arms completes
/// meanwhile, and the waiting run is told why its end moved.
///
/// It is also the canary isolation test: acme's protocol carries a canary in every free-text
/// place and in its idempotency key; its run overruns and goes to intervention, a second one is
/// cancelled, and globex's ELISA, whose manual steps need the lab's one technician, is re-planned
/// because of acme's overrun. Every byte globex can read — its `watch` events, MQTT on `#`, API
/// replies and errors, the console's JSON — holds neither the canary nor any of acme's ids.
#[test]
fn an_overrunning_manual_step_does_not_stall_other_tenants() {
    let site =
        std::fs::read_to_string(root().join("sites/sim.toml")).unwrap().replace("technicians = 2", "technicians = 1");
    let lab = serve_lab_on("overrun", "0.001", Some(&site));
    let (acme, _) = lab.tenant_with_mqtt("acme");
    let (globex, globex_mqtt) = lab.tenant_with_mqtt("globex");
    let mut globex_sub = mqtt_listen(lab.mqtt_port, &globex_mqtt.0, &globex_mqtt.1, "#");
    let canary = canary_protocol(&lab.dir);
    let acme_run = lab.submit_file(&acme, &canary, &["--key", &format!("{CANARY}-key-1")]);
    let globex_run = lab.submit(&globex, "serial-dilution.yaml");
    let globex_elisa = lab.submit(&globex, "elisa.yaml");
    let globex_watch = watch_lines(&lab, &globex, &globex_run);
    let elisa_watch = watch_lines(&lab, &globex, &globex_elisa);
    let acme_watch = watch_lines(&lab, &acme, &acme_run);
    let cancelled = lab.submit_file(&acme, &canary, &["--key", &format!("{CANARY}-key-2")]);
    assert_eq!(lab.ctl(&acme, &["cancel", &cancelled]).0, 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let intervention = loop {
        let (_, so, _) = lab.ctl(&lab.admin, &["interventions", "--format", "json"]);
        if let Some(id) = items(&so)
            .into_iter()
            .find(|i| i["run"] == acme_run.as_str())
            .and_then(|i| i["id"].as_str().map(String::from))
        {
            break id;
        }
        assert!(std::time::Instant::now() < until, "no intervention for the manual step: {so}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Nobody does the manual step. Once it runs past its planned end, acme hears why its run's
    // end moved (in its own words); globex's run finishes anyway.
    let told = loop {
        match acme_watch.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) if l.contains("\"rescheduled\"") && l.contains(&format!("`manual: CONFIDENTIAL {CANARY}")) => {
                break l
            }
            Ok(_) => {}
            Err(e) => panic!("acme was not told that the manual step overran ({e})"),
        }
    };
    eprintln!("{told}");
    // A watch opened with a token that is then revoked ends within a second.
    let spare = lab.json(&lab.admin, &["token", "create", "--tenant", "acme", "--format", "json"]);
    let mut spare_watch = Reap(
        Command::new(env!("CARGO_BIN_EXE_labctl"))
            .args(["--url", &lab.url, "--token", spare["token"].as_str().unwrap(), "watch", &acme_run])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(spare_watch.0.try_wait().unwrap().is_none(), "the watch streams while acme's run waits");
    assert_eq!(lab.ctl(&lab.admin, &["token", "revoke", spare["principal"].as_str().unwrap()]).0, 0);
    let revoked = std::time::Instant::now();
    while spare_watch.0.try_wait().unwrap().is_none() {
        assert!(revoked.elapsed() < std::time::Duration::from_secs(2), "the watch outlived its revoked token");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut why = String::new();
    std::io::Read::read_to_string(spare_watch.0.stderr.as_mut().unwrap(), &mut why).unwrap();
    assert!(why.contains("revoked"), "the watch says why it ended: {why}");
    lab.wait_final(&globex, &[&globex_run], 120);
    // The ELISA's manual steps wait for the technician acme's step holds: globex hears that its
    // end moved because of a manual step of another run, and nothing more of it.
    let mut elisa_events = Vec::new();
    let moved = loop {
        match elisa_watch.recv_timeout(std::time::Duration::from_secs(60)) {
            // Acme's step as globex hears it, or (the leak this guards against) in acme's words.
            Ok(l) if l.contains("\"rescheduled\"") && (l.contains("manual step") || l.contains(CANARY)) => break l,
            Ok(l) => elisa_events.push(l),
            Err(e) => panic!("globex's ELISA was not re-planned around acme's overrun ({e}): {elisa_events:?}"),
        }
    };
    eprintln!("{moved}");
    assert!(
        moved.contains("a manual step of another run is taking longer") && !moved.contains("CONFIDENTIAL"),
        "globex is told that something moved its run, never what: {moved}"
    );
    elisa_events.push(moved);
    let (_, open, _) = lab.ctl(&lab.admin, &["interventions", "--format", "json"]);
    assert!(open.contains(&intervention), "the manual step is still open while globex finished: {open}");
    let (code, _, se) = lab.ctl(&lab.admin, &["resolve", &intervention, "done"]);
    assert_eq!(code, 0, "{se}");
    // Now the technician does globex's manual steps as they come.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        for i in items(&lab.ctl(&lab.admin, &["interventions", "--format", "json"]).1) {
            assert_eq!(lab.ctl(&lab.admin, &["resolve", i["id"].as_str().unwrap(), "done"]).0, 0);
        }
        let runs = items(&lab.ctl(&lab.admin, &["runs", "--format", "json"]).1);
        let ended = |id: &str| runs.iter().any(|r| r["id"] == id && r["state"] == "succeeded");
        if ended(&globex_elisa) && ended(&acme_run) {
            break;
        }
        assert!(runs.iter().all(|r| r["state"] != "failed"), "{runs:?}");
        assert!(std::time::Instant::now() < until, "runs did not finish: {runs:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    while let Ok(l) = elisa_watch.recv_timeout(std::time::Duration::from_secs(30)) {
        elisa_events.push(l); // the watch ends with the run
    }
    // Results of a run that did not succeed say so, and why, and exit 1 (not `[]` and 0).
    let (code, so, se) = lab.ctl(&acme, &["results", &cancelled, "--format", "json"]);
    assert_eq!(code, 1, "{so}{se}");
    assert!(se.contains("cancelled") && se.contains("no read happened"), "{se}");
    // Clock times where people look: the run's times, the planned end in events.
    let mine = items(&lab.ctl(&acme, &["runs", "--format", "json"]).1);
    let run = mine.iter().find(|r| r["id"] == acme_run.as_str()).unwrap();
    for field in ["submitted_at", "started_at", "finished_at"] {
        let at = run[field].as_str().unwrap_or_else(|| panic!("{field}: {run}"));
        assert!(at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "{field} is RFC 3339: {at}");
    }
    assert!(told.contains("\"planned_end_at\":\"20") && told.contains("\"was_at\""), "{told}");
    // The manual step waited far past its 2 minutes for a technician; acme is billed 2 minutes.
    let usage = items(&lab.ctl(&lab.admin, &["usage", "--tenant", "acme", "--format", "json"]).1);
    let technician = usage.iter().find(|l| l["instrument_class"] == "technician").expect("the manual step is billed");
    let hours = technician["device_hours"].as_f64().unwrap();
    assert!((hours - 2.0 / 60.0).abs() < 1e-6, "acme billed {hours} technician-hours for a 2-minute step: {usage:?}");

    // Everything globex could read.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut events = Vec::new();
    while let Ok(l) = globex_watch.recv_timeout(std::time::Duration::from_secs(30)) {
        events.push(l); // the watch ends with the run
    }
    assert!(events.iter().any(|l| l.contains("\"succeeded\"")), "globex's watch saw its run end: {events:?}");
    let rescheduled = events.iter().filter(|l| l.contains("\"rescheduled\"")).count();
    eprintln!("globex's run was re-planned {rescheduled} time(s) while acme's ran");
    seen.push(("watch".into(), events.join("\n")));
    seen.push(("watch ELISA".into(), elisa_events.join("\n")));
    seen.push(("mqtt #".into(), mqtt_collect(&mut globex_sub)));
    for args in [
        &["runs", "--format", "json"][..],
        &["runs"],
        &["watch", &globex_run, "--format", "json"],
        &["results", &globex_run, "--format", "json"],
        &["results", &globex_run, "--format", "csv"],
        &["watch", &globex_elisa, "--format", "json"],
        &["schedule", "--format", "json"],
        &["schedule"],
        &["interventions", "--all", "--format", "json"],
        &["watch", &acme_run],
        &["results", &acme_run],
        &["cancel", &acme_run],
        &["resolve", &intervention, "done"],
        &["instruments"],
        &["usage"],
    ] {
        let (code, so, se) = lab.ctl(&globex, args);
        seen.push((format!("labctl {args:?} (exit {code})"), format!("{so}{se}")));
    }
    for path in ["/api/whoami", "/api/runs", "/api/schedule", "/api/interventions"] {
        let (code, body) = console_get(&lab.console, path, &globex);
        seen.push((format!("console {path} ({code})"), body));
    }
    // The console answers only to its own (loopback) names, with its security headers.
    let own = lab.console.trim_start_matches("http://").trim_end_matches('/').to_string();
    let page = console_raw(&lab.console, "/", &own).to_ascii_lowercase();
    assert!(page.starts_with("http/1.1 200"), "{page}");
    for h in ["content-security-policy: default-src 'self'", "x-frame-options: deny", "x-content-type-options: nosniff"]
    {
        assert!(page.contains(h), "{h} missing: {page}");
    }
    let port = own.rsplit_once(':').unwrap().1;
    let rebound = console_raw(&lab.console, "/api/runs", &format!("attacker.example:{port}"));
    assert!(rebound.starts_with("HTTP/1.1 421"), "another host name is refused: {rebound}");
    let (_, acme_tenant, _) = lab.ctl(&lab.admin, &["runs", "--format", "json"]);
    let acme_tenant = items(&acme_tenant)
        .into_iter()
        .find(|r| r["id"] == acme_run.as_str())
        .and_then(|r| r["tenant"].as_str().map(String::from))
        .unwrap();
    // Asking for acme's run by id is answered as for an id that does not exist: the reply may
    // repeat the id globex sent, nothing more of it.
    let probes = [acme_run.as_str(), intervention.as_str()];
    for (place, text) in &seen {
        let lower = text.to_lowercase();
        assert!(!lower.contains(CANARY), "the canary reached globex through {place}: {text}");
        assert!(!text.contains("CONFIDENTIAL"), "acme's manual-step text reached globex through {place}: {text}");
        assert!(
            !text.contains(&acme_tenant) && !text.contains("acme"),
            "acme's tenant reached globex through {place}: {text}"
        );
        if !probes.iter().any(|p| place.contains(p)) {
            for id in [&acme_run, &cancelled, &intervention] {
                assert!(!text.contains(id.as_str()), "acme's id {id} reached globex through {place}: {text}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
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
