//! A plan as jobs: tasks and plate moves in planned order, each with the jobs it waits for.

use super::*;

/// What a job waits for: a plate, or exclusive use of a single-plate instrument, nest or arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Plate(usize, usize),
    Resource(usize),
    Arm(usize),
}

/// Builds the jobs of a schedule in planned order with their dependencies. Every dependency
/// points to an earlier job.
pub(super) fn jobs(problem: &LabProblem, s: &LabSchedule) -> Vec<Planned> {
    let mut items: Vec<(f64, f64, Job, usize)> = Vec::new();
    for (r, tasks) in s.tasks.iter().enumerate() {
        for (t, slot) in tasks.iter().enumerate() {
            items.push((
                slot.start,
                slot.end,
                Job::Task { run: r, task: t, resource: slot.resource, on_arm: slot.on_arm },
                r,
            ));
        }
    }
    for m in &s.moves {
        items.push((m.start, m.end, Job::Move(*m), m.run));
    }
    items.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let single = |res: usize| problem.resources.get(res).is_some_and(|r| r.capacity <= 1);
    let mut last: BTreeMap<Key, usize> = BTreeMap::new();
    let mut task_job: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, (start, _, job, run)) in items.into_iter().enumerate() {
        let mut deps: Vec<(usize, bool)> = Vec::new();
        let mut touch = |key: Key, cascade: bool, deps: &mut Vec<(usize, bool)>| {
            if let Some(&j) = last.get(&key) {
                deps.push((j, cascade));
            }
            last.insert(key, i);
        };
        match &job {
            Job::Task { run: r, task: t, resource, on_arm } => {
                let lt = &problem.runs[*r].tasks[*t];
                for a in &lt.after {
                    if let Some(&j) = task_job.get(&(*r, *a)) {
                        deps.push((j, true));
                    }
                }
                for &p in &lt.plates {
                    touch(Key::Plate(*r, p), true, &mut deps);
                }
                match (resource, on_arm) {
                    (Some(res), true) => touch(Key::Arm(*res), false, &mut deps),
                    (Some(res), false) if single(*res) => touch(Key::Resource(*res), false, &mut deps),
                    _ => {}
                }
                task_job.insert((*r, *t), i);
            }
            Job::Move(m) => {
                touch(Key::Plate(m.run, m.plate), true, &mut deps);
                touch(Key::Arm(m.arm), false, &mut deps);
                for nest in [m.from, m.to] {
                    if let Some(owner) = problem.nests.get(nest).and_then(|n| n.owner) {
                        if single(owner) {
                            touch(Key::Resource(owner), false, &mut deps);
                        }
                    }
                }
            }
        }
        out.push(Planned { job, start, deps, run });
    }
    out
}
