//! The Inventory service: shipments received from their manifests (technicians and admins), the
//! containers the lab holds (a scientist sees its own tenant's only), and the lab's own stock of
//! reagents and consumables (technicians and admins).

use super::*;

/// Where received containers go when the technician does not say.
const RECEIVING: &str = "receiving";

/// A container as the API answers it; `barcodes` names the containers its wells came from
/// (the tenant's own: a run draws from no one else's).
fn container_info(
    k: store::Container,
    history: Vec<store::ContainerEvent>,
    barcodes: &std::collections::BTreeMap<String, String>,
) -> pb::ContainerInfo {
    let from = |well: &str| -> Vec<String> {
        k.sources
            .iter()
            .filter(|s| s.well == well)
            .map(|s| format!("{}/{}", barcodes.get(&s.from_container).unwrap_or(&s.from_container), s.from_well))
            .collect()
    };
    let wells = k
        .wells
        .iter()
        .map(|w| pb::WellInfo {
            from: from(&w.well),
            well: w.well.clone(),
            sample: w.sample.clone(),
            liquid: w.liquid.clone(),
            volume_ul: w.volume_ul,
        })
        .collect();
    pb::ContainerInfo {
        id: k.id,
        barcode: k.barcode,
        r#type: k.load_name,
        location: k.location,
        created_at_ms: k.created_at,
        wells,
        history: history
            .into_iter()
            .map(|h| pb::HistoryEntry { at_ms: h.at, kind: h.kind, detail: h.detail, by: h.actor })
            .collect(),
        // Filled where listings need it (`containers`).
        tenant: String::new(),
    }
}

/// The lab's stock as the API answers it, with what has expired by `today` and what to reorder.
fn stock_response(
    (lots, counted): (Vec<store::ReagentLot>, Vec<store::ConsumableStock>),
    today: &str,
) -> pb::StockResponse {
    pb::StockResponse {
        lots: lots
            .into_iter()
            .map(|l| pb::LotInfo {
                expired: l.expires_on.as_str() < today,
                reagent: l.reagent,
                lot: l.lot,
                expires_on: l.expires_on,
                volume_ul: l.volume_ul,
            })
            .collect(),
        consumables: counted
            .into_iter()
            .map(|c| pb::ConsumableInfo {
                reorder: c.on_hand <= c.reorder_at,
                r#type: c.load_name,
                on_hand: c.on_hand,
                reorder_at: c.reorder_at,
            })
            .collect(),
    }
}

impl Api {
    async fn stock_now(&self) -> Result<pb::StockResponse, Status> {
        let store = self.store.clone();
        let stock = blocking(move || store.stock()).await?;
        Ok(stock_response(stock, &crate::clock::date(store::now_ms())))
    }
}

#[tonic::async_trait]
impl pb::inventory_server::Inventory for Api {
    async fn receive_lot(&self, req: Request<pb::ReceiveLotRequest>) -> Result<Response<pb::StockResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "receiving a reagent lot")?;
        let r = req.into_inner();
        let reagent = r.reagent.trim().to_string();
        if !self.site.prices.reagents.contains_key(&reagent) {
            let stocked: Vec<&str> = self.site.prices.reagents.keys().map(String::as_str).collect();
            return Err(Status::invalid_argument(format!(
                "the site stocks no reagent named `{reagent}` (it stocks: {}); add it to [prices.reagents] in the site file first",
                if stocked.is_empty() { "none".to_string() } else { stocked.join(", ") }
            )));
        }
        let store = self.store.clone();
        let (lot, expires_on) = (r.lot.trim().to_string(), r.expires_on.trim().to_string());
        let got = blocking(move || store.receive_lot(&reagent, &lot, &expires_on, r.volume_ul)).await?;
        tracing::info!(by = %who.id, reagent = %got.reagent, lot = %got.lot, volume_ul = got.volume_ul, "reagent lot received");
        let detail = format!("{} µL received, expires {}", protocols::units::trim(r.volume_ul), got.expires_on);
        self.record_audit(&who, "lot_received", &format!("{} lot {}", got.reagent, got.lot), "", detail).await?;
        Ok(Response::new(self.stock_now().await?))
    }

    async fn set_consumable(
        &self,
        req: Request<pb::SetConsumableRequest>,
    ) -> Result<Response<pb::StockResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "counting consumables")?;
        let r = req.into_inner();
        let load_name = r.r#type.trim().to_string();
        if self.library.get(&load_name).is_none() {
            return Err(Status::invalid_argument(format!(
                "unknown labware type `{load_name}`: `labctl labware list` names the types"
            )));
        }
        let store = self.store.clone();
        let set = blocking(move || store.set_consumable(&load_name, r.on_hand, r.reorder_at)).await?;
        tracing::info!(by = %who.id, item = %set.load_name, on_hand = set.on_hand, reorder_at = set.reorder_at, "consumable counted");
        let detail = format!("{} on hand, reorder at {}", set.on_hand, set.reorder_at);
        self.record_audit(&who, "consumable_counted", &set.load_name, "", detail).await?;
        Ok(Response::new(self.stock_now().await?))
    }

    async fn pick_list(&self, req: Request<pb::PickListRequest>) -> Result<Response<pb::PickListResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "pick lists")?;
        let (store, run) = (self.store.clone(), req.into_inner().run_id.trim().to_string());
        let items = blocking(move || if run.is_empty() { store.open_picks() } else { store.pick_list(&run) }).await?;
        Ok(Response::new(pick_list_reply(items)))
    }

    async fn confirm_pick(
        &self,
        req: Request<pb::ConfirmPickRequest>,
    ) -> Result<Response<pb::PickListResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "kitting")?;
        let r = req.into_inner();
        let (store, by) = (self.store.clone(), who.id.clone());
        let run = r.run_id.trim().to_string();
        let (item, items) = blocking(move || {
            let item = store.confirm_pick(&run, r.n, &r.barcode, &by)?;
            tracing::info!(run = %run, item = item.n, barcode = %item.expected, by = %by, "kitted item confirmed");
            Ok::<_, store::StoreError>((item.clone(), store.pick_list(&run)?))
        })
        .await?;
        let subject = format!("pick list of {}, item {}", item.run_id, item.n);
        let detail = format!("{} scanned {}, to {}", item.what, item.expected, item.to);
        self.record_audit(&who, "pick_confirmed", &subject, "", detail).await?;
        Ok(Response::new(pick_list_reply(items)))
    }

    async fn stock(&self, req: Request<pb::StockRequest>) -> Result<Response<pb::StockResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "the lab's stock")?;
        Ok(Response::new(self.stock_now().await?))
    }

    async fn receive(&self, req: Request<pb::ReceiveRequest>) -> Result<Response<pb::ContainersResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "receiving a shipment")?;
        let r = req.into_inner();
        if r.manifest_csv.len() > MAX_SOURCE_BYTES {
            return Err(too_large(r.manifest_csv.len()));
        }
        let containers = crate::manifest::parse(&r.manifest_csv, &labware::Library::shipped()).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Status::invalid_argument(format!("the manifest is refused; nothing was received:\n{}", lines.join("\n")))
        })?;
        // What was scanned at the bench must be the manifest's containers, all of them.
        let declared: std::collections::BTreeSet<&str> = containers.iter().map(|c| c.barcode.as_str()).collect();
        let scanned: std::collections::BTreeSet<&str> = r.scanned.iter().map(|b| b.trim()).collect();
        if let Some(stray) = scanned.iter().find(|b| !declared.contains(*b)) {
            return Err(Status::failed_precondition(format!(
                "scanned {stray}, which this manifest does not list; set it aside and check the shipment"
            )));
        }
        let missing: Vec<&str> = declared.iter().filter(|b| !scanned.contains(*b)).copied().collect();
        if !missing.is_empty() {
            return Err(Status::failed_precondition(format!(
                "not scanned yet: {}; scan every container of the shipment",
                missing.join(", ")
            )));
        }
        let asked = if r.location.trim().is_empty() { RECEIVING.to_string() } else { r.location.trim().to_string() };
        let store = self.store.clone();
        let (tenant, actor, units) = (r.tenant.trim().to_string(), who.id.clone(), self.site.storage.clone());
        let got = blocking(move || {
            let t = store.tenant_by_name(&tenant).or_else(|_| store.tenant(&tenant))?;
            // The receiving bench, or a storage unit with room for the whole shipment.
            let location = if asked == RECEIVING {
                asked
            } else {
                let occupied = crate::storage::occupancy(&store.containers(None)?);
                crate::storage::place(&units, &asked, containers.len(), &occupied)
                    .map_err(store::StoreError::Invalid)?
            };
            store.receive_containers(&t.id, &containers, &location, &actor)
        })
        .await?;
        tracing::info!(by = %who.id, containers = got.len(), "shipment received");
        let barcodes: Vec<&str> = got.iter().map(|k| k.barcode.as_str()).collect();
        let detail = format!("{} containers: {}", got.len(), barcodes.join(", "));
        self.record_audit(&who, "shipment_received", &format!("shipment of {}", r.tenant.trim()), "", detail).await?;
        Ok(Response::new(pb::ContainersResponse {
            containers: got.into_iter().map(|k| container_info(k, Vec::new(), &Default::default())).collect(),
        }))
    }

    async fn containers(
        &self,
        req: Request<pb::ContainersRequest>,
    ) -> Result<Response<pb::ContainersResponse>, Status> {
        let who = self.caller(&req).await?;
        let (store, scope) = (self.store.clone(), Self::scope(&who));
        let (all, names) = blocking(move || {
            let names: std::collections::BTreeMap<String, String> =
                store.tenants()?.into_iter().map(|t| (t.id, t.name)).collect();
            Ok::<_, store::StoreError>((store.containers(scope.as_deref())?, names))
        })
        .await?;
        let barcodes = all.iter().map(|k| (k.id.clone(), k.barcode.clone())).collect();
        Ok(Response::new(pb::ContainersResponse {
            containers: all
                .into_iter()
                .map(|k| {
                    let tenant = names.get(&k.tenant_id).cloned().unwrap_or_default();
                    pb::ContainerInfo { tenant, ..container_info(k, Vec::new(), &barcodes) }
                })
                .collect(),
        }))
    }

    async fn container(&self, req: Request<pb::ContainerRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let who = self.caller(&req).await?;
        let (store, scope, id) = (self.store.clone(), Self::scope(&who), req.into_inner().id);
        let (k, history, barcodes) = blocking(move || {
            let k = store.container(scope.as_deref(), id.trim())?;
            let history = store.container_history(&k.id)?;
            // The barcodes of what it came from: the same tenant's containers.
            let barcodes = if k.sources.is_empty() {
                Default::default()
            } else {
                store.containers(Some(&k.tenant_id))?.into_iter().map(|c| (c.id, c.barcode)).collect()
            };
            Ok::<_, store::StoreError>((k, history, barcodes))
        })
        .await?;
        Ok(Response::new(container_info(k, history, &barcodes)))
    }
}

fn pick_list_reply(items: Vec<crate::store::PickItem>) -> pb::PickListResponse {
    pb::PickListResponse {
        items: items
            .into_iter()
            .map(|i| pb::PickItemInfo {
                run_id: i.run_id,
                n: i.n,
                kind: i.kind,
                what: i.what,
                from: i.from,
                to: i.to,
                expected: i.expected,
                thaw_min: i.thaw_min,
                confirmed_by: i.confirmed_by.unwrap_or_default(),
                confirmed_at_ms: i.confirmed_at.unwrap_or(0),
            })
            .collect(),
    }
}
