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
    /// How often to look for new rows when idle (rows this process commits wake it at once).
    pub poll: Duration,
    /// Larger payloads are replaced by a summary that says where the data is (gRPC).
    pub max_payload: usize,
    /// The site's name, for the runtime's status topic (retained; the last will says offline).
    pub site: String,
}

/// A payload the broker can carry: the row's own, or, when it is too large, its envelope
/// without the data and a pointer to the gRPC call that has it. Never dropped.
pub fn fit(payload: &str, max: usize) -> String {
    if payload.len() <= max {
        return payload.to_string();
    }
    let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    let mut out = serde_json::json!({
        "truncated": true,
        "bytes": payload.len(),
        "fetch": "gRPC labwright.v1.Runs/Results or Runs/Watch for this run and seq",
    });
    for key in ["v", "tenant", "run", "seq", "ts", "kind", "state"] {
        if let Some(x) = v.get(key) {
            out[key] = x.clone();
        }
    }
    if let Some(id) = v.get("data").and_then(|d| d.get("result")) {
        out["result"] = id.clone();
    }
    out.to_string()
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
) -> Result<(), String> {
    let mut options = MqttOptions::new(
        format!("{}-{}-{connection}", super::RUNTIME_USER, std::process::id()),
        config.host.clone(),
        config.port,
    );
    options.set_credentials(config.username.clone(), config.password.clone());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(true);
    let status_topic = format!("lab/v1/site/{}/runtime/status", config.site);
    let status = |state: &str| serde_json::json!({"v": 1, "state": state}).to_string().into_bytes();
    options.set_last_will(rumqttc::LastWill::new(&status_topic, status("offline"), QoS::AtLeastOnce, true));
    options.set_max_packet_size(config.max_payload + 4096, config.max_payload + 4096);
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
    client
        .publish(status_topic.clone(), QoS::AtLeastOnce, true, status("online"))
        .await
        .map_err(|e| format!("publishing: {e}"))?;
    // Its acknowledgement is awaited here, so it is never counted for a batch.
    loop {
        match tokio::time::timeout(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("connection lost: {e}")),
            Err(_) => return Err("the runtime status was not acknowledged within 10 s".into()),
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
                _ = written.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        for r in &rows {
            let retain = r.topic.ends_with("/state") || r.topic.ends_with("/status");
            client
                .publish(
                    r.topic.clone(),
                    QoS::AtLeastOnce,
                    retain,
                    fit(&r.payload_json, config.max_payload).into_bytes(),
                )
                .await
                .map_err(|e| format!("publishing: {e}"))?;
        }
        let mut acked = 0;
        let expected = rows.len();
        while acked < expected {
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

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn oversize_payloads_are_summarised_not_dropped() {
        let small = r#"{"v":1,"seq":3}"#;
        assert_eq!(fit(small, 100), small);
        let values: Vec<f64> = (0..5000).map(f64::from).collect();
        let big = serde_json::json!({"v": 1, "tenant": "ten_a", "run": "run_b", "seq": 9, "ts": 1, "kind": "result",
            "data": {"result": "res_c", "values": values}})
        .to_string();
        let out: serde_json::Value = serde_json::from_str(&fit(&big, 1000)).unwrap();
        assert!(out.to_string().len() < 1000);
        assert_eq!(out["truncated"], true);
        assert_eq!(
            (out["run"].as_str(), out["seq"].as_i64(), out["result"].as_str()),
            (Some("run_b"), Some(9), Some("res_c"))
        );
        assert_eq!(out["bytes"].as_u64(), Some(big.len() as u64));
        assert!(out["fetch"].as_str().unwrap().contains("gRPC"));
    }
}
