//! `labctl` as a user runs it: validate, compile, quote, labware, diagnostics, exit codes, pipes.

use super::*;

#[test]
fn a_closed_pipe_ends_labctl_quietly() {
    for args in [
        &["labware", "list"][..],
        &["labware", "list", "--format", "json"],
        &["quote", "protocols/examples/elisa.yaml"],
    ] {
        let (code, stderr) = labctl_into_closed_pipe(args);
        assert!(
            code == 0 && !stderr.contains("error") && !stderr.contains("panicked"),
            "labctl {args:?} into a closed pipe: exit {code}, {stderr}"
        );
    }
}

#[test]
fn validate_an_example() {
    let o = labctl(&["validate", "protocols/examples/serial-dilution.yaml"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("ok (labwright protocol \"96-well serial dilution\")"));
}

#[test]
fn errors_exit_1_with_rustc_style_diagnostics() {
    let p = tmp("bad.yaml", b"labwright: 1\nlabware:\n  plate: { type: corning_96_wellplate_360ul_flat }\nsteps:\n  - read_absorbance: { labware: plate, wavelength: 1200 nm }\n  - seal: { labware: plat }\n");
    let o = labctl(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("error[P0401]"), "{err}");
    assert!(err.contains(&format!("--> {}:5:52\n", p.display())), "{err}");
    assert!(err.contains("error[P0202]: no labware named `plat` in this protocol"), "{err}");
    assert!(err.contains("= help: did you mean `plate`?"), "{err}");
    assert!(err.contains("has 2 error(s)"), "{err}");
}

#[test]
fn json_diagnostics() {
    let p = tmp("bad.json", br#"{"labwright": 1, "labware": {}, "steps": [{"wait": "5 furlongs"}]}"#);
    let o = labctl(&["validate", p.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["format"], "labwright");
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "P0110");
    assert_eq!(d["line"], 1);
    assert_eq!(d["column"], 52);
    assert_eq!(d["message"], "`duration`: unknown unit `furlongs`");
}

#[test]
fn invalid_utf8_is_a_diagnostic() {
    let p = tmp("latin1.yaml", b"labwright: 1\nname: caf\xe9\n");
    let o = labctl(&["validate", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("error[P0002]: the file is not valid UTF-8 (byte 22)"));
}

/// A data directory labd cannot use is named in the error, and labd stops.
#[test]
fn an_unusable_data_dir_is_named() {
    let file = tmp("not-a-dir", b"a file where the data directory should be");
    let o = Command::new(env!("CARGO_BIN_EXE_labd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--console", "off", "--mqtt-port", "0", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    let se = text(&o.stderr);
    assert!(!o.status.success() && se.contains(file.to_str().unwrap()) && se.contains("data_dir"), "{se}");
}

#[test]
fn usage_and_io_errors_exit_2() {
    let o = labctl(&["validate", "no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("cannot read no/such/file.yaml"));
    assert_eq!(labctl(&["validate"]).status.code(), Some(2));
    assert_eq!(labctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(labctl(&["validate", "x.yaml", "--from", "pdf"]).status.code(), Some(2));
    let site = tmp(
        "site.toml",
        std::fs::read_to_string(root().join("sites/sim.toml"))
            .unwrap()
            .replace("capacity = 12", "capacity = 0")
            .as_bytes(),
    );
    let o = labctl(&["validate", "protocols/examples/elisa.yaml", "--site", site.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("instrument[5] (inc1): capacity must be at least 1"), "{}", text(&o.stderr));
}

#[test]
fn compile_writes_the_plan() {
    let o = labctl(&["compile", "protocols/examples/pcr-setup.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["version"], 1);
    assert_eq!(plan["protocol"], "PCR setup");
    assert!(text(&o.stderr).contains("compile: protocols/examples/pcr-setup.yaml ok"));
    let out = std::env::temp_dir().join(format!("labctl-plan-{}.json", std::process::id()));
    let o = labctl(&["compile", "protocols/examples/pcr-setup.yaml", "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, plan);
}

#[test]
fn quote_in_text_and_json() {
    let o = labctl(&["quote", "protocols/examples/elisa.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let out = text(&o.stdout);
    assert!(out.contains("duration on an empty lab"), "{out}");
    assert!(out.contains("total"), "{out}");
    let o = labctl(&["quote", "protocols/examples/elisa.yaml", "--format", "json"]);
    let q: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(q["currency"], "USD");
    let total = q["total"].as_f64().unwrap();
    let amounts = |key: &str| q[key].as_array().unwrap().iter().map(|l| l["amount"].as_f64().unwrap()).sum::<f64>();
    let sum = amounts("lines") + amounts("consumables") + q["per_run"].as_f64().unwrap();
    assert!((total - sum).abs() < 0.011, "{q}");
    // The ELISA's TMB and stop solution are the lab's reagents, billed per mL with its labware.
    let tmb = q["consumables"].as_array().unwrap().iter().find(|l| l["item"] == "TMB substrate").cloned();
    assert_eq!(tmb.map(|l| (l["unit"].clone(), l["quantity"].clone())), Some(("mL".into(), 11.0.into())), "{q}");
    assert!(out.contains("TMB substrate") && out.contains("opentrons_96_tiprack_300ul"), "{out}");
}

#[test]
fn labware_commands() {
    let o = labctl(&["labware", "list"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).lines().count() >= 25);
    let o = labctl(&["labware", "show", "nest_12_reservoir_15ml"]);
    let def: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(def["wells"].as_array().unwrap().len(), 12);
    let o = labctl(&["labware", "show", "nest_12_reservoir_15m"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("did you mean `nest_12_reservoir_15ml`"));
    let src = root().join("../shared/corpus/labware/opentrons-v2/corning_384_wellplate_112ul_flat");
    let file = std::fs::read_dir(&src).unwrap().flatten().next().unwrap().path();
    let o = labctl(&["labware", "import", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let def: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(def["wells"].as_array().unwrap().len(), 384);
    let bad = tmp("bad-labware.json", b"{\"schemaVersion\": 3}");
    assert_eq!(labctl(&["labware", "import", bad.to_str().unwrap()]).status.code(), Some(1));
}

#[test]
fn no_corpus_file_crashes_labctl() {
    let mut files = Vec::new();
    corpus_files(&root().join("../shared/corpus/protocols"), &mut files);
    assert!(files.len() > 30);
    for f in files {
        let o = labctl(&["validate", f.to_str().unwrap()]);
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{}: exit {:?}\n{}",
            f.display(),
            o.status.code(),
            text(&o.stderr)
        );
    }
}
