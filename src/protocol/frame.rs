//! Length-prefixed frames: a 4-byte big-endian size, then that many bytes. The size is checked
//! against `max_request_bytes` before any buffer is allocated, so a forged size costs nothing.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The smallest request: api key, api version, correlation id.
pub const MIN_FRAME_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is outside {MIN_FRAME_BYTES}..={1}")]
    BadSize(i64, u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame, after reserving its size from `budget` (the bytes of requests in flight
/// across all connections; waits while it is exhausted). `Ok(None)` on a clean end of stream
/// between frames. The permit is released when the caller drops it (request answered).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_bytes: u64,
    budget: &Arc<Semaphore>,
) -> Result<Option<(Bytes, OwnedSemaphorePermit)>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len) as i64;
    if size < MIN_FRAME_BYTES as i64 || size as u64 > max_bytes {
        return Err(FrameError::BadSize(size, max_bytes));
    }
    let want = (size as usize).min(Semaphore::MAX_PERMITS).min(u32::MAX as usize) as u32;
    let permit = budget
        .clone()
        .acquire_many_owned(want)
        .await
        .map_err(|_| FrameError::Io(std::io::Error::other("request budget closed")))?;
    // Read straight into spare capacity: zeroing the buffer first cost a pass over every byte.
    let size = size as usize;
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let want = size - buf.len();
        if r.read_buf(&mut (&mut buf).limit(want)).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Some((buf.freeze(), permit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_before_allocation() {
        let budget = Arc::new(Semaphore::new(1000));
        let mut ok: &[u8] = &[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let (frame, permit) = read_frame(&mut ok, 100, &budget).await.unwrap().unwrap();
        assert_eq!(frame.len(), 8);
        assert_eq!(budget.available_permits(), 992);
        drop(permit);
        assert_eq!(budget.available_permits(), 1000);
        assert!(read_frame(&mut ok, 100, &budget).await.unwrap().is_none());
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut huge, 100, &budget).await, Err(FrameError::BadSize(..))));
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut negative, 100, &budget).await, Err(FrameError::BadSize(..))));
        let mut truncated: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(read_frame(&mut truncated, 100, &budget).await, Err(FrameError::Io(_))));
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
            assert_eq!(read_frame(&mut whole, 100, &budget).await.unwrap().unwrap().0, f[..]);
        }
        let (mut tx, mut rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move { tokio::io::AsyncWriteExt::write_all(&mut tx, &wire).await });
        for f in &frames {
            assert_eq!(read_frame(&mut rx, 100, &budget).await.unwrap().unwrap().0, f[..]);
        }
        writer.await.unwrap().unwrap();
        assert!(read_frame(&mut rx, 100, &budget).await.unwrap().is_none());
    }
}
