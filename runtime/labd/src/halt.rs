//! A technician's pause or emergency stop of the lab this node drives. Paused: no command is
//! sent (commands under way finish). Emergency stop: also every instrument and arm is told to
//! stop at once (each driver's abort), and every command it cut short waits for a person as an
//! intervention (done, redo or abort) instead of failing its run. Resume lets the work go on.
//! Node-local: it reaches the drivers of this node; on several nodes each is told.

use devices::Instrument;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Whether the lab may send commands.
#[derive(Debug, Clone, PartialEq)]
pub enum Halt {
    Clear,
    Paused { by: String, reason: String },
    Stopped { by: String, reason: String },
}

impl Halt {
    pub fn as_str(&self) -> &'static str {
        match self {
            Halt::Clear => "clear",
            Halt::Paused { .. } => "paused",
            Halt::Stopped { .. } => "stopped",
        }
    }
}

/// The switch the API sets and the executor obeys.
#[derive(Debug)]
pub struct HaltSwitch {
    tx: watch::Sender<Halt>,
}

impl Default for HaltSwitch {
    fn default() -> Self {
        HaltSwitch { tx: watch::channel(Halt::Clear).0 }
    }
}

impl HaltSwitch {
    pub fn get(&self) -> Halt {
        self.tx.borrow().clone()
    }

    pub fn set(&self, halt: Halt) {
        self.tx.send_replace(halt);
    }

    /// Returns once commands may be sent.
    pub async fn wait_clear(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            if *rx.borrow_and_update() == Halt::Clear {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// One driver told to stop: how long its abort took, and why it failed if it did.
#[derive(Debug, Clone)]
pub struct DriverStopped {
    pub id: String,
    pub elapsed: Duration,
    pub error: Option<String>,
}

/// Stops the lab: no new command, then every driver's abort at once (a driver that does not
/// answer within 5 s is reported, not waited for).
pub async fn emergency_stop(
    switch: &HaltSwitch,
    drivers: Vec<(String, Arc<dyn Instrument>)>,
    by: &str,
    reason: &str,
) -> Vec<DriverStopped> {
    switch.set(Halt::Stopped { by: by.into(), reason: reason.into() });
    tracing::warn!(by, reason, drivers = drivers.len(), "emergency stop");
    let asked = Instant::now();
    let mut stopping = tokio::task::JoinSet::new();
    for (id, d) in drivers {
        stopping.spawn(async move {
            let error = match tokio::time::timeout(Duration::from_secs(5), d.abort()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("no answer to the stop within 5 s".into()),
            };
            if let Some(e) = &error {
                tracing::error!(instrument = %id, error = %e, "an instrument did not confirm the emergency stop");
            }
            DriverStopped { id, elapsed: asked.elapsed(), error }
        });
    }
    let mut out = Vec::new();
    while let Some(done) = stopping.join_next().await {
        match done {
            Ok(d) => out.push(d),
            Err(e) => tracing::error!(error = %e, "a driver's stop task ended abnormally"),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_wait_while_paused_and_go_on_when_resumed() {
        let s = Arc::new(HaltSwitch::default());
        s.wait_clear().await;
        s.set(Halt::Paused { by: "tech-1".into(), reason: "spill".into() });
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_clear().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.set(Halt::Clear);
        waiter.await.unwrap();
    }
}
