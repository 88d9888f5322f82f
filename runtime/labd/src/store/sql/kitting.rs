//! Runs' pick lists in the store (the `Store` methods of the same names call these): issued
//! once per run, confirmed item by item by the barcode each expects.

use super::*;

const PICK_COLS: &str =
    "run_id, n, kind, what, from_place, to_place, expected, thaw_min, confirmed_by, confirmed_at, volume_ul";

fn pick_row(r: &Row) -> Result<PickItem> {
    Ok(PickItem {
        run_id: r.text(0)?,
        n: r.int(1)?,
        kind: r.text(2)?,
        what: r.text(3)?,
        from: r.text(4)?,
        to: r.text(5)?,
        expected: r.text(6)?,
        thaw_min: r.int(7)?,
        confirmed_by: r.opt_text(8)?,
        confirmed_at: r.opt_int(9)?,
        volume_ul: r.real(10)?,
    })
}

fn list(c: &mut dyn Conn, run_id: &str) -> Result<Vec<PickItem>> {
    rows(
        c.query(&format!("SELECT {PICK_COLS} FROM pick_items WHERE run_id = ?1 ORDER BY n"), &params![run_id])?,
        pick_row,
    )
}

impl<D: Db> SqlStore<D> {
    pub(super) fn issue_pick_list_in(&self, run_id: &str, items: &[PickItem]) -> Result<Vec<PickItem>> {
        self.tx(|c| {
            let had = list(c, run_id)?;
            if !had.is_empty() {
                return Ok(had);
            }
            for (n, i) in items.iter().enumerate() {
                c.execute(
                    &format!(
                        "INSERT INTO pick_items ({PICK_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, NULL, ?9)"
                    ),
                    &params![run_id, n as i64, &i.kind, &i.what, &i.from, &i.to, &i.expected, i.thaw_min, i.volume_ul],
                )?;
            }
            list(c, run_id)
        })
    }

    pub(super) fn pick_list_in(&self, run_id: &str) -> Result<Vec<PickItem>> {
        self.read(|c| list(c, run_id))
    }

    pub(super) fn open_picks_in(&self) -> Result<Vec<PickItem>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!("SELECT {PICK_COLS} FROM pick_items WHERE confirmed_at IS NULL ORDER BY run_id, n"),
                    &[],
                )?,
                pick_row,
            )
        })
    }

    pub(super) fn reserved_lots_in(&self, except_run: &str) -> Result<Vec<(String, f64)>> {
        self.read(|c| {
            let found = c.query(
                "SELECT p.expected, SUM(p.volume_ul) FROM pick_items p JOIN runs r ON r.id = p.run_id \
                 WHERE p.kind = 'reagent' AND p.volume_ul > 0 AND p.run_id <> ?1 \
                 AND r.state IN ('queued', 'running', 'awaiting_recovery', 'cancelling') \
                 GROUP BY p.expected ORDER BY p.expected",
                &params![except_run],
            )?;
            found.iter().map(|r| Ok((r.text(0)?, r.real(1)?))).collect()
        })
    }

    pub(super) fn confirm_picks_in(&self, run_id: &str, scans: &[(i64, String)], by: &str) -> Result<Vec<PickItem>> {
        let at = now_ms();
        self.tx(|c| scans.iter().map(|(n, scanned)| confirm(c, run_id, *n, scanned, by, at)).collect())
    }
}

/// Confirms item `n` by the barcode scanned, in the caller's transaction.
fn confirm(c: &mut dyn Conn, run_id: &str, n: i64, scanned: &str, by: &str, at: Millis) -> Result<PickItem> {
    let item = pick_row(&c.query_one(
        &format!("SELECT {PICK_COLS} FROM pick_items WHERE run_id = ?1 AND n = ?2"),
        &params![run_id, n],
        &format!("item {n} of the pick list of run {run_id}"),
    )?)?;
    if scanned.trim() != item.expected {
        return Err(StoreError::Invalid(format!(
            "item {n} ({}) expects barcode `{}`, not `{}`: scan the one {}",
            item.what,
            item.expected,
            scanned.trim(),
            match item.kind.as_str() {
                "reagent" => "on the lot's bottle",
                "labware" => "on the label printed for it",
                _ => "on the container",
            }
        )));
    }
    if item.confirmed_at.is_some() {
        return Ok(item);
    }
    c.execute(
        "UPDATE pick_items SET confirmed_by = ?3, confirmed_at = ?4 WHERE run_id = ?1 AND n = ?2",
        &params![run_id, n, by, at],
    )?;
    Ok(PickItem { confirmed_by: Some(by.to_string()), confirmed_at: Some(at), ..item })
}
