//! The containers a tenant holds in the lab, as the compiler asks for them when a protocol names
//! one (`container: PL-0001`): by barcode or id, the tenant's own only, discarded ones not at
//! all; and what a run that succeeded leaves in the inventory (pure).

use crate::store::Container;
use protocols::held::{Held as Answer, Inventory};
use std::collections::HashMap;

/// A tenant's containers, by barcode and by id.
#[derive(Debug, Default)]
pub struct Held {
    by_name: HashMap<String, usize>,
    all: Vec<Container>,
}

impl Held {
    pub fn of(mut all: Vec<Container>) -> Held {
        all.retain(|k| k.location != crate::store::DISCARDED);
        let mut by_name = HashMap::new();
        for (i, k) in all.iter().enumerate() {
            by_name.insert(k.barcode.clone(), i);
            by_name.insert(k.id.clone(), i);
        }
        Held { by_name, all }
    }
}

impl Inventory for Held {
    fn container(&self, barcode_or_id: &str) -> Option<Answer> {
        let k = self.all.get(*self.by_name.get(barcode_or_id)?)?;
        Some(Answer {
            id: k.id.clone(),
            load_name: k.load_name.clone(),
            contents: k.wells.iter().map(|w| (w.well.clone(), w.liquid.clone(), w.volume_ul)).collect(),
        })
    }
}

/// Whether a protocol's text may name a container (the store is read only then).
pub fn names_a_container(source: &[u8]) -> bool {
    source.windows(b"container".len()).any(|w| w == b"container")
}

/// Why a plan draws more from a container than it holds now, counting what every other run of
/// the tenant that will draw or may have drawn from it takes (all but those that ended before
/// they began, those that succeeded — their draws are off the wells already — and a
/// resubmission of the same run, `key`); `None` when it fits.
pub fn over_drawn(
    plan: &protocols::RunPlan,
    runs: &[crate::store::Run],
    containers: &[Container],
    key: &str,
) -> Option<String> {
    use crate::store::RunState;
    let mut committed: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for r in runs {
        let never_began = matches!(r.state, RunState::Failed | RunState::Cancelled) && r.started_at.is_none();
        // A run that succeeded has its draws taken off the container's wells already.
        if never_began || r.state == RunState::Succeeded || r.idempotency_key == key {
            continue;
        }
        let Ok(p) = serde_json::from_str::<protocols::RunPlan>(&r.plan_json) else { continue };
        for lw in &p.labware {
            let Some(c) = &lw.container else { continue };
            for (well, ul) in &lw.drawn {
                *committed.entry((c.clone(), well.clone())).or_default() += ul;
            }
        }
    }
    for lw in &plan.labware {
        let Some(c) = &lw.container else { continue };
        let Some(k) = containers.iter().find(|k| &k.id == c) else { continue };
        for (well, ul) in &lw.drawn {
            let holds: f64 = k.wells.iter().filter(|w| &w.well == well).map(|w| w.volume_ul).sum();
            let taken = committed.get(&(c.clone(), well.clone())).copied().unwrap_or(0.0);
            if taken + ul > holds + 1e-6 {
                let t = protocols::units::trim;
                return Some(format!(
                    "container {} well {well} holds {} µL; runs already accepted draw {} µL from it and this one {} µL; ship more or draw less",
                    k.barcode,
                    t(holds),
                    t(taken),
                    t(*ul)
                ));
            }
        }
    }
    None
}

/// What a run that succeeded leaves in the inventory, by its plan (as submitted).
#[derive(Debug, Default, PartialEq)]
pub struct AfterRun {
    /// New containers of the tenant's (labware the protocol stores), each at its condition.
    pub made: Vec<(crate::store::NewContainer, String)>,
    /// Containers it named that go to storage at a condition, or (`None`) are discarded.
    pub shelved: Vec<(String, Option<String>)>,
}

/// The barcode the lab prints for a container run `run_id` made of its labware `name`.
pub fn output_barcode(run_id: &str, name: &str) -> String {
    format!("{}-{name}", crate::store::run_prefix(run_id))
}

pub fn after_run(plan: &protocols::RunPlan, run_id: &str) -> AfterRun {
    let mut out = AfterRun::default();
    for lw in &plan.labware {
        match (&lw.container, &lw.store, lw.discard) {
            (Some(id), Some(condition), _) => out.shelved.push((id.clone(), Some(condition.clone()))),
            (Some(id), None, true) => out.shelved.push((id.clone(), None)),
            (None, Some(condition), _) => {
                let wells = lw
                    .outputs
                    .iter()
                    .flat_map(|(well, liquids)| {
                        // The plate map's sample name for the well, else the liquid's own.
                        let sample = lw.map.get(well).and_then(|d| d.sample.clone());
                        liquids.iter().map(move |(liquid, ul)| crate::store::WellContent {
                            well: well.clone(),
                            sample: sample.clone().unwrap_or_else(|| liquid.clone()),
                            liquid: liquid.clone(),
                            volume_ul: *ul,
                        })
                    })
                    .collect();
                let made = crate::store::NewContainer {
                    barcode: output_barcode(run_id, &lw.name),
                    load_name: lw.load_name.clone(),
                    wells,
                };
                out.made.push((made, condition.clone()));
            }
            _ => {}
        }
    }
    out
}
