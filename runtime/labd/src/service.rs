//! How each tenant was served, from what its runs really did: turnaround against the run's
//! turnaround alone on the empty lab (its slowdown), and promises kept. Pure: the caller reads
//! the runs and their first promise from the store.

use std::collections::BTreeMap;

/// When a run was first promised to finish (wall-clock ms), from its `scheduled` events: a run
/// admitted again keeps its first promise, and that is the one it is held to.
pub fn first_promise_ms(events: &[crate::store::Event]) -> Option<i64> {
    events
        .iter()
        .filter(|e| e.kind == "scheduled")
        .find_map(|e| serde_json::from_str::<serde_json::Value>(&e.payload_json).ok()?.get("promised_at_ms")?.as_i64())
}

/// One finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub tenant_id: String,
    pub submitted_ms: i64,
    pub finished_ms: i64,
    /// Its turnaround alone on the empty lab (the quote's duration), device seconds.
    pub solo_s: f64,
    /// When it was promised (wall ms), if it was (spot runs are not).
    pub promised_ms: Option<i64>,
}

/// A tenant's service over its finished runs.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantService {
    pub tenant_id: String,
    pub runs: usize,
    pub mean_slowdown: f64,
    pub max_slowdown: f64,
    pub promised: usize,
    pub promises_kept: usize,
}

/// Per tenant (by id): slowdown is wall turnaround ÷ `time_scale` (wall seconds per device
/// second) ÷ turnaround alone; runs with no turnaround alone (nothing to do) count for promises
/// only.
pub fn per_tenant(runs: &[Served], time_scale: f64) -> Vec<TenantService> {
    let mut by: BTreeMap<&str, Vec<&Served>> = BTreeMap::new();
    for r in runs {
        by.entry(r.tenant_id.as_str()).or_default().push(r);
    }
    by.into_iter()
        .map(|(tenant, rs)| {
            let slowdowns: Vec<f64> = rs
                .iter()
                .filter(|r| r.solo_s > 0.0 && time_scale > 0.0)
                .map(|r| (r.finished_ms - r.submitted_ms).max(0) as f64 / 1000.0 / time_scale / r.solo_s)
                .collect();
            let promised: Vec<&&Served> = rs.iter().filter(|r| r.promised_ms.is_some()).collect();
            TenantService {
                tenant_id: tenant.to_string(),
                runs: rs.len(),
                mean_slowdown: if slowdowns.is_empty() {
                    0.0
                } else {
                    slowdowns.iter().sum::<f64>() / slowdowns.len() as f64
                },
                max_slowdown: slowdowns.iter().copied().fold(0.0, f64::max),
                promised: promised.len(),
                promises_kept: promised.iter().filter(|r| r.promised_ms.is_some_and(|p| r.finished_ms <= p)).count(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slowdown_is_turnaround_over_turnaround_alone_and_promises_are_counted() {
        let run = |t: &str, took_ms: i64, solo_s: f64, promised: Option<i64>| Served {
            tenant_id: t.into(),
            submitted_ms: 1_000,
            finished_ms: 1_000 + took_ms,
            solo_s,
            promised_ms: promised,
        };
        // At time scale 0.01 a wall second is 100 device seconds.
        let s = per_tenant(
            &[run("a", 2_000, 100.0, Some(3_000)), run("a", 4_000, 100.0, Some(4_000)), run("b", 1_000, 50.0, None)],
            0.01,
        );
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].runs, s[0].mean_slowdown, s[0].max_slowdown), (2, 3.0, 4.0));
        assert_eq!((s[0].promised, s[0].promises_kept), (2, 1), "finished at 5,000 after its promise of 4,000");
        assert_eq!((s[1].mean_slowdown, s[1].promised, s[1].promises_kept), (2.0, 0, 0));
    }
}
