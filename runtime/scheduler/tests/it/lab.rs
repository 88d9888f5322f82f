//! Lab plans: the list scheduler's output always validates; the validator catches breaks.

use labware::{Library, Site};
use proptest::prelude::*;
use protocols::{compile, Format, RunPlan, SourceFile};
use scheduler::{critical_path_bound, list_schedule, validate, Job, Violation};
use std::sync::OnceLock;

fn plans() -> &'static Vec<RunPlan> {
    static PLANS: OnceLock<Vec<RunPlan>> = OnceLock::new();
    PLANS.get_or_init(|| {
        let site = Site::sim().unwrap();
        let lib = Library::shipped();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocols/examples");
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                let c = compile(
                    &SourceFile::new(p.display().to_string(), std::fs::read_to_string(p).unwrap()),
                    Format::Auto,
                    &site,
                    &lib,
                );
                c.plan.unwrap()
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn list_schedules_are_valid_apart_from_max_lags(picks in proptest::collection::vec((0usize..5, 0u32..7200), 1..8)) {
        let site = Site::sim().unwrap();
        let jobs: Vec<Job> = picks.iter().enumerate().map(|(i, (p, r))| Job {
            run: format!("run{i}"), tenant: format!("t{}", i % 3), plan: &plans()[*p], release_s: f64::from(*r),
        }).collect();
        let s = list_schedule(&site, &jobs);
        let v: Vec<_> = validate(&site, &jobs, &s).into_iter().filter(|x| !matches!(x, Violation::MaxLag { .. })).collect();
        prop_assert!(v.is_empty(), "{v:?}");
        prop_assert!(s.makespan() + 1e-6 >= critical_path_bound(&jobs));
    }
}

#[test]
fn validator_catches_each_kind_of_break() {
    let site = Site::sim().unwrap();
    let plan = &plans()[0]; // elisa: 12 tasks with a max lag
    let jobs = vec![Job { run: "r".into(), tenant: "t".into(), plan, release_s: 100.0 }];
    let good = list_schedule(&site, &jobs);
    let has = |s: &scheduler::Schedule, f: fn(&Violation) -> bool| validate(&site, &jobs, s).iter().any(f);

    let mut s = good.clone();
    s.assignments.pop();
    assert!(has(&s, |v| matches!(v, Violation::Count { .. })));

    let mut s = good.clone();
    s.assignments[0].start_s = 0.0;
    assert!(has(&s, |v| matches!(v, Violation::BeforeRelease { .. })));

    let mut s = good.clone();
    s.assignments[1].end_s = s.assignments[1].start_s + 1.0;
    assert!(has(&s, |v| matches!(v, Violation::TooShort { .. })));

    let mut s = good.clone();
    let d = s.assignments[1].end_s - s.assignments[1].start_s;
    s.assignments[1].start_s = s.assignments[0].start_s;
    s.assignments[1].end_s = s.assignments[1].start_s + d;
    assert!(has(&s, |v| matches!(v, Violation::Precedence { .. })));

    let mut s = good.clone();
    s.assignments[0].resource = Some("reader1".into());
    assert!(has(&s, |v| matches!(v, Violation::WrongResource { .. })));

    // Two runs of the same plan forced onto one liquid handler at the same time.
    let jobs2 = vec![jobs[0].clone(), Job { run: "r2".into(), ..jobs[0].clone() }];
    let mut s = list_schedule(&site, &jobs2);
    let first = s.assignments.iter().find(|a| a.job == 0 && a.task == 0).unwrap().clone();
    for a in s.assignments.iter_mut().filter(|a| a.job == 1 && a.task == 0) {
        a.resource = first.resource.clone();
        a.start_s = first.start_s;
        a.end_s = first.end_s;
    }
    assert!(validate(&site, &jobs2, &s).iter().any(|v| matches!(v, Violation::Capacity { .. })));

    // Stretch the gap between `stop` and `read` past its 5-minute max lag.
    let mut s = good.clone();
    let lag = plan.max_lags[0].clone();
    let to = s.assignments.iter_mut().find(|a| a.task == lag.to).unwrap();
    to.start_s += 3600.0;
    to.end_s += 3600.0;
    assert!(has(&s, |v| matches!(v, Violation::MaxLag { .. })));
}

#[test]
fn incubators_hold_twelve_plates_at_once() {
    let site = Site::sim().unwrap();
    let growth = &plans()[1];
    let jobs: Vec<Job> =
        (0..20).map(|i| Job { run: format!("g{i}"), tenant: "t".into(), plan: growth, release_s: 0.0 }).collect();
    let s = list_schedule(&site, &jobs);
    assert!(validate(&site, &jobs, &s).iter().all(|v| matches!(v, Violation::MaxLag { .. })));
    let busy = scheduler::busy_seconds(&s);
    // Twenty growth curves need more than one incubator's worth of 12-plate capacity in parallel.
    assert!(busy.get("inc1").copied().unwrap_or(0.0) > 0.0 && busy.get("inc2").copied().unwrap_or(0.0) > 0.0);
}
