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
}
