//! The schedule validator: checks a schedule against every constraint, whoever made it.

use crate::{can_run, max_overlap, resources, Job, Schedule};
use labware::Site;
use std::collections::BTreeMap;

const EPS: f64 = 1e-6;

/// A broken constraint.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// A task is missing or scheduled twice.
    Count { job: usize, task: u32, times: usize },
    /// Starts before its run is released.
    BeforeRelease { job: usize, task: u32 },
    /// Shorter than its duration.
    TooShort { job: usize, task: u32 },
    /// Starts before a predecessor ends.
    Precedence { job: usize, task: u32, after: u32 },
    /// On a resource that cannot run it (or none when it needs one).
    WrongResource { job: usize, task: u32, resource: Option<String> },
    /// More tasks at once than the resource holds.
    Capacity { resource: String, at_s: f64 },
    /// A max lag exceeded.
    MaxLag { job: usize, from: u32, to: u32, lag_s: f64, max_s: f64 },
}

/// Every violation of `s` (empty when the schedule is valid).
pub fn validate(site: &Site, jobs: &[Job], s: &Schedule) -> Vec<Violation> {
    let mut v = Vec::new();
    let res = resources(site);
    let mut at: BTreeMap<(usize, u32), Vec<usize>> = BTreeMap::new();
    for (i, a) in s.assignments.iter().enumerate() {
        at.entry((a.job, a.task)).or_default().push(i);
    }
    for (ji, j) in jobs.iter().enumerate() {
        for t in &j.plan.tasks {
            let n = at.get(&(ji, t.id)).map_or(0, Vec::len);
            if n != 1 {
                v.push(Violation::Count { job: ji, task: t.id, times: n });
            }
        }
    }
    let get = |ji: usize, ti: u32| at.get(&(ji, ti)).and_then(|x| x.first()).map(|&i| &s.assignments[i]);
    for a in &s.assignments {
        let Some(job) = jobs.get(a.job) else { continue };
        let Some(t) = job.plan.tasks.get(a.task as usize) else { continue };
        if a.start_s + EPS < job.release_s {
            v.push(Violation::BeforeRelease { job: a.job, task: a.task });
        }
        if a.end_s - a.start_s + EPS < t.duration_s {
            v.push(Violation::TooShort { job: a.job, task: a.task });
        }
        for &p in &t.after {
            if let Some(pa) = get(a.job, p) {
                if a.start_s + EPS < pa.end_s {
                    v.push(Violation::Precedence { job: a.job, task: a.task, after: p });
                }
            }
        }
        let ok = match (&a.resource, t.class) {
            (None, None) => true,
            (Some(r), Some(_)) => res.iter().any(|x| &x.id == r && can_run(x, t)),
            _ => false,
        };
        if !ok {
            v.push(Violation::WrongResource { job: a.job, task: a.task, resource: a.resource.clone() });
        }
    }
    for r in &res {
        let busy: Vec<(f64, f64)> = s
            .assignments
            .iter()
            .filter(|a| a.resource.as_deref() == Some(&r.id))
            .map(|a| (a.start_s, a.end_s - EPS))
            .collect();
        for &(st, _) in &busy {
            if max_overlap(&busy, st, st) > r.capacity as usize {
                v.push(Violation::Capacity { resource: r.id.clone(), at_s: st });
                break;
            }
        }
    }
    for (ji, j) in jobs.iter().enumerate() {
        for l in &j.plan.max_lags {
            if let (Some(f), Some(t)) = (get(ji, l.from), get(ji, l.to)) {
                let lag = t.start_s - f.end_s;
                if lag > l.max_s + EPS {
                    v.push(Violation::MaxLag { job: ji, from: l.from, to: l.to, lag_s: lag, max_s: l.max_s });
                }
            }
        }
    }
    v
}
