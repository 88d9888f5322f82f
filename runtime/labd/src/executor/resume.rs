//! Resuming a run after labd restarted: what its history says it has done, whether it can go
//! on without a person, and the rest of its plan. Pure: the journal and the plan in, decisions
//! out; `recover` and admission do the IO.
//!
//! A run can go on by itself when labd stopped *between* its tasks: every task it began has
//! ended, no command or plate move was in flight, and every plate is back in storage (plates go
//! home between tasks). The tasks it finished are not done again; the scheduler plans the rest.
//! Anything else (a task under way, a command whose outcome nobody recorded) is settled as
//! before: the run stops with the reason, and a technician is asked about what cannot be known.

use crate::store::{Attempt, Event, Millis};
use protocols::plan::{CommandOp, RunPlan};
use std::collections::{BTreeMap, BTreeSet};

/// What a run's history says about its tasks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    /// Tasks that ended, with when (ms since the epoch).
    pub finished: BTreeMap<usize, Millis>,
    /// Tasks that began and did not end.
    pub under_way: BTreeSet<usize>,
}

/// Reads the `task_started` and `task_finished` events of a run's history.
pub fn progress(events: &[Event]) -> Progress {
    let mut p = Progress::default();
    for e in events {
        let task = serde_json::from_str::<serde_json::Value>(&e.payload_json)
            .ok()
            .and_then(|v| v["task"].as_u64())
            .map(|t| t as usize);
        match (e.kind.as_str(), task) {
            ("task_started", Some(t)) => {
                p.under_way.insert(t);
            }
            ("task_finished", Some(t)) => {
                p.under_way.remove(&t);
                p.finished.insert(t, e.at);
            }
            _ => {}
        }
    }
    p
}

/// Why a run that had begun cannot simply go on, or `None` when it can. A delay under way
/// (a task no instrument runs: `wait`) is no obstacle: it is waited again in full, which
/// "wait at least" allows.
pub fn blocker(
    plan: &RunPlan,
    progress: &Progress,
    attempts: &[Attempt],
    storage: &BTreeSet<String>,
) -> Option<String> {
    if let Some(a) = attempts.iter().find(|a| a.outcome.is_none()) {
        return Some(format!("{} may or may not have run {}", a.intent.instrument, a.intent.op_json));
    }
    let delay = |t: usize| plan.tasks.get(t).is_some_and(|task| task.class.is_none());
    if let Some(t) = progress.under_way.iter().find(|&&t| !delay(t)) {
        let label = plan.tasks.get(*t).map_or("?", |task| task.label.as_str());
        return Some(format!("task {t} ({label}) was under way"));
    }
    // Where each plate went last, by the moves that went through.
    let mut at: BTreeMap<String, String> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.intent.task_id < 0 && a.outcome.as_deref() == Some("ok")) {
        if let Ok(CommandOp::MoveLabware { labware, to }) = serde_json::from_str::<CommandOp>(&a.intent.op_json) {
            at.insert(labware, to);
        }
    }
    at.into_iter()
        .find(|(_, nest)| !storage.contains(nest))
        .map(|(plate, nest)| format!("plate {plate} was left on {nest}, not in storage"))
}

/// What an instrument's own answer settles about a command whose outcome was never recorded:
/// whether it happened (`"ok"`) or not (`"failed"`), and why that is known; `None` where
/// nobody can tell from the instrument (an aspirate: the tip holds an unknown volume).
pub fn settle(op_json: &str, w: &devices::Whereabouts) -> Option<(&'static str, String)> {
    let op: CommandOp = serde_json::from_str(op_json).ok()?;
    let tips = w.tips_on?;
    match op {
        CommandOp::PickUpTip { .. } if tips > 0 => Some(("ok", format!("{tips} channel(s) carry a tip"))),
        CommandOp::PickUpTip { .. } => Some(("failed", "no channel carries a tip".into())),
        CommandOp::DropTip { .. } if tips == 0 => Some(("ok", "no channel carries a tip".into())),
        CommandOp::DropTip { .. } => Some(("failed", format!("{tips} channel(s) still carry a tip"))),
        _ => None,
    }
}

/// A max-lag the restart made impossible to keep: the tenant is told.
#[derive(Debug, Clone, PartialEq)]
pub struct LostLag {
    pub from: usize,
    pub to: usize,
    pub max_s: f64,
    /// Seconds since `from` ended, at the time of the check.
    pub since_s: f64,
}

/// Marks a task that was carried out before labd restarted: no instrument, no time, no plate,
/// no commands. The scheduler orders what follows it as before; the executor skips it.
fn carried_out(task: &mut protocols::plan::Task) {
    task.class = None;
    task.duration_s = 0.0;
    task.holds.clear();
    task.commands.clear();
    task.pipettes.clear();
    task.instruments.clear();
    task.settings = Default::default();
}

/// Whether the executor should skip this task: it was carried out before labd restarted (see
/// [`remainder`]). Compiled tasks always have a command.
pub fn was_carried_out(task: &protocols::plan::Task) -> bool {
    task.class.is_none() && task.commands.is_empty()
}

/// The rest of a plan once the tasks in `finished` are done, at `now_ms`, with device time
/// running `1 / scale` times as fast as the wall clock: those tasks are marked carried out, and
/// a max-lag from one of them keeps what is left of its allowance (the task it ended can no
/// longer move), or, when nothing is left, is dropped and returned as lost.
pub fn remainder(
    plan: &RunPlan,
    finished: &BTreeMap<usize, Millis>,
    now_ms: Millis,
    scale: f64,
) -> (RunPlan, Vec<LostLag>) {
    let mut rest = plan.clone();
    for (i, t) in rest.tasks.iter_mut().enumerate() {
        if finished.contains_key(&i) {
            carried_out(t);
        }
    }
    let mut lost = Vec::new();
    rest.max_lags.retain_mut(|lag| {
        let (from, to) = (lag.from as usize, lag.to as usize);
        if finished.contains_key(&to) {
            return false; // both ends behind us: it held or was reported then
        }
        let Some(&ended) = finished.get(&from) else { return true };
        let since_s = (now_ms - ended).max(0) as f64 / 1000.0 / scale.max(1e-12);
        if since_s < lag.max_s {
            lag.max_s -= since_s;
            true
        } else {
            lost.push(LostLag { from, to, max_s: lag.max_s, since_s });
            false
        }
    });
    (rest, lost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Intent;

    fn event(kind: &str, task: usize, at: Millis) -> Event {
        Event { run_id: "r".into(), seq: 0, at, kind: kind.into(), payload_json: format!("{{\"task\": {task}}}") }
    }

    fn moved(plate: &str, to: &str, outcome: Option<&str>) -> Attempt {
        Attempt {
            id: "a".into(),
            intent: Intent {
                run_id: "r".into(),
                task_id: -1,
                command_index: 0,
                instrument: "arm1".into(),
                op_json: serde_json::to_string(&CommandOp::MoveLabware { labware: plate.into(), to: to.into() })
                    .unwrap(),
                repeatable: false,
            },
            outcome: outcome.map(str::to_string),
            error: None,
            intent_at: 0,
            outcome_at: None,
        }
    }

    fn elisa() -> RunPlan {
        let site = labware::Site::sim().unwrap();
        let source = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protocols/examples/elisa.yaml"),
        )
        .unwrap();
        let c = protocols::compile(
            &protocols::SourceFile::new("elisa.yaml", source),
            protocols::Format::Auto,
            &site,
            &labware::Library::shipped(),
        );
        c.plan.expect("elisa compiles")
    }

    #[test]
    fn a_run_stopped_between_tasks_with_its_plates_home_goes_on() {
        let mut plan = elisa();
        let p = progress(&[event("task_started", 0, 1), event("task_finished", 0, 5), event("task_started", 1, 6)]);
        assert_eq!(p.finished, BTreeMap::from([(0, 5)]));
        assert_eq!(p.under_way, BTreeSet::from([1]));
        let storage = BTreeSet::from(["hotel".to_string()]);
        assert!(blocker(&plan, &p, &[], &storage).unwrap().starts_with("task 1 ("), "an instrument's task under way");
        plan.tasks[1].class = None;
        assert_eq!(blocker(&plan, &p, &[], &storage), None, "a delay under way is waited again");
        let between = progress(&[event("task_started", 0, 1), event("task_finished", 0, 5)]);
        let home = [moved("p", "lh1.deck", Some("ok")), moved("p", "hotel", Some("ok"))];
        assert_eq!(blocker(&plan, &between, &home, &storage), None);
        let left = [moved("p", "lh1.deck", Some("ok"))];
        assert!(blocker(&plan, &between, &left, &storage).unwrap().contains("left on lh1.deck"));
        let in_flight = [moved("p", "lh1.deck", Some("ok")), moved("p", "hotel", None)];
        assert!(blocker(&plan, &between, &in_flight, &storage).unwrap().contains("may or may not have run"));
    }

    #[test]
    fn a_tip_switch_settles_pick_ups_and_drops_but_not_aspirates() {
        let on = |n| devices::Whereabouts { text: String::new(), tips_on: Some(n) };
        let pick = r#"{"op":"pick_up_tip","pipette":"p300_single","rack":"r","well":"A1"}"#;
        let drop = r#"{"op":"drop_tip","pipette":"p300_single"}"#;
        let aspirate = r#"{"op":"aspirate","pipette":"p300_single","labware":"p","well":"A1","volume_ul":50.0}"#;
        assert_eq!(settle(pick, &on(1)).map(|s| s.0), Some("ok"));
        assert_eq!(settle(pick, &on(0)).map(|s| s.0), Some("failed"));
        assert_eq!(settle(drop, &on(0)).map(|s| s.0), Some("ok"));
        assert_eq!(settle(drop, &on(1)).map(|s| s.0), Some("failed"));
        assert_eq!(settle(aspirate, &on(1)), None, "the volume in the tip is not known");
        let no_switch = devices::Whereabouts { text: String::new(), tips_on: None };
        assert_eq!(settle(pick, &no_switch), None);
    }

    #[test]
    fn the_remainder_skips_what_was_done_and_keeps_what_is_left_of_a_lag() {
        let mut plan = elisa();
        plan.max_lags = vec![
            protocols::plan::MaxLag { from: 0, to: 1, max_s: 600.0 },
            protocols::plan::MaxLag { from: 0, to: 2, max_s: 60.0 },
        ];
        let finished = BTreeMap::from([(0usize, 1_000_000)]);
        let (rest, lost) = remainder(&plan, &finished, 1_000_000 + 120_000, 1.0);
        assert!(was_carried_out(&rest.tasks[0]) && !was_carried_out(&rest.tasks[1]));
        assert_eq!(rest.tasks.len(), plan.tasks.len(), "task numbers stay as the history has them");
        assert_eq!(rest.max_lags, vec![protocols::plan::MaxLag { from: 0, to: 1, max_s: 480.0 }]);
        assert_eq!(lost, vec![LostLag { from: 0, to: 2, max_s: 60.0, since_s: 120.0 }]);
        assert!(plan.tasks.iter().all(|t| !was_carried_out(t)), "no compiled task looks carried out");
    }
}
