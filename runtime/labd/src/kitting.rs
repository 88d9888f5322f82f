//! The technician's pick list for a run, before its first step: each container it names,
//! fetched from storage (thawed first when frozen); each new labware, labelled for the run;
//! each reagent of the lab's, poured from the lots the lab would draw. Every item says where it
//! comes from, where it goes and the barcode that confirms it. Pure: the executor issues the
//! list through the store and waits for the scans.

use crate::store::{Container, PickItem, ReagentLot};
use labware::{LabwareKind, StorageUnit};
use protocols::RunPlan;
use std::collections::BTreeMap;

/// Why no pick list can be made: the run cannot be kitted as things stand.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KitError {
    #[error("labware `{labware}` names container {container}, which is no longer in the inventory")]
    ContainerGone { labware: String, container: String },
    #[error("{reagent}: {short_ul:.0} µL of the {need_ul:.0} µL to pour into `{labware}` is in no lot unexpired on {today}; receive a lot (labctl stock receive)")]
    ReagentShort { reagent: String, labware: String, need_ul: f64, short_ul: f64, today: String },
}

/// The kind of pick item an arm fetches (a plate from an automated store).
pub const RETRIEVAL: &str = "retrieval";

/// Labware of `plan` an arm brings out of an automated store (`containers`: the tenant's, by
/// id): technicians do not fetch them.
pub fn retrieved(plan: &RunPlan, containers: &[Container], units: &[StorageUnit]) -> usize {
    plan.labware
        .iter()
        .filter(|lw| lw.kind == LabwareKind::WellPlate)
        .filter_map(|lw| containers.iter().find(|c| Some(&c.id) == lw.container.as_ref()))
        .filter(|c| crate::storage::automated(units, &c.location))
        .count()
}

/// Minutes a container kept at `condition` thaws before use (frozen only).
pub fn thaw_minutes(condition: Option<&str>) -> i64 {
    match condition {
        Some("-80C") => 60,
        Some("-20C") => 30,
        _ => 0,
    }
}

/// How long (device seconds) a run's material needs after it is fetched before its first task:
/// the longest thaw of the frozen containers it names (`containers`: the tenant's, by id).
pub fn thaw_s(plan: &RunPlan, containers: &[Container], units: &[StorageUnit]) -> f64 {
    plan.labware
        .iter()
        .filter_map(|lw| containers.iter().find(|c| Some(&c.id) == lw.container.as_ref()))
        .map(|c| thaw_minutes(crate::storage::condition_of(units, &c.location).as_deref()) as f64 * 60.0)
        .fold(0.0, f64::max)
}

/// What the run needs, in the order a technician fetches it: containers, new labware, reagents.
/// `containers`: the run's tenant's containers the plan names (by id); `reserved`: µL of each
/// lot other runs' lists will pour (not drawn from the lot until those runs end); `plate_storage`:
/// the nest where a run's plates wait for their first move; `today`: `YYYY-MM-DD`, for lots'
/// expiry.
#[allow(clippy::too_many_arguments)]
pub fn pick_list(
    plan: &RunPlan,
    run_id: &str,
    containers: &[Container],
    lots: &[ReagentLot],
    reserved: &BTreeMap<String, f64>,
    units: &[StorageUnit],
    plate_storage: &str,
    today: &str,
) -> Result<Vec<PickItem>, KitError> {
    let item = |kind: &str, what: String, from: String, to: String, expected: String, thaw_min: i64| PickItem {
        run_id: run_id.to_string(),
        n: 0,
        kind: kind.into(),
        what,
        from,
        to,
        expected,
        thaw_min,
        confirmed_by: None,
        confirmed_at: None,
        volume_ul: 0.0,
    };
    let to = |name: &str, kind: LabwareKind| match kind {
        LabwareKind::WellPlate => plate_storage.to_string(),
        _ => match plan.tasks.iter().find(|t| t.holds.iter().any(|h| h == name)) {
            Some(t) => format!("the deck of the instrument that runs `{}`", t.label),
            None => "the bench".to_string(),
        },
    };
    let mut fetched = Vec::new();
    let mut fresh = Vec::new();
    for lw in &plan.labware {
        match &lw.container {
            Some(id) => {
                let c = containers
                    .iter()
                    .find(|c| &c.id == id)
                    .ok_or_else(|| KitError::ContainerGone { labware: lw.name.clone(), container: id.clone() })?;
                let thaw = thaw_minutes(crate::storage::condition_of(units, &c.location).as_deref());
                // A plate in an automated store is brought out by an arm; anything else, by hand.
                let by_arm = lw.kind == LabwareKind::WellPlate && crate::storage::automated(units, &c.location);
                let (kind, how) = if by_arm { (RETRIEVAL, ", brought out by an arm") } else { ("container", "") };
                let at = c.slot.map(|n| format!(", position {n} of {}", c.location)).unwrap_or_default();
                fetched.push(item(
                    kind,
                    format!("`{}`: container {} ({}){how}{at}", lw.name, c.barcode, c.load_name),
                    c.location.clone(),
                    to(&lw.name, lw.kind),
                    c.barcode.clone(),
                    thaw,
                ));
            }
            None => fresh.push(item(
                "labware",
                format!(
                    "`{}`: a new {}, labelled {}",
                    lw.name,
                    lw.load_name,
                    crate::held::output_barcode(run_id, &lw.name)
                ),
                "consumables".into(),
                to(&lw.name, lw.kind),
                crate::held::output_barcode(run_id, &lw.name),
                0,
            )),
        }
    }
    // Each lab reagent poured into each labware, from the lots the lab would draw, taking from
    // what other runs' lists and this one have not taken yet.
    let mut left: BTreeMap<&str, Vec<(String, String, f64)>> = BTreeMap::new();
    for l in lots {
        let free = (l.volume_ul - reserved.get(&l.lot).copied().unwrap_or(0.0)).max(0.0);
        left.entry(l.reagent.as_str()).or_default().push((l.lot.clone(), l.expires_on.clone(), free));
    }
    let mut poured = Vec::new();
    for lw in &plan.labware {
        let mut by_reagent: BTreeMap<&str, (f64, Vec<&str>)> = BTreeMap::new();
        for (well, mix) in &lw.composition {
            for (liquid, ul) in mix {
                if let Some(reagent) = plan.reagents.get(liquid) {
                    let e = by_reagent.entry(reagent.as_str()).or_default();
                    e.0 += ul;
                    e.1.push(well.as_str());
                }
            }
        }
        for (reagent, (need, wells)) in by_reagent {
            let wells = wells.join(", ");
            let Some(lots) = left.get_mut(reagent) else {
                // A reagent the lab does not count by lot (none ever received): poured from its
                // stock all the same, confirmed by the reagent's name on the bottle.
                poured.push(item(
                    "reagent",
                    format!("{need:.0} µL of {reagent} (no lot recorded) into `{}` wells {wells}", lw.name),
                    format!("{reagent} stock"),
                    format!("`{}`", lw.name),
                    reagent.to_string(),
                    0,
                ));
                continue;
            };
            let taken = crate::store::draw_soonest_first(lots, today, need);
            let got: f64 = taken.iter().map(|(_, ul)| ul).sum();
            if need - got > 1e-6 {
                return Err(KitError::ReagentShort {
                    reagent: reagent.into(),
                    labware: lw.name.clone(),
                    need_ul: need,
                    short_ul: need - got,
                    today: today.into(),
                });
            }
            for (lot, ul) in taken {
                if let Some(l) = lots.iter_mut().find(|l| l.0 == lot) {
                    l.2 -= ul;
                }
                poured.push(PickItem {
                    volume_ul: ul,
                    ..item(
                        "reagent",
                        format!("{ul:.0} µL of {reagent} (lot {lot}) into `{}` wells {wells}", lw.name),
                        format!("{reagent} lot {lot}"),
                        format!("`{}`", lw.name),
                        lot,
                        0,
                    )
                });
            }
        }
    }
    let mut all: Vec<PickItem> = fetched.into_iter().chain(fresh).chain(poured).collect();
    for (n, i) in all.iter_mut().enumerate() {
        i.n = n as i64;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::elisa;

    fn lot(reagent: &str, lot: &str, expires_on: &str, ul: f64) -> ReagentLot {
        ReagentLot {
            reagent: reagent.into(),
            lot: lot.into(),
            expires_on: expires_on.into(),
            volume_ul: ul,
            received_at: 0,
        }
    }

    #[test]
    fn every_labware_is_fetched_or_labelled_and_reagents_come_from_unexpired_lots_soonest_first() {
        let plan = elisa();
        let lots = [
            lot("TMB substrate", "T-OLD", "2026-11-30", 50_000.0),
            lot("TMB substrate", "T-LATE", "2027-06-30", 50_000.0),
            lot("TMB substrate", "T-SOON", "2026-12-31", 4_000.0),
            lot("1 M sulfuric acid", "S1", "2027-01-31", 20_000.0),
        ];
        let list = pick_list(&plan, "run-abc", &[], &lots, &BTreeMap::new(), &[], "hotel", "2026-12-06").unwrap();
        let labware: Vec<&PickItem> = list.iter().filter(|i| i.kind == "labware").collect();
        assert_eq!(labware.len(), plan.labware.len(), "each new labware once: {list:#?}");
        let samples = labware.iter().find(|i| i.what.starts_with("`samples`")).unwrap();
        assert_eq!(samples.to, "hotel", "a plate waits where plates wait");
        assert_eq!(samples.expected, crate::held::output_barcode("run-abc", "samples"));
        let rack = labware.iter().find(|i| i.what.starts_with("`tips_1`")).unwrap();
        assert!(rack.to.starts_with("the deck of the instrument that runs"), "{}", rack.to);
        let poured: Vec<(&str, &str)> =
            list.iter().filter(|i| i.kind == "reagent").map(|i| (i.expected.as_str(), i.what.as_str())).collect();
        assert_eq!(poured.len(), 3, "TMB from two lots, acid from one: {poured:?}");
        assert_eq!(poured[0].0, "S1");
        assert!(
            poured[0].1.starts_with("11000 µL of 1 M sulfuric acid (lot S1) into `reagents` wells A3"),
            "{}",
            poured[0].1
        );
        assert_eq!((poured[1].0, poured[2].0), ("T-SOON", "T-LATE"), "the expired lot is never kitted");
        assert!(poured[1].1.starts_with("4000 µL") && poured[2].1.starts_with("7000 µL"), "{poured:?}");
        let ns: Vec<i64> = list.iter().map(|i| i.n).collect();
        assert_eq!(ns, (0..list.len() as i64).collect::<Vec<_>>());
        let volumes: Vec<f64> = list.iter().filter(|i| i.kind == "reagent").map(|i| i.volume_ul).collect();
        assert_eq!(volumes, [11_000.0, 4_000.0, 7_000.0], "each pour says how much of its lot it takes");
        // Another run's list, not ended yet, has taken 3,000 µL of T-SOON: this one takes the
        // 1,000 left and the rest from T-LATE.
        let reserved = BTreeMap::from([("T-SOON".to_string(), 3_000.0)]);
        let list = pick_list(&plan, "run-abd", &[], &lots, &reserved, &[], "hotel", "2026-12-06").unwrap();
        let tmb: Vec<(&str, f64)> = list
            .iter()
            .filter(|i| i.kind == "reagent" && i.expected.starts_with('T'))
            .map(|i| (i.expected.as_str(), i.volume_ul))
            .collect();
        assert_eq!(tmb, [("T-SOON", 1_000.0), ("T-LATE", 10_000.0)]);
    }

    #[test]
    fn a_reagent_no_unexpired_lot_can_cover_and_a_vanished_container_stop_the_list() {
        let mut plan = elisa();
        let lots = [
            lot("TMB substrate", "T1", "2026-12-01", 50_000.0),
            lot("1 M sulfuric acid", "S1", "2027-01-31", 20_000.0),
        ];
        let uncounted = pick_list(&plan, "r", &[], &lots[1..], &BTreeMap::new(), &[], "hotel", "2026-12-06").unwrap();
        let tmb = uncounted.iter().find(|i| i.what.contains("TMB")).unwrap();
        assert_eq!(
            (tmb.expected.as_str(), tmb.what.as_str()),
            ("TMB substrate", "11000 µL of TMB substrate (no lot recorded) into `reagents` wells A2"),
            "a reagent the lab does not count by lot is poured all the same"
        );
        let e = pick_list(&plan, "r", &[], &lots, &BTreeMap::new(), &[], "hotel", "2026-12-06").unwrap_err();
        assert_eq!(
            e.to_string(),
            "TMB substrate: 11000 µL of the 11000 µL to pour into `reagents` is in no lot unexpired on 2026-12-06; receive a lot (labctl stock receive)"
        );
        plan.labware[0].container = Some("ctr-1".into());
        let ok_lots = [lot("TMB substrate", "T2", "2027-01-01", 50_000.0), lots[1].clone()];
        let e = pick_list(&plan, "r", &[], &ok_lots, &BTreeMap::new(), &[], "hotel", "2026-12-06").unwrap_err();
        assert!(matches!(e, KitError::ContainerGone { .. }), "{e}");
        let frozen = Container {
            id: "ctr-1".into(),
            tenant_id: "t".into(),
            barcode: "ACME-0001".into(),
            load_name: plan.labware[0].load_name.clone(),
            location: "freezer-1".into(),
            created_at: 0,
            slot: Some(7),
            wells: vec![],
            sources: vec![],
        };
        let units = [StorageUnit {
            id: "freezer-1".into(),
            condition: "-80C".into(),
            positions: 10,
            automated: false,
            description: String::new(),
        }];
        let list = pick_list(&plan, "r", &[frozen], &ok_lots, &BTreeMap::new(), &units, "hotel", "2026-12-06").unwrap();
        assert_eq!(
            (list[0].kind.as_str(), list[0].expected.as_str(), list[0].from.as_str(), list[0].thaw_min),
            ("container", "ACME-0001", "freezer-1", 60),
            "containers first, with their thaw time"
        );
        assert!(list[0].what.ends_with("position 7 of freezer-1"), "where to find it: {}", list[0].what);
    }
}
