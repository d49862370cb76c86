//! The agent's Kafka listeners and who is on the other end of a connection.
//!
//! A listener is an address with one of Kafka's security protocols (PLAINTEXT, SSL,
//! SASL_PLAINTEXT, SASL_SSL): `[agent] listen` is the PLAINTEXT one, `[[listeners]]` adds more.
//! Each has an [`Endpoint`]: the name and the address its clients are told, so Metadata answers a
//! client with the endpoints of the listener it connected to, as Kafka does.
//!
//! A connection's [`Peer`] names its principal in Kafka's form: `User:ANONYMOUS` on PLAINTEXT
//! and on SSL without a client certificate, `User:<certificate subject>` with one (mTLS),
//! `User:<name>` after SASL. It is fixed once the connection is authenticated (a SASL
//! re-authentication must keep it).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::ListenerAddress;
use crate::config::SecurityProtocol;

/// The principal of an unauthenticated connection.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// A listener as its clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub protocol: SecurityProtocol,
    /// Kafka's listener name (`PLAINTEXT`, `EXTERNAL`) and the address its clients are told.
    pub address: ListenerAddress,
}

/// One bound listener.
pub struct Listener {
    pub socket: TcpListener,
    pub endpoint: Arc<Endpoint>,
}

/// Who a connection is: its address, the listener it came in on, its principal.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint>,
    /// `User:ANONYMOUS`, `User:alice`, `User:CN=app,O=Example`.
    pub principal: String,
    /// The client software name and version its first ApiVersions (v3+) gave (KIP-511), which
    /// client metrics subscriptions match on.
    pub software: Arc<std::sync::OnceLock<(String, String)>>,
}

impl Peer {
    /// A PLAINTEXT peer (tests, tools).
    pub fn anonymous(addr: SocketAddr, endpoint: Arc<Endpoint>) -> Self {
        Self { addr, endpoint, principal: ANONYMOUS.to_string(), software: Default::default() }
    }
}
