//! What a run uses up: the labware it consumes (each tip rack it takes tips from, each plate,
//! reservoir and tube rack it declares, but not a container the lab already holds for the
//! tenant) and the lab's reagents poured for it (`reagent: PBS`), with what the site's price
//! table charges for them. Pure: the quote prices a plan with it, and the runtime counts the
//! lab's stock down with the same rule.

use crate::ast::Protocol;
use crate::diag::{Diagnostic, Diagnostics};
use crate::plan::{CommandOp, RunPlan};
use labware::{LabwareKind, Site};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What one run uses up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consumption {
    /// Labware units by load name.
    pub units: BTreeMap<String, u32>,
    /// Reagents poured, µL by reagent name.
    pub reagents_ul: BTreeMap<String, f64>,
}

impl Consumption {
    /// What a plan uses up when carried out to the end.
    pub fn of_plan(plan: &RunPlan) -> Consumption {
        let touched: BTreeSet<&str> = plan
            .tasks
            .iter()
            .flat_map(|t| &t.commands)
            .filter_map(|c| match &c.op {
                CommandOp::PickUpTip { rack, .. } => Some(rack.as_str()),
                _ => None,
            })
            .collect();
        Consumption::of(plan, |rack| touched.contains(rack))
    }

    /// What a plan used up once its labware was loaded, with `tips_taken_from(rack)` saying
    /// which tip racks it took tips from (a run that stopped half way took from fewer).
    pub fn of(plan: &RunPlan, tips_taken_from: impl Fn(&str) -> bool) -> Consumption {
        let mut c = Consumption::default();
        for lw in plan.labware.iter().filter(|l| l.container.is_none()) {
            let used = match lw.kind {
                LabwareKind::TipRack => tips_taken_from(&lw.name),
                LabwareKind::WellPlate | LabwareKind::Reservoir | LabwareKind::TubeRack => true,
                _ => false,
            };
            if used {
                *c.units.entry(lw.load_name.clone()).or_default() += 1;
            }
            for mix in lw.composition.values() {
                for (liquid, ul) in mix {
                    if let Some(reagent) = plan.reagents.get(liquid) {
                        *c.reagents_ul.entry(reagent.clone()).or_default() += ul;
                    }
                }
            }
        }
        c
    }

    /// The bill's lines for it, at the site's prices; what the site does not price is free.
    pub fn lines(&self, site: &Site) -> Vec<ConsumableLine> {
        let units = self.units.iter().filter_map(|(item, &n)| {
            Some(ConsumableLine::new(item, "each", f64::from(n), price_of(site, item, "each")?))
        });
        let reagents = self
            .reagents_ul
            .iter()
            .filter_map(|(item, &ul)| Some(ConsumableLine::new(item, "mL", ul / 1000.0, price_of(site, item, "mL")?)));
        units.chain(reagents).collect()
    }
}

/// The site's price of one `unit` of `item`: a reagent per `mL`, storage per `container-days`
/// (item `storage <condition>`), anything else per labware unit. `None`: not priced (free).
pub fn price_of(site: &Site, item: &str, unit: &str) -> Option<f64> {
    let prices = &site.prices;
    match unit {
        "mL" => prices.reagents.get(item),
        "container-days" => item.strip_prefix("storage ").and_then(|c| prices.storage_per_day.get(c)),
        _ => prices.per_unit.get(item),
    }
    .copied()
}

/// What `quantity` at `price` comes to on a bill, to the cent.
pub fn amount(quantity: f64, price: f64) -> f64 {
    (quantity * price * 100.0).round() / 100.0
}

/// One consumable on the bill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumableLine {
    /// A labware load name or a reagent's name.
    pub item: String,
    /// `each` or `mL`.
    pub unit: &'static str,
    pub quantity: f64,
    pub price: f64,
    pub amount: f64,
}

impl ConsumableLine {
    fn new(item: &str, unit: &'static str, quantity: f64, price: f64) -> ConsumableLine {
        ConsumableLine { item: item.to_string(), unit, quantity, price, amount: amount(quantity, price) }
    }
}

/// Every `reagent:` names one the lab stocks (its price table's `reagents`): P0210 otherwise,
/// with the names it does stock.
pub fn check_reagents(p: &Protocol, site: &Site, d: &mut Diagnostics) {
    for (liquid, reagent) in &p.reagents {
        if site.prices.reagents.contains_key(&reagent.name) {
            continue;
        }
        let stocked: Vec<&str> = site.prices.reagents.keys().map(String::as_str).collect();
        let hint = if stocked.is_empty() {
            "this lab stocks no reagents: bring it in a container of yours (`container:`) or declare its contents"
                .to_string()
        } else {
            format!("this lab stocks: {}", stocked.join(", "))
        };
        d.push(
            Diagnostic::error(
                "P0210",
                reagent.span,
                format!("liquid `{liquid}`: the lab does not stock a reagent named `{}`", reagent.name),
            )
            .with_hint(hint),
        );
    }
}
