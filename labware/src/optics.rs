//! How a liquid looks to a plate reader, and what a well of mixed liquids reads.
//!
//! A protocol may declare, per liquid, what it reads as on its own in a well: absorbance at some
//! wavelengths (OD), a fluorescence signal (RFU) and a luminescence signal (RLU per second of
//! integration). A well holding several liquids reads as the blank plus the volume-weighted sum
//! of its liquids' signals (Beer–Lambert for absorbance, linear response for light): diluting a
//! liquid 1:3 reads a third of its signal. Real assays saturate; readers clip at their range.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an empty well of a clear plate reads: the plate's own absorbance, the detector's
/// background and dark counts.
pub const BLANK_OD: f64 = 0.04;
pub const BLANK_RFU: f64 = 50.0;
pub const BLANK_RLU_PER_S: f64 = 20.0;
/// The highest absorbance a reader reports; beyond it no light gets through.
pub const MAX_OD: f64 = 4.0;

/// One liquid's optical properties, as it reads undiluted in a well.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Optics {
    /// (wavelength nm, OD), sorted by wavelength; between two the absorbance is interpolated,
    /// beyond the ends it is the nearest end's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absorbance: Vec<(f64, f64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fluorescence_rfu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub luminescence_rlu_per_s: Option<f64>,
}

/// What a read measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    Absorbance {
        nm: f64,
    },
    Fluorescence,
    /// Light collected for this many seconds.
    Luminescence {
        seconds: f64,
    },
}

impl Optics {
    /// Whether the liquid declares anything.
    pub fn is_empty(&self) -> bool {
        self.absorbance.is_empty() && self.fluorescence_rfu.is_none() && self.luminescence_rlu_per_s.is_none()
    }

    /// Absorbance at `nm`: interpolated between declared wavelengths, the nearest end's beyond them,
    /// 0 when none is declared.
    pub fn absorbance_at(&self, nm: f64) -> f64 {
        let a = &self.absorbance;
        match (a.first(), a.last()) {
            (Some(&(lo, v)), _) if nm <= lo => v,
            (_, Some(&(hi, v))) if nm >= hi => v,
            (None, _) | (_, None) => 0.0,
            _ => a
                .windows(2)
                .find(|w| (w[0].0..=w[1].0).contains(&nm))
                .map_or(0.0, |w| w[0].1 + (w[1].1 - w[0].1) * (nm - w[0].0) / (w[1].0 - w[0].0)),
        }
    }

    /// This liquid's signal, undiluted, above the blank.
    pub fn signal(&self, reading: Reading) -> f64 {
        match reading {
            Reading::Absorbance { nm } => self.absorbance_at(nm),
            Reading::Fluorescence => self.fluorescence_rfu.unwrap_or(0.0),
            Reading::Luminescence { seconds } => self.luminescence_rlu_per_s.unwrap_or(0.0) * seconds,
        }
    }
}

/// What a well holding `mixture` (liquid → µL) reads, without noise: the blank plus each liquid's
/// signal weighted by its share of the volume. Liquids without declared optics are clear and dark.
/// An empty well reads the blank.
pub fn well_value(mixture: &BTreeMap<String, f64>, optics: &BTreeMap<String, Optics>, reading: Reading) -> f64 {
    let total: f64 = mixture.values().filter(|v| **v > 0.0).sum();
    let signal: f64 = if total > 0.0 {
        mixture
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(liquid, v)| optics.get(liquid).map_or(0.0, |o| o.signal(reading)) * v / total)
            .sum()
    } else {
        0.0
    };
    match reading {
        Reading::Absorbance { .. } => (BLANK_OD + signal).min(MAX_OD),
        Reading::Fluorescence => BLANK_RFU + signal,
        Reading::Luminescence { seconds } => BLANK_RLU_PER_S * seconds + signal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dilution_reads_in_proportion_and_an_empty_well_reads_the_blank() {
        let dye = Optics { absorbance: vec![(450.0, 0.3), (595.0, 1.5)], ..Default::default() };
        let optics = BTreeMap::from([("dye".to_string(), dye)]);
        let mix = |dye: f64, water: f64| BTreeMap::from([("dye".to_string(), dye), ("water".to_string(), water)]);
        let at = |m, nm| well_value(&m, &optics, Reading::Absorbance { nm });
        assert!((at(mix(100.0, 0.0), 595.0) - 1.54).abs() < 1e-12);
        assert!((at(mix(100.0, 200.0), 595.0) - (0.04 + 0.5)).abs() < 1e-12, "1:3 reads a third");
        assert!((at(mix(100.0, 0.0), 522.5) - (0.04 + 0.9)).abs() < 1e-12, "interpolated halfway");
        assert!((at(mix(100.0, 0.0), 700.0) - 1.54).abs() < 1e-12, "beyond the end: the end's value");
        assert_eq!(at(BTreeMap::new(), 595.0), BLANK_OD);
        let black = Optics { absorbance: vec![(595.0, 99.0)], ..Default::default() };
        let optics = BTreeMap::from([("ink".to_string(), black)]);
        let ink = BTreeMap::from([("ink".to_string(), 10.0)]);
        assert_eq!(well_value(&ink, &optics, Reading::Absorbance { nm: 595.0 }), MAX_OD);
        let glow = Optics { luminescence_rlu_per_s: Some(1000.0), ..Default::default() };
        let optics = BTreeMap::from([("cells".to_string(), glow)]);
        let cells = BTreeMap::from([("cells".to_string(), 50.0), ("reagent".to_string(), 50.0)]);
        assert_eq!(well_value(&cells, &optics, Reading::Luminescence { seconds: 2.0 }), 40.0 + 1000.0);
    }
}
