//! The relay: publishes the outbox to the MQTT broker at QoS 1 and marks rows sent only once
//! the broker has acknowledged every row of the batch. A lost connection or a restart leaves
//! unacknowledged rows unsent, so they are published again: at least once, duplicates carry the
//! same `(run, seq)`. Each connection starts clean, so no acknowledgement from an earlier
//! connection is ever counted for a later batch.

use crate::store::{offload, Store};
use crate::telemetry::envelope;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where and as whom the relay publishes.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    /// Rows per batch.
    pub batch: usize,
    /// How often to look for new rows when idle (rows this process commits wake it at once).
    pub poll: Duration,
    /// Larger payloads are replaced by a summary that says where the data is (gRPC).
    pub max_payload: usize,
    /// The site's name, for the runtime's status topic (retained; the last will says offline).
    pub site: String,
}

/// Why a connection to the broker ended; the relay connects again and publishes what was not
/// acknowledged.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("cannot connect: {0}")]
    Connect(rumqttc::ConnectionError),
    #[error("no CONNACK within 10 s")]
    NoConnAck,
    #[error("publishing: {0}")]
    Publish(#[from] rumqttc::ClientError),
    #[error("connection lost: {0}")]
    Disconnected(rumqttc::ConnectionError),
    #[error("connection lost with {acked} of {of} acknowledged: {source}")]
    Lost { acked: usize, of: usize, source: rumqttc::ConnectionError },
    #[error("{missing} of {of} publishes unacknowledged after 10 s")]
    Unacknowledged { missing: usize, of: usize },
    #[error("{what}: {source}")]
    Store { what: &'static str, source: crate::store::StoreError },
}

/// Runs until `stop` turns true.
pub async fn run(store: Arc<dyn Store>, config: RelayConfig, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    let mut connection = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        connection += 1;
        match session(&store, &config, connection, &mut stop).await {
            Ok(()) => return,
            Err(why) => {
                tracing::warn!(broker = %format!("{}:{}", config.host, config.port), why = %why, retry_in_ms = backoff.as_millis() as u64, "telemetry broker unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 4).min(Duration::from_secs(5));
            }
        }
    }
}

/// One connection: publishes batches until the connection fails (Err) or `stop` (Ok).
async fn session(
    store: &Arc<dyn Store>,
    config: &RelayConfig,
    connection: u64,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), RelayError> {
    let mut options = MqttOptions::new(
        format!("{}-{}-{connection}", crate::telemetry::RUNTIME_USER, std::process::id()),
        config.host.clone(),
        config.port,
    );
    options.set_credentials(config.username.clone(), config.password.clone());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    let offline = envelope::runtime_status(&config.site, "offline");
    options.set_last_will(rumqttc::LastWill::new(&offline.topic, offline.payload, QoS::AtLeastOnce, true));
    options.set_max_packet_size(config.max_payload + 4096, config.max_payload + 4096);
    let (client, mut events) = AsyncClient::new(options, config.batch + 16);
    let online = envelope::runtime_status(&config.site, "online");
    let deadline = Duration::from_secs(10);
    loop {
        match tokio::time::timeout(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RelayError::Connect(e)),
            Err(_) => return Err(RelayError::NoConnAck),
        }
    }
    client.publish(online.topic, QoS::AtLeastOnce, true, online.payload.into_bytes()).await?;
    // Its acknowledgement is awaited here, so it is never counted for a batch.
    loop {
        match tokio::time::timeout(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RelayError::Disconnected(e)),
            Err(_) => return Err(RelayError::Unacknowledged { missing: 1, of: 1 }),
        }
    }
    // This process's commits wake the relay at once; other nodes' rows are found by polling.
    let mut written = store.written();
    loop {
        if *stop.borrow() {
            let _ = client.disconnect().await;
            return Ok(());
        }
        written.borrow_and_update();
        let batch = config.batch;
        let rows = offload::call(store, move |s| s.outbox_pending(batch))
            .await
            .map_err(|source| RelayError::Store { what: "reading the outbox", source })?;
        if rows.is_empty() {
            // Idle: keep the connection serviced (pings) until it is time to look again.
            tokio::select! {
                r = tokio::time::timeout(config.poll, events.poll()) => {
                    if let Ok(Err(e)) = r {
                        return Err(RelayError::Disconnected(e));
                    }
                }
                _ = written.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        for r in &rows {
            client
                .publish(
                    r.topic.clone(),
                    QoS::AtLeastOnce,
                    envelope::retained(&r.topic),
                    envelope::fit(&r.payload_json, config.max_payload).into_bytes(),
                )
                .await?;
        }
        let mut acked = 0;
        let expected = rows.len();
        while acked < expected {
            match tokio::time::timeout(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(RelayError::Lost { acked, of: expected, source: e }),
                Err(_) => return Err(RelayError::Unacknowledged { missing: expected - acked, of: expected }),
            }
        }
        let ids: Vec<String> = rows.into_iter().map(|r| r.id).collect();
        offload::call(store, move |s| s.outbox_mark_sent(&ids))
            .await
            .map_err(|source| RelayError::Store { what: "marking the outbox", source })?;
    }
}
