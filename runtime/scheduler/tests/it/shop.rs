//! Shop instances from the corpus: every file parses; schedules are verified independently and
//! never beat a proven bound of the literature.

use scheduler::shop::solve::{solve, verify, Budget};
use scheduler::shop::Instance;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus/scheduling")
}

fn jsp(name: &str) -> Instance {
    let text = std::fs::read_to_string(corpus().join("jsplib/instances").join(name)).unwrap();
    Instance::parse_jsplib(name, &text).unwrap()
}

/// Best-known lower bounds by instance name (Taillard names spelled as in JSPLIB).
fn bounds(file: &str) -> BTreeMap<String, (u64, u64)> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(corpus().join("best-known").join(file)).unwrap()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["instance"].as_str().unwrap().trim_end_matches("js").to_string();
            (name, (e["lower_bound"].as_u64().unwrap_or(0), e["upper_bound"].as_u64().unwrap_or(u64::MAX)))
        })
        .collect()
}

#[test]
fn every_jsplib_instance_parses_with_its_stated_size() {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(corpus().join("jsplib/instances.json")).unwrap()).unwrap();
    let list = meta.as_array().unwrap();
    assert_eq!(list.len(), 162);
    for m in list {
        let text = std::fs::read_to_string(corpus().join("jsplib").join(m["path"].as_str().unwrap())).unwrap();
        let inst = Instance::parse_jsplib(m["name"].as_str().unwrap(), &text).unwrap();
        assert_eq!(inst.jobs.len() as u64, m["jobs"].as_u64().unwrap());
        assert_eq!(inst.machines as u64, m["machines"].as_u64().unwrap());
        assert!(inst.jobs.iter().all(|j| j.len() == inst.machines), "every job visits every machine once");
    }
}

#[test]
fn every_fjsp_instance_parses() {
    let mut n = 0;
    let mut dirs = vec![
        corpus().join("fjsp/brandimarte"),
        corpus().join("fjsp/hurink/edata"),
        corpus().join("fjsp/hurink/rdata"),
        corpus().join("fjsp/hurink/vdata"),
    ];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let inst = Instance::parse_fjsp("x", &text).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
            assert!(inst.op_count() > 0);
            n += 1;
        }
    }
    assert_eq!(n, 15 + 3 * 66);
}

#[test]
fn small_instances_are_solved_validly_and_never_below_the_known_bound() {
    let known = bounds("jobshop_bks.json");
    for name in ["ft06", "ft10", "la01", "la16", "abz5", "orb01"] {
        let inst = jsp(name);
        let out = solve(&inst, Budget { time: None, iterations: Some(3_000) }, 7);
        let ms = verify(&inst, &out.schedule).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (lb, _) = known[name];
        assert!(ms >= lb, "{name}: makespan {ms} beats the proven bound {lb}: a verifier bug");
        assert!(ms <= out.initial_makespan, "the search never returns worse than its start");
        assert!(inst.lower_bound() <= lb, "our bound {} exceeds the best known {lb}", inst.lower_bound());
    }
    // ft06 is solved to optimality (55) within a small budget.
    assert_eq!(solve(&jsp("ft06"), Budget { time: None, iterations: Some(5_000) }, 1).schedule.makespan, 55);
}

#[test]
fn flexible_instances_are_solved_validly() {
    let known = bounds("fjsp_bks.json");
    for name in ["mk01", "mk02", "mk04"] {
        let text = std::fs::read_to_string(corpus().join("fjsp/brandimarte").join(format!("{name}.txt"))).unwrap();
        let inst = Instance::parse_fjsp(name, &text).unwrap();
        let out = solve(&inst, Budget { time: None, iterations: Some(2_000) }, 3);
        let ms = verify(&inst, &out.schedule).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(ms >= known[name].0, "{name}: {ms} beats the proven bound");
    }
}

#[test]
fn same_seed_same_schedule() {
    let inst = jsp("la16");
    let a = solve(&inst, Budget { time: None, iterations: Some(1_000) }, 42);
    let b = solve(&inst, Budget { time: None, iterations: Some(1_000) }, 42);
    assert_eq!(a.schedule, b.schedule);
}

#[test]
fn the_verifier_rejects_broken_schedules() {
    let inst = jsp("ft06");
    let good = solve(&inst, Budget { time: None, iterations: Some(100) }, 1).schedule;
    let mut s = good.clone();
    s.start[0][1] = 0;
    assert!(verify(&inst, &s).is_err());
    let mut s = good.clone();
    s.machine[0][0] = (s.machine[0][0] + 1) % 6;
    assert!(verify(&inst, &s).unwrap_err().contains("cannot run it"));
    let mut s = good.clone();
    s.makespan -= 1;
    assert!(verify(&inst, &s).unwrap_err().contains("stated makespan"));
    let mut s = good;
    // Put two operations of different jobs on the same machine at the same time.
    let (m, t) = (s.machine[0][0], s.start[0][0]);
    let (j, k) = (1..6).flat_map(|j| (0..6).map(move |k| (j, k))).find(|&(j, k)| s.machine[j][k] == m).unwrap();
    s.start[j][k] = t;
    assert!(verify(&inst, &s).is_err());
}

#[test]
fn malformed_instance_files_name_the_line() {
    let err = |t: &str| Instance::parse_jsplib("x", t).unwrap_err().to_string();
    assert_eq!(err(""), "line 1: empty file: expected `jobs machines`");
    assert!(err("2 2\n0 1 1 1\n").contains("missing"));
    assert!(err("1 2\n0 1 5 1\n").contains("line 2: machine 5 does not exist"));
    assert!(err("1 2\n0 x 1 1\n").contains("line 2: duration: `x`"));
    assert!(err("1 2\n0 1 1\n").contains("pairs"));
    assert!(err("99999999 99999999\n").contains("out of range"));
    let ferr = |t: &str| Instance::parse_fjsp("x", t).unwrap_err().to_string();
    assert!(ferr("1 2\n1 3 0 1 1 1 0 1\n").contains("3 alternative machines"));
    assert!(ferr("1 2\n2 1 0 5\n").contains("line ends early"));
}

#[test]
fn schedbench_prints_one_checked_line_per_instance() {
    let exe = env!("CARGO_BIN_EXE_schedbench");
    let ft06 = corpus().join("jsplib/instances/ft06");
    let emit = std::env::temp_dir().join(format!("schedbench-{}.json", std::process::id()));
    let o = std::process::Command::new(exe)
        .args([
            "--format",
            "jsplib",
            ft06.to_str().unwrap(),
            "--iterations",
            "3000",
            "--emit-schedule",
            emit.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let line: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["instance"], "ft06");
    assert_eq!(line["valid"], true);
    // The emitted schedule is checkable without the solver: rebuild it and verify.
    let sched: Value = serde_json::from_str(&std::fs::read_to_string(&emit).unwrap()).unwrap();
    let inst = jsp("ft06");
    let start: Vec<Vec<u64>> = sched["starts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect())
        .collect();
    let machine: Vec<Vec<usize>> = inst.jobs.iter().map(|j| j.iter().map(|o| o.alts[0].0).collect()).collect();
    let makespan = line["makespan"].as_u64().unwrap();
    assert_eq!(verify(&inst, &scheduler::shop::solve::ShopSchedule { machine, start, makespan }), Ok(makespan));

    let lab = std::process::Command::new(exe).args(["--format", "lab", "S:3", "--iterations", "5"]).output().unwrap();
    assert_eq!(lab.status.code(), Some(0));
    let line: Value = serde_json::from_slice(&lab.stdout).unwrap();
    assert_eq!(line["valid"], true);
    assert!(line["makespan"].as_f64().unwrap() >= line["lower_bound"].as_f64().unwrap());
    assert!(line["fairness"]["jain"].as_f64().unwrap() > 0.0);

    let bad = std::env::temp_dir().join(format!("bad-{}.txt", std::process::id()));
    std::fs::write(&bad, "2 2\n0 1\n").unwrap();
    let o = std::process::Command::new(exe).args(["--format", "jsplib", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line 3: job 1 is missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = std::process::Command::new(exe).args(["--format", "xml", "x"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}
