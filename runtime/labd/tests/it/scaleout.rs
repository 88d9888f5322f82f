//! The PostgreSQL store and several labd nodes on one database.

use labd::store::{conformance, postgres::PostgresStore, Store};
use std::sync::Arc;

/// The development and CI database server (trust auth).
const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database of our own on the server, dropped when this goes out of scope. `None` (the test
/// skips) when no server answers, unless `LABWRIGHT_REQUIRE_PEERS=1`.
pub struct Scratch {
    pub url: String,
    name: String,
}

impl Scratch {
    pub fn new(tag: &str) -> Option<Scratch> {
        let mut admin = match ::postgres::Client::connect(&format!("{SERVER}/postgres"), ::postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("LABWRIGHT_REQUIRE_PEERS").as_deref() != Ok("1"),
                    "PostgreSQL tests are required but {SERVER} does not answer: {e}"
                );
                eprintln!("skipped: no PostgreSQL at {SERVER} ({e})");
                return None;
            }
        };
        let name = format!("lw_{tag}_{}_{}", std::process::id(), super::free_port());
        admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        Some(Scratch { url: format!("{SERVER}/{name}"), name })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(mut admin) = ::postgres::Client::connect(&format!("{SERVER}/postgres"), ::postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// The PostgreSQL backend passes the same conformance suite as SQLite, each check on a fresh
/// database; two stores on one database (two nodes) see each other's writes at once.
#[test]
fn postgres_store_passes_the_conformance_suite() {
    let mut scratches = Vec::new();
    let made = std::cell::RefCell::new(&mut scratches);
    let Some(probe) = Scratch::new("probe") else { return };
    drop(probe);
    conformance::run_all(&|| {
        let s = Scratch::new("conf").unwrap();
        let store = Arc::new(PostgresStore::connect(&s.url).unwrap()) as Arc<dyn Store>;
        made.borrow_mut().push(s);
        store
    });
    drop(scratches);

    let s = Scratch::new("twonodes").unwrap();
    let (a, b) = (PostgresStore::connect(&s.url).unwrap(), PostgresStore::connect(&s.url).unwrap());
    let t = a.create_tenant("acme", 1.0).unwrap();
    assert_eq!(b.tenant_by_name("acme").unwrap().id, t.id);
    assert!(b.create_tenant("acme", 1.0).is_err(), "the name is taken on the shared database");
    // Events of one run written through both nodes stay gapless.
    let run = conformance::submit(&a, &t.id, "k1");
    let run_id = run.id.as_str();
    std::thread::scope(|sc| {
        for store in [&a, &b] {
            sc.spawn(move || {
                for _ in 0..50 {
                    store.append_event(run_id, "progress", "{}").unwrap();
                }
            });
        }
    });
    let seqs: Vec<i64> = a.events(None, &run.id, 0).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
    let positions: Vec<i64> = b.outbox_pending(1000).unwrap().iter().map(|o| o.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(positions.len(), 101);
}

/// A bad database URL is a sentence naming it (without its password), not a panic.
#[test]
fn a_bad_database_url_is_a_clear_error() {
    let e = PostgresStore::connect_with("postgres://lab:secret@127.0.0.1:1/lab", std::time::Duration::from_secs(1))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(!e.contains("secret"), "{e}");
    let e = PostgresStore::connect("not a url ===").map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("database URL"), "{e}");
}
