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
    /// Tasks that began and did not end, with when each began (ms since the epoch).
    pub under_way: BTreeMap<usize, Millis>,
    /// The instrument each task began on (none: a delay, or a task its event did not say).
    pub began_on: BTreeMap<usize, String>,
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
                p.under_way.insert(t, e.at);
                let on = serde_json::from_str::<serde_json::Value>(&e.payload_json)
                    .ok()
                    .and_then(|v| v["instrument"].as_str().map(str::to_string));
                if let Some(on) = on {
                    p.began_on.insert(t, on);
                }
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

/// A task that was under way when labd stopped: it goes on from `from` on `instrument`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnderWay {
    pub task: usize,
    /// `None`: a person's task.
    pub instrument: Option<String>,
    /// The first command not carried out (every command in doubt settled first).
    pub from: usize,
}

/// What a run that had begun must finish before it can be planned again: tasks under way, and
/// plates that are not in storage (on an instrument's nest, in a transfer station).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Leftover {
    pub tasks: Vec<UnderWay>,
    /// Plate → the nest it is on, for every plate not in storage.
    pub plates: BTreeMap<String, String>,
}

impl Leftover {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.plates.is_empty()
    }
}

/// What a run left under way, from its history and its journal once no command is in doubt.
/// A delay under way is no obstacle: it is waited again in full, which "wait at least" allows.
pub fn leftover(plan: &RunPlan, progress: &Progress, attempts: &[Attempt], storage: &BTreeSet<String>) -> Leftover {
    let tasks = progress
        .under_way
        .keys()
        .filter(|&&t| plan.tasks.get(t).is_some_and(|task| task.class.is_some()))
        .map(|&t| {
            let done = attempts
                .iter()
                .filter(|a| a.intent.task_id == t as i64 && a.outcome.as_deref() == Some("ok"))
                .map(|a| a.intent.command_index.max(0) as usize + 1);
            UnderWay { task: t, instrument: progress.began_on.get(&t).cloned(), from: done.max().unwrap_or(0) }
        })
        .collect();
    Leftover { tasks, plates: plates_out(attempts, storage) }
}

/// Where each plate went last, by the moves that went through, for plates not in storage.
pub fn plates_out(attempts: &[Attempt], storage: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut moves: Vec<&Attempt> =
        attempts.iter().filter(|a| a.intent.task_id < 0 && a.outcome.as_deref() == Some("ok")).collect();
    moves.sort_by_key(|a| a.intent_at);
    let mut at: BTreeMap<String, String> = BTreeMap::new();
    for a in moves {
        if let Ok(CommandOp::MoveLabware { labware, to }) = serde_json::from_str::<CommandOp>(&a.intent.op_json) {
            at.insert(labware, to);
        }
    }
    at.retain(|_, nest| !storage.contains(nest));
    at
}

/// What elapsed time settles about a timed hold the driver keeps (an incubation, a shake)
/// whose outcome was never recorded: the instrument kept its set point; what is left of the
/// time is the rest, or nothing when it is up. `None` for any other command (a centrifuge
/// times its own spin: sending the rest would spin it twice).
pub fn settle_hold(op: &CommandOp, elapsed_s: f64) -> Option<devices::Settled> {
    let left = |d: f64| d - elapsed_s.max(0.0);
    let (rest, of) = match op {
        CommandOp::Incubate { duration_s, .. } | CommandOp::Shake { duration_s, .. } => {
            (left(*duration_s), *duration_s)
        }
        _ => return None,
    };
    if rest <= 0.0 {
        return Some(devices::Settled::Happened(format!(
            "its {of:.0} s were over ({elapsed_s:.0} s since it was sent)"
        )));
    }
    let mut shorter = op.clone();
    match &mut shorter {
        CommandOp::Incubate { duration_s, .. } | CommandOp::Shake { duration_s, .. } => *duration_s = rest,
        _ => {}
    }
    Some(devices::Settled::Rest(
        shorter,
        format!("{elapsed_s:.0} s of its {of:.0} s had passed; the rest, {rest:.0} s, is held now"),
    ))
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
/// [`remainder`]). Compiled tasks always have a command; a thaw of kitting has none.
pub fn was_carried_out(task: &protocols::plan::Task) -> bool {
    task.class.is_none() && task.commands.is_empty() && crate::kitting_tasks::stage(task).is_none()
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

    use crate::fixtures::elisa;

    fn sent(task: i64, index: i64, outcome: Option<&str>) -> Attempt {
        let mut a = moved("p", "x", outcome);
        a.intent.task_id = task;
        a.intent.command_index = index;
        a.intent.instrument = "lh1".into();
        a
    }

    #[test]
    fn what_a_run_left_under_way_is_read_from_its_history_and_journal() {
        let mut plan = elisa();
        let started = |t: usize| Event {
            run_id: "r".into(),
            seq: 0,
            at: 1,
            kind: "task_started".into(),
            payload_json: format!("{{\"task\": {t}, \"instrument\": \"lh1\"}}"),
        };
        let p = progress(&[started(0), event("task_finished", 0, 5), started(1)]);
        assert_eq!(p.finished, BTreeMap::from([(0, 5)]));
        assert_eq!(p.under_way.keys().copied().collect::<BTreeSet<_>>(), BTreeSet::from([1]));
        assert_eq!(p.began_on.get(&1).map(String::as_str), Some("lh1"));
        let storage = BTreeSet::from(["hotel".to_string()]);
        // Task 1 under way: two commands went through, the third is in doubt (or did not happen).
        let journal = [
            moved("p", "lh1.deck", Some("ok")),
            sent(1, 0, Some("ok")),
            sent(1, 1, Some("ok")),
            sent(1, 2, Some("not_done")),
        ];
        let left = leftover(&plan, &p, &journal, &storage);
        assert_eq!(left.tasks, vec![UnderWay { task: 1, instrument: Some("lh1".into()), from: 2 }]);
        assert_eq!(left.plates, BTreeMap::from([("p".to_string(), "lh1.deck".to_string())]));
        // A delay under way is waited again: nothing to finish.
        plan.tasks[1].class = None;
        assert!(leftover(&plan, &p, &[], &storage).is_empty(), "a delay under way is waited again");
        // Between tasks with the plate home: nothing left.
        let between = progress(&[started(0), event("task_finished", 0, 5)]);
        let home = [moved("p", "lh1.deck", Some("ok")), moved("p", "hotel", Some("ok"))];
        assert!(leftover(&plan, &between, &home, &storage).is_empty());
        let in_flight = [moved("p", "lh1.deck", Some("ok")), moved("p", "hotel", None)];
        assert_eq!(
            leftover(&plan, &between, &in_flight, &storage).plates.len(),
            1,
            "a move in doubt moved nothing yet"
        );
    }

    #[test]
    fn a_timed_hold_in_doubt_is_held_for_what_is_left_of_it() {
        let incubate = CommandOp::Incubate {
            labware: "p".into(),
            temperature_c: Some(37.0),
            duration_s: 600.0,
            shake_rpm: None,
            co2_percent: None,
        };
        match settle_hold(&incubate, 200.0) {
            Some(devices::Settled::Rest(CommandOp::Incubate { duration_s, .. }, _)) => assert_eq!(duration_s, 400.0),
            other => panic!("{other:?}"),
        }
        assert!(matches!(settle_hold(&incubate, 700.0), Some(devices::Settled::Happened(_))));
        let spin = CommandOp::Centrifuge { labware: "p".into(), g: 500.0, duration_s: 60.0 };
        assert_eq!(settle_hold(&spin, 10.0), None, "a centrifuge times its own spin");
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
