//! Length-prefixed frames: a 4-byte big-endian size, then that many bytes. The size is checked
//! against `max_request_bytes` before any buffer is allocated, so a forged size costs nothing.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The smallest request: api key, api version, correlation id.
pub const MIN_FRAME_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is outside {MIN_FRAME_BYTES}..={1}")]
    BadSize(i64, u64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max_bytes: u64) -> Result<Option<Bytes>, FrameError> {
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
    let mut buf = BytesMut::zeroed(size as usize);
    r.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_bounded_before_allocation() {
        let mut ok: &[u8] = &[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(read_frame(&mut ok, 100).await.unwrap().unwrap().len(), 8);
        assert!(read_frame(&mut ok, 100).await.unwrap().is_none());
        let mut huge: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut huge, 100).await, Err(FrameError::BadSize(..))));
        let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut negative, 100).await, Err(FrameError::BadSize(..))));
        let mut truncated: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(read_frame(&mut truncated, 100).await, Err(FrameError::Io(_))));
    }
}
