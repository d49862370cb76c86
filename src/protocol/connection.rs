//! The accept loops (one per listener) and one connection.
//!
//! A connection on an SSL or SASL_SSL listener first completes its TLS handshake (within
//! `request_read_timeout_ms`; plaintext bytes fail it and close that connection only). On a
//! SASL listener it then authenticates ([`super::sasl`]) before any other request is read. Its
//! [`Peer`] (address, listener, principal) goes with every request to the handlers.
//!
//! A connection has a reader (frames -> one spawned handler task each, queued in request order)
//! and a writer (awaits the queued tasks in order and writes their answers), so requests are
//! pipelined while answers keep Kafka's ordering. Produce requests also take a [`Turn`](crate::agent::Turn): each
//! hands its batches to the WAL or upload buffer only after the previous produce request of the
//! connection did, so offsets follow the order requests were sent, as in Kafka (the waits for
//! fsync or commit still overlap). Requests that change committed offsets (OffsetCommit,
//! TxnOffsetCommit, OffsetDelete) take a turn of their own, held until they are answered: a
//! client's pipelined commits take effect in the order it sent them. The queue bounds the requests in flight per connection; a
//! semaphore bounds connections, a count per client address bounds each address's share of them
//! (`max_connections_per_ip`; beyond it a connection is closed at accept).
//!
//! Client quotas mute a connection as Kafka mutes its channel: after a throttled answer is
//! written, no request is taken for its throttle time; a Produce request is charged as it is
//! read, and one over its quota waits there until the rate is back within it and then holds
//! the connection until its own throttled answer is out ([`Mute`]).
//!
//! A connection closes when its client closes it, when a frame is not read whole within
//! `request_read_timeout_ms`, or when it is idle (no request in progress, nothing read or written)
//! for `connections_max_idle_ms`. Once the reader stops (any of these, or shutdown), waiting Fetch
//! requests (long polls) are cancelled at once and the slot is freed; other requests already read
//! are finished and answered. The connection's fetch sessions die with it. Shutdown: the token
//! stops the accept loop and every reader.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{FrameError, FrameLimits, read_frame};
use super::handlers::{self, Outcome};
use super::listener::{ANONYMOUS, Endpoint, Listener, Peer};
use super::request_metrics;
use super::sasl::{self, Next, Sasl, SaslRequest, SaslSettings};
use super::tls::{self, Tls};
use crate::agent::{Agent, Turn};
use crate::metrics::{self, Counter, Histogram};

const PRODUCE_KEY: [u8; 2] = 0i16.to_be_bytes();
const FETCH_KEY: [u8; 2] = 1i16.to_be_bytes();
const API_VERSIONS_KEY: [u8; 2] = 18i16.to_be_bytes();
const SASL_HANDSHAKE_KEY: [u8; 2] = 17i16.to_be_bytes();
const SASL_AUTHENTICATE_KEY: [u8; 2] = 36i16.to_be_bytes();
/// Requests that change a group's committed offsets (OffsetCommit, TxnOffsetCommit,
/// OffsetDelete): one takes effect only after the connection's previous one did.
const ORDERED_KEYS: [[u8; 2]; 3] = [8i16.to_be_bytes(), 28i16.to_be_bytes(), 47i16.to_be_bytes()];
/// Ready answers are written once this many bytes of them wait, even if more are ready.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// Slices per writev call (Linux allows 1024).
const WRITE_SLICES_MAX: usize = 128;

/// Writes every slice of `out` with as few writev calls as the socket allows, then empties it.
async fn write_chunks(wr: &mut (impl AsyncWrite + Unpin), out: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < out.len() {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
        let n = (out.len() - first).min(WRITE_SLICES_MAX);
        for (slot, chunk) in slices.iter_mut().zip(&out[first..first + n]) {
            *slot = IoSlice::new(chunk);
        }
        let mut written = wr.write_vectored(&slices[..n]).await?;
        if written == 0 && out[first..first + n].iter().any(|c| !c.is_empty()) {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Drop what was written; a partly written slice keeps its rest.
        while first < out.len() && written >= out[first].len() {
            written -= out[first].len();
            first += 1;
        }
        if written > 0 {
            out[first].advance(written);
        }
    }
    out.clear();
    Ok(())
}

/// Limits of the front door, from `[agent]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_request_bytes: u64,
    /// Bytes of requests read but not yet answered, across all connections.
    pub max_in_flight_request_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_in_flight_requests: usize,
    pub request_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why a connection ended (the label of `sidestream_connections_closed_total`).
#[derive(Debug, Clone, Copy)]
enum Closed {
    /// The client closed it (or the socket failed).
    Client,
    /// Over `max_connections_per_ip` at accept.
    PerIpLimit,
    Idle,
    ReadTimeout,
    /// Bad frame size, or a request the handlers refused to answer.
    BadRequest,
    Shutdown,
    /// The TLS handshake failed or took too long.
    TlsHandshake,
    /// SASL authentication failed, a request came before it, or the session expired.
    Authentication,
}

fn closed(reason: Closed) -> &'static Counter {
    static BY_REASON: OnceLock<[Arc<Counter>; 8]> = OnceLock::new();
    let c = BY_REASON.get_or_init(|| {
        ["client", "per_ip_limit", "idle", "read_timeout", "bad_request", "shutdown", "tls_handshake", "authentication"]
            .map(|r| metrics::counter("sidestream_connections_closed_total", "Connections closed, by reason.", &[("reason", r)]))
    });
    &c[reason as usize]
}

fn fetches_cancelled() -> &'static Counter {
    static C: OnceLock<Arc<Counter>> = OnceLock::new();
    C.get_or_init(|| {
        metrics::counter(
            "sidestream_fetches_cancelled_total",
            "Fetch requests (long polls) cancelled because their connection closed.",
            &[],
        )
    })
}

/// Open connections per client address.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerIp`]; given back on drop.
struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot { per_ip: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.per_ip.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// What decides whether a connection is idle: requests read and not yet answered, and when
/// something was last read or written.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }

    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing is in progress and nothing happened for `after`.
    async fn idle(&self, after: Duration) {
        loop {
            if self.in_flight.load(Ordering::Acquire) > 0 {
                // A request in progress (e.g. a long poll): not idle; look again later.
                tokio::time::sleep(after.min(Duration::from_secs(1))).await;
                continue;
            }
            let due = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + after;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A request read and handed to its task, as the writer awaits it.
struct Queued {
    task: JoinHandle<Outcome>,
    /// A Fetch: dropped (aborted) when the connection is gone, instead of awaited.
    cancellable: bool,
    /// A Produce request throttled as it was read: the connection takes no other request until
    /// its answer is written (see [`Mute`]).
    held: bool,
    /// Its API's latency histogram and when it was read (none outside the advertised table).
    timing: Option<(&'static Histogram, Instant)>,
}

/// Kafka's channel muting for client quotas: once a throttled answer is written, the
/// connection takes no further request for its throttle time. A Produce request throttled as
/// it was read ([`handlers::produce_read`]) also holds the connection from then until its
/// answer is written, so requests pipelined behind it wait too.
struct Mute(watch::Sender<MuteState>);

#[derive(Debug, Default, Clone, Copy)]
struct MuteState {
    /// Throttled requests read whose answers are not written yet.
    held: usize,
    /// No request is taken before this.
    until: Option<Instant>,
}

impl Mute {
    fn new() -> Self {
        Self(watch::channel(MuteState::default()).0)
    }

    fn hold(&self) {
        self.0.send_modify(|s| s.held += 1);
    }

    /// An answer was written: a request it held lets go, and a throttle time starts now.
    fn written(&self, held: bool, throttle: Duration) {
        let until = Instant::now() + throttle;
        self.0.send_modify(|s| {
            if held {
                s.held = s.held.saturating_sub(1);
            }
            if !throttle.is_zero() {
                s.until = Some(s.until.map_or(until, |u| u.max(until)));
            }
        });
    }

    /// Returns once the connection may take a request.
    async fn wait(&self) {
        let open = |s: &MuteState| s.held == 0 && s.until.is_none_or(|u| u <= Instant::now());
        if open(&self.0.borrow()) {
            return;
        }
        let mut rx = self.0.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if open(&s) {
                return;
            }
            let changed = rx.changed();
            match s.until {
                Some(u) if s.held == 0 => tokio::select! {
                    _ = tokio::time::sleep_until(u) => {}
                    r = changed => if r.is_err() { return },
                },
                _ => {
                    if changed.await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

impl Queued {
    /// Aborts a fetch and returns its task (to await its end); anything else goes on alone.
    fn cancel(self) -> Option<JoinHandle<Outcome>> {
        if !self.cancellable {
            return None;
        }
        self.task.abort();
        fetches_cancelled().inc();
        Some(self.task)
    }
}

/// The request budget's size in permits (bytes).
fn budget_bytes(limits: &ConnectionLimits) -> usize {
    limits.max_in_flight_request_bytes.min(Semaphore::MAX_PERMITS as u64) as usize
}

/// What secures the listeners: TLS (when a listener needs it) and SASL's settings.
pub struct Security {
    pub tls: Option<Arc<Tls>>,
    pub sasl: Arc<SaslSettings>,
}

/// What every connection of every listener shares.
struct Front {
    agent: Arc<Agent>,
    limits: ConnectionLimits,
    security: Security,
    slots: Arc<Semaphore>,
    request_budget: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    open: Arc<AtomicUsize>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Accepts connections on every listener until `shutdown`, then waits for every connection to
/// finish. The limits (`max_connections`, per address, request bytes) are shared by all.
pub async fn serve(listeners: Vec<Listener>, agent: Arc<Agent>, limits: ConnectionLimits, security: Security, shutdown: CancellationToken) {
    let open = Arc::new(AtomicUsize::new(0));
    let gauge = open.clone();
    metrics::gauges("sidestream_connections", "Client connections open.", move || vec![(Vec::new(), gauge.load(Ordering::Relaxed) as i64)]);
    let front = Arc::new(Front {
        agent,
        limits,
        security,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        request_budget: Arc::new(Semaphore::new(budget_bytes(&limits))),
        per_ip: Arc::new(PerIp::default()),
        open,
        tracker: TaskTracker::new(),
        shutdown,
    });
    let loops: Vec<JoinHandle<()>> = listeners.into_iter().map(|l| tokio::spawn(accept_loop(front.clone(), l))).collect();
    for l in loops {
        let _ = l.await;
    }
    front.tracker.close();
    front.tracker.wait().await;
}

async fn accept_loop(front: Arc<Front>, listener: Listener) {
    let shutdown = &front.shutdown;
    loop {
        let permit = tokio::select! {
            p = front.slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.socket.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let Some(ip_slot) = front.per_ip.enter(peer.ip(), front.limits.max_connections_per_ip) else {
                    closed(Closed::PerIpLimit).inc();
                    tracing::debug!(%peer, "closing connection: max_connections_per_ip");
                    drop(socket);
                    continue;
                };
                let endpoint = listener.endpoint.clone();
                let front2 = front.clone();
                front.open.fetch_add(1, Ordering::Relaxed);
                front.tracker.spawn(async move {
                    let reason = start(socket, peer, endpoint, &front2).await;
                    closed(reason).inc();
                    front2.open.fetch_sub(1, Ordering::Relaxed);
                    drop((ip_slot, permit));
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// TLS and SASL as the listener asks, then the connection itself.
async fn start(socket: TcpStream, addr: SocketAddr, endpoint: Arc<Endpoint>, front: &Front) -> Closed {
    let _ = socket.set_nodelay(true);
    if !endpoint.protocol.tls() {
        let (rd, wr) = socket.into_split();
        return authenticated(rd, wr, addr, endpoint, ANONYMOUS.to_string(), front).await;
    }
    let Some(tls) = &front.security.tls else {
        // Validated at start-up: a TLS listener has a certificate.
        return Closed::TlsHandshake;
    };
    let handshake = tokio::time::timeout(front.limits.request_read_timeout, tls.acceptor().accept(socket));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, "TLS handshake failed");
                return Closed::TlsHandshake;
            }
            Err(_) => return Closed::TlsHandshake,
        },
        _ = front.shutdown.cancelled() => return Closed::Shutdown,
    };
    let subject = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| tls::subject_name(c));
    let principal = subject.map(|s| format!("User:{s}")).unwrap_or_else(|| ANONYMOUS.to_string());
    let (rd, wr) = tokio::io::split(stream);
    authenticated(rd, wr, addr, endpoint, principal, front).await
}

/// SASL first on a SASL listener, then the connection.
async fn authenticated<R, W>(mut rd: R, mut wr: W, addr: SocketAddr, endpoint: Arc<Endpoint>, principal: String, front: &Front) -> Closed
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut principal = principal;
    let mut session = None;
    if endpoint.protocol.sasl() {
        let mut sasl = Sasl::new(front.security.sasl.clone());
        let anonymous = Arc::new(Peer::anonymous(addr, endpoint.clone()));
        if let Err(reason) = authenticate(&mut rd, &mut wr, &mut sasl, &anonymous, front).await {
            return reason;
        }
        principal = sasl.principal().unwrap_or(ANONYMOUS).to_string();
        session = Some(Arc::new(tokio::sync::Mutex::new(sasl)));
    }
    let peer = Arc::new(Peer { addr, endpoint, principal, software: Default::default() });
    connection(rd, wr, peer, session, front.agent.clone(), front.limits, front.request_budget.clone(), front.shutdown.clone()).await
}

/// The SASL exchange before any other request: ApiVersions, SaslHandshake, SaslAuthenticate
/// (or bare tokens after a v0 handshake), one at a time, each within `request_read_timeout_ms`.
async fn authenticate<R, W>(rd: &mut R, wr: &mut W, sasl: &mut Sasl, anonymous: &Arc<Peer>, front: &Front) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = FrameLimits {
        max_bytes: (sasl::TOKEN_BYTES_MAX as u64).min(front.limits.max_request_bytes),
        read_timeout: front.limits.request_read_timeout,
        budget_bytes: budget_bytes(&front.limits),
    };
    let addr = anonymous.addr;
    let mut raw = false;
    loop {
        let frame = tokio::select! {
            f = read_frame(rd, limits, &front.request_budget, tokio::time::sleep(front.limits.request_read_timeout)) => f,
            _ = front.shutdown.cancelled() => return Err(Closed::Shutdown),
        };
        let frame = match frame {
            Ok(Some((frame, _permit))) => frame,
            Ok(None) => return Err(Closed::Client),
            Err(FrameError::Idle | FrameError::ReadTimeout(_)) => return Err(Closed::ReadTimeout),
            Err(FrameError::BadSize(..)) => return Err(Closed::BadRequest),
            Err(FrameError::Io(_)) => return Err(Closed::Client),
        };
        let timeout = front.limits.request_read_timeout;
        if raw {
            // After a v0 handshake: the token is the whole frame, and so is the answer.
            return match sasl::answer_raw(sasl, front.agent.controller.as_ref(), &frame).await {
                Ok((bytes, done)) => {
                    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
                    out.extend_from_slice(&bytes);
                    write_within(wr, vec![Bytes::from(out)], timeout).await.ok_or(Closed::Client)?;
                    if done.is_some() {
                        Ok(())
                    } else {
                        continue;
                    }
                }
                Err(why) => {
                    tracing::debug!(%addr, reason = why, "closing connection: SASL authentication failed");
                    Err(Closed::Authentication)
                }
            };
        }
        let key = [frame[0], frame.get(1).copied().unwrap_or(0)];
        if key == API_VERSIONS_KEY {
            match handlers::handle(front.agent.clone(), frame, anonymous.clone(), None, 0).await {
                Outcome::Respond(out) | Outcome::Throttled(out, _) => write_within(wr, out, timeout).await.ok_or(Closed::Client)?,
                _ => return Err(Closed::BadRequest),
            };
            continue;
        }
        if key != SASL_HANDSHAKE_KEY && key != SASL_AUTHENTICATE_KEY {
            tracing::debug!(%addr, "closing connection: a request before SASL authentication");
            return Err(Closed::Authentication);
        }
        let parsed = match handlers::parse(frame) {
            Ok(p) => p,
            Err(_) => return Err(Closed::BadRequest),
        };
        let (version, correlation_id) = (parsed.version, parsed.correlation_id);
        let request = match parsed.request {
            handlers::Request::SaslHandshake(r) => {
                raw = version == 0;
                SaslRequest::Handshake { mechanism: r.mechanism.to_string() }
            }
            handlers::Request::SaslAuthenticate(r) => SaslRequest::Authenticate { token: r.auth_bytes, version },
            _ => return Err(Closed::BadRequest),
        };
        let (response, next) = sasl::answer(sasl, front.agent.controller.as_ref(), request).await;
        if let Some(response) = response {
            let outcome = match &response {
                sasl::AnyResponse::Handshake(r) => handlers::encode_response(response.key(), version, correlation_id, r),
                sasl::AnyResponse::Authenticate(r) => handlers::encode_response(response.key(), version, correlation_id, r),
            };
            match outcome {
                Outcome::Respond(out) => write_within(wr, out, timeout).await.ok_or(Closed::Client)?,
                _ => return Err(Closed::BadRequest),
            };
        }
        match next {
            Next::Continue => {}
            Next::Authenticated(_) => return Ok(()),
            Next::Close(why) => {
                tracing::debug!(%addr, reason = why, "closing connection: SASL authentication failed");
                return Err(Closed::Authentication);
            }
        }
    }
}

/// Writes `out` within `timeout`; `None` if that failed.
async fn write_within(wr: &mut (impl AsyncWrite + Unpin), mut out: Vec<Bytes>, timeout: Duration) -> Option<()> {
    tokio::time::timeout(timeout, write_chunks(wr, &mut out)).await.ok().and_then(Result::ok)
}

/// A SaslHandshake or SaslAuthenticate on an authenticated connection: a re-authentication
/// (KIP-368). It must keep the principal; a failure closes the connection.
async fn reauthenticate(agent: Arc<Agent>, session: Arc<tokio::sync::Mutex<Sasl>>, frame: Bytes) -> Outcome {
    let parsed = match handlers::parse(frame) {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let (version, correlation_id) = (parsed.version, parsed.correlation_id);
    let request = match parsed.request {
        // v0 (bare tokens) cannot re-authenticate.
        handlers::Request::SaslHandshake(r) if version >= 1 => SaslRequest::Handshake { mechanism: r.mechanism.to_string() },
        handlers::Request::SaslAuthenticate(r) => SaslRequest::Authenticate { token: r.auth_bytes, version },
        _ => return Outcome::Close("SaslHandshake v0 on an authenticated connection".into()),
    };
    let mut sasl = session.lock().await;
    let (response, next) = sasl::answer(&mut sasl, agent.controller.as_ref(), request).await;
    let outcome = match &response {
        Some(r @ sasl::AnyResponse::Handshake(body)) => handlers::encode_response(r.key(), version, correlation_id, body),
        Some(r @ sasl::AnyResponse::Authenticate(body)) => handlers::encode_response(r.key(), version, correlation_id, body),
        None => Outcome::NoResponse,
    };
    match (next, outcome) {
        (Next::Close(why), Outcome::Respond(frame)) => Outcome::RespondAndClose(frame, why),
        (Next::Close(why), _) => Outcome::Close(why),
        (_, outcome) => outcome,
    }
}

/// Serves one (authenticated) connection until it closes; returns why it closed. `session`:
/// its SASL state, for re-authentication.
#[allow(clippy::too_many_arguments)]
async fn connection<R, W>(
    mut rd: R,
    wr: W,
    peer: Arc<Peer>,
    session: Option<Arc<tokio::sync::Mutex<Sasl>>>,
    agent: Arc<Agent>,
    limits: ConnectionLimits,
    budget: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> Closed
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let (tx, mut rx) = mpsc::channel::<Queued>(limits.max_in_flight_requests.max(1));
    // Cancelled by the writer when it stops (closed connection, fatal request) or by shutdown.
    let stop = shutdown.child_token();
    // Cancelled when the reader stops: waiting fetches are then cancelled, not awaited.
    let gone = CancellationToken::new();
    let activity = Arc::new(Activity::new());
    let mute = Arc::new(Mute::new());
    let writer_mute = mute.clone();
    let writer_stop = stop.clone();
    let writer_gone = gone.clone();
    let writer_activity = activity.clone();
    let writer = tokio::spawn(async move {
        let mut wr = wr;
        // Answers ready to go, as slices (record data straight from the read cache).
        let mut out: Vec<Bytes> = Vec::new();
        let mut out_bytes = 0usize;
        let mut next: Option<Queued> = None;
        // Why the writer ended the connection, if it did.
        let mut closed_by = None;
        let mut cancelled = Vec::new();
        // Requests answered but not yet written: in progress until written.
        let mut unwritten = 0;
        // Their throttles, which start once they are written: (held the connection, time).
        let mut throttles: Vec<(bool, Duration)> = Vec::new();
        // Their latency histograms and read times, recorded once they are written.
        let mut timed: Vec<(&'static Histogram, Instant)> = Vec::new();
        let idle_timeout = limits.idle_timeout;
        loop {
            let mut queued = match next.take() {
                Some(q) => q,
                None => match rx.recv().await {
                    Some(q) => q,
                    None => break,
                },
            };
            let result = if queued.cancellable {
                tokio::select! {
                    r = &mut queued.task => Some(r),
                    () = writer_gone.cancelled() => None,
                }
            } else {
                Some((&mut queued.task).await)
            };
            let Some(result) = result else {
                cancelled.extend(queued.cancel());
                break;
            };
            unwritten += 1;
            let outcome = result.unwrap_or_else(|e| Outcome::Close(format!("handler failed: {e}")));
            match (&outcome, queued.timing) {
                // No answer to write (acks=0): timed to the end of its handling.
                (Outcome::NoResponse, Some((h, read_at))) => h.record(read_at.elapsed()),
                (Outcome::Respond(_) | Outcome::Throttled(..), Some(timing)) => timed.push(timing),
                _ => {}
            }
            if queued.held && !matches!(outcome, Outcome::Throttled(..)) {
                throttles.push((true, Duration::ZERO));
            }
            match outcome {
                Outcome::Respond(frame) => {
                    out_bytes += frame.iter().map(Bytes::len).sum::<usize>();
                    out.extend(frame);
                }
                Outcome::Throttled(frame, throttle) => {
                    out_bytes += frame.iter().map(Bytes::len).sum::<usize>();
                    out.extend(frame);
                    throttles.push((queued.held, throttle));
                }
                Outcome::NoResponse => {}
                Outcome::Close(reason) => {
                    tracing::debug!(peer = %addr, reason, "closing connection");
                    closed_by = Some(Closed::BadRequest);
                    break;
                }
                Outcome::RespondAndClose(frame, reason) => {
                    tracing::debug!(peer = %addr, reason, "closing connection after the answer");
                    out.extend(frame);
                    let _ = tokio::time::timeout(idle_timeout, write_chunks(&mut wr, &mut out)).await;
                    closed_by = Some(Closed::Authentication);
                    break;
                }
            }
            // Write answers that are ready back to back (one writev); write as soon as the next
            // one is not ready, or enough is waiting.
            next = rx.try_recv().ok();
            let next_ready = next.as_ref().is_some_and(|q| q.task.is_finished());
            if !next_ready || out_bytes >= WRITE_BATCH_BYTES {
                // A client that reads nothing for the idle timeout is as good as idle.
                match tokio::time::timeout(idle_timeout, write_chunks(&mut wr, &mut out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        closed_by = Some(Closed::Idle);
                        break;
                    }
                }
                out_bytes = 0;
                for (held, throttle) in throttles.drain(..) {
                    writer_mute.written(held, throttle);
                }
                writer_activity.touch();
                writer_activity.in_flight.fetch_sub(std::mem::take(&mut unwritten), Ordering::AcqRel);
                for (h, read_at) in timed.drain(..) {
                    h.record(read_at.elapsed());
                }
            }
        }
        // Nobody will await what is still queued: cancel the fetches (others finish on their own).
        rx.close();
        cancelled.extend(next.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())).filter_map(Queued::cancel));
        // Aborted tasks end at their next await; wait for that, so none outlives the connection.
        for task in cancelled {
            let _ = task.await;
        }
        if closed_by.is_none() {
            let _ = tokio::time::timeout(idle_timeout, write_chunks(&mut wr, &mut out)).await;
        }
        let _ = wr.shutdown().await;
        writer_stop.cancel();
        closed_by
    });
    let frame_limits = FrameLimits {
        max_bytes: limits.max_request_bytes,
        read_timeout: limits.request_read_timeout,
        budget_bytes: budget_bytes(&limits),
    };
    let reauth_due = session.is_some();
    let mut last_produce: Option<oneshot::Receiver<()>> = None;
    let mut last_ordered: Option<oneshot::Receiver<()>> = None;
    let reason = loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd, frame_limits, &budget, activity.idle(limits.idle_timeout)) => f,
            _ = stop.cancelled() => break if shutdown.is_cancelled() { Closed::Shutdown } else { Closed::Client },
        };
        match frame {
            Ok(Some((frame, permit))) => {
                let read_at = Instant::now();
                activity.touch();
                let key = [frame[0], frame[1]];
                let sasl_request = key == SASL_HANDSHAKE_KEY || key == SASL_AUTHENTICATE_KEY;
                // KIP-368: past the session's end only a re-authentication (or ApiVersions) is
                // taken; anything else closes the connection.
                if let Some(s) = &session
                    && reauth_due
                    && !sasl_request
                    && key != API_VERSIONS_KEY
                    && s.lock().await.expired(std::time::Instant::now())
                {
                    tracing::debug!(peer = %addr, "closing connection: SASL session expired without re-authentication");
                    break Closed::Authentication;
                }
                // Client quotas: a throttled answer keeps the next request waiting.
                tokio::select! {
                    () = mute.wait() => {}
                    _ = stop.cancelled() => break if shutdown.is_cancelled() { Closed::Shutdown } else { Closed::Client },
                }
                let produce_throttle_ms = if key == PRODUCE_KEY {
                    tokio::select! {
                        ms = handlers::produce_read(&agent, &peer.principal, &frame) => ms,
                        _ = stop.cancelled() => break if shutdown.is_cancelled() { Closed::Shutdown } else { Closed::Client },
                    }
                } else {
                    0
                };
                let held = produce_throttle_ms > 0;
                if held {
                    mute.hold();
                }
                let turn = if key == PRODUCE_KEY {
                    Some(Turn::next(&mut last_produce, Some(agent.hand_offs.enter())))
                } else if ORDERED_KEYS.contains(&key) {
                    Some(Turn::next(&mut last_ordered, None))
                } else {
                    None
                };
                let cancellable = frame[..2] == FETCH_KEY;
                let timing = request_metrics::of_frame(&frame).map(|m| {
                    m.requests.inc();
                    (&*m.seconds, read_at)
                });
                let agent = agent.clone();
                let peer = peer.clone();
                let session = if sasl_request { session.clone() } else { None };
                activity.in_flight.fetch_add(1, Ordering::AcqRel);
                let task = tokio::spawn(async move {
                    let outcome = match session {
                        Some(session) => reauthenticate(agent, session, frame).await,
                        None => handlers::handle(agent, frame, peer, turn, produce_throttle_ms).await,
                    };
                    drop(permit);
                    outcome
                });
                if tx.send(Queued { task, cancellable, held, timing }).await.is_err() {
                    break Closed::Client;
                }
            }
            Ok(None) => break Closed::Client,
            Err(e) => {
                tracing::debug!(peer = %addr, error = %e, "closing connection");
                break match e {
                    FrameError::Idle => Closed::Idle,
                    FrameError::ReadTimeout(_) => Closed::ReadTimeout,
                    FrameError::BadSize(..) => Closed::BadRequest,
                    FrameError::Io(_) => Closed::Client,
                };
            }
        }
    };
    gone.cancel();
    drop(tx);
    let closed_by = writer.await.unwrap_or(None);
    // Sessions this connection opened (or used last) end with it; a task cancelled above can
    // no longer open one.
    agent.fetch_sessions.close_owner(addr);
    closed_by.unwrap_or(reason)
}
