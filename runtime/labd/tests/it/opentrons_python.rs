//! Opentrons Python protocols (`protocols/opentrons-python/`), read through Opentrons' own
//! analyzer (`scripts/peers` puts opentrons 8.8.2 in .peers-analyzer). Each is checked against
//! what the analyzer itself says the protocol does: its pipetting command counts and its liquid
//! accounting (volumes aspirated, dispensed, and every well's net change).

use super::*;
use std::collections::BTreeMap;

/// The analyzer's Python (`.peers-analyzer`); missing fails in CI.
fn analyzer() -> Option<PathBuf> {
    venv_python("LABWRIGHT_ANALYZER_VENV", ".peers-analyzer")
}

fn protocol(name: &str) -> PathBuf {
    root().join("protocols/opentrons-python").join(name)
}

/// Pipetting as a list of (kind, well key, µL): what liquid moved, whatever the names.
#[derive(Debug, Default, PartialEq)]
struct Liquid {
    counts: BTreeMap<String, usize>,
    aspirated: f64,
    dispensed: f64,
    /// Every well's net change, sorted (names differ: the analysis has ids, the plan names).
    nets: Vec<i64>,
}

impl Liquid {
    fn add(&mut self, kind: &str, well: Option<(String, String)>, ul: f64, nets: &mut BTreeMap<(String, String), f64>) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
        let Some(well) = well else { return };
        match kind {
            "aspirate" => {
                self.aspirated += ul;
                *nets.entry(well).or_default() -= ul;
            }
            "dispense" => {
                self.dispensed += ul;
                *nets.entry(well).or_default() += ul;
            }
            _ => {}
        }
    }

    fn finish(mut self, nets: BTreeMap<(String, String), f64>) -> Liquid {
        // Hundredths of a µL: the plan and the analysis print the same decimals differently.
        self.nets = nets.values().map(|v| (v * 100.0).round() as i64).filter(|v| *v != 0).collect();
        self.nets.sort();
        self.aspirated = (self.aspirated * 1000.0).round() / 1000.0;
        self.dispensed = (self.dispensed * 1000.0).round() / 1000.0;
        self
    }
}

/// [`analyzed`] with custom labware definitions given to the analyzer.
fn analyzed_with(py: &Path, file: &Path, labware: &[&Path]) -> Liquid {
    analysis_of(py, file, "", None, labware)
}

/// What Opentrons' analyzer says the protocol does, run directly (labctl is not involved).
/// `prelude` is Python appended to a scratch copy (a `get_values` of the test's own).
fn analyzed(py: &Path, file: &Path, prelude: &str, rtp: Option<&str>) -> Liquid {
    analysis_of(py, file, prelude, rtp, &[])
}

fn analysis_of(py: &Path, file: &Path, prelude: &str, rtp: Option<&str>, labware: &[&Path]) -> Liquid {
    let dir = fresh_dir(&format!("ot-analysis-{}", file.file_stem().unwrap().to_string_lossy()));
    let copy = dir.join(file.file_name().unwrap());
    std::fs::write(&copy, std::fs::read_to_string(file).unwrap() + prelude).unwrap();
    let out = dir.join("analysis.json");
    let mut cmd = Command::new(py);
    cmd.args(["-m", "opentrons.cli", "analyze", "--json-output"]).arg(&out).arg(&copy).current_dir(&dir);
    cmd.args(labware);
    if let Some(values) = rtp {
        cmd.args(["--rtp-values", values]);
    }
    let o = cmd.env("HOME", &dir).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(a["errors"], serde_json::json!([]), "the analyzer accepts {}", file.display());
    let (mut l, mut nets) = (Liquid::default(), BTreeMap::new());
    for c in a["commands"].as_array().unwrap() {
        let kind = match c["commandType"].as_str().unwrap() {
            k @ ("aspirate" | "dispense" | "pickUpTip") => k,
            "dropTip" | "dropTipInPlace" => "dropTip",
            _ => continue,
        };
        let p = &c["params"];
        let well = p["wellName"].as_str().map(|w| (p["labwareId"].as_str().unwrap().to_string(), w.to_string()));
        l.add(kind, well, p["volume"].as_f64().unwrap_or(0.0), &mut nets);
    }
    l.finish(nets)
}

/// What Labwright's plan does, from `labctl compile`'s plan.
fn planned(plan: &serde_json::Value) -> Liquid {
    let (mut l, mut nets) = (Liquid::default(), BTreeMap::new());
    for t in plan["tasks"].as_array().unwrap() {
        for c in t["commands"].as_array().unwrap() {
            let op = c; // the command's op is flattened into it
            let kind = match op["op"].as_str().unwrap() {
                "aspirate" => "aspirate",
                "dispense" => "dispense",
                "pick_up_tip" => "pickUpTip",
                "drop_tip" => "dropTip",
                _ => continue,
            };
            let labware = op["labware"].as_str().or(op["rack"].as_str()).unwrap_or_default();
            let well = op["well"].as_str().map(|w| (labware.to_string(), w.to_string()));
            l.add(kind, well, op["volume_ul"].as_f64().unwrap_or(0.0), &mut nets);
        }
    }
    l.finish(nets)
}

/// `labctl compile FILE.py ARGS…` → the plan.
fn compile(py: &Path, file: &Path, args: &[&str]) -> serde_json::Value {
    let out = fresh_dir("ot-plan").join("plan.json");
    let mut all =
        vec!["compile", file.to_str().unwrap(), "--python", py.to_str().unwrap(), "-o", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = labctl(&all);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// The test's own `get_values`, as the Protocol Library defines it when it publishes a protocol.
const NORMALISATION_VALUES: &str =
    "\ndef get_values(*names):\n    v = {'samples': 6, 'final_ul': 150}\n    return [v[n] for n in names]\n";

#[test]
fn python_protocols_do_what_opentrons_analyzer_says() {
    let Some(py) = analyzer() else { return };
    // OT-2, a labelled plate, mixing after each transfer.
    let file = protocol("serial_dilution.py");
    let plan = compile(&py, &file, &[]);
    let expected = analyzed(&py, &file, "", None);
    assert_eq!(planned(&plan), expected, "serial dilution: the same pipetting");
    assert_eq!(expected.counts["aspirate"], 11 + 1 + 11 * 4, "the reference counts mixes too: {expected:?}");
    let names: Vec<&str> = plan["labware"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"dilution_plate"), "the protocol's label names its plate: {names:?}");
    assert_eq!(plan["protocol"], "Serial dilution");

    // get_values from --values.
    let file = protocol("normalisation.py");
    let values = tmp("normalisation-values.json", br#"{"samples": 6, "final_ul": 150}"#);
    let plan = compile(&py, &file, &["--values", values.to_str().unwrap()]);
    let expected = analyzed(&py, &file, NORMALISATION_VALUES, None);
    assert_eq!(planned(&plan), expected, "normalisation: the same pipetting");
    assert_eq!(expected.counts["pickUpTip"], 12, "two transfers per sample, a new tip each");

    // Flex, a runtime parameter from --values.
    let file = protocol("flex_plate_fill.py");
    let values = tmp("flex-values.json", br#"{"volume_ul": 150}"#);
    let plan = compile(&py, &file, &["--values", values.to_str().unwrap(), "--site", "sites/opentrons.toml"]);
    let expected = analyzed(&py, &file, "", Some(r#"{"volume_ul": 150}"#));
    assert_eq!(planned(&plan), expected, "flex: the same pipetting");
    assert_eq!(expected.dispensed, 8.0 * 150.0, "the parameter's value, not its default");
    let default = compile(&py, &file, &["--site", "sites/opentrons.toml"]);
    assert_eq!(planned(&default).dispensed, 8.0 * 100.0, "without --values, the parameter's default");

    // PCR prep with the Thermocycler: the pipetting as the analyzer says, the profile (4 °C,
    // then 30 cycles of 95/60 °C) as holds on the site's thermocycler.
    let file = protocol("pcr_prep.py");
    let plan = compile(&py, &file, &["--site", "sites/opentrons.toml"]);
    assert_eq!(planned(&plan), analyzed(&py, &file, "", None), "pcr prep: the same pipetting");
    let holds: Vec<(f64, f64)> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["class"] == "thermocycler")
        .flat_map(|t| t["commands"].as_array().unwrap().iter())
        .map(|c| (c["temperature_c"].as_f64().unwrap(), c["duration_s"].as_f64().unwrap()))
        .collect();
    assert_eq!(holds.len(), 1 + 60, "{holds:?}");
    assert_eq!(holds[0], (4.0, 0.0), "held at 4 °C first");
    assert_eq!(&holds[1..3], &[(95.0, 30.0), (60.0, 30.0)]);
    let o = labctl(&[
        "validate",
        file.to_str().unwrap(),
        "--python",
        py.to_str().unwrap(),
        "--site",
        "sites/opentrons.toml",
    ]);
    let said = text(&o.stderr);
    assert!(o.status.success() && said.contains("warning[P0513]: `pcr_plate` sits on a thermocycler"), "{said}");
}

#[test]
fn python_protocol_errors_point_at_the_python() {
    let Some(py) = analyzer() else { return };
    let py = py.to_str().unwrap();
    // get_values without --values: the analyzer's NameError, on the line that reads them.
    let file = protocol("normalisation.py");
    let o = labctl(&["validate", file.to_str().unwrap(), "--python", py, "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let d = &v["diagnostics"][0];
    let line = std::fs::read_to_string(&file).unwrap().lines().position(|l| l.contains("= get_values(")).unwrap() + 1;
    assert_eq!((d["code"].as_str(), d["line"].as_u64()), (Some("P0520"), Some(line as u64)), "{v}");
    assert!(d["message"].as_str().unwrap().contains("get_values"), "{v}");
    assert!(d["hint"].as_str().unwrap().contains("--values"), "{v}");

    // A value the protocol does not read: named, with what it has.
    let bad = tmp("flex-bad-values.json", br#"{"volume": 150}"#);
    let file = protocol("flex_plate_fill.py");
    let o = labctl(&["validate", file.to_str().unwrap(), "--python", py, "--values", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("`volume` is neither a runtime parameter of the protocol (it has: volume_ul)"),
        "{}",
        text(&o.stderr)
    );

    // A missing analyzer says what to install.
    let file = protocol("pcr_prep.py");
    let o = labctl(&["validate", file.to_str().unwrap(), "--python", "/nonexistent/python3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot run /nonexistent/python3"), "{}", text(&o.stderr));
    let o = labctl(&["validate", file.to_str().unwrap(), "--python", "/usr/bin/python3"]);
    assert!(text(&o.stderr).contains("pip install opentrons==8.8.2"), "{}", text(&o.stderr));
}

/// A scientist submits their Python protocol to a running labd: analyzed on their machine, the
/// run carries it out on the simulated site.
#[test]
fn a_python_protocol_runs_on_the_lab() {
    let Some(py) = analyzer() else { return };
    let _machine = heavy();
    let (_server, _mqtt, admin, url, _dir) = serve_with("ot-python-run", "", &[]);
    assert_eq!(labctl_at(&url, &admin, &["tenant", "add", "acme"]).0, 0);
    let token = labctl_at(&url, &admin, &["token", "create", "--tenant", "acme"]).1.trim().to_string();
    let file = protocol("serial_dilution.py");
    let (code, so, se) = labctl_at(
        &url,
        &token,
        &["submit", file.to_str().unwrap(), "--python", py.to_str().unwrap(), "--wait", "--format", "json"],
    );
    assert_eq!(code, 0, "{so}{se}");
    assert!(so.contains("\"succeeded\""), "{so}");
}

/// A custom labware definition passed with `--labware` reaches the analyzer and travels with
/// the protocol: the plan carries its definition and pipettes into its wells.
#[test]
fn custom_labware_travels_with_a_python_protocol() {
    let Some(py) = analyzer() else { return };
    let dir = fresh_dir("ot-custom-labware");
    // Corning's definition from the corpus, as a lab's own plate.
    let corning = root().join("../shared/corpus/labware/opentrons-v2/corning_96_wellplate_360ul_flat/5.json");
    let mut def: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(corning).unwrap()).unwrap();
    def["namespace"] = "custom_beta".into();
    def["parameters"]["loadName"] = "acme_96_wellplate_300ul".into();
    def["metadata"]["displayName"] = "ACME 96 Well Plate 300 µL".into();
    let labware = dir.join("acme_96_wellplate_300ul.json");
    std::fs::write(&labware, def.to_string()).unwrap();
    let protocol = dir.join("custom.py");
    std::fs::write(
        &protocol,
        "metadata = {'protocolName': 'custom plate'}\nrequirements = {'robotType': 'OT-2', 'apiLevel': '2.16'}\n\ndef run(ctx):\n    tips = ctx.load_labware('opentrons_96_tiprack_300ul', 1)\n    res = ctx.load_labware('nest_12_reservoir_15ml', 2)\n    plate = ctx.load_labware('acme_96_wellplate_300ul', 3, namespace='custom_beta', label='acme plate')\n    water = ctx.define_liquid('water', 'water', '#0000ff')\n    res['A1'].load_liquid(water, 5000)\n    p = ctx.load_instrument('p300_single_gen2', 'left', tip_racks=[tips])\n    p.transfer(50, res['A1'], plate.wells()[:3])\n",
    )
    .unwrap();
    let args = ["--labware", labware.to_str().unwrap()];
    let plan = compile(&py, &protocol, &args);
    let lw = plan["labware"].as_array().unwrap().iter().find(|l| l["name"] == "acme_plate").unwrap().clone();
    assert_eq!(lw["load_name"], "acme_96_wellplate_300ul", "{lw}");
    let carried = plan["custom_labware"].as_array().unwrap();
    assert!(carried.iter().any(|d| d["load_name"] == "acme_96_wellplate_300ul"), "the plan carries the definition");
    assert_eq!(planned(&plan), analyzed_with(&py, &protocol, &[labware.as_path()]), "the same pipetting");
    // Without the definition, the analyzer says it does not know the plate, on its line.
    let o = labctl(&["validate", protocol.to_str().unwrap(), "--python", py.to_str().unwrap(), "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(
        (v["diagnostics"][0]["code"].as_str(), v["diagnostics"][0]["line"].as_u64()),
        (Some("P0520"), Some(7)),
        "{v}"
    );
}
