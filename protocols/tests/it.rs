//! Compiler tests: examples, one test per check, bad input, importers over the corpus, the plan
//! snapshot, and volume conservation.

use labware::{Library, Site};
use proptest::prelude::*;
use protocols::plan::CommandOp;
use protocols::{compile, Compilation, Format, SourceFile};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| Site::sim().unwrap())
}

fn lib() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(Library::shipped)
}

fn run(name: &str, text: &str) -> Compilation {
    compile(&SourceFile::new(name, text), Format::Auto, site(), lib())
}

/// Error codes of a Labwright protocol built from a standard header and the given steps.
fn codes(text: &str) -> Vec<&'static str> {
    let c = run("t.yaml", text);
    c.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.code).collect()
}

const HEADER: &str = "labwright: 1
name: t
liquids:
  water: water
  dye: dye
labware:
  res:
    type: nest_12_reservoir_15ml
    contents:
      A1: { water: 10 mL }
      A2: { dye: 1 mL }
  plate: { type: corning_96_wellplate_360ul_flat }
  pcr: { type: biorad_96_wellplate_200ul_pcr }
  tips: { type: opentrons_96_tiprack_300ul }
  tips20: { type: opentrons_96_tiprack_20ul }
steps:
";

fn with_steps(steps: &str) -> String {
    format!("{HEADER}{steps}")
}

/// Asserts that compiling gives exactly these error codes (by class: syntax and shape, names,
/// then the rest; within a class in source order).
fn check(steps: &str, want: &[&str]) {
    let text = with_steps(steps);
    let got = codes(&text);
    assert_eq!(got, want, "for steps:\n{steps}\nall diagnostics: {:#?}", run("t.yaml", &text).diagnostics);
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn examples_compile_without_diagnostics() {
    let mut n = 0;
    for e in std::fs::read_dir(root().join("examples")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let c = run(&e.path().display().to_string(), &text);
        assert!(c.diagnostics.is_empty(), "{}: {:#?}", e.path().display(), c.diagnostics);
        assert!(c.plan.is_some() && c.quote.is_some());
        // Logs and traces name each command by `CommandOp::name`: the plan's own spelling.
        for command in c.plan.iter().flat_map(|p| &p.tasks).flat_map(|t| &t.commands) {
            let json = serde_json::to_value(&command.op).unwrap();
            assert_eq!(json["op"], command.op.name(), "{json}");
        }
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn a_clean_step_compiles() {
    check("  - transfer: { from: res/A1, to: plate/A1:H1, volume: 50 uL }\n", &[]);
}

#[test]
fn unknown_labware_liquid_well_and_operation() {
    let text = HEADER.replace("nest_12_reservoir_15ml", "nest_12_reservoir_15mll") + "  - wait: 1 min\n";
    assert_eq!(codes(&text), ["P0201"]);
    let text = HEADER.replace("A2: { dye: 1 mL }", "A2: { dey: 1 mL }") + "  - wait: 1 min\n";
    assert_eq!(codes(&text), ["P0204"]);
    check("  - transfer: { from: res/A1, to: plate/H13, volume: 5 uL }\n", &["P0203"]);
    check("  - transfer: { from: res/A1, to: plat/H1, volume: 5 uL }\n", &["P0202"]);
    check("  - trasnfer: { from: res/A1, to: plate/H1, volume: 5 uL }\n", &["P0104"]);
    check("  - transfer: { from: res/A1, to: plate/Z, volume: 5 uL }\n", &["P0203"]);
    check("  - transfer: { from: res/A1, to: plate, volume: 5 uL }\n", &["P0205"]);
}

#[test]
fn unit_and_type_errors() {
    check("  - transfer: { from: res/A1, to: plate/A1, volume: 5 }\n", &["P0110"]);
    check("  - transfer: { from: res/A1, to: plate/A1, volume: 5 min }\n", &["P0110"]);
    check("  - transfer: { from: res/A1, to: plate/A1, volume: 5 furlongs }\n", &["P0110"]);
    check("  - transfer: { from: res/A1, to: plate/A1, volume: [1, 2] }\n", &["P0110", "P0110"]);
    check("  - transfer: { from: [res/A1], to: plate/A1, volume: 5 uL }\n", &["P0103"]);
    check("  - incubate: { labware: plate, temperature: 37 °C, duration: -5 min }\n", &["P0111"]);
    check("  - mix: { wells: plate/A1, times: 2.5, volume: 10 uL }\n", &["P0111"]);
    check("  - transfer: { from: res/A1, to: plate/A1, volume: 5 uL, tips: sometimes }\n", &["P0103"]);
}

#[test]
fn unknown_fields_suggest_the_right_one() {
    let c = run("t.yaml", &with_steps("  - transfer: { from: res/A1, to: plate/A1, volume: 5 uL, tipz: once }\n"));
    let d = &c.diagnostics[0];
    assert_eq!((d.code, d.hint.as_deref()), ("P0101", Some("did you mean `tips`?")));
    let c = run("t.yaml", &with_steps("  - incubat: { labware: plate, temperature: 37 °C, duration: 5 min }\n"));
    assert_eq!(c.diagnostics[0].hint.as_deref(), Some("did you mean `incubate`?"));
}

#[test]
fn well_over_its_max_volume() {
    // 300 µL + 100 µL into a 360 µL well.
    check("  - transfer: { from: res/A1, to: plate/A1, volume: 300 uL }\n  - transfer: { from: res/A1, to: plate/A1, volume: 100 uL }\n", &["P0301"]);
    // Starting contents over the well's capacity.
    let text = HEADER.replace("A2: { dye: 1 mL }", "A2: { dye: 16 mL }") + "  - wait: 1 min\n";
    assert_eq!(codes(&text), ["P0301"]);
}

#[test]
fn drawing_more_than_a_well_holds_is_tracked_through_the_protocol() {
    // 200 µL in, 150 µL out, then another 150 µL: the second draw finds 50 µL.
    check(
        "  - transfer: { from: res/A1, to: plate/A1, volume: 200 uL }
  - transfer: { from: plate/A1, to: plate/A2, volume: 150 uL }
  - transfer: { from: plate/A1, to: plate/A3, volume: 150 uL }\n",
        &["P0302"],
    );
    // An empty well.
    check("  - transfer: { from: plate/B1, to: plate/A2, volume: 50 uL }\n", &["P0302"]);
}

#[test]
fn mixtures_are_tracked_by_composition() {
    let text = with_steps(
        "  - transfer: { from: res/A1, to: plate/A1, volume: 150 uL }
  - transfer: { from: res/A2, to: plate/A1, volume: 50 uL }
  - transfer: { from: plate/A1, to: plate/B1, volume: 100 uL }\n",
    );
    let c = run("t.yaml", &text);
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let t = c.tracked.unwrap();
    // Slot order: res, plate, ...; B1 is well index 1 of the plate.
    let b1 = &t.wells[1][1];
    assert!((b1.contents["water"] - 75.0).abs() < 1e-9);
    assert!((b1.contents["dye"] - 25.0).abs() < 1e-9);
}

#[test]
fn liquids_declare_optics_that_the_plan_carries_with_each_wells_composition() {
    let text = HEADER.replace(
        "  dye: dye\n",
        "  dye: { description: Coomassie, absorbance: { 595 nm: 0.4 OD, 465 nm: 0.9 OD }, fluorescence: 100 RFU }\n",
    ) + "  - transfer: { from: res/A2, to: plate/A1, volume: 50 uL }\n";
    let c = run("t.yaml", &text);
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let plan = c.plan.unwrap();
    let dye = &plan.optics["dye"];
    assert_eq!(dye.absorbance, vec![(465.0, 0.9), (595.0, 0.4)], "sorted by wavelength");
    assert_eq!((dye.fluorescence_rfu, dye.luminescence_rlu_per_s), (Some(100.0), None));
    assert!(!plan.optics.contains_key("water"), "a liquid given only a description has none");
    let res = plan.labware.iter().find(|l| l.name == "res").unwrap();
    assert_eq!(res.composition["A2"]["dye"], 1000.0);
    // Scoped for a run, liquids are the run's own like its labware.
    let scoped = plan.scoped("r1");
    assert!(scoped.optics.contains_key("r1.dye"));
    assert_eq!(scoped.labware.iter().find(|l| l.name == "r1.res").unwrap().composition["A2"]["r1.dye"], 1000.0);
    // Mistakes name the liquid and what to write.
    for (liquid, want) in [
        ("{ absorbance: { 595: 0.4 OD } }", "is not a wavelength"),
        ("{ absorbance: { 595 nm: 0.4 } }", "absorbance of liquid `dye` at `595 nm`"),
        ("{ absorbance: { 595 nm: 0.4 RFU } }", "absorbance"),
        ("{ luminescence: 5 OD }", "luminescence of liquid `dye`"),
        ("{ colour: blue }", "colour"),
        ("[1, 2]", "a description or a map of properties"),
    ] {
        let text = HEADER.replace("  dye: dye\n", &format!("  dye: {liquid}\n")) + "  - wait: 1 s\n";
        let c = run("t.yaml", &text);
        let all = c.diagnostics.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("\n");
        assert!(c.diagnostics.iter().any(|d| d.is_error()) && all.contains(want), "{liquid}: {all}");
    }
}

#[test]
fn volumes_below_every_pipette_minimum() {
    check("  - transfer: { from: res/A1, to: plate/A1, volume: 0.5 uL }\n", &["P0303"]);
    // With only 300 µL tips, 10 µL is below the p300's 20 µL minimum.
    let text = HEADER.replace("  tips20: { type: opentrons_96_tiprack_20ul }\n", "")
        + "  - transfer: { from: res/A1, to: plate/A1, volume: 10 uL }\n";
    assert_eq!(codes(&text), ["P0303"]);
}

#[test]
fn tips_running_out_says_how_many_racks_are_missing() {
    let c = run("t.yaml", &with_steps("  - transfer: { from: res/A1, to: plate/A1:H12, volume: 10 uL, tips: always }\n  - transfer: { from: res/A1, to: pcr/A1:H12, volume: 10 uL, tips: always }\n"));
    let d: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "P0305");
    assert_eq!(d[0].message, "the protocol runs out of tips here: it needs 192 tips, its 1 rack(s) hold 96");
    assert!(d[0].hint.as_deref().unwrap().starts_with("add 1 more rack(s) of opentrons_96_tiprack_20ul"));
}

#[test]
fn no_tip_rack_for_any_pipette() {
    let text = HEADER
        .replace("  tips: { type: opentrons_96_tiprack_300ul }\n  tips20: { type: opentrons_96_tiprack_20ul }\n", "")
        + "  - transfer: { from: res/A1, to: plate/A1, volume: 10 uL }\n";
    assert_eq!(codes(&text), ["P0306"]);
}

/// Two pipetting steps whose tips call for pipettes that hang on different robots are two
/// tasks, one on each (on the Opentrons site the 300 µL tips are the OT-2's, the 1000 µL tips
/// the Flex's); on a site where one handler carries both they share one task.
#[test]
fn steps_needing_pipettes_on_different_robots_are_separate_tasks() {
    let site = Site::from_toml(&std::fs::read_to_string(root().join("../sites/opentrons.toml")).unwrap()).unwrap();
    let text = "labwright: 1\nname: split\nliquids:\n  water: water\nlabware:\n  res:\n    type: nest_12_reservoir_15ml\n    contents:\n      A1: { water: 10 mL }\n  tips: { type: opentrons_96_tiprack_300ul }\n  big: { type: opentrons_96_tiprack_1000ul }\nsteps:\n  - transfer: { from: res/A1, to: res/A2, volume: 100 uL }\n  - transfer: { from: res/A1, to: res/A3, volume: 500 uL }\n";
    let c = protocols::compile(&SourceFile::new("split.yaml", text.to_string()), Format::Auto, &site, lib());
    let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let pipettes: Vec<Vec<String>> = plan.tasks.iter().map(|t| t.pipettes.clone()).collect();
    assert_eq!(pipettes, [vec!["p300_single_gen2".to_string()], vec!["p1000_single_flex".to_string()]]);
    // The shipped site's lh1 carries both: one task.
    assert_eq!(run("split.yaml", text).plan.unwrap().tasks.len(), 1);
}

#[test]
fn capabilities_no_instrument_of_the_site_has() {
    check("  - read_absorbance: { labware: plate, wavelength: 1200 nm }\n", &["P0401"]);
    check("  - read_fluorescence: { labware: plate, excitation: 900 nm, emission: 950 nm }\n", &["P0401"]);
    check("  - incubate: { labware: plate, temperature: 110 °C, duration: 5 min }\n", &["P0401"]);
    check("  - incubate: { labware: plate, temperature: 37 °C, duration: 5 min, shaking: 2000 rpm }\n", &[]);
    check("  - incubate: { labware: plate, temperature: 4 °C, duration: 5 min, shaking: 2000 rpm }\n", &["P0401"]);
    check("  - centrifuge: { labware: plate, force: 5000 xg, duration: 5 min }\n", &["P0401"]);
    check("  - shake: { labware: plate, speed: 5000 rpm, duration: 5 min }\n", &["P0401"]);
    // Labware no instrument accepts: a reservoir in a plate reader.
    check("  - read_absorbance: { labware: res, wavelength: 600 nm }\n", &["P0401"]);
}

#[test]
fn a_max_lag_the_estimates_already_break() {
    check(
        "  - id: add
    transfer: { from: res/A1, to: plate/A1, volume: 50 uL }
  - incubate: { labware: plate, temperature: 37 °C, duration: 30 min }
  - id: read
    read_absorbance: { labware: plate, wavelength: 450 nm }
constraints:
  - { from: add, to: read, max_lag: 5 min }\n",
        &["P0402"],
    );
    check(
        "  - id: add
    transfer: { from: res/A1, to: plate/A1, volume: 50 uL }
  - id: read
    read_absorbance: { labware: plate, wavelength: 450 nm }
constraints:
  - { from: add, to: read, max_lag: 5 min }
  - { from: read, to: add, max_lag: 5 min }
  - { from: add, to: nope, max_lag: 5 min }\n",
        &["P0207", "P0404"],
    );
}

#[test]
fn dependency_cycles() {
    check(
        "  - id: a
    after: b
    seal: plate
  - id: b
    after: a
    unseal: plate\n",
        &["P0403"],
    );
}

/// Fourteen labware for an 11-slot deck is refused at compile time, naming the count and the
/// decks; eleven fit.
#[test]
fn more_labware_than_deck_slots_is_refused_before_the_run() {
    let plates = |n: usize| -> String {
        (0..n).map(|i| format!("  extra{i}: {{ type: corning_96_wellplate_360ul_flat }}\n")).collect()
    };
    // HEADER declares res, plate, pcr, tips and tips20: five on the deck.
    let text = |extra: usize| {
        format!("{HEADER}  - transfer: {{ from: res/A1, to: plate/A1, volume: 50 uL }}\n")
            .replace("steps:\n", &format!("{}steps:\n", plates(extra)))
    };
    let c = run("t.yaml", &text(9));
    let deck: Vec<_> = c.diagnostics.iter().filter(|d| d.message.contains("deck")).collect();
    assert_eq!(deck.len(), 1, "{:#?}", c.diagnostics);
    assert!(deck[0].message.contains("puts 14 labware") && deck[0].message.contains("lh1: 11"), "{}", deck[0].message);
    let c = run("t.yaml", &text(6));
    assert!(!c.has_errors(), "eleven fit: {:#?}", c.diagnostics);
}

/// An over-full `distribute` to a 384-well plate is one diagnostic naming the worst well and the
/// count, not 384; a typo in an operation name comes first although it comes last in the file.
#[test]
fn a_mistake_over_a_plate_is_one_diagnostic_and_names_come_first() {
    let text = format!(
        "{HEADER}  - distribute: {{ from: res/A1, to: p384/A1:P24, volume: 20 uL }}\n  - trasnfer: {{}}\n"
    )
    .replace(
        "  pcr: {",
        "  p384:\n    type: corning_384_wellplate_112ul_flat\n    contents: { \"A1:P24\": { water: 100 uL } }\n  pcr: {",
    );
    let c = run("t.yaml", &text);
    let got: Vec<_> = c.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(got, ["P0104", "P0301"], "{:#?}", c.diagnostics);
    let over = &c.diagnostics[1].message;
    assert!(over.contains("384 wells") && over.contains("p384/A1") && over.contains("p384/P24"), "{over}");
}

#[test]
fn all_diagnostics_are_reported_not_just_the_first() {
    let c = run(
        "t.yaml",
        &with_steps("  - transfer: { from: res/A1, to: plate/H13, volume: 5 uL }\n  - trasnfer: {}\n  - read_absorbance: { labware: plate, wavelength: 1200 nm }\n"),
    );
    let got: Vec<_> = c.diagnostics.iter().map(|d| d.code).collect();
    // The unknown operation first, though it comes second in the file: it is why the rest may
    // not mean much.
    assert_eq!(got, ["P0104", "P0203", "P0401"]);
    assert!(c.plan.is_none());
}

#[test]
fn diagnostics_render_like_rustc_and_as_json() {
    let text = with_steps("  - transfer: { from: res/A1, to: plate/H13, volume: 5 uL }\n");
    let src = SourceFile::new("dilution.yaml", text.clone());
    let c = compile(&src, Format::Auto, site(), lib());
    let rendered = c.diagnostics[0].render(&src);
    expect_test::expect![[r#"
        error[P0203]: plate/H13: well H13 does not exist (rows A–H, columns 1–12)
          --> dilution.yaml:17:35
           |
        17 |   - transfer: { from: res/A1, to: plate/H13, volume: 5 uL }
           |                                   ^^^^^^^^^
           = help: `plate` is a corning_96_wellplate_360ul_flat (rows A–H, columns 1–12)
    "#]]
    .assert_eq(&rendered);
    let json = c.diagnostics[0].to_json(&src);
    assert_eq!(json["line"], 17);
    assert_eq!(json["column"], 35);
    assert_eq!(json["code"], "P0203");
    assert_eq!(json["file"], "dilution.yaml");
}

#[test]
fn volumes_are_split_by_tip_capacity() {
    // 120 µL with only 20 µL tips: 20 × 5 then 10 + 10 (the last two parts equal, never tiny).
    let text = HEADER.replace("  tips: { type: opentrons_96_tiprack_300ul }\n", "")
        + "  - transfer: { from: res/A1, to: plate/A1, volume: 110 uL }\n";
    let c = run("t.yaml", &text);
    let plan = c.plan.unwrap();
    let parts: Vec<f64> = plan.tasks[0]
        .commands
        .iter()
        .filter_map(|c| match &c.op {
            CommandOp::Aspirate { volume_ul, .. } => Some(*volume_ul),
            _ => None,
        })
        .collect();
    assert_eq!(parts, [20.0, 20.0, 20.0, 20.0, 15.0, 15.0]);
}

#[test]
fn tip_policies() {
    let count = |tips: &str| {
        let c = run("t.yaml", &with_steps(&format!("  - transfer: {{ from: res/A1:A2, to: plate/A1:B1, volume: 50 uL, tips: {tips} }}\n  - transfer: {{ from: res/A1, to: plate/A2:C2, volume: 50 uL, tips: {tips} }}\n")));
        let plan = c.plan.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
        plan.tasks.iter().flat_map(|t| &t.commands).filter(|c| matches!(c.op, CommandOp::PickUpTip { .. })).count()
    };
    assert_eq!(count("always"), 5);
    assert_eq!(count("per_source"), 3);
    assert_eq!(count("once"), 2);
}

#[test]
fn plan_json_is_stable() {
    let text = std::fs::read_to_string(root().join("examples/normalisation.yaml")).unwrap();
    let c = run("examples/normalisation.yaml", &text);
    expect_test::expect_file!["snapshots/normalisation.plan.json"].assert_eq(&c.plan.unwrap().to_json());
    let text = std::fs::read_to_string(root().join("examples/elisa.yaml")).unwrap();
    let plan = run("examples/elisa.yaml", &text).plan.unwrap();
    let outline: String = plan
        .tasks
        .iter()
        .map(|t| {
            format!(
                "{} {:?} {} holds={:?} after={:?} commands={} {:.0}s\n",
                t.id,
                t.class.map(|c| c.as_str()),
                t.label,
                t.holds,
                t.after,
                t.commands.len(),
                t.duration_s
            )
        })
        .collect();
    expect_test::expect_file!["snapshots/elisa.outline.txt"].assert_eq(&outline);
    // The JSON reads back to the same plan.
    let back: protocols::RunPlan = serde_json::from_str(&plan.to_json()).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn repeat_unrolls_and_constraints_bind_each_iteration() {
    let c = run(
        "t.yaml",
        &with_steps(
            "  - transfer: { from: res/A1, to: plate/A1, volume: 100 uL }
  - repeat:
      times: 3
      steps:
        - id: grow
          incubate: { labware: plate, temperature: 37 °C, duration: 10 min }
        - id: read
          read_absorbance: { labware: plate, wavelength: 600 nm }
constraints:
  - { from: grow, to: read, max_lag: 2 min }\n",
        ),
    );
    assert!(c.diagnostics.is_empty(), "{:#?}", c.diagnostics);
    let plan = c.plan.unwrap();
    assert_eq!(plan.tasks.len(), 7);
    assert_eq!(plan.max_lags.len(), 3);
}

// ---------------------------------------------------------------- bad input

#[test]
fn malformed_input_gets_diagnostics_not_panics() {
    let cases: &[(&str, &str)] = &[
        ("truncated yaml", "labwright: 1\nlabware: {plate: {type: corning"),
        ("truncated json", "{\"labwright\": 1, \"labware\": {"),
        ("wrong types", "labwright: 1\nlabware: [1, 2]\nsteps: {a: 1}"),
        ("huge number", "{\"labwright\": 1e999, \"labware\": {}, \"steps\": []}"),
        ("NaN json", "{\"labwright\": NaN}"),
        ("nan yaml", "labwright: .nan\nlabware: {}\nsteps: []"),
        ("negative volume", &with_steps("  - transfer: { from: res/A1, to: plate/A1, volume: -5 uL }\n")),
        ("huge volume", &with_steps("  - transfer: { from: res/A1, to: plate/A1, volume: 1e300 uL }\n")),
        ("duplicate json key", "{\"labwright\": 1, \"labwright\": 1, \"labware\": {}, \"steps\": []}"),
        ("duplicate yaml key", "labwright: 1\nlabwright: 1\nlabware: {}\nsteps: []"),
        ("empty", ""),
        ("binary-ish", "\u{1}\u{2}\u{3}{{{"),
        ("alias", "labwright: 1\nlabware: &a {}\nsteps: *a"),
        ("two documents", "labwright: 1\nlabware: {}\nsteps: []\n---\nfoo: 1\n"),
        (
            "huge repeat",
            &with_steps("  - repeat: { times: 10000, steps: [ {repeat: {times: 10000, steps: [ {wait: 1 s} ]}} ] }\n"),
        ),
    ];
    for (what, text) in cases {
        let c = run("bad.yaml", text);
        assert!(c.has_errors(), "{what}: expected an error, got {:#?}", c.diagnostics);
        for d in &c.diagnostics {
            assert!(!d.message.is_empty(), "{what}");
        }
    }
    let dup = run("d.json", "{\"labwright\": 1, \"labwright\": 1}");
    assert!(dup
        .diagnostics
        .iter()
        .any(|d| d.code == "P0004" && d.hint.as_deref() == Some("it is first given at 1:2; keep one of the two")));
}

#[test]
fn deep_nesting_is_refused() {
    for text in [
        "[".repeat(100_000),
        "{\"a\":".repeat(100_000),
        format!("labwright: {}", "[".repeat(100_000)),
        "- ".repeat(5000) + "x",
    ] {
        let c = run("deep", &text);
        assert!(c.has_errors());
    }
    let c = run("deep.json", &"[".repeat(1000));
    assert_eq!(c.diagnostics[0].code, "P0003");
}

#[test]
fn invalid_utf8_is_reported_with_its_offset() {
    let Err((src, at)) = SourceFile::from_bytes("x.yaml", b"labwright: 1\nname: caf\xe9\n".to_vec()) else {
        panic!("accepted invalid UTF-8")
    };
    assert_eq!(at, 22);
    assert_eq!(src.line_col(at as u32).line, 2);
}

// ---------------------------------------------------------------- importers

fn corpus(rel: &str) -> PathBuf {
    root().join("../../shared/corpus/protocols").join(rel)
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

#[test]
fn every_corpus_protocol_compiles_or_gets_clean_diagnostics() {
    let mut files = Vec::new();
    json_files(&corpus("autoprotocol"), &mut files);
    json_files(&corpus("opentrons/fixtures"), &mut files);
    files.push(corpus("opentrons/analysis-snapshots/OT2_S_v6_P1000S_None_SimpleTransfer/protocol.json"));
    files.sort();
    let mut compiled = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let c = run(&f.display().to_string(), &text);
        if c.has_errors() {
            for d in &c.diagnostics {
                assert!(d.span.end as usize <= text.len(), "{}: span out of range", f.display());
            }
        } else {
            assert!(c.plan.is_some(), "{}", f.display());
            compiled += 1;
        }
    }
    assert!(compiled >= 10, "only {compiled} of {} corpus files compiled", files.len());
}

/// `liquid_handle` as other tools write it and Strateos accepts: transports without a volume
/// (tip movements to the well top or liquid surface, with detection), air gaps
/// (`liquid_class: air`) and `pump_override_volume`. A movement moves; an air gap is pipette
/// state. And a `new` container's well filled by `provision` is tracked: drawing more from it
/// than it received is P0302 at the instruction that over-draws.
#[test]
fn autoprotocol_liquid_handle_movements_air_gaps_and_provisioned_wells() {
    let transports = |draw: &str| {
        format!(
            r#"[
              {{"mode_params": {{"tip_position": {{"position_z": {{"reference": "well_top", "offset": "0:millimeter"}}}}}}}},
              {{"volume": "-5:microliter", "mode_params": {{"liquid_class": "air"}}}},
              {{"mode_params": {{"tip_position": {{"position_z": {{"reference": "liquid_surface", "detection": {{"method": "capacitance", "threshold": "0.1:picofarad"}}}}}}}}}},
              {{"volume": "-{draw}:microliter", "pump_override_volume": "-{draw}.5:microliter", "flowrate": {{"target": "50:microliter/second"}}, "mode_params": {{"liquid_class": "default"}}}}
            ]"#
        )
    };
    let protocol = |draw: &str| {
        format!(
            r#"{{
  "refs": {{"plate": {{"new": "96-flat", "discard": true}}, "dest": {{"new": "96-flat", "discard": true}}}},
  "instructions": [
    {{"op": "provision", "resource_id": "rs_water", "to": [{{"well": "plate/0", "volume": "50:microliter"}}]}},
    {{"op": "liquid_handle", "locations": [
      {{"location": "plate/0", "transports": {t}}},
      {{"location": "dest/0", "transports": [{{"volume": "{draw}:microliter"}}, {{"volume": "5:microliter", "mode_params": {{"liquid_class": "air"}}}}]}}
    ]}},
    {{"op": "liquid_handle", "locations": [
      {{"location": "plate/0", "transports": {t}}},
      {{"location": "dest/1", "transports": [{{"volume": "{draw}:microliter"}}]}}
    ]}}
  ]
}}"#,
            t = transports(draw)
        )
    };
    let ok = run("lh.json", &protocol("20"));
    assert!(!ok.has_errors(), "{:#?}", ok.diagnostics);
    let plan = ok.plan.unwrap();
    let moves =
        plan.tasks.iter().flat_map(|t| &t.commands).filter(|c| matches!(c.op, CommandOp::MoveTo { .. })).count();
    assert_eq!(moves, 7, "each volume-less transport and air gap is a tip movement (4 + 3)");
    let text = protocol("30");
    let over = run("lh.json", &text);
    let errors: Vec<_> = over.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(errors.iter().map(|d| d.code).collect::<Vec<_>>(), ["P0302"], "{errors:#?}");
    let third = text.rfind("\"op\": \"liquid_handle\"").unwrap();
    assert!(errors[0].span.start as usize >= third - 10, "the error points at the instruction that over-draws");
    assert!(errors[0].message.contains("holds only 20 µL"), "{}", errors[0].message);
}

/// A mistake far along a one-line JSON file is rendered from a little before its column: the
/// caret is on screen and under the mistake, not thousands of spaces to the right.
#[test]
fn a_diagnostic_on_a_long_line_keeps_its_caret_on_screen() {
    let padding: String = (0..300).map(|i| format!("\"r{i}\": {{\"new\": \"96-flat\"}}, ")).collect();
    let text = format!("{{\"refs\": {{{padding}\"bad\": {{\"new\": \"97-flat\"}}}}, \"instructions\": []}}");
    let c = run("one-line.json", &text);
    let d = c.diagnostics.iter().find(|d| d.code == "P0201").expect("the unknown container type");
    let out = d.render(&SourceFile::new("one-line.json", text.clone()));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.iter().all(|l| l.chars().count() < 300), "{out}");
    let (shown, caret) = (lines[3], lines[4]);
    let at = caret.chars().position(|c| c == '^').unwrap();
    let under: String = shown.chars().skip(at).take(9).collect();
    assert_eq!(under, "\"97-flat\"", "{out}");
}

/// A 500-byte file of nested repeats is refused from its loop structure, before anything is
/// expanded; a protocol that would come to more device commands than the bound is refused at the
/// step that crosses it. Neither takes the compiler's time or memory (the first took 97 s and
/// 4.2 GB before; both are now well under a second).
#[test]
fn the_compilers_work_is_bounded_before_it_is_done() {
    let nested = |inner: &str| {
        format!(
            "{HEADER}  - repeat:\n      times: 1000\n      steps:\n        - repeat:\n            times: 1000\n            steps:\n              - repeat:\n                  times: 1000\n                  steps:\n                    - {inner}\n"
        )
    };
    let c = run("bomb.yaml", &nested("distribute: { from: res/A1, to: plate/A1:H12, volume: 20 uL }"));
    let codes: Vec<_> = c.diagnostics.iter().map(|d| d.code).collect();
    assert_eq!(codes, ["P0111"], "{:#?}", c.diagnostics);
    assert!(c.diagnostics[0].message.contains("1000000000 steps"), "{}", c.diagnostics[0].message);
    let wide = format!(
        "{HEADER}  - repeat:\n      times: 9000\n      steps:\n        - mix: {{ wells: plate/A1:H12, times: 1, volume: 20 uL, tips: always }}\n"
    );
    let c = run("wide.yaml", &wide);
    assert!(
        c.diagnostics.iter().any(|d| d.code == "P0111" && d.message.contains("250000 device commands")),
        "{:#?}",
        c.diagnostics
    );
}

/// Free text has limits, whatever the format: a 5,000,000-character name is refused with P0112
/// naming the length and the limit, not accepted to swamp every list of runs.
#[test]
fn free_text_over_its_limit_is_refused() {
    let long = "x".repeat(5_000_000);
    let c = run("long.yaml", &with_steps("  - wait: 1 min\n").replace("name: t", &format!("name: {long}")));
    let d = c.diagnostics.iter().find(|d| d.code == "P0112").expect("the name is refused");
    assert!(d.message.contains("5000000 characters") && d.message.contains("200"), "{}", d.message);
    assert!(!d.message.contains("xxxx"), "the message does not repeat the text");
    let manual = format!("  - manual: {{ instruction: {}, labware: [plate], duration: 1 min }}\n", "y".repeat(2_500));
    let c = run("manual.yaml", &with_steps(&manual));
    assert_eq!(c.diagnostics.iter().filter(|d| d.code == "P0112").count(), 1, "{:#?}", c.diagnostics);
    let c =
        run("ok.yaml", &with_steps("  - manual: { instruction: add the dye, labware: [plate], duration: 1 min }\n"));
    assert!(!c.has_errors(), "{:#?}", c.diagnostics);
}

#[test]
fn unsupported_instructions_are_named_with_their_index() {
    let text = std::fs::read_to_string(corpus("autoprotocol/strateos-transcriptic/test/resources/measure_suite.json"))
        .unwrap();
    let c = run("measure_suite.json", &text);
    let msgs: Vec<_> = c.diagnostics.iter().filter(|d| d.code == "P0501").map(|d| d.message.as_str()).collect();
    assert_eq!(msgs[0], "instruction 0 (`measure_concentration`) is not supported by Labwright");
    assert_eq!(msgs.len(), 4);
    let hs = r#"{"schemaVersion": 6, "commands": [{"commandType": "magneticModule/engage", "params": {}}]}"#;
    let c = run("m.json", hs);
    assert_eq!(c.diagnostics[0].message, "command 0 (`magneticModule/engage`) is not supported");
}

#[test]
fn autoprotocol_over_full_well_is_caught_like_the_remote_lab_does() {
    // Strateos answered: "175.0 uL exceeds the maximum well volume for 'test_plate_96': max volume for '96-pcr' is 160.0 uL".
    let text =
        std::fs::read_to_string(corpus("autoprotocol/strateos-transcriptic/test/autoprotocol/invalidTransfer.json"))
            .unwrap();
    let c = run("invalidTransfer.json", &text);
    let d: Vec<_> = c.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message, "test_plate_96/A2 would hold 175 µL but holds at most 160 µL");
    // The accepted one compiles.
    let text =
        std::fs::read_to_string(corpus("autoprotocol/strateos-transcriptic/test/autoprotocol/singleTransfer.json"))
            .unwrap();
    assert!(!run("singleTransfer.json", &text).has_errors());
}

#[test]
fn opentrons_analysis_pair_matches_the_engine() {
    let dir = corpus("opentrons/analysis-snapshots/OT2_S_v6_P1000S_None_SimpleTransfer");
    let text = std::fs::read_to_string(dir.join("protocol.json")).unwrap();
    let c = run("protocol.json", &text);
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_analysis.json")).unwrap()).unwrap();
    // Same outcome: Opentrons says ok, we find no error.
    assert_eq!(expected["result"], "ok");
    assert!(!c.has_errors(), "{:#?}", c.diagnostics);
    // Same physical commands in the same order, with the same volumes.
    let theirs: Vec<(String, Option<f64>)> = expected["commands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| matches!(c["commandType"].as_str(), Some("pickUpTip" | "aspirate" | "dispense" | "dropTip")))
        .map(|c| (c["commandType"].as_str().unwrap().to_string(), c["params"]["volume"].as_f64()))
        .collect();
    let ours: Vec<(String, Option<f64>)> = c
        .plan
        .unwrap()
        .tasks
        .iter()
        .flat_map(|t| &t.commands)
        .filter_map(|c| match &c.op {
            CommandOp::PickUpTip { .. } => Some(("pickUpTip".to_string(), None)),
            CommandOp::Aspirate { volume_ul, .. } => Some(("aspirate".to_string(), Some(*volume_ul))),
            CommandOp::Dispense { volume_ul, .. } => Some(("dispense".to_string(), Some(*volume_ul))),
            CommandOp::DropTip { .. } => Some(("dropTip".to_string(), None)),
            _ => None,
        })
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn format_is_detected_and_can_be_forced() {
    let ap =
        std::fs::read_to_string(corpus("autoprotocol/strateos-transcriptic/test/autoprotocol/singleTransfer.json"))
            .unwrap();
    assert_eq!(run("x.json", &ap).format, Format::Autoprotocol);
    let forced = compile(&SourceFile::new("x.json", ap), Format::Opentrons, site(), lib());
    assert!(forced.has_errors());
    let yaml = compile(&SourceFile::new("x.yaml", "labwright: 1"), Format::Autoprotocol, site(), lib());
    assert_eq!(yaml.diagnostics[0].message, "autoprotocol protocols are JSON, but this file is not");
}

// ---------------------------------------------------------------- conservation

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever pipetting a protocol does, liquid is neither made nor lost: what is in the wells
    /// at the end plus what went to waste in tips equals what was there at the start plus what
    /// the lab added, and each liquid's total is conserved the same way.
    #[test]
    fn liquid_volume_is_conserved(moves in proptest::collection::vec((0usize..12, 0usize..12, 1u32..400, 0u8..3), 1..12)) {
        let mut steps = String::new();
        for (a, b, v, kind) in &moves {
            let (from, to) = (format!("plate/{}", well(*a)), format!("plate/{}", well(*b)));
            let op = ["transfer", "distribute", "consolidate"][*kind as usize];
            steps.push_str(&format!("  - {op}: {{ from: {from}, to: {to}, volume: {v} uL }}\n"));
        }
        let text = format!("labwright: 1
liquids: {{ water: w, dye: d }}
labware:
  plate:
    type: nest_96_wellplate_2ml_deep
    contents:
      \"A1:D3\": {{ water: 1 mL, dye: 200 uL }}
  tips: {{ type: opentrons_96_tiprack_1000ul }}
  tips20: {{ type: opentrons_96_tiprack_20ul }}
steps:
{steps}");
        let c = run("p.yaml", &text);
        let t = c.tracked.unwrap();
        let initial = 12.0 * 1200.0;
        let total = t.total_in_wells() + t.waste_ul;
        prop_assert!((total - (initial + t.added_ul + t.unspecified_drawn_ul)).abs() < 1e-6, "total {total} vs initial {initial}");
        let dye: f64 = t.wells.iter().flatten().filter_map(|w| w.contents.get("dye")).sum();
        prop_assert!(dye <= 12.0 * 200.0 + 1e-6);
    }
}

fn well(i: usize) -> String {
    format!("{}{}", ["A", "B", "C", "D"][i % 4], i / 4 + 1)
}

#[test]
fn every_diagnostic_code_is_documented() {
    let doc = std::fs::read_to_string(root().join("../docs/protocol-language.md")).unwrap();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let src = std::fs::read_to_string(&p).unwrap();
            for (i, _) in src.match_indices("\"P0") {
                let code = &src[i + 1..i + 6];
                assert!(
                    doc.contains(&format!("| {code} |")),
                    "{code} (used in {}) is missing from docs/protocol-language.md",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn the_same_protocol_in_json_compiles_to_the_same_plan() {
    for name in ["elisa.yaml", "normalisation.yaml", "growth-curve.yaml"] {
        let yaml = std::fs::read_to_string(root().join("examples").join(name)).unwrap();
        let tree = protocols::syntax::yaml::parse(&SourceFile::new(name, yaml.clone())).root.unwrap();
        let json = json_text(&tree);
        let (a, b) = (run(name, &yaml), run("same.json", &json));
        assert!(b.diagnostics.is_empty(), "{name}: {:#?}", b.diagnostics);
        let strip = |p: protocols::RunPlan| {
            let mut p = p;
            p.tasks.iter_mut().for_each(|t| t.span = Default::default());
            p
        };
        let (ja, jb) = (strip(a.plan.unwrap()).to_json(), strip(b.plan.unwrap()).to_json());
        if ja != jb {
            let at = ja.lines().zip(jb.lines()).position(|(x, y)| x != y).unwrap_or(0);
            panic!("{name}: plans differ at line {at}: {:?} vs {:?}", ja.lines().nth(at), jb.lines().nth(at));
        }
    }
}

/// JSON text of a document tree, keeping key order (serde_json's map would sort the keys).
fn json_text(n: &protocols::syntax::Node) -> String {
    use protocols::syntax::Value;
    match &n.value {
        Value::Map(entries) => {
            let items: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", serde_json::to_string(&k.name).unwrap(), json_text(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::List(items) => format!("[{}]", items.iter().map(json_text).collect::<Vec<_>>().join(", ")),
        _ => n.to_json().to_string(),
    }
}

#[test]
fn capability_errors_point_at_the_value() {
    let text = with_steps("  - read_absorbance: { labware: plate, wavelength: 1200 nm }\n  - centrifuge: { labware: plate, force: 9000 xg, duration: 1 min }\n");
    let src = SourceFile::new("t.yaml", text);
    let c = compile(&src, Format::Auto, site(), lib());
    let pointed: Vec<&str> = c.diagnostics.iter().map(|d| src.slice(d.span)).collect();
    assert_eq!(pointed, ["1200 nm", "9000 xg"]);
}

#[test]
fn imported_instructions_missing_required_fields_are_reported_not_defaulted() {
    let codes_of = |text: &str| -> Vec<String> {
        run("x.json", text)
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("{} {}", d.code, d.message))
            .collect()
    };
    let ap = r#"{"refs": {"p": {"new": "96-flat", "discard": true}}, "instructions": [
        {"op": "provision", "to": [{"well": "p/0", "volume": "10:microliter"}]},
        {"op": "dispense", "object": "p", "reagent": "water"},
        {"op": "incubate", "object": "p", "duration": "5:minute"}]}"#;
    assert_eq!(
        codes_of(ap),
        [
            "P0102 instruction 0 (`provision`) is missing `resource_id`",
            "P0102 instruction 1 (`dispense`) is missing `columns`",
            "P0102 instruction 2 (`incubate`) is missing `where`",
        ]
    );
    let ot = r#"{"schemaVersion": 8, "commands": [
        {"commandType": "moveLabware", "params": {"labwareId": "x"}},
        {"commandType": "heaterShaker/deactivateShaker", "params": {}}]}"#;
    let got = codes_of(ot);
    assert!(got[0].starts_with("P0102 command 0 (`moveLabware`) does not say where to"), "{got:?}");
    assert_eq!(got[1], "P0102 command 1 (`heaterShaker/deactivateShaker`) is missing `params.moduleId`");
}

#[test]
fn autoprotocol_dispense_column_out_of_range_is_a_diagnostic() {
    // Found by the fuzzer: a column index past i64 overflowed when turned into a column name.
    for column in ["6666666666666666666666666666666666666666663", "-1", "1.5"] {
        let text = format!(
            r#"{{"refs": {{"p": {{"new": "96-flat", "store": {{"where": "warm_37"}}}}}},
                "instructions": [{{"op": "dispense", "reagent": "water", "object": "p",
                "columns": [{{"column": {column}, "volume": "100:microliter"}}]}}]}}"#
        );
        let c = run("d.json", &text);
        let msgs: Vec<&str> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("is not a column index (a whole number from 0)")),
            "column {column}: {msgs:?}"
        );
    }
}

/// Scoping a plan renames every labware reference and nothing else: the names in the labware
/// list, in what tasks hold, in every command that names labware (a tip rack included); never a
/// nest a plate moves to.
#[test]
fn a_scoped_plan_renames_every_labware_reference() {
    let text = std::fs::read_to_string(root().join("examples/elisa.yaml")).unwrap();
    let plan = run("examples/elisa.yaml", &text).plan.unwrap();
    let scoped = plan.scoped("r1");
    assert!(scoped.labware.iter().all(|l| l.name.starts_with("r1.")));
    assert!(scoped.tasks.iter().flat_map(|t| &t.holds).all(|h| h.starts_with("r1.")));
    let mut named = 0;
    for (t, s) in plan.tasks.iter().zip(&scoped.tasks) {
        for (c, sc) in t.commands.iter().zip(&s.commands) {
            let (mut before, mut after) = (c.op.clone(), sc.op.clone());
            match (before.labware_mut(), after.labware_mut()) {
                (Some(b), Some(a)) => {
                    assert_eq!(*a, format!("r1.{b}"));
                    named += 1;
                    *a = b.clone(); // with the name put back, nothing else differs
                }
                (None, None) => {}
                other => panic!("{other:?}"),
            }
            assert_eq!(before, after);
        }
    }
    assert!(named > 50, "{named}");
}

/// An Opentrons protocol's pipette runs as the site's when no liquid handler carries it by
/// name but one with the same channels covers its volumes (said once, as a warning); one the
/// site has nothing like is refused at compile time, not at admission.
#[test]
fn opentrons_pipettes_run_as_the_sites_or_are_refused() {
    let text = std::fs::read_to_string(corpus("opentrons/fixtures/8/simpleV8.json")).unwrap();
    let c = run("simpleV8.json", &text);
    assert!(!c.has_errors(), "{:?}", c.diagnostics);
    let fitted: Vec<_> = c.diagnostics.iter().filter(|d| d.code == "P0512").collect();
    assert_eq!(fitted.len(), 1, "said once: {:?}", c.diagnostics);
    assert!(fitted[0].message.contains("`p10_single` is run with this site's `p20_single`"), "{}", fitted[0].message);
    let plan = c.plan.unwrap();
    let used: std::collections::BTreeSet<&str> =
        plan.tasks.iter().flat_map(|t| t.pipettes.iter().map(String::as_str)).collect();
    assert_eq!(used, std::collections::BTreeSet::from(["p20_single"]));
    let text = std::fs::read_to_string(corpus("opentrons/fixtures/8/moveLabwareFlex8.json")).unwrap();
    let c = run("moveLabwareFlex8.json", &text);
    let refused: Vec<_> = c.diagnostics.iter().filter(|d| d.code == "P0401").collect();
    assert_eq!(refused.len(), 1, "{:?}", c.diagnostics);
    assert!(refused[0].message.contains("p1000_96"), "{}", refused[0].message);
    assert!(
        refused[0].hint.as_deref().unwrap().contains("p20_single (1 channel(s), 1–20 µL)"),
        "{:?}",
        refused[0].hint
    );
}

/// A plate map, inline and as a CSV table, reaches the plan: every mapped well with its sample,
/// group, role, concentration (a dilution series computed from its start and factor) and its
/// replicate number; mistakes are P0208 at the entry.
#[test]
fn a_plate_map_is_carried_into_the_plan() {
    let c =
        run("serial-dilution.yaml", &std::fs::read_to_string(root().join("examples/serial-dilution.yaml")).unwrap());
    let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let map = &plan.labware.iter().find(|l| l.name == "plate").unwrap().map;
    assert_eq!(map.len(), 96);
    let a12 = &map["A12"];
    assert_eq!((a12.sample.as_deref(), a12.group.as_deref()), (Some("compound"), Some("series")));
    assert!((a12.concentration.unwrap() - 5.0 / 2048.0).abs() < 1e-12, "{a12:?}");
    assert_eq!(a12.unit.as_deref(), Some("mM"));
    assert_eq!((map["A3"].replicate, map["H3"].replicate), (1, 8), "eight rows: replicates 1 to 8");

    let table = "labwright: 1\nname: t\nlabware:\n  plate:\n    type: corning_96_wellplate_360ul_flat\n    map: |\n      well,sample,group,role,concentration\n      A1:A2,,,blank,\n      B1:B3,BSA,curve,standard,2 mg/mL\n      C1,unknown-7,patients,sample,\nsteps:\n  - read_absorbance: { labware: plate, wavelength: 595 nm }\n";
    let c = run("t.yaml", table);
    let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let map = &plan.labware[0].map;
    assert_eq!(map.len(), 6);
    assert_eq!((map["A2"].role, map["A2"].replicate), (protocols::design::Role::Blank, 2));
    assert_eq!((map["B3"].concentration, map["B3"].replicate), (Some(2.0), 3));
    assert_eq!(map["C1"].sample.as_deref(), Some("unknown-7"));

    let header = "labwright: 1\nname: t\nlabware:\n  plate:\n    type: corning_96_wellplate_360ul_flat\n    map:\n";
    let bad = |entries: &str| {
        let c = run(
            "t.yaml",
            &format!("{header}{entries}steps:\n  - read_absorbance: {{ labware: plate, wavelength: 595 nm }}\n"),
        );
        c.diagnostics.iter().filter(|d| d.is_error()).map(|d| (d.code, d.message.clone())).collect::<Vec<_>>()
    };
    let twice = bad("      A1: { sample: s }\n      \"A1:A2\": { sample: t }\n");
    assert!(twice.iter().any(|(c, m)| *c == "P0208" && m.contains("A1 is in the map twice")), "{twice:?}");
    let off = bad("      Z1: { sample: s }\n");
    assert!(off.iter().any(|(c, _)| *c == "P0208"), "{off:?}");
    let role = bad("      A1: { sample: s, role: spectator }\n");
    assert!(role.iter().any(|(c, m)| *c == "P0208" && m.contains("not a role")), "{role:?}");
    let unit = bad("      A1: { sample: s, concentration: 3 furlongs }\n");
    assert!(unit.iter().any(|(c, m)| *c == "P0208" && m.contains("unknown concentration unit")), "{unit:?}");
    let short = bad("      \"A1:A3\": { sample: s, concentrations: [1 uM, 2 uM] }\n");
    assert!(short.iter().any(|(c, m)| *c == "P0208" && m.contains("2 concentrations for 3 wells")), "{short:?}");
    let nameless = bad("      A1: { group: g }\n");
    assert!(nameless.iter().any(|(c, m)| *c == "P0208" && m.contains("names no sample")), "{nameless:?}");
}

/// "Read 5–30 min after adding dye": a minimum lag is a wait task of that length between the
/// two steps (the read waits for it), the maximum stays a constraint, and bounds that cannot
/// both hold, run backwards or are missing are refused.
#[test]
fn a_minimum_lag_waits_and_a_window_keeps_both_bounds() {
    let steps = "  - id: dye
    transfer: { from: res/A2, to: plate/A1, volume: 50 uL }
  - id: read
    read_absorbance: { labware: plate, wavelength: 450 nm }
constraints:
  - { from: dye, to: read, min_lag: 5 min, max_lag: 30 min }\n";
    let c = run("t.yaml", &with_steps(steps));
    let plan = c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let read = plan.tasks.iter().position(|t| t.label.contains("read")).unwrap();
    let wait = plan.tasks.iter().position(|t| t.class.is_none()).unwrap();
    let dye = plan.tasks.iter().position(|t| t.class == Some(labware::InstrumentClass::LiquidHandler)).unwrap();
    assert!(dye < wait && wait < read, "in order: {:?}", plan.tasks.iter().map(|t| &t.label).collect::<Vec<_>>());
    assert_eq!(plan.tasks[wait].duration_s, 300.0);
    assert_eq!(plan.tasks[wait].after, [dye as u32]);
    assert!(plan.tasks[read].after.contains(&(wait as u32)), "the read waits for it");
    assert!(plan
        .tasks
        .iter()
        .enumerate()
        .all(|(i, t)| t.id as usize == i && t.after.iter().all(|&a| (a as usize) < i)));
    assert_eq!(plan.max_lags.len(), 1);
    assert_eq!((plan.max_lags[0].from, plan.max_lags[0].to, plan.max_lags[0].max_s), (dye as u32, read as u32, 1800.0));

    let window = |c: &str| with_steps(&steps.replace("min_lag: 5 min, max_lag: 30 min", c));
    assert_eq!(codes(&window("min_lag: 40 min, max_lag: 30 min")), ["P0402"]);
    assert_eq!(codes(&window("min_lag: 5 min")), Vec::<&str>::new(), "a minimum alone is enough");
    assert_eq!(codes(&window("mix: 5 min")), ["P0102", "P0101"], "no bound, and an unknown field");
    let backwards =
        with_steps(&steps.replace("from: dye, to: read", "from: read, to: dye").replace(", max_lag: 30 min", ""));
    assert_eq!(codes(&backwards), ["P0404"]);
}

/// `serial_dilution` with a factor and a number of points: the diluent goes first into every
/// well but each series' first, final_volume ÷ (factor − 1) moves along, and each well holds
/// 1/factor of the one before it.
#[test]
fn a_serial_dilution_by_factor_computes_its_volumes() {
    let text = "labwright: 1
name: t
liquids:
  water: water
  dye: dye
labware:
  res:
    type: nest_12_reservoir_15ml
    contents:
      A1: { water: 10 mL }
  plate:
    type: corning_96_wellplate_360ul_flat
    contents:
      A1: { dye: 225 uL }
      B1: { dye: 225 uL }
  tips: { type: opentrons_96_tiprack_300ul }
steps:
  - serial_dilution:
      plate: plate
      rows: A:B
      points: 5
      factor: 3
      final_volume: 150 uL
      diluent: res/A1
      mix: { times: 2, volume: 100 uL }
";
    let c = run("t.yaml", text);
    let tracked = c.tracked.clone().unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let plate = 1; // the second labware declared
    let well = |name: &str| {
        let def = lib().get("corning_96_wellplate_360ul_flat").unwrap();
        let i = def.wells.iter().position(|w| w.name == name).unwrap();
        tracked.wells[plate][i].clone()
    };
    for (k, col) in ["A1", "A2", "A3", "A4"].iter().enumerate() {
        let w = well(col);
        assert!((w.volume() - 150.0).abs() < 1e-6, "{col} holds final_volume: {:?}", w.contents);
        let dye = w.contents.get("dye").copied().unwrap_or(0.0) / w.volume();
        assert!((dye - 3f64.powi(-(k as i32))).abs() < 1e-9, "{col}: dye fraction {dye}");
    }
    assert!((well("B5").volume() - 225.0).abs() < 1e-6, "the last well keeps what it received");
    assert!(well("A6").volume() < 1e-9, "points: 5 stops at column 5");
    let bad = |from: &str, to: &str| codes(&text.replace(from, to));
    assert_eq!(bad("      factor: 3\n", "      factor: 1\n"), ["P0103"]);
    assert_eq!(bad("      diluent: res/A1\n", ""), ["P0102"]);
    assert_eq!(bad("      factor: 3\n", "      factor: 3\n      volume: 50 uL\n"), ["P0103"]);
}

/// Incubation at ambient temperature and in a CO₂ atmosphere: `ambient` needs no temperature
/// control, `co2` an incubator that keeps it (checked like a temperature).
#[test]
fn incubation_at_ambient_temperature_and_in_co2() {
    let plan = |steps: &str| {
        let c = run("t.yaml", &with_steps(steps));
        c.plan.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
    };
    let incubation = |p: &protocols::plan::RunPlan| {
        p.tasks.iter().flat_map(|t| &t.commands).find_map(|c| match &c.op {
            protocols::plan::CommandOp::Incubate { temperature_c, co2_percent, .. } => {
                Some((*temperature_c, *co2_percent))
            }
            _ => None,
        })
    };
    let p = plan("  - incubate: { labware: plate, temperature: ambient, duration: 30 min }\n");
    assert_eq!(incubation(&p), Some((None, None)));
    let p = plan("  - incubate: { labware: plate, temperature: 37 °C, co2: 5 %, duration: 24 h }\n");
    assert_eq!(incubation(&p), Some((Some(37.0), Some(5.0))));
    let task = p.tasks.iter().find(|t| t.label.contains("incubate")).unwrap();
    assert_eq!(task.instruments, ["inc1"], "only inc1 keeps CO₂");
    // More CO₂ than any incubator keeps, and a CO₂ that is not a percentage.
    let c =
        run("t.yaml", &with_steps("  - incubate: { labware: plate, temperature: 37 °C, co2: 30 %, duration: 1 h }\n"));
    let e = c.diagnostics.iter().find(|d| d.code == "P0401").unwrap_or_else(|| panic!("{:?}", c.diagnostics));
    let words = format!("{} {}", e.message, e.hint.clone().unwrap_or_default());
    assert!(words.contains("30 % CO₂"), "{e:?}");
    assert_eq!(
        codes(&with_steps("  - incubate: { labware: plate, temperature: 37 °C, co2: lots, duration: 1 h }\n")),
        ["P0110"]
    );
}

/// The wells a task's aspirates or dispenses name, in order.
fn named_wells(plan: &protocols::RunPlan, dispense: bool) -> Vec<String> {
    plan.tasks
        .iter()
        .flat_map(|t| &t.commands)
        .filter_map(|c| match &c.op {
            CommandOp::Dispense { well, .. } if dispense => Some(well.clone()),
            CommandOp::Aspirate { well, .. } if !dispense => Some(well.clone()),
            _ => None,
        })
        .collect()
}

/// Column-wise work goes to the site's multi-channel head (lh3's p300_multi), one move per
/// column, and the liquid check follows every channel; anything else stays well by well.
#[test]
fn column_wise_work_uses_a_multi_channel_head() {
    let c = run("t.yaml", &with_steps("  - transfer: { from: res/A1, to: plate/A1:H12, volume: 50 uL }\n"));
    let plan = c.plan.unwrap();
    assert_eq!(plan.tasks[0].pipettes, ["p300_multi"]);
    assert_eq!(named_wells(&plan, true), (1..=12).map(|c| format!("A{c}")).collect::<Vec<_>>());
    assert!(matches!(&plan.tasks[0].commands[0].op, CommandOp::PickUpTip { well, .. } if well == "A1"));
    let tracked = c.tracked.unwrap();
    assert!(tracked.wells[1].iter().all(|w| (w.volume() - 50.0).abs() < 1e-9), "every well of the plate got 50 µL");
    assert!((tracked.wells[0][0].volume() - (10_000.0 - 96.0 * 50.0)).abs() < 1e-6, "the trough gave 96 × 50 µL");
    // Half a column: well by well with a single channel.
    let plan =
        run("t.yaml", &with_steps("  - transfer: { from: res/A1, to: plate/A1:D1, volume: 50 uL }\n")).plan.unwrap();
    assert_eq!(plan.tasks[0].pipettes, ["p300_single"]);
    // Too much per channel is said per well, as it would be well by well.
    let c = run("t.yaml", &with_steps("  - transfer: { from: res/A1, to: plate/A1:H1, volume: 400 uL }\n"));
    let over: Vec<_> = c.diagnostics.iter().filter(|d| d.code == "P0301").collect();
    assert_eq!(over.len(), 1, "{:#?}", c.diagnostics);
    assert!(over[0].message.contains("8 wells"), "{}", over[0].message);
    // 20 µL work stays on the 20 µL tips the protocol brought (no 20 µL head has 8 channels).
    let plan =
        run("t.yaml", &with_steps("  - transfer: { from: res/A1, to: plate/A1:H12, volume: 15 uL }\n")).plan.unwrap();
    assert_eq!(plan.tasks[0].pipettes, ["p20_single"]);
}

/// On a 16-row plate the head's channels take alternate rows; dilution series side by side are
/// diluted a column at a time.
#[test]
fn a_384_plate_takes_alternate_rows_and_series_go_column_by_column() {
    let text = HEADER.replace(
        "  tips20:",
        "  p384: { type: corning_384_wellplate_112ul_flat }\n  tips2: { type: opentrons_96_tiprack_300ul }\n  tips20:",
    ) + "  - distribute: { from: res/A1, to: p384/A1:P2, volume: 40 uL }\n";
    let c = run("t.yaml", &text);
    let plan = c.plan.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    assert_eq!(named_wells(&plan, true), ["A1", "B1", "A2", "B2"]);
    let text = with_steps(
        "  - transfer: { from: res/A1, to: plate/A2:H12, volume: 100 uL }\n  - transfer: { from: res/A2, to: plate/A1:H1, volume: 120 uL }\n  - serial_dilution: { plate: plate, rows: A:H, columns: 1:12, volume: 100 uL, tips: once }\n",
    );
    let c = run("t.yaml", &text);
    let plan = c.plan.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    let dilution: Vec<String> = named_wells(&plan, true).into_iter().skip(12).collect();
    assert_eq!(dilution, (2..=12).map(|c| format!("A{c}")).collect::<Vec<_>>(), "one move per column step");
    let tracked = c.tracked.unwrap();
    let dye = |well: usize| tracked.wells[1][well].contents.get("dye").copied().unwrap_or(0.0);
    // Column 1 (wells 0–7: 120 µL of dye) gave 100 µL to column 2 (wells 8–15: 100 µL of
    // water), which gave half of its 200 µL on: every row alike.
    let rows: Vec<(f64, f64)> = (0..8).map(|w| (dye(w), dye(w + 8))).collect();
    assert!(rows.iter().all(|(a, b)| (a - 20.0).abs() < 1e-6 && (b - 50.0).abs() < 1e-6), "{rows:?}");
}

/// Cells left at room temperature longer than their `max_wait` are a warning with the time:
/// the 384-well dose-response's first liquid-handling task keeps them out about 2 h 36 min before
/// the incubation.
#[test]
fn liquids_waiting_longer_than_their_max_wait_are_a_warning() {
    let text = std::fs::read_to_string(root().join("examples/dose-response-384.yaml")).unwrap();
    assert!(run("d.yaml", &text).diagnostics.is_empty(), "4 h is enough");
    let c = run("d.yaml", &text.replace("max_wait: 4 h", "max_wait: 1 h"));
    let w: Vec<_> = c.diagnostics.iter().filter(|d| d.code == "P0410").collect();
    assert_eq!(w.len(), 1, "{:#?}", c.diagnostics);
    assert!(!w[0].is_error() && c.plan.is_some(), "a warning: the plan stands");
    assert!(
        w[0].message.starts_with("`cells` waits at least 2 h")
            && w[0].message.contains("in `cells` (from here to `incubate cells`)"),
        "{}",
        w[0].message
    );
    assert!(w[0].message.ends_with("its max_wait is 1 h"), "{}", w[0].message);
}

/// A `thermocycle` step: its profile's holds, cycles unrolled, on a thermocycler that reaches
/// every temperature (the Opentrons site's tc1, 4–99 °C).
#[test]
fn thermocycle_runs_a_profile_on_a_thermocycler() {
    let site = Site::from_toml(&std::fs::read_to_string(root().join("../sites/opentrons.toml")).unwrap()).unwrap();
    let text = "labwright: 1\nname: pcr\nlabware:\n  pcr: { type: nest_96_wellplate_100ul_pcr_full_skirt }\nsteps:\n  - thermocycle:\n      labware: pcr\n      profile:\n        - { temperature: 95 C, hold: 3 min }\n        - cycles: 30\n          steps:\n            - { temperature: 95 C, hold: 15 s }\n            - { temperature: 60 C, hold: 30 s }\n        - { temperature: 4 C, hold: 5 min }\n";
    let c = protocols::compile(&SourceFile::new("pcr.yaml", text.to_string()), Format::Auto, &site, lib());
    let plan = c.plan.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    let t = &plan.tasks[0];
    assert_eq!(
        (t.class, t.instruments.as_slice()),
        (Some(labware::InstrumentClass::Thermocycler), &["tc1".to_string()][..])
    );
    assert_eq!(t.commands.len(), 62);
    assert!(
        matches!(t.commands[1].op, CommandOp::Incubate { temperature_c: Some(t), duration_s, .. } if t == 95.0 && duration_s == 15.0)
    );
    // 105 °C is beyond the block; a site without a thermocycler says so.
    let hot = text.replace("95 C, hold: 3 min", "105 C, hold: 3 min");
    let c = protocols::compile(&SourceFile::new("pcr.yaml", hot), Format::Auto, &site, lib());
    assert!(c.diagnostics.iter().any(|d| d.code == "P0401" && d.message.contains("4–105 °C")), "{:#?}", c.diagnostics);
    assert_eq!(codes(text), ["P0401"], "the shipped site has no thermocycler");
}

#[test]
fn a_reagent_the_lab_does_not_stock_says_what_it_does() {
    let text = HEADER.replace("  water: water", "  water: { reagent: Unobtainium }")
        + "  - transfer: { from: res/A1, to: plate/A1, volume: 50 uL }\n";
    let c = run("t.yaml", &text);
    let d = c.diagnostics.iter().find(|d| d.code == "P0210").unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    assert!(d.message.contains("`water`") && d.message.contains("`Unobtainium`"), "{}", d.message);
    let hint = d.hint.as_deref().unwrap_or("");
    assert!(hint.contains("PBS") && hint.contains("TMB substrate"), "{hint}");
    assert_eq!(&text[d.span.start as usize..d.span.end as usize], "Unobtainium");
}

#[test]
fn the_quote_bills_what_the_run_uses_up() {
    // Two tip racks declared, one touched; a plate and a reservoir; 10 mL of the lab's PBS.
    let text = HEADER.replace("  water: water", "  water: { reagent: PBS }")
        + "  - transfer: { from: res/A1, to: plate/A1:A3, volume: 50 uL, tips: once }\n";
    let c = run("t.yaml", &text);
    let q = c.quote.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    let line = |item: &str| q.consumables.iter().find(|l| l.item == item);
    assert_eq!(line("opentrons_96_tiprack_300ul").map(|l| (l.quantity, l.amount)), Some((1.0, 8.5)));
    assert!(line("opentrons_96_tiprack_20ul").is_none(), "a rack it takes no tip from is not used up: {q:?}");
    assert_eq!(line("corning_96_wellplate_360ul_flat").map(|l| l.quantity), Some(1.0));
    assert_eq!(line("biorad_96_wellplate_200ul_pcr").map(|l| l.quantity), Some(1.0), "declared, so kitted");
    let pbs = line("PBS").unwrap();
    assert_eq!((pbs.unit, pbs.quantity, pbs.amount), ("mL", 10.0, 0.5));
    assert!(line("dye").is_none(), "the tenant's own liquid is not the lab's to bill");
    let device: f64 = q.lines.iter().map(|l| l.amount).sum::<f64>() + q.per_run;
    let consumables: f64 = q.consumables.iter().map(|l| l.amount).sum();
    assert!((q.total - device - consumables).abs() < 0.011, "{q:?}");

    // Service classes scale device time by the site's factor and nothing else.
    let plan = c.plan.as_ref().unwrap();
    for class in [labware::ServiceClass::Priority, labware::ServiceClass::Spot] {
        let factor = site().class_factor(class);
        assert_ne!(factor, 1.0, "the shipped site prices {class} apart");
        let other = protocols::quote::quote_as(plan, site(), class);
        assert_eq!(other.class, class);
        for (a, b) in q.lines.iter().zip(&other.lines) {
            assert!((b.rate_per_hour - a.rate_per_hour * factor).abs() < 1e-9, "{a:?} {b:?}");
        }
        assert_eq!((other.per_run, &other.consumables), (q.per_run, &q.consumables));
        let device: f64 = other.lines.iter().map(|l| l.amount).sum::<f64>() + other.per_run;
        assert!((other.total - device - consumables).abs() < 0.011, "{other:?}");
    }
}

#[test]
fn stored_labware_carries_what_it_will_hold_and_bad_storage_is_refused() {
    let text = HEADER.replace(
        "  plate: { type: corning_96_wellplate_360ul_flat }",
        "  plate: { type: corning_96_wellplate_360ul_flat, store: { condition: 4C } }",
    ) + "  - transfer: { from: res/A1, to: plate/A1:B1, volume: 50 uL }\n  - transfer: { from: res/A2, to: plate/A1, volume: 10 uL }\n";
    let c = run("t.yaml", &text);
    let plan = c.plan.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    let plate = plan.labware.iter().find(|l| l.name == "plate").unwrap();
    assert_eq!(plate.store.as_deref(), Some("4C"));
    assert_eq!(plate.outputs["A1"], [("dye".to_string(), 10.0), ("water".to_string(), 50.0)].into());
    assert_eq!(plate.outputs["B1"], [("water".to_string(), 50.0)].into());
    assert_eq!(plate.outputs.len(), 2, "empty wells are not listed");
    assert!(plan.labware.iter().filter(|l| l.name != "plate").all(|l| l.store.is_none() && l.outputs.is_empty()));

    let with = |decl: &str| {
        HEADER.replace("  plate: { type: corning_96_wellplate_360ul_flat }", decl)
            + "  - transfer: { from: res/A1, to: plate/A1, volume: 50 uL }\n"
    };
    let bad = run("t.yaml", &with("  plate: { type: corning_96_wellplate_360ul_flat, store: { condition: fridge } }"));
    let d = bad.diagnostics.iter().find(|d| d.code == "P0211").unwrap_or_else(|| panic!("{:#?}", bad.diagnostics));
    assert!(d.hint.as_deref().unwrap_or("").contains("-80C"), "{d:?}");
    let both = with("  plate: { type: corning_96_wellplate_360ul_flat, store: { condition: 4C }, discard: true }");
    assert_eq!(codes(&both), ["P0103"]);
    let gone = run("t.yaml", &with("  plate: { type: corning_96_wellplate_360ul_flat, discard: true }"));
    assert!(gone.plan.unwrap().labware.iter().any(|l| l.name == "plate" && l.discard));

    // Autoprotocol: `store.where` as the lab's conditions, `discard` as discard.
    let ap = r#"{"refs": {"kept": {"new": "96-flat", "store": {"where": "cold_20"}}, "gone": {"new": "96-flat", "discard": true}},
      "instructions": [{"op": "provision", "resource_id": "rs17gmh5wafm5p", "to": [{"well": "kept/0", "volume": "50:microliter"}]}]}"#;
    let c = run("ap.json", ap);
    let plan = c.plan.unwrap_or_else(|| panic!("{:#?}", c.diagnostics));
    let kept = plan.labware.iter().find(|l| l.name == "kept").unwrap();
    assert_eq!((kept.store.as_deref(), kept.outputs.len()), (Some("-20C"), 1), "{kept:?}");
    assert!(plan.labware.iter().any(|l| l.name == "gone" && l.discard));
    let far = ap.replace("cold_20", "orbit");
    assert!(run("ap.json", &far).diagnostics.iter().any(|d| d.code == "P0211"));
}
