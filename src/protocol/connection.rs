//! The accept loop and one connection.
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
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{FrameError, FrameLimits, read_frame};
use super::handlers::{self, Outcome};
use crate::agent::{Agent, Turn};
use crate::metrics::{self, Counter};

const PRODUCE_KEY: [u8; 2] = 0i16.to_be_bytes();
const FETCH_KEY: [u8; 2] = 1i16.to_be_bytes();
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
}

fn closed(reason: Closed) -> &'static Counter {
    static BY_REASON: OnceLock<[Arc<Counter>; 6]> = OnceLock::new();
    let c = BY_REASON.get_or_init(|| {
        ["client", "per_ip_limit", "idle", "read_timeout", "bad_request", "shutdown"]
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

/// Accepts connections until `shutdown`, then waits for every connection to finish.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, limits: ConnectionLimits, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let request_budget = Arc::new(Semaphore::new(budget_bytes(&limits)));
    let per_ip = Arc::new(PerIp::default());
    let open = Arc::new(AtomicUsize::new(0));
    let gauge = open.clone();
    metrics::gauges("sidestream_connections", "Client connections open.", move || vec![(Vec::new(), gauge.load(Ordering::Relaxed) as i64)]);
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let Some(ip_slot) = per_ip.enter(peer.ip(), limits.max_connections_per_ip) else {
                    closed(Closed::PerIpLimit).inc();
                    tracing::debug!(%peer, "closing connection: max_connections_per_ip");
                    drop(socket);
                    continue;
                };
                let agent = agent.clone();
                let shutdown = shutdown.clone();
                let budget = request_budget.clone();
                let open = open.clone();
                open.fetch_add(1, Ordering::Relaxed);
                tracker.spawn(async move {
                    let reason = connection(socket, peer, agent, limits, budget, shutdown).await;
                    closed(reason).inc();
                    open.fetch_sub(1, Ordering::Relaxed);
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
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection until it closes; returns why it closed.
async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    agent: Arc<Agent>,
    limits: ConnectionLimits,
    budget: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> Closed {
    let _ = socket.set_nodelay(true);
    let (mut rd, wr) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<Queued>(limits.max_in_flight_requests.max(1));
    // Cancelled by the writer when it stops (closed connection, fatal request) or by shutdown.
    let stop = shutdown.child_token();
    // Cancelled when the reader stops: waiting fetches are then cancelled, not awaited.
    let gone = CancellationToken::new();
    let activity = Arc::new(Activity::new());
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
            match outcome {
                Outcome::Respond(frame) => {
                    out_bytes += frame.iter().map(Bytes::len).sum::<usize>();
                    out.extend(frame);
                }
                Outcome::NoResponse => {}
                Outcome::Close(reason) => {
                    tracing::debug!(%peer, reason, "closing connection");
                    closed_by = Some(Closed::BadRequest);
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
                writer_activity.touch();
                writer_activity.in_flight.fetch_sub(std::mem::take(&mut unwritten), Ordering::AcqRel);
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
    let mut last_produce: Option<oneshot::Receiver<()>> = None;
    let mut last_ordered: Option<oneshot::Receiver<()>> = None;
    let reason = loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd, frame_limits, &budget, activity.idle(limits.idle_timeout)) => f,
            _ = stop.cancelled() => break if shutdown.is_cancelled() { Closed::Shutdown } else { Closed::Client },
        };
        match frame {
            Ok(Some((frame, permit))) => {
                activity.touch();
                let key = [frame[0], frame[1]];
                let turn = if key == PRODUCE_KEY {
                    Some(Turn::next(&mut last_produce, Some(agent.hand_offs.enter())))
                } else if ORDERED_KEYS.contains(&key) {
                    Some(Turn::next(&mut last_ordered, None))
                } else {
                    None
                };
                let cancellable = frame[..2] == FETCH_KEY;
                let agent = agent.clone();
                activity.in_flight.fetch_add(1, Ordering::AcqRel);
                let task = tokio::spawn(async move {
                    let outcome = handlers::handle(agent, frame, peer, turn).await;
                    drop(permit);
                    outcome
                });
                if tx.send(Queued { task, cancellable }).await.is_err() {
                    break Closed::Client;
                }
            }
            Ok(None) => break Closed::Client,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "closing connection");
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
    agent.fetch_sessions.close_owner(peer);
    closed_by.unwrap_or(reason)
}
