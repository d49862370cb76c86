//! The CLI's connection to a cluster: bootstrap (the first address of `--bootstrap-server`
//! that answers), ApiVersions to pick for every request the highest version both sides
//! support, Metadata to learn the brokers, the controller and the partition leaders, and
//! FindCoordinator for a group. Requests are framed as the wire wants them, one at a time per
//! connection, each bounded by the request timeout; a response larger than
//! [`RESPONSE_BYTES_MAX`] is refused before it is read.
//!
//! Must not touch: anything of the server; this speaks only the Kafka protocol.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiVersionsRequest, FindCoordinatorRequest, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::AdminError;
use super::security::{Exchange, Login, Security, Stream, Token};

/// Largest response accepted (Kafka's `fetch.max.bytes` default is 50 MiB).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The client id every request carries.
const CLIENT_ID: &str = "sidestream-cli";
/// FindCoordinator key type of a consumer group.
const GROUP_KEY_TYPE: i8 = 0;
/// COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS: ask again.
const COORDINATOR_RETRIABLE: [i16; 3] = [15, 16, 14];
/// Pause between two FindCoordinator attempts while the coordinator loads.
const COORDINATOR_RETRY_MS: u64 = 100;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The connection made at bootstrap.
    Bootstrap,
    /// A broker by its node id, as Metadata or FindCoordinator named it.
    Broker(i32),
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// `host:port[,host:port...]`, tried in order.
    pub bootstrap: String,
    /// Bound on connecting (with TLS and SASL) and on each request's round trip.
    pub request_timeout: Duration,
    /// TLS and SASL, from `--command-config` (plaintext without it).
    pub security: Security,
}

/// One connection (TCP, or TLS over it) and its correlation ids.
struct Conn {
    addr: String,
    stream: Box<dyn Stream>,
    correlation_id: i32,
}

/// SaslHandshake and SaslAuthenticate versions sent (Kafka 1.0+ and 2.0+ brokers).
const SASL_HANDSHAKE_VERSION: i16 = 1;
const SASL_AUTHENTICATE_VERSION: i16 = 1;
/// SCRAM takes two round trips; a server asking for more is refused.
const SASL_ROUND_TRIPS_MAX: usize = 4;

impl Conn {
    /// Connects, opens TLS and authenticates as `security` says, all within `timeout`.
    async fn open(addr: &str, timeout: Duration, security: &Security) -> Result<Conn, AdminError> {
        let open = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| AdminError::Connect { addr: addr.to_string(), reason: io_reason(&e) })?;
            let _ = tcp.set_nodelay(true);
            let stream = security.wrap(addr, tcp).await?;
            let mut conn = Conn { addr: addr.to_string(), stream, correlation_id: 0 };
            if let Some(login) = &security.login {
                conn.authenticate(login).await?;
            }
            Ok(conn)
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(result) => result,
            Err(_) => Err(AdminError::Connect { addr: addr.to_string(), reason: format!("no answer within {timeout:?}") }),
        }
    }

    /// SaslHandshake, then SaslAuthenticate until the mechanism's exchange is done.
    async fn authenticate(&mut self, login: &Login) -> Result<(), AdminError> {
        let addr = self.addr.clone();
        let failed = |reason: String| AdminError::Auth { addr: addr.clone(), user: login.user.clone(), reason };
        let mechanism = login.mechanism.name();
        let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let r = self.call(SASL_HANDSHAKE_VERSION, &handshake).await?;
        if r.error_code != 0 {
            let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(failed(format!("the listener does not offer {mechanism} (it offers: {})", offered.join(", "))));
        }
        let mut exchange = Exchange::new(login.clone());
        let mut server: Vec<u8> = Vec::new();
        for _ in 0..SASL_ROUND_TRIPS_MAX {
            let token = match exchange.step(&server).map_err(failed)? {
                Token::Send(t) => t,
                Token::Done => return Ok(()),
            };
            let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
            let r = self.call(SASL_AUTHENTICATE_VERSION, &req).await?;
            if r.error_code != 0 {
                let message = r.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
                return Err(failed(format!("{message} ({})", crate::failures::error_name(r.error_code))));
            }
            if exchange.finished_after_send() {
                return Ok(());
            }
            server = r.auth_bytes.to_vec();
        }
        Err(failed(format!("the server asked for more than {SASL_ROUND_TRIPS_MAX} SASL round trips")))
    }

    fn frame<R: Request>(&mut self, version: i16, req: &R) -> Result<BytesMut, AdminError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let bad = |e: anyhow::Error| AdminError::Encode(e.to_string());
        header.encode(&mut buf, R::header_version(version)).map_err(bad)?;
        req.encode(&mut buf, version).map_err(bad)?;
        let len = i32::try_from(buf.len() - 4).map_err(|_| AdminError::Encode("request larger than 2 GiB".into()))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf)
    }

    async fn call<R: Request>(&mut self, version: i16, req: &R) -> Result<R::Response, AdminError> {
        let buf = self.frame(version, req)?;
        let io = |e: std::io::Error| AdminError::Io { addr: self.addr.clone(), reason: io_reason(&e) };
        self.stream.write_all(&buf).await.map_err(io)?;
        let len = self.stream.read_i32().await.map_err(io)?;
        let bad = |reason: String| AdminError::Protocol { addr: self.addr.clone(), reason };
        if len < 0 || len as usize > RESPONSE_BYTES_MAX {
            return Err(bad(format!("a response of {len} bytes (at most {RESPONSE_BYTES_MAX} accepted)")));
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version)).map_err(|e| bad(e.to_string()))?;
        if header.correlation_id != self.correlation_id {
            return Err(bad(format!("correlation id {} for request {}", header.correlation_id, self.correlation_id)));
        }
        R::Response::decode(&mut body, version).map_err(|e| bad(format!("{} v{version}: {e}", api_name(R::KEY))))
    }

    /// A request that gets no response (Produce with acks=0).
    async fn send_only<R: Request>(&mut self, version: i16, req: &R) -> Result<(), AdminError> {
        let buf = self.frame(version, req)?;
        self.stream.write_all(&buf).await.map_err(|e| AdminError::Io { addr: self.addr.clone(), reason: io_reason(&e) })
    }
}

/// An i/o error as one short phrase: "Connection refused", not "... (os error 111)".
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The API's name for messages.
pub fn api_name(key: i16) -> String {
    kafka_protocol::messages::ApiKey::try_from(key).map(|k| format!("{k:?}")).unwrap_or_else(|_| format!("API {key}"))
}

/// A partition's leader as Metadata last said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionMeta {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    #[serde(skip)]
    pub error_code: i16,
}

impl PartitionMeta {
    /// A topic's partitions from its Metadata, by partition number.
    pub fn all(partitions: &[kafka_protocol::messages::metadata_response::MetadataResponsePartition]) -> Vec<PartitionMeta> {
        let mut ps: Vec<PartitionMeta> = partitions
            .iter()
            .map(|p| PartitionMeta {
                partition: p.partition_index,
                leader: p.leader_id.0,
                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                error_code: p.error_code,
            })
            .collect();
        ps.sort_by_key(|p| p.partition);
        ps
    }
}

/// The connection to a cluster.
pub struct Client {
    settings: ClientSettings,
    /// API key -> (min, max) version the bootstrap broker supports.
    versions: HashMap<i16, (i16, i16)>,
    /// node id -> host:port
    brokers: BTreeMap<i32, String>,
    controller: i32,
    bootstrap: Conn,
    conns: HashMap<i32, Conn>,
}

impl Client {
    /// Connects to the first bootstrap address that answers, and asks for its versions and
    /// the brokers.
    pub async fn connect(settings: ClientSettings) -> Result<Client, AdminError> {
        let mut last = None;
        for addr in settings.bootstrap.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Conn::open(addr, settings.request_timeout, &settings.security).await {
                Ok(conn) => {
                    let mut c = Client {
                        settings: settings.clone(),
                        versions: HashMap::new(),
                        brokers: BTreeMap::new(),
                        controller: -1,
                        bootstrap: conn,
                        conns: HashMap::new(),
                    };
                    c.handshake().await?;
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| AdminError::Invalid(format!("no address in --bootstrap-server '{}'", settings.bootstrap))))
    }

    async fn handshake(&mut self) -> Result<(), AdminError> {
        let timeout = self.settings.request_timeout;
        let r = within(timeout, &self.bootstrap.addr.clone(), self.bootstrap.call(0, &ApiVersionsRequest::default())).await?;
        kafka_result("ApiVersions", "", r.error_code, None)?;
        self.versions = r.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        self.metadata(Some(&[])).await?;
        Ok(())
    }

    /// The version to send of `R`: the highest that this crate, the broker and `preferred_max`
    /// (the newest whose fields this client fills as it should) all allow.
    pub fn version<R: Request>(&self, preferred_max: i16) -> Result<i16, AdminError> {
        let unsupported = || AdminError::Unsupported { api: api_name(R::KEY) };
        let (lo, hi) = *self.versions.get(&R::KEY).ok_or_else(unsupported)?;
        let v = hi.min(preferred_max).min(R::VERSIONS.max);
        if v < lo || v < R::VERSIONS.min { Err(unsupported()) } else { Ok(v) }
    }

    /// Whether the broker offers `R` at all.
    pub fn supports<R: Request>(&self) -> bool {
        self.versions.contains_key(&R::KEY)
    }

    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// The controller as the last Metadata named it (in KRaft, any broker forwards to the
    /// quorum); the bootstrap broker when none is known.
    pub fn controller(&self) -> Node {
        if self.brokers.contains_key(&self.controller) { Node::Broker(self.controller) } else { Node::Bootstrap }
    }

    /// Every broker the last Metadata listed.
    pub fn brokers(&self) -> Vec<i32> {
        self.brokers.keys().copied().collect()
    }

    async fn conn(&mut self, node: Node) -> Result<&mut Conn, AdminError> {
        let id = match node {
            Node::Bootstrap => return Ok(&mut self.bootstrap),
            Node::Broker(id) => id,
        };
        if !self.conns.contains_key(&id) {
            let addr = self.brokers.get(&id).cloned().ok_or_else(|| AdminError::Protocol {
                addr: self.bootstrap.addr.clone(),
                reason: format!("broker {id} is not in the cluster's metadata"),
            })?;
            let conn = Conn::open(&addr, self.settings.request_timeout, &self.settings.security).await?;
            self.conns.insert(id, conn);
        }
        Ok(self.conns.get_mut(&id).expect("inserted above"))
    }

    /// Sends `req` at `version` to `node` and reads its response within the request timeout. A
    /// connection that failed or timed out is dropped (the next request opens a new one).
    pub async fn send<R: Request>(&mut self, node: Node, version: i16, req: &R) -> Result<R::Response, AdminError> {
        let timeout = self.settings.request_timeout;
        let conn = self.conn(node).await?;
        let addr = conn.addr.clone();
        let result = within(timeout, &addr, conn.call(version, req)).await;
        if result.is_err() {
            self.drop_conn(node).await;
        }
        result
    }

    /// Sends a request that has no response (Produce with acks=0).
    pub async fn send_only<R: Request>(&mut self, node: Node, version: i16, req: &R) -> Result<(), AdminError> {
        let timeout = self.settings.request_timeout;
        let conn = self.conn(node).await?;
        let addr = conn.addr.clone();
        let result = within(timeout, &addr, conn.send_only(version, req)).await;
        if result.is_err() {
            self.drop_conn(node).await;
        }
        result
    }

    async fn drop_conn(&mut self, node: Node) {
        match node {
            Node::Broker(id) => {
                self.conns.remove(&id);
            }
            Node::Bootstrap => {
                let addr = self.bootstrap.addr.clone();
                if let Ok(c) = Conn::open(&addr, self.settings.request_timeout, &self.settings.security).await {
                    self.bootstrap = c;
                }
            }
        }
    }

    /// Metadata of `topics` (None: every topic; Some(&[]): none, the brokers only). Learns the
    /// brokers and the controller.
    pub async fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse, AdminError> {
        let version = self.version::<MetadataRequest>(12)?;
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(t.clone())))))
                .collect()
        });
        // v0 has no "all topics" null: an empty list means all there; this client needs v1+.
        let req = MetadataRequest::default().with_topics(topics).with_allow_auto_topic_creation(false);
        let r = self.send(Node::Bootstrap, version.max(1), &req).await?;
        self.brokers = r.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port))).collect();
        self.controller = r.controller_id.0;
        Ok(r)
    }

    /// The partitions of `topic` with their leaders; UNKNOWN_TOPIC_OR_PARTITION (or the
    /// topic's other error) when it has none to show.
    pub async fn partitions(&mut self, topic: &str) -> Result<Vec<PartitionMeta>, AdminError> {
        let r = self.metadata(Some(&[topic.to_string()])).await?;
        let t =
            r.topics
                .into_iter()
                .find(|t| t.name.as_ref().map(|n| n.0.as_str()) == Some(topic))
                .ok_or_else(|| AdminError::Protocol {
                    addr: self.bootstrap.addr.clone(),
                    reason: format!("no metadata for topic '{topic}'"),
                })?;
        kafka_result("Metadata", &format!("topic '{topic}'"), t.error_code, None)?;
        Ok(PartitionMeta::all(&t.partitions))
    }

    /// The coordinator of `group` (FindCoordinator; retried while it loads, within the request
    /// timeout).
    pub async fn coordinator(&mut self, group: &str) -> Result<Node, AdminError> {
        let version = self.version::<FindCoordinatorRequest>(4)?;
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        loop {
            let key = StrBytes::from_string(group.to_string());
            let req = if version >= 4 {
                FindCoordinatorRequest::default().with_key_type(GROUP_KEY_TYPE).with_coordinator_keys(vec![key])
            } else {
                FindCoordinatorRequest::default().with_key_type(if version >= 1 { GROUP_KEY_TYPE } else { 0 }).with_key(key)
            };
            let r = self.send(Node::Bootstrap, version, &req).await?;
            let (code, message, node, host, port) = match r.coordinators.into_iter().next() {
                Some(c) if version >= 4 => (c.error_code, c.error_message, c.node_id.0, c.host, c.port),
                _ => (r.error_code, r.error_message, r.node_id.0, r.host, r.port),
            };
            if COORDINATOR_RETRIABLE.contains(&code) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(COORDINATOR_RETRY_MS)).await;
                continue;
            }
            kafka_result("FindCoordinator", &format!("group '{group}'"), code, message.map(|m| m.to_string()))?;
            self.brokers.insert(node, format!("{host}:{port}"));
            return Ok(Node::Broker(node));
        }
    }
}

/// ListOffsets timestamps: the log start and the log end.
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const LATEST_TIMESTAMP: i64 = -1;

/// (topic, partition) -> the offset ListOffsets answered, or its error code.
pub type Offsets = BTreeMap<(String, i32), Result<i64, i16>>;

impl Client {
    /// The offset of every partition in `wanted` for `timestamp` ([`EARLIEST_TIMESTAMP`],
    /// [`LATEST_TIMESTAMP`], or a time in ms: the first offset at or after it, -1 if none),
    /// asked of each partition's leader. A partition that cannot be asked gets its error code.
    pub async fn list_offsets(&mut self, wanted: &BTreeMap<String, Vec<i32>>, timestamp: i64) -> Result<Offsets, AdminError> {
        use kafka_protocol::messages::ListOffsetsRequest;
        use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
        let mut out = Offsets::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let topics: Vec<String> = wanted.keys().cloned().collect();
        let md = self.metadata(Some(&topics)).await?;
        // leader -> topic -> partitions
        let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
        for t in md.topics {
            let Some(topic) = t.name.map(|n| n.0.to_string()) else { continue };
            let Some(ps) = wanted.get(&topic) else { continue };
            for &p in ps {
                let meta = t.partitions.iter().find(|m| m.partition_index == p);
                match meta {
                    _ if t.error_code != 0 => {
                        out.insert((topic.clone(), p), Err(t.error_code));
                    }
                    Some(m) if m.leader_id.0 >= 0 => by_leader.entry(m.leader_id.0).or_default().entry(topic.clone()).or_default().push(p),
                    Some(_) => {
                        out.insert((topic.clone(), p), Err(LEADER_NOT_AVAILABLE));
                    }
                    None => {
                        out.insert((topic.clone(), p), Err(UNKNOWN_TOPIC_OR_PARTITION));
                    }
                }
            }
        }
        let version = self.version::<ListOffsetsRequest>(7)?;
        for (leader, topics) in by_leader {
            let req = ListOffsetsRequest::default().with_replica_id(kafka_protocol::messages::BrokerId(-1)).with_topics(
                topics
                    .iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default().with_name(TopicName(StrBytes::from_string(t.clone()))).with_partitions(
                            ps.iter().map(|p| ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(timestamp)).collect(),
                        )
                    })
                    .collect(),
            );
            let r = self.send(Node::Broker(leader), version, &req).await?;
            for t in r.topics {
                for p in t.partitions {
                    let v = if p.error_code == 0 { Ok(p.offset) } else { Err(p.error_code) };
                    out.insert((t.name.0.to_string(), p.partition_index), v);
                }
            }
        }
        Ok(out)
    }
}

pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub const LEADER_NOT_AVAILABLE: i16 = 5;

/// `fut` within `timeout`, or a Timeout error naming `addr`.
async fn within<T>(timeout: Duration, addr: &str, fut: impl Future<Output = Result<T, AdminError>>) -> Result<T, AdminError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| AdminError::Timeout { addr: addr.to_string(), after: timeout })?
}

/// Ok for error code 0, else the Kafka error: its name, `context` (what it is about) and the
/// broker's message.
pub fn kafka_result(api: &'static str, context: &str, code: i16, message: Option<String>) -> Result<(), AdminError> {
    if code == 0 {
        return Ok(());
    }
    Err(AdminError::Kafka {
        api,
        context: context.to_string(),
        code,
        name: crate::failures::error_name(code),
        message: message.filter(|m| !m.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_are_short_and_kafka_errors_carry_their_names() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!io_reason(&e).contains("os error"));
        let err = kafka_result("CreateTopics", "topic 't'", 36, Some("Topic 't' already exists.".into())).unwrap_err();
        assert_eq!(err.to_string(), "topic 't': TOPIC_ALREADY_EXISTS: Topic 't' already exists.");
        assert!(kafka_result("CreateTopics", "", 0, None).is_ok());
    }
}
