//! `labctl receive`, `containers`, `container show`: shipments and the containers the lab holds;
//! `labctl stock`: the lab's reagent lots and counted consumables.

use super::*;
use std::io::BufRead;

pub(super) async fn run(c: &Client, cmd: ClientCmd) -> Result<i32> {
    let inventory = || pb::inventory_client::InventoryClient::new(c.channel.clone());
    match cmd {
        ClientCmd::Ship { out, manifest, tenant } => {
            let manifest_csv = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
            let request = pb::DeclareShipmentRequest { manifest_csv, tenant: tenant.unwrap_or_default() };
            let s = inventory().declare_shipment(c.req(request)?).await.map_err(sentence)?.into_inner();
            if out.format == Fmt::Json {
                out!("{}", shipment_json(&s));
            } else {
                out!("shipment {} declared: {} container(s); write its id on the box", s.id, s.containers.len());
                print_shipped(&s)?;
            }
            Ok(0)
        }
        ClientCmd::Shipments { out } => {
            let got = inventory().shipments(c.req(pb::ShipmentsRequest {})?).await.map_err(sentence)?.into_inner();
            if out.format == Fmt::Json {
                out!("{}", json_array(got.shipments.iter().map(shipment_json)));
                return Ok(0);
            }
            for s in &got.shipments {
                let from = if s.tenant.is_empty() { String::new() } else { format!(" from {}", s.tenant) };
                out!("{}{from}, declared {} by {}", s.id, crate::clock::rfc3339(s.declared_at_ms), s.declared_by);
                print_shipped(s)?;
            }
            Ok(0)
        }
        ClientCmd::Receive { out, manifest, tenant, shipment, location } => {
            let text = match &manifest {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read the manifest {}", path.display()))?,
                ),
                None => None,
            };
            // The barcodes to scan: the manifest's, else the declared shipment's.
            let declared: std::collections::BTreeSet<String> = match (&text, &shipment, &tenant) {
                (Some(t), _, _) if shipment.is_some() || tenant.is_some() => crate::manifest::barcodes(t),
                (None, Some(id), _) => {
                    let open = inventory().shipments(c.req(pb::ShipmentsRequest {})?).await.map_err(sentence)?;
                    let Some(s) = open.into_inner().shipments.into_iter().find(|s| &s.id == id) else {
                        bail!("no shipment {id} waits to be received (labctl shipments lists those that do)");
                    };
                    s.containers.into_iter().map(|k| k.barcode).collect()
                }
                _ => bail!("say what to receive: --shipment ID (a declared shipment), or MANIFEST --tenant NAME"),
            };
            let mut scanned = std::collections::BTreeSet::new();
            eprintln!("scan the {} container(s) of the shipment, one barcode per line", declared.len());
            for line in std::io::stdin().lock().lines() {
                let code = line.context("reading scanned barcodes")?.trim().to_string();
                if code.is_empty() {
                    continue;
                }
                if !declared.contains(&code) {
                    eprintln!("{code} is not in this manifest; set it aside");
                    continue;
                }
                scanned.insert(code);
                eprintln!("{} of {} scanned", scanned.len(), declared.len());
                if scanned.len() == declared.len() {
                    break;
                }
            }
            let request = pb::ReceiveRequest {
                tenant: tenant.unwrap_or_default(),
                manifest_csv: text.unwrap_or_default(),
                location,
                scanned: scanned.into_iter().collect(),
                shipment_id: shipment.unwrap_or_default(),
            };
            let got = inventory().receive(c.req(request)?).await.map_err(sentence)?.into_inner().containers;
            print_containers(&got, out.format == Fmt::Json)?;
            Ok(0)
        }
        ClientCmd::Containers { out } => {
            let got = inventory().containers(c.req(pb::ContainersRequest {})?).await.map_err(sentence)?.into_inner();
            print_containers(&got.containers, out.format == Fmt::Json)?;
            Ok(0)
        }
        ClientCmd::Container(ContainerCmd::Show { out, id }) => {
            let k = inventory().container(c.req(pb::ContainerRequest { id })?).await.map_err(sentence)?.into_inner();
            if out.format == Fmt::Json {
                out!("{}", container_json(&k));
                return Ok(0);
            }
            out!("{} {} ({}) at {}", k.barcode, k.id, k.r#type, place(&k));
            for w in &k.wells {
                let from = if w.from.is_empty() { String::new() } else { format!("  from {}", w.from.join(", ")) };
                out!(
                    "  {:<4} {:<12} {:<16} {} µL{from}",
                    w.well,
                    w.sample,
                    w.liquid,
                    protocols::units::trim(w.volume_ul)
                );
            }
            for h in &k.history {
                out!("  {} {} by {}: {}", crate::clock::rfc3339(h.at_ms), h.kind, h.by, h.detail);
            }
            for r in &k.runs {
                let how = if r.direct { "used it" } else { "used what was made from it" };
                out!(
                    "  run {} ({}, {}) {how}: {} read(s) (labctl results {})",
                    r.run_id,
                    r.name,
                    r.state,
                    r.reads,
                    r.run_id
                );
            }
            Ok(0)
        }
        ClientCmd::Stock { out, cmd } => {
            let got = match cmd {
                None => inventory().stock(c.req(pb::StockRequest {})?).await,
                Some(StockCmd::Receive { reagent, lot, expires, volume }) => {
                    let volume_ul = protocols::units::parse(&volume, protocols::units::Dim::Volume)
                        .map_err(|e| anyhow::anyhow!("--volume {volume:?}: {e}; write it as `500 mL`"))?;
                    let request = pb::ReceiveLotRequest { reagent, lot, expires_on: expires, volume_ul };
                    inventory().receive_lot(c.req(request)?).await
                }
                Some(StockCmd::Count { r#type, on_hand, reorder_at }) => {
                    inventory().set_consumable(c.req(pb::SetConsumableRequest { r#type, on_hand, reorder_at })?).await
                }
            };
            print_stock(&got.map_err(sentence)?.into_inner(), out.format == Fmt::Json)?;
            Ok(0)
        }
        _ => bail!("not an inventory command"),
    }
}

fn container_json(k: &pb::ContainerInfo) -> serde_json::Value {
    serde_json::json!({
        "id": k.id, "barcode": k.barcode, "type": k.r#type, "location": k.location, "slot": (k.slot > 0).then_some(k.slot), "created_at_ms": k.created_at_ms,
        "wells": k.wells.iter().map(|w| serde_json::json!({"well": w.well, "sample": w.sample, "liquid": w.liquid, "volume_ul": w.volume_ul, "from": w.from})).collect::<Vec<_>>(),
        "history": k.history.iter().map(|h| serde_json::json!({"at_ms": h.at_ms, "kind": h.kind, "detail": h.detail, "by": h.by})).collect::<Vec<_>>(),
        "runs": k.runs.iter().map(|r| serde_json::json!({"run": r.run_id, "name": r.name, "state": r.state, "reads": r.reads, "direct": r.direct})).collect::<Vec<_>>(),
    })
}

/// Where a container is, with its position there: `freezer80 #12`.
fn place(k: &pb::ContainerInfo) -> String {
    if k.slot > 0 {
        format!("{} #{}", k.location, k.slot)
    } else {
        k.location.clone()
    }
}

fn shipment_json(s: &pb::ShipmentInfo) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "tenant": s.tenant, "declared_at_ms": s.declared_at_ms, "declared_by": s.declared_by,
        "containers": s.containers.iter().map(|k| serde_json::json!({"barcode": k.barcode, "type": k.r#type, "wells": k.wells})).collect::<Vec<_>>(),
    })
}

fn print_shipped(s: &pb::ShipmentInfo) -> Result<()> {
    for k in &s.containers {
        out!("  {:<16} {:<36} {} well(s)", k.barcode, k.r#type, k.wells);
    }
    Ok(())
}

fn print_containers(list: &[pb::ContainerInfo], json: bool) -> Result<()> {
    if json {
        out!("{}", json_array(list.iter().map(container_json)));
        return Ok(());
    }
    for k in list {
        out!("{:<16} {:<24} {:<36} {:<16} {} well(s)", k.barcode, k.id, k.r#type, place(k), k.wells.len());
    }
    Ok(())
}

fn print_stock(s: &pb::StockResponse, json: bool) -> Result<()> {
    if json {
        out!(
            "{}",
            serde_json::json!({
                "lots": s.lots.iter().map(|l| serde_json::json!({"reagent": l.reagent, "lot": l.lot, "expires_on": l.expires_on, "volume_ul": l.volume_ul, "expired": l.expired})).collect::<Vec<_>>(),
                "consumables": s.consumables.iter().map(|c| serde_json::json!({"type": c.r#type, "on_hand": c.on_hand, "reorder_at": c.reorder_at, "reorder": c.reorder})).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    for l in &s.lots {
        let note = if l.expired { "  EXPIRED" } else { "" };
        out!(
            "{:<24} lot {:<12} expires {}  {:>10} mL{note}",
            l.reagent,
            l.lot,
            l.expires_on,
            protocols::units::trim(l.volume_ul / 1000.0)
        );
    }
    for c in &s.consumables {
        let note = if c.reorder { "  REORDER" } else { "" };
        out!("{:<44} {:>6} on hand (reorder at {}){note}", c.r#type, c.on_hand, c.reorder_at);
    }
    Ok(())
}
