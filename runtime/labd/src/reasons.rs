//! Why a repair moved runs' planned ends, and how each tenant is told.
//!
//! One repair can be caused by several tenants' work at once (one tenant's manual step runs
//! late and pushes another's read back). A `rescheduled` event goes to the tenant whose run
//! moved, so the reasons are kept with their owner and rendered per recipient: a tenant hears
//! its own task labels, and of another tenant's work only that *something* on a named
//! instrument moved it — never a label, id or name of the other tenant.

use labware::InstrumentClass;

/// One cause of a repair, with what is needed to tell it to anyone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reason {
    /// An instrument went down or into maintenance (`why` is the lab's own status text).
    Unavailable {
        instrument: String,
        why: String,
    },
    Back {
        instrument: String,
    },
    Reservations,
    /// A task of `tenant` is running past its planned end.
    Overrun {
        tenant: String,
        label: String,
        on: Option<On>,
    },
    /// A task of `tenant` that was running late has finished.
    Finished {
        tenant: String,
        label: String,
        on: Option<On>,
    },
}

/// The resource a task runs on, as another tenant may hear of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct On {
    pub id: String,
    pub class: InstrumentClass,
}

impl Reason {
    /// The sentence `recipient` (a tenant id) is told.
    pub(crate) fn told_to(&self, recipient: &str) -> String {
        match self {
            Reason::Unavailable { instrument, why } => format!("{instrument} is unavailable ({why})"),
            Reason::Back { instrument } => format!("{instrument} is back"),
            Reason::Reservations => "bench-time reservations changed".into(),
            Reason::Overrun { tenant, label, .. } if tenant == recipient => {
                format!("`{label}` is taking longer than planned")
            }
            Reason::Finished { tenant, label, .. } if tenant == recipient => format!("`{label}` has finished"),
            Reason::Overrun { on, .. } => format!("{} is taking longer than planned", another(on)),
            Reason::Finished { on, .. } => format!("{} has finished", another(on)),
        }
    }
}

/// Another tenant's task, named only by where it runs.
fn another(on: &Option<On>) -> String {
    match on {
        Some(On { class: InstrumentClass::Technician, .. }) => "a manual step of another run".into(),
        Some(On { id, .. }) => format!("another run on {id}"),
        None => "another run".into(),
    }
}

/// Every reason, as `recipient` is told them, without repeats (several runs late on one
/// instrument read the same to another tenant).
pub(crate) fn told_to(reasons: &[Reason], recipient: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(reasons.len());
    for r in reasons {
        let s = r.told_to(recipient);
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrun(tenant: &str, label: &str, id: &str, class: InstrumentClass) -> Reason {
        Reason::Overrun { tenant: tenant.into(), label: label.into(), on: Some(On { id: id.into(), class }) }
    }

    #[test]
    fn a_tenant_hears_its_own_labels_and_only_the_instrument_of_anothers() {
        let reasons = vec![
            overrun("t-acme", "manual: CONFIDENTIAL add compound", "technician1", InstrumentClass::Technician),
            overrun("t-acme", "transfer SECRET-LIQUID", "lh2", InstrumentClass::LiquidHandler),
            overrun("t-globex", "read the plate", "reader1", InstrumentClass::PlateReader),
            Reason::Finished {
                tenant: "t-acme".into(),
                label: "transfer SECRET-LIQUID".into(),
                on: Some(On { id: "lh2".into(), class: InstrumentClass::LiquidHandler }),
            },
            Reason::Unavailable { instrument: "reader2".into(), why: "maintenance".into() },
        ];
        let globex = told_to(&reasons, "t-globex");
        assert_eq!(
            globex,
            vec![
                "a manual step of another run is taking longer than planned",
                "another run on lh2 is taking longer than planned",
                "`read the plate` is taking longer than planned",
                "another run on lh2 has finished",
                "reader2 is unavailable (maintenance)",
            ]
        );
        let text = globex.join("\n");
        for secret in ["CONFIDENTIAL", "SECRET", "acme"] {
            assert!(!text.contains(secret), "{secret} reached globex: {text}");
        }
        let acme = told_to(&reasons, "t-acme").join("\n");
        assert!(acme.contains("`manual: CONFIDENTIAL add compound` is taking longer"), "{acme}");
        assert!(acme.contains("another run on reader1") && !acme.contains("read the plate"), "{acme}");
    }
}
