//! In-process server tests over real TCP: pipelining order, acks=0, graceful shutdown.
//! (Client compatibility is proven by the real clients in tests/integration/.)

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FetchRequest, FetchResponse, MetadataRequest, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sidestream::config::Config;
use sidestream::protocol::records::encode_batch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(dir: &std::path::Path) -> Config {
    let env = vec![
        ("SIDESTREAM_AGENT_LISTEN".to_string(), "127.0.0.1:0".to_string()),
        ("SIDESTREAM_AGENT_DATA_DIR".to_string(), dir.to_str().unwrap().to_string()),
        ("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS".to_string(), "30".to_string()),
        ("SIDESTREAM_METRICS_LISTEN".to_string(), "127.0.0.1:0".to_string()),
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

fn produce(topic: &str, acks: i16, value: &[u8]) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(StrBytes::from_string(topic.into()))).with_partition_data(vec![
            PartitionProduceData::default().with_index(0).with_records(Some(encode_batch(1, &[value]))),
        ]),
    ])
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
    sidestream::protocol::records::batches(records).map(|(_, h)| h.offset_count()).sum()
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
    let offsets: Vec<i64> = sidestream::protocol::records::batches(&records).map(|(_, h)| h.base_offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
    assert!(server.shutdown().await);
}

async fn produce_once(s: &mut TcpStream, topic: &str, acks: i16, correlation_id: i32) -> (i16, i64) {
    let batch = encode_batch(5, &[b"a", b"b", b"c"]);
    let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(5000).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(batch))]),
    ]);
    s.write_all(&request(ApiKey::Produce, 9, correlation_id, &req)).await.unwrap();
    let mut b = read_response(s).await;
    ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(9)).unwrap();
    let r = ProduceResponse::decode(&mut b, 9).unwrap();
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
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
    use sidestream::object::faulty::{FaultyStore, Outage};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store = std::sync::Arc::new(FaultyStore::new(
        sidestream::server::open_object_store(&cfg, Default::default()).await.unwrap(),
        std::sync::Arc::new(sidestream::clock::SeededEntropy::new(1)),
    ));
    let overrides = sidestream::server::Overrides { object_store: Some(store.clone()) };
    let server = sidestream::server::start_with(&cfg, overrides).await.unwrap();
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
    use sidestream::object::faulty::{FaultyStore, Outage};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let store = std::sync::Arc::new(FaultyStore::new(
        sidestream::server::open_object_store(&cfg, Default::default()).await.unwrap(),
        std::sync::Arc::new(sidestream::clock::SeededEntropy::new(2)),
    ));
    let overrides = sidestream::server::Overrides { object_store: Some(store.clone()) };
    let server = sidestream::server::start_with(&cfg, overrides).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "a").await;
    store.set_outage(Outage::Stalled);
    let req = ProduceRequest::default().with_acks(-1).with_timeout_ms(300).with_topic_data(vec![
        TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("a")))
            .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(encode_batch(1, &[b"x"])))]),
    ]);
    s.write_all(&request(ApiKey::Produce, 9, 1, &req)).await.unwrap();
    let mut b = read_response(&mut s).await;
    ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(9)).unwrap();
    let r = ProduceResponse::decode(&mut b, 9).unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 7, "REQUEST_TIMED_OUT");
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
    use sidestream::object::faulty::{FaultyStore, Outage};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.wal.segment_bytes = 64 * 1024;
    cfg.wal.bytes_max = 128 * 1024;
    let store = std::sync::Arc::new(FaultyStore::new(
        sidestream::server::open_object_store(&cfg, Default::default()).await.unwrap(),
        std::sync::Arc::new(sidestream::clock::SeededEntropy::new(3)),
    ));
    let overrides = sidestream::server::Overrides { object_store: Some(store.clone()) };
    let server = sidestream::server::start_with(&cfg, overrides).await.unwrap();
    let mut s = TcpStream::connect(server.local_addr).await.unwrap();
    create_topic(&mut s, "full").await;
    store.set_outage(Outage::Failing);

    let value = vec![7u8; 10 * 1024];
    let mut acked = 0i64;
    let mut timed_out = false;
    for i in 0..100 {
        let req = ProduceRequest::default().with_acks(1).with_timeout_ms(300).with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("full")))
                .with_partition_data(vec![PartitionProduceData::default().with_index(0).with_records(Some(encode_batch(1, &[&value])))]),
        ]);
        s.write_all(&request(ApiKey::Produce, 9, i, &req)).await.unwrap();
        let mut b = read_response(&mut s).await;
        ResponseHeader::decode(&mut b, ApiKey::Produce.response_header_version(9)).unwrap();
        let r = ProduceResponse::decode(&mut b, 9).unwrap();
        match r.responses[0].partition_responses[0].error_code {
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
