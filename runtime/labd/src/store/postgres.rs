//! The PostgreSQL backend, for several labd nodes on one database: a small pool of connections,
//! prepared statements cached per connection, READ COMMITTED transactions (the shared logic in
//! [`super::sql`] is written to be correct under it).
//!
//! When the database restarts or the network drops, a transaction whose commit was not yet sent
//! is run again on a fresh connection until `retry_for` has passed. A commit whose reply never
//! came is looked up, never guessed: every write transaction records its id in `tx_outcomes`, so
//! once the database answers again it says whether the commit happened (done) or not (run again).
//!
//! The `postgres` client drives its own small tokio runtime, which may not be started from a
//! thread that is inside labd's runtime: see [`super::offload::leave_worker`].

use super::sql::{self, Conn, Db, Dialect, Row, SqlStore, Value};
use super::*;
use ::postgres::types::{ToSql, Type};
use ::postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// PostgreSQL-backed [`Store`].
pub type PostgresStore = SqlStore<PgDb>;

/// A pool of connections to one database.
#[derive(Debug)]
pub struct PgDb {
    config: ::postgres::Config,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    retry_for: Duration,
    /// The connection that holds the admission lock (a session's advisory lock, held across
    /// the transactions of a submission's checks and its record on the pool).
    admission: Mutex<Option<Session>>,
}

/// A connection of its own, for a session's locks.
struct Session(Client);

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("session")
    }
}

/// The advisory lock every node takes to admit a run (the migrations' is 7301).
const ADMISSION_LOCK: i64 = 7302;

#[derive(Default)]
struct Slot {
    client: Option<Client>,
    statements: HashMap<String, Statement>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.client.is_some() { "connected" } else { "idle" })
    }
}

/// Connections per node: enough for the executor, the relay and API calls at once.
const POOL: usize = 4;

/// Backend-only additions to the shared migrations.
fn postgres_part(version: i64) -> Option<&'static str> {
    match version {
        // Outbox positions from a sequence: many writers, no `MAX + 1` race.
        1 => Some("CREATE SEQUENCE outbox_position"),
        // Every write transaction leaves its id here, so that a commit whose answer was lost can
        // be looked up instead of guessed.
        3 => Some("CREATE TABLE tx_outcomes (id TEXT PRIMARY KEY, at BIGINT NOT NULL)"),
        _ => None,
    }
}

/// How long the server lets a transaction sit idle before ending it.
const IDLE_IN_TRANSACTION_MS: u64 = 5_000;

impl SqlStore<PgDb> {
    /// Connects to `url` (`postgres://user@host:port/db` or `host=… dbname=…`) and applies pending
    /// migrations (one node at a time: they hold an advisory lock).
    pub fn connect(url: &str) -> Result<PostgresStore> {
        Self::connect_with(url, Duration::from_secs(30))
    }

    /// As [`connect`](Self::connect), riding out a database outage of up to `retry_for`.
    pub fn connect_with(url: &str, retry_for: Duration) -> Result<PostgresStore> {
        let mut config: ::postgres::Config =
            url.parse().map_err(|e| StoreError::Invalid(format!("database URL `{}`: {e}", redact(url))))?;
        // Our transactions never wait between statements: one left open is a node that stopped
        // (paused, swapped out) mid-write. The server ends it, so its row locks cannot hold up
        // the node taking over its cell; the stopped node's write then fails and is fenced.
        let options = format!(
            "{} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
            config.get_options().unwrap_or("")
        );
        config.options(options.trim());
        let db = PgDb {
            config,
            slots: (0..POOL).map(|_| Mutex::new(Slot::default())).collect(),
            next: AtomicUsize::new(0),
            retry_for,
            admission: Mutex::new(None),
        };
        sql::migrate(&db, postgres_part)?;
        Ok(SqlStore::new(db))
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.split("password=").next().unwrap_or(url).to_string(),
    }
}

/// Why a transaction failed.
enum Failure<T> {
    /// The connection is gone; nothing was committed. Safe to run again.
    Lost(String),
    /// The connection broke while the commit was in flight: the value it would have returned.
    CommitUnknown(String, T),
    /// An answer from the database or the logic.
    Final(StoreError),
}

fn classify(e: ::postgres::Error) -> (bool, StoreError) {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let message = db.message().to_string();
        return match code {
            // integrity violations (unique, foreign key, check)
            c if c.starts_with("23") => (false, StoreError::Conflict(message)),
            // serialization failure, deadlock, and the server shutting down or restarting
            "40001" | "40P01" | "57P01" | "57P02" | "57P03" => (true, StoreError::Backend(message)),
            _ => (false, StoreError::Backend(format!("{message} ({code})"))),
        };
    }
    // No answer from the server: the connection failed.
    (true, StoreError::Backend(format!("database connection: {e}")))
}

/// A transaction on one pooled connection.
struct PgConn<'a> {
    tx: ::postgres::Transaction<'a>,
    statements: &'a mut HashMap<String, Statement>,
    /// Set when the connection failed under us: the caller may retry.
    lost: Option<String>,
}

/// `?7` → `$7` (outside string literals).
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => quoted = !quoted,
            '?' if !quoted => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

fn bind(i: usize, v: &Value, ty: &Type) -> Result<Box<dyn ToSql + Sync>> {
    let narrow = |x: i64| -> Result<i32> {
        i32::try_from(x).map_err(|_| StoreError::Invalid(format!("value {x} (parameter {}) is too large", i + 1)))
    };
    Ok(match (v, ty) {
        (Value::Null, t) if *t == Type::INT2 => Box::new(None::<i16>),
        (Value::Null, t) if *t == Type::INT4 => Box::new(None::<i32>),
        (Value::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Value::Null, t) if *t == Type::FLOAT8 => Box::new(None::<f64>),
        (Value::Null, t) if *t == Type::BOOL => Box::new(None::<bool>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Int(x), t) if *t == Type::INT2 => Box::new(narrow(*x)? as i16),
        (Value::Int(x), t) if *t == Type::INT4 => Box::new(narrow(*x)?),
        (Value::Int(x), t) if *t == Type::INT8 => Box::new(*x),
        (Value::Int(x), t) if *t == Type::FLOAT8 => Box::new(*x as f64),
        (Value::Int(x), t) if *t == Type::BOOL => Box::new(*x != 0),
        (Value::Real(x), t) if *t == Type::FLOAT8 => Box::new(*x),
        (Value::Real(x), t) if *t == Type::FLOAT4 => Box::new(*x as f32),
        (Value::Text(s), _) => Box::new(s.clone()),
        (other, t) => {
            return Err(StoreError::Backend(format!("parameter {} is {other:?}; the database wants {t}", i + 1)))
        }
    })
}

fn column(row: &::postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns()[i].type_();
    let bad = |e: ::postgres::Error| StoreError::Backend(format!("column {i}: {e}"));
    Ok(if *ty == Type::INT2 {
        row.try_get::<_, Option<i16>>(i).map_err(bad)?.map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *ty == Type::INT4 {
        row.try_get::<_, Option<i32>>(i).map_err(bad)?.map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *ty == Type::INT8 {
        row.try_get::<_, Option<i64>>(i).map_err(bad)?.map_or(Value::Null, Value::Int)
    } else if *ty == Type::FLOAT8 {
        row.try_get::<_, Option<f64>>(i).map_err(bad)?.map_or(Value::Null, Value::Real)
    } else if *ty == Type::FLOAT4 {
        row.try_get::<_, Option<f32>>(i).map_err(bad)?.map_or(Value::Null, |v| Value::Real(v.into()))
    } else if *ty == Type::BOOL {
        row.try_get::<_, Option<bool>>(i).map_err(bad)?.map_or(Value::Null, |v| Value::Int(v.into()))
    } else {
        row.try_get::<_, Option<String>>(i).map_err(bad)?.map_or(Value::Null, Value::Text)
    })
}

impl PgConn<'_> {
    fn fail(&mut self, e: ::postgres::Error) -> StoreError {
        let (lost, err) = classify(e);
        if lost {
            self.lost = Some(err.to_string());
        }
        err
    }

    fn prepared(&mut self, sql: &str) -> Result<Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.tx.prepare(&placeholders(sql)).map_err(|e| self.fail(e))?;
        self.statements.insert(sql.to_string(), st.clone());
        Ok(st)
    }

    fn bound(st: &Statement, params: &[Value]) -> Result<Vec<Box<dyn ToSql + Sync>>> {
        if st.params().len() != params.len() {
            return Err(StoreError::Backend(format!(
                "statement takes {} parameters, given {}",
                st.params().len(),
                params.len()
            )));
        }
        params.iter().zip(st.params()).enumerate().map(|(i, (v, t))| bind(i, v, t)).collect()
    }
}

impl Conn for PgConn<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let st = self.prepared(sql)?;
        let bound = Self::bound(&st, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
        self.tx.execute(&st, &refs).map_err(|e| self.fail(e))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let st = self.prepared(sql)?;
        let bound = Self::bound(&st, params)?;
        let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
        let found = self.tx.query(&st, &refs).map_err(|e| self.fail(e))?;
        found.iter().map(|r| (0..r.len()).map(|i| column(r, i)).collect::<Result<Vec<_>>>().map(Row)).collect()
    }
}

impl PgDb {
    /// One attempt on the slot's connection (made if missing). A write transaction records
    /// `marker` in `tx_outcomes` before it commits.
    fn attempt<T>(
        &self,
        slot: &mut Slot,
        marker: Option<&str>,
        f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send),
    ) -> std::result::Result<T, Failure<T>> {
        if slot.client.as_ref().is_none_or(Client::is_closed) {
            slot.statements.clear();
            slot.client = Some(self.config.connect(NoTls).map_err(|e| Failure::Lost(format!("cannot connect: {e}")))?);
        }
        let Slot { client, statements } = slot;
        let Some(client) = client.as_mut() else { return Err(Failure::Lost("no connection".into())) };
        let tx = client.transaction().map_err(|e| match classify(e) {
            (true, e) => Failure::Lost(e.to_string()),
            (false, e) => Failure::Final(e),
        })?;
        let mut conn = PgConn { tx, statements, lost: None };
        let done = f(&mut conn).and_then(|v| {
            if let Some(id) = marker {
                let now = now_ms();
                conn.execute(
                    "INSERT INTO tx_outcomes (id, at) VALUES (?1, ?2)",
                    &[Value::Text(id.into()), Value::Int(now)],
                )?;
                // Markers are needed only until the next answer gets through: keep an hour.
                if now % 512 == 0 {
                    conn.execute("DELETE FROM tx_outcomes WHERE at < ?1", &[Value::Int(now - 3_600_000)])?;
                }
            }
            Ok(v)
        });
        match done {
            Ok(v) => match conn.tx.commit() {
                Ok(()) => Ok(v),
                Err(e) => match classify(e) {
                    (true, e) => Err(Failure::CommitUnknown(e.to_string(), v)),
                    (false, e) => Err(Failure::Final(e)),
                },
            },
            Err(e) => match conn.lost.take() {
                Some(why) => Err(Failure::Lost(why)),
                None => Err(Failure::Final(e)),
            },
        }
    }

    /// Whether the transaction that left `marker` committed (asked on a fresh connection).
    fn committed(&self, slot: &mut Slot, marker: &str) -> std::result::Result<bool, ::postgres::Error> {
        slot.statements.clear();
        let mut client = self.config.connect(NoTls)?;
        let found = client.query_opt("SELECT 1 FROM tx_outcomes WHERE id = $1", &[&marker])?.is_some();
        slot.client = Some(client);
        Ok(found)
    }

    fn run<T: Send>(&self, write: bool, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        super::offload::leave_worker(|| {
            let first = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            // A free connection if there is one, else wait for ours.
            let mut slot = (0..self.slots.len())
                .find_map(|k| self.slots[(first + k) % self.slots.len()].try_lock().ok())
                .map_or_else(|| self.slots[first].lock(), Ok)
                .map_err(|_| StoreError::Backend("database pool lock poisoned".into()))?;
            let marker = write.then(|| new_id("tx"));
            let started = Instant::now();
            let mut pause = Duration::from_millis(50);
            loop {
                let why = match self.attempt(&mut slot, marker.as_deref(), f) {
                    Ok(v) => return Ok(v),
                    Err(Failure::Final(e)) => return Err(e),
                    Err(Failure::Lost(why)) => why,
                    Err(Failure::CommitUnknown(why, v)) => {
                        slot.client = None;
                        // Ask until the database answers: committed (done) or not (run again).
                        let Some(m) = marker.as_deref() else { return Ok(v) }; // a read
                        let mut asked = self.committed(&mut slot, m);
                        while let Err(e) = &asked {
                            if started.elapsed() >= self.retry_for {
                                return Err(StoreError::Backend(format!(
                                    "the database connection broke during a commit ({why}) and the database has not answered since ({e}); the change may or may not be saved"
                                )));
                            }
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_secs(1));
                            asked = self.committed(&mut slot, m);
                        }
                        if matches!(asked, Ok(true)) {
                            return Ok(v);
                        }
                        why
                    }
                };
                slot.client = None;
                if started.elapsed() >= self.retry_for {
                    return Err(StoreError::Backend(format!(
                        "the database has not answered for {} s: {why}",
                        self.retry_for.as_secs()
                    )));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        })
    }
}

impl Db for PgDb {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn tx<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        self.run(true, f)
    }

    fn read<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        self.run(false, f)
    }

    fn hold_admission(&self) -> Result<AdmissionHold<'_>> {
        // The node's one connection for it, taken out while held (a second hold at once on one
        // node, which labd does not do, would connect another: the database still serialises).
        let idle = self.admission.lock().map_err(|_| StoreError::Backend("admission lock poisoned".into()))?.take();
        let session = super::offload::leave_worker(|| {
            let (started, mut pause) = (Instant::now(), Duration::from_millis(50));
            let mut session = idle;
            // Connect when there is no connection yet (or it broke), then lock; either may fail
            // while the database is away, and is tried again as transactions are.
            loop {
                let step = match session.as_mut() {
                    Some(Session(c)) => c.execute("SELECT pg_advisory_lock($1)", &[&ADMISSION_LOCK]).map(|_| true),
                    None => self.config.connect(NoTls).map(|c| {
                        session = Some(Session(c));
                        false
                    }),
                };
                match step {
                    Ok(true) => return Ok(session),
                    Ok(false) => continue,
                    Err(e) => {
                        session = None;
                        if started.elapsed() >= self.retry_for {
                            return Err(StoreError::Backend(format!(
                                "cannot take the admission lock for {} s: {}",
                                self.retry_for.as_secs(),
                                classify(e).1
                            )));
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
            }
        })?;
        Ok(AdmissionHold::new(move || {
            let kept = super::offload::leave_worker(|| {
                let mut s = session?;
                match s.0.execute("SELECT pg_advisory_unlock($1)", &[&ADMISSION_LOCK]) {
                    Ok(_) => Some(s),
                    Err(e) => {
                        // Closing the session lets go of its locks; the next hold connects again.
                        tracing::warn!(error = %classify(e).1, "cannot release the admission lock; closing its connection");
                        None
                    }
                }
            });
            if let Ok(mut idle) = self.admission.lock() {
                *idle = kept;
            }
        }))
    }
}

/// The channel a submission notifies (in its transaction, so only committed runs wake anyone).
pub const SUBMITTED: &str = "labwright_submitted";

/// Listens on its own connection (a thread) and rings `wake` at every submission on any node;
/// reconnects when the database goes away.
pub fn listen_for_submissions(url: &str, wake: std::sync::Arc<tokio::sync::Notify>) {
    let url = url.to_string();
    let _ = std::thread::Builder::new().name("pg-listen".into()).spawn(move || loop {
        let listened = (|| -> std::result::Result<(), ::postgres::Error> {
            let mut client = Client::connect(&url, NoTls)?;
            client.batch_execute(&format!("LISTEN {SUBMITTED}"))?;
            // Whatever was submitted while we were not listening is picked up by the next poll.
            wake.notify_waiters();
            let mut notes = client.notifications();
            let mut it = notes.blocking_iter();
            while fallible_iterator::FallibleIterator::next(&mut it)?.is_some() {
                wake.notify_waiters();
            }
            Ok(())
        })();
        if let Err(e) = listened {
            let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
            tracing::warn!(why = %why, "cannot listen for submissions (NOTIFY); again in 1 s");
        }
        std::thread::sleep(Duration::from_secs(1));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_and_literals_stay() {
        assert_eq!(placeholders("SELECT ?1 WHERE a = '?' AND b = ?12"), "SELECT $1 WHERE a = '?' AND b = $12");
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(redact("postgres://lab:secret@db:5432/lab"), "postgres://lab@db:5432/lab");
        assert_eq!(redact("host=db user=lab password=secret"), "host=db user=lab ");
    }
}
