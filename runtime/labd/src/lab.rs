//! The instruments `labd` drives: one driver per site instrument and arm, connected to real
//! endpoints from `lab.toml` or to simulators started in-process.

use devices::driver::{open, open_mover, OpenConfig};
use devices::link::Endpoint;
use devices::sim::site::SimulatedSite;
use devices::{Instrument, TimeScale};
use labware::{InstrumentClass, Site};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why the lab could not be connected; names the instrument and keeps the driver's error class.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The in-process simulators could not start.
    #[error("{0}")]
    Simulators(String),
    /// No endpoint given for an instrument or arm of the site, or one that does not parse.
    #[error("{what} {id}: {why}")]
    Endpoint { what: &'static str, id: String, why: String },
    /// The driver could not reach or identify the instrument.
    #[error("{what} {id}: {error}")]
    Connect {
        what: &'static str,
        id: String,
        #[source]
        error: devices::InstrumentError,
    },
}

/// Connected drivers, by instrument or arm id.
#[derive(Debug)]
pub struct Lab {
    pub site: Site,
    pub instruments: BTreeMap<String, Arc<dyn Instrument>>,
    pub arms: BTreeMap<String, Arc<dyn devices::Arm>>,
    /// The simulators, when the lab is simulated (kept alive with the drivers).
    pub simulated: Option<SimulatedSite>,
    /// The bench of simulators running in their own process (`labd sim`), where the simulated
    /// technician loads plates (`sim_bench` in labd.toml).
    pub hands: Option<devices::sim::hands::Hands>,
    /// Where a simulated lab keeps its bench (what every plate holds) between runs of labd.
    bench_file: Option<std::path::PathBuf>,
    /// One save at a time: a later snapshot must never be overwritten by an earlier one.
    bench_saving: std::sync::Mutex<()>,
}

impl Lab {
    /// Starts every instrument of the site as a simulator on its own endpoint (PTY, TCP, SiLA),
    /// then connects the real drivers to them: the runtime talks the same wire as to real devices.
    pub async fn simulated(site: Site, scale: TimeScale) -> Result<Lab, LabError> {
        Lab::simulated_with_faults(site, scale, &BTreeMap::new()).await
    }

    /// A simulated lab whose simulators misbehave as told (instrument id → fault spec).
    pub async fn simulated_with_faults(
        site: Site,
        scale: TimeScale,
        faults: &BTreeMap<String, devices::sim::Faults>,
    ) -> Result<Lab, LabError> {
        Lab::simulated_logged(site, scale, faults, None).await
    }

    /// A simulated lab whose liquid handlers log every liquid movement under `log_dir`.
    pub async fn simulated_logged(
        site: Site,
        scale: TimeScale,
        faults: &BTreeMap<String, devices::sim::Faults>,
        log_dir: Option<&std::path::Path>,
    ) -> Result<Lab, LabError> {
        let sims = devices::sim::site::start_logged(&site, scale, faults, "127.0.0.1", log_dir)
            .await
            .map_err(LabError::Simulators)?;
        let endpoints: BTreeMap<String, String> = sims.listening.iter().map(|l| (l.id.clone(), l.endpoint())).collect();
        let mut lab = Lab::connect(site, &endpoints, scale).await?;
        lab.simulated = Some(sims);
        Ok(lab)
    }

    /// A simulated lab keeps its bench in `file`: what an earlier labd left there is put back
    /// now, and [`Lab::save_bench`] writes it again. Plates then keep their contents when labd
    /// restarts, as real plates do, and a resumed run reads what its earlier tasks pipetted.
    /// Nothing for a real lab.
    pub fn keep_bench_in(&mut self, file: std::path::PathBuf) -> Result<(), LabError> {
        let Some(sims) = &self.simulated else { return Ok(()) };
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let unreadable = |e: String| {
                    LabError::Simulators(format!("{}: {e}; delete it to start with an empty bench", file.display()))
                };
                let snapshot: serde_json::Value = serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
                crate::lock(&sims.bench).restore(&snapshot).map_err(unreadable)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LabError::Simulators(format!("cannot read {}: {e}", file.display()))),
        }
        self.bench_file = Some(file);
        Ok(())
    }

    /// Whether this is a simulated lab that keeps its bench in a file ([`Lab::keep_bench_in`]).
    /// Whether a simulated technician can put material on the bench (a simulated lab, or
    /// simulators in another process with their bench).
    pub fn has_simulated_technician(&self) -> bool {
        self.simulated.is_some() || self.hands.is_some()
    }

    pub fn keeps_bench(&self) -> bool {
        self.simulated.is_some() && self.bench_file.is_some()
    }

    /// Writes the simulated bench where [`Lab::keep_bench_in`] said (whole, then renamed, so a
    /// crash leaves the old or the new one). Nothing for a real lab or one that keeps no file.
    pub fn save_bench(&self) -> std::io::Result<()> {
        let (Some(sims), Some(file)) = (&self.simulated, &self.bench_file) else { return Ok(()) };
        let _one_at_a_time = crate::lock(&self.bench_saving);
        let text = crate::lock(&sims.bench).snapshot().to_string();
        let part = file.with_extension("json.part");
        std::fs::write(&part, text)?;
        std::fs::rename(&part, file)
    }

    /// Connects to the given endpoints (instrument id → endpoint string).
    pub async fn connect(site: Site, endpoints: &BTreeMap<String, String>, scale: TimeScale) -> Result<Lab, LabError> {
        let cfg = OpenConfig { scale, sila_ca: None, robots: Default::default() };
        let mut instruments = BTreeMap::new();
        let endpoint = |what: &'static str, id: &str| -> Result<Endpoint, LabError> {
            let text = endpoints.get(id).ok_or_else(|| LabError::Endpoint {
                what,
                id: id.to_string(),
                why: "no endpoint given".into(),
            })?;
            Endpoint::parse(text).map_err(|why| LabError::Endpoint { what, id: id.to_string(), why })
        };
        for inst in &site.instruments {
            if matches!(inst.class, InstrumentClass::RobotArm | InstrumentClass::Technician) {
                continue;
            }
            let ep = endpoint("instrument", &inst.id)?;
            let d = open(inst, &ep, &cfg).await.map_err(|error| LabError::Connect {
                what: "instrument",
                id: inst.id.clone(),
                error,
            })?;
            instruments.insert(inst.id.clone(), d);
        }
        let mut arms = BTreeMap::new();
        for a in &site.arms {
            let ep = endpoint("arm", &a.id)?;
            let d = open_mover(a, &site, &ep, &cfg).await.map_err(|error| LabError::Connect {
                what: "arm",
                id: a.id.clone(),
                error,
            })?;
            arms.insert(a.id.clone(), d);
        }
        Ok(Lab {
            site,
            instruments,
            arms,
            simulated: None,
            hands: None,
            bench_file: None,
            bench_saving: Default::default(),
        })
    }
}

/// The labs this node drives right now, for the API: one on a single node, one per cell whose
/// lease it holds on several.
#[derive(Debug, Clone, Default)]
pub struct Connected(Arc<std::sync::RwLock<Vec<Arc<Lab>>>>);

impl Connected {
    pub fn of(lab: Arc<Lab>) -> Connected {
        let c = Connected::default();
        c.add(lab);
        c
    }

    pub fn add(&self, lab: Arc<Lab>) {
        if let Ok(mut all) = self.0.write() {
            all.push(lab);
        }
    }

    pub fn remove(&self, lab: &Arc<Lab>) {
        if let Ok(mut all) = self.0.write() {
            all.retain(|l| !Arc::ptr_eq(l, lab));
        }
    }

    /// How many labs (cells, or the whole site on one node) this node drives now.
    pub fn count(&self) -> usize {
        self.0.read().map(|v| v.len()).unwrap_or(0)
    }

    fn all(&self) -> Vec<Arc<Lab>> {
        self.0.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// The driver of an instrument this node drives.
    pub fn instrument(&self, id: &str) -> Option<Arc<dyn Instrument>> {
        self.all().iter().find_map(|l| l.instruments.get(id).cloned())
    }

    /// Every instrument and arm driver this node drives, by id (for an emergency stop).
    pub fn drivers(&self) -> Vec<(String, Arc<dyn Instrument>)> {
        let mut out: Vec<(String, Arc<dyn Instrument>)> = Vec::new();
        for lab in self.all() {
            out.extend(lab.instruments.iter().map(|(id, d)| (id.clone(), d.clone())));
            out.extend(lab.arms.iter().map(|(id, d)| (id.clone(), d.clone() as Arc<dyn Instrument>)));
        }
        out
    }

    /// Whether an arm belongs to a lab this node drives, and whether it is connected.
    pub fn arm(&self, id: &str) -> Option<bool> {
        let all = self.all();
        let lab = all.iter().find(|l| l.site.arms.iter().any(|a| a.id == id))?;
        Some(lab.arms.contains_key(id))
    }
}
