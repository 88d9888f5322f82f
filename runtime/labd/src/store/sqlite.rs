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
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn =
            Connection::open(path).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<SqliteStore> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(conn: Connection) -> Result<SqliteStore> {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        let db = SqliteDb { conn: Mutex::new(conn) };
        sql::migrate(&db, |_| None)?;
        Ok(SqlStore::new(db))
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
    /// deadlock upgrading).
    fn tx<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let out = f(&mut Tx(&tx))?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    /// Reads need no transaction: the connection is ours alone while the lock is held.
    fn read<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        let conn = self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        f(&mut Tx(&conn))
    }
}
