//! How long liquids wait at room temperature: a liquid with a `max_wait` (cells, an unstable
//! reagent) that the plan leaves in a plate longer than that before the plate is next incubated
//! gets a warning with the time (P0410). The time is estimated from the plan on an empty lab:
//! what remains of the task that put the liquid in, then every task on that plate (and every
//! wait or labware-less step, which holds everything) until its next incubation — or, with
//! none, until the plate's last task ends. A busy lab only makes it longer.

use crate::ast::Protocol;
use crate::check::Tracked;
use crate::diag::{Diagnostic, Diagnostics};
use crate::lower::LTask;
use crate::resolve::Env;
use labware::InstrumentClass;

/// Warns about every liquid the plan makes wait longer than its `max_wait`.
pub fn check(p: &Protocol, env: &Env, tasks: &[LTask], tracked: &Tracked, d: &mut Diagnostics) {
    for ((liquid, slot), &(ti, ci)) in &tracked.arrivals {
        let Some(&max_s) = p.max_wait_s.get(liquid) else { continue };
        let Some(task) = tasks.get(ti) else { continue };
        let rest: f64 = task.commands.iter().skip(ci + 1).map(|c| c.estimate_s).sum();
        let (mut waited, mut until) = (rest, None);
        for later in &tasks[ti + 1..] {
            let on_plate = later.holds.contains(slot);
            if on_plate && later.class == Some(InstrumentClass::Incubator) {
                until = Some(later.label.clone());
                break;
            }
            if on_plate || later.barrier {
                waited += later.commands.iter().map(|c| c.estimate_s).sum::<f64>();
            }
        }
        if waited <= max_s + 1e-9 {
            continue;
        }
        let plate = &env.slots[*slot].name;
        let to = until.map_or_else(|| format!("the end of its last step on `{plate}`"), |u| format!("`{u}`"));
        let span = task.spans.get(ci).copied().unwrap_or(task.span);
        d.push(
            Diagnostic::warning(
                "P0410",
                span,
                format!(
                    "`{liquid}` waits at least {} at room temperature in `{plate}` (from here to {to}); its max_wait is {}",
                    crate::quote::fmt_duration(waited),
                    crate::quote::fmt_duration(max_s)
                ),
            )
            .with_hint("put it in later (a separate step just before the incubation), move less liquid per step, or raise max_wait if it keeps that long"),
        );
    }
}
