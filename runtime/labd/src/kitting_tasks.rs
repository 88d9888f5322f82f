//! Kitting as tasks of a run's plan, where people kit (`kitting = "technicians"`): task 0 is a
//! technician's work fetching, labelling and pouring what the run's pick list holds; task 1 is
//! the wait while frozen material thaws. Every task that waited for nothing waits for them, so
//! the scheduler plans the technicians' kitting among their other work, and the thaw after it.
//! The executor stores the plan with them when it first admits the run, so its history, its
//! journal and a restart all count tasks the same way. Pure.

use labware::InstrumentClass;
use protocols::plan::Task;
use protocols::RunPlan;
use std::collections::BTreeSet;

/// A technician's seconds per pick-list item: a container found in storage, scanned and
/// carried; a new labware labelled and placed; a reagent poured into one labware.
pub const FETCH_S: f64 = 90.0;
pub const LABEL_S: f64 = 30.0;
pub const POUR_S: f64 = 120.0;

const KITTING: &str = "kitting";
const THAWING: &str = "thawing";

/// Which part of kitting a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Technicians fetch and scan the pick list's items.
    Kit,
    /// Frozen material thaws.
    Thaw,
}

/// The kitting stage `task` is, if it is one ([`with_kitting`] made it) and has something left
/// to do.
pub fn stage(task: &Task) -> Option<Stage> {
    if !task.commands.is_empty() {
        return None;
    }
    match task.class {
        Some(InstrumentClass::Technician) if task.label.starts_with(KITTING) => Some(Stage::Kit),
        // Nothing to thaw, or thawed before labd restarted (`resume::remainder` zeroes it): a
        // task carried out, as any other.
        None if task.label.starts_with(THAWING) && task.duration_s > 0.0 => Some(Stage::Thaw),
        _ => None,
    }
}

/// Whether `plan` carries its kitting as tasks already.
pub fn has_kitting(plan: &RunPlan) -> bool {
    plan.tasks.first().and_then(stage) == Some(Stage::Kit)
}

/// A technician's time (device seconds) to kit `plan`: its pick list's items, by kind — each
/// labware fetched (a container the tenant keeps here) or labelled (new), each lab reagent
/// poured into each labware that holds it; `retrieved` containers an arm brings out of an
/// automated store are not the technician's to fetch.
pub fn work_s(plan: &RunPlan, retrieved: usize) -> f64 {
    let by_hand: f64 = plan
        .labware
        .iter()
        .map(|lw| {
            let handled = if lw.container.is_some() { FETCH_S } else { LABEL_S };
            let reagents: BTreeSet<&String> =
                lw.composition.values().flat_map(|mix| mix.keys()).filter_map(|l| plan.reagents.get(l)).collect();
            handled + POUR_S * reagents.len() as f64
        })
        .sum();
    (by_hand - FETCH_S * retrieved as f64).max(0.0)
}

/// `plan` with its kitting first: task 0 a technician's [`work_s`] (`retrieved`: containers an
/// arm brings out), task 1 the thaw of what is fetched frozen (`thaw_s`, 0 when nothing is).
/// Every other task moves up two; those that waited for nothing wait for the thaw. A plan that
/// has them already is returned as it is.
pub fn with_kitting(plan: &RunPlan, thaw_s: f64, retrieved: usize) -> RunPlan {
    if has_kitting(plan) {
        return plan.clone();
    }
    let mut out = plan.clone();
    for t in &mut out.tasks {
        t.id += 2;
        t.after = if t.after.is_empty() { vec![1] } else { t.after.iter().map(|a| a + 2).collect() };
    }
    for lag in &mut out.max_lags {
        lag.from += 2;
        lag.to += 2;
    }
    let items = plan.labware.len();
    let kit = Task {
        id: 0,
        class: Some(InstrumentClass::Technician),
        label: format!("{KITTING}: {items} labware from storage and stock, labelled and filled"),
        holds: Vec::new(),
        after: Vec::new(),
        commands: Vec::new(),
        duration_s: work_s(plan, retrieved),
        settings: Default::default(),
        pipettes: Vec::new(),
        instruments: Vec::new(),
        span: Default::default(),
    };
    let thaw = Task {
        id: 1,
        class: None,
        label: format!("{THAWING}: frozen material ({:.0} min)", thaw_s / 60.0),
        after: vec![0],
        duration_s: thaw_s.max(0.0),
        ..kit.clone()
    };
    out.tasks.splice(0..0, [kit, thaw]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::elisa;

    #[test]
    fn kitting_comes_first_and_everything_else_after_the_thaw() {
        let plan = elisa();
        let kitted = with_kitting(&plan, 1800.0, 0);
        assert_eq!(kitted.tasks.len(), plan.tasks.len() + 2);
        assert_eq!((stage(&kitted.tasks[0]), stage(&kitted.tasks[1])), (Some(Stage::Kit), Some(Stage::Thaw)));
        assert_eq!((kitted.tasks[1].after.as_slice(), kitted.tasks[1].duration_s), (&[0][..], 1800.0));
        for (i, (was, now)) in plan.tasks.iter().zip(&kitted.tasks[2..]).enumerate() {
            assert_eq!((now.id as usize, now.label.as_str()), (i + 2, was.label.as_str()));
            let after: Vec<u32> =
                if was.after.is_empty() { vec![1] } else { was.after.iter().map(|a| a + 2).collect() };
            assert_eq!(now.after, after, "task {i}");
            assert_eq!(stage(now), None);
        }
        for (was, now) in plan.max_lags.iter().zip(&kitted.max_lags) {
            assert_eq!((now.from, now.to), (was.from + 2, was.to + 2));
        }
        // Once is enough: a plan stored with its kitting is not kitted again.
        assert_eq!(with_kitting(&kitted, 0.0, 0), kitted);
        // It reads back from the store as it was written.
        let json = serde_json::to_string(&kitted).unwrap();
        assert!(has_kitting(&serde_json::from_str(&json).unwrap()));
    }

    #[test]
    fn the_technicians_time_counts_each_item_of_the_pick_list() {
        let mut plan = elisa();
        plan.reagents.clear();
        let labware = plan.labware.len() as f64;
        assert_eq!(work_s(&plan, 0), labware * LABEL_S, "all new labware, no lab reagent");
        // One labware names a container the tenant keeps here; one holds a lab reagent.
        plan.labware[0].container = Some("con_1".into());
        let liquid = plan
            .labware
            .iter()
            .find_map(|lw| lw.composition.values().flat_map(|m| m.keys()).next().cloned())
            .expect("the ELISA starts with a liquid somewhere");
        plan.reagents.insert(liquid.clone(), "PBS".into());
        let pours = plan.labware.iter().filter(|lw| lw.composition.values().any(|m| m.contains_key(&liquid))).count();
        let want = (labware - 1.0) * LABEL_S + FETCH_S + pours as f64 * POUR_S;
        assert_eq!(work_s(&plan, 0), want);
        // The container in an automated store: the arm brings it out, the technician does not.
        assert_eq!(work_s(&plan, 1), want - FETCH_S);
    }
}
