//! Work cells and leases: what only one node may do at a time (drive a cell, relay the
//! outbox), held while this node's lease holds and stood by for otherwise, and one term of
//! driving a cell.

use super::*;
use crate::store::offload;

/// Something only one node may do at a time (drive a cell, relay the outbox): done while this
/// node holds its lease, renewed every third of the lease time; stood by for otherwise.
#[derive(Clone)]
pub(super) struct Leased {
    pub(super) store: Arc<dyn Store>,
    /// The lease's name: a cell id, or [`RELAY_LEASE`].
    pub(super) name: String,
    /// How it is called in messages (`cell a`, `telemetry relay`).
    pub(super) what: String,
    pub(super) holder: String,
    pub(super) lease_ms: u64,
}

/// The lease of the one node that publishes the shared outbox.
pub(super) const RELAY_LEASE: &str = "~telemetry-relay";

impl Leased {
    /// Runs `term` for each lease this node gets, until `stop`. A term ends when the lease is
    /// lost (its stop turns true), when asked to stop (then the lease is released, so a
    /// standby need not wait), or by itself (an error: the lease is released and taken again).
    pub(super) async fn keep<F, Fut>(self, mut stop: tokio::sync::watch::Receiver<bool>, mut term: F)
    where
        F: FnMut(crate::store::Lease, tokio::sync::watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ServeError>> + Send + 'static,
    {
        let every = std::time::Duration::from_millis(self.lease_ms / 3);
        let ttl = self.lease_ms as i64;
        let what = &self.what;
        loop {
            let lease = loop {
                if *stop.borrow() {
                    return;
                }
                let (n, h) = (self.name.clone(), self.holder.clone());
                match offload::call(&self.store, move |s| s.acquire_lease(&n, &h, ttl)).await {
                    Ok(Some(l)) => break l,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(lease = %what, error = %e, "cannot read the lease"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
            };
            tracing::info!(lease = %what, node = %self.holder, epoch = lease.epoch, "lease taken; driving it");
            let (term_stop, term_stop_rx) = tokio::sync::watch::channel(false);
            let mut work = tokio::spawn(term(lease.clone(), term_stop_rx));
            let mut current = lease;
            let ended: Option<String> = loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break None,
                    r = &mut work => {
                        let why = match r {
                            Ok(Ok(())) => "it stopped".to_string(),
                            Ok(Err(e)) => e.to_string(),
                            Err(e) => format!("it failed: {e}"),
                        };
                        // A term that ended because its writes were refused lost the lease.
                        let l = current.clone();
                        if let Ok(None) = offload::call(&self.store, move |s| s.renew_lease(&l, ttl)).await {
                            tracing::warn!(lease = %what, epoch = current.epoch, "lost its lease; standing by");
                            break Some("lost".into());
                        }
                        self.release(&current).await;
                        tracing::warn!(lease = %what, why = %why, "released its lease; standing by");
                        tokio::time::sleep(every).await;
                        break Some(why);
                    }
                }
                let l = current.clone();
                match offload::call(&self.store, move |s| s.renew_lease(&l, ttl)).await {
                    Ok(Some(l)) => current = l,
                    Ok(None) => {
                        tracing::warn!(lease = %what, epoch = current.epoch, "lost its lease; standing by");
                        break Some("lost".into());
                    }
                    // The database may be restarting: the store retries; the fence guards writes.
                    Err(e) => tracing::warn!(lease = %what, error = %e, "cannot renew the lease"),
                }
            };
            let _ = term_stop.send(true);
            if !work.is_finished() && tokio::time::timeout(std::time::Duration::from_secs(10), &mut work).await.is_err()
            {
                work.abort();
            }
            if ended.is_none() {
                self.release(&current).await;
                tracing::info!(lease = %what, "released its lease");
                return;
            }
        }
    }

    async fn release(&self, lease: &crate::store::Lease) {
        let l = lease.clone();
        match offload::call(&self.store, move |s| s.release_lease(&l)).await {
            Ok(()) => {}
            // It runs out by itself; a standby waits that long.
            Err(e) => tracing::warn!(lease = %self.what, error = %e, "cannot release the lease; it will run out"),
        }
    }
}

/// One term of driving a cell: connect its instruments, recover what the last holder left in
/// flight, and run the executor through a store fenced by the lease until `stop`.
pub(super) async fn drive_cell(
    env: CellEnv,
    lease: crate::store::Lease,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let cell = lease.cell.clone();
    let scale = TimeScale(env.config.time_scale);
    let (mut lab, _) = connect_lab(&env.site, &env.config, scale).await?;
    lab.keep_bench_in(env.config.data_dir.join(format!("sim-bench-{cell}.json")))?;
    let lab = Arc::new(lab);
    env.connected.add(lab.clone());
    let shown = ShownWhileDriven(env.connected.clone(), lab.clone());
    let kitting = env.config.kitting(lab.has_simulated_technician())?;
    let exec_config =
        ExecutorConfig { scale, cell: Some(cell.clone()), wake: env.wake, kitting, ..ExecutorConfig::default() };
    let executor = Executor::with_board(env.store.fenced(&lease), lab, exec_config, env.board);
    let recovered = executor.recover().await?;
    for run in recovered {
        tracing::warn!(cell = %cell, run = %run, "run interrupted on the last holder; marked failed (see its events)");
    }
    let ran = executor.run(stop).await;
    drop(shown);
    Ok(ran?)
}

/// What a cell's terms need from the node.
#[derive(Clone)]
pub(super) struct CellEnv {
    pub(super) store: Arc<dyn Store>,
    pub(super) site: labware::Site,
    pub(super) config: Config,
    pub(super) board: Arc<crate::board::Board>,
    pub(super) wake: Option<Arc<tokio::sync::Notify>>,
    pub(super) connected: crate::lab::Connected,
}

/// Keeps a cell's instruments in the API's view for as long as this node drives the cell.
struct ShownWhileDriven(crate::lab::Connected, Arc<Lab>);

impl Drop for ShownWhileDriven {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}
