//! A run and the material world, in the store. Before it is accepted: whether its containers
//! hold what it draws, the lab's storage has room for what it stores and the shelf has what it
//! uses up, beside every run accepted and not ended yet. When it ends, once per run and before
//! its final state is written (a failure is tried again with it): what it drew from the tenant's
//! containers by its journal comes off their wells; what it stores becomes the tenant's (in a
//! storage unit of its condition) with what its journal put there, even when it failed part
//! way; if it succeeded, what it discards leaves the inventory; what
//! it used up comes off the lab's stock, and the containers it made say which wells of the
//! tenant's containers their wells came from. The rules are pure, in `held`, `lineage`,
//! `storage` and `stock`.

use crate::store::{ConsumableStock, RunState, Store, StoreError};
use protocols::consumables::Consumption;

/// Admits run `new` (its plan `plan`): checked against what is on hand ([`refusal`]) and
/// recorded while the store's admission hold is kept, so that no two submissions — on any node
/// sharing the database — both take the last of something. `Ok(Err(why))`: refused, in words
/// for the tenant.
pub fn admit(
    store: &dyn Store,
    plan: &protocols::RunPlan,
    new: &crate::store::NewRun,
    site: &labware::Site,
) -> Result<Result<(crate::store::Run, bool), String>, StoreError> {
    let _hold = store.hold_admission()?;
    if let Some(why) = refusal(store, plan, &new.tenant_id, &new.idempotency_key, site)? {
        return Ok(Err(why));
    }
    store.submit_run(new).map(Ok)
}

/// Why a new run of `tenant` (idempotency key `key`) cannot be accepted now, worded for the
/// tenant — nothing of another tenant's runs, containers or figures; `None` when it can.
pub fn refusal(
    store: &dyn Store,
    plan: &protocols::RunPlan,
    tenant: &str,
    key: &str,
    site: &labware::Site,
) -> Result<Option<String>, StoreError> {
    let draws = plan.labware.iter().any(|l| !l.drawn.is_empty());
    let stores = crate::storage::outputs_by_condition(plan);
    let need = Consumption::of_plan(plan);
    // Only what the lab counts is checked: most plans need nothing counted, and then no other
    // run's plan is read (that would make every submission cost as much as the queue is long).
    let (lots, counted) = store.stock()?;
    let counts = need.reagents_ul.keys().any(|r| lots.iter().any(|l| &l.reagent == r))
        || need.units.keys().any(|t| counted.iter().any(|c| &c.load_name == t));
    let stores = if site.storage.is_empty() { Default::default() } else { stores };
    if !draws && stores.is_empty() && !counts {
        return Ok(None);
    }
    // Every run accepted and not ended yet, but this very submission again.
    use RunState::*;
    let accepted: Vec<(crate::store::Run, protocols::RunPlan)> = store
        .runs(
            if stores.is_empty() && !counts { Some(tenant) } else { None },
            &[Queued, Running, AwaitingRecovery, Cancelling],
        )?
        .into_iter()
        .filter(|r| !(r.idempotency_key == key && r.tenant_id == tenant))
        .filter_map(|r| serde_json::from_str(&r.plan_json).ok().map(|p| (r, p)))
        .collect();
    if draws {
        let own: Vec<crate::store::Run> =
            accepted.iter().filter(|(r, _)| r.tenant_id == tenant).map(|(r, _)| r.clone()).collect();
        if let Some(why) = crate::held::over_drawn(plan, &own, &store.containers(Some(tenant))?, key) {
            return Ok(Some(why));
        }
    }
    if !stores.is_empty() {
        let occupied = crate::storage::occupancy(&store.containers(None)?);
        let mut later = std::collections::BTreeMap::<String, usize>::new();
        for (_, p) in &accepted {
            for (condition, n) in crate::storage::outputs_by_condition(p) {
                *later.entry(condition).or_default() += n;
            }
        }
        if let Some(why) = crate::storage::no_room(&site.storage, &occupied, &stores, &later) {
            return Ok(Some(why));
        }
    }
    if counts {
        let mut later = Consumption::default();
        for (_, p) in &accepted {
            crate::stock::add(&mut later, &Consumption::of_plan(p));
        }
        let today = crate::clock::date(crate::store::now_ms());
        let short = crate::stock::shortages(&need, &later, &lots, &counted, &today);
        for s in &short {
            tracing::warn!(tenant, item = %s.item, unit = s.unit, need = s.need, accepted = s.accepted, on_hand = s.on_hand, "a run refused for want of stock: restock it");
        }
        if let Some(first) = short.first() {
            return Ok(Some(first.for_tenant()));
        }
    }
    Ok(None)
}

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
    // What the run's labware holds by its journal is kept whether it succeeded or not: a run
    // that failed part way still leaves its plates, and the tenant's material in them.
    // A run that never sent a command never had its labware out of storage: nothing to file.
    if attempts.iter().any(|a| a.outcome.as_deref() == Some("ok")) {
        let traced = crate::lineage::by_journal(&plan, &attempts, &prefix, site, &lib).at_end;
        file_away(store, run_id, tenant, &plan, &traced, state == RunState::Succeeded, &site.storage)?;
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

/// A run's stored labware that holds something becomes the tenant's containers, each in the
/// storage unit of its condition with the most room; the containers it names go to storage, or
/// are discarded when it succeeded.
fn file_away(
    store: &dyn Store,
    run_id: &str,
    tenant: &str,
    plan: &protocols::RunPlan,
    traced: &crate::lineage::Wells,
    succeeded: bool,
    units: &[labware::StorageUnit],
) -> Result<(), StoreError> {
    if !plan.labware.iter().any(|l| l.store.is_some() || l.discard) {
        return Ok(());
    }
    let all = store.containers(None)?;
    let own: Vec<crate::store::Container> = all.iter().filter(|k| k.tenant_id == tenant).cloned().collect();
    let after = crate::held::after_run(plan, run_id, traced, &own, succeeded);
    if after.made.is_empty() && after.shelved.is_empty() {
        return Ok(());
    }
    let mut occupied = crate::storage::occupancy(&all);
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
