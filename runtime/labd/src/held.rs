//! The containers a tenant holds in the lab, as the compiler asks for them when a protocol names
//! one (`container: PL-0001`): by barcode or id, the tenant's own only, discarded ones not at
//! all; what a run drew from them by its journal, and what a run that succeeded leaves in the
//! inventory (pure).

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

/// Why a plan draws more from a container than it holds now, counting what every run of the
/// tenant not ended yet will draw from it (a run that ended has what it drew taken off the wells
/// already, by its journal) but a resubmission of the same run (`key`); `None` when it fits.
pub fn over_drawn(
    plan: &protocols::RunPlan,
    runs: &[crate::store::Run],
    containers: &[Container],
    key: &str,
) -> Option<String> {
    let mut committed: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for r in runs {
        if r.state.is_final() || r.idempotency_key == key {
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

/// What a run leaves in the inventory: its plan (as submitted) says what is stored and where,
/// its journal what the labware holds.
#[derive(Debug, Default, PartialEq)]
pub struct AfterRun {
    /// New containers of the tenant's (labware the protocol stores that holds something), each
    /// at its condition.
    pub made: Vec<(crate::store::NewContainer, String)>,
    /// Containers it named that go to storage at a condition, or (`None`) are discarded.
    pub shelved: Vec<(String, Option<String>)>,
}

/// The barcode the lab prints for a container run `run_id` made of its labware `name`.
pub fn output_barcode(run_id: &str, name: &str) -> String {
    format!("{}-{name}", crate::store::run_prefix(run_id))
}

/// `traced`: what each well holds and where it came from by the run's journal
/// (`crate::lineage`); `containers`: the tenant's, for the samples those origins lead back to;
/// `succeeded`: whether the run did. A run that did not keeps the containers it named (their
/// contents may be needed to run it again): they are not discarded.
pub fn after_run(
    plan: &protocols::RunPlan,
    run_id: &str,
    traced: &crate::lineage::Wells,
    containers: &[Container],
    succeeded: bool,
) -> AfterRun {
    let mut out = AfterRun::default();
    for lw in &plan.labware {
        match (&lw.container, &lw.store, lw.discard) {
            (Some(id), Some(condition), _) => out.shelved.push((id.clone(), Some(condition.clone()))),
            (Some(id), None, true) if succeeded => out.shelved.push((id.clone(), None)),
            (None, Some(condition), _) => {
                let Some(held) = traced.get(&lw.name) else { continue };
                let mut sources = Vec::new();
                let mut wells = Vec::new();
                for (well, h) in held {
                    // The plate map's sample name for the well, else the samples shipped it
                    // came from, else the liquid's own name.
                    let shipped = crate::lineage::samples_and_wells(&h.origins, containers).0;
                    let sample = lw
                        .map
                        .get(well)
                        .and_then(|d| d.sample.clone())
                        .or_else(|| (!shipped.is_empty()).then(|| shipped.join(", ")));
                    wells.extend(h.liquids.iter().map(|(liquid, ul)| crate::store::WellContent {
                        well: well.clone(),
                        sample: sample.clone().unwrap_or_else(|| liquid.clone()),
                        liquid: liquid.clone(),
                        volume_ul: *ul,
                    }));
                    sources.extend(h.origins.iter().map(|(container, from_well)| crate::store::WellSource {
                        well: well.clone(),
                        from_container: container.clone(),
                        from_well: from_well.clone(),
                    }));
                }
                if wells.is_empty() {
                    continue;
                }
                let made = crate::store::NewContainer {
                    barcode: output_barcode(run_id, &lw.name),
                    load_name: lw.load_name.clone(),
                    wells,
                    sources,
                };
                out.made.push((made, condition.clone()));
            }
            _ => {}
        }
    }
    out
}

/// What a run drew, net, from each well of each container it names (container id → (well, µL)),
/// by its journal: every aspiration that went through, less what was dispensed back, on every
/// well the pipette's channels reached. What the executor did, not what the plan said: a run
/// stopped half way drew half.
pub fn drawn_by_journal(
    plan: &protocols::RunPlan,
    attempts: &[crate::store::Attempt],
    prefix: &str,
    site: &labware::Site,
    lib: &labware::Library,
) -> Vec<(String, Vec<(String, f64)>)> {
    use protocols::plan::CommandOp;
    let scoped = format!("{prefix}.");
    let mut net: std::collections::BTreeMap<(String, String), f64> = Default::default();
    for a in attempts.iter().filter(|a| a.outcome.as_deref() == Some("ok")) {
        let (pipette, labware, well, ul, sign) = match serde_json::from_str::<CommandOp>(&a.intent.op_json) {
            Ok(CommandOp::Aspirate { pipette, labware, well, volume_ul }) => (pipette, labware, well, volume_ul, 1.0),
            Ok(CommandOp::Dispense { pipette, labware, well, volume_ul }) => (pipette, labware, well, volume_ul, -1.0),
            _ => continue,
        };
        let Some((lw, wells)) = reached(plan, &a.intent.instrument, &pipette, &labware, &well, &scoped, site, lib)
        else {
            continue;
        };
        let Some(container) = &lw.container else { continue };
        for w in wells {
            *net.entry((container.clone(), w)).or_default() += sign * ul;
        }
    }
    let mut out: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for ((container, well), ul) in net.into_iter().filter(|(_, ul)| *ul > 1e-9) {
        match out.last_mut() {
            Some((c, wells)) if *c == container => wells.push((well, ul)),
            _ => out.push((container, vec![(well, ul)])),
        }
    }
    out
}

/// The labware of `plan` a journaled pipetting command reached (`labware` as the journal names
/// it, scoped by `scoped`) and its wells, one per channel of the pipette, in channel order
/// (over a trough every channel dips into the same well); `None` for labware the plan does not
/// have or a well it does not know.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reached<'p>(
    plan: &'p protocols::RunPlan,
    instrument: &str,
    pipette: &str,
    labware: &str,
    well: &str,
    scoped: &str,
    site: &labware::Site,
    lib: &labware::Library,
) -> Option<(&'p protocols::plan::PlanLabware, Vec<String>)> {
    let name = labware.strip_prefix(scoped).unwrap_or(labware);
    let lw = plan.labware.iter().find(|l| l.name == name)?;
    let def = plan.labware_def(&lw.load_name, lib)?;
    let channels = site
        .instruments
        .iter()
        .find(|i| i.id == instrument)
        .and_then(|i| i.pipettes.iter().find(|p| p.name == pipette))
        .map_or(1, |p| p.channels);
    let first = def.well_index(well)?;
    let wells = def.head_wells(first, channels).unwrap_or_else(|| vec![first]);
    Some((lw, wells.into_iter().map(|w| def.wells[w].name.clone()).collect()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Attempt, Intent};

    fn attempt(instrument: &str, op: &str, outcome: &str) -> Attempt {
        Attempt {
            id: "a".into(),
            intent: Intent {
                run_id: "run_1".into(),
                task_id: 0,
                command_index: 0,
                instrument: instrument.into(),
                op_json: op.into(),
                repeatable: false,
            },
            outcome: Some(outcome.into()),
            error: None,
            intent_at: 0,
            outcome_at: Some(1),
        }
    }

    /// A plan whose `samples` plate is container `con_1` (A1:H1 hold 200 µL of serum each), and
    /// a plate `assay` to pipette into: what the journal-reading tests replay against.
    pub(crate) fn plan_drawing_from_con_1(site: &labware::Site, lib: &labware::Library) -> protocols::RunPlan {
        let text = "labwright: 1\nname: t\nliquids: { serum: serum }\nlabware:\n  samples: { type: corning_96_wellplate_360ul_flat, contents: { \"A1:H1\": { serum: 200 uL } } }\n  assay: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1, to: assay/A1, volume: 50 uL }\n";
        let mut plan =
            protocols::compile(&protocols::SourceFile::new("t.yaml", text), protocols::Format::Auto, site, lib)
                .plan
                .unwrap();
        plan.labware.iter_mut().find(|l| l.name == "samples").unwrap().container = Some("con_1".into());
        plan
    }

    #[test]
    fn a_run_draws_what_its_journal_says_on_every_well_its_channels_reached() {
        let site = labware::Site::sim().unwrap();
        let lib = labware::Library::shipped();
        let plan = plan_drawing_from_con_1(&site, &lib);
        let op = |kind: &str, pipette: &str, labware: &str, well: &str, ul: f64| {
            format!(
                r#"{{"op": "{kind}", "pipette": "{pipette}", "labware": "r1.{labware}", "well": "{well}", "volume_ul": {ul}}}"#
            )
        };
        let journal = [
            attempt("lh1", &op("aspirate", "p300_single", "samples", "A1", 50.0), "ok"),
            attempt("lh1", &op("dispense", "p300_single", "samples", "A1", 10.0), "ok"), // some put back
            attempt("lh1", &op("aspirate", "p300_single", "samples", "B1", 70.0), "failed"), // never drew
            attempt("lh3", &op("aspirate", "p300_multi", "samples", "A1", 20.0), "ok"),  // A1..H1
            attempt("lh1", &op("aspirate", "p300_single", "assay", "A1", 5.0), "ok"),    // not a container
        ];
        let drawn = drawn_by_journal(&plan, &journal, "r1", &site, &lib);
        assert_eq!(drawn.len(), 1);
        let (container, wells) = &drawn[0];
        assert_eq!(container, "con_1");
        assert_eq!(wells.len(), 8, "{wells:?}");
        assert_eq!(wells[0], ("A1".to_string(), 60.0), "50 − 10 + 20");
        assert!(wells[1..].iter().all(|(w, ul)| w.ends_with('1') && *ul == 20.0), "{wells:?}");
        assert!(drawn_by_journal(&plan, &[], "r1", &site, &lib).is_empty());
    }
}
