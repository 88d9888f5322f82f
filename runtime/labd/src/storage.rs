//! The lab's storage units (the site's `[[storage]]`) against its containers: where a container
//! goes — a unit of the condition asked for with a free position —, and how many days each
//! container was kept at each condition, for the bill. Pure.

use crate::store::{Container, ContainerEvent, Millis, DISCARDED};
use labware::StorageUnit;
use std::collections::BTreeMap;

const DAY_MS: f64 = 86_400_000.0;

/// Containers per location, discarded ones left out.
pub fn occupancy(containers: &[Container]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for k in containers.iter().filter(|k| k.location != DISCARDED) {
        *out.entry(k.location.clone()).or_default() += 1;
    }
    out
}

/// Where `need` containers asked to go to `asked` together (a shipment goes to one unit) — a
/// storage unit's id or a condition (`4C`) — are put: that unit, or the unit of that condition
/// with the most free positions. A site with no storage units keeps `asked` as the location.
/// `Err` says why nowhere fits.
pub fn place(
    units: &[StorageUnit],
    asked: &str,
    need: usize,
    occupied: &BTreeMap<String, usize>,
) -> Result<String, String> {
    if units.is_empty() {
        return Ok(asked.to_string());
    }
    let free = |u: &StorageUnit| (u.positions as usize).saturating_sub(occupied.get(&u.id).copied().unwrap_or(0));
    if let Some(u) = units.iter().find(|u| u.id == asked) {
        return if free(u) >= need {
            Ok(u.id.clone())
        } else {
            Err(format!("storage unit {} has {} free of {} positions; {need} needed", u.id, free(u), u.positions))
        };
    }
    let of_it: Vec<&StorageUnit> = units.iter().filter(|u| u.condition == asked).collect();
    if of_it.is_empty() {
        let known: Vec<String> = units.iter().map(|u| format!("{} ({})", u.id, u.condition)).collect();
        return Err(format!(
            "`{asked}` is neither a storage unit nor a condition the lab stores at: it has {}",
            known.join(", ")
        ));
    }
    of_it
        .iter()
        .filter(|u| free(u) >= need)
        .max_by_key(|u| (free(u), std::cmp::Reverse(u.id.clone())))
        .map(|u| u.id.clone())
        .ok_or_else(|| {
            let most = of_it.iter().map(|u| free(u)).max().unwrap_or(0);
            format!("no {asked} storage unit has room for {need}: the most free in one is {most}")
        })
}

/// The new containers a plan will store when it succeeds, per condition.
pub fn outputs_by_condition(plan: &protocols::RunPlan) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for lw in plan.labware.iter().filter(|l| l.container.is_none()) {
        if let Some(condition) = &lw.store {
            *out.entry(condition.clone()).or_default() += 1;
        }
    }
    out
}

/// Why the lab has no room for what a new run will store (`need`, per condition) beside what
/// the runs already accepted will store (`accepted`), worded for the tenant: nothing of the
/// other runs. `None` when it fits, or when the site models no storage units.
pub fn no_room(
    units: &[StorageUnit],
    occupied: &BTreeMap<String, usize>,
    need: &BTreeMap<String, usize>,
    accepted: &BTreeMap<String, usize>,
) -> Option<String> {
    if units.is_empty() {
        return None;
    }
    for (condition, &n) in need {
        let free: usize = units
            .iter()
            .filter(|u| &u.condition == condition)
            .map(|u| (u.positions as usize).saturating_sub(occupied.get(&u.id).copied().unwrap_or(0)))
            .sum();
        if accepted.get(condition).copied().unwrap_or(0) + n > free {
            return Some(format!(
                "the lab's {condition} storage has no room now for the {n} container(s) this run stores there: store at another condition, or ask the lab to make room"
            ));
        }
    }
    None
}

/// The storage condition of a location: a unit's, or a condition itself (a site without units);
/// `None` for anywhere else (the receiving bench, an instrument).
pub fn condition_of(units: &[StorageUnit], location: &str) -> Option<String> {
    match units.iter().find(|u| u.id == location) {
        Some(u) => Some(u.condition.clone()),
        None if labware::STORAGE_CONDITIONS.contains(&location) => Some(location.to_string()),
        None => None,
    }
}

/// Whether `location` is an automated store: an arm fetches from it, not a technician.
pub fn automated(units: &[StorageUnit], location: &str) -> bool {
    units.iter().any(|u| u.automated && u.id == location)
}

/// Days a container was kept at each condition between `since` and `now`, from where each
/// entry of its history put it (until the next move, its discarding, or `now`).
pub fn container_days(
    units: &[StorageUnit],
    history: &[ContainerEvent],
    since: Millis,
    now: Millis,
) -> BTreeMap<String, f64> {
    let moves: Vec<(Millis, &str)> = history.iter().filter_map(|h| h.location.as_deref().map(|l| (h.at, l))).collect();
    let mut out = BTreeMap::new();
    for (i, (from, location)) in moves.iter().enumerate() {
        let until = moves.get(i + 1).map_or(now, |m| m.0);
        let (start, end) = ((*from).max(since), until.min(now));
        if end <= start {
            continue;
        }
        if let Some(condition) = condition_of(units, location) {
            *out.entry(condition).or_default() += (end - start) as f64 / DAY_MS;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str, condition: &str, positions: u32) -> StorageUnit {
        StorageUnit {
            id: id.into(),
            condition: condition.into(),
            positions,
            automated: false,
            description: String::new(),
        }
    }

    #[test]
    fn a_container_goes_to_the_emptiest_unit_of_its_condition_and_a_full_one_is_refused() {
        let units = [unit("fridge1", "4C", 2), unit("fridge2", "4C", 3), unit("freezer", "-80C", 1)];
        let occupied: BTreeMap<String, usize> = [("fridge2".to_string(), 2), ("freezer".to_string(), 1)].into();
        assert_eq!(place(&units, "4C", 1, &occupied), Ok("fridge1".into()), "2 free beat 1 free");
        assert_eq!(place(&units, "fridge2", 1, &occupied), Ok("fridge2".into()));
        assert_eq!(
            place(&units, "4C", 3, &occupied),
            Err("no 4C storage unit has room for 3: the most free in one is 2".into())
        );
        assert_eq!(
            place(&units, "freezer", 1, &occupied),
            Err("storage unit freezer has 0 free of 1 positions; 1 needed".into())
        );
        let e = place(&units, "-20C", 1, &occupied).unwrap_err();
        assert!(e.contains("fridge1 (4C)") && e.contains("`-20C`"), "{e}");
        assert_eq!(place(&[], "cold_4", 1, &occupied), Ok("cold_4".into()), "no units: as asked");
    }

    #[test]
    fn a_run_whose_outputs_have_no_room_is_told_so_without_a_word_of_other_runs() {
        let units = [unit("fridge1", "4C", 2), unit("fridge2", "4C", 2)];
        let occupied: BTreeMap<String, usize> = [("fridge1".to_string(), 2), ("fridge2".to_string(), 1)].into();
        let one: BTreeMap<String, usize> = [("4C".to_string(), 1)].into();
        assert_eq!(no_room(&units, &occupied, &one, &BTreeMap::new()), None);
        let said = no_room(&units, &occupied, &one, &one).unwrap();
        assert!(said.starts_with("the lab's 4C storage has no room now for the 1 container(s)"), "{said}");
        let frozen: BTreeMap<String, usize> = [("-80C".to_string(), 1)].into();
        assert!(no_room(&units, &occupied, &frozen, &BTreeMap::new()).is_some(), "no -80C unit at all");
        assert_eq!(no_room(&[], &occupied, &frozen, &BTreeMap::new()), None, "no units modelled");
    }

    #[test]
    fn days_are_counted_per_condition_between_moves_and_within_the_period() {
        let day = DAY_MS as i64;
        let units = [unit("fridge1", "4C", 2), unit("freezer", "-80C", 1)];
        let at = |d: i64, location: Option<&str>| ContainerEvent {
            seq: d,
            at: d * day,
            kind: "k".into(),
            detail: String::new(),
            actor: String::new(),
            location: location.map(String::from),
        };
        let history = [
            at(0, Some("receiving")),
            at(1, Some("fridge1")),
            at(3, None), // used by a run: it did not move
            at(4, Some("freezer")),
            at(10, Some(DISCARDED)),
        ];
        let days = container_days(&units, &history, 0, 20 * day);
        assert_eq!(days, [("-80C".to_string(), 6.0), ("4C".to_string(), 3.0)].into());
        let late = container_days(&units, &history, 2 * day, 5 * day);
        assert_eq!(late, [("-80C".to_string(), 1.0), ("4C".to_string(), 2.0)].into());
    }
}
