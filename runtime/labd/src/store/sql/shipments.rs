//! Shipments tenants declare, in the store (the `Store` methods of the same names call these):
//! recorded with their manifest, listed until received, marked received with their containers.

use super::*;

const SHIPMENT_COLS: &str = "id, tenant_id, declared_at, declared_by, manifest, barcodes, received_at, received_by";

fn shipment_row(r: &Row) -> Result<Shipment> {
    let barcodes = r.text(5)?;
    let received = match (r.opt_int(6)?, r.opt_text(7)?) {
        (Some(at), Some(by)) => Some((at, by)),
        _ => None,
    };
    Ok(Shipment {
        id: r.text(0)?,
        tenant_id: r.text(1)?,
        declared_at: r.int(2)?,
        declared_by: r.text(3)?,
        manifest: r.text(4)?,
        barcodes: barcodes.split(',').filter(|b| !b.is_empty()).map(str::to_string).collect(),
        received,
    })
}

/// Marks the tenant's shipment received, within the transaction that makes its containers.
pub(super) fn mark_received(c: &mut dyn Conn, tenant: &str, id: &str, at: Millis, actor: &str) -> Result<()> {
    let marked = c.execute(
        "UPDATE shipments SET received_at = ?1, received_by = ?2 WHERE id = ?3 AND tenant_id = ?4 AND received_at IS NULL",
        &params![at, actor, id, tenant],
    )?;
    if marked == 1 {
        return Ok(());
    }
    let found = c.query("SELECT received_by FROM shipments WHERE id = ?1 AND tenant_id = ?2", &params![id, tenant])?;
    match found.first() {
        Some(r) => Err(StoreError::Conflict(format!(
            "shipment {id} was received already (by {}); nothing was received twice",
            r.opt_text(0)?.unwrap_or_default()
        ))),
        None => Err(StoreError::NotFound(format!("shipment {id}"))),
    }
}

impl<D: Db> SqlStore<D> {
    pub(super) fn declare_shipment_in(
        &self,
        tenant: &str,
        manifest: &str,
        barcodes: &[String],
        actor: &str,
    ) -> Result<Shipment> {
        if let Some(b) = barcodes.iter().find(|b| b.contains(',') || b.trim().is_empty()) {
            return Err(StoreError::Invalid(format!("barcode `{b}` is empty or holds a comma")));
        }
        let shipment = Shipment {
            id: new_id("shp"),
            tenant_id: tenant.into(),
            declared_at: now_ms(),
            declared_by: actor.into(),
            manifest: manifest.into(),
            barcodes: barcodes.to_vec(),
            received: None,
        };
        self.tx(|c| {
            // Only the tenant's own barcodes are checked here: whether another tenant's container
            // bears one is not the declaring tenant's to learn (receiving refuses a clash).
            for b in barcodes {
                let held =
                    c.query("SELECT 1 FROM containers WHERE tenant_id = ?1 AND barcode = ?2", &params![tenant, b])?;
                if !held.is_empty() {
                    return Err(StoreError::Conflict(format!("barcode `{b}` is already on one of your containers")));
                }
            }
            for open in c.query(
                &format!("SELECT {SHIPMENT_COLS} FROM shipments WHERE tenant_id = ?1 AND received_at IS NULL"),
                &params![tenant],
            )? {
                let open = shipment_row(&open)?;
                if let Some(b) = barcodes.iter().find(|b| open.barcodes.contains(b)) {
                    return Err(StoreError::Conflict(format!(
                        "barcode `{b}` is in shipment {} already, not received yet",
                        open.id
                    )));
                }
            }
            c.execute(
                &format!("INSERT INTO shipments ({SHIPMENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL)"),
                &params![&shipment.id, tenant, shipment.declared_at, actor, manifest, &shipment.barcodes.join(",")],
            )?;
            Ok(())
        })?;
        Ok(shipment)
    }

    pub(super) fn open_shipments_in(&self, tenant: Option<&str>) -> Result<Vec<Shipment>> {
        self.read(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {SHIPMENT_COLS} FROM shipments WHERE received_at IS NULL AND (CAST(?1 AS TEXT) IS NULL OR tenant_id = ?1) ORDER BY declared_at, id"
                    ),
                    &params![tenant],
                )?,
                shipment_row,
            )
        })
    }

    pub(super) fn shipment_in(&self, tenant: Option<&str>, id: &str) -> Result<Shipment> {
        let found = self.read(|c| {
            rows(
                c.query(
                    &format!(
                        "SELECT {SHIPMENT_COLS} FROM shipments WHERE id = ?1 AND (CAST(?2 AS TEXT) IS NULL OR tenant_id = ?2)"
                    ),
                    &params![id, tenant],
                )?,
                shipment_row,
            )
        })?;
        found.into_iter().next().ok_or_else(|| StoreError::NotFound(format!("shipment {id}")))
    }
}
