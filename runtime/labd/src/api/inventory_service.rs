//! The Inventory service: shipments received from their manifests (technicians and admins) and
//! the containers the lab holds (a scientist sees its own tenant's only).

use super::*;

/// Where received containers go when the technician does not say.
const RECEIVING: &str = "receiving";

fn container_info(k: store::Container, history: Vec<store::ContainerEvent>) -> pb::ContainerInfo {
    pb::ContainerInfo {
        id: k.id,
        barcode: k.barcode,
        r#type: k.load_name,
        location: k.location,
        created_at_ms: k.created_at,
        wells: k
            .wells
            .into_iter()
            .map(|w| pb::WellInfo { well: w.well, sample: w.sample, liquid: w.liquid, volume_ul: w.volume_ul })
            .collect(),
        history: history
            .into_iter()
            .map(|h| pb::HistoryEntry { at_ms: h.at, kind: h.kind, detail: h.detail, by: h.actor })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::inventory_server::Inventory for Api {
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
        let location = if r.location.trim().is_empty() { RECEIVING.to_string() } else { r.location.trim().to_string() };
        let store = self.store.clone();
        let (tenant, actor) = (r.tenant.trim().to_string(), who.id.clone());
        let got = blocking(move || {
            let t = store.tenant_by_name(&tenant).or_else(|_| store.tenant(&tenant))?;
            store.receive_containers(&t.id, &containers, &location, &actor)
        })
        .await?;
        tracing::info!(by = %who.id, containers = got.len(), "shipment received");
        Ok(Response::new(pb::ContainersResponse {
            containers: got.into_iter().map(|k| container_info(k, Vec::new())).collect(),
        }))
    }

    async fn containers(
        &self,
        req: Request<pb::ContainersRequest>,
    ) -> Result<Response<pb::ContainersResponse>, Status> {
        let who = self.caller(&req).await?;
        let (store, scope) = (self.store.clone(), Self::scope(&who));
        let all = blocking(move || store.containers(scope.as_deref())).await?;
        Ok(Response::new(pb::ContainersResponse {
            containers: all.into_iter().map(|k| container_info(k, Vec::new())).collect(),
        }))
    }

    async fn container(&self, req: Request<pb::ContainerRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let who = self.caller(&req).await?;
        let (store, scope, id) = (self.store.clone(), Self::scope(&who), req.into_inner().id);
        let (k, history) = blocking(move || {
            let k = store.container(scope.as_deref(), id.trim())?;
            let history = store.container_history(&k.id)?;
            Ok((k, history))
        })
        .await?;
        Ok(Response::new(container_info(k, history)))
    }
}
