//! Plate-reader driver: SiLA 2 over gRPC. The plate is loaded through the door when it is not
//! already in, read with an observable command (progress from the info stream), and ejected.

use super::{spawn, Cancel};
use crate::error::InstrumentError;
use crate::instrument::{unsupported, Execution, Identity, Instrument, Measurement, Outcome, State, Status};
use crate::sila::{FeatureClient, SILA_SERVICE};
use protocols::plan::CommandOp;
use protos::sila2::framework::{Real, String as SilaString};
use protos::sila2::platereader as pr;
use protos::sila2::silaservice as ss;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// gRPC service names.
const PLATE_READER: &str = "sila2.org.labwright.instruments.platereader.v1.PlateReader";

/// Opens a channel to a SiLA server; `ca_pem` switches to TLS trusting that CA (SiLA servers
/// usually present a self-signed certificate whose CA the operator exports).
pub async fn connect(address: &str, ca_pem: Option<&str>, within: Duration) -> Result<Channel, InstrumentError> {
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| InstrumentError::Validation { parameter: "endpoint".into(), message: format!("{address}: {e}") })?
        .connect_timeout(within)
        .tcp_nodelay(true);
    if let Some(ca) = ca_pem {
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h).to_string();
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(host);
        ep = ep
            .tls_config(tls)
            .map_err(|e| InstrumentError::Validation { parameter: "tls".into(), message: e.to_string() })?;
    }
    ep.connect().await.map_err(|e| InstrumentError::Disconnected(format!("cannot reach SiLA server {address}: {e:?}")))
}

/// One plate reader.
#[derive(Debug, Clone)]
pub struct PlateReaderDriver {
    channel: Channel,
    cancel: Arc<Cancel>,
}

fn s(v: &str) -> Option<SilaString> {
    Some(SilaString { value: v.into() })
}

impl PlateReaderDriver {
    pub fn new(channel: Channel) -> Self {
        PlateReaderDriver { channel, cancel: Arc::new(Cancel::default()) }
    }

    fn reader(&self) -> FeatureClient {
        FeatureClient::new(self.channel.clone(), PLATE_READER)
    }

    fn service(&self) -> FeatureClient {
        FeatureClient::new(self.channel.clone(), SILA_SERVICE)
    }

    /// Whether a plate is in the reader.
    pub async fn plate_present(&self) -> Result<bool, InstrumentError> {
        let r: pr::GetPlatePresentResponses =
            self.reader().unary("Get_PlatePresent", pr::GetPlatePresentParameters {}).await?;
        Ok(r.plate_present.is_some_and(|b| b.value))
    }

    /// Loads a plate through the door.
    pub async fn load(&self, labware: &str) -> Result<(), InstrumentError> {
        let _: pr::LoadPlateResponses =
            self.reader().unary("LoadPlate", pr::LoadPlateParameters { labware: s(labware) }).await?;
        Ok(())
    }

    /// Ejects the plate.
    pub async fn eject(&self) -> Result<(), InstrumentError> {
        let _: pr::EjectPlateResponses = self.reader().unary("EjectPlate", pr::EjectPlateParameters {}).await?;
        Ok(())
    }

    /// The feature definitions the server implements.
    pub async fn features(&self) -> Result<Vec<String>, InstrumentError> {
        let r: ss::GetImplementedFeaturesResponses =
            self.service().unary("Get_ImplementedFeatures", ss::GetImplementedFeaturesParameters {}).await?;
        Ok(r.implemented_features.into_iter().map(|f| f.value).collect())
    }
}

#[async_trait::async_trait]
impl Instrument for PlateReaderDriver {
    async fn identify(&self) -> Result<Identity, InstrumentError> {
        crate::sila::identify(self.channel.clone()).await
    }

    async fn start(&self, op: &CommandOp) -> Result<Execution, InstrumentError> {
        let (labware, wells, kind) = match op {
            CommandOp::ReadAbsorbance { labware, wells, wavelengths_nm } => {
                if wavelengths_nm.is_empty() {
                    return Err(InstrumentError::Validation {
                        parameter: "wavelengths_nm".into(),
                        message: "no wavelength to read".into(),
                    });
                }
                (labware.clone(), wells.clone(), Read::Absorbance(wavelengths_nm.clone()))
            }
            CommandOp::ReadFluorescence { labware, wells, excitation_nm, emission_nm } => {
                (labware.clone(), wells.clone(), Read::Fluorescence(*excitation_nm, *emission_nm))
            }
            CommandOp::ReadLuminescence { labware, wells } => (labware.clone(), wells.clone(), Read::Luminescence),
            other => return Err(unsupported("a plate reader", other)),
        };
        self.cancel.reset();
        let me = self.clone();
        Ok(spawn(move |tx| async move {
            let loaded_here = !me.plate_present().await?;
            if loaded_here {
                tx.progress(0.0, format!("loading {labware}"));
                me.load(&labware).await?;
            }
            let mut result = me.read(&tx, labware.clone(), wells.clone(), kind.clone()).await;
            if let (Err(InstrumentError::Device { code, .. }), false) = (&result, loaded_here) {
                if code.ends_with("NoPlateLoaded") {
                    // The plate left as the read began (an eject still under way from before a
                    // restart): it is at the door; load it and read.
                    me.load(&labware).await?;
                    result = me.read(&tx, labware, wells, kind).await;
                }
            }
            if let (Err(InstrumentError::Validation { .. }), true) = (&result, loaded_here) {
                // Nothing was measured: give the plate back so the arm can take it away.
                me.eject().await?;
            }
            result
        }))
    }

    async fn status(&self) -> Result<Status, InstrumentError> {
        let present = self.plate_present().await?;
        let mut temps: tonic::Streaming<pr::SubscribeCurrentTemperatureResponses> =
            self.reader().stream("Subscribe_CurrentTemperature", pr::SubscribeCurrentTemperatureParameters {}).await?;
        let t = match tokio::time::timeout(Duration::from_secs(5), temps.message()).await {
            Ok(Ok(Some(m))) => m.current_temperature.map(|r| r.value),
            _ => None,
        };
        Ok(Status {
            state: State::Idle,
            temperature_c: t,
            detail: format!("plate {}", if present { "loaded" } else { "absent" }),
        })
    }

    async fn abort(&self) -> Result<(), InstrumentError> {
        self.cancel.fire();
        Ok(())
    }

    /// A plate left inside after a failed read is ejected (the plan's next move takes it away,
    /// and the next run never reads a plate that is not its own); checked with PlatePresent.
    async fn make_safe(&self) -> Result<String, InstrumentError> {
        if !self.plate_present().await? {
            return Ok("no plate inside".into());
        }
        self.eject().await?;
        if self.plate_present().await? {
            return Err(crate::instrument::unsafe_state("a plate is still inside after ejecting it"));
        }
        Ok("ejected the plate".into())
    }
}

impl PlateReaderDriver {
    async fn read(
        &self,
        tx: &crate::instrument::ExecutionSender,
        labware: String,
        wells: Vec<String>,
        kind: Read,
    ) -> Result<Outcome, InstrumentError> {
        let me = self;
        me.cancel.check()?;
        let report = |p: f64| tx.progress(p, "reading");
        let mut reader = me.reader();
        let sila_wells: Vec<SilaString> = wells.iter().map(|w| SilaString { value: w.clone() }).collect();
        let (values, unit, wavelengths, kind_name) = match kind {
            Read::Absorbance(wl) => {
                let params = pr::ReadAbsorbanceParameters {
                    wells: sila_wells,
                    wavelengths: wl.iter().map(|&value| Real { value }).collect(),
                };
                let r: pr::ReadAbsorbanceResponses = reader.observe("ReadAbsorbance", params, &report).await?;
                (r.values, r.unit, wl, "absorbance")
            }
            Read::Fluorescence(ex, em) => {
                let params = pr::ReadFluorescenceParameters {
                    wells: sila_wells,
                    excitation_wavelength: Some(Real { value: ex }),
                    emission_wavelength: Some(Real { value: em }),
                };
                let r: pr::ReadFluorescenceResponses = reader.observe("ReadFluorescence", params, &report).await?;
                (r.values, r.unit, vec![ex, em], "fluorescence")
            }
            Read::Luminescence => {
                let params = pr::ReadLuminescenceParameters {
                    wells: sila_wells,
                    integration_time: Some(Real { value: LUMINESCENCE_INTEGRATION_S }),
                };
                let r: pr::ReadLuminescenceResponses = reader.observe("ReadLuminescence", params, &report).await?;
                (r.values, r.unit, Vec::new(), "luminescence")
            }
        };
        let per_well = if kind_name == "absorbance" { wavelengths.len() } else { 1 };
        if values.len() != wells.len() * per_well {
            return Err(InstrumentError::Protocol(format!(
                "the reader returned {} values for {} wells × {per_well}",
                values.len(),
                wells.len()
            )));
        }
        me.eject().await?;
        Ok(Outcome {
            measurements: vec![Measurement {
                labware,
                kind: kind_name.into(),
                wells,
                wavelengths_nm: wavelengths,
                values: values.into_iter().map(|r| r.value).collect(),
                unit: unit.map(|u| u.value).unwrap_or_default(),
            }],
        })
    }
}

#[derive(Debug, Clone)]
enum Read {
    Absorbance(Vec<f64>),
    Fluorescence(f64, f64),
    Luminescence,
}

/// Seconds of light collected per well in a luminescence read: 1 s, the usual setting for
/// glow assays such as CellTiter-Glo (the compiler's time estimate assumes the same).
pub const LUMINESCENCE_INTEGRATION_S: f64 = 1.0;
