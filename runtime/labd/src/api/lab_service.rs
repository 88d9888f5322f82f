//! The Lab service: instruments, maintenance, the schedule and interventions, for technicians
//! (a scientist sees their own runs' schedule and interventions).

use super::*;

/// An intervention as the API shows it; `tenant` is its run's tenant's name when known.
fn intervention(i: store::Intervention, tenant: String, plates: Vec<String>) -> pb::InterventionInfo {
    pb::InterventionInfo {
        plates,
        id: i.id,
        run_id: i.run_id,
        instrument: i.instrument.unwrap_or_default(),
        what: i.what,
        todo: i.todo,
        state: i.state,
        created_at_ms: i.created_at,
        resolved_at_ms: i.resolved_at.unwrap_or(0),
        resolved_by: i.resolved_by.unwrap_or_default(),
        tenant,
    }
}

fn halt_response(h: crate::halt::Halt, stopped: Vec<crate::halt::DriverStopped>) -> pb::HaltResponse {
    use crate::halt::Halt;
    let state = h.as_str().to_string();
    let (by, reason) = match h {
        Halt::Clear => (String::new(), String::new()),
        Halt::Paused { by, reason } | Halt::Stopped { by, reason } => (by, reason),
    };
    let stopped = stopped
        .into_iter()
        .map(|d| pb::DriverStop {
            id: d.id,
            elapsed_ms: d.elapsed.as_secs_f64() * 1000.0,
            error: d.error.unwrap_or_default(),
        })
        .collect();
    pb::HaltResponse { state, by, reason, stopped }
}

#[tonic::async_trait]
impl pb::lab_server::Lab for Api {
    async fn audit(&self, req: Request<pb::AuditRequest>) -> Result<Response<pb::AuditResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "the audit trail")?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 200,
            n if n <= 1000 => n as usize,
            n => return Err(Status::invalid_argument(format!("limit {n}: at most 1000 entries at once"))),
        };
        let store = self.store.clone();
        let entries = blocking(move || store.audit(r.since_ms, limit)).await?;
        Ok(Response::new(pb::AuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    at_ms: e.at,
                    actor: e.done.actor,
                    action: e.done.action,
                    subject: e.done.subject,
                    reason: e.done.reason,
                    detail: e.done.detail,
                })
                .collect(),
        }))
    }

    async fn durations(&self, req: Request<pb::DurationsRequest>) -> Result<Response<pb::DurationsResponse>, Status> {
        use crate::experience as x;
        let who = self.caller(&req).await?;
        // Samples name runs of every tenant; the report shows none, but it is the lab's view.
        Self::staff(&who, "reading how long instruments really take")?;
        let store = self.store.clone();
        let samples = blocking(move || store.task_durations(x::RECENT)).await?;
        let lines = x::error_report(&samples)
            .into_iter()
            .map(|l| pb::DurationLine {
                instrument: l.instrument,
                instrument_class: l.class,
                kind: l.kind,
                samples: l.samples as u32,
                p10: l.p10,
                median: l.median,
                p90: l.p90,
                error_raw: l.error_raw,
                error_corrected: l.error_corrected,
                factor: l.factor,
            })
            .collect();
        Ok(Response::new(pb::DurationsResponse {
            lines,
            window: x::WINDOW as u32,
            min_samples: x::MIN_SAMPLES as u32,
            min_factor: x::MIN_FACTOR,
            max_factor: x::MAX_FACTOR,
        }))
    }

    async fn halt(&self, req: Request<pb::HaltRequest>) -> Result<Response<pb::HaltResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "pausing or stopping the lab")?;
        let r = req.into_inner();
        let reason = r.reason.trim().to_string();
        if reason.is_empty() {
            return Err(Status::invalid_argument("say why the lab stops (reason)"));
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(Status::invalid_argument(format!("the reason is longer than {MAX_REASON_CHARS} characters")));
        }
        let board = self.board.as_ref().ok_or_else(|| Status::unavailable("this node drives no lab"))?;
        let stopped = if r.emergency {
            crate::halt::emergency_stop(&board.halt, self.lab.drivers(), &who.id, &reason).await
        } else {
            tracing::warn!(by = %who.id, reason = %reason, "lab paused");
            board.halt.set(crate::halt::Halt::Paused { by: who.id.clone(), reason: reason.clone() });
            Vec::new()
        };
        let action = if r.emergency { "emergency_stop" } else { "paused" };
        let detail = if r.emergency { format!("{} drivers told to stop", stopped.len()) } else { String::new() };
        self.record_audit(&who, action, "lab", &reason, detail).await?;
        Ok(Response::new(halt_response(board.halt.get(), stopped)))
    }

    async fn resume(&self, req: Request<pb::ResumeRequest>) -> Result<Response<pb::HaltResponse>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "resuming the lab")?;
        let board = self.board.as_ref().ok_or_else(|| Status::unavailable("this node drives no lab"))?;
        let was = board.halt.get().as_str();
        tracing::warn!(by = %who.id, was, "lab resumed");
        board.halt.set(crate::halt::Halt::Clear);
        self.record_audit(&who, "resumed", "lab", "", format!("was {was}")).await?;
        Ok(Response::new(halt_response(board.halt.get(), Vec::new())))
    }

    async fn instruments(
        &self,
        req: Request<pb::InstrumentsRequest>,
    ) -> Result<Response<pb::InstrumentsResponse>, Status> {
        Self::staff(&self.caller(&req).await?, "instrument status")?;
        let mut out = Vec::new();
        {
            for inst in &self.site.instruments {
                let Some(d) = self.lab.instrument(&inst.id) else { continue };
                out.push(self.instrument_info(inst, d.as_ref()).await);
            }
            // Arms from what the executor has them doing (asking the arm itself would wait
            // behind the move it is making).
            for arm in &self.site.arms {
                let Some(connected) = self.lab.arm(&arm.id) else { continue }; // another node's cell
                let now = self.board.as_ref().and_then(|b| b.running(&arm.id));
                let flag = self.board.as_ref().and_then(|b| b.unavailable(&arm.id));
                let (state, detail, run_id) = match (flag, now) {
                    (Some(f), _) => {
                        let (kind, why) = f.split_once(": ").unwrap_or((f.as_str(), ""));
                        (kind.to_string(), why.to_string(), String::new())
                    }
                    (None, Some((run, label))) => ("busy".to_string(), format!("moving a plate {label}"), run),
                    (None, None) if connected => ("idle".into(), String::new(), String::new()),
                    (None, None) => ("offline".into(), "not connected".into(), String::new()),
                };
                out.push(pb::InstrumentInfo {
                    id: arm.id.clone(),
                    class: labware::InstrumentClass::RobotArm.as_str().into(),
                    state,
                    temperature_c: f64::NAN,
                    detail,
                    run_id,
                });
            }
        }
        let halt = self.board.as_ref().map(|b| halt_response(b.halt.get(), Vec::new()));
        Ok(Response::new(pb::InstrumentsResponse { instruments: out, halt }))
    }

    async fn interventions(
        &self,
        req: Request<pb::InterventionsRequest>,
    ) -> Result<Response<pb::InterventionsResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        let all = r.include_resolved;
        let store = self.store.clone();
        let scope = Self::scope(&who);
        let list = blocking(move || store.interventions(scope.as_deref(), !all)).await?;
        let (page, next_page_token) =
            crate::paging::after_key(list, |i| (i.created_at, i.id.as_str()), r.page_size, &r.page_token)
                .map_err(Status::invalid_argument)?;
        // Each run's tenant: a scientist's are all their own; for staff, each run of the page
        // read once.
        let (store, scope) = (self.store.clone(), Self::scope(&who));
        let runs: std::collections::BTreeSet<String> = page.iter().map(|i| i.run_id.clone()).collect();
        let open: std::collections::BTreeSet<String> =
            page.iter().filter(|i| i.state == "open").map(|i| i.run_id.clone()).collect();
        let (tenants, plates) = blocking(move || {
            let names: std::collections::BTreeMap<String, String> =
                store.tenants()?.into_iter().map(|t| (t.id, t.name)).collect();
            let mut of_run = std::collections::BTreeMap::new();
            for run in runs {
                let tenant_id = match &scope {
                    Some(own) => own.clone(),
                    None => store.run(None, &run)?.tenant_id,
                };
                of_run.insert(run, names.get(&tenant_id).cloned().unwrap_or_default());
            }
            // Where an open intervention's run has its plates: its own labware names.
            let mut plates = std::collections::BTreeMap::new();
            for run in open {
                let scoped = format!("{}.", crate::store::run_prefix(&run));
                let at = crate::executor::resume::plates_out(&store.attempts(&run)?, &Default::default());
                let said: Vec<String> = at
                    .into_iter()
                    .map(|(plate, nest)| format!("{} at {nest}", plate.strip_prefix(&scoped).unwrap_or(&plate)))
                    .collect();
                plates.insert(run, said);
            }
            Ok::<_, store::StoreError>((of_run, plates))
        })
        .await?;
        Ok(Response::new(pb::InterventionsResponse {
            interventions: page
                .into_iter()
                .map(|i| {
                    let tenant = tenants.get(&i.run_id).cloned().unwrap_or_default();
                    let at =
                        if i.state == "open" { plates.get(&i.run_id).cloned().unwrap_or_default() } else { Vec::new() };
                    intervention(i, tenant, at)
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn set_maintenance(
        &self,
        req: Request<pb::SetMaintenanceRequest>,
    ) -> Result<Response<pb::InstrumentInfo>, Status> {
        let who = self.caller(&req).await?;
        Self::staff(&who, "maintenance")?;
        let r = req.into_inner();
        let inst = self
            .site
            .instruments
            .iter()
            .find(|i| i.id == r.instrument)
            .ok_or_else(|| {
                let ids: Vec<&str> = self.site.instruments.iter().map(|i| i.id.as_str()).collect();
                Status::not_found(format!("no instrument `{}` at this site; it has {}", r.instrument, ids.join(", ")))
            })?
            .clone();
        if r.on && r.reason.trim().is_empty() {
            return Err(Status::invalid_argument("say why the instrument goes into maintenance (reason)"));
        }
        if r.reason.chars().count() > MAX_REASON_CHARS {
            return Err(Status::invalid_argument(format!(
                "the reason is {} characters long; the limit is {MAX_REASON_CHARS}",
                r.reason.chars().count()
            )));
        }
        let (store, id, reason, by) = (self.store.clone(), inst.id.clone(), r.reason.clone(), who.id.clone());
        blocking(move || store.set_maintenance(&id, r.on.then_some((reason.as_str(), by.as_str())))).await?;
        let action = if r.on { "maintenance_on" } else { "maintenance_off" };
        self.record_audit(&who, action, &inst.id, r.reason.trim(), String::new()).await?;
        if let Some(b) = &self.board {
            // The executor takes it from here; the board shows it at once.
            b.set_unavailable(&inst.id, r.on.then(|| format!("maintenance: {}", r.reason)));
        }
        let info = match self.lab.instrument(&inst.id) {
            Some(d) => self.instrument_info(&inst, d.as_ref()).await,
            None => pb::InstrumentInfo {
                id: inst.id.clone(),
                class: inst.class.as_str().into(),
                state: if r.on { "maintenance".into() } else { "offline".into() },
                temperature_c: f64::NAN,
                detail: r.reason,
                run_id: String::new(),
            },
        };
        Ok(Response::new(info))
    }

    async fn schedule(&self, req: Request<pb::ScheduleRequest>) -> Result<Response<pb::ScheduleResponse>, Status> {
        let who = self.caller(&req).await?;
        let scope = Self::scope(&who);
        let r = req.into_inner();
        let store = self.store.clone();
        let tenants = blocking(move || store.tenants()).await?;
        let name = |id: &str| tenants.iter().find(|t| t.id == id).map_or(String::new(), |t| t.name.clone());
        let slots = self
            .board
            .as_ref()
            .map(|b| b.schedule())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| scope.as_deref().is_none_or(|t| t == s.tenant_id))
            .map(|s| pb::ScheduleSlot {
                tenant: if scope.is_some() { String::new() } else { name(&s.tenant_id) },
                lane: s.lane,
                run_id: s.run_id,
                kind: s.kind.into(),
                label: s.label,
                planned_start_ms: s.planned_start_ms,
                planned_end_ms: s.planned_end_ms,
                started_ms: s.started_ms.unwrap_or(0),
                finished_ms: s.finished_ms.unwrap_or(0),
                state: s.state.into(),
            })
            .collect();
        let (slots, next_page_token) =
            crate::paging::by_offset(slots, r.page_size, &r.page_token).map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::ScheduleResponse { now_ms: store::now_ms(), slots, next_page_token }))
    }

    async fn resolve(&self, req: Request<pb::ResolveRequest>) -> Result<Response<pb::InterventionInfo>, Status> {
        let who = self.caller(&req).await?;
        if who.role == Role::Scientist {
            return Err(Status::permission_denied("interventions are resolved by technicians and admins"));
        }
        let r = req.into_inner();
        if r.reason.chars().count() > MAX_REASON_CHARS {
            return Err(Status::invalid_argument(format!("the reason is longer than {MAX_REASON_CHARS} characters")));
        }
        let (store, id, resolution, by) = (self.store.clone(), r.id.clone(), r.resolution.clone(), who.id.clone());
        let i = blocking(move || store.resolve_intervention(&id, &resolution, &by)).await?;
        let subject = match &i.instrument {
            Some(inst) => format!("intervention {} of {} on {inst}", i.id, i.run_id),
            None => format!("intervention {} of {}", i.id, i.run_id),
        };
        self.record_audit(
            &who,
            "intervention_resolved",
            &subject,
            r.reason.trim(),
            format!("{}: {}", r.resolution, i.what),
        )
        .await?;
        let tenant = self.tenant_of_run(&i.run_id).await;
        Ok(Response::new(intervention(i, tenant, Vec::new())))
    }
}
