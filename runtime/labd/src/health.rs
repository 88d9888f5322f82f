//! What labd tells an orchestrator, a load balancer or an operator about itself: *live* (the
//! process answers) and *ready* (it can do its job now: its executor runs and the store takes
//! writes). Instruments are reported but do not make labd unready: work waits for an instrument
//! that is down, and the API stays useful meanwhile.
//!
//! The same truth is served by gRPC Health (`grpc.health.v1`, service "" and the Runs service)
//! and the console's `/readyz`; `/healthz` is liveness only.

use serde::Serialize;
use std::sync::Mutex;
use tokio::sync::watch;

/// labd's parts that readiness depends on, as last seen.
#[derive(Debug)]
pub struct Health {
    state: Mutex<Readiness>,
    ready: watch::Sender<bool>,
}

/// The answer of `/readyz`: lab-level facts only (no run, tenant or instrument names), since
/// probes are not signed in.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    /// `running`, `standby` (several nodes, no cell driven here), or why it is not.
    pub executor: String,
    /// `writable`, or why not.
    pub store: String,
    /// Instruments of the site that are available to the plan, of how many.
    pub instruments_available: usize,
    pub instruments: usize,
    /// Work cells whose lease this node holds and drives (on one node: 1, the whole site); 0
    /// on a standby node.
    pub cells_driven: usize,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::new(Readiness {
                ready: false,
                executor: "starting".into(),
                store: "not checked yet".into(),
                instruments_available: 0,
                instruments: 0,
                cells_driven: 0,
            }),
            ready: watch::channel(false).0,
        }
    }
}

impl Health {
    /// The executor runs.
    pub fn set_executor_running(&self) {
        self.update(|r| r.executor = "running".to_string());
    }

    /// The executor is down, for this reason (it is being restarted).
    pub fn set_executor_down(&self, why: &str) {
        self.update(|r| r.executor = format!("not running: {why}"));
    }

    /// The last write check went through.
    pub fn set_store_writable(&self) {
        self.update(|r| r.store = "writable".to_string());
    }

    /// The last write check failed, for this reason.
    pub fn set_store_not_writable(&self, why: &str) {
        self.update(|r| r.store = format!("not writable: {why}"));
    }

    pub fn set_instruments(&self, available: usize, of: usize) {
        self.update(|r| {
            r.instruments_available = available;
            r.instruments = of;
        });
    }

    pub fn set_cells_driven(&self, n: usize) {
        self.update(|r| r.cells_driven = n);
    }

    pub fn readiness(&self) -> Readiness {
        self.state.lock().map(|r| r.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Changes of the ready flag.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Readiness)) {
        let mut r = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        r.ready = matches!(r.executor.as_str(), "running" | "standby") && r.store == "writable";
        let ready = r.ready;
        drop(r);
        self.ready.send_if_modified(|old| std::mem::replace(old, ready) != ready);
    }
}

/// What [`watch_parts`] looks at.
#[allow(missing_debug_implementations)] // the store is a trait object without Debug
pub struct Parts {
    pub store: std::sync::Arc<dyn crate::store::Store>,
    pub board: std::sync::Arc<crate::board::Board>,
    pub connected: crate::lab::Connected,
    /// The site's instrument and arm ids.
    pub instruments: Vec<String>,
}

/// Checks the store every `every`: a write transaction that makes no change must finish within
/// `within` (a database another process holds locked does not); and the instruments'
/// availability from the board. Runs until `stop`.
pub async fn watch_parts(
    health: std::sync::Arc<Health>,
    parts: Parts,
    every: std::time::Duration,
    within: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Parts { store, board, connected, instruments } = parts;
    let mut pending: Option<tokio::task::JoinHandle<crate::store::Result<()>>> = None;
    loop {
        let mut check = match pending.take() {
            Some(h) => h,
            None => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || store.check_writable())
            }
        };
        match tokio::time::timeout(within, &mut check).await {
            Ok(Ok(Ok(()))) => health.set_store_writable(),
            Ok(Ok(Err(e))) => health.set_store_not_writable(&e.to_string()),
            Ok(Err(e)) => health.set_store_not_writable(&format!("the check stopped: {e}")),
            Err(_) => {
                health.set_store_not_writable(&format!("a write did not finish within {} s", within.as_secs()));
                pending = Some(check); // still waiting: not started twice
            }
        }
        let available = instruments.iter().filter(|id| board.unavailable(id).is_none()).count();
        health.set_instruments(available, instruments.len());
        crate::metrics::with(|m| {
            m.instruments_available.set(available as i64);
            m.instruments.set(instruments.len() as i64);
        });
        health.set_cells_driven(connected.count());
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Mirrors readiness into gRPC Health: SERVING while ready, NOT_SERVING otherwise.
pub async fn report_grpc(health: std::sync::Arc<Health>, reporter: tonic_health::server::HealthReporter) {
    use protos::labwright::v1 as pb;
    use tonic_health::ServingStatus;
    let mut ready = health.subscribe();
    loop {
        let status = if *ready.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
        reporter
            .set_service_status(
                <pb::runs_server::RunsServer<crate::api::Api> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        if ready.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_a_running_executor_and_a_writable_store() {
        let h = Health::default();
        let mut seen = h.subscribe();
        assert!(!h.readiness().ready);
        h.set_executor_running();
        h.set_store_writable();
        assert!(h.readiness().ready);
        assert!(seen.has_changed().unwrap());
        assert!(*seen.borrow_and_update());
        h.set_store_not_writable("database is locked");
        assert_eq!(h.readiness().store, "not writable: database is locked");
        assert!(!*seen.borrow_and_update());
        h.set_store_writable();
        h.set_instruments(3, 9);
        assert!(h.readiness().ready, "instruments down do not make labd unready");
        h.set_executor_down("it panicked");
        assert!(!h.readiness().ready);
    }
}
