//! The one contract every instrument meets, shaped like a SiLA 2 observable command so serial,
//! TCP and gRPC devices look the same to the executor: start a command, get an execution handle
//! with a progress stream and a final result.

use crate::error::InstrumentError;
use protocols::plan::CommandOp;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Who the instrument says it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Identity {
    pub model: String,
    pub serial: String,
    pub firmware: String,
}

/// What an instrument is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Idle,
    Busy,
    /// The device reports a latched fault.
    Fault(String),
    /// The link is down.
    Offline,
}

/// A snapshot for technicians and the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    /// Current temperature where the instrument has one.
    pub temperature_c: Option<f64>,
    /// Free text: latch state, plate present, head position.
    pub detail: String,
}

/// How far a command has got.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Progress {
    /// 0.0 to 1.0.
    pub fraction: f64,
    pub message: String,
}

/// Values a command measured, per well.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub labware: String,
    /// `absorbance` or `fluorescence`.
    pub kind: String,
    pub wells: Vec<String>,
    /// Absorbance: every wavelength read; fluorescence: excitation then emission.
    pub wavelengths_nm: Vec<f64>,
    /// Well-major: for each well, one value per wavelength (fluorescence: one value per well).
    pub values: Vec<f64>,
    pub unit: String,
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    pub measurements: Vec<Measurement>,
}

/// A command in flight: watch its progress, await its result.
#[derive(Debug)]
pub struct Execution {
    pub progress: watch::Receiver<Progress>,
    done: oneshot::Receiver<Result<Outcome, InstrumentError>>,
}

/// The driver's end of an [`Execution`].
#[derive(Debug)]
pub struct ExecutionSender {
    progress: watch::Sender<Progress>,
    done: oneshot::Sender<Result<Outcome, InstrumentError>>,
}

impl Execution {
    /// A linked pair: the driver keeps the sender, the executor the execution.
    pub fn channel() -> (ExecutionSender, Execution) {
        let (ptx, prx) = watch::channel(Progress::default());
        let (dtx, drx) = oneshot::channel();
        (ExecutionSender { progress: ptx, done: dtx }, Execution { progress: prx, done: drx })
    }

    /// Waits for the final result.
    pub async fn finish(self) -> Result<Outcome, InstrumentError> {
        match self.done.await {
            Ok(r) => r,
            // The driver task ended without a verdict: treat like a lost link, state unknown.
            Err(_) => Err(InstrumentError::Protocol("the driver stopped before the command finished".into())),
        }
    }
}

impl ExecutionSender {
    /// Reports progress; the executor sees the latest value.
    pub fn progress(&self, fraction: f64, message: impl Into<String>) {
        let _ = self.progress.send(Progress { fraction: fraction.clamp(0.0, 1.0), message: message.into() });
    }

    /// Delivers the result (a dropped execution is fine: nobody is listening).
    pub fn finish(self, result: Result<Outcome, InstrumentError>) {
        let _ = self.done.send(result);
    }
}

/// A plate mover (a robot arm, a Flex's gripper): an instrument that takes `MoveLabware`, told
/// where each plate is before it moves it.
pub trait Arm: Instrument {
    /// Where a plate is now (the executor knows from the schedule).
    fn locate(&self, labware: &str, location: &str);

    /// What a plate is (its labware definition) and, on a liquid handler's deck, which slot the
    /// handler's task puts it in; movers that place plates on a robot's deck need it.
    fn carries(&self, _labware: &str, _def: &labware::LabwareDef, _deck_slot: Option<u32>) {}
}

/// Every instrument driver, real wire or simulated, implements this.
#[async_trait::async_trait]
pub trait Instrument: Send + Sync + std::fmt::Debug {
    /// Asks the device who it is (also proves the link works).
    async fn identify(&self) -> Result<Identity, InstrumentError>;
    /// Learns what a run puts on the instrument (deck layout) before its first command.
    async fn prepare(&self, _plan: &protocols::plan::RunPlan) -> Result<(), InstrumentError> {
        Ok(())
    }
    /// Starts one plan command. Validation errors come back here, before anything moves.
    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError>;
    /// Current state.
    async fn status(&self) -> Result<Status, InstrumentError>;
    /// Stops what the device is doing as soon as it safely can.
    async fn abort(&self) -> Result<(), InstrumentError>;
    /// Where the instrument is, by its own queries, for a technician and for recovery after a
    /// restart: a liquid handler's head, plunger and tips, an arm's joints and gripper. Changes
    /// nothing. By default, its status.
    async fn whereabouts(&self) -> Result<Whereabouts, InstrumentError> {
        let st = self.status().await?;
        let text = match st.detail.is_empty() {
            true => format!("{:?}", st.state),
            false => format!("{:?}: {}", st.state, st.detail),
        };
        Ok(Whereabouts { text, tips_on: None })
    }
    /// After labd restarted in the middle of a task: the task's commands the journal says were
    /// carried out, in order, so the driver knows again what it knew before the restart (the
    /// tip on the head, what it holds, where the head is). Sends nothing. Call after `prepare`.
    async fn replay(&self, _done: &[CommandOp]) -> Result<(), InstrumentError> {
        Ok(())
    }
    /// Whether `op`, sent before labd stopped and never answered, happened: what the instrument
    /// reports of itself against what the driver expects before and after it (call after
    /// [`Instrument::replay`] of the commands before it). A driver that cannot tell says so.
    /// Where it did happen (or its rest is to be sent), the driver's own knowledge follows.
    async fn settle(&self, _op: &CommandOp) -> Result<Settled, InstrumentError> {
        Ok(Settled::Unknown("this instrument cannot say whether a command happened".into()))
    }
    /// After a failed or aborted task: puts the instrument back in a known safe state where it
    /// can (tip dropped in the trash and head homed, shaking and heating stopped, plate ejected)
    /// and checks it with the device's own state query, so the next run, whoever's, starts
    /// clean. Says what it did; an error means a person must look at it before it is used again.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        let st = self.status().await?;
        match st.state {
            State::Idle => Ok("idle".into()),
            State::Busy => Err(unsafe_state("it still reports busy")),
            State::Fault(f) => Err(unsafe_state(&format!("it reports a fault: {f}"))),
            State::Offline => Err(unsafe_state("it reports offline")),
        }
    }
}

/// What recovery learns from an instrument about a command whose outcome was never recorded,
/// each with the reason in words.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// It happened: the instrument is where the command leaves it.
    Happened(String),
    /// It did not happen: the instrument is where it was before; sending it is safe.
    NotDone(String),
    /// It stopped part-way and sending this finishes it (an arm with the plate in its gripper).
    Rest(CommandOp, String),
    /// Nobody can tell from the instrument: a person must look.
    Unknown(String),
}

impl Settled {
    /// The reason in words.
    pub fn why(&self) -> &str {
        match self {
            Settled::Happened(w) | Settled::NotDone(w) | Settled::Rest(_, w) | Settled::Unknown(w) => w,
        }
    }
}

/// What an instrument says of where it is: in words, and the facts recovery decides on where
/// the instrument can tell them.
#[derive(Debug, Clone, PartialEq)]
pub struct Whereabouts {
    pub text: String,
    /// Channels carrying a tip (a liquid handler with a tip switch).
    pub tips_on: Option<u32>,
}

impl std::fmt::Display for Whereabouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The instrument is not in a state the next task may start from.
pub fn unsafe_state(what: &str) -> InstrumentError {
    InstrumentError::Device { code: "unsafe".into(), message: what.to_string() }
}

/// Converts physical durations to wall-clock durations: simulators and drivers share one scale
/// (1.0 real time, 0.01 for tests and demos).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale(pub f64);

impl TimeScale {
    pub const REAL: TimeScale = TimeScale(1.0);

    /// Wall-clock time for `seconds` of device time.
    pub fn wall(self, seconds: f64) -> Duration {
        Duration::try_from_secs_f64((seconds * self.0).max(0.0)).unwrap_or(Duration::ZERO)
    }
}

/// Rejects a command this family cannot run (routing bug or a hand-built plan).
pub fn unsupported(family: &str, op: &CommandOp) -> InstrumentError {
    let name = serde_json::to_value(op)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    InstrumentError::Validation {
        parameter: "op".into(),
        message: format!("{family} cannot run `{name}`; route it to the right instrument"),
    }
}
