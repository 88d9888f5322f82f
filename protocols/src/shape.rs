//! The shape of the Labwright language, written once: which keys each object takes, which are
//! required, and what each holds. The parser ([`crate::lang`]) refuses keys that are not here;
//! [`json_schema`] turns the same description into the JSON Schema that `labctl schema` prints,
//! so editors validate and complete protocols with exactly what the compiler accepts (the
//! compiler checks more: ranges, names that must exist, volumes).

use crate::units::{self, Dim};
use serde_json::{json, Map, Value};

/// What a key holds.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// Any text.
    Text,
    /// A number.
    Number,
    /// A whole number, 0 or more.
    Count,
    /// The language version: the number 1.
    Version,
    /// A quantity with its unit (`50 uL`, `30 min`).
    Quantity(Dim),
    /// A name (of labware, a liquid, a step): text without `/`.
    Name,
    /// Wells of a labware: `plate/A1`, `plate/A1:H12`, `plate/A1:A12 by row`.
    Wells,
    /// A percentage: `5 %`.
    Percent,
    /// `true` or `false`.
    Bool,
    /// One of these words, as written.
    Word(&'static [&'static str]),
    /// One of these words, in any case.
    WordAnyCase(&'static [&'static str]),
    /// An object with these keys.
    Obj(&'static Obj),
    /// A list of these.
    List(&'static Ty),
    /// A map of any keys to these.
    MapOf(&'static Ty),
    /// Any of these.
    AnyOf(&'static [Ty]),
    /// A step (see [`STEP_FIELDS`] and [`OPERATIONS`]).
    Steps,
}

/// One key of an object.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub doc: &'static str,
}

/// An object of the language: its keys, nothing else.
#[derive(Debug)]
pub struct Obj {
    pub keys: &'static [Key],
}

impl Obj {
    /// The keys' names, as the parser checks them.
    pub fn names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }
}

const fn key(name: &'static str, ty: Ty, doc: &'static str) -> Key {
    Key { name, ty, required: false, doc }
}

const fn must(name: &'static str, ty: Ty, doc: &'static str) -> Key {
    Key { name, ty, required: true, doc }
}

const VOLUME: Ty = Ty::Quantity(Dim::Volume);
const DURATION: Ty = Ty::Quantity(Dim::Duration);
const TEMPERATURE: Ty = Ty::Quantity(Dim::Temperature);
const WAVELENGTH: Ty = Ty::Quantity(Dim::Wavelength);
const TIPS: Ty = Ty::Word(&["always", "per_source", "once"]);
const TIPS_DOC: &str = "when to take a new tip: always, per_source (when the source well changes) or once";

/// The protocol file.
pub const PROTOCOL: Obj = Obj {
    keys: &[
        must("labwright", Ty::Version, "the language version: 1"),
        key("name", Ty::Text, "the protocol's name, shown on runs and results"),
        key("description", Ty::Text, "what the protocol does"),
        key(
            "liquids",
            Ty::MapOf(&Ty::AnyOf(&[Ty::Text, Ty::Obj(&LIQUID)])),
            "liquids by name: a description, or its properties",
        ),
        must("labware", Ty::MapOf(&Ty::Obj(&LABWARE)), "labware by name"),
        must("steps", Ty::List(&Ty::Steps), "what to do, in order"),
        key("constraints", Ty::List(&Ty::Obj(&CONSTRAINT)), "time limits between steps"),
    ],
};

/// A liquid's properties.
pub const LIQUID: Obj = Obj {
    keys: &[
        key("description", Ty::Text, "what the liquid is"),
        key(
            "reagent",
            Ty::Name,
            "a reagent the lab stocks, by name (labctl quote shows the price): the lab pours it from a lot of its choosing",
        ),
        key(
            "absorbance",
            Ty::MapOf(&Ty::Quantity(Dim::Absorbance)),
            "its absorbance undiluted, by wavelength: { 595 nm: 1.2 OD }",
        ),
        key("fluorescence", Ty::Quantity(Dim::Fluorescence), "its fluorescence undiluted: 40000 RFU"),
        key("luminescence", Ty::Quantity(Dim::Luminescence), "its luminescence undiluted: 250000 RLU/s"),
        key("max_wait", DURATION, "how long it may wait at room temperature once in a plate (a warning says when the plan makes it wait longer)"),
    ],
};

/// A labware of the protocol.
pub const LABWARE: Obj = Obj {
    keys: &[
        key("type", Ty::Name, "the labware's load name (labctl labware list); not with `container`"),
        key("contents", Ty::MapOf(&Ty::MapOf(&VOLUME)), "what its wells hold at the start: { A1: { water: 100 uL } }; not with `container`"),
        key(
            "container",
            Ty::Name,
            "a container the lab holds for you, by barcode or id (labctl containers): its type and contents come from the lab's inventory",
        ),
        key("description", Ty::Text, "what it is for"),
        key(
            "store",
            Ty::Obj(&STORE),
            "keep it after the run, in the lab's storage: { condition: 4C }; it becomes a container of yours (new labware is discarded unless stored)",
        ),
        key("discard", Ty::Bool, "discard it after the run (a container of yours: it leaves your inventory)"),
        key(
            "map",
            Ty::AnyOf(&[Ty::Text, Ty::MapOf(&Ty::Obj(&MAP_ENTRY))]),
            "the plate map: wells to sample, group, role and concentration, or a CSV table",
        ),
    ],
};

/// The storage conditions a lab keeps containers in.
pub const CONDITIONS: &[&str] = labware::STORAGE_CONDITIONS;

/// Where a labware is kept after the run.
pub const STORE: Obj =
    Obj { keys: &[must("condition", Ty::Word(CONDITIONS), "ambient, 4C, -20C, -80C, or warm: 30C, 35C, 37C")] };

/// One entry of a plate map.
pub const MAP_ENTRY: Obj = Obj {
    keys: &[
        key("sample", Ty::Text, "the sample's name (blanks need none)"),
        key("group", Ty::Text, "the experimental group"),
        key(
            "role",
            Ty::WordAnyCase(crate::design::Role::WORDS),
            "what the wells are: sample (or unknown), blank, control, standard; default sample",
        ),
        key("concentration", Ty::Text, "one concentration for every well: 10 uM"),
        key(
            "concentrations",
            Ty::AnyOf(&[Ty::List(&Ty::Text), Ty::Obj(&SERIES)]),
            "one per well, or a dilution series { start, factor }",
        ),
    ],
};

/// A dilution series of concentrations in a plate map.
pub const SERIES: Obj = Obj {
    keys: &[
        must("start", Ty::Text, "the first well's concentration: 5 mM"),
        must("factor", Ty::Number, "each well divided by this (2 for 1:2)"),
    ],
};

/// A time limit between two steps.
pub const CONSTRAINT: Obj = Obj {
    keys: &[
        must("from", Ty::Name, "the step it counts from (its id)"),
        must("to", Ty::Name, "the step that must start in time (its id)"),
        key("min_lag", DURATION, "start at least this long after `from` ends"),
        key("max_lag", DURATION, "start at most this long after `from` ends"),
    ],
};

/// Mixing in a well.
pub const MIX: Obj = Obj {
    keys: &[must("times", Ty::Count, "how many aspirate-dispense cycles"), must("volume", VOLUME, "the volume mixed")],
};

/// The keys every step may have besides its operation.
pub const STEP_FIELDS: Obj = Obj {
    keys: &[
        key("id", Ty::Name, "a name for the step, for `after` and constraints"),
        key("after", Ty::AnyOf(&[Ty::Name, Ty::List(&Ty::Name)]), "steps that must end before this one starts"),
    ],
};

pub const TRANSFER: Obj = Obj {
    keys: &[
        must("from", Ty::Wells, "source wells: reservoir/A1"),
        key("to", Ty::Wells, "destination wells: plate/A1:H12"),
        key("volume", Ty::AnyOf(&[VOLUME, Ty::List(&VOLUME)]), "the volume per destination, or one per pair"),
        key("volumes", Ty::Text, "a CSV table of well, volume"),
        key("tips", TIPS, TIPS_DOC),
        key("mix_before", Ty::Obj(&MIX), "mix the source before drawing"),
        key("mix_after", Ty::Obj(&MIX), "mix the destination after dispensing"),
    ],
};

pub const SERIAL_DILUTION: Obj = Obj {
    keys: &[
        key("series", Ty::List(&Ty::Wells), "well ranges, one per series: plate/A1:A12 by row"),
        key("plate", Ty::Name, "the plate (with rows and columns or points)"),
        key("rows", Ty::Text, "rows of the series: A:H"),
        key("columns", Ty::AnyOf(&[Ty::Text, Ty::Number]), "columns of each series: 1:12"),
        key("points", Ty::Count, "the number of wells per series (from column 1)"),
        key("volume", VOLUME, "the volume moved from each well to the next"),
        key("factor", Ty::Number, "the dilution factor (3 for 1:3); the volumes follow from final_volume"),
        key("final_volume", VOLUME, "each well's volume after dilution (with factor)"),
        key("diluent", Ty::Wells, "where the diluent comes from (with factor)"),
        key("mix", Ty::Obj(&MIX), "mix each well after adding"),
        key("tips", TIPS, TIPS_DOC),
    ],
};

pub const MIX_STEP: Obj = Obj {
    keys: &[
        must("wells", Ty::Wells, "the wells to mix"),
        must("times", Ty::Count, "aspirate-dispense cycles"),
        must("volume", VOLUME, "the volume mixed"),
        key("tips", TIPS, TIPS_DOC),
    ],
};

pub const INCUBATE: Obj = Obj {
    keys: &[
        must("labware", Ty::Name, "the plate"),
        must("temperature", Ty::AnyOf(&[TEMPERATURE, Ty::Word(&["ambient"])]), "37 °C, or ambient"),
        must("duration", DURATION, "how long"),
        key("shaking", Ty::Quantity(Dim::Speed), "shaking speed: 300 rpm"),
        key("co2", Ty::Percent, "CO₂ in the atmosphere: 5 %"),
    ],
};

pub const SHAKE: Obj = Obj {
    keys: &[
        must("labware", Ty::Name, "the plate"),
        must("speed", Ty::Quantity(Dim::Speed), "300 rpm"),
        must("duration", DURATION, "how long"),
        key("temperature", TEMPERATURE, "held while shaking"),
    ],
};

pub const LABWARE_ONLY: Obj = Obj { keys: &[must("labware", Ty::Name, "the plate")] };

pub const READ_ABSORBANCE: Obj = Obj {
    keys: &[
        must("labware", Ty::Name, "the plate"),
        key("wells", Ty::Wells, "the wells read (default: all)"),
        key("wavelength", WAVELENGTH, "450 nm"),
        key("wavelengths", Ty::List(&WAVELENGTH), "[450 nm, 620 nm]"),
    ],
};

pub const READ_FLUORESCENCE: Obj = Obj {
    keys: &[
        must("labware", Ty::Name, "the plate"),
        key("wells", Ty::Wells, "the wells read (default: all)"),
        must("excitation", WAVELENGTH, "485 nm"),
        must("emission", WAVELENGTH, "528 nm"),
    ],
};

pub const READ_LUMINESCENCE: Obj =
    Obj { keys: &[must("labware", Ty::Name, "the plate"), key("wells", Ty::Wells, "the wells read (default: all)")] };

pub const CENTRIFUGE: Obj = Obj {
    keys: &[
        must("labware", Ty::Name, "the plate"),
        must("force", Ty::Quantity(Dim::Force), "1000 g"),
        must("duration", DURATION, "how long"),
    ],
};

pub const WAIT: Obj = Obj { keys: &[must("duration", DURATION, "how long")] };

pub const THERMOCYCLE: Obj = Obj {
    keys: &[
        must("labware", Ty::Name, "the plate"),
        must(
            "profile",
            Ty::List(&Ty::AnyOf(&[Ty::Obj(&HOLD), Ty::Obj(&CYCLES)])),
            "holds in order; a `cycles` entry repeats its steps",
        ),
    ],
};

/// One temperature of a thermocycling profile.
pub const HOLD: Obj =
    Obj { keys: &[must("temperature", TEMPERATURE, "95 °C"), must("hold", DURATION, "how long once there: 30 s")] };

/// Holds repeated.
pub const CYCLES: Obj = Obj {
    keys: &[
        must("cycles", Ty::Count, "how many times"),
        must("steps", Ty::List(&Ty::Obj(&HOLD)), "the holds of one cycle"),
    ],
};

pub const MANUAL: Obj = Obj {
    keys: &[
        must("instruction", Ty::Text, "what a technician does"),
        key("labware", Ty::AnyOf(&[Ty::Name, Ty::List(&Ty::Name)]), "the labware it is done to"),
        key("duration", DURATION, "how long it takes (default 5 min)"),
    ],
};

pub const REPEAT: Obj = Obj {
    keys: &[must("times", Ty::Count, "how many times"), must("steps", Ty::List(&Ty::Steps), "the steps repeated")],
};

/// Every operation a step can be, and what it takes.
pub const OPERATIONS: &[(&str, Ty)] = &[
    ("transfer", Ty::Obj(&TRANSFER)),
    ("distribute", Ty::Obj(&TRANSFER)),
    ("consolidate", Ty::Obj(&TRANSFER)),
    ("serial_dilution", Ty::Obj(&SERIAL_DILUTION)),
    ("mix", Ty::Obj(&MIX_STEP)),
    ("incubate", Ty::Obj(&INCUBATE)),
    ("shake", Ty::Obj(&SHAKE)),
    ("seal", Ty::AnyOf(&[Ty::Name, Ty::Obj(&LABWARE_ONLY)])),
    ("unseal", Ty::AnyOf(&[Ty::Name, Ty::Obj(&LABWARE_ONLY)])),
    ("cover", Ty::AnyOf(&[Ty::Name, Ty::Obj(&LABWARE_ONLY)])),
    ("uncover", Ty::AnyOf(&[Ty::Name, Ty::Obj(&LABWARE_ONLY)])),
    ("read_absorbance", Ty::Obj(&READ_ABSORBANCE)),
    ("read_fluorescence", Ty::Obj(&READ_FLUORESCENCE)),
    ("read_luminescence", Ty::Obj(&READ_LUMINESCENCE)),
    ("centrifuge", Ty::Obj(&CENTRIFUGE)),
    ("thermocycle", Ty::Obj(&THERMOCYCLE)),
    ("wait", Ty::AnyOf(&[DURATION, Ty::Obj(&WAIT)])),
    ("manual", Ty::AnyOf(&[Ty::Text, Ty::Obj(&MANUAL)])),
    ("repeat", Ty::Obj(&REPEAT)),
];

/// The operations' names.
pub fn operation_names() -> Vec<&'static str> {
    OPERATIONS.iter().map(|(n, _)| *n).collect()
}

/// The language as a JSON Schema (draft 2020-12).
pub fn json_schema() -> Value {
    let ops: Vec<Value> = OPERATIONS
        .iter()
        .map(|(name, ty)| {
            let mut props = Map::new();
            props.insert((*name).into(), schema_of(ty));
            if *name != "repeat" {
                for k in STEP_FIELDS.keys {
                    props.insert(k.name.into(), described(schema_of(&k.ty), k.doc));
                }
            }
            json!({"type": "object", "properties": props, "required": [name], "additionalProperties": false})
        })
        .collect();
    let mut root = object(&PROTOCOL);
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$id"] = json!("urn:labwright:protocol:1");
    root["title"] = json!("Labwright protocol");
    root["description"] = json!("An experiment in the Labwright language (docs/protocol-language.md). The compiler checks more than this schema: ranges, names that must exist, volumes.");
    root["$defs"] = json!({"step": {"oneOf": ops, "description": "one operation, with an optional id and after"}});
    root
}

fn object(o: &Obj) -> Value {
    let mut props = Map::new();
    for k in o.keys {
        props.insert(k.name.into(), described(schema_of(&k.ty), k.doc));
    }
    let required: Vec<&str> = o.keys.iter().filter(|k| k.required).map(|k| k.name).collect();
    let mut v = json!({"type": "object", "properties": props, "additionalProperties": false});
    if !required.is_empty() {
        v["required"] = json!(required);
    }
    v
}

fn described(mut v: Value, doc: &str) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("description".into(), json!(doc));
    }
    v
}

fn schema_of(ty: &Ty) -> Value {
    match ty {
        Ty::Text => json!({"type": "string"}),
        Ty::Number => json!({"type": "number"}),
        Ty::Count => json!({"type": "integer", "minimum": 0}),
        Ty::Version => json!({"const": 1}),
        Ty::Quantity(dim) => {
            let examples: Vec<&str> = dim.examples().split(", ").map(|e| e.trim_matches('`')).collect();
            json!({"type": "string", "pattern": quantity_pattern(*dim), "examples": examples})
        }
        Ty::Name => json!({"type": "string", "pattern": "^[^/]+$"}),
        Ty::Wells => json!({"type": "string", "pattern": "^[^/]+/.+$"}),
        Ty::Percent => json!({"type": "string", "pattern": format!("^\\s*{NUMBER}\\s*%\\s*$")}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Word(words) => json!({"type": "string", "enum": words}),
        Ty::WordAnyCase(words) => {
            let any: Vec<String> = words.iter().map(|w| any_case(w)).collect();
            json!({"type": "string", "pattern": format!("^\\s*(?:{})\\s*$", any.join("|")), "examples": words})
        }
        Ty::Obj(o) => object(o),
        Ty::List(inner) => json!({"type": "array", "items": schema_of(inner)}),
        Ty::MapOf(inner) => json!({"type": "object", "additionalProperties": schema_of(inner)}),
        Ty::AnyOf(tys) => json!({"anyOf": tys.iter().map(schema_of).collect::<Vec<_>>()}),
        Ty::Steps => json!({"$ref": "#/$defs/step"}),
    }
}

/// A regular expression matching `word` in any case (JSON Schema patterns have no flags).
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
            } else if "\\^$.|?*+()[]{}/".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A decimal number as the quantity reader takes it.
const NUMBER: &str = "[-+]?(?:[0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(?:[eE][-+]?[0-9]+)?";

/// What [`units::parse`] accepts for a dimension: a number and one of its units (any case,
/// plural `s` allowed), or Autoprotocol's `number:unit`.
fn quantity_pattern(dim: Dim) -> String {
    let mut names = units::units_of(dim);
    names.sort_by_key(|u| std::cmp::Reverse(u.len())); // longest first: `ml` before `l`
    let alternatives: Vec<String> = names.iter().map(|u| any_case(u)).collect();
    format!("^\\s*{NUMBER}\\s*(?::\\s*)?(?:{})[sS]?\\s*$", alternatives.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_patterns_follow_the_unit_table() {
        let p = quantity_pattern(Dim::Volume);
        assert!(p.contains("[uU][lL]") && p.contains("µ[lL]"), "{p}");
        assert!(!p.contains("[mM][iI][nN]"), "a volume is not a duration: {p}");
    }

    #[test]
    fn every_operation_has_a_shape_and_steps_recurse() {
        let s = json_schema();
        let ops = s["$defs"]["step"]["oneOf"].as_array().unwrap();
        assert_eq!(ops.len(), OPERATIONS.len());
        let repeat = ops.iter().find(|o| o["required"][0] == "repeat").unwrap();
        assert_eq!(repeat["properties"]["repeat"]["properties"]["steps"]["items"]["$ref"], "#/$defs/step");
        assert_eq!(s["required"], json!(["labwright", "labware", "steps"]));
        assert_eq!(s["properties"]["labwright"]["const"], 1);
    }
}
