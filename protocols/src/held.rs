//! Containers the lab holds for a tenant, as a protocol names them (`container: PL-0001`): the
//! compiler asks whoever compiles (labd, from its inventory) what the container is and holds,
//! and the labware takes its type and starting contents from the answer. Pure: the lookup is
//! given; with none, every container is unknown.

use crate::ast::{Contents, Named, Protocol};
use crate::diag::{Diagnostic, Diagnostics};

/// What the lab's inventory says of one container.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// Its id in the inventory (whatever name the protocol used).
    pub id: String,
    /// Its labware type (a load name).
    pub load_name: String,
    /// (well, liquid, µL) for every liquid of every well.
    pub contents: Vec<(String, String, f64)>,
}

/// Looks containers up by barcode or id, among those the compiling tenant may use.
pub trait Inventory {
    fn container(&self, barcode_or_id: &str) -> Option<Held>;
}

/// No inventory (a compile on the scientist's machine): every container is unknown there.
#[derive(Debug, Clone, Copy)]
pub struct NoInventory;

impl Inventory for NoInventory {
    fn container(&self, _: &str) -> Option<Held> {
        None
    }
}

/// Fills in the type and contents of each labware that names a container, and declares the
/// liquids it holds. A container nobody holds for this tenant is P0212, worded the same for any
/// container that is not the tenant's: whether it exists for someone else is not said.
pub fn resolve(protocol: &mut Protocol, inventory: &dyn Inventory, d: &mut Diagnostics) {
    let mut liquids: Vec<Named> = Vec::new();
    for lw in protocol.labware.iter_mut() {
        let Some(c) = lw.container.clone() else { continue };
        let Some(held) = inventory.container(&c.name) else {
            d.push(
                Diagnostic::error("P0209", c.span, format!("unknown container `{}`", c.name)).with_hint(
                    "`labctl containers` lists the containers the lab holds for you; they are looked up when the lab validates, quotes or runs the protocol",
                ),
            );
            continue;
        };
        lw.load_name = Named { name: held.load_name, span: c.span };
        lw.container = Some(Named { name: held.id, span: c.span });
        lw.contents = held
            .contents
            .into_iter()
            .map(|(well, liquid, volume_ul)| {
                if !protocol.liquids.iter().chain(&liquids).any(|l| l.name == liquid) {
                    liquids.push(Named { name: liquid.clone(), span: c.span });
                }
                Contents { selection: well, liquid, volume_ul, span: c.span }
            })
            .collect();
    }
    protocol.liquids.extend(liquids);
}

/// Writes into the plan what it draws, net, from each well of each container it names: the
/// starting contents against what the liquid tracking leaves there. The lab counts it against
/// the container's volume, with every other run drawing from it.
pub fn note_draws(plan: &mut crate::plan::RunPlan, tracked: &crate::check::Tracked, lib: &labware::Library) {
    let defs: Vec<Option<labware::LabwareDef>> =
        plan.labware.iter().map(|l| plan.labware_def(&l.load_name, lib).cloned()).collect();
    for (i, lw) in plan.labware.iter_mut().enumerate() {
        let (Some(_), Some(def), Some(now)) = (&lw.container, &defs[i], tracked.wells.get(i)) else { continue };
        for (well, start) in &lw.contents {
            let left = def.well_index(well).and_then(|w| now.get(w)).map_or(*start, |s| s.volume());
            if start - left > 1e-9 {
                lw.drawn.insert(well.clone(), start - left);
            }
        }
    }
}

/// Writes into the plan what each labware it stores (and that is not a container yet) holds
/// when the run ends, by the liquid tracking: the lab makes it a container of the tenant's.
pub fn note_outputs(plan: &mut crate::plan::RunPlan, tracked: &crate::check::Tracked, lib: &labware::Library) {
    let defs: Vec<Option<labware::LabwareDef>> =
        plan.labware.iter().map(|l| plan.labware_def(&l.load_name, lib).cloned()).collect();
    for (i, lw) in plan.labware.iter_mut().enumerate() {
        let (Some(_), None, Some(def), Some(now)) = (&lw.store, &lw.container, &defs[i], tracked.wells.get(i)) else {
            continue;
        };
        for (w, well) in def.wells.iter().enumerate() {
            let Some(state) = now.get(w) else { continue };
            let held: std::collections::BTreeMap<String, f64> =
                state.contents.iter().filter(|(_, ul)| **ul > 1e-9).map(|(l, ul)| (l.clone(), *ul)).collect();
            if !held.is_empty() {
                lw.outputs.insert(well.name.clone(), held);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile_with, Format, SourceFile};

    struct One;
    impl Inventory for One {
        fn container(&self, name: &str) -> Option<Held> {
            (name == "PL-1").then(|| Held {
                id: "con_1".into(),
                load_name: "corning_96_wellplate_360ul_flat".into(),
                contents: vec![("A1".into(), "serum".into(), 100.0), ("A2".into(), "serum".into(), 30.0)],
            })
        }
    }

    fn compile(labware: &str) -> crate::Compilation {
        let text = format!(
            "labwright: 1\nname: t\nlabware:\n  samples: {labware}\n  assay: {{ type: corning_96_wellplate_360ul_flat }}\n  tips: {{ type: opentrons_96_tiprack_300ul }}\nsteps:\n  - transfer: {{ from: samples/A1:A2, to: assay/A1:A2, volume: 50 uL }}\n"
        );
        compile_with(
            &SourceFile::new("t.yaml", text),
            Format::Auto,
            &labware::Site::sim().unwrap(),
            &labware::Library::shipped(),
            &One,
        )
    }

    fn codes(c: &crate::Compilation) -> Vec<String> {
        c.diagnostics.iter().filter(|d| d.is_error()).map(|d| format!("{} {}", d.code, d.message)).collect()
    }

    #[test]
    fn a_named_container_brings_its_type_and_contents() {
        // A2 holds 30 µL: the volume check runs against the inventory's contents.
        let c = compile("{ container: PL-1 }");
        let errors = codes(&c);
        assert!(errors.iter().any(|e| e.get(1..3) == Some("03") && e.contains("A2")), "a volume error: {errors:?}");
        let fine = compile_with(
            &SourceFile::new(
                "t.yaml",
                "labwright: 1\nname: t\nlabware:\n  samples: { container: PL-1 }\n  assay: { type: corning_96_wellplate_360ul_flat }\n  tips: { type: opentrons_96_tiprack_300ul }\nsteps:\n  - transfer: { from: samples/A1, to: assay/A1, volume: 50 uL }\n".to_string(),
            ),
            Format::Auto,
            &labware::Site::sim().unwrap(),
            &labware::Library::shipped(),
            &One,
        );
        assert!(codes(&fine).is_empty(), "{:?}", codes(&fine));
        let plan = fine.plan.unwrap();
        let samples = plan.labware.iter().find(|l| l.name == "samples").unwrap();
        assert_eq!(samples.load_name, "corning_96_wellplate_360ul_flat");
        assert_eq!(samples.contents.get("A1"), Some(&100.0));
        assert_eq!(samples.container.as_deref(), Some("con_1"));
        assert_eq!(samples.drawn.get("A1"), Some(&50.0), "what the run draws, for the lab's count");
    }

    #[test]
    fn an_unknown_container_and_a_mixed_declaration_are_errors() {
        assert!(codes(&compile("{ container: PL-9 }")).iter().any(|e| e == "P0209 unknown container `PL-9`"));
        let both = codes(&compile("{ container: PL-1, type: corning_96_wellplate_360ul_flat }"));
        assert!(both.iter().any(|e| e.contains("both a `type` and a `container`")), "{both:?}");
        let contents = codes(&compile("{ container: PL-1, contents: { A1: { water: 10 uL } } }"));
        assert!(contents.iter().any(|e| e.contains("its contents come from the lab's inventory")), "{contents:?}");
    }
}
