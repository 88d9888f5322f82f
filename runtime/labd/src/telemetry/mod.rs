//! Telemetry over MQTT: the topic tree tenants subscribe to, the envelopes sent on it
//! ([`envelope`]), the broker configuration that keeps each tenant inside its own subtree
//! ([`mosquitto`]), and the embedded broker ([`broker`]). Everything but the broker is pure:
//! names, payloads and file contents, no IO. The store asks this module for topics and
//! envelopes; [`crate::relay`] carries the store's outbox to the broker.
//!
//! ```text
//! lab/v1/t/{tenant}/runs/{run}/state      retained
//! lab/v1/t/{tenant}/runs/{run}/events
//! lab/v1/t/{tenant}/runs/{run}/results
//! lab/v1/site/{site}/devices/{device}/status   retained (technicians)
//! lab/v1/site/{site}/runtime/status            retained (technicians)
//! ```
//!
//! `{tenant}` is the tenant id, never its name: a topic leaks nothing about who else rents the lab.

pub mod broker;
pub mod envelope;
pub mod mosquitto;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the MQTT broker cannot listen on {addr} (mqtt_host, mqtt_port in labd.toml): {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The MQTT user the runtime publishes as; the only one allowed to write.
pub const RUNTIME_USER: &str = "labwright-runtime";

/// Everything of one tenant.
pub fn tenant_subtree(tenant_id: &str) -> String {
    format!("lab/v1/t/{tenant_id}/#")
}

/// One of a run's topics: `state`, `events` or `results`.
pub fn run_topic(tenant_id: &str, run_id: &str, leaf: &str) -> String {
    format!("lab/v1/t/{tenant_id}/runs/{run_id}/{leaf}")
}

/// A tenant's container's events: received, used, made, stored, discarded.
pub fn container_topic(tenant_id: &str, container_id: &str) -> String {
    format!("lab/v1/t/{tenant_id}/containers/{container_id}/events")
}

/// The runtime's own status for technicians: `online`, or `offline` (its last will).
pub fn runtime_status_topic(site: &str) -> String {
    format!("lab/v1/site/{site}/runtime/status")
}

/// Instrument status for technicians.
pub fn device_status_topic(site: &str, device: &str) -> String {
    format!("lab/v1/site/{site}/devices/{device}/status")
}

/// Who may read what: one MQTT identity.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttIdentity {
    pub username: String,
    /// Mosquitto `$7$` hash of the password.
    pub password_hash: String,
    pub role: crate::role::Role,
    pub tenant_id: Option<String>,
}

impl MqttIdentity {
    /// The topic patterns this identity may read.
    pub fn reads(&self) -> Vec<String> {
        use crate::role::Role;
        match (self.role, &self.tenant_id) {
            (Role::Scientist, Some(t)) => vec![tenant_subtree(t)],
            (Role::Scientist, None) => Vec::new(),
            (Role::Technician, _) => vec!["lab/v1/site/#".into()],
            (Role::Admin, _) => vec!["lab/v1/#".into()],
        }
    }
}
