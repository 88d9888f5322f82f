//! The simulated plate reader: a SiLA 2 server (tonic) with `SiLAService` and Labwright's
//! `PlateReader` feature. Reads take device time (scaled), report progress through the
//! observable-command info stream, and return per-well values; the door can be made to stick.

use super::{defined, framework, reject_metadata, uuid_v4, validation};
use crate::instrument::TimeScale;
use crate::sim::bench::SharedBench;
use crate::sim::Faults;
use labware::optics::Reading;
use protos::sila2::fdl;
use protos::sila2::framework::{
    execution_info::CommandStatus, framework_error::ErrorType, Boolean, CommandConfirmation, CommandExecutionUuid,
    Duration as SilaDuration, ExecutionInfo, Real, String as SilaString,
};
use protos::sila2::platereader::{self as pr, plate_reader_server::PlateReaderServer};
use protos::sila2::silaservice::{self as ss, si_la_service_server::SiLaServiceServer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const FEATURE: &str = "org.labwright/instruments/PlateReader/v1";
const SERVICE: &str = "org.silastandard/core/SiLAService/v1";
/// How long the door takes to open or close with the carrier, device seconds.
const DOOR_S: f64 = 4.0;

/// What the simulated reader can do (from the site's instrument entry).
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub name: String,
    pub absorbance_nm: Option<(f64, f64)>,
    pub fluorescence_nm: Option<(f64, f64)>,
    /// Whether it has a luminescence detector.
    pub luminescence: bool,
    pub scale: TimeScale,
    pub faults: Faults,
    /// The plates' contents (the site's bench): reads compute each well's value from it.
    pub bench: SharedBench,
}

impl ReaderConfig {
    pub fn from_site(instrument: &labware::site::Instrument, scale: TimeScale, faults: Faults) -> Self {
        ReaderConfig {
            name: instrument.id.clone(),
            absorbance_nm: instrument.absorbance_nm.map(|r| (r.min, r.max)),
            fluorescence_nm: match (instrument.excitation_nm, instrument.emission_nm) {
                (Some(a), Some(b)) => Some((a.min.min(b.min), a.max.max(b.max))),
                _ => None,
            },
            luminescence: instrument.modes.contains(&labware::site::ReadMode::Luminescence),
            scale,
            faults,
            bench: SharedBench::default(),
        }
    }

    /// The same reader on a site's shared bench.
    pub fn on_bench(self, bench: SharedBench) -> Self {
        ReaderConfig { bench, ..self }
    }
}

/// Values and their unit, or the SiLA error the read ended with.
type ReadResult = Result<(Vec<f64>, String), Status>;

/// A finished or running read.
#[derive(Debug)]
struct Run {
    info: watch::Receiver<ExecutionInfo>,
    result: Arc<Mutex<Option<ReadResult>>>,
}

#[derive(Debug)]
struct ReaderState {
    server_name: String,
    /// Device seconds of door movement and reading since the simulator started (what timing
    /// tests compare the compiler's estimates with).
    busy_s: f64,
    plate: Option<String>,
    runs: HashMap<String, Run>,
}

/// The simulated reader; clones share state.
#[derive(Debug, Clone)]
pub struct ReaderSim {
    config: Arc<ReaderConfig>,
    uuid: Arc<String>,
    state: Arc<Mutex<ReaderState>>,
    power: PowerSwitch,
}

/// A simulator's mains switch: while off, every call fails as an unreachable server does
/// (gRPC UNAVAILABLE), so tests can take an instrument down mid-run and bring it back.
#[derive(Debug, Clone)]
pub struct PowerSwitch(Arc<std::sync::atomic::AtomicBool>);

impl Default for PowerSwitch {
    fn default() -> Self {
        PowerSwitch(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }
}

impl PowerSwitch {
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

type InfoStream = Pin<Box<dyn Stream<Item = Result<ExecutionInfo, Status>> + Send>>;
type TemperatureStream = Pin<Box<dyn Stream<Item = Result<pr::SubscribeCurrentTemperatureResponses, Status>> + Send>>;

fn text(v: &str) -> Option<SilaString> {
    Some(SilaString { value: v.into() })
}

fn param(command: &str, parameter: &str) -> String {
    format!("{FEATURE}/Command/{command}/Parameter/{parameter}")
}

fn error_id(name: &str) -> String {
    format!("{FEATURE}/DefinedExecutionError/{name}")
}

/// What a read measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Absorbance,
    Fluorescence,
    /// Light collected for this many seconds per well.
    Luminescence(f64),
}

impl Mode {
    fn unit(self) -> &'static str {
        match self {
            Mode::Absorbance => "OD",
            Mode::Fluorescence => "RFU",
            Mode::Luminescence(_) => "RLU",
        }
    }
}

impl ReaderSim {
    pub fn new(config: ReaderConfig) -> Self {
        let name = config.name.clone();
        ReaderSim {
            config: Arc::new(config),
            uuid: Arc::new(uuid_v4()),
            state: Arc::new(Mutex::new(ReaderState {
                server_name: name,
                busy_s: 0.0,
                plate: None,
                runs: HashMap::new(),
            })),
            power: PowerSwitch::default(),
        }
    }

    /// Device seconds spent moving the door and reading so far.
    pub fn busy_s(&self) -> f64 {
        self.state.lock().map_or(0.0, |s| s.busy_s)
    }

    /// The switch that powers this reader off and on.
    pub fn power(&self) -> PowerSwitch {
        self.power.clone()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ReaderState>, Status> {
        self.state.lock().map_err(|_| Status::internal("reader state poisoned"))
    }

    /// Serves SiLAService and PlateReader on `addr` (port 0 picks one); with `tls` = (cert PEM,
    /// key PEM) over TLS. Returns the bound address.
    pub async fn serve(self, addr: &str, tls: Option<(String, String)>) -> std::io::Result<SocketAddr> {
        self.serve_owned(addr, tls).await.map(|(bound, _detached)| bound)
    }

    /// As [`ReaderSim::serve`], with the server's task: aborting it closes the listener.
    pub async fn serve_owned(
        self,
        addr: &str,
        tls: Option<(String, String)>,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(std::io::Error::other)?;
        }
        let (p1, p2) = (self.power.clone(), self.power.clone());
        let powered = |p: PowerSwitch| {
            move |req: Request<()>| {
                if p.is_on() {
                    Ok(req)
                } else {
                    Err(Status::unavailable("the instrument is powered off"))
                }
            }
        };
        let router = builder
            .add_service(SiLaServiceServer::with_interceptor(self.clone(), powered(p1)))
            .add_service(PlateReaderServer::with_interceptor(self, powered(p2)));
        let incoming = super::nodelay_incoming(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::warn!(error = %e, "the simulated reader's server stopped");
            }
        });
        Ok((bound, task))
    }

    fn check_wells(&self, command: &str, wells: &[SilaString]) -> Result<Vec<String>, Status> {
        if wells.is_empty() {
            return Err(validation(&param(command, "Wells"), "give at least one well, e.g. A1"));
        }
        wells
            .iter()
            .map(|w| {
                let name = w.value.trim().to_string();
                let ok = labware::WellSelection::parse(&name).is_ok() && name.len() <= 4;
                if ok {
                    Ok(name)
                } else {
                    Err(validation(
                        &param(command, "Wells"),
                        format!("`{}` is not a well name like A1 or H12", w.value),
                    ))
                }
            })
            .collect()
    }

    fn check_wavelength(
        &self,
        command: &str,
        parameter: &str,
        nm: f64,
        range: Option<(f64, f64)>,
    ) -> Result<(), Status> {
        let Some((lo, hi)) = range else {
            return Err(validation(
                &param(command, parameter),
                format!("{} cannot measure this mode", self.config.name),
            ));
        };
        if !nm.is_finite() || nm < lo || nm > hi {
            return Err(validation(
                &param(command, parameter),
                format!("{nm} nm is outside this reader's range {lo} to {hi} nm"),
            ));
        }
        Ok(())
    }

    /// Starts a read in the background; returns the confirmation.
    fn launch(
        &self,
        command: &'static str,
        wells: Vec<String>,
        wavelengths: Vec<f64>,
        mode: Mode,
    ) -> Result<CommandConfirmation, Status> {
        let uuid = uuid_v4();
        let per_well = match mode {
            Mode::Luminescence(integration_s) => 0.05 + integration_s,
            _ => 0.05,
        };
        let seconds = 5.0 + per_well * (wells.len() * wavelengths.len().max(1)) as f64;
        let (tx, rx) = watch::channel(info(CommandStatus::Waiting, 0.0, seconds));
        let result = Arc::new(Mutex::new(None));
        let plate = {
            let mut st = self.lock()?;
            st.busy_s += seconds;
            st.plate.clone()
        };
        self.lock()?.runs.insert(uuid.clone(), Run { info: rx, result: result.clone() });
        let scale = self.config.scale;
        let hang = self.config.faults.timeout_on.iter().any(|w| w == command);
        let fail = self.config.faults.error_for(command).map(str::to_string);
        let bench = self.config.bench.clone();
        tokio::spawn(async move {
            let steps = 10;
            for i in 0..steps {
                let _ = tx.send(info(
                    CommandStatus::Running,
                    i as f64 / steps as f64,
                    seconds * (1.0 - i as f64 / steps as f64),
                ));
                crate::sim::pause(scale.wall(seconds / steps as f64)).await;
            }
            if hang {
                // The injected fault: the read never finishes (the info stream stays open).
                std::future::pending::<()>().await;
            }
            let outcome = match (plate, fail) {
                (None, _) => {
                    Err(defined(&error_id("NoPlateLoaded"), "there is no plate in the reader; load one first"))
                }
                (_, Some(code)) => Err(defined(&error_id(&code), format!("injected device error {code}"))),
                (Some(plate), None) => match bench.lock() {
                    Ok(bench) => {
                        // Absorbance: every wavelength of a well in turn; the others one value per well.
                        let readings: Vec<Reading> = match mode {
                            Mode::Absorbance => wavelengths.iter().map(|&nm| Reading::Absorbance { nm }).collect(),
                            Mode::Fluorescence => vec![Reading::Fluorescence],
                            Mode::Luminescence(seconds) => vec![Reading::Luminescence { seconds }],
                        };
                        let values =
                            wells.iter().flat_map(|w| readings.iter().map(|&r| bench.read(&plate, w, r))).collect();
                        Ok((values, mode.unit().to_string()))
                    }
                    Err(_) => Err(Status::internal("the simulated plates' state is lost")),
                },
            };
            let status =
                if outcome.is_ok() { CommandStatus::FinishedSuccessfully } else { CommandStatus::FinishedWithError };
            if let Ok(mut r) = result.lock() {
                *r = Some(outcome);
            }
            let _ = tx.send(info(status, 1.0, 0.0));
        });
        Ok(CommandConfirmation {
            command_execution_uuid: Some(CommandExecutionUuid { value: uuid }),
            lifetime_of_execution: None,
        })
    }

    fn info_stream(&self, uuid: &CommandExecutionUuid) -> Result<InfoStream, Status> {
        let mut rx = self.lock()?.runs.get(&uuid.value).map(|r| r.info.clone()).ok_or_else(|| {
            framework(ErrorType::InvalidCommandExecutionUuid, format!("no command execution {}", uuid.value))
        })?;
        let stream = async_stream(move |yield_| async move {
            loop {
                let current = *rx.borrow_and_update();
                let done = matches!(
                    CommandStatus::try_from(current.command_status),
                    Ok(CommandStatus::FinishedSuccessfully | CommandStatus::FinishedWithError)
                );
                if yield_.send(Ok(current)).await.is_err() || done {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }

    fn result(&self, uuid: &CommandExecutionUuid) -> Result<(Vec<f64>, String), Status> {
        let st = self.lock()?;
        let run = st.runs.get(&uuid.value).ok_or_else(|| {
            framework(ErrorType::InvalidCommandExecutionUuid, format!("no command execution {}", uuid.value))
        })?;
        let r = run.result.lock().map_err(|_| Status::internal("poisoned"))?;
        match r.as_ref() {
            None => Err(framework(
                ErrorType::CommandExecutionNotFinished,
                "the read is still running; wait for it to finish",
            )),
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(s)) => Err(s.clone()),
        }
    }

    async fn door(&self, command: &str) -> Result<(), Status> {
        if self.config.faults.stuck_door {
            return Err(defined(&error_id("DoorStuck"), "the door did not move; a technician must check the reader"));
        }
        if let Some(code) = self.config.faults.error_for(command) {
            return Err(defined(&error_id(code), format!("injected device error {code}")));
        }
        self.lock()?.busy_s += DOOR_S;
        crate::sim::pause(self.config.scale.wall(DOOR_S)).await;
        Ok(())
    }
}

fn info(status: CommandStatus, progress: f64, remaining_s: f64) -> ExecutionInfo {
    ExecutionInfo {
        command_status: status as i32,
        progress_info: Some(Real { value: progress }),
        estimated_remaining_time: Some(SilaDuration { seconds: remaining_s.max(0.0) as i64, nanos: 0 }),
        updated_lifetime_of_execution: None,
    }
}

/// A tiny generator: the closure gets a sender and pushes items; the receiver is the stream.
fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl ss::si_la_service_server::SiLaService for ReaderSim {
    async fn get_feature_definition(
        &self,
        req: Request<ss::GetFeatureDefinitionParameters>,
    ) -> Result<Response<ss::GetFeatureDefinitionResponses>, Status> {
        reject_metadata(&req)?;
        let p = "org.silastandard/core/SiLAService/v1/Command/GetFeatureDefinition/Parameter/FeatureIdentifier";
        let Some(id) = req.into_inner().feature_identifier else {
            return Err(validation(p, "the FeatureIdentifier parameter is missing"));
        };
        let parts: Vec<&str> = id.value.split('/').collect();
        if parts.len() != 4 || !parts[3].starts_with('v') {
            return Err(validation(p, format!("`{}` is not a fully qualified feature identifier", id.value)));
        }
        let body = match id.value.as_str() {
            SERVICE => fdl::SILA_SERVICE,
            FEATURE => fdl::PLATE_READER,
            other => {
                return Err(defined(
                    "org.silastandard/core/SiLAService/v1/DefinedExecutionError/UnimplementedFeature",
                    format!("this server does not implement {other}"),
                ))
            }
        };
        Ok(Response::new(ss::GetFeatureDefinitionResponses { feature_definition: text(body) }))
    }

    async fn set_server_name(
        &self,
        req: Request<ss::SetServerNameParameters>,
    ) -> Result<Response<ss::SetServerNameResponses>, Status> {
        reject_metadata(&req)?;
        let p = "org.silastandard/core/SiLAService/v1/Command/SetServerName/Parameter/ServerName";
        let Some(name) = req.into_inner().server_name else {
            return Err(validation(p, "the ServerName parameter is missing"));
        };
        if name.value.chars().count() > 255 {
            return Err(validation(p, "a server name is at most 255 characters"));
        }
        self.lock()?.server_name = name.value;
        Ok(Response::new(ss::SetServerNameResponses {}))
    }

    async fn get_server_name(
        &self,
        req: Request<ss::GetServerNameParameters>,
    ) -> Result<Response<ss::GetServerNameResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetServerNameResponses { server_name: text(&self.lock()?.server_name) }))
    }

    async fn get_server_type(
        &self,
        req: Request<ss::GetServerTypeParameters>,
    ) -> Result<Response<ss::GetServerTypeResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetServerTypeResponses { server_type: text("LabwrightSimulatedPlateReader") }))
    }

    async fn get_server_uuid(
        &self,
        req: Request<ss::GetServerUuidParameters>,
    ) -> Result<Response<ss::GetServerUuidResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetServerUuidResponses { server_uuid: text(&self.uuid) }))
    }

    async fn get_server_description(
        &self,
        req: Request<ss::GetServerDescriptionParameters>,
    ) -> Result<Response<ss::GetServerDescriptionResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetServerDescriptionResponses {
            server_description: text(
                "Labwright's simulated microplate reader: absorbance, fluorescence and luminescence, per-well values",
            ),
        }))
    }

    async fn get_server_version(
        &self,
        req: Request<ss::GetServerVersionParameters>,
    ) -> Result<Response<ss::GetServerVersionResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetServerVersionResponses { server_version: text("0.1.0_labwright_sim") }))
    }

    async fn get_server_vendor_url(
        &self,
        req: Request<ss::GetServerVendorUrlParameters>,
    ) -> Result<Response<ss::GetServerVendorUrlResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetServerVendorUrlResponses { server_vendor_url: text("https://labwright.org") }))
    }

    async fn get_implemented_features(
        &self,
        req: Request<ss::GetImplementedFeaturesParameters>,
    ) -> Result<Response<ss::GetImplementedFeaturesResponses>, Status> {
        reject_metadata(&req)?;
        Ok(Response::new(ss::GetImplementedFeaturesResponses {
            implemented_features: vec![SilaString { value: SERVICE.into() }, SilaString { value: FEATURE.into() }],
        }))
    }
}

#[tonic::async_trait]
impl pr::plate_reader_server::PlateReader for ReaderSim {
    type ReadAbsorbance_InfoStream = InfoStream;
    type ReadFluorescence_InfoStream = InfoStream;
    type ReadLuminescence_InfoStream = InfoStream;
    type Subscribe_CurrentTemperatureStream = TemperatureStream;

    async fn read_absorbance(
        &self,
        req: Request<pr::ReadAbsorbanceParameters>,
    ) -> Result<Response<CommandConfirmation>, Status> {
        let p = req.into_inner();
        let wells = self.check_wells("ReadAbsorbance", &p.wells)?;
        if p.wavelengths.is_empty() {
            return Err(validation(&param("ReadAbsorbance", "Wavelengths"), "give at least one wavelength in nm"));
        }
        let wl: Vec<f64> = p.wavelengths.iter().map(|r| r.value).collect();
        for &w in &wl {
            self.check_wavelength("ReadAbsorbance", "Wavelengths", w, self.config.absorbance_nm)?;
        }
        self.launch("ReadAbsorbance", wells, wl, Mode::Absorbance).map(Response::new)
    }

    async fn read_absorbance_info(&self, req: Request<CommandExecutionUuid>) -> Result<Response<InfoStream>, Status> {
        self.info_stream(req.get_ref()).map(Response::new)
    }

    async fn read_absorbance_result(
        &self,
        req: Request<CommandExecutionUuid>,
    ) -> Result<Response<pr::ReadAbsorbanceResponses>, Status> {
        let (values, unit) = self.result(req.get_ref())?;
        Ok(Response::new(pr::ReadAbsorbanceResponses {
            values: values.into_iter().map(|value| Real { value }).collect(),
            unit: text(&unit),
        }))
    }

    async fn read_fluorescence(
        &self,
        req: Request<pr::ReadFluorescenceParameters>,
    ) -> Result<Response<CommandConfirmation>, Status> {
        let p = req.into_inner();
        let wells = self.check_wells("ReadFluorescence", &p.wells)?;
        let ex = p.excitation_wavelength.map(|r| r.value).ok_or_else(|| {
            validation(&param("ReadFluorescence", "ExcitationWavelength"), "the excitation wavelength is missing")
        })?;
        let em = p.emission_wavelength.map(|r| r.value).ok_or_else(|| {
            validation(&param("ReadFluorescence", "EmissionWavelength"), "the emission wavelength is missing")
        })?;
        self.check_wavelength("ReadFluorescence", "ExcitationWavelength", ex, self.config.fluorescence_nm)?;
        self.check_wavelength("ReadFluorescence", "EmissionWavelength", em, self.config.fluorescence_nm)?;
        if em <= ex {
            return Err(validation(
                &param("ReadFluorescence", "EmissionWavelength"),
                format!("emission {em} nm must be longer than excitation {ex} nm"),
            ));
        }
        self.launch("ReadFluorescence", wells, vec![ex, em], Mode::Fluorescence).map(Response::new)
    }

    async fn read_fluorescence_info(&self, req: Request<CommandExecutionUuid>) -> Result<Response<InfoStream>, Status> {
        self.info_stream(req.get_ref()).map(Response::new)
    }

    async fn read_fluorescence_result(
        &self,
        req: Request<CommandExecutionUuid>,
    ) -> Result<Response<pr::ReadFluorescenceResponses>, Status> {
        let (values, unit) = self.result(req.get_ref())?;
        Ok(Response::new(pr::ReadFluorescenceResponses {
            values: values.into_iter().map(|value| Real { value }).collect(),
            unit: text(&unit),
        }))
    }

    async fn read_luminescence(
        &self,
        req: Request<pr::ReadLuminescenceParameters>,
    ) -> Result<Response<CommandConfirmation>, Status> {
        let p = req.into_inner();
        let wells = self.check_wells("ReadLuminescence", &p.wells)?;
        if !self.config.luminescence {
            return Err(validation(
                &param("ReadLuminescence", "Wells"),
                format!("{} has no luminescence detector", self.config.name),
            ));
        }
        let seconds = p.integration_time.map_or(1.0, |r| r.value);
        if !(0.1..=10.0).contains(&seconds) {
            return Err(validation(
                &param("ReadLuminescence", "IntegrationTime"),
                format!("{seconds} s is outside 0.1 to 10 s per well"),
            ));
        }
        self.launch("ReadLuminescence", wells, Vec::new(), Mode::Luminescence(seconds)).map(Response::new)
    }

    async fn read_luminescence_info(&self, req: Request<CommandExecutionUuid>) -> Result<Response<InfoStream>, Status> {
        self.info_stream(req.get_ref()).map(Response::new)
    }

    async fn read_luminescence_result(
        &self,
        req: Request<CommandExecutionUuid>,
    ) -> Result<Response<pr::ReadLuminescenceResponses>, Status> {
        let (values, unit) = self.result(req.get_ref())?;
        Ok(Response::new(pr::ReadLuminescenceResponses {
            values: values.into_iter().map(|value| Real { value }).collect(),
            unit: text(&unit),
        }))
    }

    async fn load_plate(
        &self,
        req: Request<pr::LoadPlateParameters>,
    ) -> Result<Response<pr::LoadPlateResponses>, Status> {
        let name = req.into_inner().labware.map(|s| s.value).unwrap_or_default();
        if name.trim().is_empty() {
            return Err(validation(&param("LoadPlate", "Labware"), "name the plate being loaded"));
        }
        if let Some(p) = &self.lock()?.plate {
            return Err(defined(
                &error_id("PlateAlreadyLoaded"),
                format!("plate `{p}` is still in the reader; eject it first"),
            ));
        }
        self.door("LoadPlate").await?;
        self.lock()?.plate = Some(name);
        Ok(Response::new(pr::LoadPlateResponses {}))
    }

    async fn eject_plate(
        &self,
        _req: Request<pr::EjectPlateParameters>,
    ) -> Result<Response<pr::EjectPlateResponses>, Status> {
        if self.lock()?.plate.is_none() {
            return Err(defined(&error_id("NoPlateLoaded"), "there is no plate in the reader to eject"));
        }
        self.door("EjectPlate").await?;
        self.lock()?.plate = None;
        Ok(Response::new(pr::EjectPlateResponses {}))
    }

    async fn subscribe_current_temperature(
        &self,
        _req: Request<pr::SubscribeCurrentTemperatureParameters>,
    ) -> Result<Response<TemperatureStream>, Status> {
        let period = self.config.scale.wall(1.0).max(std::time::Duration::from_millis(10));
        let stream = async_stream(move |tx| async move {
            loop {
                let v = pr::SubscribeCurrentTemperatureResponses { current_temperature: Some(Real { value: 25.0 }) };
                if tx.send(Ok(v)).await.is_err() {
                    return;
                }
                tokio::time::sleep(period).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_plate_present(
        &self,
        _req: Request<pr::GetPlatePresentParameters>,
    ) -> Result<Response<pr::GetPlatePresentResponses>, Status> {
        let present = self.lock()?.plate.is_some();
        Ok(Response::new(pr::GetPlatePresentResponses { plate_present: Some(Boolean { value: present }) }))
    }
}
