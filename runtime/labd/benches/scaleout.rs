//! Scale-out benchmark: real `labd` processes on one PostgreSQL (1, 2 and 3 nodes, each driving
//! its share of a three-cell site) against one node on SQLite; and the cost of a failover.
//!
//! Submit throughput: 4 clients submit RUNS small runs over gRPC, spread over the nodes.
//! Dispatch throughput: runs carried out to `succeeded` per second of wall time (a run that
//! fails is counted apart and its reason printed), at a time
//! scale where device time is negligible, so the figure is the runtime's own overhead
//! (planning, journaling every command, the store). Failover: kill -9 of the node driving a
//! cell until a standby drives it (lease 3 s).
//!
//! `cargo bench -p labd --bench scaleout` (RUNS=N; KEEP=1 keeps the nodes' logs; needs
//! PostgreSQL at 127.0.0.1:5432).

use protos::labwright::v1 as pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The two-cell site with a third cell (a copy of cell a).
fn three_cells(dir: &Path) -> PathBuf {
    let two = std::fs::read_to_string(root().join("sites/two-cells.toml")).unwrap();
    let start = two.find("[[instrument]]\nid = \"hotel_a\"").unwrap();
    let end = two.find("[[instrument]]\nid = \"hotel_b\"").unwrap();
    let cell_c = two[start..end].replace("_a\"", "_c\"").replace("_a,", "_c,");
    let cell_c = cell_c.replace("\"hotel_a\", \"lh_a\", \"reader_a\"", "\"hotel_c\", \"lh_c\", \"reader_c\"");
    let with_c = two.replacen(
        "[[cell]]",
        &format!(
            "{cell_c}[[cell]]\nid = \"c\"\nmembers = [\"hotel_c\", \"lh_c\", \"reader_c\", \"arm_c\"]\n\n[[cell]]"
        ),
        1,
    );
    let file = dir.join("three-cells.toml");
    std::fs::write(&file, with_c).unwrap();
    labware::Site::from_toml(&std::fs::read_to_string(&file).unwrap()).expect("three-cell site");
    file
}

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    proc: Proc,
    url: String,
    log: PathBuf,
}

fn start_node(dir: &Path, name: &str, site: &Path, db: Option<&str>, cells: &[&str]) -> Node {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let cells = cells.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let database = db.map(|d| format!("database = \"{d}\"\n")).unwrap_or_default();
    let config = format!(
        "data_dir = {data:?}\nlisten = \"{listen}\"\nsite = {site:?}\ntime_scale = 0.00001\n{database}node = \"{name}\"\ncells = [{cells}]\nlease_ms = 3000\nconsole_listen = \"off\"\nmqtt_port = 0\nmqtt_publish = false\n"
    );
    std::fs::write(data.join("labd.toml"), config).unwrap();
    let log = data.join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let proc = Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
            .args(["serve", "--config"])
            .arg(data.join("labd.toml"))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let node = Node { proc, url: format!("http://{listen}"), log };
    wait_for(&node, "gRPC API on", Duration::from_secs(60));
    node
}

fn wait_for(node: &Node, what: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    while !std::fs::read_to_string(&node.log).unwrap_or_default().contains(what) {
        assert!(t.elapsed() < limit, "no `{what}`: {}", std::fs::read_to_string(&node.log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed()
}

fn req<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

struct Figures {
    submit_per_s: f64,
    done_per_s: f64,
    /// Why runs that did not succeed ended (reported, never hidden).
    failed: Vec<String>,
}

/// Submits `runs` runs from 4 clients round-robin over the nodes; waits until all succeeded.
async fn drive(nodes: &[&Node], admin: &str, source: &str, runs: usize) -> Figures {
    let channel = |url: &str| tonic::transport::Channel::from_shared(url.to_string()).unwrap().connect_lazy();
    let mut admin_client = pb::admin_client::AdminClient::new(channel(&nodes[0].url));
    admin_client
        .create_tenant(req(admin, pb::CreateTenantRequest { name: "bench".into(), weight: 1.0 }))
        .await
        .unwrap();
    let token = admin_client
        .create_token(req(
            admin,
            pb::CreateTokenRequest { tenant: "bench".into(), role: "scientist".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    let began = Instant::now();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (urls, token, source) =
            (nodes.iter().map(|n| n.url.clone()).collect::<Vec<_>>(), token.clone(), source.to_string());
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (c..runs).step_by(4) {
                let mut client = pb::runs_client::RunsClient::new(channel(&urls[i % urls.len()]));
                let r = client
                    .submit(req(
                        &token,
                        pb::SubmitRequest {
                            file_name: "sd.yaml".into(),
                            source: source.clone().into_bytes(),
                            format: 0,
                            idempotency_key: format!("bench-{i}"),
                            service_class: String::new(),
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                ids.push(r.run.unwrap().id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.unwrap());
    }
    let submitted = began.elapsed();
    let mut client = pb::runs_client::RunsClient::new(channel(&nodes[0].url));
    let failed = loop {
        let all = client.list(req(&token, pb::ListRunsRequest::default())).await.unwrap().into_inner().runs;
        let over: Vec<_> =
            all.iter().filter(|r| ["succeeded", "failed", "cancelled"].contains(&r.state.as_str())).collect();
        if over.len() == runs {
            break over.iter().filter(|r| r.state != "succeeded").map(|r| r.reason.clone()).collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let finished = began.elapsed();
    Figures {
        submit_per_s: runs as f64 / submitted.as_secs_f64(),
        done_per_s: (runs - failed.len()) as f64 / finished.as_secs_f64(),
        failed,
    }
}

fn scratch_db(tag: &str) -> (String, impl Drop) {
    struct Drops(String);
    impl Drop for Drops {
        fn drop(&mut self) {
            if let Ok(mut c) = postgres::Client::connect(&format!("{SERVER}/postgres"), postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
            }
        }
    }
    let name = format!("lw_bench_{tag}_{}", std::process::id());
    let mut c = postgres::Client::connect(&format!("{SERVER}/postgres"), postgres::NoTls).unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    (format!("{SERVER}/{name}"), Drops(name))
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let source = std::fs::read_to_string(root().join("protocols/examples/normalisation.yaml")).unwrap();
    let base = std::env::temp_dir().join(format!("lw-bench-scaleout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let site = three_cells(&base);
    println!("{runs} runs of normalisation.yaml (64 commands, 2 tasks) per setup; 4 clients; time scale 1e-5");
    println!("{:<26} {:>12} {:>16} {:>8}", "setup", "submit/s", "succeeded/s", "failed");
    // (label, PostgreSQL database tag, each node's cells)
    type Layout<'a> = (&'a str, Option<usize>, Vec<Vec<&'a str>>);
    let layouts: [Layout; 4] = [
        ("SQLite, 1 node", None, vec![vec!["a", "b", "c"]]),
        ("PostgreSQL, 1 node", Some(1), vec![vec!["a", "b", "c"]]),
        ("PostgreSQL, 2 nodes", Some(2), vec![vec!["a", "b"], vec!["c"]]),
        ("PostgreSQL, 3 nodes", Some(3), vec![vec!["a"], vec!["b"], vec!["c"]]),
    ];
    for (label, pg, layout) in layouts {
        let dir = base.join(label.replace([' ', ','], ""));
        let db = pg.map(|n| scratch_db(&format!("n{n}")));
        let nodes: Vec<Node> = layout
            .iter()
            .enumerate()
            .map(|(i, cells)| start_node(&dir, &format!("n{i}"), &site, db.as_ref().map(|d| d.0.as_str()), cells))
            .collect();
        let admin = std::fs::read_to_string(dir.join("n0/admin.token")).unwrap().trim().to_string();
        let refs: Vec<&Node> = nodes.iter().collect();
        let f = rt.block_on(drive(&refs, &admin, &source, runs));
        println!("{label:<26} {:>12.1} {:>16.2} {:>8}", f.submit_per_s, f.done_per_s, f.failed.len());
        for why in &f.failed {
            println!("    failed: {why}");
        }
        drop(nodes);
    }

    // Failover: the node driving cell a is killed; a standby for it takes over.
    let dir = base.join("failover");
    let mut took = Vec::new();
    for round in 0..5 {
        let (db, _drop) = scratch_db(&format!("fo{round}"));
        let mut active = start_node(&dir.join(round.to_string()), "active", &site, Some(&db), &["a"]);
        wait_for(&active, "cell a: driving it", Duration::from_secs(30));
        let standby = start_node(&dir.join(round.to_string()), "standby", &site, Some(&db), &["a"]);
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        active.proc.0.kill().unwrap();
        let _ = active.proc.0.wait();
        while !std::fs::read_to_string(&standby.log).unwrap_or_default().contains("cell a: driving it") {
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push(killed.elapsed());
    }
    took.sort();
    println!(
        "failover (kill -9 to standby driving, lease 3 s, 5 rounds): median {:.2} s, min {:.2} s, max {:.2} s",
        took[2].as_secs_f64(),
        took[0].as_secs_f64(),
        took[4].as_secs_f64()
    );
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
}
