//! What an operator sees of labd: its log as structured JSON lines with the fields a log
//! collector filters on, and never a secret in it.

use super::*;

#[test]
fn the_log_is_structured_json_and_the_metrics_move_when_a_run_executes() {
    let dir = fresh_dir("json-log");
    // The spans go to an OpenTelemetry collector's receiver too, when the peers are installed.
    let collector = peers_python().map(|py| SpanSink::start(&py));
    let otlp = collector.as_ref().map(|c| format!("otlp_endpoint = \"http://127.0.0.1:{}\"\n", c.port));
    let extra = format!("log_format = \"json\"\nlog_level = \"info\"\n{}", otlp.unwrap_or_default());
    let (config, data, api_port) = labd_toml(&dir, "127.0.0.1:0", &extra);
    let log = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_labd"));
    cmd.args(["serve", "--config"]).arg(&config).current_dir(&dir).stderr(std::fs::File::create(&log).unwrap());
    let (mut server, seen) = listening(&mut cmd);
    let console = console_of(&seen);
    let metric = |text: &str, name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
    };
    let (code, before) = console_get(&console, "/metrics", "");
    assert_eq!(code, 200, "{before}");
    let url = format!("http://127.0.0.1:{api_port}");
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap().trim().to_string();
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"));
    json(&labctl_at(&url, &admin, &["tenant", "add", "acme", "--format", "json"]).1);
    let token = json(&labctl_at(&url, &admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1);
    let scientist = token["token"].as_str().unwrap().to_string();
    let mqtt_password = token["mqtt"]["password"].as_str().unwrap().to_string();
    let example = root().join("protocols/examples/serial-dilution.yaml");
    let (code, so, se) =
        labctl_at(&url, &scientist, &["submit", example.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run = json(so.lines().next().unwrap())["run"]["id"].as_str().unwrap().to_string();
    let (_, after) = console_get(&console, "/metrics", "");
    for (name, grew) in [
        ("labwright_runs_submitted_total ", 1.0),
        ("labwright_runs_ended_total{state=\"succeeded\"} ", 1.0),
        ("labwright_interventions_opened_total ", 0.0),
    ] {
        assert_eq!(metric(&after, name) - metric(&before, name), grew, "{name}: {after}");
    }
    // Every liquid-handling command of the plan, once (86 with lh3's 8-channel head).
    let plan = compile_example("serial-dilution.yaml");
    let planned: usize = plan
        .tasks
        .iter()
        .filter(|t| t.class == Some(labware::InstrumentClass::LiquidHandler))
        .map(|t| t.commands.len())
        .sum();
    let commands = "labwright_commands_total{family=\"liquid handler\",outcome=\"ok\"} ";
    assert_eq!(metric(&after, commands), planned as f64, "a serial dilution's commands are counted: {after}");
    assert_eq!(
        metric(&after, "labwright_command_seconds_count{family=\"liquid handler\"} "),
        planned as f64,
        "{after}"
    );
    assert_eq!(metric(&after, "labwright_instruments "), 13.0, "{after}");
    assert!(metric(&after, "labwright_mqtt_connections ") >= 1.0, "the runtime's relay is connected: {after}");
    assert!(
        !after.contains(&run) && !after.contains("acme") && !after.contains("ten_"),
        "metrics name no tenant or run"
    );
    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(server.0.wait().unwrap().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message && l["run"] == run.as_str())
            .unwrap_or_else(|| panic!("no `{message}` event for {run} in the log:\n{text}"))
            .clone()
    };
    let submitted = find("run submitted");
    assert!(submitted["tenant"].as_str().is_some_and(|t| t.starts_with("ten_")), "{submitted}");
    assert_eq!(submitted["level"], "INFO");
    assert!(find("run started")["planned_end_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    let ended = find("run ended");
    assert_eq!((ended["state"].as_str(), ended["tenant"].clone()), (Some("succeeded"), submitted["tenant"].clone()));
    for (what, secret) in
        [("the admin token", &admin), ("a scientist's token", &scientist), ("an MQTT password", &mqtt_password)]
    {
        assert!(!text.contains(secret.as_str()), "{what} is in the log");
    }
    // A graceful stop sent every span: the run's tasks with their run, tenant and instrument,
    // each liquid-handling command inside its task's span.
    if let Some(collector) = collector {
        let spans = collector.spans();
        let of_run: Vec<&serde_json::Value> = spans.iter().filter(|s| s["attributes"]["run"] == run.as_str()).collect();
        assert!(of_run.iter().all(|s| s["service"] == "labd"), "{of_run:?}");
        let tasks: Vec<&&serde_json::Value> = of_run.iter().filter(|s| s["name"] == "task").collect();
        assert_eq!(tasks.len(), plan.tasks.len(), "one span per task: {of_run:?}");
        assert!(tasks.iter().all(|t| t["attributes"]["tenant"] == submitted["tenant"]), "{tasks:?}");
        let on_handlers: Vec<&str> = tasks
            .iter()
            .filter(|t| t["attributes"]["instrument"].as_str().is_some_and(|i| i.starts_with("lh")))
            .filter_map(|t| t["span"].as_str())
            .collect();
        let commands = of_run
            .iter()
            .filter(|s| s["name"] == "command" && on_handlers.contains(&s["parent"].as_str().unwrap_or("")))
            .count();
        assert_eq!(commands, planned, "each liquid-handling command is a span inside its task's");
        assert!(of_run.iter().any(|s| s["name"] == "plate move"), "{of_run:?}");
        assert!(!spans.iter().any(|s| s.to_string().contains(&scientist)), "no token in a span");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// oteltest's OTLP/gRPC receiver (`tests/peers/otlp_sink.py`), collecting the spans it prints.
struct SpanSink {
    child: Reap,
    port: u16,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl SpanSink {
    fn start(py: &std::path::Path) -> SpanSink {
        use std::io::BufRead;
        let port = free_port();
        let mut child = Reap(
            Command::new(py)
                .arg(root().join("tests/peers/otlp_sink.py"))
                .arg(port.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "ready", "the OTLP receiver did not start");
        let lines = std::thread::spawn(move || out.lines().map_while(Result::ok).collect());
        SpanSink { child, port, lines }
    }

    /// Every span received so far; stops the receiver.
    fn spans(mut self) -> Vec<serde_json::Value> {
        self.child.0.kill().unwrap();
        self.child.0.wait().unwrap();
        let lines = self.lines.join().unwrap();
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }
}

/// The config the systemd unit and the container image use is one labd accepts, and it logs JSON.
#[test]
fn the_deployment_config_is_valid() {
    let c = labd::serve::Config::load(&root().join("deploy/labd.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.log_format, labd::logging::LogFormat::Json);
    assert_eq!(c.data_dir, std::path::PathBuf::from("/var/lib/labwright"));
    let unit = std::fs::read_to_string(root().join("deploy/labd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/labd serve --config /etc/labwright/labd.toml"));
    let image = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(image.contains("USER labwright") && image.contains("HEALTHCHECK") && image.contains("/healthz"));
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// labd started and stopped 50 times in one process leaves no file handle, port or task behind:
/// every listener, simulator, database handle and broker connection goes with its stop. The
/// count is the process's own, so the loop runs in a process of its own (this test binary again,
/// running only this test): other tests of the binary open sockets meanwhile.
#[test]
fn fifty_starts_and_stops_leave_nothing_behind() {
    const CHILD: &str = "LW_FD_COUNT_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let _machine = heavy();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "observability::fifty_starts_and_stops_leave_nothing_behind", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "the counting process:\n{text}");
        eprintln!("{}", text.lines().filter(|l| l.contains("open file descriptors")).collect::<Vec<_>>().join("\n"));
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = fresh_dir("restarts");
        let port = free_port();
        let config = labd::serve::Config {
            data_dir: dir.join("data"),
            listen: format!("127.0.0.1:{port}"),
            time_scale: 0.001,
            mqtt_port: 0,
            console_listen: "127.0.0.1:0".into(),
            ..labd::serve::Config::default()
        };
        // One start first: what a process keeps once (the runtime's threads, lazily built state).
        labd::serve::start(config.clone()).await.unwrap().stop().await.unwrap();
        let before = open_fds();
        for k in 0..50 {
            let running = labd::serve::start(config.clone()).await.unwrap_or_else(|e| panic!("start {k}: {e}"));
            running.stop().await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let after = open_fds();
        eprintln!("open file descriptors: {before} after the first start and stop, {after} after 50 more");
        if after > before + 2 {
            let mut kinds = std::collections::BTreeMap::<String, usize>::new();
            for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
                let t = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
                let kind = t.split(':').next().unwrap_or("").split('/').take(3).collect::<Vec<_>>().join("/");
                *kinds.entry(kind).or_default() += 1;
            }
            eprintln!("open now, by kind: {kinds:?}");
        }
        assert!(after <= before + 2, "50 starts and stops leaked {} file descriptors", after - before);
        // The API's port is free again.
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the API port is free after the stop");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
