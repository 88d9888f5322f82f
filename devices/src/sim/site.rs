//! Starts every simulated instrument of a site as its own endpoint — PTYs for serial devices,
//! loopback TCP for arms, a SiLA server for readers, the robot HTTP API for Opentrons robots — so drivers (ours or anyone's) reach them
//! exactly as they would reach real instruments.

use super::arm::{self, ArmSim};
use super::bench::SharedBench;
use super::liquid::{self, LiquidSim};
use super::module::{error_reply_for, ModuleSim};
use super::opentrons::{OpentronsConfig, OpentronsSim};
use super::station::{self, StationSim};
use super::{spawn_serial, spawn_tcp_owned, Faults, Pty, SimClock};
use crate::codec::module::Dialect;
use crate::driver::station::StationKind;
use crate::instrument::TimeScale;
use crate::sila::server::{ReaderConfig, ReaderSim};
use labware::{InstrumentClass, Library, Site};
use std::collections::BTreeMap;

/// Where one simulated instrument listens.
#[derive(Debug, Clone, PartialEq)]
pub struct Listening {
    pub id: String,
    pub class: String,
    /// `serial`, `tcp`, `sila` or `opentrons`.
    pub transport: &'static str,
    /// A device path or host:port.
    pub address: String,
}

impl Listening {
    /// The `endpoint` value to put in lab.toml to drive this simulator.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.transport, self.address)
    }

    /// One JSON object, as `labd sim --format json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::json!({"id": self.id, "class": self.class, "transport": self.transport, "address": self.address})
            .to_string()
    }
}

/// The running simulators; dropping this closes the PTYs and stops the network servers.
#[derive(Debug, Default)]
pub struct SimulatedSite {
    pub listening: Vec<Listening>,
    ptys: Vec<Pty>,
    /// The TCP and SiLA servers' tasks, aborted on drop (their listeners close with them).
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The liquid handlers' own accounts of liquid, by instrument id.
    pub liquid: BTreeMap<String, std::sync::Arc<std::sync::Mutex<liquid::LiquidState>>>,
    /// Mains switches of the simulators that have one (plate readers), by instrument id.
    pub power: BTreeMap<String, crate::sila::server::PowerSwitch>,
    /// What every plate of the site holds: the liquid handlers fill it, the readers read it.
    pub bench: SharedBench,
    /// The simulated plate readers, by instrument id (their device time, for timing tests).
    pub readers: BTreeMap<String, ReaderSim>,
    /// The simulated Opentrons robots (HTTP API), by instrument id.
    pub opentrons: BTreeMap<String, OpentronsSim>,
}

fn module_error(d: Dialect) -> fn(&str, &str) -> Vec<u8> {
    match d {
        Dialect::HeaterShaker => |_, c| error_reply_for(Dialect::HeaterShaker, &format!("{c}:injected fault")),
        Dialect::ThermocyclerGen2 => |_, c| error_reply_for(Dialect::ThermocyclerGen2, &format!("{c}:injected fault")),
        Dialect::TemperatureModule => {
            |_, c| error_reply_for(Dialect::TemperatureModule, &format!("{c}:injected fault"))
        }
    }
}

/// Starts a simulator for every instrument and arm of the site. `faults` maps instrument ids to
/// fault specs ([`Faults::parse`]); an id that is not in the site is an error.
pub async fn start(
    site: &Site,
    scale: TimeScale,
    faults: &BTreeMap<String, Faults>,
    host: &str,
) -> Result<SimulatedSite, String> {
    start_logged(site, scale, faults, host, None).await
}

/// [`start`], with the liquid handlers appending every liquid movement to
/// `LOG_DIR/<instrument>.liquid.log` (for tests that must see what really happened, across
/// restarts of the process that runs the simulators).
pub async fn start_logged(
    site: &Site,
    scale: TimeScale,
    faults: &BTreeMap<String, Faults>,
    host: &str,
    log_dir: Option<&std::path::Path>,
) -> Result<SimulatedSite, String> {
    for id in faults.keys() {
        if !site.instruments.iter().any(|i| &i.id == id) && !site.arms.iter().any(|a| &a.id == id) {
            return Err(format!("faults name `{id}`, which is not an instrument or arm of site `{}`", site.site.name));
        }
    }
    let clock = SimClock::new(scale);
    let mut out = SimulatedSite::default();
    let io = |e: std::io::Error| format!("cannot start a simulator: {e}");
    for inst in &site.instruments {
        if inst.robot.is_some() {
            continue; // plugged into a robot: reached through the robot's API (below, once it listens)
        }
        let f = faults.get(&inst.id).cloned().unwrap_or_default();
        let serial = format!("{}-sim", inst.id);
        let (transport, address) = match inst.class {
            InstrumentClass::LiquidHandler if inst.speaks_opentrons_http() => {
                let robot = crate::codec::opentrons::Robot::carrying(&inst.pipettes);
                let config = OpentronsConfig::from_site(inst, robot, scale, f).with_modules_of(site, &inst.id);
                let sim = OpentronsSim::new(config, Library::shipped(), out.bench.clone());
                out.opentrons.insert(inst.id.clone(), sim.clone());
                let (addr, task) = sim.serve(&format!("{host}:0")).await.map_err(io)?;
                out.servers.push(task);
                ("opentrons", addr.to_string())
            }
            InstrumentClass::LiquidHandler => {
                let sim = LiquidSim::on_bench(inst, Library::shipped(), out.bench.clone());
                if let Some(dir) = log_dir {
                    let path = dir.join(format!("{}.liquid.log", inst.id));
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| format!("cannot open simulator log {}: {e}", path.display()))?;
                    if let Ok(mut st) = sim.state.lock() {
                        st.log = Some(file);
                    }
                }
                out.liquid.insert(inst.id.clone(), sim.state.clone());
                let pty = spawn_serial(sim, f, clock, liquid::error_reply).map_err(io)?;
                ("serial", keep(&mut out.ptys, pty))
            }
            InstrumentClass::HeaterShaker | InstrumentClass::Thermocycler => {
                let d = if inst.class == InstrumentClass::HeaterShaker {
                    Dialect::HeaterShaker
                } else {
                    Dialect::ThermocyclerGen2
                };
                let pty = spawn_serial(ModuleSim::new(d, &serial), f, clock, module_error(d)).map_err(io)?;
                ("serial", keep(&mut out.ptys, pty))
            }
            InstrumentClass::PlateReader => {
                let sim = ReaderSim::new(ReaderConfig::from_site(inst, scale, f).on_bench(out.bench.clone()));
                out.power.insert(inst.id.clone(), sim.power());
                out.readers.insert(inst.id.clone(), sim.clone());
                let (addr, task) = sim.serve_owned(&format!("{host}:0"), None).await.map_err(io)?;
                out.servers.push(task);
                ("sila", addr.to_string())
            }
            InstrumentClass::Sealer
            | InstrumentClass::Centrifuge
            | InstrumentClass::Incubator
            | InstrumentClass::PlateHotel => {
                let kind = match inst.class {
                    InstrumentClass::Sealer => StationKind::Sealer,
                    InstrumentClass::Centrifuge => StationKind::Centrifuge,
                    InstrumentClass::Incubator => StationKind::Incubator,
                    _ => StationKind::Hotel,
                };
                let pty = spawn_serial(StationSim::new(kind, &serial, inst.capacity), f, clock, station::error_reply)
                    .map_err(io)?;
                ("serial", keep(&mut out.ptys, pty))
            }
            InstrumentClass::RobotArm | InstrumentClass::Technician => continue,
        };
        out.listening.push(Listening { id: inst.id.clone(), class: inst.class.as_str().into(), transport, address });
    }
    for inst in site.instruments.iter().filter(|i| i.robot.is_some()) {
        let robot = inst.robot.as_deref().unwrap_or_default();
        let Some(at) = out.listening.iter().find(|l| l.id == robot && l.transport == "opentrons").cloned() else {
            return Err(format!("{} is plugged into {robot}, which is not a simulated Opentrons robot", inst.id));
        };
        out.listening.push(Listening {
            id: inst.id.clone(),
            class: inst.class.as_str().into(),
            transport: "opentrons",
            address: at.address,
        });
    }
    for a in &site.arms {
        if let Some(robot) = &a.robot {
            // A Flex's gripper: reached through its robot's API.
            let Some(at) = out.listening.iter().find(|l| &l.id == robot && l.transport == "opentrons").cloned() else {
                return Err(format!("{} is the gripper of {robot}, which is not a simulated Opentrons robot", a.id));
            };
            out.listening.push(Listening {
                id: a.id.clone(),
                class: "robot_arm".into(),
                transport: "opentrons",
                address: at.address,
            });
            continue;
        }
        let f = faults.get(&a.id).cloned().unwrap_or_default();
        let (addr, task) = spawn_tcp_owned(ArmSim::new(&a.reach), f, clock, arm::error_reply, &format!("{host}:0"))
            .await
            .map_err(io)?;
        out.servers.push(task);
        out.listening.push(Listening {
            id: a.id.clone(),
            class: "robot_arm".into(),
            transport: "tcp",
            address: addr.to_string(),
        });
    }
    Ok(out)
}

impl Drop for SimulatedSite {
    fn drop(&mut self) {
        for t in &self.servers {
            t.abort();
        }
    }
}

fn keep(ptys: &mut Vec<Pty>, pty: Pty) -> String {
    let path = pty.path.clone();
    ptys.push(pty);
    path
}
