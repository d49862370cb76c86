//! The transaction APIs over the wire, every advertised version: the answers Kafka gives for
//! a full transaction (InitProducerId, AddPartitionsToTxn in both forms, transactional
//! Produce, EndTxn, read_committed Fetch with the aborted list and the marker batches,
//! DescribeTransactions, ListTransactions) and for bad input (unknown ids, stale epochs,
//! partitions not in the transaction) — clean error codes, never a closed connection.

use crate::wire::{Conn, s};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use sidestream::config::Config;
use sidestream::format::records;
use tokio::net::TcpStream;

const FENCED: i16 = 90; // PRODUCER_FENCED
const INVALID_EPOCH: i16 = 47; // INVALID_PRODUCER_EPOCH
const INVALID_MAPPING: i16 = 49; // INVALID_PRODUCER_ID_MAPPING
const INVALID_TXN_STATE: i16 = 48;
const NOT_FOUND: i16 = 105; // TRANSACTIONAL_ID_NOT_FOUND
const UNKNOWN_PARTITION: i16 = 3;
const NOT_ATTEMPTED: i16 = 55; // OPERATION_NOT_ATTEMPTED

/// A transactional batch of `n` records: the test batch with the producer fields set.
fn txn_batch(producer_id: i64, epoch: i16, sequence: i32, n: usize) -> Bytes {
    let values: Vec<&[u8]> = (0..n).map(|_| b"v".as_slice()).collect();
    let mut b = BytesMut::from(&records::encode_batch(0, &values)[..]);
    b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
    b[43..51].copy_from_slice(&producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

fn produce(topic: &str, partition: i32, batch: Bytes, transactional_id: &str) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_transactional_id(Some(TransactionalId(s(transactional_id))))
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(s(topic)))
                .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch))]),
        ])
}

fn add_v3(id: &str, pid: i64, epoch: i16, topic: &str, partitions: Vec<i32>) -> AddPartitionsToTxnRequest {
    AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(s(id)))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default().with_name(TopicName(s(topic))).with_partitions(partitions)])
}

fn end(id: &str, pid: i64, epoch: i16, committed: bool) -> EndTxnRequest {
    EndTxnRequest::default()
        .with_transactional_id(TransactionalId(s(id)))
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch)
        .with_committed(committed)
}

fn fetch(topic: &str, isolation: i8) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_isolation_level(isolation)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(s(topic)))
                .with_partitions(vec![FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20)]),
        ])
}

/// InitProducerId for the transactional id "app" (a new producer).
fn init_app() -> InitProducerIdRequest {
    InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s("app"))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// A server on a temp dir (flushing every `flush_interval_ms`) and a connection to it.
async fn start(dir: &std::path::Path, flush_interval_ms: &str) -> (sidestream::server::RunningServer, Conn) {
    let env = [
        ("SIDESTREAM_AGENT_LISTEN", "127.0.0.1:0"),
        ("SIDESTREAM_AGENT_DATA_DIR", dir.to_str().unwrap()),
        ("SIDESTREAM_METRICS_LISTEN", "127.0.0.1:0"),
        ("SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS", flush_interval_ms),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let server = sidestream::server::start(&Config::load(None, env).unwrap()).await.unwrap();
    let c = Conn(TcpStream::connect(server.local_addr).await.unwrap(), 0);
    (server, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_the_wire_and_clean_errors_for_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(dir.path(), "10").await;
    let created = c
        .call(
            7,
            &CreateTopicsRequest::default().with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(TopicName(s("t")))
                    .with_num_partitions(2)
                    .with_replication_factor(1),
            ]),
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0);

    // Unknown transactional ids.
    assert_eq!(
        c.call(3, &add_v3("nobody", 1, 0, "t", vec![0])).await.results_by_topic_v3_and_below[0].results_by_partition[0]
            .partition_error_code,
        INVALID_MAPPING
    );
    for v in 0..=5 {
        assert_eq!(c.call(v, &end("nobody", 1, 0, true)).await.error_code, INVALID_MAPPING, "EndTxn v{v}");
    }
    let described = c.call(0, &DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(s("nobody"))])).await;
    assert_eq!(described.transaction_states[0].error_code, NOT_FOUND);
    let bad_timeout = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s("x"))))
        .with_transaction_timeout_ms(0);
    assert_eq!(c.call(4, &bad_timeout).await.error_code, 50); // INVALID_TRANSACTION_TIMEOUT

    let r = c.call(4, &init_app()).await;
    assert_eq!(r.error_code, 0);
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);

    // A transactional batch for a partition not added: INVALID_TXN_STATE.
    let p = c.call(9, &produce("t", 0, txn_batch(pid, epoch, 0, 2), "app")).await;
    assert_eq!(p.responses[0].partition_responses[0].error_code, INVALID_TXN_STATE);
    // An unknown partition fails alone; the others are not attempted.
    let r = c.call(3, &add_v3("app", pid, epoch, "t", vec![0, 7])).await;
    let codes: Vec<i16> = r.results_by_topic_v3_and_below[0].results_by_partition.iter().map(|p| p.partition_error_code).collect();
    assert_eq!(codes, vec![NOT_ATTEMPTED, UNKNOWN_PARTITION]);
    // A stale epoch: PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH before v2 (KIP-588).
    assert_eq!(
        c.call(1, &add_v3("app", pid, epoch - 1, "t", vec![0])).await.results_by_topic_v3_and_below[0].results_by_partition[0]
            .partition_error_code,
        INVALID_EPOCH
    );
    assert_eq!(
        c.call(2, &add_v3("app", pid, epoch - 1, "t", vec![0])).await.results_by_topic_v3_and_below[0].results_by_partition[0]
            .partition_error_code,
        FENCED
    );
    for v in 0..=3 {
        let r = c.call(v, &add_v3("app", pid, epoch, "t", vec![0, 1])).await;
        assert!(r.results_by_topic_v3_and_below[0].results_by_partition.iter().all(|p| p.partition_error_code == 0), "v{v}");
    }
    // The batched form (v4+): verify_only checks membership.
    let batched = |partitions: Vec<i32>| {
        AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(s("app")))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_verify_only(true)
                .with_topics(vec![AddPartitionsToTxnTopic::default().with_name(TopicName(s("t"))).with_partitions(partitions)]),
        ])
    };
    for v in 4..=5 {
        let r = c.call(v, &batched(vec![0, 1])).await;
        assert!(r.results_by_transaction[0].topic_results[0].results_by_partition.iter().all(|p| p.partition_error_code == 0));
    }

    let p = c.call(9, &produce("t", 0, txn_batch(pid, epoch, 0, 3), "app")).await;
    assert_eq!(p.responses[0].partition_responses[0].error_code, 0);
    // Open: the LSO is the transaction's first offset; read_committed gets nothing yet.
    let f = c.call(12, &fetch("t", 1)).await;
    let part = &f.responses[0].partitions[0];
    assert_eq!((part.high_watermark, part.last_stable_offset), (3, 0));
    assert!(part.records.as_ref().is_none_or(|r| r.is_empty()));
    let listed = c
        .call(1, &ListTransactionsRequest::default().with_state_filters(vec![s("Ongoing"), s("Bogus")]).with_duration_filter(-1))
        .await;
    assert_eq!(listed.transaction_states.len(), 1);
    assert_eq!(listed.unknown_state_filters, vec![s("Bogus")]);
    let d = c.call(0, &DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(s("app"))])).await;
    let st = &d.transaction_states[0];
    assert_eq!((st.transaction_state.as_str(), st.producer_id.0, st.topics[0].partitions.len()), ("Ongoing", pid, 2));

    // A stale EndTxn is fenced; the right one aborts and writes a marker into both partitions.
    assert_eq!(c.call(3, &end("app", pid, epoch + 1, false)).await.error_code, FENCED);
    assert_eq!(c.call(1, &end("app", pid, epoch + 1, false)).await.error_code, INVALID_EPOCH);
    assert_eq!(c.call(3, &end("app", pid, epoch, false)).await.error_code, 0);
    assert_eq!(c.call(3, &end("app", pid, epoch, false)).await.error_code, 0); // a retry
    assert_eq!(c.call(3, &end("app", pid, epoch, true)).await.error_code, INVALID_TXN_STATE);
    let f = c.call(12, &fetch("t", 1)).await;
    let part = &f.responses[0].partitions[0];
    assert_eq!((part.high_watermark, part.last_stable_offset), (4, 4));
    let aborted = part.aborted_transactions.as_ref().expect("read_committed lists aborted transactions");
    assert_eq!(aborted.iter().map(|a| (a.producer_id.0, a.first_offset)).collect::<Vec<_>>(), vec![(pid, 0)]);
    let batches: Vec<_> = records::batches(part.records.as_ref().unwrap()).collect();
    assert_eq!(batches.len(), 2);
    let (at, marker) = batches[1];
    assert!(marker.is_control() && marker.producer_id == pid);
    assert_eq!(records::marker_kind(&part.records.as_ref().unwrap()[at..]), Some(false));
    // read_uncommitted: the same batches, no aborted list.
    let f = c.call(12, &fetch("t", 0)).await;
    assert!(f.responses[0].partitions[0].aborted_transactions.is_none());
    server.shutdown().await;
}

/// acks=1 transactional data still in the upload buffer when EndTxn arrives: the markers are
/// sealed after it and committed after it (one path for data and markers), so the data is
/// committed inside the transaction and read_committed sees it; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_1_data_before_end_txn_is_committed_before_its_markers() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the data is still buffered when EndTxn comes.
    let (server, mut c) = start(dir.path(), "2000").await;
    let create = CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(TopicName(s("t")))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    assert_eq!(c.call(7, &create).await.topics[0].error_code, 0);
    let r = c.call(4, &init_app()).await;
    assert_eq!(r.error_code, 0);
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);
    let r = c.call(3, &add_v3("app", pid, epoch, "t", vec![0])).await;
    assert_eq!(r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0);
    let p = c.call(9, &produce("t", 0, txn_batch(pid, epoch, 0, 3), "app").with_acks(1)).await;
    assert_eq!((p.responses[0].partition_responses[0].error_code, p.responses[0].partition_responses[0].base_offset), (0, -1));
    assert_eq!(c.call(3, &end("app", pid, epoch, true)).await.error_code, 0);
    // EndTxn answered once the markers were committed: the data is before them.
    let f = c.call(12, &fetch("t", 1)).await;
    let part = &f.responses[0].partitions[0];
    assert_eq!((part.error_code, part.high_watermark, part.last_stable_offset), (0, 4, 4));
    let records = part.records.as_ref().expect("the committed transaction");
    let batches: Vec<_> = records::batches(records).collect();
    assert_eq!(batches.len(), 2, "the data batch, then the marker");
    assert!(!batches[0].1.is_control() && batches[0].1.producer_id == pid);
    assert_eq!(records::marker_kind(&records[batches[1].0..]), Some(true));
    assert_eq!(server.agent.uploader.losses().batches(), 0, "no acknowledged batch lost");
    server.shutdown().await;
}

/// Transaction version 2 over the wire (KIP-890 part 2): Produce v12 adds the partition itself
/// (no AddPartitionsToTxn), with acks=1 and acks=all alike; EndTxn v5 bumps the epoch, writes
/// the marker at the new epoch and answers it; a retry with the old epoch gets the same answer;
/// a batch of the old epoch is fenced (INVALID_PRODUCER_EPOCH), the new epoch starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_produce_adds_its_partition_and_end_txn_v5_bumps_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(dir.path(), "10").await;
    let create = CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(TopicName(s("t")))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    assert_eq!(c.call(7, &create).await.topics[0].error_code, 0);
    let r = c.call(5, &init_app()).await;
    assert_eq!(r.error_code, 0);
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);
    // Produce v11 (version 1 clients) is still verified: not added, refused (TRANSACTION_ABORTABLE).
    let p = c.call(11, &produce("t", 0, txn_batch(pid, epoch, 0, 2), "app").with_acks(1)).await;
    assert_eq!(p.responses[0].partition_responses[0].error_code, kafka_protocol::error::ResponseError::TransactionAbortable.code());
    // Produce v12: the batch adds its partition and starts the transaction, acks=1 then acks=all.
    let p = c.call(12, &produce("t", 0, txn_batch(pid, epoch, 0, 2), "app").with_acks(1)).await;
    assert_eq!(p.responses[0].partition_responses[0].error_code, 0);
    let p = c.call(12, &produce("t", 0, txn_batch(pid, epoch, 2, 1), "app")).await;
    assert_eq!((p.responses[0].partition_responses[0].error_code, p.responses[0].partition_responses[0].base_offset), (0, 2));
    let r = c.call(5, &end("app", pid, epoch, true)).await;
    assert_eq!((r.error_code, r.producer_id.0, r.producer_epoch), (0, pid, epoch + 1));
    // A retry of it: success, the current epoch.
    let r = c.call(5, &end("app", pid, epoch, true)).await;
    assert_eq!((r.error_code, r.producer_id.0, r.producer_epoch), (0, pid, epoch + 1));
    let f = c.call(12, &fetch("t", 1)).await;
    let part = &f.responses[0].partitions[0];
    assert_eq!((part.high_watermark, part.last_stable_offset), (4, 4));
    let records = part.records.as_ref().unwrap();
    let batches: Vec<_> = records::batches(records).collect();
    assert_eq!(batches.len(), 3, "two data batches, then the marker");
    assert!(batches[..2].iter().all(|(_, b)| !b.is_control() && b.producer_epoch == epoch));
    assert!(batches[2].1.is_control() && batches[2].1.producer_epoch == epoch + 1);
    assert_eq!(records::marker_kind(&records[batches[2].0..]), Some(true));
    // The old epoch is fenced; the new one starts at sequence 0 and aborts.
    let p = c.call(12, &produce("t", 0, txn_batch(pid, epoch, 3, 1), "app").with_acks(1)).await;
    assert_eq!(p.responses[0].partition_responses[0].error_code, INVALID_EPOCH);
    let epoch = epoch + 1;
    let p = c.call(12, &produce("t", 0, txn_batch(pid, epoch, 0, 1), "app")).await;
    assert_eq!((p.responses[0].partition_responses[0].error_code, p.responses[0].partition_responses[0].base_offset), (0, 4));
    assert_eq!(c.call(5, &end("app", pid, epoch - 1, false)).await.error_code, FENCED);
    let r = c.call(5, &end("app", pid, epoch, false)).await;
    assert_eq!((r.error_code, r.producer_epoch), (0, epoch + 1));
    let d = c.call(0, &DescribeTransactionsRequest::default().with_transactional_ids(vec![TransactionalId(s("app"))])).await;
    let st = &d.transaction_states[0];
    assert_eq!((st.transaction_state.as_str(), st.producer_epoch), ("CompleteAbort", epoch + 1));
    server.shutdown().await;
}
