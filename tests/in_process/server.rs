//! In-process server tests over real TCP: pipelining order, acks=0, graceful shutdown.
//! (Client compatibility is proven by the real clients in tests/integration/.)

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, FetchResponse, MetadataRequest, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sidestream::config::Config;
use sidestream::format::records::encode_batch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(dir: &std::path::Path) -> Config {
    let env = vec![
        ("SIDESTREAM_AGENT_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("SIDESTREAM_AGENT_DATA_DIR".to_string(), dir.to_str().unwrap().to_string()),
        ("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS".to_string(), "30".to_string()),
        ("SIDESTREAM_METRICS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("SIDESTREAM_CACHE_DISK_BYTES".to_string(), (16 << 20).to_string()),
    ];
    Config::load(None, env).unwrap()
}

fn request<R: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut b, key.request_header_version(version))
        .unwrap();
    body.encode(&mut b, version).unwrap();
    let n = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&n.to_be_bytes());
    b.freeze()
}

async fn read_response(s: &mut TcpStream) -> Bytes {
    let n = s.read_i32().await.unwrap();
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf).await.unwrap();
    Bytes::from(buf)
}

/// A Produce request of one batch to partition 0 of `topic`.
fn produce_request(topic: &str, acks: i16, timeout_ms: i32, batch: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(timeout_ms).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(batch))]),
    ])
}

fn produce(topic: &str, acks: i16, value: &[u8]) -> ProduceRequest {
    produce_request(topic, acks, 10_000, encode_batch(1, &[value]))
}

/// Reads one Produce v9 answer: (error code, base offset) of its one partition.
async fn read_produce(s: &mut TcpStream) -> (i16, i64) {
    let mut b = read_response(s).await;
    ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(9)).unwrap();
    let r = ProduceResponse::decode(&mut b, 9).unwrap();
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// Sends one batch and waits for its answer.
async fn send_produce(s: &mut TcpStream, req: &ProduceRequest, correlation_id: i32) -> (i16, i64) {
    s.write_all(&request(ApiKey::Produce, 9, correlation_id, req)).await.unwrap();
    read_produce(s).await
}

async fn create_topic(s: &mut TcpStream, name: &str) {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.into())))),
        ]))
        .with_allow_auto_topic_creation(true);
    s.write_all(&request(ApiKey::Metadata, 12, 1, &req)).await.unwrap();
    read_response(s).await;
}

async fn fetch_all(s: &mut TcpStream, topic: &str) -> FetchResponse {
    let req = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20)]),
    ]);
    s.write_all(&request(ApiKey::Fetch, 12, 99, &req)).await.unwrap();
    let mut b = read_response(s).await;
    ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(12)).unwrap();
    FetchResponse::decode(&mut b, 12).unwrap()
}

fn record_count(records: &Bytes) -> i64 {
    sidestream::format::records::batches(records).map(|(_, h)| h.offset_count()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_acks_0_is_silent() {
    let dir = tempfile::tempdir().unwrap();
    let server = sidestream::server::start(&config(dir.path())).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "p").await;

    // Slow (produce, answered after a commit) and fast (ApiVersions) requests interleaved,
    // plus acks=0 produces that must get no answer at all; all written before reading any.
    let mut expected = Vec::new();
    let mut out = BytesMut::new();
    for i in 0..40 {
        match i % 4 {
            0 => {
                out.extend_from_slice(&request(ApiKey::Produce, 9, i, &produce("p", -1, b"all")));
                expected.push(i);
            }
            1 => out.extend_from_slice(&request(ApiKey::Produce, 9, i, &produce("p", 0, b"zero"))),
            _ => {
                out.extend_from_slice(&request(ApiKey::ApiVersions, 3, i, &ApiVersionsRequest::default()));
                expected.push(i);
            }
        }
    }
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let mut b = read_response(&mut s).await;
        got.push(b.get_i32());
        let _ = b;
    }
    assert_eq!(got, expected);

    // Every acked produce got a distinct offset; the acks=0 batches are committed too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let f = fetch_all(&mut s, "p").await;
        let p = &f.responses[0].partitions[0];
        if p.high_watermark == 20 {
            assert_eq!(record_count(p.records.as_ref().unwrap()), 20);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "hw stuck at {}", p.high_watermark);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_everything_accepted_and_restart_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.upload.flush_interval_ms = 60_000; // nothing flushes by time: only shutdown can commit
    let server = sidestream::server::start(&cfg).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "d").await;
    let mut out = BytesMut::new();
    for i in 0..5 {
        out.extend_from_slice(&request(ApiKey::Produce, 9, i, &produce("d", 0, format!("v{i}").as_bytes())));
    }
    s.write_all(&out).await.unwrap();
    // The connection answers in order, so this answer means every produce above was enqueued.
    s.write_all(&request(ApiKey::ApiVersions, 3, 100, &ApiVersionsRequest::default())).await.unwrap();
    let mut b = read_response(&mut s).await;
    assert_eq!(b.get_i32(), 100);
    assert!(server.shutdown().await);

    let server = sidestream::server::start(&cfg).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    let f = fetch_all(&mut s, "d").await;
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 5);
    let records = p.records.clone().unwrap();
    let offsets: Vec<i64> = sidestream::format::records::batches(&records).map(|(_, h)| h.base_offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    assert!(server.shutdown().await);
}

async fn produce_once(s: &mut TcpStream, topic: &str, acks: i16, correlation_id: i32) -> (i16, i64) {
    let batch = encode_batch(5, &[b"a", b"b", b"c"]);
    send_produce(s, &produce_request(topic, acks, 5000, batch), correlation_id).await
}

/// A server whose object store is wrapped in a fault injector the test controls.
async fn start_faulty(
    cfg: &Config,
    seed: u64,
) -> (sidestream::server::RunningServer, std::sync::Arc<sidestream::object::faulty::FaultyStore>) {
    let store = std::sync::Arc::new(sidestream::object::faulty::FaultyStore::new(
        sidestream::server::open_object_store(cfg, Default::default()).await.unwrap(),
        std::sync::Arc::new(sidestream::clock::SeededEntropy::new(seed)),
    ));
    let overrides = sidestream::server::Overrides { object_store: Some(store.clone()) };
    (sidestream::server::start_with(cfg, overrides).await.unwrap(), store)
}

async fn high_watermark(s: &mut TcpStream, topic: &str) -> i64 {
    fetch_all(s, topic).await.responses[0].partitions[0].high_watermark
}

/// Polls `hw` until it reaches `want` (deadline 20 s).
async fn wait_for_hw(s: &mut TcpStream, topic: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let hw = high_watermark(s, topic).await;
        if hw == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "high watermark {hw}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_is_answered_from_the_wal_while_object_storage_is_down() {
    use sidestream::object::faulty::Outage;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (server, store) = start_faulty(&cfg, 1).await;
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "w").await;

    store.set_outage(Outage::Failing);
    for i in 0..10 {
        // Answered (from the WAL fsync) although no object can be stored: offset unknown, -1.
        assert_eq!(produce_once(&mut s, "w", 1, i).await, (0, -1));
    }
    // Wait until the uploader has really hit the outage (and is retrying).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.injected_errors.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the upload never reached the store");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(high_watermark(&mut s, "w").await, 0, "nothing is committed during the outage");
    store.set_outage(Outage::None);
    wait_for_hw(&mut s, "w", 30).await;
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_waits_for_the_commit_and_times_out_during_an_outage() {
    use sidestream::object::faulty::Outage;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (server, store) = start_faulty(&cfg, 2).await;
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "a").await;
    store.set_outage(Outage::Stalled);
    let req = produce_request("a", -1, 300, encode_batch(1, &[b"x"]));
    assert_eq!(send_produce(&mut s, &req, 1).await.0, 7, "REQUEST_TIMED_OUT");
    store.set_outage(Outage::None);
    // The timed-out batch is still committed once storage is back (as Kafka may still append it).
    wait_for_hw(&mut s, "a", 1).await;
    assert_eq!(produce_once(&mut s, "a", -1, 2).await, (0, 1));
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_produce_returns_dense_base_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let server = sidestream::server::start(&config(dir.path())).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "o").await;
    let mut bases = BTreeMap::new();
    for i in 0..3 {
        let (error, base) = produce_once(&mut s, "o", -1, i).await;
        assert_eq!(error, 0);
        bases.insert(i, base);
    }
    assert_eq!(bases.into_values().collect::<Vec<_>>(), vec![0, 3, 6]);
    // acks=1 is answered before offsets exist: -1, as documented.
    assert_eq!(produce_once(&mut s, "o", 1, 9).await, (0, -1));
    wait_for_hw(&mut s, "o", 12).await;
    // The Prometheus endpoint shows the WAL and the uploads.
    let mut m = TcpStream::connect(server.metrics_addr).await.unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("sidestream_wal_syncs_total"), "{text}");
    assert!(text.contains("sidestream_commits_total"), "{text}");
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wal_makes_acks_1_wait_then_time_out_and_recovers() {
    use sidestream::object::faulty::Outage;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal.segment_bytes = 64 * 1024;
    cfg.wal.bytes_max = 128 * 1024;
    let (server, store) = start_faulty(&cfg, 3).await;
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "full").await;
    store.set_outage(Outage::Failing);

    let value = vec![7u8; 10 * 1024];
    let mut acked = 0i64;
    let mut timed_out = false;
    for i in 0..100 {
        let req = produce_request("full", 1, 300, encode_batch(1, &[&value]));
        match send_produce(&mut s, &req, i).await.0 {
            0 => acked += 1,
            7 => {
                timed_out = true;
                break;
            }
            other => panic!("unexpected error {other}"),
        }
    }
    assert!(timed_out, "the WAL never filled up");
    // bytes_max (128 KiB) holds about a dozen 10 KiB entries.
    assert!((8..=13).contains(&acked), "acked {acked} before the WAL was full");

    store.set_outage(Outage::None);
    wait_for_hw(&mut s, "full", acked).await;
    // Committed segments are deleted, so the log accepts writes again.
    assert_eq!(produce_once(&mut s, "full", 1, 1000).await, (0, -1));
    wait_for_hw(&mut s, "full", acked + 3).await;
    assert!(server.shutdown().await);
}

async fn produce_batch(s: &mut TcpStream, topic: &str, batch: Bytes, correlation_id: i32) -> (i16, i64) {
    send_produce(s, &produce_request(topic, -1, 5000, batch), correlation_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_are_deduplicated_checked_and_survive_restart() {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    use sidestream::format::records::encode_producer_batch;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let server = sidestream::server::start(&cfg).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "idem").await;

    let init = |cid| request(ApiKey::InitProducerId, 4, cid, &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000));
    s.write_all(&init(1)).await.unwrap();
    let mut b = read_response(&mut s).await;
    ResponseHeader::decode(&mut b, ApiKey::InitProducerId.response_header_version(4)).unwrap();
    let r = InitProducerIdResponse::decode(&mut b, 4).unwrap();
    assert_eq!(r.error_code, 0);
    let pid = r.producer_id.0;
    assert!(pid >= 0);
    assert_eq!(r.producer_epoch, 0);

    let b0 = encode_producer_batch(Some((pid, 0, 0)), 1, &[b"a", b"b"]);
    let b1 = encode_producer_batch(Some((pid, 0, 2)), 1, &[b"c"]);
    assert_eq!(produce_batch(&mut s, "idem", b0.clone(), 2).await, (0, 0));
    assert_eq!(produce_batch(&mut s, "idem", b1.clone(), 3).await, (0, 2));
    // A retry of either batch gets its original offset and stores nothing.
    assert_eq!(produce_batch(&mut s, "idem", b0.clone(), 4).await, (0, 0));
    assert_eq!(produce_batch(&mut s, "idem", b1.clone(), 5).await, (0, 2));
    assert_eq!(high_watermark(&mut s, "idem").await, 3);
    // A gap is OUT_OF_ORDER_SEQUENCE_NUMBER (45); an older epoch after a newer one is
    // INVALID_PRODUCER_EPOCH (47).
    let gap = encode_producer_batch(Some((pid, 0, 7)), 1, &[b"x"]);
    assert_eq!(produce_batch(&mut s, "idem", gap, 6).await.0, 45);
    let new_epoch = encode_producer_batch(Some((pid, 1, 0)), 1, &[b"d"]);
    assert_eq!(produce_batch(&mut s, "idem", new_epoch.clone(), 7).await, (0, 3));
    let stale = encode_producer_batch(Some((pid, 0, 3)), 1, &[b"y"]);
    assert_eq!(produce_batch(&mut s, "idem", stale, 8).await.0, 47);
    // Two retries in one pipelined burst: the second is a duplicate of the first.
    let next = encode_producer_batch(Some((pid, 1, 1)), 1, &[b"e"]);
    let mut out = BytesMut::new();
    for cid in [9, 10] {
        out.extend_from_slice(&request(ApiKey::Produce, 9, cid, &produce_request("idem", -1, 5000, next.clone())));
    }
    s.write_all(&out).await.unwrap();
    for _ in 0..2 {
        assert_eq!(read_produce(&mut s).await.1, 4);
    }
    assert_eq!(high_watermark(&mut s, "idem").await, 5);
    assert!(server.shutdown().await);

    // The producer state is in the store: after a restart a retry is still recognised.
    let server = sidestream::server::start(&cfg).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    assert_eq!(produce_batch(&mut s, "idem", new_epoch, 11).await, (0, 3));
    assert_eq!(high_watermark(&mut s, "idem").await, 5);
    s.write_all(&init(12)).await.unwrap();
    let mut b = read_response(&mut s).await;
    ResponseHeader::decode(&mut b, ApiKey::InitProducerId.response_header_version(4)).unwrap();
    let r = InitProducerIdResponse::decode(&mut b, 4).unwrap();
    assert!(r.producer_id.0 > pid, "producer ids are never reused");
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_answer_is_not_held_back_by_a_slower_request_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.upload.flush_interval_ms = 60_000; // the acks=all produce below waits for shutdown
    let server = sidestream::server::start(&cfg).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "slow").await;
    let mut out = BytesMut::new();
    out.extend_from_slice(&request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()));
    out.extend_from_slice(&request(ApiKey::Produce, 9, 2, &produce("slow", -1, b"x")));
    s.write_all(&out).await.unwrap();
    let mut b = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
        .await
        .expect("the ApiVersions answer was held back behind the pending produce");
    assert_eq!(b.get_i32(), 1);
    // Shutdown commits the pending batch at once (not after the flush interval nor the
    // request's 10 s timeout) and answers it with its offset.
    let started = tokio::time::Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(read_produce(&mut s).await, (0, 0));
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown waited {:?}", started.elapsed());
    assert!(shutdown.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reads_are_served_from_the_write_through_cache_and_cold_reads_from_the_store() {
    use sidestream::object::faulty::Outage;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (server, store) = start_faulty(&cfg, 5).await;
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "tail").await;
    for i in 0..20 {
        assert_eq!(produce_once(&mut s, "tail", -1, i).await, (0, i64::from(i) * 3));
    }
    // Every GET would fail now: the fetch succeeds only because the uploaded objects are in
    // the memory tier.
    store.set_outage(Outage::Failing);
    let f = fetch_all(&mut s, "tail").await;
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(record_count(p.records.as_ref().unwrap()), 60);
    assert_eq!(store.injected_errors.load(std::sync::atomic::Ordering::Relaxed), 0, "a tail read reached the store");
    store.set_outage(Outage::None);
    assert!(server.shutdown().await);

    // Without the cache directory (a new host) the same read is a cold read from the store.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let (server, store) = start_faulty(&cfg, 6).await;
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    store.set_outage(Outage::Failing);
    let f = fetch_all(&mut s, "tail").await;
    assert_eq!(f.responses[0].partitions[0].error_code, 56, "KAFKA_STORAGE_ERROR while the store is down");
    store.set_outage(Outage::None);
    let f = fetch_all(&mut s, "tail").await;
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(record_count(p.records.as_ref().unwrap()), 60);
    assert!(server.shutdown().await);
}

async fn fetch_at(s: &mut TcpStream, topic: &str, offset: i64, max_wait_ms: i32, cid: i32) -> FetchResponse {
    let req = FetchRequest::default().with_max_wait_ms(max_wait_ms).with_min_bytes(1).with_max_bytes(64 << 20).with_topics(vec![
        FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.into()))).with_partitions(vec![
            FetchPartition::default().with_partition(0).with_fetch_offset(offset).with_partition_max_bytes(64 << 20),
        ]),
    ]);
    s.write_all(&request(ApiKey::Fetch, 12, cid, &req)).await.unwrap();
    let mut b = read_response(s).await;
    ResponseHeader::decode(&mut b, ApiKey::Fetch.response_header_version(12)).unwrap();
    FetchResponse::decode(&mut b, 12).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_much_smaller_than_the_data_returns_identical_records_and_restarts_warm() {
    use sidestream::object::faulty::Outage;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.cache.memory_bytes = 1 << 20;
    cfg.cache.block_bytes = 64 * 1024;
    let (server, store) = start_faulty(&cfg, 7).await;
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "evict").await;
    let mut expected = Vec::new();
    for i in 0..40u32 {
        let value: Vec<u8> = (0..100_000u32).map(|j| (i * 7 + j % 251) as u8).collect();
        let batch = encode_batch(1, &[&value]);
        assert_eq!(produce_batch(&mut s, "evict", batch.clone(), i as i32).await, (0, i64::from(i)));
        expected.push(batch);
    }
    // 4 MB of data through a 1 MiB memory tier: most reads come from disk or the store.
    let mut got = Vec::new();
    let mut offset = 0;
    while offset < 40 {
        let f = fetch_at(&mut s, "evict", offset, 0, 100 + offset as i32).await;
        let records = f.responses[0].partitions[0].records.clone().unwrap();
        for (at, h) in sidestream::format::records::batches(&records) {
            got.push(records.slice(at..at + h.size_bytes as usize));
            offset = h.base_offset + 1;
        }
    }
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        // Identical but for the base offset and leader epoch the agent patched in.
        assert!(g[8..12] == e[8..12] && g[16..] == e[16..], "batch {i} differs");
        assert_eq!(i64::from_be_bytes(g[..8].try_into().unwrap()), i as i64);
    }
    assert_eq!(got.len(), 40);
    assert!(server.shutdown().await);

    // Restart with the store down: reads of recent data hit the disk tier written at shutdown.
    let (server, store2) = start_faulty(&cfg, 8).await;
    drop(store);
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    store2.set_outage(Outage::Failing);
    let f = fetch_at(&mut s, "evict", 39, 0, 1).await;
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "the last batch was not in the warm disk tier");
    assert_eq!(record_count(p.records.as_ref().unwrap()), 1);
    store2.set_outage(Outage::None);
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_on_commit_not_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = sidestream::server::start(&config(dir.path())).await.unwrap();
    let mut admin = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut admin, "poll").await;

    // No data: the fetch waits its max_wait_ms and answers without error.
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let f = fetch_at(&mut s, "poll", 0, 300, 1).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(f.responses[0].partitions[0].error_code, 0);
    assert_eq!(record_count(f.responses[0].partitions[0].records.as_ref().unwrap()), 0);

    // A produce wakes a waiting fetch as soon as it is committed, long before max_wait_ms.
    let waiting = tokio::spawn(async move {
        let f = fetch_at(&mut s, "poll", 0, 5000, 2).await;
        (f, tokio::time::Instant::now())
    });
    assert_eq!(produce_once(&mut admin, "poll", -1, 3).await, (0, 0));
    let committed = tokio::time::Instant::now();
    let (f, answered) = waiting.await.unwrap();
    assert_eq!(record_count(f.responses[0].partitions[0].records.as_ref().unwrap()), 3);
    let lag = answered.saturating_duration_since(committed);
    assert!(lag < Duration::from_millis(500), "the fetch answered {lag:?} after the commit");
    assert!(server.shutdown().await);
}
