//! Which instrument family executes each plan command, and how long to wait for it.

use crate::error::InstrumentError;
use protocols::plan::CommandOp;
use std::time::Duration;

/// Instrument families, each with its own wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// G-code over serial (OT-2 style motion controller).
    LiquidHandler,
    /// Opentrons module G-code over serial.
    HeaterShaker,
    /// Incubators: capacity storage with set points.
    Incubator,
    /// SiLA 2 over gRPC.
    PlateReader,
    /// Line protocol over serial.
    Sealer,
    /// Line protocol over serial.
    Centrifuge,
    /// PF400-style text over TCP.
    RobotArm,
    /// A person, through the console.
    Technician,
    /// Nothing to drive: the executor waits.
    Timer,
}

/// The family a command is sent to.
pub fn family(op: &CommandOp) -> Family {
    use CommandOp::*;
    match op {
        PickUpTip { .. }
        | Aspirate { .. }
        | Dispense { .. }
        | Mix { .. }
        | BlowOut { .. }
        | MoveTo { .. }
        | DropTip { .. }
        | Home
        | MoveLabware { .. } => Family::LiquidHandler,
        Shake { .. }
        | SetTemperature { .. }
        | WaitForTemperature { .. }
        | SetShakeSpeed { .. }
        | StopShaking
        | StopHeating
        | Latch { .. } => Family::HeaterShaker,
        Incubate { .. } => Family::Incubator,
        ReadAbsorbance { .. } | ReadFluorescence { .. } | ReadLuminescence { .. } => Family::PlateReader,
        Seal { .. } | Peel { .. } => Family::Sealer,
        Centrifuge { .. } => Family::Centrifuge,
        Cover { .. } | Uncover { .. } => Family::RobotArm,
        Manual { .. } | AddReagent { .. } => Family::Technician,
        Wait { .. } => Family::Timer,
    }
}

/// How long the executor waits for a command before declaring a timeout (state unknown): the
/// estimate with 50 % slack plus a fixed allowance per family for homing and link latency.
/// Manual steps have no deadline: a person may take their time, the console shows it.
pub fn deadline(op: &CommandOp, estimate_s: f64) -> Option<Duration> {
    let allowance = match family(op) {
        Family::LiquidHandler => 30.0,
        Family::HeaterShaker | Family::Incubator => 60.0,
        Family::PlateReader => 120.0,
        Family::Sealer | Family::Centrifuge => 60.0,
        Family::RobotArm => 30.0,
        Family::Technician => return None,
        Family::Timer => 5.0,
    };
    let secs = estimate_s.max(0.0) * 1.5 + allowance;
    Duration::try_from_secs_f64(secs).ok()
}

/// Converts a deadline expiry into the error the executor classifies.
pub fn timed_out(after: Duration) -> InstrumentError {
    InstrumentError::Timeout(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_of_a_compiled_plan_has_a_family_and_a_deadline() {
        let site = labware_site();
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../protocols/examples/elisa.yaml")).unwrap();
        let c = protocols::compile(
            &protocols::SourceFile::new("elisa.yaml", text),
            protocols::Format::Auto,
            &site,
            &labware_lib(),
        );
        let plan = c.plan.unwrap();
        for t in &plan.tasks {
            for cmd in &t.commands {
                let f = family(&cmd.op);
                match f {
                    Family::Technician => assert_eq!(deadline(&cmd.op, cmd.estimate_s), None),
                    _ => assert!(deadline(&cmd.op, cmd.estimate_s).unwrap() > Duration::from_secs_f64(cmd.estimate_s)),
                }
            }
        }
        assert!(matches!(timed_out(Duration::from_secs(1)).recovery(), crate::Recovery::Indeterminate));
    }

    fn labware_site() -> labware::Site {
        labware::Site::sim().unwrap()
    }

    fn labware_lib() -> labware::Library {
        labware::Library::shipped()
    }
}
