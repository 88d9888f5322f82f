//! The labware Labwright ships, embedded in the binary, plus any definitions a caller adds.

use crate::def::{LabwareDef, LabwareError};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Load names and JSON of the shipped library (files under `labware/library/`).
const SHIPPED: &[(&str, &str)] = &include!(concat!(env!("OUT_DIR"), "/shipped.rs"));

/// A set of labware definitions by load name.
///
/// Shipped definitions are parsed on first use: a protocol touches a handful of the library, and
/// parsing all of it would be most of a small compile's time.
#[derive(Debug, Clone, Default)]
pub struct Library {
    defs: BTreeMap<String, Entry>,
}

/// A definition, parsed on first use when it comes from the embedded library.
#[derive(Debug, Clone)]
struct Entry {
    text: &'static str,
    def: OnceLock<Option<LabwareDef>>,
}

impl Entry {
    fn def(&self) -> Option<&LabwareDef> {
        self.def.get_or_init(|| LabwareDef::from_json(self.text).ok()).as_ref()
    }
}

impl Library {
    /// An empty library.
    pub fn new() -> Library {
        Library::default()
    }

    /// The shipped library. Every entry is checked by the crate's tests, so a broken file is a
    /// build-time bug; one that still slips through is left out and reported by
    /// [`Library::shipped_errors`].
    pub fn shipped() -> Library {
        let mut lib = Library::new();
        for (name, text) in SHIPPED {
            lib.defs.insert((*name).to_string(), Entry { text, def: OnceLock::new() });
        }
        lib
    }

    /// Shipped files that do not load, with the reason (empty in a correct build).
    pub fn shipped_errors() -> Vec<(String, LabwareError)> {
        SHIPPED
            .iter()
            .filter_map(|(name, text)| LabwareDef::from_json(text).err().map(|e| (name.to_string(), e)))
            .collect()
    }

    /// Adds or replaces a definition.
    pub fn insert(&mut self, def: LabwareDef) {
        self.defs.insert(def.load_name.clone(), Entry { text: "", def: OnceLock::from(Some(def)) });
    }

    /// The definition with this load name.
    pub fn get(&self, load_name: &str) -> Option<&LabwareDef> {
        self.defs.get(load_name).and_then(Entry::def)
    }

    /// All definitions, sorted by load name.
    pub fn iter(&self) -> impl Iterator<Item = &LabwareDef> {
        self.defs.values().filter_map(Entry::def)
    }

    /// Number of definitions.
    pub fn len(&self) -> usize {
        self.defs.len()
    }

    /// Whether the library holds nothing.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// Load names closest to `name`, best first, for "did you mean" hints.
    pub fn suggest(&self, name: &str) -> Vec<&str> {
        let mut scored: Vec<(usize, &str)> = self
            .defs
            .keys()
            .map(|k| (edit_distance(name, k), k.as_str()))
            .filter(|(d, k)| *d <= (k.len().max(name.len()) / 3).max(2))
            .collect();
        scored.sort();
        scored.into_iter().take(3).map(|(_, k)| k).collect()
    }
}

/// Levenshtein distance, for suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_file_loads() {
        assert_eq!(Library::shipped_errors(), vec![]);
        assert!(Library::shipped().len() >= 25);
    }
}
