//! Length-prefixed frames: a 4-byte big-endian size, then that many bytes. The size is checked
//! against `max_request_bytes` before any buffer is allocated, so a forged size costs nothing.
//!
//! The request budget (`max_in_flight_request_bytes`, shared by all connections) is taken as
//! the bytes arrive, [`BUDGET_STEP_BYTES`] at a time, not for the declared size up front: a
//! client that declares a 100 MiB frame and trickles it holds only what it sent, so a few slow
//! senders cannot starve every other connection of the budget (a frame of at most one step,
//! nearly every request, still reserves its whole size before its body is read). The buffer
//! grows the same way. A frame must arrive whole within `request_read_timeout_ms` of its first
//! byte (waits for budget after its first step count too, so frames stuck half-read while
//! others hold the budget cannot stay stuck); the wait for the first step does not count, as
//! the frame holds nothing then. Between frames, the connection's idle future decides how long
//! the reader waits for the next frame's first byte.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The smallest request: api key, api version, correlation id.
pub const MIN_FRAME_BYTES: usize = 8;
/// Budget (and buffer) a frame takes at a time as its bytes arrive.
pub const BUDGET_STEP_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is outside {MIN_FRAME_BYTES}..={1}")]
    BadSize(i64, u64),
    #[error("frame not read whole within {0:?} of its first byte")]
    ReadTimeout(Duration),
    #[error("connection idle")]
    Idle,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What bounds one frame, from `[agent]`.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_bytes: u64,
    pub read_timeout: Duration,
    /// The budget semaphore's size: one frame never takes more (a frame larger than the whole
    /// budget takes all of it).
    pub budget_bytes: usize,
}

async fn take(budget: &Arc<Semaphore>, bytes: usize) -> Result<OwnedSemaphorePermit, FrameError> {
    budget
        .clone()
        .acquire_many_owned(bytes as u32)
        .await
        .map_err(|_| FrameError::Io(std::io::Error::other("request budget closed")))
}

/// Reads one frame, taking budget from `budget` (the bytes of requests in flight across all
/// connections) as its bytes arrive. `Ok(None)` on a clean end of stream between frames;
/// `Err(Idle)` if `idle` completes before the frame's first byte arrives. The permit (the
/// frame's size) is released when the caller drops it (request answered).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: FrameLimits,
    budget: &Arc<Semaphore>,
    idle: impl Future<Output = ()>,
) -> Result<Option<(Bytes, OwnedSemaphorePermit)>, FrameError> {
    let mut len = [0u8; 4];
    // `read` is cancel-safe: if `idle` wins, no byte was consumed.
    let first = tokio::select! {
        n = r.read(&mut len) => n?,
        () = idle => return Err(FrameError::Idle),
    };
    if first == 0 {
        return Ok(None);
    }
    let mut deadline = Instant::now() + limits.read_timeout;
    let timed_out = || FrameError::ReadTimeout(limits.read_timeout);
    tokio::time::timeout_at(deadline, r.read_exact(&mut len[first..])).await.map_err(|_| timed_out())??;
    let size = i32::from_be_bytes(len) as i64;
    if size < MIN_FRAME_BYTES as i64 || size as u64 > limits.max_bytes {
        return Err(FrameError::BadSize(size, limits.max_bytes));
    }
    let size = size as usize;
    let share = |held: usize| (size - held).min(BUDGET_STEP_BYTES).min(limits.budget_bytes.saturating_sub(held));
    // The first step: its wait does not count against the deadline (nothing is held yet).
    let step = share(0);
    let waited = Instant::now();
    let mut permit = take(budget, step).await?;
    deadline += waited.elapsed();
    // Bytes the buffer may hold before more budget is taken.
    let mut allowed = size.min(BUDGET_STEP_BYTES);
    // Read straight into spare capacity: zeroing the buffer first cost a pass over every byte.
    let mut buf = BytesMut::with_capacity(allowed);
    while buf.len() < size {
        if buf.len() == allowed {
            let step = share(permit.num_permits());
            if step > 0 {
                permit.merge(tokio::time::timeout_at(deadline, take(budget, step)).await.map_err(|_| timed_out())??);
            }
            let more = (size - allowed).min(BUDGET_STEP_BYTES);
            allowed += more;
            buf.reserve(more);
        }
        let want = allowed - buf.len();
        let n = tokio::time::timeout_at(deadline, r.read_buf(&mut (&mut buf).limit(want))).await.map_err(|_| timed_out())??;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    // Every byte read was paid for (up to the whole budget).
    assert_eq!(permit.num_permits(), size.min(limits.budget_bytes));
    Ok(Some((buf.freeze(), permit)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;
    use tokio::io::AsyncWriteExt;

    fn limits(max_bytes: u64) -> FrameLimits {
        FrameLimits { max_bytes, read_timeout: Duration::from_secs(30), budget_bytes: 1000 }
    }

    #[tokio::test]
    async fn frames_are_bounded_before_allocation() {
        let budget = Arc::new(Semaphore::new(1000));
        let mut ok: &[u8] = &[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let (frame, permit) = read_frame(&mut ok, limits(100), &budget, pending()).await.unwrap().unwrap();
        assert_eq!(frame.len(), 8);
        assert_eq!(budget.available_permits(), 992);
        drop(permit);
        assert_eq!(budget.available_permits(), 1000);
        assert!(read_frame(&mut ok, limits(100), &budget, pending()).await.unwrap().is_none());
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut huge, limits(100), &budget, pending()).await, Err(FrameError::BadSize(..))));
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut negative, limits(100), &budget, pending()).await, Err(FrameError::BadSize(..))));
        let mut truncated: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(read_frame(&mut truncated, limits(100), &budget, pending()).await, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn back_to_back_frames_split_anywhere_read_exactly() {
        let budget = Arc::new(Semaphore::new(1000));
        let frames: Vec<Vec<u8>> = vec![(0..8).collect(), (100..140).collect(), (7..16).collect()];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend((f.len() as u32).to_be_bytes());
            wire.extend(f);
        }
        // All at once (a reader offering more than one frame), then 3 bytes at a time.
        let mut whole: &[u8] = &wire;
        for f in &frames {
            assert_eq!(read_frame(&mut whole, limits(100), &budget, pending()).await.unwrap().unwrap().0, f[..]);
        }
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move { tokio::io::AsyncWriteExt::write_all(&mut tx, &wire).await });
        for f in &frames {
            assert_eq!(read_frame(&mut rx, limits(100), &budget, pending()).await.unwrap().unwrap().0, f[..]);
        }
        writer.await.unwrap().unwrap();
        assert!(read_frame(&mut rx, limits(100), &budget, pending()).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_holds_only_the_budget_of_what_arrived_and_times_out() {
        let total = 8 * BUDGET_STEP_BYTES;
        let budget = Arc::new(Semaphore::new(total));
        let limits = FrameLimits { max_bytes: 1 << 30, read_timeout: Duration::from_secs(5), budget_bytes: total };
        let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
        let size = 100 * BUDGET_STEP_BYTES;
        tx.write_all(&(size as u32).to_be_bytes()).await.unwrap();
        tx.write_all(&[1; 1000]).await.unwrap();
        let reading = read_frame(&mut rx, limits, &budget, pending());
        // Nothing more arrives: the frame times out, holding one step until then.
        let probe = budget.clone();
        let check = async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            probe.available_permits()
        };
        let (result, available) = tokio::join!(reading, check);
        assert_eq!(available, total - BUDGET_STEP_BYTES);
        assert!(matches!(result, Err(FrameError::ReadTimeout(_))), "{result:?}");
        assert_eq!(budget.available_permits(), total);
    }

    #[tokio::test]
    async fn frames_larger_than_a_step_or_the_budget_are_read_whole() {
        let total = 2 * BUDGET_STEP_BYTES + 5;
        let budget = Arc::new(Semaphore::new(total));
        let limits = FrameLimits { max_bytes: 1 << 30, read_timeout: Duration::from_secs(30), budget_bytes: total };
        for size in [BUDGET_STEP_BYTES + 3, 5 * BUDGET_STEP_BYTES / 2] {
            let body: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let mut wire = (size as u32).to_be_bytes().to_vec();
            wire.extend(&body);
            let (frame, permit) = read_frame(&mut &wire[..], limits, &budget, pending()).await.unwrap().unwrap();
            assert_eq!(frame, body);
            assert_eq!(permit.num_permits(), size.min(total));
        }
    }

    #[tokio::test]
    async fn idle_wins_only_before_the_first_byte() {
        let budget = Arc::new(Semaphore::new(1000));
        let (mut tx, mut rx) = tokio::io::duplex(64);
        let idle = read_frame(&mut rx, limits(100), &budget, std::future::ready(())).await;
        assert!(matches!(idle, Err(FrameError::Idle)), "{idle:?}");
        tx.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
        // Bytes waiting: read whether or not idle is ready (select! is random among ready branches).
        let mut got = None;
        for _ in 0..64 {
            match read_frame(&mut rx, limits(100), &budget, std::future::ready(())).await {
                Ok(Some((frame, _))) => {
                    got = Some(frame);
                    break;
                }
                Err(FrameError::Idle) => continue,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got.unwrap().len(), 8);
    }
}
