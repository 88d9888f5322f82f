//! The layering rules of DESIGN.md, checked on `cargo metadata`'s resolved graph.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Normal (non-dev, non-build) dependencies of each package, by name.
fn graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        names.insert(p["id"].as_str().unwrap().to_string(), p["name"].as_str().unwrap().to_string());
    }
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap().to_string();
        let normal: BTreeSet<String> = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null()))
            .map(|d| d["pkg"].as_str().unwrap().to_string())
            .collect();
        deps.insert(id, normal);
    }
    (deps, names)
}

fn closure(pkg: &str) -> BTreeSet<String> {
    let (deps, names) = graph();
    let start = names.iter().find(|(_, n)| n.as_str() == pkg).map(|(id, _)| id.clone()).expect("package exists");
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        for d in deps.get(&id).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen.into_iter().map(|id| names[&id].clone()).collect()
}

const IO_CRATES: &[&str] = &[
    "tokio",
    "tonic",
    "prost",
    "rumqttc",
    "rusqlite",
    "sqlx",
    "tokio-postgres",
    "postgres",
    "tokio-serial",
    "mio",
    "hyper",
];

#[test]
fn pure_cores_do_no_io() {
    // The walk sees transitive dependencies: the daemon does reach prost (through protos).
    assert!(closure("labd").contains("prost"));
    for pkg in ["labware", "protocols", "scheduler"] {
        let deps = closure(pkg);
        for bad in IO_CRATES {
            assert!(!deps.contains(*bad), "{pkg} depends on {bad} (through its dependency graph); pure cores must not");
        }
    }
}

#[test]
fn dependencies_point_down_the_layers() {
    // What each workspace crate may depend on, from DESIGN.md's picture.
    let allowed: &[(&str, &[&str])] = &[
        ("labware", &[]),
        ("protocols", &["labware"]),
        ("scheduler", &["protocols", "labware"]),
        ("devices", &["protocols", "labware", "protos"]),
        ("protos", &[]),
        ("labd", &["scheduler", "protocols", "labware", "devices", "protos"]),
    ];
    let workspace: BTreeSet<&str> = allowed.iter().map(|(n, _)| *n).chain(["tests"]).collect();
    for (pkg, ok) in allowed {
        for d in closure(pkg) {
            if workspace.contains(d.as_str()) {
                assert!(ok.contains(&d.as_str()), "{pkg} depends on {d}, against the layering in DESIGN.md");
            }
        }
    }
}

#[test]
fn only_the_edges_see_prost() {
    let (deps, names) = graph();
    for (id, ds) in &deps {
        let name = &names[id];
        if ["labware", "protocols", "scheduler", "tests"].contains(&name.as_str()) {
            assert!(!ds.iter().any(|d| names[d] == "prost"), "{name} uses prost directly");
        }
    }
}
