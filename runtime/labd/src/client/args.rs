//! What `labctl`'s client commands take: the connection, the output format, the commands.

use std::path::PathBuf;

/// Where the server is and who we are.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Server URL [env: LABWRIGHT_URL; default http://127.0.0.1:50051].
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// Access token [env: LABWRIGHT_TOKEN].
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// server [env: LABWRIGHT_CA].
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
}

/// Output format of a client command.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Out {
    /// text for people, json for scripts.
    #[arg(long, value_enum, default_value_t = Fmt::Text)]
    pub format: Fmt,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fmt {
    Text,
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientCmd {
    /// Submit a protocol as a run of your tenant.
    Submit {
        #[command(flatten)]
        out: Out,
        file: PathBuf,
        /// Wait until the run ends, printing its events.
        #[arg(long)]
        wait: bool,
        /// Idempotency key: submitting again with the same key returns the run it made instead
        /// of a new one. Default: a new key each time labctl runs (so submitting a file again
        /// makes a new run), kept across labctl's own retries after a network error.
        #[arg(long)]
        key: Option<String>,
        /// The service class: standard, priority (planned ahead of standard work, at a higher
        /// rate) or spot (idle capacity only, at a discount, promised nothing).
        #[arg(long, default_value = "standard")]
        class: String,
        #[command(flatten)]
        python: crate::opentrons_python::PythonArgs,
    },
    /// List runs you may see.
    Runs {
        #[command(flatten)]
        out: Out,
    },
    /// Follow a run's events until it ends.
    Watch {
        #[command(flatten)]
        out: Out,
        run: String,
        /// Only events after this sequence number (fill a gap after missed telemetry).
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Cancel a run (it stops at the next task; its plates go back to storage).
    Cancel {
        #[command(flatten)]
        out: Out,
        run: String,
    },
    /// A run's measured values.
    Results {
        run: String,
        /// `csv` and `parquet` write one row per well and wavelength (same columns).
        #[arg(long, value_enum, default_value_t = ResultsFormat::Json)]
        format: ResultsFormat,
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        /// Also write each read's heatmap, standard curve and dose-response fits as SVG, and
        /// `analysis.json` (replicate statistics and fits), into this directory.
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
    },
    /// Instruments and their state (technicians).
    Instruments {
        #[command(flatten)]
        out: Out,
    },
    /// Open interventions: what happened and what a technician must do.
    Interventions {
        #[command(flatten)]
        out: Out,
        /// Include resolved ones.
        #[arg(long)]
        all: bool,
    },
    /// Resolve an intervention: done, redo or abort.
    Resolve {
        #[command(flatten)]
        out: Out,
        id: String,
        resolution: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take an instrument out of service or put it back (technicians).
    Maintenance {
        #[command(flatten)]
        out: Out,
        instrument: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Why (required with `on`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Pause the lab (no new command is sent) or, with --emergency, stop every instrument and
    /// arm at once (technicians).
    Halt {
        #[command(flatten)]
        out: Out,
        /// Stop every instrument and arm now, not just hold the next command.
        #[arg(long)]
        emergency: bool,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Let the work go on after a pause or an emergency stop (technicians).
    Resume {
        #[command(flatten)]
        out: Out,
    },
    /// The schedule: per instrument and arm, what ran and what is planned.
    Schedule {
        #[command(flatten)]
        out: Out,
    },
    /// How long tasks really took against their estimates, per instrument and kind of work,
    /// and the correction plans and quotes apply (technicians and admins).
    Durations {
        #[command(flatten)]
        out: Out,
    },
    /// The audit trail, newest first: who did what by hand, to what, when and why
    /// (technicians and admins).
    Audit {
        #[command(flatten)]
        out: Out,
        /// Only from this day on (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (1–1000).
        #[arg(long, default_value_t = 200)]
        limit: u32,
    },
    /// Device time used per tenant, instrument class and service class, with what it comes
    /// to, then consumables, reagents and storage (admin).
    Usage {
        #[command(flatten)]
        out: Out,
        #[arg(long)]
        tenant: Option<String>,
        /// From this day on (YYYY-MM-DD, UTC); default: everything.
        #[arg(long)]
        since: Option<String>,
    },
    /// Reserve bench time for a tenant on an instrument or a class (admin): other tenants' work
    /// is kept off it then.
    Reserve {
        #[command(flatten)]
        out: Out,
        tenant: String,
        /// Instrument id, or class (its first instrument).
        instrument: String,
        /// How long, in minutes.
        #[arg(long = "for")]
        minutes: f64,
        /// Starting this many minutes from now (default: now).
        #[arg(long = "in", default_value_t = 0.0)]
        in_minutes: f64,
    },
    /// Reservations of bench time (admin).
    Reservations {
        #[command(flatten)]
        out: Out,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Declare a shipment before sending it (scientists): its manifest (CSV: barcode, type,
    /// well, sample, liquid, volume), checked now as it will be at receipt. Technicians see it
    /// in their work queue and receive it by its id.
    Ship {
        #[command(flatten)]
        out: Out,
        manifest: PathBuf,
        /// The tenant it comes from (technicians and admins declaring for a tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Shipments declared and not received yet (yours; every tenant's for technicians).
    Shipments {
        #[command(flatten)]
        out: Out,
    },
    /// Receive a shipment (technicians): a declared one by `--shipment ID`, or a tenant's
    /// manifest (CSV: barcode, type, well, sample, liquid, volume) with `--tenant`; then each
    /// container's barcode scanned, one per line on standard input (a USB scanner types them),
    /// until every container is scanned. A manifest given with `--shipment` corrects the
    /// declared one (what actually arrived).
    Receive {
        #[command(flatten)]
        out: Out,
        manifest: Option<PathBuf>,
        /// The tenant that sent it (without `--shipment`).
        #[arg(long)]
        tenant: Option<String>,
        /// A declared shipment's id (`labctl shipments`).
        #[arg(long)]
        shipment: Option<String>,
        /// Where the containers go: a storage unit, or a condition (`4C`, `-80C`: the unit of
        /// that condition with room); the receiving bench by default.
        #[arg(long, default_value = "receiving", allow_hyphen_values = true)]
        location: String,
    },
    /// The containers the lab holds (yours; every tenant's for technicians).
    Containers {
        #[command(flatten)]
        out: Out,
    },
    /// One container.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// The lab's stock of reagents and consumables (technicians): `labctl stock` lists it.
    Stock {
        #[command(flatten)]
        out: Out,
        #[command(subcommand)]
        cmd: Option<StockCmd>,
    },
    /// Kitting (technicians): `labctl kit` lists what every run waiting to start needs
    /// fetched; `labctl kit RUN` one run's pick list; `labctl kit RUN --scan BARCODE` confirms
    /// the item that barcode is for (with `--item N`, that item).
    Kit {
        #[command(flatten)]
        out: Out,
        run: Option<String>,
        /// A barcode scanned at the bench.
        #[arg(long, requires = "run")]
        scan: Option<String>,
        /// The item the scan is for (its number in the list); by default the open item that
        /// expects the barcode, else the first open one.
        #[arg(long, requires = "scan")]
        item: Option<i64>,
    },
    /// Tenants (admin).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Tokens (admin).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(clap::Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant.
    Add {
        #[command(flatten)]
        out: Out,
        name: String,
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
    },
    /// Set a tenant's quotas and priority (0: no limit).
    Quota {
        #[command(flatten)]
        out: Out,
        name: String,
        /// Runs of this tenant executing at once.
        #[arg(long, default_value_t = 0)]
        max_runs: i64,
        /// Device-hours per calendar month.
        #[arg(long, default_value_t = 0.0)]
        device_hours: f64,
        #[arg(long, default_value_t = 0)]
        priority: i64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum ContainerCmd {
    /// Its wells (sample, liquid, volume), where it is and its history.
    Show {
        #[command(flatten)]
        out: Out,
        /// Its id or barcode.
        id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum StockCmd {
    /// Receive a lot of a reagent the site stocks (more of a lot adds to it).
    Receive {
        /// The reagent, as the site's price table names it (`TMB substrate`).
        reagent: String,
        #[arg(long)]
        lot: String,
        /// Usable through this day: YYYY-MM-DD.
        #[arg(long)]
        expires: String,
        /// How much: `500 mL`, `1.5 L`.
        #[arg(long)]
        volume: String,
    },
    /// Count a consumable: how many are on hand, and the count at which to reorder.
    Count {
        /// Its labware type (`opentrons_96_tiprack_300ul`).
        r#type: String,
        #[arg(long)]
        on_hand: i64,
        #[arg(long, default_value_t = 0)]
        reorder_at: i64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token (shown once).
    Create {
        #[command(flatten)]
        out: Out,
        /// Tenant name (scientists).
        #[arg(long)]
        tenant: Option<String>,
        /// admin, technician or scientist.
        #[arg(long, default_value = "scientist")]
        role: String,
        /// Lifetime in seconds (default: does not expire).
        #[arg(long)]
        ttl: Option<i64>,
    },
    /// Revoke a token by its principal id (from `token create --format json`).
    Revoke { principal: String },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultsFormat {
    Json,
    Csv,
    /// Apache Parquet (Arrow types; needs -o FILE).
    Parquet,
}
