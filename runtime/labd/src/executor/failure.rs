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
    /// This node lost the cell's lease: another node drives its instruments now, and this one
    /// must not touch them (not even to make them safe).
    pub fn fenced(&self) -> bool {
        matches!(self, JobError::Store { error: StoreError::Fenced(_), .. })
    }

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

/// An instrument's words as one tenant may read them: an instrument that several runs share (a
/// robot's one run holds every task's labware) may name another run's labware in an error, as
/// `<run prefix>.<name>`; those names become "another run's labware".
pub(crate) fn in_tenant_words(text: &str, run_id: &str) -> String {
    let own = crate::store::run_prefix(run_id);
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    while i < text.len() {
        let starts_token = i == 0 || !name_char(bytes[i - 1]);
        let prefix = bytes.get(i..i + 8).filter(|p| p.iter().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        if let (true, Some(prefix), Some(b'.')) = (starts_token, prefix, bytes.get(i + 8)) {
            let mut end = i + 9;
            while end < bytes.len() && name_char(bytes[end]) {
                end += 1;
            }
            if end > i + 9 && prefix != own.as_bytes() {
                out.push_str("another run's labware");
                i = end;
                continue;
            }
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8().max(1);
    }
    out
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

    #[test]
    fn another_runs_labware_is_not_named_and_the_runs_own_is() {
        let text = "flex: LocationIsOccupiedError: slot D2 already holds cadaf44a.big; moving 0123abcd.plate";
        let seen = in_tenant_words(text, "run_0123abcd9999");
        assert_eq!(
            seen,
            "flex: LocationIsOccupiedError: slot D2 already holds another run's labware; moving 0123abcd.plate"
        );
        // Words that only look alike stay: no name after the dot, a longer hex run, upper case.
        let plain = "code deadbeef. at 1234567890.5 s, DEADBEEF.x, é cadaf44a.ok";
        assert_eq!(in_tenant_words(plain, "run_cadaf44a"), plain);
        assert_eq!(in_tenant_words("x0123abcd.plate", "run_ffffffff"), "x0123abcd.plate");
    }
}
