"""Poison pills: batches with a correct CRC whose records a consumer could not read are refused
before they are acknowledged, with the error Apache Kafka 4.4 gives, and the partition stays
readable by confluent-kafka and kafka-python (the good records before and after, nothing else).

Codes checked against Kafka 4.4 (scripts/kafka-reference-broker, the same raw requests):
INVALID_RECORD (87) for records that do not parse (random bytes, a count with no records, too
many or too few records, trailing bytes, bad lengths or header counts, garbage inside a valid
gzip/snappy/lz4/zstd stream), a control batch, a base offset other than 0; INVALID_TIMESTAMP
(32) with one record error per record for timestamps past message.timestamp.after.max.ms;
INVALID_TXN_STATE (48; TRANSACTION_ABORTABLE 120 from Produce v11) for a transactional batch
whose partition is not in the producer's transaction; TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53)
for a transactional batch without a transactional id. Where Kafka differs, we refuse with
INVALID_RECORD: a body that does not decompress (Kafka: UNKNOWN_SERVER_ERROR), offset deltas
out of order (Kafka rewrites or keeps them: stored as the producer's bytes they would misplace
records), records decompressing past `[agent] max_decompressed_batch_bytes` (Kafka has no
bound), bytes after the end of a gzip or lz4 stream (Kafka ignores them).
"""

import gzip
import logging
import os
import random
import struct
import time

import lz4.frame
import pytest
import snappy
import zstandard

import kafka_wire as kw
from conftest import SidestreamServer, poll_until

logging.getLogger("kafka").setLevel(logging.WARNING)

SEED = int(os.environ.get("SIDESTREAM_TEST_SEED", "1617"))
MAX_DECOMPRESSED = 4 << 20
INVALID_TIMESTAMP = 32
INVALID_TXN_STATE = 48
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
TRANSACTION_ABORTABLE = 120
FIND_COORDINATOR = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The module's server, with a small decompression bound so a bomb test stays quick."""
    base = tmp_path_factory.mktemp("poison")
    srv = SidestreamServer(base / "data", base / "server.log",
                           extra_env={"SIDESTREAM_AGENT_MAX_DECOMPRESSED_BATCH_BYTES": str(MAX_DECOMPRESSED)})
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


# --------------------------------------------------------------------------------------------
# Batches built byte by byte (CRC always correct).


def raw_batch(records_bytes, count, attributes=0, last_offset_delta=None, base_timestamp=None,
              producer_id=-1, producer_epoch=-1, base_sequence=-1, base_offset=0):
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    if last_offset_delta is None:
        last_offset_delta = count - 1
    after_crc = (kw.i16(attributes) + kw.i32(last_offset_delta) + kw.i64(base_timestamp) + kw.i64(base_timestamp)
                 + kw.i64(producer_id) + kw.i16(producer_epoch) + kw.i32(base_sequence) + kw.i32(count)
                 + records_bytes)
    after_length = kw.i32(-1) + kw.i8(2) + kw.u32(kw.crc32c(after_crc)) + after_crc
    return kw.i64(base_offset) + kw.i32(len(after_length)) + after_length


def records(n, tag=b"v", deltas=None):
    return b"".join(kw.encode_record(deltas[i] if deltas else i, b"k%d" % i, tag + b"-%d" % i) for i in range(n))


def xerial(data):
    """snappy-java's stream framing, as Kafka's Java client writes snappy."""
    out = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    for i in range(0, len(data), 32768):
        block = snappy.compress(data[i:i + 32768])
        out += struct.pack(">i", len(block)) + block
    return out


CODECS = {"gzip": (1, gzip.compress), "snappy": (2, xerial), "lz4": (3, lz4.frame.compress),
          "zstd": (4, lambda d: zstandard.ZstdCompressor().compress(d))}


def compressed(codec, data, count=3):
    attr, compress = CODECS[codec]
    return raw_batch(compress(data), count, attributes=attr)


def poison_cases():
    rng = random.Random(SEED)
    good = records(3)
    cases = {
        "random bytes as records": raw_batch(rng.randbytes(60), 3),
        "record count without records": raw_batch(b"", 5),
        "trailing bytes after the last record": raw_batch(good + b"\x00\x01\x02", 3),
        "count above the records present": raw_batch(good, 4),
        "count below the records present": raw_batch(good, 2, last_offset_delta=1),
        "record length past the batch": raw_batch(kw.varint(200) + good[1:], 3),
        "negative header count": raw_batch(kw.varint(7) + b"\x00\x00\x00\x01\x00\x01\x00" + kw.varint(-1), 1),
        "offset deltas out of order": raw_batch(records(3, deltas=[0, 2, 1]), 3),
        "offset deltas from 5": raw_batch(records(3, deltas=[5, 6, 7]), 3),
        "control batch": raw_batch(good, 3, attributes=0x20),
        "base offset 7": raw_batch(good, 3, base_offset=7),
        # Valid records decompressing past the bound (Kafka has none and would store it).
        "decompression bomb": compressed("zstd", kw.encode_record(0, None, bytes(MAX_DECOMPRESSED + 1024)), 1),
    }
    for codec, (attr, compress) in CODECS.items():
        cases["%s body that does not decompress" % codec] = raw_batch(rng.randbytes(80), 3, attributes=attr)
        whole = compress(good)
        cases["%s body cut short" % codec] = raw_batch(whole[:len(whole) // 2], 3, attributes=attr)
        cases["%s of random records" % codec] = compressed(codec, rng.randbytes(60))
        cases["%s with bytes after the last record" % codec] = compressed(codec, good + b"\x00\x01")
        cases["%s with bytes after the stream" % codec] = raw_batch(whole + b"junkjunk", 3, attributes=attr)
    return cases


POISON = poison_cases()

_counter = [0]


def new_topic(server, prefix="poison"):
    _counter[0] += 1
    name = "%s-%d-%d" % (prefix, os.getpid(), _counter[0])
    with server.connect() as c:
        res = kw.create_topics(c, [(name, 1, 1)])
    assert res[name][0] == kw.NONE, res
    server.wait_topic_ready(name, 1)
    return name


def produce_one(c, topic, batch, version=9, acks=1, transactional_id=None):
    r = c.request(kw.PRODUCE, version, kw.produce_body(version, [(topic, [(0, batch)])], acks=acks,
                                                          transactional_id=transactional_id),
                  flexible_header=version >= 9)
    return kw.parse_produce_response(r, 9 if version >= 9 else version)[(topic, 0)]


def good_batch(tag, n=3):
    return kw.record_batch([(b"k%d" % i, b"%s-%d" % (tag, i)) for i in range(n)])


# --------------------------------------------------------------------------------------------
# Real consumers: everything of the partition, no error.


def consume_confluent(bootstrap, topic, n):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "poison", "enable.auto.commit": False,
                  "enable.partition.eof": True, "check.crcs": True})
    c.assign([TopicPartition(topic, 0, 0)])
    got, at_eof = [], False
    try:
        def done():
            nonlocal at_eof
            m = c.poll(0.2)
            if m is not None and m.error():
                assert m.error().code() == -191, "confluent-kafka error: %s" % m.error()  # _PARTITION_EOF
                at_eof = True
            elif m is not None:
                got.append((m.offset(), m.value()))
                at_eof = False
            return at_eof and len(got) >= n
        poll_until(done, 60, interval=0, what="confluent-kafka reading %d records of %s (got %r)" % (n, topic, got))
    finally:
        c.close()
    return got


def consume_kafka_python(bootstrap, topic, n, end):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_wait_ms=100, check_crcs=True)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    got = []
    try:
        def done():
            for msgs in c.poll(timeout_ms=200).values():  # raises CorruptRecordError on a poison pill
                got.extend((m.offset, m.value) for m in msgs)
            return len(got) >= n
        poll_until(done, 60, interval=0, what="kafka-python reading %d records of %s (got %r)" % (n, topic, got))
        assert c.end_offsets([tp])[tp] == end
    finally:
        c.close()
    return got


def assert_readable(server, topic, expected_values, end=None):
    """Both clients read exactly `expected_values` at offsets 0, 1, 2...; the partition ends at
    `end` (default: after them)."""
    expected = list(enumerate(expected_values))
    assert consume_confluent(server.bootstrap, topic, len(expected)) == expected
    end = len(expected) if end is None else end
    assert consume_kafka_python(server.bootstrap, topic, len(expected), end) == expected


# --------------------------------------------------------------------------------------------
# Tests.


@pytest.mark.parametrize("kind", list(POISON))
def test_poison_is_refused_and_the_partition_stays_readable(server, kind):
    topic = new_topic(server)
    with server.connect() as c:
        assert produce_one(c, topic, good_batch(b"before"))["error_code"] == kw.NONE
        res = produce_one(c, topic, POISON[kind])
        assert res["error_code"] == kw.INVALID_RECORD, "%s (seed %d): %r" % (kind, SEED, res)
        assert res["error_message"], res
        assert produce_one(c, topic, good_batch(b"after"))["error_code"] == kw.NONE
    assert_readable(server, topic, [b"before-%d" % i for i in range(3)] + [b"after-%d" % i for i in range(3)])


def test_a_bad_batch_is_refused_at_every_acks_level(server):
    topic = new_topic(server)
    with server.connect() as c:
        for acks in (-1, 1):
            res = produce_one(c, topic, POISON["random bytes as records"], acks=acks)
            assert res["error_code"] == kw.INVALID_RECORD, (acks, res)
        # acks=0: no answer; what follows on the connection is still answered, nothing stored.
        c.send(kw.PRODUCE, 9, kw.produce_body(9, [(topic, [(0, POISON["gzip of random records"])])], acks=0),
               flexible=True)
        assert produce_one(c, topic, good_batch(b"only"))["error_code"] == kw.NONE
    assert_readable(server, topic, [b"only-%d" % i for i in range(3)])


@pytest.mark.parametrize("codec", list(CODECS))
def test_compressed_batches_below_the_bound_are_accepted(server, codec):
    """Real compressed batches of the four codecs, one of them decompressing to just under the
    bound (so the bound, not the codec, refuses the bomb), are stored and read back."""
    topic = new_topic(server)
    big = bytes(MAX_DECOMPRESSED - 64 * 1024)
    with server.connect() as c:
        assert produce_one(c, topic, compressed(codec, records(3, b"c")))["error_code"] == kw.NONE
        assert produce_one(c, topic, compressed(codec, kw.encode_record(0, b"big", big), 1))["error_code"] == kw.NONE
    got = consume_confluent(server.bootstrap, topic, 4)
    assert [v for _, v in got] == [b"c-0", b"c-1", b"c-2", big]


def test_timestamps_out_of_range_get_invalid_timestamp_with_record_errors(server):
    topic = new_topic(server)
    now = int(time.time() * 1000)
    ahead = raw_batch(records(3), 3, base_timestamp=now + 2 * 3600 * 1000)
    with server.connect() as c:
        res = produce_one(c, topic, ahead)
        old = produce_one(c, topic, raw_batch(records(2, b"old"), 2, base_timestamp=5))  # before is unbounded
        v3 = produce_one(c, topic, ahead, version=3)
    assert res["error_code"] == INVALID_TIMESTAMP, res
    assert res["error_message"] == "One or more records have been rejected due to invalid timestamp", res
    assert [e["batch_index"] for e in res["record_errors"]] == [0, 1, 2], res
    for i, e in enumerate(res["record_errors"]):
        assert e["message"].startswith("Timestamp %d of message with offset %d is out of range. "
                                       "The timestamp should be within [" % (now + 2 * 3600 * 1000, i)), e
    assert old["error_code"] == kw.NONE, old
    assert v3["error_code"] == INVALID_TIMESTAMP, v3
    assert_readable(server, topic, [b"old-0", b"old-1"])


def find_coordinator_and_init(c, transactional_id):
    def ready():
        r = c.request(FIND_COORDINATOR, 1, kw.string(transactional_id) + kw.i8(1), flexible_header=False)
        r.i32()
        return r.i16() == kw.NONE
    poll_until(ready, 30, what="FindCoordinator")
    err, pid, epoch = kw.init_producer_id(c, transactional_id)
    assert err == kw.NONE, err
    return pid, epoch


def test_a_transactional_batch_outside_its_transaction_is_refused_and_not_stored(server):
    topic = new_topic(server)
    tid = "poison-txn-%d" % os.getpid()
    with server.connect() as c:
        pid, epoch = find_coordinator_and_init(c, tid)

        def txn_batch(seq, tag):
            return raw_batch(records(2, tag), 2, attributes=kw.TRANSACTIONAL, producer_id=pid,
                             producer_epoch=epoch, base_sequence=seq)

        # No transaction open (Kafka 4.4: the same codes and message).
        v9 = produce_one(c, topic, txn_batch(0, b"stray"), version=9, transactional_id=tid)
        assert (v9["error_code"], v9["error_message"]) == (INVALID_TXN_STATE, "Partition was not added to the transaction"), v9
        v11 = produce_one(c, topic, txn_batch(0, b"stray"), version=11, transactional_id=tid)
        assert v11["error_code"] == TRANSACTION_ABORTABLE, v11
        v3 = produce_one(c, topic, txn_batch(0, b"stray"), version=3, transactional_id=tid)
        assert v3["error_code"] == INVALID_TXN_STATE, v3
        assert produce_one(c, topic, txn_batch(0, b"stray"), transactional_id=None)["error_code"] \
            == TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        # Another producer id than the transactional id's.
        wrong = raw_batch(records(1), 1, attributes=kw.TRANSACTIONAL, producer_id=pid + 1000, producer_epoch=0,
                          base_sequence=0)
        assert produce_one(c, topic, wrong, transactional_id=tid)["error_code"] == 49  # INVALID_PRODUCER_ID_MAPPING
        # The transaction open with another partition only: still refused.
        other = new_topic(server)
        assert kw.add_partitions_to_txn(c, tid, pid, epoch, other, [0]) == {0: kw.NONE}
        assert produce_one(c, topic, txn_batch(0, b"stray"), transactional_id=tid)["error_code"] == INVALID_TXN_STATE
        # Added: accepted at acks=1, and committed.
        assert kw.add_partitions_to_txn(c, tid, pid, epoch, topic, [0]) == {0: kw.NONE}
        ok = produce_one(c, topic, txn_batch(0, b"txn"), transactional_id=tid)
        assert ok["error_code"] == kw.NONE, ok
        # EndTxn only once the acks=1 batch is committed: acks=1 answers before the commit, and an
        # EndTxn overtaking the commit gets the batch refused there (transactional clients use
        # acks=all, answered after the commit).
        poll_until(lambda: kw.fetch(c, topic, 0, 0)["high_watermark"] == 2, 30, what="the transaction's batch")
        assert kw.end_txn(c, tid, pid, epoch, True) == kw.NONE
        # Nothing of the refused batches was stored: the data, then the commit marker.
        poll_until(lambda: kw.fetch(c, topic, 0, 0)["high_watermark"] == 3, 30, what="the commit marker")
        f = kw.fetch(c, topic, 0, 0)
    batches = kw.parse_record_batches(f["records"])
    assert [r["value"] for r in batches[0]["records"]] == [b"txn-0", b"txn-1"], batches
    assert len(batches) == 2 and batches[1]["attributes"] & 0x20, batches  # then the marker
    assert_readable(server, topic, [b"txn-0", b"txn-1"], end=3)
