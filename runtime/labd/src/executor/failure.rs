//! Why a job failed, typed until it becomes a run's reason: an instrument's error keeps its
//! recovery class, a technician's abort, the store failing past its retries and a plan this lab
//! cannot carry out are told apart.

use crate::store::StoreError;
use devices::InstrumentError;

/// Why the executor itself could not go on (its callers: `labd serve`, `labd run`, benches).
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The store failed past its retries.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A plan that cannot be written down (it does not serialise).
    #[error("the plan cannot be stored: {0}")]
    Plan(String),
    /// The site cannot be scheduled at all (no plate storage, no arm routes).
    #[error("this site cannot be scheduled: {0}")]
    Site(String),
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The instrument refused or failed a command (or its outcome is unknown and a technician
    /// chose to stop).
    #[error("{instrument}: {error}{}", if *.aborted { "; a technician aborted the run" } else { "" })]
    Instrument {
        instrument: String,
        #[source]
        error: InstrumentError,
        /// A technician aborted the run at the intervention this error opened.
        aborted: bool,
    },
    /// The liquid handler refused the run's deck.
    #[error("{instrument}: preparing the deck: {error}")]
    Prepare {
        instrument: String,
        #[source]
        error: InstrumentError,
    },
    /// A technician aborted the run at a manual step or an addition.
    #[error("a technician aborted the run at {0}")]
    Aborted(String),
    /// The store failed past its retries, while doing what is said.
    #[error("{doing}{}{error}", if .doing.is_empty() { "" } else { ": " })]
    Store { doing: String, error: StoreError },
    /// What the lab cannot do for this job (no driver connected, a step no driver does yet).
    #[error("{0}")]
    Lab(String),
    /// An earlier step of the run failed; its reason is already recorded.
    #[error("an earlier step failed")]
    Cascaded,
}

impl JobError {
    pub fn store(doing: impl Into<String>) -> impl FnOnce(StoreError) -> JobError {
        let doing = doing.into();
        move |error| JobError::Store { doing, error }
    }
}

impl From<StoreError> for JobError {
    fn from(error: StoreError) -> Self {
        JobError::Store { doing: String::new(), error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_before() {
        let e = JobError::Instrument {
            instrument: "lh1".into(),
            error: InstrumentError::Device { code: "error".into(), message: "tip crash".into() },
            aborted: false,
        };
        assert_eq!(e.to_string(), "lh1: device error error: tip crash");
        let t = InstrumentError::Timeout(std::time::Duration::from_secs(5));
        let a = JobError::Instrument { instrument: "lh1".into(), error: t, aborted: true };
        assert!(a.to_string().ends_with("may or may not have run; a technician aborted the run"), "{a}");
        assert_eq!(
            JobError::from(StoreError::Backend("disk full".into())).to_string(),
            StoreError::Backend("disk full".into()).to_string()
        );
        let s = JobError::store("recording usage for the bill")(StoreError::Backend("x".into()));
        assert!(s.to_string().starts_with("recording usage for the bill: "), "{s}");
    }
}
