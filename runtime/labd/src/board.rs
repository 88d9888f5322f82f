//! The board: what the lab is doing right now, as technicians see it — which instruments are
//! unavailable and why, and the schedule as data (one lane per instrument and arm, past and
//! planned). The executor writes it; the API reads it. Memory only: the durable truth is the
//! store (runs, events, maintenance flags); the board is rebuilt from the plan after a restart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// How many finished slots of earlier plans the board keeps for the past part of the lanes.
const HISTORY: usize = 2000;

/// One task or plate move on a lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    /// Instrument or arm id.
    pub lane: String,
    pub run_id: String,
    pub tenant_id: String,
    /// `task` or `move`.
    pub kind: &'static str,
    pub label: String,
    pub planned_start_ms: i64,
    pub planned_end_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// `planned`, `running`, `done` or `failed`.
    pub state: &'static str,
}

#[derive(Debug, Default)]
struct State {
    /// The current plan's slots by job key.
    current: BTreeMap<String, Slot>,
    history: VecDeque<Slot>,
    /// Unavailable instruments: id → why (`maintenance: …`, `down: …`).
    unavailable: BTreeMap<String, String>,
}

/// Shared between the executor and the API.
#[derive(Debug, Default)]
pub struct Board {
    state: Mutex<State>,
    /// A technician's pause or emergency stop: the API sets it, the executor obeys.
    pub halt: crate::halt::HaltSwitch,
}

impl Board {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut crate::lock(&self.state))
    }

    /// Replaces the planned part of the current plan; slots already started keep their record.
    pub fn replan(&self, slots: Vec<(String, Slot)>) {
        self.with(|s| {
            let started: BTreeMap<String, Slot> =
                std::mem::take(&mut s.current).into_iter().filter(|(_, v)| v.state != "planned").collect();
            s.current = slots.into_iter().collect();
            for (k, v) in started {
                s.current.insert(k, v);
            }
        })
    }

    pub fn started(&self, key: &str, at_ms: i64) {
        self.with(|s| {
            if let Some(slot) = s.current.get_mut(key) {
                slot.started_ms = Some(at_ms);
                slot.state = "running";
            }
        })
    }

    pub fn finished(&self, key: &str, at_ms: i64, ok: bool) {
        self.with(|s| {
            if let Some(slot) = s.current.get_mut(key) {
                slot.finished_ms = Some(at_ms);
                slot.state = if ok { "done" } else { "failed" };
            }
        })
    }

    /// The plan is over: what happened moves to the history, what never started is dropped.
    pub fn close_plan(&self) {
        self.with(|s| {
            for (_, slot) in std::mem::take(&mut s.current) {
                if slot.state != "planned" {
                    s.history.push_back(slot);
                }
            }
            while s.history.len() > HISTORY {
                s.history.pop_front();
            }
        })
    }

    /// Past and planned slots, ordered by lane and start.
    pub fn schedule(&self) -> Vec<Slot> {
        let mut all: Vec<Slot> = self.with(|s| s.history.iter().cloned().chain(s.current.values().cloned()).collect());
        all.sort_by(|a, b| a.lane.cmp(&b.lane).then(a.planned_start_ms.cmp(&b.planned_start_ms)));
        all
    }

    /// The run an instrument is working for right now, if any.
    /// What a lane is doing now: (run, label) of its running slot.
    pub fn running(&self, lane: &str) -> Option<(String, String)> {
        self.with(|s| {
            s.current
                .values()
                .find(|v| v.lane == lane && v.state == "running")
                .map(|v| (v.run_id.clone(), v.label.clone()))
        })
    }

    pub fn busy_with(&self, lane: &str) -> Option<String> {
        self.with(|s| s.current.values().find(|v| v.lane == lane && v.state == "running").map(|v| v.run_id.clone()))
    }

    pub fn set_unavailable(&self, id: &str, why: Option<String>) {
        self.with(|s| match why {
            Some(w) => {
                s.unavailable.insert(id.to_string(), w);
            }
            None => {
                s.unavailable.remove(id);
            }
        })
    }

    pub fn unavailable(&self, id: &str) -> Option<String> {
        self.with(|s| s.unavailable.get(id).cloned())
    }

    pub fn unavailable_all(&self) -> BTreeMap<String, String> {
        self.with(|s| s.unavailable.clone())
    }
}
