//! The embedded MQTT 3.1.1 broker `labd` runs by default, so a fresh machine needs nothing else.
//!
//! Why our own: `rumqttd` 0.20 authenticates but does not enforce per-topic ACLs, and a broker
//! that lets one tenant read another's topics is worse than none. This one is small on purpose
//! and enforces three rules where they cannot be bypassed:
//! - a client connects only with a username and password that verify against the store's `$7$`
//!   hashes (the same identities `labd mqtt-config` gives Mosquitto);
//! - a message is delivered to a client only if one of its subscriptions matches the topic
//!   *and* one of its identity's read patterns does (wildcards like `#` grant nothing extra);
//! - only the runtime's identity may publish; anyone else's publishes are dropped.
//!
//! Packets are MQTT 3.1.1 (the codec from `rumqttc`); QoS 0 and 1; retained messages; clean
//! sessions only (a subscriber that was away fills its gap through gRPC `Watch`).

use super::{mosquitto, MqttIdentity, TelemetryError, RUNTIME_USER};
use crate::lock;
use bytes::BytesMut;
use rumqttc::{
    matches, valid_filter, valid_topic, ConnAck, ConnectReturnCode, Packet, PingResp, PubAck, Publish, QoS, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The largest packet accepted or sent (the runtime summarises bigger payloads).
pub const MAX_PACKET: usize = 256 * 1024;

#[derive(Debug)]
struct Client {
    username: String,
    reads: Vec<String>,
    filters: Vec<(String, QoS)>,
    tx: mpsc::Sender<Publish>,
}

/// How many connections the broker keeps at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections in all, counting those that have not sent CONNECT yet.
    pub total: usize,
    /// Signed-in connections of one identity (a tenant's token).
    pub per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { total: 1000, per_identity: 50 }
    }
}

#[derive(Debug, Default)]
struct State {
    limits: Limits,
    /// Open connections, signed in or not.
    connections: usize,
    /// username → (password hash, read patterns, may publish).
    identities: HashMap<String, (String, Vec<String>, bool)>,
    retained: BTreeMap<String, Publish>,
    clients: HashMap<u64, Client>,
    next_client: u64,
    /// The accept loop, ended by [`Broker::stop`].
    accept: Option<tokio::task::AbortHandle>,
}

/// A running broker; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Broker {
    state: Arc<Mutex<State>>,
}

impl Broker {
    /// Listens on `addr`; returns the bound address.
    pub async fn start(
        addr: &str,
        runtime_password_hash: String,
        limits: Limits,
    ) -> Result<(Broker, SocketAddr), TelemetryError> {
        let listen_error = |source| TelemetryError::Listen { addr: addr.to_string(), source };
        let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
        let bound = listener.local_addr().map_err(listen_error)?;
        let broker = Broker::default();
        {
            let mut s = lock(&broker.state);
            s.limits = limits;
            s.identities.insert(RUNTIME_USER.into(), (runtime_password_hash, Vec::new(), true));
        }
        let b = broker.clone();
        let accept = tokio::spawn(async move {
            let mut pause = ACCEPT_BACKOFF_MIN;
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file handles (or another passing error): wait, more each time,
                        // instead of asking again at once and spinning a core.
                        tracing::warn!(
                            error = %e,
                            retry_in_ms = pause.as_millis() as u64,
                            "the MQTT broker cannot accept a connection"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                };
                pause = ACCEPT_BACKOFF_MIN;
                let _ = stream.set_nodelay(true);
                let b = b.clone();
                tokio::spawn(async move { b.admit(stream).await });
            }
        });
        lock(&broker.state).accept = Some(accept.abort_handle());
        Ok((broker, bound))
    }

    /// Stops listening and ends every connection (labd is stopping).
    pub fn stop(&self) {
        let mut s = lock(&self.state);
        if let Some(a) = s.accept.take() {
            a.abort();
        }
        s.clients.clear(); // dropping their senders ends their connections
    }

    /// Replaces the tenants' and staff's identities (the runtime's stays); clients whose
    /// identity is gone (revoked, expired) are disconnected.
    pub fn set_identities(&self, ids: &[MqttIdentity]) {
        let mut s = lock(&self.state);
        let runtime = s.identities.remove(RUNTIME_USER);
        s.identities = ids.iter().map(|i| (i.username.clone(), (i.password_hash.clone(), i.reads(), false))).collect();
        if let Some(r) = runtime {
            s.identities.insert(RUNTIME_USER.into(), r);
        }
        let gone: Vec<u64> =
            s.clients.iter().filter(|(_, c)| !s.identities.contains_key(&c.username)).map(|(k, _)| *k).collect();
        for k in gone {
            s.clients.remove(&k); // dropping its sender ends its connection
        }
    }

    /// Routes a message from the runtime: to every client allowed to read it and subscribed.
    fn route(&self, p: Publish) {
        let mut s = lock(&self.state);
        if p.retain {
            let mut kept = p.clone();
            kept.pkid = 0;
            s.retained.insert(p.topic.clone(), kept);
        }
        for c in s.clients.values() {
            if let Some(qos) = c.grant(&p.topic) {
                let mut out = p.clone();
                out.qos = qos.min_qos(p.qos);
                out.retain = false;
                let _ = c.tx.try_send(out); // a client that cannot keep up misses it and fills the gap over gRPC
            }
        }
    }

    /// One connection, counted against the total while it is open.
    async fn admit(&self, mut stream: TcpStream) {
        let full = {
            let mut s = lock(&self.state);
            let full = s.connections >= s.limits.total;
            if !full {
                s.connections += 1;
                crate::metrics::with(|m| m.mqtt_connections.set(s.connections as i64));
            }
            full
        };
        if full {
            // Tell the client why, if it says CONNECT soon; never hold a handle for long.
            let mut buf = BytesMut::with_capacity(256);
            if let Ok(Ok(Packet::Connect(_))) =
                tokio::time::timeout(Duration::from_secs(1), read_packet(&mut stream, &mut buf)).await
            {
                let _ =
                    write_packet(&mut stream, |b| ConnAck::new(ConnectReturnCode::ServiceUnavailable, false).write(b))
                        .await;
            }
            return;
        }
        self.serve(stream).await;
        let mut s = lock(&self.state);
        s.connections -= 1;
        crate::metrics::with(|m| m.mqtt_connections.set(s.connections as i64));
    }

    async fn serve(&self, mut stream: TcpStream) {
        let mut buf = BytesMut::with_capacity(4096);
        let connect = match tokio::time::timeout(Duration::from_secs(10), read_connect(&mut stream, &mut buf)).await {
            // The codec reads an MQTT 5 CONNECT too (without its properties): refused in 5's words.
            Ok(Ok(Packet::Connect(c))) if c.protocol != rumqttc::mqttbytes::Protocol::V4 => {
                let _ = stream.write_all(CONNACK_V5_REFUSED).await;
                return;
            }
            Ok(Ok(Packet::Connect(c))) => c,
            Ok(Err(Some(raw))) => {
                // A CONNECT of another MQTT version: answer in that version that it is not spoken here.
                if let Some(refusal) = unsupported_version_connack(&raw) {
                    let _ = stream.write_all(refusal).await;
                }
                return;
            }
            _ => return,
        };
        let login = connect.login.clone();
        let known = login.as_ref().and_then(|l| {
            let s = lock(&self.state);
            s.identities.get(&l.username).cloned().map(|id| (l.clone(), id))
        });
        let Some((login, (_, reads, may_publish))) =
            known.filter(|(l, (hash, _, _))| mosquitto::verify(&l.password, hash))
        else {
            let _ = write_packet(&mut stream, |b| ConnAck::new(ConnectReturnCode::BadUserNamePassword, false).write(b))
                .await;
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Publish>(1024);
        let id = {
            let mut s = lock(&self.state);
            let mine = s.clients.values().filter(|c| c.username == login.username).count();
            if mine >= s.limits.per_identity && login.username != RUNTIME_USER {
                None
            } else {
                s.next_client += 1;
                let id = s.next_client;
                s.clients.insert(id, Client { username: login.username.clone(), reads, filters: Vec::new(), tx });
                Some(id)
            }
        };
        let Some(id) = id else {
            let _ = write_packet(&mut stream, |b| ConnAck::new(ConnectReturnCode::ServiceUnavailable, false).write(b))
                .await;
            return;
        };
        if write_packet(&mut stream, |b| ConnAck::new(ConnectReturnCode::Success, false).write(b)).await.is_err() {
            lock(&self.state).clients.remove(&id);
            return;
        }
        // MQTT: a client silent for 1.5 × its keep-alive is gone; 0 means it never pings.
        let keep_alive = match connect.keep_alive {
            0 => Duration::from_secs(u64::from(u32::MAX)),
            k => Duration::from_secs(u64::from(k) * 3 / 2 + 1),
        };
        let mut next_pkid: u16 = 0;
        let _ended: Result<(), ()> = async {
            loop {
                tokio::select! {
                    out = rx.recv() => {
                        let Some(mut p) = out else { return Err(()) }; // removed: identity gone
                        if p.qos != QoS::AtMostOnce {
                            next_pkid = next_pkid.wrapping_add(1).max(1);
                            p.pkid = next_pkid;
                        }
                        write_packet(&mut stream, |b| p.write(b)).await.map_err(|_| ())?;
                    }
                    packet = tokio::time::timeout(keep_alive, read_packet(&mut stream, &mut buf)) => {
                        let packet = match packet { Ok(Ok(p)) => p, _ => return Err(()) };
                        match packet {
                            Packet::Subscribe(sub) => {
                                let mut codes = Vec::new();
                                let mut granted = Vec::new();
                                for f in sub.filters {
                                    if valid_filter(&f.path) {
                                        let qos = f.qos.min_qos(QoS::AtLeastOnce);
                                        codes.push(SubscribeReasonCode::Success(qos));
                                        granted.push((f.path, qos));
                                    } else {
                                        codes.push(SubscribeReasonCode::Failure);
                                    }
                                }
                                write_packet(&mut stream, |b| SubAck::new(sub.pkid, codes).write(b)).await.map_err(|_| ())?;
                                let retained: Vec<Publish> = {
                                    let mut s = lock(&self.state);
                                    let Some(c) = s.clients.get_mut(&id) else { return Err(()) };
                                    c.filters.extend(granted.iter().cloned());
                                    let c = &s.clients[&id];
                                    s.retained.values().filter_map(|p| {
                                        let allowed = c.reads.iter().any(|r| matches(&p.topic, r));
                                        let qos = granted.iter().find(|(f, _)| matches(&p.topic, f)).map(|(_, q)| *q)?;
                                        allowed.then(|| { let mut x = p.clone(); x.retain = true; x.qos = qos.min_qos(p.qos); x })
                                    }).collect()
                                };
                                for mut p in retained {
                                    if p.qos != QoS::AtMostOnce {
                                        next_pkid = next_pkid.wrapping_add(1).max(1);
                                        p.pkid = next_pkid;
                                    }
                                    write_packet(&mut stream, |b| p.write(b)).await.map_err(|_| ())?;
                                }
                            }
                            Packet::Unsubscribe(u) => {
                                if let Some(c) = lock(&self.state).clients.get_mut(&id) {
                                    c.filters.retain(|(f, _)| !u.topics.contains(f));
                                }
                                write_packet(&mut stream, |b| UnsubAck::new(u.pkid).write(b)).await.map_err(|_| ())?;
                            }
                            Packet::Publish(p) => {
                                if p.qos == QoS::AtLeastOnce {
                                    write_packet(&mut stream, |b| PubAck::new(p.pkid).write(b)).await.map_err(|_| ())?;
                                }
                                if may_publish && valid_topic(&p.topic) && p.qos != QoS::ExactlyOnce {
                                    self.route(p);
                                } // anyone else's publish is dropped, as Mosquitto does for an ACL refusal
                            }
                            Packet::PingReq => write_packet(&mut stream, |b| PingResp.write(b)).await.map_err(|_| ())?,
                            Packet::Disconnect => return Ok(()),
                            Packet::PubAck(_) => {}
                            _ => return Err(()), // QoS 2 and anything a client should not send
                        }
                    }
                }
            }
        }
        .await;
        lock(&self.state).clients.remove(&id);
    }
}

impl Client {
    /// The QoS to deliver `topic` at, if this client may read it and subscribed to it.
    fn grant(&self, topic: &str) -> Option<QoS> {
        if !self.reads.iter().any(|r| matches(topic, r)) {
            return None;
        }
        self.filters.iter().filter(|(f, _)| matches(topic, f)).map(|(_, q)| *q).max_by_key(|q| *q as u8)
    }
}

trait MinQos {
    fn min_qos(self, other: QoS) -> QoS;
}

impl MinQos for QoS {
    fn min_qos(self, other: QoS) -> QoS {
        if (self as u8) <= (other as u8) {
            self
        } else {
            other
        }
    }
}

/// Waits between failed accepts: from this…
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// …doubling up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// CONNACK "MQTT 3.1" (return code 1, unacceptable protocol version), which 3.1 clients read.
const CONNACK_V31_REFUSED: &[u8] = &[0x20, 0x02, 0x00, 0x01];
/// CONNACK of MQTT 5: reason 0x84, unsupported protocol version, no properties.
const CONNACK_V5_REFUSED: &[u8] = &[0x20, 0x03, 0x00, 0x84, 0x00];

/// The refusal a client that sent a CONNECT of an MQTT version other than 3.1.1 can read, from
/// the bytes it sent: `None` if they are not a CONNECT at all.
fn unsupported_version_connack(bytes: &[u8]) -> Option<&'static [u8]> {
    if bytes.first()? >> 4 != 1 {
        return None;
    }
    // Remaining length: 1 to 4 bytes, 7 bits each.
    let mut i = 1;
    while bytes.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let name_len = usize::from(*bytes.get(i + 1)?) << 8 | usize::from(*bytes.get(i + 2)?);
    let name = bytes.get(i + 3..i + 3 + name_len)?;
    let level = *bytes.get(i + 3 + name_len)?;
    match (name, level) {
        (b"MQIsdp", 3) => Some(CONNACK_V31_REFUSED),
        (b"MQTT", 5) => Some(CONNACK_V5_REFUSED),
        _ => None,
    }
}

/// The first packet of a connection; when it does not parse as MQTT 3.1.1, the bytes it came in
/// (`Err(Some(raw))`) so the refusal can be written in the client's own version.
async fn read_connect(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet, Option<Vec<u8>>> {
    loop {
        let raw = buf.to_vec();
        match rumqttc::mqttbytes::v4::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(_) => return Err(Some(raw)),
        }
        if buf.len() > MAX_PACKET {
            return Err(None);
        }
        match stream.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            _ => return Err(None),
        }
    }
}

/// Why a connection's packet could not be read or written; the connection ends either way.
#[derive(Debug, thiserror::Error)]
enum WireError {
    #[error("bad packet: {0:?}")]
    Packet(rumqttc::mqttbytes::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("closed")]
    Closed,
}

async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Packet, WireError> {
    loop {
        match rumqttc::mqttbytes::v4::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(WireError::Packet(e)),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(WireError::Closed);
        }
    }
}

async fn write_packet(
    stream: &mut TcpStream,
    encode: impl FnOnce(&mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error>,
) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    encode(&mut out).map_err(WireError::Packet)?;
    Ok(stream.write_all(&out).await?)
}
