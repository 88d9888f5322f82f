//! The instruments `labd` drives: one driver per site instrument and arm, connected to real
//! endpoints from `lab.toml` or to simulators started in-process.

use devices::driver::arm::ArmDriver;
use devices::driver::{open, open_arm, OpenConfig};
use devices::link::Endpoint;
use devices::sim::site::SimulatedSite;
use devices::{Instrument, TimeScale};
use labware::{InstrumentClass, Site};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Connected drivers, by instrument or arm id.
#[derive(Debug)]
pub struct Lab {
    pub site: Site,
    pub instruments: BTreeMap<String, Arc<dyn Instrument>>,
    pub arms: BTreeMap<String, Arc<ArmDriver>>,
    /// The simulators, when the lab is simulated (kept alive with the drivers).
    pub simulated: Option<SimulatedSite>,
}

impl Lab {
    /// Starts every instrument of the site as a simulator on its own endpoint (PTY, TCP, SiLA),
    /// then connects the real drivers to them: the runtime talks the same wire as to real devices.
    pub async fn simulated(site: Site, scale: TimeScale) -> Result<Lab, String> {
        Lab::simulated_with_faults(site, scale, &BTreeMap::new()).await
    }

    /// A simulated lab whose simulators misbehave as told (instrument id → fault spec).
    pub async fn simulated_with_faults(
        site: Site,
        scale: TimeScale,
        faults: &BTreeMap<String, devices::sim::Faults>,
    ) -> Result<Lab, String> {
        Lab::simulated_logged(site, scale, faults, None).await
    }

    /// A simulated lab whose liquid handlers log every liquid movement under `log_dir`.
    pub async fn simulated_logged(
        site: Site,
        scale: TimeScale,
        faults: &BTreeMap<String, devices::sim::Faults>,
        log_dir: Option<&std::path::Path>,
    ) -> Result<Lab, String> {
        let sims = devices::sim::site::start_logged(&site, scale, faults, "127.0.0.1", log_dir).await?;
        let endpoints: BTreeMap<String, String> = sims.listening.iter().map(|l| (l.id.clone(), l.endpoint())).collect();
        let mut lab = Lab::connect(site, &endpoints, scale).await?;
        lab.simulated = Some(sims);
        Ok(lab)
    }

    /// Connects to the given endpoints (instrument id → endpoint string).
    pub async fn connect(site: Site, endpoints: &BTreeMap<String, String>, scale: TimeScale) -> Result<Lab, String> {
        let cfg = OpenConfig { scale, sila_ca: None };
        let mut instruments = BTreeMap::new();
        for inst in &site.instruments {
            if matches!(inst.class, InstrumentClass::RobotArm | InstrumentClass::Technician) {
                continue;
            }
            let ep = endpoints.get(&inst.id).ok_or_else(|| format!("no endpoint for instrument {}", inst.id))?;
            let ep = Endpoint::parse(ep).map_err(|e| format!("instrument {}: {e}", inst.id))?;
            let d = open(inst, &ep, &cfg).await.map_err(|e| format!("instrument {}: {e}", inst.id))?;
            instruments.insert(inst.id.clone(), d);
        }
        let mut arms = BTreeMap::new();
        for a in &site.arms {
            let ep = endpoints.get(&a.id).ok_or_else(|| format!("no endpoint for arm {}", a.id))?;
            let ep = Endpoint::parse(ep).map_err(|e| format!("arm {}: {e}", a.id))?;
            arms.insert(a.id.clone(), open_arm(a, &ep, scale).await.map_err(|e| format!("arm {}: {e}", a.id))?);
        }
        Ok(Lab { site, instruments, arms, simulated: None })
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

    /// Whether an arm belongs to a lab this node drives, and whether it is connected.
    pub fn arm(&self, id: &str) -> Option<bool> {
        let all = self.all();
        let lab = all.iter().find(|l| l.site.arms.iter().any(|a| a.id == id))?;
        Some(lab.arms.contains_key(id))
    }
}
