//! The Python client (`clients/python`): its wheel built (stubs generated from `protos/`),
//! installed into the peers' venv, and used against a real labd — its pytest suite, then the
//! notebook-style example as a script.

use super::*;

#[test]
fn the_python_client_works_against_labd() {
    let Some(py) = peers_python() else { return };
    let _machine = heavy();
    let (_server, mqtt_port, admin, url, dir) = serve_with("python-client", "", &[]);
    assert_eq!(labctl_at(&url, &admin, &["tenant", "add", "acme"]).0, 0);
    let created = labctl_at(&url, &admin, &["token", "create", "--tenant", "acme", "--format", "json"]).1;
    let mut created: serde_json::Value = serde_json::from_str(created.trim()).unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    created["mqtt"]["port"] = mqtt_port.into(); // the embedded broker's port, picked at start
    let mqtt = created["mqtt"].to_string();
    let client = root().join("clients/python");
    let wheels = dir.join("wheels");
    let run = |args: &[&dyn AsRef<std::ffi::OsStr>], cwd: &Path| {
        let o = Command::new(&py)
            .args(args.iter().map(|a| a.as_ref()))
            .current_dir(cwd)
            .env("LABWRIGHT_URL", &url)
            .env("LABWRIGHT_TOKEN", &token)
            .env("LABWRIGHT_MQTT", &mqtt)
            .env("LABWRIGHT_EXAMPLES", root().join("protocols/examples"))
            .env("LABWRIGHT_OUT", dir.join("heatmap.html"))
            .output()
            .unwrap();
        let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
        assert!(o.status.success(), "{shown:?}:\n{}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout)
    };
    run(
        &[&"-m", &"pip", &"wheel", &"--quiet", &"--no-deps", &"--no-build-isolation", &"-w", &wheels, &client],
        &root(),
    );
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"));
    let wheel = wheel.expect("a wheel was built");
    run(&[&"-m", &"pip", &"install", &"--quiet", &"--force-reinstall", &"--no-deps", &wheel], &root());
    // From a scratch directory: the installed package is what is imported, not the source tree.
    let out = run(&[&"-m", &"pytest", &"-q", &"-p", &"no:cacheprovider", &client.join("tests")], &dir);
    assert!(out.contains("passed") && !out.contains("skipped"), "{out}");
    let out = run(&[&client.join("examples/dilution_notebook.py")], &dir);
    assert!(out.contains("heatmap written to"), "{out}");
    let html = std::fs::read_to_string(dir.join("heatmap.html")).unwrap();
    assert_eq!(html.matches("<td title=").count(), 96, "{html}");

    // The same run's results as Parquet, read by pandas (pyarrow), equal the CSV row for row,
    // with the documented types.
    let id = out.split("Run('").nth(1).and_then(|r| r.split('\'').next()).expect("the example prints its run");
    let (parquet, csv) = (dir.join("results.parquet"), dir.join("results.csv"));
    for (format, file) in [("parquet", &parquet), ("csv", &csv)] {
        let (code, so, se) =
            labctl_at(&url, &token, &["results", id, "--format", format, "-o", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{so}{se}");
    }
    let (code, _, se) = labctl_at(&url, &token, &["results", id, "--format", "parquet"]);
    assert!(code != 0 && se.contains("-o FILE.parquet"), "{se}");
    let check = r#"
import sys, pandas as pd
p = pd.read_parquet(sys.argv[1])
c = pd.read_csv(sys.argv[2])
assert list(p.columns) == list(c.columns), (list(p.columns), list(c.columns))
assert len(p) == len(c) == 96, (len(p), len(c))
assert str(p["read_at"].dtype) == "datetime64[ms, UTC]", p["read_at"].dtype
assert (p["read_at"].dt.floor("s") == pd.to_datetime(c["read_at"], utc=True)).all()  # the CSV says seconds
assert str(p["replicate"].dtype) == "uint32" and str(p["concentration"].dtype) == "float64"
for col in ["run", "protocol", "result", "labware", "kind", "well", "sample", "group", "role", "concentration_unit", "unit"]:
    assert (p[col].fillna("") == c[col].fillna("")).all(), col
for col in ["replicate", "concentration", "wavelength_nm", "value"]:
    assert ((p[col] - c[col]).abs().fillna(0) < 1e-9).all(), col
assert set(p["sample"]) == {"compound"} and p["concentration_unit"].iloc[0] == "mM"
print("parquet ok", len(p))
"#;
    let out = run(&[&"-c", &check, &parquet, &csv], &dir);
    assert!(out.contains("parquet ok 96"), "{out}");

    // Pictures and fits: a Bradford assay's standard curve reads the lysates' protein back.
    let bradford = root().join("protocols/examples/bradford.yaml");
    let (code, so, se) = labctl_at(&url, &token, &["submit", bradford.to_str().unwrap(), "--wait", "--format", "json"]);
    assert_eq!(code, 0, "{so}{se}");
    let submitted: serde_json::Value = serde_json::from_str(so.lines().next().unwrap()).unwrap();
    let id = submitted["run"]["id"].as_str().unwrap();
    let plots = dir.join("plots");
    let (code, _, said) =
        labctl_at(&url, &token, &["results", id, "--plot", plots.to_str().unwrap(), "-o", "/dev/null"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("read 0: standard curve y = "), "{said}");
    let heatmap = std::fs::read_to_string(plots.join("read-0-heatmap.svg")).unwrap();
    assert_eq!(heatmap.matches("<rect class=\"well\"").count(), 36, "A1:D9 were read");
    assert!(heatmap.contains("C1 · sample lysate 1 · group lysates"), "tooltips name the wells");
    let curve = std::fs::read_to_string(plots.join("read-0-standard-curve.svg")).unwrap();
    assert_eq!(curve.matches("<circle class=\"point\"").count(), 16, "8 standards in duplicate");
    assert_eq!(curve.matches("<rect class=\"unknown\"").count(), 6, "six lysates on the curve");
    let analysis: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plots.join("analysis.json")).unwrap()).unwrap();
    let sc = &analysis[0]["standard_curve"];
    assert!(sc["fit"]["Ok"]["r_squared"].as_f64().unwrap() > 0.999, "{sc}");
    // The liquids' optics: lysate k reads like BSA at 2 mg/mL × (its OD / BSA's 24 OD).
    for (k, od) in [15.0, 9.0, 6.0, 4.0, 2.0, 1.0].iter().enumerate() {
        let sample = format!("lysate {}", k + 1);
        let u = sc["unknowns"].as_array().unwrap().iter().find(|u| u["sample"] == sample.as_str()).unwrap();
        let (found, truth) = (u["concentration"].as_f64().unwrap(), 2.0 * od / 24.0);
        assert!((found - truth).abs() <= 0.05 * truth + 0.005, "{sample}: {found} mg/mL, truly {truth}");
    }
    let blank = analysis[0]["blank"].as_f64().unwrap();
    assert!(blank > 0.3 && blank < 0.6, "the blank is buffer and dye: {blank}");
}
