//! `sidestream produce` and `sidestream consume`, kcat-like: lines of stdin become records
//! (v2 batches, optionally compressed, sent to each partition's leader, retried on the errors
//! Kafka calls retriable), and records become lines of stdout (Fetch from the leaders,
//! decompressed by the shared batch format). Memory is bounded: lines queued from stdin,
//! bytes per batch, bytes per fetch, bytes per decompressed batch.
//!
//! Must not touch: topics and group administration, but for reading and committing a group's
//! offsets (`consume --group`), which [`super::groups`] does.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::AdminError;
use super::client::{Client, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP, Node, PartitionMeta, kafka_result};
use crate::format::records::{self as format, RecordIn};

/// A line of stdin longer than this is refused (Kafka's default `max.request.size` is 1 MiB).
pub const LINE_BYTES_MAX: usize = 1024 * 1024;
/// Uncompressed record bytes in one Produce request.
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Records in one Produce request.
const BATCH_RECORDS_MAX: usize = 10_000;
/// Lines read ahead of the producer.
const QUEUED_LINES_MAX: usize = 10_000;
/// Bytes asked of one Fetch (and of one partition in it).
const FETCH_BYTES_MAX: i32 = 1024 * 1024;
/// How long a broker may hold a Fetch open waiting for data.
const FETCH_WAIT_MS: i32 = 500;
/// A compressed batch may decompress to at most this.
const DECOMPRESSED_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Pause before retrying a retriable error.
const RETRY_BACKOFF_MS: u64 = 100;
/// How often a long produce reports its progress.
const PROGRESS_INTERVAL_MS: u64 = 1000;
/// Errors Kafka's clients retry (after refreshing metadata): UNKNOWN_TOPIC_OR_PARTITION (3,
/// while a new topic's partitions appear), LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
/// REQUEST_TIMED_OUT, NETWORK_EXCEPTION, NOT_ENOUGH_REPLICAS, KAFKA_STORAGE_ERROR,
/// FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, OFFSET_NOT_AVAILABLE.
const RETRIABLE: [i16; 10] = [3, 5, 6, 7, 13, 19, 56, 74, 75, 78];
/// OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// partition -> its records' (key, value).
type ByPartition<'a> = BTreeMap<i32, Vec<(Option<&'a [u8]>, &'a [u8])>>;

/// Kafka's codes of `--compression`.
pub fn compression_code(name: &str) -> Result<i16, AdminError> {
    match name {
        "none" => Ok(0),
        "gzip" => Ok(1),
        "snappy" => Ok(2),
        "lz4" => Ok(3),
        "zstd" => Ok(4),
        _ => Err(AdminError::Invalid(format!("--compression '{name}': expected none, gzip, snappy, lz4 or zstd"))),
    }
}

/// Kafka's murmur2 (its default partitioner's hash of a key).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition Kafka's default partitioner gives a key: `toPositive(murmur2(key)) % n`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

/// A line as a record: with a separator, the key is what comes before its first occurrence
/// (a line without it is an error, as in kafka-console-producer); without one, no key.
pub fn split_line<'a>(line: &'a [u8], separator: Option<&[u8]>) -> Result<(Option<&'a [u8]>, &'a [u8]), String> {
    let Some(sep) = separator.filter(|s| !s.is_empty()) else { return Ok((None, line)) };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => Ok((Some(&line[..i]), &line[i + sep.len()..])),
        None => Err(format!("no key separator '{}' in the line", String::from_utf8_lossy(sep))),
    }
}

/// What `produce` is asked to do.
#[derive(Debug, Clone)]
pub struct ProduceSettings {
    pub topic: String,
    pub partition: Option<i32>,
    pub key_separator: Option<String>,
    /// -1 (all in-sync replicas), 0 (no answer), 1 (the leader).
    pub acks: i16,
    pub compression: i16,
}

/// What `produce` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProduceReport {
    pub topic: String,
    /// Records acknowledged (sent, with acks=0).
    pub records: u64,
    /// Their keys' and values' bytes.
    pub bytes: u64,
    pub seconds: f64,
    /// Records not produced because of `error` (the batch that failed; later lines are not read).
    pub failed: u64,
    /// The Kafka error name and message that stopped the run, if any.
    pub error: Option<String>,
}

impl ProduceReport {
    pub fn summary(&self) -> String {
        let mb = self.bytes as f64 / 1e6;
        format!(
            "{} records ({:.2} MB) produced to {} in {:.2} s ({:.2} MB/s){}",
            self.records,
            mb,
            self.topic,
            self.seconds,
            mb / self.seconds.max(1e-9),
            if self.failed > 0 { format!(", {} failed", self.failed) } else { String::new() }
        )
    }
}

/// Reads `input` line by line on a thread of its own (at most [`QUEUED_LINES_MAX`] lines ahead).
fn read_lines(input: impl BufRead + Send + 'static) -> tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUED_LINES_MAX);
    std::thread::spawn(move || {
        let mut input = input;
        let mut number = 0u64;
        loop {
            let mut line = Vec::new();
            let read = std::io::Read::take(&mut input, LINE_BYTES_MAX as u64 + 2).read_until(b'\n', &mut line);
            number += 1;
            let item = match read {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if line.len() > LINE_BYTES_MAX { Err(format!("line {number} is longer than {LINE_BYTES_MAX} bytes")) } else { Ok(line) }
                }
                Err(e) => Err(format!("cannot read stdin: {e}")),
            };
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Produces every line of `input` as a record of `s.topic`; `progress` gets a line about every
/// second of a long run. Stops at the first record that fails, reported in the result.
pub async fn produce(
    c: &mut Client,
    s: &ProduceSettings,
    input: impl BufRead + Send + 'static,
    mut progress: impl FnMut(&str),
) -> Result<ProduceReport, AdminError> {
    let mut partitions = c.partitions(&s.topic).await?;
    if partitions.is_empty() {
        return Err(AdminError::Protocol { addr: String::new(), reason: format!("Metadata lists no partitions of topic '{}'", s.topic) });
    }
    if let Some(p) = s.partition
        && !partitions.iter().any(|m| m.partition == p)
    {
        return kafka_result("Metadata", &format!("{}-{p}", s.topic), super::client::UNKNOWN_TOPIC_OR_PARTITION, None)
            .map(|()| unreachable!());
    }
    let separator = s.key_separator.as_ref().map(|s| s.as_bytes().to_vec());
    let version = c.version::<ProduceRequest>(9)?;
    let start = Instant::now();
    let mut last_progress = start;
    let mut report = ProduceReport { topic: s.topic.clone(), ..Default::default() };
    let mut lines = read_lines(input);
    let mut sticky = 0usize;
    while let Some(first) = lines.recv().await {
        let mut batch = vec![first];
        let mut bytes = 0usize;
        while bytes < BATCH_BYTES_MAX && batch.len() < BATCH_RECORDS_MAX {
            match lines.try_recv() {
                Ok(l) => {
                    bytes += l.as_ref().map_or(0, |l| l.len());
                    batch.push(l);
                }
                Err(_) => break,
            }
        }
        // partition -> records
        let mut by_partition: ByPartition<'_> = BTreeMap::new();
        sticky = (sticky + 1) % partitions.len().max(1);
        let mut bad_line = None;
        for line in &batch {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    bad_line = Some(e.clone());
                    break;
                }
            };
            let (key, value) = match split_line(line, separator.as_deref()) {
                Ok(kv) => kv,
                Err(e) => {
                    bad_line = Some(e);
                    break;
                }
            };
            let p = match (s.partition, key) {
                (Some(p), _) => p,
                (None, Some(k)) => partitions[partition_for_key(k, partitions.len()) as usize % partitions.len()].partition,
                (None, None) => partitions[sticky].partition,
            };
            by_partition.entry(p).or_default().push((key, value));
        }
        let count: u64 = by_partition.values().map(|v| v.len() as u64).sum();
        let size: u64 = by_partition.values().flatten().map(|(k, v)| (k.map_or(0, |k| k.len()) + v.len()) as u64).sum();
        if let Err(e) = send_batch(c, s, version, &mut partitions, &by_partition).await {
            report.failed += count;
            report.error = Some(e.to_string());
            break;
        }
        report.records += count;
        report.bytes += size;
        if let Some(e) = bad_line {
            report.failed += 1;
            report.error = Some(format!("line {}: {e}", report.records + 1));
            break;
        }
        if last_progress.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
            last_progress = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            progress(&format!(
                "{} records, {:.2} MB, {:.2} MB/s",
                report.records,
                report.bytes as f64 / 1e6,
                report.bytes as f64 / 1e6 / secs.max(1e-9)
            ));
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Sends one batch per partition to the partitions' leaders, retrying retriable errors (with
/// fresh metadata) until the request timeout has passed.
async fn send_batch(
    c: &mut Client,
    s: &ProduceSettings,
    version: i16,
    partitions: &mut Vec<PartitionMeta>,
    by_partition: &ByPartition<'_>,
) -> Result<(), AdminError> {
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut batches: BTreeMap<i32, Bytes> = BTreeMap::new();
    for (p, recs) in by_partition {
        let records: Vec<RecordIn<'_>> = recs.iter().map(|(k, v)| RecordIn { key: *k, value: Some(v), timestamp_delta: 0 }).collect();
        batches.insert(*p, format::encode_records(now_ms, &records, s.compression).map_err(|e| AdminError::Encode(e.to_string()))?);
    }
    let deadline = Instant::now() + c.request_timeout();
    let timeout_ms = i32::try_from(c.request_timeout().as_millis()).unwrap_or(i32::MAX);
    loop {
        // leader -> partitions
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in batches.keys() {
            let leader = partitions.iter().find(|m| m.partition == *p).map_or(-1, |m| m.leader);
            by_leader.entry(leader).or_default().push(*p);
        }
        let mut retry: Option<AdminError> = None;
        for (leader, ps) in by_leader {
            if leader < 0 {
                retry = Some(
                    kafka_result("Produce", &format!("{}-{}", s.topic, ps[0]), super::client::LEADER_NOT_AVAILABLE, None).unwrap_err(),
                );
                continue;
            }
            let data = TopicProduceData::default().with_name(TopicName(StrBytes::from_string(s.topic.clone()))).with_partition_data(
                ps.iter().map(|p| PartitionProduceData::default().with_index(*p).with_records(Some(batches[p].clone()))).collect(),
            );
            let req = ProduceRequest::default().with_acks(s.acks).with_timeout_ms(timeout_ms).with_topic_data(vec![data]);
            if s.acks == 0 {
                c.send_only(Node::Broker(leader), version, &req).await?;
                for p in &ps {
                    batches.remove(p);
                }
                continue;
            }
            let r = match c.send(Node::Broker(leader), version, &req).await {
                Ok(r) => r,
                Err(e @ (AdminError::Io { .. } | AdminError::Timeout { .. } | AdminError::Connect { .. })) => {
                    retry = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            for t in r.responses {
                for pr in t.partition_responses {
                    let context = format!("{}-{}", s.topic, pr.index);
                    let message = pr.error_message.map(|m| m.to_string());
                    if pr.error_code == 0 {
                        batches.remove(&pr.index);
                    } else if RETRIABLE.contains(&pr.error_code) {
                        retry = Some(kafka_result("Produce", &context, pr.error_code, message).unwrap_err());
                    } else {
                        return kafka_result("Produce", &context, pr.error_code, message);
                    }
                }
            }
        }
        if batches.is_empty() {
            return Ok(());
        }
        let e = retry
            .unwrap_or_else(|| AdminError::Protocol { addr: String::new(), reason: "Produce answered without every partition".into() });
        if Instant::now() >= deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
        if let Ok(fresh) = c.partitions(&s.topic).await
            && !fresh.is_empty()
        {
            *partitions = fresh;
        }
    }
}

/// Where `consume` starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    Beginning,
    End,
    At(i64),
}

/// `beginning`, `end` or an offset.
pub fn parse_start_offset(arg: &str) -> Result<StartOffset, AdminError> {
    match arg {
        "beginning" => Ok(StartOffset::Beginning),
        "end" => Ok(StartOffset::End),
        n => match n.parse::<i64>() {
            Ok(o) if o >= 0 => Ok(StartOffset::At(o)),
            _ => Err(AdminError::Invalid(format!("--offset '{arg}': expected beginning, end or an offset >= 0"))),
        },
    }
}

/// What `consume` is asked to do.
#[derive(Debug, Clone)]
pub struct ConsumeSettings {
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: StartOffset,
    pub count: Option<u64>,
    pub exit_at_end: bool,
    /// Start at its committed offsets (`offset` where it has none) and commit the positions
    /// reached when done.
    pub group: Option<String>,
    pub json: bool,
}

/// One record as `consume --json` prints it (keys and values as UTF-8, invalid bytes replaced).
#[derive(Debug, Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: Option<String>,
    value: Option<String>,
    headers: Vec<JsonHeader>,
}

#[derive(Debug, Serialize)]
struct JsonHeader {
    key: String,
    value: Option<String>,
}

/// What `consume` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsumeReport {
    pub records: u64,
    /// partition -> the next offset to read.
    pub positions: BTreeMap<i32, i64>,
}

/// Prints the records of `s.topic` to `out` until `count` records, the end of every
/// partition (`exit_at_end`), or forever.
pub async fn consume(c: &mut Client, s: &ConsumeSettings, out: &mut impl Write) -> Result<ConsumeReport, AdminError> {
    let mut metas = c.partitions(&s.topic).await?;
    if let Some(p) = s.partition {
        metas.retain(|m| m.partition == p);
        if metas.is_empty() {
            return kafka_result("Metadata", &format!("{}-{p}", s.topic), super::client::UNKNOWN_TOPIC_OR_PARTITION, None)
                .map(|()| ConsumeReport::default());
        }
    }
    let wanted: BTreeMap<String, Vec<i32>> = BTreeMap::from([(s.topic.clone(), metas.iter().map(|m| m.partition).collect())]);
    let group_node = match &s.group {
        Some(g) => Some(c.coordinator(g).await?),
        None => None,
    };
    let committed = match (&s.group, group_node) {
        (Some(g), Some(node)) => super::groups::committed_offsets(c, node, g).await?,
        _ => BTreeMap::new(),
    };
    let start = match s.offset {
        StartOffset::Beginning => Some(c.list_offsets(&wanted, EARLIEST_TIMESTAMP).await?),
        StartOffset::End => Some(c.list_offsets(&wanted, LATEST_TIMESTAMP).await?),
        StartOffset::At(_) => None,
    };
    let mut position: BTreeMap<i32, i64> = BTreeMap::new();
    for m in &metas {
        let key = (s.topic.clone(), m.partition);
        let o = match (committed.get(&key), &start, s.offset) {
            (Some(o), _, _) => *o,
            (None, _, StartOffset::At(o)) => o,
            (None, Some(offsets), _) => match offsets.get(&key) {
                Some(Ok(o)) => *o,
                Some(Err(code)) => {
                    return kafka_result("ListOffsets", &format!("{}-{}", s.topic, m.partition), *code, None)
                        .map(|()| ConsumeReport::default());
                }
                None => 0,
            },
            (None, None, _) => 0,
        };
        position.insert(m.partition, o);
    }
    let mut report = ConsumeReport::default();
    let mut high_watermark: BTreeMap<i32, i64> = BTreeMap::new();
    let version = c.version::<FetchRequest>(12)?;
    let mut stalled_since: Option<Instant> = None;
    'fetching: loop {
        let active: Vec<i32> = position
            .iter()
            .filter(|(p, pos)| !(s.exit_at_end && high_watermark.get(p).is_some_and(|hw| **pos >= *hw)))
            .map(|(p, _)| *p)
            .collect();
        if active.is_empty() || s.count.is_some_and(|n| report.records >= n) {
            break;
        }
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in &active {
            by_leader.entry(metas.iter().find(|m| m.partition == *p).map_or(-1, |m| m.leader)).or_default().push(*p);
        }
        let mut trouble: Option<AdminError> = None;
        for (leader, ps) in by_leader {
            if leader < 0 {
                trouble =
                    Some(kafka_result("Fetch", &format!("{}-{}", s.topic, ps[0]), super::client::LEADER_NOT_AVAILABLE, None).unwrap_err());
                continue;
            }
            let topic = FetchTopic::default().with_topic(TopicName(StrBytes::from_string(s.topic.clone()))).with_partitions(
                ps.iter()
                    .map(|p| {
                        FetchPartition::default()
                            .with_partition(*p)
                            .with_fetch_offset(position[p])
                            .with_current_leader_epoch(-1)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(FETCH_BYTES_MAX)
                    })
                    .collect(),
            );
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(FETCH_WAIT_MS)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_BYTES_MAX)
                .with_isolation_level(0)
                .with_session_epoch(-1)
                .with_topics(vec![topic]);
            let r = match c.send(Node::Broker(leader), version, &req).await {
                Ok(r) => r,
                Err(e @ (AdminError::Io { .. } | AdminError::Timeout { .. } | AdminError::Connect { .. })) => {
                    trouble = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            kafka_result("Fetch", "", r.error_code, None)?;
            for t in r.responses {
                for pd in t.partitions {
                    let p = pd.partition_index;
                    let context = format!("{}-{p}", s.topic);
                    let Some(&pos) = position.get(&p) else { continue };
                    if pd.error_code == OFFSET_OUT_OF_RANGE {
                        let range = c.list_offsets(&BTreeMap::from([(s.topic.clone(), vec![p])]), EARLIEST_TIMESTAMP).await?;
                        let lo = range.get(&(s.topic.clone(), p)).and_then(|r| r.ok()).map_or("?".into(), |o| o.to_string());
                        let message =
                            format!("offset {pos} is outside the log (log start offset {lo}, log end offset {})", pd.high_watermark);
                        return kafka_result("Fetch", &context, pd.error_code, Some(message)).map(|()| report);
                    }
                    if RETRIABLE.contains(&pd.error_code) {
                        trouble = Some(kafka_result("Fetch", &context, pd.error_code, None).unwrap_err());
                        continue;
                    }
                    kafka_result("Fetch", &context, pd.error_code, None)?;
                    stalled_since = None;
                    high_watermark.insert(p, pd.high_watermark);
                    let records = pd.records.unwrap_or_default();
                    let next = print_records(&s.topic, p, pos, &records, s, &mut report, out)?;
                    position.insert(p, next);
                    out.flush()?;
                    if next == pos && !records.is_empty() && format::peek_header(&records).ok().flatten().is_none() {
                        return Err(AdminError::Protocol {
                            addr: String::new(),
                            reason: format!("{context}: a record batch at offset {pos} larger than {FETCH_BYTES_MAX} bytes"),
                        });
                    }
                    if s.count.is_some_and(|n| report.records >= n) {
                        break 'fetching;
                    }
                }
            }
        }
        if let Some(e) = trouble {
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= c.request_timeout() {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
            if let Ok(mut fresh) = c.partitions(&s.topic).await {
                fresh.retain(|m| position.contains_key(&m.partition));
                metas = fresh;
            }
        }
    }
    out.flush()?;
    if let (Some(g), Some(node)) = (&s.group, group_node) {
        let offsets = position.iter().map(|(p, o)| ((s.topic.clone(), *p), *o)).collect();
        super::groups::commit_offsets(c, node, g, &offsets).await?;
    }
    report.positions = position;
    Ok(report)
}

/// Prints the records of `buf` (a partition's Fetch answer) from offset `pos` on, at most up
/// to `s.count` in all; returns the next offset to fetch.
fn print_records(
    topic: &str,
    partition: i32,
    mut pos: i64,
    buf: &[u8],
    s: &ConsumeSettings,
    report: &mut ConsumeReport,
    out: &mut impl Write,
) -> Result<i64, AdminError> {
    let first = pos;
    let bad = |e: format::RecordsError| AdminError::Protocol {
        addr: String::new(),
        reason: format!("{topic}-{partition} after offset {first}: {e}"),
    };
    let mut rest = buf;
    while let Some(h) = format::peek_header(rest).map_err(bad)? {
        let batch = &rest[..h.size_bytes as usize];
        rest = &rest[h.size_bytes as usize..];
        let batch_end = h.base_offset + h.offset_count();
        if batch_end <= pos {
            continue;
        }
        if !h.is_control() {
            for r in format::decode_records(batch, &h, DECOMPRESSED_BYTES_MAX).map_err(bad)? {
                if r.offset < pos {
                    continue;
                }
                if s.count.is_some_and(|n| report.records >= n) {
                    return Ok(pos);
                }
                let text = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
                if s.json {
                    let j = JsonRecord {
                        topic,
                        partition,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: text(&r.key),
                        value: text(&r.value),
                        headers: r
                            .headers
                            .iter()
                            .map(|(k, v)| JsonHeader { key: String::from_utf8_lossy(k).into_owned(), value: text(v) })
                            .collect(),
                    };
                    let line = serde_json::to_string(&j).map_err(|e| AdminError::Encode(e.to_string()))?;
                    writeln!(out, "{line}")?;
                } else {
                    out.write_all(r.value.as_deref().unwrap_or_default())?;
                    out.write_all(b"\n")?;
                }
                report.records += 1;
                pos = r.offset + 1;
            }
        }
        pos = pos.max(batch_end);
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_default_partitioner() {
        // Values of kafka-python's murmur2, which mirrors Kafka's Utils.murmur2.
        for (key, hash) in [
            (&b""[..], 275_646_681u32),
            (b"a", 2_731_586_172),
            (b"ab", 316_155_434),
            (b"abc", 479_470_107),
            (b"abcd", 2_971_317_748),
            (b"hello world", 1_221_641_059),
            (b"key-17", 956_945_460),
        ] {
            assert_eq!(murmur2(key), hash, "{key:?}");
        }
        assert_eq!(partition_for_key(b"a", 3), 1);
        assert_eq!(partition_for_key(b"hello world", 3), 1);
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(split_line(b"k:v:w", Some(b":")).unwrap(), (Some(&b"k"[..]), &b"v:w"[..]));
        assert_eq!(split_line(b"k::v", Some(b"::")).unwrap(), (Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(split_line(b":v", Some(b":")).unwrap(), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_line(b"plain", None).unwrap(), (None, &b"plain"[..]));
        assert!(split_line(b"nokey", Some(b"\t")).is_err());
    }

    #[test]
    fn start_offsets_and_codecs() {
        assert_eq!(parse_start_offset("beginning").unwrap(), StartOffset::Beginning);
        assert_eq!(parse_start_offset("end").unwrap(), StartOffset::End);
        assert_eq!(parse_start_offset("42").unwrap(), StartOffset::At(42));
        assert!(parse_start_offset("-1").is_err());
        assert_eq!(compression_code("zstd").unwrap(), 4);
        assert!(compression_code("brotli").is_err());
    }
}
