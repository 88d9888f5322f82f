//! Store calls block (SQLite's fsync, a PostgreSQL round trip), so they must not run on one of
//! tokio's async worker threads, where they would stall every task queued behind them.
//!
//! - Async code calls the store through [`call`]: the call runs on tokio's blocking pool.
//! - Whatever still reaches a backend on a worker thread is moved off it there
//!   ([`leave_worker`]): both backends wrap every transaction in it, so a missed call costs a
//!   thread hand-off, never a stalled runtime.

use super::{Result, Store, StoreError};
use std::sync::Arc;

/// Runs `f` on the store from async code, on tokio's blocking pool. A panic inside `f` is
/// resumed here (it is a bug, not an outcome); a call the stopping runtime never ran is a
/// backend error.
pub async fn call<T: Send + 'static>(
    store: &Arc<dyn Store>,
    f: impl FnOnce(&dyn Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&*store)).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StoreError::Backend("labd is stopping; the store call did not run".into())),
    }
}

/// Runs `f`, which may block, where blocking is allowed: as it is outside a runtime and on
/// the blocking pool; on a worker of a multi-threaded runtime in `block_in_place` (the
/// worker's other tasks move to another thread first); on a current-thread runtime, whose
/// only thread must not block, on a scoped thread of its own.
pub(crate) fn leave_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_call_on_the_only_thread_of_a_runtime_does_not_run_there() {
        let runtime_thread = std::thread::current().id();
        let ran_on = leave_worker(|| std::thread::current().id());
        assert_ne!(ran_on, runtime_thread);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_calls_run_on_the_blocking_pool_and_return_the_store_s_answer() {
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::in_memory().unwrap());
        let worker = std::thread::current().id();
        let (tenant, thread) =
            call(&store, |s| Ok((s.create_tenant("acme", 1.0)?, std::thread::current().id()))).await.unwrap();
        assert_ne!(thread, worker);
        assert_eq!(tenant.name, "acme");
        let err = call(&store, |s| s.create_tenant("acme", 1.0)).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    }
}
