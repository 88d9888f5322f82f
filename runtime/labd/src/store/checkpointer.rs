//! Moves SQLite's checkpoints (copying the write-ahead log back into the database file, with
//! two fsyncs) off the commit path: a thread of the store's own, on a connection of its own,
//! checkpoints a few times a second. Left to SQLite, every thousandth page committed pays for
//! the whole checkpoint inside that commit, and every write queued behind it waits too — the
//! journal's tail under load.
//!
//! A passive checkpoint never blocks a writer; the commit path keeps SQLite's own automatic
//! checkpoint at a larger size as a safety net should this thread fall behind or fail.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// How often the log is copied back.
const EVERY: Duration = Duration::from_millis(1000);

/// Pages in the log past which a commit checkpoints itself (SQLite's default is 1,000).
pub const SAFETY_NET_PAGES: i64 = 20_000;

/// The running checkpointer; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already opened in WAL mode).
    pub fn start(path: &Path) -> std::io::Result<Checkpointer> {
        let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(std::io::Error::other)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || loop {
            match stopped.recv_timeout(EVERY) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(database = %shown, error = %e, "cannot checkpoint the write-ahead log; commits will do it themselves");
                    }
                }
                // Told to stop, or the store is gone.
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        })?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the SQLite checkpoint thread panicked");
            }
        }
    }
}
