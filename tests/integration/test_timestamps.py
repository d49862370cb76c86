"""Record timestamps as Kafka answers them, with real clients: ListOffsets by timestamp finds the
record inside a batch (confluent-kafka's offsets_for_times, kafka-get-offsets.sh --time, the raw
request for the timestamp it answers), for several records per batch, compressed or not.
"""

import time
import uuid

import pytest

import kafka_wire as kw
from compat import java_cmd, run
from conftest import poll_until

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


def produce_batch(p, topic, timestamps_ms):
    """Produces one record per timestamp into partition 0 and flushes: one batch. Returns the
    delivered messages in order."""
    delivered = []
    errors = []

    def report(err, msg):
        (errors if err is not None else delivered).append(err or msg)

    for i, ts in enumerate(timestamps_ms):
        p.produce(topic, value=b"value-%d" % i, partition=0, timestamp=ts, on_delivery=report)
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
    produce_batch(p, topic, timestamps[:len(FIRST_BATCH)])
    produce_batch(p, topic, timestamps[len(FIRST_BATCH):])
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
