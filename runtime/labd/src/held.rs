//! The containers a tenant holds in the lab, as the compiler asks for them when a protocol names
//! one (`container: PL-0001`): by barcode or id, the tenant's own only.

use crate::store::Container;
use protocols::held::{Held as Answer, Inventory};
use std::collections::HashMap;

/// A tenant's containers, by barcode and by id.
#[derive(Debug, Default)]
pub struct Held {
    by_name: HashMap<String, usize>,
    all: Vec<Container>,
}

impl Held {
    pub fn of(all: Vec<Container>) -> Held {
        let mut by_name = HashMap::new();
        for (i, k) in all.iter().enumerate() {
            by_name.insert(k.barcode.clone(), i);
            by_name.insert(k.id.clone(), i);
        }
        Held { by_name, all }
    }
}

impl Inventory for Held {
    fn container(&self, barcode_or_id: &str) -> Option<Answer> {
        let k = self.all.get(*self.by_name.get(barcode_or_id)?)?;
        Some(Answer {
            load_name: k.load_name.clone(),
            contents: k.wells.iter().map(|w| (w.well.clone(), w.liquid.clone(), w.volume_ul)).collect(),
        })
    }
}

/// Whether a protocol's text may name a container (the store is read only then).
pub fn names_a_container(source: &[u8]) -> bool {
    source.windows(b"container".len()).any(|w| w == b"container")
}
