//! The Opentrons robot HTTP API (robot-server, port 31950), sans IO: the JSON bodies a client
//! posts and what the robot's replies mean. Shapes follow the robot's published OpenAPI document
//! (`/openapi.json`): every body is wrapped in `{"data": …}`, errors come as
//! `{"errors": [{"id", "title", "detail", "errorCode"}]}`, and a command is
//! `{"id", "key", "commandType", "params", "status", "result", "error"}`.
//!
//! The driver ([`crate::driver::opentrons`]) and the simulator ([`crate::sim::opentrons`]) both
//! use this module, so the two sides agree on names by construction and the Python peers in the
//! tests check the shapes against Opentrons' own client and command models.

use crate::error::InstrumentError;
use protocols::plan::CommandOp;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The API version this client speaks (`Opentrons-Version` header on every request).
pub const API_VERSION: &str = "4";
/// The robot-server's port.
pub const DEFAULT_PORT: u16 = 31950;

/// Which robot answers: their decks name slots differently and throw tips in different places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Robot {
    Ot2,
    Flex,
}

impl Robot {
    /// From `/health`'s `robot_model` (`OT-2 Standard`, `OT-3 Standard`).
    pub fn from_model(model: &str) -> Result<Robot, InstrumentError> {
        match model {
            "OT-2 Standard" => Ok(Robot::Ot2),
            "OT-3 Standard" => Ok(Robot::Flex),
            other => Err(InstrumentError::Protocol(format!(
                "/health names robot model {other:?}; expected \"OT-2 Standard\" or \"OT-3 Standard\""
            ))),
        }
    }

    /// The robot a simulator plays for a site instrument: a Flex when its pipettes are Flex
    /// pipettes (`…_flex`, the 96-channel `p1000_96`/`p200_96`), an OT-2 otherwise.
    pub fn carrying(pipettes: &[labware::site::Pipette]) -> Robot {
        let flex = |n: &str| n.ends_with("_flex") || n.ends_with("_96");
        if pipettes.iter().any(|p| flex(&p.name)) {
            Robot::Flex
        } else {
            Robot::Ot2
        }
    }

    pub fn model(self) -> &'static str {
        match self {
            Robot::Ot2 => "OT-2 Standard",
            Robot::Flex => "OT-3 Standard",
        }
    }

    /// A deck slot by Labwright's numbering (the OT-2's: 1 front-left … 12 back-right) in the
    /// robot's own names: the Flex's grid is the same three columns by four rows, `D1` … `A3`.
    pub fn slot_name(self, slot: u32) -> String {
        match self {
            Robot::Ot2 => slot.to_string(),
            Robot::Flex => {
                let i = slot.saturating_sub(1);
                let row = ['D', 'C', 'B', 'A'].get((i / 3) as usize).copied().unwrap_or('?');
                format!("{row}{}", i % 3 + 1)
            }
        }
    }

    /// Labwright's slot number for one of the robot's slot names.
    pub fn slot_number(self, name: &str) -> Option<u32> {
        (1..=12).find(|&n| self.slot_name(n) == name)
    }

    /// Where tips are dropped: the OT-2's fixed trash, the Flex's trash bin in A3.
    pub fn trash_area(self) -> &'static str {
        match self {
            Robot::Ot2 => "fixedTrash",
            Robot::Flex => "movableTrashA3",
        }
    }
}

/// Why a command is sent (robot-server's `intent`): `setup` while the run is idle (loading),
/// `protocol` once it plays, `fixit` while it waits in error recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Setup,
    Protocol,
    Fixit,
}

impl Intent {
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Setup => "setup",
            Intent::Protocol => "protocol",
            Intent::Fixit => "fixit",
        }
    }
}

/// One command to post: `commandType` and `params`.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub command_type: &'static str,
    pub params: Value,
}

impl Command {
    pub fn new(command_type: &'static str, params: Value) -> Command {
        Command { command_type, params }
    }

    /// The request body; `key` lets the client find the command again after a lost reply.
    pub fn body(&self, intent: Intent, key: &str) -> Value {
        json!({"data": {"commandType": self.command_type, "params": self.params, "intent": intent.as_str(), "key": key}})
    }
}

/// The ids the robot gave what a run loaded: pipettes by Labwright pipette name, labware by
/// plan labware name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub pipettes: BTreeMap<String, String>,
    pub labware: BTreeMap<String, String>,
}

impl Loaded {
    fn pipette(&self, name: &str) -> Result<&str, InstrumentError> {
        self.pipettes.get(name).map(String::as_str).ok_or_else(|| InstrumentError::Validation {
            parameter: "pipette".into(),
            message: format!("no pipette `{name}` is loaded on this robot"),
        })
    }

    fn labware(&self, name: &str) -> Result<&str, InstrumentError> {
        self.labware.get(name).map(String::as_str).ok_or_else(|| InstrumentError::Validation {
            parameter: "labware".into(),
            message: format!("labware `{name}` is not on this robot's deck"),
        })
    }
}

/// The flow rate a liquid command asks for, µL/s (the site's pipette rate).
pub type FlowRates = BTreeMap<String, f64>;

fn well_location(origin: &str, z: f64) -> Value {
    json!({"origin": origin, "offset": {"x": 0, "y": 0, "z": z}})
}

/// A plan command as robot commands, in order. A mix is aspirate/dispense pairs in place (the
/// robot has no mix command; its Python API loops the same way). Pure.
pub fn lower(op: &CommandOp, loaded: &Loaded, flow: &FlowRates, robot: Robot) -> Result<Vec<Command>, InstrumentError> {
    use CommandOp::*;
    let rate = |p: &str| flow.get(p).copied().unwrap_or(100.0);
    Ok(match op {
        PickUpTip { pipette, rack, well } => vec![Command::new(
            "pickUpTip",
            json!({"pipetteId": loaded.pipette(pipette)?, "labwareId": loaded.labware(rack)?, "wellName": well,
                   "wellLocation": well_location("top", 0.0)}),
        )],
        Aspirate { pipette, labware, well, volume_ul } | Dispense { pipette, labware, well, volume_ul } => {
            let kind = if matches!(op, Aspirate { .. }) { "aspirate" } else { "dispense" };
            vec![Command::new(
                kind,
                json!({"pipetteId": loaded.pipette(pipette)?, "labwareId": loaded.labware(labware)?, "wellName": well,
                       "wellLocation": well_location("bottom", 1.0), "volume": volume_ul, "flowRate": rate(pipette)}),
            )]
        }
        Mix { pipette, labware, well, volume_ul, times } => {
            let (p, l) = (loaded.pipette(pipette)?, loaded.labware(labware)?);
            let mut out = vec![Command::new(
                "moveToWell",
                json!({"pipetteId": p, "labwareId": l, "wellName": well, "wellLocation": well_location("bottom", 1.0)}),
            )];
            for _ in 0..*times {
                for kind in ["aspirateInPlace", "dispenseInPlace"] {
                    out.push(Command::new(
                        kind,
                        json!({"pipetteId": p, "volume": volume_ul, "flowRate": rate(pipette)}),
                    ));
                }
            }
            out
        }
        BlowOut { pipette, labware, well } => vec![Command::new(
            "blowout",
            json!({"pipetteId": loaded.pipette(pipette)?, "labwareId": loaded.labware(labware)?, "wellName": well,
                   "wellLocation": well_location("top", -1.0), "flowRate": rate(pipette)}),
        )],
        DropTip { pipette } => drop_tip(loaded.pipette(pipette)?, robot),
        MoveTo { pipette, labware: Some(lw), well } => vec![Command::new(
            "moveToWell",
            json!({"pipetteId": loaded.pipette(pipette)?, "labwareId": loaded.labware(lw)?,
                   "wellName": well.clone().unwrap_or_else(|| "A1".into()), "wellLocation": well_location("top", 0.0)}),
        )],
        MoveTo { labware: None, .. } | Home => vec![Command::new("home", json!({}))],
        AddReagent { .. } => {
            return Err(InstrumentError::Validation {
                parameter: "add_reagent".into(),
                message: "adding a reagent from the lab's stock is a technician's task; route it to a technician"
                    .into(),
            })
        }
        other => return Err(crate::instrument::unsupported("an Opentrons robot", other)),
    })
}

/// Dropping a pipette's tip in the robot's trash.
pub fn drop_tip(pipette_id: &str, robot: Robot) -> Vec<Command> {
    vec![
        Command::new(
            "moveToAddressableAreaForDropTip",
            json!({"pipetteId": pipette_id, "addressableAreaName": robot.trash_area(),
                   "offset": {"x": 0, "y": 0, "z": 0}, "alternateDropLocation": false}),
        ),
        Command::new("dropTipInPlace", json!({"pipetteId": pipette_id})),
    ]
}

/// A command's state as the robot reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandState {
    /// Queued or running: ask again (`GET /runs/{run}/commands/{id}`).
    Pending {
        id: String,
    },
    Succeeded {
        id: String,
        result: Value,
    },
    Failed {
        id: String,
        error: RobotError,
    },
}

/// A command's or a run's error as the robot words it.
#[derive(Debug, Clone, PartialEq)]
pub struct RobotError {
    pub error_type: String,
    pub error_code: String,
    pub detail: String,
}

impl std::fmt::Display for RobotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.error_type, self.error_code, self.detail)
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Reads one command resource (`data` of a command reply).
pub fn command_state(command: &Value) -> Result<CommandState, InstrumentError> {
    let id =
        text(command, "id").ok_or_else(|| InstrumentError::Protocol(format!("a command without an id: {command}")))?;
    match command.get("status").and_then(Value::as_str) {
        Some("queued" | "running") => Ok(CommandState::Pending { id }),
        Some("succeeded") => {
            Ok(CommandState::Succeeded { id, result: command.get("result").cloned().unwrap_or(Value::Null) })
        }
        Some("failed") => {
            let e = command.get("error").cloned().unwrap_or(Value::Null);
            Ok(CommandState::Failed {
                id,
                error: RobotError {
                    error_type: text(&e, "errorType").unwrap_or_else(|| "UnknownError".into()),
                    error_code: text(&e, "errorCode").unwrap_or_else(|| "4000".into()),
                    detail: text(&e, "detail").unwrap_or_default(),
                },
            })
        }
        other => Err(InstrumentError::Protocol(format!("command {id} has status {other:?}"))),
    }
}

/// A run's status (`GET /runs/{id}`'s `data.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Idle,
    Running,
    Paused,
    StopRequested,
    Stopped,
    Finishing,
    Failed,
    Succeeded,
    AwaitingRecovery,
    BlockedByOpenDoor,
}

impl RunStatus {
    pub fn parse(s: &str) -> Option<RunStatus> {
        use RunStatus::*;
        Some(match s {
            "idle" => Idle,
            "running" => Running,
            "paused" => Paused,
            "stop-requested" => StopRequested,
            "stopped" => Stopped,
            "finishing" => Finishing,
            "failed" => Failed,
            "succeeded" => Succeeded,
            "awaiting-recovery" => AwaitingRecovery,
            "blocked-by-open-door" => BlockedByOpenDoor,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        use RunStatus::*;
        match self {
            Idle => "idle",
            Running => "running",
            Paused => "paused",
            StopRequested => "stop-requested",
            Stopped => "stopped",
            Finishing => "finishing",
            Failed => "failed",
            Succeeded => "succeeded",
            AwaitingRecovery => "awaiting-recovery",
            BlockedByOpenDoor => "blocked-by-open-door",
        }
    }

    /// Whether the run is over (the robot may be given a new one).
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Stopped | RunStatus::Failed | RunStatus::Succeeded)
    }
}

/// Reads a run resource's status.
pub fn run_status(run: &Value) -> Result<RunStatus, InstrumentError> {
    let s = run.get("status").and_then(Value::as_str).unwrap_or("");
    RunStatus::parse(s).ok_or_else(|| InstrumentError::Protocol(format!("run status {s:?} is not one the API defines")))
}

/// The first entry of an error reply (`{"errors": [{"id", "title", "detail", "errorCode"}]}`).
pub fn error_body(body: &Value) -> Option<RobotError> {
    let e = body.get("errors")?.as_array()?.first()?;
    Some(RobotError {
        error_type: text(e, "id").unwrap_or_else(|| "UnknownError".into()),
        error_code: text(e, "errorCode").unwrap_or_else(|| "4000".into()),
        detail: text(e, "detail").or_else(|| text(e, "title")).unwrap_or_default(),
    })
}

/// An error reply to a request, classified for the executor: a robot busy with another
/// client's run may be tried again later; anything else the robot refused is a failure.
pub fn refused(status: u16, body: &Value, what: &str) -> InstrumentError {
    let e = error_body(body).unwrap_or(RobotError {
        error_type: format!("HTTP {status}"),
        error_code: "4000".into(),
        detail: body.to_string(),
    });
    match (status, e.error_type.as_str()) {
        (409, "RunAlreadyActive" | "RunNotIdle") => InstrumentError::Busy(format!("{what}: {e}")),
        _ => InstrumentError::Device { code: e.error_type.clone(), message: format!("{what}: {}", e.detail) },
    }
}

/// The error a failed command reports, with what the run did after it.
pub fn command_failed(error: &RobotError, run: RunStatus) -> InstrumentError {
    match run {
        RunStatus::AwaitingRecovery => InstrumentError::Device {
            code: "awaiting-recovery".into(),
            message: format!(
                "{error}; the robot holds the run in error recovery: a person must look before it goes on"
            ),
        },
        _ => InstrumentError::Device { code: error.error_type.clone(), message: error.detail.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_slots_are_the_same_grid_by_other_names() {
        assert_eq!(Robot::Flex.slot_name(1), "D1");
        assert_eq!(Robot::Flex.slot_name(3), "D3");
        assert_eq!(Robot::Flex.slot_name(10), "A1");
        assert_eq!(Robot::Flex.slot_name(12), "A3");
        assert_eq!(Robot::Ot2.slot_name(7), "7");
        for n in 1..=12 {
            assert_eq!(Robot::Flex.slot_number(&Robot::Flex.slot_name(n)), Some(n));
        }
    }

    #[test]
    fn a_mix_is_pairs_in_place_and_unknown_names_are_refused() {
        let loaded = Loaded {
            pipettes: [("p300".to_string(), "pip-1".to_string())].into(),
            labware: [("plate".to_string(), "lw-1".to_string())].into(),
        };
        let mix = CommandOp::Mix {
            pipette: "p300".into(),
            labware: "plate".into(),
            well: "A1".into(),
            volume_ul: 50.0,
            times: 3,
        };
        let cmds = lower(&mix, &loaded, &FlowRates::new(), Robot::Ot2).unwrap();
        let kinds: Vec<_> = cmds.iter().map(|c| c.command_type).collect();
        assert_eq!(kinds.len(), 7);
        assert_eq!(kinds[0], "moveToWell");
        assert_eq!(kinds[1..3], ["aspirateInPlace", "dispenseInPlace"]);
        let bad =
            CommandOp::Aspirate { pipette: "p300".into(), labware: "other".into(), well: "A1".into(), volume_ul: 5.0 };
        assert!(matches!(lower(&bad, &loaded, &FlowRates::new(), Robot::Ot2), Err(InstrumentError::Validation { .. })));
    }

    #[test]
    fn a_robot_busy_with_another_run_is_busy_and_a_failed_command_in_recovery_asks_a_person() {
        let body = json!({"errors": [{"id": "RunAlreadyActive", "title": "Run Already Active", "detail": "another run", "errorCode": "4001"}]});
        assert!(matches!(refused(409, &body, "creating a run"), InstrumentError::Busy(_)));
        let e =
            RobotError { error_type: "liquidNotFound".into(), error_code: "2017".into(), detail: "no liquid".into() };
        let InstrumentError::Device { code, message } = command_failed(&e, RunStatus::AwaitingRecovery) else {
            panic!()
        };
        assert_eq!(code, "awaiting-recovery");
        assert!(message.contains("liquidNotFound") && message.contains("no liquid"));
    }
}
