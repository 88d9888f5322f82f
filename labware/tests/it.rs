//! Labware integration tests: the Opentrons corpus, geometry properties, addresses, the site.

use labware::{opentrons, LabwareDef, Library, Site, WellSelection};
use proptest::prelude::*;
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/labware/opentrons-v2")
}

fn corpus_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(corpus()).expect("corpus present at ../shared/corpus").flatten() {
        if dir.path().is_dir() {
            for f in std::fs::read_dir(dir.path()).expect("readable").flatten() {
                if f.path().extension().is_some_and(|e| e == "json") {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_opentrons_definition_imports_with_same_wells_and_volumes() {
    let files = corpus_files();
    assert_eq!(files.len(), 154, "the corpus holds 154 definitions");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let src: serde_json::Value = serde_json::from_str(&text).unwrap();
        let def = opentrons::import(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let wells = src["wells"].as_object().unwrap();
        assert_eq!(def.wells.len(), wells.len(), "{}", f.display());
        for w in &def.wells {
            let s = &wells[&w.name];
            assert_eq!(w.max_volume_ul, s["totalLiquidVolume"].as_f64().unwrap(), "{} {}", f.display(), w.name);
            assert_eq!(w.depth_mm, s["depth"].as_f64().unwrap());
            assert_eq!(
                (w.x_mm, w.y_mm, w.z_mm),
                (s["x"].as_f64().unwrap(), s["y"].as_f64().unwrap(), s["z"].as_f64().unwrap())
            );
        }
        // Ordering is kept: the first column comes first.
        let first = src["ordering"][0][0].as_str();
        assert_eq!(def.wells.first().map(|w| w.name.as_str()), first);
        // Round trip through Labwright's own format keeps everything.
        let again = LabwareDef::from_json(&def.to_json()).unwrap();
        assert_eq!(again, def);
    }
}

#[test]
fn reference_wells_of_a_96_well_plate() {
    let lib = Library::shipped();
    let p = lib.get("corning_96_wellplate_360ul_flat").unwrap();
    let a1 = p.well("A1").unwrap();
    let h12 = p.well("H12").unwrap();
    assert_eq!((a1.x_mm, a1.y_mm), (14.37, 74.24));
    assert_eq!((h12.x_mm, h12.y_mm), (113.37, 11.24));
    assert_eq!(p.rows().len(), 8);
    assert_eq!(p.columns().len(), 12);
    assert_eq!(p.grid_description(), "rows A–H, columns 1–12");
}

#[test]
fn wells_lie_inside_the_footprint_and_no_deeper_than_the_labware() {
    // Holds for the shipped library; a few corpus adapters and lids are irregular by design.
    for def in Library::shipped().iter() {
        for w in &def.wells {
            assert!(w.x_mm >= 0.0 && w.x_mm <= def.footprint.x_mm, "{} {}", def.load_name, w.name);
            assert!(w.y_mm >= 0.0 && w.y_mm <= def.footprint.y_mm, "{} {}", def.load_name, w.name);
            assert!(w.depth_mm <= def.footprint.z_mm + 1e-9, "{} {}", def.load_name, w.name);
        }
    }
}

#[test]
fn shipped_library_covers_the_common_labware() {
    let lib = Library::shipped();
    assert!(lib.len() >= 25);
    for kind in ["well_plate", "tip_rack", "reservoir", "tube_rack"] {
        assert!(lib.iter().any(|d| d.kind.as_str() == kind), "{kind}");
    }
    for tip in [20.0, 200.0, 300.0, 1000.0] {
        assert!(lib.iter().any(|d| d.tip.is_some_and(|t| t.volume_ul == tip)), "{tip} µL tips");
    }
    for wells in [1, 8, 12, 96, 384] {
        assert!(lib.iter().any(|d| d.wells.len() == wells), "{wells} wells");
    }
}

fn names(sel: &str, load: &str) -> Result<Vec<String>, String> {
    let lib = Library::shipped();
    let def = lib.get(load).unwrap();
    let s = WellSelection::parse(sel).map_err(|e| e.to_string())?;
    let idx = s.resolve(def).map_err(|e| e.to_string())?;
    Ok(idx.into_iter().map(|i| def.wells[i].name.clone()).collect())
}

#[test]
fn well_addresses() {
    let p = "corning_96_wellplate_360ul_flat";
    let check = |sel: &str, want: &[&str]| assert_eq!(names(sel, p).unwrap(), want, "{sel}");
    check("A1", &["A1"]);
    check("h12", &["H12"]);
    check("A1:B2", &["A1", "B1", "A2", "B2"]);
    check("A1:B2 by column", &["A1", "B1", "A2", "B2"]);
    check("A1:B2 by row", &["A1", "A2", "B1", "B2"]);
    check("B2:A1", &["A1", "B1", "A2", "B2"]);
    check("A1, C3, A1", &["A1", "C3", "A1"]);
    check("1:2", &["A1", "B1", "C1", "D1", "E1", "F1", "G1", "H1", "A2", "B2", "C2", "D2", "E2", "F2", "G2", "H2"]);
    assert_eq!(names("A", p).unwrap().len(), 12);
    assert_eq!(names("A:B", p).unwrap()[12], "B1");
    assert_eq!(names("A1:H12", p).unwrap().len(), 96);
    assert_eq!(names("A1:P24", "corning_384_wellplate_112ul_flat").unwrap().len(), 384);
}

#[test]
fn bad_well_addresses_say_why() {
    let p = "corning_96_wellplate_360ul_flat";
    let err = |sel: &str| names(sel, p).unwrap_err();
    assert_eq!(err("H13"), "well H13 does not exist (rows A–H, columns 1–12)");
    assert_eq!(err("A1:H13"), "well H13 does not exist (rows A–H, columns 1–12)");
    assert_eq!(err("I"), "row I does not exist (rows A–H, columns 1–12)");
    assert_eq!(err("13"), "column 13 does not exist (rows A–H, columns 1–12)");
    assert!(err("A0").contains("not a well address"));
    assert!(err("1A").contains("not a well address"));
    assert!(err("A1,,B1").contains("empty item"));
    assert!(err("A1 by row").contains("only follow a range"));
    assert!(err("").contains("empty item"));
}

proptest! {
    #[test]
    fn address_parser_never_panics(s in "\\PC{0,40}") {
        let _ = WellSelection::parse(&s);
    }

    #[test]
    fn rectangles_have_rows_times_columns_wells(r0 in 0u8..8, r1 in 0u8..8, c0 in 1u32..13, c1 in 1u32..13, by_row: bool) {
        let sel = format!("{}{}:{}{}{}", (b'A' + r0) as char, c0, (b'A' + r1) as char, c1, if by_row { " by row" } else { "" });
        let got = names(&sel, "corning_96_wellplate_360ul_flat").unwrap();
        let rows = (r0.abs_diff(r1) + 1) as usize;
        let cols = (c0.abs_diff(c1) + 1) as usize;
        prop_assert_eq!(got.len(), rows * cols);
    }
}

#[test]
fn shipped_site_is_the_described_lab() {
    let site = Site::sim().unwrap();
    use labware::InstrumentClass::*;
    let count = |c| site.instruments_of(c).count();
    assert_eq!(count(LiquidHandler), 3);
    assert_eq!(count(PlateReader), 2);
    assert_eq!(count(Incubator), 2);
    assert!(site.instruments_of(Incubator).all(|i| i.capacity == 12));
    assert_eq!((count(HeaterShaker), count(Sealer), count(Centrifuge), count(PlateHotel)), (1, 1, 1, 1));
    assert_eq!(site.arms.len(), 2);
    assert_eq!(site.arms[0].move_time("hotel1", "lh1"), Some(11.0));
    assert_eq!(site.arms[0].move_time("lh1", "hotel1"), Some(11.0));
    assert_eq!(site.arms[0].move_time("lh1", "lh2"), Some(14.0));
    assert_eq!(site.arms[0].move_time("lh1", "reader1"), None);
}

#[test]
fn bad_site_files_name_the_key() {
    let sim = labware::site::SIM_SITE_TOML;
    let err = |text: &str| Site::from_toml(text).unwrap_err().to_string();
    assert!(err(&sim.replace("class = \"incubator\"", "class = \"incubatr\"")).contains("unknown variant `incubatr`"));
    assert!(err(&sim.replace("capacity = 12", "capacity = 0")).contains("capacity must be at least 1"));
    assert!(err(&sim.replace("id = \"lh2\"", "id = \"lh1\"")).contains("used twice"));
    assert!(err(&sim.replace("reach = [\"hotel1\"", "reach = [\"hotel9\"")).contains("unknown nest hotel9"));
    assert!(err(&sim.replace("move_s = 14.0", "move_s = -1.0")).contains("move_s must be a positive"));
    assert!(err(&sim.replace("temperature_c = [4.0, 50.0]", "temperature_c = [50.0, 4.0]")).contains("min <= max"));
    assert!(err(&sim.replace("deck_slots = 11", "deck_slotz = 11")).contains("unknown field `deck_slotz`"));
    assert!(err("[site\nname=1").contains("line"));
    // No instrument is simulated by accident: the endpoint must be written.
    assert!(err(&sim.replacen("endpoint = \"sim\"\n", "", 1)).contains("missing field `endpoint`"));
    // Storage units: a known condition, room for something, an id of their own; prices per
    // day for conditions that exist.
    let fridge = "id = \"fridge1\"\ncondition = \"4C\"\npositions = 40";
    assert!(err(&sim.replace(fridge, "id = \"fridge1\"\ncondition = \"cold\"\npositions = 40"))
        .contains("storage[1] (fridge1).condition: `cold` is not a storage condition; give one of ambient, 4C"));
    assert!(err(&sim.replace(fridge, "id = \"fridge1\"\ncondition = \"4C\"\npositions = 0"))
        .contains("positions: must be at least 1"));
    assert!(err(&sim.replace(fridge, "id = \"lh1\"\ncondition = \"4C\"\npositions = 4")).contains("used twice"));
    assert!(err(&sim.replace("-80C = 0.40", "-70C = 0.40")).contains("prices.storage_per_day.-70C"));
    // An automated store is one an arm reaches (and fetches from).
    let automated = "id = \"fridge1\"\ncondition = \"4C\"\npositions = 40\nautomated = true";
    assert!(err(&sim.replace(fridge, automated)).contains("storage[1] (fridge1).automated: no arm reaches it"));
    let reached = sim.replace(fridge, automated).replace("reach = [\"hotel1\"", "reach = [\"fridge1\", \"hotel1\"");
    let site = Site::from_toml(&reached).unwrap();
    assert!(site.storage[1].automated && site.arms[0].reach.contains(&"fridge1".to_string()));
    // A turnaround is sold with priority only, at a factor of at least 1 on the run's own length.
    let sold = |table: &str| format!("{sim}\n[prices.turnaround]\n{table}\n");
    assert_eq!(
        Site::from_toml(&sold("priority = 1.5")).unwrap().turnaround_target(labware::ServiceClass::Priority),
        Some(1.5)
    );
    assert!(
        err(&sold("standard = 2.0")).contains("prices.turnaround.standard: only priority is sold with a turnaround")
    );
    assert!(err(&sold("priority = 0.9")).contains("prices.turnaround.priority: must be a factor of at least 1"));
    let site = Site::sim().unwrap();
    assert_eq!(site.turnaround_target(labware::ServiceClass::Priority), None);
    assert_eq!(
        site.storage.iter().map(|u| u.condition.as_str()).collect::<Vec<_>>(),
        ["ambient", "4C", "-20C", "-80C"]
    );
}

/// A module on an Opentrons robot names a robot of the site driven over its HTTP API, shares its
/// endpoint and sits in a slot of its own above the robot's labware slots.
#[test]
fn a_module_on_a_robot_is_checked_against_its_robot() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sites/opentrons.toml")).unwrap();
    let site = Site::from_toml(&text).unwrap();
    let hs = site.instruments.iter().find(|i| i.id == "hs1").unwrap();
    assert_eq!((hs.robot.as_deref(), hs.slot), (Some("flex"), Some(7)));
    let err = |text: &str| Site::from_toml(text).unwrap_err().to_string();
    assert!(err(&text.replace("robot = \"flex\"", "robot = \"flux\"")).contains("names no instrument"));
    assert!(err(&text.replace("robot = \"flex\"", "robot = \"reader1\"")).contains("must be an Opentrons robot"));
    assert!(err(&text.replace("robot = \"flex\"\nslot = 7", "robot = \"flex\"\nslot = 3"))
        .contains("slots 1–6 hold flex's"));
    assert!(err(&text.replace("robot = \"flex\"\nslot = 7", "robot = \"flex\"\nslot = 12")).contains("12 is the trash"));
    let moved = text.replace(
        "robot = \"flex\"\nslot = 7\nendpoint = \"sim:opentrons\"",
        "robot = \"flex\"\nslot = 7\nendpoint = \"opentrons:10.0.0.9\"",
    );
    assert!(err(&moved).contains("give it the robot's endpoint"));
    let twice = text.replace("robot = \"ot2\"\nslot = 7", "robot = \"flex\"\nslot = 7");
    assert!(err(&twice).contains("holds another module"));
    assert!(err(&text.replace("robot = \"flex\"\nslot = 7\n", "slot = 7\n")).contains("name the robot too"));
}

/// An arm's taught positions name nests it reaches, once each, and cover all of them.
#[test]
fn taught_positions_cover_the_arms_reach() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sites/opentrons.toml")).unwrap();
    let err = |text: &str| Site::from_toml(text).unwrap_err().to_string();
    let reader = "  { nest = \"reader1\", joints = [250.0, 120.0, 30.0, 30.0, 80.0] },\n";
    assert!(err(&text.replace(reader, "")).contains("reaches reader1 but has no taught position"));
    assert!(err(&text.replace("nest = \"reader1\"", "nest = \"reader9\"")).contains("does not reach"));
    assert!(err(&text.replace("nest = \"reader1\"", "nest = \"tc1\"")).contains("taught twice"));
    assert!(err(&text.replace("joints = [250.0, 120.0, 30.0, 30.0, 80.0]", "joints = []")).contains("finite numbers"));
    // A gripper reaches only its robot's deck and modules, through the robot's endpoint.
    assert!(err(&text.replace("reach = [\"flex\", \"hs1\"]", "reach = [\"flex\", \"hotel1\"]"))
        .contains("hotel1 is not on flex"));
    let moved =
        text.replace("move_s = 15.0\nendpoint = \"sim:opentrons\"", "move_s = 15.0\nendpoint = \"opentrons:10.0.0.9\"");
    assert!(err(&moved).contains("give it the robot's endpoint"));
    assert!(err(&text.replace("robot = \"flex\"\nreach", "robot = \"reader1\"\nreach"))
        .contains("must be an Opentrons robot"));
}
