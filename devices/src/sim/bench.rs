//! The simulated lab's physical contents: what every well of every plate holds, by liquid, shared
//! by all simulated instruments of a site. A liquid handler draws from and dispenses into it; a
//! plate reader reads it. Plates keep their contents as they travel between instruments, as they
//! would in a real lab.
//!
//! Reads are computed from each well's composition and the liquids' declared optics
//! ([`labware::optics`]), plus a seeded noise model: the same seed, plate contents and well give
//! the same value, so a simulation can be repeated exactly.

use labware::optics::{self, Optics, Reading};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Liquid name → µL.
pub type Mixture = BTreeMap<String, f64>;

/// The bench, shared by a site's simulators.
pub type SharedBench = Arc<Mutex<Bench>>;

/// Name of liquid put in by a caller that did not say what it is.
pub const UNNAMED: &str = "(unnamed)";

/// Relative noise of a read (coefficient of variation) and its additive floor, per read kind:
/// typical of a plate reader's well-to-well repeatability.
const CV: f64 = 0.015;
const FLOOR_OD: f64 = 0.002;
const FLOOR_RFU: f64 = 15.0;
const FLOOR_RLU_PER_S: f64 = 5.0;

#[derive(Debug, Default)]
pub struct Bench {
    wells: BTreeMap<(String, String), Mixture>,
    optics: BTreeMap<String, Optics>,
    seed: u64,
}

impl Bench {
    pub fn shared(seed: u64) -> SharedBench {
        Arc::new(Mutex::new(Bench { seed, ..Bench::default() }))
    }

    /// Reseeds the reads' noise (`labd serve`'s `sim_seed`).
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    /// Puts `ul` of `liquid` in a well (a technician filling it).
    pub fn fill(&mut self, labware: &str, well: &str, liquid: &str, ul: f64) {
        let w = self.wells.entry((labware.to_string(), well.to_string())).or_default();
        *w.entry(liquid.to_string()).or_insert(0.0) += ul;
    }

    /// Whether anything was ever put in this well (it may be empty now).
    pub fn knows(&self, labware: &str, well: &str) -> bool {
        self.wells.contains_key(&(labware.to_string(), well.to_string()))
    }

    /// Total volume in a well, µL.
    pub fn volume(&self, labware: &str, well: &str) -> f64 {
        self.mixture(labware, well).map_or(0.0, |m| m.values().sum())
    }

    pub fn mixture(&self, labware: &str, well: &str) -> Option<&Mixture> {
        self.wells.get(&(labware.to_string(), well.to_string()))
    }

    /// Removes `ul` from a well, each liquid in proportion; returns what was taken.
    pub fn take(&mut self, labware: &str, well: &str, ul: f64) -> Mixture {
        let Some(w) = self.wells.get_mut(&(labware.to_string(), well.to_string())) else { return Mixture::new() };
        take(w, ul)
    }

    /// Adds a mixture to a well; returns the well's new volume.
    pub fn add(&mut self, labware: &str, well: &str, mix: &Mixture) -> f64 {
        let w = self.wells.entry((labware.to_string(), well.to_string())).or_default();
        add(w, mix);
        w.values().sum()
    }

    /// Declares a liquid's optics (what the protocol says it reads as).
    pub fn set_optics(&mut self, liquid: &str, o: Optics) {
        self.optics.insert(liquid.to_string(), o);
    }

    /// The bench as JSON (every well's composition and the liquids' optics; not the seed, which
    /// is configuration): what a simulated lab keeps in its data directory so that plates keep
    /// their contents when the runtime restarts, as real plates do.
    pub fn snapshot(&self) -> serde_json::Value {
        let wells: Vec<serde_json::Value> =
            self.wells.iter().map(|((lw, well), mix)| serde_json::json!([lw, well, mix])).collect();
        serde_json::json!({"v": 1, "wells": wells, "optics": self.optics})
    }

    /// Puts back what [`Bench::snapshot`] wrote, replacing the wells and optics it names.
    pub fn restore(&mut self, snapshot: &serde_json::Value) -> Result<(), String> {
        if snapshot["v"] != 1 {
            return Err("not a bench snapshot of version 1".into());
        }
        let wells = snapshot["wells"].as_array().ok_or("a bench snapshot without `wells`")?;
        for w in wells {
            let (Some(lw), Some(well), Some(mix)) = (w[0].as_str(), w[1].as_str(), w[2].as_object()) else {
                return Err(format!("a well entry that is not [labware, well, {{liquid: µL}}]: {w}"));
            };
            let mix: Option<Mixture> = mix.iter().map(|(k, v)| v.as_f64().map(|ul| (k.clone(), ul))).collect();
            let mix = mix.ok_or_else(|| format!("a volume that is not a number in {w}"))?;
            self.wells.insert((lw.to_string(), well.to_string()), mix);
        }
        let optics: BTreeMap<String, Optics> = serde_json::from_value(snapshot["optics"].clone())
            .map_err(|e| format!("the snapshot's optics do not read: {e}"))?;
        self.optics.extend(optics);
        Ok(())
    }

    /// What a reader measures in a well: the well's value from its composition, with noise that
    /// depends only on the seed, the well and the reading.
    pub fn read(&self, labware: &str, well: &str, reading: Reading) -> f64 {
        let empty = Mixture::new();
        let exact = optics::well_value(self.mixture(labware, well).unwrap_or(&empty), &self.optics, reading);
        let (kind, floor) = match reading {
            Reading::Absorbance { nm } => (nm.to_bits(), FLOOR_OD),
            Reading::Fluorescence => (1, FLOOR_RFU),
            Reading::Luminescence { seconds } => (2, FLOOR_RLU_PER_S * seconds.sqrt()),
        };
        let (z1, z2) = gaussians(self.seed, well, kind);
        let noisy = exact * (1.0 + CV * z1) + floor * z2;
        match reading {
            Reading::Absorbance { .. } => (noisy.clamp(0.0, optics::MAX_OD) * 1000.0).round() / 1000.0,
            _ => noisy.max(0.0).round(),
        }
    }
}

/// Removes `ul` from a mixture in proportion to its composition; returns what was taken.
pub fn take(m: &mut Mixture, ul: f64) -> Mixture {
    let total: f64 = m.values().sum();
    if total <= 0.0 || ul <= 0.0 {
        return Mixture::new();
    }
    let f = (ul / total).min(1.0);
    let out: Mixture = m.iter().map(|(k, v)| (k.clone(), v * f)).collect();
    for v in m.values_mut() {
        *v -= *v * f;
    }
    m.retain(|_, v| *v > 1e-12);
    out
}

pub fn add(m: &mut Mixture, other: &Mixture) {
    for (k, v) in other {
        *m.entry(k.clone()).or_insert(0.0) += v;
    }
}

/// Two standard normal numbers determined by (seed, well, kind): FNV-1a then splitmix64, then
/// Box–Muller.
fn gaussians(seed: u64, well: &str, kind: u64) -> (f64, f64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in well.bytes().chain(kind.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut next = || {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (u1, u2) = (next().max(1e-300), next());
    let r = (-2.0 * u1.ln()).sqrt();
    let t = 2.0 * std::f64::consts::PI * u2;
    (r * t.cos(), r * t.sin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicates_agree_a_dilution_reads_less_and_a_seed_repeats() {
        let mut b = Bench { seed: 7, ..Bench::default() };
        b.set_optics("dye", Optics { absorbance: vec![(595.0, 1.2)], ..Default::default() });
        for (well, dye) in [("A1", 100.0), ("B1", 100.0), ("A2", 50.0)] {
            b.fill("p", well, "dye", dye);
            b.fill("p", well, "water", 100.0 - dye);
        }
        let at = |b: &Bench, w| b.read("p", w, Reading::Absorbance { nm: 595.0 });
        let (a1, b1, a2) = (at(&b, "A1"), at(&b, "B1"), at(&b, "A2"));
        assert!((a1 - b1).abs() / a1 < 0.08, "replicates agree: {a1} {b1}");
        assert!(a1 > a2 * 1.7 && a1 < a2 * 2.3, "half the dye reads about half: {a1} {a2}");
        assert_eq!(at(&b, "A1"), a1, "the same seed and well repeat");
        let other = Bench { seed: 8, wells: b.wells.clone(), optics: b.optics.clone() };
        assert_ne!(at(&other, "A1"), a1, "another seed, other noise");
        let mut restored = Bench { seed: 7, ..Bench::default() };
        restored.restore(&serde_json::from_str(&b.snapshot().to_string()).unwrap()).unwrap();
        assert_eq!((restored.wells.clone(), restored.optics.clone()), (b.wells.clone(), b.optics.clone()));
        assert_eq!(at(&restored, "A1"), a1, "a restored bench reads the same");
        assert!(restored.restore(&serde_json::json!({"v": 2})).is_err());
        let taken = b.take("p", "A2", 20.0);
        assert!((taken["dye"] - 10.0).abs() < 1e-9 && (taken["water"] - 10.0).abs() < 1e-9);
        assert!((b.volume("p", "A2") - 80.0).abs() < 1e-9);
    }
}
