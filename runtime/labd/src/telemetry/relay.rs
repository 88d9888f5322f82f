//! The relay: publishes the outbox to the MQTT broker at QoS 1 and marks rows sent only once
//! the broker has acknowledged every row of the batch. A lost connection or a restart leaves
//! unacknowledged rows unsent, so they are published again: at least once, duplicates carry the
//! same `(run, seq)`. Each connection starts clean, so no acknowledgement from an earlier
//! connection is ever counted for a later batch.

use crate::store::Store;
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
    /// How often to look for new rows when idle.
    pub poll: Duration,
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
                eprintln!("labd: telemetry broker {}:{}: {why}; retrying in {backoff:?}", config.host, config.port);
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
) -> Result<(), String> {
    let mut options = MqttOptions::new(
        format!("{}-{}-{connection}", super::RUNTIME_USER, std::process::id()),
        config.host.clone(),
        config.port,
    );
    options.set_credentials(config.username.clone(), config.password.clone());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, config.batch + 16);
    let deadline = Duration::from_secs(10);
    loop {
        match tokio::time::timeout(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
            Err(_) => return Err("no CONNACK within 10 s".into()),
        }
    }
    loop {
        if *stop.borrow() {
            let _ = client.disconnect().await;
            return Ok(());
        }
        let s = store.clone();
        let batch = config.batch;
        let rows = tokio::task::spawn_blocking(move || s.outbox_pending(batch))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the outbox: {e}"))?;
        if rows.is_empty() {
            // Idle: keep the connection serviced (pings) until it is time to look again.
            tokio::select! {
                r = tokio::time::timeout(config.poll, events.poll()) => {
                    if let Ok(Err(e)) = r {
                        return Err(format!("connection lost: {e}"));
                    }
                }
                _ = stop.changed() => {}
            }
            continue;
        }
        for r in &rows {
            let retain = r.topic.ends_with("/state") || r.topic.ends_with("/status");
            client
                .publish(r.topic.clone(), QoS::AtLeastOnce, retain, r.payload_json.clone().into_bytes())
                .await
                .map_err(|e| format!("publishing: {e}"))?;
        }
        let mut acked = 0;
        while acked < rows.len() {
            match tokio::time::timeout(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(format!("connection lost with {} of {} acknowledged: {e}", acked, rows.len()))
                }
                Err(_) => {
                    return Err(format!("{} of {} publishes unacknowledged after 10 s", rows.len() - acked, rows.len()))
                }
            }
        }
        let ids: Vec<String> = rows.into_iter().map(|r| r.id).collect();
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.outbox_mark_sent(&ids))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("marking the outbox: {e}"))?;
    }
}
