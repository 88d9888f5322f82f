//! `labctl`'s client commands: talk to a running `labd` over gRPC. The server and token come
//! from `--url`/`--token` or `LABWRIGHT_URL`/`LABWRIGHT_TOKEN`; every command prints JSON with
//! `--format json`; server errors are shown as sentences.

use anyhow::{anyhow, bail, Context, Result};
use protos::labwright::v1 as pb;

mod args;
mod connection;
mod inventory;
mod kit;
mod output;
mod parquet;
mod plots;
pub use args::{ClientCmd, Conn, ContainerCmd, Fmt, Out, ResultsFormat, StockCmd, TenantCmd, TokenCmd};
pub(crate) use connection::Client;
use connection::{sentence, submit_with_retries};
pub(crate) use output::results_csv;
use output::{json_array, print_reservation, reservation_json, results_verdict, run_json};

/// Runs a client command; returns the exit code.
pub fn run(conn: Conn, cmd: ClientCmd) -> Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(async move {
        let c = Client::connect(&conn).await?;
        match cmd {
            ClientCmd::Submit { out, file, wait, key, class, python } => {
                let json = out.format == Fmt::Json;
                // A Python protocol is analyzed here, on the scientist's machine: the lab gets
                // its commands, never its Python.
                let (source, analyzed) = match crate::opentrons_python::read(&file, false, &python)? {
                    crate::opentrons_python::Read::Source { bytes, analyzed, .. } => (bytes, analyzed),
                    crate::opentrons_python::Read::Refused { python, diagnostics } => {
                        for d in &diagnostics {
                            eprintln!("{}", d.render(&python));
                        }
                        bail!("Opentrons' analyzer refused the protocol; nothing was submitted");
                    }
                };
                let chosen = key.is_some();
                let key = match key {
                    Some(k) => k,
                    None => crate::api::new_token()?.replacen("lw_", "labctl-", 1),
                };
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let format = if analyzed { pb::SourceFormat::Opentrons as i32 } else { 0 };
                let request = pb::SubmitRequest {
                    file_name: name.clone(),
                    source,
                    format,
                    idempotency_key: key.clone(),
                    service_class: class.clone(),
                };
                let resp = submit_with_retries(&c, request).await?;
                let Some(run) = resp.run else {
                    for d in &resp.diagnostics {
                        eprintln!("{name}:{}:{}: {}[{}]: {}", d.line, d.column, if d.severity == pb::Severity::Error as i32 { "error" } else { "warning" }, d.code, d.message);
                    }
                    bail!("the protocol has errors; nothing was submitted");
                };
                if !resp.created && chosen {
                    eprintln!(
                        "labctl: key {key:?} was used before: this is the run it made ({}), not a new one; submit without --key, or with a new one, for a new run",
                        run.state
                    );
                }
                if json {
                    out!("{}", serde_json::json!({"run": run_json(&run), "created": resp.created}));
                } else {
                    out!("{} {} ({})", if resp.created { "submitted" } else { "already submitted as" }, run.id, run.state);
                }
                if wait {
                    return watch(&c, &run.id, 0, json).await;
                }
                Ok(0)
            }
            ClientCmd::Runs { out } => {
                let json = out.format == Fmt::Json;
                // Every page, one after another (a page is a bounded reply, whatever the total).
                let (mut runs, mut page_token) = (Vec::new(), String::new());
                loop {
                    let page = pb::runs_client::RunsClient::new(c.channel.clone())
                        .list(c.req(pb::ListRunsRequest { page_token, ..Default::default() })?)
                        .await
                        .map_err(sentence)?
                        .into_inner();
                    runs.extend(page.runs);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if json {
                    out!("{}", json_array(runs.iter().map(run_json)));
                } else {
                    let at = |ms: i64| crate::clock::rfc3339_opt(ms).unwrap_or_else(|| "-".into());
                    out!("{:<28} {:<12} {:<10} {:<8} {:<20} {:<20} {:<20} NAME REASON", "RUN", "TENANT", "STATE", "CLASS", "SUBMITTED (UTC)", "STARTED", "FINISHED");
                    for r in runs {
                        out!(
                            "{:<28} {:<12} {:<10} {:<8} {:<20} {:<20} {:<20} {} {}",
                            r.id, r.tenant, r.state, r.service_class, at(r.submitted_at_ms), at(r.started_at_ms), at(r.finished_at_ms), r.name, r.reason
                        );
                    }
                }
                Ok(0)
            }
            ClientCmd::Cancel { out, run } => {
                let r = pb::runs_client::RunsClient::new(c.channel.clone()).cancel(c.req(pb::CancelRequest { run_id: run })?).await.map_err(sentence)?.into_inner();
                if out.format == Fmt::Json {
                    out!("{}", run_json(&r));
                } else {
                    out!("{} {}", r.id, r.state);
                }
                Ok(0)
            }
            cmd @ (ClientCmd::Receive { .. }
            | ClientCmd::Ship { .. }
            | ClientCmd::Shipments { .. }
            | ClientCmd::Containers { .. }
            | ClientCmd::Container(_)
            | ClientCmd::Stock { .. }) => {
                inventory::run(&c, cmd).await
            }
            ClientCmd::Kit { out, run, scan, item } => kit::run(&c, run, scan, item, out.format == Fmt::Json).await,
            ClientCmd::Watch { out, run, after } => watch(&c, &run, after, out.format == Fmt::Json).await,
            ClientCmd::Results { run, format, output, plot } => {
                let info = pb::runs_client::RunsClient::new(c.channel.clone()).get(c.req(pb::GetRunRequest { run_id: run.clone() })?).await.map_err(sentence)?.into_inner();
                let rs = pb::runs_client::RunsClient::new(c.channel.clone()).results(c.req(pb::ResultsRequest { run_id: run })?).await.map_err(sentence)?.into_inner().results;
                let bytes = match format {
                    ResultsFormat::Json => {
                        serde_json::Value::Array(rs.iter().map(|r| output::result_json(&info, r)).collect()).to_string().into_bytes()
                    }
                    ResultsFormat::Csv => results_csv(&info, &rs).into_bytes(),
                    ResultsFormat::Parquet => parquet::results_parquet(&crate::results::result_rows(&info, &rs))?,
                };
                match output {
                    Some(p) => std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?,
                    None if format == ResultsFormat::Parquet => {
                        bail!("Parquet is a binary file: give it a name with -o FILE.parquet")
                    }
                    None => out!("{}", String::from_utf8_lossy(&bytes)),
                }
                if let Some(dir) = plot {
                    for line in plots::write(&info, &rs, &dir)? {
                        eprintln!("{line}");
                    }
                }
                let (verdict, code) = results_verdict(&info, rs.len());
                if !verdict.is_empty() {
                    eprintln!("{verdict}");
                }
                Ok(code)
            }
            ClientCmd::Instruments { out } => {
                let list = pb::lab_client::LabClient::new(c.channel.clone()).instruments(c.req(pb::InstrumentsRequest {})?).await.map_err(sentence)?.into_inner().instruments;
                if out.format == Fmt::Json {
                    out!("{}", json_array(list.iter().map(|i| serde_json::json!({"id": i.id, "class": i.class, "state": i.state, "temperature_c": if i.temperature_c.is_nan() { None } else { Some(i.temperature_c) }, "detail": i.detail}))));
                    return Ok(0);
                }
                for i in list {
                    out!("{:<10} {:<15} {:<10} {}", i.id, i.class, i.state, i.detail);
                }
                Ok(0)
            }
            ClientCmd::Interventions { out, all } => {
                let (mut list, mut page_token) = (Vec::new(), String::new());
                loop {
                    let req = pb::InterventionsRequest { include_resolved: all, page_token, ..Default::default() };
                    let page = pb::lab_client::LabClient::new(c.channel.clone())
                        .interventions(c.req(req)?)
                        .await
                        .map_err(sentence)?
                        .into_inner();
                    list.extend(page.interventions);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if out.format == Fmt::Json {
                    out!("{}", json_array(list.iter().map(|i| serde_json::json!({
                        "id": i.id, "run": i.run_id, "tenant": i.tenant, "instrument": i.instrument, "what": i.what, "todo": i.todo,
                        "state": i.state, "created_at": crate::clock::rfc3339_opt(i.created_at_ms),
                        "resolved_at": crate::clock::rfc3339_opt(i.resolved_at_ms), "resolved_by": i.resolved_by,
                        "plates": i.plates,
                    }))));
                    return Ok(0);
                }
                let now = crate::store::now_ms();
                for i in list {
                    let when = if i.state == "open" {
                        format!("waiting {}", protocols::quote::fmt_duration((now - i.created_at_ms).max(0) as f64 / 1000.0))
                    } else {
                        format!("{} by {}", i.state, i.resolved_by)
                    };
                    let plates = if i.plates.is_empty() { String::new() } else { format!(" (plates: {})", i.plates.join(", ")) };
                    out!("{} [{when}] {} run {}: {} — {}{plates}", i.id, i.tenant, i.run_id, i.what, i.todo);
                }
                Ok(0)
            }
            ClientCmd::Resolve { out, id, resolution, reason } => {
                let i = pb::lab_client::LabClient::new(c.channel.clone()).resolve(c.req(pb::ResolveRequest { id, resolution, reason })?).await.map_err(sentence)?.into_inner();
                if out.format == Fmt::Json {
                    out!("{}", serde_json::json!({"id": i.id, "state": i.state}));
                } else {
                    out!("{} {}", i.id, i.state);
                }
                Ok(0)
            }
            ClientCmd::Token(TokenCmd::Revoke { principal }) => {
                pb::admin_client::AdminClient::new(c.channel.clone())
                    .revoke_token(c.req(pb::RevokeTokenRequest { principal_id: principal.clone() })?)
                    .await
                    .map_err(sentence)?;
                out!("revoked {principal}");
                Ok(0)
            }
            ClientCmd::Maintenance { out, instrument, state, reason } => {
                let i = pb::lab_client::LabClient::new(c.channel.clone())
                    .set_maintenance(c.req(pb::SetMaintenanceRequest { instrument, on: state == "on", reason })?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                if out.format == Fmt::Json {
                    out!("{}", serde_json::json!({"id": i.id, "state": i.state, "detail": i.detail}));
                } else {
                    out!("{} {} {}", i.id, i.state, i.detail);
                }
                Ok(0)
            }
            ClientCmd::Halt { out, emergency, reason } => {
                let h = pb::lab_client::LabClient::new(c.channel.clone())
                    .halt(c.req(pb::HaltRequest { emergency, reason })?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                print_halt(&out, &h)?;
                Ok(0)
            }
            ClientCmd::Resume { out } => {
                let h = pb::lab_client::LabClient::new(c.channel.clone())
                    .resume(c.req(pb::ResumeRequest {})?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                print_halt(&out, &h)?;
                Ok(0)
            }
            ClientCmd::Schedule { out } => {
                let mut s = pb::ScheduleResponse::default();
                loop {
                    let req = pb::ScheduleRequest { page_token: std::mem::take(&mut s.next_page_token), ..Default::default() };
                    let page = pb::lab_client::LabClient::new(c.channel.clone()).schedule(c.req(req)?).await.map_err(sentence)?.into_inner();
                    s.slots.extend(page.slots);
                    (s.now_ms, s.next_page_token) = (page.now_ms, page.next_page_token);
                    if s.next_page_token.is_empty() {
                        break;
                    }
                }
                if out.format == Fmt::Json {
                    out!("{}", json_array(s.slots.iter().map(|x| serde_json::json!({"lane": x.lane, "run": x.run_id, "tenant": x.tenant, "kind": x.kind, "label": x.label, "planned_start_ms": x.planned_start_ms, "planned_end_ms": x.planned_end_ms, "started_ms": (x.started_ms > 0).then_some(x.started_ms), "finished_ms": (x.finished_ms > 0).then_some(x.finished_ms), "state": x.state}))));
                    return Ok(0);
                }
                for x in &s.slots {
                    let at = |ms: i64| format!("{:+.1}s", (ms - s.now_ms) as f64 / 1000.0);
                    out!("{:<9} {:<8} {:>9} {:>9} {:<12} {:<28} {}", x.lane, x.state, at(x.planned_start_ms), at(x.planned_end_ms), x.tenant, x.run_id, x.label);
                }
                Ok(0)
            }
            ClientCmd::Durations { out } => {
                let d = pb::lab_client::LabClient::new(c.channel.clone())
                    .durations(c.req(pb::DurationsRequest {})?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                print_durations(&out, &d)?;
                Ok(0)
            }
            ClientCmd::Audit { out, since, limit } => {
                let since_ms = match since.as_deref() {
                    None => 0,
                    Some(d) => crate::clock::day_ms(d).ok_or_else(|| anyhow!("--since {d:?}: give a day as YYYY-MM-DD"))?,
                };
                if !(1..=1000).contains(&limit) {
                    bail!("--limit takes 1 to 1000 entries");
                }
                let a = pb::lab_client::LabClient::new(c.channel.clone())
                    .audit(c.req(pb::AuditRequest { since_ms, limit })?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                if out.format == Fmt::Json {
                    out!("{}", json_array(a.entries.iter().map(|e| serde_json::json!({
                        "at": crate::clock::rfc3339(e.at_ms), "actor": e.actor, "action": e.action,
                        "subject": e.subject, "reason": e.reason, "detail": e.detail,
                    }))));
                    return Ok(0);
                }
                out!("{:<20} {:<24} {:<22} {:<40} {}", "AT (UTC)", "WHO", "ACTION", "SUBJECT", "REASON / DETAIL");
                for e in &a.entries {
                    let why = match (e.reason.is_empty(), e.detail.is_empty()) {
                        (false, false) => format!("{} / {}", e.reason, e.detail),
                        (false, true) => e.reason.clone(),
                        _ => e.detail.clone(),
                    };
                    out!("{:<20} {:<24} {:<22} {:<40} {}", crate::clock::rfc3339(e.at_ms), e.actor, e.action, e.subject, why);
                }
                Ok(0)
            }
            ClientCmd::Usage { out, tenant, since } => {
                let since_ms = match since.as_deref() {
                    None => 0,
                    Some(d) => crate::clock::day_ms(d).ok_or_else(|| anyhow!("--since {d:?}: give a day as YYYY-MM-DD"))?,
                };
                let (mut lines, mut service, mut page_token) = (Vec::new(), Vec::new(), String::new());
                loop {
                    let ask = pb::UsageRequest { tenant: tenant.clone().unwrap_or_default(), since_ms, page_token, ..Default::default() };
                    let page =
                        pb::admin_client::AdminClient::new(c.channel.clone()).usage(c.req(ask)?).await.map_err(sentence)?.into_inner();
                    lines.extend(page.lines);
                    service.extend(page.service);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if out.format == Fmt::Json {
                    let served = service.iter().map(|t| serde_json::json!({
                        "tenant": t.tenant, "runs": t.runs, "mean_slowdown": t.mean_slowdown, "max_slowdown": t.max_slowdown,
                        "promised": t.promised, "promises_kept": t.promises_kept,
                    }));
                    out!("{}", json_array(lines.iter().map(|l| if l.item.is_empty() {
                        serde_json::json!({"tenant": l.tenant, "instrument_class": l.instrument_class, "service_class": l.service_class, "device_hours": l.device_hours, "amount": l.amount})
                    } else {
                        serde_json::json!({"tenant": l.tenant, "item": l.item, "unit": l.unit, "quantity": l.quantity, "amount": l.amount})
                    }).chain(served)));
                    return Ok(0);
                }
                for l in lines {
                    if l.item.is_empty() {
                        let what = format!("{} ({})", l.instrument_class, l.service_class);
                        out!("{:<16} {:<29} {:>10.4} h {:>9.2}", l.tenant, what, l.device_hours, l.amount);
                    } else {
                        let q = protocols::units::trim(l.quantity);
                        out!("{:<16} {:<44} {:>8} {:<4} {:>9.2}", l.tenant, l.item, q, l.unit, l.amount);
                    }
                }
                if !service.is_empty() {
                    out!("\n{:<16} {:>5} {:>14} {:>13} {:>14}", "TENANT", "RUNS", "MEAN SLOWDOWN", "MAX SLOWDOWN", "PROMISES KEPT");
                    for t in &service {
                        let kept = format!("{} of {}", t.promises_kept, t.promised);
                        out!("{:<16} {:>5} {:>14.2} {:>13.2} {:>14}", t.tenant, t.runs, t.mean_slowdown, t.max_slowdown, kept);
                    }
                }
                Ok(0)
            }
            ClientCmd::Reserve { out, tenant, instrument, minutes, in_minutes } => {
                if !(minutes.is_finite() && minutes > 0.0 && in_minutes.is_finite() && in_minutes >= 0.0) {
                    bail!("--for takes a positive number of minutes, --in zero or more");
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
                let start = now + (in_minutes * 60_000.0) as i64;
                let r = pb::admin_client::AdminClient::new(c.channel.clone())
                    .reserve(c.req(pb::ReserveRequest { tenant, instrument, starts_at_ms: start, ends_at_ms: start + (minutes * 60_000.0) as i64 })?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                if out.format == Fmt::Json {
                    out!("{}", reservation_json(&r));
                } else {
                    print_reservation(&r)?;
                }
                Ok(0)
            }
            ClientCmd::Reservations { out, tenant } => {
                let (mut list, mut page_token) = (Vec::new(), String::new());
                loop {
                    let req = pb::ReservationsRequest { tenant: tenant.clone().unwrap_or_default(), page_token, ..Default::default() };
                    let page = pb::admin_client::AdminClient::new(c.channel.clone())
                        .reservations(c.req(req)?)
                        .await
                        .map_err(sentence)?
                        .into_inner();
                    list.extend(page.reservations);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if out.format == Fmt::Json {
                    out!("{}", json_array(list.iter().map(reservation_json)));
                    return Ok(0);
                }
                for r in &list {
                    print_reservation(r)?;
                }
                Ok(0)
            }
            ClientCmd::Tenant(TenantCmd::Quota { out, name, max_runs, device_hours, priority }) => {
                let t = pb::admin_client::AdminClient::new(c.channel.clone())
                    .set_quotas(c.req(pb::SetQuotasRequest { tenant: name, max_concurrent_runs: max_runs, device_hours_per_month: device_hours, priority })?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                if out.format == Fmt::Json {
                    out!("{}", serde_json::json!({"id": t.id, "name": t.name, "max_concurrent_runs": t.max_concurrent_runs, "device_hours_per_month": t.device_hours_per_month, "priority": t.priority}));
                } else {
                    out!("tenant {}: at most {} runs at once, {} device-hours a month, priority {} (0: no limit)", t.name, t.max_concurrent_runs, t.device_hours_per_month, t.priority);
                }
                Ok(0)
            }
            ClientCmd::Tenant(TenantCmd::Add { out, name, weight }) => {
                let json = out.format == Fmt::Json;
                let t = pb::admin_client::AdminClient::new(c.channel.clone()).create_tenant(c.req(pb::CreateTenantRequest { name, weight })?).await.map_err(sentence)?.into_inner();
                if json {
                    out!("{}", serde_json::json!({"id": t.id, "name": t.name, "weight": t.weight}));
                } else {
                    out!("tenant {} ({})", t.name, t.id);
                }
                Ok(0)
            }
            ClientCmd::Token(TokenCmd::Create { out, tenant, role, ttl }) => {
                let json = out.format == Fmt::Json;
                let t = pb::admin_client::AdminClient::new(c.channel.clone())
                    .create_token(c.req(pb::CreateTokenRequest { tenant: tenant.unwrap_or_default(), role, ttl_s: ttl.unwrap_or(0) })?)
                    .await
                    .map_err(sentence)?
                    .into_inner();
                if json {
                    out!("{}", serde_json::json!({"token": t.token, "principal": t.principal_id, "role": t.role, "tenant": t.tenant, "expires_at_ms": (t.expires_at_ms > 0).then_some(t.expires_at_ms), "mqtt": {"host": t.mqtt_host, "port": t.mqtt_port, "username": t.mqtt_username, "password": t.mqtt_password, "topics": t.mqtt_topics}}));
                } else {
                    out!("{}", t.token);
                    eprintln!(
                        "(shown once: store it now)\nMQTT telemetry: mosquitto_sub -h {} -p {} -u {} -P {} -t '{}' -v",
                        t.mqtt_host, t.mqtt_port, t.mqtt_username, t.mqtt_password, t.mqtt_topics
                    );
                }
                Ok(0)
            }
        }
    })
}

async fn watch(c: &Client, run: &str, after: i64, json: bool) -> Result<i32> {
    let mut stream = pb::runs_client::RunsClient::new(c.channel.clone())
        .watch(c.req(pb::WatchRequest { run_id: run.into(), after_seq: after })?)
        .await
        .map_err(sentence)?
        .into_inner();
    let mut last_state = String::new();
    let (mut tasks, mut finished) = (0u64, 0u64);
    while let Some(ev) = stream.message().await.map_err(sentence)? {
        let payload = serde_json::from_str::<serde_json::Value>(&ev.payload_json).unwrap_or_default();
        if json {
            out!("{}", serde_json::json!({"run": ev.run_id, "seq": ev.seq, "kind": ev.kind, "payload": payload}));
        } else {
            match ev.kind.as_str() {
                "scheduled" => tasks = payload["tasks"].as_u64().unwrap_or(0),
                "task_finished" => finished += 1,
                _ => {}
            }
            let bar = match (20 * finished.min(tasks)).checked_div(tasks) {
                Some(filled) => {
                    let filled = filled as usize;
                    format!("[{}{}] {finished}/{tasks} tasks  ", "#".repeat(filled), ".".repeat(20 - filled))
                }
                None => String::new(),
            };
            out!("#{:<4} {bar}{:<16} {}", ev.seq, ev.kind, ev.payload_json);
        }
        if ev.kind == "state" {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&ev.payload_json) {
                last_state = v["state"].as_str().unwrap_or_default().to_string();
            }
        }
    }
    Ok(if last_state == "succeeded" { 0 } else { 1 })
}

/// The lab's halt state, and how long each driver took to take an emergency stop.
fn print_durations(out: &Out, d: &pb::DurationsResponse) -> Result<()> {
    if out.format == Fmt::Json {
        let lines: Vec<serde_json::Value> = d
            .lines
            .iter()
            .map(|l| serde_json::json!({"instrument": l.instrument, "instrument_class": l.instrument_class, "kind": l.kind, "samples": l.samples, "p10": l.p10, "median": l.median, "p90": l.p90, "error_raw": l.error_raw, "error_corrected": l.error_corrected, "factor": l.factor}))
            .collect();
        out!(
            "{}",
            serde_json::json!({"window": d.window, "min_samples": d.min_samples, "min_factor": d.min_factor, "max_factor": d.max_factor, "lines": lines})
        );
        return Ok(());
    }
    if d.lines.is_empty() {
        out!("no task has finished on an instrument yet: plans and quotes use the compiler's estimates");
        return Ok(());
    }
    out!(
        "actual ÷ estimated time per instrument and kind of work (last {} tasks each; estimates are corrected by the median of {} or more, within {}–{}×)",
        d.window, d.min_samples, d.min_factor, d.max_factor
    );
    out!(
        "{:<14} {:<22} {:>7} {:>6} {:>6} {:>6} {:>10} {:>10} {:>7}",
        "instrument",
        "kind",
        "samples",
        "p10",
        "median",
        "p90",
        "error",
        "corrected",
        "factor"
    );
    for l in &d.lines {
        out!(
            "{:<14} {:<22} {:>7} {:>6.2} {:>6.2} {:>6.2} {:>9.1}% {:>9.1}% {:>6.2}×",
            l.instrument,
            l.kind,
            l.samples,
            l.p10,
            l.median,
            l.p90,
            l.error_raw * 100.0,
            l.error_corrected * 100.0,
            l.factor
        );
    }
    Ok(())
}

fn print_halt(out: &Out, h: &pb::HaltResponse) -> Result<()> {
    if out.format == Fmt::Json {
        let stopped: Vec<serde_json::Value> = h
            .stopped
            .iter()
            .map(|d| serde_json::json!({"id": d.id, "elapsed_ms": d.elapsed_ms, "error": (!d.error.is_empty()).then_some(&d.error)}))
            .collect();
        out!("{}", serde_json::json!({"state": h.state, "by": h.by, "reason": h.reason, "stopped": stopped}));
        return Ok(());
    }
    match h.state.as_str() {
        "clear" => out!("lab resumed: commands go out again"),
        state => out!("lab {state} by {}: {}", h.by, h.reason),
    }
    for d in &h.stopped {
        match d.error.as_str() {
            "" => out!("  {:<12} stopped in {:.1} ms", d.id, d.elapsed_ms),
            e => out!("  {:<12} DID NOT CONFIRM THE STOP after {:.1} ms: {e}", d.id, d.elapsed_ms),
        }
    }
    Ok(())
}
