//! A shipment's manifest: what a tenant sends the lab, as CSV with a header row and one row per
//! well and liquid — `barcode,type,well,sample,liquid,volume` (`PL-0001,
//! corning_96_wellplate_360ul_flat,A1,S-001,serum,150 uL`). Checked against the labware library
//! before anything is received; a manifest with any bad line is refused whole, each problem
//! named with its line. Pure: text in, containers or diagnostics out.

use crate::store::{NewContainer, WellContent};
use labware::Library;
use std::collections::BTreeMap;

/// The columns, in the order a template writes them (a manifest may order them as it likes).
pub const COLUMNS: [&str; 6] = ["barcode", "type", "well", "sample", "liquid", "volume"];

/// At most this many rows: a 384-well plate with a few liquids per well, many times over.
pub const MAX_ROWS: usize = 20_000;

/// One problem of a manifest, at its line (1-based; the header is line 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The containers a manifest declares, in the order their barcodes first appear; or every
/// problem found.
pub fn parse(text: &str, lib: &Library) -> Result<Vec<NewContainer>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(vec![Problem {
            line: 1,
            message: format!("the manifest is empty; its header is {}", COLUMNS.join(",")),
        }]);
    };
    let names: Vec<String> = fields(header).iter().map(|f| f.trim().to_lowercase()).collect();
    let mut at = [0usize; 6];
    for (k, col) in COLUMNS.iter().enumerate() {
        match names.iter().position(|n| n == col) {
            Some(i) => at[k] = i,
            None => problems.push(Problem {
                line: 1,
                message: format!("the header has no `{col}` column; write {}", COLUMNS.join(",")),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut order: Vec<String> = Vec::new();
    // barcode → (type, first line, well → liquid → (sample, µL, line))
    type Wells = BTreeMap<String, BTreeMap<String, (String, f64, usize)>>;
    let mut found: BTreeMap<String, (String, usize, Wells)> = BTreeMap::new();
    let mut rows = 0;
    for (line, text) in lines {
        rows += 1;
        if rows > MAX_ROWS {
            problems.push(Problem { line, message: format!("more than {MAX_ROWS} rows; split the shipment") });
            break;
        }
        let f = fields(text);
        if f.len() != names.len() {
            problems
                .push(Problem { line, message: format!("{} fields where the header has {}", f.len(), names.len()) });
            continue;
        }
        let get = |k: usize| f[at[k]].trim();
        let (barcode, load, well, sample, liquid, volume) = (get(0), get(1), get(2), get(3), get(4), get(5));
        let mut bad = |message: String| problems.push(Problem { line, message });
        if barcode.is_empty()
            || barcode.chars().count() > 64
            || barcode.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            bad(format!("barcode `{barcode}`: 1 to 64 printable characters without spaces"));
            continue;
        }
        let Some(def) = lib.get(load) else {
            bad(format!("unknown labware type `{load}`; `labctl labware` lists the lab's types"));
            continue;
        };
        let Some(w) = def.well(well) else {
            let (first, last) =
                (def.wells.first().map_or("", |w| w.name.as_str()), def.wells.last().map_or("", |w| w.name.as_str()));
            bad(format!("well `{well}` does not exist on {load} ({first}–{last})"));
            continue;
        };
        if sample.is_empty() || liquid.is_empty() {
            bad("name the sample and the liquid".into());
            continue;
        }
        let ul = match protocols::units::parse(volume, protocols::units::Dim::Volume) {
            Ok(v) if v > 0.0 => v,
            Ok(v) => {
                bad(format!("volume {v} µL: give a positive volume"));
                continue;
            }
            Err(e) => {
                use protocols::units::QuantityError;
                let why = match e {
                    QuantityError::UnknownUnit(u) => format!("unknown unit `{u}`"),
                    QuantityError::WrongDim(_) => "not a volume".to_string(),
                    QuantityError::Syntax | QuantityError::NotFinite => "not a number with a unit".to_string(),
                };
                bad(format!("volume `{volume}`: {why} (write e.g. `150 uL`)"));
                continue;
            }
        };
        let entry = found.entry(barcode.to_string()).or_insert_with(|| {
            order.push(barcode.to_string());
            (load.to_string(), line, BTreeMap::new())
        });
        if entry.0 != load {
            let (was, first) = (entry.0.clone(), entry.1);
            bad(format!("barcode {barcode} is a {was} on line {first} and a {load} here; one barcode, one container"));
            continue;
        }
        let in_well = entry.2.entry(well.to_string()).or_default();
        if let Some((_, _, earlier)) = in_well.get(liquid) {
            let earlier = *earlier;
            bad(format!("{barcode} {well} lists {liquid} again (line {earlier}); one row per well and liquid"));
            continue;
        }
        in_well.insert(liquid.to_string(), (sample.to_string(), ul, line));
        let total: f64 = in_well.values().map(|(_, v, _)| v).sum();
        if total > w.max_volume_ul + 1e-9 {
            bad(format!(
                "{barcode} {well} would hold {} µL; a well of {load} holds {} µL",
                protocols::units::trim(total),
                protocols::units::trim(w.max_volume_ul)
            ));
        }
    }
    if rows == 0 {
        problems.push(Problem { line: 2, message: "the manifest lists no container".into() });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(order
        .into_iter()
        .filter_map(|barcode| {
            let (load_name, _, wells) = found.remove(&barcode)?;
            let wells = wells
                .into_iter()
                .flat_map(|(well, liquids)| {
                    liquids.into_iter().map(move |(liquid, (sample, volume_ul, _))| WellContent {
                        well: well.clone(),
                        sample,
                        liquid,
                        volume_ul,
                    })
                })
                .collect();
            Some(NewContainer { barcode, load_name, wells, sources: Vec::new() })
        })
        .collect())
}

/// The barcodes a manifest lists, in its `barcode` column wherever the header puts it (for the
/// bench's scanning; [`parse`] checks the rest). Empty without a header naming the column.
pub fn barcodes(text: &str) -> std::collections::BTreeSet<String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else { return Default::default() };
    let Some(at) = fields(header).iter().position(|f| f.trim().eq_ignore_ascii_case(COLUMNS[0])) else {
        return Default::default();
    };
    lines.filter_map(|l| fields(l).get(at).map(|b| b.trim().to_string())).filter(|b| !b.is_empty()).collect()
}

/// The fields of a CSV line: commas separate, double quotes enclose a field that holds one
/// (`""` is a quote inside).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "barcode,type,well,sample,liquid,volume\n";

    #[test]
    fn a_good_manifest_gives_its_containers_in_order() {
        let text = format!(
            "{HEADER}PL-2,corning_96_wellplate_360ul_flat,A1,S-1,serum,150 uL\nPL-1,nest_12_reservoir_15ml,A1,buffer,PBS,10 mL\nPL-2,corning_96_wellplate_360ul_flat,A1,S-1,\"dye, blue\",50 uL\n"
        );
        let got = parse(&text, &Library::shipped()).unwrap();
        assert_eq!(got.iter().map(|c| c.barcode.as_str()).collect::<Vec<_>>(), ["PL-2", "PL-1"]);
        assert_eq!(got[0].wells.len(), 2, "two liquids in A1");
        assert!(got[0].wells.iter().any(|w| w.liquid == "dye, blue" && w.volume_ul == 50.0));
        assert_eq!(got[1].wells[0].volume_ul, 10_000.0);
        let reordered =
            "well,barcode,type,sample,liquid,volume\nA1,PL-9,corning_96_wellplate_360ul_flat,S,serum,1 uL\n";
        assert_eq!(barcodes(reordered).into_iter().collect::<Vec<_>>(), ["PL-9"], "the barcode column, wherever it is");
    }

    #[test]
    fn every_bad_line_is_named_and_nothing_is_taken() {
        let text = format!(
            "{HEADER}PL-1,no_such_plate,A1,S-1,serum,10 uL\nPL-2,corning_96_wellplate_360ul_flat,Z9,S-1,serum,10 uL\nPL-3,corning_96_wellplate_360ul_flat,A1,S-1,serum,400 uL\nPL-4,corning_96_wellplate_360ul_flat,A1,S-1,serum,10 uL\nPL-4,corning_96_wellplate_360ul_flat,A1,S-1,serum,10 uL\nPL-5,corning_96_wellplate_360ul_flat,A1,S-1,serum,ten\nPL-6,corning_96_wellplate_360ul_flat,A1\n"
        );
        let problems = parse(&text, &Library::shipped()).unwrap_err();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 6, 7, 8], "{problems:?}");
        let said = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        for words in [
            "unknown labware type `no_such_plate`",
            "well `Z9` does not exist",
            "would hold 400 µL",
            "lists serum again (line 5)",
            "volume `ten`",
            "3 fields where the header has 6",
        ] {
            assert!(said.contains(words), "{words}: {said}");
        }
        let no_header = parse("PL-1,x,A1,S,serum,1 uL\n", &Library::shipped()).unwrap_err();
        assert!(no_header[0].message.contains("no `barcode` column"), "{no_header:?}");
        assert!(parse(HEADER, &Library::shipped()).unwrap_err()[0].message.contains("no container"));
    }
}
