//! What a run's end does to the material world, in the store, once per run and before its final
//! state is written (a failure is tried again with it): what it drew from the tenant's
//! containers by its journal comes off their wells; if it succeeded, what it stores becomes the
//! tenant's (in a storage unit of its condition) and what it discards leaves the inventory; what
//! it used up comes off the lab's stock. The rules are pure, in `held`, `storage` and `stock`.

use crate::store::{ConsumableStock, RunState, Store, StoreError};

/// Records the end of run `run_id` of `tenant` (its plan as submitted, `plan_json`) in the
/// inventory and the stock; the counted consumables it brought to their reorder point.
pub fn run_ended(
    store: &dyn Store,
    run_id: &str,
    tenant: &str,
    plan_json: &str,
    state: RunState,
    site: &labware::Site,
) -> Result<Vec<ConsumableStock>, StoreError> {
    let plan = serde_json::from_str::<protocols::RunPlan>(plan_json)
        .map_err(|e| StoreError::Invalid(format!("the stored plan of {run_id}: {e}")))?;
    let (attempts, prefix) = (store.attempts(run_id)?, crate::store::run_prefix(run_id));
    let lib = labware::Library::shipped();
    for (container, wells) in crate::held::drawn_by_journal(&plan, &attempts, &prefix, site, &lib) {
        store.use_container(run_id, &container, &wells, "labd")?;
    }
    if state == RunState::Succeeded {
        file_away(store, run_id, tenant, &plan, &site.storage)?;
    }
    let used = crate::stock::used_by_run(&plan, &attempts, &prefix);
    let consumed = store.consume(run_id, tenant, &used, &crate::clock::date(crate::store::now_ms()))?;
    if consumed.is_empty() {
        return Ok(Vec::new());
    }
    let counted = store.stock()?.1;
    Ok(crate::stock::to_reorder(&counted)
        .into_iter()
        .filter(|c| consumed.iter().any(|u| u.item == c.load_name))
        .cloned()
        .collect())
}

/// A succeeded run's stored labware becomes the tenant's containers, each in the storage unit
/// of its condition with the most room; the containers it names go to storage or are discarded.
fn file_away(
    store: &dyn Store,
    run_id: &str,
    tenant: &str,
    plan: &protocols::RunPlan,
    units: &[labware::StorageUnit],
) -> Result<(), StoreError> {
    let after = crate::held::after_run(plan, run_id);
    if after.made.is_empty() && after.shelved.is_empty() {
        return Ok(());
    }
    let mut occupied = crate::storage::occupancy(&store.containers(None)?);
    let mut file = |condition: &str| match crate::storage::place(units, condition, 1, &occupied) {
        Ok(unit) => {
            *occupied.entry(unit.clone()).or_default() += 1;
            unit
        }
        Err(why) => {
            // The run is done and its plate exists: it is filed under its condition, and a
            // technician finds it room.
            tracing::warn!(run = %run_id, condition, why = %why, "no storage unit has room for a container");
            condition.to_string()
        }
    };
    for (made, condition) in &after.made {
        store.make_container(run_id, tenant, made, &file(condition))?;
    }
    for (container, condition) in &after.shelved {
        let to = condition.as_deref().map(&mut file);
        store.shelve_container(run_id, container, to.as_deref())?;
    }
    Ok(())
}
