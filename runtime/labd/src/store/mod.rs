//! The durable store: tenants and principals, runs and their plans, tasks, command attempts
//! (intent before actuation, outcome after), run events with a gapless per-run sequence, results,
//! the telemetry outbox, interventions, reservations and the usage ledger.
//!
//! [`Store`] is the contract; [`sqlite::SqliteStore`] the default backend (WAL,
//! `synchronous=FULL`). Every state change that others must hear about writes its event and its
//! outbox row in the same transaction. [`conformance`] is the suite every backend must pass.
//! The schema lives in `runtime/labd/migrations/*.sql`, portable SQL shared by all backends.

mod checkpointer;
pub mod conformance;
mod group;
pub mod offload;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::fmt;

/// Migrations, in order: (version, SQL).
pub const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_maintenance_expiry.sql")),
    (3, include_str!("../../migrations/0003_cells.sql")),
    (4, include_str!("../../migrations/0004_interventions_close.sql")),
    (5, include_str!("../../migrations/0005_containers.sql")),
    (6, include_str!("../../migrations/0006_stock.sql")),
    (7, include_str!("../../migrations/0007_container_locations.sql")),
    (8, include_str!("../../migrations/0008_kitting.sql")),
    (9, include_str!("../../migrations/0009_task_durations.sql")),
    (10, include_str!("../../migrations/0010_service_class.sql")),
    (11, include_str!("../../migrations/0011_audit.sql")),
    (12, include_str!("../../migrations/0012_container_sources.sql")),
    (13, include_str!("../../migrations/0013_pick_volumes.sql")),
    (14, include_str!("../../migrations/0014_audit_order.sql")),
    (15, include_str!("../../migrations/0015_shipments.sql")),
    (16, include_str!("../../migrations/0016_container_slots.sql")),
];

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The prefix a run's labware and liquid names carry on the instruments (`<prefix>.<name>`,
/// see `RunPlan::scoped`): the first 8 characters of its id after `run_`.
pub fn run_prefix(run_id: &str) -> String {
    run_id.trim_start_matches("run_").chars().take(8).collect()
}

/// A volume in µL as people write it (`12.5`, `100`).
pub fn trim_ul(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A fresh identifier with a readable prefix (`run_…`, `ten_…`).
pub fn new_id(prefix: &str) -> String {
    // 80 bits from the operating system's random source: ids are not guessable. Should the OS
    // have none to give (it always has on Linux), a process-local fallback keeps ids unique.
    let mut bytes = [0u8; 10];
    if getrandom::fill(&mut bytes).is_err() {
        let u = devices::sila::uuid_v4().replace('-', "");
        return format!("{prefix}_{}", &u[..20]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}_{hex}")
}

/// See [`Store::hold_admission`]: whatever releases the hold runs when this is dropped.
#[derive(Default)]
pub struct AdmissionHold<'a> {
    release: Option<Box<dyn FnOnce() + Send + 'a>>,
}

impl<'a> AdmissionHold<'a> {
    /// A hold that `release` lets go of.
    pub fn new(release: impl FnOnce() + Send + 'a) -> AdmissionHold<'a> {
        AdmissionHold { release: Some(Box::new(release)) }
    }
}

impl Drop for AdmissionHold<'_> {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for AdmissionHold<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.release.is_some() { "held" } else { "nothing to hold" })
    }
}

/// Store failures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("storage failed: {0}")]
    Backend(String),
    /// A write through a fenced store after its lease ran out or was taken over.
    #[error("refused: {0}")]
    Fenced(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub use crate::role::Role;
pub use sql::draw_soonest_first;

impl From<crate::role::UnknownRole> for StoreError {
    fn from(e: crate::role::UnknownRole) -> Self {
        StoreError::Invalid(e.to_string())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub weight: f64,
    pub priority: i64,
    pub max_concurrent_runs: Option<i64>,
    pub device_hours_per_month: Option<f64>,
    pub created_at: Millis,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub id: String,
    pub tenant_id: Option<String>,
    pub role: Role,
    pub mqtt_username: Option<String>,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    /// After this the token no longer signs in.
    pub expires_at: Option<Millis>,
}

/// Run life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Queued,
    Running,
    /// Running, but held until a person decides on a step an emergency stop or an instrument
    /// left in doubt (Opentrons' `awaiting-recovery`); back to running once they have.
    AwaitingRecovery,
    Succeeded,
    Failed,
    Cancelling,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::AwaitingRecovery => "awaiting_recovery",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelling => "cancelling",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<RunState> {
        Ok(match s {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "awaiting_recovery" => RunState::AwaitingRecovery,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "cancelling" => RunState::Cancelling,
            "cancelled" => RunState::Cancelled,
            other => return Err(StoreError::Backend(format!("unknown run state `{other}` in the store"))),
        })
    }

    /// Final states never change again.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a tenant submits.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub tenant_id: String,
    pub idempotency_key: String,
    pub name: String,
    pub source: String,
    pub plan_json: String,
    pub priority: i64,
    /// What the tenant bought: how the run is planned and billed.
    pub class: labware::ServiceClass,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub tenant_id: String,
    pub idempotency_key: String,
    pub name: String,
    pub source: String,
    pub plan_json: String,
    pub state: RunState,
    pub reason: Option<String>,
    pub priority: i64,
    pub class: labware::ServiceClass,
    pub submitted_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// The work cell that claimed it (several nodes); `None` while unclaimed or on one node.
    pub cell: Option<String>,
}

/// A node's hold on a work cell, valid until `expires_at` by the database's clock. `epoch`
/// grows with every new holder: it is the fencing token.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub cell: String,
    pub holder: String,
    pub epoch: i64,
    pub expires_at: Millis,
}

/// One entry of a run's event log; `seq` is 1, 2, 3, … without gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub run_id: String,
    pub seq: i64,
    pub at: Millis,
    pub kind: String,
    pub payload_json: String,
}

/// A command about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    pub run_id: String,
    pub task_id: i64,
    pub command_index: i64,
    pub instrument: String,
    pub op_json: String,
    pub repeatable: bool,
}

/// Where a discarded container is: it keeps its history, and no protocol can name it again.
pub const DISCARDED: &str = "discarded";

/// What one well of a container holds of one liquid.
#[derive(Debug, Clone, PartialEq)]
pub struct WellContent {
    pub well: String,
    /// The tenant's name for what is in the well (`S-014`).
    pub sample: String,
    pub liquid: String,
    pub volume_ul: f64,
}

/// Where one well of a container a run made got its contents from: a well of another of the
/// tenant's containers (lineage; `crate::lineage`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WellSource {
    pub well: String,
    pub from_container: String,
    pub from_well: String,
}

/// A container to be received (from a checked manifest) or made by a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NewContainer {
    pub barcode: String,
    /// Its labware type (a load name of the library).
    pub load_name: String,
    pub wells: Vec<WellContent>,
    /// Of a container a run made, where its wells' contents came from (empty when received).
    pub sources: Vec<WellSource>,
}

/// A shipment a tenant declared: its manifest, waiting to be received at the bench.
#[derive(Debug, Clone, PartialEq)]
pub struct Shipment {
    pub id: String,
    pub tenant_id: String,
    pub declared_at: Millis,
    pub declared_by: String,
    /// The manifest as declared (CSV).
    pub manifest: String,
    /// Its containers' barcodes, in the manifest's order.
    pub barcodes: Vec<String>,
    /// When and by whom it was received; `None` while it is on its way.
    pub received: Option<(Millis, String)>,
}

/// A container the lab holds for a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    pub tenant_id: String,
    pub barcode: String,
    pub load_name: String,
    /// Where it is: a storage unit, an instrument's nest, a bench.
    pub location: String,
    /// Its position there (from 1): the lowest free one when it was put there; `None` once
    /// discarded, and for containers stored before positions were kept.
    pub slot: Option<i64>,
    pub created_at: Millis,
    /// By well, then liquid.
    pub wells: Vec<WellContent>,
    /// Where its wells' contents came from, by well (a container a run made; else empty).
    pub sources: Vec<WellSource>,
}

/// One item of a run's pick list: what a technician fetches before the run's first step, from
/// where, to where, and the barcode that confirms it.
#[derive(Debug, Clone, PartialEq)]
pub struct PickItem {
    pub run_id: String,
    /// Its place in the list, from 0.
    pub n: i64,
    /// `container` (from storage), `labware` (new, labelled for the run) or `reagent` (a lot).
    pub kind: String,
    /// What to fetch, in words (the run's name for it, its type, the volume to pour).
    pub what: String,
    pub from: String,
    pub to: String,
    /// The barcode to scan: the container's, the label printed for new labware, the lot's.
    pub expected: String,
    /// Minutes to thaw before use (0 when it is not frozen).
    pub thaw_min: i64,
    /// µL of a reagent lot it pours (0 for an item that pours nothing).
    pub volume_ul: f64,
    /// Who scanned it, when (`None` until then).
    pub confirmed_by: Option<String>,
    pub confirmed_at: Option<Millis>,
}

/// A lot of a reagent the lab stocks.
#[derive(Debug, Clone, PartialEq)]
pub struct ReagentLot {
    pub reagent: String,
    pub lot: String,
    /// `YYYY-MM-DD`: usable through that day.
    pub expires_on: String,
    pub volume_ul: f64,
    pub received_at: Millis,
}

/// A consumable the lab counts: how many are on hand, and the count at which to reorder.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumableStock {
    /// A labware load name.
    pub load_name: String,
    pub on_hand: i64,
    pub reorder_at: i64,
}

/// What one run used up of one item (a consumable `each`, a reagent in `mL`), and from which
/// lots (`L2291 8 mL, L2302 3 mL`; empty when the lab keeps no lot of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed {
    pub run_id: String,
    pub tenant_id: String,
    pub item: String,
    pub unit: String,
    pub quantity: f64,
    pub lots: String,
    pub at: Millis,
}

/// One entry of a container's history (`received`, …), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerEvent {
    pub seq: i64,
    pub at: Millis,
    pub kind: String,
    pub detail: String,
    /// Who did it (a principal's id).
    pub actor: String,
    /// Where the container went with it (`None`: it did not move).
    pub location: Option<String>,
}

/// A recorded attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: String,
    pub intent: Intent,
    /// `ok`, `failed` or `unknown`; `not_done` when recovery found it never happened (the
    /// instrument was where it was before: sending it again is not a repeat); `None` while the
    /// command is in flight (or the runtime died).
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub intent_at: Millis,
    pub outcome_at: Option<Millis>,
}

/// Measured values of one read.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub id: String,
    pub run_id: String,
    pub task_id: i64,
    pub labware: String,
    pub kind: String,
    pub wells: Vec<String>,
    pub wavelengths_nm: Vec<f64>,
    pub values: Vec<f64>,
    pub unit: String,
    pub created_at: Millis,
}

/// A message waiting to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: String,
    pub position: i64,
    pub tenant_id: Option<String>,
    pub run_id: Option<String>,
    pub seq: Option<i64>,
    pub topic: String,
    pub payload_json: String,
    pub created_at: Millis,
}

/// Something a technician must do.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervention {
    pub id: String,
    pub run_id: String,
    pub task_id: Option<i64>,
    pub instrument: Option<String>,
    pub what: String,
    pub todo: String,
    /// `open`, `done`, `redo` or `abort`.
    pub state: String,
    pub created_at: Millis,
    pub resolved_at: Option<Millis>,
    pub resolved_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub tenant_id: String,
    /// An instrument id, or an instrument class (the executor reserves its first instrument).
    pub instrument_class: String,
    pub starts_at: Millis,
    pub ends_at: Millis,
}

/// An instrument a technician took out of service.
#[derive(Debug, Clone, PartialEq)]
pub struct Maintenance {
    pub instrument: String,
    pub reason: String,
    pub set_by: String,
    pub since: Millis,
}

/// Device time used, for billing.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub tenant_id: String,
    pub run_id: String,
    pub instrument_class: String,
    pub instrument: String,
    pub device_seconds: f64,
}

/// What a person (or labd itself) did by hand, for the audit trail.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewAudit {
    /// The principal id of whoever did it (`labd` for the runtime's own actions).
    pub actor: String,
    /// What was done: `maintenance_on`, `intervention_resolved`, `pick_confirmed`, …
    pub action: String,
    /// What it was done to: an instrument, an intervention, a run's pick list, a lot, a tenant.
    pub subject: String,
    /// The reason given, if any.
    pub reason: String,
    /// What else matters (the resolution, the barcode scanned, the quantities).
    pub detail: String,
}

/// An entry of the audit trail, as recorded: what was done, with its id and time.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub at: Millis,
    pub done: NewAudit,
}

/// Usage summed per tenant and instrument class.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageTotal {
    pub tenant_id: String,
    pub instrument_class: String,
    /// The service class of the runs that used it (priced apart).
    pub service_class: labware::ServiceClass,
    pub device_seconds: f64,
}

impl std::fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// The store contract. Blocking calls: async callers use `spawn_blocking`. Calls that take a
/// `tenant` scope return `NotFound` for another tenant's objects, exactly as for missing ones.
pub trait Store: Send + Sync {
    fn create_tenant(&self, name: &str, weight: f64) -> Result<Tenant>;
    fn tenant(&self, id: &str) -> Result<Tenant>;
    fn tenant_by_name(&self, name: &str) -> Result<Tenant>;
    fn tenants(&self) -> Result<Vec<Tenant>>;
    fn set_quotas(
        &self,
        id: &str,
        max_concurrent_runs: Option<i64>,
        device_hours_per_month: Option<f64>,
        priority: i64,
    ) -> Result<()>;

    fn create_principal(
        &self,
        tenant_id: Option<&str>,
        role: Role,
        token_hash: &str,
        mqtt: Option<(&str, &str)>,
    ) -> Result<Principal>;
    /// The live principal whose token hashes to this value.
    fn principal_by_token_hash(&self, token_hash: &str) -> Result<Principal>;
    fn revoke_principal(&self, id: &str) -> Result<()>;
    /// Live principals (not revoked, not expired) that have MQTT credentials.
    fn mqtt_identities(&self) -> Result<Vec<crate::telemetry::MqttIdentity>>;
    /// The token stops signing in at this time.
    fn set_principal_expiry(&self, id: &str, expires_at: Millis) -> Result<()>;

    /// Held while a submission is checked against what is on hand and then recorded, so that
    /// two submissions — on this node or on any other sharing the database — cannot both take
    /// the last of a container's well, of the stock or of a storage unit. Released when dropped.
    fn hold_admission(&self) -> Result<AdmissionHold<'_>>;
    /// Accepts a run, or returns the run already accepted under the same idempotency key
    /// (`false`: nothing new was created). Writes the `submitted` event and its outbox row.
    fn submit_run(&self, run: &NewRun) -> Result<(Run, bool)>;
    fn run(&self, tenant: Option<&str>, id: &str) -> Result<Run>;
    fn runs(&self, tenant: Option<&str>, states: &[RunState]) -> Result<Vec<Run>>;
    /// Moves a run to a new state (final states are final), with its event and outbox row.
    fn set_run_state(&self, id: &str, state: RunState, reason: Option<&str>) -> Result<Event>;
    /// Holds a running run for a person (`held`: running → awaiting_recovery) or lets it go on
    /// (awaiting_recovery → running); `None` when the run is in neither (a cancel won the race).
    fn hold_run(&self, id: &str, held: bool, reason: Option<&str>) -> Result<Option<Event>>;
    /// Appends an event (and its outbox row); returns it with its sequence number.
    fn append_event(&self, run_id: &str, kind: &str, payload_json: &str) -> Result<Event>;
    /// Events with `seq > after`, in order.
    fn events(&self, tenant: Option<&str>, run_id: &str, after: i64) -> Result<Vec<Event>>;

    fn record_intent(&self, intent: &Intent) -> Result<Attempt>;
    /// In one transaction: the previous command of the same task succeeded (when given), and
    /// the next is about to be sent. One durable write per command instead of two; the
    /// previous outcome is still on disk before the next command leaves.
    fn record_ok_then_intent(&self, previous: Option<&str>, intent: &Intent) -> Result<Attempt>;
    fn record_outcome(&self, attempt_id: &str, outcome: &str, error: Option<&str>) -> Result<()>;
    /// Attempts whose outcome was never written (in flight when the runtime stopped).
    fn open_attempts(&self) -> Result<Vec<Attempt>>;
    fn attempts(&self, run_id: &str) -> Result<Vec<Attempt>>;
    /// The last command that went through (`ok`) on an instrument, of any run, sent before
    /// `before`: where recovery learns where an arm stood before a move in doubt.
    fn last_done_on(&self, instrument: &str, before: Millis) -> Result<Option<Attempt>>;

    /// Receives a tenant's shipment: every container or none (a barcode the lab already holds,
    /// anyone's, is a conflict naming it), each `received` at `location` by `actor`. With
    /// `shipment`, the tenant's declared shipment is marked received in the same transaction
    /// (one received already is a conflict: nothing is received twice).
    fn receive_containers(
        &self,
        tenant: &str,
        containers: &[NewContainer],
        location: &str,
        actor: &str,
        shipment: Option<&str>,
    ) -> Result<Vec<Container>>;
    /// Records a shipment tenant `tenant` declares (its manifest, checked already, and the
    /// barcodes it lists) for technicians to receive. A barcode on one of the tenant's
    /// containers or open shipments is a conflict naming it.
    fn declare_shipment(&self, tenant: &str, manifest: &str, barcodes: &[String], actor: &str) -> Result<Shipment>;
    /// Shipments declared and not received yet, oldest first; a tenant's own when given.
    fn open_shipments(&self, tenant: Option<&str>) -> Result<Vec<Shipment>>;
    /// One shipment; another tenant's is not found, as a missing one is.
    fn shipment(&self, tenant: Option<&str>, id: &str) -> Result<Shipment>;
    /// Containers, oldest first (then by barcode); a tenant's own only when `tenant` is given.
    fn containers(&self, tenant: Option<&str>) -> Result<Vec<Container>>;
    /// One container by id or barcode; another tenant's is not found, as a missing one is.
    fn container(&self, tenant: Option<&str>, id_or_barcode: &str) -> Result<Container>;
    /// A container's history, oldest first.
    fn container_history(&self, container_id: &str) -> Result<Vec<ContainerEvent>>;
    /// Every container's history at once (a tenant's when `tenant` is given), in one read:
    /// (tenant id, container id, its history oldest first), by container id.
    fn container_histories(&self, tenant: Option<&str>) -> Result<Vec<(String, String, Vec<ContainerEvent>)>>;
    /// What run `run_id` drew from a container's wells ((well, µL)), taken off each well's
    /// liquids in proportion, with a `used` entry in its history: once per run and container
    /// (`false` when it was already recorded).
    fn use_container(&self, run_id: &str, container_id: &str, drawn: &[(String, f64)], actor: &str) -> Result<bool>;

    /// A container a run made (a labware its protocol stores), the tenant's, at `location`, with
    /// a `made` entry in its history: once per run and barcode (`None` when it was made already;
    /// a barcode the lab holds for anything else is a conflict).
    fn make_container(
        &self,
        run_id: &str,
        tenant: &str,
        container: &NewContainer,
        location: &str,
    ) -> Result<Option<Container>>;
    /// After run `run_id`: a container goes to storage at `location`, or (`None`) is discarded,
    /// with a `stored` or `discarded` entry in its history; once per run (`false` when done).
    fn shelve_container(&self, run_id: &str, container_id: &str, location: Option<&str>) -> Result<bool>;

    /// Receives a lot of a reagent the lab stocks (more of a lot it has adds to it, and the
    /// expiry is the one given now).
    fn receive_lot(&self, reagent: &str, lot: &str, expires_on: &str, volume_ul: f64) -> Result<ReagentLot>;
    /// Sets how many of a consumable are on hand and the count at which to reorder.
    fn set_consumable(&self, load_name: &str, on_hand: i64, reorder_at: i64) -> Result<ConsumableStock>;
    /// The lab's reagent lots (by reagent, soonest to expire first) and counted consumables.
    fn stock(&self) -> Result<(Vec<ReagentLot>, Vec<ConsumableStock>)>;
    /// Takes what a run used up off the stock, once per run (`[]` when it was already taken):
    /// each counted consumable down by what it used; each reagent from its lots unexpired on
    /// `today` (`YYYY-MM-DD`), the soonest to expire first. Items the lab does not count are
    /// recorded all the same, for the bill.
    fn consume(
        &self,
        run_id: &str,
        tenant_id: &str,
        used: &protocols::consumables::Consumption,
        today: &str,
    ) -> Result<Vec<Consumed>>;
    /// What runs used up since `since`, a tenant's only when `tenant` is given, oldest first.
    fn consumed(&self, tenant: Option<&str>, since: Millis) -> Result<Vec<Consumed>>;

    /// Issues a run's pick list, once: a run that has one keeps it (a restart issues nothing
    /// new); returns the list as stored.
    fn issue_pick_list(&self, run_id: &str, items: &[PickItem]) -> Result<Vec<PickItem>>;
    /// A run's pick list, in order (`[]` when none was issued).
    fn pick_list(&self, run_id: &str) -> Result<Vec<PickItem>>;
    /// The items of every run not confirmed yet, by run then order.
    fn open_picks(&self) -> Result<Vec<PickItem>>;
    /// µL of each reagent lot the pick lists of runs not ended yet will pour, but `except_run`'s
    /// (a lot is drawn down only when a run ends): (lot, µL), by lot.
    fn reserved_lots(&self, except_run: &str) -> Result<Vec<(String, f64)>>;
    /// Confirms item `n` of a run's list by its scanned barcode: a barcode other than the
    /// expected one is refused (`Invalid`, naming what was expected); the same scan again is
    /// accepted and changes nothing (its first confirmation stands).
    fn confirm_pick(&self, run_id: &str, n: i64, scanned: &str, by: &str) -> Result<PickItem> {
        let mut done = self.confirm_picks(run_id, &[(n, scanned.to_string())], by)?;
        done.pop().ok_or_else(|| StoreError::Backend("a confirmation returned no item".into()))
    }
    /// Several scans of one run's list at once, all or none (each as [`Store::confirm_pick`]).
    fn confirm_picks(&self, run_id: &str, scans: &[(i64, String)], by: &str) -> Result<Vec<PickItem>>;

    /// Stores a measurement with its `result` event and outbox row.
    fn add_result(&self, row: &ResultRow) -> Result<Event>;
    fn results(&self, tenant: Option<&str>, run_id: &str) -> Result<Vec<ResultRow>>;

    /// Unsent outbox rows, oldest first.
    fn outbox_pending(&self, limit: usize) -> Result<Vec<OutboxRow>>;
    fn outbox_mark_sent(&self, ids: &[String]) -> Result<()>;
    /// A message not tied to a run event (instrument status for technicians).
    fn outbox_put(&self, message: &crate::telemetry::envelope::Message) -> Result<OutboxRow>;

    fn open_intervention(
        &self,
        run_id: &str,
        task_id: Option<i64>,
        instrument: Option<&str>,
        what: &str,
        todo: &str,
    ) -> Result<Intervention>;
    fn interventions(&self, tenant: Option<&str>, only_open: bool) -> Result<Vec<Intervention>>;
    /// One intervention by id (any tenant's: the executor's and technicians' view).
    fn intervention(&self, id: &str) -> Result<Intervention>;
    /// Resolves as `done`, `redo` or `abort`, once.
    fn resolve_intervention(&self, id: &str, resolution: &str, by: &str) -> Result<Intervention>;

    fn add_reservation(&self, r: &Reservation) -> Result<()>;
    fn reservations(&self, tenant: Option<&str>) -> Result<Vec<Reservation>>;

    /// Takes an instrument out of service (`Some((reason, by))`) or puts it back (`None`).
    fn set_maintenance(&self, instrument: &str, on: Option<(&str, &str)>) -> Result<()>;
    fn maintenance(&self) -> Result<Vec<Maintenance>>;

    fn add_usage(&self, u: &Usage) -> Result<()>;

    /// Records how long a finished task took; `false` when it was recorded before (the row is
    /// keyed by run and task: a restart never counts a task twice).
    fn record_duration(&self, d: &crate::experience::TaskDuration) -> Result<bool>;
    /// The latest `limit` recorded task durations, newest first, over every tenant (never
    /// shown to tenants: the lab's own experience of its instruments).
    fn task_durations(&self, limit: usize) -> Result<Vec<crate::experience::TaskDuration>>;
    /// Appends to the audit trail: who did what by hand, to what, and why.
    fn record_audit(&self, e: &NewAudit) -> Result<AuditEntry>;
    /// The audit trail from `since` on, newest first, at most `limit` entries.
    fn audit(&self, since: Millis, limit: usize) -> Result<Vec<AuditEntry>>;
    fn usage(&self, tenant: Option<&str>, since: Millis) -> Result<Vec<UsageTotal>>;

    /// Takes the cell's lease for `ttl_ms` when it is free or has run out (the epoch grows);
    /// `None` while another holder's lease is live.
    fn acquire_lease(&self, cell: &str, holder: &str, ttl_ms: i64) -> Result<Option<Lease>>;
    /// Extends a live lease; `None` when it ran out or another holder took it (lost: stop).
    fn renew_lease(&self, lease: &Lease, ttl_ms: i64) -> Result<Option<Lease>>;
    /// Gives a lease up at once (a clean stop: the standby need not wait).
    fn release_lease(&self, lease: &Lease) -> Result<()>;
    fn leases(&self) -> Result<Vec<Lease>>;
    /// Replaces the plan of a run that has not started (the executor adds kitting tasks to it
    /// once, before anything of it is journaled); `false` when the run has started.
    fn set_plan(&self, run_id: &str, plan_json: &str) -> Result<bool>;
    /// Claims a queued, unclaimed run for a cell (with its `placed` event); `false` when another
    /// cell was first.
    fn claim_run(&self, run_id: &str, cell: &str) -> Result<bool>;
    /// Claimed runs that are not final, per cell.
    fn cell_loads(&self) -> Result<Vec<(String, i64)>>;
    /// This store with a fencing token: every write first checks, in its own transaction, that
    /// `lease` still holds, and fails with [`StoreError::Fenced`] once it does not.
    fn fenced(&self, lease: &Lease) -> std::sync::Arc<dyn Store>;

    /// A write transaction that changes nothing: the database takes writes now (readiness).
    fn check_writable(&self) -> Result<()>;

    /// Changes with every write this process commits: a reader waiting for news waits on it
    /// (writes of other nodes on a shared database it does not see: poll for those too).
    fn written(&self) -> tokio::sync::watch::Receiver<u64>;
}
