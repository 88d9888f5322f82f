//! One error type for every instrument family, classified by what the executor can do.

use std::time::Duration;

/// Everything that can go wrong talking to an instrument.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InstrumentError {
    /// The instrument refused the parameters before moving anything.
    #[error("rejected {parameter}: {message}")]
    Validation { parameter: String, message: String },
    /// The instrument reported a failure while executing.
    #[error("device error {code}: {message}")]
    Device { code: String, message: String },
    /// No answer within the deadline: the physical state is unknown.
    #[error("no reply within {0:?}; the command may or may not have run")]
    Timeout(Duration),
    /// The link is gone (port vanished, connection reset).
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// Another client holds the instrument, or it is busy with another command.
    #[error("busy or locked: {0}")]
    Busy(String),
    /// The reply did not follow the wire protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Aborted on request.
    #[error("cancelled")]
    Cancelled,
}

/// What the executor may do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing happened physically: sending again (after a wait or a reconnect) is safe.
    Retry,
    /// The command failed in a known way: fail the task, tell the technician.
    Fail,
    /// The physical state is unknown: repeat only if the command is repeatable, else ask a
    /// technician (an intervention).
    Indeterminate,
}

impl InstrumentError {
    /// How the executor should treat this error.
    pub fn recovery(&self) -> Recovery {
        match self {
            InstrumentError::Busy(_) | InstrumentError::Disconnected(_) => Recovery::Retry,
            InstrumentError::Validation { .. } | InstrumentError::Device { .. } | InstrumentError::Cancelled => {
                Recovery::Fail
            }
            InstrumentError::Timeout(_) | InstrumentError::Protocol(_) => Recovery::Indeterminate,
        }
    }

    /// Whether a command that failed this way may be sent again, given its repeatable flag.
    pub fn may_resend(&self, repeatable: bool) -> bool {
        match self.recovery() {
            Recovery::Retry => true,
            Recovery::Fail => false,
            Recovery::Indeterminate => repeatable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncertain_outcomes_are_resent_only_when_repeatable() {
        let t = InstrumentError::Timeout(Duration::from_secs(30));
        assert!(!t.may_resend(false), "a dispense that timed out must go to a technician");
        assert!(t.may_resend(true), "a read that timed out can be read again");
        assert!(InstrumentError::Busy("locked by reader2 client".into()).may_resend(false));
        assert!(
            !InstrumentError::Device { code: "ERR003".into(), message: "plate not present".into() }.may_resend(true)
        );
    }
}
