//! The Runs service: submit, get, list, watch, results, cancel; each scoped to the caller's tenant.

use super::protocols_service::diagnostics;
use super::*;

fn run_event(e: store::Event) -> pb::RunEvent {
    pb::RunEvent { run_id: e.run_id, seq: e.seq, at_ms: e.at, kind: e.kind, payload_json: e.payload_json }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

/// Held from the checks of what a run draws and uses up to its submission (see `submit`).
static ADMITTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Api {
    /// Whether `tenant` has a run submitted under `key` already (none for an empty key).
    async fn taken_already(&self, tenant: &str, key: &str) -> Result<bool, Status> {
        if key.is_empty() {
            return Ok(false);
        }
        let (store, tenant, key) = (self.store.clone(), tenant.to_string(), key.to_string());
        Ok(blocking(move || store.runs(Some(&tenant), &[])).await?.iter().any(|run| run.idempotency_key == key))
    }
}

#[tonic::async_trait]
impl pb::runs_server::Runs for Api {
    type WatchStream = EventStream;

    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let who = self.caller(&req).await?;
        let tenant =
            who.tenant_id.clone().ok_or_else(|| Status::permission_denied("only a tenant's scientist submits runs"))?;
        let r = req.into_inner();
        if r.idempotency_key.trim().is_empty() {
            return Err(Status::invalid_argument(
                "an idempotency key is required: any string unique to this submission",
            ));
        }
        if r.source.len() > MAX_SOURCE_BYTES {
            return Err(too_large(r.source.len()));
        }
        for (what, text, max) in
            [("idempotency key", &r.idempotency_key, MAX_KEY_CHARS), ("file name", &r.file_name, MAX_FILE_NAME_CHARS)]
        {
            if text.chars().count() > max {
                return Err(Status::invalid_argument(format!(
                    "the {what} is {} characters long; the limit is {max}",
                    text.chars().count()
                )));
            }
        }
        let class = labware::ServiceClass::parse(&r.service_class).map_err(Status::invalid_argument)?;
        let (store, tid) = (self.store.clone(), tenant.clone());
        let (t, used) = blocking(move || {
            let t = store.tenant(&tid)?;
            let since = crate::clock::month_start_ms(store::now_ms());
            Ok((t, store.usage(Some(&tid), since)?.iter().map(|u| u.device_seconds).sum::<f64>()))
        })
        .await?;
        if let Some(h) = t.device_hours_per_month.filter(|h| used >= h * 3600.0) {
            return Err(Status::resource_exhausted(format!(
                "your tenant's quota of {h} device-hours this month is used up ({:.2} h used); ask an admin to raise it",
                used / 3600.0
            )));
        }
        let (src, c) = self.compile(&who, &r.file_name, &r.source, r.format).await?;
        let diags = diagnostics(&src, &c);
        let Some(plan) = c.plan.filter(|_| !c.diagnostics.iter().any(|d| d.is_error())) else {
            return Ok(Response::new(pb::SubmitResponse { run: None, created: false, diagnostics: diags }));
        };
        self.some_cell_can_run(&plan)?;
        // A class sold with a turnaround is taken only when the lab can keep it now (a retried
        // submission of a run already taken gets that run back, as ever).
        if self.site.turnaround_target(class).is_some() && !self.taken_already(&tenant, &r.idempotency_key).await? {
            let experience = self.experience().await?;
            let e = self.earliest_completion(&who, plan.clone(), class, experience).await?;
            if let Some((target, earliest)) = self.turnaround_target(class, &e).filter(|(t, e)| e > &(t + 1e-6)) {
                let h = |s: f64| format!("{:.2} h", s / 3600.0);
                return Err(Status::failed_precondition(format!(
                    "the lab cannot finish this {class} run within its turnaround of {} now (it would take {}); \
                     submit it as standard, or later (the lab's quote in this class says whether it fits)",
                    h(target),
                    h(earliest)
                )));
            }
        }
        let new = store::NewRun {
            tenant_id: tenant,
            idempotency_key: r.idempotency_key,
            name: plan.protocol.clone(),
            source: String::from_utf8_lossy(&r.source).into_owned(),
            plan_json: serde_json::to_string(&plan).map_err(|e| Status::internal(e.to_string()))?,
            priority: 0,
            class,
        };
        // Checks against what is on hand, then the submission, one at a time on this node and,
        // through the store's admission hold, across the nodes sharing its database: two runs
        // arriving together cannot both take the last of a container or of the stock.
        let _counted = ADMITTING.lock().await;
        let (store, site) = (self.store.clone(), self.site.clone());
        let (run, created) = blocking(move || crate::material::admit(store.as_ref(), &plan, &new, &site))
            .await?
            .map_err(Status::failed_precondition)?;
        tracing::info!(run = %run.id, tenant = %run.tenant_id, created, "run submitted");
        if created {
            crate::metrics::with(|m| m.runs_submitted.inc());
        }
        Ok(Response::new(pb::SubmitResponse { run: Some(self.run_info(run).await?), created, diagnostics: diags }))
    }

    async fn get(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let who = self.caller(&req).await?;
        let (store, id) = (self.store.clone(), req.into_inner().run_id);
        let run = blocking(move || store.run(Self::scope(&who).as_deref(), &id)).await?;
        Ok(Response::new(self.run_info(run).await?))
    }

    async fn list(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        let states = r.states.iter().map(|s| RunState::parse(s).map_err(status)).collect::<Result<Vec<_>, _>>()?;
        let store = self.store.clone();
        let runs = blocking(move || store.runs(Self::scope(&who).as_deref(), &states)).await?;
        let (page, next_page_token) =
            crate::paging::after_key(runs, |x| (x.submitted_at, x.id.as_str()), r.page_size, &r.page_token)
                .map_err(Status::invalid_argument)?;
        let mut out = Vec::with_capacity(page.len());
        for x in page {
            out.push(self.run_info(x).await?);
        }
        Ok(Response::new(pb::ListRunsResponse { runs: out, next_page_token }))
    }

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        let hash = bearer_hash(&req)?;
        let who = signed_in(&self.store, hash.clone()).await?;
        let r = req.into_inner();
        let scope = Self::scope(&who);
        let (store, id, sc) = (self.store.clone(), r.run_id.clone(), scope.clone());
        blocking(move || store.run(sc.as_deref(), &id)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let store = self.store.clone();
        let mut written = store.written();
        tokio::spawn(async move {
            let mut after = r.after_seq;
            let mut checked = std::time::Instant::now();
            loop {
                // A token revoked (or expired) while watching ends the stream.
                if checked.elapsed() >= WATCH_TOKEN_CHECK {
                    if let Err(e) = signed_in(&store, hash.clone()).await {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    checked = std::time::Instant::now();
                }
                let (s, id, sc) = (store.clone(), r.run_id.clone(), scope.clone());
                let events = match blocking(move || s.events(sc.as_deref(), &id, after)).await {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for e in events {
                    after = e.seq;
                    let ev = run_event(e);
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                let (s, id, sc) = (store.clone(), r.run_id.clone(), scope.clone());
                match blocking(move || s.run(sc.as_deref(), &id)).await {
                    Ok(run) if run.state.is_final() => {
                        // Drain what was written with the final state, then end the stream.
                        let (s, id, sc) = (store.clone(), r.run_id.clone(), scope.clone());
                        if let Ok(rest) = blocking(move || s.events(sc.as_deref(), &id, after)).await {
                            for e in rest {
                                let ev = run_event(e);
                                if tx.send(Ok(ev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        return;
                    }
                    // Woken by this node's next write; another node's (a shared database) is
                    // seen within WATCH_OTHER_NODES.
                    Ok(_) => {
                        tokio::select! {
                            _ = written.changed() => {}
                            _ = tokio::time::sleep(WATCH_OTHER_NODES) => {}
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let who = self.caller(&req).await?;
        let (store, id) = (self.store.clone(), req.into_inner().run_id);
        let scope = Self::scope(&who);
        let run = blocking(move || {
            let run = store.run(scope.as_deref(), &id)?;
            let next = match run.state {
                RunState::Queued => RunState::Cancelled,
                RunState::Running | RunState::AwaitingRecovery => RunState::Cancelling,
                RunState::Cancelling => return Ok(run),
                s => return Err(StoreError::Invalid(format!("run {id} already {s}"))),
            };
            let reason = format!("cancelled by {}", who.role.as_str());
            store.set_run_state(&id, next, Some(&reason))?;
            store.run(None, &id)
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::InvalidArgument {
                Status::failed_precondition(s.message())
            } else {
                s
            }
        })?;
        Ok(Response::new(self.run_info(run).await?))
    }

    async fn results(&self, req: Request<pb::ResultsRequest>) -> Result<Response<pb::ResultsResponse>, Status> {
        let who = self.caller(&req).await?;
        let (store, id) = (self.store.clone(), req.into_inner().run_id);
        let scope = Self::scope(&who);
        let site = self.site.clone();
        let (rows, plan, origins) = blocking(move || {
            let rows = store.results(scope.as_deref(), &id)?;
            let run = store.run(scope.as_deref(), &id)?;
            // The plate map travels in the stored plan, under the tenant's own labware names.
            let plan: Option<protocols::plan::RunPlan> = serde_json::from_str(&run.plan_json).ok();
            // Where the wells read came from, when the run drew from the lab's containers.
            let origins = match &plan {
                Some(p) if !rows.is_empty() && p.labware.iter().any(|l| l.container.is_some()) => {
                    let attempts = store.attempts(&run.id)?;
                    let prefix = crate::store::run_prefix(&run.id);
                    let traced = crate::lineage::by_journal(p, &attempts, &prefix, &site, &labware::Library::shipped());
                    Some((traced.at_reads, store.containers(Some(&run.tenant_id))?))
                }
                _ => None,
            };
            Ok::<_, store::StoreError>((rows, plan, origins))
        })
        .await?;
        let origin = |task: i64, labware: &str, wells: &[String]| -> Vec<pb::WellOrigin> {
            let Some((at_reads, containers)) = &origins else { return Vec::new() };
            let Some(read) = at_reads.get(&(task, labware.to_string())) else { return Vec::new() };
            if read.is_empty() {
                return Vec::new();
            }
            wells
                .iter()
                .map(|w| {
                    let (samples, from) =
                        read.get(w).map(|o| crate::lineage::samples_and_wells(o, containers)).unwrap_or_default();
                    pb::WellOrigin { samples, from }
                })
                .collect()
        };
        let design = |labware: &str, wells: &[String]| -> Vec<pb::WellDesign> {
            let Some(map) = plan.as_ref().and_then(|p| p.labware.iter().find(|l| l.name == labware)).map(|l| &l.map)
            else {
                return Vec::new();
            };
            if map.is_empty() {
                return Vec::new();
            }
            wells
                .iter()
                .map(|w| match map.get(w) {
                    Some(d) => pb::WellDesign {
                        sample: d.sample.clone().unwrap_or_default(),
                        group: d.group.clone().unwrap_or_default(),
                        role: d.role.as_str().into(),
                        concentration: d.concentration,
                        concentration_unit: d.unit.clone().unwrap_or_default(),
                        replicate: d.replicate,
                    },
                    None => pb::WellDesign::default(),
                })
                .collect()
        };
        Ok(Response::new(pb::ResultsResponse {
            results: rows
                .into_iter()
                .map(|r| pb::Result {
                    design: design(&r.labware, &r.wells),
                    origins: origin(r.task_id, &r.labware, &r.wells),
                    id: r.id,
                    task: r.task_id,
                    labware: r.labware,
                    kind: r.kind,
                    wells: r.wells,
                    wavelengths_nm: r.wavelengths_nm,
                    values: r.values,
                    unit: r.unit,
                    read_at_ms: r.created_at,
                })
                .collect(),
        }))
    }
}
