//! The PostgreSQL store and several labd nodes on one database.

use labd::store::{conformance, postgres::PostgresStore, Store};
use std::sync::Arc;

/// The development and CI database server (trust auth).
const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database of our own on the server, dropped when this goes out of scope. `None` (the test
/// skips) when no server answers, unless `LABWRIGHT_REQUIRE_PEERS=1`.
pub struct Scratch {
    pub url: String,
    name: String,
}

impl Scratch {
    pub fn new(tag: &str) -> Option<Scratch> {
        let mut admin = match ::postgres::Client::connect(&format!("{SERVER}/postgres"), ::postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
                    "PostgreSQL tests are required but {SERVER} does not answer: {e}"
                );
                eprintln!("skipped: no PostgreSQL at {SERVER} ({e})");
                return None;
            }
        };
        let name = format!("lw_{tag}_{}_{}", std::process::id(), super::free_port());
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Some(Scratch { url: format!("{SERVER}/{name}"), name })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut admin) = ::postgres::Client::connect(&format!("{SERVER}/postgres"), ::postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// The PostgreSQL backend passes the same conformance suite as SQLite, each check on a fresh
/// database; two stores on one database (two nodes) see each other's writes at once.
#[test]
fn postgres_store_passes_the_conformance_suite() {
    let _machine = super::heavy();
    let mut scratches = Vec::new();
    let made = std::cell::RefCell::new(&mut scratches);
    let Some(probe) = Scratch::new("probe") else { return };
    drop(probe);
    conformance::run_all(&|| {
        let s = Scratch::new("conf").unwrap();
        let store = Arc::new(PostgresStore::connect(&s.url).unwrap()) as Arc<dyn Store>;
        made.borrow_mut().push(s);
        store
    });
    drop(scratches);

    let s = Scratch::new("twonodes").unwrap();
    let (a, b) = (PostgresStore::connect(&s.url).unwrap(), PostgresStore::connect(&s.url).unwrap());
    let t = a.create_tenant("acme", 1.0).unwrap();
    assert_eq!(b.tenant_by_name("acme").unwrap().id, t.id);
    assert!(b.create_tenant("acme", 1.0).is_err(), "the name is taken on the shared database");
    // Events of one run written through both nodes stay gapless.
    let run = conformance::submit(&a, &t.id, "k1");
    let run_id = run.id.as_str();
    std::thread::scope(|sc| {
        for store in [&a, &b] {
            sc.spawn(move || {
                for _ in 0..50 {
                    store.append_event(run_id, "progress", "{}").unwrap();
                }
            });
        }
    });
    let seqs: Vec<i64> = a.events(None, &run.id, 0).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
    let positions: Vec<i64> = b.outbox_pending(1000).unwrap().iter().map(|o| o.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(positions.len(), 101);
}

/// Two nodes on one database admit runs one at a time between them: acme's well holds 100 µL
/// and two runs that each draw 60 µL arrive at once, one at each node. One is accepted and the
/// other refused naming the well, every time (five rounds), as on one node.
#[test]
fn two_nodes_never_both_take_the_last_of_a_well() {
    let Some(s) = Scratch::new("admit") else { return };
    let (a, b) = (PostgresStore::connect(&s.url).unwrap(), PostgresStore::connect(&s.url).unwrap());
    let site = labware::Site::sim().unwrap();
    let lib = labware::Library::shipped();
    let acme = a.create_tenant("acme", 1.0).unwrap();
    for round in 0..5 {
        let barcode = format!("PL-{round}");
        let well = labd::store::WellContent {
            well: "A1".into(),
            sample: "S-1".into(),
            liquid: "serum".into(),
            volume_ul: 100.0,
        };
        let shipped = labd::store::NewContainer {
            barcode: barcode.clone(),
            load_name: "corning_96_wellplate_360ul_flat".into(),
            wells: vec![well],
            sources: Vec::new(),
        };
        a.receive_containers(&acme.id, &[shipped], "bench", "tech", None).unwrap();
        let text = format!(
            "labwright: 1\nname: draw\nlabware:\n  samples: {{ container: {barcode} }}\n  assay: {{ type: corning_96_wellplate_360ul_flat }}\n  tips: {{ type: opentrons_96_tiprack_300ul }}\nsteps:\n  - transfer: {{ from: samples/A1, to: assay/A1, volume: 60 uL }}\n"
        );
        let held = labd::held::Held::of(a.containers(Some(&acme.id)).unwrap());
        let c = protocols::compile_with(
            &protocols::SourceFile::new("draw.yaml", text),
            protocols::Format::Auto,
            &site,
            &lib,
            &held,
        );
        let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let barrier = std::sync::Barrier::new(2);
        let answers: Vec<Result<(labd::store::Run, bool), String>> = std::thread::scope(|sc| {
            let runs: Vec<_> = [&a, &b]
                .into_iter()
                .enumerate()
                .map(|(node, store)| {
                    let (plan, barrier, site, tenant) = (&plan, &barrier, &site, &acme.id);
                    sc.spawn(move || {
                        let new = labd::store::NewRun {
                            tenant_id: tenant.clone(),
                            idempotency_key: format!("r{round}-n{node}"),
                            name: "draw".into(),
                            source: String::new(),
                            plan_json: serde_json::to_string(plan).unwrap(),
                            priority: 0,
                            class: labware::ServiceClass::Standard,
                        };
                        barrier.wait();
                        labd::material::admit(store, plan, &new, site).unwrap()
                    })
                })
                .collect();
            runs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let accepted = answers.iter().filter(|r| r.is_ok()).count();
        let said: Vec<String> =
            answers.iter().map(|r| r.as_ref().map_or_else(|why| why.clone(), |(run, _)| run.id.clone())).collect();
        assert_eq!(accepted, 1, "round {round}: one of the two runs fits: {said:?}");
        let refused = answers.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(refused.contains(&format!("container {barcode} well A1 holds 100 µL")), "{refused}");
    }
}

/// A bad database URL is a sentence naming it (without its password), not a panic.
#[test]
fn a_bad_database_url_is_a_clear_error() {
    let e = PostgresStore::connect_with("postgres://lab:secret@127.0.0.1:1/lab", std::time::Duration::from_secs(1))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(!e.contains("secret"), "{e}");
    let e = PostgresStore::connect("not a url ===").map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("database URL"), "{e}");
}

/// A labd node of a multi-node lab, its output in a file.
struct Node {
    proc: super::Reap,
    log: std::path::PathBuf,
    url: String,
    data: std::path::PathBuf,
}

impl Node {
    /// Starts a node; `mqtt_port`: the shared external broker's; `sims`: the `site` and
    /// `sim_bench` lines of simulators outside the nodes (empty: each node simulates the
    /// instruments of the cells it drives).
    fn start_with(
        dir: &std::path::Path,
        name: &str,
        db: &str,
        cells: &[&str],
        mqtt_port: u16,
        lease_ms: u64,
        sims: &str,
    ) -> Node {
        let site = super::root().join("sites/two-cells.toml");
        let site = if sims.is_empty() { format!("site = {site:?}\n") } else { sims.to_string() };
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let listen = format!("127.0.0.1:{}", super::free_port());
        let cells = cells.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
        let config = format!(
            "data_dir = {data:?}\nlisten = \"{listen}\"\n{site}time_scale = {SCALE}\ndatabase = \"{db}\"\nnode = \"{name}\"\ncells = [{cells}]\nlease_ms = {lease_ms}\nconsole_listen = \"off\"\nmqtt_broker = \"external\"\nmqtt_port = {mqtt_port}\nmqtt_publish = true\n"
        );
        // Every node publishes as the one runtime user the broker knows.
        std::fs::write(data.join("mqtt-runtime.password"), "runtime-password-of-this-lab\n").unwrap();
        let config_file = data.join("labd.toml");
        std::fs::write(&config_file, config).unwrap();
        let log = data.join("out.log");
        let out = std::fs::File::create(&log).unwrap();
        let proc = super::Reap(
            std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
                .arg("serve")
                .arg("--config")
                .arg(&config_file)
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap(),
        );
        let node = Node { proc, log, url: format!("http://{listen}"), data };
        node.wait_for("gRPC API on", 60);
        node
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the node printed `what`; returns how long that took.
    fn wait_for(&self, what: &str, secs: u64) -> std::time::Duration {
        let t = std::time::Instant::now();
        while !self.output().contains(what) {
            assert!(t.elapsed().as_secs() < secs, "no `{what}` within {secs} s:\n{}", self.output());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        t.elapsed()
    }

    fn admin(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token")).unwrap().trim().to_string()
    }

    fn json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        let (code, so, se) = super::labctl_at(&self.url, token, args);
        assert_eq!(code, 0, "labctl {args:?} at {}: {so}{se}", self.url);
        serde_json::from_str(so.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {so}"))
    }

    fn submit(&self, token: &str, example: &str, key: &str) -> String {
        let file = super::root().join("protocols/examples").join(example);
        let args = ["submit", file.to_str().unwrap(), "--key", key, "--format", "json"];
        self.json(token, &args)["run"]["id"].as_str().unwrap().to_string()
    }
}

const LEASE_MS: u64 = 3_000;
const SCALE: &str = "0.004";

fn state(node: &Node, token: &str, run: &str) -> String {
    let all = node.json(token, &["runs", "--format", "json"]);
    let found = all.as_array().and_then(|a| a.iter().find(|r| r["id"] == run).cloned());
    found.and_then(|r| r["state"].as_str().map(String::from)).unwrap_or_default()
}

/// Three labd processes on one PostgreSQL, the instruments (simulators in their own process) on
/// the network: node 1 drives cell a, node 2 cell b, node 3 stands by for both. Two tenants
/// submit to any node; runs are placed on a cell that can run them; each tenant sees only its
/// own. Node 1 is killed (-9) mid-run: node 3 takes cell a over within the lease time plus 5 s,
/// finishes what node 1 had under way (asking the instruments about any command in doubt) and
/// runs the rest. Node 2 is paused past its lease: node 3 takes cell b's lease but cannot open
/// its serial instruments, which the paused process still holds (the OS's exclusive lock), and
/// stands by; node 2, resumed, learns it lost the lease, touches nothing (no make-safe), takes
/// the cell again and finishes what it had under way the same way. Every run succeeds, none is
/// lost, every run's events are gapless, and no command unsafe to repeat was sent twice.
#[test]
fn three_nodes_two_cells_a_standby_a_kill_and_a_pause() {
    let _machine = super::heavy();
    let Some(db) = Scratch::new("nodes") else { return };
    let dir = super::fresh_dir("nodes");
    // The instruments are simulators in a process of their own, on the network as real ones
    // are, reached by whichever node drives their cell; the nodes share one external Mosquitto.
    let logs = dir.join("logs");
    let sims = super::sim_process(&dir, "sites/two-cells.toml", SCALE.parse().unwrap(), &logs);
    let shared = format!("site = {:?}\nsim_bench = {:?}\n", sims.site.display().to_string(), sims.bench);
    let mqtt_port = super::free_port();
    let start = |name: &str, cells: &[&str]| Node::start_with(&dir, name, &db.url, cells, mqtt_port, LEASE_MS, &shared);
    let mut n1 = start("n1", &["a"]);
    n1.wait_for("driving it lease=cell a", 30);
    let n2 = start("n2", &["b"]);
    n2.wait_for("driving it lease=cell b", 30);
    let n3 = start("n3", &["a", "b"]);

    let admin = n1.admin();
    let acme_id = n2.json(&admin, &["tenant", "add", "acme", "--format", "json"])["id"].as_str().unwrap().to_string();
    n3.json(&admin, &["tenant", "add", "globex", "--format", "json"]);
    let token = |t: &str| {
        let c = n1.json(&admin, &["token", "create", "--tenant", t, "--format", "json"]);
        let mqtt =
            (c["mqtt"]["username"].as_str().unwrap().to_string(), c["mqtt"]["password"].as_str().unwrap().to_string());
        (c["token"].as_str().unwrap().to_string(), mqtt)
    };
    let ((acme, acme_mqtt), (globex, globex_mqtt)) = (token("acme"), token("globex"));
    // A node shows the instruments of the cells it drives.
    let shown = super::labctl_at(&n2.url, &admin, &["instruments", "--format", "json"]).1;
    assert!(shown.contains("\"lh_b\"") && shown.contains("\"arm_b\"") && !shown.contains("\"lh_a\""), "{shown}");

    // The broker, configured from the shared database; a subscriber per tenant.
    let broker_dir = dir.join("broker");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["mqtt-config", "--config"])
        .arg(n1.data.join("labd.toml"))
        .arg("--out")
        .arg(&broker_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", super::text(&o.stderr));
    let _broker = super::mosquitto(&broker_dir, mqtt_port);
    let mut acme_sub =
        super::mqtt_listen(mqtt_port, &acme_mqtt.0, &acme_mqtt.1, &labd::telemetry::tenant_subtree(&acme_id));
    let mut globex_sub = super::mqtt_listen(mqtt_port, &globex_mqtt.0, &globex_mqtt.1, "#");

    let mut runs: Vec<(String, String)> = Vec::new(); // (token, run)
    let plans: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, protocols::plan::RunPlan>>> =
        Default::default();
    let two_cells =
        labware::Site::from_toml(&std::fs::read_to_string(super::root().join("sites/two-cells.toml")).unwrap())
            .unwrap();
    for (i, (tok, node)) in [(&acme, &n1), (&globex, &n2), (&acme, &n3), (&globex, &n1)].into_iter().enumerate() {
        for (p, key) in [("serial-dilution.yaml", format!("sd{i}")), ("normalisation.yaml", format!("norm{i}"))] {
            let run = node.submit(tok, p, &key);
            plans.lock().unwrap().insert(run.clone(), super::compile_example_on(p, &two_cells));
            runs.push((tok.clone(), run));
        }
    }
    // A technician at the bench: a command no instrument can settle after a takeover is theirs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let technician = super::technician_at_the_bench(&n3.url, &admin, plans.clone(), &logs, stop.clone());
    // Each tenant sees only its own, on every node.
    for node in [&n1, &n2, &n3] {
        let mine = node.json(&acme, &["runs", "--format", "json"]);
        let ids: Vec<&str> = mine.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 4, "acme sees its four runs on {}", node.url);
        assert!(runs.iter().filter(|(t, _)| *t == globex).all(|(_, r)| !ids.contains(&r.as_str())));
    }

    // Kill node 1 while cell a is busy.
    let store = PostgresStore::connect(&db.url).unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !store.runs(None, &[labd::store::RunState::Running]).unwrap().iter().any(|r| r.cell.as_deref() == Some("a")) {
        assert!(std::time::Instant::now() < until, "nothing ran on cell a:\n{}", n1.output());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    n1.proc.0.kill().unwrap();
    let took = n3.wait_for("driving it lease=cell a", 30);
    assert!(
        took.as_millis() as u64 <= LEASE_MS + 5_000,
        "the standby took cell a over after {took:?} (lease {LEASE_MS} ms)"
    );

    // Pause node 2 past its lease, then let it go on.
    let pid = n2.proc.0.id().to_string();
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    signal("-STOP");
    let took = n3.wait_for("driving it lease=cell b", 30);
    signal("-CONT");
    n2.wait_for("lost its lease; standing by lease=cell b", 30);
    assert!(took.as_millis() as u64 <= LEASE_MS + 5_000, "cell b taken over after {took:?}");

    // Every accepted run ends, and succeeds: what was under way on a node that died or froze
    // is finished by the standby.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(240);
    loop {
        let states: Vec<String> = runs.iter().map(|(t, r)| state(&n3, t, r)).collect();
        if states.iter().all(|s| ["succeeded", "failed", "cancelled"].contains(&s.as_str())) {
            break;
        }
        assert!(std::time::Instant::now() < until, "runs did not finish: {states:?}\n{}", n3.output());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for (run, what, choice) in technician.join().unwrap() {
        eprintln!("asked about {run}: {what} → {choice}");
        if what.starts_with("labd restarted while") {
            assert!(what.contains("cannot settle it"), "the intervention says why: {what}");
        }
    }
    let all = store.runs(None, &[]).unwrap();
    assert_eq!(all.len(), runs.len(), "no run lost, none made up");
    let mut failed = 0;
    for r in &all {
        assert!(r.cell.is_some(), "{} was placed on a cell", r.id);
        if r.name.contains("normalisation") || r.name.contains("normalization") {
            assert_eq!(r.cell.as_deref(), Some("b"), "only cell b can seal");
        }
        if r.state != labd::store::RunState::Succeeded {
            failed += 1;
            eprintln!("{} ended {}: {:?}", r.id, r.state, r.reason);
        }
        let seqs: Vec<i64> = store.events(None, &r.id, 0).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless events of {}", r.id);
        let mut sent = std::collections::BTreeSet::new();
        for a in store.attempts(&r.id).unwrap() {
            // (Plate moves are journaled under task -1 without an index of their own.)
            // (A command recovery found never happened was not sent.)
            if !a.intent.repeatable && a.intent.task_id >= 0 && a.outcome.as_deref() != Some("not_done") {
                assert!(
                    sent.insert((a.intent.task_id, a.intent.command_index)),
                    "{}: command {} of task {} sent twice",
                    r.id,
                    a.intent.command_index,
                    a.intent.task_id
                );
            }
        }
    }
    assert_eq!(failed, 0, "every run succeeds through the kill and the pause:\n{}", n3.output());
    drop(sims.proc);

    // Telemetry: one outbox, relayed by one node at a time (the relay moved if node 1 had it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !store.outbox_pending(1).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the outbox was never drained:\n{}", n3.output());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (acme_got, globex_got) = (super::mqtt_collect(&mut acme_sub), super::mqtt_collect(&mut globex_sub));
    assert!(!globex_got.contains(&acme_id), "globex saw nothing of acme");
    let mut seen: std::collections::BTreeMap<(String, i64), String> = Default::default();
    let mut duplicates = 0;
    for line in acme_got.lines().filter(|l| l.split(' ').next().is_some_and(|t| t.ends_with("/events"))) {
        let payload = line.split_once(' ').unwrap().1;
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        let key = (v["run"].as_str().unwrap().to_string(), v["seq"].as_i64().unwrap());
        if let Some(earlier) = seen.insert(key.clone(), payload.to_string()) {
            duplicates += 1;
            assert_eq!(earlier, payload, "a duplicate of {key:?} is the same message");
        }
    }
    for r in all.iter().filter(|r| r.tenant_id == acme_id) {
        let n = store.events(None, &r.id, 0).unwrap().len() as i64;
        let got: Vec<i64> = seen.keys().filter(|(run, _)| *run == r.id).map(|k| k.1).collect();
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "every event of {} reached acme over MQTT", r.id);
    }
    eprintln!(
        "{} runs, {failed} failed by recovery; takeover of cell b after {took:?}; {} events to acme, {duplicates} duplicates",
        all.len(),
        seen.len()
    );
}

/// A PostgreSQL server of the test's own (initdb, pg_ctl as the `postgres` user), so that it can
/// be restarted mid-run without disturbing anyone else.
struct OwnServer {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnServer {
    fn start(dir: &std::path::Path) -> Option<OwnServer> {
        let initdb = std::path::Path::new("/usr/local/bin/initdb");
        if !initdb.exists() || std::process::Command::new("runuser").arg("--help").output().is_err() {
            assert!(
                std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
                "PostgreSQL tests are required but initdb or runuser is missing"
            );
            return None;
        }
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = |args: &[&str]| {
            let o = std::process::Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
            assert!(o.status.success(), "{args:?}: {}{}", super::text(&o.stdout), super::text(&o.stderr));
        };
        let chown = std::process::Command::new("chown").args(["-R", "postgres"]).arg(&dir).status().unwrap();
        assert!(chown.success());
        let data = dir.join("data");
        as_postgres(&["initdb", "--auth=trust", "--username=postgres", "-D", data.to_str().unwrap()]);
        let server = OwnServer { dir, port: super::free_port() };
        server.ctl("start");
        Some(server)
    }

    fn ctl(&self, what: &str) {
        let data = self.dir.join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("log");
        let o = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()])
            .args(["-o", &opts, "-m", "fast", "-w", what])
            .output()
            .unwrap();
        assert!(o.status.success(), "pg_ctl {what}: {}{}", super::text(&o.stdout), super::text(&o.stderr));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_ctl", "-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// PostgreSQL restarts while runs execute: the node rides it out (transactions whose commit
/// was not yet sent run again on a new connection, the lease outlasts the outage) and every run
/// succeeds, events gapless.
#[test]
fn a_postgresql_restart_mid_run_loses_nothing() {
    let _machine = super::heavy();
    let dir = super::fresh_dir("pg-restart");
    let Some(pg) = OwnServer::start(&dir) else { return };
    let node = Node::start_with(&dir, "solo", &pg.url(), &["a", "b"], super::free_port(), 10_000, "");
    node.wait_for("driving it lease=cell b", 30);
    let admin = node.admin();
    node.json(&admin, &["tenant", "add", "acme", "--format", "json"]);
    let token = node.json(&admin, &["token", "create", "--tenant", "acme", "--format", "json"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let runs: Vec<String> = (0..4)
        .map(|i| {
            let example = if i % 2 == 0 { "serial-dilution.yaml" } else { "normalisation.yaml" };
            node.submit(&token, example, &format!("r{i}"))
        })
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !runs.iter().any(|r| state(&node, &token, r) == "running") {
        assert!(std::time::Instant::now() < until, "nothing started:\n{}", node.output());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    pg.ctl("restart");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let states: Vec<String> = runs.iter().map(|r| state(&node, &token, r)).collect();
        if states.iter().all(|s| s == "succeeded") {
            break;
        }
        if let Some(i) = states.iter().position(|s| s == "failed") {
            let why = PostgresStore::connect(&pg.url()).unwrap().run(None, &runs[i]).unwrap().reason;
            panic!("run {} failed after the restart: {why:?}\n{}", runs[i], node.output());
        }
        assert!(std::time::Instant::now() < until, "after the restart: {states:?}\n{}", node.output());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let store = PostgresStore::connect(&pg.url()).unwrap();
    for r in &runs {
        let seqs: Vec<i64> = store.events(None, r, 0).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gapless events of {r}");
    }
    assert!(!node.output().contains("lost its lease"), "{}", node.output());
    eprintln!("{}", node.output());
}

/// On a site of work cells, a protocol that needs instruments of two cells (here a liquid
/// handler in one, the reader in the other) is refused at submission, naming what each cell
/// lacks; the same node also runs cells on SQLite.
#[test]
fn a_run_no_single_cell_can_run_is_refused_at_submission() {
    let dir = super::fresh_dir("split-cells");
    let two = std::fs::read_to_string(super::root().join("sites/two-cells.toml")).unwrap();
    // Move reader_a into cell b's neighbourhood: cell a keeps its liquid handler, no reader.
    let split = two
        .replace("reach = [\"hotel_a\", \"lh_a\", \"reader_a\"]", "reach = [\"hotel_a\", \"lh_a\"]")
        .replace(
            "reach = [\"hotel_b\", \"lh_b\", \"reader_b\", \"sealer_b\"]",
            "reach = [\"hotel_b\", \"reader_a\", \"reader_b\", \"sealer_b\"]",
        )
        .replace(
            "members = [\"hotel_a\", \"lh_a\", \"reader_a\", \"arm_a\"]",
            "members = [\"hotel_a\", \"lh_a\", \"arm_a\"]",
        )
        .replace(
            "members = [\"hotel_b\", \"lh_b\", \"reader_b\", \"sealer_b\", \"arm_b\"]",
            "members = [\"hotel_b\", \"reader_a\", \"reader_b\", \"sealer_b\", \"arm_b\", \"lh_b\"]",
        );
    // lh_b stays in cell b but its arm no longer reaches it: b reads, a pipettes.
    let site = dir.join("split.toml");
    std::fs::write(&site, split).unwrap();
    let listen = format!("127.0.0.1:{}", super::free_port());
    let config = dir.join("labd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"{listen}\"\nsite = {site:?}\ntime_scale = 0.001\ncells = [\"a\", \"b\"]\nconsole_listen = \"off\"\nmqtt_port = 0\n",
            dir.join("data")
        ),
    )
    .unwrap();
    let (_node, seen) = super::start_labd(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()], &dir);
    assert!(seen.contains("gRPC API on"), "{seen}");
    let admin = std::fs::read_to_string(dir.join("data/admin.token")).unwrap().trim().to_string();
    let url = format!("http://{listen}");
    assert_eq!(super::labctl_at(&url, &admin, &["tenant", "add", "acme"]).0, 0);
    let token = super::labctl_at(&url, &admin, &["token", "create", "--tenant", "acme"]).1.trim().to_string();
    let file = super::root().join("protocols/examples/serial-dilution.yaml");
    let (code, so, se) = super::labctl_at(&url, &token, &["submit", file.to_str().unwrap()]);
    assert_ne!(code, 0, "{so}");
    assert!(se.contains("no single work cell") && se.contains("cell a:") && se.contains("cell b:"), "{se}");
}
