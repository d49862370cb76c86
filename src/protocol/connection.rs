//! The accept loop and one connection.
//!
//! A connection has a reader (frames -> one spawned handler task each, queued in request order)
//! and a writer (awaits the queued tasks in order and writes their answers), so requests are
//! pipelined while answers keep Kafka's ordering. Produce requests also take a [`Turn`]: each
//! hands its batches to the WAL or upload buffer only after the previous produce request of the
//! connection did, so offsets follow the order requests were sent, as in Kafka (the waits for
//! fsync or commit still overlap). The queue bounds the requests in flight per connection; a
//! semaphore bounds connections. Shutdown: the token stops the accept loop and
//! every reader; writers finish answering what was read.

use std::net::SocketAddr;
use std::sync::Arc;

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::read_frame;
use super::handlers::{self, Outcome};
use crate::agent::{Agent, HandOffGuard};

const PRODUCE_KEY: [u8; 2] = 0i16.to_be_bytes();
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

/// A produce request's place in its connection's order. [`Turn::wait`] returns once the
/// previous produce request of the connection has queued its batches (or finished); dropping
/// the turn lets the next one go.
pub struct Turn {
    previous: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
    /// Counted from the moment the request is read, so shutdown waits for it.
    pub hand_off: Option<HandOffGuard>,
}

impl Turn {
    pub async fn wait(&mut self) {
        if let Some(previous) = self.previous.take() {
            // An error means the previous handler is gone, which also ends its turn.
            let _ = previous.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else { return };
        match self.previous.take() {
            None => {
                let _ = done.send(());
            }
            // Dropped before its turn came (e.g. an undecodable request): the next one still
            // waits for the previous one.
            Some(previous) => {
                tokio::spawn(async move {
                    let _ = previous.await;
                    let _ = done.send(());
                });
            }
        }
    }
}

/// Limits of the front door, from `[agent]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_request_bytes: u64,
    /// Bytes of requests read but not yet answered, across all connections.
    pub max_in_flight_request_bytes: u64,
    pub max_connections: usize,
    pub max_in_flight_requests: usize,
}

/// Accepts connections until `shutdown`, then waits for every connection to finish.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, limits: ConnectionLimits, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let request_budget =
        Arc::new(Semaphore::new(limits.max_in_flight_request_bytes.min(Semaphore::MAX_PERMITS as u64) as usize));
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
                let agent = agent.clone();
                let shutdown = shutdown.clone();
                let budget = request_budget.clone();
                tracker.spawn(async move {
                    connection(socket, peer, agent, limits, budget, shutdown).await;
                    drop(permit);
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

async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    agent: Arc<Agent>,
    limits: ConnectionLimits,
    budget: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let _ = socket.set_nodelay(true);
    let (mut rd, wr) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<JoinHandle<Outcome>>(limits.max_in_flight_requests.max(1));
    // Cancelled by the writer when it stops (closed connection, fatal request) or by shutdown.
    let stop = shutdown.child_token();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut wr = wr;
        // Answers ready to go, as slices (record data straight from the read cache).
        let mut out: Vec<Bytes> = Vec::new();
        let mut out_bytes = 0usize;
        let mut next: Option<JoinHandle<Outcome>> = None;
        loop {
            let task = match next.take() {
                Some(t) => t,
                None => match rx.recv().await {
                    Some(t) => t,
                    None => break,
                },
            };
            let outcome = task.await.unwrap_or_else(|e| Outcome::Close(format!("handler failed: {e}")));
            match outcome {
                Outcome::Respond(frame) => {
                    out_bytes += frame.iter().map(Bytes::len).sum::<usize>();
                    out.extend(frame);
                }
                Outcome::NoResponse => {}
                Outcome::Close(reason) => {
                    tracing::debug!(%peer, reason, "closing connection");
                    break;
                }
            }
            // Write answers that are ready back to back (one writev); write as soon as the next
            // one is not ready, or enough is waiting.
            next = rx.try_recv().ok();
            let next_ready = next.as_ref().is_some_and(|t| t.is_finished());
            if !next_ready || out_bytes >= WRITE_BATCH_BYTES {
                if write_chunks(&mut wr, &mut out).await.is_err() {
                    break;
                }
                out_bytes = 0;
            }
        }
        let _ = write_chunks(&mut wr, &mut out).await;
        let _ = wr.shutdown().await;
        writer_stop.cancel();
    });
    let mut last_produce: Option<oneshot::Receiver<()>> = None;
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut rd, limits.max_request_bytes, &budget) => f,
            _ = stop.cancelled() => break,
        };
        match frame {
            Ok(Some((frame, permit))) => {
                let turn = (frame[..2] == PRODUCE_KEY).then(|| {
                    let (done, next) = oneshot::channel();
                    Turn { previous: last_produce.replace(next), done: Some(done), hand_off: Some(agent.hand_offs.enter()) }
                });
                let agent = agent.clone();
                let task = tokio::spawn(async move {
                    let outcome = handlers::handle(agent, frame, peer, turn).await;
                    drop(permit);
                    outcome
                });
                if tx.send(task).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "closing connection: bad frame");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
