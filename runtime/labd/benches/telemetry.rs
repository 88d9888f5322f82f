//! Telemetry benchmark: from the commit of an event to a tenant's MQTT subscriber, through the
//! outbox, the relay and the embedded broker, with 50 tenants subscribed to their own subtrees.
//!
//! - Latency: events committed one at a time at a steady rate (RATE per second, spread over the
//!   tenants' runs); each carries its commit time, each subscriber notes when it arrives:
//!   p50/p99 of commit → receipt.
//! - Throughput: a backlog of BURST events committed as fast as the store takes them (WRITERS
//!   threads, as many instruments' jobs would);
//!   messages delivered per second from the first commit to the last receipt, beside the commit
//!   rate on its own.
//!
//! Runs stay queued (the tenants' concurrent-run quota is 0), so the executor adds nothing.
//! `cargo bench -p labd --bench telemetry` (TENANTS, RATE, SECONDS, BURST, WRITERS).

use labd::store::{NewRun, Store};
use protos::labwright::v1 as pb;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Receipt times (µs since `epoch`) by the sent time each message carries.
type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

async fn subscribe(port: u16, user: String, pass: String, topic: String, epoch: Instant, seen: Seen) {
    let mut o = MqttOptions::new(format!("bench-{user}"), "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(o, 256);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    tokio::spawn(async move {
        let _keep = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let now = epoch.elapsed().as_micros() as u64;
                    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(sent) = v["data"]["sent_us"].as_u64() {
                        seen.lock().unwrap().push((sent, now));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
}

fn main() {
    let tenants = env("TENANTS", 50);
    let rate = env("RATE", 500);
    let seconds = env("SECONDS", 10);
    let burst = env("BURST", 20_000);
    let writers = env("WRITERS", 32);
    let dir = std::env::temp_dir().join(format!("lw-telemetry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = labd::serve::Config {
            data_dir: dir.join("data"),
            listen: format!("127.0.0.1:{}", free_port()),
            mqtt_port: free_port(),
            console_listen: "off".into(),
            time_scale: 0.001,
            ..labd::serve::Config::default()
        };
        let running = labd::serve::start(config).await.unwrap();
        let store: Arc<dyn Store> = running.store.clone();
        let admin = running.new_admin_token.clone().unwrap();
        let mut api = pb::admin_client::AdminClient::connect(format!("http://{}", running.grpc)).await.unwrap();
        let epoch = Instant::now();
        let seen: Seen = Arc::default();
        let mut runs = Vec::new();
        for i in 0..tenants {
            let name = format!("tenant{i}");
            let t = api
                .create_tenant(authed(&admin, pb::CreateTenantRequest { name: name.clone(), ..Default::default() }))
                .await
                .unwrap()
                .into_inner();
            store.set_quotas(&t.id, Some(0), None, 0).unwrap();
            let token = api
                .create_token(authed(
                    &admin,
                    pb::CreateTokenRequest { tenant: name, role: "scientist".into(), ..Default::default() },
                ))
                .await
                .unwrap()
                .into_inner();
            let topic = labd::telemetry::tenant_subtree(&t.id);
            subscribe(running.mqtt.1, token.mqtt_username, token.mqtt_password, topic, epoch, seen.clone()).await;
            let run = NewRun {
                tenant_id: t.id.clone(),
                idempotency_key: format!("k{i}"),
                name: "bench".into(),
                source: "bench".into(),
                plan_json: "{}".into(),
                priority: 0,
                class: Default::default(),
            };
            runs.push(store.submit_run(&run).unwrap().0.id);
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // subscriptions settle
        seen.lock().unwrap().clear();

        // Latency at a steady rate.
        let n = rate * seconds;
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        let start = tokio::time::Instant::now();
        for k in 0..n {
            tokio::time::sleep_until(start + gap * k as u32).await;
            let (s, run) = (store.clone(), runs[k % runs.len()].clone());
            let sent = epoch.elapsed().as_micros() as u64;
            tokio::task::spawn_blocking(move || {
                s.append_event(&run, "bench", &serde_json::json!({"sent_us": sent}).to_string()).unwrap()
            })
            .await
            .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = std::mem::take(&mut *seen.lock().unwrap());
        let mut lat: Vec<f64> = got.iter().map(|(s, r)| r.saturating_sub(*s) as f64 / 1000.0).collect();
        println!(
            "latency, {tenants} tenants, {rate} events/s for {seconds} s: {} of {n} delivered; commit → subscriber p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            got.len(),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );

        // Throughput: a backlog committed as fast as the store takes it, first through labd's
        // own store (group commit), then, as the baseline, through a second handle on the same
        // database that commits each event alone (the relay finds those rows by polling).
        let ungrouped: Arc<dyn Store> = Arc::new(
            labd::store::sqlite::SqliteStore::open(&dir.join("data/labd.sqlite")).unwrap().with_group_commit(false),
        );
        for (what, store) in [("group commit", store.clone()), ("one transaction per event", ungrouped)] {
            seen.lock().unwrap().clear();
            let t0 = Instant::now();
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let (s, runs) = (store.clone(), runs.clone());
                    std::thread::spawn(move || {
                        for k in (w..burst).step_by(writers) {
                            let sent = epoch.elapsed().as_micros() as u64;
                            let payload = serde_json::json!({"sent_us": sent}).to_string();
                            s.append_event(&runs[k % runs.len()], "bench", &payload).unwrap();
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(|w| w.join().unwrap());
            let committed = t0.elapsed();
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.lock().unwrap().len() < burst && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let all = t0.elapsed();
            let delivered = seen.lock().unwrap().len();
            println!(
                "throughput ({what}), {burst} events from {writers} writers: committed in {:.2} s ({:.0}/s); {delivered} delivered in {:.2} s from the first commit ({:.0} messages/s)",
                committed.as_secs_f64(),
                burst as f64 / committed.as_secs_f64(),
                all.as_secs_f64(),
                delivered as f64 / all.as_secs_f64()
            );
        }
        running.stop().await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
