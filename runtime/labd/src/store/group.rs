//! Group commit for the journal: when many instruments record their commands at once, one
//! transaction commits all the writes that queued while the previous one was committing.
//!
//! The first writer to arrive while no commit is under way leads: it takes everything queued
//! (itself included), commits it in one transaction and hands each writer its own result. A
//! writer that arrives meanwhile waits for the next leader, so an idle journal adds no delay and
//! a busy one pays one fsync per batch instead of one per command. Every writer returns only
//! after its own write is durable: a command never leaves before its intent is on disk.
//!
//! If a batch fails (one write in it conflicts, the database refuses), each of its writes is
//! tried again in a transaction of its own, so one bad write never fails another's.

use super::{Result, StoreError};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Commits the given writes in one transaction (all or none).
pub type Apply<'a, W> = &'a dyn Fn(&mut [W]) -> Result<()>;

struct Queue<W> {
    waiting: Vec<(u64, W)>,
    finished: HashMap<u64, Result<()>>,
    leading: bool,
    next: u64,
}

pub struct GroupCommit<W> {
    queue: Mutex<Queue<W>>,
    turn: Condvar,
}

impl<W> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

impl<W> Default for GroupCommit<W> {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::new(Queue { waiting: Vec::new(), finished: HashMap::new(), leading: false, next: 0 }),
            turn: Condvar::new(),
        }
    }
}

impl<W> GroupCommit<W> {
    fn lock(&self) -> Result<MutexGuard<'_, Queue<W>>> {
        self.queue.lock().map_err(|_| StoreError::Backend("the journal's commit queue is poisoned".into()))
    }

    /// Commits `write` (with whatever else is queued) through `apply`; returns once `write` is
    /// committed or has failed.
    pub fn commit(&self, write: W, apply: Apply<'_, W>) -> Result<()> {
        let mut q = self.lock()?;
        let me = q.next;
        q.next += 1;
        q.waiting.push((me, write));
        loop {
            if let Some(done) = q.finished.remove(&me) {
                return done;
            }
            if q.leading {
                q = self
                    .turn
                    .wait(q)
                    .map_err(|_| StoreError::Backend("the journal's commit queue is poisoned".into()))?;
                continue;
            }
            q.leading = true;
            let mut batch = std::mem::take(&mut q.waiting);
            drop(q);
            let results = run(&mut batch, apply);
            q = self.lock()?;
            q.finished.extend(results);
            q.leading = false;
            self.turn.notify_all();
        }
    }
}

/// Runs a batch in one transaction; if that fails, each write alone.
fn run<W>(batch: &mut Vec<(u64, W)>, apply: Apply<'_, W>) -> Vec<(u64, Result<()>)> {
    let (ids, mut writes): (Vec<u64>, Vec<W>) = std::mem::take(batch).into_iter().unzip();
    if writes.len() > 1 && apply(&mut writes).is_ok() {
        return ids.into_iter().map(|id| (id, Ok(()))).collect();
    }
    ids.into_iter().zip(writes.iter_mut()).map(|(id, w)| (id, apply(std::slice::from_mut(w)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A fake database: a transaction appends its writes to the log when it commits.
    #[derive(Default)]
    struct Fake {
        log: Mutex<Vec<Vec<u32>>>,
    }

    type Write = Box<dyn FnMut(&mut Vec<u32>) -> Result<()> + Send>;

    impl Fake {
        fn tx(&self, writes: &mut [Write]) -> Result<()> {
            let mut pending = Vec::new();
            writes.iter_mut().try_for_each(|w| w(&mut pending))?;
            std::thread::sleep(std::time::Duration::from_millis(2)); // the fsync
            self.log.lock().unwrap().push(pending);
            Ok(())
        }
    }

    #[test]
    fn concurrent_writes_share_commits_and_each_is_committed_once() {
        let db = Arc::new(Fake::default());
        let group: Arc<GroupCommit<Write>> = Arc::new(GroupCommit::default());
        let threads: Vec<_> = (0..16u32)
            .map(|t| {
                let (db, group) = (db.clone(), group.clone());
                std::thread::spawn(move || {
                    for i in 0..20u32 {
                        let v = t * 100 + i;
                        let write: Write = Box::new(move |c: &mut Vec<u32>| {
                            c.push(v);
                            Ok(())
                        });
                        group.commit(write, &|f| db.tx(f)).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let log = db.log.lock().unwrap();
        let mut all: Vec<u32> = log.iter().flatten().copied().collect();
        all.sort();
        let want: Vec<u32> = (0..16u32).flat_map(|t| (0..20u32).map(move |i| t * 100 + i)).collect();
        assert_eq!(all, want, "every write committed exactly once");
        assert!(log.len() < 320, "writers shared transactions: {} commits for 320 writes", log.len());
    }

    #[test]
    fn a_failing_write_fails_alone() {
        let db = Fake::default();
        let group: GroupCommit<Write> = GroupCommit::default();
        let bad: Write = Box::new(|_| Err(StoreError::Conflict("no".into())));
        assert!(group.commit(bad, &|f| db.tx(f)).is_err());
        let good: Write = Box::new(|c| {
            c.push(7);
            Ok(())
        });
        group.commit(good, &|f| db.tx(f)).unwrap();
        // A batch with a bad write: the batch is rolled back, the good one committed alone.
        let mut batch: Vec<(u64, Write)> = vec![
            (
                1,
                Box::new(|c: &mut Vec<u32>| {
                    c.push(1);
                    Ok(())
                }),
            ),
            (2, Box::new(|_: &mut Vec<u32>| Err(StoreError::Conflict("no".into())))),
        ];
        let results = run(&mut batch, &|f| db.tx(f));
        assert!(results[0].1.is_ok() && results[1].1.is_err());
        assert_eq!(*db.log.lock().unwrap(), vec![vec![7], vec![1]]);
    }
}
