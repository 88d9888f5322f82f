//! Drivers: each turns plan commands into its family's wire protocol over a [`crate::link::Link`]
//! (or a SiLA channel) and implements [`crate::Instrument`].

pub mod arm;
pub mod liquid;
pub mod module;
pub mod reader;
pub mod station;

use crate::error::InstrumentError;
use crate::instrument::{Execution, ExecutionSender, Outcome};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Abort signal shared by a driver and its running command.
#[derive(Debug, Default)]
pub struct Cancel {
    set: AtomicBool,
    notify: Notify,
}

impl Cancel {
    /// Requests the running command to stop.
    pub fn fire(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Clears the flag before a new command starts.
    pub fn reset(&self) {
        self.set.store(false, Ordering::SeqCst);
    }

    /// `Err(Cancelled)` once fired: checked between wire exchanges.
    pub fn check(&self) -> Result<(), InstrumentError> {
        if self.set.load(Ordering::SeqCst) {
            Err(InstrumentError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Sleeps, waking early (with `Cancelled`) on abort.
    pub async fn sleep(&self, d: Duration) -> Result<(), InstrumentError> {
        let notified = self.notify.notified();
        self.check()?;
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = notified => Err(InstrumentError::Cancelled),
        }
    }
}

/// Runs `work` as a background task and returns the execution handle for it.
pub fn spawn<F>(work: impl FnOnce(Arc<ExecutionSender>) -> F) -> Execution
where
    F: Future<Output = Result<Outcome, InstrumentError>> + Send + 'static,
{
    let (tx, exec) = Execution::channel();
    let tx = Arc::new(tx);
    let fut = work(tx.clone());
    tokio::spawn(async move {
        let result = fut.await;
        if let Ok(tx) = Arc::try_unwrap(tx) {
            tx.finish(result);
        }
    });
    exec
}
