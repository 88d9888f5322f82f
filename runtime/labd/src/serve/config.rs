//! `labd.toml`: every key `labd serve` reads, its default, and the checks that name the key
//! and what to write instead.

use serde::Deserialize;
use std::path::{Path, PathBuf};

impl From<String> for ConfigError {
    fn from(message: String) -> Self {
        ConfigError::Invalid(message)
    }
}

impl From<&str> for ConfigError {
    fn from(message: &str) -> Self {
        ConfigError::Invalid(message.to_string())
    }
}

/// What is wrong with a configuration: the file, or the key and what to write instead.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key of the wrong type or unknown (the parser's message names it).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A value out of range; the message names the key.
    #[error("{0}")]
    Invalid(String),
    /// The same, found while loading a file.
    #[error("{path}: {error}")]
    InFile {
        path: String,
        #[source]
        error: Box<ConfigError>,
    },
}

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
    /// The bench of simulators running in their own process (`labd sim`'s `bench` line,
    /// host:port): the simulated technician loads plates there. Simulators in another process
    /// keep their state (tips, volumes, plates) when labd restarts, as real instruments do.
    pub sim_bench: Option<String>,
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
    /// An OpenTelemetry collector's OTLP/gRPC address (`http://127.0.0.1:4317`): labd sends it
    /// its spans (each task and plate move with its run, tenant and instrument; each command).
    /// Off when absent.
    pub otlp_endpoint: Option<String>,
    /// Who kits each run's material before its first step: `technicians` (each item scanned,
    /// `labctl kit`) or `simulated` (the simulated technician; a simulated lab only). Absent:
    /// `simulated` where there is a simulated technician, else `technicians`.
    pub kitting: Option<crate::executor::Kitting>,
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
            sim_bench: None,
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
            otlp_endpoint: None,
            kitting: None,
        }
    }
}

impl Config {
    /// Reads and checks a config file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: shown.clone(), message: e.to_string() })?;
        c.check().map_err(|e| ConfigError::InFile { path: shown, error: Box::new(e) })?;
        Ok(c)
    }

    /// The TLS identity (certificate chain, key) when TLS is configured.
    pub fn tls(&self) -> Result<Option<(String, String)>, ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(c), Some(k)) => {
                let read = |key: &str, p: &Path| {
                    std::fs::read_to_string(p)
                        .map_err(|e| ConfigError::from(format!("{key} = {:?}: cannot read it: {e}", p.display())))
                };
                let (cert, key) = (read("tls_cert", c)?, read("tls_key", k)?);
                if !cert.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!("tls_cert = {:?}: not a PEM certificate", c.display()).into());
                }
                if !key.contains("PRIVATE KEY-----") {
                    return Err(format!("tls_key = {:?}: not a PEM private key", k.display()).into());
                }
                Ok(Some((cert, key)))
            }
            (Some(_), None) => Err("tls_cert is set but tls_key is not: give both, or neither for plain gRPC".into()),
            (None, Some(_)) => Err("tls_key is set but tls_cert is not: give both, or neither for plain gRPC".into()),
        }
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(format!("time_scale = {}: give a positive number (1.0 is real time)", self.time_scale).into());
        }
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| format!("listen = {:?}: give host:port, e.g. \"127.0.0.1:50051\"", self.listen))?;
        if self.mqtt_max_connections == 0 || self.mqtt_max_connections_per_identity == 0 {
            return Err("mqtt_max_connections and mqtt_max_connections_per_identity: give at least 1".into());
        }
        if !(1_000..=600_000).contains(&self.lease_ms) {
            return Err(format!("lease_ms = {}: give 1000 to 600000 milliseconds", self.lease_ms).into());
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

impl Config {
    /// Who kits runs on a lab that has (or not) a simulated technician.
    pub fn kitting(&self, simulated_technician: bool) -> Result<crate::executor::Kitting, ConfigError> {
        use crate::executor::Kitting;
        match self.kitting {
            Some(Kitting::Simulated) if !simulated_technician => Err(ConfigError::Invalid(
                "kitting = \"simulated\": this site's instruments are real and no simulated bench (sim_bench) is set, so no simulated technician can kit; write kitting = \"technicians\" or remove the key".into(),
            )),
            Some(k) => Ok(k),
            None if simulated_technician => Ok(Kitting::Simulated),
            None => Ok(Kitting::Technicians),
        }
    }
}
