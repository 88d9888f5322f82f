//! Autoprotocol JSON.
use crate::ast::Protocol;
use crate::diag::Diagnostics;
use crate::syntax::Node;
use labware::Library;

/// Reads an Autoprotocol document.
pub fn parse(_root: &Node, _lib: &Library, _d: &mut Diagnostics) -> Protocol {
    unreachable!()
}
