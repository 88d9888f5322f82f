//! A seeded generator of lab-shaped instances on the simulated site, for tests and `schedbench`.
//!
//! Runs are drawn from five shapes seen in the example protocols (ELISA, serial dilution, PCR
//! setup, growth curve, normalisation): liquid handling, sealing, incubation, reads with max
//! lags, manual steps, with staggered releases and several tenants.

use super::{LabProblem, LabTask, ModelError, Run};
use crate::shop::solve::Rng;
use labware::{InstrumentClass, Site};
use protocols::plan::Settings;

/// Sizes: roughly 50, 300, 650 and 2,000 tasks.
pub fn size_tasks(size: &str) -> Option<usize> {
    match size {
        "S" => Some(50),
        "M" => Some(300),
        "L" => Some(650),
        "XL" => Some(2000),
        _ => None,
    }
}

fn task(class: Option<InstrumentClass>, duration: f64, after: &[usize], plates: &[usize], label: &str) -> LabTask {
    LabTask {
        class,
        duration,
        after: after.to_vec(),
        plates: plates.to_vec(),
        pipettes: Vec::new(),
        settings: Settings::default(),
        label: label.to_string(),
        instruments: Vec::new(),
    }
}

fn at(mut t: LabTask, temperature_c: f64, shake_rpm: Option<f64>) -> LabTask {
    t.settings = Settings { temperature_c: Some(temperature_c), shake_rpm };
    t
}

/// A random run of one of the five shapes.
fn random_run(rng: &mut Rng, id: usize, tenants: usize, release: f64) -> Run {
    use InstrumentClass::*;
    let jitter = |rng: &mut Rng, base: f64| base * (0.8 + 0.4 * (rng.below(1000) as f64 / 1000.0));
    let (tasks, plates, lags): (Vec<LabTask>, usize, Vec<(usize, usize, f64)>) = match rng.below(5) {
        0 => (
            vec![
                task(Some(LiquidHandler), jitter(rng, 900.0), &[], &[0], "add samples"),
                task(Some(Sealer), 12.0, &[0], &[0], "seal"),
                at(
                    task(Some(Incubator), jitter(rng, 3600.0), &[1], &[0], "incubate"),
                    [37.0, 25.0][rng.below(2)],
                    None,
                ),
                task(Some(Sealer), 15.0, &[2], &[0], "peel"),
                task(Some(LiquidHandler), jitter(rng, 400.0), &[3], &[0], "substrate"),
                task(Some(PlateReader), 50.0, &[4], &[0], "read"),
            ],
            1,
            vec![(4, 5, 300.0)],
        ),
        1 => (
            vec![
                task(Some(LiquidHandler), jitter(rng, 2000.0), &[], &[0], "dilute"),
                task(Some(PlateReader), 25.0, &[0], &[0], "read"),
            ],
            1,
            vec![],
        ),
        2 => (
            vec![
                task(Some(LiquidHandler), jitter(rng, 1100.0), &[], &[0], "pcr setup"),
                task(Some(Sealer), 12.0, &[0], &[0], "seal"),
                task(Some(Centrifuge), 150.0, &[1], &[0], "spin"),
                task(Some(Technician), 120.0, &[2], &[0], "to thermocycler"),
            ],
            1,
            vec![],
        ),
        3 => {
            let mut t = vec![
                task(Some(LiquidHandler), jitter(rng, 600.0), &[], &[0], "inoculate"),
                task(Some(PlateReader), 25.0, &[0], &[0], "read t0"),
            ];
            let reads = 2 + rng.below(4);
            for _ in 0..reads {
                let k = t.len();
                t.push(at(task(Some(Incubator), 1800.0, &[k - 1], &[0], "grow"), 37.0, Some(500.0)));
                t.push(task(Some(PlateReader), 25.0, &[k], &[0], "read"));
            }
            let lags = (0..reads).map(|i| (2 + 2 * i, 3 + 2 * i, 600.0)).collect();
            (t, 1, lags)
        }
        _ => (
            vec![
                task(Some(LiquidHandler), jitter(rng, 330.0), &[], &[0, 1], "normalise"),
                task(Some(Sealer), 12.0, &[0], &[1], "seal"),
                task(None, 300.0, &[1], &[], "wait"),
            ],
            2,
            vec![],
        ),
    };
    Run {
        id: format!("run{id}"),
        tenant: format!("tenant{}", id % tenants.max(1)),
        weight: 1.0 + (id % tenants.max(1)) as f64 * 0.5,
        class: Default::default(),
        release,
        plates: (0..plates).map(|i| format!("plate{i}")).collect(),
        tasks,
        max_lags: lags,
        min_lags: Vec::new(),
    }
}

/// An instance of about `tasks` tasks on `site`: runs released over `spread_s` seconds, for
/// `tenants` tenants.
pub fn generate(site: &Site, tasks: usize, tenants: usize, spread_s: f64, seed: u64) -> Result<LabProblem, ModelError> {
    let mut p = LabProblem::from_site(site)?;
    let mut rng = Rng::new(seed);
    let mut count = 0;
    let mut id = 0;
    while count < tasks {
        let release = (rng.below(1_000_000) as f64 / 1_000_000.0 * spread_s).floor();
        let run = random_run(&mut rng, id, tenants, release);
        count += run.tasks.len();
        p.add_run(run)?;
        id += 1;
    }
    Ok(p)
}

/// An arm-bound instance: one arm serving every nest, and runs of short plate tasks (seal, read,
/// peel), all released at once, so the arm is the bottleneck.
pub fn generate_arm_bound(site: &Site, tasks: usize, seed: u64) -> Result<LabProblem, ModelError> {
    use InstrumentClass::*;
    let mut one_arm = site.clone();
    let mut reach: Vec<String> = Vec::new();
    for a in &one_arm.arms {
        for n in &a.reach {
            if !reach.contains(n) {
                reach.push(n.clone());
            }
        }
    }
    one_arm.arms.truncate(1);
    if let Some(a) = one_arm.arms.first_mut() {
        a.reach = reach;
        a.moves.clear();
    }
    let mut p = LabProblem::from_site(&one_arm)?;
    let mut rng = Rng::new(seed);
    let mut count = 0;
    let mut id = 0;
    while count < tasks {
        let reads = 1 + rng.below(3);
        let mut t = vec![task(Some(Sealer), 12.0, &[], &[0], "seal")];
        for _ in 0..reads {
            let k = t.len();
            t.push(task(Some(PlateReader), 25.0, &[k - 1], &[0], "read"));
        }
        let k = t.len();
        t.push(task(Some(Sealer), 15.0, &[k - 1], &[0], "peel"));
        count += t.len();
        p.add_run(Run {
            id: format!("run{id}"),
            tenant: format!("tenant{}", id % 3),
            weight: 1.0,
            class: Default::default(),
            release: 0.0,
            plates: vec!["plate0".into()],
            tasks: t,
            max_lags: vec![],
            min_lags: Vec::new(),
        })?;
        id += 1;
    }
    Ok(p)
}
