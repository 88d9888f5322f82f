//! The store's logic, written once in portable SQL over a small connection interface ([`Db`],
//! [`Conn`]); each backend (SQLite, PostgreSQL) only says how to run a statement in a
//! transaction. Placeholders are `?1, ?2, …` (the PostgreSQL backend rewrites them to `$n`).
//!
//! Every write is safe under concurrent writers on other connections (several labd nodes on one
//! PostgreSQL): counters are bumped with `UPDATE … SET x = x + 1` before they are read (the row
//! lock orders writers), state changes are conditional updates whose row count says who won, and
//! a unique-key race on submission is retried so both callers get the one run.
//!
//! Why one long file: it is the one `impl Store for SqlStore` (Rust keeps a trait's impl in one
//! block), a method per store operation in the trait's order; the helpers beside it are the
//! row readers those methods share. The journal's group commit lives in `group.rs`.

use super::*;
use crate::telemetry::envelope;
use std::sync::Arc;

/// A value crossing the backend boundary.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Value {
        v.as_deref().into()
    }
}

/// `[Value; N]` from anything convertible.
macro_rules! params {
    ($($v:expr),* $(,)?) => { [$(Value::from($v)),*] };
}

// After `params!`, which it uses (a macro is seen only below where it is defined).
mod audit;
mod durations;
mod kitting;
mod shipments;
mod stock;
pub use stock::draw_soonest_first;

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value> {
        self.0.get(i).ok_or_else(|| StoreError::Backend(format!("column {i} missing from a row")))
    }
    fn wrong(i: usize, want: &str, got: &Value) -> StoreError {
        StoreError::Backend(format!("column {i}: expected {want}, the database returned {got:?}"))
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            other => Err(Self::wrong(i, "text", other)),
        }
    }
    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?.ok_or_else(|| Self::wrong(i, "text", &Value::Null))
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => Err(Self::wrong(i, "an integer", other)),
        }
    }
    pub fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| Self::wrong(i, "an integer", &Value::Null))
    }
    pub fn opt_real(&self, i: usize) -> Result<Option<f64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Real(v) => Ok(Some(*v)),
            Value::Int(v) => Ok(Some(*v as f64)),
            other => Err(Self::wrong(i, "a number", other)),
        }
    }
    pub fn real(&self, i: usize) -> Result<f64> {
        self.opt_real(i)?.ok_or_else(|| Self::wrong(i, "a number", &Value::Null))
    }
}

/// A connection inside a transaction.
pub trait Conn {
    /// Runs a statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
}

impl dyn Conn + '_ {
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    fn query_one(&mut self, sql: &str, params: &[Value], what: &str) -> Result<Row> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError::NotFound(what.to_string()))
    }
}

/// Where the backends' SQL differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The next outbox position. SQLite has one writer, so `MAX + 1` is exact; PostgreSQL has
    /// many and uses a sequence (created with the schema).
    fn next_outbox_position(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SELECT COALESCE(MAX(position), 0) + 1 FROM outbox",
            Dialect::Postgres => "SELECT nextval('outbox_position')",
        }
    }

    /// The database's clock in milliseconds: leases are judged by one clock, not each node's.
    fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Row locks other claimers skip instead of waiting for (SQLite has one writer anyway).
    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Wakes the other nodes when a run is submitted (delivered at commit).
    fn notify_submitted(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("SELECT pg_notify('labwright_submitted', '')"),
        }
    }

    /// Held while migrating, so that nodes starting together migrate one after the other.
    fn migration_lock(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some("SELECT pg_advisory_xact_lock(7301)"),
        }
    }
}

/// A backend: runs closures in transactions on one of its connections.
pub trait Db: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;
    /// Runs `f` in one write transaction, committed when `f` returns `Ok`. A backend may run `f`
    /// again when the connection broke before the commit was sent.
    fn tx<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T>;
    /// See [`Store::hold_admission`]. A database only one node uses (SQLite) needs nothing
    /// beyond the node's own one-at-a-time admission.
    fn hold_admission(&self) -> Result<AdmissionHold<'_>> {
        Ok(AdmissionHold::default())
    }
    /// Runs `f` for reading (a backend may use the same transaction kind).
    fn read<T: Send>(&self, f: &mut (dyn FnMut(&mut dyn Conn) -> Result<T> + Send)) -> Result<T> {
        self.tx(f)
    }
}

/// Applies the pending migrations (each in order, recorded in `schema_migrations`) plus the
/// backend's own additions, in one transaction.
pub fn migrate(db: &impl Db, extra: fn(i64) -> Option<&'static str>) -> Result<()> {
    let dialect = db.dialect();
    db.tx(&mut |c| {
        if let Some(lock) = dialect.migration_lock() {
            c.execute(lock, &[])?;
        }
        c.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            &[],
        )?;
        let current = c.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[], "version")?.int(0)?;
        for (version, sql) in MIGRATIONS {
            if *version > current {
                for statement in statements(sql) {
                    c.execute(statement, &[]).map_err(|e| StoreError::Backend(format!("migration {version}: {e}")))?;
                }
                if let Some(more) = extra(*version) {
                    for statement in statements(more) {
                        c.execute(statement, &[])
                            .map_err(|e| StoreError::Backend(format!("migration {version} (backend part): {e}")))?;
                    }
                }
                c.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                    &params![*version, now_ms()],
                )?;
            }
        }
        Ok(())
    })
}

/// The statements of a migration file: split at `;` ending a line, comments dropped.
fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in sql.match_indices(";\n").chain(sql.ends_with(';').then_some((sql.len() - 1, ";"))) {
        out.push(sql[start..i].trim());
        start = i + 1;
    }
    out.push(sql[start..].trim());
    out.into_iter().filter(|s| s.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))).collect()
}

/// One write of the journal (an intent, an outcome), run in a transaction the group commit opens.
type JournalWrite = Box<dyn FnMut(&mut dyn Conn) -> Result<()> + Send>;

/// The [`Store`] over any [`Db`].
#[derive(Debug)]
pub struct SqlStore<D> {
    db: Arc<D>,
    /// When set, every write transaction first proves this lease still holds.
    fence: Option<Lease>,
    /// Counts this process's committed writes, so readers waiting for news (a `Watch`) wake
    /// when something was written instead of polling.
    written: Arc<tokio::sync::watch::Sender<u64>>,
    /// The journal's writes (intents and outcomes) commit in groups under load; `None`: each
    /// in its own transaction (the benchmarks' baseline).
    journal: Option<Arc<super::group::GroupCommit<JournalWrite>>>,
}

impl<D: Db> SqlStore<D> {
    pub fn new(db: D) -> SqlStore<D> {
        SqlStore {
            db: Arc::new(db),
            fence: None,
            written: Arc::new(tokio::sync::watch::channel(0).0),
            journal: Some(Arc::default()),
        }
    }

    pub fn db(&self) -> &D {
        &self.db
    }

    /// Moves a run from one of `from` to `state`, with its event and outbox row; `Conflict`
    /// when it is in none of them.
    fn move_run(&self, id: &str, state: RunState, reason: Option<&str>, from: &[&str]) -> Result<Option<Event>> {
        let dialect = self.db.dialect();
        self.tx(|c| {
            let at = now_ms();
            // One conditional update: of two writers racing, only one moves a run out of a
            // non-final state.
            let allowed = from.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ");
            let n = c.execute(
                &format!("UPDATE runs SET state = ?2, reason = COALESCE(?3, reason), started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?4 ELSE started_at END, finished_at = CASE WHEN ?5 = 1 THEN ?4 ELSE finished_at END WHERE id = ?1 AND state IN ({allowed})"),
                &params![id, state.as_str(), reason, at, state.is_final() as i64],
            )?;
            let tenant = match c.query_opt("SELECT state, tenant_id FROM runs WHERE id = ?1", &params![id])? {
                None => return Err(StoreError::NotFound(format!("run {id}"))),
                Some(r) if n == 0 => {
                    return Err(StoreError::Conflict(format!("run {id} already {}", RunState::parse(&r.text(0)?)?)))
                }
                Some(r) => r.text(1)?,
            };
            if state.is_final() {
                // The run's own work a technician was asked to do (manual steps, additions: no
                // instrument) ends with it. A check of an instrument stays open: the instrument
                // still needs it after the run.
                let open = c.query(
                    "SELECT id FROM interventions WHERE run_id = ?1 AND state = 'open' AND instrument IS NULL ORDER BY created_at",
                    &params![id],
                )?;
                let open: Vec<String> = rows(open, |r| r.text(0))?;
                c.execute(
                    "UPDATE interventions SET state = 'closed', resolved_at = ?2, resolved_by = 'labd' WHERE run_id = ?1 AND state = 'open' AND instrument IS NULL",
                    &params![id, at],
                )?;
                for i in open {
                    let payload =
                        serde_json::json!({"intervention": i, "resolution": "closed", "why": "the run ended"}).to_string();
                    append_to(c, dialect, id, "intervention_resolved", &payload, true)?;
                }
            }
            let payload = serde_json::json!({"state": state.as_str(), "reason": reason}).to_string();
            let ev = append_to(c, dialect, id, "state", &payload, true)?;
            // The retained state topic gets its own row.
            let header = envelope::RunHeader { tenant: &tenant, run: id, seq: ev.seq, ts: at };
            put_outbox(c, dialect, Some(&tenant), Some(id), Some(ev.seq), &envelope::run_state(header, state.as_str(), reason))?;
            Ok(Some(ev))
        })
    }

    fn tx<T: Send>(&self, f: impl FnMut(&mut dyn Conn) -> Result<T> + Send) -> Result<T> {
        let out = self.fenced_tx(f);
        if out.is_ok() {
            self.written.send_modify(|n| *n += 1);
        }
        out
    }

    /// Journal writes each in a transaction of its own (`false`) or committed in groups (`true`,
    /// the default). Benchmarks compare the two.
    pub fn with_group_commit(mut self, on: bool) -> Self {
        self.journal = on.then(Arc::default);
        self
    }

    /// A journal write, committed with whatever other journal writes are waiting.
    fn journaled(&self, mut write: JournalWrite) -> Result<()> {
        match &self.journal {
            Some(group) => group.commit(write, &|writes| self.tx(|c| writes.iter_mut().try_for_each(|w| w(c)))),
            None => self.tx(|c| write(c)),
        }
    }

    fn fenced_tx<T: Send>(&self, mut f: impl FnMut(&mut dyn Conn) -> Result<T> + Send) -> Result<T> {
        let fence = self.fence.as_ref();
        let now = self.db.dialect().now_ms();
        self.db.tx(&mut |c| {
            if let Some(l) = fence {
                // A no-op update: it also locks the lease row, so a takeover waits for this
                // transaction instead of racing it.
                let held = c.execute(
                    &format!("UPDATE cell_leases SET expires_at = expires_at WHERE cell = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > {now}"),
                    &params![&l.cell, &l.holder, l.epoch],
                )?;
                if held == 0 {
                    return Err(StoreError::Fenced(format!(
                        "this node's lease on cell {} (epoch {}) ran out or was taken over; the write was not made",
                        l.cell, l.epoch
                    )));
                }
            }
            f(c)
        })
    }

    fn read<T: Send>(&self, mut f: impl FnMut(&mut dyn Conn) -> Result<T> + Send) -> Result<T> {
        self.db.read(&mut f)
    }
}

const CONTAINER_COLS: &str = "id, tenant_id, barcode, load_name, location, created_at, slot";

/// The lowest position free at `location` (from 1), for a container put there; none in the bin.
fn free_slot(c: &mut dyn Conn, location: &str) -> Result<Option<i64>> {
    if location == DISCARDED {
        return Ok(None);
    }
    let taken: std::collections::BTreeSet<i64> = c
        .query("SELECT slot FROM containers WHERE location = ?1 AND slot IS NOT NULL", &params![location])?
        .iter()
        .filter_map(|r| r.opt_int(0).ok().flatten())
        .collect();
    Ok((1..).find(|n| !taken.contains(n)))
}

fn container_row(r: &Row) -> Result<Container> {
    Ok(Container {
        id: r.text(0)?,
        tenant_id: r.text(1)?,
        barcode: r.text(2)?,
        load_name: r.text(3)?,
        location: r.text(4)?,
        created_at: r.int(5)?,
        slot: r.opt_int(6)?,
        wells: Vec::new(),
        sources: Vec::new(),
    })
}

/// Where a container's wells' contents came from, by well.
fn sources_of(c: &mut dyn Conn, id: &str) -> Result<Vec<WellSource>> {
    let found =
        c.query("SELECT well, from_container, from_well FROM container_sources WHERE container_id = ?1", &params![id])?;
    let mut sources = found
        .iter()
        .map(|r| Ok(WellSource { well: r.text(0)?, from_container: r.text(1)?, from_well: r.text(2)? }))
        .collect::<Result<Vec<_>>>()?;
    sources.sort();
    Ok(sources)
}

/// A container's wells, by well then liquid.
fn wells_of(c: &mut dyn Conn, id: &str) -> Result<Vec<WellContent>> {
    let found =
        c.query("SELECT well, sample, liquid, volume_ul FROM container_wells WHERE container_id = ?1", &params![id])?;
    let mut wells = found
        .iter()
        .map(|r| Ok(WellContent { well: r.text(0)?, sample: r.text(1)?, liquid: r.text(2)?, volume_ul: r.real(3)? }))
        .collect::<Result<Vec<_>>>()?;
    wells.sort_by(|a, b| {
        // Row by row (A1, A2, …, B1): unparsable names last, as written.
        let key = |w: &WellContent| {
            labware::address::split_well_name(&w.well)
                .map_or((u8::MAX as usize, String::new(), 0), |(r, c)| (r.len(), r.to_string(), c))
        };
        key(a).cmp(&key(b)).then_with(|| a.liquid.cmp(&b.liquid))
    });
    Ok(wells)
}

/// A container's history entry from columns `seq, at, kind, detail, actor, location` at `from`.
fn history_row(r: &Row, from: usize) -> Result<ContainerEvent> {
    Ok(ContainerEvent {
        seq: r.int(from)?,
        at: r.int(from + 1)?,
        kind: r.text(from + 2)?,
        detail: r.text(from + 3)?,
        actor: r.text(from + 4)?,
        location: r.opt_text(from + 5)?,
    })
}

fn tenant_row(r: &Row) -> Result<Tenant> {
    Ok(Tenant {
        id: r.text(0)?,
        name: r.text(1)?,
        weight: r.real(2)?,
        priority: r.int(3)?,
        max_concurrent_runs: r.opt_int(4)?,
        device_hours_per_month: r.opt_real(5)?,
        created_at: r.int(6)?,
    })
}
const TENANT_COLS: &str = "id, name, weight, priority, max_concurrent_runs, device_hours_per_month, created_at";

fn run_row(r: &Row) -> Result<Run> {
    Ok(Run {
        id: r.text(0)?,
        tenant_id: r.text(1)?,
        idempotency_key: r.text(2)?,
        name: r.text(3)?,
        source: r.text(4)?,
        plan_json: r.text(5)?,
        state: RunState::parse(&r.text(6)?)?,
        reason: r.opt_text(7)?,
        priority: r.int(8)?,
        submitted_at: r.int(9)?,
        started_at: r.opt_int(10)?,
        finished_at: r.opt_int(11)?,
        cell: r.opt_text(12)?,
        class: service_class(&r.text(13)?)?,
    })
}
const RUN_COLS: &str = "id, tenant_id, idempotency_key, name, source, plan_json, state, reason, priority, submitted_at, started_at, finished_at, cell, service_class";

/// A service class as stored; anything else is a corrupt row, not a silent standard run.
fn service_class(s: &str) -> Result<labware::ServiceClass> {
    labware::ServiceClass::parse(s).map_err(|e| StoreError::Invalid(format!("stored run: {e}")))
}

fn lease_row(r: &Row) -> Result<Lease> {
    Ok(Lease { cell: r.text(0)?, holder: r.text(1)?, epoch: r.int(2)?, expires_at: r.int(3)? })
}
const LEASE_COLS: &str = "cell, holder, epoch, expires_at";

fn attempt_row(r: &Row) -> Result<Attempt> {
    Ok(Attempt {
        id: r.text(0)?,
        intent: Intent {
            run_id: r.text(1)?,
            task_id: r.int(2)?,
            command_index: r.int(3)?,
            instrument: r.text(4)?,
            op_json: r.text(5)?,
            repeatable: r.int(6)? != 0,
        },
        outcome: r.opt_text(7)?,
        error: r.opt_text(8)?,
        intent_at: r.int(9)?,
        outcome_at: r.opt_int(10)?,
    })
}
const ATTEMPT_COLS: &str =
    "id, run_id, task_id, command_index, instrument, op_json, repeatable, outcome, error, intent_at, outcome_at";

fn intervention_row(r: &Row) -> Result<Intervention> {
    Ok(Intervention {
        id: r.text(0)?,
        run_id: r.text(1)?,
        task_id: r.opt_int(2)?,
        instrument: r.opt_text(3)?,
        what: r.text(4)?,
        todo: r.text(5)?,
        state: r.text(6)?,
        created_at: r.int(7)?,
        resolved_at: r.opt_int(8)?,
        resolved_by: r.opt_text(9)?,
    })
}
const INTERVENTION_COLS: &str =
    "i.id, i.run_id, i.task_id, i.instrument, i.what, i.todo, i.state, i.created_at, i.resolved_at, i.resolved_by";

fn rows<T>(rows: Vec<Row>, f: impl Fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// Appends an event and its outbox row inside a transaction. The sequence is bumped first: the
/// row lock orders concurrent writers of one run.
/// Appends an event to a run that has not ended: nothing is added after a run's final state
/// (its `state` event is the last), so a late writer gets a conflict instead of extending a
/// history people have already read as complete.
fn append(c: &mut dyn Conn, dialect: Dialect, run_id: &str, kind: &str, payload_json: &str) -> Result<Event> {
    append_to(c, dialect, run_id, kind, payload_json, false)
}

/// [`append`]; `ending`: the events written with the run's final state, in its transaction.
fn append_to(
    c: &mut dyn Conn,
    dialect: Dialect,
    run_id: &str,
    kind: &str,
    payload_json: &str,
    ending: bool,
) -> Result<Event> {
    let sql = if ending {
        "UPDATE runs SET next_seq = next_seq + 1 WHERE id = ?1"
    } else {
        "UPDATE runs SET next_seq = next_seq + 1 WHERE id = ?1 AND state NOT IN ('succeeded', 'failed', 'cancelled')"
    };
    if c.execute(sql, &params![run_id])? == 0 {
        return match c.query_opt("SELECT state FROM runs WHERE id = ?1", &params![run_id])? {
            None => Err(StoreError::NotFound(format!("run {run_id}"))),
            Some(r) => Err(StoreError::Conflict(format!(
                "run {run_id} has ended ({}); nothing is added to it after its final state",
                r.text(0)?
            ))),
        };
    }
    let r = c.query_one("SELECT tenant_id, next_seq - 1 FROM runs WHERE id = ?1", &params![run_id], "run")?;
    let (tenant, seq) = (r.text(0)?, r.int(1)?);
    let at = now_ms();
    c.execute(
        "INSERT INTO events (run_id, seq, at, kind, payload_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        &params![run_id, seq, at, kind, payload_json],
    )?;
    let data: serde_json::Value = serde_json::from_str(payload_json).unwrap_or(serde_json::Value::Null);
    let header = envelope::RunHeader { tenant: &tenant, run: run_id, seq, ts: at };
    put_outbox(c, dialect, Some(&tenant), Some(run_id), Some(seq), &envelope::run_event(header, kind, &data))?;
    Ok(Event { run_id: run_id.to_string(), seq, at, kind: kind.to_string(), payload_json: payload_json.to_string() })
}

fn put_outbox(
    c: &mut dyn Conn,
    dialect: Dialect,
    tenant: Option<&str>,
    run: Option<&str>,
    seq: Option<i64>,
    message: &envelope::Message,
) -> Result<OutboxRow> {
    let position = c.query_one(dialect.next_outbox_position(), &[], "outbox position")?.int(0)?;
    let row = OutboxRow {
        id: new_id("out"),
        position,
        tenant_id: tenant.map(str::to_string),
        run_id: run.map(str::to_string),
        seq,
        topic: message.topic.clone(),
        payload_json: message.payload.clone(),
        created_at: now_ms(),
    };
    c.execute(
        "INSERT INTO outbox (id, position, tenant_id, run_id, seq, topic, payload_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        &params![&row.id, row.position, &row.tenant_id, &row.run_id, row.seq, &row.topic, &row.payload_json, row.created_at],
    )?;
    Ok(row)
}

/// Appends to a container's history and tells its owner over MQTT (an outbox row in the same
/// transaction, on the owner's topics only).
#[allow(clippy::too_many_arguments)]
fn container_history(
    c: &mut dyn Conn,
    dialect: Dialect,
    container_id: &str,
    seq: i64,
    at: Millis,
    kind: &str,
    detail: &str,
    actor: &str,
    location: Option<&str>,
) -> Result<()> {
    c.execute(
        "INSERT INTO container_history (container_id, seq, at, kind, detail, actor, location) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &params![container_id, seq, at, kind, detail, actor, location],
    )?;
    let k =
        c.query_one("SELECT tenant_id, barcode FROM containers WHERE id = ?1", &params![container_id], "container")?;
    let (tenant, barcode) = (k.text(0)?, k.text(1)?);
    let event = envelope::ContainerEvent {
        tenant: &tenant,
        container: container_id,
        barcode: &barcode,
        seq,
        ts: at,
        kind,
        detail,
        location,
    };
    put_outbox(c, dialect, Some(&tenant), None, None, &envelope::container_event(event))?;
    Ok(())
}

/// Writes an attempt's outcome, once.
fn set_outcome(c: &mut dyn Conn, attempt_id: &str, outcome: &str, error: Option<&str>) -> Result<()> {
    if !matches!(outcome, "ok" | "failed" | "unknown" | "not_done") {
        return Err(StoreError::Invalid(format!("outcome `{outcome}`: use ok, failed, unknown or not_done")));
    }
    let n = c.execute(
        "UPDATE attempts SET outcome = ?2, error = ?3, outcome_at = ?4 WHERE id = ?1 AND outcome IS NULL",
        &params![attempt_id, outcome, error, now_ms()],
    )?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("attempt {attempt_id} does not exist or already has an outcome")));
    }
    Ok(())
}

/// Checks that a run exists and, when scoped, belongs to the tenant.
fn owned(c: &mut dyn Conn, tenant: Option<&str>, run_id: &str) -> Result<()> {
    let owner = match c.query_opt("SELECT tenant_id FROM runs WHERE id = ?1", &params![run_id])? {
        Some(r) => Some(r.text(0)?),
        None => None,
    };
    match (owner, tenant) {
        (Some(o), Some(t)) if o == t => Ok(()),
        (Some(_), None) => Ok(()),
        _ => Err(StoreError::NotFound(format!("run {run_id}"))),
    }
}

/// Turns a missing row into `NotFound(what)`.
fn found(e: StoreError, what: impl FnOnce() -> String) -> StoreError {
    match e {
        StoreError::NotFound(_) => StoreError::NotFound(what()),
        other => other,
    }
}

impl<D: Db> Store for SqlStore<D> {
    fn create_tenant(&self, name: &str, weight: f64) -> Result<Tenant> {
        if name.chars().count() > 64 {
            return Err(StoreError::Invalid(format!(
                "a tenant name is at most 64 characters; this one has {}",
                name.chars().count()
            )));
        }
        if name.trim().is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(StoreError::Invalid(format!(
                "tenant name `{name}`: use letters, digits, - and _ (it appears in MQTT topics)"
            )));
        }
        if !(weight.is_finite() && weight > 0.0) {
            return Err(StoreError::Invalid(format!("tenant weight {weight}: give a positive number")));
        }
        let t = Tenant {
            id: new_id("ten"),
            name: name.into(),
            weight,
            priority: 0,
            max_concurrent_runs: None,
            device_hours_per_month: None,
            created_at: now_ms(),
        };
        self.tx(|c| {
            c.execute(
                "INSERT INTO tenants (id, name, weight, priority, created_at) VALUES (?1, ?2, ?3, 0, ?4)",
                &params![&t.id, &t.name, t.weight, t.created_at],
            )
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a tenant named `{name}` exists")),
                other => other,
            })
        })?;
        Ok(t)
    }

    fn tenant(&self, id: &str) -> Result<Tenant> {
        self.read(|c| {
            let r = c.query_one(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"), &params![id], "")?;
            tenant_row(&r)
        })
        .map_err(|e| found(e, || format!("tenant {id}")))
    }

    fn tenant_by_name(&self, name: &str) -> Result<Tenant> {
        self.read(|c| {
            let r = c.query_one(&format!("SELECT {TENANT_COLS} FROM tenants WHERE name = ?1"), &params![name], "")?;
            tenant_row(&r)
        })
        .map_err(|e| found(e, || format!("tenant `{name}`")))
    }

    fn tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|c| rows(c.query(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY name"), &[])?, tenant_row))
    }

    fn set_quotas(
        &self,
        id: &str,
        max_concurrent_runs: Option<i64>,
        device_hours_per_month: Option<f64>,
        priority: i64,
    ) -> Result<()> {
        if max_concurrent_runs.is_some_and(|n| n < 0)
            || device_hours_per_month.is_some_and(|h| !(h.is_finite() && h >= 0.0))
        {
            return Err(StoreError::Invalid("quotas must be zero or positive".into()));
        }
        self.tx(|c| {
            let n = c.execute(
                "UPDATE tenants SET max_concurrent_runs = ?2, device_hours_per_month = ?3, priority = ?4 WHERE id = ?1",
                &params![id, max_concurrent_runs, device_hours_per_month, priority],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("tenant {id}")));
            }
            Ok(())
        })
    }

    fn create_principal(
        &self,
        tenant_id: Option<&str>,
        role: Role,
        token_hash: &str,
        mqtt: Option<(&str, &str)>,
    ) -> Result<Principal> {
        if (role == Role::Scientist) != tenant_id.is_some() {
            return Err(StoreError::Invalid("a scientist belongs to a tenant; admins and technicians to none".into()));
        }
        let p = Principal {
            id: new_id("pri"),
            tenant_id: tenant_id.map(str::to_string),
            role,
            mqtt_username: mqtt.map(|m| m.0.to_string()),
            created_at: now_ms(),
            revoked_at: None,
            expires_at: None,
        };
        self.tx(|c| {
            c.execute(
                "INSERT INTO principals (id, tenant_id, role, token_hash, mqtt_username, mqtt_password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &params![&p.id, &p.tenant_id, role.as_str(), token_hash, mqtt.map(|m| m.0), mqtt.map(|m| m.1), p.created_at],
            )
        })?;
        Ok(p)
    }

    fn principal_by_token_hash(&self, token_hash: &str) -> Result<Principal> {
        let r = self.read(|c| {
            c.query_one(
                "SELECT id, tenant_id, role, mqtt_username, created_at, revoked_at, expires_at FROM principals WHERE token_hash = ?1 AND revoked_at IS NULL",
                &params![token_hash],
                "principal",
            )
        })?;
        Ok(Principal {
            id: r.text(0)?,
            tenant_id: r.opt_text(1)?,
            role: Role::parse(&r.text(2)?)?,
            mqtt_username: r.opt_text(3)?,
            created_at: r.int(4)?,
            revoked_at: r.opt_int(5)?,
            expires_at: r.opt_int(6)?,
        })
    }

    fn revoke_principal(&self, id: &str) -> Result<()> {
        self.tx(|c| {
            let n = c.execute(
                "UPDATE principals SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                &params![id, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("principal {id}")));
            }
            Ok(())
        })
    }

    fn mqtt_identities(&self) -> Result<Vec<crate::telemetry::MqttIdentity>> {
        let found = self.read(|c| {
            c.query(
                "SELECT mqtt_username, mqtt_password_hash, role, tenant_id FROM principals WHERE mqtt_username IS NOT NULL AND mqtt_password_hash IS NOT NULL AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) ORDER BY created_at, id",
                &params![now_ms()],
            )
        })?;
        rows(found, |r| {
            Ok(crate::telemetry::MqttIdentity {
                username: r.text(0)?,
                password_hash: r.text(1)?,
                role: Role::parse(&r.text(2)?)?,
                tenant_id: r.opt_text(3)?,
            })
        })
    }

    fn set_principal_expiry(&self, id: &str, expires_at: Millis) -> Result<()> {
        self.tx(|c| {
            if c.execute("UPDATE principals SET expires_at = ?2 WHERE id = ?1", &params![id, expires_at])? == 0 {
                return Err(StoreError::NotFound(format!("principal {id}")));
            }
            Ok(())
        })
    }

    fn hold_admission(&self) -> Result<AdmissionHold<'_>> {
        self.db.hold_admission()
    }

    fn submit_run(&self, run: &NewRun) -> Result<(Run, bool)> {
        if run.idempotency_key.is_empty() {
            return Err(StoreError::Invalid(
                "an idempotency key is required (any unique string per submission)".into(),
            ));
        }
        let dialect = self.db.dialect();
        let attempt = || {
            self.tx(|c| {
                let existing = c.query_opt(
                    &format!("SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?1 AND idempotency_key = ?2"),
                    &params![&run.tenant_id, &run.idempotency_key],
                )?;
                if let Some(r) = existing {
                    let r = run_row(&r)?;
                    if r.source != run.source || r.class != run.class {
                        return Err(StoreError::Invalid(format!(
                            "idempotency key `{}` was already used for a different submission (run {})",
                            run.idempotency_key, r.id
                        )));
                    }
                    return Ok((r, false));
                }
                let id = new_id("run");
                c.execute(
                    "INSERT INTO runs (id, tenant_id, idempotency_key, name, source, plan_json, state, priority, submitted_at, service_class) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?9)",
                    &params![&id, &run.tenant_id, &run.idempotency_key, &run.name, &run.source, &run.plan_json, run.priority, now_ms(), run.class.as_str()],
                )?;
                append(c, dialect, &id, "submitted", &serde_json::json!({"name": run.name}).to_string())?;
                if let Some(notify) = dialect.notify_submitted() {
                    c.execute(notify, &[])?;
                }
                let r = c.query_one(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), &params![&id], "run")?;
                Ok((run_row(&r)?, true))
            })
        };
        // Two submissions with one key racing on different connections: the loser's insert hits
        // the unique key; run again, it finds the winner's run.
        let out = match attempt() {
            Err(StoreError::Conflict(_)) => attempt(),
            other => other,
        };
        // A reused key is a conflict for the caller (reported as Invalid inside so that the
        // retry above only covers the race).
        out.map_err(|e| match e {
            StoreError::Invalid(m) if m.starts_with("idempotency key `") => StoreError::Conflict(m),
            other => other,
        })
    }

    fn run(&self, tenant: Option<&str>, id: &str) -> Result<Run> {
        let r = self
            .read(|c| run_row(&c.query_one(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), &params![id], "")?))
            .map_err(|e| found(e, || format!("run {id}")))?;
        if tenant.is_some_and(|t| t != r.tenant_id) {
            return Err(StoreError::NotFound(format!("run {id}")));
        }
        Ok(r)
    }

    fn runs(&self, tenant: Option<&str>, states: &[RunState]) -> Result<Vec<Run>> {
        // The states are our own words, never the caller's text: safe to write into the SQL.
        let in_states = if states.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
            format!(" AND state IN ({})", list.join(", "))
        };
        self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {RUN_COLS} FROM runs WHERE (CAST(?1 AS TEXT) IS NULL OR tenant_id = ?1){in_states} ORDER BY submitted_at, id"),
                    &params![tenant],
                )?,
                run_row,
            )
        })
    }

    fn set_run_state(&self, id: &str, state: RunState, reason: Option<&str>) -> Result<Event> {
        self.move_run(id, state, reason, &["queued", "running", "awaiting_recovery", "cancelling"])?
            .ok_or_else(|| StoreError::Backend(format!("run {id} did not move")))
    }

    fn hold_run(&self, id: &str, held: bool, reason: Option<&str>) -> Result<Option<Event>> {
        let (to, from) =
            if held { (RunState::AwaitingRecovery, "running") } else { (RunState::Running, "awaiting_recovery") };
        match self.move_run(id, to, reason, &[from]) {
            Err(StoreError::Conflict(_)) => Ok(None),
            other => other,
        }
    }

    fn append_event(&self, run_id: &str, kind: &str, payload_json: &str) -> Result<Event> {
        if serde_json::from_str::<serde_json::Value>(payload_json).is_err() {
            return Err(StoreError::Invalid(format!("event payload for {run_id} is not JSON")));
        }
        // A run's history is journaled like its commands: appends commit in groups under load.
        let dialect = self.db.dialect();
        let appended: Arc<std::sync::Mutex<Option<Event>>> = Arc::default();
        let (slot, run, kind, payload) =
            (appended.clone(), run_id.to_string(), kind.to_string(), payload_json.to_string());
        self.journaled(Box::new(move |c: &mut dyn Conn| {
            let e = append(c, dialect, &run, &kind, &payload)?;
            *slot.lock().map_err(|_| StoreError::Backend("an event's slot is poisoned".into()))? = Some(e);
            Ok(())
        }))?;
        let e = appended.lock().map_err(|_| StoreError::Backend("an event's slot is poisoned".into()))?.take();
        e.ok_or_else(|| StoreError::Backend(format!("the event for {run_id} was committed but not returned")))
    }

    fn events(&self, tenant: Option<&str>, run_id: &str, after: i64) -> Result<Vec<Event>> {
        self.read(|c| {
            owned(c, tenant, run_id)?;
            let found = c.query(
                "SELECT run_id, seq, at, kind, payload_json FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
                &params![run_id, after],
            )?;
            rows(found, |r| {
                Ok(Event {
                    run_id: r.text(0)?,
                    seq: r.int(1)?,
                    at: r.int(2)?,
                    kind: r.text(3)?,
                    payload_json: r.text(4)?,
                })
            })
        })
    }

    fn record_intent(&self, i: &Intent) -> Result<Attempt> {
        self.record_ok_then_intent(None, i)
    }

    fn record_ok_then_intent(&self, previous: Option<&str>, i: &Intent) -> Result<Attempt> {
        let a = Attempt {
            id: new_id("att"),
            intent: i.clone(),
            outcome: None,
            error: None,
            intent_at: now_ms(),
            outcome_at: None,
        };
        let (previous, row) = (previous.map(str::to_string), a.clone());
        self.journaled(Box::new(move |c: &mut dyn Conn| {
            if let Some(prev) = &previous {
                set_outcome(c, prev, "ok", None)?;
            }
            let i = &row.intent;
            c.execute(
                &format!(
                    "INSERT INTO attempts ({ATTEMPT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8, NULL)"
                ),
                &params![
                    &row.id,
                    &i.run_id,
                    i.task_id,
                    i.command_index,
                    &i.instrument,
                    &i.op_json,
                    i.repeatable as i64,
                    row.intent_at
                ],
            )?;
            Ok(())
        }))?;
        Ok(a)
    }

    fn record_outcome(&self, attempt_id: &str, outcome: &str, error: Option<&str>) -> Result<()> {
        let (id, outcome, error) = (attempt_id.to_string(), outcome.to_string(), error.map(str::to_string));
        self.journaled(Box::new(move |c: &mut dyn Conn| set_outcome(c, &id, &outcome, error.as_deref())))
    }

    fn open_attempts(&self) -> Result<Vec<Attempt>> {
        self.read(|c| {
            let found = c.query(
                &format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE outcome IS NULL ORDER BY intent_at, id"),
                &[],
            )?;
            rows(found, attempt_row)
        })
    }

    fn receive_containers(
        &self,
        tenant: &str,
        containers: &[NewContainer],
        location: &str,
        actor: &str,
        shipment: Option<&str>,
    ) -> Result<Vec<Container>> {
        let at = now_ms();
        let made: Vec<Container> = containers
            .iter()
            .map(|n| Container {
                id: new_id("con"),
                tenant_id: tenant.into(),
                barcode: n.barcode.clone(),
                load_name: n.load_name.clone(),
                location: location.into(),
                created_at: at,
                slot: None,
                wells: n.wells.clone(),
                // What was shipped is where lineage starts.
                sources: Vec::new(),
            })
            .collect();
        let dialect = self.db.dialect();
        let slots = self.tx(|c| {
            let mut slots = Vec::with_capacity(made.len());
            for k in &made {
                let slot = free_slot(c, &k.location)?;
                slots.push(slot);
                c.execute(
                    "INSERT INTO containers (id, tenant_id, barcode, load_name, location, created_at, slot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    &params![&k.id, &k.tenant_id, &k.barcode, &k.load_name, &k.location, k.created_at, slot],
                )
                .map_err(|e| match e {
                    StoreError::Conflict(_) => {
                        StoreError::Conflict(format!("barcode `{}` is already on a container of this lab", k.barcode))
                    }
                    other => other,
                })?;
                for w in &k.wells {
                    c.execute(
                        "INSERT INTO container_wells (container_id, well, sample, liquid, volume_ul) VALUES (?1, ?2, ?3, ?4, ?5)",
                        &params![&k.id, &w.well, &w.sample, &w.liquid, w.volume_ul],
                    )?;
                }
                let detail = format!("received at {location}: {} well(s)", k.wells.len());
                container_history(c, dialect, &k.id, 1, at, "received", &detail, actor, Some(location))?;
            }
            if let Some(id) = shipment {
                shipments::mark_received(c, tenant, id, at, actor)?;
            }
            Ok(slots)
        })?;
        Ok(made.into_iter().zip(slots).map(|(k, slot)| Container { slot, ..k }).collect())
    }

    fn declare_shipment(&self, tenant: &str, manifest: &str, barcodes: &[String], actor: &str) -> Result<Shipment> {
        self.declare_shipment_in(tenant, manifest, barcodes, actor)
    }

    fn open_shipments(&self, tenant: Option<&str>) -> Result<Vec<Shipment>> {
        self.open_shipments_in(tenant)
    }

    fn shipment(&self, tenant: Option<&str>, id: &str) -> Result<Shipment> {
        self.shipment_in(tenant, id)
    }

    fn containers(&self, tenant: Option<&str>) -> Result<Vec<Container>> {
        self.read(|c| {
            let found = c.query(
                &format!("SELECT {CONTAINER_COLS} FROM containers WHERE (CAST(?1 AS TEXT) IS NULL OR tenant_id = ?1) ORDER BY created_at, barcode"),
                &params![tenant],
            )?;
            let mut out = Vec::with_capacity(found.len());
            for r in &found {
                let mut k = container_row(r)?;
                k.wells = wells_of(c, &k.id)?;
                k.sources = sources_of(c, &k.id)?;
                out.push(k);
            }
            Ok(out)
        })
    }

    fn container(&self, tenant: Option<&str>, id_or_barcode: &str) -> Result<Container> {
        self.read(|c| {
            let r = c.query_one(
                &format!("SELECT {CONTAINER_COLS} FROM containers WHERE (id = ?1 OR barcode = ?1) AND (CAST(?2 AS TEXT) IS NULL OR tenant_id = ?2)"),
                &params![id_or_barcode, tenant],
                "",
            )?;
            let mut k = container_row(&r)?;
            k.wells = wells_of(c, &k.id)?;
            k.sources = sources_of(c, &k.id)?;
            Ok(k)
        })
        .map_err(|e| found(e, || format!("container `{id_or_barcode}`")))
    }

    fn container_history(&self, container_id: &str) -> Result<Vec<ContainerEvent>> {
        self.read(|c| {
            let found = c.query(
                "SELECT seq, at, kind, detail, actor, location FROM container_history WHERE container_id = ?1 ORDER BY seq",
                &params![container_id],
            )?;
            found.iter().map(|r| history_row(r, 0)).collect()
        })
    }

    fn container_histories(&self, tenant: Option<&str>) -> Result<Vec<(String, String, Vec<ContainerEvent>)>> {
        self.read(|c| {
            let found = c.query(
                "SELECT h.seq, h.at, h.kind, h.detail, h.actor, h.location, k.tenant_id, h.container_id FROM container_history h JOIN containers k ON k.id = h.container_id WHERE (CAST(?1 AS TEXT) IS NULL OR k.tenant_id = ?1) ORDER BY h.container_id, h.seq",
                &params![tenant],
            )?;
            let mut out: Vec<(String, String, Vec<ContainerEvent>)> = Vec::new();
            for r in &found {
                let (tenant, container) = (r.text(6)?, r.text(7)?);
                let event = history_row(r, 0)?;
                match out.last_mut() {
                    Some(last) if last.1 == container => last.2.push(event),
                    _ => out.push((tenant, container, vec![event])),
                }
            }
            Ok(out)
        })
    }

    fn use_container(&self, run_id: &str, container_id: &str, drawn: &[(String, f64)], actor: &str) -> Result<bool> {
        let at = now_ms();
        let used = format!("run {run_id}:");
        let dialect = self.db.dialect();
        self.tx(|c| {
            let history = c.query(
                "SELECT seq, detail FROM container_history WHERE container_id = ?1 ORDER BY seq",
                &params![container_id],
            )?;
            if history.iter().any(|r| r.text(1).is_ok_and(|d| d.starts_with(&used))) {
                return Ok(false);
            }
            let next = history.iter().filter_map(|r| r.int(0).ok()).max().unwrap_or(0) + 1;
            let mut said = Vec::new();
            for (well, ul) in drawn {
                let liquids = c.query(
                    "SELECT liquid, volume_ul FROM container_wells WHERE container_id = ?1 AND well = ?2",
                    &params![container_id, well],
                )?;
                let total: f64 = liquids.iter().filter_map(|r| r.real(1).ok()).sum();
                let keep = if total > 0.0 { ((total - ul) / total).max(0.0) } else { 0.0 };
                for r in &liquids {
                    let (liquid, v) = (r.text(0)?, r.real(1)?);
                    c.execute(
                        "UPDATE container_wells SET volume_ul = ?4 WHERE container_id = ?1 AND well = ?2 AND liquid = ?3",
                        &params![container_id, well, &liquid, v * keep],
                    )?;
                }
                said.push(format!("{well} {} µL", crate::store::trim_ul(*ul)));
            }
            let detail = format!("{used} drew {}", said.join(", "));
            container_history(c, dialect, container_id, next, at, "used", &detail, actor, None)?;
            Ok(true)
        })
    }

    fn make_container(
        &self,
        run_id: &str,
        tenant: &str,
        container: &NewContainer,
        location: &str,
    ) -> Result<Option<Container>> {
        let at = now_ms();
        let made = format!("made by run {run_id}");
        let k = Container {
            id: new_id("con"),
            tenant_id: tenant.into(),
            barcode: container.barcode.clone(),
            load_name: container.load_name.clone(),
            location: location.into(),
            created_at: at,
            slot: None,
            wells: container.wells.clone(),
            sources: container.sources.clone(),
        };
        let dialect = self.db.dialect();
        self.tx(|c| {
            let held = c.query("SELECT id FROM containers WHERE barcode = ?1", &params![&k.barcode])?;
            if let Some(r) = held.first() {
                let id = r.text(0)?;
                let first = c.query(
                    "SELECT detail FROM container_history WHERE container_id = ?1 AND seq = 1",
                    &params![&id],
                )?;
                return match first.first().map(|r| r.text(0)).transpose()? {
                    Some(d) if d.starts_with(&made) => Ok(None),
                    _ => Err(StoreError::Conflict(format!("barcode `{}` is already on a container of this lab", k.barcode))),
                };
            }
            let slot = free_slot(c, &k.location)?;
            c.execute(
                "INSERT INTO containers (id, tenant_id, barcode, load_name, location, created_at, slot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &params![&k.id, &k.tenant_id, &k.barcode, &k.load_name, &k.location, k.created_at, slot],
            )?;
            for w in &k.wells {
                c.execute(
                    "INSERT INTO container_wells (container_id, well, sample, liquid, volume_ul) VALUES (?1, ?2, ?3, ?4, ?5)",
                    &params![&k.id, &w.well, &w.sample, &w.liquid, w.volume_ul],
                )?;
            }
            for w in &k.sources {
                c.execute(
                    "INSERT INTO container_sources (container_id, well, from_container, from_well) VALUES (?1, ?2, ?3, ?4)",
                    &params![&k.id, &w.well, &w.from_container, &w.from_well],
                )?;
            }
            let detail = format!("{made}, stored at {location}: {} well(s)", k.wells.len());
            container_history(c, dialect, &k.id, 1, at, "made", &detail, "labd", Some(location))?;
            Ok(Some(Container { slot, ..k.clone() }))
        })
    }

    fn shelve_container(&self, run_id: &str, container_id: &str, location: Option<&str>) -> Result<bool> {
        let at = now_ms();
        let after = format!("after run {run_id}:");
        let (kind, to) = match location {
            Some(l) => ("stored", l),
            None => ("discarded", DISCARDED),
        };
        let dialect = self.db.dialect();
        self.tx(|c| {
            let history = c.query(
                "SELECT seq, detail FROM container_history WHERE container_id = ?1 ORDER BY seq",
                &params![container_id],
            )?;
            if history.is_empty() {
                return Err(StoreError::NotFound(format!("container `{container_id}`")));
            }
            if history.iter().any(|r| r.text(1).is_ok_and(|d| d.starts_with(&after))) {
                return Ok(false);
            }
            let next = history.iter().filter_map(|r| r.int(0).ok()).max().unwrap_or(0) + 1;
            // Back where it was keeps its position; anywhere else, the lowest free one there.
            let was = c.query("SELECT location FROM containers WHERE id = ?1", &params![container_id])?;
            if was.first().map(|r| r.text(0)).transpose()?.as_deref() != Some(to) {
                let slot = free_slot(c, to)?;
                c.execute(
                    "UPDATE containers SET location = ?2, slot = ?3 WHERE id = ?1",
                    &params![container_id, to, slot],
                )?;
            }
            let detail = format!("{after} {kind} ({to})");
            container_history(c, dialect, container_id, next, at, kind, &detail, "labd", Some(to))?;
            Ok(true)
        })
    }

    fn receive_lot(&self, reagent: &str, lot: &str, expires_on: &str, volume_ul: f64) -> Result<ReagentLot> {
        self.receive_lot_in(reagent, lot, expires_on, volume_ul)
    }

    fn set_consumable(&self, load_name: &str, on_hand: i64, reorder_at: i64) -> Result<ConsumableStock> {
        self.set_consumable_in(load_name, on_hand, reorder_at)
    }

    fn stock(&self) -> Result<(Vec<ReagentLot>, Vec<ConsumableStock>)> {
        self.stock_in()
    }

    fn issue_pick_list(&self, run_id: &str, items: &[PickItem]) -> Result<Vec<PickItem>> {
        self.issue_pick_list_in(run_id, items)
    }

    fn pick_list(&self, run_id: &str) -> Result<Vec<PickItem>> {
        self.pick_list_in(run_id)
    }

    fn open_picks(&self) -> Result<Vec<PickItem>> {
        self.open_picks_in()
    }

    fn reserved_lots(&self, except_run: &str) -> Result<Vec<(String, f64)>> {
        self.reserved_lots_in(except_run)
    }

    fn record_duration(&self, d: &crate::experience::TaskDuration) -> Result<bool> {
        self.record_duration_in(d)
    }

    fn task_durations(&self, limit: usize) -> Result<Vec<crate::experience::TaskDuration>> {
        self.task_durations_in(limit)
    }

    fn record_audit(&self, e: &NewAudit) -> Result<AuditEntry> {
        self.record_audit_in(e)
    }

    fn audit(&self, since: Millis, limit: usize) -> Result<Vec<AuditEntry>> {
        self.audit_in(since, limit)
    }

    fn confirm_picks(&self, run_id: &str, scans: &[(i64, String)], by: &str) -> Result<Vec<PickItem>> {
        self.confirm_picks_in(run_id, scans, by)
    }

    fn consume(
        &self,
        run_id: &str,
        tenant_id: &str,
        used: &protocols::consumables::Consumption,
        today: &str,
    ) -> Result<Vec<Consumed>> {
        self.consume_in(run_id, tenant_id, used, today)
    }

    fn consumed(&self, tenant: Option<&str>, since: Millis) -> Result<Vec<Consumed>> {
        self.consumed_in(tenant, since)
    }

    fn last_done_on(&self, instrument: &str, before: Millis) -> Result<Option<Attempt>> {
        self.read(|c| {
            let found = c.query(
                &format!(
                    "SELECT {ATTEMPT_COLS} FROM attempts WHERE instrument = ?1 AND outcome = 'ok' AND intent_at <= ?2 ORDER BY intent_at DESC, id DESC LIMIT 1"
                ),
                &params![instrument, before],
            )?;
            Ok(rows(found, attempt_row)?.into_iter().next())
        })
    }

    fn attempts(&self, run_id: &str) -> Result<Vec<Attempt>> {
        self.read(|c| {
            let found = c.query(
                &format!(
                    "SELECT {ATTEMPT_COLS} FROM attempts WHERE run_id = ?1 ORDER BY task_id, command_index, intent_at"
                ),
                &params![run_id],
            )?;
            rows(found, attempt_row)
        })
    }

    fn add_result(&self, row: &ResultRow) -> Result<Event> {
        let per = if row.kind == "absorbance" { row.wavelengths_nm.len().max(1) } else { 1 };
        if row.values.len() != row.wells.len() * per {
            return Err(StoreError::Invalid(format!(
                "{} values for {} wells × {per}",
                row.values.len(),
                row.wells.len()
            )));
        }
        let json = |v: &dyn erased::Json| v.json();
        let dialect = self.db.dialect();
        self.tx(|c| {
            c.execute(
                "INSERT INTO results (id, run_id, task_id, labware, kind, wells_json, wavelengths_json, values_json, unit, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                &params![&row.id, &row.run_id, row.task_id, &row.labware, &row.kind, json(&row.wells), json(&row.wavelengths_nm), json(&row.values), &row.unit, row.created_at],
            )?;
            let summary = serde_json::json!({"result": row.id, "labware": row.labware, "kind": row.kind, "wells": row.wells.len(), "unit": row.unit});
            let ev = append(c, dialect, &row.run_id, "result", &summary.to_string())?;
            let tenant = c.query_one("SELECT tenant_id FROM runs WHERE id = ?1", &params![&row.run_id], "run")?.text(0)?;
            // Subscribers get the values themselves (the relay summarises what the broker could not carry).
            let data = serde_json::json!({"result": row.id, "labware": row.labware, "kind": row.kind, "wells": row.wells, "wavelengths_nm": row.wavelengths_nm, "values": row.values, "unit": row.unit});
            let header = envelope::RunHeader { tenant: &tenant, run: &row.run_id, seq: ev.seq, ts: ev.at };
            put_outbox(c, dialect, Some(&tenant), Some(&row.run_id), Some(ev.seq), &envelope::run_result(header, &data))?;
            Ok(ev)
        })
    }

    fn results(&self, tenant: Option<&str>, run_id: &str) -> Result<Vec<ResultRow>> {
        let found = self.read(|c| {
            owned(c, tenant, run_id)?;
            c.query("SELECT id, run_id, task_id, labware, kind, wells_json, wavelengths_json, values_json, unit, created_at FROM results WHERE run_id = ?1 ORDER BY created_at, id", &params![run_id])
        })?;
        rows(found, |r| {
            let id = r.text(0)?;
            let bad = |e: serde_json::Error| StoreError::Backend(format!("result {id} is corrupt: {e}"));
            Ok(ResultRow {
                wells: serde_json::from_str(&r.text(5)?).map_err(bad)?,
                wavelengths_nm: serde_json::from_str(&r.text(6)?).map_err(bad)?,
                values: serde_json::from_str(&r.text(7)?).map_err(bad)?,
                run_id: r.text(1)?,
                task_id: r.int(2)?,
                labware: r.text(3)?,
                kind: r.text(4)?,
                unit: r.text(8)?,
                created_at: r.int(9)?,
                id,
            })
        })
    }

    fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRow>> {
        let found = self.read(|c| {
            c.query(
                "SELECT id, position, tenant_id, run_id, seq, topic, payload_json, created_at FROM outbox WHERE sent_at IS NULL ORDER BY position LIMIT ?1",
                &params![limit as i64],
            )
        })?;
        rows(found, |r| {
            Ok(OutboxRow {
                id: r.text(0)?,
                position: r.int(1)?,
                tenant_id: r.opt_text(2)?,
                run_id: r.opt_text(3)?,
                seq: r.opt_int(4)?,
                topic: r.text(5)?,
                payload_json: r.text(6)?,
                created_at: r.int(7)?,
            })
        })
    }

    fn outbox_mark_sent(&self, ids: &[String]) -> Result<()> {
        self.tx(|c| {
            let at = now_ms();
            for id in ids {
                c.execute("UPDATE outbox SET sent_at = ?2 WHERE id = ?1 AND sent_at IS NULL", &params![id, at])?;
            }
            Ok(())
        })
    }

    fn outbox_put(&self, message: &envelope::Message) -> Result<OutboxRow> {
        let dialect = self.db.dialect();
        self.tx(|c| put_outbox(c, dialect, None, None, None, message))
    }

    fn open_intervention(
        &self,
        run_id: &str,
        task_id: Option<i64>,
        instrument: Option<&str>,
        what: &str,
        todo: &str,
    ) -> Result<Intervention> {
        let i = Intervention {
            id: new_id("int"),
            run_id: run_id.into(),
            task_id,
            instrument: instrument.map(str::to_string),
            what: what.into(),
            todo: todo.into(),
            state: "open".into(),
            created_at: now_ms(),
            resolved_at: None,
            resolved_by: None,
        };
        let dialect = self.db.dialect();
        self.tx(|c| {
            c.execute(
                "INSERT INTO interventions (id, run_id, task_id, instrument, what, todo, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7)",
                &params![&i.id, &i.run_id, i.task_id, &i.instrument, &i.what, &i.todo, i.created_at],
            )?;
            let payload = serde_json::json!({"intervention": i.id, "what": what, "todo": todo}).to_string();
            append(c, dialect, run_id, "intervention", &payload)
        })?;
        tracing::info!(intervention = %i.id, run = %i.run_id, instrument = i.instrument.as_deref().unwrap_or(""), "intervention opened");
        crate::metrics::with(|m| m.interventions_opened.inc());
        Ok(i)
    }

    fn interventions(&self, tenant: Option<&str>, only_open: bool) -> Result<Vec<Intervention>> {
        self.read(|c| {
            let found = c.query(
                &format!("SELECT {INTERVENTION_COLS} FROM interventions i JOIN runs r ON r.id = i.run_id WHERE (CAST(?1 AS TEXT) IS NULL OR r.tenant_id = ?1) AND (?2 = 0 OR i.state = 'open') ORDER BY i.created_at, i.id"),
                &params![tenant, only_open as i64],
            )?;
            rows(found, intervention_row)
        })
    }

    fn intervention(&self, id: &str) -> Result<Intervention> {
        self.read(|c| {
            c.query_one(
                &format!("SELECT {INTERVENTION_COLS} FROM interventions i WHERE i.id = ?1"),
                &params![id],
                &format!("intervention {id}"),
            )
            .and_then(|r| intervention_row(&r))
        })
    }

    fn resolve_intervention(&self, id: &str, resolution: &str, by: &str) -> Result<Intervention> {
        if !matches!(resolution, "done" | "redo" | "abort") {
            return Err(StoreError::Invalid(format!("resolution `{resolution}`: use done, redo or abort")));
        }
        let dialect = self.db.dialect();
        self.tx(|c| {
            let n = c.execute(
                "UPDATE interventions SET state = ?2, resolved_at = ?3, resolved_by = ?4 WHERE id = ?1 AND state = 'open'",
                &params![id, resolution, now_ms(), by],
            )?;
            let i = c
                .query_one(
                    &format!("SELECT {INTERVENTION_COLS} FROM interventions i WHERE i.id = ?1"),
                    &params![id],
                    &format!("intervention {id}"),
                )
                .and_then(|r| intervention_row(&r))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("intervention {id} was already resolved as {}", i.state)));
            }
            // The run's history says so while the run goes on; an instrument check resolved after
            // the run ended is recorded here only (its history ended with its final state).
            let ended = c
                .query_opt(
                    "SELECT 1 FROM runs WHERE id = ?1 AND state IN ('succeeded', 'failed', 'cancelled')",
                    &params![&i.run_id],
                )?
                .is_some();
            if !ended {
                let payload = serde_json::json!({"intervention": id, "resolution": resolution}).to_string();
                append(c, dialect, &i.run_id, "intervention_resolved", &payload)?;
            }
            Ok(i)
        })
        .inspect(|i| tracing::info!(intervention = %i.id, run = %i.run_id, resolution, by, "intervention resolved"))
    }

    fn add_reservation(&self, r: &Reservation) -> Result<()> {
        if r.ends_at <= r.starts_at {
            return Err(StoreError::Invalid("a reservation must end after it starts".into()));
        }
        self.tx(|c| {
            c.execute(
                "INSERT INTO reservations (id, tenant_id, instrument_class, starts_at, ends_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                &params![&r.id, &r.tenant_id, &r.instrument_class, r.starts_at, r.ends_at],
            )
        })?;
        Ok(())
    }

    fn reservations(&self, tenant: Option<&str>) -> Result<Vec<Reservation>> {
        let found = self.read(|c| {
            c.query(
                "SELECT id, tenant_id, instrument_class, starts_at, ends_at FROM reservations WHERE (CAST(?1 AS TEXT) IS NULL OR tenant_id = ?1) ORDER BY starts_at, id",
                &params![tenant],
            )
        })?;
        rows(found, |r| {
            Ok(Reservation {
                id: r.text(0)?,
                tenant_id: r.text(1)?,
                instrument_class: r.text(2)?,
                starts_at: r.int(3)?,
                ends_at: r.int(4)?,
            })
        })
    }

    fn set_maintenance(&self, instrument: &str, on: Option<(&str, &str)>) -> Result<()> {
        self.tx(|c| match on {
            Some((reason, by)) => c.execute(
                "INSERT INTO maintenance (instrument, reason, set_by, since) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (instrument) DO UPDATE SET reason = excluded.reason, set_by = excluded.set_by",
                &params![instrument, reason, by, now_ms()],
            ),
            None => c.execute("DELETE FROM maintenance WHERE instrument = ?1", &params![instrument]),
        })?;
        Ok(())
    }

    fn maintenance(&self) -> Result<Vec<Maintenance>> {
        let found = self
            .read(|c| c.query("SELECT instrument, reason, set_by, since FROM maintenance ORDER BY instrument", &[]))?;
        rows(found, |r| {
            Ok(Maintenance { instrument: r.text(0)?, reason: r.text(1)?, set_by: r.text(2)?, since: r.int(3)? })
        })
    }

    fn add_usage(&self, u: &Usage) -> Result<()> {
        if !(u.device_seconds.is_finite() && u.device_seconds >= 0.0) {
            return Err(StoreError::Invalid(format!("device seconds {}", u.device_seconds)));
        }
        self.tx(|c| {
            c.execute(
                "INSERT INTO usage (id, tenant_id, run_id, instrument_class, instrument, device_seconds, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &params![new_id("use"), &u.tenant_id, &u.run_id, &u.instrument_class, &u.instrument, u.device_seconds, now_ms()],
            )
        })?;
        Ok(())
    }

    fn usage(&self, tenant: Option<&str>, since: Millis) -> Result<Vec<UsageTotal>> {
        let found = self.read(|c| {
            c.query(
                "SELECT u.tenant_id, u.instrument_class, COALESCE(r.service_class, 'standard') AS class, SUM(u.device_seconds) FROM usage u LEFT JOIN runs r ON r.id = u.run_id WHERE (CAST(?1 AS TEXT) IS NULL OR u.tenant_id = ?1) AND u.at >= ?2 GROUP BY u.tenant_id, u.instrument_class, class ORDER BY u.tenant_id, u.instrument_class, class",
                &params![tenant, since],
            )
        })?;
        rows(found, |r| {
            Ok(UsageTotal {
                tenant_id: r.text(0)?,
                instrument_class: r.text(1)?,
                service_class: service_class(&r.text(2)?)?,
                device_seconds: r.real(3)?,
            })
        })
    }

    fn acquire_lease(&self, cell: &str, holder: &str, ttl_ms: i64) -> Result<Option<Lease>> {
        let now = self.db.dialect().now_ms();
        self.tx(|c| {
            let taken = c.execute(
                &format!("UPDATE cell_leases SET holder = ?2, epoch = epoch + 1, expires_at = {now} + ?3 WHERE cell = ?1 AND expires_at <= {now}"),
                &params![cell, holder, ttl_ms],
            )?;
            let created = taken == 0
                && c.execute(
                    &format!("INSERT INTO cell_leases ({LEASE_COLS}) VALUES (?1, ?2, 1, {now} + ?3) ON CONFLICT (cell) DO NOTHING"),
                    &params![cell, holder, ttl_ms],
                )? == 1;
            if taken == 0 && !created {
                return Ok(None);
            }
            let r = c.query_one(&format!("SELECT {LEASE_COLS} FROM cell_leases WHERE cell = ?1"), &params![cell], "lease")?;
            lease_row(&r).map(Some)
        })
    }

    fn renew_lease(&self, lease: &Lease, ttl_ms: i64) -> Result<Option<Lease>> {
        let now = self.db.dialect().now_ms();
        self.tx(|c| {
            let n = c.execute(
                &format!("UPDATE cell_leases SET expires_at = {now} + ?4 WHERE cell = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > {now}"),
                &params![&lease.cell, &lease.holder, lease.epoch, ttl_ms],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let r = c.query_one(&format!("SELECT {LEASE_COLS} FROM cell_leases WHERE cell = ?1"), &params![&lease.cell], "lease")?;
            lease_row(&r).map(Some)
        })
    }

    fn release_lease(&self, lease: &Lease) -> Result<()> {
        self.tx(|c| {
            c.execute(
                "UPDATE cell_leases SET expires_at = 0 WHERE cell = ?1 AND holder = ?2 AND epoch = ?3",
                &params![&lease.cell, &lease.holder, lease.epoch],
            )
        })?;
        Ok(())
    }

    fn leases(&self) -> Result<Vec<Lease>> {
        self.read(|c| rows(c.query(&format!("SELECT {LEASE_COLS} FROM cell_leases ORDER BY cell"), &[])?, lease_row))
    }

    fn set_plan(&self, run_id: &str, plan_json: &str) -> Result<bool> {
        let set = self.tx(|c| {
            c.execute(
                "UPDATE runs SET plan_json = ?2 WHERE id = ?1 AND started_at IS NULL",
                &params![run_id, plan_json],
            )
        })?;
        Ok(set == 1)
    }

    fn claim_run(&self, run_id: &str, cell: &str) -> Result<bool> {
        let dialect = self.db.dialect();
        self.tx(|c| {
            // Another node claiming the same run holds its row: skip it rather than wait.
            let free = c.query_opt(
                &format!(
                    "SELECT id FROM runs WHERE id = ?1 AND cell IS NULL AND state = 'queued'{}",
                    dialect.skip_locked()
                ),
                &params![run_id],
            )?;
            if free.is_none()
                || c.execute("UPDATE runs SET cell = ?2 WHERE id = ?1 AND cell IS NULL", &params![run_id, cell])? == 0
            {
                return Ok(false);
            }
            append(c, dialect, run_id, "placed", &serde_json::json!({"cell": cell}).to_string())?;
            Ok(true)
        })
    }

    fn cell_loads(&self) -> Result<Vec<(String, i64)>> {
        let found = self.read(|c| {
            c.query(
                "SELECT cell, COUNT(*) FROM runs WHERE cell IS NOT NULL AND state IN ('queued', 'running', 'awaiting_recovery', 'cancelling') GROUP BY cell ORDER BY cell",
                &[],
            )
        })?;
        rows(found, |r| Ok((r.text(0)?, r.int(1)?)))
    }

    fn written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.written.subscribe()
    }

    fn check_writable(&self) -> Result<()> {
        self.db.tx(&mut |_| Ok(()))
    }

    fn fenced(&self, lease: &Lease) -> Arc<dyn Store> {
        Arc::new(SqlStore {
            db: self.db.clone(),
            fence: Some(lease.clone()),
            written: self.written.clone(),
            // Its own group: a batch commits under one lease's fence.
            journal: self.journal.as_ref().map(|_| Arc::default()),
        })
    }
}

/// JSON text of a list (wells, wavelengths, values).
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for Vec<T> {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|_| "[]".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_files_split_into_statements() {
        let s = statements(
            "-- head\nCREATE TABLE a (x INT);\n\n-- two\nCREATE INDEX i ON a (x);\nALTER TABLE a ADD y INT;",
        );
        assert_eq!(
            s,
            ["-- head\nCREATE TABLE a (x INT)", "-- two\nCREATE INDEX i ON a (x)", "ALTER TABLE a ADD y INT"]
        );
        assert_eq!(statements("-- only a comment\n"), Vec::<&str>::new());
    }
}
