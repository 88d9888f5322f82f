//! After a failed or aborted task the instrument is put back in a known safe state (its driver's
//! [`Instrument::make_safe`]), so one tenant's failure does not become the next tenant's. Where
//! that fails, the instrument *needs attention*: it goes out of service like an instrument in
//! maintenance (the plan moves work off it, or the work waits), and a technician intervention
//! says what to check. Resolving that intervention puts the instrument back in service.
//!
//! What other tenants can see (the instrument's status, the board) says only "needs attention
//! after a failed task": the driver's finding, which may name the failed run's labware, goes to
//! the intervention, which only that run's tenant and the lab's staff read.

use super::{blocking, Executor, ExecutorError};
use crate::store::{Maintenance, Run};
use devices::Instrument;
use std::time::Duration;

/// The maintenance reason of an instrument the executor took out of service.
pub const NEEDS_ATTENTION: &str = "needs attention after a failed task";

/// `set_by` of such a flag: the intervention that brings the instrument back.
const BY_PREFIX: &str = "labd:";

/// An audit entry of the runtime's own (actor `labd`).
fn audit(action: &str, instrument: &str, reason: &str, detail: String) -> crate::store::NewAudit {
    crate::store::NewAudit {
        actor: "labd".into(),
        action: action.into(),
        subject: instrument.into(),
        reason: reason.into(),
        detail,
    }
}

/// How long putting an instrument back in a safe state may take (wall time).
const SAFE_WITHIN: Duration = Duration::from_secs(120);

impl Executor {
    /// Puts `instrument` back in a safe state after `run`'s task on it failed; where that fails,
    /// takes it out of service before the next task can reach it (the caller still holds the
    /// instrument's interlock, and jobs bound for it wait while the board shows it unavailable).
    pub(super) async fn make_safe(&self, run: &Run, instrument: &str, driver: &dyn Instrument) {
        let finding = match tokio::time::timeout(SAFE_WITHIN, driver.make_safe()).await {
            Ok(Ok(did)) => {
                tracing::info!(run = %run.id, tenant = %run.tenant_id, instrument, did = %did, "instrument back in a safe state after a failed task");
                let payload = serde_json::json!({"instrument": instrument, "did": did});
                if let Err(e) = self.event(run, "instrument_safe", payload).await {
                    tracing::error!(run = %run.id, instrument, error = %e, "the instrument is safe, but its run's history does not say so");
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", SAFE_WITHIN.as_secs()),
        };
        tracing::warn!(run = %run.id, tenant = %run.tenant_id, instrument, finding = %finding, "instrument needs attention");
        self.board.set_unavailable(instrument, Some(format!("maintenance: {NEEDS_ATTENTION}")));
        let (store, run_id, id) = (self.store.clone(), run.id.clone(), instrument.to_string());
        let todo = format!(
            "After a failed task {id} could not be put back in a safe state: {finding}. Check it (tips on the \
             head, a plate in the gripper or inside, the door, set points), clear what you find, then resolve \
             this as done to put {id} back in service."
        );
        let flagged = blocking(move || {
            let i = store.open_intervention(&run_id, None, Some(&id), &format!("{id} needs attention"), &todo)?;
            store.set_maintenance(&id, Some((NEEDS_ATTENTION, &format!("{BY_PREFIX}{}", i.id))))?;
            store.record_audit(&audit("maintenance_on", &id, NEEDS_ATTENTION, format!("intervention {}", i.id)))
        })
        .await;
        if let Err(e) = flagged {
            // The board keeps it out of this node's plan; the store did not hear of it.
            tracing::error!(instrument, error = %e, "cannot record that the instrument needs attention");
        }
    }

    /// Instruments taken out of service by [`Executor::make_safe`] whose intervention a
    /// technician has resolved: back in service. Returns the flags that remain.
    pub(super) async fn release_attended(&self, flagged: Vec<Maintenance>) -> Result<Vec<Maintenance>, ExecutorError> {
        if !flagged.iter().any(|m| m.set_by.starts_with(BY_PREFIX)) {
            return Ok(flagged);
        }
        let store = self.store.clone();
        let open: Vec<String> =
            blocking(move || store.interventions(None, true)).await?.into_iter().map(|i| i.id).collect();
        let mut kept = Vec::new();
        for m in flagged {
            match m.set_by.strip_prefix(BY_PREFIX) {
                Some(i) if !open.iter().any(|o| o == i) => {
                    let (store, id, why) =
                        (self.store.clone(), m.instrument.clone(), format!("intervention {i} resolved"));
                    blocking(move || {
                        store.set_maintenance(&id, None)?;
                        store.record_audit(&audit("maintenance_off", &id, "", why))
                    })
                    .await?;
                    tracing::info!(instrument = %m.instrument, intervention = i, "a technician checked the instrument; back in service");
                }
                _ => kept.push(m),
            }
        }
        Ok(kept)
    }
}
