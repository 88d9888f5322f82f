//! The audit trail in the store (the `Store` methods of the same names call these): appended,
//! read back newest first.

use super::*;

const COLS: &str = "id, at, actor, action, subject, reason, detail";

impl<D: Db> SqlStore<D> {
    pub(super) fn record_audit_in(&self, e: &NewAudit) -> Result<AuditEntry> {
        if e.actor.trim().is_empty() || e.action.trim().is_empty() {
            return Err(StoreError::Invalid(format!(
                "an audit entry needs who did it and what (actor `{}`, action `{}`)",
                e.actor, e.action
            )));
        }
        let entry = AuditEntry { id: new_id("aud"), at: now_ms(), done: e.clone() };
        self.tx(|c| {
            c.execute(
                // Written in order: the next number after the last (two nodes writing at once
                // may share one; their entries are as concurrent as their times say).
                &format!(
                    "INSERT INTO audit ({COLS}, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit))"
                ),
                &params![&entry.id, entry.at, &e.actor, &e.action, &e.subject, &e.reason, &e.detail],
            )
        })?;
        Ok(entry)
    }

    pub(super) fn audit_in(&self, since: Millis, limit: usize) -> Result<Vec<AuditEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = self.read(|c| {
            c.query(
                &format!("SELECT {COLS} FROM audit WHERE at >= ?1 ORDER BY at DESC, seq DESC LIMIT ?2"),
                &params![since, limit],
            )
        })?;
        rows(found, |r| {
            let done = NewAudit {
                actor: r.text(2)?,
                action: r.text(3)?,
                subject: r.text(4)?,
                reason: r.text(5)?,
                detail: r.text(6)?,
            };
            Ok(AuditEntry { id: r.text(0)?, at: r.int(1)?, done })
        })
    }
}
