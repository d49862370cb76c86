"""Record timestamps as Kafka answers them, with real clients:

- ListOffsets by timestamp finds the record inside a batch (confluent-kafka's offsets_for_times,
  kafka-get-offsets.sh --time, the raw request for the timestamp it answers), for several
  records per batch, compressed or not.
- `message.timestamp.type=LogAppendTime` (kafka-topics.sh --create --config, confluent
  AdminClient, kafka-configs.sh --alter): records produced with old CreateTime timestamps
  (confluent-kafka, the Java producer of kafka-verifiable-producer.sh) are read back by
  confluent-kafka (check.crcs) and kcat with the time the server accepted their batch, the one
  the ProduceResponse reported; a WAL replay keeps it.
"""

import shutil
import subprocess
import time
import uuid

import pytest

import kafka_wire as kw
from compat import java_cmd, run
from conftest import SidestreamServer, poll_until

KCAT = shutil.which("kcat") or shutil.which("kafkacat") or "kcat"
DAY_MS = 86_400_000

TIMEOUT = 60
MAX_TIMESTAMP = -3
COMPRESSIONS = ["none", "gzip", "snappy", "lz4", "zstd"]
# Seconds after the base timestamp: a batch with a timestamp out of order (5 before 3) and its
# max (9) twice, then one with the partition's max timestamp (16) twice.
FIRST_BATCH = [0, 1, 2, 5, 3, 4, 6, 9, 7, 9, 8, 8]
SECOND_BATCH = [14, 16, 15, 16]


def topic_name(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def create_topic(bootstrap, topic, configs=None):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=configs or {})],
                                  operation_timeout=30, request_timeout=30)
    futures[topic].result(timeout=TIMEOUT)


def producer(bootstrap, compression, **extra):
    """A confluent-kafka producer that holds records long enough to batch them all."""
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "compression.type": compression,
                     "linger.ms": 1000, "batch.size": 1 << 20, **extra})


def produce_records(p, topic, records):
    """Produces (value, timestamp) records to partition 0 and flushes (with linger, one batch).
    Returns the delivered messages in order."""
    delivered = []
    errors = []

    def report(err, msg):
        (errors if err is not None else delivered).append(err or msg)

    for value, ts in records:
        p.produce(topic, value=value, partition=0, timestamp=ts, on_delivery=report)
    assert p.flush(TIMEOUT) == 0, "records left undelivered"
    assert not errors, errors
    return delivered


def raw_batches(server, topic):
    """The partition's batches as a Fetch returns them: (base offset, record count) each."""
    with server.connect() as c:
        data = kw.fetch(c, topic, 0, 0)["records"]
    return [(b["base_offset"], b["count"]) for b in kw.parse_record_batches(data)]


def list_offsets(server, topic, timestamp):
    """ListOffsets for partition 0: (offset, timestamp)."""
    with server.connect() as c:
        r = kw.list_offsets_v7(c, topic, 0, timestamp)
    assert r["error_code"] == kw.NONE, r
    return r["offset"], r["timestamp"]


def get_offsets_tool(bootstrap, topic, time_spec):
    """kafka-get-offsets.sh --time: partition 0's offset."""
    out, _ = run(java_cmd("org.apache.kafka.tools.GetOffsetShell", "--bootstrap-server", bootstrap,
                          "--topic", topic, "--partitions", "0", "--time", time_spec))
    (line,) = out.strip().splitlines()
    t, p, o = line.rsplit(":", 2)
    assert (t, p) == (topic, "0"), line
    return int(o)


def expected(timestamps, target):
    """Kafka's answer: the first record whose timestamp is >= target, or (-1, -1)."""
    return next(((i, ts) for i, ts in enumerate(timestamps) if ts >= target), (-1, -1))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_a_timestamp_inside_a_batch_finds_its_record(server, compression):
    from confluent_kafka import TopicPartition

    topic = topic_name("ts-lookup-%s" % compression)
    create_topic(server.bootstrap, topic)
    base = int(time.time() * 1000) - 600_000
    timestamps = [base + s * 1000 for s in FIRST_BATCH + SECOND_BATCH]
    p = producer(server.bootstrap, compression)
    for part in (timestamps[:len(FIRST_BATCH)], timestamps[len(FIRST_BATCH):]):
        produce_records(p, topic, [(b"value-%d" % ts, ts) for ts in part])
    n = len(timestamps)
    batches = poll_until(lambda: (lambda b: b if sum(c for _, c in b) == n else None)(raw_batches(server, topic)),
                         TIMEOUT, what="both batches readable")
    assert batches == [(0, len(FIRST_BATCH)), (len(FIRST_BATCH), len(SECOND_BATCH))], "not batched as intended"

    targets = [base, base + 1500, base + 4500, base + 5000, base + 5001, base + 8500, base + 9001, base + 14000,
               base + 15500, base + 16001]
    for target in targets:
        assert list_offsets(server, topic, target) == expected(timestamps, target), target
    # The max timestamp: the first of its two records.
    assert list_offsets(server, topic, MAX_TIMESTAMP) == (len(FIRST_BATCH) + 1, base + 16000)

    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "ts-%s" % uuid.uuid4().hex})
    try:
        for target in targets:
            (tp,) = c.offsets_for_times([TopicPartition(topic, 0, target)], timeout=TIMEOUT)
            assert tp.error is None, tp
            assert tp.offset == expected(timestamps, target)[0], (target, tp)
    finally:
        c.close()
    assert get_offsets_tool(server.bootstrap, topic, base + 4500) == 3
    assert get_offsets_tool(server.bootstrap, topic, MAX_TIMESTAMP) == len(FIRST_BATCH) + 1


def now_ms():
    return int(time.time() * 1000)


def produce_timed(p, topic, values, timestamp):
    """Produces `values` with CreateTime `timestamp`: their delivery reports' (type, timestamp)."""
    return [m.timestamp() for m in produce_records(p, topic, [(v, timestamp) for v in values])]


def consume(bootstrap, topic, n):
    """The first n records of partition 0 as confluent-kafka reads them (CRCs checked):
    (value, (timestamp type, timestamp)) each."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ts-%s" % uuid.uuid4().hex, "check.crcs": True,
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < n:
            assert time.monotonic() < deadline, "consumed %d of %d records" % (len(got), n)
            for m in c.consume(num_messages=n, timeout=0.2):
                assert m.error() is None, m.error()
                got.append((m.value(), m.timestamp()))
        return got
    finally:
        c.close()


def kcat_timestamps(bootstrap, topic):
    p = subprocess.run([KCAT, "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f", "%T\\n"],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-2000:]
    return [int(line) for line in p.stdout.split()]


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_log_append_time_topic_stamps_batches_as_it_accepts_them(server, compression):
    from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME

    topic = topic_name("ts-append-%s" % compression)
    # Old record timestamps would be refused on a CreateTime topic with this bound.
    run(java_cmd("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", server.bootstrap, "--create",
                 "--topic", topic, "--partitions", 1, "--config", "message.timestamp.type=LogAppendTime",
                 "--config", "message.timestamp.before.max.ms=60000"))
    old = now_ms() - DAY_MS
    p = producer(server.bootstrap, compression)
    poll_until(lambda: topic in p.list_topics(topic, timeout=10).topics, TIMEOUT, what="topic known")
    before = now_ms()
    first = produce_timed(p, topic, [b"c%d" % i for i in range(5)], old)
    second = produce_timed(p, topic, [b"d%d" % i for i in range(3)], old)
    after = now_ms()
    # The ProduceResponse's log_append_time_ms, one per batch.
    assert {t for t, _ in first + second} == {TIMESTAMP_LOG_APPEND_TIME}, first + second
    t1, t2 = first[0][1], second[0][1]
    assert first == [first[0]] * 5 and second == [second[0]] * 3, (first, second)
    assert before <= t1 <= t2 <= after, (before, t1, t2, after)

    # The Java producer, with CreateTime timestamps a day old.
    java_before = now_ms()
    run(java_cmd("org.apache.kafka.tools.VerifiableProducer", "--bootstrap-server", server.bootstrap,
                 "--topic", topic, "--max-messages", 4, "--message-create-time", old, "--acks", -1))
    java_after = now_ms()

    got = consume(server.bootstrap, topic, 12)
    assert [v for v, _ in got[:8]] == [b"c%d" % i for i in range(5)] + [b"d%d" % i for i in range(3)]
    assert [ts for _, ts in got[:8]] == first + second
    for _, (kind, ts) in got[8:]:
        assert kind == TIMESTAMP_LOG_APPEND_TIME and java_before <= ts <= java_after, (got[8:], java_before, java_after)
    assert all(kind != TIMESTAMP_CREATE_TIME for _, (kind, _) in got)
    assert kcat_timestamps(server.bootstrap, topic) == [ts for _, (_, ts) in got]

    # By timestamp: every record has its batch's append time.
    assert list_offsets(server, topic, old) == (0, t1)
    if t2 > t1:
        assert list_offsets(server, topic, t1 + 1) == (5, t2)


def test_switching_to_log_append_time_applies_to_new_batches(server):
    from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME

    topic = topic_name("ts-switch")
    create_topic(server.bootstrap, topic)
    old = now_ms() - DAY_MS
    p = producer(server.bootstrap, "none", **{"linger.ms": 0})
    assert produce_timed(p, topic, [b"before"], old) == [(TIMESTAMP_CREATE_TIME, old)]
    run(java_cmd("org.apache.kafka.tools.ConfigCommand", "--bootstrap-server", server.bootstrap, "--alter",
                 "--entity-type", "topics", "--entity-name", topic, "--add-config", "message.timestamp.type=LogAppendTime"))
    values = []

    def stamped():
        values.append(b"after-%d" % len(values))
        (kind, _), = produce_timed(p, topic, values[-1:], old)
        return kind == TIMESTAMP_LOG_APPEND_TIME

    poll_until(stamped, TIMEOUT, what="a batch stamped with the append time")
    got = consume(server.bootstrap, topic, 1 + len(values))
    assert got[0] == (b"before", (TIMESTAMP_CREATE_TIME, old))
    kind, ts = got[-1][1]
    assert kind == TIMESTAMP_LOG_APPEND_TIME and ts > old, got


def test_a_wal_replay_keeps_the_append_time(tmp_path):
    """acks=1 batches that live only in the WAL when the server is killed come back after the
    restart with the append time their ProduceResponse reported."""
    from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log",
                           extra_env={"SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": "60000"})
    srv.start()
    try:
        topic = topic_name("ts-replay")
        create_topic(srv.bootstrap, topic, {"message.timestamp.type": "LogAppendTime"})
        p = producer(srv.bootstrap, "lz4", **{"acks": "1", "linger.ms": 0})
        old = now_ms() - DAY_MS
        reported = []
        for i in range(3):
            reported += produce_timed(p, topic, [b"r%d" % i], old)
        assert {k for k, _ in reported} == {TIMESTAMP_LOG_APPEND_TIME}, reported
        srv.kill()
        srv.start()
        got = consume(srv.bootstrap, topic, 3)
        assert got == [(b"r%d" % i, reported[i]) for i in range(3)]
    finally:
        srv.close()
