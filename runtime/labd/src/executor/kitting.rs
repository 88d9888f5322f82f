//! Before a run's first job, its material is kitted: the pick list ([`crate::kitting`]) is
//! issued once through the store, and the run waits until every item is confirmed by its
//! barcode — by technicians (`labctl kit`, the API), or in a simulated lab by the simulated
//! technician, who scans each expected barcode through the same store call.

use super::failure::JobError;
use super::*;
use crate::store::PickItem;

/// How far a run's kitting has got in this process.
#[derive(Debug, Default)]
pub(super) struct KitGate {
    /// Every item of its pick list confirmed.
    fetched: bool,
    /// And its frozen material thawed.
    thawed: bool,
    /// The tenant told that it thaws (`thawing`), or that nothing does.
    thaw_told: bool,
}

/// Who kits a run's material (`kitting` in labd.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kitting {
    /// The simulated technician confirms each item as it is issued (a simulated lab).
    #[default]
    Simulated,
    /// People do, scanning each item; the run waits for them.
    Technicians,
}

impl Executor {
    /// Issues run `run`'s pick list (once) and waits until every item is confirmed; plates
    /// wait for their first move at `plate_storage`. A run cancelled meanwhile stops here.
    pub(super) async fn kitted(&self, run: &Run, plate_storage: &str) -> Result<(), JobError> {
        self.kit(run, plate_storage, true).await
    }

    /// A kitting task of the run's plan ([`crate::kitting_tasks`]): its items fetched and
    /// scanned, or its frozen material thawed.
    pub(super) async fn kitting_stage(&self, run: &Run, stage: crate::kitting_tasks::Stage) -> Result<(), JobError> {
        let problem = LabProblem::from_site(&self.lab.site).map_err(|e| JobError::Lab(e.0))?;
        let storage = problem.nests.get(problem.storage).map(|n| n.id.clone()).unwrap_or_default();
        self.kit(run, &storage, stage == crate::kitting_tasks::Stage::Thaw).await
    }

    /// Fetches run `run`'s material now (its items, not the thaw), before its first job.
    pub(super) async fn fetch_now(&self, run: &Run, plate_storage: &str) -> Result<(), JobError> {
        self.kit(run, plate_storage, false).await
    }

    /// Kits run `run` once (its items; with `thaw`, the thaw after them too). Concurrent jobs
    /// of the run wait on one lock, so the list is issued and the `kitted` event written once.
    async fn kit(&self, run: &Run, plate_storage: &str, thaw: bool) -> Result<(), JobError> {
        let gate = lock(&self.kitted).entry(run.id.clone()).or_default().clone();
        let mut done = gate.lock().await;
        if done.thawed || (done.fetched && !thaw) {
            return Ok(());
        }
        if !done.fetched {
            self.fetched(run, plate_storage).await?;
            done.fetched = true;
        }
        // The tenant hears of the thaw when it begins: once the material is fetched.
        if !done.thaw_told {
            if let Some((ready_ms, minutes)) = self.thaw_until(run).await? {
                self.event(run, "thawing", serde_json::json!({"minutes": minutes, "until_ms": ready_ms})).await?;
                tracing::info!(run = %run.id, tenant = %run.tenant_id, minutes, "frozen material thawing before the run's first step");
            }
            done.thaw_told = true;
        }
        if thaw {
            self.thawed(run).await?;
            done.thawed = true;
        }
        Ok(())
    }

    /// Issues the run's pick list (once) and waits until every item is confirmed.
    async fn fetched(&self, run: &Run, plate_storage: &str) -> Result<(), JobError> {
        let list = self.issue_pick_list(run, plate_storage).await?;
        let list = self.retrieve(run, list).await?;
        if list.iter().any(|i| i.confirmed_at.is_none()) {
            match self.config.kitting {
                Kitting::Simulated => {
                    // Each expected barcode scanned, the store checking each as it checks a
                    // technician's (one transaction for the lot).
                    let scans: Vec<(i64, String)> =
                        list.iter().filter(|i| i.confirmed_at.is_none()).map(|i| (i.n, i.expected.clone())).collect();
                    let (store, id) = (self.store.clone(), run.id.clone());
                    blocking(move || store.confirm_picks(&id, &scans, "simulated technician"))
                        .await
                        .map_err(JobError::store("confirming the kitted items"))?;
                }
                Kitting::Technicians => self.await_kitting(run).await?,
            }
            self.event(run, "kitted", serde_json::json!({"items": list.len()})).await?;
            tracing::info!(run = %run.id, tenant = %run.tenant_id, items = list.len(), "run kitted");
        }
        Ok(())
    }

    /// Waits until the frozen containers of run `run`'s pick list have thawed: each item's
    /// thaw time (device minutes, at the lab's time scale) from when it was fetched (confirmed).
    /// After a restart only what is left of it.
    async fn thawed(&self, run: &Run) -> Result<(), JobError> {
        let Some((ready_ms, _)) = self.thaw_until(run).await? else { return Ok(()) };
        // A timer is the event here (nothing else says the material has thawed); a run cancelled
        // meanwhile stops waiting.
        let until =
            tokio::time::Instant::now() + Duration::from_millis((ready_ms - crate::store::now_ms()).max(0) as u64);
        let mut written = self.store.written();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                _ = written.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let (store, id) = (self.store.clone(), run.id.clone());
            let state =
                blocking(move || store.run(None, &id)).await.map_err(JobError::store("reading the run's state"))?.state;
            if state == RunState::Cancelling || state.is_final() {
                return Err(JobError::Aborted("the run while its material thawed".into()));
            }
        }
    }

    /// Brings the list's plates out of automated stores on an arm (one that reaches both the
    /// store and where the plate goes; with none, technicians fetch it), each move journaled as a
    /// run's own, and confirms each item in the arm's name. A move that went through before a
    /// restart is not made again. Returns the list as it stands.
    async fn retrieve(&self, run: &Run, list: Vec<PickItem>) -> Result<Vec<PickItem>, JobError> {
        let todo: Vec<PickItem> =
            list.iter().filter(|i| i.kind == crate::kitting::RETRIEVAL && i.confirmed_at.is_none()).cloned().collect();
        if todo.is_empty() {
            return Ok(list); // nothing for an arm: the list as it is, not read again
        }
        let plan: RunPlan = serde_json::from_str(&run.plan_json)
            .map_err(|e| JobError::Lab(format!("the run's stored plan does not read back: {e}")))?;
        let scoped = plan.scoped(&crate::store::run_prefix(&run.id));
        let (store, tenant, id) = (self.store.clone(), run.tenant_id.clone(), run.id.clone());
        let (containers, attempts) = blocking(move || Ok((store.containers(Some(&tenant))?, store.attempts(&id)?)))
            .await
            .map_err(JobError::store("reading the containers to bring out"))?;
        for item in todo {
            // The plate is the labware naming the container with the item's barcode.
            let Some(c) = containers.iter().find(|c| c.barcode == item.expected) else { continue };
            let Some(at) = plan.labware.iter().position(|l| l.container.as_deref() == Some(c.id.as_str())) else {
                continue;
            };
            let plate = scoped.labware[at].name.clone();
            let reaches = |a: &&labware::site::Arm| a.reach.contains(&item.from) && a.reach.contains(&item.to);
            let Some(arm) = self.lab.site.arms.iter().find(reaches) else { continue };
            let moved = attempts.iter().any(|a| {
                a.intent.task_id < 0
                    && a.outcome.as_deref() == Some("ok")
                    && serde_json::from_str::<CommandOp>(&a.intent.op_json)
                        .is_ok_and(|op| op == CommandOp::MoveLabware { labware: plate.clone(), to: item.to.clone() })
            });
            if !moved {
                self.move_plate(run, &scoped, &plate, &item.from, &item.to, &arm.id).await?;
            }
            let (store, id, scan, by) =
                (self.store.clone(), run.id.clone(), vec![(item.n, item.expected.clone())], arm.id.clone());
            blocking(move || store.confirm_picks(&id, &scan, &by))
                .await
                .map_err(JobError::store("confirming the plate the arm brought out"))?;
            tracing::info!(run = %run.id, tenant = %run.tenant_id, instrument = %arm.id, store = %item.from, "plate brought out of an automated store");
        }
        let (store, id) = (self.store.clone(), run.id.clone());
        blocking(move || store.pick_list(&id)).await.map_err(JobError::store("reading the pick list"))
    }

    /// When run `run`'s frozen material will have thawed (each item's thaw time, device minutes
    /// at the lab's time scale, from when it was fetched) and the longest thaw in minutes;
    /// `None` when nothing is still thawing.
    async fn thaw_until(&self, run: &Run) -> Result<Option<(i64, i64)>, JobError> {
        let (store, id) = (self.store.clone(), run.id.clone());
        let list = blocking(move || store.pick_list(&id)).await.map_err(JobError::store("reading the pick list"))?;
        let scale = self.config.scale.0;
        let ready_ms = list
            .iter()
            .filter(|i| i.thaw_min > 0)
            .filter_map(|i| Some(i.confirmed_at? + (i.thaw_min as f64 * 60_000.0 * scale).round() as i64))
            .max();
        let minutes = list.iter().map(|i| i.thaw_min).max().unwrap_or(0);
        Ok(ready_ms.filter(|&t| t > crate::store::now_ms()).map(|t| (t, minutes)))
    }

    /// The run's pick list: the one issued before (a restart), or a new one.
    async fn issue_pick_list(&self, run: &Run, plate_storage: &str) -> Result<Vec<crate::store::PickItem>, JobError> {
        let (store, id) = (self.store.clone(), run.id.clone());
        let had = blocking(move || store.pick_list(&id)).await.map_err(JobError::store("reading the pick list"))?;
        if !had.is_empty() {
            return Ok(had);
        }
        let plan: RunPlan = serde_json::from_str(&run.plan_json)
            .map_err(|e| JobError::Lab(format!("the run's stored plan does not read back: {e}")))?;
        // Only what the list needs: the containers the plan names (one gone is the list's to
        // say), the lots when it pours a reagent of the lab's.
        let (store, tenant) = (self.store.clone(), run.tenant_id.clone());
        let named: Vec<String> = plan.labware.iter().filter_map(|l| l.container.clone()).collect();
        let pours = !plan.reagents.is_empty();
        let run_id = run.id.clone();
        let (containers, lots, reserved) = blocking(move || {
            let mut found = Vec::new();
            for id in &named {
                match store.container(Some(&tenant), id) {
                    Ok(c) => found.push(c),
                    Err(crate::store::StoreError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            // What other runs' lists will pour comes off the lots first: those runs have not
            // ended, so their draws are not off the stock yet.
            let (lots, reserved) = if pours {
                (store.stock()?.0, store.reserved_lots(&run_id)?.into_iter().collect())
            } else {
                (Vec::new(), Default::default())
            };
            Ok((found, lots, reserved))
        })
        .await
        .map_err(JobError::store("reading containers and stock for the pick list"))?;
        let today = crate::clock::date(crate::store::now_ms());
        let items = crate::kitting::pick_list(
            &plan,
            &run.id,
            &containers,
            &lots,
            &reserved,
            &self.lab.site.storage,
            plate_storage,
            &today,
        )
        .map_err(|e| JobError::Lab(format!("the run's material cannot be kitted: {e}")))?;
        let (store, id) = (self.store.clone(), run.id.clone());
        let list = blocking(move || store.issue_pick_list(&id, &items))
            .await
            .map_err(JobError::store("issuing the pick list"))?;
        if !list.is_empty() {
            self.event(run, "pick_list", serde_json::json!({"items": list.len()})).await?;
            tracing::info!(run = %run.id, tenant = %run.tenant_id, items = list.len(), "pick list issued to technicians");
        }
        Ok(list)
    }

    /// Waits for technicians to confirm every item; woken by this node's writes, else each
    /// second (a scan through another node).
    async fn await_kitting(&self, run: &Run) -> Result<(), JobError> {
        let mut written = self.store.written();
        loop {
            let (store, id) = (self.store.clone(), run.id.clone());
            let (list, state) = blocking(move || {
                Ok::<_, crate::store::StoreError>((store.pick_list(&id)?, store.run(None, &id)?.state))
            })
            .await
            .map_err(JobError::store("reading the pick list"))?;
            if list.iter().all(|i| i.confirmed_at.is_some()) {
                return Ok(());
            }
            if state == RunState::Cancelling || state.is_final() {
                return Err(JobError::Aborted("the run before its material was kitted".into()));
            }
            tokio::select! {
                _ = written.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
