//! SiLA 2 over gRPC: the error encoding (gRPC status ABORTED whose message is a base64-encoded
//! `SiLAError`), the observable-command client protocol every feature shares, and the simulated
//! plate reader ([`server`]).

pub mod dynamic;
pub mod fdl;
pub mod server;

use crate::error::InstrumentError;
use base64::Engine;
use prost::Message;
use protos::sila2::framework::{
    self as fw, execution_info::CommandStatus, framework_error::ErrorType, si_la_error, CommandConfirmation,
    CommandExecutionUuid, ExecutionInfo, SiLaError,
};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// Accepted connections of a listener with TCP_NODELAY set: small request/reply messages
/// otherwise wait for Nagle and delayed ACKs (40 ms on loopback).
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
        s.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    })
}

/// Wraps a SiLA error in the gRPC status the standard prescribes.
pub fn status(error: si_la_error::Error) -> tonic::Status {
    let bytes = SiLaError { error: Some(error) }.encode_to_vec();
    tonic::Status::aborted(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A validation error for a fully qualified parameter identifier.
pub fn validation(parameter: &str, message: impl Into<String>) -> tonic::Status {
    status(si_la_error::Error::ValidationError(fw::ValidationError {
        parameter: parameter.into(),
        message: message.into(),
    }))
}

/// A defined execution error for a fully qualified error identifier.
pub fn defined(identifier: &str, message: impl Into<String>) -> tonic::Status {
    status(si_la_error::Error::DefinedExecutionError(fw::DefinedExecutionError {
        error_identifier: identifier.into(),
        message: message.into(),
    }))
}

/// A framework error.
pub fn framework(kind: ErrorType, message: impl Into<String>) -> tonic::Status {
    status(si_la_error::Error::FrameworkError(fw::FrameworkError { error_type: kind as i32, message: message.into() }))
}

/// Decodes a gRPC status from a SiLA server into the classified error.
pub fn classify(s: &tonic::Status) -> InstrumentError {
    use tonic::Code;
    match s.code() {
        Code::Aborted => match base64::engine::general_purpose::STANDARD
            .decode(s.message().trim())
            .ok()
            .and_then(|b| SiLaError::decode(b.as_slice()).ok())
            .and_then(|e| e.error)
        {
            Some(si_la_error::Error::ValidationError(v)) => {
                InstrumentError::Validation { parameter: v.parameter, message: v.message }
            }
            Some(si_la_error::Error::DefinedExecutionError(d)) => InstrumentError::Device {
                code: d.error_identifier.rsplit('/').next().unwrap_or_default().to_string(),
                message: d.message,
            },
            Some(si_la_error::Error::UndefinedExecutionError(u)) => {
                InstrumentError::Device { code: "UndefinedExecutionError".into(), message: u.message }
            }
            Some(si_la_error::Error::FrameworkError(f)) => match ErrorType::try_from(f.error_type) {
                Ok(ErrorType::CommandExecutionNotAccepted) => InstrumentError::Busy(f.message),
                _ => InstrumentError::Protocol(format!("SiLA framework error: {}", f.message)),
            },
            None => InstrumentError::Protocol(format!("ABORTED without a decodable SiLAError: {:?}", s.message())),
        },
        Code::Unavailable => InstrumentError::Disconnected(s.message().to_string()),
        Code::DeadlineExceeded => InstrumentError::Timeout(std::time::Duration::ZERO),
        Code::Cancelled => InstrumentError::Cancelled,
        _ => InstrumentError::Protocol(format!("gRPC {:?}: {}", s.code(), s.message())),
    }
}

/// Rejects SiLA client metadata on calls that allow none (all of SiLAService).
pub fn reject_metadata<T>(req: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let has = req.metadata().keys().any(|k| {
        let name = match k {
            tonic::metadata::KeyRef::Ascii(k) => k.as_str(),
            tonic::metadata::KeyRef::Binary(k) => k.as_str(),
        };
        name.starts_with("sila-")
    });
    if has {
        return Err(framework(ErrorType::NoMetadataAllowed, "this call accepts no SiLA client metadata"));
    }
    Ok(())
}

/// A random (version 4) UUID, for execution and server identifiers.
pub fn uuid_v4() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_usize(i);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// The gRPC service of the SiLAService feature every SiLA 2 server implements.
pub const SILA_SERVICE: &str = "sila2.org.silastandard.core.silaservice.v1.SiLAService";

/// Who a SiLA 2 server says it is: its type, UUID and version (SiLAService).
pub async fn identify(channel: Channel) -> Result<crate::instrument::Identity, InstrumentError> {
    use protos::sila2::silaservice as ss;
    let mut svc = FeatureClient::new(channel, SILA_SERVICE);
    let t: ss::GetServerTypeResponses = svc.unary("Get_ServerType", ss::GetServerTypeParameters {}).await?;
    let u: ss::GetServerUuidResponses = svc.unary("Get_ServerUUID", ss::GetServerUuidParameters {}).await?;
    let v: ss::GetServerVersionResponses = svc.unary("Get_ServerVersion", ss::GetServerVersionParameters {}).await?;
    let get = |x: Option<fw::String>| x.map(|s| s.value).unwrap_or_default();
    Ok(crate::instrument::Identity {
        model: get(t.server_type),
        serial: get(u.server_uuid),
        firmware: get(v.server_version),
    })
}

/// Calls of one feature on a channel, by method name (works for any feature, generated or not).
#[derive(Debug, Clone)]
pub struct FeatureClient {
    grpc: tonic::client::Grpc<Channel>,
    service: String,
}

impl FeatureClient {
    /// `service` is the gRPC service name, e.g. `sila2.org.labwright.instruments.platereader.v1.PlateReader`.
    pub fn new(channel: Channel, service: &str) -> Self {
        FeatureClient { grpc: tonic::client::Grpc::new(channel), service: service.into() }
    }

    /// The method's path, once the channel is ready for a call.
    async fn ready(&mut self, method: &str) -> Result<PathAndQuery, InstrumentError> {
        let path = PathAndQuery::try_from(format!("/{}/{method}", self.service))
            .map_err(|e| InstrumentError::Validation { parameter: "method".into(), message: e.to_string() })?;
        self.grpc.ready().await.map_err(|e| InstrumentError::Disconnected(e.to_string()))?;
        Ok(path)
    }

    /// One unary call.
    pub async fn unary<P, R>(&mut self, method: &str, params: P) -> Result<R, InstrumentError>
    where
        P: Message + Send + Sync + 'static,
        R: Message + Default + Send + Sync + 'static,
    {
        let path = self.ready(method).await?;
        let codec = tonic_prost::ProstCodec::<P, R>::default();
        self.grpc
            .unary(tonic::Request::new(params), path, codec)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| classify(&s))
    }

    /// Opens a server stream.
    pub async fn stream<P, R>(&mut self, method: &str, params: P) -> Result<tonic::Streaming<R>, InstrumentError>
    where
        P: Message + Send + Sync + 'static,
        R: Message + Default + Send + Sync + 'static,
    {
        let path = self.ready(method).await?;
        let codec = tonic_prost::ProstCodec::<P, R>::default();
        self.grpc
            .server_streaming(tonic::Request::new(params), path, codec)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| classify(&s))
    }

    /// Runs an observable command to the end: start it, follow `<Command>_Info` until it
    /// finishes (reporting progress), then fetch `<Command>_Result`.
    pub async fn observe<P, R>(
        &mut self,
        command: &str,
        params: P,
        progress: &(dyn Fn(f64) + Sync),
    ) -> Result<R, InstrumentError>
    where
        P: Message + Send + Sync + 'static,
        R: Message + Default + Send + Sync + 'static,
    {
        let confirmation: CommandConfirmation = self.unary(command, params).await?;
        let uuid = confirmation
            .command_execution_uuid
            .ok_or_else(|| InstrumentError::Protocol(format!("{command}: confirmation without an execution UUID")))?;
        // From here the server has accepted the command: a lost connection no longer means
        // "nothing happened" but "nobody knows how far it got".
        let under_way = |e: InstrumentError| match e {
            InstrumentError::Disconnected(m) => InstrumentError::Protocol(format!(
                "{command}: the server went away while the command ran ({m}); how far it got is not known"
            )),
            other => other,
        };
        self.follow(command, uuid, progress).await.map_err(under_way)
    }

    async fn follow<R>(
        &mut self,
        command: &str,
        uuid: CommandExecutionUuid,
        progress: &(dyn Fn(f64) + Sync),
    ) -> Result<R, InstrumentError>
    where
        R: Message + Default + Send + Sync + 'static,
    {
        let mut infos: tonic::Streaming<ExecutionInfo> = self.stream(&format!("{command}_Info"), uuid.clone()).await?;
        loop {
            match infos.message().await {
                Ok(Some(info)) => {
                    if let Some(p) = info.progress_info {
                        progress(p.value);
                    }
                    match CommandStatus::try_from(info.command_status) {
                        Ok(CommandStatus::FinishedSuccessfully) | Ok(CommandStatus::FinishedWithError) => break,
                        Ok(_) => {}
                        Err(_) => {
                            return Err(InstrumentError::Protocol(format!(
                                "{command}: unknown command status {}",
                                info.command_status
                            )))
                        }
                    }
                }
                // The stream ended without a final status: fetch the result anyway; the server says.
                Ok(None) => break,
                Err(s) => return Err(classify(&s)),
            }
        }
        self.unary(&format!("{command}_Result"), CommandExecutionUuid { value: uuid.value }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_the_grpc_status() {
        let s = validation(
            "org.labwright/instruments/PlateReader/v1/Command/ReadAbsorbance/Parameter/Wavelengths",
            "1200 nm is out of range",
        );
        assert_eq!(s.code(), tonic::Code::Aborted);
        match classify(&s) {
            InstrumentError::Validation { parameter, .. } => assert!(parameter.ends_with("Parameter/Wavelengths")),
            e => panic!("{e:?}"),
        }
        let s = defined(
            "org.labwright/instruments/PlateReader/v1/DefinedExecutionError/DoorStuck",
            "door jammed half open",
        );
        assert_eq!(
            classify(&s),
            InstrumentError::Device { code: "DoorStuck".into(), message: "door jammed half open".into() }
        );
        assert!(matches!(classify(&tonic::Status::aborted("not base64 !")), InstrumentError::Protocol(_)));
        assert!(matches!(classify(&tonic::Status::unavailable("gone")), InstrumentError::Disconnected(_)));
    }

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let a = uuid_v4();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, uuid_v4());
    }
}
