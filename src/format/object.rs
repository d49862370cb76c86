//! The object format: `data | index | footer`.
//!
//! - data: record batches exactly as the producers encoded them, grouped by partition (each
//!   partition's batches are one contiguous extent, in arrival order).
//! - index: one fixed-size [`IndexEntry`] per batch, in data order.
//! - footer ([`FOOTER_BYTES`] bytes, big endian): index offset u64, index length u32, format
//!   version u16, CRC32C of the index u32, magic `SSO1`.
//!
//! The index makes an object self-describing (orphan checks, compaction, repair); the fetch path
//! does not need it, because the controller records each extent's byte range at commit.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::format::records::BatchHeader;

/// Object keys every store accepts: 1 to 1024 characters of `[A-Za-z0-9/_.-]`, relative,
/// with no empty, `.` or `..` segment (so a key is also a safe relative path on disk).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && !key.starts_with('/')
        && key.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
}

/// How the key of a per-partition object (object compaction's output: one partition's batches,
/// in offset order) ends; uploaded objects hold many partitions. Readers read such objects
/// ahead in large spans, and compaction tells the two kinds apart by it.
pub const PARTITION_OBJECT_SUFFIX: &str = ".p.sso";

/// Whether `key` names a per-partition object ([`PARTITION_OBJECT_SUFFIX`]).
pub fn is_partition_object(key: &str) -> bool {
    key.ends_with(PARTITION_OBJECT_SUFFIX)
}

/// How the key of a partition-sorted object ends (object compaction's output for partitions
/// with a small share of a split window: many partitions, each one's batches adjacent and in
/// offset order, so a reader of one partition reads one span of it). Neither an upload to
/// split again nor the read-far-ahead object of one partition.
pub const SORTED_OBJECT_SUFFIX: &str = ".s.sso";

/// Whether `key` names a partition-sorted object ([`SORTED_OBJECT_SUFFIX`]).
pub fn is_sorted_object(key: &str) -> bool {
    key.ends_with(SORTED_OBJECT_SUFFIX)
}

pub const MAGIC: [u8; 4] = *b"SSO1";
pub const FORMAT_VERSION: u16 = 1;
pub const FOOTER_BYTES: usize = 8 + 4 + 2 + 4 + 4;
pub const INDEX_ENTRY_BYTES: usize = 16 + 4 + 8 + 4 + 4 + 4 + 8 + 8 + 2 + 4;
/// Refuse to build objects whose positions would not fit the index (and S3's 5 GiB PUT limit).
pub const OBJECT_BYTES_MAX: u64 = 4 << 30;

/// One batch of the data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub topic_id: Uuid,
    pub partition: i32,
    /// Byte position of the batch in the object.
    pub position: u64,
    pub length: u32,
    pub record_count: i32,
    pub last_offset_delta: i32,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// The idempotence fields of a batch written by an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_sequence: i32,
    pub last_sequence: i32,
    /// Part of a transaction (attributes bit 4).
    pub transactional: bool,
}

impl ProducerBatch {
    /// Some for a data batch with a producer id (idempotent or transactional producers); None
    /// for control batches (transaction markers carry a producer id but no sequence).
    pub fn of(header: &BatchHeader) -> Option<Self> {
        (header.producer_id >= 0 && !header.is_control()).then(|| ProducerBatch {
            transactional: header.is_transactional(),
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_sequence: header.base_sequence,
            // Sequences wrap to 0 after i32::MAX, as in Kafka.
            last_sequence: ((i64::from(header.base_sequence) + i64::from(header.last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32,
        })
    }
}

/// A partition's contiguous run of batches in one object: what the controller indexes.
/// A batch of an idempotent producer is always an extent of its own, so the controller can
/// check its sequence and drop it alone if it is a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtentInfo {
    pub topic_id: Uuid,
    pub partition: i32,
    pub position: u64,
    pub length: u64,
    pub batch_count: u32,
    /// Offsets the extent occupies: the sum of its batches' lastOffsetDelta + 1.
    pub offset_count: i64,
    pub max_timestamp: i64,
    /// Set when the extent is one batch of an idempotent producer.
    pub producer: Option<ProducerBatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("object too short for a footer ({0} bytes)")]
    TooShort(usize),
    #[error("bad magic in object footer")]
    BadMagic,
    #[error("unsupported object format version {0}")]
    UnsupportedVersion(u16),
    #[error("index range out of bounds")]
    IndexOutOfBounds,
    #[error("index CRC32C mismatch")]
    IndexCrc,
    #[error("index entry points outside the data section")]
    EntryOutOfBounds,
    #[error("object would exceed {OBJECT_BYTES_MAX} bytes")]
    TooLarge,
}

/// Where [`ObjectBuilder::add_batch`] put a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index of its extent in [`ObjectBuilder::finish`]'s extents.
    pub extent: usize,
    /// Offsets before it in that extent.
    pub offset_delta: i64,
    /// Byte position in the object.
    pub position: u64,
}

/// Builds one object. Add batches partition by partition: all of a partition's batches must be
/// added consecutively (the caller groups them), so each partition is one extent.
#[derive(Debug, Default)]
pub struct ObjectBuilder {
    data: BytesMut,
    index: Vec<IndexEntry>,
    extents: Vec<ExtentInfo>,
}

impl ObjectBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder whose data buffer holds `data_bytes` without growing.
    pub fn with_capacity(data_bytes: usize, batches: usize) -> Self {
        Self {
            data: BytesMut::with_capacity(data_bytes + batches * INDEX_ENTRY_BYTES + FOOTER_BYTES),
            index: Vec::with_capacity(batches),
            extents: Vec::new(),
        }
    }

    pub fn data_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Appends one batch of `(topic_id, partition)`; returns where it landed.
    pub fn add_batch(&mut self, topic_id: Uuid, partition: i32, batch: &[u8], header: &BatchHeader) -> Result<Placement, FormatError> {
        if self.data.len() as u64 + batch.len() as u64 > OBJECT_BYTES_MAX {
            return Err(FormatError::TooLarge);
        }
        let position = self.data.len() as u64;
        self.data.extend_from_slice(batch);
        self.index.push(IndexEntry {
            topic_id,
            partition,
            position,
            length: batch.len() as u32,
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
            max_timestamp: header.max_timestamp,
            producer_id: header.producer_id,
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
        });
        let producer = ProducerBatch::of(header);
        let extent_count = self.extents.len();
        match self.extents.last_mut() {
            Some(e) if e.topic_id == topic_id && e.partition == partition && e.producer.is_none() && producer.is_none() => {
                let placement = Placement { extent: extent_count - 1, offset_delta: e.offset_count, position };
                e.length += batch.len() as u64;
                e.batch_count += 1;
                e.offset_count += header.offset_count();
                e.max_timestamp = e.max_timestamp.max(header.max_timestamp);
                Ok(placement)
            }
            _ => {
                self.extents.push(ExtentInfo {
                    topic_id,
                    partition,
                    position,
                    length: batch.len() as u64,
                    batch_count: 1,
                    offset_count: header.offset_count(),
                    max_timestamp: header.max_timestamp,
                    producer,
                });
                Ok(Placement { extent: extent_count, offset_delta: 0, position })
            }
        }
    }

    /// Seals the object: returns its bytes and its extents (in data order).
    pub fn finish(mut self) -> (Bytes, Vec<ExtentInfo>) {
        let index_offset = self.data.len() as u64;
        let mut index = BytesMut::with_capacity(self.index.len() * INDEX_ENTRY_BYTES);
        for e in &self.index {
            encode_entry(&mut index, e);
        }
        let crc = crc32c::crc32c(&index);
        self.data.reserve(index.len() + FOOTER_BYTES);
        self.data.put_slice(&index);
        self.data.put_u64(index_offset);
        self.data.put_u32(index.len() as u32);
        self.data.put_u16(FORMAT_VERSION);
        self.data.put_u32(crc);
        self.data.put_slice(&MAGIC);
        (self.data.freeze(), self.extents)
    }
}

fn encode_entry(out: &mut BytesMut, e: &IndexEntry) {
    out.put_slice(e.topic_id.as_bytes());
    out.put_i32(e.partition);
    out.put_u64(e.position);
    out.put_u32(e.length);
    out.put_i32(e.record_count);
    out.put_i32(e.last_offset_delta);
    out.put_i64(e.max_timestamp);
    out.put_i64(e.producer_id);
    out.put_i16(e.producer_epoch);
    out.put_i32(e.base_sequence);
}

/// The parsed footer of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub index_offset: u64,
    pub index_len: u32,
    pub version: u16,
    pub index_crc: u32,
}

/// Parses the last [`FOOTER_BYTES`] of an object of `object_len` bytes.
pub fn parse_footer(tail: &[u8], object_len: u64) -> Result<Footer, FormatError> {
    if tail.len() < FOOTER_BYTES || object_len < FOOTER_BYTES as u64 {
        return Err(FormatError::TooShort(tail.len()));
    }
    let mut b = &tail[tail.len() - FOOTER_BYTES..];
    let footer = Footer { index_offset: b.get_u64(), index_len: b.get_u32(), version: b.get_u16(), index_crc: b.get_u32() };
    if b != MAGIC {
        return Err(FormatError::BadMagic);
    }
    if footer.version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(footer.version));
    }
    let end = footer.index_offset.checked_add(u64::from(footer.index_len));
    if end != Some(object_len - FOOTER_BYTES as u64) || !(footer.index_len as usize).is_multiple_of(INDEX_ENTRY_BYTES) {
        return Err(FormatError::IndexOutOfBounds);
    }
    Ok(footer)
}

/// Decodes and checks the index section (`index` = the bytes the footer points at).
pub fn decode_index(index: &[u8], footer: &Footer) -> Result<Vec<IndexEntry>, FormatError> {
    if index.len() != footer.index_len as usize {
        return Err(FormatError::IndexOutOfBounds);
    }
    if crc32c::crc32c(index) != footer.index_crc {
        return Err(FormatError::IndexCrc);
    }
    let mut b = index;
    let mut out = Vec::with_capacity(index.len() / INDEX_ENTRY_BYTES);
    while b.has_remaining() {
        let mut id = [0u8; 16];
        b.copy_to_slice(&mut id);
        let e = IndexEntry {
            topic_id: Uuid::from_bytes(id),
            partition: b.get_i32(),
            position: b.get_u64(),
            length: b.get_u32(),
            record_count: b.get_i32(),
            last_offset_delta: b.get_i32(),
            max_timestamp: b.get_i64(),
            producer_id: b.get_i64(),
            producer_epoch: b.get_i16(),
            base_sequence: b.get_i32(),
        };
        if e.position.checked_add(u64::from(e.length)).is_none_or(|end| end > footer.index_offset) {
            return Err(FormatError::EntryOutOfBounds);
        }
        out.push(e);
    }
    Ok(out)
}

/// Parses a whole object held in memory: its index entries.
pub fn read_index(object: &[u8]) -> Result<Vec<IndexEntry>, FormatError> {
    let footer = parse_footer(object, object.len() as u64)?;
    let start = footer.index_offset as usize;
    decode_index(&object[start..start + footer.index_len as usize], &footer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::records::{encode_batch, peek_header};
    use proptest::prelude::*;

    fn build(parts: &[(Uuid, i32, Vec<Bytes>)]) -> (Bytes, Vec<ExtentInfo>) {
        let mut b = ObjectBuilder::new();
        for (t, p, batches) in parts {
            for batch in batches {
                let h = peek_header(batch).unwrap().unwrap();
                b.add_batch(*t, *p, batch, &h).unwrap();
            }
        }
        b.finish()
    }

    #[test]
    fn round_trip_with_extents() {
        let t = Uuid::from_u128(7);
        let a = encode_batch(10, &[b"a", b"b"]);
        let c = encode_batch(20, &[b"c"]);
        let (obj, extents) = build(&[(t, 0, vec![a.clone(), c.clone()]), (t, 1, vec![c.clone()])]);
        assert_eq!(extents.len(), 2);
        assert_eq!(extents[0].offset_count, 3);
        assert_eq!(extents[0].batch_count, 2);
        assert_eq!(extents[0].max_timestamp, 20);
        assert_eq!(extents[1].position, (a.len() + c.len()) as u64);
        let idx = read_index(&obj).unwrap();
        assert_eq!(idx.len(), 3);
        assert_eq!(&obj[idx[1].position as usize..][..idx[1].length as usize], &c[..]);
        assert_eq!(idx[2].partition, 1);
    }

    #[test]
    fn corrupt_footer_and_truncation_are_detected() {
        let t = Uuid::from_u128(1);
        let (obj, _) = build(&[(t, 0, vec![encode_batch(1, &[b"x"])])]);
        let mut bad = obj.to_vec();
        let n = bad.len();
        bad[n - 1] = b'X';
        assert_eq!(read_index(&bad), Err(FormatError::BadMagic));
        let mut bad = obj.to_vec();
        bad[n - FOOTER_BYTES - 3] ^= 0xff; // inside the index
        assert_eq!(read_index(&bad), Err(FormatError::IndexCrc));
        assert!(read_index(&obj[..n - 1]).is_err());
        assert!(read_index(&obj[1..]).is_err());
        assert_eq!(read_index(&obj[..5]), Err(FormatError::TooShort(5)));
        let empty = ObjectBuilder::new().finish().0;
        assert_eq!(read_index(&empty).unwrap(), vec![]);
    }

    proptest! {
        #[test]
        fn index_round_trips(entries in proptest::collection::vec(
            (any::<u128>(), any::<i32>(), 1u32..1000, any::<i32>(), any::<i32>(), any::<i64>(), any::<i64>(), any::<i16>(), any::<i32>()),
            0..50,
        )) {
            let mut index = BytesMut::new();
            let mut expected = Vec::new();
            let mut position = 0u64;
            for (t, p, len, rc, lod, ts, pid, ep, seq) in entries {
                let e = IndexEntry { topic_id: Uuid::from_u128(t), partition: p, position, length: len,
                    record_count: rc, last_offset_delta: lod, max_timestamp: ts, producer_id: pid,
                    producer_epoch: ep, base_sequence: seq };
                position += u64::from(len);
                encode_entry(&mut index, &e);
                expected.push(e);
            }
            let footer = Footer { index_offset: position, index_len: index.len() as u32,
                version: FORMAT_VERSION, index_crc: crc32c::crc32c(&index) };
            prop_assert_eq!(decode_index(&index, &footer).unwrap(), expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_index(&bytes);
        }
    }
}
