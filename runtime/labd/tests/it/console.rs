//! The demo and the technician console in a real browser.

use super::*;

/// `labd demo` runs to completion: three tenants' six runs succeed, the summary adds up, the
/// results are where it says, and it told the visitor how to open the console and watch MQTT.
#[test]
fn labd_demo_runs_to_completion_and_sums_up() {
    let _machine = heavy();
    let dir = std::env::temp_dir().join(format!("lw-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["demo", "--time-scale", "0.0002", "--console", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the demo exits 0 when every run succeeded\n{so}\n{se}");
    assert!(so.contains("6 of 6 succeeded"), "{so}");
    assert!(so.contains("mosquitto_sub -h 127.0.0.1 -p ") && so.contains("-t 'lab/v1/t/"), "an MQTT line: {so}");
    assert!(so.contains("console:   http://127.0.0.1:"), "the console URL: {so}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!((summary["runs"].as_u64(), summary["succeeded"].as_u64()), (Some(6), Some(6)), "{summary}");
    // The growth curve alone takes 12 h 35 min of device time: nothing finishes sooner.
    let makespan = summary["makespan_s"].as_f64().unwrap();
    assert!((12.0 * 3600.0 + 35.0 * 60.0..48.0 * 3600.0).contains(&makespan), "makespan {makespan}");
    let tenants = summary["tenants"].as_object().unwrap();
    assert_eq!(tenants.len(), 3);
    for (name, t) in tenants {
        let turnaround = t["turnaround_s"].as_f64().unwrap();
        assert!(turnaround > 0.0 && turnaround <= makespan * 1.05 + 600.0, "{name}: {t} vs makespan {makespan}");
    }
    let utilisation = summary["utilisation"].as_object().unwrap();
    assert!(utilisation.values().all(|u| (0.0..=1.0).contains(&u.as_f64().unwrap())), "{summary}");
    assert!(utilisation["lh1"].as_f64().unwrap() > 0.0 && utilisation["inc1"].as_f64().unwrap() > 0.0);
    let csvs = std::fs::read_dir(dir.join("results")).unwrap().count();
    assert!(csvs >= 3, "one CSV per run that measured something: {csvs}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The technician console in Debian's Chromium (playwright-core): the page loads, instruments
/// appear, the Gantt chart draws tasks, an intervention is resolved from the page, maintenance
/// is toggled, and a scientist cannot see another tenant's run or name. Screenshots are kept
/// in target/console-screenshots.
#[test]
fn the_console_works_in_chromium() {
    let _machine = heavy();
    let script = root().join("tests/browser/console.mjs");
    let ready =
        Path::new("/usr/bin/chromium").exists() && root().join("tests/browser/node_modules/playwright-core").exists();
    if !ready {
        assert!(
            std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
            "browser tests are required but Chromium or playwright-core is missing: run scripts/peers"
        );
        eprintln!("skipped: no /usr/bin/chromium or tests/browser/node_modules (scripts/peers installs them)");
        return;
    }
    let lab = serve_lab("console", "0.001");
    let (acme, globex) = (lab.tenant("acme"), lab.tenant("globex"));
    let tech = lab.json(&lab.admin, &["token", "create", "--role", "technician", "--format", "json"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    // PCR setup ends with a manual step: the lab waits for a technician.
    let acme_run = lab.submit(&acme, "pcr-setup.yaml");
    let globex_run = lab.submit(&globex, "serial-dilution.yaml");
    // A Bradford assay with a plate map: its results page has a heatmap and a standard curve.
    let acme_bradford = lab.submit(&acme, "bradford.yaml");
    let intervention = lab.intervention_of(&tech, &acme_run);
    // The open manual step says where the run's plate is now (sealed, spun, then moved on).
    let open = items(&lab.ok(&tech, &["interventions", "--format", "json"]));
    let step = open.iter().find(|i| i["id"] == intervention.as_str()).unwrap_or_else(|| panic!("{open:?}"));
    let plates: Vec<&str> = step["plates"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(plates.iter().any(|p| p.starts_with("pcr at ")), "{step}");
    // globex keeps a plate in the lab, and the lab a lot of PBS: the inventory panel shows
    // technicians both, and the scientist of acme neither.
    lab.ship("globex", "4C", "GX-0001,corning_96_wellplate_360ul_flat,A1,G-1,serum,50 uL\n");
    lab.ok(&tech, &["stock", "receive", "PBS", "--lot", "P-CONSOLE", "--expires", "2020-01-01", "--volume", "500 mL"]);
    // The JSON API keeps the gRPC rules: no token, no data; a scientist gets no instruments.
    assert_eq!(console_get(&lab.console, "/api/runs", "nonsense").0, 401);
    let (code, body) = console_get(&lab.console, "/api/runs", "tökén");
    assert!(code == 401 && body.contains("not plain text"), "a header that is not ASCII is named: {code} {body}");
    assert_eq!(console_get(&lab.console, "/api/instruments", &acme).0, 403);
    let (code, body) = console_get(&lab.console, "/api/runs", &acme);
    assert!(code == 200 && body.contains(&acme_run) && !body.contains(&globex_run), "{code} {body}");
    let shots = root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    lab.wait_final(&acme, &[&acme_bradford], 180);
    let out = Command::new("node")
        .arg(&script)
        .args([&lab.console, &tech, &acme, &acme_run, &globex_run, "globex"])
        .arg(&shots)
        .arg(&acme_bradford)
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "the console test in Chromium failed:\n{so}\n{se}");
    eprintln!("console in Chromium: {so}");
    // What the page did is what the lab knows: the intervention was resolved as done.
    let (_, all, _) = lab.ctl(&tech, &["interventions", "--all", "--format", "json"]);
    let resolved =
        items(&all).into_iter().find(|i| i["id"] == intervention.as_str()).unwrap_or_else(|| panic!("{all}"));
    assert_eq!(resolved["state"], "done", "{resolved}");
    assert_eq!(resolved["tenant"], "acme", "{resolved}");
    assert!(resolved["resolved_by"].as_str().is_some_and(|b| b.starts_with("pri_")), "{resolved}");
    assert!(resolved["resolved_at"].as_str().is_some_and(|t| t.starts_with("20")), "{resolved}");
    lab.wait_final(&acme, &[&acme_run], 120);
    for png in ["console-technician.png", "console-resolved.png", "console-scientist.png", "console-results.png"] {
        assert!(std::fs::metadata(shots.join(png)).map(|m| m.len() > 10_000).unwrap_or(false), "{png} saved");
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
}
