//! Kafka record batch v2 headers: parse, validate, patch. Never decodes or re-encodes records.
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 | crc u32 |
//! attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64 |
//! producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records...
//! ```
//! The CRC32C covers everything from `attributes` to the end of the batch, so the base offset
//! and the partition leader epoch can be patched in place when a batch is served.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes before `batchLength` counts: baseOffset + batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// The fixed header of a v2 batch.
pub const BATCH_HEADER_BYTES: usize = 61;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LEADER_EPOCH_OFFSET: usize = 12;
/// Kafka's LegacyRecord.RECORD_OVERHEAD_V0: the smallest size field a batch may claim.
const MIN_SIZE_FIELD: i32 = 14;

/// The header fields the object index and the fetch path need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch, header included.
    pub size_bytes: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Offsets this batch occupies once assigned (Kafka: lastOffsetDelta + 1).
    pub fn offset_count(&self) -> i64 {
        i64::from(self.last_offset_delta) + 1
    }
    pub fn compression(&self) -> i16 {
        self.attributes & 0x07
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
}

/// Why a producer's records were refused; each maps to the Kafka error code a broker sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// CORRUPT_MESSAGE: framing or CRC broken.
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    /// INVALID_RECORD: well framed but not acceptable (magic, count, control batch...).
    #[error("invalid record batch: {0}")]
    Invalid(&'static str),
    /// UNSUPPORTED_COMPRESSION_TYPE: zstd before Produce v7.
    #[error("compression type not supported by this request version")]
    UnsupportedCompression,
}

/// Reads the header of the batch at the start of `buf` without checking its CRC.
/// Returns `None` if fewer than a whole batch's bytes are present.
pub fn peek_header(buf: &[u8]) -> Result<Option<BatchHeader>, RecordsError> {
    if buf.len() < LOG_OVERHEAD {
        return Ok(None);
    }
    let mut b = buf;
    let base_offset = b.get_i64();
    let size_field = b.get_i32();
    if size_field < MIN_SIZE_FIELD {
        return Err(RecordsError::Corrupt("batch length below the minimum record overhead"));
    }
    let size = LOG_OVERHEAD + size_field as usize;
    if buf.len() < size {
        return Ok(None);
    }
    if buf[MAGIC_OFFSET] != 2 {
        return Err(RecordsError::Invalid("only record batch magic v2 is accepted"));
    }
    if size < BATCH_HEADER_BYTES {
        return Err(RecordsError::Corrupt("batch smaller than the v2 header"));
    }
    let mut h = &buf[ATTRIBUTES_OFFSET..BATCH_HEADER_BYTES];
    Ok(Some(BatchHeader {
        base_offset,
        size_bytes: size as u32,
        attributes: h.get_i16(),
        last_offset_delta: h.get_i32(),
        base_timestamp: h.get_i64(),
        max_timestamp: h.get_i64(),
        producer_id: h.get_i64(),
        producer_epoch: h.get_i16(),
        base_sequence: h.get_i32(),
        record_count: h.get_i32(),
    }))
}

/// Validates a Produce partition's records as Kafka does for Produce v3+: exactly one v2 batch,
/// CRC32C correct, offsets consistent, not a control batch. Returns the batch (trailing partial
/// bytes dropped, as Kafka ignores them) and its header.
pub fn validate_produce(records: &Bytes, api_version: i16) -> Result<(Bytes, BatchHeader), RecordsError> {
    let header = peek_header(records)?
        .ok_or(RecordsError::Invalid("produce requests must have at least one record batch per partition"))?;
    let size = header.size_bytes as usize;
    let rest = &records[size..];
    match peek_header(rest) {
        Ok(None) => {}
        // A second whole batch, of any magic: Kafka accepts exactly one per partition.
        Ok(Some(_)) | Err(RecordsError::Invalid(_)) => {
            return Err(RecordsError::Invalid("produce requests may hold exactly one record batch per partition"));
        }
        Err(e) => return Err(e),
    }
    let batch = records.slice(..size);
    if !crc_ok(&batch) {
        return Err(RecordsError::Corrupt("record batch CRC32C mismatch"));
    }
    match header.compression() {
        0..=3 => {}
        4 if api_version >= 7 => {}
        4 => return Err(RecordsError::UnsupportedCompression),
        _ => return Err(RecordsError::Corrupt("unknown compression type")),
    }
    if header.last_offset_delta < 0 || header.record_count != header.last_offset_delta + 1 {
        return Err(RecordsError::Invalid("record count does not match the batch's offset range"));
    }
    if header.is_control() {
        return Err(RecordsError::Invalid("clients may not produce control batches"));
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(RecordsError::Invalid("batch with a producer id has no base sequence"));
    }
    Ok((batch, header))
}

/// Whether the CRC32C of a whole batch matches its header.
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= BATCH_HEADER_BYTES
        && crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..])
            == u32::from_be_bytes([batch[CRC_OFFSET], batch[CRC_OFFSET + 1], batch[CRC_OFFSET + 2], batch[CRC_OFFSET + 3]])
}

/// Rewrites the base offset and partition leader epoch of the batch at the start of `batch`.
/// Neither field is covered by the CRC.
pub fn patch_header(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Attributes of a transaction marker: transactional (bit 4) and control (bit 5).
const CONTROL_ATTRIBUTES: i16 = 0x30;
/// Control record key type of an abort marker (Kafka's ControlRecordType.ABORT); commit is 1.
const CONTROL_TYPE_ABORT: i16 = 0;
const CONTROL_TYPE_COMMIT: i16 = 1;

/// A transaction marker: a control batch of one record whose key is (version 0, type abort 0 or
/// commit 1) and whose value is Kafka's EndTxnMarker (version 0, coordinator epoch), with the
/// producer's id and epoch, base sequence -1, base offset 0 (assigned at commit), CRC set.
pub fn control_batch(producer_id: i64, producer_epoch: i16, commit: bool, timestamp_ms: i64, coordinator_epoch: i32) -> (Bytes, BatchHeader) {
    let kind = if commit { CONTROL_TYPE_COMMIT } else { CONTROL_TYPE_ABORT };
    let mut record = Vec::with_capacity(16);
    record.push(0); // record attributes
    record.push(0); // timestamp delta (zigzag varint 0)
    record.push(0); // offset delta
    record.push(4 << 1); // key length 4 (zigzag)
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&kind.to_be_bytes());
    record.push(6 << 1); // value length 6 (zigzag)
    record.extend_from_slice(&0i16.to_be_bytes());
    record.extend_from_slice(&coordinator_epoch.to_be_bytes());
    record.push(0); // no headers
    let mut b = Vec::with_capacity(BATCH_HEADER_BYTES + 1 + record.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // batch length, below
    b.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    b.extend_from_slice(&CONTROL_ATTRIBUTES.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&timestamp_ms.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.push((record.len() as u8) << 1); // record length (zigzag varint, < 64)
    b.extend_from_slice(&record);
    let len = (b.len() - LOG_OVERHEAD) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    let header = BatchHeader {
        base_offset: 0,
        size_bytes: b.len() as u32,
        attributes: CONTROL_ATTRIBUTES,
        last_offset_delta: 0,
        base_timestamp: timestamp_ms,
        max_timestamp: timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence: -1,
        record_count: 1,
    };
    (Bytes::from(b), header)
}

/// The marker type of a control batch: Some(true) commit, Some(false) abort, None if `batch`
/// is not a whole transaction marker.
pub fn marker_kind(batch: &[u8]) -> Option<bool> {
    let h = peek_header(batch).ok().flatten()?;
    // length, attributes, timestamp delta, offset delta, key length (one byte each), then the key.
    let key = batch.get(BATCH_HEADER_BYTES + 5..BATCH_HEADER_BYTES + 9)?;
    if !h.is_control() || h.record_count != 1 {
        return None;
    }
    match i16::from_be_bytes([key[2], key[3]]) {
        CONTROL_TYPE_ABORT => Some(false),
        CONTROL_TYPE_COMMIT => Some(true),
        _ => None,
    }
}

/// Batches at least this large go out as slices of the read cache's buffers; smaller ones are
/// copied (an iovec per small batch would cost more than the copy).
pub const ZERO_COPY_MIN_BATCH_BYTES: usize = 4096;
/// The header bytes a fetch rewrites: base offset, batch length, partition leader epoch.
const PATCHED_HEADER_BYTES: usize = 16;

/// Record batches on their way to a consumer, as a chain of byte slices: patched headers and
/// small batches in one buffer of the chain's own, the bodies of large batches as slices of the
/// cached object blocks they were read from (no copy: our analogue of Kafka's sendfile).
#[derive(Debug, Default)]
pub struct BatchChain {
    chunks: Vec<Bytes>,
    pending: BytesMut,
    len: usize,
}

impl BatchChain {
    /// Appends one whole `batch`, its base offset and leader epoch rewritten on the way.
    pub fn push(&mut self, batch: &Bytes, base_offset: i64, leader_epoch: i32) {
        let at = self.pending.len();
        if batch.len() >= ZERO_COPY_MIN_BATCH_BYTES {
            self.pending.extend_from_slice(&batch[..PATCHED_HEADER_BYTES]);
            patch_header(&mut self.pending[at..], base_offset, leader_epoch);
            self.chunks.push(self.pending.split().freeze());
            self.chunks.push(batch.slice(PATCHED_HEADER_BYTES..));
        } else {
            self.pending.extend_from_slice(batch);
            patch_header(&mut self.pending[at..], base_offset, leader_epoch);
        }
        self.len += batch.len();
    }

    /// Bytes in the chain.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chain's slices, in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        if !self.pending.is_empty() {
            self.chunks.push(self.pending.split().freeze());
        }
        self.chunks
    }

    /// The chain as one buffer (a copy, for callers that need contiguous bytes).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.extend_from_slice(&self.pending);
        out.freeze()
    }
}

/// Iterates the whole batches stored back to back in `buf` (as in an object's extent).
/// Stops at the first incomplete or malformed header.
pub fn batches(buf: &[u8]) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let h = peek_header(&buf[pos..]).ok().flatten()?;
        let at = pos;
        pos += h.size_bytes as usize;
        Some((at, h))
    })
}

/// Test and tool helper: encodes a v2 batch of `count` uncompressed records with the given
/// values, correct CRC. Real clients produce the batches that matter; this makes unit tests
/// possible without one.
pub fn encode_batch(base_timestamp: i64, values: &[&[u8]]) -> Bytes {
    encode_producer_batch(None, base_timestamp, values)
}

/// Like [`encode_batch`], for an idempotent producer: `(producer id, epoch, base sequence)`.
pub fn encode_producer_batch(producer: Option<(i64, i16, i32)>, base_timestamp: i64, values: &[&[u8]]) -> Bytes {
    let (producer_id, epoch, sequence) = producer.unwrap_or((-1, -1, -1));
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    let mut records = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut r = Vec::new();
        r.push(0u8); // attributes
        varint(&mut r, 0); // timestamp delta
        varint(&mut r, i as i64); // offset delta
        varint(&mut r, -1); // key: null
        varint(&mut r, v.len() as i64);
        r.extend_from_slice(v);
        varint(&mut r, 0); // headers
        varint(&mut records, r.len() as i64);
        records.extend_from_slice(&r);
    }
    let n = values.len() as i32;
    let mut tail = Vec::new(); // from attributes on
    tail.extend_from_slice(&0i16.to_be_bytes());
    tail.extend_from_slice(&(n - 1).to_be_bytes());
    tail.extend_from_slice(&base_timestamp.to_be_bytes());
    tail.extend_from_slice(&base_timestamp.to_be_bytes());
    tail.extend_from_slice(&producer_id.to_be_bytes());
    tail.extend_from_slice(&epoch.to_be_bytes());
    tail.extend_from_slice(&sequence.to_be_bytes());
    tail.extend_from_slice(&n.to_be_bytes());
    tail.extend_from_slice(&records);
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records.len());
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&((tail.len() + 9) as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.push(2);
    out.extend_from_slice(&crc32c::crc32c(&tail).to_be_bytes());
    out.extend_from_slice(&tail);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_markers_are_valid_control_batches() {
        for commit in [true, false] {
            let (b, h) = control_batch(42, 3, commit, 1_700_000_000_000, 0);
            assert!(crc_ok(&b));
            assert_eq!(peek_header(&b).unwrap().unwrap(), h);
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(h.offset_count(), 1);
            assert_eq!(marker_kind(&b), Some(commit));
            // A producer may not send one.
            assert!(validate_produce(&b, 9).is_err());
        }
        assert_eq!(marker_kind(&encode_batch(0, &[b"a"])), None);
        let (b, _) = control_batch(1, 0, true, 0, 0);
        for len in 0..b.len() {
            assert_eq!(marker_kind(&b[..len]), None); // truncated: never a panic
        }
    }

    #[test]
    fn a_valid_batch_round_trips_and_patches() {
        let b = encode_batch(1000, &[b"a", b"bb", b"ccc"]);
        let (batch, h) = validate_produce(&b, 9).unwrap();
        assert_eq!(h.record_count, 3);
        assert_eq!(h.offset_count(), 3);
        assert_eq!(h.size_bytes as usize, b.len());
        let mut m = batch.to_vec();
        patch_header(&mut m, 42, 0);
        let m = Bytes::from(m);
        let (_, h2) = validate_produce(&m, 9).unwrap(); // CRC still valid after the patch
        assert_eq!(h2.base_offset, 42);
    }

    #[test]
    fn bad_batches_get_the_kafka_error() {
        let b = encode_batch(1, &[b"x"]);
        let mut crc = b.to_vec();
        let last = crc.len() - 1;
        crc[last] ^= 1;
        assert!(matches!(validate_produce(&crc.into(), 9), Err(RecordsError::Corrupt(_))));
        let mut magic = b.to_vec();
        magic[16] = 1;
        assert!(matches!(validate_produce(&magic.into(), 9), Err(RecordsError::Invalid(_))));
        let mut two = b.to_vec();
        two.extend_from_slice(&b);
        assert!(matches!(validate_produce(&two.into(), 9), Err(RecordsError::Invalid(_))));
        assert!(matches!(validate_produce(&Bytes::new(), 9), Err(RecordsError::Invalid(_))));
        let mut short = b.to_vec();
        short[8..12].copy_from_slice(&3i32.to_be_bytes());
        assert!(matches!(validate_produce(&short.into(), 9), Err(RecordsError::Corrupt(_))));
        // A partial trailing batch is ignored, as Kafka does.
        let mut trailing = b.to_vec();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert_eq!(validate_produce(&trailing.into(), 9).unwrap().0, b);
    }

    #[test]
    fn batches_iterates_back_to_back() {
        let a = encode_batch(1, &[b"x", b"y"]);
        let b = encode_batch(2, &[b"z"]);
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        let found: Vec<_> = batches(&both).map(|(at, h)| (at, h.record_count)).collect();
        assert_eq!(found, vec![(0, 2), (a.len(), 1)]);
    }
}
