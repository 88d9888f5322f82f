//! `labd serve`: the store, the lab (simulated or real), the executor and the gRPC API in one
//! process.

use crate::api::{new_token, token_hash, Api, MAX_REQUEST_BYTES};
use crate::executor::{Executor, ExecutorConfig};
use crate::lab::Lab;
use crate::store::{postgres::PostgresStore, sqlite::SqliteStore, Role, Store};
use devices::TimeScale;
use protos::labwright::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod cells;
mod config;
mod error;
use cells::{drive_cell, CellEnv, Leased, RELAY_LEASE};
pub use config::{Config, ConfigError, MqttBroker};
pub use error::ServeError;

/// Starts everything; returns when SIGINT or SIGTERM arrives (after a graceful stop).
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let running = start(config).await?;
    wait_for_stop().await;
    running.stop().await
}

/// Waits for Ctrl-C or SIGTERM (`labd serve`, `labd sim`, `labd demo --keep`).
pub async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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
    /// The store this node writes (benchmarks commit events through it, as the executor does).
    pub store: Arc<dyn Store>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>, u64)>,
    api: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Stops gracefully: the API first, then the executor (commands on instruments finish,
    /// up to 10 s), the console and the telemetry relay.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        let api = self.api.await.map_err(|source| ServeError::Task { what: "the gRPC API", source })?;
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
pub async fn start(config: Config) -> Result<Running, ServeError> {
    config.check()?;
    let tls = config.tls()?;
    private_dir(&config.data_dir)?;
    let site = match &config.site {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| ServeError::file("cannot read site", p, e))?;
            labware::Site::from_toml(&text).map_err(|e| ServeError::Site { path: p.clone(), message: e.to_string() })?
        }
        None => {
            labware::Site::sim().map_err(|e| ServeError::Site { path: "(shipped)".into(), message: e.to_string() })?
        }
    };
    // Bind first: a taken port fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(&config.listen).await.map_err(|source| ServeError::Listen {
        addr: config.listen.clone(),
        key: "listen",
        hint: "; is another labd running?",
        source,
    })?;
    let console_listener = match config.console_listen.as_str() {
        "off" => None,
        addr => Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            key: "console_listen",
            hint: " (the console; --console sets it too)",
            source,
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
            broker.set_identities(&store.mqtt_identities().map_err(ServeError::store("reading MQTT identities"))?);
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
        store
            .create_principal(None, Role::Admin, &token_hash(&token), None)
            .map_err(ServeError::store("creating the admin token"))?;
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
    let (lab, board, all_sim, kitting) = if config.database.is_none() && config.cells.is_empty() {
        // One node: the whole site, every run.
        let (mut lab, all_sim) = connect_lab(&site, &config, scale).await?;
        lab.keep_bench_in(config.data_dir.join("sim-bench.json"))?;
        let lab = Arc::new(lab);
        connected.add(lab.clone());
        let kitting = config.kitting(lab.has_simulated_technician())?;
        let executor =
            Executor::new(store.clone(), lab.clone(), ExecutorConfig { scale, kitting, ..ExecutorConfig::default() });
        for run in executor.recover().await? {
            tracing::warn!(run = %run, "run interrupted by the last stop; marked failed (see its events)");
            // Also in the start-up lines, for the person who restarted labd.
            println!("labd: run {run} was interrupted by the last stop and is marked failed (see its events)");
        }
        let board = executor.board();
        let exec_task = tokio::spawn(supervise(executor, health.clone(), stop.1.clone()));
        tasks.push(("executor", exec_task, 10));
        (Some(lab), board, all_sim, kitting)
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
            let part = site.cell(&cell).map_err(|e| ServeError::Cells(e.to_string()))?;
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
        health.set_executor_running();
        relay_lease = Some(Leased {
            store: store.clone(),
            name: RELAY_LEASE.into(),
            what: "telemetry relay".into(),
            holder,
            lease_ms: config.lease_ms,
        });
        let all_sim = site.instruments.iter().all(|i| i.endpoint.starts_with("sim"));
        // As the cells' executors kit (each checks the setting against its own instruments).
        let kitting = config.kitting.unwrap_or(if all_sim {
            crate::executor::Kitting::Simulated
        } else {
            crate::executor::Kitting::Technicians
        });
        (None, board, all_sim, kitting)
    };
    if publish {
        let relay_config = crate::relay::RelayConfig {
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
            None => tokio::spawn(crate::relay::run(store.clone(), relay_config, stop.1.clone())),
            Some(leased) => {
                let store = store.clone();
                let term = move |_lease, stop| {
                    let relay = crate::relay::run(store.clone(), relay_config.clone(), stop);
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
        store: store.clone(),
        site: Arc::new(site.clone()),
        library: Arc::new(labware::Library::shipped()),
        lab: connected.clone(),
        board: Some(board.clone()),
        time_scale: config.time_scale,
        mqtt_broker: Some(mqtt_addr.clone()),
        embedded_broker,
        kitting,
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
            let url = format!(
                "http://{}/",
                l.local_addr().map_err(|e| ServeError::file(
                    "console listener",
                    Path::new(&config.console_listen),
                    e
                ))?
            );
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
    let addr = listener.local_addr().map_err(|e| ServeError::file("gRPC listener", Path::new(&config.listen), e))?;
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
    Ok(Running { grpc: addr, console, mqtt: mqtt_addr, new_admin_token, lab, board, store, stop: stop.0, tasks, api })
}

/// The store the config names, and (PostgreSQL) a wake-up rung when a run is submitted on any
/// node.
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, Option<Arc<tokio::sync::Notify>>), ServeError> {
    let Some(url) = config.database.clone() else {
        let file = config.data_dir.join("labd.sqlite");
        let store = SqliteStore::open(&file).map_err(ServeError::store("opening labd.sqlite in data_dir"))?;
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
    .map_err(|source| ServeError::Task { what: "connecting to the database", source })?
    .map_err(ServeError::store("database"))?;
    let wake = Arc::new(tokio::sync::Notify::new());
    crate::store::postgres::listen_for_submissions(&url, wake.clone());
    Ok((Arc::new(store), Some(wake)))
}

/// The site's instruments: simulated in-process when every endpoint says `sim`, else
/// connected over their endpoints. Also says whether they are simulated.
async fn connect_lab(site: &labware::Site, config: &Config, scale: TimeScale) -> Result<(Lab, bool), ServeError> {
    let all_sim = site
        .instruments
        .iter()
        .map(|i| i.endpoint.as_str())
        .chain(site.arms.iter().map(|a| a.endpoint.as_str()))
        .all(|e| e.starts_with("sim"));
    let lab = if all_sim {
        let mut faults = std::collections::BTreeMap::new();
        for (id, spec) in &config.sim_faults {
            let parsed = devices::sim::Faults::parse(spec)
                .map_err(|e| ServeError::SimFaults { id: id.clone(), message: e.to_string() })?;
            faults.insert(id.clone(), parsed);
        }
        let lab = Lab::simulated_logged(site.clone(), scale, &faults, config.sim_log_dir.as_deref()).await?;
        if let Some(Ok(mut bench)) = lab.simulated.as_ref().map(|s| s.bench.lock()) {
            bench.set_seed(config.sim_seed);
        }
        lab
    } else {
        if !config.sim_faults.is_empty() {
            return Err(ServeError::SimFaultsOnRealSite);
        }
        let endpoints = site
            .instruments
            .iter()
            .map(|i| (i.id.clone(), i.endpoint.clone()))
            .chain(site.arms.iter().map(|a| (a.id.clone(), a.endpoint.clone())))
            .collect();
        let mut lab = Lab::connect(site.clone(), &endpoints, scale).await?;
        lab.hands = config.sim_bench.as_deref().map(devices::sim::hands::Hands::at);
        lab
    };
    Ok((lab, all_sim))
}

/// Creates (or keeps) the data directory readable by labd's user alone (0700), and checks that
/// labd can use it, naming the path when it cannot.
pub fn private_dir(dir: &Path) -> Result<(), ServeError> {
    std::fs::create_dir_all(dir).map_err(|e| ServeError::file("cannot create data_dir", dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ServeError::file("cannot make private (0700) data_dir", dir, e))?;
    }
    std::fs::read_dir(dir).map_err(|source| ServeError::File {
        what: "cannot read data_dir",
        path: dir.to_path_buf(),
        hint: "; it must belong to the user labd runs as",
        source,
    })?;
    Ok(())
}

/// Makes a file of the data directory readable by labd's user alone (0600).
pub fn private_file(file: &Path) -> Result<(), ServeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ServeError::file("cannot make private (0600)", file, e))?;
    }
    Ok(())
}

/// The runtime's own MQTT password, made on first use and kept in `data_dir` (mode 0600).
pub fn runtime_mqtt_password(data_dir: &Path) -> Result<String, ServeError> {
    let file = data_dir.join("mqtt-runtime.password");
    if !file.exists() {
        let password = crate::telemetry::mosquitto::new_password()?;
        write_secret(&file, &password)?;
    }
    Ok(std::fs::read_to_string(&file).map_err(|e| ServeError::file("cannot read", &file, e))?.trim().to_string())
}

/// `labd mqtt-config`: writes `passwd`, `acl` and `mosquitto.conf` for an external Mosquitto
/// into `out`, from the identities in the store.
pub fn mqtt_config(config: &Config, out: &Path) -> Result<Vec<PathBuf>, ServeError> {
    use crate::telemetry::mosquitto;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| ServeError::file("cannot create data_dir", &config.data_dir, e))?;
    std::fs::create_dir_all(out).map_err(|e| ServeError::file("cannot create", out, e))?;
    let store: Box<dyn Store> = match &config.database {
        Some(url) => Box::new(PostgresStore::connect(url).map_err(ServeError::store("database"))?),
        None => Box::new(
            SqliteStore::open(&config.data_dir.join("labd.sqlite"))
                .map_err(ServeError::store("opening labd.sqlite in data_dir"))?,
        ),
    };
    let identities = store.mqtt_identities().map_err(ServeError::store("reading MQTT identities"))?;
    let runtime = mosquitto::password_hash(&runtime_mqtt_password(&config.data_dir)?)?;
    let files = [
        ("passwd", mosquitto::password_file(&runtime, &identities)),
        ("acl", mosquitto::acl_file(&identities)),
        ("mosquitto.conf", mosquitto::broker_config(&config.mqtt_host, config.mqtt_port, out)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| ServeError::file("cannot write", &path, e))?;
        private_file(&path)?;
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
) -> Result<(), ServeError> {
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
        .map_err(|e| ServeError::Api(format!("reflection: {e}")))?;
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Api(format!("TLS (tls_cert, tls_key): {e}")))?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::protocols_server::ProtocolsServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(pb::runs_server::RunsServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(pb::admin_server::AdminServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(pb::lab_server::LabServer::new(api.clone()).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(pb::inventory_server::InventoryServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ServeError::Api(format!("gRPC server: {e}")))
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
        match crate::store::offload::call(&store, |s| s.mqtt_identities()).await {
            Ok(ids) => broker.set_identities(&ids),
            Err(e) => tracing::warn!(error = %e, "cannot read MQTT identities; the broker keeps the ones it has"),
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
        health.set_executor_running();
        let run = tokio::spawn({
            let (executor, stop) = (executor.clone(), stop.clone());
            async move { executor.run(stop).await }
        });
        let why = match run.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) if e.is_panic() => "it panicked".to_string(),
            Err(e) => e.to_string(),
        };
        if *stop.borrow() {
            return;
        }
        tracing::error!(error = %why, retry_in_s = pause.as_secs(), "the executor stopped; restarting it after recovery");
        health.set_executor_down(&why);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(30));
        match executor.recover().await {
            Ok(runs) => {
                for run in runs {
                    tracing::warn!(run = %run, "run interrupted by the executor's stop; marked failed (see its events)");
                }
            }
            Err(e) => tracing::error!(error = %e, "recovery failed; trying again"),
        }
    }
}

fn write_secret(path: &Path, text: &str) -> Result<(), ServeError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).map_err(|e| ServeError::file("cannot write", path, e))?;
    writeln!(f, "{text}").map_err(|e| ServeError::file("cannot write", path, e))
}
