//! The gRPC API `labd serve` offers: Protocols (validate, quote), Runs (submit, get, list,
//! watch, results) and Admin (tenants, tokens, usage). Every call is authenticated with
//! `authorization: Bearer <token>`; tokens are stored as SHA-256 hashes. A scientist sees only
//! their tenant: another tenant's run answers NOT_FOUND, like a run that does not exist.

use crate::store::{self, Principal, Role, RunState, Store, StoreError};
use protos::labwright::v1 as pb;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The largest protocol source Submit, Validate and Quote accept.
pub const MAX_SOURCE_BYTES: usize = 8 << 20;
/// The largest request message the server decodes (larger ones are refused by gRPC itself).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (256 bits, hex) with a readable prefix.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(format!("lw_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Everything the API handlers share.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<dyn Store>,
    /// Shared, not copied: every compile and quote reads them on a blocking thread.
    pub site: Arc<labware::Site>,
    pub library: Arc<labware::Library>,
    /// The connected instruments (for technicians' status views).
    pub lab: crate::lab::Connected,
    /// What the executor is doing (maintenance and down flags, the schedule).
    pub board: Option<Arc<crate::board::Board>>,
    /// Device time per wall time (to turn planned device seconds into clock times).
    pub time_scale: f64,
    /// The MQTT broker tenants connect to (host, port), as told to them with their credentials.
    pub mqtt_broker: Option<(String, u16)>,
    /// The embedded broker, if labd runs one: a token created or revoked here changes who may
    /// connect before the call returns.
    pub embedded_broker: Option<crate::telemetry::broker::Broker>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish()
    }
}

impl Api {
    /// Gives the embedded broker the store's MQTT identities now, so that a token's MQTT
    /// credentials work as soon as `CreateToken` answers (and a revoked one's stop).
    async fn refresh_mqtt_identities(&self) -> Result<(), Status> {
        if let Some(broker) = &self.embedded_broker {
            let store = self.store.clone();
            let ids = blocking(move || store.mqtt_identities()).await?;
            broker.set_identities(&ids);
        }
        Ok(())
    }
}

/// Limits of the free text the API takes besides the protocol (whose own text the compiler
/// limits, P0112): what one tenant writes must not swamp what others read.
pub const MAX_KEY_CHARS: usize = 200;
pub const MAX_FILE_NAME_CHARS: usize = 255;
pub const MAX_REASON_CHARS: usize = 500;

/// Compiles running at once across every caller.
const COMPILES_AT_ONCE: usize = 2;
static COMPILES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(COMPILES_AT_ONCE);

/// A protocol source over the limit, for every call that takes one.
fn too_large(bytes: usize) -> Status {
    Status::invalid_argument(format!(
        "the protocol is {:.1} MiB; the limit is {} MiB (put data in files the protocol names, not in the protocol)",
        bytes as f64 / (1 << 20) as f64,
        MAX_SOURCE_BYTES >> 20
    ))
}

/// The hash of the request's bearer token.
fn bearer_hash<T>(req: &Request<T>) -> Result<String, Status> {
    let header = req.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("no token: send `authorization: Bearer <token>` (labctl: --token or LABWRIGHT_TOKEN)")
    })?;
    let text = header.to_str().map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token =
        text.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("write the header as `Bearer <token>`"))?;
    Ok(token_hash(token.trim()))
}

/// Who holds the token with this hash, if it is neither revoked nor expired.
async fn signed_in(store: &Arc<dyn Store>, hash: String) -> Result<Principal, Status> {
    let store = store.clone();
    let p = tokio::task::spawn_blocking(move || store.principal_by_token_hash(&hash))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|_| Status::unauthenticated("unknown or revoked token"))?;
    if p.expires_at.is_some_and(|at| at <= store::now_ms()) {
        return Err(Status::unauthenticated("this token has expired; ask an admin for a new one"));
    }
    Ok(p)
}

/// How often a live `Watch` checks that its token still signs in.
const WATCH_TOKEN_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(w) => Status::not_found(format!("{w} not found")),
        StoreError::Conflict(w) => Status::already_exists(w),
        StoreError::Invalid(w) => Status::invalid_argument(w),
        StoreError::Backend(w) => Status::internal(format!("storage failed: {w}")),
        StoreError::Fenced(w) => Status::unavailable(w),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}

impl Api {
    /// On a site of work cells, a run must fit in one cell (its plates stay with one arm):
    /// refused at submission, saying what each cell lacks, rather than queued for ever.
    fn some_cell_can_run(&self, plan: &protocols::plan::RunPlan) -> Result<(), Status> {
        if self.site.cells.is_empty() {
            return Ok(());
        }
        let mut lacks = Vec::new();
        for cell in self.site.cell_ids() {
            let part = self.site.cell(&cell).map_err(|e| Status::internal(e.to_string()))?;
            let model = scheduler::lab::Run::from_plan("check", "check", 1.0, 0.0, plan);
            match scheduler::lab::LabProblem::from_site(&part).and_then(|mut p| p.add_run(model)) {
                Ok(_) => return Ok(()),
                Err(e) => lacks.push(format!("cell {cell}: {}", e.0)),
            }
        }
        Err(Status::failed_precondition(format!(
            "no single work cell of this lab can run it ({}); split the protocol or ask the lab which cell has what",
            lacks.join("; ")
        )))
    }

    /// The caller, from the bearer token.
    async fn caller<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        signed_in(&self.store, bearer_hash(req)?).await
    }

    /// The caller's role and, for a scientist, their tenant's name (the console's login).
    pub async fn whoami<T>(&self, req: &Request<T>) -> Result<(&'static str, Option<String>), Status> {
        let p = self.caller(req).await?;
        let tenant = match p.tenant_id.clone() {
            Some(id) => {
                let store = self.store.clone();
                Some(blocking(move || store.tenant(&id)).await?.name)
            }
            None => None,
        };
        Ok((p.role.as_str(), tenant))
    }

    fn staff(p: &Principal, what: &str) -> Result<(), Status> {
        if p.role == Role::Scientist {
            Err(Status::permission_denied(format!("{what} is for technicians and admins")))
        } else {
            Ok(())
        }
    }

    fn admin(p: &Principal) -> Result<(), Status> {
        if p.role == Role::Admin {
            Ok(())
        } else {
            Err(Status::permission_denied("only an admin may do this"))
        }
    }

    /// The tenant a principal is limited to (`None`: staff see every tenant).
    fn scope(p: &Principal) -> Option<String> {
        match p.role {
            Role::Scientist => p.tenant_id.clone(),
            _ => None,
        }
    }

    /// Compiles a request's source; an unknown format value is an error, not a silent default.
    /// Compiles on a blocking thread, at most `COMPILES_AT_ONCE` at a time (the rest wait their
    /// turn), a source over `MAX_SOURCE_BYTES` refused first: one tenant's large protocols cannot
    /// take the daemon's memory or cores from everyone else.
    async fn compile(
        &self,
        name: &str,
        source: &[u8],
        format: i32,
    ) -> Result<(protocols::SourceFile, protocols::Compilation), Status> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(too_large(source.len()));
        }
        let format = match pb::SourceFormat::try_from(format) {
            Ok(pb::SourceFormat::Unspecified) => protocols::Format::Auto,
            Ok(pb::SourceFormat::Labwright) => protocols::Format::Labwright,
            Ok(pb::SourceFormat::Autoprotocol) => protocols::Format::Autoprotocol,
            Ok(pb::SourceFormat::Opentrons) => protocols::Format::Opentrons,
            Err(_) => return Err(Status::invalid_argument(format!("format {format} is not a SourceFormat (0 to 3)"))),
        };
        let _turn = COMPILES.acquire().await.map_err(|e| Status::internal(e.to_string()))?;
        let (name, source, site, library) =
            (name.to_string(), source.to_vec(), self.site.clone(), self.library.clone());
        tokio::task::spawn_blocking(move || protocols::compile_bytes(&name, source, format, &site, &library))
            .await
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// When a protocol submitted now would start and finish (device seconds from now), planned
    /// behind every run queued or under way. Nothing about those runs is returned.
    async fn earliest_completion(&self, who: &Principal, plan: protocols::plan::RunPlan) -> Result<(f64, f64), Status> {
        use scheduler::lab::{solve, LabProblem};
        let store = self.store.clone();
        let queue =
            blocking(move || store.runs(None, &[RunState::Queued, RunState::Running, RunState::Cancelling])).await?;
        let (site, tenant) = (self.site.clone(), who.tenant_id.clone().unwrap_or_else(|| "quote".into()));
        tokio::task::spawn_blocking(move || {
            let mut p = LabProblem::from_site(&site).map_err(|e| Status::internal(e.0))?;
            for r in &queue {
                let Ok(rp) = serde_json::from_str::<protocols::plan::RunPlan>(&r.plan_json) else { continue };
                let short = r.id.trim_start_matches("run_").chars().take(8).collect::<String>();
                let rp = rp.scoped(&short);
                // A run that cannot be modelled is left out of the estimate, which errs early.
                if p.add_plan(&r.id, &r.tenant_id, 1.0, 0.0, &rp).is_err() {
                    continue;
                }
            }
            let plan = plan.scoped("quote");
            let me = p
                .add_plan("quote", &tenant, 1.0, 0.0, &plan)
                .map_err(|e| Status::failed_precondition(format!("this lab cannot run it: {}", e.0)))?;
            let budget = solve::LabBudget { time: Some(std::time::Duration::from_millis(100)), iterations: None };
            let out = solve::solve(&p, budget, 7).ok_or_else(|| Status::internal("the scheduler found no plan"))?;
            let start = out.schedule.tasks[me].iter().map(|t| t.start).fold(f64::INFINITY, f64::min);
            Ok((if start.is_finite() { start } else { 0.0 }, out.schedule.completion(me)))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// An instrument as technicians see it: maintenance and down flags first, then its answer.
    async fn instrument_info(
        &self,
        inst: &labware::site::Instrument,
        d: &dyn devices::Instrument,
    ) -> pb::InstrumentInfo {
        let flag = self.board.as_ref().and_then(|b| b.unavailable(&inst.id));
        let run_id = self.board.as_ref().and_then(|b| b.busy_with(&inst.id)).unwrap_or_default();
        let st = tokio::time::timeout(std::time::Duration::from_secs(2), d.status()).await;
        let (mut state, t, mut detail) = match st {
            Ok(Ok(s)) => {
                let state = match s.state {
                    devices::State::Idle => "idle".to_string(),
                    devices::State::Busy => "busy".to_string(),
                    devices::State::Fault(f) => format!("fault: {f}"),
                    devices::State::Offline => "offline".to_string(),
                };
                (state, s.temperature_c.unwrap_or(f64::NAN), s.detail)
            }
            Ok(Err(e)) => ("offline".to_string(), f64::NAN, e.to_string()),
            Err(_) => ("busy".to_string(), f64::NAN, "no status reply within 2 s".to_string()),
        };
        if let Some(f) = flag {
            let (kind, why) = f.split_once(": ").unwrap_or((f.as_str(), ""));
            state = kind.to_string();
            detail = why.to_string();
        } else if !run_id.is_empty() && state == "idle" {
            state = "busy".into();
        }
        pb::InstrumentInfo {
            id: inst.id.clone(),
            class: inst.class.as_str().into(),
            state,
            temperature_c: t,
            detail,
            run_id,
        }
    }

    async fn run_info(&self, run: store::Run) -> Result<pb::RunInfo, Status> {
        let store = self.store.clone();
        let tid = run.tenant_id.clone();
        let tenant = blocking(move || store.tenant(&tid)).await.map(|t| t.name).unwrap_or_default();
        Ok(pb::RunInfo {
            id: run.id,
            tenant,
            name: run.name,
            state: run.state.as_str().into(),
            reason: run.reason.unwrap_or_default(),
            submitted_at_ms: run.submitted_at,
            started_at_ms: run.started_at.unwrap_or(0),
            finished_at_ms: run.finished_at.unwrap_or(0),
        })
    }
}

fn diagnostics(src: &protocols::SourceFile, c: &protocols::Compilation) -> Vec<pb::Diagnostic> {
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
        self.caller(&req).await?;
        let r = req.into_inner();
        let (src, c) = self.compile(&r.file_name, &r.source, r.format).await?;
        Ok(Response::new(validation(&src, &c)))
    }

    async fn quote(&self, req: Request<pb::ValidateRequest>) -> Result<Response<pb::QuoteResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        let (src, c) = self.compile(&r.file_name, &r.source, r.format).await?;
        let mut out = pb::QuoteResponse { validation: Some(validation(&src, &c)), ..Default::default() };
        if let Some(q) = &c.quote {
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
        }
        let ok = !c.has_errors();
        if let Some(plan) = c.plan.filter(|_| ok) {
            let (start, s) = self.earliest_completion(&who, plan).await?;
            let at = |device_s: f64| store::now_ms() + (device_s * self.time_scale * 1000.0) as i64;
            out.estimated_start_s = start;
            out.estimated_start_at_ms = at(start);
            out.earliest_completion_s = s;
            out.earliest_completion_at_ms = at(s);
        }
        Ok(Response::new(out))
    }
}

fn run_event(e: store::Event) -> pb::RunEvent {
    pb::RunEvent { run_id: e.run_id, seq: e.seq, at_ms: e.at, kind: e.kind, payload_json: e.payload_json }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

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
        let (src, c) = self.compile(&r.file_name, &r.source, r.format).await?;
        let diags = diagnostics(&src, &c);
        let Some(plan) = c.plan.filter(|_| !c.diagnostics.iter().any(|d| d.is_error())) else {
            return Ok(Response::new(pb::SubmitResponse { run: None, created: false, diagnostics: diags }));
        };
        self.some_cell_can_run(&plan)?;
        let new = store::NewRun {
            tenant_id: tenant,
            idempotency_key: r.idempotency_key,
            name: plan.protocol.clone(),
            source: String::from_utf8_lossy(&r.source).into_owned(),
            plan_json: serde_json::to_string(&plan).map_err(|e| Status::internal(e.to_string()))?,
            priority: 0,
        };
        let store = self.store.clone();
        let (run, created) = blocking(move || store.submit_run(&new)).await?;
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
                    Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
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
                RunState::Running => RunState::Cancelling,
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
        let rows = blocking(move || store.results(Self::scope(&who).as_deref(), &id)).await?;
        Ok(Response::new(pb::ResultsResponse {
            results: rows
                .into_iter()
                .map(|r| pb::Result {
                    id: r.id,
                    task: r.task_id,
                    labware: r.labware,
                    kind: r.kind,
                    wells: r.wells,
                    wavelengths_nm: r.wavelengths_nm,
                    values: r.values,
                    unit: r.unit,
                })
                .collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn create_tenant(&self, req: Request<pb::CreateTenantRequest>) -> Result<Response<pb::TenantInfo>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let weight = if r.weight == 0.0 { 1.0 } else { r.weight };
        let store = self.store.clone();
        let t = blocking(move || store.create_tenant(&r.name, weight)).await?;
        Ok(Response::new(tenant_info(t)))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let store = self.store.clone();
        let ts = blocking(move || store.tenants()).await?;
        Ok(Response::new(pb::ListTenantsResponse { tenants: ts.into_iter().map(tenant_info).collect() }))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let role = Role::parse(&r.role).map_err(status)?;
        let tenant = if r.tenant.is_empty() {
            None
        } else {
            let (store, name) = (self.store.clone(), r.tenant.clone());
            Some(blocking(move || store.tenant_by_name(&name)).await?)
        };
        if r.ttl_s < 0 {
            return Err(Status::invalid_argument(
                "ttl_s must be positive (seconds), or 0 for a token that does not expire",
            ));
        }
        let expires = (r.ttl_s > 0).then(|| store::now_ms().saturating_add(r.ttl_s.saturating_mul(1000)));
        let token = new_token().map_err(Status::internal)?;
        let mqtt_user = format!("lw-{}", &token_hash(&token)[..16]);
        let mqtt_password = crate::telemetry::mosquitto::new_password().map_err(Status::internal)?;
        let mqtt_hash = crate::telemetry::mosquitto::password_hash(&mqtt_password).map_err(Status::internal)?;
        let (store, hash, tid) = (self.store.clone(), token_hash(&token), tenant.as_ref().map(|t| t.id.clone()));
        let (user, tid2) = (mqtt_user.clone(), tid.clone());
        let p = blocking(move || {
            let p = store.create_principal(tid.as_deref(), role, &hash, Some((&user, &mqtt_hash)))?;
            if let Some(at) = expires {
                store.set_principal_expiry(&p.id, at)?;
            }
            Ok(p)
        })
        .await?;
        self.refresh_mqtt_identities().await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            principal_id: p.id,
            role: role.as_str().into(),
            tenant: r.tenant,
            expires_at_ms: expires.unwrap_or(0),
            mqtt_topics: crate::telemetry::MqttIdentity {
                username: mqtt_user.clone(),
                password_hash: String::new(),
                role,
                tenant_id: tid2,
            }
            .reads()
            .join(" "),
            mqtt_username: mqtt_user,
            mqtt_password,
            mqtt_host: self.mqtt_broker.as_ref().map(|b| b.0.clone()).unwrap_or_default(),
            mqtt_port: self.mqtt_broker.as_ref().map_or(0, |b| u32::from(b.1)),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let (store, id) = (self.store.clone(), req.into_inner().principal_id);
        blocking(move || store.revoke_principal(&id)).await?;
        self.refresh_mqtt_identities().await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn set_quotas(&self, req: Request<pb::SetQuotasRequest>) -> Result<Response<pb::TenantInfo>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        if r.max_concurrent_runs < 0 || !(r.device_hours_per_month >= 0.0 && r.device_hours_per_month.is_finite()) {
            return Err(Status::invalid_argument("quotas are 0 (no limit) or positive"));
        }
        let store = self.store.clone();
        let t = blocking(move || {
            let t = store.tenant_by_name(&r.tenant)?;
            let runs = (r.max_concurrent_runs > 0).then_some(r.max_concurrent_runs);
            let hours = (r.device_hours_per_month > 0.0).then_some(r.device_hours_per_month);
            store.set_quotas(&t.id, runs, hours, r.priority)?;
            store.tenant(&t.id)
        })
        .await?;
        Ok(Response::new(tenant_info(t)))
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> Result<Response<pb::ReservationInfo>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let known = self.site.instruments.iter().any(|i| i.id == r.instrument || i.class.as_str() == r.instrument);
        if !known {
            return Err(Status::not_found(format!(
                "no instrument or instrument class `{}` at this site",
                r.instrument
            )));
        }
        if r.ends_at_ms <= r.starts_at_ms {
            return Err(Status::invalid_argument("a reservation must end after it starts (ends_at_ms > starts_at_ms)"));
        }
        let store = self.store.clone();
        let row = blocking(move || {
            let t = store.tenant_by_name(&r.tenant)?;
            let row = store::Reservation {
                id: store::new_id("rsv"),
                tenant_id: t.id,
                instrument_class: r.instrument,
                starts_at: r.starts_at_ms,
                ends_at: r.ends_at_ms,
            };
            store.add_reservation(&row)?;
            Ok((row, t.name))
        })
        .await?;
        Ok(Response::new(reservation_info(row.0, row.1)))
    }

    async fn reservations(
        &self,
        req: Request<pb::ReservationsRequest>,
    ) -> Result<Response<pb::ReservationsResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let (page_size, page_token) = (r.page_size, r.page_token.clone());
        let store = self.store.clone();
        let (rows, tenants) = blocking(move || {
            let tid = if r.tenant.is_empty() { None } else { Some(store.tenant_by_name(&r.tenant)?.id) };
            Ok((store.reservations(tid.as_deref())?, store.tenants()?))
        })
        .await?;
        let name = |id: &str| tenants.iter().find(|t| t.id == id).map_or(String::new(), |t| t.name.clone());
        let (rows, next_page_token) =
            crate::paging::after_key(rows, |x| (x.starts_at, x.id.as_str()), page_size, &page_token)
                .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::ReservationsResponse {
            reservations: rows
                .into_iter()
                .map(|x| {
                    let n = name(&x.tenant_id);
                    reservation_info(x, n)
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        Self::admin(&self.caller(&req).await?)?;
        let r = req.into_inner();
        let store = self.store.clone();
        let (lines, tenants) = blocking(move || {
            let tid = if r.tenant.is_empty() { None } else { Some(store.tenant_by_name(&r.tenant)?.id) };
            Ok((store.usage(tid.as_deref(), r.since_ms)?, store.tenants()?))
        })
        .await?;
        let name = |id: &str| tenants.iter().find(|t| t.id == id).map_or(id.to_string(), |t| t.name.clone());
        Ok(Response::new(pb::UsageResponse {
            lines: lines
                .into_iter()
                .map(|u| pb::UsageLine {
                    tenant: name(&u.tenant_id),
                    instrument_class: u.instrument_class,
                    device_hours: u.device_seconds / 3600.0,
                })
                .collect(),
        }))
    }
}

fn reservation_info(r: store::Reservation, tenant: String) -> pb::ReservationInfo {
    pb::ReservationInfo {
        id: r.id,
        tenant,
        instrument: r.instrument_class,
        starts_at_ms: r.starts_at,
        ends_at_ms: r.ends_at,
    }
}

fn tenant_info(t: store::Tenant) -> pb::TenantInfo {
    pb::TenantInfo {
        id: t.id,
        name: t.name,
        weight: t.weight,
        max_concurrent_runs: t.max_concurrent_runs.unwrap_or(0),
        device_hours_per_month: t.device_hours_per_month.unwrap_or(0.0),
        priority: t.priority,
    }
}

fn intervention(i: store::Intervention) -> pb::InterventionInfo {
    pb::InterventionInfo {
        id: i.id,
        run_id: i.run_id,
        instrument: i.instrument.unwrap_or_default(),
        what: i.what,
        todo: i.todo,
        state: i.state,
        created_at_ms: i.created_at,
    }
}

#[tonic::async_trait]
impl pb::lab_server::Lab for Api {
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
        Ok(Response::new(pb::InstrumentsResponse { instruments: out }))
    }

    async fn interventions(
        &self,
        req: Request<pb::InterventionsRequest>,
    ) -> Result<Response<pb::InterventionsResponse>, Status> {
        let who = self.caller(&req).await?;
        let r = req.into_inner();
        let all = r.include_resolved;
        let store = self.store.clone();
        let list = blocking(move || store.interventions(Self::scope(&who).as_deref(), !all)).await?;
        let (page, next_page_token) =
            crate::paging::after_key(list, |i| (i.created_at, i.id.as_str()), r.page_size, &r.page_token)
                .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::InterventionsResponse {
            interventions: page.into_iter().map(intervention).collect(),
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
        let store = self.store.clone();
        let i = blocking(move || store.resolve_intervention(&r.id, &r.resolution, &who.id)).await?;
        Ok(Response::new(intervention(i)))
    }
}
