//! Runtime benchmarks: executor overhead per command (zero-latency simulators over the real
//! wire, durable journaling in an on-disk SQLite store) and submit throughput over loopback gRPC.
//!
//! `cargo bench -p labd --bench runtime` (SUBMITS=N to change the sample size).

use labd::api::{token_hash, Api};
use labd::executor::{Executor, ExecutorConfig};
use labd::store::{sqlite::SqliteStore, Role, Store};
use protos::labwright::v1 as pb;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pct(mut v: Vec<Duration>, q: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let source = std::fs::read_to_string(root.join("protocols/examples/serial-dilution.yaml")).unwrap();
    let site = labware::Site::sim().unwrap();
    let plan = protocols::compile(
        &protocols::SourceFile::new("sd.yaml", source.clone()),
        protocols::Format::Auto,
        &site,
        &labware::Library::shipped(),
    )
    .plan
    .unwrap();
    let dir = std::env::temp_dir().join(format!("lw-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    rt.block_on(async {
        // 1. Executor overhead per command.
        let scale = devices::TimeScale(1e-9);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("exec.sqlite")).unwrap());
        let lab = Arc::new(labd::lab::Lab::simulated(site.clone(), scale).await.unwrap());
        let timings = Arc::new(Mutex::new(Vec::new()));
        let flushes = Arc::new(Mutex::new(Vec::new()));
        let config = ExecutorConfig {
            scale,
            timings: Some(timings.clone()),
            flush_timings: Some(flushes.clone()),
            ..ExecutorConfig::default()
        };
        let ex = Executor::new(store.clone(), lab, config);
        let t = store.create_tenant("bench", 1.0).unwrap();
        for i in 0..3 {
            ex.submit(&t.id, &format!("k{i}"), "sd", "sd.yaml", &plan).unwrap();
            let started = Instant::now();
            let report = ex.run_queued().await.unwrap();
            assert!(report.runs.iter().all(|r| r.1 == labd::store::RunState::Succeeded), "{:?}", report.runs);
            let v = std::mem::take(&mut *timings.lock().unwrap());
            println!("executor run {i}: {} commands in {:.2} s wall", v.len(), started.elapsed().as_secs_f64());
            labd::executor::print_timings(&v);
            let f = std::mem::take(&mut *flushes.lock().unwrap());
            if !f.is_empty() {
                println!(
                    "  + {} end-of-task outcome writes: p50 {:.0} µs p99 {:.0} µs",
                    f.len(),
                    pct(f.clone(), 0.5),
                    pct(f, 0.99)
                );
            }
        }

        // Baseline in the same run, same disk: journaling one command as two durable writes
        // (intent, then outcome) against one (the previous outcome with the next intent).
        let run = ex.submit(&t.id, "journal-baseline", "sd", "sd.yaml", &plan).unwrap();
        let intent = labd::store::Intent {
            run_id: run.id.clone(),
            task_id: 0,
            command_index: 0,
            instrument: "lh1".into(),
            op_json: "{}".into(),
            repeatable: false,
        };
        for round in 0..3 {
            let (mut two, mut one) = (Vec::new(), Vec::new());
            let mut previous: Option<String> = None;
            for _ in 0..600 {
                let t0 = Instant::now();
                let a = store.record_intent(&intent).unwrap();
                store.record_outcome(&a.id, "ok", None).unwrap();
                two.push(t0.elapsed());
                let t0 = Instant::now();
                let a = store.record_ok_then_intent(previous.as_deref(), &intent).unwrap();
                one.push(t0.elapsed());
                previous = Some(a.id);
            }
            println!(
                "journal round {round}: two writes per command p50 {:.0} µs p99 {:.0} µs; one write p50 {:.0} µs p99 {:.0} µs",
                pct(two.clone(), 0.5),
                pct(two, 0.99),
                pct(one.clone(), 0.5),
                pct(one, 0.99)
            );
        }

        // 2. Submit throughput over loopback gRPC.
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("api.sqlite")).unwrap());
        let tenant = store.create_tenant("bench", 1.0).unwrap();
        store.create_principal(Some(&tenant.id), Role::Scientist, &token_hash("bench-token"), None).unwrap();
        let api = Api { store: store.clone(), site: std::sync::Arc::new(site.clone()), library: std::sync::Arc::new(labware::Library::shipped()), lab: Default::default(), board: None, time_scale: 1.0, mqtt_broker: None, embedded_broker: None, kitting: Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::runs_server::RunsServer::new(api))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let n: usize = std::env::var("SUBMITS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
        for round in 0..3 {
            let started = Instant::now();
            let mut handles = Vec::new();
            for w in 0..8 {
                let (ch, src) = (channel.clone(), source.clone());
                handles.push(tokio::spawn(async move {
                    let mut c = pb::runs_client::RunsClient::new(ch);
                    let mut lat = Vec::new();
                    for i in (w..n).step_by(8) {
                        let mut req = tonic::Request::new(pb::SubmitRequest {
                            file_name: "sd.yaml".into(),
                            source: src.clone().into_bytes(),
                            format: 0,
                            idempotency_key: format!("r{round}-{i}"),
                            service_class: String::new(),
                        });
                        req.metadata_mut().insert("authorization", "Bearer bench-token".parse().unwrap());
                        let t = Instant::now();
                        let r = c.submit(req).await.unwrap().into_inner();
                        assert!(r.created);
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for h in handles {
                lat.extend(h.await.unwrap());
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "submit round {round}: {n} submits (compile + store) by 8 clients in {secs:.2} s = {:.0}/s; latency p50 {:.1} ms p99 {:.1} ms",
                n as f64 / secs,
                pct(lat.clone(), 0.5) / 1000.0,
                pct(lat, 0.99) / 1000.0
            );
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
