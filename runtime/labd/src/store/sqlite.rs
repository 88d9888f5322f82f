//! The embedded SQLite backend: one connection behind a mutex (SQLite has one writer anyway),
//! WAL journal, `synchronous=FULL` so a committed transaction survives power loss.

use super::sql::{self, Conn, Db, Dialect, Row, SqlStore, Value};
use super::*;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// SQLite-backed [`Store`].
pub type SqliteStore = SqlStore<SqliteDb>;

/// One SQLite connection.
#[derive(Debug)]
pub struct SqliteDb {
    conn: Mutex<Connection>,
    /// The file outside the database that says how many write transactions were committed
    /// (set once migrations have made the counter; `None` in memory).
    mark: Mutex<Option<Mark>>,
    /// Checkpoints off the commit path (a database file; `None` in memory). Only held:
    /// dropping it stops its thread.
    _checkpointer: Option<super::checkpointer::Checkpointer>,
}

/// The mark file, kept open: each commit overwrites its count in place (one `pwrite`; no
/// truncation, which on ext4 would start writing the file back at every close).
#[derive(Debug)]
struct Mark {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Mark {
    /// The count, right-aligned in a fixed width so each write covers the last.
    fn record(&self, n: i64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(format!("{n:>20}").as_bytes(), 0)
    }
}

/// What the SQLite store adds to the shared migrations: the count of committed writes, which
/// `labd.sqlite.mark` echoes outside the database.
fn sqlite_migration(version: i64) -> Option<&'static str> {
    (version == 4).then_some(
        "CREATE TABLE write_mark (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);\nINSERT INTO write_mark (id, n) VALUES (1, 0);",
    )
}

/// The mark file beside a database file.
pub fn mark_file(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".mark");
    std::path::PathBuf::from(name)
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, ref m) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(m.clone().unwrap_or_else(|| "constraint violated".into()))
        }
        other => StoreError::Backend(other.to_string()),
    }
}

impl SqlStore<SqliteDb> {
    /// Opens (creating if needed) the database file and applies pending migrations.
    ///
    /// Refuses a database that has fewer committed writes than `labd.sqlite.mark` says were
    /// committed: its write-ahead log lost work (emptied or truncated after a crash), and
    /// running on it would send again commands the lost journal had recorded as sent.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn =
            Connection::open(path).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let checkpointer = super::checkpointer::Checkpointer::start(path)
            .map_err(|e| StoreError::Backend(format!("cannot start checkpointing {}: {e}", path.display())))?;
        let db = Self::init(conn, Some(checkpointer))?;
        let mark = mark_file(path);
        let recorded: u64 = match std::fs::read_to_string(&mark) {
            // Empty: labd stopped between truncating the file and writing the count.
            Ok(text) if text.trim().is_empty() => 0,
            Ok(text) => text.trim().parse().map_err(|_| {
                StoreError::Backend(format!(
                    "{} should hold a count of committed writes, not {:?}; restore it, or delete it to skip the check once",
                    mark.display(),
                    text.chars().take(40).collect::<String>()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::Backend(format!("cannot read {}: {e}", mark.display()))),
        };
        let held = db.committed_writes()?;
        if recorded > held {
            return Err(StoreError::Backend(format!(
                "{} holds {held} committed writes, but {recorded} had been committed (recorded in {}): its write-ahead log ({}-wal) lost committed work, so runs, results and journaled commands are missing. labd will not run on it, since commands it had sent would be sent again. Restore the last backup (docs/operations.md), or, to accept the loss knowingly, delete {}",
                path.display(),
                mark.display(),
                path.display(),
                mark.display()
            )));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&mark)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", mark.display())))?;
        *db.db().mark.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))? =
            Some(Mark { path: mark, file });
        Ok(db)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory().map_err(backend)?, None)
    }

    fn init(conn: Connection, checkpointer: Option<super::checkpointer::Checkpointer>) -> Result<SqliteStore> {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        conn.pragma_update(None, "wal_autocheckpoint", super::checkpointer::SAFETY_NET_PAGES).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        let db = SqliteDb { conn: Mutex::new(conn), mark: Mutex::new(None), _checkpointer: checkpointer };
        sql::migrate(&db, sqlite_migration)?;
        Ok(SqlStore::new(db))
    }

    /// Write transactions committed so far, by the database's own count.
    fn committed_writes(&self) -> Result<u64> {
        let conn = self.db().conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let n: i64 = conn.query_row("SELECT n FROM write_mark WHERE id = 1", [], |r| r.get(0)).map_err(backend)?;
        Ok(n as u64)
    }
}

/// A connection, inside a transaction or not.
struct Tx<'a>(&'a Connection);

fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Int(i) => V::Integer(*i),
        Value::Real(f) => V::Real(*f),
        Value::Text(s) => V::Text(s.clone()),
    }
}

impl Conn for Tx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let mut st = self.0.prepare_cached(sql).map_err(backend)?;
        let n = st.execute(rusqlite::params_from_iter(params.iter().map(to_sql))).map_err(backend)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut st = self.0.prepare_cached(sql).map_err(backend)?;
        let columns = st.column_count();
        let mut found = st.query(rusqlite::params_from_iter(params.iter().map(to_sql))).map_err(backend)?;
        let mut out = Vec::new();
        while let Some(r) = found.next().map_err(backend)? {
            let mut row = Vec::with_capacity(columns);
            for i in 0..columns {
                row.push(match r.get_ref(i).map_err(backend)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Real(v),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => return Err(StoreError::Backend(format!("column {i} holds a blob"))),
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }
}

impl Db for SqliteDb {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// One IMMEDIATE transaction (the write lock is taken at the start, so two writers never
    /// deadlock upgrading). A database another process holds locked (a backup tool, a long
    /// `sqlite3` session) is waited for: each try waits the busy timeout, then the whole
    /// transaction is tried again with a growing pause, for up to `LOCKED_FOR_AT_MOST`; a
    /// transient lock never fails a write, and so never a run.
    fn tx<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        super::offload::leave_worker(|| self.tx_here(f))
    }

    fn read<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        super::offload::leave_worker(|| self.read_here(f))
    }
}

impl SqliteDb {
    fn tx_here<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        let began = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            match self.try_tx(f) {
                Err(StoreError::Backend(m)) if is_locked(&m) && began.elapsed() < LOCKED_FOR_AT_MOST => {
                    tracing::warn!(
                        error = %m,
                        retry_in_ms = pause.as_millis() as u64,
                        waited_s = began.elapsed().as_secs(),
                        "the database is locked by another process; trying the write again"
                    );
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Reads need no transaction: the connection is ours alone while the lock is held.
    fn read_here<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        let began = std::time::Instant::now();
        loop {
            let conn = self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
            match f(&mut Tx(&conn)) {
                Err(StoreError::Backend(m)) if is_locked(&m) && began.elapsed() < LOCKED_FOR_AT_MOST => {
                    drop(conn);
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }
}

/// How long a database locked by another process is waited for before a write fails.
const LOCKED_FOR_AT_MOST: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether SQLite said another connection holds the lock (SQLITE_BUSY, SQLITE_LOCKED).
fn is_locked(message: &str) -> bool {
    message.contains("database is locked") || message.contains("database table is locked")
}

impl SqliteDb {
    fn try_tx<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let mark = self.mark.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let out = f(&mut Tx(&tx))?;
        let n: Option<i64> = match &*mark {
            Some(_) => Some(
                tx.query_row("UPDATE write_mark SET n = n + 1 WHERE id = 1 RETURNING n", [], |r| r.get(0))
                    .map_err(backend)?,
            ),
            None => None,
        };
        tx.commit().map_err(backend)?;
        if let (Some(mark), Some(n)) = (mark.as_ref(), n) {
            // After the commit, so the mark is never ahead of what the database made durable.
            // Not synced: it guards against a log lost after a crash of labd, which leaves the
            // page cache (and this write) intact; a lost mark write is only a weaker check.
            if let Err(e) = mark.record(n) {
                tracing::warn!(file = %mark.path.display(), error = %e, "committed, but cannot record the write count");
            }
        }
        Ok(out)
    }
}
