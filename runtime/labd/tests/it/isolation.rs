//! The canary isolation test: one tenant's overrunning, cancelled, re-planned work, and nothing of it reaches another tenant.

use super::*;

/// A manual step nobody has done yet does not stall the lab: once it runs past its planned end
/// the plan is repaired around it, another tenant's run that needs the same arms completes
/// meanwhile, and the waiting run is told why its end moved.
///
/// It is also the canary isolation test: acme's protocol carries a canary in every free-text
/// place and in its idempotency key; its run overruns and goes to intervention, a second one is
/// cancelled, and globex's ELISA, whose manual steps need the lab's one technician, is re-planned
/// because of acme's overrun. Every byte globex can read — its `watch` events, MQTT on `#`, API
/// replies and errors, the console's JSON — holds neither the canary nor any of acme's ids.
#[test]
fn an_overrunning_manual_step_does_not_stall_other_tenants() {
    // Priority sold with a turnaround: its quote and refusal are places globex reads too.
    let site =
        std::fs::read_to_string(root().join("sites/sim.toml")).unwrap().replace("technicians = 2", "technicians = 1")
            + "\n[prices.turnaround]\npriority = 1.0\n";
    let lab = serve_lab_on("overrun", "0.001", Some(&site));
    let (acme, _) = lab.tenant_with_mqtt("acme");
    let (globex, globex_mqtt) = lab.tenant_with_mqtt("globex");
    let mut globex_sub = mqtt_listen(lab.mqtt_port, &globex_mqtt.0, &globex_mqtt.1, "#");
    let canary = canary_protocol(&lab.dir);
    let acme_run = lab.submit_file(&acme, &canary, &["--key", &format!("{CANARY}-key-1")]);
    let globex_run = lab.submit(&globex, "serial-dilution.yaml");
    let globex_elisa = lab.submit(&globex, "elisa.yaml");
    let globex_watch = watch_lines(&lab, &globex, &globex_run);
    let elisa_watch = watch_lines(&lab, &globex, &globex_elisa);
    let acme_watch = watch_lines(&lab, &acme, &acme_run);
    let cancelled = lab.submit_file(&acme, &canary, &["--key", &format!("{CANARY}-key-2")]);
    // acme's samples in the lab's inventory, the canary in every name.
    let shipment = lab.dir.join("shipment.csv");
    std::fs::write(
        &shipment,
        format!("barcode,type,well,sample,liquid,volume\nBC-{CANARY},corning_96_wellplate_360ul_flat,A1,{CANARY}-sample,{CANARY}-serum,100 uL\n"),
    )
    .unwrap();
    let args = ["receive", shipment.to_str().unwrap(), "--tenant", "acme", "--format", "json"];
    let (code, so, se) = labctl_typing(&lab.url, &lab.admin, &args, &format!("BC-{CANARY}\n"));
    assert_eq!(code, 0, "{se}");
    let acme_container = items(so.trim())[0]["id"].as_str().unwrap().to_string();
    let acme_barcode = format!("BC-{CANARY}");
    // And a shipment acme declared that has not arrived yet.
    let declared = lab.dir.join("declared.csv");
    std::fs::write(
        &declared,
        format!("barcode,type,well,sample,liquid,volume\nBD-{CANARY},corning_96_wellplate_360ul_flat,A1,{CANARY}-next,{CANARY}-serum,100 uL\n"),
    )
    .unwrap();
    let acme_shipment =
        lab.json(&acme, &["ship", declared.to_str().unwrap(), "--format", "json"])["id"].as_str().unwrap().to_string();
    assert_eq!(lab.ctl(&acme, &["cancel", &cancelled]).0, 0);
    let intervention = lab.intervention_of(&lab.admin, &acme_run);
    // Nobody does the manual step. Once it runs past its planned end, acme hears why its run's
    // end moved (in its own words); globex's run finishes anyway.
    let told = loop {
        match acme_watch.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) if l.contains("\"rescheduled\"") && l.contains(&format!("`manual: CONFIDENTIAL {CANARY}")) => {
                break l
            }
            Ok(_) => {}
            Err(e) => panic!("acme was not told that the manual step overran ({e})"),
        }
    };
    eprintln!("{told}");
    // A watch opened with a token that is then revoked ends within a second.
    let spare = lab.json(&lab.admin, &["token", "create", "--tenant", "acme", "--format", "json"]);
    let mut spare_watch = Reap(
        Command::new(env!("CARGO_BIN_EXE_labctl"))
            .args(["--url", &lab.url, "--token", spare["token"].as_str().unwrap(), "watch", &acme_run])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(spare_watch.0.try_wait().unwrap().is_none(), "the watch streams while acme's run waits");
    assert_eq!(lab.ctl(&lab.admin, &["token", "revoke", spare["principal"].as_str().unwrap()]).0, 0);
    let revoked = std::time::Instant::now();
    while spare_watch.0.try_wait().unwrap().is_none() {
        assert!(revoked.elapsed() < std::time::Duration::from_secs(2), "the watch outlived its revoked token");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut why = String::new();
    std::io::Read::read_to_string(spare_watch.0.stderr.as_mut().unwrap(), &mut why).unwrap();
    assert!(why.contains("revoked"), "the watch says why it ended: {why}");
    lab.wait_final(&globex, &[&globex_run], 120);
    // The ELISA's manual steps wait for the technician acme's step holds: globex hears that its
    // end moved because of a manual step of another run, and nothing more of it.
    let mut elisa_events = Vec::new();
    let moved = loop {
        match elisa_watch.recv_timeout(std::time::Duration::from_secs(60)) {
            // Acme's step as globex hears it, or (the leak this guards against) in acme's words.
            Ok(l) if l.contains("\"rescheduled\"") && (l.contains("manual step") || l.contains(CANARY)) => break l,
            Ok(l) => elisa_events.push(l),
            Err(e) => panic!("globex's ELISA was not re-planned around acme's overrun ({e}): {elisa_events:?}"),
        }
    };
    eprintln!("{moved}");
    assert!(
        moved.contains("a manual step of another run is taking longer") && !moved.contains("CONFIDENTIAL"),
        "globex is told that something moved its run, never what: {moved}"
    );
    elisa_events.push(moved);
    // Acme's step stays open, so it keeps being re-planned as overrunning, until globex's ELISA
    // is planned to end after its promise: globex is told so, for the same reason, in the same
    // words (and the event is among what is scanned below).
    let at_risk = loop {
        match elisa_watch.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(l) if l.contains("\"promise_at_risk\"") => break l,
            Ok(l) => elisa_events.push(l),
            Err(e) => panic!("globex's ELISA was never told its promise is at risk ({e}): {elisa_events:?}"),
        }
    };
    assert!(
        at_risk.contains("a manual step of another run is taking longer") && !at_risk.contains("CONFIDENTIAL"),
        "{at_risk}"
    );
    elisa_events.push(at_risk);
    let (_, open, _) = lab.ctl(&lab.admin, &["interventions", "--format", "json"]);
    assert!(open.contains(&intervention), "the manual step is still open while globex finished: {open}");
    let (code, _, se) = lab.ctl(&lab.admin, &["resolve", &intervention, "done", "--reason", "checked the plate"]);
    assert_eq!(code, 0, "{se}");
    let (_, trail, _) = lab.ctl(&lab.admin, &["audit", "--format", "json"]);
    let resolved = items(&trail)
        .into_iter()
        .find(|e| e["action"] == "intervention_resolved")
        .unwrap_or_else(|| panic!("the resolution is in the audit trail: {trail}"));
    assert!(resolved["subject"].as_str().unwrap().contains(&intervention), "{resolved}");
    assert_eq!(resolved["reason"], "checked the plate", "{resolved}");
    assert!(resolved["detail"].as_str().unwrap().starts_with("done: "), "{resolved}");
    // Now the technician does globex's manual steps as they come.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        for i in items(&lab.ctl(&lab.admin, &["interventions", "--format", "json"]).1) {
            assert_eq!(lab.ctl(&lab.admin, &["resolve", i["id"].as_str().unwrap(), "done"]).0, 0);
        }
        let runs = items(&lab.ctl(&lab.admin, &["runs", "--format", "json"]).1);
        let ended = |id: &str| runs.iter().any(|r| r["id"] == id && r["state"] == "succeeded");
        if ended(&globex_elisa) && ended(&acme_run) {
            break;
        }
        assert!(runs.iter().all(|r| r["state"] != "failed"), "{runs:?}");
        assert!(std::time::Instant::now() < until, "runs did not finish: {runs:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    while let Ok(l) = elisa_watch.recv_timeout(std::time::Duration::from_secs(30)) {
        elisa_events.push(l); // the watch ends with the run
    }
    // Results of a run that did not succeed say so, and why, and exit 1 (not `[]` and 0).
    let (code, so, se) = lab.ctl(&acme, &["results", &cancelled, "--format", "json"]);
    assert_eq!(code, 1, "{so}{se}");
    assert!(se.contains("cancelled") && se.contains("no read happened"), "{se}");
    // Clock times where people look: the run's times, the planned end in events.
    let mine = items(&lab.ctl(&acme, &["runs", "--format", "json"]).1);
    let run = mine.iter().find(|r| r["id"] == acme_run.as_str()).unwrap();
    for field in ["submitted_at", "started_at", "finished_at"] {
        let at = run[field].as_str().unwrap_or_else(|| panic!("{field}: {run}"));
        assert!(at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "{field} is RFC 3339: {at}");
    }
    assert!(told.contains("\"planned_end_at\":\"20") && told.contains("\"was_at\""), "{told}");
    // The manual step waited far past its 2 minutes for a technician; acme is billed 2 minutes.
    let usage = items(&lab.ctl(&lab.admin, &["usage", "--tenant", "acme", "--format", "json"]).1);
    let technician = usage.iter().find(|l| l["instrument_class"] == "technician").expect("the manual step is billed");
    let hours = technician["device_hours"].as_f64().unwrap();
    assert!((hours - 2.0 / 60.0).abs() < 1e-6, "acme billed {hours} technician-hours for a 2-minute step: {usage:?}");

    // Everything globex could read.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut events = Vec::new();
    while let Ok(l) = globex_watch.recv_timeout(std::time::Duration::from_secs(30)) {
        events.push(l); // the watch ends with the run
    }
    assert!(events.iter().any(|l| l.contains("\"succeeded\"")), "globex's watch saw its run end: {events:?}");
    // Kitting's events are among what is scanned below.
    assert!(events.iter().any(|l| l.contains("\"pick_list\"")) && events.iter().any(|l| l.contains("\"kitted\"")));
    let rescheduled = events.iter().filter(|l| l.contains("\"rescheduled\"")).count();
    eprintln!("globex's run was re-planned {rescheduled} time(s) while acme's ran");
    seen.push(("watch".into(), events.join("\n")));
    seen.push(("watch ELISA".into(), elisa_events.join("\n")));
    seen.push(("mqtt #".into(), mqtt_collect(&mut globex_sub)));
    for args in [
        &["runs", "--format", "json"][..],
        &["runs"],
        &["watch", &globex_run, "--format", "json"],
        &["results", &globex_run, "--format", "json"],
        &["results", &globex_run, "--format", "csv"],
        &["watch", &globex_elisa, "--format", "json"],
        &["schedule", "--format", "json"],
        &["schedule"],
        &["interventions", "--all", "--format", "json"],
        &["watch", &acme_run],
        &["results", &acme_run],
        &["cancel", &acme_run],
        &["resolve", &intervention, "done"],
        &["instruments"],
        &["usage"],
        &["durations", "--format", "json"],
        &["audit", "--format", "json"],
        &["halt", "--reason", "curious"],
        &["resume", "--format", "json"],
        &["containers", "--format", "json"],
        &["container", "show", &acme_container, "--format", "json"],
        &["shipments", "--format", "json"],
        &["receive", "--shipment", &acme_shipment],
    ] {
        let (code, so, se) = lab.ctl(&globex, args);
        seen.push((format!("labctl {args:?} (exit {code})"), format!("{so}{se}")));
    }
    let analysis_own = format!("/api/runs/{globex_run}/analysis");
    let analysis_other = format!("/api/runs/{acme_run}/analysis");
    for path in [
        "/api/whoami",
        "/api/runs",
        "/api/schedule",
        "/api/interventions",
        "/api/instruments",
        "/api/audit",
        "/api/containers",
        "/api/stock",
        "/api/picks",
        "/api/shipments",
        &analysis_own,
        &analysis_other,
    ] {
        let (code, body) = console_get(&lab.console, path, &globex);
        seen.push((format!("console {path} ({code})"), body));
    }
    // The results page of acme's run is not found for globex, like a run that does not exist.
    assert_eq!(console_get(&lab.console, &analysis_other, &globex).0, 404);
    // And globex's own results page has its reads, with its own plate map's names.
    let (code, own) = console_get(&lab.console, &analysis_own, &globex);
    assert!(code == 200 && own.contains("lw-heatmap"), "{code} {own}");
    // The console answers only to its own (loopback) names, with its security headers.
    let own = lab.console.trim_start_matches("http://").trim_end_matches('/').to_string();
    let page = console_raw(&lab.console, "/", &own).to_ascii_lowercase();
    assert!(page.starts_with("http/1.1 200"), "{page}");
    for h in ["content-security-policy: default-src 'self'", "x-frame-options: deny", "x-content-type-options: nosniff"]
    {
        assert!(page.contains(h), "{h} missing: {page}");
    }
    let port = own.rsplit_once(':').unwrap().1;
    let rebound = console_raw(&lab.console, "/api/runs", &format!("attacker.example:{port}"));
    assert!(rebound.starts_with("HTTP/1.1 421"), "another host name is refused: {rebound}");
    let (_, acme_tenant, _) = lab.ctl(&lab.admin, &["runs", "--format", "json"]);
    let acme_tenant = items(&acme_tenant)
        .into_iter()
        .find(|r| r["id"] == acme_run.as_str())
        .and_then(|r| r["tenant"].as_str().map(String::from))
        .unwrap();
    // Asking for acme's run by id is answered as for an id that does not exist: the reply may
    // repeat the id globex sent, nothing more of it.
    let probes = [acme_run.as_str(), intervention.as_str(), acme_container.as_str(), acme_shipment.as_str()];
    // (acme's barcode carries the canary: asking for it by barcode would echo it back.)
    let (code, _, se) = lab.ctl(&globex, &["container", "show", &acme_barcode]);
    let (_, _, missing) = lab.ctl(&globex, &["container", "show", "BC-nothing"]);
    assert_eq!((code != 0, se.replace(&acme_barcode, "X")), (true, missing.replace("BC-nothing", "X")));
    // A priority quote and submission with acme's runs queued: the target, whether it fits, and
    // what the submission answers (taken here; the refusal's own test is in `service`).
    let dilution = root().join("protocols/examples/serial-dilution.yaml");
    let quote = lab_quote_in(&lab, &globex, &dilution, "priority");
    assert!(quote.turnaround_target_s > 0.0, "{quote:?}");
    seen.push(("a priority quote".into(), format!("{quote:?}")));
    let (code, so, se) = lab.ctl(&globex, &["submit", dilution.to_str().unwrap(), "--class", "priority"]);
    seen.push((format!("a priority submission (exit {code})"), format!("{so}{se}")));
    // A submission refused for want of the lab's stock, which acme's runs also draw on.
    let (code, _, se) = lab.ctl(&lab.admin, &["stock", "count", "opentrons_96_tiprack_300ul", "--on-hand", "0"]);
    assert_eq!(code, 0, "{se}");
    let (code, so, se) =
        lab.ctl(&globex, &["submit", root().join("protocols/examples/serial-dilution.yaml").to_str().unwrap()]);
    assert!(code != 0 && se.contains("cannot supply"), "{so}{se}");
    seen.push(("a submission refused for want of stock".into(), format!("{so}{se}")));
    for (place, text) in &seen {
        let lower = text.to_lowercase();
        assert!(!lower.contains(CANARY), "the canary reached globex through {place}: {text}");
        assert!(!text.contains("CONFIDENTIAL"), "acme's manual-step text reached globex through {place}: {text}");
        assert!(
            !text.contains(&acme_tenant) && !text.contains("acme"),
            "acme's tenant reached globex through {place}: {text}"
        );
        if !probes.iter().any(|p| place.contains(p)) {
            for id in [&acme_run, &cancelled, &intervention, &acme_container] {
                assert!(!text.contains(id.as_str()), "acme's id {id} reached globex through {place}: {text}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
}
