//! Telemetry over MQTT: Mosquitto and the embedded broker keep tenants apart, deliver, and refuse what they cannot serve.

use super::*;

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
