//! Kafka record batch v2: parse and patch headers; validate a producer's batch down to every
//! record (decompressing into a reused per-thread buffer) as Kafka's `LogValidator` does.
//! Never re-encodes records: a batch is stored as the producer's bytes, but for a
//! LogAppendTime topic's header fields ([`with_log_append_time`]).
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
const MAX_TIMESTAMP_OFFSET: usize = 35;
const LEADER_EPOCH_OFFSET: usize = 12;
/// The attributes bit of timestamp type LogAppendTime.
const LOG_APPEND_TIME: i16 = 0x08;
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
    /// Timestamp type LogAppendTime (attributes bit 3): every record's timestamp is the
    /// batch's max timestamp, the time the broker appended it.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & LOG_APPEND_TIME != 0
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
    /// INVALID_RECORD (compacted topic, record without key) or INVALID_TIMESTAMP (a timestamp
    /// out of the topic's range), with Kafka's per-record errors (KIP-467).
    #[error("{message}")]
    Rejected { timestamp: bool, message: String, record_errors: Vec<(i32, String)> },
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
    let header =
        peek_header(records)?.ok_or(RecordsError::Invalid("produce requests must have at least one record batch per partition"))?;
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
    if header.base_offset != 0 {
        return Err(RecordsError::Invalid("a producer's batch must have base offset 0"));
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(RecordsError::Invalid("batch with a producer id has no base sequence"));
    }
    Ok((batch, header))
}

/// What a producer's records are checked against: the topic's settings that Kafka's
/// `LogValidator` applies, the time, and the agent's bound on a batch's decompressed size.
#[derive(Debug, Clone, Copy)]
pub struct RecordChecks<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The broker's time (record timestamps are checked against it).
    pub now_ms: i64,
    /// `message.timestamp.before.max.ms` / `message.timestamp.after.max.ms`.
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// `cleanup.policy` includes `compact`: every record needs a key.
    pub compacted: bool,
    /// `[agent] max_decompressed_batch_bytes`.
    pub max_decompressed_bytes: usize,
}

/// Kafka's NO_TIMESTAMP: a record without a timestamp is not range-checked.
const NO_TIMESTAMP: i64 = -1;
/// The xerial snappy-java stream header (magic, version 1, compatible version 1).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;
/// A zstd window above this is refused whatever the bound (Kafka's zstd-jni default limit).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// A thread's decompression buffer is kept for the next batch up to this capacity.
const KEPT_BUFFER_BYTES: usize = 4 << 20;

thread_local! {
    /// Decompressed records of the batch being validated; reused by the thread's next batch.
    static DECOMPRESSED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The thread's zstd decompression context (its tables are reused across batches).
    static ZSTD: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Checks every record of a v2 batch whose header `peek_header` read (CRC not checked here):
/// the records section, decompressed when compressed (at most `max_decompressed_bytes`),
/// holds exactly `record_count` well-formed records (lengths, varints, headers), offset deltas
/// 0, 1, 2..., nothing after the last one; keys present on a compacted topic; timestamps within
/// the topic's range. Errors are Kafka's: INVALID_RECORD for what a consumer could not read,
/// INVALID_TIMESTAMP with per-record errors.
pub fn validate_records(batch: &[u8], header: &BatchHeader, checks: &RecordChecks<'_>) -> Result<(), RecordsError> {
    with_records(batch, header, checks.max_decompressed_bytes, |records| walk_records(records, header, checks))
}

/// Runs `f` on the records section of a batch, decompressed when compressed (at most `max`
/// bytes) into the thread's reused buffer.
fn with_records<T>(
    batch: &[u8],
    header: &BatchHeader,
    max: usize,
    f: impl FnOnce(&[u8]) -> Result<T, RecordsError>,
) -> Result<T, RecordsError> {
    let body = batch
        .get(BATCH_HEADER_BYTES..header.size_bytes as usize)
        .ok_or(RecordsError::Corrupt("batch shorter than its header"))?;
    if header.compression() == 0 {
        return f(body);
    }
    DECOMPRESSED.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return Err(RecordsError::Invalid("records read reentrantly")); // never: `f` reads no other batch
        };
        buf.clear();
        let result = decompress(header.compression(), body, &mut buf, max).and_then(|()| f(&buf));
        if buf.capacity() > KEPT_BUFFER_BYTES {
            *buf = Vec::new();
        }
        result
    })
}

/// Kafka's search of a batch for a timestamp (`FileRecords.searchForTimestamp`): the first
/// record whose timestamp is >= `target` and whose offset delta is >= `min_offset_delta` (the
/// log start offset may fall inside the batch), as `(offset delta, timestamp)`. A LogAppendTime
/// batch's records all have its max timestamp. Reads the records section as
/// [`validate_records`] does (decompressed, at most `max_decompressed_bytes`).
pub fn record_at_or_after(
    batch: &[u8],
    header: &BatchHeader,
    target: i64,
    min_offset_delta: i64,
    max_decompressed_bytes: usize,
) -> Result<Option<(i32, i64)>, RecordsError> {
    if header.max_timestamp < target && header.is_log_append_time() {
        return Ok(None);
    }
    with_records(batch, header, max_decompressed_bytes, |mut records| {
        for _ in 0..header.record_count {
            let body = read_varint(&mut records)
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| records.get(..n))
                .ok_or(RecordsError::Invalid("record size exceeds the batch's remaining bytes"))?;
            records = &records[body.len()..];
            let (timestamp_delta, offset_delta, _) = parse_record(body).ok_or(RecordsError::Invalid("found invalid record structure"))?;
            let timestamp =
                if header.is_log_append_time() { header.max_timestamp } else { header.base_timestamp.wrapping_add(timestamp_delta) };
            if timestamp >= target && i64::from(offset_delta) >= min_offset_delta {
                return Ok(Some((offset_delta, timestamp)));
            }
        }
        Ok(None)
    })
}

/// Why [`decompress_bounded`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    #[error("unknown compression type")]
    UnknownCodec,
    #[error("decompresses to more than the bound")]
    TooLarge,
    #[error("does not decompress")]
    Bad,
}

/// `input` compressed with Kafka's codec `codec` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd; the
/// ids of the batch attributes and of PushTelemetry's `compression_type`), decompressed as a
/// batch's records are, into at most `max` bytes (a larger output is refused before it is
/// all written: no zip bombs).
pub fn decompress_bounded(codec: i16, input: &[u8], max: usize) -> Result<Vec<u8>, DecompressError> {
    if codec == 0 {
        return if input.len() > max { Err(DecompressError::TooLarge) } else { Ok(input.to_vec()) };
    }
    let mut out = Vec::new();
    match decompress(codec, input, &mut out, max) {
        Ok(()) => {
            assert!(out.len() <= max, "decompressed past its bound");
            Ok(out)
        }
        Err(e) if e == TOO_LARGE => Err(DecompressError::TooLarge),
        Err(RecordsError::Corrupt(_)) => Err(DecompressError::UnknownCodec),
        Err(_) => Err(DecompressError::Bad),
    }
}

const BAD: RecordsError = RecordsError::Invalid("compressed records do not decompress");
const TOO_LARGE: RecordsError = RecordsError::Invalid("records decompress to more than the agent's max_decompressed_batch_bytes");

/// Decompresses a batch's records section into `out` (empty), refusing more than `max` bytes.
fn decompress(codec: i16, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), RecordsError> {
    use std::io::Read;
    let limit = max as u64 + 1;
    match codec {
        1 => {
            // Kafka reads gzip with java.util.zip.GZIPInputStream: members back to back.
            flate2::read::MultiGzDecoder::new(input).take(limit).read_to_end(out).map_err(|_| BAD)?;
        }
        2 => decompress_snappy(input, out, max)?,
        3 => {
            // The LZ4 frame format (Kafka's KafkaLZ4BlockInputStream); nothing after the frame.
            let mut d = lz4::Decoder::new(input).map_err(|_| BAD)?;
            (&mut d).take(limit).read_to_end(out).map_err(|_| BAD)?;
            if out.len() > max {
                return Err(TOO_LARGE);
            }
            let (rest, finished) = d.finish();
            if finished.is_err() || !rest.is_empty() {
                return Err(BAD);
            }
        }
        4 => decompress_zstd(input, out, max)?,
        _ => return Err(RecordsError::Corrupt("unknown compression type")),
    }
    if out.len() > max { Err(TOO_LARGE) } else { Ok(()) }
}

/// Snappy as Kafka's clients write it: xerial snappy-java framing (header, then blocks of
/// `i32 length | raw snappy`), or one raw snappy block (snappy-java falls back to that too).
fn decompress_snappy(input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), RecordsError> {
    let block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let n = snap::raw::decompress_len(compressed).map_err(|_| BAD)?;
        let at = out.len();
        if n > max - at {
            return Err(TOO_LARGE); // known from the block's header, before any output
        }
        out.resize(at + n, 0);
        let written = snap::raw::Decoder::new().decompress(compressed, &mut out[at..]).map_err(|_| BAD)?;
        if written != n {
            return Err(BAD);
        }
        Ok(())
    };
    if input.len() < XERIAL_HEADER_BYTES || !input.starts_with(XERIAL_MAGIC) {
        return block(input, out);
    }
    let mut rest = &input[XERIAL_HEADER_BYTES..];
    while !rest.is_empty() {
        let len = rest.get(..4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok_or(BAD)?;
        let len = usize::try_from(len).map_err(|_| BAD)?;
        let chunk = rest.get(4..4 + len).ok_or(BAD)?;
        block(chunk, out)?;
        rest = &rest[4 + len..];
    }
    Ok(())
}

/// zstd frames back to back (zstd-jni reads them so), the window bounded, the output bounded.
fn decompress_zstd(input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), RecordsError> {
    use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};
    const STEP_BYTES: usize = 128 << 10;
    ZSTD.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err(BAD);
        };
        if slot.is_none() {
            let mut d = DCtx::try_create().ok_or(BAD)?;
            d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX)).map_err(|_| BAD)?;
            *slot = Some(d);
        }
        let Some(d) = slot.as_mut() else { return Err(BAD) };
        d.reset(ResetDirective::SessionOnly).map_err(|_| BAD)?;
        let mut src = InBuffer::around(input);
        let mut frame_done = false;
        loop {
            if src.pos() == input.len() && frame_done {
                return Ok(());
            }
            if out.len() > max {
                return Ok(()); // the caller refuses
            }
            out.reserve(STEP_BYTES.min(max + 1 - out.len()));
            let before = (src.pos(), out.len());
            let pos = out.len();
            let hint = d.decompress_stream(&mut OutBuffer::around_pos(out, pos), &mut src).map_err(|_| BAD)?;
            frame_done = hint == 0;
            if !frame_done && (src.pos(), out.len()) == before {
                return Err(BAD); // no progress: the input ends inside a frame
            }
        }
    })
}

/// Reads the 7-bit groups of a varint of at most `max_bytes` bytes; bits past 64 are dropped.
fn read_unsigned(buf: &mut &[u8], max_bytes: u32) -> Option<u64> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(raw);
        }
    }
    None
}

/// Reads one zigzag varint of at most 5 bytes, kept to 32 bits (Kafka's ByteUtils.readVarint).
fn read_varint(buf: &mut &[u8]) -> Option<i32> {
    let raw = read_unsigned(buf, 5)? as u32;
    Some(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads one zigzag varlong of at most 10 bytes (Kafka's ByteUtils.readVarlong).
fn read_varlong(buf: &mut &[u8]) -> Option<i64> {
    let raw = read_unsigned(buf, 10)?;
    Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

/// Skips a varint-length-prefixed field (key, value, header key or value); -1 is null.
fn skip_field(buf: &mut &[u8], allow_null: bool) -> Option<bool> {
    let len = read_varint(buf)?;
    if len < 0 {
        return allow_null.then_some(false);
    }
    *buf = buf.get(len as usize..)?;
    Some(true)
}

/// One record's fields that validation needs, or None if it is malformed.
fn parse_record(body: &[u8]) -> Option<(i64, i32, bool)> {
    let mut b = body;
    let (_attributes, rest) = b.split_first()?;
    b = rest;
    let timestamp_delta = read_varlong(&mut b)?;
    let offset_delta = read_varint(&mut b)?;
    let has_key = skip_field(&mut b, true)?;
    skip_field(&mut b, true)?;
    let headers = read_varint(&mut b)?;
    if headers < 0 || headers as usize > b.len() {
        return None;
    }
    for _ in 0..headers {
        skip_field(&mut b, false)?;
        skip_field(&mut b, true)?;
    }
    b.is_empty().then_some((timestamp_delta, offset_delta, has_key))
}

/// One record of a batch, as log compaction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's bytes, its length prefix included: copied as they are into a cleaned batch.
    pub raw: &'a [u8],
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    /// None: a null key.
    pub key: Option<&'a [u8]>,
    /// A null value (a delete marker for its key).
    pub tombstone: bool,
}

/// A batch's records section, decompressed if it is compressed (at most `max` bytes).
pub fn records_section(batch: &[u8], header: &BatchHeader, max: usize) -> Result<Vec<u8>, RecordsError> {
    let body = batch
        .get(BATCH_HEADER_BYTES..header.size_bytes as usize)
        .ok_or(RecordsError::Corrupt("batch shorter than its header"))?;
    if header.compression() == 0 {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    decompress(header.compression(), body, &mut out, max)?;
    Ok(out)
}

/// The `count` records of a (decompressed) records section.
pub fn record_views(mut section: &[u8], count: i32) -> Result<Vec<RecordView<'_>>, RecordsError> {
    const BAD_RECORD: RecordsError = RecordsError::Invalid("found invalid record structure");
    let mut out = Vec::with_capacity(count.clamp(0, 1 << 16) as usize);
    for _ in 0..count {
        let start = section;
        let len = read_varint(&mut section).ok_or(BAD_RECORD)?;
        let mut b = usize::try_from(len).ok().and_then(|n| section.get(..n)).ok_or(BAD_RECORD)?;
        section = &section[b.len()..];
        let raw = &start[..start.len() - section.len()];
        let (_attributes, rest) = b.split_first().ok_or(BAD_RECORD)?;
        b = rest;
        let timestamp_delta = read_varlong(&mut b).ok_or(BAD_RECORD)?;
        let offset_delta = read_varint(&mut b).ok_or(BAD_RECORD)?;
        let key_len = read_varint(&mut b).ok_or(BAD_RECORD)?;
        let key = match usize::try_from(key_len) {
            Ok(n) => {
                let k = b.get(..n).ok_or(BAD_RECORD)?;
                b = &b[n..];
                Some(k)
            }
            Err(_) => None,
        };
        let tombstone = !skip_field(&mut b, true).ok_or(BAD_RECORD)?;
        out.push(RecordView { raw, offset_delta, timestamp_delta, key, tombstone });
    }
    Ok(out)
}

/// `batch` keeping only the records `kept` (each a [`RecordView::raw`] of it, in order):
/// uncompressed, every other header field as it was (the offsets it spans, its timestamps, its
/// producer's id, epoch and sequence), CRC computed anew. With no record kept, the batch stays
/// as an empty one: its offsets and its producer's state are still accounted for.
pub fn rebuild_batch(batch: &[u8], kept: &[&[u8]]) -> Bytes {
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + kept.iter().map(|r| r.len()).sum::<usize>());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    for r in kept {
        out.extend_from_slice(r);
    }
    let length = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let attributes = i16::from_be_bytes([out[ATTRIBUTES_OFFSET], out[ATTRIBUTES_OFFSET + 1]]) & !0x07;
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    out[BATCH_HEADER_BYTES - 4..BATCH_HEADER_BYTES].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

/// Walks the (uncompressed) records of a batch; see [`validate_records`].
fn walk_records(mut records: &[u8], header: &BatchHeader, checks: &RecordChecks<'_>) -> Result<(), RecordsError> {
    let mut key_errors = Vec::new();
    let mut timestamp_errors = Vec::new();
    let (low, high) =
        (checks.now_ms.wrapping_sub(checks.timestamp_before_max_ms), checks.now_ms.wrapping_add(checks.timestamp_after_max_ms));
    for i in 0..header.record_count {
        let len = read_varint(&mut records).ok_or(RecordsError::Invalid("record length is not a valid varint"))?;
        let body = usize::try_from(len)
            .ok()
            .and_then(|n| records.get(..n))
            .ok_or(RecordsError::Invalid("record size exceeds the batch's remaining bytes"))?;
        records = &records[body.len()..];
        let (timestamp_delta, offset_delta, has_key) = parse_record(body).ok_or(RecordsError::Invalid("found invalid record structure"))?;
        if offset_delta != i {
            // Kafka rewrites such batches; stored as the producer's bytes they would lie to consumers.
            return Err(RecordsError::Invalid("record offset deltas must be 0, 1, 2... in order"));
        }
        if checks.compacted && !has_key {
            key_errors.push((
                i,
                format!("Compacted topic cannot accept message without key in topic partition {}-{}.", checks.topic, checks.partition),
            ));
            continue;
        }
        let timestamp = header.base_timestamp.wrapping_add(timestamp_delta);
        if timestamp != NO_TIMESTAMP {
            let diff = checks.now_ms.wrapping_sub(timestamp);
            if diff > checks.timestamp_before_max_ms || diff.wrapping_neg() > checks.timestamp_after_max_ms {
                timestamp_errors.push((i, format!(
                    "Timestamp {timestamp} of message with offset {offset_delta} is out of range. The timestamp should be within [{low}, {high}]"
                )));
            }
        }
    }
    if !records.is_empty() {
        return Err(RecordsError::Invalid("bytes left after the batch's last record"));
    }
    if !timestamp_errors.is_empty() {
        let mut record_errors = key_errors;
        record_errors.extend(timestamp_errors);
        record_errors.sort_by_key(|e| e.0);
        return Err(RecordsError::Rejected {
            timestamp: true,
            message: "One or more records have been rejected due to invalid timestamp".into(),
            record_errors,
        });
    }
    if !key_errors.is_empty() {
        let shown: Vec<String> = key_errors.iter().take(3).map(|(i, m)| format!("RecordError(batchIndex={i}, message='{m}')")).collect();
        return Err(RecordsError::Rejected {
            timestamp: false,
            message: format!(
                "One or more records have been rejected due to {} record errors in total, and only showing the first three errors at most: [{}]",
                key_errors.len(),
                shown.join(", ")
            ),
            record_errors: key_errors,
        });
    }
    Ok(())
}

/// A copy of `batch` (its header `header`) as a LogAppendTime topic stores it, as Kafka's
/// `LogValidator` does (`setMaxTimestamp`): timestamp type LogAppendTime (attributes bit 3),
/// max timestamp `now_ms`, CRC computed anew. Records, their deltas and the base timestamp are
/// kept: consumers give every record the max timestamp. Returns the copy and its header.
pub fn with_log_append_time(batch: &[u8], header: &BatchHeader, now_ms: i64) -> (Bytes, BatchHeader) {
    let attributes = header.attributes | LOG_APPEND_TIME;
    let mut out = batch.to_vec();
    out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    out[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    (Bytes::from(out), BatchHeader { attributes, max_timestamp: now_ms, ..*header })
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
pub fn control_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    timestamp_ms: i64,
    coordinator_epoch: i32,
) -> (Bytes, BatchHeader) {
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
    encode_plain_batch(0, producer, base_timestamp, values)
}

/// Like [`encode_producer_batch`], a transactional producer's batch (attributes bit 4).
pub fn encode_transactional_batch(producer_id: i64, epoch: i16, sequence: i32, base_timestamp: i64, values: &[&[u8]]) -> Bytes {
    encode_plain_batch(0x10, Some((producer_id, epoch, sequence)), base_timestamp, values)
}

fn encode_plain_batch(attributes: i16, producer: Option<(i64, i16, i32)>, base_timestamp: i64, values: &[&[u8]]) -> Bytes {
    let mut records = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut r = Vec::new();
        r.push(0u8); // attributes
        write_varint(&mut r, 0); // timestamp delta
        write_varint(&mut r, i as i64); // offset delta
        write_varint(&mut r, -1); // key: null
        write_varint(&mut r, v.len() as i64);
        r.extend_from_slice(v);
        write_varint(&mut r, 0); // headers
        write_varint(&mut records, r.len() as i64);
        records.extend_from_slice(&r);
    }
    frame_batch(attributes, values.len() as i32, base_timestamp, producer.unwrap_or((-1, -1, -1)), &records)
}

/// A record to encode: key and value (None: null), and its timestamp's delta from the batch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordIn<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp_delta: i64,
}

/// Encodes a v2 batch of `records` (no producer id, no headers), its records section
/// compressed with `compression` (Kafka's codes: 0 none, 1 gzip, 2 snappy in xerial framing,
/// 3 LZ4 frame with independent 64 KiB blocks, 4 zstd), CRC32C set. The client side of
/// [`validate_records`]: what a producer sends.
pub fn encode_records(base_timestamp: i64, records: &[RecordIn<'_>], compression: i16) -> Result<Bytes, RecordsError> {
    const COMPRESS: RecordsError = RecordsError::Invalid("records do not compress");
    let mut section = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let mut r = vec![0u8]; // attributes
        write_varint(&mut r, rec.timestamp_delta);
        write_varint(&mut r, i as i64);
        for field in [rec.key, rec.value] {
            match field {
                Some(b) => {
                    write_varint(&mut r, b.len() as i64);
                    r.extend_from_slice(b);
                }
                None => write_varint(&mut r, -1),
            }
        }
        write_varint(&mut r, 0); // headers
        write_varint(&mut section, r.len() as i64);
        section.extend_from_slice(&r);
    }
    let body = match compression {
        0 => section,
        1 => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&section).map_err(|_| COMPRESS)?;
            e.finish().map_err(|_| COMPRESS)?
        }
        2 => {
            const XERIAL_BLOCK_BYTES: usize = 32 << 10;
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            for chunk in section.chunks(XERIAL_BLOCK_BYTES) {
                let c = snap::raw::Encoder::new().compress_vec(chunk).map_err(|_| COMPRESS)?;
                out.extend_from_slice(&(c.len() as i32).to_be_bytes());
                out.extend_from_slice(&c);
            }
            out
        }
        3 => {
            use std::io::Write;
            let mut e = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .build(Vec::new())
                .map_err(|_| COMPRESS)?;
            e.write_all(&section).map_err(|_| COMPRESS)?;
            let (out, done) = e.finish();
            done.map_err(|_| COMPRESS)?;
            out
        }
        4 => zstd::bulk::compress(&section, 3).map_err(|_| COMPRESS)?,
        _ => return Err(RecordsError::Invalid("unknown compression type")),
    };
    let last_delta = records.iter().map(|r| r.timestamp_delta).max().unwrap_or(0);
    let mut batch = frame_batch(compression, records.len() as i32, base_timestamp, (-1, -1, -1), &body).to_vec();
    // frame_batch writes the base timestamp as the max timestamp too: correct it, then the CRC.
    batch[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&base_timestamp.wrapping_add(last_delta).to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(Bytes::from(batch))
}

/// One record of a batch, every field read (what a consumer shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header key and value (None: null).
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Every record of a v2 batch (decompressed at most `max` bytes), with absolute offsets and
/// timestamps (a LogAppendTime batch's records all have its max timestamp).
pub fn decode_records(batch: &[u8], header: &BatchHeader, max: usize) -> Result<Vec<DecodedRecord>, RecordsError> {
    const BAD_RECORD: RecordsError = RecordsError::Invalid("found invalid record structure");
    fn field(b: &mut &[u8]) -> Option<Option<Vec<u8>>> {
        let len = read_varint(b)?;
        if len < 0 {
            return Some(None);
        }
        let v = b.get(..len as usize)?.to_vec();
        *b = &b[len as usize..];
        Some(Some(v))
    }
    with_records(batch, header, max, |mut section| {
        let mut out = Vec::with_capacity(header.record_count.clamp(0, 1 << 16) as usize);
        for _ in 0..header.record_count {
            let len = read_varint(&mut section).ok_or(BAD_RECORD)?;
            let mut b = usize::try_from(len).ok().and_then(|n| section.get(..n)).ok_or(BAD_RECORD)?;
            section = &section[b.len()..];
            let (_attributes, rest) = b.split_first().ok_or(BAD_RECORD)?;
            b = rest;
            let timestamp_delta = read_varlong(&mut b).ok_or(BAD_RECORD)?;
            let offset_delta = read_varint(&mut b).ok_or(BAD_RECORD)?;
            let key = field(&mut b).ok_or(BAD_RECORD)?;
            let value = field(&mut b).ok_or(BAD_RECORD)?;
            let count = read_varint(&mut b).ok_or(BAD_RECORD)?;
            if count < 0 || count as usize > b.len() {
                return Err(BAD_RECORD);
            }
            let mut headers = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let k = field(&mut b).flatten().ok_or(BAD_RECORD)?;
                let v = field(&mut b).ok_or(BAD_RECORD)?;
                headers.push((k, v));
            }
            let timestamp =
                if header.is_log_append_time() { header.max_timestamp } else { header.base_timestamp.wrapping_add(timestamp_delta) };
            out.push(DecodedRecord { offset: header.base_offset.wrapping_add(i64::from(offset_delta)), timestamp, key, value, headers });
        }
        Ok(out)
    })
}

/// Appends a zigzag varint (or varlong).
fn write_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A v2 batch around an encoded records section: base offset 0, no leader epoch, CRC set.
fn frame_batch(attributes: i16, count: i32, base_timestamp: i64, (producer_id, epoch, sequence): (i64, i16, i32), records: &[u8]) -> Bytes {
    let mut tail = Vec::with_capacity(BATCH_HEADER_BYTES + records.len()); // from attributes on
    tail.extend_from_slice(&attributes.to_be_bytes());
    tail.extend_from_slice(&(count - 1).to_be_bytes());
    tail.extend_from_slice(&base_timestamp.to_be_bytes());
    tail.extend_from_slice(&base_timestamp.to_be_bytes());
    tail.extend_from_slice(&producer_id.to_be_bytes());
    tail.extend_from_slice(&epoch.to_be_bytes());
    tail.extend_from_slice(&sequence.to_be_bytes());
    tail.extend_from_slice(&count.to_be_bytes());
    tail.extend_from_slice(records);
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
    fn encoded_records_decode_back_with_every_codec() {
        let recs = [
            RecordIn { key: Some(b"k1"), value: Some(b"v1"), timestamp_delta: 0 },
            RecordIn { key: None, value: None, timestamp_delta: 5 },
            RecordIn { key: None, value: Some(&[7u8; 100_000]), timestamp_delta: 2 },
        ];
        for codec in 0..=4 {
            let batch = encode_records(1000, &recs, codec).unwrap();
            assert!(crc_ok(&batch), "codec {codec}");
            let h = peek_header(&batch).unwrap().unwrap();
            assert_eq!((h.compression(), h.record_count, h.max_timestamp), (codec, 3, 1005));
            let checks = RecordChecks {
                topic: "t",
                partition: 0,
                now_ms: 1000,
                timestamp_before_max_ms: i64::MAX,
                timestamp_after_max_ms: i64::MAX,
                compacted: false,
                max_decompressed_bytes: 1 << 20,
            };
            validate_records(&batch, &h, &checks).unwrap();
            let got = decode_records(&batch, &h, 1 << 20).unwrap();
            assert_eq!(got.len(), 3);
            assert_eq!((got[0].key.as_deref(), got[0].value.as_deref(), got[0].timestamp), (Some(&b"k1"[..]), Some(&b"v1"[..]), 1000));
            assert_eq!((got[1].key.clone(), got[1].value.clone(), got[1].offset, got[1].timestamp), (None, None, 1, 1005));
            assert_eq!(got[2].value.as_ref().map(|v| v.len()), Some(100_000));
        }
    }

    /// A batch of keyed records (None: a tombstone) with offset deltas 0, 1, 2...
    fn keyed_batch(records: &[(&[u8], Option<&[u8]>)]) -> Bytes {
        let mut section = Vec::new();
        for (i, (key, value)) in records.iter().enumerate() {
            let mut r = vec![0u8];
            write_varint(&mut r, 0);
            write_varint(&mut r, i as i64);
            write_varint(&mut r, key.len() as i64);
            r.extend_from_slice(key);
            match value {
                Some(v) => {
                    write_varint(&mut r, v.len() as i64);
                    r.extend_from_slice(v);
                }
                None => write_varint(&mut r, -1),
            }
            write_varint(&mut r, 0);
            write_varint(&mut section, r.len() as i64);
            section.extend_from_slice(&r);
        }
        frame_batch(0, records.len() as i32, 1000, (7, 1, 40), &section)
    }

    #[test]
    fn a_cleaned_batch_keeps_its_offsets_producer_and_a_valid_crc() {
        let batch = keyed_batch(&[(b"a", Some(b"1")), (b"b", Some(b"2")), (b"a", None), (b"c", Some(b"3"))]);
        let h = peek_header(&batch).unwrap().unwrap();
        let section = records_section(&batch, &h, 1 << 20).unwrap();
        let views = record_views(&section, h.record_count).unwrap();
        assert_eq!(
            views.iter().map(|r| (r.key.unwrap(), r.offset_delta, r.tombstone)).collect::<Vec<_>>(),
            vec![(&b"a"[..], 0, false), (&b"b"[..], 1, false), (&b"a"[..], 2, true), (&b"c"[..], 3, false)]
        );
        // Keep b and the tombstone of a: offsets 1 and 2 of 0..=3.
        let cleaned = rebuild_batch(&batch, &[views[1].raw, views[2].raw]);
        assert!(crc_ok(&cleaned));
        let c = peek_header(&cleaned).unwrap().unwrap();
        assert_eq!((c.record_count, c.last_offset_delta, c.offset_count()), (2, 3, 4), "offsets spanned are kept");
        assert_eq!((c.producer_id, c.producer_epoch, c.base_sequence, c.base_timestamp), (7, 1, 40, 1000));
        assert_eq!(c.size_bytes as usize, cleaned.len());
        let section = records_section(&cleaned, &c, 1 << 20).unwrap();
        let kept = record_views(&section, c.record_count).unwrap();
        assert_eq!(kept.iter().map(|r| r.offset_delta).collect::<Vec<_>>(), vec![1, 2]);
        // Nothing kept: an empty batch, still spanning its four offsets.
        let empty = rebuild_batch(&batch, &[]);
        let e = peek_header(&empty).unwrap().unwrap();
        assert!(crc_ok(&empty));
        assert_eq!((e.record_count, e.offset_count(), empty.len()), (0, 4, BATCH_HEADER_BYTES));
    }

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
        assert!(crc_ok(&m)); // CRC still valid after the patch
        assert_eq!(peek_header(&m).unwrap().unwrap().base_offset, 42);
        // A producer's batch must come with base offset 0, as Kafka requires.
        assert_eq!(validate_produce(&m.into(), 9), Err(RecordsError::Invalid("a producer's batch must have base offset 0")));
        assert_eq!(validate_records(&batch, &h, &checks()), Ok(()));
    }

    const NOW_MS: i64 = 1_700_000_000_000;

    fn checks() -> RecordChecks<'static> {
        RecordChecks {
            topic: "t",
            partition: 0,
            now_ms: NOW_MS,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 3_600_000,
            compacted: false,
            max_decompressed_bytes: 1 << 20,
        }
    }

    /// One record: (offset delta, timestamp delta, key, value), no headers.
    fn record(offset_delta: i64, timestamp_delta: i64, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8];
        write_varint(&mut r, timestamp_delta);
        write_varint(&mut r, offset_delta);
        match key {
            Some(k) => {
                write_varint(&mut r, k.len() as i64);
                r.extend_from_slice(k);
            }
            None => write_varint(&mut r, -1),
        }
        write_varint(&mut r, value.len() as i64);
        r.extend_from_slice(value);
        write_varint(&mut r, 0);
        let mut out = Vec::new();
        write_varint(&mut out, r.len() as i64);
        out.extend_from_slice(&r);
        out
    }

    fn records(n: i64) -> Vec<u8> {
        (0..n).flat_map(|i| record(i, 0, Some(b"k"), b"value")).collect()
    }

    /// A v2 batch with a correct CRC around any records section.
    fn raw_batch(attributes: i16, count: i32, base_timestamp: i64, body: &[u8]) -> Bytes {
        frame_batch(attributes, count, base_timestamp, (-1, -1, -1), body)
    }

    fn check(batch: &Bytes, checks: &RecordChecks<'_>) -> Result<(), RecordsError> {
        let (batch, header) = validate_produce(batch, 9)?;
        validate_records(&batch, &header, checks)
    }

    fn compress(codec: i16, data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        match codec {
            1 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            2 => {
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
                for chunk in data.chunks(32 * 1024) {
                    let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
                    out.extend_from_slice(&(block.len() as i32).to_be_bytes());
                    out.extend_from_slice(&block);
                }
                out
            }
            3 => {
                let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
                e.write_all(data).unwrap();
                let (out, r) = e.finish();
                r.unwrap();
                out
            }
            4 => zstd::bulk::compress(data, 3).unwrap(),
            _ => unreachable!(),
        }
    }

    fn invalid(e: Result<(), RecordsError>) -> bool {
        matches!(e, Err(RecordsError::Invalid(_)))
    }

    #[test]
    fn every_record_is_checked() {
        let c = checks();
        let good = records(3);
        assert_eq!(check(&raw_batch(0, 3, NOW_MS, &good), &c), Ok(()));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0, 1, 2]);
        let mut long = good.clone();
        long[0] = 100; // first record's length (zigzag 50) past what it holds
        for (what, batch) in [
            ("random records", raw_batch(0, 3, NOW_MS, &[0xa5; 40])),
            ("count without records", raw_batch(0, 5, NOW_MS, &[])),
            ("count too high", raw_batch(0, 4, NOW_MS, &good)),
            ("trailing bytes", raw_batch(0, 3, NOW_MS, &trailing)),
            ("record length", raw_batch(0, 3, NOW_MS, &long)),
            ("varint too long", raw_batch(0, 1, NOW_MS, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01])),
            ("deltas out of order", raw_batch(0, 2, NOW_MS, &[record(1, 0, None, b"a"), record(0, 0, None, b"b")].concat())),
        ] {
            assert!(invalid(check(&batch, &c)), "{what}");
        }
        // Negative header count, header count past the bytes.
        for headers in [-1i64, 100] {
            let mut r = vec![0u8, 0, 0, 1, 0];
            write_varint(&mut r, headers);
            let mut body = Vec::new();
            write_varint(&mut body, r.len() as i64);
            body.extend_from_slice(&r);
            assert!(invalid(check(&raw_batch(0, 1, NOW_MS, &body), &c)), "{headers} headers");
        }
    }

    #[test]
    fn compressed_records_are_checked_within_the_bound() {
        let c = checks();
        for codec in 1..=4 {
            let good = records(3);
            assert_eq!(check(&raw_batch(codec, 3, NOW_MS, &compress(codec, &good)), &c), Ok(()), "codec {codec}");
            let whole = compress(codec, &good);
            let mut junk = whole.clone();
            junk.extend_from_slice(b"junk");
            for (what, body) in [
                ("garbage", vec![0x5a; 64]),
                ("cut short", whole[..whole.len() / 2].to_vec()),
                ("bytes after the stream", junk),
                ("random records", compress(codec, &[0xa5; 40])),
                ("empty", Vec::new()),
            ] {
                assert!(invalid(check(&raw_batch(codec, 3, NOW_MS, &body), &c)), "codec {codec}: {what}");
            }
            // One record just under the bound passes, just over is refused.
            let fits = record(0, 0, None, &vec![0; (1 << 20) - 16]);
            assert_eq!(check(&raw_batch(codec, 1, NOW_MS, &compress(codec, &fits)), &c), Ok(()), "codec {codec}");
            let bomb = record(0, 0, None, &vec![0; 1 << 20]);
            assert_eq!(check(&raw_batch(codec, 1, NOW_MS, &compress(codec, &bomb)), &c), Err(TOO_LARGE), "codec {codec}");
        }
        // Raw snappy without the xerial framing, as snappy-java also reads it.
        let raw = snap::raw::Encoder::new().compress_vec(&records(2)).unwrap();
        assert_eq!(check(&raw_batch(2, 2, NOW_MS, &raw), &c), Ok(()));
    }

    #[test]
    fn timestamps_and_keys_get_kafkas_record_errors() {
        let c = checks();
        let ahead = raw_batch(0, 2, NOW_MS + 3_600_001, &records(2));
        let Err(RecordsError::Rejected { timestamp: true, message, record_errors }) = check(&ahead, &c) else { panic!() };
        assert_eq!(message, "One or more records have been rejected due to invalid timestamp");
        assert_eq!(record_errors.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(record_errors[1].1.starts_with("Timestamp 1700003600001 of message with offset 1 is out of range."));
        assert_eq!(check(&raw_batch(0, 2, NOW_MS + 3_600_000, &records(2)), &c), Ok(()));
        assert_eq!(check(&raw_batch(0, 2, -1, &records(2)), &c), Ok(())); // no timestamp
        assert_eq!(check(&raw_batch(0, 2, 5, &records(2)), &c), Ok(())); // before.max is unbounded
        let early = RecordChecks { timestamp_before_max_ms: 1000, ..checks() };
        assert!(matches!(check(&raw_batch(0, 2, NOW_MS - 1001, &records(2)), &early), Err(RecordsError::Rejected { timestamp: true, .. })));

        let compacted = RecordChecks { compacted: true, ..checks() };
        let keyless = raw_batch(0, 2, NOW_MS, &[record(0, 0, Some(b"k"), b"a"), record(1, 0, None, b"b")].concat());
        let Err(RecordsError::Rejected { timestamp: false, message, record_errors }) = check(&keyless, &compacted) else { panic!() };
        assert_eq!(record_errors, vec![(1, "Compacted topic cannot accept message without key in topic partition t-0.".to_string())]);
        assert!(message.starts_with("One or more records have been rejected due to 1 record errors in total"));
        assert_eq!(check(&keyless, &c), Ok(()));
    }

    /// Key, value, headers, timestamp (from NOW_MS).
    type TestRecord = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>, i64);

    /// Batches of Kafka's format from an encoder that is not ours (the kafka-protocol crate,
    /// with Kafka's framings: xerial snappy, LZ4 frames), every codec.
    fn encode_with_kafka_protocol(codec: i16, records: &[TestRecord]) -> Bytes {
        use kafka_protocol::protocol::StrBytes;
        use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let compression = match codec {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            _ => Compression::Zstd,
        };
        let records: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (k, v, h, ts))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 7, // an idempotent producer: sequences follow offsets
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: NOW_MS + ts,
                key: k.clone().map(Bytes::from),
                value: v.clone().map(Bytes::from),
                headers: h.iter().map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone().map(Bytes::from))).collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).unwrap();
        buf.freeze()
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_encoded_batch_validates(
            codec in 0i16..=4,
            records in proptest::collection::vec((
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
                proptest::collection::vec(("[a-z]{0,8}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))), 0..3),
                -100_000i64..100_000,
            ), 1..40),
        ) {
            let batch = encode_with_kafka_protocol(codec, &records);
            prop_assert_eq!(check(&batch, &checks()), Ok(()));
            let ours: Vec<&[u8]> = records.iter().map(|r| r.1.as_deref().unwrap_or(b"")).collect();
            prop_assert_eq!(check(&encode_batch(NOW_MS, &ours), &checks()), Ok(()));
        }

        #[test]
        fn random_records_never_panic(
            codec in 0i16..=4,
            count in 0i32..5,
            body in proptest::collection::vec(any::<u8>(), 0..300),
            prefix in 0usize..4,
        ) {
            // Random bytes, and random bytes after a valid stream's start (past the codec header).
            let start = compress(codec.max(1), &records(2));
            let mut framed = start[..prefix.min(start.len()) * 4].to_vec();
            framed.extend_from_slice(&body);
            for b in [&body, &framed] {
                let batch = raw_batch(codec, count, NOW_MS, b);
                let header = peek_header(&batch).unwrap().unwrap();
                let _ = validate_records(&batch, &header, &checks());
            }
        }
    }

    /// A batch of records with these timestamps (from `base`), header max timestamp `max`.
    fn timed_batch(codec: i16, base: i64, max: i64, timestamps: &[i64]) -> (Bytes, BatchHeader) {
        let body: Vec<u8> = timestamps.iter().enumerate().flat_map(|(i, ts)| record(i as i64, ts - base, None, b"v")).collect();
        let body = if codec == 0 { body } else { compress(codec, &body) };
        let mut b = raw_batch(codec, timestamps.len() as i32, base, &body).to_vec();
        b[MAX_TIMESTAMP_OFFSET..][..8].copy_from_slice(&max.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        let h = peek_header(&b).unwrap().unwrap();
        (Bytes::from(b), h)
    }

    #[test]
    fn a_timestamp_is_found_at_its_record() {
        for codec in 0..=4 {
            let (b, h) = timed_batch(codec, 100, 500, &[100, 300, 200, 500, 500, 400]);
            assert!(crc_ok(&b));
            let find = |target, min| record_at_or_after(&b, &h, target, min, 1 << 20).unwrap();
            assert_eq!(find(0, 0), Some((0, 100)), "codec {codec}");
            assert_eq!(find(101, 0), Some((1, 300)), "codec {codec}: inside the batch");
            assert_eq!(find(300, 0), Some((1, 300)), "codec {codec}: exact");
            assert_eq!(find(301, 0), Some((3, 500)), "codec {codec}: not by order of timestamps");
            assert_eq!(find(500, 0), Some((3, 500)), "codec {codec}: the first of the max");
            assert_eq!(find(501, 0), None, "codec {codec}");
            assert_eq!(find(0, 2), Some((2, 200)), "codec {codec}: at or after the log start");
            assert_eq!(find(450, 4), Some((4, 500)), "codec {codec}");
            assert_eq!(find(0, 6), None, "codec {codec}");
            if codec != 0 {
                assert_eq!(record_at_or_after(&b, &h, 0, 0, 8), Err(TOO_LARGE), "codec {codec}: bounded as validation is");
            }
        }
        // A cleaned batch keeps its records' offset deltas.
        let (b, h) = timed_batch(0, 100, 400, &[100, 200, 300, 400]);
        let section = records_section(&b, &h, 1 << 20).unwrap();
        let views = record_views(&section, h.record_count).unwrap();
        let cleaned = rebuild_batch(&b, &[views[1].raw, views[3].raw]);
        let c = peek_header(&cleaned).unwrap().unwrap();
        assert_eq!(record_at_or_after(&cleaned, &c, 150, 0, 1 << 20), Ok(Some((1, 200))));
        assert_eq!(record_at_or_after(&cleaned, &c, 250, 0, 1 << 20), Ok(Some((3, 400))));
        // A malformed records section is an error, never a panic.
        let (b, h) = timed_batch(0, 100, 100, &[100]);
        let mut bad = b.to_vec();
        bad.truncate(bad.len() - 2);
        assert!(record_at_or_after(&bad, &h, 0, 0, 1 << 20).is_err());
    }

    #[test]
    fn log_append_time_rewrites_the_header_only() {
        for codec in [0, 4] {
            let (b, h) = timed_batch(codec, 100, 300, &[100, 300, 200]);
            let (stamped, sh) = with_log_append_time(&b, &h, 9_000);
            assert!(crc_ok(&stamped), "codec {codec}: CRC computed anew");
            assert_eq!(peek_header(&stamped).unwrap().unwrap(), sh);
            assert!(sh.is_log_append_time() && !h.is_log_append_time());
            assert_eq!((sh.max_timestamp, sh.base_timestamp, sh.compression()), (9_000, 100, codec));
            assert_eq!(BatchHeader { attributes: h.attributes, max_timestamp: h.max_timestamp, ..sh }, h, "nothing else changes");
            assert_eq!(stamped[BATCH_HEADER_BYTES..], b[BATCH_HEADER_BYTES..], "records untouched");
            assert_eq!(validate_records(&stamped, &sh, &checks()), Ok(()));
            // Every record has the append time: a target up to it finds the first record.
            assert_eq!(record_at_or_after(&stamped, &sh, 250, 0, 1 << 20), Ok(Some((0, 9_000))));
            assert_eq!(record_at_or_after(&stamped, &sh, 9_000, 1, 1 << 20), Ok(Some((1, 9_000))));
            assert_eq!(record_at_or_after(&stamped, &sh, 9_001, 0, 1 << 20), Ok(None));
            // Stamping again (a retry decided anew) gives the same bytes for the same time.
            assert_eq!(with_log_append_time(&stamped, &sh, 9_000).0, stamped);
        }
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
