//! `labctl kit`: the technician's pick lists — what to fetch before runs start, and each item
//! confirmed by scanning its barcode.

use super::*;

pub(super) async fn run(
    c: &Client,
    run: Option<String>,
    scan: Option<String>,
    item: Option<i64>,
    json: bool,
) -> Result<i32> {
    let mut inventory = pb::inventory_client::InventoryClient::new(c.channel.clone());
    let list = |run: Option<String>| pb::PickListRequest { run_id: run.unwrap_or_default() };
    let items = match (run, scan) {
        (Some(run), Some(barcode)) => {
            let n = match item {
                Some(n) => n,
                None => {
                    let items = inventory
                        .pick_list(c.req(list(Some(run.clone())))?)
                        .await
                        .map_err(sentence)?
                        .into_inner()
                        .items;
                    let open: Vec<&pb::PickItemInfo> = items.iter().filter(|i| i.confirmed_by.is_empty()).collect();
                    // The open item this barcode is for; else the first open one, whose refusal
                    // says what to scan instead.
                    match open.iter().find(|i| i.expected == barcode.trim()).or(open.first()) {
                        Some(i) => i.n,
                        None if items.is_empty() => {
                            bail!("run {run} has no pick list (yet): it is issued when the run is about to start")
                        }
                        None => bail!("every item of run {run}'s pick list is confirmed already"),
                    }
                }
            };
            let request = pb::ConfirmPickRequest { run_id: run, n, barcode };
            inventory.confirm_pick(c.req(request)?).await.map_err(sentence)?.into_inner().items
        }
        (run, _) => inventory.pick_list(c.req(list(run))?).await.map_err(sentence)?.into_inner().items,
    };
    print_items(&items, json)?;
    Ok(0)
}

fn print_items(items: &[pb::PickItemInfo], json: bool) -> Result<()> {
    if json {
        out!(
            "{}",
            json_array(items.iter().map(|i| serde_json::json!({
                "run_id": i.run_id, "n": i.n, "kind": i.kind, "what": i.what, "from": i.from, "to": i.to,
                "expected": i.expected, "thaw_min": i.thaw_min,
                "confirmed_by": (!i.confirmed_by.is_empty()).then_some(&i.confirmed_by),
                "confirmed_at_ms": (i.confirmed_at_ms > 0).then_some(i.confirmed_at_ms),
            })))
        );
        return Ok(());
    }
    let mut run = "";
    for i in items {
        if i.run_id != run {
            run = &i.run_id;
            out!("run {run}");
        }
        let done = if i.confirmed_by.is_empty() { "[ ]".to_string() } else { format!("[x] by {}", i.confirmed_by) };
        let thaw = if i.thaw_min > 0 { format!(" (thaw {} min)", i.thaw_min) } else { String::new() };
        out!("  {:>2} {done} {}: {} from {} to {}{thaw}; scan {}", i.n, i.kind, i.what, i.from, i.to, i.expected);
    }
    Ok(())
}
