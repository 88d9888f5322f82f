//! The one well-address parser of the project.
//!
//! Grammar (whitespace around items is ignored):
//!
//! ```text
//! selection := item ("," item)*
//! item      := well                  A1, h12 (letters are upper-cased)
//!            | well ":" well order?  A1:H12 — the rectangle between two corners
//!            | row (":" row)?        A, A:C — whole rows, left to right, row after row
//!            | col (":" col)?        1, 1:3 — whole columns, top to bottom, column after column
//! order     := "by column" | "by row"
//! ```
//!
//! A rectangle is walked **by column** unless it says otherwise: A1, B1, … H1, A2, … (the order a
//! single-channel pipette and the Opentrons `wells()` list use). `A1:H12 by row` walks A1, A2, …
//! A12, B1, …. Rows and columns must exist in the labware; the selection keeps duplicates and order
//! as written, so `A1, A1` is two visits to A1.

use crate::def::LabwareDef;

/// Splits `B12` into `("B", 12)`. Returns `None` for anything else.
pub fn split_well_name(name: &str) -> Option<(&str, u32)> {
    let split = name.find(|c: char| !c.is_ascii_uppercase())?;
    let (row, col) = name.split_at(split);
    if row.is_empty() || row.len() > 2 || col.is_empty() || !col.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if col.starts_with('0') {
        return None;
    }
    let col: u32 = col.parse().ok()?;
    Some((row, col))
}

/// Order in which a rectangle of wells is walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    ByColumn,
    ByRow,
}

/// One item of a selection, before it is checked against a labware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Well { row: String, col: u32 },
    Rect { from: (String, u32), to: (String, u32), order: Order },
    Rows { from: String, to: String },
    Columns { from: u32, to: u32 },
}

/// A parsed, not yet resolved, list of wells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WellSelection {
    pub items: Vec<Item>,
}

/// A selection that cannot be parsed or does not fit the labware.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("{text:?} is not a well address: {why}")]
    Syntax { text: String, why: String },
    #[error("well {well} does not exist ({grid})")]
    NoSuchWell { well: String, grid: String },
    #[error("row {row} does not exist ({grid})")]
    NoSuchRow { row: String, grid: String },
    #[error("column {column} does not exist ({grid})")]
    NoSuchColumn { column: u32, grid: String },
    #[error("the selection is empty")]
    Empty,
}

fn syntax(text: &str, why: &str) -> AddressError {
    AddressError::Syntax { text: text.to_string(), why: why.to_string() }
}

/// Upper-cases the row letters of a well, row or range written in lower case.
fn normalise(text: &str) -> String {
    text.trim().to_ascii_uppercase()
}

fn parse_well(text: &str) -> Result<(String, u32), AddressError> {
    let up = normalise(text);
    match split_well_name(&up) {
        Some((r, c)) => Ok((r.to_string(), c)),
        None => Err(syntax(text, "expected row letters then a column number, like A1 or H12")),
    }
}

fn is_row(text: &str) -> bool {
    !text.is_empty() && text.len() <= 2 && text.bytes().all(|b| b.is_ascii_alphabetic())
}

fn is_col(text: &str) -> bool {
    !text.is_empty() && text.len() <= 4 && text.bytes().all(|b| b.is_ascii_digit())
}

fn parse_col(text: &str, whole: &str) -> Result<u32, AddressError> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(syntax(whole, "columns are numbered from 1")),
    }
}

impl WellSelection {
    /// Parses a selection such as `A1`, `A1:H12 by row`, `A`, `1:3`, `A1, B2, C3:C5`.
    pub fn parse(text: &str) -> Result<WellSelection, AddressError> {
        let mut items = Vec::new();
        if text.len() > 4096 {
            return Err(syntax(&text[..32.min(text.len())], "a selection is at most 4096 characters"));
        }
        for raw in text.split(',') {
            let part = raw.trim();
            if part.is_empty() {
                return Err(syntax(text, "empty item between commas"));
            }
            let (body, order) = if let Some(b) = part.strip_suffix("by column") {
                (b.trim(), Some(Order::ByColumn))
            } else if let Some(b) = part.strip_suffix("by row") {
                (b.trim(), Some(Order::ByRow))
            } else {
                (part, None)
            };
            let item = match body.split_once(':') {
                None => {
                    if order.is_some() {
                        return Err(syntax(part, "`by row`/`by column` only follow a range like A1:H12"));
                    }
                    if is_row(body) {
                        let r = normalise(body);
                        Item::Rows { from: r.clone(), to: r }
                    } else if is_col(body) {
                        let c = parse_col(body, part)?;
                        Item::Columns { from: c, to: c }
                    } else {
                        let (row, col) = parse_well(body)?;
                        Item::Well { row, col }
                    }
                }
                Some((a, b)) => {
                    let (a, b) = (a.trim(), b.trim());
                    if is_row(a) && is_row(b) && order.is_none() {
                        Item::Rows { from: normalise(a), to: normalise(b) }
                    } else if is_col(a) && is_col(b) && order.is_none() {
                        Item::Columns { from: parse_col(a, part)?, to: parse_col(b, part)? }
                    } else {
                        let from = parse_well(a)?;
                        let to = parse_well(b)?;
                        Item::Rect { from, to, order: order.unwrap_or(Order::ByColumn) }
                    }
                }
            };
            items.push(item);
        }
        Ok(WellSelection { items })
    }

    /// The wells this selection names in `def`, as indices into `def.wells`, in selection order.
    pub fn resolve(&self, def: &LabwareDef) -> Result<Vec<usize>, AddressError> {
        let grid = || def.grid_description();
        let row_pos = |r: &str| -> Result<usize, AddressError> {
            def.rows()
                .iter()
                .position(|x| x == r)
                .ok_or_else(|| AddressError::NoSuchRow { row: r.to_string(), grid: grid() })
        };
        let col_pos = |c: u32| -> Result<usize, AddressError> {
            def.columns().iter().position(|&x| x == c).ok_or(AddressError::NoSuchColumn { column: c, grid: grid() })
        };
        let well = |r: &str, c: u32| -> Result<usize, AddressError> {
            let name = format!("{r}{c}");
            def.well_index(&name).ok_or_else(|| AddressError::NoSuchWell { well: name, grid: grid() })
        };
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                Item::Well { row, col } => out.push(well(row, *col)?),
                Item::Rect { from, to, order } => {
                    // Both corners must exist so a typo such as A1:H13 is reported, not clipped.
                    well(&from.0, from.1)?;
                    well(&to.0, to.1)?;
                    let (r0, r1) = span(row_pos(&from.0)?, row_pos(&to.0)?);
                    let (c0, c1) = span(col_pos(from.1)?, col_pos(to.1)?);
                    let rows = &def.rows()[r0..=r1];
                    let cols = &def.columns()[c0..=c1];
                    push_grid(def, rows, cols, *order, &mut out);
                }
                Item::Rows { from, to } => {
                    let (r0, r1) = span(row_pos(from)?, row_pos(to)?);
                    push_grid(def, &def.rows()[r0..=r1], def.columns(), Order::ByRow, &mut out);
                }
                Item::Columns { from, to } => {
                    let (c0, c1) = span(col_pos(*from)?, col_pos(*to)?);
                    push_grid(def, def.rows(), &def.columns()[c0..=c1], Order::ByColumn, &mut out);
                }
            }
        }
        if out.is_empty() {
            return Err(AddressError::Empty);
        }
        Ok(out)
    }
}

fn span(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// Pushes the wells of a rectangle that exist (tube racks may have holes in their grid).
fn push_grid(def: &LabwareDef, rows: &[String], cols: &[u32], order: Order, out: &mut Vec<usize>) {
    let mut push = |r: &String, c: &u32| {
        if let Some(i) = def.well_index(&format!("{r}{c}")) {
            out.push(i);
        }
    };
    match order {
        Order::ByColumn => cols.iter().for_each(|c| rows.iter().for_each(|r| push(r, c))),
        Order::ByRow => rows.iter().for_each(|r| cols.iter().for_each(|c| push(r, c))),
    }
}
