//! `labd demo`: the whole idea in one command. Starts `labd` on the simulated site in
//! accelerated time (embedded broker, console), creates three tenants through the admin API,
//! submits the example protocols for them at once, shows live progress, and ends with a summary.
//! Everything goes through the same gRPC API a real client uses.

use crate::client::{results_csv, Client, Conn};
use crate::serve::{Config, Running};
use protos::labwright::v1 as pb;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The example protocols, compiled in so the demo runs from any directory.
const EXAMPLES: &[(&str, &str)] = &[
    ("elisa.yaml", include_str!("../../../protocols/examples/elisa.yaml")),
    ("serial-dilution.yaml", include_str!("../../../protocols/examples/serial-dilution.yaml")),
    ("pcr-setup.yaml", include_str!("../../../protocols/examples/pcr-setup.yaml")),
    ("normalisation.yaml", include_str!("../../../protocols/examples/normalisation.yaml")),
    ("growth-curve.yaml", include_str!("../../../protocols/examples/growth-curve.yaml")),
];

/// Who submits what: three firms sharing the lab.
const TENANTS: &[(&str, &[&str])] = &[
    ("acme-bio", &["elisa.yaml", "serial-dilution.yaml"]),
    ("globex-pharma", &["pcr-setup.yaml", "normalisation.yaml"]),
    ("initech-labs", &["growth-curve.yaml", "serial-dilution.yaml"]),
];

/// What `labd demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub config: Config,
    /// Keep labd running after the summary, until Ctrl-C.
    pub keep: bool,
}

#[derive(Debug)]
struct DemoRun {
    tenant: String,
    file: String,
    id: String,
    submitted: Instant,
    finished: Option<Instant>,
    state: String,
    reason: String,
}

/// Runs the demo; returns the exit code (0 when every run succeeded).
pub async fn demo(opts: DemoOptions) -> anyhow::Result<i32> {
    let scale = opts.config.time_scale;
    let data_dir = opts.config.data_dir.clone();
    if data_dir.join("labd.sqlite").exists() {
        anyhow::bail!(
            "{} already holds a lab; give the demo a fresh --data-dir (or delete that one)",
            data_dir.display()
        );
    }
    let running = crate::serve::start(opts.config.clone()).await?;
    let outcome = drive(&running, scale, &data_dir).await;
    let code = match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("labd demo: {e}");
            1
        }
    };
    if opts.keep {
        println!("\n--keep: labd keeps running (console and API above); Ctrl-C stops it.");
        crate::serve::wait_for_stop().await;
    }
    running.stop().await?;
    Ok(code)
}

async fn drive(running: &Running, scale: f64, data_dir: &std::path::Path) -> anyhow::Result<i32> {
    let admin_token = running
        .new_admin_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the demo needs a fresh data directory (it creates the admin token)"))?;
    let url = format!("http://{}", running.grpc);
    let admin = Client::connect(&Conn { url: Some(url.clone()), token: Some(admin_token.clone()), ca: None }).await?;
    let mut admin_api = pb::admin_client::AdminClient::new(admin.channel.clone());
    let mut clients = Vec::new();
    let mut mqtt_line = String::new();
    for (name, _) in TENANTS {
        let t = admin_api
            .create_tenant(admin.req(pb::CreateTenantRequest { name: name.to_string(), ..Default::default() })?)
            .await
            .map_err(|s| anyhow::anyhow!("creating tenant {name}: {}", s.message()))?
            .into_inner();
        let token = admin_api
            .create_token(admin.req(pb::CreateTokenRequest {
                tenant: t.name.clone(),
                role: "scientist".into(),
                ..Default::default()
            })?)
            .await
            .map_err(|s| anyhow::anyhow!("creating a token for {name}: {}", s.message()))?
            .into_inner();
        if mqtt_line.is_empty() {
            mqtt_line = format!(
                "mosquitto_sub -h {} -p {} -u {} -P {} -t '{}' -v",
                token.mqtt_host, token.mqtt_port, token.mqtt_username, token.mqtt_password, token.mqtt_topics
            );
        }
        let c = Client::connect(&Conn { url: Some(url.clone()), token: Some(token.token), ca: None }).await?;
        clients.push((name.to_string(), c));
    }
    println!(
        "\nLabwright demo: {} tenants share one simulated lab (time runs {:.0}x faster)",
        TENANTS.len(),
        1.0 / scale
    );
    if let Some(console) = &running.console {
        println!("  console:   {console}  (sign in with the admin token {admin_token})");
    }
    println!("  telemetry: {} sees only its own runs:\n    {mqtt_line}", TENANTS[0].0);
    println!("  data:      {}", data_dir.display());
    println!("  (with --keep the lab stays up after the summary, for the console and the API)\n");

    // Every tenant submits its protocols at the same moment.
    let mut submissions = Vec::new();
    for ((name, files), (_, c)) in TENANTS.iter().zip(&clients) {
        for file in files.iter() {
            let source =
                EXAMPLES.iter().find(|(f, _)| f == file).map(|(_, s)| s.as_bytes().to_vec()).unwrap_or_default();
            let req = c.req(pb::SubmitRequest {
                file_name: file.to_string(),
                source,
                format: 0,
                idempotency_key: format!("demo-{name}-{file}"),
                service_class: String::new(),
            })?;
            let mut runs = pb::runs_client::RunsClient::new(c.channel.clone());
            let (name, file) = (name.to_string(), file.to_string());
            submissions.push(tokio::spawn(async move {
                let r = runs.submit(req).await;
                (name, file, r)
            }));
        }
    }
    let mut runs = Vec::new();
    for s in submissions {
        let (tenant, file, r) = s.await?;
        let run = r.map_err(|s| anyhow::anyhow!("{tenant} could not submit {file}: {}", s.message()))?.into_inner().run;
        let run = run.ok_or_else(|| anyhow::anyhow!("{file} did not compile"))?;
        runs.push(DemoRun {
            tenant,
            file,
            id: run.id,
            submitted: Instant::now(),
            finished: None,
            state: run.state,
            reason: String::new(),
        });
    }

    // The demo's technician does the manual steps (moving a plate to the thermocycler, say)
    // when the lab asks, the way a person answers an intervention in the console.
    let technician_log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let technician = {
        let tech =
            Client::connect(&Conn { url: Some(url.clone()), token: Some(admin_token.clone()), ca: None }).await?;
        let log = technician_log.clone();
        tokio::spawn(async move {
            let mut lab = pb::lab_client::LabClient::new(tech.channel.clone());
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Ok(req) = tech.req(pb::InterventionsRequest { include_resolved: false, ..Default::default() })
                else {
                    continue;
                };
                let Ok(list) = lab.interventions(req).await else { continue };
                for i in list.into_inner().interventions {
                    if i.what != "manual step" {
                        continue; // faults stay for a person to look at
                    }
                    let Ok(req) = tech.req(pb::ResolveRequest {
                        id: i.id.clone(),
                        resolution: "done".into(),
                        reason: String::new(),
                    }) else {
                        continue;
                    };
                    if lab.resolve(req).await.is_ok() {
                        crate::lock(&log).push(format!("{}: {}", short(&i.run_id), i.todo));
                    }
                }
            }
        })
    };
    let began = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0;
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        for (name, c) in &clients {
            let list = pb::runs_client::RunsClient::new(c.channel.clone())
                .list(c.req(pb::ListRunsRequest::default())?)
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .runs;
            for info in list {
                if let Some(r) = runs.iter_mut().find(|r| r.id == info.id && &r.tenant == name) {
                    let final_state = matches!(info.state.as_str(), "succeeded" | "failed" | "cancelled");
                    if final_state && r.finished.is_none() {
                        r.finished = Some(Instant::now());
                    }
                    r.state = info.state;
                    r.reason = info.reason;
                }
            }
        }
        let all_done = runs.iter().all(|r| r.finished.is_some());
        let slots = running.board.schedule();
        if tty {
            let text = progress(&runs, &slots, began.elapsed(), scale, &crate::lock(&technician_log));
            if drawn > 0 {
                print!("\x1b[{drawn}A");
            }
            drawn = text.lines().count();
            print!("{text}");
            let _ = std::io::stdout().flush();
        } else if all_done || last_line.elapsed() >= Duration::from_secs(5) {
            let done = runs.iter().filter(|r| r.finished.is_some()).count();
            println!("progress: {done} of {} runs finished after {:.1} s", runs.len(), began.elapsed().as_secs_f64());
            last_line = Instant::now();
        }
        if all_done {
            technician.abort();
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Results, one CSV per run, where the summary says.
    let results_dir = data_dir.join("results");
    std::fs::create_dir_all(&results_dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", results_dir.display()))?;
    for r in runs.iter().filter(|r| r.state == "succeeded") {
        let Some((_, c)) = clients.iter().find(|(n, _)| *n == r.tenant) else { continue };
        let rs = pb::runs_client::RunsClient::new(c.channel.clone())
            .results(c.req(pb::ResultsRequest { run_id: r.id.clone() })?)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner()
            .results;
        if !rs.is_empty() {
            let path = results_dir.join(format!("{}-{}.csv", r.tenant, short(&r.id)));
            let info = pb::RunInfo { id: r.id.clone(), name: r.file.clone(), ..Default::default() };
            std::fs::write(&path, results_csv(&info, &rs))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
    }
    for t in crate::lock(&technician_log).iter() {
        println!("technician (simulated) did a manual step for run {t}");
    }
    let summary = summary(&runs, &running.board.schedule(), scale, &results_dir);
    println!("\n{}", summary.text);
    let path = data_dir.join("summary.json");
    std::fs::write(&path, summary.json.to_string())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    println!("summary as JSON: {}", path.display());
    Ok(if runs.iter().all(|r| r.state == "succeeded") { 0 } else { 1 })
}

fn short(id: &str) -> String {
    crate::store::run_prefix(id)
}

/// Device time, readable: "2 h 05 min", "4 min 10 s".
fn device_time(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

fn bar(fraction: f64, width: usize) -> String {
    let full = ((fraction.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

/// Busy milliseconds per lane, up to `now_ms`, from what really ran.
fn busy_ms(slots: &[crate::board::Slot], now_ms: i64) -> BTreeMap<String, i64> {
    let mut busy: BTreeMap<String, i64> = BTreeMap::new();
    for s in slots {
        if let Some(start) = s.started_ms {
            *busy.entry(s.lane.clone()).or_default() += (s.finished_ms.unwrap_or(now_ms) - start).max(0);
        } else {
            busy.entry(s.lane.clone()).or_default();
        }
    }
    busy
}

fn progress(
    runs: &[DemoRun],
    slots: &[crate::board::Slot],
    elapsed: Duration,
    scale: f64,
    technician: &[String],
) -> String {
    let mut out = format!("\x1b[2K{} device time elapsed\n", device_time(elapsed.as_secs_f64() / scale));
    for r in runs {
        let mine: Vec<_> = slots.iter().filter(|s| s.run_id == r.id).collect();
        let done = mine.iter().filter(|s| s.finished_ms.is_some()).count();
        let fraction = if r.finished.is_some() { 1.0 } else { done as f64 / mine.len().max(1) as f64 };
        out.push_str(&format!(
            "\x1b[2K  {:<14} {:<21} {} {:>3.0}% {}\n",
            r.tenant,
            r.file,
            bar(fraction, 24),
            fraction * 100.0,
            r.state
        ));
    }
    let now = crate::store::now_ms();
    let first = slots.iter().filter_map(|s| s.started_ms).min().unwrap_or(now);
    let span = (now - first).max(1) as f64;
    let busy = busy_ms(slots, now);
    out.push_str("\x1b[2K  utilisation so far: ");
    let shown: Vec<String> =
        busy.iter().map(|(lane, ms)| format!("{lane} {:.0}%", 100.0 * *ms as f64 / span)).collect();
    out.push_str(&shown.join(" · "));
    out.push('\n');
    out.push_str(&format!(
        "\x1b[2K  manual steps done by the demo's technician: {}\n",
        technician.last().map_or("none yet".to_string(), |t| format!("{} (last: {t})", technician.len()))
    ));
    out
}

struct Summary {
    text: String,
    json: serde_json::Value,
}

fn summary(runs: &[DemoRun], slots: &[crate::board::Slot], scale: f64, results: &std::path::Path) -> Summary {
    let first = slots.iter().filter_map(|s| s.started_ms).min().unwrap_or(0);
    let last = slots.iter().filter_map(|s| s.finished_ms).max().unwrap_or(first);
    let makespan_s = (last - first) as f64 / 1000.0 / scale;
    let busy = busy_ms(slots, last);
    let succeeded = runs.iter().filter(|r| r.state == "succeeded").count();
    let mut text = format!(
        "Summary\n  runs:      {succeeded} of {} succeeded\n  makespan:  {} device time ({:.1} s wall at time scale {scale})\n",
        runs.len(),
        device_time(makespan_s),
        (last - first) as f64 / 1000.0
    );
    for r in runs.iter().filter(|r| r.state != "succeeded") {
        text.push_str(&format!("  {} {} {}: {}\n", r.tenant, r.file, r.state, r.reason));
    }
    text.push_str("  turnaround per tenant (submitted → last run finished, device time):\n");
    let mut tenants = serde_json::Map::new();
    for (name, _) in TENANTS {
        let mine: Vec<&DemoRun> = runs.iter().filter(|r| r.tenant == *name).collect();
        let turnaround = mine
            .iter()
            .filter_map(|r| r.finished.map(|f| f.duration_since(r.submitted).as_secs_f64() / scale))
            .fold(0.0, f64::max);
        text.push_str(&format!("    {name:<14} {} runs  {}\n", mine.len(), device_time(turnaround)));
        tenants.insert(
            name.to_string(),
            serde_json::json!({"runs": mine.len(), "succeeded": mine.iter().filter(|r| r.state == "succeeded").count(), "turnaround_s": turnaround}),
        );
    }
    text.push_str("  utilisation per instrument and arm (busy ÷ makespan):\n");
    let span = (last - first).max(1) as f64;
    let mut utilisation = serde_json::Map::new();
    for (lane, ms) in &busy {
        let u = *ms as f64 / span;
        text.push_str(&format!("    {lane:<12} {} {:>3.0}%\n", bar(u, 20), u * 100.0));
        utilisation.insert(lane.clone(), serde_json::json!(u));
    }
    text.push_str(&format!("  results:   {} (one CSV per run with measurements)\n", results.display()));
    let json = serde_json::json!({
        "runs": runs.len(),
        "succeeded": succeeded,
        "makespan_s": makespan_s,
        "tenants": tenants,
        "utilisation": utilisation,
        "results_dir": results.display().to_string(),
        "run_states": runs.iter().map(|r| serde_json::json!({"tenant": r.tenant, "file": r.file, "id": r.id, "state": r.state, "reason": r.reason})).collect::<Vec<_>>(),
    });
    Summary { text, json }
}

/// A fresh directory for the demo's data.
pub fn fresh_data_dir() -> PathBuf {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    std::env::temp_dir().join(format!("labwright-demo-{stamp}-{}", std::process::id()))
}
