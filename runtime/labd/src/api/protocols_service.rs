//! The Protocols service: validate and quote a protocol, diagnostics as data.

use super::*;

pub(super) fn diagnostics(src: &protocols::SourceFile, c: &protocols::Compilation) -> Vec<pb::Diagnostic> {
    c.diagnostics
        .iter()
        .map(|d| {
            let a = src.line_col(d.span.start);
            let b = src.line_col(d.span.end);
            pb::Diagnostic {
                code: d.code.into(),
                severity: if d.is_error() { pb::Severity::Error as i32 } else { pb::Severity::Warning as i32 },
                message: d.message.clone(),
                line: a.line as u32,
                column: a.column as u32,
                end_line: b.line as u32,
                end_column: b.column as u32,
                hint: d.hint.clone().unwrap_or_default(),
            }
        })
        .collect()
}

fn validation(src: &protocols::SourceFile, c: &protocols::Compilation) -> pb::ValidateResponse {
    pb::ValidateResponse {
        ok: !c.has_errors(),
        diagnostics: diagnostics(src, c),
        tasks: c.plan.as_ref().map_or(0, |p| p.tasks.len() as u32),
        commands: c.plan.as_ref().map_or(0, |p| p.command_count() as u32),
    }
}

#[tonic::async_trait]
impl pb::protocols_server::Protocols for Api {
    async fn validate(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        let (src, c) = self.compile(&who, &r.file_name, &r.source, r.format).await?;
        Ok(Response::new(validation(&src, &c)))
    }

    async fn quote(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::QuoteResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        let class = labware::ServiceClass::parse(&r.service_class).map_err(Status::invalid_argument)?;
        let (src, c) = self.compile(&who, &r.file_name, &r.source, r.format).await?;
        let mut out = pb::QuoteResponse {
            validation: Some(validation(&src, &c)),
            service_class: class.as_str().into(),
            ..Default::default()
        };
        let experience = self.experience().await?;
        // Device time as this lab's instruments really take it: instruments bill what they took.
        let quoted = c.plan.as_ref().map(|p| protocols::quote::quote_as(&experience.corrected(p), &self.site, class));
        if let Some(q) = quoted.as_ref() {
            out.duration_s = q.duration_s;
            out.plate_moves = q.plate_moves;
            out.per_run = q.per_run;
            out.total = q.total;
            out.currency = q.currency.clone();
            out.lines = q
                .lines
                .iter()
                .map(|l| pb::CostLine {
                    instrument_class: l.class.as_str().into(),
                    hours: l.hours,
                    rate_per_hour: l.rate_per_hour,
                    amount: l.amount,
                })
                .collect();
            out.consumables = q
                .consumables
                .iter()
                .map(|l| pb::ConsumableLine {
                    item: l.item.clone(),
                    unit: l.unit.into(),
                    quantity: l.quantity,
                    price: l.price,
                    amount: l.amount,
                })
                .collect();
        }
        let ok = !c.has_errors();
        if let Some(plan) = c.plan.filter(|_| ok) {
            let margin = experience.promise_margin(scheduler::lab::promise::DEFAULT_MARGIN);
            let e = self.earliest_completion(&who, plan, class, experience).await?;
            let (start, s) = (e.start_s, e.end_s);
            let at = |device_s: f64| store::now_ms() + (device_s * self.time_scale * 1000.0) as i64;
            if let Some((target, earliest)) = self.turnaround_target(class, &e) {
                out.turnaround_target_s = target;
                out.meets_target = earliest <= target + 1e-6;
            }
            out.estimated_start_s = start;
            out.estimated_start_at_ms = at(start);
            out.earliest_completion_s = s;
            out.earliest_completion_at_ms = at(s);
            if class.promised() {
                let promised = scheduler::lab::promise::promised(0.0, s, margin);
                out.promised_by_s = promised;
                out.promised_by_at_ms = at(promised);
            }
        }
        Ok(Response::new(out))
    }
}
