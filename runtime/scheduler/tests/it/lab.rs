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

mod lab_model {
    use labware::Site;
    use scheduler::lab::check::{validate, LabViolation};
    use scheduler::lab::generate::generate;
    use scheduler::lab::solve::{solve, LabBudget};
    use scheduler::lab::LabProblem;

    #[test]
    fn generated_instances_schedule_without_violations() {
        let site = Site::sim().unwrap();
        for seed in 0..12 {
            let p = generate(&site, 50, 3, 3600.0, seed).unwrap();
            let out = solve(&p, LabBudget { time: None, iterations: Some(20) }, seed).unwrap();
            let v = validate(&p, &out.schedule);
            assert!(v.is_empty(), "seed {seed}: {v:?}");
            assert!(out.schedule.makespan() + 1e-6 >= p.lower_bound(), "seed {seed}: below the lower bound");
            assert!(out.schedule.makespan() <= out.first_makespan + 1e-6);
        }
    }

    #[test]
    fn the_validator_catches_broken_lab_schedules() {
        let site = Site::sim().unwrap();
        let p = generate(&site, 50, 2, 1800.0, 5).unwrap();
        let good = p.build(&p.default_order()).unwrap();
        assert!(validate(&p, &good).is_empty());
        let has = |s: &scheduler::lab::solve::LabSchedule, f: fn(&LabViolation) -> bool| validate(&p, s).iter().any(f);

        // A move faster than the arm can make it.
        let mut s = good.clone();
        s.moves[0].end = s.moves[0].start + 1.0;
        assert!(has(&s, |v| matches!(v, LabViolation::BadMove { .. })));
        // Two moves of one arm at the same time.
        let mut s = good.clone();
        let (a, b) = (0..s.moves.len())
            .flat_map(|i| (i + 1..s.moves.len()).map(move |j| (i, j)))
            .find(|&(i, j)| s.moves[i].arm == s.moves[j].arm)
            .unwrap();
        let d = s.moves[b].end - s.moves[b].start;
        s.moves[b].start = s.moves[a].start;
        s.moves[b].end = s.moves[a].start + d;
        assert!(has(&s, |v| matches!(v, LabViolation::ArmOverlap { .. } | LabViolation::PlateContinuity { .. })));
        // A task without its plate: drop all moves.
        let mut s = good.clone();
        s.moves.clear();
        assert!(has(&s, |v| matches!(v, LabViolation::PlateAbsent { .. })));
        // Release and precedence.
        let mut s = good.clone();
        let (ri, run) = p.runs.iter().enumerate().find(|(_, r)| r.release > 0.0 && r.tasks.len() > 1).unwrap();
        s.tasks[ri][0].start = 0.0;
        assert!(has(&s, |v| matches!(v, LabViolation::BeforeRelease { .. })));
        let mut s = good.clone();
        s.tasks[ri][1].start = s.tasks[ri][0].start;
        let _ = run;
        assert!(has(&s, |v| matches!(v, LabViolation::Precedence { .. } | LabViolation::PlateAbsent { .. })));
        // Down time: take the first used liquid handler down over the whole horizon.
        let r = s.tasks[ri][0].resource.unwrap();
        let mut down = p.clone();
        down.down[r].push(scheduler::lab::Window { start: 0.0, end: 1e9 });
        assert!(validate(&down, &good).iter().any(|v| matches!(v, LabViolation::Down { .. })));
        // And the solver works around it.
        let around = down.build(&down.default_order()).unwrap();
        assert!(validate(&down, &around).is_empty());
        // A reservation for another tenant is respected the same way.
        let mut res = p.clone();
        res.reservations[r].push(("someone else".into(), scheduler::lab::Window { start: 0.0, end: 1e9 }));
        assert!(validate(&res, &good).iter().any(|v| matches!(v, LabViolation::Reserved { .. })));
        assert!(validate(&res, &res.build(&res.default_order()).unwrap()).is_empty());
    }

    #[test]
    fn incubations_share_an_incubator_only_at_the_same_temperature() {
        let site = Site::sim().unwrap();
        for seed in 0..6 {
            let p = generate(&site, 120, 3, 600.0, seed).unwrap();
            let s = p.build(&p.default_order()).unwrap();
            assert_eq!(validate(&p, &s), vec![]);
            // Shaking growth curves only go to the incubator that shakes (inc1).
            for (ri, run) in p.runs.iter().enumerate() {
                for (ti, t) in run.tasks.iter().enumerate() {
                    if t.settings.shake_rpm.is_some() {
                        assert_eq!(p.resources[s.tasks[ri][ti].resource.unwrap()].id, "inc1");
                    }
                }
            }
        }
        // Forcing two temperatures into one incubator at once is caught.
        let mut p = LabProblem::from_site(&site).unwrap();
        let inc = |temp: f64| scheduler::lab::LabTask {
            class: Some(labware::InstrumentClass::Incubator),
            duration: 600.0,
            after: vec![],
            plates: vec![0],
            pipettes: vec![],
            settings: protocols::plan::Settings { temperature_c: Some(temp), shake_rpm: None },
            label: "incubate".into(),
            instruments: Vec::new(),
        };
        for (i, temp) in [37.0, 25.0].into_iter().enumerate() {
            let run = scheduler::lab::Run {
                id: format!("r{i}"),
                tenant: "t".into(),
                weight: 1.0,
                class: Default::default(),
                release: 0.0,
                plates: vec!["p".into()],
                tasks: vec![inc(temp)],
                max_lags: vec![],
                min_lags: vec![],
            };
            p.add_run(run).unwrap();
        }
        let mut s = p.build(&p.default_order()).unwrap();
        assert_eq!(validate(&p, &s), vec![]);
        let (a, b) = (s.tasks[0][0], s.tasks[1][0]);
        assert!(a.resource != b.resource || a.end <= b.start || b.end <= a.start, "never together");
        s.tasks[1][0] = scheduler::lab::solve::TaskSlot { resource: a.resource, ..a };
        let plate_moves: Vec<_> = s
            .moves
            .iter()
            .filter(|m| m.run == 0)
            .copied()
            .map(|mut m| {
                m.run = 1;
                m
            })
            .collect();
        s.moves.retain(|m| m.run != 1);
        s.moves.extend(plate_moves);
        let v = validate(&p, &s);
        assert!(v.iter().any(|v| matches!(v, LabViolation::Settings { .. })), "{v:?} {:?}", s.tasks);
    }

    #[test]
    fn compiled_plans_become_runs() {
        let site = Site::sim().unwrap();
        let mut p = LabProblem::from_site(&site).unwrap();
        for (i, plan) in super::plans().iter().enumerate() {
            p.add_plan(&format!("r{i}"), &format!("t{}", i % 2), 1.0, 0.0, plan).unwrap();
        }
        let out = solve(&p, LabBudget { time: None, iterations: Some(30) }, 1).unwrap();
        assert_eq!(validate(&p, &out.schedule), vec![]);
        // The ELISA run's 5-minute lag between the stop solution and the read holds.
        let elisa = &p.runs[0];
        let (f, t, max) = elisa.max_lags[0];
        assert!(out.schedule.tasks[0][t].start - out.schedule.tasks[0][f].end <= max + 1e-6);
    }

    #[test]
    fn impossible_problems_are_refused_with_the_task_named() {
        let site = Site::sim().unwrap();
        let mut p = LabProblem::from_site(&site).unwrap();
        let mut run = scheduler::lab::Run {
            id: "r".into(),
            tenant: "t".into(),
            weight: 1.0,
            class: Default::default(),
            release: 0.0,
            plates: vec!["p".into()],
            tasks: vec![scheduler::lab::LabTask {
                class: Some(labware::InstrumentClass::Thermocycler),
                duration: 10.0,
                after: vec![],
                plates: vec![0],
                pipettes: vec![],
                settings: Default::default(),
                label: "cycle".into(),
                instruments: Vec::new(),
            }],
            max_lags: vec![],
            min_lags: vec![],
        };
        let e = p.add_run(run.clone()).unwrap_err().to_string();
        assert_eq!(e, "run r task 0 (cycle): no thermocycler on this site can run it");
        run.tasks[0].class = Some(labware::InstrumentClass::LiquidHandler);
        run.tasks.push(scheduler::lab::LabTask {
            class: Some(labware::InstrumentClass::PlateReader),
            duration: 10.0,
            after: vec![0],
            plates: vec![0],
            pipettes: vec![],
            settings: Default::default(),
            label: "read".into(),
            instruments: Vec::new(),
        });
        run.max_lags = vec![(0, 1, 5.0)];
        let e = p.add_run(run.clone()).unwrap_err().to_string();
        assert!(e.contains("must start within 5 s of task 0, but moving its plates"), "{e}");
        run.max_lags = vec![];
        run.tasks[0].after = vec![1];
        assert!(p.add_run(run).unwrap_err().to_string().contains("topological order"));
    }
}

/// Dynamic traces: runs arriving at random, durations ±20 %, instruments failing; after every
/// event the repaired plan must be valid, and every run must finish (no deadlock).
/// `LAB_TRACES=N` (and `LAB_TRACE_FROM=K`) run more of them; the benchmark runs 10,000.
#[test]
fn dynamic_traces_stay_valid_and_finish() {
    use scheduler::lab::trace::{run_trace, TraceConfig};
    let site = labware::Site::sim().unwrap();
    let n: u64 = std::env::var("LAB_TRACES").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let first: u64 = std::env::var("LAB_TRACE_FROM").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in first..first + n {
        // Every other trace repairs with runs built interleaved, whatever the first search chose.
        let mut cfg = TraceConfig::small(seed);
        if seed % 2 == 1 {
            cfg.window = Some(scheduler::lab::solve::MAX_WINDOW);
        }
        let stats = run_trace(&site, &cfg).unwrap();
        assert!(stats.events > 100, "seed {seed}: only {} events", stats.events);
        if seed % 2 == 1 {
            assert_eq!(stats.window, scheduler::lab::solve::MAX_WINDOW, "seed {seed}: fell back to whole runs");
        }
    }
}

#[test]
fn an_urgent_run_overtakes_the_queue() {
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::{Event, Planner};
    use scheduler::lab::solve::LabBudget;
    let site = labware::Site::sim().unwrap();
    let p = generate(&site, 300, 3, 600.0, 4).unwrap();
    let template = p.runs.iter().find(|r| r.tasks.len() == 2).unwrap().clone();
    let finish_of = |weight: f64| {
        let mut planner = Planner::new(p.clone(), LabBudget { time: None, iterations: Some(0) }, 1).unwrap();
        let mut run = template.clone();
        run.id = "new".into();
        run.weight = weight;
        planner.handle(100.0, Event::RunArrived(run), std::time::Duration::ZERO).unwrap();
        let r = planner.problem.runs.len() - 1;
        planner.schedule.completion(r)
    };
    let normal = finish_of(1.0);
    let urgent = finish_of(10.0);
    assert!(urgent < normal, "urgent {urgent} vs normal {normal}");
}

#[test]
fn the_fair_search_trades_at_most_three_percent_of_makespan() {
    use scheduler::lab::check::validate;
    use scheduler::lab::fair::solve_fair;
    use scheduler::lab::generate::generate;
    use scheduler::lab::solve::LabBudget;
    let site = labware::Site::sim().unwrap();
    let p = generate(&site, 150, 4, 1800.0, 3).unwrap();
    let f = solve_fair(&p, LabBudget { time: None, iterations: Some(200) }, 1, 0.03).unwrap();
    assert_eq!(validate(&p, &f.outcome.schedule), vec![]);
    assert!(f.outcome.schedule.makespan() <= f.makespan_first * 1.03 + 1e-6);
    // Service in proportion to the weights, and the worst tenant within 1.5x of the reference.
    let jain = p.fairness(&f.outcome.schedule).jain;
    assert!(jain >= scheduler::lab::fair::JAIN_FLOOR, "Jain {jain:.3}");
    assert!(f.slowdown_reference > 0.0);
    assert!(f.slowdown <= 1.5 * f.slowdown_reference, "{} vs reference {}", f.slowdown, f.slowdown_reference);
    // The reference order is a permutation of the runs.
    let mut o = p.fair_order(&p.solo_turnarounds());
    o.sort_unstable();
    assert_eq!(o, (0..p.runs.len()).collect::<Vec<_>>());
}

#[test]
fn arm_bound_instances_schedule_validly() {
    use scheduler::lab::check::validate;
    use scheduler::lab::generate::generate_arm_bound;
    let site = labware::Site::sim().unwrap();
    let p = generate_arm_bound(&site, 80, 2).unwrap();
    assert_eq!(p.arms.len(), 1);
    let s = p.build(&p.default_order()).unwrap();
    assert_eq!(validate(&p, &s), vec![]);
    let bound = p.lower_bounds().into_iter().find(|b| b.0 == "arm moves").unwrap().1;
    assert!(s.makespan() >= bound - 1e-6);
}

/// Runs built interleaved keep a saturated arm busy where whole runs one after another leave it
/// gaps too short for a move; and the search picks interleaving there.
#[test]
fn interleaved_runs_keep_a_saturated_arm_busy() {
    use scheduler::lab::check::validate;
    use scheduler::lab::generate::generate_arm_bound;
    use scheduler::lab::solve::{solve, LabBudget, LabSchedule};
    let site = labware::Site::sim().unwrap();
    let p = generate_arm_bound(&site, 300, 1).unwrap();
    let busy = |s: &LabSchedule| s.moves.iter().map(|m| m.end - m.start).sum::<f64>() / s.makespan();
    let whole = p.build(&p.default_order()).unwrap();
    for window in 2..=4 {
        let s = p.build_interleaved(&p.default_order(), window).unwrap();
        assert_eq!(validate(&p, &s), vec![], "window {window}");
        eprintln!("window {window}: arm busy {:.3} (whole runs {:.3})", busy(&s), busy(&whole));
        assert!(busy(&s) > busy(&whole), "window {window}");
    }
    let out = solve(&p, LabBudget { time: None, iterations: Some(20) }, 1).unwrap();
    assert!(out.window > 1);
    assert!(busy(&out.schedule) >= 0.9, "arm busy {:.3}", busy(&out.schedule));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Whatever the generator draws, with "wait at least" lags sprinkled in, the constructive
    /// schedule passes the validator and never beats the lower bound.
    #[test]
    fn lab_schedules_always_validate(seed in 0u64..100_000, tasks in 10usize..120, min_lag in 0u32..3600, tenants in 1usize..5) {
        let site = labware::Site::sim().unwrap();
        let mut p = scheduler::lab::generate::generate(&site, tasks, tenants, 1800.0, seed).unwrap();
        for (i, run) in p.runs.iter_mut().enumerate() {
            let clash = run.max_lags.iter().any(|l| l.0 == 0 && l.1 == 1);
            if i % 3 == 0 && run.tasks.len() > 1 && !clash {
                run.min_lags.push((0, 1, f64::from(min_lag)));
            }
        }
        let s = p.build(&p.default_order()).unwrap();
        let v = scheduler::lab::check::validate(&p, &s);
        prop_assert!(v.is_empty(), "{v:?}");
        prop_assert!(s.makespan() + 1e-6 >= p.lower_bound());
        for (ri, run) in p.runs.iter().enumerate() {
            for &(f, t, m) in &run.min_lags {
                prop_assert!(s.tasks[ri][t].start - s.tasks[ri][f].end >= m - 1e-6);
            }
        }
    }
}

/// A task that runs past the start its plates' move home was planned for: the repair keeps the
/// plates at the instrument until the task ends (the move home had not begun, whatever the old
/// plan said). Found by the scale-out benchmark: the repaired plan had the plate leave mid-task.
#[test]
fn an_overrun_past_the_planned_move_home_keeps_the_plate() {
    use scheduler::lab::check::validate;
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::{Event, Planner};
    use scheduler::lab::solve::LabBudget;
    let site = labware::Site::sim().unwrap();
    let p = generate(&site, 50, 2, 0.0, 7).unwrap();
    let mut planner = Planner::new(p, LabBudget { time: None, iterations: Some(0) }, 1).unwrap();
    planner.pin_past = false; // as the executor runs it: it pins what really started
    let mut checked = 0;
    for run in 0..planner.problem.runs.len() {
        let slot = planner.schedule.tasks[run][0];
        let travels = slot.resource.is_some_and(|r| planner.problem.resources[r].nest.is_some()) && !slot.on_arm;
        if !travels || planner.problem.pinned[run][0].is_some() {
            continue;
        }
        let zero = std::time::Duration::ZERO;
        planner.pin_task(run, 0);
        planner.handle(slot.start, Event::TaskStarted { run, task: 0 }, zero).unwrap();
        let end = planner.schedule.tasks[run][0].end;
        let now = end + 120.0; // past the planned move home
        planner.handle(now, Event::TaskOverrun { run, task: 0, expected_end: now + 600.0 }, zero).unwrap();
        let broken = validate(&planner.problem, &planner.schedule);
        assert!(broken.is_empty(), "run {run}: {:?}", &broken[..broken.len().min(3)]);
        checked += 1;
        if checked == 3 {
            break;
        }
    }
    assert!(checked > 0, "no task travelled");
}

/// A planner as the executor runs it: it pins what really started, no improvement search.
fn executor_planner(p: scheduler::lab::LabProblem) -> scheduler::lab::replan::Planner {
    use scheduler::lab::solve::LabBudget;
    let mut planner =
        scheduler::lab::replan::Planner::new(p, LabBudget { time: None, iterations: Some(0) }, 1).unwrap();
    planner.pin_past = false;
    planner
}

/// Pins the first task of `run` and tells the planner it overran: 40 s past its planned end,
/// now expected to take 600 s more. Returns that moment.
fn overrun_first_task(planner: &mut scheduler::lab::replan::Planner, run: usize) -> f64 {
    use scheduler::lab::replan::Event;
    planner.pin_task(run, 0);
    let now = planner.schedule.tasks[run][0].end + 40.0;
    let overrun = Event::TaskOverrun { run, task: 0, expected_end: now + 600.0 };
    planner.handle(now, overrun, std::time::Duration::ZERO).unwrap();
    now
}

/// Runs whose first task takes its plates to an instrument (and is not pinned yet).
fn first_tasks_that_travel(planner: &scheduler::lab::replan::Planner) -> Vec<usize> {
    (0..planner.problem.runs.len())
        .filter(|&run| {
            let slot = planner.schedule.tasks[run][0];
            let travels = slot.resource.is_some_and(|r| planner.problem.resources[r].nest.is_some()) && !slot.on_arm;
            travels && planner.problem.pinned[run][0].is_none()
        })
        .collect()
}

/// A task re-planned as overrunning that then finishes (before or after the guessed end): the
/// repaired plan sends its plates on from now and breaks no constraint.
#[test]
fn an_overrunning_task_that_finishes_is_replanned_from_its_real_end() {
    use scheduler::lab::check::validate;
    use scheduler::lab::replan::Event;
    let site = labware::Site::sim().unwrap();
    let p = scheduler::lab::generate::generate(&site, 50, 2, 0.0, 7).unwrap();
    let zero = std::time::Duration::ZERO;
    let mut checked = 0;
    for finish_after in [100.0, 700.0] {
        let mut planner = executor_planner(p.clone());
        for run in first_tasks_that_travel(&planner).into_iter().take(3) {
            let now = overrun_first_task(&mut planner, run);
            let finished = now + finish_after;
            planner.handle(finished, Event::TaskFinished { run, task: 0, at: finished }, zero).unwrap();
            let broken = validate(&planner.problem, &planner.schedule);
            assert!(
                broken.is_empty(),
                "run {run}, finished {finish_after} s after: {:?}",
                &broken[..broken.len().min(3)]
            );
            // Its plate leaves the instrument after the task's end: at once if the move home
            // had not been due yet, else on the move that was due (kept as planned).
            let (end, at) = (planner.schedule.tasks[run][0].end, planner.schedule.tasks[run][0].resource);
            let nest = at.and_then(|r| planner.problem.resources[r].nest);
            let leaves = planner.schedule.moves.iter().filter(|m| m.run == run && Some(m.from) == nest);
            assert!(leaves.filter(|m| m.start >= end - 1e-6).count() > 0, "run {run}: its plate does not move on");
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "not enough travelling tasks");
}

/// A task that overran past even its re-planned end: when it finishes, the move home that was
/// due is under way at once (the executor starts it as soon as the task ends), so the repair
/// keeps that move at its planned start, which is how the executor knows a move, instead of
/// planning another one it would send as well. Found by the crash-loop test: a plate taken
/// home twice.
#[test]
fn a_move_home_already_due_when_a_late_task_finishes_is_kept_not_sent_again() {
    use scheduler::lab::check::validate;
    use scheduler::lab::replan::Event;
    let site = labware::Site::sim().unwrap();
    let p = scheduler::lab::generate::generate(&site, 50, 2, 0.0, 7).unwrap();
    let zero = std::time::Duration::ZERO;
    let mut planner = executor_planner(p);
    let mut checked = 0;
    for run in first_tasks_that_travel(&planner).into_iter().take(3) {
        overrun_first_task(&mut planner, run);
        let end = planner.schedule.tasks[run][0].end;
        let nest = planner.schedule.tasks[run][0].resource.and_then(|r| planner.problem.resources[r].nest);
        let leaving = |planner: &scheduler::lab::replan::Planner| {
            let mut v: Vec<f64> = planner
                .schedule
                .moves
                .iter()
                .filter(|m| m.run == run && Some(m.from) == nest)
                .map(|m| m.start)
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let before = leaving(&planner);
        let due = *before.iter().find(|&&t| t >= end - 1e-6).expect("a move home");
        // Finishes 100 s after the re-planned end: the move home was due before.
        let finished = end + 100.0;
        planner.handle(finished, Event::TaskFinished { run, task: 0, at: finished }, zero).unwrap();
        let broken = validate(&planner.problem, &planner.schedule);
        assert!(broken.is_empty(), "run {run}: {:?}", &broken[..broken.len().min(3)]);
        let after = leaving(&planner);
        assert!(
            after.iter().any(|t| t.to_bits() == due.to_bits()),
            "run {run}: the move home due at {due} was planned again: {after:?}"
        );
        assert_eq!(after.len(), before.len(), "run {run}: no second move home");
        checked += 1;
    }
    assert_eq!(checked, 3, "not enough travelling tasks");
}

/// The executor hears that a task finished after its plate has already left for the next task
/// (which is pinned by then): the plan keeps the real end, not the moment the report arrived.
#[test]
fn a_late_finish_report_does_not_move_the_end_past_what_followed() {
    use scheduler::lab::check::validate;
    use scheduler::lab::replan::Event;
    let site = labware::Site::sim().unwrap();
    let p = scheduler::lab::generate::generate(&site, 50, 2, 0.0, 7).unwrap();
    let zero = std::time::Duration::ZERO;
    let mut planner = executor_planner(p);
    let mut checked = 0;
    for run in first_tasks_that_travel(&planner) {
        if planner.problem.pinned[run][0].is_some() {
            continue; // pinned by an earlier round of this loop
        }
        overrun_first_task(&mut planner, run);
        let end = planner.schedule.tasks[run][0].end;
        // The next task of the same plate, and the first move towards it.
        let plate = planner.problem.runs[run].tasks[0].plates[0];
        let tasks = &planner.problem.runs[run].tasks;
        let Some(next) = (1..tasks.len())
            .filter(|&t| tasks[t].plates.contains(&plate) && planner.problem.pinned[run][t].is_none())
            .min_by(|&a, &b| planner.schedule.tasks[run][a].start.total_cmp(&planner.schedule.tasks[run][b].start))
        else {
            continue;
        };
        let leaves = planner
            .schedule
            .moves
            .iter()
            .filter(|m| m.run == run && m.plate == plate && m.start >= end - 1e-6)
            .map(|m| m.start)
            .fold(f64::INFINITY, f64::min);
        if !leaves.is_finite() || planner.schedule.tasks[run][next].start < leaves {
            continue;
        }
        // It finished 5 s before the plate left; the plate left; the report comes 100 s later.
        planner.pin_task(run, next);
        let report = leaves + 100.0;
        planner.handle(report, Event::TaskFinished { run, task: 0, at: leaves - 5.0 }, zero).unwrap();
        let broken = validate(&planner.problem, &planner.schedule);
        assert!(broken.is_empty(), "run {run}: {:?}", &broken[..broken.len().min(3)]);
        assert!((planner.schedule.tasks[run][0].end - (leaves - 5.0)).abs() < 1e-6);
        checked += 1;
        if checked == 3 {
            break;
        }
    }
    assert!(checked > 0, "no task was followed by a move");
}

/// One arm cannot lower a plate onto a nest while the plate before it is still there: the nest
/// stays taken until the move that lifts its plate off has ended.
#[test]
fn a_nest_stays_taken_until_the_move_away_has_ended() {
    use labware::InstrumentClass;
    use scheduler::lab::check::{validate, LabViolation};
    use scheduler::lab::generate::generate_arm_bound;
    use scheduler::lab::solve::{LabSchedule, MoveSlot, TaskSlot};
    use scheduler::lab::{LabTask, Run};
    let site = labware::Site::sim().unwrap();
    let mut p = generate_arm_bound(&site, 1, 1).unwrap();
    p.runs.clear();
    p.pinned.clear();
    p.anchors.clear();
    for id in ["a", "b"] {
        let seal = LabTask {
            class: Some(InstrumentClass::Sealer),
            duration: 12.0,
            after: vec![],
            plates: vec![0],
            pipettes: vec![],
            settings: Default::default(),
            label: "seal".into(),
            instruments: Vec::new(),
        };
        let run = Run {
            id: id.into(),
            tenant: "t".into(),
            weight: 1.0,
            class: Default::default(),
            release: 0.0,
            plates: vec!["plate".into()],
            tasks: vec![seal],
            max_lags: vec![],
            min_lags: vec![],
        };
        p.add_run(run).unwrap();
    }
    let sealer = p.resources.iter().position(|r| r.class == InstrumentClass::Sealer).unwrap();
    let nest = p.resources[sealer].nest.unwrap();
    let m = p.arms[0].moves[&(p.storage, nest)];
    let mv = |run, from, to, start: f64| MoveSlot { run, plate: 0, arm: 0, from, to, start, end: start + m };
    let task = |start: f64| TaskSlot { resource: Some(sealer), on_arm: false, start, end: start + 12.0 };
    // The arm brings a, then b (arriving as it starts to lift a off), then takes a and b home.
    let swap = LabSchedule {
        tasks: vec![vec![task(m)], vec![task(2.0 * m)]],
        moves: vec![
            mv(0, p.storage, nest, 0.0),
            mv(1, p.storage, nest, m),
            mv(0, nest, p.storage, 2.0 * m),
            mv(1, nest, p.storage, 3.0 * m),
        ],
    };
    let v = validate(&p, &swap);
    assert!(matches!(v.as_slice(), [LabViolation::Capacity { resource, .. }] if *resource == sealer), "{v:?}");
    // The solver's plan takes a off before the arm fetches b.
    let s = p.build(&p.default_order()).unwrap();
    assert_eq!(validate(&p, &s), vec![]);
    let first = s.tasks[0][0].start.min(s.tasks[1][0].start);
    let (x, y) = if s.tasks[0][0].start == first { (0, 1) } else { (1, 0) };
    let away = s.moves.iter().find(|mv| mv.run == x && mv.from == nest).unwrap();
    let back = s.moves.iter().find(|mv| mv.run == y && mv.to == nest).unwrap();
    assert!(back.start >= away.end - 1e-6, "b fetched at {} before a was taken off at {}", back.start, away.end);
}

/// On the shipped site only lh3 carries the 8-channel head the serial dilution is compiled for:
/// the bound divides its work by that one liquid handler, not by the class's three, names it as
/// the bottleneck, and still holds under a real schedule.
#[test]
fn the_bound_counts_which_instruments_can_run_a_task_not_only_its_class() {
    let site = Site::sim().unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../protocols/examples/serial-dilution.yaml");
    let c = compile(
        &SourceFile::new(path, std::fs::read_to_string(path).unwrap()),
        Format::Auto,
        &site,
        &Library::shipped(),
    );
    let plan = c.plan.unwrap();
    let mut p = scheduler::lab::LabProblem::from_site(&site).unwrap();
    for i in 0..12 {
        let run = scheduler::lab::Run::from_plan(
            &format!("r{i}"),
            &format!("t{}", i % 3),
            1.0,
            0.0,
            &plan.scoped(&i.to_string()),
        );
        p.add_run(run).unwrap();
    }
    let bounds: std::collections::BTreeMap<&str, f64> = p.lower_bounds().into_iter().collect();
    let (by_set, by_class) = (bounds["eligible-set load"], bounds["resource load"]);
    assert!(by_set > 2.5 * by_class, "one eligible of three: {by_set} vs {by_class}");
    let (ids, bound) = p.bottleneck_set().unwrap();
    assert_eq!(ids, vec!["lh3".to_string()]);
    assert!((bound - by_set).abs() < 1e-6);
    let s = p.build(&p.default_order()).unwrap();
    assert!(s.makespan() + 1e-6 >= p.lower_bound(), "{} < {}", s.makespan(), p.lower_bound());
}

/// What the compiler accepts, the site can schedule: every Opentrons fixture of the corpus that
/// compiles for the shipped site (its pipettes run as the site's when none carries them by
/// name) is a run some instrument of the site can take.
#[test]
fn every_compiled_corpus_protocol_can_be_scheduled_on_the_site() {
    let site = Site::sim().unwrap();
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/corpus/protocols/opentrons"));
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    let mut stack = vec![dir.join("fixtures"), dir.join("analysis-snapshots")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "protocol.json")
                || p.parent().is_some_and(|d| d.starts_with(dir.join("fixtures")))
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut scheduled = 0;
    for f in &files {
        let c = compile(
            &SourceFile::new(f.display().to_string(), std::fs::read_to_string(f).unwrap()),
            Format::Auto,
            &site,
            &Library::shipped(),
        );
        if c.has_errors() {
            continue;
        }
        let Some(plan) = c.plan else { continue };
        let mut p = scheduler::lab::LabProblem::from_site(&site).unwrap();
        let run = scheduler::lab::Run::from_plan("r", "t", 1.0, 0.0, &plan);
        p.add_run(run).unwrap_or_else(|e| panic!("{}: compiled but cannot be scheduled: {}", f.display(), e.0));
        scheduled += 1;
    }
    assert!(scheduled >= 2, "only {scheduled} of {} fixtures compiled", files.len());
}

/// A lab that grows less sure of its estimates promises its next runs with more margin; the
/// runs it has already promised keep their promise (the executor once re-promised every run at
/// each arrival, moving its word to where the plan then ended).
#[test]
fn a_wider_margin_for_arrivals_leaves_earlier_promises_as_they_were() {
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::{Event, Planner};
    use scheduler::lab::solve::LabBudget;
    let site = labware::Site::sim().unwrap();
    let base = generate(&site, 30, 2, 600.0, 7).unwrap();
    let extra = generate(&site, 40, 3, 1.0, 107).unwrap();
    let budget = LabBudget { time: None, iterations: Some(2) };
    let mut planner = Planner::new(base, budget, 7).unwrap();
    let mut margin = 0.35;
    for (i, run) in extra.runs.into_iter().enumerate() {
        let before: Vec<Option<f64>> = (0..planner.problem.runs.len()).map(|r| planner.promise(r)).collect();
        margin += 0.1;
        planner.set_margin_for_arrivals(margin);
        planner.handle_within(300.0 * (i + 1) as f64, Event::RunArrived(run), budget).unwrap();
        for (r, was) in before.iter().enumerate() {
            assert_eq!(planner.promise(r), *was, "arrival {i} moved run {r}'s promise");
        }
        let new = planner.problem.runs.len() - 1;
        let (release, end) = (planner.problem.runs[new].release, planner.schedule.completion(new));
        let due = planner.promise(new).expect("the arrival is promised");
        assert!(due >= end + margin * (end - release) - 1e-6, "arrival {i}: promised {due}, plan ends {end}");
    }
}

/// Promises are protected: runs arriving one after another on a busy lab, every task taking
/// exactly its estimate, and each run promised exactly its planned end when it arrived (no
/// margin). An arrival may only go where it makes no older promise late, so every run finishes
/// by its promise; and it still arrives somewhere (at the end at worst).
#[test]
fn arrivals_never_make_an_older_promise_late() {
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::Planner;
    use scheduler::lab::solve::LabBudget;
    use scheduler::lab::trace::{drive, Disturbance};
    use scheduler::shop::solve::Rng;
    let site = labware::Site::sim().unwrap();
    for seed in 0..3 {
        let base = generate(&site, 40, 3, 600.0, seed).unwrap();
        let extra = generate(&site, 60, 4, 1.0, seed + 100).unwrap();
        let arrivals: Vec<_> = extra.runs.into_iter().enumerate().map(|(i, r)| (120.0 * (i + 1) as f64, r)).collect();
        let n = base.runs.len() + arrivals.len();
        let mut planner = Planner::new(base, LabBudget { time: None, iterations: Some(3) }, seed).unwrap();
        planner.set_promise_margin(0.0);
        let none = Disturbance::default();
        let stats = drive(
            &mut planner,
            arrivals,
            &none,
            &mut Rng::new(seed),
            true,
            LabBudget { time: None, iterations: Some(3) },
        )
        .unwrap();
        assert!(stats.events > 100);
        assert_eq!(planner.problem.runs.len(), n);
        assert!((0..n).all(|r| planner.promise(r).is_some()), "seed {seed}: every run was promised");
        assert_eq!(planner.late(), Vec::<usize>::new(), "seed {seed}: runs finished after their promise");
    }
}

/// A lab that learns promises with the margin its learning gives: `drive_learning` asks for it
/// at every arrival, from the planner's own margin, and sets it for the arrival: once the lab
/// grows unsure (from the fifth arrival), 50 points wider.
#[test]
fn a_learning_lab_promises_arrivals_with_the_margin_it_learned() {
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::Planner;
    use scheduler::lab::solve::LabBudget;
    use scheduler::lab::trace::{drive_learning, Disturbance, Finished, Learning};
    use scheduler::lab::{LabProblem, Run};
    use scheduler::shop::solve::Rng;
    /// Unsure from the fifth arrival on.
    struct Unsure {
        asked: Vec<f64>,
    }
    impl Learning for Unsure {
        fn finished(&mut self, _: &LabProblem, _: Finished) {}
        fn correct(&mut self, _: usize, _: &mut Run) {}
        fn promise_margin(&mut self, base: f64) -> f64 {
            self.asked.push(base);
            if self.asked.len() >= 5 {
                base + 0.5
            } else {
                base
            }
        }
    }
    let site = labware::Site::sim().unwrap();
    let base = generate(&site, 20, 2, 600.0, 3).unwrap();
    let extra = generate(&site, 40, 3, 1.0, 103).unwrap();
    let arrivals: Vec<_> = extra.runs.into_iter().enumerate().map(|(i, r)| (600.0 * (i + 1) as f64, r)).collect();
    let (first, count) = (base.runs.len(), arrivals.len());
    let budget = LabBudget { time: None, iterations: Some(2) };
    let mut planner = Planner::new(base, budget, 3).unwrap();
    let margin = planner.promise_margin();
    let mut unsure = Unsure { asked: Vec::new() };
    drive_learning(&mut planner, arrivals, &Disturbance::default(), &mut Rng::new(3), true, budget, &mut unsure)
        .unwrap();
    assert_eq!(unsure.asked, vec![margin; count], "asked once per arrival, from the planner's margin");
    assert!((planner.promise_margin() - (margin + 0.5)).abs() < 1e-12);
    // (`a_wider_margin_for_arrivals_leaves_earlier_promises_as_they_were`: the planner promises
    // an arrival with the margin set for arrivals.)
    assert!((first..first + count).all(|r| planner.promise(r).is_some()));
    assert_eq!(planner.late(), Vec::<usize>::new(), "every task took its estimate: every promise kept");
}

/// Runs still waiting are planned with what the lab learned after they came: re-estimated
/// runs (every task twice as long) come out of the next repair with their tasks at the new
/// lengths, whether the arrival goes to its fair place or into the gaps of the plan in force
/// (which would otherwise hold them at their old lengths); tasks already started keep theirs.
#[test]
fn runs_still_waiting_are_planned_with_what_the_lab_learned() {
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::{Event, Planner};
    use scheduler::lab::solve::LabBudget;
    let site = labware::Site::sim().unwrap();
    let budget = LabBudget { time: None, iterations: Some(2) };
    for seed in 0..3 {
        let base = generate(&site, 60, 3, 1.0, seed).unwrap();
        let extra = generate(&site, 30, 2, 1.0, seed + 50).unwrap();
        let mut planner = Planner::new(base, budget, seed).unwrap();
        let mut arrivals = extra.runs.into_iter();
        planner.handle_within(600.0, Event::RunArrived(arrivals.next().unwrap()), budget).unwrap();
        let n = planner.problem.runs.len();
        let begun: Vec<usize> = (0..n).filter(|&r| planner.problem.has_begun(r)).collect();
        let waiting: Vec<usize> = (0..n).filter(|&r| !planner.problem.has_begun(r)).collect();
        assert!(!begun.is_empty() && !waiting.is_empty(), "seed {seed}: {begun:?} {waiting:?}");
        let twice =
            |r: usize, p: &Planner| p.problem.runs[r].tasks.iter().map(|t| 2.0 * t.duration).collect::<Vec<_>>();
        let was: Vec<Vec<f64>> =
            planner.problem.runs.iter().map(|r| r.tasks.iter().map(|t| t.duration).collect()).collect();
        for &r in &waiting {
            let d = twice(r, &planner);
            let any_work = d.iter().any(|&x| x > 0.0);
            assert_eq!(planner.reestimate(r, &d), any_work);
        }
        for &r in &begun {
            let d = twice(r, &planner);
            planner.reestimate(r, &d);
        }
        planner.handle_within(1200.0, Event::RunArrived(arrivals.next().unwrap()), budget).unwrap();
        assert!(scheduler::lab::check::validate(&planner.problem, &planner.schedule).is_empty());
        // Tasks started by now were sent with the estimates of their day and keep them.
        let mut checked = 0;
        for (r, estimates) in was.iter().enumerate() {
            for (t, slot) in planner.schedule.tasks[r].iter().enumerate() {
                if planner.problem.pinned[r][t].is_none() && estimates[t] > 0.0 {
                    let want = 2.0 * estimates[t];
                    let planned = slot.end - slot.start;
                    assert!(planned >= want - 1e-6, "seed {seed}: run {r} task {t} planned {planned} s, not {want} s");
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "seed {seed}: {checked} tasks still waiting");
    }
}

/// Service classes on a busy lab: runs arrive every two minutes, one in three spot and one in
/// six priority. A spot arrival moves no other run's planned end (it takes only capacity nobody
/// uses) and is promised nothing; every promise made is kept (tasks take their estimate, margin
/// 0); spot runs not begun give way, so promised runs finish about as they would with no spot
/// run at all; priority runs wait less, relative to their length, than standard ones.
#[test]
fn spot_fills_idle_capacity_and_moves_no_promise() {
    use labware::ServiceClass;
    use scheduler::lab::generate::generate;
    use scheduler::lab::replan::{Event, Planner};
    use scheduler::lab::solve::LabBudget;
    let site = labware::Site::sim().unwrap();
    let budget = LabBudget { time: None, iterations: Some(3) };
    let class_of = |i: usize| match i % 6 {
        0 | 3 => ServiceClass::Spot,
        5 => ServiceClass::Priority,
        _ => ServiceClass::Standard,
    };
    // Mean turnaround ÷ turnaround alone of the arrivals of each class; `spot`: whether spot
    // arrivals are submitted at all.
    let trace = |seed: u64, spot: bool| {
        let base = generate(&site, 40, 3, 600.0, seed).unwrap();
        let extra = generate(&site, 90, 6, 1.0, seed + 100).unwrap();
        let first = base.runs.len();
        let empty = base.empty_lab();
        let mut planner = Planner::new(base, budget, seed).unwrap();
        planner.set_promise_margin(0.0);
        let mut classes = vec![ServiceClass::Standard; first];
        for (i, mut run) in extra.runs.into_iter().enumerate() {
            let now = 120.0 * (i + 1) as f64;
            run.class = class_of(i);
            if run.class == ServiceClass::Spot && !spot {
                continue;
            }
            classes.push(run.class);
            let before = planner.schedule.completions();
            let promised_before: Vec<_> = (0..before.len()).map(|r| planner.promise(r)).collect();
            planner.handle_within(now, Event::RunArrived(run), budget).unwrap();
            let me = planner.problem.runs.len() - 1;
            let after = planner.schedule.completions();
            assert!(after[me].is_finite(), "seed {seed}: arrival {i} was planned");
            for (r, was) in promised_before.iter().enumerate() {
                assert_eq!(planner.promise(r), *was, "seed {seed}: a promise changed at arrival {i}");
            }
            if classes[me] == ServiceClass::Spot {
                assert_eq!(planner.promise(me), None, "seed {seed}: spot is promised nothing");
                for r in 0..before.len() {
                    assert!(
                        after[r] <= before[r] + 1e-3,
                        "seed {seed}: spot arrival {i} moved run {r}'s end from {} to {}",
                        before[r],
                        after[r]
                    );
                }
            } else {
                assert!(planner.promise(me).is_some(), "seed {seed}: arrival {i} was promised");
            }
        }
        assert_eq!(planner.late(), Vec::<usize>::new(), "seed {seed}: promised runs planned past their promise");
        let ends = planner.schedule.completions();
        let slowdown = |class: ServiceClass| {
            let rs: Vec<usize> = (first..ends.len()).filter(|&r| classes[r] == class).collect();
            let sum: f64 = rs
                .iter()
                .map(|&r| {
                    let run = &planner.problem.runs[r];
                    (ends[r] - run.release) / empty.turnaround_alone(run).max(1.0)
                })
                .sum();
            sum / rs.len().max(1) as f64
        };
        [slowdown(ServiceClass::Priority), slowdown(ServiceClass::Standard), slowdown(ServiceClass::Spot)]
    };
    for seed in 0..3 {
        let [priority, standard, spot] = trace(seed, true);
        let [_, alone, _] = trace(seed, false);
        eprintln!("seed {seed}: priority {priority:.3} standard {standard:.3} spot {spot:.3}; standard without spot {alone:.3}");
        assert!(priority < standard, "seed {seed}: priority slowdown {priority:.2} vs standard {standard:.2}");
        assert!(
            (standard - alone).abs() <= 0.01 * alone,
            "seed {seed}: standard runs' slowdown {standard:.3} with spot runs, {alone:.3} without"
        );
    }
}
