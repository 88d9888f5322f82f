//! A workload file (`workload.toml`): what one tenant submits, compiled for the site. A bad
//! file is refused with the entry and what to change.

use super::CapacityError;
use labware::Site;
use protocols::plan::RunPlan;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `workload.toml`: what one tenant submits. Every simulated tenant submits the same, shifted
/// by `tenant_offset_s` per tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// Tenant k's submissions come k × this many device seconds after the first tenant's.
    #[serde(default)]
    pub tenant_offset_s: f64,
    /// Days each container a run stores stays in the lab's storage, for the cost of storage per
    /// run (at the site's `storage_per_day` for its condition); 0, the default, bills none.
    #[serde(default)]
    pub storage_days: f64,
    pub submit: Vec<SubmitEntry>,
}

/// Submissions of one protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitEntry {
    /// Protocol file, relative to the workload file.
    pub protocol: PathBuf,
    /// First submission, device seconds after the start.
    #[serde(default)]
    pub at_s: f64,
    /// Then again every this many seconds (with `count` > 1).
    #[serde(default)]
    pub every_s: f64,
    #[serde(default = "one")]
    pub count: u32,
    /// The service class they are submitted in (`standard`, `priority` or `spot`).
    #[serde(default)]
    pub class: labware::ServiceClass,
}

fn one() -> u32 {
    1
}

/// The most runs one simulation plans (every tenant's submissions together).
pub const MAX_RUNS: usize = 100_000;

/// A workload with its protocols compiled for the site.
#[derive(Debug, Clone)]
pub struct Workload {
    pub tenant_offset_s: f64,
    pub protocols: Vec<Submitted>,
    pub currency: String,
}

/// One protocol of the workload, compiled, with what a run of it costs.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The protocol's file name.
    pub name: String,
    pub plan: RunPlan,
    /// What a run is billed: its quote's total (device time, fee, consumables).
    pub price: f64,
    /// The consumables and reagents in that price.
    pub consumables: f64,
    /// Storage of what a run stores, for the workload's `storage_days`.
    pub storage: f64,
    /// Arrival times for one tenant, device seconds.
    pub arrivals: Vec<f64>,
    pub class: labware::ServiceClass,
}

impl Workload {
    /// Reads a workload file and compiles its protocols against `site`; errors name the file,
    /// the entry and what to change.
    pub fn load(path: &Path, site: &Site) -> Result<Workload, CapacityError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CapacityError::Workload(format!("cannot read workload {}: {e}", path.display())))?;
        let file: WorkloadFile =
            toml::from_str(&text).map_err(|e| CapacityError::Workload(format!("{}: {e}", path.display())))?;
        if file.submit.is_empty() {
            return Err(CapacityError::Workload(format!(
                "{}: no [[submit]] entries: add at least one protocol",
                path.display()
            )));
        }
        if !(file.storage_days.is_finite() && file.storage_days >= 0.0) {
            return Err(CapacityError::Workload(format!(
                "{}: storage_days must be a non-negative number of days",
                path.display()
            )));
        }
        if !(file.tenant_offset_s.is_finite() && file.tenant_offset_s >= 0.0) {
            return Err(CapacityError::Workload(format!(
                "{}: tenant_offset_s must be a non-negative number of seconds",
                path.display()
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let library = labware::Library::shipped();
        let mut protocols = Vec::new();
        let mut currency = String::new();
        for (i, e) in file.submit.iter().enumerate() {
            let at = format!("{}: [[submit]] #{} ({})", path.display(), i + 1, e.protocol.display());
            if !(e.at_s.is_finite() && e.at_s >= 0.0 && e.every_s.is_finite() && e.every_s >= 0.0) {
                return Err(CapacityError::Workload(format!(
                    "{at}: at_s and every_s must be non-negative numbers of seconds"
                )));
            }
            if e.count == 0 || e.count > MAX_RUNS as u32 {
                return Err(CapacityError::Workload(format!("{at}: count must be between 1 and {MAX_RUNS}")));
            }
            let p = base.join(&e.protocol);
            let source = std::fs::read(&p)
                .map_err(|err| CapacityError::Workload(format!("{at}: cannot read {}: {err}", p.display())))?;
            let name = e.protocol.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let (_, c) = protocols::compile_bytes(&name, source, protocols::Format::Auto, site, &library);
            let plan = match (c.has_errors(), c.plan) {
                (false, Some(plan)) => plan,
                _ => {
                    let first = c.diagnostics.iter().find(|d| d.is_error()).map(|d| d.message.clone());
                    return Err(CapacityError::Workload(format!(
                        "{at}: does not compile for this site: {}; check it with `labctl validate {}`",
                        first.unwrap_or_else(|| "no plan".into()),
                        p.display()
                    )));
                }
            };
            // Billed in its class: device time at the class's factor.
            let price = protocols::quote::quote_as(&plan, site, e.class).total;
            if let Some(q) = &c.quote {
                currency = q.currency.clone();
            }
            let arrivals = (0..e.count).map(|k| e.at_s + k as f64 * e.every_s).collect();
            let consumables = c.quote.as_ref().map_or(0.0, |q| q.consumables.iter().map(|l| l.amount).sum());
            let storage = crate::storage::outputs_by_condition(&plan)
                .iter()
                .map(|(condition, &n)| {
                    let price =
                        protocols::consumables::price_of(site, &format!("storage {condition}"), "container-days");
                    protocols::consumables::amount(n as f64 * file.storage_days, price.unwrap_or(0.0))
                })
                .sum();
            protocols.push(Submitted { name, plan, price, consumables, storage, arrivals, class: e.class });
        }
        Ok(Workload { tenant_offset_s: file.tenant_offset_s, protocols, currency })
    }
}
