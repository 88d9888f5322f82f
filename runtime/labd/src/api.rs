//! The gRPC API `labd serve` offers, one file per service: Protocols (validate, quote), Runs
//! (submit, get, list, watch, results, cancel), Admin (tenants, tokens, quotas, reservations,
//! usage) and Lab (instruments, maintenance, schedule, interventions). This file holds what they
//! share: sign-in, limits, and the compile and quote helpers. Every call is authenticated with
//! `authorization: Bearer <token>`; tokens are stored as SHA-256 hashes. A scientist sees only
//! their tenant: another tenant's run answers NOT_FOUND, like a run that does not exist.

mod admin_service;
mod inventory_service;
mod lab_service;
mod protocols_service;
mod quote_model;
mod runs_service;

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
pub fn new_token() -> Result<String, crate::secret::NoRandomness> {
    let bytes: [u8; 32] = crate::secret::random_bytes("a token")?;
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
    /// Who kits runs' material: where people do, quotes plan their kitting as the executor does.
    pub kitting: crate::executor::Kitting,
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
    let p = store::offload::call(store, move |s| s.principal_by_token_hash(&hash))
        .await
        .map_err(|_| Status::unauthenticated("unknown or revoked token"))?;
    if p.expires_at.is_some_and(|at| at <= store::now_ms()) {
        return Err(Status::unauthenticated("this token has expired; ask an admin for a new one"));
    }
    Ok(p)
}

/// How often a live `Watch` checks that its token still signs in.
const WATCH_TOKEN_CHECK: std::time::Duration = std::time::Duration::from_millis(500);
/// How often a `Watch` looks for events written by another node on a shared database (this
/// node's own writes wake it at once).
const WATCH_OTHER_NODES: std::time::Duration = std::time::Duration::from_millis(250);

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
    /// The containers a tenant's protocols may name (`container:`) are its own (a staff
    /// caller's: none).
    async fn compile(
        &self,
        who: &Principal,
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
        let held = match who.tenant_id.clone() {
            Some(tenant) if crate::held::names_a_container(source) => {
                let store = self.store.clone();
                blocking(move || store.containers(Some(&tenant))).await?
            }
            _ => Vec::new(),
        };
        let (name, source, site, library) =
            (name.to_string(), source.to_vec(), self.site.clone(), self.library.clone());
        tokio::task::spawn_blocking(move || {
            let inventory = crate::held::Held::of(held);
            protocols::compile_bytes_with(&name, source, format, &site, &library, &inventory)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))
    }

    /// Records an action done by hand in the audit trail. The action has happened: when the
    /// trail cannot take it the caller hears so (the error says the action stands), rather
    /// than a trail that silently lacks it.
    async fn record_audit(
        &self,
        who: &Principal,
        action: &str,
        subject: &str,
        reason: &str,
        detail: String,
    ) -> Result<(), Status> {
        let entry = crate::store::NewAudit {
            actor: who.id.clone(),
            action: action.into(),
            subject: subject.into(),
            reason: reason.into(),
            detail,
        };
        let store = self.store.clone();
        match blocking(move || store.record_audit(&entry)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(actor = %who.id, action, subject, error = %e.message(), "the audit trail did not take an action");
                Err(Status::unavailable(format!(
                    "{action} of {subject} was done, but the audit trail could not record it ({}); tell an admin",
                    e.message()
                )))
            }
        }
    }

    /// What tasks have really taken on this lab, to correct estimates by (`experience`).
    async fn experience(&self) -> Result<crate::experience::Experience, Status> {
        let store = self.store.clone();
        let samples = blocking(move || store.task_durations(crate::experience::RECENT)).await?;
        Ok(crate::experience::Experience::from_samples(&samples))
    }

    /// When a protocol submitted now would start and finish (device seconds from now), planned
    /// behind every run queued or under way, with estimates corrected by `experience`, and when
    /// it would finish on the empty lab. Nothing about those runs is returned.
    pub(crate) async fn earliest_completion(
        &self,
        who: &Principal,
        plan: protocols::plan::RunPlan,
        class: labware::ServiceClass,
        experience: crate::experience::Experience,
    ) -> Result<Earliest, Status> {
        use scheduler::lab::{replan::Planner, LabProblem};
        let (store, own, units) = (self.store.clone(), who.tenant_id.clone(), self.site.storage.clone());
        // Only a plan that names containers is read again for them.
        let probe = plan.labware.iter().any(|l| l.container.is_some()).then(|| plan.clone());
        let sold_with_turnaround = self.site.turnaround_target(class).is_some();
        let (queue, ready_s, retrieved) = blocking(move || {
            // Each run's history says what it has done, and what it was promised: a class sold
            // with a turnaround is placed as the executor places an arrival, where it breaks no
            // promise in force.
            let mut queue = Vec::new();
            for run in store
                .runs(None, &[RunState::Queued, RunState::Running, RunState::AwaitingRecovery, RunState::Cancelling])?
            {
                let events = store.events(None, &run.id, 0)?;
                let promised_ms = crate::service::first_promise_ms(&events);
                let progress = crate::executor::resume::progress(&events);
                queue.push(quote_model::Queued { run, promised_ms, progress });
            }
            // Frozen material it names thaws before its first step, as the executor plans it;
            // what an arm brings out of an automated store no technician fetches.
            let (ready_s, retrieved) = match (own, probe) {
                (Some(t), Some(p)) => {
                    let held = store.containers(Some(&t))?;
                    (crate::kitting::thaw_s(&p, &held, &units), crate::kitting::retrieved(&p, &held, &units))
                }
                _ => (0.0, 0),
            };
            Ok::<_, store::StoreError>((queue, ready_s, retrieved))
        })
        .await?;
        let (site, tenant) = (self.site.clone(), who.tenant_id.clone().unwrap_or_else(|| "quote".into()));
        let (kitting, scale, now_ms) = (self.kitting, self.time_scale, store::now_ms());
        tokio::task::spawn_blocking(move || {
            let mut p = LabProblem::from_site(&site).map_err(|e| Status::internal(e.0))?;
            // Per run of the model, its promise in device seconds from now, if it has one.
            let mut promises: Vec<Option<f64>> = Vec::new();
            for q in &queue {
                promises.extend(quote_model::add_queued(&mut p, q, &experience, now_ms, scale));
            }
            // Where people kit, kitting and the thaw are the plan's first tasks, as the executor
            // stores them; else the thaw delays the first task.
            let (plan, ready_s) = if kitting == crate::executor::Kitting::Technicians {
                (crate::kitting_tasks::with_kitting(&plan, ready_s, retrieved), 0.0)
            } else {
                (plan, ready_s)
            };
            let plan = experience.corrected(&plan.scoped("quote"));
            let mut run = scheduler::lab::Run::from_plan("quote", &tenant, 1.0, ready_s, &plan);
            run.class = class;
            if sold_with_turnaround {
                return arriving_as_the_executor_places_it(p, run, &promises);
            }
            let me = p.add_run(run).map_err(cannot_run)?;
            // Planned as the executor would: classes in their order (priority, standard, spot).
            let planner = Planner::new(p, QUOTE_BUDGET, 7).map_err(|_| no_plan())?;
            Ok(Earliest::of(&planner.schedule, me, None))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// A priority run's turnaround target (`[prices.turnaround]`) against when it would finish
    /// if submitted now: `Some((target, earliest))` in device seconds from now, `None` when the
    /// class is sold with none.
    pub(crate) fn turnaround_target(&self, class: labware::ServiceClass, e: &Earliest) -> Option<(f64, f64)> {
        let factor = self.site.turnaround_target(class)?;
        Some((factor * e.alone_s?, e.end_s))
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

    /// The name of a run's tenant (empty when it cannot be read: it only labels the answer).
    async fn tenant_of_run(&self, run_id: &str) -> String {
        let (store, id) = (self.store.clone(), run_id.to_string());
        blocking(move || store.run(None, &id).and_then(|r| store.tenant(&r.tenant_id)))
            .await
            .map(|t| t.name)
            .unwrap_or_default()
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
            service_class: run.class.as_str().into(),
        })
    }
}

/// When a protocol submitted now would start and finish, and (for a class sold with a
/// turnaround) finish on the empty lab: device seconds from now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Earliest {
    pub start_s: f64,
    pub end_s: f64,
    pub alone_s: Option<f64>,
}

impl Earliest {
    /// Run `me` of `s`.
    fn of(s: &scheduler::lab::solve::LabSchedule, me: usize, alone_s: Option<f64>) -> Earliest {
        let start = s.tasks[me].iter().map(|t| t.start).fold(f64::INFINITY, f64::min);
        Earliest { start_s: if start.is_finite() { start } else { 0.0 }, end_s: s.completion(me), alone_s }
    }
}

/// What a quote spends planning.
const QUOTE_BUDGET: scheduler::lab::solve::LabBudget =
    scheduler::lab::solve::LabBudget { time: Some(std::time::Duration::from_millis(100)), iterations: None };

fn no_plan() -> Status {
    Status::internal("the scheduler found no plan")
}

fn cannot_run(e: scheduler::lab::ModelError) -> Status {
    Status::failed_precondition(format!("this lab cannot run it: {}", e.0))
}

/// Where a run sold with a turnaround would go if it arrived now, as the executor places an
/// arrival (`Planner::handle`): the runs queued or under way planned first (from now, what they
/// have done done and their steps under way where they are: `quote_model`), each promised the
/// later of its promise in force (`promises`, device seconds from now) and where this plan ends
/// it, then the run arriving where it breaks none of them.
fn arriving_as_the_executor_places_it(
    p: scheduler::lab::LabProblem,
    run: scheduler::lab::Run,
    promises: &[Option<f64>],
) -> Result<Earliest, Status> {
    use scheduler::lab::{replan::Event, replan::Planner, solve::LabBudget};
    let alone_s = Some(run.release + p.empty_lab().turnaround_alone(&run));
    if p.runs.is_empty() {
        let mut alone = p;
        let me = alone.add_run(run).map_err(cannot_run)?;
        let planner = Planner::new(alone, QUOTE_BUDGET, 7).map_err(|_| no_plan())?;
        return Ok(Earliest::of(&planner.schedule, me, alone_s));
    }
    let mut planner = Planner::new(p, QUOTE_BUDGET, 7).map_err(|_| no_plan())?;
    let ends = planner.schedule.completions();
    for (i, due) in promises.iter().enumerate() {
        planner.set_promise(i, due.map(|d| d.max(ends[i])));
    }
    planner
        .handle_within(0.0, Event::RunArrived(run), LabBudget { time: None, iterations: Some(0) })
        .map_err(cannot_run)?;
    Ok(Earliest::of(&planner.schedule, planner.problem.runs.len() - 1, alone_s))
}
