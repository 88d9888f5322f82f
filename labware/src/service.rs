//! Service classes, sold as clouds sell compute: `standard`; `priority` (planned ahead of
//! standard work, at a higher rate); `spot` (only the capacity nobody else is using, at a
//! discount: it may wait without limit, is promised nothing, never moves a promise, and is
//! put back behind newer work until it starts). Prices are a factor on device time per class
//! (`[prices.class]` in the site file); the scheduler orders by [`ServiceClass::rank`].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceClass {
    #[default]
    Standard,
    Priority,
    Spot,
}

impl ServiceClass {
    pub const ALL: [ServiceClass; 3] = [ServiceClass::Standard, ServiceClass::Priority, ServiceClass::Spot];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceClass::Standard => "standard",
            ServiceClass::Priority => "priority",
            ServiceClass::Spot => "spot",
        }
    }

    /// Where runs of the class go in the plan's order of runs not yet begun: priority first,
    /// then standard, spot last.
    pub fn rank(self) -> u8 {
        match self {
            ServiceClass::Priority => 0,
            ServiceClass::Standard => 1,
            ServiceClass::Spot => 2,
        }
    }

    /// Whether runs of the class are promised a completion time (spot is not).
    pub fn promised(self) -> bool {
        self != ServiceClass::Spot
    }

    /// The class named `s`; an empty name is standard (what a client that predates classes
    /// sends). Unknown names are an error saying which ones exist.
    pub fn parse(s: &str) -> Result<ServiceClass, String> {
        match s.trim() {
            "" | "standard" => Ok(ServiceClass::Standard),
            "priority" => Ok(ServiceClass::Priority),
            "spot" => Ok(ServiceClass::Spot),
            other => Err(format!("unknown service class `{other}`: give standard, priority or spot")),
        }
    }
}

impl std::fmt::Display for ServiceClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_unknown_ones_say_what_exists() {
        for c in ServiceClass::ALL {
            assert_eq!(ServiceClass::parse(c.as_str()), Ok(c));
        }
        assert_eq!(ServiceClass::parse(""), Ok(ServiceClass::Standard));
        let e = ServiceClass::parse("gold").unwrap_err();
        assert!(e.contains("`gold`") && e.contains("standard, priority or spot"), "{e}");
        let mut by_rank = ServiceClass::ALL;
        by_rank.sort_by_key(|c| c.rank());
        assert_eq!(by_rank, [ServiceClass::Priority, ServiceClass::Standard, ServiceClass::Spot]);
    }
}
