//! The SQLite store: the conformance suite, durability across reopen, a locked database, a lost write-ahead log.

use super::*;

/// The SQLite backend passes the store conformance suite, in memory and on disk.
#[test]
fn sqlite_store_passes_the_conformance_suite() {
    use labd::store::{conformance, sqlite::SqliteStore, Store};
    use std::sync::Arc;
    conformance::run_all(&|| Arc::new(SqliteStore::in_memory().unwrap()) as Arc<dyn Store>);
    let dir = std::env::temp_dir().join(format!("lw-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    conformance::run_all(&|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Arc::new(SqliteStore::open(&dir.join(format!("db{n}.sqlite"))).unwrap()) as Arc<dyn Store>
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// What was committed is there after the store is closed and opened again (and migrations are
/// not applied twice).
#[test]
fn sqlite_store_keeps_what_it_committed_across_reopen() {
    use labd::store::{sqlite::SqliteStore, NewRun, Store};
    let dir = std::env::temp_dir().join(format!("lw-reopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("labd.sqlite");
    let (tenant, run) = {
        let s = SqliteStore::open(&path).unwrap();
        let t = s.create_tenant("durable", 1.0).unwrap();
        let (r, _) = s
            .submit_run(&NewRun {
                tenant_id: t.id.clone(),
                idempotency_key: "k".into(),
                name: "n".into(),
                source: "s".into(),
                plan_json: "{}".into(),
                priority: 0,
                class: Default::default(),
            })
            .unwrap();
        s.append_event(&r.id, "progress", "{}").unwrap();
        (t.id, r.id)
    };
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.events(Some(&tenant), &run, 0).unwrap().len(), 2);
    assert_eq!(s.append_event(&run, "progress", "{}").unwrap().seq, 3, "the sequence continues without a gap");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database another process holds locked for a minute (a backup tool, a long `sqlite3`
/// session) mid-run: labd waits for it and every run still succeeds; nothing fails because a
/// write had to wait.
#[test]
fn a_database_locked_for_a_minute_mid_run_fails_nothing() {
    let _machine = heavy();
    let lab = serve_lab("locked", "0.001");
    let (acme, globex) = (lab.tenant("acme"), lab.tenant("globex"));
    let runs = [
        (acme.clone(), lab.submit(&acme, "growth-curve.yaml")),
        (acme.clone(), lab.submit(&acme, "serial-dilution.yaml")),
        (globex.clone(), lab.submit(&globex, "serial-dilution.yaml")),
    ];
    // Once the growth curve (12 h of device time: 45 s here) has begun, another process takes
    // the write lock and keeps it for 60 s.
    let events = watch_lines(&lab, &acme, &runs[0].1);
    loop {
        let line = events.recv_timeout(std::time::Duration::from_secs(60)).expect("the run begins");
        if line.contains("\"task_started\"") {
            break;
        }
    }
    // Readiness tells the truth before, during and after the lock, on HTTP and gRPC alike.
    let ready = |want: bool| {
        let began = std::time::Instant::now();
        loop {
            let (code, body) = console_get(&lab.console, "/readyz", "");
            let grpc = grpc_serving(&lab.url);
            if (code == 200) == want && grpc == want {
                return (began.elapsed(), body);
            }
            assert!(began.elapsed().as_secs() < 15, "readiness is not {want} after 15 s: {code} {body}, gRPC {grpc}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let (_, body) = ready(true);
    for part in ["\"store\":\"writable\"", "\"executor\":\"running\"", "\"cells_driven\":1", "\"instruments\":13"] {
        assert!(body.contains(part), "{part} in {body}");
    }
    assert_eq!(console_get(&lab.console, "/healthz", "").0, 200);
    let db = rusqlite::Connection::open(lab.dir.join("labd.sqlite")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (after, body) = ready(false);
    assert!(body.contains("not writable"), "{body}");
    eprintln!("readiness went false {:.1} s into the lock", after.as_secs_f64());
    std::thread::sleep(std::time::Duration::from_secs(60).saturating_sub(after));
    assert_eq!(console_get(&lab.console, "/healthz", "").0, 200, "alive all along");
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let (after, _) = ready(true);
    eprintln!("readiness back {:.1} s after the lock", after.as_secs_f64());
    let unfinished = lab.json(&acme, &["runs", "--format", "json"]);
    assert!(
        unfinished.as_array().unwrap().iter().any(|r| r["id"] == runs[0].1.as_str() && r["state"] == "running"),
        "the lock was held mid-run: {unfinished}"
    );
    for (token, run) in &runs {
        lab.wait_final(token, &[run.as_str()], 180);
    }
    let _ = std::fs::remove_dir_all(&lab.dir);
}

/// A database that lost committed writes (its write-ahead log emptied after a crash: here, the
/// file put back as it was before the writes) is refused at open, naming the files and what to
/// do, instead of running on without the runs and journaled commands it lost. Deleting the
/// mark accepts the loss knowingly.
#[test]
fn sqlite_store_refuses_a_database_that_lost_committed_writes() {
    use labd::store::{sqlite::SqliteStore, NewRun, Store};
    let dir = fresh_dir("lost-wal");
    let path = dir.join("labd.sqlite");
    let before = dir.join("before.sqlite");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_tenant("acme", 1.0).unwrap();
    }
    std::fs::copy(&path, &before).unwrap();
    {
        let s = SqliteStore::open(&path).unwrap();
        let t = s.tenant_by_name("acme").unwrap();
        for k in ["a", "b", "c"] {
            let new = NewRun {
                tenant_id: t.id.clone(),
                idempotency_key: k.into(),
                name: "n".into(),
                source: "s".into(),
                plan_json: "{}".into(),
                priority: 0,
                class: Default::default(),
            };
            s.submit_run(&new).unwrap();
        }
    }
    assert!(SqliteStore::open(&path).is_ok(), "an intact database opens");
    std::fs::copy(&before, &path).unwrap();
    for side in ["labd.sqlite-wal", "labd.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(side));
    }
    let e = SqliteStore::open(&path).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("lost committed work") && e.contains("labd.sqlite.mark") && e.contains("Restore the last backup"),
        "{e}"
    );
    // A mark that is not a count is named, not read as none.
    std::fs::write(dir.join("labd.sqlite.mark"), "garbage").unwrap();
    let e = SqliteStore::open(&path).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("labd.sqlite.mark") && e.contains("garbage"), "{e}");
    std::fs::remove_file(dir.join("labd.sqlite.mark")).unwrap();
    let s = SqliteStore::open(&path).expect("the loss accepted knowingly");
    assert!(s.runs(None, &[]).unwrap().is_empty(), "the lost runs are gone, and labd knows it started from here");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Committed pages are copied back into the database file by the store's own checkpoint
/// thread, not by the commit that happens to cross SQLite's threshold: after a burst of writes
/// far below that threshold, the database file grows to hold them while nothing else writes.
#[test]
fn sqlite_checkpoints_off_the_commit_path() {
    use labd::store::{sqlite::SqliteStore, NewRun, Store};
    let dir = fresh_dir("checkpoint");
    let path = dir.join("labd.sqlite");
    let s = SqliteStore::open(&path).unwrap();
    let t = s.create_tenant("acme", 1.0).unwrap();
    // Let the thread copy what migrations wrote, so the growth measured is this burst's.
    let settled = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut last = std::fs::metadata(&path).unwrap().len();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let now = std::fs::metadata(&path).unwrap().len();
            if now == last {
                return now;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: the database file kept changing");
            last = now;
        }
    };
    let before = settled("after migrations");
    let plan = "x".repeat(4000);
    for k in 0..200 {
        let new = NewRun {
            tenant_id: t.id.clone(),
            idempotency_key: format!("k{k}"),
            name: "n".into(),
            source: "s".into(),
            plan_json: plan.clone(),
            priority: 0,
            class: Default::default(),
        };
        s.submit_run(&new).unwrap();
    }
    let after = settled("after the burst");
    assert!(
        after >= before + 800_000,
        "200 runs of 4 kB each were copied into the database file while the store stayed open: {before} -> {after} bytes"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
