//! The lab as a quote sees it: every run queued or under way, in the scheduler's model, from
//! now. What a run has done is done: the tasks it finished are carried out, and a task under
//! way keeps the instrument it runs on until its estimated end (an overrunning one until now at
//! least), as the executor's own plan keeps it. Pure: the runs, their histories and the clock in,
//! the model out.

use crate::executor::resume::{self, Progress};
use scheduler::lab::{LabProblem, Pin};

/// A run queued or under way, as its history tells it.
pub(crate) struct Queued {
    pub run: crate::store::Run,
    /// When it was first promised to finish (wall ms), if it was.
    pub promised_ms: Option<i64>,
    pub progress: Progress,
}

/// Adds `q` to `p`, with estimates corrected by `experience`, at `now_ms` with device time
/// running `1 / scale` times as fast as the wall clock. Returns its promise in device seconds
/// from now (`Some(None)`: promised nothing), or `None` when the run cannot be modelled: it is
/// left out, which errs early.
pub(crate) fn add_queued(
    p: &mut LabProblem,
    q: &Queued,
    experience: &crate::experience::Experience,
    now_ms: i64,
    scale: f64,
) -> Option<Option<f64>> {
    let plan = serde_json::from_str::<protocols::plan::RunPlan>(&q.run.plan_json).ok()?;
    let device_s = |ms: i64| (ms - now_ms) as f64 / 1000.0 / scale.max(1e-12);
    let short = crate::store::run_prefix(&q.run.id);
    let (rest, _) = resume::remainder(&plan, &q.progress.finished, now_ms, scale);
    let rest = experience.corrected(&rest.scoped(&short));
    let i = p.add_plan(&q.run.id, &q.run.tenant_id, 1.0, 0.0, &rest).ok()?;
    p.runs[i].class = q.run.class;
    for (&task, &began_ms) in &q.progress.under_way {
        let Some(on) = q.progress.began_on.get(&task) else { continue };
        let Some(estimate) = p.runs[i].tasks.get(task).map(|t| t.duration) else { continue };
        let (resource, on_arm) =
            match (p.resources.iter().position(|r| &r.id == on), p.arms.iter().position(|a| &a.id == on)) {
                (Some(r), _) => (r, false),
                (None, Some(a)) => (a, true),
                (None, None) => continue,
            };
        let start = device_s(began_ms).min(0.0);
        let end = (start + estimate).max(0.0);
        let pin = Pin { resource: Some(resource), on_arm, start, end, inbound: Vec::new(), outbound: Vec::new() };
        p.pinned[i][task] = Some(pin);
    }
    Some(q.promised_ms.map(device_s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, Run, RunState};

    fn site() -> labware::Site {
        labware::Site::from_toml(include_str!("../../../../sites/sim.toml")).unwrap()
    }

    fn queued(plan: &protocols::plan::RunPlan, events: &[(&str, usize, &str, i64)]) -> Queued {
        let events: Vec<Event> = events
            .iter()
            .map(|&(kind, task, on, at)| Event {
                run_id: "r1".into(),
                seq: 0,
                at,
                kind: kind.into(),
                payload_json: serde_json::json!({"task": task, "instrument": on}).to_string(),
            })
            .collect();
        let run = Run {
            id: "r1".into(),
            tenant_id: "t1".into(),
            idempotency_key: String::new(),
            name: "elisa".into(),
            source: String::new(),
            plan_json: serde_json::to_string(plan).unwrap(),
            state: RunState::Running,
            reason: None,
            priority: 0,
            class: labware::ServiceClass::Standard,
            submitted_at: 0,
            started_at: Some(0),
            finished_at: None,
            cell: None,
        };
        Queued { run, promised_ms: Some(60_000), progress: resume::progress(&events) }
    }

    #[test]
    fn what_a_run_has_done_is_done_and_a_step_under_way_keeps_its_instrument() {
        let site = site();
        let plan = crate::fixtures::elisa();
        let first = plan.tasks.iter().position(|t| t.class.is_some()).unwrap();
        let on =
            site.instruments.iter().find(|i| Some(i.class) == plan.tasks[first].class).map(|i| i.id.clone()).unwrap();
        let mut p = LabProblem::from_site(&site).unwrap();
        let none = Default::default();
        let fresh = add_queued(&mut p, &queued(&plan, &[]), &none, 0, 1.0).unwrap();
        assert_eq!(fresh, Some(60.0), "the promise in device seconds from now");
        assert!(!p.has_begun(0), "a run with no history has not begun");
        // Its first task began 10 s ago and runs on; every task before it finished.
        let mut history: Vec<(&str, usize, &str, i64)> = Vec::new();
        for t in 0..first {
            history.push(("task_started", t, "", 0));
            history.push(("task_finished", t, "", 0));
        }
        history.push(("task_started", first, on.as_str(), 0));
        let mut p = LabProblem::from_site(&site).unwrap();
        add_queued(&mut p, &queued(&plan, &history), &none, 10_000, 1.0).unwrap();
        let pin = p.pinned[0][first].clone().expect("the step under way is pinned");
        let estimate = p.runs[0].tasks[first].duration;
        assert_eq!(p.resources[pin.resource.unwrap()].id, on);
        assert!((pin.start + 10.0).abs() < 1e-9 && (pin.end - (estimate - 10.0).max(0.0)).abs() < 1e-9, "{pin:?}");
        for t in 0..first {
            assert_eq!(p.runs[0].tasks[t].duration, 0.0, "task {t} finished: nothing left of it");
        }
        // Long past its estimate, it still holds its instrument until now.
        let mut p = LabProblem::from_site(&site).unwrap();
        add_queued(&mut p, &queued(&plan, &history), &none, 10_000_000, 1.0).unwrap();
        let pin = p.pinned[0][first].clone().unwrap();
        assert_eq!(pin.end, 0.0, "{pin:?}");
    }
}
