//! A workload file (`workload.toml`): what tenants submit, compiled for the site. A bad file is
//! refused with the entry and what to change.
//!
//! One kind of tenant (`[[submit]]` entries at the top) or several (`[[profile]]`, each with
//! its share of the tenants and its own `[[profile.submit]]` entries). A submission comes at
//! fixed times (`at_s`, then `every_s` for `count`) or as a Poisson process (`per_day` over
//! `days`), drawn per tenant from the simulation's seed.

use super::CapacityError;
use labware::Site;
use protocols::plan::RunPlan;
use scheduler::shop::solve::Rng;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `workload.toml`.
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
    /// What every tenant submits (one kind of tenant).
    #[serde(default)]
    pub submit: Vec<SubmitEntry>,
    /// Kinds of tenant, each with its share of the tenants (instead of `submit`).
    #[serde(default)]
    pub profile: Vec<ProfileEntry>,
    /// Per instrument class, what a task on it really takes ÷ the compiler's estimate on this
    /// lab (as `labctl durations` measures it): `plate_reader = 1.5`. Simulated tasks last that
    /// long, and runs are planned with what the lab has learned of it so far.
    #[serde(default)]
    pub durations: std::collections::BTreeMap<labware::InstrumentClass, f64>,
}

/// A kind of tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    pub name: String,
    /// Its share of the tenants, relative to the other profiles' (default 1).
    #[serde(default = "one_f")]
    pub share: f64,
    pub submit: Vec<SubmitEntry>,
}

/// Submissions of one protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitEntry {
    /// Protocol file, relative to the workload file.
    pub protocol: PathBuf,
    /// First submission (or, with `per_day`, the start of the submissions), device seconds
    /// after the start.
    #[serde(default)]
    pub at_s: f64,
    /// Then again every this many seconds (with `count` > 1).
    #[serde(default)]
    pub every_s: f64,
    #[serde(default = "one")]
    pub count: u32,
    /// Instead of fixed times: this many submissions a day on average, at random (a Poisson
    /// process drawn from the simulation's seed), over `days`.
    #[serde(default)]
    pub per_day: Option<f64>,
    /// How many days `per_day` submissions go on (default 1).
    #[serde(default)]
    pub days: Option<f64>,
    /// The service class they are submitted in (`standard`, `priority` or `spot`).
    #[serde(default)]
    pub class: labware::ServiceClass,
}

fn one() -> u32 {
    1
}

fn one_f() -> f64 {
    1.0
}

/// The most runs one simulation plans (every tenant's submissions together).
pub const MAX_RUNS: usize = 100_000;

/// A workload with its protocols compiled for the site.
#[derive(Debug, Clone)]
pub struct Workload {
    pub tenant_offset_s: f64,
    /// Every submission entry, of every profile.
    pub protocols: Vec<Submitted>,
    /// Kinds of tenant (one, named `all`, for a file without profiles).
    pub profiles: Vec<Profile>,
    pub currency: String,
    /// What tasks really take ÷ their estimate, per instrument class (`[durations]`).
    pub durations: Vec<(labware::InstrumentClass, f64)>,
}

/// A kind of tenant: its share and its entries in [`Workload::protocols`].
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub share: f64,
    pub protocols: Vec<usize>,
}

/// When a tenant submits one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// At these times, device seconds.
    Fixed(Vec<f64>),
    /// A Poisson process: from `start_s` to `end_s`, on average one every `mean_gap_s`.
    Poisson { start_s: f64, end_s: f64, mean_gap_s: f64 },
}

impl Timing {
    /// One tenant's submission times (drawn with `rng` when random), in order.
    pub fn arrivals(&self, rng: &mut Rng) -> Vec<f64> {
        match self {
            Timing::Fixed(times) => times.clone(),
            Timing::Poisson { start_s, end_s, mean_gap_s } => {
                let mut out = Vec::new();
                let mut t = *start_s;
                loop {
                    // Exponential gaps: −ln(U) × mean, U uniform in (0, 1].
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    t += -(1.0 - u).ln() * mean_gap_s;
                    if t >= *end_s || out.len() >= MAX_RUNS {
                        return out;
                    }
                    out.push(t);
                }
            }
        }
    }
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
    /// When one tenant submits it.
    pub timing: Timing,
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
        let bad = |what: String| CapacityError::Workload(format!("{}: {what}", path.display()));
        let groups: Vec<(String, f64, &[SubmitEntry], String)> = match (file.submit.is_empty(), file.profile.is_empty())
        {
            (false, true) => vec![("all".into(), 1.0, &file.submit[..], "[[submit]]".into())],
            (true, false) => file
                .profile
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (p.name.clone(), p.share, &p.submit[..], format!("[[profile]] #{} ({}) [[submit]]", i + 1, p.name))
                })
                .collect(),
            (true, true) => return Err(bad("no [[submit]] entries: add at least one protocol".into())),
            (false, false) => {
                return Err(bad(
                    "both [[submit]] and [[profile]]: put every submission in a profile, or use no profiles".into(),
                ))
            }
        };
        if !(file.storage_days.is_finite() && file.storage_days >= 0.0) {
            return Err(bad("storage_days must be a non-negative number of days".into()));
        }
        if let Some((class, f)) = file.durations.iter().find(|(_, f)| !(f.is_finite() && **f > 0.0 && **f <= 10.0)) {
            return Err(bad(format!(
                "[durations] {}: {f} is not a factor of the estimate between 0 and 10; give what a task on it \
                 really takes ÷ its estimate, as `labctl durations` reports it",
                class.as_str()
            )));
        }
        if !(file.tenant_offset_s.is_finite() && file.tenant_offset_s >= 0.0) {
            return Err(bad("tenant_offset_s must be a non-negative number of seconds".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let library = labware::Library::shipped();
        let mut protocols = Vec::new();
        let mut profiles = Vec::new();
        let mut currency = String::new();
        for (pi, (name, share, entries, table)) in groups.iter().enumerate() {
            if name.trim().is_empty() || groups[..pi].iter().any(|g| g.0 == *name) {
                return Err(bad(format!("{table}: the profile's name is empty or used twice; name each profile once")));
            }
            if !(share.is_finite() && *share > 0.0) {
                return Err(bad(format!("[[profile]] {name}: share must be a positive number")));
            }
            if entries.is_empty() {
                return Err(bad(format!(
                    "[[profile]] {name}: no [[profile.submit]] entries: add at least one protocol"
                )));
            }
            let mut mine = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let at = format!("{}: {table} #{} ({})", path.display(), i + 1, e.protocol.display());
                let timing = timing(e).map_err(|why| CapacityError::Workload(format!("{at}: {why}")))?;
                let p = base.join(&e.protocol);
                let source = std::fs::read(&p)
                    .map_err(|err| CapacityError::Workload(format!("{at}: cannot read {}: {err}", p.display())))?;
                let file_name = e.protocol.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let (_, c) = protocols::compile_bytes(&file_name, source, protocols::Format::Auto, site, &library);
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
                let quote = protocols::quote::quote_as(&plan, site, e.class);
                currency = quote.currency.clone();
                let consumables = quote.consumables.iter().map(|l| l.amount).sum();
                let storage = crate::storage::outputs_by_condition(&plan)
                    .iter()
                    .map(|(condition, &n)| {
                        let price =
                            protocols::consumables::price_of(site, &format!("storage {condition}"), "container-days");
                        protocols::consumables::amount(n as f64 * file.storage_days, price.unwrap_or(0.0))
                    })
                    .sum();
                mine.push(protocols.len());
                protocols.push(Submitted {
                    name: file_name,
                    plan,
                    price: quote.total,
                    consumables,
                    storage,
                    timing,
                    class: e.class,
                });
            }
            profiles.push(Profile { name: name.clone(), share: *share, protocols: mine });
        }
        let durations = file.durations.into_iter().collect();
        Ok(Workload { tenant_offset_s: file.tenant_offset_s, protocols, profiles, currency, durations })
    }

    /// The profile of each of `tenants` tenants: tenants are dealt to profiles in proportion
    /// to their shares, each next tenant to the profile furthest below its share so far, so any
    /// number of tenants splits as evenly as it can and tenant `t`'s profile does not depend on
    /// how many tenants there are.
    pub fn profiles_of(&self, tenants: usize) -> Vec<usize> {
        let total: f64 = self.profiles.iter().map(|p| p.share).sum();
        let mut dealt = vec![0usize; self.profiles.len()];
        (0..tenants)
            .map(|k| {
                let behind = |i: usize| self.profiles[i].share / total * (k + 1) as f64 - dealt[i] as f64;
                let next = (0..self.profiles.len())
                    .max_by(|&a, &b| behind(a).total_cmp(&behind(b)).then(b.cmp(&a)))
                    .unwrap_or(0);
                dealt[next] += 1;
                next
            })
            .collect()
    }
}

/// The timing an entry asks for, or why it is wrong.
fn timing(e: &SubmitEntry) -> Result<Timing, String> {
    if !(e.at_s.is_finite() && e.at_s >= 0.0 && e.every_s.is_finite() && e.every_s >= 0.0) {
        return Err("at_s and every_s must be non-negative numbers of seconds".into());
    }
    let Some(per_day) = e.per_day else {
        if e.days.is_some() {
            return Err("days goes with per_day (submissions at random); give per_day too, or remove days".into());
        }
        if e.count == 0 || e.count > MAX_RUNS as u32 {
            return Err(format!("count must be between 1 and {MAX_RUNS}"));
        }
        return Ok(Timing::Fixed((0..e.count).map(|k| e.at_s + k as f64 * e.every_s).collect()));
    };
    if e.every_s != 0.0 || e.count != 1 {
        return Err(
            "give either per_day (submissions at random) or every_s and count (at fixed times), not both".into()
        );
    }
    let days = e.days.unwrap_or(1.0);
    if !(per_day.is_finite() && per_day > 0.0) {
        return Err("per_day must be a positive number of submissions a day".into());
    }
    if !(days.is_finite() && days > 0.0) {
        return Err("days must be a positive number of days".into());
    }
    if per_day * days > MAX_RUNS as f64 {
        return Err(format!("per_day × days must be at most {MAX_RUNS} submissions"));
    }
    Ok(Timing::Poisson { start_s: e.at_s, end_s: e.at_s + days * 86_400.0, mean_gap_s: 86_400.0 / per_day })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_come_at_the_rate_asked_and_repeat_with_the_seed() {
        let t = Timing::Poisson { start_s: 100.0, end_s: 100.0 + 100.0 * 86_400.0, mean_gap_s: 86_400.0 / 6.0 };
        let a = t.arrivals(&mut Rng::new(3));
        assert_eq!(a, t.arrivals(&mut Rng::new(3)));
        assert_ne!(a, t.arrivals(&mut Rng::new(4)));
        // 600 expected over 100 days; a Poisson count's standard deviation is about 24.5.
        assert!((500..=700).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a[0] > 100.0 && *a.last().unwrap() < 100.0 + 8_640_000.0);
        assert_eq!(Timing::Fixed(vec![1.0, 2.0]).arrivals(&mut Rng::new(1)), vec![1.0, 2.0]);
    }
}
