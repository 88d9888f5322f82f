//! The lab's stock in the store: reagent lots, counted consumables, and what each run used up
//! (the `Store` methods of the same names call these). The rule for which lots a draw comes
//! from is [`draw_soonest_first`], pure.

use super::*;

/// Takes `need_ul` from lots `(lot, expires_on, µL)` unexpired on `today`, the soonest to expire
/// first (then by lot): `(lot, µL taken)`. Takes what there is when they hold less.
pub fn draw_soonest_first(lots: &[(String, String, f64)], today: &str, need_ul: f64) -> Vec<(String, f64)> {
    let mut usable: Vec<&(String, String, f64)> =
        lots.iter().filter(|(_, expires, ul)| expires.as_str() >= today && *ul > 0.0).collect();
    usable.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut left = need_ul;
    let mut taken = Vec::new();
    for (lot, _, ul) in usable {
        if left <= 1e-9 {
            break;
        }
        let take = ul.min(left);
        taken.push((lot.clone(), take));
        left -= take;
    }
    taken
}

fn lot_row(r: &Row) -> Result<ReagentLot> {
    Ok(ReagentLot {
        reagent: r.text(0)?,
        lot: r.text(1)?,
        expires_on: r.text(2)?,
        volume_ul: r.real(3)?,
        received_at: r.int(4)?,
    })
}

fn consumed_row(r: &Row) -> Result<Consumed> {
    Ok(Consumed {
        run_id: r.text(0)?,
        tenant_id: r.text(1)?,
        item: r.text(2)?,
        unit: r.text(3)?,
        quantity: r.real(4)?,
        lots: r.text(5)?,
        at: r.int(6)?,
    })
}

const LOT_COLS: &str = "reagent, lot, expires_on, volume_ul, received_at";
const CONSUMED_COLS: &str = "run_id, tenant_id, item, unit, quantity, lots, at";

impl<D: Db> SqlStore<D> {
    pub(super) fn receive_lot_in(
        &self,
        reagent: &str,
        lot: &str,
        expires_on: &str,
        volume_ul: f64,
    ) -> Result<ReagentLot> {
        if reagent.trim().is_empty() || lot.trim().is_empty() {
            return Err(StoreError::Invalid("a reagent lot needs the reagent's name and the lot's".into()));
        }
        if !crate::clock::is_date(expires_on) {
            return Err(StoreError::Invalid(format!("expiry `{expires_on}`: write the date as YYYY-MM-DD")));
        }
        if !(volume_ul.is_finite() && volume_ul > 0.0) {
            return Err(StoreError::Invalid(format!("volume {volume_ul} µL: give a positive volume")));
        }
        let at = now_ms();
        self.tx(|c| {
            c.execute(
                &format!("INSERT INTO reagent_lots ({LOT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (reagent, lot) DO UPDATE SET volume_ul = reagent_lots.volume_ul + excluded.volume_ul, expires_on = excluded.expires_on"),
                &params![reagent, lot, expires_on, volume_ul, at],
            )?;
            let r = c.query_one(
                &format!("SELECT {LOT_COLS} FROM reagent_lots WHERE reagent = ?1 AND lot = ?2"),
                &params![reagent, lot],
                "",
            )?;
            lot_row(&r)
        })
    }

    pub(super) fn set_consumable_in(&self, load_name: &str, on_hand: i64, reorder_at: i64) -> Result<ConsumableStock> {
        if load_name.trim().is_empty() || on_hand < 0 || reorder_at < 0 {
            return Err(StoreError::Invalid(format!(
                "consumable `{load_name}`: give its labware type, and counts of 0 or more (on hand {on_hand}, reorder at {reorder_at})"
            )));
        }
        self.tx(|c| {
            c.execute(
                "INSERT INTO consumable_stock (load_name, on_hand, reorder_at) VALUES (?1, ?2, ?3) ON CONFLICT (load_name) DO UPDATE SET on_hand = excluded.on_hand, reorder_at = excluded.reorder_at",
                &params![load_name, on_hand, reorder_at],
            )
        })?;
        Ok(ConsumableStock { load_name: load_name.into(), on_hand, reorder_at })
    }

    pub(super) fn stock_in(&self) -> Result<(Vec<ReagentLot>, Vec<ConsumableStock>)> {
        self.read(|c| {
            let lots =
                c.query(&format!("SELECT {LOT_COLS} FROM reagent_lots ORDER BY reagent, expires_on, lot"), &[])?;
            let counted =
                c.query("SELECT load_name, on_hand, reorder_at FROM consumable_stock ORDER BY load_name", &[])?;
            Ok((
                rows(lots, lot_row)?,
                rows(counted, |r| {
                    Ok(ConsumableStock { load_name: r.text(0)?, on_hand: r.int(1)?, reorder_at: r.int(2)? })
                })?,
            ))
        })
    }

    pub(super) fn consume_in(
        &self,
        run_id: &str,
        tenant_id: &str,
        used: &protocols::consumables::Consumption,
        today: &str,
    ) -> Result<Vec<Consumed>> {
        let at = now_ms();
        self.tx(|c| {
            // Once per run: the rows are keyed by run and item, and a run that has any was taken.
            if !c.query("SELECT 1 FROM consumed WHERE run_id = ?1", &params![run_id])?.is_empty() {
                return Ok(Vec::new());
            }
            let mut out = Vec::new();
            for (load_name, &n) in &used.units {
                // A counted consumable goes down, never below none (the count was wrong then).
                c.execute(
                    "UPDATE consumable_stock SET on_hand = CASE WHEN on_hand > ?2 THEN on_hand - ?2 ELSE 0 END WHERE load_name = ?1",
                    &params![load_name, i64::from(n)],
                )?;
                out.push((load_name.clone(), "each", f64::from(n), String::new()));
            }
            for (reagent, &ul) in &used.reagents_ul {
                let lots = c.query(
                    "SELECT lot, expires_on, volume_ul FROM reagent_lots WHERE reagent = ?1",
                    &params![reagent],
                )?;
                let lots: Vec<(String, String, f64)> =
                    lots.iter().map(|r| Ok((r.text(0)?, r.text(1)?, r.real(2)?))).collect::<Result<_>>()?;
                let taken = draw_soonest_first(&lots, today, ul);
                for (lot, take) in &taken {
                    c.execute(
                        "UPDATE reagent_lots SET volume_ul = volume_ul - ?3 WHERE reagent = ?1 AND lot = ?2",
                        &params![reagent, lot, *take],
                    )?;
                }
                let said: Vec<String> =
                    taken.iter().map(|(lot, take)| format!("{lot} {} mL", crate::store::trim_ul(take / 1000.0))).collect();
                out.push((reagent.clone(), "mL", ul / 1000.0, said.join(", ")));
            }
            let mut recorded = Vec::with_capacity(out.len());
            for (item, unit, quantity, lots) in out {
                c.execute(
                    &format!("INSERT INTO consumed ({CONSUMED_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                    &params![run_id, tenant_id, &item, unit, quantity, &lots, at],
                )?;
                recorded.push(Consumed {
                    run_id: run_id.into(),
                    tenant_id: tenant_id.into(),
                    item,
                    unit: unit.into(),
                    quantity,
                    lots,
                    at,
                });
            }
            Ok(recorded)
        })
    }

    pub(super) fn consumed_in(&self, tenant: Option<&str>, since: Millis) -> Result<Vec<Consumed>> {
        let found = self.read(|c| {
            c.query(
                &format!("SELECT {CONSUMED_COLS} FROM consumed WHERE (CAST(?1 AS TEXT) IS NULL OR tenant_id = ?1) AND at >= ?2 ORDER BY at, run_id, item"),
                &params![tenant, since],
            )
        })?;
        rows(found, consumed_row)
    }
}

#[cfg(test)]
mod tests {
    use super::draw_soonest_first;

    #[test]
    fn a_draw_takes_the_lot_that_expires_first_and_never_an_expired_one() {
        let lots = [
            ("L3".to_string(), "2027-06-30".to_string(), 50_000.0),
            ("L1".to_string(), "2026-12-01".to_string(), 90_000.0), // expired
            ("L2".to_string(), "2027-01-31".to_string(), 8_000.0),
        ];
        assert_eq!(
            draw_soonest_first(&lots, "2026-12-06", 11_000.0),
            vec![("L2".to_string(), 8_000.0), ("L3".to_string(), 3_000.0)]
        );
        assert_eq!(draw_soonest_first(&lots, "2026-12-06", 100_000.0).iter().map(|t| t.1).sum::<f64>(), 58_000.0);
        assert!(draw_soonest_first(&lots, "2027-07-01", 1.0).is_empty(), "all expired");
    }
}
