//! `labd serve`: the store, the lab (simulated or real), the executor and the gRPC API in one
//! process.

use crate::api::{new_token, token_hash, Api, MAX_REQUEST_BYTES};
use crate::executor::{Executor, ExecutorConfig};
use crate::lab::Lab;
use crate::store::{postgres::PostgresStore, sqlite::SqliteStore, Role, Store};
use devices::TimeScale;
use protos::labwright::v1 as pb;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `labd.toml`. Every key is optional; unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the database and the admin token live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// gRPC address.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Site description; the shipped simulated site when absent.
    pub site: Option<PathBuf>,
    /// Device time per wall time for simulated instruments (1.0 real time).
    #[serde(default = "default_scale")]
    pub time_scale: f64,
    /// Simulated liquid handlers append every liquid movement to `<dir>/<id>.liquid.log`
    /// (tests and debugging: what the simulated instruments really did).
    pub sim_log_dir: Option<PathBuf>,
    /// Faults the simulated instruments inject (instrument id → spec, as `labd sim --faults`):
    /// `{ lh1 = "error_once=G0 B:ERR_INJECTED" }` fails one task mid-way. Tests and drills.
    #[serde(default)]
    pub sim_faults: std::collections::BTreeMap<String, String>,
    /// Seed of the simulated readers' noise: the same seed and plates give the same values.
    #[serde(default)]
    pub sim_seed: u64,
    /// Serve the API over TLS with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// `embedded` (default): labd runs the MQTT broker itself on `mqtt_host:mqtt_port`;
    /// `external`: a broker configured with `labd mqtt-config` (Mosquitto) listens there.
    #[serde(default)]
    pub mqtt_broker: MqttBroker,
    /// Where the broker listens and what tenants are told.
    #[serde(default = "default_mqtt_host")]
    pub mqtt_host: String,
    /// 1884 by default, so an embedded broker does not collide with a system Mosquitto on 1883.
    #[serde(default = "default_mqtt_port")]
    pub mqtt_port: u16,
    /// Publish run events, states and results as `labwright-runtime`. Default: on with the
    /// embedded broker, off with an external one until it is configured.
    pub mqtt_publish: Option<bool>,
    /// Connections the embedded broker keeps at once, signed in or not (1000): past it a client
    /// gets a CONNACK "server unavailable", and file handles are never exhausted by MQTT.
    #[serde(default = "default_mqtt_max_connections")]
    pub mqtt_max_connections: usize,
    /// Connections of one identity (one token) at once (50).
    #[serde(default = "default_mqtt_max_connections_per_identity")]
    pub mqtt_max_connections_per_identity: usize,
    /// Where the technician console (HTTP) listens; `"off"` for none. Loopback by default:
    /// put it behind a TLS proxy before opening it to a network.
    #[serde(default = "default_console_listen")]
    pub console_listen: String,
    /// Host names the console answers to besides loopback ones (`lab.example.org:8650`): a
    /// request naming another host is refused, which stops DNS rebinding. Empty on a
    /// non-loopback address: any host.
    #[serde(default)]
    pub console_hosts: Vec<String>,
    /// PostgreSQL for several nodes on one database (`postgres://user@host:5432/labwright`);
    /// SQLite in `data_dir` when absent.
    pub database: Option<String>,
    /// This node's name in cell leases; the host name and process id when absent.
    pub node: Option<String>,
    /// The site's work cells this node drives, or stands by for while another node drives
    /// them. Empty: every cell of the site.
    #[serde(default)]
    pub cells: Vec<String>,
    /// How long a cell's lease lasts unrenewed (ms): a standby takes over this long after the
    /// driving node died. Renewed every third of it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// What labd logs to stderr: `error`, `warn`, `info` (default), `debug`, `trace`, or a
    /// filter such as `info,labd::executor=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` (default) for people, `json` (one object per line) for a log collector.
    #[serde(default)]
    pub log_format: crate::logging::LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

fn default_lease_ms() -> u64 {
    10_000
}

fn default_console_listen() -> String {
    "127.0.0.1:8650".into()
}

/// Which MQTT broker tenants use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttBroker {
    #[default]
    Embedded,
    External,
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_max_connections() -> usize {
    crate::telemetry::broker::Limits::default().total
}

fn default_mqtt_max_connections_per_identity() -> usize {
    crate::telemetry::broker::Limits::default().per_identity
}

fn default_mqtt_port() -> u16 {
    1884
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("labd-data")
}
fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_scale() -> f64 {
    1.0
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            listen: default_listen(),
            site: None,
            time_scale: default_scale(),
            sim_log_dir: None,
            sim_faults: Default::default(),
            sim_seed: 0,
            tls_cert: None,
            tls_key: None,
            mqtt_broker: MqttBroker::Embedded,
            mqtt_host: default_mqtt_host(),
            mqtt_port: default_mqtt_port(),
            mqtt_publish: None,
            mqtt_max_connections: default_mqtt_max_connections(),
            mqtt_max_connections_per_identity: default_mqtt_max_connections_per_identity(),
            console_listen: default_console_listen(),
            console_hosts: Vec::new(),
            database: None,
            node: None,
            cells: Vec::new(),
            lease_ms: default_lease_ms(),
            log_level: default_log_level(),
            log_format: Default::default(),
        }
    }
}

impl Config {
    /// Reads and checks a config file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        let c: Config = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        c.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// The TLS identity (certificate chain, key) when TLS is configured.
    pub fn tls(&self) -> Result<Option<(String, String)>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => {
                let read = |key: &str, p: &Path| {
                    std::fs::read_to_string(p).map_err(|e| format!("{key} = {:?}: cannot read it: {e}", p.display()))
                };
                let (cert, key) = (read("tls_cert", c)?, read("tls_key", k)?);
                if !cert.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("tls_cert = {:?}: not a PEM certificate", c.display()));
                }
                if !key.contains("PRIVATE KEY-----") {
                    return Err(format!("tls_key = {:?}: not a PEM private key", k.display()));
                }
                Ok(Some((cert, key)))
            }
            (Some(_), None) => Err("tls_cert is set but tls_key is not: give both, or neither for plain gRPC".into()),
            (None, Some(_)) => Err("tls_key is set but tls_cert is not: give both, or neither for plain gRPC".into()),
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(format!("time_scale = {}: give a positive number (1.0 is real time)", self.time_scale));
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("listen = {:?}: give host:port, e.g. \"127.0.0.1:50051\"", self.listen))?;
        if self.mqtt_max_connections == 0 || self.mqtt_max_connections_per_identity == 0 {
            return Err("mqtt_max_connections and mqtt_max_connections_per_identity: give at least 1".into());
        }
        if !(1_000..=600_000).contains(&self.lease_ms) {
            return Err(format!("lease_ms = {}: give 1000 to 600000 milliseconds", self.lease_ms));
        }
        if let Some(url) = &self.database {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains("dbname=")) {
                return Err("database: give a PostgreSQL URL, e.g. \"postgres://labwright@db:5432/labwright\" (leave it out for SQLite in data_dir)".into());
            }
        }
        for (id, spec) in &self.sim_faults {
            devices::sim::Faults::parse(spec).map_err(|e| format!("sim_faults.{id}: {e}"))?;
        }
        if self.console_listen != "off" {
            self.console_listen.parse::<std::net::SocketAddr>().map_err(|_| {
                format!(
                    "console_listen = {:?}: give host:port, e.g. \"127.0.0.1:8650\", or \"off\"",
                    self.console_listen
                )
            })?;
        }
        Ok(())
    }
}

/// Starts everything; returns when SIGINT or SIGTERM arrives (after a graceful stop).
pub async fn serve(config: Config) -> Result<(), String> {
    let running = start(config).await?;
    crate::daemon::wait_for_stop().await;
    running.stop().await
}

/// A started `labd`: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    /// The gRPC API.
    pub grpc: std::net::SocketAddr,
    /// The console's URL, unless it is off.
    pub console: Option<String>,
    /// The MQTT broker tenants are told about (host, port).
    pub mqtt: (String, u16),
    /// The admin token, when this start created it (shown once).
    pub new_admin_token: Option<String>,
    /// The instruments, on one node (several nodes connect per cell, while driving it).
    pub lab: Option<Arc<Lab>>,
    pub board: Arc<crate::board::Board>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>, u64)>,
    api: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    /// Stops gracefully: the API first, then the executor (commands on instruments finish,
    /// up to 10 s), the console and the telemetry relay.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        let api = self.api.await.map_err(|e| e.to_string())?;
        for (what, task, secs) in self.tasks {
            if tokio::time::timeout(std::time::Duration::from_secs(secs), task).await.is_err() {
                tracing::warn!(task = what, within_s = secs, "did not stop in time");
            }
        }
        println!("labd: stopped");
        api
    }
}

/// Starts the store, the lab, the executor, the broker, the relay, the console and the API.
pub async fn start(config: Config) -> Result<Running, String> {
    config.check()?;
    let tls = config.tls()?;
    private_dir(&config.data_dir)?;
    let site = match &config.site {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read site {}: {e}", p.display()))?;
            labware::Site::from_toml(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => labware::Site::sim().map_err(|e| e.to_string())?,
    };
    // Bind first: a taken port fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| {
        format!("cannot listen on {} (listen in labd.toml): {e}; is another labd running?", config.listen)
    })?;
    let console_listener = match config.console_listen.as_str() {
        "off" => None,
        addr => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} for the console (console_listen in labd.toml, --console): {e}")
        })?),
    };
    let (store, wake) = open_store(&config).await?;
    // The embedded broker binds next: a taken MQTT port also stops the start here.
    let runtime_password = runtime_mqtt_password(&config.data_dir)?;
    let mut embedded_broker = None;
    let mqtt_addr = match config.mqtt_broker {
        MqttBroker::Embedded => {
            let hash = crate::telemetry::mosquitto::password_hash(&runtime_password)?;
            let (broker, addr) = crate::telemetry::broker::Broker::start(
                &format!("{}:{}", config.mqtt_host, config.mqtt_port),
                hash,
                crate::telemetry::broker::Limits {
                    total: config.mqtt_max_connections,
                    per_identity: config.mqtt_max_connections_per_identity,
                },
            )
            .await?;
            broker.set_identities(&store.mqtt_identities().map_err(|e| e.to_string())?);
            embedded_broker = Some(broker);
            (config.mqtt_host.clone(), addr.port())
        }
        MqttBroker::External => (config.mqtt_host.clone(), config.mqtt_port),
    };
    let publish = config.mqtt_publish.unwrap_or(config.mqtt_broker == MqttBroker::Embedded);
    let token_file = config.data_dir.join("admin.token");
    let mut new_admin_token = None;
    if !token_file.exists() {
        let token = new_token()?;
        store.create_principal(None, Role::Admin, &token_hash(&token), None).map_err(|e| e.to_string())?;
        write_secret(&token_file, &token)?;
        println!("admin token (shown once; also in {}): {token}", token_file.display());
        new_admin_token = Some(token);
    }
    let scale = TimeScale(config.time_scale);
    let stop = tokio::sync::watch::channel(false);
    let health = Arc::new(crate::health::Health::default());
    let mut tasks = Vec::new();
    if let Some(broker) = embedded_broker.clone() {
        tasks.push((
            "identity refresh",
            tokio::spawn(refresh_identities(broker.clone(), store.clone(), stop.1.clone())),
            1,
        ));
        let mut stopped = stop.1.clone();
        let broker_stop = async move {
            if stopped.wait_for(|s| *s).await.is_ok() {
                broker.stop();
            }
        };
        tasks.push(("MQTT broker", tokio::spawn(broker_stop), 1));
    }
    // Several nodes: one of them relays the shared outbox at a time.
    let mut relay_lease: Option<Leased> = None;
    // The instruments this node drives, for the API and the console.
    let connected = crate::lab::Connected::default();
    let (lab, board, all_sim) = if config.database.is_none() && config.cells.is_empty() {
        // One node: the whole site, every run.
        let (lab, all_sim) = connect_lab(&site, &config, scale).await?;
        let lab = Arc::new(lab);
        connected.add(lab.clone());
        let executor = Executor::new(store.clone(), lab.clone(), ExecutorConfig { scale, ..ExecutorConfig::default() });
        for run in executor.recover()? {
            tracing::warn!(run = %run, "run interrupted by the last stop; marked failed (see its events)");
            // Also in the start-up lines, for the person who restarted labd.
            println!("labd: run {run} was interrupted by the last stop and is marked failed (see its events)");
        }
        let board = executor.board();
        let exec_task = tokio::spawn(supervise(executor, health.clone(), stop.1.clone()));
        tasks.push(("executor", exec_task, 10));
        (Some(lab), board, all_sim)
    } else {
        // Several nodes: a keeper per cell drives it while holding its lease, else stands by.
        let cells = if config.cells.is_empty() { site.cell_ids() } else { config.cells.clone() };
        let node = config.node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let holder = format!("{node}/{}", &crate::store::new_id("n")[2..10]);
        let board = Arc::new(crate::board::Board::default());
        for cell in cells {
            let part = site.cell(&cell).map_err(|e| format!("cells: {e}"))?;
            let leased = Leased {
                store: store.clone(),
                name: cell.clone(),
                what: format!("cell {cell}"),
                holder: holder.clone(),
                lease_ms: config.lease_ms,
            };
            let cell_env = CellEnv {
                store: store.clone(),
                site: part,
                config: config.clone(),
                board: board.clone(),
                wake: wake.clone(),
                connected: connected.clone(),
            };
            let term = move |lease, stop| drive_cell(cell_env.clone(), lease, stop);
            tasks.push(("cell keeper", tokio::spawn(leased.keep(stop.1.clone(), term)), 15));
        }
        // Each cell keeper restarts its cell's executor with its lease; this node serves the
        // API whether it drives a cell or stands by.
        health.set_executor(Ok("running"));
        relay_lease = Some(Leased {
            store: store.clone(),
            name: RELAY_LEASE.into(),
            what: "telemetry relay".into(),
            holder,
            lease_ms: config.lease_ms,
        });
        (None, board, site.instruments.iter().all(|i| i.endpoint.starts_with("sim")))
    };
    if publish {
        let relay_config = crate::telemetry::relay::RelayConfig {
            host: mqtt_addr.0.clone(),
            port: mqtt_addr.1,
            username: crate::telemetry::RUNTIME_USER.into(),
            password: runtime_password,
            batch: 100,
            poll: std::time::Duration::from_millis(50),
            max_payload: crate::telemetry::broker::MAX_PACKET - 4096,
            site: site.site.name.clone(),
        };
        let relay = match relay_lease {
            None => tokio::spawn(crate::telemetry::relay::run(store.clone(), relay_config, stop.1.clone())),
            Some(leased) => {
                let store = store.clone();
                let term = move |_lease, stop| {
                    let relay = crate::telemetry::relay::run(store.clone(), relay_config.clone(), stop);
                    async move {
                        relay.await;
                        Ok(())
                    }
                };
                tokio::spawn(leased.keep(stop.1.clone(), term))
            }
        };
        tasks.push(("relay", relay, 5));
    }
    let api = Api {
        store,
        site: Arc::new(site.clone()),
        library: Arc::new(labware::Library::shipped()),
        lab: connected.clone(),
        board: Some(board.clone()),
        time_scale: config.time_scale,
        mqtt_broker: Some(mqtt_addr.clone()),
        embedded_broker,
    };
    let probed: Vec<String> = site
        .instruments
        .iter()
        .filter(|i| !matches!(i.class, labware::InstrumentClass::Technician))
        .map(|i| i.id.clone())
        .chain(site.arms.iter().map(|a| a.id.clone()))
        .collect();
    tasks.push((
        "health",
        tokio::spawn(crate::health::watch_parts(
            health.clone(),
            crate::health::Parts {
                store: api.store.clone(),
                board: board.clone(),
                connected: connected.clone(),
                instruments: probed,
            },
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(3),
            stop.1.clone(),
        )),
        1,
    ));
    let console = match console_listener {
        Some(l) => {
            let url = format!("http://{}/", l.local_addr().map_err(|e| e.to_string())?);
            println!("labd: console on {url}");
            let mut stopped = stop.1.clone();
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let console = crate::console::serve(api.clone(), l, config.console_hosts.clone(), health.clone(), shutdown);
            tasks.push((
                "console",
                tokio::spawn(async move {
                    if let Err(e) = console.await {
                        tracing::error!(error = %e, "the console stopped");
                    }
                }),
                5,
            ));
            Some(url)
        }
        None => None,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "labd: gRPC API on {addr}{}; data in {}; {} instruments{}{}",
        if tls.is_some() { " (TLS)" } else { "" },
        config.data_dir.display(),
        lab.as_ref().map_or(site.instruments.len() + site.arms.len(), |l| l.instruments.len() + l.arms.len()),
        if all_sim { " (simulated)" } else { "" },
        match (config.mqtt_broker, publish) {
            (MqttBroker::Embedded, _) => format!("; MQTT broker (embedded) on {}:{}", mqtt_addr.0, mqtt_addr.1),
            (MqttBroker::External, true) => format!("; telemetry to mqtt://{}:{}", mqtt_addr.0, mqtt_addr.1),
            (MqttBroker::External, false) => String::new(),
        }
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut stopped = stop.1.clone();
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let api = tokio::spawn(serve_api(api, listener, tls, Some(health), shutdown));
    Ok(Running { grpc: addr, console, mqtt: mqtt_addr, new_admin_token, lab, board, stop: stop.0, tasks, api })
}

/// The store the config names, and (PostgreSQL) a wake-up rung when a run is submitted on any
/// node.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, Option<Arc<tokio::sync::Notify>>), String> {
    let Some(url) = config.database.clone() else {
        let file = config.data_dir.join("labd.sqlite");
        let store = SqliteStore::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        // Token and MQTT password hashes: the owner's alone (SQLite gives its -wal and -shm
        // files the database file's mode).
        private_file(&file)?;
        return Ok((Arc::new(store), None));
    };
    let store = tokio::task::spawn_blocking({
        let url = url.clone();
        move || PostgresStore::connect(&url)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("database: {e}"))?;
    let wake = Arc::new(tokio::sync::Notify::new());
    crate::store::postgres::listen_for_submissions(&url, wake.clone());
    Ok((Arc::new(store), Some(wake)))
}

/// The site's instruments: simulated in-process when every endpoint says `sim`, else
/// connected over their endpoints. Also says whether they are simulated.
async fn connect_lab(site: &labware::Site, config: &Config, scale: TimeScale) -> Result<(Lab, bool), String> {
    let all_sim = site
        .instruments
        .iter()
        .map(|i| i.endpoint.as_str())
        .chain(site.arms.iter().map(|a| a.endpoint.as_str()))
        .all(|e| e.starts_with("sim"));
    let lab = if all_sim {
        let mut faults = std::collections::BTreeMap::new();
        for (id, spec) in &config.sim_faults {
            faults.insert(id.clone(), devices::sim::Faults::parse(spec).map_err(|e| format!("sim_faults.{id}: {e}"))?);
        }
        let lab = Lab::simulated_logged(site.clone(), scale, &faults, config.sim_log_dir.as_deref()).await?;
        if let Some(Ok(mut bench)) = lab.simulated.as_ref().map(|s| s.bench.lock()) {
            bench.set_seed(config.sim_seed);
        }
        lab
    } else {
        if !config.sim_faults.is_empty() {
            return Err("sim_faults applies to a simulated site only (every endpoint `sim`)".into());
        }
        let endpoints = site
            .instruments
            .iter()
            .map(|i| (i.id.clone(), i.endpoint.clone()))
            .chain(site.arms.iter().map(|a| (a.id.clone(), a.endpoint.clone())))
            .collect();
        Lab::connect(site.clone(), &endpoints, scale).await?
    };
    Ok((lab, all_sim))
}

/// Something only one node may do at a time (drive a cell, relay the outbox): done while this
/// node holds its lease, renewed every third of the lease time; stood by for otherwise.
#[derive(Clone)]
struct Leased {
    store: Arc<dyn Store>,
    /// The lease's name: a cell id, or [`RELAY_LEASE`].
    name: String,
    /// How it is called in messages (`cell a`, `telemetry relay`).
    what: String,
    holder: String,
    lease_ms: u64,
}

/// The lease of the one node that publishes the shared outbox.
const RELAY_LEASE: &str = "~telemetry-relay";

impl Leased {
    /// Runs `term` for each lease this node gets, until `stop`. A term ends when the lease is
    /// lost (its stop turns true), when asked to stop (then the lease is released, so a
    /// standby need not wait), or by itself (an error: the lease is released and taken again).
    async fn keep<F, Fut>(self, mut stop: tokio::sync::watch::Receiver<bool>, mut term: F)
    where
        F: FnMut(crate::store::Lease, tokio::sync::watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let every = std::time::Duration::from_millis(self.lease_ms / 3);
        let ttl = self.lease_ms as i64;
        let what = &self.what;
        loop {
            let lease = loop {
                if *stop.borrow() {
                    return;
                }
                let (store, n, h) = (self.store.clone(), self.name.clone(), self.holder.clone());
                match tokio::task::spawn_blocking(move || store.acquire_lease(&n, &h, ttl)).await {
                    Ok(Ok(Some(l))) => break l,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => tracing::warn!(lease = %what, error = %e, "cannot read the lease"),
                    Err(e) => tracing::error!(lease = %what, error = %e, "the lease check stopped"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            };
            tracing::info!(lease = %what, node = %self.holder, epoch = lease.epoch, "lease taken; driving it");
            let (term_stop, term_stop_rx) = tokio::sync::watch::channel(false);
            let mut work = tokio::spawn(term(lease.clone(), term_stop_rx));
            let mut current = lease;
            let ended: Option<String> = loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break None,
                    r = &mut work => {
                        let why = match r {
                            Ok(Ok(())) => "it stopped".to_string(),
                            Ok(Err(e)) => e,
                            Err(e) => format!("it failed: {e}"),
                        };
                        // A term that ended because its writes were refused lost the lease.
                        let (store, l) = (self.store.clone(), current.clone());
                        if let Ok(Ok(None)) = tokio::task::spawn_blocking(move || store.renew_lease(&l, ttl)).await {
                            tracing::warn!(lease = %what, epoch = current.epoch, "lost its lease; standing by");
                            break Some("lost".into());
                        }
                        self.release(&current).await;
                        tracing::warn!(lease = %what, why = %why, "released its lease; standing by");
                        tokio::time::sleep(every).await;
                        break Some(why);
                    }
                }
                let (store, l) = (self.store.clone(), current.clone());
                match tokio::task::spawn_blocking(move || store.renew_lease(&l, ttl)).await {
                    Ok(Ok(Some(l))) => current = l,
                    Ok(Ok(None)) => {
                        tracing::warn!(lease = %what, epoch = current.epoch, "lost its lease; standing by");
                        break Some("lost".into());
                    }
                    // The database may be restarting: the store retries; the fence guards writes.
                    Ok(Err(e)) => tracing::warn!(lease = %what, error = %e, "cannot renew the lease"),
                    Err(e) => tracing::error!(lease = %what, error = %e, "the lease renewal stopped"),
                }
            };
            let _ = term_stop.send(true);
            if !work.is_finished() && tokio::time::timeout(std::time::Duration::from_secs(10), &mut work).await.is_err()
            {
                work.abort();
            }
            if ended.is_none() {
                self.release(&current).await;
                tracing::info!(lease = %what, "released its lease");
                return;
            }
        }
    }

    async fn release(&self, lease: &crate::store::Lease) {
        let (store, l) = (self.store.clone(), lease.clone());
        match tokio::task::spawn_blocking(move || store.release_lease(&l)).await {
            Ok(Ok(())) => {}
            // It runs out by itself; a standby waits that long.
            Ok(Err(e)) => tracing::warn!(lease = %self.what, error = %e, "cannot release the lease; it will run out"),
            Err(e) => tracing::warn!(lease = %self.what, error = %e, "cannot release the lease; it will run out"),
        }
    }
}

/// One term of driving a cell: connect its instruments, recover what the last holder left in
/// flight, and run the executor through a store fenced by the lease until `stop`.
async fn drive_cell(
    env: CellEnv,
    lease: crate::store::Lease,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let cell = lease.cell.clone();
    let scale = TimeScale(env.config.time_scale);
    let (lab, _) =
        connect_lab(&env.site, &env.config, scale).await.map_err(|e| format!("cannot reach its instruments: {e}"))?;
    let lab = Arc::new(lab);
    env.connected.add(lab.clone());
    let shown = ShownWhileDriven(env.connected.clone(), lab.clone());
    let exec_config = ExecutorConfig { scale, cell: Some(cell.clone()), wake: env.wake, ..ExecutorConfig::default() };
    let executor = Executor::with_board(env.store.fenced(&lease), lab, exec_config, env.board);
    let recovered = tokio::task::spawn_blocking({
        let executor = executor.clone();
        move || executor.recover()
    })
    .await
    .map_err(|e| e.to_string())??;
    for run in recovered {
        tracing::warn!(cell = %cell, run = %run, "run interrupted on the last holder; marked failed (see its events)");
    }
    let ran = executor.run(stop).await;
    drop(shown);
    ran
}

/// What a cell's terms need from the node.
#[derive(Clone)]
struct CellEnv {
    store: Arc<dyn Store>,
    site: labware::Site,
    config: Config,
    board: Arc<crate::board::Board>,
    wake: Option<Arc<tokio::sync::Notify>>,
    connected: crate::lab::Connected,
}

/// Keeps a cell's instruments in the API's view for as long as this node drives the cell.
struct ShownWhileDriven(crate::lab::Connected, Arc<Lab>);

impl Drop for ShownWhileDriven {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// Creates (or keeps) the data directory readable by labd's user alone (0700), and checks that
/// labd can use it, naming the path when it cannot.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create data_dir {}: {e}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot make data_dir {} private (0700): {e}", dir.display()))?;
    }
    std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read data_dir {}: {e}; it must belong to the user labd runs as", dir.display()))?;
    Ok(())
}

/// Makes a file of the data directory readable by labd's user alone (0600).
pub fn private_file(file: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private (0600): {e}", file.display()))?;
    }
    Ok(())
}

/// The runtime's own MQTT password, made on first use and kept in `data_dir` (mode 0600).
pub fn runtime_mqtt_password(data_dir: &Path) -> Result<String, String> {
    let file = data_dir.join("mqtt-runtime.password");
    if !file.exists() {
        let password = crate::telemetry::mosquitto::new_password()?;
        write_secret(&file, &password)?;
    }
    Ok(std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?.trim().to_string())
}

/// `labd mqtt-config`: writes `passwd`, `acl` and `mosquitto.conf` for an external Mosquitto
/// into `out`, from the identities in the store.
pub fn mqtt_config(config: &Config, out: &Path) -> Result<Vec<PathBuf>, String> {
    use crate::telemetry::mosquitto;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let store: Box<dyn Store> = match &config.database {
        Some(url) => Box::new(PostgresStore::connect(url).map_err(|e| format!("database: {e}"))?),
        None => Box::new(SqliteStore::open(&config.data_dir.join("labd.sqlite")).map_err(|e| e.to_string())?),
    };
    let identities = store.mqtt_identities().map_err(|e| e.to_string())?;
    let runtime = mosquitto::password_hash(&runtime_mqtt_password(&config.data_dir)?)?;
    let files = [
        ("passwd", mosquitto::password_file(&runtime, &identities)),
        ("acl", mosquitto::acl_file(&identities)),
        ("mosquitto.conf", mosquitto::broker_config(&config.mqtt_host, config.mqtt_port, out)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        written.push(path);
    }
    Ok(written)
}

/// Serves the API (Protocols, Runs, Admin, Lab, gRPC health and reflection) on `listener` until
/// `shutdown` completes.
pub async fn serve_api(
    api: Api,
    listener: tokio::net::TcpListener,
    tls: Option<(String, String)>,
    health: Option<Arc<crate::health::Health>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let incoming = devices::sila::nodelay_incoming(listener);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mirror = match health {
        // Readiness as it changes; the task ends with the server.
        Some(h) => Some(tokio::spawn(crate::health::report_grpc(h, reporter))),
        None => {
            reporter.set_serving::<pb::runs_server::RunsServer<Api>>().await;
            None
        }
    };
    let _stop_mirror = AbortOnDrop(mirror);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| format!("TLS (tls_cert, tls_key): {e}"))?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::protocols_server::ProtocolsServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(pb::runs_server::RunsServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(pb::admin_server::AdminServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(pb::lab_server::LabServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("gRPC server: {e}"))
}

/// Tokens this node creates or revokes reach the embedded broker at once (the API tells it);
/// expired ones and other nodes' changes within 2 s, from the store. Until `stop`.
async fn refresh_identities(
    broker: crate::telemetry::broker::Broker,
    store: Arc<dyn Store>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.mqtt_identities()).await {
            Ok(Ok(ids)) => broker.set_identities(&ids),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read MQTT identities; the broker keeps the ones it has"),
            Err(e) => tracing::warn!(error = %e, "the MQTT identity refresh stopped; trying again"),
        }
    }
}

/// Ends a helper task when the server it serves returns.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Runs the executor until `stop`; if it ends otherwise (an error it could not get past, a
/// panic), it is not silently gone: readiness says so, runs it had begun are recovered (today:
/// failed with the reason, see docs/runtime.md), and it starts again after a growing pause.
async fn supervise(executor: Executor, health: Arc<crate::health::Health>, stop: tokio::sync::watch::Receiver<bool>) {
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        health.set_executor(Ok("running"));
        let run = tokio::spawn({
            let (executor, stop) = (executor.clone(), stop.clone());
            async move { executor.run(stop).await }
        });
        let why = match run.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => "it panicked".to_string(),
            Err(e) => e.to_string(),
        };
        if *stop.borrow() {
            return;
        }
        tracing::error!(error = %why, retry_in_s = pause.as_secs(), "the executor stopped; restarting it after recovery");
        health.set_executor(Err(why));
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(30));
        let ex = executor.clone();
        match tokio::task::spawn_blocking(move || ex.recover()).await {
            Ok(Ok(runs)) => {
                for run in runs {
                    tracing::warn!(run = %run, "run interrupted by the executor's stop; marked failed (see its events)");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "recovery failed; trying again"),
            Err(e) => tracing::error!(error = %e, "recovery stopped; trying again"),
        }
    }
}

fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(f, "{text}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}
