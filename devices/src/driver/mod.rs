//! Drivers: each turns plan commands into its family's wire protocol over a [`crate::link::Link`]
//! (or a SiLA channel) and implements [`crate::Instrument`].

pub mod arm;
pub mod liquid;
pub mod module;
pub mod opentrons;
pub mod opentrons_gripper;
pub mod opentrons_link;
pub mod opentrons_module;
pub mod reader;
pub mod sila_mapped;
pub mod station;

use crate::error::InstrumentError;
use crate::instrument::{Execution, ExecutionSender, Outcome};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Abort signal shared by a driver and its running command.
#[derive(Debug, Default)]
pub struct Cancel {
    set: AtomicBool,
    notify: Notify,
}

impl Cancel {
    /// Requests the running command to stop.
    pub fn fire(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Clears the flag before a new command starts.
    pub fn reset(&self) {
        self.set.store(false, Ordering::SeqCst);
    }

    /// `Err(Cancelled)` once fired: checked between wire exchanges.
    pub fn check(&self) -> Result<(), InstrumentError> {
        if self.set.load(Ordering::SeqCst) {
            Err(InstrumentError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Returns once the running command is asked to stop.
    pub async fn fired(&self) {
        let notified = self.notify.notified();
        if self.set.load(Ordering::SeqCst) {
            return;
        }
        notified.await
    }

    /// Sleeps, waking early (with `Cancelled`) on abort.
    pub async fn sleep(&self, d: Duration) -> Result<(), InstrumentError> {
        let notified = self.notify.notified();
        self.check()?;
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = notified => Err(InstrumentError::Cancelled),
        }
    }
}

/// Runs `work` as a background task and returns the execution handle for it.
pub fn spawn<F>(work: impl FnOnce(Arc<ExecutionSender>) -> F) -> Execution
where
    F: Future<Output = Result<Outcome, InstrumentError>> + Send + 'static,
{
    let (tx, exec) = Execution::channel();
    let tx = Arc::new(tx);
    let fut = work(tx.clone());
    tokio::spawn(async move {
        let result = fut.await;
        if let Ok(tx) = Arc::try_unwrap(tx) {
            tx.finish(result);
        }
    });
    exec
}

/// Opens the driver for one site instrument at `endpoint` (its lab.toml endpoint, or a
/// simulator's address). Serial devices speak the family's G-code or LWSP/1; readers SiLA 2;
/// liquid handlers at an `opentrons:` endpoint the Opentrons robot HTTP API.
pub async fn open(
    instrument: &labware::site::Instrument,
    endpoint: &crate::link::Endpoint,
    config: &OpenConfig,
) -> Result<Arc<dyn crate::Instrument>, InstrumentError> {
    use crate::link::{Endpoint, Link};
    use labware::InstrumentClass as C;
    let link = || async {
        match endpoint {
            Endpoint::Serial(_) | Endpoint::Tcp(_) => Link::open(endpoint.clone()).await,
            other => Err(InstrumentError::Validation {
                parameter: "endpoint".into(),
                message: format!("{} is a {:?} endpoint; its family needs serial: or tcp:", instrument.id, other),
            }),
        }
    };
    if let (Some(robot), Endpoint::Opentrons { address }) = (&instrument.robot, endpoint) {
        let link = config.robots.link(robot, address, &opentrons::OpentronsConfig::default());
        let driver = opentrons_module::OpentronsModuleDriver::new(instrument, link, config.scale)?;
        // Proves the robot reports the module attached before anything is planned on it.
        crate::Instrument::identify(&driver).await?;
        return Ok(Arc::new(driver));
    }
    if let (C::LiquidHandler, Endpoint::Opentrons { address }) = (instrument.class, endpoint) {
        let link = config.robots.link(&instrument.id, address, &opentrons::OpentronsConfig::default());
        let driver = opentrons::OpentronsDriver::on_link(instrument, link, labware::Library::shipped());
        // Proves the robot answers and is an Opentrons robot before anything is planned on it.
        crate::Instrument::identify(&driver).await?;
        return Ok(Arc::new(driver));
    }
    // A mapping says so; a station or module at a SiLA endpoint without one is connected for its
    // identity and status (a plate reader or liquid handler there speaks Labwright's feature).
    let mapped = !instrument.sila.is_empty()
        || (matches!(endpoint, Endpoint::Sila { .. })
            && !matches!(instrument.class, C::PlateReader | C::LiquidHandler));
    if mapped {
        let channel = sila_channel(instrument, endpoint, config, "maps its commands to SiLA 2").await?;
        return Ok(Arc::new(sila_mapped::MappedSilaDriver::connect(instrument, channel).await?));
    }
    Ok(match instrument.class {
        C::LiquidHandler => Arc::new(liquid::LiquidHandlerDriver::new(
            instrument,
            labware::Library::shipped(),
            link().await?,
            liquid::LiquidConfig::default(),
        )),
        C::HeaterShaker | C::Thermocycler => {
            let d = if instrument.class == C::HeaterShaker {
                crate::codec::module::Dialect::HeaterShaker
            } else {
                crate::codec::module::Dialect::ThermocyclerGen2
            };
            Arc::new(module::ModuleDriver::new(d, link().await?, module::ModuleConfig::for_dialect(d, config.scale)))
        }
        C::PlateReader => Arc::new(reader::PlateReaderDriver::new(
            sila_channel(instrument, endpoint, config, "is a plate reader").await?,
        )),
        C::Sealer | C::Centrifuge | C::Incubator | C::PlateHotel => {
            let kind = match instrument.class {
                C::Sealer => station::StationKind::Sealer,
                C::Centrifuge => station::StationKind::Centrifuge,
                C::Incubator => station::StationKind::Incubator,
                _ => station::StationKind::Hotel,
            };
            Arc::new(station::StationDriver::new(kind, link().await?, station::StationConfig::new(config.scale)))
        }
        C::RobotArm | C::Technician => {
            return Err(InstrumentError::Validation {
                parameter: "class".into(),
                message: format!("{} has no driver of its own", instrument.id),
            })
        }
    })
}

/// A gRPC channel to the SiLA 2 server at a `sila:`/`silas:` endpoint (`silas:` needs the
/// server's CA); `what` says why the instrument needs one, for the error.
async fn sila_channel(
    instrument: &labware::site::Instrument,
    endpoint: &crate::link::Endpoint,
    config: &OpenConfig,
    what: &str,
) -> Result<tonic::transport::Channel, InstrumentError> {
    let crate::link::Endpoint::Sila { address, tls } = endpoint else {
        return Err(InstrumentError::Validation {
            parameter: "endpoint".into(),
            message: format!("{} {what}: give a sila:HOST:PORT or silas:HOST:PORT endpoint", instrument.id),
        });
    };
    let ca = if *tls { config.sila_ca.as_deref() } else { None };
    if *tls && ca.is_none() {
        return Err(InstrumentError::Validation {
            parameter: "tls".into(),
            message: "a silas: endpoint needs the server's CA certificate".into(),
        });
    }
    reader::connect(address, ca, Duration::from_secs(5)).await
}

/// Opens an arm's driver. Motion is polled every 50 ms of device time (at least every 1 ms).
pub async fn open_arm(
    arm: &labware::site::Arm,
    endpoint: &crate::link::Endpoint,
    scale: crate::instrument::TimeScale,
) -> Result<Arc<arm::ArmDriver>, InstrumentError> {
    let link = crate::link::Link::open(endpoint.clone()).await?;
    let config = arm::ArmConfig { poll: scale.wall(0.05).max(Duration::from_micros(200)), ..arm::ArmConfig::default() };
    let taught =
        arm.reach.iter().map(|n| arm.positions.iter().find(|p| &p.nest == n).map(|p| p.joints.clone())).collect();
    let driver = arm::ArmDriver::taught(arm.reach.clone(), taught, link, config);
    driver.verify_positions().await?;
    Ok(Arc::new(driver))
}

/// Opens a plate mover: a Flex's gripper when the arm names its robot (`robot`, with the robot's
/// `opentrons:` endpoint), else a PF400-style arm ([`open_arm`]).
pub async fn open_mover(
    arm: &labware::site::Arm,
    site: &labware::Site,
    endpoint: &crate::link::Endpoint,
    config: &OpenConfig,
) -> Result<Arc<dyn crate::Arm>, InstrumentError> {
    match (&arm.robot, endpoint) {
        (Some(robot), crate::link::Endpoint::Opentrons { address }) => {
            let link = config.robots.link(robot, address, &opentrons::OpentronsConfig::default());
            let driver = opentrons_gripper::OpentronsGripperDriver::new(arm, site, robot, link)?;
            // Proves the robot answers and is a Flex before anything is planned on it.
            crate::Instrument::identify(&driver).await?;
            Ok(Arc::new(driver))
        }
        (Some(robot), _) => Err(InstrumentError::Validation {
            parameter: "endpoint".into(),
            message: format!("{} is {robot}'s gripper: give it the robot's opentrons: endpoint", arm.id),
        }),
        (None, _) => Ok(open_arm(arm, endpoint, config.scale).await?),
    }
}

/// Settings shared by every driver [`open`] makes.
#[derive(Debug, Clone)]
pub struct OpenConfig {
    pub scale: crate::instrument::TimeScale,
    /// CA certificate (PEM) for `silas:` endpoints.
    pub sila_ca: Option<String>,
    /// Opentrons robots, shared by the drivers of their pipettes and modules.
    pub robots: opentrons_link::Robots,
}
