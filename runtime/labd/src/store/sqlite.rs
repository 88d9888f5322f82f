//! The embedded SQLite backend: one connection behind a mutex (SQLite has one writer anyway),
//! WAL journal, `synchronous=FULL` so a committed transaction survives power loss.

use super::*;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::Mutex;

/// SQLite-backed [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
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

impl SqliteStore {
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
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(backend)?;
        let store = SqliteStore { conn: Mutex::new(conn) };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        self.tx(|tx| {
            let current: i64 = tx
                .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))
                .map_err(backend)?;
            for (version, sql) in MIGRATIONS {
                if *version > current {
                    tx.execute_batch(sql).map_err(|e| StoreError::Backend(format!("migration {version}: {e}")))?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                        params![version, now_ms()],
                    )
                    .map_err(backend)?;
                }
            }
            Ok(())
        })
    }

    /// Runs `f` in one IMMEDIATE transaction (the write lock is taken at the start, so two
    /// writers never deadlock upgrading).
    fn tx<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let out = f(&tx)?;
        tx.commit().map_err(backend)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock().map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
        f(&conn)
    }
}

fn tenant_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        weight: r.get(2)?,
        priority: r.get(3)?,
        max_concurrent_runs: r.get(4)?,
        device_hours_per_month: r.get(5)?,
        created_at: r.get(6)?,
    })
}
const TENANT_COLS: &str = "id, name, weight, priority, max_concurrent_runs, device_hours_per_month, created_at";

fn run_row(r: &Row<'_>) -> rusqlite::Result<(Run, String)> {
    let state: String = r.get(6)?;
    Ok((
        Run {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            idempotency_key: r.get(2)?,
            name: r.get(3)?,
            source: r.get(4)?,
            plan_json: r.get(5)?,
            state: RunState::Queued,
            reason: r.get(7)?,
            priority: r.get(8)?,
            submitted_at: r.get(9)?,
            started_at: r.get(10)?,
            finished_at: r.get(11)?,
        },
        state,
    ))
}
const RUN_COLS: &str = "id, tenant_id, idempotency_key, name, source, plan_json, state, reason, priority, submitted_at, started_at, finished_at";

fn finish_run((mut run, state): (Run, String)) -> Result<Run> {
    run.state = RunState::parse(&state)?;
    Ok(run)
}

fn attempt_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    Ok(Attempt {
        id: r.get(0)?,
        intent: Intent {
            run_id: r.get(1)?,
            task_id: r.get(2)?,
            command_index: r.get(3)?,
            instrument: r.get(4)?,
            op_json: r.get(5)?,
            repeatable: r.get::<_, i64>(6)? != 0,
        },
        outcome: r.get(7)?,
        error: r.get(8)?,
        intent_at: r.get(9)?,
        outcome_at: r.get(10)?,
    })
}
const ATTEMPT_COLS: &str =
    "id, run_id, task_id, command_index, instrument, op_json, repeatable, outcome, error, intent_at, outcome_at";

fn intervention_row(r: &Row<'_>) -> rusqlite::Result<Intervention> {
    Ok(Intervention {
        id: r.get(0)?,
        run_id: r.get(1)?,
        task_id: r.get(2)?,
        instrument: r.get(3)?,
        what: r.get(4)?,
        todo: r.get(5)?,
        state: r.get(6)?,
        created_at: r.get(7)?,
        resolved_at: r.get(8)?,
        resolved_by: r.get(9)?,
    })
}
const INTERVENTION_COLS: &str =
    "i.id, i.run_id, i.task_id, i.instrument, i.what, i.todo, i.state, i.created_at, i.resolved_at, i.resolved_by";

fn not_found<T>(what: &str) -> impl FnOnce(Option<T>) -> Result<T> + '_ {
    move |o| o.ok_or_else(|| StoreError::NotFound(what.to_string()))
}

/// Appends an event and its outbox row inside `tx`.
fn append(tx: &Transaction<'_>, run_id: &str, kind: &str, payload_json: &str) -> Result<Event> {
    let (tenant, seq): (String, i64) = tx
        .query_row("SELECT tenant_id, next_seq FROM runs WHERE id = ?1", params![run_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(backend)
        .and_then(not_found(&format!("run {run_id}")))?;
    tx.execute("UPDATE runs SET next_seq = next_seq + 1 WHERE id = ?1", params![run_id]).map_err(backend)?;
    let at = now_ms();
    tx.execute(
        "INSERT INTO events (run_id, seq, at, kind, payload_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run_id, seq, at, kind, payload_json],
    )
    .map_err(backend)?;
    let data: serde_json::Value = serde_json::from_str(payload_json).unwrap_or(serde_json::Value::Null);
    let envelope =
        serde_json::json!({"v": 1, "tenant": tenant, "run": run_id, "seq": seq, "ts": at, "kind": kind, "data": data});
    let topic = format!("lab/v1/t/{tenant}/runs/{run_id}/events");
    put_outbox(tx, Some(&tenant), Some(run_id), Some(seq), &topic, &envelope.to_string())?;
    Ok(Event { run_id: run_id.to_string(), seq, at, kind: kind.to_string(), payload_json: payload_json.to_string() })
}

fn put_outbox(
    tx: &Transaction<'_>,
    tenant: Option<&str>,
    run: Option<&str>,
    seq: Option<i64>,
    topic: &str,
    payload: &str,
) -> Result<OutboxRow> {
    let position: i64 =
        tx.query_row("SELECT COALESCE(MAX(position), 0) + 1 FROM outbox", [], |r| r.get(0)).map_err(backend)?;
    let row = OutboxRow {
        id: new_id("out"),
        position,
        tenant_id: tenant.map(str::to_string),
        run_id: run.map(str::to_string),
        seq,
        topic: topic.to_string(),
        payload_json: payload.to_string(),
        created_at: now_ms(),
    };
    tx.execute(
        "INSERT INTO outbox (id, position, tenant_id, run_id, seq, topic, payload_json, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![row.id, row.position, row.tenant_id, row.run_id, row.seq, row.topic, row.payload_json, row.created_at],
    )
    .map_err(backend)?;
    Ok(row)
}

/// Writes an attempt's outcome, once.
fn set_outcome(tx: &Transaction<'_>, attempt_id: &str, outcome: &str, error: Option<&str>) -> Result<()> {
    if !matches!(outcome, "ok" | "failed" | "unknown") {
        return Err(StoreError::Invalid(format!("outcome `{outcome}`: use ok, failed or unknown")));
    }
    let n = tx
        .execute(
            "UPDATE attempts SET outcome = ?2, error = ?3, outcome_at = ?4 WHERE id = ?1 AND outcome IS NULL",
            params![attempt_id, outcome, error, now_ms()],
        )
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::Conflict(format!("attempt {attempt_id} does not exist or already has an outcome")));
    }
    Ok(())
}

/// Checks that a run exists and, when scoped, belongs to the tenant.
fn owned(conn: &Connection, tenant: Option<&str>, run_id: &str) -> Result<()> {
    let owner: Option<String> = conn
        .query_row("SELECT tenant_id FROM runs WHERE id = ?1", params![run_id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    match (owner, tenant) {
        (Some(o), Some(t)) if o == t => Ok(()),
        (Some(_), None) => Ok(()),
        _ => Err(StoreError::NotFound(format!("run {run_id}"))),
    }
}

impl Store for SqliteStore {
    fn create_tenant(&self, name: &str, weight: f64) -> Result<Tenant> {
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
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO tenants (id, name, weight, priority, created_at) VALUES (?1, ?2, ?3, 0, ?4)",
                params![t.id, t.name, t.weight, t.created_at],
            )
            .map_err(|e| match backend(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a tenant named `{name}` exists")),
                other => other,
            })?;
            Ok(())
        })?;
        Ok(t)
    }

    fn tenant(&self, id: &str) -> Result<Tenant> {
        self.read(|c| {
            c.query_row(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"), params![id], tenant_row)
                .optional()
                .map_err(backend)
                .and_then(not_found(&format!("tenant {id}")))
        })
    }

    fn tenant_by_name(&self, name: &str) -> Result<Tenant> {
        self.read(|c| {
            c.query_row(&format!("SELECT {TENANT_COLS} FROM tenants WHERE name = ?1"), params![name], tenant_row)
                .optional()
                .map_err(backend)
                .and_then(not_found(&format!("tenant `{name}`")))
        })
    }

    fn tenants(&self) -> Result<Vec<Tenant>> {
        self.read(|c| {
            let mut st = c.prepare(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY name")).map_err(backend)?;
            let rows = st.query_map([], tenant_row).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
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
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE tenants SET max_concurrent_runs = ?2, device_hours_per_month = ?3, priority = ?4 WHERE id = ?1",
                    params![id, max_concurrent_runs, device_hours_per_month, priority],
                )
                .map_err(backend)?;
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
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO principals (id, tenant_id, role, token_hash, mqtt_username, mqtt_password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![p.id, p.tenant_id, role.as_str(), token_hash, mqtt.map(|m| m.0), mqtt.map(|m| m.1), p.created_at],
            )
            .map_err(backend)?;
            Ok(())
        })?;
        Ok(p)
    }

    fn principal_by_token_hash(&self, token_hash: &str) -> Result<Principal> {
        self.read(|c| {
            c.query_row(
                "SELECT id, tenant_id, role, mqtt_username, created_at, revoked_at, expires_at FROM principals WHERE token_hash = ?1 AND revoked_at IS NULL",
                params![token_hash],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, String>(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()
            .map_err(backend)
            .and_then(not_found("principal"))
            .and_then(|(id, tenant_id, role, mqtt_username, created_at, revoked_at, expires_at)| {
                Ok(Principal { id, tenant_id, role: Role::parse(&role)?, mqtt_username, created_at, revoked_at, expires_at })
            })
        })
    }

    fn revoke_principal(&self, id: &str) -> Result<()> {
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE principals SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, now_ms()],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("principal {id}")));
            }
            Ok(())
        })
    }

    fn mqtt_identities(&self) -> Result<Vec<crate::telemetry::MqttIdentity>> {
        self.read(|c| {
            let mut st = c
                .prepare(
                    "SELECT mqtt_username, mqtt_password_hash, role, tenant_id FROM principals WHERE mqtt_username IS NOT NULL AND mqtt_password_hash IS NOT NULL AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1) ORDER BY created_at, id",
                )
                .map_err(backend)?;
            let rows = st
                .query_map(params![now_ms()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (username, password_hash, role, tenant_id) = row.map_err(backend)?;
                out.push(crate::telemetry::MqttIdentity { username, password_hash, role: Role::parse(&role)?, tenant_id });
            }
            Ok(out)
        })
    }

    fn set_principal_expiry(&self, id: &str, expires_at: Millis) -> Result<()> {
        self.tx(|tx| {
            let n = tx
                .execute("UPDATE principals SET expires_at = ?2 WHERE id = ?1", params![id, expires_at])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("principal {id}")));
            }
            Ok(())
        })
    }

    fn submit_run(&self, run: &NewRun) -> Result<(Run, bool)> {
        if run.idempotency_key.is_empty() {
            return Err(StoreError::Invalid(
                "an idempotency key is required (any unique string per submission)".into(),
            ));
        }
        self.tx(|tx| {
            let existing = tx
                .query_row(
                    &format!("SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?1 AND idempotency_key = ?2"),
                    params![run.tenant_id, run.idempotency_key],
                    run_row,
                )
                .optional()
                .map_err(backend)?;
            if let Some(r) = existing {
                let r = finish_run(r)?;
                if r.source != run.source {
                    return Err(StoreError::Conflict(format!(
                        "idempotency key `{}` was already used for a different submission (run {})",
                        run.idempotency_key, r.id
                    )));
                }
                return Ok((r, false));
            }
            let id = new_id("run");
            let at = now_ms();
            tx.execute(
                "INSERT INTO runs (id, tenant_id, idempotency_key, name, source, plan_json, state, priority, submitted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8)",
                params![id, run.tenant_id, run.idempotency_key, run.name, run.source, run.plan_json, run.priority, at],
            )
            .map_err(backend)?;
            append(tx, &id, "submitted", &serde_json::json!({"name": run.name}).to_string())?;
            let r = tx.query_row(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), params![id], run_row).map_err(backend)?;
            Ok((finish_run(r)?, true))
        })
    }

    fn run(&self, tenant: Option<&str>, id: &str) -> Result<Run> {
        let r = self.read(|c| {
            c.query_row(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), params![id], run_row)
                .optional()
                .map_err(backend)
                .and_then(not_found(&format!("run {id}")))
        })?;
        let r = finish_run(r)?;
        if tenant.is_some_and(|t| t != r.tenant_id) {
            return Err(StoreError::NotFound(format!("run {id}")));
        }
        Ok(r)
    }

    fn runs(&self, tenant: Option<&str>, states: &[RunState]) -> Result<Vec<Run>> {
        let rows = self.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {RUN_COLS} FROM runs WHERE (?1 IS NULL OR tenant_id = ?1) ORDER BY submitted_at, id"
                ))
                .map_err(backend)?;
            let rows = st.query_map(params![tenant], run_row).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })?;
        let mut out = Vec::new();
        for r in rows {
            let r = finish_run(r)?;
            if states.is_empty() || states.contains(&r.state) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn set_run_state(&self, id: &str, state: RunState, reason: Option<&str>) -> Result<Event> {
        self.tx(|tx| {
            let (current, tenant): (String, String) = tx
                .query_row("SELECT state, tenant_id FROM runs WHERE id = ?1", params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(backend)
                .and_then(not_found(&format!("run {id}")))?;
            let current = RunState::parse(&current)?;
            if current.is_final() {
                return Err(StoreError::Conflict(format!("run {id} already {current}")));
            }
            let at = now_ms();
            tx.execute(
                "UPDATE runs SET state = ?2, reason = COALESCE(?3, reason), started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?4 ELSE started_at END, finished_at = CASE WHEN ?5 THEN ?4 ELSE finished_at END WHERE id = ?1",
                params![id, state.as_str(), reason, at, state.is_final()],
            )
            .map_err(backend)?;
            let payload = serde_json::json!({"state": state.as_str(), "reason": reason}).to_string();
            let ev = append(tx, id, "state", &payload)?;
            // The retained state topic gets its own row.
            let envelope = serde_json::json!({"v": 1, "tenant": tenant, "run": id, "seq": ev.seq, "ts": at, "kind": "state", "state": state.as_str(), "reason": reason});
            put_outbox(tx, Some(&tenant), Some(id), Some(ev.seq), &format!("lab/v1/t/{tenant}/runs/{id}/state"), &envelope.to_string())?;
            Ok(ev)
        })
    }

    fn append_event(&self, run_id: &str, kind: &str, payload_json: &str) -> Result<Event> {
        if serde_json::from_str::<serde_json::Value>(payload_json).is_err() {
            return Err(StoreError::Invalid(format!("event payload for {run_id} is not JSON")));
        }
        self.tx(|tx| append(tx, run_id, kind, payload_json))
    }

    fn events(&self, tenant: Option<&str>, run_id: &str, after: i64) -> Result<Vec<Event>> {
        self.read(|c| {
            owned(c, tenant, run_id)?;
            let mut st = c.prepare("SELECT run_id, seq, at, kind, payload_json FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq").map_err(backend)?;
            let rows = st
                .query_map(params![run_id, after], |r| {
                    Ok(Event { run_id: r.get(0)?, seq: r.get(1)?, at: r.get(2)?, kind: r.get(3)?, payload_json: r.get(4)? })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
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
        self.tx(|tx| {
            if let Some(prev) = previous {
                set_outcome(tx, prev, "ok", None)?;
            }
            tx.execute(
                &format!(
                    "INSERT INTO attempts ({ATTEMPT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8, NULL)"
                ),
                params![
                    a.id,
                    i.run_id,
                    i.task_id,
                    i.command_index,
                    i.instrument,
                    i.op_json,
                    i.repeatable as i64,
                    a.intent_at
                ],
            )
            .map_err(backend)?;
            Ok(())
        })?;
        Ok(a)
    }

    fn record_outcome(&self, attempt_id: &str, outcome: &str, error: Option<&str>) -> Result<()> {
        self.tx(|tx| set_outcome(tx, attempt_id, outcome, error))
    }

    fn open_attempts(&self) -> Result<Vec<Attempt>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE outcome IS NULL ORDER BY intent_at, id"))
                .map_err(backend)?;
            let rows = st.query_map([], attempt_row).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
    }

    fn attempts(&self, run_id: &str) -> Result<Vec<Attempt>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {ATTEMPT_COLS} FROM attempts WHERE run_id = ?1 ORDER BY task_id, command_index, intent_at"
                ))
                .map_err(backend)?;
            let rows = st.query_map(params![run_id], attempt_row).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
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
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO results (id, run_id, task_id, labware, kind, wells_json, wavelengths_json, values_json, unit, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![row.id, row.run_id, row.task_id, row.labware, row.kind, json(&row.wells), json(&row.wavelengths_nm), json(&row.values), row.unit, row.created_at],
            )
            .map_err(backend)?;
            let summary = serde_json::json!({"result": row.id, "labware": row.labware, "kind": row.kind, "wells": row.wells.len(), "unit": row.unit});
            let ev = append(tx, &row.run_id, "result", &summary.to_string())?;
            let tenant: String = tx.query_row("SELECT tenant_id FROM runs WHERE id = ?1", params![row.run_id], |r| r.get(0)).map_err(backend)?;
            // Subscribers get the values themselves (the relay summarises what the broker could not carry).
            let data = serde_json::json!({"result": row.id, "labware": row.labware, "kind": row.kind, "wells": row.wells, "wavelengths_nm": row.wavelengths_nm, "values": row.values, "unit": row.unit});
            let envelope = serde_json::json!({"v": 1, "tenant": tenant, "run": row.run_id, "seq": ev.seq, "ts": ev.at, "kind": "result", "data": data});
            put_outbox(tx, Some(&tenant), Some(&row.run_id), Some(ev.seq), &format!("lab/v1/t/{tenant}/runs/{}/results", row.run_id), &envelope.to_string())?;
            Ok(ev)
        })
    }

    fn results(&self, tenant: Option<&str>, run_id: &str) -> Result<Vec<ResultRow>> {
        self.read(|c| {
            owned(c, tenant, run_id)?;
            let mut st = c
                .prepare("SELECT id, run_id, task_id, labware, kind, wells_json, wavelengths_json, values_json, unit, created_at FROM results WHERE run_id = ?1 ORDER BY created_at, id")
                .map_err(backend)?;
            let rows = st
                .query_map(params![run_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?, r.get::<_, String>(7)?, r.get::<_, String>(8)?, r.get::<_, i64>(9)?))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, run_id, task_id, labware, kind, wells, wl, values, unit, created_at) = row.map_err(backend)?;
                let bad = |e: serde_json::Error| StoreError::Backend(format!("result {id} is corrupt: {e}"));
                out.push(ResultRow {
                    wells: serde_json::from_str(&wells).map_err(bad)?,
                    wavelengths_nm: serde_json::from_str(&wl).map_err(bad)?,
                    values: serde_json::from_str(&values).map_err(bad)?,
                    id,
                    run_id,
                    task_id,
                    labware,
                    kind,
                    unit,
                    created_at,
                });
            }
            Ok(out)
        })
    }

    fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRow>> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT id, position, tenant_id, run_id, seq, topic, payload_json, created_at FROM outbox WHERE sent_at IS NULL ORDER BY position LIMIT ?1")
                .map_err(backend)?;
            let rows = st
                .query_map(params![limit as i64], |r| {
                    Ok(OutboxRow {
                        id: r.get(0)?,
                        position: r.get(1)?,
                        tenant_id: r.get(2)?,
                        run_id: r.get(3)?,
                        seq: r.get(4)?,
                        topic: r.get(5)?,
                        payload_json: r.get(6)?,
                        created_at: r.get(7)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
    }

    fn outbox_mark_sent(&self, ids: &[String]) -> Result<()> {
        self.tx(|tx| {
            let at = now_ms();
            for id in ids {
                tx.execute("UPDATE outbox SET sent_at = ?2 WHERE id = ?1 AND sent_at IS NULL", params![id, at])
                    .map_err(backend)?;
            }
            Ok(())
        })
    }

    fn outbox_put(&self, topic: &str, payload_json: &str) -> Result<OutboxRow> {
        self.tx(|tx| put_outbox(tx, None, None, None, topic, payload_json))
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
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO interventions (id, run_id, task_id, instrument, what, todo, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open', ?7)",
                params![i.id, i.run_id, i.task_id, i.instrument, i.what, i.todo, i.created_at],
            )
            .map_err(backend)?;
            append(tx, run_id, "intervention", &serde_json::json!({"intervention": i.id, "what": what, "todo": todo}).to_string())?;
            Ok(())
        })?;
        Ok(i)
    }

    fn interventions(&self, tenant: Option<&str>, only_open: bool) -> Result<Vec<Intervention>> {
        self.read(|c| {
            let mut st = c
                .prepare(&format!(
                    "SELECT {INTERVENTION_COLS} FROM interventions i JOIN runs r ON r.id = i.run_id WHERE (?1 IS NULL OR r.tenant_id = ?1) AND (?2 = 0 OR i.state = 'open') ORDER BY i.created_at, i.id"
                ))
                .map_err(backend)?;
            let rows = st.query_map(params![tenant, only_open as i64], intervention_row).map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
    }

    fn resolve_intervention(&self, id: &str, resolution: &str, by: &str) -> Result<Intervention> {
        if !matches!(resolution, "done" | "redo" | "abort") {
            return Err(StoreError::Invalid(format!("resolution `{resolution}`: use done, redo or abort")));
        }
        self.tx(|tx| {
            let n = tx
                .execute(
                    "UPDATE interventions SET state = ?2, resolved_at = ?3, resolved_by = ?4 WHERE id = ?1 AND state = 'open'",
                    params![id, resolution, now_ms(), by],
                )
                .map_err(backend)?;
            let i = tx
                .query_row(&format!("SELECT {INTERVENTION_COLS} FROM interventions i WHERE i.id = ?1"), params![id], intervention_row)
                .optional()
                .map_err(backend)
                .and_then(not_found(&format!("intervention {id}")))?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("intervention {id} was already resolved as {}", i.state)));
            }
            append(tx, &i.run_id, "intervention_resolved", &serde_json::json!({"intervention": id, "resolution": resolution}).to_string())?;
            Ok(i)
        })
    }

    fn add_reservation(&self, r: &Reservation) -> Result<()> {
        if r.ends_at <= r.starts_at {
            return Err(StoreError::Invalid("a reservation must end after it starts".into()));
        }
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO reservations (id, tenant_id, instrument_class, starts_at, ends_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.id, r.tenant_id, r.instrument_class, r.starts_at, r.ends_at],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn reservations(&self, tenant: Option<&str>) -> Result<Vec<Reservation>> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT id, tenant_id, instrument_class, starts_at, ends_at FROM reservations WHERE (?1 IS NULL OR tenant_id = ?1) ORDER BY starts_at, id")
                .map_err(backend)?;
            let rows = st
                .query_map(params![tenant], |r| {
                    Ok(Reservation { id: r.get(0)?, tenant_id: r.get(1)?, instrument_class: r.get(2)?, starts_at: r.get(3)?, ends_at: r.get(4)? })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
    }

    fn set_maintenance(&self, instrument: &str, on: Option<(&str, &str)>) -> Result<()> {
        self.tx(|tx| {
            match on {
                Some((reason, by)) => tx.execute(
                    "INSERT INTO maintenance (instrument, reason, set_by, since) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (instrument) DO UPDATE SET reason = excluded.reason, set_by = excluded.set_by",
                    params![instrument, reason, by, now_ms()],
                ),
                None => tx.execute("DELETE FROM maintenance WHERE instrument = ?1", params![instrument]),
            }
            .map_err(backend)?;
            Ok(())
        })
    }

    fn maintenance(&self) -> Result<Vec<Maintenance>> {
        self.read(|c| {
            let mut st = c
                .prepare_cached("SELECT instrument, reason, set_by, since FROM maintenance ORDER BY instrument")
                .map_err(backend)?;
            let rows = st
                .query_map([], |r| {
                    Ok(Maintenance { instrument: r.get(0)?, reason: r.get(1)?, set_by: r.get(2)?, since: r.get(3)? })
                })
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
    }

    fn add_usage(&self, u: &Usage) -> Result<()> {
        if !(u.device_seconds.is_finite() && u.device_seconds >= 0.0) {
            return Err(StoreError::Invalid(format!("device seconds {}", u.device_seconds)));
        }
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO usage (id, tenant_id, run_id, instrument_class, instrument, device_seconds, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![new_id("use"), u.tenant_id, u.run_id, u.instrument_class, u.instrument, u.device_seconds, now_ms()],
            )
            .map_err(backend)?;
            Ok(())
        })
    }

    fn usage(&self, tenant: Option<&str>, since: Millis) -> Result<Vec<UsageTotal>> {
        self.read(|c| {
            let mut st = c
                .prepare("SELECT tenant_id, instrument_class, SUM(device_seconds) FROM usage WHERE (?1 IS NULL OR tenant_id = ?1) AND at >= ?2 GROUP BY tenant_id, instrument_class ORDER BY tenant_id, instrument_class")
                .map_err(backend)?;
            let rows = st
                .query_map(params![tenant, since], |r| Ok(UsageTotal { tenant_id: r.get(0)?, instrument_class: r.get(1)?, device_seconds: r.get(2)? }))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
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
