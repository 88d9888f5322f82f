//! A tenant's shipment received at the bench: the manifest is checked whole, every container is
//! scanned, and the containers are the tenant's alone.

use super::*;

const MANIFEST: &str = "barcode,type,well,sample,liquid,volume
PL-0001,corning_96_wellplate_360ul_flat,A1,S-001,serum,150 uL
PL-0001,corning_96_wellplate_360ul_flat,A2,S-002,serum,140 uL
PL-0001,corning_96_wellplate_360ul_flat,B1,S-003,serum,0.13 mL
RS-0001,nest_12_reservoir_15ml,A1,diluent,PBS,12 mL
";

/// A technician receives acme's shipment: a barcode not in the manifest is set aside, and only
/// once every container is scanned is the shipment received (at 4 °C, as told: in the site's
/// fridge). acme sees its
/// containers with their wells and history; globex sees none, and asking for one of acme's
/// reads exactly like asking for one that does not exist. acme's protocol names the plate by
/// barcode and its run draws from it; globex's copy of that protocol is refused like one naming
/// a container that does not exist. A bad manifest is refused whole with a problem per line; a
/// scientist cannot receive; a barcode already in the lab is refused.
#[test]
fn a_shipment_is_received_whole_and_stays_its_tenants() {
    let lab = serve_lab_on("inventory", "0.001", None);
    let (acme, acme_mqtt) = lab.tenant_with_mqtt("acme");
    let globex = lab.tenant("globex");
    // acme's telemetry, as a scientist would subscribe to it: everything it may read.
    let mut acme_sub = mqtt_listen(lab.mqtt_port, &acme_mqtt.0, &acme_mqtt.1, "#");
    let tech = lab.json(&lab.admin, &["token", "create", "--role", "technician", "--format", "json"])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = lab.dir.join("shipment.csv");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let receive = |token: &str, file: &Path, scans: &str| {
        let args = ["receive", file.to_str().unwrap(), "--tenant", "acme", "--location", "4C", "--format", "json"];
        labctl_typing(&lab.url, token, &args, scans)
    };
    // A stray barcode is set aside; a shipment not fully scanned is not received.
    let (code, _, se) = receive(&tech, &manifest, "PL-0001\nXX-9999\n");
    assert_ne!(code, 0);
    assert!(se.contains("XX-9999 is not in this manifest") && se.contains("not scanned yet: RS-0001"), "{se}");
    assert!(items(&lab.ctl(&acme, &["containers", "--format", "json"]).1).is_empty(), "nothing half-received");
    let (code, so, se) = receive(&tech, &manifest, "PL-0001\nXX-9999\nRS-0001\n");
    assert_eq!(code, 0, "{se}");
    let got = items(so.trim());
    assert_eq!(got.len(), 2, "{so}");
    let plate_id = got[0]["id"].as_str().unwrap().to_string();

    // acme's own view: wells row by row, volumes in µL, where it is, who received it.
    let mine = items(&lab.ctl(&acme, &["containers", "--format", "json"]).1);
    assert_eq!(mine.iter().map(|k| k["barcode"].as_str().unwrap()).collect::<Vec<_>>(), ["PL-0001", "RS-0001"]);
    let (code, so, se) = lab.ctl(&acme, &["container", "show", "PL-0001", "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let k: serde_json::Value = serde_json::from_str(so.trim()).unwrap();
    assert_eq!(k["location"], "fridge1", "the site's 4 °C unit with room");
    let wells: Vec<(String, f64)> = k["wells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["well"].as_str().unwrap().to_string(), w["volume_ul"].as_f64().unwrap()))
        .collect();
    assert_eq!(wells, [("A1".to_string(), 150.0), ("A2".to_string(), 140.0), ("B1".to_string(), 130.0)]);
    assert_eq!(k["history"][0]["kind"], "received");
    let text = lab.ctl(&acme, &["container", "show", &plate_id]).1;
    assert!(text.contains("S-002") && text.contains("received"), "{text}");

    // globex: nothing, and acme's container reads like a missing one.
    assert!(items(&lab.ctl(&globex, &["containers", "--format", "json"]).1).is_empty());
    let theirs = lab.ctl(&globex, &["container", "show", "PL-0001"]);
    let nobody = lab.ctl(&globex, &["container", "show", "PL-7777"]);
    assert_ne!(theirs.0, 0);
    assert_eq!(theirs.2.replace("PL-0001", "X"), nobody.2.replace("PL-7777", "X"), "the same answer");
    let by_id = lab.ctl(&globex, &["container", "show", &plate_id]).2;
    assert!(!by_id.contains("acme") && !by_id.contains("S-00") && !by_id.contains("serum"), "{by_id}");

    // A protocol names the plate by its barcode: its type and contents come from the inventory;
    // the run draws from it. For globex the same protocol names an unknown container, worded as
    // for one that does not exist.
    let protocol = |barcode: &str| {
        let file = lab.dir.join(format!("from-{barcode}.yaml"));
        std::fs::write(
            &file,
            format!("labwright: 1\nname: From the shipment\nlabware:\n  samples: {{ container: {barcode} }}\n  assay: {{ type: corning_96_wellplate_360ul_flat }}\n  tips: {{ type: opentrons_96_tiprack_300ul }}\nsteps:\n  - transfer: {{ from: samples/A1:B1, to: assay/A1:B1, volume: 50 uL }}\n"),
        )
        .unwrap();
        file
    };
    let own = protocol("PL-0001");
    let (code, so, se) = lab.ctl(&acme, &["submit", own.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0, "acme's run from its own plate: {so}{se}");
    // It drew 50 µL of A1's 150 and B1's 130: the inventory says so.
    let k = lab.json(&acme, &["container", "show", "PL-0001", "--format", "json"]);
    let volume = |k: &serde_json::Value, well: &str| {
        k["wells"].as_array().unwrap().iter().find(|w| w["well"] == well).unwrap()["volume_ul"].as_f64().unwrap()
    };
    assert_eq!((volume(&k, "A1"), volume(&k, "B1")), (100.0, 80.0), "{k}");
    let used =
        k["history"].as_array().unwrap().iter().find(|h| h["kind"] == "used").expect("the run is in its history");
    assert!(used["detail"].as_str().unwrap().contains("drew A1 50 µL, B1 50 µL"), "{used}");
    // A second run drawing 50 fits while it is queued; a third that would take 90 more from A1
    // does not: 100 µL left, 50 of them promised to the queued run (or already taken by it).
    let (code, _, se) = lab.ctl(&acme, &["submit", own.to_str().unwrap(), "--key", "second"]);
    assert_eq!(code, 0, "{se}");
    let greedy = lab.dir.join("greedy.yaml");
    let text = std::fs::read_to_string(&own).unwrap();
    std::fs::write(
        &greedy,
        text.replace("samples/A1:B1, to: assay/A1:B1, volume: 50 uL", "samples/A1, to: assay/A1, volume: 90 uL"),
    )
    .unwrap();
    let (code, _, se) = lab.ctl(&acme, &["submit", greedy.to_str().unwrap()]);
    // Refused by the lab's count while the second run is queued, or by the compiler once it
    // has drawn (the container then holds 50 µL).
    let queued = se.contains(
        "container PL-0001 well A1 holds 100 µL; runs already accepted draw 50 µL from it and this one 90 µL",
    );
    let done = se.contains("draws 90 µL from samples/A1, which holds only 50 µL");
    assert!(code != 0 && (queued || done), "{se}");
    let (code, _, local) = lab.ctl(&acme, &["validate", own.to_str().unwrap()]);
    assert!(code != 0 && local.contains("P0209") && local.contains("looked up when the lab"), "{local}");
    let refused = lab.ctl(&globex, &["submit", own.to_str().unwrap()]);
    let missing = lab.ctl(&globex, &["submit", protocol("PL-7777").to_str().unwrap()]);
    assert!(refused.0 != 0 && refused.2.contains("unknown container `PL-0001`"), "{}", refused.2);
    assert_eq!(
        refused.2.replace("PL-0001", "X").replace("from-X", "f"),
        missing.2.replace("PL-7777", "X").replace("from-X", "f"),
        "globex learns nothing of acme's container"
    );

    // acme heard of its containers over MQTT, on its own topics: received, then drawn from.
    let heard = mqtt_collect(&mut acme_sub);
    let plate_topic = format!("/containers/{plate_id}/events ");
    let kinds: Vec<String> = heard
        .lines()
        .filter(|l| l.contains(&plate_topic))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.split_once(' ')?.1).ok())
        .map(|v| v["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(kinds.starts_with(&["received".to_string(), "used".to_string()]), "{kinds:?}\n{heard}");

    // A bad manifest: refused whole, each line named.
    let bad = lab.dir.join("bad.csv");
    std::fs::write(
        &bad,
        "barcode,type,well,sample,liquid,volume\nPL-0002,corning_96_wellplate_360ul_flat,Z9,S,serum,10 uL\nPL-0003,no_such_plate,A1,S,serum,10 uL\nPL-0004,corning_96_wellplate_360ul_flat,A1,S,serum,10 uL\n",
    )
    .unwrap();
    let (code, _, se) = receive(&tech, &bad, "PL-0002\nPL-0003\nPL-0004\n");
    assert_ne!(code, 0);
    assert!(se.contains("line 2: well `Z9` does not exist") && se.contains("line 3: unknown labware type"), "{se}");
    assert!(lab.ctl(&tech, &["container", "show", "PL-0004"]).0 != 0, "nothing of it was received");
    // A scientist cannot receive; a barcode already in the lab is refused.
    let (code, _, se) = receive(&acme, &manifest, "PL-0001\nRS-0001\n");
    assert!(code != 0 && se.contains("technicians and admins"), "{se}");
    let (code, _, se) = receive(&tech, &manifest, "PL-0001\nRS-0001\n");
    assert!(code != 0 && se.contains("already on a container"), "{se}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// The lab's stock: a technician counts tip racks and receives lots of PBS (one expired); the
/// quote bills the rack, the plate, the reservoir and the PBS; the run takes 10 mL from the
/// unexpired lot that expires first and one rack off the count, which falls to its reorder
/// point; the admin's usage report bills the tenant for them; a run needing more racks than
/// the shelf holds is refused with what it cannot have and nothing of anyone else's runs; a
/// scientist cannot touch the stock, and a reagent the site does not stock is refused.
#[test]
fn runs_use_up_the_labs_stock_and_the_bill_says_what() {
    let lab = serve_lab_on("stock", "0.001", None);
    let acme = lab.tenant("acme");
    let tech = lab.technician();
    let ok = |token: &str, args: &[&str]| lab.ok(token, args);
    ok(&tech, &["stock", "count", "opentrons_96_tiprack_300ul", "--on-hand", "2", "--reorder-at", "1"]);
    ok(&tech, &["stock", "receive", "PBS", "--lot", "P-LATE", "--expires", "2099-12-31", "--volume", "1 L"]);
    ok(&tech, &["stock", "receive", "PBS", "--lot", "P-SOON", "--expires", "2098-01-31", "--volume", "25 mL"]);
    ok(&tech, &["stock", "receive", "PBS", "--lot", "P-GONE", "--expires", "2020-01-01", "--volume", "500 mL"]);
    let (code, _, se) = lab
        .ctl(&tech, &["stock", "receive", "Unobtainium", "--lot", "X", "--expires", "2099-01-01", "--volume", "1 mL"]);
    assert!(code != 0 && se.contains("stocks no reagent named `Unobtainium`") && se.contains("PBS"), "{se}");
    let (code, _, se) =
        lab.ctl(&tech, &["stock", "receive", "PBS", "--lot", "X", "--expires", "31/12/2099", "--volume", "1 mL"]);
    assert!(code != 0 && se.contains("YYYY-MM-DD"), "{se}");
    let (code, _, se) = lab.ctl(&acme, &["stock"]);
    assert!(code != 0 && se.contains("technicians and admins"), "{se}");

    let protocol = |racks: usize| {
        let file = lab.dir.join(format!("pbs-{racks}.yaml"));
        let mut text = String::from("labwright: 1\nname: PBS into a plate\nliquids:\n  buffer: { reagent: PBS }\nlabware:\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 10 mL } } }\n  plate: { type: corning_96_wellplate_360ul_flat }\n");
        for r in 0..racks {
            text.push_str(&format!("  tips_{r}: {{ type: opentrons_96_tiprack_300ul }}\n"));
        }
        // Every well a tip of its own: 96 tips a rack.
        let wells = if racks == 1 { "A1:H1" } else { "A1:H12" };
        text.push_str(&format!(
            "steps:\n  - transfer: {{ from: res/A1, to: plate/{wells}, volume: 20 uL, tips: always }}\n"
        ));
        if racks > 1 {
            text.push_str("  - transfer: { from: res/A1, to: plate/A1:H12, volume: 20 uL, tips: always }\n");
        }
        std::fs::write(&file, text).unwrap();
        file
    };
    let one = protocol(1);
    let quote: serde_json::Value =
        serde_json::from_str(&ok(&acme, &["quote", one.to_str().unwrap(), "--format", "json"])).unwrap();
    let billed: Vec<(String, f64)> = quote["consumables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["item"].as_str().unwrap().to_string(), l["quantity"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        billed,
        [
            ("corning_96_wellplate_360ul_flat".to_string(), 1.0),
            ("nest_12_reservoir_15ml".to_string(), 1.0),
            ("opentrons_96_tiprack_300ul".to_string(), 1.0),
            ("PBS".to_string(), 10.0),
        ],
        "{quote}"
    );
    ok(&acme, &["submit", one.to_str().unwrap(), "--wait"]);

    // What each task really took is the lab's to see; one run is not yet enough to correct by.
    let took = lab.json(&tech, &["durations", "--format", "json"]);
    let lines = took["lines"].as_array().unwrap_or_else(|| panic!("{took}"));
    assert!(
        lines.iter().any(|l| l["instrument_class"] == "liquid_handler" && l["samples"].as_u64() >= Some(1)),
        "{took}"
    );
    assert!(lines.iter().all(|l| l["factor"].as_f64() == Some(1.0)), "{took}");
    let (code, _, refused) = lab.ctl(&acme, &["durations"]);
    assert!(code != 0 && refused.contains("technicians and admins"), "{code} {refused}");

    // Every stock change is in the audit trail, newest first, with who made it; refused ones
    // are not. A scientist cannot read the trail.
    let trail = lab.json(&tech, &["audit", "--format", "json"]);
    let entries = trail.as_array().unwrap_or_else(|| panic!("{trail}"));
    let stock_changes: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["action"] == "lot_received" || e["action"] == "consumable_counted")
        .map(|e| (e["action"].as_str().unwrap(), e["subject"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stock_changes,
        [
            ("lot_received", "PBS lot P-GONE"),
            ("lot_received", "PBS lot P-SOON"),
            ("lot_received", "PBS lot P-LATE"),
            ("consumable_counted", "opentrons_96_tiprack_300ul"),
        ],
        "{trail}"
    );
    assert!(entries.iter().all(|e| e["actor"].as_str().is_some_and(|a| !a.is_empty())), "{trail}");
    let counted = entries.iter().find(|e| e["action"] == "consumable_counted").unwrap();
    assert_eq!(counted["detail"], "2 on hand, reorder at 1", "{counted}");
    let (code, _, refused) = lab.ctl(&acme, &["audit"]);
    assert!(code != 0 && refused.contains("technicians and admins"), "{code} {refused}");

    let stock = lab.json(&tech, &["stock", "--format", "json"]);
    let lots: Vec<(String, f64)> = stock["lots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["lot"].as_str().unwrap().to_string(), l["volume_ul"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        lots,
        [("P-GONE".to_string(), 500_000.0), ("P-SOON".to_string(), 15_000.0), ("P-LATE".to_string(), 1_000_000.0)],
        "10 mL from the unexpired lot that expires first: {stock}"
    );
    assert_eq!(stock["lots"][0]["expired"], true);
    let racks = &stock["consumables"][0];
    assert_eq!((racks["on_hand"].as_i64(), racks["reorder"].as_bool()), (Some(1), Some(true)), "{stock}");
    assert!(lab.ctl(&tech, &["stock"]).1.contains("REORDER"));

    // The bill: what acme's run used up, priced at the site's table.
    let usage = items(&ok(&lab.admin, &["usage", "--tenant", "acme", "--format", "json"]));
    let pbs = usage.iter().find(|l| l["item"] == "PBS").unwrap_or_else(|| panic!("{usage:?}"));
    assert_eq!(
        (pbs["unit"].as_str(), pbs["quantity"].as_f64(), pbs["amount"].as_f64()),
        (Some("mL"), Some(10.0), Some(0.5))
    );
    let rack = usage.iter().find(|l| l["item"] == "opentrons_96_tiprack_300ul").unwrap();
    assert_eq!((rack["quantity"].as_f64(), rack["amount"].as_f64()), (Some(1.0), Some(8.5)));
    assert!(usage.iter().any(|l| l["instrument_class"] == "liquid_handler"), "device time still billed: {usage:?}");

    // Two racks needed, one on the shelf: refused, saying what, and nothing of other runs.
    let globex = lab.tenant("globex");
    let (code, _, se) = lab.ctl(&globex, &["submit", protocol(2).to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(se.contains("the lab cannot supply 2 each of opentrons_96_tiprack_300ul for this run now"), "{se}");
    assert!(!se.contains("acme") && !se.contains("run_"), "{se}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// One run's output is the next run's input: a plate the protocol stores at 4 °C becomes a
/// container of the tenant's, holding what the run left in it (named by the plate map's
/// samples); the next protocol names it by its barcode, draws from it and discards it, after
/// which it is in the history but no protocol can name it.
#[test]
fn a_runs_stored_output_is_the_next_runs_input() {
    let lab = serve_lab_on("outputs", "0.001", None);
    let acme = lab.tenant("acme");
    let first = lab.dir.join("make.yaml");
    std::fs::write(
        &first,
        "labwright: 1\nname: Make a plate\nliquids: { buffer: PBS, dye: tartrazine }\nlabware:\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 5 mL }, A2: { dye: 1 mL } } }\n  out:\n    type: corning_96_wellplate_360ul_flat\n    store: { condition: 4C }\n    map: { \"A1\": { sample: S-7 } }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: res/A1, to: out/A1:B1, volume: 100 uL }\n  - transfer: { from: res/A2, to: out/A1, volume: 20 uL }\n",
    )
    .unwrap();
    let (code, so, se) = lab.ctl(&acme, &["submit", first.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run: serde_json::Value = serde_json::from_str(so.lines().next().unwrap()).unwrap();
    let run = run["run"]["id"].as_str().unwrap().to_string();
    let barcode = format!("{}-out", run.trim_start_matches("run_").chars().take(8).collect::<String>());
    let k = lab.json(&acme, &["container", "show", &barcode, "--format", "json"]);
    assert_eq!(
        (k["location"].as_str(), k["type"].as_str()),
        (Some("fridge1"), Some("corning_96_wellplate_360ul_flat")),
        "{k}"
    );
    let wells: Vec<(String, String, String, f64)> = k["wells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = |f: &str| w[f].as_str().unwrap().to_string();
            (s("well"), s("sample"), s("liquid"), w["volume_ul"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(
        wells,
        [
            ("A1".into(), "S-7".into(), "buffer".into(), 100.0),
            ("A1".into(), "S-7".into(), "dye".into(), 20.0),
            ("B1".into(), "buffer".into(), "buffer".into(), 100.0)
        ],
        "{k}"
    );
    assert!(k["history"][0]["detail"].as_str().unwrap().contains(&format!("made by run {run}")), "{k}");

    let next = lab.dir.join("use.yaml");
    std::fs::write(
        &next,
        format!("labwright: 1\nname: Use the plate\nlabware:\n  made: {{ container: {barcode}, discard: true }}\n  assay: {{ type: corning_96_wellplate_360ul_flat }}\n  tips: {{ type: opentrons_96_tiprack_300ul }}\nsteps:\n  - transfer: {{ from: made/A1, to: assay/A1, volume: 60 uL }}\n"),
    )
    .unwrap();
    let (code, so, se) = lab.ctl(&acme, &["submit", next.to_str().unwrap(), "--wait"]);
    assert_eq!(code, 0, "{so}{se}");
    let k = lab.json(&acme, &["container", "show", &barcode, "--format", "json"]);
    assert_eq!(k["location"], "discarded", "{k}");
    let kinds: Vec<&str> = k["history"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["made", "used", "discarded"], "{k}");
    let (code, _, se) = lab.ctl(&acme, &["submit", next.to_str().unwrap()]);
    assert!(code != 0 && se.contains(&format!("unknown container `{barcode}`")), "a discarded container: {se}");
    // The days it spent in the fridge are on acme's bill, at the site's price for 4 °C.
    let usage = items(&lab.ctl(&lab.admin, &["usage", "--tenant", "acme", "--format", "json"]).1);
    let kept = usage.iter().find(|l| l["item"] == "storage 4C").unwrap_or_else(|| panic!("{usage:?}"));
    assert_eq!(kept["unit"], "container-days");
    let days = kept["quantity"].as_f64().unwrap();
    assert!(days > 0.0 && days < 1.0 / 24.0, "minutes, counted in days: {days}");

    // A full freezer refuses a run that would store there, before the run starts.
    let mut manifest = String::from("barcode,type,well,sample,liquid,volume\n");
    let mut scans = String::new();
    for i in 0..24 {
        manifest.push_str(&format!("FZ-{i:02},corning_96_wellplate_360ul_flat,A1,S,serum,10 uL\n"));
        scans.push_str(&format!("FZ-{i:02}\n"));
    }
    let file = lab.dir.join("freezer.csv");
    std::fs::write(&file, manifest).unwrap();
    let args = ["receive", file.to_str().unwrap(), "--tenant", "acme", "--location", "-80C"];
    let (code, so, se) = labctl_typing(&lab.url, &lab.admin, &args, &scans);
    assert_eq!(code, 0, "{so}{se}");
    let frozen = lab.dir.join("frozen.yaml");
    std::fs::write(&frozen, std::fs::read_to_string(&first).unwrap().replace("condition: 4C", "condition: -80C"))
        .unwrap();
    let (code, _, se) = lab.ctl(&acme, &["submit", frozen.to_str().unwrap()]);
    assert!(code != 0 && se.contains("the lab's -80C storage has no room now for the 1 container(s)"), "{se}");
    let more = lab.dir.join("more.csv");
    std::fs::write(
        &more,
        "barcode,type,well,sample,liquid,volume\nFY-00,corning_96_wellplate_360ul_flat,A1,S,serum,10 uL\n",
    )
    .unwrap();
    let args = ["receive", more.to_str().unwrap(), "--tenant", "acme", "--location", "-80C"];
    let (code, _, se) = labctl_typing(&lab.url, &lab.admin, &args, "FY-00\n");
    assert!(code != 0 && se.contains("no -80C storage unit has room for 1"), "nor another shipment: {se}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// Lineage: acme ships a plate of samples; run 1 draws two of them into a plate it keeps at 4 °C
/// (buffer first, from a reservoir of its own); run 2 reads what it draws from that plate. Each
/// well of the plate run 1 made says which shipped well it came from and is named by its
/// sample; each value run 2 read leads back to the sample shipped, in the API's JSON and in the
/// CSV a scientist downloads.
#[test]
fn results_lead_back_to_the_samples_shipped() {
    // The liquid handlers' simulators log every movement: the inventory is checked against it.
    let logs = fresh_dir("lineage-liquid-logs");
    let lab = serve_lab_with("lineage", "0.001", None, &format!("sim_log_dir = {:?}\n", logs.display().to_string()));
    let acme = lab.tenant("acme");
    lab.ship(
        "acme",
        "4C",
        "PL-0101,corning_96_wellplate_360ul_flat,A1,S-101,serum,150 uL\nPL-0101,corning_96_wellplate_360ul_flat,A2,S-102,serum,150 uL\n",
    );
    let normalise = lab.dir.join("normalise.yaml");
    std::fs::write(
        &normalise,
        "labwright: 1\nname: Normalise\nliquids: { buffer: PBS }\nlabware:\n  samples: { container: PL-0101 }\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 5 mL } } }\n  norm:\n    type: corning_96_wellplate_360ul_flat\n    store: { condition: 4C }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: res/A1, to: norm/A1:A2, volume: 50 uL }\n  - transfer: { from: samples/A1, to: norm/A1, volume: 50 uL }\n  - transfer: { from: samples/A2, to: norm/A2, volume: 50 uL }\n",
    )
    .unwrap();
    let (code, so, se) = lab.ctl(&acme, &["submit", normalise.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run: serde_json::Value = serde_json::from_str(so.lines().next().unwrap()).unwrap();
    let barcode = format!(
        "{}-norm",
        run["run"]["id"].as_str().unwrap().trim_start_matches("run_").chars().take(8).collect::<String>()
    );
    let k = lab.json(&acme, &["container", "show", &barcode, "--format", "json"]);
    let wells: Vec<(String, String, String, Vec<String>)> = k["wells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = |f: &str| w[f].as_str().unwrap().to_string();
            let from = w["from"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
            (s("well"), s("sample"), s("liquid"), from)
        })
        .collect();
    let from = |w: &str| vec![format!("PL-0101/{w}")];
    assert_eq!(
        wells,
        [
            ("A1".into(), "S-101".into(), "buffer".into(), from("A1")),
            ("A1".into(), "S-101".into(), "serum".into(), from("A1")),
            ("A2".into(), "S-102".into(), "buffer".into(), from("A2")),
            ("A2".into(), "S-102".into(), "serum".into(), from("A2")),
        ],
        "{k}"
    );
    let text = lab.ctl(&acme, &["container", "show", &barcode]).1;
    assert!(text.contains("from PL-0101/A2"), "{text}");

    let read = lab.dir.join("read.yaml");
    std::fs::write(
        &read,
        format!("labwright: 1\nname: Read it\nlabware:\n  norm: {{ container: {barcode}, discard: true }}\n  assay: {{ type: corning_96_wellplate_360ul_flat }}\n  tips: {{ type: opentrons_96_tiprack_300ul }}\nsteps:\n  - transfer: {{ from: norm/A1, to: assay/A1, volume: 40 uL }}\n  - transfer: {{ from: norm/A2, to: assay/B1, volume: 40 uL }}\n  - read_absorbance: {{ labware: assay, wells: assay/A1:C1, wavelength: 450 nm }}\n"),
    )
    .unwrap();
    let (code, so, se) = lab.ctl(&acme, &["submit", read.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run: serde_json::Value = serde_json::from_str(so.lines().next().unwrap()).unwrap();
    let id = run["run"]["id"].as_str().unwrap().to_string();
    let (code, so, se) = lab.ctl(&acme, &["results", &id, "--format", "json"]);
    assert_eq!(code, 0, "{se}");
    let results: serde_json::Value = serde_json::from_str(so.trim()).unwrap_or_else(|e| panic!("{e}: {so}"));
    let r = &results[0];
    assert_eq!(r["wells"], serde_json::json!(["A1", "B1", "C1"]), "{r}");
    assert_eq!(
        r["origins"],
        serde_json::json!([
            {"samples": ["S-101"], "from": [format!("{barcode}/A1")]},
            {"samples": ["S-102"], "from": [format!("{barcode}/A2")]},
            {"samples": [], "from": []},
        ]),
        "each value leads back to the sample shipped; C1 held nothing of acme's: {r}"
    );
    // The plate shipped names the runs it went into: the first drew from it, the second read
    // what was made from it, once.
    let shipped = lab.json(&acme, &["container", "show", "PL-0101", "--format", "json"]);
    let linked: Vec<(bool, i64)> = shipped["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["direct"].as_bool().unwrap(), r["reads"].as_i64().unwrap()))
        .collect();
    assert_eq!(linked, [(true, 0), (false, 1)], "{shipped}");
    assert_eq!(shipped["runs"][1]["run"], id.as_str(), "{shipped}");
    let text = lab.ok(&acme, &["container", "show", "PL-0101"]);
    assert!(text.contains(&format!("used what was made from it: 1 read(s) (labctl results {id})")), "{text}");
    let (code, csv, se) = lab.ctl(&acme, &["results", &id, "--format", "csv"]);
    assert_eq!(code, 0, "{se}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].ends_with(",source_samples,source_wells"), "{csv}");
    assert!(lines[1].ends_with(&format!(",S-101,{barcode}/A1")) && lines[3].ends_with(",,"), "{csv}");

    // Every well of both plates holds what the simulators' own log says moved: the shipped
    // 150 µL less what was drawn, the made plate what went in less what run 2 drew.
    let mut net: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for entry in std::fs::read_dir(&logs).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path()).unwrap().lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let name = parts[1].split_once('.').map_or(parts[1], |(_, name)| name);
            let ul: f64 = parts[3].parse().unwrap();
            let sign = if parts[0] == "dispense" { 1.0 } else { -1.0 };
            *net.entry((name.to_string(), parts[2].to_string())).or_default() += sign * ul;
        }
    }
    let plates = [("PL-0101", "samples", 150.0), (barcode.as_str(), "norm", 0.0)];
    for (plate, name, shipped) in plates {
        let k = lab.json(&acme, &["container", "show", plate, "--format", "json"]);
        let mut held: std::collections::BTreeMap<String, f64> = Default::default();
        for w in k["wells"].as_array().unwrap() {
            *held.entry(w["well"].as_str().unwrap().to_string()).or_default() += w["volume_ul"].as_f64().unwrap();
        }
        for (well, ul) in &held {
            // Run 2 names the made plate `norm` too: its log lines add to run 1's.
            let logged = shipped + net.get(&(name.to_string(), well.clone())).copied().unwrap_or(0.0);
            assert!(
                (ul - logged).abs() < 0.01,
                "{plate} {well}: the inventory says {ul} µL, the simulators' log {logged}"
            );
        }
        assert_eq!(held.len(), 2, "{k}");
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// A run that fails part way still leaves what it made: acme's run draws two samples into a
/// plate it keeps at 4 °C, then the sealer jams. The plate becomes acme's container with what
/// the journal says went into it (and where from); the shipped plate, which the protocol would
/// have discarded, stays in storage with what is left in it, for the run to be tried again.
#[test]
fn a_run_that_fails_part_way_keeps_what_it_made() {
    let lab = serve_lab_with("failed-outputs", "0.001", None, "[sim_faults]\nsealer1 = \"error=SEAL:E99\"\n");
    let acme = lab.tenant("acme");
    lab.ship(
        "acme",
        "4C",
        "PL-0201,corning_96_wellplate_360ul_flat,A1,S-201,serum,150 uL\nPL-0201,corning_96_wellplate_360ul_flat,A2,S-202,serum,150 uL\n",
    );
    let file = lab.dir.join("jam.yaml");
    std::fs::write(
        &file,
        "labwright: 1\nname: Draw then seal\nlabware:\n  samples: { container: PL-0201, discard: true }\n  norm:\n    type: corning_96_wellplate_360ul_flat\n    store: { condition: 4C }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1:A2, to: norm/A1:A2, volume: 40 uL }\n  - seal: norm\n",
    )
    .unwrap();
    let (_, so, se) = lab.ctl(&acme, &["submit", file.to_str().unwrap(), "--wait", "--format", "json"]);
    let run: serde_json::Value = serde_json::from_str(so.lines().next().unwrap_or("{}")).unwrap_or_default();
    let id = run["run"]["id"].as_str().unwrap_or_else(|| panic!("{so}{se}")).to_string();
    let runs = lab.json(&acme, &["runs", "--format", "json"]);
    let state = runs.as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap()["state"].clone();
    assert_eq!(state, "failed", "the sealer jammed: {runs}");
    let barcode = format!("{}-norm", id.trim_start_matches("run_").chars().take(8).collect::<String>());
    let k = lab.json(&acme, &["container", "show", &barcode, "--format", "json"]);
    let wells: Vec<(String, String, f64, String)> = k["wells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let s = |f: &str| w[f].as_str().unwrap().to_string();
            (s("well"), s("sample"), w["volume_ul"].as_f64().unwrap(), w["from"][0].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(
        wells,
        [
            ("A1".into(), "S-201".into(), 40.0, "PL-0201/A1".into()),
            ("A2".into(), "S-202".into(), 40.0, "PL-0201/A2".into())
        ],
        "{k}"
    );
    assert_eq!(k["location"], "fridge1", "{k}");
    let shipped = lab.json(&acme, &["container", "show", "PL-0201", "--format", "json"]);
    assert_eq!(shipped["location"], "fridge1", "not discarded after a failed run: {shipped}");
    let left: Vec<f64> =
        shipped["wells"].as_array().unwrap().iter().map(|w| w["volume_ul"].as_f64().unwrap()).collect();
    assert_eq!(left, [110.0, 110.0], "{shipped}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// Frozen material thaws before the run's first step, and the plan and the promise count it:
/// a plate kept at −20 °C (30 min to thaw) is fetched, the run says it is thawing, its first
/// task starts only after, and the plan's end is at least the thaw away.
#[test]
fn frozen_material_thaws_before_the_first_step_and_the_plan_counts_it() {
    let lab = serve_lab_on("thaw", "0.001", None);
    let acme = lab.tenant("acme");
    lab.ship("acme", "-20C", "FZ-0301,corning_96_wellplate_360ul_flat,A1,S-301,serum,150 uL\n");
    let file = lab.dir.join("thaw.yaml");
    std::fs::write(
        &file,
        "labwright: 1\nname: From the freezer\nlabware:\n  samples: { container: FZ-0301 }\n  assay: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1, to: assay/A1, volume: 20 uL }\n",
    )
    .unwrap();
    // The lab's quote (it knows where the plate is kept) counts the thaw as the plan will.
    let quote = lab_quote(&lab, &acme, &file);
    assert!(quote.estimated_start_s >= 1800.0, "the quote's first task waits out the thaw: {quote:?}");
    let started = std::time::Instant::now();
    let (code, so, se) = lab.ctl(&acme, &["submit", file.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let wall = started.elapsed().as_secs_f64();
    let run: serde_json::Value = serde_json::from_str(so.lines().next().unwrap()).unwrap();
    let id = run["run"]["id"].as_str().unwrap().to_string();
    let (_, events, _) = lab.ctl(&acme, &["watch", &id, "--format", "json"]);
    let events: Vec<serde_json::Value> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seq_of = |kind: &str| events.iter().find(|e| e["kind"] == kind).map(|e| e["seq"].as_i64().unwrap());
    let thawing = events.iter().find(|e| e["kind"] == "thawing").unwrap_or_else(|| panic!("no thawing: {events:?}"));
    assert_eq!(thawing["payload"]["minutes"], 30, "{thawing}");
    assert!(seq_of("kitted") < seq_of("thawing") && seq_of("thawing") < seq_of("task_started"), "{events:?}");
    let planned =
        events.iter().find(|e| e["kind"] == "scheduled").unwrap()["payload"]["planned_end_s"].as_f64().unwrap();
    assert!(planned >= 1800.0, "the plan's end counts the 30 min thaw: {planned} s");
    assert!(wall >= 1.8, "30 device minutes at 0.001 is 1.8 s of waiting: {wall:.2} s");
    // The plate thawed while the plan waited for it, not after: a run fetched only at its first
    // step's turn ended a whole thaw (1,800 s) late. Less than that is the time scale's jitter.
    let late =
        events.iter().find(|e| e["kind"] == "promise_broken").map(|e| e["payload"]["late_by_s"].as_f64().unwrap());
    assert!(late.is_none_or(|s| s < 1500.0), "the thaw was waited twice: late by {late:?} s");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// The lab's own quote of protocol `file` for `token`'s tenant (`labctl quote` is local: it knows
/// nothing of the inventory or of who kits).
fn lab_quote(lab: &Lab, token: &str, file: &Path) -> protos::labwright::v1::QuoteResponse {
    lab_quote_in(lab, token, file, "")
}

/// Where people kit, the plan has their time: each run's kitting is a task on one of the site's
/// two technicians before anything else of the run, and the thaw of its frozen plate follows.
/// Three runs submitted at once: two are kitted at once, the third waits for a technician. The
/// lab's quote counts the kitting and the thaw; each run's history has its kitting task, then
/// the thaw, then its work.
#[test]
fn kitting_is_planned_on_the_technicians() {
    use labd::kitting_tasks::{FETCH_S, LABEL_S};
    let lab = serve_lab_with("kitplan", "0.001", None, "kitting = \"technicians\"\n");
    let acme = lab.tenant("acme");
    let tech = lab.technician();
    lab.ship("acme", "-20C", "FZ-0401,corning_96_wellplate_360ul_flat,A1,S-401,serum,150 uL\n");
    let file = lab.dir.join("kitplan.yaml");
    std::fs::write(
        &file,
        "labwright: 1\nname: From the freezer\nlabware:\n  samples: { container: FZ-0401 }\n  assay: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1, to: assay/A1, volume: 20 uL }\n",
    )
    .unwrap();
    // A plate fetched, a plate and a tip rack labelled; then 30 min of thaw.
    let work_s = FETCH_S + 2.0 * LABEL_S;
    let quote = lab_quote(&lab, &acme, &file);
    assert!(quote.estimated_start_s < 1.0, "kitting starts at once on an idle lab: {quote:?}");
    assert!(quote.earliest_completion_s >= work_s + 1800.0, "the quote counts kitting and thaw: {quote:?}");
    let runs: Vec<String> = (0..3).map(|i| lab.submit_file(&acme, &file, &["--key", &format!("k{i}")])).collect();
    let watches: Vec<_> = runs.iter().map(|r| watch_lines(&lab, &acme, r)).collect();
    // Two technicians: two lists are issued at once.
    let issued: Vec<bool> = watches.iter().take(2).map(|w| w.iter().any(|l| l.contains("\"pick_list\""))).collect();
    assert_eq!(issued, [true, true], "the first two runs' lists went to the technicians");
    let plan = lab.ok(&tech, &["schedule", "--format", "json"]);
    let slots = items(&plan);
    let kitting: Vec<&serde_json::Value> =
        slots.iter().filter(|s| s["label"].as_str().is_some_and(|l| l.starts_with("kitting"))).collect();
    assert_eq!(kitting.len(), 3, "a kitting task per run: {plan}");
    let lanes: std::collections::BTreeSet<&str> = kitting.iter().map(|s| s["lane"].as_str().unwrap()).collect();
    assert_eq!(lanes, ["technician1", "technician2"].into(), "on the site's technicians: {plan}");
    // No technician kits two runs at once.
    for a in &kitting {
        for b in &kitting {
            if a["run"] != b["run"] && a["lane"] == b["lane"] {
                let (a0, a1) = (a["planned_start_ms"].as_i64().unwrap(), a["planned_end_ms"].as_i64().unwrap());
                let b0 = b["planned_start_ms"].as_i64().unwrap();
                assert!(b0 >= a1 || b0 < a0, "two kittings overlap on {}: {plan}", a["lane"]);
            }
        }
    }
    // Each run's work is planned after its kitting and the thaw.
    for run in &runs {
        let kit_end = kitting.iter().find(|s| s["run"] == run.as_str()).unwrap()["planned_end_ms"].as_i64().unwrap();
        let first = slots
            .iter()
            .filter(|s| s["run"] == run.as_str() && s["kind"] == "task")
            .filter(|s| {
                !s["label"].as_str().unwrap().starts_with("kitting")
                    && !s["label"].as_str().unwrap().starts_with("thawing")
            })
            .map(|s| s["planned_start_ms"].as_i64().unwrap())
            .min()
            .unwrap();
        assert!(
            first >= kit_end + 1700,
            "{run}: its work starts after its kitting and 30 min of thaw (1.8 s here): {plan}"
        );
    }
    // Kitted by barcode, run by run; each then goes on.
    for run in &runs {
        let list = loop {
            let list = items(&lab.ok(&tech, &["kit", run, "--format", "json"]));
            if !list.is_empty() {
                break list;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        for item in &list {
            lab.ok(&tech, &["kit", run, "--scan", item["expected"].as_str().unwrap()]);
        }
    }
    lab.wait_final(&acme, &runs.iter().map(String::as_str).collect::<Vec<_>>(), 120);
    let (_, events, _) = lab.ctl(&acme, &["watch", &runs[2], "--format", "json"]);
    let kinds: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            let label = e["payload"]["label"].as_str().map(|l| l.split(':').next().unwrap().to_string());
            match e["kind"].as_str()? {
                "task_started" => Some(format!("started {}", label.unwrap_or_default())),
                k @ ("kitted" | "thawing") => Some(k.to_string()),
                _ => None,
            }
        })
        .collect();
    let at = |k: &str| kinds.iter().position(|x| x == k).unwrap_or_else(|| panic!("no {k}: {kinds:?}"));
    let work =
        kinds.iter().position(|x| x.starts_with("started ") && !x.ends_with("kitting") && !x.ends_with("thawing"));
    let work = work.unwrap_or_else(|| panic!("no work started: {kinds:?}"));
    assert!(at("started kitting") < at("kitted") && at("kitted") < at("thawing"), "{kinds:?}");
    assert!(at("thawing") < work && at("started thawing") < work, "{kinds:?}");
    let states = items(&lab.ok(&acme, &["runs", "--format", "json"]));
    assert!(states.iter().all(|r| r["state"] == "succeeded"), "{states:?}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// Kitting by people: before its first step a run's pick list goes to technicians — the new
/// labware labelled for the run, its reagent from the unexpired lot, never the expired one —
/// and the run waits until each item is scanned; a wrong barcode is refused naming the one
/// expected; a scientist cannot see or kit pick lists; once kitted, the run goes on.
#[test]
fn a_run_waits_until_technicians_kit_it_by_barcode() {
    let lab = serve_lab_with("kit", "0.001", None, "kitting = \"technicians\"\n");
    let acme = lab.tenant("acme");
    let tech = lab.technician();
    let ok = |token: &str, args: &[&str]| lab.ok(token, args);
    ok(&tech, &["stock", "receive", "PBS", "--lot", "P-GONE", "--expires", "2020-01-01", "--volume", "500 mL"]);
    ok(&tech, &["stock", "receive", "PBS", "--lot", "P-GOOD", "--expires", "2099-12-31", "--volume", "100 mL"]);
    let file = lab.dir.join("kit.yaml");
    std::fs::write(
        &file,
        "labwright: 1\nname: PBS into a plate\nliquids:\n  buffer: { reagent: PBS }\nlabware:\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 10 mL } } }\n  plate: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: res/A1, to: plate/A1:H1, volume: 20 uL, tips: always }\n",
    )
    .unwrap();
    let run = lab.submit_file(&acme, &file, &[]);
    let events = watch_lines(&lab, &acme, &run);
    let issued =
        events.iter().find(|l| l.contains("\"pick_list\"")).unwrap_or_else(|| panic!("no pick list for {run}"));
    assert!(!issued.contains("P-GOOD"), "the tenant's event says how many items, not the lab's lots: {issued}");
    let list = items(&ok(&tech, &["kit", &run, "--format", "json"]));
    let kinds: Vec<(&str, &str)> =
        list.iter().map(|i| (i["kind"].as_str().unwrap(), i["expected"].as_str().unwrap())).collect();
    let prefix = short(&run);
    assert_eq!(
        kinds,
        [
            ("labware", format!("{prefix}-res").as_str()),
            ("labware", format!("{prefix}-plate").as_str()),
            ("labware", format!("{prefix}-tips").as_str()),
            ("reagent", "P-GOOD"),
        ],
        "{list:?}"
    );
    assert_eq!(list[1]["to"], "hotel1", "a plate goes where plates wait for their first move: {list:?}");
    assert!(
        list[3]["what"].as_str().unwrap().starts_with("10000 µL of PBS (lot P-GOOD) into `res` wells A1"),
        "{list:?}"
    );
    // Every run waiting is on the technicians' list; scientists see none of it.
    assert!(items(&ok(&tech, &["kit", "--format", "json"])).len() == 4);
    let (code, _, se) = lab.ctl(&acme, &["kit", &run]);
    assert!(code != 0 && se.contains("technicians and admins"), "{se}");
    // The console's kitting route shows technicians the same list, and nothing to a scientist.
    let (code, body) = console_get(&lab.console, "/api/picks", &tech);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&format!("{prefix}-plate")) && body.contains("P-GOOD"), "{body}");
    let (code, body) = console_get(&lab.console, "/api/picks", &acme);
    assert!(code == 403 && !body.contains("P-GOOD"), "{code} {body}");
    // A wrong barcode is refused naming the right one; the run has not started.
    let (code, _, se) = lab.ctl(&tech, &["kit", &run, "--scan", "P-GONE"]);
    assert!(code != 0 && se.contains(&format!("expects barcode `{prefix}-res`, not `P-GONE`")), "{se}");
    let (code, _, se) = lab.ctl(&tech, &["kit", &run, "--scan", "P-GONE", "--item", "3"]);
    assert!(code != 0 && se.contains("expects barcode `P-GOOD`"), "{se}");
    let runs = lab.json(&acme, &["runs", "--format", "json"]);
    let state = runs.as_array().unwrap().iter().find(|r| r["id"] == run.as_str()).unwrap()["state"].clone();
    assert!(state != "succeeded" && state != "failed", "the run waits for its material: {state}");
    // Kitted from the console at tablet width, as a technician with a scanner would (by labctl
    // where no Chromium is installed).
    let script = root().join("tests/browser/kitting.mjs");
    let browser = chromium_available();
    if browser {
        let shots = root().join("target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let out = Command::new("node")
            .arg(&script)
            .args([&lab.console, &tech, &run, "P-GONE"])
            .arg(&shots)
            .args(kinds.iter().map(|(_, code)| *code))
            .output()
            .unwrap();
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "kitting in Chromium failed:\n{so}\n{se}");
        assert!(std::fs::metadata(shots.join("console-kitting.png")).is_ok_and(|m| m.len() > 10_000));
    } else {
        for (_, code) in &kinds {
            ok(&tech, &["kit", &run, "--scan", code]);
        }
    }
    let done = items(&ok(&tech, &["kit", &run, "--format", "json"]));
    assert!(done.iter().all(|i| i["confirmed_by"].is_string() && i["confirmed_at_ms"].as_i64() > Some(0)), "{done:?}");
    assert!(items(&ok(&tech, &["kit", "--format", "json"])).is_empty(), "nothing left to kit");
    // Each confirmation (by CLI or console) is in the audit trail with the barcode scanned.
    let trail = lab.json(&tech, &["audit", "--format", "json"]);
    let picks: Vec<&serde_json::Value> =
        trail.as_array().unwrap().iter().filter(|e| e["action"] == "pick_confirmed").collect();
    assert_eq!(picks.len(), kinds.len(), "{trail}");
    for (_, code) in &kinds {
        assert!(
            picks.iter().any(|e| e["detail"].as_str().unwrap().contains(&format!("scanned {code}"))),
            "{code}: {trail}"
        );
    }
    lab.wait_final(&acme, &[&run], 120);
    let kitted = events.iter().find(|l| l.contains("\"kitted\""));
    assert!(kitted.is_some(), "the run says it was kitted");
    // A run waiting for its material can be cancelled; its list leaves the technicians' page.
    let second = lab.submit_file(&acme, &file, &["--key", "second"]);
    let events = watch_lines(&lab, &acme, &second);
    assert!(events.iter().any(|l| l.contains("\"pick_list\"")), "no pick list for {second}");
    assert_eq!(lab.ctl(&acme, &["cancel", &second]).0, 0);
    let ended = events.iter().find(|l| l.contains("\"state\"") && (l.contains("cancelled") || l.contains("failed")));
    assert!(ended.as_ref().is_some_and(|l| l.contains("cancelled")), "{ended:?}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// Intake from a declaration: acme declares its shipment before sending it (a bad manifest is
/// refused then, whole, a problem per line; the same barcodes twice are refused). It waits in
/// the technicians' work queue, which globex never sees. A technician receives it from the
/// console at tablet width, scanning each container (a stray barcode set aside), into the
/// fridge; it leaves the queue, its containers are acme's, and it cannot be received twice.
#[test]
fn a_declared_shipment_is_received_at_the_bench() {
    let lab = serve_lab_on("intake", "0.001", None);
    let acme = lab.tenant("acme");
    let globex = lab.tenant("globex");
    let tech = lab.technician();
    let bad = lab.dir.join("bad.csv");
    std::fs::write(
        &bad,
        "barcode,type,well,sample,liquid,volume\nPL-0002,corning_96_wellplate_360ul_flat,Z9,S,serum,10 uL\nPL-0003,no_such_plate,A1,S,serum,10 uL\n",
    )
    .unwrap();
    let (code, _, se) = lab.ctl(&acme, &["ship", bad.to_str().unwrap()]);
    assert!(code != 0 && se.contains("nothing was declared"), "{se}");
    assert!(se.contains("line 2: well `Z9` does not exist") && se.contains("line 3: unknown labware type"), "{se}");
    let manifest = lab.dir.join("shipment.csv");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let declared = lab.json(&acme, &["ship", manifest.to_str().unwrap(), "--format", "json"]);
    let id = declared["id"].as_str().unwrap().to_string();
    let shipped: Vec<(&str, &str, i64)> = declared["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["barcode"].as_str().unwrap(), k["type"].as_str().unwrap(), k["wells"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        shipped,
        [("PL-0001", "corning_96_wellplate_360ul_flat", 3), ("RS-0001", "nest_12_reservoir_15ml", 1)],
        "{declared}"
    );
    let (code, _, se) = lab.ctl(&acme, &["ship", manifest.to_str().unwrap()]);
    assert!(code != 0 && se.contains(&format!("in shipment {id} already")), "{se}");
    // Staff declaring must say for whom.
    let (code, _, se) = lab.ctl(&tech, &["ship", manifest.to_str().unwrap()]);
    assert!(code != 0 && se.contains("name the tenant"), "{se}");
    // Listed for acme and the technicians; not for globex, by CLI or console.
    assert_eq!(items(&lab.ok(&acme, &["shipments", "--format", "json"]))[0]["id"], id.as_str());
    let staff = items(&lab.ok(&tech, &["shipments", "--format", "json"]));
    assert_eq!((staff.len(), staff[0]["tenant"].as_str()), (1, Some("acme")), "{staff:?}");
    assert!(items(&lab.ok(&globex, &["shipments", "--format", "json"])).is_empty());
    let (code, body) = console_get(&lab.console, "/api/shipments", &globex);
    assert!(code == 200 && !body.contains("PL-0001") && !body.contains(&id), "{code} {body}");
    assert!(items(&lab.ok(&acme, &["containers", "--format", "json"])).is_empty(), "not received yet");

    // Received from the console as a technician at the bench would (by the console's API where
    // no Chromium is installed).
    let browser = chromium_available();
    let receive = format!("/api/shipments/{id}/receive");
    if browser {
        let shots = root().join("target/console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        let out = Command::new("node")
            .arg(root().join("tests/browser/intake.mjs"))
            .args([&lab.console, &tech, &id, "XX-9999", "4C"])
            .arg(&shots)
            .args(["PL-0001", "RS-0001"])
            .output()
            .unwrap();
        let (so, se) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "intake in Chromium failed:\n{so}\n{se}");
        assert!(std::fs::metadata(shots.join("console-intake.png")).is_ok_and(|m| m.len() > 10_000));
    } else {
        let half = serde_json::json!({"scanned": ["PL-0001"], "location": "4C"});
        let (code, body) = console_post(&lab.console, &receive, &tech, &half);
        assert!(code >= 400 && body.contains("not scanned yet: RS-0001"), "{code} {body}");
        let all = serde_json::json!({"scanned": ["PL-0001", "RS-0001"], "location": "4C"});
        let (code, body) = console_post(&lab.console, &receive, &tech, &all);
        assert_eq!(code, 200, "{body}");
    }
    let mine = items(&lab.ok(&acme, &["containers", "--format", "json"]));
    let got: Vec<(&str, &str, i64)> = mine
        .iter()
        .map(|k| (k["barcode"].as_str().unwrap(), k["location"].as_str().unwrap(), k["slot"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, [("PL-0001", "fridge1", 1), ("RS-0001", "fridge1", 2)], "each at a position of its own: {mine:?}");
    let listed = lab.ok(&tech, &["containers"]);
    assert!(listed.contains("fridge1 #2"), "the listing says where: {listed}");
    let k = lab.json(&acme, &["container", "show", "PL-0001", "--format", "json"]);
    assert_eq!(k["wells"].as_array().unwrap().len(), 3, "{k}");
    assert!(items(&lab.ok(&tech, &["shipments", "--format", "json"])).is_empty(), "it left the queue");
    // Never twice: the console says so; labctl finds nothing waiting.
    let again = serde_json::json!({"scanned": ["PL-0001", "RS-0001"]});
    let (code, body) = console_post(&lab.console, &receive, &tech, &again);
    assert!(code >= 400 && body.contains("received already"), "{code} {body}");
    let (code, _, se) = labctl_typing(&lab.url, &tech, &["receive", "--shipment", &id], "PL-0001\nRS-0001\n");
    assert!(code != 0 && se.contains(&format!("no shipment {id} waits")), "{se}");
    // The audit trail says who received which shipment.
    let trail = lab.json(&tech, &["audit", "--format", "json"]);
    let entry = trail.as_array().unwrap().iter().find(|e| e["action"] == "shipment_received").cloned();
    assert!(entry.as_ref().is_some_and(|e| e["subject"] == format!("shipment {id} of acme").as_str()), "{trail}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// kill -9 while a run waits for its kitting, and again after it has ended: the pick list
/// survives the restart (an item scanned stays scanned, the others are still expected), the run
/// goes on once they are scanned, and the container's well, the reagent lot and the tip racks
/// are drawn down exactly once.
#[test]
fn a_kill_during_kitting_or_after_a_run_counts_nothing_twice() {
    let mut lab = serve_lab_with("kitkill", "0.001", None, "kitting = \"technicians\"\n");
    let acme = lab.tenant("acme");
    let tech = lab.technician();
    lab.ship("acme", "4C", "PL-0501,corning_96_wellplate_360ul_flat,A1,S-501,serum,150 uL\n");
    lab.ok(&tech, &["stock", "receive", "PBS", "--lot", "P-1", "--expires", "2099-12-31", "--volume", "100 mL"]);
    lab.ok(&tech, &["stock", "count", "opentrons_96_tiprack_300ul", "--on-hand", "10", "--reorder-at", "2"]);
    let file = lab.dir.join("kitkill.yaml");
    std::fs::write(
        &file,
        "labwright: 1\nname: Sample and buffer\nliquids:\n  buffer: { reagent: PBS }\nlabware:\n  samples: { container: PL-0501 }\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 10 mL } } }\n  assay: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1, to: assay/A1, volume: 20 uL }\n  - transfer: { from: res/A1, to: assay/A2, volume: 30 uL }\n",
    )
    .unwrap();
    let run = lab.submit_file(&acme, &file, &[]);
    assert!(watch_lines(&lab, &acme, &run).iter().any(|l| l.contains("\"pick_list\"")), "no pick list for {run}");
    let before = items(&lab.ok(&tech, &["kit", &run, "--format", "json"]));
    let expected: Vec<String> = before.iter().map(|i| i["expected"].as_str().unwrap().to_string()).collect();
    lab.ok(&tech, &["kit", &run, "--scan", &expected[0]]);

    lab.kill_and_restart();
    let after = items(&lab.ok(&tech, &["kit", &run, "--format", "json"]));
    let again: Vec<String> = after.iter().map(|i| i["expected"].as_str().unwrap().to_string()).collect();
    assert_eq!(again, expected, "the same list after the restart");
    let scanned: Vec<bool> = after.iter().map(|i| i["confirmed_by"].is_string()).collect();
    assert_eq!(scanned.iter().filter(|&&s| s).count(), 1, "only the item scanned before: {after:?}");
    assert!(scanned[0], "{after:?}");
    for code in &expected[1..] {
        lab.ok(&tech, &["kit", &run, "--scan", code]);
    }
    lab.wait_final(&acme, &[&run], 120);
    let state = items(&lab.ok(&acme, &["runs", "--format", "json"]))[0]["state"].clone();
    assert_eq!(state, "succeeded");

    let counted = |lab: &Lab| {
        let k = lab.json(&acme, &["container", "show", "PL-0501", "--format", "json"]);
        let a1 = k["wells"].as_array().unwrap().iter().find(|w| w["well"] == "A1").unwrap()["volume_ul"].as_f64();
        let stock = lab.json(&tech, &["stock", "--format", "json"]);
        let lot = stock["lots"].as_array().unwrap().iter().find(|l| l["lot"] == "P-1").unwrap()["volume_ul"].as_f64();
        let racks = stock["consumables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "opentrons_96_tiprack_300ul")
            .unwrap()["on_hand"]
            .as_i64();
        (a1.unwrap(), lot.unwrap(), racks.unwrap())
    };
    let once = counted(&lab);
    assert_eq!(once, (130.0, 90_000.0, 9), "20 µL from A1, 10 mL of PBS, one tip rack");
    lab.kill_and_restart();
    // The restarted labd has taken up what it had (its API answers): nothing is counted again.
    assert_eq!(counted(&lab), once, "a restart after the run counts nothing again");
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// An automated store: a −20 °C store an arm reaches. A plate kept there is brought out by the
/// arm, not fetched by hand: its pick item says so and is confirmed in the arm's name once the
/// arm, on the wire, has taken it from the store to where the run's plates wait; the thaw still
/// comes before the run's first step, and the run draws from the plate.
#[test]
fn a_plate_in_an_automated_store_is_brought_out_by_an_arm() {
    let site = std::fs::read_to_string(root().join("sites/sim.toml"))
        .unwrap()
        .replace("reach = [\"hotel1\", \"lh1\"", "reach = [\"store20\", \"hotel1\", \"lh1\"")
        .replace(
            "# Where containers are kept between runs: tenants' samples, runs' stored outputs.\n",
            "# Where containers are kept between runs: tenants' samples, runs' stored outputs.\n[[storage]]\nid = \"store20\"\ncondition = \"-20C\"\npositions = 40\nautomated = true\n\n",
        );
    assert!(site.contains("automated = true") && site.contains("\"store20\", \"hotel1\""), "the site was edited");
    let lab = serve_lab_on("retrieve", "0.001", Some(&site));
    let acme = lab.tenant("acme");
    let tech = lab.technician();
    lab.ship("acme", "store20", "AS-0601,corning_96_wellplate_360ul_flat,A1,S-601,serum,150 uL\n");
    let file = lab.dir.join("retrieve.yaml");
    std::fs::write(
        &file,
        "labwright: 1\nname: From the automated store\nlabware:\n  samples: { container: AS-0601 }\n  assay: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1, to: assay/A1, volume: 20 uL }\n",
    )
    .unwrap();
    let (code, so, se) = lab.ctl(&acme, &["submit", file.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let run: serde_json::Value = serde_json::from_str(so.lines().next().unwrap()).unwrap();
    let id = run["run"]["id"].as_str().unwrap().to_string();
    let runs = items(&lab.ok(&acme, &["runs", "--format", "json"]));
    assert_eq!(runs[0]["state"], "succeeded", "{so}");
    let list = items(&lab.ok(&tech, &["kit", &id, "--format", "json"]));
    let fetched = list.iter().find(|i| i["expected"] == "AS-0601").unwrap_or_else(|| panic!("{list:?}"));
    assert_eq!(
        (fetched["kind"].as_str(), fetched["from"].as_str(), fetched["to"].as_str()),
        (Some("retrieval"), Some("store20"), Some("hotel1")),
        "{fetched}"
    );
    assert_eq!(fetched["confirmed_by"], "arm1", "the arm confirmed what it brought out: {fetched}");
    assert!(fetched["what"].as_str().unwrap().contains("brought out by an arm"), "{fetched}");
    assert!(
        list.iter().filter(|i| i["expected"] != "AS-0601").all(|i| i["confirmed_by"] == "simulated technician"),
        "the rest by hand: {list:?}"
    );
    // On the wire, journaled as the run's first command: arm1 took the plate out of the store.
    use labd::store::Store;
    let store = labd::store::sqlite::SqliteStore::open(&lab.dir.join("labd.sqlite")).unwrap();
    let mut moves = store.attempts(&id).unwrap();
    moves.retain(|a| a.intent.task_id < 0);
    moves.sort_by_key(|a| a.intent_at);
    let first = moves.first().unwrap_or_else(|| panic!("no plate moves journaled"));
    assert_eq!((first.intent.instrument.as_str(), first.outcome.as_deref()), ("arm1", Some("ok")), "{first:?}");
    let op: serde_json::Value = serde_json::from_str(&first.intent.op_json).unwrap();
    assert!(op["labware"].as_str().unwrap().ends_with("samples") && op["to"] == "hotel1", "{op}");
    let k = lab.json(&acme, &["container", "show", "AS-0601", "--format", "json"]);
    let a1 = k["wells"].as_array().unwrap().iter().find(|w| w["well"] == "A1").unwrap()["volume_ul"].as_f64();
    assert_eq!(a1, Some(130.0), "{k}");
    let (_, events, _) = lab.ctl(&acme, &["watch", &id, "--format", "json"]);
    assert!(events.contains("\"thawing\""), "the plate thawed after it came out: {events}");
    let _ = std::fs::remove_dir_all(&lab.dir);
}
