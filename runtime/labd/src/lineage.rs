//! What each well holds and where it came from, by what the executor journaled (not the plan:
//! a run stopped half way moved half): the volume of each liquid, replayed as the compiler's
//! liquid check replays the plan (a draw takes each liquid in proportion; a tip gives what it
//! holds in proportion; blow-out gives all of it), and the lineage — which wells of which of the
//! lab's containers the contents came from, through the pipettes' tips channel by channel, as a
//! set that goes with the liquid (a tip with liquid left in it carries it on into the next well;
//! one emptied carries nothing) — then back through containers earlier runs made to the samples
//! tenants shipped. Pure: the caller reads the journal and the tenant's
//! containers.

use crate::store::{Attempt, Container};
use protocols::plan::CommandOp;
use std::collections::{BTreeMap, BTreeSet};

/// Wells of the lab's containers: (container id, well).
pub type Origins = BTreeSet<(String, String)>;

/// What a well (or a tip) holds, by the journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Held {
    /// Liquid → µL.
    pub liquids: BTreeMap<String, f64>,
    pub origins: Origins,
}

impl Held {
    fn volume(&self) -> f64 {
        self.liquids.values().sum()
    }

    /// Takes `ul` (at most what there is), each liquid in proportion; the origins go along.
    fn take(&mut self, ul: f64) -> Held {
        let have = self.volume();
        let share = if have > 0.0 { (ul / have).min(1.0) } else { 0.0 };
        let mut out = Held { liquids: BTreeMap::new(), origins: self.origins.clone() };
        for (liquid, v) in self.liquids.iter_mut() {
            let moved = *v * share;
            *v -= moved;
            if moved > 0.0 {
                out.liquids.insert(liquid.clone(), moved);
            }
        }
        self.liquids.retain(|_, v| *v > 1e-9);
        // Origins go with the liquid: what is emptied carries nothing on (the film a tip keeps
        // is not counted as a sample).
        if self.liquids.is_empty() {
            self.origins.clear();
        }
        out
    }

    fn give(&mut self, from: Held) {
        for (liquid, v) in from.liquids {
            *self.liquids.entry(liquid).or_default() += v;
        }
        self.origins.extend(from.origins);
    }
}

/// Per labware (its name in the plan), per well.
pub type Wells = BTreeMap<String, BTreeMap<String, Held>>;

/// A run's lineage by its journal.
#[derive(Debug, Default, PartialEq)]
pub struct Lineage {
    /// At each read, the labware read: (task, labware) → well → origins.
    pub at_reads: BTreeMap<(i64, String), BTreeMap<String, Origins>>,
    /// What each well holds when the journal ends (wells that hold nothing left out).
    pub at_end: Wells,
}

/// Replays run `plan`'s journal (`attempts`, labware scoped by `prefix`): every command that
/// went through, in the order it was sent, from what the plan loads onto the deck.
pub fn by_journal(
    plan: &protocols::RunPlan,
    attempts: &[Attempt],
    prefix: &str,
    site: &labware::Site,
    lib: &labware::Library,
) -> Lineage {
    let scoped = format!("{prefix}.");
    let mut wells: Wells = BTreeMap::new();
    for lw in &plan.labware {
        let held = wells.entry(lw.name.clone()).or_default();
        for (well, liquids) in &lw.composition {
            let origins = lw.container.iter().map(|id| (id.clone(), well.clone())).collect();
            held.insert(well.clone(), Held { liquids: liquids.clone(), origins });
        }
    }
    // What each channel's tip carries: (instrument, pipette) → per channel.
    let mut tips: BTreeMap<(String, String), Vec<Held>> = BTreeMap::new();
    let mut read: BTreeMap<(i64, String), BTreeMap<String, Origins>> = BTreeMap::new();
    let mut done: Vec<&Attempt> = attempts.iter().filter(|a| a.outcome.as_deref() == Some("ok")).collect();
    done.sort_by_key(|a| (a.intent_at, a.intent.task_id, a.intent.command_index));
    for a in done {
        let Ok(op) = serde_json::from_str::<CommandOp>(&a.intent.op_json) else { continue };
        let instrument = a.intent.instrument.as_str();
        enum Move {
            Draw(f64),
            Give(Option<f64>),
            Mix,
        }
        let (pipette, labware, well, how) = match op {
            CommandOp::PickUpTip { pipette, .. } | CommandOp::DropTip { pipette } => {
                tips.remove(&(instrument.to_string(), pipette));
                continue;
            }
            CommandOp::Aspirate { pipette, labware, well, volume_ul } => {
                (pipette, labware, well, Move::Draw(volume_ul))
            }
            CommandOp::Dispense { pipette, labware, well, volume_ul } => {
                (pipette, labware, well, Move::Give(Some(volume_ul)))
            }
            CommandOp::BlowOut { pipette, labware, well } => (pipette, labware, well, Move::Give(None)),
            CommandOp::Mix { pipette, labware, well, .. } => (pipette, labware, well, Move::Mix),
            CommandOp::AddReagent { reagent, labware, well, volume_ul } => {
                let name = labware.strip_prefix(&scoped).unwrap_or(&labware).to_string();
                let added = Held { liquids: [(reagent, volume_ul)].into(), origins: Origins::new() };
                wells.entry(name).or_default().entry(well).or_default().give(added);
                continue;
            }
            CommandOp::ReadAbsorbance { labware, wells: w, .. }
            | CommandOp::ReadFluorescence { labware, wells: w, .. }
            | CommandOp::ReadLuminescence { labware, wells: w } => {
                let name = labware.strip_prefix(&scoped).unwrap_or(&labware).to_string();
                let held = wells.get(&name);
                let seen: BTreeMap<String, Origins> = w
                    .iter()
                    .filter_map(|w| {
                        Some((w.clone(), held?.get(w).map(|h| &h.origins).filter(|o| !o.is_empty())?.clone()))
                    })
                    .collect();
                read.insert((a.intent.task_id, name), seen);
                continue;
            }
            _ => continue,
        };
        let Some((lw, reached)) = crate::held::reached(plan, instrument, &pipette, &labware, &well, &scoped, site, lib)
        else {
            continue;
        };
        let tip = tips.entry((instrument.to_string(), pipette)).or_default();
        tip.resize(tip.len().max(reached.len()), Held::default());
        let held = wells.entry(lw.name.clone()).or_default();
        for (channel, w) in reached.into_iter().enumerate() {
            let here = held.entry(w).or_default();
            let tip = &mut tip[channel];
            match how {
                Move::Draw(ul) => tip.give(here.take(ul)),
                Move::Give(Some(ul)) => here.give(tip.take(ul)),
                Move::Give(None) => {
                    let all = tip.volume();
                    here.give(tip.take(all))
                }
                // What a tip mixes in a well it leaves there, and each carries on the other.
                Move::Mix => {
                    tip.origins.extend(here.origins.iter().cloned());
                    here.origins.extend(tip.origins.iter().cloned());
                }
            }
        }
    }
    for held in wells.values_mut() {
        held.retain(|_, h| h.volume() > 1e-9);
    }
    wells.retain(|_, held| !held.is_empty());
    Lineage { at_reads: read, at_end: wells }
}

/// What origins amount to for a tenant: the samples it shipped they came from (through every
/// container a run made between), and the wells as the tenant knows them ("BARCODE/WELL").
/// `containers` are the tenant's own, discarded ones too; an origin not among them (it cannot
/// be another's: a run names only its tenant's) is left out.
pub fn samples_and_wells(origins: &Origins, containers: &[Container]) -> (Vec<String>, Vec<String>) {
    let by_id: BTreeMap<&str, &Container> = containers.iter().map(|k| (k.id.as_str(), k)).collect();
    let mut samples = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(String, String)> = origins.iter().cloned().collect();
    while let Some((id, well)) = todo.pop() {
        if !seen.insert((id.clone(), well.clone())) {
            continue;
        }
        let Some(k) = by_id.get(id.as_str()) else { continue };
        let from: Vec<&crate::store::WellSource> = k.sources.iter().filter(|s| s.well == well).collect();
        if from.is_empty() {
            samples.extend(k.wells.iter().filter(|w| w.well == well).map(|w| w.sample.clone()));
        } else {
            todo.extend(from.into_iter().map(|s| (s.from_container.clone(), s.from_well.clone())));
        }
    }
    let wells = origins
        .iter()
        .filter_map(|(id, well)| by_id.get(id.as_str()).map(|k| format!("{}/{well}", k.barcode)))
        .collect();
    (samples.into_iter().collect(), wells)
}

/// The containers whose contents came, in some part, from container `id` (itself first): those
/// runs made from it, those made from those, and so on (`containers`: the tenant's).
pub fn descendants(id: &str, containers: &[Container]) -> Vec<String> {
    let mut out = vec![id.to_string()];
    let mut i = 0;
    while i < out.len() {
        let of = out[i].clone();
        for c in containers {
            if !out.contains(&c.id) && c.sources.iter().any(|s| s.from_container == of) {
                out.push(c.id.clone());
            }
        }
        i += 1;
    }
    out
}

/// Which of `runs` (id, the containers its plan names) used container `id` or a container made
/// from it: (run id, whether it named `id` itself), in the order given.
pub fn runs_using(id: &str, runs: &[(String, Vec<String>)], containers: &[Container]) -> Vec<(String, bool)> {
    let family = descendants(id, containers);
    runs.iter()
        .filter(|(_, named)| named.iter().any(|n| family.contains(n)))
        .map(|(run, named)| (run.clone(), named.iter().any(|n| n == id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Intent, WellContent, WellSource};

    fn attempt(n: i64, instrument: &str, op: &str, outcome: &str) -> Attempt {
        Attempt {
            id: format!("a{n}"),
            intent: Intent {
                run_id: "run_1".into(),
                task_id: 0,
                command_index: n,
                instrument: instrument.into(),
                op_json: op.into(),
                repeatable: false,
            },
            outcome: Some(outcome.into()),
            error: None,
            intent_at: n,
            outcome_at: Some(n + 1),
        }
    }

    fn container(id: &str, barcode: &str, wells: &[(&str, &str)], sources: &[(&str, &str, &str)]) -> Container {
        Container {
            id: id.into(),
            tenant_id: "ten_a".into(),
            barcode: barcode.into(),
            load_name: "corning_96_wellplate_360ul_flat".into(),
            location: "fridge1".into(),
            created_at: 0,
            slot: None,
            wells: wells
                .iter()
                .map(|(w, s)| WellContent {
                    well: w.to_string(),
                    sample: s.to_string(),
                    liquid: "serum".into(),
                    volume_ul: 50.0,
                })
                .collect(),
            sources: sources
                .iter()
                .map(|(w, c, f)| WellSource {
                    well: w.to_string(),
                    from_container: c.to_string(),
                    from_well: f.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_runs_a_container_went_into_include_those_of_what_was_made_from_it() {
        let shipped = container("con_s", "PL-1", &[("A1", "S-1")], &[]);
        let made = container("con_m", "R1-norm", &[("A1", "")], &[("A1", "con_s", "A1")]);
        let again = container("con_a", "R2-dil", &[("A1", "")], &[("A1", "con_m", "A1")]);
        let other = container("con_o", "PL-2", &[("A1", "S-2")], &[]);
        let all = [shipped, made, again, other];
        assert_eq!(descendants("con_s", &all), ["con_s", "con_m", "con_a"]);
        let runs = [
            ("run_1".to_string(), vec!["con_s".to_string()]),
            ("run_2".to_string(), vec!["con_m".to_string()]),
            ("run_3".to_string(), vec!["con_o".to_string()]),
            ("run_4".to_string(), vec!["con_a".to_string(), "con_s".to_string()]),
        ];
        let used = runs_using("con_s", &runs, &all);
        assert_eq!(
            used,
            [("run_1".to_string(), true), ("run_2".to_string(), false), ("run_4".to_string(), true)],
            "run 3 used an unrelated plate"
        );
    }

    #[test]
    fn a_well_comes_from_the_container_wells_its_tips_carried_into_it() {
        let site = labware::Site::sim().unwrap();
        let lib = labware::Library::shipped();
        let plan = crate::held::tests::plan_drawing_from_con_1(&site, &lib);
        let op = |kind: &str, pipette: &str, labware: &str, well: &str| {
            format!(
                r#"{{"op": "{kind}", "pipette": "{pipette}", "labware": "r1.{labware}", "well": "{well}", "volume_ul": 10}}"#
            )
        };
        let half =
            |kind: &str, labware: &str, well: &str| op(kind, "p300_single", labware, well).replace(": 10}", ": 5}");
        let tip = |kind: &str, pipette: &str| {
            format!(r#"{{"op": "{kind}", "pipette": "{pipette}", "rack": "r1.tips", "well": "A1"}}"#)
        };
        let read = |wells: &str| {
            format!(
                r#"{{"op": "read_absorbance", "labware": "r1.assay", "wells": [{wells}], "wavelengths_nm": [450]}}"#
            )
        };
        let journal = [
            attempt(1, "lh1", &tip("pick_up_tip", "p300_single"), "ok"),
            attempt(2, "lh1", &op("aspirate", "p300_single", "samples", "A1"), "ok"),
            attempt(3, "lh1", &half("dispense", "assay", "A1"), "ok"),
            // The same tip, on, with 5 µL of A1 left in it: what it gives A2 carries A1 too.
            attempt(4, "lh1", &op("aspirate", "p300_single", "samples", "B1"), "ok"),
            attempt(5, "lh1", &op("dispense", "p300_single", "assay", "A2"), "ok"),
            attempt(
                6,
                "lh1",
                &tip("drop_tip", "p300_single").replace(r#", "rack": "r1.tips", "well": "A1""#, ""),
                "ok",
            ),
            attempt(7, "rd1", &read(r#""A1", "A2", "A3""#), "ok"),
            // An 8-channel head takes the column, channel by channel; a failed command moved nothing.
            attempt(8, "lh3", &tip("pick_up_tip", "p300_multi"), "ok"),
            attempt(9, "lh3", &op("aspirate", "p300_multi", "samples", "A1"), "ok"),
            attempt(10, "lh3", &op("dispense", "p300_multi", "assay", "A3"), "ok"),
            attempt(11, "lh1", &op("dispense", "p300_single", "assay", "A4"), "failed"),
        ];
        let l = by_journal(&plan, &journal, "r1", &site, &lib);
        let o =
            |pairs: &[(&str, &str)]| -> Origins { pairs.iter().map(|(c, w)| (c.to_string(), w.to_string())).collect() };
        let at_read = &l.at_reads[&(0, "assay".to_string())];
        assert_eq!(at_read.get("A1"), Some(&o(&[("con_1", "A1")])));
        assert_eq!(at_read.get("A2"), Some(&o(&[("con_1", "A1"), ("con_1", "B1")])), "the tip carried A1 on");
        assert_eq!(at_read.get("A3"), None, "nothing was in A3 when it was read");
        let assay = &l.at_end["assay"];
        let serum = |ul: f64| BTreeMap::from([("serum".to_string(), ul)]);
        assert_eq!(assay["C3"].origins, o(&[("con_1", "C1")]), "channel 3 of 8 went C1 → C3");
        assert_eq!(assay["C3"].liquids, serum(10.0));
        assert_eq!(assay["A1"].liquids, serum(5.0));
        assert_eq!(assay["A2"].liquids, serum(10.0));
        // The 8-channel head emptied its tips into column 3: column 1 carries nothing on.
        assert_eq!(assay.get("A4"), None, "a dispense that failed moved nothing");
        let samples = &l.at_end["samples"];
        assert_eq!(samples["B1"].origins, o(&[("con_1", "B1")]), "drawing from a well adds nothing to it");
        assert_eq!(samples["A1"].liquids, serum(180.0), "200 µL less 10 by lh1 and 10 by lh3's first channel");
        assert_eq!(samples["C1"].liquids, serum(190.0));
        assert_eq!(by_journal(&plan, &[], "r1", &site, &lib).at_end["samples"].len(), 8, "each well its own origin");
    }

    #[test]
    fn origins_lead_back_through_made_containers_to_the_samples_shipped() {
        let shipped = container("con_1", "PL-1", &[("A1", "S-1"), ("B1", "S-2")], &[]);
        // A plate a run made: A1 from both shipped wells (its own name for the mix is not a sample
        // anyone shipped), B1 from nothing of the lab's.
        let made = container(
            "con_2",
            "ab12-out",
            &[("A1", "pool"), ("B1", "buffer")],
            &[("A1", "con_1", "A1"), ("A1", "con_1", "B1")],
        );
        let all = [shipped, made];
        let o =
            |pairs: &[(&str, &str)]| -> Origins { pairs.iter().map(|(c, w)| (c.to_string(), w.to_string())).collect() };
        assert_eq!(
            samples_and_wells(&o(&[("con_2", "A1")]), &all),
            (vec!["S-1".to_string(), "S-2".to_string()], vec!["ab12-out/A1".to_string()])
        );
        assert_eq!(samples_and_wells(&o(&[("con_2", "B1")]), &all).0, ["buffer"]);
        assert_eq!(samples_and_wells(&o(&[("con_9", "A1")]), &all), (vec![], vec![]), "not the tenant's: nothing");
    }
}
