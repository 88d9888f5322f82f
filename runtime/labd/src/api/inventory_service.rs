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
        slot: k.slot.unwrap_or(0),
        created_at_ms: k.created_at,
        wells,
        history: history
            .into_iter()
            .map(|h| pb::HistoryEntry { at_ms: h.at, kind: h.kind, detail: h.detail, by: h.actor })
            .collect(),
        // Filled where listings need it (`containers`), and for one container (`container`).
        tenant: String::new(),
        runs: Vec::new(),
    }
}

/// A manifest's containers, or its problems, one per line, as the refusal (`nothing`: what
/// the refusal did not do, "received" or "declared").
fn checked_manifest(text: &str, nothing: &str) -> Result<Vec<store::NewContainer>, Status> {
    crate::manifest::parse(text, &labware::Library::shipped()).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Status::invalid_argument(format!("the manifest is refused; nothing was {nothing}:\n{}", lines.join("\n")))
    })
}

/// A declared shipment as the API answers it: its containers from its manifest (checked when
/// declared; a manifest the library no longer reads lists its barcodes alone).
fn shipment_info(s: &store::Shipment, tenant: String) -> pb::ShipmentInfo {
    let containers = match crate::manifest::parse(&s.manifest, &labware::Library::shipped()) {
        Ok(found) => found
            .into_iter()
            .map(|c| {
                let wells = c.wells.iter().map(|w| w.well.as_str()).collect::<std::collections::BTreeSet<_>>().len();
                pb::ShippedContainer { barcode: c.barcode, r#type: c.load_name, wells: wells as i64 }
            })
            .collect(),
        Err(_) => {
            s.barcodes.iter().map(|b| pb::ShippedContainer { barcode: b.clone(), ..Default::default() }).collect()
        }
    };
    pb::ShipmentInfo {
        id: s.id.clone(),
        tenant,
        declared_at_ms: s.declared_at,
        declared_by: s.declared_by.clone(),
        containers,
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
        // A declared shipment brings its tenant and manifest; a manifest sent with it is the
        // technician's correction (what actually arrived).
        let shipment_id = Some(r.shipment_id.trim().to_string()).filter(|s| !s.is_empty());
        let corrected = shipment_id.is_some() && !r.manifest_csv.trim().is_empty();
        let (tenant, text) = match &shipment_id {
            None => (r.tenant.trim().to_string(), r.manifest_csv.clone()),
            Some(id) => {
                let (store, id) = (self.store.clone(), id.clone());
                let declared = blocking(move || store.shipment(None, &id)).await?;
                if let Some((_, by)) = &declared.received {
                    return Err(Status::failed_precondition(format!(
                        "shipment {} was received already (by {by}); nothing is received twice",
                        declared.id
                    )));
                }
                let text = if corrected { r.manifest_csv.clone() } else { declared.manifest };
                (declared.tenant_id, text)
            }
        };
        let containers = checked_manifest(&text, "received")?;
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
        let (actor, units, shipment) = (who.id.clone(), self.site.storage.clone(), shipment_id.clone());
        let (got, tenant_name) = blocking(move || {
            let t = store.tenant_by_name(&tenant).or_else(|_| store.tenant(&tenant))?;
            // The receiving bench, or a storage unit with room for the whole shipment.
            let location = if asked == RECEIVING {
                asked
            } else {
                let occupied = crate::storage::occupancy(&store.containers(None)?);
                crate::storage::place(&units, &asked, containers.len(), &occupied)
                    .map_err(store::StoreError::Invalid)?
            };
            Ok::<_, store::StoreError>((
                store.receive_containers(&t.id, &containers, &location, &actor, shipment.as_deref())?,
                t.name,
            ))
        })
        .await?;
        tracing::info!(by = %who.id, containers = got.len(), shipment = shipment_id.as_deref().unwrap_or(""), "shipment received");
        let barcodes: Vec<&str> = got.iter().map(|k| k.barcode.as_str()).collect();
        let mut detail = format!("{} containers: {}", got.len(), barcodes.join(", "));
        if corrected {
            detail.push_str(" (manifest corrected at the bench)");
        }
        let subject = match &shipment_id {
            Some(id) => format!("shipment {id} of {tenant_name}"),
            None => format!("shipment of {tenant_name}"),
        };
        self.record_audit(&who, "shipment_received", &subject, "", detail).await?;
        Ok(Response::new(pb::ContainersResponse {
            containers: got.into_iter().map(|k| container_info(k, Vec::new(), &Default::default())).collect(),
        }))
    }

    async fn declare_shipment(
        &self,
        req: Request<pb::DeclareShipmentRequest>,
    ) -> Result<Response<pb::ShipmentInfo>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        if r.manifest_csv.len() > MAX_SOURCE_BYTES {
            return Err(too_large(r.manifest_csv.len()));
        }
        let asked = r.tenant.trim().to_string();
        let scope = Self::scope(&who);
        if scope.is_none() && asked.is_empty() {
            return Err(Status::invalid_argument(
                "name the tenant the shipment comes from (--tenant NAME): technicians and admins declare for a tenant",
            ));
        }
        let containers = checked_manifest(&r.manifest_csv, "declared")?;
        let barcodes: Vec<String> = containers.iter().map(|c| c.barcode.clone()).collect();
        let (store, actor, text) = (self.store.clone(), who.id.clone(), r.manifest_csv);
        let (shipment, name) = blocking(move || {
            let t = match &scope {
                // A scientist declares for their own tenant; naming any other reads the same
                // whether it exists or not.
                Some(own) => {
                    let t = store.tenant(own)?;
                    if !asked.is_empty() && asked != t.name && asked != t.id {
                        return Err(store::StoreError::Invalid(
                            "a scientist declares shipments for their own tenant only; leave the tenant out".into(),
                        ));
                    }
                    t
                }
                None => store.tenant_by_name(&asked).or_else(|_| store.tenant(&asked))?,
            };
            Ok((store.declare_shipment(&t.id, &text, &barcodes, &actor)?, t.name))
        })
        .await?;
        tracing::info!(by = %who.id, tenant = %shipment.tenant_id, shipment = %shipment.id, containers = shipment.barcodes.len(), "shipment declared");
        let tenant = if Self::scope(&who).is_some() { String::new() } else { name };
        Ok(Response::new(shipment_info(&shipment, tenant)))
    }

    async fn shipments(&self, req: Request<pb::ShipmentsRequest>) -> Result<Response<pb::ShipmentsResponse>, Status> {
        let who = self.caller(&req).await?;
        let (store, scope) = (self.store.clone(), Self::scope(&who));
        let staff = scope.is_none();
        let (open, names) = blocking(move || {
            let names: std::collections::BTreeMap<String, String> =
                if staff { store.tenants()?.into_iter().map(|t| (t.id, t.name)).collect() } else { Default::default() };
            Ok::<_, store::StoreError>((store.open_shipments(scope.as_deref())?, names))
        })
        .await?;
        Ok(Response::new(pb::ShipmentsResponse {
            shipments: open
                .iter()
                .map(|s| shipment_info(s, names.get(&s.tenant_id).cloned().unwrap_or_default()))
                .collect(),
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
        let (k, history, barcodes, runs) = blocking(move || {
            let k = store.container(scope.as_deref(), id.trim())?;
            let history = store.container_history(&k.id)?;
            // The same tenant's containers: the barcodes of what it came from, and what was made
            // from it.
            let theirs = store.containers(Some(&k.tenant_id))?;
            let barcodes = theirs.iter().map(|c| (c.id.clone(), c.barcode.clone())).collect();
            // The runs it went into (the tenant's: no run draws from another's containers).
            let runs = store.runs(Some(&k.tenant_id), &[])?;
            let named: Vec<(String, Vec<String>)> = runs
                .iter()
                .filter_map(|r| {
                    let plan = serde_json::from_str::<protocols::RunPlan>(&r.plan_json).ok()?;
                    Some((r.id.clone(), plan.labware.iter().filter_map(|l| l.container.clone()).collect()))
                })
                .collect();
            let mut linked = Vec::new();
            for (run, direct) in crate::lineage::runs_using(&k.id, &named, &theirs) {
                let Some(r) = runs.iter().find(|r| r.id == run) else { continue };
                let reads = store.results(Some(&k.tenant_id), &run)?.len() as i64;
                linked.push(pb::LinkedRun {
                    run_id: run,
                    name: r.name.clone(),
                    state: r.state.as_str().into(),
                    reads,
                    direct,
                });
            }
            Ok::<_, store::StoreError>((k, history, barcodes, linked))
        })
        .await?;
        Ok(Response::new(pb::ContainerInfo { runs, ..container_info(k, history, &barcodes) }))
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
