//! The lab's stock against its runs: what a run used up by the journal's word, whether what a
//! new run needs is on the shelf beside what the runs already accepted need, and what to
//! reorder. Pure; the API and the executor read the store and act on the answers.

use crate::store::{Attempt, ConsumableStock, ReagentLot};
use protocols::consumables::Consumption;
use protocols::plan::{CommandOp, RunPlan};
use std::collections::BTreeSet;

/// What a run used up, from its plan (as submitted) and its journal: nothing when no command
/// was ever sent (its labware never left storage); else its labware, the reagents poured for
/// it, and the tip racks it took a tip from (`prefix`: the run's names on the instruments).
pub fn used_by_run(plan: &RunPlan, attempts: &[Attempt], prefix: &str) -> Consumption {
    if attempts.is_empty() {
        return Consumption::default();
    }
    let scoped = format!("{prefix}.");
    let touched: BTreeSet<String> = attempts
        .iter()
        .filter(|a| a.outcome.as_deref() == Some("ok"))
        .filter_map(|a| match serde_json::from_str::<CommandOp>(&a.intent.op_json) {
            Ok(CommandOp::PickUpTip { rack, .. }) => Some(rack.strip_prefix(&scoped).unwrap_or(&rack).to_string()),
            _ => None,
        })
        .collect();
    Consumption::of(plan, |rack| touched.contains(rack))
}

/// An item the lab counts that it has too little of for a new run.
#[derive(Debug, Clone, PartialEq)]
pub struct Shortage {
    pub item: String,
    pub unit: &'static str,
    /// What the new run needs, what the runs already accepted need, what is on hand (usable).
    pub need: f64,
    pub accepted: f64,
    pub on_hand: f64,
}

impl Shortage {
    /// For the tenant: what it cannot have, without a word of anyone else's runs.
    pub fn for_tenant(&self) -> String {
        format!(
            "the lab cannot supply {} {} of {} for this run now; the lab has been told to restock it: submit again later",
            trim(self.need),
            self.unit,
            self.item
        )
    }
}

fn trim(v: f64) -> String {
    protocols::units::trim(v)
}

/// What the lab counts and has too little of for `need` on top of `accepted` (what the runs
/// queued or under way will use): reagents in lots unexpired on `today` and counted
/// consumables. Items the lab does not count (no lot, no count) are never short.
pub fn shortages(
    need: &Consumption,
    accepted: &Consumption,
    lots: &[ReagentLot],
    counted: &[ConsumableStock],
    today: &str,
) -> Vec<Shortage> {
    let mut out = Vec::new();
    for (reagent, &ul) in &need.reagents_ul {
        let of_it: Vec<&ReagentLot> = lots.iter().filter(|l| &l.reagent == reagent).collect();
        if of_it.is_empty() {
            continue;
        }
        let usable: f64 = of_it.iter().filter(|l| l.expires_on.as_str() >= today).map(|l| l.volume_ul).sum();
        let before = accepted.reagents_ul.get(reagent).copied().unwrap_or(0.0);
        if before + ul > usable + 1e-6 {
            out.push(Shortage {
                item: reagent.clone(),
                unit: "mL",
                need: ul / 1000.0,
                accepted: before / 1000.0,
                on_hand: usable / 1000.0,
            });
        }
    }
    for (load_name, &n) in &need.units {
        let Some(c) = counted.iter().find(|c| &c.load_name == load_name) else { continue };
        let before = accepted.units.get(load_name).copied().unwrap_or(0);
        if i64::from(before) + i64::from(n) > c.on_hand {
            out.push(Shortage {
                item: load_name.clone(),
                unit: "each",
                need: f64::from(n),
                accepted: f64::from(before),
                on_hand: c.on_hand as f64,
            });
        }
    }
    out
}

/// Adds what `other` uses to `total`.
pub fn add(total: &mut Consumption, other: &Consumption) {
    for (k, n) in &other.units {
        *total.units.entry(k.clone()).or_default() += n;
    }
    for (k, ul) in &other.reagents_ul {
        *total.reagents_ul.entry(k.clone()).or_default() += ul;
    }
}

/// Counted consumables at or below their reorder point.
pub fn to_reorder(counted: &[ConsumableStock]) -> Vec<&ConsumableStock> {
    counted.iter().filter(|c| c.on_hand <= c.reorder_at).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(lot: &str, expires_on: &str, ul: f64) -> ReagentLot {
        ReagentLot {
            reagent: "PBS".into(),
            lot: lot.into(),
            expires_on: expires_on.into(),
            volume_ul: ul,
            received_at: 0,
        }
    }

    fn uses(units: &[(&str, u32)], pbs_ul: f64) -> Consumption {
        Consumption {
            units: units.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            reagents_ul: if pbs_ul > 0.0 { [("PBS".to_string(), pbs_ul)].into() } else { Default::default() },
        }
    }

    #[test]
    fn a_run_is_short_only_of_what_the_lab_counts_counting_the_runs_already_accepted() {
        let lots = [lot("L1", "2027-01-31", 20_000.0), lot("L0", "2026-01-01", 500_000.0)];
        let racks = [ConsumableStock { load_name: "tips".into(), on_hand: 5, reorder_at: 2 }];
        let need = uses(&[("tips", 2), ("plate", 40)], 12_000.0);
        assert!(shortages(&need, &uses(&[("tips", 3)], 8_000.0), &lots, &racks, "2026-12-06").is_empty());
        let short = shortages(&need, &uses(&[("tips", 4)], 9_000.0), &lots, &racks, "2026-12-06");
        let items: Vec<&str> = short.iter().map(|s| s.item.as_str()).collect();
        assert_eq!(items, ["PBS", "tips"], "the expired lot does not count; plates are not counted");
        assert_eq!((short[0].need, short[0].accepted, short[0].on_hand), (12.0, 9.0, 20.0));
        let said = short[0].for_tenant();
        assert!(said.contains("12 mL of PBS") && !said.contains('9') && !said.contains("20"), "{said}");
    }

    #[test]
    fn a_run_that_sent_nothing_used_nothing_and_one_that_did_used_the_racks_it_took_from() {
        let site = labware::Site::sim().unwrap();
        let text = "labwright: 1\nname: t\nliquids: { buffer: { reagent: PBS } }\nlabware:\n  res: { type: nest_12_reservoir_15ml, contents: { A1: { buffer: 10 mL } } }\n  plate: { type: corning_96_wellplate_360ul_flat }\n  tips_a: { type: opentrons_96_tiprack_300ul }\n  tips_b: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: res/A1, to: plate/A1:B1, volume: 50 uL, tips: once }\n";
        let plan = protocols::compile(
            &protocols::SourceFile::new("t.yaml", text),
            protocols::Format::Auto,
            &site,
            &labware::Library::shipped(),
        )
        .plan
        .unwrap();
        assert_eq!(used_by_run(&plan, &[], "r1"), Consumption::default());
        let op = plan.tasks.iter().flat_map(|t| &t.commands).find(|c| matches!(c.op, CommandOp::PickUpTip { .. }));
        let mut picked = op.unwrap().op.clone();
        if let CommandOp::PickUpTip { rack, .. } = &mut picked {
            *rack = format!("r1.{rack}");
        }
        let attempt = Attempt {
            id: "a".into(),
            intent: crate::store::Intent {
                run_id: "run_1".into(),
                task_id: 0,
                command_index: 0,
                instrument: "lh1".into(),
                op_json: serde_json::to_string(&picked).unwrap(),
                repeatable: false,
            },
            outcome: Some("ok".into()),
            error: None,
            intent_at: 0,
            outcome_at: Some(1),
        };
        let used = used_by_run(&plan, &[attempt], "r1");
        assert_eq!(used.units.get("opentrons_96_tiprack_300ul"), Some(&1), "{used:?}");
        assert_eq!(used.units.get("corning_96_wellplate_360ul_flat"), Some(&1));
        assert_eq!(used.reagents_ul.get("PBS"), Some(&10_000.0));
    }
}
