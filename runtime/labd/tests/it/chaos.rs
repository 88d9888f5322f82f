//! A bad day for the shared lab, all at once: while six runs of two tenants execute, the
//! database is held locked for a minute, the broker is flooded past labd's file handles, a
//! hostile tenant submits a compile bomb and a 5 MB name and has a task fail mid-way on the
//! liquid handlers (a tip left on), and a watching token is revoked. Afterwards every run of the
//! well-behaved tenant has succeeded, labd's memory is back within 2× of its start, readiness
//! went false and true at the right moments, and nothing of the hostile tenant reached the other.

use super::*;

/// A protocol in the hostile tenant's words (the canary in every name): a 100 µL transfer with
/// the 300 µL pipette, then a 500 µL one with the 1000 µL pipette, whose aspirate (plunger to
/// 10.75 mm) the simulators are told to fail once: the task fails mid-way with a tip on.
fn hostile_protocol(dir: &Path) -> PathBuf {
    let text = format!(
        "labwright: 1\nname: {CANARY} hostile assay\nliquids:\n  {CANARY}_buffer: {CANARY} buffer\nlabware:\n  {CANARY}_res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: {{ {CANARY}_buffer: 12 mL }}\n  {CANARY}_plate: {{ type: corning_96_wellplate_360ul_flat }}\n  {CANARY}_tips: {{ type: opentrons_96_tiprack_300ul }}\n  {CANARY}_big_tips: {{ type: opentrons_96_tiprack_1000ul }}\nsteps:\n  - transfer: {{ from: {CANARY}_res/A1, to: {CANARY}_plate/A1:A3, volume: 100 uL }}\n  - transfer: {{ from: {CANARY}_res/A1, to: {CANARY}_res/A2, volume: 500 uL }}\n"
    );
    let file = dir.join(format!("{CANARY}-hostile.yaml"));
    std::fs::write(&file, text).unwrap();
    file
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_bad_day_for_one_tenant_is_not_a_bad_day_for_the_lab() {
    let _machine = heavy();
    let dir = fresh_dir("chaos");
    // Each liquid handler fails the hostile 500 µL aspirate once; labd gets 256 file handles.
    let faults =
        "[sim_faults]\nlh1 = \"error_once=G0 B10.75:ERR_INJECTED\"\nlh2 = \"error_once=G0 B10.75:ERR_INJECTED\"\n";
    let (config, data, api_port) = labd_toml(&dir, "127.0.0.1:0", faults);
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=256:256", env!("CARGO_BIN_EXE_labd"), "serve", "--config"]).arg(&config).current_dir(&dir);
    let (server, seen) = listening(&mut cmd);
    let pid = server.0.id();
    let console = console_of(&seen);
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let lab = Lab {
        server,
        args: ["serve".into(), "--config".into(), config.clone().into_os_string()].into(),
        url: format!("http://127.0.0.1:{api_port}"),
        console,
        admin,
        dir: dir.clone(),
        mqtt_port: mqtt_port_of(&seen),
    };
    let ready = |want: bool, within: u64| {
        let began = std::time::Instant::now();
        loop {
            let (code, body) = console_get(&lab.console, "/readyz", "");
            if (code == 200) == want && grpc_serving(&lab.url) == want {
                return began.elapsed();
            }
            assert!(began.elapsed().as_secs() < within, "readiness is not {want} after {within} s: {code} {body}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    ready(true, 15);
    let (acme, acme_mqtt) = lab.tenant_with_mqtt("acme");
    let evil = lab.tenant("evil");
    let mut acme_sub = mqtt_listen(lab.mqtt_port, &acme_mqtt.0, &acme_mqtt.1, "#");

    // Six runs of two tenants.
    let hostile = hostile_protocol(&dir);
    let evil_runs: Vec<String> =
        (0..3).map(|k| lab.submit_file(&evil, &hostile, &["--key", &format!("{CANARY}-{k}")])).collect();
    let acme_runs = [
        lab.submit(&acme, "growth-curve.yaml"),
        lab.submit(&acme, "serial-dilution.yaml"),
        lab.submit(&acme, "serial-dilution.yaml"),
    ];
    let acme_watch = watch_lines(&lab, &acme, &acme_runs[0]);
    // Memory with the six runs under way, before anything hostile happens.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rss_start = rss_kib(pid);

    // The hostile tenant's bombs: refused quickly, and labd stays small.
    let bomb = dir.join("bomb.yaml");
    std::fs::write(
        &bomb,
        format!("labwright: 1\nname: {CANARY} bomb\nsteps:\n  - repeat: {{ times: 1000, steps: [ {{repeat: {{times: 1000, steps: [ {{repeat: {{times: 1000, steps: [ {{wait: 1 s}} ]}}}} ]}}}} ] }}\n"),
    )
    .unwrap();
    let (code, _, se) = lab.ctl(&evil, &["submit", bomb.to_str().unwrap()]);
    assert_ne!(code, 0, "the nested-repeat bomb is refused: {se}");
    let long_name = dir.join("long-name.yaml");
    let text = std::fs::read_to_string(root().join("protocols/examples/serial-dilution.yaml"))
        .unwrap()
        .replace("name: 96-well serial dilution", &format!("name: {CANARY}{}", "x".repeat(5_000_000)));
    std::fs::write(&long_name, text).unwrap();
    let (code, _, se) = lab.ctl(&evil, &["submit", long_name.to_str().unwrap()]);
    assert_ne!(code, 0, "a 5 MB name is refused");
    assert!(se.contains("P0112"), "{}", &se[..se.len().min(500)]);
    eprintln!("chaos: labd RSS {rss_start} KiB with six runs under way, {} KiB after the bombs", rss_kib(pid));

    // A watch whose token is revoked ends within a second or two.
    let spare = lab.json(&lab.admin, &["token", "create", "--tenant", "evil", "--format", "json"]);
    let mut spare_watch = Reap(
        Command::new(env!("CARGO_BIN_EXE_labctl"))
            .args(["--url", &lab.url, "--token", spare["token"].as_str().unwrap(), "watch", &evil_runs[2]])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(lab.ctl(&lab.admin, &["token", "revoke", spare["principal"].as_str().unwrap()]).0, 0);
    let revoked = std::time::Instant::now();
    while spare_watch.0.try_wait().unwrap().is_none() {
        assert!(revoked.elapsed() < std::time::Duration::from_secs(3), "the watch outlived its revoked token");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The broker flooded past labd's file handles: no spin (measured against the same 3 s of
    // running work without the flood), and the API keeps serving.
    let before = cpu_seconds(pid);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let baseline = cpu_seconds(pid) - before;
    let flood: Vec<std::net::TcpStream> =
        (0..400).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", lab.mqtt_port)).ok()).collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert_eq!(lab.ctl(&acme, &["runs"]).0, 0, "the API serves while the broker is flooded");
    drop(flood);
    assert!(used < baseline + 1.5, "labd used {used:.2} CPU seconds in 3 s while flooded ({baseline:.2} without)");

    // The growth curve has begun: another process holds the database for a minute.
    loop {
        let line = acme_watch.recv_timeout(std::time::Duration::from_secs(60)).expect("the growth curve begins");
        if line.contains("\"task_started\"") {
            break;
        }
    }
    let db = rusqlite::Connection::open(data.join("labd.sqlite")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let unready_after = ready(false, 15);
    std::thread::sleep(std::time::Duration::from_secs(60).saturating_sub(unready_after));
    assert_eq!(console_get(&lab.console, "/healthz", "").0, 200, "alive all along");
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let ready_after = ready(true, 15);
    eprintln!(
        "chaos: unready {:.1} s into the lock, ready {:.1} s after it",
        unready_after.as_secs_f64(),
        ready_after.as_secs_f64()
    );

    // Every run ends; the well-behaved tenant's all succeed; the hostile tenant's fail only
    // where its task was made to fail, and the liquid handlers serve on.
    let all: Vec<&str> = acme_runs.iter().chain(&evil_runs).map(String::as_str).collect();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let runs = loop {
        let runs = items(&lab.ctl(&lab.admin, &["runs", "--format", "json"]).1);
        let ended = |id: &str| {
            runs.iter().any(|r| {
                r["id"] == id && ["succeeded", "failed", "cancelled"].contains(&r["state"].as_str().unwrap_or(""))
            })
        };
        if all.iter().all(|id| ended(id)) {
            break runs;
        }
        assert!(std::time::Instant::now() < until, "runs did not end: {runs:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let state = |id: &str| runs.iter().find(|r| r["id"] == id).cloned().unwrap();
    for id in &acme_runs {
        assert_eq!(state(id)["state"], "succeeded", "{}", state(id));
    }
    let mut injected = 0;
    for id in &evil_runs {
        let r = state(id);
        if r["state"] == "failed" {
            assert!(r["reason"].as_str().unwrap_or("").contains("ERR_INJECTED"), "{r}");
            injected += 1;
        } else {
            assert_eq!(r["state"], "succeeded", "{r}");
        }
    }
    assert!(injected >= 1, "a hostile task failed mid-way: {runs:?}");
    let instruments = lab.ctl(&lab.admin, &["instruments", "--format", "json"]).1;
    assert!(!instruments.contains("needs attention"), "the liquid handlers were made safe: {instruments}");
    // One more run of the well-behaved tenant after it all.
    let after = lab.submit(&acme, "serial-dilution.yaml");
    lab.wait_final(&acme, &[&after], 120);
    assert_eq!(state_of(&lab, &acme, &after), "succeeded");

    let rss_end = rss_kib(pid);
    eprintln!("chaos: labd RSS {rss_start} KiB with six runs under way, {rss_end} KiB after it all; {injected} hostile task(s) failed mid-way");
    assert!(rss_end <= 2 * rss_start, "labd's memory is back within 2× of its start: {rss_start} → {rss_end} KiB");

    // Nothing of the hostile tenant reached the well-behaved one.
    let mut seen: Vec<(String, String)> = vec![("mqtt #".into(), mqtt_collect(&mut acme_sub))];
    let mut events = Vec::new();
    while let Ok(l) = acme_watch.recv_timeout(std::time::Duration::from_secs(30)) {
        events.push(l);
    }
    seen.push(("watch".into(), events.join("\n")));
    for args in [
        &["runs", "--format", "json"][..],
        &["schedule", "--format", "json"],
        &["interventions", "--all", "--format", "json"],
        &["instruments"],
        &["usage"],
    ] {
        let (code, so, se) = lab.ctl(&acme, args);
        seen.push((format!("labctl {args:?} (exit {code})"), format!("{so}{se}")));
    }
    for path in ["/api/runs", "/api/schedule", "/api/interventions", "/readyz"] {
        let (code, body) = console_get(&lab.console, path, &acme);
        seen.push((format!("console {path} ({code})"), body));
    }
    for (place, text) in &seen {
        assert!(!text.to_lowercase().contains(CANARY), "the canary reached acme through {place}: {text}");
        assert!(!text.contains("evil"), "the hostile tenant's name reached acme through {place}");
        for id in &evil_runs {
            assert!(!text.contains(id.as_str()), "a hostile run's id reached acme through {place}: {text}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn state_of(lab: &Lab, token: &str, run: &str) -> String {
    let runs = items(&lab.ctl(token, &["runs", "--format", "json"]).1);
    runs.iter().find(|r| r["id"] == run).and_then(|r| r["state"].as_str().map(String::from)).unwrap_or_default()
}
