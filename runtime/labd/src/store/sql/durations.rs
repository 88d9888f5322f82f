//! Tasks' actual durations in the store (the `Store` methods of the same names call these):
//! written once per run and task, read back newest first.

use super::*;
use crate::experience::TaskDuration;

const COLS: &str = "run_id, task_id, instrument, class, kind, estimated_s, actual_s, at";

impl<D: Db> SqlStore<D> {
    pub(super) fn record_duration_in(&self, d: &TaskDuration) -> Result<bool> {
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        if !(finite(d.estimated_s) && finite(d.actual_s)) {
            return Err(StoreError::Invalid(format!(
                "task {} of run {}: estimated {} s, actual {} s",
                d.task_id, d.run_id, d.estimated_s, d.actual_s
            )));
        }
        let written = self.tx(|c| {
            c.execute(
                &format!("INSERT INTO task_durations ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (run_id, task_id) DO NOTHING"),
                &params![&d.run_id, d.task_id, &d.instrument, &d.class, &d.kind, d.estimated_s, d.actual_s, d.at],
            )
        })?;
        Ok(written == 1)
    }

    pub(super) fn task_durations_in(&self, limit: usize) -> Result<Vec<TaskDuration>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = self.read(|c| {
            c.query(
                &format!("SELECT {COLS} FROM task_durations ORDER BY at DESC, run_id DESC, task_id DESC LIMIT ?1"),
                &params![limit],
            )
        })?;
        rows(found, |r| {
            Ok(TaskDuration {
                run_id: r.text(0)?,
                task_id: r.int(1)?,
                instrument: r.text(2)?,
                class: r.text(3)?,
                kind: r.text(4)?,
                estimated_s: r.real(5)?,
                actual_s: r.real(6)?,
                at: r.int(7)?,
            })
        })
    }
}
